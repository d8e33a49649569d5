//! A ReLU multilayer perceptron with optional biases.
//!
//! Without biases a ReLU MLP is positively homogeneous: f(cθ) = c^L f(θ) for L layers, which is
//! what makes "naïve loss minimisation" (scaling θ up) possible in the grokking papers.

use tch::nn::{self, Module};
use tch::Tensor;

#[derive(Debug)]
pub struct Mlp {
    layers: Vec<nn::Linear>,
}

impl Mlp {
    /// `widths` = [input, hidden..., output], each layer an `nn.Linear` with PyTorch's default init,
    /// U(±1/√fan_in) for weights and biases (`super::init`), as the official codes that build their
    /// MLPs from `nn.Linear` start.
    pub fn new(vs: &nn::Path, widths: &[i64], bias: bool) -> Self {
        assert!(widths.len() >= 2, "an MLP needs at least input and output widths");
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| super::init::linear(vs / format!("layer{i}"), w[0], w[1], bias))
            .collect();
        Mlp { layers }
    }

    pub fn depth(&self) -> usize {
        self.layers.len()
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        let last = self.layers.len() - 1;
        let mut h = x.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h);
            if i < last {
                h = h.relu();
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn bias_free_mlp_is_homogeneous_of_degree_depth() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let mlp = Mlp::new(&vs.root(), &[6, 8, 8, 4], false);
        let x = Tensor::randn([5, 6], (Kind::Float, Device::Cpu));
        let y = mlp.forward(&x);
        let c = 1.7f64;
        tch::no_grad(|| {
            for (_, mut p) in vs.variables() {
                let _ = p.f_mul_(&Tensor::from(c)).unwrap();
            }
        });
        let yc = mlp.forward(&x);
        let expected = &y * c.powi(3);
        let err = f64::try_from((yc - &expected).abs().max()).unwrap();
        let scale = f64::try_from(expected.abs().max()).unwrap();
        assert!(err <= 1e-5 * scale, "err {err} scale {scale}");
        assert_eq!(mlp.depth(), 3);
    }
}
