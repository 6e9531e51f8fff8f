"""int8 vs fp32 speed on onnxruntime's CPU kernels: which Q/DQ file, and which model size.

Introduced in ``05_yolov7_ptq.ipynb`` (section 7). Two things decide whether an int8 ONNX file runs
faster than its fp32 original on onnxruntime's CPU execution provider:

- **Q/DQ placement.** onnxruntime replaces ``DequantizeLinear → Conv → QuantizeLinear`` by an integer
  ``QLinearConv`` only when the conv's *output* is quantized as well (and, measured on the course's x86
  machines, only reliably with unsigned 8-bit activations: uint8 activations with int8 weights is the x86
  fast path). pytorch-quantization writes TensorRT's placement (signed int8 on conv inputs and weights;
  TensorRT fuses the rest itself), so onnxruntime keeps those convs in float and runs the Q/DQ ops on top.
  ``onnxruntime.quantization.quantize_static`` writes onnxruntime's placement (Q/DQ around every op, uint8
  activations), which becomes ``QLinearConv`` / ``QLinearSigmoid`` / ``QLinearMul`` chains.
- **Width.** An int8 conv does the same multiply-adds with 4× denser instructions (AVX-512 VNNI), but every
  layer also pays for requantisation and layout changes, which scale with the activations, not with the
  arithmetic. With a few channels per layer that overhead cancels the saving; at YOLOv7's real widths
  (32–1024 channels) the arithmetic dominates.

So the lesson times both the course's trained 1/8-width detector and the full-width YOLOv7 graph. Kernel
speed does not depend on the weight values, so the full-width model needs no training: without official
weights its BatchNorm statistics are recomputed on the calibration images (:func:`recalibrate_bn`) so that
every layer sees activations of a realistic scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import bench
from course_lib.ptq import onnx_utils as OX
from course_lib.ptq import pq

FP32, PQ_QDQ, ORT_QDQ = "fp32", "pytorch-quantization Q/DQ", "onnxruntime static Q/DQ"


def resize_batches(batches: Iterable[torch.Tensor], img_size: int) -> list[torch.Tensor]:
    """Float image batches (B, 3, H, W) resized (bilinear) to ``img_size`` × ``img_size``."""
    out = []
    for b in batches:
        if b.ndim != 4 or b.shape[1] != 3:
            raise ValueError(f"expected image batches of shape (B, 3, H, W), got {tuple(b.shape)}")
        out.append(b if b.shape[-2:] == (img_size, img_size)
                   else F.interpolate(b, size=(img_size, img_size), mode="bilinear", align_corners=False))
    if not out:
        raise ValueError("got zero batches: pass a non-empty list of calibration batches")
    return out


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Sequence[torch.Tensor]) -> nn.Module:
    """Recompute every BatchNorm's running mean/var on ``batches`` (cumulative average), then eval mode.

    For an untrained model used only for timing: freshly initialised BatchNorms (mean 0, var 1) let the
    activations shrink or grow layer after layer; with statistics from real images each conv output is
    normalised, as in a trained network.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        raise ValueError("the model has no BatchNorm2d left (already fused?): recalibrate before fuse()")
    if not batches:
        raise ValueError("got zero batches: pass a non-empty list of calibration batches")
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all batches
    model.train()
    try:
        for b in batches:
            model(b)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.eval()
    return model


def conv_stats(model: nn.Module, img_size: int) -> dict:
    """Number of convs, giga multiply-adds per image, and the median / max output channels of the convs."""
    macs, chans = [], []

    def hook(mod, inp, out):
        k = mod.weight[0].numel()  # (in / groups) · kh · kw
        macs.append(out.numel() * k)
        chans.append(mod.out_channels)

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, img_size, img_size))
    finally:
        for h in hs:
            h.remove()
        model.train(was_training)
    return {"convs": len(chans), "GMAC/img": sum(macs) / 1e9, "median channels": float(np.median(chans)),
            "max channels": int(max(chans))}


def export_variants(fused: nn.Module, calib: Sequence[torch.Tensor], out_dir: str | Path, stem: str, img_size: int,
                    keep_float: Iterable[str] = (), float_modules: Iterable[str] = (),
                    ort_method: str = OX.ORT_CALIB_METHOD) -> dict[str, Path]:
    """Three ONNX files of one fused model: fp32, pytorch-quantization Q/DQ and onnxruntime static Q/DQ.

    The pytorch-quantization file uses max calibration (per-channel weights, per-tensor inputs); the
    onnxruntime file uses ``quantize_static`` with ``ort_method`` (the same default as
    :func:`~course_lib.ptq.onnx_utils.ort_quantize_static`). ``keep_float`` convs stay float in both;
    ``float_modules`` (e.g. the detection head) stay float in the onnxruntime file, whose placement would
    otherwise quantize the box-decoding tail too. ``calib`` is resized to ``img_size``.
    """
    out_dir = Path(out_dir)
    calib = resize_batches(calib, img_size)
    keep_float = tuple(keep_float)
    paths = {FP32: OX.export_onnx(fused, out_dir / f"{stem}_fp32.onnx", img_size=img_size)}
    q = pq.quantize_model(fused, "max", skip=keep_float)
    pq.calibrate(q, calib, "max")
    paths[PQ_QDQ] = OX.export_onnx(q, out_dir / f"{stem}_int8_pq.onnx", img_size=img_size)
    paths[ORT_QDQ] = OX.ort_quantize_static(paths[FP32], out_dir / f"{stem}_int8_ort.onnx", calib,
                                            keep_float=keep_float, float_modules=tuple(float_modules), method=ort_method)
    return paths


def benchmark_onnx(paths: dict[str, Path], image: np.ndarray | torch.Tensor, batches: Iterable[int] = (1, 8),
                   threads: int = 1, warmup: int = 3, repeat: int = 20, label: str = ""):
    """Time each ONNX file on onnxruntime's CPU EP at each batch size (``image`` repeated).

    Returns a DataFrame (one row per file × batch) with the ``bench`` columns plus ``variant``, ``batch``,
    ``speedup`` (fp32 median / this median at the same batch; needs an ``"fp32"`` entry), its spread
    ``speedup lo`` / ``speedup hi`` (fp32 min / this p90, fp32 p90 / this min: when the interval contains 1,
    the direction can flip from run to run) and the number of
    integer (``QLinearConv``) and float (``Conv``) convolutions in the graph onnxruntime actually runs.
    """
    if FP32 not in paths:
        raise ValueError(f"paths needs an {FP32!r} entry to compare against, got {sorted(paths)}")
    img = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    if img.ndim == 3:
        img = img[None]
    if img.ndim != 4 or img.shape[:2] != (1, 3):
        raise ValueError(f"image must be (3, H, W) or (1, 3, H, W), got {img.shape}")
    sessions = {k: OX.ort_session(p, threads=threads) for k, p in paths.items()}
    convs = {k: OX.optimized_op_counts(p) for k, p in paths.items()}
    rows = []
    for bs in batches:
        xb = np.ascontiguousarray(np.repeat(img, bs, 0).astype(np.float32))
        for name, sess in sessions.items():
            r = bench.benchmark(lambda s=sess, x=xb: s.run(None, {"images": x}), name=f"{label}{name} bs{bs}".strip(),
                                items=bs, unit="img", warmup=warmup, repeat=repeat, device="cpu",
                                extra={"variant": name, "batch": bs})
            rows.append(r)
    df = bench.to_frame(rows)
    df["times_ms"] = [[t * 1e3 for t in r.times_s] for r in rows]  # every timed run: what a comparison's spread comes from
    base = df[df.variant == FP32].set_index("batch")["median_ms"]
    df["speedup"] = [base[b] / m for b, m in zip(df.batch, df.median_ms)]
    # the spread of that ratio: fp32's fastest over this file's p90, fp32's p90 over this file's fastest
    fmin = df[df.variant == FP32].set_index("batch")["min_ms"]
    fp90 = df[df.variant == FP32].set_index("batch")["p90_ms"]
    df["speedup lo"] = [fmin[b] / p for b, p in zip(df.batch, df.p90_ms)]
    df["speedup hi"] = [fp90[b] / m for b, m in zip(df.batch, df.min_ms)]
    df["int8 convs"] = [convs[v]["QLinearConv"] for v in df.variant]
    df["float convs"] = [convs[v]["Conv"] for v in df.variant]
    return df


def qdq_parameter_bytes(path: str | Path) -> dict:
    """Where an ONNX file keeps its Q/DQ scales and zero points: tensor count and bytes by source (notebook 05).

    Sources: ``initializer`` (the graph's stored tensors, what :func:`onnx_utils.initializer_bytes` counts),
    ``Constant node`` (a tensor inside a node of the graph, which the TorchScript exporter writes for
    ``fake_quantize_*`` scales), or ``computed`` (the output of another op).
    """
    from course_lib.ptq import require

    onnx = require("onnx")
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t).nbytes for t in g.initializer}
    consts = {n.output[0]: numpy_helper.to_array(a.t).nbytes for n in g.node if n.op_type == "Constant"
              for a in n.attribute if a.name == "value"}
    names = {i for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for i in n.input[1:] if i}
    out = {src: {"tensors": 0, "bytes": 0} for src in ("initializer", "Constant node", "computed")}
    for name in names:
        src, nbytes = (("initializer", inits[name]) if name in inits else
                       ("Constant node", consts[name]) if name in consts else ("computed", 0))
        out[src]["tensors"] += 1
        out[src]["bytes"] += int(nbytes)
    return out


def verdict(lo: float, hi: float) -> str:
    """Words for a speed-up whose spread is [lo, hi]: faster / slower in every timed run, or within the noise."""
    if lo > 1:
        return "faster"
    if hi < 1:
        return "slower"
    return "within the timing noise (the direction can flip from run to run)"


def speedups(df, variant: str = ORT_QDQ) -> dict[int, float]:
    """{batch: speed-up over fp32} for one variant of a :func:`benchmark_onnx` frame."""
    sub = df[df.variant == variant]
    if sub.empty:
        raise ValueError(f"no rows for variant {variant!r}; have {sorted(set(df.variant))}")
    return {int(b): float(s) for b, s in zip(sub.batch, sub.speedup)}
