"""The whole decoding step as ONE onnxruntime graph: what closes most of the gap to llama.cpp (notebook 03).

Section 7's fast path runs each quantized linear through onnxruntime's ``MatMulNBits`` but keeps everything else in
eager PyTorch: per token, ~150 separate ``session.run`` calls plus ~30 small torch operations per layer, each paying
Python and dispatch overhead (tens of microseconds) that dwarfs the few microseconds of arithmetic a batch-1 token
needs. llama.cpp runs a token as one C++ graph. :func:`build_decode_graph` does the same with onnxruntime: it writes
the model's decoding step — embedding lookup, RMSNorm, ``W_pack`` + RoPE + grouped-query attention over the KV cache,
SwiGLU, the LM head — as one ONNX graph, with every linear layer either

* a ``MatMulNBits`` node holding the *same* packed codes the fast path uses (:func:`fast.to_matmulnbits`,
  one-time layout conversion, int8 compute with ``accuracy_level=4``), for a ``QLinear``; or
* a ``MatMul`` with the float weight (transposed) as an initializer, for an ``nn.Linear`` — the float baseline
  gets the same treatment, so the comparison isolates what the format buys.

The attention comes in two spellings with the same inputs and outputs per layer (the KV cache as
``(1, kv_heads, positions, head_dim)`` arrays, in and out):

* :func:`_attention` — standard ONNX operators (Split, Mul/MatMul for RoPE, Concat onto the cache, MatMul, Softmax,
  MatMul), so a learner can read each step: 24 operators per layer;
* :func:`_attention_fused` — onnxruntime's contrib operator ``GroupQueryAttention`` with ``do_rotary=1``: RoPE, the
  cache append, the causal mask and the grouped-query attention in ONE operator. This is what
  ``onnxruntime-genai``'s model builder emits for Llama-style models. It needs RoPE (ALiBi models use the
  readable spelling).

:class:`GraphDecoder` runs it: one ``session.run`` per token, the KV cache passed in and out as arrays. Its logits
match the eager model running the same kernels to float rounding, in both spellings (tested); the decoding
benchmark of notebook 03 times it next to the eager fast path and llama.cpp. Where a token's time goes inside the
graph: :func:`gemv_share` (the step against its ``MatMulNBits`` operators alone, unprofiled) and :func:`profile_ops`
(onnxruntime's profiler, by operator type).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from course_lib import hw

OPSET = 17


class _Graph:
    """A tiny ONNX graph writer: ``g.op("Add", a, b)`` appends a node and returns its output name."""

    def __init__(self, accuracy_level: int):
        from onnx import helper, numpy_helper

        self.accuracy_level = accuracy_level
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits, self.n = [], [], 0

    def const(self, array, name: str | None = None) -> str:
        name = name or f"c{len(self.inits)}"
        self.inits.append(self.numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, domain: str = "", name: str | list[str] | None = None,
           **attrs):
        """``name``: the output's name (or the outputs' names, a list) where the graph's interface fixes it."""
        self.n += 1
        if name:
            outs = [name] if isinstance(name, str) else list(name)
        else:
            outs = [f"{op_type.lower()}_{self.n}_{i}" for i in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outs, domain=domain, **attrs))
        return outs[0] if len(outs) == 1 else outs


def _weights(layer: nn.Module):
    """(attributes, weight, scales): MatMulNBits' attributes, packed codes and scales for a QLinear; (None, the
    float weight (out, in), None) for an nn.Linear."""
    from course_lib.llm import fast
    from course_lib.llm.quant import QLinear

    if isinstance(layer, QLinear):
        block = fast.check_fast_config(layer.bits, layer.group_size, layer.in_features)
        b, s = fast.to_matmulnbits(layer.int_weight(), layer.scale, layer.bits, block)
        return dict(K=layer.in_features, bits=layer.bits, block_size=block), b, s
    if isinstance(layer, nn.Linear):
        return None, layer.weight.detach().float().numpy(), None
    raise TypeError(f"expected nn.Linear or QLinear, got {type(layer).__name__}")


def _linear(g: _Graph, x: str, *layers: nn.Module) -> str | list[str]:
    """Linear layers reading the same input: MatMulNBits on the fast path's packed codes (QLinear) or MatMul on the
    float weight (nn.Linear).

    Several layers (SwiGLU's gate and up) become ONE operator over their weights stacked by output rows, and a
    Split — Baichuan's ``W_pack`` trick for q, k, v, done at export time: one call reads both matrices, so
    one operator's fixed cost (activation rounding, waking the threads) is paid once. Exact: each output row is
    the same codes and scales as before. Layers of different formats stay separate."""
    parts = [_weights(layer) for layer in layers]
    attrs = [p[0] for p in parts]
    if len(layers) > 1 and all(a == attrs[0] for a in attrs) and not any(layer.bias is not None for layer in layers):
        stacked = (attrs[0], np.concatenate([p[1] for p in parts]),
                   None if attrs[0] is None else np.concatenate([p[2] for p in parts]))
        sizes = g.const(np.array([layer.out_features for layer in layers]))
        return g.op("Split", _matmul(g, x, *stacked), sizes, outputs=len(layers), axis=-1)
    ys = [_matmul(g, x, *p) for p in parts]
    ys = [y if layer.bias is None else g.op("Add", y, g.const(layer.bias.detach().float().numpy()))
          for y, layer in zip(ys, layers)]
    return ys[0] if len(ys) == 1 else ys


def _matmul(g: _Graph, x: str, attrs: dict | None, w: np.ndarray, scales: np.ndarray | None) -> str:
    """One operator for :func:`_weights`' triple: MatMulNBits (codes) or MatMul (float)."""
    if attrs is None:  # float: MatMul with the transposed weight as an initializer
        return g.op("MatMul", x, g.const(np.ascontiguousarray(w.T)))
    return g.op("MatMulNBits", x, g.const(w), g.const(scales), domain="com.microsoft", N=w.shape[0],
                accuracy_level=g.accuracy_level, **attrs)


def _rms_norm(g: _Graph, x: str, norm: nn.Module) -> str:
    return g.op("SimplifiedLayerNormalization", x, g.const(norm.weight.detach().float().numpy()), axis=-1,
                epsilon=float(norm.eps))


def _heads(g: _Graph, x: str, n_heads: int, head_dim: int) -> str:
    """(1, T, n·d) → (1, n, T, d)."""
    return g.op("Transpose", g.op("Reshape", x, g.const(np.array([1, -1, n_heads, head_dim]))), perm=[0, 2, 1, 3])


def _rope(g: _Graph, x: str, cos: str, sin: str, head_dim: int) -> str:
    """x·cos + rotate_half(x)·sin, rotate_half(x) = [-x2, x1] (the halves of the head dimension).

    rotate_half is a fixed signed permutation, so it is one ``MatMul`` with a constant ±1 matrix (exact: one non-zero
    term per output) instead of Split + Neg + Concat: fewer operators per token."""
    if "rotate_half" not in {t.name for t in g.inits}:
        half, r = head_dim // 2, np.zeros((head_dim, head_dim), np.float32)
        r[np.arange(half) + half, np.arange(half)] = -1.0  # out[j] = -x[j + d/2]
        r[np.arange(half), np.arange(half) + half] = 1.0  # out[j + d/2] = x[j]
        g.const(r, "rotate_half")
    return g.op("Add", g.op("Mul", x, cos), g.op("Mul", g.op("MatMul", x, "rotate_half"), sin))


def _attention(g: _Graph, x: str, attn: nn.Module, cos: str, sin: str, bias: str, i: int) -> tuple[str, list[str]]:
    """W_pack → q, k, v → RoPE → append to the KV cache → grouped-query attention → o_proj."""
    cfg = attn.cfg
    h, kvh, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    qkv = _linear(g, x, attn.W_pack)
    if cfg.position_embedding == "rope":  # q and k heads side by side: one RoPE and one Transpose for both
        qk, v = g.op("Split", qkv, g.const(np.array([cfg.q_size + cfg.kv_size, cfg.kv_size])), outputs=2, axis=-1)
        qk = _rope(g, g.op("Reshape", qk, g.const(np.array([1, -1, h + kvh, d]))), cos, sin, d)  # (1, T, h + kvh, d)
        q, k = g.op("Split", g.op("Transpose", qk, perm=[0, 2, 1, 3]), g.const(np.array([h, kvh])), outputs=2, axis=1)
        v = _heads(g, v, kvh, d)
    else:
        q, k, v = g.op("Split", qkv, g.const(np.array([cfg.q_size, cfg.kv_size, cfg.kv_size])), outputs=3, axis=-1)
        q, k, v = _heads(g, q, h, d), _heads(g, k, kvh, d), _heads(g, v, kvh, d)
    k = g.op("Concat", f"past_key_{i}", k, axis=2, name=f"present_key_{i}")  # the cache: (1, kv_heads, past + T, d)
    v = g.op("Concat", f"past_value_{i}", v, axis=2, name=f"present_value_{i}")
    presents = [k, v]
    # GQA without copying k/v: the q heads sharing a kv head become one group (1, kv_heads, rep, T, d)
    q5 = g.op("Reshape", g.op("Mul", q, g.const(np.float32(1 / math.sqrt(d)))), g.const(np.array([1, kvh, h // kvh, -1, d])))
    k5, v5 = g.op("Unsqueeze", k, g.const(np.array([2]))), g.op("Unsqueeze", v, g.const(np.array([2])))
    scores = g.op("Add", g.op("MatMul", q5, g.op("Transpose", k5, perm=[0, 1, 2, 4, 3])), bias)
    out = g.op("MatMul", g.op("Softmax", scores, axis=-1), v5)  # (1, kv_heads, rep, T, d)
    out = g.op("Reshape", g.op("Transpose", g.op("Reshape", out, g.const(np.array([1, h, -1, d]))), perm=[0, 2, 1, 3]),
               g.const(np.array([1, -1, cfg.q_size])))
    return _linear(g, out, attn.o_proj), presents


def _attention_fused(g: _Graph, x: str, attn: nn.Module, i: int) -> tuple[str, list[str]]:
    """W_pack → onnxruntime's ``GroupQueryAttention`` → o_proj: what :func:`_attention` spells out, as one operator.

    It takes the packed q|k|v (the W_pack output as it is), rotates q and k by the ``cos_cache``/``sin_cache`` rows
    of their positions (the half tables: ``rotate_half`` pairs column j with j + head_dim/2), appends k and v to
    the cache, and attends with a causal mask; ``seqlens_k`` (the last position) tells it where the new tokens are."""
    cfg = attn.cfg
    qkv = _linear(g, x, attn.W_pack)  # (1, T, (heads + 2·kv_heads)·head_dim): the "packed QKV" input
    out, *presents = g.op("GroupQueryAttention", qkv, "", "", f"past_key_{i}", f"past_value_{i}", "seqlens_k",
                          "total_sequence_length", "cos_cache", "sin_cache", domain="com.microsoft",
                          name=[f"attention_{i}", f"present_key_{i}", f"present_value_{i}"],
                          num_heads=cfg.num_attention_heads, kv_num_heads=cfg.num_key_value_heads, do_rotary=1)
    return _linear(g, out, attn.o_proj), presents


def _layer(g: _Graph, x: str, layer: nn.Module, cos: str, sin: str, bias: str, i: int,
           fused: bool = False) -> tuple[str, list[str]]:
    """One pre-norm decoder layer, as BaichuanLayer.forward: x + attn(norm(x)), then + mlp(norm(x))."""
    h = _rms_norm(g, x, layer.input_layernorm)
    if fused:
        a, presents = _attention_fused(g, h, layer.self_attn, i)
    else:
        a, presents = _attention(g, h, layer.self_attn, cos, sin, bias, i)
    x = g.op("Add", x, a)
    h, mlp = _rms_norm(g, x, layer.post_attention_layernorm), layer.mlp
    gate, up = _linear(g, h, mlp.gate_proj, mlp.up_proj)  # one operator for both, then a Split
    swiglu = g.op("Mul", g.op("Mul", gate, g.op("Sigmoid", gate)), up)  # silu(gate) * up
    return g.op("Add", x, _linear(g, swiglu, mlp.down_proj)), presents


def check_fused(config, fused: bool | None) -> bool:
    """Whether the graph uses ``GroupQueryAttention`` (None: yes for RoPE models); ValueError for ALiBi + True."""
    rope = config.position_embedding == "rope"
    if fused is None:
        return rope
    if fused and not rope:
        raise ValueError("fused attention (GroupQueryAttention) rotates with RoPE; this model uses "
                         f"{config.position_embedding!r}: build it with fused_attention=False")
    return bool(fused)


def build_decode_graph(model, accuracy_level: int | None = None, fused_attention: bool | None = None):
    """The ONNX model of one step of ``model`` (a BaichuanForCausalLM, float or quantized): see :class:`GraphDecoder`.

    Inputs: ``input_ids`` (1, T) int64; ``past_key_i`` / ``past_value_i`` (1, kv_heads, past, head_dim); and the
    positions, which depend on the attention's spelling (``fused_attention``, default: fused for RoPE models):

    * readable ops: ``cos``/``sin`` (T, head_dim) RoPE tables for the new positions and ``bias``
      (1 or kv_heads, 1 or rep, T, past + T), the additive attention bias (causal mask, ALiBi);
    * fused: ``seqlens_k`` (1,) int32 = past + T - 1, ``total_sequence_length`` () int32 = past + T, and
      ``cos_cache``/``sin_cache`` (≥ past + T, head_dim / 2), the half RoPE tables from position 0.

    Outputs: ``logits`` (1, T, vocab) and ``present_key_i`` / ``present_value_i``. ``accuracy_level``: MatMulNBits'
    compute (default the fast path's, 4 = int8 activations; 0 = float32, which reproduces the reference path to
    float rounding).
    """
    from onnx import TensorProto

    from course_lib.llm.fast import FAST_ACCURACY_LEVEL

    cfg = model.config
    fused = check_fused(cfg, fused_attention)
    g = _Graph(FAST_ACCURACY_LEVEL if accuracy_level is None else accuracy_level)
    x = g.op("Gather", g.const(model.model.embed_tokens.weight.detach().float().numpy(), "embed_tokens"), "input_ids")
    cos, sin = "cos", "sin"
    if cfg.position_embedding == "rope" and not fused:  # (T, d) → (T, 1, d): broadcasts over (1, T, heads, d)
        shape = g.const(np.array([-1, 1, cfg.head_dim]))
        cos, sin = g.op("Reshape", "cos", shape), g.op("Reshape", "sin", shape)
    outputs = []
    for i, layer in enumerate(model.model.layers):
        x, presents = _layer(g, x, layer, cos, sin, "bias", i, fused)  # presents: present_key_i / present_value_i
        outputs += presents
    logits = _linear(g, _rms_norm(g, x, model.model.norm), model.lm_head)  # every position: perplexity needs them
    g.nodes.append(g.helper.make_node("Identity", [logits], ["logits"]))
    f32, kv = TensorProto.FLOAT, ["batch", cfg.num_key_value_heads, "past", cfg.head_dim]
    inputs = [g.helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "T"])]
    if fused:
        inputs += [g.helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
                   g.helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
                   g.helper.make_tensor_value_info("cos_cache", f32, ["max_positions", cfg.head_dim // 2]),
                   g.helper.make_tensor_value_info("sin_cache", f32, ["max_positions", cfg.head_dim // 2])]
    else:
        inputs += [g.helper.make_tensor_value_info("cos", f32, ["T", cfg.head_dim]),
                   g.helper.make_tensor_value_info("sin", f32, ["T", cfg.head_dim]),
                   g.helper.make_tensor_value_info("bias", f32, ["bh", "r", "T", "S"])]
    for i in range(cfg.num_hidden_layers):
        inputs += [g.helper.make_tensor_value_info(f"past_{kind}_{i}", f32, kv) for kind in ("key", "value")]
    outs = [g.helper.make_tensor_value_info("logits", f32, [1, "T", cfg.vocab_size])]
    outs += [g.helper.make_tensor_value_info(name, f32, kv[:2] + ["total", cfg.head_dim]) for name in outputs]
    graph = g.helper.make_graph(g.nodes, "decode_step", inputs, outs, initializer=g.inits)
    return g.helper.make_model(graph, opset_imports=[g.helper.make_opsetid("", OPSET),
                                                     g.helper.make_opsetid("com.microsoft", 1)])


def _batch(ids) -> torch.Tensor:
    """Token ids as a batch of one, (1, T): a (T,) sequence gets its batch dimension."""
    ids = torch.as_tensor(ids)
    return ids[None] if ids.dim() == 1 else ids


class GraphDecoder:
    """Decoding with one onnxruntime call per token (:func:`build_decode_graph`); ``stream_ids`` like the model's.

    ``spin=False`` makes its pool threads sleep between operators, like the eager fast path's sessions (notebook 03
    times both: a token runs hundreds of operators back to back, each needing its threads awake).
    ``fused_attention``: ``GroupQueryAttention`` (default for RoPE models) or the readable operators
    (:func:`build_decode_graph`); notebook 03 times both.
    """

    def __init__(self, model, threads: int | None = None, accuracy_level: int | None = None, spin: bool = True,
                 fused_attention: bool | None = None):
        hw.require("onnxruntime", "llm", what="the whole-graph decoder")
        from course_lib.llm.baichuan import BaichuanForCausalLM

        if not isinstance(model, BaichuanForCausalLM):
            raise TypeError(f"GraphDecoder needs a BaichuanForCausalLM, got {type(model).__name__}")
        off_cpu = sorted({str(p.device) for p in model.parameters()} - {"cpu"})
        if off_cpu:
            raise ValueError(f"GraphDecoder runs on onnxruntime's CPU provider but the model is on {', '.join(off_cpu)}: "
                             "build it from a CPU copy (model.cpu())")
        self.source_model, self.config = model, model.config  # kept: the bytes per token are counted on it
        self.fused_attention = check_fused(model.config, fused_attention)
        self.accuracy_level = accuracy_level
        self._rope_rows = 0  # fused: the half cos/sin tables, grown on demand (positions 0 … rows - 1)
        self.threads = int(threads or torch.get_num_threads())
        self.spin = bool(spin)  # one session runs every operator of a token: its threads wait for the next one spinning
        self.session = self.new_session(self.graph())

    def graph(self):
        """The ONNX graph this decoder runs, built again from its model (not kept: the session holds the weights)."""
        return build_decode_graph(self.source_model, self.accuracy_level, self.fused_attention)

    def new_session(self, proto, profile_prefix: str | None = None):
        """An onnxruntime CPU session of ``proto`` with this decoder's threads and spinning; ``profile_prefix``: with
        onnxruntime's profiler on, writing its JSON there (:func:`profile_ops`)."""
        import onnxruntime as ort

        from course_lib.llm.fast import session_options

        so = session_options(self.threads, spin=self.spin)
        if profile_prefix is not None:
            so.enable_profiling = True
            so.profile_file_prefix = str(profile_prefix)
        # > 2 GB protobufs cannot be serialized in one piece: larger models would need external data
        return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])

    def _rope_cache(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The fused graph's half RoPE tables for positions 0 … ≥ rows - 1, built once and doubled when outgrown."""
        from course_lib.llm.baichuan import rope_cos_sin

        if rows > self._rope_rows:
            self._rope_rows = max(rows, 2 * self._rope_rows, self.config.max_position_embeddings)
            cos, sin = rope_cos_sin(torch.arange(self._rope_rows), self.config.head_dim, self.config.rope_theta)
            half = self.config.head_dim // 2  # the two halves of rope_cos_sin's tables are equal
            self._cos_sin = tuple(np.ascontiguousarray(t[:, :half].numpy()) for t in (cos, sin))
        return self._cos_sin

    def _feeds(self, ids: torch.Tensor, past) -> dict:
        from course_lib.llm.baichuan import attention_bias, rope_cos_sin

        cfg = self.config
        t, past_len = ids.shape[1], past[0].shape[2]
        feeds = {"input_ids": ids.to(torch.int64).numpy()}
        if self.fused_attention:
            cos, sin = self._rope_cache(past_len + t)
            feeds.update(seqlens_k=np.array([past_len + t - 1], np.int32),
                         total_sequence_length=np.array(past_len + t, np.int32), cos_cache=cos, sin_cache=sin)
        else:
            cos, sin = rope_cos_sin(torch.arange(past_len, past_len + t), cfg.head_dim, cfg.rope_theta)
            bias = attention_bias(cfg, t, past_len)  # (heads or 1, T, S)
            rep = cfg.num_attention_heads // cfg.num_key_value_heads
            bias = bias.view(1, 1, 1, t, -1)[0] if bias.shape[0] == 1 else bias.view(cfg.num_key_value_heads, rep, t, -1)
            feeds.update(cos=cos.numpy(), sin=sin.numpy(), bias=np.ascontiguousarray(bias.numpy()))
        for i in range(cfg.num_hidden_layers):
            feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = past[2 * i], past[2 * i + 1]
        return feeds

    def empty_cache(self) -> list[np.ndarray]:
        cfg = self.config
        empty = np.zeros((1, cfg.num_key_value_heads, 0, cfg.head_dim), dtype=np.float32)
        return [empty] * (2 * cfg.num_hidden_layers)

    def step(self, ids: torch.Tensor, past=None) -> tuple[torch.Tensor, list[np.ndarray]]:
        """Logits (vocab,) of the last of ``ids`` (1, T) and the new cache, continuing from ``past``."""
        past = self.empty_cache() if past is None else past
        out = self.session.run(None, self._feeds(ids, past))
        return torch.from_numpy(out[0][0, -1]), out[1:]

    def __call__(self, input_ids: torch.Tensor):
        """``.logits`` (1, T, vocab) of a whole sequence from an empty cache, like the model's forward (perplexity)."""
        out = self.session.run(["logits"], self._feeds(_batch(input_ids), self.empty_cache()))
        return SimpleNamespace(logits=torch.from_numpy(out[0]))

    def stream_ids(self, input_ids, max_new_tokens: int = 64, use_cache: bool = True, **kw):
        """Yield new token ids one at a time, greedy or sampled: the model's own loop and options
        (:func:`course_lib.llm.baichuan.decode_stream`), one onnxruntime call per token. The graph always reads
        and extends its KV cache: ``use_cache=False`` is a ValueError."""
        from course_lib.llm.baichuan import decode_stream

        if use_cache is not True:
            raise ValueError("GraphDecoder always decodes with its KV cache (use_cache=False is not supported)")
        return decode_stream(lambda step_in, past, seq: self.step(step_in, past), input_ids, max_new_tokens, **kw)


def profile_ops(decoder: GraphDecoder, prompt_ids, new_tokens: int = 16):
    """Where a token's time goes inside the one graph, by operator type: onnxruntime's own profiler → (table, summary).

    A second session of ``decoder``'s graph (same threads, spinning and kernels) runs with profiling on: the prompt,
    then ``new_tokens`` greedy decoding steps. For those steps the profiler's per-node ``*_kernel_time`` events are
    summed by operator type. The table (a DataFrame, the slowest first) has ``op``, ``calls_per_token``,
    ``us_per_token`` and ``share`` (of all kernels' time). ``summary``: ``run_us`` (the mean decoding step as the
    profiler saw it), ``kernels_us`` (the kernels' sum per step), ``between_us`` (the rest: the executor's work
    between kernels, plus the profiler's own), ``steps``. The profiler adds work per operator, so its ``run_us`` is
    slower than an unprofiled step: compare shares between kernels, and the step time with an unprofiled benchmark.
    """
    import json
    import tempfile
    from pathlib import Path

    import pandas as pd

    if not isinstance(decoder, GraphDecoder):
        raise TypeError(f"profile_ops needs a GraphDecoder, got {type(decoder).__name__}")
    if int(new_tokens) < 1:
        raise ValueError(f"new_tokens must be >= 1, got {new_tokens}")
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as tmp:
        session = decoder.new_session(decoder.graph(), profile_prefix=Path(tmp) / "graph")
        out = session.run(None, decoder._feeds(_batch(prompt_ids), decoder.empty_cache()))  # the prompt: not in the table
        for _ in range(int(new_tokens)):
            step = torch.tensor([[int(np.argmax(out[0][0, -1]))]])
            out = session.run(None, decoder._feeds(step, out[1:]))
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"][1:]  # decoding steps
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in runs]
    by_op: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            if any(a <= e["ts"] <= b for a, b in windows):
                by_op.setdefault(e["args"]["op_name"], []).append(float(e["dur"]))
    n = len(runs)
    kernels_us = sum(map(sum, by_op.values())) / n
    table = pd.DataFrame([{"op": op, "calls_per_token": len(d) / n, "us_per_token": sum(d) / n,
                           "share": sum(d) / n / kernels_us} for op, d in by_op.items()])
    table = table.sort_values("us_per_token", ascending=False, ignore_index=True)
    run_us = sum(e["dur"] for e in runs) / n
    return table, {"steps": n, "run_us": run_us, "kernels_us": kernels_us, "between_us": run_us - kernels_us}


def gemv_only_graph(proto):
    """The decoding graph's ``MatMulNBits`` operators alone: the same weights, attributes and order, each reading a
    graph input of its width (``A_<K>``, shape (1, 1, K)) instead of the previous operator's output. Timed next to
    the whole step (:func:`gemv_share`), it says how much of a token the weight-reading kernels take, unprofiled."""
    from onnx import TensorProto, helper

    nodes = [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
    if not nodes:
        raise ValueError("the graph has no MatMulNBits operator: quantize the model before building its decoder")
    inits = {t.name: t for t in proto.graph.initializer}
    widths = sorted({next(a.i for a in n.attribute if a.name == "K") for n in nodes})
    copies = []
    for n in nodes:
        k = next(a.i for a in n.attribute if a.name == "K")
        copy = helper.make_node("MatMulNBits", [f"A_{k}", *n.input[1:]], list(n.output), domain=n.domain)
        copy.attribute.extend(n.attribute)
        copies.append(copy)
    graph = helper.make_graph(
        copies, "gemv_only", [helper.make_tensor_value_info(f"A_{k}", TensorProto.FLOAT, [1, 1, k]) for k in widths],
        [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None) for n in copies],
        initializer=[inits[name] for n in copies for name in n.input[1:] if name in inits])
    return helper.make_model(graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)


def gemv_share(decoder: GraphDecoder, prompt_ids, rounds: int = 15, warmup: int = 2) -> dict:
    """One decoding step of ``decoder`` and its ``MatMulNBits`` operators alone (:func:`gemv_only_graph`), timed in
    the same interleaved rounds without a profiler → ``{"whole step": BenchResult, "MatMulNBits alone": BenchResult}``
    (``extra``: the operators each runs). Both sessions have the decoder's threads and spinning; the step is the
    first one after the prompt, repeated from the same cache. Their quotient is the weight-reading kernels' share
    of a token; the rest is every other operator and the executor between them."""
    from course_lib import bench

    if not isinstance(decoder, GraphDecoder):
        raise TypeError(f"gemv_share needs a GraphDecoder, got {type(decoder).__name__}")
    proto = decoder.graph()
    gemv = gemv_only_graph(proto)
    alone = decoder.new_session(gemv)
    out = decoder.session.run(None, decoder._feeds(_batch(prompt_ids), decoder.empty_cache()))
    feeds = decoder._feeds(torch.tensor([[int(np.argmax(out[0][0, -1]))]]), out[1:])
    rng = np.random.default_rng(0)
    gemv_feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
                  for i in gemv.graph.input}
    return bench.interleaved(
        {"whole step": lambda: decoder.session.run(None, feeds), "MatMulNBits alone": lambda: alone.run(None, gemv_feeds)},
        rounds=rounds, warmup=warmup, unit="tokens",
        extra={"whole step": {"operators": len(proto.graph.node)}, "MatMulNBits alone": {"operators": len(gemv.graph.node)}})
