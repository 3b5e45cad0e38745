//! Elementwise functions y = f(x). Each op states f and its derivative f′
//! together; the backward is `dx = dy · f′(x, y)` (the derivative may read the
//! input `x` or the output `y`, whichever is cheaper).

use crate::tape::Backward;
use crate::{Float, Tensor, Var};

impl<'t, T: Float> Var<'t, T> {
    /// Records y = f(x) with local derivative `df(x, y)`, and `dxv(g, x, y)`,
    /// the gradient g·f′ built from `Var` ops (for gradients of gradients).
    #[inline]
    pub(super) fn unary<G>(
        self,
        op: &'static str,
        f: impl Fn(T) -> T + Sync,
        df: impl Fn(T, T) -> T + Sync + 'static,
        dxv: G,
    ) -> Var<'t, T>
    where
        G: for<'v> Fn(Var<'v, T>, Var<'v, T>, Var<'v, T>) -> Var<'v, T> + Sync + 'static,
    {
        let map = |x: &Tensor<T>| x.par_map(f);
        self.tape.record_unary(
            op,
            self,
            map,
            T::ZERO,
            Backward::elementwise(move |x, y, _| df(x, y), move |g, x, y, _| dxv(g, x, y)),
        )
    }

    /// Records y = f(x, c) with local derivative `df(x, y, c)` for a constant `c`,
    /// which is saved on the node (so `df` need capture nothing and costs no
    /// allocation), and `dxv(g, x, y, c)`, the gradient as a graph.
    #[inline]
    pub(super) fn unary_with<G>(
        self,
        op: &'static str,
        c: T,
        f: impl Fn(T, T) -> T + Sync,
        df: impl Fn(T, T, T) -> T + Sync + 'static,
        dxv: G,
    ) -> Var<'t, T>
    where
        G: for<'v> Fn(Var<'v, T>, Var<'v, T>, Var<'v, T>, T) -> Var<'v, T> + Sync + 'static,
    {
        let map = |x: &Tensor<T>| x.par_map(|v| f(v, c));
        self.tape
            .record_unary(op, self, map, c, Backward::elementwise(df, dxv))
    }

    /// A constant of x's shape with `f(x)` in each element: a piecewise-constant
    /// derivative (relu's step), whose own derivative is zero.
    pub(crate) fn constant_map(self, f: impl Fn(T) -> T) -> Var<'t, T> {
        self.tape.constant(self.value().map(f))
    }

    /// eˣ. d/dx = eˣ = y.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::zeros([1]));
    /// assert_eq!(x.exp().sum().backward()[x].item(), 1.0);
    /// ```
    #[track_caller]
    pub fn exp(self) -> Var<'t, T> {
        self.unary("exp", T::exp, |_, y| y, |g, _, y| g * y)
    }

    /// Natural logarithm. d/dx = 1/x.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::full([1], 4.0));
    /// assert_eq!(x.log().sum().backward()[x].item(), 0.25);
    /// ```
    #[track_caller]
    pub fn log(self) -> Var<'t, T> {
        self.unary("log", T::ln, |x, _| T::ONE / x, |g, x, _| g / x)
    }

    /// √x. d/dx = 1/(2√x) = 1/(2y).
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::full([1], 4.0));
    /// assert_eq!(x.sqrt().sum().backward()[x].item(), 0.25);
    /// ```
    #[track_caller]
    pub fn sqrt(self) -> Var<'t, T> {
        self.unary(
            "sqrt",
            T::sqrt,
            |_, y| T::ONE / (y + y),
            |g, _, y| g / (y * T::from_f64(2.0)),
        )
    }

    /// xᵖ for a constant exponent p. d/dx = p·xᵖ⁻¹.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::full([1], 3.0));
    /// assert_eq!(x.powf(2.0).sum().backward()[x].item(), 6.0);
    /// ```
    #[track_caller]
    pub fn powf(self, p: T) -> Var<'t, T> {
        self.unary_with(
            "powf",
            p,
            |x, p| x.powf(p),
            // p = 0: y = 1, derivative 0 everywhere (not 0·x⁻¹ = NaN at x = 0).
            |x, _, p| {
                if p == T::ZERO {
                    T::ZERO
                } else {
                    p * x.powf(p - T::ONE)
                }
            },
            |g, x, _, p| {
                if p == T::ZERO {
                    g * T::ZERO
                } else {
                    g * x.powf(p - T::ONE) * p
                }
            },
        )
    }

    /// max(x, 0). d/dx = 1 if x > 0, else 0 (so relu′(0) = 0, as PyTorch).
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![-1.0, 0.0, 2.0], [3]).unwrap());
    /// assert_eq!(x.relu().sum().backward()[x].data(), &[0.0, 0.0, 1.0]);
    /// ```
    #[track_caller]
    pub fn relu(self) -> Var<'t, T> {
        self.unary(
            "relu",
            // Written so that NaN passes through (NaN ≤ 0 is false), as in PyTorch.
            |x| if x <= T::ZERO { T::ZERO } else { x },
            |x, _| if x > T::ZERO { T::ONE } else { T::ZERO },
            |g, x, _| g * x.constant_map(|x| if x > T::ZERO { T::ONE } else { T::ZERO }),
        )
    }

    /// x if x > 0 else slope·x. d/dx = 1 if x > 0, else slope (slope at 0, as PyTorch).
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![-2.0, 3.0], [2]).unwrap());
    /// assert_eq!(x.leaky_relu(0.1).value().data(), &[-0.2, 3.0]);
    /// ```
    #[track_caller]
    pub fn leaky_relu(self, slope: T) -> Var<'t, T> {
        self.unary_with(
            "leaky_relu",
            slope,
            |x, slope| if x > T::ZERO { x } else { slope * x },
            |x, _, slope| if x > T::ZERO { T::ONE } else { slope },
            |g, x, _, slope| g * x.constant_map(|x| if x > T::ZERO { T::ONE } else { slope }),
        )
    }

    /// σ(x) = 1/(1 + e⁻ˣ), computed without overflow. d/dx = y(1 − y).
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::zeros([1]));
    /// assert_eq!(x.sigmoid().sum().backward()[x].item(), 0.25);
    /// ```
    #[track_caller]
    pub fn sigmoid(self) -> Var<'t, T> {
        self.unary(
            "sigmoid",
            |x| {
                if x >= T::ZERO {
                    T::ONE / (T::ONE + (-x).exp())
                } else {
                    let e = x.exp();
                    e / (T::ONE + e)
                }
            },
            |_, y| y * (T::ONE - y),
            |g, _, y| g * y * y.rsub_scalar(T::ONE),
        )
    }

    /// tanh(x). d/dx = 1 − y².
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::zeros([1]));
    /// assert_eq!(x.tanh().sum().backward()[x].item(), 1.0);
    /// ```
    #[track_caller]
    pub fn tanh(self) -> Var<'t, T> {
        self.unary(
            "tanh",
            T::tanh,
            |_, y| T::ONE - y * y,
            |g, _, y| g * (y * y).rsub_scalar(T::ONE),
        )
    }
}
