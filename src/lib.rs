//! reglab: reproduce the methods of ML papers from YAML experiment specs on libtorch.
//!
//! The runner (`spec` → `runner` → `report`) is shared by every paper; a paper is one module
//! under [`papers`] that uses the shared pieces (`data`, `models`, `train`, `losses`, `ot`, `numerics`, `online`).

pub mod compare;
pub mod context;
pub mod data;
pub mod device;
pub mod fsutil;
pub mod losses;
pub mod malloc;
pub mod models;
pub mod numerics;
pub mod online;
pub mod ot;
pub mod paper;
pub mod papers;
pub mod params;
pub mod plot;
pub mod provenance;
pub mod reduce;
pub mod report;
pub mod robust;
pub mod runner;
pub mod slurm;
pub mod spec;
pub mod stage_cache;
pub mod train;
#[cfg(test)]
pub(crate) mod testutil;
