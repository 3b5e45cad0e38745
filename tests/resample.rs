//! Upsampling (nearest, bilinear), pad2d, adaptive pooling, ceil-mode pooling
//! and flatten_dims: gradients against finite differences, values and
//! gradients against PyTorch, the fast paths against naive definitions on
//! large inputs at 1 and 2 threads, the nn layers, and the panic messages.

mod common;

use common::fixtures;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tapegrad::gradcheck::{Options, gradcheck};
use tapegrad::nn::{
    AdaptiveAvgPool2d, AdaptiveMaxPool2d, Flatten, Module, Pad2d, Params, Sequential, Upsample,
};
use tapegrad::{Float, PadMode, Pool2dOptions, Tape, Tensor, UpsampleSize, Var};

/// One op with its options, applied to a `Var`.
#[derive(Clone, Copy, Debug)]
enum Op {
    Nearest(UpsampleSize),
    Bilinear(UpsampleSize, bool),
    Pad([usize; 4], PadMode),
    AdaptiveAvg((usize, usize)),
    AdaptiveMax((usize, usize)),
    MaxPool(Pool2dOptions),
    AvgPool(Pool2dOptions),
    Flatten(isize, isize),
}

impl Op {
    fn apply<'t, T: Float>(self, x: Var<'t, T>) -> Var<'t, T> {
        match self {
            Op::Nearest(s) => x.upsample_nearest2d(s),
            Op::Bilinear(s, a) => x.upsample_bilinear2d(s, a),
            Op::Pad(p, m) => x.pad2d(p, m),
            Op::AdaptiveAvg(o) => x.adaptive_avg_pool2d(o),
            Op::AdaptiveMax(o) => x.adaptive_max_pool2d(o),
            Op::MaxPool(o) => x.max_pool2d(o),
            Op::AvgPool(o) => x.avg_pool2d(o),
            Op::Flatten(a, b) => x.flatten_dims(a, b),
        }
    }
}

/// (y, dx) through the tape for upstream gradient `dy`.
fn run<T: Float>(op: Op, x: &Tensor<T>, dy: Option<&Tensor<T>>) -> (Tensor<T>, Tensor<T>) {
    let tape = Tape::<T>::new();
    let xv = tape.leaf(x.clone());
    let y = op.apply(xv);
    let dy = dy.cloned().unwrap_or_else(|| Tensor::ones(y.shape()));
    let g = y.backward_with(dy);
    (y.value(), g[xv].clone())
}

/// Distinct values 0.1 apart in random order (no near-ties for max pooling).
fn well_separated(shape: [usize; 4], rng: &mut StdRng) -> Tensor<f64> {
    let n: usize = shape.iter().product();
    let mut v: Vec<f64> = (0..n).map(|i| (i as f64 - n as f64 / 2.0) * 0.1).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.random_range(0..=i));
    }
    Tensor::from_vec(v, shape).unwrap()
}

// ---------------------------------------------------------------------------
// gradcheck
// ---------------------------------------------------------------------------

fn gradcheck_cases() -> Vec<([usize; 4], Op)> {
    use UpsampleSize::{Scale, Size};
    let mut cases = vec![];
    for s in [
        Size(5, 7),
        Size(2, 3),
        Size(6, 8),
        Scale(2.0, 2.0),
        Scale(1.5, 2.5),
        Scale(0.7, 0.5),
        Scale(2.1, 1.7),
        Scale(1.1, 1.0),
    ] {
        cases.push(([2, 2, 3, 4], Op::Nearest(s)));
        for align in [false, true] {
            cases.push(([1, 2, 3, 4], Op::Bilinear(s, align)));
        }
    }
    cases.push(([1, 1, 3, 4], Op::Bilinear(Size(1, 1), true)));
    for mode in [
        PadMode::Constant(0.0),
        PadMode::Constant(-2.5),
        PadMode::Reflect,
        PadMode::Replicate,
    ] {
        for pad in [[1, 2, 0, 3], [2, 2, 2, 2], [0, 0, 1, 0], [3, 0, 1, 1]] {
            cases.push(([2, 1, 4, 4], Op::Pad(pad, mode)));
        }
    }
    for (shape, out) in [
        ([1, 2, 5, 7], (3, 4)),
        ([2, 1, 7, 5], (2, 3)),
        ([1, 1, 4, 4], (2, 2)),
        ([2, 2, 5, 5], (1, 1)),
        ([1, 1, 3, 3], (5, 4)),
    ] {
        cases.push((shape, Op::AdaptiveAvg(out)));
        cases.push((shape, Op::AdaptiveMax(out)));
    }
    for (shape, k, s, p) in [
        ([1, 2, 5, 7], (2, 2), (2, 2), (0, 0)),
        ([1, 1, 6, 7], (3, 3), (2, 2), (1, 1)),
        ([1, 1, 7, 8], (3, 2), (2, 3), (1, 0)),
        ([1, 1, 2, 2], (3, 3), (2, 2), (0, 0)),
    ] {
        let o = Pool2dOptions::new(k).stride(s).padding(p).ceil_mode(true);
        cases.push((shape, Op::MaxPool(o)));
        for include in [true, false] {
            cases.push((shape, Op::AvgPool(o.count_include_pad(include))));
        }
    }
    for (a, b) in [(1, 2), (-3, -1), (0, -1), (2, 2)] {
        cases.push(([2, 3, 2, 2], Op::Flatten(a, b)));
    }
    cases
}

#[test]
fn gradcheck_every_op_and_option() {
    let mut rng = StdRng::seed_from_u64(5);
    let cases = gradcheck_cases();
    for (i, &(shape, op)) in cases.iter().enumerate() {
        let x = well_separated(shape, &mut rng);
        let o = Options {
            seed: i as u64,
            ..Options::default()
        };
        let report = gradcheck(|_, v| op.apply(v[0]), std::slice::from_ref(&x), o);
        assert!(report.passed(), "case {i} {op:?}: {report}");
    }
    assert_eq!(cases.len(), 67);
}

// ---------------------------------------------------------------------------
// PyTorch fixtures
// ---------------------------------------------------------------------------

fn fixture_tensor(case: &fixtures::Case, name: &str) -> Tensor<f64> {
    let (shape, data) = case.tensor(name);
    Tensor::from_vec(data.to_vec(), shape).unwrap()
}

/// The op a fixture case describes (its name's prefix names the op).
fn fixture_op(case: &fixtures::Case) -> Op {
    let pair = |k: &str| {
        let v = case.param_usize(k);
        (v[0], v[1])
    };
    let size = || {
        if case.has_param("size") {
            let (h, w) = pair("size");
            UpsampleSize::Size(h, w)
        } else {
            let v = case.param("scale");
            UpsampleSize::Scale(v[0], v[1])
        }
    };
    let name = case.name.as_str();
    if name.starts_with("nearest_") {
        Op::Nearest(size())
    } else if name.starts_with("bilinear_") {
        Op::Bilinear(size(), case.param_bool("align_corners"))
    } else if name.starts_with("pad_") {
        let p = case.param_usize("padding");
        let mode = match case.param_usize("mode")[0] {
            0 => PadMode::Constant(case.param_f64("value")),
            1 => PadMode::Reflect,
            _ => PadMode::Replicate,
        };
        Op::Pad([p[0], p[1], p[2], p[3]], mode)
    } else if name.starts_with("adaptive_avg_") {
        Op::AdaptiveAvg(pair("out"))
    } else if name.starts_with("adaptive_max_") {
        Op::AdaptiveMax(pair("out"))
    } else if name.starts_with("ceil_") {
        let o = Pool2dOptions::new(pair("kernel"))
            .stride(pair("stride"))
            .padding(pair("padding"))
            .ceil_mode(true);
        if case.param_usize("kind")[0] == 0 {
            Op::MaxPool(o)
        } else {
            Op::AvgPool(o.count_include_pad(case.param_bool("count_include_pad")))
        }
    } else if name.starts_with("flatten_") {
        Op::Flatten(
            case.param_f64("start") as isize,
            case.param_f64("end") as isize,
        )
    } else {
        panic!("unknown fixture case {name}")
    }
}

#[test]
fn matches_pytorch_fixtures() {
    let cases = fixtures::load("resample.txt");
    assert_eq!(cases.len(), 94);
    for case in &cases {
        let op = fixture_op(case);
        let x = fixture_tensor(case, "x");
        let (y, dx) = run(op, &x, Some(&fixture_tensor(case, "dy")));
        for (what, got) in [("y", &y), ("dx", &dx)] {
            let want = fixture_tensor(case, what);
            assert_eq!(got.shape(), want.shape(), "{} {what}", case.name);
            let diff = got.max_abs_diff(&want);
            assert!(diff <= 1e-10, "{} {what}: max |diff| {diff:e}", case.name);
        }
    }
}

// ---------------------------------------------------------------------------
// large inputs against naive definitions, 1 and 2 threads, f32 and f64
// ---------------------------------------------------------------------------

/// For each output position along an axis, the input positions it reads and their weights.
type AxisTaps = Vec<Vec<(usize, f64)>>;

/// The definition of each op as, for every output element, the input
/// elements it reads and their weights (for max pooling the first maximum of
/// its window, a NaN winning). y = Σ w·x, dx = Σ w·dy over the same lists.
fn naive_taps(op: Op, shape: [usize; 4], x: &[f64]) -> (Vec<usize>, Vec<Vec<(usize, f64)>>) {
    let [n, c, h, w] = shape;
    let planes = n * c;
    // Per-axis tap lists, combined as an outer product per plane.
    let (oh, ow, rows, cols): (usize, usize, AxisTaps, AxisTaps) = match op {
        Op::Nearest(size) => {
            let ((oh, ow), [sh, sw]) = out_size(size, h, w);
            let axis = |i: usize, o: usize, s: Option<f64>| -> AxisTaps {
                (0..o)
                    .map(|d| {
                        let src = if o == i {
                            d
                        } else if o == 2 * i {
                            d / 2
                        } else {
                            let scale = s.map_or(i as f32 / o as f32, |s| (1.0 / s) as f32);
                            ((d as f32 * scale).floor() as usize).min(i - 1)
                        };
                        vec![(src, 1.0)]
                    })
                    .collect()
            };
            (oh, ow, axis(h, oh, sh), axis(w, ow, sw))
        }
        Op::Bilinear(size, align) => {
            let ((oh, ow), [sh, sw]) = out_size(size, h, w);
            let axis = |i: usize, o: usize, s: Option<f64>| -> AxisTaps {
                (0..o)
                    .map(|d| {
                        if o == i {
                            return vec![(d, 1.0)];
                        }
                        let src = if align {
                            if o > 1 {
                                d as f64 * (i - 1) as f64 / (o - 1) as f64
                            } else {
                                0.0
                            }
                        } else {
                            let ratio = s.map_or(i as f64 / o as f64, |s| 1.0 / s);
                            ((d as f64 + 0.5) * ratio - 0.5).max(0.0)
                        };
                        let i0 = (src.floor() as usize).min(i - 1);
                        let l = (src - i0 as f64).clamp(0.0, 1.0);
                        vec![(i0, 1.0 - l), ((i0 + 1).min(i - 1), l)]
                    })
                    .collect()
            };
            (oh, ow, axis(h, oh, sh), axis(w, ow, sw))
        }
        Op::Pad([l, r, t, b], mode) => {
            let axis = |i: usize, before: usize, after: usize| -> AxisTaps {
                (0..i + before + after)
                    .map(|o| {
                        let p = o as isize - before as isize;
                        let last = i as isize - 1;
                        let src = match mode {
                            PadMode::Constant(_) => (0..=last).contains(&p).then_some(p),
                            PadMode::Reflect => Some(if p < 0 {
                                -p
                            } else if p > last {
                                2 * last - p
                            } else {
                                p
                            }),
                            PadMode::Replicate => Some(p.clamp(0, last)),
                        };
                        src.map(|s| vec![(s as usize, 1.0)]).unwrap_or_default()
                    })
                    .collect()
            };
            (h + t + b, w + l + r, axis(h, t, b), axis(w, l, r))
        }
        Op::AdaptiveAvg((oh, ow)) | Op::AdaptiveMax((oh, ow)) => {
            let axis = |i: usize, o: usize| -> AxisTaps {
                (0..o)
                    .map(|d| {
                        let (s, e) = (d * i / o, ((d + 1) * i).div_ceil(o));
                        (s..e).map(|k| (k, 1.0 / (e - s) as f64)).collect()
                    })
                    .collect()
            };
            (oh, ow, axis(h, oh), axis(w, ow))
        }
        _ => unreachable!("naive_taps: {op:?}"),
    };
    let mut taps = Vec::with_capacity(planes * oh * ow);
    for p in 0..planes {
        for row in &rows {
            for col in &cols {
                let mut t: Vec<(usize, f64)> = vec![];
                for &(r, wr) in row {
                    for &(s, ws) in col {
                        t.push((p * h * w + r * w + s, wr * ws));
                    }
                }
                if let Op::AdaptiveMax(_) = op {
                    let mut best = t[0].0;
                    for &(e, _) in &t[1..] {
                        if x[e] > x[best] || x[e].is_nan() {
                            best = e;
                        }
                    }
                    t = vec![(best, 1.0)];
                }
                taps.push(t);
            }
        }
    }
    (vec![n, c, oh, ow], taps)
}

fn out_size(size: UpsampleSize, h: usize, w: usize) -> ((usize, usize), [Option<f64>; 2]) {
    match size {
        UpsampleSize::Size(a, b) => ((a, b), [None, None]),
        UpsampleSize::Scale(a, b) => (
            (
                (h as f64 * a).floor() as usize,
                (w as f64 * b).floor() as usize,
            ),
            [Some(a), Some(b)],
        ),
    }
}

/// Fast path vs the naive definition for one op on one large input: f64 to
/// 1e-12, f32 to 1e-4; and each type's results at 1 and 2 threads bit-identical.
fn check_large(op: Op, shape: [usize; 4], rng: &mut StdRng) {
    let n: usize = shape.iter().product();
    let x64: Vec<f64> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
    let (out_shape, taps) = naive_taps(op, shape, &x64);
    let fill = match op {
        Op::Pad(_, PadMode::Constant(v)) => v,
        _ => 0.0,
    };
    let dy64: Vec<f64> = (0..taps.len())
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let y_want: Vec<f64> = taps
        .iter()
        .map(|t| {
            if t.is_empty() {
                fill
            } else {
                t.iter().map(|&(e, w)| w * x64[e]).sum()
            }
        })
        .collect();
    let mut dx_want = vec![0.0; n];
    for (t, &g) in taps.iter().zip(&dy64) {
        for &(e, w) in t {
            dx_want[e] += w * g;
        }
    }
    let mut per_threads_64 = vec![];
    let mut per_threads_32 = vec![];
    for threads in [1, 2] {
        tapegrad::settings::set_num_threads(threads);
        let x = Tensor::from_vec(x64.clone(), shape).unwrap();
        let dy = Tensor::from_vec(dy64.clone(), &out_shape[..]).unwrap();
        let (y, dx) = run(op, &x, Some(&dy));
        assert_eq!(&y.shape()[..], &out_shape[..], "{op:?}");
        let close = |a: &[f64], b: &[f64], tol: f64, what: &str| {
            let d = a
                .iter()
                .zip(b)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f64::max);
            assert!(
                d <= tol,
                "{op:?} {threads} threads {what}: max |diff| {d:e}"
            );
        };
        close(y.data(), &y_want, 1e-12, "f64 y");
        close(dx.data(), &dx_want, 1e-12, "f64 dx");
        per_threads_64.push((y, dx));
        let to32 = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let x = Tensor::from_vec(to32(&x64), shape).unwrap();
        let dy = Tensor::from_vec(to32(&dy64), &out_shape[..]).unwrap();
        let (y, dx) = run(op, &x, Some(&dy));
        let widen = |t: &Tensor<f32>| t.data().iter().map(|&v| v as f64).collect::<Vec<_>>();
        close(&widen(&y), &y_want, 1e-4, "f32 y");
        close(&widen(&dx), &dx_want, 1e-4, "f32 dx");
        per_threads_32.push((y, dx));
    }
    tapegrad::settings::set_num_threads(0);
    assert_eq!(per_threads_64[0].0.data(), per_threads_64[1].0.data());
    assert_eq!(per_threads_64[0].1.data(), per_threads_64[1].1.data());
    assert_eq!(per_threads_32[0].0.data(), per_threads_32[1].0.data());
    assert_eq!(per_threads_32[0].1.data(), per_threads_32[1].1.data());
}

#[test]
fn large_inputs_match_naive_definitions_at_1_and_2_threads() {
    use UpsampleSize::{Scale, Size};
    let mut rng = StdRng::seed_from_u64(17);
    let big = [8, 16, 64, 64];
    let small = [8, 16, 32, 32];
    check_large(Op::Nearest(Scale(2.0, 2.0)), small, &mut rng);
    check_large(Op::Nearest(Scale(1.7, 2.3)), small, &mut rng);
    check_large(Op::Nearest(Size(40, 24)), big, &mut rng);
    check_large(Op::Bilinear(Scale(2.0, 1.5), false), small, &mut rng);
    check_large(Op::Bilinear(Size(45, 70), true), small, &mut rng);
    check_large(Op::Bilinear(Size(24, 40), false), big, &mut rng);
    check_large(Op::Pad([1, 2, 3, 0], PadMode::Constant(0.5)), big, &mut rng);
    check_large(Op::Pad([3, 1, 2, 5], PadMode::Reflect), big, &mut rng);
    check_large(Op::Pad([4, 0, 1, 2], PadMode::Replicate), big, &mut rng);
    check_large(Op::AdaptiveAvg((7, 5)), big, &mut rng);
    check_large(Op::AdaptiveMax((7, 5)), big, &mut rng);
    check_large(Op::AdaptiveMax((1, 1)), big, &mut rng);
}

#[test]
fn adaptive_max_takes_the_first_maximum_and_nan_wins() {
    let tape = Tape::<f64>::new();
    let x = tape.leaf(
        Tensor::from_vec(
            vec![1.0, 3.0, 3.0, 0.0, 3.0, 2.0, f64::NAN, 1.0, 0.0],
            [1, 1, 3, 3],
        )
        .unwrap(),
    );
    let y = x.adaptive_max_pool2d((1, 2)); // columns 0..2 and 1..3
    let v = y.value();
    assert!(v.data()[0].is_nan());
    assert_eq!(v.data()[1], 3.0);
    let g = y.backward_with(Tensor::from_vec(vec![1.0, 2.0], [1, 1, 1, 2]).unwrap());
    // The NaN wins the first window; the first of the three 3s the second.
    assert_eq!(g[x].data(), &[0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
    let z = tape.leaf(Tensor::from_vec(vec![2.0, 5.0, 5.0, 5.0], [1, 1, 2, 2]).unwrap());
    let g = z.adaptive_max_pool2d((1, 1)).sum().backward();
    assert_eq!(g[z].data(), &[0.0, 1.0, 0.0, 0.0]);
}

// ---------------------------------------------------------------------------
// layers
// ---------------------------------------------------------------------------

#[test]
fn layers_run_in_a_sequential() {
    let model = Sequential::<f64>::new()
        .push(Pad2d {
            padding: [1, 1, 1, 1],
            mode: PadMode::Reflect,
        })
        .push(Upsample::bilinear(UpsampleSize::Scale(2.0, 2.0), false))
        .push(Upsample::nearest(UpsampleSize::Size(5, 6)))
        .push(AdaptiveMaxPool2d((3, 3)))
        .push(AdaptiveAvgPool2d((1, 1)))
        .push(Flatten);
    let params = Params::<f64>::default();
    let tape = Tape::new();
    let x = tape.leaf(Tensor::arange(2 * 3 * 4 * 4).reshape([2, 3, 4, 4]));
    let y = model.forward(&params.bind(&tape), x);
    assert_eq!(&y.shape()[..], &[2, 3]);
    let want = x
        .pad2d([1, 1, 1, 1], PadMode::Reflect)
        .upsample_bilinear2d(UpsampleSize::Scale(2.0, 2.0), false)
        .upsample_nearest2d(UpsampleSize::Size(5, 6))
        .adaptive_max_pool2d((3, 3))
        .adaptive_avg_pool2d((1, 1))
        .flatten();
    assert_eq!(y.value().data(), want.value().data());
}

// ---------------------------------------------------------------------------
// panics
// ---------------------------------------------------------------------------

fn apply(shape: &[usize], op: Op) {
    let tape = Tape::<f32>::new();
    let _ = op.apply(tape.leaf(Tensor::zeros(shape)));
}

#[test]
#[should_panic(expected = "upsample_nearest2d: input [2, 3, 4] must be [N, C, H, W] (rank 4)")]
fn error_upsample_rank() {
    apply(&[2, 3, 4], Op::Nearest(UpsampleSize::Size(2, 2)));
}

#[test]
#[should_panic(
    expected = "upsample_bilinear2d: input [1, 1, 0, 4] has an empty spatial dimension; upsampling needs H ≥ 1 and W ≥ 1"
)]
fn error_upsample_empty_input() {
    apply(&[1, 1, 0, 4], Op::Bilinear(UpsampleSize::Size(2, 2), false));
}

#[test]
#[should_panic(
    expected = "upsample_nearest2d: output size (0, 3) must be at least 1 on both axes (input [1, 1, 2, 2])"
)]
fn error_upsample_zero_size() {
    apply(&[1, 1, 2, 2], Op::Nearest(UpsampleSize::Size(0, 3)));
}

#[test]
#[should_panic(
    expected = "upsample_bilinear2d: scale factors (2, -1) must be finite and positive (input [1, 1, 2, 2])"
)]
fn error_upsample_negative_scale() {
    apply(
        &[1, 1, 2, 2],
        Op::Bilinear(UpsampleSize::Scale(2.0, -1.0), true),
    );
}

#[test]
#[should_panic(
    expected = "upsample_nearest2d: scale factors (NaN, 1) must be finite and positive (input [1, 1, 2, 2])"
)]
fn error_upsample_nan_scale() {
    apply(
        &[1, 1, 2, 2],
        Op::Nearest(UpsampleSize::Scale(f64::NAN, 1.0)),
    );
}

#[test]
#[should_panic(
    expected = "upsample_nearest2d: scale factors (0.2, 1) give an empty output (0, 3) (input [1, 1, 3, 3])"
)]
fn error_upsample_empty_output() {
    apply(&[1, 1, 3, 3], Op::Nearest(UpsampleSize::Scale(0.2, 1.0)));
}

#[test]
#[should_panic(expected = "pad2d: input [5] must have at least 2 axes (the last two are padded)")]
fn error_pad_rank() {
    apply(&[5], Op::Pad([1, 1, 1, 1], PadMode::Constant(0.0)));
}

#[test]
#[should_panic(
    expected = "pad2d: reflect padding [3, 0, 0, 0] (left, right, top, bottom) must be smaller than the input's width 3 and height 4 (input [1, 1, 4, 3])"
)]
fn error_reflect_padding_too_large() {
    apply(&[1, 1, 4, 3], Op::Pad([3, 0, 0, 0], PadMode::Reflect));
}

#[test]
#[should_panic(expected = "pad2d: replicate padding needs H ≥ 1 and W ≥ 1 (input [1, 1, 0, 3])")]
fn error_replicate_empty() {
    apply(&[1, 1, 0, 3], Op::Pad([1, 0, 0, 0], PadMode::Replicate));
}

#[test]
#[should_panic(
    expected = "pad2d: padding [0, 0, 18446744073709551615, 0] overflows the padded size (input [1, 1, 2, 2])"
)]
fn error_pad_overflow() {
    apply(
        &[1, 1, 2, 2],
        Op::Pad([0, 0, usize::MAX, 0], PadMode::Constant(0.0)),
    );
}

#[test]
fn constant_padding_of_an_empty_plane_is_the_border() {
    let tape = Tape::<f64>::new();
    let x = tape.leaf(Tensor::zeros([2, 0, 3]));
    let y = x.pad2d([1, 0, 1, 1], PadMode::Constant(7.0));
    assert_eq!(&y.shape()[..], &[2, 2, 4]);
    assert_eq!(y.value().data(), &[7.0; 16]);
    assert_eq!(y.sum().backward()[x].numel(), 0);
}

#[test]
#[should_panic(expected = "adaptive_avg_pool2d: input [3, 4, 4] must be [N, C, H, W] (rank 4)")]
fn error_adaptive_rank() {
    apply(&[3, 4, 4], Op::AdaptiveAvg((1, 1)));
}

#[test]
#[should_panic(
    expected = "adaptive_max_pool2d: output size (2, 0) must be at least 1 on both axes (input [1, 1, 4, 4])"
)]
fn error_adaptive_zero_output() {
    apply(&[1, 1, 4, 4], Op::AdaptiveMax((2, 0)));
}

#[test]
#[should_panic(
    expected = "adaptive_max_pool2d: input [1, 1, 4, 0] has an empty spatial dimension; adaptive pooling needs H ≥ 1 and W ≥ 1"
)]
fn error_adaptive_empty_input() {
    apply(&[1, 1, 4, 0], Op::AdaptiveMax((2, 2)));
}

#[test]
#[should_panic(expected = "flatten_dims: start axis 2 comes after end axis 1 (shape [2, 3, 4])")]
fn error_flatten_order() {
    apply(&[2, 3, 4], Op::Flatten(2, 1));
}

#[test]
#[should_panic(expected = "flatten_dims: axis -4 is out of range for shape [2, 3, 4] (rank 3)")]
fn error_flatten_axis() {
    apply(&[2, 3, 4], Op::Flatten(-4, 1));
}

#[test]
fn flatten_dims_of_a_scalar_is_one_element() {
    let tape = Tape::<f32>::new();
    let x = tape.leaf(Tensor::from_vec(vec![3.0], Vec::<usize>::new()).unwrap());
    assert_eq!(&x.flatten_dims(0, -1).shape()[..], &[1]);
}
