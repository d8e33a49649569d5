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
        "cifar100" => load_cifar100_archive(&base.join("cifar-100-binary.tar.gz")),
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

/// Reads `train.bin` and `test.bin` (fine labels) out of `cifar-100-binary.tar.gz`.
pub fn load_cifar100_archive(path: &Path) -> Result<Raw> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let (mut train, mut test) = (None, None);
    for entry in archive.entries().with_context(|| format!("{} is not a tar.gz archive", path.display()))? {
        let mut entry = entry?;
        let name = entry.path()?.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let slot = match name.as_str() {
            "train.bin" => &mut train,
            "test.bin" => &mut test,
            _ => continue,
        };
        let mut bytes = vec![];
        entry.read_to_end(&mut bytes)?;
        *slot = Some(cifar::parse_cifar100(&bytes).map_err(|e| anyhow!("{}: {name}: {e}", path.display()))?);
    }
    let (train_x, train_y) = train.ok_or_else(|| anyhow!("{}: train.bin missing", path.display()))?;
    let (test_x, test_y) = test.ok_or_else(|| anyhow!("{}: test.bin missing", path.display()))?;
    Ok(Raw { train_x: train_x.to_kind(Kind::Float), train_y, test: Some((test_x.to_kind(Kind::Float), test_y)), classes: 100, max_value: 255.0 })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("reglab-src-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn cifar_batches_are_read_out_of_the_tar_gz() {
        let dir = temp("cifar");
        let path = dir.join("cifar-10-binary.tar.gz");
        let gz = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let record = |label: u8, fill: u8| -> Vec<u8> { std::iter::once(label).chain(std::iter::repeat(fill).take(cifar::RECORD - 1)).collect() };
        let mut add = |name: &str, bytes: Vec<u8>| {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, format!("cifar-10-batches-bin/{name}"), &bytes[..]).unwrap();
        };
        for k in 1..=5u8 {
            add(&format!("data_batch_{k}.bin"), [record(k, k * 10), record(0, 1)].concat());
        }
        add("test_batch.bin", record(9, 99));
        add("batches.meta.txt", b"airplane\n".to_vec());
        tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
        let raw = load_cifar_archive(&path).unwrap();
        assert_eq!(raw.train_x.size(), vec![10, 3, 32, 32]);
        assert_eq!(Vec::<i64>::try_from(&raw.train_y).unwrap(), vec![1, 0, 2, 0, 3, 0, 4, 0, 5, 0]);
        assert_eq!(raw.train_x.double_value(&[4, 2, 31, 31]), 30.0);
        let (tx, ty) = raw.test.unwrap();
        assert_eq!((tx.size()[0], Vec::<i64>::try_from(&ty).unwrap()), (1, vec![9]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn movielens_ratings_from_the_zip_or_the_recbole_file() {
        let dir = temp("ml");
        let ml = dir.join("movielens_100k");
        std::fs::create_dir_all(&ml).unwrap();
        let mut zip = zip::ZipWriter::new(std::fs::File::create(ml.join("ml-100k.zip")).unwrap());
        zip.start_file("ml-100k/u.data", zip::write::FileOptions::default()).unwrap();
        zip.write_all(b"1\t10\t4\t100\n3\t2\t5\t200\n").unwrap();
        zip.finish().unwrap();
        let r = load_ratings(&dir).unwrap();
        assert_eq!(Vec::<i64>::try_from(&r.users).unwrap(), vec![0, 2]);
        assert_eq!((r.n_users, r.n_items), (3, 10));
        std::fs::remove_file(ml.join("ml-100k.zip")).unwrap();
        assert!(load_ratings(&dir).unwrap_err().to_string().contains("reglab data fetch movielens_100k"));
        std::fs::write(ml.join("ml-100k.inter"), "user_id:token\titem_id:token\trating:float\ttimestamp:float\n5\t6\t1\t7\n").unwrap();
        assert_eq!(Vec::<f32>::try_from(&load_ratings(&dir).unwrap().ratings).unwrap(), vec![1.0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
