"""show_source renders the real code being taught: its file, line numbers and text."""

import inspect

import pytest

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
