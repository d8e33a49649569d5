//! Exact OT where it reduces to an assignment: uniform marginals with m a multiple of n (each
//! target repeated m/n times) or n a multiple of m. Solved by the O(N³) Hungarian algorithm.

use tch::{Kind, Tensor};

/// Minimum-cost perfect matching of an N × N cost matrix (row-major); returns the column of
/// each row. Shortest augmenting paths with potentials.
pub fn assignment(cost: &[f64], n: usize) -> Vec<usize> {
    assert_eq!(cost.len(), n * n);
    let inf = f64::INFINITY;
    // 1-based arrays as in the classic formulation; p[j] = row matched to column j.
    let (mut u, mut v) = (vec![0.0; n + 1], vec![0.0; n + 1]);
    let (mut p, mut way) = (vec![0usize; n + 1], vec![0usize; n + 1]);
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        let mut minv = vec![inf; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = inf;
            let mut j1 = 0;
            for j in 1..=n {
                if !used[j] {
                    let cur = cost[(i0 - 1) * n + (j - 1)] - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut row_to_col = vec![0; n];
    for j in 1..=n {
        if p[j] > 0 {
            row_to_col[p[j] - 1] = j - 1;
        }
    }
    row_to_col
}

/// Largest assignment solved exactly (O(N³): N = 2048 takes seconds, 4096 about a minute).
pub const MAX_ASSIGNMENT: usize = 2048;

/// The exact OT cost for uniform a (1/m) and b (1/n) when one size divides the other and the
/// assignment has at most [`MAX_ASSIGNMENT`] rows; `None` otherwise.
pub fn exact_cost_uniform(a: &Tensor, b: &Tensor, c: &Tensor) -> Option<f64> {
    let (m, n) = (c.size()[0] as usize, c.size()[1] as usize);
    if m.max(n) > MAX_ASSIGNMENT {
        return None;
    }
    let uniform = |t: &Tensor, len: usize| f64::try_from((t - 1.0 / len as f64).abs().max()).is_ok_and(|d| d < 1e-12);
    if !uniform(a, m) || !uniform(b, n) {
        return None;
    }
    let cv = Vec::<f64>::try_from(c.to_kind(Kind::Double).to_device(tch::Device::Cpu).flatten(0, -1)).ok()?;
    let (size, at): (usize, Box<dyn Fn(usize, usize) -> f64>) = if m % n == 0 {
        let r = m / n;
        (m, Box::new(move |i, j| cv[i * n + j / r]))
    } else if n % m == 0 {
        let r = n / m;
        (n, Box::new(move |i, j| cv[(i / r) * n + j]))
    } else {
        return None;
    };
    let full: Vec<f64> = (0..size * size).map(|k| at(k / size, k % size)).collect();
    let matching = assignment(&full, size);
    Some(matching.iter().enumerate().map(|(i, &j)| full[i * size + j]).sum::<f64>() / size as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_is_optimal_against_brute_force() {
        let mut rng = crate::context::Rng::new(11);
        for n in 1..=6usize {
            let cost: Vec<f64> = (0..n * n).map(|_| rng.uniform()).collect();
            let got = assignment(&cost, n);
            let value = |perm: &[usize]| perm.iter().enumerate().map(|(i, &j)| cost[i * n + j]).sum::<f64>();
            let mut perm: Vec<usize> = (0..n).collect();
            let mut best = f64::INFINITY;
            permute(&mut perm, 0, &mut |p| best = best.min(value(p)));
            assert!((value(&got) - best).abs() < 1e-12, "n={n}");
        }
    }

    fn permute(v: &mut Vec<usize>, k: usize, f: &mut impl FnMut(&[usize])) {
        if k == v.len() {
            f(v);
            return;
        }
        for i in k..v.len() {
            v.swap(k, i);
            permute(v, k + 1, f);
            v.swap(k, i);
        }
    }

    #[test]
    fn replicated_columns_give_the_transport_cost() {
        // m = 4 sources, n = 2 targets: each target takes two sources.
        let a = Tensor::from_slice(&[0.25f64; 4]);
        let b = Tensor::from_slice(&[0.5f64; 2]);
        let c = Tensor::from_slice(&[0.0f64, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.2]).view([4, 2]);
        assert!((exact_cost_uniform(&a, &b, &c).unwrap() - 0.2 / 4.0).abs() < 1e-12);
        let c2 = Tensor::from_slice(&[0.0f64, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.2]).view([4, 2]);
        assert!((exact_cost_uniform(&a, &b, &c2).unwrap() - 1.2 / 4.0).abs() < 1e-12);
        assert!(exact_cost_uniform(&Tensor::from_slice(&[0.2f64, 0.8]), &b, &c.narrow(0, 0, 2)).is_none());
    }
}
