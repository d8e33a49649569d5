"""The micro-benchmarks of benches/pieces.rs, written the same way in PyTorch eager.

Each function builds the same model, data and optimiser as its Rust twin and returns a zero-argument
callable for one iteration; `time_all` times them with torch.utils.benchmark (median over runs)
at the given thread count. The smoothed classifier's Clopper-Pearson bound (microseconds of scalar
work) is left out here, which can only favour PyTorch.
"""

import torch
import torch.nn.functional as F
from torch.utils import benchmark


def torch_linear(i, o):
    return torch.nn.Linear(i, o)  # PyTorch's default init, as reglab's models::init


def mlp(widths):
    layers = []
    for k, (i, o) in enumerate(zip(widths, widths[1:])):
        layers.append(torch_linear(i, o))
        if k < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def train_step(net, opt, x, y):
    """One optimiser step on a fixed batch, as a callable (the Rust side's `opt.backward_step`)."""
    def step():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def train_step_mlp_b32():
    net = mlp([64, 128, 10])
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(32, 64), torch.randint(10, (32,))
    return train_step(net, opt, x, y)


def train_step_cnn_b128():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64 * 7 * 7, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(10, (128,))
    return train_step(net, opt, x, y)


def certify_n10000():
    net = mlp([784, 256, 256, 10])
    x = torch.rand(1, 784)
    sigma, n0, n, batch = 0.25, 100, 10_000, 1000

    def counts(num):
        out = torch.zeros(10, dtype=torch.long)
        left = num
        with torch.no_grad():
            while left > 0:
                b = min(batch, left)
                xs = x.expand(b, -1)
                out += torch.bincount(net(xs + torch.randn_like(xs) * sigma).argmax(1), minlength=10)
                left -= b
        return out

    def step():
        c_a = int(counts(n0).argmax())
        return int(counts(n)[c_a])
    return step


def _second_order():
    net = mlp([64, 256, 256, 10])
    params = list(net.parameters())
    x, y = torch.randn(256, 64), torch.randint(10, (256,))
    v = [torch.randn_like(p) for p in params]

    def hvp(vec):
        loss = F.cross_entropy(net(x), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * u).sum() for g, u in zip(grads, vec))
        return torch.autograd.grad(dot, params)
    return params, v, hvp


def hvp_mlp():
    _, v, hvp = _second_order()
    return lambda: hvp(v)


def hutchinson_mlp():
    params, _, hvp = _second_order()

    def step():
        probe = [(torch.rand_like(p) < 0.5).float() * 2 - 1 for p in params]
        return float(sum((a * b).sum().double() for a, b in zip(probe, hvp(probe))))
    return step


PIECES = [train_step_mlp_b32, train_step_cnn_b128, certify_n10000, hvp_mlp, hutchinson_mlp]


def time_all(threads, min_run_time=3.0):
    """Median seconds per iteration of each piece."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out = {}
    for make in PIECES:
        fn = make()
        for _ in range(3):
            fn()  # warm-up
        t = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
        out[make.__name__] = t.blocked_autorange(min_run_time=min_run_time).median
    return out
