"""Weight-only int8 / int4 quantization of linear layers, Baichuan's scheme (notebook 03).

Baichuan-13B ships a ``quantizer.py`` whose ``QLinear`` does, per output row ``i`` of a weight W::

    scale[i] = max_j |W[i, j]| / (2**(bits-1) - 1)        # float32; 127 for int8, 7 for int4
    q[i, j]  = round(W[i, j] / scale[i])                   # int8 in [-127, 127], int4 in [-8, 7]
    forward(x) = x @ (q * scale).T                         # dequantise, then an ordinary matmul

This module implements exactly that, plus one extension (``group_size``): one scale per group of
``group_size`` consecutive input columns instead of one per row, which is what GPTQ/AWQ/llama.cpp do
and what rescues int4 quality.

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

The forward dequantises the whole weight to the input's dtype every call and then does a normal
matmul. That saves memory, not time: on a CPU (or a GPU without a fused kernel) it is *slower*
than the float layer. A fused kernel (cpm_kernels in Baichuan, Marlin/ExLlama on GPUs) would
unpack tiles inside the GEMM and win because decoding is memory-bound.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_BITS = (4, 8)
TARGET_NAMES = ("self_attn.W_pack", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int64)  # nibble n lives at bit 4n


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    return int(bits)


def qmax(bits: int) -> int:
    """Largest quantized magnitude used by the scale: 2**(bits-1) - 1 (127 for int8, 7 for int4)."""
    return 2 ** (_check_bits(bits) - 1) - 1


def compute_scale(weight: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """float32 scales: absmax / (2**(bits-1)-1) per output row (out,), or per row and group (out, in/group)."""
    w = weight.detach().to(torch.float32)
    if group_size is None:
        amax = w.abs().amax(dim=-1)
    else:
        out_f, in_f = w.shape
        amax = w.view(out_f, in_f // group_size, group_size).abs().amax(dim=-1)
    # an all-zero row would give scale 0 and 0/0 = nan; any positive scale represents it exactly
    amax = torch.where(amax == 0, torch.ones_like(amax), amax)
    return amax / qmax(bits)


def quantize_weight(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer weights (int8 tensor, same shape): round(W / scale), clipped to the bits' range."""
    bits = _check_bits(bits)
    w = weight.detach().to(torch.float32)
    out_f, in_f = w.shape
    if scale.dim() == 1:
        q = torch.round(w / scale[:, None])
    else:
        groups = scale.shape[1]
        q = torch.round(w.view(out_f, groups, in_f // groups) / scale.to(torch.float32)[:, :, None]).view(out_f, in_f)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return q.clamp_(lo, hi).to(torch.int8)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int values in [-8, 7] of shape (rows, cols), cols % 8 == 0, into int32 (rows, cols // 8)."""
    if q.dim() != 2:
        raise ValueError(f"pack_int4 expects a 2-D tensor, got shape {tuple(q.shape)}")
    rows, cols = q.shape
    if cols % 8:
        raise ValueError(f"int4 packing needs the number of columns to be a multiple of 8, got {cols}")
    if q.is_floating_point():
        raise TypeError("pack_int4 expects integer values (quantize first)")
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
        raise ValueError("int4 values must lie in [-8, 7]")
    nib = (q.to(torch.int64) & 0xF).view(rows, cols // 8, 8)       # two's complement nibble
    words = (nib << _SHIFTS.to(q.device)).sum(dim=-1)               # 0 .. 2**32-1, no overlaps
    words = torch.where(words >= 2**31, words - 2**32, words)        # reinterpret as signed int32
    return words.to(torch.int32)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`pack_int4`: int32 (rows, cols // 8) → int32 (rows, cols) in [-8, 7]."""
    if packed.dtype != torch.int32:
        raise TypeError(f"unpack_int4 expects int32 words, got {packed.dtype}")
    rows, words = packed.shape
    # move nibble n to the top 4 bits (shift left by 28 - 4n), then an arithmetic shift right by 28
    # brings it back down sign-extended: two ops per value, all in int32
    left = (28 - _SHIFTS).to(torch.int32).to(packed.device)
    return ((packed[:, :, None] << left) >> 28).view(rows, words * 8)


class QLinear(nn.Module):
    """A Linear whose weight is stored as int8 or packed int4 with float32 scales; dequantises in forward (notebook 03)."""

    def __init__(self, bits: int, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 group_size: int | None = None, scale_dtype: torch.dtype | None = None):
        super().__init__()
        bits = _check_bits(bits)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError("weight must be a 2-D tensor (out_features, in_features)")
        if not weight.is_floating_point():
            raise TypeError(f"weight must be a float tensor to quantize, got {weight.dtype}")
        out_f, in_f = weight.shape
        if bits == 4 and in_f % 8:
            raise ValueError(f"int4 packs 8 values per int32: in_features must be a multiple of 8, got {in_f}")
        if group_size is not None:
            if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
                raise ValueError(f"group_size must be a positive int or None, got {group_size!r}")
            if in_f % group_size:
                raise ValueError(f"group_size {group_size} must divide in_features {in_f}")
        if bias is not None and bias.shape != (out_f,):
            raise ValueError(f"bias must have shape ({out_f},), got {tuple(bias.shape)}")
        self.bits, self.group_size = bits, group_size
        self.in_features, self.out_features = in_f, out_f
        # the seed keeps float32 per-row scales; grouped scales are many more, so fp16 like GPTQ/llama.cpp
        if scale_dtype is None:
            scale_dtype = torch.float32 if group_size is None else torch.float16
        scale = compute_scale(weight, bits, group_size).to(scale_dtype)
        q = quantize_weight(weight, scale, bits)  # against the scale actually stored
        self.register_buffer("scale", scale)
        self.register_buffer("weight", q if bits == 8 else pack_int4(q))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.kernel, self._kernel_impl = "reference", None

    def set_kernel(self, kernel: str = "reference", threads: int | None = None) -> "QLinear":
        """Choose the forward kernel: 'reference' (dequantise, then matmul) or 'fast' (see course_lib.llm.kernels)."""
        from course_lib.llm.kernels import make_kernel

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
        return self.weight if self.bits == 8 else unpack_int4(self.weight)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight (out, in) that forward multiplies by: q * scale."""
        q = self.int_weight()
        if self.group_size is None:
            w = q.to(torch.float32) * self.scale.to(torch.float32)[:, None]
        else:
            g = self.in_features // self.group_size
            w = (q.to(torch.float32).view(self.out_features, g, self.group_size)
                 * self.scale.to(torch.float32)[:, :, None]).view(self.out_features, self.in_features)
        return w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"QLinear input must be a float tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, layer expects {self.in_features}")
        if self._kernel_impl is not None:
            return self._kernel_impl(x)
        return F.linear(x, self.dequantize(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def nbytes(self) -> int:
        """Bytes of the stored weight + scales (+ bias)."""
        n = self.weight.nbytes + self.scale.nbytes
        return n + (self.bias.nbytes if self.bias is not None else 0)

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.group_size else ""
        k = f", kernel={self.kernel}" if self.kernel != "reference" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{g}{k}"


def _target_modules(model) -> list[tuple[nn.Module, str, nn.Module]]:
    out = []
    for i, layer in enumerate(model.model.layers):
        for path in TARGET_NAMES:
            parent_name, attr = path.split(".")
            parent = getattr(layer, parent_name)
            out.append((parent, attr, getattr(parent, attr)))
    return out


@torch.no_grad()
def quantize_model(model, bits: int, group_size: int | None = None, kernel: str = "reference",
                   lm_head: bool = False):
    """Replace W_pack, o_proj, gate/up/down_proj in every layer by QLinear; returns the model (notebook 03).

    ``kernel``: 'reference' (the seed's dequantise-then-matmul) or 'fast' (course_lib.llm.kernels);
    ``lm_head=True`` also quantizes the (tied) LM head with the same format, ``lm_head=8`` with int8 per-row
    (int4 costs the head much more perplexity than int8); the embedding table keeps the float weight.
    """
    from course_lib.llm import kernels

    bits = _check_bits(bits)
    kernels.check_kernel(kernel, bits, group_size, model)  # before any change: no half-quantized model
    if getattr(model, "quantized_bits", None):
        raise RuntimeError(
            f"model is already quantized (int{model.quantized_bits}); quantizing twice would compound the "
            "error. Load a fresh float model and call quantize() once."
        )
    for parent, attr, lin in _target_modules(model):
        if not isinstance(lin, nn.Linear):
            raise RuntimeError(f"{attr} is {type(lin).__name__}, expected nn.Linear")
        setattr(parent, attr, QLinear.from_linear(lin, bits, group_size=group_size).set_kernel(kernel))
    if lm_head:
        head_bits, head_group = (bits, group_size) if lm_head is True else (_check_bits(lm_head), None)
        model.lm_head = QLinear.from_linear(model.lm_head, head_bits, group_size=head_group).set_kernel(kernel)
    model.quantized_bits = bits
    model.quantized_group_size = group_size
    return model


def linear_weight_bytes(model, fp_bytes: int = 2) -> int:
    """Bytes of the quantizable linears: QLinear's real storage, or numel × fp_bytes for float layers (fp16 = 2)."""
    total = 0
    for _, _, mod in _target_modules(model):
        if isinstance(mod, QLinear):
            total += mod.nbytes()
        else:
            total += sum(p.numel() for p in mod.parameters()) * fp_bytes
    return total
