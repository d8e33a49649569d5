//! Learning from Aggregate Responses: Instance Level versus Bag Level Loss Functions — Javanmard,
//! Chen, Mirrokni, Badanidiyuru & Fu, arXiv 2401.11081.
//!
//! The learner sees features x_i and only the mean response ȳ_a of each bag of k samples. The
//! bag-level loss fits bag means to ȳ_a (unbiased, but only m = n/k equations); the instance-level
//! loss fits every f(x_i) to ȳ_a, which is the bag-level loss plus a penalty on the spread of the
//! predictions inside a bag (biased: θ*/k for random bags, but low variance). L_ρ interpolates. The
//! experiment: on isotropic linear regression at k = 20 (m = d) some ρ strictly inside (0, 1)
//! beats both ends; with label-DP Laplace noise on the bag means the risk is U-shaped in k.
//!
//! No official code (none found; PapersWithCode lists none): this is the note's reconstruction.
//! Project choices, all documented here: L_ρ = L_bag + ρ·(1/n) Σ_a Σ_i (f_i − f̄_a)² (so ρ = 1 is
//! exactly L_inst), whose linear minimiser is θ_ρ = (k X̄ᵀX̄ + ρ S_w)⁻¹ k X̄ᵀȳ with a ridge of
//! `ridge`·tr(A)/d (scale-free; it only matters when A is singular, e.g. m < d at ρ = 0, where it
//! gives the min-norm solution); ρ is chosen on a grid by the bag-level loss on 20% held-out bags
//! (only aggregates are observable) and the estimator fitted on the other 80% is the one scored
//! (`risk_val_selected`; refitting on all bags is reported as `risk_val_refit` — at m ≈ d a refit
//! at ρ = 0 explodes, so it is not the headline; `val_gain_vs_best_end` compares it with the better
//! of the ρ = 0 and ρ = 1 estimators fitted on the same 80%); the DP mechanism clips y to [clip_min, clip_max]
//! and adds Laplace(0, Δ/ε), Δ = (clip_max − clip_min)/k, to each bag mean; "curated" bags are
//! consecutive chunks after sorting on a random 1-D projection of x. The paper's asymptotic risk
//! formulas and optimal-k formula are not reproduced. The generic-model path (`fit_generic`: Adam
//! on L_ρ, every minibatch made of whole bags) runs an MLP arm when `mlp_rhos` is non-empty.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::context::{Rng, RunCtx};
use crate::models::Mlp;

pub struct AggregateResponses;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BagKind {
    /// A random permutation cut into consecutive chunks of k.
    Random,
    /// Chunks of k after sorting on a random 1-D projection of x (more homogeneous bags).
    Curated,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Feature dimension d.
    pub dim: i64,
    /// Training samples n (the last n mod k are dropped).
    pub samples: i64,
    /// Standard deviation s of the response noise.
    pub noise_std: f64,
    /// Bag size k.
    pub bag_size: i64,
    pub bags: BagKind,
    /// The ρ grid in [0, 1]; must contain 0 (bag-level), 1 (instance-level) and an interior value.
    pub rhos: Vec<f64>,
    /// Share of bags held out to choose ρ.
    pub val_fraction: f64,
    /// Label-DP budget ε of the Laplace mechanism on bag means (null: no privacy, no clipping).
    pub dp_epsilon: Option<f64>,
    /// Responses are clipped to [clip_min, clip_max] before aggregation (DP only).
    pub clip_min: f64,
    pub clip_max: f64,
    /// Relative ridge: λ = ridge · tr(A)/d is added to the normal equations.
    pub ridge: f64,
    /// ρ values for the MLP arm trained on L_ρ (empty: no MLP arm; otherwise the same rules as `rhos`).
    pub mlp_rhos: Vec<f64>,
    pub mlp_hidden: Vec<i64>,
    pub mlp_epochs: u64,
    pub mlp_lr: f64,
    /// Samples per minibatch, rounded down to whole bags (at least one bag).
    pub mlp_batch_samples: i64,
    /// Fresh test points for the MLP arm's excess risk E(f(x) − xᵀθ*)².
    pub test_samples: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dim: 100,
            samples: 2000,
            noise_std: 0.5,
            bag_size: 10,
            bags: BagKind::Random,
            rhos: vec![0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0],
            val_fraction: 0.2,
            dp_epsilon: None,
            clip_min: -3.0,
            clip_max: 3.0,
            ridge: 1e-8,
            mlp_rhos: vec![],
            mlp_hidden: vec![64],
            mlp_epochs: 100,
            mlp_lr: 1e-3,
            mlp_batch_samples: 256,
            test_samples: 10_000,
        }
    }
}

/// The synthetic regression: x ~ N(0, I_d), θ* ~ N(0, I/d), y = xᵀθ* + s·N(0, 1).
pub struct Problem {
    /// f64 [n, d] on the device.
    pub x: Tensor,
    /// f64 [d] on the device.
    pub theta: Tensor,
    /// Individual responses (never shown to the aggregate learner).
    pub y: Vec<f64>,
}

/// Draws the problem from the Rust RNG, so it is the same on every device.
pub fn sample_problem(n: i64, d: i64, noise_std: f64, rng: &mut Rng, device: Device) -> Problem {
    let (nu, du) = (n as usize, d as usize);
    let xs: Vec<f64> = (0..nu * du).map(|_| rng.normal()).collect();
    let theta: Vec<f64> = (0..du).map(|_| rng.normal() / (d as f64).sqrt()).collect();
    let y: Vec<f64> = (0..nu).map(|i| xs[i * du..(i + 1) * du].iter().zip(&theta).map(|(a, b)| a * b).sum::<f64>() + noise_std * rng.normal()).collect();
    Problem { x: Tensor::from_slice(&xs).view([n, d]).to_device(device), theta: Tensor::from_slice(&theta).to_device(device), y }
}

/// Random bags: a permutation of 0..n cut into consecutive chunks of k, the remainder dropped.
/// Returned flat (m·k indices, bag a = entries a·k..(a+1)·k).
pub fn random_bags(n: i64, k: i64, rng: &mut Rng) -> Vec<i64> {
    let mut order: Vec<i64> = (0..n).collect();
    rng.shuffle(&mut order);
    order.truncate(((n / k) * k) as usize);
    order
}

/// Curated bags: chunks of k after sorting on xᵀu for a random direction u (drawn from `rng`),
/// so members of a bag are alike along u and the instance-level bias shrinks.
pub fn curated_bags(x: &Tensor, k: i64, rng: &mut Rng) -> Vec<i64> {
    let (n, d) = (x.size()[0], x.size()[1]);
    let u: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
    let proj = x.mv(&Tensor::from_slice(&u).to_device(x.device()));
    let proj = Vec::<f64>::try_from(proj.to_device(Device::Cpu)).expect("projection");
    let mut order: Vec<i64> = (0..n).collect();
    order.sort_by(|&a, &b| proj[a as usize].total_cmp(&proj[b as usize]));
    order.truncate(((n / k) * k) as usize);
    order
}

/// ȳ_a for each bag of the flat membership list.
pub fn bag_means(y: &[f64], members: &[i64], k: i64) -> Vec<f64> {
    members.chunks(k as usize).map(|bag| bag.iter().map(|&i| y[i as usize]).sum::<f64>() / k as f64).collect()
}

/// A Laplace(0, b) draw by the inverse CDF: u ~ U(−½, ½), x = −b·sgn(u)·ln(1 − 2|u|).
pub fn laplace(rng: &mut Rng, scale: f64) -> f64 {
    let u = rng.uniform() - 0.5;
    let tail = (1.0 - 2.0 * u.abs()).max(f64::MIN_POSITIVE);
    -scale * u.signum() * tail.ln()
}

/// The label-DP release: clip each response to [lo, hi], average per bag, add Laplace(0, Δ/ε)
/// with Δ = (hi − lo)/k — the most one clipped response can move its bag's mean — so each
/// released mean is ε-DP with respect to any single response.
pub fn private_bag_means(y: &[f64], members: &[i64], k: i64, lo: f64, hi: f64, epsilon: f64, rng: &mut Rng) -> Vec<f64> {
    let clipped: Vec<f64> = y.iter().map(|v| v.clamp(lo, hi)).collect();
    let scale = (hi - lo) / k as f64 / epsilon;
    bag_means(&clipped, members, k).into_iter().map(|v| v + laplace(rng, scale)).collect()
}

/// The sufficient statistics of every linear L_ρ minimiser on one set of bags.
pub struct BagStats {
    /// k X̄ᵀX̄ [d, d].
    pub gbar: Tensor,
    /// S_w = Σ_a Σ_{i∈a} (x_i − x̄_a)(x_i − x̄_a)ᵀ [d, d].
    pub sw: Tensor,
    /// k X̄ᵀȳ [d].
    pub b: Tensor,
}

/// Statistics of bags `xb` [m, k, d] with responses `ybar` [m].
pub fn bag_stats(xb: &Tensor, ybar: &Tensor) -> BagStats {
    let s = xb.size();
    let (m, k, d) = (s[0], s[1], s[2]);
    let xbar = xb.mean_dim(1, false, Kind::Double);
    // Centred members (exactly zero for k = 1, so every ρ then gives the same system).
    let dev = (xb - xbar.unsqueeze(1)).view([m * k, d]);
    let xbar_t = xbar.transpose(0, 1);
    BagStats { gbar: xbar_t.mm(&xbar) * k as f64, sw: dev.transpose(0, 1).mm(&dev), b: xbar_t.mv(ybar) * k as f64 }
}

/// Solves (A + λI) θ = b with λ = ridge · tr(A)/d (λ = ridge when tr(A) = 0).
pub fn solve_ridged(a: &Tensor, b: &Tensor, ridge: f64) -> Tensor {
    let d = a.size()[0];
    let mean_eig = f64::try_from(a.trace()).expect("scalar") / d as f64;
    let lambda = ridge * if mean_eig > 0.0 { mean_eig } else { 1.0 };
    let a = a + Tensor::eye(d, (Kind::Double, a.device())) * lambda;
    Tensor::linalg_solve(&a, &b.unsqueeze(1), true).squeeze_dim(1)
}

/// θ_ρ = (k X̄ᵀX̄ + ρ S_w)⁻¹ k X̄ᵀȳ: the minimiser of L_ρ for f(x) = xᵀθ (n·∇L_ρ/2 = 0).
pub fn theta_rho(stats: &BagStats, rho: f64, ridge: f64) -> Tensor {
    solve_ridged(&(&stats.gbar + &stats.sw * rho), &stats.b, ridge)
}

/// The bag-level loss mean_a (ȳ_a − x̄_aᵀθ)² on bags with means `xbar` [m, d]: the only
/// validation score an aggregate learner can compute.
pub fn held_out_bag_loss(xbar: &Tensor, ybar: &Tensor, theta: &Tensor) -> f64 {
    f64::try_from((xbar.mv(theta) - ybar).square().mean(Kind::Double)).expect("scalar")
}

/// L_bag = mean_a (ȳ_a − f̄_a)² for predictions `f` [m, k].
pub fn l_bag(f: &Tensor, ybar: &Tensor) -> Tensor {
    (ybar - f.mean_dim(1, false, f.kind())).square().mean(f.kind())
}

/// (1/n) Σ_a Σ_i (f_i − f̄_a)²: the within-bag spread of the predictions.
pub fn within_bag_spread(f: &Tensor) -> Tensor {
    (f - f.mean_dim(1, true, f.kind())).square().mean(f.kind())
}

/// L_inst = (1/n) Σ_a Σ_i (ȳ_a − f_i)².
pub fn l_inst(f: &Tensor, ybar: &Tensor) -> Tensor {
    (f - ybar.unsqueeze(1)).square().mean(f.kind())
}

/// L_ρ = L_bag + ρ · within-bag spread (ρ = 0: bag-level, ρ = 1: instance-level).
pub fn l_rho(f: &Tensor, ybar: &Tensor, rho: f64) -> Tensor {
    l_bag(f, ybar) + within_bag_spread(f) * rho
}

#[derive(Debug, Clone, Copy)]
pub struct GenericFit {
    pub epochs: u64,
    pub lr: f64,
    pub bags_per_batch: i64,
}

/// Trains `model` (a map [N, d] → [N, 1]) with Adam on L_ρ over bags `xb` [m, k, d], `ybar` [m].
/// Each minibatch is a set of whole bags (f̄_a needs every member); bags are reshuffled each
/// epoch from `rng`. `after_epoch(epoch, mean loss)` is called after every epoch.
#[allow(clippy::too_many_arguments)]
pub fn fit_generic<M: Module>(model: &M, vs: &nn::VarStore, xb: &Tensor, ybar: &Tensor, rho: f64, opts: GenericFit, rng: &mut Rng, mut after_epoch: impl FnMut(u64, f64) -> Result<()>) -> Result<()> {
    let s = xb.size();
    let (m, k, d) = (s[0], s[1], s[2]);
    let mut opt = nn::Adam::default().build(vs, opts.lr)?;
    let mut order: Vec<i64> = (0..m).collect();
    for epoch in 1..=opts.epochs {
        rng.shuffle(&mut order);
        let mut total = Tensor::from(0.0f64).to_device(xb.device());
        for chunk in order.chunks(opts.bags_per_batch.max(1) as usize) {
            let idx = Tensor::from_slice(chunk).to_device(xb.device());
            let f = model.forward(&xb.index_select(0, &idx).view([-1, d])).view([chunk.len() as i64, k]);
            let loss = l_rho(&f, &ybar.index_select(0, &idx), rho);
            opt.backward_step(&loss);
            total += loss.detach() * chunk.len() as f64;
        }
        after_epoch(epoch, f64::try_from(total)? / m as f64)?;
    }
    Ok(())
}

/// Index of the first minimum.
fn argmin(xs: &[f64]) -> usize {
    xs.iter().enumerate().fold(0, |best, (i, &v)| if v < xs[best] { i } else { best })
}

/// A metric-name-safe rendering of ρ (0.05 → "0p05").
fn rho_tag(rho: f64) -> String {
    format!("{rho}").replace('.', "p").replace('-', "m")
}

/// A ρ grid must lie in [0, 1] and hold 0 (bag-level), 1 (instance-level) and at least one value
/// strictly inside (the interpolating estimator): without any of them metrics would go missing.
fn check_rho_grid(key: &str, rhos: &[f64]) -> Result<()> {
    if let Some(r) = rhos.iter().find(|r| !(0.0..=1.0).contains(*r)) {
        bail!("`{key}` must lie in [0, 1], got {r} in {rhos:?}");
    }
    if !rhos.contains(&0.0) {
        bail!("`{key}` must contain 0 (the bag-level loss), got {rhos:?}");
    }
    if !rhos.contains(&1.0) {
        bail!("`{key}` must contain 1 (the instance-level loss), got {rhos:?}");
    }
    if !rhos.iter().any(|&r| r > 0.0 && r < 1.0) {
        bail!("`{key}` must contain a value strictly inside (0, 1) (the interpolating loss), got {rhos:?}");
    }
    Ok(())
}

/// No shared blocks: every key is the paper's own.
impl crate::paper::Blocks for Config {}

impl crate::paper::Paper for AggregateResponses {
    const KEY: &'static str = "aggregate_responses";
    const TITLE: &'static str = "Learning from Aggregate Responses: Instance Level versus Bag Level Loss Functions";
    const ARXIV: &'static str = "2401.11081";
    type Config = Config;

    fn check(c: &Config) -> Result<()> {
        if c.dim < 1 {
            bail!("`dim` must be ≥ 1, got {}", c.dim);
        }
        if c.bag_size < 1 {
            bail!("`bag_size` must be ≥ 1, got {}", c.bag_size);
        }
        if c.samples / c.bag_size < 2 {
            bail!("`samples` must give ≥ 2 bags of `bag_size` = {}, got {} samples ({} bags)", c.bag_size, c.samples, c.samples / c.bag_size);
        }
        if !(c.noise_std >= 0.0) {
            bail!("`noise_std` must be ≥ 0, got {}", c.noise_std);
        }
        check_rho_grid("rhos", &c.rhos)?;
        if !(c.val_fraction > 0.0 && c.val_fraction < 1.0) {
            bail!("`val_fraction` must be in (0, 1), got {}", c.val_fraction);
        }
        if let Some(e) = c.dp_epsilon.filter(|e| !(*e > 0.0)) {
            bail!("`dp_epsilon` must be > 0 (or null for no privacy), got {e}");
        }
        if !(c.clip_min < c.clip_max) {
            bail!("`clip_min` must be < `clip_max`, got `clip_min` = {} and `clip_max` = {}", c.clip_min, c.clip_max);
        }
        if !(c.ridge >= 0.0) {
            bail!("`ridge` must be ≥ 0, got {}", c.ridge);
        }
        if !c.mlp_rhos.is_empty() {
            check_rho_grid("mlp_rhos", &c.mlp_rhos)?;
        }
        if let Some(h) = c.mlp_hidden.iter().find(|&&h| h < 1) {
            bail!("`mlp_hidden` widths must be ≥ 1, got {h} in {:?}", c.mlp_hidden);
        }
        if c.mlp_epochs == 0 {
            bail!("`mlp_epochs` must be ≥ 1, got 0");
        }
        if !(c.mlp_lr > 0.0) {
            bail!("`mlp_lr` must be > 0, got {}", c.mlp_lr);
        }
        if c.mlp_batch_samples < 1 {
            bail!("`mlp_batch_samples` must be ≥ 1, got {}", c.mlp_batch_samples);
        }
        if c.test_samples < 1 {
            bail!("`test_samples` must be ≥ 1, got {}", c.test_samples);
        }
        Ok(())
    }

    fn run(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
        let device = ctx.device;
        let (n, d, k) = (cfg.samples, cfg.dim, cfg.bag_size);
        // Independent streams, so e.g. the DP and the noiseless variants share X, θ* and the bags.
        let problem = sample_problem(n, d, cfg.noise_std, &mut Rng::new(ctx.seed ^ 0xA66E), device);
        let mut bag_rng = Rng::new(ctx.seed ^ 0xBA65);
        let members = match cfg.bags {
            BagKind::Random => random_bags(n, k, &mut bag_rng),
            BagKind::Curated => curated_bags(&problem.x, k, &mut bag_rng),
        };
        let m = members.len() as i64 / k;
        let ybar_vec = match cfg.dp_epsilon {
            None => bag_means(&problem.y, &members, k),
            Some(eps) => private_bag_means(&problem.y, &members, k, cfg.clip_min, cfg.clip_max, eps, &mut Rng::new(ctx.seed ^ 0xD9)),
        };
        let xb = problem.x.index_select(0, &Tensor::from_slice(&members).to_device(device)).view([m, k, d]);
        let ybar = Tensor::from_slice(&ybar_vec).to_device(device);
        let risk = |theta: &Tensor| f64::try_from((theta - &problem.theta).square().sum(Kind::Double)).expect("scalar");
        let theta_sq = f64::try_from(problem.theta.square().sum(Kind::Double))?;

        // Hold out bags (never samples) for choosing ρ.
        let mut bag_order: Vec<i64> = (0..m).collect();
        Rng::new(ctx.seed ^ 0x7A1).shuffle(&mut bag_order);
        let n_val = ((cfg.val_fraction * m as f64).round() as i64).clamp(1, m - 1) as usize;
        let val_idx = Tensor::from_slice(&bag_order[..n_val]).to_device(device);
        let fit_idx = Tensor::from_slice(&bag_order[n_val..]).to_device(device);
        let full = bag_stats(&xb, &ybar);
        let fit = bag_stats(&xb.index_select(0, &fit_idx), &ybar.index_select(0, &fit_idx));
        let xbar_val = xb.index_select(0, &val_idx).mean_dim(1, false, Kind::Double);
        let ybar_val = ybar.index_select(0, &val_idx);

        let total = cfg.rhos.len() as u64 + cfg.mlp_rhos.len() as u64 * cfg.mlp_epochs;
        let (mut full_risks, mut fit_risks, mut scores) = (vec![], vec![], vec![]);
        for (i, &rho) in cfg.rhos.iter().enumerate() {
            let r = risk(&theta_rho(&full, rho, cfg.ridge));
            let theta_fit = theta_rho(&fit, rho, cfg.ridge);
            let score = held_out_bag_loss(&xbar_val, &ybar_val, &theta_fit);
            full_risks.push(r);
            fit_risks.push(risk(&theta_fit));
            scores.push(score);
            ctx.log_all(i as u64, &[("rho", rho), ("risk_at_rho", r), ("val_score_at_rho", score)])?;
            ctx.tick(i as u64 + 1, total)?;
        }
        let at = |rho: f64| cfg.rhos.iter().position(|&r| r == rho).expect("checked: 0 and 1 are in the grid");
        let (risk_bag, risk_inst) = (full_risks[at(0.0)], full_risks[at(1.0)]);
        let best_end = risk_bag.min(risk_inst);
        let best = argmin(&full_risks);
        let chosen = argmin(&scores);
        ctx.set_final("risk_bag", risk_bag)?;
        ctx.set_final("risk_inst", risk_inst)?;
        ctx.set_final("risk_best", full_risks[best])?;
        ctx.set_final("best_rho", cfg.rhos[best])?;
        ctx.set_final("risk_val_selected", fit_risks[chosen])?;
        ctx.set_final("risk_val_refit", full_risks[chosen])?;
        ctx.set_final("val_rho", cfg.rhos[chosen])?;
        // Against the ends fitted on the same 80% of bags as the selected estimator (not the 100%
        // refits in `risk_bag` / `risk_inst`), so the gain measures the choice, not the data.
        ctx.set_final("val_gain_vs_best_end", fit_risks[at(0.0)].min(fit_risks[at(1.0)]) - fit_risks[chosen])?;
        let interior: Vec<usize> = (0..cfg.rhos.len()).filter(|&i| cfg.rhos[i] > 0.0 && cfg.rhos[i] < 1.0).collect();
        if let Some(&j) = interior.iter().min_by(|&&a, &&b| full_risks[a].total_cmp(&full_risks[b])) {
            ctx.set_final("risk_best_interior", full_risks[j])?;
            ctx.set_final("best_interior_rho", cfg.rhos[j])?;
            ctx.set_final("interior_gain_vs_best_end", best_end - full_risks[j])?;
        }
        // References: OLS on the individual (non-private) labels, the null estimator θ = 0, and
        // the instance-level population bias for random bags, (1 − 1/k)²‖θ*‖².
        let y_all = Tensor::from_slice(&problem.y).to_device(device);
        let ols = solve_ridged(&problem.x.transpose(0, 1).mm(&problem.x), &problem.x.transpose(0, 1).mv(&y_all), cfg.ridge);
        ctx.set_final("risk_oracle_ols", risk(&ols))?;
        ctx.set_final("theta_star_sq", theta_sq)?;
        ctx.set_final("inst_bias_random_bags", (1.0 - 1.0 / k as f64).powi(2) * theta_sq)?;
        ctx.set_final("bags", m as f64)?;

        if cfg.mlp_rhos.is_empty() {
            return Ok(());
        }
        // The generic-loss arm: an MLP trained on L_ρ from all bags' (possibly private) means,
        // scored by its excess risk on fresh isotropic points.
        let mut test_rng = Rng::new(ctx.seed ^ 0x7E57);
        let xt: Vec<f64> = (0..cfg.test_samples * d).map(|_| test_rng.normal()).collect();
        let xt = Tensor::from_slice(&xt).view([cfg.test_samples, d]).to_device(device);
        let ft = xt.mv(&problem.theta);
        let mut widths = vec![d];
        widths.extend(&cfg.mlp_hidden);
        widths.push(1);
        let opts = GenericFit { epochs: cfg.mlp_epochs, lr: cfg.mlp_lr, bags_per_batch: (cfg.mlp_batch_samples / k).max(1) };
        let every = (cfg.mlp_epochs / 20).max(1);
        let mut mlp_risks = vec![];
        for (j, &rho) in cfg.mlp_rhos.iter().enumerate() {
            // The same initialisation and bag order for every ρ: only the loss differs.
            tch::manual_seed((ctx.seed ^ 0x3117) as i64);
            let mut vs = nn::VarStore::new(device);
            let model = Mlp::new(&vs.root(), &widths, true);
            vs.double();
            let offset = cfg.rhos.len() as u64 + j as u64 * cfg.mlp_epochs;
            let mut train_rng = Rng::new(ctx.seed ^ 0xF17);
            fit_generic(&model, &vs, &xb, &ybar, rho, opts, &mut train_rng, |epoch, loss| {
                if epoch % every == 0 || epoch == cfg.mlp_epochs {
                    ctx.log_all(offset + epoch, &[("mlp_train_loss", loss)])?;
                }
                ctx.tick(offset + epoch, total)
            })?;
            let r = tch::no_grad(|| f64::try_from((model.forward(&xt).squeeze_dim(1) - &ft).square().mean(Kind::Double)))?;
            ctx.set_final(&format!("mlp_risk_rho_{}", rho_tag(rho)), r)?;
            mlp_risks.push(r);
        }
        let find = |rho: f64| cfg.mlp_rhos.iter().position(|&r| r == rho).map(|i| mlp_risks[i]);
        let (bag, inst) = (find(0.0), find(1.0));
        if let Some(v) = bag {
            ctx.set_final("mlp_risk_bag", v)?;
        }
        if let Some(v) = inst {
            ctx.set_final("mlp_risk_inst", v)?;
        }
        let interior = (0..cfg.mlp_rhos.len()).filter(|&i| cfg.mlp_rhos[i] > 0.0 && cfg.mlp_rhos[i] < 1.0).map(|i| mlp_risks[i]).fold(f64::INFINITY, f64::min);
        if interior.is_finite() {
            ctx.set_final("mlp_risk_best_interior", interior)?;
            if let (Some(b), Some(i)) = (bag, inst) {
                ctx.set_final("mlp_interior_gain_vs_best_end", b.min(i) - interior)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::context::ProgressMode;
    use crate::paper::Paper;
    use crate::testutil::f64s;
    use crate::train::lbfgs::{minimize, LbfgsOptions};

    /// Bags [m, k, d] and their means from a fresh problem with random bags.
    fn bagged(n: i64, d: i64, k: i64, noise: f64, seed: u64) -> (Problem, Tensor, Tensor) {
        let mut rng = Rng::new(seed);
        let p = sample_problem(n, d, noise, &mut rng, Device::Cpu);
        let members = random_bags(n, k, &mut rng);
        let m = members.len() as i64 / k;
        let ybar = Tensor::from_slice(&bag_means(&p.y, &members, k));
        let xb = p.x.index_select(0, &Tensor::from_slice(&members)).view([m, k, d]);
        (p, xb, ybar)
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        f64::try_from((a - b).abs().max()).unwrap()
    }

    fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
        f64::try_from((a - b).square().sum(Kind::Double).sqrt() / b.square().sum(Kind::Double).sqrt()).unwrap()
    }

    #[test]
    fn instance_loss_is_bag_loss_plus_within_bag_spread() {
        let mut rng = Rng::new(5);
        let (m, k) = (7, 4);
        let f = Tensor::from_slice(&(0..m * k).map(|_| 3.0 * rng.normal()).collect::<Vec<f64>>()).view([m, k]);
        let ybar = Tensor::from_slice(&(0..m).map(|_| rng.normal()).collect::<Vec<f64>>());
        let (bag, inst, spread) = (f64::try_from(l_bag(&f, &ybar)).unwrap(), f64::try_from(l_inst(&f, &ybar)).unwrap(), f64::try_from(within_bag_spread(&f)).unwrap());
        // The explicit sums, in plain Rust.
        let fv = f64s(&f);
        let yv = f64s(&ybar);
        let (mut bag_sum, mut inst_sum, mut spread_sum) = (0.0, 0.0, 0.0);
        for a in 0..m as usize {
            let row = &fv[a * k as usize..(a + 1) * k as usize];
            let mean = row.iter().sum::<f64>() / k as f64;
            bag_sum += (yv[a] - mean).powi(2);
            inst_sum += row.iter().map(|v| (yv[a] - v).powi(2)).sum::<f64>();
            spread_sum += row.iter().map(|v| (v - mean).powi(2)).sum::<f64>();
        }
        let n = (m * k) as f64;
        assert!((bag - bag_sum / m as f64).abs() < 1e-10 && (inst - inst_sum / n).abs() < 1e-10 && (spread - spread_sum / n).abs() < 1e-10);
        assert!((inst - (bag + spread)).abs() < 1e-10, "{inst} vs {bag} + {spread}");
        assert!(spread > 0.1, "a spread that cannot vanish here: {spread}");
        assert!((f64::try_from(l_rho(&f, &ybar, 0.0)).unwrap() - bag).abs() < 1e-10);
        assert!((f64::try_from(l_rho(&f, &ybar, 1.0)).unwrap() - inst).abs() < 1e-10);
    }

    #[test]
    fn with_singleton_bags_every_rho_is_ols() {
        let (p, xb, ybar) = bagged(200, 6, 1, 0.7, 11);
        let stats = bag_stats(&xb, &ybar);
        assert_eq!(f64::try_from(stats.sw.abs().max()).unwrap(), 0.0);
        // With k = 1 the statistics are the plain normal equations (any bag order): k X̄ᵀX̄ = XᵀX, k X̄ᵀȳ = Xᵀy.
        let y = Tensor::from_slice(&p.y);
        assert!(rel_err(&stats.gbar, &p.x.transpose(0, 1).mm(&p.x)) < 1e-12, "{}", rel_err(&stats.gbar, &p.x.transpose(0, 1).mm(&p.x)));
        assert!(rel_err(&stats.b, &p.x.transpose(0, 1).mv(&y)) < 1e-12, "{}", rel_err(&stats.b, &p.x.transpose(0, 1).mv(&y)));
        let x = xb.view([200, 6]);
        let ols = x.linalg_pinv(1e-15, false).mv(&ybar);
        // Sanity: with k = 1 the bag order is a permutation of the samples, ȳ = y.
        let direct = p.x.linalg_pinv(1e-15, false).mv(&Tensor::from_slice(&p.y));
        assert!(max_abs_diff(&ols, &direct) < 1e-10);
        for rho in [0.0, 0.3, 1.0] {
            // The run's relative ridge 1e-8 moves a well-posed solution by ~1e-8 relative.
            let theta = theta_rho(&stats, rho, 1e-8);
            assert!(rel_err(&theta, &ols) < 1e-6, "ρ = {rho}: {}", rel_err(&theta, &ols));
        }
    }

    #[test]
    fn rho_zero_and_one_are_ols_on_bag_means_and_on_broadcast_labels() {
        let (m, k, d) = (50, 4, 6);
        let (_, xb, ybar) = bagged(m * k, d, k, 0.5, 12);
        let stats = bag_stats(&xb, &ybar);
        let xbar = xb.mean_dim(1, false, Kind::Double);
        let on_means = xbar.linalg_pinv(1e-15, false).mv(&ybar);
        let broadcast = ybar.unsqueeze(1).expand([m, k], false).reshape([m * k]);
        let on_members = xb.view([m * k, d]).linalg_pinv(1e-15, false).mv(&broadcast);
        let (t0, t1) = (theta_rho(&stats, 0.0, 0.0), theta_rho(&stats, 1.0, 0.0));
        assert!(rel_err(&t0, &on_means) < 1e-9, "{}", rel_err(&t0, &on_means));
        assert!(rel_err(&t1, &on_members) < 1e-9, "{}", rel_err(&t1, &on_members));
        // The two ends differ (the instance-level one shrinks by ~1/k), so the checks bite.
        assert!(rel_err(&t1, &t0) > 0.3);
        // Fewer bags than features: the tiny ridge gives the min-norm bag-level solution.
        let few = xb.narrow(0, 0, 3);
        let few_y = ybar.narrow(0, 0, 3);
        let t = theta_rho(&bag_stats(&few, &few_y), 0.0, 1e-8);
        let min_norm = few.mean_dim(1, false, Kind::Double).linalg_pinv(1e-15, false).mv(&few_y);
        assert!(rel_err(&t, &min_norm) < 1e-5, "{}", rel_err(&t, &min_norm));
    }

    #[test]
    fn large_n_limits_unbiased_bag_level_and_theta_over_k_instance_level() {
        let (n, d, k) = (100_000, 5, 4);
        let (p, xb, ybar) = bagged(n, d, k, 0.5, 13);
        let stats = bag_stats(&xb, &ybar);
        let target = &p.theta / k as f64;
        let inst = theta_rho(&stats, 1.0, 1e-8);
        assert!(rel_err(&inst, &target) < 0.05, "instance-level {}", rel_err(&inst, &target));
        assert!(rel_err(&inst, &p.theta) > 0.5, "and it is far from θ*");
        let bag = theta_rho(&stats, 0.0, 1e-8);
        assert!(rel_err(&bag, &p.theta) < 0.05, "bag-level {}", rel_err(&bag, &p.theta));
    }

    #[test]
    fn autograd_minimisers_of_l_rho_match_the_closed_form() {
        let (m, k, d, rho) = (40, 3, 4, 0.3);
        let (_, xb, ybar) = bagged(m * k, d, k, 0.5, 14);
        let closed = theta_rho(&bag_stats(&xb, &ybar), rho, 0.0);
        for other in [0.0, 1.0] {
            assert!(rel_err(&theta_rho(&bag_stats(&xb, &ybar), other, 0.0), &closed) > 0.1, "ρ must matter here");
        }
        let value_and_grad = |p: &Tensor| -> Result<(f64, Tensor)> {
            let p = p.detach().set_requires_grad(true);
            let loss = l_rho(&xb.matmul(&p), &ybar, rho);
            let g = Tensor::run_backward(&[&loss], &[&p], false, false).remove(0);
            Ok((f64::try_from(&loss)?, g))
        };
        // Stationarity at the closed form…
        let (_, g) = value_and_grad(&closed).unwrap();
        assert!(f64::try_from(g.abs().max()).unwrap() < 1e-10);
        // …and L-BFGS from zero lands on it.
        let opts = LbfgsOptions { max_iter: 500, gtol: 1e-10, ftol: 0.0, ..Default::default() };
        let res = minimize(value_and_grad, Tensor::zeros([d], (Kind::Double, Device::Cpu)), opts).unwrap();
        assert!(rel_err(&res.x, &closed) < 1e-7, "L-BFGS {}", rel_err(&res.x, &closed));
        // The generic path: Adam on a bias-free linear model, whole bags per (full) batch.
        tch::manual_seed(0);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let lin = nn::linear(vs.root() / "lin", d, 1, nn::LinearConfig { bias: false, ..Default::default() });
        vs.double();
        let opts = GenericFit { epochs: 3000, lr: 0.01, bags_per_batch: m };
        let mut last = f64::INFINITY;
        fit_generic(&lin, &vs, &xb, &ybar, rho, opts, &mut Rng::new(1), |_, loss| {
            last = loss;
            Ok(())
        })
        .unwrap();
        let w = lin.ws.detach().view([d]);
        assert!(rel_err(&w, &closed) < 2e-2, "Adam {}", rel_err(&w, &closed));
        let optimum = f64::try_from(l_rho(&xb.matmul(&closed), &ybar, rho)).unwrap();
        assert!(last >= optimum - 1e-9 && last < optimum * 1.01 + 1e-6, "{last} vs {optimum}");
    }

    #[test]
    fn laplace_variance_and_the_clipped_private_release() {
        let mut rng = Rng::new(21);
        let b = 1.5;
        let draws: Vec<f64> = (0..200_000).map(|_| laplace(&mut rng, b)).collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / draws.len() as f64;
        let mean_abs = draws.iter().map(|x| x.abs()).sum::<f64>() / draws.len() as f64;
        // Var = 2b² (SE ≈ b²·√(20/N) ≈ 0.5% here), E|X| = b.
        assert!((var / (2.0 * b * b) - 1.0).abs() < 0.03, "var {var}");
        assert!(mean.abs() < 0.02 && (mean_abs / b - 1.0).abs() < 0.02, "{mean} {mean_abs}");

        let k = 5;
        let y: Vec<f64> = (0..50_000).map(|_| 3.0 * rng.normal()).collect();
        let members: Vec<i64> = (0..50_000).collect();
        // ε = ∞: no noise, only clipping, so every released mean is within the bounds.
        let clean = private_bag_means(&y, &members, k, -2.0, 2.0, f64::INFINITY, &mut rng);
        assert!(clean.iter().all(|v| (-2.0..=2.0).contains(v)));
        let unclipped = bag_means(&y, &members, k);
        assert!(clean.iter().zip(&unclipped).any(|(a, b)| (a - b).abs() > 0.1), "clipping must act on N(0, 9) responses");
        // Sensitivity: one response moved anywhere shifts its bag's clipped mean by ≤ Δ = 4/k.
        let mut y2 = y.clone();
        y2[3] = 1e6;
        let moved = private_bag_means(&y2, &members, k, -2.0, 2.0, f64::INFINITY, &mut rng);
        assert!((moved[0] - clean[0]).abs() <= 4.0 / k as f64 + 1e-12 && moved[1..] == clean[1..]);
        // The released noise has the Laplace(0, Δ/ε) variance 2(Δ/ε)².
        let eps = 0.5;
        let noisy = private_bag_means(&y, &members, k, -2.0, 2.0, eps, &mut rng);
        let noise_var = noisy.iter().zip(&clean).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / clean.len() as f64;
        let scale = 4.0 / k as f64 / eps;
        assert!((noise_var / (2.0 * scale * scale) - 1.0).abs() < 0.12, "{noise_var}");
    }

    #[test]
    fn bags_partition_the_samples_and_curated_bags_are_sorted_chunks() {
        let mut rng = Rng::new(3);
        let bags = random_bags(23, 5, &mut rng);
        assert_eq!(bags.len(), 20);
        let mut sorted = bags.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 20);
        assert!(sorted.iter().all(|&i| (0..23).contains(&i)));
        let p = sample_problem(23, 3, 0.1, &mut rng, Device::Cpu);
        let before = rng.clone();
        let curated = curated_bags(&p.x, 5, &mut rng);
        let mut replay = before;
        let u: Vec<f64> = (0..3).map(|_| replay.normal()).collect();
        let proj = f64s(&p.x.mv(&Tensor::from_slice(&u)));
        for pair in curated.chunks(5).collect::<Vec<_>>().windows(2) {
            let hi = pair[0].iter().map(|&i| proj[i as usize]).fold(f64::MIN, f64::max);
            let lo = pair[1].iter().map(|&i| proj[i as usize]).fold(f64::MAX, f64::min);
            assert!(hi <= lo, "bags must be consecutive along the projection");
        }
    }

    /// The final metrics of one run of `cfg` with `seed`, in a scratch directory.
    fn run_once(cfg: &Config, seed: u64, tag: &str) -> BTreeMap<String, f64> {
        let dir = std::env::temp_dir().join(format!("reglab-aggregate-{}-{tag}-{seed}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ctx = RunCtx::new(&dir, "t", seed, Device::Cpu, ProgressMode::Quiet, &dir).unwrap();
        AggregateResponses::check(cfg).unwrap();
        AggregateResponses::run(cfg, &mut ctx).unwrap();
        let f = ctx.final_metrics();
        ctx.finish().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        f
    }

    #[test]
    fn a_small_run_reports_consistent_metrics() {
        // Every path at once (curated bags, DP, the MLP arm): all metrics are there and finite.
        let cfg = Config { dim: 8, samples: 300, bag_size: 5, bags: BagKind::Curated, dp_epsilon: Some(2.0), mlp_rhos: vec![0.0, 0.5, 1.0], mlp_hidden: vec![8], mlp_epochs: 5, test_samples: 200, ..Config::default() };
        let f = run_once(&cfg, 2, "all");
        for key in ["risk_bag", "risk_inst", "risk_best", "risk_best_interior", "risk_val_selected", "val_gain_vs_best_end", "interior_gain_vs_best_end", "mlp_risk_bag", "mlp_risk_inst", "mlp_risk_rho_0p5", "mlp_interior_gain_vs_best_end", "mlp_train_loss"] {
            assert!(f.get(key).is_some_and(|v| v.is_finite()), "{key}");
        }

        // k = 1: every bag is one sample and ȳ = y, so both ends are OLS on the individual labels.
        let single = Config { dim: 8, samples: 300, bag_size: 1, noise_std: 0.7, ..Config::default() };
        let f = run_once(&single, 3, "k1");
        let ols = f["risk_oracle_ols"];
        assert!(ols > 1e-3, "a risk that cannot vanish at n/d = 37.5, s = 0.7: {ols}");
        assert!((f["risk_bag"] - ols).abs() < 1e-9 && (f["risk_inst"] - ols).abs() < 1e-9, "{} {} vs OLS {ols}", f["risk_bag"], f["risk_inst"]);

        // m = d bags (n/k = d): the bag-level fit solves a square random system and its variance
        // blows up, while the instance-level one only pays its bias ≈ (1 − 1/k)²‖θ*‖² ≈ 0.9.
        let square = Config { dim: 8, samples: 160, bag_size: 20, noise_std: 1.0, ..Config::default() };
        let (mut bag, mut inst) = (0.0, 0.0);
        for seed in 0..5 {
            let f = run_once(&square, seed, "square");
            assert_eq!(f["bags"], 8.0);
            bag += f["risk_bag"] / 5.0;
            inst += f["risk_inst"] / 5.0;
        }
        assert!(bag > 5.0 * inst, "mean bag-level risk {bag} vs instance-level {inst} at m = d");
        assert!(inst > 0.3 && inst < 2.0, "instance-level risk ≈ its bias: {inst}");

        // Bad grids are refused, naming the key.
        for (rhos, what) in [(vec![0.2, 1.0], "contain 0"), (vec![0.0, 0.2], "contain 1"), (vec![0.0, 1.0], "strictly inside"), (vec![0.0, 0.5, 1.5], "lie in [0, 1]")] {
            let err = AggregateResponses::check(&Config { rhos: rhos.clone(), ..Config::default() }).unwrap_err().to_string();
            assert!(err.contains("`rhos`") && err.contains(what), "{rhos:?}: {err}");
            let err = AggregateResponses::check(&Config { mlp_rhos: rhos.clone(), ..Config::default() }).unwrap_err().to_string();
            assert!(err.contains("`mlp_rhos`") && err.contains(what), "{rhos:?}: {err}");
        }
        let err = AggregateResponses::check(&Config { clip_min: 1.0, clip_max: 1.0, dp_epsilon: Some(1.0), ..Config::default() }).unwrap_err().to_string();
        assert!(err.contains("`clip_min`") && err.contains("got"), "{err}");
    }
}
