"""Checks of the exercises in ``03_llm_quantization.ipynb`` (int4 packing, group scales, bytes, decode ceiling)."""

from __future__ import annotations

import torch

from course_lib.exercises import ExerciseFailed, answered, as_int, as_number, call, expect, fmt_pair, register, within


def _reference_pack(q: torch.Tensor, order=range(8), shifts=None, offset: int | None = None) -> torch.Tensor:
    """Nibbles of columns 8c + order[n] in bits shifts[n] (default 4n) of word c, as two's complement nibbles (or
    ``q + offset`` when ``offset`` is given): the lesson's layout and, with other arguments, its typical mistakes."""
    rows, cols = q.shape
    q64 = q.to(torch.int64)
    nib = (q64 + offset) if offset is not None else (q64 & 0xF)
    nib = nib.view(rows, cols // 8, 8)[:, :, list(order)]
    sh = torch.arange(0, 32, 4) if shifts is None else torch.as_tensor(list(shifts), dtype=torch.int64)
    words = (nib << sh).sum(-1) & 0xFFFFFFFF
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


# typical packing mistakes, each with its own message
_PACK_MISTAKES = [
    (dict(order=range(7, -1, -1)), "swapped nibble order: column 8c+0 must go to the LOWEST bits (shift 0) and "
                                   "column 8c+7 to bits 28..31 — you packed them the other way round"),
    (dict(shifts=range(4, 36, 4)), "shift off by one nibble: column 8c+n goes to bits 4n..4n+3, so the first "
                                   "shift is 0 (torch.arange(0, 32, 4)), not 4"),
    (dict(shifts=range(1, 33, 4)), "shift off by one bit: nibble n starts at bit 4n (0, 4, 8, ...), not 4n + 1"),
    (dict(shifts=[4 * n - 1 if n else 0 for n in range(8)]), "shift off by one bit: nibble n starts at bit 4n"),
    (dict(shifts=range(0, 24, 3)), "the shifts step by 3 bits: each code takes 4 bits, shift nibble n by 4n"),
    (dict(offset=8), "offset-8 encoding: you stored q + 8 (0..15). The layout stores two's complement nibbles, "
                     "q & 0xF (−1 → 0xF, −8 → 0x8, 7 → 0x7), which unpacking sign-extends"),
]


def _cases() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    edge = torch.tensor([[-8, 7, 0, -1, 1, -8, 7, -7], [0] * 8, [-8] * 8, [7] * 8], dtype=torch.int8)
    return [edge, torch.randint(-8, 8, (5, 32), generator=g, dtype=torch.int8),
            torch.randint(-8, 8, (1, 8), generator=g, dtype=torch.int8)]


@register("03.pack_int4", "implement", "Pack eight int4 codes into one int32 word")
def check_pack_int4(pack_int4) -> None:
    """The learner's ``pack_int4(q)`` must equal the lesson's layout: column 8c+n in bits 4n..4n+3 of word c."""
    for q in _cases():
        given = q.clone()
        out = call(pack_int4, given)
        expect(torch.equal(given, q), "pack_int4 changed the codes it was given (in place): work on a copy")
        expect(isinstance(out, torch.Tensor), f"return a torch.Tensor, got {type(out).__name__}")
        expect(tuple(out.shape) == (q.shape[0], q.shape[1] // 8),
               f"for input shape {tuple(q.shape)} return shape {(q.shape[0], q.shape[1] // 8)} "
               f"(8 codes per word), got {tuple(out.shape)}")
        expect(out.dtype == torch.int32, f"return int32 words (the bits reinterpreted as signed), got {out.dtype}")
        want = _reference_pack(q)
        if torch.equal(out, want):
            continue
        for kwargs, message in _PACK_MISTAKES:
            if torch.equal(out, _reference_pack(q, **kwargs)):
                raise ExerciseFailed(message)
        if (q >= 0).all():
            raise ExerciseFailed(f"wrong words for non-negative codes {q[0, :8].tolist()}: expected "
                                 f"{[hex(int(w) & 0xFFFFFFFF) for w in want[0]]}")
        raise ExerciseFailed("negative codes are packed wrongly: keep only their low 4 bits (q & 0xF, two's "
                             f"complement: -1 → 0xF, -8 → 0x8) before shifting; for {q[0, :8].tolist()} expected "
                             f"{hex(int(want[0, 0]) & 0xFFFFFFFF)}, got {hex(int(out[0, 0]) & 0xFFFFFFFF)}")


@register("03.unpack_int4", "implement", "Unpack int32 words back into signed int4 codes")
def check_unpack_int4(unpack_int4) -> None:
    """The learner's ``unpack_int4(words)`` must invert the lesson's packing exactly, with sign extension."""
    for q in _cases():
        words = _reference_pack(q)
        given = words.clone()
        out = call(unpack_int4, given)
        expect(torch.equal(given, words), "unpack_int4 changed the words it was given (in place): work on a copy")
        expect(isinstance(out, torch.Tensor), f"return a torch.Tensor, got {type(out).__name__}")
        expect(tuple(out.shape) == tuple(q.shape),
               f"for {tuple(words.shape)} words return shape {tuple(q.shape)} (8 codes per word), got {tuple(out.shape)}")
        expect(not out.is_floating_point(), f"return integer codes, got {out.dtype}")
        got = out.to(torch.int64)
        if torch.equal(got, q.to(torch.int64)):
            continue
        if torch.equal(got, q.to(torch.int64) & 0xF):
            raise ExerciseFailed("no sign extension: you returned the raw nibbles 0..15 (e.g. -1 came back as 15). "
                                 "Shift the nibble to the top of the int32, then arithmetic-shift right by 28 "
                                 "(or subtract 16 from nibbles >= 8)")
        if torch.equal(got, q.to(torch.int64).view(q.shape[0], -1, 8).flip(-1).reshape(q.shape)):
            raise ExerciseFailed("swapped nibble order: the LOWEST 4 bits of word c hold column 8c+0")
        if torch.equal(got, (q.to(torch.int64) & 0xF) - 8):
            raise ExerciseFailed("offset-8 decoding: you returned nibble − 8, but the nibbles are two's complement "
                                 "(0xF is −1, 0x8 is −8, 0x7 is 7): sign-extend instead (shift the nibble to the top "
                                 "of the int32, then arithmetic-shift right by 28)")
        w64 = words.to(torch.int64) & 0xFFFFFFFF
        for shifts, why in ((range(4, 36, 4), "one nibble too far (the first nibble is at shift 0)"),
                            (range(1, 33, 4), "one bit too far (nibble n starts at bit 4n)")):
            nib = (w64[:, :, None] >> torch.as_tensor(list(shifts))) & 0xF
            for cand in (nib, torch.where(nib >= 8, nib - 16, nib)):
                if torch.equal(got, cand.flatten(1)):
                    raise ExerciseFailed(f"shift off by one: you read each nibble {why}")
        raise ExerciseFailed(f"wrong codes: for the word {hex(int(words[0, 0]) & 0xFFFFFFFF)} expected "
                             f"{q[0, :8].tolist()}, got {got[0, :8].tolist()}")


@register("03.group_scales", "implement", "Per-group absmax scales")
def check_group_scales(group_scales) -> None:
    """``group_scales(w, bits, group_size)``: float32 (out, in/group) = max|w| over consecutive columns / qmax.

    Compared to 1e-5 relative (+1e-6 absolute, so an ``amax + 1e-6`` guard is accepted); a group of zeros may get
    any positive finite scale (every scale represents zeros exactly), also when the other groups are not zero."""
    from course_lib.llm import quant

    g = torch.Generator().manual_seed(5)
    w = torch.randn(6, 32, generator=g)
    w[0, 5] = 9.0  # an outlier: only its own group's scale may grow
    mixed = torch.randn(4, 32, generator=g)
    mixed[1, 8:16] = 0.0  # one zero group among non-zero groups
    mixed[3, :8] = 0.0
    cases = [(w, 4, 8), (w, 8, 16), (w.to(torch.float16), 4, 8), (torch.randn(3, 24, generator=g), 4, 24),
             (mixed, 4, 8), (torch.zeros(2, 16), 4, 8)]
    for wi, bits, gs in cases:
        given = wi.clone()
        out = call(group_scales, given, bits, gs)
        expect(torch.equal(given, wi), "group_scales changed the weight it was given (in place): take abs() of a copy")
        want = quant.compute_scale(wi, bits, gs)
        expect(isinstance(out, torch.Tensor), f"return a torch.Tensor, got {type(out).__name__}")
        expect(out.dtype == torch.float32,
               f"return float32 scales, got {out.dtype}" + (" — for a float16 weight compute in float32 "
               "(w.float()) so the scales keep full precision" if out.dtype == torch.float16 else ""))
        shape = (wi.shape[0], wi.shape[1] // gs)
        if tuple(out.shape) != shape and (tuple(out.shape) == (wi.shape[0] // gs, wi.shape[1])
                                          or tuple(out.shape) == (wi.shape[1] // gs, wi.shape[0])):
            raise ExerciseFailed(f"wrong group axis: groups are {gs} consecutive INPUT columns of each row, so the "
                                 f"result has shape {shape}, got {tuple(out.shape)}")
        expect(tuple(out.shape) == shape, f"for w {tuple(wi.shape)} and group_size {gs} return shape {shape} "
                                          f"(rows, groups), got {tuple(out.shape)}")
        amax = wi.float().reshape(shape[0], shape[1], gs).abs().amax(-1)
        zero = amax == 0
        bad_zero = zero & ~(torch.isfinite(out) & (out > 0))
        if bad_zero.any():
            r, c = (int(v) for v in bad_zero.nonzero()[0])
            what = "an all-zero weight" if bool(zero.all()) else f"group {c} of row {r} (all zeros, beside non-zero groups)"
            raise ExerciseFailed(f"{what} got scale {float(out[r, c])}: a zero group must still get a positive, finite "
                                 "scale (else 0/0 = NaN when quantizing); any positive value represents zeros exactly — "
                                 "guard every group (torch.where(amax == 0, 1, amax)), not only an all-zero tensor")
        nz = ~zero
        if torch.allclose(out[nz], want[nz], rtol=1e-5, atol=1e-6):
            continue
        strided = wi.float().reshape(shape[0], gs, shape[1]).abs().amax(1)
        close = lambda a: torch.allclose(out[nz], a[nz], rtol=1e-5, atol=1e-6)  # noqa: E731
        if close(amax):
            raise ExerciseFailed(f"you returned max|w| itself: divide by qmax = 2**(bits-1) - 1 ({2 ** (bits - 1) - 1} for int{bits})")
        if close(amax / (2**bits - 1)):
            raise ExerciseFailed(f"divide by 2**(bits-1) - 1 = {2 ** (bits - 1) - 1} (the symmetric signed range), not 2**bits - 1")
        if close(amax / 2 ** (bits - 1)):
            raise ExerciseFailed(f"divide by 2**(bits-1) - 1 = {2 ** (bits - 1) - 1}, not 2**(bits-1) = {2 ** (bits - 1)}: "
                                 "symmetric quantization uses −qmax … qmax so that zero is a level")
        if wi.dtype == torch.float16 and torch.allclose(out, (wi.reshape(shape[0], shape[1], gs).abs().amax(-1)
                                                               / (2 ** (bits - 1) - 1)).float(), rtol=1e-6, atol=0):
            raise ExerciseFailed("you divided in float16 and converted afterwards: convert the weight to float32 "
                                 "first (w.float()), then take max|w| / qmax, so the scale is not rounded to fp16")
        if close(strided / (2 ** (bits - 1) - 1)):
            raise ExerciseFailed("wrong group axis: a group is `group_size` CONSECUTIVE columns — reshape to "
                                 "(rows, in // group_size, group_size) and reduce the last axis")
        if close(wi.float().reshape(shape[0], shape[1], gs).amax(-1) / (2 ** (bits - 1) - 1)):
            raise ExerciseFailed("you took max(w), not max(|w|): a large negative weight must set the scale too")
        if close(amax.amax(-1, keepdim=True).expand_as(amax) / (2 ** (bits - 1) - 1)):
            raise ExerciseFailed("every group of a row got the row's scale: take max|w| per group, not per row")
        r = int((~torch.isclose(out, want, rtol=1e-5, atol=1e-6)).any(-1).nonzero()[0])
        raise ExerciseFailed(f"wrong scales for a {tuple(wi.shape)} weight, int{bits}, group {gs}: expected row {r} "
                             f"{[float(f'{float(v):.6g}') for v in want[r]]}, got {[float(f'{float(v):.6g}') for v in out[r]]}")


def layer_bytes(out_features: int, in_features: int) -> dict[str, int]:
    """Exact bytes of a per-row QLinear: int8 (1 B/weight) or int4 (½ B/weight), plus one float32 scale per row."""
    return {"int8": out_features * in_features + 4 * out_features,
            "int4": out_features * in_features // 2 + 4 * out_features}


@register("03.layer_bytes", "predict", "Bytes of one layer in int8 and int4")
def check_layer_bytes(int8_bytes, int4_bytes, *, out_features: int, in_features: int, measured=None) -> None:
    """Exact arithmetic: weights plus float32 per-row scales (``measured`` = the layer's real ``nbytes()``)."""
    answered(int8_bytes, int4_bytes)
    want = layer_bytes(out_features, in_features)
    if measured is not None:
        expect(measured == want, f"internal: measured {measured} != arithmetic {want}")
    n, rows = out_features * in_features, out_features
    for name, got, exact in (("int8", int8_bytes, want["int8"]), ("int4", int4_bytes, want["int4"])):
        got = as_int(got, f"{name} bytes")
        if got == exact:
            continue
        per = 1 if name == "int8" else 0.5
        hints = {int(n * per): "you forgot the scales: one float32 (4 bytes) per output row",
                 int(n * per + 2 * rows): "the per-row scales are float32 (4 bytes each), not float16",
                 int(n * per + 4 * in_features): "one scale per OUTPUT row (out_features of them), not per input column",
                 n + 4 * rows: "int4 stores two codes per byte (½ byte per weight), not one",
                 int(n * per * 8 + 4 * rows): "that counts bits, not bytes, for the weights"}
        raise ExerciseFailed(f"{name}: you predicted {got:,} bytes, the layer stores {exact:,}"
                             + (f" — {hints[got]}" if got in hints else ""))


@register("03.decode_ceiling", "predict", "The memory-bound tokens/s ceiling")
def check_decode_ceiling(prediction, *, bytes_per_token: float, bandwidth_gb_s: float,
                         lm_head_bytes: float | None = None) -> None:
    """tokens/s ≤ bandwidth / bytes read per token; accepted within ±5 % of ``bandwidth_gb_s·1e9 / bytes_per_token``."""
    # ±5 %: wide enough for byte counts rounded to two digits, narrow enough to tell GB from GiB (7.4 % apart)
    target = bandwidth_gb_s * 1e9 / bytes_per_token
    v = as_number(prediction, "your ceiling (tokens/s)")
    if lm_head_bytes:
        no_head = bandwidth_gb_s * 1e9 / (bytes_per_token - lm_head_bytes)
        if abs(v - no_head) <= 0.02 * no_head:
            raise ExerciseFailed(f"you left out the lm_head ({lm_head_bytes / 1e6:.0f} MB): every token multiplies "
                                 f"the hidden state by it too, so it is read per token like the linears "
                                 f"(ceiling {target:.4g} tokens/s)")
    if abs(v - target) > 0.05 * target:
        for factor in (2**30 / 1e9, 1e9 / 2**30):
            if abs(v - target * factor) <= 0.01 * target * factor:
                raise ExerciseFailed("GB/s here means 1e9 bytes per second and the bytes are plain bytes (not GiB/MiB): "
                                     f"the ceiling is {target:.4g} tokens/s, you predicted {v:.4g}: you mixed powers "
                                     "of 1000 and 1024")
    for factor, why in ((8, "multiply bytes by 8 only for bits: bandwidth and weights are both in bytes"),
                        (1 / 8, "you divided by bits: the weights' size is already in bytes"),
                        (1e-9, "that is in giga-tokens: tokens/s = bandwidth_gb_s · 1e9 / bytes per token"),
                        (1e9, "the bandwidth is in GB/s: bandwidth_gb_s · 1e9 bytes/s, counted once")):
        if abs(v - target * factor) <= 0.05 * target * factor:
            raise ExerciseFailed(f"{why} (ceiling {target:.4g} tokens/s, you predicted {v:.4g})")
    within(v, target, 0.05, "tokens/s ceiling = bandwidth / bytes per token", "tokens/s")


@register("03.group_size", "explore", "Try another group size: which gives the lower perplexity?")
def check_group_size(other_group, ppl_other, lower_group, *, group_size: int, ppl_reference: float,
                     in_features: tuple[int, ...], measure=None) -> None:
    """Verifies the learner's perplexity (re-measured with ``measure(group)`` when given) and their conclusion."""
    answered(other_group, ppl_other, lower_group)
    other = as_int(other_group, "other_group (a group size)")
    expect(other > 0, f"other_group must be a positive group size, got {other}")
    expect(other != group_size, f"choose a group size other than the lesson's {group_size}")
    bad = [n for n in in_features if n % other]
    expect(not bad, f"group size {other} must divide every layer's in_features {sorted(set(in_features))}")
    ppl = as_number(ppl_other, f"your perplexity at group {other}")
    if measure is not None:
        remeasured = float(measure(other))
        # the measurement is deterministic; ±0.006 accepts a perplexity typed with 2 decimals, and any other group
        # size or variant lands much further away (group 32 vs 64 differ by whole points here)
        a, b = fmt_pair(ppl, remeasured)
        expect(abs(ppl - remeasured) <= max(0.006, 1e-4 * remeasured),
               f"your perplexity at group {other}: you reported {a}, the check re-measured {b} "
               f"(measure_int4_zh({other}); accepted ±0.006, a value typed with 2 decimals)")
    truth = other if ppl < ppl_reference else group_size
    lower = as_int(lower_group, "lower_group")
    expect(lower in (other, group_size),
           f"lower_group must be one of the two sizes you compared ({group_size} or {other}), got {lower}")
    expect(lower == truth, f"in your run group {other} gave perplexity {ppl:.4f} and group "
                           f"{group_size} gave {ppl_reference:.4f}: the lower one is group {truth}")
