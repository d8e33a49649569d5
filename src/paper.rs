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
use crate::train::supervised::TrainConfig;

/// What a paper module provides.
pub trait Paper {
    const KEY: &'static str;
    const TITLE: &'static str;
    const ARXIV: &'static str;
    type Config: Serialize + DeserializeOwned + Default + Blocks;

    /// The paper's own checks, beyond types (ranges, combinations); the message names the key.
    /// The shared blocks ([`Blocks`]) are checked before this, so it need not repeat them.
    fn check(_config: &Self::Config) -> Result<()> {
        Ok(())
    }

    /// Runs one (variant, sweep point, seed). Logs metrics through `ctx`; the last value of each
    /// logged metric, plus anything given to `ctx.set_final`, is the run's summary.
    fn run(config: &Self::Config, ctx: &mut RunCtx) -> Result<()>;
}

/// The shared blocks a Config holds. The runner checks them before the paper's own [`Paper::check`]
/// and fetches the data block before any run, so no paper repeats either. A Config that reads the
/// `data` block only for some tasks returns it only for those. One without shared blocks writes
/// `impl Blocks for Config {}`; a classifier paper gets all of it from [`classifier_config!`].
pub trait Blocks {
    /// The `data` block this config reads, if any.
    fn data_block(&self) -> Option<&DataConfig> {
        None
    }

    /// The `train` block (epochs, batches, optimiser) this config trains with, if any.
    fn train_block(&self) -> Option<&TrainConfig> {
        None
    }

    /// Checks every block present; the message names the block's keys.
    fn check_blocks(&self) -> Result<()> {
        if let Some(data) = self.data_block() {
            data.check()?;
        }
        if let Some(train) = self.train_block() {
            train.check()?;
        }
        Ok(())
    }
}

/// Checks that each (key, value) is a finite number ≥ 0; the error names the key and the value.
pub fn require_non_negative(values: &[(&str, f64)]) -> Result<()> {
    for (key, v) in values {
        if !(*v >= 0.0 && v.is_finite()) {
            anyhow::bail!("`{key}` must be a finite non-negative number, got {v}");
        }
    }
    Ok(())
}

/// Checks that each (key, value) is a finite number > 0 (learning rates, step sizes).
pub fn require_positive(values: &[(&str, f64)]) -> Result<()> {
    for (key, v) in values {
        if !(*v > 0.0 && v.is_finite()) {
            anyhow::bail!("`{key}` must be a finite positive number, got {v}");
        }
    }
    Ok(())
}

/// Declares a classifier paper's `Config`: the shared `data`, `model` and `train` blocks first, then
/// the paper's own keys (doc comments and attributes kept), with serde's `deny_unknown_fields` and
/// defaults from the `Default` the paper writes, and its [`Blocks`]. A macro rather than a flattened
/// struct because serde's `flatten` cannot be combined with `deny_unknown_fields`, and a misspelt
/// key must stay an error that names it.
macro_rules! classifier_config {
    ($(#[$meta:meta])* pub struct Config { $($(#[$field_meta:meta])* pub $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct Config {
            pub data: $crate::data::DataConfig,
            pub model: $crate::models::ModelConfig,
            pub train: $crate::train::supervised::TrainConfig,
            $($(#[$field_meta])* pub $field: $ty,)*
        }

        impl $crate::paper::Blocks for Config {
            fn data_block(&self) -> Option<&$crate::data::DataConfig> {
                Some(&self.data)
            }

            fn train_block(&self) -> Option<&$crate::train::supervised::TrainConfig> {
                Some(&self.train)
            }
        }
    };
}
pub(crate) use classifier_config;

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
    config.check_blocks().and_then(|()| P::check(&config)).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    Ok(params::to_value(&config))
}

fn run_with<P: Paper>(value: &Value, ctx: &mut RunCtx) -> Result<()> {
    let config: P::Config = params::typed(value, "config")?;
    P::run(&config, ctx)
}

fn data_of<P: Paper>(value: &Value) -> Result<Option<DataConfig>> {
    let config: P::Config = params::typed(value, "config")?;
    Ok(config.data_block().cloned())
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

#[cfg(test)]
mod tests {
    use anyhow::{bail, Result};
    use serde::{Deserialize, Serialize};
    use serde_yaml::Value;

    use super::*;

    #[test]
    fn range_checks_name_the_key_and_the_value() {
        assert!(require_non_negative(&[("a", 0.0), ("b", 2.5)]).is_ok());
        let e = require_non_negative(&[("a", 1.0), ("decay", -0.1)]).unwrap_err().to_string();
        assert!(e.contains("`decay`") && e.contains("-0.1"), "{e}");
        assert!(require_non_negative(&[("x", f64::NAN)]).is_err());
        assert!(require_positive(&[("lr", 0.0)]).unwrap_err().to_string().contains("`lr`"));
        assert!(require_positive(&[("lr", f64::INFINITY)]).is_err());
        assert!(require_positive(&[("lr", 1e-3)]).is_ok());
    }
    use crate::data::DataConfig;
    use crate::train::supervised::TrainConfig;

    // Two stand-in papers, so these tests exercise the mechanism and know of no real paper.
    mod classifier {
        super::classifier_config! {
            pub struct Config {
                /// A key of the paper's own.
                pub alpha: f64,
            }
        }
    }

    impl Default for classifier::Config {
        fn default() -> Self {
            classifier::Config { data: DataConfig::default(), model: Default::default(), train: TrainConfig::default(), alpha: 0.5 }
        }
    }

    struct Classifier;
    impl Paper for Classifier {
        const KEY: &'static str = "test_classifier";
        const TITLE: &'static str = "";
        const ARXIV: &'static str = "";
        type Config = classifier::Config;
        fn check(c: &classifier::Config) -> Result<()> {
            if !(0.0..=1.0).contains(&c.alpha) {
                bail!("`alpha` must be in [0, 1]");
            }
            Ok(())
        }
        fn run(_: &classifier::Config, _: &mut RunCtx) -> Result<()> {
            Ok(())
        }
    }

    /// Reads `data` only when `use_data` is set, and always trains.
    #[derive(Debug, Clone, Serialize, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct TaskConfig {
        use_data: bool,
        data: DataConfig,
        train: TrainConfig,
    }

    impl Blocks for TaskConfig {
        fn data_block(&self) -> Option<&DataConfig> {
            self.use_data.then_some(&self.data)
        }
        fn train_block(&self) -> Option<&TrainConfig> {
            Some(&self.train)
        }
    }

    struct TaskPaper;
    impl Paper for TaskPaper {
        const KEY: &'static str = "test_task";
        const TITLE: &'static str = "";
        const ARXIV: &'static str = "";
        type Config = TaskConfig;
        fn run(_: &TaskConfig, _: &mut RunCtx) -> Result<()> {
            Ok(())
        }
    }

    /// The entry's defaults with one key path set, through the runner's `resolve`.
    fn resolve(entry: Entry, path: &[&str], value: Value) -> Result<Value> {
        let mut config = (entry.defaults)();
        let mut at = &mut config;
        for p in &path[..path.len() - 1] {
            at = at.get_mut(*p).unwrap();
        }
        at[path[path.len() - 1]] = value;
        (entry.resolve)(&config, "spec.yaml")
    }

    #[test]
    fn the_runner_checks_the_shared_blocks_before_the_papers_own_check() {
        let c = entry::<Classifier>();
        assert!(resolve(c, &["alpha"], Value::from(0.2)).is_ok());
        let err = resolve(c, &["data", "test_fraction"], Value::from(1.5)).unwrap_err().to_string();
        assert!(err.contains("spec.yaml") && err.contains("data.test_fraction"), "{err}");
        let err = resolve(c, &["train", "epochs"], Value::from(0)).unwrap_err().to_string();
        assert!(err.contains("train.epochs"), "{err}");
        let err = resolve(c, &["alpha"], Value::from(2.0)).unwrap_err().to_string();
        assert!(err.contains("alpha"), "the paper's own check still runs: {err}");
        assert_eq!((c.data)(&(c.defaults)()).unwrap().unwrap().name, DataConfig::default().name);
    }

    #[test]
    fn a_data_block_read_only_for_some_tasks_is_checked_and_fetched_only_then() {
        let t = entry::<TaskPaper>();
        let mut config = (t.defaults)();
        config["data"]["name"] = Value::from("imagenet");
        assert!((t.resolve)(&config, "spec.yaml").is_ok());
        assert!((t.data)(&config).unwrap().is_none());
        config["use_data"] = Value::from(true);
        assert!((t.resolve)(&config, "spec.yaml").unwrap_err().to_string().contains("data.name"));
        config["data"]["name"] = Value::from("digits");
        assert_eq!((t.data)(&config).unwrap().unwrap().name, "digits");
        config["use_data"] = Value::from(false);
        config["train"]["eval_every"] = Value::from(0);
        assert!((t.resolve)(&config, "spec.yaml").unwrap_err().to_string().contains("train.eval_every"));
    }

    #[test]
    fn classifier_configs_keep_unknown_keys_an_error() {
        let c = entry::<Classifier>();
        let err = resolve(c, &["alpah"], Value::from(0.5)).unwrap_err().to_string();
        assert!(err.contains("alpah"), "{err}");
        let err = resolve(c, &["train", "epoch"], Value::from(3)).unwrap_err().to_string();
        assert!(err.contains("epoch"), "{err}");
    }
}
