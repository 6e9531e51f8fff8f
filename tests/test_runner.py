"""The `course` runner end to end on fixture notebooks that pass, fail and skip."""

import json
import os
import shutil
import subprocess
import sys

import nbformat
import pytest

from conftest import FIXTURES, ROOT
from course_lib import runner

NB = FIXTURES / "notebooks"
PROFILES = FIXTURES / "profiles.yaml"


def course(*args, cwd=ROOT, env=None):
    """Run the real command line (python -m course_lib) and return the completed process."""
    env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "course_lib", *args], capture_output=True, text=True, cwd=cwd, timeout=600, env=env)


@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    # MPLBACKEND=Agg is what a process that imported streamlit carries: figures must still be kept
    proc = course("run", "--profile", "cpu", "--out", str(out), "--notebooks", str(NB), "--profiles", str(PROFILES), "--no-progress",
                  env={"MPLBACKEND": "Agg"})
    return proc, out


def test_run_keeps_going_and_reports_each_status(fixture_run):
    proc, out = fixture_run
    assert proc.returncode == 1, proc.stderr  # one notebook failed
    assert "1 ok, 1 failed, 1 skipped" in proc.stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["profile"] == "cpu" and rep["started"].endswith("+00:00")
    nbs = rep["notebooks"]
    assert list(nbs) == ["00_pass", "01_fail", "02_skip"]
    for entry in nbs.values():
        assert set(entry) == {"status", "seconds", "error", "skip_reason", "metrics", "exercises"}
        assert entry["exercises"] == {"total": 0, "passed": 0, "failed": 0, "not_attempted": 0}
        assert entry["seconds"] > 0

    ok, failed, skipped = nbs["00_pass"], nbs["01_fail"], nbs["02_skip"]
    assert ok["status"] == "ok" and ok["error"] is None and ok["skip_reason"] is None
    # the cpu profile's parameter (size: 3) reached the notebook; record() twice keeps the last value
    assert ok["metrics"] == {"t0.size": {"value": 30.0, "unit": "items"}, "t0.is_gpu": {"value": 0.0, "unit": ""}}

    assert failed["status"] == "failed"
    assert failed["error"] == "ValueError: second line of the message"
    assert failed["metrics"] == {"t1.before_failure": {"value": 1.0, "unit": ""}}  # recorded before it failed

    assert skipped["status"] == "skipped" and skipped["error"] is None
    assert skipped["skip_reason"] == "skipped: this fixture needs 64 GPUs (found 0)"

    # the kernel talks to the runner over Unix sockets, not unencrypted TCP (ipykernel warns on the terminal about that)
    assert "Kernel is running over TCP" not in proc.stderr, proc.stderr

    md = (out / "report.md").read_text()
    assert "| 01_fail | ❌ failed |" in md and "this fixture needs 64 GPUs" in md and "| t0.size | 30 | items |" in md


def test_outputs_are_written_to_out_and_sources_stay_clean(fixture_run):
    _, out = fixture_run
    executed = nbformat.read(out / "00_pass.ipynb", as_version=4)
    assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")
    assert any("image/png" in o.get("data", {}) for c in executed.cells for o in c.get("outputs", [])), "the figure was lost"
    assert (out / "01_fail.ipynb").exists()  # the failing notebook is kept, error cell included
    for src in NB.glob("*.ipynb"):
        assert not any(c.get("outputs") for c in nbformat.read(src, as_version=4).cells if c.cell_type == "code")
    assert not list(out.glob(".*.metrics.json"))  # side files are collected and removed


def test_gpu_profile_passes_gpu_parameters(tmp_path):
    status, doc = runner.run(["00"], profile="gpu", out=tmp_path, notebooks=NB, profiles=PROFILES, progress=False)
    assert status == 0
    assert doc["profile"] == "gpu"
    assert doc["notebooks"]["00_pass"]["metrics"]["t0.size"]["value"] == 3000.0
    assert doc["notebooks"]["00_pass"]["metrics"]["t0.is_gpu"]["value"] == 1.0


def test_relative_out_dir_is_taken_from_the_callers_folder(tmp_path):
    proc = course("run", "00", "--profile", "cpu", "--out", "rel/out", "--notebooks", str(NB), "--profiles", str(PROFILES), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((tmp_path / "rel" / "out" / "report.json").read_text())
    assert rep["notebooks"]["00_pass"]["metrics"]["t0.size"]["value"] == 30.0


def test_timeouts_per_profile(tmp_path):
    specs = {s.stem: s for s in runner.discover(NB, PROFILES)}
    assert specs["00_pass"].timeout == {"cpu": 120, "gpu": 120}
    assert specs["01_fail"].timeout == {"cpu": 120, "gpu": 600}
    bad = tmp_path / "bad.yaml"
    bad.write_text("notebooks:\n  00_pass:\n    timeout: soon\n")
    with pytest.raises(runner.UsageError, match="00_pass.timeout must be seconds"):
        runner.discover(NB, bad)


def test_list_shows_titles_extras_and_needs():
    proc = course("list", "--notebooks", str(NB), "--profiles", str(PROFILES))
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["notebook", "extra", "needs", "title"]
    assert lines[1].split(None, 3) == ["00_pass", "core", "cpu", "Fixture that passes"]
    assert lines[3].split(None, 3) == ["02_skip", "core", "gpu", "Fixture that skips"]


def test_list_of_the_course_itself():
    proc = course("list")
    assert proc.returncode == 0
    listed = [ln.split()[0] for ln in proc.stdout.splitlines()[1:]]
    assert listed == sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    for path in (ROOT / "notebooks").glob("*.ipynb"):  # each row carries the notebook's own title
        assert runner.notebook_title(path) in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "nope"], "'nope' is not a notebook of this course"),
        (["run", "--profile", "tpu"], "unknown profile 'tpu'"),
        (["run", "--kernel", "no-such-kernel"], "no Jupyter kernel named 'no-such-kernel'"),
        (["run", "--timeout", "0"], "--timeout must be a positive"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    proc = course(*args, "--out", str(out), "--notebooks", str(NB), "--profiles", str(PROFILES)) if args[0] == "run" else course(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("target", ["/proc/course-out", "/sys/course-out", "/proc/self/course-out"])
def test_out_dir_in_a_filesystem_that_takes_no_new_files(target):
    """os.access says yes to root for /proc and /sys; the runner must try, fail and say so in one line."""
    proc = course("run", "--out", target, "--notebooks", str(NB), "--profiles", str(PROFILES))
    assert proc.returncode == 2, proc.stderr
    assert "not writable" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_empty_out_dir_is_rejected(tmp_path):
    proc = course("run", "--out", "", "--notebooks", str(NB), "--profiles", str(PROFILES), cwd=tmp_path)
    assert proc.returncode == 2 and "--out is empty" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written into the current folder


@pytest.mark.parametrize(
    "entry, message",
    [
        ("  00_pass: [1, 2]\n", "00_pass must be a mapping"),
        ("  00_pass:\n    cpu: [1, 2]\n", "00_pass.cpu must be a mapping of parameters"),
        ("  00_pass:\n    gpu: 3\n", "00_pass.gpu must be a mapping of parameters"),
    ],
)
def test_malformed_profile_entries_are_one_line(tmp_path, entry, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text("notebooks:\n" + entry)
    proc = course("list", "--notebooks", str(NB), "--profiles", str(bad))
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unwritable_out_dir_even_as_root(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    proc = course("run", "--out", str(blocker / "out"), "--notebooks", str(NB), "--profiles", str(PROFILES))
    assert proc.returncode == 2 and "not writable" in proc.stderr
    assert blocker.read_text() == "a file, not a folder"


def test_out_dir_may_not_be_the_sources(tmp_path):
    nb = tmp_path / "nbs"
    shutil.copytree(NB, nb)
    proc = course("run", "--out", str(nb), "--notebooks", str(nb), "--profiles", str(PROFILES))
    assert proc.returncode == 2 and "source notebooks folder" in proc.stderr


def test_clean_strips_outputs(tmp_path, fixture_run):
    _, out = fixture_run
    nb_dir = tmp_path / "nbs"
    nb_dir.mkdir()
    shutil.copy(out / "00_pass.ipynb", nb_dir / "00_pass.ipynb")
    assert course("clean", "--check", "--notebooks", str(nb_dir)).returncode == 1
    proc = course("clean", "--notebooks", str(nb_dir))
    assert proc.returncode == 0 and "1 notebook(s) cleaned: 00_pass.ipynb" in proc.stdout
    nb = nbformat.read(nb_dir / "00_pass.ipynb", as_version=4)
    assert all(c.outputs == [] and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    assert "papermill" not in nb.metadata
    assert course("clean", "--check", "--notebooks", str(nb_dir)).returncode == 0


def test_clean_check_catches_what_a_jupyterlab_autosave_would_change(tmp_path):
    """The kernel writes full language_info on first save; a notebook without it is not clean."""
    nb_dir = tmp_path / "nbs"
    nb_dir.mkdir()
    path = nb_dir / "00_pass.ipynb"
    shutil.copy(NB / "00_pass.ipynb", path)
    assert course("clean", "--notebooks", str(nb_dir)).returncode == 0
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert nb["metadata"]["language_info"]["pygments_lexer"] == "ipython3"
    nb["metadata"]["language_info"] = {"name": "python"}  # what the sources had before
    path.write_text(json.dumps(nb, indent=1))
    assert course("clean", "--check", "--notebooks", str(nb_dir)).returncode == 1


def test_course_notebooks_are_committed_clean_with_a_parameters_cell():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs: run `course clean`"
        assert not runner.clean_notebook(path, check=True), f"{path.name}: JupyterLab would rewrite it; run `course clean`"
        params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
        assert "profile" in params[0].source, f"{path.name}: the parameters cell must define `profile`"
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), f"{path.name}: first cell is the title"


def test_papermill_sees_every_parameter_and_profiles_name_only_those():
    """papermill parses the parameters cell line by line (a comment holding '=' can hide a name)."""
    import ast

    import papermill as pm

    profiles = runner.load_profiles(ROOT / "ci" / "profiles.yaml")
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        assigned = {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
        seen = set(pm.inspect_notebook(str(path)))
        assert assigned == seen, f"{path.name}: papermill misses {sorted(assigned - seen)}"
        for prof in ("cpu", "gpu"):
            extra = set((profiles.get(path.stem) or {}).get(prof) or {}) - assigned
            assert not extra, f"ci/profiles.yaml gives {path.stem} unknown {prof} parameters {sorted(extra)}"


def test_executed_copy_has_one_parameters_cell_holding_the_profiles_values(fixture_run):
    """papermill's injected cell would undo a learner's edit of the tagged cell: its values move into that cell."""
    _, out = fixture_run
    nb = nbformat.read(out / "00_pass.ipynb", as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert not any("injected-parameters" in t for t in tags)
    (par,) = [c for c, t in zip(nb.cells, tags) if "parameters" in t]
    assert par.source.splitlines() == ['profile = "cpu"', "size = 3"]  # the cpu profile's size, not the default 1
    assert nb.metadata.papermill.parameters == {"profile": "cpu", "size": 3}  # what ran is still recorded


def test_merge_keeps_comments_replaces_values_and_appends_new_names():
    from nbformat.v4 import new_code_cell, new_notebook

    tagged = new_code_cell('n = 1          # how many (cpu: 3)\nname = "a"\nsizes = [1,\n         2]\nkeep = 5\n',
                           metadata={"tags": ["parameters"]})
    injected = new_code_cell('# Parameters\nn = 3\nsizes = [4, 5]\nextra = "x"\n', metadata={"tags": ["injected-parameters"]})
    nb = new_notebook(cells=[tagged, injected, new_code_cell("print(n)")])
    assert runner.merge_injected_parameters(nb)
    assert [c.source for c in nb.cells][1] == "print(n)"
    src = nb.cells[0].source
    assert src.startswith('n = 3          # how many (cpu: 3)\nname = "a"\nsizes = [4, 5]\nkeep = 5\n')
    assert src.endswith('extra = "x"')
    ns = {}
    exec(src, ns)
    assert (ns["n"], ns["sizes"], ns["keep"], ns["extra"]) == (3, [4, 5], 5, "x")
    # nothing to merge, or a cell Python cannot parse (an IPython magic): left as papermill wrote it
    assert not runner.merge_injected_parameters(new_notebook(cells=[new_code_cell("x = 1")]))
    magic = new_notebook(cells=[new_code_cell("%env A=1\nn = 1", metadata={"tags": ["parameters"]}),
                                new_code_cell("n = 2", metadata={"tags": ["injected-parameters"]})])
    assert not runner.merge_injected_parameters(magic) and len(magic.cells) == 2


def test_out_dir_with_other_files_needs_force(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("my own file")
    proc = course("run", "00", "--profile", "cpu", "--out", str(out), "--notebooks", str(NB), "--profiles", str(PROFILES))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "is not empty and holds no report.json" in proc.stderr and "--force" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]  # nothing written beside it
    runner.check_not_foreign(out, force=True)  # --force accepts it
    stopped = tmp_path / "stopped"  # a run interrupted during its first notebook: no report.json yet
    stopped.mkdir()
    (stopped / "00_pass.ipynb").write_text("{}")
    (stopped / ".00_pass.metrics.json").write_text("{}")
    runner.check_not_foreign(stopped, notebooks=["00_pass.ipynb"])
    with pytest.raises(runner.UsageError, match="1 other entries: 00_pass.ipynb"):
        runner.check_not_foreign(stopped, notebooks=["01_fail.ipynb"])
    (out / "report.json").write_text("{}")
    runner.check_not_foreign(out)  # a previous run's folder is re-used without --force
    runner.check_not_foreign(tmp_path / "new")  # so is a folder that does not exist yet


def test_a_broken_subcommand_module_fails_loudly_and_only_its_own_command(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "course_lib.book", None)  # importing it now raises ImportError
    assert runner.main(["book", "somewhere", "--out", "x", "--no-api"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`course book` is broken" in err and "Error: import of course_lib.book halted" in err
    assert "unrecognized arguments" not in err
    assert runner.main(["list", "--notebooks", str(NB), "--profiles", str(PROFILES)]) == 0


def test_kernel_sockets_live_in_a_private_folder_one_prefix_per_kernel(tmp_path, monkeypatch):
    """jupyter_client's default for ipc is ``kernel-ipc-N`` in the working directory (the notebooks folder): two runs
    at once would share those names. Each kernel gets its own prefix in Jupyter's runtime folder instead."""
    import tempfile
    from pathlib import Path

    from course_lib.runner import execute

    rt = Path(tempfile.mkdtemp(prefix="rt")) / "runtime"  # short: pytest's own tmp_path can be too deep (macOS)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(rt))
    manager = execute._ipc_kernel_manager()
    a, b = manager().ip, manager().ip
    assert a != b and os.path.dirname(a) == str(rt) == os.path.dirname(b)
    assert rt.stat().st_mode & 0o077 == 0  # created private
    shutil.rmtree(rt.parent)
    # a runtime folder too deep for a Unix socket path: a private temporary folder instead
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / ("d" * 120)))
    deep = manager().ip
    assert len(deep) + 3 <= 100 and not (tmp_path / ("d" * 120)).exists()
    assert os.stat(os.path.dirname(deep)).st_mode & 0o077 == 0
    shutil.rmtree(os.path.dirname(deep))


def test_a_stopped_kernel_leaves_no_socket_folder_behind(tmp_path, monkeypatch):
    """The private temporary folder made for a kernel's sockets (runtime path too deep) goes when the kernel stops:
    jupyter_client removes the sockets, the runner the folder. A real kernel, started, ready, shut down."""
    import asyncio
    import tempfile
    from pathlib import Path

    from course_lib.runner import execute

    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / ("d" * 120)))
    scratch = Path(tempfile.mkdtemp(prefix="tmp"))  # a temporary folder of the test's own, to look into
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    km = execute._ipc_kernel_manager()(kernel_name="python3")

    async def cycle() -> tuple[Path, list[str]]:
        await km.start_kernel()
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=120)  # a state, not a duration: the kernel answered on its sockets
        live = sorted(p.name for p in Path(km.ip).parent.iterdir())
        kc.stop_channels()
        await km.shutdown_kernel()
        await km.cleanup_resources()  # what nbclient calls after the shutdown: a second call changes nothing
        return Path(km.ip).parent, live

    folder, live = asyncio.run(cycle())
    assert folder.parent == scratch and len(live) >= 5 and all(n.startswith("ipc-") for n in live), live
    assert not folder.exists() and not list(scratch.iterdir())
    scratch.rmdir()
    # a folder that is not the runner's own, or not empty, stays
    other = scratch.parent / f"{scratch.name}-other"
    (other / "course-kernel-x").mkdir(parents=True)
    execute._remove_fallback_folder(str(other / "course-kernel-x" / "ipc"))  # not in the temporary folder
    assert (other / "course-kernel-x").exists()
    monkeypatch.setattr(tempfile, "tempdir", str(other))
    (other / "course-kernel-x" / "keep").write_text("x")
    execute._remove_fallback_folder(str(other / "course-kernel-x" / "ipc"))  # not empty
    assert (other / "course-kernel-x" / "keep").exists()
    shutil.rmtree(other)
