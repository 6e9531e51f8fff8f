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
``--checkpoint DIR`` chats with your own model: a folder written by
:func:`course_lib.llm.baichuan.save_baichuan_checkpoint` (config.json + weights), see :func:`load_checkpoint`
for where its tokenizer comes from. Bad options and missing files or packages are one ``error:`` line and exit
status 2, before any model is loaded where the options alone tell.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

COMMANDS = ("clear", "stream", "history", "help", "exit")
TINY_ALPHABET = "abcdefghijklmnopqrstuvwxyz ,.!?'"
TINY_SPECIAL = 3  # ids 0 pad, 1 bos, 2 eos
SMOLLM2_VOCAB = 49152  # a checkpoint with this vocabulary and no tokenizer of its own gets SmolLM2's
# sampling options: (test, what is accepted); ChatSession and the CLI's argparse types share them
SAMPLING = {
    "temperature": (lambda v: v >= 0, ">= 0 (0 = greedy)"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "top_k": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "repetition_penalty": (lambda v: v > 0, "> 0 (1 = off)"),
}


def check_sampling(**options) -> None:
    """ValueError naming the rule, e.g. ``top_p must be in (0, 1], got 2.0``, for a bad sampling option."""
    for name, value in options.items():
        ok, rule = SAMPLING[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise ValueError(f"{name} must be {rule}, got {value!r}")


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


def load_checkpoint(folder):
    """(BaichuanForCausalLM, tokenizer) from a folder written by ``save_baichuan_checkpoint`` (``--checkpoint``).

    The tokenizer: the folder's own if it holds one (``tokenizer.save_pretrained(folder)``); else SmolLM2's for
    a 49152-token vocabulary (a model converted from SmolLM2), the tiny character tokenizer for the tiny model's;
    anything else is a ValueError saying to save the tokenizer beside the weights.
    """
    from course_lib.llm.baichuan import load_baichuan_checkpoint

    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"checkpoint {folder} is a file: give the folder that save_baichuan_checkpoint wrote "
                         "(config.json + weights)")
    model = load_baichuan_checkpoint(folder)
    vocab = model.config.vocab_size
    if (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists():
        from course_lib import hw
        from course_lib.llm.smollm2 import _quiet_loading

        with _quiet_loading():
            transformers = hw.require("transformers", "llm", what="the checkpoint's tokenizer")
            try:
                tok = transformers.AutoTokenizer.from_pretrained(str(folder))
            except (OSError, ValueError) as e:
                raise ValueError(f"cannot load the tokenizer in {folder}: {e}") from None
    elif vocab == TinyTokenizer.vocab_size:
        tok = TinyTokenizer()
    elif vocab == SMOLLM2_VOCAB:
        from course_lib.llm.smollm2 import load_tokenizer

        tok = load_tokenizer()
    else:
        raise ValueError(f"no tokenizer in {folder} for its {vocab}-token vocabulary: save it beside the weights "
                         "with tokenizer.save_pretrained(folder)")
    return model, tok


def load_chat_model(bits: int = 16, tiny: bool = False, group_size: int | None = None, kernel: str = "fast",
                    graph: bool = False, checkpoint=None):
    """(model, tokenizer): SmolLM2 in Baichuan layout (or the tiny model, or ``checkpoint``), quantized to ``bits``.

    ``bits`` 16 = float. Quantized models use ``kernel`` ('fast' = the fused int8/int4 kernel of
    course_lib.llm.fast, 'reference' = the seed's dequantise-then-matmul). ``graph=True`` returns the model as
    one onnxruntime graph per token (:class:`course_lib.llm.onnx_decode.GraphDecoder`, the fastest way lesson 3
    measured), with the same ``stream_ids``; the graph runs quantized layers as MatMulNBits (the fast kernel's op)
    whatever ``kernel`` says, so ``kernel='reference'`` with a graph is refused. ``checkpoint``: a folder for
    :func:`load_checkpoint`, used instead of SmolLM2 (and of ``tiny``).
    """
    if bits not in (16, 8, 4):
        raise ValueError(f"bits must be 16, 8 or 4, got {bits!r}")
    if bits != 16:
        check_quant_args(bits, group_size, kernel, graph=graph, smollm2=not (tiny or checkpoint))
    if checkpoint is not None:
        model, tok = load_checkpoint(checkpoint)
    elif tiny:
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
    """How a chat front end names its model setting, e.g. 'int8 (fast kernel), one onnxruntime graph per token'.

    With ``graph`` the quantized layers are always MatMulNBits, the fast kernel's op, whatever ``kernel`` says.
    """
    prec = "float32" if bits == 16 else f"int{bits} ({'fast' if graph else kernel} kernel)"
    return prec + (", one onnxruntime graph per token" if graph else "")


def check_quant_args(bits: int, group_size, kernel: str, graph: bool = False, smollm2: bool = True) -> None:
    """ValueError (one line naming what is accepted) for a group size / kernel the chosen quantization cannot use.

    ``smollm2``: also check the group size against SmolLM2's layer widths (other models: quantize_model checks
    every layer before changing any).
    """
    from course_lib.llm import fast

    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0):
        raise ValueError(f"--group-size must be a positive integer, got {group_size}")
    if kernel not in fast.KERNELS:
        raise ValueError(f"kernel must be one of {fast.KERNELS}, got {kernel!r}")
    if graph and kernel == "reference":
        raise ValueError("--kernel reference cannot run in the one-graph decoder: the graph always runs quantized "
                         "layers as MatMulNBits (the fast kernel); drop --kernel reference or --graph")
    if kernel == "fast":
        fast.check_kernel(kernel, bits, group_size)  # names the supported group sizes
    elif smollm2 and group_size is not None and 576 % group_size:  # SmolLM2's hidden size
        raise ValueError(f"--group-size {group_size} must divide the layer widths (576, 1536)")


def missing_onnxruntime(bits: int, kernel: str, graph: bool) -> str | None:
    """The one-line error when the chosen setting needs onnxruntime (--graph, the fast kernel) and it is absent."""
    if not graph and (bits == 16 or kernel != "fast"):
        return None
    try:
        found = importlib.util.find_spec("onnxruntime") is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return None
    what = "--graph (one onnxruntime graph per token)" if graph else f"--kernel fast (int{bits}, MatMulNBits)"
    alt = "drop --graph" if graph else "use --kernel reference"
    return f"{what} needs onnxruntime: install it with pip install -e '.[llm]', or {alt}"


def chat_markdown(text: str) -> str:
    """A chat message as Markdown that keeps its line breaks (a model's numbered list stays one item per line).

    Markdown joins single newlines into one paragraph; two trailing spaces make a line break. Lines inside
    ``` code fences are left alone.
    """
    lines, fenced = text.split("\n"), False
    out = []
    for line, following in zip(lines, lines[1:] + [""]):
        fence = line.lstrip().startswith("```")
        fenced ^= fence
        joined_to_next = line.strip() and following.strip() and not (fence or fenced)
        out.append(line + "  " if joined_to_next else line)
    return "\n".join(out)


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
        check_sampling(temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty)
        self.stream, self.token_delay = stream, token_delay
        # temperature 0 = greedy; Baichuan-13B-Chat's defaults are temperature 0.3, top_p 0.85, top_k 5, penalty 1.1
        self.gen = dict(do_sample=temperature > 0, temperature=temperature or 1.0, top_p=top_p, top_k=top_k,
                        repetition_penalty=repetition_penalty)
        self.history: list[dict] = []
        self.last_truncated = False
        self.last_tokens, self.last_seconds = 0, 0.0  # of the last answer: generated tokens and wall time
        self.last_interrupted = False  # the last answer was stopped by stop() (Ctrl-C in the CLI)
        self._stop = threading.Event()

    def stop(self) -> None:
        """Stop the answer being generated after its current token (safe from a signal handler or another thread)."""
        self._stop.set()

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
        self._stop.clear()
        self.last_tokens, self.last_interrupted, t0 = 0, False, time.perf_counter()
        for tok in self.model.stream_ids(ids, max_new_tokens=self.max_new_tokens, eos_token_id=eos, **self.gen):
            self.last_tokens, self.last_seconds = self.last_tokens + 1, time.perf_counter() - t0
            if self._stop.is_set():
                break
            if tok in eos:
                break
            new.append(tok)
            text = self.tok.decode(new, skip_special_tokens=True)
            if text.endswith("\ufffd") or len(text) <= len(reply["content"]):
                continue  # a multi-byte character split across tokens: wait for the rest
            piece, reply["content"] = text[len(reply["content"]):], text
            yield piece
            if self.token_delay:  # after the piece is out (so a long delay holds an answer after its first piece) ...
                self._stop.wait(self.token_delay)  # ... and stop() ends the wait at once
            if self._stop.is_set():
                break
        self.last_interrupted = self._stop.is_set()


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad option reported as one line (argparse prints its usage line first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _sampling_type(name: str, cast):
    """An argparse type that applies :data:`SAMPLING`'s rule, so a bad value stops before the model loads."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if cast is int else 'a number'}, got {text!r}")
        try:
            check_sampling(**{name: value})
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {SAMPLING[name][1]}, got {text}") from None
        return value

    parse.__name__ = name
    return parse


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="course-chat", description="Chat with SmolLM2 in Baichuan's layout, or your own Baichuan checkpoint (lesson 3).")
    p.add_argument("--bits", type=int, choices=(16, 8, 4), default=16,
                   help="weight precision of the linears: 16 = unquantized (float32 on CPU), 8 or 4 = QLinear")
    p.add_argument("--group-size", type=int, default=None, help="int4/int8 group size (default: per-row, Baichuan's scheme)")
    p.add_argument("--kernel", choices=("fast", "reference"), default=None,
                   help="quantized matmul: fast = fused int8/int4 kernel (default), reference = dequantise then matmul "
                        "(not with --graph: the graph always uses the fast kernel's MatMulNBits)")
    p.add_argument("--graph", action="store_true",
                   help="decode with one onnxruntime graph per token (lesson 3's fastest variant; same sampling options)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-context", type=int, default=2048, help="prompt + answer tokens; longer histories are truncated")
    p.add_argument("--no-stream", action="store_true", help="start with streaming off")
    p.add_argument("--temperature", type=_sampling_type("temperature", float), default=0.0,
                   help="0 = greedy; > 0 samples (Baichuan-Chat uses 0.3)")
    p.add_argument("--top-p", type=_sampling_type("top_p", float), default=0.85, help="nucleus sampling, in (0, 1]")
    p.add_argument("--top-k", type=_sampling_type("top_k", int), default=5, help="sample among the k likeliest; 0 = off")
    p.add_argument("--repetition-penalty", type=_sampling_type("repetition_penalty", float), default=1.1,
                   help="> 0; 1 = off, Baichuan-Chat uses 1.1")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--tiny", action="store_true", default=bool(os.environ.get("COURSE_CHAT_TINY")),
                       help="tiny random model + character tokenizer (instant; for tests) [env COURSE_CHAT_TINY=1]")
    which.add_argument("--checkpoint", metavar="DIR", default=None,
                       help="your own model: a folder written by baichuan.save_baichuan_checkpoint (config.json + "
                            "weights; its tokenizer beside them, or SmolLM2's for SmolLM2's vocabulary)")
    p.add_argument("--token-delay", type=float, default=0.0,
                   help="seconds to wait after each streamed piece (demos; tests hold an answer with a long one)")
    return p


def _check_args(args) -> str | None:
    """The one-line error for bad numeric options or a setting this machine cannot run, or None."""
    if args.max_new_tokens < 1:
        return f"--max-new-tokens must be >= 1, got {args.max_new_tokens}"
    if args.max_context < 2:
        return f"--max-context must be >= 2, got {args.max_context}"
    if args.threads is not None and args.threads < 1:
        return f"--threads must be >= 1, got {args.threads}"
    if args.token_delay < 0 or not math.isfinite(args.token_delay):
        return f"--token-delay must be >= 0 seconds, got {args.token_delay}"
    if args.bits != 16:
        try:
            check_quant_args(args.bits, args.group_size, args.kernel or "fast", graph=args.graph,
                             smollm2=not (args.tiny or args.checkpoint))
        except ValueError as e:
            return str(e)
    return missing_onnxruntime(args.bits, args.kernel or "fast", args.graph)


def _start_session(args, con):
    """(session, banner) or None after printing one error line."""
    from rich.markup import escape

    kernel = args.kernel or "fast"
    try:
        with con.status("loading model ..."):
            model, tok = load_chat_model(args.bits, tiny=args.tiny, group_size=args.group_size, kernel=kernel,
                                         graph=args.graph, checkpoint=args.checkpoint)
        session = ChatSession(model, tok, args.max_new_tokens, args.max_context, stream=not args.no_stream,
                              token_delay=args.token_delay, temperature=args.temperature, top_p=args.top_p,
                              top_k=args.top_k, repetition_penalty=args.repetition_penalty)
    except (OSError, ValueError, ImportError) as e:  # weights/checkpoint missing, COURSE_CACHE unusable, no package
        con.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        return None
    if args.checkpoint:
        name = f"your checkpoint {Path(args.checkpoint).expanduser().name}"
    else:
        name = "tiny random model" if args.tiny else "SmolLM2-135M (Baichuan layout)"
    prec = describe_setting(args.bits, kernel, args.graph)
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


@contextlib.contextmanager
def _ctrl_c_stops(session: ChatSession):
    """While an answer is generated, Ctrl-C calls ``session.stop()`` instead of raising KeyboardInterrupt.

    A KeyboardInterrupt can land anywhere, e.g. inside rich's print, whose output buffer then stays open and the
    terminal shows nothing more; a flag checked between tokens stops the answer at a clean point.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread: Ctrl-C raises as usual
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: session.stop())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _answer(text: str, session: ChatSession, con) -> None:
    """Stream (or print at once) the model's answer, then its speed and any truncation note."""
    con.print("[bold blue]Bot[/]> ", end="")
    pieces = []
    try:
        with _ctrl_c_stops(session):
            for piece in session.answer(text):
                pieces.append(piece)
                if session.stream:
                    con.print(piece, end="", markup=False, soft_wrap=True)
        if not session.stream:
            con.print("".join(pieces), markup=False, soft_wrap=True, end="")
        interrupted = session.last_interrupted
    except KeyboardInterrupt:  # outside the main thread
        interrupted = True
    if interrupted:
        con.print("\n[yellow]\\[interrupted: partial answer kept in the history][/]")
    else:
        con.print()
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
