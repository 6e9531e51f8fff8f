"""Lesson 3: the whole decoding step as one onnxruntime graph (course_lib.llm.onnx_decode) against the eager model."""

from __future__ import annotations

import pytest
import torch

from course_lib.llm import decode, onnx_decode
from course_lib.llm.baichuan import BaichuanConfig, BaichuanForCausalLM
from course_lib.llm.convert import from_llama, tiny_llama

# accuracy_level=0 (float compute) must reproduce the eager reference path to float rounding; the default
# (int8 activations, what the fast path uses) differs from the eager fast path only by where the activation
# rounding flips, well inside the fast kernel's own 2 % tolerance against the reference.
EXACT_ATOL = 1e-4
REL_TOL = 0.02


def _model(bits=None, group_size=None, kernel="reference", lm_head=False, seed=0):
    m = from_llama(tiny_llama(seed=seed)).eval()  # GQA: 4 heads, 2 kv heads
    return m.quantize(bits, group_size, kernel=kernel, lm_head=lm_head) if bits else m


@pytest.mark.parametrize("fused", [True, False], ids=["GroupQueryAttention", "readable ops"])
@pytest.mark.parametrize("bits,group_size,lm_head", [(None, None, False), (8, None, True), (4, 32, 8), (4, None, False)])
def test_graph_float_compute_matches_the_reference_path(bits, group_size, lm_head, fused):
    model = _model(bits, group_size, lm_head=lm_head)
    dec = onnx_decode.GraphDecoder(model, accuracy_level=0, fused_attention=fused)
    assert dec.fused_attention is fused
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids).logits
        assert (dec(ids).logits - full).abs().max() <= EXACT_ATOL  # every position (perplexity uses them)
        # prefill 5 tokens, then one token at a time through the KV cache
        logits, past = dec.step(ids[:, :5])
        assert (logits - full[0, 4]).abs().max() <= EXACT_ATOL
        for t in range(5, 9):
            logits, past = dec.step(ids[:, t:t + 1], past)
            assert (logits - full[0, t]).abs().max() <= EXACT_ATOL
        assert past[0].shape == (1, model.config.num_key_value_heads, 9, model.config.head_dim)
        # several new tokens after a cache (a chunked prompt): positions and the causal mask continue from the cache
        logits, chunk = dec.step(ids[:, 5:9], dec.step(ids[:, :5])[1])
        assert (logits - full[0, 8]).abs().max() <= EXACT_ATOL
        assert all((a - b).abs().max() <= EXACT_ATOL for a, b in zip(map(torch.from_numpy, chunk), map(torch.from_numpy, past)))
        assert list(dec.stream_ids(ids, 6)) == list(model.stream_ids(ids, 6))
        # sampling runs the model's own loop: the same seed draws the same tokens (chat's settings)
        chat = dict(do_sample=True, temperature=0.7, top_k=5, top_p=0.9, repetition_penalty=1.1)
        drawn = [list(m.stream_ids(ids, 8, generator=torch.Generator().manual_seed(4), **chat)) for m in (dec, model)]
        assert drawn[0] == drawn[1] and drawn[0] != list(model.stream_ids(ids, 8))


def test_graph_int8_compute_matches_the_fast_path():
    model = _model(4, 32, kernel="fast", lm_head=8)
    fused, ops = onnx_decode.GraphDecoder(model), onnx_decode.GraphDecoder(model, fused_attention=False)
    assert fused.fused_attention and not ops.fused_attention  # RoPE model: GroupQueryAttention by default
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(ids).logits
        for dec in (fused, ops):
            assert float((dec(ids).logits - ref).abs().max() / ref.abs().max()) <= REL_TOL


def test_fused_attention_is_one_operator_per_layer():
    model = _model(8, None, kernel="fast", lm_head=True)
    layers = model.config.num_hidden_layers

    def ops(fused):
        return [n.op_type for n in onnx_decode.build_decode_graph(model, fused_attention=fused).graph.node]

    fused, readable = ops(True), ops(False)
    assert fused.count("GroupQueryAttention") == layers and "Softmax" not in fused and "Concat" not in fused
    assert readable.count("Softmax") == layers and "GroupQueryAttention" not in readable
    assert fused.count("MatMulNBits") == 4 * layers + 1  # gate and up share one operator; + the head
    # per layer: 2 norms, 4 linears (W_pack, o_proj, gate and up stacked + a Split, down), 1 attention, 2 residual
    # adds, SiLU (Sigmoid, Mul) and its gate Mul
    assert (len(fused) - 4) / layers == 13  # + embedding, final norm, head, the logits' Identity
    assert (len(readable) - 4 - 2) / layers == 36  # + the RoPE tables' two Reshapes


def test_fused_rope_tables_grow_past_the_configured_length():
    model = _model()
    model.config.max_position_embeddings = 8  # the tables start at 8 positions; a 12-token prompt needs more
    dec = onnx_decode.GraphDecoder(model, accuracy_level=0)
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (dec(ids).logits - model(ids).logits).abs().max() <= EXACT_ATOL
    assert dec._rope_rows >= 12


def test_graph_handles_alibi():
    cfg = BaichuanConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                         position_embedding="alibi", max_position_embeddings=64)
    torch.manual_seed(3)
    model = BaichuanForCausalLM(cfg).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    ids = torch.randint(0, 64, (1, 7))
    with pytest.raises(ValueError, match="RoPE.*fused_attention=False"):
        onnx_decode.GraphDecoder(model, fused_attention=True)
    dec = onnx_decode.GraphDecoder(model, accuracy_level=0)  # the readable operators: ALiBi is an attention bias
    assert not dec.fused_attention
    with torch.no_grad():
        assert (dec(ids).logits - model(ids).logits).abs().max() <= EXACT_ATOL
        logits, past = dec.step(ids[:, :6])
        logits, _ = dec.step(ids[:, 6:], past)
        assert (logits - model(ids).logits[0, -1]).abs().max() <= EXACT_ATOL


def test_graph_variant_in_the_decoding_benchmark():
    fp = _model()
    v = decode.Variant("int8 graph", 8, None, "fast", lm_head=True, graph=True)
    dec = v.build(fp)
    assert isinstance(dec, onnx_decode.GraphDecoder) and dec.source_model is not fp
    assert dec.threads == torch.get_num_threads() and v.build(fp, threads=3).threads == 3  # the benchmark's threads
    assert v.build(fp, threads=3).session.get_session_options().intra_op_num_threads == 3
    (r, mb), = decode.interleaved(fp, [v], torch.tensor([[3, 4, 5]]), new_tokens=4, warmup=0, repeat=1, progress=False)
    assert r.items == 4 and len(r.times_s) == 1
    assert 0 < mb < 4 * sum(p.numel() for p in fp.parameters()) / 1e6 / 3  # int8 layout: under a third of fp32


def test_graph_bad_input():
    with pytest.raises(TypeError, match="BaichuanForCausalLM"):
        onnx_decode.GraphDecoder(torch.nn.Linear(4, 4))
    dec = onnx_decode.GraphDecoder(_model())
    with pytest.raises(ValueError, match="KV cache"):
        dec.stream_ids(torch.tensor([[1, 2]]), 3, use_cache=False)
    with pytest.raises(ValueError, match="empty prompt"):
        next(dec.stream_ids(torch.zeros(1, 0, dtype=torch.long), 3))
    with pytest.raises(ValueError, match="one sequence"):
        next(dec.stream_ids(torch.ones(2, 3, dtype=torch.long), 3))
    with pytest.raises(ValueError, match="temperature"):
        next(dec.stream_ids(torch.tensor([[1, 2]]), 3, do_sample=True, temperature=0))
    with pytest.raises(TypeError, match="beams"):
        dec.stream_ids(torch.tensor([[1, 2]]), 3, beams=4)
    assert len(list(dec.stream_ids(torch.tensor([[1, 2]]), 3, do_sample=False, temperature=1.0, use_cache=True))) == 3


def test_profile_ops_counts_every_operator_of_a_decoding_step():
    """onnxruntime's profiler over the decoding steps, by operator type: each step runs every GEMV once (4 per layer
    and the head) and one GroupQueryAttention per layer; the shares add up; the kernels fit inside the step."""
    model = _model(8, None, kernel="fast", lm_head=True)
    dec = onnx_decode.GraphDecoder(model)
    layers = model.config.num_hidden_layers
    table, summary = onnx_decode.profile_ops(dec, torch.tensor([3, 4, 5]), new_tokens=3)
    ops = table.set_index("op")
    assert summary["steps"] == 3
    assert ops.loc["MatMulNBits", "calls_per_token"] == 4 * layers + 1
    assert ops.loc["GroupQueryAttention", "calls_per_token"] == layers
    proto = onnx_decode.build_decode_graph(model, None, True)
    # every node runs once per step, unless onnxruntime's own graph optimizations merged some at load time
    assert 0 < ops.calls_per_token.sum() <= len(proto.graph.node)
    assert ops.share.sum() == pytest.approx(1.0) and (ops.us_per_token > 0).all()
    assert 0 < summary["kernels_us"] <= summary["run_us"] and summary["between_us"] == pytest.approx(
        summary["run_us"] - summary["kernels_us"])
    assert list(table.us_per_token) == sorted(table.us_per_token, reverse=True)
    with pytest.raises(ValueError, match="new_tokens must be >= 1"):
        onnx_decode.profile_ops(dec, torch.tensor([3]), new_tokens=0)
    with pytest.raises(TypeError, match="needs a GraphDecoder"):
        onnx_decode.profile_ops(model, torch.tensor([3]))


def test_gemv_only_graph_reproduces_each_gemv_and_gemv_share_times_both():
    """The GEMV-only graph holds the decoder's MatMulNBits with their weights: fed one layer's input it gives that
    layer's output exactly. gemv_share times it next to a whole step in the same rounds."""
    import onnxruntime as ort

    from course_lib.llm.fast import session_options

    model = _model(4, 32, kernel="fast", lm_head=8)
    dec = onnx_decode.GraphDecoder(model)
    proto = onnx_decode.build_decode_graph(model, None, True)
    gemv = onnx_decode.gemv_only_graph(proto)
    layers = model.config.num_hidden_layers
    assert [n.op_type for n in gemv.graph.node] == ["MatMulNBits"] * (4 * layers + 1)
    widths = {model.config.hidden_size, model.config.intermediate_size}
    assert {i.name for i in gemv.graph.input} == {f"A_{k}" for k in widths}
    sess = ort.InferenceSession(gemv.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])
    x = {f"A_{k}": torch.randn(1, 1, k, generator=torch.Generator().manual_seed(k)).numpy() for k in widths}
    outs = dict(zip([o.name for o in gemv.graph.output], sess.run(None, x)))
    # the first GEMV is layer 0's W_pack: the same as running that layer's fast kernel on the same input
    first = gemv.graph.node[0]
    w_pack = model.model.layers[0].self_attn.W_pack
    with torch.no_grad():
        want = w_pack(torch.from_numpy(x[f"A_{model.config.hidden_size}"]))
    assert torch.allclose(torch.from_numpy(outs[first.output[0]]), want, atol=1e-5, rtol=1e-4)
    res = onnx_decode.gemv_share(dec, torch.tensor([3, 4, 5]), rounds=3, warmup=1)
    assert list(res) == ["whole step", "MatMulNBits alone"]
    assert all(len(r.times_s) == 3 and r.median_s > 0 for r in res.values())
    assert res["whole step"].extra["operators"] == len(proto.graph.node)
    assert res["MatMulNBits alone"].extra["operators"] == 4 * layers + 1
    with pytest.raises(ValueError, match="no MatMulNBits operator: quantize the model"):
        onnx_decode.gemv_only_graph(onnx_decode.build_decode_graph(_model(), None, True))
