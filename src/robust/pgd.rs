//! Projected gradient ascent (Madry et al. 2018) on an arbitrary objective of the perturbed
//! input: L∞ (signed-gradient steps, clip to the ε-box) or L2 (normalised-gradient steps,
//! rescale into the ε-ball), with an optional random start, and a projection onto the valid
//! input box [lo, hi] after every step.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    Linf,
    L2,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PgdConfig {
    pub norm: Norm,
    pub eps: f64,
    pub step: f64,
    pub steps: usize,
    /// Start from a uniform point of the ε-ball (L∞) / a random direction scaled by ε·U (L2).
    pub random_start: bool,
    /// The valid input box.
    pub lo: f64,
    pub hi: f64,
}

impl Default for PgdConfig {
    fn default() -> Self {
        PgdConfig { norm: Norm::Linf, eps: 0.1, step: 0.01, steps: 20, random_start: true, lo: 0.0, hi: 1.0 }
    }
}

/// Per-sample L2 norms of a batch [N, ...] as [N, 1, ...] (broadcastable).
fn l2_norms(t: &Tensor) -> Tensor {
    let n = t.size()[0];
    let mut shape = vec![n];
    shape.extend(std::iter::repeat(1).take(t.dim() - 1));
    t.flatten(1, -1).square().sum_dim_intlist([1].as_slice(), false, Kind::Float).sqrt().view(shape.as_slice())
}

/// Projects `x_adv` onto the ε-ball around `x` and the input box.
pub fn project(x_adv: &Tensor, x: &Tensor, cfg: &PgdConfig) -> Tensor {
    let delta = x_adv - x;
    let delta = match cfg.norm {
        Norm::Linf => delta.clamp(-cfg.eps, cfg.eps),
        Norm::L2 => {
            let norms = l2_norms(&delta);
            let scale = (norms.clamp_min(1e-12).reciprocal() * cfg.eps).clamp_max(1.0);
            delta * scale
        }
    };
    (x + delta).clamp(cfg.lo, cfg.hi)
}

/// Maximises `objective(x')` (summed over the batch, so each sample ascends its own term) over
/// the ε-ball around `x`. The start is `x` itself, or random; `start` overrides both (e.g.
/// TRADES's x + 0.001·N(0, I)). Returns the detached adversarial batch.
pub fn attack(x: &Tensor, cfg: &PgdConfig, start: Option<Tensor>, mut objective: impl FnMut(&Tensor) -> Tensor) -> Tensor {
    let x = x.detach();
    let mut x_adv = match start {
        Some(s) => project(&s, &x, cfg),
        None if cfg.random_start => {
            let noise = match cfg.norm {
                Norm::Linf => x.rand_like() * (2.0 * cfg.eps) - cfg.eps,
                Norm::L2 => {
                    let d = x.randn_like();
                    let mut shape = vec![x.size()[0]];
                    shape.extend(std::iter::repeat(1).take(x.dim() - 1));
                    let r = Tensor::rand(shape.as_slice(), (Kind::Float, x.device()));
                    &d / l2_norms(&d).clamp_min(1e-12) * r * cfg.eps
                }
            };
            project(&(&x + noise), &x, cfg)
        }
        None => x.shallow_clone(),
    };
    for _ in 0..cfg.steps {
        let xa = x_adv.detach().set_requires_grad(true);
        let value = objective(&xa).sum(Kind::Float);
        let grad = Tensor::run_backward(&[&value], &[&xa], false, false).remove(0);
        let step = match cfg.norm {
            Norm::Linf => grad.sign() * cfg.step,
            Norm::L2 => &grad / l2_norms(&grad).clamp_min(1e-12) * cfg.step,
        };
        x_adv = project(&(xa.detach() + step), &x, cfg);
    }
    x_adv.detach()
}

/// Accuracy of `model` on (x, y) under the PGD attack `cfg` maximising cross-entropy, in
/// batches of 512, the model in evaluation mode.
pub fn accuracy_under_attack<M: tch::nn::ModuleT + ?Sized>(model: &M, x: &Tensor, y: &Tensor, cfg: &PgdConfig) -> f64 {
    let mut correct = 0.0;
    let n = x.size()[0];
    for start in (0..n).step_by(512) {
        let len = (n - start).min(512);
        let (xb, yb) = (x.narrow(0, start, len), y.narrow(0, start, len));
        let adv = attack(&xb, cfg, None, |xa| model.forward_t(xa, false).cross_entropy_loss::<Tensor>(&yb, None, tch::Reduction::None, -100, 0.0));
        let logits = tch::no_grad(|| model.forward_t(&adv, false));
        correct += crate::losses::classify::accuracy(&logits, &yb) * len as f64;
    }
    correct / n.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn max(t: Tensor) -> f64 {
        f64::try_from(t.max()).unwrap()
    }

    #[test]
    fn stays_in_the_ball_and_the_box_and_ascends() {
        tch::manual_seed(0);
        let x = Tensor::rand([8, 1, 4, 4], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([16], (Kind::Float, Device::Cpu));
        let objective = |xa: &Tensor| xa.flatten(1, -1).mv(&w);
        for norm in [Norm::Linf, Norm::L2] {
            let cfg = PgdConfig { norm, eps: 0.3, step: 0.1, steps: 10, ..Default::default() };
            let adv = attack(&x, &cfg, None, objective);
            let delta = &adv - &x;
            match norm {
                Norm::Linf => assert!(max(delta.abs()) <= 0.3 + 1e-6),
                Norm::L2 => assert!(max(l2_norms(&delta)) <= 0.3 + 1e-5),
            }
            assert!(max(adv.shallow_clone()) <= 1.0 && f64::try_from(adv.min()).unwrap() >= 0.0);
            let before = f64::try_from(objective(&x).sum(Kind::Float)).unwrap();
            let after = f64::try_from(objective(&adv).sum(Kind::Float)).unwrap();
            assert!(after > before, "{norm:?}: {after} vs {before}");
        }
        // ε = 0: nothing moves.
        let cfg = PgdConfig { eps: 0.0, ..Default::default() };
        assert_eq!(max((attack(&x, &cfg, None, objective) - &x).abs()), 0.0);
    }

    #[test]
    fn linf_attack_on_a_linear_score_reaches_the_corner() {
        // max w·x' over the ε-box (inside [0,1]) is x + ε·sign(w), reached by enough sign steps.
        let x = Tensor::full([1, 4], 0.5, (Kind::Float, Device::Cpu));
        let w = Tensor::from_slice(&[1.0f32, -2.0, 0.5, -0.1]);
        let cfg = PgdConfig { eps: 0.2, step: 0.05, steps: 10, random_start: false, ..Default::default() };
        let adv = attack(&x, &cfg, None, |xa| xa.mv(&w));
        let expected = Tensor::from_slice(&[0.7f32, 0.3, 0.7, 0.3]).view([1, 4]);
        assert!(max((adv - expected).abs()) < 1e-6);
    }
}
