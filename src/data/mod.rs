//! Datasets: generated on the run's device as tensors, batched by index.

pub mod modular;
pub mod npz;
