"""MetaSchedule (``tvm.s_tir.meta_schedule``) on the lesson's matmul: tune, write the database, replay it.

Introduced in ``04_tvm_autotuning.ipynb`` (part 3). Two practical fixes for TVM 0.27 on a small CPU box:

* **The builder workaround.** MetaSchedule's stock ``LocalBuilder`` worker runs ``default_build``, which first
  imports ``tvm.s_tir.tensor_intrin`` (≈124 tensor intrinsics for every target; 65–140 s here), so every build
  hits the 30 s timeout and tuning "finds" nothing. :func:`fast_builder` passes an ``f_build`` that does the same
  build without that import (float32 matmul never tensorises).
* **Only this CPU's tensor intrinsics in the main process.** ``TuneContext`` also imports the whole
  ``tvm.s_tir.tensor_intrin`` package (the same 65–140 s) before it can generate a design space;
  :func:`register_host_intrinsics` registers only the x86 (or ARM) ones (≈1 s) so that import becomes a no-op.
* **A committed database for replay.** ``data/tvm/<name>/database_{workload,tuning_record}.json`` hold a real tuning
  run; :func:`load_database` validates them (a corrupted file raises :class:`DatabaseError`, which says how to
  re-tune) and :func:`compile_from_database` applies the best record (``ms.tir_integration.compile_tir``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from course_lib import paths
from course_lib.tuning.common import host_target, physical_cores, require_tvm

from course_lib.tvmtools import (RECORD_FILE, WORKLOAD_FILE, DatabaseError, _check_json_lines,  # noqa: F401 (shared)
                                 committed_dir, compile_from_database, load_database)

SEEDS_FILE = "seeds.json"  # written by seed_database: which records of a work dir are re-measured seeds


def fast_builder(max_workers: int | None = None, timeout_sec: float = 120.0):
    """A ``LocalBuilder`` whose ``f_build`` skips the slow ``tvm.s_tir.tensor_intrin`` import (see module doc)."""
    require_tvm()
    from tvm.s_tir import meta_schedule as ms

    def f_build(mod, target, _params):  # a closure: cloudpickle ships it to the workers by value
        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        return tvm_build(mod, target=target)

    return ms.builder.LocalBuilder(f_build=f_build, max_workers=max_workers or physical_cores(), timeout_sec=timeout_sec)


def register_host_intrinsics() -> list[str]:
    """Register only this CPU family's tensor intrinsics (x86 or ARM), not all ~124 of ``tvm.s_tir.tensor_intrin``.

    Workaround for TVM 0.27: the package's ``__init__`` parses every intrinsic for every target (CUDA, ROCm, Metal,
    Hexagon…), 65–140 s on a small CPU, and ``TuneContext`` imports it. We put a bare package module in its place
    (same ``__path__``) and import just the host's submodule through it; returns the intrinsic modules now loaded.
    Does nothing if the full package was already imported.
    """
    import importlib
    import importlib.util
    import platform
    import sys
    import types

    require_tvm()
    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        pkg = types.ModuleType(name)
        pkg.__path__ = list(spec.submodule_search_locations or [])
        pkg.__package__ = name
        pkg.__spec__ = spec
        pkg.__doc__ = "course_lib stub: only the host CPU's tensor intrinsics are registered (see metaschedule.py)"
        sys.modules[name] = pkg
        machine = platform.machine().lower()
        sub = "arm_cpu" if machine.startswith(("arm", "aarch64")) else "x86" if machine in ("x86_64", "amd64", "i686") else None
        if sub:
            importlib.import_module(f"{name}.{sub}")
    return sorted(m for m in sys.modules if m.startswith(name + "."))


def quiet_console(quiet: bool = True) -> None:
    """Keep MetaSchedule's console output to warnings (its full INFO/DEBUG log still goes to ``work_dir/logs``).

    MetaSchedule sizes its console handler from the ``tvm.s_tir.meta_schedule`` logger's level when a tuning run starts.
    """
    import logging

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING if quiet else logging.DEBUG)


class plain_tables:
    """Context manager: MetaSchedule's task scheduler prints its tables as text to its log, not as notebook widgets.

    In Jupyter it otherwise ``display``s a table after every round and calls ``clear_output`` — which also erases
    what the cell printed before the tuning started. The (global) check it asks is answered False meanwhile.
    """

    NAME = "s_tir.meta_schedule.using_ipython"

    def __enter__(self):
        from tvm_ffi import get_global_func, register_global_func

        self._orig = get_global_func(self.NAME, allow_missing=True)
        register_global_func(self.NAME, lambda: False, override=True)
        return self

    def __exit__(self, *exc):
        from tvm_ffi import register_global_func

        if self._orig is not None:
            register_global_func(self.NAME, self._orig, override=True)
        return False


def cost_model_choice(prefer: str = "xgb") -> tuple[str, str]:
    """(MetaSchedule cost model name, sentence): ``"xgb"`` when xgboost imports, else ``"random"`` with the reason."""
    if prefer == "random":
        return "random", "cost model: random (as asked)"
    try:
        import xgboost  # noqa: F401

        return "xgb", f"cost model: XGBoost (xgboost {xgboost.__version__}) ranks candidates before measuring"
    except ImportError:
        return "random", (
            "cost model: random — xgboost is not installed, so MetaSchedule cannot learn which candidates are fast "
            "(pip install xgboost-cpu, part of the 'tvm' extra)"
        )


def parallel_extents(sch) -> list[int]:
    """Extents of the loops a schedule runs in parallel, read from its trace's ``Parallel`` instructions."""
    out = []
    for inst in sch.trace.insts:
        if inst.kind.name == "Parallel":
            try:
                out.append(int(sch.get(inst.inputs[0]).extent))
            except Exception:  # a loop fused or split away after it was marked: count it as unknown (0)
                out.append(0)
    return out


def require_parallel(min_extent: int):
    """A MetaSchedule postprocessor that rejects every candidate without a parallel loop of ≥ ``min_extent`` iterations.

    MetaSchedule's rules only *suggest* parallelism (an annotation on the root block); the postprocessor fuses the
    outer loops into one parallel loop, and when the sampled tiles leave those loops with extent 1 the kernel runs on
    one core. On a machine shared with other jobs such a serial kernel can even *measure* faster during tuning, so the
    search keeps it. This constraint keeps only kernels that can use ``min_extent`` cores (the target's ``num-cores``).
    """
    require_tvm()
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.postproc import PyPostproc

    @derived_object
    class RequireParallel(PyPostproc):
        def __init__(self, min_extent: int):
            super().__init__()
            self.min_extent = int(min_extent)

        def _initialize_with_tune_context(self, context) -> None:
            pass

        def apply(self, sch) -> bool:
            return any(e >= self.min_extent for e in parallel_extents(sch))

        def clone(self):
            return RequireParallel(self.min_extent)

    return RequireParallel(min_extent)


def space_for(target, min_parallel: int = 0):
    """MetaSchedule's default design space for ``target``; with ``min_parallel`` > 1 its postprocessors also reject
    candidates without a parallel loop of that many iterations (see :func:`require_parallel`)."""
    require_tvm()
    from tvm.s_tir import meta_schedule as ms

    if min_parallel <= 1:
        return "post-order-apply"
    kind = str(target.kind.name)
    return ms.space_generator.PostOrderApply(
        sch_rules=kind, postprocs=[*ms.postproc.Postproc.create(kind), require_parallel(min_parallel)], mutator_probs=kind
    )


def tune(
    mod,
    work_dir: str | Path,
    trials: int,
    target=None,
    num_trials_per_iter: int = 16,
    seed: int = 0,
    cost_model: str = "xgb",
    verbose: bool = True,
    quiet: bool = True,
    min_parallel: int | None = None,
    seed_from: str | Path | None = None,
    seed_top_k: int = 8,
):
    """Run ``ms.tune_tir`` (evolutionary search + cost model) on ``mod``; returns (database, cost-model sentence).

    ``min_parallel`` (default: the target's ``num-cores``) rejects candidates that cannot use that many cores.
    ``seed_from`` (a database folder, e.g. one tuned on another CPU) warm-starts the search: its ``seed_top_k`` best
    schedules are first re-measured *here* (:func:`seed_database`) and the evolution starts from them; their times in
    ``seed_from`` are never used, so every time in the new database was measured on this machine.
    """
    require_tvm()
    from tvm.s_tir import meta_schedule as ms

    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    model, sentence = cost_model_choice(cost_model)
    if verbose:
        print(sentence)
    register_host_intrinsics()
    quiet_console(quiet)
    target = target or host_target()
    if min_parallel is None:
        min_parallel = int(target.attrs.get("num-cores", 1))
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    database = "json"
    if seed_from is not None:
        database, n = seed_database(mod, work_dir, seed_from, target, top_k=seed_top_k)
        if verbose:
            print(f"warm start: {n} best schedules of {seed_from} re-measured here")
    with plain_tables():
        db = ms.tune_tir(
            mod,
            target,
            str(work_dir),
            database=database,
            max_trials_global=int(trials),
            num_trials_per_iter=min(int(num_trials_per_iter), int(trials)),
            builder=fast_builder(),
            cost_model=model,
            space=space_for(target, min_parallel),
            strategy="evolutionary",
            seed=seed,
            num_tuning_cores=physical_cores(),
        )
    return db, sentence


def seed_database(mod, work_dir: str | Path, from_dir: str | Path, target=None, top_k: int = 8, number: int = 3):
    """A new JSON database in ``work_dir`` holding the ``top_k`` best schedules of ``from_dir`` for ``mod``, re-measured here.

    Each schedule is rebuilt for ``target``, checked to run, and timed in this process like MetaSchedule's runner times a
    candidate (``number`` calls, at least 100 ms); a schedule that fails here is left out. Returns ``(database, count)``.
    """
    import tempfile

    tvm = require_tvm()
    from tvm.s_tir import meta_schedule as ms

    from course_lib.tuning.common import time_kernel

    target = target or host_target()
    with tempfile.TemporaryDirectory() as tmp:  # the committed files are never written to
        for f in (WORKLOAD_FILE, RECORD_FILE):
            shutil.copy2(Path(from_dir) / f, Path(tmp) / f)
        src = load_database(tmp)
        if not src.has_workload(mod):
            raise DatabaseError(f"{from_dir} holds no tuning record for this workload; tune without seed_from")
        seeds = list(src.get_top_k(src.commit_workload(mod), top_k))
    work_dir = Path(work_dir)
    db = ms.database.JSONDatabase(path_workload=str(work_dir / WORKLOAD_FILE), path_tuning_record=str(work_dir / RECORD_FILE))
    workload = db.commit_workload(mod)
    count, kept = 0, []
    for rec in seeds:
        try:
            sch = tvm.s_tir.Schedule(mod)
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
            lib = tvm.compile(sch.mod, target=target)
            args = [tvm.runtime.tensor(__import__("numpy").zeros([int(d) for d in a.shape], str(a.dtype)), tvm.cpu())
                    for a in rec.args_info]
            secs = time_kernel(lib, args, number=number, repeat=1, min_repeat_ms=100)
        except Exception:  # a schedule that does not build or run on this CPU is simply not a seed
            continue
        db.commit_tuning_record(ms.database.TuningRecord(rec.trace, workload, secs, target, rec.args_info))
        kept.append(str(rec.trace))
        count += 1
    (work_dir / SEEDS_FILE).write_text(json.dumps(kept), encoding="utf-8")
    return db, count


def seed_traces(work_dir: str | Path) -> list[str]:
    """The traces (as text) :func:`seed_database` put into ``work_dir``, in record order; ``[]`` for an unseeded run."""
    f = Path(work_dir) / SEEDS_FILE
    return json.loads(f.read_text(encoding="utf-8")) if f.exists() else []


def design_spaces(mod, target=None) -> list:
    """The design spaces (Ansor's *sketches*) MetaSchedule's default rules generate for ``mod``: schedules whose
    traces hold ``sample_*`` instructions — the random decisions the evolutionary search then mutates."""
    require_tvm()
    from tvm.s_tir import meta_schedule as ms

    register_host_intrinsics()
    ctx = ms.TuneContext(
        mod=mod, target=target or host_target(), space_generator="post-order-apply",
        search_strategy="evolutionary", num_threads=physical_cores(),
    )
    return list(ctx.generate_design_space())


def scratch_dir(what: str, fresh: bool = True) -> Path:
    """A scratch folder for a tuning run under the course cache (``paths.cache_dir("l4", what)``), emptied first."""
    d = paths.cache_dir("l4", what)
    if fresh:
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True, exist_ok=True)
    return d


def save_database(work_dir: str | Path, dest: str | Path) -> Path:
    """Copy the two database files of a tuning ``work_dir`` to ``dest`` (e.g. :func:`committed_dir`)."""
    work_dir, dest = Path(work_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for f in (WORKLOAD_FILE, RECORD_FILE):
        shutil.copy2(work_dir / f, dest / f)
    return dest


def replay_or_tune(mod, db_dir: str | Path, retune_trials: int = 0, work_dir: str | Path | None = None, target=None):
    """Replay the committed database, or tune ``retune_trials`` when asked or when the database is unusable.

    Returns ``(schedule, database, how)`` where ``how`` says which happened (and why).
    """
    if retune_trials <= 0:
        try:
            db = load_database(db_dir)
            return compile_from_database(db, mod, target), db, f"replayed the committed database {db_dir}"
        except DatabaseError as e:
            raise DatabaseError(f"{e}. Set a positive retune_trials to tune instead.") from None
    work_dir = Path(work_dir) if work_dir else scratch_dir("ms-replay-or-tune")
    db, sentence = tune(mod, work_dir, retune_trials, target=target)
    return compile_from_database(db, mod, target), db, f"tuned {retune_trials} trials in {work_dir} ({sentence})"


def _records(db_dir: str | Path) -> list:
    path = Path(db_dir) / RECORD_FILE
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def tuned_target(db_dir: str | Path) -> dict:
    """The target a committed database was tuned for, as written in its records (``mcpu``, ``num-cores``…)."""
    rows = _records(db_dir)
    if not rows:
        raise DatabaseError(f"{Path(db_dir) / RECORD_FILE} holds no records")
    return dict(rows[0][1][2])


def target_label(t) -> str:
    """``"znver4, 2 cores"`` for a target dict (as in a database record) or a ``tvm.target.Target``."""
    attrs = t if isinstance(t, dict) else dict(t.attrs)
    return f"{attrs.get('mcpu', 'generic')}, {int(attrs.get('num-cores', 1))} core(s)"


def same_target(tuned: dict, target) -> bool:
    """True when a database's recorded target (``mcpu`` and ``num-cores``) is the one ``target`` describes.

    Records are looked up by workload, not by target, so a database tuned for another CPU still *replays*; this says
    whether its choices were measured on a CPU like this one.
    """
    attrs = target if isinstance(target, dict) else dict(target.attrs)
    return str(tuned.get("mcpu")) == str(attrs.get("mcpu")) and int(tuned.get("num-cores", 1)) == int(attrs.get("num-cores", 1))


def tuned_num_cores(db_dir: str | Path) -> int:
    """The ``num-cores`` of the target a database was tuned for (1 when the record does not say)."""
    return int(tuned_target(db_dir).get("num-cores", 1))


def record_summary(db_dir: str | Path, flops: dict[int, float] | None = None) -> list[dict]:
    """One row per workload of a database: its argument shapes, trials measured, best and median measured time (µs)."""
    import statistics

    rows: dict[int, dict] = {}
    for w, rec in _records(db_dir):
        row = rows.setdefault(w, {"workload": w, "arg_shapes": [a[2] for a in rec[3]], "trials": 0, "times_us": []})
        row["trials"] += 1
        if rec[1]:
            row["times_us"].append(1e6 * sum(float(x) for x in rec[1]) / len(rec[1]))
    out = []
    for w in sorted(rows):
        r = rows[w]
        times = r.pop("times_us")
        r["best_us"] = min(times) if times else float("nan")
        r["median_us"] = statistics.median(times) if times else float("nan")
        out.append(r)
    return out


def tuning_curve(db_dir: str | Path, flops: float) -> list[float]:
    """GFLOP/s of every measured trial in a database's record file, in the order they were committed."""
    out = []
    for line in (Path(db_dir) / RECORD_FILE).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        _, rec = json.loads(line)
        run_secs = rec[1] if len(rec) > 1 else None
        if run_secs:
            t = sum(float(x) for x in run_secs) / len(run_secs)
            out.append(flops / t / 1e9 if t > 0 and t < 1e9 else 0.0)
        else:
            out.append(0.0)
    return out


def regenerate_matmul(trials: int = 128, n: int = 512, dest: str | Path | None = None) -> Path:
    """Tune the lesson's ``n``³ matmul for ``trials`` trials and write the database to ``data/tvm/matmul_<n>/``."""
    from course_lib.tuning.matmul import matmul_module

    work = scratch_dir(f"ms-matmul-{n}")
    tune(matmul_module(n, n, n), work, trials)
    out = save_database(work, dest or committed_dir(f"matmul_{n}"))
    shutil.rmtree(work, ignore_errors=True)
    return out


def retune_cli(argv, prog: str, what: str, regenerate, knob: str, default: int, knob_help: str) -> int:
    """The re-tuning command line shared by this module and ``relax_model``: ``--out DIR --trials N --<knob> N``.

    Writes only to ``--out`` (pass ``data/tvm/<name>`` to refresh the committed database); bad numbers → one line, exit 2.
    """
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=f"Tune {what} with MetaSchedule on this machine and write "
                                     "the database to --out (pass the folder under data/tvm/ to refresh the committed one).")
    parser.add_argument("--out", required=True, type=Path, help="folder the tuned database is written to")
    parser.add_argument("--trials", type=int, default=128, help="MetaSchedule trials (default 128)")
    parser.add_argument(f"--{knob}", type=int, default=default, help=f"{knob_help} (default {default})")
    args = parser.parse_args(argv)
    if args.trials < 1 or getattr(args, knob) < 1:
        parser.error(f"--trials and --{knob} must be positive integers")
    print(regenerate(args.trials, getattr(args, knob), dest=args.out.expanduser()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m course_lib.tuning.metaschedule --out DIR [--trials N] [--size N]``: re-tune the lesson's matmul."""
    return retune_cli(argv, "python -m course_lib.tuning.metaschedule", "lesson 4's n×n×n float32 matmul",
                      regenerate_matmul, "size", 512, "matrix size n")


if __name__ == "__main__":
    raise SystemExit(main())
