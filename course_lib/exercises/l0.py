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


@exercises.register("00.p90", "implement", "The p90 of a list of timings, by linear interpolation")
def check_p90(fn) -> None:
    for xs in P90_CASES:
        given = list(xs)
        got = exercises.call(fn, given)
        want = percentile(xs, 90)
        exercises.expect(given == xs, f"p90 changed its input list {xs} to {given}: sort a copy (sorted(values))")
        try:
            got = float(got)
        except (TypeError, ValueError):
            raise exercises.ExerciseFailed(f"p90({xs}) returned {got!r}, expected a number") from None
        if math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12):
            continue
        hint = ""
        if math.isclose(got, _nearest_rank(xs)):
            hint = " — that is the nearest-rank value; interpolate between the two neighbouring order statistics"
        elif math.isclose(got, _unsorted_interp(xs)):
            hint = " — that interpolates in the unsorted list: sort the values first"
        elif math.isclose(got, _len_not_len_minus_one(xs)):
            hint = " — the position is (n - 1) · q / 100, not n · q / 100 (the last value has index n - 1)"
        elif math.isclose(got, percentile(xs, 10)):
            hint = " — that is the p10; the p90 is near the slow end"
        raise exercises.ExerciseFailed(f"p90({xs}) gave {got:.6g}, expected {want:.6g}{hint}")


@exercises.register("00.peak_gflops", "predict", "This CPU's fp32 peak GFLOP/s from cores × lanes × FMA × clock")
def check_peak(prediction, estimate, logical_cpus: int | None = None) -> None:
    """``estimate`` is the lesson's :class:`course_lib.tuning.common.PeakEstimate` for this machine."""
    exercises.answered(prediction)
    want = estimate.gflops
    try:
        got = float(prediction)
    except (TypeError, ValueError):
        raise exercises.ExerciseFailed(f"expected a number of GFLOP/s, got {prediction!r}") from None
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
    raise exercises.ExerciseFailed(
        f"you predicted {got:.4g} GFLOP/s; {estimate.formula() if hasattr(estimate, 'formula') else want} "
        f"(accepted ±2%){hint}")


@exercises.register("00.matmul_ms", "predict", "The time of a bigger matmul from this run's GFLOP/s")
def check_matmul_ms(prediction, n: int, gflops: float) -> None:
    """``n``: the size of the n×n·n×n matmul to predict; ``gflops``: the rate this run measured."""
    exercises.answered(prediction)
    want = 2 * n**3 / (gflops * 1e9) * 1e3
    try:
        got = float(prediction)
    except (TypeError, ValueError):
        raise exercises.ExerciseFailed(f"expected a number of milliseconds, got {prediction!r}") from None
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
    raise exercises.ExerciseFailed(
        f"you predicted {got:.4g} ms; 2·{n}³ FLOPs at {gflops:.1f} GFLOP/s take {want:.4g} ms (accepted ±2%){hint}")


@exercises.register("00.sample_count", "explore", "How many samples did the utilisation sampler take?")
def check_sample_count(answer, sampler, device: str, seconds: float) -> None:
    """``sampler``: the finished :class:`course_lib.hw.UtilizationSampler`; ``device``: the row asked about."""
    exercises.answered(answer)
    stats = sampler.summary()
    exercises.expect(device in stats, f"the sampler has no {device!r} samples (it has {', '.join(stats)})")
    want = stats[device].samples
    try:
        got = int(answer)
    except (TypeError, ValueError):
        raise exercises.ExerciseFailed(f"expected a whole number of samples, got {answer!r}") from None
    if got == want:
        return
    nominal = seconds / sampler.interval
    hint = ""
    if abs(got - nominal) < 1 and got != want:
        hint = (f" — {got} is sample_seconds / sample_interval, the count on an idle machine; the thread wakes "
                "every interval *after* the previous sample finished, so a loaded machine takes fewer: read the "
                "`samples` column")
    elif got == sum(s.samples for s in stats.values()):
        hint = f" — that adds up every device's samples; the question is about {device} alone"
    raise exercises.ExerciseFailed(f"you answered {got}; the sampler took {want} samples of {device} this run{hint}")
