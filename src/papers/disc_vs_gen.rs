//! Revisiting Discriminative vs. Generative Classifiers: Theory and Implications — Zheng et al.,
//! arXiv 2302.02334.
//!
//! Naive Bayes (a generative classifier with a shared diagonal variance) reaches within ε of its
//! asymptotic error with O(log n) samples in n dimensions, logistic regression needs O(n). The
//! experiment: on the paper's Gaussian generator, the samples NB needs to come within 0.01 of the
//! Bayes error stay small as n grows while LR's grow with n, and NB wins clearly at small m.
//!
//! Following our note's reading of the official code: Gaussian NB with per-class biased variances
//! + 1e−9 pooled by the class priors (diagonal LDA: the log-det terms cancel); binary logistic
//! regression as sklearn's `LogisticRegression(C=1)` fits two classes — one weight vector,
//! ½‖w‖² + C·Σ log(1 + exp(−s_i(wᵀx_i + b))), s_i = ±1, the intercept unpenalised — here by our
//! L-BFGS in float64 to ‖∇‖∞ < 1e−8. (A two-row softmax with ½‖W‖² would be C = 2 in disguise: its
//! optimum has W = [−w/2, w/2], so the penalty is ¼‖w‖².) the "easy" generator with μ₀ = −1,
//! μ₁ = +1 (the note's calibrated K = 2 case), variance n on the first n/2 features and 1 on the
//! rest; balanced training subsets; a 10000-point test set; Bayes error Φ(−Δ/2), Δ² = Σ_j 4/σ_j².

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::context::{Rng, RunCtx};
use crate::train::lbfgs::{minimize, LbfgsOptions};

pub struct DiscVsGen;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Feature dimension n.
    pub dim: i64,
    /// Training-set sizes m (balanced; even).
    pub sizes: Vec<i64>,
    /// Random subsets per m.
    pub repeats: usize,
    pub test_size: i64,
    /// Excess error ε over the Bayes error that m* must reach.
    pub epsilon: f64,
    /// LR's inverse regularisation strength C.
    pub c: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config { dim: 16, sizes: (3..=11).map(|p| 1i64 << p).collect(), repeats: 5, test_size: 10_000, epsilon: 0.01, c: 1.0 }
    }
}

/// Per-feature standard deviations of the "easy" generator: √n on the first n/2, 1 after.
fn stds(n: i64) -> Vec<f64> {
    (0..n).map(|j| if j < n / 2 { (n as f64).sqrt() } else { 1.0 }).collect()
}

/// `m` balanced samples (half per class), features [m, n] f64, labels 0/1.
fn sample(n: i64, m: i64, rng: &mut Rng) -> (Tensor, Tensor) {
    let s = stds(n);
    let mut x = Vec::with_capacity((m * n) as usize);
    let mut y = Vec::with_capacity(m as usize);
    for i in 0..m {
        let class = i % 2;
        let mu = if class == 0 { -1.0 } else { 1.0 };
        x.extend((0..n as usize).map(|j| mu + s[j] * rng.normal()));
        y.push(class);
    }
    (Tensor::from_slice(&x).view([m, n]), Tensor::from_slice(&y))
}

/// The Bayes error Φ(−Δ/2) with Δ² = Σ_j (μ₁ − μ₀)²/σ_j² = Σ_j 4/σ_j².
pub fn bayes_error(n: i64) -> f64 {
    let delta = stds(n).iter().map(|s| 4.0 / (s * s)).sum::<f64>().sqrt();
    statrs_phi(-delta / 2.0)
}

fn statrs_phi(z: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, Normal};
    Normal::new(0.0, 1.0).expect("normal").cdf(z)
}

/// Gaussian NB with a pooled diagonal variance: (log priors, means [K, n], variance [n]).
pub fn fit_nb(x: &Tensor, y: &Tensor, classes: i64) -> (Tensor, Tensor, Tensor) {
    let m = x.size()[0] as f64;
    let (mut priors, mut means, mut pooled) = (vec![], vec![], x.get(0).zeros_like());
    for k in 0..classes {
        let rows = x.index_select(0, &y.eq(k).nonzero().squeeze_dim(1));
        let mk = rows.size()[0] as f64;
        let mu = rows.mean_dim(0, false, Kind::Double);
        let var = (&rows - &mu).square().mean_dim(0, false, Kind::Double) + 1e-9;
        pooled = pooled + var * (mk / m);
        priors.push((mk / m).ln());
        means.push(mu);
    }
    (Tensor::from_slice(&priors).to_device(x.device()), Tensor::stack(&means, 0), pooled)
}

pub fn predict_nb(nb: &(Tensor, Tensor, Tensor), x: &Tensor) -> Tensor {
    let (log_prior, means, var) = nb;
    let d = (x.unsqueeze(1) - means.unsqueeze(0)).square() / var; // [N, K, n]
    (log_prior.unsqueeze(0) - d.sum_dim_intlist([2].as_slice(), false, Kind::Double) * 0.5).argmax(1, false)
}

/// Binary L2 logistic regression, labels 0/1: minimises ½‖w‖² + C·Σ_i log(1 + exp(−s_i(wᵀx_i + b)))
/// with s_i = 2y_i − 1 and b unpenalised; returns (w [n], b, ‖∇‖∞ at the end).
pub fn fit_lr(x: &Tensor, y: &Tensor, c: f64) -> Result<(Tensor, f64, f64)> {
    let n = x.size()[1];
    let signs = y.to_kind(Kind::Double) * 2.0 - 1.0;
    let objective = |p: &Tensor| -> Result<(f64, Tensor)> {
        let p = p.detach().set_requires_grad(true);
        let (w, b) = (p.narrow(0, 0, n), p.narrow(0, n, 1));
        let margins = (x.mv(&w) + &b) * &signs;
        // log(1 + e^{−t}) = softplus(−t), stable for large |t|.
        let loss = (-margins).softplus().sum(Kind::Double);
        let obj = w.square().sum(Kind::Double) * 0.5 + loss * c;
        let g = Tensor::run_backward(&[&obj], &[&p], false, false).remove(0);
        Ok((f64::try_from(&obj)?, g))
    };
    let opts = LbfgsOptions { max_iter: 2000, gtol: 1e-8, ftol: 0.0, ..Default::default() };
    let res = minimize(objective, Tensor::zeros([n + 1], (Kind::Double, x.device())), opts)?;
    let b = res.x.double_value(&[n]);
    Ok((res.x.narrow(0, 0, n).copy(), b, res.grad_inf))
}

/// The logistic-regression decision: class 1 where wᵀx + b > 0.
pub fn predict_lr(w: &Tensor, b: f64, x: &Tensor) -> Tensor {
    (x.mv(w) + b).gt(0.0).to_kind(Kind::Int64)
}

fn error(pred: &Tensor, y: &Tensor) -> f64 {
    f64::try_from(pred.ne_tensor(y).to_kind(Kind::Double).mean(Kind::Double)).expect("scalar")
}

/// No shared blocks: every key is the paper's own.
impl crate::paper::Blocks for Config {}

impl crate::paper::Paper for DiscVsGen {
    const KEY: &'static str = "disc_vs_gen";
    const TITLE: &'static str = "Revisiting Discriminative vs. Generative Classifiers: Theory and Implications";
    const ARXIV: &'static str = "2302.02334";
    type Config = Config;

    fn check(c: &Config) -> Result<()> {
        if c.dim < 2 || c.dim % 2 != 0 || c.sizes.is_empty() || c.sizes.iter().any(|m| *m < 4 || m % 2 != 0) || c.repeats == 0 || c.test_size < 2 || !(c.c > 0.0) {
            bail!("`dim` even ≥ 2, `sizes` even ≥ 4, `repeats` ≥ 1, `test_size` ≥ 2, `c` > 0");
        }
        Ok(())
    }

    fn run(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
        let mut rng = Rng::new(ctx.seed ^ 0xD15C);
        let device = ctx.device;
        let on = |(x, y): (Tensor, Tensor)| (x.to_device(device), y.to_device(device));
        let (xt, yt) = on(sample(cfg.dim, cfg.test_size, &mut rng));
        let bayes = bayes_error(cfg.dim);
        ctx.set_final("bayes_error", bayes)?;
        let beyond = 2 * cfg.sizes.iter().max().copied().unwrap_or(0);
        let (mut m_nb, mut m_lr) = (None, None);
        let mut worst_grad: f64 = 0.0;
        for (step, &m) in cfg.sizes.iter().enumerate() {
            let (mut e_nb, mut e_lr) = (0.0, 0.0);
            for _ in 0..cfg.repeats {
                let (x, y) = on(sample(cfg.dim, m, &mut rng));
                e_nb += error(&predict_nb(&fit_nb(&x, &y, 2), &xt), &yt);
                let (w, b, g) = fit_lr(&x, &y, cfg.c)?;
                worst_grad = worst_grad.max(g);
                e_lr += error(&predict_lr(&w, b, &xt), &yt);
            }
            let (e_nb, e_lr) = (e_nb / cfg.repeats as f64, e_lr / cfg.repeats as f64);
            ctx.log_all(m as u64, &[("err_nb", e_nb), ("err_lr", e_lr)])?;
            if m_nb.is_none() && e_nb <= bayes + cfg.epsilon {
                m_nb = Some(m);
            }
            if m_lr.is_none() && e_lr <= bayes + cfg.epsilon {
                m_lr = Some(m);
            }
            if m == 32 {
                ctx.set_final("err_nb_m32", e_nb)?;
                ctx.set_final("err_lr_m32", e_lr)?;
                ctx.set_final("err_gap_m32", e_lr - e_nb)?;
            }
            ctx.tick(step as u64 + 1, cfg.sizes.len() as u64)?;
        }
        // Not reached within the grid: twice the largest m (a lower bound, marked by the value).
        ctx.set_final("m_star_nb", m_nb.unwrap_or(beyond) as f64)?;
        ctx.set_final("m_star_lr", m_lr.unwrap_or(beyond) as f64)?;
        ctx.set_final("lr_max_grad_inf", worst_grad)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn nb_statistics_and_the_closed_form_decision_rule() {
        let x = Tensor::from_slice(&[0.0f64, 1.0, 2.0, 1.0, 4.0, 0.0, 1.0, 3.0, 3.0, 5.0, 5.0, 3.0]).view([6, 2]);
        let y = Tensor::from_slice(&[0i64, 0, 0, 1, 1, 1]);
        let nb = fit_nb(&x, &y, 2);
        let means = Vec::<f64>::try_from(nb.1.flatten(0, -1)).unwrap();
        assert_eq!(means, vec![2.0, 2.0 / 3.0, 3.0, 11.0 / 3.0]);
        // Biased per-class variances, pooled by the priors (½ each).
        let v0 = [8.0 / 3.0, 2.0 / 9.0];
        let v1 = [8.0 / 3.0, 8.0 / 9.0];
        let pooled = Vec::<f64>::try_from(&nb.2).unwrap();
        for j in 0..2 {
            assert!((pooled[j] - (0.5 * v0[j] + 0.5 * v1[j] + 1e-9)).abs() < 1e-12);
        }
        // K = 2: the rule is sign(wᵀx + b), w_j = (μ1j − μ0j)/v_j, b = log(π1/π0) − ½Σ(μ1j² − μ0j²)/v_j.
        let probe = Tensor::randn([50, 2], (Kind::Double, Device::Cpu)) * 3.0 + 2.0;
        let w: Vec<f64> = (0..2).map(|j| (means[2 + j] - means[j]) / pooled[j]).collect();
        let b: f64 = -0.5 * (0..2).map(|j| (means[2 + j].powi(2) - means[j].powi(2)) / pooled[j]).sum::<f64>();
        let lin = (probe.mv(&Tensor::from_slice(&w)) + b).gt(0.0).to_kind(Kind::Int64);
        assert!(bool::try_from(predict_nb(&nb, &probe).eq_tensor(&lin).all()).unwrap());
    }

    /// The optimality conditions of sklearn's binary objective, written out by hand (not through
    /// the code's autograd objective): with p_i = σ(wᵀx_i + b), the unpenalised intercept gives
    /// Σ_i (y_i − p_i) = 0 and the weights w = C·Σ_i (y_i − p_i) x_i. A wrong C (e.g. the two-row
    /// softmax's effective C = 2), a penalised bias or a wrong sign breaks one of them.
    #[test]
    fn lr_meets_sklearns_optimality_conditions() {
        let mut rng = Rng::new(1);
        let (x, y) = sample(4, 64, &mut rng);
        for c in [1.0, 0.3] {
            let (w, b, g) = fit_lr(&x, &y, c).unwrap();
            assert!(g < 1e-6, "gradient {g}");
            let resid = y.to_kind(Kind::Double) - (x.mv(&w) + b).sigmoid();
            let bias_cond = resid.sum(Kind::Double).double_value(&[]);
            assert!(bias_cond.abs() < 1e-6, "C {c}: Σ(y − p) = {bias_cond}");
            let w_hat = x.transpose(0, 1).mv(&resid) * c;
            let err = (&w_hat - &w).abs().max().double_value(&[]);
            let scale = w.abs().max().double_value(&[]);
            assert!(scale > 0.05 && err < 1e-6, "C {c}: w {w:?} vs C·Σ(y − p)x {w_hat:?}");
            // The decision is the sign of the score.
            let pred = predict_lr(&w, b, &x);
            assert!(bool::try_from(pred.eq_tensor(&(x.mv(&w) + b).gt(0.0).to_kind(Kind::Int64)).all()).unwrap());
        }
    }

    #[test]
    fn bayes_error_matches_the_formula() {
        let mut rng = Rng::new(1);
        // n = 2: Δ² = 4(1/2 + 1) = 6, Φ(−√6/2) = 0.1103.
        assert!((bayes_error(2) - 0.1103).abs() < 1e-4);
        // Plugging in the true parameters, NB's error on a large sample is the Bayes error.
        let (xt, yt) = sample(2, 40_000, &mut rng);
        let truth = (Tensor::from_slice(&[0.0f64, 0.0]), Tensor::from_slice(&[-1.0f64, -1.0, 1.0, 1.0]).view([2, 2]), Tensor::from_slice(&[2.0f64, 1.0]));
        let e = error(&predict_nb(&truth, &xt), &yt);
        assert!((e - 0.1103).abs() < 0.01, "{e}");
    }
}
