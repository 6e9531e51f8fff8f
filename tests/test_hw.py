import os
import time

import pytest
import torch

from course_lib import hw, report


# Facts of this machine, from torch itself: every test below holds on a CPU machine and on a GPU machine.
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
TOO_MANY = GPUS + 1  # a GPU count this machine never has


def test_device_follows_the_gpus_torch_sees():
    assert hw.gpu_count() == GPUS
    if GPUS:
        assert hw.device() == "cuda"  # cuda first whenever there is a GPU
    else:
        assert hw.device() in ("cpu", "mps")
    assert hw.device("cpu") == "cpu"  # the CPU is always available
    if GPUS:
        assert hw.device("cuda:0") == "cuda:0"
    else:
        with pytest.raises(ValueError, match="not available"):
            hw.device("cuda:0")
    with pytest.raises(ValueError, match="not available"):
        hw.device("xla:0")


def test_require_gpus_raises_skip_with_a_sentence():
    with pytest.raises(hw.SkipLesson) as e:
        hw.require_gpus(TOO_MANY, "the CUDA-stream sweep")
    n = "GPU" if TOO_MANY == 1 else "GPUs"
    assert str(e.value) == f"skipped: the CUDA-stream sweep needs {TOO_MANY} {n} (found {GPUS})"
    assert hw.require_gpus(0) == GPUS
    assert hw.require_gpus(GPUS) == GPUS


def test_have_gpus_shows_and_remembers_the_skip(capsys):
    assert hw.have_gpus(TOO_MANY, "TensorRT engines") is False
    n = "GPU" if TOO_MANY == 1 else "GPUs"
    sentence = f"skipped: TensorRT engines needs {TOO_MANY} {n} (found {GPUS})"
    assert sentence in capsys.readouterr().out
    assert report._skipped == [sentence]
    assert hw.have_gpus(GPUS, "nothing") is True


def _burn(seconds):
    """CPU work that releases the GIL (numpy matmul), so the sampler thread keeps its schedule."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((192, 192))
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a = np.tanh(a @ a)
    return a


def test_sampler_on_cpu_returns_sane_values():
    """The psutil backend (what a machine without an NVIDIA driver uses), forced here on any machine."""
    s = hw.UtilizationSampler(interval=0.05)
    s._handles = []  # as if NVML found no GPU
    with s:
        _burn(1.0)
    stats = s.summary()
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


def test_sampler_backend_matches_the_machine():
    with hw.UtilizationSampler(interval=0.05) as s:
        time.sleep(0.2)
    stats = s.summary()
    if hw._nvml() is not None and s._handles:
        assert s.backend == "pynvml" and all(k.startswith("cuda:") for k in stats)
    else:
        assert s.backend == "psutil" and set(stats) == {"cpu:system", "cpu:process"}


def test_versions_never_raise_for_missing_packages(monkeypatch):
    monkeypatch.setattr(hw, "PACKAGES", [("torch", "torch", "2.13.0"), ("nope", "surely-not-installed-pkg", None)])
    rows = {r["package"]: r for r in hw.versions({"torch": torch.__version__.split("+")[0]})}
    assert rows["python"]["ok"]
    assert rows["torch"]["version"] == torch.__version__ and rows["torch"]["ok"] and rows["torch"]["mark"] == "✓"
    assert rows["nope"] == {"package": "nope", "version": "not installed", "locked": "", "ok": True, "mark": ""}
    rows = {r["package"]: r for r in hw.versions({"surely-not-installed-pkg": "1.0"})}
    assert rows["nope"] == {"package": "nope", "version": "not installed", "locked": "1.0", "ok": False, "mark": "✗"}


def test_hardware_table_has_cpu_and_gpu_rows():
    rows = hw.hardware()
    assert rows[0]["device"] == "cpu" and rows[0]["memory_gib"] > 0
    gpu_rows = rows[1:]
    if hw._nvml() is None or all(r["device"] == "gpu" for r in gpu_rows):
        assert len(gpu_rows) == 1 and gpu_rows[0]["device"] == "gpu" and gpu_rows[0]["name"].startswith("none")
    else:
        assert all(r["device"].startswith("cuda:") and r["memory_gib"] > 0 for r in gpu_rows)


# ---------------------------------------------------------------- CPU features (pure parsers over fixture text)
from conftest import FIXTURES  # noqa: E402

CPUINFO = FIXTURES / "cpuinfo"


@pytest.mark.parametrize(
    "fixture, machine, vendor, model, has, lacks, label",
    [
        ("intel_emerald_rapids.txt", "x86_64", "Intel", "INTEL(R) XEON(R) PLATINUM 8581C CPU @ 2.10GHz",
         {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16"},
         {"neon"}, "AVX-512, VNNI, BF16, FP16; AMX-INT8/BF16"),
        ("amd_zen4_epyc.txt", "x86_64", "AMD", "AMD EPYC 9R14 96-Core Processor",
         {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, {"amx_tile", "amx_int8", "avx512_fp16"}, "AVX-512, VNNI, BF16; no AMX"),
        ("intel_avx2_laptop.txt", "x86_64", "Intel", "Intel(R) Core(TM) i7-8565U CPU @ 1.80GHz",
         {"sse4_2", "avx", "avx2", "fma", "f16c"}, {"avx512f", "avx512_vnni", "amx_int8"}, "AVX2 + FMA, no AVX-512; no AMX"),
        ("aws_graviton3.txt", "aarch64", "ARM", "Neoverse-V1 (e.g. AWS Graviton3)",
         {"neon", "dotprod", "i8mm", "bf16", "sve", "fp16"}, {"avx2", "sve2", "sme"}, "NEON, dotprod, i8mm, BF16, SVE"),
    ],
)
def test_parse_cpuinfo_names_vendor_model_and_isa(fixture, machine, vendor, model, has, lacks, label):
    info = hw.parse_cpuinfo((CPUINFO / fixture).read_text(), machine)
    assert info["vendor"] == vendor and info["model"] == model
    assert has <= set(info["isa"]) and not (lacks & set(info["isa"]))
    assert info["isa"] == sorted(info["isa"])  # a stable order for report.json
    assert hw.isa_label(info["isa"]) == label
    line = hw.cpu_summary({"arch": machine, **info, "logical_cpus": 2})
    assert line == f"{model} ({machine}: {label}), 2 threads"


def test_parse_sysctl_of_an_apple_silicon_mac():
    info = hw.parse_sysctl((CPUINFO / "apple_m2_sysctl.txt").read_text())
    assert info == {"vendor": "Apple", "model": "Apple M2", "isa": ["bf16", "dotprod", "fp16", "i8mm", "neon"]}
    assert hw.isa_label(info["isa"]) == "NEON, dotprod, i8mm, BF16"


def test_parse_sysctl_of_an_intel_mac():
    text = ("machdep.cpu.brand_string: Intel(R) Core(TM) i9-9880H CPU @ 2.30GHz\nmachdep.cpu.vendor: GenuineIntel\n"
            "machdep.cpu.features: FPU VME SSE SSE2 SSE3 SSSE3 FMA SSE4.1 SSE4.2 AVX1.0 F16C\n"
            "machdep.cpu.leaf7_features: SMEP ERMS AVX2 BMI1 BMI2\n")
    info = hw.parse_sysctl(text)
    assert info["vendor"] == "Intel" and info["isa"] == ["avx", "avx2", "f16c", "fma", "sse4_2"]


def test_unknown_or_empty_cpuinfo_gives_unknown_not_an_error():
    assert hw.parse_cpuinfo("", "x86_64") == {"vendor": "unknown", "model": "unknown", "isa": []}
    assert hw.parse_cpuinfo("", "aarch64")["isa"] == []
    assert hw.isa_label([]) == "no SIMD flags found"
    asahi = "processor : 0\nFeatures : fp asimd asimddp\nCPU implementer : 0x61\nCPU part : 0x023\n"
    assert hw.parse_cpuinfo(asahi, "aarch64") == {"vendor": "Apple", "model": "Apple part 0x023", "isa": ["dotprod", "neon"]}


def test_cpu_features_of_this_machine_agree_with_torch():
    """Whatever CPU runs the tests: the keys are there, and torch's own dispatch level is consistent with the flags."""
    import platform

    f = hw.cpu_features()
    assert {"arch", "vendor", "model", "isa", "torch_capability", "logical_cpus"} <= set(f)
    assert f["arch"] == platform.machine() and f["logical_cpus"] >= 1
    cap = f["torch_capability"].upper()
    if cap.startswith("AVX512"):
        assert "avx512f" in f["isa"]
    elif cap == "AVX2":
        assert "avx2" in f["isa"]
    line = hw.cpu_summary(f)
    assert f["arch"] in line and "\n" not in line


def test_thread_pools_and_blas_env(monkeypatch):
    pools = hw.thread_pools()
    assert isinstance(pools, list)
    for p in pools:
        assert {"user_api", "internal_api", "num_threads", "architecture"} <= set(p) and p["num_threads"] >= 1
    for k in hw.BLAS_ENV:
        monkeypatch.delenv(k, raising=False)
    assert hw.blas_env() == {}
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert hw.blas_env() == {"OPENBLAS_CORETYPE": "Haswell"}


def test_torch_runs_the_kernel_path_the_run_asked_for():
    """`make test` reruns the lessons' tests with ``ATEN_CPU_CAPABILITY=avx2`` and ``default``. torch ignores a value
    it does not know (with a warning) or one above this CPU, so a misspelled or unsupported path would re-test CI's own
    kernels under another name: the run must really be on the path it asked for, and cpu_features() must say so."""
    asked = os.environ.get("ATEN_CPU_CAPABILITY", "").strip()
    running = hw.cpu_features()["torch_capability"]
    assert running == str(torch.backends.cpu.get_cpu_capability())
    if asked:
        assert running.lower() == asked.lower(), f"asked for {asked!r}, torch runs {running!r}"
