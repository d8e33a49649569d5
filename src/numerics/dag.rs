//! DAG structure: DAGMA's log-det acyclicity h_s(W) = −log det(sI − W∘W) + d log s (Bello et al.,
//! 2022) with its gradient 2 W ∘ (sI − W∘W)^{−T}, the DAG check and the `to_dag` post-processing of
//! a weighted adjacency, and the comparison of an estimated graph with the true one (SHD, TPR,
//! FDR as in NOTEARS' `count_accuracy`, which CoLiDE's `utils.py` reuses).

use anyhow::Result;

use super::dense::Mat;

/// h_s(W), ∇h_s(W) and M = (sI − W∘W)^{−1} (whose signs tell whether W is still inside the domain
/// where h_s ≥ 0 certifies acyclicity).
pub fn acyclicity(w: &Mat, s: f64) -> Result<(f64, Mat, Mat)> {
    let d = w.d;
    let mut a = Mat::eye(d);
    for (x, v) in a.a.iter_mut().zip(&w.a) {
        *x = *x * s - v * v;
    }
    let (_, logdet) = a.slogdet()?;
    let m = a.inverse()?;
    let mt = m.transpose();
    let grad = Mat { d, a: w.a.iter().zip(&mt.a).map(|(wv, mv)| 2.0 * wv * mv).collect() };
    Ok((-logdet + d as f64 * s.ln(), grad, m))
}

/// A topological order of the nonzero pattern of `w` (edge i → j where w_ij ≠ 0), or None if it
/// has a cycle (Kahn's algorithm).
pub fn topological_order(w: &Mat) -> Option<Vec<usize>> {
    let d = w.d;
    let mut indegree: Vec<usize> = (0..d).map(|j| (0..d).filter(|&i| w.at(i, j) != 0.0).count()).collect();
    let mut ready: Vec<usize> = (0..d).filter(|&j| indegree[j] == 0).collect();
    let mut order = Vec::with_capacity(d);
    while let Some(i) = ready.pop() {
        order.push(i);
        for j in 0..d {
            if w.at(i, j) != 0.0 {
                indegree[j] -= 1;
                if indegree[j] == 0 {
                    ready.push(j);
                }
            }
        }
    }
    (order.len() == d).then_some(order)
}

/// Whether the nonzero pattern of `w` has no cycle.
pub fn is_dag(w: &Mat) -> bool {
    topological_order(w).is_some()
}

/// The official post-processing: zero |w| ≤ threshold, then, while a cycle remains, drop the
/// weakest remaining edge.
pub fn to_dag(w: &Mat, threshold: f64) -> Mat {
    let mut out = w.clone();
    for v in out.a.iter_mut() {
        if v.abs() <= threshold {
            *v = 0.0;
        }
    }
    let mut edges: Vec<usize> = (0..out.a.len()).filter(|&k| out.a[k] != 0.0).collect();
    edges.sort_by(|&a, &b| out.a[a].abs().total_cmp(&out.a[b].abs()));
    let mut next = edges.into_iter();
    while !is_dag(&out) {
        match next.next() {
            Some(k) => out.a[k] = 0.0,
            None => break,
        }
    }
    out
}

/// How an estimated graph compares with the true one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GraphAccuracy {
    /// Structural Hamming distance: extra + missing skeleton edges + reversed edges.
    pub shd: usize,
    /// True positives / true edges.
    pub tpr: f64,
    /// (Reversed + false positives) / predicted edges.
    pub fdr: f64,
    /// Predicted edges.
    pub nnz: usize,
}

pub fn count_accuracy(est: &Mat, truth: &Mat) -> GraphAccuracy {
    let d = est.d;
    let e = |i: usize, j: usize| est.at(i, j) != 0.0;
    let t = |i: usize, j: usize| truth.at(i, j) != 0.0;
    let (mut tp, mut reversed, mut fp, mut nnz, mut cond) = (0, 0, 0, 0, 0);
    for i in 0..d {
        for j in 0..d {
            if t(i, j) {
                cond += 1;
            }
            if e(i, j) {
                nnz += 1;
                if t(i, j) {
                    tp += 1;
                } else if t(j, i) {
                    reversed += 1;
                } else {
                    fp += 1;
                }
            }
        }
    }
    let (mut extra, mut missing) = (0, 0);
    for i in 0..d {
        for j in i + 1..d {
            let (es, ts) = (e(i, j) || e(j, i), t(i, j) || t(j, i));
            extra += usize::from(es && !ts);
            missing += usize::from(ts && !es);
        }
    }
    GraphAccuracy {
        shd: extra + missing + reversed,
        tpr: tp as f64 / cond.max(1) as f64,
        fdr: (reversed + fp) as f64 / nnz.max(1) as f64,
        nnz,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Rng;

    #[test]
    fn h_is_zero_on_dags_positive_on_cycles_and_matches_the_two_node_closed_form() {
        let mut rng = Rng::new(0);
        let mut upper = Mat::zeros(6);
        for i in 0..6 {
            for j in i + 1..6 {
                upper.set(i, j, rng.normal());
            }
        }
        assert!(acyclicity(&upper, 1.0).unwrap().0.abs() < 1e-12);
        assert!(acyclicity(&upper, 0.7).unwrap().0.abs() < 1e-12);
        let (a, b, s) = (0.6, 0.5, 0.9);
        let cyc = Mat::from_rows(2, vec![0.0, a, b, 0.0]);
        let h = acyclicity(&cyc, s).unwrap().0;
        assert!(h > 0.0);
        assert!((h - (-(s * s - a * a * b * b).ln() + 2.0 * s.ln())).abs() < 1e-12);
    }

    #[test]
    fn the_gradient_of_h_matches_finite_differences() {
        let mut rng = Rng::new(1);
        let w = Mat::from_rows(5, (0..25).map(|_| 0.2 * rng.normal()).collect());
        let (_, grad, _) = acyclicity(&w, 1.0).unwrap();
        for k in 0..25 {
            let eps = 1e-6;
            let (mut up, mut down) = (w.clone(), w.clone());
            up.a[k] += eps;
            down.a[k] -= eps;
            let fd = (acyclicity(&up, 1.0).unwrap().0 - acyclicity(&down, 1.0).unwrap().0) / (2.0 * eps);
            assert!((fd - grad.a[k]).abs() < 1e-7, "entry {k}: {fd} vs {}", grad.a[k]);
        }
    }

    #[test]
    fn shd_counts_a_reversed_edge_once_and_missing_and_extra_edges_once() {
        // Truth 0→1, 1→2.
        let truth = Mat::from_rows(3, vec![0., 1., 0., 0., 0., 1., 0., 0., 0.]);
        assert_eq!(count_accuracy(&truth, &truth).shd, 0);
        let reversed = Mat::from_rows(3, vec![0., 0., 0., 1., 0., 1., 0., 0., 0.]);
        let acc = count_accuracy(&reversed, &truth);
        assert_eq!((acc.shd, acc.nnz), (1, 2));
        assert!((acc.tpr - 0.5).abs() < 1e-12 && (acc.fdr - 0.5).abs() < 1e-12);
        let missing = Mat::from_rows(3, vec![0., 1., 0., 0., 0., 0., 0., 0., 0.]);
        assert_eq!(count_accuracy(&missing, &truth).shd, 1);
        let extra = Mat::from_rows(3, vec![0., 1., 1., 0., 0., 1., 0., 0., 0.]);
        assert_eq!(count_accuracy(&extra, &truth).shd, 1);
    }

    #[test]
    fn to_dag_thresholds_then_breaks_cycles_at_the_weakest_edge() {
        let w = Mat::from_rows(3, vec![0.0, 1.0, 0.2, 0.0, 0.0, 0.9, 0.5, 0.0, 0.0]);
        assert!(!is_dag(&w));
        let dag = to_dag(&w, 0.3);
        assert!(is_dag(&dag));
        // 0.2 is thresholded; the cycle 0→1→2→0 loses its weakest edge, 2→0 (0.5).
        assert_eq!(dag.a, vec![0.0, 1.0, 0.0, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0]);
    }
}
