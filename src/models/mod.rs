//! Models shared by the papers, as plain structs built from an `nn::Path`, and the `model:`
//! block papers put in their Config to choose one.

pub mod diffusion;
pub mod feature_classifier;
pub mod flops;
pub mod flow;
pub mod functional;
pub mod icnn;
pub mod init;
pub mod mf;
pub mod mlp;
pub mod quant;
pub mod resnet;
pub mod state;
pub mod trees;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

pub use mlp::Mlp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// ReLU MLP on flattened inputs, widths `hidden`.
    Mlp,
    /// CIFAR ResNet-18 / -34 (3×3 stem, no max-pool).
    Resnet18,
    Resnet34,
    /// Pre-activation ResNet-18.
    PreactResnet18,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub kind: ModelKind,
    /// Hidden widths of the MLP.
    pub hidden: Vec<i64>,
    /// Biases in the MLP's layers.
    pub bias: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { kind: ModelKind::Mlp, hidden: vec![256, 256], bias: true }
    }
}

/// An MLP that flattens image inputs first.
#[derive(Debug)]
struct FlatMlp(Mlp);

impl Module for FlatMlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.0.forward(&x.flatten(1, -1))
    }
}

impl ModelConfig {
    /// Builds the model for samples of `sample_shape` and `classes` outputs.
    pub fn build(&self, vs: &nn::Path, sample_shape: &[i64], classes: i64) -> Result<Box<dyn ModuleT>> {
        Ok(match self.kind {
            ModelKind::Mlp => {
                let mut widths = vec![sample_shape.iter().product()];
                widths.extend(&self.hidden);
                widths.push(classes);
                Box::new(FlatMlp(Mlp::new(vs, &widths, self.bias)))
            }
            kind => {
                if sample_shape.len() != 3 {
                    bail!("`model.kind: {kind:?}` needs images [C, H, W]; this data gives samples of shape {sample_shape:?} (set `data.flatten: false`)");
                }
                let c = sample_shape[0];
                Box::new(match kind {
                    ModelKind::Resnet18 => resnet::resnet(vs, c, classes, [2, 2, 2, 2]),
                    ModelKind::Resnet34 => resnet::resnet(vs, c, classes, [3, 4, 6, 3]),
                    _ => resnet::preact_resnet18(vs, c, classes),
                })
            }
        })
    }
}
