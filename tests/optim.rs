//! Optimizers against torch.optim (tests/fixtures/optim.txt): five steps of each
//! configuration from the same parameter and gradient sequence, and learning-rate
//! schedules against torch.optim.lr_scheduler; gradient clipping.

mod common;
use common::fixtures::{self, Case};
use tapegrad::nn::Params;
use tapegrad::optim::{Adam, Anneal, OneCycle, Optimizer, RmsProp, Schedule, Sgd};
use tapegrad::{Tape, Tensor};

fn tensor(case: &Case, name: &str) -> Tensor<f64> {
    let (shape, data) = case.tensor(name);
    Tensor::from_vec(data.to_vec(), shape).unwrap()
}

fn optimizer_for(case: &Case) -> Box<dyn Optimizer<f64>> {
    let lr = case.param_f64("lr");
    let wd = case.param_f64("weight_decay");
    if case.name.starts_with("sgd") {
        Box::new(
            Sgd::new(lr)
                .momentum(case.param_f64("momentum"))
                .dampening(case.param_f64("dampening"))
                .weight_decay(wd)
                .nesterov(case.param_bool("nesterov")),
        )
    } else if case.name.starts_with("rmsprop") {
        Box::new(
            RmsProp::new(lr)
                .alpha(case.param_f64("alpha"))
                .eps(case.param_f64("eps"))
                .weight_decay(wd)
                .momentum(case.param_f64("momentum"))
                .centered(case.param_bool("centered")),
        )
    } else {
        let base = if case.name == "adamw" {
            Adam::adamw(lr, wd)
        } else {
            Adam::new(lr).weight_decay(wd)
        };
        Box::new(
            base.betas(case.param_f64("beta1"), case.param_f64("beta2"))
                .eps(case.param_f64("eps"))
                .amsgrad(case.param_bool("amsgrad")),
        )
    }
}

#[test]
fn every_optimizer_matches_torch_for_five_steps() {
    let cases: Vec<Case> = fixtures::load("optim.txt")
        .into_iter()
        .filter(|c| !c.name.starts_with("sched_"))
        .collect();
    assert!(cases.len() >= 13);
    assert_eq!(
        cases
            .iter()
            .filter(|c| c.name.starts_with("rmsprop"))
            .count(),
        4
    );
    for case in &cases {
        let mut params = Params::<f64>::new();
        let w = params.add("w", tensor(case, "p0"));
        let mut opt = optimizer_for(case);
        for k in 1..=5 {
            let g = tensor(case, &format!("g{k}"));
            // A loss whose gradient with respect to w is exactly g: L = Σ w ⊙ g.
            let grads = {
                let tape = Tape::new();
                let p = params.bind(&tape);
                p.grads((p[w] * tape.constant(g)).sum().backward())
            };
            opt.step(&mut params, &grads);
            let want = tensor(case, &format!("p{k}"));
            let d = params.get(w).max_abs_diff(&want);
            assert!(
                d < 1e-12,
                "{} step {k}: differs from torch by {d:e}",
                case.name
            );
        }
    }
}

#[test]
fn parameters_without_gradient_are_untouched() {
    let mut params = Params::<f64>::new();
    let a = params.add("a", Tensor::ones([2]));
    let b = params.add("b", Tensor::ones([2]));
    let mut opt = Adam::new(0.1);
    let grads = {
        let tape = Tape::new();
        let p = params.bind(&tape);
        p.grads(p[a].sum().backward())
    };
    opt.step(&mut params, &grads);
    assert_eq!(params.get(b).data(), &[1.0, 1.0]);
    assert!(params.get(a).data()[0] < 1.0);
}

#[test]
fn schedules() {
    let s = Schedule::Cosine {
        base: 0.1,
        min: 0.001,
        total: 4,
    };
    let lrs: Vec<f64> = (0..=5).map(|i| s.at(i)).collect();
    assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
    assert!((lrs[4] - 0.001).abs() < 1e-15 && (lrs[5] - 0.001).abs() < 1e-15);
    let mut opt = Sgd::<f32>::new(1.0);
    opt.set_lr(
        Schedule::Step {
            base: 1.0,
            gamma: 0.5,
            every: 2,
        }
        .at(4),
    );
    assert_eq!(opt.lr(), 0.25);
}

#[test]
#[should_panic(expected = "Sgd::step: the gradients are of another model's parameters")]
fn gradients_from_another_model_are_rejected() {
    let mut small = Params::<f32>::new();
    small.add("a", Tensor::ones([1]));
    let mut big = Params::<f32>::new();
    let x = big.add("x", Tensor::ones([1]));
    big.add("y", Tensor::ones([1]));
    let tape = Tape::new();
    let p = big.bind(&tape);
    let grads = p.grads(p[x].sum().backward());
    Sgd::new(0.1).step(&mut small, &grads);
}

/// The schedule a `sched_*` fixture case describes.
fn schedule_for(case: &Case) -> Schedule {
    let usize_param = |k: &str| case.param_usize(k)[0];
    if case.name.starts_with("sched_warmup") {
        let inner = if case.name.ends_with("cosine") {
            Schedule::Cosine {
                base: case.param_f64("base"),
                min: case.param_f64("min"),
                total: usize_param("total"),
            }
        } else {
            Schedule::Step {
                base: case.param_f64("base"),
                gamma: case.param_f64("gamma"),
                every: usize_param("every"),
            }
        };
        Schedule::warmup(case.param_f64("start_factor"), usize_param("warmup"), inner)
    } else {
        OneCycle::new(case.param_f64("max_lr"), usize_param("total_steps"))
            .pct_start(case.param_f64("pct_start"))
            .anneal(if case.param_bool("anneal") {
                Anneal::Linear
            } else {
                Anneal::Cos
            })
            .div_factor(case.param_f64("div_factor"))
            .final_div_factor(case.param_f64("final_div_factor"))
            .three_phase(case.param_bool("three_phase"))
            .into()
    }
}

#[test]
fn warmup_and_one_cycle_match_torch_schedulers() {
    let cases: Vec<Case> = fixtures::load("optim.txt")
        .into_iter()
        .filter(|c| c.name.starts_with("sched_"))
        .collect();
    assert_eq!(cases.len(), 6);
    for case in &cases {
        let s = schedule_for(case);
        let (_, want) = case.tensor("lr");
        for (step, &w) in want.iter().enumerate() {
            let got = s.at(step);
            assert!(
                (got - w).abs() <= 1e-12 * w.abs().max(1e-3),
                "{} step {step}: {got} but torch gives {w}",
                case.name
            );
        }
    }
}

#[test]
fn one_cycle_past_the_end_stays_at_the_last_rate() {
    let s = OneCycle::new(0.1, 20);
    assert_eq!(s.at(25), s.at(20));
    let w = Schedule::warmup(0.5, 0, Schedule::Constant(0.3));
    assert_eq!(w.at(0), 0.3);
}

/// Gradients of `L = Σ w ⊙ g` for each given `g`: exactly the `g`s.
fn grads_equal_to(gs: &[Vec<f64>]) -> (Params<f64>, tapegrad::nn::ParamGrads<f64>) {
    let mut params = Params::<f64>::new();
    let ids: Vec<_> = gs
        .iter()
        .enumerate()
        .map(|(i, g)| params.add(format!("p{i}"), Tensor::zeros([g.len()])))
        .collect();
    let grads = {
        let tape = Tape::new();
        let p = params.bind(&tape);
        let mut loss = tape.constant(Tensor::scalar(0.0));
        for (id, g) in ids.iter().zip(gs) {
            let g = tape.constant(Tensor::from_vec(g.clone(), [g.len()]).unwrap());
            loss = loss + (p[*id] * g).sum();
        }
        p.grads(loss.backward())
    };
    (params, grads)
}

fn flat(grads: &tapegrad::nn::ParamGrads<f64>) -> Vec<f64> {
    grads
        .as_slice()
        .iter()
        .flatten()
        .flat_map(|g| g.data().to_vec())
        .collect()
}

#[test]
fn clip_norm_follows_clip_grad_norm() {
    // Total 2-norm over both tensors: √(9 + 16 + 144) = 13.
    let (_, mut g) = grads_equal_to(&[vec![3.0, 4.0], vec![12.0]]);
    let total = g.clip_norm(6.5, 2.0);
    assert_eq!(total, 13.0);
    let c = 6.5 / (13.0 + 1e-6);
    assert_eq!(flat(&g), vec![3.0 * c, 4.0 * c, 12.0 * c]);
    // Under the limit (max_norm / (total + 1e-6) ≥ 1): untouched, total still returned.
    let (_, mut g) = grads_equal_to(&[vec![3.0, 4.0], vec![12.0]]);
    assert_eq!(g.clip_norm(20.0, 2.0), 13.0);
    assert_eq!(flat(&g), vec![3.0, 4.0, 12.0]);
    // Infinity norm: the largest magnitude.
    let (_, mut g) = grads_equal_to(&[vec![-5.0, 1.0], vec![2.0]]);
    assert_eq!(g.clip_norm(1.0, f64::INFINITY), 5.0);
    let c = 1.0 / (5.0 + 1e-6);
    assert_eq!(flat(&g), vec![-5.0 * c, 1.0 * c, 2.0 * c]);
    // 1-norm and a general p.
    let (_, mut g) = grads_equal_to(&[vec![-1.0, 2.0], vec![3.0]]);
    assert_eq!(g.clip_norm(100.0, 1.0), 6.0);
    let (_, mut g) = grads_equal_to(&[vec![1.0, 2.0], vec![2.0]]);
    assert!((g.clip_norm(100.0, 3.0) - 17f64.powf(1.0 / 3.0)).abs() < 1e-15);
}

#[test]
fn clip_norm_with_non_finite_gradients_proceeds_like_torch() {
    let (_, mut g) = grads_equal_to(&[vec![1.0, f64::NAN], vec![2.0]]);
    assert!(g.clip_norm(1.0, 2.0).is_nan());
    assert!(flat(&g).iter().all(|v| v.is_nan()));
    let (_, mut g) = grads_equal_to(&[vec![1.0, f64::INFINITY], vec![-2.0]]);
    assert_eq!(g.clip_norm(1.0, 2.0), f64::INFINITY);
    let v = flat(&g);
    assert_eq!((v[0], v[2]), (0.0, -0.0));
    assert!(v[1].is_nan()); // inf · 0
}

#[test]
fn clip_value_clamps_each_element() {
    let (_, mut g) = grads_equal_to(&[vec![-3.0, 0.25, f64::NAN], vec![7.0]]);
    g.clip_value(1.0);
    let v = flat(&g);
    assert_eq!(&v[..2], &[-1.0, 0.25]);
    assert!(v[2].is_nan());
    assert_eq!(v[3], 1.0);
}
