"""Exercises: the checks behind the "your turn" cells of every notebook.

Each exercise is two cells in a notebook:

* a **starter** cell, tagged ``exercise`` with ``{"exercise": {"id", "kind", "title"}}`` in its metadata,
  holding a skeleton (a function that raises ``NotImplementedError``, or ``answer = None``);
* a **check** cell that calls :func:`check` with the learner's answer, e.g.
  ``exercises.check("03.pack_int4", pack_int4)``.

A check passes only on a right answer and on every right answer. It tries several inputs chosen to tell right
from the typical wrong answers (edge cases too), reads behaviour rather than text, compares with tolerances that match
the arithmetic (a float32 answer passes a float64 reference), takes numbers through :func:`as_number` / :func:`as_int`
(numpy and torch scalars and ``32.0`` are accepted, ``2.9`` where an integer is asked is not), prints numbers with
enough digits to show a difference (:func:`fmt_pair`), and names the typical mistake when it sees one.
``tests/test_exercises_variants.py`` holds, per exercise, right answers written differently and the wrong ones. A blank starter prints "not attempted yet" and does not fail, so
instructors regenerating the outputs get a green run; a wrong answer raises :class:`ExerciseFailed`.
Solutions live outside the notebooks, in ``solutions/NN_name.py``; ``course run --with-solutions``
fills them in (see :func:`inject_solutions`). ``course exercises`` lists every exercise.

Kinds: ``implement`` (write a function the lesson explained), ``predict`` (write a number before
the lesson measures it; accepted within a stated band) and ``explore`` (change a knob, answer a
question the check verifies from your own run).

The checks of lesson N live in ``course_lib/exercises/lN.py`` and register themselves with
:func:`register`. Introduced in ``00_environment.ipynb``.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

KINDS = ("implement", "predict", "explore")
TAG = "exercise"
_ID = re.compile(r"^(\d\d)\.[a-z0-9_]+$")


class NotAttempted(Exception):
    """The learner has not answered yet (blank starter): reported, never a failure."""


class ExerciseFailed(AssertionError):
    """A wrong answer; the message says what was wrong and, where it can tell, which typical mistake."""


@dataclass(frozen=True)
class Exercise:
    id: str
    kind: str
    title: str
    fn: Callable

    @property
    def notebook_number(self) -> str:
        return self.id[:2]


_REGISTRY: dict[str, Exercise] = {}


def register(id: str, kind: str, title: str):
    """Decorator: register ``fn`` as the check of exercise ``id`` (``"NN.slug"``, NN = notebook number)."""
    if not _ID.match(id):
        raise ValueError(f"exercise id {id!r} must look like '03.pack_int4' (notebook number, dot, slug)")
    if kind not in KINDS:
        raise ValueError(f"exercise {id}: kind must be one of {', '.join(KINDS)}, got {kind!r}")

    def deco(fn: Callable) -> Callable:
        _REGISTRY[id] = Exercise(id, kind, title, fn)
        return fn

    return deco


def lookup(id: str) -> Exercise:
    """The registered exercise ``id`` (imports the lesson's check module on first use)."""
    m = _ID.match(str(id))
    if not m:
        raise ValueError(f"exercise id {id!r} must look like '03.pack_int4'")
    if id not in _REGISTRY:
        try:
            importlib.import_module(f"{__name__}.l{int(m.group(1))}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.l{int(m.group(1))}":
                raise
    if id not in _REGISTRY:
        known = ", ".join(sorted(k for k in _REGISTRY if k.startswith(m.group(1)))) or "none"
        raise KeyError(f"no exercise {id!r} (known for notebook {m.group(1)}: {known})")
    return _REGISTRY[id]


def registered(notebook_number: str | None = None) -> list[Exercise]:
    """All registered exercises (of one notebook when ``notebook_number`` is given, e.g. ``"03"``)."""
    numbers = [notebook_number] if notebook_number else [f"{i:02d}" for i in range(10)]
    for n in numbers:
        try:
            importlib.import_module(f"{__name__}.l{int(n)}")
        except ModuleNotFoundError:
            pass
    return sorted((e for e in _REGISTRY.values() if notebook_number in (None, e.notebook_number)), key=lambda e: e.id)


# --------------------------------------------------------------------------------------------
# Helpers for writing checks
# --------------------------------------------------------------------------------------------


def is_blank(value) -> bool:
    """True for an unanswered starter: ``None`` or ``...``."""
    return value is None or value is Ellipsis


def answered(*values) -> None:
    """Raise :class:`NotAttempted` if any value is still blank (``None`` / ``...``)."""
    if any(is_blank(v) for v in values):
        raise NotAttempted()


def expect(condition: bool, message: str) -> None:
    """Fail the check with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ExerciseFailed(message)


def call(fn: Callable, *args, **kwargs):
    """Call the learner's function: ``NotImplementedError`` means not attempted; any other error fails."""
    if is_blank(fn):
        raise NotAttempted()
    if not callable(fn):
        raise ExerciseFailed(f"expected a function, got {type(fn).__name__}")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise NotAttempted() from None
    except ExerciseFailed:
        raise
    except Exception as e:  # the learner's code raised: show what, on which input
        raise ExerciseFailed(f"your function raised {type(e).__name__}: {e}") from None


def _scalar(value):
    """A Python number from ``value``: ints, floats, numpy scalars, 0-d / one-element arrays and tensors; else raise."""
    import numbers

    if isinstance(value, bool):
        raise TypeError("a bool is not a number here")
    if isinstance(value, numbers.Real) and not hasattr(value, "dtype"):
        return value
    import numpy as np

    arr = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
    if arr.size != 1 or arr.dtype.kind not in "iuf":
        raise TypeError(f"one number expected, got {arr.size} values of kind {arr.dtype.kind!r}")
    return arr.reshape(()).item()


def as_number(value, what: str) -> float:
    """``value`` as a float (numpy/torch scalars accepted); a non-number fails with a message naming ``what``."""
    answered(value)
    try:
        v = float(_scalar(value))
    except (TypeError, ValueError, OverflowError):
        raise ExerciseFailed(f"{what}: expected a number, got {value!r}") from None
    if v != v:
        raise ExerciseFailed(f"{what}: got NaN")
    return v


def as_int(value, what: str) -> int:
    """``value`` as an int: ``32``, ``32.0``, ``np.int64(32)`` and a one-element tensor are accepted; ``2.9`` fails with
    "an integer, got 2.9" (never silently truncated)."""
    answered(value)
    try:
        raw = _scalar(value)
    except (TypeError, ValueError):
        raw = None
    if isinstance(raw, int):
        return raw
    v = as_number(value, what)
    if v in (float("inf"), float("-inf")) or v != int(v):
        raise ExerciseFailed(f"{what}: an integer, got {fmt(v)}")
    return int(v)


def fmt(x: float, ref: float | None = None) -> str:
    """``x`` with enough significant digits to tell it from ``ref`` (never "gave 1.9, expected 1.9")."""
    x = float(x)
    if ref is None or x == ref:
        return f"{x:.6g}"
    for digits in range(4, 18):
        a, b = f"{x:.{digits}g}", f"{float(ref):.{digits}g}"
        if a != b:
            return a
    return repr(x)


def fmt_pair(got: float, want: float) -> tuple[str, str]:
    """``got`` and ``want`` printed with the same number of digits, enough to show that they differ."""
    got, want = float(got), float(want)
    for digits in range(4, 18):
        a, b = f"{got:.{digits}g}", f"{want:.{digits}g}"
        if a != b or got == want:
            return a, b
    return repr(got), repr(want)


def within(value, target: float, rel: float, what: str, unit: str = "") -> None:
    """Accept a predicted number within ``rel`` (relative) of ``target``; the message shows both."""
    v = as_number(value, what)
    u = f" {unit}" if unit else ""
    a, b = fmt_pair(v, target)
    band = f"±{rel:.0%}" if rel >= 0.01 else f"±{rel:.2g} relative"
    expect(
        abs(v - target) <= rel * abs(target),
        f"{what}: you predicted {a}{u}, this run measured {b}{u} (accepted band {band})",
    )


# --------------------------------------------------------------------------------------------
# Running a check from a notebook
# --------------------------------------------------------------------------------------------


def check(id: str, *args, **kwargs) -> None:
    """Check the answer to exercise ``id``; prints ✅ / "not attempted yet", raises on a wrong answer.

    Returns nothing, so a check cell shows its message and no stray value.
    """
    from course_lib import report

    ex = lookup(id)
    try:
        ex.fn(*args, **kwargs)
    except NotAttempted as e:
        why = f" ({e})" if str(e) else ""
        print(f"⏳ {ex.id} not attempted yet{why}: fill in the cell above and run this check again.")
        report.record_exercise(ex.id, "not_attempted")
        return
    except ExerciseFailed as e:
        report.record_exercise(ex.id, "failed")
        raise ExerciseFailed(f"{ex.id} ({ex.title}): {e}") from None
    report.record_exercise(ex.id, "passed")
    print(f"✅ {ex.id} passed — {ex.title}")


# --------------------------------------------------------------------------------------------
# Notebooks and solutions (used by the runner; nothing here imports a lesson)
# --------------------------------------------------------------------------------------------


def exercises_in(nb) -> list[dict]:
    """``[{"id", "kind", "title"}]`` of the starter cells of a notebook (an nbformat node or a path)."""
    if not hasattr(nb, "cells"):
        import nbformat

        nb = nbformat.read(str(nb), as_version=4)
    found = []
    for cell in nb.cells:
        meta = cell.get("metadata", {})
        if TAG in meta.get("tags", []):
            info = dict(meta.get("exercise") or {})
            if not info.get("id"):
                raise ValueError(f"a cell tagged {TAG!r} has no exercise id in its metadata: {cell.source[:60]!r}")
            found.append({"id": info["id"], "kind": info.get("kind", "?"), "title": info.get("title", "")})
    return found


_SECTION = re.compile(r"^# %% \[(\d\d\.[a-z0-9_]+)\]\s*$", re.M)


def load_solutions(path: str | Path) -> dict[str, str]:
    """``{id: source}`` from a solutions file whose sections start with ``# %% [NN.slug]`` lines."""
    text = Path(path).read_text(encoding="utf-8")
    parts = _SECTION.split(text)
    out: dict[str, str] = {}
    for i in range(1, len(parts), 2):
        if parts[i] in out:
            raise ValueError(f"{path}: solution {parts[i]} appears twice")
        out[parts[i]] = parts[i + 1].strip("\n") + "\n"
    return out


def inject_solutions(nb, solutions: dict[str, str]):
    """Replace each starter cell's source with its solution; a missing solution raises ``KeyError``."""
    missing = [e["id"] for e in exercises_in(nb) if e["id"] not in solutions]
    if missing:
        raise KeyError(f"no solution for {', '.join(missing)}")
    for cell in nb.cells:
        meta = cell.get("metadata", {})
        if TAG in meta.get("tags", []):
            cell.source = solutions[meta["exercise"]["id"]].rstrip("\n")
    return nb
