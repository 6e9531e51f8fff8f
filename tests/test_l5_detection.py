"""Lesson 5, detector side: data generator (COCO json), model shapes, fuse() parity, loss, NMS, COCOeval, loader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import require_extra  # noqa: E402

require_extra("pycocotools", "ptq")

from course_lib.detection import boxes as B  # noqa: E402
from course_lib.detection import data as D  # noqa: E402
from course_lib.detection import evaluate as E  # noqa: E402
from course_lib.detection import model as M  # noqa: E402
from course_lib.detection import official as O  # noqa: E402
from course_lib.detection.loss import YoloLoss  # noqa: E402
from course_lib.detection.train import targets_to_tensor  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return D.build_dataset(tmp_path_factory.mktemp("shapes"), sizes={"val": 12, "calib": 4}, write_png=True)


# ---------------------------------------------------------------------------- data
def test_generator_is_deterministic():
    a, oa = D.generate_split("val", 5)
    b, ob = D.generate_split("val", 5)
    assert np.array_equal(a, b) and oa == ob
    c, _ = D.generate_split("calib", 5)
    assert not np.array_equal(a, c)  # splits use different seeds


def test_boxes_inside_image_and_classes_valid():
    imgs, objs = D.generate_split("train", 20)
    assert imgs.shape == (20, 128, 128, 3) and imgs.dtype == np.uint8
    for per in objs:
        assert 1 <= len(per) <= 4
        for cls, x1, y1, x2, y2 in per:
            assert 0 <= cls < len(D.CLASSES)
            assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128
            assert x2 - x1 >= 10 and y2 - y1 >= 10


def test_coco_json_loads_in_pycocotools(root):
    coco = D.load_coco(root, "val")
    assert sorted(coco.getImgIds()) == list(range(1, 13))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(D.CLASSES)
    imgs, targets = D.load_split(root, "val")
    assert len(coco.getAnnIds()) == sum(len(t) for t in targets)
    ann = coco.loadAnns(coco.getAnnIds(imgIds=[1]))[0]
    x, y, w, h = ann["bbox"]
    assert ann["area"] == w * h and ann["iscrowd"] == 0
    assert (root / "images" / "val" / "000001.png").exists()
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(root / "images" / "val" / "000001.png")), imgs[0])


def test_empty_annotation_file_is_a_clear_error(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        D.load_coco(tmp_path, "val")
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(ValueError, match="no images"):
        D.load_split(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="build_dataset"):
        D.load_coco(tmp_path, "calib")


def test_letterbox_and_bad_images():
    img = np.full((64, 96), 200, np.uint8)  # grey, wide
    out, scale, (px, py) = D.letterbox(img, 128)
    assert out.shape == (128, 128, 3) and scale == pytest.approx(128 / 96)
    assert px == 0 and py == (128 - round(64 * scale)) // 2
    assert (out[0, 0] == 114).all() and (out[64, 64] == 200).all()
    rgba = np.zeros((128, 128, 4), np.uint8)
    assert D.letterbox(rgba)[0].shape == (128, 128, 3)
    with pytest.raises(ValueError, match="H×W"):
        D.letterbox(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        D.letterbox(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="letterbox"):
        D.to_tensor(np.zeros((2, 128, 128), np.uint8)[..., None])


# ---------------------------------------------------------------------------- model
def test_tiny_model_shapes_and_strides():
    m = M.build()
    assert m.detect.stride.tolist() == [8.0, 16.0, 32.0]
    x = torch.rand(2, 3, 128, 128)
    m.train()
    raw = m(x)
    assert [tuple(r.shape) for r in raw] == [(2, 3, 16, 16, 10), (2, 3, 8, 8, 10), (2, 3, 4, 4, 10)]
    m.eval()
    out = m(x)
    assert out.shape == (2, 3 * (16 * 16 + 8 * 8 + 4 * 4), 10)
    assert (out[..., 4:] >= 0).all() and (out[..., 4:] <= 1).all()


@pytest.mark.slow
def test_yolov7_layer_table_matches_official():
    m = M.YOLOv7(size="yolov7")
    assert len(m.model) == 106
    names = {i: type(l).__name__ for i, l in enumerate(m.model)}
    assert names[51] == "SPPCSPC" and names[102] == names[104] == "RepConv" and names[105] == "IDetect"
    assert m.model[105].f == [102, 103, 104] and m.model[54].f == 37 and m.model[66].f == 24
    sd = m.state_dict()
    assert tuple(sd["model.0.conv.weight"].shape) == (32, 3, 3, 3)
    assert tuple(sd["model.50.conv.weight"].shape) == (1024, 1024, 1, 1)
    assert tuple(sd["model.105.m.2.weight"].shape) == (255, 1024, 1, 1)
    assert 37.5e6 < m.num_params() < 37.7e6  # official: ~37.6M trainable parameters (before re-parameterisation)
    assert torch.allclose(sd["model.105.anchors"][0], torch.tensor([[1.5, 2.0], [2.375, 4.5], [5.0, 3.5]]))


def test_fuse_parity():
    torch.manual_seed(0)
    m = M.build()
    for mod in m.modules():  # non-trivial BN statistics, so folding is actually exercised
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    m.eval()
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        ref = m(x)
        m.fuse()
        out = m(x)
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    assert torch.allclose(out, ref, atol=1e-3, rtol=1e-4)
    assert (out[..., 4:] - ref[..., 4:]).abs().max() < 1e-5


def test_repconv_with_identity_fuses_exactly():
    torch.manual_seed(0)
    r = M.RepConv(8, 8).eval()
    for bn in (r.rbr_dense[1], r.rbr_1x1[1], r.rbr_identity):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(1, 8, 10, 10)
    with torch.no_grad():
        ref = r(x)
        r.fuse()
        assert torch.allclose(r(x), ref, atol=1e-5)


@pytest.mark.slow
def test_loss_decreases_on_one_batch():
    torch.manual_seed(0)
    m = M.build()
    imgs, objs = D.generate_split("train", 4, size=64)  # fully convolutional: 64×64 keeps the test quick
    targets = targets_to_tensor([np.asarray(o, np.float32).reshape(-1, 5) for o in objs], 64)
    loss_fn = YoloLoss(m)
    opt = torch.optim.Adam(m.parameters(), 2e-3)
    x = D.to_tensor(imgs)
    m.train()
    losses = []
    for _ in range(8):
        loss, parts = loss_fn(m(x), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(parts) == {"box", "obj", "cls"}
    assert losses[-1] < losses[0] * 0.9


def test_official_loader_on_fake_checkpoint(tmp_path):
    torch.manual_seed(0)
    ref = M.YOLOv7(nc=80, size="tiny")  # the yolov7 layer table, small
    sd = {k: v.half() if v.is_floating_point() else v for k, v in ref.state_dict().items()}  # official ckpts are fp16
    path = tmp_path / "yolov7_sd.pt"
    torch.save({"model": sd, "epoch": -1}, path)
    loaded = O.load_official(path)
    assert loaded.nc == 80 and loaded.size.width == 0.125 and loaded.size.elan_depth == 2
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x)[..., 4:], ref.eval()(x)[..., 4:], atol=5e-3)
    bad = dict(sd)
    bad.pop("model.0.conv.weight")
    with pytest.raises(ValueError, match="YOLOv7"):
        O.load_official(bad)
    with pytest.raises(ValueError, match="not a YOLOv7 checkpoint"):
        O.load_official({"weights": [1, 2]})


# ---------------------------------------------------------------------------- NMS + COCOeval
def test_box_iou_known_values():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert torch.allclose(B.box_iou(a, b), torch.tensor([[1.0, 1 / 3, 0.0]]), atol=1e-6)


def test_nms_matches_hand_example():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 9]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    keep = B.nms(boxes, scores, 0.5)
    assert keep.tolist() == [3, 2]  # 3 beats 0 (IoU .9) and 1 (IoU .66); 2 does not overlap
    assert B.nms(torch.zeros((0, 4)), torch.zeros(0), 0.5).numel() == 0


def test_non_max_suppression_is_class_aware():
    # two identical boxes with different classes both survive; a duplicate of the same class does not
    pred = torch.zeros(1, 3, 7)
    pred[0, :, :4] = torch.tensor([20.0, 20, 10, 10])
    pred[0, :, 4] = 1.0
    pred[0, 0, 5], pred[0, 1, 6], pred[0, 2, 5] = 0.9, 0.8, 0.7
    out = B.non_max_suppression(pred, conf_thres=0.1, iou_thres=0.5)[0]
    assert out.shape == (2, 6)
    assert sorted(out[:, 5].tolist()) == [0.0, 1.0]
    assert torch.allclose(out[0, :4], torch.tensor([15.0, 15, 25, 25]))


def test_cocoeval_perfect_predictions_is_one(root):
    coco = D.load_coco(root, "val")
    _, targets = D.load_split(root, "val")
    dets = [torch.tensor([[x1, y1, x2, y2, 1.0, c] for c, x1, y1, x2, y2 in t.tolist()]).reshape(-1, 6) for t in targets]
    r = E.coco_map(coco, E.to_coco_results(dets))
    assert r["map"] == pytest.approx(1.0) and r["map50"] == pytest.approx(1.0)
    # shifting every box by 30% of its width lowers mAP@.5:.95 but keeps some matches
    shifted = [d.clone() for d in dets]
    for d in shifted:
        w = d[:, 2] - d[:, 0]
        d[:, 0] += 0.3 * w
        d[:, 2] += 0.3 * w
    r2 = E.coco_map(coco, E.to_coco_results(shifted))
    assert 0.0 < r2["map"] < 0.5
    assert E.coco_map(coco, [])["map"] == 0.0


def test_evaluate_checks_image_count(root):
    coco = D.load_coco(root, "val")
    imgs, _ = D.load_split(root, "val", n=5)
    with pytest.raises(ValueError, match="subset_coco"):
        E.evaluate(M.build(), imgs, coco)
    # a "model" that outputs the ground truth as decoded predictions scores exactly 1 through evaluate()
    _, targets = D.load_split(root, "val", n=5)
    assert E.evaluate(_oracle(targets, imgs.shape[1]), imgs, D.subset_coco(coco, 5))["map"] == pytest.approx(1.0)


def _oracle(targets, size, grow=0.0, nc=len(D.CLASSES)):
    """A predictor returning each image's ground truth as (B, N, 5+nc) rows [cx, cy, w, h, obj, classes...].

    ``grow`` widens every box by that many pixels on each side (sticking out of the image at the border).
    """
    calls = {"i": 0}

    def fn(x):
        out = torch.zeros(len(x), 8, 5 + nc)
        for b in range(len(x)):
            for k, (c, x1, y1, x2, y2) in enumerate(targets[calls["i"] + b].tolist()):
                x1, y1, x2, y2 = x1 - grow, y1 - grow, x2 + grow, y2 + grow
                out[b, k, :5] = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 1.0])
                out[b, k, 5 + int(c)] = 1.0
        calls["i"] += len(x)
        return out

    return fn


def test_predictions_are_clipped_to_the_image(root):
    imgs, targets = D.load_split(root, "val", n=6)
    size = imgs.shape[1]
    dets = E.predict(_oracle(targets, size, grow=200.0), imgs)
    assert all(len(d) for d in dets)
    for d in dets:  # every box 200 px larger than the image on each side: clipped to exactly the image
        assert d[:, :4].min() == 0 and d[:, [0, 2]].max() == size and d[:, [1, 3]].max() == size
    t = torch.tensor([[-5.0, 3.0, 140.0, 200.0, 0.9, 1.0]])
    assert E.clip_boxes(t, 128, 130)[0, :4].tolist() == [0.0, 3.0, 130.0, 128.0]


def test_cocoeval_summary_table_marks_empty_area_ranges(root):
    coco = D.load_coco(root, "val")
    _, targets = D.load_split(root, "val")
    dets = [torch.tensor([[x1, y1, x2, y2, 1.0, c] for c, x1, y1, x2, y2 in t.tolist()]).reshape(-1, 6) for t in targets]
    r = E.coco_map(coco, E.to_coco_results(dets))
    table = E.summary_table(r)
    assert len(table) == 12 and table.value.iloc[0] == pytest.approx(1.0)
    large = table[(table.area == "large")]
    assert (large.value == "no objects of this size").all()  # 128-px images hold no object > 96² px: COCOeval's -1


def test_selection_and_test_splits_are_disjoint():
    sel, _ = D.generate_split("val", 50)
    test, _ = D.generate_split("test", 50)
    flat_sel = {im.tobytes() for im in sel}
    assert not any(im.tobytes() in flat_sel for im in test)


def test_load_checkpoint_names_a_foreign_format(tmp_path):
    from course_lib.detection import train as T

    p = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "epoch": 3}, p)
    with pytest.raises(ValueError, match=r"not a course detector checkpoint.*'nc'.*load_official"):
        T.load_checkpoint(p)
    torch.save([1, 2], p)
    with pytest.raises(ValueError, match="not a course detector checkpoint"):
        T.load_checkpoint(p)
    with pytest.raises(FileNotFoundError):
        T.load_checkpoint(tmp_path / "missing.pt")
