"""llama.cpp as the peer: SmolLM2 from the shipped GGUF, requantised to Q8_0 / F32, timed greedy decoding (notebook 03).

``llama-cpp-python`` is built from source by pip. On CPUs with AMX the default (native) build
segfaults on the first generated token; build it with::

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON
    -DGGML_AVX512_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF" pip install llama-cpp-python==0.3.36
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from course_lib import bench, hw, paths

INSTALL = ('CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON '
           '-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF" '
           "pip install llama-cpp-python==0.3.36")
FTYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7}  # llama_ftype values of llama.cpp


_QUIET = None


def require_llama_cpp():
    """The ``llama_cpp`` module (its C-level log silenced), or hw.MissingDependency naming the build command."""
    global _QUIET
    llama_cpp = hw.require("llama_cpp", what="llama.cpp's Python binding", install=INSTALL)
    if _QUIET is None:  # llama_model_quantize logs every tensor to stderr from C: route llama.cpp's log to nowhere
        _QUIET = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(_QUIET, ctypes.c_void_p())
    return llama_cpp


def gguf_for(fmt: str = "Q4_1") -> Path:
    """Path of SmolLM2 in llama.cpp format ``fmt``: the shipped Q4_1 file, or a requantised copy in the cache."""
    from course_lib.llm import smollm2

    if fmt not in FTYPES:
        raise ValueError(f"format must be one of {tuple(FTYPES)}, got {fmt!r}")
    src = smollm2.gguf_path()
    if fmt == "Q4_1":
        return src
    dst = paths.cache_dir("llamacpp") / f"SmolLM2-135M-Instruct.{fmt}.gguf"
    if dst.exists() and dst.stat().st_size > 0:
        return dst
    llama_cpp = require_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[fmt]
    params.allow_requantize = True  # from the shipped Q4_1: the same (already 4-bit-rounded) weights
    params.nthread = max(1, min(2, os.cpu_count() or 1))
    tmp = dst.with_suffix(f".tmp{os.getpid()}")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize to {fmt} failed (return code {rc})")
    os.replace(tmp, dst)  # atomic: a concurrent reader never sees half a file
    return dst


def load(fmt: str = "Q4_1", threads: int = 2, n_ctx: int = 512):
    """A ``llama_cpp.Llama`` for SmolLM2 in format ``fmt`` (quiet, ``threads`` threads)."""
    llama_cpp = require_llama_cpp()
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return llama_cpp.Llama(model_path=str(gguf_for(fmt)), n_threads=threads, n_threads_batch=threads,
                           n_ctx=n_ctx, verbose=False)


def generate_ids(llm, prompt_ids: list[int], new_tokens: int) -> list[int]:
    """Greedy decode exactly ``new_tokens`` tokens after ``prompt_ids`` (EOS ignored), from an empty cache."""
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be >= 1, got {new_tokens}")
    llm.reset()
    out = []
    for tok in llm.generate(prompt_ids, temp=0.0, top_k=1, reset=True):
        out.append(int(tok))
        if len(out) >= new_tokens:
            break
    return out


def tokens_per_second(fmt: str, prompt: str, new_tokens: int = 64, threads: int = 2, warmup: int = 1,
                      repeat: int = 3, llm=None) -> bench.BenchResult:
    """bench result of generating ``new_tokens`` greedy tokens (prompt prefill included) with llama.cpp ``fmt``."""
    llm = llm or load(fmt, threads=threads)
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    return bench.benchmark(lambda: generate_ids(llm, ids, new_tokens), name=f"llama.cpp {fmt}", items=new_tokens,
                           unit="tokens", warmup=warmup, repeat=repeat, extra={"format": fmt, "threads": threads})
