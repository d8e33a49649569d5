//! Sparse SPD systems and the Krylov solvers that baseline a learned one: a CSR matrix with the
//! 2-D Dirichlet Poisson matrix and its closed-form eigenpairs, IC(0), and preconditioned CG with
//! iteration counts and residual histories.
//!
//! Plain `f64` vectors rather than tensors: the solvers are sequential recurrences over vectors of
//! a few thousand entries, where the per-op dispatch of a tensor library costs more than the
//! arithmetic, and float64 is what the convergence tests need.

use anyhow::{bail, Result};

/// A square matrix in compressed sparse row form, column indices sorted within each row.
#[derive(Debug, Clone, PartialEq)]
pub struct Csr {
    pub n: usize,
    pub indptr: Vec<usize>,
    pub indices: Vec<usize>,
    pub values: Vec<f64>,
}

impl Csr {
    /// Builds from (row, column, value) triplets; duplicates are summed.
    pub fn from_triplets(n: usize, mut entries: Vec<(usize, usize, f64)>) -> Csr {
        entries.sort_by_key(|e| (e.0, e.1));
        let mut indptr = vec![0; n + 1];
        let (mut indices, mut values): (Vec<usize>, Vec<f64>) = (Vec::new(), Vec::new());
        let mut last: Option<(usize, usize)> = None;
        for (i, j, v) in entries {
            assert!(i < n && j < n, "entry ({i}, {j}) outside a {n}×{n} matrix");
            if last == Some((i, j)) {
                *values.last_mut().unwrap() += v;
                continue;
            }
            indices.push(j);
            values.push(v);
            indptr[i + 1] += 1;
            last = Some((i, j));
        }
        for i in 0..n {
            indptr[i + 1] += indptr[i];
        }
        Csr { n, indptr, indices, values }
    }

    /// Row i's (column, value) pairs.
    pub fn row(&self, i: usize) -> impl Iterator<Item = (usize, f64)> + '_ {
        let span = self.indptr[i]..self.indptr[i + 1];
        self.indices[span.clone()].iter().copied().zip(self.values[span].iter().copied())
    }

    /// y = A·x.
    pub fn matvec(&self, x: &[f64]) -> Vec<f64> {
        assert_eq!(x.len(), self.n, "matvec: vector length {} for a {}-row matrix", x.len(), self.n);
        (0..self.n).map(|i| self.row(i).map(|(j, v)| v * x[j]).sum()).collect()
    }

    pub fn diagonal(&self) -> Vec<f64> {
        (0..self.n).map(|i| self.row(i).find(|e| e.0 == i).map_or(0.0, |e| e.1)).collect()
    }

    /// Row-major dense copy, for tests and small checks.
    pub fn to_dense(&self) -> Vec<f64> {
        let mut d = vec![0.0; self.n * self.n];
        for i in 0..self.n {
            for (j, v) in self.row(i) {
                d[i * self.n + j] = v;
            }
        }
        d
    }

    /// Zero-fill incomplete Cholesky: L lower triangular on A's lower pattern with (LLᵀ)_ij = a_ij
    /// wherever a_ij ≠ 0. Fails (with the row) on a non-positive pivot.
    pub fn ic0(&self) -> Result<LowerTriangular> {
        let mut rows: Vec<Vec<(usize, f64)>> = Vec::with_capacity(self.n);
        for i in 0..self.n {
            let mut row: Vec<(usize, f64)> = Vec::new();
            for (j, a) in self.row(i).filter(|e| e.0 <= i) {
                // Σ_k L_ik L_jk over k < j in both patterns (both rows sorted by column).
                let (ri, rj) = (&row, if j == i { &row } else { &rows[j] });
                let (mut p, mut q, mut s) = (0, 0, 0.0);
                while p < ri.len() && q < rj.len() {
                    let (ki, kj) = (ri[p].0, rj[q].0);
                    if ki >= j || kj >= j {
                        break;
                    }
                    match ki.cmp(&kj) {
                        std::cmp::Ordering::Less => p += 1,
                        std::cmp::Ordering::Greater => q += 1,
                        std::cmp::Ordering::Equal => {
                            s += ri[p].1 * rj[q].1;
                            p += 1;
                            q += 1;
                        }
                    }
                }
                if j < i {
                    let ljj = rows[j].last().map(|e| e.1).unwrap_or(0.0);
                    row.push((j, (a - s) / ljj));
                } else {
                    let pivot = a - s;
                    if !(pivot > 0.0) {
                        bail!("IC(0) breaks down at row {i}: pivot {pivot} ≤ 0 (the matrix is not SPD enough for zero fill)");
                    }
                    row.push((i, pivot.sqrt()));
                }
            }
            if row.last().map(|e| e.0) != Some(i) {
                bail!("IC(0): row {i} has no diagonal entry");
            }
            rows.push(row);
        }
        Ok(LowerTriangular { rows })
    }
}

/// A sparse lower-triangular factor, rows sorted by column with the diagonal last.
#[derive(Debug, Clone)]
pub struct LowerTriangular {
    pub rows: Vec<Vec<(usize, f64)>>,
}

impl LowerTriangular {
    /// z = (LLᵀ)⁻¹ r by a forward and a backward sweep.
    pub fn solve_llt(&self, r: &[f64]) -> Vec<f64> {
        let n = self.rows.len();
        let mut y = vec![0.0; n];
        for i in 0..n {
            let row = &self.rows[i];
            let (diag, off) = row.split_last().unwrap();
            y[i] = (r[i] - off.iter().map(|(j, l)| l * y[*j]).sum::<f64>()) / diag.1;
        }
        // Lᵀz = y, column-oriented over L's rows.
        let mut z = y;
        for i in (0..n).rev() {
            let row = &self.rows[i];
            let (diag, off) = row.split_last().unwrap();
            z[i] /= diag.1;
            let zi = z[i];
            for (j, l) in off {
                z[*j] -= l * zi;
            }
        }
        z
    }
}

/// The 5-point Laplacian on an n×n interior grid with zero Dirichlet boundary (unit spacing):
/// A = 4I − (the up to four neighbours), unknowns in row-major order (index y·n + x).
pub fn poisson_2d(n: usize) -> Csr {
    let mut e = Vec::with_capacity(5 * n * n);
    for y in 0..n {
        for x in 0..n {
            let i = y * n + x;
            e.push((i, i, 4.0));
            if x > 0 {
                e.push((i, i - 1, -1.0));
            }
            if x + 1 < n {
                e.push((i, i + 1, -1.0));
            }
            if y > 0 {
                e.push((i, i - n, -1.0));
            }
            if y + 1 < n {
                e.push((i, i + n, -1.0));
            }
        }
    }
    Csr::from_triplets(n * n, e)
}

/// Eigenvalue of [`poisson_2d`] for mode (j, k), 1 ≤ j, k ≤ n: 4 − 2cos(jπ/(n+1)) − 2cos(kπ/(n+1)).
pub fn poisson_2d_eigenvalue(n: usize, j: usize, k: usize) -> f64 {
    let h = std::f64::consts::PI / (n + 1) as f64;
    4.0 - 2.0 * (j as f64 * h).cos() - 2.0 * (k as f64 * h).cos()
}

/// The unit-norm eigenvector for mode (j, k): sin(jπx/(n+1))·sin(kπy/(n+1)) at x, y = 1..n.
pub fn poisson_2d_eigenvector(n: usize, j: usize, k: usize) -> Vec<f64> {
    let h = std::f64::consts::PI / (n + 1) as f64;
    let scale = 2.0 / (n + 1) as f64; // ‖·‖² of the unnormalised mode is ((n+1)/2)²
    let mut v = Vec::with_capacity(n * n);
    for y in 1..=n {
        for x in 1..=n {
            v.push(scale * (j as f64 * h * x as f64).sin() * (k as f64 * h * y as f64).sin());
        }
    }
    v
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// What an iterative solve returns.
#[derive(Debug, Clone)]
pub struct Solve {
    pub x: Vec<f64>,
    /// Iterations taken (each one a new search direction).
    pub iterations: usize,
    /// ‖r_i‖/‖r_0‖ for i = 0..=iterations.
    pub residuals: Vec<f64>,
    pub converged: bool,
}

/// The preconditioners the baselines use.
pub enum Preconditioner<'a> {
    Identity,
    /// Diagonal scaling z = r / diag(A).
    Jacobi(Vec<f64>),
    /// z = (LLᵀ)⁻¹ r with L from [`Csr::ic0`].
    Cholesky(&'a LowerTriangular),
}

impl Preconditioner<'_> {
    pub fn apply(&self, r: &[f64]) -> Vec<f64> {
        match self {
            Preconditioner::Identity => r.to_vec(),
            Preconditioner::Jacobi(d) => r.iter().zip(d).map(|(r, d)| r / d).collect(),
            Preconditioner::Cholesky(l) => l.solve_llt(r),
        }
    }
}

/// Preconditioned conjugate gradients from x₀ = 0 until ‖r‖ ≤ tol·‖r₀‖ (r₀ = b) or `max_iter`
/// iterations; the residual is updated recursively, as textbook PCG does.
pub fn pcg(a: &Csr, b: &[f64], m: &Preconditioner, tol: f64, max_iter: usize) -> Solve {
    let mut x = vec![0.0; a.n];
    let mut r = b.to_vec();
    let r0 = norm(&r);
    let mut residuals = vec![1.0];
    if r0 == 0.0 {
        return Solve { x, iterations: 0, residuals, converged: true };
    }
    let mut z = m.apply(&r);
    let mut p = z.clone();
    let mut rz = dot(&r, &z);
    for it in 1..=max_iter {
        let ap = a.matvec(&p);
        let alpha = rz / dot(&p, &ap);
        for i in 0..a.n {
            x[i] += alpha * p[i];
            r[i] -= alpha * ap[i];
        }
        let rel = norm(&r) / r0;
        residuals.push(rel);
        if rel <= tol {
            return Solve { x, iterations: it, residuals, converged: true };
        }
        z = m.apply(&r);
        let rz_new = dot(&r, &z);
        let beta = rz_new / rz;
        rz = rz_new;
        for i in 0..a.n {
            p[i] = z[i] + beta * p[i];
        }
    }
    Solve { x, iterations: max_iter, residuals, converged: false }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::dense;

    fn random_vec(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = crate::context::Rng::new(seed);
        (0..n).map(|_| rng.normal()).collect()
    }

    #[test]
    fn poisson_matrix_is_the_five_point_stencil_and_its_eigenpairs_are_exact() {
        let n = 8;
        let a = poisson_2d(n);
        assert_eq!(a.n, 64);
        assert_eq!(a.values.len(), 5 * 64 - 4 * 8); // 4 boundary sides lose one neighbour per cell
        let d = a.to_dense();
        for i in 0..64 {
            for j in 0..64 {
                assert_eq!(d[i * 64 + j], d[j * 64 + i], "symmetric");
            }
        }
        for (j, k) in (1..=n).flat_map(|j| (1..=n).map(move |k| (j, k))) {
            let v = poisson_2d_eigenvector(n, j, k);
            let lam = poisson_2d_eigenvalue(n, j, k);
            assert!((norm(&v) - 1.0).abs() < 1e-12);
            let av = a.matvec(&v);
            let err: f64 = av.iter().zip(&v).map(|(x, y)| (x - lam * y).abs()).fold(0.0, f64::max);
            assert!(err < 1e-12, "mode ({j},{k}): residual {err}");
        }
        // The formula's spectrum is the dense matrix's (symmetric eigensolver).
        let mut formula: Vec<f64> = (1..=n).flat_map(|j| (1..=n).map(move |k| poisson_2d_eigenvalue(n, j, k))).collect();
        formula.sort_by(f64::total_cmp);
        let dense = tch::Tensor::from_slice(&d).view([64, 64]).linalg_eigvalsh("L");
        let dense = Vec::<f64>::try_from(dense).unwrap();
        assert!(formula.iter().zip(&dense).all(|(u, v)| (u - v).abs() < 1e-10), "{formula:?} vs {dense:?}");
    }

    #[test]
    fn cg_matches_a_dense_solve_and_pcg_variants_agree() {
        let a = poisson_2d(6);
        let b = random_vec(36, 1);
        let inv = dense::Mat::from_rows(36, a.to_dense()).inverse().unwrap();
        let x_dense: Vec<f64> = (0..36).map(|i| (0..36).map(|j| inv.at(i, j) * b[j]).sum()).collect();
        let l = a.ic0().unwrap();
        for m in [Preconditioner::Identity, Preconditioner::Jacobi(a.diagonal()), Preconditioner::Cholesky(&l)] {
            let s = pcg(&a, &b, &m, 1e-12, 200);
            assert!(s.converged);
            let err = s.x.iter().zip(&x_dense).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            assert!(err < 1e-9, "{err}");
            // The recursive residual stays honest: b − Ax matches it.
            let r = a.matvec(&s.x).iter().zip(&b).map(|(ax, b)| b - ax).collect::<Vec<_>>();
            assert!(norm(&r) / norm(&b) < 1e-10);
            // CG in exact arithmetic ends in at most n steps.
            assert!(s.iterations <= 36);
        }
    }

    #[test]
    fn ic0_is_exact_cholesky_without_fill_and_reproduces_a_on_its_pattern() {
        // Tridiagonal: no fill, so IC(0) is the Cholesky factor and one PCG step solves.
        let t = Csr::from_triplets(5, (0..5).flat_map(|i| {
            let mut e = vec![(i, i, 2.5)];
            if i > 0 {
                e.push((i, i - 1, -1.0));
                e.push((i - 1, i, -1.0));
            }
            e
        }).collect());
        let l = t.ic0().unwrap();
        let b = random_vec(5, 3);
        let s = pcg(&t, &b, &Preconditioner::Cholesky(&l), 1e-12, 10);
        assert_eq!(s.iterations, 1);
        // Poisson: (LLᵀ)_ij = a_ij on A's pattern (the dropped fill lies off it).
        let a = poisson_2d(5);
        let l = a.ic0().unwrap();
        let mut dl = vec![0.0; 25 * 25];
        for (i, row) in l.rows.iter().enumerate() {
            for (j, v) in row {
                dl[i * 25 + j] = *v;
            }
        }
        let d = a.to_dense();
        for i in 0..25 {
            for j in 0..25 {
                let llt: f64 = (0..25).map(|k| dl[i * 25 + k] * dl[j * 25 + k]).sum();
                if d[i * 25 + j] != 0.0 {
                    assert!((llt - d[i * 25 + j]).abs() < 1e-12, "({i},{j}) {llt} vs {}", d[i * 25 + j]);
                }
            }
        }
        // An indefinite matrix is refused with its row.
        let bad = Csr::from_triplets(2, vec![(0, 0, 1.0), (0, 1, 2.0), (1, 0, 2.0), (1, 1, 1.0)]);
        assert!(bad.ic0().unwrap_err().to_string().contains("row 1"));
    }

    #[test]
    fn cg_iterations_on_poisson_32_are_in_the_notes_calibrated_range() {
        // The note's numpy calibration: 85–86 iterations to 1e−6 at n = 32 for random b, ≈ 2× at 64.
        let a = poisson_2d(32);
        let b = random_vec(1024, 7);
        let s = pcg(&a, &b, &Preconditioner::Identity, 1e-6, 500);
        assert!((80..=92).contains(&s.iterations), "{}", s.iterations);
        let a64 = poisson_2d(64);
        let s64 = pcg(&a64, &random_vec(4096, 7), &Preconditioner::Identity, 1e-6, 500);
        let ratio = s64.iterations as f64 / s.iterations as f64;
        assert!((1.8..2.2).contains(&ratio), "{ratio}");
        // Jacobi on a constant diagonal is CG; IC(0) needs clearly fewer.
        let j = pcg(&a, &b, &Preconditioner::Jacobi(a.diagonal()), 1e-6, 500);
        assert_eq!(j.iterations, s.iterations);
        let l = a.ic0().unwrap();
        let ic = pcg(&a, &b, &Preconditioner::Cholesky(&l), 1e-6, 500);
        assert!(ic.iterations < s.iterations * 2 / 3, "{}", ic.iterations);
        assert!(s.residuals.len() == s.iterations + 1 && s.residuals[s.iterations] <= 1e-6);
    }
}
