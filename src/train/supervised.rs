//! The supervised train/eval loop papers configure instead of copying: minibatches by index from
//! a seeded permutation, the paper's loss as a closure (it sees the batch's sample indices, so
//! per-sample buffers — ELR's targets, PS-KD's past predictions — live in the paper), the
//! data block's training augmentation,
//! per-epoch learning-rate schedule, and an evaluation every `eval_every` epochs that logs test
//! accuracy, NLL, ECE (15 bins), AURC, training accuracy on the observed labels, and the
//! memorisation of noisy labels.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

use crate::context::RunCtx;
use crate::data::{Data, DataConfig};
use crate::models::ModelConfig;
use crate::losses::classify::accuracy;
use crate::losses::metrics::{aurc, ece, memorisation, nll, top_k_accuracy};
use crate::train::optim::OptimConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: u64,
    pub batch_size: usize,
    pub eval_every: u64,
    pub optim: OptimConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig { epochs: 100, batch_size: 128, eval_every: 5, optim: OptimConfig::default() }
    }
}

impl TrainConfig {
    pub fn check(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 || self.eval_every == 0 {
            bail!("`train.epochs`, `train.batch_size` and `train.eval_every` must be at least 1");
        }
        self.optim.check()
    }
}

/// What one minibatch gives the paper's loss.
pub struct Batch<'a> {
    /// The (augmented) inputs the logits were computed from.
    pub x: &'a Tensor,
    /// Indices into the training split.
    pub idx: &'a Tensor,
    /// Observed (possibly noisy) labels of the batch.
    pub y: &'a Tensor,
    pub epoch: u64,
}

/// Logits of `model` on `x` in evaluation mode, in chunks, without gradients.
pub fn predict<M: ModuleT + ?Sized>(model: &M, x: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let n = x.size()[0];
        let chunks: Vec<Tensor> = (0..n).step_by(2048).map(|s| model.forward_t(&x.narrow(0, s, (n - s).min(2048)), false)).collect();
        Tensor::cat(&chunks, 0)
    })
}

/// Evaluation metrics of a model on the test split (and the training split's observed labels).
pub fn evaluate<M: ModuleT + ?Sized>(model: &M, data: &Data) -> Vec<(&'static str, f64)> {
    let test_logits = predict(model, &data.test.x);
    let train_logits = predict(model, &data.train.x);
    let (memorised, noisy_true) = memorisation(&train_logits, &data.train.y, &data.train.y_true);
    let mut out = vec![
        ("test_acc", accuracy(&test_logits, &data.test.y)),
        ("test_nll", nll(&test_logits, &data.test.y)),
        ("test_ece", ece(&test_logits, &data.test.y, 15)),
        ("test_aurc", aurc(&test_logits, &data.test.y)),
        ("train_acc", accuracy(&train_logits, &data.train.y)),
        ("memorised", memorised),
        ("noisy_predicted_true", noisy_true),
    ];
    if data.classes > 5 {
        out.push(("test_top5", top_k_accuracy(&test_logits, &data.test.y, 5)));
    }
    out
}

/// Trains `model` (its parameters in `vs`) on `data.train` with `loss`, evaluating every
/// `eval_every` epochs and at the end. Logs `train_loss` (mean over the epoch's batches) and
/// the evaluation metrics; sets `best_test_acc` and `test_acc_drop` (best − final) as finals.
pub fn fit<M: ModuleT + ?Sized>(
    model: &M,
    vs: &nn::VarStore,
    data: &Data,
    cfg: &TrainConfig,
    ctx: &mut RunCtx,
    loss: impl FnMut(&Tensor, &Batch) -> Result<Tensor>,
) -> Result<()> {
    fit_on_inputs(model, vs, data, cfg, ctx, |x| x, loss)
}

/// `fit`, with `inputs` applied to each augmented batch before the one training-mode forward
/// (the loss sees those inputs as `Batch::x`).
fn fit_on_inputs<M: ModuleT + ?Sized>(
    model: &M,
    vs: &nn::VarStore,
    data: &Data,
    cfg: &TrainConfig,
    ctx: &mut RunCtx,
    mut inputs: impl FnMut(Tensor) -> Tensor,
    mut loss: impl FnMut(&Tensor, &Batch) -> Result<Tensor>,
) -> Result<()> {
    let mut opt = cfg.optim.build(vs)?;
    let mut best: f64 = 0.0;
    let mut last_acc = 0.0;
    for epoch in 0..cfg.epochs {
        opt.set_lr(cfg.optim.lr_at(epoch, cfg.epochs));
        let batches = data.train.batches(cfg.batch_size, ctx.rng());
        let mut total = 0.0;
        for idx in &batches {
            let (x, y) = (data.train.x.index_select(0, idx), data.train.y.index_select(0, idx));
            let x = inputs(data.augment.apply(&x, &data.image_shape, ctx.rng()));
            let logits = model.forward_t(&x, true);
            let l = loss(&logits, &Batch { x: &x, idx, y: &y, epoch })?;
            opt.backward_step(&l);
            total += f64::try_from(l.detach())?;
        }
        let step = epoch + 1;
        if step % cfg.eval_every == 0 || step == cfg.epochs {
            let mut metrics = vec![("train_loss", total / batches.len().max(1) as f64), ("lr", cfg.optim.lr_at(epoch, cfg.epochs))];
            metrics.extend(evaluate(model, data));
            last_acc = metrics.iter().find(|(k, _)| *k == "test_acc").map_or(0.0, |(_, v)| *v);
            best = best.max(last_acc);
            ctx.log_all(step, &metrics)?;
        }
        ctx.tick(step, cfg.epochs)?;
    }
    ctx.set_final("best_test_acc", best)?;
    ctx.set_final("test_acc_drop", best - last_acc)?;
    Ok(())
}

/// The common start of a supervised paper's run: load the data block (recording its sizes and
/// noise rate), seed torch from the run seed, and build the model on the run's device.
pub fn setup(data: &DataConfig, model: &ModelConfig, ctx: &mut RunCtx) -> Result<(Data, nn::VarStore, Box<dyn ModuleT>)> {
    let data = data.load_for_run(ctx)?;
    tch::manual_seed(ctx.seed as i64);
    let vs = nn::VarStore::new(ctx.device);
    let model = model.build(&vs.root(), &data.sample_shape, data.classes)?;
    Ok((data, vs, model))
}

/// Gaussian noise augmentation (Cohen et al. 2019): cross-entropy on x + σ·N(0, I), a fresh
/// draw per batch — the base-classifier training of the randomized-smoothing papers. One
/// training-mode forward per step, on the noisy batch, so BatchNorm's running statistics are those
/// of noisy inputs only (as in Cohen et al.'s `train.py`).
pub fn fit_with_gaussian_noise<M: ModuleT + ?Sized>(model: &M, vs: &nn::VarStore, data: &Data, cfg: &TrainConfig, sigma: f64, ctx: &mut RunCtx) -> Result<()> {
    fit_on_inputs(model, vs, data, cfg, ctx, |x| &x + x.randn_like() * sigma, |logits, b| Ok(logits.cross_entropy_for_logits(b.y)))
}

/// Mean cross-entropy of logits against (soft) target distributions [N, C].
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    -(targets * logits.log_softmax(-1, Kind::Float)).sum_dim_intlist([-1].as_slice(), false, Kind::Float).mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::ProgressMode;
    use crate::data::block::Split;
    use std::cell::RefCell;
    use tch::Device;

    /// A linear model that records the input of every training-mode forward.
    #[derive(Debug)]
    struct Recorder {
        lin: nn::Linear,
        seen: RefCell<Vec<Tensor>>,
    }

    impl ModuleT for Recorder {
        fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
            if train {
                self.seen.borrow_mut().push(x.detach().copy());
            }
            x.apply(&self.lin)
        }
    }

    /// One training-mode forward per step, on x + σ·N(0, I) only: a clean forward beside it (the
    /// old code) would show up as a second call whose input is the clean batch (here all zeros),
    /// and would mix clean statistics into BatchNorm's running means.
    #[test]
    fn gaussian_noise_training_runs_one_forward_on_the_noisy_batch() {
        let (n, d, sigma) = (256i64, 16i64, 0.5);
        let split = || Split {
            x: Tensor::zeros([n, d], (Kind::Float, Device::Cpu)),
            y: Tensor::zeros([n], (Kind::Int64, Device::Cpu)),
            y_true: Tensor::zeros([n], (Kind::Int64, Device::Cpu)),
            domain: Tensor::zeros([n], (Kind::Int64, Device::Cpu)),
        };
        let data = Data { train: split(), val: None, test: split(), classes: 2, sample_shape: vec![d], image_shape: vec![d], augment: Default::default(), realised_noise_rate: 0.0, bags: None };
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Recorder { lin: nn::linear(vs.root(), d, 2, Default::default()), seen: RefCell::new(vec![]) };
        let cfg = TrainConfig { epochs: 2, batch_size: 128, eval_every: 1, optim: OptimConfig::default() };
        let dir = std::env::temp_dir().join(format!("reglab-noise-fit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ctx = RunCtx::new(&dir, "t", 0, Device::Cpu, ProgressMode::Quiet, &dir).unwrap();
        fit_with_gaussian_noise(&model, &vs, &data, &cfg, sigma, &mut ctx).unwrap();
        let _ = ctx.finish();
        let _ = std::fs::remove_dir_all(&dir);
        let seen = model.seen.borrow();
        assert_eq!(seen.len(), 4, "2 epochs × 2 batches, one training forward each");
        for x in seen.iter() {
            let std = f64::try_from(x.std(true)).unwrap();
            assert!((std - sigma).abs() < 0.05, "a training input's std {std}, not σ = {sigma}");
        }
        // A fresh draw per batch.
        assert!(f64::try_from((&seen[0] - &seen[1]).abs().max()).unwrap() > 0.1);
    }
}
