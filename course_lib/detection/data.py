"""A deterministic, COCO-format detection data set of coloured shapes on textured backgrounds.

Introduced in ``05_yolov7_ptq.ipynb``. COCO and YOLOv7's weights cannot be downloaded on the course
machines, so lesson 5 trains its own small detector on data generated here. Everything is a pure
function of ``(split, n, size, seed)``: the same call always gives the same pixels and boxes, so the
images can live in a cache folder and be regenerated on any machine. ::

    root = data.build_dataset()                  # writes images + annotations once, then reuses them
    coco = data.load_coco(root, "val")           # a pycocotools COCO object
    imgs, targets = data.load_split(root, "val") # uint8 (N, H, W, 3) + per-image [cls, x1, y1, x2, y2]

Layout (the COCO convention)::

    ROOT/images/{train,val,calib,test}/000001.png
    ROOT/annotations/instances_{train,val,calib,test}.json
    ROOT/{train,val,calib,test}.npy               # the same pixels stacked, for fast loading
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from course_lib import hw, paths

CLASSES = ("circle", "square", "triangle", "cross", "ring")
# split -> (default size, seed offset). Lesson 5 chooses on "val" (its selection split) and reports on "test".
SPLITS = {"train": (2000, 0), "val": (300, 1), "calib": (256, 2), "test": (300, 3)}
IMG_SIZE = 128
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background: a smooth colour gradient, low-frequency blobs, stripes and pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(40, 200, size=3).astype(np.float32)
    grad = rng.uniform(-60, 60, size=(2, 3)).astype(np.float32)
    img = base + xx[..., None] * grad[0] + yy[..., None] * grad[1]
    # low-frequency blobs: upsampled coarse noise
    coarse = rng.normal(0, 25, size=(8, 8, 3)).astype(np.float32)
    img += np.kron(coarse, np.ones((size // 8, size // 8, 1), np.float32))
    # stripes at a random angle and frequency
    theta, freq = rng.uniform(0, np.pi), rng.uniform(4, 16)
    stripes = np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)))
    img += (stripes[..., None] * rng.uniform(0, 20)).astype(np.float32)
    img += rng.normal(0, 8, size=img.shape).astype(np.float32)
    return img


def _shape_mask(cls: int, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask (h, w) of shape ``cls`` that touches all four sides of its box."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx + 0.5) / w * 2 - 1  # -1..1 across the box
    v = (yy + 0.5) / h * 2 - 1
    name = CLASSES[cls]
    if name == "circle":
        return u**2 + v**2 <= 1.0
    if name == "square":
        return np.ones((h, w), bool)
    if name == "triangle":  # apex at the top, base at the bottom
        return np.abs(u) <= (v + 1) / 2
    if name == "cross":
        t = rng.uniform(0.25, 0.4)
        return (np.abs(u) <= t) | (np.abs(v) <= t)
    if name == "ring":
        r2 = u**2 + v**2
        return (r2 <= 1.0) & (r2 >= rng.uniform(0.25, 0.45))
    raise ValueError(f"unknown class index {cls}")


def _iou_1toN(box, boxes) -> np.ndarray:
    if not boxes:
        return np.zeros(0)
    b = np.asarray(boxes, np.float32)
    ix1, iy1 = np.maximum(box[0], b[:, 0]), np.maximum(box[1], b[:, 1])
    ix2, iy2 = np.minimum(box[2], b[:, 2]), np.minimum(box[3], b[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    a = (box[2] - box[0]) * (box[3] - box[1])
    return inter / (a + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter)


def make_image(rng: np.random.Generator, size: int = IMG_SIZE, max_objects: int = 4,
               min_side: int = 10, max_side: int = 56) -> tuple[np.ndarray, list[tuple[int, int, int, int, int]]]:
    """One image (uint8 H×W×3) and its objects ``[(cls, x1, y1, x2, y2), ...]`` (pixels, exclusive x2/y2)."""
    img = _background(rng, size)
    objects: list[tuple[int, int, int, int, int]] = []
    n = int(rng.integers(1, max_objects + 1))
    for _ in range(n * 5):  # a few tries per object to avoid heavy overlap
        if len(objects) == n:
            break
        cls = int(rng.integers(len(CLASSES)))
        side = float(np.exp(rng.uniform(np.log(min_side), np.log(max_side))))
        aspect = float(np.exp(rng.uniform(-0.4, 0.4)))
        w = int(np.clip(round(side * aspect), min_side, size - 2))
        h = int(np.clip(round(side / aspect), min_side, size - 2))
        x1, y1 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        box = (x1, y1, x1 + w, y1 + h)
        if (_iou_1toN(box, [o[1:] for o in objects]) > 0.2).any():
            continue
        mask = _shape_mask(cls, w, h, rng)
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        # keep the shape visible against the local background
        local = img[y1:y1 + h, x1:x1 + w].mean((0, 1))
        if np.abs(colour - local).sum() < 120:
            colour = np.where(local > 127, colour * 0.3, 255 - (255 - colour) * 0.3)
        patch = img[y1:y1 + h, x1:x1 + w]
        patch[mask] = colour + rng.normal(0, 6, size=(int(mask.sum()), 3))
        objects.append((cls, *box))
    return np.clip(img, 0, 255).astype(np.uint8), objects


def generate_split(split: str, n: int | None = None, size: int = IMG_SIZE, seed: int = 0):
    """Generate ``n`` images of ``split`` deterministically: returns (uint8 array (n,H,W,3), list of object lists)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    default_n, offset = SPLITS[split]
    n = default_n if n is None else int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng([seed, offset, size, FORMAT_VERSION])
    images = np.zeros((n, size, size, 3), np.uint8)
    objects = []
    for i in range(n):
        images[i], objs = make_image(rng, size=size)
        objects.append(objs)
    return images, objects


# --------------------------------------------------------------------------------------------
# COCO format
# --------------------------------------------------------------------------------------------


def to_coco(objects: list, split: str, size: int = IMG_SIZE) -> dict:
    """A COCO ``instances`` dict (images, annotations, categories) for per-image object lists.

    Image ids start at 1 and follow the order of ``objects``; COCO boxes are ``[x, y, w, h]``;
    category ids are ``class index + 1`` (COCO ids start at 1).
    """
    images, anns = [], []
    for i, objs in enumerate(objects):
        img_id = i + 1
        images.append({"id": img_id, "file_name": f"{split}/{img_id:06d}.png", "width": size, "height": size})
        for cls, x1, y1, x2, y2 in objs:
            w, h = float(x2 - x1), float(y2 - y1)
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": int(cls) + 1,
                         "bbox": [float(x1), float(y1), w, h], "area": w * h, "iscrowd": 0})
    cats = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    return {"info": {"description": "course_lib shapes (lesson 5)", "version": FORMAT_VERSION},
            "images": images, "annotations": anns, "categories": cats}


def default_root() -> Path:
    """The cache folder the lesson's data set lives in (``cache_dir('l5_shapes')``)."""
    return paths.cache_dir("l5_shapes")


def build_dataset(root: str | Path | None = None, sizes: dict | None = None, img_size: int = IMG_SIZE,
                  seed: int = 0, write_png: bool = True, force: bool = False) -> Path:
    """Write the train/val/calib/test splits (PNG images, stacked .npy, COCO json) under ``root`` once; return root.

    ``sizes`` picks the splits and their number of images (default: all of them at their default sizes; e.g.
    ``{"val": 300, "calib": 256}`` skips the training split). A split is regenerated when
    its files are missing, when its recorded parameters differ, or when ``force`` is set.
    """
    root = Path(root) if root is not None else default_root()
    sizes = dict(sizes) if sizes else {s: SPLITS[s][0] for s in SPLITS}
    for split, n in sizes.items():
        ann_file = root / "annotations" / f"instances_{split}.json"
        npy = root / f"{split}.npy"
        params = {"n": int(n), "size": img_size, "seed": seed, "version": FORMAT_VERSION}
        if not force and ann_file.exists() and npy.exists():
            try:
                if json.loads(ann_file.read_text())["info"].get("params") == params:
                    continue
            except (json.JSONDecodeError, KeyError):
                pass
        images, objects = generate_split(split, n, size=img_size, seed=seed)
        doc = to_coco(objects, split, size=img_size)
        doc["info"]["params"] = params
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        if write_png:
            from PIL import Image

            d = root / "images" / split
            d.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(images):
                Image.fromarray(img).save(d / f"{i + 1:06d}.png")
        np.save(npy, images)
        ann_file.write_text(json.dumps(doc))
    return root


def load_coco(root: str | Path, split: str):
    """The split's annotations as a pycocotools ``COCO`` object (clear error if the file is empty or absent)."""
    COCO = hw.require("pycocotools.coco", "ptq", what="COCO annotations").COCO
    import contextlib
    import io

    path = Path(root) / "annotations" / f"instances_{split}.json"
    check_annotation_file(path)
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints "loading annotations..."
        return COCO(str(path))


def check_annotation_file(path: str | Path) -> dict:
    """Read a COCO instances file and check it has images and categories; return the parsed dict."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"annotation file {path} does not exist (run data.build_dataset() first)")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"annotation file {path} is empty; expected COCO json with 'images', 'annotations', 'categories'")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"annotation file {path} is not valid JSON: {e}") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in doc]
    if missing:
        raise ValueError(f"annotation file {path} lacks COCO keys {missing}")
    if not doc["images"]:
        raise ValueError(f"annotation file {path} lists no images")
    return doc


def load_split(root: str | Path, split: str, n: int | None = None):
    """(uint8 images (N,H,W,3), targets) of a split; targets[i] is a float32 (k, 5) array [cls, x1, y1, x2, y2].

    ``n`` keeps the first n images only (small evaluation sets for the cpu profile).
    """
    root = Path(root)
    doc = check_annotation_file(root / "annotations" / f"instances_{split}.json")
    images = np.load(root / f"{split}.npy", mmap_mode="r")
    count = len(doc["images"]) if n is None else min(int(n), len(doc["images"]))
    per_img: list[list] = [[] for _ in range(len(doc["images"]))]
    for a in doc["annotations"]:
        x, y, w, h = a["bbox"]
        per_img[a["image_id"] - 1].append([a["category_id"] - 1, x, y, x + w, y + h])
    targets = [np.asarray(t, np.float32).reshape(-1, 5) for t in per_img[:count]]
    return np.array(images[:count]), targets


def subset_coco(coco, n: int):
    """A new pycocotools COCO holding only the first ``n`` images (ids 1..n) of ``coco`` — for small eval sets."""
    COCO = hw.require("pycocotools.coco", "ptq", what="COCO annotations").COCO
    import contextlib
    import io

    ids = set(range(1, n + 1))
    ds = dict(coco.dataset)
    ds["images"] = [im for im in coco.dataset["images"] if im["id"] in ids]
    ds["annotations"] = [a for a in coco.dataset["annotations"] if a["image_id"] in ids]
    out = COCO()
    out.dataset = ds
    with contextlib.redirect_stdout(io.StringIO()):
        out.createIndex()
    return out


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


def letterbox(img: np.ndarray, size: int = IMG_SIZE, pad_value: int = 114):
    """Resize keeping aspect ratio and pad to ``size``×``size`` (YOLO's letterbox).

    Accepts H×W (grey), H×W×1, H×W×3 or H×W×4 (alpha dropped) uint8 images; anything else raises
    ``ValueError``. Returns (uint8 size×size×3 image, scale, (pad_x, pad_y)): a box in the letterboxed
    image maps back to the original with ``(box - pad) / scale``.
    """
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4) or min(img.shape[:2]) < 1:
        raise ValueError(f"expected an H×W, H×W×1, H×W×3 or H×W×4 image, got shape {tuple(img.shape)}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:
        img = img[..., :3]
    if img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {img.dtype}")
    h, w = img.shape[:2]
    scale = min(size / h, size / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        from PIL import Image

        img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    out = np.full((size, size, 3), pad_value, np.uint8)
    py, px = (size - nh) // 2, (size - nw) // 2
    out[py:py + nh, px:px + nw] = img
    return out, scale, (px, py)


def to_tensor(images: np.ndarray):
    """uint8 (N,H,W,3) → float32 torch tensor (N,3,H,W) in [0, 1]; rejects other shapes with a clear error."""
    import torch

    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images shaped (N, H, W, 3), got {tuple(images.shape)}; "
                         "use data.letterbox() to convert grey/RGBA/odd-sized images")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
