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


class CacheDirError(ValueError):
    """The cache folder cannot be used (``$COURSE_CACHE`` names a file, an unwritable place ...); one-line message."""


def cache_dir(*parts: str) -> Path:
    """A writable cache folder: ``$COURSE_CACHE`` or ``~/.cache/course_lib``, created on demand.

    Raises :class:`CacheDirError` (a ValueError whose message says what to change) when it cannot be created.
    """
    env = os.environ.get("COURSE_CACHE") or ""  # unset or empty: the default
    base = Path(env or Path.home() / ".cache" / "course_lib").expanduser()
    path = base.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # FileExistsError / NotADirectoryError: a file on the way; PermissionError ...
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker else (e.strerror or type(e).__name__)
        where = f"COURSE_CACHE={env}" if env else "the default ~/.cache/course_lib"
        raise CacheDirError(f"cannot use the cache folder {path}: {why}. Set COURSE_CACHE to a writable folder "
                            f"(now {where})") from None
    return path
