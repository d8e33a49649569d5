//! Readers for the on-disk formats of the datasets, written here (no loader downloads anything).

pub mod cifar;
pub mod csv_table;
pub mod idx;
pub mod movielens;

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};

/// Reads a whole file, gunzipping it when it starts with the gzip magic bytes.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = vec![];
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{} looks gzipped but does not decompress (corrupt or truncated?)", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}
