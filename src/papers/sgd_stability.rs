//! The Implicit Regularization of Dynamical Stability in Stochastic Gradient Descent — Wu & Su,
//! arXiv 2305.17490.
//!
//! A minimum is linearly stable for GD only if λ_max(H) ≤ 2/η, but for SGD (in mean square) only
//! if Tr(H) ≤ 2/η — a much stronger constraint. For a diagonal linear network β = u⊙u − v⊙v, Tr(H)
//! bounds a weighted ℓ1 norm of β, so SGD's minima are sparser and generalise better in sparse
//! recovery. The experiment: on a 5-sparse regression with d = 200 > n = 60, SGD's minima
//! satisfy Tr(H) ≤ 2/η, have a smaller ‖β‖₁ and lower error than GD's at the same η.
//!
//! Following our note (derived quantities, no official code used): squared loss
//! L = (1/n) Σ ½(f_i − y_i)², f(x) = ⟨u⊙u − v⊙v, x⟩, initialisation u = v = `init`·1 (the note's
//! 0.5 is the default; the CPU spec uses 0.3, still large enough that GD stays dense, because at 0.5
//! the initial Tr(H) = 8·d·0.25 already caps SGD at η ≈ 0.005 and it diverges before the bound
//! shapes its minima), float64, SGD with batch 1 sampled with replacement (the linear-stability
//! setting); at interpolation H is the Gauss–Newton JᵀJ/n with J = [2X diag(u), −2X diag(v)], so
//! Tr(H) = ‖J‖²_F/n and λ_max(H) = σ_max(J)²/n. A run whose loss exceeds 1e6 is stopped and
//! reported as `diverged` = 1 (not dropped).
//!
//! Part (B), `model: relu`: f(x) = Σ_k a_k ReLU(w_kᵀx) with both layers trained, fitted to a
//! `teacher_width`-unit ReLU teacher (unit w*, a* = ±1) on x ~ N(0, I). At interpolation
//! Tr(H) = (1/n) Σ_i ‖∇_θ f_i‖² = (1/n) Σ_i Σ_k [ReLU(w_kᵀx_i)² + a_k² 1[w_kᵀx_i > 0] ‖x_i‖²] and
//! λ_max(H) is the top eigenvalue of the Gram J Jᵀ/n (n × n, the same nonzero spectrum as JᵀJ/n).
//! The paper ties Tr(H) to a path norm Σ_k |a_k| ‖w_k‖; we report it with the test MSE on fresh
//! inputs. Initialisation (our choice, no code to follow): w_k ~ N(0, I/d)·`init`, a_k ~ N(0, 1/m)·`init`.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::context::{Rng, RunCtx};

pub struct SgdStability;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `diagonal`: part (A), β = u⊙u − v⊙v; `relu`: part (B), a two-layer ReLU network.
    pub model: Model,
    /// Feature dimension (the input dimension for `relu`).
    pub dim: i64,
    pub samples: i64,
    pub sparsity: i64,
    pub init: f64,
    pub lr: f64,
    /// Batch size: the full sample count is GD; 1 is SGD (with replacement).
    pub batch: i64,
    pub max_steps: u64,
    pub tol: f64,
    /// `relu` only: hidden width m, the teacher's width, fresh test inputs for the test MSE.
    pub width: i64,
    pub teacher_width: i64,
    pub test_size: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    Diagonal,
    Relu,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: Model::Diagonal,
            dim: 200,
            samples: 60,
            sparsity: 5,
            init: 0.5,
            lr: 0.01,
            batch: 1,
            max_steps: 50_000,
            tol: 1e-8,
            width: 200,
            teacher_width: 3,
            test_size: 2000,
        }
    }
}

/// Tr(H) and λ_max(H) of the Gauss–Newton Hessian of the diagonal net at (u, v) on X [n, d].
pub fn curvature(x: &Tensor, u: &Tensor, v: &Tensor) -> (f64, f64) {
    let n = x.size()[0] as f64;
    let j = Tensor::cat(&[x * u.unsqueeze(0) * 2.0, x * v.unsqueeze(0) * -2.0], 1);
    let trace = f64::try_from(j.square().sum(Kind::Double)).expect("scalar") / n;
    let h = j.transpose(0, 1).mm(&j) / n;
    let top = Vec::<f64>::try_from(h.linalg_eigvalsh("L")).expect("eigenvalues").into_iter().fold(f64::MIN, f64::max);
    (trace, top)
}

/// No shared blocks: every key is the paper's own.
impl crate::paper::Blocks for Config {}

impl crate::paper::Paper for SgdStability {
    const KEY: &'static str = "sgd_stability";
    const TITLE: &'static str = "The Implicit Regularization of Dynamical Stability in Stochastic Gradient Descent";
    const ARXIV: &'static str = "2305.17490";
    type Config = Config;

    fn check(c: &Config) -> Result<()> {
        if c.dim < 1 || c.samples < 1 || c.sparsity < 1 || c.sparsity > c.dim || c.batch < 1 || c.batch > c.samples || !(c.lr > 0.0) || c.max_steps == 0 {
            bail!("`dim`, `samples` ≥ 1; 1 ≤ `sparsity` ≤ `dim`; 1 ≤ `batch` ≤ `samples`; `lr` > 0; `max_steps` ≥ 1");
        }
        if c.model == Model::Relu && (c.width < 1 || c.teacher_width < 1 || c.test_size < 1 || !(c.init > 0.0)) {
            bail!("`model: relu` needs `width`, `teacher_width`, `test_size` ≥ 1 and `init` > 0");
        }
        Ok(())
    }

    fn run(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
        match cfg.model {
            Model::Diagonal => run_diagonal(cfg, ctx),
            Model::Relu => run_relu(cfg, ctx),
        }
    }
}

/// (S)GD on `state` until interpolation, shared by both models: each step draws a minibatch of
/// `batch` rows with replacement (the whole set when batch = n, i.e. GD) and calls `step`; every
/// 500 steps the full training loss is logged and the run stops below `tol`, or as diverged (loss
/// > 1e6 or not finite; recorded as `diverged` = 1, not dropped). Records `diverged` and `steps`.
fn train_to_interpolation<S>(
    cfg: &Config,
    ctx: &mut RunCtx,
    rng: &mut Rng,
    x: &Tensor,
    y: &Tensor,
    state: &mut S,
    mut step_fn: impl FnMut(&mut S, &Tensor, &Tensor),
    loss: impl Fn(&S) -> f64,
) -> Result<bool> {
    let n = x.size()[0];
    let (mut diverged, mut steps) = (false, 0);
    for step in 1..=cfg.max_steps {
        if cfg.batch == n {
            step_fn(state, x, y);
        } else {
            let idx: Vec<i64> = (0..cfg.batch).map(|_| rng.below(n as u64) as i64).collect();
            let idx = Tensor::from_slice(&idx).to_device(x.device());
            step_fn(state, &x.index_select(0, &idx), &y.index_select(0, &idx));
        }
        steps = step;
        if step % 500 == 0 || step == cfg.max_steps {
            let l = loss(state);
            if !l.is_finite() || l > 1e6 {
                diverged = true;
                break;
            }
            ctx.log_all(step, &[("train_loss", l)])?;
            ctx.tick(step, cfg.max_steps)?;
            if l < cfg.tol {
                break;
            }
        }
    }
    ctx.set_final("diverged", if diverged { 1.0 } else { 0.0 })?;
    ctx.set_final("steps", steps as f64)?;
    Ok(diverged)
}

/// `n` rows of N(0, I_d) in float64.
fn gaussian_rows(rng: &mut Rng, n: i64, d: i64, scale: f64, device: tch::Device) -> Tensor {
    let xs: Vec<f64> = (0..n * d).map(|_| scale * rng.normal()).collect();
    Tensor::from_slice(&xs).view([n, d]).to_device(device)
}

/// f(x) = Σ_k a_k ReLU(w_kᵀx) for the rows of `x`; W [m, d], a [m].
pub fn relu_net(w: &Tensor, a: &Tensor, x: &Tensor) -> Tensor {
    x.mm(&w.transpose(0, 1)).relu().mv(a)
}

/// Gradients of ½·mean (f − y)² with respect to (W, a), by hand.
pub fn relu_grads(w: &Tensor, a: &Tensor, x: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
    let b = x.size()[0] as f64;
    let h = x.mm(&w.transpose(0, 1));
    let r = h.relu().mv(a) - y;
    let ga = h.relu().transpose(0, 1).mv(&r) / b;
    let gw = (h.gt(0.0).to_kind(Kind::Double) * r.unsqueeze(1) * a.unsqueeze(0)).transpose(0, 1).mm(x) / b;
    (gw, ga)
}

/// The per-sample Jacobian J [n, m + m·d] of f at (W, a): rows [ReLU(Wx_i), (a ⊙ 1[Wx_i > 0]) ⊗ x_i].
pub fn relu_jacobian(w: &Tensor, a: &Tensor, x: &Tensor) -> Tensor {
    let (n, m) = (x.size()[0], w.size()[0]);
    let h = x.mm(&w.transpose(0, 1));
    let gw = (h.gt(0.0).to_kind(Kind::Double) * a.unsqueeze(0)).unsqueeze(2) * x.unsqueeze(1);
    Tensor::cat(&[h.relu(), gw.view([n, m * x.size()[1]])], 1)
}

/// Tr(H) and λ_max(H) of the Gauss–Newton Hessian JᵀJ/n (exact at interpolation).
pub fn relu_curvature(w: &Tensor, a: &Tensor, x: &Tensor) -> (f64, f64) {
    let j = relu_jacobian(w, a, x);
    let n = x.size()[0] as f64;
    let gram = j.mm(&j.transpose(0, 1)) / n;
    let trace = f64::try_from(gram.trace()).expect("scalar");
    let top = Vec::<f64>::try_from(gram.linalg_eigvalsh("L")).expect("eigenvalues").into_iter().fold(f64::MIN, f64::max);
    (trace, top)
}

fn run_relu(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
    let device = ctx.device;
    let mut rng = Rng::new(ctx.seed ^ 0x2E1);
    let (n, d, m) = (cfg.samples, cfg.dim, cfg.width);
    // The teacher: unit directions, output weights ±1.
    let ws = gaussian_rows(&mut rng, cfg.teacher_width, d, 1.0, device);
    let w_star = &ws / ws.square().sum_dim_intlist([1].as_slice(), true, Kind::Double).sqrt();
    let signs: Vec<f64> = (0..cfg.teacher_width).map(|k| if k % 2 == 0 { 1.0 } else { -1.0 }).collect();
    let a_star = Tensor::from_slice(&signs).to_device(device);
    let x = gaussian_rows(&mut rng, n, d, 1.0, device);
    let y = relu_net(&w_star, &a_star, &x);
    let xt = gaussian_rows(&mut rng, cfg.test_size, d, 1.0, device);
    let yt = relu_net(&w_star, &a_star, &xt);
    let w = gaussian_rows(&mut rng, m, d, cfg.init / (d as f64).sqrt(), device);
    let a = gaussian_rows(&mut rng, 1, m, cfg.init / (m as f64).sqrt(), device).view([m]);
    let loss_of = |w: &Tensor, a: &Tensor| f64::try_from((relu_net(w, a, &x) - &y).square().mean(Kind::Double) * 0.5).expect("scalar");
    let mut state = (w, a);
    let diverged = train_to_interpolation(cfg, ctx, &mut rng, &x, &y, &mut state, |(w, a), xb, yb| {
        let (gw, ga) = relu_grads(w, a, xb, yb);
        *w = &*w - gw * cfg.lr;
        *a = &*a - ga * cfg.lr;
    }, |(w, a)| loss_of(w, a))?;
    let (w, a) = state;
    if !diverged {
        let (trace, top) = relu_curvature(&w, &a, &x);
        let path = f64::try_from((a.abs() * w.square().sum_dim_intlist([1].as_slice(), false, Kind::Double).sqrt()).sum(Kind::Double))?;
        ctx.set_final("final_train_loss", loss_of(&w, &a))?;
        ctx.set_final("test_mse", f64::try_from((relu_net(&w, &a, &xt) - &yt).square().mean(Kind::Double))?)?;
        ctx.set_final("path_norm", path)?;
        ctx.set_final("trace_h", trace)?;
        ctx.set_final("lambda_max_h", top)?;
        ctx.set_final("trace_h_times_lr_over_2", trace * cfg.lr / 2.0)?;
        ctx.set_final("lambda_max_times_lr_over_2", top * cfg.lr / 2.0)?;
    }
    Ok(())
}

/// One (S)GD step of the diagonal net on the minibatch (xb, yb) of ½·mean(f − y)²:
/// ∂L/∂β = Xᵀr/B; ∂β/∂u = 2u, ∂β/∂v = −2v.
fn diagonal_step(u: &mut Tensor, v: &mut Tensor, xb: &Tensor, yb: &Tensor, lr: f64) {
    let r = xb.mv(&(u.square() - v.square())) - yb;
    let g_beta = xb.transpose(0, 1).mv(&r) / xb.size()[0] as f64;
    let (gu, gv) = (&g_beta * &*u * 2.0, &g_beta * &*v * -2.0);
    *u = &*u - gu * lr;
    *v = &*v - gv * lr;
}

fn run_diagonal(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
    let device = ctx.device;
    let opts = (Kind::Double, device);
    let mut rng = Rng::new(ctx.seed ^ 0x56D);
    let (n, d) = (cfg.samples, cfg.dim);
    let xs: Vec<f64> = (0..n * d).map(|_| rng.normal()).collect();
    let x = Tensor::from_slice(&xs).view([n, d]).to_device(device);
    let mut support: Vec<i64> = (0..d).collect();
    rng.shuffle(&mut support);
    let mut beta_star = vec![0.0f64; d as usize];
    for &j in &support[..cfg.sparsity as usize] {
        beta_star[j as usize] = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
    }
    let beta_star = Tensor::from_slice(&beta_star).to_device(device);
    let y = x.mv(&beta_star);
    let u = Tensor::full([d], cfg.init, opts);
    let v = Tensor::full([d], cfg.init, opts);
    let loss_of = |u: &Tensor, v: &Tensor| f64::try_from((x.mv(&(u.square() - v.square())) - &y).square().mean(Kind::Double) * 0.5).expect("scalar");
    let mut state = (u, v);
    let diverged = train_to_interpolation(cfg, ctx, &mut rng, &x, &y, &mut state, |(u, v), xb, yb| diagonal_step(u, v, xb, yb, cfg.lr), |(u, v)| loss_of(u, v))?;
    let (u, v) = state;
    if !diverged {
        let beta = u.square() - v.square();
        let (trace, top) = curvature(&x, &u, &v);
        ctx.set_final("final_train_loss", loss_of(&u, &v))?;
        ctx.set_final("test_error", f64::try_from((&beta - &beta_star).square().sum(Kind::Double))?)?;
        ctx.set_final("beta_l1", f64::try_from(beta.abs().sum(Kind::Double))?)?;
        ctx.set_final("trace_h", trace)?;
        ctx.set_final("lambda_max_h", top)?;
        // Tr(H)·η/2 ≤ 1 is SGD's stability condition, λ_max·η/2 ≤ 1 GD's.
        ctx.set_final("trace_h_times_lr_over_2", trace * cfg.lr / 2.0)?;
        ctx.set_final("lambda_max_times_lr_over_2", top * cfg.lr / 2.0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::ProgressMode;
    use crate::train::second_order::{exact_hessian, hutchinson_trace};
    use tch::Device;

    /// The module's own loop (`train_to_interpolation`) with the module's diagonal-net step
    /// (`diagonal_step`) from (u0, v0): `batch` = n is GD, 1 is SGD; returns (diverged, u, v).
    #[allow(clippy::too_many_arguments)]
    fn run_loop(x: &Tensor, y: &Tensor, u0: &Tensor, v0: &Tensor, lr: f64, batch: i64, max_steps: u64, tol: f64, seed: u64, tag: &str) -> (bool, Tensor, Tensor) {
        let dir = std::env::temp_dir().join(format!("reglab-sgd-stability-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ctx = RunCtx::new(&dir, tag, 0, Device::Cpu, ProgressMode::Quiet, &dir).unwrap();
        let cfg = Config { lr, batch, max_steps, tol, ..Config::default() };
        let mut state = (u0.copy(), v0.copy());
        let loss = |(u, v): &(Tensor, Tensor)| f64::try_from((x.mv(&(u.square() - v.square())) - y).square().mean(Kind::Double) * 0.5).unwrap();
        let diverged = train_to_interpolation(&cfg, &mut ctx, &mut Rng::new(seed), x, y, &mut state, |(u, v), xb, yb| diagonal_step(u, v, xb, yb, lr), loss).unwrap();
        ctx.finish().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        (diverged, state.0, state.1)
    }

    #[test]
    fn gauss_newton_trace_equals_the_hessian_at_interpolation() {
        // n = 3 < d = 4 with y = f(x; u, v) exactly: the residual term vanishes, H = JᵀJ/n.
        tch::manual_seed(0);
        let x = Tensor::randn([3, 4], (Kind::Double, Device::Cpu));
        let (u0, v0) = (Tensor::from_slice(&[0.7f64, -0.2, 0.5, 1.1]), Tensor::from_slice(&[0.3f64, 0.4, -0.6, 0.2]));
        let y = x.mv(&(u0.square() - v0.square()));
        let p = Tensor::cat(&[&u0, &v0], 0).set_requires_grad(true);
        let mut loss = || {
            let (u, v) = (p.narrow(0, 0, 4), p.narrow(0, 4, 4));
            (x.mv(&(u.square() - v.square())) - &y).square().mean(Kind::Double) * 0.5
        };
        let h = exact_hessian(&mut loss, &p);
        let (trace, top) = curvature(&x, &u0, &v0);
        let exact_trace = f64::try_from(h.trace()).unwrap();
        assert!((exact_trace - trace).abs() < 1e-10, "{exact_trace} vs {trace}");
        let exact_top = Vec::<f64>::try_from(h.linalg_eigvalsh("L")).unwrap().into_iter().fold(f64::MIN, f64::max);
        assert!((exact_top - top).abs() < 1e-10);
        // Hutchinson's standard error is √(2 Σ_{i≠j} H_ij² / probes); allow 5 of them.
        let probes = 4000;
        let off = f64::try_from(h.square().sum(Kind::Double) - h.diagonal(0, 0, 1).square().sum(Kind::Double)).unwrap();
        let est = hutchinson_trace(&mut loss, std::slice::from_ref(&p), probes);
        assert!((est - trace).abs() < 5.0 * (2.0 * off / probes as f64).sqrt() + 1e-9, "{est} vs {trace}");
        // Tr(H) = (4/n) Σ_i Σ_j x_ij² (u_j² + v_j²).
        let closed = f64::try_from((x.square().sum_dim_intlist([0].as_slice(), false, Kind::Double) * (u0.square() + v0.square())).sum(Kind::Double)).unwrap() * 4.0 / 3.0;
        assert!((closed - trace).abs() < 1e-10);
    }

    #[test]
    fn relu_gradients_jacobian_and_curvature_match_autograd_and_the_closed_form() {
        tch::manual_seed(4);
        let opts = (Kind::Double, Device::Cpu);
        let (n, d, m) = (7, 3, 5);
        let x = Tensor::randn([n, d], opts);
        let y = Tensor::randn([n], opts);
        let w = Tensor::randn([m, d], opts).set_requires_grad(true);
        let a = Tensor::randn([m], opts).set_requires_grad(true);
        // Hand gradients of ½·mean(f − y)² against autograd.
        let loss = (relu_net(&w, &a, &x) - &y).square().mean(Kind::Double) * 0.5;
        let auto = Tensor::run_backward(&[&loss], &[&w, &a], false, false);
        let (gw, ga) = relu_grads(&w.detach(), &a.detach(), &x, &y);
        assert!(f64::try_from((&gw - &auto[0]).abs().max()).unwrap() < 1e-12);
        assert!(f64::try_from((&ga - &auto[1]).abs().max()).unwrap() < 1e-12);
        // Each Jacobian row is ∇_θ f_i with θ = (a, vec W).
        let j = relu_jacobian(&w.detach(), &a.detach(), &x);
        for i in 0..n {
            let fi = relu_net(&w, &a, &x.narrow(0, i, 1)).sum(Kind::Double);
            let g = Tensor::run_backward(&[&fi], &[&a, &w], false, false);
            let row = Tensor::cat(&[g[0].shallow_clone(), g[1].view([-1])], 0);
            assert!(f64::try_from((&row - j.get(i)).abs().max()).unwrap() < 1e-12);
        }
        // Tr(H) = (1/n) Σ_i Σ_k [ReLU(w_kᵀx_i)² + a_k² 1[w_kᵀx_i > 0] ‖x_i‖²]; λ_max from the n × n Gram
        // equals the top eigenvalue of the P × P matrix JᵀJ/n.
        let (w0, a0) = (w.detach(), a.detach());
        let h = x.mm(&w0.transpose(0, 1));
        let closed = f64::try_from(
            (h.relu().square() + h.gt(0.0).to_kind(Kind::Double) * a0.square().unsqueeze(0) * x.square().sum_dim_intlist([1].as_slice(), true, Kind::Double))
                .sum(Kind::Double),
        )
        .unwrap()
            / n as f64;
        let (trace, top) = relu_curvature(&w0, &a0, &x);
        assert!((trace - closed).abs() < 1e-10 * closed, "{trace} vs {closed}");
        let big = j.transpose(0, 1).mm(&j) / n as f64;
        let big_top = Vec::<f64>::try_from(big.linalg_eigvalsh("L")).unwrap().into_iter().fold(f64::MIN, f64::max);
        assert!((top - big_top).abs() < 1e-9 * big_top, "{top} vs {big_top}");
    }

    #[test]
    fn gd_converges_only_to_minima_with_eta_lambda_max_at_most_two() {
        // A 2-d diagonal net at an exact minimum (u*, v*), n = d = 2 so λ_max(H) < Tr(H) differ.
        let xv = [[1.0f64, 0.4], [0.2, 0.9]];
        let (uv, vv) = ([0.8f64, 0.3], [0.2f64, 0.6]);
        let x = Tensor::from_slice(&[xv[0][0], xv[0][1], xv[1][0], xv[1][1]]).view([2, 2]);
        let (us, vs) = (Tensor::from_slice(&uv), Tensor::from_slice(&vv));
        let y = x.mv(&(us.square() - vs.square()));
        let (trace, top) = curvature(&x, &us, &vs);
        // Independent closed form: H = JᵀJ/n has the nonzero spectrum of the 2×2 Gram
        // G_ab = (4/n) Σ_j x_aj x_bj (u_j² + v_j²).
        let g = |a: usize, b: usize| (0..2).map(|j| 4.0 * xv[a][j] * xv[b][j] * (uv[j] * uv[j] + vv[j] * vv[j])).sum::<f64>() / 2.0;
        let (t, det) = (g(0, 0) + g(1, 1), g(0, 0) * g(1, 1) - g(0, 1) * g(0, 1));
        assert!((trace - t).abs() < 1e-12, "{trace} vs {t}");
        assert!((top - (t + (t * t - 4.0 * det).sqrt()) / 2.0).abs() < 1e-12, "{top}");
        assert!(0.95 * 2.0 / top > 1.05 * 2.0 / trace, "the case separates GD's bound from SGD's");
        let loss = |u: &Tensor, v: &Tensor| f64::try_from((x.mv(&(u.square() - v.square())) - &y).square().mean(Kind::Double) * 0.5).unwrap();
        let u0 = &us + Tensor::from_slice(&[1e-4f64, -1e-4]);

        // η·λ_max = 1.9 < 2: full-batch GD returns to the same minimum (its λ_max moves O(1e-4)),
        // although that minimum breaks SGD's bound Tr(H) ≤ 2/η.
        let lr = 0.95 * 2.0 / top;
        let (diverged, u, v) = run_loop(&x, &y, &u0, &vs, lr, 2, 5000, 1e-24, 0, "gd-below");
        assert!(!diverged && loss(&u, &v) < 1e-20, "η below 2/λ_max must converge: {}", loss(&u, &v));
        let (trace_end, top_end) = curvature(&x, &u, &v);
        assert!((top_end - top).abs() < 1e-3 * top, "stayed at the minimum: {top_end} vs {top}");
        assert!(trace_end * lr / 2.0 > 1.1, "{trace_end}");

        // η·λ_max = 2.1 > 2: the minimum is linearly unstable, the 1e-4 perturbation grows and GD
        // can only settle at another minimum with λ_max ≤ 2/η (here a flatter one, ≈ 1.707).
        let lr = 1.05 * 2.0 / top;
        let (diverged, u, v) = run_loop(&x, &y, &u0, &vs, lr, 2, 5000, 1e-24, 0, "gd-above");
        assert!(!diverged && loss(&u, &v) < 1e-20, "{}", loss(&u, &v));
        let (_, top_end) = curvature(&x, &u, &v);
        assert!(top_end * lr / 2.0 <= 1.0, "GD converged to a minimum with η·λ_max/2 = {}", top_end * lr / 2.0);
        assert!(top_end < 0.97 * top, "left the sharp minimum: {top_end} vs {top}");
    }

    #[test]
    fn sgd_batch_one_multiplies_the_error_by_one_minus_eta_tr_h_i_of_each_drawn_sample() {
        // d = 1: near the minimum the per-sample Hessian H_i = ∇f_i∇f_iᵀ has the single nonzero
        // eigenvalue Tr(H_i) = 4x_i²(u² + v²), and an SGD step on sample i maps the error
        // e = β − β* to (1 − η Tr(H_i))·e + O(e²). The loop's draws are replayed from the same Rng.
        let xs = [0.5f64, 1.3, 1.7];
        let x = Tensor::from_slice(&xs).view([3, 1]);
        let (us, vs) = (Tensor::from_slice(&[0.6f64]), Tensor::from_slice(&[0.3f64]));
        let y = x.mv(&(us.square() - vs.square()));
        let beta = |u: &Tensor, v: &Tensor| f64::try_from(u.square() - v.square()).unwrap();
        let beta_star = beta(&us, &vs);
        let h: Vec<f64> = (0..3).map(|i| curvature(&x.narrow(0, i, 1), &us, &vs).0).collect();
        for (hi, xi) in h.iter().zip(xs) {
            assert!((hi - 4.0 * xi * xi * (0.36 + 0.09)).abs() < 1e-12, "{hi}");
        }
        // η = 0.5: multipliers 0.775, −0.521, −1.601, so one sample alone would blow up.
        let (lr, steps, seed) = (0.5, 20u64, 11u64);
        let u0 = Tensor::from_slice(&[0.6f64 + 1e-7]);
        let e0 = beta(&u0, &vs) - beta_star;
        let (diverged, u, v) = run_loop(&x, &y, &u0, &vs, lr, 1, steps, 0.0, seed, "sgd");
        assert!(!diverged);
        let mut rng = Rng::new(seed);
        let predicted: f64 = (0..steps).map(|_| 1.0 - lr * h[rng.below(3) as usize]).product();
        let ratio = (beta(&u, &v) - beta_star) / e0;
        assert!((ratio / predicted - 1.0).abs() < 1e-4, "e_T/e_0 = {ratio}, Π(1 − η Tr H_i) = {predicted}");
    }
}
