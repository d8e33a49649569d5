//! Modular arithmetic (the grokking task): all p² pairs (a, b), input the concatenation of
//! one-hot(a) and one-hot(b) (2p features), label (a + b) mod p.
//!
//! The train/test split is a permutation from torch's generator seeded with `split_seed`,
//! as the official code's `random_split` after `torch.manual_seed(42)`: the first
//! ⌊fraction · p²⌋ indices are the training set.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

#[derive(Debug)]
pub struct Split {
    pub train_x: Tensor,
    pub train_y: Tensor,
    pub test_x: Tensor,
    pub test_y: Tensor,
}

/// Builds the modular-addition dataset and splits it. Leaves torch's generator reseeded: call
/// `tch::manual_seed(run_seed)` afterwards if the run needs its own stream.
pub fn modular_addition(p: i64, train_fraction: f64, split_seed: u64, device: Device) -> Result<Split> {
    if p < 2 {
        bail!("modulus must be at least 2, got {p}");
    }
    if !(0.0..1.0).contains(&train_fraction) || train_fraction == 0.0 {
        bail!("train_fraction must be in (0, 1), got {train_fraction}");
    }
    let a = Tensor::arange(p, (Kind::Int64, device)).repeat_interleave_self_int(p, 0, None);
    let b = Tensor::arange(p, (Kind::Int64, device)).repeat([p]);
    let y = (&a + &b).remainder(p);
    let x = Tensor::cat(&[a.one_hot(p), b.one_hot(p)], 1).to_kind(Kind::Float);
    let n = p * p;
    let n_train = (train_fraction * n as f64) as i64;
    tch::manual_seed(split_seed as i64);
    let perm = Tensor::randperm(n, (Kind::Int64, Device::Cpu)).to_device(device);
    let (tr, te) = (perm.narrow(0, 0, n_train), perm.narrow(0, n_train, n - n_train));
    Ok(Split { train_x: x.index_select(0, &tr), train_y: y.index_select(0, &tr), test_x: x.index_select(0, &te), test_y: y.index_select(0, &te) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sums_mod_p_and_split_is_a_partition() {
        let p = 7;
        let s = modular_addition(p, 0.4, 42, Device::Cpu).unwrap();
        assert_eq!(s.train_x.size(), vec![19, 14]);
        assert_eq!(s.test_x.size(), vec![30, 14]);
        let all_x = Tensor::cat(&[&s.train_x, &s.test_x], 0);
        let all_y = Tensor::cat(&[&s.train_y, &s.test_y], 0);
        let a = all_x.narrow(1, 0, p).argmax(1, false);
        let b = all_x.narrow(1, p, p).argmax(1, false);
        assert!(bool::try_from((&a + &b).remainder(p).eq_tensor(&all_y).all()).unwrap());
        // Every pair appears exactly once.
        let code = Vec::<i64>::try_from(a * p + b).unwrap();
        let mut sorted = code.clone();
        sorted.sort();
        assert_eq!(sorted, (0..p * p).collect::<Vec<_>>());
        // The split depends only on the split seed.
        let again = modular_addition(p, 0.4, 42, Device::Cpu).unwrap();
        assert!(bool::try_from(again.train_y.eq_tensor(&s.train_y).all()).unwrap());
    }
}
