"""Train the course detector on the generated shapes (CPU, minutes) and save/load its checkpoint.

Introduced in ``05_yolov7_ptq.ipynb``: the notebook loads the shipped checkpoint
(``data/detection/yolov7_tiny_shapes.pt``); ``train(...)`` redoes it in one call.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from course_lib import hw, paths
from course_lib.detection import data as D
from course_lib.detection.loss import YoloLoss
from course_lib.detection.model import SHAPES_ANCHORS, YOLOv7, build

CHECKPOINT = "yolov7_tiny_shapes.pt"
CHECKPOINT_KEYS = ("state_dict", "nc", "width", "elan_depth", "anchors", "img_size")  # what save_checkpoint writes


def checkpoint_path() -> Path:
    """Where the shipped checkpoint lives: ``data/detection/yolov7_tiny_shapes.pt``."""
    return paths.data_dir() / "detection" / CHECKPOINT


def targets_to_tensor(targets: list[np.ndarray], img_size: int, flip: np.ndarray | None = None) -> torch.Tensor:
    """Per-image [cls, x1, y1, x2, y2] pixel boxes → one (n, 6) tensor [image, cls, cx, cy, w, h] in 0..1."""
    rows = []
    for i, t in enumerate(targets):
        if not len(t):
            continue
        t = t.copy()
        if flip is not None and flip[i]:
            t[:, [1, 3]] = img_size - t[:, [3, 1]]
        cx, cy = (t[:, 1] + t[:, 3]) / 2, (t[:, 2] + t[:, 4]) / 2
        w, h = t[:, 3] - t[:, 1], t[:, 4] - t[:, 2]
        rows.append(np.stack([np.full(len(t), i), t[:, 0], cx / img_size, cy / img_size, w / img_size, h / img_size], 1))
    if not rows:
        return torch.zeros((0, 6))
    return torch.from_numpy(np.concatenate(rows).astype(np.float32))


def train(model: YOLOv7 | None = None, root=None, epochs: int = 30, batch_size: int = 32, lr: float = 2e-3,
          n_train: int | None = None, seed: int = 0, progress: bool = True, log_every: int = 0) -> YOLOv7:
    """Train ``model`` (default: a fresh tiny YOLOv7) on the shapes train split with AdamW + cosine LR, h-flips."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    root = D.build_dataset(root, sizes={"train": n_train or D.SPLITS["train"][0]}) if root is None else Path(root)
    images, targets = D.load_split(root, "train", n_train)
    model = model or build()
    loss_fn = YoloLoss(model)
    decay, no_decay = [], []
    for n_, p in model.named_parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    total = epochs * steps_per_epoch
    warm = min(200, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    model.train()
    bar = hw.progress(total=total, desc="train", disable=not progress)
    step, t0 = 0, time.time()
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        for s in range(0, len(images), batch_size):
            idx = order[s:s + batch_size]
            flip = rng.random(len(idx)) < 0.5
            x = D.to_tensor(images[idx])
            x[torch.from_numpy(flip)] = x[torch.from_numpy(flip)].flip(-1)
            t = targets_to_tensor([targets[i] for i in idx], images.shape[1], flip)
            loss, parts = loss_fn(model(x), t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item() / len(idx):.4f}", **{k: f"{v:.3f}" for k, v in parts.items()})
            if log_every and step % log_every == 0:
                print(f"step {step}/{total} epoch {epoch} loss {loss.item() / len(idx):.4f} {parts} {time.time() - t0:.0f}s", flush=True)
    bar.close()
    return model.eval()


def save_checkpoint(model: YOLOv7, path: str | Path | None = None, meta: dict | None = None) -> Path:
    """Save the model's state dict (fp16 to keep the file small) with its size, classes and anchors."""
    path = Path(path) if path else checkpoint_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    anchors = (model.detect.anchors * model.detect.stride.view(-1, 1, 1)).reshape(model.detect.nl, -1).tolist()
    torch.save({"state_dict": sd, "nc": model.nc, "width": model.size.width, "elan_depth": model.size.elan_depth,
                "anchors": anchors, "img_size": model.img_size, "classes": list(D.CLASSES), "meta": meta or {}}, path)
    return path


def load_checkpoint(path: str | Path | None = None) -> YOLOv7:
    """Load a checkpoint written by :func:`save_checkpoint` (default: the shipped one) as an fp32 eval model."""
    from course_lib.detection.model import Size

    path = Path(path) if path else checkpoint_path()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found; train one with course_lib.detection.train.train()")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ck, dict) or k not in ck]
    if missing:
        have = sorted(ck)[:6] if isinstance(ck, dict) else type(ck).__name__
        hint = (" — it looks like an official YOLOv7 checkpoint: load it with "
                "course_lib.detection.official.load_official()" if isinstance(ck, dict) and "model" in ck else "")
        raise ValueError(f"{path} is not a course detector checkpoint written by save_checkpoint(): it lacks "
                         f"{missing} (it has {have}){hint}")
    model = YOLOv7(nc=ck["nc"], size=Size(ck["width"], ck["elan_depth"]),
                   anchors=tuple(tuple(a) for a in ck["anchors"]), img_size=ck["img_size"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["state_dict"].items()})
    model.meta = ck.get("meta", {})
    return model.eval()
