//! A small CNN end to end against PyTorch: every intermediate value and every
//! gradient (intermediates included) of
//! conv-relu-conv-relu-maxpool-flatten-linear-cross_entropy on four 8x8 images.

mod common;

use common::fixtures;
use tapegrad::{Conv2dOptions, Tape, Tensor, Var};

fn fixture_tensor(case: &fixtures::Case, name: &str) -> Tensor<f64> {
    let (shape, data) = case.tensor(name);
    Tensor::from_vec(data.to_vec(), shape).unwrap()
}

fn assert_matches(case: &fixtures::Case, name: &str, got: &Tensor<f64>) {
    let want = fixture_tensor(case, name);
    assert_eq!(got.shape(), want.shape(), "{name}: shapes differ");
    let diff = got.max_abs_diff(&want);
    assert!(diff <= 1e-9, "{name}: max |diff| = {diff:e}");
}

#[test]
fn small_cnn_matches_pytorch_everywhere() {
    let cases = fixtures::load("composite.txt");
    let case = fixtures::find(&cases, "composite");
    let (padding, pool) = (case.param_usize("padding")[0], case.param_usize("pool")[0]);
    let (_, targets) = case.tensor_usize("target");

    let tape = Tape::<f64>::new();
    let leaf = |name: &str| tape.leaf(fixture_tensor(case, name));
    let (x, w1, b1, w2, b2, w3, b3) = (
        leaf("x"),
        leaf("w1"),
        leaf("b1"),
        leaf("w2"),
        leaf("b2"),
        leaf("w3"),
        leaf("b3"),
    );

    let same = Conv2dOptions::default().padding(padding);
    let h1 = x.conv2d(w1, Some(b1), same);
    let a1 = h1.relu();
    let h2 = a1.conv2d(w2, Some(b2), same);
    let a2 = h2.relu();
    let p = a2.max_pool2d(pool);
    let f = p.flatten();
    let logits = f.linear(w3, Some(b3));
    let loss = logits.cross_entropy(&targets);

    let intermediates: [(&str, Var<'_, f64>); 8] = [
        ("h1", h1),
        ("a1", a1),
        ("h2", h2),
        ("a2", a2),
        ("p", p),
        ("f", f),
        ("logits", logits),
        ("loss", loss),
    ];
    for (name, v) in intermediates {
        assert_matches(case, name, &v.value());
    }

    let grads = loss.backward();
    let params = [
        ("x", x),
        ("w1", w1),
        ("b1", b1),
        ("w2", w2),
        ("b2", b2),
        ("w3", w3),
        ("b3", b3),
    ];
    for (name, v) in intermediates.into_iter().chain(params) {
        assert_matches(case, &format!("d{name}"), &grads[v]);
    }
}
