//! GAN training pieces: StyleGAN2's non-saturating logistic losses, the R1 gradient penalty on
//! real data (by double backward), and elastic weight consolidation (a diagonal Fisher estimate and
//! the quadratic anchor Σ_i F_i (θ_i − θ*_i)²) for few-shot adaptation.

use tch::{Kind, Tensor};

/// The generator's non-saturating loss E softplus(−D(G(z))), from the discriminator's logits on
/// generated samples.
pub fn generator_loss(fake_logits: &Tensor) -> Tensor {
    (-fake_logits).softplus().mean(fake_logits.kind())
}

/// The discriminator's logistic loss E softplus(D(G(z))) + E softplus(−D(x)).
pub fn discriminator_loss(real_logits: &Tensor, fake_logits: &Tensor) -> Tensor {
    fake_logits.softplus().mean(fake_logits.kind()) + (-real_logits).softplus().mean(real_logits.kind())
}

/// R1 = E ‖∇_x D(x)‖² on real samples (StyleGAN2's `d_r1_loss`, summed over features and averaged
/// over the batch), differentiable in D's parameters. `real` must require grad.
pub fn r1_penalty(real_logits: &Tensor, real: &Tensor) -> Tensor {
    let g = Tensor::run_backward(&[real_logits.sum(real_logits.kind())], &[real], true, true).remove(0);
    g.square().flatten(1, -1).sum_dim_intlist([1i64].as_slice(), false, g.kind()).mean(g.kind())
}

/// The EWC anchor λ·Σ_p Σ_i F_p,i (θ_p,i − θ*_p,i)² over parameter tensors (θ* and F constants).
pub fn ewc_penalty(params: &[Tensor], anchor: &[Tensor], fisher: &[Tensor], lambda: f64) -> Tensor {
    let mut total = Tensor::zeros([], (Kind::Float, params[0].device()));
    for ((p, a), f) in params.iter().zip(anchor).zip(fisher) {
        total = total + (f * (p - a).square()).sum(Kind::Float);
    }
    total * lambda
}

/// The diagonal Fisher estimate F_i = mean over `batches` of (∂ℓ/∂θ_i)², one squared gradient per
/// call of `loss` (each a scalar log-likelihood on a fresh batch); `normalise` rescales all
/// tensors together to mean 1.
pub fn diagonal_fisher(params: &[Tensor], batches: usize, normalise: bool, mut loss: impl FnMut(usize) -> Tensor) -> Vec<Tensor> {
    let mut acc: Vec<Tensor> = params.iter().map(|p| p.detach().zeros_like()).collect();
    for b in 0..batches.max(1) {
        let grads = Tensor::run_backward(&[loss(b)], params, false, false);
        for (a, g) in acc.iter_mut().zip(grads) {
            *a = &*a + g.square();
        }
    }
    let mut fisher: Vec<Tensor> = acc.into_iter().map(|a| a / batches.max(1) as f64).collect();
    if normalise {
        let total: f64 = fisher.iter().map(|f| f64::try_from(f.sum(Kind::Double)).unwrap_or(0.0)).sum();
        let count: i64 = fisher.iter().map(|f| f.numel() as i64).sum();
        let mean = total / count.max(1) as f64;
        if mean > 0.0 {
            fisher = fisher.into_iter().map(|f| f / mean).collect();
        }
    }
    fisher
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::f64s;

    #[test]
    fn logistic_losses_at_known_logits() {
        let real = Tensor::from_slice(&[2.0f64, 0.0]);
        let fake = Tensor::from_slice(&[-1.0f64, 1.0]);
        let sp = |x: f64| (1.0 + x.exp()).ln();
        assert!((generator_loss(&fake).double_value(&[]) - (sp(1.0) + sp(-1.0)) / 2.0).abs() < 1e-12);
        assert!((discriminator_loss(&real, &fake).double_value(&[]) - ((sp(-1.0) + sp(1.0)) / 2.0 + (sp(-2.0) + sp(0.0)) / 2.0)).abs() < 1e-12);
    }

    #[test]
    fn r1_of_a_linear_discriminator_is_the_squared_weight_norm_and_trains_it() {
        // D(x) = w·x + b: ∇_x D = w for every sample, so R1 = ‖w‖², ∂R1/∂w = 2w.
        let w = Tensor::from_slice(&[0.5f64, -1.5, 2.0]).set_requires_grad(true);
        let x = Tensor::from_slice(&[1.0f64, 2.0, 3.0, -1.0, 0.0, 4.0]).view([2, 3]).set_requires_grad(true);
        let logits = x.matmul(&w) + 0.3;
        let r1 = r1_penalty(&logits, &x);
        assert!((r1.double_value(&[]) - 6.5).abs() < 1e-12);
        let g = Tensor::run_backward(&[&r1], &[&w], false, false).remove(0);
        assert_eq!(f64s(&g), vec![1.0, -3.0, 4.0]);
        // A quadratic D(x) = ½‖x‖²: ∇ = x, R1 = mean ‖x‖².
        let q = (&x * &x).sum_dim_intlist([1i64].as_slice(), false, Kind::Double) * 0.5;
        assert!((r1_penalty(&q, &x).double_value(&[]) - (14.0 + 17.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn ewc_is_zero_at_the_anchor_with_gradient_two_lambda_f_delta_and_the_fisher_is_mean_squared_gradients() {
        let anchor = vec![Tensor::from_slice(&[1.0f32, -1.0]), Tensor::from_slice(&[0.5f32])];
        let fisher = vec![Tensor::from_slice(&[2.0f32, 0.5]), Tensor::from_slice(&[4.0f32])];
        let at = |v: [f32; 3]| vec![Tensor::from_slice(&v[..2]).set_requires_grad(true), Tensor::from_slice(&v[2..]).set_requires_grad(true)];
        assert_eq!(ewc_penalty(&at([1.0, -1.0, 0.5]), &anchor, &fisher, 3.0).double_value(&[]), 0.0);
        let p = at([1.5, -1.0, 0.0]);
        let e = ewc_penalty(&p, &anchor, &fisher, 3.0);
        assert!((e.double_value(&[]) - 3.0 * (2.0 * 0.25 + 4.0 * 0.25)).abs() < 1e-6);
        let g = Tensor::run_backward(&[&e], &p, false, false);
        assert_eq!(f64s(&g[0]), vec![2.0 * 3.0 * 2.0 * 0.5, 0.0]);
        assert_eq!(f64s(&g[1]), vec![2.0 * 3.0 * 4.0 * -0.5]);
        // Fisher of ℓ_b = θ·x_b: the squared x_b averaged.
        let theta = [Tensor::from_slice(&[0.3f64, 0.7]).set_requires_grad(true)];
        let xs = [[1.0f64, 2.0], [3.0, 0.0]];
        let f = diagonal_fisher(&theta, 2, false, |b| (&theta[0] * Tensor::from_slice(&xs[b])).sum(Kind::Double));
        assert_eq!(f64s(&f[0]), vec![5.0, 2.0]);
        let f = diagonal_fisher(&theta, 2, true, |b| (&theta[0] * Tensor::from_slice(&xs[b])).sum(Kind::Double));
        assert_eq!(f64s(&f[0]), vec![5.0 / 3.5, 2.0 / 3.5]);
    }
}
