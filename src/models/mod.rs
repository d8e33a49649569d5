//! Models shared by the papers, as plain structs built from an `nn::Path`.

pub mod mlp;

pub use mlp::Mlp;
