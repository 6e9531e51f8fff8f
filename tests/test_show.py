"""show_source renders the real code being taught: its file, line numbers and text."""

import inspect

import pytest

from conftest import ROOT
from course_lib import bench, show


def test_whole_function_with_its_real_path_and_lines():
    src = show.get_source(bench.percentile)
    lines, first = inspect.getsourcelines(bench.percentile)
    assert src.code == "".join(lines)
    assert src.path == "course_lib/bench.py"
    assert (src.first, src.last) == (first, first + len(lines) - 1)
    text = str(src)
    assert text.splitlines()[0] == f"# course_lib.bench.percentile — course_lib/bench.py, lines {src.first}–{src.last}"
    assert text.splitlines()[1].strip().startswith(f"{first} │ def percentile(")


def test_a_line_range_is_counted_from_the_objects_first_line():
    full = show.get_source(bench.percentile)
    part = show.get_source(bench.percentile, lines=(2, 3))
    assert part.first == full.first + 1 and part.last == full.first + 2
    assert part.code == "".join(full.code.splitlines(keepends=True)[1:3])
    with pytest.raises(ValueError, match="has only"):
        show.get_source(bench.percentile, lines=(500, 501))
    with pytest.raises(ValueError, match="1 <= first <= last"):
        show.get_source(bench.percentile, lines=(3, 2))


def test_match_selects_one_method_block():
    src = show.get_source(bench.BenchResult, match="def as_row")
    assert src.code.lstrip().startswith("def as_row")
    assert "def " not in src.code.strip().splitlines()[-1] or src.code.count("def ") == 1
    with pytest.raises(ValueError, match="no line contains"):
        show.get_source(bench.BenchResult, match="def nothing_like_this")


def test_installed_libraries_show_a_site_packages_relative_path():
    import nbformat

    src = show.get_source(nbformat.read)
    assert src.path.startswith("nbformat/") and "def read" in src.code


def test_builtins_have_no_source():
    with pytest.raises(ValueError, match="no Python source"):
        show.get_source(len)


def test_html_is_highlighted_with_line_numbers_and_escaped_header():
    html = show.get_source(bench.percentile)._repr_html_()
    assert "course_lib/bench.py" in html and "<span" in html and "def" in html


def test_show_source_prints_outside_jupyter_and_returns_nothing(capsys):
    assert show.show_source(bench.percentile) is None
    assert "course_lib/bench.py" in capsys.readouterr().out


def _code_sources(path):
    import json

    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "code":  # IPython magics and shell escapes are not Python: blanked
            src = "".join(cell["source"])
            yield "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in src.splitlines())


def _code_cells(path):
    import ast

    for src in _code_sources(path):
        yield ast.parse(src)


NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_code_cell_compiles_without_a_warning(notebook):
    """An invalid escape such as ``"\\|"`` compiles with a warning that Python 3.11's kernel hides and 3.12+ prints
    as a SyntaxWarning into the learner's output: compile every cell with warnings as errors."""
    import warnings

    for i, src in enumerate(_code_sources(ROOT / "notebooks" / notebook)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                compile(src, f"{notebook}, code cell {i}", "exec")
            except (SyntaxError, Warning) as e:
                pytest.fail(f"{notebook}, code cell {i}: {e}")


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_every_show_source_call_in_the_notebooks_still_finds_its_code(notebook):
    """A renamed function or an edited line breaks a notebook's ``show_source(obj, match=...)`` only when the notebook
    runs (minutes later, in CI): resolve every call here, with the notebook's own imports, in a second."""
    import ast

    trees = list(_code_cells(ROOT / "notebooks" / notebook))
    namespace: dict = {}
    for node in (n for t in trees for n in ast.walk(t) if isinstance(n, (ast.Import, ast.ImportFrom))):
        exec(compile(ast.Module([node], []), notebook, "exec"), namespace)  # the notebook's imports, nothing else
    calls = [n for t in trees for n in ast.walk(t) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "show_source"]
    for call in calls:
        obj = eval(ast.unparse(call.args[0]), namespace)  # a dotted name from those imports
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        try:
            show.get_source(obj, **kwargs)
        except ValueError as e:
            pytest.fail(f"{notebook}: {ast.unparse(call)}: {e}")
    if notebook != "00_environment.ipynb":  # every lesson shows its code
        assert calls, f"{notebook} shows no source"
