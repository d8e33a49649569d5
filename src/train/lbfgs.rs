//! A small L-BFGS on tensors (two-loop recursion, backtracking Armijo line search), for the
//! smooth and piecewise-smooth convex problems of the OT papers.
//!
//! Stopping follows scipy's L-BFGS-B as POT calls it: `gtol` on the largest gradient entry and
//! `ftol` on the relative reduction (f_k − f_{k+1}) / max(|f_k|, |f_{k+1}|, 1).

use anyhow::Result;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy)]
pub struct LbfgsOptions {
    pub max_iter: usize,
    pub history: usize,
    pub gtol: f64,
    pub ftol: f64,
    pub max_line_search: usize,
}

impl Default for LbfgsOptions {
    fn default() -> Self {
        LbfgsOptions { max_iter: 500, history: 10, gtol: 1e-9, ftol: 1e-9, max_line_search: 40 }
    }
}

#[derive(Debug)]
pub struct LbfgsResult {
    pub x: Tensor,
    pub f: f64,
    pub iterations: usize,
    pub grad_inf: f64,
    pub converged: bool,
    pub reason: &'static str,
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from(crate::reduce::dot(a, b)).expect("scalar")
}

fn inf_norm(a: &Tensor) -> f64 {
    f64::try_from(a.abs().max()).expect("scalar")
}

/// Minimises `f` (returning value and gradient, both for a flat f64 tensor) from `x0`. An
/// error from `f` (e.g. Ctrl-C noticed through the run context) stops the solve and is returned.
pub fn minimize(mut f: impl FnMut(&Tensor) -> Result<(f64, Tensor)>, x0: Tensor, opts: LbfgsOptions) -> Result<LbfgsResult> {
    let x0 = x0.to_kind(Kind::Double);
    let mut x = x0;
    let (mut fx, mut g) = f(&x)?;
    let mut s_hist: Vec<Tensor> = vec![];
    let mut y_hist: Vec<Tensor> = vec![];
    let mut iterations = 0;
    if inf_norm(&g) <= opts.gtol {
        let grad_inf = inf_norm(&g);
        return Ok(LbfgsResult { x, f: fx, iterations, grad_inf, converged: true, reason: "gradient below gtol" });
    }
    while iterations < opts.max_iter {
        // Two-loop recursion: d = −H g.
        let mut q = g.copy();
        let mut alphas = vec![0.0; s_hist.len()];
        for i in (0..s_hist.len()).rev() {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            alphas[i] = rho * dot(&s_hist[i], &q);
            q -= &y_hist[i] * alphas[i];
        }
        if let (Some(s), Some(y)) = (s_hist.last(), y_hist.last()) {
            q *= dot(s, y) / dot(y, y);
        } else {
            // First step: scale so the step has unit length, as scipy does.
            q *= 1.0 / inf_norm(&g).max(dot(&g, &g).sqrt());
        }
        for i in 0..s_hist.len() {
            let rho = 1.0 / dot(&y_hist[i], &s_hist[i]);
            let beta = rho * dot(&y_hist[i], &q);
            q += &s_hist[i] * (alphas[i] - beta);
        }
        let mut d = -q;
        let mut slope = dot(&g, &d);
        if !(slope < 0.0) {
            // Not a descent direction (a nonsmooth kink, or a NaN from a degenerate curvature
            // pair): restart from steepest descent.
            s_hist.clear();
            y_hist.clear();
            d = -&g / dot(&g, &g).sqrt();
            slope = dot(&g, &d);
        }
        let mut t = 1.0;
        let mut accepted = None;
        for _ in 0..opts.max_line_search {
            let x_new = &x + &d * t;
            let (f_new, g_new) = f(&x_new)?;
            if f_new.is_finite() && f_new <= fx + 1e-4 * t * slope {
                accepted = Some((x_new, f_new, g_new));
                break;
            }
            t *= 0.5;
        }
        iterations += 1;
        let Some((x_new, f_new, g_new)) = accepted else {
            let grad_inf = inf_norm(&g);
            return Ok(LbfgsResult { x, f: fx, iterations, grad_inf, converged: false, reason: "line search failed" });
        };
        let s = &x_new - &x;
        let y = &g_new - &g;
        if dot(&s, &y) > 1e-12 * dot(&y, &y).max(1e-300) {
            s_hist.push(s);
            y_hist.push(y);
            if s_hist.len() > opts.history {
                let _ = s_hist.remove(0);
                let _ = y_hist.remove(0);
            }
        }
        let reduction = (fx - f_new) / fx.abs().max(f_new.abs()).max(1.0);
        x = x_new;
        fx = f_new;
        g = g_new;
        let grad_inf = inf_norm(&g);
        if grad_inf <= opts.gtol {
            return Ok(LbfgsResult { x, f: fx, iterations, grad_inf, converged: true, reason: "gradient below gtol" });
        }
        if reduction <= opts.ftol {
            return Ok(LbfgsResult { x, f: fx, iterations, grad_inf, converged: true, reason: "relative reduction of f below ftol" });
        }
    }
    let grad_inf = inf_norm(&g);
    Ok(LbfgsResult { x, f: fx, iterations, grad_inf, converged: false, reason: "max_iter reached" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn solves_an_ill_conditioned_quadratic() {
        // f(x) = ½ Σ d_i (x_i − c_i)², minimum at c.
        let d = Tensor::from_slice(&[1.0f64, 10.0, 100.0, 1000.0]);
        let c = Tensor::from_slice(&[1.0f64, -2.0, 0.5, 3.0]);
        let res = minimize(
            |x| {
                let r = x - &c;
                Ok((0.5 * f64::try_from((&d * &r * &r).sum(Kind::Double)).unwrap(), &d * &r))
            },
            Tensor::zeros([4], (Kind::Double, Device::Cpu)),
            LbfgsOptions { gtol: 1e-10, ftol: 0.0, ..Default::default() },
        )
        .unwrap();
        assert!(res.converged, "{}", res.reason);
        assert!(inf_norm(&(&res.x - &c)) < 1e-9);
    }

    #[test]
    fn solves_rosenbrock() {
        let res = minimize(
            |x| {
                let v = Vec::<f64>::try_from(x).unwrap();
                let (a, b) = (v[0], v[1]);
                let f = (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2);
                let g = [-2.0 * (1.0 - a) - 400.0 * a * (b - a * a), 200.0 * (b - a * a)];
                Ok((f, Tensor::from_slice(&g)))
            },
            Tensor::from_slice(&[-1.2f64, 1.0]),
            LbfgsOptions { gtol: 1e-8, ftol: 0.0, max_iter: 1000, ..Default::default() },
        )
        .unwrap();
        let v = Vec::<f64>::try_from(&res.x).unwrap();
        assert!((v[0] - 1.0).abs() < 1e-6 && (v[1] - 1.0).abs() < 1e-6, "{v:?} {}", res.reason);
    }
}
