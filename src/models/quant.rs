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

/// x in the forward, x·scale in the backward (LSQ's gradient scaling of a step or offset).
pub fn scale_grad(x: &Tensor, scale: f64) -> Tensor {
    let y = x * scale;
    (x - &y).detach() + y
}

/// ⌊x⌉ in the forward, identity in the backward.
pub fn round_ste(x: &Tensor) -> Tensor {
    (x.round() - x).detach() + x
}

/// LSQ fake quantisation of `v` with step `step` (a scalar or a tensor that broadcasts over `v`)
/// on `levels`, the step's gradient scaled by `g` (use [`grad_scale`]; 1 leaves it unscaled).
pub fn lsq(v: &Tensor, step: &Tensor, levels: Levels, g: f64) -> Tensor {
    let s = scale_grad(step, g);
    round_ste(&(v / &s).clamp(-levels.qn, levels.qp)) * s
}

/// LSQ with an offset β (asymmetric quantisation): v̂ = clamp(⌊(v − β)/s⌉, −Q_N, Q_P)·s + β, the
/// rounding straight-through and the gradients of both s and β scaled by `g` (as EQ-Net's
/// quantisers scale them). `step` and `offset` broadcast over `v`; with β = 0 this is [`lsq`].
pub fn lsq_affine(v: &Tensor, step: &Tensor, offset: &Tensor, levels: Levels, g: f64) -> Tensor {
    let s = scale_grad(step, g);
    let b = scale_grad(offset, g);
    round_ste(&((v - &b) / &s).clamp(-levels.qn, levels.qp)) * s + b
}

/// How a post-training calibration searches clipping ranges: candidate k (0-based, k < `candidates`)
/// clips at (1 − `shrink`·k) times the data's range, and the candidate with the smallest
/// mean |v − v̂|^`power` wins (the first on ties). EQ-Net's defaults: 80 candidates, 0.01, 2.4.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClipSearch {
    pub candidates: usize,
    pub shrink: f64,
    pub power: f64,
}

impl Default for ClipSearch {
    fn default() -> Self {
        ClipSearch { candidates: 80, shrink: 0.01, power: 2.4 }
    }
}

/// The asymmetric offset [`clip_search`] returns on unsigned levels (EQ-Net's value).
pub const UNSIGNED_OFFSET: f64 = -1e-9;

/// Post-training calibration by a clip-ratio grid search (EQ-Net's `symmetric_init` /
/// `asymmetric_init` and their per-channel forms): returns (step, offset), per row of `v` (dim 0,
/// the output channels, shaped [C]) when `per_channel`, else scalars. For each candidate ratio r:
/// - symmetric, signed levels: clip at ±r·max|v|, s = 2r·max|v|/(Q_N + Q_P), β = 0;
/// - symmetric, unsigned levels: clip at [0, r·max|v|], s = r·max|v|/Q_P, β = 0;
/// - asymmetric: clip at [r·min v, r·max v], s = r·(max − min)/(Q_N + Q_P), β = r·min + s·Q_N (the
///   lowest level at the clipped minimum); on unsigned levels the offset returned is
///   [`UNSIGNED_OFFSET`] = −1e-9 whatever the search scored, as EQ-Net stores it (not 0: a
///   quantiser that uses |β| gets the gradient sign(β)·∂L/∂|β|, and sign(0) = 0 would freeze it).
pub fn clip_search(v: &Tensor, levels: Levels, symmetric: bool, per_channel: bool, search: ClipSearch) -> (Tensor, Tensor) {
    clip_search_in_chunks(v, levels, symmetric, per_channel, search, None)
}

/// The rows the search runs over (one per output channel when `per_channel`, else one), `v` as
/// [rows, D], and each row's unclipped range: hi and lo, [rows, 1] each.
fn clip_range(v: &Tensor, levels: Levels, symmetric: bool, per_channel: bool) -> (i64, Tensor, Tensor, Tensor) {
    let rows = if per_channel && v.dim() > 1 { v.size()[0] } else { 1 };
    let flat = v.detach().reshape([rows, -1]);
    let (hi, lo) = if symmetric {
        let m = flat.abs().amax([1i64].as_slice(), true);
        let lo = if levels.qn == 0.0 { m.zeros_like() } else { -&m };
        (m, lo)
    } else {
        (flat.amax([1i64].as_slice(), true), flat.amin([1i64].as_slice(), true))
    };
    (rows, flat, hi, lo)
}

/// [`clip_search`] with `chunk` candidates scored at once (None: as many as keep the scored tensor
/// near 2^24 elements).
fn clip_search_in_chunks(v: &Tensor, levels: Levels, symmetric: bool, per_channel: bool, search: ClipSearch, chunk: Option<usize>) -> (Tensor, Tensor) {
    let (rows, flat, hi, lo) = clip_range(v, levels, symmetric, per_channel);
    let span = levels.qn + levels.qp;
    // All candidates at once ([rows, K, D], in chunks of K that keep it near 2^24 elements): the
    // same arithmetic per candidate as one candidate at a time, and the first of equal scores wins
    // (argmin's and a strict `<`'s choice), so the result is the loop's, at a few ops instead of
    // ~12 per candidate.
    let width = flat.size()[1].max(1);
    let per_chunk = chunk.unwrap_or(((1i64 << 24) / (rows * width)).max(1) as usize).max(1);
    let ratios: Vec<f64> = (0..search.candidates.max(1)).map(|k| 1.0 - search.shrink * k as f64).collect();
    let mut best: Option<(Tensor, Tensor, Tensor)> = None; // (score, step, offset), each [rows, 1]
    for chunk in ratios.chunks(per_chunk) {
        let r = Tensor::from_slice(chunk).to_kind(flat.kind()).to_device(flat.device()).view([1, chunk.len() as i64]);
        let (h, l) = (&hi * &r, &lo * &r); // [rows, k]
        let step = ((&h - &l) / span).clamp_min(1e-12);
        let offset = if symmetric { step.zeros_like() } else { &l + &step * levels.qn };
        let x = flat.unsqueeze(1);
        let (s3, o3) = (step.unsqueeze(2), offset.unsqueeze(2));
        let q = ((&x - &o3) / &s3).clamp(-levels.qn, levels.qp).round() * &s3 + &o3;
        let score = (&q - &x).abs().pow_tensor_scalar(search.power).mean_dim([2i64].as_slice(), false, flat.kind()); // [rows, k]
        let (min, at) = score.min_dim(1, true);
        let (step, offset) = (step.gather(1, &at, false), offset.gather(1, &at, false));
        best = Some(match best {
            None => (min, step, offset),
            Some((b, bs, bo)) => {
                let better = min.lt_tensor(&b);
                (min.where_self(&better, &b), step.where_self(&better, &bs), offset.where_self(&better, &bo))
            }
        });
    }
    let (_, best_step, mut best_offset) = best.expect("at least one candidate");
    if !symmetric && levels.qn == 0.0 {
        best_offset = best_offset.zeros_like() + UNSIGNED_OFFSET;
    }
    if per_channel && v.dim() > 1 {
        (best_step.view([rows]), best_offset.view([rows]))
    } else {
        (best_step.view([] as [i64; 0]), best_offset.view([] as [i64; 0]))
    }
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

    /// The grid search one candidate at a time, as EQ-Net's loop runs it.
    fn clip_search_one_at_a_time(v: &Tensor, levels: Levels, symmetric: bool, per_channel: bool, search: ClipSearch) -> (Tensor, Tensor) {
        let (rows, flat, hi, lo) = clip_range(v, levels, symmetric, per_channel);
        let span = levels.qn + levels.qp;
        let mut best_score: Option<Tensor> = None;
        let (mut best_step, mut best_offset) = (hi.ones_like(), hi.zeros_like());
        for k in 0..search.candidates.max(1) {
            let r = 1.0 - search.shrink * k as f64;
            let (h, l) = (&hi * r, &lo * r);
            let step = ((&h - &l) / span).clamp_min(1e-12);
            let offset = if symmetric { step.zeros_like() } else { &l + &step * levels.qn };
            let q = ((&flat - &offset) / &step).clamp(-levels.qn, levels.qp).round() * &step + &offset;
            let score = (&q - &flat).abs().pow_tensor_scalar(search.power).mean_dim([1i64].as_slice(), true, flat.kind());
            let better = match &best_score {
                None => score.ones_like().to_kind(tch::Kind::Bool),
                Some(b) => score.lt_tensor(b),
            };
            best_step = step.where_self(&better, &best_step);
            best_offset = offset.where_self(&better, &best_offset);
            best_score = Some(match best_score {
                None => score,
                Some(b) => score.where_self(&better, &b),
            });
        }
        if !symmetric && levels.qn == 0.0 {
            best_offset = best_offset.zeros_like() + UNSIGNED_OFFSET;
        }
        if per_channel && v.dim() > 1 {
            (best_step.view([rows]), best_offset.view([rows]))
        } else {
            (best_step.view([] as [i64; 0]), best_offset.view([] as [i64; 0]))
        }
    }

    #[test]
    fn the_batched_clip_search_picks_what_the_candidate_loop_picks() {
        tch::manual_seed(8);
        // Heavy-tailed rows (so the best ratio is inside the grid) and a tie-prone coarse grid.
        // (f64, and compared to a relative 1e-12: the batched and the looped scores reduce the same
        // numbers in differently shaped tensors, which libtorch does not promise to round alike;
        // neighbouring candidates differ by ~2 %, so a different pick would still show.)
        let w = Tensor::randn([6, 40], (tch::Kind::Double, tch::Device::Cpu)).pow_tensor_scalar(3.0);
        let relu_like = w.abs();
        let search = ClipSearch { candidates: 37, shrink: 0.02, power: 2.4 };
        let mut interior = 0;
        for (v, levels) in [(&w, Levels::signed(3)), (&w, Levels::signed(8)), (&relu_like, Levels::unsigned(4))] {
            for symmetric in [true, false] {
                for per_channel in [true, false] {
                    let (s0, o0) = clip_search_one_at_a_time(v, levels, symmetric, per_channel, search);
                    for chunk in [None, Some(1), Some(5)] {
                        let (s1, o1) = clip_search_in_chunks(v, levels, symmetric, per_channel, search, chunk);
                        let close = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]) <= 1e-12 * b.abs().max().double_value(&[]).max(1e-9);
                        assert!(close(&s1, &s0) && close(&o1, &o0), "sym {symmetric} ch {per_channel} chunk {chunk:?}: {s1:?} {o1:?} vs {s0:?} {o0:?}");
                    }
                    // How often the pick is neither end of the grid (else the test would be weak).
                    let full = clip_search_one_at_a_time(v, levels, symmetric, per_channel, ClipSearch { candidates: 1, ..search }).0;
                    interior += i64::from(bool::try_from(s0.lt_tensor(&(&full * 0.999)).any()).unwrap());
                }
            }
        }
        assert!(interior >= 4, "only {interior} of 12 searches picked a clipped ratio");
    }
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

    #[test]
    fn the_affine_quantiser_passes_x_inside_and_its_step_and_offset_gradients_are_lsqs() {
        // 3-bit signed [−4, 3], s = 0.5, β = 0.3: the range is [−1.7, 1.8].
        let levels = Levels::signed(3);
        let (s0, b0, g) = (0.5f64, 0.3f64, 0.25f64);
        let x = Tensor::from_slice(&[-2.5f64, -1.2, 0.1, 0.9, 1.6, 2.4]).set_requires_grad(true);
        let s = Tensor::from(s0).set_requires_grad(true);
        let b = Tensor::from(b0).set_requires_grad(true);
        let want_fwd: Vec<f64> = f64s(&x).iter().map(|x| ((x - b0) / s0).clamp(-4.0, 3.0).round() * s0 + b0).collect();
        let mut outs = Vec::new();
        for i in 0..6 {
            let q = lsq_affine(&x.get(i), &s, &b, levels, g);
            outs.push(q.double_value(&[]));
            let grads = Tensor::run_backward(&[&q], &[&x, &s, &b], false, false);
            let v = (f64s(&x)[i as usize] - b0) / s0;
            let inside = (-4.0..=3.0).contains(&v);
            assert_eq!(grads[0].double_value(&[i]), if inside { 1.0 } else { 0.0 }, "x gradient of element {i}");
            let ds = if inside { v.round() - v } else if v < 0.0 { -4.0 } else { 3.0 };
            assert!((grads[1].double_value(&[]) - g * ds).abs() < 1e-12, "step gradient of element {i}");
            // Inside, β shifts x and the grid together (the STE cancels it); clipped, x̂ = n·s + β.
            assert!((grads[2].double_value(&[]) - if inside { 0.0 } else { g }).abs() < 1e-12, "offset gradient of element {i}");
        }
        for (a, w) in outs.iter().zip(&want_fwd) {
            assert!((a - w).abs() < 1e-12);
        }
        // At most 2^b values, and idempotent for a fixed step and offset.
        let v = values(500, 1.0, 3);
        let q = lsq_affine(&v, &Tensor::from(s0), &Tensor::from(b0), levels, 1.0);
        let distinct: std::collections::BTreeSet<i64> = f64s(&q).iter().map(|y| ((y - b0) / s0).round() as i64).collect();
        assert!(distinct.len() <= 8, "{distinct:?}");
        let qq = lsq_affine(&q, &Tensor::from(s0), &Tensor::from(b0), levels, 1.0);
        for (a, b) in f64s(&q).iter().zip(f64s(&qq)) {
            assert!((a - b).abs() < 1e-12);
        }
    }

    /// The search restated for one row in scalars: the first candidate ratio with the least
    /// mean |v − v̂|^p.
    fn search_row(row: &[f64], levels: Levels, symmetric: bool, search: ClipSearch) -> (f64, f64) {
        let amax = row.iter().fold(0f64, |m, x| m.max(x.abs()));
        let (mx, mn) = (row.iter().cloned().fold(f64::MIN, f64::max), row.iter().cloned().fold(f64::MAX, f64::min));
        let mut best = (f64::INFINITY, 1.0, 0.0);
        for k in 0..search.candidates {
            let r = 1.0 - search.shrink * k as f64;
            let (hi, lo) = if symmetric { (r * amax, if levels.qn == 0.0 { 0.0 } else { -r * amax }) } else { (r * mx, r * mn) };
            let s = (hi - lo) / (levels.qn + levels.qp);
            let b = if symmetric { 0.0 } else { lo + s * levels.qn };
            let err = row.iter().map(|x| (((x - b) / s).clamp(-levels.qn, levels.qp).round() * s + b - x).abs().powf(search.power)).sum::<f64>() / row.len() as f64;
            if err < best.0 {
                best = (err, s, b);
            }
        }
        (best.1, best.2)
    }

    #[test]
    fn the_clip_search_finds_the_scalar_searchs_ranges_per_channel_and_per_layer() {
        let search = ClipSearch::default();
        // Rows with outliers of different sizes, so the best ratios differ by row.
        let mut r = Rng::new(11);
        let rows: Vec<Vec<f64>> = (0..4).map(|i| (0..400).map(|j| if j == 0 { 2.0 + 1.5 * i as f64 } else { r.normal() * 0.4 + 0.05 * i as f64 }).collect()).collect();
        let w = Tensor::from_slice(&rows.concat()).view([4, 400]);
        for (levels, symmetric) in [(Levels::signed(2), true), (Levels::signed(3), false), (Levels::signed(4), true)] {
            let (step, offset) = clip_search(&w, levels, symmetric, true, search);
            assert_eq!(step.size(), vec![4]);
            for (i, row) in rows.iter().enumerate() {
                let (s, b) = search_row(row, levels, symmetric, search);
                assert!((f64s(&step)[i] - s).abs() < 1e-9 && (f64s(&offset)[i] - b).abs() < 1e-9, "row {i}: {} {} vs {s} {b}", f64s(&step)[i], f64s(&offset)[i]);
            }
            // Outliers are clipped: ranges shrink below the full one, by a ratio chosen per row.
            let (full, _) = clip_search(&w, levels, symmetric, true, ClipSearch { candidates: 1, ..search });
            let ratios: Vec<f64> = f64s(&step).iter().zip(f64s(&full)).map(|(a, b)| a / b).collect();
            let spread = ratios.iter().cloned().fold(0f64, f64::max) - ratios.iter().cloned().fold(1f64, f64::min);
            assert!(ratios.iter().any(|&q| q < 0.99) && spread > 0.02, "{ratios:?}");
            let (step, offset) = clip_search(&w, levels, symmetric, false, search);
            let (s, b) = search_row(&rows.concat(), levels, symmetric, search);
            assert!((step.double_value(&[]) - s).abs() < 1e-9 && (offset.double_value(&[]) - b).abs() < 1e-9);
        }
        // Values on an exact grid are reproduced with the full range (zero error at ratio 1).
        let grid = Tensor::from_slice(&[-2.0f64, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]);
        let (s, b) = clip_search(&grid, Levels::signed(3), false, false, search);
        assert!((s.double_value(&[]) - 0.5).abs() < 1e-12 && b.double_value(&[]).abs() < 1e-12);
        // Unsigned levels: the symmetric range starts at 0, the asymmetric offset is EQ-Net's −1e-9.
        let relu = Tensor::from_slice(&[0.0f64, 0.0, 0.3, 0.9, 1.2, 2.1]);
        let (s, b) = clip_search(&relu, Levels::unsigned(2), true, false, search);
        let (s_row, _) = search_row(&f64s(&relu), Levels::unsigned(2), true, search);
        assert!((s.double_value(&[]) - s_row).abs() < 1e-12 && b.double_value(&[]) == 0.0);
        let (_, b) = clip_search(&relu, Levels::unsigned(2), false, false, search);
        assert_eq!(b.double_value(&[]), UNSIGNED_OFFSET);
    }
}
