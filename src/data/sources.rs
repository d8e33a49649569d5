//! Loading a named dataset from the data directory into tensors, once, on the CPU; the data
//! block then splits, transforms and moves it to the run's device.

use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tch::{Kind, Tensor};

use super::catalog::{self, DatasetInfo};
use super::formats::{cifar, csv_table, idx, movielens};
use super::store;

/// A labelled dataset as loaded: features f32 `[N, ...]` (images `[N, C, H, W]`), labels i64.
#[derive(Debug)]
pub struct Raw {
    pub train_x: Tensor,
    pub train_y: Tensor,
    /// The dataset's own test split, if it has one.
    pub test: Option<(Tensor, Tensor)>,
    pub classes: i64,
    /// The largest raw feature value (255 for image bytes, 16 for digits), for `normalize: unit`.
    pub max_value: f64,
}

fn present(dir: &Path, info: &DatasetInfo) -> Result<&'static [catalog::DataFile]> {
    store::present_set(dir, info).ok_or_else(|| anyhow!(store::missing_message(dir, info)))
}

/// Loads `name` (`digits`, `fashion_mnist`, `mnist`, `cifar10`) from `dir`.
pub fn load_named(name: &str, dir: &Path) -> Result<Raw> {
    let info = catalog::find(name)?;
    present(dir, info)?;
    let base = dir.join(info.name);
    match name {
        "digits" => {
            let t = csv_table::read_table(&base.join("digits.csv.gz"), "-1", &[])?;
            let n = t.labels.size()[0];
            Ok(Raw { train_x: t.features.view([n, 1, 8, 8]), train_y: t.labels, test: None, classes: 10, max_value: 16.0 })
        }
        "fashion_mnist" | "mnist" => {
            let images = |f: &str| -> Result<Tensor> { Ok(idx::read_idx_u8(&base.join(f))?.unsqueeze(1).to_kind(Kind::Float)) };
            let labels = |f: &str| -> Result<Tensor> { Ok(idx::read_idx_u8(&base.join(f))?.to_kind(Kind::Int64)) };
            Ok(Raw {
                train_x: images("train-images-idx3-ubyte.gz")?,
                train_y: labels("train-labels-idx1-ubyte.gz")?,
                test: Some((images("t10k-images-idx3-ubyte.gz")?, labels("t10k-labels-idx1-ubyte.gz")?)),
                classes: 10,
                max_value: 255.0,
            })
        }
        "cifar10" => load_cifar_archive(&base.join("cifar-10-binary.tar.gz")),
        "movielens_100k" => bail!("`movielens_100k` holds ratings, not labelled samples; papers read it with data::load_ratings"),
        other => bail!("no loader for dataset `{other}`"),
    }
}

/// Reads the six batch files straight out of `cifar-10-binary.tar.gz`.
pub fn load_cifar_archive(path: &Path) -> Result<Raw> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut train: Vec<Option<(Tensor, Tensor)>> = (0..5).map(|_| None).collect();
    let mut test = None;
    for entry in archive.entries().with_context(|| format!("{} is not a tar.gz archive", path.display()))? {
        let mut entry = entry?;
        let name = entry.path()?.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let slot = match name.as_str() {
            "test_batch.bin" => None,
            n if n.starts_with("data_batch_") && n.ends_with(".bin") => {
                Some(n["data_batch_".len()..n.len() - 4].parse::<usize>().ok().filter(|k| (1..=5).contains(k)).ok_or_else(|| anyhow!("unexpected member {n}"))?)
            }
            _ => continue,
        };
        let mut bytes = vec![];
        entry.read_to_end(&mut bytes)?;
        let batch = cifar::parse_cifar_batch(&bytes).map_err(|e| anyhow!("{}: {name}: {e}", path.display()))?;
        match slot {
            Some(k) => train[k - 1] = Some(batch),
            None => test = Some(batch),
        }
    }
    let train: Vec<(Tensor, Tensor)> = train.into_iter().enumerate().map(|(k, b)| b.ok_or_else(|| anyhow!("{}: data_batch_{} missing", path.display(), k + 1))).collect::<Result<_>>()?;
    let (test_x, test_y) = test.ok_or_else(|| anyhow!("{}: test_batch.bin missing", path.display()))?;
    let xs: Vec<&Tensor> = train.iter().map(|(x, _)| x).collect();
    let ys: Vec<&Tensor> = train.iter().map(|(_, y)| y).collect();
    Ok(Raw {
        train_x: Tensor::cat(&xs, 0).to_kind(Kind::Float),
        train_y: Tensor::cat(&ys, 0),
        test: Some((test_x.to_kind(Kind::Float), test_y)),
        classes: 10,
        max_value: 255.0,
    })
}

/// MovieLens-100k ratings from `ml-100k.zip` (its `u.data`) or RecBole's `ml-100k.inter`.
pub fn load_ratings(dir: &Path) -> Result<movielens::Ratings> {
    let info = &catalog::MOVIELENS_100K;
    let set = present(dir, info)?;
    let path = dir.join(info.name).join(set[0].name);
    if set[0].name.ends_with(".zip") {
        let file = std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut zip = zip::ZipArchive::new(file).with_context(|| format!("{} is not a zip archive", path.display()))?;
        let mut member = zip.by_name("ml-100k/u.data").with_context(|| format!("{} has no ml-100k/u.data", path.display()))?;
        let mut text = String::new();
        member.read_to_string(&mut text)?;
        movielens::parse_ratings(&text).map_err(|e| anyhow!("{}: u.data: {e}", path.display()))
    } else {
        movielens::read_ratings(&path)
    }
}

/// A user's CSV table: features f32 `[N, D]`, integer (or mapped string) labels.
pub fn load_csv(path: &Path, label: &str, features: &[String]) -> Result<Raw> {
    let t = csv_table::read_table(path, label, features)?;
    let min = i64::try_from(t.labels.min())?;
    if min < 0 {
        bail!("{}: labels must be non-negative class ids (found {min})", path.display());
    }
    let classes = i64::try_from(t.labels.max())? + 1;
    let max_value = f64::try_from(t.features.abs().max())?.max(f64::MIN_POSITIVE);
    Ok(Raw { train_x: t.features, train_y: t.labels, test: None, classes, max_value })
}
