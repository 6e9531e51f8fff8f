"""Checks for the exercises of ``05_yolov7_ptq.ipynb`` (calibration, BatchNorm folding, the Q/DQ graph).

Each check tries several inputs, compares with pytorch-quantization / torch where the lesson uses them,
and names the typical mistake when it recognises one.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from course_lib import exercises
from course_lib.exercises import ExerciseFailed, call, expect


# ----------------------------------------------------------------------------------------- 05.percentile_amax
def _library_histogram(x: torch.Tensor):
    """(counts, bin edges, the library's percentile calibrator) after collecting ``x`` like an input quantizer."""
    from pytorch_quantization.calib import HistogramCalibrator

    cal = HistogramCalibrator(num_bits=8, axis=None, unsigned=False)
    cal.collect(x)
    # the integer counts and float edges the library's compute_amax works on
    return cal, cal._calib_hist.int().cpu().numpy(), cal._calib_bin_edges.cpu().numpy()


def _distributions():
    g = torch.Generator().manual_seed(5)
    normal = torch.randn(20000, generator=g)
    heavy = torch.distributions.StudentT(2.0).sample((20000,))
    silu = torch.nn.functional.silu(3 * torch.randn(20000, generator=g))
    outlier = torch.cat([torch.rand(5000, generator=g), torch.tensor([80.0])])  # one huge value
    return {"normal": normal, "Student-t (heavy tail)": heavy, "SiLU outputs": silu, "uniform + one outlier": outlier}


@exercises.register("05.percentile_amax", "implement", "Percentile amax from a calibration histogram")
def check_percentile_amax(fn) -> None:
    """``fn(counts, edges, percentile)`` must return the amax pytorch-quantization's percentile calibrator picks."""
    for name, x in _distributions().items():
        cal, counts, edges = _library_histogram(x)
        for p in (99.0, 99.9, 99.99, 100.0):
            want = float(cal.compute_amax("percentile", percentile=p))
            got = call(fn, counts.copy(), edges.copy(), p)
            try:
                got = float(got)
            except (TypeError, ValueError):
                raise ExerciseFailed(f"expected a number (the amax), got {type(got).__name__}") from None
            if np.isclose(got, want, rtol=1e-6):
                continue
            cdf = np.cumsum(counts / counts.sum())
            idx = int(np.searchsorted(cdf, p / 100))
            if idx + 1 < len(edges) and np.isclose(got, edges[idx + 1], rtol=1e-6):
                raise ExerciseFailed(
                    f"{name}, percentile {p}: you returned {got:.5g}, one bin too high (edges[idx + 1], the bin's "
                    f"upper edge); the library returns edges[idx] = {want:.5g}, idx = np.searchsorted(cdf, p / 100) — "
                    "the off-by-one between bins and edges (there is one more edge than bins)")
            if idx > 0 and np.isclose(got, edges[idx - 1], rtol=1e-6):
                raise ExerciseFailed(f"{name}, percentile {p}: you returned {got:.5g}, one bin too low (edges[idx - 1]); "
                                     f"expected edges[idx] = {want:.5g} with idx = np.searchsorted(cdf, p / 100)")
            raise ExerciseFailed(f"{name}, percentile {p}: you returned {got:.5g}, pytorch-quantization picks "
                                 f"{want:.5g} (cumulative share of the counts, then the first edge where it reaches "
                                 "percentile / 100 — the percentile is in percent, the CDF in fractions)")


# ----------------------------------------------------------------------------------------- 05.fold_bn
@exercises.register("05.fold_bn", "implement", "Fold a BatchNorm into the conv before it")
def check_fold_bn(fn) -> None:
    """``fn(weight, bias, bn)`` → (weight', bias') with conv'(x) == bn(conv(x)) in eval mode; bias may be None."""
    from torch import nn

    torch.manual_seed(0)
    for cin, cout, k, has_bias, eps in [(3, 8, 3, True, 1e-5), (8, 4, 1, False, 1e-3), (4, 16, 3, False, 0.1)]:
        conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=has_bias)
        bn = nn.BatchNorm2d(cout, eps=eps)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1, 1)
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.05, 3.0)  # variances far from 1 tell sqrt(var) from var
        bn.eval()
        x = torch.randn(2, cin, 9, 9)
        with torch.no_grad():
            ref = bn(conv(x))
            out = call(fn, conv.weight.detach().clone(), None if conv.bias is None else conv.bias.detach().clone(), bn)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ExerciseFailed(f"return a pair (weight, bias), got {type(out).__name__}")
        w, b = out
        expect(torch.is_tensor(w) and w.shape == conv.weight.shape,
               f"the folded weight must have the conv's shape {tuple(conv.weight.shape)}, got "
               f"{tuple(w.shape) if torch.is_tensor(w) else type(w).__name__}")
        expect(torch.is_tensor(b) and b.shape == (cout,),
               f"the folded bias must be a tensor of shape ({cout},) — also when the conv had no bias")
        with torch.no_grad():
            got = nn.functional.conv2d(x, w, b, padding=k // 2)
        err = float((got - ref).abs().max())
        if err < 1e-4:
            continue
        g, v = bn.weight.detach(), bn.running_var
        w_no_sqrt = conv.weight.detach() * (g / (v + eps)).view(-1, 1, 1, 1)
        if torch.allclose(w, w_no_sqrt, atol=1e-5):
            raise ExerciseFailed("the weight is scaled by γ / (var + eps): the missing sqrt — BatchNorm divides by the "
                                 "standard deviation σ = sqrt(var + eps)")
        w_no_eps = conv.weight.detach() * (g / v.sqrt()).view(-1, 1, 1, 1)
        if eps >= 1e-3 and torch.allclose(w, w_no_eps, atol=1e-5):
            raise ExerciseFailed("σ is sqrt(var + eps), not sqrt(var): BatchNorm adds eps before the square root")
        w_ok = conv.weight.detach() * (g / (v + eps).sqrt()).view(-1, 1, 1, 1)
        if torch.allclose(w, w_ok, atol=1e-5):
            raise ExerciseFailed(f"the weight is right but the bias is not (max output error {err:.3g}): "
                                 "b' = β + (b − μ)·γ/σ, with b = 0 when the conv has no bias")
        raise ExerciseFailed(f"bn(conv(x)) and the folded conv differ by up to {err:.3g} (conv {cin}→{cout}, k={k}, "
                             f"bias={has_bias}, eps={eps}): W' = W·γ/σ per output channel")


# ----------------------------------------------------------------------------------------- 05.int8_weight_bytes
@exercises.register("05.int8_weight_bytes", "predict", "Predict the weight bytes of the int8 Q/DQ ONNX file")
def check_int8_weight_bytes(answer, measured: int | None = None, n_params: int | None = None) -> None:
    """Bytes of the initializers (weights, biases) stored in pytorch-quantization's int8 ONNX file, within 2 %.

    (Not exact: a few parameters the fused graph no longer uses are not exported.)
    """
    exercises.answered(answer)
    try:
        a = int(answer)
    except (TypeError, ValueError):
        raise ExerciseFailed(f"expected a whole number of bytes, got {answer!r}") from None
    if measured is None:
        raise ExerciseFailed("pass measured= (the initializer bytes counted in the file)")
    if n_params is not None and abs(a - n_params) <= 0.02 * n_params:
        raise ExerciseFailed(f"you predicted {a:,} bytes, about one byte per parameter — what an int8 engine needs. "
                             f"The Q/DQ file stores the *float32* weights ({measured:,} bytes) and QuantizeLinear nodes "
                             "with the scales: the runtime (TensorRT) quantizes them when it builds its engine")
    if abs(a - measured / 4) <= 0.02 * measured:
        raise ExerciseFailed(f"you predicted {a:,} bytes, a quarter of the file's {measured:,}: the Q/DQ file keeps "
                             "float32 weights (4 bytes each); only onnxruntime's static file stores int8 initializers")
    exercises.within(a, measured, 0.02, "initializer bytes of the int8 Q/DQ file (count the parameters and the bytes "
                     "each is stored with)", "bytes")


# ----------------------------------------------------------------------------------------- 05.calib_batches
@exercises.register("05.calib_batches", "explore", "Calibrate on fewer batches and measure the mAP it costs")
def check_calib_batches(n_batches, score, *, model=None, batches=None, method: str = "percentile",
                        score_fn=None, percentile: float = 99.99, stride: int = 4) -> None:
    """Recalibrate ``model`` (the float model) on the first ``n_batches`` of ``batches`` and re-score it.

    Passes when ``n_batches`` is fewer than all batches and ``score`` is what that calibration really scores
    (to 1e-4): the learner's number must come from their own run.
    """
    from course_lib.ptq import pq

    exercises.answered(n_batches, score)
    if model is None or batches is None or score_fn is None:
        raise ExerciseFailed("pass model=, batches= and score_fn= (the check recalibrates to verify your number)")
    try:
        n = int(n_batches)
    except (TypeError, ValueError):
        raise ExerciseFailed(f"the number of batches must be a whole number, got {n_batches!r}") from None
    expect(1 <= n < len(batches), f"pick between 1 and {len(batches) - 1} batches (fewer than the {len(batches)} the "
                                  "lesson used), so there is something to compare")
    calib_method = "max" if method == "max" else "histogram"
    q = pq.calibrate(pq.quantize_model(copy.deepcopy(model), calib_method), list(batches)[:n], method,
                     percentile=percentile, stride=stride)
    want = float(score_fn(q))
    try:
        s = float(score)
    except (TypeError, ValueError):
        raise ExerciseFailed(f"the score must be a number, got {score!r}") from None
    expect(abs(s - want) <= 1e-4, f"calibrating with {method} on {n} batch(es) scores {want:.4f} here, you reported "
                                  f"{s:.4f}: calibrate a fresh quantize_model(fused, ...) copy on calib_batches[:{n}] "
                                  f"with method {method!r} and score it on the selection split")
