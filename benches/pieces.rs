//! Micro-benchmarks of the pieces reglab's runs spend their time in, each written the same way in
//! `bench/pieces_torch.py` for PyTorch eager (same shapes, same thread count): `make bench` runs
//! both and prints the ratios. Threads: `BENCH_THREADS` (default 2).
//!
//! - `train_step_mlp_b32`: one SGD step of a 64→128→10 MLP on a batch of 32 (overhead-bound, the
//!   small-batch loops of the noisy-label and distillation papers);
//! - `train_step_cnn_b128`: one Adam step of a 2-conv CNN on 128 28×28 images (compute-bound);
//! - `certify_n10000`: Cohen CERTIFY of one input, n0 100 + n 10000 noise samples in batches of
//!   1000, through a 784→256→256→10 MLP (`robust::smoothing::certify`);
//! - `hvp_mlp` / `hutchinson_mlp`: one H·v product and a one-probe Hutchinson Tr(H) by double
//!   backward, 64→256→256→10 MLP, batch 256 (`train::second_order`).

use criterion::{criterion_group, criterion_main, Criterion};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use reglab::models::{init, state, Mlp};
use reglab::robust::smoothing::{certify, Smoothing};
use reglab::train::second_order::{hutchinson_trace, hvp};

fn threads() {
    // What the binary sets when it starts, so the pieces are timed as runs see them.
    reglab::malloc::tune();
    let n = std::env::var("BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    tch::set_num_threads(n);
    tch::manual_seed(0);
}

fn train_step_mlp(c: &mut Criterion) {
    threads();
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Mlp::new(&vs.root(), &[64, 128, 10], true);
    let mut opt = nn::Sgd { momentum: 0.9, ..Default::default() }.build(&vs, 0.01).unwrap();
    let x = Tensor::randn([32, 64], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [32], (Kind::Int64, Device::Cpu));
    c.bench_function("train_step_mlp_b32", |b| {
        b.iter(|| {
            let loss = net.forward(&x).cross_entropy_for_logits(&y);
            opt.backward_step(&loss);
        })
    });
}

#[derive(Debug)]
struct Cnn {
    c1: nn::Conv2D,
    c2: nn::Conv2D,
    fc: nn::Linear,
}

impl Module for Cnn {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = x.apply(&self.c1).relu().max_pool2d_default(2);
        let h = h.apply(&self.c2).relu().max_pool2d_default(2);
        h.flatten(1, -1).apply(&self.fc)
    }
}

fn train_step_cnn(c: &mut Criterion) {
    threads();
    let vs = nn::VarStore::new(Device::Cpu);
    let conv = nn::ConvConfig { padding: 1, ..Default::default() };
    let net = Cnn { c1: init::conv2d(vs.root() / "c1", 1, 32, 3, conv), c2: init::conv2d(vs.root() / "c2", 32, 64, 3, conv), fc: init::linear(vs.root() / "fc", 64 * 7 * 7, 10, true) };
    let mut opt = nn::Adam::default().build(&vs, 1e-3).unwrap();
    let x = Tensor::randn([128, 1, 28, 28], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [128], (Kind::Int64, Device::Cpu));
    c.bench_function("train_step_cnn_b128", |b| {
        b.iter(|| {
            let loss = net.forward(&x).cross_entropy_for_logits(&y);
            opt.backward_step(&loss);
        })
    });
}

fn certification(c: &mut Criterion) {
    threads();
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Mlp::new(&vs.root(), &[784, 256, 256, 10], true);
    let x = Tensor::rand([1, 784], (Kind::Float, Device::Cpu));
    let s = Smoothing { sigma: 0.25, n0: 100, n: 10_000, alpha: 0.001, batch: 1000 };
    c.bench_function("certify_n10000", |b| b.iter(|| certify(&mut |v: &Tensor| net.forward(v), &x, 10, &s).unwrap()));
}

fn second_order(c: &mut Criterion) {
    threads();
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Mlp::new(&vs.root(), &[64, 256, 256, 10], true);
    let params = state::variables(&vs);
    let x = Tensor::randn([256, 64], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [256], (Kind::Int64, Device::Cpu));
    let v: Vec<Tensor> = params.iter().map(|p| p.randn_like()).collect();
    let mut loss = || net.forward(&x).cross_entropy_for_logits(&y);
    c.bench_function("hvp_mlp", |b| b.iter(|| hvp(&mut loss, &params, &v)));
    c.bench_function("hutchinson_mlp", |b| b.iter(|| hutchinson_trace(&mut loss, &params, 1)));
}

criterion_group! {
    name = pieces;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(3));
    targets = train_step_mlp, train_step_cnn, certification, second_order
}
criterion_main!(pieces);
