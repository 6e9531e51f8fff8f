"""Recipe 5 · Plot your own decoding roofline: measured tokens/s against the memory-bandwidth ceiling.

At batch 1 every generated token reads every weight once, so tokens/s ≤ bandwidth / weight bytes per token.
``measure_bandwidth`` measures this machine's read bandwidth, ``weight_bytes_per_token`` sums what one step reads
(sizes are bytes everywhere), and ``plot_roofline`` draws the ceiling curve with your points on it. Tiny models
like the two here fit in the CPU's caches, so they sit far below a DRAM ceiling: overhead, not bytes, bounds them.

Run: python examples/plot_roofline.py [out.png]   (needs the llm extra: pip install -e '.[llm]')
"""

import sys

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from course_lib import bench  # noqa: E402
from course_lib.llm import roofline  # noqa: E402


def main(out_png=None, new_tokens: int = 8, repeat: int = 3):
    bw = roofline.measure_bandwidth(mb=64)                     # GB/s, read-only streaming
    points = []
    for hidden in (64, 128):                                   # your models (or formats) here
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()
        prompt = torch.randint(3, 256, (1, 8))
        gen = torch.no_grad()(lambda: model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                                     do_sample=False))
        r = bench.benchmark(gen, items=new_tokens, unit="tokens", warmup=1, repeat=repeat)
        points.append({"variant": f"hidden {hidden}", "bytes_per_token": roofline.weight_bytes_per_token(model)["total"],
                       "tokens_per_s": r.throughput,  # at the median; the bar spans p10–p90
                       "p10": new_tokens / (r.p90_ms / 1e3), "p90": new_tokens / (r.p10_ms / 1e3)})
    print(roofline.ceilings(bw["gb_per_s"], {p["variant"]: p["bytes_per_token"] for p in points}).round(1).to_string())
    ax = roofline.plot_roofline(bw["gb_per_s"], points, labels={"eager": "my model (transformers generate)"},
                                title=f"My roofline: {bw['gb_per_s']:.1f} GB/s measured")
    if out_png:
        ax.figure.savefig(out_png, dpi=100)
        print("wrote", out_png)
    return {"bandwidth": bw, "points": points, "ax": ax}


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
