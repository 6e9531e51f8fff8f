"""Checks of notebook 00's exercises: a bench statistic, the CPU's peak FLOP/s, a matmul's time, the sampler.

Introduced in ``00_environment.ipynb``, which also explains how every exercise of the course works.
"""

from __future__ import annotations

import math

from course_lib import exercises
from course_lib.bench import percentile

# inputs the p90 check tries: one sample, two samples, unsorted, ties, a long tail
P90_CASES = [[5.0], [1.0, 2.0], [3.0, 1.0, 2.0], [4.0, 4.0, 4.0], [10.0, 1.0, 7.0, 2.0, 3.0, 9.0, 5.0, 8.0, 6.0, 4.0, 30.0]]


def _nearest_rank(xs, q=90):
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def _unsorted_interp(xs, q=90):
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _len_not_len_minus_one(xs, q=90):
    s = sorted(xs)
    pos = min(len(s) - 1, len(s) * q / 100)
    lo, hi = math.floor(pos), min(len(s) - 1, math.ceil(pos))
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


_P90_MISTAKES = [
    (_nearest_rank, "that is the nearest-rank value; interpolate between the two neighbouring order statistics"),
    (_unsorted_interp, "that interpolates in the unsorted list: sort the values first"),
    (_len_not_len_minus_one, "the position is (n - 1) · q / 100, not n · q / 100 (the last value has index n - 1)"),
    (lambda xs: percentile(xs, 10), "that is the p10; the p90 is near the slow end"),
    (lambda xs: percentile(xs, 50), "that is the median (p50)"),
    (max, "that is the maximum; the p90 lies below it when the slowest value stands out"),
    (lambda xs: sum(xs) / len(xs), "that is the mean, not a percentile"),
]


@exercises.register("00.p90", "implement", "The p90 of a list of timings, by linear interpolation")
def check_p90(fn) -> None:
    """Several inputs (one value, two, unsorted, ties, a long tail); float32 answers (torch.quantile) are accepted.

    A wrong answer is compared with the typical mistakes on EVERY input, so the hint names the one mistake that
    explains all of its outputs (on [1, 2] the nearest rank, the maximum and n · q all give 2)."""
    close = lambda a, b: math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)  # noqa: E731 - float32 is ~1e-7 relative
    outputs = []
    for xs in P90_CASES:
        given = list(xs)
        got = exercises.call(fn, given)
        exercises.expect(given == xs, f"p90 changed its input list {xs} to {given}: sort a copy (sorted(values))")
        try:
            outputs.append(float(exercises._scalar(got)))
        except (TypeError, ValueError):
            raise exercises.ExerciseFailed(f"p90({xs}) returned {str(got)[:60]}, expected one number") from None
    wrong = [(xs, got) for xs, got in zip(P90_CASES, outputs) if not close(got, percentile(xs, 90))]
    if not wrong:
        return
    hint = next((f" — {why}" for mistake, why in _P90_MISTAKES
                 if all(close(got, mistake(xs)) for xs, got in zip(P90_CASES, outputs))), "")
    xs, got = wrong[0]
    a, b = exercises.fmt_pair(got, percentile(xs, 90))
    raise exercises.ExerciseFailed(f"p90({xs}) gave {a}, expected {b}{hint}")


@exercises.register("00.peak_gflops", "predict", "This CPU's fp32 peak GFLOP/s from cores × lanes × FMA × clock")
def check_peak(prediction, estimate, logical_cpus: int | None = None) -> None:
    """``estimate`` is the lesson's :class:`course_lib.tuning.common.PeakEstimate` for this machine."""
    want = estimate.gflops
    got = exercises.as_number(prediction, "your peak (GFLOP/s)")
    # ±2 %: the formula is exact arithmetic on the printed numbers; 2 % only absorbs the clock printed to 2 decimals
    # (2.45 vs 2.449 GHz) — a wrong factor (½, ¼, 2×, hyper-threads) is at least 50 % off, far outside it
    if abs(got - want) <= 0.02 * want:
        return
    ratio = got / want if want else float("inf")
    hint = ""
    if math.isclose(ratio, 0.5, rel_tol=0.03):
        hint = " — half of it: one FMA is 2 FLOPs (a multiply and an add), and a core has 2 FMA units here"
    elif math.isclose(ratio, 0.25, rel_tol=0.03):
        hint = " — a quarter of it: count 2 FLOPs per FMA *and* both FMA units"
    elif math.isclose(ratio, 32, rel_tol=0.03):
        hint = " — 32× too much: use fp32 lanes (SIMD bits / 32), not bits"
    elif logical_cpus and estimate.cores and math.isclose(ratio, logical_cpus / estimate.cores, rel_tol=0.03) \
            and logical_cpus != estimate.cores:
        hint = " — that counts logical CPUs (hyper-threads); two threads of one core share its FMA units"
    elif math.isclose(ratio, 1000, rel_tol=0.03):
        hint = " — the clock is in GHz, so cores × lanes × FLOPs × GHz is already in GFLOP/s"
    elif math.isclose(ratio, 1e9, rel_tol=0.03):
        hint = " — that is in FLOP/s; the question asks for GFLOP/s (divide by 10⁹)"
    elif math.isclose(ratio, 2, rel_tol=0.03):
        hint = " — twice too much: 2 FLOPs per FMA and the FMA units counted once each (or 2 FMA units counted twice?)"
    raise exercises.ExerciseFailed(
        f"you predicted {exercises.fmt_pair(got, want)[0]} GFLOP/s; "
        f"{estimate.formula() if hasattr(estimate, 'formula') else exercises.fmt_pair(got, want)[1]} "
        f"(accepted ±2%){hint}")


@exercises.register("00.matmul_ms", "predict", "The time of a bigger matmul from this run's GFLOP/s")
def check_matmul_ms(prediction, n: int, gflops: float) -> None:
    """``n``: the size of the n×n·n×n matmul to predict; ``gflops``: the rate this run measured."""
    want = 2 * n**3 / (gflops * 1e9) * 1e3
    got = exercises.as_number(prediction, "your time (ms)")
    # ±2 %: the prediction is arithmetic on this run's own rate; 2 % absorbs a rate typed from the printout (one decimal)
    if abs(got - want) <= 0.02 * want:
        return
    ratio = got / want
    hint = ""
    if math.isclose(ratio, 0.5, rel_tol=0.03):
        hint = " — half of it: an n³ matmul does n³ multiply-adds, 2·n³ FLOPs"
    elif math.isclose(ratio, 1e-3, rel_tol=0.03):
        hint = " — that looks like seconds; give milliseconds"
    elif math.isclose(ratio, 1 / n, rel_tol=0.03):
        hint = " — that scales with n², but a matmul does n³ multiply-adds"
    elif math.isclose(ratio, 1 / 8, rel_tol=0.03):
        hint = f" — that is the time of the {n // 2}³ matmul: doubling n multiplies the work by 8"
    elif math.isclose(ratio, 1e3, rel_tol=0.03):
        hint = " — that looks like microseconds; give milliseconds"
    elif math.isclose(ratio, 2, rel_tol=0.03):
        hint = " — twice too much: 2·n³ FLOPs already counts the multiply and the add"
    a, b = exercises.fmt_pair(got, want)
    raise exercises.ExerciseFailed(
        f"you predicted {a} ms; 2·{n}³ FLOPs at {gflops:.1f} GFLOP/s take {b} ms (accepted ±2%){hint}")


@exercises.register("00.sample_count", "explore", "Sample at another interval: how many samples did it take?")
def check_sample_count(answer, sampler, device: str, seconds: float, lesson_interval: float | None = None) -> None:
    """``sampler``: the learner's own finished :class:`course_lib.hw.UtilizationSampler`, run at an interval they
    chose (not ``lesson_interval``, the demo's); ``device``: the row asked about; ``seconds``: how long it ran."""
    exercises.answered(answer, sampler)
    exercises.expect(hasattr(sampler, "summary") and hasattr(sampler, "interval"),
                     f"my_sampler must be the hw.UtilizationSampler you ran (with ... as my_sampler), got "
                     f"{type(sampler).__name__}")
    if lesson_interval is not None:
        exercises.expect(not math.isclose(sampler.interval, lesson_interval),
                         f"your sampler ran at the demo's own interval ({lesson_interval:g} s): the question is what "
                         "another interval does — set my_interval to e.g. 0.5 or 0.05 and run the cell again")
    stats = sampler.summary()
    exercises.expect(bool(stats), "your sampler has no samples: run it inside `with ... as my_sampler:` for a while "
                                  "(time.sleep(sample_seconds)) before reading it")
    exercises.expect(device in stats, f"the sampler has no {device!r} samples (it has {', '.join(stats)})")
    want = stats[device].samples
    got = exercises.as_int(answer, "the number of samples")
    if got == want:
        print(f"your sampler: {want} samples of {device} at {sampler.interval:g} s over ~{seconds:g} s "
              f"(sample_seconds / interval = {seconds / sampler.interval:.1f})")
        return
    nominal = seconds / sampler.interval
    hint = ""
    if abs(got - nominal) < 1 and got != want:
        hint = (f" — {got} is sample_seconds / interval, the count on an idle machine; the thread waits one interval "
                "*after* each sample has finished, so it takes fewer: read the `samples` of my_sampler.summary()")
    elif got == sum(s.samples for s in stats.values()):
        hint = f" — that adds up every device's samples; the question is about {device} alone"
    elif lesson_interval is not None and abs(got - seconds / lesson_interval) <= max(1.5, 0.1 * seconds / lesson_interval):
        hint = f" — that is about the demo sampler's count (interval {lesson_interval:g} s); count the samples of yours"
    raise exercises.ExerciseFailed(f"you answered {got}; your sampler took {want} samples of {device} "
                                   f"(interval {sampler.interval:g} s){hint}")
