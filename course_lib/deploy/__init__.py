"""Lesson 1 (``01_torchscript_triton.ipynb``): train, trace and serve a multitask Chinese-address BERT.

Modules (import them directly; heavy dependencies are imported inside them, never here):

- :mod:`course_lib.deploy.data`           deterministic synthetic address generator, splits, labels, vocab
- :mod:`course_lib.deploy.features`       tokenizer + ``input2feature``-style batched preprocessing, span decoding
- :mod:`course_lib.deploy.model`          ``BertMultitask`` (BERT + classification head + GlobalPointer), checkpoints
- :mod:`course_lib.deploy.train`          training loop, evaluation (accuracy, span F1)
- :mod:`course_lib.deploy.trace`          ``torch.jit.trace`` / script / export, parity, device-constant inspection
- :mod:`course_lib.deploy.triton_config`  ``config.pbtxt`` builder validated with Triton's own protobuf
- :mod:`course_lib.deploy.server`         a real Triton server (nvidia-pytriton) serving the traced model
- :mod:`course_lib.deploy.client`         tritonclient requests and the load test
- :mod:`course_lib.deploy.serve`          the batching sweep, its plot, the command line (re-exports server + client)

The pip extra is ``deploy``: ``pip install -e '.[deploy]'``.
"""

from __future__ import annotations

from course_lib.quiet import quiet_transformers_import as _quiet_import


EXTRA = "deploy"  # optional imports: ``hw.require(module, EXTRA)`` names ``pip install -e '.[deploy]'``


def import_transformers():
    """``transformers`` with its BERT classes imported, quietly; MissingDependency naming the extra if absent (notebook 01)."""
    from course_lib import hw

    with _quiet_import():
        tf = hw.require("transformers", EXTRA)
        tf.BertModel, tf.BertTokenizerFast  # noqa: B018 - the lazy attributes import the model and tokenizer code
    return tf
