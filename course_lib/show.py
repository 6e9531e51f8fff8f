"""Show the code being taught: the real source of a function or class, rendered in the notebook.

Every lesson calls :func:`show_source` right before the cell that runs the code, so a learner reads
the lines that actually execute (not a copy), with the file they live in and their line numbers::

    from course_lib import show_source
    show_source(quant.pack_int4)                      # the whole function
    show_source(quant.QLinear.forward)                # one method
    show_source(quant.QLinear, lines=(1, 25))         # lines 1-25 of the class (1 = its first line)
    show_source(quant.QLinear, match="def forward")   # from the line containing the text to the end of that block

Introduced in ``00_environment.ipynb``; works for installed libraries too (e.g. pytorch-quantization).
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Source:
    """A piece of real source code: its text, the file it comes from and its first line number."""

    code: str
    path: str  # shown path: relative to the repository or to site-packages
    first: int  # line number of the first shown line in that file
    qualname: str

    @property
    def last(self) -> int:
        return self.first + self.code.count("\n") - (1 if self.code.endswith("\n") else 0)

    @property
    def header(self) -> str:
        return f"{self.qualname} — {self.path}, lines {self.first}–{self.last}"

    def _repr_html_(self) -> str:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer

        fmt = HtmlFormatter(linenos="inline", linenostart=self.first, noclasses=True, style="default")
        body = highlight(self.code, PythonLexer(), fmt)
        return (
            '<div class="course-source">'
            f'<div style="font-family:monospace;font-size:0.85em;color:#555;margin:0 0 2px 0">📄 {_escape(self.header)}</div>'
            f"{body}</div>"
        )

    def __str__(self) -> str:
        width = len(str(self.last))
        numbered = [f"{self.first + i:>{width}} │ {ln}" for i, ln in enumerate(self.code.rstrip("\n").splitlines())]
        return "\n".join([f"# {self.header}", *numbered])

    def _repr_pretty_(self, p, cycle) -> None:  # plain-text frontends (IPython terminal)
        p.text(str(self))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _shown_path(file: str) -> str:
    """The file's path relative to the repository (course code) or to site-packages (libraries)."""
    from course_lib import paths

    p = Path(file).resolve()
    for base in [*(Path(s).resolve() for s in sys.path if "site-packages" in s), paths.repo_root()]:
        try:
            return str(p.relative_to(base))
        except ValueError:
            continue
    return str(p)


def _block_end(lines: list[str], start: int) -> int:
    """Index one past the indented block that starts at ``lines[start]`` (a ``def``/``class`` line)."""
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines):
        text = lines[end]
        if text.strip() and (len(text) - len(text.lstrip())) <= indent and not text.lstrip().startswith((")", "]", "}")):
            break
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    return end


def get_source(obj, lines: tuple[int, int] | None = None, match: str | None = None) -> Source:
    """The :class:`Source` of ``obj`` (function, method, class or module), optionally a part of it.

    ``lines=(a, b)``: lines a..b inclusive, counted from 1 at the object's first line.
    ``match="def forward"``: the block that starts at the first line containing that text.
    """
    target = inspect.unwrap(obj) if callable(obj) else obj
    try:
        src_lines, first = inspect.getsourcelines(target)
        file = inspect.getsourcefile(target)
    except (OSError, TypeError) as e:
        raise ValueError(f"no Python source for {obj!r}: {e}") from None
    first = max(first, 1)
    qualname = getattr(target, "__qualname__", getattr(target, "__name__", repr(target)))
    module = getattr(target, "__module__", None) or getattr(target, "__name__", "")
    name = f"{module}.{qualname}" if module and module != qualname else qualname
    start, stop = 0, len(src_lines)
    if match is not None:
        hits = [i for i, ln in enumerate(src_lines) if match in ln]
        if not hits:
            raise ValueError(f"{name}: no line contains {match!r}")
        start = hits[0]
        stop = _block_end(src_lines, start) if src_lines[start].lstrip().startswith(("def ", "class ", "async def ", "@")) else stop
    if lines is not None:
        a, b = lines
        if not (1 <= a <= b):
            raise ValueError(f"lines must be (first, last) with 1 <= first <= last, got {lines!r}")
        if a > stop - start:
            raise ValueError(f"{name} has only {stop - start} lines, asked for {lines!r}")
        start, stop = start + a - 1, min(stop, start + b)
    code = "".join(src_lines[start:stop])
    return Source(code=code, path=_shown_path(file or "?"), first=first + start, qualname=name)


def show_source(obj, lines: tuple[int, int] | None = None, match: str | None = None) -> None:
    """Display the real source of ``obj`` in the notebook (syntax-highlighted, path and line numbers).

    Outside Jupyter it prints the same with line numbers. Returns nothing, so a cell that ends with
    it shows the code once and no stray value.
    """
    src = get_source(obj, lines=lines, match=match)
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display(src)
            return
    except ImportError:
        pass
    print(src)
