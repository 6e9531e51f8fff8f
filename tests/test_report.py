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
