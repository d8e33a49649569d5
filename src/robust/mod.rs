//! Robustness building blocks shared by the papers: adversarial attacks (PGD), randomized
//! smoothing (prediction, certification, Clopper–Pearson bounds) and exact spectral tools for
//! small convolutions.

pub mod conv_matrix;
pub mod pgd;
pub mod smoothing;
