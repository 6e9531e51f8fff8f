"""Checks of the exercises in ``02_parallel_inference.ipynb`` (see :mod:`course_lib.exercises`)."""

from __future__ import annotations

from course_lib import exercises as ex

# (x shape, in_features, out_features, world_size): 2-D and 3-D inputs, one rank, uneven batch sizes
_LINEAR_CASES = [((4, 8), 8, 6, 2), ((2, 5, 16), 16, 12, 4), ((3, 4), 4, 4, 1), ((1, 7, 6), 6, 9, 3)]


@ex.register("02.colwise_linear", "implement", "Column-parallel Linear with its all-gather")
def _check_colwise_linear(fn):
    import torch

    for shape, n_in, n_out, world in _LINEAR_CASES:
        g = torch.Generator().manual_seed(n_in * 100 + n_out)
        x = torch.randn(*shape, generator=g)
        w = torch.randn(n_out, n_in, generator=g)
        b = torch.randn(n_out, generator=g)
        ref = torch.nn.functional.linear(x, w, b)
        got = ex.call(fn, x, w, b, world)
        case = f"x {tuple(shape)}, weight {tuple(w.shape)}, world_size {world}"
        ex.expect(isinstance(got, tuple) and len(got) == 2,
                  f"{case}: return (partials, output): the list of per-rank outputs and the gathered output")
        partials, out = got
        ex.expect(isinstance(partials, (list, tuple)) and len(partials) == world,
                  f"{case}: expected {world} per-rank outputs, got {len(partials) if hasattr(partials, '__len__') else partials!r}")
        cols = n_out // world
        for r, p in enumerate(partials):
            ex.expect(tuple(p.shape) == (*shape[:-1], cols),
                      f"{case}: rank {r}'s output has shape {tuple(p.shape)}, expected {(*shape[:-1], cols)}: "
                      f"each rank multiplies by its {cols} rows of the weight (output columns), not the whole weight")
            ex.expect(torch.allclose(p, ref[..., r * cols:(r + 1) * cols], atol=1e-5),
                      f"{case}: rank {r}'s output is not output columns {r * cols}..{(r + 1) * cols - 1}: "
                      "shard the weight AND the bias along dim 0 (out_features), rank r takes the r-th slice")
        ex.expect(isinstance(out, torch.Tensor), f"{case}: the gathered output should be a tensor, got {type(out).__name__}")
        if world > 1 and tuple(out.shape) == (*shape[:-1], cols):
            raise ex.ExerciseFailed(f"{case}: the output has only {cols} of {n_out} features — the all-gather is "
                                    "missing: concatenate every rank's columns")
        if world > 1 and out.dim() == x.dim() and out.shape[0] == world * shape[0]:
            raise ex.ExerciseFailed(f"{case}: output shape {tuple(out.shape)}: you concatenated along dim 0 (the batch); "
                                    "column shards go together along the last (feature) dim, dim=-1")
        ex.expect(tuple(out.shape) == tuple(ref.shape), f"{case}: output shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
        ex.expect(torch.allclose(out, ref, atol=1e-5),
                  f"{case}: gathered output differs from the unsplit Linear by {float((out - ref).abs().max()):.3g} "
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


@ex.register("02.pipeline_qps", "predict", "Predict the QPS of the pipeline from its stage times")
def _check_pipeline_qps(value, *, stage_ms, batch: int, microbatches: int):
    """``stage_ms``: each stage's time for the whole batch (ms); exact GPipe arithmetic within 2 %."""
    from course_lib.parallel import analysis

    ex.answered(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ex.ExerciseFailed(f"expected a number (sequences/s), got {value!r}") from None
    ts = [t / 1e3 for t in stage_ms]
    target = analysis.pipeline_qps(ts, batch, microbatches)
    no_overlap = batch / sum(ts)
    steady = batch / max(ts)
    close = lambda a, b: abs(a - b) <= 0.02 * abs(b)  # noqa: E731
    if not close(v, target):
        if microbatches > 1 and close(v, no_overlap):
            raise ex.ExerciseFailed(f"{v:.4g} sequences/s is batch / sum(stage times): no overlap at all. With "
                                    f"{microbatches} micro-batches the stages work on different micro-batches at once")
        if close(v, steady):
            raise ex.ExerciseFailed(f"{v:.4g} sequences/s is batch / max(stage times): the rate of batches arriving "
                                    "back to back. One batch alone also pays for filling and draining the pipeline "
                                    "(the first micro-batch crosses every stage)")
        if close(v, batch / (sum(ts) / microbatches)):
            raise ex.ExerciseFailed(f"{v:.4g} sequences/s counts only the first micro-batch's trip; the other "
                                    f"{microbatches - 1} follow at the pace of the slowest stage")
    ex.within(v, target, 0.02, f"QPS of one {batch}-sequence batch with {microbatches} micro-batches", "sequences/s")


@ex.register("02.best_microbatches", "explore", "Which micro-batch count was fastest in your run?")
def _check_best_microbatches(value, *, measured):
    """``measured``: a DataFrame of the hand-written pipeline's runs (columns ``microbatches``, ``qps``)."""
    ex.answered(value)
    try:
        m = int(value)
    except (TypeError, ValueError):
        raise ex.ExerciseFailed(f"expected a micro-batch count (an integer), got {value!r}") from None
    ms = [int(x) for x in measured["microbatches"]]
    ex.expect(m in ms, f"m={m} was not part of your sweep ({ms}); add it to pipeline_microbatches and run the sweep again")
    best = measured.loc[measured["qps"].idxmax()]
    got = measured[measured["microbatches"] == m].iloc[0]
    ex.expect(int(best["microbatches"]) == m,
              f"in your run m={m} reached {got['qps']:.1f} sequences/s but m={int(best['microbatches'])} reached "
              f"{best['qps']:.1f}: read the qps column of the sweep table")
