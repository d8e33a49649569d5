//! A one-hidden-layer classifier whose ReLU hidden layer doubles as a feature space, and its
//! training: the feedback, reward and evaluation classifiers of the generative papers, which grade
//! generated samples by class and by the Fréchet distance in those features.

use anyhow::Result;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Kind, Tensor};

use crate::context::Rng;
use crate::models::init;

/// input → hidden (ReLU) → classes, PyTorch's default initialisation.
#[derive(Debug)]
pub struct FeatureClassifier {
    hidden: nn::Linear,
    out: nn::Linear,
}

impl FeatureClassifier {
    pub fn new(vs: &nn::Path, input: i64, hidden: i64, classes: i64) -> Self {
        FeatureClassifier { hidden: init::linear(vs / "hidden", input, hidden, true), out: init::linear(vs / "out", hidden, classes, true) }
    }

    /// The hidden layer's activations.
    pub fn features(&self, x: &Tensor) -> Tensor {
        x.apply(&self.hidden).relu()
    }

    /// The fraction of rows whose arg-max class is `y`.
    pub fn accuracy(&self, x: &Tensor, y: &Tensor) -> Result<f64> {
        Ok(tch::no_grad(|| f64::try_from(self.forward(x).argmax(1, false).eq_tensor(y).to_kind(Kind::Double).mean(Kind::Double)))?)
    }
}

impl Module for FeatureClassifier {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.features(x).apply(&self.out)
    }
}

/// Trains a [`FeatureClassifier`] on (x, y): Adam (PyTorch's defaults) at `lr`, `epochs` passes in
/// minibatches of 64 shuffled by `rng`. Returns the classifier with its VarStore.
pub fn train(x: &Tensor, y: &Tensor, classes: i64, hidden: i64, epochs: u64, lr: f64, rng: &mut Rng) -> Result<(nn::VarStore, FeatureClassifier)> {
    let vs = nn::VarStore::new(x.device());
    let c = FeatureClassifier::new(&vs.root(), x.size()[1], hidden, classes);
    let mut opt = nn::Adam::default().build(&vs, lr)?;
    let mut order: Vec<i64> = (0..x.size()[0]).collect();
    for _ in 0..epochs {
        rng.shuffle(&mut order);
        for b in order.chunks(64) {
            let idx = Tensor::from_slice(b).to_device(x.device());
            opt.backward_step(&c.forward(&x.index_select(0, &idx)).cross_entropy_for_logits(&y.index_select(0, &idx)));
        }
    }
    Ok((vs, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_learns_a_separable_problem_and_its_features_are_the_hidden_relu() {
        // Two classes split by the sign of the first coordinate.
        let x = Tensor::from_slice(&[1.0f32, 0.2, 2.0, -0.5, 0.5, 1.0, -1.0, 0.3, -2.0, -1.0, -0.4, 0.8]).view([6, 2]);
        let y = Tensor::from_slice(&[1i64, 1, 1, 0, 0, 0]);
        tch::manual_seed(0);
        let (_vs, c) = train(&x, &y, 2, 8, 300, 1e-2, &mut Rng::new(1)).unwrap();
        assert_eq!(c.accuracy(&x, &y).unwrap(), 1.0);
        let f = c.features(&x);
        assert_eq!(f.size(), vec![6, 8]);
        assert!(f.min().double_value(&[]) >= 0.0);
        // The logits are the output layer applied to the features.
        let logits = c.forward(&x);
        assert!((logits - f.apply(&c.out)).abs().max().double_value(&[]) < 1e-6);
    }
}
