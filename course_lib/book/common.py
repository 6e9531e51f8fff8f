"""What the book's modules share (paths of its templates, number formats): imported by all, importing none of them."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES = PACKAGE_DIR / "templates"
STATIC = PACKAGE_DIR / "static"


def format_seconds(seconds: float) -> str:
    """A wall time: ``12.3 s`` under a minute, ``4 min 05 s`` above."""
    seconds = float(seconds or 0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


def format_value(value) -> str:
    """A metric value with 4 significant digits (integers as integers)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if v.is_integer() and abs(v) < 1e15:
        return f"{int(v)}"
    return f"{v:.4g}"
