//! Transposed convolution, [`Var::conv_transpose2d`]: the adjoint of `conv2d`.
//!
//! A transposed convolution scatters every input pixel, weighted by the
//! kernel, into the output (PyTorch's layouts: input `[N, C_in, H, W]`,
//! weight `[C_in, C_out/groups, kh, kw]`, bias `[C_out]`):
//!
//! ```text
//! Y[n, g·C_out/G + o, i·sh + ki·dh − ph, j·sw + kj·dw − pw] += X[n, c, i, j] · W[c, o, ki, kj]
//! ```
//!
//! for every input channel `c` (of group `g = c / (C_in/G)`), `o < C_out/G`,
//! and every tap whose position falls inside the output (the padding crops
//! the output; output_padding adds rows and columns at its bottom and right).
//! That is exactly the input gradient of the `conv2d` that maps the output's
//! shape back to the input's, with the same weight read as OIHW
//! (`[O = C_in, C/groups = C_out/groups, kh, kw]`): [`Conv2dGeometry::transposed`]
//! builds that conv's geometry, and the op runs conv2d's own passes on it:
//!
//! - forward: conv2d's dX with dY := X (by output phase as implicit
//!   products where they run, `f32` with AVX-512 or AVX2 — each phase of the
//!   output a stride-1 correlation of the zero-padded X with that phase's
//!   taps, bias included; else GEMM `Wᵀ · X`, then col2im);
//! - dX: conv2d's forward of dY (im2col, then GEMM `W · cols`);
//! - dW: conv2d's dW with the roles of its input and output gradient taken by
//!   dY and X;
//! - db: `Σ_{n, h, w} dY`.
//!
//! On the im2col path dX and dW come from one pass that builds each column
//! block of dY once for both products (`im2col::forward_and_weight_grad`);
//! where conv2d's implicit forward and implicit weight gradient both apply,
//! those two run instead (neither builds columns).
//!
//! So Winograd (3×3, stride 1), the implicit products and im2col + GEMM,
//! their threads and packed weights serve both ops, and non-finite values
//! land where conv2d's definition puts them: the forward's products that
//! fall outside the output are dropped (the phases multiply the zeros around
//! X, so a weight that is not finite takes im2col), while in the gradients the cropped border reads 0, a 0
//! that is multiplied (an infinite weight tap over it gives NaN in dX, an
//! infinite input pixel gives NaN in dW), as in PyTorch.
//! [`reference::conv_transpose2d`](super::reference::conv_transpose2d) holds
//! the definition as direct loops.

use super::{Conv2dGeometry, Pair, backward_pass, forward_pass, im2col, winograd};
use crate::shape::Shape;
use crate::{Float, Tensor, Var};
use smallvec::smallvec;

/// The options of [`Var::conv_transpose2d`]: stride, padding, output padding
/// and dilation per axis, and the number of groups. The default is
/// PyTorch's: stride 1, padding 0, output_padding 0, dilation 1, groups 1.
/// Set fields directly or with the builder methods.
///
/// `padding` crops that many rows and columns from each side of the full
/// output (it is the padding of the conv2d this op is the adjoint of), and
/// `output_padding` adds rows and columns at the bottom and right: it picks
/// one of the input sizes that a strided conv maps to the same output size.
/// It must be smaller than the stride or the dilation on each axis.
///
/// ```
/// use tapegrad::{ConvTranspose2dOptions, Pair};
/// let o = ConvTranspose2dOptions::default().stride(2).padding(1).output_padding((1, 0));
/// assert_eq!(o.stride, Pair::new(2, 2));
/// assert_eq!(o.output_padding, Pair::new(1, 0));
/// assert_eq!((o.dilation, o.groups), (Pair::new(1, 1), 1));
/// let same = ConvTranspose2dOptions {
///     stride: 2.into(),
///     padding: 1.into(),
///     output_padding: (1, 0).into(),
///     ..Default::default()
/// };
/// assert_eq!(o, same);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvTranspose2dOptions {
    /// Step between the positions where consecutive input pixels land (≥ 1).
    pub stride: Pair,
    /// Rows and columns cropped from each side of the full output.
    pub padding: Pair,
    /// Rows and columns added at the bottom and right of the output (smaller
    /// than the stride or the dilation).
    pub output_padding: Pair,
    /// Step between kernel taps (≥ 1; 1 = dense kernel).
    pub dilation: Pair,
    /// Number of groups: input and output channels are split into this many
    /// groups, each transposed-convolved separately.
    pub groups: usize,
}

impl Default for ConvTranspose2dOptions {
    fn default() -> Self {
        ConvTranspose2dOptions {
            stride: Pair::square(1),
            padding: Pair::square(0),
            output_padding: Pair::square(0),
            dilation: Pair::square(1),
            groups: 1,
        }
    }
}

impl ConvTranspose2dOptions {
    /// The defaults: stride 1, padding 0, output_padding 0, dilation 1, groups 1.
    ///
    /// ```
    /// use tapegrad::ConvTranspose2dOptions;
    /// assert_eq!(ConvTranspose2dOptions::new(), ConvTranspose2dOptions::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the stride (one number or `(h, w)`).
    ///
    /// ```
    /// let o = tapegrad::ConvTranspose2dOptions::default().stride((2, 1));
    /// assert_eq!((o.stride.h, o.stride.w), (2, 1));
    /// ```
    pub fn stride(mut self, stride: impl Into<Pair>) -> Self {
        self.stride = stride.into();
        self
    }

    /// Sets the padding cropped from each side (one number or `(h, w)`).
    ///
    /// ```
    /// let o = tapegrad::ConvTranspose2dOptions::default().padding(1);
    /// assert_eq!(o.padding, tapegrad::Pair::new(1, 1));
    /// ```
    pub fn padding(mut self, padding: impl Into<Pair>) -> Self {
        self.padding = padding.into();
        self
    }

    /// Sets the output padding added at the bottom and right (one number or `(h, w)`).
    ///
    /// ```
    /// let o = tapegrad::ConvTranspose2dOptions::default().stride(2).output_padding(1);
    /// assert_eq!(o.output_padding, tapegrad::Pair::new(1, 1));
    /// ```
    pub fn output_padding(mut self, output_padding: impl Into<Pair>) -> Self {
        self.output_padding = output_padding.into();
        self
    }

    /// Sets the dilation (one number or `(h, w)`).
    ///
    /// ```
    /// let o = tapegrad::ConvTranspose2dOptions::default().dilation((2, 1));
    /// assert_eq!(o.dilation, tapegrad::Pair::new(2, 1));
    /// ```
    pub fn dilation(mut self, dilation: impl Into<Pair>) -> Self {
        self.dilation = dilation.into();
        self
    }

    /// Sets the number of groups.
    ///
    /// ```
    /// assert_eq!(tapegrad::ConvTranspose2dOptions::default().groups(4).groups, 4);
    /// ```
    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }
}

/// Adds `b[c]` to every element of each `plane`-long channel plane of `y`
/// (`[N, C, …]`), split between threads when large.
fn add_bias<T: Float>(y: &mut [T], b: &[T], plane: usize) {
    let channels = b.len();
    if plane == 0 || channels == 0 {
        return;
    }
    let per_sample = channels * plane;
    crate::threads::for_each_part(y, 1 << 16, |off, part| {
        // Parts may start inside a plane: walk by position.
        let mut at = off;
        let mut rest = part;
        while !rest.is_empty() {
            let c = (at % per_sample) / plane;
            let left = plane - at % plane;
            let (head, tail) = rest.split_at_mut(left.min(rest.len()));
            let bias = b[c];
            head.iter_mut().for_each(|v| *v += bias);
            at += head.len();
            rest = tail;
        }
    });
}

/// `db[c] = Σ_{n, h, w} dY[n, c, h, w]` for a `[N, C, …]` gradient with
/// `plane` elements per channel.
fn channel_sums<T: Float>(dy: &[T], channels: usize, plane: usize) -> Vec<T> {
    let mut db = vec![T::ZERO; channels];
    if plane == 0 {
        return db;
    }
    for sample in dy.chunks_exact(channels * plane) {
        for (d, p) in db.iter_mut().zip(sample.chunks_exact(plane)) {
            *d += im2col::sum(p);
        }
    }
    db
}

impl<'t, T: Float> Var<'t, T> {
    /// 2-D transposed convolution (the adjoint of [`conv2d`](Var::conv2d),
    /// sometimes called "deconvolution") of an NCHW input with a weight
    /// `[C_in, C_out/groups, kh, kw]` (PyTorch's layout), plus an optional
    /// bias `[C_out]`; see the [module docs](crate::conv) for the formula.
    ///
    /// The output is `[N, C_out, out_h, out_w]` with, per axis,
    /// `out = (in − 1)·stride − 2·padding + dilation·(k − 1) + output_padding + 1`
    /// — the input size of a conv2d with these options that gives `in`.
    /// It is computed as conv2d's input gradient, and its gradients are
    /// conv2d's forward (dX) and weight gradient (dW, with the input and the
    /// output gradient trading places), so it runs conv2d's fast paths
    /// (Winograd for 3×3 stride-1 kernels with at least 16 channels per group;
    /// the forward by output phase as implicit products for `f32` with
    /// AVX-512 or AVX2; else
    /// im2col + GEMM), split between threads the same way; the
    /// input gradient is skipped when the input needs none. Results agree with
    /// [`reference::conv_transpose2d`](super::reference::conv_transpose2d) to
    /// rounding, NaN and ±∞ included.
    ///
    /// Panics, naming `conv_transpose2d` and the shapes or values, if the
    /// shapes do not fit together, `output_padding` is not smaller than the
    /// stride or the dilation, or a size overflows (see
    /// [`Conv2dGeometry::try_transposed`]).
    ///
    /// ```
    /// use tapegrad::{ConvTranspose2dOptions, Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], [1, 1, 2, 2]).unwrap());
    /// let w = tape.leaf(Tensor::ones([1, 1, 2, 2]));
    /// // Stride 2: each pixel becomes a 2x2 block.
    /// let y = x.conv_transpose2d(w, None, ConvTranspose2dOptions::default().stride(2));
    /// assert_eq!(&y.shape()[..], &[1, 1, 4, 4]);
    /// assert_eq!(y.value().data(), &[1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0,
    ///                                3.0, 3.0, 4.0, 4.0, 3.0, 3.0, 4.0, 4.0]);
    /// let g = y.sum().backward();
    /// assert_eq!(g[x].data(), &[4.0; 4]); // each pixel feeds 4 outputs
    /// assert_eq!(g[w].data(), &[10.0; 4]); // each tap sees every pixel once
    /// // Stride 1: the blocks overlap and add up.
    /// let z = x.conv_transpose2d(w, None, ConvTranspose2dOptions::default());
    /// assert_eq!(z.value().data(), &[1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 3.0, 7.0, 4.0]);
    /// ```
    #[track_caller]
    pub fn conv_transpose2d(
        self,
        weight: Var<'t, T>,
        bias: Option<Var<'t, T>>,
        options: ConvTranspose2dOptions,
    ) -> Var<'t, T> {
        let (xv, wv) = (self.value(), weight.value());
        let bv = bias.map(|b| b.value());
        let geom = Conv2dGeometry::transposed(
            xv.shape(),
            wv.shape(),
            bv.as_ref().map(|b| &b.shape()[..]),
            &options,
        );
        self.conv_transpose2d_geom(weight, bias, geom)
    }

    /// The adjoint in x of the convolution `geom` (`conv_transpose2d` with
    /// its geometry built): `self` has the convolution's output shape and the
    /// result its input shape. See [`Var::conv2d`] for the family's graph backward.
    pub(crate) fn conv_transpose2d_geom(
        self,
        weight: Var<'t, T>,
        bias: Option<Var<'t, T>>,
        geom: Conv2dGeometry,
    ) -> Var<'t, T> {
        let (xv, wv) = (self.value(), weight.value());
        let bv = bias.map(|b| b.value());
        let (x_, w_) = (xv.data(), wv.data());
        // conv2d's dX with dY := X; its input (our output) is not read.
        let by_phase = !winograd::applies(&geom)
            && super::implicit::transposed_applies::<T>(&geom)
            && super::all_finite(w_);
        let y = if by_phase {
            // By phase, the bias starting the sums (a NaN or ±∞ weight takes
            // the other path: the phases multiply the zeros around X by it).
            super::implicit::transposed(&geom, x_, w_, bv.as_ref().map(|b| b.data()))
        } else {
            let wanted = [true, false, false];
            let grads = backward_pass(&geom, &[], w_, x_, wanted);
            let mut y = grads.dx.expect("the input gradient was asked for");
            if let Some(b) = &bv {
                add_bias(&mut y, b.data(), geom.in_hw());
            }
            y
        };
        let y = Tensor::from_parts(y, Shape::from(geom.input_shape()));
        let mut parents = smallvec::SmallVec::<[Var<'t, T>; 3]>::new();
        parents.extend([self, weight]);
        parents.extend(bias);
        let graph = crate::tape::graph_fn(move |ctx: &crate::GraphCtx<'_, '_, T>| {
            let (x, w, g) = (ctx.inputs[0], ctx.inputs[1], ctx.grad);
            let mut grads = crate::GraphGrads::new();
            grads.push(ctx.needs_grad[0].then(|| g.conv2d_geom(w, None, geom)));
            grads.push(ctx.needs_grad[1].then(|| super::conv2d_weight_grad(g, x, geom)));
            if ctx.inputs.len() == 3 {
                grads.push(ctx.needs_grad[2].then(|| g.sum_axes(&[0, 2, 3], false)));
            }
            grads
        });
        self.tape.record_differentiable(
            "conv_transpose2d",
            y,
            &parents,
            move |ctx| {
                let (x, w) = (ctx.inputs[0], ctx.inputs[1]);
                let (x_, w_, dy) = (x.data(), w.data(), ctx.grad.data());
                // Both on im2col's path unless Winograd or both implicit
                // products take them.
                let implicit = super::implicit::applies::<T>(&geom)
                    && super::implicit::weight_grad_applies::<T>(&geom);
                let shared = !winograd::applies(&geom) && !implicit;
                let (dx, dw) = if ctx.needs_grad[0] && ctx.needs_grad[1] && shared {
                    // One pass builds the columns of dY once for both products.
                    let (d, dwv) = im2col::forward_and_weight_grad(&geom, dy, w_, None, Some(x_));
                    let dwv = dwv.expect("the weight gradient was asked for");
                    let dx = Tensor::from_parts(d, x.shape().clone());
                    (Some(dx), Some(Tensor::from_parts(dwv, w.shape().clone())))
                } else {
                    // dX = conv2d(dY, W).
                    let dx = ctx.needs_grad[0].then(|| {
                        let d = forward_pass(&geom, dy, w_, None);
                        Tensor::from_parts(d, x.shape().clone())
                    });
                    // dW: conv2d's weight gradient with input dY and output gradient X.
                    let dw = ctx.needs_grad[1].then(|| {
                        let wanted = [false, true, false];
                        let g = backward_pass(&geom, dy, w_, x_, wanted);
                        let d = g.dw.expect("the weight gradient was asked for");
                        Tensor::from_parts(d, w.shape().clone())
                    });
                    (dx, dw)
                };
                let mut grads = smallvec![dx, dw];
                if ctx.inputs.len() == 3 {
                    let db = ctx.needs_grad[2].then(|| {
                        let d = channel_sums(dy, geom.in_channels, geom.in_hw());
                        Tensor::from_parts(d, Shape::from([geom.in_channels]))
                    });
                    grads.push(db);
                }
                grads
            },
            graph,
        )
    }
}
