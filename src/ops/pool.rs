//! 2-D pooling over NCHW inputs: [`Var::max_pool2d`], [`Var::avg_pool2d`],
//! [`Var::adaptive_max_pool2d`] and [`Var::adaptive_avg_pool2d`].
//!
//! Windows follow the same axis geometry as `conv2d` ([`AxisGeometry`], with
//! dilation 1): output `(i, j)` covers input rows `i·sh − ph .. i·sh − ph + kh`
//! and columns likewise, and `out = floor((in + 2p − k) / s) + 1`, or with
//! [`ceil_mode`](Pool2dOptions::ceil_mode) `ceil((in + 2p − k) / s) + 1`, less
//! one if the last window would start past the input and its left padding
//! (windows running past the end are clipped). Padding
//! never contributes a value: max-pooling treats it as −∞, average-pooling as 0
//! (counted in the divisor or not, see [`Pool2dOptions::count_include_pad`]).
//!
//! Adaptive pooling chooses the windows from the output size: output row `i` of
//! `out` covers input rows `floor(i·in/out) .. ceil((i + 1)·in/out)`
//! (PyTorch's rule; neighbouring windows may overlap), columns likewise.
//!
//! Gradients, for an upstream gradient dY (windows may overlap, the stride may
//! differ from the kernel and need not divide the input; contributions add up):
//!
//! - max: `dX[r, s] += dY[i, j]` for the single input `(r, s)` selected by
//!   window `(i, j)`: the **first** maximal element of the window in row-major
//!   scan order (top row first, left to right), PyTorch's rule. An element only
//!   replaces the running maximum if it is strictly greater (or NaN). All
//!   other elements get 0.
//! - avg: `dX[r, s] += dY[i, j] / divisor(i, j)` for every in-bounds `(r, s)` in the window.

use super::conv::parallel::{Planes, run_jobs, split_by};
use super::conv::{AxisGeometry, Pair};
use super::{LinearMap, record_linear_backward};
use crate::shape::Shape;
use crate::{Float, Tensor, Var};
use std::ops::Range;

/// Options of [`Var::max_pool2d`] and [`Var::avg_pool2d`]: the window size
/// (`kernel`), the `stride` (default: the kernel, i.e. non-overlapping windows),
/// zero `padding` (at most half the kernel, like PyTorch), whether the output
/// size rounds up (`ceil_mode`) and, for average
/// pooling, whether padded positions count in the divisor. Each of kernel,
/// stride and padding is one number or `(h, w)`.
///
/// A plain number or pair converts into the options of a pool with that kernel.
///
/// ```
/// use tapegrad::{Pair, Pool2dOptions};
/// let o = Pool2dOptions::new(3).stride(2).padding(1);
/// assert_eq!(o.kernel, Pair::new(3, 3));
/// assert_eq!(o.stride_or_kernel(), Pair::new(2, 2));
/// assert!(o.count_include_pad); // PyTorch's default
/// assert!(!o.ceil_mode); // PyTorch's default
/// let p: Pool2dOptions = (2, 1).into();
/// assert_eq!(p.stride_or_kernel(), Pair::new(2, 1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool2dOptions {
    /// Window size.
    pub kernel: Pair,
    /// Step between windows; `None` means the kernel size.
    pub stride: Option<Pair>,
    /// Implicit padding on each side (≤ kernel / 2 on each axis).
    pub padding: Pair,
    /// Average pooling only: divide by the window size `kh·kw` (`true`, the
    /// default, as PyTorch) or by the number of in-bounds elements (`false`).
    /// A window clipped by `ceil_mode` counts its positions inside the padded
    /// input only.
    pub count_include_pad: bool,
    /// Round the output size up instead of down (PyTorch's `ceil_mode`;
    /// default `false`): `ceil((in + 2p − k) / s) + 1` windows, less one if the
    /// last would start at or past `in + p`. The last window may then run
    /// past the padded input and is clipped.
    pub ceil_mode: bool,
}

impl Pool2dOptions {
    /// A `kernel`-sized pool with stride = kernel, no padding, `count_include_pad` true.
    ///
    /// ```
    /// let o = tapegrad::Pool2dOptions::new((3, 2));
    /// assert_eq!(o.stride, None);
    /// assert_eq!(o.padding, tapegrad::Pair::new(0, 0));
    /// ```
    pub fn new(kernel: impl Into<Pair>) -> Self {
        Pool2dOptions {
            kernel: kernel.into(),
            stride: None,
            padding: Pair::square(0),
            count_include_pad: true,
            ceil_mode: false,
        }
    }

    /// Sets `ceil_mode`: the output size rounds up (see [`ceil_mode`](Self::ceil_mode)).
    ///
    /// ```
    /// use tapegrad::{Pool2dOptions, Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::arange(25).reshape([1, 1, 5, 5]));
    /// assert_eq!(&x.max_pool2d(2).shape()[..], &[1, 1, 2, 2]);
    /// let y = x.max_pool2d(Pool2dOptions::new(2).ceil_mode(true));
    /// assert_eq!(&y.shape()[..], &[1, 1, 3, 3]); // the last row and column in windows of their own
    /// assert_eq!(y.value().data()[8], 24.0);
    /// ```
    pub fn ceil_mode(mut self, ceil: bool) -> Self {
        self.ceil_mode = ceil;
        self
    }

    /// Sets the stride.
    ///
    /// ```
    /// assert_eq!(tapegrad::Pool2dOptions::new(3).stride(1).stride, Some(tapegrad::Pair::new(1, 1)));
    /// ```
    pub fn stride(mut self, stride: impl Into<Pair>) -> Self {
        self.stride = Some(stride.into());
        self
    }

    /// Sets the padding.
    ///
    /// ```
    /// assert_eq!(tapegrad::Pool2dOptions::new(3).padding((1, 0)).padding, tapegrad::Pair::new(1, 0));
    /// ```
    pub fn padding(mut self, padding: impl Into<Pair>) -> Self {
        self.padding = padding.into();
        self
    }

    /// Sets whether average pooling counts padded positions in the divisor.
    ///
    /// ```
    /// assert!(!tapegrad::Pool2dOptions::new(3).count_include_pad(false).count_include_pad);
    /// ```
    pub fn count_include_pad(mut self, include: bool) -> Self {
        self.count_include_pad = include;
        self
    }

    /// The stride in effect: the one set, else the kernel.
    ///
    /// ```
    /// assert_eq!(tapegrad::Pool2dOptions::new(2).stride_or_kernel(), tapegrad::Pair::new(2, 2));
    /// ```
    pub fn stride_or_kernel(&self) -> Pair {
        self.stride.unwrap_or(self.kernel)
    }
}

impl From<Pair> for Pool2dOptions {
    fn from(kernel: Pair) -> Self {
        Pool2dOptions::new(kernel)
    }
}

impl From<usize> for Pool2dOptions {
    fn from(kernel: usize) -> Self {
        Pool2dOptions::new(kernel)
    }
}

impl From<(usize, usize)> for Pool2dOptions {
    fn from(kernel: (usize, usize)) -> Self {
        Pool2dOptions::new(kernel)
    }
}

/// The validated sizes of one pooling call.
#[derive(Clone, Copy, Debug)]
struct PoolGeometry {
    planes: usize,
    h: AxisGeometry,
    w: AxisGeometry,
}

impl PoolGeometry {
    /// Validates `input` against the options; panics naming `op` and the shape.
    #[track_caller]
    fn new(op: &str, input: &Shape, o: &Pool2dOptions) -> Self {
        let (kernel, stride, padding) = (o.kernel, o.stride_or_kernel(), o.padding);
        assert!(
            input.rank() == 4,
            "{op}: input {input} must be [N, C, H, W] (rank 4)"
        );
        assert!(
            kernel.h >= 1 && kernel.w >= 1,
            "{op}: kernel {kernel} must be at least 1 on both axes (input {input})"
        );
        assert!(
            stride.h >= 1 && stride.w >= 1,
            "{op}: stride {stride} must be at least 1 on both axes (input {input})"
        );
        assert!(
            padding.h <= kernel.h / 2 && padding.w <= kernel.w / 2,
            "{op}: padding {padding} must be at most half the kernel {kernel} (input {input})"
        );
        let (n, c, ih, iw) = (input[0], input[1], input[2], input[3]);
        assert!(
            ih >= 1 && iw >= 1,
            "{op}: input {input} has an empty spatial dimension: every window would hold \
             only padding; pooling needs H ≥ 1 and W ≥ 1 (an empty batch or channel \
             dimension is fine)"
        );
        let ceil = o.ceil_mode;
        let h = AxisGeometry::build_with(ih, kernel.h, stride.h, padding.h, 1, ceil);
        let w = AxisGeometry::build_with(iw, kernel.w, stride.w, padding.w, 1, ceil);
        for (axis, a) in [("height", &h), ("width", &w)] {
            if let Some(m) = a.as_ref().err().and_then(|f| f.overflow(axis)) {
                panic!("{op}: {m} (input {input}, kernel {kernel})");
            }
        }
        let (Ok(h), Ok(w)) = (h, w) else {
            // No overflow (reported above): padding ≤ kernel / 2 and the
            // padded input is no larger than isize::MAX on either axis. (In
            // ceil mode a kernel up to stride − 1 longer than the padded input fits.)
            panic!(
                "{op}: kernel {kernel} is larger than the padded input ({}, {}) (input {input} padded by {padding})",
                ih + 2 * padding.h,
                iw + 2 * padding.w
            )
        };
        // Every plane of the input and the output must be addressable, even
        // when the batch or the channels are empty.
        let fits = |dims: [usize; 4]| {
            dims.iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1)))
                .is_some_and(|v| v <= isize::MAX as usize)
        };
        let out = [n, c, h.output, w.output];
        assert!(
            fits([n, c, ih, iw]) && fits(out),
            "{op}: input {input} or output {out:?} has more elements than isize::MAX"
        );
        PoolGeometry {
            planes: n * c,
            h,
            w,
        }
    }

    fn output_shape(&self, input: &Shape) -> Shape {
        Shape::from([input[0], input[1], self.h.output, self.w.output])
    }

    /// The planes, their sizes, and the work per plane: the taps of a
    /// window that lie in the input, at most, per output.
    fn planes(&self) -> Planes {
        let window = self.h.kernel.min(self.h.input) * self.w.kernel.min(self.w.input);
        let output = self.h.output * self.w.output;
        Planes {
            count: self.planes,
            input: self.h.input * self.w.input,
            output,
            work: output.saturating_mul(window),
        }
    }
}

/// The input positions `start..end` covered by each window along an axis
/// (padding excluded), computed once per call.
fn spans(a: &AxisGeometry) -> Vec<Range<usize>> {
    (0..a.output)
        .map(|o| {
            let taps = a.valid_taps(o);
            // Pooling has dilation 1: taps k read o·stride + k − padding.
            let first = o * a.stride + taps.start - a.padding;
            first..first + taps.len()
        })
        .collect()
}

/// Adaptive pooling's window along an axis: output `o` of `output` covers
/// inputs `floor(o·input/output) .. ceil((o + 1)·input/output)` (PyTorch's
/// rule), computed in 128 bits (the products may exceed `usize`).
fn adaptive_span(o: usize, input: usize, output: usize) -> Range<usize> {
    let (o, input, output) = (o as u128, input as u128, output as u128);
    let start = o * input / output;
    let end = ((o + 1) * input).div_ceil(output);
    start as usize..end as usize
}

/// The windows of one plane: rows and columns of each, and the divisor of
/// average pooling. Forward and backward passes read them from here.
#[derive(Clone)]
struct Windows {
    rows: Vec<Range<usize>>,
    cols: Vec<Range<usize>>,
    /// The positions of each window inside the padded input (padding
    /// included, a ceil-mode overhang excluded): the divisor with
    /// `count_include_pad`.
    rows_padded: Vec<usize>,
    cols_padded: Vec<usize>,
    iw: usize,
    /// 2x2 windows, stride 2, no padding, none clipped: the windows tile the plane.
    tiles_2x2: bool,
}

impl Windows {
    fn new(geom: &PoolGeometry) -> Self {
        let padded = |a: &AxisGeometry| (0..a.output).map(|o| a.padded_taps(o)).collect();
        Windows {
            rows: spans(&geom.h),
            cols: spans(&geom.w),
            rows_padded: padded(&geom.h),
            cols_padded: padded(&geom.w),
            iw: geom.w.input,
            tiles_2x2: [geom.h, geom.w].iter().all(|a| {
                a.kernel == 2 && a.stride == 2 && a.padding == 0 && 2 * a.output <= a.input
            }),
        }
    }

    /// The windows of adaptive pooling from an `(ih, iw)` plane to `(oh, ow)`.
    fn adaptive((ih, iw): (usize, usize), (oh, ow): (usize, usize)) -> Self {
        let rows: Vec<_> = (0..oh).map(|o| adaptive_span(o, ih, oh)).collect();
        let cols: Vec<_> = (0..ow).map(|o| adaptive_span(o, iw, ow)).collect();
        Windows {
            rows_padded: rows.iter().map(|r| r.len()).collect(),
            cols_padded: cols.iter().map(|c| c.len()).collect(),
            rows,
            cols,
            iw,
            tiles_2x2: false,
        }
    }

    /// The taps a window visits, at most.
    fn max_window(&self) -> usize {
        let longest = |v: &[Range<usize>]| v.iter().map(|r| r.len()).max().unwrap_or(0);
        longest(&self.rows) * longest(&self.cols)
    }

    /// Average-pool divisor of window `(i, j)`: its positions inside the
    /// padded input with `count_include_pad` (the full kernel except for a
    /// window clipped by ceil mode; PyTorch's rule), else its in-bounds
    /// elements. As a float product: the kernel, padding included, may be
    /// larger than any addressable plane.
    fn divisor<T: Float>(&self, i: usize, j: usize, include: bool) -> T {
        if include {
            T::from_usize(self.rows_padded[i]) * T::from_usize(self.cols_padded[j])
        } else {
            T::from_usize(self.rows[i].len() * self.cols[j].len())
        }
    }
}

/// NaN test without `Float::is_nan`: NaN is unordered with itself.
#[inline]
fn is_nan<T: Float>(v: T) -> bool {
    v.partial_cmp(&v).is_none()
}

/// Outputs per chunk of the 2x2 max-pooling loop: one 128-bit vector of
/// `f32` (the baseline x86-64 width).
const POOL_LANES: usize = 4;

/// Max pooling of one plane: each window's maximum into `y` and its offset in
/// the plane into `arg`. The first element of the window (row-major) starts
/// the running maximum; a later one replaces it only if strictly greater or
/// NaN. Written with selects rather than branches (which element wins is
/// data-dependent and would mispredict half the time); 2x2 windows with stride
/// 2 and no padding, the common case, have their own loop.
fn max_plane<T: Float>(win: &Windows, x: &[T], y: &mut [T], arg: &mut [u32]) {
    let iw = win.iw;
    if win.tiles_2x2 {
        let ow = win.cols.len();
        for (i, (y, arg)) in y
            .chunks_exact_mut(ow)
            .zip(arg.chunks_exact_mut(ow))
            .enumerate()
        {
            let top = &x[2 * i * iw..][..2 * ow];
            let bottom = &x[(2 * i + 1) * iw..][..2 * ow];
            let base = (2 * i * iw) as u32;
            let window = |j: usize| {
                let at = base + 2 * j as u32;
                let (t, b) = (&top[2 * j..2 * j + 2], &bottom[2 * j..2 * j + 2]);
                let (mut m, mut k) = (t[0], at);
                (m, k) = pick(m, k, t[1], at + 1);
                (m, k) = pick(m, k, b[0], at + iw as u32);
                pick(m, k, b[1], at + iw as u32 + 1)
            };
            if ow < POOL_LANES {
                for j in 0..ow {
                    (y[j], arg[j]) = window(j);
                }
                continue;
            }
            // Chunks of outputs in local arrays, which the compiler turns
            // into vector compares and blends; the last chunk overlaps the
            // one before instead of leaving a scalar tail (its outputs are
            // recomputed to the same values).
            for j0 in (0..ow).step_by(POOL_LANES) {
                let j0 = j0.min(ow - POOL_LANES);
                let (mut m, mut k) = ([T::ZERO; POOL_LANES], [0u32; POOL_LANES]);
                for l in 0..POOL_LANES {
                    (m[l], k[l]) = window(j0 + l);
                }
                y[j0..j0 + POOL_LANES].copy_from_slice(&m);
                arg[j0..j0 + POOL_LANES].copy_from_slice(&k);
            }
        }
        return;
    }
    let mut at = 0;
    for rows in &win.rows {
        for cols in &win.cols {
            let first = rows.start * iw + cols.start;
            let (mut m, mut k) = (x[first], first as u32);
            for r in rows.clone() {
                let line = &x[r * iw..][cols.clone()];
                let start = (r * iw + cols.start) as u32;
                for (s, &v) in line.iter().enumerate() {
                    (m, k) = pick(m, k, v, start + s as u32);
                }
            }
            y[at] = m;
            arg[at] = k;
            at += 1;
        }
    }
}

/// The running maximum `(m, k)` after seeing `v` at offset `kv`: `v` wins if
/// strictly greater or NaN (PyTorch's rule; the first of equal maxima stays).
#[inline(always)]
fn pick<T: Float>(m: T, k: u32, v: T, kv: u32) -> (T, u32) {
    let take = (v > m) | is_nan(v);
    // Which element wins is data-dependent: a branch would mispredict half
    // the time on random data, so ask for conditional moves.
    (
        std::hint::select_unpredictable(take, v, m),
        std::hint::select_unpredictable(take, kv, k),
    )
}

impl<'t, T: Float> Var<'t, T> {
    /// Max pooling over each `kh × kw` window of an NCHW input.
    ///
    /// Gradient: each window's upstream gradient goes to **the first maximal
    /// element of the window in row-major scan order** (PyTorch's rule: an
    /// element replaces the running maximum only if strictly greater), so ties
    /// never split the gradient. Padding never wins. Overlapping windows add
    /// their contributions. (A NaN always wins its window, as in PyTorch.)
    ///
    /// Panics, naming `max_pool2d` and the input shape, if the input is not rank 4,
    /// has H = 0 or W = 0 (every window would hold only padding), the kernel or
    /// stride has a zero, the padding exceeds half the kernel, the window does
    /// not fit the padded input, or a size overflows. An empty batch or channel
    /// dimension gives an empty output. Any stride is allowed: one beyond the
    /// padded input gives a single output row or column.
    ///
    /// ```
    /// use tapegrad::{Pool2dOptions, Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![
    ///     1.0, 3.0, 0.0, 2.0,
    ///     3.0, 0.0, 5.0, 5.0,
    ///     0.0, 1.0, 7.0, 6.0,
    ///     0.0, 0.0, 8.0, 6.0], [1, 1, 4, 4]).unwrap());
    /// let y = x.max_pool2d(2); // kernel 2, stride 2
    /// assert_eq!(y.value().data(), &[3.0, 5.0, 1.0, 8.0]);
    /// let g = y.sum().backward();
    /// // Ties (3 and 3, 5 and 5): the first in row-major order takes the gradient.
    /// assert_eq!(g[x].data(), &[
    ///     0.0, 1.0, 0.0, 0.0,
    ///     0.0, 0.0, 1.0, 0.0,
    ///     0.0, 1.0, 0.0, 0.0,
    ///     0.0, 0.0, 1.0, 0.0]);
    /// let overlapping = x.max_pool2d(Pool2dOptions::new(3).stride(1).padding(1));
    /// assert_eq!(&overlapping.shape()[..], &[1, 1, 4, 4]);
    /// ```
    #[track_caller]
    pub fn max_pool2d(self, options: impl Into<Pool2dOptions>) -> Var<'t, T> {
        let xv = self.value();
        let geom = PoolGeometry::new("max_pool2d", xv.shape(), &options.into());
        let out_shape = geom.output_shape(xv.shape());
        max_pool(
            "max_pool2d",
            self,
            geom.planes(),
            Windows::new(&geom),
            out_shape,
        )
    }

    /// Average pooling over each `kh × kw` window of an NCHW input. Padded
    /// positions add 0; the divisor is `kh·kw` with `count_include_pad` (the
    /// default, as PyTorch) or the number of in-bounds elements without it.
    ///
    /// Gradient: `dX[r, s] += dY[i, j] / divisor(i, j)` for every in-bounds
    /// `(r, s)` of every window `(i, j)` (overlapping windows add up).
    ///
    /// Panics like [`max_pool2d`](Var::max_pool2d), naming `avg_pool2d`.
    ///
    /// ```
    /// use tapegrad::{Pool2dOptions, Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::ones([1, 1, 2, 2]));
    /// let incl = x.avg_pool2d(Pool2dOptions::new(3).stride(1).padding(1));
    /// assert_eq!(incl.value().data(), &[4.0 / 9.0; 4]); // 4 ones in each 3x3 window, /9
    /// let excl = x.avg_pool2d(Pool2dOptions::new(3).stride(1).padding(1).count_include_pad(false));
    /// assert_eq!(excl.value().data(), &[1.0; 4]); // /4
    /// assert_eq!(excl.sum().backward()[x].data(), &[1.0; 4]); // four windows × 1/4
    /// ```
    #[track_caller]
    pub fn avg_pool2d(self, options: impl Into<Pool2dOptions>) -> Var<'t, T> {
        let options = options.into();
        let xv = self.value();
        let geom = PoolGeometry::new("avg_pool2d", xv.shape(), &options);
        let out_shape = geom.output_shape(xv.shape());
        let (planes, win) = (geom.planes(), Windows::new(&geom));
        avg_pool(
            "avg_pool2d",
            self,
            planes,
            win,
            options.count_include_pad,
            out_shape,
        )
    }

    /// Adaptive max pooling of an NCHW input to `out = (oh, ow)`: output
    /// `(i, j)` is the maximum over input rows `floor(i·H/oh) .. ceil((i + 1)·H/oh)`
    /// and columns `floor(j·W/ow) .. ceil((j + 1)·W/ow)` (PyTorch's windows,
    /// which need not divide the input and may overlap). `out = (1, 1)` is
    /// global max pooling.
    ///
    /// Gradient: as [`max_pool2d`](Var::max_pool2d), each window's upstream
    /// gradient goes to the first maximal element of the window in row-major
    /// order (a NaN always wins); overlapping windows add up.
    ///
    /// Panics, naming `adaptive_max_pool2d` and the shape, if the input is not
    /// rank 4, has H = 0 or W = 0, or `out` has a zero.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::arange(15).reshape([1, 1, 3, 5]));
    /// let y = x.adaptive_max_pool2d((2, 2)); // rows 0..2 and 1..3, columns 0..3 and 2..5
    /// assert_eq!(y.value().data(), &[7.0, 9.0, 12.0, 14.0]);
    /// let g = y.sum().backward();
    /// assert_eq!(g[x].data()[7], 1.0);
    /// ```
    #[track_caller]
    pub fn adaptive_max_pool2d(self, out: (usize, usize)) -> Var<'t, T> {
        let (planes, win, out_shape) = adaptive("adaptive_max_pool2d", self, out);
        max_pool("adaptive_max_pool2d", self, planes, win, out_shape)
    }

    /// Adaptive average pooling of an NCHW input to `out = (oh, ow)`: output
    /// `(i, j)` is the mean over input rows `floor(i·H/oh) .. ceil((i + 1)·H/oh)`
    /// and columns `floor(j·W/ow) .. ceil((j + 1)·W/ow)` (PyTorch's windows).
    /// `out = (1, 1)` is global average pooling.
    ///
    /// Gradient: `dX[r, s] += dY[i, j] / |window(i, j)|` for every `(r, s)` of
    /// window `(i, j)` (overlapping windows add up).
    ///
    /// Panics, naming `adaptive_avg_pool2d` and the shape, if the input is not
    /// rank 4, has H = 0 or W = 0, or `out` has a zero.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::arange(6).reshape([1, 1, 2, 3]));
    /// let y = x.adaptive_avg_pool2d((1, 2)); // columns 0..2 and 1..3
    /// assert_eq!(y.value().data(), &[2.0, 3.0]);
    /// let g = y.sum().backward();
    /// assert_eq!(g[x].data(), &[0.25, 0.5, 0.25, 0.25, 0.5, 0.25]);
    /// assert_eq!(x.adaptive_avg_pool2d((1, 1)).value().data(), &[2.5]); // global
    /// ```
    #[track_caller]
    pub fn adaptive_avg_pool2d(self, out: (usize, usize)) -> Var<'t, T> {
        let (planes, win, out_shape) = adaptive("adaptive_avg_pool2d", self, out);
        avg_pool("adaptive_avg_pool2d", self, planes, win, true, out_shape)
    }
}

/// Validates an adaptive pooling call (panicking with `op`'s name) and
/// returns its planes, windows and output shape.
fn adaptive<T: Float>(
    op: &str,
    x: Var<'_, T>,
    (oh, ow): (usize, usize),
) -> (Planes, Windows, Shape) {
    let s = x.shape();
    assert!(
        s.rank() == 4,
        "{op}: input {s} must be [N, C, H, W] (rank 4)"
    );
    let (n, c, ih, iw) = (s[0], s[1], s[2], s[3]);
    assert!(
        ih >= 1 && iw >= 1,
        "{op}: input {s} has an empty spatial dimension; adaptive pooling needs H ≥ 1 and W ≥ 1"
    );
    assert!(
        oh >= 1 && ow >= 1,
        "{op}: output size ({oh}, {ow}) must be at least 1 on both axes (input {s})"
    );
    let out_shape = [n, c, oh, ow];
    let fits = out_shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1)))
        .is_some_and(|v| v <= isize::MAX as usize);
    assert!(
        fits,
        "{op}: output {out_shape:?} has more elements than isize::MAX (input {s})"
    );
    let win = Windows::adaptive((ih, iw), (oh, ow));
    let planes = Planes {
        count: n * c,
        input: ih * iw,
        output: oh * ow,
        work: (oh * ow).saturating_mul(win.max_window()),
    };
    (planes, win, Shape::from(out_shape))
}

/// Max pooling over `win` in every plane, recorded as `op`.
fn max_pool<'t, T: Float>(
    op: &'static str,
    xvar: Var<'t, T>,
    planes: Planes,
    win: Windows,
    out_shape: Shape,
) -> Var<'t, T> {
    let xv = xvar.value();
    assert!(
        u32::try_from(planes.input).is_ok(),
        "{op}: input {} has planes too large",
        xv.shape()
    );
    let x = xv.data();
    let (ip, op_) = (planes.input, planes.output);
    // Every window writes its output.
    let mut y = crate::buffer::scratch(out_shape.numel());
    // The selected element of each window, as an offset within its (n, c) plane.
    let mut argmax = vec![0u32; out_shape.numel()];
    let ranges = planes.split();
    let jobs: Vec<_> = ranges
        .iter()
        .zip(split_by(&mut y, &ranges, op_))
        .zip(split_by(&mut argmax, &ranges, op_))
        .map(|((r, y), a)| (r.clone(), y, a))
        .collect();
    run_jobs(jobs, |(range, y, arg)| {
        let x = &x[range.start * ip..range.end * ip];
        for ((plane, y), arg) in x
            .chunks_exact(ip)
            .zip(y.chunks_exact_mut(op_))
            .zip(arg.chunks_exact_mut(op_))
        {
            max_plane(&win, plane, y, arg);
        }
    });
    let y = Tensor::from_parts(y, out_shape.clone());
    let in_shape = xv.shape().clone();
    let argmax = std::sync::Arc::new(argmax);
    let arg2 = argmax.clone();
    // The backward scatters each output gradient to its window's maximum; its
    // adjoint gathers from there.
    let scatter = move |g: &Tensor<T>| {
        // Cleared part by part by the thread that adds into it.
        let mut dx = crate::buffer::scratch(in_shape.numel());
        let g = g.data();
        planes.par(&mut dx, ip, |range, dx| {
            dx.fill(T::ZERO);
            let g = &g[range.start * op_..range.end * op_];
            let arg = &argmax[range.start * op_..range.end * op_];
            for ((dx, g), arg) in dx
                .chunks_exact_mut(ip)
                .zip(g.chunks_exact(op_))
                .zip(arg.chunks_exact(op_))
            {
                for (&gv, &k) in g.iter().zip(arg) {
                    dx[k as usize] += gv;
                }
            }
        });
        Tensor::from_parts(dx, in_shape.clone())
    };
    let gather = move |x: &Tensor<T>| {
        let x = x.data();
        let mut y = crate::buffer::scratch(out_shape.numel());
        planes.par(&mut y, op_, |range, y| {
            let x = &x[range.start * ip..range.end * ip];
            let arg = &arg2[range.start * op_..range.end * op_];
            for ((x, y), arg) in x
                .chunks_exact(ip)
                .zip(y.chunks_exact_mut(op_))
                .zip(arg.chunks_exact(op_))
            {
                for (y, &k) in y.iter_mut().zip(arg) {
                    *y = x[k as usize];
                }
            }
        });
        Tensor::from_parts(y, out_shape.clone())
    };
    let backward = LinearMap::new("max_pool2d_backward", scatter, "max_pool2d_gather", gather);
    record_linear_backward(xvar, op, y, backward)
}

/// The average of every window of every plane of `x` (divisors as
/// [`Windows::divisor`] with `include`): the forward of average pooling, and
/// the adjoint of its backward.
fn avg_planes<T: Float>(
    x: &Tensor<T>,
    planes: &Planes,
    win: &Windows,
    include: bool,
    out_shape: &Shape,
) -> Tensor<T> {
    let x = x.data();
    let (ip, op_) = (planes.input, planes.output);
    // Every window writes its output.
    let mut y = crate::buffer::scratch(out_shape.numel());
    planes.par(&mut y, op_, |range, y| {
        let x = &x[range.start * ip..range.end * ip];
        for (plane, y) in x.chunks_exact(ip).zip(y.chunks_exact_mut(op_)) {
            let mut at = 0;
            for (i, rows) in win.rows.iter().enumerate() {
                for (j, cols) in win.cols.iter().enumerate() {
                    let mut sum = T::ZERO;
                    for r in rows.clone() {
                        for &v in &plane[r * win.iw..][cols.clone()] {
                            sum += v;
                        }
                    }
                    y[at] = sum / win.divisor::<T>(i, j, include);
                    at += 1;
                }
            }
        }
    });
    Tensor::from_parts(y, out_shape.clone())
}

/// Average pooling over `win` in every plane (divisors as
/// [`Windows::divisor`] with `include`), recorded as `op`.
fn avg_pool<'t, T: Float>(
    op: &'static str,
    xvar: Var<'t, T>,
    planes: Planes,
    win: Windows,
    include: bool,
    out_shape: Shape,
) -> Var<'t, T> {
    let xv = xvar.value();
    let (ip, op_) = (planes.input, planes.output);
    let y = avg_planes(&xv, &planes, &win, include, &out_shape);
    let in_shape = xv.shape().clone();
    let win2 = win.clone();
    // The backward spreads each output gradient over its window; its adjoint
    // is the pooling itself.
    let spread = move |g: &Tensor<T>| {
        // Cleared part by part by the thread that adds into it.
        let mut dx = crate::buffer::scratch(in_shape.numel());
        let g = g.data();
        planes.par(&mut dx, ip, |range, dx| {
            dx.fill(T::ZERO);
            let g = &g[range.start * op_..range.end * op_];
            for (dx, g) in dx.chunks_exact_mut(ip).zip(g.chunks_exact(op_)) {
                let mut at = 0;
                for (i, rows) in win.rows.iter().enumerate() {
                    for (j, cols) in win.cols.iter().enumerate() {
                        let share = g[at] / win.divisor::<T>(i, j, include);
                        at += 1;
                        for r in rows.clone() {
                            for d in &mut dx[r * win.iw..][cols.clone()] {
                                *d += share;
                            }
                        }
                    }
                }
            }
        });
        Tensor::from_parts(dx, in_shape.clone())
    };
    let pool = move |x: &Tensor<T>| avg_planes(x, &planes, &win2, include, &out_shape);
    let backward = LinearMap::new("avg_pool2d_backward", spread, "avg_pool2d", pool);
    record_linear_backward(xvar, op, y, backward)
}
