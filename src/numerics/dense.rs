//! Small dense square matrices in f64 (row-major), with the few operations the DAG papers need:
//! products, the inverse and log|det| by LU with partial pivoting. For d in the tens a plain loop
//! beats libtorch's per-op overhead by orders of magnitude, which matters in solvers that take
//! 10⁵ steps.

use anyhow::{bail, Result};

/// A d × d matrix, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    pub d: usize,
    pub a: Vec<f64>,
}

impl Mat {
    pub fn zeros(d: usize) -> Self {
        Mat { d, a: vec![0.0; d * d] }
    }
    pub fn eye(d: usize) -> Self {
        let mut m = Mat::zeros(d);
        for i in 0..d {
            m.a[i * d + i] = 1.0;
        }
        m
    }
    pub fn from_rows(d: usize, a: Vec<f64>) -> Self {
        assert_eq!(a.len(), d * d);
        Mat { d, a }
    }
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.a[i * self.d + j]
    }
    pub fn set(&mut self, i: usize, j: usize, v: f64) {
        self.a[i * self.d + j] = v;
    }
    pub fn matmul(&self, other: &Mat) -> Mat {
        let d = self.d;
        let mut out = Mat::zeros(d);
        for i in 0..d {
            for k in 0..d {
                let v = self.a[i * d + k];
                if v == 0.0 {
                    continue;
                }
                for j in 0..d {
                    out.a[i * d + j] += v * other.a[k * d + j];
                }
            }
        }
        out
    }
    pub fn transpose(&self) -> Mat {
        let d = self.d;
        let mut out = Mat::zeros(d);
        for i in 0..d {
            for j in 0..d {
                out.a[j * d + i] = self.a[i * d + j];
            }
        }
        out
    }
    /// Elementwise a ∘ b.
    pub fn hadamard(&self, other: &Mat) -> Mat {
        Mat { d: self.d, a: self.a.iter().zip(&other.a).map(|(x, y)| x * y).collect() }
    }
    pub fn trace(&self) -> f64 {
        (0..self.d).map(|i| self.a[i * self.d + i]).sum()
    }

    /// LU with partial pivoting: (packed LU, row permutation, sign of the permutation).
    fn lu(&self) -> Result<(Vec<f64>, Vec<usize>, f64)> {
        let d = self.d;
        let mut lu = self.a.clone();
        let mut perm: Vec<usize> = (0..d).collect();
        let mut sign = 1.0;
        for k in 0..d {
            let p = (k..d).max_by(|&i, &j| lu[i * d + k].abs().total_cmp(&lu[j * d + k].abs())).unwrap();
            if lu[p * d + k] == 0.0 {
                bail!("singular matrix");
            }
            if p != k {
                for j in 0..d {
                    lu.swap(k * d + j, p * d + j);
                }
                perm.swap(k, p);
                sign = -sign;
            }
            for i in k + 1..d {
                let f = lu[i * d + k] / lu[k * d + k];
                lu[i * d + k] = f;
                for j in k + 1..d {
                    lu[i * d + j] -= f * lu[k * d + j];
                }
            }
        }
        Ok((lu, perm, sign))
    }

    /// (sign of det, log |det|).
    pub fn slogdet(&self) -> Result<(f64, f64)> {
        let (lu, _, mut sign) = self.lu()?;
        let mut logdet = 0.0;
        for i in 0..self.d {
            let v = lu[i * self.d + i];
            if v < 0.0 {
                sign = -sign;
            }
            logdet += v.abs().ln();
        }
        Ok((sign, logdet))
    }

    pub fn inverse(&self) -> Result<Mat> {
        let d = self.d;
        let (lu, perm, _) = self.lu()?;
        let mut inv = Mat::zeros(d);
        for col in 0..d {
            // Solve L U x = P e_col.
            let mut x: Vec<f64> = (0..d).map(|i| if perm[i] == col { 1.0 } else { 0.0 }).collect();
            for i in 0..d {
                for k in 0..i {
                    x[i] -= lu[i * d + k] * x[k];
                }
            }
            for i in (0..d).rev() {
                for k in i + 1..d {
                    x[i] -= lu[i * d + k] * x[k];
                }
                x[i] /= lu[i * d + i];
            }
            for i in 0..d {
                inv.a[i * d + col] = x[i];
            }
        }
        Ok(inv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Rng;

    #[test]
    fn inverse_and_slogdet_agree_with_closed_forms() {
        let m = Mat::from_rows(2, vec![4.0, 7.0, 2.0, 6.0]);
        let inv = m.inverse().unwrap();
        assert!(inv.a.iter().zip([0.6, -0.7, -0.2, 0.4]).all(|(a, b)| (a - b).abs() < 1e-12), "{inv:?}");
        let (s, l) = m.slogdet().unwrap();
        assert!(s == 1.0 && (l - 10f64.ln()).abs() < 1e-12);
        let neg = Mat::from_rows(2, vec![0.0, 1.0, 1.0, 0.0]);
        assert_eq!(neg.slogdet().unwrap(), (-1.0, 0.0));
        // A random 12 × 12: M · M⁻¹ = I.
        let mut rng = Rng::new(1);
        let r = Mat::from_rows(12, (0..144).map(|_| rng.normal()).collect());
        let id = r.matmul(&r.inverse().unwrap());
        assert!(id.a.iter().zip(&Mat::eye(12).a).all(|(a, b)| (a - b).abs() < 1e-9));
        assert!(Mat::zeros(3).inverse().is_err());
    }
}
