//! Contextual Bandits with Online Neural Regression — Deb, Ban, Zuo, He, Banerjee, arXiv 2312.07145
//! (ICLR 2024).
//!
//! Contextual bandits reduced to online regression with a wide network: NeuSquareCB regresses
//! rewards with the square loss and plays SquareCB's inverse-gap weighting; NeuFastCB regresses
//! losses with the KL (log) loss and plays FastCB's first-order weighting, whose regret scales with
//! the best arm's cumulative loss. The experiment: digits as a 10-armed bandit (reward 1 for the
//! true label, disjoint arm encoding e_a ⊗ x), T = 3000 rounds: both reductions beat neural
//! ε-greedy and NeuralUCB-diag in regret, and FastCB has the best final accuracy — but with γ tuned
//! per method SquareCB's regret is at or below FastCB's (the claimed order FAILs, ≈ 1 SE).
//!
//! No official code exists (the note); this follows the note's reconstruction. One online SGD step
//! per round on the played arm (η constant), optionally a replay step on 32 past rounds; the
//! perturbed prediction f̃_t(θ; x) = f(θ; x) + ⟨ε_t, θ − θ₀⟩ with ε_t ~ N(0, c_p²/p·I) fresh each
//! round (c_p = 0 is the ablation) — it shifts every arm alike, so it acts through the clip, the
//! gaps and the gradient (ε_t). The regressor is an MLP Kd → 100 → 1 with PyTorch's default
//! initialisation standing in for the paper's NTK-style Gaussian one. NeuralUCB-diag plays
//! argmax f + ν·√(gᵀZ⁻¹g/m) with Z = λI + Σ g gᵀ kept diagonal. Regret is booked two ways by
//! `online::bandit`: realised, Σ(1 − r_t), and expected, Σ(1 − p_t[label]) — the latter without
//! the sampling noise of the played arm.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Kind, Tensor};

use crate::context::{Rng, RunCtx};
use crate::data::DataConfig;
use crate::models::mlp::Mlp;
use crate::online::bandit::{argmax, fastcb_probabilities, squarecb_probabilities, Regret};

pub struct NeuralBandits;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    SquareCb,
    FastCb,
    EpsGreedy,
    NeuralUcb,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data: DataConfig,
    pub method: Method,
    pub rounds: usize,
    pub hidden: i64,
    /// γ of SquareCB / FastCB.
    pub gamma: f64,
    /// Online step size η.
    pub lr: f64,
    /// c_p of the perturbation (0: none).
    pub perturbation: f64,
    /// Rounds in an extra replay step each round (0: none).
    pub replay_batch: usize,
    /// ε of ε-greedy.
    pub epsilon: f64,
    /// NeuralUCB's exploration scale ν and ridge λ.
    pub ucb_nu: f64,
    pub ucb_lambda: f64,
    /// Rounds at the end over which the final accuracy is measured.
    pub final_window: usize,
    pub log_every: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data: DataConfig { test_fraction: 0.2, flatten: true, ..DataConfig::default() },
            method: Method::FastCb,
            rounds: 3000,
            hidden: 100,
            gamma: 100.0,
            lr: 1e-2,
            perturbation: 0.0,
            replay_batch: 0,
            epsilon: 0.05,
            ucb_nu: 1.0,
            ucb_lambda: 1.0,
            final_window: 500,
            log_every: 100,
        }
    }
}

/// The K arm contexts of one sample: row a is e_a ⊗ x, [K, K·d].
pub fn disjoint_arms(x: &Tensor, k: i64) -> Tensor {
    let d = x.size()[0];
    (Tensor::eye(k, (x.kind(), x.device())).unsqueeze(2) * x.view([1, 1, d])).view([k, k * d])
}

/// The action distribution of `method` from the network's outputs `f` (one per arm).
pub fn action_probabilities(method: Method, f: &[f64], cfg: &Config, ucb_bonus: Option<&[f64]>) -> Vec<f64> {
    let k = f.len();
    let one_hot = |b: usize| (0..k).map(|a| if a == b { 1.0 } else { 0.0 }).collect::<Vec<f64>>();
    match method {
        Method::SquareCb => squarecb_probabilities(&f.iter().map(|v| v.clamp(0.0, 1.0)).collect::<Vec<_>>(), cfg.gamma),
        Method::FastCb => fastcb_probabilities(&f.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect::<Vec<_>>(), cfg.gamma),
        Method::EpsGreedy => {
            let b = argmax(f);
            (0..k).map(|a| cfg.epsilon / k as f64 + if a == b { 1.0 - cfg.epsilon } else { 0.0 }).collect()
        }
        Method::NeuralUcb => {
            let bonus = ucb_bonus.expect("NeuralUCB needs its bonus");
            one_hot(argmax(&f.iter().zip(bonus).map(|(v, b)| v + b).collect::<Vec<_>>()))
        }
    }
}

/// NeuralUCB-diag's bonus ν·√(gᵀZ⁻¹g/m) with Z kept as its diagonal (the note's scaling; Zhou et
/// al.'s code puts the 1/m into Z instead, which with a data-dominated Z makes their bonus m× this).
pub fn ucb_bonus(grads: &[Tensor], z_diag: &[Tensor], nu: f64, m: i64) -> f64 {
    let s: f64 = grads.iter().zip(z_diag).map(|(g, z)| (g.square() / z).sum(Kind::Double).double_value(&[])).sum();
    nu * (s / m as f64).sqrt()
}

/// The per-round regression loss on the played arms: square loss on rewards, or the log loss of
/// σ(f̃) against the observed loss 1 − r (FastCB).
fn regression_loss(method: Method, pred: &Tensor, reward: &Tensor) -> Tensor {
    match method {
        Method::FastCb => pred.binary_cross_entropy_with_logits::<Tensor>(&(-reward + 1.0), None, None, tch::Reduction::Mean),
        _ => (pred - reward).square().mean(Kind::Float),
    }
}

/// ⟨ε, θ − θ₀⟩ over every parameter, ε ~ N(0, c²/p·I) drawn from `rng`: the draws of
/// [`Rng::normal`], two uniforms per value, with the Box–Muller transform done on the whole vector
/// as tensor ops (in f64, then to f32 as before; ~1 % of the cost of 64k scalar ln/cos per round —
/// the libm and the vectorised ln/cos can differ in the last bit of the f64, which the cast to
/// f32 almost always absorbs).
fn perturbation(params: &[Tensor], init: &[Tensor], c: f64, rng: &mut Rng) -> Tensor {
    let p: i64 = params.iter().map(Tensor::numel).map(|n| n as i64).sum();
    let scale = c / (p as f64).sqrt();
    let mut total = Tensor::zeros([], (Kind::Float, params[0].device()));
    for (w, w0) in params.iter().zip(init) {
        let n = w.numel();
        let mut u = Vec::with_capacity(2 * n);
        for _ in 0..n {
            u.push(rng.uniform().max(f64::MIN_POSITIVE));
            u.push(rng.uniform());
        }
        let u = Tensor::from_slice(&u).view([n as i64, 2]);
        let normal = (u.select(1, 0).log() * -2.0).sqrt() * (u.select(1, 1) * (2.0 * std::f64::consts::PI)).cos();
        let eps = (normal * scale).to_kind(Kind::Float).view(w.size().as_slice()).to_device(w.device());
        total = total + ((w - w0) * eps).sum(Kind::Float);
    }
    total
}

impl crate::paper::Blocks for Config {
    fn data_block(&self) -> Option<&DataConfig> {
        Some(&self.data)
    }
}

impl crate::paper::Paper for NeuralBandits {
    const KEY: &'static str = "neural_bandits";
    const TITLE: &'static str = "Contextual Bandits with Online Neural Regression";
    const ARXIV: &'static str = "2312.07145";
    type Config = Config;

    fn check(c: &Config) -> Result<()> {
        if c.rounds == 0 || c.hidden < 1 || c.gamma < 0.0 || !(c.lr > 0.0) || c.perturbation < 0.0 || !(0.0..=1.0).contains(&c.epsilon) {
            bail!("`rounds`, `hidden` ≥ 1, `gamma` ≥ 0, `lr` > 0, `perturbation` ≥ 0, `epsilon` in [0, 1]");
        }
        if c.ucb_nu < 0.0 || !(c.ucb_lambda > 0.0) || c.final_window == 0 || c.final_window > c.rounds || c.log_every == 0 {
            bail!("`ucb_nu` ≥ 0, `ucb_lambda` > 0, `final_window` in 1..=rounds, `log_every` ≥ 1");
        }
        Ok(())
    }

    fn run(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
        let data = cfg.data.load_for_run(ctx)?;
        let device = ctx.device;
        let xs = data.train.x.flatten(1, -1).to_kind(Kind::Float);
        let xs = &xs / xs.norm_scalaropt_dim(2.0, [1].as_slice(), true).clamp_min(1e-12); // unit-norm contexts
        let ys = Vec::<i64>::try_from(&data.train.y)?;
        let (n, d, k) = (xs.size()[0], xs.size()[1], data.classes);

        let vs = nn::VarStore::new(device);
        let net = Mlp::new(&(vs.root() / "f"), &[k * d, cfg.hidden, 1], true);
        let mut opt = nn::Sgd::default().build(&vs, cfg.lr)?;
        let params = vs.trainable_variables();
        let init: Vec<Tensor> = params.iter().map(|w| w.detach().copy()).collect();
        let mut z_diag: Vec<Tensor> = params.iter().map(|w| w.ones_like() * cfg.ucb_lambda).collect();

        let mut rng = Rng::new(ctx.seed ^ 0xBA4D);
        // ε has its own generator, so a perturbed arm sees the same contexts as the others.
        let mut pert_rng = Rng::new(ctx.seed ^ 0xE95);
        let mut regret = Regret::default();
        let mut history: Vec<(i64, i64, f32)> = Vec::new(); // (sample, arm, reward)
        let mut window_hits = 0.0;
        for t in 0..cfg.rounds {
            let i = rng.below(n as u64) as i64;
            let label = ys[i as usize] as usize;
            let arms = disjoint_arms(&xs.get(i), k);
            let pert = if cfg.perturbation > 0.0 { Some(perturbation(&params, &init, cfg.perturbation, &mut pert_rng)) } else { None };
            let f_t = {
                let f = net.forward(&arms).squeeze_dim(1);
                match &pert {
                    Some(p) => f + p,
                    None => f,
                }
            };
            let f: Vec<f64> = Vec::<f64>::try_from(f_t.detach().to_kind(Kind::Double))?;
            let mut arm_grads: Vec<Vec<Tensor>> = Vec::new(); // NeuralUCB: ∇f of every arm
            let bonus = if cfg.method == Method::NeuralUcb {
                let mut b = Vec::with_capacity(k as usize);
                for a in 0..k {
                    let g = Tensor::run_backward(&[f_t.get(a)], &params, true, false);
                    b.push(ucb_bonus(&g, &z_diag, cfg.ucb_nu, cfg.hidden));
                    arm_grads.push(g);
                }
                Some(b)
            } else {
                None
            };
            let p = action_probabilities(cfg.method, &f, cfg, bonus.as_deref());
            let a = rng.categorical(&p);
            let reward = if a == label { 1.0 } else { 0.0 };
            let means: Vec<f64> = (0..k as usize).map(|j| if j == label { 1.0 } else { 0.0 }).collect();
            regret.record(&means, &p, a);
            if t + cfg.final_window >= cfg.rounds {
                window_hits += reward;
            }
            if cfg.method == Method::NeuralUcb {
                // The played arm's gradient, computed above for its bonus.
                let g = &arm_grads[a];
                tch::no_grad(|| {
                    for (z, g) in z_diag.iter_mut().zip(g) {
                        *z = &*z + g.square();
                    }
                });
            }
            // One online step on the played arm (the perturbation's gradient is ε_t).
            let r_t = Tensor::from_slice(&[reward as f32]).to_device(device);
            let loss = regression_loss(cfg.method, &f_t.get(a as i64).unsqueeze(0), &r_t);
            opt.backward_step(&loss);
            history.push((i, a as i64, reward as f32));
            if cfg.replay_batch > 0 && history.len() > 1 {
                let picks: Vec<&(i64, i64, f32)> = (0..cfg.replay_batch).map(|_| &history[rng.below(history.len() as u64) as usize]).collect();
                // Row a of `disjoint_arms(x_s)` for every pick at once: the same products.
                let (samples, played): (Vec<i64>, Vec<i64>) = picks.iter().map(|(s, a, _)| (*s, *a)).unzip();
                let eye = Tensor::eye(k, (xs.kind(), device)).index_select(0, &Tensor::from_slice(&played).to_device(device));
                let rows = (eye.unsqueeze(2) * xs.index_select(0, &Tensor::from_slice(&samples).to_device(device)).unsqueeze(1)).view([picks.len() as i64, k * d]);
                let r = Tensor::from_slice(&picks.iter().map(|p| p.2).collect::<Vec<f32>>()).to_device(device);
                let loss = regression_loss(cfg.method, &net.forward(&rows).squeeze_dim(1), &r);
                opt.backward_step(&loss);
            }
            if (t + 1) % cfg.log_every == 0 || t + 1 == cfg.rounds {
                ctx.log_all((t + 1) as u64, &[("regret", regret.realised), ("expected_regret", regret.expected)])?;
                ctx.tick((t + 1) as u64, cfg.rounds as u64)?;
            }
        }
        ctx.set_final("final_accuracy", window_hits / cfg.final_window as f64)?;
        ctx.set_final("regret_per_round", regret.expected / cfg.rounds as f64)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn disjoint_encoding_places_the_context_in_the_arms_block() {
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let arms = disjoint_arms(&x, 3);
        assert_eq!(arms.size(), vec![3, 9]);
        let rows = Vec::<f32>::try_from(arms.flatten(0, -1)).unwrap();
        assert_eq!(&rows[0..9], &[1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(&rows[9..18], &[0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0]);
        assert_eq!(&rows[18..27], &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn each_method_maps_outputs_to_its_distribution() {
        let cfg = Config { gamma: 10.0, epsilon: 0.1, ..Config::default() };
        // SquareCB clips the rewards to [0, 1] before weighting.
        let p = action_probabilities(Method::SquareCb, &[1.7, 0.1, 0.5], &cfg, None);
        assert_eq!(p, squarecb_probabilities(&[1.0, 0.1, 0.5], 10.0));
        // FastCB reads the outputs as logits of losses: the smallest output is the best arm.
        let p = action_probabilities(Method::FastCb, &[-2.0, 2.0, 0.0], &cfg, None);
        let l = [-2.0f64, 2.0, 0.0].map(|v| 1.0 / (1.0 + (-v).exp()));
        assert_eq!(p, fastcb_probabilities(&l, 10.0));
        assert_eq!(argmax(&p), 0);
        let p = action_probabilities(Method::EpsGreedy, &[0.2, 0.9, 0.5], &cfg, None);
        assert!((p[1] - (0.9 + 0.1 / 3.0)).abs() < 1e-15 && (p[0] - 0.1 / 3.0).abs() < 1e-15);
        // NeuralUCB: the bonus can overturn the greedy choice.
        let p = action_probabilities(Method::NeuralUcb, &[0.5, 0.4], &cfg, Some(&[0.0, 0.2]));
        assert_eq!(p, vec![0.0, 1.0]);
    }

    #[test]
    fn the_perturbation_is_zero_at_init_and_its_gradient_is_epsilon() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = Mlp::new(&vs.root(), &[4, 3, 1], true);
        let params = vs.trainable_variables();
        let init: Vec<Tensor> = params.iter().map(|w| w.detach().copy()).collect();
        assert_eq!(perturbation(&params, &init, 0.5, &mut Rng::new(1)).double_value(&[]), 0.0);
        // Its gradient is the ε drawn: redraw ε with the same generator state and compare.
        tch::no_grad(|| {
            for w in &params {
                let _ = w.shallow_clone().g_add_scalar_(0.25);
            }
        });
        let pert = perturbation(&params, &init, 0.5, &mut Rng::new(1));
        let grads = Tensor::run_backward(&[&pert], &params, false, false);
        let mut rng = Rng::new(1);
        let p: i64 = params.iter().map(|w| w.numel() as i64).sum();
        let scale = 0.5 / (p as f64).sqrt();
        let mut want_value = 0.0;
        for g in &grads {
            let got = Vec::<f32>::try_from(g.flatten(0, -1)).unwrap();
            for v in got {
                let e = scale * rng.normal();
                assert!((v as f64 - e).abs() < 1e-6);
                want_value += 0.25 * e;
            }
        }
        assert!((pert.double_value(&[]) - want_value).abs() < 1e-5);
    }

    #[test]
    fn the_ucb_bonus_is_nu_root_g_zinv_g_over_m() {
        let g = [Tensor::from_slice(&[1.0f32, 2.0]), Tensor::from_slice(&[3.0f32])];
        let z = [Tensor::from_slice(&[2.0f32, 4.0]), Tensor::from_slice(&[9.0f32])];
        // gᵀZ⁻¹g = ½ + 1 + 1 = 2.5; m 10, ν 2: 2·√0.25 = 1
        assert!((ucb_bonus(&g, &z, 2.0, 10) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn losses_are_square_on_rewards_and_log_loss_on_losses() {
        let pred = Tensor::from_slice(&[0.3f32, 0.0]);
        let r = Tensor::from_slice(&[1.0f32, 0.0]);
        let sq = regression_loss(Method::SquareCb, &pred, &r).double_value(&[]);
        assert!((sq - (0.49 + 0.0) / 2.0).abs() < 1e-6);
        // FastCB: target loss 1 − r; σ(0.3) vs 0 and σ(0) vs 1: (−ln(1 − σ(0.3)) − ln ½)/2.
        let kl = regression_loss(Method::FastCb, &pred, &r).double_value(&[]);
        let s = 1.0 / (1.0 + (-0.3f64).exp());
        assert!((kl - (-(1.0 - s).ln() - 0.5f64.ln()) / 2.0).abs() < 1e-6, "{kl}");
    }
}
