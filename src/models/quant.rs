//! Fake quantisation with learned step sizes (LSQ, Esser et al. 2020): v̂ = s·⌊clip(v/s, −Q_N, Q_P)⌉,
//! with a straight-through estimator for the rounding and LSQ's gradient scale g on the step, so
//! that ∂v̂/∂v = 1 inside the clip range and 0 outside, and ∂v̂/∂s = g·(⌊v/s⌉ − v/s) inside, g·(−Q_N)
//! below, g·Q_P above. The bit-width is an argument of each call (an elastic supernet quantises
//! the same weights at several widths); a per-channel step is a step tensor that broadcasts over
//! the weights (e.g. [C, 1, 1, 1]). Post-training calibration: the min-max step, and LSQ's own
//! initialisation 2·mean|v|/√Q_P. Checked against the widely used LSQ implementation (lsq-net's
//! `grad_scale`, `round_pass`, `init_from` and forward: g = 1/√(Q_P·numel), divide, clamp, round
//! with the STE, multiply).

use tch::Tensor;

/// The integer grid [−Q_N, Q_P] of a quantiser.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Levels {
    pub qn: f64,
    pub qp: f64,
}

impl Levels {
    /// Signed b-bit integers: [−2^(b−1), 2^(b−1) − 1] (weights), b ≥ 2.
    pub fn signed(bits: u32) -> Self {
        assert!((2..=16).contains(&bits), "a signed grid needs 2..=16 bits, got {bits}");
        let half = 2f64.powi(bits as i32 - 1);
        Levels { qn: half, qp: half - 1.0 }
    }

    /// Unsigned b-bit integers: [0, 2^b − 1] (activations after a ReLU).
    pub fn unsigned(bits: u32) -> Self {
        assert!((1..=16).contains(&bits), "bit-width {bits} outside 1..=16");
        Levels { qn: 0.0, qp: 2f64.powi(bits as i32) - 1.0 }
    }
}

/// LSQ's step-gradient scale g = 1/√(N·Q_P) for N quantised elements.
pub fn grad_scale(numel: i64, levels: Levels) -> f64 {
    1.0 / ((numel as f64) * levels.qp.max(1.0)).sqrt()
}

/// x in the forward, x·scale in the backward.
fn scale_grad(x: &Tensor, scale: f64) -> Tensor {
    let y = x * scale;
    (x - &y).detach() + y
}

/// ⌊x⌉ in the forward, identity in the backward.
fn round_ste(x: &Tensor) -> Tensor {
    (x.round() - x).detach() + x
}

/// LSQ fake quantisation of `v` with step `step` (a scalar or a tensor that broadcasts over `v`)
/// on `levels`, the step's gradient scaled by `g` (use [`grad_scale`]; 1 leaves it unscaled).
pub fn lsq(v: &Tensor, step: &Tensor, levels: Levels, g: f64) -> Tensor {
    let s = scale_grad(step, g);
    round_ste(&(v / &s).clamp(-levels.qn, levels.qp)) * s
}

/// The min-max calibration step: the largest |v| maps to the top level Q_P, so nothing above is
/// clipped (per channel along dim 0 when `per_channel`, shaped to broadcast over `v`).
pub fn minmax_step(v: &Tensor, levels: Levels, per_channel: bool) -> Tensor {
    let top = levels.qp.max(1.0);
    if per_channel && v.dim() > 1 {
        let mut shape = vec![v.size()[0]];
        shape.extend(std::iter::repeat(1).take(v.dim() - 1));
        v.detach().abs().flatten(1, -1).amax([1i64].as_slice(), false).view(shape.as_slice()).clamp_min(1e-12) / top
    } else {
        v.detach().abs().max().clamp_min(1e-12) / top
    }
}

/// LSQ's initial step: 2·mean|v|/√Q_P (the mean per channel along dim 0 when `per_channel`,
/// shaped to broadcast over `v`).
pub fn lsq_init_step(v: &Tensor, levels: Levels, per_channel: bool) -> Tensor {
    let k = 2.0 / levels.qp.max(1.0).sqrt();
    if per_channel && v.dim() > 1 {
        let dims: Vec<i64> = (1..v.dim() as i64).collect();
        v.detach().abs().mean_dim(dims.as_slice(), true, v.kind()) * k
    } else {
        v.detach().abs().mean(v.kind()) * k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Rng;
    use crate::testutil::f64s;
    use tch::Kind;

    fn values(n: usize, spread: f64, seed: u64) -> Tensor {
        let mut r = Rng::new(seed);
        Tensor::from_slice(&(0..n).map(|_| r.normal() * spread).collect::<Vec<f64>>())
    }

    #[test]
    fn levels_of_signed_and_unsigned_grids() {
        assert_eq!(Levels::signed(4), Levels { qn: 8.0, qp: 7.0 });
        assert_eq!(Levels::signed(2), Levels { qn: 2.0, qp: 1.0 });
        assert_eq!(Levels::unsigned(3), Levels { qn: 0.0, qp: 7.0 });
    }

    #[test]
    fn error_is_at_most_half_a_step_in_range_and_quantising_twice_changes_nothing() {
        for bits in [2u32, 3, 4, 8] {
            let levels = Levels::signed(bits);
            let s = 0.05;
            let v = values(2000, 0.2, bits as u64);
            let q = lsq(&v, &Tensor::from(s), levels, 1.0);
            for (x, y) in f64s(&v).iter().zip(f64s(&q)) {
                let on_grid = y / s;
                assert!((on_grid - on_grid.round()).abs() < 1e-9 && on_grid >= -levels.qn - 1e-9 && on_grid <= levels.qp + 1e-9, "{y} is not a level");
                if *x >= -levels.qn * s && *x <= levels.qp * s {
                    assert!((x - y).abs() <= s / 2.0 + 1e-12, "bits {bits}: |{x} − {y}| > s/2");
                } else {
                    assert!((y - x.clamp(-levels.qn * s, levels.qp * s)).abs() < 1e-12, "outside the range it clips");
                }
            }
            assert_eq!(f64s(&lsq(&q, &Tensor::from(s), levels, 1.0)), f64s(&q), "idempotent at {bits} bits");
        }
    }

    #[test]
    fn the_ste_passes_gradients_inside_the_clip_range_only() {
        let levels = Levels::signed(3); // [−4, 3]
        let s = 0.5;
        let v = Tensor::from_slice(&[-3.0f64, -1.9, -0.26, 0.0, 0.7, 1.4, 1.6, 2.5]).set_requires_grad(true);
        let q = lsq(&v, &Tensor::from(s), levels, 1.0);
        let g = Tensor::run_backward(&[&q.sum(Kind::Double)], &[&v], false, false).remove(0);
        // v/s = −6, −3.8, −0.52, 0, 1.4, 2.8, 3.2, 5: inside [−4, 3] for the middle five.
        assert_eq!(f64s(&g), vec![0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn the_step_gradient_is_lsqs_and_matches_finite_differences_where_the_ste_is_exact() {
        let levels = Levels::signed(3);
        let v = Tensor::from_slice(&[-3.0f64, -0.26, 0.7, 1.4, 2.5]);
        let s0 = 0.5;
        let gscale = 0.3;
        let grad_at = |i: i64| {
            let s = Tensor::from(s0).set_requires_grad(true);
            let q = lsq(&v.get(i), &s, levels, gscale);
            Tensor::run_backward(&[&q], &[&s], false, false).remove(0).double_value(&[])
        };
        for (i, x) in f64s(&v).iter().enumerate() {
            let r = x / s0;
            let want = if r < -levels.qn { -levels.qn } else if r > levels.qp { levels.qp } else { r.round() - r };
            assert!((grad_at(i as i64) - gscale * want).abs() < 1e-12, "element {i}: {} vs {}", grad_at(i as i64), gscale * want);
        }
        // Where v is clipped the forward is ±Q·s, so its derivative in s is exact: compare with a
        // central difference of the forward (g = 1).
        let fwd = |x: f64, s: f64| lsq(&Tensor::from(x), &Tensor::from(s), levels, 1.0).double_value(&[]);
        for x in [-3.0f64, 2.5] {
            let h = 1e-6;
            let fd = (fwd(x, s0 + h) - fwd(x, s0 - h)) / (2.0 * h);
            let s = Tensor::from(s0).set_requires_grad(true);
            let an = Tensor::run_backward(&[&lsq(&Tensor::from(x), &s, levels, 1.0)], &[&s], false, false).remove(0).double_value(&[]);
            assert!((an - fd).abs() < 1e-6, "x {x}: {an} vs {fd}");
        }
        // Inside, the forward's own derivative is ⌊v/s⌉ (the rounding is locally constant); LSQ's
        // estimate subtracts v/s, the straight-through term.
        let x = 0.7;
        let h = 1e-6;
        let fd = (fwd(x, s0 + h) - fwd(x, s0 - h)) / (2.0 * h);
        assert!((fd - (x / s0).round()).abs() < 1e-6);
    }

    #[test]
    fn calibration_steps() {
        let w = Tensor::from_slice(&[0.1f64, -0.4, 0.2, 0.05, 0.3, -0.6]).view([2, 3]);
        let levels = Levels::signed(4);
        assert!((minmax_step(&w, levels, false).double_value(&[]) - 0.6 / 7.0).abs() < 1e-15);
        let per = f64s(&minmax_step(&w, levels, true));
        assert!((per[0] - 0.4 / 7.0).abs() < 1e-15 && (per[1] - 0.6 / 7.0).abs() < 1e-15, "{per:?}");
        // Min-max quantisation clips nothing: the largest magnitude is exactly representable.
        let q = lsq(&w, &minmax_step(&w, levels, true), levels, 1.0);
        assert!((f64s(&q)[4] - 0.3).abs() < 0.6 / 14.0 + 1e-12 && (f64s(&q)[5] + 0.6).abs() < 1e-12);
        assert_eq!(minmax_step(&w, levels, true).size(), vec![2, 1]);
        let init = lsq_init_step(&w, levels, false).double_value(&[]);
        assert!((init - 2.0 * (1.65 / 6.0) / 7f64.sqrt()).abs() < 1e-12, "{init}");
        let per = f64s(&lsq_init_step(&w, levels, true));
        assert!((per[0] - 2.0 * (0.7 / 3.0) / 7f64.sqrt()).abs() < 1e-12 && (per[1] - 2.0 * (0.95 / 3.0) / 7f64.sqrt()).abs() < 1e-12, "{per:?}");
        // The gradient scale of LSQ: 1/√(N·Q_P).
        assert!((grad_scale(700, levels) - 1.0 / (700.0f64 * 7.0).sqrt()).abs() < 1e-15);
    }
}
