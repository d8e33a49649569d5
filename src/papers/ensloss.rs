//! EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing Overfitting in Classification —
//! Ben Dai, arXiv 2409.00908.
//!
//! SGD only needs a loss's derivative φ′ at the margins z = y·f(x). EnsLoss draws a new valid
//! derivative vector every minibatch — negative, non-decreasing in z (convex φ), φ′(0) < 0
//! (classification-calibrated) — so training follows a random ensemble of calibrated convex
//! losses instead of one. The experiment: a binary digits pair with flipped labels, trained to
//! 100% training accuracy; EnsLoss's final test accuracy is at least that of the best fixed loss
//! (logistic, hinge, exponential) and it loses less from its best epoch to the last.
//!
//! Checked against the official `losses.py` (statmlben/ensLoss, class `ensLoss`): per batch,
//! e ~ N(0,1), r = −BCinv(e; λ) with BCinv(e; 0) = exp(e) and max(1 + λe, 0)^(1/λ) otherwise;
//! r sorted ascending and clipped at −1; assigned by rank, the smallest margin getting the most
//! negative value (g[argsort z] = sort r); g ← g/z where z > 1; g ← stopgrad(g) − 1e−6; loss
//! mean(g·z). Ties in z are broken by index (a stable sort). The paper's own algorithm text was
//! not reachable; the code is what we follow. Labels are mapped 0/1 → −1/+1; the network has
//! one output f(x), read as two logits (−f/2, f/2) so the shared evaluation (accuracy = sign f,
//! NLL = logistic loss) applies unchanged.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use crate::context::{Rng, RunCtx};
use crate::data::block::{LabelNoise, NoiseKind, Normalize};
use crate::data::DataConfig;
use crate::models::{ModelConfig, ModelKind};
use crate::paper::classifier_config;
use crate::train::optim::{OptimConfig, OptimKind};
use crate::train::supervised::{fit, TrainConfig};

pub struct EnsLoss;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Logistic loss log(1 + e^{−z}).
    Bce,
    /// max(0, 1 − z).
    Hinge,
    /// e^{−z}.
    Exponential,
    /// The stochastic calibrated loss ensemble.
    Ensloss,
}

classifier_config! {
    /// A binary task: `data.classes: [negative, positive]`.
    pub struct Config {
        pub loss: Loss,
        /// λ of the inverse Box–Cox transform (0: exp).
        pub lambda: f64,
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data: DataConfig {
                name: "digits".into(),
                classes: vec![3, 8],
                test_fraction: 0.5,
                normalize: Normalize::Unit,
                flatten: true,
                label_noise: LabelNoise { kind: NoiseKind::Symmetric, rate: 0.2, map: vec![] },
                ..DataConfig::default()
            },
            model: ModelConfig { kind: ModelKind::Mlp, hidden: vec![256, 256], bias: true },
            train: TrainConfig { epochs: 200, batch_size: 64, eval_every: 10, optim: OptimConfig { kind: OptimKind::Adam, lr: 1e-3, weight_decay: 0.0, ..OptimConfig::default() } },
            loss: Loss::Ensloss,
            lambda: 0.0,
        }
    }
}

/// Inverse Box–Cox transform: exp(e) at λ = 0, max(1 + λe, 0)^(1/λ) otherwise.
pub fn box_cox_inv(e: f64, lambda: f64) -> f64 {
    if lambda == 0.0 {
        e.exp()
    } else {
        (1.0 + lambda * e).max(0.0).powf(1.0 / lambda)
    }
}

/// A random calibrated derivative vector for the margins `z` (official `ensLoss.forward`).
pub fn ensloss_derivatives(z: &[f64], lambda: f64, rng: &mut Rng) -> Vec<f64> {
    let mut r: Vec<f64> = z.iter().map(|_| -box_cox_inv(rng.normal(), lambda)).collect();
    r.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    for x in &mut r {
        *x = x.max(-1.0);
    }
    let mut order: Vec<usize> = (0..z.len()).collect();
    order.sort_by(|&i, &j| z[i].partial_cmp(&z[j]).expect("finite margins")); // stable: ties by index
    let mut g = vec![0.0; z.len()];
    for (rank, &i) in order.iter().enumerate() {
        g[i] = r[rank];
    }
    for (gi, &zi) in g.iter_mut().zip(z) {
        if zi > 1.0 {
            *gi /= zi;
        }
        *gi -= 1e-6;
    }
    g
}

/// The EnsLoss surrogate of a batch: mean(g·z) with g a fresh calibrated derivative vector
/// (constant in the graph), so its gradient is Σ g_i ∇z_i / B.
pub fn ensloss_batch(z: &Tensor, lambda: f64, rng: &mut Rng) -> Result<Tensor> {
    let zv = Vec::<f64>::try_from(z.detach().to_kind(Kind::Double).to_device(Device::Cpu))?;
    let g = ensloss_derivatives(&zv, lambda, rng);
    let g = Tensor::from_slice(&g).to_kind(z.kind()).to_device(z.device());
    Ok((g * z).mean(z.kind()))
}

/// One output f(x), presented as the logits (−f/2, f/2).
#[derive(Debug)]
struct Score(Box<dyn ModuleT>);

impl ModuleT for Score {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let f = self.0.forward_t(x, train);
        Tensor::cat(&[&f * -0.5, &f * 0.5], 1)
    }
}

/// Margins z = y·f from the two-logit view and 0/1 labels.
fn margins(logits: &Tensor, y01: &Tensor) -> Tensor {
    let f = logits.select(1, 1) - logits.select(1, 0);
    let y = y01.to_kind(Kind::Float) * 2.0 - 1.0;
    f * y
}

impl crate::paper::Paper for EnsLoss {
    const KEY: &'static str = "ensloss";
    const TITLE: &'static str = "EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing Overfitting in Classification";
    const ARXIV: &'static str = "2409.00908";
    type Config = Config;

    fn check(c: &Config) -> Result<()> {
        if c.data.classes.len() != 2 {
            bail!("EnsLoss is a binary method: set `data.classes: [negative, positive]`, e.g. [3, 8]");
        }
        Ok(())
    }

    fn run(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
        let data = cfg.data.load_for_run(ctx)?;
        tch::manual_seed(ctx.seed as i64);
        let vs = nn::VarStore::new(ctx.device);
        let model = Score(cfg.model.build(&vs.root(), &data.sample_shape, 1)?);
        // Derivatives are drawn from their own stream so batch order and derivatives are separate.
        let mut loss_rng = Rng::new(ctx.seed ^ 0xE25);
        let (kind, lambda) = (cfg.loss, cfg.lambda);
        fit(&model, &vs, &data, &cfg.train, ctx, |logits, batch| {
            let z = margins(logits, batch.y);
            Ok(match kind {
                Loss::Bce => z.neg().softplus().mean(Kind::Float),
                Loss::Hinge => (z.neg() + 1.0).relu().mean(Kind::Float),
                Loss::Exponential => z.neg().exp().mean(Kind::Float),
                Loss::Ensloss => ensloss_batch(&z, lambda, &mut loss_rng)?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivatives_are_negative_monotone_and_calibrated() {
        let mut rng = Rng::new(7);
        let z = vec![0.3, -2.0, 5.0, 1.5, 0.3, -0.1, 3.0, 0.0];
        for _ in 0..50 {
            let g = ensloss_derivatives(&z, 0.0, &mut rng);
            assert!(g.iter().all(|&x| (-1.0 - 1e-6..=-1e-6).contains(&x)), "{g:?}");
            let mut pairs: Vec<(f64, f64)> = z.iter().copied().zip(g.iter().copied()).collect();
            pairs.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            assert!(pairs.windows(2).all(|w| w[0].1 <= w[1].1 + 1e-15), "non-decreasing in z: {pairs:?}");
        }
        // A batch of one works.
        assert_eq!(ensloss_derivatives(&[0.5], 0.0, &mut rng).len(), 1);
    }

    #[test]
    fn box_cox_inverse_cases() {
        assert!((box_cox_inv(0.7, 0.0) - 0.7f64.exp()).abs() < 1e-15);
        assert!((box_cox_inv(0.7, 0.5) - (1.0 + 0.35f64).powi(2)).abs() < 1e-12);
        assert_eq!(box_cox_inv(-3.0, 0.5), 0.0);
    }

    #[test]
    fn autograd_gives_g_over_b() {
        // The batch loss the run uses: its gradient is exactly the drawn derivatives / B.
        let z = Tensor::from_slice(&[0.2f64, -1.0, 2.0]).set_requires_grad(true);
        let loss = ensloss_batch(&z, 0.0, &mut Rng::new(9)).unwrap();
        loss.backward();
        let g = ensloss_derivatives(&[0.2, -1.0, 2.0], 0.0, &mut Rng::new(9));
        let grad = Vec::<f64>::try_from(z.grad()).unwrap();
        assert!(grad.iter().zip(&g).all(|(a, b)| (a - b / 3.0).abs() < 1e-12), "{grad:?} vs {g:?}");
        // Margins from the two-logit view: f = 2, y = 1 → z = 2; y = 0 → z = −2.
        let logits = Tensor::from_slice(&[-1.0f32, 1.0, -1.0, 1.0]).view([2, 2]);
        let m = Vec::<f32>::try_from(margins(&logits, &Tensor::from_slice(&[1i64, 0]))).unwrap();
        assert_eq!(m, vec![2.0, -2.0]);
    }

    #[test]
    fn margins_above_one_get_their_rank_derivative_divided_by_z() {
        // Before the tail, g depends on z only through its ranks (the draws come from the Rng, the
        // assignment from argsort z). Shifting every margin by −100 keeps the ranks and ties, so the
        // same seed gives the same r, and puts every margin below 1, so no tail applies there. Hence
        // for z_i > 1: g(z)_i = (g(z − 100)_i + 1e−6)/z_i − 1e−6, and g(z)_i = g(z − 100)_i otherwise.
        let z: [f64; 10] = [0.3, -2.0, 5.0, 1.5, 0.3, -0.1, 3.0, 0.0, 1.0, 12.0];
        let shifted: Vec<f64> = z.iter().map(|x| x - 100.0).collect();
        for seed in [5u64, 6, 7] {
            let g = ensloss_derivatives(&z, 0.0, &mut Rng::new(seed));
            let untailed = ensloss_derivatives(&shifted, 0.0, &mut Rng::new(seed));
            for i in 0..z.len() {
                let expected = if z[i] > 1.0 { (untailed[i] + 1e-6) / z[i] - 1e-6 } else { untailed[i] };
                assert!((g[i] - expected).abs() < 1e-14, "seed {seed}, z = {}: {} vs {expected}", z[i], g[i]);
                if z[i] > 1.0 {
                    // The tail's own size, r·(1 − 1/z): dropping it would miss by far more than 1e-14.
                    assert!((untailed[i] - g[i]).abs() > 1e-3, "seed {seed}, z = {}: tail only {}", z[i], untailed[i] - g[i]);
                }
            }
        }
    }
}
