"""Benchmark: reglab's stablemax_grokking training loop against the same loop in PyTorch eager.

Same data (modular addition mod 61, 50% split), model (MLP 122->128->128->61, no bias), loss
(float32 softmax CE), optimizer (full-batch AdamW lr 0.01, betas (0.9, 0.99), eps 1e-25), per-epoch
row shuffle, and the same evaluation every 10 epochs (train/test loss and accuracy, Softmax-Collapse
and zero-loss fractions, cos(-grad, theta), weight norm). The two alternate, `--rounds` times each,
with the same torch thread count; the script prints steps/s (epochs/s) of each and the ratio.

Run by `make bench`; not a test.
"""

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from reglab_run import reglab_wall_s

SPEC = """name: bench
paper: stablemax_grokking
seeds: [0]
params: {{ modulus: 61, train_fraction: 0.5, hidden: [128, 128], epochs: {epochs}, log_every: 10 }}
"""


def torch_loop(epochs, threads, p=61, train_fraction=0.5, log_every=10):
    torch.set_num_threads(threads)
    # Timed from here, like reglab's run.json wall_s: data, model and the loop.
    start = time.perf_counter()
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    y = (a + b) % p
    x = torch.cat([F.one_hot(a, p), F.one_hot(b, p)], 1).float()
    n = p * p
    n_train = int(train_fraction * n)
    torch.manual_seed(42)
    perm = torch.randperm(n)
    tr, te = perm[:n_train], perm[n_train:]
    xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(2 * p, 128, bias=False), torch.nn.ReLU(),
        torch.nn.Linear(128, 128, bias=False), torch.nn.ReLU(),
        torch.nn.Linear(128, p, bias=False),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-25, weight_decay=0.0)
    params = list(model.parameters())
    for epoch in range(1, epochs + 1):
        idx = torch.randperm(n_train)
        logits = model(xtr[idx])
        loss = -F.log_softmax(logits, -1).gather(1, ytr[idx].unsqueeze(1)).squeeze(1).double().mean()
        opt.zero_grad()
        loss.backward()
        log_now = epoch % log_every == 0 or epoch == epochs or epoch == 1
        if log_now:
            with torch.no_grad():
                dot = sum((w.double() * w.grad.double()).sum() for w in params)
                gg = sum((w.grad.double() ** 2).sum() for w in params)
                ww = sum((w.double() ** 2).sum() for w in params)
                _cos = float(-dot / (gg.sqrt() * ww.sqrt() + 1e-30))
        opt.step()
        if log_now:
            with torch.no_grad():
                zl, zt = model(xtr), model(xte)
                per = -F.log_softmax(zl, -1).gather(1, ytr.unsqueeze(1)).squeeze(1)
                pert = -F.log_softmax(zt, -1).gather(1, yte.unsqueeze(1)).squeeze(1)
                s = (zl - zl.amax(-1, keepdim=True)).exp().sum(-1)
                _m = [
                    float(per.double().mean()), float(pert.double().mean()),
                    float((zl.argmax(-1) == ytr).double().mean()), float((zt.argmax(-1) == yte).double().mean()),
                    float((s == 1).double().mean()), float((per == 0).double().mean()),
                    float(sum((w.double() ** 2).sum() for w in params).sqrt()),
                ]
    return time.perf_counter() - start


def reglab_loop(binary, epochs, threads, workdir):
    return reglab_wall_s(binary, SPEC.format(epochs=epochs), "bench", threads, workdir)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reglab", default="target/release/reglab")
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    rl, pt = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            rl.append(args.epochs / reglab_loop(args.reglab, args.epochs, args.threads, tmp))
            pt.append(args.epochs / torch_loop(args.epochs, args.threads))
            print(f"round {r + 1}: reglab {rl[-1]:.1f} steps/s, pytorch eager {pt[-1]:.1f} steps/s", flush=True)
    a, b = statistics.median(rl), statistics.median(pt)
    print(f"stablemax_grokking training loop, {args.epochs} full-batch epochs, {args.threads} threads, torch {torch.__version__}")
    print(f"reglab:        {a:.1f} steps/s (median of {args.rounds})")
    print(f"pytorch eager: {b:.1f} steps/s (median of {args.rounds})")
    print(f"ratio reglab / pytorch: {a / b:.2f}")


if __name__ == "__main__":
    main()
