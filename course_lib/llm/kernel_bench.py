"""The harness that chose lesson 3's fast kernel: every candidate a practitioner would try, timed and checked (notebook 03).

:func:`compare_kernels` runs each candidate at SmolLM2's layer shapes, batch 1:

* ``fp32``            — ``F.linear`` on the float weight (the baseline);
* ``reference``       — the seed's dequantise-then-matmul (``QLinear``);
* ``torch.compile``   — Inductor compiling unpack + dequantise + matmul (it may fuse the dequantisation), one compiled
  function per shape and format;
* ``aten``            — ``torch.ops.aten._weight_int8pack_mm`` / ``_weight_int4pack_mm_for_cpu``;
* ``torchao``         — torchao's ``Int8WeightOnlyConfig`` / ``IntxWeightOnlyConfig(int4)`` (if installed; the course
  does not install it: once present, every ``transformers`` model load imports it and logs warnings about its
  CUDA-only extensions);
* ``tvm``             — a TVM fused dequantise-GEMV (:mod:`course_lib.llm.tvm_gemv`), with a hand schedule or
  MetaSchedule's tuned one from the committed database (the ``schedule`` column says which actually ran);
* ``ort``             — onnxruntime's contrib op ``MatMulNBits`` (MLAS), float or int8 compute; the latter is
  :mod:`course_lib.llm.fast`, the ``kernel="fast"`` of the models.

What the table can and cannot say: every output is compared with ONE float64 reference per shape and format
(``max_err``); a candidate that cannot handle a format (:class:`Unsupported`) or whose optional package is missing
records why in ``note``, and any other failure raises. Each timed call cycles through ``copies`` independent weights;
``weights_from`` says whether those copies together exceed the last-level cache (:func:`last_level_cache_bytes`), i.e.
whether the weights really came from memory as in decoding, or stayed cache-resident. Every session and copy is
called once before timing; thread settings changed for a row (torch's, TVM's pool) are restored afterwards.
"""

from __future__ import annotations

import math
import types
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from course_lib import bench, hw
from course_lib.llm import fast
from course_lib.llm.quant import QLinear, unpack_int4

SMOLLM2_SHAPES = ((576, 576), (192, 576), (960, 576), (1536, 576), (576, 1536), (49152, 576))


class Unsupported(ValueError):
    """A candidate that does not implement this format (recorded in ``note``, not an error)."""


def last_level_cache_bytes() -> int | None:
    """Size of the largest CPU cache level (from ``/sys/devices/system/cpu/cpu0/cache``), None when unreadable."""
    best = None
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((d / "level").read_text())
            size = (d / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:].upper(), 1)
        n = int(size.rstrip("KMGkmg")) * mult
        if best is None or level > best[0] or (level == best[0] and n > best[1]):
            best = (level, n)
    return best[1] if best else None


def reference_output(x: torch.Tensor, w: torch.Tensor, bits: int | None, group_size: int | None) -> torch.Tensor:
    """float64 ``x @ W.T`` for the float weight (bits None) or for QLinear's dequantised codes, computed in float64."""
    if bits is None:
        return F.linear(x.double(), w.double())
    layer = QLinear(bits, w, group_size=group_size)
    q, s = layer.int_weight().double(), layer.scale.double()
    out_f, in_f = q.shape
    wd = q * s[:, None] if group_size is None else (q.view(out_f, -1, group_size) * s[:, :, None]).view(out_f, in_f)
    return F.linear(x.double(), wd)


# ----------------------------------------------------------------------------------------------
# the candidates, one factory each: (weight, bits, group_size) → callable(x); Unsupported for a format they lack


def cand_fp32(w, bits, group_size):
    """The float layer: ``F.linear`` on the original weight."""
    return lambda x: F.linear(x, w)


def cand_reference(w, bits, group_size):
    """The seed's QLinear: dequantise the whole weight, then ``F.linear``."""
    return QLinear(bits, w, group_size=group_size)


def _dequant_matmul(x, q, scale, group_size: int):
    out_f, in_f = q.shape
    wf = (q.to(x.dtype).view(out_f, in_f // group_size, group_size) * scale.to(x.dtype)[:, :, None]).view(out_f, in_f)
    return F.linear(x, wf)


def _step8(x, p, s, g):
    return _dequant_matmul(x, p, s, g)


def _step4(x, p, s, g):
    return _dequant_matmul(x, unpack_int4(p), s, g)


_COMPILED: dict = {}


def compiled_step(bits: int, group_size: int, out_f: int, in_f: int, backend: str = "inductor") -> Callable:
    """One ``torch.compile``d function per (format, shape): a fresh code object each, so Dynamo compiles each shape
    once instead of counting the shapes as recompiles of one function (its recompile limit is 8)."""
    key = (bits, group_size, out_f, in_f, backend)
    if key not in _COMPILED:
        base = _step8 if bits == 8 else _step4
        code = base.__code__.replace(co_name=f"dequant_gemv_int{bits}_g{group_size}_{out_f}x{in_f}")
        fn = types.FunctionType(code, base.__globals__, code.co_name)
        _COMPILED[key] = torch.compile(fn, dynamic=False, fullgraph=True, backend=backend)
    return _COMPILED[key]


def cand_compile(w, bits, group_size, backend: str = "inductor"):
    """torch.compile (no graph breaks) of unpack + dequantise + matmul, compiled once per shape and format."""
    layer = QLinear(bits, w, group_size=group_size)
    g = group_size or w.shape[1]
    scale = layer.scale.view(w.shape[0], -1)
    fn = compiled_step(bits, g, *w.shape, backend=backend)
    return lambda x: fn(x, layer.weight, scale, g)


def cand_aten(w, bits, group_size):
    """ATen's CPU weight-only kernels: int8 per-row, int4 group-wise (bf16/fp32 scales and zeros)."""
    layer = QLinear(bits, w, group_size=group_size)
    if bits == 8:
        if group_size is not None:
            raise Unsupported("_weight_int8pack_mm supports per-row scales only")
        return lambda x: torch.ops.aten._weight_int8pack_mm(x, layer.weight, layer.scale)
    if group_size is None:
        raise Unsupported("_weight_int4pack_mm_for_cpu needs a group size")
    u = (layer.int_weight() + 8).to(torch.uint8)  # unsigned codes, zero point 8
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.to(torch.int32).contiguous(), 1)
    s = layer.scale.to(torch.float32).t().contiguous()  # (groups, out)
    sz = torch.stack([s, torch.zeros_like(s)], dim=-1).contiguous()  # tinygemm: w = (u - 8) * scale + zero
    return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, sz)


def cand_torchao(w, bits, group_size):
    """torchao's weight-only configs applied to an nn.Linear (its own quantization of the same weights)."""
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
            raise Unsupported("torchao's int4 weight-only config needs a group size")
        # Int4WeightOnlyConfig has CUDA/XPU layouts only in this torchao; the int4 CPU route is Intx
        cfg = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(lin, cfg)
    return lin


def cand_tvm(w, bits, group_size, tuned: bool = True):
    """TVM's fused dequantise-GEMV (:class:`tvm_gemv.TvmLinear`); ``.how`` says which schedule compiled."""
    from course_lib.llm import tvm_gemv

    tvm_gemv.check_format(bits, group_size, *w.shape)  # TVM's own message for a format it lacks
    layer = QLinear(bits, w, group_size=group_size)
    return tvm_gemv.TvmLinear(layer.int_weight(), layer.scale, bits, group_size, tuned=tuned)


def cand_ort(w, bits, group_size, accuracy_level: int = fast.FAST_ACCURACY_LEVEL):
    """onnxruntime MatMulNBits on QLinear's codes (``accuracy_level`` 4 = the fast path's int8 compute)."""
    hw.require("onnxruntime", "llm", what="onnxruntime's MatMulNBits")
    layer = QLinear(bits, w, group_size=group_size)
    block = fast.check_fast_config(bits, group_size, w.shape[1])
    b, s = fast.to_matmulnbits(layer.int_weight(), layer.scale, bits, block)
    sess = fast.matmulnbits_session(b, s, bits, block, w.shape[1], threads=torch.get_num_threads(),
                                    accuracy_level=accuracy_level)
    return lambda x: torch.from_numpy(sess.run(None, {"A": x.detach().numpy()})[0])


CANDIDATES: dict[str, Callable] = {
    "fp32": cand_fp32,
    "reference": cand_reference,
    "torch.compile": cand_compile,
    "aten": cand_aten,
    "torchao": cand_torchao,
    "tvm (hand schedule)": lambda w, b, g: cand_tvm(w, b, g, tuned=False),
    "tvm (MetaSchedule)": lambda w, b, g: cand_tvm(w, b, g, tuned=True),
    "ort (fp32 compute)": lambda w, b, g: cand_ort(w, b, g, accuracy_level=0),
    "ort (int8 compute) = fast": cand_ort,
}
OPTIONAL = (hw.MissingDependency,)  # the only failures that become a note besides Unsupported


@contextmanager
def threads_for(name: str, n: int):
    """torch's threads (and TVM's pool, for a TVM candidate) set to ``n`` inside, restored on exit."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        if name.startswith("tvm"):
            from course_lib.llm import tvm_gemv

            with tvm_gemv.thread_pool(n):
                yield
        else:
            yield
    finally:
        torch.set_num_threads(old)


def _bytes_per_weight(bits: int | None, group_size: int | None, in_f: int) -> float:
    if bits is None:
        return 4.0
    return bits / 8 + (2.0 / group_size if group_size else 4.0 / in_f)


@torch.no_grad()
def compare_kernels(shapes=SMOLLM2_SHAPES, formats=((8, None), (4, 64)), candidates=None, threads=(1, 2),
                    max_copies: int = 16, warmup: int = 5, repeat: int = 30, seed: int = 0):
    """Median µs per batch-1 call of each candidate kernel, per shape, format and thread count → DataFrame.

    Columns: threads, shape, format, kernel, median_us, p10_us, p90_us, max_err (against the float64 reference of
    that shape and format), schedule (TVM: which schedule compiled), copies, weights_mb (the copies cycled through,
    in that format's bytes), weights_from ('memory' when they exceed the last-level cache, else 'cache'), note.
    ``df.attrs['llc_bytes']`` holds the cache size read (None if unknown). Copies: enough to exceed twice the
    last-level cache, at most ``max_copies`` (memory for a big layer; small layers stay cache-resident and say so).
    """
    import pandas as pd

    names = list(candidates or CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise ValueError(f"unknown candidates {unknown}; choose from {list(CANDIDATES)}")
    llc = last_level_cache_bytes()
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for out_f, in_f in shapes:
        smallest = out_f * in_f * min(_bytes_per_weight(b, g, in_f) for b, g in formats)
        copies = max(1, min(max_copies, math.ceil(2 * llc / smallest))) if llc else max_copies
        ws = [torch.randn(out_f, in_f, generator=gen) * 0.02 for _ in range(copies)]
        x = torch.randn(1, in_f, generator=gen)
        for bits, gsz in formats:
            fmt = f"int{bits}" + (f" g{gsz}" if gsz else " per-row")
            ref = {None: reference_output(x, ws[0], None, None), bits: reference_output(x, ws[0], bits, gsz)}
            for name in names:
                if name == "fp32" and (bits, gsz) != tuple(formats[0]):
                    continue  # one fp32 row per shape
                fbits = None if name == "fp32" else bits
                mb = copies * out_f * in_f * _bytes_per_weight(fbits, None if name == "fp32" else gsz, in_f) / 1e6
                for n_threads in threads:
                    row = {"threads": n_threads, "shape": f"{out_f}x{in_f}", "format": "fp32" if name == "fp32" else fmt,
                           "kernel": name, "median_us": float("nan"), "p10_us": float("nan"), "p90_us": float("nan"),
                           "max_err": float("nan"), "schedule": "", "copies": copies, "weights_mb": mb,
                           "weights_from": ("memory" if mb * 1e6 > llc else "cache") if llc else "unknown", "note": ""}
                    with threads_for(name, n_threads):
                        try:
                            fns = [CANDIDATES[name](w, bits, gsz) for w in ws]
                        except Unsupported as e:
                            row["note"] = f"unsupported: {e}"
                        except OPTIONAL as e:
                            row["note"] = f"not installed: {str(e).splitlines()[0][:120]}"
                        else:
                            row["schedule"] = getattr(fns[0], "how", "")
                            row["max_err"] = float((fns[0](x).double() - ref[fbits]).abs().max())
                            bench.settle()  # the previous candidate's thread pool (TVM's spins ~0.15 s) is idle
                            for fn in fns:  # every session and copy runs once before timing (first-run costs)
                                fn(x)
                            it = iter(range(10**9))
                            r = bench.benchmark(lambda: fns[next(it) % copies](x), warmup=warmup, repeat=repeat)
                            ts = sorted(r.times_s)
                            row.update(median_us=r.median_s * 1e6, p10_us=bench.percentile(ts, 10) * 1e6,
                                       p90_us=bench.percentile(ts, 90) * 1e6)
                            del fns
                    rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["llc_bytes"] = llc
    return df
