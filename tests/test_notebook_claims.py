"""The comparison sentences of an executed course run: each states a direction only where its spreads separate.

Reads what the notebooks recorded through ``course_lib.claims`` during the course run of ``tests/test_notebooks.py``
(the shared ``course_run`` fixture; ``COURSE_TEST_OUT`` keeps the folder): every ``.<notebook>.claims.json`` in the
run folder. A claim fails if it states a direction while its recorded p10–p90 ranges overlap, or if its sentence
does not appear in the executed notebook (the record and what the reader saw must be the same sentence).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from course_lib import claims


def _outputs_text(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    parts = []
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                parts.append("".join(o.get("text", "")))
            for mime in ("text/markdown", "text/plain", "text/html"):
                v = o.get("data", {}).get(mime)
                if v:
                    parts.append("".join(v) if isinstance(v, list) else v)
    return "\n".join(parts)


def claim_problems(out: Path, started: str | None = None) -> tuple[list[str], int]:
    """(problems, number of claims checked) for the claims recorded in a run folder.

    Side files older than the run's start (``started``, ISO time from report.json) are left over from an earlier
    run in the same folder and are skipped.
    """
    t0 = dt.datetime.fromisoformat(started).timestamp() - 1 if started else None
    problems, n = [], 0
    for side in sorted(out.glob(".*" + claims.SUFFIX)):
        if t0 is not None and side.stat().st_mtime < t0:
            continue
        stem = side.name[1: -len(claims.SUFFIX)]
        executed = out / f"{stem}.ipynb"
        text = _outputs_text(executed) if executed.exists() else ""
        for c in claims.read_side_file(side):
            n += 1
            why = claims.audit(c)
            if why:
                problems.append(f"{stem}: {why}")
            if executed.exists() and c.get("sentence", "") not in text:
                problems.append(f"{stem}: the recorded sentence is not in the executed notebook: {c.get('sentence')!r}")
    return problems, n


@pytest.mark.notebooks
@pytest.mark.slow
def test_comparison_sentences_state_only_directions_their_spreads_separate(course_run):
    _, doc, out = course_run
    problems, n = claim_problems(Path(out), doc.get("started"))
    assert n > 0, f"no comparison claims recorded in {out} (lessons 01, 02 and 05 write theirs with course_lib.claims)"
    assert not problems, "\n".join(problems)


def _write_run(tmp_path: Path, recorded: list[dict], shown: str) -> Path:
    (tmp_path / ".01_demo.claims.json").write_text(json.dumps({"claims": recorded}), encoding="utf-8")
    nb = {"cells": [{"cell_type": "code", "source": "", "outputs": [
        {"output_type": "display_data", "data": {"text/markdown": shown}, "metadata": {}}]}]}
    (tmp_path / "01_demo.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    return tmp_path


def test_a_run_with_honest_claims_passes(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "_claims", [])
    a = claims.compare("A", [10, 11, 12], "B", [20, 21, 22], better="faster", worse="slower")
    b = claims.compare("C", [10, 12, 14], "D", [11, 13, 15])
    out = _write_run(tmp_path, claims.recorded(), f"- batch 1: {a}.\n- batch 8: {b}.")
    assert claim_problems(out) == ([], 2)


def test_an_overlapping_but_directional_claim_fails_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "_claims", [])
    claims.compare("balanced split", [100, 120, 140], "equal split", [90, 110, 130], better="faster", worse="slower")
    lie = {**claims.recorded()[0], "direction": claims.HIGHER,
           "sentence": "balanced split was faster than equal split here"}
    out = _write_run(tmp_path, [lie], "balanced split was faster than equal split here")
    problems, n = claim_problems(out)
    assert n == 1 and len(problems) == 1 and "overlap" in problems[0] and problems[0].startswith("01_demo:")


def test_a_sentence_the_reader_never_saw_fails_and_stale_files_are_skipped(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(claims, "_claims", [])
    claims.compare("A", [1, 2, 3], "B", [7, 8, 9])
    out = _write_run(tmp_path, claims.recorded(), "some other text")
    problems, _ = claim_problems(out)
    assert problems and "not in the executed notebook" in problems[0]
    side = out / ".01_demo.claims.json"
    os.utime(side, (0, 0))  # written long before this run started
    assert claim_problems(out, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")) == ([], 0)
