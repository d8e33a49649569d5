//! Implicit-feedback data for recommenders: per-user item lists, a per-user train/validation/test
//! split, injected noisy interactions, and uniform negative sampling.
//!
//! Lists are small per user and looked up often, so they are plain Rust vectors (sorted, for
//! binary search); the model's tensors index them by id.

use crate::context::Rng;

/// Each user's items, split; `noisy[u]` marks which of `train[u]` were injected.
#[derive(Debug, Clone)]
pub struct Implicit {
    pub n_users: usize,
    pub n_items: usize,
    pub train: Vec<Vec<i64>>,
    pub noisy: Vec<Vec<bool>>,
    pub val: Vec<Vec<i64>>,
    pub test: Vec<Vec<i64>>,
}

impl Implicit {
    /// Splits each user's list (shuffled by `rng`) as PLD's official code does: train the first
    /// ⌊train_frac·n⌋, test the last ⌊test_frac·n⌋, validation what is left between.
    pub fn split(n_items: usize, lists: &[Vec<i64>], train_frac: f64, test_frac: f64, rng: &mut Rng) -> Self {
        let (mut train, mut val, mut test) = (vec![], vec![], vec![]);
        for list in lists {
            let mut items = list.clone();
            rng.shuffle(&mut items);
            let n_train = (train_frac * items.len() as f64).floor() as usize;
            let n_test = (test_frac * items.len() as f64).floor() as usize;
            let n_val = items.len() - n_train - n_test;
            let sorted = |mut v: Vec<i64>| {
                v.sort_unstable();
                v
            };
            train.push(sorted(items[..n_train].to_vec()));
            val.push(sorted(items[n_train..n_train + n_val].to_vec()));
            test.push(sorted(items[n_train + n_val..].to_vec()));
        }
        let noisy = train.iter().map(|t| vec![false; t.len()]).collect();
        Implicit { n_users: lists.len(), n_items, train, noisy, val, test }
    }

    /// Whether user `u` interacted with `item` in any split.
    pub fn interacted(&self, u: usize, item: i64) -> bool {
        self.train[u].binary_search(&item).is_ok() || self.val[u].binary_search(&item).is_ok() || self.test[u].binary_search(&item).is_ok()
    }

    /// Adds ⌊ρ·|train_u|⌋ items per user to the training list only, drawn uniformly without
    /// replacement from the items not in it, and marks them noisy; validation and test are not
    /// touched. As in PLD's official `_add_noise`, only the training list is excluded, so an
    /// injected item can happen to be one of the user's held-out items (≈ |held-out|/|catalogue|
    /// of them).
    pub fn inject_noise(&mut self, rho: f64, rng: &mut Rng) {
        for u in 0..self.n_users {
            let want = ((rho * self.train[u].len() as f64).floor() as usize).min(self.n_items - self.train[u].len());
            let mut added: Vec<i64> = Vec::with_capacity(want);
            while added.len() < want {
                let item = rng.below(self.n_items as u64) as i64;
                if self.train[u].binary_search(&item).is_err() && !added.contains(&item) {
                    added.push(item);
                }
            }
            let mut merged: Vec<(i64, bool)> = self.train[u].iter().map(|&i| (i, false)).chain(added.into_iter().map(|i| (i, true))).collect();
            merged.sort_unstable();
            self.train[u] = merged.iter().map(|p| p.0).collect();
            self.noisy[u] = merged.iter().map(|p| p.1).collect();
        }
    }

    /// One item uniformly from those not in user `u`'s training list (rejection sampling: the
    /// lists are short against the catalogue).
    pub fn negative(&self, u: usize, rng: &mut Rng) -> i64 {
        loop {
            let item = rng.below(self.n_items as u64) as i64;
            if self.train[u].binary_search(&item).is_err() {
                return item;
            }
        }
    }

    /// Number of training interactions (noisy ones included).
    pub fn train_size(&self) -> usize {
        self.train.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists() -> Vec<Vec<i64>> {
        (0..20).map(|u| (0..30).map(|j| (u * 7 + j * 3) % 200).collect()).collect()
    }

    #[test]
    fn split_partitions_each_list_by_the_fractions() {
        let data = Implicit::split(200, &lists(), 0.7, 0.2, &mut Rng::new(1));
        for (u, l) in lists().iter().enumerate() {
            assert_eq!((data.train[u].len(), data.val[u].len(), data.test[u].len()), (21, 3, 6));
            let mut all: Vec<i64> = data.train[u].iter().chain(&data.val[u]).chain(&data.test[u]).copied().collect();
            all.sort_unstable();
            let mut want = l.clone();
            want.sort_unstable();
            assert_eq!(all, want);
        }
    }

    #[test]
    fn noise_adds_floor_rho_n_items_outside_the_training_list_to_it_only() {
        let clean = Implicit::split(200, &lists(), 0.7, 0.2, &mut Rng::new(1));
        let mut data = clean.clone();
        data.inject_noise(0.4, &mut Rng::new(2));
        for u in 0..20 {
            assert_eq!(data.train[u].len(), 21 + 8, "⌊0.4·21⌋ = 8");
            assert_eq!(data.noisy[u].iter().filter(|&&b| b).count(), 8);
            assert_eq!((data.val[u].clone(), data.test[u].clone()), (clean.val[u].clone(), clean.test[u].clone()));
            for (item, &noisy) in data.train[u].iter().zip(&data.noisy[u]) {
                assert_eq!(noisy, clean.train[u].binary_search(item).is_err(), "user {u} item {item}");
            }
            assert!(data.train[u].windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
        }
    }

    #[test]
    fn negatives_avoid_the_training_list_and_cover_the_rest() {
        let data = Implicit::split(40, &[(0..20).collect()], 1.0, 0.0, &mut Rng::new(1));
        let mut rng = Rng::new(3);
        let mut seen = [0usize; 40];
        for _ in 0..4000 {
            seen[data.negative(0, &mut rng) as usize] += 1;
        }
        assert!(seen[..20].iter().all(|&c| c == 0));
        assert!(seen[20..].iter().all(|&c| (130..=270).contains(&c)), "{seen:?}");
    }
}
