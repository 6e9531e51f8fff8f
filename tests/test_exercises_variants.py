"""Every exercise check against a table of answers: right ones written differently (numpy, torch, float64, numpy
scalars, ints typed as floats) must pass, and wrong ones — the mistakes each lesson warns about plus mutations of the
reference (off-by-one, swapped arguments, constant outputs, in-place modification, no-op) — must fail with the
message that names the mistake.

``python tests/test_exercises_variants.py`` prints how many right and wrong variants each exercise has.
"""

from __future__ import annotations

import math
import re
import types
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import require_extra
from course_lib import exercises
from course_lib.exercises import ExerciseFailed, NotAttempted
from course_lib.paths import repo_root

SOL = repo_root() / "solutions"


@dataclass
class V:
    """One answer: ``args``/``kwargs`` for the check; ``fails`` None = must pass, else a regex its message must match."""

    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    fails: str | None = None


def solved(path: str, id: str, **names) -> dict:
    ns = {"np": np, "torch": torch, **names}
    exec(exercises.load_solutions(SOL / path)[id], ns)  # noqa: S102 - the repository's own solutions
    return ns


def run_variants(id: str, variants: list[V]) -> list[str]:
    problems = []
    fn = exercises.lookup(id).fn
    for v in variants:
        try:
            fn(*v.args, **v.kwargs)
        except NotAttempted:
            problems.append(f"{v.name}: 'not attempted'")
        except ExerciseFailed as e:
            if v.fails is None:
                problems.append(f"{v.name} (right) was rejected: {e}")
            elif not re.search(v.fails, str(e)):
                problems.append(f"{v.name} (wrong) failed with another message than /{v.fails}/: {e}")
        except Exception as e:  # noqa: BLE001 - a check must never crash
            problems.append(f"{v.name}: the check crashed with {type(e).__name__}: {e}")
        else:
            if v.fails is not None:
                problems.append(f"{v.name} (wrong) was accepted")
    return problems


# =============================================================================================== lesson 0


def v_00_p90():
    ref = solved("00_environment.py", "00.p90")["p90"]

    def nearest_rank(values):
        xs = sorted(values)
        return xs[min(len(xs) - 1, math.ceil(0.9 * len(xs)) - 1)]

    def unsorted(values):
        pos = (len(values) - 1) * 0.9
        lo, hi = int(pos), min(int(pos) + 1, len(values) - 1)
        return values[lo] + (values[hi] - values[lo]) * (pos - lo)

    def n_not_n_minus_1(values):
        xs = sorted(values)
        pos = min(len(xs) - 1, len(xs) * 0.9)
        lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    def in_place(values):
        values.sort()
        return ref(values)

    return [
        V("reference", (ref,)),
        V("numpy", (lambda v: np.percentile(v, 90),)),
        V("torch.quantile float32", (lambda v: torch.quantile(torch.tensor(v), 0.9),)),
        V("torch float64 tensor", (lambda v: torch.quantile(torch.tensor(v, dtype=torch.float64), 0.9),)),
        V("nearest rank", (nearest_rank,), fails="nearest-rank"),
        V("unsorted", (unsorted,), fails="sort the values first"),
        V("n · q", (n_not_n_minus_1,), fails=r"\(n - 1\)"),
        V("p10 (swapped quantile)", (lambda v: np.percentile(v, 10),), fails="p10"),
        V("median", (lambda v: np.percentile(v, 50),), fails="median"),
        V("max", (max,), fails="maximum"),
        V("mean", (lambda v: sum(v) / len(v),), fails="mean"),
        V("sorts its input in place", (in_place,), fails="sort a copy"),
        V("constant", (lambda v: 0.0,), fails=r"gave 0\b"),
        V("no-op (returns the list)", (lambda v: v,), fails="one number"),
        V("float32 rounding shown", (lambda v: ref(v) * (1 + 1e-4),), fails=r"gave 5\.0005, expected 5\b"),
    ]


def v_00_peak_gflops():
    from course_lib.tuning.common import PeakEstimate

    peak = PeakEstimate(cores=4, simd_bits=512, fma_units=2, clock_ghz=2.5, flags="AVX-512")  # 640 GFLOP/s
    ref = solved("00_environment.py", "00.peak_gflops", peak=peak)["my_peak_gflops"]
    a = lambda x, cpus=8: (x, peak, cpus)  # noqa: E731
    return [
        V("reference", a(ref)), V("int", a(640)), V("numpy scalar", a(np.float32(640))), V("within 2 %", a(650)),
        V("torch scalar", a(torch.tensor(640.0))),
        V("one FLOP per FMA", a(320), fails="one FMA is 2 FLOPs"),
        V("one FMA unit, one FLOP", a(160), fails="a quarter"),
        V("bits not lanes", a(640 * 32), fails="not bits"),
        V("logical CPUs", a(960, 6), fails="logical CPUs"),
        V("MHz", a(640_000), fails="already in GFLOP/s"),
        V("FLOP/s", a(640e9), fails="FLOP/s"),
        V("off by 3 %", a(660), fails=r"accepted ±2%"),
        V("text", a("fast"), fails="expected a number"),
    ]


def v_00_matmul_ms():
    kw = dict(n=512, gflops=100.0)
    ref = solved("00_environment.py", "00.matmul_ms", big_n=512, gflops=100.0)["my_matmul_ms"]
    return [
        V("reference", (ref,), kw), V("numpy", (np.float64(2 * 512**3 / 1e11 * 1e3),), kw), V("rounded", (2.7,), kw),
        V("n³ FLOPs", (ref / 2,), kw, fails="2·n³ FLOPs"),
        V("seconds", (ref / 1e3,), kw, fails="seconds"),
        V("microseconds", (ref * 1e3,), kw, fails="microseconds"),
        V("small matmul's time", (ref / 8,), kw, fails="multiplies the work by 8"),
        V("n²", (ref / 512,), kw, fails="n²"),
        V("4·n³", (ref * 2,), kw, fails="twice too much"),
        V("text", ("soon",), kw, fails="expected a number"),
    ]


class FakeSampler:
    """A finished sampler as the check sees it: ``interval`` and ``summary()`` with per-device sample counts."""

    def __init__(self, interval, counts):
        self.interval = interval
        self._counts = counts

    def summary(self):
        return {d: types.SimpleNamespace(samples=n) for d, n in self._counts.items()}


def v_00_sample_count():
    mine = FakeSampler(0.05, {"cpu:process": 180, "cpu:system": 180})
    lesson = FakeSampler(0.2, {"cpu:process": 48, "cpu:system": 48})
    kw = dict(lesson_interval=0.2)
    ns = solved("00_environment.py", "00.sample_count", hw=types.SimpleNamespace(UtilizationSampler=lambda interval: _Ctx(mine)),
                time=types.SimpleNamespace(sleep=lambda s: None), sample_seconds=10, sampled_device="cpu:process",
                sample_interval=0.2)
    return [
        V("reference", (ns["my_sample_count"], ns["my_sampler"], "cpu:process", 10), kw),
        V("numpy int", (np.int64(180), mine, "cpu:process", 10), kw),
        V("int typed as float", (180.0, mine, "cpu:process", 10), kw),
        V("nominal count", (200, mine, "cpu:process", 10), kw, fails="sample_seconds / interval"),
        V("both devices added", (360, mine, "cpu:process", 10), kw, fails="adds up every device"),
        V("the demo's count", (48, mine, "cpu:process", 10), kw, fails="demo sampler's count"),
        V("knob unchanged", (48, lesson, "cpu:process", 10), kw, fails="demo's own interval"),
        V("not an integer", (180.5, mine, "cpu:process", 10), kw, fails="an integer, got 180.5"),
        V("no sampler", (180, 42, "cpu:process", 10), kw, fails="my_sampler must be"),
        V("another device", (180, mine, "cuda:3", 10), kw, fails="no 'cuda:3' samples"),
    ]


class _Ctx:
    def __init__(self, s):
        self.s = s

    def __enter__(self):
        return self.s

    def __exit__(self, *a):
        return False


# =============================================================================================== lesson 1


def v_01_gp_params():
    require_extra("transformers", "deploy")
    from course_lib.deploy import data
    from course_lib.deploy import model as multitask

    gp = multitask.BertMultitask(multitask.bert_config(1000, "tiny"), len(data.AREAS), len(data.ENTITY_TYPES)).global_pointer
    ref = solved("01_torchscript_triton.py", "01.gp_params", multitask=multitask, model_size="tiny", data=data)["my_gp_params"]
    kw = dict(measured=gp)
    return [
        V("reference", (ref,), kw), V("numpy int", (np.int64(ref),), kw), V("typed as float", (float(ref),), kw),
        V("weights only", (128 * 7 * 128,), kw, fails="bias"),
        V("query only", (ref // 2,), kw, fails="BOTH the query and the key"),
        V("with inv_freq", (ref + 32,), kw, fails="inv_freq .* is a buffer"),
        V("hidden × hidden", (128 * 128,), kw, fails="types × head_size × 2"),
        V("not a whole number", (ref + 0.5,), kw, fails="an integer"),
        V("other", (12345,), kw, fails="the head has 115,584 parameters"),
    ]


def v_01_decode_spans():
    ref = solved("01_torchscript_triton.py", "01.decode_spans")["decode_token_spans"]

    def torch_version(logits, threshold=0.0):
        idx = torch.nonzero(torch.as_tensor(logits) > threshold)
        return sorted((int(t), int(s), int(e)) for t, s, e in idx.tolist() if s <= e)

    def loops(logits, threshold=0.0):
        a = np.asarray(logits)
        return [(t, s, e) for t in range(a.shape[0]) for s in range(a.shape[1]) for e in range(s, a.shape[2])
                if a[t, s, e] > threshold]

    def in_place(logits, threshold=0.0):
        logits[logits <= threshold] = -np.inf
        return ref(logits, threshold)

    return [
        V("reference", (ref,)), V("torch", (torch_version,)), V("loops", (loops,)),
        V("end + 1", (lambda lg, thr=0.0: [(t, s, e + 1) for t, s, e in ref(lg, thr)],), fails="one past the last token"),
        V("transposed", (lambda lg, thr=0.0: ref(np.swapaxes(lg, 1, 2), thr),), fails="transposed"),
        V("lower triangle kept", (lambda lg, thr=0.0: sorted(zip(*[a.tolist() for a in np.where(lg > thr)])),),
          fails="start <= end"),
        V(">= threshold", (lambda lg, thr=0.0: sorted((t, s, e) for t, s, e in zip(*[a.tolist() for a in np.where(lg >= thr)])
                                                       if s <= e),), fails="strictly greater"),
        V("fixed 0", (lambda lg, thr=0.0: ref(lg, 0.0),), fails="threshold argument"),
        V("in place", (in_place,), fails="in place"),
        V("unsorted", (lambda lg, thr=0.0: ref(lg, thr)[::-1],), fails="sorted"),
        V("constant empty", (lambda lg, thr=0.0: [],), fails="no spans found"),
        V("duplicates", (lambda lg, thr=0.0: sorted(ref(lg, thr) * 2),), fails="twice"),
        V("no-op", (lambda lg, thr=0.0: lg,), fails="tuples of ints|triple"),
    ]


def v_01_batching_stanza():
    require_extra("tritonclient.grpc.model_config_pb2", "deploy")
    ref = solved("01_torchscript_triton.py", "01.batching_stanza")["dynamic_batching_stanza"]

    def repeated_fields(pref, delay):
        lines = "".join(f"  preferred_batch_size: {int(b)}\n" for b in pref)
        return f"dynamic_batching {{\n{lines}  max_queue_delay_microseconds: {int(delay)}\n}}"

    def one_line(pref, delay):
        return f"dynamic_batching {{ preferred_batch_size: {list(pref)} max_queue_delay_microseconds: {delay} }}"

    return [
        V("reference", (ref,)), V("repeated fields", (repeated_fields,)), V("one line", (one_line,)),
        V("milliseconds", (lambda p, d: ref(p, d / 1000),), fails="not milliseconds"),
        V("float delay", (lambda p, d: ref(p, 0).replace("max_queue_delay_microseconds: 0",
                                                        f"max_queue_delay_microseconds: {float(d)}"),), fails="integers"),
        V("no block", (lambda p, d: f"preferred_batch_size: {list(p)}\nmax_queue_delay_microseconds: {d}",),
          fails="inside a `dynamic_batching"),
        V("hard-coded sizes", (lambda p, d: ref((8, 16), d),), fails="always \\[8, 16\\]"),
        V("no delay", (lambda p, d: f"dynamic_batching {{ preferred_batch_size: {list(p)} }}",), fails="missing"),
        V("no sizes", (lambda p, d: f"dynamic_batching {{ max_queue_delay_microseconds: {d} }}",), fails="missing"),
        V("sizes reversed", (lambda p, d: ref(tuple(reversed(p)), d),), fails="asked for"),
        V("not text", (lambda p, d: {"preferred_batch_size": p},), fails="as text"),
    ]


def v_01_queue_delay():
    def table(extra_ms, base=3.0):
        return pd.DataFrame({"concurrency": [1, 1, 8, 8], "dynamic_batching": [True, False, True, False],
                             "p50_ms": [base + extra_ms, base, 5.0, 6.0]})

    return [
        V("20 ms", (20000,), dict(measured=table(19.6))), V("float µs", (15000.0,), dict(measured=table(14.7))),
        V("numpy", (np.int64(50000),), dict(measured=table(49.5))),
        V("milliseconds", (10,), dict(measured=table(0.01)), fails="microseconds"),
        V("exactly 10 ms", (10000,), dict(measured=table(9.8)), fails="margin"),
        V("too long", (500_000,), dict(measured=table(490)), fails="between 0 and 200000"),
        V("fractional µs", (20000.5,), dict(measured=table(19.6)), fails="an integer"),
        V("text", ("long",), dict(measured=table(19.6)), fails="expected a number"),
    ]


# =============================================================================================== lesson 2


def v_02_colwise_linear():
    ref = solved("02_parallel_inference.py", "02.colwise_linear")["column_parallel_linear"]
    F = torch.nn.functional

    def matmul_version(x, weight, bias, world_size):
        k = weight.shape[0] // world_size
        parts = [x @ weight[r * k:(r + 1) * k].T + bias[r * k:(r + 1) * k] for r in range(world_size)]
        return parts, torch.cat(parts, -1)

    def float64(x, weight, bias, world_size):
        parts, out = ref(x.double(), weight.double(), bias.double(), world_size)
        return parts, out

    def numpy_version(x, weight, bias, world_size):
        xs, w, b = x.numpy(), weight.numpy(), bias.numpy()
        parts = [torch.from_numpy(xs @ ws.T + bs) for ws, bs in zip(np.split(w, world_size), np.split(b, world_size))]
        return parts, torch.cat(parts, -1)

    def full_then_chunk(x, weight, bias, world_size):
        out = F.linear(x, weight, bias)
        return list(out.chunk(world_size, dim=-1)), out

    def no_gather(x, weight, bias, world_size):
        parts, _ = ref(x, weight, bias, world_size)
        return parts, parts[0]

    def batch_dim(x, weight, bias, world_size):
        parts, _ = ref(x, weight, bias, world_size)
        return parts, torch.cat(parts, 0)

    def reversed_ranks(x, weight, bias, world_size):
        parts, _ = ref(x, weight, bias, world_size)
        return parts[::-1], torch.cat(parts[::-1], -1)

    def full_bias(x, weight, bias, world_size):
        parts = [F.linear(x, w, bias[: w.shape[0]]) for w in weight.chunk(world_size, 0)]
        return parts, torch.cat(parts, -1)

    def in_place(x, weight, bias, world_size):
        weight.mul_(1.0)
        bias.add_(0.0)
        x.add_(1.0)
        return ref(x - 1.0, weight, bias, world_size)

    def in_features(x, weight, bias, world_size):
        return ref(x, weight, bias, 1)

    return [
        V("reference", (ref,)), V("matmul", (matmul_version,)), V("float64", (float64,)), V("numpy", (numpy_version,)),
        V("full F.linear, chunked", (full_then_chunk,), fails="whole layer on one rank"),
        V("no all-gather", (no_gather,), fails="all-gather is missing"),
        V("cat on the batch dim", (batch_dim,), fails="along dim 0"),
        V("ranks reversed", (reversed_ranks,), fails="rank 0's output is not output columns 0"),
        V("bias not sharded", (full_bias,), fails="AND the bias"),
        V("modifies its inputs", (in_place,), fails="in place"),
        V("world_size ignored", (in_features,), fails="expected \\d per-rank outputs"),
        V("not a pair", (lambda x, w, b, n: F.linear(x, w, b),), fails="return \\(partials, output\\)"),
    ]


def v_02_gpipe_schedule():
    ref = solved("02_parallel_inference.py", "02.gpipe_schedule")["gpipe_schedule"]

    def by_diagonal(S, m):
        grid = {}
        for s in range(S):
            for i in range(m):
                grid.setdefault(s + i, []).append((np.int64(s), np.int64(i)))
        return [grid[t] for t in sorted(grid)]

    def naive(S, m):
        return [[(s, i)] for i in range(m) for s in range(S)]

    def one_step_late(S, m):
        return ref(S, m) + [[]]

    def same_step(S, m):
        return [[(s, i) for s in range(S)] for i in range(m)]

    def reversed_order(S, m):
        return [[(s, m - 1 - i) for s, i in step] for step in ref(S, m)]

    def missing_last(S, m):
        return ref(S, m)[:-1]

    return [
        V("reference", (ref,)), V("diagonals, numpy ints", (by_diagonal,)),
        V("naive split", (naive,), fails="naive split"),
        V("an idle step", (one_step_late,), fails="m \\+ S - 1"),
        V("all stages at once", (same_step,), fails="needs the previous stage's output"),
        V("micro-batches reversed", (reversed_order,), fails="order"),
        V("last step dropped", (missing_last,), fails="missing"),
        V("constant", (lambda S, m: [],), fails="missing"),
        V("swapped arguments", (lambda S, m: ref(m, S),), fails="missing|extra"),
    ]


def v_02_pipeline_qps():
    from course_lib.parallel import analysis

    ns = solved("02_parallel_inference.py", "02.pipeline_qps")
    kw = dict(stage_ms=[30.0, 50.0], batch=8, microbatches=4)
    ref = ns["predict_pipeline_qps"]
    mean = lambda t: sum(t) / len(t)  # noqa: E731
    return [
        V("reference", (ref,), kw),
        V("library", (lambda t, b, m: analysis.pipeline_qps([x / 1e3 for x in t], b, m),), kw),
        V("numpy", (lambda t, b, m: b / (np.sum(t) / m + (m - 1) * np.max(t) / m) * 1e3,), kw),
        V("no overlap", (lambda t, b, m: b / (sum(t) / 1e3),), kw, fails="no overlap at all"),
        V("steady state", (lambda t, b, m: b / (max(t) / 1e3),), kw, fails="back to back"),
        V("first trip only", (lambda t, b, m: b / (sum(t) / m / 1e3),), kw, fails="first micro-batch's trip"),
        V("bubble formula", (lambda t, b, m: b / ((m + len(t) - 1) * max(t) / m / 1e3),), kw, fails="bubble formula"),
        V("mean not max", (lambda t, b, m: b / ((sum(t) + (m - 1) * mean(t)) / m / 1e3),), kw, fails="SLOWEST stage"),
        V("milliseconds", (lambda t, b, m: b / (sum(t) / m + (m - 1) * max(t) / m),), kw, fails="milliseconds"),
        V("per micro-batch", (lambda t, b, m: b / m / ((sum(t) + (m - 1) * max(t)) / m / 1e3),), kw, fails="one batch carries"),
        V("m ignored", (lambda t, b, m: b / ((sum(t) + 3 * max(t)) / 4 / 1e3),), kw, fails="GPipe gives"),
        V("a number", (123.0,), kw, fails="as a function"),
    ]


def _fake_sweep_env(sweep):
    """The notebook names the 02.best_microbatches solution uses, with launch() replaced by the given table's m=8 row."""
    hand = sweep[sweep.microbatches != 8].set_index("microbatches")
    frame = sweep[sweep.microbatches == 8].reset_index(drop=True)
    return dict(pipeline_microbatches=[1, 2, 4], batch=8, hand=hand, pd=pd, display=lambda *a: None,
                launch=lambda runs, **kw: types.SimpleNamespace(frame=frame), Run=lambda *a, **k: None,
                world_size=2, model_preset="tiny", seq_len=8, warmup=1, repeat=1, qps_batches=1, qps_rounds=1,
                threads=1, launch_timeout_s=60, collective_timeout_s=30)


def v_02_best_microbatches():
    sweep = pd.DataFrame({"microbatches": [1, 2, 4, 8], "qps": [50.0, 61.0, 55.0, 40.0],
                          "qps_p10": [48.0, 57.0, 52.0, 38.0], "qps_p90": [52.0, 64.0, 58.0, 42.0]})
    lesson_only = sweep[sweep.microbatches != 8]
    kw = dict(measured=sweep, lesson=[1, 2, 4])
    return [
        V("int", (2,), kw), V("numpy", (np.int64(2),), kw), V("typed as float", (2.0,), kw),
        V("reference", (solved("02_parallel_inference.py", "02.best_microbatches", **_fake_sweep_env(sweep))["my_best_m"],),
          kw),
        V("not the best", (4,), kw, fails="read the qps column"),
        V("lowest qps", (8,), kw, fails="read the qps column"),
        V("not swept", (16,), kw, fails="not part of your sweep"),
        V("sweep unchanged", (2,), dict(measured=lesson_only, lesson=[1, 2, 4]), fails="lesson's own micro-batch counts"),
        V("not an integer", (2.5,), kw, fails="an integer, got 2.5"),
    ]


# =============================================================================================== lesson 3


def v_03_pack_int4():
    ref = solved("03_llm_quantization.py", "03.pack_int4")["pack_int4"]
    from course_lib.exercises.l3 import _reference_pack

    def numpy_version(q):
        a = q.numpy().astype(np.int64) & 0xF
        r, c = a.shape
        w = np.zeros((r, c // 8), dtype=np.uint32)
        for n in range(8):
            w |= (a[:, n::8].astype(np.uint32) << np.uint32(4 * n))
        return torch.from_numpy(w.view(np.int32).copy())

    def bitwise_or(q):
        nib = (q.to(torch.int32) & 0xF).view(q.shape[0], -1, 8)
        out = torch.zeros(nib.shape[:2], dtype=torch.int32)
        for n in range(8):
            out |= nib[..., n] << (4 * n)
        return out

    def in_place(q):
        q &= 0xF
        return ref(q)

    return [
        V("reference", (ref,)), V("numpy", (numpy_version,)), V("int32 bitwise or", (bitwise_or,)),
        V("library", (__import__("course_lib.llm.quant", fromlist=["pack_int4"]).pack_int4,)),
        V("swapped nibbles", (lambda q: _reference_pack(q, order=range(7, -1, -1)),), fails="swapped nibble order"),
        V("shift off by one nibble", (lambda q: _reference_pack(q, shifts=range(4, 36, 4)),), fails="off by one nibble"),
        V("shift off by one bit", (lambda q: _reference_pack(q, shifts=range(1, 33, 4)),), fails="off by one bit"),
        V("offset-8", (lambda q: _reference_pack(q, offset=8),), fails="offset-8"),
        V("no mask", (lambda q: ((q.to(torch.int64).view(q.shape[0], -1, 8) << torch.arange(0, 32, 4)).sum(-1)
                                 & 0xFFFFFFFF).to(torch.int32),), fails="negative codes"),
        V("int64 words", (lambda q: ref(q).to(torch.int64),), fails="int32"),
        V("in place", (in_place,), fails="in place"),
        V("constant", (lambda q: torch.zeros(q.shape[0], q.shape[1] // 8, dtype=torch.int32),), fails="wrong words|negative"),
        V("no-op", (lambda q: q,), fails="shape"),
    ]


def v_03_unpack_int4():
    ref = solved("03_llm_quantization.py", "03.unpack_int4")["unpack_int4"]

    def subtract_16(words):
        w = words.to(torch.int64) & 0xFFFFFFFF
        nib = (w[:, :, None] >> torch.arange(0, 32, 4)) & 0xF
        return torch.where(nib >= 8, nib - 16, nib).flatten(1)

    def numpy_version(words):
        w = words.numpy().view(np.uint32).astype(np.int64)
        nib = (w[:, :, None] >> np.arange(0, 32, 4)) & 0xF
        return torch.from_numpy(((nib ^ 8) - 8).reshape(w.shape[0], -1))

    def shifted(words, shifts):
        w = words.to(torch.int64) & 0xFFFFFFFF
        nib = (w[:, :, None] >> torch.as_tensor(list(shifts))) & 0xF
        return torch.where(nib >= 8, nib - 16, nib).flatten(1)

    def unpack_in_place(words):
        out = ref(words.clone())
        words ^= 1
        return out

    return [
        V("reference", (ref,)), V("subtract 16", (subtract_16,)), V("numpy xor", (numpy_version,)),
        V("no sign extension", (lambda w: ((w[:, :, None].to(torch.int64) >> torch.arange(0, 32, 4)) & 0xF).flatten(1),),
          fails="no sign extension"),
        V("swapped nibbles", (lambda w: ref(w).view(w.shape[0], -1, 8).flip(-1).flatten(1),), fails="swapped nibble order"),
        V("offset-8", (lambda w: ((w[:, :, None].to(torch.int64) >> torch.arange(0, 32, 4)) & 0xF).flatten(1) - 8,),
          fails="offset-8"),
        V("shift off by one nibble", (lambda w: shifted(w, range(4, 36, 4)),), fails="shift off by one"),
        V("shift off by one bit", (lambda w: shifted(w, range(1, 33, 4)),), fails="shift off by one"),
        V("float codes", (lambda w: ref(w).float(),), fails="integer codes"),
        V("in place", (unpack_in_place,), fails="in place"),
        V("no-op", (lambda w: w,), fails="shape"),
    ]


def v_03_group_scales():
    ref = solved("03_llm_quantization.py", "03.group_scales")["group_scales"]

    def groups(w, g):
        r, c = w.shape
        return w.float().reshape(r, c // g, g)

    def numpy_version(w, bits, g):
        a = np.abs(w.float().numpy()).reshape(w.shape[0], -1, g).max(-1)
        return torch.from_numpy(np.where(a == 0, 1.0, a).astype(np.float32) / (2 ** (bits - 1) - 1))

    def tensor_only_guard(w, bits, g):
        if (w == 0).all():
            return torch.ones(w.shape[0], w.shape[1] // g)
        return groups(w, g).abs().amax(-1) / (2 ** (bits - 1) - 1)

    def fp16_divide(w, bits, g):
        return (w.reshape(w.shape[0], -1, g).abs().amax(-1) / (2 ** (bits - 1) - 1)).float()

    def in_place(w, bits, g):
        w.abs_()
        return ref(w, bits, g)

    q = lambda b: 2 ** (b - 1) - 1  # noqa: E731
    return [
        V("reference", (ref,)), V("amax + 1e-6", (lambda w, b, g: (groups(w, g).abs().amax(-1) + 1e-6) / q(b),)),
        V("clamp(min=1e-8)", (lambda w, b, g: groups(w, g).abs().amax(-1).clamp(min=1e-8) / q(b),)),
        V("numpy", (numpy_version,)),
        V("guard for an all-zero tensor only", (tensor_only_guard,), fails="beside non-zero groups"),
        V("no guard", (lambda w, b, g: groups(w, g).abs().amax(-1) / q(b),), fails="zero group must still get"),
        V("max|w| itself", (lambda w, b, g: groups(w, g).abs().amax(-1).clamp(min=1e-8),), fails="divide by qmax"),
        V("2**bits - 1", (lambda w, b, g: groups(w, g).abs().amax(-1).clamp(min=1e-8) / (2**b - 1),), fails="not 2\\*\\*bits - 1"),
        V("2**(bits-1)", (lambda w, b, g: groups(w, g).abs().amax(-1).clamp(min=1e-8) / 2 ** (b - 1),), fails="not 2\\*\\*\\(bits-1\\)"),
        V("divided in fp16", (lambda w, b, g: fp16_divide(w, b, g).clamp(min=1e-8),), fails="divided in float16"),
        V("float16 result", (lambda w, b, g: ref(w, b, g).to(w.dtype) if w.dtype == torch.float16 else ref(w, b, g),),
          fails="float32"),
        V("strided groups", (lambda w, b, g: w.float().reshape(w.shape[0], g, -1).abs().amax(1).clamp(min=1e-8) / q(b),),
          fails="CONSECUTIVE"),
        V("per row", (lambda w, b, g: groups(w, g).abs().amax(-1).amax(-1, keepdim=True).expand(-1, w.shape[1] // g)
                      .clamp(min=1e-8) / q(b),), fails="per group, not per row"),
        V("max(w), not max|w|", (lambda w, b, g: groups(w, g).amax(-1).clamp(min=1e-8) / q(b),), fails="max\\(w\\)"),
        V("transposed", (lambda w, b, g: ref(w, b, g).T.contiguous(),), fails="wrong group axis|shape"),
        V("in place abs_", (in_place,), fails="in place"),
    ]


def v_03_layer_bytes():
    kw = dict(out_features=1536, in_features=576)
    ns = solved("03_llm_quantization.py", "03.layer_bytes")
    i8, i4 = ns["my_int8_bytes"], ns["my_int4_bytes"]
    n = 1536 * 576
    return [
        V("reference", (i8, i4), kw), V("floats", (float(i8), float(i4)), kw), V("numpy", (np.int64(i8), np.int64(i4)), kw),
        V("no scales", (n, i4), kw, fails="forgot the scales"),
        V("fp16 scales", (n + 2 * 1536, i4), kw, fails="not float16"),
        V("per input column", (i8, n // 2 + 4 * 576), kw, fails="per OUTPUT row"),
        V("int4 one byte", (i8, n + 4 * 1536), kw, fails="two codes per byte"),
        V("bits", (n * 8 + 4 * 1536, i4), kw, fails="counts bits"),
        V("swapped", (i4, i8), kw, fails="the layer stores"),
        V("not whole", (i8 + 0.5, i4), kw, fails="an integer"),
        V("text", ("1 MB", i4), kw, fails="expected a number"),
    ]


def v_03_decode_ceiling():
    kw = dict(bytes_per_token=220e6, bandwidth_gb_s=20.0, lm_head_bytes=113e6)
    t = 20e9 / 220e6
    return [
        V("exact", (t,), kw), V("numpy", (np.float32(t),), kw), V("rounded bytes", (20e9 / 2.2e8 * 1.03,), kw),
        V("reference", (solved("03_llm_quantization.py", "03.decode_ceiling", given_bandwidth_gb_s=20.0,
                                int8_bytes_per_token=220e6)["my_ceiling"],), kw),
        V("no lm_head", (20e9 / 107e6,), kw, fails="left out the lm_head"),
        V("GiB", (20 * 2**30 / 220e6,), kw, fails="powers of 1000 and 1024"),
        V("bits", (t * 8,), kw, fails="only for bits"),
        V("divided by bits", (t / 8,), kw, fails="divided by bits"),
        V("giga", (t * 1e-9,), kw, fails="giga-tokens"),
        V("1.5×", (t * 1.5,), kw, fails="accepted band"),
    ]


def v_03_group_size():
    ppl = {32: 20.0, 64: 21.0, 192: 23.0}
    ppl_df = pd.DataFrame({"zh": [21.0]}, index=["int4g"])
    ns = solved("03_llm_quantization.py", "03.group_size", group_size=64, measure_int4_zh=ppl.__getitem__, ppl_df=ppl_df)
    ppl2 = {32: 20.1234, 64: 21.0}
    kw = dict(group_size=64, ppl_reference=21.0, in_features=(576, 1536), measure=ppl.__getitem__)
    kw2 = dict(kw, measure=ppl2.__getitem__)
    return [
        V("reference", (ns["other_group"], ns["ppl_other"], ns["lower_group"]), kw),
        V("numpy ints", (np.int64(32), np.float32(20.0), np.int64(32)), kw),
        V("typed as floats", (32.0, 20.0, 32.0), kw),
        V("2 decimals", (32, 20.12, 32), kw2),
        V("larger group", (192, 23.0, 64), kw),
        V("wrong conclusion", (32, 20.0, 64), kw, fails="the lower one is group 32"),
        V("number not measured", (32, 25.0, 64), kw, fails="re-measured"),
        V("does not divide", (100, 20.0, 100), kw, fails="must divide"),
        V("the lesson's own", (64, 21.0, 64), kw, fails="other than"),
        V("not an integer", (32.5, 20.0, 32), kw, fails="an integer, got 32.5"),
        V("lower not compared", (32, 20.0, 128), kw, fails="one of the two sizes"),
    ]


# =============================================================================================== lesson 4


def _tvm():
    return require_extra("tvm", "tvm")


def v_04_matmul_flops():
    kw = dict(shape=(512, 512, 512))
    n = 512
    return [
        V("reference", (solved("04_tvm_autotuning.py", "04.matmul_flops", N=n, L=n, M=n)["my_flops"],), kw),
        V("float", (2.0 * n**3,), kw), V("numpy", (np.int64(2 * n**3),), kw), V("e-notation", (2.68435456e8,), kw),
        V("MACs", (n**3,), kw, fails="multiply by 2"),
        V("strict count", ((2 * n - 1) * n * n,), kw, fails="strict count"),
        V("elements", (2 * n * n,), kw, fails="matrix elements"),
        V("GFLOP", (2 * n**3 / 1e9,), kw, fails="in GFLOP"),
        V("rounded", (2.68e8,), kw, fails="rounded figure"),
        V("not whole", (2.9,), kw, fails="an integer, got 2.9"),
        V("4·NLM", (4 * n**3,), kw, fails="counts too much"),
    ]


def _schedule(tvm, *, reverse_at="jo", parallel="io", vectorize="ji", cache=True, tiles=None, order="io jo k ii ji"):
    def my_schedule(mod, tile_y, tile_x):
        ty, tx = tiles or (tile_y, tile_x)
        sch = tvm.s_tir.Schedule(mod)
        block = sch.get_sblock("C")
        i, j, k = sch.get_loops(block)
        io, ii = sch.split(i, factors=[None, ty])
        jo, ji = sch.split(j, factors=[None, tx])
        loops = dict(io=io, ii=ii, jo=jo, ji=ji, k=k)
        sch.reorder(*[loops[n] for n in order.split()])
        if cache:
            cw = sch.cache_write(block, 0, "global")
            if reverse_at:
                sch.reverse_compute_at(cw, loops[reverse_at])
        if vectorize:
            sch.vectorize(loops[vectorize])
        if parallel:
            sch.parallel(loops[parallel])
        return sch

    return my_schedule


def v_04_cache_write():
    tvm = _tvm()
    import tvm.s_tir  # noqa: F401

    ref = solved("04_tvm_autotuning.py", "04.cache_write", tvm=tvm)["my_schedule"]

    def cache_first(mod, tile_y, tile_x):  # cache_write before splitting, parallel before vectorize
        sch = tvm.s_tir.Schedule(mod)
        block = sch.get_sblock("C")
        cw = sch.cache_write(block, 0, "global")
        i, j, k = sch.get_loops(block)
        io, ii = sch.split(i, factors=[None, tile_y])
        jo, ji = sch.split(j, factors=[None, tile_x])
        sch.reorder(io, jo, k, ii, ji)
        sch.parallel(io)
        sch.reverse_compute_at(cw, jo)
        sch.vectorize(ji)
        return sch

    return [
        V("reference", (ref,)), V("cache_write first", (cache_first,)),
        V("no cache_write", (_schedule(tvm, cache=False),), fails="no cache_write"),
        V("write-back after the matmul", (_schedule(tvm, reverse_at=None),), fails="after the whole matmul"),
        V("write-back under i.outer", (_schedule(tvm, reverse_at="io"),), fails="under i.outer only"),
        V("parallel inner loop", (_schedule(tvm, parallel="ii"),), fails="parallel loop should be i.outer"),
        V("parallel j.outer", (_schedule(tvm, parallel="jo"),), fails="parallel loop should be i.outer"),
        V("no parallel", (_schedule(tvm, parallel=None),), fails="no parallel loop"),
        V("no vectorize", (_schedule(tvm, vectorize=None),), fails="not vectorised"),
        V("vectorize(k)", (_schedule(tvm, vectorize="k"),), fails="TVM refused sch.vectorize.*carries the reduction"),
        V("hard-coded tiles", (_schedule(tvm, tiles=(8, 8)),), fails="use the arguments"),
        V("swapped tile arguments", (lambda mod, ty, tx: _schedule(tvm)(mod, tx, ty),), fails="use the arguments|extents"),
        V("k innermost", (_schedule(tvm, order="io jo ii ji k", vectorize=None),), fails="order|vectorised"),
        V("not a schedule", (lambda mod, ty, tx: mod,), fails="must return the s_tir.Schedule"),
    ]


def v_04_greedy_next_batch():
    _tvm()
    from course_lib.tuning import tuners

    ref = solved("04_tvm_autotuning.py", "04.greedy_next_batch", tuners=tuners)["GreedyTuner"]

    class BatchExplore(tuners.Tuner):  # a second right answer: a whole batch random with probability eps
        eps = 0.2

        def next_batch(self, batch_size):
            out = []
            if self.best is not None and self.rng.random() >= self.eps:
                g = self.space.genes(self.best.index)
                cand = [self.space.index(g[:d] + [v] + g[d + 1:]) for d, n in enumerate(self.space.dims)
                        for v in range(n) if v != g[d]]
                cand = [i for i in dict.fromkeys(cand) if i not in self.visited]
                self.rng.shuffle(cand)
                out = cand[:batch_size]
            return out + self._random_unvisited(batch_size - len(out), set(out))

    class NoExploration(ref):
        def next_batch(self, batch_size):
            eps, self.eps = self.eps, 0.0
            try:
                return super().next_batch(batch_size)
            finally:
                self.eps = eps

    class RandomOnly(tuners.Tuner):
        eps = 0.2

        def next_batch(self, batch_size):
            return self._random_unvisited(batch_size, set())

    class Repeats(ref):
        def next_batch(self, batch_size):
            out = super().next_batch(batch_size)
            return out[:-1] + out[:1] if len(out) > 1 else out

    class Remeasures(ref):
        def next_batch(self, batch_size):
            out = super().next_batch(batch_size)
            return ([self.best.index] + out[1:]) if self.best is not None else out

    class Genes(ref):
        def next_batch(self, batch_size):
            return [self.space.genes(i) for i in super().next_batch(batch_size)]

    class NoTopUp(ref):  # random configs only before the first measurement: nothing when the neighbours run out
        def _random_unvisited(self, k, taken):
            return super()._random_unvisited(k, taken) if self.best is None else []

    class HardEps(ref):  # eps hard-coded: setting self.eps has no effect
        def next_batch(self, batch_size):
            self.__dict__.pop("eps", None)
            return super().next_batch(batch_size)

    class Constant(tuners.Tuner):
        def next_batch(self, batch_size):
            return [0] * batch_size

    return [
        V("reference", (ref,)), V("batch-level exploration", (BatchExplore,)),
        V("no exploration", (NoExploration,), fails="no exploration"),
        V("random only", (RandomOnly,), fails="not neighbours of the best"),
        V("repeats a config", (Repeats,), fails="same config twice"),
        V("re-measures the best", (Remeasures,), fails="already measured"),
        V("genes not indices", (Genes,), fails="genes"),
        V("no top-up", (NoTopUp,), fails="asked for|6-config space"),
        V("eps hard-coded", (HardEps,), fails="with eps = 0"),
        V("constant", (Constant,), fails="same config twice"),
        V("not a Tuner", (object,), fails="subclass of tuners.Tuner"),
    ]


def _nbrs(space, index):
    from course_lib.exercises.l4 import _one_knob_neighbours

    return _one_knob_neighbours(space, index)


def v_04_budget():
    _tvm()
    curve = [0.2, 0.5, 0.5, 0.91, 0.97, 0.97]
    kw = dict(curve=curve)
    return [
        V("reference", (solved("04_tvm_autotuning.py", "04.budget", budget_curve=curve)["my_first_90"],), kw),
        V("numpy", (np.int64(4),), kw), V("float", (4.0,), kw),
        V("0-based", (3,), kw, fails="one too early"),
        V("whole budget", (6,), kw, fails="whole budget"),
        V("not whole", (3.9,), kw, fails="an integer, got 3.9"),
        V("never reached", (0,), kw, fails="does not match"),
        V("numpy index", (int(np.argmax(np.array(curve) >= 0.9)),), kw, fails="one too early"),
        V("never reached, answered", (2,), dict(curve=[0.1, 0.5, 0.8]), fails="never reached 0.9"),
    ]


# =============================================================================================== lesson 5


def _ptq():
    require_extra("pytorch_quantization", "ptq")


def v_05_percentile_amax():
    _ptq()
    ref = solved("05_yolov7_ptq.py", "05.percentile_amax")["percentile_amax"]

    def integer_cdf(counts, edges, p):
        return edges[np.searchsorted(np.cumsum(counts), p / 100 * counts.sum())]

    def torch_version(counts, edges, p):
        c = torch.as_tensor(counts, dtype=torch.float64)
        idx = torch.searchsorted(torch.cumsum(c / c.sum(), 0), torch.tensor(p / 100, dtype=torch.float64))
        return torch.as_tensor(edges)[idx]

    def shifted(k):
        def f(counts, edges, p):
            idx = np.searchsorted(np.cumsum(counts / counts.sum()), p / 100) + k
            return float(edges[min(max(idx, 0), len(edges) - 1)])
        return f

    def in_place(counts, edges, p):
        counts[:] = np.cumsum(counts)
        return float(edges[np.searchsorted(counts, p / 100 * counts[-1])])

    return [
        V("reference", (ref,)), V("integer CDF", (integer_cdf,)), V("torch float64", (torch_version,)),
        V("upper edge", (shifted(1),), fails="one bin too high"),
        V("lower edge", (shifted(-1),), fails="one bin too low"),
        V("percent not fraction", (lambda c, e, p: float(e[min(np.searchsorted(np.cumsum(c / c.sum()), p), len(e) - 1)]),),
          fails="in percent"),
        V("100 − p", (lambda c, e, p: float(e[np.searchsorted(np.cumsum(c / c.sum()), 1 - p / 100)]),), fails="100 − p"),
        V("in place", (in_place,), fails="in place"),
        V("max edge", (lambda c, e, p: float(e[-1]),), fails="top of the histogram"),
        V("constant", (lambda c, e, p: 1.0,), fails="pytorch-quantization picks"),
        V("no-op", (lambda c, e, p: c,), fails="one number"),
    ]


def v_05_fold_bn():
    from torch import nn

    ref = solved("05_yolov7_ptq.py", "05.fold_bn")["fold_bn"]

    def float64(weight, bias, bn):
        w, b = ref(weight.double(), None if bias is None else bias.double(), bn)
        return w.double(), b.double()

    def library(weight, bias, bn):
        from torch.nn.utils.fusion import fuse_conv_bn_weights

        b = torch.zeros(weight.shape[0]) if bias is None else bias
        w, b = fuse_conv_bn_weights(weight, b, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        return w.detach(), b.detach()

    def parts(bn):
        return bn.weight.detach(), bn.bias.detach(), bn.running_mean, bn.running_var, bn.eps

    def fold(weight, bias, bn, scale_fn, bias_fn):
        g, beta, mu, var, eps = parts(bn)
        s = scale_fn(g, var, eps)
        b = torch.zeros_like(mu) if bias is None else bias
        return weight * s.view(-1, 1, 1, 1), bias_fn(b, beta, mu, s, g, var, eps)

    good_b = lambda b, beta, mu, s, g, var, eps: beta + (b - mu) * s  # noqa: E731
    good_s = lambda g, var, eps: g / (var + eps).sqrt()  # noqa: E731

    def bn_in_place(weight, bias, bn):
        w, b = ref(weight, bias, bn)
        bn.running_var.fill_(1.0)
        return w, b

    def weight_in_place(weight, bias, bn):
        w, b = ref(weight.clone(), bias, bn)
        weight.copy_(w)
        return weight, b

    return [
        V("reference", (ref,)), V("float64", (float64,)), V("torch's fuse_conv_bn_weights", (library,)),
        V("no sqrt", (lambda w, b, bn: fold(w, b, bn, lambda g, v, e: g / (v + e), good_b),), fails="missing sqrt"),
        V("no eps", (lambda w, b, bn: fold(w, b, bn, lambda g, v, e: g / v.sqrt(), good_b),), fails="not sqrt\\(var\\)"),
        V("upside down", (lambda w, b, bn: fold(w, b, bn, lambda g, v, e: (v + e).sqrt() / g, good_b),), fails="upside down"),
        V("bias without γ", (lambda w, b, bn: fold(w, b, bn, good_s, lambda b_, be, mu, s, g, v, e: be + (b_ - mu) / (v + e).sqrt()),),
          fails="also multiplied by γ"),
        V("conv bias dropped", (lambda w, b, bn: fold(w, b, bn, good_s, lambda b_, be, mu, s, g, v, e: be - mu * s),),
          fails="own bias is missing"),
        V("sign of μ", (lambda w, b, bn: fold(w, b, bn, good_s, lambda b_, be, mu, s, g, v, e: be + (b_ + mu) * s),),
          fails="sign of μ"),
        V("β missing", (lambda w, b, bn: fold(w, b, bn, good_s, lambda b_, be, mu, s, g, v, e: (b_ - mu) * s),),
          fails="β \\(bn.bias\\) is missing"),
        V("BatchNorm modified", (bn_in_place,), fails="modified the BatchNorm in place"),
        V("weight modified", (weight_in_place,), fails="modified the conv weight"),
        V("bias None", (lambda w, b, bn: (ref(w, b, bn)[0], b),), fails="also when the conv had no bias|bias is not"),
        V("no-op", (lambda w, b, bn: (w, b if b is not None else torch.zeros(w.shape[0])),), fails="differ by up to|bias is not"),
        V("not a pair", (lambda w, b, bn: w,), fails="return a pair"),
        V("nn module", (lambda w, b, bn: nn.Identity(),), fails="return a pair"),
    ]


def v_05_int8_weight_bytes():
    fused = types.SimpleNamespace(num_params=lambda: 1000)
    ref = solved("05_yolov7_ptq.py", "05.int8_weight_bytes", fused=fused)["my_int8_weight_bytes"]
    kw = dict(measured=3980, n_params=1000)
    return [
        V("reference", (ref,), kw), V("numpy", (np.int64(4000),), kw), V("typed as float", (4000.0,), kw),
        V("int8 bytes", (1000,), kw, fails="one byte per parameter"),
        V("fp16", (2000,), kw, fails="fp16"),
        V("int4", (500,), kw, fails="int4"),
        V("a quarter of the file", (995,), dict(measured=3980), fails="a quarter"),
        V("not whole", (3999.5,), kw, fails="an integer"),
        V("3 %", (4100,), kw, fails="accepted band ±2%"),
        V("text", ("many",), kw, fails="expected a number"),
    ]


def v_05_calib_batches():
    _ptq()
    from torch import nn

    torch.manual_seed(0)
    fused = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    batches = [torch.randn(4, 3, 12, 12) for _ in range(3)]
    ref_x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        ref_out = fused(ref_x)

    def score(m):
        with torch.no_grad():
            return 1 - float((m(ref_x) - ref_out).norm() / ref_out.norm())

    from course_lib.ptq import pq

    pq.quiet_logs()
    coco_eval = types.SimpleNamespace(evaluate=lambda m, imgs, coco: {"map": score(m)})
    ns = solved("05_yolov7_ptq.py", "05.calib_batches", fused=fused, calib_batches=batches, best="percentile",
                percentile=99.99, calib_stride=4, coco_eval=coco_eval, sel_imgs=None, coco_sel=None, pq=pq)
    kw = dict(model=fused, batches=batches, method="percentile", score_fn=score, stride=4)
    s = ns["my_map_few"]
    return [
        V("reference", (ns["my_n_batches"], s), kw), V("numpy", (np.int64(1), np.float32(s)), kw),
        V("3 decimals", (1.0, round(s, 3)), kw),
        V("not this run's number", (1, s + 0.01), kw, fails="scores"),
        V("all batches", (3, s), kw, fails="fewer than the 3"),
        V("zero batches", (0, s), kw, fails="between 1 and 2"),
        V("not whole", (1.5, s), kw, fails="an integer, got 1.5"),
        V("text", (1, "good"), kw, fails="expected a number"),
    ]


VARIANTS = {
    "00.p90": v_00_p90, "00.peak_gflops": v_00_peak_gflops, "00.matmul_ms": v_00_matmul_ms,
    "00.sample_count": v_00_sample_count,
    "01.gp_params": v_01_gp_params, "01.decode_spans": v_01_decode_spans, "01.batching_stanza": v_01_batching_stanza,
    "01.queue_delay": v_01_queue_delay,
    "02.colwise_linear": v_02_colwise_linear, "02.gpipe_schedule": v_02_gpipe_schedule,
    "02.pipeline_qps": v_02_pipeline_qps, "02.best_microbatches": v_02_best_microbatches,
    "03.pack_int4": v_03_pack_int4, "03.unpack_int4": v_03_unpack_int4, "03.group_scales": v_03_group_scales,
    "03.layer_bytes": v_03_layer_bytes, "03.decode_ceiling": v_03_decode_ceiling, "03.group_size": v_03_group_size,
    "04.matmul_flops": v_04_matmul_flops, "04.cache_write": v_04_cache_write,
    "04.greedy_next_batch": v_04_greedy_next_batch, "04.budget": v_04_budget,
    "05.percentile_amax": v_05_percentile_amax, "05.fold_bn": v_05_fold_bn,
    "05.int8_weight_bytes": v_05_int8_weight_bytes, "05.calib_batches": v_05_calib_batches,
}


def test_every_registered_exercise_has_a_variant_table():
    # lesson 3b's (06.*) right/wrong answers are tested in tests/test_exercises_l6.py
    assert {e.id for e in exercises.registered() if not e.id.startswith("06.")} == set(VARIANTS)


@pytest.mark.parametrize("id", sorted(VARIANTS))
def test_right_answers_pass_and_wrong_answers_are_named(id):
    variants = VARIANTS[id]()
    right = [v for v in variants if v.fails is None]
    wrong = [v for v in variants if v.fails is not None]
    assert len(right) >= 2 and len(wrong) >= 5, f"{id}: {len(right)} right and {len(wrong)} wrong variants"
    problems = run_variants(id, variants)
    assert not problems, f"{id}:\n" + "\n".join(problems)


def test_numbers_helpers_accept_numpy_and_torch_scalars_and_reject_fractions():
    assert exercises.as_int(np.int64(32), "x") == 32 and exercises.as_int(32.0, "x") == 32
    assert exercises.as_int(torch.tensor(32), "x") == 32 and exercises.as_int(torch.tensor([32.0]), "x") == 32
    with pytest.raises(ExerciseFailed, match="x: an integer, got 2.9"):
        exercises.as_int(2.9, "x")
    with pytest.raises(ExerciseFailed, match="expected a number"):
        exercises.as_number(torch.ones(3), "x")
    with pytest.raises(ExerciseFailed, match="expected a number"):
        exercises.as_number(True, "x")
    with pytest.raises(NotAttempted):
        exercises.as_int(None, "x")
    assert exercises.fmt_pair(1.9000000476837158, 1.9) == ("1.90000005", "1.9")


if __name__ == "__main__":  # the per-exercise counts for the issue
    for id, make in sorted(VARIANTS.items()):
        try:
            vs = make()
        except BaseException as e:  # noqa: BLE001 - a missing extra
            print(f"{id}: skipped ({type(e).__name__})")
            continue
        print(f"{id}: {sum(v.fails is None for v in vs)} right, {sum(v.fails is not None for v in vs)} wrong")


# ---------------------------------------------------------------------------------------------------------------
# Mutations of each reference solution: whatever the mistake, a mutated reference must never pass
# ---------------------------------------------------------------------------------------------------------------


def _bump(out):
    """The reference's output, off by one (numbers, tensors, arrays, and the first tensor of a pair)."""
    if isinstance(out, tuple):
        return (_bump(out[0]),) + out[1:]
    if isinstance(out, list) and out and isinstance(out[0], torch.Tensor):
        return [out[0] + 1] + out[1:]
    if isinstance(out, list):
        return out + [out[-1]] if out else [(0, 0, 0)]
    if isinstance(out, str):
        return out.replace("1", "2").replace("0", "1")
    return out + 1


def _touch(x):
    """Modify an argument in place the way a careless implementation would."""
    if isinstance(x, list):
        x.append(x[0])
    elif isinstance(x, torch.Tensor):
        x.add_(1)
    elif isinstance(x, np.ndarray):
        x += 1


def _mutations(ref):
    def off_by_one(*a):
        return _bump(ref(*a))

    def swapped(a, b, *rest):
        return ref(b, a, *rest)

    def no_op(*a):
        return a[0]

    def in_place(*a):
        out = ref(*[x.clone() if isinstance(x, torch.Tensor) else x.copy() if hasattr(x, "copy") else x for x in a])
        _touch(a[0])
        return out

    def raises(*a):
        raise ValueError("boom")

    memo = {}

    def constant(*a):  # the answer to the first input, whatever the input
        if "out" not in memo:
            memo["out"] = ref(*a)
        return memo["out"]

    return {"off by one": off_by_one, "swapped arguments": swapped, "no-op": no_op, "in place": in_place,
            "raises": raises, "constant": constant}


# mutation ids whose reference needs a lesson's extra: required like every other test (a failure in CI, a skip locally)
NEEDS_EXTRA = {"01.batching_stanza": ("tritonclient.grpc.model_config_pb2", "deploy"),
               "05.percentile_amax": ("pytorch_quantization", "ptq")}


# each mutation id's reference solution: (solution file, function name)
REFERENCES = {"00.p90": ("00_environment.py", "p90"), "01.decode_spans": ("01_torchscript_triton.py", "decode_token_spans"),
              "01.batching_stanza": ("01_torchscript_triton.py", "dynamic_batching_stanza"),
              "02.colwise_linear": ("02_parallel_inference.py", "column_parallel_linear"),
              "02.gpipe_schedule": ("02_parallel_inference.py", "gpipe_schedule"),
              "03.pack_int4": ("03_llm_quantization.py", "pack_int4"),
              "03.unpack_int4": ("03_llm_quantization.py", "unpack_int4"),
              "03.group_scales": ("03_llm_quantization.py", "group_scales"), "05.fold_bn": ("05_yolov7_ptq.py", "fold_bn"),
              "05.percentile_amax": ("05_yolov7_ptq.py", "percentile_amax")}
MUTATION_IDS = list(REFERENCES)


def _reference(id):
    if id in NEEDS_EXTRA:
        require_extra(*NEEDS_EXTRA[id])
    file, name = REFERENCES[id]
    return solved(file, id)[name]


@pytest.mark.parametrize("id", MUTATION_IDS)
def test_every_mutation_of_the_reference_is_rejected(id):
    ref = _reference(id)
    exercises.lookup(id).fn(ref)  # the reference itself passes
    accepted = []
    for name, mutant in _mutations(ref).items():
        if id in ("02.gpipe_schedule", "01.batching_stanza") and name == "in place":
            continue  # ints and a tuple: nothing to modify
        try:
            exercises.lookup(id).fn(mutant)
        except ExerciseFailed as e:
            assert str(e), f"{id} {name}: empty message"
            if name == "in place":
                assert "in place" in str(e) or "changed its input" in str(e), f"{id} {name}: {e}"
            if name == "raises":
                assert "raised ValueError: boom" in str(e), f"{id} {name}: {e}"
        except NotAttempted:
            accepted.append(f"{name} (reported as not attempted)")
        else:
            accepted.append(name)
    assert not accepted, f"{id}: these mutations of the reference passed the check: {accepted}"
