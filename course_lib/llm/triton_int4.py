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


# SmolLM2-135M's linears at batch 1 (hidden 576, 9 query heads / 3 kv heads of 64, MLP 1536): (name, out, in, per layer)
SMOLLM2_SHAPES = (("q_proj", 576, 576, 1), ("k_proj", 192, 576, 1), ("v_proj", 192, 576, 1),
                  ("o_proj", 576, 576, 1), ("gate_proj", 1536, 576, 1), ("up_proj", 1536, 576, 1),
                  ("down_proj", 576, 1536, 1))
SMOLLM2_LAYERS = 30


def compare_gemv(device: str, shapes=SMOLLM2_SHAPES, group_size: int = 64, kernel=None, repeat: int = 50,
                 warmup: int = 10, seed: int = 0) -> dict:
    """Time ``kernel`` (default: :func:`int4_gemv`) against fp16 ``F.linear`` at batch 1 on each shape.

    Returns ``{name: (value, unit)}``: per shape the int4 kernel's median µs and its speed-up over fp16, the
    whole decoder layer's speed-up (sum of its linears' medians) and the largest relative error of the kernel
    against the fp32 product with the dequantised weight. Timing goes through :func:`course_lib.bench.benchmark`
    (CUDA events on a GPU). ``kernel(x, packed, scale, group_size)`` lets a test run the harness on the CPU.
    """
    import torch.nn.functional as F

    from course_lib import bench
    from course_lib.llm.quant import QLinear

    kernel = kernel or int4_gemv
    g = torch.Generator().manual_seed(seed)
    out: dict = {}
    t_fp16 = t_int4 = 0.0
    worst = 0.0
    for name, n, k, per_layer in shapes:
        w = torch.randn(n, k, generator=g) * 0.02
        q = QLinear(4, w, group_size=group_size)
        wp, sc = q.weight.to(device), q.scale.to(device)
        w16 = w.half().to(device)
        x = torch.randn(1, k, generator=g).half().to(device)
        want = F.linear(x.float().cpu(), q.dequantize(torch.float32))
        got = kernel(x, wp, sc, group_size).float().cpu()
        worst = max(worst, float((got - want).abs().max() / want.abs().max()))
        r16 = bench.benchmark(lambda: F.linear(x, w16), name=f"fp16 {name}", warmup=warmup, repeat=repeat, device=device)
        r4 = bench.benchmark(lambda: kernel(x, wp, sc, group_size), name=f"int4 g{group_size} {name}",
                             warmup=warmup, repeat=repeat, device=device)
        out[f"{name}_int4_us"] = (r4.median_s * 1e6, "µs")
        out[f"{name}_speedup_vs_fp16"] = (r16.median_s / r4.median_s, "x")
        t_fp16 += per_layer * r16.median_s
        t_int4 += per_layer * r4.median_s
    out["layer_speedup_vs_fp16"] = (t_fp16 / t_int4, "x")
    out["max_rel_err"] = (worst, "rel")
    return out


def gpu_check(device: str = "cuda") -> dict:
    """``course gpu-check``'s lesson 3 step: the Triton int4 GEMV vs fp16 ``F.linear`` on SmolLM2's shapes (batch 1).

    Needs a CUDA GPU and triton; returns :func:`compare_gemv`'s ``{name: (value, unit)}``. The target the
    course sets is a decoder layer's int4 GEMVs at least 1.5x faster than fp16 (the int4 weight is 1/4 the bytes).
    """
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        raise RuntimeError(f"gpu_check needs a CUDA GPU (device {device!r}, torch.cuda.is_available() is "
                           f"{torch.cuda.is_available()}); the CPU tests run int4_gemv under TRITON_INTERPRET=1")
    _triton()
    return compare_gemv(device)
