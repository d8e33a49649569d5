//! Input-convex networks ψ(y) and their gradients f = ∇ψ (learned proximal networks).
//!
//! z₁ = σ(W₀y), z_{l+1} = σ(W_l z_l + A_l y + b_l), ψ = w_Lᵀz_L + a_Lᵀy + b_L, with σ the softplus
//! of sharpness β, (1/β)·log(1 + e^{βx}) (convex, non-decreasing). ψ is convex in y as long as every
//! W_l (l ≥ 1) and w_L are non-negative — `clamp_weights` restores that after each optimiser step.
//! As the official 1-D `LPN` (ZhenghanFang/learned-proximal-networks, `exps/laplacian/network.py`):
//! the W's have no bias, the A's do, and all layers start from PyTorch's `nn.Linear` default.

use tch::{nn, nn::Module, Tensor};

use super::init;

pub struct Icnn {
    first: nn::Linear,
    /// The constrained (≥ 0) layers: hidden → hidden, then hidden → 1.
    constrained: Vec<nn::Linear>,
    /// The unconstrained skip layers from the input: in → hidden per hidden layer, then in → 1.
    skips: Vec<nn::Linear>,
    beta: f64,
}

impl Icnn {
    /// `layers` hidden-to-hidden layers of width `hidden` (the official `layers` argument).
    pub fn new(vs: &nn::Path, in_dim: i64, hidden: i64, layers: usize, beta: f64) -> Self {
        let first = init::linear(vs / "lin0", in_dim, hidden, false);
        let mut constrained: Vec<nn::Linear> = (0..layers).map(|l| init::linear(vs / format!("lin{}", l + 1), hidden, hidden, false)).collect();
        constrained.push(init::linear(vs / format!("lin{}", layers + 1), hidden, 1, false));
        let mut skips: Vec<nn::Linear> = (0..layers).map(|l| init::linear(vs / format!("res{l}"), in_dim, hidden, true)).collect();
        skips.push(init::linear(vs / format!("res{layers}"), in_dim, 1, true));
        Icnn { first, constrained, skips, beta }
    }

    fn act(&self, x: &Tensor) -> Tensor {
        (x * self.beta).softplus() / self.beta
    }

    /// ψ(y), one value per row of `y` ([N, in] → [N, 1]).
    pub fn scalar(&self, y: &Tensor) -> Tensor {
        let mut z = self.act(&self.first.forward(y));
        let last = self.constrained.len() - 1;
        for (core, skip) in self.constrained[..last].iter().zip(&self.skips[..last]) {
            z = self.act(&(core.forward(&z) + skip.forward(y)));
        }
        self.constrained[last].forward(&z) + self.skips[last].forward(y)
    }

    /// f(y) = ∇ψ(y) by autograd; `create_graph` keeps it differentiable for training.
    pub fn gradient(&self, y: &Tensor, create_graph: bool) -> Tensor {
        let y = y.detach().set_requires_grad(true);
        let psi = self.scalar(&y).sum(tch::Kind::Float);
        Tensor::run_backward(&[&psi], &[&y], true, create_graph).remove(0)
    }

    /// Sets every constrained weight to max(w, 0), which keeps ψ convex.
    pub fn clamp_weights(&self) {
        tch::no_grad(|| {
            for layer in &self.constrained {
                let _ = layer.ws.shallow_clone().clamp_min_(0.0);
            }
        });
    }

    /// The smallest constrained weight (≥ 0 after `clamp_weights`).
    pub fn min_constrained_weight(&self) -> f64 {
        self.constrained.iter().map(|l| l.ws.min().double_value(&[])).fold(f64::INFINITY, f64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn net(seed: i64, in_dim: i64) -> (nn::VarStore, Icnn) {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let icnn = Icnn::new(&vs.root(), in_dim, 16, 3, 10.0);
        icnn.clamp_weights();
        (vs, icnn)
    }

    #[test]
    fn psi_is_convex_along_random_lines_once_clamped() {
        let (_vs, icnn) = net(0, 3);
        assert!(icnn.min_constrained_weight() >= 0.0);
        for _ in 0..20 {
            let a = Tensor::randn([1, 3], (Kind::Float, Device::Cpu));
            let d = Tensor::randn([1, 3], (Kind::Float, Device::Cpu));
            let ts = Tensor::linspace(-2.0, 2.0, 41, (Kind::Float, Device::Cpu)).unsqueeze(1);
            let pts = &a + &ts * &d;
            let psi: Vec<f64> = Vec::<f32>::try_from(icnn.scalar(&pts).squeeze()).unwrap().into_iter().map(f64::from).collect();
            for w in psi.windows(3) {
                assert!(w[0] + w[2] - 2.0 * w[1] >= -1e-4, "second difference {}", w[0] + w[2] - 2.0 * w[1]);
            }
        }
    }

    #[test]
    fn without_the_clamp_psi_need_not_be_convex() {
        // The test above can fail: negative constrained weights make ψ non-convex somewhere.
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let icnn = Icnn::new(&vs.root(), 1, 16, 3, 10.0);
        // A negative output layer turns the convex last hidden layer into a concave ψ.
        tch::no_grad(|| {
            let _ = icnn.constrained.last().unwrap().ws.shallow_clone().fill_(-1.0);
        });
        let ts = Tensor::linspace(-3.0, 3.0, 121, (Kind::Float, Device::Cpu)).unsqueeze(1);
        let psi: Vec<f32> = Vec::<f32>::try_from(icnn.scalar(&ts).squeeze()).unwrap();
        assert!(psi.windows(3).any(|w| w[0] + w[2] - 2.0 * w[1] < -1e-5));
    }

    #[test]
    fn the_gradient_is_psi_s_derivative_and_non_decreasing_in_one_dimension() {
        let (_vs, icnn) = net(2, 1);
        let y = Tensor::linspace(-3.0, 3.0, 61, (Kind::Double, Device::Cpu)).unsqueeze(1).to_kind(Kind::Float);
        let f: Vec<f32> = Vec::<f32>::try_from(icnn.gradient(&y, false).squeeze()).unwrap();
        let h = 1e-2;
        let up: Vec<f32> = Vec::<f32>::try_from(icnn.scalar(&(&y + h)).squeeze()).unwrap();
        let down: Vec<f32> = Vec::<f32>::try_from(icnn.scalar(&(&y - h)).squeeze()).unwrap();
        for i in 0..61 {
            let fd = (up[i] - down[i]) as f64 / (2.0 * h);
            assert!((fd - f[i] as f64).abs() < 2e-2 * (1.0 + fd.abs()), "{i}: {fd} vs {}", f[i]);
        }
        assert!(f.windows(2).all(|w| w[1] >= w[0] - 1e-5), "f = ψ' is non-decreasing");
    }
}
