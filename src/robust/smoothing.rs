//! Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): the smoothed classifier
//! g(x) = argmax_c P(f(x + ε) = c), ε ~ N(0, σ²I), its Monte-Carlo prediction (PREDICT) and its
//! certificate (CERTIFY): choose the top class on n0 noise samples, estimate its probability on n
//! fresh ones, lower-bound it with a one-sided Clopper–Pearson interval at level α, and certify
//! the L2 radius σ·Φ⁻¹(p_A) — or abstain when p_A ≤ 1/2. Noise is sampled in batches on the
//! classifier's device from torch's generator (seeded by the run).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use statrs::distribution::{Beta, Binomial, ContinuousCDF, DiscreteCDF, Normal};
use tch::Tensor;

use crate::context::RunCtx;

/// The `certify:` block of a smoothing paper's Config: Monte-Carlo sizes, level, test points and
/// the radii certified accuracy is reported at.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CertifyConfig {
    /// Selection samples.
    pub n0: u64,
    /// Estimation samples.
    pub n: u64,
    pub alpha: f64,
    /// Noise samples per forward pass.
    pub batch: u64,
    /// Test points certified (the first ones of the test split).
    pub points: i64,
    pub radii: Vec<f64>,
}

impl Default for CertifyConfig {
    fn default() -> Self {
        CertifyConfig { n0: 100, n: 10_000, alpha: 0.001, batch: 10_000, points: 200, radii: vec![0.0, 0.25, 0.5, 0.75, 1.0] }
    }
}

impl CertifyConfig {
    pub fn check(&self) -> Result<()> {
        if self.n0 < 2 || self.n < 2 || !(0.0 < self.alpha && self.alpha < 1.0) || self.batch == 0 || self.points < 1 {
            bail!("`certify`: n0 and n ≥ 2, alpha in (0, 1), batch and points ≥ 1");
        }
        Ok(())
    }

    pub fn smoothing(&self, sigma: f64) -> Smoothing {
        Smoothing { sigma, n0: self.n0, n: self.n, alpha: self.alpha, batch: self.batch }
    }
}

/// Records certified accuracy at each radius (`{prefix}cert_acc_r{r}`), `{prefix}acr` and
/// `{prefix}abstain` as final metrics.
pub fn record_certified(ctx: &mut RunCtx, results: &[(Option<(i64, f64)>, i64)], radii: &[f64], prefix: &str) -> Result<()> {
    let (at, acr, abstain) = certified_metrics(results, radii);
    for (r, v) in radii.iter().zip(at) {
        ctx.set_final(&format!("{prefix}cert_acc_r{r}"), v)?;
    }
    ctx.set_final(&format!("{prefix}acr"), acr)?;
    ctx.set_final(&format!("{prefix}abstain"), abstain)
}

/// Logits of `classify` on `num` noisy copies x + σε of the single input `x` [1, ...], in
/// batches of `batch`, concatenated [num, C].
pub fn noisy_logits(classify: &mut impl FnMut(&Tensor) -> Tensor, x: &Tensor, sigma: f64, num: u64, batch: u64) -> Tensor {
    let mut parts = vec![];
    let mut left = num;
    while left > 0 {
        let b = left.min(batch) as i64;
        let mut shape = x.size();
        shape[0] = b;
        let xs = x.expand(shape.as_slice(), false);
        parts.push(tch::no_grad(|| classify(&(&xs + xs.randn_like() * sigma))));
        left -= b as u64;
    }
    Tensor::cat(&parts, 0)
}

/// The one-sided (1 − α) Clopper–Pearson lower bound on a binomial proportion with `k`
/// successes in `n` trials: the α-quantile of Beta(k, n − k + 1); 0 when k = 0.
pub fn clopper_pearson_lower(k: u64, n: u64, alpha: f64) -> f64 {
    if k == 0 {
        return 0.0;
    }
    Beta::new(k as f64, (n - k + 1) as f64).expect("valid Beta parameters").inverse_cdf(alpha)
}

/// Φ⁻¹(p), the standard normal quantile.
pub fn normal_quantile(p: f64) -> f64 {
    Normal::new(0.0, 1.0).expect("standard normal").inverse_cdf(p)
}

/// Two-sided binomial test p-value of `k` successes in `n` trials at p = 1/2 (PREDICT's test).
pub fn binomial_test_half(k: u64, n: u64) -> f64 {
    if n == 0 {
        return 1.0;
    }
    let b = Binomial::new(0.5, n).expect("valid binomial");
    let lo = k.min(n - k);
    // P(X ≤ lo) + P(X ≥ n − lo), symmetric at p = 1/2.
    let tail = b.cdf(lo);
    (2.0 * tail).min(1.0)
}

/// Monte-Carlo settings of the smoothed classifier.
#[derive(Debug, Clone, Copy)]
pub struct Smoothing {
    pub sigma: f64,
    pub n0: u64,
    pub n: u64,
    pub alpha: f64,
    /// Noise samples per forward pass.
    pub batch: u64,
}

/// Counts of each class among `num` noisy copies of the single input `x` [1, ...] classified
/// by `classify` (logits [B, C] → arg-max).
pub fn sample_counts(classify: &mut impl FnMut(&Tensor) -> Tensor, x: &Tensor, sigma: f64, num: u64, batch: u64, classes: i64) -> Vec<u64> {
    let preds = noisy_logits(classify, x, sigma, num, batch).argmax(-1, false);
    let binc = preds.bincount::<Tensor>(None, classes).to_device(tch::Device::Cpu);
    Vec::<i64>::try_from(binc).expect("counts").into_iter().map(|v| v as u64).collect()
}

fn top_two(counts: &[u64]) -> (usize, u64, u64) {
    let mut idx: Vec<usize> = (0..counts.len()).collect();
    idx.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
    (idx[0], counts[idx[0]], counts.get(idx.get(1).copied().unwrap_or(0)).copied().unwrap_or(0))
}

/// CERTIFY: the predicted class and certified L2 radius, or None (abstain).
pub fn certify(classify: &mut impl FnMut(&Tensor) -> Tensor, x: &Tensor, classes: i64, s: &Smoothing) -> Result<Option<(i64, f64)>> {
    if !(s.sigma > 0.0) || s.n == 0 || s.n0 == 0 || !(0.0 < s.alpha && s.alpha < 1.0) {
        bail!("smoothing needs sigma > 0, n0 > 0, n > 0 and alpha in (0, 1)");
    }
    let select = sample_counts(classify, x, s.sigma, s.n0, s.batch, classes);
    let (c_a, _, _) = top_two(&select);
    let estimate = sample_counts(classify, x, s.sigma, s.n, s.batch, classes);
    let p_a = clopper_pearson_lower(estimate[c_a], s.n, s.alpha);
    if p_a <= 0.5 {
        return Ok(None);
    }
    Ok(Some((c_a as i64, s.sigma * normal_quantile(p_a))))
}

/// PREDICT: the smoothed prediction from n samples, or None when the top two classes are not
/// separated at level α (two-sided binomial test).
pub fn predict(classify: &mut impl FnMut(&Tensor) -> Tensor, x: &Tensor, classes: i64, s: &Smoothing) -> Option<i64> {
    let counts = sample_counts(classify, x, s.sigma, s.n, s.batch, classes);
    let (c, n_a, n_b) = top_two(&counts);
    (binomial_test_half(n_a, n_a + n_b) <= s.alpha).then_some(c as i64)
}

/// Certified accuracy at each radius, the average certified radius (0 for abstentions and wrong
/// predictions) and the abstention rate, from per-sample (certificate, label).
pub fn certified_metrics(results: &[(Option<(i64, f64)>, i64)], radii: &[f64]) -> (Vec<f64>, f64, f64) {
    let n = results.len().max(1) as f64;
    let at: Vec<f64> = radii
        .iter()
        .map(|&r| results.iter().filter(|(c, y)| matches!(c, Some((p, rad)) if p == y && *rad >= r)).count() as f64 / n)
        .collect();
    let acr = results.iter().map(|(c, y)| match c {
        Some((p, rad)) if p == y => *rad,
        _ => 0.0,
    }).sum::<f64>() / n;
    let abstain = results.iter().filter(|(c, _)| c.is_none()).count() as f64 / n;
    (at, acr, abstain)
}

/// Trains-time Gaussian augmentation: x + σ·N(0, I) (Cohen et al.'s training).
pub fn gaussian_augment(x: &Tensor, sigma: f64) -> Tensor {
    x + x.randn_like() * sigma
}

/// The smoothed classifier's vote share for class `c` (for tests and diagnostics).
pub fn vote_share(counts: &[u64], c: usize) -> f64 {
    counts[c] as f64 / counts.iter().sum::<u64>().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// P(Bin(n, p) ≥ k) by direct summation (independent of the Beta quantile).
    fn upper_tail(n: u64, k: u64, p: f64) -> f64 {
        let mut total = 0.0;
        let mut log_choose = 0.0f64; // log C(n, 0)
        for i in 0..=n {
            if i > 0 {
                log_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
            }
            if i >= k {
                total += (log_choose + i as f64 * p.ln() + (n - i) as f64 * (1.0 - p).ln()).exp();
            }
        }
        total
    }

    #[test]
    fn clopper_pearson_bounds_against_closed_forms_and_the_binomial_tail() {
        assert_eq!(clopper_pearson_lower(0, 100, 0.001), 0.0);
        // k = n: the bound solves p^n = α.
        for n in [1u64, 10, 100, 1000] {
            assert!((clopper_pearson_lower(n, n, 0.001) - 0.001f64.powf(1.0 / n as f64)).abs() < 1e-9, "n={n}");
        }
        // The lower bound p_L is where P(Bin(n, p_L) ≥ k) = α.
        for (k, n, alpha) in [(5u64, 10u64, 0.05), (37, 50, 0.01), (990, 1000, 0.001), (1, 20, 0.1)] {
            let p = clopper_pearson_lower(k, n, alpha);
            assert!((upper_tail(n, k, p) - alpha).abs() < 1e-7, "k={k} n={n}: tail {}", upper_tail(n, k, p));
        }
        // The textbook value: 5/10 at 95% one-sided lower bound ≈ 0.2224.
        assert!((clopper_pearson_lower(5, 10, 0.05) - 0.2224).abs() < 1e-4);
        assert!((normal_quantile(0.975) - 1.959964).abs() < 1e-6);
        assert!((binomial_test_half(5, 10) - 1.0).abs() < 1e-12);
        assert!(binomial_test_half(0, 10) < 0.002 + 1e-9 && binomial_test_half(10, 10) < 0.002 + 1e-9);
    }

    #[test]
    fn a_constant_classifier_is_certified_at_sigma_times_the_quantile_of_the_bound() {
        tch::manual_seed(0);
        let s = Smoothing { sigma: 0.25, n0: 10, n: 500, alpha: 0.001, batch: 128 };
        let mut constant = |x: &Tensor| Tensor::from_slice(&[0.0f32, 1.0, 0.0]).to_device(x.device()).unsqueeze(0).repeat([x.size()[0], 1]);
        let x = Tensor::zeros([1, 4], (Kind::Float, Device::Cpu));
        let (c, r) = certify(&mut constant, &x, 3, &s).unwrap().unwrap();
        assert_eq!(c, 1);
        let expected = 0.25 * normal_quantile(0.001f64.powf(1.0 / 500.0));
        assert!((r - expected).abs() < 1e-12);
    }

    #[test]
    fn a_linear_classifier_certificate_approaches_its_distance_to_the_boundary() {
        // f(x) = [w·x + b > 0]: g's true p_A is Φ(|w·x + b|/(σ‖w‖)), so σΦ⁻¹(p_A) = the distance
        // |w·x + b|/‖w‖. The certificate uses a lower bound, so it is below, and close for large n.
        tch::manual_seed(1);
        let w = Tensor::from_slice(&[3.0f32, -4.0]); // ‖w‖ = 5
        let b = 0.5;
        let mut linear = |x: &Tensor| {
            let s = x.mv(&w) + b;
            Tensor::stack(&[s.neg(), s], 1)
        };
        let x = Tensor::from_slice(&[0.2f32, -0.1]).view([1, 2]); // w·x + b = 1.5, distance 0.3
        let s = Smoothing { sigma: 0.5, n0: 100, n: 20000, alpha: 0.001, batch: 5000 };
        let (c, r) = certify(&mut linear, &x, 2, &s).unwrap().unwrap();
        assert_eq!(c, 1);
        assert!(r <= 0.3 && r > 0.25, "radius {r} vs distance 0.3");
        let (at, acr, abstain) = certified_metrics(&[(Some((1, r)), 1), (None, 0), (Some((0, 0.9)), 1)], &[0.0, 0.2, 0.5]);
        assert_eq!(at, vec![1.0 / 3.0, 1.0 / 3.0, 0.0]);
        assert!((acr - r / 3.0).abs() < 1e-12 && (abstain - 1.0 / 3.0).abs() < 1e-12);
    }
}
