"""Lesson 1: address generator, tokenizer/features, BertMultitask + GlobalPointer, checkpoints, tracing,
Triton config builder/validation and a real Triton round trip on 127.0.0.1."""

from __future__ import annotations

import filecmp

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from course_lib.deploy import data, features  # noqa: E402
from course_lib.deploy import model as M  # noqa: E402
from course_lib.deploy import trace as TR  # noqa: E402
from course_lib.deploy import train as T  # noqa: E402
from course_lib.deploy import triton_config as TC  # noqa: E402

torch.set_num_threads(1)  # a shared CI box: one thread avoids OpenMP spin-waiting


@pytest.fixture(scope="module")
def tok():
    return features.load_tokenizer()


@pytest.fixture(scope="module")
def test_rows():
    return data.load_split("test")


@pytest.fixture(scope="module")
def tiny(tok):
    torch.manual_seed(0)
    return M.BertMultitask(M.bert_config(len(tok), "tiny"), len(data.AREAS), len(data.ENTITY_TYPES)).eval()


@pytest.fixture(scope="module")
def batch(tok, test_rows):
    return features.input2feature(tok, [r["text"] for r in test_rows[:16]], 64, warn=False)


@pytest.fixture(scope="module")
def traced(tiny, batch):
    tr, _ = TR.trace_model(tiny, batch.as_tuple())
    return tr


# ---------------------------------------------------------------------------------------------- data


def test_generator_is_deterministic_and_spans_match():
    a, b = data.generate(300, seed=7), data.generate(300, seed=7)
    assert a == b
    assert a != data.generate(300, seed=8)
    for ex in a:
        data.check_example(ex)
        assert ex["entities"], ex
    assert {ex["area"] for ex in a} == set(data.AREAS)
    types = {e["type"] for ex in a for e in ex["entities"]}
    assert types == set(data.ENTITY_TYPES)


def test_generator_noise_is_present():
    rows = data.generate(2000, seed=1)
    texts = [r["text"] for r in rows]
    assert any(" " in t for t in texts)  # spaces
    assert any(t.startswith(("上海上海市", "北京北京市", "天津天津市", "重庆重庆市")) for t in texts)  # 上海上海市
    assert any(not any(e["type"] == "prov" for e in r["entities"]) for r in rows)  # missing levels
    assert any(sum(e["type"] == "prov" for e in r["entities"]) == 2 for r in rows)  # duplicated province
    typo_chars = set(data.TYPOS.values())
    assert any(any(ch in typo_chars for e in r["entities"] for ch in e["text"]) for r in rows)


def test_committed_dataset_regenerates_byte_identical(tmp_path):
    files = data.write_dataset(tmp_path)
    for kind, path in files.items():
        assert filecmp.cmp(path, data.default_dir() / path.name, shallow=False), f"{kind} differs from data/"


def test_missing_files_say_how_to_regenerate(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m course_lib.deploy.data"):
        data.load_split("train", tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m course_lib.deploy.data"):
        features.load_tokenizer(tmp_path / "vocab.txt")


def test_bad_examples_rejected():
    ex = data.generate(1, seed=0)[0]
    bad = dict(ex, entities=[dict(ex["entities"][0], end=ex["entities"][0]["end"] + 1)])
    with pytest.raises(ValueError, match="does not match"):
        data.check_example(bad)
    with pytest.raises(ValueError):
        data.generate(-1)


# ---------------------------------------------------------------------------------------------- features


def test_tokenizer_covers_the_data_and_unk_for_foreign(tok):
    rows = data.load_split("train")
    enc = tok([r["text"] for r in rows[:500]])
    assert all(tok.unk_token_id not in ids for ids in enc["input_ids"])
    assert tok.tokenize("上海😀東") == ["上", "海", "[UNK]", "[UNK]"]


def test_input2feature_bad_inputs(tok, capsys):
    f = features.input2feature(tok, ["", "上海市", "上海" * 50], max_seq_length=16)
    assert f.input_ids.shape == (3, 16)
    assert f.input_ids[0, :2].tolist() == [tok.cls_token_id, tok.sep_token_id]
    assert f.attention_mask[0].sum() == 2
    assert f.truncated == [False, False, True]
    assert "truncated" in capsys.readouterr().out and "kept the first 14 of 100" in f.notes[0]
    with pytest.raises(TypeError, match="strings"):
        features.input2feature(tok, [None])
    with pytest.raises(ValueError, match="at least one"):
        features.input2feature(tok, [])


def test_span_targets_decode_round_trip_gives_f1_one(tok, test_rows):
    rows = test_rows[:32]
    f = features.input2feature(tok, [r["text"] for r in rows], 64, warn=False)
    y = features.span_targets(f, rows)
    logits = y * 2 - 1  # perfect predictions: +1 on gold spans, -1 elsewhere
    pred = features.decode_spans(logits, f)
    scores = T.span_f1(pred, [r["entities"] for r in rows])
    assert scores["all"]["f1"] == 1.0
    assert [(e["type"], e["text"]) for e in pred[0]] == [(e["type"], e["text"]) for e in rows[0]["entities"]]


def test_span_f1_known_values():
    g = [[{"type": "city", "start": 0, "end": 3}, {"type": "road", "start": 3, "end": 6}]]
    p = [[{"type": "city", "start": 0, "end": 3}, {"type": "road", "start": 3, "end": 5}]]
    s = T.span_f1(p, g)
    assert s["all"]["precision"] == 0.5 and s["all"]["recall"] == 0.5
    assert s["city"]["f1"] == 1.0 and s["road"]["f1"] == 0.0


# ---------------------------------------------------------------------------------------------- model


def test_model_shapes_and_masks(tiny, batch):
    with torch.no_grad():
        c, n = tiny(*batch.as_tuple())
    b, L = batch.input_ids.shape
    assert c.shape == (b, len(data.AREAS))
    assert n.shape == (b, len(data.ENTITY_TYPES), L, L)
    assert (n[:, :, 3, 1] < -1e9).all()  # end before start
    pad_rows = (batch.attention_mask == 0).nonzero()
    if len(pad_rows):
        i, j = pad_rows[0].tolist()
        assert (n[i, :, :, j] < -1e9).all() and (n[i, :, j, :] < -1e9).all()


def test_bert_sizes_selectable():
    cfg = M.bert_config(100, "base")
    assert (cfg.num_hidden_layers, cfg.hidden_size) == (12, 768)
    assert M.bert_config(100).hidden_size == 256
    with pytest.raises(ValueError, match="unknown size"):
        M.bert_config(100, "huge")


def test_loader_bare_nested_and_clear_errors(tiny, tmp_path, tok):
    sd = tiny.state_dict()
    fresh = M.BertMultitask(M.bert_config(len(tok), "tiny"), len(data.AREAS), len(data.ENTITY_TYPES))
    M.load_weights(fresh, {k: v.clone() for k, v in sd.items()})  # bare
    M.load_weights(fresh, {"model": sd, "epoch": 3})  # nested
    assert torch.equal(fresh.classifier.weight, tiny.classifier.weight)
    path = M.save_checkpoint(tiny, tmp_path / "c.pt", half=True)
    back, obj = M.load_checkpoint(path)
    assert obj["model"]["classifier.weight"].dtype == torch.float16
    assert back.classifier.weight.dtype == torch.float32
    wrong = M.BertMultitask(M.bert_config(len(tok), "tiny"), 5, len(data.ENTITY_TYPES))
    with pytest.raises(M.CheckpointError, match=r"shape mismatches.*classifier.weight: checkpoint \(7, 128\) vs model \(5, 128\)"):
        M.load_weights(wrong, path)
    broken = {k: v for k, v in sd.items() if k != "classifier.bias"}
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(M.CheckpointError, match=r"missing keys \(1\): classifier.bias(.|\n)*unexpected keys \(1\): extra.weight"):
        M.load_weights(fresh, broken)
    with pytest.raises(M.CheckpointError, match="not a checkpoint"):
        M.load_weights(fresh, [1, 2])


def test_shipped_checkpoint_is_accurate(tok, test_rows):
    path = data.default_dir() / "bert_multitask_tiny.pt"
    model, obj = M.load_checkpoint(path)
    ev = T.evaluate(model, tok, test_rows[:150])
    assert ev["cls_accuracy"] > 0.8, ev["cls_accuracy"]
    assert ev["ner_f1"] > 0.8, ev["ner_f1"]


# ---------------------------------------------------------------------------------------------- tracing


def test_trace_parity_on_whole_batch(tiny, traced, batch, tmp_path):
    p = TR.parity(tiny, traced, batch.as_tuple())
    assert p["max_abs_diff"] < 1e-4 and p["argmax_equal"] and p["spans_equal"] and p["masked_still_masked"]
    back = TR.load_traced(TR.save_traced(traced, tmp_path / "m.pt"))
    assert TR.parity(tiny, back, batch.as_tuple())["max_abs_diff"] < 1e-4
    # another batch size and sequence length than the example: the trace kept them symbolic
    other = features.input2feature(features.load_tokenizer(), ["上海市徐汇区", "北京"], 64, warn=False)
    assert TR.parity(tiny, back, other.as_tuple())["max_abs_diff"] < 1e-4


def test_device_constants_found_and_fixed(tiny, traced, batch):
    assert TR.device_constants(traced) == []
    TR.check_no_device_constants(traced)
    leaky = M.BertMultitask(tiny.config, len(data.AREAS), len(data.ENTITY_TYPES), device_free_mask=False).eval()
    leaky.load_state_dict(tiny.state_dict())
    tr2, _ = TR.trace_model(leaky, batch.as_tuple())
    found = TR.device_constants(tr2)
    assert found and found[0]["device"] == "cpu"
    with pytest.raises(AssertionError, match="baked device constant"):
        TR.check_no_device_constants(tr2)
    assert TR.parity(tiny, tr2, batch.as_tuple())["max_abs_diff"] < 1e-4  # same numbers on CPU


def test_control_flow_trace_freezes_script_keeps():
    df, _ = TR.control_flow_demo()
    assert df["scripted_ok"].all()
    assert df["traced_ok"].tolist() == [False, True, False, True]


# ---------------------------------------------------------------------------------------------- config


@pytest.fixture(scope="module")
def io(traced, batch):
    return TC.model_io(traced, batch.as_tuple())


def test_model_io_from_the_trace(io):
    assert [s.name for s in io.inputs] == ["input_ids", "token_type_ids", "attention_mask"]
    assert all(s.data_type == "TYPE_INT64" and s.dims == [-1] for s in io.inputs)
    assert [(s.name, s.data_type, s.dims) for s in io.outputs] == [
        ("cls_logits__0", "TYPE_FP32", [7]), ("ner_logits__1", "TYPE_FP32", [7, -1, -1])]


def test_config_builds_and_parses_with_tritons_proto(io):
    text = TC.build_config("address", io, max_batch_size=32, preferred_batch_size=(4, 8),
                           instance_kind="KIND_GPU", instance_count=2, gpus=(0, 1))
    cfg = TC.parse_config(text)
    assert cfg.platform == "pytorch_libtorch" and cfg.max_batch_size == 32
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert list(cfg.instance_group[0].gpus) == [0, 1]
    assert list(cfg.output[1].dims) == [7, -1, -1]


def test_config_validation_errors(io, traced, tmp_path):
    bad_dims = TC.ModelIO(io.inputs, [io.outputs[0], TC.TensorSpec("ner_logits__1", "TYPE_FP32", [7, -1])])
    with pytest.raises(TC.ConfigError, match=r"ner_logits__1.*dims \[7, -1\] but the traced model has \[7, -1, -1\]"):
        TC.validate_config(TC.build_config("a", bad_dims, validate=False), io)
    bad_dtype = TC.ModelIO([TC.TensorSpec("input_ids", "TYPE_INT32", [-1])] + io.inputs[1:], io.outputs)
    with pytest.raises(TC.ConfigError, match="TYPE_INT32 but the traced model uses TYPE_INT64"):
        TC.build_config("a", bad_dtype, validate=False) and TC.validate_config(
            TC.build_config("a", bad_dtype, validate=False), io)
    bad_name = TC.ModelIO([TC.TensorSpec("INPUT__0", "TYPE_INT64", [-1])] + io.inputs[1:], io.outputs)
    with pytest.raises(TC.ConfigError, match="'INPUT__0' is not a input of the traced model"):
        TC.validate_config(TC.build_config("a", bad_name, validate=False), io)
    with pytest.raises(TC.ConfigError, match="preferred_batch_size 128"):
        TC.build_config("a", io, max_batch_size=64, preferred_batch_size=(128,))
    with pytest.raises(TC.ConfigError, match="does not parse"):
        TC.parse_config('name: "a"\nmax_batch_sise: 4\n')
    with pytest.raises(TC.ConfigError, match="KIND_CPU lists gpus"):
        TC.build_config("a", io, instance_kind="KIND_CPU", gpus=(0,))
    text = TC.build_config("a", bad_dims, validate=False)
    with pytest.raises(TC.ConfigError):
        TC.write_repository(tmp_path / "repo", "a", traced, text, io)
    assert not (tmp_path / "repo").exists()  # nothing written
    good = TC.write_repository(tmp_path / "repo", "a", traced, TC.build_config("a", io), io, {"areas.txt": data.AREAS})
    assert (good / "1" / "model.pt").exists() and (good / "config.pbtxt").exists() and (good / "areas.txt").exists()


# ---------------------------------------------------------------------------------------------- serving


def test_server_not_running_is_a_clear_quick_error(batch):
    S = pytest.importorskip("course_lib.deploy.serve")
    import time

    t0 = time.time()
    with pytest.raises(S.ServerNotRunning, match=r"no Triton server is running(.|\n)*python -m course_lib.deploy.serve"):
        S.infer(f"127.0.0.1:{S.free_port()}", batch.as_numpy(), timeout_s=2)
    assert time.time() - t0 < 10


@pytest.mark.slow
def test_real_triton_round_trip(traced, tok, test_rows):
    pytest.importorskip("pytriton")
    S = pytest.importorskip("course_lib.deploy.serve")
    f = features.input2feature(tok, [r["text"] for r in test_rows[:8]], 64, pad_to_max=True, warn=False)
    with torch.no_grad():
        c0, n0 = traced(*f.as_tuple())
    class Boom(Exception):
        pass

    with pytest.raises(Boom), S.TritonServer(traced, dynamic_batching=True) as srv:
        assert S._server_pids(), "tritonserver should be a child of this process"
        cfg = S.served_config(srv.url, srv.name)
        assert cfg["backend"] == "python" and cfg["max_batch_size"] == 64 and "dynamic_batching" in cfg
        c, n = S.infer(srv.url, f.as_numpy(), srv.name)
        assert abs(c - c0.numpy()).max() < 1e-5 and abs(n - n0.numpy()).max() < 1e-3
        with pytest.raises(S.TritonRequestError, match=r"unexpected shape for input '\w+' for model 'address'"):
            S.infer(srv.url, {k: v[0] for k, v in f.as_numpy().items()}, srv.name)
        out = S.clean_addresses(srv.url, tok, [test_rows[0]["text"], ""], srv.name)
        assert [(e["type"], e["start"], e["end"]) for e in out[0]["entities"]] == [
            (e["type"], e["start"], e["end"]) for e in features.decode_spans(n0, f)[0]]
        assert out[1]["entities"] == [] and out[1]["area"] is None and "empty" in out[1]["note"]
        payloads = [{k: v[i:i + 1] for k, v in f.as_numpy().items()} for i in range(8)]
        row = S.load_test(srv.url, srv.name, payloads, concurrency=4, n_requests=16)
        assert row["requests"] == 16 and row["errors"] == 0
        assert sum(srv.batch_sizes) >= 16 + 8
        raise Boom("a failure inside the block must still stop the server")
    assert S._server_pids() == []  # nothing orphaned


def test_batching_speedup_and_plot_on_a_known_table():
    import pandas as pd

    S = pytest.importorskip("course_lib.deploy.serve")
    df = pd.DataFrame({"dynamic_batching": [True] * 2 + [False] * 2, "concurrency": [1, 64] * 2,
                       "throughput_rps": [10.0, 300.0, 12.0, 100.0], "p95_ms": [5.0, 50.0, 4.0, 90.0]})
    assert S.batching_speedup(df) == 3.0
    fig = S.plot_sweep(df)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2
