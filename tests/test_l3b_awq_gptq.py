"""Lesson 3b (notebook 06): AWQ and GPTQ in QLinear's layout; the fast path and the one-graph decoder run them."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import require_extra
from course_lib.llm import calibrated as C
from course_lib.llm import onnx_decode
from course_lib.llm.convert import from_llama, tiny_llama
from course_lib.llm.quant import QLinear

require_extra("transformers", "llm")


def _layer_case(seed=0, out_f=96, in_f=128, tokens=512):
    """A random linear and correlated, channel-skewed activations (a few loud channels, like a real LLM's)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * 0.05
    mix = torch.randn(in_f, in_f, generator=g) / in_f**0.5 + torch.eye(in_f)
    loud = torch.ones(in_f)
    loud[torch.randperm(in_f, generator=g)[:6]] = 8.0
    x = (torch.randn(tokens, in_f, generator=g) @ mix) * loud
    return w, x


def _out_err(w_hat, w, x):
    return float(((x @ (w_hat - w).T) ** 2).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gptq_output_error_below_rtn_on_the_calibration_activations(seed):
    w, x = _layer_case(seed)
    h = x.double().T @ x.double()
    q, s = C.gptq_quantize(w, h, 32)
    q_rtn, s_rtn = C.rtn_codes(w, 32)
    e_gptq, e_rtn = _out_err(C.dequant(q, s), w, x), _out_err(C.dequant(q_rtn, s_rtn), w, x)
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)
    # the Hessian form of the error is the same number, without the activations
    assert abs(C.output_error(C.dequant(q, s), w, h) - e_gptq) <= 1e-6 * e_gptq + 1e-9
    # QLinear's layout: int4 codes in [-8, 7], fp16 scales, one per group of 32
    assert q.dtype == torch.int8 and int(q.min()) >= -8 and int(q.max()) <= 7
    assert s.dtype == torch.float16 and s.shape == (96, 128 // 32)


def test_gptq_block_size_changes_nothing_but_speed():
    """Lazy batch updates are an exact reordering of the same arithmetic."""
    w, x = _layer_case(3)
    h = x.double().T @ x.double()
    q1, s1 = C.gptq_quantize(w, h, 32, block=32)
    q2, s2 = C.gptq_quantize(w, h, 32, block=128)
    assert float((q1 != q2).float().mean()) <= 0.001 and float((s1 != s2).float().mean()) <= 0.01


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_awq_searched_scale_is_never_worse_than_scale_one(seed):
    w, x = _layer_case(seed)
    s, alpha, err, err_at_1 = C.awq_scales(w, x, 32)
    assert err <= err_at_1 and 0 <= alpha < 1 and s.shape == (128,) and (s > 0).all()
    # on channel-skewed activations the search finds something better than plain rounding
    if seed == 0:
        assert err < err_at_1


def test_awq_protects_the_loud_channels():
    w, x = _layer_case(0)
    s, alpha, _, _ = C.awq_scales(w, x, 32)
    loud = x.abs().mean(0).topk(6).indices
    assert alpha > 0 and set(s.topk(6).indices.tolist()) == set(loud.tolist())


def test_to_qlinear_holds_exactly_the_codes_and_scales():
    w, x = _layer_case(0)
    q, s = C.gptq_quantize(w, x.double().T @ x.double(), 64)
    ql = C.to_qlinear(q, s, 64)
    assert isinstance(ql, QLinear) and ql.bits == 4 and ql.group_size == 64
    assert torch.equal(ql.int_weight().to(torch.int8), q) and torch.equal(ql.scale, s)
    # RTN through the helper is QLinear's own quantizer, bit for bit
    q_rtn, s_rtn = C.rtn_codes(w, 64)
    ref = QLinear(4, w, group_size=64)
    assert torch.equal(C.to_qlinear(q_rtn, s_rtn, 64).weight, ref.weight)


def _tiny():
    return from_llama(tiny_llama(seed=0)).eval()  # hidden 64, intermediate 128, GQA


def _calib(n=4, t=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (t,), generator=g) for _ in range(n)]


@pytest.mark.parametrize("method", C.METHODS)
def test_model_runs_unchanged_on_the_fast_path_and_the_graph(method):
    fp = _tiny()
    model, info = C.quantize_calibrated(copy.deepcopy(fp), _calib(), method, group_size=32)
    assert model.quantized_bits == 4 and model.quantized_group_size == 32
    qls = [m for m in model.modules() if isinstance(m, QLinear)]
    assert len(qls) == 5 * fp.config.num_hidden_layers
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(ids).logits
        # the one-graph decoder (float compute) reproduces the reference path of these codes
        dec = onnx_decode.GraphDecoder(model, accuracy_level=0)
        assert (dec(ids).logits - ref).abs().max() <= 1e-4
        # the fast kernel: same codes, int8 activation rounding (lesson 3's 2 % tolerance)
        for m in qls:
            m.set_kernel("fast")
        fast = model(ids).logits
        assert float((fast - ref).abs().max() / ref.abs().max()) <= 0.02
        # and the quantized model is close to the float one
        assert float((ref - fp(ids).logits).abs().max() / fp(ids).logits.abs().max()) < 0.5
    if method == "rtn":  # plain RTN through this path is exactly quantize_model's int4 g32
        rtn = copy.deepcopy(fp).quantize(4, group_size=32)
        with torch.no_grad():
            assert torch.equal(rtn(ids).logits, ref)


def test_calibrated_model_beats_rtn_on_the_calibration_text():
    fp = _tiny()
    seqs = _calib(6, 64)
    errs = {}
    for method in ("rtn", "gptq"):
        m, _ = C.quantize_calibrated(copy.deepcopy(fp), seqs, method, group_size=32)
        with torch.no_grad():
            errs[method] = sum(float(((m(s[None]).logits - fp(s[None]).logits) ** 2).sum()) for s in seqs)
    assert errs["gptq"] < errs["rtn"]


def _all_float(model):
    return not any(isinstance(m, QLinear) for m in model.modules()) and not getattr(model, "quantized_bits", None)


@pytest.mark.parametrize("bad,kwargs,match", [
    ("group", {"group_size": 48}, "group_size 48 must divide"),
    ("empty", {"seqs": []}, "calibration set is empty"),
    ("method", {"method": "awq2"}, "method must be one of"),
    ("ids", {"seqs": [torch.tensor([1, 2, 9999])]}, "must lie in"),
])
def test_bad_input_is_one_clear_line_and_leaves_the_model_float(bad, kwargs, match):
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = {"seqs": _calib(), "method": "gptq", "group_size": 32, **kwargs}
    with pytest.raises(ValueError, match=match) as e:
        C.quantize_calibrated(model, args.pop("seqs"), **args)
    assert "\n" not in str(e.value)
    assert _all_float(model) and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_nan_activations_are_refused_before_anything_is_replaced():
    model = _tiny()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")  # layer 1's down_proj sees NaN
    with pytest.raises(ValueError, match="NaN/inf") as e:
        C.quantize_calibrated(model, _calib(), "awq+gptq", group_size=32)
    assert "\n" not in str(e.value) and "down_proj" in str(e.value)
    assert _all_float(model)  # layer 0 was done, but nothing was committed
    with pytest.raises(ValueError, match="already quantized"):
        C.quantize_calibrated(_tiny().quantize(4, 32), _calib(), "gptq", group_size=32)


def test_core_bad_input():
    w, x = _layer_case(0)
    with pytest.raises(ValueError, match="empty"):
        C.awq_scales(w, x[:0], 32)
    x_nan = x.clone()
    x_nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        C.awq_scales(w, x_nan, 32)
    with pytest.raises(ValueError, match="must divide"):
        C.gptq_quantize(w, x.double().T @ x.double(), 48)
    # a rank-deficient Hessian without damping: a clear line, not a LinAlgError
    h = x[:8].double().T @ x[:8].double()
    with pytest.raises(ValueError, match="not positive definite"):
        C.inverse_hessian_factor(h, damp=0.0)
    C.inverse_hessian_factor(h, damp=0.01)  # damping fixes it


def test_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    fp = _tiny()
    first, info1 = C.quantize_cached(fp, _calib(), "awq+gptq", group_size=32)
    again, info2 = C.quantize_cached(fp, _calib(), "awq+gptq", group_size=32)
    assert not info1["cached"] and info2["cached"] and info2["seconds"] == info1["seconds"]
    ids = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(first(ids).logits, again(ids).logits)
    assert _all_float(fp)  # the float model given is never changed
    other, info3 = C.quantize_cached(fp, _calib(seed=1), "awq+gptq", group_size=32)  # other tokens, other entry
    assert not info3["cached"]
    with pytest.raises(ValueError, match="method must be one of"):
        C.quantize_cached(fp, _calib(), "gptq4", group_size=32)


def test_library_codes_run_in_qlinear():
    require_extra("nncf", "llm")
    fp = _tiny()
    model, info = C.library_quantize(fp, _calib(), group_size=32)
    assert info["parity_max_abs_diff"] < 0.1  # NNCF dequantises in fp16, QLinear in float32
    qls = [m for m in model.modules() if isinstance(m, QLinear)]
    assert len(qls) == 10 and all(m.group_size == 32 and int(m.int_weight().abs().max()) <= 8 for m in qls)
    assert _all_float(fp)
    ids = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(ids).logits
        for m in qls:
            m.set_kernel("fast")
        assert float((model(ids).logits - ref).abs().max() / ref.abs().max()) <= 0.02


def test_llamacpp_perplexity_on_the_same_windows(smollm2_cache):
    require_extra("llama_cpp", "llm")
    from course_lib.llm import eval as llm_eval
    from course_lib.llm import smollm2
    from course_lib.llm.convert import from_llama

    hf, tok = smollm2.load_smollm2(verbose=False)
    ids = torch.tensor(tok(llm_eval.chinese_text(400))["input_ids"])
    ours = llm_eval.perplexity(from_llama(hf).eval(), ids, window=128, max_windows=1)
    shipped = C.llamacpp_perplexity("Q4_1", ids, window=128, max_windows=1, threads=1)
    assert abs(shipped / ours - 1) < 0.05  # our float weights ARE the shipped Q4_1 file, dequantised
    with pytest.raises(ValueError, match="fewer than one window"):
        C.llamacpp_perplexity("Q4_1", ids[:10], window=128)
