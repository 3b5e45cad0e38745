//! The seed's worked example: the backward pass of a convolution, by hand and by the engine.
//!
//! A 3x3 single-channel image X, a 2x2 kernel W, stride 1, no padding, so the
//! output H is 2x2. With X = 1..9, W = [[1, 2], [3, 4]] and the upstream
//! gradient dH = ones, the engine's conv2d gives dW = [[12, 16], [24, 28]] and
//! dX = [[1, 3, 2], [4, 10, 6], [3, 7, 4]]. The example then shows, computing
//! them with conv2d ops on a fresh tape, that
//!
//! - dW = X ⋆ dH: the correlation of the input with the upstream gradient as the kernel;
//! - dX = dH ⋆full rot180(W): the full correlation of dH (zero-padded by k − 1)
//!   with the kernel rotated by 180°;
//!
//! and repeats everything for a random X, W, dH, checked against the naive
//! `conv::reference` loops and against finite differences.
//!
//! Run with `cargo run --example seed_walkthrough`. The derivation is in
//! `docs/conv-backprop.md`.

use rand::SeedableRng;
use rand::rngs::StdRng;
use tapegrad::conv::reference;
use tapegrad::gradcheck::{Options, gradcheck};
use tapegrad::{Conv2dOptions, Tape, Tensor};

/// A single-channel image `[1, 1, h, w]` from rows.
fn image(h: usize, w: usize, values: Vec<f64>) -> Tensor<f64> {
    Tensor::from_vec(values, [1, 1, h, w]).unwrap()
}

/// Prints a `[1, 1, h, w]` tensor as a matrix (integers without decimals).
fn show(title: &str, t: &Tensor<f64>) {
    let (h, w) = (t.shape()[2], t.shape()[3]);
    let integral = t.data().iter().all(|v| v.fract() == 0.0);
    let cell = |v: f64| {
        if integral {
            format!("{v:>4}")
        } else {
            format!("{v:>8.4}")
        }
    };
    println!("{title}  ({h}x{w})");
    for r in 0..h {
        let row: Vec<String> = (0..w).map(|c| cell(t.data()[r * w + c])).collect();
        println!("    [{} ]", row.join(""));
    }
    println!();
}

/// The kernel rotated by 180° (flipped along both axes).
fn rot180(t: &Tensor<f64>) -> Tensor<f64> {
    let mut v = t.data().to_vec();
    v.reverse(); // a single-channel kernel: reversing the row-major data flips both axes
    Tensor::from_vec(v, t.shape()).unwrap()
}

/// H = conv2d(X, W) on a fresh tape and its gradients for upstream gradient dH.
fn forward_backward(
    x: &Tensor<f64>,
    w: &Tensor<f64>,
    dh: &Tensor<f64>,
) -> (Tensor<f64>, Tensor<f64>, Tensor<f64>) {
    let tape = Tape::<f64>::new();
    let (xv, wv) = (tape.leaf(x.clone()), tape.leaf(w.clone()));
    let h = xv.conv2d(wv, None, Conv2dOptions::default());
    let grads = h.backward_with(dh.clone());
    (h.value(), grads[xv].clone(), grads[wv].clone())
}

/// `conv2d(input, kernel, padding)` computed by the engine on a fresh tape.
fn engine_conv(input: &Tensor<f64>, kernel: &Tensor<f64>, padding: (usize, usize)) -> Tensor<f64> {
    let tape = Tape::<f64>::new();
    let y = tape.constant(input.clone()).conv2d(
        tape.constant(kernel.clone()),
        None,
        Conv2dOptions::default().padding(padding),
    );
    y.value()
}

/// Computes both gradients again as plain convolutions with the engine, shows them and
/// asserts they equal the tape's dX and dW (to `tol`).
fn identities(
    x: &Tensor<f64>,
    w: &Tensor<f64>,
    dh: &Tensor<f64>,
    dx: &Tensor<f64>,
    dw: &Tensor<f64>,
    tol: f64,
) {
    let (kh, kw) = (w.shape()[2], w.shape()[3]);

    println!("--- Identity 1: dW = X ⋆ dH (conv2d of X with dH as the kernel) ---");
    println!(
        "dW[ki, kj] = Σ_ij dH[i, j]·X[i + ki, j + kj]: each weight sees every output's gradient"
    );
    println!("times the input pixel it multiplied.\n");
    let dw_conv = engine_conv(x, dh, (0, 0));
    show("conv2d(X, kernel = dH)", &dw_conv);
    let e1 = dw_conv.max_abs_diff(dw);
    assert!(e1 <= tol, "identity 1 fails: {e1:e}");
    println!("equals dW from the tape: max |diff| = {e1:.1e}\n");

    println!("--- Identity 2: dX = full correlation of dH with W rotated 180° ---");
    println!("dX[r, s] = Σ dH[i, j]·W[r − i, s − j] over the windows that cover (r, s): pad dH by");
    println!(
        "k − 1 = ({}, {}) zeros on every side and correlate with the flipped kernel.\n",
        kh - 1,
        kw - 1
    );
    let wr = rot180(w);
    show("rot180(W)", &wr);
    let dx_conv = engine_conv(dh, &wr, (kh - 1, kw - 1));
    show("conv2d(dH, kernel = rot180(W), padding = k − 1)", &dx_conv);
    let e2 = dx_conv.max_abs_diff(dx);
    assert!(e2 <= tol, "identity 2 fails: {e2:e}");
    println!("equals dX from the tape: max |diff| = {e2:.1e}\n");
}

fn main() {
    println!("==================================================================");
    println!(" Part 1 — the seed: X 3x3, W 2x2, stride 1, no padding, H 2x2");
    println!("==================================================================\n");
    let x = image(3, 3, (1..=9).map(f64::from).collect());
    let w = image(2, 2, vec![1.0, 2.0, 3.0, 4.0]);
    let dh = Tensor::ones([1, 1, 2, 2]);
    show("X (input)", &x);
    show("W (kernel)", &w);

    println!(
        "--- Forward: H[i, j] = Σ_{{ki,kj}} X[i + ki, j + kj]·W[ki, kj] (cross-correlation) ---\n"
    );
    let (h, dx, dw) = forward_backward(&x, &w, &dh);
    show("H = conv2d(X, W)", &h);
    assert_eq!(h.data(), &[37.0, 47.0, 67.0, 77.0]);
    show("dH (upstream gradient ∂L/∂H)", &dh);

    println!("--- Backward through the tape: H.backward_with(dH) ---\n");
    show("dW = ∂L/∂W", &dw);
    show("dX = ∂L/∂X", &dx);
    assert_eq!(dw.data(), &[12.0, 16.0, 24.0, 28.0]);
    assert_eq!(dx.data(), &[1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 3.0, 7.0, 4.0]);
    println!("dX counts, for each pixel, the kernel weights that touched it: the centre 5 is in");
    println!(
        "all four windows (1 + 2 + 3 + 4 = 10), the corner 1 only in the first (W[0, 0] = 1).\n"
    );
    identities(&x, &w, &dh, &dx, &dw, 0.0);

    println!("--- The chain rule node by node: tape.trace(&grads) for L = Σ relu(H) ---\n");
    let tape = Tape::<f64>::new();
    let (xv, wv) = (tape.leaf(x.clone()), tape.leaf(w.clone()));
    let loss = xv.conv2d(wv, None, Conv2dOptions::default()).relu().sum();
    let grads = loss.backward();
    println!("{}", tape.trace(&grads));
    let path = std::env::current_dir()
        .unwrap_or_default()
        .join("seed_graph.svg");
    match std::fs::write(&path, tape.to_svg(Some(&grads))) {
        Ok(()) => println!(
            "the graph, with each node's gradient norm: {}\n",
            path.display()
        ),
        Err(e) => println!("could not write {}: {e}\n", path.display()),
    }

    println!("==================================================================");
    println!(" Part 2 — the same for a random X 5x6, W 3x2, dH 3x5 (seed 42)");
    println!("==================================================================\n");
    let mut rng = StdRng::seed_from_u64(42);
    let x = Tensor::randn([1, 1, 5, 6], &mut rng);
    let w = Tensor::randn([1, 1, 3, 2], &mut rng);
    let dh = Tensor::randn([1, 1, 3, 5], &mut rng);
    show("X", &x);
    show("W", &w);
    show("dH", &dh);
    let (h, dx, dw) = forward_backward(&x, &w, &dh);
    show("H = conv2d(X, W)", &h);
    show("dW (tape)", &dw);
    show("dX (tape)", &dx);
    identities(&x, &w, &dh, &dx, &dw, 1e-12);

    println!("--- Checks ---");
    let r = reference::conv2d_backward(&x, &w, &dh, Conv2dOptions::default());
    let (ex, ew) = (dx.max_abs_diff(&r.dx), dw.max_abs_diff(&r.dw));
    assert!(ex <= 1e-12 && ew <= 1e-12);
    println!(
        "conv::reference (naive loops):        max |dX − ref| = {ex:.1e}, max |dW − ref| = {ew:.1e}"
    );

    // Central differences of L = Σ H ⊙ dH, one input element at a time.
    let loss = |x: &Tensor<f64>, w: &Tensor<f64>| -> f64 {
        let h = engine_conv(x, w, (0, 0));
        h.data().iter().zip(dh.data()).map(|(a, b)| a * b).sum()
    };
    let eps = 1e-6;
    let fd = |t: &Tensor<f64>, which: usize| -> Tensor<f64> {
        let mut g = t.clone();
        for i in 0..t.numel() {
            let (mut plus, mut minus) = (t.clone(), t.clone());
            plus.data_mut()[i] += eps;
            minus.data_mut()[i] -= eps;
            let (lp, lm) = if which == 0 {
                (loss(&plus, &w), loss(&minus, &w))
            } else {
                (loss(&x, &plus), loss(&x, &minus))
            };
            g.data_mut()[i] = (lp - lm) / (2.0 * eps);
        }
        g
    };
    let (fx, fw) = (dx.max_abs_diff(&fd(&x, 0)), dw.max_abs_diff(&fd(&w, 1)));
    assert!(fx <= 1e-6 && fw <= 1e-6);
    println!(
        "finite differences of L = Σ H ⊙ dH:  max |dX − fd|  = {fx:.1e}, max |dW − fd|  = {fw:.1e}"
    );

    let report = gradcheck(
        |_, v| v[0].conv2d(v[1], None, Conv2dOptions::default()),
        &[x, w],
        Options::default(),
    );
    assert!(report.passed(), "{report}");
    println!("tapegrad::gradcheck (PyTorch's tolerances): {report}");
    part3_deeplearning_ai();
}

/// The arrays of `data/dlai_conv_step_by_step.txt` (see `scripts/gen_dlai_conv.py`).
fn dlai_arrays() -> Vec<(String, Vec<usize>, Vec<f64>)> {
    let text = include_str!("../data/dlai_conv_step_by_step.txt");
    let mut out: Vec<(String, Vec<usize>, Vec<f64>)> = vec![];
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut words = line.split_whitespace();
        let first = words.next().expect("a non-empty line");
        match first.parse::<f64>() {
            Ok(v) => out.last_mut().expect("a header first").2.push(v),
            Err(_) => out.push((
                first.to_string(),
                words.map(|d| d.parse().unwrap()).collect(),
                vec![],
            )),
        }
    }
    out
}

/// Part 3: deeplearning.ai's "Convolution model — Step by Step" check
/// (NHWC there, NCHW here): the four means it prints, reproduced.
fn part3_deeplearning_ai() {
    println!("==================================================================");
    println!(" Part 3 — deeplearning.ai's conv_forward / conv_backward check");
    println!("==================================================================\n");
    let arrays = dlai_arrays();
    let get = |name: &str| {
        let (_, shape, v) = arrays.iter().find(|a| a.0 == name).expect("in the file");
        Tensor::<f64>::from_vec(v.clone(), &shape[..]).unwrap()
    };
    // NHWC → NCHW, (f, f, C_in, C_out) → OIHW, (1, 1, 1, C_out) → [C_out].
    let a = get("A_prev").permute(&[0, 3, 1, 2]);
    let w = get("W").permute(&[3, 2, 0, 1]);
    let b = get("b").reshape([8]);
    let tape = Tape::<f64>::new();
    let (av, wv, bv) = (tape.leaf(a), tape.leaf(w), tape.leaf(b));
    let z = av.conv2d(wv, Some(bv), Conv2dOptions::default().stride(2).padding(2));
    let grads = z.backward_with(z.value()); // upstream dZ = Z, as the notebook does
    let mean = |t: &Tensor<f64>| t.data().iter().sum::<f64>() / t.numel() as f64;
    let rows = [
        ("Z's mean", mean(&z.value()), 0.0489952035289),
        ("dA_mean", mean(&grads[av]), 1.45243777754),
        ("dW_mean", mean(&grads[wv]), 1.72699145831),
        ("db_mean", mean(&grads[bv]), 7.83923256462),
    ];
    println!(
        "A_prev [10, 4, 4, 3] (NHWC), W [2, 2, 3, 8], b [1, 1, 1, 8], pad 2, stride 2, dZ = Z:\n"
    );
    for (name, got, want) in rows {
        println!(
            "{name:<9} {got:>16.12}   (notebook: {want}, |diff| {:.1e})",
            (got - want).abs()
        );
        assert!((got - want).abs() < 1e-10, "{name}");
    }
    println!();
}
