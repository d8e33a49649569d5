//! Exact spectral tools for small convolutions: the dense matrix of a conv layer (circular or
//! zero padding, any stride) built by pushing the standard basis through the layer, and its
//! singular values. Meant for tests and the orthogonal-convolution experiments, where the inputs
//! are small enough for an explicit (C_out·H'·W') × (C_in·H·W) matrix.

use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Wrap around (the circular convolutions of the orthogonality theory).
    Circular,
    /// Zeros outside the image.
    Zeros,
}

/// Applies the convolution `kernel` [C_out, C_in, k, k] (odd k, "same" padding k/2) to `x`
/// [N, C_in, H, W] with `stride`.
pub fn conv(x: &Tensor, kernel: &Tensor, stride: i64, padding: Padding) -> Tensor {
    let k = kernel.size()[2];
    let p = k / 2;
    match padding {
        Padding::Circular => {
            let padded = x.pad([p, p, p, p].as_slice(), "circular", None);
            padded.conv2d::<Tensor>(kernel, None, [stride, stride].as_slice(), [0, 0].as_slice(), [1, 1].as_slice(), 1)
        }
        Padding::Zeros => x.conv2d::<Tensor>(kernel, None, [stride, stride].as_slice(), [p, p].as_slice(), [1, 1].as_slice(), 1),
    }
}

/// The dense matrix M of the conv on inputs [C_in, H, W]: conv(x).flatten() = M · x.flatten().
pub fn dense_matrix(kernel: &Tensor, c_in: i64, h: i64, w: i64, stride: i64, padding: Padding) -> Tensor {
    let n = c_in * h * w;
    let basis = Tensor::eye(n, (kernel.kind(), kernel.device())).view([n, c_in, h, w]);
    // Column j of M is the layer's response to the j-th basis image.
    conv(&basis, kernel, stride, padding).flatten(1, -1).transpose(0, 1)
}

/// Singular values of the conv layer on [C_in, H, W] inputs, in decreasing order.
pub fn singular_values(kernel: &Tensor, c_in: i64, h: i64, w: i64, stride: i64, padding: Padding) -> Tensor {
    let (_, singular, _) = dense_matrix(&kernel.to_kind(Kind::Double), c_in, h, w, stride, padding).svd(true, false);
    singular
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn the_dense_matrix_reproduces_the_layer() {
        tch::manual_seed(3);
        for (padding, stride) in [(Padding::Circular, 1), (Padding::Zeros, 1), (Padding::Circular, 2), (Padding::Zeros, 2)] {
            let kernel = Tensor::randn([3, 2, 3, 3], (Kind::Double, Device::Cpu));
            let m = dense_matrix(&kernel, 2, 6, 6, stride, padding);
            for _ in 0..3 {
                let x = Tensor::randn([1, 2, 6, 6], (Kind::Double, Device::Cpu));
                let direct = conv(&x, &kernel, stride, padding).flatten(0, -1);
                let via = m.mv(&x.flatten(0, -1));
                assert!(f64::try_from((direct - via).abs().max()).unwrap() < 1e-10, "{padding:?} stride {stride}");
            }
        }
    }

    #[test]
    fn a_dirac_kernel_is_the_identity() {
        let kernel = Tensor::zeros([2, 2, 3, 3], (Kind::Double, Device::Cpu));
        for c in 0..2 {
            let _ = kernel.get(c).get(c).get(1).get(1).fill_(1.0);
        }
        for padding in [Padding::Circular, Padding::Zeros] {
            let m = dense_matrix(&kernel, 2, 4, 4, 1, padding);
            let eye = Tensor::eye(32, (Kind::Double, Device::Cpu));
            assert!(f64::try_from((m - eye).abs().max()).unwrap() == 0.0);
            let sv = singular_values(&kernel, 2, 4, 4, 1, padding);
            assert!(f64::try_from((sv - 1.0).abs().max()).unwrap() < 1e-12);
        }
    }

    #[test]
    fn circular_single_channel_singular_values_are_the_dft_magnitudes() {
        // A circular 1-channel conv is diagonalised by the 2-D DFT: σ = |DFT of the kernel|.
        let kernel = Tensor::from_slice(&[0.0f64, 1.0, 0.0, 2.0, -1.0, 0.5, 0.0, 0.3, 0.0]).view([1, 1, 3, 3]);
        let n = 5i64;
        let sv = Vec::<f64>::try_from(singular_values(&kernel, 1, n, n, 1, Padding::Circular)).unwrap();
        let k = Vec::<f64>::try_from(kernel.flatten(0, -1)).unwrap();
        let mut mags = vec![];
        for u in 0..n {
            for v in 0..n {
                let (mut re, mut im) = (0.0, 0.0);
                for a in 0..3i64 {
                    for b in 0..3i64 {
                        let ang = -2.0 * std::f64::consts::PI * ((u * (a - 1)) as f64 + (v * (b - 1)) as f64) / n as f64;
                        re += k[(a * 3 + b) as usize] * ang.cos();
                        im += k[(a * 3 + b) as usize] * ang.sin();
                    }
                }
                mags.push((re * re + im * im).sqrt());
            }
        }
        mags.sort_by(|a, b| b.partial_cmp(a).unwrap());
        assert!(sv.iter().zip(&mags).all(|(a, b)| (a - b).abs() < 1e-10), "{sv:?} vs {mags:?}");
    }
}
