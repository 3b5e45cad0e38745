//! Elementwise arithmetic with numpy broadcasting: `+ - * /`, negation and scalar variants.
//!
//! The backward of a broadcast operand sums the gradient over the stretched axes
//! ([`Tensor::sum_to`]), so every gradient has its operand's shape.

use super::reduce::graph_one;
use crate::tape::{Backward, GraphGrads, one, two};
use crate::{Float, Tensor, Var};
use std::ops::{Add, Div, Mul, Neg, Sub};

impl<'t, T: Float> Var<'t, T> {
    /// `self + other`, broadcasting. ∂/∂a = 1, ∂/∂b = 1 (summed to each shape).
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let a = tape.leaf(Tensor::zeros([2, 3]));
    /// let b = tape.leaf(Tensor::ones([3]));
    /// let g = a.add(b).sum().backward();
    /// assert_eq!(g[b].data(), &[2.0, 2.0, 2.0]);
    /// ```
    #[allow(clippy::should_implement_trait)]
    #[track_caller]
    pub fn add(self, other: Var<'t, T>) -> Var<'t, T> {
        let y = self
            .value()
            .broadcast_zip(&other.value(), "add", |a, b| a + b);
        self.tape.record_differentiable(
            "add",
            y,
            &[self, other],
            |ctx| {
                two(
                    ctx.needs_grad[0].then(|| ctx.grad.sum_to(ctx.inputs[0].shape())),
                    ctx.needs_grad[1].then(|| ctx.grad.sum_to(ctx.inputs[1].shape())),
                )
            },
            |ctx| {
                let (a, b, g) = (ctx.inputs[0], ctx.inputs[1], ctx.grad);
                graph_two(
                    ctx.needs_grad[0].then(|| g.sum_to(a.shape())),
                    ctx.needs_grad[1].then(|| g.sum_to(b.shape())),
                )
            },
        )
    }

    /// `self - other`, broadcasting. ∂/∂a = 1, ∂/∂b = −1.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let a = tape.leaf(Tensor::ones([2]));
    /// let b = tape.leaf(Tensor::ones([2]));
    /// assert_eq!(a.sub(b).sum().backward()[b].data(), &[-1.0, -1.0]);
    /// ```
    #[allow(clippy::should_implement_trait)]
    #[track_caller]
    pub fn sub(self, other: Var<'t, T>) -> Var<'t, T> {
        let y = self
            .value()
            .broadcast_zip(&other.value(), "sub", |a, b| a - b);
        self.tape.record_differentiable(
            "sub",
            y,
            &[self, other],
            |ctx| {
                two(
                    ctx.needs_grad[0].then(|| ctx.grad.sum_to(ctx.inputs[0].shape())),
                    ctx.needs_grad[1].then(|| ctx.grad.map(|g| -g).sum_to(ctx.inputs[1].shape())),
                )
            },
            |ctx| {
                let (a, b, g) = (ctx.inputs[0], ctx.inputs[1], ctx.grad);
                graph_two(
                    ctx.needs_grad[0].then(|| g.sum_to(a.shape())),
                    ctx.needs_grad[1].then(|| g.neg().sum_to(b.shape())),
                )
            },
        )
    }

    /// `self * other` elementwise, broadcasting. ∂/∂a = b, ∂/∂b = a.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let a = tape.leaf(Tensor::full([2], 3.0));
    /// let b = tape.leaf(Tensor::full([2], 5.0));
    /// assert_eq!(a.mul(b).sum().backward()[a].data(), &[5.0, 5.0]);
    /// ```
    #[allow(clippy::should_implement_trait)]
    #[track_caller]
    pub fn mul(self, other: Var<'t, T>) -> Var<'t, T> {
        let y = self
            .value()
            .broadcast_zip(&other.value(), "mul", |a, b| a * b);
        self.tape.record_differentiable(
            "mul",
            y,
            &[self, other],
            |ctx| {
                let (a, b, g) = (ctx.inputs[0], ctx.inputs[1], ctx.grad);
                two(
                    ctx.needs_grad[0]
                        .then(|| g.broadcast_zip(b, "mul", |g, b| g * b).sum_to(a.shape())),
                    ctx.needs_grad[1]
                        .then(|| g.broadcast_zip(a, "mul", |g, a| g * a).sum_to(b.shape())),
                )
            },
            |ctx| {
                let (a, b, g) = (ctx.inputs[0], ctx.inputs[1], ctx.grad);
                graph_two(
                    ctx.needs_grad[0].then(|| (g * b).sum_to(a.shape())),
                    ctx.needs_grad[1].then(|| (g * a).sum_to(b.shape())),
                )
            },
        )
    }

    /// `self / other` elementwise, broadcasting. ∂/∂a = 1/b, ∂/∂b = −a/b².
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let a = tape.leaf(Tensor::full([1], 6.0));
    /// let b = tape.leaf(Tensor::full([1], 2.0));
    /// let g = a.div(b).sum().backward();
    /// assert_eq!((g[a].item(), g[b].item()), (0.5, -1.5));
    /// ```
    #[allow(clippy::should_implement_trait)]
    #[track_caller]
    pub fn div(self, other: Var<'t, T>) -> Var<'t, T> {
        let y = self
            .value()
            .broadcast_zip(&other.value(), "div", |a, b| a / b);
        self.tape.record_differentiable(
            "div",
            y,
            &[self, other],
            |ctx| {
                let (a, b, g, y) = (ctx.inputs[0], ctx.inputs[1], ctx.grad, ctx.output);
                two(
                    ctx.needs_grad[0]
                        .then(|| g.broadcast_zip(b, "div", |g, b| g / b).sum_to(a.shape())),
                    ctx.needs_grad[1].then(|| {
                        // −a/b² · g = −(y/b) · g, computed on the broadcast output shape.
                        let gy = g.zip_map(y, "div", |g, y| -g * y);
                        gy.broadcast_zip(b, "div", |gy, b| gy / b).sum_to(b.shape())
                    }),
                )
            },
            |ctx| {
                let (a, b, g, y) = (ctx.inputs[0], ctx.inputs[1], ctx.grad, ctx.output);
                graph_two(
                    ctx.needs_grad[0].then(|| (g / b).sum_to(a.shape())),
                    ctx.needs_grad[1].then(|| (g.neg() * y / b).sum_to(b.shape())),
                )
            },
        )
    }

    /// `−self`. ∂/∂x = −1.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::ones([2]));
    /// assert_eq!(x.neg().sum().backward()[x].data(), &[-1.0, -1.0]);
    /// ```
    #[allow(clippy::should_implement_trait)]
    #[track_caller]
    pub fn neg(self) -> Var<'t, T> {
        let f = |x: &Tensor<T>| x.par_map(|v| -v);
        self.tape.record_unary(
            "neg",
            self,
            f,
            T::ZERO,
            Backward::elementwise(|_, _, _| -T::ONE, |g, _, _, _| g.neg()),
        )
    }

    /// `self + c` for a scalar `c`. ∂/∂x = 1.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::ones([2]));
    /// assert_eq!(x.add_scalar(2.0).value().data(), &[3.0, 3.0]);
    /// ```
    #[track_caller]
    pub fn add_scalar(self, c: T) -> Var<'t, T> {
        let f = |x: &Tensor<T>| x.par_map(|v| v + c);
        self.tape
            .record_unary("add_scalar", self, f, T::ZERO, Backward::Identity)
    }

    /// `self * c` for a scalar `c`. ∂/∂x = c.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::ones([2]));
    /// assert_eq!(x.mul_scalar(3.0).sum().backward()[x].data(), &[3.0, 3.0]);
    /// ```
    #[track_caller]
    pub fn mul_scalar(self, c: T) -> Var<'t, T> {
        let f = |x: &Tensor<T>| x.par_map(|v| v * c);
        self.tape.record_unary(
            "mul_scalar",
            self,
            f,
            c,
            Backward::elementwise(|_, _, c| c, |g, _, _, c| g.mul_scalar(c)),
        )
    }

    /// `self / c` for a scalar `c` (correctly rounded, unlike multiplying by 1/c). ∂/∂x = 1/c.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::full([1], 0.3));
    /// assert_eq!(x.div_scalar(0.1).value().item(), 0.3 / 0.1);
    /// assert_eq!(x.div_scalar(4.0).sum().backward()[x].item(), 0.25);
    /// ```
    #[track_caller]
    pub fn div_scalar(self, c: T) -> Var<'t, T> {
        let y = self.tape.with_value(self.id, |x| x.par_map(|v| v / c));
        self.tape.record_differentiable_scalar(
            "div_scalar",
            y,
            &[self],
            c,
            |ctx| one(ctx.grad.map(|g| g / ctx.scalar)),
            |ctx| graph_one(ctx.grad.div_scalar(ctx.scalar)),
        )
    }

    /// `c − self` for a scalar `c`. ∂/∂x = −1.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::ones([1]));
    /// assert_eq!(x.rsub_scalar(5.0).value().item(), 4.0);
    /// ```
    #[track_caller]
    pub fn rsub_scalar(self, c: T) -> Var<'t, T> {
        let f = |x: &Tensor<T>| x.par_map(|v| c - v);
        self.tape.record_unary(
            "rsub_scalar",
            self,
            f,
            T::ZERO,
            Backward::elementwise(|_, _, _| -T::ONE, |g, _, _, _| g.neg()),
        )
    }

    /// `c / self` for a scalar `c`. ∂/∂x = −c/x² = −y/x.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::full([1], 2.0));
    /// assert_eq!(x.rdiv_scalar(1.0).sum().backward()[x].item(), -0.25);
    /// ```
    #[track_caller]
    pub fn rdiv_scalar(self, c: T) -> Var<'t, T> {
        let y = self.value().map(|v| c / v);
        self.tape.record_differentiable(
            "rdiv_scalar",
            y,
            &[self],
            |ctx| {
                let gy = ctx.grad.zip_map(ctx.output, "rdiv_scalar", |g, y| g * y);
                one(gy.zip_map(ctx.inputs[0], "rdiv_scalar", |gy, x| -gy / x))
            },
            |ctx| {
                let (g, x, y) = (ctx.grad, ctx.inputs[0], ctx.output);
                graph_one((g * y / x).neg())
            },
        )
    }
}

/// The graph gradients of a two-input op.
fn graph_two<'t, T: Float>(a: Option<Var<'t, T>>, b: Option<Var<'t, T>>) -> GraphGrads<'t, T> {
    let mut v = GraphGrads::new();
    v.push(a);
    v.push(b);
    v
}

macro_rules! var_binop {
    ($tr:ident, $m:ident, $scalar:expr) => {
        impl<'t, T: Float> $tr for Var<'t, T> {
            type Output = Var<'t, T>;
            #[track_caller]
            fn $m(self, rhs: Var<'t, T>) -> Var<'t, T> {
                Var::$m(self, rhs)
            }
        }
        impl<'t, T: Float> $tr<T> for Var<'t, T> {
            type Output = Var<'t, T>;
            #[track_caller]
            fn $m(self, rhs: T) -> Var<'t, T> {
                let f: fn(Var<'t, T>, T) -> Var<'t, T> = $scalar;
                f(self, rhs)
            }
        }
    };
}

var_binop!(Add, add, |x, c| x.add_scalar(c));
var_binop!(Sub, sub, |x, c| x.add_scalar(-c));
var_binop!(Mul, mul, |x, c| x.mul_scalar(c));
var_binop!(Div, div, |x, c| x.div_scalar(c));

impl<'t, T: Float> Neg for Var<'t, T> {
    type Output = Var<'t, T>;
    #[track_caller]
    fn neg(self) -> Var<'t, T> {
        Var::neg(self)
    }
}

macro_rules! scalar_lhs {
    ($t:ty) => {
        impl<'t> Add<Var<'t, $t>> for $t {
            type Output = Var<'t, $t>;
            #[track_caller]
            fn add(self, rhs: Var<'t, $t>) -> Var<'t, $t> {
                rhs.add_scalar(self)
            }
        }
        impl<'t> Sub<Var<'t, $t>> for $t {
            type Output = Var<'t, $t>;
            #[track_caller]
            fn sub(self, rhs: Var<'t, $t>) -> Var<'t, $t> {
                rhs.rsub_scalar(self)
            }
        }
        impl<'t> Mul<Var<'t, $t>> for $t {
            type Output = Var<'t, $t>;
            #[track_caller]
            fn mul(self, rhs: Var<'t, $t>) -> Var<'t, $t> {
                rhs.mul_scalar(self)
            }
        }
        impl<'t> Div<Var<'t, $t>> for $t {
            type Output = Var<'t, $t>;
            #[track_caller]
            fn div(self, rhs: Var<'t, $t>) -> Var<'t, $t> {
                rhs.rdiv_scalar(self)
            }
        }
    };
}
scalar_lhs!(f32);
scalar_lhs!(f64);

#[cfg(test)]
mod tests {
    use crate::{Tape, Tensor};

    #[test]
    fn operators_match_methods() {
        let tape = Tape::<f64>::new();
        let a = tape.leaf(Tensor::full([2], 3.0));
        let b = tape.leaf(Tensor::full([2], 2.0));
        assert_eq!((a + b).value().data(), &[5.0, 5.0]);
        assert_eq!((a - b).value().data(), &[1.0, 1.0]);
        assert_eq!((a * b).value().data(), &[6.0, 6.0]);
        assert_eq!((a / b).value().data(), &[1.5, 1.5]);
        assert_eq!((-a).value().data(), &[-3.0, -3.0]);
        assert_eq!((2.0 - a).value().data(), &[-1.0, -1.0]);
        assert_eq!((a / 2.0).value().data(), &[1.5, 1.5]);
        assert_eq!((6.0 / a).value().data(), &[2.0, 2.0]);
    }

    #[test]
    #[should_panic(expected = "add: shapes [2, 3] and [4] cannot be broadcast together")]
    fn add_names_both_shapes() {
        let tape = Tape::<f32>::new();
        let a = tape.leaf(Tensor::zeros([2, 3]));
        let b = tape.leaf(Tensor::zeros([4]));
        let _ = a + b;
    }
}
