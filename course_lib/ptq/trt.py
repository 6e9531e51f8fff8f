"""TensorRT engines from the lesson's ONNX files (GPU only): fp16 from the fp32 file, int8 from the Q/DQ file.

Introduced in ``05_yolov7_ptq.ipynb`` (section 8). This is the original lesson's speed comparison:
TensorRT reads pytorch-quantization's Q/DQ nodes as *explicit quantization* — the scales come from the
ONNX file, TensorRT does not calibrate — and fuses each ``Q → DQ → Conv → (SiLU)`` into an int8 kernel.
The command-line equivalent is ``trtexec --onnx=model.onnx --fp16 --int8``.

Written against the TensorRT 10 Python API (named tensors, ``execute_async_v3``), with torch CUDA
tensors as the I/O buffers. It needs a CUDA GPU and ``pip install tensorrt``; it has not been run on
the course's CPU machines, so the notebook reports a failure here as a visible note rather than stopping.
"""

from __future__ import annotations

from pathlib import Path

import torch

from course_lib.ptq import require


def _trt():
    return require("tensorrt", "TensorRT engines, on a CUDA GPU", install="pip install tensorrt")


def build_engine(onnx_path: str | Path, precision: str = "fp16", img_size: int = 640, max_batch: int = 8,
                 workspace_gib: float = 2.0):
    """Build a TensorRT engine (a deserialized ``ICudaEngine``) from an ONNX file with a dynamic batch axis.

    ``precision``: ``"fp32"``, ``"fp16"``, or ``"int8"`` (fp16 + int8: layers without Q/DQ run in fp16,
    the Q/DQ-wrapped convs in int8 with the file's scales).
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"precision must be 'fp32', 'fp16' or 'int8', got {precision!r}")
    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT needs a CUDA GPU; none is visible to torch")
    trt = _trt()
    onnx_path = Path(onnx_path)
    if not onnx_path.exists():
        raise FileNotFoundError(f"ONNX file {onnx_path} not found")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    inp = network.get_input(0)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (1, 3, img_size, img_size), (max_batch, 3, img_size, img_size),
                      (max_batch, 3, img_size, img_size))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build a {precision} engine from {onnx_path.name} (see its log above)")
    return trt.Runtime(logger).deserialize_cuda_engine(plan)


class EngineRunner:
    """Run an engine on torch CUDA tensors: ``runner(x)`` → output tensor (first output), on the current stream."""

    def __init__(self, engine):
        trt = _trt()
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1:
            raise ValueError(f"expected one input tensor, the engine has {self.inputs}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            raise ValueError("EngineRunner takes CUDA tensors (x.cuda())")
        x = x.float().contiguous()
        self.context.set_input_shape(self.inputs[0], tuple(x.shape))
        self.context.set_tensor_address(self.inputs[0], x.data_ptr())
        outs = []
        for name in self.outputs:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=torch.float32, device=x.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return outs[0]
