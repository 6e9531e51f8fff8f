"""Decoding benchmark: our fp32 / reference / fast quantized SmolLM2 next to llama.cpp, same prompt (notebook 03).

Every variant greedily generates ``new_tokens`` tokens (EOS ignored) after the same prompt at batch 1, all of them
(llama.cpp's formats too) in the same interleaved rounds of ``bench.interleaved`` (warm-up rounds + timed rounds;
tokens/s at the median, p10–p90 spread).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from course_lib import bench, claims, hw

PROMPT = "The three most important ideas in computer science are"


@dataclass(frozen=True)
class Variant:
    """One of our model variants: float, or quantized with a kernel (and optionally the LM head)."""

    name: str
    bits: int | None = None
    group_size: int | None = None
    kernel: str = "reference"
    lm_head: bool | int = False  # True: the head in the same format; 8: the head in int8 per-row
    graph: bool = False  # True: the whole decoding step as one onnxruntime graph (course_lib.llm.onnx_decode)
    spin: bool = True  # graph only: onnxruntime's threads spin between operators (False: they sleep)
    fused_attention: bool | None = None  # graph only: GroupQueryAttention (None: for RoPE models; False: readable ops)

    def build(self, fp_model, threads: int | None = None):
        """A quantized copy of ``fp_model`` (the float model itself for bits=None), or its one-graph decoder with
        ``threads`` onnxruntime threads (None: torch's current count; eager variants use torch's threads)."""
        model = fp_model
        if self.bits is not None:
            model = copy.deepcopy(fp_model).quantize(self.bits, self.group_size, kernel=self.kernel, lm_head=self.lm_head)
        if self.graph:
            from course_lib.llm.onnx_decode import GraphDecoder

            return GraphDecoder(model, threads=threads, spin=self.spin, fused_attention=self.fused_attention)
        return model


def variants_for(group_size: int = 64) -> dict[str, Variant]:
    """Our named variants, the grouped int4 ones ("int4g …") at ``group_size`` (the notebook's parameter)."""
    g = group_size
    return {
        "fp32": Variant("fp32"),
        "int8 ref": Variant("int8 ref", 8),
        "int4g ref": Variant("int4g ref", 4, g),
        "int8 fast": Variant("int8 fast", 8, None, "fast"),
        "int4g fast": Variant("int4g fast", 4, g, "fast"),
        "int8 fast + head": Variant("int8 fast + head", 8, None, "fast", lm_head=True),
        "int4g fast + head": Variant("int4g fast + head", 4, g, "fast", lm_head=True),
        "int4g fast + int8 head": Variant("int4g fast + int8 head", 4, g, "fast", lm_head=8),
        "fp32 graph": Variant("fp32 graph", graph=True),
        "int8 graph + head": Variant("int8 graph + head", 8, None, "fast", lm_head=True, graph=True),
        "int8 graph + head, no spin": Variant("int8 graph + head, no spin", 8, None, "fast", lm_head=True, graph=True, spin=False),
        "int8 graph + head, attention as ops": Variant("int8 graph + head, attention as ops", 8, None, "fast", lm_head=True,
                                                       graph=True, fused_attention=False),
        "int4g graph + int8 head": Variant("int4g graph + int8 head", 4, g, "fast", lm_head=8, graph=True),
    }


OURS = variants_for(64)  # the defaults (group 64); pass group_size to the functions below for another one
LLAMA_CPP = ("F32", "Q8_0", "Q4_0", "Q4_1")


def _resolve(variants, group_size: int) -> list[Variant]:
    table = variants_for(group_size)
    out = []
    for v in variants:
        if isinstance(v, Variant):
            out.append(v)
        elif v in table:
            out.append(table[v])
        else:
            raise ValueError(f"unknown variant {v!r}; choose from {list(table)} or pass a Variant")
    return out


def model_device(model) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without parameters, e.g. a GraphDecoder)."""
    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return p.device if p is not None else torch.device("cpu")


def threads_used(model) -> str:
    """What a variant's kernels really ran on: per fast layer (1 or all threads, measured), the graph's session, or torch's."""
    from course_lib.llm import fast

    if hasattr(model, "source_model"):  # GraphDecoder: one onnxruntime session
        return f"{model.threads} (one onnxruntime session)"
    counts = fast.thread_counts(model)
    if counts:
        return f"fast layers: {fast.describe_threads(model)}; the rest torch × {torch.get_num_threads()}"
    return f"torch × {torch.get_num_threads()}"


def _check_counts(new_tokens: int, repeat: int, warmup: int) -> None:
    if new_tokens < 1 or repeat < 1 or warmup < 0:
        raise ValueError(f"need new_tokens >= 1, repeat >= 1, warmup >= 0; got {new_tokens}, {repeat}, {warmup}")


def generation(model, prompt_ids, new_tokens: int):
    """A callable that greedily generates exactly ``new_tokens`` tokens (EOS ignored) after ``prompt_ids``: one timed sample."""
    ids = prompt_ids.to(model_device(model))  # the gpu profile: token ids go to the model's device

    @torch.no_grad()
    def run():
        n = sum(1 for _ in model.stream_ids(ids, max_new_tokens=new_tokens, eos_token_id=None))
        assert n == new_tokens, f"generated {n} tokens, expected {new_tokens}"
    return run


def llama_peers(formats, prompt: str, new_tokens: int, threads: int) -> dict:
    """``{"llama.cpp FMT": (generation callable, MB of weights per token, extra columns)}`` to time beside our models."""
    from course_lib.llm import llamacpp, roofline

    out = {}
    for fmt in formats:
        llm = llamacpp.load(fmt, threads=threads)
        out[f"llama.cpp {fmt}"] = (llamacpp.generation(llm, prompt, new_tokens),
                                   roofline.gguf_weight_bytes(llamacpp.gguf_for(fmt)) / 1e6, {"format": fmt, "threads": threads})
    return out


def interleaved_models(models: dict, prompt_ids, new_tokens: int, warmup: int, repeat: int, progress: bool = True,
                    peers: dict | None = None) -> list[tuple[bench.BenchResult, float]]:
    """[(bench result, MB per token)] of each model (then each peer), timed in interleaved rounds.

    ``models``: name → a model with ``stream_ids`` (ours, any format); ``peers``: name → (callable, MB per token,
    extra) from :func:`llama_peers`. All of them go through one :func:`course_lib.bench.interleaved`: one generation
    of each per round, each after the others' threads are idle, so every ratio between two rows compares
    generations timed side by side under the same machine load.
    """
    from course_lib.llm import roofline

    peers = dict(peers or {})
    if set(peers) & set(models):
        raise ValueError(f"a peer has the name of a model: {sorted(set(peers) & set(models))}")
    calls = {name: generation(m, prompt_ids, new_tokens) for name, m in models.items()}
    calls.update({name: fn for name, (fn, _, _) in peers.items()})
    extra = {name: {"threads": threads_used(m)} for name, m in models.items()}
    extra.update({name: ex for name, (_, _, ex) in peers.items()})
    res = bench.interleaved(calls, rounds=repeat, warmup=warmup, items=new_tokens, unit="tokens", extra=extra,
                            progress=progress)
    mb = {name: roofline.weight_bytes_per_token(getattr(m, "source_model", m))["total"] / 1e6 for name, m in models.items()}
    mb.update({name: p[1] for name, p in peers.items()})
    return [(res[name], mb[name]) for name in calls]


def interleaved(fp_model, variants, prompt_ids, new_tokens: int, warmup: int, repeat: int, progress: bool = True,
                peers: dict | None = None):
    """:func:`interleaved_models` of each :class:`Variant` built from ``fp_model`` (and the ``peers``), in interleaved rounds."""
    _check_counts(new_tokens, repeat, warmup)  # before building anything
    models = {v.name: v.build(fp_model) for v in variants}
    return interleaved_models(models, prompt_ids, new_tokens, warmup, repeat, progress, peers)


def _row(r: bench.BenchResult, kind: str, mb: float) -> dict:
    ts = sorted(r.times_s)
    n = r.items
    return {"variant": r.name, "kind": kind, "tokens_per_s": r.throughput,
            "p10": n / bench.percentile(ts, 90), "p90": n / bench.percentile(ts, 10), "mb_per_token": mb,
            "threads": str(r.extra.get("threads", ""))}


def decode_benchmark(fp_model, tokenizer, variants=("fp32", "int8 ref", "int4g ref", "int8 fast", "int4g fast"),
                     llama_formats=LLAMA_CPP, prompt: str = PROMPT, new_tokens: int = 64, threads: int = 2,
                     warmup: int = 1, repeat: int = 3, progress: bool = True, group_size: int = 64):
    """DataFrame: tokens/s (median, p10, p90), MB of weights per token and the threads each really used, for our
    variants and llama.cpp's.

    Our variants and llama.cpp's formats are timed in the same interleaved rounds (:func:`interleaved_models`).

    ``variants``: names from :func:`variants_for` ``(group_size)`` (or :class:`Variant` objects); ``llama_formats``: llama.cpp
    formats to run, skipped (listed in ``df.attrs['skipped']``) when llama-cpp-python is not installed.
    ``speedup`` is tokens/s relative to our fp32 row when it is present.
    """
    import pandas as pd

    from course_lib.llm import llamacpp

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows, skipped = [], []
    try:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        todo = _resolve(variants, group_size)
        if llama_formats:
            try:
                llamacpp.require_llama_cpp()
            except hw.MissingDependency as e:
                skipped.append(str(e))
                llama_formats = ()
        peers = llama_peers(llama_formats, prompt, new_tokens, threads)
        for r, mb in interleaved(fp_model, todo, ids, new_tokens, warmup, repeat, progress, peers):
            rows.append(_row(r, "llama.cpp" if r.name in peers else "ours", mb))
    finally:
        torch.set_num_threads(old)
    df = pd.DataFrame(rows)
    if "fp32" in set(df.get("variant", [])):
        df["speedup"] = df["tokens_per_s"] / float(df.loc[df.variant == "fp32", "tokens_per_s"].iloc[0])
    df.attrs["skipped"] = skipped
    return df


def perplexities(fp_model, tokenizer, texts: dict[str, str], variants=("int8 ref", "int8 fast", "int4g ref", "int4g fast"),
                 window: int = 512, max_windows: int | None = 4, group_size: int = 64):
    """DataFrame: perplexity per variant and language (eval.perplexity, non-overlapping windows, the ids on the model's
    device); ``nll_<lang>`` holds each variant's per-token NLL (a tensor) for paired comparisons."""
    import pandas as pd

    from course_lib.llm.eval import token_nll

    ids = {lang: tokenizer(t, return_tensors="pt").input_ids[0] for lang, t in texts.items()}
    rows = []
    for v in _resolve(variants, group_size):
        model = v.build(fp_model)
        row = {"variant": v.name}
        for lang, x in ids.items():
            nll = token_nll(model, x, window=window, max_windows=max_windows)
            row[f"ppl_{lang}"] = math.exp(float(nll.mean()))
            row[f"nll_{lang}"] = nll
        rows.append(row)
        del model
    return pd.DataFrame(rows)


def versus(table, v: str, base: str, lo: str = "p10", hi: str = "p90", faster: str = "faster",
           slower: str = "slower") -> str:
    """'faster than base' / 'slower than base' only when the p10–p90 spreads of ``v`` and ``base`` in ``table``
    (indexed by variant, higher = better) do not overlap; otherwise 'not separable from base here'.

    The direction comes from :func:`course_lib.claims.separation` and the phrase is recorded as a claim, so the
    course run's audit checks it like every other comparison."""
    c = claims.compare_spreads(v, (table.loc[v, lo], table.loc[v, hi]), base, (table.loc[base, lo], table.loc[base, hi]),
                               higher_is_better=True, better=faster, worse=slower, record=False)
    return claims.worded(c, higher=f"{faster} than {base}: the p10–p90 spreads do not overlap",
                         lower=f"{slower} than {base}: the p10–p90 spreads do not overlap",
                         none=f"not separable from {base} here: the p10–p90 spreads overlap")
