//! Grokking as the Transition from Lazy to Rich Training Dynamics — Kumar, Bordelon, Gershman &
//! Pehlevan, arXiv 2310.06110.
//!
//! A two-layer network without a trained readout, f(x) = α·(1/N)·Σ_i φ(w_iᵀx) with φ(z) = z + (ε/2)z²,
//! learns y = (βᵀx)²/2 by full-batch GD on the centred loss mean (f − f₀ − y)². It first moves like its
//! linearisation, i.e. kernel regression with the initial NTK K₀, which cannot represent the target from
//! P ~ D samples: the train loss falls while the test loss stays at the K₀ level. Later, feature learning
//! aligns W with β and the test loss drops: grokking as a lazy-to-rich transition. The experiment (D = 40,
//! N = 200) shows that at P = 4D the test loss reaches its threshold several times later than the train loss
//! and ends far below the K₀ regression MSE, while the linearised network stays at that level. Over P the
//! three regimes appear: memorisation without generalisation (2.5D), delayed generalisation (4D), and
//! train and test falling together (6D).
//!
//! What was checked against the official code: the authors' ICLR-supplement notebook
//! `grokking-feature-timescales-anon-final.ipynb`, as reproduced in `giovana-morais/amlds_final_project`,
//! its "Figure 1" cell.
//! - Data: x ~ N(0, I_D/D), β ~ N(0, I_D), y = (βᵀx)²/2, 1000 test points. Weights W ~ N(0, 1) of shape [N, D].
//!   f = α·mean_i φ(w_iᵀx) with φ(z) = z + ½εz², ε = 0.02, α = 1. The readout `a` is in the parameter list but
//!   the function never uses it, so only W moves, and the NTK is W's.
//! - Loss: mean((f − f₀ − y)²) with f₀ the network at initialisation, the same form on train and test. The
//!   optimiser is plain SGD on the full batch with η = N/α², no weight decay, for 1e5 epochs (D 100, P 550,
//!   N 500: the defaults here).
//! - Linearised network: `nt.linearize` at initialisation, loss mean((f_lin − f₀ − y)²), the same GD. Here it
//!   runs in function space, u ← u − (2/P)(η·K₀)(u − y), and test predictions come from the summed residuals.
//!   That is exactly the parameter-space iteration (a test checks it), at P×P instead of N×D×P cost.
//! - K₀ regression: the empirical NTK at initialisation, prediction k_*ᵀK⁻¹y. The notebook solves in JAX
//!   float32 with no ridge. Here the solve is float64 with the note's 1e-8·I, on the kernel GD moves along,
//!   η·NTK = (1/N)·Σ_i φ'(w_iᵀx)φ'(w_iᵀx')·xᵀx'. That kernel is α-free, so the ridge means the same at every α.
//! - Alignment: the notebook's `kalignment`, ỹᵀK̃ỹ/(‖K̃‖_F‖ỹ‖²) with ỹ the centred y and K̃ = K minus its
//!   column means, on the test-set NTK at the current W. The notebook computes it every 100 epochs; here it
//!   runs every `align_every` epochs because a test_size² kernel is costly on a CPU.
//!
//! Differences from the notebook:
//! - The notebook draws X and W from the same PRNG key (0). Here they come from independent streams.
//! - The notebook records the network's losses after the update and the linearised losses before it. Here
//!   both are taken after the same number of updates.
//! - t_train is the first epoch with train loss < 1% of its initial value, checked every epoch. t_test is
//!   the first evaluated epoch with test loss < 10% of E[y_test²], evaluated every `eval_every` (100)
//!   epochs; the note's calibration used a 2000-epoch grid. Both thresholds are the note's; the notebook's
//!   phase diagram uses the first epochs below an absolute 0.1. A threshold not reached within the budget
//!   reads as a lower bound, the first epoch a longer run would check next: `epochs + 1` for t_train, the
//!   next evaluated epoch after `epochs` (`epochs + eval_every` when both grids divide the budget) for
//!   t_test, with `train_reached` / `test_reached` = 0. delay_ratio = t_test/t_train is then a lower bound
//!   when only the test threshold is missed.
//! - Scalar reductions that feed logged metrics (dot products, norms, matrix–vector products) are written as
//!   elementwise products reduced by ATen (`crate::reduce`, `matvec`), not BLAS, so they do not depend on the
//!   thread count.
//! - The β-alignment mean_i |w_iᵀβ|/(‖w_i‖‖β‖) is the note's metric. The Figure 1 cell declares lists for
//!   weight alignments but never fills them.
//! - The Figure 3 α/ε sweeps in the notebook scale differently (h = Wx/√D with x ~ N(0, I), y = (βᵀx/√D)²,
//!   loss/α², η = 0.5N, i.e. an effective η = 0.5N/α²). `lr_scale` covers the step; the rest is not
//!   reproduced.
//!
//! The network trains in float32 by default, like the note's numpy calibration (`float64: true` for double).
//! K₀, the linearised network and the alignments are always float64.

use std::collections::BTreeSet;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::context::{Rng, RunCtx};

pub struct GrokkingLazyRich;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Input dimension D.
    pub dim: i64,
    /// Training points P.
    pub train_size: i64,
    pub test_size: i64,
    /// Hidden width N.
    pub width: i64,
    /// Output scale α: the larger, the lazier.
    pub alpha: f64,
    /// ε in φ(z) = z + (ε/2)z².
    pub eps: f64,
    /// η = lr_scale · N/α² (1 in the notebook's Figure 1).
    pub lr_scale: f64,
    pub epochs: u64,
    /// t_train: the first epoch whose train loss is below this fraction of its initial value (checked every epoch).
    pub train_threshold: f64,
    /// t_test: the first evaluated epoch whose test loss is below this fraction of E[y_test²].
    pub test_threshold: f64,
    /// Test losses are evaluated every `eval_every` epochs, and at every logged epoch.
    pub eval_every: u64,
    /// Curves are logged every `log_every` epochs, plus a geometric grid of epochs below it (for log-x plots).
    pub log_every: u64,
    /// The NTK alignment on the test set (a test_size × test_size kernel) every `align_every` epochs.
    pub align_every: u64,
    /// Ridge added to K₀ (scale (1/N)Σφ'φ'xᵀx') in the "ridgeless" kernel-regression baseline.
    pub ridge: f64,
    /// Train the network in float64 instead of float32.
    pub float64: bool,
}

impl Default for Config {
    fn default() -> Self {
        // The notebook's Figure 1, except the evaluation and logging grids (the notebook evaluates every epoch).
        Config {
            dim: 100,
            train_size: 550,
            test_size: 1000,
            width: 500,
            alpha: 1.0,
            eps: 0.02,
            lr_scale: 1.0,
            epochs: 100_000,
            train_threshold: 0.01,
            test_threshold: 0.1,
            eval_every: 100,
            log_every: 500,
            align_every: 100,
            ridge: 1e-8,
            float64: false,
        }
    }
}

/// The Figure-1 task and the initial weights, in float64 on one device.
pub struct Problem {
    /// Training inputs [P, D], rows ~ N(0, I/D).
    pub x: Tensor,
    pub y: Tensor,
    /// Test inputs [M, D].
    pub xt: Tensor,
    pub yt: Tensor,
    /// Teacher direction β ~ N(0, I_D).
    pub beta: Tensor,
    /// Initial weights W₀ [N, D], entries N(0, 1).
    pub w0: Tensor,
}

fn gaussian(rng: &mut Rng, rows: i64, cols: i64, std: f64, device: Device) -> Tensor {
    let v: Vec<f64> = (0..rows * cols).map(|_| std * rng.normal()).collect();
    Tensor::from_slice(&v).view([rows, cols]).to_device(device)
}

/// A·v for A [M, K] and v [K], one row-wise ATen reduction per output instead of BLAS gemv, so the result
/// does not depend on the thread count.
fn matvec(a: &Tensor, v: &Tensor) -> Tensor {
    (a * v.unsqueeze(0)).sum_dim_intlist([1].as_slice(), false, a.kind())
}

/// y = (βᵀx)²/2 for the rows of `x`.
pub fn target(x: &Tensor, beta: &Tensor) -> Tensor {
    matvec(x, beta).square() * 0.5
}

impl Problem {
    /// β and the test set, the training inputs, and W₀ come from separate streams of `seed`. For one
    /// seed, then, every train_size sees the same teacher, test set and initialisation, and a smaller
    /// training set is a prefix of a larger one. The P-sweep compares like with like.
    pub fn sample(dim: i64, train: i64, test: i64, width: i64, seed: u64, device: Device) -> Problem {
        let std = 1.0 / (dim as f64).sqrt();
        let mut task = Rng::new(seed ^ 0x6B0C_7A5C_0001);
        let beta = gaussian(&mut task, 1, dim, 1.0, device).view([dim]);
        let xt = gaussian(&mut task, test, dim, std, device);
        let x = gaussian(&mut Rng::new(seed ^ 0x6B0C_7A5C_0002), train, dim, std, device);
        let w0 = gaussian(&mut Rng::new(seed ^ 0x6B0C_7A5C_0003), width, dim, 1.0, device);
        let (y, yt) = (target(&x, &beta), target(&xt, &beta));
        Problem { x, y, xt, yt, beta, w0 }
    }
}

/// φ(h) = h + (ε/2)h².
fn phi(h: &Tensor, eps: f64) -> Tensor {
    h + h.square() * (0.5 * eps)
}

/// φ'(h) = 1 + εh.
pub fn phi_prime(h: &Tensor, eps: f64) -> Tensor {
    h * eps + 1.0
}

/// f(x) = α·(1/N)·Σ_i φ(w_iᵀx) for the rows of `x` [M, D], with W [N, D]; returns [M].
pub fn forward(w: &Tensor, x: &Tensor, alpha: f64, eps: f64) -> Tensor {
    phi(&x.mm(&w.tr()), eps).mean_dim(1, false, w.kind()) * alpha
}

/// The centred residual r = f_W − f₀ − y [P] and the gradient of L = mean_μ r_μ² with respect to W [N, D]:
/// ∂L/∂W = (2α/(PN))·[φ'(XWᵀ) ⊙ r]ᵀX, sharing one forward pass.
pub fn centred_residual_and_grad(w: &Tensor, x: &Tensor, y: &Tensor, f0: &Tensor, alpha: f64, eps: f64) -> (Tensor, Tensor) {
    let (p, n) = (x.size()[0] as f64, w.size()[0] as f64);
    let h = x.mm(&w.tr());
    let r = phi(&h, eps).mean_dim(1, false, h.kind()) * alpha - f0 - y;
    let g = (phi_prime(&h, eps) * r.unsqueeze(1)).tr().mm(x) * (2.0 * alpha / (p * n));
    (r, g)
}

/// The empirical NTK in closed form, (α²/N²)·Σ_i φ'(w_iᵀx_a)φ'(w_iᵀx_b)·x_aᵀx_b, for rows of `xa` × rows of `xb`.
pub fn ntk(w: &Tensor, xa: &Tensor, xb: &Tensor, alpha: f64, eps: f64) -> Tensor {
    let n = w.size()[0] as f64;
    let (pa, pb) = (phi_prime(&xa.mm(&w.tr()), eps), phi_prime(&xb.mm(&w.tr()), eps));
    pa.mm(&pb.tr()) * xa.mm(&xb.tr()) * (alpha * alpha / (n * n))
}

/// Kernel-regression predictions k_*ᵀ(K + ridge·I)⁻¹y, from K [P, P] and k_* rows [M, P].
pub fn kernel_regression(k_train: &Tensor, k_test_train: &Tensor, y: &Tensor, ridge: f64) -> Tensor {
    let p = k_train.size()[0];
    let regularised = k_train + Tensor::eye(p, (k_train.kind(), k_train.device())) * ridge;
    let coef = Tensor::linalg_solve(&regularised, &y.unsqueeze(1), true).squeeze_dim(1);
    matvec(k_test_train, &coef)
}

/// Centred kernel–target alignment as in the notebook's `kalignment`: ỹᵀK̃ỹ/(‖K̃‖_F·‖ỹ‖²), with ỹ = y − mean(y)
/// and K̃ = K minus its column means. It is 1 for K = ỹỹᵀ and does not change when K is scaled.
pub fn kernel_alignment(k: &Tensor, y: &Tensor) -> f64 {
    let (k, y) = (k.to_kind(Kind::Double), y.to_kind(Kind::Double));
    let yc = &y - y.mean(Kind::Double);
    let kc = &k - k.mean_dim(0, true, Kind::Double);
    let top = f64::try_from(crate::reduce::dot(&yc, &matvec(&kc, &yc))).expect("scalar");
    // Row sums first: one full reduction over test_size² elements would be split by thread.
    let k_norm = f64::try_from(kc.square().sum_dim_intlist([1].as_slice(), false, Kind::Double).sum(Kind::Double).sqrt()).expect("scalar");
    top / (k_norm * f64::try_from(crate::reduce::dot(&yc, &yc)).expect("scalar"))
}

/// NTK alignment on the test set at the current W. The α²/N² factor drops out because A is scale-invariant.
/// `gram` is XtXtᵀ, computed once.
fn test_ntk_alignment(w: &Tensor, xt: &Tensor, gram: &Tensor, yt: &Tensor, eps: f64) -> f64 {
    let p = phi_prime(&xt.mm(&w.tr()), eps);
    kernel_alignment(&(p.mm(&p.tr()) * gram), yt)
}

/// mean_i |w_iᵀβ|/(‖w_i‖‖β‖): ≈ √(2/(πD)) at a random init, 1 when every neuron points along ±β.
pub fn beta_alignment(w: &Tensor, beta: &Tensor) -> f64 {
    let (w, beta) = (w.to_kind(Kind::Double), beta.to_kind(Kind::Double));
    let row_norms = w.square().sum_dim_intlist([1].as_slice(), false, Kind::Double).sqrt();
    f64::try_from((matvec(&w, &beta).abs() / (row_norms * crate::reduce::norm(&beta))).mean(Kind::Double)).expect("scalar")
}

fn mean_square(t: &Tensor) -> f64 {
    f64::try_from(t.square().mean(Kind::Double)).expect("scalar")
}

/// The linearised network f_lin(W) = f₀ + J₀(W − W₀) under full-batch GD on mean (f_lin − f₀ − y)², tracked
/// in function space. Δ_{t+1} = Δ_t − η(2/P)J₀ᵀr_t gives u_{t+1} = u_t − (2/P)(ηJ₀J₀ᵀ)r_t on the training set.
/// On any other set the predictions are −(2/P)(ηJ_*J₀ᵀ)·Σ_s r_s, so no parameters are needed.
pub struct LinearisedGd {
    /// η·NTK at W₀ on train × train.
    k_train: Tensor,
    /// η·NTK at W₀ on test × train.
    k_test_train: Tensor,
    y: Tensor,
    /// f_lin − f₀ on the training inputs.
    u: Tensor,
    /// Σ_s r_s over the steps taken.
    residual_sum: Tensor,
    /// 2/P, from the mean in the loss.
    rate: f64,
}

impl LinearisedGd {
    pub fn new(k_train: Tensor, k_test_train: Tensor, y: &Tensor) -> Self {
        let rate = 2.0 / y.size()[0] as f64;
        LinearisedGd { k_train, k_test_train, u: y.zeros_like(), residual_sum: y.zeros_like(), y: y.shallow_clone(), rate }
    }

    pub fn step(&mut self) {
        let r = &self.u - &self.y;
        self.u = &self.u - matvec(&self.k_train, &r) * self.rate;
        self.residual_sum += &r;
    }

    /// f_lin − f₀ on the training inputs.
    pub fn train_prediction(&self) -> &Tensor {
        &self.u
    }

    /// f_lin − f₀ on the test inputs.
    pub fn test_prediction(&self) -> Tensor {
        matvec(&self.k_test_train, &self.residual_sum) * -self.rate
    }

    pub fn train_mse(&self) -> f64 {
        mean_square(&(&self.u - &self.y))
    }
}

/// About `points` + 1 epochs spaced geometrically from 1 to `until`, so the early (lazy) phase has points on a log-x plot.
fn early_epochs(until: u64, points: u32) -> BTreeSet<u64> {
    (0..=points).map(|k| (until as f64).powf(k as f64 / points as f64).round() as u64).collect()
}

/// No shared blocks: every key is the paper's own.
impl crate::paper::Blocks for Config {}

impl crate::paper::Paper for GrokkingLazyRich {
    const KEY: &'static str = "grokking_lazy_rich";
    const TITLE: &'static str = "Grokking as the Transition from Lazy to Rich Training Dynamics";
    const ARXIV: &'static str = "2310.06110";
    type Config = Config;

    fn check(c: &Config) -> Result<()> {
        for (key, value, min) in [("dim", c.dim, 1), ("train_size", c.train_size, 1), ("width", c.width, 1), ("test_size", c.test_size, 2)] {
            if value < min {
                bail!("`{key}` must be ≥ {min}, got {value}");
            }
        }
        for (key, value) in [("alpha", c.alpha), ("lr_scale", c.lr_scale)] {
            if !(value > 0.0 && value.is_finite()) {
                bail!("`{key}` must be finite and > 0, got {value}");
            }
        }
        if !(c.eps >= 0.0 && c.eps.is_finite()) {
            bail!("`eps` must be finite and ≥ 0, got {}", c.eps);
        }
        for (key, value) in [("epochs", c.epochs), ("eval_every", c.eval_every), ("log_every", c.log_every), ("align_every", c.align_every)] {
            if value == 0 {
                bail!("`{key}` must be ≥ 1, got {value}");
            }
        }
        for (key, value) in [("train_threshold", c.train_threshold), ("test_threshold", c.test_threshold)] {
            if !(value > 0.0 && value < 1.0) {
                bail!("`{key}` is a fraction of the initial loss and must be in (0, 1), got {value}");
            }
        }
        if !(c.ridge >= 0.0 && c.ridge.is_finite()) {
            bail!("`ridge` must be finite and ≥ 0, got {}", c.ridge);
        }
        Ok(())
    }

    fn run(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
        let device = ctx.device;
        let kind = if cfg.float64 { Kind::Double } else { Kind::Float };
        let (alpha, eps) = (cfg.alpha, cfg.eps);
        let prob = Problem::sample(cfg.dim, cfg.train_size, cfg.test_size, cfg.width, ctx.seed, device);
        let n = cfg.width as f64;
        let eta = cfg.lr_scale * n / (alpha * alpha);

        // K₀ = (N/α²)·NTK(W₀) = (1/N)Σφ'φ'xᵀx' (float64). The linearised network moves along lr_scale·K₀ = η·NTK.
        let k0_train = ntk(&prob.w0, &prob.x, &prob.x, alpha, eps) * (n / (alpha * alpha));
        let k0_test = ntk(&prob.w0, &prob.xt, &prob.x, alpha, eps) * (n / (alpha * alpha));
        let k0_mse = mean_square(&(kernel_regression(&k0_train, &k0_test, &prob.y, cfg.ridge) - &prob.yt));
        let mut lin = LinearisedGd::new(&k0_train * cfg.lr_scale, &k0_test * cfg.lr_scale, &prob.y);

        let (x, y, xt, yt, w0) = (prob.x.to_kind(kind), prob.y.to_kind(kind), prob.xt.to_kind(kind), prob.yt.to_kind(kind), prob.w0.to_kind(kind));
        let f0 = forward(&w0, &x, alpha, eps);
        let f0_test = forward(&w0, &xt, alpha, eps);
        let gram_test = xt.mm(&xt.tr());
        // At W₀ the centred losses are mean(y²): the thresholds' reference values.
        let (y2_train, y2_test) = (mean_square(&prob.y), mean_square(&prob.yt));
        ctx.set_final("y2_train", y2_train)?;
        ctx.set_final("y2_test", y2_test)?;
        ctx.set_final("k0_test_mse", k0_mse)?;

        let early = early_epochs(cfg.log_every.min(cfg.epochs), 16);
        let (mut t_train, mut t_test): (Option<u64>, Option<u64>) = (None, None);
        let mut w = w0.copy();
        let (mut last_test, mut last_lin_train, mut last_lin_test, mut last_train) = (y2_test, y2_train, y2_test, y2_train);
        let (mut lin_test_min, mut test_peak) = (f64::INFINITY, 0.0f64);
        // The test MSE at the first evaluation at or after t_train (the lazy phase's test level).
        let mut test_at_t_train: Option<f64> = None;
        let (mut beta_init, mut beta_last, mut align_init, mut align_last) = (0.0, 0.0, 0.0, 0.0);
        for e in 0..=cfg.epochs {
            let (r, g) = centred_residual_and_grad(&w, &x, &y, &f0, alpha, eps);
            let train_mse = mean_square(&r);
            if t_train.is_none() && train_mse < cfg.train_threshold * y2_train {
                t_train = Some(e);
            }
            let logged = e % cfg.log_every == 0 || early.contains(&e) || e == cfg.epochs;
            if logged || e % cfg.eval_every == 0 {
                let test_mse = mean_square(&(forward(&w, &xt, alpha, eps) - &f0_test - &yt));
                let lin_test_mse = mean_square(&(lin.test_prediction() - &prob.yt));
                let lin_train_mse = lin.train_mse();
                lin_test_min = lin_test_min.min(lin_test_mse);
                test_peak = test_peak.max(test_mse);
                if t_test.is_none() && test_mse < cfg.test_threshold * y2_test {
                    t_test = Some(e);
                }
                if t_train.is_some() && test_at_t_train.is_none() {
                    test_at_t_train = Some(test_mse);
                }
                (last_train, last_test, last_lin_train, last_lin_test) = (train_mse, test_mse, lin_train_mse, lin_test_mse);
                if logged {
                    beta_last = beta_alignment(&w, &prob.beta);
                    if e == 0 {
                        beta_init = beta_last;
                    }
                    ctx.log_all(
                        e,
                        &[
                            ("train_mse", train_mse),
                            ("test_mse", test_mse),
                            ("lin_train_mse", lin_train_mse),
                            ("lin_test_mse", lin_test_mse),
                            ("beta_alignment", beta_last),
                        ],
                    )?;
                }
            }
            if e % cfg.align_every == 0 || e == cfg.epochs {
                align_last = test_ntk_alignment(&w, &xt, &gram_test, &prob.yt, eps);
                if e == 0 {
                    align_init = align_last;
                }
                ctx.log_all(e, &[("ntk_alignment", align_last)])?;
            }
            if e < cfg.epochs {
                w -= g * eta;
                lin.step();
            }
            if e % 1000 == 0 || e == cfg.epochs {
                ctx.tick(e, cfg.epochs)?;
            }
        }

        // A threshold not reached within the budget reads as the first epoch a longer run would check next, a
        // lower bound flagged by *_reached = 0: the train loss is checked every epoch, the test loss at multiples
        // of `eval_every` and of `log_every` (the geometric early grid lies below `log_every`, within the budget).
        let next_multiple = |k: u64| (cfg.epochs / k + 1) * k;
        let train_never = cfg.epochs + 1;
        let test_never = next_multiple(cfg.eval_every).min(next_multiple(cfg.log_every));
        let (tr, te) = (t_train.unwrap_or(train_never), t_test.unwrap_or(test_never));
        ctx.set_final("t_train", tr as f64)?;
        ctx.set_final("t_test", te as f64)?;
        ctx.set_final("train_reached", if t_train.is_some() { 1.0 } else { 0.0 })?;
        ctx.set_final("test_reached", if t_test.is_some() { 1.0 } else { 0.0 })?;
        // A lower bound when only the test threshold is missed.
        ctx.set_final("delay_ratio", te as f64 / tr.max(1) as f64)?;
        ctx.set_final("train_mse", last_train)?;
        ctx.set_final("test_mse", last_test)?;
        ctx.set_final("lin_train_mse", last_lin_train)?;
        ctx.set_final("lin_test_mse", last_lin_test)?;
        ctx.set_final("test_mse_over_y2", last_test / y2_test)?;
        ctx.set_final("test_peak_over_y2", test_peak / y2_test)?;
        ctx.set_final("net_over_k0", last_test / k0_mse)?;
        ctx.set_final("lin_over_k0", last_lin_test / k0_mse)?;
        // "Stays" at the K₀ level: the lowest linearised test MSE over every evaluated epoch.
        ctx.set_final("lin_min_over_k0", lin_test_min / k0_mse)?;
        // Only when the train threshold is reached: the test level while the network behaves like its linearisation.
        if let Some(v) = test_at_t_train {
            ctx.set_final("test_over_k0_at_t_train", v / k0_mse)?;
        }
        ctx.set_final("beta_alignment_init", beta_init)?;
        ctx.set_final("beta_alignment", beta_last)?;
        ctx.set_final("beta_alignment_gain", beta_last - beta_init)?;
        ctx.set_final("beta_alignment_ratio", beta_last / beta_init)?;
        ctx.set_final("ntk_alignment_init", align_init)?;
        ctx.set_final("ntk_alignment", align_last)?;
        ctx.set_final("ntk_alignment_gain", align_last - align_init)?;
        ctx.set_final("ntk_alignment_ratio", align_last / align_init)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::ProgressMode;
    use crate::paper::Paper;
    use crate::testutil::f64s;

    const CPU: (Kind, Device) = (Kind::Double, Device::Cpu);

    fn max_abs(t: &Tensor) -> f64 {
        f64::try_from(t.abs().max()).unwrap()
    }

    fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
        max_abs(&(a - b)) / max_abs(b).max(1e-300)
    }

    fn l2(t: &Tensor) -> f64 {
        f64::try_from(t.square().sum(Kind::Double).sqrt()).unwrap()
    }

    #[test]
    fn closed_form_ntk_equals_the_autograd_jacobian_gram() {
        tch::manual_seed(0);
        let (d, n, alpha, eps) = (6, 7, 1.7, 0.3);
        let w = Tensor::randn([n, d], CPU);
        let x = Tensor::randn([5, d], CPU) / (d as f64).sqrt();
        let wv = w.detach().set_requires_grad(true);
        let f = forward(&wv, &x, alpha, eps);
        let rows: Vec<Tensor> = (0..5).map(|j| Tensor::run_backward(&[f.get(j)], &[&wv], true, false).remove(0).flatten(0, -1)).collect();
        let jac = Tensor::stack(&rows, 0);
        let gram = jac.mm(&jac.tr());
        let closed = ntk(&w, &x, &x, alpha, eps);
        assert!(rel_err(&closed, &gram) < 1e-10, "{}", rel_err(&closed, &gram));
        // The cross kernel keeps its arguments apart: rows from `xa`, columns from `xb`.
        let cross = ntk(&w, &x.narrow(0, 0, 2), &x.narrow(0, 2, 3), alpha, eps);
        assert!(rel_err(&cross, &gram.narrow(0, 0, 2).narrow(1, 2, 3)) < 1e-10);
    }

    #[test]
    fn manual_gradient_equals_autograd_away_from_init() {
        tch::manual_seed(1);
        let (p, d, n, alpha, eps) = (9, 5, 4, 2.0, 0.4);
        let w0 = Tensor::randn([n, d], CPU);
        let w = &w0 + Tensor::randn([n, d], CPU) * 0.3;
        let x = Tensor::randn([p, d], CPU) / (d as f64).sqrt();
        let y = Tensor::randn([p], CPU);
        let f0 = forward(&w0, &x, alpha, eps);
        let (r, g) = centred_residual_and_grad(&w, &x, &y, &f0, alpha, eps);
        let wv = w.detach().set_requires_grad(true);
        let loss = (forward(&wv, &x, alpha, eps) - &f0 - &y).square().mean(Kind::Double);
        let auto = Tensor::run_backward(&[&loss], &[&wv], false, false).remove(0);
        assert!(rel_err(&g, &auto) < 1e-10, "{}", rel_err(&g, &auto));
        assert!((mean_square(&r) - f64::try_from(&loss).unwrap()).abs() < 1e-12);
    }

    #[test]
    fn at_init_the_network_gradient_equals_the_linearisation_gradient() {
        let prob = Problem::sample(6, 12, 20, 9, 3, Device::Cpu);
        let (alpha, eps) = (1.3, 0.2);
        let f0 = forward(&prob.w0, &prob.x, alpha, eps);
        let (_, g) = centred_residual_and_grad(&prob.w0, &prob.x, &prob.y, &f0, alpha, eps);
        // The explicit linearisation f_lin − f₀ = (α/N)Σ_i φ'(w₀ᵢᵀx)·(w_i − w₀ᵢ)ᵀx, differentiated by autograd at W₀.
        let wv = prob.w0.detach().set_requires_grad(true);
        let phi0 = phi_prime(&prob.x.mm(&prob.w0.tr()), eps);
        let lin = (&phi0 * prob.x.mm(&(&wv - &prob.w0).tr())).mean_dim(1, false, Kind::Double) * alpha;
        let lin_loss = (&lin - &prob.y).square().mean(Kind::Double);
        let g_lin = Tensor::run_backward(&[&lin_loss], &[&wv], false, false).remove(0);
        assert!(rel_err(&g, &g_lin) < 1e-12, "{}", rel_err(&g, &g_lin));
    }

    #[test]
    fn function_space_linearised_gd_equals_parameter_space_gd() {
        let prob = Problem::sample(5, 8, 11, 6, 1, Device::Cpu);
        let (alpha, eps, p, n) = (0.7, 0.4, 8.0, 6.0);
        let eta = n / (alpha * alpha);
        let mut gd = LinearisedGd::new(ntk(&prob.w0, &prob.x, &prob.x, alpha, eps) * eta, ntk(&prob.w0, &prob.xt, &prob.x, alpha, eps) * eta, &prob.y);
        let phi0 = phi_prime(&prob.x.mm(&prob.w0.tr()), eps);
        let phi0_test = phi_prime(&prob.xt.mm(&prob.w0.tr()), eps);
        let predict = |delta: &Tensor, x: &Tensor, phi: &Tensor| (phi * x.mm(&delta.tr())).mean_dim(1, false, Kind::Double) * alpha;
        let mut delta = prob.w0.zeros_like();
        for _ in 0..5 {
            let r = predict(&delta, &prob.x, &phi0) - &prob.y;
            let g = (&phi0 * r.unsqueeze(1)).tr().mm(&prob.x) * (2.0 * alpha / (p * n));
            delta = delta - g * eta;
            gd.step();
        }
        let (train, test) = (predict(&delta, &prob.x, &phi0), predict(&delta, &prob.xt, &phi0_test));
        assert!(rel_err(gd.train_prediction(), &train) < 1e-10, "{}", rel_err(gd.train_prediction(), &train));
        assert!(rel_err(&gd.test_prediction(), &test) < 1e-10, "{}", rel_err(&gd.test_prediction(), &test));
    }

    #[test]
    fn linearised_gd_converges_to_k0_kernel_regression() {
        // P = 3 < D = 12: K₀ is well conditioned, so GD reaches the ridgeless interpolant within a few thousand steps.
        let prob = Problem::sample(12, 3, 7, 10, 4, Device::Cpu);
        let (alpha, eps) = (1.0, 0.3);
        // Half the usual η·NTK keeps every mode stable; the limit does not depend on the step.
        let k_train = ntk(&prob.w0, &prob.x, &prob.x, alpha, eps) * 5.0;
        let k_test = ntk(&prob.w0, &prob.xt, &prob.x, alpha, eps) * 5.0;
        let regression = kernel_regression(&k_train, &k_test, &prob.y, 0.0);
        assert!(rel_err(&kernel_regression(&k_train, &k_train, &prob.y, 0.0), &prob.y) < 1e-10, "interpolates its training set");
        let mut gd = LinearisedGd::new(k_train, k_test, &prob.y);
        for _ in 0..3000 {
            gd.step();
        }
        assert!(gd.train_mse() < 1e-20, "{}", gd.train_mse());
        assert!(rel_err(&gd.test_prediction(), &regression) < 1e-8, "{}", rel_err(&gd.test_prediction(), &regression));
    }

    /// max over the first 200 epochs of ‖f_t − f_lin,t‖/‖f_lin,t − f₀‖ on the training set, at η = N/α².
    fn lazy_deviation(alpha: f64) -> f64 {
        let prob = Problem::sample(8, 24, 2, 16, 5, Device::Cpu);
        let eps = 0.2;
        let eta = 16.0 / (alpha * alpha);
        let f0 = forward(&prob.w0, &prob.x, alpha, eps);
        let mut gd = LinearisedGd::new(ntk(&prob.w0, &prob.x, &prob.x, alpha, eps) * eta, ntk(&prob.w0, &prob.xt, &prob.x, alpha, eps) * eta, &prob.y);
        let mut w = prob.w0.copy();
        let mut worst = 0.0f64;
        for _ in 0..200 {
            let (_, g) = centred_residual_and_grad(&w, &prob.x, &prob.y, &f0, alpha, eps);
            w -= g * eta;
            gd.step();
            let moved = forward(&w, &prob.x, alpha, eps) - &f0;
            worst = worst.max(l2(&(moved - gd.train_prediction())) / l2(gd.train_prediction()));
        }
        worst
    }

    #[test]
    fn the_network_approaches_its_linearisation_as_alpha_grows() {
        // With η = N/α² the weights move O(1/α) while f − f₀ stays O(1), so the nonlinear part shrinks like 1/α.
        let dev: Vec<f64> = [1.0, 10.0, 100.0].iter().map(|&a| lazy_deviation(a)).collect();
        assert!(dev[0] > 1e-3, "α = 1 should be visibly nonlinear: {dev:?}");
        assert!(dev[1] < 0.3 * dev[0] && dev[2] < 0.3 * dev[1], "{dev:?}");
    }

    #[test]
    fn with_a_linear_activation_the_quadratic_target_is_not_learned() {
        // ε = 0: f − f₀ is linear in x, and E[y·x] = 0 for y = (βᵀx)²/2, so the test MSE cannot fall below Var(y).
        let prob = Problem::sample(10, 40, 1000, 20, 2, Device::Cpu);
        let (alpha, eps, eta) = (1.0, 0.0, 20.0);
        let f0 = forward(&prob.w0, &prob.x, alpha, eps);
        let f0_test = forward(&prob.w0, &prob.xt, alpha, eps);
        let var_y = f64::try_from(prob.yt.var(false)).unwrap();
        let mut w = prob.w0.copy();
        let (mut lowest_test, mut train) = (f64::INFINITY, f64::INFINITY);
        for e in 0..3000 {
            let (r, g) = centred_residual_and_grad(&w, &prob.x, &prob.y, &f0, alpha, eps);
            train = mean_square(&r);
            w -= g * eta;
            if e % 100 == 99 {
                lowest_test = lowest_test.min(mean_square(&(forward(&w, &prob.xt, alpha, eps) - &f0_test - &prob.yt)));
            }
        }
        assert!(train < mean_square(&prob.y), "GD fits the linear part of the sample: {train}");
        assert!(lowest_test >= 0.95 * var_y, "test {lowest_test} vs Var(y) {var_y}");
    }

    #[test]
    fn kernel_alignment_closed_forms_and_scale_invariance() {
        let y = Tensor::from_slice(&[0.3f64, -1.2, 2.0, 0.7, -0.1, 1.5, 0.4]);
        let yc = &y - y.mean(Kind::Double);
        let target = yc.outer(&yc);
        assert!((kernel_alignment(&target, &y) - 1.0).abs() < 1e-12);
        // Column centring removes a constant offset.
        assert!((kernel_alignment(&(&target + 5.0), &y) - 1.0).abs() < 1e-12);
        // K = I: ỹᵀK̃ỹ = ‖ỹ‖², ‖I − 11ᵀ/n‖_F = √(n − 1).
        assert!((kernel_alignment(&Tensor::eye(7, CPU), &y) - 1.0 / 6f64.sqrt()).abs() < 1e-12);
        tch::manual_seed(2);
        let z = Tensor::randn([7, 3], CPU);
        let k = z.mm(&z.tr());
        let a = kernel_alignment(&k, &y);
        assert!((kernel_alignment(&(&k * 3.7), &y) - a).abs() < 1e-12);
        assert!(a < 1.0 - 1e-6, "{a}");
    }

    #[test]
    fn beta_alignment_closed_forms() {
        let beta = Tensor::from_slice(&[1.0f64, 2.0, 0.0]);
        let along = Tensor::from_slice(&[2.0f64, 4.0, 0.0, -1.0, -2.0, 0.0]).view([2, 3]);
        assert!((beta_alignment(&along, &beta) - 1.0).abs() < 1e-12);
        let orthogonal = Tensor::from_slice(&[2.0f64, -1.0, 0.0, 0.0, 0.0, 3.0]).view([2, 3]);
        assert!(beta_alignment(&orthogonal, &beta).abs() < 1e-12);
        let mixed = Tensor::from_slice(&[1.0f64, 2.0, 0.0, 2.0, -1.0, 0.0]).view([2, 3]);
        assert!((beta_alignment(&mixed, &beta) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn a_smaller_training_set_is_a_prefix_with_the_same_teacher_test_set_and_init() {
        let (small, large) = (Problem::sample(4, 5, 6, 3, 7, Device::Cpu), Problem::sample(4, 8, 6, 3, 7, Device::Cpu));
        assert_eq!(f64s(&small.x), f64s(&large.x.narrow(0, 0, 5)));
        for (a, b) in [(&small.beta, &large.beta), (&small.xt, &large.xt), (&small.w0, &large.w0), (&small.yt, &large.yt)] {
            assert_eq!(f64s(a), f64s(b));
        }
        assert_ne!(f64s(&small.beta), f64s(&Problem::sample(4, 5, 6, 3, 8, Device::Cpu).beta));
        // y = (βᵀx)²/2 row by row.
        let (x, beta) = (f64s(&small.x), f64s(&small.beta));
        let y0 = 0.5 * (0..4).map(|j| x[j] * beta[j]).sum::<f64>().powi(2);
        assert!((f64s(&small.y)[0] - y0).abs() < 1e-12);
    }

    #[test]
    fn a_small_run_reports_consistent_metrics() {
        // P = 4 < D = 8: K₀ is full rank on the training set, so the linearised GD reaches the ridgeless K₀ interpolant.
        let dir = std::env::temp_dir().join(format!("reglab-grokking-lazy-rich-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ctx = RunCtx::new(&dir, "t", 0, Device::Cpu, ProgressMode::Quiet, &dir).unwrap();
        // lr_scale 0.5 keeps the step well inside the stable range: (2/P)·lr_scale·K₀ must stay below 2, and K₀'s
        // top eigenvalue is below trace(XXᵀ)·(1 + O(ε)) ≈ 4, against 8 here. 3000 steps damp the slowest mode by
        // ≈ e^(−60) at a typical λ_min(K₀) ≈ 0.09.
        let cfg = Config { dim: 8, train_size: 4, test_size: 32, width: 16, lr_scale: 0.5, epochs: 3000, eval_every: 100, log_every: 200, align_every: 1000, ridge: 0.0, float64: true, ..Config::default() };
        GrokkingLazyRich::check(&cfg).unwrap();
        GrokkingLazyRich::run(&cfg, &mut ctx).unwrap();
        let f = ctx.final_metrics();
        ctx.finish().unwrap();
        let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let rel = (f["lin_test_mse"] - f["k0_test_mse"]).abs() / f["k0_test_mse"];
        assert!(rel < 1e-6, "linearised {} vs K₀ regression {}", f["lin_test_mse"], f["k0_test_mse"]);
        assert!((f["lin_over_k0"] - f["lin_test_mse"] / f["k0_test_mse"]).abs() < 1e-12);
        // t_train is checked every epoch, train_mse logged only on the grid: t_train is at or before the first
        // logged epoch below the threshold, and after every logged epoch above it.
        assert_eq!(f["train_reached"], 1.0);
        let threshold = cfg.train_threshold * f["y2_train"];
        let train: Vec<(f64, f64)> = csv
            .lines()
            .skip(1)
            .filter_map(|line| {
                let cols: Vec<&str> = line.split(',').collect();
                (cols[1] == "train_mse").then(|| (cols[0].parse().unwrap(), cols[2].parse().unwrap()))
            })
            .collect();
        let first_below = train.iter().find(|(_, v)| *v < threshold).expect("a logged epoch below the threshold").0;
        assert!(f["t_train"] <= first_below, "t_train {} vs first logged {first_below}", f["t_train"]);
        assert!(train.iter().filter(|(e, _)| *e < f["t_train"]).all(|(_, v)| *v >= threshold));
        assert!(f["test_over_k0_at_t_train"].is_finite());
        // A missed test threshold reads as the next evaluated epoch after the budget.
        if f["test_reached"] == 0.0 {
            assert_eq!(f["t_test"], (cfg.epochs + cfg.eval_every) as f64);
        }
        // A bad key is refused, naming it and the value.
        let err = GrokkingLazyRich::check(&Config { test_threshold: 1.5, ..Config::default() }).unwrap_err().to_string();
        assert!(err.contains("test_threshold") && err.contains("1.5"), "{err}");
    }
}
