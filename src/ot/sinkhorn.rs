//! Entropic OT by log-domain Sinkhorn: potentials f, g with
//! T_ij = exp((f_i + g_j − C_ij) / ε); alternating exact updates of f and g.

use tch::{Kind, Tensor};

#[derive(Debug)]
pub struct SinkhornResult {
    pub plan: Tensor,
    pub iterations: usize,
    pub marginal_err: f64,
}

/// Runs at most `max_iter` sweeps, stopping when ‖T1 − a‖₁ < `tol` (checked every 10 sweeps;
/// the column marginal is exact after each sweep). `on_check(sweeps)` runs at each check; its
/// error (e.g. Ctrl-C) stops the solve.
pub fn sinkhorn_log(
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    eps: f64,
    max_iter: usize,
    tol: f64,
    mut on_check: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<SinkhornResult> {
    let (log_a, log_b) = (a.log(), b.log());
    let mut f = a.zeros_like();
    let mut g = b.zeros_like();
    let plan_of = |f: &Tensor, g: &Tensor| ((f.unsqueeze(1) + g.unsqueeze(0) - c) / eps).exp();
    let mut iterations = 0;
    let mut err = f64::INFINITY;
    while iterations < max_iter {
        f = eps * (&log_a - ((g.unsqueeze(0) - c) / eps).logsumexp([1].as_slice(), false));
        g = eps * (&log_b - ((f.unsqueeze(1) - c) / eps).logsumexp([0].as_slice(), false));
        iterations += 1;
        if iterations % 10 == 0 || iterations == max_iter {
            let rows = plan_of(&f, &g).sum_dim_intlist([1].as_slice(), false, Kind::Double);
            err = f64::try_from((rows - a).abs().sum(Kind::Double)).expect("scalar");
            on_check(iterations)?;
            if err < tol {
                break;
            }
        }
    }
    Ok(SinkhornResult { plan: plan_of(&f, &g), iterations, marginal_err: err })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn marginals_hold_and_large_eps_gives_the_independent_coupling() {
        let a = Tensor::from_slice(&[0.2f64, 0.5, 0.3]);
        let b = Tensor::from_slice(&[0.6f64, 0.4]);
        let c = Tensor::rand([3, 2], (Kind::Double, Device::Cpu));
        let r = sinkhorn_log(&a, &b, &c, 0.05, 5000, 1e-12, |_| Ok(())).unwrap();
        assert!(r.marginal_err < 1e-10);
        let cols = r.plan.sum_dim_intlist([0].as_slice(), false, Kind::Double);
        assert!(f64::try_from((cols - &b).abs().max()).unwrap() < 1e-12);
        // ε → ∞: T → a bᵀ.
        let big = sinkhorn_log(&a, &b, &c, 1e6, 100, 1e-14, |_| Ok(())).unwrap();
        let outer = a.unsqueeze(1) * b.unsqueeze(0);
        assert!(f64::try_from((big.plan - outer).abs().max()).unwrap() < 1e-6);
    }
}
