"""Checks of the exercises in ``02_parallel_inference.ipynb`` (see :mod:`course_lib.exercises`)."""

from __future__ import annotations

from course_lib import exercises as ex

# (x shape, in_features, out_features, world_size): 2-D and 3-D inputs, one rank, uneven batch sizes
_LINEAR_CASES = [((4, 8), 8, 6, 2), ((2, 5, 16), 16, 12, 4), ((3, 4), 4, 4, 1), ((1, 7, 6), 6, 9, 3)]


_MATMUL_OPS = {"linear", "matmul", "mm", "addmm", "einsum", "bmm", "baddbmm", "__matmul__", "__rmatmul__",
               "tensordot", "inner", "mv", "addmv", "matrix_power", "chain_matmul", "multi_dot"}


def _matmul_widths(fn, *args):
    """Call ``fn`` and return (result, [last-dim width of every matmul-like torch op it ran])."""
    import torch
    from torch.overrides import TorchFunctionMode

    class _Record(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.widths = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = getattr(func, "__name__", "")
            if name in _MATMUL_OPS and isinstance(out, torch.Tensor) and out.dim() >= 1:
                self.widths.append((name, int(out.shape[-1])))
            return out

    rec = _Record()
    with rec:
        out = ex.call(fn, *args)
    return out, rec.widths


@ex.register("02.colwise_linear", "implement", "Column-parallel Linear with its all-gather")
def _check_colwise_linear(fn):
    """Several shapes and world sizes; each rank's matmul may only produce its own columns (no full Linear that is
    split afterwards); results compared in float64, so float32 and float64 answers are both accepted."""
    import torch

    for shape, n_in, n_out, world in _LINEAR_CASES:
        g = torch.Generator().manual_seed(n_in * 100 + n_out)
        x = torch.randn(*shape, generator=g)
        w = torch.randn(n_out, n_in, generator=g)
        b = torch.randn(n_out, generator=g)
        ref = torch.nn.functional.linear(x.double(), w.double(), b.double())
        args = (x.clone(), w.clone(), b.clone(), world)
        got, widths = _matmul_widths(fn, *args)
        case = f"x {tuple(shape)}, weight {tuple(w.shape)}, world_size {world}"
        ex.expect(torch.equal(args[0], x) and torch.equal(args[1], w) and torch.equal(args[2], b),
                  f"{case}: your function changed x, weight or bias in place: a rank must not modify the inputs")
        ex.expect(isinstance(got, tuple) and len(got) == 2,
                  f"{case}: return (partials, output): the list of per-rank outputs and the gathered output")
        partials, out = got
        ex.expect(isinstance(partials, (list, tuple)) and len(partials) == world,
                  f"{case}: expected {world} per-rank outputs, got {len(partials) if hasattr(partials, '__len__') else partials!r}")
        cols = n_out // world
        for r, p in enumerate(partials):
            ex.expect(isinstance(p, torch.Tensor), f"{case}: rank {r}'s output should be a tensor, got {type(p).__name__}")
            ex.expect(tuple(p.shape) == (*shape[:-1], cols),
                      f"{case}: rank {r}'s output has shape {tuple(p.shape)}, expected {(*shape[:-1], cols)}: "
                      f"each rank multiplies by its {cols} rows of the weight (output columns), not the whole weight")
            ex.expect(p.is_floating_point(), f"{case}: rank {r}'s output has dtype {p.dtype}, expected floats")
            err = float((p.double() - ref[..., r * cols:(r + 1) * cols]).abs().max())
            ex.expect(err <= 1e-4,
                      f"{case}: rank {r}'s output is not output columns {r * cols}..{(r + 1) * cols - 1} (max error "
                      f"{err:.3g}): shard the weight AND the bias along dim 0 (out_features), rank r takes the r-th slice")
        full = [name for name, width in widths if width == n_out]
        if world > 1 and full:
            raise ex.ExerciseFailed(f"{case}: a {full[0]} produced all {n_out} output features at once — that is the "
                                    "whole layer on one rank, split afterwards. Each rank multiplies by its own "
                                    f"{cols} rows of the weight (weight.chunk(world_size, dim=0)), so no rank ever "
                                    "computes (or stores) the other ranks' columns")
        ex.expect(isinstance(out, torch.Tensor), f"{case}: the gathered output should be a tensor, got {type(out).__name__}")
        if world > 1 and tuple(out.shape) == (*shape[:-1], cols):
            raise ex.ExerciseFailed(f"{case}: the output has only {cols} of {n_out} features — the all-gather is "
                                    "missing: concatenate every rank's columns")
        if world > 1 and out.dim() == x.dim() and out.shape[0] == world * shape[0]:
            raise ex.ExerciseFailed(f"{case}: output shape {tuple(out.shape)}: you concatenated along dim 0 (the batch); "
                                    "column shards go together along the last (feature) dim, dim=-1")
        ex.expect(tuple(out.shape) == tuple(ref.shape), f"{case}: output shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
        err = float((out.double() - ref).abs().max())
        ex.expect(err <= 1e-4,
                  f"{case}: gathered output differs from the unsplit Linear by {err:.3g} "
                  "(are the ranks' columns concatenated in rank order?)")


def _reference_schedule(stages: int, m: int) -> list[list[tuple[int, int]]]:
    from course_lib.parallel.analysis import gpipe_schedule

    return gpipe_schedule(stages, m)


@ex.register("02.gpipe_schedule", "implement", "The GPipe forward schedule of (stage, micro-batch) steps")
def _check_gpipe_schedule(fn):
    for stages, m in [(1, 1), (2, 1), (1, 3), (2, 4), (4, 4), (3, 5)]:
        got = ex.call(fn, stages, m)
        case = f"{stages} stages, {m} micro-batches"
        try:
            steps = [sorted((int(s), int(i)) for s, i in step) for step in got]
        except (TypeError, ValueError):
            raise ex.ExerciseFailed(f"{case}: return a list of steps, each a list of (stage, micro_batch) pairs") from None
        pairs = [p for step in steps for p in step]
        want = {(s, i) for s in range(stages) for i in range(m)}
        ex.expect(set(pairs) == want and len(pairs) == len(want),
                  f"{case}: every stage must run every micro-batch exactly once "
                  f"(missing {sorted(want - set(pairs))[:4]}, extra or repeated {sorted(p for p in set(pairs) if pairs.count(p) > 1 or p not in want)[:4]})")
        when = {p: t for t, step in enumerate(steps) for p in step}
        for t, step in enumerate(steps):
            busy = [s for s, _ in step]
            ex.expect(len(busy) == len(set(busy)), f"{case}: at step {t} a stage runs two micro-batches at once: {step}")
        for s in range(1, stages):
            for i in range(m):
                ex.expect(when[(s, i)] > when[(s - 1, i)],
                          f"{case}: stage {s} runs micro-batch {i} at step {when[(s, i)]}, but stage {s - 1} only "
                          f"finishes it at step {when[(s - 1, i)]} — a stage needs the previous stage's output first")
        for s in range(stages):
            order = [i for i in sorted(range(m), key=lambda i: when[(s, i)])]
            ex.expect(order == list(range(m)), f"{case}: stage {s} runs the micro-batches in the order {order}, expected 0..{m - 1}")
        if len(steps) == stages * m and stages > 1 and m > 1:
            raise ex.ExerciseFailed(f"{case}: {len(steps)} steps, one (stage, micro-batch) at a time — no two stages "
                                    "ever work together, that is the naive split, not a pipeline")
        ex.expect(len(steps) == m + stages - 1,
                  f"{case}: {len(steps)} steps; a GPipe forward needs m + S - 1 = {m + stages - 1} "
                  "(stage s starts micro-batch i at step s + i)")
        ex.expect(steps == _reference_schedule(stages, m), f"{case}: a stage waits longer than it has to")


# (stage times in ms for the whole batch, batch, micro-batches): balanced, unbalanced, m = 1, 3 and 4 stages
QPS_CASES = [([50.0, 50.0], 8, 4), ([30.0, 70.0], 8, 4), ([40.0, 60.0], 8, 1), ([20.0, 50.0, 30.0], 16, 8),
             ([10.0, 10.0, 10.0, 10.0], 4, 2), ([12.0, 25.0, 8.0, 15.0], 32, 4)]


def _qps_mistakes(ts_s, batch, m):
    """Typical wrong formulas for one batch through a GPipe pipeline, as {name: (value, message)}."""
    S = len(ts_s)
    mean = sum(ts_s) / S
    return {
        "no overlap": (batch / sum(ts_s), "batch / sum(stage times): no overlap at all. With more than one "
                       "micro-batch the stages work on different micro-batches at once"),
        "steady": (batch / max(ts_s), "batch / max(stage times): the rate of batches arriving back to back. One batch "
                   "alone also pays for filling and draining the pipeline (the first micro-batch crosses every stage)"),
        "first trip": (batch / (sum(ts_s) / m), f"that counts only the first micro-batch's trip; the other {m - 1} "
                       "follow at the pace of the slowest stage"),
        "bubble": (batch / ((m + S - 1) * max(ts_s) / m), "that is the bubble formula (m + S − 1) · max(T)/m, which "
                   "assumes equal stages: the first micro-batch crosses the stages at their own speeds, Σ T/m, and "
                   "only the other m − 1 go at the slowest stage's pace"),
        "mean": (batch / (sum(ts_s) / m + (m - 1) * mean / m), "the m − 1 micro-batches behind the first come out at "
                 "the pace of the SLOWEST stage (max T / m each), not the average stage"),
        "ms": (batch / (sum(ts_s) / m + (m - 1) * max(ts_s) / m) / 1000, "stage_ms is in milliseconds: divide by 1000 "
               "to get seconds (sequences per second)"),
        "per micro-batch": (batch / m / (sum(ts_s) / m + (m - 1) * max(ts_s) / m), "that is micro-batches' worth of "
                            "sequences: one batch carries all `batch` sequences"),
    }


@ex.register("02.pipeline_qps", "predict", "Predict the QPS of the pipeline from its stage times")
def _check_pipeline_qps(fn, *, stage_ms, batch: int, microbatches: int):
    """``fn(stage_ms, batch, m)``: the learner's formula, exact GPipe arithmetic (1e-6 relative) on this run's stage
    times (``stage_ms``: each stage's time for the whole batch, ms) and on balanced and unbalanced pipelines."""
    from course_lib.parallel import analysis

    ex.answered(fn)
    if not callable(fn):
        raise ex.ExerciseFailed(f"write the prediction as a function predict_pipeline_qps(stage_ms, batch, m), got "
                                f"{fn!r}: the check also tries it on other pipelines, because one number cannot tell "
                                "the slowest stage from the average one when the stages are balanced")
    cases = [([float(t) for t in stage_ms], int(batch), int(microbatches))] + QPS_CASES
    close = lambda a, b: abs(a - b) <= 1e-6 * abs(b)  # noqa: E731 - exact arithmetic, float rounding only
    outputs = [ex.as_number(ex.call(fn, list(ts), b, m), "predict_pipeline_qps(...)") for ts, b, m in cases]
    targets = [analysis.pipeline_qps([t / 1e3 for t in ts], b, m) for ts, b, m in cases]
    wrong = [k for k, (v, t) in enumerate(zip(outputs, targets)) if not close(v, t)]
    if not wrong:
        print(f"your prediction for this run: {outputs[0]:.4g} sequences/s for one {cases[0][1]}-sequence batch "
              f"with m = {cases[0][2]}")
        return
    # name the mistake that explains the outputs on every pipeline (on balanced stages several formulas agree)
    mistakes = [_qps_mistakes([t / 1e3 for t in ts], b, m) for ts, b, m in cases]
    why = next((mistakes[0][name][1] for name in mistakes[0]
                if all(close(v, mk[name][0]) for v, mk in zip(outputs, mistakes))
                and any(not close(mk[name][0], t) for mk, t in zip(mistakes, targets))), None)
    k = wrong[0]
    ts, b, m = cases[k]
    where = f"stages {ts} ms, batch {b}, m = {m}" + (" (this run)" if k == 0 else "")
    a, t = ex.fmt_pair(outputs[k], targets[k])
    raise ex.ExerciseFailed(f"{where}: you predicted {a} sequences/s, GPipe gives {t}: "
                            + (why or "batch / (Σ T/m + (m − 1) · max T/m), with T in seconds"))


@ex.register("02.best_microbatches", "explore", "Sweep other micro-batch counts: which was fastest in your run?")
def _check_best_microbatches(value, *, measured, lesson=None):
    """``measured``: a DataFrame of the hand-written pipeline's runs (columns ``microbatches``, ``qps``) from the
    learner's own sweep; ``lesson``: the micro-batch counts the lesson measured (the sweep must differ from them)."""
    ex.answered(value)
    m = ex.as_int(value, "the micro-batch count")
    ms = [int(x) for x in measured["microbatches"]]
    if lesson is not None and sorted(set(ms)) == sorted({int(x) for x in lesson}):
        raise ex.ExerciseFailed(f"your sweep measured the lesson's own micro-batch counts {sorted(set(ms))}, which the "
                                "table above already shows: change sweep_m (e.g. [1, 2, 4, 8]), run the sweep cell "
                                "again, then answer from the new table")
    ex.expect(m in ms, f"m={m} was not part of your sweep ({ms}); add it to sweep_m and run the sweep again")
    best = measured.loc[measured["qps"].idxmax()]
    got = measured[measured["microbatches"] == m].iloc[0]
    ex.expect(int(best["microbatches"]) == m,
              f"in your run m={m} reached {got['qps']:.4g} sequences/s but m={int(best['microbatches'])} reached "
              f"{best['qps']:.4g}: read the qps column of the sweep table")
    spread = ""
    if {"qps_p10", "qps_p90"} <= set(measured.columns):
        others = measured[measured["microbatches"] != m]
        if len(others) and (others["qps_p90"] >= best["qps_p10"]).any():
            spread = " — its p10–p90 spread overlaps another m's, so another run may pick a different one"
    print(f"m={m} reached {best['qps']:.4g} sequences/s in your sweep of {sorted(set(ms))}{spread}")
