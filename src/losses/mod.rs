//! Shared losses and metrics: classification, metric learning and retrieval, invariance penalties.

pub mod classify;
pub mod invariance;
pub mod metric_learning;
pub mod metrics;
pub mod ranking;
pub mod retrieval;
pub mod spherical;
pub mod stablemax;
