"""Per-layer quantization sensitivity: quantize one layer at a time, rank, keep the worst in float.

Introduced in ``05_yolov7_ptq.ipynb`` (the idea of NVIDIA's yolov7 QAT recipe, ``sensitive_analysis``).
Works on any model quantized with :mod:`course_lib.ptq.pq`, with any score function (mAP for the
detector, accuracy or a negative error for a toy model in the tests).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from course_lib.ptq import pq


def _as_tensor(out, what: str) -> torch.Tensor:
    """A model output as one tensor: a tensor as is, a tuple/list of tensors flattened and concatenated."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and all(isinstance(t, torch.Tensor) for t in out):
        return torch.cat([t.reshape(-1) for t in out])
    raise TypeError(f"output_error: {what} must be a tensor (or a tuple of tensors), got {type(out).__name__}")


def output_error(model: nn.Module, reference, x: torch.Tensor) -> float:
    """Relative L2 error ‖f_q(x) − f(x)‖ / ‖f(x)‖ of the (partly) quantized model's output on batch ``x`` (notebook 05).

    ``reference`` is the float output f(x) (a tensor), or the float model itself (it is run on ``x``).
    """
    with torch.no_grad():
        if not isinstance(reference, (torch.Tensor, tuple, list)):
            if not callable(reference):
                raise TypeError("output_error: reference must be the float output (a tensor) or the float model, "
                                f"got {type(reference).__name__}")
            reference = reference(x)
        out = _as_tensor(model(x), "the model's output")
    reference = _as_tensor(reference, "reference")
    if out.shape != reference.shape:
        raise ValueError(f"output_error: the model's output has shape {tuple(out.shape)} but reference has "
                         f"{tuple(reference.shape)}: pass the float model's output on the same x")
    return float((out - reference).norm() / reference.norm().clamp_min(1e-12))


def sensitivity(model: nn.Module, score_fn: Callable[[nn.Module], float], layers: Iterable[str] | None = None,
                progress: bool = True):
    """Score the model with only one layer quantized, for each layer; a DataFrame sorted worst first.

    Columns: ``layer``, ``score`` (e.g. mAP with just this layer in int8), ``drop`` (float score − score).
    The model's quantizers are restored (all enabled) afterwards.
    """
    import pandas as pd

    from course_lib import hw

    all_layers = list(pq.quant_layers(model))
    layers = all_layers if layers is None else list(layers)
    if not layers:
        raise ValueError("no quantized layers to analyse")
    try:
        pq.only_layers_quantized(model, [])
        base = score_fn(model)
        rows = []
        for name in hw.progress(layers, desc="sensitivity", disable=not progress):
            pq.only_layers_quantized(model, [name])
            s = score_fn(model)
            rows.append({"layer": name, "score": s, "drop": base - s})
    finally:
        pq.set_layers_quantized(model, all_layers, True)
    df = pd.DataFrame(rows).sort_values("drop", ascending=False, kind="stable").reset_index(drop=True)
    df.attrs["float_score"] = base
    return df


def proxy_ranking(model: nn.Module, x: torch.Tensor, layers: Iterable[str] | None = None):
    """A cheap first pass: relative output error with only one layer quantized, per layer (worst first).

    One forward pass per layer on one batch instead of a full evaluation — used to pick which layers
    get the (expensive) mAP sensitivity measurement when there is no time to measure all of them.
    """
    import pandas as pd

    all_layers = list(pq.quant_layers(model))
    layers = all_layers if layers is None else list(layers)
    try:
        pq.only_layers_quantized(model, [])
        with torch.no_grad():
            ref = model(x)
        rows = []
        for name in layers:
            pq.only_layers_quantized(model, [name])
            rows.append({"layer": name, "rel_error": output_error(model, ref, x)})
    finally:
        pq.set_layers_quantized(model, all_layers, True)
    return pd.DataFrame(rows).sort_values("rel_error", ascending=False, kind="stable").reset_index(drop=True)


def keep_in_float(model: nn.Module, layers: Iterable[str]) -> nn.Module:
    """Disable the quantizers of ``layers`` (the sensitive ones); all other layers stay quantized."""
    pq.set_layers_quantized(model, list(pq.quant_layers(model)), True)
    pq.set_layers_quantized(model, list(layers), False)
    return model
