"""Recipe 2 · Quantize your own transformers model (int8, int4 group-32) and measure perplexity, bytes, tokens/s.

``quantize_model`` replaces the ``nn.Linear`` layers your name filter picks by ``QLinear`` (int8 per row, or int4
with one scale per ``group_size`` inputs); ``kernel="fast"`` multiplies with onnxruntime's MatMulNBits on the packed
weights instead of dequantising first. No conversion: a Hugging Face LLaMA/Qwen/Mistral model goes in as it is.
Here a tiny random ``LlamaForCausalLM`` built offline from a ``LlamaConfig`` stands in for yours
(``AutoModelForCausalLM.from_pretrained(...)``) and random token ids for your tokenized text.

Run: python examples/quantize_transformers_model.py   (needs the llm extra: pip install -e '.[llm]')
"""

import copy

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from course_lib import bench
from course_lib.llm import eval as llm_eval
from course_lib.llm import quant, roofline


def main(new_tokens: int = 16, repeat: int = 3):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()                     # your model: AutoModelForCausalLM.from_pretrained(...)
    text_ids = torch.randint(3, cfg.vocab_size, (1024,))     # your tokenized evaluation text
    prompt = text_ids[None, :8]

    def tokens_per_s(m):
        run = lambda: m.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        r = bench.benchmark(torch.no_grad()(run), items=new_tokens, unit="tokens", warmup=1, repeat=repeat)
        return r.throughput, r

    rows = []
    for name, bits, group in (("fp32", None, None), ("int8", 8, None), ("int4 g32", 4, 32)):
        m = model
        if bits:
            m = quant.quantize_model(copy.deepcopy(model), bits, group_size=group, exclude=["lm_head"], kernel="fast")
        tps, _ = tokens_per_s(m)
        rows.append({"variant": name, "perplexity": llm_eval.perplexity(m, text_ids, window=128),
                     "bytes_per_token": roofline.weight_bytes_per_token(m)["total"], "tokens_per_s": tps})
    import pandas as pd

    table = pd.DataFrame(rows).set_index("variant")
    table["ppl vs fp32"] = table.perplexity / table.loc["fp32", "perplexity"] - 1
    print(table.round(4).to_string())
    return table


if __name__ == "__main__":
    main()
