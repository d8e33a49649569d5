//! The IDX format of MNIST and Fashion-MNIST (gzipped or raw): a big-endian magic
//! `0x0000 TT DD` (TT = 0x08 for unsigned bytes, DD = number of dimensions), DD big-endian u32
//! sizes, then the data.

use std::path::Path;

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::read_maybe_gz;

/// Reads an unsigned-byte IDX file as a u8 tensor of its declared shape.
pub fn read_idx_u8(path: &Path) -> Result<Tensor> {
    let bytes = read_maybe_gz(path)?;
    parse_idx_u8(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub fn parse_idx_u8(bytes: &[u8]) -> Result<Tensor> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        bail!("not an IDX file (bad magic)");
    }
    if bytes[2] != 0x08 {
        bail!("IDX element type 0x{:02x} is not unsigned byte (0x08)", bytes[2]);
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if ndim == 0 || bytes.len() < header {
        bail!("IDX header truncated");
    }
    let dims: Vec<i64> = (0..ndim)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as i64)
        .collect();
    let count: i64 = dims.iter().product();
    if (bytes.len() - header) as i64 != count {
        bail!("IDX data has {} bytes but the header declares {dims:?} = {count}", bytes.len() - header);
    }
    Ok(Tensor::from_slice(&bytes[header..]).view(dims.as_slice()).to_kind(Kind::Uint8))
}

/// Writes a u8 IDX file (for test fixtures and conversions).
pub fn encode_idx_u8(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn raw_and_gzipped_idx_parse_to_the_same_values() {
        let dir = std::env::temp_dir().join(format!("reglab-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data: Vec<u8> = (0..2 * 3 * 4).map(|i| (i * 7 % 256) as u8).collect();
        let bytes = encode_idx_u8(&[2, 3, 4], &data);
        std::fs::write(dir.join("x-idx3-ubyte"), &bytes).unwrap();
        let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::default());
        gz.write_all(&bytes).unwrap();
        std::fs::write(dir.join("x-idx3-ubyte.gz"), gz.finish().unwrap()).unwrap();
        for name in ["x-idx3-ubyte", "x-idx3-ubyte.gz"] {
            let t = read_idx_u8(&dir.join(name)).unwrap();
            assert_eq!(t.size(), vec![2, 3, 4]);
            assert_eq!(Vec::<u8>::try_from(t.flatten(0, -1)).unwrap(), data);
        }
        let labels = parse_idx_u8(&encode_idx_u8(&[3], &[9, 0, 4])).unwrap();
        assert_eq!(Vec::<u8>::try_from(labels).unwrap(), vec![9, 0, 4]);
        assert!(parse_idx_u8(&bytes[..bytes.len() - 1]).unwrap_err().to_string().contains("declares"));
        assert!(parse_idx_u8(&[1, 2, 3, 4]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
