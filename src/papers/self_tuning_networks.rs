//! Self-Tuning Networks: Bilevel Optimization of Hyperparameters using Structured Best-Response
//! Functions — MacKay, Vicol, Lorraine, Duvenaud & Grosse, arXiv 1903.03088 (ICLR 2019).
//!
//! An STN replaces every layer by a best-response approximation ŵ_φ(λ), affine in the unconstrained
//! hyperparameters λ (hidden units gated by λ), fitted on training batches with λ perturbed per
//! example, and alternates that with Adam steps on λ against the validation loss through ŵ_φ, so one
//! training run tunes the hyperparameters online and leaves a schedule behind. The experiment: three
//! per-example dropout rates (input, each hidden layer) of an MLP on 600 digits, against plain MLPs with
//! one fixed dropout rate per run (a grid), every run evaluated at its best validation epoch.
//!
//! What was checked against the official code (asteroidhouse/self-tuning-networks):
//! - `cnn/hypermodels/hyperlinear.py`: out = s_e·(W_e x + b_e) + (U h)[:, :out] ⊙ (W_h x) + (U h)[:, out:] ⊙ b_h;
//!   W_e, W_h, b_e, b_h ~ U(±1/√fan_in), s_e one learnable scalar starting at 1, U = Linear(n_h → 2·out, no
//!   bias) ~ N(0, 0.01²); h = None gives the elementary path only. The AlexNet makes every fully connected
//!   layer, the output layer included, a HyperLinear; so do we.
//! - `stn_utils/hyperparameter.py`: two-sided ranges project by s_sigmoid = lo + (hi − lo)·sigmoid, inverted
//!   by s_logit; `perturb` draws λ̃ = λ_u + softplus(σ_u)·ε with ε of shape (batch, n_h), one row per
//!   example; the entropy is Σ log(softplus(σ_u)·√(2πe)); the hypernet input is λ̃ itself (identity
//!   `hnet_fcn`), not the rate.
//! - `cnn/util/hyperparameter.py`: hidden dropout rates live in (0, 0.9) (`drop_max`, "improves stability"),
//!   start s_logit(0.05; 0, 0.9); the *input* dropout rate lives in (0, 1) and starts at logit(0.05) — the
//!   note says (0, 0.9) for all three; we follow the code (`input_drop_max` 1.0). σ_u starts at
//!   inv_softplus(0.5) (`--perturb_scale`).
//! - `cnn/util/dropout.py`: a per-example keep mask Bernoulli(1 − p_i) divided by (1 − p_i), with p detached:
//!   no gradient reaches λ through the dropout itself.
//! - `cnn/hypertrain.py`: SGD (lr 0.01, momentum 0.9, no weight decay) on φ, Adam (3e-3) on λ_u and a second
//!   Adam (3e-3) on σ_u. Warm-up: 5 epochs of training steps only (perturbed λ̃; the warm-up counts toward
//!   the epochs). Then a global cycle of 2 training steps and 1 validation step that runs across epoch
//!   boundaries (the validation batches cycle through their own permutations). Training step: train mode,
//!   per-example λ̃, input dropout applied to the images with each example's rate, CE, only φ steps.
//!   Validation step: **eval mode** (no dropout, no input dropout), per-example λ̃ when tuning scales (λ_u
//!   repeated otherwise), loss CE − τ·H, only λ_u (and σ_u) step; every step zeroes all three optimisers'
//!   gradients first, so L_T never moves λ. τ defaults to 1e-5; the README's CNN command uses
//!   `--tune_all --tune_scales --entropy_weight=1e-3`, our default. After each training epoch: the full
//!   validation set in eval mode at the unperturbed λ_u; lr ×0.1 whenever that loss exceeds the minimum of
//!   the losses from more than 60 epochs back (`nonmono`, checked every epoch); the best-validation
//!   checkpoint is kept; stop after 75 epochs without improvement or once lr < 1e-5; the test set is
//!   evaluated at the best checkpoint. Selection and the lr rules start after the warm-up. The MultiStepLR
//!   the script builds is never stepped, and `--total_epochs` does not bound the loop; our `epochs` is a cap.
//! - `cnn/train_basic.py` (the fixed-hyperparameter baseline): the same SGD, best-validation checkpoint,
//!   nonmono and patience rules (it stops at lr < 1e-7; we use one `min_lr` for both).
//!
//! Small departures: the evaluation runs at the end of each epoch (the official loop notices the epoch
//! change one step into the next epoch); instead of saving checkpoints, the test set is evaluated every
//! epoch and the value at the best validation epoch is kept, which is the same number.

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::context::{Rng, RunCtx};
use crate::data::block::Normalize;
use crate::data::{Data, DataConfig, Split};
use crate::losses::classify::accuracy;
use crate::losses::metrics::nll;
use crate::paper::Blocks;

pub struct SelfTuningNetworks;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The self-tuning network: HyperLinear layers, per-example dropout rates tuned online.
    Stn,
    /// A plain MLP with one fixed dropout rate on the input and after every hidden layer.
    Fixed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Must be flattened and have a validation split (`val_fraction` > 0).
    pub data: DataConfig,
    pub method: Method,
    /// Hidden widths of the MLP; one dropout rate per hidden layer plus one on the input.
    pub hidden: Vec<i64>,
    /// `fixed`: the rate shared by the input and every hidden layer.
    pub fixed_dropout: f64,
    /// `stn`: the starting value of every rate (official `--start_drop`, `--start_indrop`).
    pub init_dropout: f64,
    /// The hidden rates live in (0, `drop_max`) (official 0.9).
    pub drop_max: f64,
    /// The input rate lives in (0, `input_drop_max`) (official 1).
    pub input_drop_max: f64,
    /// Initial perturbation scale softplus(σ_u) (official `--perturb_scale`).
    pub perturb_scale: f64,
    /// Tune σ_u on the validation loss with the entropy bonus (official `--tune_scales`).
    pub tune_scales: bool,
    /// τ of the bonus −τ·H (official default 1e-5; the README's CNN command 1e-3).
    pub entropy_weight: f64,
    /// At most this many training epochs (the warm-up included).
    pub epochs: u64,
    pub warmup_epochs: u64,
    pub batch_size: usize,
    /// Per cycle: this many steps on training batches (φ), then `valid_steps` on validation batches (λ).
    pub train_steps: u64,
    pub valid_steps: u64,
    /// SGD on φ (both methods).
    pub train_lr: f64,
    pub momentum: f64,
    /// Adam on λ_u and on σ_u.
    pub valid_lr: f64,
    pub scale_lr: f64,
    /// lr ×`lr_decay` when an epoch's validation loss exceeds the minimum of those more than `nonmono`
    /// epochs back (0: off).
    pub nonmono: u64,
    pub lr_decay: f64,
    /// Stop after this many epochs without a new best validation loss (0: off).
    pub patience: u64,
    /// Stop once the lr falls below this.
    pub min_lr: f64,
    /// Log the per-epoch curves (and the rates' schedule) every this many epochs.
    pub log_every: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // The note's split: 600 train / 300 validation / 896 test (stratified rounding).
            data: DataConfig {
                name: "digits".into(),
                test_fraction: 0.499,
                val_fraction: 0.3333,
                train_size: Some(600),
                normalize: Normalize::Unit,
                flatten: true,
                ..DataConfig::default()
            },
            method: Method::Stn,
            hidden: vec![256, 256],
            fixed_dropout: 0.05,
            init_dropout: 0.05,
            drop_max: 0.9,
            input_drop_max: 1.0,
            perturb_scale: 0.5,
            tune_scales: true,
            entropy_weight: 1e-3,
            epochs: 500,
            warmup_epochs: 5,
            batch_size: 128,
            train_steps: 2,
            valid_steps: 1,
            train_lr: 0.01,
            momentum: 0.9,
            valid_lr: 3e-3,
            scale_lr: 3e-3,
            nonmono: 60,
            lr_decay: 0.1,
            patience: 75,
            min_lr: 1e-5,
            log_every: 5,
        }
    }
}

/// lo + (hi − lo)·sigmoid(x): an unconstrained value's image in (lo, hi) (official `s_sigmoid`).
pub fn s_sigmoid(x: &Tensor, lo: f64, hi: f64) -> Tensor {
    x.sigmoid() * (hi - lo) + lo
}

/// The inverse of [`s_sigmoid`] on (lo, hi) (official `s_logit`).
pub fn s_logit(y: &Tensor, lo: f64, hi: f64) -> Tensor {
    let z = (y - lo) / (hi - lo);
    z.log() - (z.neg() + 1.0).log()
}

/// log(eˣ − 1), the inverse of softplus on (0, ∞).
pub fn inv_softplus(x: f64) -> f64 {
    x.exp_m1().ln()
}

/// Per-example perturbed hyperparameters λ_u + softplus(σ_u)·ε, ε ~ N(0, I) of shape [batch, n_h].
pub fn perturb(unconstrained: &Tensor, scale: &Tensor, batch: i64) -> Tensor {
    let eps = Tensor::randn([batch, unconstrained.size()[0]], (unconstrained.kind(), unconstrained.device()));
    unconstrained.unsqueeze(0) + scale.softplus().unsqueeze(0) * eps
}

/// Entropy of the perturbation N(0, diag softplus(σ_u)²): Σ_j log(softplus(σ_u,j)·√(2πe)).
pub fn perturbation_entropy(scale: &Tensor) -> Tensor {
    (scale.softplus() * (2.0 * std::f64::consts::PI * std::f64::consts::E).sqrt()).log().sum(scale.kind())
}

/// Dropout with one rate per example: x [B, D] times a Bernoulli(1 − p_i) keep mask divided by
/// (1 − p_i). The rate is detached, as in the official code: λ is tuned only through the hypernet.
pub fn per_example_dropout(x: &Tensor, rate: &Tensor) -> Tensor {
    let keep = x.ones_like() * (rate.detach().neg() + 1.0).unsqueeze(1);
    x * keep.bernoulli() / keep
}

/// The STN best-response linear layer (official `HyperLinear`).
#[derive(Debug)]
pub struct HyperLinear {
    /// [out, in]
    pub elem_weight: Tensor,
    /// [out]
    pub elem_bias: Tensor,
    /// [1]: the learnable scalar s_e.
    pub elem_scale: Tensor,
    /// [out, in]
    pub hnet_weight: Tensor,
    /// [out]
    pub hnet_bias: Tensor,
    /// [2·out, n_h]: U, the bias-free map from the hypernet input to the weight and bias gates.
    pub h_to_scalars: Tensor,
    out: i64,
}

impl HyperLinear {
    pub fn new(p: &nn::Path, inp: i64, out: i64, n_h: i64) -> Self {
        let bound = 1.0 / (inp as f64).sqrt();
        let uniform = nn::Init::Uniform { lo: -bound, up: bound };
        HyperLinear {
            elem_weight: p.var("elem_weight", &[out, inp], uniform),
            elem_bias: p.var("elem_bias", &[out], uniform),
            elem_scale: p.var("elem_scale", &[1], nn::Init::Const(1.0)),
            hnet_weight: p.var("hnet_weight", &[out, inp], uniform),
            hnet_bias: p.var("hnet_bias", &[out], uniform),
            h_to_scalars: p.var("h_to_scalars", &[2 * out, n_h], nn::Init::Randn { mean: 0.0, stdev: 0.01 }),
            out,
        }
    }

    /// s_e·(W_e x + b_e) + (U_w h) ⊙ (W_h x) + (U_b h) ⊙ b_h for x [B, in] and h [B, n_h]; the
    /// elementary path alone without h.
    pub fn forward(&self, x: &Tensor, h: Option<&Tensor>) -> Tensor {
        let elementary = x.linear(&self.elem_weight, Some(&self.elem_bias)) * &self.elem_scale;
        match h {
            None => elementary,
            Some(h) => {
                let scalars = h.linear(&self.h_to_scalars, None::<&Tensor>);
                let (weight_gate, bias_gate) = (scalars.narrow(1, 0, self.out), scalars.narrow(1, self.out, self.out));
                elementary + weight_gate * x.linear(&self.hnet_weight, None::<&Tensor>) + bias_gate * &self.hnet_bias
            }
        }
    }
}

/// An MLP of HyperLinear layers with ReLU and per-example dropout on the input and each hidden layer.
#[derive(Debug)]
pub struct StnMlp {
    pub layers: Vec<HyperLinear>,
}

impl StnMlp {
    /// `widths` = [input, hidden..., output]; `n_h` hypernet inputs.
    pub fn new(p: &nn::Path, widths: &[i64], n_h: i64) -> Self {
        let layers = widths.windows(2).enumerate().map(|(i, w)| HyperLinear::new(&(p / format!("layer{i}")), w[0], w[1], n_h)).collect();
        StnMlp { layers }
    }

    /// Logits for x with hypernet input h [B, n_h]. With `rates` [B, n_h] (training mode) example i's
    /// column 0 drops its input and column k its k-th hidden layer; without, no dropout (eval mode).
    pub fn forward(&self, x: &Tensor, h: &Tensor, rates: Option<&Tensor>) -> Tensor {
        let mut a = match rates {
            Some(r) => per_example_dropout(x, &r.select(1, 0)),
            None => x.shallow_clone(),
        };
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            a = layer.forward(&a, Some(h));
            if i < last {
                a = a.relu();
                if let Some(r) = rates {
                    a = per_example_dropout(&a, &r.select(1, i as i64 + 1));
                }
            }
        }
        a
    }
}

/// The baseline: a plain ReLU MLP with PyTorch 0.4's linear init U(±1/√fan_in) for weights and biases.
///
/// Why not `crate::models::Mlp` plus dropout: dropout acts on the input and on every hidden layer
/// here, and the baseline must start like the STN's elementary path (U(±1/√fan_in) for W_e and b_e,
/// `crate::models::init`), so it keeps its own layers.
#[derive(Debug)]
pub struct PlainMlp {
    layers: Vec<nn::Linear>,
}

impl PlainMlp {
    pub fn new(p: &nn::Path, widths: &[i64]) -> Self {
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                crate::models::init::linear(p / format!("layer{i}"), w[0], w[1], true)
            })
            .collect();
        PlainMlp { layers }
    }

    /// Logits; in training mode the input and every hidden layer are dropped with rate `rate`.
    pub fn forward(&self, x: &Tensor, rate: f64, train: bool) -> Tensor {
        let maybe_drop = |t: &Tensor| if train && rate > 0.0 { t.dropout(rate, true) } else { t.shallow_clone() };
        let mut a = maybe_drop(x);
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            a = a.linear(&l.ws, l.bs.as_ref());
            if i < last {
                a = maybe_drop(&a.relu());
            }
        }
        a
    }
}

/// The tuned hyperparameters: unconstrained dropout rates λ_u and perturbation scales σ_u (each in
/// its own var store, for its own Adam), with rate j in (0, hi_j).
#[derive(Debug)]
pub struct Hyperparameters {
    pub unconstrained: Tensor,
    pub scale: Tensor,
    hi: Tensor,
}

impl Hyperparameters {
    pub fn new(unconstrained: &nn::Path, scale: &nn::Path, hi: &[f64], init_rate: f64, init_scale: f64) -> Self {
        let start: Vec<f64> = hi.iter().map(|&h| f64::try_from(s_logit(&Tensor::from(init_rate), 0.0, h)).expect("scalar")).collect();
        let n = hi.len() as i64;
        Hyperparameters {
            unconstrained: unconstrained.var_copy("unconstrained", &Tensor::from_slice(&start).to_kind(Kind::Float)),
            scale: scale.var_copy("scale", &Tensor::full([n], inv_softplus(init_scale), (Kind::Float, scale.device()))),
            hi: Tensor::from_slice(hi).to_kind(Kind::Float).to_device(unconstrained.device()),
        }
    }

    /// Per-example perturbed λ̃ [batch, n_h].
    pub fn perturbed(&self, batch: i64) -> Tensor {
        perturb(&self.unconstrained, &self.scale, batch)
    }

    /// λ_u repeated for `batch` examples.
    pub fn repeated(&self, batch: i64) -> Tensor {
        self.unconstrained.unsqueeze(0).repeat([batch, 1])
    }

    /// The dropout rates of unconstrained values h [B, n_h]: hi_j·sigmoid(h_j) (ranges start at 0).
    pub fn rates(&self, h: &Tensor) -> Tensor {
        h.sigmoid() * self.hi.to_kind(h.kind()).unsqueeze(0)
    }

    pub fn current_rates(&self) -> Vec<f64> {
        let r = tch::no_grad(|| self.rates(&self.unconstrained.unsqueeze(0)).squeeze_dim(0));
        Vec::<f64>::try_from(r.to_kind(Kind::Double).to_device(Device::Cpu)).expect("rates")
    }

    pub fn current_scales(&self) -> Vec<f64> {
        let s = tch::no_grad(|| self.scale.softplus());
        Vec::<f64>::try_from(s.to_kind(Kind::Double).to_device(Device::Cpu)).expect("scales")
    }
}

/// Metric names of the rates: `drop_in`, then `drop_h1`, `drop_h2`, … per hidden layer.
fn rate_names(hidden_layers: usize) -> Vec<String> {
    std::iter::once("drop_in".to_string()).chain((1..=hidden_layers).map(|k| format!("drop_h{k}"))).collect()
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// Mean cross-entropy (of the softmax, accumulated in float64) and accuracy of `logits_of` on a split,
/// in chunks, without gradients.
fn evaluate(split: &Split, logits_of: impl Fn(&Tensor) -> Tensor) -> (f64, f64) {
    tch::no_grad(|| {
        let n = split.len();
        let chunks: Vec<Tensor> = (0..n).step_by(4096).map(|s| logits_of(&split.x.narrow(0, s, (n - s).min(4096)))).collect();
        let logits = Tensor::cat(&chunks, 0);
        (nll(&logits, &split.y), accuracy(&logits, &split.y))
    })
}

#[derive(Debug, Clone, Copy)]
struct EpochEval {
    epoch: u64,
    val_ce: f64,
    val_acc: f64,
    test_ce: f64,
    test_acc: f64,
}

/// Best-validation selection and the official lr and stopping rules, shared by both methods.
struct Selection {
    lr: f64,
    history: Vec<f64>,
    best: Option<EpochEval>,
    since_best: u64,
}

impl Selection {
    fn new(lr: f64) -> Self {
        Selection { lr, history: vec![], best: None, since_best: 0 }
    }

    /// Records one epoch's evaluation (in the official order: nonmono decay, history, best, stop);
    /// returns (a new best, stop now).
    fn record(&mut self, e: EpochEval, cfg: &Config) -> (bool, bool) {
        let n = self.history.len();
        if cfg.nonmono > 0 && n as u64 > cfg.nonmono {
            let old_min = self.history[..n - cfg.nonmono as usize].iter().copied().fold(f64::INFINITY, f64::min);
            if e.val_ce > old_min {
                self.lr *= cfg.lr_decay;
            }
        }
        self.history.push(e.val_ce);
        let improved = self.best.is_none_or(|b| e.val_ce < b.val_ce);
        if improved {
            self.best = Some(e);
            self.since_best = 0;
        } else {
            self.since_best += 1;
        }
        (improved, (cfg.patience > 0 && self.since_best >= cfg.patience) || self.lr < cfg.min_lr)
    }
}

fn log_named(ctx: &mut RunCtx, step: u64, values: &[(String, f64)]) -> Result<()> {
    let refs: Vec<(&str, f64)> = values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    ctx.log_all(step, &refs)
}

/// The finals every run reports: the best-validation epoch's numbers, ln(test CE) for the claims'
/// ratios of geometric means, and the budget actually used.
fn report_selection(ctx: &mut RunCtx, best: &EpochEval, epochs_run: u64, train_steps: u64) -> Result<()> {
    ctx.set_final("test_ce", best.test_ce)?;
    ctx.set_final("log_test_ce", best.test_ce.ln())?;
    ctx.set_final("test_acc", best.test_acc)?;
    ctx.set_final("val_ce", best.val_ce)?;
    ctx.set_final("val_acc", best.val_acc)?;
    ctx.set_final("best_epoch", best.epoch as f64)?;
    ctx.set_final("epochs_run", epochs_run as f64)?;
    ctx.set_final("train_steps", train_steps as f64)
}

fn widths(cfg: &Config, data: &Data) -> Vec<i64> {
    let mut w = vec![data.sample_shape.iter().product::<i64>()];
    w.extend(&cfg.hidden);
    w.push(data.classes);
    w
}

fn train_fixed(cfg: &Config, data: &Data, val: &Split, ctx: &mut RunCtx) -> Result<()> {
    tch::manual_seed(ctx.seed as i64);
    let mut rng = Rng::new(ctx.seed ^ 0x57A7_BA7C);
    let vs = nn::VarStore::new(ctx.device);
    let model = PlainMlp::new(&vs.root(), &widths(cfg, data));
    let mut opt = nn::Sgd { momentum: cfg.momentum, ..Default::default() }.build(&vs, cfg.train_lr)?;
    let mut selection = Selection::new(cfg.train_lr);
    let (mut train_steps, mut epochs_run) = (0u64, 0u64);
    for epoch in 0..cfg.epochs {
        let batches = data.train.batches(cfg.batch_size, &mut rng);
        let mut total = 0.0;
        for idx in &batches {
            let (x, y) = (data.train.x.index_select(0, idx), data.train.y.index_select(0, idx));
            let loss = model.forward(&x, cfg.fixed_dropout, true).cross_entropy_for_logits(&y);
            opt.backward_step(&loss);
            total += f64::try_from(loss.detach())?;
            train_steps += 1;
        }
        let step = epoch + 1;
        epochs_run = step;
        let (val_ce, val_acc) = evaluate(val, |x| model.forward(x, 0.0, false));
        let (test_ce, test_acc) = evaluate(&data.test, |x| model.forward(x, 0.0, false));
        let (_, stop) = selection.record(EpochEval { epoch: step, val_ce, val_acc, test_ce, test_acc }, cfg);
        if step % cfg.log_every == 0 || stop || step == cfg.epochs {
            let train_ce = total / batches.len().max(1) as f64;
            let lr = selection.lr;
            let values = [("train_ce", train_ce), ("val_ce", val_ce), ("val_acc", val_acc), ("test_ce", test_ce), ("test_acc", test_acc), ("lr", lr)];
            ctx.log_all(step, &values)?;
        }
        opt.set_lr(selection.lr);
        ctx.tick(step, cfg.epochs)?;
        if stop {
            break;
        }
    }
    let best = selection.best.ok_or_else(|| anyhow!("no epoch was evaluated"))?;
    report_selection(ctx, &best, epochs_run, train_steps)
}

fn train_stn(cfg: &Config, data: &Data, val: &Split, ctx: &mut RunCtx) -> Result<()> {
    tch::manual_seed(ctx.seed as i64);
    let mut rng = Rng::new(ctx.seed ^ 0x57A7_BA7C);
    let device = ctx.device;
    let n_h = cfg.hidden.len() as i64 + 1;
    let (vs, hyper_vs, scale_vs) = (nn::VarStore::new(device), nn::VarStore::new(device), nn::VarStore::new(device));
    let model = StnMlp::new(&vs.root(), &widths(cfg, data), n_h);
    let hi: Vec<f64> = std::iter::once(cfg.input_drop_max).chain(std::iter::repeat_n(cfg.drop_max, cfg.hidden.len())).collect();
    let hyper = Hyperparameters::new(&hyper_vs.root(), &scale_vs.root(), &hi, cfg.init_dropout, cfg.perturb_scale);
    let mut opt_phi = nn::Sgd { momentum: cfg.momentum, ..Default::default() }.build(&vs, cfg.train_lr)?;
    let mut opt_hyper = nn::Adam::default().build(&hyper_vs, cfg.valid_lr)?;
    let mut opt_scale = nn::Adam::default().build(&scale_vs, cfg.scale_lr)?;
    let names = rate_names(cfg.hidden.len());
    let init_rates = hyper.current_rates();
    let mut selection = Selection::new(cfg.train_lr);
    let mut best_rates = init_rates.clone();
    let mut val_queue: Vec<Tensor> = vec![];
    let (mut train_steps, mut val_steps, mut in_cycle, mut epochs_run) = (0u64, 0u64, 0u64, 0u64);
    for epoch in 0..cfg.epochs {
        let tuning = epoch >= cfg.warmup_epochs;
        let batches = data.train.batches(cfg.batch_size, &mut rng);
        let (mut total, mut hyper_total, mut hyper_count) = (0.0, 0.0, 0usize);
        for idx in &batches {
            // Training step: φ only, at per-example perturbed λ̃ (no gradient to λ is needed here).
            let (x, y) = (data.train.x.index_select(0, idx), data.train.y.index_select(0, idx));
            let h = hyper.perturbed(x.size()[0]).detach();
            let rates = hyper.rates(&h);
            let loss = model.forward(&x, &h, Some(&rates)).cross_entropy_for_logits(&y);
            opt_phi.backward_step(&loss);
            total += f64::try_from(loss.detach())?;
            train_steps += 1;
            if !tuning {
                continue;
            }
            in_cycle += 1;
            if in_cycle < cfg.train_steps {
                continue;
            }
            in_cycle = 0;
            for _ in 0..cfg.valid_steps {
                // Validation step: eval mode (no dropout), λ (and σ) only, through the hypernet.
                if val_queue.is_empty() {
                    val_queue = val.batches(cfg.batch_size, &mut rng);
                }
                let vidx = val_queue.pop().expect("a validation batch");
                let (xv, yv) = (val.x.index_select(0, &vidx), val.y.index_select(0, &vidx));
                let b = xv.size()[0];
                let h = if cfg.tune_scales { hyper.perturbed(b) } else { hyper.repeated(b) };
                let ce = model.forward(&xv, &h, None).cross_entropy_for_logits(&yv);
                let loss = if cfg.tune_scales { &ce - perturbation_entropy(&hyper.scale) * cfg.entropy_weight } else { ce.shallow_clone() };
                opt_hyper.zero_grad();
                opt_scale.zero_grad();
                loss.backward();
                opt_hyper.step();
                if cfg.tune_scales {
                    opt_scale.step();
                }
                hyper_total += f64::try_from(ce.detach())?;
                hyper_count += 1;
                val_steps += 1;
            }
        }
        let step = epoch + 1;
        epochs_run = step;
        let logits_of = |x: &Tensor| model.forward(x, &hyper.repeated(x.size()[0]), None);
        let (val_ce, val_acc) = evaluate(val, logits_of);
        let (test_ce, test_acc) = evaluate(&data.test, logits_of);
        let rates_now = hyper.current_rates();
        let mut stop = false;
        if tuning {
            let (improved, s) = selection.record(EpochEval { epoch: step, val_ce, val_acc, test_ce, test_acc }, cfg);
            if improved {
                best_rates = rates_now.clone();
            }
            stop = s;
            opt_phi.set_lr(selection.lr);
        }
        if step % cfg.log_every == 0 || stop || step == cfg.epochs {
            let train_ce = total / batches.len().max(1) as f64;
            let mut values: Vec<(String, f64)> = vec![
                ("train_ce".into(), train_ce),
                ("val_ce".into(), val_ce),
                ("val_acc".into(), val_acc),
                ("test_ce".into(), test_ce),
                ("test_acc".into(), test_acc),
                ("lr".into(), selection.lr),
            ];
            if hyper_count > 0 {
                values.push(("hyper_val_ce".into(), hyper_total / hyper_count as f64));
            }
            values.extend(names.iter().cloned().zip(rates_now.iter().copied()));
            values.push(("drop_mean".into(), mean(&rates_now)));
            values.push(("scale_mean".into(), mean(&hyper.current_scales())));
            log_named(ctx, step, &values)?;
        }
        ctx.tick(step, cfg.epochs)?;
        if stop {
            break;
        }
    }
    let best = selection.best.ok_or_else(|| anyhow!("no epoch after the warm-up was evaluated"))?;
    report_selection(ctx, &best, epochs_run, train_steps)?;
    let final_rates = hyper.current_rates();
    for (name, r) in names.iter().zip(&final_rates) {
        ctx.set_final(name, *r)?;
    }
    ctx.set_final("drop_mean", mean(&final_rates))?;
    ctx.set_final("drop_mean_at_best", mean(&best_rates))?;
    // The schedule: how far the mean rate moved from its start over training.
    ctx.set_final("rate_rise", mean(&final_rates) - mean(&init_rates))?;
    ctx.set_final("scale_mean", mean(&hyper.current_scales()))?;
    ctx.set_final("val_steps", val_steps as f64)
}

/// Trains one run on already-loaded data (public for tests on synthetic data).
pub fn run_on(cfg: &Config, data: &Data, ctx: &mut RunCtx) -> Result<()> {
    let val = data.val.as_ref().filter(|v| !v.is_empty()).ok_or_else(|| anyhow!("needs a validation split: set `data.val_fraction` > 0"))?;
    if data.sample_shape.len() != 1 {
        bail!("the model is an MLP: set `data.flatten: true`");
    }
    match cfg.method {
        Method::Stn => train_stn(cfg, data, val, ctx),
        Method::Fixed => train_fixed(cfg, data, val, ctx),
    }
}

impl Blocks for Config {
    fn data_block(&self) -> Option<&DataConfig> {
        Some(&self.data)
    }
}

impl crate::paper::Paper for SelfTuningNetworks {
    const KEY: &'static str = "self_tuning_networks";
    const TITLE: &'static str = "Self-Tuning Networks: Bilevel Optimization of Hyperparameters using Structured Best-Response Functions";
    const ARXIV: &'static str = "1903.03088";
    type Config = Config;

    fn check(c: &Config) -> Result<()> {
        if !c.data.flatten {
            bail!("`data.flatten` must be true: the model is an MLP");
        }
        if !(c.data.val_fraction > 0.0) {
            bail!("`data.val_fraction` must be > 0: the STN tunes on, and every run selects its epoch by, the validation split");
        }
        if c.hidden.is_empty() || c.hidden.iter().any(|&w| w < 1) {
            bail!("`hidden` must list at least one positive width, e.g. [256, 256]");
        }
        if !(0.0..1.0).contains(&c.fixed_dropout) {
            bail!("`fixed_dropout` must be in [0, 1), got {}", c.fixed_dropout);
        }
        if !(c.drop_max > 0.0 && c.drop_max <= 1.0) {
            bail!("`drop_max` must be in (0, 1], got {}", c.drop_max);
        }
        if !(c.input_drop_max > 0.0 && c.input_drop_max <= 1.0) {
            bail!("`input_drop_max` must be in (0, 1], got {}", c.input_drop_max);
        }
        let init_hi = c.drop_max.min(c.input_drop_max);
        if !(c.init_dropout > 0.0 && c.init_dropout < init_hi) {
            bail!("`init_dropout` must be in (0, {init_hi}) = (0, min(drop_max, input_drop_max)), got {}", c.init_dropout);
        }
        if !(c.perturb_scale > 0.0) {
            bail!("`perturb_scale` must be > 0, got {}", c.perturb_scale);
        }
        if !(c.entropy_weight >= 0.0) {
            bail!("`entropy_weight` must be ≥ 0, got {}", c.entropy_weight);
        }
        for (key, value) in [("epochs", c.epochs), ("train_steps", c.train_steps), ("valid_steps", c.valid_steps), ("log_every", c.log_every)] {
            if value == 0 {
                bail!("`{key}` must be at least 1, got 0");
            }
        }
        if c.batch_size == 0 {
            bail!("`batch_size` must be at least 1, got 0");
        }
        if c.method == Method::Stn && c.warmup_epochs >= c.epochs {
            bail!("`warmup_epochs` ({}) must be below `epochs` ({}): the STN tunes only after the warm-up", c.warmup_epochs, c.epochs);
        }
        for (key, value) in [("train_lr", c.train_lr), ("valid_lr", c.valid_lr), ("scale_lr", c.scale_lr)] {
            if !(value > 0.0) {
                bail!("`{key}` must be > 0, got {value}");
            }
        }
        if !(0.0..1.0).contains(&c.momentum) {
            bail!("`momentum` must be in [0, 1), got {}", c.momentum);
        }
        if !(c.lr_decay > 0.0 && c.lr_decay <= 1.0) {
            bail!("`lr_decay` must be in (0, 1], got {}", c.lr_decay);
        }
        if !(c.min_lr >= 0.0) {
            bail!("`min_lr` must be ≥ 0, got {}", c.min_lr);
        }
        Ok(())
    }

    fn run(cfg: &Config, ctx: &mut RunCtx) -> Result<()> {
        let data = cfg.data.load_for_run(ctx)?;
        run_on(cfg, &data, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::ProgressMode;
    use crate::data::block::Augment;
    use crate::testutil::f64s as v;
    use crate::train::lbfgs::{minimize, LbfgsOptions};

    const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

    fn max_abs(t: &Tensor) -> f64 {
        f64::try_from(t.abs().max()).unwrap()
    }

    /// A float64 HyperLinear.
    fn layer(inp: i64, out: i64, n_h: i64, seed: i64) -> (nn::VarStore, HyperLinear) {
        tch::manual_seed(seed);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let l = HyperLinear::new(&vs.root(), inp, out, n_h);
        vs.double();
        (vs, l)
    }

    #[test]
    fn initialisation_follows_the_official_layer() {
        let (_vs, l) = layer(100, 200, 5, 0);
        let bound = 0.1;
        for t in [&l.elem_weight, &l.hnet_weight, &l.elem_bias, &l.hnet_bias] {
            assert!(max_abs(t) <= bound && max_abs(t) > 0.9 * bound);
        }
        assert_eq!(v(&l.elem_scale), vec![1.0]);
        let u = v(&l.h_to_scalars);
        assert_eq!(u.len(), 2000);
        let std = (u.iter().map(|x| x * x).sum::<f64>() / u.len() as f64).sqrt();
        assert!((std - 0.01).abs() < 0.001, "U std {std}");
    }

    #[test]
    fn hyperlinear_with_zero_gates_ignores_h_and_otherwise_matches_the_closed_form() {
        let (_vs, l) = layer(5, 4, 3, 1);
        tch::no_grad(|| {
            let _ = l.h_to_scalars.shallow_clone().zero_();
            let _ = l.elem_scale.shallow_clone().fill_(1.7);
        });
        let x = Tensor::randn([6, 5], F64);
        let elementary = (x.matmul(&l.elem_weight.tr()) + &l.elem_bias) * 1.7;
        let (h1, h2) = (Tensor::randn([6, 3], F64), Tensor::randn([6, 3], F64) * 5.0);
        for out in [l.forward(&x, None), l.forward(&x, Some(&h1)), l.forward(&x, Some(&h2))] {
            assert!(max_abs(&(out - &elementary)) < 1e-12);
        }
        // With U ≠ 0: + (U_w h) ⊙ (W_h x) + (U_b h) ⊙ b_h, which does depend on h.
        tch::no_grad(|| {
            let _ = l.h_to_scalars.shallow_clone().normal_(0.0, 0.5);
        });
        let s = h1.matmul(&l.h_to_scalars.tr());
        let expected = &elementary + s.narrow(1, 0, 4) * x.matmul(&l.hnet_weight.tr()) + s.narrow(1, 4, 4) * &l.hnet_bias;
        let out1 = l.forward(&x, Some(&h1));
        assert!(max_abs(&(&out1 - expected)) < 1e-12);
        assert!(max_abs(&(&out1 - l.forward(&x, Some(&h2)))) > 1e-3);
        assert!(max_abs(&(l.forward(&x, None) - &elementary)) < 1e-12, "h = None is the elementary path");
    }

    #[test]
    fn hyperlinear_gradient_in_h_matches_finite_differences() {
        let (_vs, l) = layer(4, 3, 2, 2);
        tch::no_grad(|| {
            let _ = l.h_to_scalars.shallow_clone().normal_(0.0, 0.5);
        });
        let x = Tensor::randn([2, 4], F64);
        let r = Tensor::randn([2, 3], F64);
        let f = |h: &Tensor| (l.forward(&x, Some(h)) * &r).sum(Kind::Double);
        let h = Tensor::randn([2, 2], F64).set_requires_grad(true);
        let grad = v(&Tensor::run_backward(&[f(&h)], &[&h], false, false).remove(0));
        let d = 1e-6;
        for i in 0..2 {
            for j in 0..2 {
                let e = Tensor::zeros([2, 2], F64);
                let _ = e.get(i).get(j).fill_(d);
                let hd = h.detach();
                let fd = (f64::try_from(f(&(&hd + &e))).unwrap() - f64::try_from(f(&(&hd - &e))).unwrap()) / (2.0 * d);
                let g = grad[(2 * i + j) as usize];
                assert!((g - fd).abs() < 1e-7 * fd.abs().max(1.0), "({i},{j}): {g} vs {fd}");
            }
        }
    }

    #[test]
    fn hypergradient_flows_only_through_the_hypernet() {
        tch::manual_seed(3);
        let (vs, hyper_vs, scale_vs) = (nn::VarStore::new(Device::Cpu), nn::VarStore::new(Device::Cpu), nn::VarStore::new(Device::Cpu));
        let model = StnMlp::new(&vs.root(), &[5, 8, 8, 3], 3);
        let hyper = Hyperparameters::new(&hyper_vs.root(), &scale_vs.root(), &[1.0, 0.9, 0.9], 0.3, 0.5);
        tch::no_grad(|| {
            for l in &model.layers {
                let _ = l.h_to_scalars.shallow_clone().zero_();
            }
        });
        let x = Tensor::randn([16, 5], (Kind::Float, Device::Cpu));
        let y = Tensor::arange(16, (Kind::Int64, Device::Cpu)).remainder(3);
        let grad = |train: bool| {
            let h = hyper.perturbed(16);
            let rates = hyper.rates(&h);
            let loss = model.forward(&x, &h, if train { Some(&rates) } else { None }).cross_entropy_for_logits(&y);
            Tensor::run_backward(&[&loss], &[&hyper.unconstrained], false, false).remove(0)
        };
        // U = 0: the loss does not depend on λ, in eval mode and — the rates are detached — in train mode.
        assert!(v(&grad(false)).iter().all(|g| *g == 0.0));
        assert!(v(&grad(true)).iter().all(|g| *g == 0.0));
        // Fitting φ at perturbed λ̃ moves U off zero, and the hypergradient appears.
        let mut opt = nn::Sgd::default().build(&vs, 0.1).unwrap();
        for _ in 0..30 {
            let h = hyper.perturbed(16).detach();
            let rates = hyper.rates(&h);
            opt.backward_step(&model.forward(&x, &h, Some(&rates)).cross_entropy_for_logits(&y));
        }
        assert!(model.layers.iter().all(|l| max_abs(&l.h_to_scalars) > 0.0));
        assert!(max_abs(&grad(false)) > 1e-6);
    }

    #[test]
    fn transforms_invert_and_start_where_the_official_code_does() {
        let x = Tensor::from_slice(&[-6.0f64, -2.83, 0.0, 1.5, 4.0]);
        for (lo, hi) in [(0.0, 0.9), (0.0, 1.0), (0.0, 0.3), (-1.0, 2.0)] {
            let y = s_sigmoid(&x, lo, hi);
            assert!(v(&y).iter().all(|&r| r > lo && r < hi));
            assert!(max_abs(&(s_logit(&y, lo, hi) - &x)) < 1e-9, "({lo}, {hi})");
        }
        for s in [0.01, 0.5, 3.0] {
            assert!((f64::try_from(Tensor::from(inv_softplus(s)).softplus()).unwrap() - s).abs() < 1e-12);
        }
        let (a, b) = (nn::VarStore::new(Device::Cpu), nn::VarStore::new(Device::Cpu));
        let hyper = Hyperparameters::new(&a.root(), &b.root(), &[1.0, 0.9, 0.9], 0.05, 0.5);
        assert!(hyper.current_rates().iter().all(|r| (r - 0.05).abs() < 1e-6), "{:?}", hyper.current_rates());
        assert!(hyper.current_scales().iter().all(|s| (s - 0.5).abs() < 1e-6));
        // The unconstrained starts differ with the range: logit(0.05) for the input, s_logit(0.05; 0, 0.9) hidden.
        let u = v(&hyper.unconstrained);
        assert!((u[0] - (0.05f64 / 0.95).ln()).abs() < 1e-5 && (u[1] - (0.05f64 / 0.85).ln()).abs() < 1e-5, "{u:?}");
    }

    #[test]
    fn entropy_matches_the_gaussian_closed_form_and_a_monte_carlo_estimate() {
        let scale_u = Tensor::from_slice(&[-1.0f64, 0.2, 2.0]).set_requires_grad(true);
        let entropy = perturbation_entropy(&scale_u);
        let s = v(&scale_u.detach().softplus());
        let closed: f64 = s.iter().map(|s| 0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E * s * s).ln()).sum();
        assert!((f64::try_from(&entropy).unwrap() - closed).abs() < 1e-12);
        // −E log N(x; 0, s²) by sampling (standard error ≈ 0.0016 per coordinate).
        tch::manual_seed(0);
        let st = Tensor::from_slice(&s);
        let xs = Tensor::randn([200_000, 3], F64) * &st;
        let log_p = (st.square() * (2.0 * std::f64::consts::PI)).log() * -0.5 - xs.square() / (st.square() * 2.0);
        let mc = -f64::try_from(log_p.sum_dim_intlist([1].as_slice(), false, Kind::Double).mean(Kind::Double)).unwrap();
        assert!((mc - closed).abs() < 0.02, "{mc} vs {closed}");
        // ∂H/∂σ_j = sigmoid(σ_j) / softplus(σ_j).
        entropy.backward();
        let expected = v(&(scale_u.detach().sigmoid() / scale_u.detach().softplus()));
        assert!(v(&scale_u.grad()).iter().zip(&expected).all(|(g, e)| (g - e).abs() < 1e-12));
    }

    #[test]
    fn perturbations_are_per_example_with_the_softplus_scale() {
        tch::manual_seed(1);
        let target = [0.5f64, 0.2, 1.0];
        let lambda = Tensor::from_slice(&[-2.8f64, 0.3, 1.0]);
        let scale = Tensor::from_slice(&target.map(inv_softplus));
        let n = 20_000;
        let p = perturb(&lambda, &scale, n);
        assert_eq!(p.size(), vec![n, 3]);
        let means = v(&p.mean_dim(0, false, Kind::Double));
        let stds = v(&p.std_dim(0, true, false));
        for j in 0..3 {
            assert!((means[j] - v(&lambda)[j]).abs() < 4.0 * target[j] / (n as f64).sqrt(), "mean {j}: {}", means[j]);
            assert!((stds[j] / target[j] - 1.0).abs() < 0.03, "std {j}: {} vs {}", stds[j], target[j]);
        }
        // Different rows are different draws.
        assert!(max_abs(&(p.get(0) - p.get(1))) > 1e-6);
    }

    #[test]
    fn per_example_dropout_uses_each_rows_rate() {
        tch::manual_seed(4);
        let (n, d) = (3000i64, 40i64);
        let x = Tensor::ones([n, d], (Kind::Float, Device::Cpu));
        let levels = [0.0f32, 0.3, 0.6];
        let rate: Vec<f32> = (0..n).map(|i| levels[(i * 3 / n) as usize]).collect();
        let rate = Tensor::from_slice(&rate).set_requires_grad(true);
        let out = per_example_dropout(&x, &rate);
        assert!(!out.requires_grad(), "no gradient reaches the rate through the mask");
        for (k, &r) in levels.iter().enumerate() {
            let rows = out.narrow(0, k as i64 * n / 3, n / 3);
            let vals = v(&rows);
            let zeros = vals.iter().filter(|&&a| a == 0.0).count() as f64 / vals.len() as f64;
            assert!((zeros - r as f64).abs() < 0.015, "rate {r}: dropped {zeros}");
            let kept = 1.0 / (1.0 - r as f64);
            assert!(vals.iter().all(|&a| a == 0.0 || (a - kept).abs() < 1e-5));
        }
        assert!(max_abs(&(out.narrow(0, 0, n / 3) - 1.0)) == 0.0, "rate 0 leaves rows unchanged");
    }

    #[test]
    fn stn_fit_on_ridge_regression_recovers_the_best_response_jacobian_and_hypergradient() {
        // L_T(λ, w) = ‖Xw − y‖² + e^λ ‖w‖², w*(λ) = (XᵀX + e^λ I)⁻¹ Xᵀy, dw*/dλ = −e^λ (XᵀX + e^λ I)⁻¹ w*.
        // ŵ(λ) = w_0 + (λ − λ_0) w_1 is a HyperLinear with input 1 and hypernet input λ − λ_0 (centred here
        // for conditioning; the runs feed λ itself), fitted by L-BFGS to the mean of L_T over per-example
        // perturbations λ̃ = λ_0 ± σε (antithetic pairs, so the odd moments vanish and w_1 = dw*/dλ + O(σ²); the
        // exact minimiser of this objective, solved in closed form for this design, is within 0.3% of dw*/dλ).
        tch::manual_seed(7);
        let (n, d) = (40i64, 4i64);
        let x = Tensor::randn([n, d], F64);
        let w_true = Tensor::from_slice(&[1.0f64, -2.0, 0.5, 1.5]);
        let y = x.mv(&w_true) + Tensor::randn([n], F64) * 0.5;
        let xv = Tensor::randn([n, d], F64);
        let yv = xv.mv(&(&w_true * 0.3));
        let lambda0 = 30f64.ln();
        let system = x.tr().mm(&x) + Tensor::eye(d, F64) * lambda0.exp();
        let w_star = Tensor::linalg_solve(&system, &x.tr().mv(&y), true);
        let dw_star = Tensor::linalg_solve(&system, &w_star, true) * -lambda0.exp();

        let (_vs, l) = layer(1, d, 1, 8);
        let half = perturb(&Tensor::zeros([1], F64), &Tensor::from_slice(&[inv_softplus(0.1)]), 64);
        let offsets = Tensor::cat(&[&half, &(-&half)], 0);
        let lam = offsets.squeeze_dim(1) + lambda0;
        let ones = Tensor::ones([128, 1], F64);
        let train_loss = || {
            let w = l.forward(&ones, Some(&offsets));
            let fit = (w.matmul(&x.tr()) - y.unsqueeze(0)).square().sum_dim_intlist([1].as_slice(), false, Kind::Double);
            (fit + lam.exp() * w.square().sum_dim_intlist([1].as_slice(), false, Kind::Double)).mean(Kind::Double)
        };
        let vars = [&l.elem_weight, &l.elem_bias, &l.elem_scale, &l.hnet_weight, &l.hnet_bias, &l.h_to_scalars];
        let set = |p: &Tensor| {
            tch::no_grad(|| {
                let mut at = 0;
                for var in vars {
                    let k = var.numel() as i64;
                    var.shallow_clone().copy_(&p.narrow(0, at, k).view_as(var));
                    at += k;
                }
            })
        };
        let start = Tensor::cat(&vars.iter().map(|t| t.detach().flatten(0, -1)).collect::<Vec<_>>(), 0);
        let res = minimize(
            |p| {
                set(p);
                let loss = train_loss();
                let grads = Tensor::run_backward(&[&loss], &vars, false, false);
                Ok((f64::try_from(&loss)?, Tensor::cat(&grads.iter().map(|g| g.flatten(0, -1)).collect::<Vec<_>>(), 0)))
            },
            start,
            LbfgsOptions { max_iter: 2000, gtol: 1e-7, ftol: 0.0, ..Default::default() },
        )
        .unwrap();
        set(&res.x);
        let one = Tensor::ones([1, 1], F64);
        let w0 = l.forward(&one, Some(&Tensor::zeros([1, 1], F64))).squeeze_dim(0);
        let w1 = l.forward(&one, Some(&one)).squeeze_dim(0) - &w0;
        let rel = |a: &Tensor, b: &Tensor| f64::try_from((a - b).norm()).unwrap() / f64::try_from(b.norm()).unwrap();
        assert!(rel(&w0, &w_star) < 0.01, "w_0 vs w*: {} ({}, |g| {})", rel(&w0, &w_star), res.reason, res.grad_inf);
        assert!(rel(&w1, &dw_star) < 0.05, "w_1 vs dw*/dλ: {} ({}, |g| {})", rel(&w1, &dw_star), res.reason, res.grad_inf);
        // The STN hypergradient d L_V(ŵ(λ))/dλ at λ_0 against the implicit-function one ∇L_V(w*)ᵀ dw*/dλ.
        let h0 = Tensor::zeros([1, 1], F64).set_requires_grad(true);
        let wh = l.forward(&one, Some(&h0)).squeeze_dim(0);
        let val_loss = (xv.mv(&wh) - &yv).square().sum(Kind::Double);
        let stn = f64::try_from(Tensor::run_backward(&[&val_loss], &[&h0], false, false).remove(0).sum(Kind::Double)).unwrap();
        let implicit = f64::try_from((xv.tr().mv(&(xv.mv(&w_star) - &yv)) * 2.0).dot(&dw_star)).unwrap();
        assert!(implicit.abs() > 1e-2, "a degenerate check: {implicit}");
        assert!(stn.signum() == implicit.signum() && (stn - implicit).abs() < 0.1 * implicit.abs(), "{stn} vs {implicit}");
    }

    fn synthetic_data() -> Data {
        tch::manual_seed(0);
        let split = |n: i64| {
            let y = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(3);
            let x = Tensor::randn([n, 6], (Kind::Float, Device::Cpu)) + y.to_kind(Kind::Float).unsqueeze(1);
            Split { x, y: y.shallow_clone(), y_true: y, domain: Tensor::zeros([n], (Kind::Int64, Device::Cpu)) }
        };
        Data {
            train: split(64),
            val: Some(split(30)),
            test: split(30),
            classes: 3,
            sample_shape: vec![6],
            image_shape: vec![6],
            augment: Augment::default(),
            realised_noise_rate: 0.0,
            bags: None,
        }
    }

    #[test]
    fn both_methods_run_with_the_same_training_budget_and_the_two_to_one_cycle() {
        let data = synthetic_data();
        let dir = std::env::temp_dir().join(format!("reglab-stn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = Config { hidden: vec![8], epochs: 4, warmup_epochs: 1, batch_size: 16, log_every: 1, ..Config::default() };
        let mut finals = vec![];
        for method in [Method::Stn, Method::Fixed] {
            let mut ctx = RunCtx::new(&dir, "t", 0, Device::Cpu, ProgressMode::Quiet, &dir).unwrap();
            run_on(&Config { method, ..base.clone() }, &data, &mut ctx).unwrap();
            ctx.finish().unwrap();
            finals.push(ctx.final_metrics());
        }
        let (stn, fixed) = (&finals[0], &finals[1]);
        assert_eq!(stn["train_steps"], 16.0);
        assert_eq!(fixed["train_steps"], 16.0);
        // 3 tuning epochs × 4 training steps, one validation step per two training steps.
        assert_eq!(stn["val_steps"], 6.0);
        assert!(stn["best_epoch"] >= 2.0, "selection starts after the warm-up");
        for m in ["test_ce", "log_test_ce", "test_acc", "val_ce", "rate_rise", "drop_in", "drop_h1"] {
            assert!(stn[m].is_finite(), "{m}");
        }
        // λ moves only in validation steps: after these six Adam steps the rates have left their start.
        let moved = ["drop_in", "drop_h1"].iter().map(|m| (stn[*m] - base.init_dropout).abs()).fold(0.0, f64::max);
        assert!(moved > 1e-6, "the rates did not move in 6 validation steps: {moved}");
        assert!(stn["rate_rise"] != 0.0);
        assert!(fixed["test_ce"].is_finite() && !fixed.contains_key("rate_rise"));

        // No validation step at all (the cycle never completes): 16 training steps at perturbed λ̃ leave
        // λ exactly where it started, so L_T never moves the hyperparameters.
        let mut ctx = RunCtx::new(&dir, "t_no_val", 0, Device::Cpu, ProgressMode::Quiet, &dir).unwrap();
        run_on(&Config { method: Method::Stn, train_steps: 1000, ..base.clone() }, &data, &mut ctx).unwrap();
        ctx.finish().unwrap();
        let still = ctx.final_metrics();
        assert_eq!(still["train_steps"], 16.0);
        assert_eq!(still["val_steps"], 0.0);
        assert_eq!(still["rate_rise"], 0.0, "λ moved without a validation step");
        for m in ["drop_in", "drop_h1"] {
            assert!((still[m] - base.init_dropout).abs() < 1e-7, "{m}: {} vs {}", still[m], base.init_dropout);
        }
        assert!((still["scale_mean"] - base.perturb_scale).abs() < 1e-6, "σ moved without a validation step");

        // A warm-up-only run has no epoch to select and says so.
        let mut ctx = RunCtx::new(&dir, "t_warmup", 0, Device::Cpu, ProgressMode::Quiet, &dir).unwrap();
        assert!(run_on(&Config { method: Method::Stn, warmup_epochs: base.epochs, ..base.clone() }, &data, &mut ctx).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn eval_at(epoch: u64, val_ce: f64) -> EpochEval {
        EpochEval { epoch, val_ce, val_acc: 0.0, test_ce: 10.0 * epoch as f64, test_acc: 0.0 }
    }

    /// Feeds `losses` (epochs 1, 2, …) to a Selection starting at lr 1; returns per epoch
    /// (improved, stop, lr after the epoch), stopping at the first stop.
    fn replay(losses: &[f64], cfg: &Config) -> (Selection, Vec<(bool, bool, f64)>) {
        let mut sel = Selection::new(1.0);
        let mut trace = vec![];
        for (i, &l) in losses.iter().enumerate() {
            let (improved, stop) = sel.record(eval_at(i as u64 + 1, l), cfg);
            trace.push((improved, stop, sel.lr));
            if stop {
                break;
            }
        }
        (sel, trace)
    }

    #[test]
    fn selection_decays_by_the_nonmono_rule_and_stops_below_min_lr() {
        // nonmono 2: epoch k's loss is compared with min(losses of epochs 1..=k−3), i.e. those more than
        // two epochs back (official `val_loss > min(val_losses[:-nonmono])`, with len > nonmono).
        let cfg = Config { nonmono: 2, lr_decay: 0.5, patience: 0, min_lr: 0.3, ..Config::default() };
        let losses = [1.0, 0.8, 0.9, 0.85, 0.7, 0.95, 0.75, 0.72, 0.1];
        let (sel, trace) = replay(&losses, &cfg);
        let expected = [
            (true, false, 1.0),  // 1: no history
            (true, false, 1.0),  // 2
            (false, false, 1.0), // 3: only two epochs back, no comparison yet
            (false, false, 1.0), // 4: 0.85 > epoch 2's 0.8 (two back, excluded) but < epoch 1's 1.0
            (true, false, 1.0),  // 5: new best
            (false, false, 0.5), // 6: 0.95 > min(epochs 1–3) = 0.8 → decay
            (false, false, 0.5), // 7: 0.75 > epoch 5's 0.7 (excluded) but < min(epochs 1–4) = 0.8
            (false, true, 0.25), // 8: 0.72 > min(epochs 1–5) = 0.7 → decay to 0.25 < min_lr → stop
        ];
        assert_eq!(trace, expected);
        assert_eq!(sel.best.unwrap().epoch, 5);
        assert_eq!(sel.best.unwrap().test_ce, 50.0, "the test value kept is the best epoch's");
        assert_eq!(sel.history.len(), 8, "the loop stops at epoch 8; epoch 9 is never recorded");
    }

    #[test]
    fn selection_stops_after_patience_epochs_without_a_strict_improvement() {
        // nonmono 0: no decay however bad the losses; patience 3 counts epochs since the best one.
        let cfg = Config { nonmono: 0, lr_decay: 0.5, patience: 3, min_lr: 0.0, ..Config::default() };
        let (sel, trace) = replay(&[1.0, 0.9, 5.0, 0.9, 7.0, 0.1], &cfg);
        let expected = [
            (true, false, 1.0),
            (true, false, 1.0),  // 2: best
            (false, false, 1.0), // 3: 1 epoch since the best
            (false, false, 1.0), // 4: equal is not better: 2
            (false, true, 1.0),  // 5: 3 = patience → stop
        ];
        assert_eq!(trace, expected);
        assert_eq!(sel.best.unwrap().epoch, 2);
        // patience 0 is off: the same losses never stop.
        let (_, trace) = replay(&[1.0, 0.9, 5.0, 0.9, 7.0, 8.0, 9.0], &Config { patience: 0, ..cfg });
        assert!(trace.len() == 7 && trace.iter().all(|t| !t.1 && t.2 == 1.0));
    }
}
