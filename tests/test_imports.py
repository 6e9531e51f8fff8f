"""course_lib's import graph: no cycle anywhere, and no lesson importing another lesson's package.

The graph is read from the source with ``ast`` (nothing is imported), function-local imports included: a cycle
hidden inside functions still makes the modules impossible to understand, test or move one at a time. Shared
pieces belong in the shared modules (``hw``, ``bench``, ``paths``, ``report``, ``quiet``, ``show``, ...).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "course_lib"
LESSONS = {"deploy": 1, "parallel": 2, "llm": 3, "tuning": 4, "detection": 5, "ptq": 5}  # detection + ptq: lesson 5

def modules() -> dict[str, Path]:
    """``{dotted name: file}`` of every module of the package (a package is named by its ``__init__.py``)."""
    out = {}
    for f in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module a dotted import name lands in: itself, or its nearest known parent (``pkg.mod.attr`` -> ``pkg.mod``)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """course_lib modules ``module`` imports, anywhere in its file (function bodies included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one, else a name of ``pkg``
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for n in names:
            if n == PACKAGE or n.startswith(PACKAGE + "."):
                target = _resolve(n, known)
                if target and target != module:
                    out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports_of(m, p, known) for m, p in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(g):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return out


def lesson_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LESSONS else None


def test_the_graph_sees_function_local_and_relative_imports(tmp_path):
    """The reader itself, on a made-up package: a cycle through a function-local import is found."""
    known = {"course_lib.a": tmp_path / "a.py", "course_lib.b": tmp_path / "b.py", "course_lib.c": tmp_path / "c.py"}
    (tmp_path / "a.py").write_text("from course_lib import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from course_lib.c import thing\n")
    (tmp_path / "c.py").write_text("def g():\n    import course_lib.a.x\n")
    g = {m: imports_of(m, p, known) for m, p in known.items()}
    assert g == {"course_lib.a": {"course_lib.b"}, "course_lib.b": {"course_lib.c"}, "course_lib.c": {"course_lib.a"}}
    assert cycles(g) == [["course_lib.a", "course_lib.b", "course_lib.c"]]
    assert cycles({"course_lib.a": {"course_lib.b"}, "course_lib.b": set()}) == []


def test_the_graph_covers_the_package():
    g = graph()
    assert {"course_lib.runner.cli", "course_lib.gpucheck", "course_lib.llm.quant", "course_lib.ptq.pq"} <= set(g)
    assert "course_lib.hw" in g["course_lib.runner.profiles"] or "course_lib.hw" in g["course_lib.deploy.train"]


def test_no_import_cycle_in_course_lib():
    found = cycles(graph())
    assert found == [], "import cycles (function-local imports included): " + "; ".join(" <-> ".join(c) for c in found)


def test_no_lesson_imports_another_lessons_package():
    """A lesson's package may import the shared modules and itself, never another lesson (detection + ptq are one)."""
    bad = []
    for m, targets in graph().items():
        mine = lesson_of(m)
        for t in sorted(targets):
            theirs = lesson_of(t)
            if mine and theirs and LESSONS[mine] != LESSONS[theirs]:
                bad.append(f"{m} -> {t}")
    assert bad == [], "lesson-to-lesson imports: " + ", ".join(bad)
