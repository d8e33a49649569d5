//! Co-teaching's small-loss selection (Han et al. 2018): each network keeps the samples with the
//! smallest loss — likely clean — and its peer trains on them.

use tch::Tensor;

/// Indices (into `losses`) of the `keep` smallest values.
pub fn small_loss(losses: &Tensor, keep: i64) -> Tensor {
    losses.argsort(0, false).narrow(0, 0, keep.clamp(0, losses.size()[0]))
}

/// How many of `batch` samples a forget rate τ keeps: int((1 − τ)·batch), at least 1.
pub fn kept(batch: i64, forget_rate: f64) -> i64 {
    (((1.0 - forget_rate) * batch as f64) as i64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_exactly_the_smallest_losses() {
        let l = Tensor::from_slice(&[0.5f32, 0.1, 2.0, 0.3, 0.2]);
        let mut picked = Vec::<i64>::try_from(small_loss(&l, kept(5, 0.4))).unwrap();
        picked.sort();
        assert_eq!(picked, vec![1, 3, 4]);
        assert_eq!(small_loss(&l, kept(5, 0.0)).size(), vec![5], "τ = 0 keeps the whole batch");
        assert_eq!(kept(64, 0.4), 38);
    }
}
