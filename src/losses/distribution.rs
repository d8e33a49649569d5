//! Distances between two sets of samples, and how samples cover the modes of a mixture — the
//! yardsticks of generative papers, computed by reglab itself so every method is graded alike:
//! sliced Wasserstein-2, the Fréchet distance between Gaussian fits, and mode coverage.

use tch::{Kind, Tensor};

use crate::context::Rng;

/// Quantile m of n sorted values at levels (k + ½)/m, k < m: the sorted values themselves when
/// m = n.
fn quantile_rows(sorted: &Tensor, m: i64) -> Tensor {
    let n = sorted.size()[0];
    if n == m {
        return sorted.shallow_clone();
    }
    let idx: Vec<i64> = (0..m).map(|k| (((k as f64 + 0.5) / m as f64) * n as f64).floor().min((n - 1) as f64) as i64).collect();
    sorted.index_select(0, &Tensor::from_slice(&idx).to_device(sorted.device()))
}

/// Sliced Wasserstein-2 between samples `a` [n, D] and `b` [m, D]: √(mean over `projections`
/// random unit directions θ of W₂²(θᵀa, θᵀb)), each 1-d W₂ by matching sorted projections (at
/// the min(n, m) quantile levels when the sizes differ). Directions are drawn from `seed`, so two
/// methods graded with the same seed see the same directions.
pub fn sliced_w2(a: &Tensor, b: &Tensor, projections: usize, seed: u64) -> f64 {
    let d = a.size()[1];
    assert_eq!(d, b.size()[1], "sliced W2 needs samples of one dimension");
    let mut rng = Rng::new(seed);
    let dirs = Tensor::from_slice(&(0..d as usize * projections).map(|_| rng.normal()).collect::<Vec<f64>>()).view([d, projections as i64]);
    let dirs = (&dirs / dirs.square().sum_dim_intlist([0i64].as_slice(), true, Kind::Double).sqrt()).to_device(a.device());
    let pa = a.to_kind(Kind::Double).matmul(&dirs).sort(0, false).0;
    let pb = b.to_kind(Kind::Double).matmul(&dirs).sort(0, false).0;
    let m = pa.size()[0].min(pb.size()[0]);
    let diff = quantile_rows(&pa, m) - quantile_rows(&pb, m);
    f64::try_from(diff.square().mean(Kind::Double)).expect("scalar").sqrt()
}

/// The symmetric square root of a symmetric positive semi-definite matrix, by eigendecomposition
/// (negative eigenvalues from round-off clamped to 0).
pub fn sqrtm_psd(m: &Tensor) -> Tensor {
    let sym = (m + m.transpose(0, 1)) / 2.0;
    let (vals, vecs) = sym.linalg_eigh("L");
    vecs.matmul(&vals.clamp_min(0.0).sqrt().diag_embed(0, -2, -1)).matmul(&vecs.transpose(0, 1))
}

/// The Fréchet distance between Gaussian fits of two feature sets [n, D] (the FID formula):
/// ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2(Σ_a^{½} Σ_b Σ_a^{½})^{½}), covariances unbiased. The cross
/// term is taken in the symmetric form, so only PSD square roots are needed (stable where the
/// product Σ_aΣ_b is not symmetric).
pub fn frechet_distance(a: &Tensor, b: &Tensor) -> f64 {
    let fit = |x: &Tensor| {
        let x = x.to_kind(Kind::Double);
        let mu = x.mean_dim([0i64].as_slice(), false, Kind::Double);
        let c = &x - &mu;
        let cov = c.transpose(0, 1).matmul(&c) / (x.size()[0] - 1).max(1) as f64;
        (mu, cov)
    };
    let (ma, ca) = fit(a);
    let (mb, cb) = fit(b);
    frechet_gaussians(&ma, &ca, &mb, &cb)
}

/// The Fréchet (W₂²) distance between N(μ_a, Σ_a) and N(μ_b, Σ_b).
pub fn frechet_gaussians(mu_a: &Tensor, cov_a: &Tensor, mu_b: &Tensor, cov_b: &Tensor) -> f64 {
    let (ca, cb) = (cov_a.to_kind(Kind::Double), cov_b.to_kind(Kind::Double));
    let ra = sqrtm_psd(&ca);
    let cross = sqrtm_psd(&ra.matmul(&cb).matmul(&ra));
    let mean_term = f64::try_from((mu_a.to_kind(Kind::Double) - mu_b.to_kind(Kind::Double)).square().sum(Kind::Double)).expect("scalar");
    let trace = f64::try_from(ca.trace() + cb.trace() - cross.trace() * 2.0).expect("scalar");
    (mean_term + trace).max(0.0)
}

/// How samples cover the modes of a mixture with the given `means` [K, D].
#[derive(Debug, Clone, PartialEq)]
pub struct ModeCoverage {
    /// Fraction of samples within `radius` of their nearest mean.
    pub covered: f64,
    /// Share of the samples nearest to each mean (all samples, covered or not).
    pub shares: Vec<f64>,
    /// Largest share over smallest (∞ when a mode gets none).
    pub balance: f64,
}

/// Assigns each sample [n, D] to its nearest mean and reports [`ModeCoverage`].
pub fn mode_coverage(samples: &Tensor, means: &Tensor, radius: f64) -> ModeCoverage {
    let x = samples.to_kind(Kind::Double);
    let mu = means.to_kind(Kind::Double).to_device(x.device());
    let d2 = x.square().sum_dim_intlist([1i64].as_slice(), true, Kind::Double) - x.matmul(&mu.transpose(0, 1)) * 2.0 + mu.square().sum_dim_intlist([1i64].as_slice(), false, Kind::Double).unsqueeze(0);
    let (best, arg) = d2.min_dim(1, false);
    let n = x.size()[0] as f64;
    let covered = f64::try_from(best.clamp_min(0.0).sqrt().le(radius).to_kind(Kind::Double).mean(Kind::Double)).expect("scalar");
    let k = mu.size()[0];
    let counts = Vec::<i64>::try_from(arg.bincount(None::<Tensor>, k).to_device(tch::Device::Cpu)).expect("counts");
    let shares: Vec<f64> = counts.iter().map(|&c| c as f64 / n).collect();
    let (lo, hi) = shares.iter().fold((f64::INFINITY, 0f64), |(lo, hi), &s| (lo.min(s), hi.max(s)));
    ModeCoverage { covered, balance: if lo > 0.0 { hi / lo } else { f64::INFINITY }, shares }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian(n: usize, d: usize, seed: u64, scale: &[f64], shift: &[f64]) -> Tensor {
        let mut r = Rng::new(seed);
        let v: Vec<f64> = (0..n).flat_map(|_| (0..d).map(|j| r.normal() * scale[j] + shift[j]).collect::<Vec<_>>()).collect();
        Tensor::from_slice(&v).view([n as i64, d as i64])
    }

    #[test]
    fn sliced_w2_is_zero_on_identical_sets_and_matches_sorted_quantiles_in_one_dimension() {
        let a = gaussian(500, 3, 1, &[1.0, 2.0, 0.5], &[0.0; 3]);
        assert!(sliced_w2(&a, &a, 50, 7) < 1e-12);
        // A permutation of the rows changes nothing.
        let perm = Tensor::from_slice(&(0..500i64).rev().collect::<Vec<_>>());
        assert!(sliced_w2(&a, &a.index_select(0, &perm), 50, 7) < 1e-12);
        // 1-d: the only direction is ±1, and W2 is the root mean squared gap of sorted values.
        let x = Tensor::from_slice(&[3.0f64, -1.0, 0.5, 2.0]).view([4, 1]);
        let y = Tensor::from_slice(&[0.0f64, 1.0, 4.0, -2.0]).view([4, 1]);
        let want = (((-1.0f64 + 2.0).powi(2) + (0.5f64 - 0.0).powi(2) + (2.0f64 - 1.0).powi(2) + (3.0f64 - 4.0).powi(2)) / 4.0).sqrt();
        assert!((sliced_w2(&x, &y, 5, 3) - want).abs() < 1e-12);
        // A shift δ of a set: W₂(θᵀa, θᵀa + θᵀδ) = |θᵀδ|, whose mean square over the sphere is ‖δ‖²/D.
        let delta = [0.6, -0.8, 0.0];
        let b = &a + Tensor::from_slice(&delta).view([1, 3]);
        let sw = sliced_w2(&a, &b, 20_000, 5);
        assert!((sw - (1.0f64 / 3.0).sqrt()).abs() < 0.01, "{sw}");
        // Unequal sizes use quantiles: a set against two copies of itself is at distance 0, and a
        // shifted copy of two copies at the shift's distance.
        let twice = Tensor::cat(&[&a, &a], 0);
        assert!(sliced_w2(&a, &twice, 50, 7) < 1e-12);
        assert!((sliced_w2(&a, &(twice + Tensor::from_slice(&delta).view([1, 3])), 20_000, 5) - sw).abs() < 1e-9);
    }

    #[test]
    fn frechet_distance_against_the_closed_form() {
        // Identical sets: 0.
        let a = gaussian(400, 4, 2, &[1.0, 0.5, 2.0, 1.5], &[0.0; 4]);
        assert!(frechet_distance(&a, &a) < 1e-8);
        // One dimension: (μ_a − μ_b)² + (σ_a − σ_b)², with the sample moments.
        let b = gaussian(600, 4, 3, &[0.5, 0.5, 1.0, 3.0], &[1.0, 0.0, -2.0, 0.5]);
        let moments = |x: &Tensor| {
            let mu = crate::testutil::f64s(&x.mean_dim([0i64].as_slice(), false, Kind::Double));
            let c = x - x.mean_dim([0i64].as_slice(), true, Kind::Double);
            let cov = c.transpose(0, 1).matmul(&c) / (x.size()[0] - 1) as f64;
            (mu, cov)
        };
        let (a1, b1) = (a.narrow(1, 0, 1), b.narrow(1, 3, 1));
        let ((ma, ca), (mb, cb)) = (moments(&a1), moments(&b1));
        let (va, vb) = (ca.double_value(&[0, 0]), cb.double_value(&[0, 0]));
        let want = (ma[0] - mb[0]).powi(2) + va + vb - 2.0 * (va * vb).sqrt();
        assert!((frechet_distance(&a1, &b1) - want).abs() < 1e-9, "{} vs {want}", frechet_distance(&a1, &b1));
        // Exactly diagonal covariances (coordinates built from orthogonal ±1 patterns, variance
        // 8/7 unbiased): ‖Δμ‖² + Σ_j (σ_a,j − σ_b,j)².
        let pattern = |scale: &[f64], shift: &[f64]| {
            let rows: Vec<f64> = (0..8).flat_map(|i| (0..3).map(move |j| if (i >> j) & 1 == 1 { 1.0 } else { -1.0 }).collect::<Vec<f64>>()).collect();
            let t = Tensor::from_slice(&rows).view([8, 3]);
            t * Tensor::from_slice(scale).view([1, 3]) + Tensor::from_slice(shift).view([1, 3])
        };
        let (sa, sb) = ([1.0, 2.0, 0.5], [3.0, 1.0, 0.5]);
        let x = pattern(&sa, &[0.0, 1.0, 0.0]);
        let y = pattern(&sb, &[2.0, 1.0, -1.0]);
        let var = |s: f64| s * s * 8.0 / 7.0;
        let want = 4.0 + 1.0 + (0..3).map(|j| (var(sa[j]).sqrt() - var(sb[j]).sqrt()).powi(2)).sum::<f64>();
        assert!((frechet_distance(&x, &y) - want).abs() < 1e-9, "{} vs {want}", frechet_distance(&x, &y));
        // Non-commuting covariances: Tr((Σ_aΣ_b)^½) = Σ √λ_i over the (real, non-negative)
        // eigenvalues of the product, from its 2×2 characteristic polynomial.
        let ca = Tensor::from_slice(&[2.0f64, 0.8, 0.8, 1.0]).view([2, 2]);
        let cb = Tensor::from_slice(&[1.0f64, -0.3, -0.3, 0.5]).view([2, 2]);
        let prod = crate::testutil::f64s(&ca.matmul(&cb));
        let (tr, det) = (prod[0] + prod[3], prod[0] * prod[3] - prod[1] * prod[2]);
        let disc = (tr * tr - 4.0 * det).sqrt();
        let root_trace = ((tr + disc) / 2.0).sqrt() + ((tr - disc) / 2.0).sqrt();
        let want = 1.0 + 4.0 + 3.0 + 1.5 - 2.0 * root_trace;
        let got = frechet_gaussians(&Tensor::from_slice(&[1.0f64, 0.0]), &ca, &Tensor::from_slice(&[0.0f64, 2.0]), &cb);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // The square root squares back.
        let m = Tensor::from_slice(&[4.0f64, 1.0, 1.0, 3.0]).view([2, 2]);
        let r = sqrtm_psd(&m);
        assert!(f64::try_from((r.matmul(&r) - &m).abs().max()).unwrap() < 1e-12);
    }

    #[test]
    fn mode_coverage_counts_near_samples_and_the_balance_of_assignments() {
        let means = Tensor::from_slice(&[0.0f64, 0.0, 5.0, 0.0]).view([2, 2]);
        let s = Tensor::from_slice(&[0.1f64, 0.0, 4.0, 0.5, 5.2, 0.1, 2.0, 0.0, -0.3, 0.2, 9.0, 0.0]).view([6, 2]);
        let m = mode_coverage(&s, &means, 1.2);
        // Nearest: 0, 1, 1, 0 (2.0 is nearer 0), 0, 1; within 1.2: rows 0, 1 (√1.25 ≈ 1.118), 2, 4.
        assert!((m.covered - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(m.shares, vec![0.5, 0.5]);
        assert_eq!(m.balance, 1.0);
        let all_one = mode_coverage(&Tensor::from_slice(&[0.0f64, 0.1]).view([1, 2]), &means, 1.0);
        assert_eq!(all_one.balance, f64::INFINITY);
    }
}
