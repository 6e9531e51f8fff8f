"""Shared fixtures: the repository root and a clean report module state per test."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(autouse=True)
def _fresh_report_state(monkeypatch):
    """Each test starts with no recorded metrics and no side file."""
    from course_lib import report

    monkeypatch.delenv(report.ENV_VAR, raising=False)
    monkeypatch.setattr(report, "_metrics", {})
    monkeypatch.setattr(report, "_skipped", [])
