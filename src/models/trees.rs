//! CART regression trees and forests that expose their leaf membership, so that a tree or a
//! forest can be read as a linear smoother ŷ(x) = ŝ(x)ᵀ y_train (forest_smoothers).
//!
//! Growth follows scikit-learn's `DecisionTreeRegressor` with `max_leaf_nodes`: best-first — the
//! frontier node whose best split has the largest weighted impurity decrease
//! (W_node/W_total)·(imp − W_l/W_node·imp_l − W_r/W_node·imp_r) is split next — squared-error
//! impurity with sample weights, thresholds halfway between consecutive distinct values,
//! `min_samples_leaf` 1, no split of a node whose impurity is ≤ f64::EPSILON, and at each split
//! `max_features` features drawn without replacement (constant ones not counted). A forest draws
//! a bootstrap sample per tree as counts (weights); samples of weight 0 do not enter the tree, as
//! in sklearn's splitter. The random streams are reglab's, so the trees are sklearn's kind of
//! trees, not bit-for-bit sklearn's. No crate was used: linfa-trees (0.8) grows classification
//! trees depth-first under `max_depth`, with no regressor and no leaf budget, and no crate found
//! offers weighted best-first `max_leaf_nodes` regression with the leaf membership exposed.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::context::Rng;

/// Row-major samples: `n` rows of `d` features.
#[derive(Debug, Clone)]
pub struct Samples {
    pub d: usize,
    pub x: Vec<f64>,
}

impl Samples {
    pub fn new(d: usize, x: Vec<f64>) -> Self {
        assert!(d > 0 && x.len() % d == 0, "samples: {} values do not make rows of {d}", x.len());
        Samples { d, x }
    }
    pub fn len(&self) -> usize {
        self.x.len() / self.d
    }
    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }
    pub fn row(&self, i: usize) -> &[f64] {
        &self.x[i * self.d..(i + 1) * self.d]
    }
}

/// How a tree grows.
#[derive(Debug, Clone, Copy)]
pub struct TreeParams {
    /// Best-first growth up to this many leaves (None: until every leaf is pure or one sample).
    pub max_leaf_nodes: Option<usize>,
    /// Features tried per split (≤ d).
    pub max_features: usize,
}

#[derive(Debug, Clone)]
enum Node {
    Split { feature: usize, threshold: f64, left: usize, right: usize },
    Leaf { id: usize, value: f64 },
}

/// A fitted regression tree.
#[derive(Debug, Clone)]
pub struct Tree {
    nodes: Vec<Node>,
    leaves: usize,
}

/// A node waiting in the frontier with its best split (if any).
struct Pending {
    node: usize,
    samples: Vec<usize>,
    split: Option<BestSplit>,
    seq: usize,
}

#[derive(Debug, Clone, Copy)]
struct BestSplit {
    feature: usize,
    threshold: f64,
    improvement: f64,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    /// Largest improvement first; among equals, the node that entered the frontier first.
    fn cmp(&self, other: &Self) -> Ordering {
        let a = self.split.map_or(f64::NEG_INFINITY, |s| s.improvement);
        let b = other.split.map_or(f64::NEG_INFINITY, |s| s.improvement);
        a.total_cmp(&b).then(other.seq.cmp(&self.seq))
    }
}

fn weighted_stats(samples: &[usize], y: &[f64], w: &[f64]) -> (f64, f64, f64) {
    samples.iter().fold((0.0, 0.0, 0.0), |(sw, swy, swy2), &i| (sw + w[i], swy + w[i] * y[i], swy2 + w[i] * y[i] * y[i]))
}

/// Weighted mean squared deviation from the weighted mean.
fn impurity(sw: f64, swy: f64, swy2: f64) -> f64 {
    (swy2 / sw - (swy / sw).powi(2)).max(0.0)
}

/// sklearn's threshold for "two feature values differ".
const FEATURE_THRESHOLD: f64 = 1e-7;

fn best_split(x: &Samples, y: &[f64], w: &[f64], samples: &[usize], total_weight: f64, max_features: usize, rng: &mut Rng) -> Option<BestSplit> {
    if samples.len() < 2 {
        return None;
    }
    let (sw, swy, swy2) = weighted_stats(samples, y, w);
    let node_imp = impurity(sw, swy, swy2);
    if node_imp <= f64::EPSILON {
        return None;
    }
    let mut features: Vec<usize> = (0..x.d).collect();
    rng.shuffle(&mut features);
    let mut best: Option<BestSplit> = None;
    let mut tried = 0;
    let mut order: Vec<usize> = samples.to_vec();
    for &f in &features {
        if tried >= max_features {
            break;
        }
        order.sort_by(|&a, &b| x.row(a)[f].total_cmp(&x.row(b)[f]).then(a.cmp(&b)));
        let lo = x.row(order[0])[f];
        let hi = x.row(order[order.len() - 1])[f];
        if hi <= lo + FEATURE_THRESHOLD {
            continue; // constant in this node: does not count
        }
        tried += 1;
        let (mut lw, mut lwy, mut lwy2) = (0.0, 0.0, 0.0);
        for p in 1..order.len() {
            let i = order[p - 1];
            lw += w[i];
            lwy += w[i] * y[i];
            lwy2 += w[i] * y[i] * y[i];
            let (a, b) = (x.row(i)[f], x.row(order[p])[f]);
            if b <= a + FEATURE_THRESHOLD {
                continue;
            }
            let (rw, rwy, rwy2) = (sw - lw, swy - lwy, swy2 - lwy2);
            let imp_l = impurity(lw, lwy, lwy2);
            let imp_r = impurity(rw, rwy, rwy2);
            let improvement = sw / total_weight * (node_imp - lw / sw * imp_l - rw / sw * imp_r);
            if best.is_none_or(|bs| improvement > bs.improvement) {
                let mut threshold = a / 2.0 + b / 2.0;
                if threshold == b {
                    threshold = a;
                }
                best = Some(BestSplit { feature: f, threshold, improvement });
            }
        }
    }
    best
}

impl Tree {
    /// Fits a tree to (x, y) with sample weights `w` (bootstrap counts; 0 leaves a sample out).
    pub fn fit(x: &Samples, y: &[f64], w: &[f64], params: TreeParams, rng: &mut Rng) -> Tree {
        assert_eq!(x.len(), y.len());
        assert_eq!(x.len(), w.len());
        let max_features = params.max_features.clamp(1, x.d);
        let root: Vec<usize> = (0..x.len()).filter(|&i| w[i] > 0.0).collect();
        assert!(!root.is_empty(), "a tree needs at least one sample of positive weight");
        let total = weighted_stats(&root, y, w).0;
        let max_leaves = params.max_leaf_nodes.unwrap_or(usize::MAX).max(1);
        let mut nodes: Vec<Node> = vec![Node::Leaf { id: 0, value: 0.0 }];
        let mut heap = BinaryHeap::new();
        let mut seq = 0;
        let split = best_split(x, y, w, &root, total, max_features, rng);
        heap.push(Pending { node: 0, samples: root, split, seq });
        let mut leaves = 1;
        let mut leaf_id = 0;
        while let Some(p) = heap.pop() {
            let can_split = leaves < max_leaves;
            match p.split.filter(|_| can_split) {
                Some(s) => {
                    let (left_s, right_s): (Vec<usize>, Vec<usize>) = p.samples.iter().partition(|&&i| x.row(i)[s.feature] <= s.threshold);
                    let (l, r) = (nodes.len(), nodes.len() + 1);
                    nodes.push(Node::Leaf { id: 0, value: 0.0 });
                    nodes.push(Node::Leaf { id: 0, value: 0.0 });
                    nodes[p.node] = Node::Split { feature: s.feature, threshold: s.threshold, left: l, right: r };
                    leaves += 1;
                    for (node, samples) in [(l, left_s), (r, right_s)] {
                        seq += 1;
                        let split = best_split(x, y, w, &samples, total, max_features, rng);
                        heap.push(Pending { node, samples, split, seq });
                    }
                }
                None => {
                    let (sw, swy, _) = weighted_stats(&p.samples, y, w);
                    nodes[p.node] = Node::Leaf { id: leaf_id, value: swy / sw };
                    leaf_id += 1;
                }
            }
        }
        Tree { nodes, leaves: leaf_id }
    }

    pub fn n_leaves(&self) -> usize {
        self.leaves
    }

    /// (leaf id, leaf value) of the leaf `row` falls in.
    fn descend(&self, row: &[f64]) -> (usize, f64) {
        let mut at = 0;
        loop {
            match self.nodes[at] {
                Node::Split { feature, threshold, left, right } => at = if row[feature] <= threshold { left } else { right },
                Node::Leaf { id, value } => return (id, value),
            }
        }
    }

    /// The leaf (0..n_leaves) that `row` falls in.
    pub fn leaf(&self, row: &[f64]) -> usize {
        self.descend(row).0
    }

    /// The tree's prediction: the weighted mean of the training targets in the leaf.
    pub fn predict(&self, row: &[f64]) -> f64 {
        self.descend(row).1
    }

    /// Adds this tree's smoother rows for `eval` to `s` (row-major |eval| × n_train), scaled by
    /// `scale`: s_i,j += scale · w_j·1[leaf(x_j) = leaf(x_i)] / Σ_k w_k·1[leaf(x_k) = leaf(x_i)].
    pub fn add_smoother(&self, train: &Samples, w: &[f64], eval: &Samples, scale: f64, s: &mut [f64]) {
        let n = train.len();
        let mut members: Vec<Vec<usize>> = vec![vec![]; self.leaves];
        let mut leaf_weight = vec![0.0; self.leaves];
        for j in 0..n {
            if w[j] > 0.0 {
                let l = self.leaf(train.row(j));
                members[l].push(j);
                leaf_weight[l] += w[j];
            }
        }
        for i in 0..eval.len() {
            let l = self.leaf(eval.row(i));
            for &j in &members[l] {
                s[i * n + j] += scale * w[j] / leaf_weight[l];
            }
        }
    }
}

/// How a forest is built.
#[derive(Debug, Clone, Copy)]
pub struct ForestParams {
    pub trees: usize,
    pub bootstrap: bool,
    pub tree: TreeParams,
}

/// A fitted forest: its trees and each tree's sample weights (bootstrap counts, or all 1).
#[derive(Debug, Clone)]
pub struct Forest {
    pub trees: Vec<Tree>,
    pub weights: Vec<Vec<f64>>,
}

impl Forest {
    pub fn fit(x: &Samples, y: &[f64], params: ForestParams, rng: &mut Rng) -> Forest {
        let n = x.len();
        let mut trees = vec![];
        let mut weights = vec![];
        for _ in 0..params.trees.max(1) {
            let mut w = vec![0.0; n];
            if params.bootstrap {
                for _ in 0..n {
                    w[rng.below(n as u64) as usize] += 1.0;
                }
            } else {
                w.iter_mut().for_each(|v| *v = 1.0);
            }
            trees.push(Tree::fit(x, y, &w, params.tree, rng));
            weights.push(w);
        }
        Forest { trees, weights }
    }

    /// The mean of the trees' predictions.
    pub fn predict(&self, row: &[f64]) -> f64 {
        self.trees.iter().map(|t| t.predict(row)).sum::<f64>() / self.trees.len() as f64
    }

    /// The forest's smoother on `eval`: the mean of its trees' (rows sum to 1), row-major
    /// |eval| × n_train.
    pub fn smoother(&self, train: &Samples, eval: &Samples) -> Vec<f64> {
        let mut s = vec![0.0; eval.len() * train.len()];
        let scale = 1.0 / self.trees.len() as f64;
        for (t, w) in self.trees.iter().zip(&self.weights) {
            t.add_smoother(train, w, eval, scale, &mut s);
        }
        s
    }
}

/// The effective number of parameters on an input set: p̂ = (n_train/|I|) Σ_i ‖ŝ(x_i)‖².
pub fn effective_parameters(s: &[f64], n_train: usize) -> f64 {
    let rows = s.len() / n_train;
    n_train as f64 / rows as f64 * s.iter().map(|v| v * v).sum::<f64>()
}

/// S·y for a row-major smoother.
pub fn smooth(s: &[f64], y: &[f64]) -> Vec<f64> {
    s.chunks(y.len()).map(|row| row.iter().zip(y).map(|(a, b)| a * b).sum()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, d: usize, seed: u64) -> (Samples, Vec<f64>) {
        let mut rng = Rng::new(seed);
        let x: Vec<f64> = (0..n * d).map(|_| rng.uniform()).collect();
        let x = Samples::new(d, x);
        let y = (0..n).map(|i| 3.0 * x.row(i)[0] + (6.0 * x.row(i)[1]).sin() + 0.3 * rng.normal()).collect();
        (x, y)
    }

    fn all(n: usize) -> Vec<f64> {
        vec![1.0; n]
    }

    #[test]
    fn rows_sum_to_one_and_s_times_y_is_the_prediction() {
        let (x, y) = data(120, 4, 1);
        let (xt, _) = data(60, 4, 2);
        let forest = Forest::fit(&x, &y, ForestParams { trees: 7, bootstrap: true, tree: TreeParams { max_leaf_nodes: Some(15), max_features: 2 } }, &mut Rng::new(3));
        for eval in [&x, &xt] {
            let s = forest.smoother(&x, eval);
            for (i, row) in s.chunks(x.len()).enumerate() {
                assert!(row.iter().all(|v| *v >= 0.0));
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
                let pred = smooth(&s, &y)[i];
                assert!((pred - forest.predict(eval.row(i))).abs() < 1e-10, "{pred} vs {}", forest.predict(eval.row(i)));
            }
        }
        // Out-of-bag training points get no weight from a tree.
        let (tree, w) = (&forest.trees[0], &forest.weights[0]);
        assert_eq!(w.iter().sum::<f64>(), x.len() as f64, "bootstrap counts sum to n");
        let mut s = vec![0.0; x.len() * x.len()];
        tree.add_smoother(&x, w, &x, 1.0, &mut s);
        for (j, wj) in w.iter().enumerate() {
            if *wj == 0.0 {
                assert!(s.chunks(x.len()).all(|row| row[j] == 0.0));
            }
        }
    }

    #[test]
    fn best_first_growth_stops_at_the_leaf_budget_and_picks_the_largest_decrease_first() {
        let (x, y) = data(200, 3, 4);
        for leaves in [1, 2, 5, 17, 64] {
            let t = Tree::fit(&x, &y, &all(200), TreeParams { max_leaf_nodes: Some(leaves), max_features: 3 }, &mut Rng::new(0));
            assert_eq!(t.n_leaves(), leaves);
        }
        // A step in feature 1 far larger than the slope in feature 0: the first split is on it.
        let x = Samples::new(2, (0..100).flat_map(|i| [i as f64 / 100.0, (i % 2) as f64]).collect());
        let y: Vec<f64> = (0..100).map(|i| i as f64 / 100.0 + 10.0 * (i % 2) as f64).collect();
        let t = Tree::fit(&x, &y, &all(100), TreeParams { max_leaf_nodes: Some(2), max_features: 2 }, &mut Rng::new(0));
        assert!(matches!(t.nodes[0], Node::Split { feature: 1, threshold, .. } if threshold == 0.5));
    }

    #[test]
    fn a_fully_grown_tree_interpolates_and_equal_leaves_give_p_equal_k() {
        let (x, y) = data(150, 3, 5);
        let t = Tree::fit(&x, &y, &all(150), TreeParams { max_leaf_nodes: None, max_features: 3 }, &mut Rng::new(0));
        assert_eq!(t.n_leaves(), 150, "distinct inputs: one sample per leaf");
        let mut s = vec![0.0; 150 * 150];
        t.add_smoother(&x, &all(150), &x, 1.0, &mut s);
        assert!((effective_parameters(&s, 150) - 150.0).abs() < 1e-9, "S_train = I");
        // Any tree without bootstrap: p̂_train = Σ_leaves Σ_{i∈leaf} 1/|leaf| = #leaves.
        for k in [4, 10, 33] {
            let t = Tree::fit(&x, &y, &all(150), TreeParams { max_leaf_nodes: Some(k), max_features: 3 }, &mut Rng::new(1));
            let mut s = vec![0.0; 150 * 150];
            t.add_smoother(&x, &all(150), &x, 1.0, &mut s);
            assert!((effective_parameters(&s, 150) - k as f64).abs() < 1e-9);
        }
    }

    #[test]
    fn a_forest_has_no_more_effective_parameters_than_its_trees_on_average() {
        // Jensen: ‖(1/B) Σ s_b‖² ≤ (1/B) Σ ‖s_b‖², row by row.
        let (x, y) = data(100, 5, 6);
        let (xt, _) = data(80, 5, 7);
        let forest = Forest::fit(&x, &y, ForestParams { trees: 10, bootstrap: true, tree: TreeParams { max_leaf_nodes: Some(30), max_features: 2 } }, &mut Rng::new(8));
        for eval in [&x, &xt] {
            let p_forest = effective_parameters(&forest.smoother(&x, eval), 100);
            let p_trees: f64 = forest
                .trees
                .iter()
                .zip(&forest.weights)
                .map(|(t, w)| {
                    let mut s = vec![0.0; eval.len() * 100];
                    t.add_smoother(&x, w, eval, 1.0, &mut s);
                    effective_parameters(&s, 100)
                })
                .sum::<f64>()
                / 10.0;
            assert!(p_forest <= p_trees + 1e-9 && p_forest < 0.9 * p_trees, "{p_forest} vs {p_trees}");
        }
    }

    #[test]
    fn weights_act_as_repeated_samples() {
        // Weight 2 on a sample is the same tree as the sample twice.
        let (x, y) = data(40, 2, 9);
        let mut w = all(40);
        w[3] = 2.0;
        w[7] = 0.0;
        let t = Tree::fit(&x, &y, &w, TreeParams { max_leaf_nodes: Some(6), max_features: 2 }, &mut Rng::new(0));
        let mut rows: Vec<f64> = vec![];
        let mut ys = vec![];
        for i in (0..40).filter(|&i| i != 7) {
            for _ in 0..(if i == 3 { 2 } else { 1 }) {
                rows.extend_from_slice(x.row(i));
                ys.push(y[i]);
            }
        }
        let xr = Samples::new(2, rows);
        let t2 = Tree::fit(&xr, &ys, &all(ys.len()), TreeParams { max_leaf_nodes: Some(6), max_features: 2 }, &mut Rng::new(0));
        for i in 0..40 {
            assert!((t.predict(x.row(i)) - t2.predict(x.row(i))).abs() < 1e-12);
        }
    }
}
