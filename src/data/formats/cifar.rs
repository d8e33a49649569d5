//! CIFAR's binary batches: CIFAR-10 records are 1 label byte then 3072 pixel bytes (1024 red,
//! 1024 green, 1024 blue, each 32×32 row-major); CIFAR-100 records have two label bytes (coarse,
//! then fine) before the same pixels.

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
    parse_records(bytes, 1, 0, 10)
}

/// CIFAR-100 records: the fine label (100 classes).
pub fn parse_cifar100(bytes: &[u8]) -> Result<(Tensor, Tensor)> {
    parse_records(bytes, 2, 1, 100)
}

/// Records of `label_bytes` label bytes then 3072 pixels; the label used is byte `which`.
fn parse_records(bytes: &[u8], label_bytes: usize, which: usize, classes: u8) -> Result<(Tensor, Tensor)> {
    let record = label_bytes + RECORD - 1;
    if bytes.is_empty() || bytes.len() % record != 0 {
        bail!("{} bytes is not a whole number of CIFAR records ({record} bytes each)", bytes.len());
    }
    let n = bytes.len() / record;
    let mut labels = Vec::with_capacity(n);
    let mut pixels = Vec::with_capacity(n * (RECORD - 1));
    for rec in bytes.chunks_exact(record) {
        if rec[which] >= classes {
            bail!("label byte {} is not a class (0..{})", rec[which], classes - 1);
        }
        labels.push(rec[which] as i64);
        pixels.extend_from_slice(&rec[label_bytes..]);
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
        // CIFAR-100: coarse byte, fine byte, pixels; the fine label is used.
        let mut rec100 = vec![4u8, 73];
        rec100.extend(std::iter::repeat(9u8).take(3072));
        let (x, y) = parse_cifar100(&rec100).unwrap();
        assert_eq!((x.size(), Vec::<i64>::try_from(&y).unwrap()), (vec![1, 3, 32, 32], vec![73]));
    }
}
