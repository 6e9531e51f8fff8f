"""Lesson 5 exercises: the solutions pass, blank starters are "not attempted", typical wrong answers fail by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ROOT, require_extra

require_extra("pytorch_quantization", "ptq")

from course_lib import exercises  # noqa: E402
from course_lib.exercises import ExerciseFailed, NotAttempted  # noqa: E402
from course_lib.ptq import pq  # noqa: E402

pq.quiet_logs()


def solution_namespace(ex_id: str, **env) -> dict:
    """Execute one solution section of solutions/05_yolov7_ptq.py with the notebook names it needs."""
    src = exercises.load_solutions(ROOT / "solutions" / "05_yolov7_ptq.py")[ex_id]
    ns = {"np": np, "torch": torch, "pq": pq, **env}
    exec(src, ns)
    return ns


def run(ex_id, *args, **kwargs):
    exercises.lookup(ex_id).fn(*args, **kwargs)


# ------------------------------------------------------------------------------------ 05.percentile_amax
def test_percentile_amax_solution_blank_and_off_by_one():
    run("05.percentile_amax", solution_namespace("05.percentile_amax")["percentile_amax"])

    def blank(counts, edges, p):
        raise NotImplementedError

    with pytest.raises(NotAttempted):
        run("05.percentile_amax", blank)

    def upper_edge(counts, edges, p):  # the classic off-by-one: the bin's upper edge
        return float(edges[np.searchsorted(np.cumsum(counts / counts.sum()), p / 100) + 1])

    with pytest.raises(ExerciseFailed, match="one bin too high"):
        run("05.percentile_amax", upper_edge)

    def percent_not_fraction(counts, edges, p):
        idx = min(int(np.searchsorted(np.cumsum(counts / counts.sum()), p)), len(edges) - 1)
        return float(edges[idx])

    with pytest.raises(ExerciseFailed, match="percent"):
        run("05.percentile_amax", percent_not_fraction)


# ------------------------------------------------------------------------------------ 05.fold_bn
def test_fold_bn_solution_blank_and_missing_sqrt():
    run("05.fold_bn", solution_namespace("05.fold_bn")["fold_bn"])
    with pytest.raises(NotAttempted):
        run("05.fold_bn", None)

    def no_sqrt(w, b, bn):
        scale = bn.weight.detach() / (bn.running_var + bn.eps)
        b = torch.zeros_like(bn.running_mean) if b is None else b
        return w * scale.view(-1, 1, 1, 1), bn.bias.detach() + (b - bn.running_mean) * scale

    with pytest.raises(ExerciseFailed, match="missing sqrt"):
        run("05.fold_bn", no_sqrt)

    def forgot_mean(w, b, bn):
        scale = bn.weight.detach() / (bn.running_var + bn.eps).sqrt()
        b = torch.zeros_like(bn.running_mean) if b is None else b
        return w * scale.view(-1, 1, 1, 1), bn.bias.detach() + b * scale

    with pytest.raises(ExerciseFailed, match="bias is not"):
        run("05.fold_bn", forgot_mean)

    with pytest.raises(ExerciseFailed, match="pair"):
        run("05.fold_bn", lambda w, b, bn: w)


# ------------------------------------------------------------------------------------ 05.int8_weight_bytes
def test_int8_weight_bytes_exact_and_named_mistakes():
    import types

    fused = types.SimpleNamespace(num_params=lambda: 1000)
    ns = solution_namespace("05.int8_weight_bytes", fused=fused)
    run("05.int8_weight_bytes", ns["my_int8_weight_bytes"], measured=4000, n_params=1000)
    with pytest.raises(NotAttempted):
        run("05.int8_weight_bytes", None, measured=4000, n_params=1000)
    with pytest.raises(ExerciseFailed, match="one byte per parameter"):
        run("05.int8_weight_bytes", 1000, measured=4000, n_params=1000)
    with pytest.raises(ExerciseFailed, match="a quarter"):
        run("05.int8_weight_bytes", 1000, measured=4000)
    with pytest.raises(ExerciseFailed, match="expected a number"):
        run("05.int8_weight_bytes", "many", measured=4000)
    with pytest.raises(ExerciseFailed, match="measured 4000 bytes"):
        run("05.int8_weight_bytes", 3000, measured=4000, n_params=1000)


# ------------------------------------------------------------------------------------ 05.calib_batches
def test_calib_batches_verifies_the_learners_own_number():
    torch.manual_seed(0)
    fused = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    batches = [torch.randn(4, 3, 12, 12) for _ in range(3)]
    ref_x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        ref = fused(ref_x)

    def score(m):  # negative relative output error: a deterministic stand-in for mAP
        with torch.no_grad():
            return -float((m(ref_x) - ref).norm() / ref.norm())

    kw = dict(model=fused, batches=batches, method="percentile", score_fn=score, stride=4)
    # the solution's section, with the notebook's names, but a toy model and score
    import types

    coco_eval = types.SimpleNamespace(evaluate=lambda m, imgs, coco: {"map": score(m)})
    ns = solution_namespace("05.calib_batches", fused=fused, calib_batches=batches, best="percentile", percentile=99.99,
                            calib_stride=4, coco_eval=coco_eval, sel_imgs=None, coco_sel=None)
    run("05.calib_batches", ns["my_n_batches"], ns["my_map_few"], **kw)
    with pytest.raises(NotAttempted):
        run("05.calib_batches", None, None, **kw)
    with pytest.raises(ExerciseFailed, match="scores"):
        run("05.calib_batches", ns["my_n_batches"], ns["my_map_few"] + 0.01, **kw)  # a number not from this run
    with pytest.raises(ExerciseFailed, match="fewer than the 3"):
        run("05.calib_batches", 3, ns["my_map_few"], **kw)


def test_four_exercises_registered():
    kinds = {e.id: e.kind for e in exercises.registered("05")}
    assert kinds == {"05.percentile_amax": "implement", "05.fold_bn": "implement", "05.int8_weight_bytes": "predict",
                     "05.calib_batches": "explore"}
