"""The model every strategy of ``02_parallel_inference.ipynb`` runs: BertForMaskedLM from a config.

bert-base with the Chinese vocabulary (21128 tokens) and *random* weights: nothing is downloaded.
Every rank builds the same weights from the same seed, so outputs can be compared bit for bit
(up to floating-point reassociation) with the single-device model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from course_lib.quiet import quiet_transformers_import as _quiet_first_import

# name -> (hidden, layers, heads, intermediate); vocab 21128 = bert-base-chinese
PRESETS: dict[str, dict] = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "tiny": dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=2, intermediate_size=128),
}
VOCAB_SIZE = 21128


def _transformers():
    from course_lib import hw

    with _quiet_first_import():
        transformers = hw.require("transformers", "parallel", what="lesson 2")
        _ = transformers.BertForMaskedLM, transformers.BertConfig  # lazy attributes: load them here
        from transformers import quantizers  # noqa: F401  (imports torchao when installed)
    return transformers


def bert_config(preset: str = "small", **overrides):
    """A ``BertConfig`` for ``preset`` ('tiny', 'small', 'base') with ``overrides``; vocab 21128 (02)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r} (choose from {', '.join(PRESETS)})")
    kw = dict(vocab_size=VOCAB_SIZE, max_position_embeddings=512, hidden_act="gelu",
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **PRESETS[preset])
    kw.update(overrides)
    cfg = _transformers().BertConfig(**kw)
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(f"hidden_size {cfg.hidden_size} is not a multiple of num_attention_heads {cfg.num_attention_heads}")
    return cfg


def as_config(model_config):
    """Accept a ``BertConfig``, a preset name or a dict ``{"preset": ..., **overrides}`` (02)."""
    if isinstance(model_config, str):
        return bert_config(model_config)
    if isinstance(model_config, dict):
        d = dict(model_config)
        return bert_config(d.pop("preset", "small"), **d)
    return model_config


def build_model(model_config="small", seed: int = 0, device: str = "cpu"):
    """BertForMaskedLM with deterministic random weights (same ``seed`` → same weights on every rank) (02)."""
    import torch

    cfg = as_config(model_config)
    torch.manual_seed(seed)
    model = _transformers().BertForMaskedLM(cfg)
    return model.eval().to(device)


def param_count(model) -> int:
    """Number of parameters (tied weights counted once) (02)."""
    return sum(p.numel() for p in model.parameters())


@dataclass
class Batch:
    """One batch of token ids (no padding: every sequence has ``seq_len`` tokens) (02)."""

    input_ids: "object"  # torch.LongTensor [batch, seq_len]
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Sequences in the batch."""
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        """Tokens per sequence."""
        return int(self.input_ids.shape[1])


def make_batch(batch: int, seq_len: int, vocab_size: int = VOCAB_SIZE, seed: int = 1) -> Batch:
    """Random token ids ``[batch, seq_len]`` from a fixed seed (every rank draws the same batch) (02)."""
    import torch

    if batch < 1 or seq_len < 1:
        raise ValueError(f"batch and seq_len must be >= 1, got batch={batch}, seq_len={seq_len}")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab_size, (batch, seq_len), generator=g)
    return Batch(ids)


def reference_logits(model_config, batch: Batch, seed: int = 0, device: str = "cpu"):
    """The single-device fp32 logits every strategy is compared with, computed on ``device``, returned on CPU (02)."""
    import torch

    model = build_model(model_config, seed=seed, device=device)
    with torch.no_grad():
        out = model(input_ids=batch.input_ids.to(device)).logits.cpu()
    del model
    return out


def split_layers(num_layers: int, num_stages: int) -> list[range]:
    """Contiguous layer ranges for ``num_stages`` pipeline stages; earlier stages take the remainder (02).

    ``split_layers(5, 2) == [range(0, 3), range(3, 5)]``. Stage 0 also holds the embeddings and the
    last stage the MLM head, so a stage may hold 0 encoder layers only when there are more stages
    than layers — which is refused with a clear message.
    """
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    if num_layers < num_stages:
        raise ValueError(
            f"cannot split {num_layers} encoder layers over {num_stages} pipeline stages: "
            f"use at most {num_layers} stages (ranks) or a deeper model"
        )
    base, extra = divmod(num_layers, num_stages)
    out, start = [], 0
    for s in range(num_stages):
        n = base + (1 if s < extra else 0)
        out.append(range(start, start + n))
        start += n
    return out


def layer_flops(model_config, seq_len: int) -> float:
    """FLOPs of one encoder layer per sequence of ``seq_len`` tokens (matmuls only) (02)."""
    cfg = as_config(model_config)
    h, i, t = cfg.hidden_size, cfg.intermediate_size, seq_len
    return 2 * t * (4 * h * h + 2 * h * i) + 2 * 2 * t * t * h  # q,k,v,o + MLP + QK^T and PV


def head_flops(model_config, seq_len: int) -> float:
    """FLOPs of the MLM head (transform + vocab decoder) per sequence (02)."""
    cfg = as_config(model_config)
    h, v = cfg.hidden_size, cfg.vocab_size
    return 2 * seq_len * (h * h + h * v)


def stage_flops(model_config, bounds: list[range], seq_len: int) -> list[float]:
    """FLOPs per sequence of each pipeline stage (the last one includes the MLM head) (02)."""
    lf, hf = layer_flops(model_config, seq_len), head_flops(model_config, seq_len)
    return [len(b) * lf + (hf if s == len(bounds) - 1 else 0.0) for s, b in enumerate(bounds)]


def balanced_layers(model_config, num_stages: int, seq_len: int) -> list[range]:
    """Contiguous layer ranges minimising the slowest stage's FLOPs, counting the MLM head on the last stage (02).

    Splitting by layer count ignores that the last stage also runs the vocab-sized decoder; this
    moves layers off the last stage instead. Middle stages keep at least one layer; the last stage
    may hold only the head.
    """
    cfg = as_config(model_config)
    L, S = cfg.num_hidden_layers, num_stages
    if S < 1:
        raise ValueError(f"num_stages must be >= 1, got {S}")
    if L < max(1, S - 1):
        raise ValueError(f"cannot split {L} encoder layers over {S} pipeline stages")
    lf, hf = layer_flops(cfg, seq_len), head_flops(cfg, seq_len)
    INF = float("inf")
    # best[s][k]: min over splits of the first k layers into stages 0..s of the max stage cost
    best = [[INF] * (L + 1) for _ in range(S)]
    cut = [[0] * (L + 1) for _ in range(S)]
    for k in range(L + 1):
        best[0][k] = k * lf + (hf if S == 1 else 0.0)
    for s in range(1, S):
        last = s == S - 1
        for k in range(L + 1):
            for j in range(k + 1):  # stage s takes layers j..k-1
                n = k - j
                if n == 0 and not last:
                    continue
                cost = max(best[s - 1][j], n * lf + (hf if last else 0.0))
                if cost < best[s][k] - 1e-9:
                    best[s][k], cut[s][k] = cost, j
    bounds, k = [], L
    for s in range(S - 1, 0, -1):
        j = cut[s][k]
        bounds.append(range(j, k))
        k = j
    bounds.append(range(0, k))
    return bounds[::-1]
