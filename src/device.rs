//! Device selection: `auto` picks CUDA when libtorch sees a GPU, else CPU. Asking for `cuda`
//! where there is none is an error before any run starts — never a silent CPU run.

use anyhow::{bail, Result};
use tch::{Cuda, Device};

pub const VALID: &str = "auto, cpu, cuda, cuda:N";

/// Resolves a device name; `origin` says where it came from (`--device`, a spec's `device`).
pub fn resolve(raw: &str, origin: &str) -> Result<Device> {
    let raw = raw.trim();
    match raw {
        "auto" => Ok(if Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0, raw, origin),
        _ => match raw.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i, raw, origin),
            _ => bail!("{origin}: unknown device `{raw}`; valid devices: {VALID}"),
        },
    }
}

fn cuda(index: usize, raw: &str, origin: &str) -> Result<Device> {
    if !Cuda::is_available() {
        bail!(
            "{origin}: device `{raw}` was requested but no CUDA device is available to libtorch \
             (tch::Cuda::is_available() is false: no GPU, no driver, or a CPU-only libtorch). \
             Use `--device cpu` or `--device auto`."
        );
    }
    let count = Cuda::device_count() as usize;
    if index >= count {
        bail!("{origin}: device `{raw}` does not exist; this machine has {count} CUDA device(s): cuda:0..cuda:{}", count - 1);
    }
    Ok(Device::Cuda(index))
}

/// The name a child process is given for a resolved device.
pub fn name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_auto_resolve_and_unknown_lists_valid() {
        assert_eq!(resolve("cpu", "t").unwrap(), Device::Cpu);
        if !Cuda::is_available() {
            assert_eq!(resolve("auto", "t").unwrap(), Device::Cpu);
            let msg = resolve("cuda", "--device").unwrap_err().to_string();
            assert!(msg.contains("no CUDA device") && msg.contains("--device cpu"), "{msg}");
            assert!(resolve("cuda:1", "--device").is_err());
        }
        let msg = resolve("tpu", "spec.yaml: `device`").unwrap_err().to_string();
        assert!(msg.contains("unknown device `tpu`") && msg.contains(VALID), "{msg}");
    }
}
