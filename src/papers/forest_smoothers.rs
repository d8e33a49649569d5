//! Why do Random Forests Work? Understanding Tree Ensembles as Self-Regularizing Adaptive
//! Smoothers — Curth, Jeffares & van der Schaar, arXiv 2402.01502.
//!
//! A tree or forest predicts ŷ(x) = ŝ(x)ᵀ y_train; its effective number of parameters on inputs I
//! is p̂_I = (n/|I|) Σ_{i∈I} ‖ŝ(x_i)‖². The experiment: on the MARS additive DGP, a tree's p̂ is its
//! leaf count on training and test inputs alike, while a forest's is far lower and lower still on
//! test inputs (and the further they are from the training inputs), and the forest predicts better.
//!
//! Checked against the official code (AliciaCurth/understanding-random-forests): `src/effective_
//! parameters.py` builds each tree's S from leaf membership with bootstrap counts as weights (rows
//! renormalised to 1; out-of-bag training points weigh 0) and the forest's S as the renormalised
//! sum of its trees' (= their mean); `src/metric_utils.py` `compute_metrics_from_S` reports
//! p̂ = n_train · mean_i ‖S_i‖² on train and test rows (the note's squared-norm measure; it also
//! computes tr(S_train), which we do not use); `src/data_utils.py`: X ~ U[0,1]^d, y =
//! 0.1e^{4x₁} + 4/(1+e^{−20(x₂−0.5)}) + 3x₃ + 2x₄ + x₅ + N(0, σ²) (additive) and the
//! multiplicative 10 sin(πx₁x₂) + 20(x₃ − 0.05)² + 10x₄ + 5x₅ + ε; offset test inputs X_train +
//! U(−δ, δ)^d per coordinate. The trees are scikit-learn's kind (`models::trees`: best-first
//! `max_leaf_nodes`, weighted squared error, `max_features` per split), drawn from reglab's RNG.
//! The CPU experiment is the note's §5 (n = 500 + 500, d = 5, σ = 1, B = 100 trees with bootstrap
//! and ⌈d/3⌉ features per split); the official notebooks also use B = 50 without bootstrap.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::context::{Rng, RunCtx};
use crate::models::trees::{effective_parameters, smooth, Forest, ForestParams, Samples, TreeParams};

pub struct ForestSmoothers;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dgp {
    /// MARS additive: 0.1e^{4x₁} + 4/(1+e^{−20(x₂−½)}) + 3x₃ + 2x₄ + x₅ + ε.
    MarsAdd,
    /// MARS multiplicative: 10 sin(πx₁x₂) + 20(x₃ − 0.05)² + 10x₄ + 5x₅ + ε.
    MarsMult,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub dgp: Dgp,
    pub n_train: usize,
    pub n_test: usize,
    /// Input dimension (≥ 5; the DGP reads the first five).
    pub d: usize,
    /// Outcome noise σ.
    pub sigma: f64,
    /// Trees in the ensemble (1 with `bootstrap: false` and `max_features: d` is a single CART tree).
    pub trees: usize,
    pub bootstrap: bool,
    /// Features tried per split.
    pub max_features: usize,
    /// Leaf budget per tree (best-first growth); null grows every tree to purity.
    pub max_leaf_nodes: Option<usize>,
    /// δ of the offset inputs X_train + U(−δ, δ)^d on which `p_offset` is measured.
    pub offset: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config { dgp: Dgp::MarsAdd, n_train: 500, n_test: 500, d: 5, sigma: 1.0, trees: 100, bootstrap: true, max_features: 2, max_leaf_nodes: Some(500), offset: 0.0 }
    }
}

/// The DGP's noise-free mean at one input.
pub fn mars_mean(dgp: Dgp, x: &[f64]) -> f64 {
    match dgp {
        Dgp::MarsAdd => 0.1 * (4.0 * x[0]).exp() + 4.0 / (1.0 + (-20.0 * (x[1] - 0.5)).exp()) + 3.0 * x[2] + 2.0 * x[3] + x[4],
        Dgp::MarsMult => 10.0 * (std::f64::consts::PI * x[0] * x[1]).sin() + 20.0 * (x[2] - 0.05).powi(2) + 10.0 * x[3] + 5.0 * x[4],
    }
}

fn uniform_inputs(n: usize, d: usize, rng: &mut Rng) -> Samples {
    Samples::new(d, (0..n * d).map(|_| rng.uniform()).collect())
}

/// X + U(−δ, δ) per coordinate.
pub fn offset_inputs(x: &Samples, delta: f64, rng: &mut Rng) -> Samples {
    Samples::new(x.d, x.x.iter().map(|v| v + delta * (2.0 * rng.uniform() - 1.0)).collect())
}

fn mse(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / a.len() as f64
}

impl crate::paper::Blocks for Config {}

impl crate::paper::Paper for ForestSmoothers {
    const KEY: &'static str = "forest_smoothers";
    const TITLE: &'static str = "Why do Random Forests Work? Understanding Tree Ensembles as Self-Regularizing Adaptive Smoothers";
    const ARXIV: &'static str = "2402.01502";
    type Config = Config;

    fn check(c: &Config) -> Result<()> {
        if c.d < 5 {
            bail!("`d` must be at least 5 (the MARS DGPs read five inputs), got {}", c.d);
        }
        if c.n_train < 2 || c.n_test < 1 || c.trees == 0 {
            bail!("`n_train` ≥ 2, `n_test` ≥ 1 and `trees` ≥ 1");
        }
        if c.max_features == 0 || c.max_features > c.d {
            bail!("`max_features` must be in 1..={} (d), got {}", c.d, c.max_features);
        }
        if c.max_leaf_nodes == Some(0) || !(c.sigma >= 0.0) || !(c.offset >= 0.0) {
            bail!("`max_leaf_nodes` ≥ 1 (or null), `sigma` ≥ 0, `offset` ≥ 0");
        }
        Ok(())
    }

    fn run(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
        let (n, d) = (cfg.n_train, cfg.d);
        let rng = ctx.rng();
        let x = uniform_inputs(n, d, rng);
        let f_train: Vec<f64> = (0..n).map(|i| mars_mean(cfg.dgp, x.row(i))).collect();
        let y: Vec<f64> = f_train.iter().map(|f| f + cfg.sigma * rng.normal()).collect();
        let xt = uniform_inputs(cfg.n_test, d, rng);
        let f_test: Vec<f64> = (0..cfg.n_test).map(|i| mars_mean(cfg.dgp, xt.row(i))).collect();
        let y_test: Vec<f64> = f_test.iter().map(|f| f + cfg.sigma * rng.normal()).collect();
        let x_off = offset_inputs(&x, cfg.offset, rng);
        let params = ForestParams {
            trees: cfg.trees,
            bootstrap: cfg.bootstrap,
            tree: TreeParams { max_leaf_nodes: cfg.max_leaf_nodes, max_features: cfg.max_features },
        };
        let forest = Forest::fit(&x, &y, params, rng);

        // Smoothers grown tree by tree, so the curves show p̂ as trees are added.
        let sets = [&x, &xt, &x_off];
        let mut sums: Vec<Vec<f64>> = sets.iter().map(|s| vec![0.0; s.len() * n]).collect();
        let total = forest.trees.len();
        for (b, (tree, w)) in forest.trees.iter().zip(&forest.weights).enumerate() {
            for (set, sum) in sets.iter().zip(sums.iter_mut()) {
                tree.add_smoother(&x, w, set, 1.0, sum);
            }
            let scale = 1.0 / (b + 1) as f64;
            let last = b + 1 == total;
            if last || (b + 1) % 10 == 0 || b < 10 {
                let p: Vec<f64> = sums.iter().map(|s| effective_parameters(s, n) * scale * scale).collect();
                let s_test: Vec<f64> = sums[1].iter().map(|v| v * scale).collect();
                let pred = smooth(&s_test, &y);
                ctx.log_all((b + 1) as u64, &[("p_train", p[0]), ("p_test", p[1]), ("p_offset", p[2]), ("mse_test", mse(&pred, &y_test)), ("mse_test_true", mse(&pred, &f_test))])?;
            }
            ctx.tick((b + 1) as u64, total as u64)?;
        }
        let s_train: Vec<f64> = sums[0].iter().map(|v| v / total as f64).collect();
        let pred_train = smooth(&s_train, &y);
        let p_train = effective_parameters(&s_train, n);
        let p_test = effective_parameters(&sums[1], n) / (total * total) as f64;
        ctx.set_final("p_gap", p_train - p_test)?;
        ctx.set_final("p_test_over_train", p_test / p_train)?;
        ctx.set_final("mse_train", mse(&pred_train, &y))?;
        let leaves = forest.trees.iter().map(|t| t.n_leaves() as f64).sum::<f64>() / total as f64;
        ctx.set_final("leaves", leaves)?;
        // p̂ in units of the leaf budget: a single tree sits at 1 on training inputs.
        ctx.set_final("p_test_per_leaf", p_test / leaves)?;
        ctx.set_final("tr_s_train", (0..n).map(|i| s_train[i * n + i]).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dgps_match_the_official_formulas_at_known_points() {
        let x = [0.5, 0.5, 0.5, 0.5, 0.5];
        // 0.1e² + 4/2 + 1.5 + 1 + 0.5
        assert!((mars_mean(Dgp::MarsAdd, &x) - (0.1 * 2f64.exp() + 5.0)).abs() < 1e-12);
        // 10 sin(π/4) + 20·0.45² + 5 + 2.5
        assert!((mars_mean(Dgp::MarsMult, &x) - (10.0 * (std::f64::consts::PI / 4.0).sin() + 20.0 * 0.2025 + 7.5)).abs() < 1e-12);
    }

    #[test]
    fn at_offset_zero_the_offset_inputs_are_the_training_inputs() {
        let mut rng = Rng::new(0);
        let x = uniform_inputs(50, 5, &mut rng);
        assert_eq!(offset_inputs(&x, 0.0, &mut rng).x, x.x);
        let moved = offset_inputs(&x, 0.1, &mut rng);
        assert!(moved.x.iter().zip(&x.x).all(|(a, b)| (a - b).abs() <= 0.1) && moved.x != x.x);
    }

    #[test]
    fn a_forest_lowers_p_below_the_leaf_budget_and_test_p_below_train_p() {
        // The paper's mechanism at small size: a tree's p̂_train is its leaf count exactly; the
        // forest's is well below, and lower on fresh inputs than on the training inputs.
        let mut rng = Rng::new(3);
        let x = uniform_inputs(200, 5, &mut rng);
        let y: Vec<f64> = (0..200).map(|i| mars_mean(Dgp::MarsAdd, x.row(i)) + rng.normal()).collect();
        let xt = uniform_inputs(200, 5, &mut rng);
        let tree = Forest::fit(&x, &y, ForestParams { trees: 1, bootstrap: false, tree: TreeParams { max_leaf_nodes: Some(50), max_features: 5 } }, &mut rng);
        let forest = Forest::fit(&x, &y, ForestParams { trees: 30, bootstrap: true, tree: TreeParams { max_leaf_nodes: Some(50), max_features: 2 } }, &mut rng);
        let p = |f: &Forest, e: &Samples| effective_parameters(&f.smoother(&x, e), 200);
        assert!((p(&tree, &x) - 50.0).abs() < 1e-9);
        assert!(p(&forest, &x) < 0.6 * 50.0, "{}", p(&forest, &x));
        assert!(p(&forest, &xt) < p(&forest, &x), "{} vs {}", p(&forest, &xt), p(&forest, &x));
    }
}
