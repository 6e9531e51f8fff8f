"""Lesson 3 exercises: the solutions pass, blank starters are 'not attempted', typical mistakes get named."""

from __future__ import annotations

import pytest
import torch

from course_lib import exercises, paths
from course_lib.exercises import ExerciseFailed, NotAttempted

SOLUTIONS = exercises.load_solutions(paths.repo_root() / "solutions" / "03_llm_quantization.py")


def solved(id: str, **names) -> dict:
    """Execute one solution section in a namespace (with ``torch`` and the notebook names it needs)."""
    ns = {"torch": torch, **names}
    exec(SOLUTIONS[id], ns)
    return ns


def run(id: str, *args, **kwargs):
    return exercises.lookup(id).fn(*args, **kwargs)


def test_every_exercise_has_a_solution_and_at_least_four():
    ids = {e.id for e in exercises.registered("03")}
    assert len(ids) >= 4 and ids == set(SOLUTIONS)


# ---- 03.pack_int4 ---------------------------------------------------------------------------


def test_pack_solution_passes_and_equals_the_library():
    from course_lib.llm import quant

    pack = solved("03.pack_int4")["pack_int4"]
    run("03.pack_int4", pack)
    q = torch.randint(-8, 8, (7, 64), dtype=torch.int8)
    assert torch.equal(pack(q), quant.pack_int4(q))


def test_pack_blank_and_mistakes():
    def blank(q):
        raise NotImplementedError

    with pytest.raises(NotAttempted):
        run("03.pack_int4", blank)

    def swapped(q):
        r, c = q.shape
        nib = (q.to(torch.int64) & 0xF).view(r, c // 8, 8)
        w = (nib << torch.arange(28, -1, -4)).sum(-1)
        return torch.where(w >= 2**31, w - 2**32, w).to(torch.int32)

    with pytest.raises(ExerciseFailed, match="swapped nibble order"):
        run("03.pack_int4", swapped)

    def no_mask(q):
        r, c = q.shape
        w = (q.to(torch.int64).view(r, c // 8, 8) << torch.arange(0, 32, 4)).sum(-1)
        return (w & 0xFFFFFFFF).to(torch.int64).sub(0).to(torch.int32)

    with pytest.raises(ExerciseFailed, match="negative codes"):
        run("03.pack_int4", no_mask)
    with pytest.raises(ExerciseFailed, match="int32"):
        run("03.pack_int4", lambda q: solved("03.pack_int4")["pack_int4"](q).to(torch.int64))


# ---- 03.unpack_int4 -------------------------------------------------------------------------


def test_unpack_solution_blank_and_mistakes():
    unpack = solved("03.unpack_int4")["unpack_int4"]
    run("03.unpack_int4", unpack)

    def blank(w):
        raise NotImplementedError

    with pytest.raises(NotAttempted):
        run("03.unpack_int4", blank)

    def no_sign(w):
        return ((w[:, :, None].to(torch.int64) >> torch.arange(0, 32, 4)) & 0xF).flatten(1)

    with pytest.raises(ExerciseFailed, match="no sign extension"):
        run("03.unpack_int4", no_sign)

    def swapped(w):
        return unpack(w).view(w.shape[0], -1, 8).flip(-1).flatten(1)

    with pytest.raises(ExerciseFailed, match="swapped nibble order"):
        run("03.unpack_int4", swapped)


# ---- 03.group_scales ------------------------------------------------------------------------


def test_group_scales_solution_blank_and_mistakes():
    gs = solved("03.group_scales")["group_scales"]
    run("03.group_scales", gs)

    def blank(w, bits, g):
        raise NotImplementedError

    with pytest.raises(NotAttempted):
        run("03.group_scales", blank)
    with pytest.raises(ExerciseFailed, match="float32"):
        run("03.group_scales", lambda w, b, g: gs(w, b, g).to(w.dtype) if w.dtype == torch.float16 else gs(w, b, g))

    def fp16_divide(w, bits, g):
        r, c = w.shape
        return (w.reshape(r, c // g, g).abs().amax(-1) / (2 ** (bits - 1) - 1)).float()

    with pytest.raises(ExerciseFailed, match="divided in float16"):
        run("03.group_scales", fp16_divide)

    def strided(w, bits, g):
        r, c = w.shape
        return w.float().reshape(r, g, c // g).abs().amax(1) / (2 ** (bits - 1) - 1)

    with pytest.raises(ExerciseFailed, match="wrong group axis"):
        run("03.group_scales", strided)

    def row_groups(w, bits, g):
        r, c = w.shape
        return w.float().T.reshape(c // g, g, r).abs().amax(1) / (2 ** (bits - 1) - 1)

    with pytest.raises(ExerciseFailed, match="wrong group axis"):
        run("03.group_scales", row_groups)

    def no_qmax(w, bits, g):
        r, c = w.shape
        return w.float().reshape(r, c // g, g).abs().amax(-1)

    with pytest.raises(ExerciseFailed, match="divide by qmax"):
        run("03.group_scales", no_qmax)

    def zero_nan(w, bits, g):
        r, c = w.shape
        return w.float().reshape(r, c // g, g).abs().amax(-1) / (2 ** (bits - 1) - 1)

    with pytest.raises(ExerciseFailed, match="zero group must still get a positive"):
        run("03.group_scales", zero_nan)


# ---- 03.layer_bytes -------------------------------------------------------------------------


def test_layer_bytes_exact_and_mistakes():
    from course_lib.llm.quant import QLinear

    ns = solved("03.layer_bytes")
    w = torch.randn(1536, 576)
    measured = {"int8": QLinear(8, w).nbytes(), "int4": QLinear(4, w).nbytes()}
    kw = dict(out_features=1536, in_features=576, measured=measured)
    run("03.layer_bytes", ns["my_int8_bytes"], ns["my_int4_bytes"], **kw)
    with pytest.raises(NotAttempted):
        run("03.layer_bytes", None, None, **kw)
    n = 1536 * 576
    with pytest.raises(ExerciseFailed, match="forgot the scales"):
        run("03.layer_bytes", n, n // 2, **kw)
    with pytest.raises(ExerciseFailed, match="not float16"):
        run("03.layer_bytes", n + 2 * 1536, n // 2 + 2 * 1536, **kw)
    with pytest.raises(ExerciseFailed, match="two codes per byte"):
        run("03.layer_bytes", ns["my_int8_bytes"], n + 4 * 1536, **kw)
    with pytest.raises(ExerciseFailed, match="OUTPUT row"):
        run("03.layer_bytes", n + 4 * 576, n // 2 + 4 * 576, **kw)


# ---- 03.decode_ceiling ----------------------------------------------------------------------


def test_decode_ceiling_band_and_mistakes():
    kw = dict(bytes_per_token=220e6, bandwidth_gb_s=20.0, lm_head_bytes=113e6)
    ns = solved("03.decode_ceiling", given_bandwidth_gb_s=20.0, int8_bytes_per_token=220e6)
    run("03.decode_ceiling", ns["my_ceiling"], **kw)
    run("03.decode_ceiling", 20e9 / 220e6 * 1.04, **kw)  # within the ±5 % band
    with pytest.raises(NotAttempted):
        run("03.decode_ceiling", None, **kw)
    with pytest.raises(ExerciseFailed, match="lm_head"):
        run("03.decode_ceiling", 20e9 / 107e6, **kw)
    with pytest.raises(ExerciseFailed, match="bits"):
        run("03.decode_ceiling", 20e9 / 220e6 * 8, **kw)
    with pytest.raises(ExerciseFailed, match="1000 and 1024"):
        run("03.decode_ceiling", 20 * 2**30 / 220e6, **kw)
    with pytest.raises(ExerciseFailed, match="accepted band"):
        run("03.decode_ceiling", 20e9 / 220e6 * 1.5, **kw)


# ---- 03.group_size --------------------------------------------------------------------------


def test_group_size_explore_verifies_the_run():
    import pandas as pd

    ppl = {32: 20.0, 64: 21.0, 192: 23.0}
    ppl_df = pd.DataFrame({"zh": [21.0]}, index=["int4g"])
    ns = solved("03.group_size", group_size=64, measure_int4_zh=ppl.__getitem__, ppl_df=ppl_df)
    kw = dict(group_size=64, ppl_reference=21.0, in_features=(576, 1536), measure=ppl.__getitem__)
    run("03.group_size", ns["other_group"], ns["ppl_other"], ns["lower_group"], **kw)
    run("03.group_size", 192, 23.0, 64, **kw)
    with pytest.raises(NotAttempted):
        run("03.group_size", None, None, None, **kw)
    with pytest.raises(ExerciseFailed, match="the lower one is group 32"):
        run("03.group_size", 32, 20.0, 64, **kw)
    with pytest.raises(ExerciseFailed, match="your perplexity at group 32"):
        run("03.group_size", 32, 25.0, 64, **kw)  # a number that is not what this run measures
    with pytest.raises(ExerciseFailed, match="must divide"):
        run("03.group_size", 100, 20.0, 100, **kw)
    with pytest.raises(ExerciseFailed, match="other than"):
        run("03.group_size", 64, 21.0, 64, **kw)
