"""Notebooks and profiles: which notebooks the course has and what ``ci/profiles.yaml`` passes each of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PROFILES = ("auto", "cpu", "gpu")
DEFAULT_CELL_TIMEOUT = 1800  # seconds, per cell; a notebook's profile entry may override it


class UsageError(Exception):
    """Bad input to the command: printed as one line, exit status 2."""

@dataclass
class NotebookSpec:
    """One source notebook and what ``ci/profiles.yaml`` says about it."""

    path: Path
    title: str
    extra: str = "core"
    needs: str = "cpu"
    timeout: dict = field(default_factory=dict)  # profile name -> seconds per cell
    params: dict = field(default_factory=dict)  # profile name -> parameters

    @property
    def stem(self) -> str:
        return self.path.stem


def notebook_title(path: Path) -> str:
    """The first Markdown heading of a notebook (its one-line title), or its file stem."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            if line.lstrip().startswith("#"):
                return line.lstrip("# ").strip()
    return path.stem


def load_profiles(path: Path) -> dict:
    """The ``notebooks:`` mapping of a profiles file (stem -> entry); a clear error if malformed."""
    import yaml

    if not path.exists():
        raise UsageError(f"profiles file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"profiles file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    entries = data.get("notebooks", {}) if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise UsageError(f"profiles file {path} needs a top-level 'notebooks:' mapping")
    return entries


def discover(notebooks: Path, profiles: Path) -> list[NotebookSpec]:
    """All ``NN_name.ipynb`` notebooks in ``notebooks`` (sorted), with their profile entries."""
    if not notebooks.is_dir():
        raise UsageError(f"notebooks folder not found: {notebooks}")
    entries = load_profiles(profiles)
    specs = []
    for path in sorted(notebooks.glob("*.ipynb")):
        entry = entries.get(path.stem) or {}
        _check_entry(path.stem, entry)
        specs.append(
            NotebookSpec(
                path=path,
                title=notebook_title(path),
                extra=str(entry.get("extra", "core")),
                needs=str(entry.get("needs", "cpu")),
                timeout=_timeouts(path.stem, entry.get("timeout", DEFAULT_CELL_TIMEOUT)),
                params={p: dict(entry.get(p) or {}) for p in ("cpu", "gpu")},
            )
        )
    return specs


def _check_entry(stem: str, entry) -> None:
    """A profile entry is a mapping whose ``cpu``/``gpu`` parameters are mappings too (else one clear line)."""
    if not isinstance(entry, dict):
        raise UsageError(f"profiles: {stem} must be a mapping (extra:, needs:, cpu:, gpu:), got {type(entry).__name__}")
    for p in ("cpu", "gpu"):
        if entry.get(p) is not None and not isinstance(entry[p], dict):
            raise UsageError(f"profiles: {stem}.{p} must be a mapping of parameters ({{name: value}}), got {entry[p]!r}")


def _timeouts(stem: str, value) -> dict:
    """``timeout: 600`` (both profiles) or ``timeout: {cpu: 600, gpu: 3600}`` -> {profile: seconds}."""
    raw = value if isinstance(value, dict) else {"cpu": value, "gpu": value}
    try:
        out = {p: int(raw.get(p, DEFAULT_CELL_TIMEOUT)) for p in ("cpu", "gpu")}
    except (TypeError, ValueError):
        raise UsageError(f"profiles: {stem}.timeout must be seconds or {{cpu: S, gpu: S}}, got {value!r}") from None
    if min(out.values()) <= 0:
        raise UsageError(f"profiles: {stem}.timeout must be positive, got {value!r}")
    return out


def select(specs: list[NotebookSpec], names: list[str]) -> list[NotebookSpec]:
    """The notebooks named (stem, file name, or unique prefix such as ``01``); all when none named."""
    if not names:
        return specs
    chosen: list[NotebookSpec] = []
    for name in names:
        key = Path(name).name.removesuffix(".ipynb")
        exact = [s for s in specs if s.stem == key]
        matches = exact or [s for s in specs if s.stem.startswith(key)]
        if len(matches) != 1:
            known = ", ".join(s.stem for s in specs) or "none"
            what = "is ambiguous" if matches else "is not a notebook of this course"
            raise UsageError(f"{name!r} {what} (notebooks: {known})")
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen


def resolve_profile(profile: str) -> str:
    """``auto`` -> ``gpu`` when torch sees a GPU, else ``cpu``; an unknown name is a :class:`UsageError`."""
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r} (choose from {', '.join(PROFILES)})")
    if profile == "auto":
        from course_lib import hw

        return "gpu" if hw.gpu_count() > 0 else "cpu"
    return profile

