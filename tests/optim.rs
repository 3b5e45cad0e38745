//! Optimizer steps against torch.optim (tests/fixtures/optim.txt): five steps of each
//! configuration from the same parameter and gradient sequence.

mod common;
use common::fixtures::{self, Case};
use tapegrad::nn::Params;
use tapegrad::optim::{Adam, Optimizer, Schedule, Sgd};
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
    let cases = fixtures::load("optim.txt");
    assert!(cases.len() >= 9);
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
#[should_panic(expected = "Sgd::step: 1 parameters but 2 gradients")]
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
