//! Neural Network-Based Score Estimation in Diffusion Models: Optimization and Generalization —
//! Han, Razaviyayn & Xu, arXiv 2401.15604.
//!
//! Denoising score matching on n fixed triples (x₀, t, z) is regression with noisy labels. A wide
//! two-layer ReLU network trained by full-batch GD follows kernel GD with its NTK, so it first
//! learns the score and then fits the label noise: the true score error is U-shaped in the number
//! of steps, and early stopping (chosen on a held-out DSM loss) beats the final iterate. The
//! experiment: a 2-D 4-component Gaussian mixture under the OU process, whose score is in closed
//! form; the network's test score error against its kernel-GD twin, at two sample sizes.
//!
//! No official code (a theory paper): the note's reconstruction, with these choices. OU forward
//! process x_t = α_t x₀ + σ_t z, α_t = e^{−t}, σ_t² = 1 − e^{−2t}, t ~ U[t_min, t_max]. Denoiser form
//! s = (α_t f − x)/σ_t², so the ε-prediction loss (1/n) Σ ‖σ_t s + z‖² is the weighted least squares
//! (1/n) Σ ω_i ‖f_i − x₀ⁱ‖² with ω = α_t²/σ_t²; GD minimises half of it, so that its linearisation is
//! c_{k+1} = c_k + (η/n) Ω (Y − K c_k) and u_k = K c_k on the training inputs — the note's
//! u_k = (I − (I − (η/n)K)^k) y with the per-sample weights Ω that the ε-weighting puts in (kernel
//! GD without them is a different trajectory; the tests check both). Network f(u) = m^{−½} Σ_r a_r
//! ReLU(w_rᵀu) on u = (x_t, t, 1) with a fixed output layer a_r ∈ {±1}^d shared by the d output
//! coordinates (one hidden layer, not d networks). Symmetric init generalising the note's ± pairs:
//! neurons come in groups of G = 2^⌈log₂(d+1)⌉ that share w_r ~ N(0, I), with output signs the rows
//! of columns 1..d of the Sylvester–Hadamard matrix H_G. Each column sums to zero, so f ≡ 0 at init;
//! the columns are orthogonal, so the empirical NTK at init is exactly K ⊗ I_d (block-diagonal over
//! the output coordinates, identical blocks). η = `lr_fraction`·n/λ_max(Ω^½ K Ω^½), computed at run
//! time (GD on the linearised model is stable iff that fraction is < 2). Kernel GD runs in closed
//! form through the eigendecomposition of Ω^½ K Ω^½; its test predictions are K(x, X) c_k,
//! c_k = Σ_{j<k} (η/n) Ω (Y − u_j). The score error E[σ_t² ‖s − ∇log p_t‖²] uses the mixture's closed
//! form on fresh test points; the early-stopping step k* minimises a held-out DSM loss on fresh
//! triples. The network distance to kernel GD is ‖f_net − f_ker‖_ω / ‖f_ker‖_ω on the test inputs
//! (ω-weighted, the norm of the score error; the unweighted one is reported too). The network trains
//! in float32 unless `float64`; kernels and metrics are float64.

use std::f64::consts::PI;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::context::{Rng, RunCtx};
use crate::reduce::norm;

pub struct ScoreEstimation;

/// Rows per forward chunk on the test and held-out sets (bounds memory at large width).
const CHUNK: i64 = 2048;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Data dimension d.
    pub dim: i64,
    /// Mixture components (equal weights) at hypercube means in {±mean_scale}^d.
    pub components: i64,
    pub mean_scale: f64,
    /// Standard deviation of each isotropic component.
    pub component_std: f64,
    /// Diffusion times are drawn from U[t_min, t_max].
    pub t_min: f64,
    pub t_max: f64,
    /// Training triples n, drawn once and kept.
    pub samples: i64,
    /// Hidden width m, a multiple of the sign-group size 2^⌈log₂(dim+1)⌉.
    pub width: i64,
    /// Full-batch GD steps.
    pub steps: u64,
    /// η·λ_max(Ω^½ K Ω^½)/n: the step size as a fraction of the stability edge 2; η is set at run time.
    pub lr_fraction: f64,
    /// Fresh points for the true score error.
    pub test_size: i64,
    /// Fresh triples for the held-out DSM loss that picks the early-stopping step.
    pub heldout: i64,
    /// Curves are logged every max(1, ⌊steps/log_points⌋) steps, and at the last step.
    pub log_points: u64,
    /// Train the network in float64 (default float32).
    pub float64: bool,
}

impl Default for Config {
    fn default() -> Self {
        // The note's §5: m = 2048, 20 000 steps, η·λ_max/n = 1 (the note's η = 1 "tuned so that η·λ_max/n < 2").
        Config {
            dim: 2,
            components: 4,
            mean_scale: 2.0,
            component_std: 0.5,
            t_min: 0.05,
            t_max: 2.0,
            samples: 1024,
            width: 2048,
            steps: 20_000,
            lr_fraction: 1.0,
            test_size: 4096,
            heldout: 2048,
            log_points: 200,
            float64: false,
        }
    }
}

/// Bits B = ⌈log₂ K⌉ (at least 1) that index the hypercube means.
fn mean_bits(components: i64) -> i64 {
    if components <= 2 {
        1
    } else {
        64 - (components as u64 - 1).leading_zeros() as i64
    }
}

/// An equal-weight mixture of isotropic Gaussians N(μ_j, s² I) in R^d.
#[derive(Debug, Clone)]
pub struct Mixture {
    pub dim: i64,
    pub components: i64,
    /// Means, row-major [K, d].
    pub means: Vec<f64>,
    pub std: f64,
}

impl Mixture {
    /// Means on {±scale}^d: coordinate i of component j is +scale when bit (i mod B) of j is set,
    /// B = ⌈log₂ K⌉. For d = 2, K = 4 these are the note's (±2, ±2); distinct while K ≤ 2^d.
    pub fn hypercube(dim: i64, components: i64, scale: f64, std: f64) -> Self {
        let bits = mean_bits(components);
        let means = (0..components).flat_map(|j| (0..dim).map(move |i| if (j >> (i % bits)) & 1 == 1 { scale } else { -scale })).collect();
        Mixture { dim, components, means, std }
    }

    pub fn means_tensor(&self, device: Device) -> Tensor {
        Tensor::from_slice(&self.means).view([self.components, self.dim]).to_device(device)
    }

    /// `n` draws, row-major [n, d].
    pub fn sample(&self, n: i64, rng: &mut Rng) -> Vec<f64> {
        let d = self.dim as usize;
        let mut out = Vec::with_capacity(n as usize * d);
        for _ in 0..n {
            let j = rng.below(self.components as u64) as usize;
            out.extend((0..d).map(|i| self.means[j * d + i] + self.std * rng.normal()));
        }
        out
    }

    /// −‖x − α μ_j‖²/(2v) [N, K] and v = α² s² + σ² [N, 1]: the forward marginal is again a mixture,
    /// Σ_j (1/K) N(α μ_j, v I).
    fn component_logits(&self, x: &Tensor, alpha: &Tensor, sigma2: &Tensor) -> (Tensor, Tensor, Tensor) {
        let means = self.means_tensor(x.device()).to_kind(x.kind());
        let v = (alpha.square() * (self.std * self.std) + sigma2).unsqueeze(1);
        let diff = alpha.view([-1, 1, 1]) * means.unsqueeze(0) - x.unsqueeze(1);
        let logits = diff.square().sum_dim_intlist([2].as_slice(), false, x.kind()) / (&v * -2.0);
        (logits, diff, v)
    }

    /// ∇ₓ log p_t(x) for rows x [N, d] with their α_t, σ_t² [N]: Σ_j r_j(x) (α μ_j − x)/v.
    pub fn score(&self, x: &Tensor, alpha: &Tensor, sigma2: &Tensor) -> Tensor {
        let (logits, diff, v) = self.component_logits(x, alpha, sigma2);
        let r = logits.softmax(1, x.kind());
        (r.unsqueeze(2) * diff).sum_dim_intlist([1].as_slice(), false, x.kind()) / v
    }

    /// log p_t(x) [N] (to check `score` by autograd).
    pub fn log_density(&self, x: &Tensor, alpha: &Tensor, sigma2: &Tensor) -> Tensor {
        let (logits, _, v) = self.component_logits(x, alpha, sigma2);
        logits.logsumexp([1].as_slice(), false) - (v.squeeze_dim(1) * (2.0 * PI)).log() * (self.dim as f64 / 2.0) - (self.components as f64).ln()
    }
}

/// Diffusion triples x₀ [N, d], t [N], z [N, d] and the derived x_t = α_t x₀ + σ_t z, α_t = e^{−t},
/// σ_t² = 1 − e^{−2t}; float64.
pub struct Triples {
    pub x0: Tensor,
    pub t: Tensor,
    pub z: Tensor,
    pub xt: Tensor,
    pub alpha: Tensor,
    pub sigma2: Tensor,
}

impl Triples {
    pub fn draw(mix: &Mixture, n: i64, t_min: f64, t_max: f64, rng: &mut Rng, device: Device) -> Self {
        let d = mix.dim;
        let x0 = Tensor::from_slice(&mix.sample(n, rng)).view([n, d]).to_device(device);
        let t: Vec<f64> = (0..n).map(|_| t_min + (t_max - t_min) * rng.uniform()).collect();
        let z: Vec<f64> = (0..n * d).map(|_| rng.normal()).collect();
        Self::at(x0, Tensor::from_slice(&t).to_device(device), Tensor::from_slice(&z).view([n, d]).to_device(device))
    }

    pub fn at(x0: Tensor, t: Tensor, z: Tensor) -> Self {
        let alpha = t.neg().exp();
        let sigma2 = (&t * -2.0).expm1().neg();
        let xt = &x0 * alpha.unsqueeze(1) + &z * sigma2.sqrt().unsqueeze(1);
        Triples { x0, t, z, xt, alpha, sigma2 }
    }

    /// ω = α²/σ²: in the denoiser form ‖σ s + z‖² = ω ‖f − x₀‖².
    pub fn omega(&self) -> Tensor {
        self.alpha.square() / &self.sigma2
    }

    /// Network inputs (x_t, t, 1) [N, d + 2].
    pub fn inputs(&self) -> Tensor {
        Tensor::cat(&[&self.xt, &self.t.unsqueeze(1), &self.t.ones_like().unsqueeze(1)], 1)
    }
}

/// The denoiser-form score s = (α f − x_t)/σ² for predictions f [N, d] of E[x₀ | x_t].
pub fn denoiser_score(f: &Tensor, tr: &Triples) -> Tensor {
    (f * tr.alpha.unsqueeze(1) - &tr.xt) / tr.sigma2.unsqueeze(1)
}

fn row_sq(t: &Tensor) -> Tensor {
    t.square().sum_dim_intlist([1].as_slice(), false, Kind::Double)
}

/// The weighted score error E[σ_t² ‖s − ∇log p_t‖²] over the rows.
pub fn score_error(s: &Tensor, true_score: &Tensor, sigma2: &Tensor) -> f64 {
    f64::try_from((row_sq(&(s - true_score)) * sigma2).mean(Kind::Double)).expect("scalar")
}

/// The ε-prediction DSM loss E‖σ_t s + z‖² over the rows.
pub fn dsm_loss(s: &Tensor, tr: &Triples) -> f64 {
    f64::try_from(row_sq(&(s * tr.sigma2.sqrt().unsqueeze(1) + &tr.z)).mean(Kind::Double)).expect("scalar")
}

/// (1/N) Σ_i ω_i ‖f_i − y_i‖²: the ε-prediction loss of denoiser predictions f with labels y = x₀.
pub fn weighted_sq(f: &Tensor, y: &Tensor, omega: &Tensor) -> f64 {
    f64::try_from((row_sq(&(f - y)) * omega).mean(Kind::Double)).expect("scalar")
}

/// ‖f − g‖ / ‖g‖ over all rows, each row weighted by ω when given.
pub fn rel_dist(f: &Tensor, g: &Tensor, omega: Option<&Tensor>) -> f64 {
    let (num, den) = (row_sq(&(f - g)), row_sq(g));
    let (num, den) = match omega {
        Some(w) => (num * w, den * w),
        None => (num, den),
    };
    let (num, den) = (f64::try_from(num.sum(Kind::Double)).expect("scalar"), f64::try_from(den.sum(Kind::Double)).expect("scalar"));
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// The sign-group size G = 2^⌈log₂(d + 1)⌉: the smallest Sylvester–Hadamard order with d columns
/// orthogonal to the all-ones column.
pub fn group_size(d_out: i64) -> i64 {
    ((d_out + 1) as u64).next_power_of_two() as i64
}

/// One group's output signs, row-major [G, d]: columns 1..=d of H_G, H[r][c] = (−1)^{popcount(r & c)}.
pub fn group_signs(d_out: i64) -> Vec<f64> {
    let g = group_size(d_out);
    (0..g).flat_map(|r| (1..=d_out).map(move |c| if (r & c).count_ones() % 2 == 0 { 1.0 } else { -1.0 })).collect()
}

/// A two-layer ReLU network in NTK parametrisation, f(u) = m^{−½} Σ_r a_r ReLU(w_rᵀu) ∈ R^d, with a
/// fixed output layer a [m, d] and a trained first layer w [m, d_in].
pub struct TwoLayer {
    pub w: Tensor,
    pub a: Tensor,
}

impl TwoLayer {
    /// The symmetric init: row g of `w_distinct` [m/G, d_in] is shared by neurons gG .. (g+1)G,
    /// whose output signs are the group's Hadamard rows; same kind and device as `w_distinct`.
    pub fn symmetric(w_distinct: &Tensor, d_out: i64) -> Self {
        let g = group_size(d_out);
        let (distinct, d_in) = (w_distinct.size()[0], w_distinct.size()[1]);
        let w = w_distinct.unsqueeze(1).expand([distinct, g, d_in], false).reshape([distinct * g, d_in]);
        let signs = Tensor::from_slice(&group_signs(d_out)).view([g, d_out]).to_kind(w_distinct.kind()).to_device(w_distinct.device());
        TwoLayer { w, a: signs.repeat([distinct, 1]) }
    }

    pub fn width(&self) -> i64 {
        self.w.size()[0]
    }

    pub fn to_kind(&self, kind: Kind) -> Self {
        TwoLayer { w: self.w.to_kind(kind), a: self.a.to_kind(kind) }
    }

    pub fn forward(&self, u: &Tensor) -> Tensor {
        u.mm(&self.w.transpose(0, 1)).relu().mm(&self.a) / (self.width() as f64).sqrt()
    }

    /// `forward` in row chunks of `CHUNK`.
    pub fn predict(&self, u: &Tensor) -> Tensor {
        let n = u.size()[0];
        let mut parts = Vec::new();
        let mut start = 0;
        while start < n {
            let len = CHUNK.min(n - start);
            parts.push(self.forward(&u.narrow(0, start, len)));
            start += len;
        }
        Tensor::cat(&parts, 0)
    }

    /// f on `u` and ∇_w of L = (1/2n) Σ_i ω_i ‖f(u_i) − y_i‖², by hand (one pass, no autograd graph).
    pub fn loss_grad(&self, u: &Tensor, y: &Tensor, omega: &Tensor) -> (Tensor, Tensor) {
        let n = u.size()[0] as f64;
        let scale = 1.0 / (self.width() as f64).sqrt();
        let h = u.mm(&self.w.transpose(0, 1));
        let f = h.relu().mm(&self.a) * scale;
        let r = (&f - y) * omega.unsqueeze(1) * (scale / n);
        // threshold_backward(grad, h, 0) = grad · 1{h > 0}: ReLU's backward in one fused op.
        let grad_h = h.threshold_backward(&r.mm(&self.a.transpose(0, 1)), 0.0);
        (f, grad_h.transpose(0, 1).mm(u))
    }
}

/// Block (c, c') of the network's empirical NTK between u1 [n1, d_in] and u2 [n2, d_in]:
/// K_ij = (1/m) Σ_r a_rc a_rc' 1{w_r·u1_i > 0} 1{w_r·u2_j > 0} u1_i·u2_j (only w is trained).
pub fn ntk_block(net: &TwoLayer, u1: &Tensor, u2: &Tensor, c: i64, c2: i64) -> Tensor {
    let p1 = u1.mm(&net.w.transpose(0, 1)).gt(0.0).to_kind(u1.kind());
    let p2 = u2.mm(&net.w.transpose(0, 1)).gt(0.0).to_kind(u2.kind());
    let sign = net.a.select(1, c) * net.a.select(1, c2);
    (p1 * sign.unsqueeze(0)).mm(&p2.transpose(0, 1)) / net.width() as f64 * u1.mm(&u2.transpose(0, 1))
}

/// The empirical NTK at the symmetric init from the m/G distinct rows `w_distinct` (float64, as
/// u1, u2): every diagonal block of `ntk_block` equals it and the cross blocks vanish. The 0/1
/// activation patterns are multiplied in float32, which counts exactly below 2^24.
pub fn init_ntk(w_distinct: &Tensor, u1: &Tensor, u2: &Tensor) -> Tensor {
    let pattern = |u: &Tensor| u.mm(&w_distinct.transpose(0, 1)).gt(0.0).to_kind(Kind::Float);
    let counts = pattern(u1).mm(&pattern(u2).transpose(0, 1)).to_kind(Kind::Double);
    counts / w_distinct.size()[0] as f64 * u1.mm(&u2.transpose(0, 1))
}

/// The m → ∞ limit of `init_ntk` for w ~ N(0, I): E[1{w·u>0} 1{w·u'>0}] u·u' = (π − θ)/(2π) · u·u',
/// θ the angle between u and u' — the order-0 arc-cosine kernel (halved) times the linear kernel.
/// (The order-1 arc-cosine kernel would be the output layer's term, absent here as a is fixed.)
pub fn arccos_ntk(u1: &Tensor, u2: &Tensor) -> Tensor {
    let dot = u1.mm(&u2.transpose(0, 1));
    let (n1, n2) = (row_sq(u1).sqrt(), row_sq(u2).sqrt());
    let theta = (&dot / (n1.unsqueeze(1) * n2.unsqueeze(0))).clamp(-1.0, 1.0).acos();
    (theta.neg() + PI) / (2.0 * PI) * dot
}

/// ‖A − B‖_F / ‖B‖_F (by `reduce::norm`, so the value does not depend on the thread count).
pub fn rel_frobenius(a: &Tensor, b: &Tensor) -> f64 {
    let num = f64::try_from(norm(&(a - b).to_kind(Kind::Double))).expect("scalar");
    let den = f64::try_from(norm(&b.to_kind(Kind::Double))).expect("scalar");
    num / den.max(f64::MIN_POSITIVE)
}

/// Kernel GD with a kernel K [n, n] shared by the output coordinates, on (1/2n) Σ_i ω_i ‖u_i − y_i‖²
/// — the exact GD dynamics of the network linearised at init:
/// c_{k+1} = c_k + (η/n) Ω (Y − K c_k), c_0 = 0; predictions K c_k on the training inputs and
/// K(x, X) c_k elsewhere. In closed form, through B = Ω^½ K Ω^½ = V Λ Vᵀ:
/// c_k = Ω^½ V diag((1 − (1 − ηλ/n)^k)/λ) Vᵀ Ω^½ Y.
pub struct KernelGd {
    v: Tensor,
    lam: Tensor,
    proj: Tensor,
    sqrt_omega: Tensor,
    n: f64,
    /// λ_max(Ω^½ K Ω^½) = λ_max(KΩ): GD on the linearised model is stable iff η·λ_max/n < 2.
    pub lambda_max: f64,
}

impl KernelGd {
    /// K [n, n], ω [n], Y [n, d], all float64.
    pub fn new(k: &Tensor, omega: &Tensor, y: &Tensor) -> Self {
        let sqrt_omega = omega.sqrt();
        let b = k * sqrt_omega.unsqueeze(1) * sqrt_omega.unsqueeze(0);
        let b = (&b + b.transpose(0, 1)) * 0.5;
        let (lam, v) = b.linalg_eigh("L");
        let lambda_max = f64::try_from(lam.max()).expect("scalar");
        // Round-off leaves null modes at ±1e−16·λ_max; the recursion there just accumulates k·η/n,
        // which a tiny positive λ reproduces, and the division stays finite.
        let lam = lam.clamp_min(lambda_max * 1e-12);
        let proj = v.transpose(0, 1).mm(&(y * sqrt_omega.unsqueeze(1)));
        KernelGd { v, lam, proj, sqrt_omega, n: k.size()[0] as f64, lambda_max }
    }

    /// c_k at step size η.
    pub fn coefficients(&self, eta: f64, k: u64) -> Tensor {
        let a = &self.lam * (eta / self.n);
        let kf = k as f64;
        // 1 − (1 − a)^k: by expm1/log1p where a is small (no cancellation), by the power where
        // 1 − a may be negative (η near the stability edge).
        let small = a.lt(0.5);
        let by_logs = (a.clamp_max(0.5).neg().log1p() * kf).expm1().neg();
        let by_power = (a.neg() + 1.0).pow_tensor_scalar(kf).neg() + 1.0;
        let g = by_logs.where_self(&small, &by_power) / &self.lam;
        self.v.mm(&(g.unsqueeze(1) * &self.proj)) * self.sqrt_omega.unsqueeze(1)
    }
}

/// `steps` explicit steps of the kernel-GD recursion c ← c + (η/n) Ω (Y − K c) from c = 0.
pub fn kernel_gd_explicit(k: &Tensor, omega: &Tensor, y: &Tensor, eta: f64, steps: u64) -> Tensor {
    let n = k.size()[0] as f64;
    let mut c = y.zeros_like();
    for _ in 0..steps {
        c = &c + (y - k.mm(&c)) * omega.unsqueeze(1) * (eta / n);
    }
    c
}

/// One logged point of the curves.
struct Point {
    step: u64,
    test: f64,
    heldout: f64,
    kernel_test: f64,
    /// (ω-weighted, plain) network-to-kernel distance; None at step 0, where both are 0.
    rel: Option<(f64, f64)>,
}

fn argmin(xs: impl Iterator<Item = f64>) -> usize {
    xs.enumerate().fold((0, f64::INFINITY), |(bi, bv), (i, v)| if v < bv { (i, v) } else { (bi, bv) }).0
}

/// No shared blocks: every key is the paper's own.
impl crate::paper::Blocks for Config {}

impl crate::paper::Paper for ScoreEstimation {
    const KEY: &'static str = "score_estimation";
    const TITLE: &'static str = "Neural Network-Based Score Estimation in Diffusion Models: Optimization and Generalization";
    const ARXIV: &'static str = "2401.15604";
    type Config = Config;

    fn check(c: &Config) -> Result<()> {
        if !(1..=4096).contains(&c.dim) {
            bail!("`dim` must be in [1, 4096], got {}", c.dim);
        }
        let max_components = 1i64 << c.dim.min(30);
        if !(1..=max_components).contains(&c.components) {
            bail!("`components` must be in [1, 2^dim = {max_components}] (the hypercube means must be distinct), got {}", c.components);
        }
        if !(c.component_std > 0.0) {
            bail!("`component_std` must be > 0, got {}", c.component_std);
        }
        if !(c.mean_scale >= 0.0) {
            bail!("`mean_scale` must be ≥ 0, got {}", c.mean_scale);
        }
        if !(c.t_min > 0.0) {
            bail!("`t_min` must be > 0 (σ_t > 0 keeps the score finite), got {}", c.t_min);
        }
        if !(c.t_max > c.t_min) {
            bail!("`t_max` must be > `t_min` = {}, got {}", c.t_min, c.t_max);
        }
        let g = group_size(c.dim);
        if c.width < g || c.width % g != 0 {
            bail!("`width` must be a positive multiple of the sign-group size 2^⌈log₂(dim+1)⌉ = {g}, got {}", c.width);
        }
        if c.samples < 2 {
            bail!("`samples` must be ≥ 2, got {}", c.samples);
        }
        if c.test_size < 1 {
            bail!("`test_size` must be ≥ 1, got {}", c.test_size);
        }
        if c.heldout < 1 {
            bail!("`heldout` must be ≥ 1, got {}", c.heldout);
        }
        if c.steps == 0 {
            bail!("`steps` must be ≥ 1, got 0");
        }
        if c.log_points == 0 {
            bail!("`log_points` must be ≥ 1, got 0");
        }
        if !(c.lr_fraction > 0.0 && c.lr_fraction < 2.0) {
            bail!("`lr_fraction` must be in (0, 2) (η·λ_max/n at or beyond 2 diverges), got {}", c.lr_fraction);
        }
        Ok(())
    }

    fn run(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
        let device = ctx.device;
        let seed = ctx.seed;
        let net_kind = if cfg.float64 { Kind::Double } else { Kind::Float };
        let d = cfg.dim;
        let mix = Mixture::hypercube(d, cfg.components, cfg.mean_scale, cfg.component_std);
        let draw = |n: i64, salt: u64| Triples::draw(&mix, n, cfg.t_min, cfg.t_max, &mut Rng::new(seed ^ salt), device);
        let train = draw(cfg.samples, 0x5C0E_0001);
        let test = draw(cfg.test_size, 0x5C0E_0002);
        let held = draw(cfg.heldout, 0x5C0E_0003);
        let test_score = mix.score(&test.xt, &test.alpha, &test.sigma2);
        let (omega, omega_test) = (train.omega(), test.omega());
        let (u_train, u_test, u_held) = (train.inputs(), test.inputs(), held.inputs());

        // Symmetric init from m/G distinct first-layer rows w ~ N(0, I).
        let distinct = cfg.width / group_size(d);
        let d_in = d + 2;
        let mut init_rng = Rng::new(seed ^ 0x5C0E_0004);
        let w0: Vec<f64> = (0..distinct * d_in).map(|_| init_rng.normal()).collect();
        let w_distinct = Tensor::from_slice(&w0).view([distinct, d_in]).to_device(device);
        let mut net = TwoLayer::symmetric(&w_distinct, d).to_kind(net_kind);

        let k_train = init_ntk(&w_distinct, &u_train, &u_train);
        let k_test = init_ntk(&w_distinct, &u_test, &u_train);
        let kgd = KernelGd::new(&k_train, &omega, &train.x0);
        let n = cfg.samples as f64;
        let eta = cfg.lr_fraction * n / kgd.lambda_max;
        ctx.set_final("lr", eta)?;
        ctx.set_final("lambda_max_over_n", kgd.lambda_max / n)?;
        ctx.set_final("lr_times_lambda_max_over_n", eta * kgd.lambda_max / n)?;
        ctx.set_final("ntk_vs_arccos_rel_dist", rel_frobenius(&k_train, &arccos_ntk(&u_train, &u_train)))?;
        // The floor of the held-out DSM loss: DSM loss = score error + this constant (in expectation).
        ctx.set_final("true_score_dsm_loss", dsm_loss(&mix.score(&held.xt, &held.alpha, &held.sigma2), &held))?;

        let (u_net, y_net, omega_net) = (u_train.to_kind(net_kind), train.x0.to_kind(net_kind), omega.to_kind(net_kind));
        let (u_test_net, u_held_net) = (u_test.to_kind(net_kind), u_held.to_kind(net_kind));
        let every = (cfg.steps / cfg.log_points).max(1);
        let mut points: Vec<Point> = Vec::new();
        for k in 0..=cfg.steps {
            let (f_train, grad) = net.loss_grad(&u_net, &y_net, &omega_net);
            if k % every == 0 || k == cfg.steps {
                let f_train = f_train.to_kind(Kind::Double);
                let f_test = net.predict(&u_test_net).to_kind(Kind::Double);
                let f_held = net.predict(&u_held_net).to_kind(Kind::Double);
                let c = kgd.coefficients(eta, k);
                let (kf_train, kf_test) = (k_train.mm(&c), k_test.mm(&c));
                let test_err = score_error(&denoiser_score(&f_test, &test), &test_score, &test.sigma2);
                let held_loss = dsm_loss(&denoiser_score(&f_held, &held), &held);
                let kernel_err = score_error(&denoiser_score(&kf_test, &test), &test_score, &test.sigma2);
                let mut row = vec![
                    ("train_loss", weighted_sq(&f_train, &train.x0, &omega)),
                    ("test_score_error", test_err),
                    ("heldout_dsm_loss", held_loss),
                    ("kernel_train_loss", weighted_sq(&kf_train, &train.x0, &omega)),
                    ("kernel_test_score_error", kernel_err),
                ];
                let rel = (k > 0).then(|| (rel_dist(&f_test, &kf_test, Some(&omega_test)), rel_dist(&f_test, &kf_test, None)));
                if let Some((weighted, plain)) = rel {
                    row.push(("net_vs_kernel_rel_dist", weighted));
                    row.push(("net_vs_kernel_rel_dist_plain", plain));
                }
                ctx.log_all(k, &row)?;
                points.push(Point { step: k, test: test_err, heldout: held_loss, kernel_test: kernel_err, rel });
            }
            if k < cfg.steps {
                net.w = &net.w - grad * eta;
            }
            ctx.tick(k, cfg.steps)?;
        }

        let last = points.last().expect("the last step is logged");
        let final_err = last.test;
        let gain = |e: f64| (final_err - e) / final_err.max(f64::MIN_POSITIVE);
        let best = &points[argmin(points.iter().map(|p| p.test))];
        let chosen = &points[argmin(points.iter().map(|p| p.heldout))];
        let kernel_best = &points[argmin(points.iter().map(|p| p.kernel_test))];
        let kernel_final = last.kernel_test;
        let max_rel = |upto: u64, pick: fn(&(f64, f64)) -> f64| points.iter().filter(|p| p.step <= upto).filter_map(|p| p.rel.as_ref().map(pick)).fold(0.0, f64::max);
        ctx.set_final("initial_test_score_error", points[0].test)?;
        ctx.set_final("final_test_score_error", final_err)?;
        ctx.set_final("best_test_score_error", best.test)?;
        ctx.set_final("best_step", best.step as f64)?;
        ctx.set_final("early_stop_gain", gain(best.test))?;
        ctx.set_final("heldout_step", chosen.step as f64)?;
        ctx.set_final("heldout_test_score_error", chosen.test)?;
        ctx.set_final("heldout_gain", gain(chosen.test))?;
        ctx.set_final("kernel_best_test_score_error", kernel_best.kernel_test)?;
        ctx.set_final("kernel_best_step", kernel_best.step as f64)?;
        ctx.set_final("kernel_final_test_score_error", kernel_final)?;
        ctx.set_final("kernel_early_stop_gain", (kernel_final - kernel_best.kernel_test) / kernel_final.max(f64::MIN_POSITIVE))?;
        ctx.set_final("net_vs_kernel_rel_dist_max", max_rel(cfg.steps, |r| r.0))?;
        ctx.set_final("net_vs_kernel_rel_dist_plain_max", max_rel(cfg.steps, |r| r.1))?;
        ctx.set_final("net_vs_kernel_rel_dist_to_best", max_rel(best.step, |r| r.0))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::ProgressMode;
    use crate::paper::Paper;
    use crate::testutil::f64s;

    fn max_abs(t: &Tensor) -> f64 {
        f64::try_from(t.abs().max()).unwrap()
    }

    fn normals(rng: &mut Rng, rows: i64, cols: i64) -> Tensor {
        let v: Vec<f64> = (0..rows * cols).map(|_| rng.normal()).collect();
        Tensor::from_slice(&v).view([rows, cols])
    }

    #[test]
    fn closed_form_mixture_score_is_the_gradient_of_its_log_density() {
        let mut rng = Rng::new(1);
        for mix in [Mixture::hypercube(2, 4, 2.0, 0.5), Mixture::hypercube(3, 5, 1.5, 0.7)] {
            let n = 40;
            let x = (normals(&mut rng, n, mix.dim) * 2.5).set_requires_grad(true);
            let t: Vec<f64> = (0..n).map(|_| 0.02 + 2.0 * rng.uniform()).collect();
            let t = Tensor::from_slice(&t);
            let (alpha, sigma2) = (t.neg().exp(), (&t * -2.0).expm1().neg());
            let logp = mix.log_density(&x, &alpha, &sigma2).sum(Kind::Double);
            let grad = Tensor::run_backward(&[&logp], &[&x], false, false).remove(0);
            let score = mix.score(&x.detach(), &alpha, &sigma2);
            assert!(max_abs(&(&grad - &score)) < 1e-10, "{}", max_abs(&(&grad - &score)));
        }
        // The normalisation: one component at the origin is N(0, (α²s² + σ²) I).
        let single = Mixture { dim: 2, components: 1, means: vec![0.0, 0.0], std: 0.5 };
        let x = Tensor::from_slice(&[0.3f64, -0.4]).view([1, 2]);
        let (alpha, sigma2) = (Tensor::from_slice(&[0.8f64]), Tensor::from_slice(&[0.36f64]));
        let v = 0.64 * 0.25 + 0.36;
        let expected = -0.25 / (2.0 * v) - (2.0 * PI * v).ln();
        assert!((f64::try_from(single.log_density(&x, &alpha, &sigma2).sum(Kind::Double)).unwrap() - expected).abs() < 1e-12);
        // d = 2, K = 4 are the note's means (±2, ±2).
        assert_eq!(Mixture::hypercube(2, 4, 2.0, 0.5).means, vec![-2.0, -2.0, 2.0, -2.0, -2.0, 2.0, 2.0, 2.0]);
    }

    #[test]
    fn dsm_loss_minus_score_error_does_not_depend_on_the_model() {
        // E‖σ s + z‖² − E‖σ(s − ∇log p)‖² = E‖σ∇log p + z‖² for every s, because E[z | x_t] = −σ∇log p_t.
        // Per sample the difference between two models s1, s2 is 2σ(s1 − s2)·(z + σ∇log p): mean 0.
        let mix = Mixture::hypercube(2, 4, 2.0, 0.5);
        let tr = Triples::draw(&mix, 200_000, 0.05, 2.0, &mut Rng::new(7), Device::Cpu);
        let score = mix.score(&tr.xt, &tr.alpha, &tr.sigma2);
        let zero = tr.xt.zeros_like();
        let gaussian = tr.xt.neg(); // the score of N(0, I), the t → ∞ limit
        let per_sample = |s: &Tensor, truth: &Tensor| row_sq(&(s * tr.sigma2.sqrt().unsqueeze(1) + &tr.z)) - row_sq(&(s - truth)) * &tr.sigma2;
        let stats = |truth: &Tensor| {
            let q = per_sample(&zero, truth) - per_sample(&gaussian, truth);
            let mean = f64::try_from(q.mean(Kind::Double)).unwrap();
            let se = f64::try_from(q.std(true)).unwrap() / (200_000f64).sqrt();
            (mean, se)
        };
        let (mean, se) = stats(&score);
        assert!(mean.abs() < 5.0 * se, "{mean} ± {se}");
        // The check has power: a wrong score (shrunk by 20%) breaks the identity by far.
        let (wrong, se_wrong) = stats(&(&score * 0.8));
        assert!(wrong.abs() > 10.0 * se_wrong, "{wrong} ± {se_wrong}");
        // With the same two models the pieces also agree with the formulas used in `run`.
        let c0 = dsm_loss(&zero, &tr) - score_error(&zero, &score, &tr.sigma2);
        let c1 = dsm_loss(&gaussian, &tr) - score_error(&gaussian, &score, &tr.sigma2);
        assert!((c0 - c1).abs() < 5.0 * se, "{c0} vs {c1}");
        // In the denoiser form the ε-prediction loss is ω‖f − x₀‖² sample by sample.
        let f = normals(&mut Rng::new(8), 200_000, 2);
        let (lhs, rhs) = (dsm_loss(&denoiser_score(&f, &tr), &tr), weighted_sq(&f, &tr.x0, &tr.omega()));
        assert!((lhs - rhs).abs() < 1e-9 * rhs, "{lhs} vs {rhs}");
    }

    #[test]
    fn symmetric_init_is_zero_and_its_ntk_is_block_diagonal() {
        let mut rng = Rng::new(3);
        for d in [2i64, 3] {
            let d_in = d + 2;
            let w_distinct = normals(&mut rng, 16, d_in);
            let net = TwoLayer::symmetric(&w_distinct, d);
            assert_eq!((net.width(), net.a.size()), (16 * group_size(d), vec![16 * group_size(d), d]));
            let u = normals(&mut rng, 7, d_in);
            assert!(max_abs(&net.forward(&u)) < 1e-12, "f ≢ 0 at init");
            // J Jᵀ by autograd, at init and after a perturbation that breaks the groups.
            for perturb in [0.0, 0.3] {
                let w = (&net.w + normals(&mut rng, net.width(), d_in) * perturb).set_requires_grad(true);
                let moved = TwoLayer { w: w.shallow_clone(), a: net.a.shallow_clone() };
                let f = moved.forward(&u);
                let fixed = TwoLayer { w: w.detach(), a: net.a.shallow_clone() };
                let rows: Vec<Tensor> = (0..7)
                    .flat_map(|i| (0..d).map(move |c| (i, c)))
                    .map(|(i, c)| Tensor::run_backward(&[&f.get(i).get(c)], &[&w], true, false).remove(0).view([-1]))
                    .collect();
                let jac = Tensor::stack(&rows, 0);
                let jjt = jac.mm(&jac.transpose(0, 1)).view([7, d, 7, d]);
                let mut cross: f64 = 0.0;
                for c in 0..d {
                    for c2 in 0..d {
                        let block = ntk_block(&fixed, &u, &u, c, c2);
                        let auto = jjt.select(1, c).select(2, c2);
                        assert!(max_abs(&(&block - &auto)) < 1e-10, "ntk block ({c}, {c2}) vs autograd");
                        if c != c2 {
                            cross = cross.max(max_abs(&block));
                        } else if perturb == 0.0 {
                            assert!(max_abs(&(&block - init_ntk(&w_distinct, &u, &u))) < 1e-12);
                        }
                    }
                }
                if perturb == 0.0 {
                    assert!(cross < 1e-12, "cross blocks at init: {cross}");
                } else {
                    assert!(cross > 1e-3, "a moved network has cross blocks: {cross}");
                }
            }
        }
    }

    #[test]
    fn hand_gradient_matches_autograd() {
        let mut rng = Rng::new(4);
        let net = TwoLayer::symmetric(&normals(&mut rng, 8, 4), 2);
        let net = TwoLayer { w: &net.w + normals(&mut rng, 32, 4) * 0.5, a: net.a };
        let (u, y) = (normals(&mut rng, 9, 4), normals(&mut rng, 9, 2));
        let omega = Tensor::from_slice(&(0..9).map(|i| 0.1 + i as f64).collect::<Vec<_>>());
        let (f, grad) = net.loss_grad(&u, &y, &omega);
        let w = net.w.detach().set_requires_grad(true);
        let g = TwoLayer { w: w.shallow_clone(), a: net.a.shallow_clone() };
        let fa = g.forward(&u);
        let loss = (row_sq(&(&fa - &y)) * &omega).sum(Kind::Double) / (2.0 * 9.0);
        let auto = Tensor::run_backward(&[&loss], &[&w], false, false).remove(0);
        assert!(max_abs(&(&f - fa.detach())) < 1e-12);
        assert!(max_abs(&(&grad - &auto)) < 1e-12 * (1.0 + max_abs(&auto)), "{}", max_abs(&(&grad - &auto)));
    }

    #[test]
    fn init_ntk_tends_to_the_arc_cosine_kernel() {
        let mut rng = Rng::new(5);
        let m = 1i64 << 17;
        let w = normals(&mut rng, m, 4);
        let u = normals(&mut rng, 6, 4);
        // Include a nearly opposite pair and a nearly parallel pair.
        let r0 = u.get(0).copy();
        u.get(1).copy_(&(&r0 * -1.0 + normals(&mut rng, 1, 4).squeeze_dim(0) * 0.01));
        u.get(2).copy_(&(&r0 * 2.0 + normals(&mut rng, 1, 4).squeeze_dim(0) * 0.01));
        let emp = init_ntk(&w, &u, &u);
        let lim = arccos_ntk(&u, &u);
        // Each entry is a mean of m indicators (variance ≤ 1/4) times u·u'.
        let dots = u.mm(&u.transpose(0, 1)).abs();
        let tol = &dots * (5.0 * 0.5 / (m as f64).sqrt()) + 1e-12;
        let excess = f64s(&((&emp - &lim).abs() - tol));
        assert!(excess.iter().all(|e| *e <= 0.0), "{:?} vs {:?}", f64s(&emp), f64s(&lim));
        // The diagonal is ‖u‖²/2 (θ = 0; acos near 1 loses half the digits), the nearly opposite pair ≈ 0.
        let diag = f64s(&lim.diagonal(0, 0, 1));
        let sq = f64s(&row_sq(&u));
        assert!(diag.iter().zip(&sq).all(|(k, s)| (k - s / 2.0).abs() < 1e-6 * s), "{diag:?} vs {sq:?}");
        let opposite = f64::try_from(lim.get(0).get(1)).unwrap();
        assert!(opposite.abs() < 0.05 * f64::try_from(dots.get(0).get(1)).unwrap(), "{opposite}");
    }

    #[test]
    fn kernel_gd_closed_form_equals_explicit_steps() {
        let mut rng = Rng::new(6);
        let n = 20;
        let omega = Tensor::from_slice(&(0..n).map(|_| 0.02 + 10.0 * rng.uniform()).collect::<Vec<_>>());
        let y = normals(&mut rng, n, 2);
        // A full-rank NTK and a rank-5 kernel (exact null modes exercise the clamped eigenvalues).
        let u = normals(&mut rng, n, 4);
        let full = init_ntk(&normals(&mut rng, 4096, 4), &u, &u);
        let low = {
            let b = normals(&mut rng, n, 5);
            b.mm(&b.transpose(0, 1))
        };
        for k_mat in [full, low] {
            let kgd = KernelGd::new(&k_mat, &omega, &y);
            for fraction in [0.5, 1.0, 1.9] {
                let eta = fraction * n as f64 / kgd.lambda_max;
                for steps in [0u64, 1, 3, 40, 300] {
                    let explicit = kernel_gd_explicit(&k_mat, &omega, &y, eta, steps);
                    let closed = kgd.coefficients(eta, steps);
                    let scale = 1.0 + max_abs(&explicit);
                    assert!(max_abs(&(&closed - &explicit)) < 1e-8 * scale, "η·λ/n = {fraction}, k = {steps}: {}", max_abs(&(&closed - &explicit)));
                    let (pu, eu) = (k_mat.mm(&closed), k_mat.mm(&explicit));
                    assert!(max_abs(&(&pu - &eu)) < 1e-8 * (1.0 + max_abs(&eu)));
                }
            }
            // Past the edge the recursion diverges: the stability bound is the one `run` uses.
            let eta = 2.1 * n as f64 / kgd.lambda_max;
            assert!(max_abs(&kernel_gd_explicit(&k_mat, &omega, &y, eta, 400)) > 1e6);
        }
    }

    /// ‖f_net − f_ker‖/‖f_ker‖ on 8 fresh inputs after `steps` GD steps at η·λ_max/n = 1 from the
    /// symmetric init (n = 16, float64); `mean_omega` runs kernel GD with ω replaced by its mean.
    fn network_and_kernel(width: i64, steps: u64, seed: u64, mean_omega: bool) -> f64 {
        let mix = Mixture::hypercube(2, 4, 2.0, 0.5);
        let mut rng = Rng::new(seed);
        let train = Triples::draw(&mix, 16, 0.05, 2.0, &mut rng, Device::Cpu);
        let test = Triples::draw(&mix, 8, 0.05, 2.0, &mut rng, Device::Cpu);
        let (u, u_test, omega) = (train.inputs(), test.inputs(), train.omega());
        let w_distinct = normals(&mut rng, width / 4, 4);
        let mut net = TwoLayer::symmetric(&w_distinct, 2);
        let kgd = KernelGd::new(&init_ntk(&w_distinct, &u, &u), &omega, &train.x0);
        let eta = 16.0 / kgd.lambda_max;
        for _ in 0..steps {
            let (_, grad) = net.loss_grad(&u, &train.x0, &omega);
            net.w = &net.w - grad * eta;
        }
        // The control replaces the per-sample weights by their mean: the unweighted recursion.
        let kernel = if mean_omega { KernelGd::new(&init_ntk(&w_distinct, &u, &u), &(omega.ones_like() * omega.mean(Kind::Double)), &train.x0) } else { kgd };
        let k_test = init_ntk(&w_distinct, &u_test, &u);
        rel_dist(&net.forward(&u_test), &k_test.mm(&kernel.coefficients(eta, steps)), None)
    }

    #[test]
    fn the_network_follows_weighted_kernel_gd_at_large_width() {
        for seed in [0u64, 1] {
            let wide = network_and_kernel(16_384, 10, seed, false);
            let narrow = network_and_kernel(1024, 10, seed, false);
            assert!(wide < 0.01, "m = 16384: {wide}");
            // The gap is the linearisation error, O(m^{−½}): 16× the width, about a quarter of it.
            assert!(wide < 0.5 * narrow, "{wide} vs {narrow}");
            let control = network_and_kernel(16_384, 10, seed, true);
            assert!(control > 0.1, "without the ε-weights kernel GD is another trajectory: {control}");
        }
    }

    #[test]
    fn a_small_run_reports_consistent_metrics() {
        let dir = std::env::temp_dir().join(format!("reglab-score-estimation-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ctx = RunCtx::new(&dir, "t", 1, Device::Cpu, ProgressMode::Quiet, &dir).unwrap();
        let cfg = Config { samples: 32, width: 4096, steps: 30, lr_fraction: 1.0, test_size: 300, heldout: 200, log_points: 10, ..Config::default() };
        ScoreEstimation::check(&cfg).unwrap();
        ScoreEstimation::run(&cfg, &mut ctx).unwrap();
        let f = ctx.final_metrics();
        ctx.finish().unwrap();
        let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // At f ≡ 0 the score is −x/σ², so the initial error is E[ω ‖E[x₀|x_t]‖²]: recomputed here in
        // plain Rust from the posterior mean of each component, μ_j + (α s²/v)(x − α μ_j), v = α²s² + σ²,
        // on the run's test points (the same draw: seed 1, the test salt), not through `Mixture::score`.
        assert_eq!(cfg.dim, 2, "the plain-Rust closed form below is written for d = 2");
        let mix = Mixture::hypercube(cfg.dim, cfg.components, cfg.mean_scale, cfg.component_std);
        let test = Triples::draw(&mix, cfg.test_size, cfg.t_min, cfg.t_max, &mut Rng::new(1 ^ 0x5C0E_0002), Device::Cpu);
        let (xt, alpha, sigma2) = (f64s(&test.xt), f64s(&test.alpha), f64s(&test.sigma2));
        let s2 = mix.std * mix.std;
        let mut expected = 0.0;
        for i in 0..cfg.test_size as usize {
            let (a, sg2) = (alpha[i], sigma2[i]);
            let v = a * a * s2 + sg2;
            let x = &xt[2 * i..2 * i + 2];
            let logits: Vec<f64> = mix.means.chunks(2).map(|mu| -((x[0] - a * mu[0]).powi(2) + (x[1] - a * mu[1]).powi(2)) / (2.0 * v)).collect();
            let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = logits.iter().map(|l| (l - top).exp()).collect();
            let total: f64 = w.iter().sum();
            let mut post = [0.0f64; 2];
            for (wj, mu) in w.iter().zip(mix.means.chunks(2)) {
                for c in 0..2 {
                    post[c] += wj / total * (mu[c] + a * s2 / v * (x[c] - a * mu[c]));
                }
            }
            expected += a * a / sg2 * (post[0] * post[0] + post[1] * post[1]) / cfg.test_size as f64;
        }
        // The float32 network is 0 only up to round-off (|f| ≈ 1e−7 here), hence the tolerance.
        let initial = f["initial_test_score_error"];
        assert!((initial - expected).abs() < 1e-4 * expected, "initial error {initial} vs closed form {expected}");
        assert!(f["best_test_score_error"] < initial, "training must lower the error: {} vs {initial}", f["best_test_score_error"]);
        // Kernel GD starts at c₀ = 0, so its step-0 train loss is the weighted loss of f = 0,
        // (1/n) Σ ω_i ‖x₀ⁱ‖², on the run's training triples.
        let train = Triples::draw(&mix, cfg.samples, cfg.t_min, cfg.t_max, &mut Rng::new(1 ^ 0x5C0E_0001), Device::Cpu);
        let (x0, alpha, sigma2) = (f64s(&train.x0), f64s(&train.alpha), f64s(&train.sigma2));
        let zero_loss = (0..cfg.samples as usize).map(|i| alpha[i] * alpha[i] / sigma2[i] * (x0[2 * i].powi(2) + x0[2 * i + 1].powi(2))).sum::<f64>() / cfg.samples as f64;
        let kernel_at_0: f64 = csv.lines().find_map(|l| l.strip_prefix("0,kernel_train_loss,")).expect("kernel_train_loss at step 0").parse().unwrap();
        assert!((kernel_at_0 - zero_loss).abs() < 1e-12 * zero_loss, "{kernel_at_0} vs {zero_loss}");
        // The network starts on its kernel twin, and 30 small steps at m = 4096 stay close to it.
        assert!(f["net_vs_kernel_rel_dist_max"] < 0.05, "{}", f["net_vs_kernel_rel_dist_max"]);
        assert!(f["ntk_vs_arccos_rel_dist"] < 0.1, "{}", f["ntk_vs_arccos_rel_dist"]);
        // 11 logged points (every 3 steps, 0..=30), 5 metrics at step 0 and 7 after.
        assert_eq!(csv.lines().count(), 1 + 5 + 10 * 7);
        // A width that is not a multiple of the sign group is refused, naming the key.
        let err = ScoreEstimation::check(&Config { width: 1030, ..Config::default() }).unwrap_err().to_string();
        assert!(err.contains("width"), "{err}");
    }
}
