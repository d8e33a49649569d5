//! Sharpness-aware minimisation (Foret et al. 2021) and the variants the domain-generalisation
//! papers build on it, as small step functions a paper composes with its own loss and optimiser.
//!
//! SAM: the gradient g = ∇L(w), an ascent to w + ε with ε = ρ·g/‖g‖ (ASAM, Kwon et al. 2021:
//! ε = ρ·T²g/‖Tg‖ with T = |w|), the gradient there, and back to w exactly, leaving ∇L(w + ε) in
//! the parameters' `.grad` for the optimiser's step — as the reference implementation
//! (davda54/sam, checked: `first_step`, `second_step`, `_grad_norm`) does, with its ‖Tg‖ + 1e-12
//! and the norm taken over every parameter together.
//!
//! SAGM (Wang et al. 2023, checked against Wang-pengfei/SAGM `domainbed/sagm/sagm.py`:
//! `perturb_weights`, `gradient_decompose`, `unperturb`): the ascent is ε = (ρ/(‖g‖ + 1e-12) − α)·g
//! (·|w|² when adaptive), and the update direction g_p + ½g − ½g_p = ½(g + g_p) with
//! g_p = ∇L(w + ε) — the gradient of L(w) + L(w + ε) that also aligns the two. Differences: w is
//! restored by copying (the reference subtracts ε, which rounds); BatchNorm's running statistics,
//! which the reference freezes for the second pass, are the caller's (the models these papers run
//! here have none).
//!
//! A method that builds its weight perturbation from a different loss than the one it differentiates
//! at w + ε (UDIM's, from the perturbed inputs) composes [`perturbation`] and [`gradients_at_offset`].

use anyhow::Result;
use tch::{Kind, Tensor};

use super::optim::zero_grads;

/// The SAM neighbourhood.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sam {
    pub rho: f64,
    /// ASAM's element-wise scaling by |w|.
    pub adaptive: bool,
}

/// SAGM: a SAM neighbourhood and the α that shortens its ascent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sagm {
    pub sam: Sam,
    pub alpha: f64,
}

/// What one SAM gradient computation measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamStep {
    /// L(w) and L(w + ε).
    pub loss: f64,
    pub perturbed_loss: f64,
}

/// What one SAGM gradient computation measured, with both gradients (one tensor per parameter).
#[derive(Debug)]
pub struct SagmStep {
    pub loss: f64,
    pub perturbed_loss: f64,
    /// g = ∇L(w) and g_p = ∇L(w + ε).
    pub clean: Vec<Tensor>,
    pub perturbed: Vec<Tensor>,
}

/// ∇`loss` with respect to `params`, as detached copies (zeros for a parameter the loss does not
/// reach); the loss value beside them. The gradients are also left in `.grad`.
pub fn gradients(params: &[Tensor], loss: &mut impl FnMut() -> Tensor) -> Result<(f64, Vec<Tensor>)> {
    zero_grads(params);
    let l = loss();
    l.backward();
    let grads = params.iter().map(|p| { let g = p.grad(); if g.defined() { g.detach().copy() } else { p.detach().zeros_like() } }).collect();
    Ok((f64::try_from(l.detach())?, grads))
}

/// The ascent ε = (ρ/(‖Tg‖ + 1e-12) − α)·T²g for gradients `grads` (T = |w| when adaptive, else 1;
/// the norm over every parameter together). α = 0 is SAM's.
pub fn perturbation(params: &[Tensor], grads: &[Tensor], sam: &Sam, alpha: f64) -> Vec<Tensor> {
    let scaled: Vec<Tensor> = if sam.adaptive { grads.iter().zip(params).map(|(g, p)| g * p.detach().abs()).collect() } else { grads.iter().map(|g| g.shallow_clone()).collect() };
    let norm = scaled.iter().map(|g| g.square().sum(Kind::Double)).reduce(|a, b| a + b).map_or(0.0, |t| t.double_value(&[])).sqrt();
    let scale = sam.rho / (norm + 1e-12) - alpha;
    grads.iter().zip(params).map(|(g, p)| if sam.adaptive { g * p.detach().square() * scale } else { g * scale }).collect()
}

/// ∇`loss` at w + ε (returned as copies and left in `.grad`), with w restored bit for bit after.
pub fn gradients_at_offset(params: &[Tensor], eps: &[Tensor], loss: &mut impl FnMut() -> Tensor) -> Result<(f64, Vec<Tensor>)> {
    let saved: Vec<Tensor> = params.iter().map(|p| p.detach().copy()).collect();
    tch::no_grad(|| {
        for (p, e) in params.iter().zip(eps) {
            let _ = p.shallow_clone().g_add_(e);
        }
    });
    let out = gradients(params, loss);
    tch::no_grad(|| {
        for (p, s) in params.iter().zip(&saved) {
            let _ = p.shallow_clone().copy_(s);
        }
    });
    out
}

/// Computes ∇L(w + ε) into the `.grad` of `params` (w itself is left unchanged, bit for bit).
/// `loss` builds the loss from the current parameters; it is called twice.
pub fn sam_gradients(params: &[Tensor], sam: &Sam, loss: &mut impl FnMut() -> Tensor) -> Result<SamStep> {
    let (l, grads) = gradients(params, loss)?;
    let eps = perturbation(params, &grads, sam, 0.0);
    let (lp, _) = gradients_at_offset(params, &eps, loss)?;
    Ok(SamStep { loss: l, perturbed_loss: lp })
}

/// Computes SAGM's direction ½(∇L(w) + ∇L(w + ε)) into the `.grad` of `params` (w unchanged).
pub fn sagm_gradients(params: &[Tensor], sagm: &Sagm, loss: &mut impl FnMut() -> Tensor) -> Result<SagmStep> {
    let (l, clean) = gradients(params, loss)?;
    let eps = perturbation(params, &clean, &sagm.sam, sagm.alpha);
    let (lp, perturbed) = gradients_at_offset(params, &eps, loss)?;
    tch::no_grad(|| {
        for ((p, g), gp) in params.iter().zip(&clean).zip(&perturbed) {
            let mut grad = p.grad();
            if grad.defined() {
                let _ = grad.copy_(&((g + gp) * 0.5));
            }
        }
    });
    Ok(SagmStep { loss: l, perturbed_loss: lp, clean, perturbed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::f64s;

    /// L(w) = ½ wᵀAw, ∇L = Aw: SAM's gradient is A(w + ρ·Aw/‖Aw‖).
    #[test]
    fn sam_gradient_on_a_quadratic_is_the_gradient_at_the_ascent_point() {
        let a = Tensor::from_slice(&[3.0f64, 0.5, 0.5, 1.0]).view([2, 2]);
        let w0 = [0.7f64, -1.3];
        let w = Tensor::from_slice(&w0).set_requires_grad(true);
        let params = [w.shallow_clone()];
        let mut loss = || (w.matmul(&a).dot(&w)) * 0.5;
        let rho = 0.2;
        let step = sam_gradients(&params, &Sam { rho, adaptive: false }, &mut loss).unwrap();
        let w_t = Tensor::from_slice(&w0);
        let g = a.matmul(&w_t);
        let wp = &w_t + &g * (rho / (g.norm().double_value(&[]) + 1e-12));
        let want = f64s(&a.matmul(&wp));
        let got = f64s(&w.grad());
        assert!(got.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-12), "{got:?} vs {want:?}");
        assert_eq!(f64s(&w.detach()), w0.to_vec(), "w is restored exactly");
        assert!(step.perturbed_loss > step.loss, "the ascent raises the loss");
        // ρ = 0 is the plain gradient.
        sam_gradients(&params, &Sam { rho: 0.0, adaptive: false }, &mut loss).unwrap();
        assert!(f64s(&w.grad()).iter().zip(f64s(&g)).all(|(x, y)| (x - y).abs() < 1e-12));
    }

    #[test]
    fn asam_scales_the_ascent_by_the_weights() {
        // L = Σ c_i w_i² / 2 on separate coordinates: ε_i = ρ w_i²·g_i / ‖w ⊙ g‖.
        let c = Tensor::from_slice(&[1.0f64, 4.0]);
        let w0 = [2.0f64, 0.5];
        let w = Tensor::from_slice(&w0).set_requires_grad(true);
        let params = [w.shallow_clone()];
        let mut loss = || (&c * w.square()).sum(Kind::Double) * 0.5;
        let rho = 0.1;
        sam_gradients(&params, &Sam { rho, adaptive: true }, &mut loss).unwrap();
        let g = [c.double_value(&[0]) * w0[0], c.double_value(&[1]) * w0[1]];
        let tg = ((w0[0] * g[0]).powi(2) + (w0[1] * g[1]).powi(2)).sqrt();
        let eps = [rho * w0[0] * w0[0] * g[0] / tg, rho * w0[1] * w0[1] * g[1] / tg];
        let want = [c.double_value(&[0]) * (w0[0] + eps[0]), c.double_value(&[1]) * (w0[1] + eps[1])];
        let got = f64s(&w.grad());
        assert!((got[0] - want[0]).abs() < 1e-12 && (got[1] - want[1]).abs() < 1e-12, "{got:?} vs {want:?}");
    }

    /// On L = ½wᵀAw SAGM's direction is ½(Aw + A(w + ε̂)) with ε̂ = (ρ/‖Aw‖ − α)·Aw; with ρ = α = 0
    /// it is the plain gradient; the two returned gradients are the ones at w and at w + ε̂.
    #[test]
    fn sagm_direction_on_a_quadratic() {
        let a = Tensor::from_slice(&[2.0f64, -0.4, -0.4, 0.8]).view([2, 2]);
        let w0 = [1.1f64, 0.6];
        let w = Tensor::from_slice(&w0).set_requires_grad(true);
        let params = [w.shallow_clone()];
        let mut loss = || (w.matmul(&a).dot(&w)) * 0.5;
        let (rho, alpha) = (0.3, 0.05);
        let step = sagm_gradients(&params, &Sagm { sam: Sam { rho, adaptive: false }, alpha }, &mut loss).unwrap();
        let w_t = Tensor::from_slice(&w0);
        let g = a.matmul(&w_t);
        let scale = rho / (g.norm().double_value(&[]) + 1e-12) - alpha;
        let gp = a.matmul(&(&w_t + &g * scale));
        let want = f64s(&((&g + &gp) * 0.5));
        let got = f64s(&w.grad());
        assert!(got.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-12), "{got:?} vs {want:?}");
        assert!(f64s(&step.clean[0]).iter().zip(f64s(&g)).all(|(x, y)| (x - y).abs() < 1e-12));
        assert!(f64s(&step.perturbed[0]).iter().zip(f64s(&gp)).all(|(x, y)| (x - y).abs() < 1e-12));
        assert_eq!(f64s(&w.detach()), w0.to_vec(), "w is restored exactly");
        // α shortens the ascent: the perturbed loss is lower than SAM's at the same ρ.
        let sam = sam_gradients(&params, &Sam { rho, adaptive: false }, &mut loss).unwrap();
        assert!(step.perturbed_loss < sam.perturbed_loss && step.perturbed_loss > step.loss);
        sagm_gradients(&params, &Sagm { sam: Sam { rho: 0.0, adaptive: false }, alpha: 0.0 }, &mut loss).unwrap();
        assert!(f64s(&w.grad()).iter().zip(f64s(&g)).all(|(x, y)| (x - y).abs() < 1e-12));
    }
}
