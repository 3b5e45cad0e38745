//! Optimizer checkpoints: saving a model and its optimizer mid-training and resuming
//! from fresh objects gives bit-identical parameters to an uninterrupted run; a state
//! that does not fit is rejected with a clear error, changing nothing.

use rand::SeedableRng;
use std::path::PathBuf;
use tapegrad::data::{self, Batch};
use tapegrad::nn::{Conv2d, Flatten, Linear, Module, Params, ReLU, Sequential};
use tapegrad::optim::{Adam, Optimizer, OptimizerState, RmsProp, Schedule, Sgd};
use tapegrad::{Conv2dOptions, Tape, Tensor};

/// A tiny CNN for the 8×8 digits, its parameters drawn from `seed`.
fn model(seed: u64) -> (Params<f32>, Sequential<f32>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut params = Params::new();
    let conv = Conv2d::with_options(
        &mut params,
        "conv1",
        1,
        4,
        3,
        Conv2dOptions {
            padding: 1.into(),
            ..Default::default()
        },
        true,
        &mut rng,
    );
    let fc = Linear::with_options(&mut params, "fc", 4 * 8 * 8, 10, true, &mut rng);
    let net = Sequential::new()
        .push(conv)
        .push(ReLU)
        .push(Flatten)
        .push(fc);
    (params, net)
}

fn batches(n: usize) -> Vec<Batch<f32>> {
    let d = data::digits();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    d.shuffled_batches::<f32>(32, d.normalization(), &mut rng)
        .take(n)
        .collect()
}

/// One step on `batch`, with a warm-up + one-cycle schedule peaking at `base_lr`,
/// and gradient clipping.
fn train_step(
    net: &Sequential<f32>,
    params: &mut Params<f32>,
    opt: &mut dyn Optimizer<f32>,
    batch: &Batch<f32>,
    step: usize,
    base_lr: f64,
) {
    let schedule = Schedule::warmup(0.2, 3, Schedule::one_cycle(base_lr, 20));
    let mut grads = {
        let tape = Tape::new();
        let p = params.bind(&tape);
        let x = tape.constant(batch.images.clone());
        p.grads(net.forward(&p, x).cross_entropy(&batch.labels).backward())
    };
    grads.clip_norm(5.0, 2.0);
    opt.set_lr(schedule.at(step));
    opt.step(params, &grads);
}

type MakeOpt = fn() -> Box<dyn Optimizer<f32>>;

fn optimizers() -> Vec<(&'static str, f64, MakeOpt, MakeOpt)> {
    // (name, peak rate, the optimizer, a differently configured one of the same kind to load into)
    vec![
        (
            "sgd",
            0.05,
            || {
                Box::new(
                    Sgd::new(0.05)
                        .momentum(0.9)
                        .nesterov(true)
                        .weight_decay(1e-3),
                )
            },
            || Box::new(Sgd::new(1.0)),
        ),
        (
            "sgd_dampening",
            0.05,
            || Box::new(Sgd::new(0.05).momentum(0.8).dampening(0.3)),
            || Box::new(Sgd::new(1.0).momentum(0.1)),
        ),
        (
            "adam_amsgrad",
            0.01,
            || Box::new(Adam::new(0.01).amsgrad(true).weight_decay(1e-3)),
            || Box::new(Adam::new(1.0)),
        ),
        (
            "adamw",
            0.01,
            || Box::new(Adam::adamw(0.01, 0.05).betas(0.8, 0.99)),
            || Box::new(Adam::adamw(1.0, 0.0)),
        ),
        (
            "rmsprop",
            0.003,
            || {
                Box::new(
                    RmsProp::new(0.003)
                        .momentum(0.9)
                        .centered(true)
                        .weight_decay(1e-3),
                )
            },
            || Box::new(RmsProp::new(1.0)),
        ),
    ]
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "tapegrad-optim-state-{}-{name}.safetensors",
        std::process::id()
    ))
}

fn bits(params: &Params<f32>) -> Vec<(String, Vec<u32>)> {
    params
        .iter()
        .map(|(_, n, t)| {
            (
                n.to_string(),
                t.data().iter().map(|v| v.to_bits()).collect(),
            )
        })
        .collect()
}

#[test]
fn resuming_from_a_checkpoint_is_bit_identical() {
    const K: usize = 4;
    const TOTAL: usize = 9;
    let data = batches(TOTAL);
    for (name, lr, make, make_other) in optimizers() {
        // Uninterrupted.
        let (mut params, net) = model(1);
        let mut opt = make();
        for (step, b) in data.iter().enumerate() {
            train_step(&net, &mut params, opt.as_mut(), b, step, lr);
        }
        let want = bits(&params);

        // K steps, save, resume in fresh objects.
        let (mut params, net) = model(1);
        let mut opt = make();
        for (step, b) in data[..K].iter().enumerate() {
            train_step(&net, &mut params, opt.as_mut(), b, step, lr);
        }
        let (model_path, opt_path) = (temp(&format!("{name}-model")), temp(name));
        params.save(&model_path).unwrap();
        opt.save_state(&params, &opt_path).unwrap();
        drop((params, net, opt));

        let (mut params, net) = model(2); // different initial values, overwritten by load
        params.load(&model_path).unwrap();
        let mut opt = make_other();
        opt.load_state(&params, &opt_path).unwrap();
        for (step, b) in data.iter().enumerate().skip(K) {
            train_step(&net, &mut params, opt.as_mut(), b, step, lr);
        }
        std::fs::remove_file(&model_path).unwrap();
        std::fs::remove_file(&opt_path).unwrap();
        assert_eq!(bits(&params), want, "{name}: the resumed run differs");
    }
}

#[test]
fn state_entries_are_named_by_parameter() {
    let (mut params, net) = model(1);
    let mut opt = RmsProp::new(0.01).momentum(0.5).centered(true);
    train_step(&net, &mut params, &mut opt, &batches(1)[0], 0, 0.01);
    let s = opt.state_dict(&params);
    assert_eq!(s.kind, "RMSprop");
    assert_eq!(
        s.params,
        ["conv1.weight", "conv1.bias", "fc.weight", "fc.bias"]
    );
    assert_eq!(s.steps[0], ("conv1.weight".to_string(), 1));
    let names: Vec<&str> = s.buffers.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"square_avg.fc.weight"));
    assert!(names.contains(&"momentum_buffer.conv1.bias"));
    assert!(names.contains(&"grad_avg.conv1.weight"));
    assert_eq!(s.buffers.len(), 12);
    let back = OptimizerState::<f32>::from_bytes(&s.to_bytes().unwrap()).unwrap();
    assert_eq!(back.steps.len(), 4);
    assert_eq!(back.hyper("momentum"), Some(0.5));
    assert_eq!(back.hyper("centered"), Some(1.0));
    // The buffers are plain named tensors: any safetensors reader sees them.
    let plain = tapegrad::io::from_safetensors_bytes::<f32>(&s.to_bytes().unwrap()).unwrap();
    assert_eq!(plain.len(), 12);
}

/// An Adam state after one step on `params`.
fn adam_state(params: &mut Params<f32>, net: &Sequential<f32>) -> (Adam<f32>, Vec<u8>) {
    let mut opt = Adam::new(0.01).amsgrad(true);
    train_step(net, params, &mut opt, &batches(1)[0], 0, 0.01);
    let bytes = opt.save_state_bytes(params).unwrap();
    (opt, bytes)
}

#[test]
fn mismatched_states_are_rejected_and_change_nothing() {
    let (mut params, net) = model(1);
    let (_, bytes) = adam_state(&mut params, &net);
    let fresh = || Adam::<f32>::new(0.5);
    let unchanged = |opt: &Adam<f32>| {
        assert_eq!(opt.lr, 0.5);
        assert!(opt.state_dict(&params).steps.is_empty());
    };

    // Another optimizer kind.
    let mut rms = RmsProp::<f32>::new(0.1);
    let err = rms.load_state_bytes(&params, &bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "optimizer state: holds the state of Adam, cannot be loaded into RMSprop"
    );
    assert_eq!(rms.lr, 0.1);
    let err = Adam::<f32>::adamw(0.1, 0.0)
        .load_state_bytes(&params, &bytes)
        .unwrap_err();
    assert!(err.to_string().contains("cannot be loaded into AdamW"));

    // A model with other parameter names.
    let mut other = Params::new();
    for (_, n, t) in params.iter() {
        let n = if n == "fc.bias" { "head.bias" } else { n };
        other.add(n, t.clone());
    }
    let mut opt = fresh();
    let err = opt.load_state_bytes(&other, &bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "parameter `head.bias`: is in the model but not in the optimizer state"
    );
    unchanged(&opt);

    // A model with an extra parameter.
    let mut bigger = params.clone();
    bigger.add("extra", Tensor::zeros([1]));
    let err = fresh().load_state_bytes(&bigger, &bytes).unwrap_err();
    assert!(err.to_string().starts_with("parameter `extra`"));
    // A model lacking one.
    let mut smaller = Params::new();
    for (_, n, t) in params.iter().take(3) {
        smaller.add(n, t.clone());
    }
    let err = fresh().load_state_bytes(&smaller, &bytes).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("parameter `fc.bias`: is in the optimizer state but not in the model")
    );

    // Same names, another shape.
    let mut reshaped = Params::new();
    for (_, n, t) in params.iter() {
        let t = if n == "fc.bias" {
            Tensor::zeros([11])
        } else {
            t.clone()
        };
        reshaped.add(n, t);
    }
    let err = fresh().load_state_bytes(&reshaped, &bytes).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("parameter `exp_avg.fc.bias`: has shape [10] in the optimizer state"),
        "{err}"
    );

    // A missing buffer, an unexpected one, a missing hyper-parameter.
    let state = OptimizerState::<f32>::from_bytes(&bytes).unwrap();
    let mut missing = state.clone();
    missing
        .buffers
        .retain(|(n, _)| n != "max_exp_avg_sq.conv1.bias");
    let mut opt = fresh();
    let err = opt.load_state_dict(&params, missing).unwrap_err();
    assert_eq!(
        err.to_string(),
        "parameter `max_exp_avg_sq.conv1.bias`: is missing from the optimizer state"
    );
    unchanged(&opt);
    let mut extra = state.clone();
    extra
        .buffers
        .push(("momentum_buffer.fc.bias".into(), Tensor::zeros([10])));
    let err = fresh().load_state_dict(&params, extra).unwrap_err();
    assert_eq!(
        err.to_string(),
        "parameter `momentum_buffer.fc.bias`: is in the optimizer state but not expected by this optimizer"
    );
    let mut no_lr = state.clone();
    no_lr.hyper.retain(|(n, _)| n != "lr");
    let err = fresh().load_state_dict(&params, no_lr).unwrap_err();
    assert_eq!(
        err.to_string(),
        "optimizer state: hyper-parameter `lr` is missing"
    );

    // The wrong element type, and a file that is not an optimizer state.
    assert!(
        Adam::<f64>::new(0.1)
            .load_state_bytes(&Params::<f64>::default(), &bytes)
            .is_err()
    );
    let plain = tapegrad::io::to_safetensors_bytes(&[("w", &Tensor::<f32>::ones([1]))]).unwrap();
    assert!(
        fresh()
            .load_state_bytes(&params, &plain)
            .unwrap_err()
            .to_string()
            .contains("not an optimizer state file")
    );

    // The state itself loads.
    let mut opt = fresh();
    opt.load_state_dict(&params, state).unwrap();
    assert_eq!(
        opt.lr,
        Schedule::warmup(0.2, 3, Schedule::one_cycle(0.01, 20)).at(0)
    );
}

#[test]
fn load_errors_name_the_file() {
    let params = Params::new();
    let path = temp("not-a-state");
    tapegrad::io::save_safetensors(&path, &[("w", &Tensor::<f32>::ones([1]))]).unwrap();
    let err = Sgd::<f32>::new(0.1).load_state(&params, &path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}
