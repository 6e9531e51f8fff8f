"""Regenerate lesson 3's committed TVM GEMV database ``data/tvm/gemv/`` with lesson 4's MetaSchedule tuner.

    python ci/tune_gemv.py [trials per workload]      (default 32)

A maintainer's command, outside ``course_lib``: it joins lesson 3's workload (``course_lib.llm.tvm_gemv``) and lesson
4's tuner (``course_lib.tuning.metaschedule``) so that neither lesson package imports the other.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def tune_all(trials: int = 32, dest: str | Path | None = None) -> Path:
    """Tune every (shape, format) of ``tvm_gemv`` for ``trials`` trials into one work folder; save it to ``dest``."""
    from course_lib import tvmtools
    from course_lib.llm import tvm_gemv
    from course_lib.tuning import metaschedule

    work = metaschedule.scratch_dir("ms-gemv")
    for out_f, in_f in tvm_gemv.SMOLLM2_SHAPES:
        for bits, group_size in tvm_gemv.TUNED_FORMATS:
            fmt = f"int{bits} " + (f"g{group_size}" if group_size else "per-row")
            print(f"tuning {out_f}x{in_f} {fmt}: {trials} trials", flush=True)
            metaschedule.tune(tvm_gemv.gemv_module(out_f, in_f, bits, group_size), work, trials, verbose=False)
    out = metaschedule.save_database(work, dest or tvmtools.committed_dir(tvm_gemv.DB_NAME))
    shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(tune_all(int(sys.argv[1]) if len(sys.argv) > 1 else 32))
