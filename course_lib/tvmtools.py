"""TVM plumbing shared by lessons 3 and 4: import check, host target, cores, and replaying a MetaSchedule database.

Lesson 4 (``04_tvm_autotuning.ipynb``, :mod:`course_lib.tuning`) tunes; lesson 3 (``03_llm_quantization.ipynb``,
:mod:`course_lib.llm.tvm_gemv`) only replays the committed ``data/tvm/gemv/`` database. Both use these pieces, so
they live below both lessons: no lesson imports another lesson's package. ``course_lib.tuning.common`` and
``course_lib.tuning.metaschedule`` re-export them under their old names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from course_lib import paths

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


def require_tvm():
    """Import and return ``tvm``; :class:`course_lib.hw.MissingDependency` naming the ``tvm`` extra when it is missing."""
    from course_lib import hw

    return hw.require("tvm", "tvm", what="lesson 4 (Apache TVM)")


def host_cpu() -> str:
    """The LLVM name of this machine's CPU (e.g. ``icelake-server``), detected by TVM's LLVM."""
    require_tvm()
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def physical_cores() -> int:
    """Number of physical CPU cores (what TVM's thread pool and ``num-cores`` should use)."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def pool_env(threads: int | None = None) -> dict[str, str]:
    """Set what TVM reads when its CPU thread pool starts (the first parallel kernel); returns those variables.

    * ``TVM_NUM_THREADS`` = ``threads`` (default: the physical cores). Unset, TVM takes *half* the logical CPUs.
    * ``TVM_BIND_THREADS=0`` unless the user set it. By default TVM pins each worker thread to a core but not the
      calling thread, which runs a share of every parallel loop too; when the scheduler puts the caller on a pinned
      worker's core, two shares run on one core and the kernel takes twice as long until the caller is moved (on
      CI's 2 cores: the same tuned matmul at 113 vs 227 GFLOP/s, depending on where the caller sat). Unpinned, the
      OS places both. MetaSchedule's runner processes inherit both variables, so tuning measures the same setup.
    """
    if threads:
        os.environ["TVM_NUM_THREADS"] = str(int(threads))
    else:
        os.environ.setdefault("TVM_NUM_THREADS", str(physical_cores()))
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    return {k: os.environ[k] for k in ("TVM_NUM_THREADS", "TVM_BIND_THREADS")}


def host_target(num_cores: int | None = None):
    """A ``tvm.target.Target`` for this CPU: ``{"kind": "llvm", "mcpu": <detected>, "num-cores": n}``.

    TVM 0.27 rejects the old CLI string form with options (``"llvm -mcpu=..."``), so it is a dict.
    """
    tvm = require_tvm()
    return tvm.target.Target(
        {"kind": "llvm", "mcpu": host_cpu(), "num-cores": int(num_cores or physical_cores())}
    )


# --------------------------------------------------------------------------------------------
# a committed MetaSchedule database: validate, open, replay
# --------------------------------------------------------------------------------------------


class DatabaseError(RuntimeError):
    """A MetaSchedule database that is missing, corrupted or has no record for the workload asked for."""


def committed_dir(name: str = "matmul_512") -> Path:
    """Where the lessons' committed MetaSchedule database ``name`` lives: ``data/tvm/<name>/``."""
    return paths.data_dir() / "tvm" / name


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
