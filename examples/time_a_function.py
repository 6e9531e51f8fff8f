"""Recipe 1 · Time your own function with course_lib.bench: warm-up, repeats, p10 / p50 / p90, a fair comparison.

Run: python examples/time_a_function.py
"""

import torch

from course_lib import bench, claims


def main(size: int = 128, repeat: int = 20):
    x = torch.randn(size, size)
    w = torch.randn(size, size)

    def mine():  # the function you want to time: anything callable with no arguments
        return torch.relu(x @ w)

    def baseline():
        return torch.nn.functional.linear(x, w.T).clamp_min(0)

    ours = bench.benchmark(mine, name="relu(x @ w)", items=size, unit="rows", warmup=3, repeat=repeat)
    ref = bench.benchmark(baseline, name="linear + clamp", items=size, unit="rows", warmup=3, repeat=repeat)
    print(ours)                      # median (p10–p90), min, rows/s
    print(claims.compare_results(ours, ref))  # a direction only when the p10–p90 spreads separate
    table = bench.to_frame([ours, ref])[["name", "p10_ms", "median_ms", "p90_ms", "rows/s"]]
    print(table.round(4).to_string(index=False))
    return ours, ref


if __name__ == "__main__":
    main()
