"""Lesson 5's post-training quantization: pytorch-quantization 2.1.3 wrappers, sensitivity, ONNX, ModelOpt.

Introduced in ``05_yolov7_ptq.ipynb``. Submodules: :mod:`.pq` (Q/DQ insertion and calibration with
NVIDIA's pytorch-quantization), :mod:`.sensitivity`, :mod:`.onnx_utils` (export, Q/DQ counting,
onnxruntime), :mod:`.mo` (the same with NVIDIA ModelOpt). All need the ``ptq`` extra:
``pip install -e '.[ptq]'``.
"""


def require(module: str, package: str | None = None, install: str | None = None):
    """Import ``module`` or raise ImportError saying how to install it (default: the ``ptq`` extra)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        how = f"install it: {install}" if install else "install the extra: pip install -e '.[ptq]'"
        raise ImportError(f"{module} is needed for lesson 5 ({package or module}); {how}") from e
