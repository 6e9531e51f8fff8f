"""The ``course`` command line: ``list``, ``run``, ``clean``, ``exercises``, ``book``, ``gpu-check``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from course_lib import paths
from course_lib.runner.execute import run
from course_lib.runner.hygiene import clean_notebook
from course_lib.runner.profiles import NotebookSpec, UsageError, discover, select
from course_lib.runner.reports import last_line


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

    r.add_argument("--force", action="store_true",
                   help="write into a non-empty --out that holds no report.json of a previous run")
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

    parser.set_defaults(_module=module, _broken=None)
    try:
        importlib.import_module(module).add_arguments(parser)
    except Exception as e:  # noqa: BLE001 - a broken module breaks its own command only, and says why
        # Other commands keep working; this one accepts any arguments and fails with the import's own error.
        parser.set_defaults(_broken=f"{type(e).__name__}: {last_line(e) or '(no message)'}")
        parser.add_argument("_ignored", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


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
                              with_solutions=args.with_solutions, force=args.force)
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

            if args._broken:
                print(f"course: error: `course {args.cmd}` is broken in this checkout: {args._module} "
                      f"failed to load ({args._broken})", file=sys.stderr)
                return 1
            return int(importlib.import_module(args._module).command(args) or 0)
    except UsageError as e:
        print(f"course: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("course: interrupted", file=sys.stderr)
        return 130
    return 2
