"""The same PTQ flow with NVIDIA ModelOpt (``nvidia-modelopt``), pytorch-quantization's maintained successor.

Introduced in ``05_yolov7_ptq.ipynb``. ``mtq.quantize(model, config, forward_loop)`` inserts
quantizers *and* calibrates in one call (no monkey patching: it converts the modules of an existing
model); ``mtq.disable_quantizer`` keeps layers in float; the model exports to ONNX Q/DQ like before.
ModelOpt's INT8 preset quantizes ``Conv2d``, ``Linear`` (and pooling inputs) of any model: feed batches of the
model's own input shape, then :func:`course_lib.ptq.onnx_utils.export_onnx` with an ``example_input``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from typing import Iterable

import torch
from torch import nn

from course_lib.ptq import pq, require

# old (pytorch-quantization 2.1.3) -> new (ModelOpt): shown as a table in section 9 of the notebook
CONCEPTS = [
    ("quant_modules.initialize() (monkey-patch torch.nn before building)", "mtq.quantize(model, cfg, forward_loop) (convert an existing model)"),
    ("QuantDescriptor(num_bits=8, axis=(0,), calib_method=...)", 'config dict: {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}}'),
    ("quant_nn.QuantConv2d", "modelopt.torch.quantization.nn.QuantConv2d (registered automatically)"),
    ("TensorQuantizer  _input_quantizer / _weight_quantizer", "TensorQuantizer  input_quantizer / weight_quantizer (+ output_quantizer, off)"),
    ("enable_calib()/disable_quant() loop + load_calib_amax()", "forward_loop inside mtq.quantize / mtq.calibrate(model, algorithm, loop)"),
    ("calib.MaxCalibrator / HistogramCalibrator", 'algorithm "max" (histogram: collect, then load_calib_amax("entropy" / "mse" / "percentile"))'),
    ("quantizer.disable() per sensitive layer", 'mtq.disable_quantizer(model, "*model.105*")'),
    ("TensorQuantizer.use_fb_fake_quant = True + torch.onnx.export", "torch.onnx.export(..., dynamo=False) directly"),
]


class _DropEnumNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "is an Enum subclass" not in record.getMessage()


def _mtq():
    """Import ``modelopt.torch.quantization``, silencing what that import emits (and only that)."""
    pytree_log = logging.getLogger("torch.utils._pytree")
    drop = _DropEnumNotice()
    pytree_log.addFilter(drop)  # modelopt registers Enum types torch now supports natively: a deprecation notice per Enum
    try:
        with warnings.catch_warnings():
            # modelopt's import warns when the installed transformers is newer than it was tested with: lesson 5 uses no HF model
            warnings.filterwarnings("ignore", message=r"transformers .* is not tested", category=UserWarning)
            # modelopt imports tqdm.auto, which warns in a kernel without ipywidgets; lesson 5 shows no modelopt progress bar
            warnings.filterwarnings("ignore", message="IProgress not found")
            return require("modelopt.torch.quantization", "ModelOpt (nvidia-modelopt)")
    finally:
        pytree_log.removeFilter(drop)


def int8_config() -> dict:
    """ModelOpt's INT8 preset (per-channel weights, per-tensor inputs, max calibration) as a fresh dict."""
    return copy.deepcopy(_mtq().INT8_DEFAULT_CFG)


def quantize(model: nn.Module, batches: list[torch.Tensor], method: str = "max", percentile: float = 99.99,
             stride: int = 1) -> nn.Module:
    """A quantized, calibrated copy of ``model`` through ``mtq.quantize`` (INT8 preset).

    ``method="max"``: ``mtq.quantize(copy, INT8 config, forward_loop)`` — one call. ``"percentile"`` /
    ``"entropy"``: histogram calibrators on the inputs; ModelOpt 0.47 cannot finish those from the config
    (``compute_amax() missing 'method'``), so the quantizers are inserted with ``algorithm=None``, statistics
    collected with the calibrators on, and ``load_calib_amax(method)`` called per quantizer. Statistics are
    collected with :func:`course_lib.ptq.pq.collect_stats` (the same loop for both libraries); entropy uses
    :func:`course_lib.ptq.pq.entropy_amax_fast` (same result as ModelOpt's loop, much faster on CPU).
    """
    mtq = _mtq()
    batches = list(batches)
    if not batches:
        raise ValueError("calibration saw zero batches: pass a non-empty calibration set")
    if method not in ("max", "percentile", "entropy"):
        raise ValueError(f"method must be 'max', 'percentile' or 'entropy', got {method!r}")
    model = copy.deepcopy(model).eval()

    def forward_loop(m):
        with torch.no_grad():
            for x in batches:
                m(x)

    if method == "max":
        with contextlib.redirect_stdout(io.StringIO()):  # mtq.quantize prints "Inserted N quantizers"
            return mtq.quantize(model, int8_config(), forward_loop)
    cfg = int8_config()
    for entry in cfg["quant_cfg"]:
        if entry.get("quantizer_name") == "*input_quantizer":
            entry["cfg"] = dict(entry["cfg"], calibrator="histogram")
    cfg["algorithm"] = None  # insert only; calibrate below
    with contextlib.redirect_stdout(io.StringIO()):
        model = mtq.quantize(model, cfg, None)
    from modelopt.torch.quantization.calib import HistogramCalibrator
    from modelopt.torch.quantization.calib import histogram as H

    tqs = {n: m for n, m in model.named_modules() if type(m).__name__ == "TensorQuantizer" and m.is_enabled}
    pq.collect_stats(model, batches, tensor_quantizers=tqs)  # same loop as pytorch-quantization's
    with pq.fast_entropy(H):
        for q in tqs.values():
            if isinstance(q._calibrator, HistogramCalibrator):
                kw = {"percentile": percentile} if method == "percentile" else {"stride": stride}
                q.load_calib_amax(method, **kw)
            else:
                q.load_calib_amax()
    return model


def quantizer_names(model: nn.Module) -> list[str]:
    """Names of ModelOpt TensorQuantizers that are enabled."""
    return [n for n, m in model.named_modules() if type(m).__name__ == "TensorQuantizer" and getattr(m, "is_enabled", False)]


def disable_layers(model: nn.Module, layers: Iterable[str]) -> nn.Module:
    """Keep ``layers`` (module names such as ``model.105.m.0``) in float with ``mtq.disable_quantizer``."""
    mtq = _mtq()
    prefixes = tuple(f"{name}." for name in layers)
    if prefixes:
        mtq.disable_quantizer(model, lambda n: n.startswith(prefixes))
    return model
