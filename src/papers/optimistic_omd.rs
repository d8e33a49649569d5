//! Optimistic Online Mirror Descent for Bridging Stochastic and Adversarial Online Convex
//! Optimization — Chen, Zhang, Zhao & Zhou, arXiv 2302.04552.
//!
//! Optimistic OMD plays x_t = Π(x̂_t − η_t M_t) with the hint M_t = g_{t−1}, then updates
//! x̂_{t+1} = Π(x̂_t − η_t g_t); with adaptive η_t = D/√(δ + Σ_{s<t} ‖g_s − M_s‖²) its expected
//! regret is O(√σ²_{1:T} + √Σ²_{1:T}) in the stochastically-extended adversarial model (σ²: noise,
//! Σ²: drift of the mean loss). The experiment: linear losses on the unit ball; OOMD's regret
//! divided by (√σ² + √Σ² + 1) stays bounded across a grid of noise levels and drift periods, and
//! without noise or drift its regret is O(1) while OGD's grows like √T.
//!
//! Following our note (part (A); no official code): f_t(x) = ⟨c_t + ξ_t, x⟩ on the unit ball
//! (D = 2), ξ_t ~ N(0, s²/d·I), c_t = G·u_{⌊t/P⌋} with random unit u_j; δ = 1; OGD is the same
//! adaptive step without the hint (M_t = 0). Regret is exact: Σ_t ⟨g_t, x_t⟩ + ‖Σ_t g_t‖, and
//! σ²_{1:T}, Σ²_{1:T} are the realised Σ‖ξ_t‖² and Σ‖c_t − c_{t−1}‖². A plain online loop in f64
//! (d = 10 needs no tensors).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::context::{Rng, RunCtx};

pub struct OptimisticOmd;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    Oomd,
    Ogd,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub algorithm: Algorithm,
    pub dim: usize,
    pub rounds: u64,
    /// Noise level s (σ_t² = s²).
    pub noise: f64,
    /// Rounds between switches of the mean direction (0: never switch).
    pub period: u64,
    /// Scale G of the mean loss vector.
    pub scale: f64,
    pub delta: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config { algorithm: Algorithm::Oomd, dim: 10, rounds: 10_000, noise: 0.0, period: 0, scale: 1.0, delta: 1.0 }
    }
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Euclidean projection onto the unit ball.
pub fn project_ball(v: &mut [f64]) {
    let n = norm(v);
    if n > 1.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

fn unit(rng: &mut Rng, d: usize) -> Vec<f64> {
    let mut v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
    let n = norm(&v).max(1e-300);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// Runs the online game; returns (regret, σ²_{1:T}, Σ²_{1:T}).
pub fn play(cfg: &Config, rng: &mut Rng) -> (f64, f64, f64) {
    let d = cfg.dim;
    let diameter = 2.0;
    let (mut x_hat, mut hint) = (vec![0.0; d], vec![0.0; d]);
    let (mut loss, mut sum_sq) = (0.0, 0.0);
    let mut sum_g = vec![0.0; d];
    let (mut sigma2, mut drift2) = (0.0, 0.0);
    let mut mean = unit(rng, d).iter().map(|u| u * cfg.scale).collect::<Vec<f64>>();
    let mut previous_mean = mean.clone();
    for t in 0..cfg.rounds {
        if cfg.period > 0 && t > 0 && t % cfg.period == 0 {
            mean = unit(rng, d).iter().map(|u| u * cfg.scale).collect();
        }
        if t > 0 {
            drift2 += mean.iter().zip(&previous_mean).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
        }
        previous_mean = mean.clone();
        let eta = diameter / (cfg.delta + sum_sq).sqrt();
        let m: &[f64] = if cfg.algorithm == Algorithm::Oomd { &hint } else { &[] };
        let mut x: Vec<f64> = (0..d).map(|i| x_hat[i] - eta * m.get(i).copied().unwrap_or(0.0)).collect();
        project_ball(&mut x);
        let noise: Vec<f64> = (0..d).map(|_| rng.normal() * cfg.noise / (d as f64).sqrt()).collect();
        sigma2 += noise.iter().map(|v| v * v).sum::<f64>();
        let g: Vec<f64> = (0..d).map(|i| mean[i] + noise[i]).collect();
        loss += g.iter().zip(&x).map(|(a, b)| a * b).sum::<f64>();
        sum_sq += (0..d).map(|i| (g[i] - m.get(i).copied().unwrap_or(0.0)).powi(2)).sum::<f64>();
        for i in 0..d {
            x_hat[i] -= eta * g[i];
            sum_g[i] += g[i];
        }
        project_ball(&mut x_hat);
        hint = g;
    }
    // min over the ball of ⟨Σg, x⟩ is −‖Σg‖.
    (loss + norm(&sum_g), sigma2, drift2)
}

impl super::Paper for OptimisticOmd {
    const KEY: &'static str = "optimistic_omd";
    const TITLE: &'static str = "Optimistic Online Mirror Descent for Bridging Stochastic and Adversarial Online Convex Optimization";
    const ARXIV: &'static str = "2302.04552";
    type Config = Config;

    fn check(c: &Config) -> Result<()> {
        if c.dim == 0 || c.rounds == 0 || c.noise < 0.0 || !(c.scale >= 0.0) || !(c.delta > 0.0) {
            bail!("`dim`, `rounds` ≥ 1; `noise`, `scale` ≥ 0; `delta` > 0");
        }
        Ok(())
    }

    fn run(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
        let mut rng = Rng::new(ctx.seed ^ 0x0C0);
        let (regret, sigma2, drift2) = play(cfg, &mut rng);
        ctx.tick(1, 1)?;
        ctx.log_all(cfg.rounds, &[
            ("regret", regret),
            ("sigma2_cum", sigma2),
            ("drift2_cum", drift2),
            ("regret_ratio", regret / (sigma2.sqrt() + drift2.sqrt() + 1.0)),
            ("regret_over_sqrt_t", regret / (cfg.rounds as f64).sqrt()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regret_of_a_known_sequence_and_the_optimism_limit() {
        // A constant loss vector and no noise: the optimistic hint is exact from round 2, so OOMD
        // pays O(1). On the ball OGD also reaches the boundary optimum −c/‖c‖ in a few steps and
        // stays there (the projection pins it), so its regret is O(1) too in this instance.
        let cfg = Config { rounds: 4000, ..Config::default() };
        let (r_oomd, s2, d2) = play(&cfg, &mut Rng::new(1));
        assert_eq!((s2, d2), (0.0, 0.0));
        let (r_ogd, _, _) = play(&Config { algorithm: Algorithm::Ogd, ..cfg.clone() }, &mut Rng::new(1));
        assert!(r_oomd < 5.0 && r_ogd < 5.0, "{r_oomd} {r_ogd}");
        let (r_long, _, _) = play(&Config { rounds: 16000, ..cfg.clone() }, &mut Rng::new(1));
        assert!((r_long - r_oomd).abs() < 0.5, "O(1): {r_oomd} → {r_long}");
        // With noise, OGD's regret grows with T.
        let noisy = Config { algorithm: Algorithm::Ogd, noise: 1.0, ..cfg.clone() };
        let (a, _, _) = play(&Config { rounds: 1000, ..noisy.clone() }, &mut Rng::new(4));
        let (b, _, _) = play(&Config { rounds: 16000, ..noisy }, &mut Rng::new(4));
        assert!(b > 2.0 * a, "{a} → {b}");
    }

    #[test]
    fn projection_and_drift_bookkeeping() {
        let mut v = vec![3.0, 4.0];
        project_ball(&mut v);
        assert!((norm(&v) - 1.0).abs() < 1e-15 && (v[0] - 0.6).abs() < 1e-15);
        let mut inside = vec![0.3, 0.4];
        project_ball(&mut inside);
        assert_eq!(inside, vec![0.3, 0.4]);
        // With P = 10 over 100 rounds there are 9 switches of unit vectors: Σ² ≈ 9·2.
        let (_, _, d2) = play(&Config { rounds: 100, period: 10, dim: 50, ..Config::default() }, &mut Rng::new(3));
        assert!((d2 - 18.0).abs() < 6.0, "{d2}");
    }
}
