"""The practitioner's side of the course (issue 26): the ``python -m course_lib.…`` entry points write only where
told, and the five "Use it on your own model" recipes in ``examples/`` run on tiny models."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib import paths

REPO = paths.repo_root()
EXAMPLES = REPO / "examples"


def _run_module(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


# ---------------------------------------------------------------------------- entry points
@pytest.mark.parametrize("module", ["course_lib.deploy.train", "course_lib.deploy.data"])
def test_help_prints_usage_and_writes_nothing(module, tmp_path):
    before = _tree(REPO / "data" / "addresses")
    r = _run_module([module, "--help"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: python -m {module}") and "--out" in r.stdout
    assert list(tmp_path.iterdir()) == []  # no file named --help (or anything else) in the working directory
    assert _tree(REPO / "data" / "addresses") == before


@pytest.mark.parametrize("module", ["course_lib.deploy.train", "course_lib.deploy.data"])
def test_out_is_required(module, tmp_path):
    r = _run_module([module], cwd=tmp_path)
    assert r.returncode == 2 and "the following arguments are required: --out" in r.stderr
    assert "Traceback" not in r.stderr and list(tmp_path.iterdir()) == []


def test_train_out_writes_lesson1_model_pt_only_there(tmp_path, monkeypatch, capsys):
    import torch

    from course_lib.deploy import data as D
    from course_lib.deploy import train as T
    from course_lib.deploy.features import input2feature, load_tokenizer
    from course_lib.deploy.model import load_checkpoint

    work, out = tmp_path / "cwd", tmp_path / "out" / "model.pt"
    work.mkdir()
    monkeypatch.chdir(work)
    before = _tree(REPO / "data" / "addresses")
    assert T.main(["--out", str(out)]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["model.pt"] and list(work.iterdir()) == []
    assert _tree(REPO / "data" / "addresses") == before
    assert "python -m course_lib.deploy.serve --model" in capsys.readouterr().out
    # the file is the shipped model, traced: same logits as the eager checkpoint
    traced = torch.jit.load(str(out))
    eager, _ = load_checkpoint(D.default_dir() / "bert_multitask_tiny.pt")
    f = input2feature(load_tokenizer(), ["上海市徐汇区漕溪北路88号", "广东深圳南山区"], 64, warn=False)
    with torch.no_grad():
        assert torch.allclose(traced(*f.as_tuple())[0], eager.float()(*f.as_tuple())[0], atol=1e-5)
    # bad input: one line, nothing written
    assert T.main(["--out", str(out.parent)]) == 1
    assert T.main(["--out", str(tmp_path / "x.pt"), "--checkpoint", str(tmp_path / "none.pt")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "is a folder" in err and "not found" in err
    assert not (tmp_path / "x.pt").exists()


def test_train_retrain_writes_model_and_checkpoint(tmp_path, monkeypatch, capsys):
    from course_lib.deploy import train as T
    from course_lib.deploy.model import load_checkpoint

    monkeypatch.chdir(tmp_path)
    out, ck = tmp_path / "m" / "model.pt", tmp_path / "m" / "ck.pt"
    # a fraction of an epoch: the CLI path, not the recipe's accuracy, is under test
    assert T.main(["--out", str(out), "--retrain", "--epochs", "0.02", "--no-progress", "--save-checkpoint", str(ck)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["ck.pt", "model.pt"]
    model, obj = load_checkpoint(ck)
    assert obj["train"]["steps"] == 2
    assert "trained now: 2 steps" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        T.main(["--out", str(out), "--epochs", "0"])
    assert e.value.code == 2


def test_data_out_regenerates_the_committed_files(tmp_path, capsys):
    from course_lib.deploy import data as D

    out = tmp_path / "addresses"
    assert D.main(["--out", str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(["train.jsonl", "dev.jsonl", "test.jsonl", "labels.json", "areas.txt",
                              "entity_types.txt", "vocab.txt"])
    assert all((out / n).read_bytes() == (D.default_dir() / n).read_bytes() for n in written)
    (tmp_path / "file").write_text("x")
    assert D.main(["--out", str(tmp_path / "file")]) == 1
    assert capsys.readouterr().err.strip() == f"error: --out {tmp_path / 'file'} is a file, not a folder"


# ---------------------------------------------------------------------------- the five recipes
def recipe(name: str) -> dict:
    """The namespace of ``examples/<name>`` (run as a module, not as __main__: its main() is called by the test)."""
    return runpy.run_path(str(EXAMPLES / name))


def test_the_book_page_lists_exactly_the_example_files():
    from course_lib.book import own_models

    assert sorted(own_models.RECIPES) == sorted(p.name for p in EXAMPLES.glob("*.py"))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Use it on your own model", 1)[1].split("\n## ", 1)[0]
    for name in own_models.RECIPES:
        assert f"examples/{name}" in section


def test_recipe_time_a_function(capsys):
    ours, ref = recipe("time_a_function.py")["main"](size=32, repeat=5)
    for r in (ours, ref):
        assert len(r.times_s) == 5 and r.p10_ms <= r.p50_ms <= r.p90_ms and r.unit == "rows" and r.items == 32
    out = capsys.readouterr().out
    assert "relu(x @ w): median" in out and ("are not separable here" in out or " than linear + clamp here" in out)


def test_recipe_quantize_transformers_model():
    from conftest import require_extra

    require_extra("transformers", "llm")
    require_extra("onnxruntime", "llm")  # kernel="fast" is onnxruntime's MatMulNBits
    table = recipe("quantize_transformers_model.py")["main"](new_tokens=4, repeat=1)
    assert list(table.index) == ["fp32", "int8", "int4 g32"]
    assert abs(table.loc["int8", "ppl vs fp32"]) < 0.01 and abs(table.loc["int4 g32", "ppl vs fp32"]) < 0.05
    b = table.bytes_per_token
    assert b["int8"] < b["fp32"] / 2.5 and b["int4 g32"] < b["int8"]  # the LM head stays fp32 (excluded)
    assert (table.tokens_per_s > 0).all()


def test_recipe_tune_matmul(tmp_path):
    from conftest import require_extra

    require_extra("tvm", "tvm")
    out = recipe("tune_matmul.py")["main"](n=32, trials=4, log_dir=tmp_path)
    lines = out["log"].read_text().splitlines()
    assert len(lines) == 4 and out["best"].score > 0
    assert out["tuned"].extra["max_abs_err"] < 1e-3  # the replayed best config computes the right C


def test_recipe_ptq_export_cnn(tmp_path):
    from conftest import require_extra

    require_extra("pytorch_quantization", "ptq")
    require_extra("onnxruntime", "ptq")
    from course_lib.ptq import onnx_utils

    out = recipe("ptq_export_cnn.py")["main"](out_dir=tmp_path)
    assert out["onnx"] == tmp_path / "cnn_int8_qdq.onnx" and [p.name for p in tmp_path.iterdir()] == ["cnn_int8_qdq.onnx"]
    assert onnx_utils.count_qdq(out["onnx"]) == 12  # 2 convs + 1 linear, each with an input and a weight Q/DQ pair
    assert out["y"].shape == (8, 10)
    assert out["ort_vs_torch"] < 1e-2  # onnxruntime's float kernels vs torch's: within about one int8 step


def test_recipe_plot_roofline(tmp_path):
    from conftest import require_extra

    require_extra("transformers", "llm")
    png = tmp_path / "roofline.png"
    out = recipe("plot_roofline.py")["main"](out_png=str(png), new_tokens=2, repeat=1)
    assert png.stat().st_size > 10_000
    small, big = out["points"]
    assert 0 < small["bytes_per_token"] < big["bytes_per_token"] and all(p["tokens_per_s"] > 0 for p in out["points"])
    texts = [t.get_text() for t in out["ax"].get_legend().get_texts()]
    assert texts[1:] == ["my model (transformers generate)", "bar: p10–p90 of the timed runs"]


# ---------------------------------------------------------------------------- the book page
def test_book_page_shows_each_recipe_from_its_file(tmp_path, monkeypatch):
    from bs4 import BeautifulSoup

    from course_lib import book
    from course_lib.book import own_models

    ctx = {"book_title": "T", "run": type("R", (), {"profile": "cpu", "started": "now", "machine": "m"})(),
           "run_name": "run", "built": "now"}
    page = own_models.build_page(tmp_path, book.jinja_env(), ctx)
    doc = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    sections = doc.select("section.recipe")
    assert [s["id"] for s in sections] == [n[:-3].replace("_", "-") for n in own_models.RECIPES]
    assert [a["href"] for a in doc.select("ol.recipe-toc a")] == [f"#{s['id']}" for s in sections]
    for s, name in zip(sections, own_models.RECIPES):
        code = s.select_one(".recipe-code").get_text()
        src = (EXAMPLES / name).read_text(encoding="utf-8")
        body = [ln for ln in src.split('"""', 2)[2].splitlines() if ln.strip()]
        assert all(ln.strip() in code for ln in body), name  # every code line of the file, verbatim
        assert s.h2.get_text().startswith("Recipe ") and s.p.get_text()  # title and prose from the docstring
    assert "bench.benchmark(mine" in sections[0].get_text()
    assert doc.select_one('nav a[href="own_models.html"]')["class"] == ["active"]
    # a book built outside a checkout says which files it could not find instead of failing
    monkeypatch.setattr(own_models, "examples_dir", lambda: tmp_path / "nowhere")
    doc = BeautifulSoup(own_models.build_page(tmp_path, book.jinja_env(), ctx).read_text(), "html.parser")
    assert not doc.select("section.recipe") and "time_a_function.py" in doc.select_one("p.none").get_text()
