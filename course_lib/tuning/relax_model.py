"""A whole model through TVM: PyTorch MLP → ``torch.export`` → Relax → MetaSchedule (task scheduler) → Relax VM.

Introduced in ``04_tvm_autotuning.ipynb`` (part 4). ``ms.relax_integration.tune_relax`` extracts one tuning task
per distinct fused TIR function and lets the *gradient* task scheduler spend the trial budget where the estimated
latency gain is largest — Ansor's task-scheduler idea, now MetaSchedule's default. The committed database
``data/tvm/mlp/`` lets the notebook replay a tuning run instead of tuning on a small CPU.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from course_lib.tuning.common import host_target, physical_cores, require_tvm


def make_mlp(in_features: int = 256, hidden: int = 512, out_features: int = 10, seed: int = 0):
    """A 3-layer MLP (Linear–ReLU–Linear–ReLU–Linear) with seeded random weights, in eval mode."""
    import torch
    from torch import nn

    with torch.random.fork_rng():  # seeded weights without touching the caller's RNG state
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, out_features),
        )
    return model.eval()


def to_relax(model, example):
    """``torch.export`` the model on ``example`` and import it with ``from_exported_program`` (weights as constants)."""
    import torch

    require_tvm()
    from tvm.relax.frontend.torch import from_exported_program

    with warnings.catch_warnings():
        # torch 2.13's own pytree code (reached through torch.export) still uses the deprecated LeafSpec check
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        with torch.no_grad():
            ep = torch.export.export(model, (example,))
        return from_exported_program(ep, unwrap_unit_return_tuple=True)


def prepare(mod, target=None):
    """Legalize and fuse the Relax graph into TIR kernels — the same passes ``compile_relax`` runs before it
    looks kernels up in the database, so tuning keys and lookup keys match."""
    tvm = require_tvm()
    from tvm import relax
    from tvm.relax import pipeline

    target = target or host_target()
    try:
        dispatch = pipeline.library_dispatch_passes(target)
    except (ValueError, AttributeError):
        dispatch = []
    seq = [
        *dispatch,
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(seq)(mod)


def extract_tasks(mod, target=None) -> list:
    """The tuning tasks MetaSchedule creates for ``mod`` (one per distinct fused kernel; weight = calls per run)."""
    require_tvm()
    from tvm.s_tir import meta_schedule as ms

    target = target or host_target()
    return ms.relax_integration.extract_tasks(prepare(mod, target), target)


def tune(
    mod, work_dir: str | Path, trials: int, target=None, seed: int = 0, cost_model: str = "xgb", quiet: bool = True,
    min_parallel: int | None = None,
):
    """``ms.relax_integration.tune_relax`` with the fast builder and the gradient task scheduler; returns the database.

    Like :func:`course_lib.tuning.metaschedule.tune`, candidates without a parallel loop of ``min_parallel`` iterations
    (default: the target's ``num-cores``) are rejected.
    """
    require_tvm()
    from tvm.s_tir import meta_schedule as ms

    from course_lib.tuning.metaschedule import (
        cost_model_choice,
        fast_builder,
        plain_tables,
        quiet_console,
        register_host_intrinsics,
        space_for,
    )

    model, sentence = cost_model_choice(cost_model)
    print(sentence)
    register_host_intrinsics()
    quiet_console(quiet)
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    target = target or host_target()
    if min_parallel is None:
        min_parallel = int(target.attrs.get("num-cores", 1))
    prepared = prepare(mod, target)
    n_tasks = max(1, len(ms.relax_integration.extract_tasks(prepared, target)))
    # every task gets one first round before the scheduler picks by gain: split small budgets evenly
    per_iter = max(2, min(16, int(trials) // n_tasks))
    with plain_tables():  # no notebook widget tables (and no clear_output of the cell) while tuning
        return ms.relax_integration.tune_relax(
            prepared,
            params={},
            target=target,
            work_dir=str(work_dir),
            max_trials_global=int(trials),
            num_trials_per_iter=per_iter,
            builder=fast_builder(),
            cost_model=model,
            space=space_for(target, min_parallel),
            task_scheduler="gradient",
            strategy="evolutionary",
            seed=seed,
        )


def build(mod, db=None, target=None):
    """Compile the Relax module: with a database (``compile_relax``) or with TVM's default pipeline (untuned)."""
    tvm = require_tvm()
    from tvm.s_tir import meta_schedule as ms

    target = target or host_target()
    if db is None:
        return tvm.compile(mod, target=target)
    return ms.relax_integration.compile_relax(db, mod, target, params=None)


@dataclass
class VMRunner:
    """A Relax VM bound to one executable; call it with a numpy array, get a numpy array."""

    vm: object

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import tvm

        out = self.vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x), tvm.cpu()))
        if isinstance(out, (list, tuple)) or type(out).__name__ in ("Array", "Tuple"):
            out = out[0]
        return out.numpy()


def vm_runner(executable) -> VMRunner:
    """Load an executable into ``relax.VirtualMachine`` on the CPU."""
    require_tvm()
    import tvm
    from tvm import relax

    return VMRunner(relax.VirtualMachine(executable, tvm.cpu()))


SUMMARY_FILE = "task_scheduler_summary.txt"


def scheduler_summary(work_dir: str | Path) -> str:
    """The task scheduler's last table (trials, GFLOP/s and latency per task) from a tuning work dir's log,
    or from the ``task_scheduler_summary.txt`` saved next to a committed database."""
    work_dir = Path(work_dir)
    saved = work_dir / SUMMARY_FILE
    if saved.exists():
        return saved.read_text(encoding="utf-8")
    logs = sorted((work_dir / "logs").glob("*task_scheduler.log"))
    if not logs:
        return ""
    lines = logs[-1].read_text(encoding="utf-8").splitlines()
    ends = [i for i, ln in enumerate(lines) if ln.startswith("Total trials:")]
    if not ends:
        return ""
    end = ends[-1]
    start = max(i for i in range(end) if lines[i].lstrip().startswith("ID |"))
    return "\n".join(lines[start : end + 2]) + "\n"


def regenerate(trials: int = 128, batch: int = 32, dest: str | Path | None = None) -> Path:
    """Tune the lesson's MLP (batch ``batch``) for ``trials`` trials and save the database to ``data/tvm/mlp/``."""
    import torch

    import shutil

    from course_lib.tuning.metaschedule import committed_dir, save_database, scratch_dir

    model = make_mlp()
    mod = to_relax(model, torch.randn(batch, 256))
    work = scratch_dir("ms-mlp")
    tune(mod, work, trials)
    out = save_database(work, dest or committed_dir("mlp"))
    (out / SUMMARY_FILE).write_text(scheduler_summary(work), encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m course_lib.tuning.relax_model --out DIR [--trials N] [--batch N]``: re-tune the lesson's MLP."""
    from course_lib.tuning.metaschedule import retune_cli

    return retune_cli(argv, "python -m course_lib.tuning.relax_model", "lesson 4's MLP", regenerate, "batch", 32,
                      "batch size the MLP is tuned for")


if __name__ == "__main__":
    raise SystemExit(main())
