//! Every core op gradient-checked in f64 against central differences, broadcasting included.

use rand::SeedableRng;
use rand::rngs::StdRng;
use tapegrad::gradcheck::{Mode, Options, gradcheck};
use tapegrad::{Tape, Tensor, Var};

fn randn(shape: &[usize], seed: u64) -> Tensor<f64> {
    Tensor::randn(shape, &mut StdRng::seed_from_u64(seed))
}

/// Values in [lo, hi): for ops defined only on part of the line (log, sqrt, powf).
fn uniform(shape: &[usize], lo: f64, hi: f64, seed: u64) -> Tensor<f64> {
    Tensor::rand_uniform(shape, lo, hi, &mut StdRng::seed_from_u64(seed))
}

/// Values bounded away from 0 (for relu and leaky_relu, whose kink is at 0).
fn away_from_zero(shape: &[usize], seed: u64) -> Tensor<f64> {
    randn(shape, seed).map(|v| if v >= 0.0 { v + 0.1 } else { v - 0.1 })
}

fn check<F>(name: &str, f: F, inputs: &[Tensor<f64>])
where
    F: for<'t> Fn(&'t Tape<f64>, &[Var<'t, f64>]) -> Var<'t, f64>,
{
    let report = gradcheck(f, inputs, Options::default());
    assert!(report.passed(), "{name}: {report}");
    assert!(report.checked > 0, "{name}: nothing was compared");
}

#[test]
fn binary_ops_same_shape() {
    let (a, b) = (randn(&[3, 4], 1), uniform(&[3, 4], 0.5, 2.0, 2));
    check("add", |_, x| x[0] + x[1], &[a.clone(), b.clone()]);
    check("sub", |_, x| x[0] - x[1], &[a.clone(), b.clone()]);
    check("mul", |_, x| x[0] * x[1], &[a.clone(), b.clone()]);
    check("div", |_, x| x[0] / x[1], &[a, b]);
}

#[test]
fn binary_ops_broadcast() {
    // (a shape, b shape): trailing-axis vector, column, scalar-like, both stretched, rank mismatch.
    let cases: &[(&[usize], &[usize])] = &[
        (&[2, 3], &[3]),
        (&[2, 3], &[2, 1]),
        (&[2, 3], &[1]),
        (&[2, 1, 4], &[3, 1]),
        (&[4], &[2, 3, 4]),
        (&[1, 3], &[2, 1]),
        (&[], &[2, 2]),
    ];
    for (i, (sa, sb)) in cases.iter().enumerate() {
        let a = uniform(sa, 0.5, 2.0, 10 + i as u64);
        let b = uniform(sb, 0.5, 2.0, 20 + i as u64);
        let inputs = [a, b];
        check(&format!("add {sa:?} {sb:?}"), |_, x| x[0] + x[1], &inputs);
        check(&format!("sub {sa:?} {sb:?}"), |_, x| x[0] - x[1], &inputs);
        check(&format!("mul {sa:?} {sb:?}"), |_, x| x[0] * x[1], &inputs);
        check(&format!("div {sa:?} {sb:?}"), |_, x| x[0] / x[1], &inputs);
    }
}

#[test]
fn scalar_ops_and_neg() {
    let a = uniform(&[5], 0.5, 2.0, 3);
    check("neg", |_, x| -x[0], std::slice::from_ref(&a));
    check("add_scalar", |_, x| x[0] + 1.5, std::slice::from_ref(&a));
    check("sub_scalar", |_, x| x[0] - 1.5, std::slice::from_ref(&a));
    check("mul_scalar", |_, x| x[0] * -2.5, std::slice::from_ref(&a));
    check("div_scalar", |_, x| x[0] / 4.0, std::slice::from_ref(&a));
    check("rsub_scalar", |_, x| 3.0 - x[0], std::slice::from_ref(&a));
    check("rdiv_scalar", |_, x| 3.0 / x[0], std::slice::from_ref(&a));
    check("scalar * var", |_, x| 2.0 * x[0], &[a]);
}

#[test]
fn unary_ops() {
    let x = randn(&[2, 5], 4);
    let pos = uniform(&[2, 5], 0.2, 3.0, 5);
    check("exp", |_, v| v[0].exp(), std::slice::from_ref(&x));
    check("tanh", |_, v| v[0].tanh(), std::slice::from_ref(&x));
    check("sigmoid", |_, v| v[0].sigmoid(), std::slice::from_ref(&x));
    check("log", |_, v| v[0].log(), std::slice::from_ref(&pos));
    check("sqrt", |_, v| v[0].sqrt(), std::slice::from_ref(&pos));
    check("powf 3", |_, v| v[0].powf(3.0), std::slice::from_ref(&x));
    check(
        "powf -1.5",
        |_, v| v[0].powf(-1.5),
        std::slice::from_ref(&pos),
    );
    let k = away_from_zero(&[3, 4], 6);
    check("relu", |_, v| v[0].relu(), std::slice::from_ref(&k));
    check("leaky_relu", |_, v| v[0].leaky_relu(0.2), &[k]);
}

#[test]
fn relu_derivative_at_zero_is_zero() {
    let tape = Tape::<f64>::new();
    let x = tape.leaf(Tensor::from_vec(vec![0.0, -0.0], [2]).unwrap());
    assert_eq!(x.relu().sum().backward()[x].data(), &[0.0, 0.0]);
    let l = x.leaky_relu(0.1).sum().backward();
    assert_eq!(l[x].data(), &[0.1, 0.1]);
}

#[test]
fn sigmoid_is_stable_for_large_inputs() {
    let tape = Tape::<f32>::new();
    let x = tape.leaf(Tensor::from_vec(vec![-200.0, 200.0], [2]).unwrap());
    let y = x.sigmoid();
    assert_eq!(y.value().data(), &[0.0, 1.0]);
    assert!(y.sum().backward()[x].all_finite());
}

#[test]
fn reductions() {
    let x = randn(&[2, 3, 4], 7);
    check("sum", |_, v| v[0].sum(), std::slice::from_ref(&x));
    check("mean", |_, v| v[0].mean(), std::slice::from_ref(&x));
    for axes in [&[0isize][..], &[1], &[2], &[-1], &[0, 2], &[0, 1, 2]] {
        for keep in [false, true] {
            check(
                &format!("sum_axes {axes:?} {keep}"),
                |_, v| v[0].sum_axes(axes, keep),
                std::slice::from_ref(&x),
            );
            check(
                &format!("mean_axes {axes:?} {keep}"),
                |_, v| v[0].mean_axes(axes, keep),
                std::slice::from_ref(&x),
            );
        }
    }
    for axis in [0isize, 1, 2] {
        for keep in [false, true] {
            check(
                &format!("max_axis {axis} {keep}"),
                |_, v| v[0].max_axis(axis, keep),
                std::slice::from_ref(&x),
            );
        }
    }
}

#[test]
fn reduction_shapes() {
    let tape = Tape::<f32>::new();
    let x = tape.leaf(Tensor::zeros([2, 3, 4]));
    assert_eq!(&x.sum_axes(&[0, 2], false).shape()[..], &[3]);
    assert_eq!(&x.sum_axes(&[0, 2], true).shape()[..], &[1, 3, 1]);
    assert_eq!(&x.max_axis(-1, false).shape()[..], &[2, 3]);
    assert_eq!(x.sum().shape().rank(), 0);
}

#[test]
fn matmul_forms() {
    check(
        "matmul 2d",
        |_, v| v[0].matmul(v[1]),
        &[randn(&[3, 4], 8), randn(&[4, 5], 9)],
    );
    check(
        "matmul batched",
        |_, v| v[0].matmul(v[1]),
        &[randn(&[2, 3, 4], 10), randn(&[2, 4, 2], 11)],
    );
    check(
        "matmul 3d x 2d",
        |_, v| v[0].matmul(v[1]),
        &[randn(&[2, 3, 4], 12), randn(&[4, 5], 13)],
    );
    check(
        "matmul 1-wide",
        |_, v| v[0].matmul(v[1]),
        &[randn(&[1, 1], 14), randn(&[1, 3], 15)],
    );
}

#[test]
fn linear_with_and_without_bias() {
    let (x, w, b) = (randn(&[4, 3], 16), randn(&[5, 3], 17), randn(&[5], 18));
    check(
        "linear+bias",
        |_, v| v[0].linear(v[1], Some(v[2])),
        &[x.clone(), w.clone(), b],
    );
    check("linear", |_, v| v[0].linear(v[1], None), &[x, w]);
}

#[test]
fn linear_equals_matmul_with_transposed_weight() {
    let tape = Tape::<f64>::new();
    let x = tape.leaf(randn(&[4, 3], 19));
    let w = tape.leaf(randn(&[5, 3], 20));
    let b = tape.leaf(randn(&[5], 21));
    let fused = x.linear(w, Some(b)).value();
    let composed = (x.matmul(w.transpose(0, 1)) + b).value();
    assert!(fused.max_abs_diff(&composed) < 1e-12);
}

#[test]
fn shape_ops() {
    let x = randn(&[2, 3, 4], 22);
    let w = randn(&[24], 23); // breaks the symmetry so a wrong ordering would be seen
    check(
        "reshape",
        |t, v| v[0].reshape([6, 4]) * t.constant(w.reshape([6, 4])),
        std::slice::from_ref(&x),
    );
    check(
        "flatten",
        |t, v| v[0].flatten() * t.constant(w.reshape([2, 12])),
        std::slice::from_ref(&x),
    );
    check(
        "permute",
        |_, v| v[0].permute(&[2, 0, 1]),
        std::slice::from_ref(&x),
    );
    check("transpose", |_, v| v[0].transpose(0, -1), &[x]);
}

#[test]
fn softmax_family_and_losses() {
    let x = randn(&[3, 4, 2], 24);
    for axis in [0isize, 1, 2] {
        check(
            &format!("softmax {axis}"),
            |_, v| v[0].softmax(axis),
            std::slice::from_ref(&x),
        );
        check(
            &format!("log_softmax {axis}"),
            |_, v| v[0].log_softmax(axis),
            std::slice::from_ref(&x),
        );
    }
    let logits = randn(&[5, 7], 25);
    check(
        "cross_entropy",
        |_, v| v[0].cross_entropy(&[0, 6, 3, 3, 1]),
        &[logits],
    );
    check(
        "mse_loss",
        |_, v| v[0].mse_loss(v[1]),
        &[randn(&[3, 4], 26), randn(&[3, 4], 27)],
    );
}

#[test]
fn random_direction_mode_agrees() {
    let opts = Options {
        mode: Mode::RandomDirections(8),
        ..Options::default()
    };
    let r = gradcheck(
        |_, v| (v[0].matmul(v[1])).tanh().sum(),
        &[randn(&[4, 6], 28), randn(&[6, 3], 29)],
        opts,
    );
    assert!(r.passed(), "{r}");
    assert_eq!(r.checked, 8);
}

/// A deliberately wrong gradient must be caught, and the report must point at it.
#[test]
fn gradcheck_catches_a_wrong_gradient() {
    use smallvec::smallvec;
    fn wrong<'t>(_: &'t Tape<f64>, v: &[Var<'t, f64>]) -> Var<'t, f64> {
        let x = v[0];
        // y = x², but the closure claims dy/dx = 2x + 1 for the element at index 2 only.
        x.tape()
            .record("bad_square", x.value().map(|a| a * a), &[x], |ctx| {
                let mut g = ctx.grad.zip_map(ctx.inputs[0], "bad", |g, x| 2.0 * g * x);
                let v = g.get(&[2]) + 1.0;
                g.set(&[2], v);
                smallvec![Some(g)]
            })
    }
    let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], [4]).unwrap();
    let report = gradcheck(wrong, std::slice::from_ref(&x), Options::default());
    assert!(!report.passed());
    let worst = report.worst.clone().unwrap();
    assert_eq!((worst.input, worst.index.clone()), (Some(0), vec![2]));
    assert!(report.to_string().contains("FAILED"), "{report}");
    let rd = gradcheck(
        wrong,
        &[x],
        Options {
            mode: Mode::RandomDirections(3),
            ..Options::default()
        },
    );
    assert!(!rd.passed(), "{rd}");
}

#[test]
fn more_options_negative_axes_size_one_axes_and_exponents() {
    let x = randn(&[2, 3, 4], 30);
    check(
        "softmax -1",
        |_, v| v[0].softmax(-1),
        std::slice::from_ref(&x),
    );
    check(
        "log_softmax -2",
        |_, v| v[0].log_softmax(-2),
        std::slice::from_ref(&x),
    );
    check(
        "max_axis -1",
        |_, v| v[0].max_axis(-1, true),
        std::slice::from_ref(&x),
    );
    let one = randn(&[3, 1], 31);
    check(
        "softmax over a size-1 axis",
        |_, v| v[0].softmax(1),
        std::slice::from_ref(&one),
    );
    check(
        "log_softmax over a size-1 axis",
        |_, v| v[0].log_softmax(1),
        &[one],
    );
    let pos = uniform(&[4], 0.5, 2.0, 32);
    check("powf 0", |_, v| v[0].powf(0.0), std::slice::from_ref(&pos));
    check("powf 1", |_, v| v[0].powf(1.0), std::slice::from_ref(&pos));
    check("div_scalar", |_, v| v[0].div_scalar(0.3), &[pos]);
}

#[test]
fn edge_values_follow_pytorch() {
    let tape = Tape::<f64>::new();
    // powf(0) has derivative 0 even at x = 0 (not 0·0⁻¹ = NaN).
    let z = tape.leaf(Tensor::zeros([2]));
    assert_eq!(z.powf(0.0).sum().backward()[z].data(), &[0.0, 0.0]);
    // relu and max propagate NaN; max takes the first of tied maxima.
    let n =
        tape.leaf(Tensor::from_vec(vec![f64::NAN, 1.0, 1.0, f64::NAN, 2.0, 2.0], [3, 2]).unwrap());
    assert!(n.relu().value().data()[0].is_nan());
    let m = n.max_axis(1, false);
    let mv = m.value();
    assert!(mv.data()[0].is_nan() && mv.data()[1].is_nan());
    assert_eq!(mv.data()[2], 2.0);
    let g = m.backward_with(Tensor::ones([3]));
    assert_eq!(g[n].data(), &[1.0, 0.0, 0.0, 1.0, 1.0, 0.0]);
    // Mean-reduced losses over nothing are NaN (0/0), like PyTorch and like `mean`.
    let e = tape.leaf(Tensor::zeros([0]));
    assert!(e.mse_loss(e).value().item().is_nan());
    assert!(
        tape.leaf(Tensor::zeros([0, 3]))
            .cross_entropy(&[])
            .value()
            .item()
            .is_nan()
    );
    assert_eq!(e.sum().value().item().to_bits(), 0.0f64.to_bits()); // +0, not −0
    // Broadcasting with an empty operand gives an empty result and empty gradients.
    let a = tape.leaf(Tensor::zeros([0, 3]));
    let b = tape.leaf(Tensor::ones([3]));
    let s = (a * b).sum();
    let g = s.backward();
    assert_eq!((g[a].numel(), g[b].data()), (0, &[0.0, 0.0, 0.0][..]));
}

#[test]
fn division_by_a_scalar_is_correctly_rounded() {
    let tape = Tape::<f64>::new();
    let x = tape.leaf(Tensor::full([1], 0.3));
    assert_eq!((x / 0.1).value().item(), 0.3 / 0.1);
    assert_eq!((x / 0.1).op(), "div_scalar");
}

/// A NaN gradient anywhere must fail the check, not only at the first element.
#[test]
fn gradcheck_catches_a_nan_gradient() {
    fn nan_at_1<'t>(_: &'t Tape<f64>, v: &[Var<'t, f64>]) -> Var<'t, f64> {
        let x = v[0];
        x.tape().record("nan_grad", x.value(), &[x], |ctx| {
            let mut g = ctx.grad.clone();
            g.set(&[1], f64::NAN);
            smallvec::smallvec![Some(g)]
        })
    }
    let x = Tensor::from_vec(vec![1.0, 2.0, 3.0], [3]).unwrap();
    let r = gradcheck(nan_at_1, &[x], Options::default());
    assert!(!r.passed(), "{r}");
    assert_eq!(r.worst.unwrap().index, vec![1]);
    let a = Tensor::from_vec(vec![1.0, f64::NAN], [2]).unwrap();
    let b = Tensor::from_vec(vec![1.0, 2.0], [2]).unwrap();
    assert!(
        a.max_abs_diff(&b).is_nan(),
        "a NaN must not compare as close"
    );
}

#[test]
fn erf_sum_to_and_broadcast_to() {
    check("erf", |_, x| x[0].erf(), &[randn(&[2, 3], 40)]);
    check(
        "sum_to",
        |_, x| x[0].sum_to([1, 3]).tanh(),
        &[randn(&[4, 3], 41)],
    );
    check(
        "sum_to rank",
        |_, x| x[0].sum_to([3]).tanh(),
        &[randn(&[2, 4, 3], 42)],
    );
    check(
        "broadcast_to",
        |_, x| x[0].broadcast_to([2, 4, 3]).tanh(),
        &[randn(&[4, 1], 43)],
    );
}
