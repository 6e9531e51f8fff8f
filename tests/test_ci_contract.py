"""In CI (``.ci/run`` exports ``CI=true``) a missing dependency fails its tests; locally it skips them with the fix."""

from __future__ import annotations

import ast

import pytest

import conftest
from conftest import ROOT


def test_no_test_skips_a_missing_import_behind_cis_back():
    """``pytest.importorskip`` skips in CI too: a broken install would turn a lesson's tests green. Tests use
    conftest's ``require_extra`` (or ``require_smollm2_gguf`` for the weights), which fail when ``CI=true``."""
    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "importorskip":
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, f"pytest.importorskip bypasses CI=true; use conftest.require_extra: {offenders}"


def test_require_extra_skips_locally_and_fails_in_ci(monkeypatch):
    assert conftest.require_extra("json", "dev").__name__ == "json"  # present: the module itself
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match=r"needs no_such_module_xyz: pip install -e '\.\[llm\]'"):
        conftest.require_extra("no_such_module_xyz", "llm")
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="no_such_module_xyz is missing in CI"):
        conftest.require_extra("no_such_module_xyz", "llm")


def test_ci_run_sets_ci_itself():
    text = (ROOT / ".ci" / "run").read_text()
    assert any(line.strip() == "export CI=true" for line in text.splitlines()), ".ci/run must export CI=true"
