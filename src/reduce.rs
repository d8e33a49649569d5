//! Reductions whose result does not depend on the torch thread count.
//!
//! `Tensor::dot` and `Tensor::norm` go to BLAS / parallel kernels that split the sum by thread,
//! so the same run with 1 and 2 threads can differ in the last bits — and through ⊥Grad's
//! projection, in everything after. Elementwise products summed by ATen's reduction are
//! single-chunk below its grain size (32768 elements), which covers the tensors of the CPU specs.

use tch::Tensor;

/// ⟨a, b⟩ over all elements, in the tensors' dtype.
pub fn dot(a: &Tensor, b: &Tensor) -> Tensor {
    (a * b).sum(a.kind())
}

/// ‖a‖₂ over all elements, in the tensor's dtype.
pub fn norm(a: &Tensor) -> Tensor {
    dot(a, a).sqrt()
}
