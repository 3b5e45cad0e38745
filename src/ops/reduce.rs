//! Reductions: sum and mean (all elements or given axes), max over an axis.

use crate::shape::Shape;
use crate::tape::{GraphGrads, one};
use crate::{Float, Tensor, Var};
use smallvec::SmallVec;

/// The shape after reducing `axes` (kept as size 1), and the shape with them removed.
fn reduced_shapes(shape: &Shape, axes: &[isize], op: &str) -> (Shape, Shape) {
    let mut keep = shape.clone();
    let mut hit: SmallVec<[bool; 4]> = SmallVec::from_elem(false, shape.rank());
    for &a in axes {
        let a = shape.axis(a, op);
        assert!(!hit[a], "{op}: axis {a} given twice for shape {shape}");
        hit[a] = true;
        keep.0[a] = 1;
    }
    let dropped = Shape(
        (0..shape.rank())
            .filter(|&i| !hit[i])
            .map(|i| shape[i])
            .collect(),
    );
    (keep, dropped)
}

/// Splits `shape` around `axis` into (outer, n, inner) extents.
pub(crate) fn split_at_axis(shape: &Shape, axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

impl<'t, T: Float> Var<'t, T> {
    /// Sum of all elements, as a scalar (rank 0). ∂/∂xᵢ = 1.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::ones([2, 3]));
    /// let s = x.sum();
    /// assert_eq!(s.value().item(), 6.0);
    /// assert_eq!(s.backward()[x].data(), &[1.0; 6]);
    /// ```
    #[track_caller]
    pub fn sum(self) -> Var<'t, T> {
        let y = Tensor::scalar(self.value().sum_all());
        self.tape.record_differentiable(
            "sum",
            y,
            &[self],
            |ctx| one(Tensor::full(ctx.inputs[0].shape().clone(), ctx.grad.item())),
            |ctx| graph_one(ctx.grad.broadcast_to(ctx.inputs[0].shape())),
        )
    }

    /// Sums over the axes that broadcasting would stretch to reach this
    /// node's shape from `shape`: the reduction whose adjoint is
    /// [`broadcast_to`](Var::broadcast_to) (the gradient of a broadcast
    /// operand). ∂/∂x = the output gradient broadcast back to x's shape.
    /// Panics if `shape` does not broadcast to this node's shape.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::ones([2, 3]));
    /// assert_eq!(x.sum_to([1, 3]).value().data(), &[2.0; 3]);
    /// assert_eq!(x.sum_to([3]).sum().backward()[x].data(), &[1.0; 6]);
    /// ```
    #[track_caller]
    pub fn sum_to(self, shape: impl Into<Shape>) -> Var<'t, T> {
        let shape = shape.into();
        let x = self.value();
        if *x.shape() == shape {
            return self;
        }
        let y = x.sum_to(shape);
        self.tape.record_differentiable(
            "sum_to",
            y,
            &[self],
            |ctx| one(ctx.grad.broadcast_to(ctx.inputs[0].shape())),
            |ctx| graph_one(ctx.grad.broadcast_to(ctx.inputs[0].shape())),
        )
    }

    /// Broadcasts this node to `shape` (numpy rules), copying. ∂/∂x = the
    /// output gradient summed over the stretched axes
    /// ([`sum_to`](Var::sum_to), its adjoint).
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::ones([3]));
    /// let y = x.broadcast_to([2, 3]);
    /// assert_eq!(y.sum().backward()[x].data(), &[2.0; 3]);
    /// ```
    #[track_caller]
    pub fn broadcast_to(self, shape: impl Into<Shape>) -> Var<'t, T> {
        let shape = shape.into();
        let x = self.value();
        if *x.shape() == shape {
            return self;
        }
        let y = x.broadcast_to(shape);
        self.tape.record_differentiable(
            "broadcast_to",
            y,
            &[self],
            |ctx| one(ctx.grad.sum_to(ctx.inputs[0].shape())),
            |ctx| graph_one(ctx.grad.sum_to(ctx.inputs[0].shape())),
        )
    }

    /// Mean of all elements, as a scalar. ∂/∂xᵢ = 1/n.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::ones([4]));
    /// assert_eq!(x.mean().backward()[x].data(), &[0.25; 4]);
    /// ```
    #[track_caller]
    pub fn mean(self) -> Var<'t, T> {
        let v = self.value();
        let n = T::from_usize(v.numel());
        let y = Tensor::scalar(v.sum_all() / n);
        self.tape.record_differentiable_scalar(
            "mean",
            y,
            &[self],
            n,
            |ctx| {
                one(Tensor::full(
                    ctx.inputs[0].shape().clone(),
                    ctx.grad.item() / ctx.scalar,
                ))
            },
            |ctx| {
                graph_one(
                    ctx.grad
                        .div_scalar(ctx.scalar)
                        .broadcast_to(ctx.inputs[0].shape()),
                )
            },
        )
    }

    /// Sum over `axes` (negative counts from the end); `keepdim` keeps them as size 1.
    /// ∂/∂x = the output gradient broadcast back over the reduced axes.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::arange(6).reshape([2, 3]));
    /// assert_eq!(x.sum_axes(&[1], false).value().data(), &[3.0, 12.0]);
    /// assert_eq!(&x.sum_axes(&[0], true).shape()[..], &[1, 3]);
    /// ```
    #[track_caller]
    pub fn sum_axes(self, axes: &[isize], keepdim: bool) -> Var<'t, T> {
        let x = self.value();
        let (keep, dropped) = reduced_shapes(x.shape(), axes, "sum_axes");
        let s = x.sum_to(keep.clone());
        let y = if keepdim { s } else { s.reshape(dropped) };
        let keep2 = keep.clone();
        self.tape.record_differentiable(
            "sum_axes",
            y,
            &[self],
            move |ctx| {
                one(ctx
                    .grad
                    .reshape(keep.clone())
                    .broadcast_to(ctx.inputs[0].shape()))
            },
            move |ctx| {
                graph_one(
                    ctx.grad
                        .reshape(keep2.clone())
                        .broadcast_to(ctx.inputs[0].shape()),
                )
            },
        )
    }

    /// Mean over `axes`; `keepdim` keeps them as size 1. ∂/∂x = broadcast gradient / count.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::arange(6).reshape([2, 3]));
    /// assert_eq!(x.mean_axes(&[-1], false).value().data(), &[1.0, 4.0]);
    /// ```
    #[track_caller]
    pub fn mean_axes(self, axes: &[isize], keepdim: bool) -> Var<'t, T> {
        let shape = self.shape();
        let (keep, _) = reduced_shapes(&shape, axes, "mean_axes");
        let count = T::from_usize(shape.numel() / keep.numel().max(1));
        self.sum_axes(axes, keepdim).mul_scalar(T::ONE / count)
    }

    /// Maximum over one axis. The gradient goes to the first maximal element along
    /// the axis (PyTorch's `max(dim)` rule): ∂y/∂xᵢ = 1 for that i, 0 elsewhere.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![1.0, 5.0, 4.0, 4.0], [2, 2]).unwrap());
    /// let m = x.max_axis(1, false);
    /// assert_eq!(m.value().data(), &[5.0, 4.0]);
    /// // the second row ties: the gradient goes to the first 4
    /// assert_eq!(m.sum().backward()[x].data(), &[0.0, 1.0, 1.0, 0.0]);
    /// ```
    #[track_caller]
    pub fn max_axis(self, axis: isize, keepdim: bool) -> Var<'t, T> {
        let x = self.value();
        let ax = x.shape().axis(axis, "max_axis");
        let (outer, n, inner) = split_at_axis(x.shape(), ax);
        assert!(n > 0, "max_axis: axis {ax} of shape {} is empty", x.shape());
        let (keep, dropped) = reduced_shapes(x.shape(), &[ax as isize], "max_axis");
        let xd = x.data();
        let mut y = crate::buffer::full(outer * inner, T::NEG_INFINITY);
        for o in 0..outer {
            for k in 0..n {
                let row = &xd[(o * n + k) * inner..][..inner];
                for (m, &v) in y[o * inner..][..inner].iter_mut().zip(row) {
                    // NaN propagates (as in PyTorch): once seen, it stays the maximum.
                    if k == 0 || v > *m || (v.is_nan() && !m.is_nan()) {
                        *m = v;
                    }
                }
            }
        }
        let y = Tensor::from_parts(y, if keepdim { keep.clone() } else { dropped });
        // The position along the axis of each lane's first maximal element
        // (recomputed from x and y, not stored): dx = g there, 0 elsewhere.
        let argmax = move |x: &Tensor<T>, y: &Tensor<T>| -> Vec<usize> {
            let (x, y) = (x.data(), y.data());
            let mut at = Vec::with_capacity(outer * inner);
            for o in 0..outer {
                for i in 0..inner {
                    let m = y[o * inner + i];
                    let hit = |v: T| v == m || (v.is_nan() && m.is_nan());
                    let k = (0..n)
                        .find(|&k| hit(x[(o * n + k) * inner + i]))
                        .unwrap_or(0);
                    at.push((o * n + k) * inner + i);
                }
            }
            at
        };
        let keep2 = keep;
        self.tape.record_differentiable(
            "max_axis",
            y,
            &[self],
            move |ctx| {
                let x = ctx.inputs[0];
                let mut dx = crate::buffer::full(x.numel(), T::ZERO);
                for (&at, &g) in argmax(x, ctx.output).iter().zip(ctx.grad.data()) {
                    dx[at] = g;
                }
                one(Tensor::from_parts(dx, x.shape().clone()))
            },
            move |ctx| {
                let x = ctx.inputs[0];
                let mut mask = crate::buffer::full(x.shape().numel(), T::ZERO);
                for at in argmax(&x.value(), &ctx.output.value()) {
                    mask[at] = T::ONE;
                }
                let mask = x.tape().constant(Tensor::from_parts(mask, x.shape()));
                graph_one(ctx.grad.reshape(keep2.clone()).broadcast_to(x.shape()) * mask)
            },
        )
    }
}

/// The graph gradient of a one-input op.
#[inline]
pub(crate) fn graph_one<'t, T: Float>(g: Var<'t, T>) -> GraphGrads<'t, T> {
    let mut v = GraphGrads::new();
    v.push(Some(g));
    v
}
