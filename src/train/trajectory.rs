//! Trajectory matching (MTT, Cazenavette et al. 2022, and its successors): a student unrolled for
//! N differentiable steps on a synthetic set from an expert's checkpoint, and the normalised
//! distance of where it lands to the expert's later checkpoints. The images and the student's lr
//! get their gradient through the unroll.

use tch::Tensor;

use crate::models::functional::ConvNet;

/// Mean cross-entropy in the logits' own precision (tch's `cross_entropy_for_logits` computes
/// the log-softmax in f32, which would spoil the f64 finite-difference test).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    -logits.log_softmax(-1, logits.kind()).gather(1, &labels.view([-1, 1]), false).mean(logits.kind())
}

/// MTT's normalised matching loss ‖θ̂ − θ*‖² / ‖θ_start − θ*‖² (sums over every parameter).
pub fn matching_loss(student: &Tensor, start: &Tensor, target: &Tensor) -> Tensor {
    (student - target).square().sum(student.kind()) / (start - target).square().sum(student.kind())
}

/// The student steps whose states AST also matches (`--agg_middle_loss`): ⌊N/M⌋·i for i = 1..M−1,
/// strictly inside the unroll.
pub fn middle_steps(syn_steps: usize, match_epochs: usize) -> Vec<usize> {
    (1..match_epochs).map(|i| syn_steps / match_epochs * i).filter(|&s| s > 0 && s < syn_steps).collect()
}

/// The outer objective: the final state against θ*_{s+M} plus each kept intermediate state i against
/// θ*_{s+i+1}, every term with weight 1 and its own normaliser from the (perturbed) start.
/// `segment` is θ*_s..=θ*_{s+M}.
pub fn trajectory_objective(end: &Tensor, kept: &[Tensor], start: &Tensor, segment: &[Tensor]) -> Tensor {
    let mut loss = matching_loss(end, start, segment.last().unwrap());
    for (i, state) in kept.iter().enumerate() {
        loss = loss + matching_loss(state, start, &segment[i + 1]);
    }
    loss
}

/// What a student's unroll needs besides the images.
pub struct Unroll<'a> {
    pub net: &'a ConvNet,
    pub labels: &'a Tensor,
    pub steps: usize,
    pub momentum: f64,
    /// Scales the inner CE (the balance factor; 1 for MTT).
    pub ce_scale: f64,
    /// Student steps after which the state is kept (for intermediate matching).
    pub keep_after: Vec<usize>,
}

/// N differentiable student steps from `start` on `images` with the learnable lr `syn_lr`:
/// b_j = μ·b_{j−1} + ∇CE, θ_{j+1} = θ_j − lr·b_j (μ = 0: plain SGD). `augment` is applied to the
/// images on every step. Returns θ_N and the kept intermediate states.
pub fn unroll(u: &Unroll, start: &Tensor, images: &Tensor, syn_lr: &Tensor, mut augment: impl FnMut(&Tensor) -> Tensor) -> (Tensor, Vec<Tensor>) {
    let mut theta = start.detach().set_requires_grad(true);
    let mut buf: Option<Tensor> = None;
    let mut kept = Vec::new();
    for step in 0..u.steps {
        let x = augment(images);
        let ce = cross_entropy(&u.net.forward(&theta, &x), u.labels) * u.ce_scale;
        let g = Tensor::run_backward(&[&ce], &[&theta], true, true).remove(0);
        let b = match buf {
            Some(prev) if u.momentum != 0.0 => prev * u.momentum + g,
            _ => g,
        };
        theta = &theta - syn_lr * &b;
        buf = Some(b);
        if u.keep_after.contains(&(step + 1)) {
            kept.push(theta.shallow_clone());
        }
    }
    (theta, kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::f64s;
    use tch::{Device, Kind};

    fn tiny() -> ConvNet {
        ConvNet { image: [1, 4, 4], widths: [2, 3], classes: 3, instance_norm: true }
    }

    #[test]
    fn the_gradient_through_the_unrolled_student_matches_finite_differences() {
        tch::manual_seed(5);
        let net = tiny();
        let start = net.init(Kind::Double, Device::Cpu);
        let target = &start + Tensor::randn([net.num_params()], (Kind::Double, Device::Cpu)) * 0.05;
        let labels = Tensor::from_slice(&[0i64, 2]);
        let images = Tensor::randn([2, 1, 4, 4], (Kind::Double, Device::Cpu));
        let lr = Tensor::from(0.3f64);
        for momentum in [0.0, 0.9] {
            let u = Unroll { net: &net, labels: &labels, steps: 2, momentum, ce_scale: 1.3, keep_after: vec![1] };
            let loss_at = |x: &Tensor, lr: &Tensor| {
                let (end, kept) = unroll(&u, &start, x, lr, |v| v.shallow_clone());
                matching_loss(&end, &start, &target) + matching_loss(&kept[0], &start, &target) * 0.5
            };
            let x = images.detach().set_requires_grad(true);
            let l = lr.detach().set_requires_grad(true);
            let g = Tensor::run_backward(&[&loss_at(&x, &l)], &[&x, &l], false, false);
            let (gx, gl) = (f64s(&g[0]), g[1].double_value(&[]));
            let h = 1e-6;
            for i in [0usize, 5, 17, 31] {
                let bump = |s: f64| {
                    let v = images.copy();
                    let _ = v.view([-1]).get(i as i64).f_add_scalar_(s);
                    loss_at(&v, &lr).double_value(&[])
                };
                let fd = (bump(h) - bump(-h)) / (2.0 * h);
                assert!((fd - gx[i]).abs() < 1e-6 * (1.0 + fd.abs()), "momentum {momentum}, pixel {i}: autograd {} vs FD {fd}", gx[i]);
            }
            let fd = (loss_at(&images, &Tensor::from(0.3 + h)).double_value(&[]) - loss_at(&images, &Tensor::from(0.3 - h)).double_value(&[])) / (2.0 * h);
            assert!((fd - gl).abs() < 1e-6 * (1.0 + fd.abs()), "momentum {momentum}, lr: {gl} vs {fd}");
        }
    }

    #[test]
    fn no_inner_steps_give_a_loss_of_exactly_one_and_momentum_changes_the_second_step() {
        tch::manual_seed(1);
        let net = tiny();
        let start = net.init(Kind::Double, Device::Cpu);
        let target = &start + 0.1;
        let labels = Tensor::from_slice(&[1i64]);
        let x = Tensor::randn([1, 1, 4, 4], (Kind::Double, Device::Cpu));
        let lr = Tensor::from(0.1f64);
        let u = Unroll { net: &net, labels: &labels, steps: 0, momentum: 0.0, ce_scale: 1.0, keep_after: vec![] };
        let (end, _) = unroll(&u, &start, &x, &lr, |v| v.shallow_clone());
        assert_eq!(matching_loss(&end, &start, &target).double_value(&[]), 1.0);
        // Two steps: with momentum μ the second step is lr·(μ·g₀ + g₁), without it lr·g₁.
        let run = |m: f64, steps: usize| unroll(&Unroll { net: &net, labels: &labels, steps, momentum: m, ce_scale: 1.0, keep_after: vec![] }, &start, &x, &lr, |v| v.shallow_clone()).0.detach();
        let one = run(0.0, 1);
        let g0 = (&start - &one) / 0.1;
        let (plain, heavy) = (run(0.0, 2), run(0.9, 2));
        let diff = ((&plain - &heavy) - &g0 * (0.9 * 0.1)).abs().max().double_value(&[]);
        assert!(diff < 1e-12, "{diff}");
    }

    #[test]
    fn the_student_is_heavy_ball_over_three_steps() {
        tch::manual_seed(2);
        let net = tiny();
        let start = net.init(Kind::Double, Device::Cpu);
        let labels = Tensor::from_slice(&[1i64, 0]);
        let x = Tensor::randn([2, 1, 4, 4], (Kind::Double, Device::Cpu));
        let lr = Tensor::from(0.2f64);
        let u = Unroll { net: &net, labels: &labels, steps: 3, momentum: 0.9, ce_scale: 1.0, keep_after: vec![1, 2] };
        let (end, kept) = unroll(&u, &start, &x, &lr, |v| v.shallow_clone());
        // By hand: b_j = 0.9·b_{j−1} + g_j (not 0.9·g_{j−1} + g_j, which differs from step 3).
        let (mut theta, mut b) = (start.copy(), start.zeros_like());
        let mut states = Vec::new();
        for _ in 0..3 {
            let th = theta.detach().set_requires_grad(true);
            let g = Tensor::run_backward(&[&cross_entropy(&net.forward(&th, &x), &labels)], &[&th], false, false).remove(0);
            b = &b * 0.9 + g;
            theta = th.detach() - &b * 0.2;
            states.push(theta.copy());
        }
        for (a, want) in kept.iter().chain([&end]).zip(&states) {
            assert!((a.detach() - want).abs().max().double_value(&[]) < 1e-12);
        }
    }

    #[test]
    fn intermediate_states_are_matched_to_the_next_expert_epochs() {
        assert_eq!(middle_steps(20, 3), vec![6, 12]);
        assert_eq!(middle_steps(10, 2), vec![5]);
        assert!(middle_steps(10, 1).is_empty());
        let seg: Vec<Tensor> = [0.0f64, 1.0, 3.0].iter().map(|v| Tensor::from_slice(&[*v, -*v])).collect();
        // States on the expert's own path cost nothing; one epoch off costs its normalised distance.
        assert_eq!(trajectory_objective(&seg[2], &[seg[1].shallow_clone()], &seg[0], &seg).double_value(&[]), 0.0);
        let off = trajectory_objective(&seg[2], &[seg[2].shallow_clone()], &seg[0], &seg).double_value(&[]);
        assert!((off - 4.0 * 2.0 / 2.0).abs() < 1e-12, "{off}"); // ‖3−1‖²·2 / ‖0−1‖²·2
        // Without middle states: the final term alone, 1 at the start.
        assert_eq!(trajectory_objective(&seg[0], &[], &seg[0], &seg).double_value(&[]), 1.0);
    }
}
