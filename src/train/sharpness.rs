//! Sharpness-aware minimisation (Foret et al. 2021), as one step function a paper composes with its
//! own loss and optimiser: the gradient g = ∇L(w), an ascent to w + ε with ε = ρ·g/‖g‖ (ASAM, Kwon
//! et al. 2021: ε = ρ·T²g/‖Tg‖ with T = |w|), the gradient there, and back to w exactly, leaving
//! ∇L(w + ε) in the parameters' `.grad` for the optimiser's step — as the reference
//! implementation (davda54/sam, checked: `first_step`, `second_step`, `_grad_norm`) does, with its
//! ‖Tg‖ + 1e-12 and the norm taken over every parameter together. The variants the domain
//! generalisation papers build on it (SAGM's gradient matching, UDIM's input-space perturbation)
//! compose this step with their own extra terms.

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

/// What one SAM gradient computation measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamStep {
    /// L(w) and L(w + ε).
    pub loss: f64,
    pub perturbed_loss: f64,
}

/// Computes ∇L(w + ε) into the `.grad` of `params` (w itself is left unchanged, bit for bit).
/// `loss` builds the loss from the current parameters; it is called twice.
pub fn sam_gradients(params: &[Tensor], sam: &Sam, loss: &mut impl FnMut() -> Tensor) -> Result<SamStep> {
    zero_grads(params);
    let l = loss();
    l.backward();
    let grads: Vec<Tensor> = params.iter().map(|p| { let g = p.grad(); if g.defined() { g.detach().copy() } else { p.detach().zeros_like() } }).collect();
    let scaled: Vec<Tensor> = if sam.adaptive { grads.iter().zip(params).map(|(g, p)| g * p.detach().abs()).collect() } else { grads.iter().map(|g| g.shallow_clone()).collect() };
    let norm = scaled.iter().map(|g| g.square().sum(Kind::Double)).reduce(|a, b| a + b).map_or(0.0, |t| t.double_value(&[])).sqrt();
    let saved: Vec<Tensor> = params.iter().map(|p| p.detach().copy()).collect();
    tch::no_grad(|| {
        for ((p, g), s) in params.iter().zip(&grads).zip(&scaled) {
            // ε = ρ·T²g/(‖Tg‖ + 1e-12); T = 1 for plain SAM.
            let e = if sam.adaptive { s * p.detach().abs() } else { g.shallow_clone() } * (sam.rho / (norm + 1e-12));
            let _ = p.shallow_clone().g_add_(&e);
        }
    });
    zero_grads(params);
    let lp = loss();
    lp.backward();
    tch::no_grad(|| {
        for (p, s) in params.iter().zip(&saved) {
            let _ = p.shallow_clone().copy_(s);
        }
    });
    Ok(SamStep { loss: f64::try_from(l.detach())?, perturbed_loss: f64::try_from(lp.detach())? })
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
}
