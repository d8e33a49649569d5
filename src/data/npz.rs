//! Reading named arrays from a NumPy `.npz` file (as written by `numpy.savez`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use tch::{Device, Kind, Tensor};

/// Reads the arrays `names` from `path` as float64 tensors on `device`. The error for a missing
/// array names the file, the missing array and the arrays the file does hold.
pub fn read_f64_arrays(path: &Path, names: &[&str], device: Device) -> Result<BTreeMap<String, Tensor>> {
    if !path.exists() {
        return Err(anyhow!("npz file `{}` does not exist", path.display()));
    }
    let arrays = Tensor::read_npz(path).with_context(|| format!("cannot read `{}` as a NumPy .npz file", path.display()))?;
    let mut out = BTreeMap::new();
    for name in names {
        let tensor = arrays
            .iter()
            .find(|(n, _)| n == name || n.trim_end_matches(".npy") == *name)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                let held: Vec<&str> = arrays.iter().map(|(n, _)| n.as_str()).collect();
                anyhow!("`{}` has no array `{name}`; it holds: {}; expected: {}", path.display(), held.join(", "), names.join(", "))
            })?;
        out.insert(name.to_string(), tensor.to_kind(Kind::Double).to_device(device));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_array_message() {
        let dir = std::env::temp_dir().join(format!("reglab-npz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.npz");
        let a = Tensor::from_slice(&[0.25f64, 0.75]);
        Tensor::write_npz(&[("a", &a)], &p).unwrap();
        let got = read_f64_arrays(&p, &["a"], Device::Cpu).unwrap();
        assert_eq!(Vec::<f64>::try_from(&got["a"]).unwrap(), vec![0.25, 0.75]);
        let msg = read_f64_arrays(&p, &["a", "C"], Device::Cpu).unwrap_err().to_string();
        assert!(msg.contains("no array `C`") && msg.contains("holds: a"), "{msg}");
        assert!(read_f64_arrays(&dir.join("none.npz"), &["a"], Device::Cpu).unwrap_err().to_string().contains("does not exist"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
