//! Helpers for the unit tests.

use tch::{Kind, Tensor};

/// All elements of a tensor as f64, flattened.
pub fn f64s(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).expect("a numeric tensor")
}

/// Overwrites the variables of `vs` whose name contains `filter` (all, for "") with fixed
/// patterns amplitude·sin((0.9 + 0.37·k)·i) — k the variable's rank by name, i the element — so a
/// test's network is the same on every run, never drawn from torch's global generator (which the
/// tests running beside it share).
pub fn fill_with_pattern(vs: &tch::nn::VarStore, filter: &str, amplitude: f64) {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(name, _)| name.contains(filter)).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (k, (_, mut v)) in vars.into_iter().enumerate() {
            let n = v.numel() as i64;
            let pattern = (Tensor::arange(n, (Kind::Double, v.device())) * (0.9 + 0.37 * k as f64)).sin() * amplitude;
            let _ = v.copy_(&pattern.to_kind(v.kind()).view(v.size().as_slice()));
        }
    });
}
