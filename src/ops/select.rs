//! Elementwise choices between two tensors, with numpy broadcasting:
//! [`Var::maximum`], [`Var::minimum`] and [`Var::select`] (PyTorch's
//! `torch.where`) with its boolean [`Mask`].

use crate::shape::Shape;
use crate::tape::{GraphCtx, GraphGrads, graph_fn, two};
use crate::{Error, Float, Result, Tensor, Var};

/// A boolean tensor: the condition of [`Var::select`]. Contiguous,
/// row-major, like [`Tensor`].
///
/// ```
/// use tapegrad::{Mask, Tensor};
/// let x = Tensor::from_vec(vec![-1.0f32, 2.0, 0.0], [3]).unwrap();
/// let m = Mask::from_fn(&x, |v| v > 0.0);
/// assert_eq!(m.data(), &[false, true, false]);
/// assert_eq!(m, Mask::new(vec![false, true, false], [3]).unwrap());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    data: Vec<bool>,
    shape: Shape,
}

impl Mask {
    /// Wraps `data` (row-major) in a mask of `shape`; errors if the lengths differ.
    ///
    /// ```
    /// use tapegrad::Mask;
    /// assert!(Mask::new(vec![true; 6], [2, 3]).is_ok());
    /// assert_eq!(
    ///     Mask::new(vec![true; 5], [2, 3]).unwrap_err().to_string(),
    ///     "Mask::new: 5 values do not fill shape [2, 3] (6 elements)"
    /// );
    /// ```
    pub fn new(data: Vec<bool>, shape: impl Into<Shape>) -> Result<Mask> {
        let shape = shape.into();
        let Some(n) = shape.try_numel() else {
            return Err(Error::Shape {
                op: "Mask::new",
                message: format!("shape {shape} has more elements than usize can count"),
            });
        };
        if data.len() != n {
            return Err(Error::Shape {
                op: "Mask::new",
                message: format!(
                    "{} values do not fill shape {shape} ({n} elements)",
                    data.len()
                ),
            });
        }
        Ok(Mask { data, shape })
    }

    /// The mask `f(v)` for every element `v` of `t`, with `t`'s shape.
    ///
    /// ```
    /// let t = tapegrad::Tensor::<f64>::arange(4);
    /// assert_eq!(tapegrad::Mask::from_fn(&t, |v| v >= 2.0).data(), &[false, false, true, true]);
    /// ```
    pub fn from_fn<T: Float>(t: &Tensor<T>, f: impl Fn(T) -> bool) -> Mask {
        Mask {
            data: t.data().iter().map(|&v| f(v)).collect(),
            shape: t.shape().clone(),
        }
    }

    /// The mask's shape.
    ///
    /// ```
    /// let m = tapegrad::Mask::new(vec![true; 6], [2, 3]).unwrap();
    /// assert_eq!(&m.shape()[..], &[2, 3]);
    /// ```
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The values, row-major.
    ///
    /// ```
    /// let m = tapegrad::Mask::new(vec![true, false], [2]).unwrap();
    /// assert_eq!(m.data(), &[true, false]);
    /// ```
    pub fn data(&self) -> &[bool] {
        &self.data
    }
}

/// How much of the output gradient goes to `a` in `max(a, b)` (1, 0, or ½ at
/// a tie) — PyTorch's rule, under which a NaN operand passes the gradient to both.
#[inline]
fn max_share<T: Float>(a: T, b: T) -> T {
    if a == b {
        T::from_f64(0.5)
    } else if a < b {
        T::ZERO
    } else {
        T::ONE
    }
}

/// `g · share`, exactly 0 where the share is 0 (even for an infinite `g`).
#[inline]
fn scaled<T: Float>(g: T, share: T) -> T {
    if share == T::ZERO { T::ZERO } else { g * share }
}

/// max(a, b), NaN if either is NaN (as `torch.maximum`).
#[inline]
fn nan_max<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        a + b
    } else if a > b {
        a
    } else {
        b
    }
}

/// min(a, b), NaN if either is NaN (as `torch.minimum`).
#[inline]
fn nan_min<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        a + b
    } else if a < b {
        a
    } else {
        b
    }
}

/// ∂min(a, b)/∂a: 1 if a < b, ½ at a tie, 0 if a > b.
#[inline]
fn min_share<T: Float>(a: T, b: T) -> T {
    max_share(b, a)
}

impl<'t, T: Float> Var<'t, T> {
    /// Records `f(a, b)` with broadcasting, the gradient of each operand
    /// being the output gradient times its share, `share(a, b)` for `a` and
    /// `share(b, a)` for `b`.
    fn choose(
        self,
        other: Var<'t, T>,
        op: &'static str,
        f: fn(T, T) -> T,
        share: fn(T, T) -> T,
    ) -> Var<'t, T> {
        let y = self.value().broadcast_zip(&other.value(), op, f);
        // As a graph: the output gradient times each operand's share, a
        // piecewise-constant factor (a constant node).
        let graph = graph_fn(move |ctx: &GraphCtx<'_, '_, T>| {
            let (a, b, g) = (ctx.inputs[0], ctx.inputs[1], ctx.grad);
            let (av, bv) = (a.value(), b.value());
            let tape = a.tape();
            let share_of =
                |x: &Tensor<T>, o: &Tensor<T>| tape.constant(x.broadcast_zip(o, op, share));
            let mut v = GraphGrads::new();
            v.push(ctx.needs_grad[0].then(|| (g * share_of(&av, &bv)).sum_to(a.shape())));
            v.push(ctx.needs_grad[1].then(|| (g * share_of(&bv, &av)).sum_to(b.shape())));
            v
        });
        self.tape.record_differentiable(
            op,
            y,
            &[self, other],
            move |ctx| {
                let (a, b, g) = (ctx.inputs[0], ctx.inputs[1], ctx.grad);
                // Broadcasting is symmetric: both shares have the output's shape.
                let grad = |x: &Tensor<T>, o: &Tensor<T>| {
                    let s = x.broadcast_zip(o, op, share);
                    g.zip_map(&s, op, scaled).sum_to(x.shape())
                };
                two(
                    ctx.needs_grad[0].then(|| grad(a, b)),
                    ctx.needs_grad[1].then(|| grad(b, a)),
                )
            },
            graph,
        )
    }

    /// Elementwise maximum, broadcasting; NaN if either operand is NaN.
    /// The gradient goes to the larger operand and is split in half at a tie
    /// (PyTorch's rule for `torch.maximum`): ∂/∂a = 1 if a > b, ½ if a = b,
    /// 0 if a < b, and ∂/∂b likewise. Where an operand is NaN both get the
    /// whole gradient, as in PyTorch.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let a = tape.leaf(Tensor::from_vec(vec![1.0, 2.0, 3.0], [3]).unwrap());
    /// let b = tape.leaf(Tensor::full([1], 2.0));
    /// let y = a.maximum(b);
    /// assert_eq!(y.value().data(), &[2.0, 2.0, 3.0]);
    /// let g = y.sum().backward();
    /// assert_eq!(g[a].data(), &[0.0, 0.5, 1.0]);
    /// assert_eq!(g[b].data(), &[1.5]);
    /// ```
    #[track_caller]
    pub fn maximum(self, other: Var<'t, T>) -> Var<'t, T> {
        self.choose(other, "maximum", nan_max, max_share)
    }

    /// Elementwise minimum, broadcasting; NaN if either operand is NaN.
    /// ∂/∂a = 1 if a < b, ½ if a = b, 0 if a > b (PyTorch's rule for
    /// `torch.minimum`), and ∂/∂b likewise.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let a = tape.leaf(Tensor::from_vec(vec![1.0, 2.0, 3.0], [3]).unwrap());
    /// let b = tape.leaf(Tensor::full([1], 2.0));
    /// let y = a.minimum(b);
    /// assert_eq!(y.value().data(), &[1.0, 2.0, 2.0]);
    /// let g = y.sum().backward();
    /// assert_eq!(g[a].data(), &[1.0, 0.5, 0.0]);
    /// assert_eq!(g[b].data(), &[1.5]);
    /// ```
    #[track_caller]
    pub fn minimum(self, other: Var<'t, T>) -> Var<'t, T> {
        self.choose(other, "minimum", nan_min, min_share)
    }

    /// `torch.where(mask, a, b)`: `a` where the mask is true, `b` where it is
    /// false; the mask, `a` and `b` broadcast together. ∂/∂a = the output
    /// gradient where the mask is true (0 elsewhere), ∂/∂b where it is false,
    /// each summed back to its operand's shape.
    ///
    /// Panics naming the three shapes if they do not broadcast together.
    ///
    /// ```
    /// use tapegrad::{Mask, Tape, Tensor, Var};
    /// let tape = Tape::<f64>::new();
    /// let a = tape.leaf(Tensor::from_vec(vec![1.0, 2.0, 3.0], [3]).unwrap());
    /// let b = tape.leaf(Tensor::scalar(0.0));
    /// let mask = Mask::from_fn(&a.value(), |v| v >= 2.0);
    /// let y = Var::select(&mask, a, b);
    /// assert_eq!(y.value().data(), &[0.0, 2.0, 3.0]);
    /// let g = y.sum().backward();
    /// assert_eq!(g[a].data(), &[0.0, 1.0, 1.0]);
    /// assert_eq!(g[b].item(), 1.0);
    /// ```
    #[track_caller]
    pub fn select(mask: &Mask, a: Var<'t, T>, b: Var<'t, T>) -> Var<'t, T> {
        let (av, bv) = (a.value(), b.value());
        let out = Shape::broadcast(&mask.shape, av.shape())
            .and_then(|s| Shape::broadcast(&s, bv.shape()))
            .unwrap_or_else(|| {
                panic!(
                    "select: mask {}, a {} and b {} cannot be broadcast together",
                    mask.shape,
                    av.shape(),
                    bv.shape()
                )
            });
        let m = Tensor::collect(
            mask.shape.clone(),
            mask.data.iter().map(|&t| if t { T::ONE } else { T::ZERO }),
        )
        .broadcast_to(out.clone());
        let (ab, bb) = (av.broadcast_to(out.clone()), bv.broadcast_to(out.clone()));
        let picked = m.data().iter().zip(ab.data().iter().zip(bb.data()));
        let y = Tensor::collect(
            out,
            picked.map(|(&m, (&a, &b))| if m == T::ZERO { b } else { a }),
        );
        let m2 = m.clone();
        let graph = graph_fn(move |ctx: &GraphCtx<'_, '_, T>| {
            let (a, b, g) = (ctx.inputs[0], ctx.inputs[1], ctx.grad);
            let keep = a.tape().constant(m2.clone());
            let mut v = GraphGrads::new();
            v.push(ctx.needs_grad[0].then(|| (g * keep).sum_to(a.shape())));
            v.push(ctx.needs_grad[1].then(|| (g * keep.rsub_scalar(T::ONE)).sum_to(b.shape())));
            v
        });
        a.tape.record_differentiable(
            "select",
            y,
            &[a, b],
            move |ctx| {
                let pick = |keep: bool| {
                    ctx.grad.zip_map(&m, "select", |g, m| {
                        if (m != T::ZERO) == keep { g } else { T::ZERO }
                    })
                };
                two(
                    ctx.needs_grad[0].then(|| pick(true).sum_to(ctx.inputs[0].shape())),
                    ctx.needs_grad[1].then(|| pick(false).sum_to(ctx.inputs[1].shape())),
                )
            },
            graph,
        )
    }
}
