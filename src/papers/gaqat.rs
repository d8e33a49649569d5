//! GAQAT: gradient-adaptive quantization-aware training for domain generalization — Jiang, Meng,
//! Tang, Yu, Li, Wang, Zhu, arXiv 2412.05551.
//!
//! Quantisation-aware training with a sharpness-aware domain-generalisation objective (SAGM) lets
//! the two objectives pull the quantisers' learned step sizes in opposite directions; GAQAT
//! measures, per quantiser, how disordered its step's gradient is over a recent window and freezes
//! the unstable steps (the weights always train). The experiment: the note's rotated digits (five
//! training domains at 0–60°, the 75° domain held out), a small CNN with LSQ at 3 bits, ERM-QAT,
//! QAT+SAGM, GAQAT and full-precision SAGM; the task/smoothness conflict rate of every step size is
//! logged. Measured: the four arms tie within seed noise (GAQAT 55.6 %, QAT+SAGM 56.5 %, FP-SAGM
//! 54.5 % on 75°; 3-bit LSQ loses nothing to full precision here, so freezing has nothing to win
//! back) — the claim FAILs honestly; the conflicts are real (29–70 % of steps, per quantiser).
//!
//! No official code has been published. What is checked: SAGM against Wang-pengfei/SAGM
//! (`train::sharpness::sagm_gradients`, including the perturbation of every parameter the
//! optimiser holds — here the weights and the step sizes), LSQ against lsq-net
//! (`models::quant`). The disorder measure and the freezing rule are the note's reconstruction
//! (its §2(d), from the authors' follow-up FQAT's "disorder-guided adaptive freezing"), so every
//! choice is a key: `disorder` (sign flips of the combined step gradient over `window` steps, or
//! the share of those steps in conflict), `freeze` (`threshold`: D > `tau`; `ratio`: the top
//! ⌊`ratio`·L⌋ of the L step sizes by D, only those with D > 0), and freezing starts once the window
//! is full. A frozen step size keeps its value and its Adam moments (`train::optim::MaskedAdam`).
//! Choices made where the note is silent: the conflict is taken per quantiser (each layer has a
//! weight and an activation step; all are per-tensor here, so the product of two scalars decides);
//! the fc layer's two 8-bit quantisers take part like the others; the images (in [0, 1]) are
//! quantised unsigned at the first conv's input, as every activation after a ReLU; steps start at
//! LSQ's 2·mean|v|/√Q_P on the first batch and the forward uses |s| (SAGM's ascent may push a step
//! through 0); PyTorch's default init for the convolutions and the linear layer.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::context::{Rng, RunCtx};
use crate::data::block::{DomainKind, Domains};
use crate::data::{DataConfig, Split};
use crate::models::init;
use crate::models::quant::{grad_scale, lsq, lsq_init_step, Levels};
use crate::train::optim::MaskedAdam;
use crate::train::supervised::predict;
use crate::train::sharpness::{gradients, sagm_gradients, Sagm, Sam};

pub struct Gaqat;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Plain (QAT) training on the mixed-domain batch.
    Erm,
    /// SAGM, with every parameter (weights and step sizes) in its ascent.
    Sagm,
    /// SAGM with the disordered step sizes frozen.
    Gaqat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disorder {
    /// The share of the window's steps on which the combined step gradient changed sign.
    SignFlips,
    /// The share of the window's steps on which task and smoothness gradients disagreed.
    Conflicts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Freeze {
    /// Freeze the step sizes whose disorder exceeds `tau`.
    Threshold,
    /// Freeze the ⌊`ratio`·L⌋ step sizes (of L) with the highest disorder.
    Ratio,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Images with rotated training domains; the test set is the held-out domain.
    pub data: DataConfig,
    pub method: Method,
    /// Bit-width of the two convolutions' weights and input activations (null: full precision).
    pub bits: Option<u32>,
    /// Bit-width of the classifier layer's weights and input.
    pub head_bits: u32,
    /// Output channels of the two convolutions.
    pub channels: [i64; 2],
    pub steps: u64,
    /// Images drawn from each training domain per step.
    pub per_domain_batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// SAGM's ρ and α.
    pub rho: f64,
    pub alpha: f64,
    /// GAQAT's window (steps), disorder measure and freezing rule.
    pub window: usize,
    pub disorder: Disorder,
    pub freeze: Freeze,
    pub tau: f64,
    pub ratio: f64,
    /// Also report accuracy on the test images at this angle (the note reports 0°).
    pub reference_angle: Option<f64>,
    pub log_every: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data: DataConfig { domains: Domains { kind: DomainKind::Rotated, values: vec![0.0, 15.0, 30.0, 45.0, 60.0], test_value: 75.0 }, ..Default::default() },
            method: Method::Gaqat,
            bits: Some(3),
            head_bits: 8,
            channels: [32, 64],
            steps: 1500,
            per_domain_batch: 16,
            lr: 1e-3,
            weight_decay: 0.0,
            rho: 0.05,
            alpha: 0.001,
            window: 20,
            disorder: Disorder::SignFlips,
            freeze: Freeze::Ratio,
            tau: 0.5,
            ratio: 0.25,
            reference_angle: Some(0.0),
            log_every: 100,
        }
    }
}

impl crate::paper::Blocks for Config {
    fn data_block(&self) -> Option<&DataConfig> {
        Some(&self.data)
    }
}

/// The quantisers' names, in the order of [`QNet::steps`].
pub const QUANTISERS: [&str; 6] = ["conv1_w", "conv1_a", "conv2_w", "conv2_a", "fc_w", "fc_a"];

/// conv(c→32, 3×3, pad 1) → ReLU → conv(32→64, 3×3, stride 2) → ReLU → GAP → fc(64→classes), each
/// layer's weight and input quantised with LSQ (weights signed, inputs unsigned).
#[derive(Debug)]
struct QNet {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    fc: nn::Linear,
    /// One learned step per quantiser (weight, input) × (conv1, conv2, fc).
    steps: Vec<Tensor>,
    /// The bit-width of each layer (None: full precision).
    bits: [Option<u32>; 3],
}

impl QNet {
    fn new(vs: &nn::Path, in_channels: i64, channels: [i64; 2], classes: i64, bits: Option<u32>, head_bits: u32) -> Self {
        let conv1 = init::conv2d(vs / "conv1", in_channels, channels[0], 3, nn::ConvConfig { padding: 1, ..Default::default() });
        let conv2 = init::conv2d(vs / "conv2", channels[0], channels[1], 3, nn::ConvConfig { stride: 2, ..Default::default() });
        let fc = init::linear(vs / "fc", channels[1], classes, true);
        let steps = QUANTISERS.iter().map(|name| vs.var(&format!("step_{name}"), &[], nn::Init::Const(1.0))).collect();
        QNet { conv1, conv2, fc, steps, bits: [bits, bits, bits.map(|_| head_bits)] }
    }

    fn weights(&self) -> [&Tensor; 3] {
        [&self.conv1.ws, &self.conv2.ws, &self.fc.ws]
    }

    fn levels(&self, layer: usize) -> Option<(Levels, Levels)> {
        self.bits[layer].map(|b| (Levels::signed(b), Levels::unsigned(b)))
    }

    /// Each layer's quantised input and weight; `calibrate` first sets the steps to LSQ's initial
    /// values on this batch.
    fn forward_impl(&self, x: &Tensor, calibrate: bool) -> Tensor {
        let quant = |layer: usize, input: &Tensor| -> (Tensor, Tensor) {
            let w = self.weights()[layer];
            match self.levels(layer) {
                None => (input.shallow_clone(), w.shallow_clone()),
                Some((wl, al)) => {
                    let (sw, sa) = (&self.steps[2 * layer], &self.steps[2 * layer + 1]);
                    if calibrate {
                        tch::no_grad(|| {
                            let _ = sw.shallow_clone().copy_(&lsq_init_step(w, wl, false));
                            let _ = sa.shallow_clone().copy_(&lsq_init_step(input, al, false));
                        });
                    }
                    let qw = lsq(w, &sw.abs().clamp_min(1e-8), wl, grad_scale(w.numel() as i64, wl));
                    let qa = lsq(input, &sa.abs().clamp_min(1e-8), al, grad_scale(input.numel() as i64, al));
                    (qa, qw)
                }
            }
        };
        let (a, w) = quant(0, x);
        let h = a.conv2d(&w, self.conv1.bs.as_ref(), [1, 1], [1, 1], [1, 1], 1).relu();
        let (a, w) = quant(1, &h);
        let h = a.conv2d(&w, self.conv2.bs.as_ref(), [2, 2], [0, 0], [1, 1], 1).relu().mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        let (a, w) = quant(2, &h);
        a.linear(&w, self.fc.bs.as_ref())
    }

}

impl nn::Module for QNet {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_impl(x, false)
    }
}

/// The disorder of one quantiser's recent history, and the freezing decision.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Sign of the combined step gradient, newest last (at most window + 1 kept).
    signs: std::collections::VecDeque<bool>,
    /// Whether each recent step was in conflict (at most window kept).
    conflicts: std::collections::VecDeque<bool>,
}

impl History {
    pub fn push(&mut self, combined_positive: bool, conflict: bool, window: usize) {
        self.signs.push_back(combined_positive);
        while self.signs.len() > window + 1 {
            self.signs.pop_front();
        }
        self.conflicts.push_back(conflict);
        while self.conflicts.len() > window {
            self.conflicts.pop_front();
        }
    }

    /// D over the last `window` steps, or None until the window is full.
    pub fn disorder(&self, measure: Disorder, window: usize) -> Option<f64> {
        match measure {
            Disorder::SignFlips => (self.signs.len() == window + 1).then(|| {
                let s: Vec<bool> = self.signs.iter().copied().collect();
                s.windows(2).filter(|p| p[0] != p[1]).count() as f64 / window as f64
            }),
            Disorder::Conflicts => (self.conflicts.len() == window).then(|| self.conflicts.iter().filter(|&&c| c).count() as f64 / window as f64),
        }
    }
}

/// Which quantisers to freeze given their disorders (None: window not yet full, never frozen).
pub fn frozen_set(disorders: &[Option<f64>], rule: Freeze, tau: f64, ratio: f64) -> Vec<bool> {
    match rule {
        Freeze::Threshold => disorders.iter().map(|d| d.is_some_and(|d| d > tau)).collect(),
        Freeze::Ratio => {
            // The top-r share never exceeds r: ⌊r·L⌋ (one of six quantisers at r = 0.25).
            let k = (ratio * disorders.len() as f64 + 1e-9).floor() as usize;
            let mut order: Vec<usize> = (0..disorders.len()).filter(|&i| disorders[i].is_some_and(|d| d > 0.0)).collect();
            order.sort_by(|&a, &b| disorders[b].partial_cmp(&disorders[a]).expect("finite").then(a.cmp(&b)));
            let mut out = vec![false; disorders.len()];
            for &i in order.iter().take(k) {
                out[i] = true;
            }
            out
        }
    }
}

fn accuracy(net: &QNet, split: &Split) -> Result<f64> {
    Ok(f64::try_from(predict(net, &split.x).argmax(1, false).eq_tensor(&split.y).to_kind(Kind::Double).mean(Kind::Double))?)
}

/// Indices of each training domain, reshuffled whenever one is used up.
struct DomainSampler {
    members: Vec<Vec<i64>>,
    cursor: Vec<usize>,
}

impl DomainSampler {
    fn new(domain: &Tensor, domains: usize) -> Result<Self> {
        let d = Vec::<i64>::try_from(domain.to_device(tch::Device::Cpu))?;
        let members: Vec<Vec<i64>> = (0..domains as i64).map(|k| d.iter().enumerate().filter(|(_, &x)| x == k).map(|(i, _)| i as i64).collect()).collect();
        Ok(DomainSampler { cursor: vec![usize::MAX; members.len()], members })
    }

    fn batch(&mut self, per_domain: usize, rng: &mut Rng) -> Vec<i64> {
        let mut out = Vec::with_capacity(per_domain * self.members.len());
        for (k, m) in self.members.iter_mut().enumerate() {
            for _ in 0..per_domain {
                if self.cursor[k] >= m.len() {
                    rng.shuffle(m);
                    self.cursor[k] = 0;
                }
                out.push(m[self.cursor[k]]);
                self.cursor[k] += 1;
            }
        }
        out
    }
}

impl crate::paper::Paper for Gaqat {
    const KEY: &'static str = "gaqat";
    const TITLE: &'static str = "GAQAT: gradient-adaptive quantization-aware training for domain generalization";
    const ARXIV: &'static str = "2412.05551";
    type Config = Config;

    fn check(c: &Config) -> Result<()> {
        if c.data.domains.kind != DomainKind::Rotated || c.data.domains.values.len() < 2 {
            bail!("`data.domains` must be `kind: rotated` with at least two training angles in `values` (the held-out angle is `test_value`)");
        }
        if c.data.flatten {
            bail!("`data.flatten` must be false: the model is a CNN");
        }
        if let Some(b) = c.bits {
            if !(2..=8).contains(&b) {
                bail!("`bits` must be in 2..=8 (or null for full precision), got {b}");
            }
        }
        if !(2..=8).contains(&c.head_bits) {
            bail!("`head_bits` must be in 2..=8, got {}", c.head_bits);
        }
        if c.channels.iter().any(|&k| k < 1) || c.steps == 0 || c.per_domain_batch == 0 || c.window == 0 || c.log_every == 0 {
            bail!("`channels`, `steps`, `per_domain_batch`, `window` and `log_every` must be at least 1");
        }
        crate::paper::require_positive(&[("lr", c.lr)])?;
        crate::paper::require_non_negative(&[("weight_decay", c.weight_decay), ("rho", c.rho), ("alpha", c.alpha), ("tau", c.tau)])?;
        if !(0.0..=1.0).contains(&c.ratio) {
            bail!("`ratio` is a share of the quantisers and must be in [0, 1], got {}", c.ratio);
        }
        if c.method == Method::Gaqat && c.bits.is_none() {
            bail!("`method: gaqat` freezes quantiser steps, so it needs `bits` (null is full precision)");
        }
        Ok(())
    }

    fn run(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
        let data = cfg.data.load_for_run(ctx)?;
        let reference = match cfg.reference_angle {
            Some(angle) => {
                let d = DataConfig { domains: Domains { test_value: angle, ..cfg.data.domains.clone() }, ..cfg.data.clone() }.load(&ctx.data_dir, ctx.seed, ctx.device)?;
                Some(d.test)
            }
            None => None,
        };
        let device = ctx.device;
        tch::manual_seed(ctx.seed as i64);
        let vs = nn::VarStore::new(device);
        let net = QNet::new(&vs.root(), data.image_shape[0], cfg.channels, data.classes, cfg.bits, cfg.head_bits);
        let weights: Vec<Tensor> = vec![net.conv1.ws.shallow_clone(), net.conv1.bs.as_ref().expect("bias").shallow_clone(), net.conv2.ws.shallow_clone(), net.conv2.bs.as_ref().expect("bias").shallow_clone(), net.fc.ws.shallow_clone(), net.fc.bs.as_ref().expect("bias").shallow_clone()];
        let quantised = cfg.bits.is_some();
        let mut params: Vec<Tensor> = weights.iter().map(|w| w.shallow_clone()).collect();
        if quantised {
            params.extend(net.steps.iter().map(|s| s.shallow_clone()));
        }
        let first_step = weights.len();
        let mut opt = MaskedAdam::new(&params, cfg.lr, cfg.weight_decay);
        let mut sampler = DomainSampler::new(&data.train.domain, cfg.data.domains.values.len())?;
        let mut rng = Rng::new(ctx.seed ^ 0x6A0A);
        let sagm = Sagm { sam: Sam { rho: cfg.rho, adaptive: false }, alpha: cfg.alpha };
        let n_q = QUANTISERS.len();
        let mut history = vec![History::default(); n_q];
        let (mut conflicts, mut frozen_steps) = (vec![0u64; n_q], vec![0u64; n_q]);
        let mut sharp_steps = 0u64;
        for step in 0..cfg.steps {
            let idx = Tensor::from_slice(&sampler.batch(cfg.per_domain_batch, &mut rng)).to_device(device);
            let (x, y) = (data.train.x.index_select(0, &idx), data.train.y.index_select(0, &idx));
            if step == 0 && quantised {
                let _ = net.forward_impl(&x, true);
            }
            let mut loss = || net.forward(&x).cross_entropy_for_logits(&y);
            let mut frozen = vec![false; params.len()];
            let train_loss = if cfg.method == Method::Erm {
                gradients(&params, &mut loss)?.0
            } else {
                let s = sagm_gradients(&params, &sagm, &mut loss)?;
                if quantised {
                    sharp_steps += 1;
                    for q in 0..n_q {
                        let task = s.clean[first_step + q].double_value(&[]);
                        let smooth = s.perturbed[first_step + q].double_value(&[]) - task;
                        let conflict = task * smooth < 0.0;
                        conflicts[q] += conflict as u64;
                        let combined = 0.5 * (task + s.perturbed[first_step + q].double_value(&[]));
                        history[q].push(combined > 0.0, conflict, cfg.window);
                    }
                    if cfg.method == Method::Gaqat {
                        let d: Vec<Option<f64>> = history.iter().map(|h| h.disorder(cfg.disorder, cfg.window)).collect();
                        for (q, f) in frozen_set(&d, cfg.freeze, cfg.tau, cfg.ratio).into_iter().enumerate() {
                            frozen[first_step + q] = f;
                            frozen_steps[q] += f as u64;
                        }
                    }
                }
                s.loss
            };
            opt.step(&params, &frozen);
            if (step + 1) % cfg.log_every == 0 || step + 1 == cfg.steps {
                ctx.log_all(step + 1, &[("train_loss", train_loss), ("test_acc_now", accuracy(&net, &data.test)?)])?;
            }
            ctx.tick(step + 1, cfg.steps)?;
        }
        ctx.set_final("train_acc", accuracy(&net, &data.train)?)?;
        ctx.set_final("test_acc", accuracy(&net, &data.test)?)?;
        if let Some(r) = &reference {
            ctx.set_final("reference_acc", accuracy(&net, r)?)?;
        }
        if quantised && sharp_steps > 0 {
            let mut max_rate = 0f64;
            for q in 0..n_q {
                let rate = conflicts[q] as f64 / sharp_steps as f64;
                max_rate = max_rate.max(rate);
                ctx.set_final(&format!("conflict_rate_{}", QUANTISERS[q]), rate)?;
                ctx.set_final(&format!("frozen_share_{}", QUANTISERS[q]), frozen_steps[q] as f64 / cfg.steps as f64)?;
            }
            ctx.set_final("max_conflict_rate", max_rate)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::f64s;
    use tch::Device;

    #[test]
    fn disorder_of_constant_and_alternating_histories() {
        let w = 6;
        let (mut constant, mut alternating) = (History::default(), History::default());
        for t in 0..20 {
            constant.push(true, false, w);
            alternating.push(t % 2 == 0, t % 3 == 0, w);
            if t < w - 1 {
                assert_eq!(constant.disorder(Disorder::Conflicts, w), None, "not before the window is full");
            }
        }
        assert_eq!(constant.disorder(Disorder::SignFlips, w), Some(0.0));
        assert_eq!(alternating.disorder(Disorder::SignFlips, w), Some(1.0));
        assert_eq!(constant.disorder(Disorder::Conflicts, w), Some(0.0));
        // Steps 14..19 hold conflicts at 15 and 18.
        assert_eq!(alternating.disorder(Disorder::Conflicts, w), Some(2.0 / 6.0));
    }

    #[test]
    fn freezing_rules() {
        let d = [Some(0.9), None, Some(0.2), Some(0.6), Some(0.0), Some(0.6)];
        assert_eq!(frozen_set(&d, Freeze::Threshold, 0.5, 0.0), vec![true, false, false, true, false, true]);
        // Ratio 1/3 of six: the two most disordered, ties by position.
        assert_eq!(frozen_set(&d, Freeze::Ratio, 0.0, 1.0 / 3.0), vec![true, false, false, true, false, false]);
        // A quarter of six is one (⌊1.5⌋), never more than the share asked for.
        assert_eq!(frozen_set(&d, Freeze::Ratio, 0.0, 0.25), vec![true, false, false, false, false, false]);
        // Never a quantiser with D = 0 or an unfilled window, whatever the ratio.
        assert_eq!(frozen_set(&d, Freeze::Ratio, 0.0, 1.0), vec![true, false, true, true, false, true]);
    }

    /// The note's known values: s = 0.5, 3 bits signed (Q_N = 4, Q_P = 3).
    #[test]
    fn lsq_known_values_and_calibration() {
        let v = Tensor::from_slice(&[-3.0f64, -0.3, 0.2, 0.74, 2.0]);
        let out = f64s(&lsq(&v, &Tensor::from(0.5f64), Levels::signed(3), 1.0));
        assert_eq!(out, vec![-2.0, -0.5, 0.0, 0.5, 1.5]);
        // Calibration sets every step to LSQ's 2·mean|v|/√Q_P of what that quantiser sees.
        let vs = nn::VarStore::new(Device::Cpu);
        let net = QNet::new(&vs.root(), 1, [4, 6], 10, Some(3), 8);
        crate::testutil::fill_with_pattern(&vs, "", 0.4);
        let x = (Tensor::arange(320, (Kind::Float, Device::Cpu)) * 0.37).sin().abs().view([5, 1, 8, 8]);
        let _ = net.forward_impl(&x, true);
        let want = 2.0 * f64::try_from(x.abs().mean(Kind::Double)).unwrap() / 7f64.sqrt();
        assert!((net.steps[1].double_value(&[]) - want).abs() < 1e-6);
        let want_w = 2.0 * f64::try_from(net.fc.ws.abs().mean(Kind::Double)).unwrap() / 127f64.sqrt();
        assert!((net.steps[4].double_value(&[]) - want_w).abs() < 1e-6);
        // A 3-bit conv1 weight takes at most 8 values.
        let q = lsq(&net.conv1.ws, &net.steps[0].abs(), Levels::signed(3), 1.0);
        let distinct = Vec::<f32>::try_from(q.flatten(0, -1)).unwrap().iter().map(|v| v.to_bits()).collect::<std::collections::BTreeSet<_>>().len();
        assert!(distinct <= 8, "{distinct}");
    }

    #[test]
    fn domain_batches_draw_evenly_and_cover_each_domain() {
        let domain = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2, 0, 1, 2, 0]);
        let mut s = DomainSampler::new(&domain, 3).unwrap();
        let mut rng = Rng::new(1);
        let mut seen0 = std::collections::BTreeSet::new();
        for _ in 0..2 {
            let b = s.batch(2, &mut rng);
            let dom: Vec<i64> = b.iter().map(|&i| [0i64, 1, 2, 0, 1, 2, 0, 1, 2, 0][i as usize]).collect();
            assert_eq!(dom, vec![0, 0, 1, 1, 2, 2]);
            seen0.extend(b[..2].iter().copied());
        }
        assert_eq!(seen0.len(), 4, "an epoch of domain 0 draws each of its four images once");
    }
}
