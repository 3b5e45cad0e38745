//! Layers, parameter binding and files, and a short end-to-end training run.

use rand::SeedableRng;
use rand::rngs::StdRng;
use tapegrad::data;
use tapegrad::nn::{Conv2d, Flatten, Linear, MaxPool2d, Module, Params, ReLU, Sequential};
use tapegrad::optim::{Adam, Optimizer};
use tapegrad::{Conv2dOptions, Error, Pool2dOptions, Tape, Tensor};

fn model(params: &mut Params, seed: u64) -> Sequential {
    let mut rng = StdRng::seed_from_u64(seed);
    Sequential::new()
        .push(Conv2d::with_options(
            params,
            "conv1",
            1,
            8,
            3,
            Conv2dOptions::default().padding(1),
            true,
            &mut rng,
        ))
        .push(ReLU)
        .push(MaxPool2d(Pool2dOptions::new(2)))
        .push(Flatten)
        .push(Linear::with_options(
            params,
            "fc",
            8 * 4 * 4,
            10,
            true,
            &mut rng,
        ))
}

#[test]
fn initialisation_is_seeded_and_bounded_like_pytorch() {
    let (mut a, mut b, mut c) = (Params::new(), Params::new(), Params::new());
    model(&mut a, 7);
    model(&mut b, 7);
    model(&mut c, 8);
    let names: Vec<&str> = a.iter().map(|(_, n, _)| n).collect();
    assert_eq!(
        names,
        ["conv1.weight", "conv1.bias", "fc.weight", "fc.bias"]
    );
    for ((_, n, x), (_, _, y)) in a.iter().zip(b.iter()) {
        assert_eq!(
            x.data(),
            y.data(),
            "{n}: same seed must give the same weights"
        );
    }
    assert_ne!(
        a.get(a.id("fc.weight").unwrap()).data(),
        c.get(c.id("fc.weight").unwrap()).data()
    );
    // kaiming_uniform(a = √5) and the default bias both draw from U(−1/√fan_in, 1/√fan_in).
    for (name, fan_in) in [
        ("conv1.weight", 9.0f64),
        ("conv1.bias", 9.0),
        ("fc.weight", 128.0),
        ("fc.bias", 128.0),
    ] {
        let t = a.get(a.id(name).unwrap());
        let bound = 1.0 / fan_in.sqrt();
        let max = t.data().iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
        assert!(max <= bound, "{name}: {max} exceeds {bound}");
        assert!(
            max > 0.5 * bound,
            "{name}: {max} is far inside {bound}; not uniform over the range?"
        );
    }
}

#[test]
fn sequential_equals_the_hand_written_composition() {
    let mut params = Params::new();
    let net = model(&mut params, 1);
    let x = Tensor::<f32>::randn([2, 1, 8, 8], &mut StdRng::seed_from_u64(2));
    let tape = Tape::new();
    let p = params.bind(&tape);
    let xv = tape.constant(x);
    let seq = net.forward(&p, xv).value();
    let (w1, b1) = (
        p[params.id("conv1.weight").unwrap()],
        p[params.id("conv1.bias").unwrap()],
    );
    let (w2, b2) = (
        p[params.id("fc.weight").unwrap()],
        p[params.id("fc.bias").unwrap()],
    );
    let manual = xv
        .conv2d(w1, Some(b1), Conv2dOptions::default().padding(1))
        .relu()
        .max_pool2d(Pool2dOptions::new(2))
        .flatten()
        .linear(w2, Some(b2))
        .value();
    assert_eq!(seq.data(), manual.data());
}

#[test]
fn safetensors_round_trip_is_bit_identical() {
    let dir = std::env::temp_dir().join(format!("tapegrad_nn_test_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let mut a = Params::new();
    model(&mut a, 3);
    a.save(&path).unwrap();
    let mut b = Params::new();
    model(&mut b, 4); // different values, same names and shapes
    b.load(&path).unwrap();
    for ((_, n, x), (_, _, y)) in a.iter().zip(b.iter()) {
        let (xb, yb): (Vec<u32>, Vec<u32>) = (
            x.data().iter().map(|v| v.to_bits()).collect(),
            y.data().iter().map(|v| v.to_bits()).collect(),
        );
        assert_eq!(xb, yb, "{n}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn loading_mismatched_weights_names_the_parameter() {
    let dir = std::env::temp_dir().join(format!("tapegrad_nn_mismatch_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.safetensors");
    let mut saved = Params::new();
    saved.add("fc.weight", Tensor::zeros([10, 4]));
    saved.add("fc.bias", Tensor::zeros([10]));
    saved.save(&path).unwrap();

    let mut wrong_shape = Params::new();
    wrong_shape.add("fc.weight", Tensor::zeros([10, 5]));
    wrong_shape.add("fc.bias", Tensor::zeros([10]));
    let e = wrong_shape.load(&path).unwrap_err();
    assert!(
        matches!(&e, Error::Parameter { name, .. } if name == "fc.weight"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("[10, 4] in the file but [10, 5] in the model"),
        "{e}"
    );
    assert_eq!(
        wrong_shape
            .get(wrong_shape.id("fc.weight").unwrap())
            .shape()[1],
        5,
        "nothing changes on error"
    );

    let mut missing = Params::new();
    missing.add("fc.weight", Tensor::zeros([10, 4]));
    missing.add("fc.bias", Tensor::zeros([10]));
    missing.add("head.weight", Tensor::zeros([2, 2]));
    let e = missing.load(&path).unwrap_err();
    assert_eq!(
        e.to_string(),
        "parameter `head.weight`: is missing from the file"
    );

    let mut extra = Params::new();
    extra.add("fc.weight", Tensor::zeros([10, 4]));
    let e = extra.load(&path).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("parameter `fc.bias`: is in the file but not in the model"),
        "{e}"
    );

    let e = extra.load(dir.join("absent.safetensors")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A short deterministic run on 300 digits: the loss must fall far and the accuracy
/// on held-out digits must be far above chance (10 %). No timing.
#[test]
fn a_short_training_run_learns_the_digits() {
    let (train, test) = data::digits_train_test();
    let train = train.subset(&(0..300).collect::<Vec<_>>());
    let test = test.subset(&(0..120).collect::<Vec<_>>());
    let norm = train.normalization();
    let mut params = Params::new();
    let net = model(&mut params, 0);
    let mut opt = Adam::new(0.01);
    let mut rng = StdRng::seed_from_u64(0);
    let mut epoch_losses = vec![];
    for _ in 0..8 {
        let mut total = 0.0;
        for batch in train.shuffled_batches::<f32>(30, norm, &mut rng) {
            let (grads, loss) = {
                let tape = Tape::new();
                let p = params.bind(&tape);
                let loss = net
                    .forward(&p, tape.constant(batch.images))
                    .cross_entropy(&batch.labels);
                (p.grads(loss.backward()), loss.value().item())
            };
            opt.step(&mut params, &grads);
            total += loss;
        }
        epoch_losses.push(total / 10.0);
    }
    assert!(epoch_losses[0] > 1.0, "first epoch loss {:?}", epoch_losses);
    assert!(
        epoch_losses[7] < 0.25 * epoch_losses[0],
        "loss did not fall: {epoch_losses:?}"
    );
    let tape = Tape::new();
    let logits = net
        .forward(
            &params.bind_eval(&tape),
            tape.constant(test.to_tensor::<f32>(norm)),
        )
        .value();
    let hits = logits
        .data()
        .chunks_exact(10)
        .enumerate()
        .filter(|(i, row)| {
            let best = (0..10).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            best == test.label(*i)
        })
        .count();
    assert!(
        hits as f64 / test.len() as f64 > 0.8,
        "held-out accuracy {hits}/{}",
        test.len()
    );
}
