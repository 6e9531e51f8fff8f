"""The ``course`` command: list, run (papermill, per-profile parameters) and clean the notebooks.

::

    course list
    course run [NAMES...] --profile {auto,cpu,gpu} --out DIR
    course clean [NAMES...] [--check]

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
    """The output folder must not be the source folder and must be writable (created if needed)."""
    out_r, nb_r = out.resolve(), notebooks.resolve()
    if out_r == nb_r:
        raise UsageError(f"--out {out} is the source notebooks folder; choose another folder")
    existing = out_r
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"output folder {out} is not writable ({existing} does not accept new files)")
    if out_r.exists():
        try:
            with tempfile.NamedTemporaryFile(dir=out_r):
                pass
        except OSError as e:
            raise UsageError(f"output folder {out} is not writable ({e.strerror})") from None


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

    def as_json(self) -> dict:  # exactly the schema later lessons rely on
        return {
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "skip_reason": self.skip_reason,
            "metrics": self.metrics,
        }


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


def execute_one(spec: NotebookSpec, profile: str, out: Path, kernel: str, timeout: int | None) -> NotebookResult:
    """Execute one notebook with papermill into ``out``; never raises for a notebook's own failure."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    side = out / f".{spec.stem}.metrics.json"
    side.unlink(missing_ok=True)
    params = {"profile": profile, **spec.params.get(profile, {})}
    t0 = time.perf_counter()
    status, error, reason = "ok", None, None
    try:
        with _kernel_env({report.ENV_VAR: str(side), "MPLBACKEND": INLINE_BACKEND}):
            pm.execute_notebook(
                str(spec.path),
                str(out / spec.path.name),
                parameters=params,
                kernel_name=kernel,
                cwd=str(spec.path.parent),
                progress_bar=False,
                log_output=False,
                execution_timeout=timeout or spec.timeout[profile],
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
    except (OSError, ValueError) as e:
        metrics, skipped = {}, [f"metrics file unreadable: {e}"]
    side.unlink(missing_ok=True)
    return NotebookResult(status, seconds, error, reason, metrics, skipped)


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
        "| notebook | status | seconds | metrics | error / skip reason |",
        "|---|---|---:|---:|---|",
    ]
    for stem, r in results.items():
        why = (r.error or r.skip_reason or "").replace("|", "\\|")
        lines.append(f"| {stem} | {icon[r.status]} | {r.seconds:.1f} | {len(r.metrics)} | {why} |")
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
) -> tuple[int, dict]:
    """Execute notebooks; returns ``(exit_status, report_dict)``. Raises :class:`UsageError` on bad input."""
    nb_dir = Path(notebooks) if notebooks else paths.notebooks_dir()
    prof_file = Path(profiles) if profiles else paths.profiles_file()
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

    out_dir.mkdir(parents=True, exist_ok=True)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    results: dict[str, NotebookResult] = {}
    from tqdm.auto import tqdm

    doc: dict = {}
    bar = tqdm(specs, desc="notebooks", unit="nb", disable=not progress, file=sys.stderr)
    for spec in bar:
        bar.set_postfix_str(spec.stem)
        results[spec.stem] = execute_one(spec, resolved, out_dir, kernel, timeout)
        r = results[spec.stem]
        bar.write(f"{spec.stem}: {r.status} in {r.seconds:.1f} s" + (f" — {r.error or r.skip_reason}" if r.status != "ok" else ""))
        doc = write_reports(out_dir, resolved, started, results)
    bar.close()
    failed = [s for s, r in results.items() if r.status == "failed"]
    return (1 if failed else 0), doc


# --------------------------------------------------------------------------------------------
# clean
# --------------------------------------------------------------------------------------------


def clean_notebook(path: Path, check: bool = False) -> bool:
    """Strip outputs, execution counts and per-run metadata; returns True if the file had any."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    changed = False
    for cell in nb.cells:
        if cell.cell_type == "code":
            if cell.get("outputs") or cell.get("execution_count") is not None:
                changed = True
            cell["outputs"] = []
            cell["execution_count"] = None
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            if key in cell.get("metadata", {}):
                cell["metadata"].pop(key)
                changed = True
    if "papermill" in nb.metadata:
        nb.metadata.pop("papermill")
        changed = True
    if changed and not check:
        nbformat.write(nb, path)
    return changed


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

    c = sub.add_parser("clean", help="strip outputs from the source notebooks")
    c.add_argument("names", nargs="*")
    c.add_argument("--check", action="store_true", help="only report; exit 1 if any notebook has outputs")
    c.add_argument("--notebooks", **common)
    return p


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
                              args.profiles, args.timeout, progress=not args.no_progress)
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
            verb = "have outputs" if args.check else "cleaned"
            print(f"{len(dirty)} notebook(s) {verb}" + (f": {', '.join(dirty)}" if dirty else ""))
            return 1 if (args.check and dirty) else 0
    except UsageError as e:
        print(f"course: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("course: interrupted", file=sys.stderr)
        return 130
    return 2
