//! An adaptive embedded Runge–Kutta solver (Dormand–Prince 5(4), FSAL) in tch ops, so autograd
//! flows through every stage (a discrete adjoint), with a PI step-size controller, an NFE counter
//! and each accepted step's local error estimate kept as a differentiable tensor — what a
//! regulariser of the solver's own heuristics (ERNODE) needs.
//!
//! The error norm and the controller follow OrdinaryDiffEq.jl, the solver the ERNODE code runs
//! on: EEst = RMS over every element of the (batched) state of h·Σ(b_i − b̃_i)k_i /
//! (atol + rtol·max(|y_n|, |y_{n+1}|)); a step is accepted iff EEst ≤ 1; the next step is
//! h·clamp(γ·EEst^{−β₁}·EEst_prev^{β₂}, q_min, q_max) with γ 0.9, q_min 0.2, q_max 10 and the PI
//! constants OrdinaryDiffEq gives Tsit5 (the solver of the ERNODE code), β₁ = 7/50, β₂ = 2/25
//! (its own DP5 uses Hairer's 0.17 / 0.04; β₂ = 0, β₁ = 1/5 is the plain I controller); after a
//! rejection h·max(q_min, γ·EEst^{−β₁}), never growing.
//! Step sizes and accept/reject decisions are plain numbers (no gradient through them).

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// An explicit embedded Runge–Kutta tableau: stage nodes c, the strictly lower matrix a, the
/// solution weights b and the embedded (lower-order) weights b̂.
#[derive(Debug, Clone)]
pub struct Tableau {
    pub c: Vec<f64>,
    pub a: Vec<Vec<f64>>,
    pub b: Vec<f64>,
    pub b_hat: Vec<f64>,
    /// Order of the solution weights b.
    pub order: u32,
    /// The last stage is f at the new solution (first-same-as-last): a step costs stages − 1 evaluations.
    pub fsal: bool,
}

/// Dormand & Prince (1980), the 5(4) pair of `dopri5` / DifferentialEquations' `DP5`.
pub fn dormand_prince() -> Tableau {
    Tableau {
        c: vec![0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0],
        a: vec![
            vec![],
            vec![1.0 / 5.0],
            vec![3.0 / 40.0, 9.0 / 40.0],
            vec![44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
            vec![19372.0 / 6561.0, -25360.0 / 2187.0, 64448.0 / 6561.0, -212.0 / 729.0],
            vec![9017.0 / 3168.0, -355.0 / 33.0, 46732.0 / 5247.0, 49.0 / 176.0, -5103.0 / 18656.0],
            vec![35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0],
        ],
        b: vec![35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0, 0.0],
        b_hat: vec![5179.0 / 57600.0, 0.0, 7571.0 / 16695.0, 393.0 / 640.0, -92097.0 / 339200.0, 187.0 / 2100.0, 1.0 / 40.0],
        order: 5,
        fsal: true,
    }
}

/// Tolerances and controller constants; the defaults are OrdinaryDiffEq's for Tsit5.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub rtol: f64,
    pub atol: f64,
    /// First step size (no automatic initial-dt heuristic).
    pub dt0: f64,
    /// Accepted + rejected steps before giving up.
    pub max_steps: usize,
    pub safety: f64,
    pub q_min: f64,
    pub q_max: f64,
    pub beta1: f64,
    pub beta2: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options { rtol: 1e-6, atol: 1e-6, dt0: 0.1, max_steps: 500, safety: 0.9, q_min: 0.2, q_max: 10.0, beta1: 7.0 / 50.0, beta2: 2.0 / 25.0 }
    }
}

/// One accepted step.
#[derive(Debug)]
pub struct Step {
    pub t: f64,
    pub h: f64,
    /// EEst of the step, a 0-d tensor in the graph of the dynamics' parameters.
    pub error: Tensor,
}

#[derive(Debug)]
pub struct Solution {
    /// The state at t₁.
    pub y: Tensor,
    /// Function evaluations, rejected steps' included.
    pub nfe: usize,
    pub accepted: usize,
    pub rejected: usize,
    pub steps: Vec<Step>,
}

impl Solution {
    /// R_E = mean_j EEst_j·h_j over accepted steps (the official code's aggregate; the paper's
    /// sum is this times the step count).
    pub fn error_regulariser(&self) -> Tensor {
        let terms: Vec<Tensor> = self.steps.iter().map(|s| &s.error * s.h).collect();
        Tensor::stack(&terms, 0).mean(Kind::Double)
    }
}

/// The dynamics: f(t, y) for a state tensor of any shape.
pub type Dynamics<'a> = dyn FnMut(f64, &Tensor) -> Tensor + 'a;

/// One attempted step from (t, y) with k₁ = f(t, y): returns (y_new, k_last, EEst).
fn attempt(tab: &Tableau, f: &mut Dynamics, t: f64, y: &Tensor, k1: &Tensor, h: f64, opts: &Options) -> (Tensor, Tensor, Tensor) {
    let s = tab.c.len();
    let mut k: Vec<Tensor> = vec![k1.shallow_clone()];
    for i in 1..s {
        let mut yi = y.shallow_clone();
        for (j, aij) in tab.a[i].iter().enumerate() {
            if *aij != 0.0 {
                yi = yi + &k[j] * (h * aij);
            }
        }
        k.push(f(t + tab.c[i] * h, &yi));
    }
    // With FSAL the last stage's argument is the 5th-order solution itself.
    let y_new = if tab.fsal {
        let mut yn = y.shallow_clone();
        for (j, aij) in tab.a[s - 1].iter().enumerate() {
            if *aij != 0.0 {
                yn = yn + &k[j] * (h * aij);
            }
        }
        yn
    } else {
        let mut yn = y.shallow_clone();
        for (j, bj) in tab.b.iter().enumerate() {
            if *bj != 0.0 {
                yn = yn + &k[j] * (h * bj);
            }
        }
        yn
    };
    let mut err = Tensor::zeros_like(y);
    for (j, (bj, bhj)) in tab.b.iter().zip(&tab.b_hat).enumerate() {
        let d = bj - bhj;
        if d != 0.0 {
            err = err + &k[j] * (h * d);
        }
    }
    let scale = y.abs().maximum(&y_new.abs()) * opts.rtol + opts.atol;
    let eest = (err / scale).square().mean(Kind::Double).sqrt();
    (y_new, k.pop().unwrap(), eest)
}

/// Solves y' = f(t, y) from y(t₀) = y₀ to t₁ > t₀ adaptively.
pub fn solve(tab: &Tableau, f: &mut Dynamics, y0: &Tensor, t0: f64, t1: f64, opts: &Options) -> Result<Solution> {
    if !(t1 > t0) || !(opts.dt0 > 0.0) || !(opts.rtol >= 0.0 && opts.atol > 0.0) {
        bail!("ODE solve needs t₁ > t₀, dt0 > 0, atol > 0 and rtol ≥ 0 (got t₀ {t0}, t₁ {t1}, dt0 {}, atol {}, rtol {})", opts.dt0, opts.atol, opts.rtol);
    }
    let (mut t, mut y) = (t0, y0.shallow_clone());
    let mut k1 = f(t, &y);
    let mut nfe = 1;
    let (mut accepted, mut rejected) = (0, 0);
    let mut steps = Vec::new();
    let mut h = opts.dt0.min(t1 - t0);
    let mut e_prev = 1e-4f64; // OrdinaryDiffEq's qoldinit
    while t < t1 {
        if accepted + rejected >= opts.max_steps {
            bail!("ODE solve stopped after {} steps at t = {t:.6} of {t1} (h = {h:.3e}); raise the step budget or loosen rtol/atol", opts.max_steps);
        }
        let last = t + h >= t1 - 1e-12 * (t1 - t0);
        let hh = if last { t1 - t } else { h };
        let (y_new, k_last, eest) = attempt(tab, f, t, &y, &k1, hh, opts);
        nfe += tab.c.len() - 1;
        let e = eest.double_value(&[]);
        if !e.is_finite() {
            bail!("ODE solve: the error estimate is {e} at t = {t:.6} (the dynamics returned non-finite values)");
        }
        if e <= 1.0 {
            accepted += 1;
            steps.push(Step { t, h: hh, error: eest });
            t = if last { t1 } else { t + hh };
            y = y_new;
            k1 = if tab.fsal {
                k_last
            } else {
                nfe += 1;
                f(t, &y)
            };
            let e_safe = e.max(1e-10);
            let q = (opts.safety * e_safe.powf(-opts.beta1) * e_prev.powf(opts.beta2)).clamp(opts.q_min, opts.q_max);
            e_prev = e.max(1e-4);
            h = hh * q;
        } else {
            rejected += 1;
            h = hh * (opts.safety * e.powf(-opts.beta1)).clamp(opts.q_min, 1.0);
        }
    }
    Ok(Solution { y, nfe, accepted, rejected, steps })
}

/// Replays a given step sequence (no control): the state at the end and each step's EEst. With the
/// steps of an adaptive solve it reproduces that solve's accepted path, so finite differences of a
/// loss through it see a frozen step sequence.
pub fn replay(tab: &Tableau, f: &mut Dynamics, y0: &Tensor, t0: f64, hs: &[f64], opts: &Options) -> Solution {
    let (mut t, mut y) = (t0, y0.shallow_clone());
    let mut k1 = f(t, &y);
    let mut steps = Vec::new();
    for &h in hs {
        let (y_new, k_last, eest) = attempt(tab, f, t, &y, &k1, h, opts);
        steps.push(Step { t, h, error: eest });
        t += h;
        y = y_new;
        k1 = if tab.fsal { k_last } else { f(t, &y) };
    }
    let per_step = if tab.fsal { tab.c.len() - 1 } else { tab.c.len() };
    Solution { y, nfe: 1 + per_step * hs.len(), accepted: hs.len(), rejected: 0, steps }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn scalar(v: f64) -> Tensor {
        Tensor::from_slice(&[v]).to_kind(Kind::Double)
    }

    #[test]
    fn dormand_prince_tableau_is_consistent_and_fifth_order() {
        let t = dormand_prince();
        for (i, row) in t.a.iter().enumerate() {
            assert!((row.iter().sum::<f64>() - t.c[i]).abs() < 1e-14, "row {i} sums to c");
        }
        assert!((t.b.iter().sum::<f64>() - 1.0).abs() < 1e-14);
        assert!((t.b_hat.iter().sum::<f64>() - 1.0).abs() < 1e-14);
        // FSAL: the last row of a is b.
        assert!(t.a[6].iter().zip(&t.b).all(|(a, b)| (a - b).abs() < 1e-15));
        // Bushy-tree order conditions Σ b_i c_i^{k−1} = 1/k up to 5, and two deeper trees.
        let ac = |i: usize, p: i32| t.a[i].iter().enumerate().map(|(j, a)| a * t.c[j].powi(p)).sum::<f64>();
        for k in 1..=5 {
            let s: f64 = t.b.iter().zip(&t.c).map(|(b, c)| b * c.powi(k - 1)).sum();
            assert!((s - 1.0 / k as f64).abs() < 1e-13, "k {k}: {s}");
        }
        let s: f64 = (0..7).map(|i| t.b[i] * ac(i, 1)).sum();
        assert!((s - 1.0 / 6.0).abs() < 1e-13);
        let s: f64 = (0..7).map(|i| t.b[i] * t.c[i] * ac(i, 2)).sum();
        assert!((s - 1.0 / 15.0).abs() < 1e-13);
        // The embedded weights are 4th order but not 5th.
        let s4: f64 = t.b_hat.iter().zip(&t.c).map(|(b, c)| b * c.powi(3)).sum();
        assert!((s4 - 0.25).abs() < 1e-13);
        let s5: f64 = t.b_hat.iter().zip(&t.c).map(|(b, c)| b * c.powi(4)).sum();
        assert!((s5 - 0.2).abs() > 1e-5);
    }

    #[test]
    fn fixed_steps_converge_at_fifth_order_on_exponential_decay() {
        let tab = dormand_prince();
        let opts = Options::default();
        let err = |n: usize| {
            let hs = vec![1.0 / n as f64; n];
            let s = replay(&tab, &mut |_t, y: &Tensor| -y, &scalar(1.0), 0.0, &hs, &opts);
            (s.y.double_value(&[0]) - (-1f64).exp()).abs()
        };
        let slope = (err(4) / err(16)).log2() / 2.0;
        assert!((slope - 5.0).abs() < 0.3, "observed order {slope}");
    }

    #[test]
    fn adaptive_error_follows_the_tolerance_and_nfe_grows_as_it_tightens() {
        let tab = dormand_prince();
        // Harmonic oscillator y'' = −y as a 2-vector: y(t) = (cos t, −sin t) from (1, 0).
        let mut osc = |_t: f64, y: &Tensor| Tensor::stack(&[y.get(1), -y.get(0)], 0);
        let mut last_nfe = 0;
        let mut last_err = f64::INFINITY;
        for tol in [1e-4, 1e-6, 1e-8, 1e-10] {
            let opts = Options { rtol: tol, atol: tol, ..Default::default() };
            let s = solve(&tab, &mut osc, &Tensor::from_slice(&[1.0f64, 0.0]), 0.0, 10.0, &opts).unwrap();
            let (a, b) = (s.y.double_value(&[0]), s.y.double_value(&[1]));
            let err = ((a - 10f64.cos()).powi(2) + (b + 10f64.sin()).powi(2)).sqrt();
            assert!(err < 100.0 * tol, "tol {tol}: global error {err}");
            assert!(err < last_err && s.nfe > last_nfe, "tol {tol}: error {err}, NFE {}", s.nfe);
            // FSAL accounting: one evaluation to start, six per attempted step.
            assert_eq!(s.nfe, 1 + 6 * (s.accepted + s.rejected));
            assert!((s.steps.iter().map(|st| st.h).sum::<f64>() - 10.0).abs() < 1e-12);
            last_nfe = s.nfe;
            last_err = err;
        }
        // y' = −y to t = 1 within the tolerance.
        let opts = Options { rtol: 1e-8, atol: 1e-8, ..Default::default() };
        let s = solve(&tab, &mut |_t, y: &Tensor| -y, &scalar(1.0), 0.0, 1.0, &opts).unwrap();
        assert!((s.y.double_value(&[0]) - (-1f64).exp()).abs() < 1e-7);
    }

    #[test]
    fn error_estimate_vanishes_for_dynamics_the_embedded_pair_integrates_exactly() {
        let tab = dormand_prince();
        let opts = Options::default();
        // Constant f and f cubic in t: both weights are exact, so EEst = 0 to rounding (EEst is in
        // units of the tolerance, 1e−6 here, so rounding shows up near 1e−11).
        let s = solve(&tab, &mut |_t, y: &Tensor| Tensor::ones_like(y) * 3.0, &Tensor::zeros([4], (Kind::Double, Device::Cpu)), 0.0, 1.0, &opts).unwrap();
        assert!(s.steps.iter().all(|st| st.error.double_value(&[]) < 1e-8));
        assert!(s.error_regulariser().double_value(&[]) < 1e-8);
        let s = solve(&tab, &mut |t, y: &Tensor| Tensor::ones_like(y) * (t * t * t - 2.0 * t), &scalar(0.0), 0.0, 2.0, &opts).unwrap();
        assert!(s.steps.iter().all(|st| st.error.double_value(&[]) < 1e-8));
        assert!((s.y.double_value(&[0]) - (4.0 - 4.0)).abs() < 1e-12);
        // …and not for t⁴ (beyond the 4th-order weights): h⁵-sized, far above rounding.
        let s = replay(&tab, &mut |t, y: &Tensor| Tensor::ones_like(y) * t.powi(4), &scalar(0.0), 0.0, &[0.5], &opts);
        assert!(s.steps[0].error.double_value(&[]) > 1e-2, "{}", s.steps[0].error.double_value(&[]));
    }

    #[test]
    fn controller_rejects_iff_eest_exceeds_one_and_scales_h_as_documented() {
        let tab = dormand_prince();
        // I controller (β₂ = 0, β₁ = 1/5), a big first step on a fast decay: the first attempt is
        // rejected and each next h follows h·clamp(0.9·EEst^{−1/5}, 0.2, 10).
        let opts = Options { rtol: 1e-9, atol: 1e-9, dt0: 1.0, beta1: 0.2, beta2: 0.0, ..Default::default() };
        let mut f = |_t: f64, y: &Tensor| y * -20.0;
        let s = solve(&tab, &mut f, &scalar(1.0), 0.0, 1.0, &opts).unwrap();
        assert!(s.rejected >= 1);
        // Re-run the first attempt by hand: its EEst > 1, and the accepted first step is smaller.
        let (_, _, e) = attempt(&tab, &mut f, 0.0, &scalar(1.0), &scalar(-20.0), 1.0, &opts);
        assert!(e.double_value(&[]) > 1.0);
        assert!(s.steps[0].h < 1.0);
        let mut checked = 0;
        for w in s.steps.windows(2) {
            let (e0, h0, h1) = (w[0].error.double_value(&[]), w[0].h, w[1].h);
            assert!(e0 <= 1.0);
            let want = h0 * (0.9 * e0.max(1e-10).powf(-0.2)).clamp(0.2, 10.0);
            // The last step is cut to land on t₁; otherwise h follows the rule exactly (when no
            // rejection came between, which would shrink it).
            if (w[1].t + h1 - 1.0).abs() > 1e-12 && h1 > want * (1.0 - 1e-12) {
                assert!((h1 - want).abs() < 1e-9 * want, "h {h1} vs {want}");
                checked += 1;
            }
        }
        assert!(checked >= 3, "only {checked} steps followed an accepted one");
        assert!(s.steps.iter().all(|st| st.error.double_value(&[]) <= 1.0));
    }

    #[test]
    fn regulariser_gradient_matches_finite_differences_with_the_steps_frozen() {
        let tab = dormand_prince();
        let opts = Options { rtol: 1e-5, atol: 1e-5, ..Default::default() };
        let theta = Tensor::from_slice(&[0.7f64, -1.3]).set_requires_grad(true);
        let y0 = Tensor::from_slice(&[0.5f64, 1.0]);
        let dynamics = |th: &Tensor| {
            let th = th.shallow_clone();
            move |t: f64, y: &Tensor| (y * &th).tanh() * (1.0 + t) + y.flip([0]) * 0.3
        };
        let s = solve(&tab, &mut dynamics(&theta), &y0, 0.0, 2.0, &opts).unwrap();
        let hs: Vec<f64> = s.steps.iter().map(|st| st.h).collect();
        let objective = |sol: &Solution| sol.error_regulariser() * 10.0 + sol.y.sum(Kind::Double);
        objective(&s).backward();
        let g = Vec::<f64>::try_from(theta.grad()).unwrap();
        for i in 0..2 {
            let eps = 1e-6;
            let at = |d: f64| {
                let mut v = vec![0.7, -1.3];
                v[i] += d;
                let th = Tensor::from_slice(&v);
                objective(&replay(&tab, &mut dynamics(&th), &y0, 0.0, &hs, &opts)).double_value(&[])
            };
            let fd = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!((fd - g[i]).abs() < 1e-6 * fd.abs().max(1.0), "θ{i}: fd {fd} vs autograd {}", g[i]);
        }
        // The replay reproduces the adaptive solve's accepted path.
        let r = replay(&tab, &mut dynamics(&theta), &y0, 0.0, &hs, &opts);
        assert!((r.y - &s.y).abs().max().double_value(&[]) < 1e-14);
    }

    #[test]
    fn error_norm_is_an_rms_scaled_by_atol_plus_rtol_times_the_state() {
        let tab = dormand_prince();
        let eest = |y: &[f64], rtol: f64, atol: f64| {
            let y = Tensor::from_slice(y);
            let opts = Options { rtol, atol, ..Default::default() };
            let mut f = |_t: f64, y: &Tensor| -(y * y);
            let k1 = f(0.0, &y);
            attempt(&tab, &mut f, 0.0, &y, &k1, 0.05, &opts).2.double_value(&[])
        };
        // y' = −y². RMS: n identical components give one component's EEst (a sum would grow like √n).
        let one = eest(&[0.8], 1e-3, 1e-9);
        assert!((eest(&[0.8; 9], 1e-3, 1e-9) - one).abs() < 1e-12 * one);
        // rtol-only scales by max(|y_n|, |y_{n+1}|) = |y₀| = 0.8 on this decaying solution, atol-only
        // by 1: their ratio is 0.8 (swapped tolerances would give 1.25, the end state ≈ 0.77).
        let rel = eest(&[0.8], 1e-6, 1e-300);
        let abs = eest(&[0.8], 0.0, 1e-6);
        assert!((abs / rel - 0.8).abs() < 1e-9, "{}", abs / rel);
    }

    #[test]
    fn nfe_counts_every_call_of_the_dynamics() {
        let tab = dormand_prince();
        let calls = std::cell::Cell::new(0usize);
        let opts = Options { rtol: 1e-9, atol: 1e-9, dt0: 1.0, ..Default::default() };
        let mut f = |_t: f64, y: &Tensor| {
            calls.set(calls.get() + 1);
            y * -20.0
        };
        let s = solve(&tab, &mut f, &scalar(1.0), 0.0, 1.0, &opts).unwrap();
        assert!(s.rejected >= 1, "the test wants a rejection on the way");
        assert_eq!(s.nfe, calls.get());
    }

    #[test]
    fn the_pi_controller_uses_the_previous_accepted_error() {
        let tab = dormand_prince();
        // A small first step so nothing is rejected: every next h is the PI rule on the last two
        // accepted errors (the first with OrdinaryDiffEq's initial 1e−4).
        let opts = Options { rtol: 1e-8, atol: 1e-8, dt0: 1e-4, ..Default::default() };
        let s = solve(&tab, &mut |t, y: &Tensor| -y * (1.0 + t), &scalar(1.0), 0.0, 2.0, &opts).unwrap();
        assert_eq!(s.rejected, 0);
        let mut e_prev = 1e-4f64;
        let mut checked = 0;
        for w in s.steps.windows(2) {
            let e = w[0].error.double_value(&[]);
            let want = w[0].h * (0.9 * e.max(1e-10).powf(-7.0 / 50.0) * e_prev.powf(2.0 / 25.0)).clamp(0.2, 10.0);
            if (w[1].t + w[1].h - 2.0).abs() > 1e-12 {
                assert!((w[1].h - want).abs() < 1e-9 * want, "step at t {}: h {} vs {want}", w[1].t, w[1].h);
                checked += 1;
            }
            e_prev = e.max(1e-4);
        }
        assert!(checked >= 5, "{checked}");
    }
}
