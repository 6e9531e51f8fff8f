"""Fast weight-only int8 / int4 kernels for ``QLinear`` at batch 1, and the harness that chose them (notebook 03).

The seed's ``QLinear`` dequantises its whole weight to float on every call and then runs a float
GEMV: it reads the small integer weight *and* writes and re-reads a float copy, so it is slower than
``nn.Linear``. Decoding one token at batch 1 is memory-bound (every weight is read once per token,
two flops per weight), so a kernel that reads the packed integers directly should win by the byte
ratio. :func:`compare_kernels` measures the candidates a practitioner would try, at SmolLM2's
layer shapes:

* ``fp32``            — ``nn.Linear`` (the baseline);
* ``reference``       — the seed's dequantise-then-matmul;
* ``torch.compile``   — Inductor compiling dequantise + matmul (it may fuse the dequantisation);
* ``aten``            — ``torch.ops.aten._weight_int8pack_mm`` / ``_weight_int4pack_mm_for_cpu``;
* ``torchao``         — torchao's ``Int8WeightOnlyConfig`` / ``IntxWeightOnlyConfig(int4)`` (if installed; the
  course does not install it: once present, every ``transformers`` model load imports it and logs warnings
  about its CUDA-only extensions, and on this CPU both configs measured slower than fp32);
* ``tvm``             — lesson 4's tools: a TVM fused dequantise-GEMV (:mod:`course_lib.llm.tvm_gemv`), with a hand
  schedule or MetaSchedule's tuned one (float activations: exact to float rounding);
* ``ort``             — onnxruntime's contrib op ``MatMulNBits`` (MLAS), the weights as initializers.

The winner on this course's CPU is ``ort`` with ``accuracy_level=4``: MLAS quantizes the activation
vector to int8 per block and computes int8·int8 dot products (AVX-512 VNNI / AVX2), reading 1 byte
(int8) or half a byte (int4) per weight — what llama.cpp does for Q8_0/Q4 weights. It is the
``kernel="fast"`` of :meth:`QLinear.set_kernel` and ``model.quantize(bits, group_size, kernel="fast")``.

Layout conversion (once, at ``set_kernel``): MatMulNBits stores unsigned codes with an implicit
zero point (``q + 128`` for 8 bits, ``q + 8`` for 4 bits, two 4-bit codes per byte, low nibble
first) in blocks of ``block_size`` columns with one float32 scale per (row, block). Blocks are at
most 32 columns (:data:`ACT_BLOCK`, the activation rounding block): a per-row scale or a group of 64
is repeated for every block it covers (the same numbers, exactly). onnxruntime
pre-packs the initializers into its own tiled layout, so the fast layer holds a second copy of
the weights next to the reference storage (which stays, for ``state_dict`` and the reference path).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from course_lib import bench

KERNELS = ("reference", "fast")
FAST_BITS = (4, 8)
FAST_GROUP_SIZES = (16, 32, 64, 128, 256)  # MatMulNBits block sizes: powers of two >= 16
FAST_ACCURACY_LEVEL = 4  # int8 activations, int8 dot products (0 = float32 compute, slow for 8 bits)
# With accuracy_level 4, MLAS rounds the activation vector to int8 per block of the weight's block size, so the
# block also sets the activation error. Measured on SmolLM2 (perplexity zh / en vs the reference path of the same
# format, 2 × 512 tokens): int8 per row, block 64 +0.98 % / +0.26 %, block 32 +0.41 % / +0.26 %, block 16
# +0.39 % / -0.26 %; int4 g64, block 64 -0.03 % / +0.53 %, block 32 -0.13 % / +0.24 %. So the block is at most 32
# values (llama.cpp's Q8_0 block, the one it rounds activations to as well): a per-row scale, or a group of 64, is
# the same scale repeated for each block of 32 — the weights are unchanged, 4 bytes of scale per 32 weights.
ACT_BLOCK = 32
PER_ROW_BLOCKS = (32, 16)
SMOLLM2_SHAPES = ((576, 576), (192, 576), (960, 576), (1536, 576), (576, 1536), (49152, 576))


# ----------------------------------------------------------------------------------------------
# the fast kernel: onnxruntime MatMulNBits


def check_fast_config(bits, group_size, in_features: int) -> int:
    """The MatMulNBits block size for (bits, group_size, in_features); ValueError naming what is supported."""
    if isinstance(bits, bool) or bits not in FAST_BITS:
        raise ValueError(f"kernel 'fast' supports bits {FAST_BITS}, got {bits!r}")
    if group_size is None:  # per-row scale, repeated per block of 32 (see ACT_BLOCK)
        for block in PER_ROW_BLOCKS:
            if in_features % block == 0:
                return block
        raise ValueError(f"kernel 'fast' needs in_features to be a multiple of 16 for per-row scales, got {in_features}")
    if group_size not in FAST_GROUP_SIZES:
        raise ValueError(f"kernel 'fast' supports group_size None (per row) or {FAST_GROUP_SIZES}, got {group_size!r}")
    return min(int(group_size), ACT_BLOCK)  # a larger group: its scale repeated for each block of 32


def to_matmulnbits(q: torch.Tensor, scale: torch.Tensor, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """One-time layout conversion: signed codes (out, in) + scales → MatMulNBits' (B uint8 (out, blocks, bytes), scales)."""
    out_f, in_f = q.shape
    n_blocks = in_f // block
    s = scale.to(torch.float32)
    s = s[:, None].expand(out_f, n_blocks) if s.dim() == 1 else s.repeat_interleave(s.shape[1] and n_blocks // s.shape[1], dim=1)
    if bits == 8:
        b = (q.to(torch.int16) + 128).to(torch.uint8).view(out_f, n_blocks, block)
    else:
        u = (q.to(torch.int16) + 8).to(torch.uint8)
        b = (u[:, 0::2] | (u[:, 1::2] << 4)).view(out_f, n_blocks, block // 2)  # low nibble = even column
    return b.contiguous().numpy(), s.contiguous().reshape(-1).numpy()


def matmulnbits_session(b: np.ndarray, scales: np.ndarray, bits: int, block: int, in_features: int,
                        threads: int | None = None, accuracy_level: int = FAST_ACCURACY_LEVEL):
    """An onnxruntime session computing Y = A @ dequant(B).T with the weights as initializers (pre-packed once)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    out_f = b.shape[0]
    node = helper.make_node("MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft", K=in_features,
                            N=out_f, bits=bits, block_size=block, accuracy_level=accuracy_level)
    graph = helper.make_graph(
        [node], "qlinear",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", in_features])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", out_f])],
        initializer=[numpy_helper.from_array(b, "B"), numpy_helper.from_array(scales, "S")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # do not steal the cores from torch between calls
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


# A batch-1 GEMV over fewer weights than this finishes before a second thread has woken up (sessions do not spin):
# such layers get one thread unless told otherwise (SmolLM2: every decoder linear; its 28 M-weight head gets them all).
SINGLE_THREAD_BELOW = 2**22


class FastLinear:
    """Batch-any fused int8/int4 weight-only matmul through MatMulNBits; the callable behind ``kernel='fast'``."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bits: int, group_size: int | None,
                 bias: torch.Tensor | None = None, threads: int | None = None):
        self.out_features, self.in_features = q.shape
        threads = threads or (1 if q.numel() < SINGLE_THREAD_BELOW else torch.get_num_threads())
        self.block = check_fast_config(bits, group_size, self.in_features)
        b, s = to_matmulnbits(q, scale, bits, self.block)
        self.session = matmulnbits_session(b, s, bits, self.block, self.in_features, threads)
        self.bias = bias
        self.nbytes = b.nbytes + s.nbytes + (bias.nbytes if bias is not None else 0)  # what each call reads

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().reshape(-1, self.in_features).to(torch.float32).contiguous()  # inference only: no autograd
        y = torch.from_numpy(self.session.run(None, {"A": a.numpy()})[0])
        if self.bias is not None:
            y = y + self.bias.to(torch.float32)
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)


def check_kernel(kernel: str, bits: int, group_size, model=None) -> None:
    """ValueError (naming what is supported) unless ``kernel`` handles (bits, group_size) on every target layer."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "fast":
        in_sizes = {576}  # SmolLM2's hidden size when no model is given
        if model is not None:
            in_sizes = {m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)} or in_sizes
        for k in sorted(in_sizes):
            if group_size is not None and isinstance(group_size, int) and group_size in FAST_GROUP_SIZES and k % group_size:
                continue  # QLinear reports a group that does not divide in_features
            check_fast_config(bits, group_size, k)


def make_kernel(layer, kernel: str, threads: int | None = None) -> Callable | None:
    """The callable for ``QLinear.set_kernel``: None for 'reference', a :class:`FastLinear` for 'fast'."""
    if kernel == "reference":
        return None
    if kernel != "fast":
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return FastLinear(layer.int_weight(), layer.scale, layer.bits, layer.group_size, layer.bias, threads)


# ----------------------------------------------------------------------------------------------
# the candidates, one factory each: (weight, bits, group_size) → callable(x) or raise


def _int_codes(w, bits, group_size):
    from course_lib.llm.quant import QLinear

    return QLinear(bits, w, group_size=group_size)


def cand_fp32(w, bits, group_size):
    return lambda x: F.linear(x, w)


def cand_reference(w, bits, group_size):
    return _int_codes(w, bits, group_size)


def _dequant_matmul(x, q, scale, group_size: int):
    out_f, in_f = q.shape
    wf = (q.to(x.dtype).view(out_f, in_f // group_size, group_size) * scale.to(x.dtype)[:, :, None]).view(out_f, in_f)
    return F.linear(x, wf)


_COMPILED: dict = {}


def cand_compile(w, bits, group_size):
    """torch.compile (Inductor, no graph breaks) of unpack + dequantise + matmul; one compiled function per format."""
    from course_lib.llm.quant import unpack_int4

    layer = _int_codes(w, bits, group_size)
    g = group_size or w.shape[1]
    scale = layer.scale.view(w.shape[0], -1)
    key = (bits, g)
    if key not in _COMPILED:  # the same function object for every weight copy: compiled once per shape
        unpack = (lambda p: p) if bits == 8 else unpack_int4
        _COMPILED[key] = torch.compile(lambda x, p, s: _dequant_matmul(x, unpack(p), s, g), dynamic=False,
                                       fullgraph=True)
    fn = _COMPILED[key]
    return lambda x: fn(x, layer.weight, scale)


def cand_aten(w, bits, group_size):
    """ATen's CPU weight-only kernels: int8 per-row, int4 group-wise (bf16/fp32 scales and zeros)."""
    layer = _int_codes(w, bits, group_size)
    if bits == 8:
        if group_size is not None:
            raise ValueError("_weight_int8pack_mm supports per-row scales only")
        return lambda x: torch.ops.aten._weight_int8pack_mm(x, layer.weight, layer.scale)
    if group_size is None:
        raise ValueError("_weight_int4pack_mm_for_cpu needs a group size")
    u = (layer.int_weight() + 8).to(torch.uint8)  # unsigned codes, zero point 8
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.to(torch.int32).contiguous(), 1)
    s = layer.scale.to(torch.float32).t().contiguous()  # (groups, out)
    sz = torch.stack([s, torch.zeros_like(s)], dim=-1).contiguous()  # tinygemm: w = (u - 8) * scale + zero
    return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, sz)


def cand_torchao(w, bits, group_size):
    """torchao's weight-only configs applied to an nn.Linear (its own quantization of the same weights)."""
    from course_lib import hw

    import logging

    # torchao logs a warning per CUDA-only extension it cannot load on a CPU build, and torch's pytree
    # logs a deprecation notice for one of its Enums: silence exactly those loggers during the import
    quiet = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        hw.require("torchao", install="pip install torchao")
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerGroup
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight.data = w.clone()
    if bits == 8:
        cfg = Int8WeightOnlyConfig(group_size=group_size) if group_size else Int8WeightOnlyConfig()
    else:
        if group_size is None:
            raise ValueError("Int4WeightOnlyConfig needs a group size")
        # Int4WeightOnlyConfig has CUDA/XPU layouts only in this torchao; the int4 CPU route is Intx
        cfg = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(lin, cfg)
    return lin


def cand_ort(w, bits, group_size, accuracy_level: int = FAST_ACCURACY_LEVEL):
    layer = _int_codes(w, bits, group_size)
    block = check_fast_config(bits, group_size, w.shape[1])
    b, s = to_matmulnbits(layer.int_weight(), layer.scale, bits, block)
    sess = matmulnbits_session(b, s, bits, block, w.shape[1], accuracy_level=accuracy_level)
    return lambda x: torch.from_numpy(sess.run(None, {"A": x.detach().numpy()})[0])


def _tvm(w, bits, group_size, tuned: bool):
    """Lesson 4's tools on this problem: a TVM fused dequantise-GEMV, hand-scheduled or from the tuned database."""
    from course_lib.llm import tvm_gemv

    return tvm_gemv.cand_tvm(w, bits, group_size, tuned=tuned)


CANDIDATES: dict[str, Callable] = {
    "fp32": cand_fp32,
    "reference": cand_reference,
    "torch.compile": cand_compile,
    "aten": cand_aten,
    "torchao": cand_torchao,
    "tvm (hand schedule)": lambda w, b, g: _tvm(w, b, g, tuned=False),
    "tvm (MetaSchedule)": lambda w, b, g: _tvm(w, b, g, tuned=True),
    "ort (fp32 compute)": lambda w, b, g: cand_ort(w, b, g, accuracy_level=0),
    "ort (int8 compute) = fast": cand_ort,
}


@torch.no_grad()
def compare_kernels(shapes=SMOLLM2_SHAPES, formats=((8, None), (4, 64)), candidates=None, threads=(1, 2),
                    copies_mb: float = 64.0, warmup: int = 5, repeat: int = 30, seed: int = 0):
    """Median µs per batch-1 call of each candidate kernel, per shape, format and thread count → DataFrame.

    Each candidate is built on ``copies`` independent weights (enough to exceed ``copies_mb`` of fp32)
    and each timed call cycles through them, so the weights come from memory as in decoding rather than
    from a warm cache. A candidate that cannot handle a format records the reason in ``note``.
    Outputs are checked against the reference (max abs error in ``max_err``).
    """
    import pandas as pd

    names = list(candidates or CANDIDATES)
    gen = torch.Generator().manual_seed(seed)
    old_threads = torch.get_num_threads()
    rows = []
    try:
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            for out_f, in_f in shapes:
                copies = max(1, min(16, math.ceil(copies_mb * 2**20 / (4 * out_f * in_f))))
                ws = [torch.randn(out_f, in_f, generator=gen) * 0.02 for _ in range(copies)]
                x = torch.randn(1, in_f, generator=gen)
                for bits, gsz in formats:
                    ref = cand_reference(ws[0], bits, gsz)(x)
                    fmt = f"int{bits}" + (f" g{gsz}" if gsz else " per-row")
                    for name in names:
                        row = {"threads": n_threads, "shape": f"{out_f}x{in_f}", "format": "fp32" if name == "fp32" else fmt,
                               "kernel": name, "median_us": float("nan"), "p10_us": float("nan"), "p90_us": float("nan"),
                               "max_err": float("nan"), "note": ""}
                        if name == "fp32" and (bits, gsz) != formats[0]:
                            continue
                        try:
                            fns = [CANDIDATES[name](w, bits, gsz) for w in ws]
                            row["max_err"] = float((fns[0](x) - (F.linear(x, ws[0]) if name == "fp32" else ref)).abs().max())
                            it = iter(range(10**9))
                            r = bench.benchmark(lambda: fns[next(it) % copies](x), warmup=warmup, repeat=repeat)
                            ts = sorted(r.times_s)
                            row.update(median_us=r.median_s * 1e6, p10_us=bench.percentile(ts, 10) * 1e6,
                                       p90_us=bench.percentile(ts, 90) * 1e6)
                        except Exception as e:  # a candidate that does not support this format: recorded, not fatal
                            row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e) else type(e).__name__
                        rows.append(row)
    finally:
        torch.set_num_threads(old_threads)
    return pd.DataFrame(rows)
