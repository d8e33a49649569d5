//! ResNets for 32×32 images, as the CIFAR papers use them (Kuang Liu's widely copied layout):
//! a 3×3 stride-1 stem with 64 channels and no max-pool, four stages of 64/128/256/512 channels
//! (stride 2 from the second), global average pooling and a linear head.
//!
//! - `resnet(.., [2, 2, 2, 2])` / `[3, 4, 6, 3]`: ResNet-18 / -34 with post-activation basic
//!   blocks (conv-BN-ReLU-conv-BN, + shortcut, ReLU); the shortcut is a 1×1 conv + BN where the
//!   shape changes.
//! - `preact_resnet18`: the PreAct ResNet-18 of PS-KD's `models/preact_resnet.py`: a stem
//!   conv-BN-ReLU, blocks BN-ReLU-conv-BN-ReLU-conv whose shortcut (identity, or a 1×1 conv
//!   without BN) takes the already pre-activated input, no ReLU after the add and no final BN
//!   before pooling. (Kuang Liu's version has no stem BN and a raw-input identity shortcut.)
//!
//! Both official codes leave every layer at PyTorch's defaults, so convolutions and the head use
//! `super::init` (U(±1/√fan_in)), BatchNorm weight 1 and bias 0.

use tch::nn::{self, ModuleT};
use tch::Tensor;

fn conv(vs: nn::Path, cin: i64, cout: i64, k: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig { stride, padding: k / 2, bias: false, ..Default::default() };
    super::init::conv2d(vs, cin, cout, k, cfg)
}

#[derive(Debug)]
struct Basic {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    shortcut: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl Basic {
    fn new(vs: &nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        let shortcut = (stride != 1 || cin != cout).then(|| (conv(vs / "sc_conv", cin, cout, 1, stride), nn::batch_norm2d(vs / "sc_bn", cout, Default::default())));
        Basic {
            conv1: conv(vs / "conv1", cin, cout, 3, stride),
            bn1: nn::batch_norm2d(vs / "bn1", cout, Default::default()),
            conv2: conv(vs / "conv2", cout, cout, 3, 1),
            bn2: nn::batch_norm2d(vs / "bn2", cout, Default::default()),
            shortcut,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = x.apply(&self.conv1).apply_t(&self.bn1, train).relu().apply(&self.conv2).apply_t(&self.bn2, train);
        let s = match &self.shortcut {
            Some((c, b)) => x.apply(c).apply_t(b, train),
            None => x.shallow_clone(),
        };
        (h + s).relu()
    }
}

#[derive(Debug)]
struct PreAct {
    bn1: nn::BatchNorm,
    conv1: nn::Conv2D,
    bn2: nn::BatchNorm,
    conv2: nn::Conv2D,
    shortcut: Option<nn::Conv2D>,
}

impl PreAct {
    fn new(vs: &nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        PreAct {
            bn1: nn::batch_norm2d(vs / "bn1", cin, Default::default()),
            conv1: conv(vs / "conv1", cin, cout, 3, stride),
            bn2: nn::batch_norm2d(vs / "bn2", cout, Default::default()),
            conv2: conv(vs / "conv2", cout, cout, 3, 1),
            shortcut: (stride != 1 || cin != cout).then(|| conv(vs / "sc_conv", cin, cout, 1, stride)),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let a = x.apply_t(&self.bn1, train).relu();
        let s = match &self.shortcut {
            Some(c) => a.apply(c),
            None => a.shallow_clone(),
        };
        a.apply(&self.conv1).apply_t(&self.bn2, train).relu().apply(&self.conv2) + s
    }
}

#[derive(Debug)]
enum Block {
    Basic(Basic),
    PreAct(PreAct),
}

#[derive(Debug)]
pub struct ResNet {
    stem: nn::Conv2D,
    /// The stem's BN of the post-activation variant.
    stem_bn: Option<nn::BatchNorm>,
    blocks: Vec<Block>,
    head: nn::Linear,
}

fn stages(vs: &nn::Path, depths: [usize; 4], preact: bool) -> Vec<Block> {
    let mut blocks = vec![];
    let mut cin = 64;
    for (s, (&depth, cout)) in depths.iter().zip([64, 128, 256, 512]).enumerate() {
        for b in 0..depth {
            let stride = if s > 0 && b == 0 { 2 } else { 1 };
            let path = vs / format!("layer{}_{b}", s + 1);
            blocks.push(if preact { Block::PreAct(PreAct::new(&path, cin, cout, stride)) } else { Block::Basic(Basic::new(&path, cin, cout, stride)) });
            cin = cout;
        }
    }
    blocks
}

/// A post-activation CIFAR ResNet with `depths` blocks per stage ([2,2,2,2] = 18, [3,4,6,3] = 34).
pub fn resnet(vs: &nn::Path, in_channels: i64, classes: i64, depths: [usize; 4]) -> ResNet {
    ResNet {
        stem: conv(vs / "stem", in_channels, 64, 3, 1),
        stem_bn: Some(nn::batch_norm2d(vs / "stem_bn", 64, Default::default())),
        blocks: stages(vs, depths, false),
        head: super::init::linear(vs / "head", 512, classes, true),
    }
}

/// Pre-activation ResNet-18 (He et al. 2016b) for 32×32 inputs, as PS-KD builds it.
pub fn preact_resnet18(vs: &nn::Path, in_channels: i64, classes: i64) -> ResNet {
    ResNet {
        stem: conv(vs / "stem", in_channels, 64, 3, 1),
        stem_bn: Some(nn::batch_norm2d(vs / "stem_bn", 64, Default::default())),
        blocks: stages(vs, [2, 2, 2, 2], true),
        head: super::init::linear(vs / "head", 512, classes, true),
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.apply(&self.stem);
        if let Some(bn) = &self.stem_bn {
            h = h.apply_t(bn, train).relu();
        }
        for b in &self.blocks {
            h = match b {
                Block::Basic(b) => b.forward(&h, train),
                Block::PreAct(b) => b.forward(&h, train),
            };
        }
        h.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn params(vs: &nn::VarStore) -> i64 {
        vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
    }

    #[test]
    fn shapes_and_parameter_counts_match_the_reference_architectures() {
        // Reference counts (conv weights, BN affine, head with bias): the CIFAR-10 ResNet-18
        // 11,173,962 and ResNet-34 21,282,122; PreAct ResNet-18 11,171,146 (Kuang Liu's) + 128
        // for PS-KD's stem BN, + 90 × 513 for 100 classes.
        let vs = nn::VarStore::new(Device::Cpu);
        let r18 = resnet(&vs.root(), 3, 10, [2, 2, 2, 2]);
        assert_eq!(params(&vs), 11_173_962);
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        assert_eq!(r18.forward_t(&x, false).size(), vec![2, 10]);
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = resnet(&vs.root(), 3, 10, [3, 4, 6, 3]);
        assert_eq!(params(&vs), 21_282_122);
        let vs = nn::VarStore::new(Device::Cpu);
        let pre = preact_resnet18(&vs.root(), 3, 100);
        assert_eq!(params(&vs), 11_171_146 + 128 + 90 * 513);
        assert_eq!(pre.forward_t(&x, true).size(), vec![2, 100]);
    }
}
