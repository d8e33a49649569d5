//! Linear structural equation models X = XW + E on random DAGs, as CoLiDE's (and NOTEARS')
//! `utils.simulate_dag` / `simulate_linear_sem`: an Erdős–Rényi DAG with an expected number of
//! edges (each pair of a random order joined with probability 2·edges/(d² − d)) or a scale-free
//! one (Barabási–Albert, m = round(edges/d) edges from each new node to earlier ones chosen with
//! probability ∝ degree + 1, igraph's default, then the labels permuted), weights uniform in
//! ±[0.5, 2], and noise with one scale per node: Gaussian N(0, s²), exponential (mean s), Gumbel
//! (location 0, scale s) or uniform on [−s, s] — numpy's parametrisations, as the official code
//! passes its `noise_scale`.

use serde::{Deserialize, Serialize};

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

/// A random scale-free DAG: Barabási–Albert growth with `round(edges/d)` (at least 1) edges from
/// each new node to distinct earlier nodes, drawn ∝ (degree + 1), then the node labels permuted.
pub fn sf_dag(d: usize, edges: f64, rng: &mut Rng) -> Mat {
    let m = ((edges / d as f64).round() as usize).max(1);
    let mut degree = vec![0usize; d];
    let mut w = Mat::zeros(d);
    let mut label: Vec<usize> = (0..d).collect();
    rng.shuffle(&mut label);
    for t in 1..d {
        let mut chosen: Vec<usize> = Vec::with_capacity(m.min(t));
        while chosen.len() < m.min(t) {
            let weights: Vec<f64> = (0..t).map(|i| if chosen.contains(&i) { 0.0 } else { (degree[i] + 1) as f64 }).collect();
            let total: f64 = weights.iter().sum();
            let mut u = rng.uniform() * total;
            let mut pick = t - 1;
            for (i, wi) in weights.iter().enumerate() {
                if *wi > 0.0 && u < *wi {
                    pick = i;
                    break;
                }
                u -= wi;
            }
            if chosen.contains(&pick) {
                continue; // only on rounding at the very end of the range
            }
            chosen.push(pick);
        }
        for &i in &chosen {
            degree[i] += 1;
            degree[t] += 1;
            let magnitude = 0.5 + 1.5 * rng.uniform();
            let sign = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
            w.set(label[t], label[i], sign * magnitude);
        }
    }
    w
}

/// The graph family of [`random_dag`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Graph {
    Er,
    Sf,
}

pub fn random_dag(graph: Graph, d: usize, edges: f64, rng: &mut Rng) -> Mat {
    match graph {
        Graph::Er => er_dag(d, edges, rng),
        Graph::Sf => sf_dag(d, edges, rng),
    }
}

/// The noise distribution of [`sample_with`], each with a scale s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseDist {
    /// N(0, s²).
    Gaussian,
    /// Exponential with mean s (not centred, as numpy's `exponential(scale)`).
    Exponential,
    /// Gumbel(0, s).
    Gumbel,
    /// U(−s, s).
    Uniform,
}

impl NoiseDist {
    pub fn draw(self, scale: f64, rng: &mut Rng) -> f64 {
        match self {
            NoiseDist::Gaussian => scale * rng.normal(),
            NoiseDist::Exponential => -scale * rng.uniform().max(f64::MIN_POSITIVE).ln(),
            NoiseDist::Gumbel => -scale * (-rng.uniform().max(f64::MIN_POSITIVE).ln()).ln(),
            NoiseDist::Uniform => scale * (2.0 * rng.uniform() - 1.0),
        }
    }

    /// The variance of a draw at scale s.
    pub fn variance(self, scale: f64) -> f64 {
        let s2 = scale * scale;
        match self {
            NoiseDist::Gaussian | NoiseDist::Exponential => s2,
            NoiseDist::Gumbel => std::f64::consts::PI.powi(2) / 6.0 * s2,
            NoiseDist::Uniform => s2 / 3.0,
        }
    }
}

/// n samples (row-major n × d) of X = XW + E with E_j ~ N(0, variances[j]), by ancestral sampling.
pub fn sample(w: &Mat, variances: &[f64], n: usize, rng: &mut Rng) -> Vec<f64> {
    let scales: Vec<f64> = variances.iter().map(|v| v.sqrt()).collect();
    sample_with(w, &scales, NoiseDist::Gaussian, n, rng)
}

/// n samples of X = XW + E with E_j drawn from `noise` at `scales[j]`, by ancestral sampling.
pub fn sample_with(w: &Mat, scales: &[f64], noise: NoiseDist, n: usize, rng: &mut Rng) -> Vec<f64> {
    let d = w.d;
    assert_eq!(scales.len(), d);
    let order = topological_order(w).expect("the SEM's graph must be a DAG");
    let mut x = vec![0.0; n * d];
    for r in 0..n {
        for &j in &order {
            let parents: f64 = (0..d).map(|i| x[r * d + i] * w.at(i, j)).sum();
            x[r * d + j] = parents + noise.draw(scales[j], rng);
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

    #[test]
    fn scale_free_graphs_are_dags_with_m_edges_per_new_node_and_a_heavy_hub() {
        let mut rng = Rng::new(3);
        let (d, m) = (50, 2);
        let mut max_degree = 0;
        for _ in 0..20 {
            let w = sf_dag(d, (m * d) as f64, &mut rng);
            assert!(is_dag(&w));
            let edges = w.a.iter().filter(|v| **v != 0.0).count();
            assert_eq!(edges, 1 + m * (d - 2), "node 1 has one earlier node, every later node m");
            let deg: Vec<usize> = (0..d).map(|i| (0..d).filter(|&j| w.at(i, j) != 0.0 || w.at(j, i) != 0.0).count()).collect();
            max_degree = max_degree.max(*deg.iter().max().unwrap());
        }
        // Preferential attachment grows hubs far above the mean degree 2m ≈ 4 (ER at this density
        // rarely exceeds 10).
        assert!(max_degree >= 14, "largest degree {max_degree}");
        assert_eq!(random_dag(Graph::Er, 5, 0.0, &mut rng).a.iter().filter(|v| **v != 0.0).count(), 0);
    }

    #[test]
    fn noise_draws_have_numpy_s_moments() {
        let mut rng = Rng::new(5);
        let n = 200_000;
        for (dist, mean) in [(NoiseDist::Gaussian, 0.0), (NoiseDist::Exponential, 1.5), (NoiseDist::Gumbel, 1.5 * 0.5772156649), (NoiseDist::Uniform, 0.0)] {
            let xs: Vec<f64> = (0..n).map(|_| dist.draw(1.5, &mut rng)).collect();
            let m = xs.iter().sum::<f64>() / n as f64;
            let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64;
            assert!((m - mean).abs() < 0.02, "{dist:?} mean {m} vs {mean}");
            assert!((v / dist.variance(1.5) - 1.0).abs() < 0.03, "{dist:?} variance {v} vs {}", dist.variance(1.5));
        }
        assert!((0..1000).all(|_| NoiseDist::Uniform.draw(2.0, &mut rng).abs() <= 2.0));
    }
}
