//! Robustness building blocks shared by the papers: adversarial attacks (PGD).

pub mod pgd;
