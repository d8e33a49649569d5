//! Helpers for the unit tests.

use tch::{Kind, Tensor};

/// All elements of a tensor as f64, flattened.
pub fn f64s(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).expect("a numeric tensor")
}
