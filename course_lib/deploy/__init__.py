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

from __future__ import annotations

import contextlib
import logging
import warnings

EXTRA = "deploy"  # optional imports: ``hw.require(module, EXTRA)`` names ``pip install -e '.[deploy]'``


@contextlib.contextmanager
def _quiet_import():
    # Importing transformers' model code imports torchao when it is installed (lesson 5's environment), and torchao logs
    # that its CUDA kernels do not load on a CPU-only machine; transformers imports tqdm.auto, which warns in a kernel
    # without ipywidgets (it falls back to a text bar). Both harmless here: silenced for this import only.
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="IProgress not found")
            yield
    finally:
        for lg, lvl in zip(loggers, saved):
            lg.setLevel(lvl)


def import_transformers():
    """``transformers`` with its BERT classes imported, quietly; MissingDependency naming the extra if absent (notebook 01)."""
    from course_lib import hw

    with _quiet_import():
        tf = hw.require("transformers", EXTRA)
        tf.BertModel, tf.BertTokenizerFast  # noqa: B018 - the lazy attributes import the model and tokenizer code
    return tf
