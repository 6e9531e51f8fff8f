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


# Sample counts chosen so that percentile / 100 × count is never within 0.05 of a whole number for the checked
# percentiles: then an exact integer CDF (np.cumsum(counts) against p / 100 × total) and the library's float CDF pick
# the same bin, and no right answer depends on how a tie at a bin edge is rounded (see test_exercises_l5.py).
PERCENTILES = (99.0, 99.5, 99.9, 99.99)
_SIZES = {"normal": 20910, "Student-t (heavy tail)": 20910, "SiLU outputs": 20910, "uniform + one outlier": 5334}


def _distributions():
    g = torch.Generator().manual_seed(5)
    normal = torch.randn(_SIZES["normal"], generator=g)
    heavy = torch.distributions.StudentT(2.0).sample((_SIZES["Student-t (heavy tail)"],))
    silu = torch.nn.functional.silu(3 * torch.randn(_SIZES["SiLU outputs"], generator=g))
    outlier = torch.cat([torch.rand(_SIZES["uniform + one outlier"] - 1, generator=g), torch.tensor([80.0])])
    return {"normal": normal, "Student-t (heavy tail)": heavy, "SiLU outputs": silu, "uniform + one outlier": outlier}


@exercises.register("05.percentile_amax", "implement", "Percentile amax from a calibration histogram")
def check_percentile_amax(fn) -> None:
    """``fn(counts, edges, percentile)`` must return the amax pytorch-quantization's percentile calibrator picks.

    Float CDF (``np.cumsum(counts / counts.sum())``) and exact integer CDF implementations are both accepted: the test
    histograms never put percentile / 100 of the count exactly on a bin boundary."""
    for name, x in _distributions().items():
        cal, counts, edges = _library_histogram(x)
        total = int(counts.sum())
        for p in PERCENTILES:
            want = float(cal.compute_amax("percentile", percentile=p))
            c_in, e_in = counts.copy(), edges.copy()
            got = call(fn, c_in, e_in, p)
            expect(np.array_equal(c_in, counts) and np.array_equal(e_in, edges),
                   "percentile_amax changed the histogram it was given (in place): compute on a copy")
            try:
                got = float(exercises._scalar(got))
            except (TypeError, ValueError):
                raise ExerciseFailed(f"expected one number (the amax), got {type(got).__name__}") from None
            if np.isclose(got, want, rtol=1e-6, atol=0):
                continue
            idx = int(np.searchsorted(np.cumsum(counts), p / 100 * total))
            a, b = exercises.fmt_pair(got, want)
            where = f"{name}, percentile {p}"
            if idx + 1 < len(edges) and np.isclose(got, edges[idx + 1], rtol=1e-6):
                raise ExerciseFailed(
                    f"{where}: you returned {a}, one bin too high (edges[idx + 1], the bin's upper edge); the library "
                    f"returns edges[idx] = {b}, idx = np.searchsorted(cdf, p / 100) — the off-by-one between bins and "
                    "edges (there is one more edge than bins)")
            if idx > 0 and np.isclose(got, edges[idx - 1], rtol=1e-6):
                raise ExerciseFailed(f"{where}: you returned {a}, one bin too low (edges[idx - 1]); expected edges[idx] "
                                     f"= {b} with idx = np.searchsorted(cdf, p / 100)")
            if np.isclose(got, edges[-1], rtol=1e-6) or np.isclose(got, edges[-2], rtol=1e-6):
                raise ExerciseFailed(f"{where}: you returned {a}, the top of the histogram: the percentile is in "
                                     f"percent and the CDF in fractions — search for percentile / 100 (expected {b})")
            if np.isclose(got, np.percentile(x.abs().numpy(), p), rtol=1e-3) or np.isclose(got, np.percentile(x.numpy(), p), rtol=1e-3):
                raise ExerciseFailed(f"{where}: you returned {a}, the percentile of the raw values; the calibrator only "
                                     f"keeps the histogram, and returns a bin EDGE: expected {b}")
            idx_100 = int(np.searchsorted(np.cumsum(counts), (1 - p / 100) * total))
            if np.isclose(got, edges[min(idx_100, len(edges) - 1)], rtol=1e-6):
                raise ExerciseFailed(f"{where}: you returned {a}, the (100 − p)th percentile: the amax keeps p % of the "
                                     f"values BELOW it (expected {b})")
            raise ExerciseFailed(f"{where}: you returned {a}, pytorch-quantization picks {b} (the first edge where the "
                                 "cumulative share of the counts reaches percentile / 100)")


# ----------------------------------------------------------------------------------------- 05.fold_bn
@exercises.register("05.fold_bn", "implement", "Fold a BatchNorm into the conv before it")
def check_fold_bn(fn) -> None:
    """``fn(weight, bias, bn)`` → (weight', bias') with conv'(x) == bn(conv(x)) in eval mode; bias may be None.

    Compared in float64 (so float32 and float64 answers are both accepted); the BatchNorm and the tensors passed in
    must be left unmodified (the real model still uses them)."""
    from torch import nn

    torch.manual_seed(0)
    for cin, cout, k, has_bias, eps in [(3, 8, 3, True, 1e-5), (8, 4, 1, False, 1e-3), (4, 16, 3, False, 0.1),
                                        (2, 6, 3, True, 0.5)]:
        conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=has_bias)
        bn = nn.BatchNorm2d(cout, eps=eps)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-1, 1)
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.05, 3.0)  # variances far from 1 tell sqrt(var) from var
        bn.eval()
        before = {k_: v.detach().clone() for k_, v in bn.state_dict().items()}
        x = torch.randn(2, cin, 9, 9)
        with torch.no_grad():
            ref = bn(conv(x)).double()
            w_in = conv.weight.detach().clone()
            b_in = None if conv.bias is None else conv.bias.detach().clone()
            out = call(fn, w_in, b_in, bn)
        case = f"conv {cin}→{cout}, k={k}, bias={has_bias}, eps={eps}"
        changed = [k_ for k_, v in bn.state_dict().items() if not torch.equal(v, before[k_])]
        expect(not changed, f"{case}: fold_bn modified the BatchNorm in place ({', '.join(changed)}): the model still "
                            "holds it — compute new tensors (weight * scale, not weight.mul_(scale))")
        expect(bool(torch.equal(w_in, conv.weight.detach())) and (b_in is None or torch.equal(b_in, conv.bias.detach())),
               f"{case}: fold_bn modified the conv weight or bias it was given in place: return new tensors "
               "(weight * scale, not weight.mul_(scale)) — the caller may still need the originals")
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ExerciseFailed(f"return a pair (weight, bias), got {type(out).__name__}")
        w, b = out
        expect(torch.is_tensor(w) and w.shape == conv.weight.shape,
               f"the folded weight must have the conv's shape {tuple(conv.weight.shape)}, got "
               f"{tuple(w.shape) if torch.is_tensor(w) else type(w).__name__}")
        expect(torch.is_tensor(b) and tuple(b.shape) == (cout,),
               f"the folded bias must be a tensor of shape ({cout},) — also when the conv had no bias, got "
               f"{tuple(b.shape) if torch.is_tensor(b) else type(b).__name__}")
        expect(w.is_floating_point() and b.is_floating_point(), f"the folded weight and bias must be float tensors, got "
                                                                f"{w.dtype} and {b.dtype}")
        w, b = w.detach().double(), b.detach().double()
        with torch.no_grad():
            got = nn.functional.conv2d(x.double(), w, b, padding=k // 2)
        err = float((got - ref).abs().max())
        if err < 1e-4:  # float32 folding + float32 conv vs float64: ~1e-6 here
            continue
        g, v = bn.weight.detach().double(), bn.running_var.double()
        mu, beta = bn.running_mean.double(), bn.bias.detach().double()
        cw = conv.weight.detach().double()
        cb = torch.zeros(cout, dtype=torch.float64) if conv.bias is None else conv.bias.detach().double()
        close = lambda a, c: torch.allclose(a, c, rtol=1e-5, atol=1e-5)  # noqa: E731
        w_ok = cw * (g / (v + eps).sqrt()).view(-1, 1, 1, 1)
        if close(w, w_ok):
            sigma = (v + eps).sqrt()
            if close(b, beta + (cb - mu) / sigma):
                why = "the (b − μ) term is also multiplied by γ: b' = β + (b − μ)·γ/σ"
            elif close(b, beta - mu * g / sigma) and conv.bias is not None:
                why = "the conv's own bias is missing: b' = β + (b − μ)·γ/σ"
            elif close(b, beta + (cb + mu) * g / sigma):
                why = "the sign of μ: BatchNorm subtracts the running mean, b' = β + (b − μ)·γ/σ"
            elif close(b, (cb - mu) * g / sigma):
                why = "β (bn.bias) is missing: b' = β + (b − μ)·γ/σ"
            else:
                why = "b' = β + (b − μ)·γ/σ, with b = 0 when the conv has no bias"
            raise ExerciseFailed(f"{case}: the weight is right but the bias is not (max output error {err:.3g}): {why}")
        if close(w, cw * (g / (v + eps)).view(-1, 1, 1, 1)):
            raise ExerciseFailed(f"{case}: the weight is scaled by γ / (var + eps): the missing sqrt — BatchNorm divides "
                                 "by the standard deviation σ = sqrt(var + eps)")
        if close(w, cw * (g / v.sqrt()).view(-1, 1, 1, 1)):
            raise ExerciseFailed(f"{case}: σ is sqrt(var + eps), not sqrt(var): BatchNorm adds eps before the square root")
        if close(w, cw * ((v + eps).sqrt() / g).view(-1, 1, 1, 1)):
            raise ExerciseFailed(f"{case}: the weight is scaled by σ / γ, upside down: W' = W · γ / σ")
        raise ExerciseFailed(f"{case}: bn(conv(x)) and the folded conv differ by up to {err:.3g}: W' = W·γ/σ per "
                             "output channel, σ = sqrt(var + eps)")


# ----------------------------------------------------------------------------------------- 05.int8_weight_bytes
@exercises.register("05.int8_weight_bytes", "predict", "Predict the weight bytes of the int8 Q/DQ ONNX file")
def check_int8_weight_bytes(answer, measured: int | None = None, n_params: int | None = None) -> None:
    """Bytes of the initializers (weights, biases) stored in pytorch-quantization's int8 ONNX file, within 2 %.

    (Not exact: a few parameters the fused graph no longer uses are not exported.)
    """
    a = exercises.as_int(answer, "the initializer bytes")
    if measured is None:
        raise ExerciseFailed("pass measured= (the initializer bytes counted in the file)")
    if n_params is not None and abs(a - n_params) <= 0.02 * n_params:
        raise ExerciseFailed(f"you predicted {a:,} bytes, about one byte per parameter — what an int8 engine needs. "
                             f"The Q/DQ file stores the *float32* weights ({measured:,} bytes) and QuantizeLinear nodes "
                             "with the scales: the runtime (TensorRT) quantizes them when it builds its engine")
    if n_params is not None and abs(a - 2 * n_params) <= 0.02 * 2 * n_params:
        raise ExerciseFailed(f"you predicted {a:,} bytes, 2 bytes per parameter (fp16): this export keeps the model's "
                             f"float32 weights, 4 bytes each ({measured:,} bytes in the file)")
    if n_params is not None and abs(a - n_params / 2) <= 0.02 * n_params / 2:
        raise ExerciseFailed(f"you predicted {a:,} bytes, half a byte per parameter (int4): the Q/DQ file keeps float32 "
                             f"weights, 4 bytes each ({measured:,} bytes in the file)")
    if n_params is not None and abs(a - 4 * n_params / 2**20) <= 0.02 * 4 * n_params / 2**20:
        raise ExerciseFailed(f"you predicted {a:,}: that is in MiB; the question asks for bytes")
    if abs(a - measured / 4) <= 0.02 * measured:
        raise ExerciseFailed(f"you predicted {a:,} bytes, a quarter of the file's {measured:,}: the Q/DQ file keeps "
                             "float32 weights (4 bytes each); only onnxruntime's static file stores int8 initializers")
    # ±2 %: 4 × num_params() is the whole arithmetic; the file differs from it only by the few parameters the fused
    # graph no longer uses (not exported) — under 1 % here, while a wrong bytes-per-weight is at least 50 % off
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
    n = exercises.as_int(n_batches, "the number of batches")
    expect(1 <= n < len(batches), f"pick between 1 and {len(batches) - 1} batches (fewer than the {len(batches)} the "
                                  "lesson used), so there is something to compare")
    calib_method = "max" if method == "max" else "histogram"
    q = pq.calibrate(pq.quantize_model(copy.deepcopy(model), calib_method), list(batches)[:n], method,
                     percentile=percentile, stride=stride)
    want = float(score_fn(q))
    s = exercises.as_number(score, "the mAP")
    # the re-scoring is deterministic; ±5e-4 accepts a mAP typed with 3 decimals, far below what a batch count moves it
    expect(abs(s - want) <= 5e-4, f"calibrating with {method} on {n} batch(es) scores {want:.4f} here, you reported "
                                  f"{s:.4f}: calibrate a fresh quantize_model(fused, ...) copy on calib_batches[:{n}] "
                                  f"with method {method!r} and score it on the selection split")
