"""Lesson 1: address generator, tokenizer/features, BertMultitask + GlobalPointer, checkpoints, tracing,
Triton config builder/validation and a real Triton round trip on 127.0.0.1."""

from __future__ import annotations

import filecmp
import threading

import pytest
import torch
from conftest import require_extra

require_extra("transformers", "deploy")
require_extra("tritonclient.grpc.model_config_pb2", "deploy")

from course_lib.deploy import data, features  # noqa: E402
from course_lib.deploy import model as M  # noqa: E402
from course_lib.deploy import serve as S  # noqa: E402
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
    with pytest.raises(TC.ConfigError, match="'INPUT__0' is not an input of the traced model"):
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


def test_model_io_names_an_unmapped_dtype():
    class Complex(torch.nn.Module):
        def forward(self, x):
            return torch.view_as_complex(torch.stack([x.float(), x.float()], -1))

    tr = torch.jit.trace(Complex(), (torch.ones(2, 3, dtype=torch.long),))
    with pytest.raises(TC.ConfigError, match=r"output 'cls_logits' has dtype torch.complex64, which has no Triton data type"):
        TC.model_io(tr, (torch.ones(2, 3, dtype=torch.long),), output_names=("cls_logits",))


def test_instance_count_zero_means_one_and_negative_is_rejected(io):
    text = TC.build_config("a", io, instance_count=0)  # unset: Triton starts one instance
    assert TC.parse_config(text).instance_group[0].count == 0
    with pytest.raises(TC.ConfigError, match="count must be >= 1, got -1"):
        TC.build_config("a", io, instance_count=-1)


def test_dynamic_batching_block_parses():
    for pref, delay in (((8, 16), 2000), ((), 0)):
        block = TC.dynamic_batching_block(pref, delay)
        cfg = TC.parse_config(f'name: "a"\nbackend: "python"\nmax_batch_size: 16\n{block}\n')
        assert list(cfg.dynamic_batching.preferred_batch_size) == list(pref)
        assert cfg.dynamic_batching.max_queue_delay_microseconds == delay


# ---------------------------------------------------------------------------------------------- serving


def test_server_not_running_is_a_clear_error(batch):
    with pytest.raises(S.ServerNotRunning, match=r"no Triton server is running(.|\n)*python -m course_lib.deploy.serve"):
        S.infer(f"127.0.0.1:{S.free_port()}", batch.as_numpy(), timeout_s=2)


class FakeClient:
    """Stands in for tritonclient.http's client: answers, fails, or blocks until released."""

    def __init__(self, mode="ok", release=None):
        self.mode, self.release, self.calls = mode, release, 0

    def infer(self, model, inputs):
        self.calls += 1
        if self.mode == "fail":
            raise RuntimeError("model exploded")
        if self.mode == "block":
            self.release.wait()
        return None

    def close(self):
        pass


@pytest.fixture
def fake_server(monkeypatch):
    def install(mode="ok", release=None):
        monkeypatch.setattr("course_lib.deploy.client.check_server", lambda url, timeout_s=3.0: None)
        monkeypatch.setattr("course_lib.deploy.client._client", lambda url, timeout_s: FakeClient(mode, release))

    return install


def test_load_test_accounts_for_every_request(fake_server, batch):
    payloads = [{k: v[:1] for k, v in batch.as_numpy().items()}]
    fake_server("ok")
    row = S.load_test("x:1", "address", payloads, concurrency=3, n_requests=10)
    assert (row["requests"], row["errors"], len(row["latencies_s"])) == (10, 0, 10)
    fake_server("fail")
    row = S.load_test("x:1", "address", payloads, concurrency=4, n_requests=7)
    assert (row["requests"], row["errors"]) == (0, 7) and "model exploded" in row["first_error"]


def test_load_test_rejects_a_payload_missing_an_input_before_sending(fake_server, batch):
    fake_server("ok")
    good = {k: v[:1] for k, v in batch.as_numpy().items()}
    bad = {k: v for k, v in good.items() if k != "attention_mask"}
    with pytest.raises(ValueError, match="payload 1 lacks input"):
        S.load_test("x:1", "address", [good, bad], concurrency=2, n_requests=4)


def test_load_test_deadline_stops_sending_and_says_so(fake_server, batch):
    release = threading.Event()
    fake_server("block", release)
    payloads = [{k: v[:1] for k, v in batch.as_numpy().items()}]
    timer = threading.Timer(1.5, release.set)  # each client's first request is answered after the deadline
    timer.start()
    try:
        row = S.load_test("x:1", "address", payloads, concurrency=2, n_requests=6, deadline_s=0.5, timeout_s=1.0)
    finally:
        release.set()
    # at most one answered per client; every other request is reported as not sent, none is lost
    assert row["requests"] + row["errors"] == 6 and row["errors"] >= 4
    assert "deadline of 0 s" in row["first_error"] or "deadline" in row["first_error"]


def test_port_in_use_is_named_before_starting(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert S.port_in_use(port)
        with pytest.raises(S.PortInUse, match=f"port {port} is in use \\(pass --port"):
            S.TritonServer(tmp_path / "model.pt", http_port=port).__enter__()
    assert S._server_pids() == []


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert S.main(["--model", str(tmp_path / "nope.pt"), "--port", str(S.free_port())]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no TorchScript model at") and "--model" in err and "Traceback" not in err
    assert S.main(["--query", "上海市徐汇区", "--port", str(S.free_port())]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no Triton server is running") and "python -m course_lib.deploy.serve" in err


def test_cli_help_shows_the_client_command(capsys):
    with pytest.raises(SystemExit):
        S.main(["--help"])
    out = capsys.readouterr().out
    assert "--query" in out and "--port" in out and 'serve --query "上海市徐汇区漕溪北路88号"' in out


@pytest.mark.slow
def test_real_triton_round_trip(traced, tok, test_rows, capsys):
    require_extra("pytriton", "deploy")
    f = features.input2feature(tok, [r["text"] for r in test_rows[:8]], 64, pad_to_max=True, warn=False)
    with torch.no_grad():
        c0, n0 = traced(*f.as_tuple())

    class Boom(Exception):
        pass

    port = S.free_port()
    with pytest.raises(Boom), S.TritonServer(traced, dynamic_batching=True, http_port=port) as srv:
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
        # the documented client command, against this server
        capsys.readouterr()
        assert S.main(["--query", test_rows[0]["text"], "--port", str(port)]) == 0
        import json

        line = json.loads(capsys.readouterr().out.strip().splitlines()[0])
        assert line["area"] == out[0]["area"] and line["entities"] == out[0]["entities"]
        # a second server on the same port is refused with the reason, not Triton's 403
        with pytest.raises(S.PortInUse, match=f"port {port} is in use"):
            S.TritonServer(traced, http_port=port).__enter__()
        raise Boom("a failure inside the block must still stop the server")
    assert S._server_pids() == []  # nothing orphaned
    assert "Failed to initialize NVML" not in capsys.readouterr().out


def test_batching_speedup_and_plot_on_a_known_table():
    import pandas as pd

    df = pd.DataFrame({"dynamic_batching": [True] * 2 + [False] * 2, "concurrency": [1, 16] * 2,
                       "throughput_rps": [10.0, 300.0, 12.0, 100.0], "rps_min": [9.0, 250.0, 11.0, 90.0],
                       "rps_max": [11.0, 350.0, 13.0, 110.0],
                       "rps_rounds": [[9.0, 11.0], [250.0, 350.0], [11.0, 13.0], [125.0, 87.5]],
                       "p50_ms": [4.0, 40.0, 3.0, 80.0], "p95_ms": [5.0, 50.0, 4.0, 90.0]})
    assert S.batching_speedup(df, 16) == (3.0, 2.0, 4.0)
    assert S.batching_speedup(df, 1)[0] == pytest.approx(10 / 12)
    with pytest.raises(ValueError, match="no rows at concurrency 4"):
        S.batching_speedup(df, 4)
    fig = S.plot_sweep(df)
    assert len(fig.axes) == 2 and all(ax.get_ylim()[0] == 0 for ax in fig.axes)
