//! Deep-metric-learning base losses on L2-normalised embeddings: Proxy-Anchor (Kim et al., CVPR
//! 2020), with what its official code and pytorch-metric-learning's `ProxyAnchorLoss` do.
//!
//! With cosine similarities s(x, p) between embeddings and class proxies,
//!   L = (1/|P⁺|) Σ_{p ∈ P⁺} log(1 + Σ_{x ∈ X_p⁺} e^{−α(s(x,p) − δ)})
//!     + (1/C)    Σ_{p}      log(1 + Σ_{x ∈ X_p⁻} e^{ α(s(x,p) + δ)}),
//! P⁺ the proxies with a positive in the batch, X_p⁺ / X_p⁻ the batch's samples of / not of p's
//! class. Both logs are computed as a log-sum-exp with a zero appended (stable for α = 32), and a
//! proxy with no sample on a side contributes log 1 = 0, as in the reference. The official code
//! initialises proxies by `kaiming_normal_(mode='fan_out')` — N(0, 2/C) for a [C, E] table — and
//! trains them at 100× the network's learning rate; [`proxy_init_std`] gives the first, the caller
//! the second.

use tch::{Kind, Tensor};

/// Rows scaled to unit L2 norm.
pub fn l2_normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [1].as_slice(), true).clamp_min(1e-12)
}

/// Standard deviation of `kaiming_normal_(mode='fan_out')` on a [classes, dim] proxy table: the
/// fan-out of a 2-d tensor is its first dimension, and the ReLU gain is √2.
pub fn proxy_init_std(classes: i64) -> f64 {
    (2.0 / classes as f64).sqrt()
}

/// log(1 + Σ_{masked rows} e^{x}) per column of `x` [B, C], stably.
fn log_one_plus_sum_exp(x: &Tensor, keep: &Tensor) -> Tensor {
    let masked = x.masked_fill(&keep.logical_not(), f64::NEG_INFINITY);
    let zero = Tensor::zeros([1, x.size()[1]], (x.kind(), x.device()));
    Tensor::cat(&[masked, zero], 0).logsumexp([0].as_slice(), false)
}

/// The Proxy-Anchor loss (module doc) of `embeddings` [B, E] (normalised here) with integer
/// `labels` [B] in 0..C against `proxies` [C, E] (normalised here).
pub fn proxy_anchor(embeddings: &Tensor, labels: &Tensor, proxies: &Tensor, alpha: f64, delta: f64) -> Tensor {
    let classes = proxies.size()[0];
    let cos = l2_normalize(embeddings).matmul(&l2_normalize(proxies).tr()); // [B, C]
    let pos = labels.one_hot(classes).to_kind(Kind::Bool);
    let with_pos = pos.any_dim(0, false).to_kind(Kind::Float).sum(Kind::Float);
    let pos_term = log_one_plus_sum_exp(&((&cos - delta) * -alpha), &pos).sum(cos.kind()) / with_pos.to_kind(cos.kind());
    let neg_term = log_one_plus_sum_exp(&((&cos + delta) * alpha), &pos.logical_not()).sum(cos.kind()) / classes as f64;
    pos_term + neg_term
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_anchor_matches_its_closed_form_on_orthogonal_proxies() {
        // Three classes, proxies on the axes (scaled: normalisation must undo it). Batch: two
        // samples on proxy 0, one on proxy 1, none of class 2.
        let proxies = Tensor::from_slice(&[2.0f64, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.5]).view([3, 3]);
        let e = Tensor::from_slice(&[1.0f64, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 1.0, 0.0]).view([3, 3]);
        let y = Tensor::from_slice(&[0i64, 0, 1]);
        let (a, d) = (4.0, 0.1);
        let got = proxy_anchor(&e, &y, &proxies, a, d).double_value(&[]);
        // cos = 1 on the own proxy, 0 elsewhere. Positive side: proxy 0 has 2 positives at cos 1,
        // proxy 1 one; P⁺ = {0, 1}. Negative side: proxy 0 sees 1 negative at cos 0, proxy 1 two,
        // proxy 2 three; all at cos 0.
        let pos = ((1.0 + 2.0 * (-a * (1.0 - d)).exp()).ln() + (1.0 + (-a * (1.0 - d)).exp()).ln()) / 2.0;
        let neg = ((1.0 + (a * d).exp()).ln() + (1.0 + 2.0 * (a * d).exp()).ln() + (1.0 + 3.0 * (a * d).exp()).ln()) / 3.0;
        assert!((got - (pos + neg)).abs() < 1e-12, "{got} vs {}", pos + neg);
    }

    #[test]
    fn proxy_anchor_is_finite_at_alpha_32_and_pulls_samples_to_their_proxy() {
        let proxies = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let e = Tensor::from_slice(&[0.6f32, 0.8, -1.0, 0.2]).view([2, 2]).set_requires_grad(true);
        let y = Tensor::from_slice(&[0i64, 1]);
        let loss = proxy_anchor(&e, &y, &proxies, 32.0, 0.1);
        assert!(loss.double_value(&[]).is_finite());
        loss.backward();
        // A small step against the gradient raises each sample's cosine to its own proxy.
        let cos_own = |x: &Tensor| {
            let n = l2_normalize(x);
            (n.double_value(&[0, 0]), n.double_value(&[1, 1]))
        };
        let before = cos_own(&e.detach());
        let after = cos_own(&(e.detach() - e.grad() * 1e-3));
        assert!(after.0 > before.0 && after.1 > before.1, "{before:?} → {after:?}");
    }

    #[test]
    fn log_one_plus_sum_exp_skips_unmasked_rows_and_is_zero_for_an_empty_column() {
        let x = Tensor::from_slice(&[1.0f64, 2.0, 3.0, 100.0]).view([2, 2]);
        let keep = Tensor::from_slice(&[true, false, true, false]).view([2, 2]);
        let v = Vec::<f64>::try_from(log_one_plus_sum_exp(&x, &keep)).unwrap();
        assert!((v[0] - (1.0 + 1f64.exp() + 3f64.exp()).ln()).abs() < 1e-12);
        assert_eq!(v[1], 0.0);
        assert_eq!(proxy_init_std(50), (2.0f64 / 50.0).sqrt());
    }
}
