"""YOLOv5/v7-style loss: CIoU box loss + objectness BCE (IoU target) + class BCE, with anchor assignment.

Introduced in ``05_yolov7_ptq.ipynb``. Assignment (``build_targets``): a ground-truth box is matched to
every anchor whose width/height ratio to it is below ``anchor_t`` (4), at its own grid cell and the two
neighbouring cells closest to its centre — three positives per match, which is why YOLO learns fast.
(YOLOv7's ``ComputeLossOTA`` adds a SimOTA cost-based re-ranking of these candidates; this course uses
the simpler candidate set, which trains well on its small data.)
"""

from __future__ import annotations

import torch
from torch import nn

from course_lib.detection.boxes import bbox_ciou


class YoloLoss:
    """Callable ``loss(preds, targets) -> (total, parts)``; targets are (n, 6) [image, cls, cx, cy, w, h] normalised."""

    def __init__(self, model, box: float = 0.05, obj: float = 0.7, cls: float = 0.3, anchor_t: float = 4.0):
        det = model.detect
        self.na, self.nl, self.nc = det.na, det.nl, det.nc
        self.anchors = det.anchors  # grid units, (nl, na, 2)
        scale = (model.img_size / 640) ** 2 * 3 / self.nl
        self.hyp = {"box": box * 3 / self.nl, "obj": obj * scale, "cls": cls * self.nc / 80 * 3 / self.nl}
        self.anchor_t = anchor_t
        self.balance = [4.0, 1.0, 0.4]
        self.bce = nn.BCEWithLogitsLoss()

    def build_targets(self, preds, targets):
        """For each scale: (image, anchor, gy, gx) indices, box targets (grid units), anchors, classes."""
        tcls, tbox, indices, anch = [], [], [], []
        na, nt = self.na, targets.shape[0]
        gain = torch.ones(7, device=targets.device)
        ai = torch.arange(na, device=targets.device).float().view(na, 1).repeat(1, nt)
        targets = torch.cat((targets.repeat(na, 1, 1), ai[:, :, None]), 2)  # (na, nt, 7)
        g = 0.5
        off = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=targets.device).float() * g
        for i in range(self.nl):
            anchors = self.anchors[i]
            gain[2:6] = torch.tensor(preds[i].shape)[[3, 2, 3, 2]]
            t = targets * gain
            if nt:
                r = t[:, :, 4:6] / anchors[:, None]
                j = torch.max(r, 1.0 / r).max(2)[0] < self.anchor_t
                t = t[j]
                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy
                j, k = ((gxy % 1.0 < g) & (gxy > 1.0)).T
                l, m = ((gxi % 1.0 < g) & (gxi > 1.0)).T
                j = torch.stack((torch.ones_like(j), j, k, l, m))
                t = t.repeat((5, 1, 1))[j]
                offsets = (torch.zeros_like(gxy)[None] + off[:, None])[j]
            else:
                t = targets[0]
                offsets = 0
            b, c = t[:, :2].long().T
            gxy, gwh = t[:, 2:4], t[:, 4:6]
            gij = (gxy - offsets).long()
            gi, gj = gij.T
            a = t[:, 6].long()
            h, w = preds[i].shape[2], preds[i].shape[3]
            indices.append((b, a, gj.clamp_(0, h - 1), gi.clamp_(0, w - 1)))
            tbox.append(torch.cat((gxy - gij, gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch

    def __call__(self, preds, targets):
        """Total loss (scaled by batch size, as in YOLOv7) and a dict of its three parts."""
        lcls = torch.zeros(1)
        lbox = torch.zeros(1)
        lobj = torch.zeros(1)
        tcls, tbox, indices, anchors = self.build_targets(preds, targets)
        for i, pi in enumerate(preds):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros_like(pi[..., 0])
            n = b.shape[0]
            if n:
                ps = pi[b, a, gj, gi]
                pxy = ps[:, :2].sigmoid() * 2.0 - 0.5
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * anchors[i]
                iou = bbox_ciou(torch.cat((pxy, pwh), 1), tbox[i])
                lbox += (1.0 - iou).mean()
                tobj[b, a, gj, gi] = iou.detach().clamp(0).type(tobj.dtype)
                if self.nc > 1:
                    t = torch.zeros_like(ps[:, 5:])
                    t[range(n), tcls[i]] = 1.0
                    lcls += self.bce(ps[:, 5:], t)
            lobj += self.bce(pi[..., 4], tobj) * self.balance[i]
        lbox *= self.hyp["box"]
        lobj *= self.hyp["obj"]
        lcls *= self.hyp["cls"]
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls) * bs, {"box": lbox.item(), "obj": lobj.item(), "cls": lcls.item()}
