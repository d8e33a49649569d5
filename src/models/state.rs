//! Copies of a model's state: every variable of a `VarStore` — parameters and buffers such as
//! BatchNorm's running statistics, as a PyTorch state dict holds them — in name order, to save and
//! restore (a baseline that restarts from the same pretrained weights) or to average (federated
//! rounds).

use tch::{nn, Tensor};

/// The variables of `vs` in name order: the order every state vector here uses.
pub fn variables(vs: &nn::VarStore) -> Vec<Tensor> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.into_iter().map(|(_, v)| v).collect()
}

/// A detached copy of every variable.
pub fn copy(vs: &nn::VarStore) -> Vec<Tensor> {
    variables(vs).iter().map(|v| v.detach().copy()).collect()
}

/// Writes a copy taken by [`copy`] (or any state of the same shapes) back into `vs`.
pub fn load(vs: &nn::VarStore, state: &[Tensor]) {
    tch::no_grad(|| {
        for (mut v, x) in variables(vs).into_iter().zip(state) {
            let _ = v.copy_(x);
        }
    });
}

/// Writes back one vector that holds several stores' [`copy`]s one after another (as a cached
/// stage keeps them), each store taking as many tensors as it has variables.
pub fn load_all(stores: &[&nn::VarStore], state: &[Tensor]) {
    let total: usize = stores.iter().map(|vs| vs.variables().len()).sum();
    assert_eq!(total, state.len(), "the stores hold {total} variables, the state {}", state.len());
    let mut rest = state;
    for vs in stores {
        let (mine, others) = rest.split_at(vs.variables().len());
        load(vs, mine);
        rest = others;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{f64s, fill_with_pattern};
    use tch::nn::ModuleT;
    use tch::Device;

    #[test]
    fn load_brings_back_parameters_and_batchnorm_statistics_exactly() {
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = nn::batch_norm1d(vs.root() / "bn", 3, Default::default());
        let lin = nn::linear(vs.root() / "lin", 3, 2, Default::default());
        fill_with_pattern(&vs, "lin", 0.5);
        let saved = copy(&vs);
        assert_eq!(saved.len(), 2 + 2 + 2, "lin weight and bias, bn weight and bias, running mean and var");
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, -1.0, 0.5, 4.0]).view([2, 3]);
        let _ = bn.forward_t(&x, true); // moves the running statistics
        tch::no_grad(|| {
            let _ = lin.ws.shallow_clone().fill_(7.0);
        });
        let moved = variables(&vs).iter().zip(&saved).filter(|(v, s)| f64s(v) != f64s(s)).count();
        assert!(moved >= 3, "the weight and both running statistics moved ({moved})");
        load(&vs, &saved);
        for (v, s) in variables(&vs).iter().zip(&saved) {
            assert_eq!(f64s(v), f64s(s));
        }
    }

    #[test]
    fn load_all_hands_each_store_its_own_slice_of_the_state() {
        let (a, b) = (nn::VarStore::new(Device::Cpu), nn::VarStore::new(Device::Cpu));
        let _la = nn::linear(a.root() / "l", 2, 3, Default::default());
        let _lb = nn::linear(b.root() / "l", 3, 1, Default::default());
        let saved: Vec<Tensor> = [&a, &b].into_iter().flat_map(copy).collect();
        for vs in [&a, &b] {
            for v in variables(vs) {
                tch::no_grad(|| {
                    let _ = v.shallow_clone().fill_(9.0);
                });
            }
        }
        load_all(&[&a, &b], &saved);
        let back: Vec<Vec<f64>> = [&a, &b].into_iter().flat_map(|vs| variables(vs)).map(|v| f64s(&v)).collect();
        assert_eq!(back, saved.iter().map(f64s).collect::<Vec<_>>());
        assert!(std::panic::catch_unwind(|| load_all(&[&a], &saved)).is_err(), "a state of another size is refused");
    }
}
