"""Lesson 2 exercises: each solution passes its check, a blank starter is "not attempted", typical mistakes are named."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from course_lib import exercises
from course_lib.exercises import ExerciseFailed, NotAttempted
from course_lib.paths import solutions_dir


def _solutions() -> dict:
    from types import SimpleNamespace

    extra = pd.DataFrame({"microbatches": [3], "qps": [58.0], "qps_p10": [56.0], "qps_p90": [60.0]})
    ns = {"torch": torch, "pd": pd, "m_pred": 4, "stage_ms": [30.0, 50.0], "batch": 8, "pipeline_microbatches": [1, 2, 4],
          "hand": pd.DataFrame({"microbatches": [1, 2, 4], "qps": [50.0, 61.0, 55.0], "qps_p10": [49.0, 60.0, 54.0],
                                "qps_p90": [51.0, 62.0, 56.0]}).set_index("microbatches"),
          "launch": lambda runs, **kw: SimpleNamespace(frame=extra), "Run": lambda *a, **k: None, "display": print,
          **{k: 1 for k in ("world_size", "model_preset", "seq_len", "warmup", "repeat", "qps_batches", "qps_rounds",
                            "threads", "launch_timeout_s", "collective_timeout_s")}}
    for src in exercises.load_solutions(solutions_dir() / "02_parallel_inference.py").values():
        exec(src, ns)
    return ns


def _check(id, *args, **kwargs):
    exercises.lookup(id).fn(*args, **kwargs)


def _blank(*args):
    raise NotImplementedError


QPS_KW = dict(stage_ms=[30.0, 50.0], batch=8, microbatches=4)
SWEEP = pd.DataFrame({"microbatches": [1, 2, 4], "qps": [50.0, 61.0, 55.0]})


def test_every_lesson2_exercise_is_listed_and_has_a_solution():
    ids = {e.id for e in exercises.registered("02")}
    assert ids == {"02.colwise_linear", "02.gpipe_schedule", "02.pipeline_qps", "02.best_microbatches"}
    assert set(exercises.load_solutions(solutions_dir() / "02_parallel_inference.py")) == ids


def test_solutions_pass():
    ns = _solutions()
    _check("02.colwise_linear", ns["column_parallel_linear"])
    _check("02.gpipe_schedule", ns["gpipe_schedule"])
    _check("02.pipeline_qps", ns["predict_pipeline_qps"], **QPS_KW)
    assert sorted(ns["sweep"]["microbatches"]) == [1, 2, 3, 4]  # the solution measured one more m
    _check("02.best_microbatches", ns["my_best_m"], measured=ns["sweep"], lesson=[1, 2, 4])
    assert ns["my_best_m"] == 2


def test_blank_starters_are_not_attempted():
    for id, args, kw in [("02.colwise_linear", (_blank,), {}), ("02.gpipe_schedule", (_blank,), {}),
                         ("02.pipeline_qps", (None,), QPS_KW), ("02.best_microbatches", (None,), {"measured": SWEEP})]:
        with pytest.raises(NotAttempted):
            _check(id, *args, **kw)


def test_colwise_missing_all_gather_and_wrong_dim_are_named():
    def no_gather(x, w, b, n):
        parts = [torch.nn.functional.linear(x, wi, bi) for wi, bi in zip(w.chunk(n), b.chunk(n))]
        return parts, parts[0]

    def wrong_dim(x, w, b, n):
        parts = [torch.nn.functional.linear(x, wi, bi) for wi, bi in zip(w.chunk(n), b.chunk(n))]
        return parts, torch.cat(parts, dim=0)

    def full_weight_per_rank(x, w, b, n):
        parts = [torch.nn.functional.linear(x, w, b) for _ in range(n)]
        return parts, parts[0]

    def bias_not_sharded(x, w, b, n):
        parts = [torch.nn.functional.linear(x, wi) + b[: wi.shape[0]] for wi in w.chunk(n)]
        return parts, torch.cat(parts, dim=-1)

    with pytest.raises(ExerciseFailed, match="all-gather is missing"):
        _check("02.colwise_linear", no_gather)
    with pytest.raises(ExerciseFailed, match="concatenated along dim 0"):
        _check("02.colwise_linear", wrong_dim)
    with pytest.raises(ExerciseFailed, match="not the whole weight"):
        _check("02.colwise_linear", full_weight_per_rank)
    with pytest.raises(ExerciseFailed, match="AND the bias"):
        _check("02.colwise_linear", bias_not_sharded)


def test_gpipe_sequential_and_dependency_mistakes_are_named():
    def sequential(S, m):
        return [[(s, i)] for i in range(m) for s in range(S)]

    def all_at_once(S, m):  # ignores that stage s needs stage s-1's output
        return [[(s, i) for s in range(S)] for i in range(m)]

    def missing_drain(S, m):
        return [[(s, t - s) for s in range(S) if 0 <= t - s < m] for t in range(m)]

    with pytest.raises(ExerciseFailed, match="naive split, not a pipeline"):
        _check("02.gpipe_schedule", sequential)
    with pytest.raises(ExerciseFailed, match="needs the previous stage's output"):
        _check("02.gpipe_schedule", all_at_once)
    with pytest.raises(ExerciseFailed, match="every stage must run every micro-batch exactly once"):
        _check("02.gpipe_schedule", missing_drain)


def test_pipeline_qps_typical_wrong_predictions_are_named():
    with pytest.raises(ExerciseFailed, match="no overlap"):
        _check("02.pipeline_qps", lambda t, b, m: b / (sum(t) / 1e3), **QPS_KW)
    with pytest.raises(ExerciseFailed, match="back to back"):
        _check("02.pipeline_qps", lambda t, b, m: b / (max(t) / 1e3), **QPS_KW)
    with pytest.raises(ExerciseFailed, match="GPipe gives"):
        _check("02.pipeline_qps", lambda t, b, m: 1.0, **QPS_KW)
    with pytest.raises(ExerciseFailed, match="expected a number"):
        _check("02.pipeline_qps", lambda t, b, m: "fast", **QPS_KW)
    with pytest.raises(ExerciseFailed, match="as a function"):
        _check("02.pipeline_qps", 100.0, **QPS_KW)


def test_best_microbatches_wrong_and_unswept_answers():
    with pytest.raises(ExerciseFailed, match="m=2 reached 61: read"):
        _check("02.best_microbatches", 4, measured=SWEEP)
    with pytest.raises(ExerciseFailed, match="not part of your sweep"):
        _check("02.best_microbatches", 8, measured=SWEEP)
    with pytest.raises(ExerciseFailed, match="lesson's own"):
        _check("02.best_microbatches", 2, measured=SWEEP, lesson=[4, 2, 1])
