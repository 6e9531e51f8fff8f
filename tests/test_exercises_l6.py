"""Lesson 3b (notebook 06) exercises: the solutions pass, blank starters are 'not attempted', typical mistakes get named."""

from __future__ import annotations

import pytest
import torch

from course_lib import exercises, paths
from course_lib.exercises import ExerciseFailed, NotAttempted, l6

SOLUTIONS = exercises.load_solutions(paths.repo_root() / "solutions" / "06_llm_int4_awq_gptq.py")


def solved(id: str, **names) -> dict:
    ns = {"torch": torch, **names}
    exec(SOLUTIONS[id], ns)
    return ns


def run(id: str, *args, **kwargs):
    return exercises.lookup(id).fn(*args, **kwargs)


def test_every_exercise_has_a_solution_and_at_least_four():
    ids = {e.id for e in exercises.registered("06")}
    assert len(ids) >= 4 and ids == set(SOLUTIONS)


def test_gptq_column_solution_blank_and_mistakes():
    run("06.gptq_column", solved("06.gptq_column")["gptq_column"])

    def blank(wb, hrow, scale):
        raise NotImplementedError

    with pytest.raises(NotAttempted):
        run("06.gptq_column", blank)

    def rtn(wb, hrow, scale):
        return torch.clamp(torch.round(wb[:, 0] / scale), -8, 7), wb.clone()

    def no_divide(wb, hrow, scale):
        q = torch.clamp(torch.round(wb[:, 0] / scale), -8, 7)
        return q, wb - (wb[:, 0] - q * scale)[:, None] * hrow[None, :]

    def plus(wb, hrow, scale):
        q = torch.clamp(torch.round(wb[:, 0] / scale), -8, 7)
        return q, wb + ((wb[:, 0] - q * scale) / hrow[0])[:, None] * hrow[None, :]

    def no_clip(wb, hrow, scale):
        q = torch.round(wb[:, 0] / scale)
        return q, wb - ((wb[:, 0] - q * scale) / hrow[0])[:, None] * hrow[None, :]

    for fn, words in ((rtn, "RTN"), (no_divide, "divide"), (plus, "wrong sign"), (no_clip, "clip")):
        with pytest.raises(ExerciseFailed, match=words):
            run("06.gptq_column", fn)


def test_awq_channels_solution_blank_and_mistakes():
    g = torch.Generator().manual_seed(0)
    x_mean = torch.rand(64, generator=g)
    w = torch.randn(32, 64, generator=g)
    kw = dict(x_mean=x_mean, w=w, k=4)
    run("06.awq_channels", solved("06.awq_channels", x_mean=x_mean)["my_channels"], **kw)
    with pytest.raises(NotAttempted):
        run("06.awq_channels", None, **kw)
    with pytest.raises(ExerciseFailed, match="WEIGHTS"):
        run("06.awq_channels", w.abs().amax(0).topk(4).indices.tolist(), **kw)
    with pytest.raises(ExerciseFailed, match="quietest"):
        run("06.awq_channels", (-x_mean).topk(4).indices.tolist(), **kw)


def test_damping_solution_blank_and_mistakes():
    run("06.damping", solved("06.damping")["my_damp"])
    with pytest.raises(NotAttempted):
        run("06.damping", None)
    with pytest.raises(ExerciseFailed, match="Cholesky fails"):
        run("06.damping", 0)
    with pytest.raises(ExerciseFailed, match="forgets the activations"):
        run("06.damping", 100.0)
    with pytest.raises(ExerciseFailed, match="negative"):
        run("06.damping", -1.0)


def test_calib_size_solution_blank_and_mistakes():
    def measure_layer_error(n):
        return 1.0 / n  # more tokens, lower error (a stand-in for the notebook's measurement)

    ns = solved("06.calib_size", measure_layer_error=measure_layer_error)
    args = [ns[k] for k in ("n_small", "err_small", "n_large", "err_large", "lower")]
    run("06.calib_size", *args, measure=measure_layer_error)
    with pytest.raises(NotAttempted):
        run("06.calib_size", None, None, None, None, None, measure=measure_layer_error)
    with pytest.raises(ExerciseFailed, match="read the numbers"):
        run("06.calib_size", *args[:4], args[0], measure=measure_layer_error)
    with pytest.raises(ExerciseFailed, match="paste the measured"):
        run("06.calib_size", args[0], 0.5, *args[2:], measure=measure_layer_error)
