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
    /// ln(1 + x), accurate for small x.
    fn ln_1p(self) -> Self;
    /// eˣ − 1, accurate for small x.
    fn exp_m1(self) -> Self;
    /// The error function erf(x) = (2/√π) ∫₀ˣ e^(−t²) dt, to a few units in
    /// the last place (`f32` is the `f64` value rounded once).
    fn erf(self) -> Self;
    /// The complementary error function erfc(x) = 1 − erf(x), accurate also
    /// where it is tiny (large positive x).
    fn erfc(self) -> Self;
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
    ($t:ident, $gemm:path, $tanh:path) => {
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
                $tanh(self)
            }
            #[inline(always)]
            fn ln_1p(self) -> Self {
                $t::ln_1p(self)
            }
            #[inline(always)]
            fn exp_m1(self) -> Self {
                $t::exp_m1(self)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                crate::erf::erf(self as f64) as $t
            }
            #[inline(always)]
            fn erfc(self) -> Self {
                crate::erf::erfc(self as f64) as $t
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

impl_float!(f32, crate::gemm::sgemm, tanh_f32);
impl_float!(f64, crate::gemm::dgemm, f64::tanh);

/// `tanh` of an `f32`, evaluated in `f64` and rounded once. It equals
/// `f64::tanh` rounded to `f32` for every `f32` (checked exhaustively, all
/// 2³² bit patterns, once; the test below samples them and sweeps the
/// branch points densely; the platform's `tanhf` differs on ~3 % of them,
/// by one or two units in the last place), and takes about half the time
/// of `tanhf` here (25 against 53 ns per call in a dependent chain, which
/// is what a chain of scalar ops on the tape is):
///
/// - `a = |x| ≥ 1/16`: `tanh a = (e − 1)/(e + 1)`, `e = exp(2a)`; as `e − 1 ≥
///   0.13`, the subtraction costs about 3 of `f64`'s 53 bits;
/// - `a < 1/16`: the odd Taylor series to `a¹¹` (the first term left out,
///   `0.0036·a¹³`, is under `2⁻⁵⁶` of the result);
/// - `a ≥ 9.5`: ±1 (`tanh` rounds to ±1 in `f32` from about 9.011, 13·ln 2,
///   on); NaN stays NaN.
#[inline]
fn tanh_f32(x: f32) -> f32 {
    // NaN fails both comparisons and comes out of `exp` as NaN.
    let a = (x as f64).abs();
    if a >= 9.5 {
        return 1.0f32.copysign(x);
    }
    let t = if a < 0.0625 {
        let a2 = a * a;
        let series = -1.0 / 3.0
            + a2 * (2.0 / 15.0
                + a2 * (-17.0 / 315.0 + a2 * (62.0 / 2835.0 + a2 * (-1382.0 / 155925.0))));
        a + a * a2 * series
    } else {
        let e = (2.0 * a).exp();
        (e - 1.0) / (e + 1.0)
    };
    t.copysign(x as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tanh_f32` is `f64::tanh` rounded to `f32`, across the whole range
    /// (a sweep of bit patterns of both signs) and at the special values.
    #[test]
    fn tanh_f32_is_the_rounded_f64_tanh() {
        let mut bits: u32 = 0;
        while bits < 0x8000_0000 {
            let v = f32::from_bits(bits);
            for x in [v, -v] {
                let want = (x as f64).tanh() as f32;
                let got = tanh_f32(x);
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "tanh({x:e}) = {got:e}, want {want:e}"
                );
            }
            bits += 997;
        }
        assert_eq!(tanh_f32(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(tanh_f32(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(tanh_f32(f32::INFINITY), 1.0);
        assert_eq!(tanh_f32(f32::NEG_INFINITY), -1.0);
        assert!(tanh_f32(f32::NAN).is_nan());
        // Every bit pattern around the two branch points (1/16 and 9.5).
        for (lo, hi) in [(1.0f32 / 32.0, 0.125f32), (9.0, 9.5f32.next_up())] {
            for bits in lo.to_bits()..hi.to_bits() {
                let x = f32::from_bits(bits);
                assert_eq!(tanh_f32(x), (x as f64).tanh() as f32, "{x:e}");
            }
        }
    }
}
