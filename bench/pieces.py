"""`make bench`, part 2: the micro-benchmarks, reglab (criterion, benches/pieces.rs) against PyTorch
eager (bench/pieces_torch.py) at the same thread count, alternating for `--rounds` rounds. Prints
a table of each side's median time per iteration (the median over rounds of each round's median;
min and max over rounds beside) and the ratio (PyTorch's time / reglab's: above 1, reglab is
faster), and appends it to bench/results.md with the machine, thread count and torch version."""
import statistics

import argparse
import json
import os
import platform
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import pieces_torch  # noqa: E402

KIND = {
    "train_step_mlp_b32": "overhead-bound: MLP 64-128-10 SGD step, batch 32",
    "train_step_cnn_b128": "compute-bound: 2-conv CNN Adam step, 128 x 28x28",
    "certify_n10000": "certification: CERTIFY one input, n0 100 + n 10000 noise samples",
    "hvp_mlp": "second-order: H.v by double backward, MLP 64-256-256-10, batch 256",
    "hutchinson_mlp": "second-order: Hutchinson Tr(H), one probe, same MLP",
}


def criterion_medians(root):
    out = {}
    for name in KIND:
        with open(os.path.join(root, name, "new", "estimates.json")) as f:
            out[name] = json.load(f)["median"]["point_estimate"] * 1e-9
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--results", default="bench/results.md")
    args = ap.parse_args()
    env = dict(os.environ, BENCH_THREADS=str(args.threads))
    rust, py = {k: [] for k in KIND}, {k: [] for k in KIND}
    for r in range(args.rounds):
        subprocess.run(["cargo", "bench", "--bench", "pieces", "--", "--noplot"], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for k, v in criterion_medians(os.path.join("target", "criterion")).items():
            rust[k].append(v)
        for k, v in pieces_torch.time_all(args.threads).items():
            py[k].append(v)
        print(f"round {r + 1}: " + ", ".join(f"{k} {py[k][-1] / rust[k][-1]:.2f}" for k in KIND), flush=True)
    lines = [
        f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores; threads {args.threads}; torch {torch.__version__}",
        "",
        f"{args.rounds} alternating rounds; ms per iteration as median [min, max] over rounds",
        "",
        "| piece | what | reglab | PyTorch eager | ratio (median of per-round ratios) |",
        "|---|---|---|---|---|",
    ]
    ms = lambda v: f"{statistics.median(v) * 1e3:.3f} [{min(v) * 1e3:.3f}, {max(v) * 1e3:.3f}]"
    for name, what in KIND.items():
        ratios = [p / q for p, q in zip(py[name], rust[name])]
        lines.append(f"| {name} | {what} | {ms(rust[name])} | {ms(py[name])} | {statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}] |")
    table = "\n".join(lines)
    print(table)
    with open(args.results, "a") as f:
        f.write("\n## micro-benchmarks (bench/pieces.py)\n\n" + table + "\n")


if __name__ == "__main__":
    main()
