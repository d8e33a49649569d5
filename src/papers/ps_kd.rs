//! Self-Knowledge Distillation with Progressive Refinement of Targets (PS-KD) — Kim, Ji, Yoon &
//! Hwang, arXiv 2006.12000.
//!
//! The model distils itself: each sample's target mixes its one-hot label with the model's own
//! prediction for it from the previous epoch, with a weight α_t that grows linearly to α_T. The
//! experiment: on a small digits training set PS-KD is far better calibrated (lower ECE and NLL)
//! than cross-entropy at the same accuracy; label smoothing is the other baseline.
//!
//! Checked against the original `main.py` (via the fork k-styles/PS-KD-Pytorch; lgcnsai's current
//! one was rewritten) and `loss/pskd_loss.py`: α_t = α_T·(t+1)/T per 0-based epoch t; at epoch 0
//! P[idx] ← one-hot(y) so the first targets are one-hot; target (1−α_t)·onehot + α_t·P[idx]; loss
//! the batch mean of the soft cross-entropy, no temperature; P[idx] ← softmax(z).detach() from the
//! *training* forward pass, so a sample's target uses its prediction from the previous epoch;
//! SGD with Nesterov momentum 0.9, wd 5e−4, lr ×0.1 at 50% and 75% of training. The official
//! ECE uses 10 bins: we log `test_ece10` beside the shared 15-bin `test_ece`.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::context::RunCtx;
use crate::data::block::Normalize;
use crate::data::DataConfig;
use crate::losses::metrics::ece;
use crate::models::{ModelConfig, ModelKind};
use crate::paper::classifier_config;
use crate::train::optim::{OptimConfig, OptimKind, ScheduleKind};
use crate::train::supervised::{fit, predict, setup, soft_cross_entropy, TrainConfig};

pub struct PsKd;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    Ce,
    /// Label smoothing with `smoothing` (ε).
    LabelSmoothing,
    PsKd,
}

classifier_config! {
    pub struct Config {
        pub loss: Loss,
        /// α_T, the final weight of the model's own past predictions.
        pub alpha_t: f64,
        /// ε of the label-smoothing baseline.
        pub smoothing: f64,
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data: DataConfig { name: "digits".into(), test_fraction: 0.665, train_size: Some(600), normalize: Normalize::Unit, flatten: true, ..DataConfig::default() },
            model: ModelConfig { kind: ModelKind::Mlp, hidden: vec![512, 512], bias: true },
            train: TrainConfig {
                epochs: 100,
                batch_size: 64,
                eval_every: 5,
                optim: OptimConfig {
                    kind: OptimKind::Sgd,
                    lr: 0.1,
                    momentum: 0.9,
                    nesterov: true,
                    weight_decay: 5e-4,
                    schedule: ScheduleKind::Multistep,
                    milestones: vec![50, 75],
                    gamma: 0.1,
                    ..OptimConfig::default()
                },
            },
            loss: Loss::PsKd,
            alpha_t: 0.8,
            smoothing: 0.1,
        }
    }
}

/// The per-sample buffer of past predictions and the progressive targets.
pub struct PastPredictions {
    pub p: Tensor,
    pub alpha_final: f64,
    pub epochs: u64,
}

impl PastPredictions {
    pub fn new(n: i64, classes: i64, alpha_final: f64, epochs: u64, device: tch::Device) -> Self {
        PastPredictions { p: Tensor::zeros([n, classes], (Kind::Float, device)), alpha_final, epochs }
    }

    /// α_t for 0-based epoch t.
    pub fn alpha(&self, epoch: u64) -> f64 {
        self.alpha_final * (epoch + 1) as f64 / self.epochs as f64
    }

    /// The loss of one batch; stores the batch's predictions for the next epoch.
    pub fn loss(&mut self, logits: &Tensor, y: &Tensor, idx: &Tensor, epoch: u64) -> Tensor {
        let classes = logits.size()[1];
        let onehot = y.one_hot(classes).to_kind(Kind::Float);
        if epoch == 0 {
            let _ = self.p.index_copy_(0, idx, &onehot);
        }
        let a = self.alpha(epoch);
        let target = &onehot * (1.0 - a) + self.p.index_select(0, idx) * a;
        let loss = soft_cross_entropy(logits, &target);
        let _ = self.p.index_copy_(0, idx, &logits.detach().softmax(-1, Kind::Float));
        loss
    }
}

impl crate::paper::Paper for PsKd {
    const KEY: &'static str = "ps_kd";
    const TITLE: &'static str = "Self-Knowledge Distillation with Progressive Refinement of Targets";
    const ARXIV: &'static str = "2006.12000";
    type Config = Config;

    fn check(c: &Config) -> Result<()> {
        if !(0.0..=1.0).contains(&c.alpha_t) || !(0.0..1.0).contains(&c.smoothing) {
            bail!("`alpha_t` must be in [0, 1] and `smoothing` in [0, 1)");
        }
        Ok(())
    }

    fn run(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
        let (data, vs, model) = setup(&cfg.data, &cfg.model, ctx)?;
        let mut past = PastPredictions::new(data.train.len(), data.classes, cfg.alpha_t, cfg.train.epochs, ctx.device);
        let (kind, eps, classes) = (cfg.loss, cfg.smoothing, data.classes);
        fit(model.as_ref(), &vs, &data, &cfg.train, ctx, |logits, batch| {
            Ok(match kind {
                Loss::Ce => logits.cross_entropy_for_logits(batch.y),
                Loss::LabelSmoothing => {
                    let target = batch.y.one_hot(classes).to_kind(Kind::Float) * (1.0 - eps) + eps / classes as f64;
                    soft_cross_entropy(logits, &target)
                }
                Loss::PsKd => past.loss(logits, batch.y, batch.idx, batch.epoch),
            })
        })?;
        let logits = predict(model.as_ref(), &data.test.x);
        ctx.set_final("test_ece10", ece(&logits, &data.test.y, 10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::f64s as v;
    use tch::Device;

    #[test]
    fn alpha_zero_is_cross_entropy_and_the_gradient_is_p_minus_target() {
        let z = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.1, 0.3, -0.2]).view([2, 3]).set_requires_grad(true);
        let y = Tensor::from_slice(&[2i64, 0]);
        let idx = Tensor::from_slice(&[0i64, 1]);
        let mut zero = PastPredictions::new(2, 3, 0.0, 10, Device::Cpu);
        let l = zero.loss(&z, &y, &idx, 3);
        let ce = z.cross_entropy_for_logits(&y);
        assert!((f64::try_from(&l).unwrap() - f64::try_from(&ce).unwrap()).abs() < 1e-6);
        // With α fixed and P = softmax(z) from the same logits: ∇ = (p − target)/N.
        let mut past = PastPredictions::new(2, 3, 0.8, 4, Device::Cpu); // α at epoch 1 = 0.4
        past.p = z.detach().softmax(-1, Kind::Float);
        let loss = past.loss(&z, &y, &idx, 1);
        loss.backward();
        let p = z.detach().softmax(-1, Kind::Float);
        let target = y.one_hot(3).to_kind(Kind::Float) * 0.6 + &p * 0.4;
        let expected = (&p - target) / 2.0;
        assert!(v(&(z.grad() - expected)).iter().all(|d| d.abs() < 1e-6));
        // = (1 − α)(p − y)/N
        let alt = (&p - y.one_hot(3).to_kind(Kind::Float)) * 0.6 / 2.0;
        assert!(v(&(z.grad() - alt)).iter().all(|d| d.abs() < 1e-6));
    }

    #[test]
    fn a_prediction_saved_in_epoch_e_is_the_target_in_epoch_e_plus_one() {
        let mut past = PastPredictions::new(3, 2, 1.0, 2, Device::Cpu);
        let y = Tensor::from_slice(&[0i64]);
        let idx = Tensor::from_slice(&[2i64]);
        let z0 = Tensor::from_slice(&[0.0f32, 1.0]).view([1, 2]);
        // Epoch 0: the target is one-hot (P was set to it), then P[2] ← softmax(z0).
        let l0 = past.loss(&z0, &y, &idx, 0);
        let expected0 = -f64::try_from(z0.log_softmax(-1, Kind::Float).get(0).get(0)).unwrap();
        assert!((f64::try_from(&l0).unwrap() - expected0).abs() < 1e-6);
        assert!(v(&(past.p.get(2) - z0.softmax(-1, Kind::Float).get(0))).iter().all(|d| d.abs() < 1e-7));
        // Epoch 1 (α = 1): the target is exactly last epoch's prediction.
        let z1 = Tensor::from_slice(&[2.0f32, -1.0]).view([1, 2]);
        let l1 = past.loss(&z1, &y, &idx, 1);
        let target = z0.softmax(-1, Kind::Float);
        let expected1 = f64::try_from(-(target * z1.log_softmax(-1, Kind::Float)).sum(Kind::Float)).unwrap();
        assert!((f64::try_from(&l1).unwrap() - expected1).abs() < 1e-6);
        assert_eq!(v(&past.p.get(0)), vec![0.0, 0.0], "other samples untouched");
        assert!((past.alpha(1) - 1.0).abs() < 1e-12 && (past.alpha(0) - 0.5).abs() < 1e-12);
    }
}
