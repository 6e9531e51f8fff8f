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
