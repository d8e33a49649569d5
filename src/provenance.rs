//! `run.json`: where a result came from — the code (git commit, dirty tree, reglab version),
//! libtorch, the device, threads, host, and when it ran. A result nobody can trace back to its
//! code is not a result.

use std::process::Command;

use serde::Serialize;
use tch::Device;

#[derive(Debug, Serialize)]
pub struct RunInfo {
    pub run_id: String,
    pub paper: String,
    pub variant: String,
    pub seed: u64,
    pub status: String,
    pub git_commit: String,
    pub git_dirty: Option<bool>,
    pub reglab_version: &'static str,
    pub libtorch_version: &'static str,
    pub device: String,
    pub device_name: String,
    pub torch_threads: i32,
    pub host: String,
    pub started: String,
    pub ended: String,
    pub wall_s: f64,
}

/// The git commit the binary was built from and whether the tree had uncommitted changes
/// then (recorded by build.rs; `None` when git could not tell).
pub fn git_state() -> (String, Option<bool>) {
    let dirty = match env!("REGLAB_GIT_DIRTY") {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    };
    (env!("REGLAB_GIT_COMMIT").to_string(), dirty)
}

pub fn libtorch_version() -> &'static str {
    env!("REGLAB_LIBTORCH_VERSION")
}

pub fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// A human name for the device: the GPU model from nvidia-smi, or the CPU model.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => Command::new("nvidia-smi")
            .args(["--query-gpu=name", "--format=csv,noheader", &format!("--id={i}")])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| format!("cuda:{i}")),
        _ => std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| t.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
            .unwrap_or_else(|| "cpu".into()),
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
