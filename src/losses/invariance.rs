//! Penalties that ask a predictor to behave the same in every training environment, as the domain
//! generalisation papers use them as baselines: IRMv1 (Arjovsky et al. 2019) and V-REx (Krueger et
//! al. 2021). Both are differentiable (IRM by double backward), so they can be added to a loss.

use tch::Tensor;

/// IRMv1's penalty for one environment: (∂/∂s loss(s·logits)|_{s=1})², the squared gradient of the
/// risk with respect to a dummy classifier scale fixed at 1, built with `create_graph` so that it
/// can be differentiated again.
pub fn irm_penalty(logits: &Tensor, loss: impl Fn(&Tensor) -> Tensor) -> Tensor {
    let scale = Tensor::ones([], (logits.kind(), logits.device())).set_requires_grad(true);
    let risk = loss(&(logits * &scale));
    let grad = Tensor::run_backward(&[&risk], &[&scale], true, true).remove(0);
    grad.square()
}

/// V-REx's penalty: the (population) variance of the environment risks. For two environments it is
/// (R₀ − R₁)²/4.
pub fn vrex_penalty(risks: &[Tensor]) -> Tensor {
    let r = Tensor::stack(risks, 0);
    (&r - r.mean(r.kind())).square().mean(r.kind())
}

/// Binary cross-entropy with logits, mean over the samples (the CMNIST scripts' `mean_nll`).
pub fn mean_bce(logits: &Tensor, y: &Tensor) -> Tensor {
    logits.binary_cross_entropy_with_logits::<Tensor>(y, None, None, tch::Reduction::Mean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn irm_penalty_matches_the_closed_form_and_finite_differences() {
        // ∂/∂s BCE(s·f, y)|₁ = mean((σ(f) − y)·f): f = 0 gives 0; f = 1, y = 1 gives (σ(1) − 1)².
        let y1 = Tensor::ones([4], (Kind::Double, Device::Cpu));
        assert_eq!(irm_penalty(&Tensor::zeros([4], (Kind::Double, Device::Cpu)), |l| mean_bce(l, &y1)).double_value(&[]), 0.0);
        let p = irm_penalty(&Tensor::ones([4], (Kind::Double, Device::Cpu)), |l| mean_bce(l, &y1)).double_value(&[]);
        let s1 = 1.0 / (1.0 + (-1.0f64).exp());
        assert!((p - (s1 - 1.0).powi(2)).abs() < 1e-12 && (p - 0.07233).abs() < 1e-5, "{p}");
        // Mixed logits and labels against a central difference in s.
        let f = Tensor::from_slice(&[0.3f64, -1.2, 2.0, 0.7, -0.4]);
        let y = Tensor::from_slice(&[1.0f64, 0.0, 1.0, 0.0, 0.0]);
        let risk = |s: f64| mean_bce(&(&f * s), &y).double_value(&[]);
        let h = 1e-5;
        let fd = (risk(1.0 + h) - risk(1.0 - h)) / (2.0 * h);
        let p = irm_penalty(&f, |l| mean_bce(l, &y)).double_value(&[]);
        assert!((p - fd * fd).abs() < 1e-9, "{p} vs {}", fd * fd);
    }

    #[test]
    fn irm_penalty_is_differentiable_in_the_logits() {
        let f = Tensor::from_slice(&[0.3f64, -1.2, 2.0]).set_requires_grad(true);
        let y = Tensor::from_slice(&[1.0f64, 0.0, 0.0]);
        let p = irm_penalty(&f, |l| mean_bce(l, &y));
        let g = Tensor::run_backward(&[&p], &[&f], false, false).remove(0);
        let h = 1e-6;
        for i in 0..3 {
            let e = Tensor::zeros([3], (Kind::Double, Device::Cpu)).index_fill(0, &Tensor::from_slice(&[i]), h);
            let at = |t: Tensor| irm_penalty(&t, |l| mean_bce(l, &y)).double_value(&[]);
            let fd = (at(f.detach() + &e) - at(f.detach() - &e)) / (2.0 * h);
            assert!((g.double_value(&[i]) - fd).abs() < 1e-7, "{i}");
        }
    }

    #[test]
    fn vrex_is_the_variance_of_the_risks() {
        let r = [Tensor::from(0.2f64), Tensor::from(0.6f64)];
        assert!((vrex_penalty(&r).double_value(&[]) - 0.04).abs() < 1e-15); // (0.4)²/4
        let same = [Tensor::from(0.5f64), Tensor::from(0.5f64), Tensor::from(0.5f64)];
        assert_eq!(vrex_penalty(&same).double_value(&[]), 0.0);
    }
}
