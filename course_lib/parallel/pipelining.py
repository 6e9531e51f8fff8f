"""Strategy ``pipelining``: the same stages with ``torch.distributed.pipelining`` + ``ScheduleGPipe`` (02).

The library way to do what :mod:`course_lib.parallel.pipeline` does by hand: a ``PipelineStage``
per rank (shapes inferred from the first micro-batch) and a GPipe schedule that runs all forward
micro-batches through the stages. Forward only (``schedule.eval``), no loss.
"""

from __future__ import annotations

from course_lib.parallel.base import Runner
from course_lib.parallel.model import as_config
from course_lib.parallel.pipeline import make_stage, stage_bounds


def build(model_config, world, microbatches_per_batch: int = 1, balance: str = "layers", seq_len: int = 128) -> Runner:
    """``PipelineStage`` + ``ScheduleGPipe`` over all ranks; callable → logits on the last rank (02)."""
    import torch
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    cfg = as_config(model_config)
    bounds = stage_bounds(cfg, world.world_size, balance, seq_len)
    stage_mod = make_stage(cfg, world, bounds=bounds)
    stage = PipelineStage(stage_mod, world.rank, world.world_size, torch.device(world.device))
    schedule = ScheduleGPipe(stage, n_microbatches=microbatches_per_batch)
    first, last = world.rank == 0, world.rank == world.world_size - 1

    def fn(batch):
        if batch.size % microbatches_per_batch:
            raise ValueError(f"ScheduleGPipe needs the batch ({batch.size}) divisible by the micro-batches ({microbatches_per_batch})")
        if first:
            out = schedule.eval(batch.input_ids.to(world.device))
        else:
            out = schedule.eval()
        return out if last else None

    return Runner("pipelining", world, fn, modules=[stage_mod],
                  info={"layers_per_stage": [len(b) for b in bounds], "microbatches": microbatches_per_batch,
                        "balance": balance})
