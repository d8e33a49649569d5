//! Retrieval metrics over an embedding set: Recall@1 and the threshold-consistency measures OPIS
//! and ε-OPIS (Zhang et al., arXiv 2307.04047).
//!
//! Similarities are cosine (rows L2-normalised here). OPIS follows our note's recipe, which the
//! paper's abstract fixes only in outline (no official code could be read): for each class i the
//! pairs anchored at its samples — genuine (another sample of class i) and impostor (a sample of
//! another class) — give TAR_i(d) and FAR_i(d) at threshold d, a utility U_i(d) = harmonic mean of
//! TAR_i and TNR_i = 1 − FAR_i, and Ū(d) the same from all pairs pooled. Thresholds are a uniform
//! grid over the range where the pooled FAR runs from `far_max` down to `far_min`, and
//! OPIS = mean_i ∫ (U_i − Ū)² dd / (d_max − d_min) by the trapezoid rule. ε-OPIS ranks classes by
//! their mean U_i over the grid and integrates the squared gap between the mean U of the worst and
//! of the best ⌈εT⌉ classes. Both are 0 when every class sees the same genuine and impostor
//! similarity distributions: one threshold then serves every class equally.

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// Cosine similarities of every pair of rows, [N, N] in f64.
pub fn cosine_similarities(embeddings: &Tensor) -> Tensor {
    let e = embeddings.to_kind(Kind::Double);
    let e = &e / e.norm_scalaropt_dim(2.0, [1].as_slice(), true).clamp_min(1e-12);
    let s = e.matmul(&e.tr());
    // exactly symmetric, so that a pair counts the same in both orders at a threshold equal to it
    (&s + s.tr()) * 0.5
}

/// Fraction of samples whose nearest other sample (cosine) has the same label.
pub fn recall_at_1(embeddings: &Tensor, labels: &Tensor) -> f64 {
    let n = embeddings.size()[0];
    let sims = cosine_similarities(embeddings);
    let eye = Tensor::eye(n, (Kind::Bool, sims.device()));
    let nearest = sims.masked_fill(&eye, f64::NEG_INFINITY).argmax(1, false);
    let hit = labels.index_select(0, &nearest).eq_tensor(labels);
    hit.to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}

/// OPIS and ε-OPIS of one embedding set, with the threshold range they were integrated over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Consistency {
    pub opis: f64,
    pub eps_opis: f64,
    pub d_min: f64,
    pub d_max: f64,
}

/// Settings of [`threshold_consistency`]: the pooled-FAR range that fixes the thresholds, how many
/// thresholds, and ε for ε-OPIS.
#[derive(Debug, Clone, Copy)]
pub struct OpisSettings {
    pub far_min: f64,
    pub far_max: f64,
    pub thresholds: usize,
    pub eps: f64,
}

impl Default for OpisSettings {
    /// The note's: pooled FAR in [10⁻³, 10⁻¹], 100 thresholds, ε = 0.1.
    fn default() -> Self {
        OpisSettings { far_min: 1e-3, far_max: 1e-1, thresholds: 100, eps: 0.1 }
    }
}

/// Fraction of the sorted `values` that are ≥ each threshold of `grid`.
fn fraction_at_least(sorted: &Tensor, grid: &Tensor) -> Vec<f64> {
    let n = sorted.size()[0] as f64;
    let below = grid.searchsorted(sorted, false, false, "left", None::<Tensor>);
    let frac = (below.to_kind(Kind::Double) / n).neg() + 1.0;
    Vec::<f64>::try_from(frac).expect("f64 vector")
}

/// Harmonic mean of TAR and TNR = 1 − FAR (0 where both are 0).
fn utility(tar: f64, far: f64) -> f64 {
    let tnr = 1.0 - far;
    if tar + tnr > 0.0 {
        2.0 * tar * tnr / (tar + tnr)
    } else {
        0.0
    }
}

/// ∫ f dd / (d_max − d_min) on a uniform grid by the trapezoid rule (the value itself on a
/// one-point grid).
fn normalised_trapezoid(f: &[f64]) -> f64 {
    if f.len() == 1 {
        return f[0];
    }
    let inner: f64 = f[1..f.len() - 1].iter().sum();
    (inner + 0.5 * (f[0] + f[f.len() - 1])) / (f.len() - 1) as f64
}

/// The `q`-quantile of sorted values (the nearest order statistic below).
fn order_statistic(sorted: &Tensor, q: f64) -> f64 {
    let n = sorted.size()[0];
    let i = ((q * (n - 1) as f64).floor() as i64).clamp(0, n - 1);
    sorted.double_value(&[i])
}

/// OPIS and ε-OPIS (module doc) of `embeddings` [N, E] with integer `labels` [N]. Needs ≥ 2 classes
/// and a class with ≥ 2 samples.
pub fn threshold_consistency(embeddings: &Tensor, labels: &Tensor, s: OpisSettings) -> Result<Consistency> {
    if !(0.0 < s.far_min && s.far_min < s.far_max && s.far_max < 1.0) || s.thresholds == 0 || !(s.eps > 0.0 && s.eps <= 0.5) {
        bail!("OPIS needs 0 < far_min < far_max < 1, at least one threshold and ε in (0, 0.5]");
    }
    let n = embeddings.size()[0];
    let sims = cosine_similarities(embeddings);
    let dev = sims.device();
    let labels = labels.to_device(dev);
    let same = labels.unsqueeze(1).eq_tensor(&labels.unsqueeze(0));
    let offdiag = Tensor::eye(n, (Kind::Bool, dev)).logical_not();
    let genuine_mask = same.logical_and(&offdiag);
    let impostor_mask = same.logical_not();
    let pooled_genuine = sims.masked_select(&genuine_mask).sort(0, false).0;
    let pooled_impostor = sims.masked_select(&impostor_mask).sort(0, false).0;
    if pooled_genuine.numel() == 0 || pooled_impostor.numel() == 0 {
        bail!("OPIS needs at least two classes and a class with two samples");
    }
    // The pooled FAR is far_max at the (1 − far_max)-quantile of the impostor similarities.
    let d_min = order_statistic(&pooled_impostor, 1.0 - s.far_max);
    let d_max = order_statistic(&pooled_impostor, 1.0 - s.far_min);
    let k = s.thresholds;
    let grid: Vec<f64> = (0..k).map(|i| if k == 1 { d_min } else { d_min + (d_max - d_min) * i as f64 / (k - 1) as f64 }).collect();
    let grid_t = Tensor::from_slice(&grid).to_device(dev);
    let utilities = |genuine: &Tensor, impostor: &Tensor| -> Vec<f64> {
        let tar = fraction_at_least(genuine, &grid_t);
        let far = fraction_at_least(impostor, &grid_t);
        tar.iter().zip(&far).map(|(t, f)| utility(*t, *f)).collect()
    };
    let pooled = utilities(&pooled_genuine, &pooled_impostor);
    let classes = Vec::<i64>::try_from(labels.unique_dim(0, true, false, false).0.to_kind(Kind::Int64))?;
    let mut per_class = Vec::new();
    for c in &classes {
        // The class's rows alone, in order: the same elements, in the same order, as masking the
        // whole N×N matrix with the class's rows (and a class's share of the work).
        let rows = labels.eq(*c).nonzero().squeeze_dim(1);
        let class_sims = sims.index_select(0, &rows);
        let genuine = class_sims.masked_select(&genuine_mask.index_select(0, &rows)).sort(0, false).0;
        let impostor = class_sims.masked_select(&impostor_mask.index_select(0, &rows)).sort(0, false).0;
        if genuine.numel() == 0 {
            continue; // a singleton class has no genuine pair: no TAR to speak of
        }
        per_class.push(utilities(&genuine, &impostor));
    }
    let t = per_class.len();
    let opis = per_class
        .iter()
        .map(|u| normalised_trapezoid(&u.iter().zip(&pooled).map(|(a, b)| (a - b).powi(2)).collect::<Vec<_>>()))
        .sum::<f64>()
        / t as f64;
    let mut order: Vec<usize> = (0..t).collect();
    let mean_u = |u: &Vec<f64>| u.iter().sum::<f64>() / u.len() as f64;
    order.sort_by(|&a, &b| mean_u(&per_class[a]).total_cmp(&mean_u(&per_class[b])).then(a.cmp(&b)));
    let m = ((s.eps * t as f64).ceil() as usize).clamp(1, t);
    let average = |idx: &[usize]| -> Vec<f64> { (0..k).map(|j| idx.iter().map(|&i| per_class[i][j]).sum::<f64>() / idx.len() as f64).collect() };
    let (worst, best) = (average(&order[..m]), average(&order[t - m..]));
    let eps_opis = normalised_trapezoid(&worst.iter().zip(&best).map(|(a, b)| (a - b).powi(2)).collect::<Vec<_>>());
    Ok(Consistency { opis, eps_opis, d_min, d_max })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Cyclic shifts of one 0/1 pattern in R^N, point p shifted by p and in class p mod T: shifting
    /// every point by one more maps the set onto itself and class c onto c + 1, so every class sees
    /// the same similarities. The nonzero products are all the same float, so every cosine is
    /// computed exactly and the symmetry holds bit for bit.
    fn circulant(classes: i64, per_class: i64) -> (Tensor, Tensor) {
        let n = (classes * per_class) as usize;
        let ones = [0usize, 1, 2, 5, 9, 14, 20, 27];
        let mut x = vec![0.0f64; n * n];
        for p in 0..n {
            for &o in &ones {
                x[p * n + (o + p) % n] = 1.0;
            }
        }
        (Tensor::from_slice(&x).view([n as i64, n as i64]), Tensor::arange(n as i64, (Kind::Int64, Device::Cpu)).remainder(classes))
    }

    #[test]
    fn classes_related_by_a_symmetry_have_zero_opis_whatever_their_recall() {
        let (e, y) = circulant(5, 8);
        let c = threshold_consistency(&e, &y, OpisSettings { far_min: 0.05, far_max: 0.5, thresholds: 50, eps: 0.2 }).unwrap();
        assert_eq!((c.opis, c.eps_opis), (0.0, 0.0), "{c:?}");
        assert!(c.d_max > c.d_min, "{c:?}");
        // Breaking the symmetry (one point moved) makes it inconsistent.
        let moved = e.copy();
        let _ = moved.get(3).fill_(0.0).get(7).fill_(1.0);
        let c2 = threshold_consistency(&moved, &y, OpisSettings { far_min: 0.05, far_max: 0.5, thresholds: 50, eps: 0.2 }).unwrap();
        assert!(c2.opis > 0.0, "{c2:?}");
    }

    #[test]
    fn separated_classes_have_recall_one_and_a_tighter_class_moves_opis() {
        // Three classes around orthogonal axes; class 2 is spread wider than 0 and 1.
        let mut x = vec![];
        let mut y = vec![];
        let mut rng = crate::context::Rng::new(7);
        for c in 0..3usize {
            let spread = if c == 2 { 0.6 } else { 0.15 };
            for _ in 0..30 {
                let mut v = [0.0f64; 3];
                v[c] = 1.0;
                for vi in v.iter_mut() {
                    *vi += spread * rng.normal();
                }
                x.extend_from_slice(&v);
                y.push(c as i64);
            }
        }
        let e = Tensor::from_slice(&x).view([90, 3]);
        let y = Tensor::from_slice(&y);
        // Recall@1 is 1 for well separated clusters: check it on the tight classes alone.
        let tight = y.lt(2);
        let (et, yt) = (e.index_select(0, &tight.nonzero().squeeze_dim(1)), y.masked_select(&tight));
        assert_eq!(recall_at_1(&et, &yt), 1.0);
        let s = OpisSettings { far_min: 0.01, far_max: 0.2, thresholds: 60, eps: 0.3 };
        let c = threshold_consistency(&e, &y, s).unwrap();
        // The wide class's TAR falls at thresholds where the tight ones' is still 1: inconsistent.
        assert!(c.opis > 1e-3 && c.eps_opis > c.opis, "{c:?}");
        // Rescaling the embeddings changes nothing (cosine similarity).
        let c2 = threshold_consistency(&(&e * 3.5), &y, s).unwrap();
        assert!((c.opis - c2.opis).abs() < 1e-12 && (c.eps_opis - c2.eps_opis).abs() < 1e-12);
    }

    /// The same quantities by plain counting over pairs, no sorting or tensors.
    fn opis_by_counting(e: &[[f64; 2]], y: &[i64], s: OpisSettings) -> (f64, f64) {
        let n = e.len();
        let cos = |a: &[f64; 2], b: &[f64; 2]| (a[0] * b[0] + a[1] * b[1]) / ((a[0].hypot(a[1])) * (b[0].hypot(b[1])));
        let mut impostor: Vec<f64> = vec![];
        for i in 0..n {
            for j in 0..n {
                if y[i] != y[j] {
                    impostor.push(cos(&e[i], &e[j]));
                }
            }
        }
        impostor.sort_by(f64::total_cmp);
        let q = |p: f64| impostor[((p * (impostor.len() - 1) as f64).floor()) as usize];
        let (lo, hi) = (q(1.0 - s.far_max), q(1.0 - s.far_min));
        let grid: Vec<f64> = (0..s.thresholds).map(|k| lo + (hi - lo) * k as f64 / (s.thresholds - 1) as f64).collect();
        let u_of = |anchor: &dyn Fn(usize) -> bool| -> Vec<f64> {
            grid.iter()
                .map(|&d| {
                    let (mut ga, mut gn, mut ia, mut inn) = (0.0, 0.0, 0.0, 0.0);
                    for i in (0..n).filter(|&i| anchor(i)) {
                        for j in 0..n {
                            let s = cos(&e[i], &e[j]);
                            if y[i] == y[j] && i != j {
                                gn += 1.0;
                                ga += (s >= d) as i32 as f64;
                            } else if y[i] != y[j] {
                                inn += 1.0;
                                ia += (s >= d) as i32 as f64;
                            }
                        }
                    }
                    let (tar, tnr) = (ga / gn, 1.0 - ia / inn);
                    2.0 * tar * tnr / (tar + tnr)
                })
                .collect()
        };
        let pooled = u_of(&|_| true);
        let classes = [0i64, 1, 2, 3];
        let per: Vec<Vec<f64>> = classes.iter().map(|&c| u_of(&|i| y[i] == c)).collect();
        let trap = |f: Vec<f64>| {
            let h = 1.0 / (f.len() - 1) as f64;
            (0..f.len() - 1).map(|k| 0.5 * h * (f[k] + f[k + 1])).sum::<f64>()
        };
        let opis = per.iter().map(|u| trap(u.iter().zip(&pooled).map(|(a, b)| (a - b) * (a - b)).collect())).sum::<f64>() / 4.0;
        let mean = |u: &Vec<f64>| u.iter().sum::<f64>() / u.len() as f64;
        let mut idx = [0usize, 1, 2, 3];
        idx.sort_by(|&a, &b| mean(&per[a]).total_cmp(&mean(&per[b])));
        // ε = 0.25 of 4 classes: the single worst against the single best.
        let eps = trap(per[idx[0]].iter().zip(&per[idx[3]]).map(|(a, b)| (a - b) * (a - b)).collect());
        (opis, eps)
    }

    #[test]
    fn matches_plain_pair_counting() {
        let mut rng = crate::context::Rng::new(3);
        let mut e = vec![];
        let mut y = vec![];
        for c in 0..4i64 {
            let centre = c as f64 * 1.3;
            let spread = 0.2 + 0.15 * c as f64;
            for _ in 0..9 {
                let a = centre + spread * rng.normal();
                e.push([a.cos() * (1.0 + rng.uniform()), a.sin() * (1.0 + rng.uniform())]);
                y.push(c);
            }
        }
        let s = OpisSettings { far_min: 0.02, far_max: 0.3, thresholds: 25, eps: 0.25 };
        let (opis, eps) = opis_by_counting(&e, &y, s);
        let flat: Vec<f64> = e.iter().flatten().copied().collect();
        let c = threshold_consistency(&Tensor::from_slice(&flat).view([36, 2]), &Tensor::from_slice(&y), s).unwrap();
        assert!(opis > 1e-3, "the toy should be inconsistent: {opis}");
        assert!((c.opis - opis).abs() < 1e-12 && (c.eps_opis - eps).abs() < 1e-12, "{c:?} vs {opis} {eps}");
    }

    #[test]
    fn utility_and_integration_on_known_values() {
        assert_eq!(utility(1.0, 0.0), 1.0);
        assert!((utility(0.5, 0.5) - 0.5).abs() < 1e-15);
        assert!((utility(0.8, 0.4) - 2.0 * 0.8 * 0.6 / 1.4).abs() < 1e-15);
        assert_eq!(utility(0.0, 1.0), 0.0);
        // ∫₀¹ t dt = ½ exactly on any uniform grid
        let f: Vec<f64> = (0..11).map(|k| k as f64 / 10.0).collect();
        assert!((normalised_trapezoid(&f) - 0.5).abs() < 1e-15);
        let sorted = Tensor::from_slice(&[0.1f64, 0.2, 0.2, 0.5]);
        assert_eq!(fraction_at_least(&sorted, &Tensor::from_slice(&[0.0f64, 0.2, 0.3, 0.6])), vec![1.0, 0.75, 0.25, 0.0]);
    }

    #[test]
    fn bad_settings_and_a_single_class_are_errors() {
        let (e, y) = circulant(3, 4);
        assert!(threshold_consistency(&e, &y, OpisSettings { far_min: 0.2, far_max: 0.1, ..Default::default() }).is_err());
        assert!(threshold_consistency(&e, &y.zeros_like(), OpisSettings::default()).is_err());
    }
}
