"""Run the course's GPU check (or its tests) on a GPU box that reaches no package registry.

Standard library only: it runs before any carried package is importable. On the machine with the
registry first run ``make gpu-check-wheels`` (small wheels into ``.whl/``), carry the checkout with
``.whl/`` to the GPU box, then from the checkout there::

    python3 ci/gpu_box.py check      # course gpu-check --out data/gpu-check (report.md/json)
    python3 ci/gpu_box.py test       # pytest -m "not notebooks" (lessons whose packages are absent skip)
    python3 ci/gpu_box.py env        # only install the missing wheels and print the PYTHONPATH to use

The box's own Python and its own torch are used. Each carried wheel whose distribution the box lacks is
installed into ``.whl/site`` (nothing in the box's site-packages changes); the box's own packages are
never shadowed. Extra arguments go to the command (e.g. ``check l1 l3``, ``test tests/test_hw.py``).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
SITE = WHEELS / "site"


def dist_name(wheel: Path) -> str:
    return wheel.name.split("-")[0]


def missing_wheels(folder: Path = WHEELS) -> list[Path]:
    """Carried wheels whose distribution is not installed for this Python (nor already in .whl/site)."""
    out = []
    for w in sorted(folder.glob("*.whl")):
        name = dist_name(w)
        try:
            md.version(name)
            continue
        except md.PackageNotFoundError:
            pass
        if any(SITE.glob(f"{name}-*.dist-info")):
            continue
        out.append(w)
    return out


def install(wheels: list[Path]) -> None:
    """Unpack wheels into .whl/site (what ``pip install --target`` does for these plain wheels)."""
    SITE.mkdir(parents=True, exist_ok=True)
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            z.extractall(SITE)
        print(f"gpu_box: installed {w.name} into {SITE}")


def environment() -> dict:
    env = dict(os.environ)
    parts = [str(ROOT), str(SITE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("COURSE_CACHE", str(ROOT / "build" / "cache"))
    return env


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    what = argv.pop(0) if argv else "check"
    if what not in ("check", "test", "env"):
        print(f"gpu_box: unknown command {what!r} (check, test or env)", file=sys.stderr)
        return 2
    if not WHEELS.is_dir():
        print("gpu_box: no .whl/ folder: run `make gpu-check-wheels` where a registry is reachable and carry .whl/",
              file=sys.stderr)
    else:
        install(missing_wheels())
    env = environment()
    if what == "env":
        print(f"export PYTHONPATH={env['PYTHONPATH']}")
        return 0
    if what == "check":
        cmd = [sys.executable, "-m", "course_lib", "gpu-check", "--out", str(ROOT / "data" / "gpu-check"), *argv]
    else:
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "not notebooks", *argv]
    print("gpu_box:", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
