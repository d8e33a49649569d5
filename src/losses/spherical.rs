//! The spherical family of classification losses (Vincent et al. 2015; de Brébisson & Vincent
//! 2016): losses that depend on the output vector o only through o_c (the target's score),
//! s = Σ_k o_k and q = Σ_k o_k², so that with o = Wh they can be computed from cached WᵀW and
//! Wᵀ1 without forming o. The Z-loss, MSE on one-hot targets and the log-Taylor softmax are
//! members; cross-entropy is not.

use tch::Tensor;

/// The ε added to σ in the Z-score, as in the authors' reference code
/// (pascal20100/factored_output_layer: `(mu - o_c) / (sigma + 1e-12)`).
pub const Z_EPS: f64 = 1e-12;

/// Z-scores of the target entries from the spherical statistics: z_c = (o_c − μ)/σ with
/// μ = s/D and σ² = q/D − μ² (population variance).
pub fn z_from_stats(o_c: &Tensor, s: &Tensor, q: &Tensor, d: i64) -> Tensor {
    let mu = s / d as f64;
    // A 1e−24 floor inside the root keeps the gradient finite for constant outputs (the
    // reference code's sqrt has an infinite derivative there); it changes no value above 1e−12.
    let sigma = ((q / d as f64 - mu.square()).clamp_min(0.0) + 1e-24).sqrt();
    (o_c - mu) / (sigma + Z_EPS)
}

/// Per-sample Z-loss (1/a)·softplus(a·(b − z_c)) of outputs o [N, D] and targets y [N].
pub fn z_loss_per_sample(o: &Tensor, y: &Tensor, a: f64, b: f64) -> Tensor {
    let d = o.size()[1];
    let o_c = o.gather(1, &y.unsqueeze(1), false).squeeze_dim(1);
    let s = o.sum_dim_intlist([1].as_slice(), false, o.kind());
    let q = o.square().sum_dim_intlist([1].as_slice(), false, o.kind());
    let z_c = z_from_stats(&o_c, &s, &q, d);
    ((z_c.neg() + b) * a).softplus() / a
}

/// Per-sample squared error against one-hot targets: Σ_k (o_k − y_k)² = q − 2 o_c + 1.
pub fn mse_onehot_per_sample(o: &Tensor, y: &Tensor) -> Tensor {
    let onehot = y.one_hot(o.size()[1]).to_kind(o.kind());
    (o - onehot).square().sum_dim_intlist([1].as_slice(), false, o.kind())
}

/// Per-sample log-Taylor-softmax loss: p_k ∝ 1 + o_k + o_k²/2 (always > 0), L = −log p_c.
pub fn log_taylor_per_sample(o: &Tensor, y: &Tensor) -> Tensor {
    let t = o.square() * 0.5 + o + 1.0;
    let log_p = t.log() - t.sum_dim_intlist([1].as_slice(), true, o.kind()).log();
    -log_p.gather(1, &y.unsqueeze(1), false).squeeze_dim(1)
}

/// Closed-form ∂L_Z/∂o (for tests and the cached-statistics path):
/// −sigmoid(a(b − z_c)) · (δ_kc − 1/D − z_c z_k/D) / σ.
pub fn z_loss_grad(o: &Tensor, y: &Tensor, a: f64, b: f64) -> Tensor {
    let d = o.size()[1];
    let mu = o.mean_dim(1, true, o.kind());
    let sigma = (o.square().mean_dim(1, true, o.kind()) - mu.square()).sqrt();
    let z = (o - &mu) / (&sigma + Z_EPS);
    let z_c = z.gather(1, &y.unsqueeze(1), false);
    let delta = y.one_hot(d).to_kind(o.kind());
    let dz = (delta - 1.0 / d as f64 - &z_c * &z / d as f64) / &sigma;
    -((z_c.neg() + b) * a).sigmoid() * dz
}

/// Loss and ∂L/∂h of the Z-loss for one hidden vector h [d] with o = W h, computed from the
/// cached Q = WᵀW [d, d], w̄ = Wᵀ1 [d] and the target row W_c [d] only — O(d²), independent of D:
/// ∂L/∂h = (∂L/∂s)·w̄ + 2(∂L/∂q)·Qh + (∂L/∂o_c)·W_c.
pub fn z_loss_spherical(h: &Tensor, q_mat: &Tensor, w_bar: &Tensor, w_c: &Tensor, d_out: i64, a: f64, b: f64) -> (Tensor, Tensor) {
    let h = h.set_requires_grad(false).detach();
    let o_c = w_c.dot(&h).set_requires_grad(true);
    let s = w_bar.dot(&h).set_requires_grad(true);
    let qh = q_mat.mv(&h);
    let q = h.dot(&qh).set_requires_grad(true);
    let z = z_from_stats(&o_c, &s, &q, d_out);
    let loss = ((z.neg() + b) * a).softplus() / a;
    let grads = Tensor::run_backward(&[&loss], &[&s, &q, &o_c], false, false);
    let grad_h = w_bar * &grads[0] + qh * (&grads[1] * 2.0) + w_c * &grads[2];
    (loss.detach(), grad_h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::f64s as v;
    use tch::{Device, Kind};

    #[test]
    fn z_loss_is_shift_and_scale_invariant_and_matches_a_known_value() {
        let o = Tensor::randn([6, 11], (Kind::Double, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 3, 10, 5, 5, 1]);
        let base = z_loss_per_sample(&o, &y, 2.0, 1.5);
        let moved = z_loss_per_sample(&(&o * 3.7 + 2.1), &y, 2.0, 1.5);
        // Exact up to rounding (σ² = q/D − μ² cancels): the note's 1e-6.
        assert!(v(&(base - moved)).iter().all(|d| d.abs() < 1e-6));
        // D = 2, o = (1, −1), c = 0: z_c = 1, and with a = b = 1 the loss is log 2.
        let l = z_loss_per_sample(&Tensor::from_slice(&[1.0f64, -1.0]).view([1, 2]), &Tensor::from_slice(&[0i64]), 1.0, 1.0);
        assert!((v(&l)[0] - std::f64::consts::LN_2).abs() < 1e-9);
        // The largest z_c is √(D − 1), reached by a scaled one-hot plus a constant.
        let peak = (Tensor::zeros([1, 11], (Kind::Double, Device::Cpu)) - 4.0).index_fill(1, &Tensor::from_slice(&[3i64]), 9.0);
        let o_c = peak.get(0).get(3);
        let z = z_from_stats(&o_c, &peak.sum(Kind::Double), &peak.square().sum(Kind::Double), 11);
        assert!((f64::try_from(z).unwrap() - 10f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn z_loss_gradient_closed_form_autograd_and_finite_differences() {
        let o = Tensor::randn([3, 7], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let y = Tensor::from_slice(&[2i64, 0, 6]);
        let (a, b) = (1.7, 0.8);
        z_loss_per_sample(&o, &y, a, b).sum(Kind::Double).backward();
        let auto = v(&o.grad());
        let closed = v(&z_loss_grad(&o.detach(), &y, a, b));
        assert!(auto.iter().zip(&closed).all(|(x, y)| (x - y).abs() < 1e-9));
        let g = Tensor::from_slice(&closed).view([3, 7]);
        assert!(v(&g.sum_dim_intlist([1].as_slice(), false, Kind::Double)).iter().all(|s| s.abs() < 1e-9), "Σ_k g_k = 0");
        assert!(v(&(&g * o.detach()).sum_dim_intlist([1].as_slice(), false, Kind::Double)).iter().all(|s| s.abs() < 1e-9), "Σ_k o_k g_k = 0");
        let base = v(&o.detach());
        let h = 1e-6;
        for i in [0usize, 5, 13, 20] {
            let f = |delta: f64| {
                let mut w = base.clone();
                w[i] += delta;
                f64::try_from(z_loss_per_sample(&Tensor::from_slice(&w).view([3, 7]), &y, a, b).sum(Kind::Double)).unwrap()
            };
            assert!(((f(h) - f(-h)) / (2.0 * h) - closed[i]).abs() < 1e-7);
        }
    }

    #[test]
    fn constant_outputs_give_a_finite_loss_and_gradient() {
        let o = Tensor::full([2, 5], 0.7, (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let l = z_loss_per_sample(&o, &Tensor::from_slice(&[0i64, 3]), 1.0, 1.0).sum(Kind::Double);
        l.backward();
        assert!(f64::try_from(&l).unwrap().is_finite());
        assert!(v(&o.grad()).iter().all(|g| g.is_finite()));
    }

    #[test]
    fn hinge_limit_and_the_other_spherical_losses() {
        let o = Tensor::randn([5, 4], (Kind::Double, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 3, 0]);
        let z_c = (&o - o.mean_dim(1, true, Kind::Double)) / (o.std_dim(1, false, true));
        let hinge = (z_c.gather(1, &y.unsqueeze(1), false).squeeze_dim(1).neg() + 1.0).clamp_min(0.0);
        let soft = z_loss_per_sample(&o, &y, 50.0, 1.0);
        assert!(v(&(soft - hinge)).iter().all(|d| d.abs() < 0.02));
        // MSE on one-hot = q − 2 o_c + 1.
        let mse = mse_onehot_per_sample(&o, &y);
        let q = o.square().sum_dim_intlist([1].as_slice(), false, Kind::Double);
        let o_c = o.gather(1, &y.unsqueeze(1), false).squeeze_dim(1);
        assert!(v(&(mse - (q - o_c * 2.0 + 1.0))).iter().all(|d| d.abs() < 1e-12));
        // log-Taylor: a distribution; equal outputs give −log(1/D).
        let l = log_taylor_per_sample(&Tensor::full([1, 4], 0.3, (Kind::Double, Device::Cpu)), &Tensor::from_slice(&[2i64]));
        assert!((v(&l)[0] - 4f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn cached_statistics_give_the_same_loss_and_input_gradient() {
        let (d_out, d) = (50i64, 6i64);
        let w = Tensor::randn([d_out, d], (Kind::Double, Device::Cpu));
        let h = Tensor::randn([d], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let c = 17i64;
        let loss = z_loss_per_sample(&w.mv(&h).unsqueeze(0), &Tensor::from_slice(&[c]), 1.5, 2.0).sum(Kind::Double);
        loss.backward();
        let q_mat = w.transpose(0, 1).mm(&w);
        let w_bar = w.sum_dim_intlist([0].as_slice(), false, Kind::Double);
        let (l2, g2) = z_loss_spherical(&h.detach(), &q_mat, &w_bar, &w.get(c), d_out, 1.5, 2.0);
        assert!((f64::try_from(&loss).unwrap() - f64::try_from(&l2).unwrap()).abs() < 1e-10);
        assert!(v(&(h.grad() - g2)).iter().all(|x| x.abs() < 1e-9));
    }
}
