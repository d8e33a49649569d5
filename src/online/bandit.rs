//! Contextual bandits: a round loop that records both the realised regret and its exact
//! expectation given the policy's action distribution, and the inverse-gap-weighting action
//! distributions of SquareCB (Foster & Rakhlin 2020) and FastCB (Foster & Krishnamurthy 2021).
//!
//! Where the environment's mean rewards are known (a classification bandit: reward 1 for the true
//! label), the expected regret of round t is Σ_a p_a (μ* − μ_a), with no sampling noise, so two
//! policies can be compared on far fewer rounds than their realised regret would need.


/// SquareCB's inverse gap weighting of predicted rewards ŷ: with b = argmax ŷ,
/// p_a = 1 / (K + γ(ŷ_b − ŷ_a)) for a ≠ b and p_b = 1 − Σ_{a≠b} p_a. γ = 0 is uniform, γ → ∞ greedy.
pub fn squarecb_probabilities(rewards: &[f64], gamma: f64) -> Vec<f64> {
    let k = rewards.len() as f64;
    let b = argmax(rewards);
    let mut p: Vec<f64> = rewards.iter().map(|y| 1.0 / (k + gamma * (rewards[b] - y))).collect();
    p[b] = 0.0;
    p[b] = 1.0 - p.iter().sum::<f64>();
    p
}

/// FastCB's first-order weighting of predicted losses ℓ̂: with b = argmin ℓ̂,
/// p_a = ℓ̂_b / (K ℓ̂_b + γ(ℓ̂_a − ℓ̂_b)) for a ≠ b and p_b the rest; ℓ̂_b = 0 puts all mass on b
/// (the 0/0 of arms tied with b is taken as 0 there too).
pub fn fastcb_probabilities(losses: &[f64], gamma: f64) -> Vec<f64> {
    let k = losses.len() as f64;
    let b = argmin(losses);
    let lb = losses[b];
    let mut p: Vec<f64> = losses
        .iter()
        .map(|l| {
            let den = k * lb + gamma * (l - lb);
            if den > 0.0 {
                lb / den
            } else {
                0.0
            }
        })
        .collect();
    p[b] = 0.0;
    p[b] = 1.0 - p.iter().sum::<f64>();
    p
}

/// Index of the largest value (the first of ties).
pub fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x > xs[best] {
            best = i;
        }
    }
    best
}

/// Index of the smallest value (the first of ties).
pub fn argmin(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x < xs[best] {
            best = i;
        }
    }
    best
}

/// Cumulative regret against the best arm of each round, realised and expected.
#[derive(Debug, Default, Clone)]
pub struct Regret {
    pub rounds: usize,
    /// Σ_t (μ*_t − μ_{a_t}).
    pub realised: f64,
    /// Σ_t Σ_a p_{t,a} (μ*_t − μ_a).
    pub expected: f64,
}

impl Regret {
    /// Books a round with the arms' mean rewards `means`, the played distribution `p` and the arm played.
    pub fn record(&mut self, means: &[f64], p: &[f64], played: usize) {
        let best = means[argmax(means)];
        self.rounds += 1;
        self.realised += best - means[played];
        self.expected += p.iter().zip(means).map(|(q, m)| q * (best - m)).sum::<f64>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Rng;

    #[test]
    fn the_notes_known_distributions() {
        let p = squarecb_probabilities(&[0.9, 0.1, 0.5], 10.0);
        for (a, b) in p.iter().zip([0.7662, 0.0909, 0.1429]) {
            assert!((a - b).abs() < 1e-4, "{p:?}");
        }
        let q = fastcb_probabilities(&[0.1, 0.9, 0.5], 10.0);
        for (a, b) in q.iter().zip([0.9647, 0.0120, 0.0233]) {
            assert!((a - b).abs() < 1e-4, "{q:?}");
        }
    }

    #[test]
    fn probabilities_are_distributions_with_the_right_limits() {
        let y = [0.3, 0.8, 0.1, 0.79];
        for g in [0.0, 1.0, 50.0, 1e9] {
            for p in [squarecb_probabilities(&y, g), fastcb_probabilities(&y.map(|v| 1.0 - v), g)] {
                assert!(p.iter().all(|q| *q >= 0.0) && (p.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{p:?}");
                if g > 0.0 {
                    assert!(p.iter().enumerate().all(|(a, q)| a == 1 || *q < p[1]), "the best arm has the most mass: {p:?}");
                }
            }
        }
        assert!(squarecb_probabilities(&y, 0.0).iter().all(|q| (q - 0.25).abs() < 1e-15));
        assert!(fastcb_probabilities(&y.map(|v| 1.0 - v), 0.0).iter().all(|q| (q - 0.25).abs() < 1e-15));
        assert!(squarecb_probabilities(&y, 1e12)[1] > 1.0 - 1e-9);
        // A zero predicted loss takes all the mass, without a NaN.
        assert_eq!(fastcb_probabilities(&[0.4, 0.0, 0.0, 0.9], 5.0), vec![0.0, 1.0, 0.0, 0.0]);
    }

    /// A fixed policy on a two-armed Bernoulli bandit with means (0.7, 0.4) playing arm 0 with
    /// probability q: expected regret T(1 − q)·0.3 exactly, realised regret near it.
    #[test]
    fn two_armed_bandit_regret_in_closed_form() {
        let (t, q) = (20_000, 0.8);
        let means = [0.7, 0.4];
        let p = [q, 1.0 - q];
        let mut rng = Rng::new(5);
        let mut r = Regret::default();
        for _ in 0..t {
            let a = rng.categorical(&p);
            r.record(&means, &p, a);
        }
        assert!((r.expected - t as f64 * (1.0 - q) * 0.3).abs() < 1e-6, "{}", r.expected);
        assert!((r.realised - r.expected).abs() < 4.0 * (t as f64 * 0.16).sqrt() * 0.3, "{} vs {}", r.realised, r.expected);
        assert_eq!(r.rounds, t);
    }
}
