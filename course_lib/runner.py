"""The ``course`` command: list, run (papermill, per-profile parameters) and clean the notebooks.

::

    course list
    course run [NAMES...] --profile {auto,cpu,gpu} --out DIR
    course clean [NAMES...] [--check]
    course exercises [NAMES...]
    course book RUN_DIR --out DIR
    course gpu-check [--dry-run]

``course run`` executes each notebook with papermill into ``DIR`` (the sources in ``notebooks/``
are never written), passing the parameters of the chosen profile from ``ci/profiles.yaml``. It
keeps going after a failing notebook, counts a notebook that raised
:class:`course_lib.hw.SkipLesson` as *skipped* with its reason, and writes ``DIR/report.json``
and ``DIR/report.md`` (status, wall time, last error line and recorded metrics per notebook).
Exit status: 0 when nothing failed, 1 when a notebook failed, 2 for bad input (one line saying why).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from course_lib import paths, report

PROFILES = ("auto", "cpu", "gpu")
DEFAULT_CELL_TIMEOUT = 1800  # seconds, per cell; a notebook's profile entry may override it


class UsageError(Exception):
    """Bad input to the command: printed as one line, exit status 2."""


# --------------------------------------------------------------------------------------------
# Notebooks and profiles
# --------------------------------------------------------------------------------------------


@dataclass
class NotebookSpec:
    """One source notebook and what ``ci/profiles.yaml`` says about it."""

    path: Path
    title: str
    extra: str = "core"
    needs: str = "cpu"
    timeout: dict = field(default_factory=dict)  # profile name -> seconds per cell
    params: dict = field(default_factory=dict)  # profile name -> parameters

    @property
    def stem(self) -> str:
        return self.path.stem


def notebook_title(path: Path) -> str:
    """The first Markdown heading of a notebook (its one-line title), or its file stem."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            if line.lstrip().startswith("#"):
                return line.lstrip("# ").strip()
    return path.stem


def load_profiles(path: Path) -> dict:
    """The ``notebooks:`` mapping of a profiles file (stem -> entry); a clear error if malformed."""
    import yaml

    if not path.exists():
        raise UsageError(f"profiles file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"profiles file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    entries = data.get("notebooks", {}) if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise UsageError(f"profiles file {path} needs a top-level 'notebooks:' mapping")
    return entries


def discover(notebooks: Path, profiles: Path) -> list[NotebookSpec]:
    """All ``NN_name.ipynb`` notebooks in ``notebooks`` (sorted), with their profile entries."""
    if not notebooks.is_dir():
        raise UsageError(f"notebooks folder not found: {notebooks}")
    entries = load_profiles(profiles)
    specs = []
    for path in sorted(notebooks.glob("*.ipynb")):
        entry = entries.get(path.stem) or {}
        _check_entry(path.stem, entry)
        specs.append(
            NotebookSpec(
                path=path,
                title=notebook_title(path),
                extra=str(entry.get("extra", "core")),
                needs=str(entry.get("needs", "cpu")),
                timeout=_timeouts(path.stem, entry.get("timeout", DEFAULT_CELL_TIMEOUT)),
                params={p: dict(entry.get(p) or {}) for p in ("cpu", "gpu")},
            )
        )
    return specs


def _check_entry(stem: str, entry) -> None:
    """A profile entry is a mapping whose ``cpu``/``gpu`` parameters are mappings too (else one clear line)."""
    if not isinstance(entry, dict):
        raise UsageError(f"profiles: {stem} must be a mapping (extra:, needs:, cpu:, gpu:), got {type(entry).__name__}")
    for p in ("cpu", "gpu"):
        if entry.get(p) is not None and not isinstance(entry[p], dict):
            raise UsageError(f"profiles: {stem}.{p} must be a mapping of parameters ({{name: value}}), got {entry[p]!r}")


def _timeouts(stem: str, value) -> dict:
    """``timeout: 600`` (both profiles) or ``timeout: {cpu: 600, gpu: 3600}`` -> {profile: seconds}."""
    raw = value if isinstance(value, dict) else {"cpu": value, "gpu": value}
    try:
        out = {p: int(raw.get(p, DEFAULT_CELL_TIMEOUT)) for p in ("cpu", "gpu")}
    except (TypeError, ValueError):
        raise UsageError(f"profiles: {stem}.timeout must be seconds or {{cpu: S, gpu: S}}, got {value!r}") from None
    if min(out.values()) <= 0:
        raise UsageError(f"profiles: {stem}.timeout must be positive, got {value!r}")
    return out


def select(specs: list[NotebookSpec], names: list[str]) -> list[NotebookSpec]:
    """The notebooks named (stem, file name, or unique prefix such as ``01``); all when none named."""
    if not names:
        return specs
    chosen: list[NotebookSpec] = []
    for name in names:
        key = Path(name).name.removesuffix(".ipynb")
        exact = [s for s in specs if s.stem == key]
        matches = exact or [s for s in specs if s.stem.startswith(key)]
        if len(matches) != 1:
            known = ", ".join(s.stem for s in specs) or "none"
            what = "is ambiguous" if matches else "is not a notebook of this course"
            raise UsageError(f"{name!r} {what} (notebooks: {known})")
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen


# --------------------------------------------------------------------------------------------
# Checks done before anything is written
# --------------------------------------------------------------------------------------------


def resolve_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r} (choose from {', '.join(PROFILES)})")
    if profile == "auto":
        from course_lib import hw

        return "gpu" if hw.gpu_count() > 0 else "cpu"
    return profile


def check_kernel(name: str) -> None:
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


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@dataclass
class NotebookResult:
    status: str  # ok | failed | skipped
    seconds: float
    error: str | None = None
    skip_reason: str | None = None
    metrics: dict = field(default_factory=dict)
    skipped_sections: list[str] = field(default_factory=list)
    exercises: dict = field(default_factory=dict)  # total / passed / failed / not_attempted

    def as_json(self) -> dict:  # the schema later lessons rely on (``exercises`` added by the exercise layer)
        return {
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "skip_reason": self.skip_reason,
            "metrics": self.metrics,
            "exercises": self.exercises,
        }


def exercise_counts(total: int, outcomes: dict[str, str]) -> dict:
    """Per-notebook exercise summary from the checks' outcomes (unchecked ones count as not attempted)."""
    passed = sum(1 for v in outcomes.values() if v == "passed")
    failed = sum(1 for v in outcomes.values() if v == "failed")
    return {"total": total, "passed": passed, "failed": failed, "not_attempted": max(0, total - passed - failed)}


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


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


@functools.cache
def _ipc_kernel_manager():
    """jupyter_client's kernel manager, talking to the kernel over Unix sockets in Jupyter's private runtime folder.

    The default is TCP on localhost without encryption, which any local user could connect to and which
    ipykernel 7 warns about on the terminal of every run; a kernel the runner starts and stops needs no network.
    """
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum

    class IPCKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

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
            status, reason = "skipped", _last_line(e.evalue) or "skipped (no reason given)"
        else:
            status, error = "failed", f"{e.ename}: {_last_line(e.evalue)}"
    except Exception as e:  # kernel died, cell timeout, unreadable notebook, ...
        status, error = "failed", f"{type(e).__name__}: {_last_line(e)}"
    seconds = time.perf_counter() - t0
    try:
        metrics, skipped = report.read_side_file(side)
        outcomes = report.read_side_exercises(side)
    except (OSError, ValueError) as e:
        metrics, skipped, outcomes = {}, [f"metrics file unreadable: {e}"], {}
    side.unlink(missing_ok=True)
    counts = exercise_counts(len(exercises.exercises_in(spec.path)), outcomes)
    return NotebookResult(status, seconds, error, reason, metrics, skipped, counts)


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


def write_reports(out: Path, profile: str, started: str, results: dict[str, NotebookResult]) -> dict:
    """Write ``report.json`` (the fixed schema) and ``report.md`` atomically; return the report dict."""
    doc = {
        "profile": profile,
        "started": started,
        "notebooks": {stem: r.as_json() for stem, r in results.items()},
    }
    _atomic_write(out / "report.json", json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    _atomic_write(out / "report.md", render_markdown(doc, results))
    return doc


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def render_markdown(doc: dict, results: dict[str, NotebookResult]) -> str:
    from course_lib import hw

    icon = {"ok": "✅ ok", "failed": "❌ failed", "skipped": "⏭ skipped"}
    lines = [
        "# Course run report",
        "",
        f"- profile: **{doc['profile']}**",
        f"- started: {doc['started']}",
        f"- machine: {hw.summary_line()}",
        "",
        "| notebook | status | seconds | metrics | exercises passed | error / skip reason |",
        "|---|---|---:|---:|---:|---|",
    ]
    for stem, r in results.items():
        why = (r.error or r.skip_reason or "").replace("|", "\\|")
        ex = f"{r.exercises.get('passed', 0)} / {r.exercises['total']}" if r.exercises.get("total") else "—"
        lines.append(f"| {stem} | {icon[r.status]} | {r.seconds:.1f} | {len(r.metrics)} | {ex} | {why} |")
    for stem, r in results.items():
        if not (r.metrics or r.skipped_sections):
            continue
        lines += ["", f"## {stem}", ""]
        if r.metrics:
            lines += ["| metric | value | unit |", "|---|---:|---|"]
            lines += [f"| {k} | {v['value']:.6g} | {v['unit']} |" for k, v in r.metrics.items()]
        if r.skipped_sections:
            lines += ["", "Skipped sections:", ""] + [f"- {s}" for s in r.skipped_sections]
    return "\n".join(lines) + "\n"


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
) -> tuple[int, dict]:
    """Execute notebooks; returns ``(exit_status, report_dict)``. Raises :class:`UsageError` on bad input."""
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


# --------------------------------------------------------------------------------------------
# clean
# --------------------------------------------------------------------------------------------


# The notebook metadata a Jupyter kernel writes on first save: committing it means opening a notebook in
# JupyterLab does not mark it modified (autosave would otherwise rewrite every source notebook).
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def _language_info() -> dict:
    import platform

    return {
        "codemirror_mode": {"name": "ipython", "version": 3},
        "file_extension": ".py",
        "mimetype": "text/x-python",
        "name": "python",
        "nbconvert_exporter": "python",
        "pygments_lexer": "ipython3",
        "version": platform.python_version(),
    }


def _normalized(path: Path):
    """The notebook as committed: no outputs, no per-run metadata, the kernel's own metadata, cell ids."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            cell.get("metadata", {}).pop(key, None)
    nb.metadata.pop("papermill", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    info = _language_info()
    old_version = nb.metadata.get("language_info", {}).get("version")
    if old_version:  # the Python version differs per machine; keep the committed one when checking
        info["version"] = old_version
    nb.metadata["language_info"] = info
    nb.nbformat, nb.nbformat_minor = 4, max(5, nb.get("nbformat_minor", 5))
    nbformat.validator.normalize(nb)
    for cell in nb.cells:  # nbformat 4.5 needs an id per cell; JupyterLab adds any that are missing
        if not cell.get("id"):
            import uuid

            cell["id"] = uuid.uuid4().hex[:8]
    return nb


def clean_notebook(path: Path, check: bool = False) -> bool:
    """Strip outputs and per-run metadata and write the kernel's metadata; True if the file changed.

    With ``check=True`` nothing is written: it reports whether cleaning (or a JupyterLab autosave)
    would change the file's bytes.
    """
    import nbformat

    text = path.read_text(encoding="utf-8")
    canonical = nbformat.writes(_normalized(path))
    if not canonical.endswith("\n"):
        canonical += "\n"
    changed = canonical != text
    if changed and not check:
        path.write_text(canonical, encoding="utf-8")
    return changed


def output_problems(nb) -> list[str]:
    """What a reader of an executed notebook should not see: stderr, warnings, tracebacks (one line each)."""
    import re

    if not hasattr(nb, "cells"):
        import nbformat

        nb = nbformat.read(str(nb), as_version=4)
    found = []
    warning = re.compile(r"\b\w*Warning\b[:(]|^Traceback \(most recent call last\)", re.M)
    code_index = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        code_index += 1
        for o in cell.get("outputs", []):
            kind = o.get("output_type")
            text = o.get("text", "")
            text = "".join(text) if isinstance(text, list) else str(text)
            if kind == "error":
                found.append(f"cell {i}: error {o.get('ename')}: {o.get('evalue', '')[:80]}")
            elif kind == "stream" and o.get("name") == "stderr":
                found.append(f"cell {i}: stderr: {text.strip()[:100]!r}")
            elif warning.search(text):
                found.append(f"cell {i}: warning text: {warning.search(text).group(0)!r} in {text.strip()[:100]!r}")
    return found


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one clear line, exit 2 (argparse prints the whole usage otherwise)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="course", description="Run the course notebooks (papermill) and report.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    common = dict(help="notebooks folder (default: the course's notebooks/)")

    ls = sub.add_parser("list", help="list notebooks with titles, extras and needs")
    ls.add_argument("--notebooks", **common)
    ls.add_argument("--profiles", help="profiles file (default: ci/profiles.yaml)")

    r = sub.add_parser("run", help="execute notebooks with papermill into --out")
    r.add_argument("names", nargs="*", help="notebook stems or prefixes (default: all)")
    r.add_argument("--profile", default="auto", help="auto (gpu when a GPU is present), cpu or gpu")
    r.add_argument("--out", default="build/course", help="output folder (default: build/course)")
    r.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    r.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default: per profile)")
    r.add_argument("--notebooks", **common)
    r.add_argument("--profiles", help="profiles file (default: ci/profiles.yaml)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")

    r.add_argument("--with-solutions", action="store_true",
                   help="fill every exercise with its solution from solutions/ and record the checks")

    c = sub.add_parser("clean", help="strip outputs from the source notebooks")
    c.add_argument("names", nargs="*")
    c.add_argument("--check", action="store_true",
                   help="only report; exit 1 if cleaning or a JupyterLab autosave would change a notebook")
    c.add_argument("--notebooks", **common)

    e = sub.add_parser("exercises", help="list every exercise per notebook (id, kind, title); runs nothing")
    e.add_argument("names", nargs="*", help="notebook stems or prefixes (default: all)")
    e.add_argument("--notebooks", **common)

    b = sub.add_parser("book", help="build the course book (HTML site) from a finished run")
    _add_module_arguments("course_lib.book", b)

    g = sub.add_parser("gpu-check", help="run a short version of every GPU path and report")
    _add_module_arguments("course_lib.gpucheck", g)
    return p


def _add_module_arguments(module: str, parser: argparse.ArgumentParser) -> None:
    """Subcommands implemented in their own module: ``add_arguments(parser)`` and ``command(args) -> int``."""
    import importlib

    parser.set_defaults(_module=module)
    try:
        importlib.import_module(module).add_arguments(parser)
    except (ImportError, AttributeError):  # not built yet in this checkout: the command says so when called
        pass


def _list_exercises(nb_dir: Path, names: list[str]) -> int:
    from course_lib import exercises

    if not nb_dir.is_dir():
        raise UsageError(f"notebooks folder not found: {nb_dir}")
    specs = select([NotebookSpec(p, p.stem) for p in sorted(nb_dir.glob("*.ipynb"))], names)
    total = 0
    for s in specs:
        found = exercises.exercises_in(s.path)
        total += len(found)
        print(f"{s.stem} ({len(found)})")
        for ex in found:
            print(f"  {ex['id']:<28} {ex['kind']:<10} {ex['title']}")
    print(f"total: {total} exercises in {len(specs)} notebooks")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "list":
            specs = discover(Path(args.notebooks) if args.notebooks else paths.notebooks_dir(),
                             Path(args.profiles) if args.profiles else paths.profiles_file())
            width = max([len(s.stem) for s in specs] + [8])
            print(f"{'notebook':<{width}}  {'extra':<9} {'needs':<5} title")
            for s in specs:
                print(f"{s.stem:<{width}}  {s.extra:<9} {s.needs:<5} {s.title}")
            return 0
        if args.cmd == "run":
            status, doc = run(args.names, args.profile, args.out, args.kernel, args.notebooks,
                              args.profiles, args.timeout, progress=not args.no_progress,
                              with_solutions=args.with_solutions)
            counts = {k: sum(1 for n in doc["notebooks"].values() if n["status"] == k) for k in ("ok", "failed", "skipped")}
            print(f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped "
                  f"(profile {doc['profile']}) — report: {Path(args.out) / 'report.md'}")
            return status
        if args.cmd == "clean":
            nb_dir = Path(args.notebooks) if args.notebooks else paths.notebooks_dir()
            if not nb_dir.is_dir():
                raise UsageError(f"notebooks folder not found: {nb_dir}")
            specs = select([NotebookSpec(p, p.stem) for p in sorted(nb_dir.glob("*.ipynb"))], args.names)
            dirty = [s.path.name for s in specs if clean_notebook(s.path, check=args.check)]
            verb = "need cleaning" if args.check else "cleaned"
            print(f"{len(dirty)} notebook(s) {verb}" + (f": {', '.join(dirty)}" if dirty else ""))
            return 1 if (args.check and dirty) else 0
        if args.cmd == "exercises":
            return _list_exercises(Path(args.notebooks) if args.notebooks else paths.notebooks_dir(), args.names)
        if args.cmd in ("book", "gpu-check"):
            import importlib

            try:
                module = importlib.import_module(args._module)
            except ImportError as e:
                raise UsageError(f"`course {args.cmd}` is not available: {e}") from None
            return int(module.command(args) or 0)
    except UsageError as e:
        print(f"course: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("course: interrupted", file=sys.stderr)
        return 130
    return 2
