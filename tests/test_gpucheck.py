"""``course gpu-check``: the step list, the report schema, and what holds on a CPU or a GPU machine."""

import json
import os
import subprocess
import time
import sys
from pathlib import Path

import pytest

from course_lib import gpucheck, hw, runner

REPO = Path(__file__).resolve().parents[1]
LESSON_PATHS = ("l0.torch_cuda", "l0.nvml_sampler", "l1.cuda_train", "l1.trace_map_location", "l2.nccl_rank",
                "l2.cuda_streams", "l2.deepspeed", "l3.fp16", "l3.triton_int4", "l4.gpu_budget",
                "l5.detector_cuda", "l5.tensorrt")


def test_dry_run_lists_every_step_and_runs_nothing(capsys, tmp_path):
    assert runner.main(["gpu-check", "--dry-run", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    for name in LESSON_PATHS:
        assert name in out
    assert [s.name for s in gpucheck.STEPS] == list(LESSON_PATHS)
    assert f"{len(LESSON_PATHS)} steps (dry run: nothing executed)" in out
    assert not (tmp_path / "out").exists()


def test_step_selection_by_prefix_and_unknown_names(capsys):
    assert [s.name for s in gpucheck.select_steps(["l2"])] == ["l2.nccl_rank", "l2.cuda_streams", "l2.deepspeed"]
    assert runner.main(["gpu-check", "l9", "--dry-run"]) == 2
    assert "unknown step 'l9'" in capsys.readouterr().err
    assert runner.main(["gpu-check", "--device", "tpu", "--out", "/tmp/never"]) == 2


def test_real_run_reports_every_step_in_the_course_run_schema(tmp_path, capsys):
    """On a CPU machine every step is skipped with the reason; on a GPU machine the cheapest step runs."""
    gpus = hw.gpu_count()
    names = [] if gpus == 0 else ["l0.torch_cuda"]
    status = runner.main(["gpu-check", *names, "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert set(doc) == {"profile", "started", "notebooks"}
    assert doc["profile"] == "gpu-check"
    expected = list(LESSON_PATHS) if gpus == 0 else names
    assert list(doc["notebooks"]) == expected
    for entry in doc["notebooks"].values():
        assert set(entry) == {"status", "seconds", "error", "skip_reason", "metrics", "exercises"}
        assert entry["status"] in ("ok", "failed", "skipped")
        assert (entry["status"] == "failed") == (entry["error"] is not None)
        assert (entry["status"] == "skipped") == bool(entry["skip_reason"])
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# GPU check report")
    assert all(f"| {n} |" in md for n in expected)
    out = capsys.readouterr().out
    if gpus == 0:
        assert status == 0
        assert all(e["skip_reason"] == "needs a CUDA GPU (found 0)" for e in doc["notebooks"].values())
        assert "no CUDA GPU found" in out
    else:
        entry = doc["notebooks"]["l0.torch_cuda"]
        assert status == (1 if entry["status"] == "failed" else 0)
        assert entry["status"] == "ok", entry["error"]
        assert entry["metrics"]["l0.matmul_fp32_rel_err"]["value"] < 5e-3


def test_a_failing_step_is_reported_and_the_next_one_still_runs(tmp_path, monkeypatch):
    def boom(ctx):
        raise RuntimeError("first line\nthe last line says why")

    def fine(ctx):
        ctx.metric("x.value", 3, "things")
        ctx.note("a note")
        return "all good"

    def skip(ctx):
        raise gpucheck.StepSkipped("needs 2 GPUs (found 1)")

    steps = [gpucheck.Step("t.boom", "fails", boom), gpucheck.Step("t.fine", "works", fine),
             gpucheck.Step("t.skip", "skips", skip)]
    monkeypatch.setattr(gpucheck, "STEPS", steps)
    status, doc = gpucheck.run([], tmp_path, device="cpu", echo=lambda s: None)
    assert status == 1
    nb = doc["notebooks"]
    assert nb["t.boom"]["status"] == "failed" and nb["t.boom"]["error"] == "RuntimeError: the last line says why"
    assert nb["t.fine"]["status"] == "ok" and nb["t.fine"]["metrics"] == {"x.value": {"value": 3.0, "unit": "things"}}
    assert nb["t.skip"] == {**nb["t.skip"], "status": "skipped", "skip_reason": "needs 2 GPUs (found 1)"}
    assert not (tmp_path / "work").exists()
    assert "the last line says why" in (tmp_path / "tracebacks.txt").read_text(encoding="utf-8")
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "all good" in md and "a note" in md


def test_cpu_rehearsal_runs_a_real_step():
    """--device cpu runs the lessons' code itself (here lesson 3's fp16 path) to catch API mistakes early."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        ctx = gpucheck.Context(device="cpu", work=Path(d), gpus=0)
        res, summary = gpucheck.run_step(next(s for s in gpucheck.STEPS if s.name == "l3.fp16"), ctx)
    assert res.status == "ok", res.error
    assert res.metrics["l3.fp16_logits_rel_diff"]["value"] < 2e-2
    assert "greedy tokens" in summary


def test_importing_the_course_needs_no_particular_torch():
    """The GPU box brings its own torch: importing course_lib (and gpu-check) must not import torch at all."""
    code = ("import sys, course_lib, course_lib.gpucheck, course_lib.runner, course_lib.hw, course_lib.bench; "
            "assert 'torch' not in sys.modules, 'torch imported at import time'")
    path = os.pathsep.join([str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": path})
    pinned = []
    for f in (REPO / "course_lib").rglob("*.py"):
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if "__version__" in line and ("assert" in line or "raise" in line) and "torch" in line:
                pinned.append(f"{f.relative_to(REPO)}:{i}")
    assert pinned == [], f"torch version checks at import: {pinned}"


@pytest.mark.parametrize("name", ["psutil", "nvidia-ml-py", "papermill"])
def test_the_gpu_box_wheel_list_holds_what_course_lib_imports(name):
    listed = [ln.split("#")[0].strip() for ln in (REPO / "ci" / "gpu-box-wheels.txt").read_text().splitlines()]
    assert name in listed


def test_gpu_box_installs_only_the_carried_wheels_the_box_lacks(tmp_path, monkeypatch):
    """ci/gpu_box.py (standard library only) unpacks a missing wheel into .whl/site and leaves installed ones."""
    import zipfile

    sys.path.insert(0, str(REPO / "ci"))
    try:
        import gpu_box
    finally:
        sys.path.pop(0)
    wheels, site = tmp_path / ".whl", tmp_path / ".whl" / "site"
    wheels.mkdir()
    monkeypatch.setattr(gpu_box, "SITE", site)
    for dist, mod in (("pytest", "pytest_fake"), ("surely_not_installed_pkg", "surely_not_installed_pkg")):
        with zipfile.ZipFile(wheels / f"{dist}-1.0-py3-none-any.whl", "w") as z:
            z.writestr(f"{mod}/__init__.py", "VALUE = 42\n")
            z.writestr(f"{dist}-1.0.dist-info/METADATA", f"Name: {dist}\nVersion: 1.0\n")
    missing = gpu_box.missing_wheels(wheels)
    assert [w.name for w in missing] == ["surely_not_installed_pkg-1.0-py3-none-any.whl"]  # pytest is installed
    gpu_box.install(missing)
    assert (site / "surely_not_installed_pkg" / "__init__.py").read_text() == "VALUE = 42\n"
    assert gpu_box.missing_wheels(wheels) == []  # already unpacked: not again
    env = gpu_box.environment()
    assert env["PYTHONPATH"].split(os.pathsep)[:2] == [str(REPO), str(site)]


def test_steps_past_the_time_budget_are_skipped_with_the_reason(tmp_path, monkeypatch):
    def slow(ctx):
        time.sleep(0.2)
        return "done"

    monkeypatch.setattr(gpucheck, "STEPS", [gpucheck.Step("t.a", "slow", slow), gpucheck.Step("t.b", "slow", slow)])
    status, doc = gpucheck.run([], tmp_path, device="cpu", echo=lambda s: None, budget_s=0.1)
    assert status == 0
    assert doc["notebooks"]["t.a"]["status"] == "ok"
    assert doc["notebooks"]["t.b"]["status"] == "skipped"
    assert doc["notebooks"]["t.b"]["skip_reason"].startswith("time budget of 0 s spent")
    assert runner.main(["gpu-check", "--budget", "0", "--out", str(tmp_path / "x")]) == 2
