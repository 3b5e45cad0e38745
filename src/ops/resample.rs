//! Resampling over the last two axes: [`Var::upsample_nearest2d`],
//! [`Var::upsample_bilinear2d`] (PyTorch's `F.interpolate`) and [`Var::pad2d`]
//! (PyTorch's `F.pad` with four paddings).
//!
//! Each op maps every output position of a plane to input positions with
//! fixed weights, one axis at a time: the per-axis tables (`nearest_axis`,
//! `LinearAxis`, `pad_axis`) are built once per call and read by both the
//! forward pass (a gather) and the backward pass (its adjoint, a scatter-add of
//! the same weights). Planes are independent and split between threads; each
//! plane is computed by one thread, so results do not depend on the thread count.

use super::conv::parallel::Planes;
use super::{LinearMap, record_linear_backward};
use crate::shape::Shape;
use crate::{Float, Tensor, Var};

/// The output size of [`Var::upsample_nearest2d`] and
/// [`Var::upsample_bilinear2d`], as `F.interpolate` takes it: an explicit
/// `(h, w)`, or scale factors `(sh, sw)`, giving `floor(H·sh) × floor(W·sw)`.
///
/// With scale factors the index mapping uses `1/scale` (PyTorch's
/// `recompute_scale_factor=None`), not `in/out`: the two differ when the
/// scale does not divide evenly.
///
/// ```
/// use tapegrad::{Tape, Tensor, UpsampleSize};
/// let tape = Tape::<f32>::new();
/// let x = tape.leaf(Tensor::zeros([1, 1, 3, 4]));
/// assert_eq!(&x.upsample_nearest2d(UpsampleSize::Size(5, 2)).shape()[..], &[1, 1, 5, 2]);
/// assert_eq!(&x.upsample_nearest2d(UpsampleSize::Scale(1.5, 2.0)).shape()[..], &[1, 1, 4, 8]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UpsampleSize {
    /// The output height and width.
    Size(usize, usize),
    /// Scale factors for the height and width (finite, positive).
    Scale(f64, f64),
}

impl UpsampleSize {
    /// The output `(h, w)` for an `(ih, iw)` input and the scales the index
    /// mapping uses (`None`: `in/out`). Panics naming `op` and the input
    /// `shape` on a scale that is not finite and positive, or an empty output.
    fn resolve(
        self,
        op: &str,
        shape: &Shape,
        (ih, iw): (usize, usize),
    ) -> ((usize, usize), [Option<f64>; 2]) {
        match self {
            UpsampleSize::Size(oh, ow) => {
                assert!(
                    oh >= 1 && ow >= 1,
                    "{op}: output size ({oh}, {ow}) must be at least 1 on both axes (input {shape})"
                );
                ((oh, ow), [None, None])
            }
            UpsampleSize::Scale(sh, sw) => {
                assert!(
                    sh.is_finite() && sw.is_finite() && sh > 0.0 && sw > 0.0,
                    "{op}: scale factors ({sh}, {sw}) must be finite and positive (input {shape})"
                );
                let size = |i: usize, s: f64| {
                    let o = (i as f64 * s).floor();
                    assert!(
                        o < isize::MAX as f64,
                        "{op}: scale factors ({sh}, {sw}) give an output larger than isize::MAX (input {shape})"
                    );
                    o as usize
                };
                let (oh, ow) = (size(ih, sh), size(iw, sw));
                assert!(
                    oh >= 1 && ow >= 1,
                    "{op}: scale factors ({sh}, {sw}) give an empty output ({oh}, {ow}) (input {shape})"
                );
                ((oh, ow), [Some(sh), Some(sw)])
            }
        }
    }
}

/// How [`Var::pad2d`] fills the border (PyTorch's `F.pad` modes).
///
/// ```
/// use tapegrad::{PadMode, Tape, Tensor};
/// let tape = Tape::<f64>::new();
/// let x = tape.leaf(Tensor::arange(3).reshape([1, 3]));
/// let pad = |m| x.pad2d([2, 1, 0, 0], m).value().data().to_vec();
/// assert_eq!(pad(PadMode::Constant(9.0)), [9.0, 9.0, 0.0, 1.0, 2.0, 9.0]);
/// assert_eq!(pad(PadMode::Reflect), [2.0, 1.0, 0.0, 1.0, 2.0, 1.0]);
/// assert_eq!(pad(PadMode::Replicate), [0.0, 0.0, 0.0, 1.0, 2.0, 2.0]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PadMode {
    /// A constant border (PyTorch's default mode, with value 0).
    Constant(f64),
    /// The input mirrored about its first and last element, which are not
    /// repeated (`2 1 | 0 1 2 | 1`); each padding must be smaller than its axis.
    Reflect,
    /// The first and last element repeated (`0 0 | 0 1 2 | 2`).
    Replicate,
}

/// Nearest-neighbour source index of each of `out` outputs along an axis of
/// `input`, exactly as PyTorch's (legacy) `nearest` mode computes it: the
/// identity when `out == input`, `o / 2` when `out == 2·input`, else
/// `min(floor(o·scale), input − 1)` in `f32`, with `scale = 1/scale_factor`
/// when a scale factor was given and `input/out` otherwise.
fn nearest_axis(input: usize, out: usize, scale: Option<f64>) -> Vec<usize> {
    if out == input {
        return (0..out).collect();
    }
    if out == 2 * input {
        return (0..out).map(|o| o >> 1).collect();
    }
    let s = match scale {
        Some(s) => (1.0 / s) as f32,
        None => input as f32 / out as f32,
    };
    (0..out)
        .map(|o| ((o as f32 * s).floor() as usize).min(input - 1))
        .collect()
}

/// Linear interpolation along one axis: output `o` is
/// `l0[o]·x[i0[o]] + l1[o]·x[i1[o]]`. Built as PyTorch builds it, in the
/// tensor's precision: the source coordinate is `ratio·o` with
/// `align_corners` (`ratio = (in − 1)/(out − 1)`, 0 for one output), else
/// `ratio·(o + ½) − ½` clamped at 0 (`ratio = 1/scale_factor` or `in/out`);
/// `i0` is its floor (at most `in − 1`), `i1 = i0 + 1` unless `i0` is the last
/// input, and `l1` the fraction, clamped to [0, 1]. An axis whose size does
/// not change is copied (`l0 = 1`, `l1 = 0`), whatever the scale.
#[derive(Clone)]
struct LinearAxis<T> {
    i0: Vec<usize>,
    i1: Vec<usize>,
    l0: Vec<T>,
    l1: Vec<T>,
}

impl<T: Float> LinearAxis<T> {
    fn new(input: usize, out: usize, align_corners: bool, scale: Option<f64>) -> Self {
        let mut a = LinearAxis {
            i0: Vec::with_capacity(out),
            i1: Vec::with_capacity(out),
            l0: Vec::with_capacity(out),
            l1: Vec::with_capacity(out),
        };
        let half = T::from_f64(0.5);
        let ratio = if align_corners {
            if out > 1 {
                T::from_usize(input - 1) / T::from_usize(out - 1)
            } else {
                T::ZERO
            }
        } else {
            match scale {
                Some(s) => T::from_f64(1.0 / s),
                None => T::from_usize(input) / T::from_usize(out),
            }
        };
        for o in 0..out {
            let (i0, l1) = if out == input {
                (o, T::ZERO)
            } else {
                let src = if align_corners {
                    ratio * T::from_usize(o)
                } else {
                    let s = ratio * (T::from_usize(o) + half) - half;
                    if s < T::ZERO { T::ZERO } else { s }
                };
                let i0 = (src.to_f64().floor() as usize).min(input - 1);
                (i0, (src - T::from_usize(i0)).max(T::ZERO).min(T::ONE))
            };
            a.i0.push(i0);
            a.i1.push(if i0 + 1 < input { i0 + 1 } else { i0 });
            a.l0.push(T::ONE - l1);
            a.l1.push(l1);
        }
        a
    }
}

/// The source index of each output position along an axis of `n` inputs
/// padded by `before` and `after`: `None` for a constant border, else the
/// mirrored (reflect) or clamped (replicate) input index. Callers have
/// checked that reflect padding is smaller than `n` and that `n ≥ 1` for
/// reflect and replicate.
fn pad_axis(mode: PadMode, n: usize, before: usize, after: usize) -> Vec<Option<usize>> {
    (0..n + before + after)
        .map(|o| {
            let i = o as isize - before as isize;
            let last = n as isize - 1;
            match mode {
                PadMode::Constant(_) => (0..n as isize).contains(&i).then_some(i as usize),
                PadMode::Reflect => {
                    let r = if i < 0 {
                        -i
                    } else if i > last {
                        2 * last - i
                    } else {
                        i
                    };
                    Some(r as usize)
                }
                PadMode::Replicate => Some(i.clamp(0, last) as usize),
            }
        })
        .collect()
}

/// `[N, C, H, W]` checked for an upsampling `op`: the plane count and `(H, W)`.
fn nchw(op: &str, s: &Shape) -> (usize, (usize, usize)) {
    assert!(
        s.rank() == 4,
        "{op}: input {s} must be [N, C, H, W] (rank 4)"
    );
    assert!(
        s[2] >= 1 && s[3] >= 1,
        "{op}: input {s} has an empty spatial dimension; upsampling needs H ≥ 1 and W ≥ 1"
    );
    (s[0] * s[1], (s[2], s[3]))
}

/// The output shape `[N, C, oh, ow]`, checked to be addressable.
fn out_shape(op: &str, s: &Shape, lead: &[usize], (oh, ow): (usize, usize)) -> Shape {
    let mut dims = lead.to_vec();
    dims.extend([oh, ow]);
    let fits = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1)))
        .is_some_and(|v| v <= isize::MAX as usize);
    assert!(
        fits,
        "{op}: output {dims:?} has more elements than isize::MAX (input {s})"
    );
    Shape::from(dims)
}

impl<'t, T: Float> Var<'t, T> {
    /// Nearest-neighbour upsampling (or downsampling) of an NCHW input to
    /// `size`: PyTorch's `F.interpolate(x, size | scale_factor, mode="nearest")`.
    /// Output `(i, j)` copies input `(src_h(i), src_w(j))`,
    /// `src(o) = min(floor(o·scale), in − 1)` computed in `f32` as PyTorch does,
    /// with `scale = 1/scale_factor` when a scale factor is given and `in/out`
    /// otherwise (and `src(o) = o` or `o/2` when the size stays or doubles).
    ///
    /// Gradient (the adjoint): `dX[r, s] = Σ dY[i, j]` over the outputs that
    /// copy `(r, s)`.
    ///
    /// Panics, naming `upsample_nearest2d` and the input shape, if the input is
    /// not rank 4 or has H = 0 or W = 0, a size is 0, a scale factor is not
    /// finite and positive, or the output would be empty or too large.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor, UpsampleSize};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::arange(4).reshape([1, 1, 2, 2]));
    /// let y = x.upsample_nearest2d(UpsampleSize::Scale(2.0, 1.5)); // 2x2 → 4x3
    /// assert_eq!(y.value().data(), &[
    ///     0.0, 0.0, 1.0,
    ///     0.0, 0.0, 1.0,
    ///     2.0, 2.0, 3.0,
    ///     2.0, 2.0, 3.0]);
    /// let g = y.sum().backward();
    /// assert_eq!(g[x].data(), &[4.0, 2.0, 4.0, 2.0]);
    /// ```
    #[track_caller]
    pub fn upsample_nearest2d(self, size: UpsampleSize) -> Var<'t, T> {
        const OP: &str = "upsample_nearest2d";
        let s = self.shape();
        let (count, (ih, iw)) = nchw(OP, &s);
        let ((oh, ow), [sh, sw]) = size.resolve(OP, &s, (ih, iw));
        let shape = out_shape(OP, &s, &s[..2], (oh, ow));
        let (rows, cols) = (nearest_axis(ih, oh, sh), nearest_axis(iw, ow, sw));
        let planes = Planes {
            count,
            input: ih * iw,
            output: oh * ow,
            work: oh * ow,
        };
        let xv = self.value();
        let in_shape = xv.shape().clone();
        let fwd = {
            let (rows, cols, shape) = (rows.clone(), cols.clone(), shape.clone());
            move |x: &Tensor<T>| {
                let x = x.data();
                let mut y = crate::buffer::scratch(shape.numel());
                planes.par(&mut y, planes.output, |range, y| {
                    let x = &x[range.start * planes.input..range.end * planes.input];
                    for (x, y) in x
                        .chunks_exact(planes.input)
                        .zip(y.chunks_exact_mut(planes.output))
                    {
                        for (y, &r) in y.chunks_exact_mut(ow).zip(&rows) {
                            let line = &x[r * iw..][..iw];
                            for (y, &c) in y.iter_mut().zip(&cols) {
                                *y = line[c];
                            }
                        }
                    }
                });
                Tensor::from_parts(y, shape.clone())
            }
        };
        let bwd = move |g: &Tensor<T>| {
            // Cleared part by part by the thread that adds into it.
            let mut dx = crate::buffer::scratch(in_shape.numel());
            let g = g.data();
            planes.par(&mut dx, planes.input, |range, dx| {
                dx.fill(T::ZERO);
                let g = &g[range.start * planes.output..range.end * planes.output];
                for (dx, g) in dx
                    .chunks_exact_mut(planes.input)
                    .zip(g.chunks_exact(planes.output))
                {
                    for (g, &r) in g.chunks_exact(ow).zip(&rows) {
                        let line = &mut dx[r * iw..][..iw];
                        for (&g, &c) in g.iter().zip(&cols) {
                            line[c] += g;
                        }
                    }
                }
            });
            Tensor::from_parts(dx, in_shape.clone())
        };
        let y = fwd(&xv);
        let backward = LinearMap::new("upsample_nearest2d_backward", bwd, OP, fwd);
        record_linear_backward(self, OP, y, backward)
    }

    /// Bilinear upsampling (or downsampling) of an NCHW input to `size`:
    /// PyTorch's `F.interpolate(x, size | scale_factor, mode="bilinear",
    /// align_corners)`. Along each axis output `o` reads the input at
    /// `src = o·(in − 1)/(out − 1)` with `align_corners` (the corner pixels
    /// line up), else at the half-pixel position `src = (o + ½)·scale − ½`,
    /// clamped at 0, with `scale = 1/scale_factor` when a scale factor is given
    /// and `in/out` otherwise; it takes `(1 − λ)·x[⌊src⌋] + λ·x[⌊src⌋ + 1]`,
    /// `λ = src − ⌊src⌋` (the last input alone at the far edge). The two
    /// axes combine as a product of weights. An axis whose size does not change is copied.
    ///
    /// Gradient (the adjoint): each `dY[i, j]` is added to the four input
    /// pixels `(r, s)` output `(i, j)` reads, times the same weight
    /// `w_h(i, r)·w_w(j, s)`.
    ///
    /// Panics like [`upsample_nearest2d`](Var::upsample_nearest2d), naming `upsample_bilinear2d`.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor, UpsampleSize};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![0.0, 4.0], [1, 1, 1, 2]).unwrap());
    /// let corners = x.upsample_bilinear2d(UpsampleSize::Size(1, 5), true);
    /// assert_eq!(corners.value().data(), &[0.0, 1.0, 2.0, 3.0, 4.0]);
    /// let half_pixel = x.upsample_bilinear2d(UpsampleSize::Scale(1.0, 2.0), false);
    /// assert_eq!(half_pixel.value().data(), &[0.0, 1.0, 3.0, 4.0]);
    /// assert_eq!(half_pixel.sum().backward()[x].data(), &[2.0, 2.0]);
    /// ```
    #[track_caller]
    pub fn upsample_bilinear2d(self, size: UpsampleSize, align_corners: bool) -> Var<'t, T> {
        const OP: &str = "upsample_bilinear2d";
        let s = self.shape();
        let (count, (ih, iw)) = nchw(OP, &s);
        let ((oh, ow), [sh, sw]) = size.resolve(OP, &s, (ih, iw));
        let shape = out_shape(OP, &s, &s[..2], (oh, ow));
        let rows = LinearAxis::<T>::new(ih, oh, align_corners, sh);
        let cols = LinearAxis::<T>::new(iw, ow, align_corners, sw);
        let planes = Planes {
            count,
            input: ih * iw,
            output: oh * ow,
            work: 4 * oh * ow,
        };
        let xv = self.value();
        let in_shape = xv.shape().clone();
        let fwd = {
            let (rows, cols, shape) = (rows.clone(), cols.clone(), shape.clone());
            move |x: &Tensor<T>| {
                let x = x.data();
                let mut y = crate::buffer::scratch(shape.numel());
                planes.par(&mut y, planes.output, |range, y| {
                    let x = &x[range.start * planes.input..range.end * planes.input];
                    for (x, y) in x
                        .chunks_exact(planes.input)
                        .zip(y.chunks_exact_mut(planes.output))
                    {
                        for (i, y) in y.chunks_exact_mut(ow).enumerate() {
                            let top = &x[rows.i0[i] * iw..][..iw];
                            let bottom = &x[rows.i1[i] * iw..][..iw];
                            let (h0, h1) = (rows.l0[i], rows.l1[i]);
                            for (j, y) in y.iter_mut().enumerate() {
                                let (c0, c1) = (cols.i0[j], cols.i1[j]);
                                let (w0, w1) = (cols.l0[j], cols.l1[j]);
                                // PyTorch's order: rows outside, columns inside.
                                *y = (top[c0] * w0 + top[c1] * w1) * h0
                                    + (bottom[c0] * w0 + bottom[c1] * w1) * h1;
                            }
                        }
                    }
                });
                Tensor::from_parts(y, shape.clone())
            }
        };
        let bwd = move |g: &Tensor<T>| {
            // Cleared part by part by the thread that adds into it.
            let mut dx = crate::buffer::scratch(in_shape.numel());
            let g = g.data();
            planes.par(&mut dx, planes.input, |range, dx| {
                dx.fill(T::ZERO);
                let g = &g[range.start * planes.output..range.end * planes.output];
                for (dx, g) in dx
                    .chunks_exact_mut(planes.input)
                    .zip(g.chunks_exact(planes.output))
                {
                    for (i, g) in g.chunks_exact(ow).enumerate() {
                        let (r0, r1) = (rows.i0[i] * iw, rows.i1[i] * iw);
                        let (h0, h1) = (rows.l0[i], rows.l1[i]);
                        for (j, &g) in g.iter().enumerate() {
                            let (c0, c1) = (cols.i0[j], cols.i1[j]);
                            let (w0, w1) = (cols.l0[j], cols.l1[j]);
                            dx[r0 + c0] += h0 * w0 * g;
                            dx[r0 + c1] += h0 * w1 * g;
                            dx[r1 + c0] += h1 * w0 * g;
                            dx[r1 + c1] += h1 * w1 * g;
                        }
                    }
                }
            });
            Tensor::from_parts(dx, in_shape.clone())
        };
        let y = fwd(&xv);
        let backward = LinearMap::new("upsample_bilinear2d_backward", bwd, OP, fwd);
        record_linear_backward(self, OP, y, backward)
    }

    /// Pads the last two axes by `padding = [left, right, top, bottom]`:
    /// PyTorch's `F.pad(x, padding, mode, value)` with four paddings. The
    /// border is a constant, the input reflected (without repeating the edge;
    /// each padding must be smaller than its axis) or the edge replicated
    /// (see [`PadMode`]). Any input of rank ≥ 2 is padded plane by plane.
    ///
    /// Gradient: constant padding → `dX` is `dY` with the border sliced off;
    /// reflect and replicate → the adjoint of the index map, `dX[r, s] = Σ dY[i, j]`
    /// over the outputs that read `(r, s)` (its own position and its mirror
    /// images or, at an edge, the whole replicated border).
    ///
    /// Panics, naming `pad2d` and the input shape, if the input has rank < 2,
    /// a reflect padding is not smaller than its axis, a replicate input has an
    /// empty height or width, or the padded size overflows.
    ///
    /// ```
    /// use tapegrad::{PadMode, Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::arange(4).reshape([1, 1, 2, 2]));
    /// let y = x.pad2d([1, 0, 0, 1], PadMode::Replicate);
    /// assert_eq!(y.value().data(), &[
    ///     0.0, 0.0, 1.0,
    ///     2.0, 2.0, 3.0,
    ///     2.0, 2.0, 3.0]);
    /// assert_eq!(y.sum().backward()[x].data(), &[2.0, 1.0, 4.0, 2.0]);
    /// ```
    #[track_caller]
    pub fn pad2d(self, padding: [usize; 4], mode: PadMode) -> Var<'t, T> {
        const OP: &str = "pad2d";
        let s = self.shape();
        let [left, right, top, bottom] = padding;
        assert!(
            s.rank() >= 2,
            "pad2d: input {s} must have at least 2 axes (the last two are padded)"
        );
        let r = s.rank();
        let (ih, iw) = (s[r - 2], s[r - 1]);
        match mode {
            PadMode::Reflect => assert!(
                left < iw && right < iw && top < ih && bottom < ih,
                "pad2d: reflect padding {padding:?} (left, right, top, bottom) must be smaller \
                 than the input's width {iw} and height {ih} (input {s})"
            ),
            PadMode::Replicate => assert!(
                ih >= 1 && iw >= 1,
                "pad2d: replicate padding needs H ≥ 1 and W ≥ 1 (input {s})"
            ),
            PadMode::Constant(_) => {}
        }
        let sum = |a: usize, b: usize, c: usize| {
            a.checked_add(b)
                .and_then(|v| v.checked_add(c))
                .filter(|&v| v <= isize::MAX as usize)
                .unwrap_or_else(|| {
                    panic!("pad2d: padding {padding:?} overflows the padded size (input {s})")
                })
        };
        let (oh, ow) = (sum(ih, top, bottom), sum(iw, left, right));
        let shape = out_shape(OP, &s, &s[..r - 2], (oh, ow));
        let rows = pad_axis(mode, ih, top, bottom);
        let cols = pad_axis(mode, iw, left, right);
        let planes = Planes {
            count: s[..r - 2].iter().product(),
            input: ih * iw,
            output: oh * ow,
            work: oh * ow,
        };
        let fill = match mode {
            PadMode::Constant(v) => T::from_f64(v),
            _ => T::ZERO,
        };
        let xv = self.value();
        let in_shape = xv.shape().clone();
        // The forward with a border value (the op uses `fill`; its linear
        // part, the adjoint of the backward, uses 0).
        let make_fwd = |fill: T| {
            let (rows, cols, shape) = (rows.clone(), cols.clone(), shape.clone());
            move |x: &Tensor<T>| {
                let x = x.data();
                let mut y = crate::buffer::scratch(shape.numel());
                planes.par(&mut y, planes.output, |range, y| {
                    let x = &x[range.start * planes.input..range.end * planes.input];
                    for (p, y) in y.chunks_exact_mut(planes.output.max(1)).enumerate() {
                        let x = &x[p * planes.input..][..planes.input];
                        for (y, r) in y.chunks_exact_mut(ow).zip(&rows) {
                            match r {
                                Some(r) => {
                                    let line = &x[r * iw..][..iw];
                                    for (y, c) in y.iter_mut().zip(&cols) {
                                        *y = c.map_or(fill, |c| line[c]);
                                    }
                                }
                                None => y.fill(fill),
                            }
                        }
                    }
                });
                Tensor::from_parts(y, shape.clone())
            }
        };
        let (brows, bcols) = (rows.clone(), cols.clone());
        let bwd = move |g: &Tensor<T>| {
            let mut dx = crate::buffer::scratch(in_shape.numel());
            let g = g.data();
            planes.par(&mut dx, planes.input, |range, dx| {
                let g = &g[range.start * planes.output..range.end * planes.output];
                if let PadMode::Constant(_) = mode {
                    // The interior of each plane, row by row: a slice.
                    for (p, dx) in dx.chunks_exact_mut(planes.input.max(1)).enumerate() {
                        let g = &g[p * planes.output..][..planes.output];
                        for (r, dx) in dx.chunks_exact_mut(iw).enumerate() {
                            dx.copy_from_slice(&g[(r + top) * ow + left..][..iw]);
                        }
                    }
                    return;
                }
                // Cleared part by part by the thread that adds into it.
                dx.fill(T::ZERO);
                for (p, dx) in dx.chunks_exact_mut(planes.input).enumerate() {
                    let g = &g[p * planes.output..][..planes.output];
                    for (g, r) in g.chunks_exact(ow).zip(&brows) {
                        let Some(r) = r else { continue };
                        let line = &mut dx[r * iw..][..iw];
                        for (&g, c) in g.iter().zip(&bcols) {
                            if let Some(c) = c {
                                line[*c] += g;
                            }
                        }
                    }
                }
            });
            Tensor::from_parts(dx, in_shape.clone())
        };
        let y = make_fwd(fill)(&xv);
        let backward = LinearMap::new("pad2d_backward", bwd, OP, make_fwd(T::ZERO));
        record_linear_backward(self, OP, y, backward)
    }
}
