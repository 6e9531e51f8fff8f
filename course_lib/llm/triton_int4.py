"""A fused group-wise int4 dequantise-GEMV in Triton: the GPU counterpart of the fast CPU path (notebook 03).

Baichuan ships ``cpm_kernels`` for its int4/int8 GPU matmuls; this is the course's small version.
It reads :class:`~course_lib.llm.quant.QLinear`'s own storage directly — int32 words holding 8
signed nibbles along the input dimension, one scale per (row, group) — and never materialises a
float weight: each program owns ``BLOCK_N`` output rows, walks the input in ``BLOCK_K`` steps,
unpacks the nibbles in registers (shift left, arithmetic shift right), multiplies by the group's
scale and accumulates ``x · w`` in float32.

``TRITON_INTERPRET=1`` runs the same kernel on CPU tensors (numpy underneath): that is how the
tests check it against the reference where no GPU is present. Timing needs a CUDA GPU.
"""

from __future__ import annotations

import torch

from course_lib import hw


def _triton():
    return hw.require("triton", what="the Triton int4 kernel", install="pip install triton")


_KERNEL = None


def _build_kernel():
    triton = _triton()
    import triton.language as tl

    @triton.jit
    def int4_gemv(x_ptr, w_ptr, s_ptr, y_ptr, N, K, GROUP: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr):
        # one program: BLOCK_N output rows of y = W x, W stored as int32 words of 8 nibbles (K // 8 per row)
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)                       # input columns of this step
            col_ok = cols < K
            x = tl.load(x_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            words = tl.load(w_ptr + rows[:, None] * (K // 8) + (cols // 8)[None, :],
                            mask=row_ok[:, None] & col_ok[None, :], other=0)
            shift = 28 - 4 * (cols % 8)                              # nibble n sits at bits 4n..4n+3
            q = (words << shift[None, :]) >> 28                      # arithmetic shift: sign-extended int4
            scale = tl.load(s_ptr + rows[:, None] * (K // GROUP) + (cols // GROUP)[None, :],
                            mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
            acc += tl.sum(q.to(tl.float32) * scale * x[None, :], axis=1)
        tl.store(y_ptr + rows, acc, mask=row_ok)

    return int4_gemv


def int4_gemv(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, group_size: int,
              block_n: int = 32, block_k: int = 128) -> torch.Tensor:
    """y = x @ dequant(packed, scale).T for one vector ``x`` (K,) or (1, K); QLinear's int4 group-wise storage."""
    global _KERNEL
    triton = _triton()
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise TypeError("packed must be QLinear's int32 (out, in/8) words")
    n, k = packed.shape[0], packed.shape[1] * 8
    if group_size is None or group_size <= 0 or k % group_size or group_size % 8:
        raise ValueError(f"group_size must be a positive multiple of 8 dividing {k}, got {group_size!r}")
    if scale.shape != (n, k // group_size):
        raise ValueError(f"scale must have shape {(n, k // group_size)}, got {tuple(scale.shape)}")
    xv = x.reshape(-1)
    if xv.numel() != k:
        raise ValueError(f"x must hold one vector of {k} features (batch 1), got shape {tuple(x.shape)}")
    if _KERNEL is None:
        _KERNEL = _build_kernel()
    y = torch.empty(n, dtype=torch.float32, device=packed.device)
    grid = (triton.cdiv(n, block_n),)
    _KERNEL[grid](xv.contiguous(), packed.contiguous(), scale.contiguous(), y, n, k,
                  GROUP=group_size, BLOCK_N=block_n, BLOCK_K=block_k)
    return y.to(x.dtype).view(*x.shape[:-1], n) if x.dim() > 1 else y.to(x.dtype)


def benchmark_vs_fp16(out_features: int = 4096, in_features: int = 4096, group_size: int = 64, repeat: int = 50):
    """On a CUDA GPU: bench rows for fp16 ``F.linear`` and the int4 kernel at batch 1 (DataFrame)."""
    import torch.nn.functional as F

    from course_lib import bench
    from course_lib.llm.quant import QLinear

    if not torch.cuda.is_available():
        raise RuntimeError("benchmark_vs_fp16 needs a CUDA GPU")
    w = torch.randn(out_features, in_features) * 0.02
    q = QLinear(4, w, group_size=group_size)
    wp, sc = q.weight.cuda(), q.scale.cuda()
    w16 = w.half().cuda()
    x = torch.randn(1, in_features, device="cuda", dtype=torch.float16)
    rows = [bench.benchmark(lambda: F.linear(x, w16), name="fp16 F.linear", device="cuda", repeat=repeat).as_row(),
            bench.benchmark(lambda: int4_gemv(x, wp, sc, group_size), name="triton int4 g%d" % group_size,
                            device="cuda", repeat=repeat).as_row()]
    import pandas as pd

    return pd.DataFrame(rows)
