//! THE DEFINITION of `conv2d`, of `conv_transpose2d` and of their gradients:
//! naive loops, one output element (or one multiply-add) at a time, straight
//! from the formulas.
//!
//! ```text
//! forward    Y[n, o, i, j] = b[o] + Σ_{c, ki, kj} X[n, g·C/G + c, i·sh + ki·dh − ph, j·sw + kj·dw − pw] · W[o, c, ki, kj]
//! backward   for every output element (n, o, i, j), with δ = dY[n, o, i, j]:
//!              db[o]                  += δ
//!              dW[o, c, ki, kj]       += δ · X[n, g·C/G + c, r, s]        (the input patch)
//!              dX[n, g·C/G + c, r, s] += δ · W[o, c, ki, kj]
//!            over the taps (c, ki, kj), where (r, s) = (i·sh + ki·dh − ph, j·sw + kj·dw − pw);
//!            a tap in the padding reads X = 0 (so W · 0 and δ · 0 are still added)
//!            and its dX term goes nowhere.
//! ```
//!
//! Padding is zeros that *are multiplied*, as in PyTorch: a weight that is
//! NaN or ±∞ makes NaN every output whose window puts that tap over the
//! padding (∞ · 0 = NaN), and an upstream gradient that is NaN or ±∞ makes
//! NaN the dW entries of the taps its window puts over the padding. Input
//! pixels that no window reads (the last rows or columns, when the stride
//! does not divide evenly) take no part at all. Every fast path gives NaN and
//! ±∞ at the same positions as these loops.
//!
//! Here `g = o / (O/G)` is the group of output channel `o`. The op
//! [`Var::conv2d`](crate::Var::conv2d) runs a much faster im2col + GEMM
//! implementation; the tests check it against these loops (to rounding) and
//! these loops against PyTorch (to 1e-9). Indices come from [`Conv2dGeometry`],
//! the same as the fast path's.
//!
//! ```
//! use tapegrad::conv::reference;
//! use tapegrad::{Conv2dOptions, Tensor};
//! let x = Tensor::from_vec((1..=9).map(f64::from).collect(), [1, 1, 3, 3]).unwrap();
//! let w = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], [1, 1, 2, 2]).unwrap();
//! let y = reference::conv2d(&x, &w, None, Conv2dOptions::default());
//! assert_eq!(y.data(), &[37.0, 47.0, 67.0, 77.0]);
//! let g = reference::conv2d_backward(&x, &w, &Tensor::ones([1, 1, 2, 2]), Conv2dOptions::default());
//! assert_eq!(g.dw.data(), &[12.0, 16.0, 24.0, 28.0]);
//! assert_eq!(g.dx.data(), &[1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 3.0, 7.0, 4.0]);
//! assert_eq!(g.db.data(), &[4.0]);
//! ```

use super::{Conv2dGeometry, Conv2dOptions, ConvTranspose2dOptions};
use crate::shape::Shape;
use crate::{Float, Tensor};

/// Offset of `X[n, c, r, s]` (NCHW) or, with the weight's sizes, `W[o, c, ki, kj]` (OIHW).
#[inline(always)]
fn at(dims: [usize; 4], a: usize, b: usize, c: usize, d: usize) -> usize {
    ((a * dims[1] + b) * dims[2] + c) * dims[3] + d
}

/// Calls `f(n, o, i, j, y_offset)` for every output element, and inside it the
/// caller walks the taps with [`for_each_tap`].
fn for_each_output(geom: &Conv2dGeometry, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
    let ys = geom.output_shape();
    for n in 0..ys[0] {
        for o in 0..ys[1] {
            for i in 0..ys[2] {
                for j in 0..ys[3] {
                    f(n, o, i, j, at(ys, n, o, i, j));
                }
            }
        }
    }
}

/// Calls `f(x_offset, w_offset)` for every tap of output element `(n, o, i, j)`,
/// `x_offset` `None` when the tap reads the padding.
fn for_each_tap(
    geom: &Conv2dGeometry,
    n: usize,
    o: usize,
    i: usize,
    j: usize,
    mut f: impl FnMut(Option<usize>, usize),
) {
    let (xs, ws) = (geom.input_shape(), geom.weight_shape());
    let group = o / geom.out_per_group();
    for c in 0..geom.in_per_group() {
        for ki in 0..geom.h.kernel {
            for kj in 0..geom.w.kernel {
                let x = geom
                    .input_pixel(i, j, ki, kj)
                    .map(|(r, s)| at(xs, n, group * geom.in_per_group() + c, r, s));
                f(x, at(ws, o, c, ki, kj));
            }
        }
    }
}

/// The forward pass on plain row-major slices: writes `y` (`[N, O, out_h, out_w]`)
/// from `x` (NCHW), `w` (OIHW) and an optional bias. Panics if a slice length
/// does not match the geometry.
///
/// ```
/// use tapegrad::conv::{reference, Conv2dGeometry, Conv2dOptions};
/// let g = Conv2dGeometry::new(&[1, 1, 2, 2], &[1, 1, 1, 1], Some(&[1]), &Conv2dOptions::default());
/// let mut y = [0.0f32; 4];
/// reference::forward(&g, &[1.0, 2.0, 3.0, 4.0], &[2.0], Some(&[0.5]), &mut y);
/// assert_eq!(y, [2.5, 4.5, 6.5, 8.5]);
/// ```
pub fn forward<T: Float>(geom: &Conv2dGeometry, x: &[T], w: &[T], b: Option<&[T]>, y: &mut [T]) {
    check_len(geom, x, w, y);
    for_each_output(geom, |n, o, i, j, yo| {
        let mut acc = b.map_or(T::ZERO, |b| b[o]);
        // The padding reads 0, multiplied like any pixel.
        for_each_tap(geom, n, o, i, j, |xo, wo| {
            acc += xo.map_or(T::ZERO, |xo| x[xo]) * w[wo];
        });
        y[yo] = acc;
    });
}

/// The backward pass on plain row-major slices: given `dy` (`[N, O, out_h, out_w]`),
/// accumulates (`+=`) into `dx` (NCHW), `dw` (OIHW) and `db` (`[O]`, if given).
/// Zero them first for plain gradients.
///
/// ```
/// use tapegrad::conv::{reference, Conv2dGeometry, Conv2dOptions};
/// let g = Conv2dGeometry::new(&[1, 1, 2, 2], &[1, 1, 1, 1], None, &Conv2dOptions::default());
/// let (mut dx, mut dw, mut db) = ([0.0f64; 4], [0.0], [0.0]);
/// reference::backward(&g, &[1.0, 2.0, 3.0, 4.0], &[2.0], &[1.0; 4], &mut dx, &mut dw, Some(&mut db));
/// assert_eq!((dx, dw, db), ([2.0; 4], [10.0], [4.0]));
/// ```
pub fn backward<T: Float>(
    geom: &Conv2dGeometry,
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: &mut [T],
    dw: &mut [T],
    mut db: Option<&mut [T]>,
) {
    check_len(geom, x, w, dy);
    assert!(
        dx.len() == x.len() && dw.len() == w.len(),
        "conv2d reference: dx has {} elements for x's {}, dw {} for w's {}",
        dx.len(),
        x.len(),
        dw.len(),
        w.len()
    );
    for_each_output(geom, |n, o, i, j, yo| {
        let delta = dy[yo];
        if let Some(db) = db.as_deref_mut() {
            db[o] += delta;
        }
        for_each_tap(geom, n, o, i, j, |xo, wo| {
            dw[wo] += delta * xo.map_or(T::ZERO, |xo| x[xo]);
            if let Some(xo) = xo {
                dx[xo] += delta * w[wo];
            }
        });
    });
}

fn check_len<T>(geom: &Conv2dGeometry, x: &[T], w: &[T], y: &[T]) {
    let n = |s: [usize; 4]| s.iter().product::<usize>();
    assert!(
        x.len() == n(geom.input_shape())
            && w.len() == n(geom.weight_shape())
            && y.len() == n(geom.output_shape()),
        "conv2d reference: slices of {}, {} and {} elements do not match input {:?}, weight {:?}, output {:?}",
        x.len(),
        w.len(),
        y.len(),
        geom.input_shape(),
        geom.weight_shape(),
        geom.output_shape()
    );
}

/// The forward pass on tensors: `conv2d(x, w, b)` with the given options, as the
/// naive loops compute it. Panics like [`Var::conv2d`](crate::Var::conv2d) on bad shapes.
///
/// ```
/// use tapegrad::conv::reference;
/// use tapegrad::{Conv2dOptions, Tensor};
/// let x = Tensor::<f32>::ones([1, 2, 3, 3]);
/// let w = Tensor::<f32>::ones([1, 2, 3, 3]);
/// let y = reference::conv2d(&x, &w, None, Conv2dOptions::default().padding(1));
/// assert_eq!(y.get(&[0, 0, 1, 1]), 18.0); // the centre sees all 2·3·3 ones
/// assert_eq!(y.get(&[0, 0, 0, 0]), 8.0);  // a corner sees 2·2·2
/// ```
pub fn conv2d<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    b: Option<&Tensor<T>>,
    options: Conv2dOptions,
) -> Tensor<T> {
    let geom = Conv2dGeometry::new(x.shape(), w.shape(), b.map(|b| &b.shape()[..]), &options);
    let mut y = vec![T::ZERO; geom.output_shape().iter().product()];
    forward(&geom, x.data(), w.data(), b.map(|b| b.data()), &mut y);
    Tensor::from_parts(y, Shape::from(geom.output_shape()))
}

/// The gradients of a conv2d for an upstream gradient dY, from [`conv2d_backward`].
///
/// ```
/// use tapegrad::conv::reference;
/// use tapegrad::{Conv2dOptions, Tensor};
/// let g = reference::conv2d_backward(
///     &Tensor::<f64>::ones([1, 1, 2, 2]), &Tensor::ones([3, 1, 1, 1]),
///     &Tensor::ones([1, 3, 2, 2]), Conv2dOptions::default());
/// assert_eq!((g.dx.shape()[..].to_vec(), g.dw.shape()[..].to_vec(), g.db.shape()[..].to_vec()),
///            (vec![1, 1, 2, 2], vec![3, 1, 1, 1], vec![3]));
/// ```
#[derive(Clone, Debug)]
pub struct Conv2dGrads<T: Float> {
    /// ∂L/∂X, the input's shape.
    pub dx: Tensor<T>,
    /// ∂L/∂W, the weight's shape.
    pub dw: Tensor<T>,
    /// ∂L/∂b, `[O]` (meaningful when the conv has a bias).
    pub db: Tensor<T>,
}

/// The backward pass on tensors: dX, dW and db of `conv2d(x, w, ·)` for the
/// upstream gradient `dy`, as the naive loops compute them.
///
/// ```
/// use tapegrad::conv::reference;
/// use tapegrad::{Conv2dOptions, Tensor};
/// let x = Tensor::<f64>::arange(4).reshape([1, 1, 2, 2]);
/// let w = Tensor::<f64>::ones([1, 1, 1, 1]);
/// let g = reference::conv2d_backward(&x, &w, &Tensor::ones([1, 1, 1, 1]), Conv2dOptions::default().stride(2));
/// assert_eq!(g.dx.data(), &[1.0, 0.0, 0.0, 0.0]); // the stride skips three pixels
/// assert_eq!(g.dw.data(), &[0.0]);                // x[0, 0, 0, 0] = 0
/// ```
pub fn conv2d_backward<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    dy: &Tensor<T>,
    options: Conv2dOptions,
) -> Conv2dGrads<T> {
    let geom = Conv2dGeometry::new(x.shape(), w.shape(), None, &options);
    assert!(
        dy.shape()[..] == geom.output_shape(),
        "conv2d reference: dy {} does not match the output {:?} of input {} and weight {}",
        dy.shape(),
        geom.output_shape(),
        x.shape(),
        w.shape()
    );
    let mut dx = vec![T::ZERO; x.numel()];
    let mut dw = vec![T::ZERO; w.numel()];
    let mut db = vec![T::ZERO; geom.out_channels];
    backward(
        &geom,
        x.data(),
        w.data(),
        dy.data(),
        &mut dx,
        &mut dw,
        Some(&mut db),
    );
    Conv2dGrads {
        dx: Tensor::from_parts(dx, x.shape().clone()),
        dw: Tensor::from_parts(dw, w.shape().clone()),
        db: Tensor::from_parts(db, Shape::from([geom.out_channels])),
    }
}

/// Calls `f(x_offset, w_offset, y_offset)` for every product of a transposed
/// convolution: input pixel `(n, c, i, j)` times weight tap `(c, o, ki, kj)`,
/// landing at output pixel `(n, g·C_out/G + o, i·sh + ki·dh − ph, j·sw + kj·dw − pw)`,
/// `y_offset` `None` when that falls outside the output (cropped by the padding).
/// `geom` is the transposed convolution's [`Conv2dGeometry::transposed`]: the
/// input is its output, the output its input.
fn for_each_scatter(geom: &Conv2dGeometry, mut f: impl FnMut(usize, usize, Option<usize>)) {
    let (xs, ws, ys) = (geom.output_shape(), geom.weight_shape(), geom.input_shape());
    let (c_in, c_out_g) = (geom.out_channels, geom.in_per_group());
    let in_g = c_in / geom.groups;
    for n in 0..xs[0] {
        for c in 0..c_in {
            let g = c / in_g;
            for i in 0..xs[2] {
                for j in 0..xs[3] {
                    for o in 0..c_out_g {
                        for ki in 0..geom.h.kernel {
                            for kj in 0..geom.w.kernel {
                                let y = geom
                                    .input_pixel(i, j, ki, kj)
                                    .map(|(r, s)| at(ys, n, g * c_out_g + o, r, s));
                                f(at(xs, n, c, i, j), at(ws, c, o, ki, kj), y);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The definition of `conv_transpose2d` (the adjoint of `conv2d`): every input
/// pixel, times every kernel tap, is added into the output pixel it lands on;
/// products that land outside the output (in the padding, which crops it)
/// are dropped.
///
/// ```text
/// Y[n, g·C_out/G + o, i·sh + ki·dh − ph, j·sw + kj·dw − pw] += X[n, c, i, j] · W[c, o, ki, kj]
/// Y[n, q, ·, ·] += b[q]
/// ```
///
/// with input `[N, C_in, H, W]`, weight `[C_in, C_out/G, kh, kw]`, `g` the group of
/// input channel `c`, and the output size `(in − 1)·s − 2p + d·(k − 1) + output_padding + 1`
/// per axis. Panics like [`Var::conv_transpose2d`](crate::Var::conv_transpose2d) on bad shapes.
///
/// ```
/// use tapegrad::conv::reference;
/// use tapegrad::{ConvTranspose2dOptions, Tensor};
/// let x = Tensor::from_vec(vec![1.0, 2.0], [1, 1, 1, 2]).unwrap();
/// let w = Tensor::from_vec(vec![1.0, 10.0], [1, 1, 1, 2]).unwrap();
/// let y = reference::conv_transpose2d(&x, &w, None, ConvTranspose2dOptions::default());
/// assert_eq!(y.data(), &[1.0, 12.0, 20.0]); // [1, 10] + [0, 2, 20]
/// ```
pub fn conv_transpose2d<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    b: Option<&Tensor<T>>,
    options: ConvTranspose2dOptions,
) -> Tensor<T> {
    let geom =
        Conv2dGeometry::transposed(x.shape(), w.shape(), b.map(|b| &b.shape()[..]), &options);
    let ys = geom.input_shape();
    let mut y = vec![T::ZERO; ys.iter().product()];
    let (xd, wd) = (x.data(), w.data());
    for_each_scatter(&geom, |xo, wo, yo| {
        if let Some(yo) = yo {
            y[yo] += xd[xo] * wd[wo];
        }
    });
    if let Some(b) = b {
        let plane = ys[2] * ys[3];
        for (e, v) in y.iter_mut().enumerate() {
            *v += b.data()[(e / plane) % ys[1]];
        }
    }
    Tensor::from_parts(y, Shape::from(ys))
}

/// The definition of the gradients of `conv_transpose2d` for an upstream
/// gradient `dy` (the output's shape): for every product of the forward pass,
/// with δ = dY at the output pixel it lands on (0 when that is outside the
/// output: the cropped border reads 0, and that 0 *is* multiplied, as in
/// conv2d's padding and in PyTorch):
///
/// ```text
/// dX[n, c, i, j]   += δ · W[c, o, ki, kj]
/// dW[c, o, ki, kj] += δ · X[n, c, i, j]
/// db[q]            = Σ_{n, h, w} dY[n, q, h, w]
/// ```
///
/// ```
/// use tapegrad::conv::reference;
/// use tapegrad::{ConvTranspose2dOptions, Tensor};
/// let x = Tensor::from_vec(vec![1.0, 2.0], [1, 1, 1, 2]).unwrap();
/// let w = Tensor::from_vec(vec![1.0, 10.0], [1, 1, 1, 2]).unwrap();
/// let dy = Tensor::from_vec(vec![1.0, 0.0, 3.0], [1, 1, 1, 3]).unwrap();
/// let g = reference::conv_transpose2d_backward(&x, &w, &dy, ConvTranspose2dOptions::default());
/// assert_eq!(g.dx.data(), &[1.0, 30.0]); // dy[0]·1 + dy[1]·10, dy[1]·1 + dy[2]·10
/// assert_eq!(g.dw.data(), &[1.0, 6.0]);  // x·dy[0..2], x·dy[1..3]
/// assert_eq!(g.db.data(), &[4.0]);
/// ```
pub fn conv_transpose2d_backward<T: Float>(
    x: &Tensor<T>,
    w: &Tensor<T>,
    dy: &Tensor<T>,
    options: ConvTranspose2dOptions,
) -> Conv2dGrads<T> {
    let geom = Conv2dGeometry::transposed(x.shape(), w.shape(), None, &options);
    let ys = geom.input_shape();
    assert!(
        dy.shape()[..] == ys,
        "conv_transpose2d reference: dy {} does not match the output {ys:?} of input {} and weight {}",
        dy.shape(),
        x.shape(),
        w.shape()
    );
    let (xd, wd, dyd) = (x.data(), w.data(), dy.data());
    let mut dx = vec![T::ZERO; x.numel()];
    let mut dw = vec![T::ZERO; w.numel()];
    for_each_scatter(&geom, |xo, wo, yo| {
        let delta = yo.map_or(T::ZERO, |yo| dyd[yo]);
        dx[xo] += delta * wd[wo];
        dw[wo] += delta * xd[xo];
    });
    let mut db = vec![T::ZERO; ys[1]];
    let plane = ys[2] * ys[3];
    for (e, &v) in dyd.iter().enumerate() {
        db[(e / plane) % ys[1]] += v;
    }
    Conv2dGrads {
        dx: Tensor::from_parts(dx, x.shape().clone()),
        dw: Tensor::from_parts(dw, w.shape().clone()),
        db: Tensor::from_parts(db, Shape::from([ys[1]])),
    }
}
