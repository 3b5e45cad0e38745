//! conv_transpose2d: gradients against finite differences, values and
//! gradients against PyTorch, the op against the naive reference (large
//! shapes, every fast path, 1 and 2 threads, f32 and f64), the adjoint
//! identity with conv2d, NaN/∞ placement, and the shape errors.

mod common;

use common::{cpu, fixtures};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::sync::Mutex;
use tapegrad::conv::{Conv2dGeometry, reference};
use tapegrad::gradcheck::{Options, gradcheck};
use tapegrad::{Conv2dOptions, ConvTranspose2dOptions, Float, Tape, Tensor};

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

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

/// `conv_transpose2d` through the tape for upstream gradient `dy`: (y, dx, dw, db).
fn tape_tconv<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    b: Option<&Tensor<T>>,
    dy: &Tensor<T>,
    opts: ConvTranspose2dOptions,
) -> (Tensor<T>, Tensor<T>, Tensor<T>, Option<Tensor<T>>) {
    let tape = Tape::<T>::new();
    let (xv, wv) = (tape.leaf(x.clone()), tape.leaf(w.clone()));
    let bv = b.map(|b| tape.leaf(b.clone()));
    let y = xv.conv_transpose2d(wv, bv, opts);
    let g = y.backward_with(dy.clone());
    (
        y.value(),
        g[xv].clone(),
        g[wv].clone(),
        bv.map(|b| g[b].clone()),
    )
}

/// One configuration: input `[n, c_in, h, w]`, `c_out` output channels, kernel,
/// stride, padding, output_padding, dilation (per axis), groups, bias.
#[derive(Clone, Copy, Debug)]
struct Case {
    x: [usize; 4],
    c_out: usize,
    k: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    output_padding: (usize, usize),
    dilation: (usize, usize),
    groups: usize,
    bias: bool,
}

impl Case {
    fn options(&self) -> ConvTranspose2dOptions {
        ConvTranspose2dOptions::default()
            .stride(self.stride)
            .padding(self.padding)
            .output_padding(self.output_padding)
            .dilation(self.dilation)
            .groups(self.groups)
    }

    fn w_shape(&self) -> [usize; 4] {
        [self.x[1], self.c_out / self.groups, self.k.0, self.k.1]
    }

    fn geometry(&self) -> Conv2dGeometry {
        let b = [self.c_out];
        Conv2dGeometry::transposed(&self.x, &self.w_shape(), Some(&b), &self.options())
    }
}

/// A table row (a constructor keeps the table one line per case).
#[allow(clippy::too_many_arguments)]
#[rustfmt::skip]
const fn case(x: [usize; 4], c_out: usize, k: (usize, usize), stride: (usize, usize), padding: (usize, usize),
              output_padding: (usize, usize), dilation: (usize, usize), groups: usize, bias: bool) -> Case {
    Case { x, c_out, k, stride, padding, output_padding, dilation, groups, bias }
}

// ---------------------------------------------------------------------------
// gradcheck
// ---------------------------------------------------------------------------

#[rustfmt::skip]
const GRADCHECK_CASES: &[Case] = &[
    //     x [n, c, h, w]  c_out kernel   stride   padding  out_pad  dilation g  bias
    case([1, 1, 3, 3],    1, (3, 3), (1, 1), (0, 0), (0, 0), (1, 1), 1, true),   // 0 basic
    case([2, 2, 3, 3],    3, (2, 2), (1, 1), (0, 0), (0, 0), (1, 1), 1, false),  // 1 batch 2, no bias
    case([1, 2, 3, 4],    3, (1, 1), (1, 1), (0, 0), (0, 0), (1, 1), 1, true),   // 2 pointwise
    case([1, 2, 3, 3],    2, (3, 3), (1, 1), (1, 1), (0, 0), (1, 1), 1, true),   // 3 padding 1
    case([1, 1, 3, 3],    2, (3, 3), (1, 1), (2, 2), (0, 0), (1, 1), 1, false),  // 4 padding 2
    case([1, 2, 3, 3],    2, (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1, true),   // 5 k4 s2 p1 (DCGAN)
    case([2, 1, 3, 2],    2, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 1, true),   // 6 s2 p1 op1
    case([1, 2, 2, 3],    1, (2, 2), (2, 2), (0, 0), (1, 0), (1, 1), 1, false),  // 7 op (1, 0)
    case([1, 1, 3, 3],    2, (3, 3), (3, 3), (0, 0), (2, 1), (1, 1), 1, true),   // 8 s3, op (2, 1)
    case([1, 2, 2, 2],    1, (2, 2), (3, 3), (2, 2), (0, 2), (1, 1), 1, true),   // 9 s3 p2, gaps
    case([1, 1, 3, 3],    2, (2, 2), (1, 1), (0, 0), (0, 0), (2, 2), 1, true),   // 10 dilation 2
    case([1, 2, 3, 3],    1, (3, 2), (1, 1), (1, 0), (1, 1), (2, 2), 1, false),  // 11 op < dilation at s1
    case([1, 1, 3, 2],    2, (2, 2), (2, 1), (2, 0), (1, 2), (3, 3), 1, true),   // 12 op ≥ stride (< dilation)
    case([2, 1, 3, 3],    1, (3, 3), (2, 2), (2, 2), (1, 1), (2, 2), 1, true),   // 13 s2 p2 d2 op1
    case([1, 4, 3, 3],    4, (3, 3), (1, 1), (1, 1), (0, 0), (1, 1), 2, true),   // 14 groups 2
    case([1, 4, 2, 3],    6, (2, 2), (2, 2), (0, 0), (1, 1), (1, 1), 2, false),  // 15 groups 2, s2 op1
    case([1, 2, 3, 3],    2, (3, 3), (2, 2), (1, 1), (1, 0), (1, 1), 2, true),   // 16 depthwise 2
    case([2, 3, 3, 2],    3, (3, 3), (1, 1), (1, 1), (0, 0), (1, 1), 3, true),   // 17 depthwise 3
    case([1, 3, 2, 3],    6, (3, 2), (2, 1), (1, 0), (0, 0), (1, 1), 3, false),  // 18 depthwise ×2
    case([1, 2, 3, 3],    2, (2, 2), (3, 2), (2, 1), (2, 1), (2, 1), 2, true),   // 19 depthwise per-axis
    case([1, 2, 3, 2],    2, (1, 1), (2, 3), (0, 0), (1, 2), (1, 1), 1, true),   // 20 1x1 strided
    case([1, 2, 3, 4],    3, (3, 2), (2, 3), (2, 1), (1, 2), (1, 2), 1, true),   // 21 all per axis
    case([1, 4, 2, 3],    2, (3, 3), (3, 1), (2, 0), (2, 0), (2, 1), 2, true),   // 22 per axis + groups
    case([3, 1, 2, 2],    1, (2, 3), (1, 2), (0, 1), (0, 1), (1, 1), 1, false),  // 23 batch 3
];

#[test]
fn gradcheck_over_the_options() {
    let mut rng = StdRng::seed_from_u64(3);
    let (mut op, mut grouped) = (0, 0);
    for (i, c) in GRADCHECK_CASES.iter().enumerate() {
        let opts = c.options();
        c.geometry(); // a bad table entry panics here, naming the shapes
        op += (c.output_padding != (0, 0)) as usize;
        grouped += (c.groups > 1) as usize;
        let mut inputs = vec![randn(&c.x, &mut rng), randn(&c.w_shape(), &mut rng)];
        if c.bias {
            inputs.push(randn(&[c.c_out], &mut rng));
        }
        let report = gradcheck(
            |_, v| v[0].conv_transpose2d(v[1], v.get(2).copied(), opts),
            &inputs,
            Options {
                seed: i as u64,
                ..Options::default()
            },
        );
        let expect: usize = inputs.iter().map(|t| t.numel()).sum();
        assert_eq!(report.checked, expect, "case {i}");
        assert!(report.passed(), "case {i} ({c:?}): {report}");
    }
    assert!(op >= 10 && grouped >= 7, "{op} {grouped}");
}

// ---------------------------------------------------------------------------
// PyTorch fixtures
// ---------------------------------------------------------------------------

fn fixture_tensor(case: &fixtures::Case, name: &str) -> Tensor<f64> {
    let (shape, data) = case.tensor(name);
    Tensor::from_vec(data.to_vec(), shape).unwrap()
}

#[test]
fn matches_pytorch_fixtures() {
    let cases = fixtures::load("tconv.txt");
    assert_eq!(cases.len(), 18, "tconv_00..tconv_17");
    for case in &cases {
        let pair = |k: &str| {
            let v = case.param_usize(k);
            (v[0], v[1])
        };
        let opts = ConvTranspose2dOptions::default()
            .stride(pair("stride"))
            .padding(pair("padding"))
            .output_padding(pair("output_padding"))
            .dilation(pair("dilation"))
            .groups(case.param_usize("groups")[0]);
        let x = fixture_tensor(case, "x");
        let w = fixture_tensor(case, "w");
        let b = case.param_bool("bias").then(|| fixture_tensor(case, "b"));
        let dy = fixture_tensor(case, "dy");
        let (y, dx, dw, db) = tape_tconv(&x, &w, b.as_ref(), &dy, opts);
        let name = &case.name;
        let check = |what: &str, got: &Tensor<f64>| {
            let want = fixture_tensor(case, what);
            assert_eq!(got.shape(), want.shape(), "{name} {what}");
            let diff = got.max_abs_diff(&want);
            assert!(diff <= 1e-10, "{name} {what}: max |diff| {diff:e}");
        };
        check("y", &y);
        check("dx", &dx);
        check("dw", &dw);
        match db {
            Some(db) => check("db", &db),
            None => assert!(!case.has_tensor("db"), "{name}: missing bias"),
        }
        // The reference agrees with PyTorch too.
        check("y", &reference::conv_transpose2d(&x, &w, b.as_ref(), opts));
        let r = reference::conv_transpose2d_backward(&x, &w, &dy, opts);
        check("dx", &r.dx);
        check("dw", &r.dw);
        if b.is_some() {
            check("db", &r.db);
        }
    }
}

// ---------------------------------------------------------------------------
// the op against the reference
// ---------------------------------------------------------------------------

/// Held while a test changes the thread count (a process-wide setting).
static SETTINGS: Mutex<()> = Mutex::new(());

/// Runs `f` at 1 and at 2 threads, then restores the default.
fn at_1_and_2_threads(mut f: impl FnMut(usize)) {
    let _guard = SETTINGS.lock().unwrap_or_else(|e| e.into_inner());
    for threads in [1, 2] {
        tapegrad::settings::set_num_threads(threads);
        f(threads);
    }
    tapegrad::settings::set_num_threads(0);
}

/// The whole op (y, dx, dw, db) through the tape against the reference.
fn check_against_reference<T: Float>(what: &str, c: &Case, tol: f64, rng: &mut StdRng) {
    let opts = c.options();
    let x = randn::<T>(&c.x, rng);
    let w = randn::<T>(&c.w_shape(), rng);
    let b = randn::<T>(&[c.c_out], rng);
    let dy = randn::<T>(&c.geometry().input_shape(), rng);
    let (y, dx, dw, db) = tape_tconv(&x, &w, Some(&b), &dy, opts);
    let what = format!("{} {what}: {c:?}", T::NAME);
    let r = reference::conv_transpose2d_backward(&x, &w, &dy, opts);
    let want_y = reference::conv_transpose2d(&x, &w, Some(&b), opts);
    assert_close(&format!("{what} y"), &y, &want_y, tol);
    assert_close(&format!("{what} dx"), &dx, &r.dx, tol);
    assert_close(&format!("{what} dw"), &dw, &r.dw, tol);
    assert_close(&format!("{what} db"), &db.unwrap(), &r.db, tol);
}

/// Shapes large enough for several row blocks and an uneven batch split:
/// the benchmark's layer (batch cut to 4), im2col's phase planes, runs and
/// pointwise product, Winograd's two variants (3×3 stride 1 with 16
/// channels), groups, and output_padding at or beyond the stride.
#[rustfmt::skip]
const LARGE_CASES: &[Case] = &[
    case([4, 32, 16, 16], 16, (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1, true),  // the benchmark's layer
    case([3, 16, 12, 12], 16, (3, 3), (1, 1), (1, 1), (0, 0), (1, 1), 1, true),  // Winograd F(2x2)
    case([2, 16, 32, 30], 16, (3, 3), (1, 1), (1, 1), (0, 0), (1, 1), 1, true),  // Winograd F(4x4)
    case([2, 32, 9, 10], 32, (3, 3), (1, 1), (0, 0), (0, 0), (1, 1), 2, true),   // Winograd, groups, unpadded
    case([3, 8, 17, 15], 6, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 1, true),    // s2 op1
    case([2, 6, 20, 19], 9, (5, 3), (3, 2), (2, 1), (2, 1), (1, 2), 3, true),    // runs, per axis
    case([5, 12, 24, 24], 10, (1, 1), (1, 1), (0, 0), (0, 0), (1, 1), 1, true),  // pointwise
    case([2, 4, 21, 18], 4, (3, 2), (1, 2), (2, 1), (1, 2), (2, 3), 4, true),    // depthwise, op ≥ stride
    case([2, 16, 60, 60], 8, (2, 2), (2, 2), (0, 0), (0, 0), (1, 1), 1, true),   // many row blocks
    // 1x1 with output_padding (allowed below the dilation): the conv behind
    // it has one more input row than output rows, so it is not pointwise.
    case([3, 11, 7, 6], 10, (1, 1), (1, 1), (0, 0), (1, 0), (2, 1), 1, true),
];

#[test]
fn large_shapes_match_reference_at_1_and_2_threads() {
    at_1_and_2_threads(|threads| {
        let mut rng = StdRng::seed_from_u64(60 + threads as u64);
        for (i, c) in LARGE_CASES.iter().enumerate() {
            let what = format!("{threads} threads, large case {i}");
            check_against_reference::<f64>(&what, c, 1e-12, &mut rng);
            check_against_reference::<f32>(&what, c, 2e-5, &mut rng);
        }
    });
}

/// Shapes whose forward pass (conv2d's input gradient) runs by phase as
/// implicit products (f32; output channels per group in whole panels of 8
/// and not — 1, 3, 5, 13 —, the last panel's rows a smaller tile):
/// strides 1 to 3, kernels that do and do not divide by the stride (phases
/// with different tap counts, and none), padding past the kernel,
/// output_padding, dilation, groups, odd sizes; with the best kernel and
/// with AVX2 forced, at 1 and 2 threads, against the reference (f64 on the
/// other paths for comparison).
#[rustfmt::skip]
const PHASE_CASES: &[Case] = &[
    case([3, 32, 16, 16], 16, (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1, true),  // the benchmark's layer
    case([2, 5, 7, 9],     8, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 1, true),  // s2 k3 op1
    case([2, 3, 6, 5],    16, (5, 4), (3, 2), (2, 1), (2, 1), (1, 1), 1, false), // s3, uneven taps
    case([1, 4, 9, 11],    8, (2, 2), (1, 1), (0, 0), (0, 0), (1, 1), 1, true),  // stride 1: in place
    case([2, 6, 5, 6],    16, (3, 3), (2, 1), (3, 0), (0, 0), (2, 1), 2, true),  // dilation, groups
    case([1, 2, 4, 3],     8, (1, 3), (1, 3), (0, 1), (0, 2), (1, 1), 1, true),  // a 1-tap axis
    case([2, 40, 6, 6],   24, (3, 3), (2, 2), (1, 1), (0, 0), (1, 1), 1, true),  // deep: several passes
    case([2, 16, 8, 8],    3, (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1, true),  // an RGB output: 3 rows
    case([1, 8, 40, 37],   3, (5, 5), (1, 1), (2, 2), (0, 0), (1, 1), 1, true),  // stride 1, 3 rows, long rows
    case([2, 6, 5, 7],    13, (3, 3), (2, 2), (1, 1), (1, 0), (1, 1), 1, true),  // 8 + 5 rows
    case([1, 4, 6, 6],    10, (2, 3), (2, 1), (0, 1), (0, 0), (1, 1), 2, true),  // 5 rows per group
    case([1, 3, 9, 40],    1, (3, 3), (1, 1), (1, 1), (0, 0), (1, 1), 1, true),  // one row
];

#[test]
fn phase_shapes_match_reference_at_1_and_2_threads() {
    let fast = cpu::has_avx2_fma();
    for force_avx2 in [false, true] {
        let _avx2 = tapegrad::gemm::force_avx2(force_avx2);
        for c in PHASE_CASES {
            let b = [c.c_out];
            let geom = Conv2dGeometry::transposed(&c.x, &c.w_shape(), Some(&b), &c.options());
            assert_eq!(
                tapegrad::conv::implicit_transposed::<f32>(&geom),
                fast,
                "{c:?}"
            );
        }
        // Padding and dilation far past the data (the padded input would
        // take 2^34 elements for one output pixel): im2col takes them.
        let mut rng = StdRng::seed_from_u64(79);
        #[rustfmt::skip]
        let far = [
            case([1, 8, 1, 1], 8, (2, 2), (1, 1), (1 << 15, 1 << 15), (0, 0), (1 << 16, 1 << 16), 1, true),
            case([1, 8, 2, 1], 8, (2, 2), (2, 2), (1 << 15, 1 << 15), (1, 1), (1 << 16, 1 << 16), 1, true),
        ];
        for c in &far {
            let geom = Conv2dGeometry::transposed(&c.x, &c.w_shape(), None, &c.options());
            assert!(!tapegrad::conv::implicit_transposed::<f32>(&geom), "{c:?}");
            check_against_reference::<f32>("far padding", c, 2e-5, &mut rng);
        }
        at_1_and_2_threads(|threads| {
            let mut rng = StdRng::seed_from_u64(80 + threads as u64);
            for (i, c) in PHASE_CASES.iter().enumerate() {
                let what = format!("{threads} threads, AVX2 forced: {force_avx2}, phase case {i}");
                check_against_reference::<f32>(&what, c, 2e-5, &mut rng);
                if !force_avx2 {
                    check_against_reference::<f64>(&what, c, 1e-12, &mut rng);
                }
            }
        });
    }
}

/// The Winograd shapes with each variant forced, and every gradcheck case
/// with a larger batch, in f32 and f64.
#[test]
fn every_variant_matches_reference() {
    let mut rng = StdRng::seed_from_u64(70);
    for tile in [2, 4] {
        // On this thread and the workers of its convs only.
        let _tile = tapegrad::conv::force_winograd_tile(tile);
        for c in &LARGE_CASES[1..4] {
            let what = format!("Winograd F({tile}x{tile})");
            check_against_reference::<f64>(&what, c, 1e-12, &mut rng);
            check_against_reference::<f32>(&what, c, 2e-5, &mut rng);
        }
    }
    for (i, c) in GRADCHECK_CASES.iter().enumerate() {
        let c = Case {
            x: [5, c.x[1], c.x[2] + 3, c.x[3] + 2],
            ..*c
        };
        check_against_reference::<f64>(&format!("case {i}"), &c, 1e-12, &mut rng);
        check_against_reference::<f32>(&format!("case {i}"), &c, 1e-5, &mut rng);
    }
}

/// A conv2d: input `[n, c, h, w]`, output channels, kernel, stride, padding, dilation, groups.
type P = (usize, usize);
type ConvCase = ([usize; 4], usize, P, P, P, P, usize);

/// ⟨conv2d(x, w), y⟩ = ⟨x, conv_transpose2d(y, w)⟩ for the same weight and
/// options, the output_padding choosing x's size among those conv2d maps to
/// y's; and the gradients: conv_transpose2d's dX is conv2d's forward, its
/// dW is conv2d's dW with x and y swapped.
#[test]
fn adjoint_of_conv2d() {
    let mut rng = StdRng::seed_from_u64(80);
    // (x [n, c, h, w] of the conv, o, kernel, stride, padding, dilation, groups)
    #[rustfmt::skip]
    let cases: [ConvCase; 6] = [
        ([2, 3, 9, 8], 4, (3, 3), (1, 1), (1, 1), (1, 1), 1),
        ([2, 4, 11, 10], 6, (4, 4), (2, 2), (1, 1), (1, 1), 2),
        ([1, 2, 13, 12], 2, (3, 2), (3, 2), (2, 1), (2, 1), 2),
        ([3, 16, 10, 10], 16, (3, 3), (1, 1), (1, 1), (1, 1), 1), // Winograd
        ([2, 5, 12, 9], 3, (1, 1), (2, 3), (0, 0), (1, 1), 1),
        ([1, 3, 10, 11], 6, (2, 3), (3, 2), (1, 2), (2, 3), 3),
    ];
    for (xs, o, k, s, p, d, g) in cases {
        let copts = Conv2dOptions::default()
            .stride(s)
            .padding(p)
            .dilation(d)
            .groups(g);
        let ws = [o, xs[1] / g, k.0, k.1];
        let geom = Conv2dGeometry::new(&xs, &ws, None, &copts);
        let ys = geom.output_shape();
        // conv2d maps every size in [r, r + stride) to ys: op picks x's.
        let op = |a: &tapegrad::conv::AxisGeometry| {
            (a.input + 2 * a.padding - a.dilation * (a.kernel - 1) - 1) % a.stride
        };
        let topts = ConvTranspose2dOptions::default()
            .stride(s)
            .padding(p)
            .dilation(d)
            .groups(g)
            .output_padding((op(&geom.h), op(&geom.w)));
        let x = randn::<f64>(&xs, &mut rng);
        let w = randn::<f64>(&ws, &mut rng);
        let y = randn::<f64>(&ys, &mut rng);
        let tape = Tape::<f64>::new();
        let (xv, wv, yv) = (
            tape.leaf(x.clone()),
            tape.leaf(w.clone()),
            tape.leaf(y.clone()),
        );
        let cx = xv.conv2d(wv, None, copts);
        let ty = yv.conv_transpose2d(wv, None, topts);
        assert_eq!(&ty.shape()[..], &xs[..], "{xs:?} {topts:?}");
        let dot = |a: &Tensor<f64>, b: &Tensor<f64>| -> f64 {
            a.data().iter().zip(b.data()).map(|(p, q)| p * q).sum()
        };
        let (lhs, rhs) = (dot(&cx.value(), &y), dot(&x, &ty.value()));
        assert!(
            (lhs - rhs).abs() <= 1e-10 * lhs.abs().max(1.0),
            "{xs:?} {copts:?}: {lhs} vs {rhs}"
        );
        // Gradients of ⟨x, tconv(y, w)⟩: dY = conv2d(x, w), dW = conv2d's dW(x, y).
        let gt = (ty * tape.constant(x.clone())).sum().backward();
        let gc = (cx * tape.constant(y.clone())).sum().backward();
        assert_close("dy = conv2d(x)", &gt[yv], &cx.value(), 1e-12);
        assert_close("dw", &gt[wv], &gc[wv], 1e-12);
    }
}

/// With both x and w wanted, the backward builds the columns of dY once for
/// both gradients (im2col's path); each must match the one computed alone,
/// in f32 and f64, at 1 and 2 threads: stride beyond the kernel, groups with
/// dilation, pointwise, odd sizes, output_padding, a zero-size weight.
#[test]
fn shared_columns_give_the_gradients_computed_alone() {
    #[rustfmt::skip]
    let cases = [
        case([3, 5, 7, 6], 4, (2, 2), (3, 3), (1, 0), (2, 1), (1, 1), 1, true),   // stride > kernel
        case([2, 6, 9, 8], 9, (3, 2), (2, 1), (2, 1), (1, 0), (2, 3), 3, false),  // groups, dilation
        case([3, 7, 5, 9], 5, (1, 1), (1, 1), (0, 0), (0, 0), (1, 1), 1, true),   // pointwise
        case([5, 32, 8, 8], 16, (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1, true), // the benchmark's layer, batch 5
        case([2, 3, 4, 5], 0, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 1, false),  // no output channels
    ];
    fn grads<T: Float>(
        c: &Case,
        x: &Tensor<T>,
        w: &Tensor<T>,
        dy: &Tensor<T>,
        which: [bool; 2],
    ) -> [Option<Tensor<T>>; 2] {
        let tape = Tape::<T>::new();
        let var = |t: &Tensor<T>, grad: bool| {
            if grad {
                tape.leaf(t.clone())
            } else {
                tape.constant(t.clone())
            }
        };
        let (xv, wv) = (var(x, which[0]), var(w, which[1]));
        let g = xv
            .conv_transpose2d(wv, None, c.options())
            .backward_with(dy.clone());
        [g.get(xv).cloned(), g.get(wv).cloned()]
    }
    fn check<T: Float>(what: &str, c: &Case, tol: f64, rng: &mut StdRng) {
        let x = randn::<T>(&c.x, rng);
        let w = randn::<T>(&c.w_shape(), rng);
        let dy = randn::<T>(&c.geometry().input_shape(), rng);
        let [dx, dw] = grads(c, &x, &w, &dy, [true, true]);
        let [dx_alone, _] = grads(c, &x, &w, &dy, [true, false]);
        let [_, dw_alone] = grads(c, &x, &w, &dy, [false, true]);
        let what = format!("{} {what}: {c:?}", T::NAME);
        assert_close(&format!("{what} dx"), &dx.unwrap(), &dx_alone.unwrap(), tol);
        assert_close(&format!("{what} dw"), &dw.unwrap(), &dw_alone.unwrap(), tol);
        let r = reference::conv_transpose2d_backward(&x, &w, &dy, c.options());
        assert_close(
            &format!("{what} dw, reference"),
            &grads(c, &x, &w, &dy, [true, true])[1].clone().unwrap(),
            &r.dw,
            100.0 * tol,
        );
    }
    at_1_and_2_threads(|threads| {
        let mut rng = StdRng::seed_from_u64(95 + threads as u64);
        for (i, c) in cases.iter().enumerate() {
            let what = format!("{threads} threads, case {i}");
            check::<f64>(&what, c, 1e-13, &mut rng);
            check::<f32>(&what, c, 1e-6, &mut rng);
        }
    });
}

#[test]
fn input_without_grad_and_empty_batch() {
    let c = case(
        [2, 4, 5, 5],
        6,
        (3, 3),
        (2, 2),
        (1, 1),
        (1, 1),
        (1, 1),
        2,
        true,
    );
    let mut rng = StdRng::seed_from_u64(90);
    let (x, w, b) = (
        randn::<f64>(&c.x, &mut rng),
        randn::<f64>(&c.w_shape(), &mut rng),
        randn::<f64>(&[6], &mut rng),
    );
    let tape = Tape::<f64>::new();
    let (xv, wv, bv) = (tape.constant(x.clone()), tape.leaf(w.clone()), tape.leaf(b));
    let y = xv.conv_transpose2d(wv, Some(bv), c.options());
    let g = y.sum().backward();
    assert!(g.get(xv).is_none());
    let ones = Tensor::ones(y.shape());
    let r = reference::conv_transpose2d_backward(&x, &w, &ones, c.options());
    assert_close("dw", &g[wv], &r.dw, 1e-12);
    assert_eq!(&y.shape()[..], &[2, 6, 10, 10]); // (5 − 1)·2 − 2 + 2 + 1 + 1
    assert_eq!(g[bv].data(), &[200.0; 6]); // 2·10·10 outputs per channel
    // An empty batch gives an empty output and zero weight gradients.
    let e = tape.leaf(Tensor::<f64>::zeros([0, 4, 5, 5]));
    let y = e.conv_transpose2d(wv, Some(bv), c.options());
    assert_eq!(&y.shape()[..], &[0, 6, 10, 10]);
    let g = y.sum().backward();
    assert_eq!(g[wv].data(), &vec![0.0; w.numel()][..]);
    assert_eq!(g[bv].data(), &[0.0; 6]);
}

// ---------------------------------------------------------------------------
// NaN and infinity
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Finite,
    Nan,
    PosInf,
    NegInf,
}

fn class<T: Float>(v: T) -> Class {
    let v = v.to_f64();
    if v.is_nan() {
        Class::Nan
    } else if v == f64::INFINITY {
        Class::PosInf
    } else if v == f64::NEG_INFINITY {
        Class::NegInf
    } else {
        Class::Finite
    }
}

/// Panics unless `got` has `want`'s class at every position, and is close
/// to it where both are finite.
fn same_pattern<T: Float>(what: &str, got: &Tensor<T>, want: &Tensor<T>, tol: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shapes differ");
    let wrong: Vec<_> = got
        .data()
        .iter()
        .zip(want.data())
        .enumerate()
        .filter(|&(_, (&g, &w))| {
            let (cg, cw) = (class(g), class(w));
            cg != cw
                || (cg == Class::Finite
                    && (g.to_f64() - w.to_f64()).abs() > tol * w.to_f64().abs().max(1.0))
        })
        .map(|(i, (&g, &w))| (i, g.to_f64(), w.to_f64()))
        .collect();
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} entries differ; first (index, got, want): {:?}",
        wrong.len(),
        want.numel(),
        &wrong[..wrong.len().min(6)]
    );
}

fn poison<T: Float>(t: &Tensor<T>, at: usize, v: f64) -> Tensor<T> {
    let mut d = t.data().to_vec();
    d[at] = T::from_f64(v);
    Tensor::from_vec(d, t.shape().clone()).unwrap()
}

/// A non-finite value in the input, the weight, the bias or the upstream
/// gradient, at a corner (a weight tap that lands on the cropped border)
/// and in the middle, through every path: Winograd (both variants),
/// im2col's phase planes and runs, the pointwise product, and
/// output_padding beyond the stride.
fn non_finite_paths<T: Float>(tol: f64, seed: u64) {
    #[rustfmt::skip]
    let paths: [(&str, Case, usize); 7] = [
        ("winograd F(2x2)", case([2, 16, 6, 6], 16, (3, 3), (1, 1), (1, 1), (0, 0), (1, 1), 1, true), 2),
        ("winograd F(4x4)", case([1, 16, 8, 9], 16, (3, 3), (1, 1), (2, 0), (0, 0), (1, 1), 1, true), 4),
        ("phase planes", case([2, 3, 5, 4], 4, (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1, true), 0),
        ("runs", case([2, 4, 5, 4], 4, (3, 2), (1, 3), (2, 1), (0, 2), (2, 1), 2, true), 0),
        ("pointwise", case([2, 3, 4, 4], 5, (1, 1), (1, 1), (0, 0), (0, 0), (1, 1), 1, true), 0),
        ("1x1 strided", case([2, 3, 4, 3], 2, (1, 1), (2, 2), (1, 0), (1, 1), (1, 1), 1, true), 0),
        ("op beyond stride", case([1, 2, 4, 4], 2, (2, 2), (1, 1), (1, 0), (2, 1), (3, 2), 1, true), 0),
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    for (name, c, tile) in paths {
        let _tile = tapegrad::conv::force_winograd_tile(tile);
        let opts = c.options();
        let ys = c.geometry().input_shape();
        let x0 = randn::<T>(&c.x, &mut rng);
        let w0 = randn::<T>(&c.w_shape(), &mut rng);
        let b0 = randn::<T>(&[c.c_out], &mut rng);
        let dy0 = randn::<T>(&ys, &mut rng);
        for target in 0..4 {
            let shape: Vec<usize> = match target {
                0 => c.x.to_vec(),
                1 => c.w_shape().to_vec(),
                2 => vec![c.c_out],
                _ => ys.to_vec(),
            };
            let n: usize = shape.iter().product();
            for at in [0, (n / 2 + shape[shape.len() - 1] / 2).min(n - 1)] {
                for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                    let (mut x, mut w, mut b, mut dy) =
                        (x0.clone(), w0.clone(), b0.clone(), dy0.clone());
                    match target {
                        0 => x = poison(&x, at, v),
                        1 => w = poison(&w, at, v),
                        2 => b = poison(&b, at, v),
                        _ => dy = poison(&dy, at, v),
                    }
                    let what = format!("{} {name}: {v} in operand {target} at {at}", T::NAME);
                    let (y, dx, dw, db) = tape_tconv(&x, &w, Some(&b), &dy, opts);
                    let r = reference::conv_transpose2d_backward(&x, &w, &dy, opts);
                    let want_y = reference::conv_transpose2d(&x, &w, Some(&b), opts);
                    same_pattern(&format!("{what}, y"), &y, &want_y, tol);
                    same_pattern(&format!("{what}, dx"), &dx, &r.dx, tol);
                    same_pattern(&format!("{what}, dw"), &dw, &r.dw, tol);
                    same_pattern(&format!("{what}, db"), &db.unwrap(), &r.db, tol);
                }
            }
        }
    }
}

#[test]
fn non_finite_values_land_where_the_definition_puts_them() {
    non_finite_paths::<f64>(1e-10, 100);
    non_finite_paths::<f32>(1e-4, 101);
}

// ---------------------------------------------------------------------------
// errors
// ---------------------------------------------------------------------------

fn tconv_shapes(x: &[usize], w: &[usize], b: Option<&[usize]>, opts: ConvTranspose2dOptions) {
    let tape = Tape::<f32>::new();
    let xv = tape.leaf(Tensor::zeros(x));
    let wv = tape.leaf(Tensor::zeros(w));
    let bv = b.map(|b| tape.leaf(Tensor::zeros(b)));
    let _ = xv.conv_transpose2d(wv, bv, opts);
}

fn opts() -> ConvTranspose2dOptions {
    ConvTranspose2dOptions::default()
}

#[test]
#[should_panic(
    expected = "conv_transpose2d: output_padding (2, 0) must be smaller than stride (2, 2) or dilation (1, 1) on each axis (input [1, 2, 4, 4], weight [2, 3, 3, 3])"
)]
fn error_output_padding_not_below_stride_or_dilation() {
    let o = opts().stride(2).output_padding((2, 0));
    tconv_shapes(&[1, 2, 4, 4], &[2, 3, 3, 3], None, o);
}

#[test]
#[should_panic(
    expected = "conv_transpose2d: output_padding (0, 1) must be smaller than stride (1, 1) or dilation (1, 1) on each axis"
)]
fn error_output_padding_at_stride_one() {
    tconv_shapes(
        &[1, 2, 4, 4],
        &[2, 3, 3, 3],
        None,
        opts().output_padding((0, 1)),
    );
}

#[test]
#[should_panic(
    expected = "conv_transpose2d: input [2, 3, 8, 8] has 3 channels but weight [4, 2, 3, 3] expects 4 (weight [C_in, C_out/groups, kh, kw])"
)]
fn error_channel_mismatch() {
    tconv_shapes(&[2, 3, 8, 8], &[4, 2, 3, 3], None, opts());
}

#[test]
#[should_panic(
    expected = "conv_transpose2d: input [1, 3, 5, 5] has 3 channels, which groups(2) does not divide (weight [3, 1, 3, 3])"
)]
fn error_input_channels_not_divisible_by_groups() {
    tconv_shapes(&[1, 3, 5, 5], &[3, 1, 3, 3], None, opts().groups(2));
}

#[test]
#[should_panic(
    expected = "conv_transpose2d: bias [3] does not match weight [4, 2, 3, 3] and groups(2): expected [4] (input [1, 4, 5, 5])"
)]
fn error_bias_shape() {
    tconv_shapes(&[1, 4, 5, 5], &[4, 2, 3, 3], Some(&[3]), opts().groups(2));
}

#[test]
#[should_panic(
    expected = "conv_transpose2d: input [1, 4, 5] and weight [4, 2, 3, 3] must be rank 4: input [N, C_in, H, W], weight [C_in, C_out/groups, kh, kw]"
)]
fn error_input_rank() {
    tconv_shapes(&[1, 4, 5], &[4, 2, 3, 3], None, opts());
}

#[test]
#[should_panic(
    expected = "conv_transpose2d: input [1, 4, 5, 5] and weight [4, 2, 3] must be rank 4: input [N, C_in, H, W], weight [C_in, C_out/groups, kh, kw]"
)]
fn error_weight_rank() {
    tconv_shapes(&[1, 4, 5, 5], &[4, 2, 3], None, opts());
}

#[test]
#[should_panic(
    expected = "conv_transpose2d: the output size (2 − 1)·1 − 2·3 + 1·(3 − 1) + 0 + 1 = -2 is not positive on the height axis (input [1, 1, 2, 5], weight [1, 1, 3, 3], stride (1, 1), padding (3, 1), output_padding (0, 0), dilation (1, 1))"
)]
fn error_output_too_small() {
    tconv_shapes(&[1, 1, 2, 5], &[1, 1, 3, 3], None, opts().padding((3, 1)));
}

#[test]
#[should_panic(
    expected = "conv_transpose2d: stride 9223372036854775807 overflows: (5 − 1)·9223372036854775807 exceeds isize::MAX on the width axis"
)]
fn error_output_size_overflows() {
    tconv_shapes(
        &[1, 1, 5, 5],
        &[1, 1, 3, 3],
        None,
        opts().stride((1, isize::MAX as usize)),
    );
}

#[test]
#[should_panic(expected = "conv_transpose2d: stride (0, 1) must be at least 1 on both axes")]
fn error_zero_stride() {
    tconv_shapes(&[1, 1, 5, 5], &[1, 1, 3, 3], None, opts().stride((0, 1)));
}

#[test]
#[should_panic(expected = "conv_transpose2d: groups must be at least 1")]
fn error_zero_groups() {
    tconv_shapes(&[1, 1, 5, 5], &[1, 1, 3, 3], None, opts().groups(0));
}

#[test]
#[should_panic(expected = "conv_transpose2d: weight [1, 1, 0, 3] has an empty kernel")]
fn error_empty_kernel() {
    tconv_shapes(&[1, 1, 5, 5], &[1, 1, 0, 3], None, opts());
}

#[test]
#[should_panic(expected = "conv_transpose2d: input [1, 1, 0, 5] has no rows or columns")]
fn error_empty_input_plane() {
    tconv_shapes(&[1, 1, 0, 5], &[1, 1, 3, 3], None, opts());
}

// ---------------------------------------------------------------------------
// the layer
// ---------------------------------------------------------------------------

/// PyTorch's ConvTranspose2d initialisation: weight and bias U(±1/√fan_in)
/// with fan_in = weight.size(1)·kh·kw = out/groups·kh·kw; forward = the op.
#[test]
fn layer_initialisation_and_forward() {
    use tapegrad::nn::{ConvTranspose2d, Module, Params};
    let mut rng = StdRng::seed_from_u64(5);
    let mut params = Params::<f64>::default();
    let opts = opts().stride(2).padding(1).output_padding(1).groups(2);
    let layer =
        ConvTranspose2d::with_options(&mut params, "up", 4, 6, (3, 2), opts, true, &mut rng);
    let (w, b) = (
        params.get(layer.weight).clone(),
        params.get(layer.bias.unwrap()).clone(),
    );
    assert_eq!(&w.shape()[..], &[4, 3, 3, 2]);
    assert_eq!(&b.shape()[..], &[6]);
    let bound = 1.0 / ((3 * 3 * 2) as f64).sqrt();
    let max = |t: &Tensor<f64>| t.data().iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(
        max(&w) <= bound && max(&w) > 0.8 * bound,
        "{} {bound}",
        max(&w)
    );
    assert!(max(&b) <= bound);
    let x = randn::<f64>(&[2, 4, 3, 3], &mut rng);
    let tape = Tape::new();
    let y = layer.forward(&params.bind(&tape), tape.constant(x.clone()));
    assert_eq!(&y.shape()[..], &[2, 6, 6, 5]);
    let want = reference::conv_transpose2d(&x, &w, Some(&b), opts);
    assert_close("layer", &y.value(), &want, 1e-12);
}
