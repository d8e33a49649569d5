//! Grokking at the Edge of Numerical Stability — Prieto, Barsbey, Mediano & Birdal, arXiv 2501.04697.
//!
//! Without regularisation, a network that has fit its training set keeps scaling its logits up
//! until float32 softmax rounds to a hard one-hot (Softmax Collapse) and learning stops before it
//! generalises. StableMax (a softmax with linear instead of exponential growth) and ⊥Grad
//! (gradients orthogonal to the weights) avoid that. The experiment: modular addition with a
//! bias-free ReLU MLP, full-batch AdamW; softmax CE collapses and does not grok, ⊥AdamW groks
//! within a few hundred epochs, StableMax does not collapse.
//!
//! Checked against copies of the official code (the official repository itself is not in our
//! search index; `kroggen/grokking-with-dropout` carries the official code and README,
//! `xatxx/grokking_thesis_experiments` its exact file set; EIFY's fork differs as noted):
//! - StableMax: s(x) = x+1 (x ≥ 0), 1/(1−x+1e−30) (x < 0); log(s_y/Σs) always in float64 —
//!   the official code has no dtype option for it (EIFY's `cross_entropy_dtype` is the fork's).
//! - Softmax CE precision is the official `--softmax_precision` (16/32/64, default 32): `softmax_precision`.
//! - AdamW: eps 1e−25, betas (0.9, β₂ = 0.99), wd 0; full batch; rows reshuffled every epoch.
//! - ⊥AdamW: the official wrapper builds its inner AdamW with only lr and weight decay, so its
//!   runs used PyTorch's betas (0.9, 0.999) and eps 1e−8, not the command's β₂ and 1e−25.
//!   `orthograd_inner: torch_defaults` reproduces that (the default); `configured` uses `beta2`/`eps`.
//! - Data: all p² pairs, concat(one-hot a, one-hot b), split by a randperm after
//!   `manual_seed(42)`, the first ⌊fraction·p²⌋ for training. MLP without bias, default init.
//! - Softmax Collapse: `sc_fraction` is the official `softmax_collapse` (Σexp(z − max z) == 1
//!   exactly, logits cast to `softmax_precision`, for StableMax runs too); `zero_loss_fraction` is
//!   the official `zero_terms` (the run's own per-sample loss exactly 0).
//! - cos(−∇L, θ) (`grad_cos`) is not in the official code: a project definition, over all
//!   parameters, of the gradient before ⊥Grad's projection.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Kind, Tensor};

use crate::context::RunCtx;
use crate::data::modular::modular_addition;
use crate::losses::classify::{accuracy, softmax_ce_per_sample, softmax_collapse_fraction, zero_loss_fraction, Precision};
use crate::losses::stablemax::stablemax_ce_per_sample;
use crate::models::Mlp;
use crate::train::orthograd::{cosine_neg_grad_weights, project_gradients};

pub struct StablemaxGrokking;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    SoftmaxCe,
    StablemaxCe,
}

/// Which AdamW settings ⊥Grad's inner optimizer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrthoInner {
    /// As the official code ran: betas (0.9, 0.999), eps 1e−8 (lr and weight decay as configured).
    TorchDefaults,
    /// The configured `beta1`, `beta2`, `eps`.
    Configured,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// p: inputs are pairs (a, b) in 0..p, the label is (a + b) mod p.
    pub modulus: i64,
    pub train_fraction: f64,
    /// Seed of the train/test split (42 in the official code), apart from the run seed.
    pub split_seed: u64,
    /// Hidden widths of the bias-free ReLU MLP.
    pub hidden: Vec<i64>,
    pub bias: bool,
    pub loss: Loss,
    /// Precision of softmax CE and of the Softmax-Collapse metric (StableMax is always float64).
    pub softmax_precision: Precision,
    pub epochs: u64,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// AdamW epsilon; the official default is 1e−25, not 1e−8.
    pub eps: f64,
    pub weight_decay: f64,
    /// Apply ⊥Grad before each AdamW step.
    pub orthograd: bool,
    pub orthograd_inner: OrthoInner,
    /// Reshuffle the training rows every epoch (as the official full-batch loop does).
    pub shuffle: bool,
    pub log_every: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            modulus: 61,
            train_fraction: 0.5,
            split_seed: 42,
            hidden: vec![128, 128],
            bias: false,
            loss: Loss::SoftmaxCe,
            softmax_precision: Precision::Float32,
            epochs: 1500,
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-25,
            weight_decay: 0.0,
            orthograd: false,
            orthograd_inner: OrthoInner::TorchDefaults,
            shuffle: true,
            log_every: 10,
        }
    }
}

impl StablemaxGrokking {
    fn per_sample_loss(cfg: &Config, logits: &Tensor, labels: &Tensor) -> Tensor {
        match cfg.loss {
            Loss::SoftmaxCe => softmax_ce_per_sample(logits, labels, cfg.softmax_precision),
            Loss::StablemaxCe => stablemax_ce_per_sample(logits, labels),
        }
    }
}

/// No shared blocks: every key is the paper's own.
impl crate::paper::Blocks for Config {}

impl crate::paper::Paper for StablemaxGrokking {
    const KEY: &'static str = "stablemax_grokking";
    const TITLE: &'static str = "Grokking at the Edge of Numerical Stability";
    const ARXIV: &'static str = "2501.04697";
    type Config = Config;

    fn check(c: &Config) -> Result<()> {
        if c.modulus < 2 {
            bail!("`modulus` must be at least 2, got {}", c.modulus);
        }
        if !(c.train_fraction > 0.0 && c.train_fraction < 1.0) {
            bail!("`train_fraction` must be in (0, 1), got {}", c.train_fraction);
        }
        if c.hidden.iter().any(|&h| h < 1) {
            bail!("`hidden` widths must be positive, got {:?}", c.hidden);
        }
        if c.epochs == 0 || c.log_every == 0 {
            bail!("`epochs` and `log_every` must be at least 1");
        }
        if !(c.lr > 0.0) || !(c.eps > 0.0) || c.weight_decay < 0.0 {
            bail!("`lr` and `eps` must be positive and `weight_decay` non-negative");
        }
        if !(0.0..1.0).contains(&c.beta1) || !(0.0..1.0).contains(&c.beta2) {
            bail!("`beta1` and `beta2` must be in [0, 1)");
        }
        Ok(())
    }

    fn run(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
        let device = ctx.device;
        let p = cfg.modulus;
        let data = modular_addition(p, cfg.train_fraction, cfg.split_seed, device)?;
        tch::manual_seed(ctx.seed as i64);
        let vs = nn::VarStore::new(device);
        let mut widths = vec![2 * p];
        widths.extend(&cfg.hidden);
        widths.push(p);
        let model = Mlp::new(&vs.root(), &widths, cfg.bias);
        let (beta1, beta2, eps) = match (cfg.orthograd, cfg.orthograd_inner) {
            (true, OrthoInner::TorchDefaults) => (0.9, 0.999, 1e-8),
            _ => (cfg.beta1, cfg.beta2, cfg.eps),
        };
        let mut opt = nn::AdamW { beta1, beta2, wd: cfg.weight_decay, eps, amsgrad: false }.build(&vs, cfg.lr)?;
        let params = vs.trainable_variables();
        let n_train = data.train_y.size()[0];

        let mut best_test_acc: f64 = 0.0;
        let mut max_sc: f64 = 0.0;
        let mut max_zero: f64 = 0.0;
        let mut first_epoch_90: Option<u64> = None;
        for epoch in 1..=cfg.epochs {
            let (x, y) = if cfg.shuffle {
                let perm = Tensor::randperm(n_train, (Kind::Int64, device));
                (data.train_x.index_select(0, &perm), data.train_y.index_select(0, &perm))
            } else {
                (data.train_x.shallow_clone(), data.train_y.shallow_clone())
            };
            let loss = Self::per_sample_loss(cfg, &model.forward(&x), &y).mean(Kind::Double);
            opt.zero_grad();
            loss.backward();
            let log_now = epoch % cfg.log_every == 0 || epoch == cfg.epochs || epoch == 1;
            let grad_cos = if log_now { cosine_neg_grad_weights(&params) } else { 0.0 };
            if cfg.orthograd {
                project_gradients(&params);
            }
            opt.step();
            if log_now {
                let m = tch::no_grad(|| -> Result<Vec<(&str, f64)>> {
                    let train_logits = model.forward(&data.train_x);
                    let test_logits = model.forward(&data.test_x);
                    let train_per = Self::per_sample_loss(cfg, &train_logits, &data.train_y);
                    let test_per = Self::per_sample_loss(cfg, &test_logits, &data.test_y);
                    let norm: f64 = params.iter().map(|w| f64::try_from(w.square().sum(Kind::Double)).unwrap_or(f64::NAN)).sum();
                    Ok(vec![
                        ("train_loss", f64::try_from(train_per.mean(Kind::Double))?),
                        ("test_loss", f64::try_from(test_per.mean(Kind::Double))?),
                        ("train_acc", accuracy(&train_logits, &data.train_y)),
                        ("test_acc", accuracy(&test_logits, &data.test_y)),
                        ("sc_fraction", softmax_collapse_fraction(&train_logits, cfg.softmax_precision)),
                        ("zero_loss_fraction", zero_loss_fraction(&train_per)),
                        ("grad_cos", grad_cos),
                        ("weight_norm", norm.sqrt()),
                    ])
                })?;
                for (name, v) in &m {
                    match *name {
                        "test_acc" => {
                            best_test_acc = best_test_acc.max(*v);
                            if *v >= 0.9 && first_epoch_90.is_none() {
                                first_epoch_90 = Some(epoch);
                            }
                        }
                        "sc_fraction" => max_sc = max_sc.max(*v),
                        "zero_loss_fraction" => max_zero = max_zero.max(*v),
                        _ => {}
                    }
                }
                ctx.log_all(epoch, &m)?;
            }
            ctx.tick(epoch, cfg.epochs)?;
        }
        ctx.set_final("best_test_acc", best_test_acc)?;
        ctx.set_final("max_sc_fraction", max_sc)?;
        ctx.set_final("max_zero_loss_fraction", max_zero)?;
        // Only when reached: a missing value reads "not reported" in the table, never a fake epoch.
        if let Some(e) = first_epoch_90 {
            ctx.set_final("epoch_test_acc_90", e as f64)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::classify::softmax_ce_per_sample;
    use tch::Device;

    /// Euler's identity for a degree-3 homogeneous network: ⟨∇_θ L, θ⟩ = 3 ⟨∂L/∂z, z⟩.
    #[test]
    fn euler_identity_for_the_bias_free_mlp() {
        tch::manual_seed(3);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = Mlp::new(&vs.root(), &[10, 16, 16, 5], false);
        vs.double();
        let x = Tensor::randn([8, 10], (Kind::Double, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 0, 1, 2]);
        let z = model.forward(&x);
        let z_leaf = z.detach().set_requires_grad(true);
        let loss_z = softmax_ce_per_sample(&z_leaf, &y, Precision::Float64).sum(Kind::Double);
        loss_z.backward();
        let rhs = 3.0 * f64::try_from((z_leaf.grad() * &z_leaf.detach()).sum(Kind::Double)).unwrap();
        let loss = softmax_ce_per_sample(&z, &y, Precision::Float64).sum(Kind::Double);
        loss.backward();
        let lhs: f64 = vs
            .trainable_variables()
            .iter()
            .map(|w| f64::try_from((w.grad() * w.detach()).sum(Kind::Double)).unwrap())
            .sum();
        assert!((lhs - rhs).abs() < 1e-9 * rhs.abs().max(1.0), "{lhs} vs {rhs}");
    }
}
