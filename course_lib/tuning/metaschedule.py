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
import tempfile
from pathlib import Path

from course_lib import paths
from course_lib.tuning.common import host_target, physical_cores, require_tvm

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


class DatabaseError(RuntimeError):
    """A MetaSchedule database that is missing, corrupted or has no record for the workload asked for."""


def committed_dir(name: str = "matmul_512") -> Path:
    """Where the lesson's committed MetaSchedule database ``name`` lives: ``data/tvm/<name>/``."""
    return paths.data_dir() / "tvm" / name


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
):
    """Run ``ms.tune_tir`` (evolutionary search + cost model) on ``mod``; returns (database, cost-model sentence)."""
    require_tvm()
    from tvm.s_tir import meta_schedule as ms

    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    model, sentence = cost_model_choice(cost_model)
    if verbose:
        print(sentence)
    register_host_intrinsics()
    quiet_console(quiet)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    db = ms.tune_tir(
        mod,
        target or host_target(),
        str(work_dir),
        max_trials_global=int(trials),
        num_trials_per_iter=min(int(num_trials_per_iter), int(trials)),
        builder=fast_builder(),
        cost_model=model,
        strategy="evolutionary",
        seed=seed,
        num_tuning_cores=physical_cores(),
    )
    return db, sentence


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


def save_database(work_dir: str | Path, dest: str | Path) -> Path:
    """Copy the two database files of a tuning ``work_dir`` to ``dest`` (e.g. :func:`committed_dir`)."""
    work_dir, dest = Path(work_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for f in (WORKLOAD_FILE, RECORD_FILE):
        shutil.copy2(work_dir / f, dest / f)
    return dest


def _check_json_lines(path: Path) -> int:
    if not path.exists():
        raise DatabaseError(f"MetaSchedule database file missing: {path}")
    n = 0
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatabaseError(f"{path.name} line {lineno} is not valid JSON ({e.msg})") from None
        if not isinstance(row, list) or len(row) < 2:
            raise DatabaseError(f"{path.name} line {lineno} is not a MetaSchedule record (expected a 2-item list)")
        n += 1
    if n == 0:
        raise DatabaseError(f"{path.name} holds no records")
    return n


def load_database(db_dir: str | Path):
    """Open the JSON database in ``db_dir`` after checking it; a corrupted one raises :class:`DatabaseError`."""
    require_tvm()
    from tvm.s_tir import meta_schedule as ms

    db_dir = Path(db_dir)
    hint = (
        f" — the database in {db_dir} cannot be replayed. Re-tune to regenerate it: "
        "course_lib.tuning.metaschedule.tune(mod, work_dir, trials) then save_database(work_dir, db_dir) "
        "(in the notebook: set ms_trials, or relax_trials for the MLP, to a positive number)"
    )
    try:
        _check_json_lines(db_dir / WORKLOAD_FILE)
        _check_json_lines(db_dir / RECORD_FILE)
        return ms.database.JSONDatabase(
            path_workload=str(db_dir / WORKLOAD_FILE),
            path_tuning_record=str(db_dir / RECORD_FILE),
            allow_missing=False,
        )
    except DatabaseError as e:
        raise DatabaseError(f"{e}{hint}") from None
    except Exception as e:  # TVM's own parser: a record that is JSON but not a valid trace
        raise DatabaseError(f"TVM could not parse the database ({type(e).__name__}: {str(e).splitlines()[0][:200]}){hint}") from None


def compile_from_database(db, mod, target=None):
    """The best schedule the database holds for ``mod`` (``ms.tir_integration.compile_tir``); raises if none."""
    require_tvm()
    from tvm.s_tir import meta_schedule as ms

    sch = ms.tir_integration.compile_tir(db, mod, target or host_target())
    if sch is None:
        raise DatabaseError(
            "the database holds no tuning record for this workload (a different shape or dtype?); "
            "re-tune with course_lib.tuning.metaschedule.tune(mod, work_dir, trials)"
        )
    return sch


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
    work_dir = Path(work_dir or tempfile.mkdtemp(prefix="l4-ms-"))
    db, sentence = tune(mod, work_dir, retune_trials, target=target)
    return compile_from_database(db, mod, target), db, f"tuned {retune_trials} trials in {work_dir} ({sentence})"


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

    work = Path(tempfile.mkdtemp(prefix="l4-ms-"))
    tune(matmul_module(n, n, n), work, trials)
    return save_database(work, dest or committed_dir(f"matmul_{n}"))


if __name__ == "__main__":  # python -m course_lib.tuning.metaschedule [trials]
    import sys

    print(regenerate_matmul(int(sys.argv[1]) if len(sys.argv) > 1 else 128))
