"""Executes every notebook in notebooks/ through the runner with the cpu profile (run by .ci/run)."""

import json
import os
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT
from course_lib import runner


@pytest.mark.notebooks
@pytest.mark.slow
def test_every_notebook_runs_in_the_cpu_profile(tmp_path):
    out = Path(os.environ.get("COURSE_TEST_OUT", tmp_path / "course"))
    status, doc = runner.run([], profile="cpu", out=out, progress=False)
    print((out / "report.md").read_text())
    failed = {k: v["error"] for k, v in doc["notebooks"].items() if v["status"] == "failed"}
    assert not failed, f"notebooks failed (executed copies in {out}): {json.dumps(failed, indent=1)}"
    assert status == 0
    expected = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert set(doc["notebooks"]) == expected
    for stem in expected:  # a notebook that plots must carry its figures in the executed copy
        nb = nbformat.read(out / f"{stem}.ipynb", as_version=4)
        plots = any("plt." in c.source for c in nb.cells if c.cell_type == "code")
        images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
        assert images or not plots, f"{stem}: plots but no figure in the executed notebook"
