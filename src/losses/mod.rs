//! Shared losses and classification metrics.

pub mod classify;
pub mod metrics;
pub mod spherical;
pub mod stablemax;
