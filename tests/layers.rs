//! Dropout, training and evaluation modes, buffers saved with the weights,
//! and graph-free inference.

mod common;
use common::fixtures;
use common::panics::panic_message;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tapegrad::gradcheck::{Options, gradcheck};
use tapegrad::nn::{
    BatchNorm, BatchNormOptions, Dropout, Flatten, Linear, Mode, Module, Params, ReLU, Sequential,
    Tanh, predict,
};
use tapegrad::{Tape, Tensor};

#[test]
fn dropout_gradients_with_a_fixed_mask() {
    let x = Tensor::<f64>::randn([2, 3, 4, 4], &mut StdRng::seed_from_u64(1));
    for p in [0.0, 0.3, 0.7] {
        // A fresh RNG with the same seed on every evaluation: the same mask.
        let r = gradcheck(
            |_, v| v[0].dropout(p, &mut StdRng::seed_from_u64(5)),
            std::slice::from_ref(&x),
            Options::default(),
        );
        assert!(r.passed() && r.checked > 0, "dropout p={p}: {r}");
        let r = gradcheck(
            |_, v| v[0].dropout2d(p, &mut StdRng::seed_from_u64(5)),
            std::slice::from_ref(&x),
            Options::default(),
        );
        assert!(r.passed() && r.checked > 0, "dropout2d p={p}: {r}");
    }
}

#[test]
fn dropout_scales_survivors_and_keeps_the_mean() {
    let tape = Tape::<f64>::new();
    let x = tape.leaf(Tensor::ones([200, 50]));
    let mut rng = StdRng::seed_from_u64(3);
    let y = x.dropout(0.25, &mut rng).value();
    assert!(y.data().iter().all(|&v| v == 0.0 || v == 1.0 / 0.75));
    let kept = y.data().iter().filter(|&&v| v > 0.0).count() as f64 / 10_000.0;
    assert!((kept - 0.75).abs() < 0.02, "kept fraction {kept}");
    // p = 0 is the identity, p = 1 zeros everything and its gradient.
    assert_eq!(x.dropout(0.0, &mut rng).id(), x.id());
    let z = x.dropout(1.0, &mut rng);
    assert!(z.value().data().iter().all(|&v| v == 0.0));
    assert!(z.sum().backward()[x].data().iter().all(|&v| v == 0.0));
    // Channel dropout keeps or drops whole planes.
    let x4 = tape.leaf(Tensor::ones([4, 16, 3, 3]));
    let y4 = x4.dropout2d(0.5, &mut rng).value();
    for plane in y4.data().chunks(9) {
        assert!(plane.iter().all(|&v| v == plane[0]) && (plane[0] == 0.0 || plane[0] == 2.0));
    }
    // The same seed gives the same mask.
    let a = x.dropout(0.5, &mut StdRng::seed_from_u64(9)).value();
    let b = x.dropout(0.5, &mut StdRng::seed_from_u64(9)).value();
    assert_eq!(a.data(), b.data());
    let msg = panic_message(|| _ = x.dropout(1.5, &mut rng));
    assert_eq!(
        msg,
        "dropout: the drop probability must be in [0, 1], got 1.5"
    );
    let msg = panic_message(|| _ = tape.leaf(Tensor::ones([3])).dropout2d(0.5, &mut rng));
    assert_eq!(
        msg,
        "dropout2d: input [3] must be [N, C, *] (rank at least 2)"
    );
}

#[test]
fn modes_switch_dropout_and_are_chosen_at_binding() {
    let mut rng = StdRng::seed_from_u64(0);
    let drop = Dropout::new(0.5, &mut rng);
    let params = Params::new();
    let tape = Tape::new();
    let x = tape.constant(Tensor::ones([64]));
    let train = params.bind(&tape);
    assert_eq!(train.mode(), Mode::Train);
    let y1 = drop.forward(&train, x).value();
    let y2 = drop.forward(&train, x).value();
    assert_ne!(y1.data(), y2.data(), "each training pass draws a new mask");
    let eval = params.bind_eval(&tape);
    assert_eq!(eval.mode(), Mode::Eval);
    assert_eq!(drop.forward(&eval, x).id(), x.id());
    assert_eq!(params.bind_mode(&tape, Mode::Eval).mode(), Mode::Eval);
    // Two layers built from the same seed draw the same masks.
    let a = Dropout::new(0.5, &mut StdRng::seed_from_u64(4));
    let b = Dropout::new(0.5, &mut StdRng::seed_from_u64(4));
    assert_eq!(
        a.forward(&train, x).value().data(),
        b.forward(&train, x).value().data()
    );
}

#[test]
fn buffers_are_saved_loaded_and_not_trained() {
    let mut p = Params::new();
    let w = p.add("fc.weight", Tensor::ones([2, 2]));
    let m = p.add_buffer("bn.running_mean", Tensor::full([2], 0.5));
    let n = p.add_count_buffer("bn.num_batches_tracked");
    p.set_buffer(n, Tensor::scalar(7.0));
    assert_eq!(p.len(), 1, "buffers are not parameters");
    let bytes = p.to_safetensors_bytes().unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    assert!(
        header.contains(r#""bn.num_batches_tracked":{"dtype":"I64","shape":[]"#),
        "{header}"
    );
    let mut q = Params::new();
    let w2 = q.add("fc.weight", Tensor::zeros([2, 2]));
    let m2 = q.add_buffer("bn.running_mean", Tensor::zeros([2]));
    let n2 = q.add_count_buffer("bn.num_batches_tracked");
    q.assign_safetensors_bytes(&bytes).unwrap();
    assert_eq!(q.get(w2).data(), &[1.0; 4]);
    assert_eq!(q.buffer(m2).data(), &[0.5, 0.5]);
    assert_eq!(q.buffer(n2).item(), 7.0);
    // Strict: a model without the buffer refuses the file, naming it.
    let mut r = Params::new();
    r.add("fc.weight", Tensor::zeros([2, 2]));
    r.add_count_buffer("bn.num_batches_tracked");
    let e = r.assign_safetensors_bytes(&bytes).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("parameter `bn.running_mean`: is in the file but not in the model"),
        "{e}"
    );
    // A buffer missing from the file is an error too.
    let mut s = Params::new();
    s.add("fc.weight", Tensor::zeros([2, 2]));
    s.add_buffer("bn.running_mean", Tensor::zeros([2]));
    s.add_count_buffer("bn.num_batches_tracked");
    s.add_buffer("bn.running_var", Tensor::zeros([2]));
    let e = s.assign_safetensors_bytes(&bytes).unwrap_err();
    assert_eq!(
        e.to_string(),
        "parameter `bn.running_var`: is missing from the file"
    );
    // Buffers reach the binding, not the gradients; a binding writes them back.
    let tape = Tape::new();
    let bound = p.bind(&tape);
    assert_eq!(bound.buffer(m).data(), &[0.5, 0.5]);
    bound.set_buffer(m, Tensor::full([2], 2.0));
    assert_eq!(p.buffer(m).data(), &[2.0, 2.0]);
    let g = bound.grads((bound[w] * 2.0).sum().backward());
    assert_eq!(g.as_slice().len(), 1);
    // A clone owns its buffers.
    let c = p.clone();
    p.set_buffer(m, Tensor::zeros([2]));
    assert_eq!(c.buffer(m).data(), &[2.0, 2.0]);
    let msg = panic_message(|| p.set_buffer(m, Tensor::zeros([3])));
    assert_eq!(
        msg,
        "params: buffer `bn.running_mean` has shape [2], cannot set a value of shape [3]"
    );
    let msg = panic_message(|| _ = p.add_buffer("fc.weight", Tensor::zeros([1])));
    assert_eq!(
        msg,
        "params: a parameter or buffer named `fc.weight` already exists"
    );
}

#[test]
fn inference_records_no_graph_and_frees_activations() {
    let mut rng = StdRng::seed_from_u64(0);
    let mut params = Params::<f64>::default();
    let mlp = Sequential::new()
        .push(Linear::with_options(
            &mut params,
            "fc1",
            6,
            8,
            true,
            &mut rng,
        ))
        .push(ReLU)
        .push(Dropout::new(0.5, &mut rng))
        .push(Tanh)
        .push(Flatten)
        .push(Linear::with_options(
            &mut params,
            "fc2",
            8,
            3,
            true,
            &mut rng,
        ));
    let x = Tensor::<f64>::randn([4, 6], &mut rng);
    // The same numbers as an evaluation-mode pass on a recording tape.
    let tape = Tape::new();
    let want = mlp.forward(&params.bind_eval(&tape), tape.constant(x.clone()));
    let got = predict(&mlp, &params, x.clone());
    assert_eq!(got.data(), want.value().data());

    // On a no-grad tape, every layer's input but the first is released.
    let tape = Tape::no_grad();
    let p = params.bind_eval(&tape);
    let input = tape.constant(x);
    let y = mlp.forward(&p, input);
    assert!(!y.requires_grad());
    let dot = tape.to_dot(None);
    // fc1, relu, tanh, flatten: four inputs to later layers (dropout is the identity in eval).
    assert_eq!(dot.matches("released").count(), 4, "{dot}");
    assert_eq!(input.value().shape()[0], 4, "the caller's input is kept");
    let msg = panic_message(|| _ = y.backward());
    assert!(msg.contains("is on a Tape::no_grad() tape"), "{msg}");
    // Release is refused on a recording tape, and a released value cannot be read.
    let rec = Tape::<f64>::new();
    let v = rec.leaf(Tensor::ones([2]));
    let msg = panic_message(|| v.release());
    assert!(
        msg.starts_with("release: node 0 (leaf) is on a tape that records gradients"),
        "{msg}"
    );
    let ng = Tape::<f64>::no_grad();
    let h = ng.leaf(Tensor::ones([2])).exp();
    h.release();
    h.release();
    let msg = panic_message(|| _ = h.value());
    assert_eq!(
        msg,
        "node 1 (exp) was released with Var::release: its value is gone"
    );
    let msg = panic_message(|| _ = h.relu());
    assert_eq!(
        msg,
        "node 1 (exp) was released with Var::release: its value is gone"
    );
}

/// A fixture tensor as an f64 tensor.
fn fixture_tensor(case: &fixtures::Case, name: &str) -> Tensor<f64> {
    let (shape, data) = case.tensor(name);
    Tensor::from_vec(data.to_vec(), shape).unwrap()
}

#[test]
fn batch_norm_layer_matches_pytorch_over_training_steps() {
    let cases = fixtures::load("norm.txt");
    for tag in ["0.1", "none"] {
        let case = fixtures::find(&cases, &format!("bn_running_{tag}"));
        let m = case.param_f64("momentum");
        let options = BatchNormOptions {
            momentum: (m >= 0.0).then_some(m),
            eps: case.param_f64("eps"),
            ..Default::default()
        };
        let c = case.param_usize("channels")[0];
        let mut params = Params::<f64>::default();
        let bn = BatchNorm::with_options(&mut params, "bn", c, &[4], options);
        let r = bn.running.unwrap();
        for k in 1..=3 {
            let tape = Tape::new();
            let x = tape.constant(fixture_tensor(case, &format!("x{k}")));
            let y = bn.forward(&params.bind(&tape), x).value();
            let close = |got: &Tensor<f64>, name: String| {
                let want = fixture_tensor(case, &name);
                assert!(
                    got.max_abs_diff(&want) < 1e-12,
                    "{tag} {name}: {got} vs {want}"
                );
            };
            close(&y, format!("y{k}"));
            close(&params.buffer(r.mean), format!("running_mean{k}"));
            close(&params.buffer(r.var), format!("running_var{k}"));
            assert_eq!(
                params.buffer(r.num_batches_tracked).item(),
                fixture_tensor(case, &format!("num_batches_tracked{k}")).item()
            );
        }
        // Evaluation uses the running statistics and changes nothing.
        let tape = Tape::new();
        let x = fixture_tensor(case, "x3");
        let y = bn
            .forward(&params.bind_eval(&tape), tape.constant(x.clone()))
            .value();
        let (rm, rv) = (params.buffer(r.mean), params.buffer(r.var));
        let hw = 6;
        for (i, (&yi, &xi)) in y.data().iter().zip(x.data()).enumerate() {
            let ch = (i / hw) % c;
            let want = (xi - rm.data()[ch]) / (rv.data()[ch] + 1e-5).sqrt();
            assert!((yi - want).abs() < 1e-12);
        }
        assert_eq!(params.buffer(r.num_batches_tracked).item(), 3.0);
    }
}

#[test]
fn batch_norm_layer_options_and_errors() {
    // Without running statistics, batch statistics in both modes.
    let mut params = Params::<f64>::default();
    let o = BatchNormOptions {
        track_running_stats: false,
        affine: false,
        ..Default::default()
    };
    let bn = BatchNorm::with_options(&mut params, "bn", 2, &[2, 3], o);
    assert!(params.is_empty() && params.buffers().count() == 0);
    let x = Tensor::<f64>::randn([5, 2], &mut StdRng::seed_from_u64(2));
    let tape = Tape::new();
    let train = bn
        .forward(&params.bind(&tape), tape.constant(x.clone()))
        .value();
    let eval = bn
        .forward(&params.bind_eval(&tape), tape.constant(x))
        .value();
    assert_eq!(train.data(), eval.data());
    // The gradient flows to the affine parameters in training mode.
    let mut params = Params::<f64>::default();
    let bn = BatchNorm::new_1d(&mut params, "bn", 3);
    let tape = Tape::new();
    let p = params.bind(&tape);
    let x = tape.leaf(Tensor::randn([4, 3, 5], &mut StdRng::seed_from_u64(3)));
    let y = bn.forward(&p, x);
    let g = p.grads((y * y).sum().backward());
    assert!(g.get(bn.weight.unwrap()).is_some() && g.get(bn.bias.unwrap()).is_some());
    let msg = panic_message(|| _ = bn.forward(&p, tape.constant(Tensor::ones([4, 2]))));
    assert_eq!(
        msg,
        "batch_norm `bn`: input [4, 2] does not fit 3 features (expected rank [2, 3], channels on axis 1)"
    );
}
