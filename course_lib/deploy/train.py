"""Training loop (progress bar via hw.progress) and evaluation (area accuracy, entity span F1) for ``BertMultitask``.

Introduced in ``01_torchscript_triton.ipynb``. The loss is cross-entropy on the area class plus
GlobalPointer's multi-label cross-entropy on the span logits; evaluation decodes spans with logit > 0
and compares them with the gold character spans (exact type + start + end: micro precision/recall/F1).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import torch

from course_lib.deploy.data import AREAS, ENTITY_TYPES
from course_lib.deploy.features import Features, decode_spans, input2feature, span_targets
from course_lib.deploy.model import BertMultitask, multilabel_crossentropy


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train` (notebook 01 sets them from its parameters cell)."""

    epochs: float = 8.0
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of steps
    max_seq_length: int = 64
    ner_weight: float = 1.0
    seed: int = 0
    max_seconds: float | None = None  # stop early (and say so) when the time budget is spent
    progress: bool = True
    device: str = "cpu"


@dataclass
class TrainResult:
    """What :func:`train` did: steps, seconds, per-step losses, whether the time budget stopped it (notebook 01)."""

    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    stopped_early: bool = False


def _batches(n: int, bs: int, rng: random.Random):
    idx = list(range(n))
    rng.shuffle(idx)
    for i in range(0, n, bs):
        yield idx[i:i + bs]


def train(model: BertMultitask, tokenizer, examples: list[dict], cfg: TrainConfig = TrainConfig()) -> TrainResult:
    """Train ``model`` in place on labelled ``examples`` with AdamW + linear warm-up/decay; a progress bar shows the steps (notebook 01)."""
    from course_lib import hw

    if not examples:
        raise ValueError("no training examples")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    dev = torch.device(cfg.device)
    model.to(dev)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    warm = max(1, int(cfg.warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    model.train()
    res = TrainResult(steps=0, seconds=0.0)
    t0 = time.perf_counter()
    bar = hw.progress(total=total, desc="train", disable=not cfg.progress, mininterval=1.0)
    while res.steps < total:
        for idx in _batches(len(examples), cfg.batch_size, rng):
            batch = [examples[i] for i in idx]
            f = input2feature(tokenizer, [e["text"] for e in batch], cfg.max_seq_length, warn=False)
            y_cls = torch.tensor([e["area_id"] for e in batch], device=dev)
            y_ner = span_targets(f, batch).to(dev)
            cls_logits, ner_logits = model(*(x.to(dev) for x in f.as_tuple()))
            loss = torch.nn.functional.cross_entropy(cls_logits, y_cls) + cfg.ner_weight * multilabel_crossentropy(
                ner_logits, y_ner)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            res.steps += 1
            res.losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{res.losses[-1]:.3f}")
            if res.steps >= total:
                break
            if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
                res.stopped_early = True
                break
        if res.stopped_early:
            print(f"note: time budget of {cfg.max_seconds:.0f}s spent after {res.steps}/{total} steps")
            break
    bar.close()
    res.seconds = time.perf_counter() - t0
    model.eval()
    return res


def span_f1(pred: list[list[dict]], gold: list[list[dict]]) -> dict:
    """Micro precision/recall/F1 of exact (type, start, end) spans, overall and per entity type (notebook 01)."""
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} predictions for {len(gold)} gold examples")

    def _key(i, e):
        return (i, e["type"], e["start"], e["end"])

    p = {_key(i, e) for i, es in enumerate(pred) for e in es}
    g = {_key(i, e) for i, es in enumerate(gold) for e in es}

    def _prf(ps, gs):
        tp = len(ps & gs)
        prec = tp / len(ps) if ps else (1.0 if not gs else 0.0)
        rec = tp / len(gs) if gs else (1.0 if not ps else 0.0)
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        return {"precision": prec, "recall": rec, "f1": f1, "support": len(gs)}

    out = {"all": _prf(p, g)}
    for t in ENTITY_TYPES:
        out[t] = _prf({k for k in p if k[1] == t}, {k for k in g if k[1] == t})
    return out


@torch.no_grad()
def predict(model, tokenizer, texts: list[str], max_seq_length: int = 64, batch_size: int = 64):
    """(area ids, entity lists) for ``texts`` with an eager or traced model (notebook 01)."""
    areas, ents = [], []
    dev = next(iter(model.parameters())).device
    for i in range(0, len(texts), batch_size):
        f = input2feature(tokenizer, texts[i:i + batch_size], max_seq_length, warn=False)
        cls_logits, ner_logits = model(*(x.to(dev) for x in f.as_tuple()))
        areas += cls_logits.argmax(-1).tolist()
        ents += decode_spans(ner_logits, f)
    return areas, ents


def evaluate(model, tokenizer, examples: list[dict], max_seq_length: int = 64) -> dict:
    """Area accuracy and span F1 (overall + per type) of ``model`` on labelled ``examples`` (notebook 01)."""
    areas, ents = predict(model, tokenizer, [e["text"] for e in examples], max_seq_length)
    acc = sum(int(a == e["area_id"]) for a, e in zip(areas, examples)) / len(examples)
    f1 = span_f1(ents, [e["entities"] for e in examples])
    return {"cls_accuracy": acc, "ner_f1": f1["all"]["f1"], "per_type": f1, "n": len(examples)}


def per_type_frame(metrics: dict):
    """A pandas table of precision/recall/F1/support per entity type (from :func:`evaluate`) (notebook 01)."""
    import pandas as pd

    return pd.DataFrame(metrics["per_type"]).T


def train_shipped_checkpoint(out=None, epochs: float = 8.0, max_seconds: float | None = None) -> dict:
    """Re-train the tiny checkpoint shipped in ``data/addresses/bert_multitask_tiny.pt`` (≈5 min on one CPU core) (notebook 01).

    Same recipe as the committed file (seed 0, tiny size, 8 epochs, lr 1e-3, batch 32, one thread); saved as fp16.
    Returns the test metrics. Bit-identity with the committed file is not promised (float summation order).
    """
    from pathlib import Path

    from course_lib.deploy import data as D
    from course_lib.deploy.features import load_tokenizer
    from course_lib.deploy.model import bert_config, save_checkpoint

    torch.set_num_threads(1)
    tok = load_tokenizer()
    torch.manual_seed(0)
    model = BertMultitask(bert_config(len(tok), "tiny"), len(AREAS), len(ENTITY_TYPES))
    res = train(model, tok, D.load_split("train"), TrainConfig(epochs=epochs, max_seconds=max_seconds))
    out = Path(out) if out else D.default_dir() / "bert_multitask_tiny.pt"
    save_checkpoint(model, out, half=True, train={"steps": res.steps, "seconds": res.seconds, "epochs": epochs})
    ev = evaluate(model, tok, D.load_split("test"))
    print(f"wrote {out}: test accuracy {ev['cls_accuracy']:.4f}, span F1 {ev['ner_f1']:.4f}")
    return ev


__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "predict", "span_f1", "per_type_frame",
           "Features"]


if __name__ == "__main__":
    import sys

    train_shipped_checkpoint(sys.argv[1] if len(sys.argv) > 1 else None)
