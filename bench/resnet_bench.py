"""Benchmark: reglab's compute-bound loop — ResNet-18 training on Fashion-MNIST, as the full specs'
ResNet runs — against the same loop in PyTorch eager, on CPU or CUDA.

The workload, one seed: Fashion-MNIST (`train_size` training images, `test_size` test images,
standardised), the CIFAR-layout ResNet-18 of `models::resnet` (3x3 stem with 64 channels, no
max-pool, basic blocks [2, 2, 2, 2], BatchNorm, PyTorch's default initialisation) on 1 x 28 x 28
inputs, SGD (lr 0.02, momentum 0.9, weight decay 1e-3), batches of 128 drawn by index from the
resident tensors, cross-entropy, the loss read back to the host every step, then the evaluation
`train::supervised::evaluate` runs (test accuracy, NLL, 15-bin ECE, AURC, top-5; train accuracy
and the memorised fractions, predictions in chunks of 2048). reglab runs it as the `elr` paper with
`loss: ce`; it is timed by run.json's `wall_s` (data loading included), PyTorch from the loaded
tensors to the end (its IDX parsing left out), which leans against reglab. The two alternate,
`--rounds` times each, at the same torch thread count; the script prints samples/s of each and
the ratio (reglab / PyTorch, higher is better for reglab). `--device cuda` runs both on the GPU.

Run by `make bench` (it needs `make data` for Fashion-MNIST); not a test.
"""

import argparse
import gzip
import os
import struct
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from elr_bench import evaluate
from reglab_run import alternate, reglab_wall_s, summary

SPEC = """name: bench_resnet
paper: elr
seeds: [0]
device: {device}
params:
  data: {{ name: fashion_mnist, normalize: standardize, flatten: false, train_size: {train}, test_size: {test} }}
  model: {{ kind: resnet18 }}
  train: {{ epochs: {epochs}, batch_size: 128, eval_every: {epochs}, optim: {{ kind: sgd, lr: 0.02, momentum: 0.9, weight_decay: 1.0e-3 }} }}
  loss: ce
"""


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return torch.frombuffer(bytearray(data[4 + 4 * dims:]), dtype=torch.uint8).reshape(shape)


def load(data_dir, train, test):
    d = os.path.join(data_dir, "fashion_mnist")
    xtr, ytr = idx(os.path.join(d, "train-images-idx3-ubyte.gz"))[:train], idx(os.path.join(d, "train-labels-idx1-ubyte.gz"))[:train]
    xte, yte = idx(os.path.join(d, "t10k-images-idx3-ubyte.gz"))[:test], idx(os.path.join(d, "t10k-labels-idx1-ubyte.gz"))[:test]
    return xtr.float().unsqueeze(1) / 255, ytr.long(), xte.float().unsqueeze(1) / 255, yte.long()


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, cin=1, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(cin, 64, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(64)
        layers, c = [], 64
        for i, width in enumerate([64, 128, 256, 512]):
            for j in range(2):
                layers.append(Basic(c, width, 2 if i > 0 and j == 0 else 1))
                c = width
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(512, classes)

    def forward(self, x):
        h = self.blocks(F.relu(self.stem_bn(self.stem(x))))
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


def predict(model, x):
    with torch.no_grad():
        return torch.cat([model(x[s:s + 2048]) for s in range(0, len(x), 2048)])


def torch_loop(data_dir, train, test, epochs, threads, device):
    torch.set_num_threads(threads)
    xtr, ytr, xte, yte = load(data_dir, train, test)  # (untimed: the IDX parsing)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    mean, std = xtr.mean(), xtr.std()
    xtr, xte = ((xtr - mean) / std).to(device), ((xte - mean) / std).to(device)
    ytr, yte = ytr.to(device), yte.to(device)
    torch.manual_seed(0)
    model = ResNet18().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-3)
    samples = 0
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(ytr)).split(128):
            batch = batch.to(device)
            loss = F.cross_entropy(model(xtr.index_select(0, batch)), ytr.index_select(0, batch))
            opt.zero_grad()
            loss.backward()
            opt.step()
            float(loss.detach())
            samples += len(batch)
    model.eval()
    evaluate(lambda x: predict(model, x), xte, yte, xtr, ytr, ytr)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return samples, time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reglab", default="target/release/reglab")
    ap.add_argument("--data-dir", default=os.environ.get("REGLAB_DATA", "data"))
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    ap.add_argument("--train-size", type=int, default=1280)
    ap.add_argument("--test-size", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    if not os.path.isfile(os.path.join(args.data_dir, "fashion_mnist", "train-images-idx3-ubyte.gz")):
        raise SystemExit(f"resnet_bench: Fashion-MNIST is not in {args.data_dir}/fashion_mnist; run `make data` first")
    spec = SPEC.format(device=args.device, train=args.train_size, test=args.test_size, epochs=args.epochs)

    def one_round(tmp):
        samples, t_torch = torch_loop(args.data_dir, args.train_size, args.test_size, args.epochs, args.threads, args.device)
        return samples, t_torch, reglab_wall_s(args.reglab, spec, "bench_resnet", args.threads, tmp, ("--data-dir", args.data_dir))

    rl, pt, ratios = alternate(args.rounds, one_round, "training samples/s", digits=1)
    title = f"ResNet-18 on Fashion-MNIST ({args.train_size} training images x {args.epochs} epochs, batch 128, then the evaluation on {args.test_size} test images), {args.device}, {args.threads} threads, torch {torch.__version__}"
    summary(title, rl, pt, ratios, "training samples/s", digits=1)

if __name__ == "__main__":
    main()
