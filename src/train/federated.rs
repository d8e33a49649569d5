//! Federated learning, simulated in one process: clients are index sets over one dataset tensor (no
//! copies), split by label skew (Dirichlet or shards, seeded); a round sends the global weights to
//! every client, runs local SGD epochs there, and aggregates. FedAvg (the sample-size-weighted
//! mean) and FedProx (μ/2·‖w − w_g‖² added to the local loss) live here as the baselines papers
//! compare to; a paper with its own aggregation uses the same local loop, and `models::state` for
//! the weights (every variable in name order, buffers included, as a state dict).

use anyhow::{bail, Result};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::context::Rng;
use crate::models::state;
use crate::train::optim::{OptimConfig, OptimKind};

/// Splits sample indices among `clients` with per-class Dirichlet(α) proportions (Hsu et al. 2019):
/// for each class, its shuffled samples are cut at the cumulative proportions p ~ Dir(α·1). The
/// whole split is redrawn until every client holds at least `min_size` samples (as FedLab's
/// `min_require_size`), at most 1000 times. (FedLab and NIID-Bench also zero the share of clients
/// that already hold N/m samples before each cut; this split does not, so client sizes vary more.) Small α: each client sees few
/// classes; large α: every client's label mix approaches the global one.
pub fn dirichlet_split(labels: &[i64], clients: usize, alpha: f64, min_size: usize, rng: &mut Rng) -> Result<Vec<Vec<i64>>> {
    if clients == 0 || !(alpha > 0.0) {
        bail!("a Dirichlet split needs `clients` ≥ 1 and `alpha` > 0 (got {clients} clients, α {alpha})");
    }
    if min_size * clients > labels.len() {
        bail!("{clients} `clients` of at least `min_client_size` {min_size} samples need {} samples; the data has {}", min_size * clients, labels.len());
    }
    let classes = labels.iter().copied().max().map_or(0, |m| m + 1);
    for _ in 0..1000 {
        let mut parts: Vec<Vec<i64>> = vec![vec![]; clients];
        for c in 0..classes {
            let mut members: Vec<i64> = (0..labels.len() as i64).filter(|&i| labels[i as usize] == c).collect();
            rng.shuffle(&mut members);
            let p = rng.dirichlet(&vec![alpha; clients]);
            let n = members.len();
            let mut start = 0;
            let mut cum = 0.0;
            for (k, pk) in p.iter().enumerate() {
                cum += pk;
                let end = if k + 1 == clients { n } else { ((cum * n as f64).floor() as usize).min(n) };
                parts[k].extend_from_slice(&members[start..end.max(start)]);
                start = end.max(start);
            }
        }
        if parts.iter().all(|p| p.len() >= min_size) {
            return Ok(parts);
        }
    }
    bail!("no Dirichlet(α = {alpha}) split in 1000 draws gave every one of {clients} clients {min_size} samples; raise α or lower the minimum")
}

/// The shard split of McMahan et al.: samples sorted by label (ties in a random order) are cut into
/// `clients · shards_per_client` equal shards, and each client gets `shards_per_client` of them at
/// random (the remainder of an uneven division goes to the last shard).
pub fn shard_split(labels: &[i64], clients: usize, shards_per_client: usize, rng: &mut Rng) -> Result<Vec<Vec<i64>>> {
    let shards = clients * shards_per_client;
    if shards == 0 || shards > labels.len() {
        bail!("`clients` {clients} × `shards_per_client` {shards_per_client} must give between 1 and {} shards (one sample each at least)", labels.len());
    }
    let mut order: Vec<i64> = (0..labels.len() as i64).collect();
    rng.shuffle(&mut order);
    order.sort_by_key(|&i| labels[i as usize]);
    let size = labels.len() / shards;
    let mut ids: Vec<usize> = (0..shards).collect();
    rng.shuffle(&mut ids);
    Ok((0..clients)
        .map(|k| {
            ids[k * shards_per_client..(k + 1) * shards_per_client]
                .iter()
                .flat_map(|&s| order[s * size..if s + 1 == shards { order.len() } else { (s + 1) * size }].to_vec())
                .collect()
        })
        .collect())
}

/// FedAvg: Σ_k n_k w_k / Σ_k n_k, per tensor.
pub fn fedavg(locals: &[Vec<Tensor>], sizes: &[f64]) -> Vec<Tensor> {
    assert_eq!(locals.len(), sizes.len(), "one size per client");
    let total: f64 = sizes.iter().sum();
    (0..locals[0].len()).map(|t| locals.iter().zip(sizes).map(|(w, n)| &w[t] * (n / total)).reduce(|a, b| a + b).expect("at least one client")).collect()
}

/// One client's local training, as the FL codes run it: a fresh SGD optimiser (momentum,
/// weight decay) each round, `epochs` passes over the client's samples in seeded random batches.
#[derive(Debug, Clone, Copy)]
pub struct Local {
    pub epochs: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// FedProx's μ: adds μ/2·‖w − w_global‖² to the loss (0: FedAvg's plain local SGD).
    pub prox_mu: f64,
}

/// Loads `global` into the model, trains on the rows `idx` of (`x`, `y`) with `loss(logits, y)`
/// (plus FedProx's term), and returns the local weights and the mean training loss.
pub fn local_update<M: Module>(model: &M, vs: &nn::VarStore, global: &[Tensor], x: &Tensor, y: &Tensor, idx: &[i64], cfg: &Local, rng: &mut Rng, loss: &dyn Fn(&Tensor, &Tensor) -> Tensor) -> Result<(Vec<Tensor>, f64)> {
    state::load(vs, global);
    let mut opt = OptimConfig { kind: OptimKind::Sgd, lr: cfg.lr, momentum: cfg.momentum, weight_decay: cfg.weight_decay, ..Default::default() }.build(vs)?;
    let vars = state::variables(vs);
    let device = y.device();
    let (mut total, mut steps) = (0.0, 0usize);
    for _ in 0..cfg.epochs {
        let mut order = idx.to_vec();
        rng.shuffle(&mut order);
        for chunk in order.chunks(cfg.batch_size.max(1)) {
            let b = Tensor::from_slice(chunk).to_device(device);
            let mut l = loss(&model.forward(&x.index_select(0, &b)), &y.index_select(0, &b));
            if cfg.prox_mu > 0.0 {
                let prox = vars.iter().zip(global).map(|(v, g)| (v - g).square().sum(Kind::Float)).reduce(|a, b| a + b).expect("a model has variables");
                l = l + prox * (cfg.prox_mu / 2.0);
            }
            opt.backward_step(&l);
            total += f64::try_from(l.detach())?;
            steps += 1;
        }
    }
    Ok((state::copy(vs), total / steps.max(1) as f64))
}

/// Mean cross-entropy and accuracy of the model on the rows `idx` (no gradients).
pub fn loss_and_accuracy<M: Module>(model: &M, x: &Tensor, y: &Tensor, idx: &Tensor) -> Result<(f64, f64)> {
    tch::no_grad(|| {
        let logits = model.forward(&x.index_select(0, idx));
        let y = y.index_select(0, idx);
        let ce = f64::try_from(logits.cross_entropy_for_logits(&y))?;
        let acc = f64::try_from(logits.argmax(1, false).eq_tensor(&y).to_kind(Kind::Double).mean(Kind::Double))?;
        Ok((ce, acc))
    })
}

/// Mean and population standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    (mean, (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::mlp::Mlp;
    use crate::testutil::fill_with_pattern;
    use tch::Device;

    fn labels(n: usize, classes: i64) -> Vec<i64> {
        (0..n as i64).map(|i| i % classes).collect()
    }

    fn every_sample_once(parts: &[Vec<i64>], n: usize) {
        let mut all: Vec<i64> = parts.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..n as i64).collect::<Vec<_>>());
    }

    /// Mean over clients of the largest class share: 1 when every client holds one class, 1/K when
    /// every client holds the global mix.
    fn concentration(parts: &[Vec<i64>], y: &[i64], classes: i64) -> f64 {
        parts
            .iter()
            .map(|p| {
                let mut counts = vec![0usize; classes as usize];
                p.iter().for_each(|&i| counts[y[i as usize] as usize] += 1);
                *counts.iter().max().unwrap() as f64 / p.len() as f64
            })
            .sum::<f64>()
            / parts.len() as f64
    }

    #[test]
    fn dirichlet_splits_place_every_sample_once_and_follow_alpha() {
        let y = labels(2000, 10);
        let mut rng = Rng::new(1);
        let skewed = dirichlet_split(&y, 10, 0.1, 10, &mut rng).unwrap();
        let mild = dirichlet_split(&y, 10, 1.0, 10, &mut rng).unwrap();
        let iid = dirichlet_split(&y, 10, 1000.0, 10, &mut rng).unwrap();
        for parts in [&skewed, &mild, &iid] {
            every_sample_once(parts, y.len());
            assert!(parts.iter().all(|p| p.len() >= 10));
        }
        let (c_skew, c_mild, c_iid) = (concentration(&skewed, &y, 10), concentration(&mild, &y, 10), concentration(&iid, &y, 10));
        assert!(c_skew > 0.5 && c_skew > c_mild && c_mild > c_iid, "{c_skew} {c_mild} {c_iid}");
        // At α = 1000 each client's share of each class is within a few points of 1/10.
        assert!(c_iid < 0.16, "{c_iid}");
        // Seeded: the same seed gives the same split.
        assert_eq!(dirichlet_split(&y, 10, 0.1, 10, &mut Rng::new(5)).unwrap(), dirichlet_split(&y, 10, 0.1, 10, &mut Rng::new(5)).unwrap());
        assert!(dirichlet_split(&y, 300, 0.1, 10, &mut rng).is_err());
    }

    #[test]
    fn shard_splits_give_each_client_its_shards_of_sorted_labels() {
        let y = labels(1000, 10);
        let parts = shard_split(&y, 10, 2, &mut Rng::new(2)).unwrap();
        every_sample_once(&parts, y.len());
        for p in &parts {
            assert_eq!(p.len(), 100);
            let mut classes: Vec<i64> = p.iter().map(|&i| y[i as usize]).collect();
            classes.dedup_by_key(|c| *c);
            classes.sort();
            classes.dedup();
            assert!(classes.len() <= 2, "two shards of 50 sorted labels span at most two classes: {classes:?}");
        }
    }

    #[test]
    fn fedavg_weights_by_size_and_identical_clients_give_that_client() {
        let a = || vec![Tensor::from_slice(&[1.0f32, 2.0]), Tensor::from_slice(&[3.0f32])];
        let b = vec![Tensor::from_slice(&[4.0f32, 8.0]), Tensor::from_slice(&[0.0f32])];
        let avg = fedavg(&[a(), b], &[1.0, 2.0]);
        assert_eq!(Vec::<f32>::try_from(&avg[0]).unwrap(), vec![3.0, 6.0]);
        assert_eq!(Vec::<f32>::try_from(&avg[1]).unwrap(), vec![1.0]);
        let same = fedavg(&[a(), a(), a()], &[5.0, 1.0, 7.0]);
        assert_eq!(Vec::<f32>::try_from(&same[0]).unwrap(), vec![1.0, 2.0]);
    }

    #[test]
    fn fedprox_pulls_the_local_model_toward_the_global_one() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Mlp::new(&vs.root(), &[4, 8, 3], true);
        fill_with_pattern(&vs, "", 0.3);
        let global = state::copy(&vs);
        let mut r = Rng::new(0);
        let x = Tensor::from_slice(&(0..160).map(|_| r.normal() as f32).collect::<Vec<_>>()).view([40, 4]);
        let y = Tensor::from_slice(&(0..40).map(|i| i % 3).collect::<Vec<i64>>());
        let idx: Vec<i64> = (0..40).collect();
        let ce = |l: &Tensor, y: &Tensor| l.cross_entropy_for_logits(y);
        let dist = |w: &[Tensor]| w.iter().zip(&global).map(|(a, b)| (a - b).square().sum(Kind::Double).double_value(&[])).sum::<f64>();
        let mut moved = vec![];
        for mu in [0.0, 1.0, 100.0] {
            let cfg = Local { epochs: 3, batch_size: 8, lr: 0.005, momentum: 0.0, weight_decay: 0.0, prox_mu: mu };
            let (w, _) = local_update(&model, &vs, &global, &x, &y, &idx, &cfg, &mut Rng::new(7), &ce).unwrap();
            moved.push(dist(&w));
        }
        assert!(moved[0] > moved[1] && moved[1] > moved[2] && moved[2] > 0.0, "{moved:?}");
    }
}
