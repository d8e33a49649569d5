//! ⊥Grad (Prieto et al. 2025, arXiv 2501.04697): before the base optimizer's step, each
//! parameter tensor's gradient loses its component along the weights and is rescaled to its
//! old norm:
//!   g⊥ = g − (⟨w,g⟩ / (⟨w,w⟩ + 1e−30)) w,   g ← g⊥ · ‖g‖ / (‖g⊥‖ + 1e−30).
//! For a homogeneous network, the direction along w only scales the logits ("naïve loss
//! minimisation"), so removing it stops the logits from growing towards Softmax Collapse.
//! Checked against copies of the official `orthograd.py`: per tensor, flattened, in the
//! parameter's dtype, applied to every parameter before the base step.

use tch::{Kind, Tensor};

use crate::reduce::{dot, norm};

const EPS: f64 = 1e-30;

/// Replaces each parameter's gradient by its ⊥Grad projection (in place).
pub fn project_gradients(params: &[Tensor]) {
    tch::no_grad(|| {
        for w in params {
            let mut g = w.grad();
            if !g.defined() {
                continue;
            }
            let wf = w.flatten(0, -1);
            let gf = g.flatten(0, -1);
            let proj = dot(&wf, &gf) / (dot(&wf, &wf) + EPS);
            let g_perp = &gf - &proj * &wf;
            let scale = norm(&gf) / (norm(&g_perp) + EPS);
            let new = (g_perp * scale).view_as(&g);
            g.copy_(&new);
        }
    });
}

/// cos(−∇L, θ) over all parameters: how much the update direction is pure weight scaling.
pub fn cosine_neg_grad_weights(params: &[Tensor]) -> f64 {
    tch::no_grad(|| {
        let mut wg = 0.0;
        let mut gg = 0.0;
        let mut ww = 0.0;
        for w in params {
            let g = w.grad();
            if !g.defined() {
                continue;
            }
            let (wf, gf) = (w.to_kind(Kind::Double).flatten(0, -1), g.to_kind(Kind::Double).flatten(0, -1));
            wg += f64::try_from(dot(&wf, &gf)).unwrap_or(f64::NAN);
            gg += f64::try_from(dot(&gf, &gf)).unwrap_or(f64::NAN);
            ww += f64::try_from(dot(&wf, &wf)).unwrap_or(f64::NAN);
        }
        -wg / (gg.sqrt() * ww.sqrt() + EPS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn projected_gradient_is_orthogonal_with_the_same_norm() {
        tch::manual_seed(1);
        let w = Tensor::randn([4, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let target = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
        // Gradient with a big component along w.
        let loss = (&w * 3.0 - &target).square().sum(Kind::Float);
        loss.backward();
        let before = w.grad().copy();
        project_gradients(&[w.shallow_clone()]);
        let after = w.grad();
        let dot = f64::try_from(w.detach().flatten(0, -1).dot(&after.flatten(0, -1))).unwrap();
        let rel = dot.abs() / (f64::try_from(w.detach().norm()).unwrap() * f64::try_from(after.norm()).unwrap());
        assert!(rel < 1e-6, "relative inner product {rel}");
        let (n0, n1) = (f64::try_from(before.norm()).unwrap(), f64::try_from(after.norm()).unwrap());
        assert!((n0 - n1).abs() <= 1e-6 * n0, "{n0} vs {n1}");
    }

    #[test]
    fn cosine_is_one_for_a_pure_scaling_gradient() {
        let w = Tensor::from_slice(&[1.0f32, -2.0, 0.5]).set_requires_grad(true);
        // L = −‖w‖²/2 has −∇L = w.
        let loss = -(w.square().sum(Kind::Float)) * 0.5;
        loss.backward();
        assert!((cosine_neg_grad_weights(&[w.shallow_clone()]) - 1.0).abs() < 1e-6);
    }
}
