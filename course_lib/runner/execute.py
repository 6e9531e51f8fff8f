"""Executing notebooks: checks done before anything is written, then papermill into the output folder."""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

from course_lib import paths, report
from course_lib.runner.hygiene import merge_injected_parameters
from course_lib.runner.profiles import NotebookSpec, UsageError, discover, resolve_profile, select
from course_lib.runner.reports import NotebookResult, exercise_counts, last_line, write_reports


def check_kernel(name: str) -> None:
    """A Jupyter kernel of that name is installed (else one line saying how to install one)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        raise UsageError(
            f"no Jupyter kernel named {name!r}; install one with "
            f"`python -m ipykernel install --sys-prefix --name {name}` or pass --kernel python3"
        ) from None


def check_out_dir(out: Path, notebooks: Path) -> None:
    """The output folder must not be the source folder and must accept new files (tried, then undone).

    ``os.access`` is not enough: as root it says yes for ``/proc`` and ``/sys``, where nothing can be
    created. So a scratch folder is really created (and removed) in the nearest existing parent.
    """
    out_r, nb_r = out.resolve(), notebooks.resolve()
    if out_r == nb_r:
        raise UsageError(f"--out {out} is the source notebooks folder; choose another folder")
    existing = out_r
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"output folder {out} is not writable ({existing} is a file, not a folder)")
    try:
        probe = tempfile.mkdtemp(prefix=".course-write-test-", dir=existing)
        os.rmdir(probe)
    except OSError as e:
        raise UsageError(f"output folder {out} is not writable ({existing}: {e.strerror or e})") from None


def check_not_foreign(out: Path, force: bool = False, notebooks: list[str] | tuple[str, ...] = ()) -> None:
    """A non-empty ``--out`` must be a previous run's folder unless ``force``.

    Notebooks, ``report.json`` and ``report.md`` are written into ``--out`` by name: in a folder of the
    user's own files they would land beside them (or replace one with the same name) without a word. A
    previous run's folder has ``report.json``, or (a run stopped during its first notebook) only what a run
    writes: the executed copies of ``notebooks`` (file names), ``report.md`` and the runner's hidden scratch files.
    """
    if force or not out.is_dir() or (out / "report.json").exists():
        return
    ours = set(notebooks) | {"report.md"}
    entries = sorted(p.name for p in out.iterdir())
    foreign = [e for e in entries if e not in ours and not e.startswith(".")]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UsageError(f"--out {out} is not empty and holds no report.json of a previous course run "
                         f"({len(foreign)} other entries: {shown}); choose an empty or new folder, or pass --force")


# Figures must land in the executed notebook. A process that imported streamlit (lesson 3's tests do)
# carries MPLBACKEND=Agg in its environment, which the kernel would inherit: plt.show() then draws nothing.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


@contextlib.contextmanager
def _kernel_env(values: dict[str, str]):
    """Set environment variables for the kernel papermill starts, restoring the caller's afterwards."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_FALLBACK_PREFIX = "course-kernel-"  # the private temporary folder of a kernel's sockets, when the runtime path is too deep


def _ipc_prefix() -> str:
    """A fresh socket path prefix for one kernel: in Jupyter's private runtime folder (mode 0700), or in a private
    temporary folder when that path would be too long for a Unix socket (about 100 bytes on Linux and macOS)."""
    import uuid

    from jupyter_core.paths import jupyter_runtime_dir

    name = f"course-kernel-{uuid.uuid4().hex[:12]}-ipc"
    runtime = Path(jupyter_runtime_dir())
    if len(str(runtime / name)) + 3 <= 100:  # + "-NN", the channel's number
        runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
        return str(runtime / name)
    return str(Path(tempfile.mkdtemp(prefix=_FALLBACK_PREFIX)) / "ipc")


def _remove_fallback_folder(ip: str) -> None:
    """After jupyter_client removed a kernel's sockets: remove the private temporary folder :func:`_ipc_prefix`
    made for them, if it made one and it is empty (a socket prefix in the runtime folder leaves nothing behind)."""
    folder = Path(ip).parent
    ours = Path(ip).name == "ipc" and folder.name.startswith(_FALLBACK_PREFIX)
    if ours and folder.parent == Path(tempfile.gettempdir()):
        with contextlib.suppress(OSError):  # not empty (something else wrote there) or already gone: leave it
            folder.rmdir()


@functools.cache
def _ipc_kernel_manager():
    """jupyter_client's kernel manager, talking to the kernel over Unix sockets in Jupyter's private runtime folder.

    The default is TCP on localhost without encryption, which any local user could connect to and which
    ipykernel 7 warns about on the terminal of every run; a kernel the runner starts and stops needs no network.
    jupyter_client's own default for the sockets' path is ``kernel-ipc-N`` in the working directory (the
    notebooks folder, where two runs at once would share names and a killed run leaves its sockets): each kernel
    gets a fresh prefix in the runtime folder instead (:func:`_ipc_prefix`).
    """
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum, default

    class IPCKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        @default("ip")
        def _ip_default(self) -> str:
            return _ipc_prefix()

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart=restart)
            if not restart:  # a restarted kernel binds the same prefix again
                _remove_fallback_folder(self.ip)

        cleanup_resources = _async_cleanup_resources  # nbclient calls it after shutdown_kernel

    return IPCKernelManager


def solutions_file(spec: NotebookSpec, folder: Path | None = None) -> Path:
    """Where the solutions of a notebook's exercises live: ``solutions/NN_name.py``."""
    return (folder or paths.solutions_dir()) / f"{spec.stem}.py"


def _with_solutions(spec: NotebookSpec, out: Path, folder: Path | None = None) -> Path:
    """A copy of the notebook (in ``out``) whose starter cells hold the solutions; the source stays untouched."""
    import nbformat

    from course_lib import exercises

    nb = nbformat.read(spec.path, as_version=4)
    if not exercises.exercises_in(nb):
        return spec.path
    sol = solutions_file(spec, folder)
    if not sol.exists():
        raise UsageError(f"--with-solutions: {spec.stem} has exercises but no solutions file {sol}")
    try:
        exercises.inject_solutions(nb, exercises.load_solutions(sol))
    except (KeyError, ValueError) as e:
        raise UsageError(f"--with-solutions: {spec.stem}: {str(e).strip(chr(39))}") from None
    tmp = out / f".{spec.stem}.with-solutions.ipynb"
    nbformat.write(nb, tmp)
    return tmp


def execute_one(spec: NotebookSpec, profile: str, out: Path, kernel: str, timeout: int | None,
                source: Path | None = None) -> NotebookResult:
    """Execute one notebook with papermill into ``out``; never raises for a notebook's own failure.

    ``source`` replaces the notebook's own file (e.g. a copy with the solutions filled in).
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from course_lib import exercises, hw

    side = out / f".{spec.stem}.metrics.json"
    side.unlink(missing_ok=True)
    params = {"profile": profile, **spec.params.get(profile, {})}
    t0 = time.perf_counter()
    status, error, reason = "ok", None, None
    env = {report.ENV_VAR: str(side), "MPLBACKEND": INLINE_BACKEND, hw.RUNNER_ENV: "1", "TQDM_DISABLE": "1"}
    try:
        with _kernel_env(env):
            pm.execute_notebook(
                str(source or spec.path),
                str(out / spec.path.name),
                parameters=params,
                kernel_name=kernel,
                cwd=str(spec.path.parent),
                progress_bar=False,
                log_output=False,
                execution_timeout=timeout or spec.timeout[profile],
                kernel_manager_class=_ipc_kernel_manager(),
            )
    except PapermillExecutionError as e:
        if e.ename == "SkipLesson":
            status, reason = "skipped", last_line(e.evalue) or "skipped (no reason given)"
        else:
            status, error = "failed", f"{e.ename}: {last_line(e.evalue)}"
    except Exception as e:  # kernel died, cell timeout, unreadable notebook, ...
        status, error = "failed", f"{type(e).__name__}: {last_line(e)}"
    seconds = time.perf_counter() - t0
    editable_parameters(out / spec.path.name)
    try:
        metrics, skipped = report.read_side_file(side)
        outcomes = report.read_side_exercises(side)
    except (OSError, ValueError) as e:
        metrics, skipped, outcomes = {}, [f"metrics file unreadable: {e}"], {}
    side.unlink(missing_ok=True)
    counts = exercise_counts(len(exercises.exercises_in(spec.path)), outcomes)
    return NotebookResult(status, seconds, error, reason, metrics, skipped, counts)


def editable_parameters(executed: Path) -> bool:
    """Fold papermill's injected parameters into the tagged cell of an executed copy (see hygiene); True if changed."""
    import nbformat

    try:
        nb = nbformat.read(executed, as_version=4)
    except (OSError, ValueError):  # not written (papermill failed before it could) or unreadable: nothing to fold
        return False
    if not merge_injected_parameters(nb):
        return False
    nbformat.write(nb, executed)
    return True


def _check_solutions(spec: NotebookSpec, folder: Path | None = None) -> None:
    import nbformat

    from course_lib import exercises

    ids = [e["id"] for e in exercises.exercises_in(nbformat.read(spec.path, as_version=4))]
    if not ids:
        return
    sol = solutions_file(spec, folder)
    if not sol.exists():
        raise UsageError(f"--with-solutions: {spec.stem} has exercises but no solutions file {sol}")
    missing = [i for i in ids if i not in exercises.load_solutions(sol)]
    if missing:
        raise UsageError(f"--with-solutions: {sol.name} has no solution for {', '.join(missing)}")


def run(
    names: list[str],
    profile: str = "auto",
    out: str | os.PathLike = "build/course",
    kernel: str = "python3",
    notebooks: str | os.PathLike | None = None,
    profiles: str | os.PathLike | None = None,
    timeout: int | None = None,
    progress: bool = True,
    with_solutions: bool = False,
    solutions: str | os.PathLike | None = None,
    force: bool = False,
) -> tuple[int, dict]:
    """Execute notebooks; returns ``(exit_status, report_dict)``. Raises :class:`UsageError` on bad input.

    ``force`` lets ``out`` be a non-empty folder that is not a previous run's (see :func:`check_not_foreign`).
    """
    nb_dir = Path(notebooks) if notebooks else paths.notebooks_dir()
    prof_file = Path(profiles) if profiles else paths.profiles_file()
    if not str(out).strip():
        raise UsageError("--out is empty; name an output folder, e.g. --out build/course")
    out_dir = Path(out).absolute()  # the kernel runs in the notebook's folder: pass it absolute paths
    # Every check happens before anything is written.
    resolved = resolve_profile(profile)
    specs = select(discover(nb_dir, prof_file), names)
    if not specs:
        raise UsageError(f"no notebooks found in {nb_dir}")
    check_kernel(kernel)
    check_out_dir(out_dir, nb_dir)
    check_not_foreign(out_dir, force, [s.path.name for s in specs])
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {timeout}")
    if with_solutions:  # every solutions file must exist and cover its notebook before anything runs
        for spec in specs:
            _check_solutions(spec, Path(solutions) if solutions else None)

    out_dir.mkdir(parents=True, exist_ok=True)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    results: dict[str, NotebookResult] = {}
    from tqdm.auto import tqdm

    doc: dict = {}
    bar = tqdm(specs, desc="notebooks", unit="nb", disable=not progress, file=sys.stderr)
    for spec in bar:
        bar.set_postfix_str(spec.stem)
        source = _with_solutions(spec, out_dir, Path(solutions) if solutions else None) if with_solutions else None
        results[spec.stem] = execute_one(spec, resolved, out_dir, kernel, timeout, source)
        if source is not None and source != spec.path:
            source.unlink(missing_ok=True)
        r = results[spec.stem]
        bar.write(f"{spec.stem}: {r.status} in {r.seconds:.1f} s" + (f" — {r.error or r.skip_reason}" if r.status != "ok" else ""))
        doc = write_reports(out_dir, resolved, started, results)
    bar.close()
    failed = [s for s, r in results.items() if r.status == "failed"]
    return (1 if failed else 0), doc
