"""Lesson 1 (``01_torchscript_triton.ipynb``): train, trace and serve a multitask Chinese-address BERT.

Modules (import them directly; heavy dependencies are imported inside them, never here):

- :mod:`course_lib.deploy.data`           deterministic synthetic address generator, splits, labels, vocab
- :mod:`course_lib.deploy.features`       tokenizer + ``input2feature``-style batched preprocessing, span decoding
- :mod:`course_lib.deploy.model`          ``BertMultitask`` (BERT + classification head + GlobalPointer), checkpoints
- :mod:`course_lib.deploy.train`          training loop, evaluation (accuracy, span F1)
- :mod:`course_lib.deploy.trace`          ``torch.jit.trace`` / script / export, parity, device-constant inspection
- :mod:`course_lib.deploy.triton_config`  ``config.pbtxt`` builder validated with Triton's own protobuf
- :mod:`course_lib.deploy.serve`          a real Triton server (nvidia-pytriton) + tritonclient load test

The pip extra is ``deploy``: ``pip install -e '.[deploy]'``.
"""

EXTRA = "deploy"


def missing_extra(package: str) -> ImportError:
    """An ImportError that names the pip extra to install (used by every module of lesson 1) (notebook 01)."""
    return ImportError(
        f"{package} is not installed; lesson 1 needs the 'deploy' extra: pip install -e '.[deploy]'"
    )
