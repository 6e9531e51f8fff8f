"""``BertMultitask``: a BERT backbone with an area-classification head and a GlobalPointer NER head.

Introduced in ``01_torchscript_triton.ipynb``. ``forward(input_ids, token_type_ids, attention_mask)``
returns ``(cls_logits [B, n_classes], ner_logits [B, n_types, L, L])`` — the two outputs the deployed
service returns. The backbone is a ``transformers.BertModel`` built from a config (no download):
``small`` (4 layers, hidden 256) for CPU, ``base`` (bert-base-chinese sizes) selectable.

GlobalPointer (Su Jianlin, 2021) scores every (start, end) token pair per entity type: a dense layer
gives a query and a key per token and type, optional rotary position embedding (RoPE) makes the score
relative-position aware, ``einsum`` gives ``[B, types, L, L]`` span logits, padded positions and spans
with end < start (lower triangle) are masked to a large negative number.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from course_lib.deploy import import_transformers

SIZES = {
    # name: (layers, hidden, heads, intermediate)
    "tiny": (2, 128, 2, 512),
    "small": (4, 256, 4, 1024),
    "base": (12, 768, 12, 3072),  # bert-base-chinese
}
NEG = 1e12  # the mask value of the original GlobalPointer




def bert_config(vocab_size: int, size: str = "small", max_position_embeddings: int = 128, **overrides):
    """A ``transformers.BertConfig`` of a named size (tiny/small/base) for a vocabulary of ``vocab_size`` (notebook 01)."""
    BertConfig = import_transformers().BertConfig
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    layers, hidden, heads, inter = SIZES[size]
    kw = dict(
        vocab_size=vocab_size,
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=max_position_embeddings,
        type_vocab_size=2,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    kw.update(overrides)
    cfg = BertConfig(**kw)
    cfg._attn_implementation = "eager"  # plain matmul attention: traces the same everywhere
    return cfg


class GlobalPointer(nn.Module):
    """Span scorer: dense → (q, k) per entity type, optional RoPE, einsum, padding + lower-triangle masks (notebook 01)."""

    def __init__(self, hidden_size: int, num_types: int, head_size: int = 64, rope: bool = True):
        super().__init__()
        if head_size % 2:
            raise ValueError(f"head_size must be even for RoPE, got {head_size}")
        self.num_types, self.head_size, self.rope = num_types, head_size, rope
        self.dense = nn.Linear(hidden_size, num_types * head_size * 2)
        # inverse frequencies as a buffer: moves with .to(device), never a constant in the graph
        self.register_buffer("inv_freq", torch.pow(10000.0, -torch.arange(0, head_size, 2).float() / head_size),
                             persistent=False)

    def _rope(self, x: torch.Tensor, mask_f: torch.Tensor) -> torch.Tensor:
        # positions 0..L-1 from the mask's own shape and device: cumsum of ones, no arange(device=...)
        pos = torch.cumsum(torch.ones_like(mask_f[0]), dim=0) - 1.0  # [L]
        ang = pos[:, None] * self.inv_freq[None, :]  # [L, hs/2]
        cos = torch.repeat_interleave(torch.cos(ang), 2, dim=-1)[None, :, None, :]
        sin = torch.repeat_interleave(torch.sin(ang), 2, dim=-1)[None, :, None, :]
        x2 = torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape(x.shape)
        return x * cos + x2 * sin

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = hidden.shape
        out = self.dense(hidden).view(b, n, self.num_types, 2 * self.head_size)
        q, k = out[..., : self.head_size], out[..., self.head_size:]
        mask_f = attention_mask.to(hidden.dtype)  # [B, L]
        if self.rope:
            q, k = self._rope(q, mask_f), self._rope(k, mask_f)
        logits = torch.einsum("bmhd,bnhd->bhmn", q, k)  # [B, types, L, L]
        pad = mask_f[:, None, None, :] * mask_f[:, None, :, None]  # both ends must be real tokens
        logits = logits * pad - (1.0 - pad) * NEG
        tril = torch.tril(torch.ones_like(logits[0, 0]), diagonal=-1)  # end < start is not a span
        logits = logits - tril * NEG
        return logits / math.sqrt(self.head_size)


class BertMultitask(nn.Module):
    """BERT backbone + area classifier (pooled output) + GlobalPointer NER; returns (cls_logits, ner_logits) (notebook 01)."""

    def __init__(self, config, num_classes: int, num_types: int, head_size: int = 64, rope: bool = True,
                 dropout: float = 0.1, device_free_mask: bool = True):
        super().__init__()
        # True: build BERT's additive [B,1,1,L] mask here from the input (no device in the graph).
        # False: let transformers build it — its masking_utils calls mask.to(device=embeddings.device), which a
        # trace records as a constant Device (the CUDA-binding pitfall of notebook 01).
        self.device_free_mask = device_free_mask
        BertModel = import_transformers().BertModel
        self.config = config
        self.num_classes, self.num_types = num_classes, num_types
        self.bert = BertModel(config, add_pooling_layer=True)
        self.bert.loss_function = None  # our loss lives in train.py; unset, transformers warns when a trace reads it
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, num_classes)
        self.global_pointer = GlobalPointer(config.hidden_size, num_types, head_size, rope)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor):
        mask = attention_mask
        if self.device_free_mask:
            dtype = self.classifier.weight.dtype
            mask = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        out = self.bert(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=mask, return_dict=False)
        seq, pooled = out[0], out[1]
        cls_logits = self.classifier(self.dropout(pooled))
        ner_logits = self.global_pointer(self.dropout(seq), attention_mask)
        return cls_logits, ner_logits


def multilabel_crossentropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """GlobalPointer's loss: multi-label softmax cross-entropy over all spans of each (example, type) (notebook 01)."""
    b, t = logits.shape[:2]
    y_pred = logits.reshape(b * t, -1)
    y_true = targets.reshape(b * t, -1)
    y_pred = (1 - 2 * y_true) * y_pred
    y_neg = y_pred - y_true * NEG
    y_pos = y_pred - (1 - y_true) * NEG
    zeros = torch.zeros_like(y_pred[..., :1])
    neg_loss = torch.logsumexp(torch.cat([y_neg, zeros], dim=-1), dim=-1)
    pos_loss = torch.logsumexp(torch.cat([y_pos, zeros], dim=-1), dim=-1)
    return (neg_loss + pos_loss).mean()


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the model: names the missing, unexpected and wrong-shape keys (notebook 01)."""


def build_model(meta: dict) -> BertMultitask:
    """A fresh (untrained) ``BertMultitask`` from checkpoint metadata (``bert_config`` dict + head sizes) (notebook 01)."""
    cfg = import_transformers().BertConfig(**meta["bert_config"])
    cfg._attn_implementation = "eager"
    return BertMultitask(cfg, meta["num_classes"], meta["num_types"], meta.get("head_size", 64),
                         meta.get("rope", True))


def model_meta(model: BertMultitask, **extra) -> dict:
    """Everything needed to rebuild ``model`` (goes next to the state dict in a checkpoint) (notebook 01)."""
    cfg = model.config.to_dict()
    keep = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "type_vocab_size", "hidden_dropout_prob", "attention_probs_dropout_prob",
            "layer_norm_eps", "hidden_act", "pad_token_id", "initializer_range")
    return {"bert_config": {k: cfg[k] for k in keep if k in cfg}, "num_classes": model.num_classes,
            "num_types": model.num_types, "head_size": model.global_pointer.head_size,
            "rope": model.global_pointer.rope, **extra}


def save_checkpoint(model: BertMultitask, path: str | Path, half: bool = False, **extra) -> Path:
    """Save ``{"model": state_dict, "meta": {...}, **extra}`` (``half``: fp16 tensors, half the bytes) (notebook 01)."""
    sd = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
          for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": sd, "meta": model_meta(model), **extra}, path)
    return path


def extract_state_dict(obj) -> dict:
    """The state dict inside a checkpoint: a bare state dict, or the one under ``"model"`` / ``"state_dict"`` (notebook 01)."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise CheckpointError(
        f"not a checkpoint: expected a state dict or a dict with a 'model' key, got {type(obj).__name__}"
        + (f" with keys {sorted(obj)[:8]}" if isinstance(obj, dict) else "")
    )


def load_weights(model: nn.Module, checkpoint) -> nn.Module:
    """Load a bare or nested (``{"model": ...}``) state dict (or a path to one) into ``model``, strictly (notebook 01).

    Raises :class:`CheckpointError` naming every missing key, unexpected key and shape mismatch
    (``torch``'s own message stops at the first shape error). fp16 tensors are cast to the model's dtype.
    """
    obj = torch.load(checkpoint, map_location="cpu", weights_only=True) if isinstance(checkpoint, (str, Path)) else checkpoint
    sd = extract_state_dict(obj)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        lines = ["checkpoint does not fit the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:10])}"
                         f"{' …' if len(unexpected) > 10 else ''}")
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): " + "; ".join(shapes[:10]))
        lines.append("  (was it saved from a model of another size / vocabulary / number of labels?)")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
    return model


def load_checkpoint(path: str | Path) -> tuple[BertMultitask, dict]:
    """Rebuild the model from a checkpoint written by :func:`save_checkpoint`; returns (model in eval mode, dict) (notebook 01)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "meta" not in obj:
        raise CheckpointError(f"{path} has no 'meta' entry: build the model yourself and call load_weights()")
    model = build_model(obj["meta"])
    load_weights(model, obj)
    return model.eval(), obj
