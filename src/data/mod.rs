//! The data layer: dataset files (catalog, store, formats), loading, and the shared `data:`
//! block papers put in their Config. Data is loaded once as tensors and batched by index.

pub mod block;
pub mod catalog;
pub mod formats;
pub mod implicit;
pub mod modular;
pub mod npz;
pub mod sem;
pub mod sources;
pub mod store;

pub use block::{Data, DataConfig, Split};
pub use sources::load_ratings;
