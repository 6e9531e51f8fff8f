"""A YOLOv7-family detector written from the architecture (``cfg/training/yolov7.yaml``), sizes selectable.

Introduced in ``05_yolov7_ptq.ipynb``. The layer graph is the official one — Conv-BN-SiLU blocks,
ELAN blocks (two 1×1 branches + a chain of 3×3 convs, concatenated), MP downsampling (max-pool branch ‖
strided-conv branch), SPPCSPC, RepConv and a 3-scale ``IDetect`` head with anchors and implicit
knowledge — built from a list of ``[from, module, args]`` rows exactly like the yaml, so module names
(``model.0.conv.weight`` … ``model.105.m.2.weight``) match the official ``yolov7.pt`` state dict.

Sizes: ``yolov7`` (width 1.0, ELAN depth 4: the official 37M-parameter model) and ``tiny``
(width 1/8, ELAN depth 2: ~0.3M parameters, trains on a CPU in minutes). ``tiny`` is the yolov7
graph scaled down for this course — *not* the official ``yolov7-tiny.yaml`` (which uses LeakyReLU and
a different backbone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

# anchors (pixels) per stride 8 / 16 / 32 ------------------------------------------------------
COCO_ANCHORS = ((12, 16, 19, 36, 40, 28), (36, 75, 76, 55, 72, 146), (142, 110, 192, 243, 459, 401))
SHAPES_ANCHORS = ((10, 10, 15, 12, 12, 15), (20, 20, 28, 22, 22, 28), (36, 36, 50, 42, 42, 50))


@dataclass(frozen=True)
class Size:
    """Width multiple and ELAN depth (number of 3×3 convs in each ELAN chain) of a YOLOv7 variant."""

    width: float
    elan_depth: int


SIZES = {"yolov7": Size(1.0, 4), "tiny": Size(0.125, 2)}


def autopad(k: int, p: int | None = None) -> int:
    """'same' padding for an odd kernel (as in the official code)."""
    return k // 2 if p is None else p


class Conv(nn.Module):
    """Conv2d → BatchNorm2d → SiLU, YOLOv7's basic block; ``fuse()`` folds the BN into the conv."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x):
        if self.bn is None:  # fused
            return self.act(self.conv(x))
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> None:
        """Fold ``bn`` into ``conv`` (conv gets a bias; bn becomes None)."""
        if self.bn is not None:
            self.conv = fuse_conv_and_bn(self.conv, self.bn)
            self.bn = None


def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d computing ``bn(conv(x))`` in eval mode: W' = W·γ/σ, b' = β + (b − μ)·γ/σ."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True).to(conv.weight.device)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_(bn.bias + (b - bn.running_mean) * scale)
    return fused


class MP(nn.Module):
    """2×2 max-pool, stride 2 (the max-pool branch of YOLOv7's MP downsampling)."""

    def __init__(self, k: int = 2):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=k)

    def forward(self, x):
        return self.m(x)


class Concat(nn.Module):
    """Concatenate a list of tensors along ``dimension`` (channels)."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


class SPPCSPC(nn.Module):
    """Spatial pyramid pooling (5/9/13 max-pools) inside a cross-stage-partial block (YOLOv7's neck entry)."""

    def __init__(self, c1: int, c2: int, e: float = 0.5, k=(5, 9, 13)):
        super().__init__()
        c_ = int(2 * c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(c_, c_, 3, 1)
        self.cv4 = Conv(c_, c_, 1, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k])
        self.cv5 = Conv(4 * c_, c_, 1, 1)
        self.cv6 = Conv(c_, c_, 3, 1)
        self.cv7 = Conv(2 * c_, c2, 1, 1)

    def forward(self, x):
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], 1)))
        y2 = self.cv2(x)
        return self.cv7(torch.cat((y1, y2), dim=1))


class RepConv(nn.Module):
    """RepVGG-style block: 3×3 conv-BN + 1×1 conv-BN (+ identity BN) summed; ``fuse()`` makes one 3×3 conv."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1):
        super().__init__()
        self.act = nn.SiLU()
        self.rbr_identity = nn.BatchNorm2d(c1, eps=1e-3, momentum=0.03) if c2 == c1 and s == 1 else None
        self.rbr_dense = nn.Sequential(nn.Conv2d(c1, c2, k, s, autopad(k), bias=False),
                                       nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03))
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(c1, c2, 1, s, 0, bias=False),
                                     nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03))
        self.rbr_reparam = None

    def forward(self, x):
        if self.rbr_reparam is not None:
            return self.act(self.rbr_reparam(x))
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:
            out = out + self.rbr_identity(x)
        return self.act(out)

    def fuse(self) -> None:
        """Re-parameterise the branches into the single conv ``rbr_reparam`` (exact in eval mode)."""
        if self.rbr_reparam is not None:
            return
        dense = fuse_conv_and_bn(self.rbr_dense[0], self.rbr_dense[1])
        one = fuse_conv_and_bn(self.rbr_1x1[0], self.rbr_1x1[1])
        w = dense.weight.detach().clone()
        b = dense.bias.detach().clone() + one.bias.detach()
        k = w.shape[-1]
        w[:, :, k // 2, k // 2] += one.weight.detach()[:, :, 0, 0]
        if self.rbr_identity is not None:
            bn = self.rbr_identity
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            idx = torch.arange(w.shape[0])
            w[idx, idx, k // 2, k // 2] += scale.detach()
            b += (bn.bias - bn.running_mean * scale).detach()
        conv = nn.Conv2d(dense.in_channels, dense.out_channels, k, dense.stride, dense.padding, bias=True)
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(b)
        self.rbr_reparam = conv
        self.rbr_dense = self.rbr_1x1 = self.rbr_identity = None


class ImplicitA(nn.Module):
    """Learned additive implicit knowledge (added to the head's input)."""

    def __init__(self, channel: int):
        super().__init__()
        self.implicit = nn.Parameter(torch.zeros(1, channel, 1, 1))
        nn.init.normal_(self.implicit, std=0.02)

    def forward(self, x):
        return self.implicit + x


class ImplicitM(nn.Module):
    """Learned multiplicative implicit knowledge (scales the head's output)."""

    def __init__(self, channel: int):
        super().__init__()
        self.implicit = nn.Parameter(torch.ones(1, channel, 1, 1))
        nn.init.normal_(self.implicit, mean=1.0, std=0.02)

    def forward(self, x):
        return self.implicit * x


class IDetect(nn.Module):
    """YOLOv7's 3-scale detection head: per scale a 1×1 conv to ``na·(5+nc)`` channels, anchors, grid decoding.

    Training mode returns the raw maps ``[(B, na, H, W, 5+nc)] × 3``; eval mode returns decoded
    predictions ``(B, N, 5+nc)`` = (cx, cy, w, h in input pixels, objectness, class probabilities).
    """

    def __init__(self, nc: int = 80, anchors=COCO_ANCHORS, ch=()):
        super().__init__()
        self.nc, self.no = nc, nc + 5
        self.nl, self.na = len(anchors), len(anchors[0]) // 2
        a = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        self.register_buffer("anchors", a)  # pixels until the model divides by stride
        self.register_buffer("anchor_grid", a.clone().view(self.nl, 1, -1, 1, 1, 2))  # pixels
        self.register_buffer("stride", torch.ones(self.nl), persistent=False)  # set by YOLOv7 (not in yolov7.pt)
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.ia = nn.ModuleList(ImplicitA(x) for x in ch)
        self.im = nn.ModuleList(ImplicitM(self.no * self.na) for _ in ch)
        self.fused = False

    def forward(self, x):
        x = list(x)
        z = []
        for i in range(self.nl):
            if self.fused:
                x[i] = self.m[i](x[i])
            else:
                x[i] = self.im[i](self.m[i](self.ia[i](x[i])))
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                yv, xv = torch.meshgrid(torch.arange(ny, device=x[i].device), torch.arange(nx, device=x[i].device), indexing="ij")
                grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).to(x[i].dtype)
                y = x[i].sigmoid()
                xy = (y[..., 0:2] * 2.0 - 0.5 + grid) * self.stride[i]
                wh = (y[..., 2:4] * 2) ** 2 * self.anchor_grid[i]
                z.append(torch.cat((xy, wh, y[..., 4:]), -1).view(bs, -1, self.no))
        return x if self.training else torch.cat(z, 1)

    def fuse(self) -> None:
        """Fold ImplicitA (into the conv bias) and ImplicitM (into weight and bias) — YOLOv7's ``fuseforward``."""
        if self.fused:
            return
        with torch.no_grad():
            for i in range(self.nl):
                conv = self.m[i]
                # conv(x + a) = W x + (b + W a)
                conv.bias += (conv.weight[:, :, 0, 0] @ self.ia[i].implicit.view(-1, 1)).view(-1)
                mul = self.im[i].implicit.view(-1)
                conv.weight *= mul.view(-1, 1, 1, 1)
                conv.bias *= mul
        self.fused = True


# --------------------------------------------------------------------------------------------
# The layer table (yolov7.yaml, generated so width and ELAN depth can change)
# --------------------------------------------------------------------------------------------


def _ch(c: int, width: float) -> int:
    """Scale a channel count by ``width`` and round up to a multiple of 8 (at least 8)."""
    return max(8, int(math.ceil(c * width / 8) * 8))


def yolov7_layers(nc: int = 80, width: float = 1.0, elan_depth: int = 4, anchors=COCO_ANCHORS) -> list:
    """The ``[from, module, args]`` rows of yolov7.yaml (width 1, depth 4 reproduces it index for index)."""
    if elan_depth < 2 or elan_depth % 2:
        raise ValueError(f"elan_depth must be an even number >= 2, got {elan_depth}")
    rows: list = []
    c = lambda n: _ch(n, width)  # noqa: E731

    def add(f, m, *args):
        rows.append([f, m, list(args)])
        return len(rows) - 1

    d = elan_depth
    back_cat = [-1 - 2 * j for j in range(d // 2)] + [-d - 1, -d - 2]  # depth 4: [-1, -3, -5, -6]
    head_cat = [-1 - j for j in range(d)] + [-d - 1, -d - 2]  # depth 4: [-1, ..., -6]

    def elan(cmid, cout, cchain=None, cat=back_cat):  # backbone ELAN: two 1×1 branches, a 3×3 chain, concat
        add(-1, Conv, cmid, 1, 1)
        add(-2, Conv, cmid, 1, 1)
        for _ in range(d):
            add(-1, Conv, cchain or cmid, 3, 1)
        add(cat, Concat, 1)
        return add(-1, Conv, cout, 1, 1)

    def elan_w(cmid, cchain, cout):  # head ELAN-W: the same block, concatenating every chain output
        return elan(cmid, cout, cchain, head_cat)

    def mp(cbranch, extra=None):  # MP downsampling: maxpool→1×1 ‖ 1×1→3×3/2
        add(-1, MP)
        add(-1, Conv, cbranch, 1, 1)
        add(-3, Conv, cbranch, 1, 1)
        add(-1, Conv, cbranch, 3, 2)
        return add([-1, -3] + ([extra] if extra is not None else []), Concat, 1)

    # backbone
    add(-1, Conv, c(32), 3, 1)
    add(-1, Conv, c(64), 3, 2)  # P1/2
    add(-1, Conv, c(64), 3, 1)
    add(-1, Conv, c(128), 3, 2)  # P2/4
    elan(c(64), c(256))
    mp(c(128))  # P3/8
    p3 = elan(c(128), c(512))
    mp(c(256))  # P4/16
    p4 = elan(c(256), c(1024))
    mp(c(512))  # P5/32
    elan(c(256), c(1024))
    # head
    sppcspc = add(-1, SPPCSPC, c(512))
    add(-1, Conv, c(256), 1, 1)
    add(-1, nn.Upsample, None, 2, "nearest")
    add(p4, Conv, c(256), 1, 1)
    add([-1, -2], Concat, 1)
    h4 = elan_w(c(256), c(128), c(256))
    add(-1, Conv, c(128), 1, 1)
    add(-1, nn.Upsample, None, 2, "nearest")
    add(p3, Conv, c(128), 1, 1)
    add([-1, -2], Concat, 1)
    o3 = elan_w(c(128), c(64), c(128))
    mp(c(128), extra=h4)
    o4 = elan_w(c(256), c(128), c(256))
    mp(c(256), extra=sppcspc)
    o5 = elan_w(c(512), c(256), c(512))
    r3 = add(o3, RepConv, c(256), 3, 1)
    r4 = add(o4, RepConv, c(512), 3, 1)
    r5 = add(o5, RepConv, c(1024), 3, 1)
    add([r3, r4, r5], IDetect, nc, anchors)
    return rows


class YOLOv7(nn.Module):
    """The detector: ``self.model`` is the layer list of yolov7.yaml; each layer knows its inputs (``.f``).

    ``YOLOv7(nc=5, size="tiny", anchors=SHAPES_ANCHORS)`` for the course's CPU model;
    ``YOLOv7(size="yolov7")`` for the official 80-class architecture.
    """

    def __init__(self, nc: int = 80, size: str | Size = "yolov7", anchors=COCO_ANCHORS, img_size: int = 640):
        super().__init__()
        if isinstance(size, str):
            if size not in SIZES:
                raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)} or pass Size(width, elan_depth)")
            size = SIZES[size]
        self.size, self.nc, self.img_size = size, nc, img_size
        rows = yolov7_layers(nc, size.width, size.elan_depth, anchors)
        layers, save, ch = [], set(), [3]
        for i, (f, m, args) in enumerate(rows):
            if m is Conv or m is RepConv:
                c1, c2 = ch[f], args[0]
                mod = m(c1, *args)
            elif m is SPPCSPC:
                c2 = args[0]
                mod = m(ch[f], c2)
            elif m is Concat:
                c2 = sum(ch[x] for x in f)
                mod = m(*args)
            elif m is IDetect:
                mod = m(nc, anchors, [ch[x] for x in f])
                c2 = None
            else:  # MP, Upsample
                c2 = ch[f]
                mod = m(*args)
            mod.i, mod.f = i, f
            save.update(x % i if isinstance(x, int) else x for x in ([f] if isinstance(f, int) else f) if x != -1)
            layers.append(mod)
            if i == 0:
                ch = []
            ch.append(c2)
        self.model = nn.Sequential(*layers)
        self.save = sorted(save)
        det = self.detect
        with torch.no_grad():  # strides from a dummy forward, as in the official code
            self.train()
            s = 256
            out = self.forward(torch.zeros(1, 3, s, s))
            det.stride.copy_(torch.tensor([s / o.shape[-2] for o in out]))
            det.anchors /= det.stride.view(-1, 1, 1)  # anchors in grid units (official convention)
        self._init_biases()
        self.eval()

    @property
    def detect(self) -> IDetect:
        """The IDetect head (last layer)."""
        return self.model[-1]

    def _init_biases(self):
        det = self.detect
        for conv, s in zip(det.m, det.stride):
            b = conv.bias.view(det.na, -1)
            with torch.no_grad():
                b[:, 4] += math.log(8 / (self.img_size / float(s)) ** 2)
                b[:, 5:] += math.log(0.6 / (det.nc - 0.99))

    def forward(self, x):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def fuse(self) -> "YOLOv7":
        """Fold every BatchNorm into its conv, re-parameterise RepConv and fold the implicit layers; returns self."""
        self.eval()
        for m in self.modules():
            if isinstance(m, (Conv, RepConv, IDetect)):
                m.fuse()
        return self

    def num_params(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())


def build(size: str = "tiny", nc: int = 5, anchors=SHAPES_ANCHORS, img_size: int = 128) -> YOLOv7:
    """The course's detector (tiny, 5 shape classes, anchors for 128×128 images) or any other variant."""
    return YOLOv7(nc=nc, size=size, anchors=anchors, img_size=img_size)
