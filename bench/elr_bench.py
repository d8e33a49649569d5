"""Benchmark: reglab's elr run (the overhead-bound small-batch loop with per-epoch bookkeeping)
against the same loop in PyTorch eager.

The workload of experiments/elr.yaml's `elr` arm, one seed: digits (80/20 split, /16, 40 % uniform
label noise), MLP 64 -> 256 -> 256 -> 10 with ReLU, SGD (lr 0.02, momentum 0.9, weight decay 1e-3)
with cosine restarts (t0 10 epochs, eta_min 1e-3) set every epoch, batches of 128 drawn by index
from the resident tensors, loss CE + 3 * log(1 - <p, t>) with the per-sample target EMA (beta 0.7,
the batch's rows updated in place), the loss read back to the host every step, and every 5 epochs
the evaluation reglab's `train::supervised::evaluate` runs (test accuracy, NLL, 15-bin ECE, AURC,
top-5; train accuracy; the memorised and noisy-predicted-true fractions). 150 epochs (~1,700
steps). reglab is timed by its run.json `wall_s` (data loading included); PyTorch from the
split to the end (its CSV parsing left out), which leans against reglab. The two
alternate, `--rounds` times each, at the same torch thread count; the script prints steps/s of
each and the ratio (reglab / PyTorch, higher is better for reglab).

Run by `make bench`; not a test.
"""

import argparse
import csv
import gzip
import math
import os
import time

import torch
import torch.nn.functional as F

from reglab_run import alternate, reglab_wall_s, summary

SPEC = """name: bench_elr
paper: elr
seeds: [0]
params:
  data: {{ name: digits, test_fraction: 0.2, normalize: unit, flatten: true, label_noise: {{ kind: uniform, rate: 0.4 }} }}
  model: {{ kind: mlp, hidden: [256, 256] }}
  train: {{ epochs: {epochs}, batch_size: 128, eval_every: 5, optim: {{ kind: sgd, lr: 0.02, momentum: 0.9, weight_decay: 1.0e-3, schedule: cosine_restarts, t0: 10, eta_min: 0.001 }} }}
  loss: elr
  beta: 0.7
  lambda: 3.0
"""


def load_digits(data_dir):
    with gzip.open(os.path.join(data_dir, "digits", "digits.csv.gz"), "rt") as f:
        rows = [r for r in csv.reader(f)]
    if not rows[0][0].lstrip("-").replace(".", "").isdigit():
        rows = rows[1:]
    x = torch.tensor([[float(v) for v in r[:-1]] for r in rows])
    y = torch.tensor([int(float(r[-1])) for r in rows])
    return x, y


def evaluate(model, xte, yte, xtr, ytr, ytrue):
    with torch.no_grad():
        zt, zl = model(xte), model(xtr)
        pt = zt.softmax(-1)
        conf, pred = pt.max(-1)
        correct = (pred == yte).double()
        out = [correct.mean(), F.cross_entropy(zt, yte)]
        bins = torch.clamp((conf * 15).long(), max=14)
        ece = sum((bins == b).double().sum() / len(yte) * ((correct[bins == b].mean() - conf[bins == b].double().mean()).abs()) for b in range(15) if (bins == b).any())
        order = conf.argsort(descending=True)
        risk = (1 - correct[order]).cumsum(0) / torch.arange(1, len(yte) + 1, device=yte.device)
        out += [ece, risk.mean(), (zt.topk(5, -1).indices == yte.unsqueeze(1)).any(-1).double().mean()]
        pl = zl.argmax(-1)
        noisy = ytr != ytrue
        out += [(pl == ytr).double().mean(), (pl[noisy] == ytr[noisy]).double().mean(), (pl[noisy] == ytrue[noisy]).double().mean()]
        return [float(v) for v in out]


def torch_loop(data_dir, epochs, threads):
    torch.set_num_threads(threads)
    x, y = load_digits(data_dir)  # (untimed: Python's CSV parsing is not what is compared)
    start = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    n_test = int(round(0.2 * len(y)))
    te, tr = perm[:n_test], perm[n_test:]
    xtr, ytrue, xte, yte = x[tr] / 16.0, y[tr], x[te] / 16.0, y[te]
    flip = torch.rand(len(ytrue), generator=g) < 0.4
    ytr = torch.where(flip, torch.randint(0, 10, (len(ytrue),), generator=g), ytrue)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-3)
    targets = torch.zeros(len(ytr), 10)
    steps = 0
    for epoch in range(epochs):
        lr = 0.001 + (0.02 - 0.001) * (1 + math.cos(math.pi * (epoch % 10) / 10)) / 2
        for group in opt.param_groups:
            group["lr"] = lr
        order = torch.randperm(len(ytr))
        total = 0.0
        for idx in order.split(128):
            logits = model(xtr.index_select(0, idx))
            yb = ytr.index_select(0, idx)
            p = logits.softmax(-1).clamp(1e-4, 1 - 1e-4)
            ph = p.detach()
            updated = targets.index_select(0, idx) * 0.7 + ph / ph.sum(1, keepdim=True) * 0.3
            targets.index_copy_(0, idx, updated)
            reg = (1 - (updated * p).sum(1)).log().mean()
            loss = F.cross_entropy(logits, yb) + reg * 3.0
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        if (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            evaluate(model, xte, yte, xtr, ytr, ytrue)
    return steps, time.perf_counter() - start


def reglab_loop(binary, epochs, threads, workdir, data_dir):
    return reglab_wall_s(binary, SPEC.format(epochs=epochs), "bench_elr", threads, workdir, ("--data-dir", data_dir))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reglab", default="target/release/reglab")
    ap.add_argument("--data-dir", default=os.environ.get("REGLAB_DATA", "data"))
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    def one_round(tmp):
        steps, t_torch = torch_loop(args.data_dir, args.epochs, args.threads)
        return steps, t_torch, reglab_loop(args.reglab, args.epochs, args.threads, tmp, args.data_dir)

    rl, pt, ratios = alternate(args.rounds, one_round, "steps/s")
    title = f"elr small-batch loop (digits, MLP 64-256-256-10, batch 128, {args.epochs} epochs, evaluation every 5), {args.threads} threads, torch {torch.__version__}"
    summary(title, rl, pt, ratios, "steps/s")

if __name__ == "__main__":
    main()
