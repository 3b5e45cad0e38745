//! Gradients of gradients: every op with a differentiable backward checked
//! with `gradgradcheck` (second derivatives against central differences of
//! first derivatives, float64), the Hessian-vector product, Hessian and
//! Jacobian helpers against closed forms, a third derivative, a gradient
//! penalty trained with `backward()`, and the clear panic of an op whose
//! backward is first-order only.

use rand::SeedableRng;
use rand::rngs::StdRng;
use std::panic::{AssertUnwindSafe, catch_unwind};
use tapegrad::gradcheck::{Options, gradgradcheck};
use tapegrad::higher::{hessian, hvp, jacobian};
use tapegrad::{Conv2dOptions, Tape, Tensor, Var};

fn randn(shape: &[usize], seed: u64) -> Tensor<f64> {
    Tensor::randn(shape, &mut StdRng::seed_from_u64(seed))
}

fn positive(shape: &[usize], seed: u64) -> Tensor<f64> {
    Tensor::rand_uniform(shape, 0.5, 2.0, &mut StdRng::seed_from_u64(seed))
}

fn away_from_zero(shape: &[usize], seed: u64) -> Tensor<f64> {
    randn(shape, seed).map(|v| if v >= 0.0 { v + 0.2 } else { v - 0.2 })
}

fn check<F>(name: &str, f: F, inputs: &[Tensor<f64>])
where
    F: for<'t> Fn(&'t Tape<f64>, &[Var<'t, f64>]) -> Var<'t, f64>,
{
    let r = gradgradcheck(f, inputs, Options::default());
    assert!(r.passed() && r.checked > 0, "{name}: {r}");
}

#[test]
fn arithmetic_with_broadcasting() {
    let (a, b) = (randn(&[2, 3], 1), positive(&[3], 2));
    check(
        "add",
        |_, x| (x[0] + x[1]) * (x[0] + x[1]),
        &[a.clone(), b.clone()],
    );
    check(
        "sub",
        |_, x| (x[0] - x[1]) * (x[0] - x[1]),
        &[a.clone(), b.clone()],
    );
    check("mul", |_, x| x[0] * x[1] * x[0], &[a.clone(), b.clone()]);
    check("div", |_, x| x[0] / x[1], &[a.clone(), b.clone()]);
    check("neg", |_, x| (-x[0]) * x[0], std::slice::from_ref(&a));
    check(
        "scalars",
        |_, x| ((x[0] * 3.0 + 1.0) / 2.0 - x[0]).rsub_scalar(1.0) * x[0],
        std::slice::from_ref(&a),
    );
    check(
        "rdiv_scalar",
        |_, x| x[0].rdiv_scalar(2.0),
        std::slice::from_ref(&b),
    );
    check(
        "sum_to / broadcast_to",
        |_, x| {
            let y = x[1].broadcast_to([2, 3]) * x[0];
            (y * y).sum_to([3])
        },
        &[a, b],
    );
}

#[test]
fn unary_functions() {
    let x = randn(&[2, 3], 3);
    let p = positive(&[2, 3], 4);
    let k = away_from_zero(&[2, 3], 5);
    check("exp", |_, v| v[0].exp(), std::slice::from_ref(&x));
    check("log", |_, v| v[0].log(), std::slice::from_ref(&p));
    check("sqrt", |_, v| v[0].sqrt(), std::slice::from_ref(&p));
    check("powf", |_, v| v[0].powf(3.5), std::slice::from_ref(&p));
    check(
        "powf 0",
        |_, v| v[0].powf(0.0) * v[0] * v[0],
        std::slice::from_ref(&p),
    );
    check("sigmoid", |_, v| v[0].sigmoid(), std::slice::from_ref(&x));
    check("tanh", |_, v| v[0].tanh(), std::slice::from_ref(&x));
    check("relu", |_, v| v[0].relu() * v[0], std::slice::from_ref(&k));
    check(
        "leaky_relu",
        |_, v| v[0].leaky_relu(0.1) * v[0],
        std::slice::from_ref(&k),
    );
}

#[test]
fn reductions_and_shapes() {
    let x = randn(&[2, 3, 4], 6);
    check(
        "sum",
        |_, v| v[0].sum() * v[0].sum(),
        std::slice::from_ref(&x),
    );
    check("mean", |_, v| v[0].mean().exp(), std::slice::from_ref(&x));
    check(
        "sum_axes",
        |_, v| v[0].sum_axes(&[0, 2], false).tanh(),
        std::slice::from_ref(&x),
    );
    check(
        "mean_axes",
        |_, v| v[0].mean_axes(&[1], true).exp() * v[0],
        std::slice::from_ref(&x),
    );
    check(
        "max_axis",
        |_, v| v[0].max_axis(1, false).powf(2.0),
        std::slice::from_ref(&x),
    );
    check(
        "reshape",
        |_, v| v[0].reshape([6, 4]).tanh(),
        std::slice::from_ref(&x),
    );
    check(
        "flatten",
        |_, v| v[0].flatten().sigmoid(),
        std::slice::from_ref(&x),
    );
    check(
        "permute",
        |_, v| v[0].permute(&[2, 0, 1]).exp() * v[0].permute(&[2, 0, 1]),
        std::slice::from_ref(&x),
    );
    check(
        "transpose",
        |_, v| v[0].transpose(0, 2).tanh(),
        std::slice::from_ref(&x),
    );
}

#[test]
fn matmul_and_linear() {
    let (a, b) = (randn(&[3, 4], 7), randn(&[4, 2], 8));
    check(
        "matmul 2-D",
        |_, v| v[0].matmul(v[1]).tanh(),
        &[a.clone(), b.clone()],
    );
    let (a3, b3) = (randn(&[2, 3, 4], 9), randn(&[2, 4, 2], 10));
    check(
        "matmul batched",
        |_, v| v[0].matmul(v[1]).tanh(),
        &[a3.clone(), b3],
    );
    check(
        "matmul shared B",
        |_, v| v[0].matmul(v[1]).tanh(),
        &[a3, b.clone()],
    );
    let (w, bias) = (randn(&[2, 4], 11), randn(&[2], 12));
    check(
        "linear",
        |_, v| v[0].linear(v[1], Some(v[2])).tanh(),
        &[a.clone(), w.clone(), bias],
    );
    check(
        "linear without bias",
        |_, v| v[0].linear(v[1], None).sigmoid(),
        &[a, w],
    );
}

#[test]
fn softmax_and_losses() {
    let x = randn(&[3, 5], 13);
    check("softmax", |_, v| v[0].softmax(1), std::slice::from_ref(&x));
    check(
        "softmax axis 0",
        |_, v| v[0].softmax(0),
        std::slice::from_ref(&x),
    );
    check(
        "log_softmax",
        |_, v| v[0].log_softmax(-1),
        std::slice::from_ref(&x),
    );
    check(
        "cross_entropy",
        |_, v| v[0].cross_entropy(&[0, 4, 2]),
        std::slice::from_ref(&x),
    );
    let t = randn(&[3, 5], 14);
    check("mse_loss", |_, v| v[0].tanh().mse_loss(v[1]), &[x, t]);
}

#[test]
fn a_small_network_end_to_end() {
    let x = randn(&[4, 3], 15);
    let (w1, w2) = (randn(&[5, 3], 16), randn(&[2, 5], 17));
    check(
        "mlp",
        |_, v| {
            let h = v[0].linear(v[1], None).tanh();
            h.linear(v[2], None).cross_entropy(&[0, 1, 1, 0])
        },
        &[x, w1, w2],
    );
}

#[test]
fn helpers_match_closed_forms() {
    // f(x) = Σ sin-free cubic: Σ xᵢ³ + x₀x₁ → ∇ = 3x² + (x₁, x₀), H = diag(6x) + [[0,1],[1,0]].
    fn f<'t>(x: Var<'t, f64>) -> Var<'t, f64> {
        let c = x
            .tape()
            .constant(Tensor::from_vec(vec![1.0, 0.0], [2]).unwrap());
        let d = x
            .tape()
            .constant(Tensor::from_vec(vec![0.0, 1.0], [2]).unwrap());
        (x * x * x).sum() + (x * c).sum() * (x * d).sum()
    }
    let x = Tensor::from_vec(vec![1.5, -2.0], [2]).unwrap();
    let h = hessian(f, &x);
    assert_eq!(h.data(), &[9.0, 1.0, 1.0, -12.0]);
    let v = Tensor::from_vec(vec![2.0, 1.0], [2]).unwrap();
    let (val, g, hv) = hvp(f, &x, &v);
    assert_eq!(val, 1.5f64.powi(3) - 8.0 - 3.0);
    assert_eq!(g.data(), &[3.0 * 2.25 - 2.0, 12.0 + 1.5]);
    assert_eq!(hv.data(), &[19.0, -10.0]);
    let j = jacobian(|x| (x * x).softmax(0), &x);
    // softmax Jacobian times diag(2x): J = (diag(s) − s sᵀ)·diag(2x).
    let s = Tensor::<f64>::from_vec(vec![2.25, 4.0], [2]).unwrap();
    let e: Vec<f64> = s.data().iter().map(|v: &f64| v.exp()).collect();
    let z: f64 = e.iter().sum();
    let s: Vec<f64> = e.iter().map(|v| v / z).collect();
    for r in 0..2 {
        for c in 0..2 {
            let want = (if r == c { s[r] } else { 0.0 } - s[r] * s[c]) * 2.0 * x.data()[c];
            assert!((j.get(&[r, c]) - want).abs() < 1e-14, "J[{r},{c}]");
        }
    }
}

#[test]
fn third_derivatives_and_mixing_with_backward() {
    let tape = Tape::<f64>::new();
    let x = tape.leaf(Tensor::from_vec(vec![2.0], [1]).unwrap());
    let y = x.powf(4.0).sum(); // y = x⁴
    let d1 = y.grad_graph(&[x])[0]; // 4x³ = 32
    let d2 = d1.sum().grad_graph(&[x])[0]; // 12x² = 48
    let d3 = d2.sum().backward()[x].item(); // 24x = 48
    assert_eq!(d1.value().item(), 32.0);
    assert_eq!(d2.value().item(), 48.0);
    assert_eq!(d3, 48.0);
    // The first-order backward of the same graph is untouched.
    assert_eq!(y.backward()[x].item(), 32.0);
}

#[test]
fn a_gradient_penalty_trains_its_parameters() {
    // Penalise ‖∂D/∂x‖ against 1 for D(x) = tanh(x·w), and check the
    // penalty's gradient with respect to w against central differences.
    let x = Tensor::from_vec(vec![0.5, -1.0, 2.0], [1, 3]).unwrap();
    let w = Tensor::from_vec(vec![0.3, 0.8, -0.4], [3, 1]).unwrap();
    let penalty = |w: &Tensor<f64>| -> (f64, Tensor<f64>) {
        let tape = Tape::<f64>::new();
        let (xv, wv) = (tape.leaf(x.clone()), tape.leaf(w.clone()));
        let d = xv.matmul(wv).tanh().sum();
        let gx = d.grad_graph(&[xv])[0];
        let p = ((gx * gx).sum().sqrt() - 1.0).powf(2.0);
        (p.value().item(), p.backward()[wv].clone())
    };
    let (_, g) = penalty(&w);
    for i in 0..3 {
        let mut wp = w.clone();
        wp.data_mut()[i] += 1e-6;
        let mut wm = w.clone();
        wm.data_mut()[i] -= 1e-6;
        let numeric = (penalty(&wp).0 - penalty(&wm).0) / 2e-6;
        assert!(
            (g.data()[i] - numeric).abs() < 1e-7,
            "w[{i}]: {} vs {numeric}",
            g.data()[i]
        );
    }
}

#[test]
fn an_op_without_a_differentiable_backward_says_so() {
    let tape = Tape::<f64>::new();
    let x = tape.leaf(Tensor::ones([1, 1, 3, 3]));
    let w = tape.leaf(Tensor::ones([1, 1, 2, 2]));
    // A custom op recorded with `Tape::record` is first-order only.
    let y = tape
        .record("my_op", x.value(), &[x], |ctx| {
            let mut g = tapegrad::ParentGrads::new();
            g.push(Some(ctx.grad.clone()));
            g
        })
        .conv2d(w, None, Conv2dOptions::default())
        .sum();
    let e = catch_unwind(AssertUnwindSafe(|| y.grad_graph(&[x]))).unwrap_err();
    let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.starts_with("grad_graph: node 2 (my_op) cannot be differentiated twice"),
        "{msg}"
    );
    // The tape is intact: the first-order backward still works.
    assert_eq!(y.backward()[w].data(), &[4.0; 4]);
    // A node the output does not depend on gets a zero gradient.
    let z = tape.leaf(Tensor::ones([2]));
    let g = (x * x).sum().grad_graph(&[z])[0];
    assert_eq!(g.value().data(), &[0.0, 0.0]);
}

#[test]
fn normalisation_and_dropout() {
    let x = randn(&[4, 3, 2, 2], 20);
    let (w, b) = (positive(&[3], 21), randn(&[3], 22));
    check(
        "batch_norm_train",
        |_, v| v[0].batch_norm_train(Some(v[1]), Some(v[2]), 1e-5).0.tanh(),
        &[x.clone(), w.clone(), b.clone()],
    );
    check(
        "batch_norm_train without affine",
        |_, v| v[0].batch_norm_train(None, None, 1e-5).0.powf(3.0),
        std::slice::from_ref(&x),
    );
    let (rm, rv) = (randn(&[3], 23), positive(&[3], 24));
    check(
        "batch_norm_eval",
        |_, v| {
            v[0].batch_norm_eval(Some(v[1]), Some(v[2]), &rm, &rv, 1e-5)
                .tanh()
        },
        &[x.clone(), w.clone(), b.clone()],
    );
    let (lw, lb) = (positive(&[2, 2], 25), randn(&[2, 2], 26));
    check(
        "layer_norm",
        |_, v| {
            v[0].layer_norm(&[2, 2], Some(v[1]), Some(v[2]), 1e-5)
                .tanh()
        },
        &[x.clone(), lw, lb],
    );
    let x6 = randn(&[2, 4, 3], 27);
    let (gw, gb) = (positive(&[4], 28), randn(&[4], 29));
    check(
        "group_norm",
        |_, v| v[0].group_norm(2, Some(v[1]), Some(v[2]), 1e-5).tanh(),
        &[x6, gw, gb],
    );
    check(
        "dropout",
        |_, v| v[0].dropout(0.4, &mut StdRng::seed_from_u64(3)).tanh(),
        std::slice::from_ref(&x),
    );
    check(
        "dropout2d",
        |_, v| v[0].dropout2d(0.4, &mut StdRng::seed_from_u64(3)).tanh(),
        std::slice::from_ref(&x),
    );
}

#[test]
fn activations() {
    let x = away_from_zero(&[2, 3], 30);
    check("erf", |_, v| v[0].erf(), std::slice::from_ref(&x));
    check("gelu", |_, v| v[0].gelu(), std::slice::from_ref(&x));
    check(
        "gelu_tanh",
        |_, v| v[0].gelu_tanh(),
        std::slice::from_ref(&x),
    );
    check("silu", |_, v| v[0].silu(), std::slice::from_ref(&x));
    check(
        "softplus",
        |_, v| v[0].softplus(2.0, 3.0),
        std::slice::from_ref(&x),
    );
    check("elu", |_, v| v[0].elu(0.7), std::slice::from_ref(&x));
    check(
        "hardtanh",
        |_, v| v[0].hardtanh(-0.9, 0.9) * v[0],
        std::slice::from_ref(&x),
    );
    check(
        "clamp",
        |_, v| v[0].clamp(-0.9, 0.9) * v[0],
        std::slice::from_ref(&x),
    );
    check("abs", |_, v| v[0].abs() * v[0], std::slice::from_ref(&x));
}

#[test]
fn convolutions_to_any_order() {
    use tapegrad::ConvTranspose2dOptions;
    let cases = [
        (Conv2dOptions::new(), [1, 2, 5, 5], [3, 2, 3, 3]),
        (
            Conv2dOptions::new().stride(2).padding(1),
            [2, 2, 6, 5],
            [2, 2, 3, 3],
        ),
        (
            Conv2dOptions::new().dilation((2, 1)).padding((1, 0)),
            [1, 2, 6, 6],
            [2, 2, 2, 3],
        ),
        (
            Conv2dOptions::new().groups(2).stride((1, 2)),
            [1, 4, 5, 6],
            [4, 2, 3, 2],
        ),
    ];
    for (k, (o, xs, ws)) in cases.into_iter().enumerate() {
        let (x, w, b) = (
            randn(&xs, 40 + k as u64),
            randn(&ws, 50 + k as u64),
            randn(&[ws[0]], 60),
        );
        check(
            &format!("conv2d {k}"),
            |_, v| v[0].conv2d(v[1], Some(v[2]), o).tanh(),
            &[x.clone(), w.clone(), b],
        );
        // A product of two convolutions: second derivatives in x and w mix.
        check(
            &format!("conv2d squared {k}"),
            |_, v| {
                let y = v[0].conv2d(v[1], None, o);
                y * y
            },
            &[x, w],
        );
    }
    let o = ConvTranspose2dOptions::new()
        .stride(2)
        .padding(1)
        .output_padding(1);
    let (x, w, b) = (
        randn(&[2, 3, 3, 3], 70),
        randn(&[3, 2, 3, 3], 71),
        randn(&[2], 72),
    );
    check(
        "conv_transpose2d",
        |_, v| v[0].conv_transpose2d(v[1], Some(v[2]), o).tanh(),
        &[x.clone(), w.clone(), b],
    );
    check(
        "conv_transpose2d squared",
        |_, v| {
            let y = v[0].conv_transpose2d(v[1], None, o);
            y * y
        },
        &[x, w],
    );
    // Third order through the weight-gradient op: d³/dw³ of Σ conv(x, w)³.
    let tape = Tape::<f64>::new();
    let x = tape.leaf(randn(&[1, 1, 4, 4], 73));
    let w = tape.leaf(randn(&[1, 1, 2, 2], 74));
    let y = x.conv2d(w, None, Conv2dOptions::new()).powf(3.0).sum();
    let g1 = y.grad_graph(&[w])[0];
    let g2 = g1.sum().grad_graph(&[w])[0];
    let g3 = g2.sum().backward()[w].clone();
    // d³/dw³ summed over taps: Σ over windows of 6·xₜ·(Σ patch)² for each tap t.
    let xv = x.value();
    let mut want = [0.0; 4];
    for i in 0..3 {
        for j in 0..3 {
            let patch = [
                xv.get(&[0, 0, i, j]),
                xv.get(&[0, 0, i, j + 1]),
                xv.get(&[0, 0, i + 1, j]),
                xv.get(&[0, 0, i + 1, j + 1]),
            ];
            let s: f64 = patch.iter().sum();
            for (t, p) in patch.iter().enumerate() {
                want[t] += 6.0 * p * s * s;
            }
        }
    }
    for (t, (&got, &want)) in g3.data().iter().zip(&want).enumerate() {
        assert!((got - want).abs() < 1e-9, "tap {t}: {got} vs {want}");
    }
}

#[test]
fn pooling_to_any_order() {
    use tapegrad::Pool2dOptions;
    // Distinct values: no ties within a window.
    let x = Tensor::<f64>::from_vec(
        (0..72)
            .map(|i| ((i * 37) % 72) as f64 * 0.1 - 3.0)
            .collect(),
        [1, 2, 6, 6],
    )
    .unwrap();
    check(
        "max_pool2d",
        |_, v| v[0].max_pool2d(2).powf(2.0),
        std::slice::from_ref(&x),
    );
    check(
        "max_pool2d overlapping, padded",
        |_, v| {
            v[0].max_pool2d(Pool2dOptions::new(3).stride(2).padding(1))
                .tanh()
        },
        std::slice::from_ref(&x),
    );
    check(
        "avg_pool2d",
        |_, v| {
            v[0].avg_pool2d(Pool2dOptions::new(3).stride(2).padding(1).ceil_mode(true))
                .tanh()
        },
        std::slice::from_ref(&x),
    );
    check(
        "adaptive_avg_pool2d",
        |_, v| v[0].adaptive_avg_pool2d((4, 3)).tanh(),
        std::slice::from_ref(&x),
    );
    check(
        "adaptive_max_pool2d",
        |_, v| v[0].adaptive_max_pool2d((2, 4)).powf(2.0),
        std::slice::from_ref(&x),
    );
    // A third derivative through max pooling's scatter and gather.
    let tape = Tape::<f64>::new();
    let xv = tape.leaf(x.clone());
    let y = xv.max_pool2d(2).powf(3.0).sum();
    let g1 = y.grad_graph(&[xv])[0];
    let g2 = g1.sum().grad_graph(&[xv])[0];
    let g3 = g2.sum().backward()[xv].clone();
    // Each window's maximum m gets d³(m³)/dm³ = 6, every other element 0.
    let maxima = g3.data().iter().filter(|&&v| v == 6.0).count();
    assert_eq!(maxima, 18);
    assert!(g3.data().iter().all(|&v| v == 6.0 || v == 0.0));
}

#[test]
fn losses_with_every_reduction() {
    use tapegrad::{CrossEntropyOptions, Reduction};
    let x = away_from_zero(&[3, 4], 80);
    let t = randn(&[3, 4], 81);
    let tb = Tensor::<f64>::rand_uniform([3, 4], 0.0, 1.0, &mut StdRng::seed_from_u64(82));
    for r in [Reduction::None, Reduction::Sum, Reduction::Mean] {
        check(
            &format!("mse {r:?}"),
            |_, v| v[0].tanh().mse_loss_with(v[1], r),
            &[x.clone(), t.clone()],
        );
        check(
            &format!("l1 {r:?}"),
            |_, v| (v[0] * v[0]).l1_loss(v[1], r),
            &[x.clone(), t.clone()],
        );
        check(
            &format!("smooth_l1 {r:?}"),
            |_, v| (v[0] * v[0]).smooth_l1_loss(v[1], 0.7, r),
            &[x.clone(), t.clone()],
        );
        check(
            &format!("huber {r:?}"),
            |_, v| (v[0] * v[0]).huber_loss(v[1], 0.7, r),
            &[x.clone(), t.clone()],
        );
        let pw = Tensor::from_vec(vec![0.5, 2.0, 1.0, 3.0], [4]).unwrap();
        check(
            &format!("bce_with_logits {r:?}"),
            |_, v| v[0].binary_cross_entropy_with_logits(v[1], Some(&pw), r),
            &[x.clone(), tb.clone()],
        );
        let w = Tensor::from_vec(vec![1.0, 0.5, 2.0, 1.5], [4]).unwrap();
        check(
            &format!("nll {r:?}"),
            |_, v| {
                (v[0] * v[0])
                    .log_softmax(1)
                    .nll_loss(&[0, 3, 1], Some(&w), Some(3), r)
            },
            std::slice::from_ref(&x),
        );
        let o = CrossEntropyOptions {
            weight: Some(w.clone()),
            ignore_index: Some(1),
            label_smoothing: 0.1,
            reduction: r,
        };
        check(
            &format!("cross_entropy_with {r:?}"),
            |_, v| (v[0] * v[0]).cross_entropy_with(&[0, 1, 2], o.clone()),
            std::slice::from_ref(&x),
        );
    }
    // Segmentation layout: [N, C, H, W] logits, [N, H, W] targets.
    let x4 = randn(&[2, 3, 2, 2], 83);
    let targets = [0, 1, 2, 1, 2, 0, 0, 1];
    check(
        "cross_entropy_with NCHW",
        |_, v| v[0].cross_entropy_with(&targets, CrossEntropyOptions::default()),
        std::slice::from_ref(&x4),
    );
}

#[test]
fn resampling_padding_selection() {
    use tapegrad::{Mask, PadMode, UpsampleSize};
    let x = randn(&[1, 2, 3, 4], 90);
    check(
        "upsample_nearest2d",
        |_, v| v[0].upsample_nearest2d(UpsampleSize::Size(5, 7)).powf(2.0),
        std::slice::from_ref(&x),
    );
    for align in [false, true] {
        check(
            &format!("upsample_bilinear2d align {align}"),
            |_, v| {
                v[0].upsample_bilinear2d(UpsampleSize::Scale(1.5, 2.0), align)
                    .powf(2.0)
            },
            std::slice::from_ref(&x),
        );
    }
    for mode in [PadMode::Constant(0.5), PadMode::Reflect, PadMode::Replicate] {
        check(
            &format!("pad2d {mode:?}"),
            |_, v| v[0].pad2d([1, 2, 2, 1], mode).powf(2.0),
            std::slice::from_ref(&x),
        );
    }
    check(
        "flatten_dims",
        |_, v| v[0].flatten_dims(1, 2).tanh(),
        std::slice::from_ref(&x),
    );
    let y = randn(&[4], 91);
    check(
        "maximum",
        |_, v| v[0].maximum(v[1]) * v[0],
        &[x.clone(), y.clone()],
    );
    check(
        "minimum",
        |_, v| v[0].minimum(v[1]) * v[1],
        &[x.clone(), y.clone()],
    );
    let mask = Mask::from_fn(&y, |v| v > 0.0);
    check(
        "select",
        |_, v| Var::select(&mask, v[0], v[1]).powf(2.0),
        &[x, y],
    );
}

#[test]
fn closed_forms_of_second_and_third_derivatives() {
    // log-sum-exp: ∇ = p = softmax(x), H = diag(p) − p pᵀ.
    fn lse<'t>(x: Var<'t, f64>) -> Var<'t, f64> {
        x.exp().sum().log()
    }
    let x = Tensor::from_vec(vec![0.3, -1.2, 2.0, 0.5], [4]).unwrap();
    let h = hessian(lse, &x);
    let e: Vec<f64> = x.data().iter().map(|v: &f64| v.exp()).collect();
    let z: f64 = e.iter().sum();
    let p: Vec<f64> = e.iter().map(|v| v / z).collect();
    for i in 0..4 {
        for j in 0..4 {
            let want = if i == j { p[i] } else { 0.0 } - p[i] * p[j];
            assert!((h.get(&[i, j]) - want).abs() < 1e-15, "H[{i},{j}]");
        }
    }
    // A quadratic ½xᵀAx + bᵀx has Hessian (A + Aᵀ)/2·2 = A + Aᵀ… with A symmetric, A.
    fn quad<'t>(x: Var<'t, f64>) -> Var<'t, f64> {
        let a =
            Tensor::from_vec(vec![2.0, 0.5, 0.0, 0.5, 3.0, -1.0, 0.0, -1.0, 4.0], [3, 3]).unwrap();
        let a = x.tape().constant(a);
        let xc = x.reshape([3, 1]);
        (xc.transpose(0, 1).matmul(a).matmul(xc) * 0.5).sum() + x.sum()
    }
    let h = hessian(quad, &Tensor::from_vec(vec![1.0, -2.0, 0.5], [3]).unwrap());
    assert_eq!(h.data(), &[2.0, 0.5, 0.0, 0.5, 3.0, -1.0, 0.0, -1.0, 4.0]);
    // tanh: y‴ = −2·sech²(x)·(1 − 3·tanh²(x)).
    for x0 in [-1.5, -0.2, 0.0, 0.7, 2.0] {
        let tape = Tape::<f64>::new();
        let x = tape.leaf(Tensor::scalar(x0));
        let d1 = x.tanh().grad_graph(&[x])[0];
        let d2 = d1.grad_graph(&[x])[0];
        let d3 = d2.backward()[x].item();
        let t = f64::tanh(x0);
        let want = -2.0 * (1.0 - t * t) * (1.0 - 3.0 * t * t);
        assert!((d3 - want).abs() < 1e-14, "tanh‴({x0}) = {d3}, want {want}");
    }
}
