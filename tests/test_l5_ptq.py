"""Lesson 5, quantization side: Q/DQ insertion, calibration (non-zero amax), CPU workarounds, sensitivity,
ONNX Q/DQ export + onnxruntime parity, ModelOpt, and the bad-input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import require_extra  # noqa: E402

require_extra("pytorch_quantization", "ptq")
require_extra("onnxruntime", "ptq")

from course_lib.ptq import onnx_utils as OX  # noqa: E402
from course_lib.ptq import pq  # noqa: E402
from course_lib.ptq import sensitivity as S  # noqa: E402

pq.quiet_logs()


def toy(outlier: float = 0.0) -> nn.Module:
    """conv1 → ReLU → conv2 → ReLU → conv3; ``outlier`` adds a huge bias to one channel of conv1's output."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                      nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        m[0].bias[0] += outlier
    return m


def batches(n=3, bs=4, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(bs, 3, size, size, generator=g) for _ in range(n)]


# ---------------------------------------------------------------------------- insertion
def test_auto_quantized_monkey_patches_and_restores():
    from pytorch_quantization import nn as quant_nn

    original = nn.Conv2d
    with pq.auto_quantized():
        assert nn.Conv2d is quant_nn.QuantConv2d
        m = nn.Sequential(nn.Conv2d(3, 4, 3))
    assert nn.Conv2d is original
    assert isinstance(m[0], quant_nn.QuantConv2d)
    assert hasattr(m[0], "_input_quantizer") and hasattr(m[0], "_weight_quantizer")


def test_manual_insertion_keeps_weights_and_descriptors():
    from pytorch_quantization import nn as quant_nn

    f = toy()
    q = pq.quantize_model(f, "histogram", skip=["4"])
    assert isinstance(q[0], quant_nn.QuantConv2d) and type(q[4]) is nn.Conv2d  # skipped layer stays float
    assert torch.equal(q[0].weight, f[0].weight)
    assert q[0]._weight_quantizer.axis == (0,) and q[0]._input_quantizer.axis is None
    assert type(f[0]) is nn.Conv2d  # original untouched
    assert list(pq.quant_layers(q)) == ["0", "2"]


# ---------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("method", ["max", "percentile", "mse", "entropy"])
def test_calibration_gives_nonzero_amax_and_small_error(method):
    f = toy()
    q = pq.quantize_model(f, "max" if method == "max" else "histogram")
    pq.calibrate(q, batches(), method, stride=4)
    amax = pq.amax_state(q)
    assert set(amax) == {f"{l}.{k}" for l in ("0", "2", "4") for k in ("_input_quantizer", "_weight_quantizer")}
    assert all((a > 0).all() for a in amax.values())
    assert amax["0._weight_quantizer"].numel() == 8  # per output channel
    x = batches(1, seed=1)[0]
    with torch.no_grad():
        rel = (q(x) - f(x)).norm() / f(x).norm()
    assert 0 < rel < 0.05


def test_histogram_methods_clip_below_max():
    f = toy()
    qm = pq.calibrate(pq.quantize_model(f, "max"), batches(), "max")
    qh = pq.quantize_model(f, "histogram")
    pq.collect_stats(qh, batches())
    pq.compute_amax(qh, "percentile", percentile=99.0)
    mx = float(qm[2]._input_quantizer.amax)
    assert float(qh[2]._input_quantizer.amax) < mx


def test_zero_batches_is_a_clear_error():
    q = pq.quantize_model(toy(), "max")
    with pytest.raises(ValueError, match="zero batches"):
        pq.calibrate(q, [], "max")
    with pytest.raises(ValueError, match="no TensorQuantizer"):
        pq.collect_stats(toy(), batches())
    with pytest.raises(ValueError, match="unknown calibration method"):
        pq.compute_amax(q, "minmax")
    qh = pq.quantize_model(toy(), "histogram")
    pq.collect_stats(qh, batches(1))
    with pytest.raises(ValueError, match="histogram"):
        pq.compute_amax(qh, "max")


def test_uncalibrated_model_is_refused(tmp_path):
    q = pq.quantize_model(toy(), "max")
    with pytest.raises(RuntimeError, match="calibrate"):
        pq.check_calibrated(q)
    with pytest.raises(RuntimeError, match="calibrate"):
        OX.export_onnx(q, tmp_path / "x.onnx", img_size=12)
    assert not (tmp_path / "x.onnx").exists()


def test_check_calibrated_reports_one_zero_channel():
    q = pq.calibrate(pq.quantize_model(toy(), "max"), batches(1), "max")
    pq.check_calibrated(q)  # calibrated: no error
    w = q.get_submodule("2")._weight_quantizer  # per-channel amax, one value per output channel
    assert w._amax.numel() == 8
    w._amax.data[3] = 0.0  # one all-zero channel (e.g. a filter that is all zeros)
    with pytest.raises(RuntimeError, match=r"2\._weight_quantizer \(1 of 8 channels\)"):
        pq.check_calibrated(q)


def test_amax_round_trip_on_cpu():
    q = pq.calibrate(pq.quantize_model(toy(), "max"), batches(), "max")
    state = pq.amax_state(q)
    fresh = pq.load_amax(pq.quantize_model(toy(), "max"), state)
    x = batches(1, seed=2)[0]
    with torch.no_grad():
        assert torch.equal(fresh(x), q(x))
    with pytest.raises(KeyError):
        pq.load_amax(fresh, {"nope._input_quantizer": torch.tensor(1.0)})


def test_fast_entropy_matches_library():
    from pytorch_quantization.calib import histogram as H

    rng = np.random.default_rng(0)
    for nb in (200, 400):
        hist, edges = np.histogram(np.abs(rng.standard_t(3, 5000)), bins=nb)
        hist[rng.random(nb) < 0.1] = 0
        for stride in (1, 3):
            ref = H._compute_amax_entropy(hist.copy(), edges, 8, False, stride, 128)
            assert float(pq.entropy_amax_fast(hist.copy(), edges, 8, False, stride, 128)) == pytest.approx(float(ref))


def test_cpu_mse_matches_literal_loop():
    from pytorch_quantization.calib import histogram as H
    from pytorch_quantization.tensor_quant import fake_tensor_quant

    rng = np.random.default_rng(1)
    hist, edges = np.histogram(np.abs(rng.normal(0, 1, 20000)), bins=300)
    # the library's loop, minus its .cuda() calls
    counts, e = torch.from_numpy(hist).float(), torch.from_numpy(edges).float()
    centers = (e[1:] + e[:-1]) / 2
    mses = [(((fake_tensor_quant(centers, centers[i], 8, False) - centers) ** 2) * counts).mean() for i in range(128, 300)]
    expected = centers[128 + int(np.argmin(mses))]
    with pq.cpu_mse_workaround():
        got = H._compute_amax_mse(hist, edges, 8, False, 1, 128)
    assert float(got) == pytest.approx(float(expected))
    assert H._compute_amax_mse.__name__ == "_compute_amax_mse"  # restored


# ---------------------------------------------------------------------------- sensitivity
def test_sensitivity_ranks_the_outlier_layer_first():
    f = toy(outlier=200.0)  # conv2's input has one huge channel: per-tensor max scale crushes the others
    q = pq.calibrate(pq.quantize_model(f, "max"), batches(), "max")
    x = batches(1, seed=3)[0]
    with torch.no_grad():
        ref = f(x)

    def score(m):  # higher is better
        with torch.no_grad():
            return -float(((m(x) - ref) ** 2).mean())

    df = S.sensitivity(q, score, progress=False)
    assert df["layer"].tolist()[0] == "2"
    assert df.attrs["float_score"] == 0.0 and (df["drop"] >= 0).all()
    assert all(not qq._disabled for qq in pq.quantizers(q).values())  # restored
    proxy = S.proxy_ranking(q, x)
    assert proxy["layer"].tolist()[0] == "2"
    before = score(q)
    S.keep_in_float(q, ["2"])
    assert score(q) > before
    assert q[2]._input_quantizer._disabled and not q[0]._input_quantizer._disabled


# ---------------------------------------------------------------------------- ONNX
def test_onnx_qdq_export_and_ort_parity(tmp_path):
    f = toy()
    q = pq.calibrate(pq.quantize_model(f, "max"), batches(size=16), "max")
    p = OX.export_onnx(q, tmp_path / "q.onnx", img_size=16)
    ops = OX.op_counts(p)
    assert ops["QuantizeLinear"] == ops["DequantizeLinear"] == 6  # 3 convs × (input, weight)
    assert OX.count_qdq(OX.export_onnx(f, tmp_path / "f.onnx", img_size=16)) == 0
    x = batches(1, bs=3, size=16, seed=4)[0]  # dynamic batch
    with torch.no_grad(), pq.fb_fake_quant():
        ref = q(x)
    # graph optimizations off: onnxruntime runs the Q/DQ ops literally -> same numbers as torch
    assert torch.allclose(OX.ort_predictor(OX.ort_session(p, optimize=False))(x), ref, atol=1e-6)
    # optimizations on: the convs run as float FusedConv/Conv between the Q/DQ ops (different kernels) -> within
    # about one quantization step (see test_pq_qdq_file_runs_in_float_on_ort_cpu)
    assert torch.allclose(OX.ort_predictor(OX.ort_session(p))(x), ref, atol=3e-3)
    with pq.fb_fake_quant():
        assert pq._quant_nn().TensorQuantizer.use_fb_fake_quant
    assert not pq._quant_nn().TensorQuantizer.use_fb_fake_quant


@pytest.mark.slow
def test_detector_int8_onnx_matches_torch_map(tmp_path):
    from course_lib.detection import data as D, evaluate as E, model as M

    torch.manual_seed(0)
    det = M.build().fuse()
    imgs, objs = D.generate_split("val", 6)
    q = pq.calibrate(pq.quantize_model(det, "max"), [D.to_tensor(imgs[:4])], "max")
    p = OX.export_onnx(q, tmp_path / "det.onnx", img_size=128)
    ops, n_layers = OX.op_counts(p), len(pq.quant_layers(q))
    assert ops["QuantizeLinear"] == ops["DequantizeLinear"]
    # every weight has its Q/DQ; inputs shared by two convs (ELAN branches) get one pair after deduplication
    assert 2 * n_layers < OX.count_qdq(p) <= 4 * n_layers
    run = OX.ort_predictor(OX.ort_session(p, optimize=False))
    x = D.to_tensor(imgs)
    with torch.no_grad(), pq.fb_fake_quant():
        ref = q(x)
    assert torch.allclose(run(x), ref, atol=1e-3)
    # a trivially correct detector (boxes from ground truth) keeps COCOeval at 1.0 through the same path
    coco = D.load_coco(D.build_dataset(tmp_path / "d", sizes={"val": 6}, write_png=False), "val")
    preds_t = E.predict(q, imgs)
    with pq.fb_fake_quant():
        preds_o = E.predict(run, imgs)
    assert len(preds_t) == len(preds_o) == 6
    assert E.coco_map(coco, E.to_coco_results(preds_t))["map"] == pytest.approx(
        E.coco_map(coco, E.to_coco_results(preds_o))["map"], abs=0.01)


# ---------------------------------------------------------------------------- ModelOpt
@pytest.mark.slow
def test_modelopt_quantize_disable_export(tmp_path):
    require_extra("modelopt", "ptq")
    from course_lib.ptq import mo

    f = toy()
    with pytest.raises(ValueError, match="zero batches"):
        mo.quantize(f, [])
    q = mo.quantize(f, batches(size=16))
    n_on = len(mo.quantizer_names(q))
    assert n_on >= 6
    x = batches(1, size=16, seed=5)[0]
    with torch.no_grad():
        assert (q(x) - f(x)).norm() / f(x).norm() < 0.05
    mo.disable_layers(q, ["4"])
    assert len(mo.quantizer_names(q)) < n_on
    p = OX.export_onnx(q, tmp_path / "mo.onnx", img_size=16)
    assert OX.count_qdq(p) >= 8
    with torch.no_grad():  # graph optimizations off: the literal Q/DQ ops, same numbers as torch
        assert torch.allclose(OX.ort_predictor(OX.ort_session(p, optimize=False))(x), q(x), atol=1e-4)


@pytest.mark.slow
def test_modelopt_entropy_calibration_and_ort_static(tmp_path):
    require_extra("modelopt", "ptq")
    from course_lib.ptq import mo

    f = toy()
    q = mo.quantize(f, batches(size=16), method="entropy", stride=4)
    x = batches(1, size=16, seed=6)[0]
    amax = [m.amax for _, m in q.named_modules() if type(m).__name__ == "TensorQuantizer" and m.is_enabled]
    assert amax and all((a > 0).all() for a in amax)
    with torch.no_grad():
        assert (q(x) - f(x)).norm() / f(x).norm() < 0.05
    with pytest.raises(ValueError, match="method"):
        mo.quantize(f, batches(size=16), method="mse")
    # onnxruntime's own static quantization of the float ONNX, one layer kept in float
    p = OX.export_onnx(f, tmp_path / "f.onnx", img_size=16)
    assert OX.node_module_name("/model.89/m.0/Conv") == "model.89.m.0"
    pq_ = OX.ort_quantize_static(p, tmp_path / "s.onnx", [b.numpy() for b in batches(size=16)], keep_float=("4",))
    ops = OX.optimized_op_counts(pq_)
    assert ops["QLinearConv"] == 2 and ops["Conv"] == 1
    with pytest.raises(ValueError, match="no Conv node of layer"):
        OX.ort_quantize_static(p, tmp_path / "t.onnx", [b.numpy() for b in batches(size=16)], keep_float=("nope",))
    with pytest.raises(ValueError, match="zero batches"):
        OX.ort_quantize_static(p, tmp_path / "t.onnx", [])


# ---------------------------------------------------------------------------- a user's own model (issue 26)
def user_cnn() -> nn.Module:
    """A 1-channel 28×28 CNN with a Linear head (MNIST-shaped), the model a user brings."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 7 * 7, 10)).eval()


def gray_batches(n=3, bs=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(bs, 1, 28, 28, generator=g) for _ in range(n)]


def test_user_cnn_quantizes_linear_and_exports_any_shape(tmp_path):
    from pytorch_quantization import nn as quant_nn

    f = user_cnn()
    q = pq.calibrate(pq.quantize_model(f), gray_batches(), "max")
    assert isinstance(q[7], quant_nn.QuantLinear) and torch.equal(q[7].weight, f[7].weight)
    assert list(pq.quant_layers(q)) == ["0", "3", "7"]
    assert q[7]._weight_quantizer.axis == (0,)  # one scale per output row
    assert "7" not in pq.quant_layers(pq.quantize_model(f, types=(nn.Conv2d,)))  # convolutions only
    with pytest.raises(ValueError, match="types"):
        pq.quantize_model(f, types=(nn.ReLU,))
    x = gray_batches(1, bs=5, seed=2)[0]
    p = OX.export_onnx(q, tmp_path / "q.onnx", x)
    assert OX.export_onnx(q, x, tmp_path / "q2.onnx") == tmp_path / "q2.onnx"  # (model, example, path) too
    ops = OX.op_counts(p)
    assert ops["QuantizeLinear"] == ops["DequantizeLinear"] == 6 and ops["Gemm"] == 1  # 2 convs + 1 linear
    with torch.no_grad(), pq.fb_fake_quant():
        ref = q(x)
    literal = OX.ort_predictor(OX.ort_session(p, optimize=False))(x)
    assert literal.shape == (5, 10) and torch.allclose(literal, ref, atol=1e-5)
    x3 = gray_batches(1, bs=3, seed=5)[0]  # dynamic batch
    assert OX.ort_predictor(OX.ort_session(p))(x3).shape == (3, 10)
    with pytest.raises(TypeError, match="example_input"):
        OX.export_onnx(q, tmp_path / "bad.onnx", [1, 28, 28])


def test_pq_qdq_file_runs_in_float_on_ort_cpu(tmp_path):
    """What export_onnx's docstring (and the book) say: onnxruntime's CPU optimizer keeps pytorch-quantization's
    layers in float (FusedConv / Gemm after DequantizeLinear); only ort_quantize_static gives QLinearConv."""
    f = user_cnn()
    q = pq.calibrate(pq.quantize_model(f), gray_batches(), "max")
    x = gray_batches(1)[0]
    ran = OX.optimized_op_counts(OX.export_onnx(q, tmp_path / "pq.onnx", x))
    assert ran["FusedConv"] + ran["Conv"] == 2 and ran["Gemm"] == 1 and ran["DequantizeLinear"] >= 3
    assert ran["QLinearConv"] == 0 and ran["QGemm"] == 0 and ran["MatMulInteger"] == 0
    static = OX.ort_quantize_static(OX.export_onnx(f, tmp_path / "f.onnx", x), tmp_path / "s.onnx", gray_batches())
    ran_s = OX.optimized_op_counts(static)
    assert ran_s["QLinearConv"] == 2 and ran_s["FusedConv"] + ran_s["Conv"] == 0
    run = OX.ort_predictor(OX.ort_session(static))
    with torch.no_grad():
        assert S.output_error(lambda t: run(t), f(x), x) < 0.1  # the int8 model stays close to float


def test_quantize_and_export_are_quiet_by_default(tmp_path, capfd):
    from absl import logging as absl_logging

    old = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.WARNING)  # a fresh session's default (the module called quiet_logs())
    try:
        q = pq.calibrate(pq.quantize_model(user_cnn()), gray_batches(), "max")
        OX.export_onnx(q, tmp_path / "q.onnx", gray_batches(1)[0])
        h = pq.quantize_model(user_cnn(), "histogram")
        pq.collect_stats(h, gray_batches())
        pq.compute_amax(h, "percentile")
        assert absl_logging.get_verbosity() == absl_logging.WARNING  # restored after each call
    finally:
        absl_logging.set_verbosity(old)
    err = capfd.readouterr().err
    assert "Load calibrated amax" not in err and "Disable MaxCalibrator" not in err, err[:500]


def test_output_error_takes_a_tensor_or_the_float_model():
    f = user_cnn()
    q = pq.calibrate(pq.quantize_model(f), gray_batches(), "max")
    x = gray_batches(1, seed=7)[0]
    with torch.no_grad():
        ref = f(x)
    e_tensor, e_model = S.output_error(q, ref, x), S.output_error(q, f, x)
    assert e_tensor == pytest.approx(e_model) and 0 < e_tensor < 0.1
    assert S.output_error(f, f, x) == 0.0
    with pytest.raises(ValueError, match="shape"):
        S.output_error(q, ref[:2], x)
    with pytest.raises(TypeError, match="reference must be"):
        S.output_error(q, 3.0, x)


@pytest.mark.slow
def test_modelopt_quantizes_the_user_cnn_linear_and_exports(tmp_path):
    require_extra("modelopt", "ptq")
    from course_lib.ptq import mo

    f = user_cnn()
    q = mo.quantize(f, gray_batches())
    assert {"7.input_quantizer", "7.weight_quantizer"} <= set(mo.quantizer_names(q))  # the Linear head too
    x = gray_batches(1, bs=4, seed=9)[0]
    assert S.output_error(q, f, x) < 0.1
    p = OX.export_onnx(q, tmp_path / "mo.onnx", x)
    assert OX.op_counts(p)["Gemm"] == 1 and OX.count_qdq(p) >= 12
    with torch.no_grad():
        assert torch.allclose(OX.ort_predictor(OX.ort_session(p, optimize=False))(x), q(x), atol=1e-4)
    ran = OX.optimized_op_counts(p)
    assert ran["QLinearConv"] == 0 and ran["FusedConv"] + ran["Conv"] == 2  # float on onnxruntime's CPU, as for pq
