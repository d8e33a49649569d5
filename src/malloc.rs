//! glibc malloc settings for libtorch's buffers, set once when the process starts.
//!
//! libtorch's CPU allocator takes every tensor from `malloc`. By default glibc serves blocks above
//! a moving threshold (128 KiB at first, at most 32 MiB) with a fresh `mmap` and returns them with
//! `munmap`, and trims the heap's top whenever 128 KiB are free there. A training step frees and
//! takes again the same multi-megabyte activations and gradients each time, and an evaluation in
//! chunks of 2048 images the same hundreds of megabytes per layer, so each pays page faults and the
//! kernel's zeroing of those pages every time. Serving blocks up to 1 GiB from the heap and not
//! trimming it keeps those pages mapped from step to step and from layer to layer. (This holds for
//! glibc's main arena, the thread a run executes on; a thread of its own still maps blocks larger
//! than its arena's 64 MiB heaps.)
//! Measured on this repository's 2-core machine:
//! - the CNN Adam step of `benches/pieces.rs`: 47–49 → 35.6 ms (threshold 32 MiB);
//! - the ResNet-18 run of `bench/resnet_bench.py` (10 steps of 128 and the evaluation of 1792
//!   images, whose activations are 100–260 MB): 26.8 / 27.5 → 24.8 / 25.9 s at 1 GiB against
//!   32 MiB, run alternately.
//!
//! The cost is that a run's resident memory stays at its peak instead of shrinking, which a
//! training process reaches again every step or evaluation anyway. Numbers do not change: where a
//! tensor lives is not what it holds.

/// Blocks below this come from the heap. glibc 2.36 (Debian 12, this machine) accepts it; a glibc
/// that caps the threshold at half its 64 MiB arena size refuses it, and [`tune`] then sets
/// [`MMAP_THRESHOLD_CAPPED`].
pub const MMAP_THRESHOLD: i32 = 1 << 30;
/// The threshold where glibc's own dynamic one stops on 64-bit (`DEFAULT_MMAP_THRESHOLD_MAX`),
/// which every glibc accepts.
pub const MMAP_THRESHOLD_CAPPED: i32 = 32 << 20;
/// Free memory at the heap's top is returned to the system only beyond this.
pub const TRIM_THRESHOLD: i32 = i32::MAX;

/// Sets both thresholds (glibc only; elsewhere a no-op). Returns the mmap threshold glibc took, or
/// `None` where it took neither value or refused the trim threshold.
pub fn tune() -> Option<i32> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time. It
        // returns 0 for a parameter or value it refuses, and then changes nothing.
        let set = |param: i32, value: i32| unsafe { libc::mallopt(param, value) == 1 };
        let mmap = [MMAP_THRESHOLD, MMAP_THRESHOLD_CAPPED].into_iter().find(|&v| set(libc::M_MMAP_THRESHOLD, v));
        let trim = set(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        mmap.filter(|_| trim)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_a_threshold_that_keeps_large_buffers_on_the_heap_and_the_trim_threshold() {
        // Without this the settings would silently do nothing: mallopt refuses by returning 0.
        let got = super::tune().expect("glibc refused both mmap thresholds or the trim threshold");
        assert!(got == super::MMAP_THRESHOLD || got == super::MMAP_THRESHOLD_CAPPED, "{got}");
    }
}
