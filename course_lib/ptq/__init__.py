"""Lesson 5's post-training quantization: pytorch-quantization 2.1.3 wrappers, sensitivity, ONNX, ModelOpt.

Introduced in ``05_yolov7_ptq.ipynb``. Submodules: :mod:`.pq` (Q/DQ insertion and calibration with
NVIDIA's pytorch-quantization), :mod:`.sensitivity`, :mod:`.onnx_utils` (export, Q/DQ counting,
onnxruntime), :mod:`.mo` (the same with NVIDIA ModelOpt). All need the ``ptq`` extra:
``pip install -e '.[ptq]'``.
"""

from course_lib import hw


def require(module: str, what: str | None = None, install: str | None = None):
    """:func:`course_lib.hw.require` with lesson 5's extra (``ptq``): import ``module`` or say how to install it."""
    return hw.require(module, "ptq", what=what, install=install)
