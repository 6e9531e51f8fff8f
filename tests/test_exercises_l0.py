"""Notebook 00's exercise checks: the solutions pass, blanks are 'not attempted', typical mistakes are named."""

import time
from pathlib import Path

import pytest

from course_lib import exercises, hw
from course_lib.exercises import ExerciseFailed, NotAttempted
from course_lib.tuning.common import PeakEstimate

SOLUTIONS = exercises.load_solutions(Path(__file__).resolve().parents[1] / "solutions" / "00_environment.py")
PEAK = PeakEstimate(cores=4, simd_bits=512, fma_units=2, clock_ghz=2.5, flags="AVX-512")  # 640 GFLOP/s


def solved(id, **names):
    ns = dict(names)
    exec(SOLUTIONS[id], ns)
    return ns


def run(id, *args, **kw):
    exercises.lookup(id).fn(*args, **kw)


def test_every_notebook_exercise_is_registered_with_a_solution():
    ids = {e.id for e in exercises.registered("00")}
    assert ids == {"00.p90", "00.peak_gflops", "00.matmul_ms", "00.sample_count"} == set(SOLUTIONS)
    assert {e.kind for e in exercises.registered("00")} == {"implement", "predict", "explore"}


def test_p90_solution_blank_and_typical_mistakes():
    run("00.p90", solved("00.p90")["p90"])

    def blank(values):
        raise NotImplementedError

    with pytest.raises(NotAttempted):
        run("00.p90", blank)

    def nearest_rank(values):
        xs = sorted(values)
        return xs[min(len(xs) - 1, -(-9 * len(xs) // 10) - 1)]

    def unsorted(values):
        pos = (len(values) - 1) * 0.9
        lo = int(pos)
        hi = min(lo + 1, len(values) - 1)
        return values[lo] + (values[hi] - values[lo]) * (pos - lo)

    def sorts_in_place(values):
        values.sort()
        return solved("00.p90")["p90"](values)

    for wrong, words in ((nearest_rank, "nearest-rank"), (unsorted, "sort the values first"),
                         (sorts_in_place, "sort a copy"), (lambda v: max(v), "expected")):
        with pytest.raises(ExerciseFailed, match=words):
            run("00.p90", wrong)


def test_peak_solution_blank_and_typical_mistakes():
    ns = solved("00.peak_gflops", peak=PEAK)
    assert ns["my_peak_gflops"] == pytest.approx(640)
    run("00.peak_gflops", ns["my_peak_gflops"], PEAK, 8)
    with pytest.raises(NotAttempted):
        run("00.peak_gflops", None, PEAK, 8)
    with pytest.raises(ExerciseFailed, match="one FMA is 2 FLOPs"):
        run("00.peak_gflops", 320, PEAK, 8)
    with pytest.raises(ExerciseFailed, match="logical CPUs"):
        run("00.peak_gflops", 960, PEAK, 6)
    with pytest.raises(ExerciseFailed, match="not bits"):
        run("00.peak_gflops", 640 * 32, PEAK, 8)
    with pytest.raises(ExerciseFailed, match="expected a number"):
        run("00.peak_gflops", "fast", PEAK, 8)


def test_matmul_ms_solution_blank_and_typical_mistakes():
    ns = solved("00.matmul_ms", big_n=1024, gflops=100.0)
    assert ns["my_matmul_ms"] == pytest.approx(2 * 1024**3 / 100e9 * 1e3)
    run("00.matmul_ms", ns["my_matmul_ms"], n=1024, gflops=100.0)
    with pytest.raises(NotAttempted):
        run("00.matmul_ms", None, n=1024, gflops=100.0)
    with pytest.raises(ExerciseFailed, match="2·n³ FLOPs"):
        run("00.matmul_ms", ns["my_matmul_ms"] / 2, n=1024, gflops=100.0)
    with pytest.raises(ExerciseFailed, match="seconds"):
        run("00.matmul_ms", ns["my_matmul_ms"] / 1e3, n=1024, gflops=100.0)
    with pytest.raises(ExerciseFailed, match="multiplies the work by 8"):
        run("00.matmul_ms", ns["my_matmul_ms"] / 8, n=1024, gflops=100.0)


def test_sample_count_solution_blank_and_typical_mistakes():
    # the solution runs its own sampler at another interval than the demo's (0.2 s here) for sample_seconds
    ns = solved("00.sample_count", hw=hw, time=time, sample_interval=0.2, sample_seconds=0.3,
                sampled_device="cpu:process")
    sampler = ns["my_sampler"]
    assert sampler.interval == 0.05
    n = sampler.summary()["cpu:process"].samples
    assert ns["my_sample_count"] == n
    kw = dict(lesson_interval=0.2)
    run("00.sample_count", n, sampler, "cpu:process", 0.3, **kw)
    with pytest.raises(NotAttempted):
        run("00.sample_count", None, sampler, "cpu:process", 0.3, **kw)
    with pytest.raises(NotAttempted):
        run("00.sample_count", n, None, "cpu:process", 0.3, **kw)
    with pytest.raises(ExerciseFailed, match="adds up every device"):
        run("00.sample_count", 2 * n, sampler, "cpu:process", 0.3, **kw)
    with pytest.raises(ExerciseFailed, match="sample_seconds / interval"):
        run("00.sample_count", n + 1, sampler, "cpu:process", (n + 1) * 0.05, **kw)
    with pytest.raises(ExerciseFailed, match="no 'cuda:3' samples"):
        run("00.sample_count", n, sampler, "cuda:3", 0.3, **kw)
    with pytest.raises(ExerciseFailed, match="demo's own interval"):
        run("00.sample_count", n, sampler, "cpu:process", 0.3, lesson_interval=0.05)
