"""Lesson 2 — bert-base inference under tensor, fully-sharded, naive-split and pipeline parallelism.

Introduced in ``02_parallel_inference.ipynb``. One module per strategy, all with the same interface
``build(model_config, world) -> Runner`` (a callable on a batch returning this rank's logits):

- :mod:`~course_lib.parallel.single`       the whole model on one device (baseline)
- :mod:`~course_lib.parallel.tensor`       tensor parallel, ``torch.distributed.tensor.parallel``
- :mod:`~course_lib.parallel.deepspeed_tp` tensor parallel, DeepSpeed ``init_inference`` (GPU + DeepSpeed only)
- :mod:`~course_lib.parallel.fsdp`         FSDP2 ``fully_shard`` with forward prefetch
- :mod:`~course_lib.parallel.split`        naive split in one process + a ``TorchDispatchMode`` mover
- :mod:`~course_lib.parallel.pipeline`     hand-written send/recv pipeline with micro-batches
- :mod:`~course_lib.parallel.pipelining`   ``torch.distributed.pipelining`` + ``ScheduleGPipe``

:func:`~course_lib.parallel.launcher.launch` runs them under ``torchrun`` (gloo on CPU, nccl on
GPU) and collects one pandas DataFrame. Collectives never run in the Jupyter kernel.
Needs ``pip install -e '.[parallel]'`` (transformers); DeepSpeed is optional.
"""

from __future__ import annotations

import importlib

# strategy name -> module; "single-process" strategies run on rank 0 only
STRATEGIES = {
    "single": "course_lib.parallel.single",
    "tensor": "course_lib.parallel.tensor",
    "deepspeed": "course_lib.parallel.deepspeed_tp",
    "fsdp": "course_lib.parallel.fsdp",
    "split": "course_lib.parallel.split",
    "pipeline": "course_lib.parallel.pipeline",
    "pipelining": "course_lib.parallel.pipelining",
}
SINGLE_PROCESS = ("single", "split")


def strategy_module(name: str):
    """The module implementing strategy ``name`` (its ``build(model_config, world)``) (02)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})")
    return importlib.import_module(STRATEGIES[name])


def __getattr__(name):  # lazy: importing course_lib.parallel never imports torch.distributed
    if name in ("launch", "LaunchResult", "RankFailed", "LaunchTimeout", "Run", "unavailable_reason"):
        return getattr(importlib.import_module("course_lib.parallel.launcher"), name)
    raise AttributeError(name)


__all__ = ["STRATEGIES", "SINGLE_PROCESS", "strategy_module", "launch", "Run", "LaunchResult",
           "RankFailed", "LaunchTimeout", "unavailable_reason"]
