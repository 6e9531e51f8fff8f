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
    for step in gpucheck.STEPS:  # each step with the lesson functions it calls
        assert step.calls, f"{step.name} names no function it calls"
        assert f"calls {gpucheck.describe(step)}" in out
    assert "course_lib.llm.triton_int4.gpu_check" in out
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
    assert set(doc) == {"profile", "started", "machine", "notebooks"}
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
    assert "## Steps" in md and "(calls `course_lib.llm.triton_int4.gpu_check`)" in md
    if gpus == 0:
        # a GPU check that checked nothing must not pass (a GPU box with a CPU-only torch looks like this)
        assert status == 1
        assert all(e["skip_reason"] == "needs a CUDA GPU (found 0)" for e in doc["notebooks"].values())
        assert "no CUDA GPU found" in out and "pass --allow-skips" in out
        assert runner.main(["gpu-check", "--out", str(tmp_path), "--allow-skips"]) == 0
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
    status, doc = gpucheck.run([], tmp_path, device="cpu", echo=lambda s: None, budget_s=0.1, allow_skips=True)
    assert status == 0
    assert doc["notebooks"]["t.a"]["status"] == "ok"
    assert doc["notebooks"]["t.b"]["status"] == "skipped"
    assert doc["notebooks"]["t.b"]["skip_reason"].startswith("time budget of 0 s spent")
    assert runner.main(["gpu-check", "--budget", "0", "--out", str(tmp_path / "x")]) == 2


def test_a_rehearsal_exits_1_unless_skips_are_allowed(tmp_path, monkeypatch):
    """--device cpu runs no GPU step: without --allow-skips that is not a pass."""
    monkeypatch.setattr(gpucheck, "STEPS", [gpucheck.Step("t.a", "fine", lambda ctx: "done")])
    lines = []
    assert gpucheck.run([], tmp_path / "a", device="cpu", echo=lines.append)[0] == 1
    assert "no step ran on a CUDA GPU (CPU rehearsal)" in lines[-1]
    assert gpucheck.run([], tmp_path / "b", device="cpu", echo=lines.append, allow_skips=True)[0] == 0


def _resolve(target: str):
    import importlib

    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _defined_names(module: str) -> set[str]:
    """Top-level functions, classes and assignments of a course_lib module, read from its source (no import)."""
    import ast
    import importlib.util

    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


@pytest.mark.parametrize("step", gpucheck.STEPS, ids=lambda s: s.name)
def test_every_step_calls_functions_that_exist(step):
    """No step calls a missing attribute: what it names, and every ``alias.attr`` of a course_lib module it imports.

    The GPU steps never run on a CPU machine, so a renamed lesson function would first fail on the GPU box
    (as ``triton_int4.gpu_check`` did). Modules whose optional package is absent here (TVM, TensorRT) are
    read from their source instead of imported.
    """
    import ast
    import inspect
    import textwrap

    def exists(module, attr):
        try:
            return _resolve(f"{module}:{attr}") is not None
        except ImportError:  # an optional dependency of the module itself: read the source
            return attr.split(".")[0] in _defined_names(module)
        except AttributeError:
            return False

    for target in step.calls:
        module, _, attr = target.partition(":")
        assert exists(module, attr), f"{step.name} names {target}, which does not exist"
    tree = ast.parse(textwrap.dedent(inspect.getsource(step.fn)))
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("course_lib"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if importlib_spec(sub):
                    aliases[a.asname or a.name] = sub
                else:
                    assert exists(node.module, a.name), f"{step.name}: from {node.module} import {a.name} fails"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            assert exists(aliases[node.value.id], node.attr), f"{step.name} calls {aliases[node.value.id]}.{node.attr}, which does not exist"


def importlib_spec(name):
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_triton_step_compares_int4_with_fp16_on_smollm2_shapes():
    """The harness behind ``gpu_check`` on the CPU, with the reference dequantise-then-matmul as the kernel."""
    import torch

    from course_lib.llm import quant, triton_int4

    def reference(x, packed, scale, group_size):
        w = (quant.unpack_int4(packed).float().view(packed.shape[0], -1, group_size)
             * scale.float().unsqueeze(-1)).reshape(packed.shape[0], -1)
        return torch.nn.functional.linear(x.float(), w).to(x.dtype)

    shapes = triton_int4.SMOLLM2_SHAPES[:2]
    res = triton_int4.compare_gemv("cpu", shapes=shapes, kernel=reference, repeat=3, warmup=1)
    assert {k for k in res} == {f"{n}_{m}" for n, *_ in shapes for m in ("int4_us", "speedup_vs_fp16")} | {
        "layer_speedup_vs_fp16", "max_rel_err"}
    assert all(v > 0 and unit for v, unit in res.values() if unit != "rel")
    assert res["max_rel_err"][0] < 2e-3  # fp16 input, fp32 accumulation: the same product
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        triton_int4.gpu_check("cpu")


def test_triton_step_harness_with_the_real_kernel_interpreted():
    """gpu_check's harness with the Triton kernel itself (TRITON_INTERPRET=1, in a subprocess) on SmolLM2's q_proj
    and down_proj shapes, fp16 input as on the GPU: the GPU run can then only fail on what needs the GPU."""
    from conftest import require_extra

    require_extra("triton", "llm")
    code = ("from course_lib.llm import triton_int4 as T\n"
            "r = T.compare_gemv('cpu', shapes=(T.SMOLLM2_SHAPES[0], T.SMOLLM2_SHAPES[-1]), repeat=1, warmup=0)\n"
            "print('MAXERR', r['max_rel_err'][0], sorted(r))\n")
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.split("MAXERR")[1].split()[0]) < 2e-3  # fp16 output of a float32 accumulation
    assert "layer_speedup_vs_fp16" in out.stdout
