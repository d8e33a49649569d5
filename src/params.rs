//! Merging parameter layers into a paper's Config.
//!
//! A run's config is built as a YAML value: the Config's defaults, then the spec's `params`, the
//! variant's `params`, the sweep point, and the `--set` overrides, each laid over the last. Every
//! key of a layer must already exist in the defaults, so a typo is an error that names the key,
//! where it came from, and the keys that are allowed — never a silently ignored setting.

use anyhow::{anyhow, bail, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_yaml::{Mapping, Value};

/// Lays `over` onto `base`. Mappings merge key by key; anything else replaces. `path` is the
/// dotted location of `base` inside the config (empty at the top), `origin` says where `over`
/// came from (e.g. ``experiments/x.yaml: `variants[1].params` ``) for error messages.
pub fn merge(base: &mut Value, over: &Value, path: &str, origin: &str) -> Result<()> {
    match (base, over) {
        (Value::Mapping(base_map), Value::Mapping(over_map)) => {
            for (key, value) in over_map {
                let key_str = key_to_string(key, origin)?;
                let child_path = join_path(path, &key_str);
                match base_map.get_mut(key) {
                    Some(slot) => merge(slot, value, &child_path, origin)?,
                    None => bail!(unknown_key_message(base_map, &child_path, origin)),
                }
            }
            Ok(())
        }
        (base, over) => {
            *base = over.clone();
            Ok(())
        }
    }
}

/// Sets the value at a dotted path (`optimizer.lr`), which must exist in `base`.
pub fn set_dotted(base: &mut Value, dotted: &str, value: Value, origin: &str) -> Result<()> {
    let mut node = base;
    let mut walked = String::new();
    let parts: Vec<&str> = dotted.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("{origin}: `{dotted}` is not a valid key path (use dotted names like `optimizer.lr`)");
    }
    for part in parts {
        let map = match node {
            Value::Mapping(map) => map,
            _ => bail!(
                "{origin}: `{dotted}`: `{walked}` is a single value, not a group of keys, so it has no `{part}`"
            ),
        };
        let here = join_path(&walked, part);
        if !map.contains_key(part) {
            bail!(unknown_key_message(map, &here, origin));
        }
        walked = here;
        node = map.get_mut(part).expect("checked above");
    }
    *node = value;
    Ok(())
}

/// Parses `key=value` from the command line; the value is read as YAML, so `0.01` is a number,
/// `true` a bool, `[1, 2]` a list and `adamw` a string.
pub fn parse_set(arg: &str) -> Result<(String, Value)> {
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| anyhow!("--set `{arg}`: expected key=value, e.g. --set epochs=100 or --set optimizer.lr=0.01"))?;
    let key = key.trim();
    if key.is_empty() {
        bail!("--set `{arg}`: the key before `=` is empty (e.g. --set epochs=100)");
    }
    let value: Value = if raw.trim().is_empty() {
        Value::String(String::new())
    } else {
        serde_yaml::from_str(raw).map_err(|e| anyhow!("--set `{arg}`: the value `{raw}` is not valid YAML: {e}"))?
    };
    Ok((key.to_string(), value))
}

/// Turns a merged YAML value into the typed Config, naming the exact path of a type error.
pub fn typed<C: DeserializeOwned>(value: &Value, origin: &str) -> Result<C> {
    serde_path_to_error::deserialize(value.clone()).map_err(|err| {
        let path = err.path().to_string();
        anyhow!("{origin}: config key `{path}`: {}", err.inner())
    })
}

/// The YAML value of a Config, used as the base every layer merges into.
pub fn to_value<C: Serialize>(config: &C) -> Value {
    serde_yaml::to_value(config).expect("a Config always serializes to YAML")
}

/// A short, filename-safe rendering of a scalar for run ids (`0.01`, `adamw`, `true`).
pub fn scalar_label(value: &Value) -> String {
    let raw = match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other).unwrap_or_default(),
    };
    sanitize(raw.trim())
}

/// Keeps `[A-Za-z0-9._+-]`, replaces anything else with `-`.
pub fn sanitize(raw: &str) -> String {
    raw.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+') { c } else { '-' })
        .collect()
}

fn key_to_string(key: &Value, origin: &str) -> Result<String> {
    match key {
        Value::String(s) => Ok(s.clone()),
        other => bail!("{origin}: parameter names must be strings, found `{}`", scalar_label(other)),
    }
}

fn join_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn unknown_key_message(map: &Mapping, path: &str, origin: &str) -> String {
    let mut valid: Vec<String> = map.keys().filter_map(|k| k.as_str().map(str::to_string)).collect();
    valid.sort();
    let key = path.rsplit('.').next().unwrap_or(path);
    format!("{origin}: unknown key `{key}` (at `{path}`); valid keys here: {}", valid.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Value {
        serde_yaml::from_str(s).unwrap()
    }

    #[test]
    fn merge_replaces_leaves_and_recurses_into_groups() {
        let mut base = yaml("{lr: 0.1, opt: {beta1: 0.9, beta2: 0.999}, name: a}");
        merge(&mut base, &yaml("{lr: 0.01, opt: {beta2: 0.99}}"), "", "t").unwrap();
        assert_eq!(base, yaml("{lr: 0.01, opt: {beta1: 0.9, beta2: 0.99}, name: a}"));
    }

    #[test]
    fn merge_rejects_unknown_key_and_names_it_with_valid_keys() {
        let mut base = yaml("{lr: 0.1, opt: {beta1: 0.9}}");
        let err = merge(&mut base, &yaml("{opt: {beta3: 1}}"), "", "spec.yaml: `params`").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown key `beta3`"), "{msg}");
        assert!(msg.contains("`opt.beta3`"), "{msg}");
        assert!(msg.contains("valid keys here: beta1"), "{msg}");
        assert!(msg.starts_with("spec.yaml: `params`"), "{msg}");
    }

    #[test]
    fn set_dotted_walks_groups_and_rejects_unknown() {
        let mut base = yaml("{opt: {lr: 0.1}}");
        set_dotted(&mut base, "opt.lr", yaml("0.5"), "--set").unwrap();
        assert_eq!(base, yaml("{opt: {lr: 0.5}}"));
        let msg = set_dotted(&mut base, "opt.lrr", yaml("1"), "--set").unwrap_err().to_string();
        assert!(msg.contains("unknown key `lrr`") && msg.contains("valid keys here: lr"), "{msg}");
        let msg = set_dotted(&mut base, "opt.lr.x", yaml("1"), "--set").unwrap_err().to_string();
        assert!(msg.contains("single value"), "{msg}");
    }

    #[test]
    fn parse_set_reads_yaml_values() {
        assert_eq!(parse_set("lr=0.01").unwrap(), ("lr".into(), yaml("0.01")));
        assert_eq!(parse_set("a.b=[1, 2]").unwrap(), ("a.b".into(), yaml("[1, 2]")));
        assert_eq!(parse_set("loss=stablemax_ce").unwrap().1, Value::String("stablemax_ce".into()));
        assert!(parse_set("novalue").unwrap_err().to_string().contains("expected key=value"));
        assert!(parse_set("=3").is_err());
    }

    #[test]
    fn typed_names_the_path_of_a_type_error() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Inner {
            lr: f64,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Outer {
            opt: Inner,
        }
        let msg = typed::<Outer>(&yaml("{opt: {lr: fast}}"), "run x").unwrap_err().to_string();
        assert!(msg.contains("`opt.lr`"), "{msg}");
    }

    #[test]
    fn labels_are_filename_safe() {
        assert_eq!(scalar_label(&yaml("0.01")), "0.01");
        assert_eq!(scalar_label(&yaml("'a b/c'")), "a-b-c");
    }
}
