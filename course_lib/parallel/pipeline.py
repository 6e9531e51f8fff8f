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


class SendRecvPipeline:
    """This rank's part of the hand-written pipeline: receive, run the stage, ``isend`` onward (02).

    Rank 0 feeds token ids, the last rank returns logits; every other call returns ``None``. Sends
    are asynchronous, so a stage starts its next micro-batch while the previous one is on the wire;
    at most ``max_inflight`` sends stay pending (their tensors must live until the send is done).
    """

    def __init__(self, stage: Stage, rank: int, world_size: int, device: str, microbatches: int,
                 max_inflight: int | None = None):
        self.stage, self.rank, self.device, self.m = stage, rank, device, microbatches
        self.first, self.last = rank == 0, rank == world_size - 1
        self.limit = max_inflight or 2 * microbatches
        self.dtype = next(stage.parameters()).dtype
        self.pending: deque = deque()  # (header work, tensor work, header, tensor)

    def __call__(self, batch):
        outs = []
        for rows in microbatches(batch.size, self.m):
            x = batch.input_ids[rows].to(self.device) if self.first else self.recv()
            y = self.stage(x)
            if self.last:
                outs.append(y)
            else:
                self.send(y)
        return torch.cat(outs) if self.last else None

    def send(self, t):
        """Asynchronously send a 3-number shape header, then ``t``, to the next rank."""
        import torch.distributed as dist

        header = torch.tensor(t.shape, dtype=torch.int64, device=self.device)
        self.pending.append((dist.isend(header, self.rank + 1), dist.isend(t, self.rank + 1), header, t))
        while len(self.pending) > self.limit:
            self.wait_oldest()

    def recv(self):
        """Receive the shape header, then the activations, from the previous rank (blocking)."""
        import torch.distributed as dist

        header = torch.empty(3, dtype=torch.int64, device=self.device)
        dist.recv(header, self.rank - 1)
        t = torch.empty(tuple(header.tolist()), dtype=self.dtype, device=self.device)
        dist.recv(t, self.rank - 1)
        return t

    def wait_oldest(self):
        """Wait until the oldest pending send is done."""
        h_header, h_tensor, *_ = self.pending.popleft()
        h_header.wait()
        h_tensor.wait()

    def drain(self):
        """Wait for every pending send."""
        while self.pending:
            self.wait_oldest()


def build(model_config, world, microbatches_per_batch: int = 1, max_inflight: int | None = None,
          balance: str = "layers", seq_len: int = 128) -> Runner:
    """The hand-written send/recv pipeline; callable → logits on the last rank, ``None`` elsewhere (02).

    ``balance="flops"`` places layers so the stage FLOPs (MLM head included) are as even as possible.
    """
    cfg = as_config(model_config)
    bounds = stage_bounds(cfg, world.world_size, balance, seq_len)
    stage = make_stage(cfg, world, bounds=bounds)
    pipe = SendRecvPipeline(stage, world.rank, world.world_size, world.device, microbatches_per_batch, max_inflight)

    def sync():
        pipe.drain()
        world.sync()

    return Runner("pipeline", world, pipe, modules=[stage], sync=sync,
                  info={"layers_per_stage": [len(b) for b in bounds], "microbatches": microbatches_per_batch,
                        "balance": balance})


def stage_times(model_config, bounds: list[range], batch, *, warmup: int = 1, repeat: int = 5,
                threads: int | None = None) -> list:
    """Time each stage of ``bounds`` alone on this process's CPU for ``batch`` (one ``bench`` result per stage) (02).

    Stage ``s`` gets the activations stage ``s-1`` produces; ``threads`` sets torch's thread count
    for the measurement (a rank's share of the cores) and is restored afterwards.
    """
    from course_lib import bench
    from course_lib.parallel.world import World

    cfg = as_config(model_config)
    n = len(bounds)
    old = torch.get_num_threads()
    results = []
    try:
        if threads:
            torch.set_num_threads(int(threads))
        x = batch.input_ids
        for s in range(n):
            stage = make_stage(cfg, World(rank=s, world_size=n), bounds=bounds)
            with torch.no_grad():
                results.append(bench.benchmark(lambda: stage(x), name=f"stage {s}", items=batch.size,
                                               unit="sequences", warmup=warmup, repeat=repeat))
                x = stage(x)
    finally:
        torch.set_num_threads(old)
    return results
