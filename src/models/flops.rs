//! Multiply-accumulate (MAC) counts of convolution and linear layers, dense and with channels
//! switched off — what a pruning or quantisation paper reports as "FLOPs" (one MAC per weight use,
//! as `thop` and the pruning literature count them; BatchNorm, ReLU and pooling cost 0).
//!
//! A convolution producing `cout` maps of `out_h × out_w` from `cin` inputs in `groups` groups
//! with a `kh × kw` kernel costs cout·out_h·out_w·(cin/groups)·kh·kw MACs (padding positions
//! included: that is how the profilers count them). With channels masked per sample, the same
//! formula runs on the active counts — an output channel that is off is not computed, an input
//! channel that is off contributes no products — so a masked layer's count is exactly that of the
//! smaller dense layer that keeps only the active channels (the test builds one).

use tch::{Kind, Tensor};

/// One layer's shape, as the MAC count needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Conv { cin: i64, cout: i64, kh: i64, kw: i64, groups: i64, out_h: i64, out_w: i64 },
    Linear { cin: i64, cout: i64 },
}

impl Layer {
    /// A square-kernel convolution with `groups` groups and an `out_h × out_w` output.
    pub fn conv(cin: i64, cout: i64, k: i64, groups: i64, out_hw: (i64, i64)) -> Self {
        assert!(groups >= 1 && cin % groups == 0, "conv: {cin} input channels do not split into {groups} groups");
        Layer::Conv { cin, cout, kh: k, kw: k, groups, out_h: out_hw.0, out_w: out_hw.1 }
    }

    pub fn linear(cin: i64, cout: i64) -> Self {
        Layer::Linear { cin, cout }
    }

    pub fn in_channels(&self) -> i64 {
        match *self {
            Layer::Conv { cin, .. } | Layer::Linear { cin, .. } => cin,
        }
    }

    pub fn out_channels(&self) -> i64 {
        match *self {
            Layer::Conv { cout, .. } | Layer::Linear { cout, .. } => cout,
        }
    }

    /// MACs per output channel per active input channel: out_h·out_w·kh·kw / groups for a
    /// convolution, 1 for a linear layer.
    fn unit(&self) -> f64 {
        match *self {
            Layer::Conv { kh, kw, groups, out_h, out_w, .. } => (out_h * out_w * kh * kw) as f64 / groups as f64,
            Layer::Linear { .. } => 1.0,
        }
    }

    /// MACs with every channel on.
    pub fn dense_macs(&self) -> f64 {
        self.macs(self.in_channels() as f64, self.out_channels() as f64)
    }

    /// MACs with `active_in` input and `active_out` output channels on.
    pub fn macs(&self, active_in: f64, active_out: f64) -> f64 {
        active_out * active_in * self.unit()
    }

    /// Per-sample MACs from per-sample active counts (f32/f64 tensors of one shape, e.g. [B]).
    pub fn macs_per_sample(&self, active_in: &Tensor, active_out: &Tensor) -> Tensor {
        active_in * active_out * self.unit()
    }
}

/// Per-sample MACs of a chain of layers in which each layer's inputs are the previous layer's
/// outputs (a plain CNN and its head; pooling between layers keeps the channel count). `active[l]`
/// holds layer l's active output channels per sample, [B], or `None` when all are on; the first
/// layer's inputs are all on. Returns f64 [B].
pub fn chain_macs(layers: &[Layer], active: &[Option<Tensor>], batch: i64) -> Tensor {
    assert_eq!(layers.len(), active.len(), "chain_macs: one active-count entry per layer");
    let device = active.iter().flatten().next().map_or(tch::Device::Cpu, |t| t.device());
    let full = |c: i64| Tensor::full([batch], c as f64, (Kind::Double, device));
    let mut total = Tensor::zeros([batch], (Kind::Double, device));
    let mut active_in = full(layers.first().map_or(0, Layer::in_channels));
    for (l, (layer, out)) in layers.iter().zip(active).enumerate() {
        if l > 0 {
            assert_eq!(layer.in_channels(), layers[l - 1].out_channels(), "chain_macs: layer {l}'s inputs are not layer {}'s outputs", l - 1);
        }
        let active_out = out.as_ref().map_or_else(|| full(layer.out_channels()), |t| t.to_kind(Kind::Double));
        total += layer.macs_per_sample(&active_in, &active_out);
        active_in = active_out;
    }
    total
}

/// MACs of the chain with every channel on.
pub fn chain_dense_macs(layers: &[Layer]) -> f64 {
    layers.iter().map(Layer::dense_macs).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn hand_counts_of_conv_and_linear_layers() {
        // 3→8 channels, 3×3, 8×8 outputs: 8·64 outputs, each 3·9 products.
        assert_eq!(Layer::conv(3, 8, 3, 1, (8, 8)).dense_macs(), 13_824.0);
        // Depthwise 8→8 in 8 groups: each output uses one input map, 9 products.
        assert_eq!(Layer::conv(8, 8, 3, 8, (4, 4)).dense_macs(), 8.0 * 16.0 * 9.0);
        assert_eq!(Layer::linear(32, 10).dense_macs(), 320.0);
        // 2 of 8 outputs from 1 of 3 inputs.
        assert_eq!(Layer::conv(3, 8, 3, 1, (8, 8)).macs(1.0, 2.0), 2.0 * 64.0 * 9.0);
    }

    /// Convolving all-ones inputs with all-ones weights (no padding) makes every output equal to
    /// the number of products that produced it, so the sum of the outputs counts the MACs. With
    /// input channels zeroed and output filters removed, the sum counts the masked layer's.
    #[test]
    fn counts_equal_the_products_a_real_convolution_performs() {
        let opts = (Kind::Double, Device::Cpu);
        let (cin, cout, k, n) = (6i64, 10i64, 3i64, 7i64);
        let x = Tensor::ones([1, cin, n, n], opts);
        let w = Tensor::ones([cout, cin, k, k], opts);
        let y = x.conv2d(&w, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
        let out_hw = (y.size()[2], y.size()[3]);
        assert_eq!(y.sum(Kind::Double).double_value(&[]), Layer::conv(cin, cout, k, 1, out_hw).dense_macs());
        // Inputs 1, 4 off; keep outputs 0, 2, 3: the products that remain are exactly the count.
        let in_mask = Tensor::from_slice(&[1.0, 0.0, 1.0, 1.0, 0.0, 1.0]).view([1, cin, 1, 1]);
        let keep = Tensor::from_slice(&[0i64, 2, 3]);
        let y = (&x * in_mask).conv2d(&w.index_select(0, &keep), None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
        assert_eq!(y.sum(Kind::Double).double_value(&[]), Layer::conv(cin, cout, k, 1, out_hw).macs(4.0, 3.0));
        // Grouped: 2 groups, each output sees cin/2 inputs.
        let wg = Tensor::ones([cout, cin / 2, k, k], opts);
        let yg = x.conv2d(&wg, None::<Tensor>, [1, 1], [0, 0], [1, 1], 2);
        assert_eq!(yg.sum(Kind::Double).double_value(&[]), Layer::conv(cin, cout, k, 2, out_hw).dense_macs());
    }

    #[test]
    fn a_chain_passes_each_layers_active_outputs_on_as_the_next_layers_inputs() {
        let layers = [Layer::conv(1, 4, 3, 1, (8, 8)), Layer::conv(4, 6, 3, 1, (4, 4)), Layer::linear(6, 10)];
        let dense = 4.0 * 64.0 * 9.0 + 6.0 * 4.0 * 16.0 * 9.0 + 60.0;
        assert_eq!(chain_dense_macs(&layers), dense);
        let none = chain_macs(&layers, &[None, None, None], 2);
        assert_eq!(Vec::<f64>::try_from(&none).unwrap(), vec![dense, dense]);
        // Sample 0: 2 and 3 channels on; sample 1: all 4, then 1.
        let a0 = Tensor::from_slice(&[2.0f32, 4.0]);
        let a1 = Tensor::from_slice(&[3.0f32, 1.0]);
        let m = Vec::<f64>::try_from(&chain_macs(&layers, &[Some(a0), Some(a1), None], 2)).unwrap();
        assert_eq!(m[0], 2.0 * 64.0 * 9.0 + 3.0 * 2.0 * 16.0 * 9.0 + 3.0 * 10.0);
        assert_eq!(m[1], 4.0 * 64.0 * 9.0 + 1.0 * 4.0 * 16.0 * 9.0 + 10.0);
    }
}
