"""Box operations and non-maximum suppression in plain torch (torchvision's ``nms`` is unavailable here).

Introduced in ``05_yolov7_ptq.ipynb``.
"""

from __future__ import annotations

import math

import torch


def xywh2xyxy(x: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) → (x1, y1, x2, y2)."""
    y = x.clone()
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes: (N, 4) × (M, 4) → (N, M)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(0) * (a[:, 3] - a[:, 1]).clamp(0)
    area_b = (b[:, 2] - b[:, 0]).clamp(0) * (b[:, 3] - b[:, 1]).clamp(0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(0).prod(2)
    return inter / (area_a[:, None] + area_b[None] - inter + 1e-9)


def bbox_ciou(b1: torch.Tensor, b2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of matched xywh boxes (N, 4), (N, 4) → (N,) — the box loss of YOLOv5/v7."""
    b1x1, b1x2 = b1[:, 0] - b1[:, 2] / 2, b1[:, 0] + b1[:, 2] / 2
    b1y1, b1y2 = b1[:, 1] - b1[:, 3] / 2, b1[:, 1] + b1[:, 3] / 2
    b2x1, b2x2 = b2[:, 0] - b2[:, 2] / 2, b2[:, 0] + b2[:, 2] / 2
    b2y1, b2y2 = b2[:, 1] - b2[:, 3] / 2, b2[:, 1] + b2[:, 3] / 2
    inter = (torch.min(b1x2, b2x2) - torch.max(b1x1, b2x1)).clamp(0) * (torch.min(b1y2, b2y2) - torch.max(b1y1, b2y1)).clamp(0)
    w1, h1 = b1[:, 2], b1[:, 3] + eps
    w2, h2 = b2[:, 2], b2[:, 3] + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.max(b1x2, b2x2) - torch.min(b1x1, b2x1)
    ch = torch.max(b1y2, b2y2) - torch.min(b1y1, b2y1)
    c2 = cw**2 + ch**2 + eps
    rho2 = ((b2[:, 0] - b1[:, 0]) ** 2 + (b2[:, 1] - b1[:, 1]) ** 2)
    v = (4 / math.pi**2) * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float) -> torch.Tensor:
    """Greedy NMS: indices of kept boxes (xyxy), highest score first — same contract as torchvision.ops.nms."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True)
    iou = box_iou(boxes[order], boxes[order])
    n = order.numel()
    suppressed = torch.zeros(n, dtype=torch.bool)
    keep = []
    # loop over kept boxes only: each one suppresses all later boxes that overlap it
    upper = torch.triu(iou > iou_thres, diagonal=1).cpu()  # the loop reads it row by row: on the host
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= upper[i]
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def non_max_suppression(pred: torch.Tensor, conf_thres: float = 0.001, iou_thres: float = 0.65,
                        max_det: int = 100, max_nms: int = 3000) -> list[torch.Tensor]:
    """Per image: (k, 6) detections [x1, y1, x2, y2, score, cls] from decoded predictions (B, N, 5+nc).

    score = objectness × class probability; one box per (anchor, best class); class-aware NMS via the
    usual coordinate offset trick. Defaults are YOLOv7's ``test.py`` settings for mAP.
    """
    if pred.ndim != 3 or pred.shape[-1] < 6:
        raise ValueError(f"expected decoded predictions (B, N, 5+nc), got {tuple(pred.shape)}")
    out = []
    for x in pred:
        x = x[x[:, 4] > conf_thres]
        if not x.shape[0]:
            out.append(torch.zeros((0, 6), device=pred.device))
            continue
        cls_scores = x[:, 5:] * x[:, 4:5]
        conf, j = cls_scores.max(1)
        keep = conf > conf_thres
        boxes, conf, j = xywh2xyxy(x[keep, :4]), conf[keep], j[keep]
        if conf.numel() > max_nms:
            top = conf.argsort(descending=True)[:max_nms]
            boxes, conf, j = boxes[top], conf[top], j[top]
        offset = j.float()[:, None] * 4096.0
        i = nms(boxes + offset, conf, iou_thres)[:max_det]
        out.append(torch.cat((boxes[i], conf[i, None], j[i, None].float()), 1))
    return out
