"""Checks of the exercises in ``04_tvm_autotuning.ipynb`` (TVM auto-tuning).

* ``04.matmul_flops`` (predict): the FLOP count of one N×L×M matmul call — exact arithmetic.
* ``04.cache_write`` (implement): the hand schedule plus one more step, a ``cache_write`` of the C tile.
* ``04.greedy_next_batch`` (implement): a tuner's next-candidate step, epsilon-greedy around the best config.
* ``04.budget`` (explore): change the trial budget, read the tuning curve of your own run.
"""

from __future__ import annotations

import numpy as np

from course_lib import exercises

# ----------------------------------------------------------------------------------------- 04.matmul_flops


@exercises.register("04.matmul_flops", "predict", "FLOPs of one N×L×M matmul call")
def check_matmul_flops(answer, shape: tuple[int, int, int]) -> None:
    """Exact: 2·N·L·M (one multiply and one add per multiply-accumulate)."""
    exercises.answered(answer)
    n, l, m = (int(x) for x in shape)
    try:
        value = int(round(float(answer)))
    except (TypeError, ValueError):
        raise exercises.ExerciseFailed(f"expected a number of FLOPs, got {answer!r}") from None
    exact = 2 * n * l * m
    if value == exact:
        return
    if value == n * l * m:
        raise exercises.ExerciseFailed(
            f"{value:,} counts one operation per multiply-accumulate; a MAC is two FLOPs (a multiply and an add): "
            "multiply by 2"
        )
    if value == (2 * l - 1) * n * m:
        raise exercises.ExerciseFailed(
            f"{value:,} is the strict count (L-1 additions per output); the convention every GFLOP/s figure here "
            "uses (and BLAS benchmarks use) counts 2 FLOPs per multiply-accumulate: 2·N·L·M"
        )
    if value in (2 * n * m, 2 * n * l, 2 * l * m, n * l + l * m + n * m):
        raise exercises.ExerciseFailed(f"{value:,} is a count of matrix elements, not of operations: each of the "
                                       "N·M outputs needs L multiply-accumulates")
    raise exercises.ExerciseFailed(f"{value:,} FLOPs is not it: count the multiply-accumulates of C[i, j] = Σ_k A[i, k]·B[k, j]")


# ----------------------------------------------------------------------------------------- 04.cache_write

_CACHE_CASES = [((64, 48, 32), (8, 8)), ((128, 64, 64), (16, 16)), ((32, 16, 32), (32, 8))]


@exercises.register("04.cache_write", "implement", "One more schedule step: accumulate the C tile in a local buffer")
def check_cache_write(fn) -> None:
    """Correct on several shapes; parallel outer loop, vectorised inner loop, a cache_write moved under j.outer."""
    from course_lib.tuning import matmul

    for (n, l, m), (ty, tx) in _CACHE_CASES:
        mod = matmul.matmul_module(n, l, m)
        sch = exercises.call(fn, mod, ty, tx)
        exercises.expect(
            hasattr(sch, "trace") and hasattr(sch, "mod"),
            f"my_schedule must return the s_tir.Schedule it transformed, got {type(sch).__name__}",
        )
        trace = str(sch.trace)
        try:
            lib = matmul.build(sch)
            matmul.run_and_check(lib, matmul.make_data(n, l, m, seed=n + m))
        except matmul.WrongResult as e:
            raise exercises.ExerciseFailed(
                f"{n}×{l}×{m} with tiles {ty}×{tx}: {e} — a schedule must never change the result "
                "(did you vectorise a loop that holds the reduction over k?)"
            ) from None
        except Exception as e:  # noqa: BLE001 - the learner's schedule did not build
            raise exercises.ExerciseFailed(f"{n}×{l}×{m}: the schedule does not build: {type(e).__name__}: {e}") from None
        script = sch.mod.script()
        exercises.expect("cache_write" in trace, "no cache_write in the trace: sch.cache_write(block, 0, 'global') "
                         "makes the C tile accumulate in a local buffer")
        exercises.expect(
            "reverse_compute_at" in trace,
            "the write-back block runs after the whole matmul (a second pass over C): move it under j.outer with "
            "sch.reverse_compute_at(cw, jo) so each tile is written back while it is still in cache",
        )
        exercises.expect("T.parallel" in script, "no parallel loop: the kernel runs on one core (sch.parallel(io))")
        exercises.expect("T.vectorized" in script, "no vectorised loop: the inner j loop should be sch.vectorize(ji)")
        inner = sch.get(sch.get_loops(sch.get_sblock("C"))[-1])
        exercises.expect(
            int(inner.kind) == 2,  # ForKind.VECTORIZED
            "the innermost loop of the compute block C is not vectorised (it should be j.inner, contiguous in B and C)",
        )


# ----------------------------------------------------------------------------------------- 04.greedy_next_batch


def _make_tuner(tuner_cls, space, seed):
    from course_lib.tuning import tuners

    if not (isinstance(tuner_cls, type) and issubclass(tuner_cls, tuners.Tuner)):
        raise exercises.ExerciseFailed(f"expected a subclass of tuners.Tuner, got {tuner_cls!r}")
    try:
        return tuner_cls(space, seed=seed)
    except Exception as e:  # noqa: BLE001
        raise exercises.ExerciseFailed(f"{tuner_cls.__name__}(space, seed=...) raised {type(e).__name__}: {e}") from None


def _proposals(tuner, batch_size):
    out = exercises.call(tuner.next_batch, batch_size)
    exercises.expect(isinstance(out, (list, tuple)), f"next_batch must return a list of config indices, got {type(out).__name__}")
    for x in out:
        if isinstance(x, (list, tuple, np.ndarray)):
            raise exercises.ExerciseFailed(
                "next_batch returned genes (a list of knob choices) instead of config indices: "
                "convert with self.space.index(genes)"
            )
        exercises.expect(isinstance(x, (int, np.integer)), f"next_batch must return ints (config indices), got {x!r}")
        exercises.expect(0 <= x < len(tuner.space), f"index {x} is outside the space of {len(tuner.space)} configs")
    return [int(x) for x in out]


def greedy_benchmark(tuner_cls, space, trials: int = 48, seeds=(0, 1, 2)) -> dict[str, float]:
    """Mean best synthetic score (3 seeds) of ``tuner_cls`` and of the random tuner with the same budget."""
    from course_lib.tuning import tuners

    out = {}
    for name, cls in (("yours", tuner_cls), ("random", tuners.RandomTuner)):
        scores = []
        for seed in seeds:
            cost = tuners.SyntheticCost(space, seed=100 + seed)
            t = _make_tuner(cls, space, seed) if name == "yours" else cls(space, seed=seed)
            scores.append(exercises.call(t.tune, cost, n_trial=trials, batch_size=8).score)
        out[name] = float(np.mean(scores))
    return out


@exercises.register("04.greedy_next_batch", "implement", "A tuner's next-candidate step: epsilon-greedy")
def check_greedy(tuner_cls) -> None:
    """Valid, unvisited, distinct proposals; exhausts a tiny space; beats random search on the synthetic cost."""
    from course_lib.tuning import template, tuners

    exercises.answered(tuner_cls)
    # 1. the proposals themselves, after a few measured trials
    space = template.matmul_space(64, 48, 32)
    t = _make_tuner(tuner_cls, space, seed=3)
    first = _proposals(t, 4)
    exercises.expect(len(first) == 4, f"asked for 4 configs before any measurement, got {len(first)}")
    cost = tuners.SyntheticCost(space, seed=5)
    exercises.call(t.tune, cost, n_trial=16, batch_size=4)
    nxt = _proposals(t, 8)
    exercises.expect(len(nxt) == 8, f"asked for 8 configs, got {len(nxt)}")
    exercises.expect(len(set(nxt)) == len(nxt), f"next_batch proposed the same config twice: {nxt}")
    again = sorted(set(nxt) & t.visited)
    exercises.expect(not again, f"next_batch proposed configs that were already measured ({again[:4]}): "
                     "a tuner never re-measures — skip indices in self.visited")
    # 2. a tiny space is exhausted without repeats (the neighbours run out: top up with random unvisited configs)
    tiny = template.ConfigSpace()
    tiny.define_knob("a", [0, 1, 2])
    tiny.define_knob("b", [0, 1])
    tiny_cost = tuners.SyntheticCost(tiny, seed=0)
    best = exercises.call(_make_tuner(tuner_cls, tiny, seed=0).tune, tiny_cost, n_trial=50, batch_size=4)
    exercises.expect(sorted(tiny_cost.seen) == list(range(6)),
                     f"on a 6-config space it measured {sorted(tiny_cost.seen)}: when every neighbour of the best is "
                     "measured, fill the batch with random unvisited configs")
    exercises.expect(best.index == tiny_cost.best_index, "the tuner did not return its best measured config")
    # 3. it searches: better than random on the synthetic cost (same budget, same seeds; deterministic)
    big = template.matmul_space(512, 512, 512)
    res = greedy_benchmark(tuner_cls, big)
    exercises.expect(
        res["yours"] > res["random"] + 0.05,
        f"mean best score {res['yours']:.3f} vs random search {res['random']:.3f} (48 trials, 3 seeds): not better "
        "than random — propose neighbours (one knob changed) of the best measured config most of the time",
    )
    print(f"mean best synthetic score over 3 seeds, 48 trials: yours {res['yours']:.3f}, random {res['random']:.3f}")


# ----------------------------------------------------------------------------------------- 04.budget


def first_reaching(curve, level: float) -> int:
    """The 1-based measurement at which a best-so-far curve first reaches ``level`` (0 if it never does)."""
    for i, v in enumerate(curve, 1):
        if v >= level:
            return i
    return 0


@exercises.register("04.budget", "explore", "Change the trial budget: when did XGBoost first reach 0.9?")
def check_budget(answer, curve) -> None:
    """The answer is read off the learner's own curve: the first measurement reaching 0.9 (0 if never)."""
    exercises.answered(answer)
    curve = [float(c) for c in curve]
    exercises.expect(len(curve) > 0, "the tuning curve is empty: run the cell above first")
    try:
        value = int(answer)
    except (TypeError, ValueError):
        raise exercises.ExerciseFailed(f"expected a measurement number (an int), got {answer!r}") from None
    truth = first_reaching(curve, 0.9)
    if value == truth:
        return
    if truth and value == truth - 1:
        raise exercises.ExerciseFailed(f"{value} is one too early: measurements are counted from 1 (the curve's "
                                       "first point is measurement 1)")
    if value == len(curve):
        raise exercises.ExerciseFailed(f"{value} is the whole budget; the question is when the curve first reached 0.9")
    if truth == 0:
        raise exercises.ExerciseFailed(f"in your run ({len(curve)} measurements) the curve never reached 0.9 "
                                       f"(best {max(curve):.3f}): answer 0, or raise explore_trials and re-run")
    raise exercises.ExerciseFailed(f"{value} does not match your run's curve ({len(curve)} measurements, best "
                                   f"{max(curve):.3f}): look at where the line first crosses 0.9")
