//! CIFAR-10's binary batches: records of 1 label byte followed by 3072 pixel bytes
//! (1024 red, 1024 green, 1024 blue, each 32×32 row-major).

use std::path::Path;

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

pub const RECORD: usize = 1 + 3 * 32 * 32;

/// Reads one batch file: images as u8 [N, 3, 32, 32] and labels as i64 [N].
pub fn read_cifar_batch(path: &Path) -> Result<(Tensor, Tensor)> {
    let bytes = super::read_maybe_gz(path)?;
    parse_cifar_batch(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub fn parse_cifar_batch(bytes: &[u8]) -> Result<(Tensor, Tensor)> {
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        bail!("{} bytes is not a whole number of CIFAR-10 records ({RECORD} bytes each)", bytes.len());
    }
    let n = bytes.len() / RECORD;
    let mut labels = Vec::with_capacity(n);
    let mut pixels = Vec::with_capacity(n * (RECORD - 1));
    for rec in bytes.chunks_exact(RECORD) {
        if rec[0] > 9 {
            bail!("label byte {} is not a CIFAR-10 class (0..9)", rec[0]);
        }
        labels.push(rec[0] as i64);
        pixels.extend_from_slice(&rec[1..]);
    }
    let images = Tensor::from_slice(&pixels).view([n as i64, 3, 32, 32]).to_kind(Kind::Uint8);
    Ok((images, Tensor::from_slice(&labels)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_to_channel_first_images() {
        let mut bytes = vec![];
        for (label, base) in [(3u8, 10u8), (7, 200)] {
            bytes.push(label);
            for c in 0..3u8 {
                for p in 0..1024usize {
                    bytes.push(base.wrapping_add(c * 20).wrapping_add((p % 5) as u8));
                }
            }
        }
        let (x, y) = parse_cifar_batch(&bytes).unwrap();
        assert_eq!(x.size(), vec![2, 3, 32, 32]);
        assert_eq!(Vec::<i64>::try_from(&y).unwrap(), vec![3, 7]);
        // Image 1, green channel, row 0, column 2: base 200 + 20 + (2 % 5).
        assert_eq!(x.int64_value(&[1, 1, 0, 2]), 222);
        assert_eq!(x.int64_value(&[0, 2, 1, 0]), 10 + 40 + (32 % 5));
        assert!(parse_cifar_batch(&bytes[..100]).is_err());
    }
}
