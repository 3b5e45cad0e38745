//! Shape ops: reshape, flatten, flatten_dims, transpose, permute. Their backward undoes the
//! rearrangement on the gradient.

use super::reduce::graph_one;
use crate::shape::Shape;
use crate::tape::one;
use crate::{Float, Var};

impl<'t, T: Float> Var<'t, T> {
    /// The same elements with a new shape of equal size (no copy). ∂/∂x = dy reshaped back.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::arange(6));
    /// assert_eq!(&x.reshape([2, 3]).shape()[..], &[2, 3]);
    /// ```
    #[track_caller]
    pub fn reshape(self, shape: impl Into<Shape>) -> Var<'t, T> {
        let y = self.value().reshape(shape);
        self.tape.record_differentiable(
            "reshape",
            y,
            &[self],
            |ctx| one(ctx.grad.reshape(ctx.inputs[0].shape())),
            |ctx| graph_one(ctx.grad.reshape(ctx.inputs[0].shape())),
        )
    }

    /// Keeps the first axis and flattens the rest: `[N, C, H, W]` → `[N, C·H·W]`.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::zeros([2, 3, 4, 5]));
    /// assert_eq!(&x.flatten().shape()[..], &[2, 60]);
    /// ```
    #[track_caller]
    pub fn flatten(self) -> Var<'t, T> {
        let s = self.shape();
        assert!(
            s.rank() >= 1,
            "flatten: needs at least one axis, got shape {s}"
        );
        let rest: usize = s[1..].iter().product();
        let y = self.value().reshape([s[0], rest]);
        self.tape.record_differentiable(
            "flatten",
            y,
            &[self],
            |ctx| one(ctx.grad.reshape(ctx.inputs[0].shape())),
            |ctx| graph_one(ctx.grad.reshape(ctx.inputs[0].shape())),
        )
    }

    /// Flattens axes `start..=end` into one (PyTorch's `torch.flatten(x,
    /// start_dim, end_dim)`; negative axes count from the end). No copy;
    /// ∂/∂x = dy reshaped back. A rank-0 input becomes `[1]` (with axes 0 or −1).
    ///
    /// Panics, naming `flatten_dims` and the shape, if an axis is out of range
    /// or `start` comes after `end`.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::zeros([2, 3, 4, 5]));
    /// assert_eq!(&x.flatten_dims(1, 2).shape()[..], &[2, 12, 5]);
    /// assert_eq!(&x.flatten_dims(-2, -1).shape()[..], &[2, 3, 20]);
    /// assert_eq!(&x.flatten_dims(0, -1).shape()[..], &[120]);
    /// assert_eq!(&x.flatten_dims(2, 2).shape()[..], &[2, 3, 4, 5]);
    /// ```
    #[track_caller]
    pub fn flatten_dims(self, start: isize, end: isize) -> Var<'t, T> {
        let s = self.shape();
        let dims: Vec<usize> = if s.rank() == 0 {
            for a in [start, end] {
                assert!(
                    a == 0 || a == -1,
                    "flatten_dims: axis {a} is out of range for shape {s} (rank 0)"
                );
            }
            vec![1]
        } else {
            let (a, b) = (s.axis(start, "flatten_dims"), s.axis(end, "flatten_dims"));
            assert!(
                a <= b,
                "flatten_dims: start axis {start} comes after end axis {end} (shape {s})"
            );
            let mut dims = s[..a].to_vec();
            dims.push(s[a..=b].iter().product());
            dims.extend_from_slice(&s[b + 1..]);
            dims
        };
        let y = self.value().reshape(dims);
        self.tape.record_differentiable(
            "flatten_dims",
            y,
            &[self],
            |ctx| one(ctx.grad.reshape(ctx.inputs[0].shape())),
            |ctx| graph_one(ctx.grad.reshape(ctx.inputs[0].shape())),
        )
    }

    /// Reorders axes: output axis i is input axis `perm[i]`. ∂/∂x = dy permuted by the inverse.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::zeros([2, 3, 4]));
    /// assert_eq!(&x.permute(&[2, 0, 1]).shape()[..], &[4, 2, 3]);
    /// ```
    #[track_caller]
    pub fn permute(self, perm: &[usize]) -> Var<'t, T> {
        let y = self.value().permute(perm);
        let mut inv = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        let inv2 = inv.clone();
        self.tape.record_differentiable(
            "permute",
            y,
            &[self],
            move |ctx| one(ctx.grad.permute(&inv)),
            move |ctx| graph_one(ctx.grad.permute(&inv2)),
        )
    }

    /// Swaps two axes (negative counts from the end).
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::arange(6).reshape([2, 3]));
    /// assert_eq!(x.transpose(0, 1).value().data(), &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    /// ```
    #[track_caller]
    pub fn transpose(self, a: isize, b: isize) -> Var<'t, T> {
        let s = self.shape();
        let (a, b) = (s.axis(a, "transpose"), s.axis(b, "transpose"));
        let mut perm: Vec<usize> = (0..s.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }
}
