//! Compressing Features for Learning with Noisy Labels — Chen, Shen, Hu, Ai & Suykens,
//! arXiv 2206.13140 (Nested Dropout + Co-teaching).
//!
//! Nested dropout keeps only the first k features of the representation (k drawn per batch from
//! p(k) ∝ exp(−((k−μ)/σ)²)), which orders features by importance and compresses them; the
//! truncation K* is chosen on clean validation data. Compression curbs the memorisation of noisy
//! labels; two compressed networks then fine-tune each other with Co-teaching's small-loss
//! selection. The experiment: with 40% label noise CE's last-epoch accuracy falls below its best,
//! Nested and Dropout reduce the fall, and Nested + Co-teaching scores highest.
//!
//! Checked against the official code (yingyichen-cyy/Nested-Co-teaching): p(k) over k = 1..D with
//! no ½ in the exponent, one k per mini-batch, the mask multiplies the features without
//! rescaling, bias-free linear classifier on post-ReLU features; every epoch K* = argmax over
//! 0-based k of (val acc_k − 1e−5·k), K*+1 channels kept; dropout baseline = standard
//! (rescaled) dropout on the features; a linear lr warm-up before the first epoch that does not
//! count for model selection (the official code resets best_acc after it), then MultiStepLR
//! ×0.1 at the milestones (official [200, 300] of 350 epochs; the spec scales them to its
//! budget). Stage 2 (as
//! `co_teaching_resnet/`): each batch is split in half, each network scores its own half in eval
//! mode without gradients, masked at the K* last selected on validation, keeps the
//! int((1−τ)·B/2) smallest-loss samples, and its peer trains on them under a freshly drawn
//! nested mask (one k per batch, shared); τ constant (pre-trained networks); the
//! reported accuracy is the two networks' averaged logits at a K re-selected on validation each
//! epoch, taken at the best validation epoch. Co-teaching from scratch follows Han et al. 2018
//! (both networks rank the whole batch; τ_t = τ·min(t/T_k, 1)); the official repo only has it
//! for Clothing1M. Stage 2 starts from each stage-1 network's best-validation checkpoint; the
//! loaded pair is evaluated first (`Evaluation(0)`: the first ranking K, and a selection
//! candidate), and its lr drops ×0.1 halfway (official `--lrSchedule 50` of 100 epochs).
//! `test_acc_last`/`test_acc_drop` (last epoch vs best) are our additions.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::context::{Rng, RunCtx};
use crate::data::block::{LabelNoise, NoiseKind, Normalize};
use crate::data::{Data, DataConfig};
use crate::models::Mlp;
use crate::paper::Blocks;
use crate::train::coteaching::{kept, small_loss};

pub struct NestedCoteaching;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Ce,
    Dropout,
    Nested,
    Coteaching,
    NestedCoteaching,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data: DataConfig,
    /// Hidden widths of the feature MLP; its last width is the feature dimension D.
    pub features: Vec<i64>,
    pub method: Method,
    pub epochs: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Stage-1 learning rate ×0.1 at these epochs (official: [200, 300] of 350).
    pub milestones: Vec<u64>,
    /// Linear learning-rate warm-up iterations before the first epoch (official `--warmUpIter`).
    pub warmup_iters: u64,
    /// σ of the nested distribution (μ = `nested_mu`).
    pub nested_sigma: f64,
    pub nested_mu: f64,
    pub dropout: f64,
    /// Co-teaching forget rate τ and ramp length T_k (epochs, from scratch only).
    pub forget_rate: f64,
    pub ramp_epochs: u64,
    /// Stage 2 of Nested + Co-teaching.
    pub finetune_epochs: u64,
    pub finetune_lr: f64,
    /// Stage-2 learning rate ×0.1 at these fine-tuning epochs (official `--lrSchedule 50` of 100).
    pub finetune_milestones: Vec<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data: DataConfig {
                name: "digits".into(),
                test_fraction: 0.221,
                val_fraction: 0.1429,
                normalize: Normalize::Unit,
                flatten: true,
                label_noise: LabelNoise { kind: NoiseKind::Symmetric, rate: 0.4, map: vec![] },
                ..DataConfig::default()
            },
            features: vec![256, 256, 64],
            method: Method::Nested,
            epochs: 120,
            batch_size: 64,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            milestones: vec![],
            warmup_iters: 200,
            nested_sigma: 10.0,
            nested_mu: 0.0,
            dropout: 0.3,
            forget_rate: 0.4,
            ramp_epochs: 10,
            finetune_epochs: 40,
            finetune_lr: 0.005,
            finetune_milestones: vec![20],
        }
    }
}

/// `base` × 0.1 per milestone reached (MultiStepLR, γ 0.1, stepped once per epoch).
fn multistep(base: f64, milestones: &[u64], epoch: u64) -> f64 {
    base * 0.1f64.powi(milestones.iter().filter(|&&m| m <= epoch).count() as i32)
}

/// p(k) ∝ exp(−((k − μ)/σ)²) for k = 1..D (no factor ½, as in the official code).
pub fn nested_distribution(d: i64, mu: f64, sigma: f64) -> Vec<f64> {
    let w: Vec<f64> = (1..=d).map(|k| (-((k as f64 - mu) / sigma).powi(2)).exp()).collect();
    let total: f64 = w.iter().sum();
    w.into_iter().map(|x| x / total).collect()
}

fn sample(p: &[f64], rng: &mut Rng) -> i64 {
    let u = rng.uniform();
    let mut acc = 0.0;
    for (i, &x) in p.iter().enumerate() {
        acc += x;
        if u < acc {
            return i as i64 + 1;
        }
    }
    p.len() as i64
}

/// Feature MLP (ReLU on the features too) and a bias-free linear classifier.
struct Net {
    features: Mlp,
    w: Tensor,
    vs: nn::VarStore,
}

impl Net {
    fn new(input: i64, widths: &[i64], classes: i64, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let mut all = vec![input];
        all.extend(widths);
        let features = Mlp::new(&(vs.root() / "features"), &all, true);
        let d = *widths.last().expect("feature width");
        let bound = 1.0 / (d as f64).sqrt();
        let w = vs.root().var("classifier", &[d, classes], nn::Init::Uniform { lo: -bound, up: bound });
        Net { features, w, vs }
    }

    fn feats(&self, x: &Tensor) -> Tensor {
        self.features.forward(x).relu()
    }

    /// Logits with the first `k` features kept (all when None); `dropout` > 0 in training.
    fn logits(&self, x: &Tensor, k: Option<i64>, dropout: f64, train: bool) -> Tensor {
        let mut h = self.feats(x);
        if let Some(k) = k {
            let d = h.size()[1];
            let mask = Tensor::arange(d, (Kind::Int64, h.device())).lt(k).to_kind(Kind::Float);
            h = h * mask;
        }
        if dropout > 0.0 {
            h = h.dropout(dropout, train);
        }
        h.mm(&self.w)
    }

    /// Accuracy of every truncation k = 1..D on (x, y): [D] (logits built by cumulative sums).
    fn truncation_accuracies(nets: &[&Net], x: &Tensor, y: &Tensor) -> Vec<f64> {
        tch::no_grad(|| {
            // contributions[n, j, c] = h_j · W_jc, summed over j ≤ k, averaged over networks.
            let mut cum: Option<Tensor> = None;
            for net in nets {
                let h = net.feats(x);
                let contrib = h.unsqueeze(2) * net.w.unsqueeze(0);
                let c = contrib.cumsum(1, Kind::Float);
                cum = Some(match cum {
                    Some(t) => t + c,
                    None => c,
                });
            }
            let cum = cum.expect("a network");
            let pred = cum.argmax(2, false); // [N, D]
            let correct = pred.eq_tensor(&y.unsqueeze(1)).to_kind(Kind::Double).mean_dim(0, false, Kind::Double);
            Vec::<f64>::try_from(correct).expect("accuracies")
        })
    }
}

/// K* = argmax_k (acc_k − 1e−5·k) over 0-based k; returns (channels K*+1, penalised score).
pub fn select_truncation(acc: &[f64]) -> (i64, f64) {
    let mut best = (0usize, f64::NEG_INFINITY);
    for (k, a) in acc.iter().enumerate() {
        let score = a - 1e-5 * k as f64;
        if score > best.1 {
            best = (k, score);
        }
    }
    (best.0 as i64 + 1, best.1)
}

fn accuracy_at(nets: &[&Net], x: &Tensor, y: &Tensor, k: Option<i64>) -> f64 {
    tch::no_grad(|| {
        let mut logits = nets[0].logits(x, k, 0.0, false);
        for n in &nets[1..] {
            logits = logits + n.logits(x, k, 0.0, false);
        }
        crate::losses::classify::accuracy(&logits, y)
    })
}

/// Tracks model selection on validation and the test accuracy at the selected epoch, and keeps
/// a copy of the selected weights (stage 2 starts from the stage-1 networks' best checkpoints).
#[derive(Default)]
struct Selection {
    best_val: f64,
    test_at_best_val: f64,
    k_at_best_val: i64,
    best_test: f64,
    last_test: f64,
    checkpoint: Vec<(String, Tensor)>,
}

fn snapshot(net: &Net) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = net.vs.variables().into_iter().map(|(k, t)| (k, t.detach().copy())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn restore(net: &Net, saved: &[(String, Tensor)]) {
    let vars = net.vs.variables();
    tch::no_grad(|| {
        for (name, t) in saved {
            let mut dst = vars[name].shallow_clone();
            dst.copy_(t);
        }
    });
}

impl NestedCoteaching {
    /// Validation/test evaluation of `nets` (their averaged logits) after an epoch.
    /// Returns the truncation chosen on validation this epoch (nested methods).
    fn evaluate(cfg: &Config, nets: &[&Net], data: &Data, sel: &mut Selection, step: u64, ctx: &mut RunCtx, log: bool) -> Result<Option<i64>> {
        let val = data.val.as_ref().expect("validation split");
        let nested = matches!(cfg.method, Method::Nested | Method::NestedCoteaching);
        let (k, val_score) = if nested {
            let (k, s) = select_truncation(&Net::truncation_accuracies(nets, &val.x, &val.y));
            (Some(k), s)
        } else {
            (None, accuracy_at(nets, &val.x, &val.y, None))
        };
        let test = accuracy_at(nets, &data.test.x, &data.test.y, k);
        if val_score > sel.best_val {
            sel.best_val = val_score;
            sel.test_at_best_val = test;
            sel.k_at_best_val = k.unwrap_or(0);
            if nets.len() == 1 {
                sel.checkpoint = snapshot(nets[0]);
            }
        }
        sel.best_test = sel.best_test.max(test);
        sel.last_test = test;
        if !log {
            return Ok(k);
        }
        let train = accuracy_at(nets, &data.train.x, &data.train.y, k);
        ctx.log_all(step, &[("val_score", val_score), ("test_acc_epoch", test), ("train_acc", train), ("k", k.unwrap_or(0) as f64)])?;
        Ok(k)
    }

    fn sgd(cfg: &Config, net: &Net, lr: f64) -> Result<nn::Optimizer> {
        Ok(nn::Sgd { momentum: cfg.momentum, dampening: 0.0, wd: cfg.weight_decay, nesterov: false }.build(&net.vs, lr)?)
    }

    /// One stage-1 step on the batch `idx` at learning rate `lr`: CE / Dropout / Nested on one
    /// network, or Han et al.'s Co-teaching on two (both rank the batch; each trains on its
    /// peer's small-loss set, τ ramped over `ramp_epochs`).
    #[allow(clippy::too_many_arguments)]
    fn scratch_step(cfg: &Config, data: &Data, nets: &[Net], opts: &mut [nn::Optimizer], idx: &Tensor, lr: f64, epoch: u64, p: &[f64], ctx: &mut RunCtx) {
        let nested = matches!(cfg.method, Method::Nested | Method::NestedCoteaching);
        let dropout = if cfg.method == Method::Dropout { cfg.dropout } else { 0.0 };
        let k = nested.then(|| sample(p, ctx.rng()));
        let (x, y) = (data.train.x.index_select(0, idx), data.train.y.index_select(0, idx));
        if nets.len() == 1 {
            opts[0].set_lr(lr);
            let loss = nets[0].logits(&x, k, dropout, true).cross_entropy_for_logits(&y);
            opts[0].backward_step(&loss);
        } else {
            let tau = cfg.forget_rate * (epoch as f64 / cfg.ramp_epochs.max(1) as f64).min(1.0);
            let keep = kept(y.size()[0], tau);
            let l0 = nets[0].logits(&x, k, 0.0, true).cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::None, -100, 0.0);
            let l1 = nets[1].logits(&x, k, 0.0, true).cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::None, -100, 0.0);
            let (s0, s1) = (small_loss(&l0.detach(), keep), small_loss(&l1.detach(), keep));
            for (o, (l, s)) in opts.iter_mut().zip([(l0, s1), (l1, s0)]) {
                o.set_lr(lr);
                o.backward_step(&l.index_select(0, &s).mean(Kind::Float));
            }
        }
    }

    /// Stage 1 (CE, Dropout, Nested) or Co-teaching from scratch, as `nested/train_resnet.py`: a
    /// linear lr warm-up *before* the epochs (it cycles through shuffled batches and, like the
    /// official loop that breaks when its counter reaches `warmUpIter`, makes warmup_iters − 1
    /// updates at lr·i/warmup_iters), one evaluation after it that is logged at step 0 and then
    /// forgotten (the official code resets best_acc), then `epochs` epochs with the milestones.
    fn train_from_scratch(cfg: &Config, data: &Data, nets: &[Net], ctx: &mut RunCtx, sel: &mut Selection, log: bool) -> Result<()> {
        let p = nested_distribution(*cfg.features.last().expect("D"), cfg.nested_mu, cfg.nested_sigma);
        let mut opts: Vec<nn::Optimizer> = nets.iter().map(|n| Self::sgd(cfg, n, cfg.lr)).collect::<Result<_>>()?;
        let refs: Vec<&Net> = nets.iter().collect();
        if cfg.warmup_iters > 1 {
            let mut iter = 1u64;
            'warm: loop {
                for idx in data.train.batches(cfg.batch_size, ctx.rng()) {
                    if iter >= cfg.warmup_iters {
                        break 'warm;
                    }
                    let lr = cfg.lr * iter as f64 / cfg.warmup_iters as f64;
                    Self::scratch_step(cfg, data, nets, &mut opts, &idx, lr, 0, &p, ctx);
                    iter += 1;
                }
            }
            Self::evaluate(cfg, &refs, data, sel, 0, ctx, log)?;
            *sel = Selection { best_val: f64::NEG_INFINITY, ..Default::default() };
        }
        for epoch in 0..cfg.epochs {
            let lr = multistep(cfg.lr, &cfg.milestones, epoch);
            for idx in data.train.batches(cfg.batch_size, ctx.rng()) {
                Self::scratch_step(cfg, data, nets, &mut opts, &idx, lr, epoch, &p, ctx);
            }
            Self::evaluate(cfg, &refs, data, sel, epoch + 1, ctx, log)?;
            ctx.tick(epoch + 1, cfg.epochs)?;
        }
        Ok(())
    }

    /// Stage 2: the official half-batch, eval-mode small-loss Co-teaching of two nested nets
    /// (`co_teaching_resnet/main.py`). Before the first epoch the loaded pair is evaluated like
    /// any epoch (`Evaluation(0)`): its averaged-logit K on validation is the first ranking
    /// truncation and the pair itself is a model-selection candidate. A selected K of one channel
    /// ranks with all channels, as the official code substitutes `feat_dim − 1` for index 0.
    fn finetune(cfg: &Config, data: &Data, nets: &[Net], ctx: &mut RunCtx, sel: &mut Selection) -> Result<()> {
        let p = nested_distribution(*cfg.features.last().expect("D"), cfg.nested_mu, cfg.nested_sigma);
        let d = *cfg.features.last().expect("D");
        let ranking = |k: i64| if k <= 1 { d } else { k };
        let refs: Vec<&Net> = nets.iter().collect();
        let mut k_rank = ranking(Self::evaluate(cfg, &refs, data, sel, cfg.epochs, ctx, true)?.unwrap_or(d));
        let mut opts: Vec<nn::Optimizer> = nets.iter().map(|n| Self::sgd(cfg, n, cfg.finetune_lr)).collect::<Result<_>>()?;
        let tau = cfg.forget_rate;
        for epoch in 0..cfg.finetune_epochs {
            let lr = multistep(cfg.finetune_lr, &cfg.finetune_milestones, epoch);
            for o in opts.iter_mut() {
                o.set_lr(lr);
            }
            for idx in data.train.batches(cfg.batch_size, ctx.rng()) {
                let b = idx.size()[0];
                if b < 2 {
                    continue;
                }
                let k = Some(sample(&p, ctx.rng()));
                let rank_k = Some(k_rank);
                let halves = [idx.narrow(0, 0, b / 2), idx.narrow(0, b / 2, b - b / 2)];
                // Each network ranks its own half without gradients; its peer trains on the pick.
                let picks: Vec<Tensor> = nets
                    .iter()
                    .zip(&halves)
                    .map(|(net, h)| {
                        let (x, y) = (data.train.x.index_select(0, h), data.train.y.index_select(0, h));
                        let l = tch::no_grad(|| net.logits(&x, rank_k, 0.0, false).cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::None, -100, 0.0));
                        h.index_select(0, &small_loss(&l, kept(h.size()[0], tau)))
                    })
                    .collect();
                for (i, o) in opts.iter_mut().enumerate() {
                    let chosen = &picks[1 - i];
                    let (x, y) = (data.train.x.index_select(0, chosen), data.train.y.index_select(0, chosen));
                    o.backward_step(&nets[i].logits(&x, k, 0.0, true).cross_entropy_for_logits(&y));
                }
            }
            k_rank = Self::evaluate(cfg, &refs, data, sel, cfg.epochs + epoch + 1, ctx, true)?.map_or(k_rank, ranking);
            ctx.tick(cfg.epochs + epoch + 1, cfg.epochs + cfg.finetune_epochs)?;
        }
        Ok(())
    }
}

impl Blocks for Config {
    fn data_block(&self) -> Option<&DataConfig> {
        Some(&self.data)
    }
}

impl crate::paper::Paper for NestedCoteaching {
    const KEY: &'static str = "nested_coteaching";
    const TITLE: &'static str = "Compressing Features for Learning with Noisy Labels";
    const ARXIV: &'static str = "2206.13140";
    type Config = Config;

    fn check(c: &Config) -> Result<()> {
        if c.data.val_fraction <= 0.0 {
            bail!("`data.val_fraction` must be positive: model selection needs a clean validation split");
        }
        if c.features.is_empty() || c.epochs == 0 || c.batch_size == 0 || !(c.nested_sigma > 0.0) {
            bail!("`features` must list at least one width; `epochs`, `batch_size`, `nested_sigma` must be positive");
        }
        if !(0.0..1.0).contains(&c.forget_rate) || !(0.0..1.0).contains(&c.dropout) {
            bail!("`forget_rate` and `dropout` must be in [0, 1)");
        }
        Ok(())
    }

    fn run(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
        let data = cfg.data.load_for_run(ctx)?;
        let input: i64 = data.sample_shape.iter().product();
        let (device, classes) = (ctx.device, data.classes);
        let make = |seed: u64| {
            tch::manual_seed(seed as i64);
            Net::new(input, &cfg.features, classes, device)
        };
        let mut sel = Selection { best_val: f64::NEG_INFINITY, ..Default::default() };
        match cfg.method {
            Method::Ce | Method::Dropout | Method::Nested => {
                let nets = [make(ctx.seed)];
                Self::train_from_scratch(cfg, &data, &nets, ctx, &mut sel, true)?;
            }
            Method::Coteaching => {
                let nets = [make(ctx.seed), make(ctx.seed + 1_000_003)];
                Self::train_from_scratch(cfg, &data, &nets, ctx, &mut sel, true)?;
            }
            Method::NestedCoteaching => {
                // Stage 1: two nested networks from different seeds, each restored to its best
                // validation checkpoint (not logged as the result).
                let mut stage1 = vec![];
                for seed in [ctx.seed, ctx.seed + 1_000_003] {
                    let mut best = Selection { best_val: f64::NEG_INFINITY, ..Default::default() };
                    let net = [make(seed)];
                    Self::train_from_scratch(cfg, &data, &net, ctx, &mut best, false)?;
                    let [net] = net;
                    restore(&net, &best.checkpoint);
                    stage1.push(net);
                }
                Self::finetune(cfg, &data, &stage1, ctx, &mut sel)?;
            }
        }
        ctx.set_final("test_acc", sel.test_at_best_val)?;
        ctx.set_final("test_acc_last", sel.last_test)?;
        ctx.set_final("best_test_acc", sel.best_test)?;
        ctx.set_final("test_acc_drop", sel.best_test - sel.last_test)?;
        ctx.set_final("k_selected", sel.k_at_best_val as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Split;

    #[test]
    fn nested_distribution_ratio_and_sum() {
        let p = nested_distribution(64, 0.0, 10.0);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((p[0] / p[1] - (3.0f64 / 100.0).exp()).abs() < 1e-12, "p(1)/p(2) = exp((4−1)/σ²)");
        let mut rng = Rng::new(0);
        let draws: Vec<i64> = (0..2000).map(|_| sample(&p, &mut rng)).collect();
        assert!(draws.iter().all(|&k| (1..=64).contains(&k)));
        let mean = draws.iter().sum::<i64>() as f64 / 2000.0;
        let expected: f64 = p.iter().enumerate().map(|(i, x)| (i + 1) as f64 * x).sum();
        assert!((mean - expected).abs() < 0.5, "{mean} vs {expected}");
    }

    #[test]
    fn masks_truncate_and_full_mask_is_identity() {
        let net = Net::new(5, &[8, 6], 3, Device::Cpu);
        let x = Tensor::randn([4, 5], (Kind::Float, Device::Cpu));
        let full = net.logits(&x, None, 0.0, false);
        let all = net.logits(&x, Some(6), 0.0, false);
        assert!(f64::try_from((&full - &all).abs().max()).unwrap() < 1e-6);
        let k = 2;
        let trunc = net.feats(&x).narrow(1, 0, k).mm(&net.w.narrow(0, 0, k));
        assert!(f64::try_from((net.logits(&x, Some(k), 0.0, false) - trunc).abs().max()).unwrap() < 1e-6);
        // Cumulative truncation accuracies agree with masking one k at a time.
        let y = Tensor::from_slice(&[0i64, 1, 2, 1]);
        let acc = Net::truncation_accuracies(&[&net], &x, &y);
        for k in 1..=6 {
            assert!((acc[k as usize - 1] - accuracy_at(&[&net], &x, &y, Some(k))).abs() < 1e-12, "k={k}");
        }
    }

    #[test]
    fn selection_rules() {
        // Equal accuracy: the smaller k wins; 0-based index 1 means 2 channels.
        assert_eq!(select_truncation(&[0.5, 0.9, 0.9, 0.7]).0, 2);
        assert_eq!(multistep(0.1, &[2, 4], 1), 0.1);
        assert!((multistep(0.1, &[2, 4], 2) - 0.01).abs() < 1e-15 && (multistep(0.1, &[2, 4], 5) - 0.001).abs() < 1e-15);
    }

    /// Stage 2's core: net 0 trains on the small-loss pick that net 1 made from *its* half, and
    /// vice versa. With one-hot inputs, sample j reaches only column j of the first layer, so the
    /// columns a step changed name the samples that network trained on. Training each network on
    /// its own pick would change columns of its own half, disjoint from the peer's pick.
    #[test]
    fn stage2_trains_each_network_on_its_peers_pick() {
        let n = 8;
        let y = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(3);
        let split = || Split { x: Tensor::eye(n, (Kind::Float, Device::Cpu)), y: y.shallow_clone(), y_true: y.shallow_clone(), domain: Tensor::zeros([n], (Kind::Int64, Device::Cpu)) };
        let data = Data {
            train: split(),
            val: Some(split()),
            test: split(),
            classes: 3,
            sample_shape: vec![n],
            image_shape: vec![n],
            augment: Default::default(),
            realised_noise_rate: 0.0,
            bags: None,
        };
        let cfg = Config {
            features: vec![16, 6],
            method: Method::NestedCoteaching,
            batch_size: 8,
            finetune_epochs: 1,
            finetune_lr: 0.5,
            momentum: 0.0,
            weight_decay: 0.0,
            forget_rate: 0.5,
            nested_sigma: 1e6,
            ..Config::default()
        };
        let nets: Vec<Net> = [1i64, 2].iter().map(|&s| {
            tch::manual_seed(s);
            Net::new(n, &cfg.features, 3, Device::Cpu)
        }).collect();
        let dir = std::env::temp_dir().join(format!("reglab-nested-peer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ctx = RunCtx::new(&dir, "t", 0, Device::Cpu, crate::context::ProgressMode::Quiet, &dir).unwrap();
        // The batch finetune will draw (its first use of the run's rng), and the ranking K (the
        // epoch-0 evaluation of the pair; one channel would mean all).
        let idx = data.train.batches(cfg.batch_size, &mut ctx.rng().clone()).remove(0);
        let halves = [idx.narrow(0, 0, 4), idx.narrow(0, 4, 4)];
        let refs: Vec<&Net> = nets.iter().collect();
        let k = select_truncation(&Net::truncation_accuracies(&refs, &data.val.as_ref().unwrap().x, &y)).0;
        let k = if k <= 1 { 6 } else { k };
        let picks: Vec<Vec<i64>> = nets.iter().zip(&halves).map(|(net, h)| {
            let x = data.train.x.index_select(0, h);
            let l = tch::no_grad(|| net.logits(&x, Some(k), 0.0, false).cross_entropy_loss::<Tensor>(&y.index_select(0, h), None, tch::Reduction::None, -100, 0.0));
            Vec::<i64>::try_from(h.index_select(0, &small_loss(&l, kept(4, 0.5)))).unwrap()
        }).collect();
        let first_layer = |net: &Net| net.vs.variables()["features.layer0.weight"].detach().copy();
        let before: Vec<Tensor> = nets.iter().map(first_layer).collect();
        let mut sel = Selection { best_val: f64::NEG_INFINITY, ..Default::default() };
        NestedCoteaching::finetune(&cfg, &data, &nets, &mut ctx, &mut sel).unwrap();
        let _ = ctx.finish();
        let _ = std::fs::remove_dir_all(&dir);
        let own: Vec<Vec<i64>> = halves.iter().map(|h| Vec::<i64>::try_from(h).unwrap()).collect();
        for i in 0..2 {
            let moved = (first_layer(&nets[i]) - &before[i]).abs().amax([0].as_slice(), false);
            let changed: Vec<i64> = (0..n).filter(|&j| moved.double_value(&[j]) > 0.0).collect();
            assert!(!changed.is_empty(), "net {i} did not train");
            assert!(changed.iter().all(|j| picks[1 - i].contains(j)), "net {i} trained on {changed:?}, its peer picked {:?}", picks[1 - i]);
            assert!(changed.iter().all(|j| !own[i].contains(j)), "net {i} trained on its own half {:?}", own[i]);
        }
    }
}
