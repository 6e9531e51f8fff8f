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


def train_shipped_checkpoint(out, epochs: float = 8.0, max_seconds: float | None = None) -> dict:
    """Re-train the tiny checkpoint shipped in ``data/addresses/bert_multitask_tiny.pt`` (≈5 min on one CPU core) (notebook 01).

    Same recipe as the committed file (seed 0, tiny size, 8 epochs, lr 1e-3, batch 32, one thread); saved as fp16
    to ``out`` (required: pass ``data.default_dir() / "bert_multitask_tiny.pt"`` to replace the committed file).
    Returns the test metrics. Bit-identity with the committed file is not promised (float summation order).
    """
    from pathlib import Path

    from course_lib.deploy.model import save_checkpoint

    torch.set_num_threads(1)
    model, tok, res = _train_tiny(epochs, max_seconds)
    out = Path(out)
    save_checkpoint(model, out, half=True, train={"steps": res.steps, "seconds": res.seconds, "epochs": epochs})
    ev = evaluate(model, tok, _data().load_split("test"))
    print(f"wrote {out}: test accuracy {ev['cls_accuracy']:.4f}, span F1 {ev['ner_f1']:.4f}")
    return ev


def _data():
    from course_lib.deploy import data as D

    return D


def _train_tiny(epochs: float, max_seconds: float | None, progress: bool = True):
    """(model, tokenizer, TrainResult): the shipped recipe (seed 0, tiny size, lr 1e-3, batch 32) on the train split."""
    from course_lib.deploy.features import load_tokenizer
    from course_lib.deploy.model import bert_config

    tok = load_tokenizer()
    torch.manual_seed(0)
    model = BertMultitask(bert_config(len(tok), "tiny"), len(AREAS), len(ENTITY_TYPES))
    res = train(model, tok, _data().load_split("train"),
                TrainConfig(epochs=epochs, max_seconds=max_seconds, progress=progress))
    return model.eval(), tok, res


def export_model_pt(out, checkpoint=None, retrain: bool = False, epochs: float = 8.0, max_seconds: float | None = None,
                    save_checkpoint_to=None, max_seq_length: int = 64, progress: bool = True) -> dict:
    """Write lesson 1's served model ``model.pt`` (the traced TorchScript model) to ``out`` without the notebook (notebook 01).

    The model is the shipped checkpoint (or ``checkpoint``), or with ``retrain=True`` one trained now with the
    shipped recipe; it is traced on 8 dev addresses as notebook 01 does and checked against the eager model on
    64 held-out test addresses. ``save_checkpoint_to`` also saves the (retrained) weights as an fp16 checkpoint.
    Returns {"out", "checkpoint", "parity", "train_steps"}. This is ``python -m course_lib.deploy.train --out PATH``.
    """
    from pathlib import Path

    from course_lib.deploy import trace as tracing
    from course_lib.deploy.features import input2feature, load_tokenizer
    from course_lib.deploy.model import load_checkpoint, save_checkpoint

    D = _data()
    out = Path(out).expanduser()
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: name the file to write, e.g. {out / 'model.pt'}")
    steps = None
    if retrain:
        if checkpoint is not None:
            raise ValueError("--checkpoint and --retrain exclude each other (retrain starts from random weights)")
        model, tok, res = _train_tiny(epochs, max_seconds, progress)
        ev = evaluate(model, tok, D.load_split("test"), max_seq_length)
        steps, source = res.steps, (f"trained now: {res.steps} steps in {res.seconds:.0f} s, test area accuracy "
                                    f"{ev['cls_accuracy']:.4f}, span F1 {ev['ner_f1']:.4f}")
    else:
        ckpt = Path(checkpoint) if checkpoint is not None else D.default_dir() / "bert_multitask_tiny.pt"
        model, _ = load_checkpoint(ckpt)
        tok, source = load_tokenizer(), str(ckpt)
    model = model.float().eval()
    example = input2feature(tok, [r["text"] for r in D.load_split("dev")[:8]], max_seq_length, warn=False)
    held = input2feature(tok, [r["text"] for r in D.load_split("test")[-64:]], max_seq_length, warn=False)
    traced, _ = tracing.trace_model(model, example.as_tuple(), strict=True)
    par = tracing.parity(model, traced, held.as_tuple())
    if not (par["max_abs_diff"] < 1e-4 and par["argmax_equal"] and par["spans_equal"]):
        raise RuntimeError(f"the trace does not match the eager model: {par}")
    tracing.save_traced(traced, out)
    saved = None
    if save_checkpoint_to is not None:
        saved = save_checkpoint(model, save_checkpoint_to, half=True,
                                train={"steps": steps, "epochs": epochs} if retrain else {"from": source})
    return {"out": out, "checkpoint": saved, "source": source, "parity": par, "train_steps": steps}


__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "predict", "span_f1", "per_type_frame",
           "Features", "export_model_pt"]


def build_parser():
    """The command line of ``python -m course_lib.deploy.train`` (argparse; ``--help`` lists every option)."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m course_lib.deploy.train",
        description="Write lesson 1's served model (model.pt, traced TorchScript) without running notebook 01: "
                    "the shipped tiny checkpoint by default, or one trained now with --retrain (≈5 min on one core). "
                    "Writes only the files named by --out and --save-checkpoint.",
        epilog="then: python -m course_lib.deploy.serve --model PATH",
    )
    p.add_argument("--out", required=True, metavar="PATH",
                   help="the model.pt file to write (its folder is created), e.g. "
                        "~/.cache/course_lib/l1/model_repository/address/1/model.pt (where the server looks by default)")
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="trace this checkpoint (save_checkpoint format) instead of data/addresses/bert_multitask_tiny.pt")
    p.add_argument("--retrain", action="store_true", help="train the tiny model now (seed 0, the shipped recipe) first")
    p.add_argument("--epochs", type=float, default=8.0, help="training epochs with --retrain (default 8, the shipped recipe)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="with --retrain: stop training after this many seconds (and say so)")
    p.add_argument("--save-checkpoint", metavar="CKPT",
                   help="also save the weights as an fp16 checkpoint here (e.g. to replace the shipped one)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: the shipped recipe)")
    p.add_argument("--no-progress", action="store_true", help="no training progress bar")
    return p


def main(argv=None) -> int:
    """``python -m course_lib.deploy.train --out PATH [--retrain ...]``: see :func:`build_parser` (notebook 01)."""
    import sys

    p = build_parser()
    args = p.parse_args(argv)
    if args.epochs <= 0:
        p.error(f"--epochs must be positive, got {args.epochs:g}")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    try:
        r = export_model_pt(args.out, checkpoint=args.checkpoint, retrain=args.retrain, epochs=args.epochs,
                            max_seconds=args.max_seconds, save_checkpoint_to=args.save_checkpoint,
                            progress=not args.no_progress)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"wrote {r['out']} (from {r['source']}; trace vs eager max |diff| {r['parity']['max_abs_diff']:.2g})")
    if r["checkpoint"]:
        print(f"wrote {r['checkpoint']}")
    print(f"serve it: python -m course_lib.deploy.serve --model {r['out']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
