"""Strategy ``single``: the whole model on one device — the baseline of ``02_parallel_inference.ipynb``."""

from __future__ import annotations

from course_lib.parallel.base import Runner
from course_lib.parallel.model import build_model


def build(model_config, world) -> Runner:
    """The full BertForMaskedLM on ``world.device``; callable on a batch → logits (02)."""
    model = build_model(model_config, device=world.device)

    def fn(batch):
        return model(input_ids=batch.input_ids.to(world.device)).logits

    sync = (lambda: __import__("torch").cuda.synchronize()) if world.is_cuda else (lambda: None)
    return Runner("single", world, fn, modules=[model], sync=sync, info={"devices": 1})
