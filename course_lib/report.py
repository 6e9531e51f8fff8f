"""Record a lesson's figures so the course report (``report.json`` / ``report.md``) shows them.

Every notebook calls :func:`record` for the numbers its issue names, e.g.::

    report.record("l1.cls_accuracy", 0.973, "fraction")

Under the ``course`` runner the metrics go to a JSON side file whose path the runner passes in
``$COURSE_METRICS_FILE``; the runner collects it after the notebook ran. In a plain Jupyter
session they are kept in memory (see :func:`metrics`) and shown in the cell output.
"""

from __future__ import annotations

import json
import math
import os
import re
from numbers import Real
from pathlib import Path

ENV_VAR = "COURSE_METRICS_FILE"
_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[A-Za-z0-9_\-]+)+$")

_metrics: dict[str, dict] = {}
_skipped: list[str] = []
_exercises: dict[str, str] = {}  # exercise id -> passed | failed | not_attempted


def _side_file() -> Path | None:
    path = os.environ.get(ENV_VAR)
    return Path(path) if path else None


def _flush() -> None:
    path = _side_file()
    if path is None:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"metrics": _metrics, "skipped": _skipped, "exercises": _exercises}, indent=1), encoding="utf-8")
    tmp.replace(path)  # atomic: the runner never reads half a file


def record(name: str, value: float, unit: str = "") -> float:
    """Store metric ``name`` (dotted, lesson-prefixed: ``l1.cls_accuracy``); the last value wins.

    ``value`` must be a finite real number (bools are rejected); returns it so a cell can show it.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"metric name {name!r} must be dotted and lesson-prefixed, e.g. 'l1.cls_accuracy'"
        )
    if hasattr(value, "item") and not isinstance(value, Real):  # numpy / torch scalars
        try:
            value = value.item()  # type: ignore[union-attr]
        except (TypeError, ValueError):
            pass
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"metric {name}: value must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"metric {name}: value must be finite, got {value}")
    if not isinstance(unit, str):
        raise TypeError(f"metric {name}: unit must be a string, got {type(unit).__name__}")
    _metrics[name] = {"value": value, "unit": unit}
    _flush()
    print(f"recorded {name} = {value:.6g}{' ' + unit if unit else ''}")
    return value


def note_skip(text: str) -> None:
    """Remember a skipped section (shown in ``report.md``); called by :func:`course_lib.hw.skip_note`."""
    if text not in _skipped:
        _skipped.append(text)
        _flush()


def record_exercise(exercise_id: str, status: str) -> None:
    """Remember the outcome of an exercise check (called by :func:`course_lib.exercises.check`)."""
    if status not in ("passed", "failed", "not_attempted"):
        raise ValueError(f"exercise status must be passed, failed or not_attempted, got {status!r}")
    _exercises[exercise_id] = status
    _flush()


def metrics() -> dict[str, dict]:
    """The metrics recorded in this process so far: ``{name: {"value": v, "unit": u}}``."""
    return {k: dict(v) for k, v in _metrics.items()}


def read_side_file(path: str | os.PathLike) -> tuple[dict, list[str]]:
    """(metrics, skipped sections) from a side file written by a notebook; empty if absent."""
    data = _read(path)
    return dict(data.get("metrics", {})), list(data.get("skipped", []))


def read_side_exercises(path: str | os.PathLike) -> dict[str, str]:
    """``{exercise id: status}`` from a side file written by a notebook; empty if absent."""
    return dict(_read(path).get("exercises", {}))


def _read(path: str | os.PathLike) -> dict:
    p = Path(path)
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}
