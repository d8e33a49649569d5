//! A normalizing flow on the box (−1, 1)^d: affine coupling layers (RealNVP) on a standard normal
//! base, then x = tanh(y) coordinate-wise, with exact log-densities both ways — a sampler whose
//! samples are differentiable in its parameters (reparameterised) and whose density can be
//! evaluated at any point of the box (adaptive sampling of collocation points).
//!
//! Each coupling keeps one half of the coordinates (alternating) and moves the other by
//! u·exp(s) + t, with s = tanh(ŝ) bounded to (−1, 1) per layer for stable training; the networks
//! s, t are MLPs (tanh) with PyTorch-default init, the last layer zeroed so the flow starts as
//! the tanh-squashed Gaussian.

use tch::{nn, nn::Module, Kind, Tensor};

use crate::models::init;

struct Coupling {
    /// Coordinates kept (conditioning) and moved, as index tensors.
    keep: Vec<i64>,
    moved: Vec<i64>,
    net: nn::Sequential,
}

pub struct BoxFlow {
    pub dim: i64,
    layers: Vec<Coupling>,
}

impl BoxFlow {
    pub fn new(p: &nn::Path, dim: i64, layers: usize, hidden: i64) -> Self {
        assert!(dim >= 2, "a coupling flow needs at least 2 dimensions");
        let half = dim / 2;
        let layers = (0..layers)
            .map(|l| {
                let (a, b): (Vec<i64>, Vec<i64>) = ((0..half).collect(), (half..dim).collect());
                let (keep, moved) = if l % 2 == 0 { (a, b) } else { (b, a) };
                let q = p / format!("coupling{l}");
                let out = init::linear(&q / "out", hidden, 2 * moved.len() as i64, true);
                tch::no_grad(|| {
                    let _ = out.ws.shallow_clone().zero_();
                    if let Some(b) = &out.bs {
                        let _ = b.shallow_clone().zero_();
                    }
                });
                let net = nn::seq()
                    .add(init::linear(&q / "in", keep.len() as i64, hidden, true))
                    .add_fn(|x| x.tanh())
                    .add(init::linear(&q / "mid", hidden, hidden, true))
                    .add_fn(|x| x.tanh())
                    .add(out);
                Coupling { keep, moved, net }
            })
            .collect();
        BoxFlow { dim, layers }
    }

    fn shift_scale(c: &Coupling, keep: &Tensor) -> (Tensor, Tensor) {
        let st = c.net.forward(keep);
        let m = c.moved.len() as i64;
        (st.narrow(1, 0, m).tanh(), st.narrow(1, m, m))
    }

    /// Base draws z [n, d] → (x in the box, log p(x)); differentiable in the flow's parameters.
    pub fn push_forward(&self, z: &Tensor) -> (Tensor, Tensor) {
        let log_base = standard_normal_log_density(z);
        let mut y = z.shallow_clone();
        let mut log_det = Tensor::zeros([z.size()[0]], (z.kind(), z.device()));
        for c in &self.layers {
            let (ki, mi) = (Tensor::from_slice(&c.keep).to_device(z.device()), Tensor::from_slice(&c.moved).to_device(z.device()));
            let keep = y.index_select(1, &ki);
            let (s, t) = Self::shift_scale(c, &keep);
            let moved = y.index_select(1, &mi) * s.exp() + t;
            log_det = log_det + s.sum_dim_intlist([1i64].as_slice(), false, z.kind());
            y = y.index_copy(1, &mi, &moved);
        }
        let x = y.tanh();
        // d tanh(y)/dy = 1 − tanh², written through y for accuracy near the box's faces.
        let log_squash = ((y.abs() + (y.abs() * -2.0).exp().log1p()) * -2.0 + std::f64::consts::LN_2 * 2.0).sum_dim_intlist([1i64].as_slice(), false, y.kind());
        (x, log_base - log_det - log_squash)
    }

    /// n reparameterised samples and their log-densities.
    pub fn sample(&self, n: i64, kind: Kind, device: tch::Device) -> (Tensor, Tensor) {
        self.push_forward(&Tensor::randn([n, self.dim], (kind, device)))
    }

    /// log p(x) for points strictly inside the box (clamped to 1 − 1e−7 from its faces).
    pub fn log_prob(&self, x: &Tensor) -> Tensor {
        let bound = 1.0 - 1e-7;
        let xc = x.clamp(-bound, bound);
        let mut y = xc.atanh();
        let log_squash = (-(xc.square()) + 1.0).log().sum_dim_intlist([1i64].as_slice(), false, x.kind());
        let mut log_det = Tensor::zeros([x.size()[0]], (x.kind(), x.device()));
        for c in self.layers.iter().rev() {
            let (ki, mi) = (Tensor::from_slice(&c.keep).to_device(x.device()), Tensor::from_slice(&c.moved).to_device(x.device()));
            let keep = y.index_select(1, &ki);
            let (s, t) = Self::shift_scale(c, &keep);
            let moved = (y.index_select(1, &mi) - t) * (-&s).exp();
            log_det = log_det + s.sum_dim_intlist([1i64].as_slice(), false, x.kind());
            y = y.index_copy(1, &mi, &moved);
        }
        standard_normal_log_density(&y) - log_det - log_squash
    }
}

fn standard_normal_log_density(z: &Tensor) -> Tensor {
    let d = z.size()[1] as f64;
    z.square().sum_dim_intlist([1i64].as_slice(), false, z.kind()) * -0.5 - 0.5 * d * (2.0 * std::f64::consts::PI).ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// A flow with fixed non-zero last layers (`testutil::fill_with_pattern`), so the couplings
    /// actually move points.
    fn random_flow(vs: &nn::VarStore) -> BoxFlow {
        let f = BoxFlow::new(&vs.root(), 2, 4, 16);
        crate::testutil::fill_with_pattern(vs, "out", 0.3);
        f
    }

    #[test]
    fn density_integrates_to_one_and_samples_stay_in_the_box() {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let f = random_flow(&vs);
        vs.double();
        // ∫ p over the inner box [−0.9, 0.9]² (midpoint rule) against the share of samples that
        // land there: a density off by a constant or a wrong log-det fails either side. (The whole
        // box is not used: tanh piles mass against the faces faster than a grid resolves.)
        let (m, edge) = (360, 0.9);
        let h = 2.0 * edge / m as f64;
        let g = Tensor::linspace(-edge + h / 2.0, edge - h / 2.0, m, (Kind::Double, Device::Cpu));
        let grid = Tensor::stack(&[g.repeat([m]), g.repeat_interleave_self_int(m, None, None)], 1);
        let mass = f.log_prob(&grid).exp().sum(Kind::Double).double_value(&[]) * h * h;
        let (x, _) = f.sample(200_000, Kind::Double, Device::Cpu);
        assert!(x.abs().max().double_value(&[]) < 1.0);
        let inside = x.abs().max_dim(1, false).0.le(edge).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        assert!(inside > 0.5 && inside < 0.99, "the test wants mass on both sides of the inner box ({inside})");
        assert!((mass - inside).abs() < 0.01, "∫p over the inner box {mass} vs sampled share {inside}");
    }

    #[test]
    fn sample_log_density_matches_log_prob_and_the_jacobian_by_finite_differences() {
        tch::manual_seed(1);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let f = random_flow(&vs);
        vs.double();
        let z = Tensor::randn([6, 2], (Kind::Double, Device::Cpu)) * 0.8;
        let (x, logp) = f.push_forward(&z);
        let back = f.log_prob(&x);
        assert!((&logp - &back).abs().max().double_value(&[]) < 1e-8, "{logp} vs {back}");
        // log p(x) = log N(z) − log|det ∂x/∂z|, the Jacobian by central differences.
        let h = 1e-6;
        for i in 0..6 {
            let zi = z.get(i).unsqueeze(0);
            let col = |d: usize| {
                let e = Tensor::from_slice(&if d == 0 { [h, 0.0] } else { [0.0, h] }).unsqueeze(0);
                (f.push_forward(&(&zi + &e)).0 - f.push_forward(&(&zi - &e)).0) / (2.0 * h)
            };
            let (c0, c1) = (col(0), col(1));
            let det = c0.double_value(&[0, 0]) * c1.double_value(&[0, 1]) - c0.double_value(&[0, 1]) * c1.double_value(&[0, 0]);
            let log_n = -0.5 * zi.square().sum(Kind::Double).double_value(&[]) - (2.0 * std::f64::consts::PI).ln();
            let want = log_n - det.abs().ln();
            assert!((logp.double_value(&[i]) - want).abs() < 1e-5, "sample {i}: {} vs {want}", logp.double_value(&[i]));
        }
    }

    #[test]
    fn a_fresh_flow_is_the_squashed_gaussian() {
        tch::manual_seed(2);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let f = BoxFlow::new(&vs.root(), 2, 6, 32);
        vs.double();
        let z = Tensor::randn([10, 2], (Kind::Double, Device::Cpu));
        let (x, _) = f.push_forward(&z);
        assert!((x - z.tanh()).abs().max().double_value(&[]) < 1e-14);
    }
}
