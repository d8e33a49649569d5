//! PyTorch's default initialisation for `nn.Linear` and `nn.Conv2d`, for the modules whose official
//! code relies on those defaults; and Glorot-uniform, the default of Keras and Flux.jl.
//!
//! tch's defaults differ: `nn::linear` draws weights Kaiming-uniform with the ReLU gain,
//! U(±√6/√fan_in), √6 ≈ 2.45× PyTorch's bound, and `nn::conv2d` does the same and zeroes the bias.
//! PyTorch's `reset_parameters` uses `kaiming_uniform_(a=√5)`, whose bound is
//! gain·√(3/fan_in) with gain √(2/(1+5)), i.e. exactly 1/√fan_in, and U(±1/√fan_in) for the bias;
//! fan_in is `in_features` for a linear layer and `in_channels/groups · kh · kw` for a convolution.

use tch::nn;

/// U(±1/√fan_in): PyTorch's default for both the weights and the bias of Linear and Conv layers.
pub fn torch_default(fan_in: i64) -> nn::Init {
    assert!(fan_in > 0, "fan_in must be positive, got {fan_in}");
    let bound = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform { lo: -bound, up: bound }
}

/// An `nn.Linear(in_dim, out_dim, bias)` initialised as PyTorch does.
pub fn linear(vs: nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> nn::Linear {
    let init = torch_default(in_dim);
    nn::linear(vs, in_dim, out_dim, nn::LinearConfig { ws_init: init, bs_init: Some(init), bias })
}

/// An `nn.Conv2d` with a square `k`×`k` kernel, initialised as PyTorch does; `cfg`'s own init
/// fields are replaced, its stride, padding, groups and bias flag kept.
pub fn conv2d(vs: nn::Path, cin: i64, cout: i64, k: i64, cfg: nn::ConvConfig) -> nn::Conv2D {
    let init = torch_default(cin / cfg.groups * k * k);
    nn::conv2d(vs, cin, cout, k, nn::ConvConfig { ws_init: init, bs_init: init, ..cfg })
}

/// Keras's and Flux's default for convolutions: Glorot-uniform weights, U(±√(6/(fan_in + fan_out)))
/// with fan_in = cin·k·k and fan_out = cout·k·k, and zero bias — for the modules whose official
/// code is Keras or Flux.jl (a `Dense` layer applied per pixel is the k = 1 case).
pub fn glorot_conv2d(vs: nn::Path, cin: i64, cout: i64, k: i64, cfg: nn::ConvConfig) -> nn::Conv2D {
    let bound = (6.0 / ((cin / cfg.groups + cout) * k * k) as f64).sqrt();
    nn::conv2d(vs, cin, cout, k, nn::ConvConfig { ws_init: nn::Init::Uniform { lo: -bound, up: bound }, bs_init: nn::Init::Const(0.0), ..cfg })
}

/// Keras's `Dense` and Flux's `Dense` default: Glorot-uniform weights U(±√(6/(in + out))), zero bias.
pub fn glorot_linear(vs: nn::Path, in_dim: i64, out_dim: i64) -> nn::Linear {
    let bound = (6.0 / (in_dim + out_dim) as f64).sqrt();
    nn::linear(vs, in_dim, out_dim, nn::LinearConfig { ws_init: nn::Init::Uniform { lo: -bound, up: bound }, bs_init: Some(nn::Init::Const(0.0)), bias: true })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Tensor};

    /// max |x| close to the bound from below, and the std of U(±b) = b/√3.
    fn assert_uniform(t: &Tensor, bound: f64, what: &str) {
        let max = t.abs().max().double_value(&[]);
        let std = t.std(true).double_value(&[]);
        let n = t.numel() as f64;
        assert!(max <= bound && max > bound * (1.0 - 20.0 / n), "{what}: max |x| {max} vs bound {bound}");
        let want = bound / 3f64.sqrt();
        assert!((std - want).abs() < 0.05 * want, "{what}: std {std} vs {want}");
    }

    #[test]
    fn linear_matches_pytorch_bounds_for_weights_and_bias() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let lin = linear(vs.root() / "l", 400, 3000, true);
        assert_uniform(&lin.ws, 1.0 / 20.0, "weight");
        assert_uniform(lin.bs.as_ref().unwrap(), 1.0 / 20.0, "bias");
        // tch's own default is √6 times wider: the test would fail on it.
        let wide = nn::linear(vs.root() / "tch", 400, 3000, Default::default());
        assert!(wide.ws.abs().max().double_value(&[]) > 2.0 / 20.0);
        assert!(linear(vs.root() / "nb", 4, 5, false).bs.is_none());
    }

    #[test]
    fn conv_fan_in_counts_channels_per_group_and_kernel_area() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = conv2d(vs.root() / "c", 16, 2048, 3, nn::ConvConfig { padding: 1, ..Default::default() });
        assert_uniform(&conv.ws, 1.0 / 12.0, "conv weight"); // fan_in 16·3·3 = 144
        assert_uniform(conv.bs.as_ref().unwrap(), 1.0 / 12.0, "conv bias");
        let grouped = conv2d(vs.root() / "g", 16, 1024, 3, nn::ConvConfig { groups: 4, bias: false, ..Default::default() });
        assert_uniform(&grouped.ws, 1.0 / 6.0, "grouped conv weight"); // fan_in 4·3·3 = 36
    }

    #[test]
    fn glorot_layers_are_uniform_on_fan_in_plus_fan_out_with_zero_bias() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let l = glorot_linear(vs.root() / "l", 1000, 2000);
        assert_uniform(&l.ws, (6.0f64 / 3000.0).sqrt(), "glorot linear weight");
        assert_eq!(l.bs.as_ref().unwrap().abs().max().double_value(&[]), 0.0);
        let c = glorot_conv2d(vs.root() / "k", 16, 32, 3, Default::default());
        // √(6/((16 + 32)·9)) = √(6/432); PyTorch's default would be 1/√144 = 1/12.
        assert_uniform(&c.ws, (6.0f64 / 432.0).sqrt(), "glorot weight");
        assert_eq!(c.bs.as_ref().unwrap().abs().max().double_value(&[]), 0.0);
    }
}
