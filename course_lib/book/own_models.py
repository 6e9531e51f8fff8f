"""The book's "Use it on your own model" page: the five recipes of ``examples/``, their prose and their source.

Each recipe is a file ``examples/<name>.py`` that ``tests/test_examples.py`` runs on tiny models; the page reads
the files themselves (the module docstring becomes the prose, the rest is shown as code), so it cannot drift from
the API the tests exercise.
"""

from __future__ import annotations

import ast
import html
import re
from dataclasses import dataclass
from pathlib import Path

from course_lib import paths

PAGE = "own_models.html"
# In the page's order; tests/test_examples.py checks that this is exactly the set of files in examples/.
RECIPES = ["time_a_function.py", "quantize_transformers_model.py", "tune_matmul.py", "ptq_export_cnn.py",
           "plot_roofline.py"]


@dataclass
class Recipe:
    """One example file as the page shows it."""

    name: str
    anchor: str
    title: str
    prose_html: str
    code_html: str
    lines: int


def examples_dir() -> Path:
    """``examples/`` of the course checkout."""
    return paths.repo_root() / "examples"


def _inline(text: str) -> str:
    """Docstring text → HTML: escaped, ````code```` and ```code``` as <code>."""
    out = html.escape(text, quote=False)
    return re.sub(r"``(.+?)``|`([^`]+)`", lambda m: f"<code>{m.group(1) or m.group(2)}</code>", out)


def _prose(doc: str) -> str:
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", doc) if p.strip()]
    return "\n".join(f"<p>{_inline(' '.join(p.split()))}</p>" for p in paragraphs)


def _highlight(code: str) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    return highlight(code, PythonLexer(), HtmlFormatter(noclasses=True, nowrap=False, style="default"))


def read_recipe(path: Path) -> Recipe:
    """Split an example file into its docstring (title = first line, prose = the rest) and its code."""
    src = path.read_text(encoding="utf-8")
    tree = ast.parse(src)
    doc = ast.get_docstring(tree) or path.stem
    code = src
    if tree.body and isinstance(tree.body[0], ast.Expr) and isinstance(getattr(tree.body[0], "value", None), ast.Constant):
        code = "\n".join(src.splitlines()[tree.body[0].end_lineno:]).strip("\n") + "\n"
    title, _, rest = doc.partition("\n")
    return Recipe(name=path.name, anchor=path.stem.replace("_", "-"), title=title.strip(), prose_html=_prose(rest),
                  code_html=_highlight(code), lines=len(src.splitlines()))


def recipes(folder: Path | None = None) -> tuple[list[Recipe], list[str]]:
    """(recipes found, names missing) in :data:`RECIPES` order."""
    folder = folder or examples_dir()
    found = [read_recipe(folder / n) for n in RECIPES if (folder / n).is_file()]
    return found, [n for n in RECIPES if not (folder / n).is_file()]


def build_page(out: Path, env, ctx: dict) -> Path:
    """Write ``own_models.html`` into the book folder ``out``."""
    found, missing = recipes()
    page = out / PAGE
    page.write_text(env.get_template("own_models.html.j2").render(**ctx, recipes=found, missing=missing,
                                                                  examples=examples_dir()), encoding="utf-8")
    return page
