"""Load official ``yolov7.pt``-style weights into :class:`course_lib.detection.model.YOLOv7`.

Introduced in ``05_yolov7_ptq.ipynb`` (for readers who have the real weights; the course cannot
download them). The official checkpoint is a *pickled* ``models.yolo.Model`` (it needs the YOLOv7
repository to unpickle), so convert it once inside that repository::

    ckpt = torch.load("yolov7.pt", map_location="cpu")
    torch.save(ckpt["model"].float().state_dict(), "yolov7_state_dict.pt")

then ``load_official("yolov7_state_dict.pt")`` here. Keys (``model.0.conv.weight`` …
``model.105.m.2.weight``, ``model.105.anchors``) map one to one because the layer table is the yaml's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from course_lib.detection.model import Size, YOLOv7

_BASE_SPP = 512  # output channels of SPPCSPC in yolov7.yaml at width 1.0


def _unwrap(obj) -> dict:
    """The flat tensor dict inside a checkpoint: a state dict, or {'model'|'state_dict'|'ema': ...}."""
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in ("model", "ema", "state_dict"):
            inner = obj.get(key)
            if inner is None:
                continue
            if isinstance(inner, torch.nn.Module):
                return inner.float().state_dict()
            if isinstance(inner, dict):
                return _unwrap(inner)
    if isinstance(obj, torch.nn.Module):
        return obj.float().state_dict()
    raise ValueError("not a YOLOv7 checkpoint: expected a state dict or a dict with a 'model' / 'state_dict' entry")


def infer_config(sd: dict) -> dict:
    """nc, width, ELAN depth and anchors (pixels) of a yolov7-yaml-style state dict."""
    det_keys = [k for k in sd if k.endswith(".m.0.weight") and k.startswith("model.")]
    if "model.0.conv.weight" not in sd or not det_keys:
        raise ValueError("state dict does not look like YOLOv7 (no 'model.0.conv.weight' / detect head 'model.N.m.0.weight')")
    det_idx = max(int(k.split(".")[1]) for k in det_keys)
    na_no = sd[f"model.{det_idx}.m.0.weight"].shape[0]
    anchors = sd.get(f"model.{det_idx}.anchor_grid")
    if anchors is None:
        raise ValueError(f"state dict lacks model.{det_idx}.anchor_grid (the anchors in pixels)")
    nl, na = anchors.shape[0], anchors.shape[2]
    nc = na_no // na - 5
    cv7 = [k for k in sd if k.endswith(".cv7.conv.weight")]  # SPPCSPC output: 512 channels at width 1.0
    if not cv7:
        raise ValueError("state dict lacks the SPPCSPC block (model.N.cv7.conv.weight)")
    width = sd[cv7[0]].shape[0] / _BASE_SPP
    # layers: 106 at ELAN depth 4; each of the 4 backbone + 4 head ELANs adds one layer per extra 3x3 conv
    depth = 4 + (det_idx + 1 - 106) // 8
    return {"nc": int(nc), "width": float(width), "elan_depth": int(depth),
            "anchors": tuple(tuple(float(v) for v in a.reshape(-1).tolist()) for a in anchors.reshape(nl, -1))}


def load_official(path_or_sd, img_size: int = 640) -> YOLOv7:
    """Build a YOLOv7 whose size matches an official-style state dict and load it strictly (fp32, eval)."""
    obj = torch.load(Path(path_or_sd), map_location="cpu", weights_only=True) if isinstance(path_or_sd, (str, Path)) else path_or_sd
    sd = {k: v.float() if v.is_floating_point() else v for k, v in _unwrap(obj).items()}
    cfg = infer_config(sd)
    model = YOLOv7(nc=cfg["nc"], size=Size(cfg["width"], cfg["elan_depth"]), anchors=cfg["anchors"], img_size=img_size)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise ValueError(f"state dict does not match the yolov7 layer table: missing {missing[:5]}, unexpected {unexpected[:5]}")
    bad = [k for k in own if own[k].shape != sd[k].shape]
    if bad:
        raise ValueError(f"shape mismatch for {bad[:3]}: e.g. {bad[0]} {tuple(sd[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}")
    model.load_state_dict(sd, strict=True)
    return model.eval()
