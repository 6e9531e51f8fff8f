"""The model every strategy of ``02_parallel_inference.ipynb`` runs: BertForMaskedLM from a config.

bert-base with the Chinese vocabulary (21128 tokens) and *random* weights: nothing is downloaded.
Every rank builds the same weights from the same seed, so outputs can be compared bit for bit
(up to floating-point reassociation) with the single-device model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# name -> (hidden, layers, heads, intermediate); vocab 21128 = bert-base-chinese
PRESETS: dict[str, dict] = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "tiny": dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=2, intermediate_size=128),
}
VOCAB_SIZE = 21128


def _transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "lesson 2 needs transformers: pip install -e '.[parallel]'"
        ) from e
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
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), dict(self.meta))


def make_batch(batch: int, seq_len: int, vocab_size: int = VOCAB_SIZE, seed: int = 1) -> Batch:
    """Random token ids ``[batch, seq_len]`` from a fixed seed (every rank draws the same batch) (02)."""
    import torch

    if batch < 1 or seq_len < 1:
        raise ValueError(f"batch and seq_len must be >= 1, got batch={batch}, seq_len={seq_len}")
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab_size, (batch, seq_len), generator=g)
    return Batch(ids)


def reference_logits(model_config, batch: Batch, seed: int = 0):
    """The single-device fp32 logits every strategy is compared with (02)."""
    import torch

    model = build_model(model_config, seed=seed)
    with torch.no_grad():
        return model(input_ids=batch.input_ids).logits


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
