//! Matrix factorisation for implicit feedback: a user and an item embedding table, score ⟨e_u, e_i⟩.

use tch::nn;
use tch::Tensor;

pub struct Mf {
    pub users: Tensor,
    pub items: Tensor,
}

impl Mf {
    /// Tables [users, dim] and [items, dim] drawn from N(0, init_std²) (PLD's official MF: 0.1).
    pub fn new(vs: &nn::Path, users: i64, items: i64, dim: i64, init_std: f64) -> Self {
        let init = nn::Init::Randn { mean: 0.0, stdev: init_std };
        Mf { users: vs.var("users", &[users, dim], init), items: vs.var("items", &[items, dim], init) }
    }

    /// ⟨e_u, e_i⟩ for aligned index tensors of any (equal) shape.
    pub fn score(&self, users: &Tensor, items: &Tensor) -> Tensor {
        (self.users.index_select(0, &users.flatten(0, -1)) * self.items.index_select(0, &items.flatten(0, -1)))
            .sum_dim_intlist([1].as_slice(), false, self.users.kind())
            .view(users.size().as_slice())
    }

    /// Every user's score for every item, [users, items].
    pub fn all_scores(&self) -> Tensor {
        self.users.matmul(&self.items.tr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn pair_scores_agree_with_the_full_score_matrix() {
        let vs = nn::VarStore::new(Device::Cpu);
        let mf = Mf::new(&vs.root(), 4, 6, 3, 0.1);
        let full = mf.all_scores();
        let u = Tensor::from_slice(&[0i64, 3, 2, 3, 1, 0]).view([2, 3]);
        let i = Tensor::from_slice(&[5i64, 0, 2, 2, 4, 1]).view([2, 3]);
        let s = mf.score(&u, &i);
        assert_eq!(s.size(), vec![2, 3]);
        for (k, (uu, ii)) in [(0, 5), (3, 0), (2, 2), (3, 2), (1, 4), (0, 1)].iter().enumerate() {
            let want = full.double_value(&[*uu, *ii]);
            assert!((s.flatten(0, -1).double_value(&[k as i64]) - want).abs() < 1e-6);
        }
        let std = mf.items.std(true).double_value(&[]);
        assert!(mf.users.kind() == Kind::Float && (0.04..0.2).contains(&std), "{std}");
    }
}
