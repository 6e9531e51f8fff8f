import time

import pytest

from course_lib import hw, report


def test_device_is_cpu_without_gpu():
    assert hw.gpu_count() == 0
    assert hw.device() == "cpu"
    assert hw.device("cpu") == "cpu"
    with pytest.raises(ValueError, match="not available"):
        hw.device("cuda:0")


def test_require_gpus_raises_skip_with_a_sentence():
    with pytest.raises(hw.SkipLesson) as e:
        hw.require_gpus(4, "the CUDA-stream sweep")
    assert str(e.value) == "skipped: the CUDA-stream sweep needs 4 GPUs (found 0)"
    assert hw.require_gpus(0) == 0


def test_have_gpus_shows_and_remembers_the_skip(capsys):
    assert hw.have_gpus(1, "TensorRT engines") is False
    out = capsys.readouterr().out
    assert "skipped: TensorRT engines needs 1 GPU (found 0)" in out
    assert report._skipped == ["skipped: TensorRT engines needs 1 GPU (found 0)"]


def _burn(seconds):
    """CPU work that releases the GIL (numpy matmul), so the sampler thread keeps its schedule."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((192, 192))
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a = np.tanh(a @ a)
    return a


def test_sampler_on_cpu_returns_sane_values():
    with hw.UtilizationSampler(interval=0.05) as s:
        _burn(1.0)
    stats = s.summary()
    assert s.backend == "psutil"
    assert set(stats) == {"cpu:system", "cpu:process"}
    proc = stats["cpu:process"]
    assert proc.samples >= 4  # 1 s at 0.05 s: about 20 on an idle machine; a loaded one may lose some
    assert 0 <= proc.util_mean <= proc.util_max <= 100
    # a busy loop on one thread uses about one core: well above idle on a 2..64-core machine
    assert proc.util_max > 100 / 64 / 2
    assert proc.mem_max_mib > 10  # this Python process is resident in tens of MiB at least
    assert stats["cpu:system"].mem_mean_mib > proc.mem_mean_mib / 2
    df = s.frame()
    assert list(df.columns) == ["t", "device", "util", "mem_mib"]
    assert len(df) == sum(v.samples for v in stats.values())


def test_sampler_short_window_still_reports_and_rejects_bad_interval():
    with hw.UtilizationSampler(interval=10) as s:
        pass
    assert all(v.samples == 1 for v in s.summary().values())
    with pytest.raises(ValueError, match="interval"):
        hw.UtilizationSampler(interval=0)
    with pytest.raises(RuntimeError, match="already running"):
        s.start()


def test_versions_never_raise_for_missing_packages(monkeypatch):
    monkeypatch.setattr(hw, "PACKAGES", [("torch", "torch", "2.13.0"), ("nope", "surely-not-installed-pkg", None)])
    rows = {r["package"]: r for r in hw.versions()}
    assert rows["python"]["ok"]
    assert rows["torch"]["version"].startswith("2.13.0") and rows["torch"]["ok"]
    assert rows["nope"] == {"package": "nope", "version": "not installed", "pinned": "", "ok": False}


def test_hardware_table_has_cpu_and_gpu_rows():
    rows = hw.hardware()
    assert rows[0]["device"] == "cpu" and rows[0]["memory_gib"] > 0
    assert rows[1]["device"] == "gpu" and rows[1]["name"].startswith("none")
