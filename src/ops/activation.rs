//! More activation functions, elementwise y = f(x), with PyTorch's definitions
//! and its conventions at the kinks (each doc comment says which). As in
//! `unary.rs`, each op states f and f′ together; ops with two constants keep
//! them in their backward closure.

use super::reduce::graph_one;
use crate::tape::one;
use crate::{Float, Var};
use std::f64::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI};

/// 1/√(2π), the standard normal density at 0.
const INV_SQRT_2PI: f64 = FRAC_2_SQRT_PI * FRAC_1_SQRT_2 * 0.5;
/// √(2/π), the scale inside the tanh approximation of GELU.
const SQRT_2_OVER_PI: f64 = std::f64::consts::SQRT_2 * FRAC_2_SQRT_PI * 0.5;
/// The cubic coefficient of the tanh approximation of GELU.
const GELU_KAPPA: f64 = 0.044715;

/// σ(x) = 1/(1 + e⁻ˣ) without overflow.
#[inline(always)]
fn sigmoid<T: Float>(x: T) -> T {
    if x >= T::ZERO {
        T::ONE / (T::ONE + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::ONE + e)
    }
}

impl<'t, T: Float> Var<'t, T> {
    /// Records y = f(x) with local derivative `df(x, y)`, both of which may
    /// capture constants (the derivative lives in a boxed closure).
    /// `dxv(g, x)` is the gradient g·f′ as `Var` ops (for gradients of gradients).
    #[inline]
    fn unary_closure<G>(
        self,
        op: &'static str,
        f: impl Fn(T) -> T + Sync,
        df: impl Fn(T, T) -> T + Sync + 'static,
        dxv: G,
    ) -> Var<'t, T>
    where
        G: for<'v> Fn(Var<'v, T>, Var<'v, T>) -> Var<'v, T> + 'static,
    {
        let y = self.tape.with_value(self.id, |x| x.par_map(f));
        self.tape.record_differentiable(
            op,
            y,
            &[self],
            move |ctx| one(ctx.grad.grad_map(ctx.inputs[0], ctx.output, &df)),
            move |ctx| graph_one(dxv(ctx.grad, ctx.inputs[0])),
        )
    }

    /// The error function erf(x) = 2/√π·∫₀ˣ e^(−t²) dt. d/dx = 2/√π·e^(−x²).
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![0.0, 1.0], [2]).unwrap());
    /// let y = x.erf();
    /// assert!((y.value().data()[1] - 0.8427007929497149).abs() < 1e-15);
    /// assert!((y.sum().backward()[x].data()[0] - 2.0 / std::f64::consts::PI.sqrt()).abs() < 1e-15);
    /// ```
    #[track_caller]
    pub fn erf(self) -> Var<'t, T> {
        self.unary(
            "erf",
            T::erf,
            |x, _| T::from_f64(FRAC_2_SQRT_PI) * (-x * x).exp(),
            |g, x, _| g * (x * x).neg().exp() * T::from_f64(FRAC_2_SQRT_PI),
        )
    }

    /// GELU, exact form: y = x·Φ(x) = ½·x·(1 + erf(x/√2)), Φ the standard
    /// normal CDF. d/dx = Φ(x) + x·φ(x), φ(x) = e^(−x²/2)/√(2π).
    ///
    /// Φ is computed as ½·erfc(−x/√2), which keeps its relative accuracy in
    /// the negative tail (where PyTorch's `1 + erf` rounds to 0; the two agree
    /// to far below 1e-10 there).
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![0.0, 1.0], [2]).unwrap());
    /// let y = x.gelu();
    /// assert!((y.value().data()[1] - 0.8413447460685429).abs() < 1e-15);
    /// assert_eq!(y.sum().backward()[x].data()[0], 0.5);
    /// ```
    #[track_caller]
    pub fn gelu(self) -> Var<'t, T> {
        self.unary(
            "gelu",
            |x| T::from_f64(0.5) * x * (-x * T::from_f64(FRAC_1_SQRT_2)).erfc(),
            |x, _| {
                let cdf = T::from_f64(0.5) * (-x * T::from_f64(FRAC_1_SQRT_2)).erfc();
                let pdf = (T::from_f64(-0.5) * x * x).exp() * T::from_f64(INV_SQRT_2PI);
                cdf + x * pdf
            },
            |g, x, _| {
                let half = T::from_f64(0.5);
                let cdf = (x * T::from_f64(FRAC_1_SQRT_2)).erf() * half + half;
                let pdf = (x * x * T::from_f64(-0.5)).exp() * T::from_f64(INV_SQRT_2PI);
                g * (cdf + x * pdf)
            },
        )
    }

    /// GELU, tanh approximation (PyTorch's `approximate='tanh'`):
    /// y = ½·x·(1 + t), t = tanh(u), u = √(2/π)·(x + 0.044715·x³).
    /// d/dx = ½·(1 + t) + ½·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²).
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![0.0, 1.0], [2]).unwrap());
    /// let y = x.gelu_tanh();
    /// assert!((y.value().data()[1] - 0.8411919906082768).abs() < 1e-15);
    /// assert_eq!(y.sum().backward()[x].data()[0], 0.5);
    /// ```
    #[track_caller]
    pub fn gelu_tanh(self) -> Var<'t, T> {
        self.unary(
            "gelu_tanh",
            |x| {
                let u = T::from_f64(SQRT_2_OVER_PI) * (x + T::from_f64(GELU_KAPPA) * x * x * x);
                T::from_f64(0.5) * x * (T::ONE + u.tanh())
            },
            |x, _| {
                let x2 = x * x;
                let u = T::from_f64(SQRT_2_OVER_PI) * (x + T::from_f64(GELU_KAPPA) * x2 * x);
                let t = u.tanh();
                let sech2 = T::ONE - t * t;
                // sech² is exactly 0 far out; skip the factor (x² may be infinite there).
                let slope = if sech2 == T::ZERO {
                    T::ZERO
                } else {
                    T::from_f64(0.5)
                        * x
                        * sech2
                        * T::from_f64(SQRT_2_OVER_PI)
                        * (T::ONE + T::from_f64(3.0 * GELU_KAPPA) * x2)
                };
                T::from_f64(0.5) * (T::ONE + t) + slope
            },
            |g, x, _| {
                let (half, c) = (T::from_f64(0.5), T::from_f64(SQRT_2_OVER_PI));
                let x2 = x * x;
                let t = ((x + x2 * x * T::from_f64(GELU_KAPPA)) * c).tanh();
                let sech2 = (t * t).rsub_scalar(T::ONE);
                let du = x2 * T::from_f64(3.0 * GELU_KAPPA) + T::ONE;
                g * ((t + T::ONE) * half + x * sech2 * du * (half * c))
            },
        )
    }

    /// SiLU (swish): y = x·σ(x). d/dx = σ(x)·(1 + x·(1 − σ(x))).
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![0.0, -1000.0], [2]).unwrap());
    /// let y = x.silu();
    /// assert_eq!(y.value().data(), &[0.0, 0.0]);
    /// assert_eq!(y.sum().backward()[x].data(), &[0.5, 0.0]);
    /// ```
    #[track_caller]
    pub fn silu(self) -> Var<'t, T> {
        self.unary(
            "silu",
            |x| x * sigmoid(x),
            |x, _| {
                let s = sigmoid(x);
                s * (T::ONE + x * (T::ONE - s))
            },
            |g, x, _| {
                let s = x.sigmoid();
                g * s * (x * s.rsub_scalar(T::ONE) + T::ONE)
            },
        )
    }

    /// Softplus: y = ln(1 + e^(βx))/β, and y = x where βx > threshold (PyTorch's
    /// rule; its defaults are β = 1, threshold = 20). d/dx = σ(βx), and 1 where
    /// βx > threshold. Computed as (max(βx, 0) + ln(1 + e^(−|βx|)))/β, which
    /// does not overflow whatever the threshold.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![0.0, 30.0], [2]).unwrap());
    /// let y = x.softplus(1.0, 20.0);
    /// assert_eq!(y.value().data(), &[2f64.ln(), 30.0]);
    /// assert_eq!(y.sum().backward()[x].data(), &[0.5, 1.0]);
    /// ```
    #[track_caller]
    pub fn softplus(self, beta: f64, threshold: f64) -> Var<'t, T> {
        let (beta, threshold) = (T::from_f64(beta), T::from_f64(threshold));
        self.unary_closure(
            "softplus",
            move |x| {
                let bx = beta * x;
                if bx > threshold {
                    x
                } else {
                    (bx.max(T::ZERO) + (-bx.abs()).exp().ln_1p()) / beta
                }
            },
            move |x, _| {
                let bx = beta * x;
                if bx > threshold { T::ONE } else { sigmoid(bx) }
            },
            move |g, x| {
                let above = x.constant_map(|x| {
                    if beta * x > threshold {
                        T::ONE
                    } else {
                        T::ZERO
                    }
                });
                let below = x.constant_map(|x| {
                    if beta * x > threshold {
                        T::ZERO
                    } else {
                        T::ONE
                    }
                });
                g * ((x * beta).sigmoid() * below + above)
            },
        )
    }

    /// ELU: y = x for x > 0, α·(eˣ − 1) for x ≤ 0. d/dx = 1 for x > 0,
    /// α·eˣ for x ≤ 0 (so α at 0, as PyTorch).
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![0.0, 2.0], [2]).unwrap());
    /// let y = x.elu(0.5);
    /// assert_eq!(y.value().data(), &[0.0, 2.0]);
    /// assert_eq!(y.sum().backward()[x].data(), &[0.5, 1.0]);
    /// ```
    #[track_caller]
    pub fn elu(self, alpha: f64) -> Var<'t, T> {
        self.unary_with(
            "elu",
            T::from_f64(alpha),
            |x, alpha| if x <= T::ZERO { alpha * x.exp_m1() } else { x },
            |x, _, alpha| {
                if x <= T::ZERO {
                    alpha * x.exp()
                } else {
                    T::ONE
                }
            },
            |g, x, _, alpha| {
                let le = x.constant_map(|x| if x <= T::ZERO { T::ONE } else { T::ZERO });
                let gt = x.constant_map(|x| if x <= T::ZERO { T::ZERO } else { T::ONE });
                g * (x.exp() * alpha * le + gt)
            },
        )
    }

    /// Hardtanh: x clamped to [min, max]. d/dx = 1 for min < x < max, else 0:
    /// at x = min or x = max the gradient is 0 (PyTorch's `hardtanh_backward`),
    /// and a NaN input passes both value and gradient through. Panics if
    /// min > max.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![-2.0, -1.0, 0.5, 3.0], [4]).unwrap());
    /// let y = x.hardtanh(-1.0, 1.0);
    /// assert_eq!(y.value().data(), &[-1.0, -1.0, 0.5, 1.0]);
    /// assert_eq!(y.sum().backward()[x].data(), &[0.0, 0.0, 1.0, 0.0]);
    /// ```
    #[track_caller]
    pub fn hardtanh(self, min: f64, max: f64) -> Var<'t, T> {
        assert!(min <= max, "hardtanh: min {min} is greater than max {max}");
        let (lo, hi) = (T::from_f64(min), T::from_f64(max));
        self.unary_closure(
            "hardtanh",
            move |x| {
                if x < lo {
                    lo
                } else if x > hi {
                    hi
                } else {
                    x
                }
            },
            move |x, _| {
                if x <= lo || x >= hi { T::ZERO } else { T::ONE }
            },
            move |g, x| g * x.constant_map(|x| if x <= lo || x >= hi { T::ZERO } else { T::ONE }),
        )
    }

    /// Clamps x to [min, max]: y = min(max(x, min), max) (so y = max
    /// everywhere if min > max, as `torch.clamp`). d/dx = 1 for min < x < max,
    /// else 0: `torch.clamp` with scalar bounds gives 0 at x = min and x = max
    /// too, and a NaN input (whose value passes through) gets gradient 0.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![-2.0, 0.0, 0.5, 1.0], [4]).unwrap());
    /// let y = x.clamp(0.0, 1.0);
    /// assert_eq!(y.value().data(), &[0.0, 0.0, 0.5, 1.0]);
    /// assert_eq!(y.sum().backward()[x].data(), &[0.0, 0.0, 1.0, 0.0]);
    /// ```
    #[track_caller]
    pub fn clamp(self, min: f64, max: f64) -> Var<'t, T> {
        let (lo, hi) = (T::from_f64(min), T::from_f64(max));
        self.unary_closure(
            "clamp",
            move |x| {
                let y = if x < lo { lo } else { x };
                if y > hi { hi } else { y }
            },
            move |x, _| {
                if x > lo && x < hi { T::ONE } else { T::ZERO }
            },
            move |g, x| g * x.constant_map(|x| if x > lo && x < hi { T::ONE } else { T::ZERO }),
        )
    }

    /// |x|. d/dx = sign(x), and 0 at x = 0 (PyTorch's `sgn`); NaN for NaN.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![-2.0, 0.0, 3.0], [3]).unwrap());
    /// let y = x.abs();
    /// assert_eq!(y.value().data(), &[2.0, 0.0, 3.0]);
    /// assert_eq!(y.sum().backward()[x].data(), &[-1.0, 0.0, 1.0]);
    /// ```
    #[track_caller]
    pub fn abs(self) -> Var<'t, T> {
        fn sign<T: Float>(x: T) -> T {
            if x > T::ZERO {
                T::ONE
            } else if x < T::ZERO {
                -T::ONE
            } else if x == T::ZERO {
                T::ZERO
            } else {
                x
            }
        }
        self.unary(
            "abs",
            T::abs,
            |x, _| sign(x),
            |g, x, _| g * x.constant_map(sign),
        )
    }
}
