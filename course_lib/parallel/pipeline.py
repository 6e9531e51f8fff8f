"""Strategy ``pipeline``: the seed's hand-written pipeline over ``send``/``recv`` — ``02_parallel_inference.ipynb``.

Rank 0 holds the embeddings and the first layers, the middle ranks hold layers, the last rank the
remaining layers and the MLM head (:func:`~course_lib.parallel.model.split_layers` handles layer
counts that do not divide evenly). A batch is cut into micro-batches; each stage receives a small
shape header and then the activations, runs its layers and passes the result on with an
*asynchronous* ``isend``, so stage ``s`` already works on micro-batch ``i+1`` while stage ``s+1``
works on micro-batch ``i`` — and on the next batch while later stages finish this one.
"""

from __future__ import annotations

from collections import deque

import torch
from torch import nn

from course_lib.parallel.base import Runner
from course_lib.parallel.model import as_config, balanced_layers, build_model, split_layers


class Stage(nn.Module):
    """One pipeline stage of BertForMaskedLM: [embeddings] + encoder layers ``layers`` + [MLM head] (02)."""

    def __init__(self, model, layers: range, first: bool, last: bool):
        super().__init__()
        self.embeddings = model.bert.embeddings if first else None
        self.layers = nn.ModuleList(model.bert.encoder.layer[i] for i in layers)
        self.head = model.cls if last else None
        self.first, self.last = first, last

    def forward(self, x):
        h = self.embeddings(input_ids=x) if self.first else x
        for layer in self.layers:
            h = layer(h)
            h = h[0] if isinstance(h, tuple) else h
        if self.last:
            h = self.head(h)
        return h.contiguous()


def stage_bounds(model_config, num_stages: int, balance: str = "layers", seq_len: int = 128) -> list[range]:
    """Layer ranges per stage: ``"layers"`` (equal layer counts, the seed's way) or ``"flops"`` (head-aware) (02)."""
    cfg = as_config(model_config)
    if balance == "layers":
        return split_layers(cfg.num_hidden_layers, num_stages)
    if balance == "flops":
        return balanced_layers(cfg, num_stages, seq_len)
    raise ValueError(f"balance must be 'layers' or 'flops', got {balance!r}")


def make_stage(model_config, world, seed: int = 0, bounds: list[range] | None = None) -> Stage:
    """This rank's :class:`Stage` (built from the full seeded model, the rest dropped) (02)."""
    cfg = as_config(model_config)
    bounds = bounds or split_layers(cfg.num_hidden_layers, world.world_size)
    model = build_model(cfg, seed=seed)
    r = world.rank
    stage = Stage(model, bounds[r], first=r == 0, last=r == world.world_size - 1)
    del model
    return stage.eval().to(world.device)


def microbatches(n_rows: int, n: int) -> list[slice]:
    """Row slices of ``n`` micro-batches (sizes differ by at most one) (02)."""
    if not 1 <= n <= n_rows:
        raise ValueError(f"micro-batches must be between 1 and the batch size {n_rows}, got {n}")
    return [slice(r.start, r.stop) for r in split_layers(n_rows, n)]  # the same even split as the stages


def build(model_config, world, microbatches_per_batch: int = 1, max_inflight: int | None = None,
          balance: str = "layers", seq_len: int = 128) -> Runner:
    """The hand-written send/recv pipeline; callable → logits on the last rank, ``None`` elsewhere (02).

    ``balance="flops"`` places layers so the stage FLOPs (MLM head included) are as even as possible.
    """
    import torch.distributed as dist

    cfg = as_config(model_config)
    bounds = stage_bounds(cfg, world.world_size, balance, seq_len)
    stage = make_stage(cfg, world, bounds=bounds)
    r, n = world.rank, world.world_size
    dev = world.device
    pending: deque = deque()  # (work handle, header, tensor): tensors must live until the send is done
    limit = max_inflight or 2 * microbatches_per_batch
    dtype = next(stage.parameters()).dtype

    def send(t):
        header = torch.tensor(t.shape, dtype=torch.int64, device=dev)
        pending.append((dist.isend(header, r + 1), dist.isend(t, r + 1), header, t))
        while len(pending) > limit:
            h1, h2, *_ = pending.popleft()
            h1.wait()
            h2.wait()

    def recv():
        header = torch.empty(3, dtype=torch.int64, device=dev)
        dist.recv(header, r - 1)
        t = torch.empty(tuple(header.tolist()), dtype=dtype, device=dev)
        dist.recv(t, r - 1)
        return t

    def fn(batch):
        outs = []
        for sl in microbatches(batch.size, microbatches_per_batch):
            x = batch.input_ids[sl].to(dev) if r == 0 else recv()
            y = stage(x)
            if stage.last:
                outs.append(y)
            else:
                send(y)
        return torch.cat(outs) if stage.last else None

    def sync():
        while pending:
            h1, h2, *_ = pending.popleft()
            h1.wait()
            h2.wait()
        world.sync()

    return Runner("pipeline", world, fn, modules=[stage], sync=sync,
                  info={"layers_per_stage": [len(b) for b in bounds], "microbatches": microbatches_per_batch,
                        "balance": balance})
