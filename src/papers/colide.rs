//! CoLiDE: Concomitant Linear DAG Estimation — Saboksayr, Mateos & Tepper, arXiv 2310.02895.
//!
//! CoLiDE learns a linear SEM's DAG with DAGMA's log-det acyclicity and central path, but scores W
//! with a concomitant (scaled-lasso) objective that estimates the noise scale σ jointly, so that
//! the ℓ1 weight λ need not follow the noise level. The experiments: on d = 20 ER2 graphs, the SHD
//! of CoLiDE against DAGMA's with the same λ, path and threshold — across equal noise variances
//! (CoLiDE-EV stays put, DAGMA drifts) and under unequal ones (CoLiDE-NV).
//!
//! Checked against the official `model.py` (SAMiatto/colide): scores (EV) ½tr((I−W)ᵀĈ(I−W))/σ +
//! ½dσ and (NV) ½[tr(Σ⁻¹(I−W)ᵀĈ(I−W)) + tr Σ], gradients −Ĉ(I−W)/σ and −Ĉ(I−W)Σ⁻¹, σ reset to
//! its closed form after every step (not a gradient variable), F = μ(score + λ‖W‖₁) + h_s; Adam
//! with β₁ 0.99, β₂ 0.999, ε 1e−8, moments reset per stage; the feasibility guard (any entry of
//! (sI − W∘W)⁻¹ + 1e−16 below −1e−6: on the first iteration or with s ≤ 0.9 abort the stage, halve
//! lr and add 0.1 to s; else undo the step, halve lr, and retry), the relative-change test every
//! 1000 iterations, W₀ = 0, σ₀ = min_j ‖X_j‖/√n (EV) or ‖X_j‖/√n (NV), X column-centred. Defaults
//! from the note's `main.py`: λ 0.05, T 4, s [1, .9, .8, .7], μ 1 → ×0.1, lr 3e−4, 2·10⁴ warm
//! and 7·10⁴ final iterations, threshold 0.3 then `to_dag`. DAGMA is the same solver with the
//! least-squares score ½tr((I−W)ᵀĈ(I−W)) = ‖X − XW‖²/(2n), the note's cleanest ablation.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::context::{Rng, RunCtx};
use crate::data::sem::{random_dag, sample_with, Graph, NoiseDist};
use crate::numerics::dag::{acyclicity, count_accuracy, is_dag, to_dag};
use crate::numerics::dense::Mat;

pub struct Colide;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Concomitant score with one noise scale σ.
    ColideEv,
    /// Concomitant score with one σ_j per node.
    ColideNv,
    /// DAGMA: the least-squares score, no σ.
    Dagma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Noise {
    /// Every node's noise variance is `variance`.
    Ev,
    /// Each node's variance drawn from U[nv_low, nv_high].
    Nv,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub method: Method,
    pub d: usize,
    /// er (Erdős–Rényi, the default) or sf (scale-free).
    pub graph: Graph,
    /// Expected number of edges (2d: "ER2"/"SF2").
    pub edges: f64,
    /// If set, the expected edges are this many per node (ERk: k·d), overriding `edges` — for
    /// sweeps over d.
    pub edges_per_node: Option<f64>,
    pub n: usize,
    pub noise: Noise,
    /// gaussian (default), exponential, gumbel or uniform. `variance`, `nv_low`, `nv_high` set the
    /// square of the distribution's scale (its variance only for Gaussian and exponential noise),
    /// as the official `simulate_linear_sem` takes numpy scales.
    pub noise_type: NoiseDist,
    pub variance: f64,
    pub nv_low: f64,
    pub nv_high: f64,
    /// ℓ1 weight λ.
    pub lambda: f64,
    /// Outer stages T, with `s[t]` (the last repeated if T is longer).
    pub stages: usize,
    pub s: Vec<f64>,
    pub mu_init: f64,
    pub mu_factor: f64,
    pub lr: f64,
    pub warm_iter: usize,
    pub max_iter: usize,
    pub checkpoint: usize,
    pub tol: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Edges with |w| ≤ threshold are dropped before `to_dag`.
    pub threshold: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            method: Method::ColideEv,
            d: 20,
            graph: Graph::Er,
            edges: 40.0,
            edges_per_node: None,
            n: 1000,
            noise: Noise::Ev,
            noise_type: NoiseDist::Gaussian,
            variance: 1.0,
            nv_low: 0.5,
            nv_high: 10.0,
            lambda: 0.05,
            stages: 4,
            s: vec![1.0, 0.9, 0.8, 0.7],
            mu_init: 1.0,
            mu_factor: 0.1,
            lr: 3e-4,
            warm_iter: 20_000,
            max_iter: 70_000,
            checkpoint: 1000,
            tol: 1e-6,
            beta1: 0.99,
            beta2: 0.999,
            threshold: 0.3,
        }
    }
}

/// The data's sample covariance Ĉ = XᵀX/n of the column-centred X, and ‖X_j‖/√n per column.
pub fn covariance(x: &[f64], n: usize, d: usize) -> (Mat, Vec<f64>) {
    let mean: Vec<f64> = (0..d).map(|j| (0..n).map(|r| x[r * d + j]).sum::<f64>() / n as f64).collect();
    let mut c = Mat::zeros(d);
    for r in 0..n {
        let row: Vec<f64> = (0..d).map(|j| x[r * d + j] - mean[j]).collect();
        for i in 0..d {
            for j in 0..d {
                c.a[i * d + j] += row[i] * row[j];
            }
        }
    }
    c.a.iter_mut().for_each(|v| *v /= n as f64);
    let scale = (0..d).map(|j| c.at(j, j).sqrt()).collect();
    (c, scale)
}

/// A score of W given Ĉ: its value, its gradient in W, and the closed-form noise scales.
pub struct Score<'a> {
    pub method: Method,
    pub cov: &'a Mat,
}

impl Score<'_> {
    /// Ĉ(I − W) and the column residual variances diag((I−W)ᵀĈ(I−W)).
    fn residuals(&self, w: &Mat) -> (Mat, Vec<f64>) {
        let d = w.d;
        let mut dif = Mat::eye(d);
        dif.a.iter_mut().zip(&w.a).for_each(|(a, b)| *a -= b);
        let rhs = self.cov.matmul(&dif);
        let col: Vec<f64> = (0..d).map(|j| (0..d).map(|i| dif.at(i, j) * rhs.at(i, j)).sum()).collect();
        (rhs, col)
    }

    /// The σ (one per node; all equal for EV) that minimises the score at W.
    pub fn sigma(&self, w: &Mat) -> Vec<f64> {
        let (_, col) = self.residuals(w);
        match self.method {
            Method::ColideEv => vec![(col.iter().sum::<f64>() / w.d as f64).sqrt(); w.d],
            Method::ColideNv => col.iter().map(|v| v.sqrt()).collect(),
            Method::Dagma => vec![1.0; w.d],
        }
    }

    /// (score, ∇_W score) at W and σ.
    pub fn value_grad(&self, w: &Mat, sigma: &[f64]) -> (f64, Mat) {
        let d = w.d;
        let (rhs, col) = self.residuals(w);
        let (value, col_scale): (f64, Vec<f64>) = match self.method {
            Method::ColideEv => (0.5 * col.iter().sum::<f64>() / sigma[0] + 0.5 * sigma[0] * d as f64, vec![1.0 / sigma[0]; d]),
            Method::ColideNv => (0.5 * (col.iter().zip(sigma).map(|(c, s)| c / s).sum::<f64>() + sigma.iter().sum::<f64>()), sigma.iter().map(|s| 1.0 / s).collect()),
            Method::Dagma => (0.5 * col.iter().sum::<f64>(), vec![1.0; d]),
        };
        let mut grad = Mat::zeros(d);
        for i in 0..d {
            for j in 0..d {
                grad.a[i * d + j] = -rhs.at(i, j) * col_scale[j];
            }
        }
        (value, grad)
    }
}

/// One stage's outcome: Some((W, σ, iterations)) or None when the guard aborted it.
fn minimize(cfg: &Config, score: &Score, w0: &Mat, sigma0: &[f64], mu: f64, max_iter: usize, s: f64, lr0: f64) -> Result<Option<(Mat, Vec<f64>, usize)>> {
    let d = w0.d;
    let (mut w, mut sigma, mut lr) = (w0.clone(), sigma0.to_vec(), lr0);
    let (mut m1, mut m2) = (vec![0.0; d * d], vec![0.0; d * d]);
    let mut step = vec![0.0; d * d];
    let mut obj_prev = 1e16;
    let outside = |m: &Mat| m.a.iter().any(|v| v + 1e-16 < -1e-6);
    let objective = |w: &Mat, sigma: &[f64]| -> Result<f64> {
        let (sc, _) = score.value_grad(w, sigma);
        let l1: f64 = w.a.iter().map(|v| v.abs()).sum();
        Ok(mu * (sc + cfg.lambda * l1) + acyclicity(w, s)?.0)
    };
    for iter in 1..=max_iter {
        let (_, mut grad_h, mut m) = acyclicity(&w, s)?;
        while outside(&m) {
            if iter == 1 || s <= 0.9 {
                return Ok(None);
            }
            // Undo the last step, halve lr, redo it.
            w.a.iter_mut().zip(&step).for_each(|(x, g)| *x += lr * g);
            lr *= 0.5;
            if lr <= 1e-16 {
                return Ok(Some((w, sigma, iter)));
            }
            w.a.iter_mut().zip(&step).for_each(|(x, g)| *x -= lr * g);
            sigma = score.sigma(&w);
            (_, grad_h, m) = acyclicity(&w, s)?;
        }
        let (_, grad_s) = score.value_grad(&w, &sigma);
        let t = iter as f64;
        for k in 0..d * d {
            let g = mu * grad_s.a[k] + mu * cfg.lambda * w.a[k].signum() * f64::from(w.a[k] != 0.0) + grad_h.a[k];
            m1[k] = cfg.beta1 * m1[k] + (1.0 - cfg.beta1) * g;
            m2[k] = cfg.beta2 * m2[k] + (1.0 - cfg.beta2) * g * g;
            let (mh, vh) = (m1[k] / (1.0 - cfg.beta1.powf(t)), m2[k] / (1.0 - cfg.beta2.powf(t)));
            step[k] = mh / (vh.sqrt() + 1e-8);
            w.a[k] -= lr * step[k];
        }
        sigma = score.sigma(&w);
        if iter % cfg.checkpoint == 0 || iter == max_iter {
            let obj = objective(&w, &sigma)?;
            if ((obj_prev - obj) / obj_prev).abs() <= cfg.tol {
                return Ok(Some((w, sigma, iter)));
            }
            obj_prev = obj;
        }
    }
    Ok(Some((w, sigma, max_iter)))
}

/// The central path: T stages of `minimize` with μ shrinking and s from the schedule. Returns
/// the raw W, σ and the iterations taken.
pub fn fit(cfg: &Config, cov: &Mat, scale: &[f64], ctx: Option<&mut RunCtx>) -> Result<(Mat, Vec<f64>, usize)> {
    let d = cov.d;
    let score = Score { method: cfg.method, cov };
    let mut w = Mat::zeros(d);
    let mut sigma: Vec<f64> = match cfg.method {
        Method::ColideEv => vec![scale.iter().cloned().fold(f64::INFINITY, f64::min); d],
        Method::ColideNv => scale.to_vec(),
        Method::Dagma => vec![1.0; d],
    };
    let mut s: Vec<f64> = cfg.s.clone();
    while s.len() < cfg.stages {
        s.push(*cfg.s.last().unwrap());
    }
    let mut mu = cfg.mu_init;
    let mut total = 0;
    let mut ctx = ctx;
    for stage in 0..cfg.stages {
        let iters = if stage + 1 == cfg.stages { cfg.max_iter } else { cfg.warm_iter };
        let mut lr = cfg.lr;
        let (w_new, sigma_new, used) = loop {
            match minimize(cfg, &score, &w, &sigma, mu, iters, s[stage], lr)? {
                Some(done) => break done,
                None => {
                    lr *= 0.5;
                    s[stage] += 0.1;
                }
            }
        };
        (w, sigma) = (w_new, sigma_new);
        total += used;
        if let Some(ctx) = ctx.as_deref_mut() {
            let (h, _, _) = acyclicity(&w, s[stage])?;
            ctx.log_all((stage + 1) as u64, &[("h", h), ("iterations", used as f64), ("sigma_mean", sigma.iter().sum::<f64>() / d as f64)])?;
            ctx.tick((stage + 1) as u64, cfg.stages as u64)?;
        }
        mu *= cfg.mu_factor;
    }
    Ok((w, sigma, total))
}

impl crate::paper::Blocks for Config {}

impl crate::paper::Paper for Colide {
    const KEY: &'static str = "colide";
    const TITLE: &'static str = "CoLiDE: Concomitant Linear DAG Estimation";
    const ARXIV: &'static str = "2310.02895";
    type Config = Config;

    fn check(c: &Config) -> Result<()> {
        if c.d < 2 || c.n < 2 || c.stages == 0 || c.s.is_empty() || c.s.iter().any(|v| !(*v > 0.0)) {
            bail!("`d` ≥ 2, `n` ≥ 2, `stages` ≥ 1 and `s` a non-empty list of positive values");
        }
        if !(c.variance > 0.0 && c.nv_low > 0.0 && c.nv_high >= c.nv_low) || c.lambda < 0.0 || !(c.lr > 0.0) {
            bail!("`variance` > 0, 0 < `nv_low` ≤ `nv_high`, `lambda` ≥ 0 and `lr` > 0");
        }
        if c.checkpoint == 0 || c.warm_iter == 0 || c.max_iter == 0 || !(0.0..1.0).contains(&c.beta1) || !(0.0..1.0).contains(&c.beta2) {
            bail!("`checkpoint`, `warm_iter`, `max_iter` ≥ 1 and `beta1`, `beta2` in [0, 1)");
        }
        Ok(())
    }

    fn run(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
        let rng: &mut Rng = ctx.rng();
        let truth = random_dag(cfg.graph, cfg.d, cfg.edges_per_node.map_or(cfg.edges, |k| k * cfg.d as f64), rng);
        let variances: Vec<f64> = match cfg.noise {
            Noise::Ev => vec![cfg.variance; cfg.d],
            Noise::Nv => (0..cfg.d).map(|_| cfg.nv_low + (cfg.nv_high - cfg.nv_low) * rng.uniform()).collect(),
        };
        let scales: Vec<f64> = variances.iter().map(|v| v.sqrt()).collect();
        let x = sample_with(&truth, &scales, cfg.noise_type, cfg.n, rng);
        let (cov, scale) = covariance(&x, cfg.n, cfg.d);
        let (w, _, iterations) = fit(cfg, &cov, &scale, Some(ctx))?;
        let est = to_dag(&w, cfg.threshold);
        debug_assert!(is_dag(&est));
        let acc = count_accuracy(&est, &truth);
        ctx.set_final("shd", acc.shd as f64)?;
        ctx.set_final("tpr", acc.tpr)?;
        ctx.set_final("fdr", acc.fdr)?;
        ctx.set_final("nnz", acc.nnz as f64)?;
        ctx.set_final("true_edges", truth.a.iter().filter(|v| **v != 0.0).count() as f64)?;
        ctx.set_final("total_iterations", iterations as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::sem::{er_dag, sample};

    fn problem(seed: u64, d: usize, n: usize) -> (Mat, Mat, Vec<f64>, Vec<f64>) {
        let mut rng = Rng::new(seed);
        let truth = er_dag(d, d as f64, &mut rng);
        let x = sample(&truth, &vec![1.0; d], n, &mut rng);
        let (cov, scale) = covariance(&x, n, d);
        (truth, cov, scale, x)
    }

    #[test]
    fn the_closed_form_sigma_minimises_the_score_and_profiles_to_the_square_root_lasso() {
        let (_, cov, _, x) = problem(0, 6, 400);
        let mut rng = Rng::new(9);
        let w = Mat::from_rows(6, (0..36).map(|_| 0.1 * rng.normal()).collect());
        for method in [Method::ColideEv, Method::ColideNv] {
            let score = Score { method, cov: &cov };
            let sigma = score.sigma(&w);
            let best = score.value_grad(&w, &sigma).0;
            for f in [0.9, 1.1] {
                let moved: Vec<f64> = sigma.iter().map(|s| s * f).collect();
                assert!(score.value_grad(&w, &moved).0 > best);
            }
            if method == Method::ColideEv {
                // √(d/n)·‖X − XW‖_F on the centred data.
                let n = 400;
                let mean: Vec<f64> = (0..6).map(|j| (0..n).map(|r| x[r * 6 + j]).sum::<f64>() / n as f64).collect();
                let mut frob = 0.0;
                for r in 0..n {
                    for j in 0..6 {
                        let pred: f64 = (0..6).map(|i| (x[r * 6 + i] - mean[i]) * w.at(i, j)).sum();
                        frob += (x[r * 6 + j] - mean[j] - pred).powi(2);
                    }
                }
                assert!((best - (6.0 / n as f64).sqrt() * frob.sqrt()).abs() < 1e-9, "{best}");
            }
        }
    }

    #[test]
    fn score_gradients_match_finite_differences() {
        let (_, cov, _, _) = problem(1, 5, 300);
        let mut rng = Rng::new(2);
        let w = Mat::from_rows(5, (0..25).map(|_| 0.2 * rng.normal()).collect());
        for method in [Method::ColideEv, Method::ColideNv, Method::Dagma] {
            let score = Score { method, cov: &cov };
            let sigma: Vec<f64> = (0..5).map(|j| 0.5 + 0.1 * j as f64).collect();
            let sigma = if method == Method::ColideEv { vec![0.7; 5] } else { sigma };
            let (_, g) = score.value_grad(&w, &sigma);
            for k in 0..25 {
                let (mut up, mut down) = (w.clone(), w.clone());
                up.a[k] += 1e-6;
                down.a[k] -= 1e-6;
                let fd = (score.value_grad(&up, &sigma).0 - score.value_grad(&down, &sigma).0) / 2e-6;
                assert!((fd - g.a[k]).abs() < 1e-6, "{method:?} entry {k}: {fd} vs {}", g.a[k]);
            }
        }
    }

    #[test]
    fn scaling_the_data_acts_as_lambda_over_c_for_colide_and_over_c_squared_for_dagma() {
        // S(W, cσ; cX) = c·S(W, σ; X) for the smooth part of CoLiDE; DAGMA's scales by c².
        let (_, cov, _, _) = problem(3, 4, 200);
        let c = 3.0;
        let scaled = Mat { d: 4, a: cov.a.iter().map(|v| v * c * c).collect() };
        let mut rng = Rng::new(4);
        let w = Mat::from_rows(4, (0..16).map(|_| 0.2 * rng.normal()).collect());
        let sigma = vec![0.8; 4];
        let csigma: Vec<f64> = sigma.iter().map(|s| s * c).collect();
        for method in [Method::ColideEv, Method::ColideNv] {
            let a = Score { method, cov: &cov }.value_grad(&w, &sigma).0;
            let b = Score { method, cov: &scaled }.value_grad(&w, &csigma).0;
            assert!((b - c * a).abs() < 1e-10);
        }
        let a = Score { method: Method::Dagma, cov: &cov }.value_grad(&w, &sigma).0;
        let b = Score { method: Method::Dagma, cov: &scaled }.value_grad(&w, &sigma).0;
        assert!((b - c * c * a).abs() < 1e-10);
    }

    #[test]
    fn a_small_problem_is_recovered() {
        // d = 6, plenty of samples: the path finds the true DAG (a wrong gradient sign, a missing
        // acyclicity term or an unreset σ would not).
        let (truth, cov, scale, _) = problem(5, 6, 2000);
        for method in [Method::ColideEv, Method::Dagma] {
            let cfg = Config { method, d: 6, warm_iter: 5000, max_iter: 20000, ..Config::default() };
            let (w, _, _) = fit(&cfg, &cov, &scale, None).unwrap();
            let est = to_dag(&w, 0.3);
            assert_eq!(count_accuracy(&est, &truth).shd, 0, "{method:?}: {est:?} vs {truth:?}");
        }
        // CoLiDE-NV on the same (equal-variance) data: the graph, and every σ̂_j near the noise
        // scale 1 (its per-node scales are estimated, not assumed).
        let cfg = Config { method: Method::ColideNv, d: 6, warm_iter: 5000, max_iter: 20000, ..Config::default() };
        let (w, sigma, _) = fit(&cfg, &cov, &scale, None).unwrap();
        assert_eq!(count_accuracy(&to_dag(&w, 0.3), &truth).shd, 0);
        assert!(sigma.iter().all(|s| (s - 1.0).abs() < 0.1), "{sigma:?}");
    }
}
