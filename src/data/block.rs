//! The shared `data:` block of a paper's Config, and what it yields: train / validation / test
//! splits as tensors on the run's device, with the true labels kept beside noisy ones, domains
//! as labelled environments, and bags of samples with their label proportions.
//!
//! The steps, in order: load the dataset once; keep a class subset (relabelled 0..k−1 in the
//! order given); split (the dataset's own test set, else a stratified `test_fraction`), then
//! draw `val_fraction` of train (stratified) and subsample to `train_size`/`test_size`
//! (stratified); apply domain shifts (rotation, colour, additive noise); normalise with train
//! statistics; flatten; corrupt the training labels; form bags. Every random choice comes from
//! `split_seed` (default: the run seed) through one Rust RNG, so it is the same on any device.

use std::path::Path;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::sources::{self, Raw};
use crate::context::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    None,
    /// Divide by the dataset's largest raw value (pixels to [0, 1]).
    Unit,
    /// Per-feature mean 0, std 1 with train statistics.
    Standardize,
}

/// Label noise, named exactly because papers differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseKind {
    None,
    /// With probability `rate`, flip to a uniformly random *other* class.
    Symmetric,
    /// With probability `rate`, redraw from all classes (the label may stay).
    Uniform,
    /// With probability `rate`, class c becomes c + 1 (mod k).
    Pairflip,
    /// With probability `rate`, class a becomes b for each pair [a, b] of `map`.
    Asymmetric,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LabelNoise {
    pub kind: NoiseKind,
    pub rate: f64,
    /// For `asymmetric`: [from, to] class pairs (after any class subset).
    pub map: Vec<[i64; 2]>,
}

impl Default for LabelNoise {
    fn default() -> Self {
        LabelNoise { kind: NoiseKind::None, rate: 0.0, map: vec![] }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DomainKind {
    None,
    /// Each training domain rotated by an angle (degrees); the test set by `test_value`.
    Rotated,
    /// CMNIST-style: a grey image goes to one of two colour channels; the channel agrees with
    /// `label mod 2` with the domain's probability.
    Colored,
    /// Gaussian noise of the domain's standard deviation added to the features.
    Noise,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Domains {
    pub kind: DomainKind,
    /// One value per training domain (angle, colour agreement, noise std).
    pub values: Vec<f64>,
    /// The value applied to the test set (and validation set).
    pub test_value: f64,
}

impl Default for Domains {
    fn default() -> Self {
        Domains { kind: DomainKind::None, values: vec![], test_value: 0.0 }
    }
}

/// Training-time augmentation of image batches (applied by the training loop, never to test data).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    /// Random translation by up to this many pixels in each direction (zero padding, then a
    /// crop back to size: RandomCrop(size, padding = shift)).
    pub shift: i64,
    /// Random horizontal flips (p = 1/2).
    pub hflip: bool,
}

impl Augment {
    pub fn is_none(&self) -> bool {
        self.shift == 0 && !self.hflip
    }

    /// Augments a batch whose samples have `image_shape` [C, H, W] (flattened or not); every
    /// random choice comes from `rng`.
    pub fn apply(&self, x: &Tensor, image_shape: &[i64], rng: &mut Rng) -> Tensor {
        if self.is_none() || image_shape.len() != 3 {
            return x.shallow_clone();
        }
        let n = x.size()[0];
        let flat_shape = x.size();
        let mut shape = vec![n];
        shape.extend(image_shape);
        let mut img = x.view(shape.as_slice());
        if self.hflip {
            let flips: Vec<bool> = (0..n).map(|_| rng.uniform() < 0.5).collect();
            let mask = Tensor::from_slice(&flips).to_device(x.device()).view([n, 1, 1, 1]);
            img = img.flip([3].as_slice()).where_self(&mask, &img);
        }
        if self.shift > 0 {
            let s = self.shift;
            let (h, w) = (image_shape[1], image_shape[2]);
            let (c, hp, wp) = (image_shape[0], h + 2 * s, w + 2 * s);
            let padded = img.constant_pad_nd([s, s, s, s].as_slice()).view([n, c * hp * wp]);
            let offsets: Vec<i64> = (0..n).map(|_| (rng.below(2 * s as u64 + 1) as i64, rng.below(2 * s as u64 + 1) as i64)).map(|(dy, dx)| dy * wp + dx).collect();
            // One gather: output pixel (c, y, x) of sample i is padded pixel (c, y + dy_i, x + dx_i),
            // so a crop is the unshifted crop's flat index plus dy_i·W' + dx_i. Pure copies, so the
            // values (and, each padded pixel feeding at most one output pixel, the gradients) are
            // those of cropping sample by sample.
            let opts = (Kind::Int64, x.device());
            let crop = Tensor::arange(c, opts).view([c, 1, 1]) * (hp * wp) + Tensor::arange(h, opts).view([1, h, 1]) * wp + Tensor::arange(w, opts).view([1, 1, w]);
            let index = crop.view([1, c * h * w]) + Tensor::from_slice(&offsets).to_device(x.device()).view([n, 1]);
            img = padded.gather(1, &index, false).view([n, c, h, w]);
        }
        img.view(flat_shape.as_slice())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// digits | fashion_mnist | mnist | cifar10 | cifar100 | csv
    pub name: String,
    /// For `csv`: the file.
    pub path: String,
    /// For `csv`: the label column, by header name or index (-1 = last).
    pub label_column: String,
    /// For `csv`: feature columns (default: all others).
    pub feature_columns: Vec<String>,
    /// Keep only these classes, relabelled 0..k−1 in this order (e.g. [3, 8]).
    pub classes: Vec<i64>,
    /// Test share when the dataset has no test split of its own.
    pub test_fraction: f64,
    /// Share of the training split held out for validation.
    pub val_fraction: f64,
    /// Stratified subsample sizes (null: all).
    pub train_size: Option<usize>,
    pub test_size: Option<usize>,
    /// Seed of every data-side random choice (null: the run seed).
    pub split_seed: Option<u64>,
    pub normalize: Normalize,
    /// Flatten samples to vectors (for MLPs).
    pub flatten: bool,
    pub label_noise: LabelNoise,
    pub domains: Domains,
    /// Group the training set into bags of this many samples (0: no bags).
    pub bag_size: usize,
    /// Training-time augmentation (random shifts, flips) applied by the training loop.
    pub augment: Augment,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            name: "digits".into(),
            path: String::new(),
            label_column: "-1".into(),
            feature_columns: vec![],
            classes: vec![],
            test_fraction: 0.2,
            val_fraction: 0.0,
            train_size: None,
            test_size: None,
            split_seed: None,
            normalize: Normalize::Unit,
            flatten: false,
            label_noise: LabelNoise::default(),
            domains: Domains::default(),
            bag_size: 0,
            augment: Augment::default(),
        }
    }
}

/// One split on the device: features, (possibly noisy) labels, true labels, domain ids.
#[derive(Debug)]
pub struct Split {
    pub x: Tensor,
    pub y: Tensor,
    pub y_true: Tensor,
    /// Environment id of each sample (all 0 without domains; the test set is its own domain).
    pub domain: Tensor,
}

impl Split {
    pub fn len(&self) -> i64 {
        self.y.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index batches of one epoch, from a permutation drawn with `rng`; the last may be short.
    pub fn batches(&self, batch_size: usize, rng: &mut Rng) -> Vec<Tensor> {
        let mut order: Vec<i64> = (0..self.len()).collect();
        rng.shuffle(&mut order);
        let device = self.y.device();
        order.chunks(batch_size.max(1)).map(|c| Tensor::from_slice(c).to_device(device)).collect()
    }

    /// The rows `idx` of every field.
    pub fn select(&self, idx: &Tensor) -> Split {
        Split { x: self.x.index_select(0, idx), y: self.y.index_select(0, idx), y_true: self.y_true.index_select(0, idx), domain: self.domain.index_select(0, idx) }
    }
}

/// Bags of training samples and their label proportions.
#[derive(Debug)]
pub struct Bags {
    /// i64 [n_bags, bag_size]: indices into the training split.
    pub members: Tensor,
    /// f32 [n_bags, classes]: the share of each (observed) label in the bag.
    pub proportions: Tensor,
}

#[derive(Debug)]
pub struct Data {
    pub train: Split,
    pub val: Option<Split>,
    pub test: Split,
    pub classes: i64,
    /// Shape of one sample as the model sees it.
    pub sample_shape: Vec<i64>,
    /// Shape of one sample before flattening ([C, H, W] for images).
    pub image_shape: Vec<i64>,
    pub augment: Augment,
    /// Fraction of training labels that differ from the truth after noise.
    pub realised_noise_rate: f64,
    pub bags: Option<Bags>,
}

impl Data {
    /// Records the data a run used in its summary: split sizes, classes, realised noise rate.
    pub fn record(&self, ctx: &mut crate::context::RunCtx) -> Result<()> {
        ctx.set_final("data_train_size", self.train.len() as f64)?;
        ctx.set_final("data_test_size", self.test.len() as f64)?;
        ctx.set_final("data_classes", self.classes as f64)?;
        ctx.set_final("data_noise_rate", self.realised_noise_rate)
    }
}

impl DataConfig {
    /// Range and combination checks, naming the key (`data.<key>`).
    pub fn check(&self) -> Result<()> {
        let known = ["digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "csv"];
        if !known.contains(&self.name.as_str()) {
            bail!("`data.name`: unknown dataset `{}`; classification datasets: {}", self.name, known.join(", "));
        }
        if self.name == "csv" && self.path.is_empty() {
            bail!("`data.name: csv` needs `data.path` (a CSV file, optionally .gz)");
        }
        if !(0.0..1.0).contains(&self.test_fraction) || !(0.0..1.0).contains(&self.val_fraction) {
            bail!("`data.test_fraction` and `data.val_fraction` must be in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.label_noise.rate) {
            bail!("`data.label_noise.rate` must be in [0, 1], got {}", self.label_noise.rate);
        }
        if self.label_noise.kind == NoiseKind::Asymmetric && self.label_noise.map.is_empty() {
            bail!("`data.label_noise.kind: asymmetric` needs `data.label_noise.map`, e.g. [[9, 1], [2, 7]]");
        }
        if self.domains.kind != DomainKind::None && self.domains.values.is_empty() {
            bail!("`data.domains.values` must list one value per training domain");
        }
        if self.domains.kind == DomainKind::Colored && self.domains.values.iter().chain([&self.domains.test_value]).any(|p| !(0.0..=1.0).contains(p)) {
            bail!("`data.domains.values` and `test_value` are probabilities for `colored`");
        }
        let mut seen = std::collections::BTreeSet::new();
        if self.classes.iter().any(|c| !seen.insert(*c) || *c < 0) {
            bail!("`data.classes` must be distinct non-negative class ids, got {:?}", self.classes);
        }
        Ok(())
    }

    /// The dataset a run needs from the data directory, for the check before any run starts.
    pub fn needs_files(&self) -> Option<&str> {
        (self.name != "csv").then_some(self.name.as_str())
    }

    /// Loads the data of a run (its data directory, seed and device) and records the split sizes,
    /// classes and realised noise rate in the run's summary.
    pub fn load_for_run(&self, ctx: &mut crate::context::RunCtx) -> Result<Data> {
        let data = self.load(&ctx.data_dir, ctx.seed, ctx.device)?;
        data.record(ctx)?;
        Ok(data)
    }

    /// Loads and prepares the data on `device`.
    pub fn load(&self, data_dir: &Path, run_seed: u64, device: Device) -> Result<Data> {
        self.check()?;
        let raw = if self.name == "csv" {
            sources::load_csv(Path::new(&self.path), &self.label_column, &self.feature_columns)?
        } else {
            sources::load_named(&self.name, data_dir)?
        };
        self.prepare(raw, run_seed, device)
    }

    /// Everything after loading (public for tests on synthetic `Raw` data).
    pub fn prepare(&self, raw: Raw, run_seed: u64, device: Device) -> Result<Data> {
        let mut rng = Rng::new(self.split_seed.unwrap_or(run_seed) ^ 0xDA7A);
        let (mut x, mut y, mut test, mut classes) = (raw.train_x, raw.train_y, raw.test, raw.classes);
        if !self.classes.is_empty() {
            if let Some(bad) = self.classes.iter().find(|&&c| c >= classes) {
                bail!("`data.classes`: class {bad} does not exist (the dataset has {classes} classes)");
            }
            (x, y) = keep_classes(&x, &y, &self.classes);
            test = test.map(|(tx, ty)| keep_classes(&tx, &ty, &self.classes));
            classes = self.classes.len() as i64;
        }
        let (train_idx, test_part) = match test {
            Some(t) => ((0..y.size()[0]).collect::<Vec<i64>>(), t),
            None => {
                let (te, tr) = stratified_split(&labels_vec(&y), self.test_fraction, &mut rng);
                let te_t = Tensor::from_slice(&te);
                ((tr), (x.index_select(0, &te_t), y.index_select(0, &te_t)))
            }
        };
        let train_labels: Vec<i64> = labels_vec(&y.index_select(0, &Tensor::from_slice(&train_idx)));
        let (val_pos, train_pos) = stratified_split(&train_labels, self.val_fraction, &mut rng);
        let mut train_pos: Vec<i64> = train_pos;
        if let Some(n) = self.train_size {
            train_pos = stratified_subsample(&train_labels, &train_pos, n, &mut rng).map_err(|e| anyhow::anyhow!("`data.train_size`: {e}"))?;
        }
        let pick = |pos: &[i64]| Tensor::from_slice(&pos.iter().map(|&p| train_idx[p as usize]).collect::<Vec<_>>());
        let (tr_t, va_t) = (pick(&train_pos), pick(&val_pos));
        let (mut train_x, train_y) = (x.index_select(0, &tr_t), y.index_select(0, &tr_t));
        let mut val = (!val_pos.is_empty()).then(|| (x.index_select(0, &va_t), y.index_select(0, &va_t)));
        let (mut test_x, mut test_y) = test_part;
        if let Some(n) = self.test_size {
            let labels = labels_vec(&test_y);
            let all: Vec<i64> = (0..labels.len() as i64).collect();
            let keep = Tensor::from_slice(&stratified_subsample(&labels, &all, n, &mut rng).map_err(|e| anyhow::anyhow!("`data.test_size`: {e}"))?);
            (test_x, test_y) = (test_x.index_select(0, &keep), test_y.index_select(0, &keep));
        }

        // Domains: training samples are dealt round-robin (after a shuffle) to the domains.
        let n_train = train_y.size()[0];
        let mut train_domain = Tensor::zeros([n_train], (Kind::Int64, Device::Cpu));
        let n_dom = self.domains.values.len().max(1) as i64;
        if self.domains.kind != DomainKind::None {
            let mut order: Vec<i64> = (0..n_train).collect();
            rng.shuffle(&mut order);
            let mut dom = vec![0i64; n_train as usize];
            for (k, &i) in order.iter().enumerate() {
                dom[i as usize] = k as i64 % n_dom;
            }
            train_domain = Tensor::from_slice(&dom);
            let mut parts = vec![];
            for (d, &v) in self.domains.values.iter().enumerate() {
                let idx = train_domain.eq(d as i64).nonzero().squeeze_dim(1);
                let part = self.shift(&train_x.index_select(0, &idx), &train_y.index_select(0, &idx), v, raw.max_value, &mut rng)?;
                parts.push((idx, part));
            }
            let sample: Vec<i64> = parts[0].1.size()[1..].to_vec();
            let mut shape = vec![n_train];
            shape.extend(&sample);
            let mut out = Tensor::zeros(shape.as_slice(), (Kind::Float, Device::Cpu));
            for (idx, part) in &parts {
                let _ = out.index_copy_(0, idx, part);
            }
            train_x = out;
            test_x = self.shift(&test_x, &test_y, self.domains.test_value, raw.max_value, &mut rng)?;
            val = match val {
                Some((vx, vy)) => Some((self.shift(&vx, &vy, self.domains.test_value, raw.max_value, &mut rng)?, vy)),
                None => None,
            };
        }

        // Normalise with training statistics.
        let (train_x, val, test_x) = match self.normalize {
            Normalize::None => (train_x, val, test_x),
            Normalize::Unit => {
                let m = raw.max_value;
                (train_x / m, val.map(|(vx, vy)| (vx / m, vy)), test_x / m)
            }
            Normalize::Standardize => {
                let mean = train_x.mean_dim(0, true, Kind::Float);
                let std = train_x.std_dim(0, false, true).clamp_min(1e-8);
                let f = |t: Tensor| (t - &mean) / &std;
                (f(train_x.shallow_clone()), val.map(|(vx, vy)| (f(vx), vy)), f(test_x))
            }
        };
        let image_shape = train_x.size()[1..].to_vec();
        let flat = |t: Tensor| if self.flatten { t.flatten(1, -1) } else { t };
        let (train_x, test_x) = (flat(train_x), flat(test_x));
        let val = val.map(|(vx, vy)| (flat(vx), vy));
        let sample_shape = train_x.size()[1..].to_vec();

        // Label noise on the training labels only; the truth is kept.
        let y_true = train_y;
        let y_noisy = self.corrupt(&labels_vec(&y_true), classes, &mut rng)?;
        let realised = y_noisy.iter().zip(labels_vec(&y_true)).filter(|(a, b)| **a != *b).count() as f64 / (n_train.max(1) as f64);
        let y_noisy = Tensor::from_slice(&y_noisy);

        let bags = (self.bag_size > 0).then(|| make_bags(&labels_vec(&y_noisy), classes, self.bag_size, &mut rng));

        let to = |t: Tensor| t.to_device(device);
        let n_test = test_y.size()[0];
        Ok(Data {
            train: Split { x: to(train_x), y: to(y_noisy), y_true: to(y_true), domain: to(train_domain) },
            val: val.map(|(vx, vy)| {
                let n = vy.size()[0];
                Split { x: to(vx), y: to(vy.shallow_clone()), y_true: to(vy), domain: to(Tensor::full([n], n_dom, (Kind::Int64, Device::Cpu))) }
            }),
            test: Split { x: to(test_x), y: to(test_y.shallow_clone()), y_true: to(test_y), domain: to(Tensor::full([n_test], n_dom, (Kind::Int64, Device::Cpu))) },
            classes,
            sample_shape,
            image_shape,
            augment: self.augment.clone(),
            realised_noise_rate: realised,
            bags: bags.map(|b| Bags { members: to(b.members), proportions: to(b.proportions) }),
        })
    }

    /// Applies the domain shift with value `v` to images `x` (labels `y` for colour).
    fn shift(&self, x: &Tensor, y: &Tensor, v: f64, max_value: f64, rng: &mut Rng) -> Result<Tensor> {
        match self.domains.kind {
            DomainKind::None => Ok(x.shallow_clone()),
            DomainKind::Rotated => {
                if x.dim() != 4 {
                    bail!("`data.domains.kind: rotated` needs images [N, C, H, W]; this dataset's samples have shape {:?}", &x.size()[1..]);
                }
                Ok(rotate(x, v))
            }
            DomainKind::Colored => {
                if x.dim() != 4 || x.size()[1] != 1 {
                    bail!("`data.domains.kind: colored` needs grey images [N, 1, H, W]; got {:?}", &x.size()[1..]);
                }
                let labels = labels_vec(y);
                let channel: Vec<i64> = labels.iter().map(|&l| if rng.uniform() < v { l % 2 } else { 1 - l % 2 }).collect();
                let c = Tensor::from_slice(&channel).view([-1, 1, 1, 1]).to_kind(Kind::Float);
                Ok(Tensor::cat(&[x * (1.0 - &c), x * &c], 1))
            }
            DomainKind::Noise => {
                let numel = x.numel();
                let noise: Vec<f32> = (0..numel).map(|_| (rng.normal() * v * max_value) as f32).collect();
                Ok(x + Tensor::from_slice(&noise).view(x.size().as_slice()))
            }
        }
    }

    fn corrupt(&self, y: &[i64], classes: i64, rng: &mut Rng) -> Result<Vec<i64>> {
        let r = self.label_noise.rate;
        let k = classes as u64;
        let map = &self.label_noise.map;
        if self.label_noise.kind != NoiseKind::None && self.label_noise.rate > 0.0 && classes < 2 {
            bail!("`data.label_noise` needs at least two classes (this data has {classes})");
        }
        if let Some(bad) = map.iter().flatten().find(|&&c| c < 0 || c >= classes) {
            bail!("`data.label_noise.map`: class {bad} is outside 0..{classes}");
        }
        Ok(y.iter()
            .map(|&l| {
                let hit = rng.uniform() < r;
                match self.label_noise.kind {
                    NoiseKind::None => l,
                    _ if !hit => l,
                    NoiseKind::Symmetric => {
                        let other = rng.below(k - 1) as i64;
                        if other >= l { other + 1 } else { other }
                    }
                    NoiseKind::Uniform => rng.below(k) as i64,
                    NoiseKind::Pairflip => (l + 1) % classes,
                    NoiseKind::Asymmetric => map.iter().find(|[a, _]| *a == l).map_or(l, |[_, b]| *b),
                }
            })
            .collect())
    }
}

fn labels_vec(y: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(y.to_device(Device::Cpu).to_kind(Kind::Int64)).expect("labels")
}

/// Keeps the rows whose label is in `keep`, relabelled to its position there.
fn keep_classes(x: &Tensor, y: &Tensor, keep: &[i64]) -> (Tensor, Tensor) {
    let labels = labels_vec(y);
    let (mut idx, mut new) = (vec![], vec![]);
    for (i, l) in labels.iter().enumerate() {
        if let Some(pos) = keep.iter().position(|c| c == l) {
            idx.push(i as i64);
            new.push(pos as i64);
        }
    }
    (x.index_select(0, &Tensor::from_slice(&idx)), Tensor::from_slice(&new))
}

/// Splits positions 0..n into (a `fraction` share, the rest), per class, so each class keeps
/// its proportion (rounded per class).
pub fn stratified_split(labels: &[i64], fraction: f64, rng: &mut Rng) -> (Vec<i64>, Vec<i64>) {
    let mut by_class: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    for (i, &l) in labels.iter().enumerate() {
        by_class.entry(l).or_default().push(i as i64);
    }
    let (mut a, mut b) = (vec![], vec![]);
    for (_, mut members) in by_class {
        rng.shuffle(&mut members);
        let take = (fraction * members.len() as f64).round() as usize;
        a.extend_from_slice(&members[..take]);
        b.extend_from_slice(&members[take..]);
    }
    a.sort_unstable();
    b.sort_unstable();
    (a, b)
}

/// Draws `n` of `positions` keeping class proportions (largest remainders).
fn stratified_subsample(labels: &[i64], positions: &[i64], n: usize, rng: &mut Rng) -> Result<Vec<i64>> {
    if n > positions.len() {
        bail!("asked for {n} samples but the split has only {}", positions.len());
    }
    let mut by_class: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    for &p in positions {
        by_class.entry(labels[p as usize]).or_default().push(p);
    }
    let total = positions.len() as f64;
    let mut quotas: Vec<(i64, usize, f64)> = by_class.iter().map(|(&c, m)| {
        let exact = n as f64 * m.len() as f64 / total;
        (c, exact.floor() as usize, exact - exact.floor())
    }).collect();
    let mut left = n - quotas.iter().map(|q| q.1).sum::<usize>();
    let mut order: Vec<usize> = (0..quotas.len()).collect();
    order.sort_by(|&i, &j| quotas[j].2.partial_cmp(&quotas[i].2).expect("finite").then(i.cmp(&j)));
    for i in order {
        if left == 0 {
            break;
        }
        quotas[i].1 += 1;
        left -= 1;
    }
    let mut out = vec![];
    for (c, q, _) in quotas {
        let mut members = by_class[&c].clone();
        rng.shuffle(&mut members);
        out.extend_from_slice(&members[..q]);
    }
    out.sort_unstable();
    Ok(out)
}

fn make_bags(labels: &[i64], classes: i64, size: usize, rng: &mut Rng) -> Bags {
    let mut order: Vec<i64> = (0..labels.len() as i64).collect();
    rng.shuffle(&mut order);
    let n_bags = labels.len() / size;
    let members = &order[..n_bags * size];
    let mut props = vec![0f32; n_bags * classes as usize];
    for (b, bag) in members.chunks(size).enumerate() {
        for &i in bag {
            props[b * classes as usize + labels[i as usize] as usize] += 1.0 / size as f32;
        }
    }
    Bags {
        members: Tensor::from_slice(members).view([n_bags as i64, size as i64]),
        proportions: Tensor::from_slice(&props).view([n_bags as i64, classes]),
    }
}

/// Rotates images [N, C, H, W] by `degrees` counter-clockwise about their centre. Multiples of
/// 90° are exact (`rot90`); other angles resample bilinearly with zeros outside.
pub fn rotate(x: &Tensor, degrees: f64) -> Tensor {
    let quarter = degrees / 90.0;
    if (quarter - quarter.round()).abs() < 1e-12 {
        let k = (quarter.round() as i64).rem_euclid(4);
        return if k == 0 { x.shallow_clone() } else { x.rot90(k, [2, 3].as_slice()) };
    }
    let t = degrees.to_radians();
    let (c, s) = (t.cos(), t.sin());
    let n = x.size()[0];
    // affine_grid maps output coordinates to input ones: the inverse rotation.
    let theta = Tensor::from_slice(&[c as f32, -s as f32, 0.0, s as f32, c as f32, 0.0]).view([1, 2, 3]).expand([n, 2, 3], true).to_device(x.device());
    let grid = Tensor::affine_grid_generator(&theta, x.size().as_slice(), false);
    x.grid_sampler(&grid, 0, 0, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 samples per class, 3 classes, 2×4×4 "images" whose pixels encode their index.
    fn raw(with_test: bool) -> Raw {
        let n = 300;
        let x = Tensor::arange(n * 32, (Kind::Float, Device::Cpu)).view([n, 2, 4, 4]).remainder(17.0);
        let y = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(3);
        let test = with_test.then(|| (x.narrow(0, 0, 60).copy(), y.narrow(0, 0, 60).copy()));
        Raw { train_x: x, train_y: y, test, classes: 3, max_value: 16.0 }
    }

    fn counts(y: &Tensor, k: i64) -> Vec<i64> {
        let v = labels_vec(y);
        (0..k).map(|c| v.iter().filter(|&&l| l == c).count() as i64).collect()
    }

    #[test]
    fn splits_are_stratified_seeded_and_disjoint() {
        let cfg = DataConfig { test_fraction: 0.2, val_fraction: 0.25, ..Default::default() };
        let d = cfg.prepare(raw(false), 7, Device::Cpu).unwrap();
        assert_eq!(counts(&d.test.y, 3), vec![20, 20, 20]);
        assert_eq!(counts(&d.val.as_ref().unwrap().y, 3), vec![20, 20, 20]);
        assert_eq!(counts(&d.train.y, 3), vec![60, 60, 60]);
        let again = cfg.prepare(raw(false), 7, Device::Cpu).unwrap();
        assert!(bool::try_from(again.test.x.eq_tensor(&d.test.x).all()).unwrap());
        let other = cfg.prepare(raw(false), 8, Device::Cpu).unwrap();
        assert!(!bool::try_from(other.test.x.eq_tensor(&d.test.x).all()).unwrap());
        // A fixed split_seed makes the split independent of the run seed.
        let fixed = DataConfig { split_seed: Some(1), ..cfg.clone() };
        let (a, b) = (fixed.prepare(raw(false), 7, Device::Cpu).unwrap(), fixed.prepare(raw(false), 8, Device::Cpu).unwrap());
        assert!(bool::try_from(a.test.x.eq_tensor(&b.test.x).all()).unwrap());
        // Subsampling keeps proportions; the dataset's own test split is used when present.
        let sub = DataConfig { train_size: Some(30), test_size: Some(9), ..Default::default() }.prepare(raw(true), 0, Device::Cpu).unwrap();
        assert_eq!(counts(&sub.train.y, 3), vec![10, 10, 10]);
        assert_eq!(counts(&sub.test.y, 3), vec![3, 3, 3]);
        assert!(DataConfig { train_size: Some(10_000), ..Default::default() }.prepare(raw(true), 0, Device::Cpu).is_err());
    }

    #[test]
    fn normalisation_flattening_and_class_subsets() {
        let d = DataConfig { normalize: Normalize::Standardize, flatten: true, ..Default::default() }.prepare(raw(false), 0, Device::Cpu).unwrap();
        assert_eq!(d.sample_shape, vec![32]);
        let mean = f64::try_from(d.train.x.mean_dim(0, false, Kind::Double).abs().max()).unwrap();
        assert!(mean < 1e-5, "{mean}");
        let unit = DataConfig::default().prepare(raw(false), 0, Device::Cpu).unwrap();
        assert!(f64::try_from(unit.train.x.max()).unwrap() <= 1.0);
        assert_eq!(unit.sample_shape, vec![2, 4, 4]);
        let pair = DataConfig { classes: vec![2, 0], ..Default::default() }.prepare(raw(false), 0, Device::Cpu).unwrap();
        assert_eq!(pair.classes, 2);
        assert_eq!(counts(&pair.train.y, 2), vec![80, 80]);
        assert!(DataConfig { classes: vec![5], ..Default::default() }.prepare(raw(false), 0, Device::Cpu).is_err());
    }

    #[test]
    fn label_noise_rates_and_kinds() {
        let n = 20000usize;
        let y: Vec<i64> = (0..n as i64).map(|i| i % 10).collect();
        let tol = 4.0 * (0.4f64 * 0.6 / n as f64).sqrt(); // 4 binomial standard deviations
        for kind in [NoiseKind::Symmetric, NoiseKind::Uniform, NoiseKind::Pairflip] {
            let cfg = DataConfig { label_noise: LabelNoise { kind, rate: 0.4, map: vec![] }, ..Default::default() };
            let mut rng = Rng::new(3);
            let noisy = cfg.corrupt(&y, 10, &mut rng).unwrap();
            let flipped = noisy.iter().zip(&y).filter(|(a, b)| a != b).count() as f64 / n as f64;
            let expected = if kind == NoiseKind::Uniform { 0.4 * 0.9 } else { 0.4 };
            assert!((flipped - expected).abs() < tol, "{kind:?}: {flipped} vs {expected}");
            if kind == NoiseKind::Pairflip {
                assert!(noisy.iter().zip(&y).all(|(a, b)| a == b || *a == (b + 1) % 10));
            }
        }
        // `symmetric` never redraws the same label; `uniform` sometimes does.
        let all = |kind| DataConfig { label_noise: LabelNoise { kind, rate: 1.0, map: vec![] }, ..Default::default() };
        let sym = all(NoiseKind::Symmetric).corrupt(&y, 10, &mut Rng::new(1)).unwrap();
        assert!(sym.iter().zip(&y).all(|(a, b)| a != b));
        let uni = all(NoiseKind::Uniform).corrupt(&y, 10, &mut Rng::new(1)).unwrap();
        assert!(uni.iter().zip(&y).any(|(a, b)| a == b));
        let asym = DataConfig { label_noise: LabelNoise { kind: NoiseKind::Asymmetric, rate: 1.0, map: vec![[9, 1], [2, 7]] }, ..Default::default() };
        let out = asym.corrupt(&y, 10, &mut Rng::new(1)).unwrap();
        assert!(out.iter().zip(&y).all(|(a, b)| match b { 9 => *a == 1, 2 => *a == 7, _ => a == b }));
        // Through prepare: the truth is kept and the realised rate reported.
        let cfg = DataConfig { label_noise: LabelNoise { kind: NoiseKind::Symmetric, rate: 0.3, map: vec![] }, ..Default::default() };
        let d = cfg.prepare(raw(false), 0, Device::Cpu).unwrap();
        let differ = f64::try_from(d.train.y.ne_tensor(&d.train.y_true).to_kind(Kind::Double).mean(Kind::Double)).unwrap();
        assert_eq!(differ, d.realised_noise_rate);
        assert!((differ - 0.3).abs() < 0.12, "{differ}");
        assert!(bool::try_from(d.test.y.eq_tensor(&d.test.y_true).all()).unwrap(), "test labels stay clean");
    }

    #[test]
    fn rotation_identities() {
        let x = Tensor::rand([3, 1, 6, 6], (Kind::Float, Device::Cpu));
        assert!(bool::try_from(rotate(&x, 0.0).eq_tensor(&x).all()).unwrap());
        let mut r = x.shallow_clone();
        for _ in 0..4 {
            r = rotate(&r, 90.0);
        }
        assert!(bool::try_from(r.eq_tensor(&x).all()).unwrap());
        // A 90° turn moves the top-right corner to the top-left (counter-clockwise).
        let one = Tensor::zeros([1, 1, 3, 3], (Kind::Float, Device::Cpu));
        let _ = one.get(0).get(0).get(0).get(2).fill_(1.0);
        assert_eq!(rotate(&one, 90.0).double_value(&[0, 0, 0, 0]), 1.0);
        // A tiny angle goes through the resampler and stays close to the identity in the centre.
        let near = rotate(&x, 0.001);
        let centre = |t: &Tensor| t.narrow(2, 1, 4).narrow(3, 1, 4);
        assert!(f64::try_from((centre(&near) - centre(&x)).abs().max()).unwrap() < 1e-3);
    }

    #[test]
    fn domains_are_environments_and_colour_tracks_the_label() {
        let grey = Raw {
            train_x: Tensor::ones([400, 1, 2, 2], (Kind::Float, Device::Cpu)),
            train_y: Tensor::arange(400, (Kind::Int64, Device::Cpu)).remainder(2),
            test: None,
            classes: 2,
            max_value: 1.0,
        };
        let cfg = DataConfig { domains: Domains { kind: DomainKind::Colored, values: vec![1.0, 0.0], test_value: 0.5 }, ..Default::default() };
        let d = cfg.prepare(grey, 0, Device::Cpu).unwrap();
        assert_eq!(d.sample_shape, vec![2, 2, 2]);
        assert_eq!(counts(&d.train.domain, 2), vec![160, 160]);
        // Domain 0 (agreement 1.0): the lit channel is the label; domain 1 (0.0): the other one.
        let lit = d.train.x.sum_dim_intlist([2, 3].as_slice(), false, Kind::Float).argmax(1, false);
        let agree = lit.eq_tensor(&d.train.y);
        let in0 = d.train.domain.eq(0);
        assert!(bool::try_from(agree.logical_and(&in0).sum(Kind::Int64).eq(160)).unwrap());
        assert!(bool::try_from(agree.logical_and(&in0.logical_not()).sum(Kind::Int64).eq(0)).unwrap());
        assert!(bool::try_from(d.test.domain.eq(2).all()).unwrap(), "the test set is its own environment");
    }

    #[test]
    fn augmentation_shifts_and_flips_whole_images() {
        let x = Tensor::arange(2 * 9, (Kind::Float, Device::Cpu)).view([2, 1, 3, 3]) + 1.0;
        // A shift keeps every pixel value or zero-fills; the pixel sum can only drop.
        let aug = Augment { shift: 1, hflip: false };
        let out = aug.apply(&x.flatten(1, -1), &[1, 3, 3], &mut Rng::new(4)).view([2, 1, 3, 3]);
        for i in 0..2 {
            let (a, b) = (out.get(i), x.get(i));
            let kept = Vec::<f32>::try_from(a.flatten(0, -1)).unwrap();
            let orig = Vec::<f32>::try_from(b.flatten(0, -1)).unwrap();
            assert!(kept.iter().all(|v| *v == 0.0 || orig.contains(v)));
        }
        // Over many draws every offset appears, including the identity.
        let mut seen = std::collections::BTreeSet::new();
        let mut rng = Rng::new(5);
        for _ in 0..60 {
            let o = aug.apply(&x, &[1, 3, 3], &mut rng);
            seen.insert(f64::try_from(o.get(0).sum(Kind::Double)).unwrap() as i64);
        }
        assert!(seen.contains(&45) && seen.len() >= 5, "{seen:?}");
        // A flip twice is the identity; the no-op config returns the batch unchanged.
        let flip = Augment { shift: 0, hflip: true };
        let once = flip.apply(&x, &[1, 3, 3], &mut Rng::new(1));
        let twice = flip.apply(&once, &[1, 3, 3], &mut Rng::new(1));
        assert!(bool::try_from(twice.eq_tensor(&x).all()).unwrap());
        assert!(bool::try_from(Augment::default().apply(&x, &[1, 3, 3], &mut Rng::new(0)).eq_tensor(&x).all()).unwrap());
    }

    #[test]
    fn the_shift_is_each_sample_s_own_crop_of_the_padded_image_with_its_gradient() {
        // Two channels, a non-square image and shift 2, so a channel or row/column mix-up shows.
        let (n, c, h, w, s) = (7i64, 2i64, 3i64, 4i64, 2i64);
        let x = (Tensor::arange(n * c * h * w, (Kind::Double, Device::Cpu)) + 1.0).view([n, c * h * w]).set_requires_grad(true);
        let out = Augment { shift: s, hflip: false }.apply(&x, &[c, h, w], &mut Rng::new(11));
        // The reference: the same draws, one crop per sample.
        let mut rng = Rng::new(11);
        let padded = x.view([n, c, h, w]).constant_pad_nd([s, s, s, s].as_slice());
        let want: Vec<Tensor> = (0..n)
            .map(|i| {
                let (dy, dx) = (rng.below(2 * s as u64 + 1) as i64, rng.below(2 * s as u64 + 1) as i64);
                padded.get(i).narrow(1, dy, h).narrow(2, dx, w).flatten(0, -1)
            })
            .collect();
        let want = Tensor::stack(&want, 0);
        assert!(bool::try_from(out.eq_tensor(&want).all()).unwrap(), "{out} vs {want}");
        let weights = Tensor::arange(n * c * h * w, (Kind::Double, Device::Cpu)).view([n, c * h * w]).sin();
        let g = Tensor::run_backward(&[(&out * &weights).sum(Kind::Double)], &[&x], true, false).remove(0);
        let g_want = Tensor::run_backward(&[(&want * &weights).sum(Kind::Double)], &[&x], true, false).remove(0);
        assert!(bool::try_from(g.eq_tensor(&g_want).all()).unwrap());
    }

    #[test]
    fn bags_hold_label_proportions() {
        let d = DataConfig { bag_size: 8, ..Default::default() }.prepare(raw(false), 0, Device::Cpu).unwrap();
        let bags = d.bags.unwrap();
        assert_eq!(bags.members.size(), vec![30, 8]);
        let sums = Vec::<f32>::try_from(bags.proportions.sum_dim_intlist([1].as_slice(), false, Kind::Float)).unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-6));
        // Proportions agree with the members' labels.
        let first = Vec::<i64>::try_from(bags.members.get(0)).unwrap();
        let labels = labels_vec(&d.train.y);
        let share0 = first.iter().filter(|&&i| labels[i as usize] == 0).count() as f32 / 8.0;
        assert!((bags.proportions.double_value(&[0, 0]) as f32 - share0).abs() < 1e-6);
        // Batches cover the split once.
        let mut rng = Rng::new(0);
        let batches = d.train.batches(64, &mut rng);
        let mut all: Vec<i64> = batches.iter().flat_map(|b| Vec::<i64>::try_from(b).unwrap()).collect();
        all.sort();
        assert_eq!(all, (0..d.train.len()).collect::<Vec<_>>());
    }
}
