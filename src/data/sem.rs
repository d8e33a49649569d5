//! Linear structural equation models X = XW + E on random DAGs, as CoLiDE's `utils.simulate_sem`:
//! an Erdős–Rényi DAG with an expected number of edges (each pair of a random order joined with
//! probability 2·edges/(d² − d)), weights uniform in ±[0.5, 2], Gaussian noise with one variance
//! per node.

use crate::context::Rng;
use crate::numerics::dag::topological_order;
use crate::numerics::dense::Mat;

/// A random ER DAG's weighted adjacency (w_ij ≠ 0: edge i → j).
pub fn er_dag(d: usize, edges: f64, rng: &mut Rng) -> Mat {
    let p = (2.0 * edges / (d * d - d) as f64).min(1.0);
    let mut order: Vec<usize> = (0..d).collect();
    rng.shuffle(&mut order);
    let mut w = Mat::zeros(d);
    for a in 0..d {
        for b in a + 1..d {
            if rng.uniform() < p {
                let magnitude = 0.5 + 1.5 * rng.uniform();
                let sign = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
                w.set(order[a], order[b], sign * magnitude);
            }
        }
    }
    w
}

/// n samples (row-major n × d) of X = XW + E with E_j ~ N(0, variances[j]), by ancestral sampling.
pub fn sample(w: &Mat, variances: &[f64], n: usize, rng: &mut Rng) -> Vec<f64> {
    let d = w.d;
    assert_eq!(variances.len(), d);
    let order = topological_order(w).expect("the SEM's graph must be a DAG");
    let mut x = vec![0.0; n * d];
    for r in 0..n {
        for &j in &order {
            let parents: f64 = (0..d).map(|i| x[r * d + i] * w.at(i, j)).sum();
            x[r * d + j] = parents + variances[j].sqrt() * rng.normal();
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::dag::is_dag;

    #[test]
    fn the_graph_is_a_dag_with_the_expected_edges_and_the_noise_has_its_variances() {
        let mut rng = Rng::new(0);
        let mut total = 0;
        for _ in 0..50 {
            let w = er_dag(20, 40.0, &mut rng);
            assert!(is_dag(&w));
            assert!(w.a.iter().all(|v| *v == 0.0 || (0.5..=2.0).contains(&v.abs())));
            total += w.a.iter().filter(|v| **v != 0.0).count();
        }
        assert!((total as f64 / 50.0 - 40.0).abs() < 3.0, "{}", total as f64 / 50.0);
        let w = er_dag(6, 8.0, &mut rng);
        let vars = [0.5, 1.0, 2.0, 4.0, 8.0, 10.0];
        let n = 20000;
        let x = sample(&w, &vars, n, &mut rng);
        for j in 0..6 {
            // Residual of node j given its parents is its noise.
            let res: Vec<f64> = (0..n).map(|r| x[r * 6 + j] - (0..6).map(|i| x[r * 6 + i] * w.at(i, j)).sum::<f64>()).collect();
            let var = res.iter().map(|v| v * v).sum::<f64>() / n as f64;
            assert!((var / vars[j] - 1.0).abs() < 0.05, "node {j}: {var} vs {}", vars[j]);
        }
    }
}
