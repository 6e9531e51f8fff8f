"""The gpu profile's code paths, rehearsed on this CPU with a stand-in CUDA device that is strict about devices.

Nothing of the gpu profile had run anywhere: the notebooks call the lessons' functions with ``device=hw.device()``
(``"cuda"`` there), and the classic GPU-only bugs — CPU inputs into a model moved to the GPU, ``.numpy()`` on a
device tensor — cannot show on a CPU run. :mod:`gpu_spy` makes them show here: inside ``fake_cuda()`` a tensor
moved to ``"cuda"`` is a CPU tensor that says ``cuda:0`` and refuses to meet CPU tensors (see its docstring).

Each test runs one library path that a notebook (or ``course gpu-check``) runs on the GPU, with ``device="cuda"``:
lesson 1 (notebook 01: training, prediction/evaluation; gpu-check's traced-model parity), lesson 2 (notebook 02's
single-process strategy), lesson 5 (the detector's forward and ``detection.evaluate``; gpu-check's detector step).
Lesson 3's paths are rehearsed in tests/test_l3_*.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require_extra
from gpu_spy import DeviceMismatch, fake_cuda, on_fake_device


def test_the_spy_catches_host_inputs_and_numpy_on_the_device_and_passes_correct_code():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2))
    ids = torch.tensor([[1, 2, 3]])
    with fake_cuda():
        model.to("cuda")
        assert next(model.parameters()).device == torch.device("cuda", 0)
        with pytest.raises(DeviceMismatch, match="cuda:0 and cpu"):
            model(ids)  # CPU ids into a CUDA model
        out = model(ids.to("cuda"))
        assert on_fake_device(out) and out.device.type == "cuda"
        with pytest.raises(TypeError, match="can't convert cuda:0 device type tensor to numpy"):
            out.detach().numpy()
        with pytest.raises(TypeError, match="to numpy"):
            np.asarray(out.detach())
        host = out.detach().cpu()
        assert not on_fake_device(host) and isinstance(host.numpy(), np.ndarray)
        assert out.sum().item() == pytest.approx(float(host.sum()))  # .item() works on CUDA tensors too
        scale = torch.tensor(2.0)  # a CPU scalar (0-d) may meet a CUDA tensor, as on CUDA
        assert on_fake_device(out * scale)
        model.cpu()
        assert not on_fake_device(next(model.parameters()))
        model(ids)  # back on the CPU: fine


# --------------------------------------------------------------------------------------------
# Lesson 1: notebook 01 trains with device=hw.device() (gpu profile: retrain), then predicts and evaluates
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def l1():
    require_extra("transformers", "deploy")
    from course_lib.deploy import data, features
    from course_lib.deploy import model as M

    tok = features.load_tokenizer()
    rows = data.load_split("train")[:32]
    cfg = M.bert_config(len(tok), "tiny")
    return tok, rows, cfg, len(data.AREAS), len(data.ENTITY_TYPES)


def test_l1_training_prediction_and_evaluation_on_the_device(l1):
    from course_lib.deploy import model as M
    from course_lib.deploy import train as T

    tok, rows, cfg, n_cls, n_types = l1
    torch.manual_seed(0)
    model = M.BertMultitask(cfg, n_cls, n_types)
    with fake_cuda():
        r = T.train(model, tok, rows, T.TrainConfig(epochs=2 / 2, batch_size=16, max_seq_length=32, progress=False,
                                                     device="cuda"))
        assert r.steps == 2 and all(np.isfinite(r.losses))
        assert on_fake_device(next(model.parameters())), "train() did not leave the model on its device"
        ev = T.evaluate(model, tok, rows[:8], max_seq_length=32)  # a model left on the GPU after training
        areas, ents = T.predict(model, tok, [r_["text"] for r_ in rows[:4]], max_seq_length=32)
    assert 0 <= ev["cls_accuracy"] <= 1 and len(areas) == len(ents) == 4


def test_l1_gpu_check_parity_of_a_model_on_the_device(l1):
    """gpu-check's trace step compares the eager model and its trace on the device (parity moves nothing to numpy early)."""
    from course_lib.deploy import features
    from course_lib.deploy import model as M
    from course_lib.deploy import trace as TR

    tok, rows, cfg, n_cls, n_types = l1
    model = M.BertMultitask(cfg, n_cls, n_types).eval()
    held = features.input2feature(tok, [r["text"] for r in rows[:8]], 32, warn=False)
    ref = TR.parity(model, model, held.as_tuple())
    with fake_cuda():
        model.to("cuda")
        on_dev = tuple(x.to("cuda") for x in held.as_tuple())
        with torch.no_grad():
            par = TR.parity(model, model, on_dev)
    assert par["argmax_equal"] and par["spans_equal"] and par["max_abs_diff"] == ref["max_abs_diff"] == 0


# --------------------------------------------------------------------------------------------
# Lesson 2: notebook 02's single-process strategies on one device (a GPU per rank in the gpu profile)
# --------------------------------------------------------------------------------------------


def test_l2_single_strategy_on_the_device():
    """``single`` and ``reference_logits`` (what every rank compares with) on a GPU; the batch is made on the CPU.

    ``split`` moves operands inside a ``TorchDispatchMode``, below the level this spy sees; its device moves are
    tested with logical devices in tests/test_l2_parallel.py.
    """
    require_extra("transformers", "deploy")
    from course_lib.parallel import single
    from course_lib.parallel import model as bert
    from course_lib.parallel.world import World

    cfg = bert.bert_config("tiny")
    batch = bert.make_batch(2, 8)
    ref = bert.reference_logits(cfg, batch)
    with fake_cuda():
        runner = single.build(cfg, World(device="cuda", devices=["cuda"]))
        with torch.no_grad():
            out = runner(batch)  # the batch is made on the CPU, as the worker makes it
        on_dev_ref = bert.reference_logits(cfg, batch, device="cuda")
    assert not on_fake_device(on_dev_ref), "reference_logits must come back on the CPU"
    assert float((out.cpu() - ref).abs().max()) < 1e-5
    assert float((on_dev_ref - ref).abs().max()) == 0


# --------------------------------------------------------------------------------------------
# Lesson 5: the detector on the device (gpu-check), and detection.evaluate with a model on the device
# --------------------------------------------------------------------------------------------


def test_l5_detector_forward_and_predict_with_a_model_on_the_device():
    from course_lib.detection import evaluate as E
    from course_lib.detection import model as D

    torch.manual_seed(0)
    net = D.build("tiny").eval()
    images = np.random.default_rng(0).integers(0, 255, (3, 128, 128, 3), dtype=np.uint8)
    want = E.predict(net, images, batch_size=2)
    with fake_cuda():
        net.to("cuda")
        got = E.predict(net, images, batch_size=2)  # a learner's model on the GPU: images must follow it
    assert len(got) == len(want) == 3
    for g, w in zip(got, want):
        assert not on_fake_device(g), "predict() must return detections on the CPU (COCO eval reads them)"
        assert g.shape == w.shape and torch.allclose(g, w, atol=1e-4)


# --------------------------------------------------------------------------------------------
# course gpu-check's steps that need no GPU-only package, with ctx.device == "cuda"
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["l1.trace_map_location", "l3.fp16", "l5.detector_cuda"])
def test_gpu_check_steps_on_the_device(name, tmp_path):
    """The steps as they run on the GPU box (l1.cuda_train too, but its 30 steps take minutes under the spy)."""
    require_extra("transformers", "deploy")
    from course_lib import gpucheck

    step = next(s for s in gpucheck.STEPS if s.name == name)
    work = tmp_path / "work"
    work.mkdir()
    ctx = gpucheck.Context(device="cuda", work=work, gpus=1)
    with fake_cuda(available=True):
        res, summary = gpucheck.run_step(step, ctx)
    tb = tmp_path / "tracebacks.txt"
    assert res.status == "ok", tb.read_text() if tb.exists() else summary


# --------------------------------------------------------------------------------------------
# Lesson 3 (notebook 03 section 7 in the gpu profile): before the fix, eval.perplexity sent CPU ids to the device
# model and kernel="fast" called .numpy() on device weights.
# --------------------------------------------------------------------------------------------

@pytest.fixture
def tiny_llm():
    from course_lib.llm.convert import from_llama, tiny_llama

    return from_llama(tiny_llama(seed=0, vocab_size=256, hidden_size=128, layers=2, heads=4, kv_heads=2,
                                 intermediate=256)).float().eval()


def test_l3_perplexity_of_a_model_on_the_device(tiny_llm):
    """decode.perplexities / eval.perplexity pass CPU token ids: on CUDA, "CPU ids into a CUDA model"."""
    from course_lib.llm import eval as E

    ids = torch.randint(3, 256, (200,), generator=torch.Generator().manual_seed(0))
    want = E.perplexity(tiny_llm, ids, window=64)
    with fake_cuda(), torch.no_grad():
        tiny_llm.to("cuda")
        got = E.perplexity(tiny_llm, ids, window=64)
    assert got == pytest.approx(want, rel=1e-5)


def test_l3_fast_kernel_on_a_model_on_the_device(tiny_llm):
    """kernel="fast" reaches to_matmulnbits, which calls .numpy() on the (device) weights.

    Fixed means: it works on the device, or it refuses with one clear error naming the device (the fast path is a
    CPU kernel), before anything is replaced.
    """
    from course_lib.llm import quant

    with fake_cuda():
        tiny_llm.to("cuda")
        try:
            quant.quantize_model(tiny_llm, 8, kernel="fast")
        except DeviceMismatch:
            raise
        except (ValueError, RuntimeError, NotImplementedError) as e:
            assert "cuda" in str(e).lower() or "device" in str(e).lower() or "cpu" in str(e).lower(), e
            assert not any(type(m).__name__ == "QLinear" for m in tiny_llm.modules()), "half-quantized model left behind"


# --------------------------------------------------------------------------------------------
# GPU-only notebook cells never run on a CPU machine: a name they use that nothing in the notebook binds (e.g.
# ``from course_lib.ptq import trt as TRT`` then ``trt.build_engine``) would only fail on the first GPU run.
# --------------------------------------------------------------------------------------------

def _names(nb_path):
    import ast
    import builtins

    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    code = "\n".join("\n".join(line for line in c.source.splitlines() if not line.lstrip().startswith(("%", "!")))
                     for c in nb.cells if c.cell_type == "code")
    tree = ast.parse(code)
    bound = set(dir(builtins)) | {"display", "get_ipython", "__file__"}
    used = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, (ast.Store, ast.Del)):
                bound.add(node.id)
            else:
                used.setdefault(node.id, node.lineno)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound |= set(node.names)
    return {n: line for n, line in used.items() if n not in bound}


@pytest.mark.parametrize("nb", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb")))
def test_every_name_a_notebook_uses_is_bound_somewhere_in_it(nb):
    """Catches a typo in a cell the cpu profile skips (GPU-only paths) before a GPU machine does."""
    path = Path(__file__).resolve().parents[1] / "notebooks" / nb
    assert _names(path) == {}, f"{nb}: names used but never bound (name: line of the joined code cells)"


def test_the_unbound_name_check_finds_a_gpu_only_typo(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("if False:\n    from course_lib.ptq import trt as TRT\n    trt.build_engine('x')")]
    nbformat.write(nb, tmp_path / "99_demo.ipynb")
    assert set(_names(tmp_path / "99_demo.ipynb")) == {"trt"}
