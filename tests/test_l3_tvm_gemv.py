"""Lesson 3 + 4: the TVM fused dequantise-GEMV (course_lib.llm.tvm_gemv) against QLinear's reference forward.

Float32 activations and accumulation: the kernel must match the reference's dequantise-then-matmul up to float
rounding (unlike the int8-activation ``fast`` kernel). Timings are never asserted.
"""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import require_extra

tvm = require_extra("tvm", "tvm")

from course_lib.llm import tvm_gemv  # noqa: E402
from course_lib.llm.quant import QLinear  # noqa: E402
from course_lib import tvmtools  # noqa: E402
from course_lib.llm import kernel_bench  # noqa: E402

TOL = 1e-5  # max |tvm - ref| / max |ref|: float32 rounding over a few hundred terms


def _rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _layers(bits, group_size, out_f, in_f, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed + out_f * 7 + in_f)
    w = torch.randn(out_f, in_f, generator=g) * 0.05
    b = torch.randn(out_f, generator=g) if bias else None
    ref = QLinear(bits, w, b, group_size=group_size)
    return ref, tvm_gemv.TvmLinear(ref.int_weight(), ref.scale, bits, group_size, ref.bias)


# SmolLM2's 576 / 960 / 1536 and odd group counts (576/64 = 9, 192/64 = 3, 40/8 = 5), N not a multiple of 16
@pytest.mark.parametrize("bits,group_size,out_f,in_f", [
    (8, None, 40, 576), (4, 64, 40, 192), (4, 64, 960, 576), (8, None, 576, 1536), (4, 32, 24, 96),
    (8, 8, 37, 40), (4, None, 1536, 576),
])
def test_tvm_gemv_matches_the_reference(bits, group_size, out_f, in_f):
    ref, fused = _layers(bits, group_size, out_f, in_f)
    x = torch.randn(1, in_f)
    assert fused(x).shape == (1, out_f)
    assert _rel_err(fused(x), ref(x)) <= TOL
    xb = torch.randn(3, 2, in_f)  # a batch: one GEMV per row
    assert _rel_err(fused(xb), ref(xb)) <= TOL


def test_unaligned_and_batch_one_without_bias():
    ref, fused = _layers(4, 64, 40, 192, bias=False)
    x = torch.randn(2, 193)[1:, 1:]  # a view 4 bytes past the start of a row: not 64-byte aligned
    assert _rel_err(fused(x), ref(x)) <= TOL
    x1 = torch.randn(1, 1, 192)  # the decoding call: (batch, tokens, hidden)
    assert fused(x1).shape == (1, 1, 40) and _rel_err(fused(x1), ref(x1)) <= TOL


def test_same_shape_compiles_once():
    _, a = _layers(8, None, 48, 64)
    _, b = _layers(8, None, 48, 64, seed=1)
    assert a.fn is b.fn


def test_layout_conversion_is_exact():
    ref = QLinear(4, torch.randn(6, 128), group_size=32)
    codes, scale = tvm_gemv.to_tvm_layout(ref.int_weight(), ref.scale, 4)
    c = torch.from_numpy(codes).to(torch.int16)  # (in/2, out)
    q = torch.stack([c & 0xF, c >> 4], dim=1).reshape(128, 6).t() - 8
    assert torch.equal(q, ref.int_weight().to(torch.int16))
    assert torch.equal(torch.from_numpy(scale), ref.scale.float().t())


def test_committed_database_replays_for_a_smollm2_shape():
    db = tvmtools.load_database(tvmtools.committed_dir(tvm_gemv.DB_NAME))
    sch, how = tvm_gemv.schedule_for(tvm_gemv.gemv_module(960, 576, 4, 64), db)
    assert how == "MetaSchedule database" and "T.parallel" in sch.mod.script()
    ref, fused = _layers(4, 64, 960, 576)
    assert fused.how == "MetaSchedule database"
    x = torch.randn(1, 576)
    assert _rel_err(fused(x), ref(x)) <= TOL
    # a database miss falls back to the hand schedule and SAYS so (the benchmark shows it in its `schedule` column)
    sch, how = tvm_gemv.schedule_for(tvm_gemv.gemv_module(40, 192, 4, 64), db)
    assert how == "hand schedule (no database record for this shape/format)"
    assert tvm_gemv.schedule_for(tvm_gemv.gemv_module(40, 192, 4, 64))[1] == "hand schedule"


def test_thread_pool_is_restored_after_the_block():
    before = tvm_gemv.pool_size()
    with tvm_gemv.thread_pool(1):
        assert tvm_gemv.pool_size() == 1
    assert tvm_gemv.pool_size() == before


@pytest.mark.parametrize("bits,group_size,in_f,match", [
    (3, None, 64, r"bits \(4, 8\)"), (4, 48, 64, "positive divisor of in_features 64"),
    (8, 0, 64, "group_size None"), (4, None, 63, "even"), (8, 2.0, 64, "group_size"),
])
def test_bad_formats_name_what_is_supported(bits, group_size, in_f, match):
    with pytest.raises(ValueError, match=match):
        tvm_gemv.check_format(bits, group_size, 16, in_f)
    with pytest.raises(ValueError, match=match):
        kernel_bench.cand_tvm(torch.randn(16, in_f), bits, group_size)


def test_bad_input_shape_and_candidate_contract():
    fn = kernel_bench.cand_tvm(torch.randn(32, 64), 8, None)
    with pytest.raises(ValueError, match=r"\(\.\.\., 64\)"):
        fn(torch.randn(1, 63))
    assert fn(torch.randn(1, 64)).shape == (1, 32)


def test_missing_tvm_names_the_extra(monkeypatch):
    from course_lib import hw

    monkeypatch.setitem(sys.modules, "tvm", None)  # import tvm now raises ImportError
    with pytest.raises(hw.MissingDependency, match=r"\.\[tvm\]"):
        tvm_gemv.TvmLinear(torch.zeros(4, 8, dtype=torch.int8), torch.ones(4), 8, None)
