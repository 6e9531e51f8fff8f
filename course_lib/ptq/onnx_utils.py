"""ONNX export with Q/DQ nodes, graph inspection and onnxruntime inference.

Introduced in ``05_yolov7_ptq.ipynb``. pytorch-quantization exports its fake-quantizers as
``QuantizeLinear``/``DequantizeLinear`` pairs only with ``TensorQuantizer.use_fb_fake_quant = True``
(torch's native fake-quant ops) and the TorchScript-based exporter (``dynamo=False``, opset ≥ 13
for per-channel axes). TensorRT — and onnxruntime — read those pairs as "run this in int8".
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from course_lib.ptq import pq, require


def export_onnx(model: nn.Module, path: str | Path, img_size: int = 128, batch: int = 1, dynamic_batch: bool = True,
                opset: int = 13) -> Path:
    """Export ``model`` (float or fake-quantized) to ONNX; quantized models must be calibrated first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    has_q = False
    try:
        has_q = bool(pq.quantizers(model))
    except ImportError:
        pass
    if has_q:
        pq.check_calibrated(model)
    model.eval()
    x = torch.zeros(batch, 3, img_size, img_size)
    kw = dict(input_names=["images"], output_names=["output"], opset_version=opset, dynamo=False, do_constant_folding=True)
    if dynamic_batch:
        kw["dynamic_axes"] = {"images": {0: "batch"}, "output": {0: "batch"}}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if has_q:
            with pq.fb_fake_quant(True):
                torch.onnx.export(model, (x,), str(path), **kw)
        else:
            torch.onnx.export(model, (x,), str(path), **kw)
    return path


def op_counts(path: str | Path) -> Counter:
    """How many nodes of each op type the ONNX graph has (e.g. ``QuantizeLinear``, ``Conv``)."""
    onnx = require("onnx")
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def count_qdq(path: str | Path) -> int:
    """Number of QuantizeLinear + DequantizeLinear nodes in the ONNX graph."""
    c = op_counts(path)
    return c["QuantizeLinear"] + c["DequantizeLinear"]


def ort_session(path: str | Path, threads: int = 1, optimize: bool = True):
    """An onnxruntime CPU InferenceSession with ``threads`` intra-op threads (graph optimizations on)."""
    ort = require("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_predictor(session):
    """Wrap a session as a function torch tensor (B, 3, H, W) → torch tensor, usable by detection.evaluate."""
    name = session.get_inputs()[0].name

    def run(x):
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)
        return torch.from_numpy(session.run(None, {name: arr.astype(np.float32)})[0])

    return run
