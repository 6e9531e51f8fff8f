"""Terminal chat with the Baichuan-layout SmolLM2, in the spirit of Baichuan's ``cli_demo.py`` (notebook 03).

Run ``course-chat --bits 8`` or ``python -m course_lib.llm.chat_cli``. Commands (typed at the prompt):

* ``clear``   forget the conversation
* ``stream``  toggle streaming (token by token) on/off
* ``history`` show how many turns are remembered
* ``help``    list commands
* ``exit``    quit (Ctrl-D too)

Ctrl-C while an answer streams stops that answer; the partial answer stays in the history, so the
next turn still alternates user/assistant. ``--tiny`` swaps in a tiny random model and a character
tokenizer (instant start, used by the tests); ``--token-delay`` slows streaming down for demos.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

COMMANDS = ("clear", "stream", "history", "help", "exit")
TINY_ALPHABET = "abcdefghijklmnopqrstuvwxyz ,.!?'"
TINY_SPECIAL = 3  # ids 0 pad, 1 bos, 2 eos


class TinyTokenizer:
    """A character tokenizer over a 32-letter alphabet, for the ``--tiny`` model (tests, demos; notebook 03)."""

    chat_template = None
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    vocab_size = TINY_SPECIAL + len(TINY_ALPHABET)

    def __call__(self, text: str) -> dict:
        """Text → {"input_ids": [...]} (lower-cased; unknown characters folded onto the alphabet)."""
        return {"input_ids": [TINY_SPECIAL + (TINY_ALPHABET.index(c) if c in TINY_ALPHABET
                                              else ord(c) % len(TINY_ALPHABET)) for c in text.lower()]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Ids → text (special ids dropped)."""
        return "".join(TINY_ALPHABET[i - TINY_SPECIAL] for i in ids if i >= TINY_SPECIAL)


def tiny_model(seed: int = 0):
    """A tiny random BaichuanForCausalLM (GQA, RoPE) over :class:`TinyTokenizer`'s vocabulary."""
    import torch

    from course_lib.llm.baichuan import BaichuanConfig, BaichuanForCausalLM

    torch.manual_seed(seed)
    cfg = BaichuanConfig(vocab_size=TinyTokenizer.vocab_size, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, eos_token_id=2)
    model = BaichuanForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
        model.lm_head.weight[2] = 0  # EOS logit 0 while the others spread: answers are rarely empty
    return model


def load_chat_model(bits: int = 16, tiny: bool = False, group_size: int | None = None, kernel: str = "fast",
                    graph: bool = False):
    """(model, tokenizer): SmolLM2 in Baichuan layout (or the tiny model), quantized to ``bits`` (16 = float).

    Quantized models use ``kernel`` ('fast' = the fused int8/int4 kernel of course_lib.llm.kernels,
    'reference' = the seed's dequantise-then-matmul). ``graph=True`` returns the model as one onnxruntime
    graph per token (:class:`course_lib.llm.onnx_decode.GraphDecoder`, the fastest way lesson 3 measured;
    quantized layers run as MatMulNBits on their int8/int4 codes), with the same ``stream_ids``.
    """
    if bits not in (16, 8, 4):
        raise ValueError(f"bits must be 16, 8 or 4, got {bits!r}")
    if bits != 16:
        check_quant_args(bits, group_size, kernel)
    if tiny:
        model, tok = tiny_model(), TinyTokenizer()
    else:
        from course_lib.llm.convert import load_smollm2_baichuan

        model, tok = load_smollm2_baichuan(verbose=True)
    if bits != 16:
        model.quantize(bits, group_size=group_size, kernel=kernel)
    if graph:
        from course_lib.llm.onnx_decode import GraphDecoder

        model = GraphDecoder(model)
    return model, tok


def describe_setting(bits: int, kernel: str = "fast", graph: bool = False) -> str:
    """How a chat front end names its model setting, e.g. 'int8 (fast kernel), one onnxruntime graph per token'."""
    prec = "float32" if bits == 16 else f"int{bits} ({kernel} kernel)"
    return prec + (", one onnxruntime graph per token" if graph else "")


def check_quant_args(bits: int, group_size, kernel: str) -> None:
    """ValueError (one line naming what is accepted) for a group size / kernel the chosen quantization cannot use."""
    from course_lib.llm import kernels

    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0):
        raise ValueError(f"--group-size must be a positive integer, got {group_size}")
    if kernel == "fast":
        kernels.check_kernel(kernel, bits, group_size)  # names the supported group sizes
    elif kernel != "reference":
        raise ValueError(f"kernel must be one of {kernels.KERNELS}, got {kernel!r}")
    elif group_size is not None and 576 % group_size:  # SmolLM2's hidden size; the tiny model's 64 is checked by QLinear
        raise ValueError(f"--group-size {group_size} must divide the layer widths (576, 1536)")


class ChatSession:
    """Conversation state shared by the CLI and the Streamlit app: history, streaming flag, truncation notes."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 128, max_context: int = 2048,
                 stream: bool = True, token_delay: float = 0.0, temperature: float = 0.0,
                 top_p: float = 0.85, top_k: int = 5, repetition_penalty: float = 1.1):
        self.model, self.tok = model, tokenizer
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", max_context)
        self.max_new_tokens, self.max_context = max_new_tokens, min(max_context, limit)
        if self.max_new_tokens >= self.max_context:
            raise ValueError(f"max_new_tokens ({max_new_tokens}) must be below the context ({self.max_context})")
        self.stream, self.token_delay = stream, token_delay
        # temperature 0 = greedy; Baichuan-13B-Chat's defaults are temperature 0.3, top_p 0.85, top_k 5, penalty 1.1
        self.gen = dict(do_sample=temperature > 0, temperature=temperature or 1.0, top_p=top_p, top_k=top_k,
                        repetition_penalty=repetition_penalty)
        self.history: list[dict] = []
        self.last_truncated = False
        self.last_tokens, self.last_seconds = 0, 0.0  # of the last answer: generated tokens and wall time

    @property
    def last_tokens_per_s(self) -> float:
        """Generated tokens per second of the last answer (prompt prefill included)."""
        return self.last_tokens / self.last_seconds if self.last_seconds > 0 else float("nan")

    def clear(self) -> None:
        """Forget the conversation."""
        self.history = []

    def answer(self, text: str):
        """Add the user's ``text`` and yield the answer's pieces; the (possibly partial) answer is kept on exit."""
        from course_lib.llm.baichuan import _eos_ids, build_chat_input

        if not text.strip():
            raise ValueError("empty prompt")
        self.history.append({"role": "user", "content": text})
        ids, self.last_truncated = build_chat_input(self.tok, self.history, self.max_new_tokens, self.max_context)
        reply = {"role": "assistant", "content": ""}
        self.history.append(reply)  # appended first: an interrupt still leaves user/assistant pairs
        eos = _eos_ids(self.tok, None)
        new: list[int] = []
        self.last_tokens, t0 = 0, time.perf_counter()
        for tok in self.model.stream_ids(ids, max_new_tokens=self.max_new_tokens, eos_token_id=eos, **self.gen):
            self.last_tokens, self.last_seconds = self.last_tokens + 1, time.perf_counter() - t0
            if tok in eos:
                break
            new.append(tok)
            text = self.tok.decode(new, skip_special_tokens=True)
            if text.endswith("\ufffd") or len(text) <= len(reply["content"]):
                continue  # a multi-byte character split across tokens: wait for the rest
            piece, reply["content"] = text[len(reply["content"]):], text
            if self.token_delay:
                time.sleep(self.token_delay)
            yield piece


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="course-chat", description="Chat with SmolLM2 in Baichuan's layout (lesson 3).")
    p.add_argument("--bits", type=int, choices=(16, 8, 4), default=16,
                   help="weight precision of the linears: 16 = unquantized (float32 on CPU), 8 or 4 = QLinear")
    p.add_argument("--group-size", type=int, default=None, help="int4/int8 group size (default: per-row, Baichuan's scheme)")
    p.add_argument("--kernel", choices=("fast", "reference"), default="fast",
                   help="quantized matmul: fast = fused int8/int4 kernel, reference = dequantise then matmul")
    p.add_argument("--graph", action="store_true",
                   help="decode with one onnxruntime graph per token (lesson 3's fastest variant; same sampling options)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-context", type=int, default=2048, help="prompt + answer tokens; longer histories are truncated")
    p.add_argument("--no-stream", action="store_true", help="start with streaming off")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; >0 samples (Baichuan-Chat uses 0.3)")
    p.add_argument("--top-p", type=float, default=0.85)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--repetition-penalty", type=float, default=1.1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--tiny", action="store_true", default=bool(os.environ.get("COURSE_CHAT_TINY")),
                   help="tiny random model + character tokenizer (instant; for tests) [env COURSE_CHAT_TINY=1]")
    p.add_argument("--token-delay", type=float, default=0.0, help="seconds to wait per streamed piece (demo/testing)")
    return p


def _check_args(args) -> str | None:
    """The one-line error for bad numeric options, or None."""
    if args.max_new_tokens < 1:
        return f"--max-new-tokens must be >= 1, got {args.max_new_tokens}"
    if args.max_context < 2:
        return f"--max-context must be >= 2, got {args.max_context}"
    if args.threads is not None and args.threads < 1:
        return f"--threads must be >= 1, got {args.threads}"
    if args.bits != 16:
        try:
            check_quant_args(args.bits, args.group_size, args.kernel)
        except ValueError as e:
            return str(e)
    return None


def _start_session(args, con):
    """(session, banner) or None after printing one error line."""
    from rich.markup import escape

    from course_lib.llm.smollm2 import ModelFilesMissing

    try:
        with con.status("loading model ..."):
            model, tok = load_chat_model(args.bits, tiny=args.tiny, group_size=args.group_size, kernel=args.kernel,
                                         graph=args.graph)
        session = ChatSession(model, tok, args.max_new_tokens, args.max_context, stream=not args.no_stream,
                              token_delay=args.token_delay, temperature=args.temperature, top_p=args.top_p,
                              top_k=args.top_k, repetition_penalty=args.repetition_penalty)
    except (ModelFilesMissing, ValueError) as e:
        con.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        return None
    name = "tiny random model" if args.tiny else "SmolLM2-135M (Baichuan layout)"
    prec = describe_setting(args.bits, args.kernel, args.graph)
    return session, f"[bold]{name}[/], {prec}. Commands: clear, stream, history, help, exit. Ctrl-C stops an answer."


def _command(text: str, session: ChatSession, con) -> bool:
    """Handle a command or empty input; True if ``text`` was one (nothing to send to the model)."""
    cmd = text.strip().lower().lstrip("/")
    if not text.strip():
        con.print("[yellow]empty prompt: type a message, or 'help'[/]")
    elif cmd == "clear":
        session.clear()
        con.print("[cyan]history cleared[/]")
    elif cmd == "stream":
        session.stream = not session.stream
        con.print(f"[cyan]streaming {'on' if session.stream else 'off'}[/]")
    elif cmd == "history":
        con.print(f"[cyan]history: {len(session.history) // 2} turn(s), {len(session.history)} message(s)[/]")
    elif cmd == "help":
        con.print("[cyan]" + ", ".join(COMMANDS) + "; anything else is sent to the model[/]")
    elif text.strip().startswith("/"):
        con.print(f"[yellow]unknown command {text.strip()!r}; commands: {', '.join(COMMANDS)}[/]")
    else:
        return False
    return True


def _answer(text: str, session: ChatSession, con) -> None:
    """Stream (or print at once) the model's answer, then its speed and any truncation note."""
    con.print("[bold blue]Bot[/]> ", end="")
    pieces = []
    try:
        for piece in session.answer(text):
            pieces.append(piece)
            if session.stream:
                con.print(piece, end="", markup=False, soft_wrap=True)
        if not session.stream:
            con.print("".join(pieces), markup=False, soft_wrap=True, end="")
        con.print()
    except KeyboardInterrupt:
        con.print("\n[yellow]\\[interrupted: partial answer kept in the history][/]")
    con.print(f"[dim]{session.last_tokens} tokens in {session.last_seconds:.2f} s = "
              f"{session.last_tokens_per_s:.1f} tokens/s[/]")
    if session.last_truncated:
        con.print(f"[yellow]note: prompt truncated: the conversation was longer than the context "
                  f"({session.max_context} tokens), only its last "
                  f"{session.max_context - session.max_new_tokens} tokens were used[/]")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``course-chat``: a read-answer loop with commands clear/stream/history/help/exit."""
    args = _parser().parse_args(argv)
    from rich.console import Console
    from rich.markup import escape

    con = Console(highlight=False)
    problem = _check_args(args)
    if problem:
        con.print(f"[bold red]error:[/] {escape(problem)}", soft_wrap=True)
        return 2
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = _start_session(args, con)
    if started is None:
        return 2
    session, banner = started
    con.print(banner)
    while True:
        try:
            text = con.input("[bold green]You[/]> ")
        except (EOFError, KeyboardInterrupt):
            con.print("\nbye")
            return 0
        if text.strip().lower().lstrip("/") == "exit":
            con.print("bye")
            return 0
        if not _command(text, session, con):
            _answer(text, session, con)


if __name__ == "__main__":
    sys.exit(main())
