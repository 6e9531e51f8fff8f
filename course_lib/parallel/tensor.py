"""Strategy ``tensor``: PyTorch tensor parallelism (DTensor ``parallelize_module``) — ``02_parallel_inference.ipynb``.

Megatron-style: in every encoder layer the q/k/v projections and the MLP's first linear are split
by output columns (each rank owns ``heads / N`` attention heads and ``intermediate / N`` MLP units),
the attention output and MLP output linears by input rows, so each layer needs exactly two
all-reduces (one after attention, one after the MLP). Embeddings and the MLM head are replicated.
"""

from __future__ import annotations

from course_lib.parallel.base import Runner
from course_lib.parallel.model import as_config, build_model
from course_lib.parallel.world import device_mesh


def layer_plan():
    """The ``parallelize_module`` plan for one ``BertLayer`` (Colwise q/k/v/intermediate, Rowwise outputs) (02)."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    return {
        "attention.self.query": ColwiseParallel(),
        "attention.self.key": ColwiseParallel(),
        "attention.self.value": ColwiseParallel(),
        "attention.output.dense": RowwiseParallel(),
        "intermediate.dense": ColwiseParallel(),
        "output.dense": RowwiseParallel(),
    }


def build(model_config, world) -> Runner:
    """BertForMaskedLM with every encoder layer tensor-parallel over all ranks; callable → full logits (02)."""
    from torch.distributed.tensor.parallel import parallelize_module

    cfg = as_config(model_config)
    n = world.world_size
    for what, size in (("num_attention_heads", cfg.num_attention_heads), ("intermediate_size", cfg.intermediate_size)):
        if size % n:
            raise ValueError(f"tensor parallel over {n} ranks needs {what} ({size}) divisible by {n}")
    model = build_model(cfg, device=world.device)
    mesh = device_mesh(world)
    for layer in model.bert.encoder.layer:
        parallelize_module(layer, mesh, layer_plan())

    def fn(batch):
        return model(input_ids=batch.input_ids.to(world.device)).logits

    return Runner("tensor", world, fn, modules=[model],
                  info={"all_reduces_per_forward": 2 * cfg.num_hidden_layers, "heads_per_rank": cfg.num_attention_heads // n})
