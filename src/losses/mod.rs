//! Shared losses and metrics: classification, metric learning and retrieval, invariance penalties,
//! distances between sample sets.

pub mod classify;
pub mod distribution;
pub mod invariance;
pub mod metric_learning;
pub mod metrics;
pub mod ranking;
pub mod retrieval;
pub mod spherical;
pub mod stablemax;
