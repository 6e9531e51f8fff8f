"""Recipe 4 · Post-training-quantize your own CNN, export it to ONNX with Q/DQ nodes, run it in onnxruntime.

A 1-channel 28×28 CNN with a Linear head (your MNIST-shaped model): pytorch-quantization puts int8 fake-quantizers
on every Conv2d and Linear, a few batches calibrate them, and the export writes QuantizeLinear/DequantizeLinear
pairs — the file TensorRT builds an int8 engine from. On onnxruntime's CPU kernels that file runs in float
(FusedConv / Gemm after DequantizeLinear); onnxruntime's own ``ort_quantize_static`` placement gives QLinearConv.

Run: python examples/ptq_export_cnn.py   (needs the ptq extra: pip install -e '.[ptq]')
"""

import tempfile
from pathlib import Path

import torch
from torch import nn

from course_lib.ptq import onnx_utils, pq, sensitivity


def main(out_dir=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(16 * 7 * 7, 10)).eval()   # your trained model here
    calib = [torch.rand(16, 1, 28, 28) for _ in range(4)]                   # a few batches of your real inputs
    x = torch.rand(8, 1, 28, 28)

    q = pq.quantize_model(model)               # QuantConv2d + QuantLinear, per-channel int8 weights
    pq.calibrate(q, calib, method="max")       # or "percentile" / "entropy" / "mse" with calib_method="histogram"
    print(f"{len(pq.quant_layers(q))} quantized layers · output error vs float: "
          f"{sensitivity.output_error(q, model, x):.2%}")

    out = Path(out_dir or tempfile.mkdtemp(prefix="ptq-cnn-"))
    onnx_path = onnx_utils.export_onnx(q, out / "cnn_int8_qdq.onnx", x)     # any input shape; batch axis dynamic
    print("Q/DQ nodes in the file:", onnx_utils.count_qdq(onnx_path))
    session = onnx_utils.ort_session(onnx_path)
    y = onnx_utils.ort_predictor(session)(x)
    with torch.no_grad(), pq.fb_fake_quant():
        diff = float((y - q(x)).abs().max())
    print(f"onnxruntime vs torch fake-quant: max |diff| {diff:.2g}")
    print("ops onnxruntime runs:", dict(onnx_utils.optimized_op_counts(onnx_path)))
    return {"model": model, "quantized": q, "onnx": onnx_path, "x": x, "y": y, "ort_vs_torch": diff}


if __name__ == "__main__":
    main()
