//! Refined Regret for Adversarial MDPs with Linear Function Approximation — Dai, Luo, Wei, Zimmert,
//! arXiv 2301.12942 (ICML 2023).
//!
//! Policy optimisation for episodic MDPs with adversarial losses, bandit feedback and linear Q
//! functions: per-state FTRL with a log-barrier regulariser tolerates the arbitrarily negative
//! loss estimates θ̂ = (Σ̂ + γI)⁻¹φ(s_h, a_h)L_h that non-tabular features produce, so η and γ can
//! be tuned at K^{−1/2} for Õ(√K) regret, where exponential weights need η·Q̂ ≥ −1 and with it the
//! K^{2/3} tuning. The experiment (a mechanism demo; the paper has none): a layered linear MDP with
//! losses that switch on doubling blocks, K ∈ {1000, 4000, 16000}: the log-barrier learner's
//! regret against the best fixed policy in hindsight, its log-log slope, EXP-PO at both tunings,
//! and the tabular control where every estimate is ≥ 0.
//!
//! No official code (a theory paper); Algorithm 1 as our note gives it: the closed-form
//! log-barrier step p_a = 1/(η(L_a + λ)) with λ by monotone Newton, the covariance of each layer
//! under π_k computed exactly from its occupancy (the note's "infinite simulator"), no dilated
//! bonus (the note's default, its use in Alg. 1 unverified), η = c_η K^{−1/2}, γ = c_γ K^{−1/2}.
//! Regret is exact: Σ_k V^{π_k}_k(s₁) by dynamic programming against min_π V^π(Σ_k ℓ_k)(s₁), the
//! comparator by backward induction on the summed losses (P is fixed). The environment follows
//! the note's §5: φ ~ Dirichlet(0.3·1), next-state mixtures μ_i ~ Dirichlet(1), P(s'|s, a) =
//! Σ_i φ_i(s, a)μ_i(s') so that Q^π is linear in φ for every π (tested), losses φᵀθ_k with θ_k
//! alternating between θᴬ and θᴮ on episodes [2ʲ, 2ʲ⁺¹), plus U[−0.05, 0.05] noise on θ_k's
//! coordinates (clipped to [0, 1]: the loss stays linear). The tabular control keeps this
//! environment and gives the learner one-hot features. Algorithm 2 (the magnitude-reduced
//! estimator) and roll-out covariances are not implemented.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::context::{Rng, RunCtx};
use crate::numerics::dense::Mat;

pub struct AdversarialLinearMdp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Per-state FTRL with the log-barrier regulariser (Algorithm 1).
    LogBarrier,
    /// Per-state exponential weights with the same estimator (EXP-PO).
    ExpPo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Features {
    /// d-dimensional Dirichlet features with a linear transition (the linear MDP).
    Linear,
    /// One-hot features per (state, action): a tabular MDP, every estimate ≥ 0.
    Tabular,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub horizon: usize,
    /// States in every layer after the first (the first holds the start state alone).
    pub states: usize,
    pub actions: usize,
    pub dim: usize,
    pub feature_alpha: f64,
    pub features: Features,
    pub episodes: usize,
    pub algorithm: Algorithm,
    /// η = eta_scale · K^{−eta_rate}, γ = gamma_scale · K^{−gamma_rate}.
    pub eta_scale: f64,
    pub eta_rate: f64,
    pub gamma_scale: f64,
    pub gamma_rate: f64,
    pub loss_noise: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            horizon: 3,
            states: 8,
            actions: 4,
            dim: 4,
            feature_alpha: 0.3,
            features: Features::Linear,
            episodes: 1000,
            algorithm: Algorithm::LogBarrier,
            eta_scale: 1.0,
            eta_rate: 0.5,
            gamma_scale: 1.0,
            gamma_rate: 0.5,
            loss_noise: 0.05,
        }
    }
}

/// A layered MDP. Layer h has `sizes[h]` states; index (s, a) as s·A + a. The environment is
/// always the linear one (features `env_phi`, transitions Σ_i φ_i μ_i, losses φᵀθ); `phi` is
/// what the learner sees — the same features, or one-hot ones for the tabular control, which can
/// represent any Q and make every estimate ≥ 0.
pub struct Mdp {
    pub sizes: Vec<usize>,
    pub actions: usize,
    /// The learner's feature dimension per layer.
    pub dims: Vec<usize>,
    /// The learner's features φ[h][s·A + a] ∈ R^{dims[h]}.
    pub phi: Vec<Vec<Vec<f64>>>,
    /// The environment's features, [h][s·A + a] ∈ R^d.
    pub env_phi: Vec<Vec<Vec<f64>>>,
    /// P[h][s·A + a] over the states of layer h + 1 (h < H − 1).
    pub trans: Vec<Vec<Vec<f64>>>,
    /// The two loss parameters θᴬ, θᴮ ∈ [0, 1]^d.
    pub theta: [Vec<f64>; 2],
}

impl Mdp {
    pub fn generate(cfg: &Config, rng: &mut Rng) -> Mdp {
        let h_n = cfg.horizon;
        let sizes: Vec<usize> = (0..h_n).map(|h| if h == 0 { 1 } else { cfg.states }).collect();
        let a_n = cfg.actions;
        let env_phi: Vec<Vec<Vec<f64>>> = sizes.iter().map(|&n| (0..n * a_n).map(|_| rng.dirichlet(&vec![cfg.feature_alpha; cfg.dim])).collect()).collect();
        let trans = (0..h_n.saturating_sub(1))
            .map(|h| {
                let next = sizes[h + 1];
                let mu: Vec<Vec<f64>> = (0..cfg.dim).map(|_| rng.dirichlet(&vec![1.0; next])).collect();
                env_phi[h].iter().map(|f| (0..next).map(|s2| (0..cfg.dim).map(|k| f[k] * mu[k][s2]).sum()).collect()).collect()
            })
            .collect();
        let theta = [(0..cfg.dim).map(|_| rng.uniform()).collect(), (0..cfg.dim).map(|_| rng.uniform()).collect()];
        let (phi, dims) = match cfg.features {
            Features::Linear => (env_phi.clone(), vec![cfg.dim; h_n]),
            Features::Tabular => (
                sizes.iter().map(|&n| (0..n * a_n).map(|i| (0..n * a_n).map(|j| if i == j { 1.0 } else { 0.0 }).collect()).collect()).collect(),
                sizes.iter().map(|&n| n * a_n).collect(),
            ),
        };
        Mdp { sizes, actions: a_n, dims, phi, env_phi, trans, theta }
    }

    pub fn horizon(&self) -> usize {
        self.sizes.len()
    }

    /// Which loss parameter episode k (1-based) uses: θᴬ on [2ʲ, 2ʲ⁺¹) for even j, θᴮ for odd.
    pub fn block(k: usize) -> usize {
        (usize::BITS - 1 - k.max(1).leading_zeros()) as usize % 2
    }

    /// Episode k's losses: θ_k = clamp(θ^{block(k)} + U[−noise, noise], 0, 1) per coordinate and
    /// layer, ℓ_h(s, a) = φ(s, a)ᵀθ_{k,h} — in [0, 1] because φ is on the simplex, and linear, so
    /// Q^π stays linear in φ.
    pub fn episode_losses(&self, k: usize, noise: f64, rng: &mut Rng) -> Losses {
        let base = &self.theta[Self::block(k)];
        (0..self.horizon())
            .map(|h| {
                let th: Vec<f64> = base.iter().map(|t| (t + noise * (2.0 * rng.uniform() - 1.0)).clamp(0.0, 1.0)).collect();
                self.env_phi[h].iter().map(|f| f.iter().zip(&th).map(|(a, b)| a * b).sum()).collect()
            })
            .collect()
    }

    /// The noiseless loss φ(s, a)ᵀθ of layer h under parameter `which`.
    pub fn mean_loss(&self, h: usize, sa: usize, which: usize) -> f64 {
        self.env_phi[h][sa].iter().zip(&self.theta[which]).map(|(f, t)| f * t).sum()
    }
}

/// Losses ℓ[h][s·A + a].
pub type Losses = Vec<Vec<f64>>;

/// A policy π[h][s][a].
pub type Policy = Vec<Vec<Vec<f64>>>;

/// V^π(s₁) of `losses` by backward induction; also returns Q^π[h][s·A + a].
pub fn evaluate(mdp: &Mdp, pi: &Policy, losses: &Losses) -> (f64, Vec<Vec<f64>>) {
    let h_n = mdp.horizon();
    let a_n = mdp.actions;
    let mut v_next: Vec<f64> = vec![];
    let mut q_all = vec![vec![]; h_n];
    for h in (0..h_n).rev() {
        let q: Vec<f64> = (0..mdp.sizes[h] * a_n)
            .map(|sa| losses[h][sa] + if h + 1 < h_n { mdp.trans[h][sa].iter().zip(&v_next).map(|(p, v)| p * v).sum::<f64>() } else { 0.0 })
            .collect();
        v_next = (0..mdp.sizes[h]).map(|s| (0..a_n).map(|a| pi[h][s][a] * q[s * a_n + a]).sum()).collect();
        q_all[h] = q;
    }
    (v_next[0], q_all)
}

/// min_π V^π(s₁) of `losses` by backward induction (the best fixed policy's value).
pub fn optimal_value(mdp: &Mdp, losses: &Losses) -> f64 {
    let h_n = mdp.horizon();
    let a_n = mdp.actions;
    let mut v_next: Vec<f64> = vec![];
    for h in (0..h_n).rev() {
        v_next = (0..mdp.sizes[h])
            .map(|s| {
                (0..a_n)
                    .map(|a| {
                        let sa = s * a_n + a;
                        losses[h][sa] + if h + 1 < h_n { mdp.trans[h][sa].iter().zip(&v_next).map(|(p, v)| p * v).sum::<f64>() } else { 0.0 }
                    })
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
    }
    v_next[0]
}

/// State occupancy q[h][s] of π from the start state.
pub fn occupancy(mdp: &Mdp, pi: &Policy) -> Vec<Vec<f64>> {
    let a_n = mdp.actions;
    let mut q = vec![vec![1.0]];
    for h in 0..mdp.horizon() - 1 {
        let mut next = vec![0.0; mdp.sizes[h + 1]];
        for s in 0..mdp.sizes[h] {
            for a in 0..a_n {
                let w = q[h][s] * pi[h][s][a];
                for (n, p) in next.iter_mut().zip(&mdp.trans[h][s * a_n + a]) {
                    *n += w * p;
                }
            }
        }
        q.push(next);
    }
    q
}

/// The log-barrier FTRL step argmin_p ⟨p, L⟩ + (1/η)Σ ln(1/p_a): p_a = 1/(η(L_a + λ)) with λ the
/// root of Σ p = 1 above −min L, by Newton from λ₀ = −min L + 1/η (Σ p ≥ 1 there; the root is
/// approached monotonically from the left because Σ p is convex and decreasing in λ).
pub fn log_barrier(cum: &[f64], eta: f64) -> Vec<f64> {
    let m = cum.iter().copied().fold(f64::INFINITY, f64::min);
    let l: Vec<f64> = cum.iter().map(|c| c - m).collect(); // λ' = λ + m > 0
    let mut lam = 1.0 / eta;
    for _ in 0..100 {
        let (mut f, mut df) = (-1.0, 0.0);
        for li in &l {
            let x = 1.0 / (eta * (li + lam));
            f += x;
            df -= x / (li + lam);
        }
        // Newton rises monotonically to the root; stop once Σp − 1 is at rounding level or the
        // iterate no longer increases.
        let step = f / df;
        if f.abs() <= 8.0 * f64::EPSILON * l.len() as f64 || -step <= 0.0 {
            break;
        }
        lam -= step;
    }
    let p: Vec<f64> = l.iter().map(|li| 1.0 / (eta * (li + lam))).collect();
    let total: f64 = p.iter().sum();
    p.iter().map(|x| x / total).collect()
}

/// Exponential weights p ∝ exp(−η L).
pub fn exp_weights(cum: &[f64], eta: f64) -> Vec<f64> {
    let m = cum.iter().copied().fold(f64::INFINITY, f64::min);
    let w: Vec<f64> = cum.iter().map(|c| (-eta * (c - m)).exp()).collect();
    let total: f64 = w.iter().sum();
    w.iter().map(|x| x / total).collect()
}

/// The loss estimate of layer h: θ̂ = (Σ_h + γI)⁻¹ φ(s_h, a_h) L_h, with Σ_h = E_{q_h, π}[φφᵀ].
pub fn estimate(mdp: &Mdp, pi: &Policy, occ: &[Vec<f64>], h: usize, sa: usize, cost_to_go: f64, gamma: f64) -> Result<Vec<f64>> {
    let d = mdp.dims[h];
    let a_n = mdp.actions;
    let mut cov = Mat::eye(d);
    for v in cov.a.iter_mut() {
        *v *= gamma;
    }
    for s in 0..mdp.sizes[h] {
        for a in 0..a_n {
            let w = occ[h][s] * pi[h][s][a];
            if w == 0.0 {
                continue;
            }
            let f = &mdp.phi[h][s * a_n + a];
            for i in 0..d {
                if f[i] == 0.0 {
                    continue;
                }
                for j in 0..d {
                    cov.a[i * d + j] += w * f[i] * f[j];
                }
            }
        }
    }
    let inv = cov.inverse()?;
    let f = &mdp.phi[h][sa];
    Ok((0..d).map(|i| (0..d).map(|j| inv.a[i * d + j] * f[j]).sum::<f64>() * cost_to_go).collect())
}

/// One episode's update: for each layer h, θ̂_h from the visited (s_h, a_h) and the realised
/// cost-to-go Σ_{h' ≥ h} ℓ, then Q̂ = φᵀθ̂_h added to the cumulative estimate of every state of
/// layer h (FTRL's Σ_{j ≤ k} Q̂_j). `path[h]` = (s·A + a, loss). Returns whether η·Q̂ < −1
/// anywhere (where exponential weights lose their stability guarantee).
pub fn update_estimates(mdp: &Mdp, pi: &Policy, path: &[(usize, f64)], gamma: f64, eta: f64, cum_hat: &mut [Vec<Vec<f64>>]) -> Result<bool> {
    let a_n = mdp.actions;
    let occ = occupancy(mdp, pi);
    let mut to_go = 0.0;
    let mut blew_up = false;
    for h in (0..mdp.horizon()).rev() {
        to_go += path[h].1;
        let theta = estimate(mdp, pi, &occ, h, path[h].0, to_go, gamma)?;
        for st in 0..mdp.sizes[h] {
            for a in 0..a_n {
                let q: f64 = mdp.phi[h][st * a_n + a].iter().zip(&theta).map(|(f, t)| f * t).sum();
                blew_up |= eta * q < -1.0;
                cum_hat[h][st][a] += q;
            }
        }
    }
    Ok(blew_up)
}

impl crate::paper::Blocks for Config {}

impl crate::paper::Paper for AdversarialLinearMdp {
    const KEY: &'static str = "adversarial_linear_mdp";
    const TITLE: &'static str = "Refined Regret for Adversarial MDPs with Linear Function Approximation";
    const ARXIV: &'static str = "2301.12942";
    type Config = Config;

    fn check(c: &Config) -> Result<()> {
        if c.horizon < 1 || c.states < 1 || c.actions < 2 || c.dim < 1 || !(c.feature_alpha > 0.0) || c.episodes < 1 {
            bail!("`horizon`, `states`, `dim`, `episodes` ≥ 1, `actions` ≥ 2, `feature_alpha` > 0");
        }
        if !(c.eta_scale > 0.0 && c.eta_scale.is_finite()) || !(c.gamma_scale > 0.0 && c.gamma_scale.is_finite()) || !(0.0..=1.0).contains(&c.loss_noise) {
            bail!("`eta_scale`, `gamma_scale` finite and > 0, `loss_noise` in [0, 1]");
        }
        Ok(())
    }

    fn run(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
        // The environment and its (oblivious) losses from the seed alone, shared by every learner.
        let mut env_rng = Rng::new(ctx.seed ^ 0x3DB);
        let mdp = Mdp::generate(cfg, &mut env_rng);
        let mut loss_rng = Rng::new(ctx.seed ^ 0x1055);
        let mut rng = Rng::new(ctx.seed ^ 0xA1);
        let k_n = cfg.episodes;
        let eta = cfg.eta_scale * (k_n as f64).powf(-cfg.eta_rate);
        let gamma = cfg.gamma_scale * (k_n as f64).powf(-cfg.gamma_rate);
        let (h_n, a_n) = (mdp.horizon(), mdp.actions);
        let mut cum_hat: Vec<Vec<Vec<f64>>> = mdp.sizes.iter().map(|&n| vec![vec![0.0; a_n]; n]).collect();
        let mut cum_loss: Losses = mdp.sizes.iter().map(|&n| vec![0.0; n * a_n]).collect();
        let (mut learner, mut negative_blowups) = (0.0, 0usize);
        for k in 1..=k_n {
            let pi: Policy = cum_hat
                .iter()
                .map(|layer| {
                    layer
                        .iter()
                        .map(|c| match cfg.algorithm {
                            Algorithm::LogBarrier => log_barrier(c, eta),
                            Algorithm::ExpPo => exp_weights(c, eta),
                        })
                        .collect()
                })
                .collect();
            let losses = mdp.episode_losses(k, cfg.loss_noise, &mut loss_rng);
            learner += evaluate(&mdp, &pi, &losses).0;
            for (c, l) in cum_loss.iter_mut().zip(&losses) {
                for (ci, li) in c.iter_mut().zip(l) {
                    *ci += li;
                }
            }
            // Play π_k: bandit feedback along one trajectory.
            let mut path = Vec::with_capacity(h_n);
            let mut s = 0usize;
            for h in 0..h_n {
                let a = rng.categorical(&pi[h][s]);
                let sa = s * a_n + a;
                path.push((sa, losses[h][sa]));
                if h + 1 < h_n {
                    s = rng.categorical(&mdp.trans[h][sa]);
                }
            }
            let blew_up = update_estimates(&mdp, &pi, &path, gamma, eta, &mut cum_hat)?;
            negative_blowups += blew_up as usize;
            if k % (k_n / 10).max(1) == 0 || k == k_n {
                ctx.log(k as u64, "regret", learner - optimal_value(&mdp, &cum_loss))?;
                ctx.tick(k as u64, k_n as u64)?;
            }
        }
        let best = optimal_value(&mdp, &cum_loss);
        ctx.set_final("regret", learner - best)?;
        ctx.set_final("regret_over_sqrt_k", (learner - best) / (k_n as f64).sqrt())?;
        ctx.set_final("negative_estimate_fraction", negative_blowups as f64 / k_n as f64)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_policy(mdp: &Mdp, rng: &mut Rng) -> Policy {
        mdp.sizes.iter().map(|&n| (0..n).map(|_| rng.dirichlet(&vec![1.0; mdp.actions])).collect()).collect()
    }

    #[test]
    fn log_barrier_meets_its_kkt_conditions_and_limits() {
        let mut rng = Rng::new(3);
        for _ in 0..50 {
            let l: Vec<f64> = (0..5).map(|_| 20.0 * rng.normal()).collect();
            for eta in [0.01, 0.3, 5.0] {
                let p = log_barrier(&l, eta);
                assert!(p.iter().all(|x| *x > 0.0) && (p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
                // 1/(η p_a) − L_a is the same λ for every a
                let lams: Vec<f64> = p.iter().zip(&l).map(|(pa, la)| 1.0 / (eta * pa) - la).collect();
                assert!(lams.iter().all(|x| (x - lams[0]).abs() < 1e-7 * lams[0].abs().max(1.0)), "{lams:?}");
            }
        }
        let l = [3.0, 1.0, 2.0];
        assert!(log_barrier(&l, 1e-9).iter().all(|x| (x - 1.0 / 3.0).abs() < 1e-6));
        assert!(log_barrier(&l, 1e9)[1] > 1.0 - 1e-6);
    }

    #[test]
    fn exp_weights_ignore_a_constant_shift() {
        let a = exp_weights(&[1.0, -2.0, 0.5], 0.7);
        let b = exp_weights(&[101.0, 98.0, 100.5], 0.7);
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-12));
        assert!((a[1] / a[0] - (0.7f64 * 3.0).exp()).abs() < 1e-9);
    }

    #[test]
    fn q_of_any_policy_is_linear_in_the_features() {
        let cfg = Config::default();
        let mut rng = Rng::new(8);
        let mdp = Mdp::generate(&cfg, &mut rng);
        for h in 0..mdp.horizon() - 1 {
            for row in &mdp.trans[h] {
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
        }
        for k in [1, 2, 7, 40, 300] {
            // an episode's noisy losses: still φᵀθ_k, so Q^π stays linear
            let losses = mdp.episode_losses(k, 0.05, &mut rng);
            let pi = random_policy(&mdp, &mut rng);
            let (_, q) = evaluate(&mdp, &pi, &losses);
            // w_h = θ_h + Σ_{s'} μ(s') V_{h+1}(s'): recover it by least squares from Q and check the residual.
            for h in 0..mdp.horizon() {
                let d = mdp.dims[h];
                let mut ata = Mat::zeros(d);
                let mut atb = vec![0.0; d];
                for (sa, f) in mdp.phi[h].iter().enumerate() {
                    for i in 0..d {
                        atb[i] += f[i] * q[h][sa];
                        for j in 0..d {
                            ata.a[i * d + j] += f[i] * f[j];
                        }
                    }
                }
                let inv = ata.inverse().unwrap();
                let w: Vec<f64> = (0..d).map(|i| (0..d).map(|j| inv.a[i * d + j] * atb[j]).sum()).collect();
                let worst = mdp.phi[h].iter().enumerate().map(|(sa, f)| (f.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() - q[h][sa]).abs()).fold(0.0, f64::max);
                assert!(worst < 1e-10, "layer {h}: residual {worst}");
            }
        }
    }

    #[test]
    fn the_comparator_is_the_best_deterministic_policy() {
        let cfg = Config { horizon: 2, states: 2, actions: 2, dim: 3, ..Config::default() };
        let mut rng = Rng::new(4);
        let mdp = Mdp::generate(&cfg, &mut rng);
        let losses: Losses = (0..2).map(|h| (0..mdp.sizes[h] * 2).map(|_| rng.uniform()).collect()).collect();
        let mut best = f64::INFINITY;
        // 1 state in layer 0, 2 in layer 1: 2³ deterministic policies
        for code in 0..8usize {
            let pick = |bit: usize| if code >> bit & 1 == 1 { vec![0.0, 1.0] } else { vec![1.0, 0.0] };
            let pi: Policy = vec![vec![pick(0)], vec![pick(1), pick(2)]];
            best = best.min(evaluate(&mdp, &pi, &losses).0);
        }
        assert!((optimal_value(&mdp, &losses) - best).abs() < 1e-12);
        // and no stochastic policy beats it
        for _ in 0..20 {
            assert!(evaluate(&mdp, &random_policy(&mdp, &mut rng), &losses).0 >= best - 1e-12);
        }
    }

    /// With the exact covariance and γ = 0, θ̂ is unbiased for Q^π: through the run loop's own
    /// update, the mean of Q̂ over many episodes of a fixed random policy matches the DP's Q^π at
    /// every (s, a) of every layer, within 4 standard errors.
    #[test]
    fn the_update_is_unbiased_with_the_exact_covariance() {
        let cfg = Config { states: 4, ..Config::default() };
        let mut rng = Rng::new(12);
        let mdp = Mdp::generate(&cfg, &mut rng);
        let pi = random_policy(&mdp, &mut rng);
        let losses = mdp.episode_losses(1, 0.05, &mut rng);
        let (_, q) = evaluate(&mdp, &pi, &losses);
        let a_n = mdp.actions;
        let zero = || -> Vec<Vec<Vec<f64>>> { mdp.sizes.iter().map(|&n| vec![vec![0.0; a_n]; n]).collect() };
        let (mut sum, mut sq) = (zero(), zero());
        let n = 40_000;
        for _ in 0..n {
            let mut path = vec![];
            let mut s = 0;
            for h in 0..mdp.horizon() {
                let a = rng.categorical(&pi[h][s]);
                let sa = s * a_n + a;
                path.push((sa, losses[h][sa]));
                if h + 1 < mdp.horizon() {
                    s = rng.categorical(&mdp.trans[h][sa]);
                }
            }
            let mut one = zero();
            update_estimates(&mdp, &pi, &path, 0.0, 1.0, &mut one).unwrap();
            for h in 0..mdp.horizon() {
                for st in 0..mdp.sizes[h] {
                    for a in 0..a_n {
                        sum[h][st][a] += one[h][st][a];
                        sq[h][st][a] += one[h][st][a].powi(2);
                    }
                }
            }
        }
        for h in 0..mdp.horizon() {
            for st in 0..mdp.sizes[h] {
                for a in 0..a_n {
                    let mean = sum[h][st][a] / n as f64;
                    let se = ((sq[h][st][a] / n as f64 - mean * mean).max(0.0) / n as f64).sqrt();
                    let want = q[h][st * a_n + a];
                    assert!((mean - want).abs() < 4.0 * se + 1e-9, "layer {h} ({st}, {a}): {mean} vs {want} (SE {se})");
                }
            }
        }
    }

    #[test]
    fn blocks_double() {
        let blocks: Vec<usize> = (1..16).map(Mdp::block).collect();
        assert_eq!(blocks, vec![0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]);
        // losses in [0, 1] without clipping the loss itself, and the block's θ on average
        let cfg = Config::default();
        let mdp = Mdp::generate(&cfg, &mut Rng::new(1));
        let mut rng = Rng::new(2);
        let l = mdp.episode_losses(3, 0.05, &mut rng);
        assert!(l.iter().flatten().all(|x| (0.0..=1.0).contains(x)));
        let mut mean = 0.0;
        for _ in 0..2000 {
            mean += mdp.episode_losses(3, 0.05, &mut rng)[1][5] / 2000.0;
        }
        assert!((mean - mdp.mean_loss(1, 5, Mdp::block(3))).abs() < 0.005, "{mean}");
    }

    #[test]
    fn tabular_features_are_one_hot_and_give_nonnegative_estimates() {
        let cfg = Config { features: Features::Tabular, states: 3, ..Config::default() };
        let mut rng = Rng::new(2);
        let mdp = Mdp::generate(&cfg, &mut rng);
        let pi = random_policy(&mdp, &mut rng);
        let occ = occupancy(&mdp, &pi);
        for h in 0..mdp.horizon() {
            for sa in 0..mdp.sizes[h] * mdp.actions {
                let t = estimate(&mdp, &pi, &occ, h, sa, 1.7, 0.01).unwrap();
                assert!(t.iter().all(|x| *x >= 0.0), "{t:?}");
            }
        }
    }
}
