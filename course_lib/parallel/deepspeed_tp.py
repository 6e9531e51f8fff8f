"""Strategy ``deepspeed``: DeepSpeed tensor-parallel inference (AutoTP), the seed's choice — ``02_parallel_inference.ipynb``.

Needs DeepSpeed and one GPU per rank. DeepSpeed is not part of the ``parallel`` extra (it builds
with ``--no-build-isolation``); GPU users install it with::

    DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed

Everywhere else :func:`unavailable_reason` says why it is skipped.
"""

from __future__ import annotations

import importlib.util

from course_lib.parallel.base import Runner
from course_lib.parallel.model import build_model
from course_lib.parallel.world import StrategyUnavailable

INSTALL = "DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed"


def unavailable_reason(gpus: int | None = None) -> str | None:
    """``None`` when DeepSpeed TP can run here, else the sentence saying why not (02)."""
    if importlib.util.find_spec("deepspeed") is None:
        return f"DeepSpeed tensor parallel: DeepSpeed is not installed (GPU users: `{INSTALL}`)"
    if gpus is None:
        from course_lib import hw

        gpus = hw.gpu_count()
    if gpus < 1:
        return "DeepSpeed tensor parallel needs CUDA GPUs (found 0); its CPU accelerator path is not used in this course"
    return None


def build(model_config, world) -> Runner:
    """``deepspeed.init_inference(model, tensor_parallel={"tp_size": N})`` on this rank's GPU (02)."""
    reason = unavailable_reason()
    if reason:
        raise StrategyUnavailable(reason)
    import deepspeed
    import torch

    model = build_model(model_config)
    engine = deepspeed.init_inference(
        model,
        tensor_parallel={"tp_size": world.world_size},
        dtype=torch.float32,
        replace_with_kernel_inject=False,  # AutoTP: shard the HF linears, keep HF kernels (fp32 parity)
    )
    module = engine.module

    def fn(batch):
        return module(input_ids=batch.input_ids.to(world.device)).logits

    return Runner("deepspeed", world, fn, modules=[module], info={"tp_size": world.world_size})
