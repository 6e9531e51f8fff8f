"""Lesson 5, speed section: the three ONNX variants (fp32, pytorch-quantization Q/DQ, onnxruntime static Q/DQ),
what onnxruntime makes of each, BatchNorm recalibration of an untrained model, conv statistics, and the
benchmark frame. No timing is asserted: benchmarks report figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import require_extra  # noqa: E402

require_extra("pytorch_quantization", "ptq")
require_extra("onnxruntime", "ptq")

from course_lib.detection import data as D  # noqa: E402
from course_lib.detection import model as M  # noqa: E402
from course_lib.detection import train as T  # noqa: E402
from course_lib.ptq import onnx_utils as OX  # noqa: E402
from course_lib.ptq import pq  # noqa: E402
from course_lib.ptq import speed as SP  # noqa: E402

pq.quiet_logs()
IMG = 64


def images(n=2, bs=4, size=IMG, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(bs, 3, size, size, generator=g) for _ in range(n)]


def shapes(split, n):
    """Generated shape images as float batches of 8 (the course data, deterministic)."""
    imgs, _ = D.generate_split(split, n)
    return [D.to_tensor(imgs[i:i + 8]) for i in range(0, n, 8)]


@pytest.fixture(scope="module")
def course_model():
    """The shipped, trained course detector, fused."""
    return T.load_checkpoint().fuse()


@pytest.fixture(scope="module")
def variants(course_model, tmp_path_factory):
    det = f"model.{len(course_model.model) - 1}"
    return SP.export_variants(course_model, shapes("calib", 32), tmp_path_factory.mktemp("speed"), "tiny", 128,
                              keep_float=[f"{det}.m.{i}" for i in range(3)] + [KEPT], float_modules=[det])


KEPT = "model.58.conv"  # a backbone conv (followed by SiLU) kept in float, as the sensitivity analysis does


def test_resize_batches_and_bad_input():
    out = SP.resize_batches([torch.rand(2, 3, 16, 24)], 32)
    assert out[0].shape == (2, 3, 32, 32)
    same = torch.rand(1, 3, 32, 32)
    assert SP.resize_batches([same], 32)[0] is same
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        SP.resize_batches([torch.rand(2, 1, 16, 16)], 32)
    with pytest.raises(ValueError, match="zero batches"):
        SP.resize_batches([], 32)


def test_recalibrate_bn_uses_the_data_and_refuses_fused_models():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    bs = [torch.rand(8, 3, 10, 10) * 5 + 2 for _ in range(3)]
    SP.recalibrate_bn(m, bs)
    assert not m.training
    with torch.no_grad():
        y = torch.cat([m[0](b) for b in bs])
    # cumulative average of equal-size batch means = the mean over all the data
    assert torch.allclose(m[1].running_mean, y.mean((0, 2, 3)), atol=1e-4)
    assert m[1].momentum == 0.1  # restored
    with pytest.raises(ValueError, match="no BatchNorm2d"):
        SP.recalibrate_bn(nn.Sequential(nn.Conv2d(3, 4, 3)), bs)
    with pytest.raises(ValueError, match="zero batches"):
        SP.recalibrate_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), [])


def test_recalibrated_detector_has_normalised_activations():
    def bn_output_stds(recal):
        torch.manual_seed(0)
        m = M.build(img_size=IMG)
        if recal:
            SP.recalibrate_bn(m, images())
        m.eval()
        stds = []
        hs = [c.bn.register_forward_hook(lambda mod, i, o: stds.append(o.std().item()))
              for c in m.modules() if isinstance(c, M.Conv)]
        with torch.no_grad():
            m(images(1, seed=0)[0])
        for h in hs:
            h.remove()
        return stds

    fresh, recal = bn_output_stds(False), bn_output_stds(True)
    assert min(fresh) < 1e-6  # fresh BatchNorms: activations fade layer after layer (not a fair timing input)
    assert len(recal) > 50 and 0.3 < min(recal) and max(recal) < 1.5  # recalibrated: every layer ~unit scale


def test_conv_stats_counts_multiply_adds_exactly():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 1, stride=2))
    s = SP.conv_stats(m, 16)
    assert s["convs"] == 2 and s["max channels"] == 16 and s["median channels"] == 12
    assert s["GMAC/img"] * 1e9 == pytest.approx(16 * 16 * 8 * 27 + 8 * 8 * 16 * 8)
    assert SP.conv_stats(M.YOLOv7(size="yolov7", img_size=64), 640)["GMAC/img"] == pytest.approx(52.4, rel=0.02)  # ~105 GFLOPs


def test_variants_placement_decides_integer_convs(variants, course_model):
    assert set(variants) == {SP.FP32, SP.PQ_QDQ, SP.ORT_QDQ}
    ops = {k: OX.optimized_op_counts(p) for k, p in variants.items()}
    n_conv = sum(isinstance(m, nn.Conv2d) for m in course_model.modules())
    assert ops[SP.FP32]["Conv"] == n_conv and ops[SP.FP32]["QLinearConv"] == 0
    # TensorRT placement (inputs + weights): onnxruntime keeps every conv in float
    assert OX.count_qdq(variants[SP.PQ_QDQ]) > 0 and ops[SP.PQ_QDQ]["QLinearConv"] == 0
    # onnxruntime placement: integer convs everywhere except the detection head's three and the kept layer —
    # which stays float only because its SiLU is excluded too (else onnxruntime quantizes its weights itself)
    assert ops[SP.ORT_QDQ]["QLinearConv"] == n_conv - 4 and ops[SP.ORT_QDQ]["Conv"] == 4


def test_ort_static_file_tracks_fp32(variants):
    x = shapes("val", 8)[0].numpy()
    outs = {k: OX.ort_session(p).run(None, {"images": x})[0] for k, p in variants.items()}
    ref = outs[SP.FP32]
    for k in (SP.PQ_QDQ, SP.ORT_QDQ):
        assert outs[k].shape == ref.shape
        scores = np.abs(outs[k][..., 4:] - ref[..., 4:])
        assert scores.mean() < 0.05, k  # the decoded head stays float; only int8 rounding upstream


def test_benchmark_frame_and_speedups(variants):
    df = SP.benchmark_onnx(variants, shapes("val", 8)[0][0], batches=(1, 2), warmup=0, repeat=2)
    assert len(df) == 6 and set(df.batch) == {1, 2}
    # every variant's speed-up times its own median is fp32's median at that batch (a ratio of medians)
    fp32_median = df[df.variant == SP.FP32].set_index("batch").median_ms
    assert np.allclose(df.speedup * df.median_ms, fp32_median[df.batch].to_numpy())
    assert (df["speedup lo"] <= df.speedup).all() and (df.speedup <= df["speedup hi"]).all()
    assert np.allclose(df["img/s"], df.batch * 1000 / df.median_ms)  # images per second at the median latency
    assert (df.min_ms <= df.median_ms).all() and (df.median_ms <= df.p90_ms).all()
    assert all(len(t) == 2 and min(t) == pytest.approx(m) for t, m in zip(df.times_ms, df.min_ms))  # every timed run
    n_conv = sum(isinstance(m, nn.Conv2d) for m in T.load_checkpoint().fuse().modules())
    assert dict(zip(df.variant, df["int8 convs"])) == {SP.FP32: 0, SP.PQ_QDQ: 0, SP.ORT_QDQ: n_conv - 4}
    sp = SP.speedups(df, SP.ORT_QDQ)
    assert sp == dict(zip(df[df.variant == SP.ORT_QDQ].batch, df[df.variant == SP.ORT_QDQ].speedup))
    assert SP.verdict(1.1, 1.5) == "faster" and SP.verdict(0.5, 0.9) == "slower" and "flip" in SP.verdict(0.9, 1.1)
    with pytest.raises(ValueError, match="no rows"):
        SP.speedups(df, "int4")
    with pytest.raises(ValueError, match="fp32"):
        SP.benchmark_onnx({SP.ORT_QDQ: variants[SP.ORT_QDQ]}, np.zeros((3, 128, 128), np.float32))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        SP.benchmark_onnx(variants, np.zeros((2, 3, 128, 128), np.float32))


def test_float_modules_must_exist(variants, tmp_path):
    with pytest.raises(ValueError, match="no ONNX node belongs"):
        OX.ort_quantize_static(variants[SP.FP32], tmp_path / "x.onnx", [b.numpy() for b in shapes("calib", 8)],
                               float_modules=("model.999",))


def test_tensorrt_path_fails_clearly_without_a_gpu(variants):
    from course_lib.ptq import trt as TRT

    with pytest.raises(ValueError, match="precision"):
        TRT.build_engine(variants[SP.FP32], "int4")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA GPU"):
            TRT.build_engine(variants[SP.FP32], "fp16")
