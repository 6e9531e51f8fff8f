"""The lock (ci/constraints.txt): complete for pyproject.toml, used by every install, drift made visible."""

import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from course_lib import hw

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "ci" / "constraints.txt"


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = [Requirement(r) for r in meta["dependencies"]]
    for extra, items in meta["optional-dependencies"].items():
        reqs += [Requirement(r) for r in items if norm(Requirement(r).name) != norm(meta["name"])]
    return reqs


def test_lock_is_generated_exact_and_without_local_labels():
    text = LOCK.read_text(encoding="utf-8")
    assert text.startswith("# The course's lock") and "ci/lock.py" in text.splitlines()[1]
    pins = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    names = [norm(p.split("==")[0]) for p in pins]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][^\s+;]*", p) for p in pins), [p for p in pins if "+" in p]
    assert len(names) == len(set(names)), "a package is locked twice"
    assert hw.locked_versions()["torch"] == "2.13.0"  # '+cpu' dropped: the same line takes PyPI's CUDA build


def test_every_project_requirement_is_locked_within_its_range():
    lock = hw.locked_versions()
    problems = []
    for req in project_requirements():
        v = lock.get(norm(req.name))
        if v is None:
            problems.append(f"{req.name} ({req.specifier or 'any'}) is missing from ci/constraints.txt")
        elif not req.specifier.contains(Version(v), prereleases=True):
            problems.append(f"{req.name}=={v} in the lock does not satisfy pyproject's {req.specifier}")
    assert not problems, "lock out of date (run `make lock`, or `python ci/lock.py` after installing):\n" + "\n".join(problems)


def test_every_install_uses_the_lock():
    make = (REPO / "Makefile").read_text(encoding="utf-8")
    block = make.split("define install_course", 1)[1].split("endef", 1)[0]
    installs = [ln for ln in block.splitlines() if "pip install" in ln]
    assert len(installs) >= 4 and all("$(2)" in ln for ln in installs), installs
    assert "$(call install_course,$(BIN)/python,-c $(LOCK))" in make
    assert "llama-cpp-python==0.3.36" in block and "GGML_AMX_TILE=OFF" in make
    env = (REPO / "environment.yml").read_text(encoding="utf-8")
    assert "-c ci/constraints.txt" in env


def test_versions_show_the_locked_version_and_mark_differences():
    numpy_now = hw._dist_version("numpy")
    rows = {r["package"]: r for r in hw.versions({"numpy": numpy_now, "torch": "0.0.1"})}
    assert rows["numpy"]["locked"] == numpy_now and rows["numpy"]["ok"] and rows["numpy"]["mark"] == "✓"
    assert rows["torch"]["locked"] == "0.0.1" and not rows["torch"]["ok"] and rows["torch"]["mark"] == "✗"
    assert rows["deepspeed"]["locked"] == "" and rows["deepspeed"]["mark"] == ""  # not locked: no verdict
    drift = hw.drift({"numpy": numpy_now, "surely-not-installed-pkg": "1.0"})
    assert drift == [{"package": "surely-not-installed-pkg", "version": "not installed", "locked": "1.0", "mark": "✗"}]
    assert "-c ci/constraints.txt" in hw.FIX_COMMAND


def test_local_labels_match_and_no_lock_falls_back_to_pins(tmp_path):
    assert hw._same_version("2.13.0+cpu", "2.13.0") and not hw._same_version("2.13.1", "2.13.0")
    assert hw.locked_versions(tmp_path / "absent.txt") == {}
    rows = {r["package"]: r for r in hw.versions({})}
    assert rows["torch"]["locked"] == "2.13.0" and rows["numpy"]["locked"] == ""


def test_lock_script_follows_extras_and_skips_no_deps_roots():
    sys.path.insert(0, str(REPO / "ci"))
    try:
        import lock
    finally:
        sys.path.pop(0)
    pins, missing = lock.resolved_set(["pytest"])
    assert {"pytest", "pluggy", "iniconfig"} <= set(pins) and missing == []
    pins, _ = lock.resolved_set(["pytest"], no_deps=("pytest",))
    assert set(pins) == {"pytest"}
    assert lock.read_lock(LOCK)["torch"] == "2.13.0"
