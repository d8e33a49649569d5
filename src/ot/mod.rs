//! Optimal transport building blocks: smoothed/sparse (semi-)duals, Sinkhorn, exact assignment,
//! and plan statistics. Marginals a (m), b (n) and cost C (m × n) are float64 tensors.

pub mod exact;
pub mod regularized;
pub mod sinkhorn;

use tch::{Kind, Tensor};

/// Statistics of a transport plan T against its problem.
#[derive(Debug, Clone, Copy)]
pub struct PlanStats {
    pub max_nnz_col: f64,
    pub mean_nnz_col: f64,
    /// ⟨T, C⟩.
    pub cost: f64,
    /// ‖T1 − a‖₁ + ‖Tᵀ1 − b‖₁.
    pub marginal_err: f64,
}

pub fn plan_stats(plan: &Tensor, a: &Tensor, b: &Tensor, c: &Tensor) -> PlanStats {
    let nnz = plan.gt(0.0).sum_dim_intlist([0].as_slice(), false, Kind::Double);
    let scalar = |t: Tensor| f64::try_from(t).expect("scalar");
    let row_err = (plan.sum_dim_intlist([1].as_slice(), false, Kind::Double) - a).abs().sum(Kind::Double);
    let col_err = (plan.sum_dim_intlist([0].as_slice(), false, Kind::Double) - b).abs().sum(Kind::Double);
    PlanStats {
        max_nnz_col: scalar(nnz.max()),
        mean_nnz_col: scalar(nnz.mean(Kind::Double)),
        cost: scalar((plan * c).sum(Kind::Double)),
        marginal_err: scalar(row_err + col_err),
    }
}
