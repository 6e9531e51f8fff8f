"""Weight-only int8 / int4 quantization of linear layers, Baichuan's scheme (notebook 03).

Baichuan-13B ships a ``quantizer.py`` whose ``QLinear`` does, per output row ``i`` of a weight W::

    scale[i] = max_j |W[i, j]| / (2**(bits-1) - 1)        # float32; 127 for int8, 7 for int4
    q[i, j]  = round(W[i, j] / scale[i])                   # int8 in [-127, 127], int4 in [-8, 7]
    forward(x) = x @ (q * scale).T                         # dequantise, then an ordinary matmul

This module implements that scheme, plus one extension (``group_size``): one scale per group of
``group_size`` consecutive input columns instead of one per row, which is what GPTQ/AWQ/llama.cpp do
and what rescues int4 quality.

One deliberate difference from the seed: we compute ``absmax / qmax`` and ``round(W / scale)`` in
float32 whatever the weight's dtype. Baichuan does both in the weight's own dtype (fp16/bf16 in its
checkpoints), so for fp16/bf16 weights a few percent of the codes differ from the seed's by one
step (in float32 the quotient is rounded less before ``round``). For float32 weights the two agree
exactly. ``tests/test_l3_llm.py`` checks both statements.

Storage
-------
* int8: one ``int8`` per weight. Baichuan's seed stores it transposed (``weight.T``, shape
  in × out) so that ``torch.matmul(x, W)`` needs no transpose. We keep nn.Linear's (out, in) layout
  instead and call ``F.linear``: a BLAS GEMM reads a transposed operand for free, the per-row scale
  broadcasts as ``scale[:, None]``, and the state dict keeps the familiar shape. Memory is identical.
* int4: values in [-8, 7] as 4-bit two's complement nibbles, 8 per ``int32`` along the input
  dimension (so ``in_features`` must be a multiple of 8): column ``8c + n`` sits in bits
  ``4n .. 4n+3`` of word ``c``. Packing is vectorised (shift and sum over the 8 nibbles),
  unpacking is exact.

Which layers
------------
:func:`quantize_model` works on any torch model: it replaces ``nn.Linear`` modules chosen by glob patterns over
their names (default: all but the output head), so Baichuan's ``W_pack`` layout is one case and a transformers
``LlamaForCausalLM`` needs no conversion. :func:`select_linears` previews the choice.

The forward dequantises the whole weight to the input's dtype every call and then does a normal
matmul. That saves memory, not time: on a CPU (or a GPU without a fused kernel) it is *slower*
than the float layer. A fused kernel (cpm_kernels in Baichuan, Marlin/ExLlama on GPUs) would
unpack tiles inside the GEMM and win because decoding is memory-bound.
"""

from __future__ import annotations

import fnmatch
import operator

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_BITS = (4, 8)
# what quantize_model replaces by default in each BaichuanForCausalLM layer (every Linear but the head)
TARGET_NAMES = ("self_attn.W_pack", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int64)  # nibble n lives at bit 4n


# ----------------------------------------------------------------------------------------------
# argument checks (the public functions call these, then the small teachable cores below)


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    return int(bits)


def _check_weight(weight, what: str = "weight") -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor (out_features, in_features), got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"{what} must be a 2-D tensor (out_features, in_features), got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"{what} must be a float tensor to quantize, got {weight.dtype}")
    bad = int((~torch.isfinite(weight.detach())).sum())
    if bad:
        raise ValueError(f"{what} has {bad} NaN/inf value(s): the scale would be NaN/inf and so would every output; "
                         "fix the weights before quantizing")
    return weight


def _check_group_size(group_size, in_features: int) -> int | None:
    if group_size is None:
        return None
    if isinstance(group_size, bool):
        raise TypeError("group_size must be an int or None, got a bool")
    try:
        g = operator.index(group_size)  # accepts int and numpy integers, rejects 64.0
    except TypeError:
        raise TypeError(f"group_size must be an int or None, got {type(group_size).__name__} {group_size!r}") from None
    if g <= 0:
        raise ValueError(f"group_size must be a positive int or None, got {g}")
    if in_features % g:
        raise ValueError(f"group_size {g} must divide in_features {in_features} "
                         f"(e.g. {', '.join(str(d) for d in (32, 64, 128) if in_features % d == 0) or 'a divisor'})")
    return g


def _check_bias(bias, out_features: int) -> torch.Tensor | None:
    if bias is None:
        return None
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias must be a torch.Tensor of shape ({out_features},) or None, got {type(bias).__name__}")
    if tuple(bias.shape) != (out_features,):
        raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
    if not bias.is_floating_point():
        raise TypeError(f"bias must be a float tensor, got {bias.dtype}")
    return bias


def qmax(bits: int) -> int:
    """Largest quantized magnitude used by the scale: 2**(bits-1) - 1 (127 for int8, 7 for int4)."""
    return 2 ** (_check_bits(bits) - 1) - 1


# ----------------------------------------------------------------------------------------------
# scales and integer weights


def _absmax_scale(w: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    """The core: max |w| over each row (or each group of consecutive columns) / qmax, in float32."""
    w = w.detach().to(torch.float32)
    if group_size is not None:
        w = w.reshape(w.shape[0], -1, group_size)  # (out, groups, group_size): consecutive input columns
    amax = w.abs().amax(dim=-1)  # (out,) per row, or (out, groups) per group
    # an all-zero row/group would give scale 0 and 0/0 = nan; any positive scale represents it exactly
    amax = torch.where(amax == 0, torch.ones_like(amax), amax)
    return amax / qmax(bits)


def compute_scale(weight: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """float32 scales: absmax / (2**(bits-1)-1) per output row (out,), or per row and group (out, in/group)."""
    bits = _check_bits(bits)
    weight = _check_weight(weight)
    return _absmax_scale(weight, bits, _check_group_size(group_size, weight.shape[1]))


def _round_to_grid(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """The core: round(w / scale) with the row's (or group's) scale, clipped to the signed range, as int8."""
    w, s = w.detach().to(torch.float32), scale.to(torch.float32)
    out_f, in_f = w.shape
    if s.dim() == 1:
        q = torch.round(w / s[:, None])  # one scale per output row
    else:
        q = torch.round(w.view(out_f, s.shape[1], -1) / s[:, :, None]).view(out_f, in_f)  # per group
    return q.clamp_(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1).to(torch.int8)


def quantize_weight(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer weights (int8 tensor, same shape): round(W / scale), clipped to the bits' range."""
    bits = _check_bits(bits)
    weight = _check_weight(weight)
    out_f, in_f = weight.shape
    if not isinstance(scale, torch.Tensor) or not scale.is_floating_point():
        raise TypeError(f"scale must be a float tensor, got {getattr(scale, 'dtype', type(scale).__name__)}")
    if scale.dim() == 1:
        ok = scale.shape[0] == out_f
    else:
        ok = scale.dim() == 2 and scale.shape[0] == out_f and scale.shape[1] > 0 and in_f % scale.shape[1] == 0
    if not ok:
        raise ValueError(f"scale must have shape ({out_f},) (per row) or ({out_f}, groups) with groups dividing "
                         f"{in_f} (per group) for a weight of shape {tuple(weight.shape)}, got {tuple(scale.shape)}")
    if not (torch.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError("scale must be positive and finite everywhere (use compute_scale)")
    return _round_to_grid(weight, scale, bits)


# ----------------------------------------------------------------------------------------------
# int4 packing: 8 nibbles per int32


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """The core of :func:`pack_int4`: (rows, cols) ints in [-8, 7] → int32 (rows, cols // 8)."""
    rows, cols = q.shape
    nib = (q.to(torch.int64) & 0xF).view(rows, cols // 8, 8)  # 4-bit two's complement: -1 → 0xF
    words = (nib << _SHIFTS.to(q.device)).sum(dim=-1)  # column 8c+n → bits 4n..4n+3 of word c
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # the same 32 bits, signed


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int values in [-8, 7] of shape (rows, cols), cols % 8 == 0, into int32 (rows, cols // 8)."""
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"pack_int4 expects a torch.Tensor, got {type(q).__name__}")
    if q.dim() != 2:
        raise ValueError(f"pack_int4 expects a 2-D tensor, got shape {tuple(q.shape)}")
    if q.shape[1] % 8:
        raise ValueError(f"int4 packing needs the number of columns to be a multiple of 8, got {q.shape[1]}")
    if q.is_floating_point() or q.dtype == torch.bool:
        raise TypeError(f"pack_int4 expects integer values (quantize first), got {q.dtype}")
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
        raise ValueError("int4 values must lie in [-8, 7]")
    return _pack_nibbles(q)


def _unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The core of :func:`unpack_int4`: two shifts per value, all in int32."""
    left = (28 - _SHIFTS).to(torch.int32).to(packed.device)  # move nibble n to the top 4 bits ...
    return ((packed[:, :, None] << left) >> 28).flatten(1)  # ... an arithmetic >> 28 sign-extends it


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`pack_int4`: int32 (rows, cols // 8) → int32 (rows, cols) in [-8, 7]."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.int32:
        raise TypeError(f"unpack_int4 expects int32 words, got {getattr(packed, 'dtype', type(packed).__name__)}")
    if packed.dim() != 2:
        raise ValueError(f"unpack_int4 expects a 2-D tensor of words, got shape {tuple(packed.shape)}")
    return _unpack_nibbles(packed)


# ----------------------------------------------------------------------------------------------
# the layer


class QLinear(nn.Module):
    """A Linear whose weight is stored as int8 or packed int4 with scales; dequantises in forward (notebook 03).

    Scales are computed in float32 for any weight dtype (Baichuan computes them in the weight's dtype;
    see the module docstring for what that changes).
    """

    def __init__(self, bits: int, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 group_size: int | None = None, scale_dtype: torch.dtype | None = None):
        super().__init__()
        bits = _check_bits(bits)
        weight = _check_weight(weight)
        out_f, in_f = weight.shape
        if bits == 4 and in_f % 8:
            raise ValueError(f"int4 packs 8 values per int32: in_features must be a multiple of 8, got {in_f}")
        group_size = _check_group_size(group_size, in_f)
        bias = _check_bias(bias, out_f)
        self.bits, self.group_size = bits, group_size
        self.in_features, self.out_features = in_f, out_f
        # the seed keeps float32 per-row scales; grouped scales are many more, so fp16 like GPTQ/llama.cpp
        if scale_dtype is None:
            scale_dtype = torch.float32 if group_size is None else torch.float16
        scale = _absmax_scale(weight, bits, group_size).to(scale_dtype)
        q = _round_to_grid(weight, scale, bits)  # against the scale actually stored
        self.register_buffer("scale", scale)
        self.register_buffer("weight", q if bits == 8 else _pack_nibbles(q))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.kernel, self._kernel_impl = "reference", None

    def set_kernel(self, kernel: str = "reference", threads: int | None = None) -> "QLinear":
        """Choose the forward kernel: 'reference' (dequantise, then matmul) or 'fast' (see course_lib.llm.fast)."""
        from course_lib.llm.fast import make_kernel

        self._kernel_impl = make_kernel(self, kernel, threads)  # ValueError for an unsupported kernel/format
        self.kernel = kernel
        return self

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int | None = None) -> "QLinear":
        """Quantize an existing nn.Linear (weight and bias)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected nn.Linear, got {type(linear).__name__}")
        return cls(bits, linear.weight, linear.bias, group_size=group_size)

    def int_weight(self) -> torch.Tensor:
        """The integer weights (out, in): int8 for int8, int32 values in [-8, 7] for int4."""
        return self.weight if self.bits == 8 else _unpack_nibbles(self.weight)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight (out, in) that forward multiplies by: q * scale."""
        q, s = self.int_weight().to(torch.float32), self.scale.to(torch.float32)
        if self.group_size is None:
            w = q * s[:, None]  # one scale per output row
        else:
            w = (q.view(self.out_features, -1, self.group_size) * s[:, :, None]).view_as(q)  # one per group
        return w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"QLinear input must be a float tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            got = "a 0-d tensor" if x.dim() == 0 else f"{x.shape[-1]} features"
            raise ValueError(f"QLinear input must have shape (..., {self.in_features}), got {got}")
        if self._kernel_impl is not None:  # a fast kernel reading the packed codes (course_lib.llm.fast)
            return self._kernel_impl(x)
        # the seed's design: rebuild the float weight every call, then an ordinary matmul
        return F.linear(x, self.dequantize(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def nbytes(self) -> int:
        """Bytes of the stored weight + scales (+ bias)."""
        n = self.weight.nbytes + self.scale.nbytes
        return n + (self.bias.nbytes if self.bias is not None else 0)

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.group_size else ""
        k = f", kernel={self.kernel}" if self.kernel != "reference" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{g}{k}"


# ----------------------------------------------------------------------------------------------
# the whole model: choose the linears by name, check everything, then swap them all at once


def _patterns(value, what: str) -> tuple[str, ...]:
    """A glob pattern or a list of them → tuple of patterns; TypeError for anything else."""
    if value is None:
        return ()
    pats = (value,) if isinstance(value, str) else value
    try:
        pats = tuple(pats)
    except TypeError:
        raise TypeError(f"{what} must be a glob pattern or a list of them (e.g. '*.mlp.*'), "
                        f"got {type(value).__name__}") from None
    if not pats or not all(isinstance(p, str) and p for p in pats):
        raise TypeError(f"{what} must be non-empty glob pattern strings (e.g. '*.mlp.*'), got {value!r}")
    return pats


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def output_head_names(model: nn.Module) -> set[str]:
    """Module names of the output head: ``get_output_embeddings()``, a module called ``lm_head``, or a Linear
    sharing an embedding's weight (tied). :func:`quantize_model` leaves these float unless ``lm_head`` says otherwise."""
    named = dict(model.named_modules())
    heads = {n for n in named if n.rsplit(".", 1)[-1] == "lm_head"}
    get = getattr(model, "get_output_embeddings", None)
    out = get() if callable(get) else None  # transformers' models name their head this way
    heads |= {n for n, m in named.items() if out is not None and m is out}
    embeddings = {id(m.weight) for m in named.values() if isinstance(m, nn.Embedding)}
    heads |= {n for n, m in named.items() if isinstance(m, nn.Linear) and id(m.weight) in embeddings}
    return heads


def _linear_slots(model: nn.Module) -> dict[str, tuple[nn.Linear, list]]:
    """{name: (linear, [(parent, attribute), ...])} for every nn.Linear; a module shared by two parents has two slots."""
    slots: dict[str, tuple[nn.Linear, list]] = {}
    first: dict[int, str] = {}
    for pname, parent in model.named_modules(remove_duplicate=False):
        for attr, child in parent._modules.items():  # not named_children(): it hides a child's second slot
            if isinstance(child, nn.Linear):
                name = first.setdefault(id(child), f"{pname}.{attr}" if pname else attr)
                where = slots.setdefault(name, (child, []))[1]
                if not any(p is parent and a == attr for p, a in where):
                    where.append((parent, attr))
    return slots


def select_linears(model: nn.Module, include=None, exclude=None) -> list[str]:
    """Names of the nn.Linear modules :func:`quantize_model` replaces (same filters; the output head never)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.Linear):
        raise TypeError("model is a single nn.Linear, which cannot be replaced in place: "
                        "use QLinear.from_linear(layer, bits) instead")
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    names, heads = list(_linear_slots(model)), output_head_names(model)
    for what, pats in (("include", inc), ("exclude", exc)):
        for p in pats:  # a pattern that matches nothing is a typo: say so instead of quantizing something else
            hits = [n for n in names if fnmatch.fnmatchcase(n, p)]
            if not hits:
                shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "") if names else "none"
                raise ValueError(f"{what} pattern {p!r} matches no nn.Linear (globs over module names; "
                                 f"this model's linears: {shown})")
            if what == "include" and set(hits) <= heads:
                raise ValueError(f"include pattern {p!r} matches only the output head {sorted(hits)}: "
                                 "quantize the head with lm_head=True (same format) or lm_head=8")
    return [n for n in names if n not in heads and (not inc or _matches(n, inc)) and not _matches(n, exc)]


def _head_format(lm_head, bits: int, group_size):
    """(bits, group_size) of the output head, or None to keep it float."""
    if lm_head is False or lm_head is None:
        return None
    if lm_head is True:
        return bits, group_size
    if isinstance(lm_head, bool) or lm_head not in SUPPORTED_BITS:
        raise ValueError(f"lm_head must be False (keep it float), True (same format as the other layers), "
                         f"8 or 4 (that many bits, per row), got {lm_head!r}")
    return int(lm_head), None


def _check_layer(name: str, linear: nn.Linear, bits: int, group_size, kernel: str, fast) -> None:
    """Every check QLinear(...).set_kernel(kernel) would make for this layer, named after it."""
    try:
        in_f = linear.in_features
        if kernel == "fast":
            fast.check_fast_config(bits, group_size, in_f)  # names the formats the fast kernel supports
        _check_group_size(group_size, in_f)
        if bits == 4 and in_f % 8:
            raise ValueError(f"int4 packs 8 values per int32: in_features must be a multiple of 8, got {in_f}")
        _check_weight(linear.weight)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{name}: {e}") from None


def _plan(model, bits, group_size, include, exclude, kernel, lm_head) -> dict:
    """{name: (linear, bits, group_size, slots)} of the layers to replace; raises before anything is changed."""
    from course_lib.llm import fast

    bits = _check_bits(bits)
    chosen = select_linears(model, include, exclude)
    if kernel not in fast.KERNELS:
        raise ValueError(f"kernel must be one of {fast.KERNELS}, got {kernel!r}")
    if kernel == "fast":
        fast.require_cpu(model)  # before any weight is read: .numpy() on a device tensor would fail half-way
    head = _head_format(lm_head, bits, group_size)
    if getattr(model, "quantized_bits", None):
        raise RuntimeError(f"model is already quantized (int{model.quantized_bits}); quantizing twice would compound "
                           "the error. Load a fresh float model and call quantize() once.")
    slots = _linear_slots(model)
    plan = {name: (slots[name][0], bits, group_size, slots[name][1]) for name in chosen}
    if head is not None:
        heads = [n for n in slots if n in output_head_names(model)]
        if not heads:
            raise ValueError("lm_head was asked for, but the model has no nn.Linear output head (get_output_embeddings(), "
                             "lm_head, or a Linear tied to an embedding)")
        plan.update({n: (slots[n][0], *head, slots[n][1]) for n in heads})
    if not plan:
        what = "left to quantize" if any(isinstance(m, QLinear) for m in model.modules()) else "to quantize"
        raise ValueError(f"no nn.Linear {what} in {type(model).__name__} (the output head is kept unless lm_head=...)")
    for name, (linear, b, g, _) in plan.items():
        _check_layer(name, linear, b, g, kernel, fast)
    return plan


@torch.no_grad()
def quantize_model(model, bits: int, group_size: int | None = None, *, include=None, exclude=None,
                   kernel: str = "reference", lm_head=False):
    """Replace a model's nn.Linear layers by QLinear(bits, group_size) in place; returns the model (notebook 03).

    Works on any torch model (Baichuan's ``W_pack`` layout, a transformers LLaMA, your own MLP). Default: every
    nn.Linear except the output head (``get_output_embeddings()`` / ``lm_head`` / a Linear tied to an embedding),
    so on a BaichuanForCausalLM exactly W_pack, o_proj, gate/up/down_proj. ``include`` / ``exclude``: a glob
    pattern or a list of them (``fnmatch``, as optimum-quanto's filters) over the names of ``model.named_modules()``,
    e.g. ``include="*.mlp.*"``, ``exclude=["*.o_proj", "model.layers.0.*"]``; a pattern matching nothing is an error.
    ``kernel``: 'reference' (dequantise, then matmul: the seed's) or 'fast' (course_lib.llm.fast).
    ``lm_head=True`` also quantizes the head in the same format, ``lm_head=8`` (or 4) in that many bits per row;
    embedding tables stay float. Every argument and layer is checked, and every QLinear built, before the first
    layer is swapped in: a call that raises leaves the model as it was.
    """
    plan = _plan(model, bits, group_size, include, exclude, kernel, lm_head)
    new = {name: QLinear.from_linear(linear, b, group_size=g).set_kernel(kernel)
           for name, (linear, b, g, _) in plan.items()}
    for name, (_, _, _, slots) in plan.items():  # all built: now swap them in
        for parent, attr in slots:
            setattr(parent, attr, new[name])
    model.quantized_bits = int(bits)
    model.quantized_group_size = group_size
    return model


def linear_weight_bytes(model, fp_bytes: int = 2) -> int:
    """Bytes of the linears but the output head: QLinear's real storage, or numel × fp_bytes for float ones (fp16 = 2)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch nn.Module, got {type(model).__name__}")
    heads = output_head_names(model)
    total = 0
    for name, mod in model.named_modules():
        if name in heads:
            continue
        if isinstance(mod, QLinear):
            total += mod.nbytes()
        elif isinstance(mod, nn.Linear):
            total += sum(p.numel() for p in mod.parameters()) * fp_bytes
    return total
