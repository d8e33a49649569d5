//! glibc malloc settings for libtorch's buffers, set once when the process starts.
//!
//! libtorch's CPU allocator takes every tensor from `malloc`. By default glibc serves blocks above
//! a moving threshold (128 KiB at first) with a fresh `mmap` and returns them with `munmap`, and
//! trims the heap's top whenever 128 KiB are free there. A training step frees and takes again
//! the same multi-megabyte activations and gradients each time, so each step pays page faults
//! and the kernel's zeroing of those pages. Serving blocks up to 32 MiB (the top of glibc's own
//! dynamic threshold on 64-bit, `DEFAULT_MMAP_THRESHOLD_MAX`) from the heap and not trimming it
//! keeps those pages mapped from step to step.
//! Measured on this repository's 2-core machine: the CNN Adam step of `benches/pieces.rs` 47–49 →
//! 35.6 ms. The cost is that a run's resident memory stays at its peak instead of shrinking, which a
//! training process reaches again every step anyway. Numbers do not change: where a tensor lives
//! is not what it holds.

/// Blocks below this come from the heap: where glibc's dynamic threshold would stop on 64-bit.
pub const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory at the heap's top is returned to the system only beyond this.
pub const TRIM_THRESHOLD: i32 = i32::MAX;

/// Sets both thresholds (glibc only; elsewhere a no-op). Returns whether glibc accepted them.
pub fn tune() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_both_thresholds() {
        // mallopt returns 0 for a parameter or value it refuses, and then changes nothing.
        assert!(super::tune());
    }
}
