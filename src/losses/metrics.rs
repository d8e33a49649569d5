//! Classification metrics shared by the papers: top-k accuracy, NLL, expected calibration
//! error, AURC, AUROC, and memorisation of noisy labels. Inputs are logits [N, C] and labels [N].

use tch::{Kind, Tensor};

fn scalar(t: Tensor) -> f64 {
    f64::try_from(t).expect("scalar")
}

/// Fraction of rows whose label is among the k largest logits.
pub fn top_k_accuracy(logits: &Tensor, labels: &Tensor, k: i64) -> f64 {
    let k = k.min(logits.size()[1]);
    let (_, top) = logits.topk(k, -1, true, false);
    scalar(top.eq_tensor(&labels.unsqueeze(1)).any_dim(1, false).to_kind(Kind::Double).mean(Kind::Double))
}

/// Mean negative log-likelihood of the labels under softmax(logits), in float64.
pub fn nll(logits: &Tensor, labels: &Tensor) -> f64 {
    let logp = logits.to_kind(Kind::Double).log_softmax(-1, Kind::Double);
    scalar(-logp.gather(1, &labels.unsqueeze(1), false).mean(Kind::Double))
}

/// Expected calibration error with `bins` equal-width bins on the max softmax probability
/// (Guo et al. 2017): Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|. Bin b holds conf ∈ (b/B, (b+1)/B].
pub fn ece(logits: &Tensor, labels: &Tensor, bins: i64) -> f64 {
    let probs = logits.to_kind(Kind::Double).softmax(-1, Kind::Double);
    let (conf, pred) = probs.max_dim(-1, false);
    let correct = pred.eq_tensor(labels).to_kind(Kind::Double);
    let conf_v = Vec::<f64>::try_from(&conf).expect("conf");
    let corr_v = Vec::<f64>::try_from(&correct).expect("correct");
    ece_from(&conf_v, &corr_v, bins as usize)
}

/// ECE from confidences and 0/1 correctness.
pub fn ece_from(conf: &[f64], correct: &[f64], bins: usize) -> f64 {
    let n = conf.len() as f64;
    let mut sum_conf = vec![0.0; bins];
    let mut sum_acc = vec![0.0; bins];
    let mut count = vec![0.0; bins];
    for (&c, &a) in conf.iter().zip(correct) {
        let b = ((c * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        sum_conf[b] += c;
        sum_acc[b] += a;
        count[b] += 1.0;
    }
    (0..bins).filter(|&b| count[b] > 0.0).map(|b| (sum_acc[b] - sum_conf[b]).abs() / n).sum()
}

/// Area under the risk–coverage curve (Geifman & El-Yaniv 2017), with confidence = max softmax
/// probability: sort by confidence (descending); AURC = mean over k of the error rate among the
/// k most confident samples.
pub fn aurc(logits: &Tensor, labels: &Tensor) -> f64 {
    let probs = logits.to_kind(Kind::Double).softmax(-1, Kind::Double);
    let (conf, pred) = probs.max_dim(-1, false);
    let wrong = Vec::<f64>::try_from(pred.ne_tensor(labels).to_kind(Kind::Double)).expect("wrong");
    aurc_from(&Vec::<f64>::try_from(&conf).expect("conf"), &wrong)
}

pub fn aurc_from(conf: &[f64], wrong: &[f64]) -> f64 {
    let mut order: Vec<usize> = (0..conf.len()).collect();
    // Stable: ties keep their order, as a stable sort by −confidence would.
    order.sort_by(|&i, &j| conf[j].partial_cmp(&conf[i]).expect("finite"));
    let mut errors = 0.0;
    let mut area = 0.0;
    for (k, &i) in order.iter().enumerate() {
        errors += wrong[i];
        area += errors / (k + 1) as f64;
    }
    area / conf.len() as f64
}

/// Memorisation on a noisy training set: among the samples whose observed label differs from
/// the truth, the fraction predicted as the (wrong) observed label, and as the true label.
pub fn memorisation(logits: &Tensor, observed: &Tensor, truth: &Tensor) -> (f64, f64) {
    let noisy = observed.ne_tensor(truth);
    let n = scalar(noisy.to_kind(Kind::Double).sum(Kind::Double));
    if n == 0.0 {
        return (0.0, 0.0);
    }
    let pred = logits.argmax(-1, false);
    let as_noisy = scalar(pred.eq_tensor(observed).logical_and(&noisy).to_kind(Kind::Double).sum(Kind::Double));
    let as_true = scalar(pred.eq_tensor(truth).logical_and(&noisy).to_kind(Kind::Double).sum(Kind::Double));
    (as_noisy / n, as_true / n)
}

/// Area under the ROC curve of `scores` for telling `positive` samples from the rest: the
/// probability that a random positive outscores a random negative, ties counting ½ (by mid-ranks).
/// 0.5 when either class is empty.
pub fn auroc(scores: &[f64], positive: &[bool]) -> f64 {
    let n = scores.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut ranks = vec![0.0; n];
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = mid;
        }
        i = j + 1;
    }
    let n_pos = positive.iter().filter(|p| **p).count() as f64;
    let n_neg = n as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return 0.5;
    }
    let rank_sum: f64 = ranks.iter().zip(positive).filter(|(_, p)| **p).map(|(r, _)| r).sum();
    (rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ece_is_zero_when_calibrated_and_matches_hand_values() {
        // 10 samples at confidence 0.7 of which 7 are right: calibrated.
        let conf = vec![0.7; 10];
        let correct: Vec<f64> = (0..10).map(|i| if i < 7 { 1.0 } else { 0.0 }).collect();
        assert!(ece_from(&conf, &correct, 15).abs() < 1e-12);
        // Two bins: (0.9, all right) → |1 − 0.9|; (0.6, all wrong) → |0 − 0.6|; weights 1/2.
        let e = ece_from(&[0.9, 0.9, 0.6, 0.6], &[1.0, 1.0, 0.0, 0.0], 15);
        assert!((e - 0.5 * 0.1 - 0.5 * 0.6).abs() < 1e-12, "{e}");
        // Bins are (b/B, (b+1)/B]: confidence exactly 1.0 lands in the last bin, 1/15 in the first.
        assert!((ece_from(&[1.0, 1.0 / 15.0], &[1.0, 0.0], 15) - 0.5 / 15.0).abs() < 1e-12);
    }

    #[test]
    fn aurc_by_hand_on_five_samples() {
        // Sorted by confidence: wrong, right, right, wrong, right.
        let conf = [0.9, 0.8, 0.7, 0.6, 0.5];
        let wrong = [1.0, 0.0, 0.0, 1.0, 0.0];
        let expected = (1.0 / 1.0 + 1.0 / 2.0 + 1.0 / 3.0 + 2.0 / 4.0 + 2.0 / 5.0) / 5.0;
        assert!((aurc_from(&conf, &wrong) - expected).abs() < 1e-12);
        // A perfect ranking (errors least confident) beats the reverse.
        assert!(aurc_from(&conf, &[0.0, 0.0, 0.0, 1.0, 1.0]) < aurc_from(&conf, &[1.0, 1.0, 0.0, 0.0, 0.0]));
    }

    #[test]
    fn top_k_nll_and_memorisation() {
        let z = Tensor::from_slice(&[3.0f64, 2.0, 1.0, 0.0, 1.0, 2.0]).view([2, 3]);
        let y = Tensor::from_slice(&[1i64, 0]);
        assert_eq!(top_k_accuracy(&z, &y, 1), 0.0);
        assert_eq!(top_k_accuracy(&z, &y, 2), 0.5);
        assert_eq!(top_k_accuracy(&z, &y, 3), 1.0);
        let lse0 = (3f64.exp() + 2f64.exp() + 1f64.exp()).ln();
        let lse1 = (1.0 + 1f64.exp() + 2f64.exp()).ln();
        assert!((nll(&z, &y) - ((lse0 - 2.0) + (lse1 - 0.0)) / 2.0).abs() < 1e-12);
        // Predictions [0, 2]; observed [0, 1] vs truth [1, 2]: both noisy; one predicted as noisy, one as true.
        let (m, t) = memorisation(&z, &Tensor::from_slice(&[0i64, 1]), &Tensor::from_slice(&[1i64, 2]));
        assert_eq!((m, t), (0.5, 0.5));
    }

    #[test]
    fn auroc_counts_ordered_pairs_and_half_ties() {
        assert_eq!(auroc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]), 0.75);
        assert_eq!(auroc(&[0.1, 0.2, 0.3, 0.4], &[false, false, true, true]), 1.0);
        assert_eq!(auroc(&[0.4, 0.3, 0.2, 0.1], &[false, false, true, true]), 0.0);
        assert_eq!(auroc(&[1.0; 5], &[true, false, true, false, false]), 0.5);
        // One tie between a positive and a negative: (1 + ½ + 1 + 1) / 4.
        assert_eq!(auroc(&[0.1, 0.4, 0.4, 0.8], &[false, false, true, true]), 0.875);
    }
}
