//! StableMax (Prieto et al. 2025, arXiv 2501.04697): softmax with exp replaced by
//! s(x) = x + 1 for x ≥ 0 and 1/(1 − x) for x < 0, which grows linearly instead of
//! exponentially, so the float loss cannot round to exactly zero (no Softmax Collapse).
//!
//! As in the official code, the log-probabilities are log(s(z_y) / Σ_j s(z_j)) computed in
//! float64 whatever the training precision, and x = 0 takes the x + 1 branch.

use tch::{Kind, Tensor};

/// The 1e-30 of the official `s(x, epsilon=1e-30)` for x < 0.
pub const S_EPSILON: f64 = 1e-30;

/// s(x) elementwise.
///
/// The 1/(1 − x) branch is evaluated on min(x, 0), so it stays finite where it is not selected:
/// `where` sends a zero gradient into the unselected branch, and 0 · ∞ is NaN. (An earlier
/// version computed 1/(−x + (1 + 1e−30)); in f64 1 + 1e−30 rounds to 1, so a logit of exactly
/// 1.0 gave an infinite unselected branch and a NaN gradient, which diverged `make demo`'s
/// `stablemax_tf90__s1` at step 40. The official order (1 − x) + 1e−30 is kept for x < 0.)
pub fn s(x: &Tensor) -> Tensor {
    let negative = x.lt(0.0);
    let neg_branch = (x.clamp_max(0.0).neg() + 1.0 + S_EPSILON).reciprocal();
    let pos_branch = x + 1.0;
    pos_branch.where_self(&negative.logical_not(), &neg_branch)
}

/// log StableMax(z) along the last dimension, in float64.
pub fn log_stablemax(logits: &Tensor) -> Tensor {
    let sz = s(&logits.to_kind(Kind::Double));
    (&sz / sz.sum_dim_intlist([-1].as_slice(), true, Kind::Double)).log()
}

/// Per-sample StableMax cross-entropy −log StableMax(z)_y (float64).
pub fn stablemax_ce_per_sample(logits: &Tensor, labels: &Tensor) -> Tensor {
    -log_stablemax(logits).gather(1, &labels.unsqueeze(1), false).squeeze_dim(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::f64s as vecf;
    use tch::Device;

    #[test]
    fn s_is_positive_and_c1_at_zero() {
        let h = 1e-7;
        let x = Tensor::from_slice(&[-h, 0.0, h, -5.0, 5.0]);
        let v = vecf(&s(&x));
        assert!(v.iter().all(|&a| a > 0.0));
        assert!((v[0] - 1.0).abs() < 2e-7 && v[1] == 1.0 && (v[2] - 1.0).abs() < 2e-7);
        assert!((v[3] - 1.0 / 6.0).abs() < 1e-15 && v[4] == 6.0);
        // One-sided derivatives at 0 both equal 1.
        let left = (1.0 - v[0]) / h;
        let right = (v[2] - 1.0) / h;
        assert!((left - 1.0).abs() < 1e-6 && (right - 1.0).abs() < 1e-6, "{left} {right}");
    }

    #[test]
    fn gradient_is_finite_at_every_logit_including_exactly_one() {
        // s'(x) = 1 for x ≥ 0: at z = [1, 0.5, −2] with label 0 the gradient of −log p_0 is the
        // closed form −(1/s(z_0) − s'(z_0)/Σs) for z_0 and s'(z_j)/Σs for j ≠ 0.
        let z = Tensor::from_slice(&[1.0f64, 0.5, -2.0]).view([1, 3]).set_requires_grad(true);
        stablemax_ce_per_sample(&z, &Tensor::from_slice(&[0i64])).sum(Kind::Double).backward();
        let g = vecf(&z.grad());
        let (s0, s1, s2) = (2.0, 1.5, 1.0 / 3.0);
        let total = s0 + s1 + s2;
        let want = [-(1.0 / s0 - 1.0 / total), 1.0 / total, (1.0 / 9.0) / total];
        for (a, b) in g.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{g:?} vs {want:?}");
        }
    }

    #[test]
    fn stablemax_is_a_distribution_and_uniform_on_equal_logits() {
        let z = Tensor::randn([4, 7], (Kind::Double, Device::Cpu)) * 3.0;
        let p = log_stablemax(&z).exp();
        for row in vecf(&p.sum_dim_intlist([-1].as_slice(), false, Kind::Double)) {
            assert!((row - 1.0).abs() < 1e-12);
        }
        assert!(vecf(&p).iter().all(|&x| x > 0.0));
        let eq = log_stablemax(&Tensor::full([2, 5], 0.3, (Kind::Double, Device::Cpu))).exp();
        assert!(vecf(&eq).iter().all(|&x| (x - 0.2).abs() < 1e-15));
    }

    #[test]
    fn loss_gradient_matches_finite_differences() {
        let z = Tensor::randn([3, 5], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let y = Tensor::from_slice(&[0i64, 3, 4]);
        let loss = stablemax_ce_per_sample(&z, &y).sum(Kind::Double);
        loss.backward();
        let grad = vecf(&z.grad());
        let base = vecf(&z.detach());
        let h = 1e-6;
        for i in 0..base.len() {
            let eval = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                let t = Tensor::from_slice(&v).view([3, 5]);
                f64::try_from(stablemax_ce_per_sample(&t, &y).sum(Kind::Double)).unwrap()
            };
            let fd = (eval(h) - eval(-h)) / (2.0 * h);
            assert!((fd - grad[i]).abs() < 1e-6, "coord {i}: fd {fd} autograd {}", grad[i]);
        }
    }

    #[test]
    fn no_collapse_where_softmax_collapses() {
        // A gap of 40 zeroes float32 softmax CE but StableMax's loss stays positive.
        let z = Tensor::from_slice(&[40.0f32, 0.0, 0.0]).view([1, 3]);
        let y = Tensor::from_slice(&[0i64]);
        let l = f64::try_from(stablemax_ce_per_sample(&z, &y).sum(Kind::Double)).unwrap();
        let expected = -(41.0f64 / 43.0).ln();
        assert!((l - expected).abs() < 1e-12, "{l}");
    }
}
