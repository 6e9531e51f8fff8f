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
    n, l, m = (int(x) for x in shape)
    exact = 2 * n * l * m
    v = exercises.as_number(answer, "the FLOP count")
    # the answer is exact arithmetic; a float is accepted when it is exactly that integer (2 * 512**3, 2.68435456e8)
    if v == exact:
        return
    for scale, unit in ((1e9, "GFLOP"), (1e6, "MFLOP"), (1e12, "TFLOP")):
        if abs(v * scale - exact) <= 0.005 * exact:
            raise exercises.ExerciseFailed(f"{v:g} is the count in {unit} ({exact / scale:g} {unit}); the question "
                                           f"asks for FLOPs, a plain number: {unit} × {scale:.0e}")
    if v != int(v):
        if abs(v - exact) <= 0.01 * exact:
            a, b = exercises.fmt_pair(v, exact)
            raise exercises.ExerciseFailed(f"{a} is close to the count but not it ({b}): a FLOP count is exact "
                                           "arithmetic, write the product itself (e.g. 2 * N * L * M), not a rounded figure")
        raise exercises.ExerciseFailed(f"the FLOP count: an integer, got {v:g}")
    value = int(v)
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
    if value in (n * l * m * 4, 3 * n * l * m):
        raise exercises.ExerciseFailed(f"{value:,} counts too much: one multiply-accumulate is 2 FLOPs, and there are "
                                       "N·L·M of them")
    if abs(value - exact) <= 0.01 * exact:
        raise exercises.ExerciseFailed(f"{value:,} is close to the count but not it ({exact:,}): a FLOP count is exact "
                                       "arithmetic, write the product itself (e.g. 2 * N * L * M), not a rounded figure")
    raise exercises.ExerciseFailed(f"{value:,} FLOPs is not it ({exact:,} would be right): count the "
                                   "multiply-accumulates of C[i, j] = Σ_k A[i, k]·B[k, j]")


# ----------------------------------------------------------------------------------------- 04.cache_write

# (n, l, m) with tiles (tile_y, tile_x): non-square shapes and tiles that differ per case (hard-coded tiles fail)
_CACHE_CASES = [((64, 48, 32), (8, 8)), ((128, 64, 96), (16, 32)), ((32, 16, 64), (32, 8))]


def _schedule_error(e: Exception) -> str:
    """One line out of TVM's multi-page ScheduleError: which primitive refused, and TVM's own reason."""
    text = str(e)
    prim = text.split("schedule primitive '", 1)[1].split("'", 1)[0] if "schedule primitive '" in text else "?"
    reason = text.split("Error message:", 1)[1].strip().splitlines()[0] if "Error message:" in text else text.splitlines()[-1]
    hint = ""
    if prim == "vectorize" and "data parallel" in reason:
        hint = (" — you vectorised a loop that carries the reduction over k (or one that contains it): vectorise "
                "j.inner (ji), the innermost spatial loop, contiguous in B and C")
    elif prim == "parallel" and "data parallel" in reason:
        hint = " — k carries the reduction and cannot run in parallel: parallelise i.outer (io)"
    elif prim == "reverse_compute_at":
        hint = " — reverse_compute_at takes the cache_write block and a loop of the compute block (jo)"
    return f"TVM refused sch.{prim}(...): {reason}{hint}"


def _call_schedule(fn, mod, ty, tx):
    try:
        return fn(mod, ty, tx)
    except NotImplementedError:
        raise exercises.NotAttempted() from None
    except exercises.ExerciseFailed:
        raise
    except Exception as e:  # noqa: BLE001 - the learner's schedule raised
        if type(e).__name__ == "ScheduleError":
            raise exercises.ExerciseFailed(_schedule_error(e)) from None
        raise exercises.ExerciseFailed(f"your function raised {type(e).__name__}: {str(e)[:300]}") from None


def schedule_structure(sch) -> dict:
    """The loop nest of a matmul schedule, read from the schedule itself (not from its trace text).

    ``loops``: the compute block C's loops, outermost first, as (name, extent, kind) with kind one of "serial",
    "parallel", "vectorized", "unrolled"; ``writes``: the buffer C writes; ``writeback``: None when C writes the
    output directly, else the write-back block's number of loops shared with C (2 = under j.outer)."""
    kinds = {0: "serial", 1: "parallel", 2: "vectorized", 3: "unrolled"}
    root = sch.get_sblock("root")
    blocks = {sch.get(b).name_hint: b for b in sch.get_child_blocks(root)}
    c = blocks.get("C") or sch.get_sblock("C")
    c_loops = sch.get_loops(c)
    loops = [(str(sch.get(lp).loop_var), int(sch.get(lp).extent), kinds.get(int(sch.get(lp).kind), "?"))
             for lp in c_loops]
    writes = str(sch.get(c).writes[0]).split("[")[0]
    writeback = None
    others = [b for name, b in blocks.items() if name != "C"]
    for b in others:
        if str(sch.get(b).writes[0]).split("[")[0] == "C":
            wb_loops = sch.get_loops(b)
            shared = 0
            for a, w in zip(c_loops, wb_loops):
                if not sch.get(a).same_as(sch.get(w)):
                    break
                shared += 1
            writeback = shared
    return {"loops": loops, "writes": writes, "writeback": writeback, "blocks": sorted(blocks)}


@exercises.register("04.cache_write", "implement", "One more schedule step: accumulate the C tile in a local buffer")
def check_cache_write(fn) -> None:
    """Three non-square shapes with different tiles: correct against numpy, and the loop nest read from the schedule:
    C's loops are (i.outer parallel, j.outer, k, i.inner, j.inner vectorised) with the asked tile sizes, C accumulates
    in a cache buffer, and the write-back block sits under j.outer (shares exactly i.outer and j.outer with C)."""
    from course_lib.tuning import matmul

    exercises.answered(fn)
    for (n, l, m), (ty, tx) in _CACHE_CASES:
        case = f"{n}×{l}×{m} with tile_y={ty}, tile_x={tx}"
        mod = matmul.matmul_module(n, l, m)
        sch = _call_schedule(fn, mod, ty, tx)
        exercises.expect(
            hasattr(sch, "trace") and hasattr(sch, "mod"),
            f"my_schedule must return the s_tir.Schedule it transformed, got {type(sch).__name__}",
        )
        try:
            lib = matmul.build(sch)
            matmul.run_and_check(lib, matmul.make_data(n, l, m, seed=n + m))
        except matmul.WrongResult as e:
            raise exercises.ExerciseFailed(
                f"{case}: {e} — a schedule must never change the result "
                "(did you vectorise a loop that holds the reduction over k?)"
            ) from None
        except Exception as e:  # noqa: BLE001 - the learner's schedule did not build
            raise exercises.ExerciseFailed(f"{case}: the schedule does not build: {type(e).__name__}: "
                                           f"{str(e).splitlines()[0][:300]}") from None
        st = schedule_structure(sch)
        loops = st["loops"]
        nest = ", ".join(f"{name}({ext}{'' if kind == 'serial' else ' ' + kind})" for name, ext, kind in loops)
        where = f"{case}: C's loop nest is [{nest}]"
        exercises.expect(len(loops) == 5, f"{where}; expected 5 loops (i.outer, j.outer, k, i.inner, j.inner): split i "
                                          "and j once each with sch.split, then sch.reorder(io, jo, k, ii, ji)")
        extents = [ext for _, ext, _ in loops]
        want = [n // ty, m // tx, l, ty, tx]
        if sorted(extents) == sorted(want) and extents != want:
            raise exercises.ExerciseFailed(f"{where}; expected the order i.outer({n // ty}), j.outer({m // tx}), k({l}), "
                                           f"i.inner({ty}), j.inner({tx}): sch.reorder(io, jo, k, ii, ji)")
        if extents[3:] != [ty, tx]:
            raise exercises.ExerciseFailed(f"{where}; the inner loops should be the {ty}×{tx} tile (tile_y × tile_x "
                                           "given to my_schedule — use the arguments, not fixed numbers)")
        exercises.expect(extents == want, f"{where}; expected extents {want} (i.outer, j.outer, k, i.inner, j.inner)")
        parallel = [i for i, (_, _, kind) in enumerate(loops) if kind == "parallel"]
        exercises.expect(bool(parallel), f"{where}; no parallel loop: the kernel runs on one core (sch.parallel(io))")
        exercises.expect(parallel == [0], f"{where}; the parallel loop should be i.outer, the outermost: each core "
                                          "then takes whole rows of tiles (sch.parallel(io)), with one fork per call")
        exercises.expect(loops[4][2] == "vectorized",
                         f"{where}; the innermost loop j.inner is not vectorised (sch.vectorize(ji)): it is contiguous "
                         "in B and C")
        vec = [i for i, (_, _, kind) in enumerate(loops) if kind == "vectorized"]
        exercises.expect(vec == [4], f"{where}; only j.inner should be vectorised")
        exercises.expect(st["writes"] != "C" and st["writeback"] is not None,
                         f"{case}: the compute block writes C directly — no cache_write: "
                         "sch.cache_write(block, 0, 'global') makes the C tile accumulate in a local buffer")
        wb = st["writeback"]
        if wb == 0:
            raise exercises.ExerciseFailed(f"{case}: the write-back block runs after the whole matmul (a second pass "
                                           "over C): move it under j.outer with sch.reverse_compute_at(cw, jo) so each "
                                           "tile is written back while it is still in cache")
        if wb == 1:
            raise exercises.ExerciseFailed(f"{case}: the write-back block sits under i.outer only, so it writes back a "
                                           f"whole row of {m // tx} tiles after they were all computed: move it under "
                                           "j.outer, sch.reverse_compute_at(cw, jo)")
        exercises.expect(wb == 2, f"{case}: the write-back block sits inside the k loop (it shares {wb} loops with C): "
                                  "it would copy the tile after every k step — move it under j.outer, "
                                  "sch.reverse_compute_at(cw, jo)")


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


def greedy_benchmark(tuner_cls, space, trials: int = 48, seeds=(0, 1, 2, 3, 4), width: float = 0.6) -> dict[str, float]:
    """Mean best synthetic score (5 seeds) of ``tuner_cls`` and of the random tuner with the same budget, on a cost
    wide enough (``width``) that no seed leaves both at a flat 0.000."""
    from course_lib.tuning import tuners

    out = {}
    for name, cls in (("yours", tuner_cls), ("random", tuners.RandomTuner)):
        scores = []
        for seed in seeds:
            cost = tuners.SyntheticCost(space, seed=100 + seed, width=width)
            t = _make_tuner(cls, space, seed) if name == "yours" else cls(space, seed=seed)
            scores.append(exercises.call(t.tune, cost, n_trial=trials, batch_size=8).score)
        out[name] = float(np.mean(scores))
    return out


@exercises.register("04.greedy_next_batch", "implement", "A tuner's next-candidate step: epsilon-greedy")
def check_greedy(tuner_cls) -> None:
    """Valid, unvisited, distinct proposals; exhausts a tiny space; neighbours with eps = 0 and some random configs
    with the class's eps (read from the proposals); beats random search on a smooth synthetic cost."""
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
    for knob in "abcd":  # 16 configs; the best's one-knob neighbours are only 4 of them
        tiny.define_knob(knob, [0, 1])
    tiny_cost = tuners.SyntheticCost(tiny, seed=0)
    best = exercises.call(_make_tuner(tuner_cls, tiny, seed=0).tune, tiny_cost, n_trial=50, batch_size=4)
    exercises.expect(sorted(tiny_cost.seen) == list(range(16)),
                     f"on a 16-config space it measured {len(set(tiny_cost.seen))}: when every neighbour of the best is "
                     "measured, fill the batch with random unvisited configs")
    exercises.expect(best.index == tiny_cost.best_index, "the tuner did not return its best measured config")
    # 3. it is epsilon-greedy: with eps = 0 every proposal is a one-knob neighbour of the best; with the class's eps
    #    some, not most, are random (the proposals are read, not scored: deterministic for a given seed)
    big = template.matmul_space(512, 512, 512)
    shares = {}
    for eps in (0.0, getattr(tuner_cls, "eps", 0.2)):
        t = _make_tuner(tuner_cls, big, seed=7)
        exercises.call(t.tune, tuners.SyntheticCost(big, seed=7), n_trial=16, batch_size=8)
        t.eps = eps
        best = t.best.index
        neighbours = set(_one_knob_neighbours(big, best))
        props = [i for _ in range(40) for i in _proposals(t, 8)]
        shares[eps] = sum(i not in neighbours for i in props) / len(props)
    eps = getattr(tuner_cls, "eps", 0.2)
    exercises.expect(shares[0.0] <= 0.05,
                     f"with eps = 0 {shares[0.0]:.0%} of the proposals were not neighbours of the best config (one knob "
                     "changed): propose neighbours of self.best, and read the exploration rate from self.eps")
    exercises.expect(shares[eps] >= eps / 4,
                     f"with eps = {eps} only {shares[eps]:.0%} of the proposals were random (not neighbours): no "
                     "exploration — with probability self.eps propose a random unvisited config instead")
    exercises.expect(shares[eps] <= min(0.9, 2.5 * eps + 0.1),
                     f"with eps = {eps}, {shares[eps]:.0%} of the proposals were not neighbours of the best: most of "
                     "the time a greedy tuner proposes neighbours (one knob changed) of the best config so far")
    # 4. it searches: better than random on a smooth synthetic cost (same budget, same seeds; deterministic)
    res = greedy_benchmark(tuner_cls, big)
    exercises.expect(
        res["yours"] > res["random"],
        f"mean best score {res['yours']:.4f} vs random search {res['random']:.4f} (48 trials, 5 seeds): not better "
        "than random — propose neighbours (one knob changed) of the best measured config most of the time",
    )
    print(f"mean best synthetic score over 5 seeds, 48 trials: yours {res['yours']:.3f}, random {res['random']:.3f}; "
          f"share of random proposals at eps = {eps}: {shares[eps]:.0%}")


def _one_knob_neighbours(space, index: int) -> list[int]:
    g = space.genes(index)
    out = []
    for d, dim in enumerate(space.dims):
        for v in range(dim):
            if v != g[d]:
                h = list(g)
                h[d] = v
                out.append(space.index(h))
    return out


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
    value = exercises.as_int(answer, "the measurement number")
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
