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
        let mut params = Params::<f64>::default();
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
    let mut params = Params::<f64>::default();
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
    let mut small = Params::new();
    small.add("a", Tensor::ones([1]));
    let mut big = Params::new();
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
    let mut params = Params::<f64>::default();
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

/// A small model's loss on a fixed batch, for the step tests below.
fn toy_model() -> (Params, tapegrad::nn::Sequential<f32>, Tensor<f32>) {
    use tapegrad::nn::{Conv2d, Flatten, Linear, ReLU, Sequential};
    let mut params = Params::new();
    let model = Sequential::new()
        .push(Conv2d::new(&mut params, "conv", 2, 3, 3).padding(1))
        .push(ReLU)
        .push(Flatten)
        .push(Linear::new(&mut params, "fc", 3 * 4 * 4, 5));
    let x = Tensor::from_vec(
        (0..96)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect(),
        [3, 2, 4, 4],
    )
    .unwrap();
    (params, model, x)
}

/// Stepping with a backward pass's `Gradients` is the same update, to the
/// bit, as stepping with the binding's `ParamGrads`, for every optimizer.
#[test]
fn optimizers_take_a_backward_pass_gradients_directly() {
    use tapegrad::nn::Module;
    type Maker = fn() -> Box<dyn Optimizer<f32>>;
    let makers: Vec<Maker> = vec![
        || Box::new(Sgd::new(0.1).momentum(0.9)),
        || Box::new(Adam::new(0.01)),
        || Box::new(Adam::adamw(0.01, 0.1)),
        || Box::new(RmsProp::new(0.01).momentum(0.5)),
    ];
    for make in makers {
        let (mut a, model, x) = toy_model();
        let mut b = a.clone();
        let (mut oa, mut ob) = (make(), make());
        for _ in 0..3 {
            let tape = Tape::new();
            let loss = model
                .forward(&a.bind(&tape), tape.constant(x.clone()))
                .cross_entropy(&[0, 3, 4]);
            oa.step(&mut a, &loss.backward());
            let tape = Tape::new();
            let p = b.bind(&tape);
            let loss = model
                .forward(&p, tape.constant(x.clone()))
                .cross_entropy(&[0, 3, 4]);
            ob.step(&mut b, &p.grads(loss.backward()));
        }
        for ((_, name, va), (_, _, vb)) in a.iter().zip(b.iter()) {
            assert_eq!(va.data(), vb.data(), "{name}");
        }
        let (_, _, first) = a.iter().next().unwrap();
        let (fresh, _, _) = toy_model();
        assert_ne!(
            first.data(),
            fresh.iter().next().unwrap().2.data(),
            "the step moved the weights"
        );
    }
}

/// A store bound twice to one tape (a model applied to two inputs) gets
/// the sum of both uses' gradients, as in PyTorch.
#[test]
fn a_store_bound_twice_gets_the_sum_of_both_gradients() {
    use tapegrad::nn::{Module, ParamGradsSource};
    let (params, model, x) = toy_model();
    let x2 = x.map(|v| v * 0.5 - 0.25);
    let tape = Tape::new();
    let (p1, p2) = (params.bind(&tape), params.bind(&tape));
    let l1 = model
        .forward(&p1, tape.constant(x.clone()))
        .cross_entropy(&[1, 2, 0]);
    let l2 = model
        .forward(&p2, tape.constant(x2.clone()))
        .cross_entropy(&[4, 4, 1]);
    let both = (l1 + l2).backward();
    let summed = both.param_grads(&params);
    let one = |x: &Tensor<f32>, y: &[usize]| {
        let tape = Tape::new();
        let p = params.bind(&tape);
        let loss = model.forward(&p, tape.constant(x.clone())).cross_entropy(y);
        p.grads(loss.backward())
    };
    let (g1, g2) = (one(&x, &[1, 2, 0]), one(&x2, &[4, 4, 1]));
    for (id, name, _) in params.iter() {
        let want = g1[id].zip_map(&g2[id], "test", |a, b| a + b);
        assert_eq!(summed[id].data(), want.data(), "{name}");
    }
}

#[test]
#[should_panic(
    expected = "Adam::step: the gradients were computed on a tape these parameters were not bound to"
)]
fn gradients_of_a_tape_the_store_was_not_bound_to_are_rejected() {
    let mut params = Params::new();
    params.add("w", Tensor::ones([2]));
    let mut other = Params::new();
    let v = other.add("v", Tensor::ones([2]));
    let tape = Tape::new();
    let _eval = params.bind_eval(&tape); // an evaluation binding has no gradients
    let grads = other.bind(&tape)[v].sum().backward();
    Adam::new(0.1).step(&mut params, &grads);
}

/// Layers' short constructors draw from the store's generator: the same
/// model on every run, another one after `set_seed`, PyTorch's bounds.
#[test]
fn short_constructors_initialise_reproducibly_from_the_store_seed() {
    use tapegrad::nn::{Conv2d, Linear};
    let build = |seed: Option<u64>| {
        let mut p = Params::new();
        if let Some(s) = seed {
            p.set_seed(s);
        }
        let c = Conv2d::new(&mut p, "c", 4, 6, 3);
        let l = Linear::new(&mut p, "l", 10, 2);
        (p, c, l)
    };
    let (a, c, l) = build(None);
    let (b, _, _) = build(None);
    let (s, _, _) = build(Some(1));
    for ((_, n, va), ((_, _, vb), (_, _, vs))) in a.iter().zip(b.iter().zip(s.iter())) {
        assert_eq!(va.data(), vb.data(), "{n}");
        assert_ne!(va.data(), vs.data(), "{n}");
    }
    let bound = |t: &Tensor<f32>, fan_in: usize| {
        t.data()
            .iter()
            .all(|v| v.abs() <= 1.0 / (fan_in as f32).sqrt())
    };
    assert!(bound(a.get(c.weight), 36) && bound(a.get(c.bias.unwrap()), 36));
    assert!(bound(a.get(l.weight), 10) && bound(a.get(l.bias.unwrap()), 10));
    // The two layers draw from different generators: not the same numbers.
    assert_ne!(&a.get(c.weight).data()[..20], &a.get(l.weight).data()[..20]);
}
