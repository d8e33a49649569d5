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
}
