import json

import numpy as np
import pytest

from course_lib import report


def test_record_keeps_last_value_and_writes_side_file(tmp_path, monkeypatch):
    side = tmp_path / "m.json"
    monkeypatch.setenv(report.ENV_VAR, str(side))
    report.record("l1.cls_accuracy", 0.5, "fraction")
    report.record("l1.cls_accuracy", np.float32(0.75), "fraction")
    report.record("l2.qps.tensor", 12)
    data = json.loads(side.read_text())
    assert data["metrics"] == {
        "l1.cls_accuracy": {"value": 0.75, "unit": "fraction"},
        "l2.qps.tensor": {"value": 12.0, "unit": ""},
    }
    assert report.metrics()["l1.cls_accuracy"]["value"] == 0.75
    assert report.read_side_file(side)[0] == data["metrics"]
    assert report.read_side_file(tmp_path / "absent.json") == ({}, [])


@pytest.mark.parametrize("name", ["accuracy", "L1.acc", "l1.", "l1 .acc", "", None])
def test_bad_names_are_rejected(name):
    with pytest.raises(ValueError, match="dotted"):
        report.record(name, 1.0)


@pytest.mark.parametrize("value, err", [("0.5", TypeError), (True, TypeError), (float("nan"), ValueError), (float("inf"), ValueError)])
def test_bad_values_are_rejected_and_nothing_is_stored(value, err):
    with pytest.raises(err):
        report.record("l1.x", value)
    assert report.metrics() == {}


def test_reports_name_the_machine_and_its_cpu_features(tmp_path, monkeypatch):
    """report.json gets a "machine" entry (hw.summary_line + hw.cpu_features) and report.md a cpu line."""
    from course_lib import hw
    from course_lib.runner import NotebookResult, write_reports

    feats = {"arch": "x86_64", "vendor": "GenuineIntel", "model": "Test Xeon 9999", "isa": ["avx2", "avx512f", "amx_int8"],
             "torch_capability": "AVX2"}  # ATen's kernel path: lowered by ATEN_CPU_CAPABILITY (make test-kernel-paths)
    monkeypatch.setattr(hw, "cpu_features", lambda: dict(feats), raising=False)
    doc = write_reports(tmp_path, "cpu", "2026-12-05T00:00:00+00:00", {"00_x": NotebookResult("ok", 1.0)})
    saved = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert saved == doc and list(saved) == ["profile", "started", "machine", "notebooks"]
    assert saved["machine"] == {"summary": hw.summary_line(), **feats}
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert f"- machine: {hw.summary_line()}" in md
    assert "- cpu: Test Xeon 9999 (GenuineIntel, x86_64) · ISA: avx2, avx512f, amx_int8 · torch kernels: AVX2\n" in md
    monkeypatch.setattr(hw, "cpu_features", lambda: {k: v for k, v in feats.items() if k != "torch_capability"})
    assert "torch_capability" not in write_reports(tmp_path, "cpu", "t", {})["machine"]  # unknown: no key, no words
    assert "amx_int8\n" in (tmp_path / "report.md").read_text(encoding="utf-8")

    def broken():
        raise OSError("no /proc here")

    monkeypatch.setattr(hw, "cpu_features", broken)  # the report is still written, saying why the CPU is unknown
    doc = write_reports(tmp_path, "cpu", "t", {})
    assert doc["machine"] == {"summary": hw.summary_line(), "cpu_error": "OSError: no /proc here"}
    assert "- cpu:" not in (tmp_path / "report.md").read_text(encoding="utf-8")
    monkeypatch.delattr(hw, "cpu_features")  # before hw has it: the summary line only
    assert write_reports(tmp_path, "cpu", "t", {})["machine"] == {"summary": hw.summary_line()}
