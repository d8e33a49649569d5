//! Networks written as functions of one flat parameter vector θ, f(θ, x): a student's unrolled
//! training steps are then ordinary tensor operations, and the gradient of anything computed from
//! its final θ reaches its inputs through every step (trajectory matching, bilevel problems).

use tch::{Device, Kind, Tensor};

/// The ConvNet as a function of one flat parameter vector θ, so that a student's unrolled steps
/// are ordinary tensor operations and θ's history stays in the graph.
#[derive(Debug, Clone)]
pub struct ConvNet {
    /// [C, H, W] of an input image (H and W divisible by 4).
    pub image: [i64; 3],
    pub widths: [i64; 2],
    pub classes: i64,
    pub instance_norm: bool,
}

/// One parameter tensor of the flat vector: its shape, and its initialisation.
#[derive(Debug, Clone)]
struct Slot {
    shape: Vec<i64>,
    init: SlotInit,
}

#[derive(Debug, Clone, Copy)]
enum SlotInit {
    /// U(±1/√fan_in), PyTorch's default for Conv2d and Linear (weights and biases).
    Uniform(i64),
    Const(f64),
}

impl ConvNet {
    fn slots(&self) -> Vec<Slot> {
        let [c, h, w] = self.image;
        let mut slots = Vec::new();
        let mut cin = c;
        for &cout in &self.widths {
            let fan = cin * 9;
            slots.push(Slot { shape: vec![cout, cin, 3, 3], init: SlotInit::Uniform(fan) });
            slots.push(Slot { shape: vec![cout], init: SlotInit::Uniform(fan) });
            if self.instance_norm {
                slots.push(Slot { shape: vec![cout], init: SlotInit::Const(1.0) });
                slots.push(Slot { shape: vec![cout], init: SlotInit::Const(0.0) });
            }
            cin = cout;
        }
        let feat = cin * (h / 4) * (w / 4);
        slots.push(Slot { shape: vec![self.classes, feat], init: SlotInit::Uniform(feat) });
        slots.push(Slot { shape: vec![self.classes], init: SlotInit::Uniform(feat) });
        slots
    }

    /// (offset, length) of each parameter tensor in θ.
    pub fn segments(&self) -> Vec<(i64, i64)> {
        let mut off = 0;
        self.slots()
            .iter()
            .map(|s| {
                let n: i64 = s.shape.iter().product();
                off += n;
                (off - n, n)
            })
            .collect()
    }

    pub fn num_params(&self) -> i64 {
        self.segments().iter().map(|s| s.1).sum()
    }

    /// A fresh θ as PyTorch would initialise the modules (from torch's generator).
    pub fn init(&self, kind: Kind, device: Device) -> Tensor {
        let parts: Vec<Tensor> = self
            .slots()
            .iter()
            .map(|s| {
                let n: i64 = s.shape.iter().product();
                match s.init {
                    SlotInit::Uniform(fan) => {
                        let b = 1.0 / (fan as f64).sqrt();
                        Tensor::empty([n], (kind, device)).uniform_(-b, b)
                    }
                    SlotInit::Const(v) => Tensor::full([n], v, (kind, device)),
                }
            })
            .collect();
        Tensor::cat(&parts, 0)
    }

    /// The parameter tensors as views of θ (differentiable).
    pub fn unflatten(&self, theta: &Tensor) -> Vec<Tensor> {
        self.slots().iter().zip(self.segments()).map(|(s, (off, n))| theta.narrow(0, off, n).view(s.shape.as_slice())).collect()
    }

    /// Logits f(θ, x) for x [B, C, H, W].
    pub fn forward(&self, theta: &Tensor, x: &Tensor) -> Tensor {
        let p = self.unflatten(theta);
        let mut it = p.iter();
        let mut h = x.shallow_clone();
        for &cout in &self.widths {
            let (w, b) = (it.next().unwrap(), it.next().unwrap());
            h = h.conv2d(w, Some(b), [1, 1], [1, 1], [1, 1], 1);
            if self.instance_norm {
                let (g, be) = (it.next().unwrap(), it.next().unwrap());
                h = h.group_norm(cout, Some(g), Some(be), 1e-5, false);
            }
            h = h.relu().avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>);
        }
        let (w, b) = (it.next().unwrap(), it.next().unwrap());
        h.flatten(1, -1).linear(w, Some(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::f64s;
    use tch::nn::{self, Module};

    #[test]
    fn the_flat_forward_is_the_module_forward() {
        tch::manual_seed(3);
        let net = ConvNet { image: [1, 8, 8], widths: [4, 5], classes: 10, instance_norm: true };
        let theta = net.init(Kind::Float, Device::Cpu) + Tensor::randn([net.num_params()], (Kind::Float, Device::Cpu)) * 0.1;
        let p = net.unflatten(&theta);
        // The same network from tch's modules, loaded with θ's slices.
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = nn::ConvConfig { padding: 1, ..Default::default() };
        let c1 = nn::conv2d(vs.root() / "c1", 1, 4, 3, conv);
        let n1 = nn::group_norm(vs.root() / "n1", 4, 4, Default::default());
        let c2 = nn::conv2d(vs.root() / "c2", 4, 5, 3, conv);
        let n2 = nn::group_norm(vs.root() / "n2", 5, 5, Default::default());
        let fc = nn::linear(vs.root() / "fc", 5 * 2 * 2, 10, Default::default());
        tch::no_grad(|| {
            for (dst, src) in [(&c1.ws, &p[0]), (c1.bs.as_ref().unwrap(), &p[1]), (n1.ws.as_ref().unwrap(), &p[2]), (n1.bs.as_ref().unwrap(), &p[3]), (&c2.ws, &p[4]), (c2.bs.as_ref().unwrap(), &p[5]), (n2.ws.as_ref().unwrap(), &p[6]), (n2.bs.as_ref().unwrap(), &p[7]), (&fc.ws, &p[8]), (fc.bs.as_ref().unwrap(), &p[9])] {
                dst.shallow_clone().copy_(src);
            }
        });
        let x = Tensor::randn([6, 1, 8, 8], (Kind::Float, Device::Cpu));
        let block = |x: &Tensor, c: &nn::Conv2D, n: &nn::GroupNorm| n.forward(&c.forward(x)).relu().avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>);
        let want = fc.forward(&block(&block(&x, &c1, &n1), &c2, &n2).flatten(1, -1));
        let got = net.forward(&theta, &x);
        assert!((got - want).abs().max().double_value(&[]) < 1e-5);
        // The layout: 4·9 + 4 + 4 + 4 + 5·4·9 + 5 + 5 + 5 + 10·20 + 10.
        assert_eq!(net.num_params(), 36 + 12 + 180 + 15 + 200 + 10);
        // PyTorch's default bounds: conv1 U(±1/3), fc U(±1/√20); the norms start at 1 and 0.
        tch::manual_seed(0);
        let fresh = net.unflatten(&net.init(Kind::Float, Device::Cpu));
        let max = |t: &Tensor| t.abs().max().double_value(&[]);
        assert!(max(&fresh[0]) <= 1.0 / 3.0 && max(&fresh[8]) <= 1.0 / 20f64.sqrt());
        // Uniform, not tch's narrower or wider draws: most of conv2's 180 weights beyond a quarter
        // of the bound 1/6 (whatever else drew from the generator meanwhile).
        let wide = f64s(&fresh[4]).iter().filter(|v| v.abs() > 1.0 / 24.0).count();
        assert!(max(&fresh[4]) <= 1.0 / 6.0 && wide > 100, "{wide}");
        assert_eq!(f64s(&fresh[2]), vec![1.0; 4]);
        assert_eq!(f64s(&fresh[3]), vec![0.0; 4]);
    }
}
