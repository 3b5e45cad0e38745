//! Reductions: sum and mean (all elements or given axes), max over an axis.

use crate::shape::Shape;
use crate::tape::one;
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
    pub fn sum(self) -> Var<'t, T> {
        let y = Tensor::scalar(self.value().sum_all());
        self.tape.record("sum", y, &[self], |ctx| {
            one(Tensor::full(ctx.inputs[0].shape().clone(), ctx.grad.item()))
        })
    }

    /// Mean of all elements, as a scalar. ∂/∂xᵢ = 1/n.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::ones([4]));
    /// assert_eq!(x.mean().backward()[x].data(), &[0.25; 4]);
    /// ```
    pub fn mean(self) -> Var<'t, T> {
        let v = self.value();
        let n = T::from_usize(v.numel());
        let y = Tensor::scalar(v.sum_all() / n);
        self.tape.record("mean", y, &[self], move |ctx| {
            one(Tensor::full(
                ctx.inputs[0].shape().clone(),
                ctx.grad.item() / n,
            ))
        })
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
    pub fn sum_axes(self, axes: &[isize], keepdim: bool) -> Var<'t, T> {
        let x = self.value();
        let (keep, dropped) = reduced_shapes(x.shape(), axes, "sum_axes");
        let s = x.sum_to(keep.clone());
        let y = if keepdim { s } else { s.reshape(dropped) };
        self.tape.record("sum_axes", y, &[self], move |ctx| {
            one(ctx
                .grad
                .reshape(keep.clone())
                .broadcast_to(ctx.inputs[0].shape()))
        })
    }

    /// Mean over `axes`; `keepdim` keeps them as size 1. ∂/∂x = broadcast gradient / count.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::arange(6).reshape([2, 3]));
    /// assert_eq!(x.mean_axes(&[-1], false).value().data(), &[1.0, 4.0]);
    /// ```
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
        let y = Tensor::from_parts(y, if keepdim { keep } else { dropped });
        self.tape.record("max_axis", y, &[self], move |ctx| {
            let (x, y, g) = (ctx.inputs[0].data(), ctx.output.data(), ctx.grad.data());
            let mut dx = crate::buffer::full(x.len(), T::ZERO);
            for o in 0..outer {
                for i in 0..inner {
                    let m = y[o * inner + i];
                    // First index attaining the maximum (recomputed, not stored).
                    let hit = |v: T| v == m || (v.is_nan() && m.is_nan());
                    let k = (0..n)
                        .find(|&k| hit(x[(o * n + k) * inner + i]))
                        .unwrap_or(0);
                    dx[(o * n + k) * inner + i] = g[o * inner + i];
                }
            }
            one(Tensor::from_parts(dx, ctx.inputs[0].shape().clone()))
        })
    }
}
