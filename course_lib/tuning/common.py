"""TVM plumbing shared by lesson 4: import check, host target, peak-FLOP estimate, kernel timing.

Introduced in ``04_tvm_autotuning.ipynb``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from course_lib.tvmtools import host_cpu, host_target, physical_cores, pool_env, require_tvm  # noqa: F401,E402 (shared with lesson 3)


# --------------------------------------------------------------------------------------------
# Peak FLOP/s estimate
# --------------------------------------------------------------------------------------------


@dataclass
class PeakEstimate:
    """cores × SIMD lanes (fp32) × FMA units × 2 FLOP per FMA × clock: the ceiling no kernel beats."""

    cores: int
    simd_bits: int
    fma_units: int
    clock_ghz: float
    flags: str = ""

    @property
    def lanes(self) -> int:
        """fp32 values per SIMD register."""
        return self.simd_bits // 32

    @property
    def gflops(self) -> float:
        """The estimated peak in GFLOP/s."""
        fma_flops = 2 if self.fma_units else 1
        units = max(self.fma_units, 1)
        return self.cores * self.lanes * units * fma_flops * self.clock_ghz

    def formula(self) -> str:
        """The arithmetic as a sentence a learner can check by hand."""
        return (
            f"{self.cores} cores × {self.lanes} fp32 lanes ({self.simd_bits}-bit {self.flags}) × "
            f"{max(self.fma_units, 1)} FMA unit(s) × {2 if self.fma_units else 1} FLOP × {self.clock_ghz:.2f} GHz "
            f"= {self.gflops:.0f} GFLOP/s"
        )


def peak_gflops_estimate(cpuinfo: str | None = None, cores: int | None = None, fma_units: int = 2) -> PeakEstimate:
    """Estimate this CPU's fp32 peak from ``/proc/cpuinfo`` (flags → SIMD width, clock from the model name or MHz).

    ``fma_units`` is 2 on server Intel/AMD cores (two FMA ports); a guess the notebook states openly.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        except OSError:
            cpuinfo = ""
    flags_line = next((ln for ln in cpuinfo.splitlines() if ln.startswith(("flags", "Features"))), "")
    flags = set(flags_line.split(":", 1)[-1].split())
    if "avx512f" in flags:
        bits, name = 512, "AVX-512"
    elif "avx" in flags or "avx2" in flags:
        bits, name = 256, "AVX2" if "avx2" in flags else "AVX"
    elif "asimd" in flags or "neon" in flags or "sse2" in flags:
        bits, name = 128, "NEON" if ("asimd" in flags or "neon" in flags) else "SSE"
    else:
        bits, name = 32, "scalar"
    has_fma = "fma" in flags or "asimd" in flags
    clock = None
    m = re.search(r"model name\s*:.*@\s*([\d.]+)\s*GHz", cpuinfo)
    if m:
        clock = float(m.group(1))
    else:
        mhz = [float(x) for x in re.findall(r"cpu MHz\s*:\s*([\d.]+)", cpuinfo)]
        clock = max(mhz) / 1000 if mhz else 2.0
    return PeakEstimate(
        cores=int(cores or physical_cores()),
        simd_bits=bits,
        fma_units=fma_units if has_fma else 0,
        clock_ghz=clock,
        flags=name,
    )


def implied_clock_ghz(gflops: float, peak: PeakEstimate, cores: int = 1) -> float:
    """The clock (GHz) ``cores`` cores must at least run at to reach ``gflops``, with the estimate's SIMD width and FMA units.

    A measured rate above the estimated peak means either the estimate's clock (read from ``/proc/cpuinfo``, often the
    nominal one) is below the real (turbo) clock, or the timing is wrong; this says by how much.
    """
    per_cycle = max(cores, 1) * peak.lanes * max(peak.fma_units, 1) * (2 if peak.fma_units else 1)
    return gflops / per_cycle


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def matmul_flops(n: int, l: int, m: int) -> int:
    """Floating-point operations of an (n×l)·(l×m) matmul: one multiply + one add per MAC."""
    return 2 * n * l * m


def time_kernel(lib, args, number: int = 3, repeat: int = 3, min_repeat_ms: int = 0, func: str = "main") -> list[float]:
    """Seconds per call of a compiled TVM kernel, ``repeat`` means of ``number`` calls (TVM's ``time_evaluator``)."""
    tvm = require_tvm()
    mod = lib.mod if hasattr(lib, "mod") else lib
    ev = mod.time_evaluator(func, tvm.cpu(), number=number, repeat=repeat, min_repeat_ms=min_repeat_ms)
    return [float(x) for x in ev(*args).results]


INPUTS = ("randn", "numpy")


def torch_matmul_settings(n: int, settings: dict, rounds: int = 5, number: int = 5, seed: int = 0) -> dict:
    """Time torch's ``n``×``n`` float32 matmul under several ``(threads, inputs)`` settings, in alternating rounds.

    Notebook 00 uses it to find why its matmul figure differs from lesson 4's: ``inputs`` is ``"randn"`` (``torch.randn``
    tensors, as in notebook 00) or ``"numpy"`` (numpy uniform floats wrapped with ``torch.from_numpy``, as in lesson 4).
    Each round runs every setting in turn (:func:`course_lib.bench.interleaved`; a sample is ``bench.benchmark``'s median
    of ``number`` timed calls after 1 warm-up call), so all settings see the same load. Returns
    ``{name: FLOP-unit BenchResult}`` with one sample per round; torch's thread count is restored afterwards.
    """
    import numpy as np
    import torch

    from course_lib import bench

    if rounds < 1 or number < 1:
        raise ValueError(f"rounds and number must be >= 1, got {rounds} and {number}")
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    inputs = {
        "randn": (torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)),
        "numpy": tuple(torch.from_numpy(rng.uniform(-1, 1, (n, n)).astype("float32")) for _ in range(2)),
    }
    for name, (threads, kind) in settings.items():
        if kind not in INPUTS or int(threads) < 1:
            raise ValueError(f"{name}: threads must be >= 1 and inputs one of {INPUTS}, got ({threads!r}, {kind!r})")

    # a setting's sample: its threads, 1 untimed call, the median of `number` timed ones; bench.interleaved makes the
    # rounds (every setting in turn, each after bench.settle()), so all settings see the same load
    def one_sample(threads: int, kind: str):
        a, b = inputs[kind]

        def sample() -> float:
            torch.set_num_threads(int(threads))
            return bench.benchmark(lambda: a @ b, warmup=1, repeat=number).median_s

        return sample

    before = torch.get_num_threads()
    try:
        return bench.interleaved({name: one_sample(*setting) for name, setting in settings.items()}, rounds=rounds,
                                 warmup=0, items=matmul_flops(n, n, n), unit="FLOP", self_timed=True)
    finally:
        torch.set_num_threads(before)
