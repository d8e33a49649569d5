//! Second-order tools on autograd: Hessian-vector products by double backward (and the mixed
//! ∇²_xy products of bilevel hypergradients), Hutchinson's trace estimator, power iteration for the largest Hessian eigenvalue, and the exact Hessian of
//! small problems (for testing the others).
//!
//! Parameters are a list of tensors (a model's trainable variables); vectors are lists of the
//! same shapes. `loss` is a closure so each call rebuilds the graph with `create_graph`.

use tch::{Kind, Tensor};

fn dot(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::try_from((x * y).sum(Kind::Double)).expect("scalar")).sum()
}

/// H·v for the Hessian of `loss()` with respect to `params`.
pub fn hvp(loss: &mut impl FnMut() -> Tensor, params: &[Tensor], v: &[Tensor]) -> Vec<Tensor> {
    hvp_and_grad(loss, params, v).0
}

/// (H·v, ∇loss) from one graph: bilevel hypergradients need both at the same point. A parameter
/// the loss does not reach gets zeros. Sums keep the parameters' dtype (f64 stays f64).
pub fn hvp_and_grad(loss: &mut impl FnMut() -> Tensor, params: &[Tensor], v: &[Tensor]) -> (Vec<Tensor>, Vec<Tensor>) {
    let l = loss();
    let grads = defined_or_zeros(Tensor::run_backward(&[&l], params, true, true), params);
    let hv = defined_or_zeros(Tensor::run_backward(&[&weighted_sum(&grads, v)], params, false, false), params);
    (hv.into_iter().map(|t| t.detach()).collect(), grads.iter().map(Tensor::detach).collect())
}

/// The mixed second derivative ∇_x ⟨∇_y loss(x, y), z⟩ = ∇²_xy loss · z, with `loss(x)` built on
/// the parameters `y` (Hessian-free, by double backward): the cross term of an implicit hypergradient.
pub fn cross_hvp(loss: &mut impl FnMut(&Tensor) -> Tensor, x: &Tensor, y: &[Tensor], z: &[Tensor]) -> Tensor {
    let x = x.detach().set_requires_grad(true);
    let l = loss(&x);
    let gy = defined_or_zeros(Tensor::run_backward(&[&l], y, true, true), y);
    let xs = std::slice::from_ref(&x);
    defined_or_zeros(Tensor::run_backward(&[&weighted_sum(&gy, z)], xs, false, false), xs).remove(0).detach()
}

/// Σ_i ⟨a_i, b_i⟩ as a differentiable scalar, in the dtype of the a_i.
fn weighted_sum(a: &[Tensor], b: &[Tensor]) -> Tensor {
    a.iter().zip(b).map(|(x, y)| (x * y).sum(x.kind())).reduce(|p, q| p + q).expect("at least one parameter")
}

/// Autograd leaves an input's gradient undefined when the output does not depend on it.
fn defined_or_zeros(grads: Vec<Tensor>, inputs: &[Tensor]) -> Vec<Tensor> {
    grads.into_iter().zip(inputs).map(|(g, p)| if g.defined() { g } else { p.detach().zeros_like() }).collect()
}

/// Hutchinson's estimate of Tr(H) with `samples` Rademacher probes (torch's generator).
pub fn hutchinson_trace(loss: &mut impl FnMut() -> Tensor, params: &[Tensor], samples: usize) -> f64 {
    let mut total = 0.0;
    for _ in 0..samples {
        let v: Vec<Tensor> = params.iter().map(|p| p.rand_like().lt(0.5).to_kind(p.kind()) * 2.0 - 1.0).collect();
        total += dot(&v, &hvp(loss, params, &v));
    }
    total / samples.max(1) as f64
}

/// The largest-magnitude Hessian eigenvalue by power iteration (`iters` H·v products).
pub fn power_iteration(loss: &mut impl FnMut() -> Tensor, params: &[Tensor], iters: usize) -> f64 {
    let mut v: Vec<Tensor> = params.iter().map(|p| p.randn_like()).collect();
    let mut eig = 0.0;
    for _ in 0..iters {
        let norm = dot(&v, &v).sqrt().max(1e-30);
        v = v.iter().map(|t| t / norm).collect();
        let hv = hvp(loss, params, &v);
        eig = dot(&v, &hv);
        v = hv;
    }
    eig
}

/// The exact Hessian [P, P] of `loss()` with respect to one flat parameter tensor `p` [P].
pub fn exact_hessian(loss: &mut impl FnMut() -> Tensor, p: &Tensor) -> Tensor {
    let n = p.numel() as i64;
    let rows: Vec<Tensor> = (0..n)
        .map(|i| {
            let e = p.zeros_like();
            let _ = e.view([-1]).get(i).fill_(1.0);
            hvp(loss, std::slice::from_ref(p), &[e]).remove(0).view([-1])
        })
        .collect();
    Tensor::stack(&rows, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// L(w) = ½ wᵀAw + sin(w₀ w₁): H = A + ∂² of the sine term.
    fn problem() -> (Tensor, Tensor) {
        let a = Tensor::from_slice(&[4.0f64, 1.0, 0.0, 1.0, 3.0, 0.5, 0.0, 0.5, 2.0]).view([3, 3]);
        let w = Tensor::from_slice(&[0.3f64, -0.7, 1.1]).set_requires_grad(true);
        (a, w)
    }

    #[test]
    fn hessian_tools_match_the_closed_form() {
        let (a, w) = problem();
        let mut loss = || (w.dot(&a.mv(&w)) * 0.5) + (w.get(0) * w.get(1)).sin();
        let h = exact_hessian(&mut loss, &w);
        let (x, y) = (0.3f64, -0.7f64);
        let (s, c) = ((x * y).sin(), (x * y).cos());
        let mut expected = Vec::<f64>::try_from(a.flatten(0, -1)).unwrap();
        expected[0] += -s * y * y;
        expected[4] += -s * x * x;
        expected[1] += c - s * x * y;
        expected[3] += c - s * x * y;
        let got = Vec::<f64>::try_from(h.flatten(0, -1)).unwrap();
        assert!(got.iter().zip(&expected).all(|(g, e)| (g - e).abs() < 1e-12), "{got:?} vs {expected:?}");
        // Power iteration finds the top eigenvalue; Hutchinson is unbiased for the trace.
        tch::manual_seed(0);
        let eigs = Vec::<f64>::try_from(h.linalg_eigvalsh("L")).unwrap();
        let top = eigs.iter().cloned().fold(f64::MIN, f64::max);
        let p = power_iteration(&mut loss, std::slice::from_ref(&w), 200);
        assert!((p - top).abs() < 1e-8, "{p} vs {top}");
        let trace: f64 = expected[0] + expected[4] + expected[8];
        // Within 5 standard errors √(2 Σ_{i≠j} H_ij² / probes).
        let off = f64::try_from(h.square().sum(Kind::Double) - h.diagonal(0, 0, 1).square().sum(Kind::Double)).unwrap();
        let est = hutchinson_trace(&mut loss, std::slice::from_ref(&w), 4000);
        assert!((est - trace).abs() < 5.0 * (2.0 * off / 4000.0).sqrt(), "{est} vs {trace}");
        let _ = Device::Cpu;
    }
}
