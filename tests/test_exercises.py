"""The exercise layer: checks, statuses, solutions kept out of the notebooks, `course exercises`."""

import json

import nbformat
import pytest

from conftest import FIXTURES, ROOT
from course_lib import exercises, report, runner

EX = FIXTURES / "exercises"
COURSE_NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture
def toy():
    """A throwaway exercise registered for one test."""

    @exercises.register("98.square", "implement", "Square a number")
    def _check(fn):
        for x in (0, 3, -2):
            got = exercises.call(fn, x)
            exercises.expect(got == x * x, f"square({x}) gave {got!r}, expected {x * x}")

    yield exercises.lookup("98.square")
    exercises._REGISTRY.pop("98.square")


def test_right_answer_passes_and_is_recorded(toy, capsys):
    exercises.check("98.square", lambda x: x * x)
    assert "✅ 98.square passed — Square a number" in capsys.readouterr().out
    assert report._exercises == {"98.square": "passed"}


def test_blank_starter_is_not_attempted_and_does_not_raise(toy, capsys):
    def blank(x):
        raise NotImplementedError

    exercises.check("98.square", blank)
    exercises.check("98.square", None)
    assert capsys.readouterr().out.count("98.square not attempted yet") == 2
    assert report._exercises == {"98.square": "not_attempted"}


def test_wrong_answer_raises_with_the_input_that_failed(toy):
    with pytest.raises(exercises.ExerciseFailed, match=r"98.square \(Square a number\): square\(3\) gave 6, expected 9"):
        exercises.check("98.square", lambda x: 2 * x)
    assert report._exercises == {"98.square": "failed"}


def test_an_exception_in_the_learners_code_is_a_failure_not_a_crash(toy):
    with pytest.raises(exercises.ExerciseFailed, match="your function raised ZeroDivisionError"):
        exercises.check("98.square", lambda x: 1 / 0)


def test_within_accepts_the_band_and_explains_a_miss():
    exercises.within(105, 100, 0.1, "GFLOP/s")
    with pytest.raises(exercises.ExerciseFailed, match=r"you predicted 150, this run measured 100 \(accepted band ±10%\)"):
        exercises.within(150, 100, 0.1, "GFLOP/s")
    with pytest.raises(exercises.NotAttempted):
        exercises.within(None, 100, 0.1, "GFLOP/s")
    with pytest.raises(exercises.ExerciseFailed, match="expected a number"):
        exercises.within("fast", 100, 0.1, "GFLOP/s")


@pytest.mark.parametrize("id_, kind, message", [("3.x", "implement", "must look like"), ("03.x", "guess", "kind must be")])
def test_register_rejects_bad_ids_and_kinds(id_, kind, message):
    with pytest.raises(ValueError, match=message):
        exercises.register(id_, kind, "t")


def test_unknown_exercise_names_the_known_ones(toy):
    with pytest.raises(KeyError, match="known for notebook 98: 98.square"):
        exercises.lookup("98.cube")


def test_solutions_file_sections_and_injection(tmp_path):
    sol = exercises.load_solutions(EX / "solutions" / "09_exercises.py")
    assert set(sol) == {"09.double", "09.guess"}
    assert sol["09.guess"].strip() == "answer = 42"
    nb = nbformat.read(EX / "notebooks" / "09_exercises.ipynb", as_version=4)
    exercises.inject_solutions(nb, sol)
    starters = [c.source for c in nb.cells if "exercise" in c.metadata.get("tags", [])]
    assert starters == [sol["09.double"].rstrip("\n"), "answer = 42"]
    with pytest.raises(KeyError, match="no solution for 09.guess"):
        exercises.inject_solutions(nbformat.read(EX / "notebooks" / "09_exercises.ipynb", as_version=4), {"09.double": "x"})
    dup = tmp_path / "dup.py"
    dup.write_text("# %% [09.a]\na = 1\n# %% [09.a]\na = 2\n")
    with pytest.raises(ValueError, match="appears twice"):
        exercises.load_solutions(dup)


def _run(tmp_path, **kw):
    return runner.run([], profile="cpu", out=tmp_path / "out", notebooks=EX / "notebooks", profiles=EX / "profiles.yaml",
                      progress=False, **kw)


def test_without_solutions_the_run_is_green_and_says_not_attempted(tmp_path):
    status, doc = _run(tmp_path)
    entry = doc["notebooks"]["09_exercises"]
    assert status == 0 and entry["status"] == "ok"
    assert entry["exercises"] == {"total": 2, "passed": 0, "failed": 0, "not_attempted": 2}
    nb = nbformat.read(tmp_path / "out" / "09_exercises.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert text.count("not attempted yet") == 2
    assert "| 09_exercises | ✅ ok |" in (tmp_path / "out" / "report.md").read_text()


def test_with_solutions_every_check_passes_and_sources_stay_blank(tmp_path):
    before = (EX / "notebooks" / "09_exercises.ipynb").read_text()
    status, doc = _run(tmp_path, with_solutions=True, solutions=EX / "solutions")
    assert status == 0
    assert doc["notebooks"]["09_exercises"]["exercises"] == {"total": 2, "passed": 2, "failed": 0, "not_attempted": 0}
    assert (EX / "notebooks" / "09_exercises.ipynb").read_text() == before  # the learner's notebook is untouched
    assert not list((tmp_path / "out").glob(".*with-solutions*"))  # the filled-in copy is removed
    assert json.loads((tmp_path / "out" / "report.json").read_text())["notebooks"]["09_exercises"]["exercises"]["passed"] == 2


def test_with_solutions_but_a_solution_missing_is_bad_input(tmp_path):
    sol = tmp_path / "sol"
    sol.mkdir()
    (sol / "09_exercises.py").write_text("# %% [09.double]\ndef double(x):\n    return 2 * x\n")
    with pytest.raises(runner.UsageError, match="no solution for 09.guess"):
        _run(tmp_path, with_solutions=True, solutions=sol)
    assert not (tmp_path / "out").exists()


def test_course_exercises_lists_without_running(capsys):
    assert runner.main(["exercises", "--notebooks", str(EX / "notebooks")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "09_exercises (2)"
    assert out[1].split(None, 2) == ["09.double", "implement", "Double a number"]
    assert out[-1] == "total: 2 exercises in 1 notebooks"


# -- the course's own notebooks ------------------------------------------------------------------


@pytest.mark.parametrize("path", COURSE_NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_four_exercises_each_with_a_check_and_a_solution(path):
    found = exercises.exercises_in(path)
    assert len(found) >= 4, f"{path.stem}: {len(found)} exercises, the course asks for at least 4"
    number = path.stem[:2]
    assert all(e["id"].startswith(number + ".") for e in found), f"{path.stem}: ids must start with {number}."
    assert all(e["kind"] in exercises.KINDS and e["title"] for e in found)
    registered = {e.id for e in exercises.registered(number)}
    assert {e["id"] for e in found} <= registered, f"{path.stem}: exercises without a registered check"
    solutions = exercises.load_solutions(ROOT / "solutions" / f"{path.stem}.py")
    assert {e["id"] for e in found} <= set(solutions), f"{path.stem}: exercises without a solution"
    nb = nbformat.read(path, as_version=4)
    for sid, src in solutions.items():  # solutions never leak into the learner's notebook
        body = [ln for ln in src.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "def ", "import ", "from "))]
        if body:
            assert not all(any(ln in c.source for c in nb.cells) for ln in body), f"{path.stem}: the solution of {sid} is in the notebook"
    kinds = {e["kind"] for e in found}
    assert len(kinds) >= 2, f"{path.stem}: mix the kinds of exercise (has only {kinds})"
