"""Checks of the exercises in ``01_torchscript_triton.ipynb`` (TorchScript + Triton serving).

* ``01.gp_params``      predict: the parameter count of the GlobalPointer head (exact arithmetic);
* ``01.decode_spans``   implement: GlobalPointer span logits → (type, start, end) token spans;
* ``01.batching_stanza`` implement: the ``dynamic_batching { ... }`` stanza of a ``config.pbtxt``, parsed by
  Triton's own ``ModelConfig`` protobuf;
* ``01.queue_delay``    explore: pick a ``max_queue_delay_microseconds`` that makes a lone client wait at least
  10 ms longer, verified from the learner's own measurement.
"""

from __future__ import annotations

from course_lib import exercises

# ----------------------------------------------------------------------------------------------------------------
# 01.gp_params — predict (exact)
# ----------------------------------------------------------------------------------------------------------------


@exercises.register("01.gp_params", "predict", "Predict the parameter count of the GlobalPointer head")
def check_gp_params(answer, measured=None):
    """``measured`` is the GlobalPointer module itself (``model.global_pointer``): its count is the target."""
    exercises.answered(answer)
    if measured is None:
        raise exercises.NotAttempted("run the cell that builds the model first")
    weight, bias = measured.dense.weight.numel(), measured.dense.bias.numel()
    target = weight + bias
    value = exercises.as_int(answer, "a parameter count")
    hidden, out = measured.dense.in_features, measured.dense.out_features
    inv_freq = measured.inv_freq.numel()
    typical = {
        weight: "you counted the weight matrix only: the dense layer also has one bias per output",
        target // 2: "one dense layer produces BOTH the query and the key of every type (× 2)",
        (hidden + 1) * out // measured.num_types: "the dense layer serves all entity types at once (× number of types)",
        target + inv_freq: f"inv_freq ({inv_freq} numbers) is a buffer, not a parameter: the optimizer never updates it",
        hidden * hidden: "the output width is types × head_size × 2, not the hidden size",
    }
    if value in typical and value != target:
        raise exercises.ExerciseFailed(f"you predicted {value:,}; {typical[value]}")
    exercises.expect(value == target, f"you predicted {value:,}, the head has {target:,} parameters "
                                      f"(one Linear {hidden} → {out}: weight + bias)")


# ----------------------------------------------------------------------------------------------------------------
# 01.decode_spans — implement
# ----------------------------------------------------------------------------------------------------------------


def reference_token_spans(logits, threshold: float = 0.0) -> list[tuple[int, int, int]]:
    """(type, start, end) of every entry > threshold with start <= end, sorted — what the exercise asks for."""
    import numpy as np

    t, s, e = np.where(np.asarray(logits) > threshold)
    return sorted((int(a), int(b), int(c)) for a, b, c in zip(t, s, e) if b <= c)


def _cases():
    import numpy as np

    rng = np.random.default_rng(1)
    a = np.full((2, 6, 6), -5.0)
    a[0, 1, 3] = 2.0          # a 3-token entity of type 0
    a[1, 4, 4] = 0.7          # a one-token entity of type 1 (start == end)
    a[0, 5, 2] = 3.0          # lower triangle (end < start): never a span
    b = np.full((3, 8, 8), -1.0)
    b[2, 0, 7] = 0.2          # above 0, but below the 0.5 threshold of this case
    b[1, 2, 5] = 0.9
    b[1, 3, 3] = 0.5          # exactly the threshold: not strictly greater
    c = rng.normal(size=(4, 10, 10)) - 1.5
    d = np.full((2, 5, 5), -3.0)
    d[0, 0, 2] = -0.4         # below 0 but above this case's threshold of -1: a span
    d[1, 3, 4] = -1.0         # exactly the threshold: not a span
    d[1, 4, 1] = 0.5          # lower triangle again
    return [(a, 0.0), (b, 0.5), (np.full((3, 4, 4), -1.0), 0.0), (c, 0.0), (d, -1.0)]


def _normalise(result):
    try:
        out = [tuple(int(x) for x in item) for item in result]
    except (TypeError, ValueError):
        raise exercises.ExerciseFailed(
            f"return a list of (type, start, end) tuples of ints, got {str(result)[:80]}") from None
    if any(len(t) != 3 for t in out):
        raise exercises.ExerciseFailed(f"each span is a triple (type, start, end), got {str(result)[:80]}")
    if out != sorted(out):
        raise exercises.ExerciseFailed(f"return the spans sorted (by type, then start, then end): got {out[:6]}")
    return out


@exercises.register("01.decode_spans", "implement", "Decode GlobalPointer span logits into (type, start, end)")
def check_decode_spans(fn):
    import numpy as np

    for logits, thr in _cases():
        given = logits.copy()
        got = _normalise(exercises.call(fn, given, thr))
        want = reference_token_spans(logits, thr)
        exercises.expect(np.array_equal(given, logits), "your function changed the logits it was given (in place): "
                                                       "decode without writing into the array")
        if got == want:
            continue
        where = f"(logits of shape {logits.shape}, threshold {thr})"
        if want and got == sorted((t, s, e + 1) for t, s, e in want):
            raise exercises.ExerciseFailed(f"your end indices are one past the last token {where}: GlobalPointer's "
                                           "(start, end) are both inclusive — a one-token entity has start == end")
        if got == reference_token_spans(np.swapaxes(logits, 1, 2), thr) or got == sorted(
                (t, e, s) for t, s, e in want):
            raise exercises.ExerciseFailed(f"you read the matrix transposed {where}: logits[type, start, end] — "
                                           "axis 1 is the start token, axis 2 the end token")
        t, s, e = np.where(logits > thr)
        if got == sorted(zip(t.tolist(), s.tolist(), e.tolist())):
            raise exercises.ExerciseFailed(f"keep only spans with start <= end {where}: the lower triangle is not a span "
                                           "(the model masks it, but a decoder should not trust that)")
        t, s, e = np.where(logits >= thr)
        if got == sorted((a, b, c) for a, b, c in zip(t.tolist(), s.tolist(), e.tolist()) if b <= c):
            raise exercises.ExerciseFailed(f"a span needs a logit strictly greater than the threshold {where}")
        if got == reference_token_spans(logits, 0.0):
            raise exercises.ExerciseFailed(f"use the threshold argument {where}, not a fixed 0")
        if len(set(got)) < len(got):
            raise exercises.ExerciseFailed(f"a span appears twice in your result {where}: {got}")
        if want and not got:
            raise exercises.ExerciseFailed(f"no spans found {where}; expected {want}")
        raise exercises.ExerciseFailed(f"{where}: expected {want}, got {got}")


# ----------------------------------------------------------------------------------------------------------------
# 01.batching_stanza — implement
# ----------------------------------------------------------------------------------------------------------------


@exercises.register("01.batching_stanza", "implement", "Write the dynamic_batching stanza of a config.pbtxt")
def check_batching_stanza(fn):
    from course_lib.deploy import triton_config

    for pref, delay in (((8, 16), 2000), ((4,), 100), ((2, 4, 8, 32), 50000), ([3, 6], 750)):
        text = exercises.call(fn, pref, delay)
        exercises.expect(isinstance(text, str), f"return the stanza as text, got {type(text).__name__}")
        config = f'name: "address"\nbackend: "python"\nmax_batch_size: 64\n{text}\n'
        try:
            cfg = triton_config.parse_config(config)
        except triton_config.ConfigError as e:
            hint = ""
            import re

            floaty = re.search(r"(max_queue_delay_microseconds|preferred_batch_size)\s*:\s*\[?[^\]\n]*\d\.\d*", text)
            if floaty:
                hint = (f" — {floaty.group(1)} takes integers (a protobuf uint64/int32), and your text writes a "
                        "decimal point: format with int(...) / str(int(...)), e.g. 2000 not 2000.0")
            elif "dynamic_batching" not in text and ("preferred_batch_size" in str(e) or "max_queue_delay" in str(e)):
                hint = " — the fields go inside a `dynamic_batching { ... }` block"
            raise exercises.ExerciseFailed(f"Triton's parser rejects it{hint}: {e}") from None
        exercises.expect(cfg.HasField("dynamic_batching"), "no `dynamic_batching { ... }` block in your text")
        db = cfg.dynamic_batching
        got_pref = list(db.preferred_batch_size)
        exercises.expect(got_pref != [], f"preferred_batch_size is missing (asked for {list(pref)}): without it Triton "
                                         "tries to fill max_batch_size before the delay runs out")
        if got_pref == [8, 16] and list(pref) != [8, 16]:
            raise exercises.ExerciseFailed(f"preferred_batch_size is always [8, 16] in your text, asked for {list(pref)}: "
                                           "use the preferred_batch_size argument")
        exercises.expect(got_pref == list(pref), f"preferred_batch_size is {got_pref}, asked for {list(pref)}")
        got_delay = db.max_queue_delay_microseconds
        exercises.expect(got_delay != 0, f"max_queue_delay_microseconds is missing (asked for {delay} µs): the default "
                                         "0 means the batcher never waits for more requests")
        exercises.expect(got_delay * 1000 != delay and abs(got_delay * 1000 - delay) >= 1000,
                         f"max_queue_delay_microseconds is {got_delay} for {delay} µs: "
                         "the field is in microseconds, not milliseconds")
        exercises.expect(got_delay == delay, f"max_queue_delay_microseconds is {got_delay}, asked for {delay}")


# ----------------------------------------------------------------------------------------------------------------
# 01.queue_delay — explore
# ----------------------------------------------------------------------------------------------------------------

EXTRA_WAIT_MS = 10.0
MAX_DELAY_US = 200_000


@exercises.register("01.queue_delay", "explore", "Make a lone client wait ≥ 10 ms longer with dynamic batching")
def check_queue_delay(delay_us, measured=None):
    """``measured``: the sweep table the notebook ran with ``delay_us`` (rows at concurrency 1, with and without)."""
    exercises.answered(delay_us)
    delay = exercises.as_int(delay_us, "max_queue_delay_microseconds (a whole number of µs)")
    exercises.expect(0 <= delay <= MAX_DELAY_US, f"pick a delay between 0 and {MAX_DELAY_US} µs (got {delay:g})")
    if measured is None:
        raise exercises.NotAttempted("run the measurement cell (it needs the Triton server)")
    one = measured[measured.concurrency == measured.concurrency.min()]
    on = float(one[one.dynamic_batching]["p50_ms"].iloc[0])
    off = float(one[~one.dynamic_batching]["p50_ms"].iloc[0])
    extra = on - off
    small = " — that is far below 1 ms: the field is in microseconds (20 ms = 20000)" if delay < 1000 else ""
    if not small and delay >= EXTRA_WAIT_MS * 1000 and extra < EXTRA_WAIT_MS:
        small = (f" — the measured extra wait came out a little below your delay ({delay / 1000:g} ms): the batcher's "
                 "clock starts when the request reaches its queue and the lone request's own run overlaps part of "
                 "it, so give the delay some margin (e.g. 15–20 ms)")
    shown = exercises.fmt_pair(extra, EXTRA_WAIT_MS)[0]
    exercises.expect(extra >= EXTRA_WAIT_MS,
                     f"with {delay:g} µs a lone client waited {shown} ms longer (median {on:.2f} vs {off:.2f} ms "
                     f"without the batcher); it needs ≥ {EXTRA_WAIT_MS:g} ms{small}. With one client there is never a "
                     "second request to merge, so the batcher waits the whole delay every time")
    print(f"measured: a lone client waited {extra:+.1f} ms longer with max_queue_delay_microseconds = {delay:g} "
          f"(≈ the delay: {delay / 1000:.1f} ms)")
