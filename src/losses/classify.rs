//! Cross-entropy at a chosen float precision, accuracy, and the Softmax-Collapse fraction.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Float precision a loss or metric is computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Float16,
    Float32,
    Float64,
}

impl Precision {
    pub fn kind(self) -> Kind {
        match self {
            Precision::Float16 => Kind::Half,
            Precision::Float32 => Kind::Float,
            Precision::Float64 => Kind::Double,
        }
    }
}

/// Per-sample softmax cross-entropy −log softmax(z)_y, with log-softmax computed in `precision`.
pub fn softmax_ce_per_sample(logits: &Tensor, labels: &Tensor, precision: Precision) -> Tensor {
    let logp = logits.to_kind(precision.kind()).log_softmax(-1, precision.kind());
    -logp.gather(1, &labels.unsqueeze(1), false).squeeze_dim(1)
}

/// Fraction of rows whose arg-max is the label.
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> f64 {
    let correct = logits.argmax(-1, false).eq_tensor(labels).to_kind(Kind::Double).mean(Kind::Double);
    f64::try_from(correct).expect("scalar")
}

/// Softmax Collapse as the official grokking code measures it: the fraction of samples whose
/// Σ_j exp(z_j − max z), computed in `precision`, is exactly 1 — every non-maximal term has
/// underflowed, so the softmax is a hard one-hot and its gradient vanishes.
pub fn softmax_collapse_fraction(logits: &Tensor, precision: Precision) -> f64 {
    let z = logits.to_kind(precision.kind());
    let shifted = &z - z.amax([-1].as_slice(), true);
    let sum_exp = shifted.exp().sum_dim_intlist([-1].as_slice(), false, precision.kind());
    let collapsed = sum_exp.eq(1.0).to_kind(Kind::Double).mean(Kind::Double);
    f64::try_from(collapsed).expect("scalar")
}

/// Fraction of samples whose per-sample loss is exactly zero (`zero_terms` in the official code).
pub fn zero_loss_fraction(per_sample_loss: &Tensor) -> f64 {
    let zero = per_sample_loss.eq(0.0).to_kind(Kind::Double).mean(Kind::Double);
    f64::try_from(zero).expect("scalar")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Logits with the label (class 0) at `top` and the C−1 others at `top − gap`.
    fn gapped_at(top: f64, gap: f64, classes: i64) -> Tensor {
        let z = Tensor::full([1, classes], top - gap, (Kind::Float, Device::Cpu));
        let _ = z.get(0).get(0).fill_(top);
        z
    }

    fn gapped(gap: f64, classes: i64) -> Tensor {
        gapped_at(0.0, gap, classes)
    }

    #[test]
    fn float32_loss_is_exactly_zero_only_past_the_collapse_gap() {
        // Each non-target term exp(−g) must fall below half an ulp of 1 (2^-24) for the sum to
        // round to exactly 1: g > 24 ln 2 ≈ 16.6. If the C−1 small terms are summed before the 1
        // the edge moves up to 24 ln 2 + ln(C−1) (the note's figure); ATen's reductions do either,
        // so the tests stay outside that band: 1 below the first, 1 above the second.
        for classes in [2i64, 10, 113] {
            let per_term = 24.0 * std::f64::consts::LN_2;
            let summed = per_term + ((classes - 1) as f64).ln();
            let y = Tensor::from_slice(&[0i64]);
            let below = softmax_ce_per_sample(&gapped(per_term - 1.0, classes), &y, Precision::Float32);
            let above = softmax_ce_per_sample(&gapped(summed + 1.0, classes), &y, Precision::Float32);
            assert!(f64::try_from(below.sum(Kind::Double)).unwrap() > 0.0, "C={classes}");
            assert_eq!(f64::try_from(above.sum(Kind::Double)).unwrap(), 0.0, "C={classes}");
            assert_eq!(softmax_collapse_fraction(&gapped(per_term - 1.0, classes), Precision::Float32), 0.0);
            assert_eq!(softmax_collapse_fraction(&gapped(summed + 1.0, classes), Precision::Float32), 1.0);
            // float64's edge is ≈ 36.7 (+ ln(C−1)): far from collapsed at the float32 edge.
            let f64_loss = softmax_ce_per_sample(&gapped(summed + 1.0, classes), &y, Precision::Float64);
            assert!(f64::try_from(f64_loss.sum(Kind::Double)).unwrap() > 0.0);
            assert_eq!(softmax_collapse_fraction(&gapped(summed + 1.0, classes), Precision::Float64), 0.0);
        }
    }

    #[test]
    fn ce_matches_direct_formula_and_accuracy_counts() {
        let z = Tensor::from_slice(&[1.0f64, 2.0, 0.5, -1.0, 0.0, 3.0]).view([2, 3]);
        let y = Tensor::from_slice(&[1i64, 0]);
        let loss = Vec::<f64>::try_from(softmax_ce_per_sample(&z, &y, Precision::Float64)).unwrap();
        let l0 = -(2.0f64.exp() / (1f64.exp() + 2f64.exp() + 0.5f64.exp())).ln();
        let l1 = -((-1f64).exp() / ((-1f64).exp() + 1.0 + 3f64.exp())).ln();
        assert!((loss[0] - l0).abs() < 1e-12 && (loss[1] - l1).abs() < 1e-12);
        assert_eq!(accuracy(&z, &y), 0.5);
        assert_eq!(zero_loss_fraction(&Tensor::from_slice(&[0.0f64, 1.0, 0.0, 2.0])), 0.5);
    }
}
