"""Run a detector over images and score it with pycocotools' COCOeval (mAP@.5:.95, the COCO metric).

Introduced in ``05_yolov7_ptq.ipynb``. Works for anything that maps a float tensor (B, 3, H, W) to
decoded predictions (B, N, 5+nc): the PyTorch model, its fake-quantized version, or an onnxruntime
session wrapped by :func:`course_lib.ptq.onnx_utils.ort_predictor`.
"""

from __future__ import annotations

import contextlib
import io
from typing import Callable

import numpy as np
import torch

from course_lib import hw
from course_lib.detection.boxes import non_max_suppression
from course_lib.detection.data import to_tensor


@torch.no_grad()
def predict(fn: Callable, images: np.ndarray, batch_size: int = 32, conf_thres: float = 0.001,
            iou_thres: float = 0.65, max_det: int = 100) -> list[torch.Tensor]:
    """Detections per image, each (k, 6) [x1, y1, x2, y2, score, cls] clipped to the image, for uint8 images (N, H, W, 3).

    ``fn`` is a model (its images go to its device) or any callable on a float batch on the CPU; the detections
    come back on the CPU.
    """
    device = None
    if isinstance(fn, torch.nn.Module):
        fn.eval()
        device = next(fn.parameters(), torch.empty(0)).device  # a model on the GPU gets its images there
    out: list[torch.Tensor] = []
    for s in range(0, len(images), batch_size):
        x = to_tensor(images[s:s + batch_size])
        pred = fn(x if device is None else x.to(device))
        if isinstance(pred, (list, tuple)):
            raise ValueError("the model returned raw training maps; call model.eval() first")
        out += [clip_boxes(d, x.shape[-2], x.shape[-1]).cpu()
                for d in non_max_suppression(torch.as_tensor(pred), conf_thres, iou_thres, max_det)]
    return out


def clip_boxes(det: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clip [x1, y1, x2, y2, ...] boxes to the image (in place), as YOLOv7's ``test.py`` does before COCOeval.

    A box that sticks out of the image cannot match a ground-truth box there as well as its visible part does.
    """
    det[:, [0, 2]] = det[:, [0, 2]].clamp(0, width)
    det[:, [1, 3]] = det[:, [1, 3]].clamp(0, height)
    return det


def to_coco_results(dets: list[torch.Tensor], image_ids: list[int] | None = None) -> list[dict]:
    """COCO results json rows ({image_id, category_id, bbox [x, y, w, h], score}) from per-image detections."""
    image_ids = image_ids or list(range(1, len(dets) + 1))
    rows = []
    for img_id, d in zip(image_ids, dets):
        for x1, y1, x2, y2, score, cls in d.tolist():
            rows.append({"image_id": int(img_id), "category_id": int(cls) + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return rows


def coco_map(coco_gt, results: list[dict], verbose: bool = False) -> dict:
    """COCOeval bbox statistics: {"map": mAP@.5:.95, "map50": mAP@.5, "map75", "stats": all 12}.

    An empty result list scores 0 (pycocotools cannot load an empty list).
    """
    COCOeval = hw.require("pycocotools.cocoeval", "ptq", what="COCO mAP").COCOeval

    if not results:
        return {"map": 0.0, "map50": 0.0, "map75": 0.0, "stats": [0.0] * 12}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, dt, "bbox")
        ev.params.imgIds = sorted(coco_gt.getImgIds())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if verbose:
        print(buf.getvalue())
    s = [float(v) for v in ev.stats]
    return {"map": s[0], "map50": s[1], "map75": s[2], "stats": s}


STAT_NAMES = [("AP", "0.50:0.95", "all", 100), ("AP", "0.50", "all", 100), ("AP", "0.75", "all", 100),
              ("AP", "0.50:0.95", "small", 100), ("AP", "0.50:0.95", "medium", 100), ("AP", "0.50:0.95", "large", 100),
              ("AR", "0.50:0.95", "all", 1), ("AR", "0.50:0.95", "all", 10), ("AR", "0.50:0.95", "all", 100),
              ("AR", "0.50:0.95", "small", 100), ("AR", "0.50:0.95", "medium", 100), ("AR", "0.50:0.95", "large", 100)]


def summary_table(result: dict):
    """COCOeval's 12 summary numbers as a small DataFrame (metric, IoU, area, max dets, value).

    COCOeval prints -1 for an area range with no ground-truth object (COCO's "large" is > 96² px, so none
    exists in 128×128 images); the table shows those as "no objects" instead of a number.
    """
    import pandas as pd

    rows = [{"metric": m, "IoU": iou, "area": area, "max dets": md,
             "value": "no objects of this size" if v == -1 else round(v, 4)}
            for (m, iou, area, md), v in zip(STAT_NAMES, result["stats"])]
    return pd.DataFrame(rows)


def evaluate(fn: Callable, images: np.ndarray, coco_gt, batch_size: int = 32, verbose: bool = False, **nms_kw) -> dict:
    """Predict on ``images`` (ids 1..N of ``coco_gt``) and return :func:`coco_map`'s dict."""
    n_gt = len(coco_gt.getImgIds())
    if len(images) != n_gt:
        raise ValueError(f"{len(images)} images but the COCO ground truth lists {n_gt}; use data.subset_coco()")
    dets = predict(fn, images, batch_size=batch_size, **nms_kw)
    return coco_map(coco_gt, to_coco_results(dets), verbose=verbose)
