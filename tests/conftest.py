"""Shared fixtures: the repository root and a clean report module state per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# CI=true: what would skip locally (a missing extra, missing weights) fails instead
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(autouse=True)
def _fresh_report_state(monkeypatch):
    """Each test starts with no recorded metrics and no side file."""
    from course_lib import report

    monkeypatch.delenv(report.ENV_VAR, raising=False)
    monkeypatch.setattr(report, "_metrics", {})
    monkeypatch.setattr(report, "_skipped", [])
    monkeypatch.setattr(report, "_exercises", {})


def require_extra(module: str, extra: str):
    """Import a lesson's optional dependency for a test module.

    Locally a missing package skips the module with the install command as the reason; in CI
    (``CI=true``) it fails, so a broken install can never turn a whole lesson green.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        how = f"pip install -e '.[{extra}]'"
        if IN_CI:
            pytest.fail(f"{module} is missing in CI (the '{extra}' extra must be installed: {how}): {e}", pytrace=False)
        pytest.skip(f"needs {module}: {how}", allow_module_level=True)


@pytest.fixture(scope="session")
def smollm2_cache():
    """Build the dequantised SmolLM2 cache once per session (1–3 min the first time), so the real-model tests always run
    (whichever test file comes first); skipped only where the weights package is absent, failed in CI."""
    from course_lib.llm import smollm2

    require_smollm2_gguf()
    return smollm2.ensure_cached(verbose=False)


def require_smollm2_gguf():
    """The shipped SmolLM2 GGUF's path: a skip where the weights package is absent, a failure in CI."""
    from course_lib.llm import smollm2

    try:
        return smollm2.gguf_path()
    except smollm2.ModelFilesMissing as e:
        if IN_CI:
            pytest.fail(f"SmolLM2 weights missing in CI: {e}", pytrace=False)
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def course_run(tmp_path_factory):
    """The whole course in the cpu profile, with every exercise's solution filled in (the CI run), once per session:
    tests/test_notebooks.py and tests/test_notebook_claims.py read the same executed notebooks."""
    from course_lib import runner

    out = Path(os.environ.get("COURSE_TEST_OUT", tmp_path_factory.mktemp("course")))
    status, doc = runner.run([], profile="cpu", out=out, progress=False, with_solutions=True)
    print((out / "report.md").read_text())
    return status, doc, out
