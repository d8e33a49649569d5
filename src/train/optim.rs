//! Optimiser and learning-rate schedule settings shared by the papers' Configs.
//!
//! SGD (coupled weight decay, optional Nesterov), Adam (coupled) and AdamW (decoupled), as in
//! PyTorch. Schedules are evaluated per epoch (0-based), like PyTorch's schedulers stepped once
//! an epoch.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimKind {
    Sgd,
    Adam,
    Adamw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    /// lr · gamma^(number of milestones ≤ epoch)
    Multistep,
    /// Cosine annealing to `eta_min` over all epochs.
    Cosine,
    /// SGDR with period `t0` epochs (CosineAnnealingWarmRestarts, T_mult = 1).
    CosineRestarts,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub kind: OptimKind,
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub schedule: ScheduleKind,
    pub milestones: Vec<u64>,
    pub gamma: f64,
    pub t0: u64,
    pub eta_min: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            kind: OptimKind::Sgd,
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            schedule: ScheduleKind::Constant,
            milestones: vec![],
            gamma: 0.1,
            t0: 10,
            eta_min: 0.0,
        }
    }
}

impl OptimConfig {
    pub fn check(&self) -> Result<()> {
        if !(self.lr > 0.0) || self.weight_decay < 0.0 || !(0.0..1.0).contains(&self.momentum) {
            bail!("`optim`: lr must be positive, weight_decay non-negative, momentum in [0, 1)");
        }
        if self.schedule == ScheduleKind::CosineRestarts && self.t0 == 0 {
            bail!("`optim.t0` must be at least 1 for `cosine_restarts`");
        }
        Ok(())
    }

    pub fn build(&self, vs: &nn::VarStore) -> Result<nn::Optimizer> {
        Ok(match self.kind {
            OptimKind::Sgd => nn::Sgd { momentum: self.momentum, dampening: 0.0, wd: self.weight_decay, nesterov: self.nesterov }.build(vs, self.lr)?,
            OptimKind::Adam => nn::Adam { beta1: self.beta1, beta2: self.beta2, wd: self.weight_decay, eps: self.eps, amsgrad: false }.build(vs, self.lr)?,
            OptimKind::Adamw => nn::AdamW { beta1: self.beta1, beta2: self.beta2, wd: self.weight_decay, eps: self.eps, amsgrad: false }.build(vs, self.lr)?,
        })
    }

    /// The learning rate of 0-based `epoch` out of `epochs`.
    pub fn lr_at(&self, epoch: u64, epochs: u64) -> f64 {
        let cosine = |t: f64, period: f64| self.eta_min + (self.lr - self.eta_min) * (1.0 + (std::f64::consts::PI * t / period).cos()) / 2.0;
        match self.schedule {
            ScheduleKind::Constant => self.lr,
            ScheduleKind::Multistep => self.lr * self.gamma.powi(self.milestones.iter().filter(|&&m| m <= epoch).count() as i32),
            ScheduleKind::Cosine => cosine(epoch as f64, epochs.max(1) as f64),
            ScheduleKind::CosineRestarts => cosine((epoch % self.t0) as f64, self.t0 as f64),
        }
    }
}

/// Zeroes the accumulated gradients of `params` (those that have one), for steps that run several
/// backward passes themselves (SAM's two, a test's separate losses).
pub fn zero_grads(params: &[tch::Tensor]) {
    for p in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

/// Adam exactly as PyTorch's `torch.optim.Adam` (coupled weight decay, bias corrections, ε added to
/// √v̂), over an explicit list of parameters, with a per-parameter step count so that a parameter
/// can be frozen for a step: a frozen parameter, its moments and its step count stay as they are
/// (zeroing its gradient in tch's Adam would still decay its moments and move it by the old
/// momentum). For methods that freeze some parameters on some steps (GAQAT's scales).
#[derive(Debug)]
pub struct MaskedAdam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    m: Vec<tch::Tensor>,
    v: Vec<tch::Tensor>,
    t: Vec<u64>,
}

impl MaskedAdam {
    pub fn new(params: &[tch::Tensor], lr: f64, weight_decay: f64) -> Self {
        MaskedAdam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            m: params.iter().map(|p| p.detach().zeros_like()).collect(),
            v: params.iter().map(|p| p.detach().zeros_like()).collect(),
            t: vec![0; params.len()],
        }
    }

    /// One step with the gradients in `params`' `.grad` (a parameter without one is skipped);
    /// `frozen[i]` skips parameter i entirely (an empty slice freezes nothing).
    pub fn step(&mut self, params: &[tch::Tensor], frozen: &[bool]) {
        assert_eq!(params.len(), self.m.len(), "MaskedAdam was built for {} parameters", self.m.len());
        tch::no_grad(|| {
            for (i, p) in params.iter().enumerate() {
                let g = p.grad();
                if frozen.get(i).copied().unwrap_or(false) || !g.defined() {
                    continue;
                }
                let g = if self.weight_decay != 0.0 { &g + p.detach() * self.weight_decay } else { g };
                self.t[i] += 1;
                let t = self.t[i] as i32;
                let _ = self.m[i].g_mul_scalar_(self.beta1).g_add_(&(&g * (1.0 - self.beta1)));
                let _ = self.v[i].g_mul_scalar_(self.beta2).g_add_(&(g.square() * (1.0 - self.beta2)));
                let bc1 = 1.0 - self.beta1.powi(t);
                let bc2 = 1.0 - self.beta2.powi(t);
                let denom = self.v[i].sqrt() / bc2.sqrt() + self.eps;
                let _ = p.shallow_clone().g_add_(&(&self.m[i] / denom * (-self.lr / bc1)));
            }
        });
    }

    /// The first and second moments of parameter i (for tests and diagnostics).
    pub fn moments(&self, i: usize) -> (&tch::Tensor, &tch::Tensor) {
        (&self.m[i], &self.v[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_pytorch_formulas() {
        let ms = OptimConfig { lr: 0.1, schedule: ScheduleKind::Multistep, milestones: vec![50, 75], gamma: 0.1, ..Default::default() };
        assert_eq!(ms.lr_at(49, 100), 0.1);
        assert!((ms.lr_at(50, 100) - 0.01).abs() < 1e-15);
        assert!((ms.lr_at(99, 100) - 0.001).abs() < 1e-15);
        let sgdr = OptimConfig { lr: 0.02, schedule: ScheduleKind::CosineRestarts, t0: 10, eta_min: 0.001, ..Default::default() };
        assert_eq!(sgdr.lr_at(0, 150), 0.02);
        assert_eq!(sgdr.lr_at(10, 150), 0.02);
        assert!((sgdr.lr_at(5, 150) - (0.001 + 0.019 * 0.5)).abs() < 1e-15);
        let cos = OptimConfig { lr: 1.0, schedule: ScheduleKind::Cosine, ..Default::default() };
        assert!((cos.lr_at(50, 100) - 0.5).abs() < 1e-12);
    }

    /// The same trajectory as tch's (libtorch's) Adam with weight decay; a frozen parameter, its
    /// moments and its step count do not move, and it resumes with its own bias correction.
    #[test]
    fn masked_adam_is_pytorch_adam_and_freezes_exactly() {
        use tch::{Device, Kind, Tensor};
        let target = Tensor::from_slice(&[0.3f32, -1.2, 2.0]);
        let loss = |w: &Tensor| (w - &target).square().sum(Kind::Float) + w.pow_tensor_scalar(4).sum(Kind::Float) * 0.1;
        let vs = nn::VarStore::new(Device::Cpu);
        let w_ref = vs.root().var_copy("w", &Tensor::from_slice(&[1.0f32, 0.5, -0.7]));
        let mut reference = nn::Adam { wd: 0.01, ..Default::default() }.build(&vs, 0.05).unwrap();
        let w = Tensor::from_slice(&[1.0f32, 0.5, -0.7]).set_requires_grad(true);
        let params = [w.shallow_clone()];
        let mut ours = MaskedAdam::new(&params, 0.05, 0.01);
        for _ in 0..20 {
            reference.backward_step(&loss(&w_ref));
            zero_grads(&params);
            loss(&w).backward();
            ours.step(&params, &[]);
        }
        let diff = (&w - &w_ref).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
        // Frozen: bit-identical parameter and moments.
        let (before, m0, v0) = (w.detach().copy(), ours.moments(0).0.copy(), ours.moments(0).1.copy());
        zero_grads(&params);
        loss(&w).backward();
        ours.step(&params, &[true]);
        assert!(w.detach().equal(&before) && ours.moments(0).0.equal(&m0) && ours.moments(0).1.equal(&v0));
        assert_eq!(ours.t[0], 20);
        ours.step(&params, &[false]);
        assert!(!w.detach().equal(&before) && ours.t[0] == 21);
    }
}
