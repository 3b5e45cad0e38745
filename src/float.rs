//! The [`Float`] trait: the element types a [`Tensor`](crate::Tensor) can hold (`f32`, `f64`).

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

/// A floating-point element type: implemented for `f32` and `f64`.
///
/// A small trait of our own (no `num-traits`): the arithmetic, the handful of
/// transcendental functions the ops need, conversions to and from `f64`, and
/// the matrix-multiply kernel for the type.
///
/// ```
/// use tapegrad::Float;
/// fn half<T: Float>(x: T) -> T { x * T::from_f64(0.5) }
/// assert_eq!(half(3.0f32), 1.5);
/// assert_eq!(half(3.0f64), 1.5);
/// ```
pub trait Float:
    Copy
    + Send
    + Sync
    + 'static
    + Debug
    + Display
    + Default
    + PartialEq
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// Positive infinity.
    const INFINITY: Self;
    /// Negative infinity.
    const NEG_INFINITY: Self;
    /// Machine epsilon.
    const EPSILON: Self;
    /// The type's name (`"f32"` or `"f64"`), for messages and file headers.
    const NAME: &'static str;

    /// Converts from `f64` (rounding for `f32`).
    fn from_f64(v: f64) -> Self;
    /// Converts to `f64` (exact).
    fn to_f64(self) -> f64;
    /// Converts from `usize`.
    fn from_usize(v: usize) -> Self {
        Self::from_f64(v as f64)
    }
    /// eˣ.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// xʸ.
    fn powf(self, y: Self) -> Self;
    /// |x|.
    fn abs(self) -> Self;
    /// The larger of two values (NaN-ignoring, like `f32::max`).
    fn max(self, other: Self) -> Self;
    /// The smaller of two values (NaN-ignoring, like `f32::min`).
    fn min(self, other: Self) -> Self;
    /// Neither NaN nor infinite.
    fn is_finite(self) -> bool;
    /// Not a number.
    fn is_nan(self) -> bool;
    /// `C = alpha·A·B + beta·C` for strided row-major matrices; see [`crate::gemm`].
    #[allow(clippy::too_many_arguments)]
    #[doc(hidden)]
    fn gemm(
        m: usize,
        n: usize,
        k: usize,
        alpha: Self,
        a: &[Self],
        rsa: usize,
        csa: usize,
        b: &[Self],
        rsb: usize,
        csb: usize,
        beta: Self,
        c: &mut [Self],
        ldc: usize,
    );
}

macro_rules! impl_float {
    ($t:ident, $gemm:path) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const INFINITY: Self = $t::INFINITY;
            const NEG_INFINITY: Self = $t::NEG_INFINITY;
            const EPSILON: Self = $t::EPSILON;
            const NAME: &'static str = stringify!($t);
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                $t::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                $t::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                $t::sqrt(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                $t::tanh(self)
            }
            #[inline(always)]
            fn powf(self, y: Self) -> Self {
                $t::powf(self, y)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                $t::abs(self)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                $t::max(self, other)
            }
            #[inline(always)]
            fn min(self, other: Self) -> Self {
                $t::min(self, other)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                $t::is_finite(self)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                $t::is_nan(self)
            }
            #[inline]
            fn gemm(
                m: usize,
                n: usize,
                k: usize,
                alpha: Self,
                a: &[Self],
                rsa: usize,
                csa: usize,
                b: &[Self],
                rsb: usize,
                csb: usize,
                beta: Self,
                c: &mut [Self],
                ldc: usize,
            ) {
                $gemm(m, n, k, alpha, a, rsa, csa, b, rsb, csb, beta, c, ldc)
            }
        }
    };
}

impl_float!(f32, crate::gemm::sgemm);
impl_float!(f64, crate::gemm::dgemm);
