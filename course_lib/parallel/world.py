"""Who am I in the job: rank, world size, device and backend; process-group set-up with timeouts (02)."""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field


class WorldSizeError(ValueError):
    """Asked for more ranks or devices than this machine has (02)."""


class StrategyUnavailable(RuntimeError):
    """A strategy cannot run here (missing package or GPU); the message says why (02)."""


@dataclass
class World:
    """This process's place in the job (``torchrun`` environment) and its device(s) (02).

    ``devices`` is the device list of a single-process strategy (``split``); for the distributed
    strategies it is ``[device]``.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"
    device: str = "cpu"
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    timeout_s: float = 120.0

    @property
    def is_cuda(self) -> bool:
        """True when this rank computes on a CUDA device."""
        return self.device.startswith("cuda")

    def sync(self) -> None:
        """Wait for this rank's device work, then for every rank (a barrier); no-op when alone.

        On gloo the barrier is ``monitored_barrier``: past ``timeout_s`` it raises an error that
        names the ranks that never arrived.
        """
        import torch

        if self.is_cuda:
            torch.cuda.synchronize()
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "gloo":  # names the ranks that did not arrive when it times out
                dist.monitored_barrier(timeout=_dt.timedelta(seconds=self.timeout_s), wait_all_ranks=True)
            else:
                dist.barrier()


def init_world(timeout_s: float = 120.0, backend: str | None = None) -> World:
    """Join the process group described by torchrun's environment, with a timeout on every collective (02).

    Backend: ``nccl`` when CUDA is available, else ``gloo`` (or ``backend``). A collective that waits
    longer than ``timeout_s`` raises instead of hanging.
    """
    import torch
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    from course_lib import hw

    if backend is None:
        backend = "nccl" if hw.device().startswith("cuda") else "gloo"
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise WorldSizeError(
                f"rank {rank} (local rank {local_rank}) has no GPU: only {torch.cuda.device_count()} found"
            )
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    if "MASTER_ADDR" in os.environ and not dist.is_initialized():
        kw = dict(backend=backend, timeout=_dt.timedelta(seconds=timeout_s), rank=rank, world_size=world_size)
        if backend == "nccl":
            kw["device_id"] = torch.device(device)
        dist.init_process_group(**kw)
    return World(rank, world_size, local_rank, backend, device, [device], timeout_s)


def device_mesh(world: World):
    """A 1-D ``DeviceMesh`` over all ranks of ``world`` (for FSDP2 and tensor parallel) (02)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cuda" if world.is_cuda else "cpu", (world.world_size,))
