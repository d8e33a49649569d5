//! Early-Learning Regularization Prevents Memorization of Noisy Labels — Liu, Niles-Weed,
//! Razavian & Fernandez-Granda, arXiv 2007.00151.
//!
//! Networks fit the clean labels first and memorise the wrong ones later. ELR keeps a running
//! average T of each sample's past predictions and adds λ·log(1 − ⟨T_i, p_i⟩) to the loss, which
//! pulls the model toward its own early-learning targets. The experiment: on digits with 40% label
//! noise, CE's accuracy peaks and then drops as it memorises, ELR's stays near its peak.
//!
//! Checked against the official `ELR/model/loss.py` and `config_cifar10.json` (shengliu66/ELR):
//! p = clamp(softmax(z), 1e−4, 1 − 1e−4); T starts at zeros, is indexed by the sample's index in
//! the training set, and is updated *before* the regulariser (T ← βT + (1−β)·p̂/Σp̂, p̂ detached),
//! so the current prediction is part of its own target; CE is on the raw logits; CIFAR-10 defaults
//! β 0.7, λ 3, SGD lr 0.02 momentum 0.9 wd 1e−3, batch 128, 150 epochs, cosine warm restarts
//! (T₀ 10, η_min 0.001) stepped per epoch (CIFAR-100: β 0.9, λ 7, multistep). The official
//! "symmetric" noise redraws the label from *all* classes (so it may stay): that is our
//! `label_noise.kind: uniform`, and 40% of it leaves ≈36% of labels wrong on 10 classes.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::context::RunCtx;
use crate::data::block::{LabelNoise, NoiseKind, Normalize};
use crate::data::DataConfig;
use crate::models::{ModelConfig, ModelKind};
use crate::paper::classifier_config;
use crate::train::optim::{OptimConfig, OptimKind, ScheduleKind};
use crate::train::supervised::{fit, setup, TrainConfig};

pub struct Elr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Plain cross-entropy (the baseline; its best epoch is the oracle early-stopping baseline).
    Ce,
    /// Cross-entropy + λ · ELR regulariser.
    Elr,
    /// Generalised cross-entropy (1 − p_y^q)/q, the cheap robust-loss baseline.
    Gce,
}

classifier_config! {
    pub struct Config {
        pub loss: Loss,
        /// Temporal-ensembling momentum of the targets.
        pub beta: f64,
        /// Weight λ of the regulariser.
        pub lambda: f64,
        /// q of the GCE baseline.
        pub gce_q: f64,
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data: DataConfig {
                name: "digits".into(),
                test_fraction: 0.2,
                normalize: Normalize::Unit,
                flatten: true,
                label_noise: LabelNoise { kind: NoiseKind::Uniform, rate: 0.4, map: vec![] },
                ..DataConfig::default()
            },
            model: ModelConfig { kind: ModelKind::Mlp, hidden: vec![256, 256], bias: true },
            train: TrainConfig {
                epochs: 150,
                batch_size: 128,
                eval_every: 5,
                optim: OptimConfig {
                    kind: OptimKind::Sgd,
                    lr: 0.02,
                    momentum: 0.9,
                    weight_decay: 1e-3,
                    schedule: ScheduleKind::CosineRestarts,
                    t0: 10,
                    eta_min: 0.001,
                    ..OptimConfig::default()
                },
            },
            loss: Loss::Elr,
            beta: 0.7,
            lambda: 3.0,
            gce_q: 0.7,
        }
    }
}

/// The official clamp of the probabilities.
const CLAMP: (f64, f64) = (1e-4, 1.0 - 1e-4);

/// ELR's target buffer and regulariser.
pub struct ElrTargets {
    pub targets: Tensor,
    pub beta: f64,
}

impl ElrTargets {
    pub fn new(n: i64, classes: i64, beta: f64, device: tch::Device) -> Self {
        ElrTargets { targets: Tensor::zeros([n, classes], (Kind::Float, device)), beta }
    }

    /// Updates T[idx] from the batch's predictions, then returns mean log(1 − ⟨T[idx], p⟩).
    pub fn regulariser(&mut self, logits: &Tensor, idx: &Tensor) -> Tensor {
        let p = logits.softmax(-1, Kind::Float).clamp(CLAMP.0, CLAMP.1);
        let p_hat = p.detach();
        let normalised = &p_hat / p_hat.sum_dim_intlist([1].as_slice(), true, Kind::Float);
        let updated = self.targets.index_select(0, idx) * self.beta + normalised * (1.0 - self.beta);
        let _ = self.targets.index_copy_(0, idx, &updated);
        let inner = (updated * &p).sum_dim_intlist([1].as_slice(), false, Kind::Float);
        (inner.neg() + 1.0).log().mean(Kind::Float)
    }
}

/// Generalised cross-entropy (Zhang & Sabuncu 2018): mean (1 − p_y^q)/q.
pub fn gce(logits: &Tensor, y: &Tensor, q: f64) -> Tensor {
    let p_y = logits.softmax(-1, Kind::Float).gather(1, &y.unsqueeze(1), false).squeeze_dim(1);
    ((p_y.pow_tensor_scalar(q).neg() + 1.0) / q).mean(Kind::Float)
}

impl crate::paper::Paper for Elr {
    const KEY: &'static str = "elr";
    const TITLE: &'static str = "Early-Learning Regularization Prevents Memorization of Noisy Labels";
    const ARXIV: &'static str = "2007.00151";
    type Config = Config;

    fn check(c: &Config) -> Result<()> {
        if !(0.0..1.0).contains(&c.beta) || c.lambda < 0.0 || !(c.gce_q > 0.0 && c.gce_q <= 1.0) {
            bail!("`beta` must be in [0, 1), `lambda` non-negative, `gce_q` in (0, 1]");
        }
        Ok(())
    }

    fn run(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
        let (data, vs, model) = setup(&cfg.data, &cfg.model, ctx)?;
        let mut targets = ElrTargets::new(data.train.len(), data.classes, cfg.beta, ctx.device);
        let (loss_kind, lambda, q) = (cfg.loss, cfg.lambda, cfg.gce_q);
        fit(model.as_ref(), &vs, &data, &cfg.train, ctx, |logits, batch| {
            Ok(match loss_kind {
                Loss::Ce => logits.cross_entropy_for_logits(batch.y),
                Loss::Elr => logits.cross_entropy_for_logits(batch.y) + targets.regulariser(logits, batch.idx) * lambda,
                Loss::Gce => gce(logits, batch.y, q),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::f64s as v;
    use tch::Device;

    #[test]
    fn target_update_comes_first_and_touches_only_the_batch() {
        let mut t = ElrTargets::new(4, 3, 0.7, Device::Cpu);
        let logits = Tensor::from_slice(&[0.2f32, 1.0, -0.5, 2.0, 0.0, 0.1]).view([2, 3]);
        let idx = Tensor::from_slice(&[1i64, 3]);
        let _ = t.regulariser(&logits, &idx);
        let p = logits.softmax(-1, Kind::Float).clamp(CLAMP.0, CLAMP.1);
        let expected = &p / p.sum_dim_intlist([1].as_slice(), true, Kind::Float) * 0.3;
        let got = t.targets.index_select(0, &idx);
        assert!(v(&(got - expected)).iter().all(|d| d.abs() < 1e-7));
        assert!(v(&t.targets.get(0)).iter().chain(v(&t.targets.get(2)).iter()).all(|&x| x == 0.0));
    }

    #[test]
    fn regulariser_gradient_matches_the_closed_form() {
        // With T fixed (β = 1 keeps it), d/dz_k log(1 − ⟨t,p⟩) = −p_k (t_k − ⟨t,p⟩) / (1 − ⟨t,p⟩).
        let mut t = ElrTargets::new(1, 4, 1.0, Device::Cpu);
        let target = Tensor::from_slice(&[0.1f32, 0.5, 0.3, 0.1]).view([1, 4]);
        t.targets = target.copy();
        let z = Tensor::from_slice(&[0.3f32, -0.2, 0.8, 0.1]).view([1, 4]).set_requires_grad(true);
        let reg = t.regulariser(&z, &Tensor::from_slice(&[0i64]));
        reg.backward();
        let p = v(&z.detach().softmax(-1, Kind::Float));
        let tv = v(&target);
        let tp: f64 = p.iter().zip(&tv).map(|(a, b)| a * b).sum();
        let grad = v(&z.grad());
        for k in 0..4 {
            let closed = -p[k] * (tv[k] - tp) / (1.0 - tp);
            assert!((grad[k] - closed).abs() < 1e-6, "k={k}: {} vs {closed}", grad[k]);
        }
        // ⟨t, p⟩ < 1 even for a confident prediction, so the log stays finite.
        let mut sure = ElrTargets::new(1, 2, 0.0, Device::Cpu);
        let r = sure.regulariser(&Tensor::from_slice(&[100f32, -100.0]).view([1, 2]), &Tensor::from_slice(&[0i64]));
        assert!(f64::try_from(r).unwrap().is_finite());
    }

    #[test]
    fn gce_limits() {
        // q → 0 approaches CE; q = 1 is 1 − p_y (MAE up to a factor).
        let z = Tensor::from_slice(&[1.0f32, 2.0, 0.5]).view([1, 3]);
        let y = Tensor::from_slice(&[1i64]);
        let ce = f64::try_from(z.cross_entropy_for_logits(&y)).unwrap();
        assert!((f64::try_from(gce(&z, &y, 1e-4)).unwrap() - ce).abs() < 1e-3);
        let p_y = f64::try_from(z.softmax(-1, Kind::Float).get(0).get(1)).unwrap();
        assert!((f64::try_from(gce(&z, &y, 1.0)).unwrap() - (1.0 - p_y)).abs() < 1e-6);
    }
}
