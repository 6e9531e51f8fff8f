"""A stand-in CUDA device on a CPU machine, strict about where tensors live (used by test_gpu_rehearsal.py).

Inside :func:`fake_cuda` a tensor moved to ``"cuda"`` (``.to("cuda")``, ``.cuda()``, ``Module.to``, a factory
with ``device="cuda"``) stays a CPU tensor underneath but is an :class:`OnDevice` — it says ``device cuda:0``
and behaves like a CUDA tensor where device bugs hide:

- an op that mixes an ``OnDevice`` tensor with a CPU tensor of one or more dimensions raises, as CUDA does
  ("Expected all tensors to be on the same device") — e.g. CPU token ids into a model moved to the GPU;
  CPU scalars (0-d) and CPU index tensors in ``x[idx]`` are allowed, as on CUDA;
- ``.numpy()`` (and so ``np.asarray``) on an ``OnDevice`` tensor raises, as for a CUDA tensor;
- ``.cpu()`` / ``.to("cpu")`` give back a plain CPU tensor.

So the gpu profile's code paths run here, and the two classic GPU-only bugs fail here rather than on the GPU.
``torch.cuda.synchronize`` is a no-op while it is active (``torch.cuda.is_available()`` stays False: pass the
device explicitly, as the notebooks pass ``hw.device()``).
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

FAKE = torch.device("cuda", 0)


class DeviceMismatch(RuntimeError):
    pass


def _is_fake(dev) -> bool:
    if dev is None:
        return False
    if isinstance(dev, int):
        return True  # .to(0) / .cuda(0)
    try:
        return torch.device(dev).type == "cuda"
    except (RuntimeError, TypeError):
        return False


def _is_cpu(dev) -> bool:
    try:
        return dev is not None and not isinstance(dev, int) and torch.device(dev).type == "cpu"
    except (RuntimeError, TypeError):
        return False


def _plain(t):
    return t.as_subclass(torch.Tensor) if isinstance(t, OnDevice) else t


def _wrap(t):
    return t.as_subclass(OnDevice) if isinstance(t, torch.Tensor) and not isinstance(t, OnDevice) else t


_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.index_select, torch.index_select}
# ops that take tensors on two devices on real CUDA too: cross-device copies, module-conversion bookkeeping
_MIXED_OK = {torch.Tensor.copy_, torch.Tensor.set_, torch.Tensor.module_load, torch._has_compatible_shallow_copy_type}
_KEEPS_SELF_DEVICE = {torch.Tensor.copy_, torch.Tensor.module_load}  # the result lives where ``self`` lives
_NO_WRAP = {torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__len__,
            torch.Tensor.dim, torch.Tensor.size, torch.Tensor.numel, torch.Tensor.__repr__, torch.Tensor.__format__}


def _getter_name(func) -> str | None:
    if getattr(func, "__name__", None) == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", None)
    return None


class OnDevice(torch.Tensor):
    """A CPU tensor standing for one on ``cuda:0`` (see the module docstring)."""

    def __deepcopy__(self, memo):
        with torch._C.DisableTorchFunctionSubclass():
            new = _wrap(_plain(self).detach().clone())
        new.requires_grad_(self.requires_grad)
        if getattr(self, "_is_param", False):  # a parameter on the device stays one (see torch.nn.Parameter)
            new._is_param = True
        memo[id(self)] = new
        return new

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _getter_name(func)
        if name == "device":
            return FAKE
        if name == "is_cuda":
            return True
        if func in (torch.Tensor.numpy, torch.Tensor.__array__):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                            "to host memory first. (fake CUDA device of the gpu-profile rehearsal)")
        if func is torch.Tensor.cpu:
            with torch._C.DisableTorchFunctionSubclass():
                return _plain(args[0]).clone()
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        host = [t for t in tensors if not isinstance(t, OnDevice) and t.dim() > 0 and t.device.type == "cpu"]
        if host and func not in _INDEXING and func not in _MIXED_OK and name is None:
            shapes = ", ".join(str(tuple(t.shape)) for t in host[:3])
            raise DeviceMismatch(f"Expected all tensors to be on the same device, but found at least two devices, "
                                 f"cuda:0 and cpu! ({getattr(func, '__name__', func)} got CPU tensors of shape {shapes}; "
                                 "fake CUDA device of the gpu-profile rehearsal)")
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        if func is torch._has_compatible_shallow_copy_type:
            return out
        if func in _KEEPS_SELF_DEVICE and not isinstance(args[0], OnDevice):
            return tree_map(_plain, out)
        if func in _NO_WRAP or name in ("grad_fn", "shape", "dtype", "requires_grad", "is_leaf"):
            return out
        return tree_map(_wrap, out) if not isinstance(out, torch.Tensor) else _wrap(out)


class _Mode(TorchFunctionMode):
    """Redirects every move to ``cuda`` onto the CPU, as :class:`OnDevice`; moves to ``cpu`` unwrap."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return _wrap(_plain(args[0]).clone())
        if func is torch.Tensor.to:
            rest = list(args[1:])
            if "device" in kwargs:
                dev = kwargs["device"]
                where = "kw"
            elif rest and isinstance(rest[0], (str, torch.device, int)):
                dev, where = rest[0], 0
            elif rest and isinstance(rest[0], torch.Tensor):  # .to(other): its device and dtype
                other = rest.pop(0)
                dev, where = other.device, "kw"
                kwargs["device"], kwargs["dtype"] = other.device, other.dtype
            else:
                dev, where = None, None
            if _is_fake(dev) or _is_cpu(dev):
                if where == "kw":
                    kwargs["device"] = "cpu"
                else:
                    rest[0] = "cpu"
                src = _plain(args[0])
                out = func(src, *rest, **kwargs)
                if _is_cpu(dev):
                    return out.clone() if isinstance(args[0], OnDevice) and out is src else out
                return _wrap(out.clone() if out is src and not isinstance(args[0], OnDevice) else out)
            return func(args[0], *rest, **kwargs)
        if "device" in kwargs and _is_fake(kwargs["device"]):
            kwargs["device"] = "cpu"
            return tree_map(_wrap, func(*args, **kwargs))
        return func(*args, **kwargs)


class ScriptOnDevice:
    """A TorchScript module loaded with ``map_location="cuda"``: takes device inputs only, returns device outputs."""

    def __init__(self, module):
        self.module = module

    def eval(self):
        self.module.eval()
        return self

    def __call__(self, *args):
        flat, _ = tree_flatten(args)
        host = [t for t in flat if isinstance(t, torch.Tensor) and not isinstance(t, OnDevice) and t.dim() > 0]
        if host:
            raise DeviceMismatch("Expected all tensors to be on the same device, but found at least two devices, "
                                 "cuda:0 and cpu! (CPU inputs into a TorchScript module loaded on cuda:0)")
        with torch._C.DisableTorchFunctionSubclass():
            out = self.module(*tree_map(_plain, args))
        return tree_map(_wrap, out)


@contextlib.contextmanager
def fake_cuda(available: bool = False):
    """Run the body with the fake CUDA device (module parameters are swapped, so ``Module.to`` moves them).

    ``available=True`` also makes ``torch.cuda.is_available()`` true and ``device_count()`` 1, for code that
    checks before it moves (nothing that needs real CUDA calls, such as CUDA events, may run then).
    """
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    saved = {n: getattr(torch.cuda, n) for n in ("synchronize", "is_available", "device_count")}
    torch.cuda.synchronize = lambda *a, **k: None
    if available:
        torch.cuda.is_available, torch.cuda.device_count = (lambda: True), (lambda: 1)
    jit_load = torch.jit.load

    def load(f, map_location=None, **kw):  # a CPU build refuses map_location="cuda": load here, stand in for it
        if _is_fake(map_location):
            return ScriptOnDevice(jit_load(f, map_location="cpu", **kw))
        return jit_load(f, map_location=map_location, **kw)

    torch.jit.load = load
    try:
        with _Mode():
            yield
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
        torch.jit.load = jit_load
        for n, f in saved.items():
            setattr(torch.cuda, n, f)


def on_fake_device(t) -> bool:
    return isinstance(t, OnDevice)
