"""Strategy ``split``: the seed's naive model split in ONE process — ``02_parallel_inference.ipynb``.

Parameters are assigned to a list of devices by cumulative size (the first ~1/N of the bytes to
device 0, and so on). A ``TorchDispatchMode`` then intercepts every aten op: it looks at the
(logical) device of each tensor operand, picks the *highest* device index among them, moves the
other operands there and counts each move as a transfer. Only one device works at a time and
every boundary crossing is a synchronous copy — that is why the seed measured 29 QPS on 4 GPUs.

The devices may repeat: ``["cpu", "cpu"]`` runs the same mechanism on one CPU (a "transfer" is then
a real memory copy between logical devices), so its bookkeeping overhead can be measured here.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from course_lib.parallel.base import Runner
from course_lib.parallel.model import build_model

_TAG = "_course_dev"  # logical device index stored on each tensor (a Python attribute)


def tag(t: torch.Tensor, index: int) -> torch.Tensor:
    """Mark ``t`` as living on logical device ``index`` (02)."""
    setattr(t, _TAG, index)
    return t


def logical_device(t: torch.Tensor) -> int | None:
    """The logical device index of ``t``, or ``None`` if it was never placed (02)."""
    return getattr(t, _TAG, None)


def assign_by_size(named_params, n_devices: int) -> dict[str, int]:
    """Device index per parameter name, by cumulative size: bytes [k/N, (k+1)/N) of the total → device k (02)."""
    items = [(name, p.numel()) for name, p in named_params]
    if n_devices < 1:
        raise ValueError(f"need at least one device, got {n_devices}")
    total = sum(n for _, n in items) or 1
    out, cum = {}, 0
    for name, n in items:
        # the device of a parameter is decided by where its first element falls
        out[name] = min(n_devices - 1, cum * n_devices // total)
        cum += n
    return out


class MoveToHighestDevice(TorchDispatchMode):
    """Dispatch mode: run every op on the highest logical device among its tensor operands, counting moves (02).

    ``devices`` maps logical index → torch device string. ``transfers``/``bytes_moved`` count
    operands that had to change logical device; untagged tensors (fresh constants) are taken to be
    on the logical device that matches their physical device first.
    """

    def __init__(self, devices: list[str]):
        super().__init__()
        if not devices:
            raise ValueError("MoveToHighestDevice needs at least one device")
        self.devices = [str(d) for d in devices]
        self.transfers = 0
        self.bytes_moved = 0
        self.ops = 0

    def _index_of(self, t: torch.Tensor) -> int:
        idx = logical_device(t)
        if idx is not None:
            return idx
        phys = str(t.device)
        for i, d in enumerate(self.devices):
            if torch.device(d) == t.device or d == phys:
                return i
        return 0

    def target(self, tensors) -> int:
        """The device index an op over ``tensors`` runs on: the highest index among them (0 if none)."""
        idx = [self._index_of(t) for t in tensors]
        return max(idx) if idx else 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        # list arguments (e.g. torch.cat) hold tensors too
        for a in (*args, *kwargs.values()):
            if isinstance(a, (list, tuple)):
                tensors += [x for x in a if isinstance(x, torch.Tensor)]
        dst = self.target(tensors)
        dst_dev = torch.device(self.devices[dst])

        def move(x):
            if not isinstance(x, torch.Tensor):
                return x
            src = self._index_of(x)
            if src == dst and x.device == dst_dev:
                return x
            self.transfers += 1
            self.bytes_moved += x.numel() * x.element_size()
            # a real copy even when both logical devices are the same physical one
            y = x.to(dst_dev, copy=True)
            return tag(y, dst)

        args, kwargs = tree_map(move, (args, kwargs))
        self.ops += 1
        out = func(*args, **kwargs)

        def mark(x):
            if isinstance(x, torch.Tensor):
                tag(x, dst)
            return x

        return tree_map(mark, out)


def place(model, devices: list[str]) -> dict[str, int]:
    """Move each parameter/buffer of ``model`` to its device by cumulative size and tag it; returns the plan (02)."""
    plan = assign_by_size(list(model.named_parameters()), len(devices))
    with torch.no_grad():
        for name, p in model.named_parameters():
            i = plan[name]
            p.data = p.data.to(devices[i])
            tag(p, i)
            tag(p.data, i)
        # a buffer goes with the module that owns it: the device of that module's first parameter,
        # else the device of the previous parameter seen
        last = 0
        for mod_name, mod in model.named_modules():
            owned = [plan[f"{mod_name}.{n}" if mod_name else n] for n, _ in mod.named_parameters(recurse=False)
                     if (f"{mod_name}.{n}" if mod_name else n) in plan]
            if owned:
                last = owned[0]
            for bname, b in list(mod.named_buffers(recurse=False)):
                nb = b.to(devices[last])
                tag(nb, last)
                setattr(mod, bname, nb)
    return plan


def build(model_config, world, devices: list[str] | None = None) -> Runner:
    """The model split over ``devices`` (default ``world.devices``) run under :class:`MoveToHighestDevice` (02)."""
    devices = list(devices or world.devices)
    model = build_model(model_config)
    plan = place(model, devices)
    mode = MoveToHighestDevice(devices)
    counts = {"per_call_transfers": 0}

    def fn(batch):
        before = mode.transfers
        ids = tag(batch.input_ids.to(devices[0]), 0)
        with mode:
            out = model(input_ids=ids).logits
        counts["per_call_transfers"] = mode.transfers - before
        return out

    def sync():
        if any(d.startswith("cuda") for d in devices):
            torch.cuda.synchronize()

    per_dev = [0] * len(devices)
    for name, p in model.named_parameters():
        per_dev[plan[name]] += p.numel()
    info = {"devices": len(devices), "params_per_device": per_dev, "mode": mode, "counts": counts}
    return Runner("split", world, fn, modules=[model], sync=sync, info=info)
