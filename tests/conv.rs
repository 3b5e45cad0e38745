//! conv2d: gradients against finite differences, values and gradients against
//! PyTorch, the fast path against the naive reference, structural identities,
//! and the shape errors.

mod common;

use common::{cpu, fixtures};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tapegrad::conv::{AxisGeometry, Conv2dGeometry, reference};
use tapegrad::gradcheck::{Options, gradcheck};
use tapegrad::{Conv2dOptions, Float, Tape, Tensor};

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// A conv shape: input, weight and options.
type ConvCase = ([usize; 4], [usize; 4], Conv2dOptions);

fn randn<T: Float>(shape: &[usize], rng: &mut StdRng) -> Tensor<T> {
    Tensor::randn(shape, rng)
}

/// Panics with `what` unless `got` and `want` have the same shape and differ by at
/// most `tol · max(1, max|want|)` anywhere.
fn assert_close<T: Float>(what: &str, got: &Tensor<T>, want: &Tensor<T>, tol: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shapes differ");
    let scale = want
        .data()
        .iter()
        .map(|v| v.to_f64().abs())
        .fold(1.0, f64::max);
    let diff = got.max_abs_diff(want);
    assert!(
        diff <= tol * scale,
        "{what}: max |diff| = {diff:e} > {tol:e} · {scale}"
    );
}

/// Elements `[lo, hi)` of axis `axis` of a contiguous tensor (a copy).
fn slice_axis<T: Float>(t: &Tensor<T>, axis: usize, lo: usize, hi: usize) -> Tensor<T> {
    let s = t.shape();
    let outer: usize = s[..axis].iter().product();
    let inner: usize = s[axis + 1..].iter().product();
    let mut v = Vec::with_capacity(outer * (hi - lo) * inner);
    for o in 0..outer {
        v.extend_from_slice(&t.data()[(o * s[axis] + lo) * inner..(o * s[axis] + hi) * inner]);
    }
    let mut shape = s.to_vec();
    shape[axis] = hi - lo;
    Tensor::from_vec(v, shape).unwrap()
}

/// Concatenation along `axis` of tensors equal in every other axis.
fn concat_axis<T: Float>(parts: &[Tensor<T>], axis: usize) -> Tensor<T> {
    let s0 = parts[0].shape();
    let outer: usize = s0[..axis].iter().product();
    let mut v = Vec::new();
    for o in 0..outer {
        for p in parts {
            let rows = p.shape()[axis..].iter().product::<usize>();
            v.extend_from_slice(&p.data()[o * rows..(o + 1) * rows]);
        }
    }
    let mut shape = s0.to_vec();
    shape[axis] = parts.iter().map(|p| p.shape()[axis]).sum();
    Tensor::from_vec(v, shape).unwrap()
}

/// Gradients of `conv2d` through the tape for upstream gradient `dy`: (y, dx, dw, db).
fn tape_conv<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    b: Option<&Tensor<T>>,
    dy: Option<&Tensor<T>>,
    opts: Conv2dOptions,
) -> (Tensor<T>, Tensor<T>, Tensor<T>, Option<Tensor<T>>) {
    let tape = Tape::<T>::new();
    let (xv, wv) = (tape.leaf(x.clone()), tape.leaf(w.clone()));
    let bv = b.map(|b| tape.leaf(b.clone()));
    let y = xv.conv2d(wv, bv, opts);
    let dy = dy.cloned().unwrap_or_else(|| Tensor::ones(y.shape()));
    let g = y.backward_with(dy);
    (
        y.value(),
        g[xv].clone(),
        g[wv].clone(),
        bv.map(|b| g[b].clone()),
    )
}

// ---------------------------------------------------------------------------
// gradcheck table
// ---------------------------------------------------------------------------

/// One conv configuration: input `[n, c, h, w]`, `o` output channels, kernel
/// `(kh, kw)`, stride, padding, dilation (per axis), groups, bias.
struct Case {
    x: [usize; 4],
    o: usize,
    k: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
    groups: usize,
    bias: bool,
}

/// A table row (a constructor keeps the table one line per case).
#[allow(clippy::too_many_arguments)]
#[rustfmt::skip]
const fn case(x: [usize; 4], o: usize, k: (usize, usize), stride: (usize, usize), padding: (usize, usize),
              dilation: (usize, usize), groups: usize, bias: bool) -> Case {
    Case { x, o, k, stride, padding, dilation, groups, bias }
}

#[rustfmt::skip]
const GRADCHECK_CASES: &[Case] = &[
    //     x [n, c, h, w]   o  kernel   stride   padding  dilation g  bias
    case([1, 1, 4, 4],    1, (3, 3), (1, 1), (0, 0), (1, 1), 1, true),   // 0 basic
    case([2, 1, 4, 4],    1, (3, 3), (1, 1), (0, 0), (1, 1), 1, false),  // 1 batch 2, no bias
    case([1, 2, 5, 4],    3, (1, 1), (1, 1), (0, 0), (1, 1), 1, true),   // 2 1x1 pointwise, non-square
    case([2, 3, 4, 4],    2, (1, 1), (1, 1), (0, 0), (1, 1), 1, false),  // 3 1x1 pointwise, batch
    case([1, 2, 5, 5],    2, (2, 2), (1, 1), (0, 0), (1, 1), 1, true),   // 4 2x2
    case([1, 1, 6, 5],    2, (3, 2), (1, 1), (0, 0), (1, 1), 1, true),   // 5 3x2 kernel
    case([1, 3, 5, 5],    4, (3, 3), (1, 1), (1, 1), (1, 1), 1, true),   // 6 "same" padding
    case([1, 1, 5, 5],    1, (3, 3), (1, 1), (2, 2), (1, 1), 1, false),  // 7 padding 2 ("full")
    case([1, 2, 5, 6],    2, (3, 3), (1, 1), (1, 0), (1, 1), 1, true),   // 8 padding (1, 0)
    case([1, 1, 5, 6],    2, (3, 2), (1, 1), (0, 2), (1, 1), 1, true),   // 9 padding (0, 2), 3x2
    case([1, 1, 7, 7],    1, (3, 3), (2, 2), (0, 0), (1, 1), 1, true),   // 10 stride 2, divides
    case([2, 2, 6, 6],    2, (3, 3), (2, 2), (0, 0), (1, 1), 1, false),  // 11 stride 2, uneven
    case([1, 1, 7, 8],    3, (2, 2), (3, 3), (0, 0), (1, 1), 1, true),   // 12 stride 3, uneven, gaps
    case([1, 2, 7, 5],    1, (3, 3), (2, 1), (0, 0), (1, 1), 1, true),   // 13 stride (2, 1)
    case([1, 2, 6, 6],    2, (3, 3), (2, 2), (1, 1), (1, 1), 1, true),   // 14 stride 2 + padding 1
    case([1, 1, 7, 7],    2, (3, 3), (3, 3), (2, 2), (1, 1), 1, false),  // 15 stride 3 + padding 2
    case([1, 1, 7, 7],    1, (3, 3), (1, 1), (0, 0), (2, 2), 1, true),   // 16 dilation 2
    case([1, 2, 7, 6],    2, (3, 2), (1, 1), (0, 0), (2, 1), 1, true),   // 17 dilation (2, 1)
    case([1, 1, 6, 7],    2, (2, 3), (1, 1), (1, 2), (1, 2), 1, false),  // 18 dilation (1, 2) + padding
    case([2, 1, 8, 8],    2, (3, 3), (2, 2), (2, 2), (2, 2), 1, true),   // 19 dilation 2 + stride 2 + padding 2
    case([1, 4, 5, 5],    4, (3, 3), (1, 1), (1, 1), (1, 1), 2, true),   // 20 groups 2
    case([2, 4, 5, 4],    6, (2, 2), (1, 1), (0, 0), (1, 1), 2, false),  // 21 groups 2, 6 outputs
    case([1, 2, 6, 6],    2, (3, 3), (2, 2), (1, 1), (1, 1), 2, true),   // 22 depthwise 2, stride 2
    case([1, 3, 5, 5],    3, (3, 3), (1, 1), (1, 1), (1, 1), 3, true),   // 23 depthwise 3
    case([2, 3, 5, 4],    6, (3, 2), (1, 1), (0, 0), (1, 1), 3, false),  // 24 depthwise, multiplier 2
    case([1, 4, 6, 6],    4, (3, 3), (2, 2), (2, 2), (2, 2), 4, true),   // 25 depthwise 4, dilated, strided
    case([1, 4, 5, 5],    2, (1, 1), (1, 1), (0, 0), (1, 1), 2, true),   // 26 grouped pointwise
    case([1, 2, 4, 4],    4, (1, 1), (2, 2), (1, 1), (1, 1), 2, true),   // 27 1x1 with stride and padding
    case([1, 1, 3, 3],    6, (2, 2), (1, 1), (0, 0), (1, 1), 1, true),   // 28 6 outputs from 1 channel
    case([1, 1, 4, 4],    1, (4, 4), (1, 1), (0, 0), (1, 1), 1, true),   // 29 kernel = input: 1x1 output
    case([3, 2, 5, 4],    2, (2, 2), (2, 2), (1, 1), (1, 1), 1, true),   // 30 batch 3, stride 2 + pad 1
    case([1, 3, 9, 7],    2, (2, 3), (2, 1), (1, 0), (2, 1), 1, true),   // 31 everything per axis
    case([1, 2, 7, 7],    4, (3, 2), (3, 2), (2, 1), (1, 2), 2, true),   // 32 per-axis + groups 2
    case([2, 4, 4, 5],    4, (2, 2), (1, 2), (0, 1), (2, 1), 4, false),  // 33 depthwise per-axis
];

/// The options of a case.
fn options(c: &Case) -> Conv2dOptions {
    Conv2dOptions::default()
        .stride(c.stride)
        .padding(c.padding)
        .dilation(c.dilation)
        .groups(c.groups)
}

#[test]
fn gradcheck_table() {
    assert!(GRADCHECK_CASES.len() >= 30);
    let mut rng = StdRng::seed_from_u64(7);
    for (i, c) in GRADCHECK_CASES.iter().enumerate() {
        let opts = options(c);
        let w_shape = [c.o, c.x[1] / c.groups, c.k.0, c.k.1];
        // The table's shapes are valid (a bad entry panics here, naming the shapes).
        let geom = Conv2dGeometry::new(&c.x, &w_shape, None, &opts);
        let mut inputs = vec![randn(&c.x, &mut rng), randn(&w_shape, &mut rng)];
        if c.bias {
            inputs.push(randn(&[c.o], &mut rng));
        }
        let report = gradcheck(
            |_, v| v[0].conv2d(v[1], v.get(2).copied(), opts),
            &inputs,
            Options {
                seed: i as u64,
                ..Options::default()
            },
        );
        let expect: usize = inputs.iter().map(|t| t.numel()).sum();
        assert_eq!(report.checked, expect, "case {i}");
        assert!(report.passed(), "case {i} ({geom:?}): {report}");
    }
}

// ---------------------------------------------------------------------------
// PyTorch fixtures
// ---------------------------------------------------------------------------

fn fixture_tensor(case: &fixtures::Case, name: &str) -> Tensor<f64> {
    let (shape, data) = case.tensor(name);
    Tensor::from_vec(data.to_vec(), shape).unwrap()
}

fn fixture_options(case: &fixtures::Case) -> Conv2dOptions {
    let pair = |k: &str| {
        let v = case.param_usize(k);
        (v[0], v[1])
    };
    Conv2dOptions::default()
        .stride(pair("stride"))
        .padding(pair("padding"))
        .dilation(pair("dilation"))
        .groups(case.param_usize("groups")[0])
}

#[test]
fn matches_pytorch_fixtures() {
    let cases = fixtures::load("conv.txt");
    assert_eq!(cases.len(), 36, "conv_seed + conv_00..conv_34");
    for case in &cases {
        let opts = fixture_options(case);
        let x = fixture_tensor(case, "x");
        let w = fixture_tensor(case, "w");
        let b = case.param_bool("bias").then(|| fixture_tensor(case, "b"));
        let dy = fixture_tensor(case, "dy");
        let (y, dx, dw, db) = tape_conv(&x, &w, b.as_ref(), Some(&dy), opts);
        let name = &case.name;
        let check = |what: &str, got: &Tensor<f64>| {
            let want = fixture_tensor(case, what);
            assert_eq!(got.shape(), want.shape(), "{name} {what}");
            let diff = got.max_abs_diff(&want);
            assert!(diff <= 1e-9, "{name} {what}: max |diff| {diff:e}");
        };
        check("y", &y);
        check("dx", &dx);
        check("dw", &dw);
        match db {
            Some(db) => check("db", &db),
            None => assert!(!case.has_tensor("db"), "{name}: missing bias"),
        }
        // The reference agrees with PyTorch too.
        check("y", &reference::conv2d(&x, &w, b.as_ref(), opts));
        let r = reference::conv2d_backward(&x, &w, &dy, opts);
        check("dx", &r.dx);
        check("dw", &r.dw);
    }
}

#[test]
fn seed_example_exact() {
    let cases = fixtures::load("conv.txt");
    let case = fixtures::find(&cases, "conv_seed");
    let x = fixture_tensor(case, "x");
    let w = fixture_tensor(case, "w");
    let (y, dx, dw, _) = tape_conv(&x, &w, None, None, Conv2dOptions::default());
    assert_eq!(y.data(), &[37.0, 47.0, 67.0, 77.0]);
    assert_eq!(dw.data(), &[12.0, 16.0, 24.0, 28.0]);
    assert_eq!(dx.data(), &[1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 3.0, 7.0, 4.0]);
}

// ---------------------------------------------------------------------------
// fast path == reference
// ---------------------------------------------------------------------------

/// A random valid conv configuration (every few draws a pointwise one).
fn random_config(rng: &mut StdRng, k: usize) -> ([usize; 4], [usize; 4], Conv2dOptions) {
    loop {
        let groups = [1, 1, 2, 3][rng.random_range(0..4)];
        let (cg, og) = (rng.random_range(1..4), rng.random_range(1..4));
        let n = rng.random_range(1..4);
        let (h, w) = (rng.random_range(1..12), rng.random_range(1..12));
        let mut r = |lo: usize, hi: usize| (rng.random_range(lo..hi), rng.random_range(lo..hi));
        let (kh, kw) = if k.is_multiple_of(5) { (1, 1) } else { r(1, 5) };
        let stride = if k.is_multiple_of(5) { (1, 1) } else { r(1, 4) };
        let padding = if k.is_multiple_of(5) { (0, 0) } else { r(0, 3) };
        let dilation = r(1, 3);
        let fits = AxisGeometry::new(h, kh, stride.0, padding.0, dilation.0).is_some()
            && AxisGeometry::new(w, kw, stride.1, padding.1, dilation.1).is_some();
        if fits {
            let opts = Conv2dOptions::default()
                .stride(stride)
                .padding(padding)
                .dilation(dilation)
                .groups(groups);
            return ([n, cg * groups, h, w], [og * groups, cg, kh, kw], opts);
        }
    }
}

fn fast_path_matches_reference<T: Float>(seed: u64, tol: f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pointwise = 0;
    for k in 0..60 {
        let (xs, ws, opts) = random_config(&mut rng, k);
        let x = randn::<T>(&xs, &mut rng);
        let w = randn::<T>(&ws, &mut rng);
        let b = randn::<T>(&[ws[0]], &mut rng);
        let geom = Conv2dGeometry::new(&xs, &ws, Some(&[ws[0]]), &opts);
        pointwise += geom.is_pointwise() as usize;
        let dy = randn::<T>(&geom.output_shape(), &mut rng);
        let (y, dx, dw, db) = tape_conv(&x, &w, Some(&b), Some(&dy), opts);
        let what = format!("{} config {k}: x {xs:?} w {ws:?} {opts:?}", T::NAME);
        assert_close(
            &format!("{what} y"),
            &y,
            &reference::conv2d(&x, &w, Some(&b), opts),
            tol,
        );
        let r = reference::conv2d_backward(&x, &w, &dy, opts);
        assert_close(&format!("{what} dx"), &dx, &r.dx, tol);
        assert_close(&format!("{what} dw"), &dw, &r.dw, tol);
        assert_close(&format!("{what} db"), &db.unwrap(), &r.db, tol);
    }
    assert!(
        pointwise >= 10,
        "the pointwise shortcut was exercised {pointwise} times"
    );
}

#[test]
fn fast_path_matches_reference_f64() {
    fast_path_matches_reference::<f64>(1, 1e-12);
}

#[test]
fn fast_path_matches_reference_f32() {
    fast_path_matches_reference::<f32>(2, 1e-5);
}

// ---------------------------------------------------------------------------
// fast path == reference at 1 and 2 threads, and on larger shapes
// ---------------------------------------------------------------------------

/// Runs `f` at 1 and at 2 GEMM threads. The thread count is process-wide and
/// other tests run concurrently, so results are compared with the reference,
/// never with each other's thread count; the default is restored at the end.
fn at_1_and_2_threads(mut f: impl FnMut(usize)) {
    for threads in [1, 2] {
        tapegrad::gemm::set_num_threads(threads);
        f(threads);
    }
    tapegrad::gemm::set_num_threads(0);
}

/// The whole conv (y, dx, dw, db) through the tape against the reference.
fn check_against_reference<T: Float>(
    what: &str,
    xs: &[usize],
    ws: &[usize],
    opts: Conv2dOptions,
    tol: f64,
    rng: &mut StdRng,
) {
    let x = randn::<T>(xs, rng);
    let w = randn::<T>(ws, rng);
    let b = randn::<T>(&[ws[0]], rng);
    let geom = Conv2dGeometry::new(xs, ws, Some(&[ws[0]]), &opts);
    let dy = randn::<T>(&geom.output_shape(), rng);
    let (y, dx, dw, db) = tape_conv(&x, &w, Some(&b), Some(&dy), opts);
    let what = format!("{} {what}: x {xs:?} w {ws:?} {opts:?}", T::NAME);
    let r = reference::conv2d_backward(&x, &w, &dy, opts);
    assert_close(
        &format!("{what} y"),
        &y,
        &reference::conv2d(&x, &w, Some(&b), opts),
        tol,
    );
    assert_close(&format!("{what} dx"), &dx, &r.dx, tol);
    assert_close(&format!("{what} dw"), &dw, &r.dw, tol);
    assert_close(&format!("{what} db"), &db.unwrap(), &r.db, tol);
}

/// Random shapes (groups, dilation, uneven strides and padding, batches of 1
/// to 7 so the batch splits unevenly between threads), f32 and f64, at 1 and
/// 2 threads.
#[test]
fn fast_path_matches_reference_at_1_and_2_threads() {
    at_1_and_2_threads(|threads| {
        let mut rng = StdRng::seed_from_u64(40 + threads as u64);
        for k in 0..40 {
            let (mut xs, ws, opts) = random_config(&mut rng, k);
            xs[0] = rng.random_range(1..8);
            let what = format!("{threads} threads, config {k}");
            if k % 2 == 0 {
                check_against_reference::<f64>(&what, &xs, &ws, opts, 1e-12, &mut rng);
            } else {
                check_against_reference::<f32>(&what, &xs, &ws, opts, 1e-5, &mut rng);
            }
        }
    });
}

/// Shapes large enough that a sample's column matrix is cut into several
/// blocks of output rows, in both walks of im2col/col2im ("same" padding,
/// where rows are plane slices; strided, dilated and unpadded ones, where
/// they are runs), pointwise, grouped, and the benchmark's layer shapes scaled
/// down, at 1 and 2 threads.
#[test]
fn large_shapes_match_reference_at_1_and_2_threads() {
    let opts = Conv2dOptions::default;
    #[rustfmt::skip]
    let cases: [ConvCase; 8] = [
        ([3, 16, 40, 48], [5, 16, 3, 3], opts().padding(1)),                 // "same": slices
        ([2, 3, 96, 96], [4, 3, 5, 5], opts().padding(2)),                   // small C, 5x5
        ([2, 32, 65, 63], [6, 32, 3, 3], opts().stride(2).padding(1)),       // strided, odd sizes
        ([2, 32, 45, 40], [4, 16, 3, 2], opts().padding((2, 1)).dilation(2).groups(2)),
        ([2, 16, 60, 60], [4, 16, 3, 3], opts()),                            // unpadded: runs
        ([3, 12, 70, 66], [4, 12, 1, 1], opts()),                            // pointwise
        ([2, 9, 41, 47], [6, 3, 3, 3], opts().stride((1, 2)).padding(1).groups(3)),
        ([5, 1, 28, 28], [8, 1, 3, 3], opts().padding(1)),                   // cnn_step conv1
    ];
    at_1_and_2_threads(|threads| {
        let mut rng = StdRng::seed_from_u64(50 + threads as u64);
        for (i, (xs, ws, o)) in cases.iter().enumerate() {
            let what = format!("{threads} threads, large case {i}");
            check_against_reference::<f64>(&what, xs, ws, *o, 1e-12, &mut rng);
            check_against_reference::<f32>(&what, xs, ws, *o, 2e-5, &mut rng);
        }
    });
}

/// 3x3, stride-1 convs with at least 16 channels per group, which conv2d
/// computes by Winograd (forward, dX and dW), with each variant, F(2x2, 3x3)
/// and F(4x4, 3x3): paddings 0, 1, 2
/// and mixed, output sizes that leave partial tiles (every remainder mod 4),
/// one-row and one-tile-column outputs, groups, several samples per block
/// and one sample cut into several blocks, uneven chunks of the batch and of
/// the kernel transforms, deep products on
/// narrow blocks, the bench's mid and deep shapes scaled down, f32 and
/// f64, at 1 and 2 threads. (The variant setting is process-wide; other
/// tests running meanwhile only change algorithm, and compare with the
/// reference too.)
#[test]
fn winograd_shapes_match_reference_at_1_and_2_threads() {
    let opts = Conv2dOptions::default;
    #[rustfmt::skip]
    let cases: [ConvCase; 19] = [
        ([3, 16, 12, 12], [32, 16, 3, 3], opts().padding(1)),     // mid-like
        ([2, 64, 8, 8], [64, 64, 3, 3], opts().padding(1)),       // deep-like
        ([2, 16, 9, 7], [16, 16, 3, 3], opts().padding(1)),       // odd output: partial tiles
        ([2, 16, 9, 10], [17, 16, 3, 3], opts()),                 // no padding, odd channels
        ([1, 16, 5, 6], [16, 16, 3, 3], opts().padding(2)),       // padding 2
        ([2, 16, 7, 8], [16, 16, 3, 3], opts().padding((0, 2))),  // mixed padding
        ([2, 32, 6, 5], [32, 16, 3, 3], opts().padding(1).groups(2)),
        ([3, 20, 4, 40], [24, 20, 3, 3], opts().padding((0, 1))), // output rows: 2
        ([2, 16, 33, 34], [16, 16, 3, 3], opts().padding(1)),     // 9x9 4x4 tiles: F(4x4) by default
        ([1, 32, 62, 62], [32, 32, 3, 3], opts().padding(1)),     // one sample, several blocks
        ([2, 16, 3, 2], [16, 16, 3, 3], opts().padding(1)),       // one tile column (F(2x2))
        ([1, 16, 6, 4], [16, 16, 3, 3], opts().padding(1)),       // one tile column (F(4x4))
        ([2, 16, 5, 7], [16, 16, 3, 3], opts().padding((2, 0))),
        ([1, 16, 4, 6], [16, 16, 3, 3], opts().padding((1, 2))),
        ([5, 16, 6, 6], [16, 16, 3, 3], opts().padding(1)),       // uneven chunks at 2 threads
        // Deep products (k past one GEMM block) on blocks of a few columns.
        ([1, 256, 2, 2], [16, 256, 3, 3], opts().padding(1)),
        ([1, 16, 2, 2], [256, 16, 3, 3], opts().padding(1)),
        ([2, 256, 4, 4], [256, 256, 3, 3], opts().padding(1)),
        // 33 · 40 kernels: transformed (and dW transformed back) in two
        // uneven chunks at 2 threads.
        ([2, 40, 5, 6], [33, 40, 3, 3], opts().padding(1)),
    ];
    for tile in [2, 4] {
        // On this thread and the workers of its convs only.
        let _tile = tapegrad::conv::force_winograd_tile(tile);
        at_1_and_2_threads(|threads| {
            let mut rng = StdRng::seed_from_u64(60 + threads as u64);
            for (i, (xs, ws, o)) in cases.iter().enumerate() {
                let what = format!("{threads} threads, tile {tile}, winograd case {i}");
                check_against_reference::<f64>(&what, xs, ws, *o, 1e-12, &mut rng);
                check_against_reference::<f32>(&what, xs, ws, *o, 2e-5, &mut rng);
            }
        });
    }
}

/// Asserts that the path predicate `takes` (with a bias) says `want` for
/// every case; `force_avx2` names the kernel setting in the message.
fn assert_path(
    cases: &[ConvCase],
    takes: fn(&Conv2dGeometry) -> bool,
    want: bool,
    force_avx2: bool,
) {
    for (xs, ws, o) in cases {
        let geom = Conv2dGeometry::new(xs, ws, Some(&[ws[0]]), o);
        let what = format!("{xs:?} {ws:?} {o:?}, AVX2 forced: {force_avx2}");
        assert_eq!(takes(&geom), want, "{what}");
    }
}

/// Shapes of the implicit-GEMM forward (f32; AVX-512 and AVX2): strides 1 to 3,
/// paddings 0 to 3, dilation, groups, output rows shorter and longer than a
/// run of 16 pixels (and not whole runs), one input channel, output
/// channels per group in whole panels of 8 and not (1, 3, 5, 13), deep patches
/// (more than one pass of the kernel), against the reference at 1 and 2
/// threads; the same shapes in f64 (im2col) too.
#[test]
fn implicit_gemm_shapes_match_reference_at_1_and_2_threads() {
    let opts = Conv2dOptions::default;
    #[rustfmt::skip]
    let cases: [ConvCase; 17] = [
        ([3, 32, 16, 16], [64, 32, 3, 3], opts().stride(2).padding(1)), // strided-like
        ([2, 3, 20, 37], [16, 3, 5, 5], opts().padding(2)),             // wide-like, 37 = 2·16 + 5
        ([2, 1, 28, 28], [8, 1, 3, 3], opts().padding(1)),              // one input channel
        ([1, 4, 9, 9], [8, 4, 3, 3], opts()),                            // no padding, 7-pixel rows
        ([2, 5, 11, 12], [8, 5, 3, 2], opts().stride(2).padding((0, 1))),
        ([1, 3, 17, 19], [16, 3, 3, 3], opts().stride(3).padding(3)),    // padding past the kernel's reach
        ([2, 2, 13, 34], [8, 2, 3, 3], opts().dilation(2).padding(2)),
        ([1, 6, 15, 15], [16, 3, 3, 3], opts().stride((2, 1)).padding(1).groups(2)),
        ([1, 2, 7, 40], [8, 2, 2, 4], opts().stride((1, 2)).dilation((2, 3))),
        ([3, 40, 6, 6], [24, 40, 3, 3], opts().stride(2).padding(1)),    // 360 taps: three passes
        ([1, 16, 6, 6], [8, 16, 3, 3], opts().stride(2).padding(2)),
        ([5, 3, 8, 8], [8, 3, 3, 3], opts().stride(2)),                  // uneven chunks at 2 threads
        ([2, 16, 9, 40], [3, 16, 3, 3], opts().stride(2).padding(1)),    // 3 output channels
        ([1, 4, 12, 50], [13, 4, 3, 3], opts().padding(1)),              // 8 + 5 rows, long rows
        ([2, 6, 7, 7], [10, 3, 2, 2], opts().padding(1).groups(2)),      // 5 rows per group
        ([1, 3, 11, 19], [1, 3, 3, 3], opts().dilation(2)),              // one row
        ([2, 3, 20, 37], [16, 3, 5, 5], opts().padding(2).stride((1, 2))),
    ];
    // The implicit GEMM runs with AVX-512 or AVX2 (forced here, on this
    // thread and its convs' workers, to cover the AVX2 kernel on an AVX-512
    // machine too).
    let fast = cpu::has_avx2_fma();
    for force_avx2 in [false, true] {
        let _avx2 = tapegrad::gemm::force_avx2(force_avx2);
        let takes = tapegrad::conv::implicit_gemm::<f32>;
        assert_path(&cases, takes, fast, force_avx2);
        // A stride past the kernel's span (planes in proportion to the
        // stride) and a pointwise conv take im2col.
        let far = opts().stride((1 << 40, 2));
        let geom = Conv2dGeometry::new(&[1, 2, 9, 9], &[8, 2, 3, 3], None, &far);
        assert!(!tapegrad::conv::implicit_gemm::<f32>(&geom));
        let mut rng = StdRng::seed_from_u64(89);
        let (xs, ws) = ([1, 2, 9, 9], [8, 2, 3, 3]);
        check_against_reference::<f32>("stride 2^40", &xs, &ws, far, 2e-5, &mut rng);
        let geom = Conv2dGeometry::new(&[1, 2, 9, 9], &[8, 2, 1, 1], None, &opts());
        assert!(!tapegrad::conv::implicit_gemm::<f32>(&geom));
        // Padding and dilation far past the data: the padded planes would
        // take 2^40 elements for one output pixel; im2col takes these.
        for far in [
            opts().dilation(1 << 20).padding(1 << 19),
            opts()
                .dilation((1 << 20) - 1)
                .padding(1 << 19)
                .stride(1 << 20),
            opts()
                .dilation((1 << 32) - 1)
                .padding(1 << 31)
                .stride(1 << 32),
        ] {
            let (xs, ws) = ([1, 1, 1, 1], [8, 1, 2, 2]);
            let geom = Conv2dGeometry::new(&xs, &ws, None, &far);
            assert!(!tapegrad::conv::implicit_gemm::<f32>(&geom), "{far:?}");
            check_against_reference::<f32>("far padding", &xs, &ws, far, 2e-5, &mut rng);
        }
        at_1_and_2_threads(|threads| {
            let mut rng = StdRng::seed_from_u64(90 + threads as u64);
            for (i, (xs, ws, o)) in cases.iter().enumerate() {
                let what = format!("{threads} threads, AVX2 forced: {force_avx2}, case {i}");
                check_against_reference::<f32>(&what, xs, ws, *o, 2e-5, &mut rng);
                if !force_avx2 {
                    check_against_reference::<f64>(&what, xs, ws, *o, 1e-12, &mut rng);
                }
            }
        });
    }
}

/// Shapes of the implicit weight gradient (f32 with AVX-512; im2col with
/// AVX2 forced): strides 1 to 3, padding, dilation down the kernel, groups,
/// kernel rows of 1 to 9 taps (chunks of two sizes past 7), 16 and 48
/// output channels per group (one and two vectors), output rows longer than
/// a pixel block, uneven chunks of the batch, against the reference at 1
/// and 2 threads.
#[test]
fn implicit_weight_grad_shapes_match_reference_at_1_and_2_threads() {
    let opts = Conv2dOptions::default;
    #[rustfmt::skip]
    let cases: [ConvCase; 11] = [
        ([3, 32, 16, 16], [64, 32, 3, 3], opts().stride(2).padding(1)), // strided-like
        ([2, 3, 20, 37], [16, 3, 5, 5], opts().padding(2)),             // wide-like
        ([2, 16, 17, 17], [32, 16, 4, 4], opts().stride(2).padding(1)), // tconv backward-like
        ([1, 2, 9, 30], [48, 2, 3, 9], opts().padding((1, 4))),         // 9 taps: 5 + 4; 3 vectors
        ([2, 3, 12, 11], [16, 3, 2, 8], opts().stride((1, 3))),         // 8 taps: 4 + 4
        ([2, 4, 9, 9], [16, 4, 1, 1], opts().stride(2)),                // one tap per group
        ([1, 3, 13, 14], [16, 3, 3, 7], opts().dilation((2, 1)).padding((2, 3))),
        ([1, 6, 15, 15], [32, 3, 3, 3], opts().stride((2, 1)).padding(1).groups(2)),
        ([1, 2, 40, 300], [16, 2, 3, 3], opts().padding(1)),            // several pixel blocks
        ([5, 3, 8, 8], [16, 3, 3, 3], opts().stride(2)),                // uneven chunks at 2 threads
        ([2, 5, 11, 12], [16, 5, 3, 2], opts().stride(2).padding((0, 1))),
    ];
    let fast = cpu::has_avx512f();
    for force_avx2 in [false, true] {
        let _avx2 = tapegrad::gemm::force_avx2(force_avx2);
        let takes = tapegrad::conv::implicit_weight_grad::<f32>;
        assert_path(&cases, takes, fast && !force_avx2, force_avx2);
        // Dilation across, 8 output channels, and a pointwise conv take im2col.
        for (ws, o) in [
            ([16, 2, 3, 3], opts().dilation((1, 2))),
            ([8, 2, 3, 3], opts()),
            ([16, 2, 1, 1], opts()),
        ] {
            let geom = Conv2dGeometry::new(&[1, 2, 9, 9], &ws, None, &o);
            assert!(
                !tapegrad::conv::implicit_weight_grad::<f32>(&geom),
                "{ws:?} {o:?}"
            );
        }
        at_1_and_2_threads(|threads| {
            let mut rng = StdRng::seed_from_u64(120 + threads as u64);
            for (i, (xs, ws, o)) in cases.iter().enumerate() {
                let what = format!("{threads} threads, AVX2 forced: {force_avx2}, case {i}");
                check_against_reference::<f32>(&what, xs, ws, *o, 2e-5, &mut rng);
            }
        });
    }
}

/// The same f32 comparisons with the GEMM micro-kernels capped at AVX2
/// (on an AVX-512 machine the default tests above run the AVX-512 kernels,
/// so this is what covers the AVX2 ones there; elsewhere it repeats them),
/// and with the portable kernels, set on this thread (and the workers of its
/// ops) only.
#[test]
fn f32_fast_path_matches_reference_with_avx2_and_portable_kernels() {
    let opts = Conv2dOptions::default;
    #[rustfmt::skip]
    let cases: [ConvCase; 4] = [
        ([3, 16, 12, 12], [32, 16, 3, 3], opts().padding(1)),          // Winograd
        ([2, 32, 65, 63], [6, 32, 3, 3], opts().stride(2).padding(1)), // im2col, strided
        ([3, 12, 70, 66], [4, 12, 1, 1], opts()),                      // pointwise
        ([2, 9, 41, 47], [6, 3, 3, 3], opts().stride((1, 2)).padding(1).groups(3)),
    ];
    type Force = fn(bool) -> tapegrad::gemm::SwitchGuard;
    let forces: [(&str, Force); 2] = [
        ("avx2", tapegrad::gemm::force_avx2),
        ("portable", tapegrad::gemm::force_portable),
    ];
    for (name, force) in forces {
        let _kernels = force(true);
        let mut rng = StdRng::seed_from_u64(70);
        for (i, (xs, ws, o)) in cases.iter().enumerate() {
            check_against_reference::<f32>(
                &format!("{name} kernels, case {i}"),
                xs,
                ws,
                *o,
                2e-5,
                &mut rng,
            );
        }
        fast_path_matches_reference::<f32>(3, 1e-5);
    }
}

/// The kernel and Winograd switches hold on the thread that sets them (and
/// on the workers of the ops it starts) only: while one thread holds
/// `force_portable` and `force_winograd_tile(2)` and runs a conv and a GEMM
/// over and over, another thread running the same ones at the same time gets
/// the default path's results, bitwise.
#[test]
fn switches_stay_on_their_thread() {
    use tapegrad::conv::{force_winograd_tile, winograd_tile};
    use tapegrad::gemm::{force_portable, kernel_family, sgemm};
    let mut rng = StdRng::seed_from_u64(91);
    let opts = Conv2dOptions::default().padding(1);
    // 32 × 32 kernels, transformed and packed by the workers at 2 threads;
    // 64 4×4 output tiles per sample, so F(4×4) by default.
    let x = randn::<f32>(&[2, 32, 32, 32], &mut rng);
    let w = randn::<f32>(&[32, 32, 3, 3], &mut rng);
    let geom = Conv2dGeometry::new(x.shape(), w.shape(), None, &opts);
    // Small enough to stay on the calling thread.
    let (m, n, k) = (13, 37, 64);
    let a = randn::<f32>(&[m, k], &mut rng);
    let b = randn::<f32>(&[k, n], &mut rng);
    let run = || {
        let tape = Tape::<f32>::new();
        let y = tape
            .constant(x.clone())
            .conv2d(tape.constant(w.clone()), None, opts);
        let mut c = vec![0.0f32; m * n];
        sgemm(m, n, k, 1.0, a.data(), k, 1, b.data(), n, 1, 0.0, &mut c, n);
        (y.value().data().to_vec(), c)
    };
    let family = kernel_family::<f32>();
    assert_eq!(winograd_tile(&geom), Some(4));
    let default = run();
    let forced = {
        let _portable = force_portable(true);
        let _f2 = force_winograd_tile(2);
        assert_eq!(kernel_family::<f32>(), "portable");
        assert_eq!(winograd_tile(&geom), Some(2));
        let mut runs = vec![];
        at_1_and_2_threads(|_| runs.push(run()));
        assert!(runs[0] == runs[1], "the switches reach the worker threads");
        runs.swap_remove(0)
    };
    // The paths must differ, or the comparisons below prove nothing.
    assert!(forced.0 != default.0, "F(2×2) and F(4×4) round differently");
    if family != "portable" {
        assert!(
            forced.1 != default.1,
            "portable and SIMD kernels round differently"
        );
    }
    let start = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            let _portable = force_portable(true);
            let _f2 = force_winograd_tile(2);
            start.wait();
            for _ in 0..10 {
                assert!(run() == forced, "the guarded thread left its path");
            }
        });
        s.spawn(|| {
            start.wait();
            for _ in 0..10 {
                assert_eq!(kernel_family::<f32>(), family);
                assert_eq!(winograd_tile(&geom), Some(4));
                assert!(run() == default, "another thread's switch leaked");
            }
        });
    });
}

// ---------------------------------------------------------------------------
// structural identities
// ---------------------------------------------------------------------------

#[test]
fn batched_equals_per_sample() {
    let mut rng = StdRng::seed_from_u64(3);
    let opts = Conv2dOptions::default()
        .stride((2, 1))
        .padding(1)
        .dilation((1, 2));
    let x = randn::<f64>(&[3, 2, 7, 6], &mut rng);
    let w = randn::<f64>(&[4, 2, 3, 2], &mut rng);
    let b = randn::<f64>(&[4], &mut rng);
    let out = Conv2dGeometry::new(x.shape(), w.shape(), None, &opts).output_shape();
    assert_eq!(out, [3, 4, 4, 6]);
    let dy = randn::<f64>(&out, &mut rng);
    let (y, dx, dw, db) = tape_conv(&x, &w, Some(&b), Some(&dy), opts);
    let mut ys = Vec::new();
    let mut dxs = Vec::new();
    let (mut dw_sum, mut db_sum) = (Tensor::zeros([4, 2, 3, 2]), Tensor::zeros([4]));
    for n in 0..3 {
        let xn = slice_axis(&x, 0, n, n + 1);
        let dy_n = slice_axis(&dy, 0, n, n + 1);
        let (yn, dxn, dwn, dbn) = tape_conv(&xn, &w, Some(&b), Some(&dy_n), opts);
        ys.push(yn);
        dxs.push(dxn);
        dw_sum = dw_sum.zip_map(&dwn, "sum", |a, b| a + b);
        db_sum = db_sum.zip_map(&dbn.unwrap(), "sum", |a, b| a + b);
    }
    assert_close("y", &y, &concat_axis(&ys, 0), 1e-13);
    assert_close("dx", &dx, &concat_axis(&dxs, 0), 1e-13);
    assert_close("dw", &dw, &dw_sum, 1e-13);
    assert_close("db", &db.unwrap(), &db_sum, 1e-13);
}

#[test]
fn grouped_equals_per_group_slices() {
    let mut rng = StdRng::seed_from_u64(4);
    for (groups, c, o) in [(2, 4, 6), (3, 3, 6), (4, 4, 4)] {
        let opts = Conv2dOptions::default()
            .stride(2)
            .padding((1, 0))
            .groups(groups);
        let x = randn::<f64>(&[2, c, 6, 5], &mut rng);
        let w = randn::<f64>(&[o, c / groups, 3, 2], &mut rng);
        let b = randn::<f64>(&[o], &mut rng);
        let out = Conv2dGeometry::new(x.shape(), w.shape(), None, &opts).output_shape();
        let dy = randn::<f64>(&out, &mut rng);
        let (y, dx, dw, db) = tape_conv(&x, &w, Some(&b), Some(&dy), opts);
        let (cg, og) = (c / groups, o / groups);
        let (mut ys, mut dxs, mut dws, mut dbs) = (vec![], vec![], vec![], vec![]);
        for g in 0..groups {
            let xg = slice_axis(&x, 1, g * cg, (g + 1) * cg);
            let wg = slice_axis(&w, 0, g * og, (g + 1) * og);
            let bg = slice_axis(&b, 0, g * og, (g + 1) * og);
            let dyg = slice_axis(&dy, 1, g * og, (g + 1) * og);
            let (yg, dxg, dwg, dbg) = tape_conv(&xg, &wg, Some(&bg), Some(&dyg), opts.groups(1));
            ys.push(yg);
            dxs.push(dxg);
            dws.push(dwg);
            dbs.push(dbg.unwrap());
        }
        assert_close("y", &y, &concat_axis(&ys, 1), 1e-13);
        assert_close("dx", &dx, &concat_axis(&dxs, 1), 1e-13);
        assert_close("dw", &dw, &concat_axis(&dws, 0), 1e-13);
        assert_close("db", &db.unwrap(), &concat_axis(&dbs, 0), 1e-13);
    }
}

#[test]
fn input_used_by_two_convs_gets_the_sum_of_both_gradients() {
    let mut rng = StdRng::seed_from_u64(5);
    let x = randn::<f64>(&[2, 2, 6, 6], &mut rng);
    let w1 = randn::<f64>(&[3, 2, 3, 3], &mut rng);
    let w2 = randn::<f64>(&[4, 1, 2, 2], &mut rng);
    let (o1, o2) = (
        Conv2dOptions::default().padding(1),
        Conv2dOptions::default().stride(2).groups(2),
    );
    let v1 = randn::<f64>(&[2, 3, 6, 6], &mut rng);
    let v2 = randn::<f64>(&[2, 4, 3, 3], &mut rng);
    let tape = Tape::<f64>::new();
    let xv = tape.leaf(x.clone());
    let y1 = xv.conv2d(tape.leaf(w1.clone()), None, o1);
    let y2 = xv.conv2d(tape.leaf(w2.clone()), None, o2);
    let loss = (y1 * tape.constant(v1.clone())).sum() + (y2 * tape.constant(v2.clone())).sum();
    let g = loss.backward();
    let want = reference::conv2d_backward(&x, &w1, &v1, o1).dx.zip_map(
        &reference::conv2d_backward(&x, &w2, &v2, o2).dx,
        "sum",
        |a, b| a + b,
    );
    assert_close("dx", &g[xv], &want, 1e-13);
}

/// Each gradient alone (a data input, a frozen weight, a trained bias
/// only), in f64 and f32: on the im2col path, on the Winograd one (16
/// channels), and on a grouped Winograd conv large enough that each sample
/// is cut into several blocks of tile rows.
#[test]
fn input_or_weight_without_grad() {
    fn check<T: Float>(tol: f64) {
        let mut rng = StdRng::seed_from_u64(6);
        let opts = Conv2dOptions::default().padding(1);
        #[rustfmt::skip]
        let cases = [
            ([2, 3, 5, 5], [2, 3, 3, 3], opts),
            ([2, 16, 6, 6], [16, 16, 3, 3], opts),
            ([1, 32, 62, 62], [32, 16, 3, 3], opts.groups(2)),
        ];
        for (xs, ws, opts) in cases {
            let x = randn::<T>(&xs, &mut rng);
            let w = randn::<T>(&ws, &mut rng);
            let b = randn::<T>(&ws[..1], &mut rng);
            let dy = randn::<T>(&[xs[0], ws[0], xs[2], xs[3]], &mut rng);
            let r = reference::conv2d_backward(&x, &w, &dy, opts);
            let grads = |x_leaf: bool, w_leaf: bool| {
                let tape = Tape::<T>::new();
                let var = |t: &Tensor<T>, leaf| {
                    if leaf {
                        tape.leaf(t.clone())
                    } else {
                        tape.constant(t.clone())
                    }
                };
                let (xv, wv, bv) = (var(&x, x_leaf), var(&w, w_leaf), tape.leaf(b.clone()));
                let y = xv.conv2d(wv, Some(bv), opts);
                let g = (y * tape.constant(dy.clone())).sum().backward();
                assert_eq!(g.get(xv).is_some(), x_leaf);
                assert_eq!(g.get(wv).is_some(), w_leaf);
                assert_close("db", &g[bv], &r.db, tol);
                (g.get(xv).cloned(), g.get(wv).cloned())
            };
            // Data input (first layer): no dX is computed or returned.
            assert_close("dw", &grads(false, true).1.unwrap(), &r.dw, tol);
            // Frozen weight.
            assert_close("dx", &grads(true, false).0.unwrap(), &r.dx, tol);
            // Bias only.
            grads(false, false);
        }
    }
    check::<f64>(1e-12);
    check::<f32>(2e-5);
}

/// The statements of docs/conv-backprop.md, with stride, padding and dilation:
/// dW is a conv of X with dY as the kernel (stride and dilation swapped), and dX
/// is the full correlation of the zero-upsampled dY with the 180°-rotated,
/// channel-swapped weight.
#[test]
fn backward_is_a_pair_of_convolutions() {
    let mut rng = StdRng::seed_from_u64(8);
    // (x shape, weight shape, stride, padding, dilation)
    let configs = [
        ([1, 1, 3, 3], [1, 1, 2, 2], (1, 1), (0, 0), (1, 1)),
        ([2, 3, 7, 6], [2, 3, 3, 2], (1, 1), (1, 0), (1, 1)),
        ([2, 2, 8, 7], [3, 2, 3, 3], (2, 3), (1, 2), (1, 1)),
        ([1, 2, 9, 8], [2, 2, 2, 3], (2, 1), (2, 1), (2, 2)),
        ([3, 1, 7, 7], [2, 1, 3, 3], (3, 2), (0, 3), (1, 2)),
    ];
    for (xs, ws, s, p, d) in configs {
        let opts = Conv2dOptions::default().stride(s).padding(p).dilation(d);
        let x = randn::<f64>(&xs, &mut rng);
        let w = randn::<f64>(&ws, &mut rng);
        let geom = Conv2dGeometry::new(&xs, &ws, None, &opts);
        let [n, o, oh, ow] = geom.output_shape();
        let (c, kh, kw) = (xs[1], ws[2], ws[3]);
        let dy = randn::<f64>(&[n, o, oh, ow], &mut rng);
        let (_, dx, dw, _) = tape_conv(&x, &w, None, Some(&dy), opts);

        // dW[o, c] = conv2d(X[:, c] as a batch, dY[:, o] as the kernel) with stride d,
        // dilation s, padding p, cropped to the kernel size (extra rows when s ∤ …).
        let xt = x.permute(&[1, 0, 2, 3]); // [C, N, H, W]
        let dyt = dy.permute(&[1, 0, 2, 3]); // [O, N, oh, ow]
        let full = reference::conv2d(
            &xt,
            &dyt,
            None,
            Conv2dOptions::default().stride(d).dilation(s).padding(p),
        );
        let dw_conv = slice_axis(&slice_axis(&full, 2, 0, kh), 3, 0, kw).permute(&[1, 0, 2, 3]);
        assert_close("dW as a conv", &dw, &dw_conv, 1e-12);

        // dX = conv2d(Z, rot180(W) with O and C swapped, dilation d), where Z is dY
        // with s − 1 zeros between entries, placed so that Z[u] = dY_up[u + p − d(k − 1)].
        let (zh, zw) = (xs[2] + d.0 * (kh - 1), xs[3] + d.1 * (kw - 1));
        let up = |u: usize, pad: usize, dk: usize, stride: usize, len: usize| -> Option<usize> {
            let v = (u + pad).checked_sub(dk)?;
            (v % stride == 0 && v / stride < len).then_some(v / stride)
        };
        let mut z = Tensor::<f64>::zeros([n, o, zh, zw]);
        for u in 0..zh {
            let Some(i) = up(u, p.0, d.0 * (kh - 1), s.0, oh) else {
                continue;
            };
            for t in 0..zw {
                let Some(j) = up(t, p.1, d.1 * (kw - 1), s.1, ow) else {
                    continue;
                };
                for bn in 0..n {
                    for bo in 0..o {
                        z.set(&[bn, bo, u, t], dy.get(&[bn, bo, i, j]));
                    }
                }
            }
        }
        let mut wrot = Tensor::<f64>::zeros([c, o, kh, kw]);
        for oc in 0..o {
            for cc in 0..c {
                for ki in 0..kh {
                    for kj in 0..kw {
                        wrot.set(
                            &[cc, oc, kh - 1 - ki, kw - 1 - kj],
                            w.get(&[oc, cc, ki, kj]),
                        );
                    }
                }
            }
        }
        let dx_conv = reference::conv2d(&z, &wrot, None, Conv2dOptions::default().dilation(d));
        assert_close("dX as a full correlation", &dx, &dx_conv, 1e-12);
    }
}

// ---------------------------------------------------------------------------
// shape errors
// ---------------------------------------------------------------------------

fn conv_shapes(x: &[usize], w: &[usize], b: Option<&[usize]>, opts: Conv2dOptions) {
    let tape = Tape::<f32>::new();
    let xv = tape.leaf(Tensor::zeros(x));
    let wv = tape.leaf(Tensor::zeros(w));
    let bv = b.map(|b| tape.leaf(Tensor::zeros(b)));
    let _ = xv.conv2d(wv, bv, opts);
}

#[test]
#[should_panic(
    expected = "conv2d: input [2, 3, 8, 8] has 3 channels but weight [4, 2, 3, 3] expects 2·groups(1) = 2"
)]
fn error_channel_mismatch() {
    conv_shapes(&[2, 3, 8, 8], &[4, 2, 3, 3], None, Conv2dOptions::default());
}

#[test]
#[should_panic(
    expected = "conv2d: input [1, 4, 5, 5] has 4 channels but weight [2, 1, 3, 3] expects 1·groups(2) = 2"
)]
fn error_channel_mismatch_grouped() {
    conv_shapes(
        &[1, 4, 5, 5],
        &[2, 1, 3, 3],
        None,
        Conv2dOptions::default().groups(2),
    );
}

#[test]
#[should_panic(
    expected = "conv2d: input [1, 3, 5, 5] has 3 channels, which groups(2) does not divide (weight [4, 1, 3, 3])"
)]
fn error_input_channels_not_divisible_by_groups() {
    conv_shapes(
        &[1, 3, 5, 5],
        &[4, 1, 3, 3],
        None,
        Conv2dOptions::default().groups(2),
    );
}

#[test]
#[should_panic(
    expected = "conv2d: weight [3, 2, 3, 3] has 3 output channels, which groups(2) does not divide (input [1, 4, 5, 5])"
)]
fn error_output_channels_not_divisible_by_groups() {
    conv_shapes(
        &[1, 4, 5, 5],
        &[3, 2, 3, 3],
        None,
        Conv2dOptions::default().groups(2),
    );
}

#[test]
#[should_panic(
    expected = "conv2d: groups must be at least 1 (input [1, 4, 5, 5], weight [4, 4, 3, 3])"
)]
fn error_zero_groups() {
    conv_shapes(
        &[1, 4, 5, 5],
        &[4, 4, 3, 3],
        None,
        Conv2dOptions::default().groups(0),
    );
}

#[test]
#[should_panic(
    expected = "conv2d: kernel (5, 5) with dilation (1, 1) spans (5, 5), larger than the padded input (4, 4) (input [1, 1, 4, 4] padded by (0, 0), weight [1, 1, 5, 5])"
)]
fn error_kernel_larger_than_input() {
    conv_shapes(&[1, 1, 4, 4], &[1, 1, 5, 5], None, Conv2dOptions::default());
}

#[test]
#[should_panic(
    expected = "conv2d: kernel (3, 3) with dilation (1, 3) spans (3, 7), larger than the padded input (7, 6)"
)]
fn error_dilated_kernel_larger_than_padded_input() {
    conv_shapes(
        &[1, 1, 5, 4],
        &[1, 1, 3, 3],
        None,
        Conv2dOptions::default().padding(1).dilation((1, 3)),
    );
}

#[test]
#[should_panic(
    expected = "conv2d: stride (0, 1) must be at least 1 on both axes (input [1, 1, 5, 5], weight [1, 1, 3, 3])"
)]
fn error_zero_stride() {
    conv_shapes(
        &[1, 1, 5, 5],
        &[1, 1, 3, 3],
        None,
        Conv2dOptions::default().stride((0, 1)),
    );
}

#[test]
#[should_panic(
    expected = "conv2d: dilation (2, 0) must be at least 1 on both axes (input [1, 1, 5, 5], weight [1, 1, 3, 3])"
)]
fn error_zero_dilation() {
    conv_shapes(
        &[1, 1, 5, 5],
        &[1, 1, 3, 3],
        None,
        Conv2dOptions::default().dilation((2, 0)),
    );
}

#[test]
#[should_panic(expected = "conv2d: input [1, 5, 5] and weight [1, 1, 3, 3] must be rank 4")]
fn error_input_rank() {
    conv_shapes(&[1, 5, 5], &[1, 1, 3, 3], None, Conv2dOptions::default());
}

#[test]
#[should_panic(expected = "conv2d: input [1, 1, 5, 5] and weight [1, 3, 3] must be rank 4")]
fn error_weight_rank() {
    conv_shapes(&[1, 1, 5, 5], &[1, 3, 3], None, Conv2dOptions::default());
}

#[test]
#[should_panic(expected = "conv2d: weight [2, 1, 0, 3] has an empty kernel (input [1, 1, 5, 5])")]
fn error_empty_kernel() {
    conv_shapes(&[1, 1, 5, 5], &[2, 1, 0, 3], None, Conv2dOptions::default());
}

#[test]
#[should_panic(
    expected = "conv2d: bias [3] does not match weight [4, 1, 3, 3]: expected [4] (input [1, 1, 5, 5])"
)]
fn error_bias_shape() {
    conv_shapes(
        &[1, 1, 5, 5],
        &[4, 1, 3, 3],
        Some(&[3]),
        Conv2dOptions::default(),
    );
}

#[test]
#[should_panic(expected = "conv2d: bias [1, 4] does not match weight [4, 1, 3, 3]: expected [4]")]
fn error_bias_rank() {
    conv_shapes(
        &[1, 1, 5, 5],
        &[4, 1, 3, 3],
        Some(&[1, 4]),
        Conv2dOptions::default(),
    );
}

#[test]
fn errors_are_also_available_as_values() {
    let e = Conv2dGeometry::try_new(
        &[2, 3, 8, 8],
        &[4, 2, 3, 3],
        None,
        &Conv2dOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, tapegrad::Error::Shape { op: "conv2d", .. }));
}

/// Zero output channels, or zero input channels (empty patches), are valid
/// geometries: the output, dX and dW come out empty or zero (db is the sum of
/// dY as ever), as in the reference, at 1 and 2 threads.
#[test]
fn zero_channel_convs_give_empty_or_zero_results() {
    let opts = Conv2dOptions::default().padding(1);
    let cases: [([usize; 4], [usize; 4]); 3] = [
        ([2, 2, 4, 4], [0, 2, 3, 3]),
        ([2, 0, 4, 4], [3, 0, 3, 3]),
        ([3, 0, 5, 5], [2, 0, 1, 1]),
    ];
    at_1_and_2_threads(|threads| {
        let mut rng = StdRng::seed_from_u64(80 + threads as u64);
        for (xs, ws) in &cases {
            check_against_reference::<f64>(
                &format!("{threads} threads, zero channels"),
                xs,
                ws,
                opts,
                1e-12,
                &mut rng,
            );
        }
    });
}

// ---------------------------------------------------------------------------
// extreme sizes
// ---------------------------------------------------------------------------

/// A stride beyond the input is legal: the axis has one output (or a few,
/// over a large padding), and the conv costs no more than with a stride
/// that just fits — no buffer is sized by the stride. Every layout
/// (plane slices, phase planes, runs) against the reference, forward and
/// backward, at 1 and 2 threads.
#[test]
fn strides_beyond_the_input_match_the_reference() {
    let opts = Conv2dOptions::default;
    let cases = |s: usize| {
        [
            ([2, 2, 5, 4], [3, 2, 3, 3], opts().stride((s, 1)).padding(1)),
            ([2, 2, 5, 4], [3, 2, 3, 3], opts().stride((1, s)).padding(1)),
            ([2, 2, 5, 4], [3, 2, 3, 3], opts().stride(s).padding(2)),
            ([2, 2, 5, 4], [3, 2, 3, 3], opts().stride(s).padding((1, 0))),
            ([2, 2, 5, 4], [3, 2, 3, 3], opts().stride((s, 2)).padding(1)),
            ([2, 2, 5, 4], [3, 2, 2, 2], opts().stride((2, s))),
            ([2, 2, 5, 4], [3, 2, 1, 1], opts().stride(s)),
            (
                [2, 4, 7, 6],
                [4, 2, 3, 2],
                opts().stride((s, 1)).dilation(2).groups(2),
            ),
            // A stride over a large padding: windows in the padding (two at 2³²).
            (
                [1, 2, 5, 4],
                [2, 2, 3, 3],
                opts()
                    .stride((s, 1))
                    .padding(((s / 2).min(isize::MAX as usize / 2 - 8), 1)),
            ),
        ]
    };
    at_1_and_2_threads(|threads| {
        let mut rng = StdRng::seed_from_u64(90 + threads as u64);
        for s in [1 << 32, 1 << 63, usize::MAX] {
            for (i, (xs, ws, o)) in cases(s).iter().enumerate() {
                let what = format!("{threads} threads, stride {s}, case {i}");
                check_against_reference::<f64>(&what, xs, ws, *o, 1e-12, &mut rng);
                check_against_reference::<f32>(&what, xs, ws, *o, 1e-5, &mut rng);
            }
        }
    });
}

/// Sizes whose arithmetic would wrap are errors naming conv2d and the value.
#[test]
fn overflowing_sizes_are_errors() {
    let err = |x: &[usize], w: &[usize], o: Conv2dOptions| {
        Conv2dGeometry::try_new(x, w, None, &o)
            .expect_err("accepted")
            .to_string()
    };
    let o = Conv2dOptions::default;
    let e = err(&[1, 1, 5, 5], &[1, 1, 3, 3], o().padding((1 << 63, 0)));
    assert!(
        e.starts_with("conv2d: padding 9223372036854775808 on the height axis overflows"),
        "{e}"
    );
    let e = err(&[1, 1, 5, 5], &[1, 1, 3, 5], o().dilation((1, 1 << 62)));
    assert!(
        e.starts_with("conv2d: dilation 4611686018427387904 on the width axis overflows"),
        "{e}"
    );
    // The span fits, the padded input it needs does not.
    let e = err(
        &[1, 1, 5, 5],
        &[1, 1, 3, 3],
        o().dilation(1 << 61).padding(1 << 62),
    );
    assert!(
        e.contains("padding 4611686018427387904 on the height axis overflows"),
        "{e}"
    );
    // Each axis fits, the output does not.
    let e = err(&[2, 1, 5, 5], &[3, 1, 3, 3], o().padding(1 << 61));
    assert!(e.contains("has more elements than isize::MAX"), "{e}");
    // Nor does a plane of an empty output.
    let e = err(&[0, 1, 5, 5], &[3, 1, 3, 3], o().padding(1 << 61));
    assert!(e.contains("has more elements than isize::MAX"), "{e}");
    // Nor an empty input's plane.
    let e = err(&[0, 1, 1 << 40, 1 << 40], &[3, 1, 3, 3], o());
    assert!(e.contains("has more elements than isize::MAX"), "{e}");
    // At the limit, and as AxisGeometry sees it.
    assert!(AxisGeometry::new(5, 3, 1, 1 << 63, 1).is_none());
    assert!(AxisGeometry::new(5, 5, 1, 0, 1 << 62).is_none());
    let a = AxisGeometry::new(1, 3, 1 << 62, (isize::MAX as usize - 1) / 2, 1).unwrap();
    assert_eq!(a.output, 2);
    assert!(AxisGeometry::new(1, 3, 1, isize::MAX as usize / 2 + 1, 1).is_none());
}

#[test]
#[should_panic(
    expected = "conv2d: padding 9223372036854775808 on the height axis overflows: \
                           the padded input 5 + 2·9223372036854775808 exceeds isize::MAX"
)]
fn error_padding_overflows() {
    conv_shapes(
        &[1, 1, 5, 5],
        &[1, 1, 3, 3],
        None,
        Conv2dOptions::default().padding((1 << 63, 0)),
    );
}

/// A large padding is legal (PyTorch allows any): outputs whose window lies
/// in the padding hold the bias, and pass no gradient to the input.
#[test]
fn windows_wholly_in_the_padding_match_the_reference() {
    let mut rng = StdRng::seed_from_u64(95);
    let o = Conv2dOptions::default;
    for opts in [
        o().padding(4),
        o().padding((3, 5)).stride(2),
        o().padding(6).dilation(2),
    ] {
        check_against_reference::<f64>(
            "large padding",
            &[2, 2, 3, 4],
            &[3, 2, 3, 3],
            opts,
            1e-12,
            &mut rng,
        );
    }
}

/// Empty batches, channels and spatial sizes: empty or zero results, as the
/// reference gives, never an internal panic.
#[test]
fn empty_dimensions_give_empty_results() {
    let mut rng = StdRng::seed_from_u64(96);
    let o = Conv2dOptions::default;
    #[rustfmt::skip]
    let cases: [ConvCase; 7] = [
        ([0, 2, 5, 5], [3, 2, 3, 3], o().padding(1)),
        ([0, 16, 8, 8], [16, 16, 3, 3], o().padding(1)),   // Winograd's geometry
        ([0, 2, 5, 5], [3, 2, 1, 1], o()),                 // pointwise
        ([2, 2, 0, 5], [3, 2, 1, 1], o().padding((1, 0))), // 1x1, H = 0: padding only
        ([2, 2, 0, 5], [3, 2, 3, 3], o().padding(2)),      // H = 0: windows in the padding
        ([2, 2, 5, 0], [3, 2, 3, 3], o().padding((1, 2)).stride(2)),
        ([2, 0, 0, 0], [3, 0, 1, 1], o().padding(1)),
    ];
    at_1_and_2_threads(|threads| {
        for (xs, ws, opts) in &cases {
            let what = format!("{threads} threads, empty");
            check_against_reference::<f64>(&what, xs, ws, *opts, 1e-12, &mut rng);
        }
    });
}
