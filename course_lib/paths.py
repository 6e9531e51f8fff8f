"""Where things live: the repository (notebooks, data, ci profiles) and the cache directory.

Used by every lesson to find ``data/`` and to cache expensive artifacts (dequantised weights,
tuning logs) outside the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def repo_root() -> Path:
    """The course repository: ``$COURSE_ROOT`` if set, else the folder holding ``course_lib/``."""
    env = os.environ.get("COURSE_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    return PACKAGE_DIR.parent


def notebooks_dir() -> Path:
    """The source notebooks (never written by the runner)."""
    return repo_root() / "notebooks"


def data_dir() -> Path:
    """Small committed data sets and checkpoints (``data/``)."""
    return repo_root() / "data"


def solutions_dir() -> Path:
    """The exercises' solutions (``solutions/NN_name.py``), kept out of the notebooks."""
    return repo_root() / "solutions"


def profiles_file() -> Path:
    """The declarative per-notebook parameters for each profile (``ci/profiles.yaml``)."""
    return repo_root() / "ci" / "profiles.yaml"


def cache_dir(*parts: str) -> Path:
    """A writable cache folder: ``$COURSE_CACHE`` or ``~/.cache/course_lib``, created on demand."""
    base = Path(os.environ.get("COURSE_CACHE", Path.home() / ".cache" / "course_lib")).expanduser()
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
