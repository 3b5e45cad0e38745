//! softmax and log_softmax over an axis, numerically stable (the row maximum is
//! subtracted before exponentiating).

use super::reduce::graph_one;
use super::reduce::split_at_axis;
use crate::tape::one;
use crate::{Float, Tensor, Var};

/// Calls `f(base, stride)` for every lane along the middle axis of an (outer, n, inner) view.
#[inline]
fn lanes(outer: usize, n: usize, inner: usize, mut f: impl FnMut(usize, usize)) {
    for o in 0..outer {
        for i in 0..inner {
            f(o * n * inner + i, inner);
        }
    }
}

/// log_softmax of each lane, computed in the frame shifted by the lane's
/// maximum m: y = (x − m) − ln Σ exp(x − m).
///
/// Never `x − (m + ln Σ)`: once |m| dwarfs ln Σ (f32 from about 1e7, f64 from
/// about 1e14) the sum rounds to m and the result loses the log-sum term. In
/// the shifted frame every x − m is exact or rounded once, and Σ ∈ [1, n], so
/// the result is right to rounding at any magnitude.
pub(crate) fn log_softmax_lanes<T: Float>(x: &[T], outer: usize, n: usize, inner: usize) -> Vec<T> {
    let mut y = crate::buffer::full(x.len(), T::ZERO);
    lanes(outer, n, inner, |b, s| {
        let m = lane_max(x, b, s, n);
        let ln_sum = (0..n).map(|k| (x[b + k * s] - m).exp()).sum::<T>().ln();
        for k in 0..n {
            y[b + k * s] = (x[b + k * s] - m) - ln_sum;
        }
    });
    y
}

/// softmax of each lane: exp(x − m) / Σ exp(x − m), m the lane's maximum.
fn softmax_lanes<T: Float>(x: &[T], outer: usize, n: usize, inner: usize) -> Vec<T> {
    let mut y = crate::buffer::full(x.len(), T::ZERO);
    lanes(outer, n, inner, |b, s| {
        let m = lane_max(x, b, s, n);
        let mut sum = T::ZERO;
        for k in 0..n {
            let e = (x[b + k * s] - m).exp();
            y[b + k * s] = e;
            sum += e;
        }
        let inv = T::ONE / sum;
        for k in 0..n {
            y[b + k * s] *= inv;
        }
    });
    y
}

/// The maximum of a lane (−∞ for an empty lane; NaN if the lane holds one, so
/// that a NaN logit makes its whole lane NaN rather than being skipped).
#[inline]
fn lane_max<T: Float>(x: &[T], b: usize, s: usize, n: usize) -> T {
    (0..n).map(|k| x[b + k * s]).fold(
        T::NEG_INFINITY,
        |m, v| {
            if v > m || v.is_nan() { v } else { m }
        },
    )
}

impl<'t, T: Float> Var<'t, T> {
    /// softmax along `axis`: yₖ = exp(xₖ) / Σⱼ exp(xⱼ).
    /// Backward: dxₖ = yₖ·(gₖ − Σⱼ gⱼyⱼ).
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::zeros([2, 4]));
    /// assert_eq!(x.softmax(1).value().data(), &[0.25; 8]);
    /// ```
    #[track_caller]
    pub fn softmax(self, axis: isize) -> Var<'t, T> {
        let x = self.value();
        let ax = x.shape().axis(axis, "softmax");
        let (outer, n, inner) = split_at_axis(x.shape(), ax);
        let y = Tensor::from_parts(softmax_lanes(x.data(), outer, n, inner), x.shape().clone());
        let axis = ax as isize;
        self.tape.record_differentiable(
            "softmax",
            y,
            &[self],
            move |ctx| {
                let (y, g) = (ctx.output.data(), ctx.grad.data());
                let mut dx = crate::buffer::full(y.len(), T::ZERO);
                lanes(outer, n, inner, |b, s| {
                    let dot: T = (0..n).map(|k| g[b + k * s] * y[b + k * s]).sum();
                    for k in 0..n {
                        dx[b + k * s] = y[b + k * s] * (g[b + k * s] - dot);
                    }
                });
                one(Tensor::from_parts(dx, ctx.grad.shape().clone()))
            },
            move |ctx| {
                let (y, g) = (ctx.output, ctx.grad);
                graph_one(y * (g - (g * y).sum_axes(&[axis], true)))
            },
        )
    }

    /// log_softmax along `axis`: yₖ = xₖ − log Σⱼ exp(xⱼ).
    /// Backward: dxₖ = gₖ − exp(yₖ)·Σⱼ gⱼ.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![1000.0, 1000.0], [2]).unwrap());
    /// let y = x.log_softmax(0).value();
    /// assert!((y.data()[0] + 2f64.ln()).abs() < 1e-12); // no overflow
    /// ```
    #[track_caller]
    pub fn log_softmax(self, axis: isize) -> Var<'t, T> {
        let x = self.value();
        let ax = x.shape().axis(axis, "log_softmax");
        let (outer, n, inner) = split_at_axis(x.shape(), ax);
        let y = Tensor::from_parts(
            log_softmax_lanes(x.data(), outer, n, inner),
            x.shape().clone(),
        );
        let axis = ax as isize;
        self.tape.record_differentiable(
            "log_softmax",
            y,
            &[self],
            move |ctx| {
                let (y, g) = (ctx.output.data(), ctx.grad.data());
                let mut dx = crate::buffer::full(y.len(), T::ZERO);
                lanes(outer, n, inner, |b, s| {
                    let sum: T = (0..n).map(|k| g[b + k * s]).sum();
                    for k in 0..n {
                        dx[b + k * s] = g[b + k * s] - y[b + k * s].exp() * sum;
                    }
                });
                one(Tensor::from_parts(dx, ctx.grad.shape().clone()))
            },
            move |ctx| {
                let (y, g) = (ctx.output, ctx.grad);
                graph_one(g - y.exp() * g.sum_axes(&[axis], true))
            },
        )
    }
}
