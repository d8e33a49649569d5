//! Denoising diffusion (DDPM, Ho et al. 2020; DDIM, Song et al. 2021): noise schedules (linear β,
//! and the cosine ᾱ of Nichol & Dhariwal), the forward marginal q(x_t | x_0), the ε- and
//! x₀-parametrisations, DDPM ancestral and DDIM steps and samplers, sinusoidal timestep
//! embeddings, and classifier-free guidance. Timesteps are 0-based: t = 0 is the first noising
//! step, ᾱ_t = Π_{s ≤ t} (1 − β_s), as in diffusers' DDPMScheduler. Sampling noise comes from a
//! seeded [`Rng`], so a sampler is reproducible whatever else uses torch's generator.

use tch::{Device, Kind, Tensor};

use crate::context::Rng;

/// β_t and ᾱ_t for t = 0..T−1.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
}

impl Schedule {
    fn from_betas(betas: Vec<f64>) -> Self {
        let mut acc = 1.0;
        let alphas_cumprod = betas.iter().map(|b| {
            acc *= 1.0 - b;
            acc
        }).collect();
        Schedule { betas, alphas_cumprod }
    }

    /// DDPM's linear β from `start` to `end` over `steps` (Ho et al.: 1e-4 to 0.02 over 1000).
    pub fn linear(steps: usize, start: f64, end: f64) -> Self {
        assert!(steps >= 2, "a schedule needs at least two steps");
        Self::from_betas((0..steps).map(|i| start + (end - start) * i as f64 / (steps - 1) as f64).collect())
    }

    /// The cosine schedule: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T) + s)/(1 + s)·π/2), β clipped at 0.999.
    pub fn cosine(steps: usize, s: f64) -> Self {
        let f = |t: f64| (((t / steps as f64) + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2).cos().powi(2);
        Self::from_betas((0..steps).map(|i| (1.0 - f(i as f64 + 1.0) / f(i as f64)).min(0.999)).collect())
    }

    pub fn len(&self) -> usize {
        self.betas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    fn column(&self, x: &Tensor, t: &[usize], f: impl Fn(usize) -> f64) -> Tensor {
        let mut shape = vec![t.len() as i64];
        shape.extend(std::iter::repeat(1).take(x.dim() - 1));
        Tensor::from_slice(&t.iter().map(|&i| f(i)).collect::<Vec<f64>>()).to_kind(x.kind()).to_device(x.device()).view(shape.as_slice())
    }

    /// x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε, per-sample t.
    pub fn q_sample(&self, x0: &Tensor, t: &[usize], eps: &Tensor) -> Tensor {
        x0 * self.column(x0, t, |i| self.alphas_cumprod[i].sqrt()) + eps * self.column(x0, t, |i| (1.0 - self.alphas_cumprod[i]).sqrt())
    }

    /// x₀ = (x_t − √(1 − ᾱ_t)·ε)/√ᾱ_t.
    pub fn x0_from_eps(&self, xt: &Tensor, t: &[usize], eps: &Tensor) -> Tensor {
        (xt - eps * self.column(xt, t, |i| (1.0 - self.alphas_cumprod[i]).sqrt())) / self.column(xt, t, |i| self.alphas_cumprod[i].sqrt())
    }

    /// ε = (x_t − √ᾱ_t·x₀)/√(1 − ᾱ_t).
    pub fn eps_from_x0(&self, xt: &Tensor, t: &[usize], x0: &Tensor) -> Tensor {
        (xt - x0 * self.column(xt, t, |i| self.alphas_cumprod[i].sqrt())) / self.column(xt, t, |i| (1.0 - self.alphas_cumprod[i]).sqrt())
    }

    fn alpha_bar_prev(&self, t: usize) -> f64 {
        if t == 0 { 1.0 } else { self.alphas_cumprod[t - 1] }
    }

    /// One DDPM ancestral step from x_t (all samples at the same t) given ε̂: the posterior mean
    /// μ̃ = √ᾱ_{t−1}β_t/(1 − ᾱ_t)·x̂₀ + √α_t(1 − ᾱ_{t−1})/(1 − ᾱ_t)·x_t plus √β̃_t·z, β̃_t =
    /// (1 − ᾱ_{t−1})/(1 − ᾱ_t)·β_t (no noise at t = 0). `clip` bounds x̂₀ (e.g. to [−1, 1]).
    pub fn ddpm_step(&self, xt: &Tensor, t: usize, eps_hat: &Tensor, z: &Tensor, clip: Option<f64>) -> Tensor {
        let (ab, ab_prev, beta) = (self.alphas_cumprod[t], self.alpha_bar_prev(t), self.betas[t]);
        let mut x0 = (xt - eps_hat * (1.0 - ab).sqrt()) / ab.sqrt();
        if let Some(c) = clip {
            x0 = x0.clamp(-c, c);
        }
        let mean = x0 * (ab_prev.sqrt() * beta / (1.0 - ab)) + xt * ((1.0 - beta).sqrt() * (1.0 - ab_prev) / (1.0 - ab));
        if t == 0 {
            mean
        } else {
            mean + z * ((1.0 - ab_prev) / (1.0 - ab) * beta).sqrt()
        }
    }

    /// One DDIM step from x_t to x_{t_prev} (None: to x₀) given ε̂, with stochasticity η (0:
    /// deterministic): x_prev = √ᾱ_prev·x̂₀ + √(1 − ᾱ_prev − σ²)·ε̂ + σ·z,
    /// σ = η·√((1 − ᾱ_prev)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev).
    pub fn ddim_step(&self, xt: &Tensor, t: usize, t_prev: Option<usize>, eps_hat: &Tensor, eta: f64, z: &Tensor) -> Tensor {
        let ab = self.alphas_cumprod[t];
        let ab_prev = t_prev.map_or(1.0, |p| self.alphas_cumprod[p]);
        let x0 = (xt - eps_hat * (1.0 - ab).sqrt()) / ab.sqrt();
        let sigma = eta * ((1.0 - ab_prev) / (1.0 - ab)).sqrt() * (1.0 - ab / ab_prev).max(0.0).sqrt();
        let mut out = x0 * ab_prev.sqrt() + eps_hat * (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt();
        if sigma > 0.0 {
            out = out + z * sigma;
        }
        out
    }

    /// DDPM ancestral sampling over all T steps from N(0, I) of `shape` on `device`;
    /// `eps_model(x_t, t)`.
    pub fn sample_ddpm(&self, shape: &[i64], device: Device, rng: &mut Rng, clip: Option<f64>, mut eps_model: impl FnMut(&Tensor, usize) -> Tensor) -> Tensor {
        let mut x = gaussian(shape, rng).to_device(device);
        for t in (0..self.len()).rev() {
            let eps = eps_model(&x, t);
            let z = if t > 0 { gaussian(shape, rng).to_device(device) } else { x.zeros_like() };
            x = self.ddpm_step(&x, t, &eps, &z, clip);
        }
        x
    }

    /// DDIM sampling on `steps` evenly spaced timesteps (T−1 down to 0, then to x₀), on `device`.
    pub fn sample_ddim(&self, shape: &[i64], device: Device, steps: usize, eta: f64, rng: &mut Rng, mut eps_model: impl FnMut(&Tensor, usize) -> Tensor) -> Tensor {
        let ts = ddim_timesteps(self.len(), steps);
        let mut x = gaussian(shape, rng).to_device(device);
        for (k, &t) in ts.iter().enumerate() {
            let prev = ts.get(k + 1).copied();
            let eps = eps_model(&x, t);
            let z = if eta > 0.0 { gaussian(shape, rng).to_device(device) } else { x.zeros_like() };
            x = self.ddim_step(&x, t, prev, &eps, eta, &z);
        }
        x
    }
}

/// `steps` timesteps evenly spaced from T−1 down to 0 (decreasing, distinct).
pub fn ddim_timesteps(total: usize, steps: usize) -> Vec<usize> {
    let steps = steps.clamp(1, total);
    let mut ts: Vec<usize> = (0..steps).map(|k| ((total - 1) as f64 * (1.0 - k as f64 / (steps - 1).max(1) as f64)).round() as usize).collect();
    ts.dedup();
    ts
}

/// Standard normal noise of `shape` from `rng` (f32).
pub fn gaussian(shape: &[i64], rng: &mut Rng) -> Tensor {
    let n: i64 = shape.iter().product();
    Tensor::from_slice(&(0..n).map(|_| rng.normal() as f32).collect::<Vec<f32>>()).view(shape)
}

/// Sinusoidal timestep embedding [B, dim] (DDPM/ADM): [cos(t·ω_i), sin(t·ω_i)], ω_i =
/// 10000^(−i/half), i < half = dim/2 (dim even).
pub fn timestep_embedding(t: &[f64], dim: i64) -> Tensor {
    assert!(dim % 2 == 0, "an even embedding width");
    let half = dim / 2;
    let freqs = (Tensor::arange(half, (Kind::Double, tch::Device::Cpu)) * (-(10000f64).ln() / half as f64)).exp();
    let args = Tensor::from_slice(t).view([-1, 1]) * freqs.view([1, -1]);
    Tensor::cat(&[args.cos(), args.sin()], 1).to_kind(Kind::Float)
}

/// Classifier-free guidance: ε̂ = ε_u + s·(ε_c − ε_u) (s = 1: the conditional model alone).
pub fn guided_eps(eps_cond: &Tensor, eps_uncond: &Tensor, scale: f64) -> Tensor {
    eps_uncond + (eps_cond - eps_uncond) * scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::f64s;

    #[test]
    fn schedules_and_the_forward_marginal() {
        let s = Schedule::linear(1000, 1e-4, 0.02);
        assert!((s.betas[0] - 1e-4).abs() < 1e-15 && (s.betas[999] - 0.02).abs() < 1e-15);
        assert!((s.alphas_cumprod[0] - (1.0 - 1e-4)).abs() < 1e-15);
        assert!(s.alphas_cumprod.windows(2).all(|w| w[1] < w[0]) && s.alphas_cumprod[999] < 1e-4);
        let c = Schedule::cosine(1000, 0.008);
        assert!(c.alphas_cumprod[0] > 0.9999 && c.alphas_cumprod[999] < 1e-6 && c.betas.iter().all(|b| *b <= 0.999));
        // The cosine ᾱ at the midpoint: f(T/2)/f(0).
        let f = |u: f64| ((u + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
        assert!((c.alphas_cumprod[499] - f(0.5) / f(0.0)).abs() < 1e-9);
        // q(x_t | x_0): exact at ε = 0 and x₀ = 0; empirical mean and variance against the closed form.
        let x0 = Tensor::from_slice(&[1.5f32, -2.0]).view([2, 1]);
        let t = [10usize, 700];
        let mean = f64s(&s.q_sample(&x0, &t, &x0.zeros_like()));
        assert!((mean[0] - 1.5 * s.alphas_cumprod[10].sqrt()).abs() < 1e-6 && (mean[1] + 2.0 * s.alphas_cumprod[700].sqrt()).abs() < 1e-6);
        let mut rng = Rng::new(3);
        let n = 40_000;
        let x0s = Tensor::full([n, 1], 1.5, (Kind::Float, tch::Device::Cpu));
        let xt = f64s(&s.q_sample(&x0s, &vec![300; n as usize], &gaussian(&[n, 1], &mut rng)));
        let m = xt.iter().sum::<f64>() / n as f64;
        let v = xt.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64;
        let ab = s.alphas_cumprod[300];
        assert!((m - 1.5 * ab.sqrt()).abs() < 0.02 && (v - (1.0 - ab)).abs() < 0.02, "{m} {v}");
        // The parametrisations invert each other.
        let eps = gaussian(&[2, 1], &mut rng);
        let xt = s.q_sample(&x0, &t, &eps);
        assert!(f64s(&(s.x0_from_eps(&xt, &t, &eps) - &x0)).iter().all(|d| d.abs() < 1e-4));
        assert!(f64s(&(s.eps_from_x0(&xt, &t, &x0) - &eps)).iter().all(|d| d.abs() < 1e-4));
    }

    /// The exact ε-predictor for x₀ ~ N(μ, s²) (per coordinate): E[ε | x_t] =
    /// √(1 − ᾱ)(x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ).
    fn oracle(sch: &Schedule, mu: f64, sd: f64) -> impl FnMut(&Tensor, usize) -> Tensor + '_ {
        move |x: &Tensor, t: usize| {
            let ab = sch.alphas_cumprod[t];
            (x - ab.sqrt() * mu) * ((1.0 - ab).sqrt() / (ab * sd * sd + 1.0 - ab))
        }
    }

    fn moments(x: &Tensor) -> (f64, f64) {
        let v = f64s(x);
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (m, (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt())
    }

    #[test]
    fn with_the_exact_noise_predictor_both_samplers_recover_a_gaussian_target() {
        let sch = Schedule::linear(1000, 1e-4, 0.02);
        let (mu, sd) = (0.7, 0.3);
        let shape = [20_000i64, 1];
        // On every timestep the deterministic sampler is the probability-flow ODE finely stepped.
        let (m, s) = moments(&sch.sample_ddim(&shape, Device::Cpu, 1000, 0.0, &mut Rng::new(1), oracle(&sch, mu, sd)));
        assert!((m - mu).abs() < 0.01 && (s - sd).abs() < 0.01, "DDIM: {m} {s}");
        // 50 steps: close, with DDIM's known shrinkage of the spread under coarse steps.
        let (m50, s50) = moments(&sch.sample_ddim(&shape, Device::Cpu, 50, 0.0, &mut Rng::new(1), oracle(&sch, mu, sd)));
        assert!((m50 - mu).abs() < 0.01 && (s50 - sd).abs() < 0.04 && (s50 - sd).abs() >= (s - sd).abs() - 0.005, "DDIM 50: {m50} {s50}");
        let (m, s) = moments(&sch.sample_ddim(&shape, Device::Cpu, 1000, 1.0, &mut Rng::new(2), oracle(&sch, mu, sd)));
        assert!((m - mu).abs() < 0.01 && (s - sd).abs() < 0.01, "DDIM η = 1: {m} {s}");
        let (m, s) = moments(&sch.sample_ddpm(&[5000, 1], Device::Cpu, &mut Rng::new(3), None, oracle(&sch, mu, sd)));
        assert!((m - mu).abs() < 0.02 && (s - sd).abs() < 0.02, "DDPM: {m} {s}");
        // A wrong predictor (ε̂ = 0 everywhere) does not: the test can fail.
        let (_, s) = moments(&sch.sample_ddim(&shape, Device::Cpu, 50, 0.0, &mut Rng::new(1), |x, _| x.zeros_like()));
        assert!((s - sd).abs() > 0.1);
        // Seeded: the same seed gives the same samples.
        let a = sch.sample_ddim(&[100, 2], Device::Cpu, 20, 1.0, &mut Rng::new(9), oracle(&sch, mu, sd));
        let b = sch.sample_ddim(&[100, 2], Device::Cpu, 20, 1.0, &mut Rng::new(9), oracle(&sch, mu, sd));
        assert_eq!(f64s(&a), f64s(&b));
    }

    #[test]
    fn a_deterministic_ddim_step_with_the_true_noise_lands_on_the_forward_marginal() {
        // If ε̂ is the ε that made x_t from x₀, DDIM (η = 0) moves x_t to q_sample(x₀, t_prev, ε).
        let sch = Schedule::cosine(100, 0.008);
        let mut rng = Rng::new(4);
        let x0 = gaussian(&[8, 3], &mut rng);
        let eps = gaussian(&[8, 3], &mut rng);
        let xt = sch.q_sample(&x0, &[60; 8], &eps);
        let prev = sch.ddim_step(&xt, 60, Some(20), &eps, 0.0, &eps.zeros_like());
        let want = sch.q_sample(&x0, &[20; 8], &eps);
        assert!(f64s(&(prev - want)).iter().all(|d| d.abs() < 1e-4));
        let last = sch.ddim_step(&xt, 60, None, &eps, 0.0, &eps.zeros_like());
        assert!(f64s(&(last - &x0)).iter().all(|d| d.abs() < 1e-4));
        assert_eq!(ddim_timesteps(1000, 5), vec![999, 749, 500, 250, 0]);
        assert_eq!(ddim_timesteps(10, 50), (0..10).rev().collect::<Vec<_>>());
    }

    #[test]
    fn timestep_embedding_and_guidance() {
        let e = f64s(&timestep_embedding(&[0.0, 1.0], 4));
        // ω = [1, 10000^(−1/2) = 0.01].
        assert_eq!(&e[..4], &[1.0, 1.0, 0.0, 0.0]);
        let want = [1f64.cos(), 0.01f64.cos(), 1f64.sin(), 0.01f64.sin()];
        for (a, b) in e[4..].iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
        let (c, u) = (Tensor::from_slice(&[1.0f32, 2.0]), Tensor::from_slice(&[0.0f32, 4.0]));
        assert_eq!(f64s(&guided_eps(&c, &u, 1.0)), f64s(&c));
        assert_eq!(f64s(&guided_eps(&c, &u, 0.0)), f64s(&u));
        assert_eq!(f64s(&guided_eps(&c, &u, 3.0)), vec![3.0, -2.0]);
    }
}
