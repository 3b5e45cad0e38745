//! max_pool2d and avg_pool2d: gradients against finite differences, values and
//! gradients against PyTorch, the max-pool tie rule, and the shape errors, with
//! and without ceil_mode (whose PyTorch fixtures are in resample.txt, checked by
//! tests/resample.rs).

mod common;

use common::fixtures;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tapegrad::gradcheck::{Options, gradcheck};
use tapegrad::{Pool2dOptions, Tape, Tensor};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Max,
    Avg,
}

/// Runs the pool through the tape: (y, dx) for upstream gradient `dy` (ones if `None`).
fn tape_pool(
    kind: Kind,
    x: &Tensor<f64>,
    opts: Pool2dOptions,
    dy: Option<&Tensor<f64>>,
) -> (Tensor<f64>, Tensor<f64>) {
    let tape = Tape::<f64>::new();
    let xv = tape.leaf(x.clone());
    let y = match kind {
        Kind::Max => xv.max_pool2d(opts),
        Kind::Avg => xv.avg_pool2d(opts),
    };
    let dy = dy.cloned().unwrap_or_else(|| Tensor::ones(y.shape()));
    let g = y.backward_with(dy);
    (y.value(), g[xv].clone())
}

/// Distinct values at least 0.1 apart in random order: no near-ties, so max-pool is
/// differentiable at the point and central differences (ε = 1e-6) are exact.
fn well_separated(shape: [usize; 4], rng: &mut StdRng) -> Tensor<f64> {
    let n: usize = shape.iter().product();
    let mut v: Vec<f64> = (0..n).map(|i| (i as f64 - n as f64 / 2.0) * 0.1).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.random_range(0..=i));
    }
    Tensor::from_vec(v, shape).unwrap()
}

// ---------------------------------------------------------------------------
// gradcheck table
// ---------------------------------------------------------------------------

/// Input shape, kernel, stride (`None`: the kernel), padding.
type PoolCase = (
    [usize; 4],
    (usize, usize),
    Option<(usize, usize)>,
    (usize, usize),
);

#[rustfmt::skip]
const GRADCHECK_CASES: &[PoolCase] = &[
    // input [n, c, h, w]  kernel  stride (None = kernel)  padding
    ([1, 1, 4, 4], (2, 2), None,          (0, 0)),  // 0 non-overlapping
    ([2, 2, 5, 5], (2, 2), None,          (0, 0)),  // 1 uneven: last row/col unused
    ([1, 1, 5, 5], (3, 3), Some((1, 1)),  (0, 0)),  // 2 overlapping
    ([1, 2, 7, 7], (3, 3), Some((2, 2)),  (1, 1)),  // 3 overlapping + padding
    ([1, 1, 7, 7], (2, 2), Some((3, 3)),  (0, 0)),  // 4 stride > kernel: gaps
    ([1, 1, 6, 5], (3, 2), Some((2, 1)),  (0, 0)),  // 5 non-square kernel and stride
    ([2, 1, 5, 6], (2, 3), Some((1, 2)),  (1, 1)),  // 6 per-axis everything
    ([1, 2, 8, 7], (3, 3), Some((3, 3)),  (1, 1)),  // 7 padding, uneven
    ([1, 1, 4, 6], (4, 2), Some((1, 2)),  (2, 0)),  // 8 padding (2, 0) = kernel/2
    ([3, 1, 3, 3], (3, 3), None,          (0, 0)),  // 9 global pool
    ([1, 1, 5, 4], (1, 1), Some((2, 2)),  (0, 0)),  // 10 1x1 subsampling
    ([1, 3, 6, 6], (2, 2), Some((1, 1)),  (1, 0)),  // 11 padding on one axis
];

#[test]
fn gradcheck_table() {
    let mut rng = StdRng::seed_from_u64(11);
    let mut checked = 0;
    for (i, &(shape, kernel, stride, padding)) in GRADCHECK_CASES.iter().enumerate() {
        for ceil in [false, true] {
            let mut opts = Pool2dOptions::new(kernel).padding(padding).ceil_mode(ceil);
            if let Some(s) = stride {
                opts = opts.stride(s);
            }
            let x = well_separated(shape, &mut rng);
            let o = Options {
                seed: i as u64,
                ..Options::default()
            };
            let max = gradcheck(|_, v| v[0].max_pool2d(opts), std::slice::from_ref(&x), o);
            assert!(max.passed(), "max case {i} {opts:?}: {max}");
            for include in [true, false] {
                let avg = gradcheck(
                    |_, v| v[0].avg_pool2d(opts.count_include_pad(include)),
                    std::slice::from_ref(&x),
                    o,
                );
                assert!(
                    avg.passed(),
                    "avg case {i} {opts:?} include_pad {include}: {avg}"
                );
            }
            checked += 3;
        }
    }
    assert_eq!(checked, 6 * GRADCHECK_CASES.len());
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
    let cases = fixtures::load("pool.txt");
    assert_eq!(cases.len(), 21);
    for case in &cases {
        let pair = |k: &str| {
            let v = case.param_usize(k);
            (v[0], v[1])
        };
        let kind = if case.param_usize("kind")[0] == 0 {
            Kind::Max
        } else {
            Kind::Avg
        };
        let mut opts = Pool2dOptions::new(pair("kernel"))
            .stride(pair("stride"))
            .padding(pair("padding"));
        if kind == Kind::Avg {
            opts = opts.count_include_pad(case.param_bool("count_include_pad"));
        }
        let x = fixture_tensor(case, "x");
        let (y, dx) = tape_pool(kind, &x, opts, Some(&fixture_tensor(case, "dy")));
        for (what, got) in [("y", &y), ("dx", &dx)] {
            let want = fixture_tensor(case, what);
            assert_eq!(got.shape(), want.shape(), "{} {what}", case.name);
            let diff = got.max_abs_diff(&want);
            assert!(diff <= 1e-9, "{} {what}: max |diff| {diff:e}", case.name);
        }
    }
}

// ---------------------------------------------------------------------------
// the max-pool tie rule
// ---------------------------------------------------------------------------

#[test]
fn max_tie_fixture_is_matched_exactly() {
    // Overlapping padded windows over zeros and a few ones: several windows hold
    // two or more maxima; PyTorch sends each window's gradient to the first one in
    // row-major order. Exact equality, not a tolerance.
    let cases = fixtures::load("pool.txt");
    let case = fixtures::find(&cases, "max_tie");
    let opts = Pool2dOptions::new(3).stride(2).padding(1);
    let (y, dx) = tape_pool(
        Kind::Max,
        &fixture_tensor(case, "x"),
        opts,
        Some(&fixture_tensor(case, "dy")),
    );
    assert_eq!(y.data(), fixture_tensor(case, "y").data());
    assert_eq!(dx.data(), fixture_tensor(case, "dx").data());
}

#[test]
fn ties_go_to_the_first_maximum_in_row_major_order() {
    // One 3x3 window: maxima 5 at (0, 2), (1, 0) and (2, 1): (0, 2) comes first.
    #[rustfmt::skip]
    let x = Tensor::from_vec(vec![
        1.0, 2.0, 5.0,
        5.0, 0.0, 4.0,
        3.0, 5.0, 1.0], [1, 1, 3, 3]).unwrap();
    let (y, dx) = tape_pool(Kind::Max, &x, Pool2dOptions::new(3), None);
    assert_eq!(y.data(), &[5.0]);
    assert_eq!(dx.data(), &[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    // All-equal windows (overlapping, stride 1): each window's first element.
    let (_, dx) = tape_pool(
        Kind::Max,
        &Tensor::zeros([1, 1, 3, 3]),
        Pool2dOptions::new(2).stride(1),
        None,
    );
    assert_eq!(dx.data(), &[1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
}

/// The 2x2, stride-2 fast path (outputs in chunks of 4, the last chunk
/// overlapping the one before) against a direct scan, on every output width
/// from 1 to 11 and odd input widths: values, and the gradient going to the
/// first maximum in row-major order, with ties (values from a small set) and
/// a NaN, which wins its window.
#[test]
fn two_by_two_windows_match_a_direct_scan_at_every_width() {
    let mut rng = StdRng::seed_from_u64(21);
    for iw in 1..=23 {
        let (n, c, ih) = (2, 3, 5);
        let mut v: Vec<f64> = (0..n * c * ih * iw)
            .map(|_| rng.random_range(0..4) as f64)
            .collect();
        let nan_at = rng.random_range(0..v.len());
        v[nan_at] = f64::NAN;
        let x = Tensor::from_vec(v.clone(), [n, c, ih, iw]).unwrap();
        let (oh, ow) = (ih / 2, iw / 2);
        if ow == 0 {
            continue;
        }
        let dy: Vec<f64> = (0..n * c * oh * ow).map(|i| i as f64 + 1.0).collect();
        let dyt = Tensor::from_vec(dy.clone(), [n, c, oh, ow]).unwrap();
        let (y, dx) = tape_pool(Kind::Max, &x, Pool2dOptions::new(2), Some(&dyt));
        let mut want_dx = vec![0.0; v.len()];
        for p in 0..n * c {
            for i in 0..oh {
                for j in 0..ow {
                    let at = |r: usize, s: usize| p * ih * iw + (2 * i + r) * iw + 2 * j + s;
                    let mut best = at(0, 0);
                    for (r, s) in [(0, 1), (1, 0), (1, 1)] {
                        let (cand, m) = (v[at(r, s)], v[best]);
                        if cand > m || cand.is_nan() {
                            best = at(r, s);
                        }
                    }
                    let o = (p * oh + i) * ow + j;
                    let got = y.data()[o];
                    assert!(
                        got == v[best] || (got.is_nan() && v[best].is_nan()),
                        "width {iw}: y[{o}] = {got}, want {}",
                        v[best]
                    );
                    want_dx[best] += dy[o];
                }
            }
        }
        assert_eq!(dx.data(), &want_dx[..], "width {iw}: dx");
    }
}

#[test]
fn padding_never_wins_a_max() {
    let x = Tensor::full([1, 1, 2, 2], -3.0);
    let (y, dx) = tape_pool(
        Kind::Max,
        &x,
        Pool2dOptions::new(3).stride(1).padding(1),
        None,
    );
    assert_eq!(y.data(), &[-3.0; 4]); // not 0: padding is −∞ for max
    // Every window (all four cover the whole input) picks the first element, (0, 0).
    assert_eq!(dx.data(), &[4.0, 0.0, 0.0, 0.0]);
}

#[test]
fn nan_wins_its_window() {
    let x = Tensor::from_vec(vec![1.0, f64::NAN, 3.0, 2.0], [1, 1, 2, 2]).unwrap();
    let (y, dx) = tape_pool(Kind::Max, &x, Pool2dOptions::new(2), None);
    assert!(y.data()[0].is_nan());
    assert_eq!(dx.data(), &[0.0, 1.0, 0.0, 0.0]);
}

#[test]
fn avg_divisor_conventions() {
    // 3x3 input of ones, kernel 3, stride 2, padding 1: corner windows hold 4 inputs.
    let x = Tensor::ones([1, 1, 3, 3]);
    let opts = Pool2dOptions::new(3).stride(2).padding(1);
    let (incl, _) = tape_pool(Kind::Avg, &x, opts, None);
    assert_eq!(incl.data(), &[4.0 / 9.0; 4]);
    let (excl, dx) = tape_pool(Kind::Avg, &x, opts.count_include_pad(false), None);
    assert_eq!(excl.data(), &[1.0; 4]);
    // Centre pixel: in all four windows, 1/4 each.
    assert_eq!(dx.get(&[0, 0, 1, 1]), 1.0);
    assert_eq!(dx.get(&[0, 0, 0, 0]), 0.25);
}

#[test]
fn options_convert_from_kernel_sizes() {
    let tape = Tape::<f32>::new();
    let x = tape.leaf(Tensor::zeros([1, 1, 6, 4]));
    assert_eq!(&x.max_pool2d(2).shape()[..], &[1, 1, 3, 2]);
    assert_eq!(&x.avg_pool2d((3, 2)).shape()[..], &[1, 1, 2, 2]);
    assert_eq!(
        &x.avg_pool2d(tapegrad::Pair::new(2, 4)).shape()[..],
        &[1, 1, 3, 1]
    );
}

// ---------------------------------------------------------------------------
// large inputs, 1 and 2 threads, against naive loops
// ---------------------------------------------------------------------------

/// The naive definition: for each window (in-bounds elements, row-major), max
/// pooling's value and winner (first maximum; a NaN always takes over) and
/// average pooling's value; then the gradients for upstream `dy`.
fn naive_pool(
    kind: Kind,
    x: &Tensor<f64>,
    o: Pool2dOptions,
    dy: &Tensor<f64>,
) -> (Vec<f64>, Vec<f64>) {
    let s = x.shape();
    let (planes, h, w) = (s[0] * s[1], s[2], s[3]);
    let st = o.stride_or_kernel();
    let (k, p) = (o.kernel, o.padding);
    // PyTorch's output size, in signed arithmetic.
    let size = |i: usize, k: usize, s: usize, p: usize| -> usize {
        let (i, k, s, p) = (i as i128, k as i128, s as i128, p as i128);
        if !o.ceil_mode {
            return ((i + 2 * p - k) / s + 1) as usize;
        }
        let mut out = (i + 2 * p - k + s - 1).div_euclid(s) + 1;
        if (out - 1) * s >= i + p {
            out -= 1;
        }
        out as usize
    };
    let oh = size(h, k.h, st.h, p.h);
    let ow = size(w, k.w, st.w, p.w);
    let (mut y, mut dx) = (vec![], vec![0.0; x.numel()]);
    for pl in 0..planes {
        for i in 0..oh {
            for j in 0..ow {
                let mut cells = vec![];
                for a in 0..k.h {
                    for b in 0..k.w {
                        let (r, c) = (
                            (i * st.h + a) as isize - p.h as isize,
                            (j * st.w + b) as isize - p.w as isize,
                        );
                        if r >= 0 && c >= 0 && (r as usize) < h && (c as usize) < w {
                            cells.push(pl * h * w + r as usize * w + c as usize);
                        }
                    }
                }
                let g = dy.data()[y.len()];
                match kind {
                    Kind::Max => {
                        let mut best = cells[0];
                        for &e in &cells[1..] {
                            let v = x.data()[e];
                            if v > x.data()[best] || v.is_nan() {
                                best = e;
                            }
                        }
                        y.push(x.data()[best]);
                        dx[best] += g;
                    }
                    Kind::Avg => {
                        // With count_include_pad: the window's positions
                        // inside the padded input (a ceil-mode overhang excluded).
                        let div = if o.count_include_pad {
                            ((i * st.h + k.h).min(h + 2 * p.h) - i * st.h)
                                * ((j * st.w + k.w).min(w + 2 * p.w) - j * st.w)
                        } else {
                            cells.len()
                        } as f64;
                        y.push(cells.iter().map(|&e| x.data()[e]).sum::<f64>() / div);
                        for &e in &cells {
                            dx[e] += g / div;
                        }
                    }
                }
            }
        }
    }
    (y, dx)
}

/// Inputs large enough to be split between threads, every option set of the
/// gradcheck table (and the 2x2 tiling case), with ties and NaNs, at 1 and 2
/// threads: values and gradients equal the naive loops exactly for max
/// pooling (same winners), to rounding for average pooling.
#[test]
fn large_inputs_match_naive_loops_at_1_and_2_threads() {
    for threads in [1, 2] {
        tapegrad::gemm::set_num_threads(threads);
        let mut rng = StdRng::seed_from_u64(70 + threads as u64);
        for (i, &(_, kernel, stride, padding)) in GRADCHECK_CASES.iter().enumerate() {
            for ceil in [false, true] {
                let mut opts = Pool2dOptions::new(kernel).padding(padding).ceil_mode(ceil);
                if let Some(s) = stride {
                    opts = opts.stride(s);
                }
                let shape = [8, 16, 29 + i % 3, 30 - i % 2];
                let n: usize = shape.iter().product();
                // Small integers: many ties. A few NaNs for max pooling.
                let v: Vec<f64> = (0..n).map(|_| rng.random_range(0..4) as f64).collect();
                let mut with_nan = v.clone();
                for _ in 0..20 {
                    with_nan[rng.random_range(0..n)] = f64::NAN;
                }
                for (kind, data) in [
                    (Kind::Max, with_nan),
                    (Kind::Max, v.clone()),
                    (Kind::Avg, v),
                ] {
                    let x = Tensor::from_vec(data, shape).unwrap();
                    for include in [true, false] {
                        let o = opts.count_include_pad(include);
                        let tape = Tape::<f64>::new();
                        let y = match kind {
                            Kind::Max => tape.leaf(x.clone()).max_pool2d(o),
                            Kind::Avg => tape.leaf(x.clone()).avg_pool2d(o),
                        };
                        let dy = Tensor::from_vec(
                            (0..y.value().numel())
                                .map(|_| rng.random_range(-2.0..2.0))
                                .collect(),
                            y.shape(),
                        )
                        .unwrap();
                        let (y_got, dx_got) = tape_pool(kind, &x, o, Some(&dy));
                        let (y_want, dx_want) = naive_pool(kind, &x, o, &dy);
                        let what = format!("{threads} threads, {kind:?} case {i} {o:?}");
                        let same =
                            |a: f64, b: f64| (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-12;
                        assert!(
                            y_got.data().iter().zip(&y_want).all(|(&a, &b)| same(a, b)),
                            "{what}: y"
                        );
                        assert!(
                            dx_got
                                .data()
                                .iter()
                                .zip(&dx_want)
                                .all(|(&a, &b)| same(a, b)),
                            "{what}: dx"
                        );
                        if kind == Kind::Max {
                            assert!(
                                dx_got
                                    .data()
                                    .iter()
                                    .zip(&dx_want)
                                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{what}: dx not bit-exact"
                            );
                            break; // count_include_pad does not apply
                        }
                    }
                }
            }
        }
        // The 2x2 tiling fast path on a large input.
        let x = Tensor::from_vec(
            (0..64 * 8 * 28 * 28)
                .map(|_| rng.random_range(0..3) as f64)
                .collect(),
            [64, 8, 28, 28],
        )
        .unwrap();
        let dy = Tensor::ones([64, 8, 14, 14]);
        let (y_got, dx_got) = tape_pool(Kind::Max, &x, Pool2dOptions::new(2), Some(&dy));
        let (y_want, dx_want) = naive_pool(Kind::Max, &x, Pool2dOptions::new(2), &dy);
        assert_eq!(y_got.data(), &y_want[..]);
        assert_eq!(dx_got.data(), &dx_want[..]);
    }
    tapegrad::gemm::set_num_threads(0);
}

// ---------------------------------------------------------------------------
// shape errors
// ---------------------------------------------------------------------------

fn max_pool(shape: &[usize], opts: Pool2dOptions) {
    let tape = Tape::<f32>::new();
    let _ = tape.leaf(Tensor::zeros(shape)).max_pool2d(opts);
}

fn avg_pool(shape: &[usize], opts: Pool2dOptions) {
    let tape = Tape::<f32>::new();
    let _ = tape.leaf(Tensor::zeros(shape)).avg_pool2d(opts);
}

#[test]
#[should_panic(expected = "max_pool2d: input [2, 3, 8] must be [N, C, H, W] (rank 4)")]
fn error_rank() {
    max_pool(&[2, 3, 8], Pool2dOptions::new(2));
}

#[test]
#[should_panic(expected = "avg_pool2d: input [8, 8] must be [N, C, H, W] (rank 4)")]
fn error_rank_avg() {
    avg_pool(&[8, 8], Pool2dOptions::new(2));
}

#[test]
#[should_panic(
    expected = "max_pool2d: padding (2, 1) must be at most half the kernel (3, 3) (input [1, 1, 8, 8])"
)]
fn error_padding_more_than_half_the_kernel() {
    max_pool(&[1, 1, 8, 8], Pool2dOptions::new(3).padding((2, 1)));
}

#[test]
#[should_panic(
    expected = "avg_pool2d: padding (0, 1) must be at most half the kernel (2, 1) (input [1, 1, 8, 8])"
)]
fn error_padding_more_than_half_the_kernel_avg() {
    avg_pool(&[1, 1, 8, 8], Pool2dOptions::new((2, 1)).padding((0, 1)));
}

#[test]
#[should_panic(
    expected = "max_pool2d: kernel (5, 5) is larger than the padded input (4, 4) (input [1, 1, 4, 4] padded by (0, 0))"
)]
fn error_window_does_not_fit() {
    max_pool(&[1, 1, 4, 4], Pool2dOptions::new(5));
}

#[test]
#[should_panic(
    expected = "avg_pool2d: kernel (3, 5) is larger than the padded input (5, 4) (input [2, 1, 3, 2] padded by (1, 1))"
)]
fn error_window_does_not_fit_padded() {
    avg_pool(&[2, 1, 3, 2], Pool2dOptions::new((3, 5)).padding(1));
}

#[test]
#[should_panic(
    expected = "max_pool2d: stride (0, 2) must be at least 1 on both axes (input [1, 1, 4, 4])"
)]
fn error_zero_stride() {
    max_pool(&[1, 1, 4, 4], Pool2dOptions::new(2).stride((0, 2)));
}

#[test]
#[should_panic(
    expected = "avg_pool2d: kernel (0, 2) must be at least 1 on both axes (input [1, 1, 4, 4])"
)]
fn error_zero_kernel() {
    avg_pool(&[1, 1, 4, 4], Pool2dOptions::new((0, 2)));
}

// ---------------------------------------------------------------------------
// extreme sizes
// ---------------------------------------------------------------------------

/// A stride beyond the input is legal (one output row or column) and costs
/// nothing extra: values and gradients equal the naive loops.
#[test]
fn strides_beyond_the_input_match_naive_loops() {
    let mut rng = StdRng::seed_from_u64(97);
    for s in [1 << 32, 1 << 63, usize::MAX] {
        for opts in [
            Pool2dOptions::new(3).stride((s, 1)).padding(1),
            Pool2dOptions::new(3).stride((1, s)).padding(1),
            Pool2dOptions::new(3).stride(s).padding((1, 0)),
            Pool2dOptions::new(5).stride(s).padding(2),
            Pool2dOptions::new((2, 3)).stride((s, 2)),
            Pool2dOptions::new(2).stride(s).count_include_pad(false),
        ] {
            for (kind, ceil) in [
                (Kind::Max, false),
                (Kind::Avg, false),
                (Kind::Max, true),
                (Kind::Avg, true),
            ] {
                let opts = opts.ceil_mode(ceil);
                let x = Tensor::randn([2, 2, 5, 4], &mut rng);
                let (y, _) = tape_pool(kind, &x, opts, None);
                let dy = Tensor::randn(y.shape(), &mut rng);
                let (y_got, dx_got) = tape_pool(kind, &x, opts, Some(&dy));
                let (y_want, dx_want) = naive_pool(kind, &x, opts, &dy);
                let what = format!("{kind:?} {opts:?}");
                let close = |a: &[f64], b: &[f64]| {
                    a.len() == b.len() && a.iter().zip(b).all(|(p, q)| (p - q).abs() <= 1e-12)
                };
                assert!(close(y_got.data(), &y_want), "{what}: y");
                assert!(close(dx_got.data(), &dx_want), "{what}: dx");
            }
        }
    }
}

/// A kernel far larger than the input, over a padding as large (up to half
/// the kernel): one window holding the whole input; the average's divisor
/// `kh·kw` (2⁸⁰ here) is taken as a float, not a wrapped integer.
#[test]
fn kernels_beyond_the_input_pool_the_whole_plane() {
    let x = Tensor::from_vec((1..=9).map(f64::from).collect(), [1, 1, 3, 3]).unwrap();
    let k = 1usize << 40;
    let opts = Pool2dOptions::new(k).padding(k / 2);
    let (y, dx) = tape_pool(Kind::Max, &x, opts, None);
    assert_eq!(&y.shape()[..], &[1, 1, 1, 1]);
    assert_eq!(y.data(), &[9.0]);
    assert_eq!(dx.data()[8], 1.0);
    let (y, _) = tape_pool(Kind::Avg, &x, opts, None);
    assert_eq!(y.data(), &[45.0 / 2f64.powi(80)]);
    let (y, dx) = tape_pool(Kind::Avg, &x, opts.count_include_pad(false), None);
    assert_eq!(y.data(), &[5.0]);
    assert_eq!(dx.data(), &[1.0 / 9.0; 9]);
}

/// An empty batch or channel dimension (with or without padding) gives an
/// empty output and an empty gradient, as in PyTorch.
#[test]
fn empty_batch_or_channels_give_empty_results() {
    for shape in [[0, 3, 5, 4], [2, 0, 5, 4], [0, 0, 2, 2]] {
        for opts in [
            Pool2dOptions::new(2),
            Pool2dOptions::new(3).stride(1).padding(1),
            Pool2dOptions::new(2).stride((1 << 63, 1)).padding(1),
        ] {
            for kind in [Kind::Max, Kind::Avg] {
                let x = Tensor::<f64>::zeros(shape);
                let (y, dx) = tape_pool(kind, &x, opts, None);
                let h =
                    (shape[2] + 2 * opts.padding.h - opts.kernel.h) / opts.stride_or_kernel().h + 1;
                let w =
                    (shape[3] + 2 * opts.padding.w - opts.kernel.w) / opts.stride_or_kernel().w + 1;
                assert_eq!(&y.shape()[..], &[shape[0], shape[1], h, w]);
                assert_eq!(dx.shape(), x.shape());
            }
        }
    }
}

#[test]
#[should_panic(
    expected = "max_pool2d: input [1, 1, 0, 4] has an empty spatial dimension: every window would hold only padding"
)]
fn error_empty_height() {
    max_pool(&[1, 1, 0, 4], Pool2dOptions::new(2).padding(1));
}

#[test]
#[should_panic(expected = "avg_pool2d: input [2, 3, 4, 0] has an empty spatial dimension")]
fn error_empty_width() {
    avg_pool(&[2, 3, 4, 0], Pool2dOptions::new(3).stride(1).padding(1));
}

#[test]
#[should_panic(expected = "max_pool2d: input [0, 3, 0, 4] has an empty spatial dimension")]
fn error_empty_height_in_an_empty_batch() {
    max_pool(&[0, 3, 0, 4], Pool2dOptions::new(2).padding(1));
}

#[test]
#[should_panic(
    expected = "avg_pool2d: padding 4611686018427387903 on the height axis overflows: the padded input 5 + 2·4611686018427387903 exceeds isize::MAX"
)]
fn error_padding_overflows() {
    avg_pool(
        &[1, 1, 5, 5],
        Pool2dOptions::new((isize::MAX as usize, 1)).padding(((1 << 62) - 1, 0)),
    );
}

#[test]
#[should_panic(
    expected = "max_pool2d: kernel 9223372036854775808 on the width axis overflows: it exceeds isize::MAX"
)]
fn error_kernel_overflows() {
    max_pool(&[1, 1, 5, 5], Pool2dOptions::new((1, 1 << 63)));
}

#[test]
#[should_panic(
    expected = "max_pool2d: kernel (5, 5) is larger than the padded input (2, 2) (input [1, 1, 2, 2] padded by (0, 0))"
)]
fn error_window_does_not_fit_in_ceil_mode() {
    // ceil((2 − 5) / 2) + 1 = 0 windows: PyTorch's "output size is too small".
    max_pool(
        &[1, 1, 2, 2],
        Pool2dOptions::new(5).stride(2).ceil_mode(true),
    );
}

/// Ceil mode adds a last window that is clipped at the end of the input,
/// unless it would start past the input and its left padding; a kernel
/// longer than the input fits when the rounded-up count is one window.
#[test]
fn ceil_mode_output_sizes_and_clipped_windows() {
    let tape = Tape::<f64>::new();
    let x = tape.leaf(Tensor::arange(7).reshape([1, 1, 1, 7]));
    let opts = Pool2dOptions::new((1, 2)).ceil_mode(true);
    let y = x.max_pool2d(opts);
    assert_eq!(y.value().data(), &[1.0, 3.0, 5.0, 6.0]);
    let avg = x.avg_pool2d(opts);
    assert_eq!(avg.value().data(), &[0.5, 2.5, 4.5, 6.0]); // the clipped window divides by 1
    // Padding 1, kernel 2, stride 2 over 6: windows start at −1, 1, 3, 5; the
    // last covers input 5 and the right padding, so it divides by 2 with
    // count_include_pad, by 1 without.
    let x = tape.leaf(Tensor::ones([1, 1, 1, 6]));
    let o = Pool2dOptions::new((1, 2)).padding((0, 1)).ceil_mode(true);
    assert_eq!(x.avg_pool2d(o).value().data(), &[0.5, 1.0, 1.0, 0.5]);
    let excl = x.avg_pool2d(o.count_include_pad(false));
    assert_eq!(excl.value().data(), &[1.0; 4]);
    // Kernel 3 over 2 with stride 2: one window, clipped to the input.
    let x = tape.leaf(Tensor::arange(4).reshape([1, 1, 2, 2]));
    let o = Pool2dOptions::new(3).stride(2).ceil_mode(true);
    assert_eq!(x.max_pool2d(o).value().data(), &[3.0]);
    assert_eq!(x.avg_pool2d(o).value().data(), &[1.5]);
    // Without ceil mode the same sizes round down.
    assert_eq!(
        &x.max_pool2d(Pool2dOptions::new(3).stride(2).padding(1))
            .shape()[..],
        &[1, 1, 1, 1]
    );
}
