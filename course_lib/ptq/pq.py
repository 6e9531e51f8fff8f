"""Q/DQ insertion and calibration with NVIDIA's pytorch-quantization 2.1.3 (the library the lesson is about).

Introduced in ``05_yolov7_ptq.ipynb``. Two ways to put fake-quantizers into a model:

- automatic: :func:`auto_quantized` wraps ``quant_modules.initialize()`` / ``deactivate()``, which
  monkey-patches ``torch.nn.Conv2d`` (and friends) with ``QuantConv2d`` so any model *built inside the
  block* gets ``_input_quantizer`` / ``_weight_quantizer`` (``TensorQuantizer``) on every conv;
- manual: :func:`quantize_model` replaces the ``nn.Conv2d`` and ``nn.Linear`` modules of an existing (fused)
  model with ``QuantConv2d`` / ``QuantLinear`` carrying the ``QuantDescriptor`` s you choose.

Calibration (:func:`calibrate`) runs float batches through the model with quantization off and the
calibrators on, then turns the collected statistics into ``amax`` (max, or histogram → percentile /
mse / entropy). CPU workarounds for the library's two hard-coded ``.cuda()`` calls are here and
marked ``CPU WORKAROUND``. The library logs one absl warning per quantizer while it calibrates ("Load calibrated
amax…"); this module's functions keep those quiet for their own call (:func:`quiet_absl`; :func:`quiet_logs` for
the whole session).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterable

import torch
from torch import nn

from course_lib.ptq import require

METHODS = ("max", "percentile", "mse", "entropy")


def _pq():
    return require("pytorch_quantization", "pytorch-quantization 2.1.3")


def _quant_nn():
    _pq()
    from pytorch_quantization import nn as quant_nn

    return quant_nn


def descriptors(calib_method: str = "max", per_channel_weights: bool = True, num_bits: int = 8):
    """(input QuantDescriptor, weight QuantDescriptor): per-tensor inputs, per-channel (axis 0) weights.

    ``calib_method`` is the *input* calibrator: ``"max"`` or ``"histogram"`` (weights always use max).
    """
    _pq()
    from pytorch_quantization.tensor_quant import QuantDescriptor

    if calib_method not in ("max", "histogram"):
        raise ValueError(f"calib_method must be 'max' or 'histogram', got {calib_method!r}")
    inp = QuantDescriptor(num_bits=num_bits, calib_method=calib_method)
    w = QuantDescriptor(num_bits=num_bits, axis=(0,) if per_channel_weights else None)
    return inp, w


@contextlib.contextmanager
def auto_quantized(calib_method: str = "max", float_module_list=None, custom_quant_modules=None):
    """Inside this block ``torch.nn.Conv2d`` *is* ``QuantConv2d`` (and ``nn.Linear`` ``QuantLinear``, …)
    (``quant_modules.initialize()``); restored after.

    Conv2d and Linear layers built inside get :func:`descriptors` (``calib_method`` inputs, per-channel weights).
    ``custom_quant_modules`` is pytorch-quantization's list of ``(module, "ClassName", QuantClass)``.
    """
    _pq()
    from pytorch_quantization import quant_modules

    quant_nn = _quant_nn()
    inp, w = descriptors(calib_method)
    classes = (quant_nn.QuantConv2d, quant_nn.QuantLinear)
    old = [(c, c.default_quant_desc_input, c.default_quant_desc_weight) for c in classes]
    for c in classes:
        c.set_default_quant_desc_input(inp)
        c.set_default_quant_desc_weight(w)
    quant_modules.initialize(float_module_list=float_module_list, custom_quant_modules=custom_quant_modules)
    try:
        yield
    finally:
        quant_modules.deactivate()
        for c, old_in, old_w in old:
            c.set_default_quant_desc_input(old_in)
            c.set_default_quant_desc_weight(old_w)


QUANTIZED_TYPES = (nn.Conv2d, nn.Linear)  # what quantize_model replaces by default


def quantize_model(model: nn.Module, calib_method: str = "max", skip: Iterable[str] = (), inplace: bool = False,
                   per_channel_weights: bool = True, types: tuple = QUANTIZED_TYPES) -> nn.Module:
    """Manual insertion: replace every ``nn.Conv2d`` and ``nn.Linear`` (except names in ``skip``) with a ``QuantConv2d`` / ``QuantLinear`` sharing its weights.

    Inputs get a per-tensor quantizer calibrated with ``calib_method`` ("max" or "histogram"), weights a
    per-output-channel max quantizer — the scheme TensorRT runs in int8. ``types`` picks the layer classes
    (``(nn.Conv2d,)`` for convolutions only). Returns the (copied) model.
    """
    quant_nn = _quant_nn()
    if not inplace:
        model = copy.deepcopy(model)
    inp, w = descriptors(calib_method, per_channel_weights)
    skip = set(skip)
    unknown = [t for t in types if t not in QUANTIZED_TYPES]
    if unknown:
        raise ValueError(f"types: only {[t.__name__ for t in QUANTIZED_TYPES]} are supported, got {unknown}")
    for name, mod in list(model.named_modules()):
        for cname, child in list(mod.named_children()):
            full = f"{name}.{cname}" if name else cname
            if full in skip or type(child) not in types:
                continue
            if type(child) is nn.Conv2d:
                q = quant_nn.QuantConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                         child.padding, child.dilation, child.groups, child.bias is not None,
                                         child.padding_mode, quant_desc_input=inp, quant_desc_weight=w)
            else:  # nn.Linear
                q = quant_nn.QuantLinear(child.in_features, child.out_features, child.bias is not None,
                                         quant_desc_input=inp, quant_desc_weight=w)
            q.weight = child.weight
            if child.bias is not None:
                q.bias = child.bias
            setattr(mod, cname, q)
    return model


def quant_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{name: module} of every module that owns TensorQuantizers (``QuantConv2d`` etc.), in model order."""
    quant_nn = _quant_nn()
    return {n: m for n, m in model.named_modules()
            if any(isinstance(c, quant_nn.TensorQuantizer) for c in m.children())}


def quantizers(model: nn.Module) -> dict[str, nn.Module]:
    """{name: TensorQuantizer} of the model."""
    quant_nn = _quant_nn()
    return {n: m for n, m in model.named_modules() if isinstance(m, quant_nn.TensorQuantizer)}


@contextlib.contextmanager
def cpu_mse_workaround():
    """CPU WORKAROUND: pytorch-quantization 2.1.3's ``_compute_amax_mse`` hard-codes ``.cuda()``.

    Inside this block the histogram module uses a CPU version of that function (same arithmetic,
    vectorised over the candidate amax values; tested against a literal port of the loop). Outside it,
    the library is untouched.
    """
    _pq()
    from pytorch_quantization.calib import histogram as H
    import numpy as np

    original = H._compute_amax_mse

    def _compute_amax_mse_cpu(calib_hist, calib_bin_edges, num_bits, unsigned, stride=1, start_bin=128):
        if calib_bin_edges is None and calib_hist is None:
            return None
        # The library moves the histogram to .cuda() (the only device-specific line) and then loops in
        # Python over every candidate amax (~1,900 fake-quant calls per quantizer: minutes on a CPU).
        # Same arithmetic, on the histogram's device and vectorised over the candidates:
        counts = torch.from_numpy(calib_hist[:]).float()
        edges = torch.from_numpy(calib_bin_edges[:]).float()
        centers = (edges[1:] + edges[:-1]) / 2
        idx = torch.arange(start_bin, len(centers), stride)
        if idx.numel() == 0:
            return None
        amax = centers[idx].view(-1, 1)  # (K, 1) candidate amax values
        max_bound = 2.0 ** (num_bits - 1 + int(unsigned)) - 1.0
        min_bound = 0.0 if unsigned else -max_bound  # narrow range, as fake_tensor_quant's default
        scale = max_bound / amax
        q = torch.clamp((centers.view(1, -1) * scale).round_(), min_bound, max_bound) / scale
        mses = (((q - centers.view(1, -1)) ** 2) * counts.view(1, -1)).mean(1)
        return centers[idx[int(np.argmin(mses.numpy()))]]

    H._compute_amax_mse = _compute_amax_mse_cpu
    try:
        yield
    finally:
        H._compute_amax_mse = original


def entropy_amax_fast(calib_hist, calib_bin_edges, num_bits: int = 8, unsigned: bool = False, stride: int = 1,
                      start_bin: int = 128):
    """pytorch-quantization's ``_compute_amax_entropy`` (TensorRT's KL-divergence calibration) with its inner loops vectorised.

    CPU SPEED-UP: the library runs two Python loops over every histogram bin for every candidate amax
    (~14 s per quantizer here, minutes per model); this port uses ``np.bincount`` for them and returns the
    same amax (tested against the library function).
    """
    import numpy as np

    if calib_bin_edges is None and calib_hist is None:
        return None
    bins = np.asarray(calib_hist[:]).copy()
    bins[0] = bins[1]
    nbins = 1 << (num_bits - 1 + int(unsigned))
    divergences = []
    tail = np.cumsum(bins[::-1])[::-1]  # tail[i] = sum(bins[i:])
    for i in range(start_bin, len(bins) + 1, stride):
        space = np.linspace(0, i, num=nbins + 1)
        d = np.digitize(np.arange(i), space) - 1
        nz = bins[:i] != 0
        sums = np.bincount(d[nz], weights=bins[:i][nz], minlength=nbins)
        cnt = np.bincount(d[nz], minlength=nbins)
        dens = np.divide(sums, cnt, out=np.zeros(nbins), where=cnt > 0)
        new_density = np.where(nz, dens[d], 0.0)
        reference = np.array(bins[:i], dtype=np.float64)
        if i < len(bins):
            reference[-1] += tail[i]
        pr, qr = reference / reference.sum(), new_density / new_density.sum()
        pos = pr > 0
        if (qr[pos] == 0).any():
            divergences.append(np.inf)
        else:  # scipy.stats.entropy(reference, new_density), without its per-call overhead
            divergences.append(float(np.sum(pr[pos] * np.log(pr[pos] / qr[pos]))))
    divergences = np.array(divergences)
    last_argmin = len(divergences) - 1 - np.argmin(divergences[::-1])
    return torch.tensor(calib_bin_edges[last_argmin * stride + start_bin].item())


@contextlib.contextmanager
def fast_entropy(histogram_module=None):
    """Inside this block the library's entropy calibration uses :func:`entropy_amax_fast` (same result, faster).

    ``histogram_module`` is the module holding ``_compute_amax_entropy`` (default: pytorch-quantization's
    ``calib.histogram``; ModelOpt's ``modelopt.torch.quantization.calib.histogram`` has the same function).
    """
    if histogram_module is None:
        _pq()
        from pytorch_quantization.calib import histogram as histogram_module
    original = histogram_module._compute_amax_entropy
    histogram_module._compute_amax_entropy = entropy_amax_fast
    try:
        yield
    finally:
        histogram_module._compute_amax_entropy = original


def collect_stats(model: nn.Module, batches: Iterable[torch.Tensor], tensor_quantizers: dict | None = None) -> int:
    """Feed float ``batches`` with quantization off and calibrators on; return the number of batches seen.

    ``tensor_quantizers`` ({name: TensorQuantizer}) defaults to the model's pytorch-quantization quantizers;
    ModelOpt's quantizers have the same ``disable_quant / enable_calib`` switches, so :mod:`.mo` passes its own.
    """
    qs = quantizers(model) if tensor_quantizers is None else dict(tensor_quantizers)
    if not qs:
        raise ValueError("the model has no TensorQuantizer: insert Q/DQ first (quantize_model or auto_quantized)")
    for q in qs.values():
        if q._calibrator is not None:
            q.disable_quant()
            q.enable_calib()
        else:
            q.disable()
    n = 0
    model.eval()
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
                n += 1
    finally:
        with quiet_absl():  # disable_calib() logs one "Disable MaxCalibrator" warning per quantizer
            for q in qs.values():
                if q._calibrator is not None:
                    q.enable_quant()
                    q.disable_calib()
                else:
                    q.enable()
    if n == 0:
        raise ValueError("calibration saw zero batches: pass a non-empty calibration set "
                         "(amax would stay unset, and a model with amax 0 quantizes everything to 0)")
    return n


def compute_amax(model: nn.Module, method: str = "max", percentile: float = 99.99, stride: int = 1,
                 fast: bool = True) -> None:
    """Turn collected statistics into ``amax`` for every quantizer (weights: max; inputs: ``method``).

    ``stride`` > 1 makes entropy/mse try every stride-th histogram bin as amax (faster, coarser);
    ``fast`` uses :func:`entropy_amax_fast` for entropy (same amax as the library, much faster on CPU).
    """
    _pq()
    from pytorch_quantization import calib

    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {METHODS}")
    ctx = contextlib.ExitStack()
    ctx.enter_context(quiet_absl())  # one "Load calibrated amax" warning per quantizer otherwise
    if method == "mse" and not torch.cuda.is_available():
        ctx.enter_context(cpu_mse_workaround())
    if method == "entropy" and fast:
        ctx.enter_context(fast_entropy())
    with ctx:
        for name, q in quantizers(model).items():
            if q._calibrator is None or q._disabled:
                continue
            if isinstance(q._calibrator, calib.MaxCalibrator):
                if method not in ("max",) and q._axis is None:
                    raise ValueError(f"{name} was calibrated with a max calibrator; method {method!r} needs "
                                     "quantize_model(..., calib_method='histogram')")
                q.load_calib_amax()
            else:
                if method == "max":
                    raise ValueError(f"{name} collected a histogram; method 'max' needs "
                                     "quantize_model(..., calib_method='max') (or pick percentile/mse/entropy)")
                kw = {"percentile": percentile} if method == "percentile" else {"stride": stride}
                q.load_calib_amax(method, **kw)


def calibrate(model: nn.Module, batches: Iterable[torch.Tensor], method: str = "max", percentile: float = 99.99,
              stride: int = 1) -> nn.Module:
    """Collect statistics on ``batches`` and load ``amax`` with ``method``; raises on an empty calibration set."""
    collect_stats(model, batches)
    compute_amax(model, method, percentile, stride)
    check_calibrated(model)
    return model


def check_calibrated(model: nn.Module) -> None:
    """Raise RuntimeError if an enabled quantizer has no ``amax`` (not calibrated), or a zero/NaN amax on any channel.

    A per-channel weight quantizer with amax 0 on one output channel (an all-zero filter, or a channel the
    data never reached) would divide by zero in that channel only, so one zero channel is reported too.
    """
    bad, zero = [], []
    for name, q in quantizers(model).items():
        if q._disabled:
            continue
        amax = getattr(q, "_amax", None)
        if amax is None:
            bad.append(name)
            continue
        n_bad = int((~torch.isfinite(amax) | (amax <= 0)).sum())
        if n_bad:
            where = "" if amax.numel() == 1 else f" ({n_bad} of {amax.numel()} channels)"
            zero.append(f"{name}{where}")
    if bad:
        raise RuntimeError(f"{len(bad)} quantizers have no amax (e.g. {bad[0]}): calibrate the model before "
                           "evaluating or exporting it (pq.calibrate(model, batches))")
    if zero:
        raise RuntimeError(f"{len(zero)} quantizers have a zero or NaN amax (e.g. {zero[0]}): the calibration data "
                           "did not reach them, or a weight channel is all zero")


def amax_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """{quantizer name: amax tensor} — a calibration you can save with torch.save and replay with :func:`load_amax`."""
    return {n: q._amax.detach().clone() for n, q in quantizers(model).items() if hasattr(q, "_amax")}


def load_amax(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Set saved amax values on a freshly quantized model, on its own device.

    CPU WORKAROUND: ``model.load_state_dict`` would call ``TensorQuantizer._load_from_state_dict``,
    which creates missing ``_amax`` buffers with ``.cuda()`` (fails without a GPU).
    """
    qs = quantizers(model)
    missing = set(state) - set(qs)  # (no absl logging here: the buffers are set directly)
    if missing:
        raise KeyError(f"amax for unknown quantizers: {sorted(missing)[:3]}")
    for name, amax in state.items():
        q = qs[name]
        if hasattr(q, "_amax"):
            q._amax.data = amax.clone()
        else:
            q.register_buffer("_amax", amax.clone())
    return model


def set_layers_quantized(model: nn.Module, names: Iterable[str], enabled: bool) -> None:
    """Enable or disable (keep in float) all quantizers of the named quant layers."""
    layers = quant_layers(model)
    for n in names:
        if n not in layers:
            raise KeyError(f"{n!r} is not a quantized layer (have e.g. {list(layers)[:3]})")
        for c in layers[n].children():
            if isinstance(c, _quant_nn().TensorQuantizer):
                c.enable() if enabled else c.disable()


def only_layers_quantized(model: nn.Module, names: Iterable[str]) -> None:
    """Quantize exactly the named layers; every other quant layer runs in float."""
    names = set(names)
    layers = quant_layers(model)
    set_layers_quantized(model, [n for n in layers if n not in names], False)
    set_layers_quantized(model, [n for n in layers if n in names], True)


@contextlib.contextmanager
def fb_fake_quant(enabled: bool = True):
    """Use torch's native ``fake_quantize_per_*_affine`` (ONNX-exportable as QuantizeLinear/DequantizeLinear)."""
    quant_nn = _quant_nn()
    old = quant_nn.TensorQuantizer.use_fb_fake_quant
    quant_nn.TensorQuantizer.use_fb_fake_quant = enabled
    try:
        yield
    finally:
        quant_nn.TensorQuantizer.use_fb_fake_quant = old


@contextlib.contextmanager
def quiet_absl():
    """Inside this block absl logs only errors (pytorch-quantization's per-quantizer 'Load calibrated amax…'
    warnings); the verbosity the caller had is restored after."""
    try:
        from absl import logging as absl_logging
    except ImportError:
        yield
        return
    old = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(old)


def quiet_logs() -> None:
    """Silence pytorch-quantization's per-quantizer absl warnings ('Load calibrated amax...') for the whole session."""
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass
