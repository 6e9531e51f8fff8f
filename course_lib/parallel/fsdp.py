"""Strategy ``fsdp``: FSDP2 ``fully_shard`` inference — ``02_parallel_inference.ipynb``.

Every rank stores ``1/N`` of every parameter and serves its own slice of the batch (data parallel).
Before a layer runs, its full weights are all-gathered from all ranks and freed again afterwards
(``reshard_after_forward``); explicit forward prefetch starts the next layer's all-gather while the
current layer computes.
"""

from __future__ import annotations

import torch

from course_lib.parallel.base import Runner
from course_lib.parallel.model import build_model
from course_lib.parallel.world import device_mesh


def rows_of(rank: int, world_size: int, batch_size: int) -> slice:
    """The contiguous rows of a global batch that ``rank`` serves (``torch.tensor_split`` layout) (02)."""
    if batch_size < world_size:
        raise ValueError(f"fsdp over {world_size} ranks needs a batch of at least {world_size}, got {batch_size}")
    base, extra = divmod(batch_size, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def build(model_config, world, prefetch: bool = True) -> Runner:
    """BertForMaskedLM sharded with ``fully_shard`` per encoder layer + root; callable → this rank's logits (02)."""
    from torch.distributed.fsdp import fully_shard

    model = build_model(model_config, device=world.device)
    mesh = device_mesh(world)
    layers = list(model.bert.encoder.layer)
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    if prefetch:
        for cur, nxt in zip(layers, layers[1:]):
            cur.set_modules_to_forward_prefetch([nxt])

    def rows(b):
        return rows_of(world.rank, world.world_size, b)

    def fn(batch):
        ids = batch.input_ids[rows(batch.size)].to(world.device)
        return model(input_ids=ids).logits

    return Runner("fsdp", world, fn, modules=[model], rows=rows,
                  info={"all_gathers_per_forward": len(layers) + 1, "prefetch": prefetch})
