//! Consistency training (Song et al. 2023; the improved recipe iCT, Song & Dhariwal 2023): the
//! Karras noise levels, iCT's discretisation curriculum and lognormal level sampler, the EDM-style
//! parameterisation that makes f(x, σ_min) = x exactly, the robust distances (pseudo-Huber, and
//! the Cauchy loss of sLCT), and an EMA of the weights for sampling. Constants are iCT's:
//! σ_min 0.002, σ_max 80, ρ 7, s_0 10, s_1 1280, P_mean −1.1, P_std 2.0, σ_data 0.5.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The noise range and the Karras spacing exponent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NoiseLevels {
    pub sigma_min: f64,
    pub sigma_max: f64,
    pub rho: f64,
    /// σ_data of the parameterisation.
    pub sigma_data: f64,
}

impl Default for NoiseLevels {
    fn default() -> Self {
        NoiseLevels { sigma_min: 0.002, sigma_max: 80.0, rho: 7.0, sigma_data: 0.5 }
    }
}

impl NoiseLevels {
    /// The n Karras levels σ_i = (σ_min^{1/ρ} + (i−1)/(n−1)·(σ_max^{1/ρ} − σ_min^{1/ρ}))^ρ,
    /// increasing from σ_min to σ_max (n ≥ 2).
    pub fn karras(&self, n: usize) -> Vec<f64> {
        assert!(n >= 2, "at least two noise levels");
        let (a, b) = (self.sigma_min.powf(1.0 / self.rho), self.sigma_max.powf(1.0 / self.rho));
        (0..n).map(|i| (a + i as f64 / (n - 1) as f64 * (b - a)).powf(self.rho)).collect()
    }

    /// c_skip(σ) = σ_d² / ((σ − σ_min)² + σ_d²): 1 at σ_min.
    pub fn c_skip(&self, sigma: f64) -> f64 {
        let d2 = self.sigma_data * self.sigma_data;
        d2 / ((sigma - self.sigma_min).powi(2) + d2)
    }

    /// c_out(σ) = σ_d (σ − σ_min) / √(σ_d² + σ²): 0 at σ_min.
    pub fn c_out(&self, sigma: f64) -> f64 {
        self.sigma_data * (sigma - self.sigma_min) / (self.sigma_data * self.sigma_data + sigma * sigma).sqrt()
    }

    /// c_in(σ) = 1 / √(σ² + σ_d²).
    pub fn c_in(&self, sigma: f64) -> f64 {
        1.0 / (sigma * sigma + self.sigma_data * self.sigma_data).sqrt()
    }
}

/// iCT's discretisation curriculum: N(k) = min(s_0·2^⌊k/K'⌋, s_1) + 1 levels at iteration k of
/// K, with K' = ⌊K / (log₂⌊s_1/s_0⌋ + 1)⌋ (the logarithm not floored, as in iCT's reference).
pub fn curriculum_levels(k: u64, total: u64, s0: u64, s1: u64) -> usize {
    let stages = ((s1 / s0.max(1)).max(1) as f64).log2() + 1.0;
    let k_prime = ((total as f64 / stages).floor() as u64).max(1);
    let n = (s0 as f64 * 2f64.powi((k / k_prime).min(62) as i32)).min(s1 as f64) as usize;
    n + 1
}

fn erf(x: f64) -> f64 {
    // The Taylor series below 3, the continued fraction of erfc above (both to ~1e-15).
    let (s, a) = (x.signum(), x.abs());
    if a > 6.0 {
        return s;
    }
    if a < 3.0 {
        // erf(a) = 2/√π Σ (−1)^n a^{2n+1} / (n! (2n+1))
        let mut term = a;
        let mut sum = a;
        for n in 1..200 {
            term *= -a * a / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        return s * sum * 2.0 / std::f64::consts::PI.sqrt();
    }
    // erfc(a) by its continued fraction (Lentz), accurate for a ≥ 3.
    let mut f = a;
    let (mut c, mut d) = (a, 0.0);
    for n in 1..300 {
        let an = n as f64 / 2.0;
        d = 1.0 / (a + an * d);
        c = a + an / c;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    s * (1.0 - (-a * a).exp() / (f * std::f64::consts::PI.sqrt()))
}

/// iCT's lognormal level distribution over the n − 1 adjacent pairs (σ_i, σ_{i+1}) of `sigmas`:
/// p(i) ∝ erf((ln σ_{i+1} − P_mean)/(√2 P_std)) − erf((ln σ_i − P_mean)/(√2 P_std)).
pub fn level_probabilities(sigmas: &[f64], p_mean: f64, p_std: f64) -> Vec<f64> {
    let e = |s: f64| erf((s.ln() - p_mean) / (std::f64::consts::SQRT_2 * p_std));
    let w: Vec<f64> = sigmas.windows(2).map(|p| (e(p[1]) - e(p[0])).max(0.0)).collect();
    let total: f64 = w.iter().sum();
    w.iter().map(|x| x / total).collect()
}

/// The consistency function f(x, σ) = c_skip(σ)·x + c_out(σ)·F, given the network's raw output F
/// (computed by the caller on c_in(σ)·x); per-sample σ as a column [B, 1].
pub fn consistency_output(levels: &NoiseLevels, x: &Tensor, raw: &Tensor, sigma: &[f64]) -> Tensor {
    let col = |f: &dyn Fn(f64) -> f64| Tensor::from_slice(&sigma.iter().map(|&s| f(s)).collect::<Vec<f64>>()).to_kind(x.kind()).to_device(x.device()).view([-1, 1]);
    x * col(&|s| levels.c_skip(s)) + raw * col(&|s| levels.c_out(s))
}

/// The per-sample distance between consistency outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distance {
    /// iCT's √(‖r‖² + c²) − c: quadratic for ‖r‖ ≪ c, linear (‖r‖ − c) beyond.
    PseudoHuber,
    /// sLCT's log(1 + ‖r‖²/(2c²)): logarithmic in large residuals, so outliers weigh little.
    Cauchy,
    /// ‖r‖², the plain squared error.
    Squared,
}

/// d(r) per row of the residuals r [B, D], with scale c; returns [B].
pub fn distance(r: &Tensor, kind: Distance, c: f64) -> Tensor {
    let sq = r.square().sum_dim_intlist([1i64].as_slice(), false, r.kind());
    match kind {
        Distance::PseudoHuber => (sq + c * c).sqrt() - c,
        Distance::Cauchy => (sq / (2.0 * c * c)).log1p(),
        Distance::Squared => sq,
    }
}

/// iCT's default scale c = 0.00054·√dim.
pub fn ict_c(dim: i64) -> f64 {
    0.00054 * (dim as f64).sqrt()
}

/// ema ← decay·ema + (1 − decay)·θ, tensor by tensor.
pub fn ema_update(ema: &[Tensor], params: &[Tensor], decay: f64) {
    tch::no_grad(|| {
        for (e, p) in ema.iter().zip(params) {
            let _ = e.shallow_clone().g_mul_scalar_(decay).g_add_(&(p.detach() * (1.0 - decay)));
        }
    });
}

/// Kurtosis E[z⁴] of all elements (z standardised, population std): 3 for a Gaussian.
pub fn kurtosis(x: &Tensor) -> f64 {
    let x = x.detach().to_kind(Kind::Double).flatten(0, -1);
    let z = (&x - x.mean(Kind::Double)) / x.std(false).clamp_min(1e-300);
    f64::try_from(z.pow_tensor_scalar(4.0).mean(Kind::Double)).unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::f64s;

    #[test]
    fn karras_levels_span_the_range_and_the_parameterisation_is_the_identity_at_sigma_min() {
        let l = NoiseLevels::default();
        let s = l.karras(11);
        assert!((s[0] - 0.002).abs() < 1e-15 && (s[10] - 80.0).abs() < 1e-9);
        assert!(s.windows(2).all(|p| p[1] > p[0]));
        // ρ = 1 spaces the levels evenly.
        let even = NoiseLevels { rho: 1.0, sigma_min: 1.0, sigma_max: 3.0, ..l }.karras(5);
        assert_eq!(even, vec![1.0, 1.5, 2.0, 2.5, 3.0]);
        assert_eq!((l.c_skip(l.sigma_min), l.c_out(l.sigma_min)), (1.0, 0.0));
        // Whatever the network says, f(x, σ_min) = x.
        let x = Tensor::from_slice(&[0.3f64, -1.2, 2.0, 0.5]).view([2, 2]);
        let raw = Tensor::from_slice(&[9.0f64, 9.0, -7.0, 4.0]).view([2, 2]);
        assert_eq!(f64s(&consistency_output(&l, &x, &raw, &[0.002, 0.002])), f64s(&x));
        // At σ: c_skip·x + c_out·F by row.
        let out = f64s(&consistency_output(&l, &x, &raw, &[0.002, 1.0]));
        assert!((out[2] - (l.c_skip(1.0) * 2.0 + l.c_out(1.0) * -7.0)).abs() < 1e-12);
        assert!((l.c_in(1.5) - 1.0 / (2.25f64 + 0.25).sqrt()).abs() < 1e-15);
        // c_out's denominator uses σ itself, its numerator σ − σ_min.
        assert!((l.c_out(1.0) - 0.5 * 0.998 / 1.25f64.sqrt()).abs() < 1e-15);
        assert!((l.c_skip(1.0) - 0.25 / (0.998f64.powi(2) + 0.25)).abs() < 1e-15);
        // With σ_min = 0 these are EDM's: c_skip = σ_d²/(σ² + σ_d²), c_out = σσ_d/√(σ² + σ_d²).
        let z = NoiseLevels { sigma_min: 0.0, ..l };
        assert!((z.c_skip(0.5) - 0.5).abs() < 1e-15 && (z.c_out(0.5) - 0.25 / 0.5f64.sqrt()).abs() < 1e-15);
    }

    #[test]
    fn the_curriculum_doubles_from_s0_to_s1() {
        // K = 2000, s0 10, s1 160: ⌊log2 16⌋ + 1 = 5 stages of K' = 400.
        let n: Vec<usize> = [0u64, 399, 400, 800, 1200, 1600, 1999].iter().map(|&k| curriculum_levels(k, 2000, 10, 160)).collect();
        assert_eq!(n, vec![11, 11, 21, 41, 81, 161, 161]);
        // iCT's own: s1 1280 → 8 stages; the last iteration has s1 + 1 levels.
        assert_eq!(curriculum_levels(0, 400_000, 10, 1280), 11);
        assert_eq!(curriculum_levels(399_999, 400_000, 10, 1280), 1281);
        // s1/s0 = 12 is not a power of two: K' = ⌊1000/(log₂12 + 1)⌋ = 218 (not 250).
        assert_eq!(curriculum_levels(217, 1000, 10, 120), 11);
        assert_eq!(curriculum_levels(218, 1000, 10, 120), 21);
    }

    #[test]
    fn erf_and_the_lognormal_level_distribution() {
        for (x, want) in [(0.0, 0.0), (0.5, 0.520_499_877_813_046_5), (1.0, 0.842_700_792_949_714_9), (-2.0, -0.995_322_265_018_952_7), (3.5, 0.999_999_256_901_627_7), (4.2, 0.999_999_997_144_505_8)] {
            assert!((erf(x) - want).abs() < 1e-14, "erf({x}) = {} vs {want}", erf(x));
        }
        let s = NoiseLevels::default().karras(161);
        let p = level_probabilities(&s, -1.1, 2.0);
        assert_eq!(p.len(), 160);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        // The density of ln σ peaks at P_mean: the most probable pair brackets e^{−1.1} ≈ 0.33 —
        // per unit of ln σ, since the pairs are not evenly spaced in ln σ.
        let density: Vec<f64> = (0..160).map(|i| p[i] / (s[i + 1].ln() - s[i].ln())).collect();
        let best = (0..160).max_by(|&a, &b| density[a].partial_cmp(&density[b]).unwrap()).unwrap();
        assert!(s[best] <= (-1.1f64).exp() * 1.15 && s[best + 1] >= (-1.1f64).exp() / 1.15, "{} {}", s[best], s[best + 1]);
    }

    #[test]
    fn the_robust_distances_limits_and_gradients() {
        let c = 0.1;
        let r = |v: f64| Tensor::from_slice(&[v, 0.0]).view([1, 2]);
        // Cauchy ≈ r²/(2c²) for r ≪ c; pseudo-Huber → |r| − c for r ≫ c.
        let small = 1e-3;
        let want = small * small / (2.0 * c * c);
        assert!((distance(&r(small), Distance::Cauchy, c).double_value(&[0]) - want).abs() < 1e-4 * want);
        assert!((distance(&r(50.0), Distance::PseudoHuber, c).double_value(&[0]) - (50.0 - c)).abs() < 1e-3);
        let want = small * small / (2.0 * c);
        assert!((distance(&r(small), Distance::PseudoHuber, c).double_value(&[0]) - want).abs() < 1e-4 * want);
        // The Cauchy loss's derivative 2r/(2c² + r²) peaks at r = √2·c with value 1/(√2·c).
        let grad = |v: f64, kind: Distance| {
            let x = r(v).set_requires_grad(true);
            distance(&x, kind, c).sum(Kind::Double).backward();
            x.grad().double_value(&[0, 0])
        };
        let peak = grad(std::f64::consts::SQRT_2 * c, Distance::Cauchy);
        assert!((peak - 1.0 / (std::f64::consts::SQRT_2 * c)).abs() < 1e-12);
        assert!(grad(1.2 * c, Distance::Cauchy) < peak && grad(1.7 * c, Distance::Cauchy) < peak);
        // Against central differences.
        for kind in [Distance::Cauchy, Distance::PseudoHuber, Distance::Squared] {
            for v in [0.03, 0.4, 3.0] {
                let h = 1e-6;
                let fd = (distance(&r(v + h), kind, c).double_value(&[0]) - distance(&r(v - h), kind, c).double_value(&[0])) / (2.0 * h);
                assert!((grad(v, kind) - fd).abs() < 1e-6 * (1.0 + fd.abs()), "{kind:?} at {v}");
            }
        }
        assert!((ict_c(16) - 0.00216).abs() < 1e-15);
    }

    #[test]
    fn ema_and_kurtosis() {
        let e = [Tensor::from_slice(&[1.0f64, 2.0])];
        let p = [Tensor::from_slice(&[3.0f64, 0.0])];
        ema_update(&e, &p, 0.75);
        assert_eq!(f64s(&e[0]), vec![1.5, 1.5]);
        // Two-point ±1: kurtosis 1.
        assert!((kurtosis(&Tensor::from_slice(&[4.0f64, 2.0, 4.0, 2.0])) - 1.0).abs() < 1e-12, "centred first");
        // {0, 0, 0, 4}: mean 1, population variance 3, E(x − 1)⁴ = (3·1 + 81)/4 = 21, kurtosis 21/9.
        assert!((kurtosis(&Tensor::from_slice(&[0.0f64, 0.0, 0.0, 4.0])) - 21.0 / 9.0).abs() < 1e-12);
    }
}
