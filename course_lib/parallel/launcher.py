"""Launch the strategies under ``torchrun`` and collect one pandas DataFrame — ``02_parallel_inference.ipynb``.

::

    from course_lib.parallel import launch, Run
    res = launch([Run("single"), Run("tensor"), Run("pipeline", microbatches=4)], world_size=2, model="small")
    res.frame      # one row per run: strategy, world_size, batch, seq_len, qps, p50/p90, util, memory, parity
    res.ranks      # one row per rank (and device) per run
    res.skipped    # {strategy: reason} for strategies that cannot run here
    res.traces     # utilisation samples over time, per rank

The Jupyter kernel never runs a collective: this writes a plan, starts
``python -m torch.distributed.run --standalone --nproc_per_node=N -m course_lib.parallel.worker``
with the same interpreter, and reads back each rank's JSON. Every collective has a timeout
(``init_process_group(timeout=...)``) and the whole job has a wall-clock limit, so a rank that
raises makes the run fail fast with that rank's traceback — never a hang.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from course_lib import paths
from course_lib.parallel import STRATEGIES
from course_lib.parallel.world import WorldSizeError


class RankFailed(RuntimeError):
    """A rank raised (or the job exited non-zero); the message holds the failing rank's traceback (02)."""


class LaunchTimeout(RankFailed):
    """The job ran past its wall-clock limit and was killed (02)."""


@dataclass
class Run:
    """One strategy to run: ``microbatches`` for the pipelines, ``streams`` (GPU), ``devices`` for ``split`` (02)."""

    strategy: str
    microbatches: int = 1
    streams: int = 1
    devices: int | None = None  # split: how many devices (default: world_size)
    balance: str = "layers"  # pipelines: "layers" (equal counts, the seed's way) or "flops" (head-aware)
    label: str | None = None

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r} (choose from {', '.join(STRATEGIES)})")
        if self.balance not in ("layers", "flops"):
            raise ValueError(f"balance must be 'layers' or 'flops', got {self.balance!r}")
        if self.label is None:
            lab = self.strategy
            if self.strategy in ("pipeline", "pipelining") and self.microbatches > 1:
                lab += f" m={self.microbatches}"
            if self.strategy in ("pipeline", "pipelining") and self.balance != "layers":
                lab += f" ({self.balance})"
            if self.streams > 1:
                lab += f" s={self.streams}"
            self.label = lab


@dataclass
class LaunchResult:
    """What :func:`launch` returns: summary ``frame``, per-rank ``ranks``, ``skipped`` reasons, logs (02)."""

    frame: object
    ranks: object
    skipped: dict = field(default_factory=dict)
    seconds: float = 0.0
    out_dir: str = ""
    log_tail: str = ""
    traces: object = None  # utilisation samples over time: label, strategy, rank, t, device, util


def unavailable_reason(strategy: str, world_size: int = 1, gpus: int | None = None) -> str | None:
    """Why ``strategy`` cannot run here (missing package, GPU), or ``None`` (02)."""
    if strategy == "deepspeed":
        from course_lib.parallel.deepspeed_tp import unavailable_reason as ds

        return ds(gpus)
    return None


def _gpus() -> int:
    from course_lib import hw

    return hw.gpu_count()


def check_world(world_size: int, device: str = "auto", oversubscribe: bool = False) -> str:
    """Validate ``world_size`` against this machine; returns the backend (``gloo``/``nccl``) (02).

    Raises :class:`WorldSizeError` with a clear sentence when there are not enough GPUs (GPU runs)
    or CPU cores (CPU runs, unless ``oversubscribe``).
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise WorldSizeError(f"world_size must be a positive integer, got {world_size!r}")
    gpus = _gpus()
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    use_cuda = device == "cuda" or (device == "auto" and gpus > 0)
    if use_cuda:
        if world_size > gpus:
            raise WorldSizeError(
                f"world_size={world_size} needs {world_size} GPUs (one per rank) but {gpus} found; "
                f"use world_size <= {gpus}" + (" or device='cpu' for gloo ranks" if gpus == 0 else "")
            )
        return "nccl"
    cores = os.cpu_count() or 1
    if world_size > cores and not oversubscribe:
        raise WorldSizeError(
            f"world_size={world_size} CPU ranks on {cores} CPU cores: each rank needs at least one core; "
            f"use world_size <= {cores} (or oversubscribe=True to run anyway, with meaningless timings)"
        )
    return "gloo"


def _kill_group(proc: subprocess.Popen) -> None:
    """Terminate the torchrun process group we started (SIGTERM, then SIGKILL)."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:]
    except OSError:
        return ""


def _errors(out: Path) -> str:
    texts = []
    for f in sorted(out.glob("error_rank*.txt")):
        texts.append(f"--- {f.stem.replace('error_', '')} ---\n{_tail(f, 6000).rstrip()}")
    return "\n".join(texts)


def launch(
    runs,
    world_size: int = 2,
    model="small",
    batch: int = 8,
    seq_len: int = 64,
    warmup: int = 2,
    repeat: int = 5,
    qps_batches: int = 4,
    qps_rounds: int = 3,
    timeout_s: float = 300.0,
    collective_timeout_s: float = 60.0,
    device: str = "auto",
    threads: int | None = None,
    sample_interval: float = 0.1,
    oversubscribe: bool = False,
    fail_rank: int | None = None,
    hang_rank: int | None = None,
    out_dir: str | os.PathLike | None = None,
    torchrun_args: list[str] | None = None,
) -> LaunchResult:
    """Run ``runs`` (strategy names or :class:`Run`) on ``world_size`` torchrun ranks; returns a :class:`LaunchResult` (02).

    ``model`` is a preset name or ``{"preset": ..., **BertConfig overrides}``. Each strategy is timed
    ``repeat`` times one batch at a time (latency, after ``warmup`` calls) and ``qps_rounds`` times
    ``qps_batches`` batches back to back (throughput). ``threads`` is each rank's torch thread count
    (default: cores / ranks); the single-process strategies (``single``, ``split``) use every core.
    Strategies that cannot run here (e.g. DeepSpeed without GPUs) are left out and listed in
    ``.skipped`` with the reason. ``fail_rank`` makes that rank raise right after start-up (to see
    fail-fast in action); ``hang_rank`` makes that rank stall before its first collective, so the
    others hit the collective timeout (``collective_timeout_s``).
    ``out_dir`` keeps the ranks' files there; by default they go to a scratch folder under the
    course cache that is removed once read. ``torchrun_args`` replaces ``--standalone`` (e.g.
    ``["--nnodes=2", "--node-rank=0", "--rdzv-backend=c10d", "--rdzv-endpoint=host:29500"]`` for
    several nodes; start the same call on every node with ``out_dir`` on a shared file system so the
    ranks' JSON files meet in one place; ``world_size`` is then the number of ranks per node).
    """
    import pandas as pd

    backend = check_world(world_size, device, oversubscribe)
    plan_runs, skipped = plan_strategies(runs, world_size, backend)
    empty = pd.DataFrame()
    if not plan_runs:
        return LaunchResult(empty, empty, skipped, 0.0, str(out_dir or ""))
    cores = os.cpu_count() or 1
    plan = dict(backend=backend, model=_model_spec(model), batch=batch, seq_len=seq_len, warmup=warmup, repeat=repeat,
                qps_batches=qps_batches, qps_rounds=qps_rounds, timeout_s=collective_timeout_s,
                sample_interval=sample_interval, threads=threads or max(1, cores // world_size),
                single_threads=cores if backend == "gloo" else None,
                runs=plan_runs, fail_rank=fail_rank, hang_rank=hang_rank)
    own = out_dir is None
    out = Path(tempfile.mkdtemp(prefix="launch-", dir=paths.cache_dir("l2"))) if own else Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for f in list(out.glob("run*_rank*.json")) + list(out.glob("error_rank*.txt")):
            f.unlink()
        (out / "plan.json").write_text(json.dumps(plan, indent=1), encoding="utf-8")
        seconds = _run_torchrun(out, world_size, plan["threads"], timeout_s, torchrun_args)
        ranks, summary, traces = collect(out, plan_runs)
        return LaunchResult(summary, ranks, skipped, seconds, "" if own else str(out),
                            _tail(out / "torchrun.log", 2000), traces)
    finally:
        if own:
            shutil.rmtree(out, ignore_errors=True)


def plan_strategies(runs, world_size: int, backend: str) -> tuple[list[dict], dict]:
    """The runs of a plan (dicts for the workers) and ``{label: reason}`` for those that cannot run here (02)."""
    runs = [r if isinstance(r, Run) else Run(r) for r in runs]
    gpus = _gpus() if backend == "nccl" else 0
    skipped, plan_runs = {}, []
    for r in runs:
        why = unavailable_reason(r.strategy, world_size, gpus)
        if why is None and r.streams > 1 and backend != "nccl":
            why = f"{r.streams} CUDA streams need a GPU (found 0)"
        if why:
            skipped[r.label] = why
            continue
        d = asdict(r)
        if r.strategy == "split":
            n = r.devices or world_size
            if backend == "nccl" and n > gpus:
                raise WorldSizeError(f"split over {n} devices needs {n} GPUs but {gpus} found")
            d["devices"] = [f"cuda:{i}" for i in range(n)] if backend == "nccl" else ["cpu"] * n
        else:
            d.pop("devices")
        plan_runs.append(d)
    return plan_runs, skipped


def _model_spec(model) -> dict:
    spec = model if isinstance(model, (str, dict)) else model.to_dict()
    return {"preset": spec} if isinstance(spec, str) else spec


def _run_torchrun(out: Path, world_size: int, threads: int, timeout_s: float, torchrun_args) -> float:
    """Start ``torchrun`` on ``out/plan.json`` and wait; returns seconds, raises :class:`RankFailed` / :class:`LaunchTimeout`."""
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    rdzv = list(torchrun_args) if torchrun_args else ["--standalone"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *rdzv, f"--nproc_per_node={world_size}",
           "--max-restarts=0", "--monitor-interval=0.2",
           "-m", "course_lib.parallel.worker", "--plan", str(out / "plan.json"), "--out", str(out)]
    log = out / "torchrun.log"
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise LaunchTimeout(
                f"the {world_size}-rank job ran past its {timeout_s:.0f} s limit and was killed\n"
                + (_errors(out) or _tail(log))
            ) from None
        except BaseException:  # KeyboardInterrupt in Jupyter: never leave ranks behind
            _kill_group(proc)
            raise
    seconds = time.perf_counter() - t0
    if rc != 0:
        errs = _errors(out)
        first = next((ln.strip() for ln in reversed(errs.splitlines()) if ln.strip() and not ln.startswith(" ")), "")
        raise RankFailed(
            f"the {world_size}-rank job failed (exit {rc}) after {seconds:.1f} s: {first or 'see log'}\n"
            + (errs or _tail(log))
        )
    return seconds


def collect(out: Path, plan_runs: list[dict]):
    """Read ``run*_rank*.json`` into (per-rank frame, per-run summary frame, utilisation traces) (02)."""
    import pandas as pd

    rank_rows, summary, traces = [], [], []
    for i, run in enumerate(plan_runs):
        recs = [json.loads(f.read_text(encoding="utf-8")) for f in sorted(out.glob(f"run{i}_rank*.json"))]
        if not recs:
            raise RankFailed(f"run {i} ({run['strategy']}) wrote no results in {out}")
        for rec in recs:
            traces += [{"label": rec["label"], "strategy": rec["strategy"], "rank": rec["rank"], "t": t,
                        "device": d, "util": u} for t, d, u in rec.get("util_trace", [])]
            for u in rec["util"] or [{"device": rec["device"], "util_max": float("nan"), "util_mean": float("nan")}]:
                rank_rows.append({"label": rec["label"], "strategy": rec["strategy"], "rank": rec["rank"],
                                  "device": u["device"], "util_max": u["util_max"], "util_mean": u["util_mean"],
                                  "p50_ms": rec["p50_ms"], "peak_mem_mib": rec["peak_mem_mib"],
                                  "param_mib": rec["param_mib"], "parity_max_abs_diff": rec["parity_max_abs_diff"]})
        diffs = [r["parity_max_abs_diff"] for r in recs if r["parity_max_abs_diff"] is not None]
        utils = [u for r in recs for u in r["util"]]
        r0 = recs[0]
        summary.append({
            "strategy": r0["label"],
            "name": r0["strategy"],
            "world_size": r0["world_size"],
            "backend": r0["backend"],
            "batch": r0["batch"],
            "seq_len": r0["seq_len"],
            "microbatches": r0["microbatches"],
            "balance": r0.get("balance", "layers"),
            "streams": r0["streams"],
            "qps": min(r["qps"] for r in recs),
            "qps_p10": min(r["qps_p10"] for r in recs),
            "qps_p90": min(r["qps_p90"] for r in recs),
            "p10_ms": max(r["p10_ms"] for r in recs),
            "p50_ms": max(r["p50_ms"] for r in recs),
            "p90_ms": max(r["p90_ms"] for r in recs),
            "util_max": max((u["util_max"] for u in utils), default=float("nan")),
            "util_mean": (sum(u["util_mean"] for u in utils) / len(utils)) if utils else float("nan"),
            "peak_mem_mib": max(r["peak_mem_mib"] for r in recs),
            "param_mib_per_rank": max(r["param_mib"] for r in recs),
            "parity_max_abs_diff": max(diffs) if diffs else float("nan"),
            "threads": r0["threads"],
            "info": r0["info"],
        })
    return pd.DataFrame(rank_rows), pd.DataFrame(summary), pd.DataFrame(traces)
