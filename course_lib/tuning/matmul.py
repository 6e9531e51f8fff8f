"""C = A·B with ``te.compute``, built naive and then scheduled by hand, one ``s_tir.Schedule`` step at a time.

Introduced in ``04_tvm_autotuning.ipynb`` (part 1). The steps follow TVM's classic ``opt_gemm`` tutorial
(and the seed lesson): split i/j into outer/inner tiles, reorder to ``i.outer, j.outer, k, i.inner, j.inner``,
vectorise the innermost loop, parallelise the outermost. TVM 0.27 has no ``te.create_schedule``: the
compute is turned into a TIR ``PrimFunc`` (``te.create_prim_func``) and scheduled with ``tvm.s_tir.Schedule``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from course_lib import bench, claims
from course_lib.tuning.common import host_target, matmul_flops, require_tvm, time_kernel

STEPS = ("naive", "split", "reorder", "vectorize", "parallel")


def matmul_module(n: int = 512, l: int = 512, m: int = 512, dtype: str = "float32"):
    """An ``IRModule`` whose ``main`` computes C[n, m] = sum_k A[n, k] · B[k, m] (``te.compute`` → PrimFunc)."""
    tvm = require_tvm()
    from tvm import te

    for name, v in (("n", n), ("l", l), ("m", m)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"matmul size {name} must be a positive integer, got {v!r}")
    A = te.placeholder((n, l), name="A", dtype=dtype)
    B = te.placeholder((l, m), name="B", dtype=dtype)
    k = te.reduce_axis((0, l), name="k")
    C = te.compute((n, m), lambda i, j: te.sum(A[i, k] * B[k, j], axis=k), name="C")
    return tvm.IRModule({"main": te.create_prim_func([A, B, C])})


def check_divisible(extent: int, factor: int, what: str) -> None:
    """Raise a clear ValueError unless ``factor`` divides ``extent`` (the lesson's templates use perfect tiles)."""
    if not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"{what}: tile factor must be a positive integer, got {factor!r}")
    if extent % factor:
        divisors = [d for d in range(1, extent + 1) if extent % d == 0]
        raise ValueError(
            f"{what}: tile factor {factor} does not divide the loop extent {extent} "
            f"(divisors: {divisors[:12]}{' …' if len(divisors) > 12 else ''}); pick a divisor, or TVM would need a "
            "guard (predicate) in every iteration"
        )


def hand_schedule(mod, step: str = "parallel", tile_y: int = 32, tile_x: int = 32):
    """The hand schedule applied up to and including ``step`` (one of :data:`STEPS`); returns an ``s_tir.Schedule``."""
    require_tvm()
    from tvm import s_tir

    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; choose from {', '.join(STEPS)}")
    sch = s_tir.Schedule(mod)
    upto = STEPS.index(step)
    if upto == 0:
        return sch
    block = sch.get_sblock("C")
    i, j, k = sch.get_loops(block)
    n = int(sch.get(i).extent)
    m = int(sch.get(j).extent)
    check_divisible(n, tile_y, "split of i")
    check_divisible(m, tile_x, "split of j")
    io, ii = sch.split(i, factors=[None, tile_y])
    jo, ji = sch.split(j, factors=[None, tile_x])
    if upto >= 2:
        sch.reorder(io, jo, k, ii, ji)
    if upto >= 3:
        sch.vectorize(ji)
    if upto >= 4:
        sch.parallel(io)
    return sch


def schedule_steps(mod, tile_y: int = 32, tile_x: int = 32) -> dict:
    """Every step of the hand schedule: ``{step name: s_tir.Schedule}`` in order."""
    return {s: hand_schedule(mod, s, tile_y, tile_x) for s in STEPS}


def build(sch_or_mod, target=None):
    """Compile a schedule (or IRModule) for the host CPU with ``tvm.compile``; returns the executable."""
    tvm = require_tvm()
    mod = sch_or_mod.mod if hasattr(sch_or_mod, "trace") else sch_or_mod
    return tvm.compile(mod, target=target or host_target())


@dataclass
class MatmulData:
    """Random inputs (numpy and TVM tensors) and the numpy reference for one matmul shape."""

    a: np.ndarray
    b: np.ndarray
    ref: np.ndarray
    args: list

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.a.shape[0], self.a.shape[1], self.b.shape[1])


def make_data(n: int, l: int, m: int, seed: int = 0, dtype: str = "float32") -> MatmulData:
    """Random A, B (uniform in [-1, 1)), C = 0 as TVM tensors, plus numpy's A @ B as the reference."""
    tvm = require_tvm()
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (n, l)).astype(dtype)
    b = rng.uniform(-1, 1, (l, m)).astype(dtype)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev), tvm.runtime.tensor(b, dev), tvm.runtime.tensor(np.zeros((n, m), dtype), dev)]
    return MatmulData(a=a, b=b, ref=a @ b, args=args)


class WrongResult(AssertionError):
    """A kernel whose output differs from numpy's beyond the tolerance; the message gives the max error."""


def run_and_check(lib, data: MatmulData, rtol: float = 1e-4, atol: float = 1e-4) -> float:
    """Run the kernel once, compare with numpy (``assert_allclose``'s rule); returns the max absolute difference.

    A wrong result raises :class:`WrongResult` saying how wrong: the max |C - numpy|, where, and how many elements.
    """
    data.args[2].copyfrom(np.zeros_like(data.ref))
    lib["main"](*data.args)
    out = data.args[2].numpy()
    diff = np.abs(out - data.ref)
    tol = atol * data.shape[1] ** 0.5 + rtol * np.abs(data.ref)
    bad = ~(diff <= tol)  # NaN counts as wrong
    if bad.any():
        worst = np.unravel_index(int(np.nanargmax(np.where(bad, diff, -1.0))), diff.shape)
        raise WrongResult(
            f"wrong result: max |C - numpy| = {float(np.nanmax(diff)):.3g} at {tuple(int(i) for i in worst)}, "
            f"{int(bad.sum())} of {bad.size} elements outside the tolerance (atol {atol * data.shape[1] ** 0.5:.2g}, rtol {rtol:g})"
        )
    return float(diff.max())


def gflops_of(lib, data: MatmulData, number: int = 3, repeat: int = 3, name: str = "tvm"):
    """Time a compiled matmul with ``time_evaluator``; a :class:`course_lib.bench.BenchResult` in FLOP units.

    Like :func:`numpy_bench` and :func:`torch_bench` it first waits for other runtimes' spinning threads
    (:func:`course_lib.bench.settle`), so a kernel is not charged for the one timed before it.
    """
    bench.settle()
    times = time_kernel(lib, data.args, number=number, repeat=repeat)
    return bench.BenchResult(name=name, times_s=times, items=matmul_flops(*data.shape), unit="FLOP", warmup=1)


def gflops(result) -> float:
    """GFLOP/s at the median time of a FLOP-unit :class:`BenchResult`."""
    return result.throughput / 1e9


def numpy_bench(data: MatmulData, repeat: int = 10):
    """numpy's BLAS matmul on the same inputs, timed with :func:`course_lib.bench.benchmark`."""
    a, b = data.a, data.b
    bench.settle()  # TVM's workers spin ~0.15 s after a kernel: not numpy's time
    return bench.benchmark(lambda: a @ b, name="numpy (BLAS)", items=matmul_flops(*data.shape), unit="FLOP", repeat=repeat)


def torch_bench(data: MatmulData, repeat: int = 10):
    """torch.matmul (oneDNN/MKL) on the same inputs, timed with :func:`course_lib.bench.benchmark`."""
    import torch

    from course_lib.bench import benchmark

    a, b = torch.from_numpy(data.a), torch.from_numpy(data.b)
    bench.settle()
    with torch.no_grad():
        return bench.benchmark(lambda: a @ b, name="torch.matmul", items=matmul_flops(*data.shape), unit="FLOP", repeat=repeat)


def loop_nest(sch, max_chars: int = 1500) -> str:
    """The body of a schedule's ``main`` as TVMScript (without the function header), for printing after a step."""
    body = sch.mod.script().split('T.func_attr({"tirx.noalias": True})')[-1].strip("\n")
    return body if len(body) <= max_chars else body[:max_chars] + "\n    …"


def check_and_time(sch, data: MatmulData, name: str, number: int = 3, repeat: int = 5, target=None):
    """Build a schedule, check it against numpy (:func:`run_and_check`), time it; returns the FLOP-unit BenchResult.

    The max |C - numpy| is kept in ``result.extra["max_abs_err"]``.
    """
    lib = build(sch, target)
    err = run_and_check(lib, data)
    res = gflops_of(lib, data, number=number, repeat=repeat, name=name)
    res.extra["max_abs_err"] = err
    return res


def gflops_range(result) -> tuple[float, float]:
    """(low, high) GFLOP/s of a FLOP-unit BenchResult: at its p90 time and at its p10 time (the run-to-run spread)."""
    flop = result.items
    return flop / bench.percentile(result.times_s, 90) / 1e9, flop / bench.percentile(result.times_s, 10) / 1e9


def compare(before, after) -> str:
    """A sentence comparing two FLOP-unit BenchResults with their p10–p90 spread; says when the ranges overlap.

    The direction comes from :func:`course_lib.claims.separation` and the sentence is recorded as a claim, so the
    course run's audit checks it like every other comparison.
    """
    lo_b, hi_b = gflops_range(before)
    lo_a, hi_a = gflops_range(after)
    ratio = gflops(after) / gflops(before)
    spread = f"{gflops(before):.2f} [{lo_b:.2f}–{hi_b:.2f}] → {gflops(after):.2f} [{lo_a:.2f}–{hi_a:.2f}] GFLOP/s"
    claim = claims.compare_spreads(getattr(after, "name", "after"), (lo_a, gflops(after), hi_a),
                                   getattr(before, "name", "before"), (lo_b, gflops(before), hi_b),
                                   n_a=len(after.times_s), n_b=len(before.times_s), higher_is_better=True,
                                   quantity="GFLOP/s", better="faster", worse="slower", record=False)
    return claims.worded(claim, higher=f"{spread}: {ratio:.2f}× faster, outside the run-to-run spread",
                         lower=f"{spread}: {1 / ratio:.2f}× slower, outside the run-to-run spread",
                         none=f"{spread}: ×{ratio:.2f}, within the run-to-run spread (the p10–p90 ranges overlap; "
                         "another run can flip it)")


def time_interleaved(kernels: dict, data: MatmulData, rounds: int = 10, number: int = 3, target=None) -> dict:
    """Time several matmul implementations in alternating rounds, so every one sees the same machine load.

    ``kernels`` maps a name to an ``s_tir.Schedule`` (built, checked against numpy, timed with TVM's
    ``time_evaluator``) or to ``"torch"`` / ``"numpy"`` (``torch.matmul`` / numpy's BLAS on the same inputs, timed
    with ``time.perf_counter``). Each round times ``number`` calls of every kernel in turn and keeps their mean: one
    sample per round, the same rule for all. Returns ``{name: FLOP-unit BenchResult}`` with ``rounds`` samples each;
    ratios between them use one measurement of each (never a reference timed at another moment).

    The rounds are :func:`course_lib.bench.interleaved`'s, each kernel timing itself (``self_timed``). Each sample
    starts once the other runtime's worker threads have stopped spinning (:func:`course_lib.bench.settle`): TVM's pool
    and torch's OpenMP keep spinning after a call, and a kernel timed right after the other runtime shares its cores
    with them (notebook 04 measures how much). Every sample then makes one untimed call first (a first call after an
    idle pause is slow: its threads are asleep).
    """
    import time

    import torch

    if rounds < 1 or number < 1:
        raise ValueError(f"rounds and number must be >= 1, got {rounds} and {number}")
    flop = matmul_flops(*data.shape)
    ta, tb = torch.from_numpy(data.a), torch.from_numpy(data.b)
    calls = {}
    for name, k in kernels.items():
        if isinstance(k, str):
            if k not in ("torch", "numpy"):
                raise ValueError(f"{name}: a kernel is a schedule, 'torch' or 'numpy', got {k!r}")
            fn = (lambda: ta @ tb) if k == "torch" else (lambda: data.a @ data.b)

            def timed(fn=fn):
                fn()  # untimed, like time_evaluator's first call: wakes this runtime's threads after the settle
                t0 = time.perf_counter()
                for _ in range(number):
                    fn()
                return (time.perf_counter() - t0) / number

            for _ in range(2):  # warm-up: thread pool start, allocations
                fn()
        else:
            lib = build(k, target)
            run_and_check(lib, data)
            mod = lib.mod if hasattr(lib, "mod") else lib
            ev = mod.time_evaluator("main", require_tvm().cpu(), number=number, repeat=1)

            def timed(ev=ev):  # time_evaluator makes one untimed call before its timed ones
                return float(ev(*data.args).results[0])

        calls[name] = timed
    with torch.no_grad():  # each round: every kernel in turn, each sample after bench.settle(), its own mean of `number`
        return bench.interleaved(calls, rounds=rounds, warmup=0, items=flop, unit="FLOP", self_timed=True)


def separated(a, b) -> bool:
    """True when the p10–p90 GFLOP/s ranges of two FLOP-unit BenchResults do not overlap (a direction can be stated)."""
    return claims.separation(gflops_range(a), gflops_range(b)) != claims.NONE


