"""`make setup` builds llama.cpp (lesson 3's peer) with CPU flags chosen by architecture: x86 flags only on x86-64."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import IN_CI, ROOT

if shutil.which("make") is None:  # the README's setup needs make; CI has it
    if IN_CI:
        pytest.fail("make is missing in CI", pytrace=False)
    pytest.skip("needs make", allow_module_level=True)


def flags(*overrides: str) -> str:
    out = subprocess.run(["make", "-s", "--no-print-directory", "llama-flags", *overrides], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip()
    return out.split("LLAMA_CMAKE_ARGS=", 1)[1]


@pytest.mark.parametrize("arch", ["aarch64", "arm64"])
def test_arm_machines_get_no_x86_flags(arch):
    f = flags(f"ARCH={arch}")
    assert "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16" in f and "-DGGML_NATIVE=OFF" in f
    assert "AVX" not in f and "AMX" not in f and "F16C" not in f


@pytest.mark.parametrize("arch", ["x86_64", "amd64"])
def test_x86_gets_avx512_only_where_the_cpu_has_it_and_never_amx(arch):
    on = flags(f"ARCH={arch}", "X86_AVX512=ON", "X86_AVX512_VNNI=ON")
    off = flags(f"ARCH={arch}", "X86_AVX512=OFF", "X86_AVX512_VNNI=OFF")
    assert "-DGGML_AVX2=ON" in on and "-DGGML_AVX512=ON" in on and "-DGGML_AMX_INT8=OFF" in on
    assert "-DGGML_AVX2=ON" in off and "-DGGML_AVX512=OFF" in off and "-DGGML_AVX512_VNNI=OFF" in off
    assert "ARM_ARCH" not in on


def test_this_machine_gets_the_flags_of_its_own_cpu():
    import platform

    from course_lib import hw

    f = flags()
    feats = hw.cpu_features()
    if platform.machine() in ("x86_64", "AMD64"):
        assert ("-DGGML_AVX512=ON" in f) == ("avx512f" in feats["isa"])
    elif platform.machine() in ("aarch64", "arm64"):
        assert "ARM_ARCH" in f and "AVX" not in f


def test_setup_passes_the_chosen_flags_to_pip():
    out = subprocess.run(["make", "-n", "-B", "setup", "ARCH=aarch64", "VENV=/nonexistent-venv"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if "llama-cpp-python" in ln)
    assert line.startswith('CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=') and "AVX" not in line


def kernel_path_runs(*overrides: str) -> list[str]:
    """The pytest commands `make test` adds after the suite, one per torch CPU kernel path (setup not run: -n)."""
    out = subprocess.run(["make", "-n", "-B", "test", "VENV=/nonexistent-venv", *overrides], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [part.strip() for ln in out.splitlines() for part in ln.split(";") if "ATEN_CPU_CAPABILITY=" in part]


def test_make_test_reruns_the_lessons_tests_on_torchs_other_kernel_paths():
    """x86-64: AVX2 (where the CPU has it) and the portable kernels, oneDNN and MKL capped alike; ARM: the portable
    kernels only, no x86 caps. Each run has an Inductor cache of its own (a shared one serves kernels of another ISA)."""
    x86 = kernel_path_runs("ARCH=x86_64", "X86_AVX2=avx2")
    assert [r.split("ATEN_CPU_CAPABILITY=")[1].split()[0] for r in x86] == ["avx2", "default"]
    assert "ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2" in x86[0]
    assert "ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2" in x86[1]
    assert all("tests/test_l3_fast.py" in r and "tests/test_exercises_l3.py" in r and "tests/test_notebooks.py" not in r
               for r in x86)
    caches = [r.split("TORCHINDUCTOR_CACHE_DIR=")[1].split()[0] for r in x86]
    assert len(set(caches)) == 2 and all(c.endswith(("inductor-avx2", "inductor-default")) for c in caches)
    no_avx2 = kernel_path_runs("ARCH=x86_64", "X86_AVX2=")
    assert [r.split("ATEN_CPU_CAPABILITY=")[1].split()[0] for r in no_avx2] == ["default"]
    for arch in ("aarch64", "arm64"):
        arm = kernel_path_runs(f"ARCH={arch}")
        assert len(arm) == 1 and "ATEN_CPU_CAPABILITY=default" in arm[0]
        assert "ONEDNN" not in arm[0] and "MKL" not in arm[0]
    assert kernel_path_runs("KERNEL_PATHS=") == []
