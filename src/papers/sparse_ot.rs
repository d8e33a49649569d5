//! Sparsity-Constrained Optimal Transport — Liu, Puigcerver & Blondel, arXiv 2209.15466.
//!
//! Quadratically regularised OT with at most k nonzeros per column of the plan, solved through
//! its semi-dual (or dual) with L-BFGS: k = 1 is unregularised OT's c-transform, large k is
//! quadratic OT. The experiment: the sparse plans keep ≤ k nonzeros per column while Sinkhorn's
//! are dense, and the transport cost falls toward the exact OT cost as k → 1.
//!
//! Checked against POT 0.9.7 (`ot/smooth.py`, `ot/utils.py`), the authors' contribution there:
//! the conjugates, the sparse simplex projection, the objectives in maximisation form and plan
//! recovery match (see `ot::regularized`, whose tests hold POT's numbers). POT solves with
//! scipy's L-BFGS-B from zero potentials at tol 1e-9 (as both ftol and gtol), 500 iterations;
//! our L-BFGS (`train::lbfgs`) uses the same stopping rules. Where POT errors (k > m in the
//! projection, k ≥ m in the dual) we fall back to the unconstrained quadratic case.
//! With uniform marginals a plan with ≤ k nonzeros per column and exact marginals exists only
//! if k ≥ m/n; below that `marginal_err` is large by necessity, not a bug.
//!
//! A user's own problem: `instance: npz` with `npz_path` to a file holding `a`, `b`, `C`
//! (float64). Every run writes its plan, with a, b and C, to `plan.npz` in its run directory.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::context::{Rng, RunCtx};
use crate::data::npz::read_f64_arrays;
use crate::data::DataConfig;
use crate::ot::exact::exact_cost_uniform;
use crate::ot::regularized::{dual, semi_dual, Regularizer};
use crate::ot::sinkhorn::sinkhorn_log;
use crate::ot::plan_stats;
use crate::paper::Blocks;
use crate::train::lbfgs::{minimize, LbfgsOptions};

pub struct SparseOt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Instance {
    /// m = n points: sources and targets from two different 2-D Gaussian mixtures.
    Square,
    /// m tokens from a 4-component mixture on a circle, n "experts" uniform in [−3, 3]².
    Moe,
    /// A user's problem from `npz_path` (arrays a, b, C).
    Npz,
    /// Two classes of a real dataset through the shared `data:` block: the first m training
    /// samples of its class 0 (sources) against the first n of class 1 (targets), uniform
    /// weights, squared Euclidean cost.
    Data,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    SemiDual,
    Dual,
    Sinkhorn,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub instance: Instance,
    /// For `instance: npz`: a .npz with float64 arrays a (m), b (n), C (m × n).
    pub npz_path: String,
    /// For `instance: data`: the dataset and the two classes (`classes: [a, b]`).
    pub data: DataConfig,
    /// Sources (generated instances).
    pub m: i64,
    /// Targets (generated instances; `square` uses m).
    pub n: i64,
    /// Divide C by its maximum (as the note's CPU experiment does).
    pub normalize_cost: bool,
    pub method: Method,
    /// Regularisation strength γ of Ω(t) = (γ/2)‖t‖².
    pub gamma: f64,
    /// Nonzeros allowed per column; null means no constraint (quadratic OT).
    pub k: Option<i64>,
    /// L-BFGS: iterations and the tolerance used for both ftol and gtol (POT's stopThr).
    pub max_iter: usize,
    pub tol: f64,
    pub sinkhorn_eps: f64,
    pub sinkhorn_iters: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            instance: Instance::Square,
            npz_path: String::new(),
            data: DataConfig { classes: vec![3, 8], flatten: true, ..DataConfig::default() },
            m: 50,
            n: 50,
            normalize_cost: true,
            method: Method::SemiDual,
            gamma: 0.05,
            k: None,
            max_iter: 500,
            tol: 1e-9,
            sinkhorn_eps: 0.02,
            sinkhorn_iters: 2000,
        }
    }
}

fn mixture(rng: &mut Rng, count: i64, means: &[(f64, f64)], std: f64) -> Vec<(f64, f64)> {
    (0..count)
        .map(|_| {
            let (mx, my) = means[rng.below(means.len() as u64) as usize];
            (mx + std * rng.normal(), my + std * rng.normal())
        })
        .collect()
}

fn sq_dist_cost(xs: &[(f64, f64)], ys: &[(f64, f64)], device: Device) -> Tensor {
    let flat: Vec<f64> = xs.iter().flat_map(|x| ys.iter().map(move |y| (x.0 - y.0).powi(2) + (x.1 - y.1).powi(2))).collect();
    Tensor::from_slice(&flat).view([xs.len() as i64, ys.len() as i64]).to_device(device)
}

/// The problem (a, b, C) of a run.
fn problem(cfg: &Config, ctx: &mut RunCtx) -> Result<(Tensor, Tensor, Tensor)> {
    let device = ctx.device;
    let uniform = |len: i64| Tensor::full([len], 1.0 / len as f64, (Kind::Double, device));
    let (a, b, c) = match cfg.instance {
        Instance::Square => {
            let src = mixture(ctx.rng(), cfg.m, &[(-1.0, -1.0), (1.0, 1.0)], 0.5);
            let dst = mixture(ctx.rng(), cfg.m, &[(-1.0, 1.0), (1.0, -1.0), (0.0, 0.0)], 0.5);
            (uniform(cfg.m), uniform(cfg.m), sq_dist_cost(&src, &dst, device))
        }
        Instance::Moe => {
            let circle: Vec<(f64, f64)> = (0..4).map(|q| {
                let t = q as f64 * std::f64::consts::FRAC_PI_2;
                (2.0 * t.cos(), 2.0 * t.sin())
            }).collect();
            let tokens = mixture(ctx.rng(), cfg.m, &circle, 0.5);
            let experts: Vec<(f64, f64)> = (0..cfg.n).map(|_| {
                let rng = ctx.rng();
                (6.0 * rng.uniform() - 3.0, 6.0 * rng.uniform() - 3.0)
            }).collect();
            (uniform(cfg.m), uniform(cfg.n), sq_dist_cost(&tokens, &experts, device))
        }
        Instance::Data => {
            let data = cfg.data.load_for_run(ctx)?;
            let x = data.train.x.flatten(1, -1).to_kind(Kind::Double);
            let pick = |class: i64, count: i64| -> Result<Tensor> {
                let idx = data.train.y.eq(class).nonzero().squeeze_dim(1);
                if idx.size()[0] < count {
                    bail!("`data`: class {class} has {} training samples, fewer than the {count} asked for", idx.size()[0]);
                }
                Ok(x.index_select(0, &idx.narrow(0, 0, count)))
            };
            let (src, dst) = (pick(0, cfg.m)?, pick(1, cfg.n)?);
            let c = (src.unsqueeze(1) - dst.unsqueeze(0)).square().sum_dim_intlist([2].as_slice(), false, Kind::Double);
            (uniform(cfg.m), uniform(cfg.n), c)
        }
        Instance::Npz => {
            let path = PathBuf::from(&cfg.npz_path);
            let arrays = read_f64_arrays(&path, &["a", "b", "C"], device)?;
            let (a, b, c) = (arrays["a"].shallow_clone(), arrays["b"].shallow_clone(), arrays["C"].shallow_clone());
            check_problem(&a, &b, &c).map_err(|e| anyhow::anyhow!("`{}`: {e}", path.display()))?;
            (a, b, c)
        }
    };
    let c = if cfg.normalize_cost {
        let max = f64::try_from(c.max())?;
        if max > 0.0 { c / max } else { c }
    } else {
        c
    };
    Ok((a, b, c))
}

fn check_problem(a: &Tensor, b: &Tensor, c: &Tensor) -> Result<()> {
    if a.dim() != 1 || b.dim() != 1 || c.dim() != 2 {
        bail!("expected a of shape (m,), b of shape (n,), C of shape (m, n); got {:?}, {:?}, {:?}", a.size(), b.size(), c.size());
    }
    if c.size() != [a.size()[0], b.size()[0]] {
        bail!("C has shape {:?} but a has {} and b has {} entries", c.size(), a.size()[0], b.size()[0]);
    }
    for (name, w) in [("a", a), ("b", b)] {
        let min = f64::try_from(w.min())?;
        let sum = f64::try_from(w.sum(Kind::Double))?;
        if min <= 0.0 || (sum - 1.0).abs() > 1e-6 {
            bail!("`{name}` must be positive and sum to 1 (min {min}, sum {sum})");
        }
    }
    if !bool::try_from(c.isfinite().all())? {
        bail!("`C` has non-finite entries");
    }
    Ok(())
}

impl Blocks for Config {
    fn data_block(&self) -> Option<&DataConfig> {
        (self.instance == Instance::Data).then_some(&self.data)
    }
}

impl crate::paper::Paper for SparseOt {
    const KEY: &'static str = "sparse_ot";
    const TITLE: &'static str = "Sparsity-Constrained Optimal Transport";
    const ARXIV: &'static str = "2209.15466";
    type Config = Config;

    fn check(c: &Config) -> Result<()> {
        if c.instance == Instance::Npz && c.npz_path.is_empty() {
            bail!("`instance: npz` needs `npz_path` (a .npz holding float64 arrays a, b, C)");
        }
        if c.instance == Instance::Data {
            if c.data.classes.len() != 2 {
                bail!("`instance: data` transports between two classes: set `data.classes: [a, b]`");
            }
        }
        if c.instance != Instance::Npz && (c.m < 1 || c.n < 1) {
            bail!("`m` and `n` must be at least 1");
        }
        if !(c.gamma > 0.0) || !(c.sinkhorn_eps > 0.0) || !(c.tol >= 0.0) {
            bail!("`gamma` and `sinkhorn_eps` must be positive, `tol` non-negative");
        }
        if c.k.is_some_and(|k| k < 1) {
            bail!("`k` must be at least 1 (or null for no sparsity constraint), got {:?}", c.k);
        }
        if c.method == Method::Sinkhorn && c.k.is_some() {
            bail!("`k` has no meaning for `method: sinkhorn`; set `k: null`");
        }
        Ok(())
    }

    fn run(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
        let (a, b, c) = problem(cfg, ctx)?;
        let (m, n) = (c.size()[0], c.size()[1]);
        let reg = Regularizer { gamma: cfg.gamma, k: cfg.k };
        let opts = LbfgsOptions { max_iter: cfg.max_iter, gtol: cfg.tol, ftol: cfg.tol, ..Default::default() };
        let mut evals = 0u64;
        // Progress counts objective evaluations against a nominal budget of 2 per iteration.
        let max_evals = 2 * cfg.max_iter as u64;
        let (plan, iterations, dual_value, grad_inf) = match cfg.method {
            Method::SemiDual => {
                let res = minimize(
                    |alpha| {
                        evals += 1;
                        ctx.tick(evals.min(max_evals), max_evals)?;
                        let (obj, grad, _) = semi_dual(alpha, &a, &b, &c, reg);
                        Ok((-obj, -grad))
                    },
                    a.zeros_like(),
                    opts,
                )?;
                let (obj, _, plan) = semi_dual(&res.x, &a, &b, &c, reg);
                (plan, res.iterations, obj, res.grad_inf)
            }
            Method::Dual => {
                let split = |x: &Tensor| (x.narrow(0, 0, m), x.narrow(0, m, n));
                let zeros = Tensor::zeros([m + n], (Kind::Double, ctx.device));
                let res = minimize(
                    |x| {
                        evals += 1;
                        ctx.tick(evals.min(max_evals), max_evals)?;
                        let (alpha, beta) = split(x);
                        let (obj, ga, gb, _) = dual(&alpha, &beta, &a, &b, &c, reg);
                        Ok((-obj, -Tensor::cat(&[ga, gb], 0)))
                    },
                    zeros,
                    opts,
                )?;
                let (alpha, beta) = split(&res.x);
                let (obj, _, _, plan) = dual(&alpha, &beta, &a, &b, &c, reg);
                (plan, res.iterations, obj, res.grad_inf)
            }
            Method::Sinkhorn => {
                let total = cfg.sinkhorn_iters as u64;
                let res = sinkhorn_log(&a, &b, &c, cfg.sinkhorn_eps, cfg.sinkhorn_iters, 1e-9, |k| ctx.tick(k as u64, total))?;
                (res.plan, res.iterations, f64::NAN, res.marginal_err)
            }
        };
        let stats = plan_stats(&plan, &a, &b, &c);
        let mut metrics = vec![
            ("max_nnz_col", stats.max_nnz_col),
            ("mean_nnz_col", stats.mean_nnz_col),
            ("cost", stats.cost),
            ("marginal_err", stats.marginal_err),
            ("iterations", iterations as f64),
            ("k_effective", cfg.k.map_or(m, |k| k.min(m)) as f64),
        ];
        if cfg.method != Method::Sinkhorn {
            metrics.push(("dual_value", dual_value));
            metrics.push(("grad_inf", grad_inf));
            metrics.push(("evaluations", evals as f64));
        }
        if let Some(exact) = exact_cost_uniform(&a, &b, &c) {
            metrics.push(("exact_cost", exact));
            let gap = (stats.cost - exact) / exact.abs().max(1e-300);
            metrics.push(("cost_gap_rel", gap));
            metrics.push(("cost_gap_abs", gap.abs()));
        }
        ctx.log_all(iterations as u64, &metrics)?;
        // Written beside its place and renamed, like every other output file.
        let path = ctx.dir().join("plan.npz");
        let tmp = ctx.dir().join(".plan.npz.tmp");
        let cpu = |t: &Tensor| t.to_device(Device::Cpu);
        Tensor::write_npz(&[("plan", cpu(&plan)), ("a", cpu(&a)), ("b", cpu(&b)), ("C", cpu(&c))], &tmp)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(|e| anyhow::anyhow!("cannot move {} into place: {e}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ot::regularized::semi_dual;

    fn t(v: &[f64]) -> Tensor {
        Tensor::from_slice(v)
    }

    /// The non-degenerate reference instance whose plans POT 0.9.7 gives to ~1e-8.
    fn instance() -> (Tensor, Tensor, Tensor) {
        let mut c = vec![];
        for i in 1..=5 {
            for j in 1..=4 {
                let (i, j) = (i as f64, j as f64);
                c.push((i * j * 0.37 + j * 0.61 + i * i * 0.13) % 1.0);
            }
        }
        (t(&[0.1, 0.2, 0.3, 0.25, 0.15]), t(&[0.3, 0.2, 0.4, 0.1]), t(&c).view([5, 4]))
    }

    fn solve(k: Option<i64>) -> Tensor {
        let (a, b, c) = instance();
        let reg = Regularizer { gamma: 0.5, k };
        let opts = LbfgsOptions { max_iter: 5000, gtol: 1e-12, ftol: 1e-14, ..Default::default() };
        let res = minimize(|x| { let (o, g, _) = semi_dual(x, &a, &b, &c, reg); Ok((-o, -g)) }, a.zeros_like(), opts).unwrap();
        semi_dual(&res.x, &a, &b, &c, reg).2
    }

    fn max_diff(x: &Tensor, y: &[f64]) -> f64 {
        f64::try_from((x.flatten(0, -1) - t(y)).abs().max()).unwrap()
    }

    #[test]
    fn semi_dual_plans_match_pot() {
        // k = 3 and the unconstrained case give POT's quadratic-OT plan.
        let quad = [0.05, 0.0, 0.05, 0.0, 0.0, 0.125, 0.075, 0.0, 0.0, 0.0, 0.275, 0.025, 0.25, 0.0, 0.0, 0.0, 0.0, 0.075, 0.0, 0.075];
        let q = solve(None);
        assert!(max_diff(&q, &quad) < 1e-6, "{}", format!("{:?}", Vec::<f64>::try_from(q.flatten(0, -1)).unwrap()));
        assert!(max_diff(&solve(Some(3)), &quad) < 1e-6);
        // k = 2: the semi-dual is nonsmooth and this instance has a tie at its maximiser
        // (α₁ − α₀ = C₁₂ − C₀₂), so plans may differ between solvers on the tied entry; the
        // objective may not. POT's maximum is 0.279083333 (Nelder–Mead supremum 0.279083333333).
        let (a, b, c) = instance();
        let reg = Regularizer { gamma: 0.5, k: Some(2) };
        let opts = LbfgsOptions { max_iter: 5000, gtol: 1e-12, ftol: 1e-14, ..Default::default() };
        let res = minimize(|x| { let (o, g, _) = semi_dual(x, &a, &b, &c, reg); Ok((-o, -g)) }, a.zeros_like(), opts).unwrap();
        assert!((-res.f - 0.279083333333).abs() < 1e-8, "semi-dual maximum {}", -res.f);
        let plan = solve(Some(2));
        let cols = plan.sum_dim_intlist([0].as_slice(), false, Kind::Double);
        assert!(max_diff(&cols, &[0.3, 0.2, 0.4, 0.1]) < 1e-12);
        // Away from the tied entry the plan is POT's.
        let pot = [0.0500003129756, 0.133333576704, 0.2833340591, 0.0166676358589, 0.249999687024, 0.0666664232959, 0.0833323641411];
        let v = Vec::<f64>::try_from(plan.flatten(0, -1)).unwrap();
        let ours = [v[0], v[5], v[10], v[11], v[12], v[17], v[19]];
        assert!(ours.iter().zip(pot).all(|(x, y)| (x - y).abs() < 1e-4), "{v:?}");
        assert!(f64::try_from(plan.gt(0.0).sum_dim_intlist([0].as_slice(), false, Kind::Double).max()).unwrap() <= 2.0);
        // k = 1: one nonzero per column, each column carrying exactly b_j.
        let p1 = solve(Some(1));
        assert_eq!(f64::try_from(p1.gt(0.0).sum_dim_intlist([0].as_slice(), false, Kind::Double).max()).unwrap(), 1.0);
        let cols = p1.sum_dim_intlist([0].as_slice(), false, Kind::Double);
        assert!(max_diff(&cols, &[0.3, 0.2, 0.4, 0.1]) < 1e-12);
    }

    #[test]
    fn exact_cost_and_bad_npz_problem_are_reported() {
        let (a, b, c) = instance();
        assert!(check_problem(&a, &b, &c).is_ok());
        let msg = check_problem(&a, &b, &c.narrow(1, 0, 3)).unwrap_err().to_string();
        assert!(msg.contains("C has shape"), "{msg}");
        let msg = check_problem(&(&a * 2.0), &b, &c).unwrap_err().to_string();
        assert!(msg.contains("sum to 1"), "{msg}");
    }
}
