//! Regularised OT through its dual and semi-dual (Blondel, Seguy & Rolet 2018; with the
//! sparsity constraint of Liu, Puigcerver & Blondel 2023, arXiv 2209.15466).
//!
//! The column regulariser is Ω(t) = (γ/2)‖t‖² plus, when `k` is set, the constraint ‖t‖₀ ≤ k.
//! Its conjugates, as in POT's `SparsityConstrained` / `SquaredL2` (checked against POT 0.9.7):
//! - δ_Ω(s) = (1/2γ) Σ_{top-k of s} [s]₊², gradient [s]₊/γ on those entries (dual);
//! - max_Ω(s; b_j): G = P_k(s / (b_j γ)), value ⟨s, G⟩ − (γ b_j / 2)‖G‖² (semi-dual), column
//!   j of the plan b_j·G.
//! Everything is in maximisation form ("higher is better"), as POT returns it. Unlike POT's
//! `delta_Omega`, nothing overwrites its input; k ≥ m is the unconstrained (quadratic) case.
//! Ties at the k-th entry are broken by torch's `topk` (POT's numpy argsort keeps the higher
//! index); the objective is the same either way, the plan may differ on degenerate costs.

use tch::{Kind, Tensor};

use crate::reduce::dot;

/// Ω's parameters: strength γ and the optional nonzero budget per column.
#[derive(Debug, Clone, Copy)]
pub struct Regularizer {
    pub gamma: f64,
    /// At most k nonzeros per column; `None` is quadratically regularised OT.
    pub k: Option<i64>,
}

impl Regularizer {
    fn k_for(&self, m: i64) -> i64 {
        self.k.map_or(m, |k| k.clamp(1, m))
    }
}

/// Projection of each column of `v` onto {w ≥ 0, Σw = 1, ‖w‖₀ ≤ k} (Kyrillidis et al. 2013):
/// keep the k largest entries, then the sort-based simplex projection of those.
pub fn sparse_simplex_projection(v: &Tensor, k: i64) -> Tensor {
    let m = v.size()[0];
    let k = k.clamp(1, m);
    let (u, idx) = v.topk(k, 0, true, true);
    let cssv = u.cumsum(0, Kind::Double) - 1.0;
    let r = Tensor::arange_start(1, k + 1, (Kind::Double, v.device())).view([k, 1]);
    // U_r − cssv_r / r > 0 holds on a prefix; rho is its length (≥ 1: at r = 1 the value is 1 —
    // but it rounds to 0 once |U| ≳ 1e16, and a NaN column fails every comparison, so rho is held
    // at ≥ 1 rather than indexing out of range; a NaN then propagates to the objective, whose line
    // search rejects it).
    let rho = (&u - &cssv / &r).gt(0.0).sum_dim_intlist([0].as_slice(), true, Kind::Int64).clamp_min(1);
    let theta = cssv.gather(0, &(&rho - 1), false) / rho.to_kind(Kind::Double);
    let w = (u - theta).clamp_min(0.0);
    v.zeros_like().scatter(0, &idx, &w)
}

/// A 0/1 mask of the k largest entries of each column.
fn top_k_mask(x: &Tensor, k: i64) -> Tensor {
    let (_, idx) = x.topk(k, 0, true, false);
    x.zeros_like().scatter_value(0, &idx, 1.0)
}

/// Semi-dual objective (maximisation form), its gradient, and the plan at `alpha`.
pub fn semi_dual(alpha: &Tensor, a: &Tensor, b: &Tensor, c: &Tensor, reg: Regularizer) -> (f64, Tensor, Tensor) {
    let m = c.size()[0];
    let x = alpha.unsqueeze(1) - c;
    let g = sparse_simplex_projection(&(&x / (b.unsqueeze(0) * reg.gamma)), reg.k_for(m));
    let val = (&x * &g).sum_dim_intlist([0].as_slice(), false, Kind::Double)
        - 0.5 * reg.gamma * b * g.square().sum_dim_intlist([0].as_slice(), false, Kind::Double);
    let obj = dot(alpha, a) - dot(b, &val);
    let grad = a - g.matmul(b);
    let plan = g * b.unsqueeze(0);
    (f64::try_from(obj).expect("scalar"), grad, plan)
}

/// Dual objective (maximisation form), its gradients (α, β), and the plan at (α, β).
pub fn dual(alpha: &Tensor, beta: &Tensor, a: &Tensor, b: &Tensor, c: &Tensor, reg: Regularizer) -> (f64, Tensor, Tensor, Tensor) {
    let m = c.size()[0];
    let x = alpha.unsqueeze(1) + beta.unsqueeze(0) - c;
    let kept = x.clamp_min(0.0) * top_k_mask(&x, reg.k_for(m));
    let val = kept.square().sum(Kind::Double) / (2.0 * reg.gamma);
    let g = kept / reg.gamma;
    let obj = dot(alpha, a) + dot(beta, b) - val;
    let grad_alpha = a - g.sum_dim_intlist([1].as_slice(), false, Kind::Double);
    let grad_beta = b - g.sum_dim_intlist([0].as_slice(), false, Kind::Double);
    (f64::try_from(obj).expect("scalar"), grad_alpha, grad_beta, g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_never_indexes_out_of_range_on_huge_or_nan_columns() {
        // Found by CI: an L-BFGS trial point with huge duals made rho 0 and gather(−1) panic.
        let v = Tensor::from_slice(&[1e17f64, 3e16, 5.0, f64::NAN, 1.0, 2.0]).view([3, 2]);
        let w = sparse_simplex_projection(&v, 2);
        assert_eq!(w.size(), vec![3, 2]);
        // The NaN column stays NaN (so the objective is NaN and rejected), the other is finite.
        assert!(w.select(1, 1).isnan().any().int64_value(&[]) == 1);
        assert!(w.select(1, 0).isfinite().all().int64_value(&[]) == 1);
        // Ordinary columns are untouched by the guard: a point of the simplex with ≤ k nonzeros.
        let v = Tensor::from_slice(&[0.3f64, 0.8, -1.0, 0.6]).view([4, 1]);
        let w = sparse_simplex_projection(&v, 2);
        assert!((w.sum(Kind::Double).double_value(&[]) - 1.0).abs() < 1e-12);
        assert_eq!(w.gt(0.0).sum(Kind::Int64).int64_value(&[]), 2);
    }
    use crate::testutil::f64s as v;
    use tch::Device;

    fn t(v: &[f64]) -> Tensor {
        Tensor::from_slice(v)
    }
    fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    /// The reference instance; the numbers below come from POT 0.9.7 (`ot.smooth`, `ot.utils`).
    fn instance() -> (Tensor, Tensor, Tensor) {
        let a = t(&[0.1, 0.2, 0.3, 0.25, 0.15]);
        let b = t(&[0.3, 0.2, 0.4, 0.1]);
        let mut c = vec![];
        for i in 1..=5 {
            for j in 1..=4 {
                c.push((i as f64 * 0.37 + j as f64 * 0.61) % 1.0);
            }
        }
        (a, b, t(&c).view([5, 4]))
    }

    #[test]
    fn projection_matches_pot_and_brute_force() {
        let x = t(&[0.5, -0.2, 1.3, 0.9, 0.05, 0.7]).view([6, 1]);
        assert!(close(&v(&sparse_simplex_projection(&x, 2)), &[0.0, 0.0, 0.7, 0.3, 0.0, 0.0], 1e-12));
        let full = [0.0, 0.0, 2.0 / 3.0, 0.8 / 3.0, 0.0, 0.2 / 3.0];
        assert!(close(&v(&sparse_simplex_projection(&x, 6)), &full, 1e-12));
        assert!(close(&v(&sparse_simplex_projection(&x, 3)), &full, 1e-12));
        assert!(close(&v(&sparse_simplex_projection(&x, 99)), &full, 1e-12));
        assert!(close(&v(&sparse_simplex_projection(&x, 1)), &[0.0, 0.0, 1.0, 0.0, 0.0, 0.0], 1e-12));
        // Brute force: the best point over every 2-subset's simplex, in squared distance.
        tch::manual_seed(5);
        for _ in 0..20 {
            let y = Tensor::randn([6, 1], (Kind::Double, Device::Cpu));
            let p = v(&sparse_simplex_projection(&y, 2));
            let yv = v(&y);
            assert!(p.iter().all(|&q| q >= 0.0) && (p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert!(p.iter().filter(|&&q| q > 0.0).count() <= 2);
            let dist = |w: &[f64]| w.iter().zip(&yv).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
            let mut best = f64::INFINITY;
            for i in 0..6 {
                for j in (i + 1)..6 {
                    // Projection of (y_i, y_j) onto the 2-simplex, the rest zero.
                    let s = ((yv[i] - yv[j] + 1.0) / 2.0).clamp(0.0, 1.0);
                    let mut w = vec![0.0; 6];
                    w[i] = s;
                    w[j] = 1.0 - s;
                    best = best.min(dist(&w));
                }
            }
            assert!((dist(&p) - best).abs() < 1e-12, "{} vs {best}", dist(&p));
        }
    }

    #[test]
    fn semi_dual_and_dual_match_pot_at_fixed_points() {
        let (a, b, c) = instance();
        let reg = Regularizer { gamma: 0.5, k: Some(2) };
        let alpha = t(&[0.1, -0.2, 0.05, 0.3, 0.0]);
        let (obj, grad, plan) = semi_dual(&alpha, &a, &b, &c, reg);
        assert!((obj - 0.11295).abs() < 1e-10, "{obj}");
        assert!(close(&v(&grad), &[-0.01, 0.2, 0.3, -0.34, -0.15], 1e-10));
        let pot_plan = [0., 0., 0.11, 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.3, 0., 0.29, 0., 0., 0.2, 0., 0.1];
        assert!(close(&v(&plan), &pot_plan, 1e-10));
        let beta = t(&[0.2, 0.1, -0.1, 0.0]);
        let (obj, ga, gb, g) = dual(&alpha, &beta, &a, &b, &c, reg);
        assert!((obj + 0.069).abs() < 1e-10, "{obj}");
        assert!(close(&v(&ga), &[0.1, 0.2, 0.3, -0.57, 0.09], 1e-10));
        assert!(close(&v(&gb), &[-0.52, 0.14, 0.4, 0.1], 1e-10));
        assert!((v(&g)[12] - 0.82).abs() < 1e-10 && (v(&g)[17] - 0.06).abs() < 1e-10);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (a, b, c) = instance();
        tch::manual_seed(2);
        for k in [Some(2), Some(3), None] {
            let reg = Regularizer { gamma: 0.5, k };
            let alpha = Tensor::randn([5], (Kind::Double, Device::Cpu)) * 0.3;
            let beta = Tensor::randn([4], (Kind::Double, Device::Cpu)) * 0.3;
            let (_, grad, _) = semi_dual(&alpha, &a, &b, &c, reg);
            let (_, ga, gb, _) = dual(&alpha, &beta, &a, &b, &c, reg);
            let h = 1e-7;
            for i in 0..5 {
                let e = Tensor::zeros([5], (Kind::Double, Device::Cpu));
                let _ = e.get(i).fill_(h);
                let fd = (semi_dual(&(&alpha + &e), &a, &b, &c, reg).0 - semi_dual(&(&alpha - &e), &a, &b, &c, reg).0) / (2.0 * h);
                assert!((fd - v(&grad)[i as usize]).abs() < 1e-6, "semi-dual k={k:?} coord {i}");
                let fd = (dual(&(&alpha + &e), &beta, &a, &b, &c, reg).0 - dual(&(&alpha - &e), &beta, &a, &b, &c, reg).0) / (2.0 * h);
                assert!((fd - v(&ga)[i as usize]).abs() < 1e-6, "dual alpha k={k:?} coord {i}");
            }
            for j in 0..4 {
                let e = Tensor::zeros([4], (Kind::Double, Device::Cpu));
                let _ = e.get(j).fill_(h);
                let fd = (dual(&alpha, &(&beta + &e), &a, &b, &c, reg).0 - dual(&alpha, &(&beta - &e), &a, &b, &c, reg).0) / (2.0 * h);
                assert!((fd - v(&gb)[j as usize]).abs() < 1e-6, "dual beta k={k:?} coord {j}");
            }
        }
    }

    #[test]
    fn delta_omega_fenchel_young_equality() {
        // δ(s) + Ω(t) = ⟨s, t⟩ at t = ∇δ(s), for each column.
        tch::manual_seed(9);
        let gamma = 0.7;
        let s = Tensor::randn([6, 3], (Kind::Double, Device::Cpu));
        let kept = s.clamp_min(0.0) * top_k_mask(&s, 2);
        let delta = kept.square().sum(Kind::Double) / (2.0 * gamma);
        let tplan = &kept / gamma;
        let omega = tplan.square().sum(Kind::Double) * (gamma / 2.0);
        let lhs = f64::try_from(delta + omega).unwrap();
        let rhs = f64::try_from((&s * &tplan).sum(Kind::Double)).unwrap();
        assert!((lhs - rhs).abs() < 1e-12);
        assert!(v(&tplan.gt(0.0).sum_dim_intlist([0].as_slice(), false, Kind::Double)).iter().all(|&n| n <= 2.0));
    }
}
