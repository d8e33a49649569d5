//! The registry of papers: key → title, arXiv id, Config defaults, run.
//!
//! A paper module implements [`Paper`]: a `Config` with defaults (`serde`, `deny_unknown_fields`)
//! and a `run` that trains/evaluates with a [`RunCtx`]. The runner only sees the type-erased
//! [`Entry`], so adding a paper is one module and one line in [`registry`].

use anyhow::Result;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_yaml::Value;

use crate::context::RunCtx;
use crate::data::DataConfig;
use crate::params;

pub mod aggregate_responses;
pub mod bo_rep;
pub mod comp_sum_losses;
pub mod disc_vs_gen;
pub mod dual_smoothing;
pub mod elr;
pub mod ensloss;
pub mod grokking_lazy_rich;
pub mod lvm_smoothing;
pub mod nested_coteaching;
pub mod optimistic_omd;
pub mod orthogonal_conv;
pub mod rrcm;
pub mod score_estimation;
pub mod self_tuning_networks;
pub mod sgd_stability;
pub mod smoothinv;
pub mod ps_kd;
pub mod sparse_ot;
pub mod stablemax_grokking;
pub mod weight_compander;
pub mod z_loss;

/// What a paper module provides.
pub trait Paper {
    const KEY: &'static str;
    const TITLE: &'static str;
    const ARXIV: &'static str;
    type Config: Serialize + DeserializeOwned + Default;

    /// Checks that go beyond types (ranges, combinations); the message names the key.
    fn check(_config: &Self::Config) -> Result<()> {
        Ok(())
    }

    /// The shared data block this config reads, if any — checked for presence before any run.
    fn data(_config: &Self::Config) -> Option<&DataConfig> {
        None
    }

    /// Runs one (variant, sweep point, seed). Logs metrics through `ctx`; the last value of each
    /// logged metric, plus anything given to `ctx.set_final`, is the run's summary.
    fn run(config: &Self::Config, ctx: &mut RunCtx) -> Result<()>;
}

/// A registered paper, type-erased for the runner.
#[derive(Clone, Copy)]
pub struct Entry {
    pub key: &'static str,
    pub title: &'static str,
    pub arxiv: &'static str,
    /// The Config's defaults as YAML.
    pub defaults: fn() -> Value,
    /// Type-checks a merged config and returns it in canonical form (every key, typed values).
    pub resolve: fn(&Value, &str) -> Result<Value>,
    pub run: fn(&Value, &mut RunCtx) -> Result<()>,
    /// The data block a resolved config reads, if any.
    pub data: fn(&Value) -> Result<Option<DataConfig>>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Entry({})", self.key)
    }
}

fn defaults_of<P: Paper>() -> Value {
    params::to_value(&P::Config::default())
}

fn resolve_with<P: Paper>(value: &Value, origin: &str) -> Result<Value> {
    let config: P::Config = params::typed(value, origin)?;
    P::check(&config).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    Ok(params::to_value(&config))
}

fn run_with<P: Paper>(value: &Value, ctx: &mut RunCtx) -> Result<()> {
    let config: P::Config = params::typed(value, "config")?;
    P::run(&config, ctx)
}

fn data_of<P: Paper>(value: &Value) -> Result<Option<DataConfig>> {
    let config: P::Config = params::typed(value, "config")?;
    Ok(P::data(&config).cloned())
}

/// The registry entry of a paper module.
pub fn entry<P: Paper>() -> Entry {
    Entry {
        key: P::KEY,
        title: P::TITLE,
        arxiv: P::ARXIV,
        defaults: defaults_of::<P>,
        resolve: resolve_with::<P>,
        run: run_with::<P>,
        data: data_of::<P>,
    }
}

/// Every paper, one line each.
pub fn registry() -> Vec<Entry> {
    vec![
        entry::<aggregate_responses::AggregateResponses>(),
        entry::<bo_rep::BoRep>(),
        entry::<comp_sum_losses::CompSumLosses>(),
        entry::<disc_vs_gen::DiscVsGen>(),
        entry::<dual_smoothing::DualSmoothing>(),
        entry::<elr::Elr>(),
        entry::<ensloss::EnsLoss>(),
        entry::<grokking_lazy_rich::GrokkingLazyRich>(),
        entry::<lvm_smoothing::LvmSmoothing>(),
        entry::<nested_coteaching::NestedCoteaching>(),
        entry::<optimistic_omd::OptimisticOmd>(),
        entry::<orthogonal_conv::OrthogonalConv>(),
        entry::<rrcm::Rrcm>(),
        entry::<score_estimation::ScoreEstimation>(),
        entry::<self_tuning_networks::SelfTuningNetworks>(),
        entry::<sgd_stability::SgdStability>(),
        entry::<smoothinv::SmoothInv>(),
        entry::<ps_kd::PsKd>(),
        entry::<sparse_ot::SparseOt>(),
        entry::<stablemax_grokking::StablemaxGrokking>(),
        entry::<weight_compander::WeightCompander>(),
        entry::<z_loss::ZLoss>(),
    ]
}

/// Looks a paper up by key; the error lists the known keys.
pub fn find(key: &str) -> Result<Entry> {
    let all = registry();
    all.iter().find(|e| e.key == key).copied().ok_or_else(|| {
        let known: Vec<&str> = all.iter().map(|e| e.key).collect();
        anyhow::anyhow!("unknown paper `{key}`; known papers: {} (see `reglab list`)", known.join(", "))
    })
}
