"""ONNX export with Q/DQ nodes, graph inspection and onnxruntime inference.

Introduced in ``05_yolov7_ptq.ipynb``. pytorch-quantization exports its fake-quantizers as
``QuantizeLinear``/``DequantizeLinear`` pairs only with ``TensorQuantizer.use_fb_fake_quant = True``
(torch's native fake-quant ops) and the TorchScript-based exporter (``dynamo=False``, opset ≥ 13
for per-channel axes). TensorRT — and onnxruntime — read those pairs as "run this in int8".
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from course_lib.ptq import pq, require


def export_onnx(model: nn.Module, path: str | Path, example_input=None, *, img_size: int = 128, batch: int = 1,
                dynamic_batch: bool = True, opset: int = 13, input_name: str = "images",
                output_name: str = "output") -> Path:
    """Export ``model`` (float or fake-quantized) to ONNX at ``path``; quantized models must be calibrated first (notebook 05).

    ``example_input`` is one input tensor of any shape (a 1-channel 28×28 batch, token ids, …); without it a
    ``(batch, 3, img_size, img_size)`` image of zeros is used (the lesson's detector). ``export_onnx(model,
    example_input, path)`` is accepted too. Axis 0 is exported as a dynamic batch unless ``dynamic_batch=False``.

    A model quantized with :func:`course_lib.ptq.pq.quantize_model` (``QuantConv2d``/``QuantLinear``) or ModelOpt is
    written with ``QuantizeLinear``/``DequantizeLinear`` pairs in front of each quantized layer. TensorRT reads those
    as "run this layer in int8". onnxruntime's CPU kernels do not: its optimizer folds the pair on the weights, keeps
    the activation's Q→DQ, and runs the layer in float (``FusedConv``/``Gemm`` after a ``DequantizeLinear``), because
    an int8 ``QLinearConv`` needs a ``QuantizeLinear`` on the layer's *output* too. Only
    :func:`ort_quantize_static` (Q/DQ around every op) gives ``QLinearConv`` on the CPU; see
    :func:`optimized_op_counts`, which lists the ops onnxruntime actually runs.
    """
    if isinstance(path, (torch.Tensor, tuple, list)) and isinstance(example_input, (str, Path)):
        path, example_input = example_input, path  # export_onnx(model, example_input, path)
    if not isinstance(path, (str, Path)):
        raise TypeError(f"export_onnx(model, path, example_input): path must be a file name, got {type(path).__name__}")
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
    if example_input is None:
        x = torch.zeros(batch, 3, img_size, img_size)
    elif isinstance(example_input, torch.Tensor):
        x = example_input.detach()
    else:
        raise TypeError(f"example_input must be a tensor (one batch of inputs), got {type(example_input).__name__}")
    kw = dict(input_names=[input_name], output_names=[output_name], opset_version=opset, dynamo=False,
              do_constant_folding=True)
    if dynamic_batch:
        kw["dynamic_axes"] = {input_name: {0: "batch"}, output_name: {0: "batch"}}
    with _export_warnings_filtered(), pq.quiet_absl():
        if has_q:
            with pq.fb_fake_quant(True):
                torch.onnx.export(model, (x,), str(path), **kw)
        else:
            torch.onnx.export(model, (x,), str(path), **kw)
    return path


@contextlib.contextmanager
def _export_warnings_filtered():
    """Filter the three warnings ``torch.onnx.export(dynamo=False)`` emits on every call, for that call only.

    TracerWarning: the tracer reads pytorch-quantization's Python-side amax checks (harmless: amax is fixed after
    calibration); DeprecationWarning from ``torch.onnx`` / ``torch.jit``: the TorchScript exporter is the legacy
    path, chosen on purpose because the dynamo exporter cannot export the fake-quant ops.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.(onnx|jit)")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        yield


def op_counts(path: str | Path) -> Counter:
    """How many nodes of each op type the ONNX graph has (e.g. ``QuantizeLinear``, ``Conv``)."""
    onnx = require("onnx")
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def initializer_bytes(path: str | Path) -> dict[str, int]:
    """Bytes of the graph's initializers (weights, biases, stored constants) per ONNX data type, e.g. ``{"FLOAT": …}``."""
    onnx = require("onnx")
    from onnx import numpy_helper

    out: dict[str, int] = {}
    for t in onnx.load(str(path)).graph.initializer:
        name = onnx.TensorProto.DataType.Name(t.data_type)
        out[name] = out.get(name, 0) + int(numpy_helper.to_array(t).nbytes)
    return out


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
    """Wrap a session as a function torch tensor (any input shape, e.g. (B, 3, H, W)) → torch tensor (its first output),
    usable by detection.evaluate."""
    name = session.get_inputs()[0].name

    def run(x):
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)
        return torch.from_numpy(session.run(None, {name: arr.astype(np.float32)})[0])

    return run


def optimized_op_counts(path: str | Path) -> Counter:
    """Op types of the graph onnxruntime actually runs (after its CPU graph optimizations), e.g. ``QLinearConv``."""
    import tempfile

    ort = require("onnxruntime")
    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # portable subset, no NCHWc
        so.optimized_model_filepath = str(Path(d) / "opt.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return op_counts(so.optimized_model_filepath)


def node_module_name(node_name: str) -> str:
    """ONNX node name from the TorchScript exporter → torch module name ('/model.89/m.0/Conv' → 'model.89.m.0')."""
    parts = [p for p in node_name.split("/") if p]
    return ".".join(parts[:-1])


ACTIVATION_OPS = ("Sigmoid", "Mul", "Relu", "LeakyRelu", "Clip", "HardSigmoid", "HardSwish", "Tanh")


def float_nodes(graph, keep_float: Iterable[str] = (), float_modules: Iterable[str] = ()) -> list[str]:
    """ONNX node names ``quantize_static`` must leave in float so that the named layers really stay float.

    Excluding only the ``Conv`` node is not enough: its output still feeds the (quantized) SiLU, so the
    quantizer puts a ``QuantizeLinear`` on it, and at load time onnxruntime's ``WeightBiasQuantization``
    optimizer turns ``DQ → Conv(float weight) → Q`` into a ``QLinearConv`` with per-tensor int8 weights it
    quantizes itself. So each kept conv is excluded *with the activation ops fed only by it* (SiLU's
    ``Sigmoid`` and ``Mul``); ``float_modules`` (e.g. the detection head) are excluded node by node.
    """
    nodes = list(graph.node)
    produced = {o for n in nodes for o in n.output}
    exclude: list[str] = []
    for layer in keep_float:
        convs = [n for n in nodes if n.op_type == "Conv" and node_module_name(n.name) == layer]
        if not convs:
            raise ValueError(f"no Conv node of layer {layer!r} in the ONNX graph (names look like "
                             f"{node_module_name(next(n.name for n in nodes if n.op_type == 'Conv'))!r})")
        exclude.append(convs[0].name)
        outs = set(convs[0].output)
        grown = True
        while grown:  # follow the activation chain: Sigmoid(x), then Mul(x, Sigmoid(x))
            grown = False
            for n in nodes:
                if (n.op_type in ACTIVATION_OPS and n.name not in exclude and any(i in outs for i in n.input)
                        and all(i in outs or i not in produced for i in n.input)):
                    exclude.append(n.name)
                    outs |= set(n.output)
                    grown = True
    for mod in float_modules:
        under = [n.name for n in nodes if (node_module_name(n.name) + ".").startswith(mod + ".")]
        if not under:
            raise ValueError(f"no ONNX node belongs to module {mod!r}")
        exclude += [n for n in under if n not in exclude]
    return exclude


class _DropLogRecords(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantize_static():
    """Silence what ``quantize_static`` prints, for that call only: its histogram calibrators' progress on
    stdout, and its root-logger advice to run ``quant_pre_process`` (we quantize an already-optimized export)."""
    drop = _DropLogRecords("pre-processing")
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(drop)


ORT_CALIB_METHOD = "percentile"  # the one default for onnxruntime's calibrator (see ort_quantize_static)


def ort_quantize_static(fp32_path: str | Path, out_path: str | Path, batches, keep_float: tuple[str, ...] = (),
                        per_channel: bool = True, method: str = ORT_CALIB_METHOD,
                        float_modules: tuple[str, ...] = ()) -> Path:
    """onnxruntime's own PTQ of an fp32 ONNX: Q/DQ around *every* supported op (u8 activations, s8 weights).

    That placement (a Q after each op's output as well) is what onnxruntime's CPU int8 kernels
    (``QLinearConv`` …) need; ``keep_float`` lists torch module names whose convs (and their activations)
    stay float; ``float_modules`` lists torch module names *all* of whose nodes stay float (e.g. the
    detection head: its 1×1 convs produce the logits and its tail decodes boxes in pixels, where 8 bits cost
    accuracy) — see :func:`float_nodes`. ``method`` is onnxruntime's calibrator: "minmax", "percentile" or
    "entropy"; the default, percentile (99.999), clips the rare outliers that make min/max scales coarse —
    the same reason the lesson's pytorch-quantization calibration prefers a histogram method over max.
    """
    onnx = require("onnx")
    require("onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ValueError(f"method must be one of {sorted(methods)}, got {method!r}")

    batches = [b.numpy() if isinstance(b, torch.Tensor) else np.asarray(b, np.float32) for b in batches]
    if not batches:
        raise ValueError("calibration saw zero batches: pass a non-empty calibration set")

    input_name = onnx.load(str(fp32_path)).graph.input[0].name  # "images" for export_onnx's default

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({input_name: b} for b in batches)

        def get_next(self):
            return next(self.it, None)

    exclude = float_nodes(onnx.load(str(fp32_path)).graph, keep_float, float_modules)
    with _quiet_quantize_static():
        quantize_static(str(fp32_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                        calibrate_method=methods[method])
    return Path(out_path)
