//! What a paper module is: the [`Paper`] trait, and the type-erased [`Entry`] the runner sees.
//!
//! A paper module implements [`Paper`]: a `Config` with defaults (`serde`, `deny_unknown_fields`)
//! and a `run` that trains/evaluates with a [`RunCtx`]. It lives here, apart from the registry in
//! `papers/`, so that a paper depends on this small file and not on the list of every paper.

use anyhow::Result;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_yaml::Value;

use crate::context::RunCtx;
use crate::data::DataConfig;
use crate::params;

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
