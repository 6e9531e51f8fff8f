"""What every strategy module returns: a callable on a batch plus what the benchmark needs to know (02)."""

from __future__ import annotations

from typing import Callable


class Runner:
    """Callable on a :class:`~course_lib.parallel.model.Batch`; returns this rank's logits or ``None`` (02).

    ``rows(batch_size)`` says which rows of the global batch the returned logits are (data-parallel
    strategies return their own slice), ``sync()`` waits until this rank's work (and every rank) is
    done, and ``info`` carries strategy facts for the results table (layers per stage, transfers...).
    """

    def __init__(self, name: str, world, fn: Callable, *, modules=(), info: dict | None = None,
                 rows: Callable[[int], slice] | None = None, sync: Callable[[], None] | None = None):
        self.name = name
        self.world = world
        self._fn = fn
        self._modules = list(modules)
        self.info = dict(info or {})
        self._rows = rows
        self._sync = sync

    def __call__(self, batch):
        import torch

        with torch.no_grad():
            return self._fn(batch)

    def rows(self, batch_size: int) -> slice:
        """Rows of a global batch of ``batch_size`` that this rank's output holds."""
        return self._rows(batch_size) if self._rows else slice(0, batch_size)

    def sync(self) -> None:
        """Block until this rank's queued work (and, for collectives, every rank) is done."""
        if self._sync is not None:
            self._sync()
        else:
            self.world.sync()

    def local_param_mib(self) -> float:
        """MiB of parameters this rank holds (local shards for DTensor/FSDP parameters)."""
        seen, total = set(), 0
        for m in self._modules:
            for p in m.parameters():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                t = p.to_local() if hasattr(p, "to_local") else p
                total += t.numel() * t.element_size()
        return total / 2**20
