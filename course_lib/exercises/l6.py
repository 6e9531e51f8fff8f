"""Checks of the exercises in ``06_llm_int4_awq_gptq.ipynb`` (GPTQ error feedback, AWQ's channels, damping,
calibration size)."""

from __future__ import annotations

import math

import torch

from course_lib.exercises import ExerciseFailed, answered, call, expect, register


def _reference_column(wb, hrow, scale):
    q = torch.clamp(torch.round(wb[:, 0] / scale), -8, 7)
    err = (wb[:, 0] - q * scale) / hrow[0]
    return q, wb - err[:, None] * hrow[None, :]


def _column_cases():
    g = torch.Generator().manual_seed(6)
    cases = []
    for out_f, k in ((5, 4), (16, 9), (3, 1)):
        wb = torch.randn(out_f, k, generator=g) * 0.1
        a = torch.randn(k, k, generator=g)
        u = torch.linalg.cholesky(torch.linalg.inv(a @ a.T + k * torch.eye(k)), upper=True)
        scale = wb.abs().amax(1) / 7 * 0.6  # some values clip at the int4 range
        cases.append((wb, u[0].clone(), scale))
    return cases


@register("06.gptq_column", "implement", "GPTQ's error feedback for one column")
def check_gptq_column(gptq_column) -> None:
    """``gptq_column(wb, hrow, scale)`` → (codes of column 0, the block with column 0's error pushed onto the rest)."""
    for wb, hrow, scale in _column_cases():
        out = call(gptq_column, wb.clone(), hrow.clone(), scale.clone())
        expect(isinstance(out, tuple) and len(out) == 2, "return a pair (q, wb_new)")
        q, wb_new = out
        q_ref, wb_ref = _reference_column(wb, hrow, scale)
        expect(torch.is_tensor(q) and q.shape == q_ref.shape, f"q must be a tensor of shape {tuple(q_ref.shape)}")
        if not torch.equal(q.float(), q_ref):
            unclipped = torch.round(wb[:, 0] / scale)
            if torch.equal(q.float(), unclipped):
                raise ExerciseFailed("codes outside [-8, 7]: clip round(w / scale) to int4's range")
            raise ExerciseFailed("the codes of column 0 are not round(w / scale) clipped to [-8, 7]")
        expect(torch.is_tensor(wb_new) and wb_new.shape == wb.shape, f"wb_new must have the block's shape {tuple(wb.shape)}")
        if wb.shape[1] == 1 or torch.allclose(wb_new[:, 1:], wb_ref[:, 1:], atol=1e-5):
            continue
        if torch.allclose(wb_new[:, 1:], wb[:, 1:]):
            raise ExerciseFailed("the later columns are unchanged: that is plain rounding (RTN); push column 0's error "
                                 "onto them, weighted by hrow")
        err = wb[:, 0] - q_ref * scale
        if torch.allclose(wb_new[:, 1:], wb[:, 1:] - err[:, None] * hrow[None, 1:], atol=1e-5):
            raise ExerciseFailed("divide the rounding error by hrow[0] (the Cholesky diagonal) before pushing it on")
        if torch.allclose(wb_new[:, 1:], wb[:, 1:] + (err / hrow[0])[:, None] * hrow[None, 1:], atol=1e-5):
            raise ExerciseFailed("wrong sign: subtract err[:, None] * hrow[None, :] (the later columns compensate)")
        raise ExerciseFailed("the updated columns differ from w[:, j] - err / hrow[0] * hrow[j]")


@register("06.awq_channels", "predict", "Which input channels does AWQ protect?")
def check_awq_channels(my_channels, *, x_mean, w, k: int) -> None:
    """The ``k`` channels with the largest scale s = mean|x|**alpha (alpha > 0): the loudest activations."""
    answered(my_channels)
    try:
        got = sorted(int(c) for c in my_channels)
    except TypeError:
        raise ExerciseFailed(f"give a list of {k} channel indices, got {my_channels!r}") from None
    expect(len(set(got)) == k, f"give {k} different channel indices, got {len(set(got))}")
    want = sorted(x_mean.topk(k).indices.tolist())
    if got == want:
        return
    if got == sorted(w.abs().amax(0).topk(k).indices.tolist()) or got == sorted(w.abs().mean(0).topk(k).indices.tolist()):
        raise ExerciseFailed("those are the channels with the largest WEIGHTS; AWQ picks by the ACTIVATIONS' "
                             "magnitude (x_mean): a weight matters as much as the inputs it multiplies")
    if got == sorted((-x_mean).topk(k).indices.tolist()):
        raise ExerciseFailed("those are the quietest channels: s = x_mean**alpha grows with the activation")
    raise ExerciseFailed(f"{len(set(got) & set(want))} of your {k} channels are right: sort the channels by x_mean")


def rank_deficient_case():
    """A 64-wide layer calibrated on 16 tokens (H = XᵀX has rank 16), one always-zero input: (w, x, h)."""
    g = torch.Generator().manual_seed(11)
    w = torch.randn(32, 64, generator=g) * 0.05
    x = torch.randn(16, 64, generator=g) * torch.linspace(0.2, 3, 64)
    x[:, 7] = 0
    return w, x, x.double().T @ x.double()


@register("06.damping", "explore", "A damping that keeps the Cholesky stable")
def check_damping(my_damp) -> None:
    """The Cholesky must succeed on the rank-deficient Hessian, and GPTQ must still beat plain rounding clearly (< 0.9×)."""
    from course_lib.llm import calibrated as C

    answered(my_damp)
    expect(isinstance(my_damp, (int, float)) and not isinstance(my_damp, bool) and math.isfinite(my_damp),
           f"give a number (a fraction of H's mean diagonal), got {my_damp!r}")
    expect(my_damp >= 0, f"a negative damping makes H less positive-definite, got {my_damp}")
    w, x, h = rank_deficient_case()
    try:
        q, s = C.gptq_quantize(w, h, 32, damp=float(my_damp))
    except ValueError:
        raise ExerciseFailed(f"damp={my_damp}: the Cholesky fails — H = XᵀX from 16 tokens has rank 16 < 64, so it "
                             "needs a positive damping (GPTQ's default is 0.01)") from None
    err = float(((x @ (C.dequant(q, s) - w).T) ** 2).sum())
    # the same rounding without error feedback (each group's scale searched as in GPTQ): what GPTQ becomes as damp → ∞
    err_rtn = float(((x @ (C.dequant(*C.searched_codes(w, 32, torch.diagonal(h))) - w).T) ** 2).sum())
    expect(math.isfinite(err), f"damp={my_damp}: the result is not finite (the factor is unstable): damp more")
    expect(err < 0.9 * err_rtn, f"damp={my_damp}: GPTQ's output error is {err / err_rtn:.2f}× plain rounding's — so much damping "
                                "that H ≈ λ·I and GPTQ forgets the activations; damp less (e.g. 0.01)")


@register("06.calib_size", "explore", "Calibration size vs error on held-out activations")
def check_calib_size(n_small, err_small, n_large, err_large, lower, *, measure) -> None:
    """Two calibration sizes measured with ``measure(n)``, and which one gave the lower held-out error."""
    answered(n_small, err_small, n_large, err_large, lower)
    expect(isinstance(n_small, int) and isinstance(n_large, int) and 0 < n_small < n_large,
           f"n_small < n_large, both positive ints, got {n_small!r}, {n_large!r}")
    for n, e in ((n_small, err_small), (n_large, err_large)):
        again = measure(n)
        expect(isinstance(e, (int, float)) and abs(float(e) - again) <= 1e-6 * abs(again) + 1e-12,
               f"measure({n}) gives {again:.6g} here, you wrote {e!r}: paste the measured number")
    right = n_small if err_small < err_large else n_large
    expect(lower in (n_small, n_large), f"lower must be n_small or n_large, got {lower!r}")
    expect(lower == right, f"your measurements say {right} tokens gave the lower held-out error, not {lower}: "
                           "read the numbers rather than assuming")
