//! Top-K ranking over a full item catalogue, Recall@K / NDCG@K, and the BPR pairwise loss.
//!
//! Every item is scored for every user; the user's training (and, at test time, validation)
//! items are masked out before the top K are taken, as full-ranking recommender evaluations do.
//! Ties are broken by the lower item index (a stable sort), so the metrics are deterministic.
//! Two conventions differ between codes, and both are offered: Recall@K = hits / |test_u| (the
//! common one, also PLD's official code), and the NDCG's ideal DCG summed over min(|test_u|, K)
//! positions (textbook) or over all |test_u| (PLD's official code, lower when |test_u| > K).

use tch::{Kind, Tensor};

/// How the ideal DCG is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdealDcg {
    /// Σ over min(|test_u|, K) positions: a perfect top K scores 1.
    Textbook,
    /// Σ over all |test_u| positions, whatever K.
    AllRelevant,
}

/// The K best items per user: `scores` [U, I] with `masked` [U, I] (true = excluded) set to −∞,
/// sorted by score, ties by item index. Returns [U, K] item indices.
pub fn top_k_items(scores: &Tensor, masked: &Tensor, k: i64) -> Tensor {
    let s = scores.masked_fill(masked, f64::NEG_INFINITY);
    let (_, order) = s.sort_stable(true, -1, true);
    order.narrow(1, 0, k)
}

/// Σ_{r < n} 1 / log₂(r + 2).
fn discounted_ones(n: usize) -> f64 {
    (0..n).map(|r| 1.0 / ((r + 2) as f64).log2()).sum()
}

/// Mean Recall@K and NDCG@K over the users with a non-empty `relevant` list; `top` [U, K] from
/// [`top_k_items`], `relevant[u]` the held-out items of user u.
pub fn recall_ndcg_at_k(top: &Tensor, relevant: &[Vec<i64>], ideal: IdealDcg) -> (f64, f64) {
    let k = top.size()[1] as usize;
    let rows = Vec::<i64>::try_from(top.flatten(0, -1).to_kind(Kind::Int64)).expect("i64 items");
    let (mut recall, mut ndcg, mut users) = (0.0, 0.0, 0usize);
    for (u, rel) in relevant.iter().enumerate() {
        if rel.is_empty() {
            continue;
        }
        let ranked = &rows[u * k..(u + 1) * k];
        let (mut hits, mut dcg) = (0usize, 0.0);
        for (r, item) in ranked.iter().enumerate() {
            if rel.contains(item) {
                hits += 1;
                dcg += 1.0 / ((r + 2) as f64).log2();
            }
        }
        let n_ideal = match ideal {
            IdealDcg::Textbook => rel.len().min(k),
            IdealDcg::AllRelevant => rel.len(),
        };
        recall += hits as f64 / rel.len() as f64;
        ndcg += dcg / discounted_ones(n_ideal);
        users += 1;
    }
    if users == 0 {
        return (0.0, 0.0);
    }
    (recall / users as f64, ndcg / users as f64)
}

/// Per-triple BPR loss −log σ(s_ui − s_uj) = softplus(s_uj − s_ui), stable for any margin.
pub fn bpr_per_triple(pos_scores: &Tensor, neg_scores: &Tensor) -> Tensor {
    (neg_scores - pos_scores).softplus()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notes_toy_ranking() {
        // Relevant {3, 7}; ranking [7, 1, 3, 9, 2]: Recall@5 = 1, DCG = 1 + 1/log₂4 = 1.5,
        // IDCG = 1 + 1/log₂3 = 1.6309, NDCG = 0.9197.
        let top = Tensor::from_slice(&[7i64, 1, 3, 9, 2]).view([1, 5]);
        let (r, n) = recall_ndcg_at_k(&top, &[vec![3, 7]], IdealDcg::Textbook);
        assert_eq!(r, 1.0);
        assert!((n - 1.5 / (1.0 + 1.0 / 3f64.log2())).abs() < 1e-12 && (n - 0.9197).abs() < 1e-4, "{n}");
        // Three relevant items, K = 2, ranking [a hit, a miss]: recall 1/3; textbook IDCG over 2
        // positions, the official over 3.
        let top = Tensor::from_slice(&[5i64, 0]).view([1, 2]);
        let rel = vec![vec![5, 6, 8]];
        let (r, n_text) = recall_ndcg_at_k(&top, &rel, IdealDcg::Textbook);
        let (_, n_all) = recall_ndcg_at_k(&top, &rel, IdealDcg::AllRelevant);
        assert!((r - 1.0 / 3.0).abs() < 1e-15);
        assert!((n_text - 1.0 / (1.0 + 1.0 / 3f64.log2())).abs() < 1e-12);
        assert!((n_all - 1.0 / (1.0 + 1.0 / 3f64.log2() + 0.5)).abs() < 1e-12 && n_all < n_text);
    }

    #[test]
    fn masked_items_never_rank_and_ties_go_to_the_lower_index() {
        let scores = Tensor::from_slice(&[0.5f32, 0.9, 0.5, 0.5, 0.1, 0.2, 0.2, 0.3]).view([2, 4]);
        let masked = Tensor::from_slice(&[false, true, false, false, false, false, false, true]).view([2, 4]);
        let top = top_k_items(&scores, &masked, 3);
        assert_eq!(Vec::<i64>::try_from(top.flatten(0, -1)).unwrap(), vec![0, 2, 3, 1, 2, 0]);
        // Users without held-out items are skipped, not counted as zeros.
        let (r, _) = recall_ndcg_at_k(&top, &[vec![2], vec![]], IdealDcg::Textbook);
        assert_eq!(r, 1.0);
    }

    #[test]
    fn bpr_is_minus_log_sigmoid_of_the_margin() {
        let pos = Tensor::from_slice(&[2.0f64, -1.0, 30.0, 0.0]);
        let neg = Tensor::from_slice(&[0.5f64, 1.0, -30.0, 0.0]);
        let got = Vec::<f64>::try_from(bpr_per_triple(&pos, &neg)).unwrap();
        let want = Vec::<f64>::try_from(-(&pos - &neg).sigmoid().log()).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-7 * w.abs().max(1.0), "{got:?} vs {want:?}");
        }
        assert!((got[3] - 2f64.ln()).abs() < 1e-15);
    }
}
