"""Executes every notebook in notebooks/ through the runner with the cpu profile (run by .ci/run)."""

import json
import os
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT
from course_lib import runner

# the metric names each lesson's issue asks for (exact names; lesson 2 records one per strategy that ran)
REQUIRED_METRICS = {
    "01_torchscript_triton": ["l1.cls_accuracy", "l1.ner_f1", "l1.trace_max_abs_diff", "l1.traced_vs_eager_latency_ratio",
                              "l1.triton_batching_speedup"],
    "02_parallel_inference": ["l2.world_size", "l2.qps.*", "l2.parity_max_abs_diff.*"],
    "03_llm_quantization": ["l3.int8_weight_bytes_ratio", "l3.int4_weight_bytes_ratio", "l3.int4g_weight_bytes_ratio"]
    + [f"l3.ppl_{q}_{lang}" for q in ("fp32", "int8", "int4", "int4g") for lang in ("zh", "en")]
    + ["l3.converter_max_abs_diff", "l3.tokens_per_s_fp32", "l3.tokens_per_s_int8", "l3.tokens_per_s_int4"],
    "04_tvm_autotuning": ["l4.gflops_naive", "l4.gflops_hand", "l4.gflops_numpy", "l4.gflops_best_template",
                          "l4.gflops_metaschedule", "l4.peak_gflops_estimate", "l4.relax_max_abs_diff",
                          "l4.relax_vs_torch_latency_ratio"],
    "05_yolov7_ptq": ["l5.map_fp32", "l5.map_int8_max", "l5.map_int8_percentile", "l5.map_int8_mse", "l5.map_int8_entropy",
                      "l5.map_int8_sensitive", "l5.map_onnx_int8", "l5.yolov7_ort_int8_speedup_bs1", "l5.yolov7_ort_int8_speedup_bs8",
                      "l5.course_model_ort_static_int8_speedup_bs1", "l5.course_model_ort_static_int8_speedup_bs8",
                      "l5.images_selection", "l5.images_test"],
}


def missing_metrics(stem: str, recorded) -> list[str]:
    """Required names (``prefix.*`` = at least one) that ``recorded`` lacks."""
    import fnmatch

    return [m for m in REQUIRED_METRICS.get(stem, []) if not fnmatch.filter(list(recorded), m)]


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
        assert not missing_metrics(stem, doc["notebooks"][stem]["metrics"]), f"{stem}: metrics not recorded"


def test_required_metric_names_match_patterns():
    assert missing_metrics("05_yolov7_ptq", REQUIRED_METRICS["05_yolov7_ptq"]) == []
    assert missing_metrics("02_parallel_inference", ["l2.world_size", "l2.qps.tensor", "l2.parity_max_abs_diff.tensor"]) == []
    assert missing_metrics("02_parallel_inference", ["l2.world_size"]) == ["l2.qps.*", "l2.parity_max_abs_diff.*"]
