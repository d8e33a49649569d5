//! The experiment spec: parsing, validation, and expansion into runs.
//!
//! A spec names a paper, the seeds, shared `params`, the `variants` that are compared, an optional
//! `sweep` grid and the paper's `claims`. Expansion turns it into one [`RunPlan`] per
//! (variant × sweep point × seed), each with its fully resolved, type-checked config.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

use crate::paper::Entry;
use crate::papers;
use crate::params;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Names `results/<name>/`; defaults to the file's stem.
    #[serde(default)]
    pub name: Option<String>,
    /// Registry key of the paper.
    pub paper: String,
    /// One line on what the spec shows.
    #[serde(default)]
    pub description: Option<String>,
    /// `auto | cpu | cuda | cuda:N`; `--device` overrides.
    #[serde(default = "default_device")]
    pub device: String,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// The paper's Config, over its defaults.
    #[serde(default)]
    pub params: Mapping,
    /// What is compared; each overrides `params`. None means one variant named `default`.
    #[serde(default)]
    pub variants: Vec<Variant>,
    /// A grid over dotted params keys; every variant runs at every point.
    #[serde(default)]
    pub sweep: Mapping,
    #[serde(default)]
    pub claims: Vec<Claim>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    #[serde(default)]
    pub params: Mapping,
}

/// A claim checked on every report, on means over seeds. Exactly one form:
/// `higher: A, than: B` / `lower: A, than: B` (with optional `margin`, and optional `factor` f for a
/// relative claim: A > f·B or A < f·B, e.g. `lower: A, than: B, factor: 0.8` for "20 % lower"),
/// `variant: A` with `at_least` and/or `at_most`, or a trend across sweep points:
/// `variant: V, across: KEY, trend: increasing|decreasing|u_shaped|flat|slope` (see [`Trend`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    pub metric: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub higher: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub than: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
    /// `higher`/`lower` only: compare A with `factor`·B instead of B (relative claims).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_most: Option<f64>,
    /// Trend claims: the sweep key (or keys, for `flat`) whose points are compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub across: Option<SweepKeys>,
    /// Trend claims: values that fix the other sweep keys.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub where_: Option<Mapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trend: Option<Trend>,
    /// `slope` only: the log-scaled axes, `[x, y]` by default (a log-log slope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<Vec<String>>,
    /// What the claim stands for, in the paper's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// `check: true` marks a sanity check that holds by construction (a bound the method cannot
    /// cross): reported apart from the paper's claims, never standing in for one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub check: bool,
}

/// One sweep key or several.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum SweepKeys {
    One(String),
    Many(Vec<String>),
}

impl SweepKeys {
    pub fn keys(&self) -> Vec<String> {
        match self {
            SweepKeys::One(k) => vec![k.clone()],
            SweepKeys::Many(ks) => ks.clone(),
        }
    }
}

/// How a metric's means behave across the points of a sweep (x ascending):
/// - `increasing` / `decreasing`: every consecutive step changes by more than `margin` (default 0);
/// - `u_shaped`: the minimum is at an interior point and below both ends by more than `margin`;
/// - `flat`: max/min of the means ≤ `at_most` ("roughly constant"; the means must be positive);
/// - `slope`: the least-squares slope of y on x (log-log unless `log:` says otherwise) lies in
///   [`at_least`, `at_most`] — e.g. ≈ 1 for "grows like n", ≈ 0 for "grows like log n".
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Trend {
    Increasing,
    Decreasing,
    UShaped,
    Flat,
    Slope,
}

/// A group with its variant and sweep point (key, value label), as the report needs them for
/// trend claims.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupPoint {
    pub group: String,
    pub variant: String,
    pub sweep: Vec<(String, String)>,
}

fn default_device() -> String {
    "auto".into()
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// One run: a variant at a sweep point with a seed, and its resolved config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunPlan {
    /// `variant__key=value__s0`: stable, readable, a directory name.
    pub id: String,
    /// The run id without the seed: what the table rows and claims refer to.
    pub group: String,
    pub variant: String,
    /// (dotted key, value label) of the sweep point, in the spec's order.
    pub sweep: Vec<(String, String)>,
    pub seed: u64,
    pub paper: String,
    #[serde(skip)]
    pub config: Value,
}

/// A spec read from a file, with the command-line overrides that apply to it.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    pub path: PathBuf,
    pub spec: Spec,
    pub name: String,
    pub entry: Entry,
}

/// Reads and validates a spec file (schema, paper key, claims); does not expand it.
pub fn load(path: &Path) -> Result<LoadedSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read spec `{}` (does the file exist?)", path.display()))?;
    parse(&text, path)
}

/// Parses spec text; `path` is used for messages and the default name.
pub fn parse(text: &str, path: &Path) -> Result<LoadedSpec> {
    let file = path.display().to_string();
    let de = serde_yaml::Deserializer::from_str(text);
    let spec: Spec = serde_path_to_error::deserialize(de).map_err(|err| {
        let at = err.path().to_string();
        let inner = err.inner().to_string();
        let hint = if inner.contains("unknown field") {
            " (a spec has: name, paper, description, device, seeds, params, variants, sweep, claims)"
        } else {
            ""
        };
        anyhow!("{file}: at `{at}`: {inner}{hint}")
    })?;
    let entry = papers::find(&spec.paper).map_err(|e| anyhow!("{file}: `paper`: {e}"))?;
    let name = match &spec.name {
        Some(n) => {
            if n.is_empty() || params::sanitize(n) != *n {
                bail!("{file}: `name`: `{n}` must be non-empty and use only letters, digits, `.`, `_`, `-`, `+`");
            }
            n.clone()
        }
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .ok_or_else(|| anyhow!("{file}: cannot take a name from the file name; set `name:`"))?,
    };
    if spec.seeds.is_empty() {
        bail!("{file}: `seeds` is empty; give at least one seed, e.g. `seeds: [0, 1, 2]`");
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, v) in spec.variants.iter().enumerate() {
        if v.name.is_empty() || params::sanitize(&v.name) != v.name || v.name.contains("__") {
            bail!(
                "{file}: `variants[{i}].name`: `{}` must be non-empty, use only letters, digits, `.`, `_`, `-`, `+`, and not contain `__`",
                v.name
            );
        }
        if !seen.insert(v.name.clone()) {
            bail!("{file}: `variants[{i}].name`: `{}` is used twice; variant names must be unique", v.name);
        }
    }
    for (key, values) in &spec.sweep {
        let key = key.as_str().ok_or_else(|| anyhow!("{file}: `sweep`: keys must be dotted parameter names"))?;
        match values {
            Value::Sequence(seq) if !seq.is_empty() => {}
            _ => bail!("{file}: `sweep.{key}`: expected a non-empty list of values, e.g. `{key}: [0.1, 0.01]`"),
        }
    }
    let loaded = LoadedSpec { path: path.to_path_buf(), spec, name, entry };
    let points = loaded.group_points();
    for (i, claim) in loaded.spec.claims.iter().enumerate() {
        check_claim(claim, &points, &loaded.spec.sweep).map_err(|e| anyhow!("{file}: `claims[{i}]`: {e}"))?;
    }
    Ok(loaded)
}

fn check_claim(claim: &Claim, points: &[GroupPoint], sweep: &Mapping) -> Result<()> {
    if claim.trend.is_some() || claim.across.is_some() || claim.where_.is_some() || claim.log.is_some() {
        return check_trend_claim(claim, points, sweep);
    }
    let groups: Vec<String> = points.iter().map(|p| p.group.clone()).collect();
    let pairwise = claim.higher.is_some() || claim.lower.is_some() || claim.than.is_some();
    let bound = claim.variant.is_some() || claim.at_least.is_some() || claim.at_most.is_some();
    let known = |g: &String| -> Result<()> {
        if groups.contains(g) {
            Ok(())
        } else {
            bail!("unknown variant `{g}`; this spec's variants (with sweep points) are: {}", groups.join(", "))
        }
    };
    match (pairwise, bound) {
        (true, false) => {
            let subject = match (&claim.higher, &claim.lower) {
                (Some(a), None) | (None, Some(a)) => a,
                _ => bail!("give exactly one of `higher:` or `lower:`, with `than:`"),
            };
            let than = claim.than.as_ref().ok_or_else(|| anyhow!("`than:` is missing (e.g. `than: baseline`)"))?;
            known(subject)?;
            known(than)?;
            if claim.margin.is_some_and(|m| !m.is_finite()) {
                bail!("`margin` must be a finite number");
            }
            if claim.factor.is_some_and(|f| !(f.is_finite() && f > 0.0)) {
                bail!("`factor` must be a positive number (`lower: A, than: B, factor: 0.8` reads A < 0.8·B)");
            }
        }
        (false, true) => {
            let v = claim.variant.as_ref().ok_or_else(|| anyhow!("`variant:` is missing"))?;
            known(v)?;
            if claim.at_least.is_none() && claim.at_most.is_none() {
                bail!("give `at_least:` and/or `at_most:` with `variant:`");
            }
            if claim.margin.is_some() || claim.factor.is_some() {
                bail!("`margin` and `factor` apply only to `higher:`/`lower:` claims");
            }
        }
        _ => bail!(
            "a claim is either `{{metric, higher|lower, than, margin?, factor?}}`, `{{metric, variant, at_least?, at_most?}}` or \
             `{{metric, variant, across, trend, ...}}`"
        ),
    }
    Ok(())
}

/// The groups a trend claim compares: the variant's groups whose sweep point matches `where`, in
/// expansion order. Shared by the spec check and the report so both read a claim the same way.
pub fn trend_groups<'a>(claim: &Claim, points: &'a [GroupPoint]) -> Vec<&'a GroupPoint> {
    let variant = claim.variant.clone().unwrap_or_default();
    let fixed: Vec<(String, String)> = claim
        .where_
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), params::scalar_label(v)))
        .collect();
    points
        .iter()
        .filter(|p| p.variant == variant && fixed.iter().all(|(k, v)| p.sweep.iter().any(|(pk, pv)| pk == k && pv == v)))
        .collect()
}

fn check_trend_claim(claim: &Claim, points: &[GroupPoint], sweep: &Mapping) -> Result<()> {
    let form = "a trend claim is `{metric, variant, across, trend, where?, margin?, at_least?, at_most?, log?}`";
    let trend = claim.trend.ok_or_else(|| anyhow!("`trend:` is missing: one of increasing, decreasing, u_shaped, flat, slope ({form})"))?;
    if claim.higher.is_some() || claim.lower.is_some() || claim.than.is_some() || claim.factor.is_some() {
        bail!("`higher`/`lower`/`than`/`factor` do not go with `trend:` ({form})");
    }
    let variant = claim.variant.as_ref().ok_or_else(|| anyhow!("`variant:` is missing ({form})"))?;
    let variants: Vec<&str> = points.iter().map(|p| p.variant.as_str()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    if !variants.contains(&variant.as_str()) {
        bail!("unknown variant `{variant}`; a trend claim names a variant without its sweep point, one of: {}", variants.join(", "));
    }
    let sweep_keys: Vec<String> = sweep.keys().filter_map(|k| k.as_str().map(str::to_string)).collect();
    let across = claim.across.as_ref().ok_or_else(|| anyhow!("`across:` is missing: the sweep key whose points are compared ({form})"))?.keys();
    if across.is_empty() {
        bail!("`across:` names no sweep key");
    }
    if across.len() > 1 && trend != Trend::Flat {
        bail!("`across:` lists {} keys; only `trend: flat` compares a grid, the others need one sweep key as the x axis", across.len());
    }
    for k in &across {
        if !sweep_keys.contains(k) {
            bail!("`across: {k}` is not a sweep key; this spec sweeps: {}", if sweep_keys.is_empty() { "nothing (add a `sweep:`)".into() } else { sweep_keys.join(", ") });
        }
    }
    for (k, v) in claim.where_.iter().flatten() {
        let k = k.as_str().ok_or_else(|| anyhow!("`where:` keys must be sweep keys"))?;
        if across.iter().any(|a| a == k) {
            bail!("`where: {k}` fixes a key that `across:` compares");
        }
        let values = sweep.get(k).and_then(Value::as_sequence).ok_or_else(|| anyhow!("`where: {k}` is not a sweep key; this spec sweeps: {}", sweep_keys.join(", ")))?;
        let label = params::scalar_label(v);
        if !values.iter().any(|x| params::scalar_label(x) == label) {
            let allowed: Vec<String> = values.iter().map(params::scalar_label).collect();
            bail!("`where: {k}: {label}` is not one of the sweep's values ({})", allowed.join(", "));
        }
    }
    let fixed: Vec<&str> = claim.where_.iter().flatten().filter_map(|(k, _)| k.as_str()).collect();
    let free: Vec<&String> = sweep_keys.iter().filter(|k| !across.contains(k) && !fixed.contains(&k.as_str())).collect();
    if !free.is_empty() {
        let names: Vec<&str> = free.iter().map(|k| k.as_str()).collect();
        bail!("the sweep also varies {}; fix it with `where: {{ {}: VALUE }}` or add it to `across:`", names.join(", "), names[0]);
    }
    if trend != Trend::Flat {
        for p in trend_groups(claim, points) {
            for (k, label) in &p.sweep {
                if *k == across[0] && label.parse::<f64>().is_err() {
                    bail!("`across: {k}`: the value `{label}` is not a number; `trend: {}` needs numeric sweep values", trend_name(trend));
                }
            }
        }
    }
    let needed = if trend == Trend::UShaped { 3 } else { 2 };
    let n = trend_groups(claim, points).len();
    if n < needed {
        bail!("`trend: {}` needs at least {needed} sweep points, this claim selects {n}", trend_name(trend));
    }
    match trend {
        Trend::Increasing | Trend::Decreasing | Trend::UShaped => {
            if claim.at_least.is_some() || claim.at_most.is_some() {
                bail!("`at_least`/`at_most` do not go with `trend: {}`; it takes an optional `margin`", trend_name(trend));
            }
            if claim.margin.is_some_and(|m| !m.is_finite()) {
                bail!("`margin` must be a finite number");
            }
        }
        Trend::Flat => {
            if claim.margin.is_some() || claim.at_least.is_some() {
                bail!("`trend: flat` takes `at_most:` (the largest allowed max/min ratio of the means), not `margin`/`at_least`");
            }
            if !claim.at_most.is_some_and(|r| r >= 1.0) {
                bail!("`trend: flat` needs `at_most:` ≥ 1, the largest allowed max/min ratio of the means (e.g. `at_most: 2`)");
            }
        }
        Trend::Slope => {
            if claim.margin.is_some() {
                bail!("`trend: slope` takes `at_least:` and/or `at_most:` on the slope, not `margin`");
            }
            if claim.at_least.is_none() && claim.at_most.is_none() {
                bail!("`trend: slope` needs `at_least:` and/or `at_most:` on the slope");
            }
        }
    }
    if let Some(axes) = &claim.log {
        if trend != Trend::Slope {
            bail!("`log:` applies only to `trend: slope`");
        }
        if let Some(bad) = axes.iter().find(|a| *a != "x" && *a != "y") {
            bail!("`log: [{bad}]`: the axes are `x` and `y` (e.g. `log: [x]` for a semi-log slope, `log: []` for a linear one)");
        }
    }
    Ok(())
}

pub fn trend_name(t: Trend) -> &'static str {
    match t {
        Trend::Increasing => "increasing",
        Trend::Decreasing => "decreasing",
        Trend::UShaped => "u_shaped",
        Trend::Flat => "flat",
        Trend::Slope => "slope",
    }
}

impl LoadedSpec {
    fn variants(&self) -> Vec<Variant> {
        if self.spec.variants.is_empty() {
            vec![Variant { name: "default".into(), params: Mapping::new() }]
        } else {
            self.spec.variants.clone()
        }
    }

    /// The sweep grid as (key, values) in spec order; its points in row-major order.
    fn sweep_points(&self) -> Vec<Vec<(String, Value)>> {
        let mut points: Vec<Vec<(String, Value)>> = vec![vec![]];
        for (key, values) in &self.spec.sweep {
            let key = key.as_str().unwrap_or_default().to_string();
            let values = values.as_sequence().cloned().unwrap_or_default();
            points = points
                .into_iter()
                .flat_map(|p| {
                    let key = key.clone();
                    values.iter().map(move |v| {
                        let mut q = p.clone();
                        q.push((key.clone(), v.clone()));
                        q
                    })
                })
                .collect();
        }
        points
    }

    /// Group labels (run ids without the seed), in expansion order.
    pub fn groups(&self) -> Vec<String> {
        self.group_points().into_iter().map(|p| p.group).collect()
    }

    /// Every group with its variant and sweep point, in expansion order.
    pub fn group_points(&self) -> Vec<GroupPoint> {
        let mut out = vec![];
        for v in self.variants() {
            for point in self.sweep_points() {
                out.push(GroupPoint {
                    group: group_label(&v.name, &point),
                    variant: v.name.clone(),
                    sweep: point.iter().map(|(k, x)| (k.clone(), params::scalar_label(x))).collect(),
                });
            }
        }
        out
    }

    /// Expands into runs, each with its merged and type-checked config.
    /// Merge order: defaults, `params`, the variant's `params`, the sweep point, `--set`.
    pub fn expand(&self, seeds: Option<&[u64]>, sets: &[(String, Value)]) -> Result<Vec<RunPlan>> {
        let file = self.path.display().to_string();
        let mut base = (self.entry.defaults)();
        params::merge(&mut base, &Value::Mapping(self.spec.params.clone()), "", &format!("{file}: `params`"))?;
        let seeds: Vec<u64> = seeds.map(<[u64]>::to_vec).unwrap_or_else(|| self.spec.seeds.clone());
        let mut runs = vec![];
        for (vi, variant) in self.variants().iter().enumerate() {
            let mut with_variant = base.clone();
            let origin = format!("{file}: `variants[{vi}].params` ({})", variant.name);
            params::merge(&mut with_variant, &Value::Mapping(variant.params.clone()), "", &origin)?;
            for point in self.sweep_points() {
                let mut config = with_variant.clone();
                for (key, value) in &point {
                    params::set_dotted(&mut config, key, value.clone(), &format!("{file}: `sweep.{key}`"))?;
                }
                for (key, value) in sets {
                    params::set_dotted(&mut config, key, value.clone(), &format!("--set {key}"))?;
                }
                let group = group_label(&variant.name, &point);
                let config = (self.entry.resolve)(&config, &format!("{file}: run `{group}`"))?;
                for &seed in &seeds {
                    runs.push(RunPlan {
                        id: format!("{group}__s{seed}"),
                        group: group.clone(),
                        variant: variant.name.clone(),
                        sweep: point.iter().map(|(k, v)| (k.clone(), params::scalar_label(v))).collect(),
                        seed,
                        paper: self.entry.key.to_string(),
                        config: config.clone(),
                    });
                }
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        for r in &runs {
            if !ids.insert(r.id.clone()) {
                bail!("{file}: two runs share the id `{}` (repeated seeds or sweep values?)", r.id);
            }
        }
        Ok(runs)
    }
}

fn group_label(variant: &str, point: &[(String, Value)]) -> String {
    let mut label = variant.to_string();
    for (key, value) in point {
        label.push_str(&format!("__{}={}", params::sanitize(key), params::scalar_label(value)));
    }
    label
}

/// Parses `--shard I/N` (0 ≤ I < N).
pub fn parse_shard(raw: &str) -> Result<(usize, usize)> {
    let err = || anyhow!("--shard `{raw}`: expected I/N with 0 <= I < N, e.g. --shard 0/4 (I is 0-based, like a Slurm array index)");
    let (i, n) = raw.split_once('/').ok_or_else(err)?;
    let i: usize = i.trim().parse().map_err(|_| err())?;
    let n: usize = n.trim().parse().map_err(|_| err())?;
    if n == 0 || i >= n {
        return Err(err());
    }
    Ok((i, n))
}

/// Parses `--seeds 0,1,2`.
pub fn parse_seeds(raw: &str) -> Result<Vec<u64>> {
    let seeds: Result<Vec<u64>> = raw
        .split(',')
        .map(|s| s.trim().parse::<u64>().map_err(|_| anyhow!("--seeds `{raw}`: `{s}` is not a non-negative integer (e.g. --seeds 0,1,2)")))
        .collect();
    let seeds = seeds?;
    if seeds.is_empty() {
        bail!("--seeds is empty");
    }
    Ok(seeds)
}

/// Keeps the runs of shard `i` of `n`: every n-th run, starting at i, in expansion order.
pub fn shard(runs: Vec<RunPlan>, (i, n): (usize, usize)) -> Vec<RunPlan> {
    runs.into_iter().enumerate().filter(|(k, _)| k % n == i).map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<LoadedSpec> {
        parse(text, Path::new("experiments/t.yaml"))
    }

    const BASE: &str = "paper: stablemax_grokking\nseeds: [0, 1]\n";

    #[test]
    fn merge_order_is_defaults_params_variant_sweep_set() {
        let s = spec(&format!(
            "{BASE}params: {{epochs: 7, lr: 0.5, weight_decay: 0.3}}\nvariants:\n  - name: a\n    params: {{lr: 0.2, weight_decay: 0.1}}\nsweep:\n  weight_decay: [0.05]\n"
        ))
        .unwrap();
        let sets = vec![params::parse_set("epochs=3").unwrap()];
        let runs = s.expand(None, &sets).unwrap();
        let c = &runs[0].config;
        assert_eq!(c["epochs"], Value::from(3)); // --set beats params
        assert_eq!(c["lr"].as_f64(), Some(0.2)); // variant beats params
        assert_eq!(c["weight_decay"].as_f64(), Some(0.05)); // sweep beats variant
        assert_eq!(c["modulus"], (crate::papers::find("stablemax_grokking").unwrap().defaults)()["modulus"]);
    }

    #[test]
    fn trend_claims_are_checked_against_the_sweep() {
        let grid = "variants: [{name: a}, {name: b}]\nsweep:\n  lr: [0.1, 0.01, 0.001]\n  weight_decay: [0, 1]\n";
        let ok = |c: &str| spec(&format!("{BASE}{grid}claims:\n  - {c}\n"));
        ok("{metric: test_acc, variant: a, across: lr, where: {weight_decay: 1}, trend: u_shaped}").unwrap();
        ok("{metric: test_acc, variant: a, across: [lr, weight_decay], trend: flat, at_most: 2}").unwrap();
        ok("{metric: test_acc, variant: b, across: lr, where: {weight_decay: 0}, trend: slope, log: [x], at_least: 0}").unwrap();
        let err = |c: &str, want: &str| {
            let e = ok(c).unwrap_err().to_string();
            assert!(e.contains("experiments/t.yaml") && e.contains("claims[0]") && e.contains(want), "{c}: {e}");
        };
        err("{metric: test_acc, variant: a, across: lr, trend: increasing}", "fix it with `where: { weight_decay: VALUE }`");
        err("{metric: test_acc, variant: a, across: momentum, where: {weight_decay: 0}, trend: increasing}", "this spec sweeps: lr, weight_decay");
        err("{metric: test_acc, variant: a__lr=0.1__weight_decay=0, across: lr, trend: flat, at_most: 2}", "without its sweep point");
        err("{metric: test_acc, variant: a, across: lr, where: {weight_decay: 7}, trend: increasing}", "not one of the sweep's values (0, 1)");
        err("{metric: test_acc, variant: a, across: [lr, weight_decay], trend: increasing}", "only `trend: flat` compares a grid");
        err("{metric: test_acc, variant: a, across: [lr, weight_decay], trend: flat}", "needs `at_most:` ≥ 1");
        err("{metric: test_acc, variant: a, across: lr, where: {weight_decay: 0}, trend: slope}", "needs `at_least:` and/or `at_most:`");
        err("{metric: test_acc, variant: a, across: lr, where: {weight_decay: 0}, trend: sideways}", "unknown variant");
        err("{metric: test_acc, variant: a, across: lr, where: {weight_decay: 0}, trend: increasing, log: [x]}", "`log:` applies only");
        err("{metric: test_acc, variant: a, across: lr, where: {weight_decay: 0}}", "`trend:` is missing");
    }

    #[test]
    fn sweep_expands_row_major_with_stable_ids() {
        let s = spec(&format!(
            "{BASE}variants: [{{name: a}}, {{name: b}}]\nsweep:\n  lr: [0.1, 0.01]\n  weight_decay: [0, 1]\n"
        ))
        .unwrap();
        let runs = s.expand(None, &[]).unwrap();
        assert_eq!(runs.len(), 2 * 4 * 2);
        let ids: Vec<&str> = runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids[0], "a__lr=0.1__weight_decay=0__s0");
        assert_eq!(ids[1], "a__lr=0.1__weight_decay=0__s1");
        assert_eq!(ids[2], "a__lr=0.1__weight_decay=1__s0");
        assert_eq!(ids[4], "a__lr=0.01__weight_decay=0__s0");
        assert_eq!(ids[8], "b__lr=0.1__weight_decay=0__s0");
        assert_eq!(runs[0].group, "a__lr=0.1__weight_decay=0");
        // The same spec expands to the same ids every time.
        assert_eq!(ids, s.expand(None, &[]).unwrap().iter().map(|r| r.id.as_str()).collect::<Vec<_>>());
        // --seeds replaces the spec's seeds.
        assert_eq!(s.expand(Some(&[7]), &[]).unwrap()[0].id, "a__lr=0.1__weight_decay=0__s7");
    }

    #[test]
    fn no_variants_means_one_named_default() {
        let runs = spec(BASE).unwrap().expand(None, &[]).unwrap();
        assert_eq!(runs.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), vec!["default__s0", "default__s1"]);
    }

    #[test]
    fn unknown_spec_key_names_it_and_the_valid_keys() {
        let msg = spec(&format!("{BASE}varients: []\n")).unwrap_err().to_string();
        assert!(msg.contains("experiments/t.yaml"), "{msg}");
        assert!(msg.contains("varients"), "{msg}");
        assert!(msg.contains("variants"), "{msg}");
    }

    #[test]
    fn unknown_variant_key_names_its_path() {
        let msg = spec(&format!("{BASE}variants:\n  - name: a\n    parms: {{}}\n")).unwrap_err().to_string();
        assert!(msg.contains("variants[0]"), "{msg}");
        assert!(msg.contains("parms"), "{msg}");
    }

    #[test]
    fn unknown_param_names_key_path_and_valid_keys() {
        let s = spec(&format!("{BASE}variants:\n  - name: a\n    params: {{learning_rate: 1}}\n")).unwrap();
        let msg = s.expand(None, &[]).unwrap_err().to_string();
        assert!(msg.contains("`variants[0].params`"), "{msg}");
        assert!(msg.contains("unknown key `learning_rate`"), "{msg}");
        assert!(msg.contains("lr"), "{msg}");
        let msg = spec(&format!("{BASE}params: {{lrr: 1}}\n")).unwrap().expand(None, &[]).unwrap_err().to_string();
        assert!(msg.contains("`params`") && msg.contains("`lrr`"), "{msg}");
        let msg = spec(&format!("{BASE}sweep: {{lrr: [1]}}\n")).unwrap().expand(None, &[]).unwrap_err().to_string();
        assert!(msg.contains("`sweep.lrr`"), "{msg}");
        let sets = vec![params::parse_set("lrr=1").unwrap()];
        let msg = spec(BASE).unwrap().expand(None, &sets).unwrap_err().to_string();
        assert!(msg.contains("--set lrr") && msg.contains("unknown key"), "{msg}");
    }

    #[test]
    fn wrong_type_names_the_config_key() {
        let s = spec(&format!("{BASE}params: {{epochs: many}}\n")).unwrap();
        let msg = s.expand(None, &[]).unwrap_err().to_string();
        assert!(msg.contains("`epochs`"), "{msg}");
    }

    #[test]
    fn unknown_paper_lists_known_ones() {
        let msg = spec("paper: nope\n").unwrap_err().to_string();
        assert!(msg.contains("unknown paper `nope`"), "{msg}");
        assert!(msg.contains("stablemax_grokking") && msg.contains("sparse_ot"), "{msg}");
    }

    #[test]
    fn claims_are_checked_against_variants() {
        let head = format!("{BASE}variants: [{{name: a}}, {{name: b}}]\n");
        assert!(spec(&format!("{head}claims: [{{metric: m, higher: a, than: b, margin: 0.1}}]\n")).is_ok());
        assert!(spec(&format!("{head}claims: [{{metric: m, variant: a, at_least: 0.9}}]\n")).is_ok());
        assert!(spec(&format!("{head}claims: [{{metric: m, lower: a, than: b, factor: 0.8}}]\n")).is_ok());
        for bad in ["{metric: m, lower: a, than: b, factor: 0}", "{metric: m, lower: a, than: b, factor: -1}", "{metric: m, variant: a, at_most: 1, factor: 0.8}"] {
            let msg = spec(&format!("{head}claims: [{bad}]\n")).unwrap_err().to_string();
            assert!(msg.contains("claims[0]") && msg.contains("`factor`"), "{bad}: {msg}");
        }
        let msg = spec(&format!("{head}claims: [{{metric: m, higher: a, than: c}}]\n")).unwrap_err().to_string();
        assert!(msg.contains("claims[0]") && msg.contains("unknown variant `c`") && msg.contains("a, b"), "{msg}");
        let msg = spec(&format!("{head}claims: [{{metric: m, variant: a}}]\n")).unwrap_err().to_string();
        assert!(msg.contains("at_least"), "{msg}");
        let msg = spec(&format!("{head}claims: [{{metric: m, higher: a, lower: b, than: a}}]\n")).unwrap_err().to_string();
        assert!(msg.contains("exactly one"), "{msg}");
        let msg = spec(&format!("{head}claims: [{{metric: m, variant: a, at_least: 1, hihger: b}}]\n")).unwrap_err().to_string();
        assert!(msg.contains("claims[0]") && msg.contains("hihger"), "{msg}");
    }

    #[test]
    fn bad_names_and_duplicates_are_rejected() {
        assert!(spec(&format!("{BASE}variants: [{{name: 'a b'}}]\n")).is_err());
        assert!(spec(&format!("{BASE}variants: [{{name: a}}, {{name: a}}]\n")).unwrap_err().to_string().contains("twice"));
        assert!(spec(&format!("{BASE}sweep: {{lr: 0.1}}\n")).unwrap_err().to_string().contains("`sweep.lr`"));
        assert!(spec("paper: stablemax_grokking\nseeds: []\n").unwrap_err().to_string().contains("seeds"));
    }

    #[test]
    fn shard_union_is_the_whole_and_disjoint() {
        let s = spec(&format!("{BASE}variants: [{{name: a}}, {{name: b}}, {{name: c}}]\n")).unwrap();
        let all = s.expand(None, &[]).unwrap();
        let mut union: Vec<String> = vec![];
        for i in 0..4 {
            union.extend(shard(all.clone(), (i, 4)).into_iter().map(|r| r.id));
        }
        union.sort();
        let mut ids: Vec<String> = all.into_iter().map(|r| r.id).collect();
        ids.sort();
        assert_eq!(union, ids);
    }

    #[test]
    fn cli_parsers_reject_bad_input() {
        assert_eq!(parse_shard("1/3").unwrap(), (1, 3));
        assert!(parse_shard("3/3").unwrap_err().to_string().contains("0 <= I < N"));
        assert!(parse_shard("x").is_err());
        assert_eq!(parse_seeds("0, 1,2").unwrap(), vec![0, 1, 2]);
        assert!(parse_seeds("0,a").unwrap_err().to_string().contains("`a`"));
    }
}
