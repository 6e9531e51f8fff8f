"""Lesson 3 fast path: fused int8/int4 kernels vs the seed's reference, roofline arithmetic, llama.cpp wrapper."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.llm import kernels, roofline
from course_lib.llm.quant import QLinear, quantize_model

# The fast kernel quantizes the activation vector to int8 per block (MatMulNBits accuracy_level 4, as
# llama.cpp does for Q8_0/Q4 weights): its outputs differ from the reference by that rounding, about
# 1 % of the output's scale. Tolerance: max |fast - ref| <= 2 % of max |ref| (random and real weights).
REL_TOL = 0.02


def _rel_err(a, b):
    return float((a - b).detach().abs().max() / b.detach().abs().max())


FORMATS = [(8, None), (4, None), (4, 64), (4, 32), (8, 128), (4, 16)]
SHAPES = [(576, 576), (960, 576), (576, 1536), (40, 960), (24, 192)]


@pytest.mark.parametrize("bits,group_size,out_f,in_f", [(b, g, o, i) for b, g in FORMATS for o, i in SHAPES
                                                        if not (g and i % g)])
def test_fast_matches_reference(bits, group_size, out_f, in_f):
    g = torch.Generator().manual_seed(out_f * 7 + in_f)
    w = torch.randn(out_f, in_f, generator=g) * 0.05
    bias = torch.randn(out_f, generator=g)
    x = torch.randn(3, 2, in_f, generator=g)
    ref = QLinear(bits, w, bias, group_size=group_size)
    fast = QLinear(bits, w, bias, group_size=group_size).set_kernel("fast")
    assert fast.kernel == "fast" and "kernel=fast" in repr(fast)
    y_ref, y_fast = ref(x), fast(x)
    assert y_fast.shape == y_ref.shape == (3, 2, out_f)
    assert _rel_err(y_fast, y_ref) <= REL_TOL
    # batch 1, the decoding case, and odd group counts (960 / 64 = 15, 192 / 64 = 3)
    assert _rel_err(fast(x[:1, :1]), ref(x[:1, :1])) <= REL_TOL
    # same storage: the reference buffers are untouched, switching back gives the reference exactly
    assert torch.equal(fast.weight, ref.weight)
    fast.set_kernel("reference")
    assert torch.equal(fast(x), y_ref)


def test_per_row_blocks_are_q8_0_sized():
    """Blocks of at most 32 (the activation rounding block, as llama.cpp's Q8_0); 16 where 32 does not fit."""
    assert kernels.check_fast_config(8, None, 576) == 32
    assert kernels.check_fast_config(8, None, 1536) == 32
    assert kernels.check_fast_config(8, None, 48) == 16
    assert kernels.check_fast_config(4, 64, 576) == 32  # a group of 64: its scale repeated for two blocks of 32
    assert kernels.check_fast_config(4, 16, 576) == 16


def test_layout_conversion_is_exact():
    """MatMulNBits' unsigned codes + repeated scales dequantise to exactly the reference weight."""
    w = torch.randn(8, 128) * 0.1
    for bits, gs in [(8, None), (4, 32), (4, None), (4, 64), (8, 128)]:
        layer = QLinear(bits, w, group_size=gs)
        block = kernels.check_fast_config(bits, gs, 128)
        b, s = kernels.to_matmulnbits(layer.int_weight(), layer.scale, bits, block)
        b = torch.from_numpy(b).to(torch.int16)
        if bits == 8:
            q = b.reshape(8, 128) - 128
        else:
            q = torch.stack([b & 0xF, b >> 4], dim=-1).reshape(8, 128) - 8
        deq = (q.float().view(8, -1, block) * torch.from_numpy(s).view(8, -1, 1)).view(8, 128)
        assert torch.equal(deq, layer.dequantize())


@pytest.mark.parametrize("bits,group_size,match", [(3, None, "bits"), (4, 48, r"\(16, 32, 64, 128, 256\)"),
                                                    (8, 5, "group_size"), (4, 512, "group_size")])
def test_fast_rejects_unsupported_formats(bits, group_size, match):
    with pytest.raises(ValueError, match=match):
        kernels.check_fast_config(bits, group_size, 576)


def test_fast_bad_input_is_an_error_not_a_fallback():
    w = torch.randn(16, 40)  # 40 columns: not a multiple of 16, no MatMulNBits block fits
    with pytest.raises(ValueError, match="multiple of 16"):
        QLinear(8, w).set_kernel("fast")
    with pytest.raises(ValueError, match=r"'reference', 'fast'"):
        QLinear(8, w).set_kernel("turbo")
    from course_lib.llm.convert import from_llama, tiny_llama

    model = from_llama(tiny_llama())
    with pytest.raises(ValueError, match="supports group_size"):
        quantize_model(model, 4, group_size=24, kernel="fast")
    assert not getattr(model, "quantized_bits", None)  # nothing was replaced


def test_quantize_fast_and_lm_head_on_tiny_model():
    from course_lib.llm.convert import from_llama, tiny_llama

    ids = torch.randint(0, 256, (1, 12))
    ref = from_llama(tiny_llama()).quantize(8, kernel="reference", lm_head=True)
    fast = from_llama(tiny_llama()).quantize(8, kernel="fast", lm_head=True)
    assert isinstance(fast.lm_head, QLinear) and fast.lm_head.kernel == "fast"
    assert fast.model.embed_tokens.weight.dtype == torch.float32  # the embedding table stays float
    assert _rel_err(fast(ids).logits, ref(ids).logits) <= REL_TOL
    mixed = from_llama(tiny_llama()).quantize(4, 32, kernel="fast", lm_head=8)
    assert mixed.lm_head.bits == 8 and mixed.lm_head.group_size is None
    assert mixed.model.layers[0].mlp.up_proj.bits == 4


def test_weight_bytes_and_ceilings():
    from course_lib.llm.convert import from_llama, tiny_llama

    fp = from_llama(tiny_llama())
    b_fp = roofline.weight_bytes_per_token(fp)
    b8 = roofline.weight_bytes_per_token(from_llama(tiny_llama()).quantize(8, lm_head=True))
    lin_params = sum(m.weight.numel() for n, m in fp.named_modules()
                     if isinstance(m, torch.nn.Linear) and n != "lm_head")
    assert b_fp["linears"] == 4 * lin_params
    assert b8["linears"] < b_fp["linears"] / 3.5 and b8["lm_head"] < b_fp["lm_head"] / 3.5
    df = roofline.ceilings(20.0, {"a": 1e8, "b": 2e8})
    assert list(df.ceiling_tokens_per_s) == pytest.approx([200.0, 100.0])
    with pytest.raises(ValueError):
        roofline.ceilings(0, {"a": 1.0})


def test_bandwidth_measurement_reports_bytes_moved():
    r = roofline.measure_bandwidth(mb=8, repeat=3, kind="copy")
    assert r["bytes_moved"] == 2 * int(8e6 / 4) * 4 and r["gb_per_s"] > 0
    assert roofline.measure_bandwidth(mb=8, repeat=2)["bytes_moved"] == int(8e6 / 4) * 4  # read: once
    assert r["gb_per_s_p10"] <= r["gb_per_s"] <= r["gb_per_s_p90"]
    with pytest.raises(ValueError):
        roofline.measure_bandwidth(mb=0)


def test_compare_kernels_table_checks_every_candidate():
    df = kernels.compare_kernels(shapes=[(64, 128)], threads=(1,), repeat=2, warmup=1, copies_mb=0.01,
                                 candidates=["fp32", "reference", "aten", "ort (int8 compute) = fast"])
    assert set(df.kernel) == {"fp32", "reference", "aten", "ort (int8 compute) = fast"}
    ok = df[df.note == ""]
    assert (ok.median_us > 0).all()
    ref = df[df.kernel == "reference"]
    assert (ref.max_err == 0).all()
    aten8 = df[(df.kernel == "aten") & (df.format == "int8 per-row")]
    assert float(aten8.max_err.iloc[0]) < 1e-4  # exact kernel: float rounding only
    # the int4 aten kernel needs a group; per-row int4 is not a format we ask for by default
    fast = df[df.kernel.str.contains("fast")]
    assert (fast.max_err < 0.05).all()


@pytest.mark.slow
def test_real_model_logits_fast_vs_reference(smollm2_cache):
    from course_lib.llm.convert import load_smollm2_baichuan

    fp, tok = load_smollm2_baichuan(verbose=False)
    ids = tok("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    import copy

    for bits, gs in [(8, None), (4, 64)]:
        ref = copy.deepcopy(fp).quantize(bits, gs)
        fast = copy.deepcopy(fp).quantize(bits, gs, kernel="fast")
        with torch.no_grad():
            lr, lf = ref(ids).logits, fast(ids).logits
        # stated tolerance on real logits (int8 activations in the fast kernel; the first positions carry
        # SmolLM2's outsized activations): max |diff| <= 10 % of max |logit|, mean |diff| <= 8 % of the
        # logits' standard deviation, and the same greedy token at >= 90 % of positions incl. the last
        assert _rel_err(lf, lr) <= 0.10, (bits, gs, _rel_err(lf, lr))
        assert float((lf - lr).abs().mean() / lr.std()) <= 0.08
        agree = (lf.argmax(-1) == lr.argmax(-1)).float().mean()
        assert float(agree) >= 0.9 and int(lf[0, -1].argmax()) == int(lr[0, -1].argmax())
        del ref, fast


# ---- llama.cpp peer ------------------------------------------------------------------------------

def test_llamacpp_wrapper_on_shipped_gguf():
    from conftest import require_extra

    require_extra("llama_cpp", "llm")
    from course_lib.llm import llamacpp, smollm2

    try:
        src = smollm2.gguf_path()
    except smollm2.ModelFilesMissing as e:
        pytest.skip(str(e))
    assert llamacpp.gguf_for("Q4_1") == src
    q8 = llamacpp.gguf_for("Q8_0")
    assert q8.exists() and q8.stat().st_size > src.stat().st_size
    assert llamacpp.gguf_for("Q8_0") == q8  # cached
    llm = llamacpp.load("Q4_1", threads=1)
    ids = llm.tokenize(b"The capital of France is", add_bos=False, special=True)
    a = llamacpp.generate_ids(llm, ids, 8)
    b = llamacpp.generate_ids(llm, ids, 8)
    assert len(a) == 8 and a == b  # greedy: deterministic, exactly N tokens (EOS ignored)
    r = llamacpp.tokens_per_second("Q4_1", "Hello", new_tokens=4, threads=1, warmup=0, repeat=1, llm=llm)
    assert r.items == 4 and math.isfinite(r.throughput)
    assert roofline.gguf_weight_bytes(src) < src.stat().st_size
    with pytest.raises(ValueError, match="format"):
        llamacpp.gguf_for("Q3_K")
    with pytest.raises(ValueError, match="new_tokens"):
        llamacpp.generate_ids(llm, ids, 0)


# ---- Triton int4 GEMV (interpreter on CPU) -------------------------------------------------------

TRITON_SCRIPT = """
import torch
from course_lib.llm.quant import QLinear
from course_lib.llm.triton_int4 import int4_gemv
errs = []
for n, k, g in [(64, 128, 32), (40, 576, 64), (96, 960, 64), (33, 1536, 128)]:
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(n)) * 0.05
    x = torch.randn(1, k)
    q = QLinear(4, w, group_size=g)
    y = int4_gemv(x, q.weight, q.scale, g)
    assert y.shape == (1, n), y.shape
    errs.append(float((y - q(x)).abs().max()))
for bad in (lambda: int4_gemv(x, q.weight, q.scale, 12), lambda: int4_gemv(torch.randn(2, k), q.weight, q.scale, g)):
    try:
        bad()
        raise SystemExit("no error")
    except ValueError as e:
        print("ValueError:", e)
print("MAXERR", max(errs))
"""


def test_triton_int4_gemv_interpreted():
    """The Triton kernel in interpreter mode (TRITON_INTERPRET=1, set before triton is imported: a subprocess)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import require_extra

    require_extra("triton", "llm")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", TRITON_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "group_size must be" in out.stdout and "batch 1" in out.stdout
    max_err = float(out.stdout.split("MAXERR")[1])
    assert max_err < 1e-4  # same math as the reference, float32 accumulation order only


def test_interleaved_decoding_times_every_variant_once_per_round():
    """Each variant gets `repeat` timed generations of exactly `new_tokens` tokens, in interleaved rounds."""
    import torch

    from course_lib.llm import decode
    from course_lib.llm.baichuan import BaichuanConfig, BaichuanForCausalLM

    torch.manual_seed(0)
    cfg = BaichuanConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4)
    model = BaichuanForCausalLM(cfg).eval()
    ids = torch.tensor([[1, 2, 3]])
    out = decode.interleaved(model, [decode.OURS["fp32"], decode.OURS["int8 ref"]], ids, new_tokens=5, warmup=1,
                             repeat=3, progress=False)
    assert [r.name for r, _ in out] == ["fp32", "int8 ref"]
    assert all(len(r.times_s) == 3 and r.items == 5 and r.warmup == 1 for r, _ in out)
    mb = {r.name: m for r, m in out}
    assert mb["int8 ref"] < mb["fp32"]  # int8 linears: fewer bytes read per token
    with pytest.raises(ValueError, match="repeat >= 1"):
        decode.interleaved(model, [decode.OURS["fp32"]], ids, new_tokens=5, warmup=0, repeat=0)


def test_small_fast_layers_run_on_one_thread():
    """A small batch-1 GEMV gets one onnxruntime thread (a second would not wake in time); big ones and explicit counts keep theirs."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        small = kernels.FastLinear(torch.zeros(64, 64, dtype=torch.int8), torch.ones(64), 8, None)
        assert small.session.get_session_options().intra_op_num_threads == 1
        told = kernels.FastLinear(torch.zeros(64, 64, dtype=torch.int8), torch.ones(64), 8, None, threads=2)
        assert told.session.get_session_options().intra_op_num_threads == 2
        big = kernels.FastLinear(torch.zeros(4096, 1024, dtype=torch.int8), torch.ones(4096), 8, None)
        assert big.session.get_session_options().intra_op_num_threads == 2
    finally:
        torch.set_num_threads(old)


def test_roofline_plot_marks_each_kind():
    import matplotlib

    matplotlib.use("Agg")
    pts = [{"variant": "a", "mb_per_token": 100.0, "tokens_per_s": 10.0, "p10": 9.0, "p90": 11.0},
           {"variant": "b (one graph)", "mb_per_token": 5.0, "tokens_per_s": 40.0, "graph": True},
           {"variant": "c (llama.cpp)", "mb_per_token": 5.0, "tokens_per_s": 45.0, "peer": True}]
    ax = roofline.plot_roofline(20.0, pts)
    markers = [line.get_marker() for line in ax.lines[1:] if line.get_marker() != "_"]  # "_": error-bar caps
    assert markers == ["o", "D", "s"]
    assert ax.get_ylim()[0] == 0 and ax.get_xlim()[0] == 0
    # a crowd at the left edge: the right-hand spots run out, and no label may leave the axes on the left
    pts += [{"variant": f"crowded variant {i}", "mb_per_token": 5.0, "tokens_per_s": 60.0 + 6 * i} for i in range(4)]
    ax = roofline.plot_roofline(20.0, pts)
    # b and c sit 5 tokens/s apart at the same x near the left edge: their labels overlap neither each other nor a
    # marker, and stay inside the axes
    renderer = ax.figure.canvas.get_renderer()
    boxes = {t.get_text(): roofline._text_box(t, renderer) for t in ax.texts}
    assert set(boxes) == {p["variant"] for p in pts}
    assert not any(boxes[i].overlaps(boxes[j]) for i in boxes for j in boxes if i < j)
    frame = ax.get_window_extent(renderer)
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 for b in boxes.values())  # inside the axes
    for p in pts:
        x, y = ax.transData.transform((p["mb_per_token"], p["tokens_per_s"]))
        assert not any(b.contains(x, y) for b in boxes.values())
