"""The one timing harness every lesson uses: warm-up, device sync, N repeats, robust statistics.

Introduced in ``00_environment.ipynb``. ::

    r = bench.benchmark(lambda: model(x), name="eager bs8", items=8, warmup=3, repeat=20)
    r.p10_ms, r.p50_ms, r.p90_ms, r.throughput  # latency of one call (p50 = median_ms), items per second
    df = bench.to_frame([r1, r2]); bench.bar_chart(df)

On CUDA the time of each call is taken with CUDA events (``torch.cuda.Event``) and the stream is
synchronised, so asynchronous kernel launches are not mistaken for finished work. On CPU a
monotonic wall clock (``time.perf_counter``) is used. Timings are *reported*, never asserted:
the tests check this module's arithmetic with a fake clock.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of an empty list")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class BenchResult:
    """Times (seconds) of ``repeat`` timed calls of one function, each processing ``items`` items."""

    name: str
    times_s: list[float]
    items: int = 1
    unit: str = "items"
    warmup: int = 0
    device: str = "cpu"
    extra: dict = field(default_factory=dict)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile (0..100) of the per-call times, in ms (linear interpolation, numpy's default)."""
        return percentile(self.times_s, q) * 1e3

    @property
    def p10_ms(self) -> float:
        """10th percentile of the per-call times (ms): the low end of the p10–p90 spread the lessons quote."""
        return self.percentile_ms(10)

    @property
    def p50_ms(self) -> float:
        """50th percentile (ms); the same number as :attr:`median_ms`."""
        return self.median_ms

    @property
    def median_ms(self) -> float:
        return self.median_s * 1e3

    @property
    def p90_ms(self) -> float:
        """90th percentile of the per-call times (ms): the high end of the p10–p90 spread."""
        return self.percentile_ms(90)

    @property
    def min_ms(self) -> float:
        return min(self.times_s) * 1e3

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.times_s) * 1e3

    @property
    def throughput(self) -> float:
        """Items per second at the median latency (``items / median_s``)."""
        return self.items / self.median_s if self.median_s > 0 else float("inf")

    def as_row(self) -> dict:
        """A flat dict, one pandas row: name, device, items, latency statistics (p10, median = p50, p90, min, mean), throughput, extras."""
        return {
            "name": self.name,
            "device": self.device,
            "items": self.items,
            "repeat": len(self.times_s),
            "p10_ms": self.p10_ms,
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "min_ms": self.min_ms,
            "mean_ms": self.mean_ms,
            f"{self.unit}/s": self.throughput,
            **self.extra,
        }

    def __str__(self) -> str:
        return (
            f"{self.name}: median {self.median_ms:.3f} ms (p10–p90 {self.p10_ms:.3f}–{self.p90_ms:.3f} ms), "
            f"min {self.min_ms:.3f} ms, {self.throughput:,.1f} {self.unit}/s ({len(self.times_s)} runs, {self.device})"
        )


def _is_cuda(device: str | None) -> bool:
    return bool(device) and str(device).startswith("cuda")


def time_calls(fn: Callable[[], object], repeat: int, *, cuda: bool = False,
               clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds taken by each of ``repeat`` calls of ``fn``: CUDA events on a GPU, ``clock`` on the CPU (00).

    A CUDA kernel launch returns before the GPU has finished, so a wall clock around ``fn()`` would time
    the launch. Events recorded on the stream before and after the call measure the GPU's own time.
    """
    times: list[float] = []
    if cuda:
        import torch

        torch.cuda.synchronize()  # nothing queued from before is charged to the first call
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()  # wait until the GPU reaches the end event
            times.append(start.elapsed_time(end) / 1e3)  # ms -> s
    else:
        for _ in range(repeat):
            t0 = clock()
            fn()
            times.append(clock() - t0)
    return times


def _thread_cpu_ns() -> dict[int, int] | None:
    """CPU time (ns) each thread of this process has run so far, from ``/proc/self/task/*/schedstat``; None off Linux."""
    import os

    base = "/proc/self/task"
    try:
        tids = os.listdir(base)
    except OSError:
        return None
    out = {}
    for tid in tids:
        try:
            with open(f"{base}/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):  # a thread that just ended, or no schedstat in this kernel
            continue
    return out or None


def _others_ns(before: dict[int, int], after: dict[int, int]) -> int:
    """CPU ns the threads other than the calling one ran between two :func:`_thread_cpu_ns` snapshots."""
    import threading

    me = threading.get_native_id()
    return sum(ns - before.get(tid, ns) for tid, ns in after.items() if tid != me)


def settle(window_s: float = 0.02, timeout_s: float = 1.0, fallback_s: float = 0.2) -> bool:
    """Wait until no other thread of this process is burning CPU; True once they are idle, False on ``timeout_s``.

    Thread-pool runtimes keep their worker threads *spinning* for a while after a parallel call so the next call
    starts fast: TVM's pool (``TVM_THREAD_POOL_SPIN_COUNT``; ≈0.14 s measured on CI's CPU), torch's OpenMP
    (``OMP_WAIT_POLICY``/``GOMP_SPINCOUNT``), onnxruntime's intra-op pool. Timing one runtime right after another in
    the same process then measures both: the spinning workers hold cores the timed kernel needs. Call this before
    each timed sample of *another* runtime; it waits for a state (the other threads' CPU time stops growing over
    ``window_s``, two scheduler ticks at 100 Hz), not a fixed duration. Off Linux (no per-thread CPU times) it sleeps ``fallback_s``.
    """
    before = _thread_cpu_ns()
    if before is None:
        time.sleep(fallback_s)
        return True
    deadline = time.monotonic() + timeout_s
    while True:
        time.sleep(window_s)
        after = _thread_cpu_ns() or {}
        if _others_ns(before, after) < 0.2 * window_s * 1e9:  # the other threads ran < 20 % of one core over the window: idle
            return True
        if time.monotonic() >= deadline:
            return False
        before = after


def spin_after(fn: Callable[[], object], window_s: float = 0.3) -> float | None:
    """Call ``fn``, then return how many ms of CPU the process's *other* threads burn over the next ``window_s``.

    A thread-pool runtime whose workers sleep at once shows ≈0; one that spins before sleeping shows its spin time
    (summed over workers). None off Linux (no per-thread CPU times). Notebook 04 measures TVM and torch with it.
    """
    fn()
    before = _thread_cpu_ns()
    if before is None:
        return None
    time.sleep(window_s)
    return _others_ns(before, _thread_cpu_ns() or {}) / 1e6


def benchmark(
    fn: Callable[[], object],
    *,
    name: str = "",
    items: int = 1,
    unit: str = "items",
    warmup: int = 3,
    repeat: int = 10,
    device: str | None = "cpu",
    clock: Callable[[], float] = time.perf_counter,
    extra: dict | None = None,
) -> BenchResult:
    """Call ``fn`` ``warmup`` times untimed, then ``repeat`` times timed; return a :class:`BenchResult`.

    ``items`` is how many items (samples, tokens, queries) one call processes; ``device`` decides the
    synchronisation (``"cuda..."``: CUDA events + synchronize). ``clock`` is injectable for tests.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if items < 1:
        raise ValueError(f"items must be >= 1, got {items}")
    cuda = _is_cuda(device)
    if cuda:
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
    for _ in range(warmup):  # untimed: allocation, lazy initialisation, JIT, caches
        fn()
    times = time_calls(fn, repeat, cuda=cuda, clock=clock)
    return BenchResult(
        name=name or getattr(fn, "__name__", "fn"),
        times_s=times,
        items=items,
        unit=unit,
        warmup=warmup,
        device=str(device or "cpu"),
        extra=dict(extra or {}),
    )


def interleaved(calls: dict[str, Callable[[], object]], *, rounds: int, warmup: int = 1, items: int = 1,
                unit: str = "items", extra: dict[str, dict] | None = None,
                progress: bool = False, self_timed: bool = False) -> dict[str, BenchResult]:
    """Time several callables in interleaved rounds, one call of each per round → ``{name: BenchResult}``.

    On a shared machine a burst of other work lands on whichever callable is being timed. Interleaving spreads it
    over all of them instead of handicapping one, so the ratios between them stay fair: compare results of one call
    of this function, never with a figure timed at another moment. Each call starts once this process's other
    threads are idle (:func:`settle`): one runtime's spinning thread pool must not slow the next one down. The first
    ``warmup`` rounds are untimed; ``extra`` adds columns per name (e.g. the threads a variant used).

    By default a round's sample is one call of each, timed here. ``self_timed=True``: each callable measures itself
    and returns its seconds per call (the mean or median of several calls, TVM's ``time_evaluator``), which becomes
    the round's sample; the order, the settling and the warm-up rounds stay the same.
    """
    if not calls:
        raise ValueError("no callables to time")
    if rounds < 1 or warmup < 0 or items < 1:
        raise ValueError(f"need rounds >= 1, warmup >= 0, items >= 1; got {rounds}, {warmup}, {items}")
    extra = dict(extra or {})
    if set(extra) - set(calls):
        raise ValueError(f"extra names no timed callable: {sorted(set(extra) - set(calls))}")
    from course_lib import hw

    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in hw.progress(range(warmup + rounds), desc="interleaved rounds", disable=not progress):
        for name, fn in calls.items():
            settle()  # the previous callable's runtime (onnxruntime, OpenMP, llama.cpp) may still spin on the cores
            t = _own_seconds(name, fn()) if self_timed else time_calls(fn, 1)[0]
            if i >= warmup:
                times[name].append(t)
    return {name: BenchResult(name, times[name], items=items, unit=unit, warmup=warmup, extra=dict(extra.get(name, {})))
            for name in calls}


def _own_seconds(name: str, value) -> float:
    """The seconds per call a self-timed callable returned, checked: a positive, finite number."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not (0 < seconds < math.inf):
        raise ValueError(f"{name}: a self-timed callable must return its seconds per call (> 0), got {value!r}")
    return seconds


def to_frame(results: Iterable[BenchResult]):
    """A pandas DataFrame with one row per result (see :meth:`BenchResult.as_row`)."""
    import pandas as pd

    return pd.DataFrame([r.as_row() for r in results])


def bar_chart(results, column: str | None = None, ax=None, title: str | None = None, label: str = "name"):
    """A horizontal bar chart of ``column`` (default: the throughput column) per result; returns the Axes.

    ``results`` is a list of :class:`BenchResult` or a DataFrame made by :func:`to_frame`.
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    df = results if isinstance(results, pd.DataFrame) else to_frame(results)
    if column is None:
        candidates = [c for c in df.columns if c.endswith("/s")]
        if not candidates:
            raise ValueError("no throughput column found; pass column=")
        column = candidates[0]
    if column not in df.columns:
        raise ValueError(f"column {column!r} not in results (have: {', '.join(map(str, df.columns))})")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.45 * len(df) + 1.2))
    ax.barh(df[label].astype(str), df[column])
    for y, v in enumerate(df[column]):
        ax.annotate(f"{v:,.3g}", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(column)
    ax.set_title(title or column)
    ax.figure.tight_layout()
    return ax
