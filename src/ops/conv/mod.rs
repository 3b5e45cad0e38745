//! 2-D convolution: [`Var::conv2d`] and its adjoint [`Var::conv_transpose2d`],
//! their options, their geometry and their definitions.
//!
//! Layouts are PyTorch's: input NCHW `[N, C, H, W]`, weight OIHW
//! `[O, C/groups, kh, kw]`, bias `[O]`, output `[N, O, out_h, out_w]`.
//! As in every deep-learning library, "convolution" is a cross-correlation
//! (the kernel is not flipped):
//!
//! ```text
//! Y[n, o, i, j] = b[o] + Σ_{c, ki, kj} X[n, g·C/G + c, i·sh + ki·dh − ph, j·sw + kj·dw − pw] · W[o, c, ki, kj]
//! ```
//!
//! where `g = o / (O/G)` is the group of output channel `o`, `c < C/G`, and
//! input positions in the padding read 0 — a 0 that is multiplied like any
//! pixel, so a NaN or ±∞ weight makes NaN the outputs whose window puts it
//! over the padding (PyTorch's behaviour). Its gradients, for an upstream
//! gradient dY:
//!
//! - `db[o] = Σ_{n,i,j} dY[n, o, i, j]`;
//! - `dW[o, c, ki, kj] = Σ_{n,i,j} dY[n, o, i, j] · X[n, g·C/G + c, i·sh + ki·dh − ph, …]`
//!   (the correlation of X with dY, dY acting as a kernel dilated by the stride);
//! - `dX[n, g·C/G + c, r, s] = Σ dY[n, o, i, j] · W[o, c, ki, kj]` over every
//!   `(o, i, j, ki, kj)` that reads `(r, s)` (the full correlation of dY, with
//!   zeros inserted between its entries by the stride, with W rotated 180°).
//!
//! The derivation, with the seed's worked example, is in `docs/conv-backprop.md`.
//!
//! ```
//! use tapegrad::{Conv2dOptions, Tape, Tensor};
//! let tape = Tape::<f32>::new();
//! let x = tape.constant(Tensor::ones([2, 3, 16, 16])); // a batch of two RGB images
//! let w = tape.leaf(Tensor::ones([6, 1, 3, 3])); // depthwise, two 3x3 filters per channel
//! let y = x.conv2d(w, None, Conv2dOptions::default().padding(1).groups(3));
//! assert_eq!(&y.shape()[..], &[2, 6, 16, 16]);
//! assert_eq!(y.value().get(&[0, 0, 5, 5]), 9.0);
//! ```
//!
//! ## Transposed convolution
//!
//! [`Var::conv_transpose2d`] (input `[N, C_in, H, W]`, weight PyTorch's
//! `[C_in, C_out/groups, kh, kw]`, bias `[C_out]`) scatters each input pixel,
//! weighted by the kernel, into the output:
//!
//! ```text
//! Y[n, g·C_out/G + o, i·sh + ki·dh − ph, j·sw + kj·dw − pw] += X[n, c, i, j] · W[c, o, ki, kj]
//! ```
//!
//! over input channels `c` (group `g = c / (C_in/G)`), `o < C_out/G` and the
//! taps that land inside the output (plus `b[g·C_out/G + o]`). That is
//! conv2d's input gradient for the conv that maps the output's shape back
//! to the input's, with the same weight read as OIHW
//! ([`Conv2dGeometry::transposed`] builds that conv's geometry). So the op
//! runs conv2d's own passes on it: forward = conv2d's dX with dY := X,
//! dX = conv2d's forward of dY, dW = conv2d's dW with its input and output
//! gradient played by dY and X, db = Σ dY over n, h, w. Its gradients read
//! the cropped border (the padding) as zeros that are multiplied, as
//! conv2d's forward and dW do, and as PyTorch does.
//!
//! ```
//! use tapegrad::{ConvTranspose2dOptions, Tape, Tensor};
//! let tape = Tape::<f32>::new();
//! let x = tape.constant(Tensor::ones([2, 8, 16, 16]));
//! let w = tape.leaf(Tensor::ones([8, 4, 4, 4])); // [C_in, C_out, kh, kw]
//! let y = x.conv_transpose2d(w, None, ConvTranspose2dOptions::default().stride(2).padding(1));
//! assert_eq!(&y.shape()[..], &[2, 4, 32, 32]); // (16 − 1)·2 − 2 + 3 + 1
//! ```
//!
//! ## Code
//!
//! - [`reference`](mod@reference) holds the naive loops: the definition, used by tests.
//! - [`Conv2dGeometry`] (and [`AxisGeometry`]) hold the index math, written once.
//! - The op itself runs one of three fast paths: Winograd for 3×3, stride-1
//!   convs with at least 16 channels per group in and out (private module
//!   `winograd`: F(4×4, 3×3), 4× fewer multiplications, on outputs of at
//!   least 64 4×4 tiles, else F(2×2, 3×3), 2.25× fewer; forward and both
//!   gradients); else, for an `f32` forward pass on a CPU with AVX-512F or
//!   AVX2, an implicit GEMM that reads the input's padded phase planes in
//!   place (private module `implicit`), which also computes the input
//!   gradient (and so the transposed conv's forward) by phase of the input,
//!   and with AVX-512 the weight gradient when the output channels per group
//!   are a multiple of 16 and there is no dilation across; else im2col + GEMM (private module `im2col`). All split the batch
//!   between [`gemm::num_threads`](crate::gemm::num_threads) threads; all
//!   are tested against [`reference`](mod@reference).
//! - Non-finite values land where the definition puts them. Winograd's
//!   transforms mix the pixels of a tile and the taps of a kernel, so they
//!   would spread a NaN or ±∞ over whole tiles (and turn ±∞ into NaN); every
//!   call therefore scans its operands (input and weight forward; dY and the
//!   operands of the gradients wanted backward) and takes im2col when any
//!   value is not finite. im2col, the pointwise product and the reference then
//!   give NaN and ±∞ at the same positions (a vectorised pass over the data,
//!   small next to the conv's own reads).

mod geometry;
mod im2col;
mod implicit;
pub(crate) mod parallel;
pub mod reference;
mod transpose;
mod winograd;

pub use geometry::{AxisGeometry, Conv2dGeometry};
pub use transpose::ConvTranspose2dOptions;

/// Makes every Winograd conv started on the calling thread use
/// F(`tile`×`tile`, 3×3) (`tile` 2 or 4), or lets each conv's geometry choose
/// (`0`), for as long as the returned guard lives (the convs hand the setting
/// to their worker threads; other threads are unaffected). For tests that
/// check both variants on the same shapes.
///
/// # Panics
/// If `tile` is not 0, 2 or 4.
///
/// ```
/// use tapegrad::{conv::force_winograd_tile, Conv2dOptions, Tape, Tensor};
/// let _f4 = force_winograd_tile(4);
/// let tape = Tape::<f64>::new();
/// let x = tape.leaf(Tensor::ones([1, 16, 8, 8]));
/// let w = tape.leaf(Tensor::ones([16, 16, 3, 3]));
/// let y = x.conv2d(w, None, Conv2dOptions::default().padding(1));
/// assert_eq!(y.value().get(&[0, 0, 4, 4]), 144.0); // 16 channels × 9 taps
/// ```
#[doc(hidden)]
pub fn force_winograd_tile(tile: usize) -> crate::gemm::SwitchGuard {
    winograd::check_tile(tile);
    crate::gemm::switches::force_tile(tile)
}

/// [`force_winograd_tile`] as the process-wide default: what every thread
/// that holds no guard uses (the benchmark's `--winograd-tile`). A guard
/// still overrides it on its thread.
///
/// # Panics
/// If `tile` is not 0, 2 or 4.
///
/// ```
/// tapegrad::conv::force_winograd_tile_process_wide(2);
/// tapegrad::conv::force_winograd_tile_process_wide(0); // each geometry chooses again
/// ```
#[doc(hidden)]
pub fn force_winograd_tile_process_wide(tile: usize) {
    winograd::check_tile(tile);
    crate::gemm::switches::set_default_tile(tile);
}

/// The Winograd tile (2 or 4) a conv of this geometry started now on this
/// thread takes, if Winograd applies to it (its operands finite). For tests.
///
/// ```
/// use tapegrad::conv::{force_winograd_tile, winograd_tile, Conv2dGeometry};
/// use tapegrad::Conv2dOptions;
/// let opts = Conv2dOptions::default().padding(1);
/// let geom = Conv2dGeometry::new(&[1, 16, 32, 32], &[16, 16, 3, 3], None, &opts);
/// assert_eq!(winograd_tile(&geom), Some(4)); // 64 tiles of 4×4
/// let _f2 = force_winograd_tile(2);
/// assert_eq!(winograd_tile(&geom), Some(2));
/// ```
#[doc(hidden)]
pub fn winograd_tile(geom: &Conv2dGeometry) -> Option<usize> {
    winograd::applies(geom).then(|| winograd::tile_for(geom))
}

/// Whether conv2d's forward pass of this geometry, for element type `T`,
/// runs as an implicit GEMM (the micro-kernel reading the input's padded
/// phase planes in place, no column matrix): `f32` on a CPU with AVX-512F or
/// AVX2 + FMA, not a pointwise conv, strides within the kernel's span, and
/// not a conv Winograd takes.
/// For tests.
///
/// ```
/// use tapegrad::conv::{implicit_gemm, Conv2dGeometry};
/// use tapegrad::Conv2dOptions;
/// let opts = Conv2dOptions::default().stride(2).padding(1);
/// let geom = Conv2dGeometry::new(&[1, 3, 32, 32], &[16, 3, 3, 3], None, &opts);
/// #[cfg(target_arch = "x86_64")]
/// let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
/// #[cfg(not(target_arch = "x86_64"))]
/// let avx2 = false;
/// assert_eq!(implicit_gemm::<f32>(&geom), avx2);
/// assert!(!implicit_gemm::<f64>(&geom));
/// ```
#[doc(hidden)]
pub fn implicit_gemm<T: Float>(geom: &Conv2dGeometry) -> bool {
    !winograd::applies(geom) && implicit::applies::<T>(geom)
}

/// Whether conv2d's input gradient for this geometry — the forward pass of
/// the transposed conv built on it — runs by phase as implicit products
/// (`f32` on a CPU with AVX-512F or AVX2 + FMA, not a pointwise conv,
/// strides within the kernel's span,
/// not a conv Winograd takes; a weight that is not finite takes im2col at
/// run time). For tests.
///
/// ```
/// use tapegrad::conv::{implicit_transposed, Conv2dGeometry};
/// use tapegrad::ConvTranspose2dOptions;
/// let opts = ConvTranspose2dOptions::default().stride(2).padding(1);
/// // x [N, C_in, H, W], weight [C_in, C_out, kh, kw]
/// let geom = Conv2dGeometry::transposed(&[1, 32, 16, 16], &[32, 16, 4, 4], None, &opts);
/// assert!(!implicit_transposed::<f64>(&geom));
/// ```
#[doc(hidden)]
pub fn implicit_transposed<T: Float>(geom: &Conv2dGeometry) -> bool {
    !winograd::applies(geom) && implicit::transposed_applies::<T>(geom)
}

/// Whether conv2d's weight gradient for this geometry runs as an implicit
/// product, reading the padded input in place (`f32` on a CPU with
/// AVX-512F, output channels per group a multiple of 16, not a pointwise
/// conv, no dilation across, not a conv Winograd takes). For tests.
///
/// ```
/// use tapegrad::conv::{implicit_weight_grad, Conv2dGeometry};
/// use tapegrad::Conv2dOptions;
/// let opts = Conv2dOptions::default().padding(2);
/// let geom = Conv2dGeometry::new(&[1, 3, 32, 32], &[16, 3, 5, 5], None, &opts);
/// assert!(!implicit_weight_grad::<f64>(&geom));
/// ```
#[doc(hidden)]
pub fn implicit_weight_grad<T: Float>(geom: &Conv2dGeometry) -> bool {
    !winograd::applies(geom) && implicit::weight_grad_applies::<T>(geom)
}

use crate::shape::Shape;
use crate::{Float, Tensor, Var};
use smallvec::smallvec;
use std::fmt;

/// A per-axis setting `(h, w)` (stride, padding, dilation, kernel). A single
/// number applies to both axes.
///
/// ```
/// use tapegrad::Pair;
/// assert_eq!(Pair::from(2), Pair::new(2, 2));
/// assert_eq!(Pair::from((2, 1)), Pair { h: 2, w: 1 });
/// assert_eq!(Pair::from([3, 1]).to_string(), "(3, 1)");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pair {
    /// The value along the height axis.
    pub h: usize,
    /// The value along the width axis.
    pub w: usize,
}

impl Pair {
    /// `(h, w)`.
    ///
    /// ```
    /// assert_eq!(tapegrad::Pair::new(1, 2).w, 2);
    /// ```
    pub const fn new(h: usize, w: usize) -> Self {
        Pair { h, w }
    }

    /// The same value on both axes.
    ///
    /// ```
    /// assert_eq!(tapegrad::Pair::square(3), tapegrad::Pair::new(3, 3));
    /// ```
    pub const fn square(v: usize) -> Self {
        Pair { h: v, w: v }
    }
}

impl From<usize> for Pair {
    fn from(v: usize) -> Self {
        Pair::square(v)
    }
}

impl From<(usize, usize)> for Pair {
    fn from((h, w): (usize, usize)) -> Self {
        Pair { h, w }
    }
}

impl From<[usize; 2]> for Pair {
    fn from([h, w]: [usize; 2]) -> Self {
        Pair { h, w }
    }
}

impl fmt::Display for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.h, self.w)
    }
}

/// The options of [`Var::conv2d`]: stride, zero padding and dilation per axis,
/// and the number of groups. The default is PyTorch's: stride 1, padding 0,
/// dilation 1, groups 1. Set fields directly or with the builder methods.
///
/// ```
/// use tapegrad::{Conv2dOptions, Pair};
/// let o = Conv2dOptions::default().stride(2).padding((1, 0)).groups(3);
/// assert_eq!(o.stride, Pair::new(2, 2));
/// assert_eq!(o.padding, Pair::new(1, 0));
/// assert_eq!(o.dilation, Pair::new(1, 1));
/// let same = Conv2dOptions { stride: 2.into(), padding: (1, 0).into(), groups: 3, ..Default::default() };
/// assert_eq!(o, same);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dOptions {
    /// Step between windows (≥ 1).
    pub stride: Pair,
    /// Zeros added on each side of the input.
    pub padding: Pair,
    /// Step between kernel taps (≥ 1; 1 = dense kernel).
    pub dilation: Pair,
    /// Number of groups: input and output channels are split into this many
    /// groups, each convolved separately (`groups = C` is a depthwise conv).
    pub groups: usize,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions {
            stride: Pair::square(1),
            padding: Pair::square(0),
            dilation: Pair::square(1),
            groups: 1,
        }
    }
}

impl Conv2dOptions {
    /// The defaults: stride 1, padding 0, dilation 1, groups 1.
    ///
    /// ```
    /// assert_eq!(tapegrad::Conv2dOptions::new(), tapegrad::Conv2dOptions::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the stride (one number or `(h, w)`).
    ///
    /// ```
    /// let o = tapegrad::Conv2dOptions::default().stride((2, 1));
    /// assert_eq!((o.stride.h, o.stride.w), (2, 1));
    /// ```
    pub fn stride(mut self, stride: impl Into<Pair>) -> Self {
        self.stride = stride.into();
        self
    }

    /// Sets the zero padding (one number or `(h, w)`).
    ///
    /// ```
    /// let o = tapegrad::Conv2dOptions::default().padding(1);
    /// assert_eq!(o.padding, tapegrad::Pair::new(1, 1));
    /// ```
    pub fn padding(mut self, padding: impl Into<Pair>) -> Self {
        self.padding = padding.into();
        self
    }

    /// Sets the dilation (one number or `(h, w)`).
    ///
    /// ```
    /// let o = tapegrad::Conv2dOptions::default().dilation((2, 1));
    /// assert_eq!(o.dilation, tapegrad::Pair::new(2, 1));
    /// ```
    pub fn dilation(mut self, dilation: impl Into<Pair>) -> Self {
        self.dilation = dilation.into();
        self
    }

    /// Sets the number of groups.
    ///
    /// ```
    /// assert_eq!(tapegrad::Conv2dOptions::default().groups(4).groups, 4);
    /// ```
    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }
}

/// Whether every value of `v` is finite (neither NaN nor ±∞): the check that
/// sends a conv with a non-finite operand to the direct path. One pass over
/// the data, which the compiler vectorises: `v · 0` is ±0 for a finite `v` and
/// NaN otherwise, summed in independent lanes with no early exit inside a
/// chunk; it costs a fraction of one read of the operands by the conv itself.
fn all_finite<T: Float>(v: &[T]) -> bool {
    const LANES: usize = 16;
    v.chunks(1 << 12).all(|chunk| {
        let mut acc = [T::ZERO; LANES];
        let mut rows = chunk.chunks_exact(LANES);
        for row in &mut rows {
            for (a, &x) in acc.iter_mut().zip(row) {
                *a += x * T::ZERO;
            }
        }
        let tail = rows
            .remainder()
            .iter()
            .fold(T::ZERO, |a, &x| a + x * T::ZERO);
        acc.iter().fold(tail, |a, &b| a + b) == T::ZERO
    })
}

impl<'t, T: Float> Var<'t, T> {
    /// 2-D convolution (cross-correlation) of an NCHW input with an OIHW
    /// weight, plus an optional bias `[O]`; see the [module docs](crate::conv)
    /// for the formula and its gradients.
    ///
    /// The output is `[N, O, out_h, out_w]` with
    /// `out = floor((in + 2·padding − dilation·(k − 1) − 1) / stride) + 1` per axis.
    /// Runs Winograd (F(4×4, 3×3) on outputs of at least 64 4×4 tiles, else
    /// F(2×2, 3×3)) for 3×3, stride-1, undilated convs with padding
    /// ≤ 2 and at least 16 channels per group in and out whose operands are
    /// all finite; else, for `f32` with AVX-512 or AVX2, an implicit GEMM
    /// reading the padded input in place (the input gradient likewise, by
    /// phase, when the weights are finite, and with AVX-512 the weight
    /// gradient when the output channels per group are a multiple of 16 and
    /// there is no dilation across); else
    /// im2col + GEMM (a 1x1, stride-1, unpadded conv skips im2col); so NaN
    /// and ±∞ come out where the definition puts them. The batch is split between
    /// [`gemm::num_threads`](crate::gemm::num_threads) threads. The backward
    /// pass recomputes the column matrix (or the transformed input) rather than
    /// keeping it, and skips dX when the input needs no gradient (e.g. the data
    /// fed to the first layer). Results agree with the naive
    /// [`reference`](mod@reference) to rounding; Winograd rounds differently
    /// from the direct sum (in `f32`, relative differences of order 1e-6).
    ///
    /// Panics, naming `conv2d` and the shapes, if they do not fit together or
    /// a size overflows (see [`Conv2dGeometry::try_new`]).
    ///
    /// ```
    /// use tapegrad::{Conv2dOptions, Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.constant(Tensor::arange(9).reshape([1, 1, 3, 3])); // 0..8
    /// let w = tape.leaf(Tensor::from_vec(vec![1.0, 0.0, 0.0, -1.0], [1, 1, 2, 2]).unwrap());
    /// let b = tape.leaf(Tensor::from_vec(vec![10.0], [1]).unwrap());
    /// let y = x.conv2d(w, Some(b), Conv2dOptions::default());
    /// assert_eq!(y.value().data(), &[6.0, 6.0, 6.0, 6.0]); // x[i][j] − x[i+1][j+1] + 10
    /// let g = y.sum().backward();
    /// assert_eq!(g[b].data(), &[4.0]);
    /// assert_eq!(g[w].data(), &[8.0, 12.0, 20.0, 24.0]); // sums of the four 2x2 sub-grids
    /// let strided = x.conv2d(w, None, Conv2dOptions::default().stride(2).padding(1));
    /// assert_eq!(&strided.shape()[..], &[1, 1, 2, 2]);
    /// ```
    #[track_caller]
    pub fn conv2d(
        self,
        weight: Var<'t, T>,
        bias: Option<Var<'t, T>>,
        options: Conv2dOptions,
    ) -> Var<'t, T> {
        let (xv, wv) = (self.value(), weight.value());
        let bv = bias.map(|b| b.value());
        let geom = Conv2dGeometry::new(
            xv.shape(),
            wv.shape(),
            bv.as_ref().map(|b| &b.shape()[..]),
            &options,
        );
        self.conv2d_geom(weight, bias, geom)
    }

    /// [`conv2d`](Var::conv2d) with its geometry already built (and checked).
    ///
    /// Its graph backward (for [`Var::grad_graph`]) stays in the family of
    /// three ops on one geometry G: conv2d F(x, w), its adjoint in x,
    /// A(y, w) = [`conv_transpose2d`](Var::conv_transpose2d), and its weight
    /// gradient Wg(x, y). dF = (A(g, w), Wg(x, g), Σg); dA = (F(g, w), Wg(g, y),
    /// Σg); dWg = (A(y, G), F(x, G)) for an upstream G of the weight's shape
    /// (from ⟨G, Wg(x, y)⟩ = ⟨F(x, G), y⟩ = ⟨x, A(y, G)⟩), so gradients of any
    /// order are convolutions.
    pub(crate) fn conv2d_geom(
        self,
        weight: Var<'t, T>,
        bias: Option<Var<'t, T>>,
        geom: Conv2dGeometry,
    ) -> Var<'t, T> {
        let (xv, wv) = (self.value(), weight.value());
        let bv = bias.map(|b| b.value());
        let (x_, w_, b_) = (xv.data(), wv.data(), bv.as_ref().map(|b| b.data()));
        let y = forward_pass(&geom, x_, w_, b_);
        let y = Tensor::from_parts(y, Shape::from(geom.output_shape()));
        let mut parents = smallvec::SmallVec::<[Var<'t, T>; 3]>::new();
        parents.extend([self, weight]);
        parents.extend(bias);
        let graph = crate::tape::graph_fn(move |ctx: &crate::GraphCtx<'_, '_, T>| {
            let (x, w, g) = (ctx.inputs[0], ctx.inputs[1], ctx.grad);
            let mut grads = crate::GraphGrads::new();
            grads.push(ctx.needs_grad[0].then(|| g.conv_transpose2d_geom(w, None, geom)));
            grads.push(ctx.needs_grad[1].then(|| conv2d_weight_grad(x, g, geom)));
            if ctx.inputs.len() == 3 {
                grads.push(ctx.needs_grad[2].then(|| g.sum_axes(&[0, 2, 3], false)));
            }
            grads
        });
        self.tape.record_differentiable(
            "conv2d",
            y,
            &parents,
            move |ctx| {
                let (x, w) = (ctx.inputs[0], ctx.inputs[1]);
                let need_db = ctx.inputs.len() == 3 && ctx.needs_grad[2];
                let need = [ctx.needs_grad[0], ctx.needs_grad[1], need_db];
                let g = backward_pass(&geom, x.data(), w.data(), ctx.grad.data(), need);
                let dx = g.dx.map(|d| Tensor::from_parts(d, x.shape().clone()));
                let dw = g.dw.map(|d| Tensor::from_parts(d, w.shape().clone()));
                let mut grads = smallvec![dx, dw];
                if ctx.inputs.len() == 3 {
                    let db =
                        g.db.map(|d| Tensor::from_parts(d, Shape::from([geom.out_channels])));
                    grads.push(db);
                }
                grads
            },
            graph,
        )
    }
}

/// conv2d's forward pass: Winograd where it applies and every operand is
/// finite (its transforms mix a tile's pixels, which would spread a NaN or an
/// infinity over the tile), else the implicit GEMM where it applies, else
/// im2col + GEMM.
fn forward_pass<T: Float>(geom: &Conv2dGeometry, x: &[T], w: &[T], b: Option<&[T]>) -> Vec<T> {
    if winograd::applies(geom) && all_finite(x) && all_finite(w) {
        winograd::forward(geom, x, w, b)
    } else if implicit::applies::<T>(geom) {
        implicit::forward(geom, x, w, b)
    } else {
        im2col::forward(geom, x, w, b)
    }
}

/// conv2d's backward pass for the gradients in `need` (dX, dW, db), on the
/// same rule as [`forward_pass`]: dX reads W and dY, dW reads X and dY, and
/// an operand that is not read may be empty.
fn backward_pass<T: Float>(
    geom: &Conv2dGeometry,
    x: &[T],
    w: &[T],
    dy: &[T],
    need: [bool; 3],
) -> im2col::Grads<T> {
    // The scan only where Winograd would otherwise run.
    let finite = || all_finite(dy) && (!need[0] || all_finite(w)) && (!need[1] || all_finite(x));
    if winograd::applies(geom) && finite() {
        winograd::backward(geom, x, w, dy, need)
    } else {
        // dX by phase as implicit products (which multiply the zeros around
        // dY by the weights: a NaN or ±∞ weight takes im2col, whose products
        // are the definition's); dW as implicit products (the same products
        // as im2col's); the rest on im2col's path.
        let dx_phased = need[0] && implicit::transposed_applies::<T>(geom) && all_finite(w);
        let dw_implicit = need[1] && implicit::weight_grad_applies::<T>(geom);
        let rest = [need[0] && !dx_phased, need[1] && !dw_implicit, need[2]];
        let mut grads = if rest.contains(&true) {
            im2col::backward(geom, x, w, dy, rest)
        } else {
            im2col::Grads {
                dx: None,
                dw: None,
                db: None,
            }
        };
        if dx_phased {
            grads.dx = Some(implicit::transposed(geom, dy, w, None));
        }
        if dw_implicit {
            grads.dw = Some(implicit::weight_grad(geom, x, dy));
        }
        grads
    }
}

/// The weight gradient of the convolution `geom` as an op: Wg(x, dy), the
/// correlation of the input `x` with the output gradient `dy` (shape of the
/// weight). Linear in each argument; its own gradients, for an upstream G of
/// the weight's shape, are ∂/∂x = conv_transpose(dy, G) and ∂/∂dy = conv2d(x, G).
pub(crate) fn conv2d_weight_grad<'t, T: Float>(
    x: Var<'t, T>,
    dy: Var<'t, T>,
    geom: Conv2dGeometry,
) -> Var<'t, T> {
    let (xv, dyv) = (x.value(), dy.value());
    let wshape = Shape::from(geom.weight_shape());
    let (x_, dy_) = (xv.data(), dyv.data());
    let g = im2col::backward(&geom, x_, &[], dy_, [false, true, false]);
    let w = Tensor::from_parts(g.dw.expect("the weight gradient was asked for"), wshape);
    let graph = crate::tape::graph_fn(move |ctx: &crate::GraphCtx<'_, '_, T>| {
        let (x, dy, gw) = (ctx.inputs[0], ctx.inputs[1], ctx.grad);
        let mut grads = crate::GraphGrads::new();
        grads.push(ctx.needs_grad[0].then(|| dy.conv_transpose2d_geom(gw, None, geom)));
        grads.push(ctx.needs_grad[1].then(|| x.conv2d_geom(gw, None, geom)));
        grads
    });
    x.tape().record_differentiable(
        "conv2d_weight_grad",
        w,
        &[x, dy],
        move |ctx| {
            let (x, dy, gw) = (ctx.inputs[0], ctx.inputs[1], ctx.grad.data());
            let dx = ctx.needs_grad[0].then(|| {
                let g = im2col::backward(&geom, &[], gw, dy.data(), [true, false, false]);
                Tensor::from_parts(g.dx.expect("asked for"), x.shape().clone())
            });
            let ddy = ctx.needs_grad[1].then(|| {
                let y = im2col::forward(&geom, x.data(), gw, None);
                Tensor::from_parts(y, dy.shape().clone())
            });
            smallvec![dx, ddy]
        },
        graph,
    )
}

#[cfg(test)]
mod tests {
    use super::all_finite;

    /// Every non-finite value is found wherever it sits: in the lanes, the
    /// tail of a chunk, a later chunk; and large finite values pass.
    #[test]
    fn all_finite_finds_every_non_finite_value() {
        for len in [0usize, 1, 15, 16, 17, 100, 4096, 4097, 9000] {
            let v: Vec<f32> = (0..len)
                .map(|i| if i % 2 == 0 { f32::MAX } else { -f32::MAX })
                .collect();
            assert!(all_finite(&v), "{len}");
            for at in [0, len / 2, len.saturating_sub(1)]
                .into_iter()
                .filter(|&a| a < len)
            {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut w = v.clone();
                    w[at] = bad;
                    assert!(!all_finite(&w), "{len} {at} {bad}");
                    let w: Vec<f64> = w.iter().map(|&x| x as f64).collect();
                    assert!(!all_finite(&w), "f64 {len} {at} {bad}");
                }
            }
        }
    }
}
