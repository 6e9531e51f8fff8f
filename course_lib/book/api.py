"""The book's API reference: pdoc pages of ``course_lib`` plus where each public function is introduced.

pdoc imports every module it documents. Importing ``course_lib`` never needs an optional dependency
(lessons import those lazily), but a module that does fail to import is left out and named on
``api.html`` with the reason instead of stopping the build. Two modules are never imported: the
package's ``__main__`` (it runs the command line) and the Streamlit app (importing it runs the app).

"Introduced in": a public function's own docstring line ``Introduced in ``NN_name.ipynb```` wins;
otherwise the first notebook of the run whose code uses it (found by reading the code cells' imports
and attribute chains with :mod:`ast`); otherwise its module's ``Introduced in`` line.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import pkgutil
import re
import sys
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "course_lib"
# Modules pdoc must not import, with the reason shown on api.html.
NOT_IMPORTED = {
    "course_lib.__main__": "runs the `course` command when imported",
    "course_lib.llm.streamlit_app": "a Streamlit script: importing it runs the app (`streamlit run` it instead)",
}
_INTRODUCED = re.compile(r"Introduced in ``?(\d\d_[A-Za-z0-9_]+)\.ipynb``?")


@dataclass
class Member:
    fullname: str  # canonical: defining module + qualname
    module: str
    qualname: str
    kind: str  # function | class | module
    signature: str
    summary: str
    href: str  # from the book's root
    introduced: str | None = None  # notebook stem
    introduced_how: str = ""  # docstring | first use | module docstring


@dataclass
class ApiReference:
    """What the lesson pages need: canonical name -> link, and each lesson's import aliases."""

    members: dict[str, Member] = field(default_factory=dict)  # canonical fullname -> Member
    modules: dict[str, str] = field(default_factory=dict)  # module name -> href
    skipped: dict[str, str] = field(default_factory=dict)  # module name -> reason
    uses: dict[str, dict[str, str]] = field(default_factory=dict)  # lesson stem -> {local name: dotted target}

    @classmethod
    def empty(cls) -> ApiReference:
        return cls()

    def href(self, dotted: str) -> str | None:
        """Link (from the book's root) of a dotted ``course_lib`` name, following re-exports."""
        name = canonical(dotted)
        if name is None:
            return None
        if name in self.modules:
            return self.modules[name]
        member = self.members.get(name)
        return member.href if member else None


# --------------------------------------------------------------------------------------------
# Which course_lib names a notebook uses
# --------------------------------------------------------------------------------------------


def python_source(cell_source: str) -> str:
    """A code cell as plain Python (IPython magics and shell escapes transformed the way IPython does)."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return TransformerManager().transform_cell(cell_source)
    except Exception:  # IPython missing or a cell it cannot transform: drop the magic lines
        return "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in cell_source.splitlines())


def _parse(source: str):
    try:
        return ast.parse(python_source(source))
    except SyntaxError:
        return None


def import_aliases(sources: list[str]) -> dict[str, str]:
    """Local names bound to ``course_lib`` objects by imports in these cells (names later reassigned are dropped).

    ``from course_lib.llm import quant as q`` gives ``{"q": "course_lib.llm.quant", "quant": ...}``: the
    original name is kept too, for the import line itself.
    """
    aliases: dict[str, str] = {}
    assigned: set[str] = set()
    for src in sources:
        tree = _parse(src)
        if tree is None:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == PACKAGE or a.name.startswith(PACKAGE + "."):
                        if a.asname:
                            aliases[a.asname] = a.name
                        else:
                            aliases[PACKAGE] = PACKAGE
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == PACKAGE or node.module.startswith(PACKAGE + "."):
                    for a in node.names:
                        if a.name == "*":
                            continue
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                        aliases.setdefault(a.name, f"{node.module}.{a.name}")
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                assigned.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                assigned.add(node.name)
            elif isinstance(node, ast.arg):
                assigned.add(node.arg)
    return {k: v for k, v in aliases.items() if k not in assigned}


def _dotted(node) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def used_names(sources: list[str], aliases: dict[str, str]) -> list[str]:
    """Every dotted ``course_lib`` name the cells import or use (``report.record`` -> ``course_lib.report.record``)."""
    found: list[str] = []
    for src in sources:
        tree = _parse(src)
        if tree is None:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
                found += [f"{node.module}.{a.name}" for a in node.names if a.name != "*"]
            elif isinstance(node, (ast.Attribute, ast.Name)):
                chain = _dotted(node)
                if chain and chain[0] in aliases:
                    found.append(".".join([aliases[chain[0]], *chain[1:]]))
    return found


def canonical(dotted: str) -> str | None:
    """The defining module + qualname of a dotted ``course_lib`` name (``course_lib.show_source`` -> ``course_lib.show.show_source``).

    Only modules already imported are looked at: nothing is imported here.
    """
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        modname = ".".join(parts[:i])
        mod = sys.modules.get(modname)
        if mod is None:
            continue
        obj = mod
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        if isinstance(obj, types.ModuleType):
            return obj.__name__ if obj.__name__.startswith(PACKAGE) else None
        owner, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if isinstance(owner, str) and isinstance(qual, str) and owner.startswith(PACKAGE) and "<" not in qual:
            return f"{owner}.{qual}"
        return None
    return None


# --------------------------------------------------------------------------------------------
# pdoc
# --------------------------------------------------------------------------------------------


def _summary(docstring: str):
    """The first sentence of a docstring as HTML: reST roles and literals become ``<code>``."""
    import html

    from markupsafe import Markup

    text = " ".join((docstring or "").strip().split("\n\n", 1)[0].split())
    text = re.sub(r":\w+:`~?\.?([^`]+)`", r"`\1`", text).replace("``", "`")
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    text = (m.group(1) if m else text)[:300]
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False)))


@contextlib.contextmanager
def _without_modules(names: set[str]):
    """Make pdoc's submodule discovery skip ``names`` (it would import them to list them)."""
    from pdoc import extract

    original = extract.iter_modules2

    def filtered(module):
        found = original(module)
        # pdoc lists only the submodules a package's __all__ names; course_lib's __all__ is about the
        # names notebooks import, so every submodule found on disk is documented.
        for info in pkgutil.iter_modules(getattr(module, "__path__", []), f"{module.__name__}."):
            found.setdefault(info.name.rpartition(".")[2], info)
        return {k: v for k, v in found.items() if v.name not in names}

    extract.iter_modules2 = filtered
    try:
        yield
    finally:
        extract.iter_modules2 = original


def load_modules() -> tuple[dict, dict[str, str]]:
    """pdoc's ``Module`` objects of every importable ``course_lib`` module, and the skipped ones with why."""
    from pdoc import doc, extract

    skipped = dict(NOT_IMPORTED)
    modules: dict = {}
    # pdoc reports a module it cannot import as a warning (caught by the caller); here it becomes a line on api.html.
    for name in extract.walk_specs([PACKAGE]):
        if name in NOT_IMPORTED:
            continue
        try:
            importlib.import_module(name)
            modules[name] = doc.Module.from_name(name)
        except BaseException as e:  # ImportError, SystemExit from a script, anything a module raises
            if isinstance(e, KeyboardInterrupt):
                raise
            cause = e.__cause__ or e
            skipped[name] = f"does not import here: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
    return modules, skipped


def _compact(sig) -> str:
    """``(fn, *, name, items)``: parameter names only (pdoc's page has the annotations and defaults)."""
    import inspect

    out, star = [], False
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            out.append(f"*{p.name}")
            star = True
        elif p.kind is inspect.Parameter.VAR_KEYWORD:
            out.append(f"**{p.name}")
        elif p.kind is inspect.Parameter.KEYWORD_ONLY and not star:
            out += ["*", p.name]
            star = True
        else:
            out.append(p.name)
    return f"({', '.join(out)})"


def _signature(d) -> str:
    try:
        if d.kind == "function":
            return d.name + _compact(d.signature_without_self if "." in d.qualname else d.signature)
        if d.kind == "class":
            init = d.members.get("__init__")
            if init is not None and getattr(init, "kind", "") == "function":
                return d.name + _compact(init.signature_without_self)
    except Exception:  # pdoc could not inspect it: the name alone
        pass
    return d.name


def _public(d, module_all) -> bool:
    if d.name.startswith("_"):
        return module_all is not None and d.name in module_all
    return True


def collect_members(modules: dict) -> tuple[dict[str, Member], dict[str, str]]:
    """Public functions and classes (and their public methods) of the documented modules, with their links."""
    members: dict[str, Member] = {}
    module_links = {}
    for name, mod in modules.items():
        page = "api/" + name.replace(".", "/") + ".html"
        module_links[name] = page
        module_all = getattr(mod.obj, "__all__", None)
        for d in mod.flattened_own_members:
            if d.kind not in ("function", "class") or not all(_public(p, module_all) for p in [d]):
                continue
            if any(part.startswith("_") for part in d.qualname.split(".")):
                continue
            full = f"{name}.{d.qualname}"
            members[full] = Member(
                fullname=full, module=name, qualname=d.qualname, kind=d.kind,
                signature=_signature(d), summary=_summary(d.docstring), href=f"{page}#{d.qualname}",
            )
    return members, module_links


def introduced_in(members: dict[str, Member], modules: dict, lessons, reference: ApiReference) -> None:
    """Fill ``Member.introduced`` (see the module docstring for the order of evidence)."""
    first_use: dict[str, str] = {}
    for lesson in lessons:
        nb = lesson.notebook
        sources = [c.source for c in nb.cells if c.cell_type == "code"]
        aliases = import_aliases(sources)
        reference.uses[lesson.stem] = aliases
        for dotted in used_names(sources, aliases):
            parts = dotted.split(".")
            for i in range(2, len(parts) + 1):  # report.record(...).x: the prefixes that are course_lib objects
                name = canonical(".".join(parts[:i]))
                if name:
                    first_use.setdefault(name, lesson.stem)
    for full, m in members.items():
        obj_doc = modules[m.module].get(m.qualname)
        own = _INTRODUCED.search(getattr(obj_doc, "docstring", "") or "")
        if own:
            m.introduced, m.introduced_how = own.group(1), "docstring"
            continue
        if full in first_use:
            m.introduced, m.introduced_how = first_use[full], "first use"
            continue
        mod_name = m.module
        while mod_name:
            mod = modules.get(mod_name)
            found = _INTRODUCED.search(mod.docstring or "") if mod is not None else None
            if found:
                m.introduced, m.introduced_how = found.group(1), "module docstring"
                break
            mod_name = mod_name.rpartition(".")[0]


def build_api(out: Path, lessons, env, ctx) -> ApiReference:
    """Write ``api/`` (pdoc) and ``api.html`` (the book's index of public functions) into ``out``."""
    # pdoc warns about names it cannot resolve (e.g. a package's lazily imported ``__all__`` entries) and
    # about modules that do not import; the book reports the latter on api.html, the former are harmless.
    with warnings.catch_warnings(record=True), _without_modules(set(NOT_IMPORTED)):
        warnings.simplefilter("always")
        return _build_api(out, lessons, env, ctx)


def _build_api(out: Path, lessons, env, ctx) -> ApiReference:
    from pdoc import render

    modules, skipped = load_modules()
    members, module_links = collect_members(modules)
    reference = ApiReference(members=members, modules=module_links, skipped=skipped)
    introduced_in(members, modules, lessons, reference)
    pages = {lesson.stem: lesson.page for lesson in lessons}

    render.configure(
        docformat="restructuredtext",
        template_directory=Path(__file__).resolve().parent / "templates" / "pdoc",
        search=True,
        show_source=False,  # highlighting every function's source took most of the build time
        footer_text=ctx["book_title"],
    )
    introduced = {
        full: {"stem": m.introduced, "page": pages.get(m.introduced), "how": m.introduced_how}
        for full, m in members.items() if m.introduced
    }
    render.env.globals["book_introduced"] = introduced
    api_dir = out / "api"
    for name, mod in modules.items():
        path = api_dir / (name.replace(".", "/") + ".html")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render.html_module(mod, modules), encoding="utf-8")
    index = render.html_index(modules)
    if index:
        (api_dir / "index.html").write_text(index, encoding="utf-8")
    search = render.search_index(modules)
    if search:
        (api_dir / "search.js").write_text(search, encoding="utf-8")

    by_module: dict[str, list[Member]] = {}
    for m in members.values():
        if "." not in m.qualname or m.kind == "class":
            by_module.setdefault(m.module, []).append(m)
    html = env.get_template("api.html.j2").render(
        **ctx, modules=modules, module_links=module_links, by_module=by_module, skipped=skipped,
        pages=pages, summaries={n: _summary(mod.docstring) for n, mod in modules.items()},
    )
    (out / "api.html").write_text(html, encoding="utf-8")
    return reference
