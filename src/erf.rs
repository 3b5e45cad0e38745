//! The error function erf and its complement erfc in `f64`, for the exact GELU.
//!
//! Piecewise Chebyshev approximations, evaluated with Clenshaw's recurrence;
//! the coefficients come from `scripts/gen_erf.py` (50-digit interpolation,
//! cut at 2e-18 of the function's size on the interval):
//!
//! - `|x| < 0.84375`: `erf(x) = x·E(x²)`, `E(t) = erf(√t)/√t`;
//! - `0.84375 ≤ x < 6`: `erfc(x) = exp(−x²)·G(x)`, `G(x) = exp(x²)·erfc(x)`
//!   on four intervals;
//! - `6 ≤ x < 28`: `erfc(x) = exp(−x²)·H(1/x)/x`; beyond, erfc underflows to 0.
//!
//! `exp(−x²)` is taken as `exp(−z²)·exp((z − x)(z + x))` with `z` the upper
//! half of `x`'s bits, so `z²` is exact and the rounding of `x²` (which
//! `exp` would magnify by `x²`) never happens. erf of `|x| ≥ 0.84375` is
//! `±(1 − erfc(|x|))`, erfc of negative `x` is `2 − erfc(−x)`. Against
//! 50-digit values, the error is within a few units in the last place over
//! the whole line (`tests` below; the dense sweep used when writing this had
//! at most 2 ulp for erf and 4 ulp for erfc).

/// A Chebyshev series on `[lo, hi]` (the first coefficient already halved).
struct Cheb {
    lo: f64,
    hi: f64,
    c: &'static [f64],
}

impl Cheb {
    #[inline]
    fn eval(&self, x: f64) -> f64 {
        let w = (2.0 * x - self.lo - self.hi) / (self.hi - self.lo);
        let (mut b1, mut b2) = (0.0, 0.0);
        for &c in self.c[1..].iter().rev() {
            let b0 = c + 2.0 * w * b1 - b2;
            b2 = b1;
            b1 = b0;
        }
        self.c[0] + w * b1 - b2
    }
}

/// erf(x).
pub(crate) fn erf(x: f64) -> f64 {
    let a = x.abs();
    if a < 0.84375 {
        x * ERF_SMALL.eval(x * x)
    } else if a < 6.0 {
        (1.0 - erfc_pos(a)).copysign(x)
    } else if a.is_nan() {
        x
    } else {
        1.0f64.copysign(x)
    }
}

/// erfc(x) = 1 − erf(x), accurate where erf(x) is close to 1.
pub(crate) fn erfc(x: f64) -> f64 {
    if x.abs() < 0.84375 {
        1.0 - x * ERF_SMALL.eval(x * x)
    } else if x > 0.0 {
        erfc_pos(x)
    } else if x < 0.0 {
        2.0 - erfc_pos(-x)
    } else {
        x // NaN
    }
}

/// erfc(x) for x ≥ 0.84375.
#[inline]
fn erfc_pos(x: f64) -> f64 {
    if x >= 28.0 {
        return 0.0;
    }
    let z = f64::from_bits(x.to_bits() & 0xffff_ffff_0000_0000);
    let e = (-z * z).exp() * ((z - x) * (z + x)).exp();
    let table = [&ERFC_1, &ERFC_2, &ERFC_3, &ERFC_4];
    match table.iter().find(|t| x < t.hi) {
        Some(t) => e * t.eval(x),
        None => e * ERFC_TAIL.eval(1.0 / x) / x,
    }
}

const ERF_SMALL: Cheb = Cheb {
    lo: 0.0,
    hi: 0.7119140625,
    c: &[
        1.013242541505039,
        -0.10930584357692305,
        0.0055913999744069956,
        -0.00023126912134735684,
        7.880105794041742e-06,
        -2.2703238525474424e-07,
        5.65333620543378e-09,
        -1.2381848863397487e-10,
        2.4189039932278707e-12,
        -4.263328156280296e-14,
        6.843115083968845e-16,
        -1.0081998091528214e-17,
    ],
};

const ERFC_1: Cheb = Cheb {
    lo: 0.84375,
    hi: 1.5,
    c: &[
        0.3913566652742795,
        -0.07586593519529217,
        0.006581323088657464,
        -0.0005227073817197411,
        3.857976099199978e-05,
        -2.674208238722738e-06,
        1.7545906323204322e-07,
        -1.0963275972999955e-08,
        6.555302241286763e-10,
        -3.765738341728329e-11,
        2.085169271478168e-12,
        -1.11602501913437e-13,
        5.787387391459181e-15,
        -2.913825967442705e-16,
        1.4269261421147166e-17,
        -6.807513108377083e-19,
    ],
};

const ERFC_2: Cheb = Cheb {
    lo: 1.5,
    hi: 2.5,
    c: &[
        0.2607514912711463,
        -0.05488424581819016,
        0.005399803660278792,
        -0.0005015165986088882,
        4.4290221181768035e-05,
        -3.7399388006550433e-06,
        3.0330399634949025e-07,
        -2.370909933804727e-08,
        1.7917464565325043e-09,
        -1.3123858073442695e-10,
        9.337072907254232e-12,
        -6.464561665267422e-13,
        4.3627408963952615e-14,
        -2.874093751408312e-15,
        1.8506451210995282e-16,
        -1.1660765536443181e-17,
        7.197206629507234e-19,
    ],
};

const ERFC_3: Cheb = Cheb {
    lo: 2.5,
    hi: 4.0,
    c: &[
        0.17008220017856512,
        -0.036520514785627234,
        0.003783458700961749,
        -0.0003794134490812505,
        3.692690022594374e-05,
        -3.4957223835851204e-06,
        3.224885907828553e-07,
        -2.903920167622488e-08,
        2.5560460324003925e-09,
        -2.201984729141417e-10,
        1.8586988106620702e-11,
        -1.5388257596550946e-12,
        1.250688261060476e-13,
        -9.987216504330586e-15,
        7.841521227147936e-16,
        -6.057782159657216e-17,
        4.607413883087019e-18,
        -3.4520930528116403e-19,
    ],
};

const ERFC_4: Cheb = Cheb {
    lo: 4.0,
    hi: 6.0,
    c: &[
        0.11277819743166245,
        -0.021913497155272348,
        0.0020915397845687493,
        -0.00019628624819122983,
        1.8126654238718202e-05,
        -1.6483628246572167e-06,
        1.4769699327777977e-07,
        -1.3047490253442588e-08,
        1.136975347104367e-09,
        -9.778180226640498e-11,
        8.303212348062975e-12,
        -6.964650842590714e-13,
        5.772832164827166e-14,
        -4.730148558369874e-15,
        3.832714974411983e-16,
        -3.072023314998772e-17,
        2.4364677192447835e-18,
        -1.9126665070732086e-19,
    ],
};

const ERFC_TAIL: Cheb = Cheb {
    lo: 0.03571428571428571,
    hi: 0.16666666666666666,
    c: &[
        0.5607939856340509,
        -0.0035959390255349594,
        -0.0005497033675996651,
        1.0448958429465958e-05,
        6.493589915852262e-07,
        -3.4148831855914894e-08,
        -7.233517089547105e-10,
        1.1894048030047067e-10,
        -1.497766517314167e-12,
        -3.887660433828687e-13,
        2.1737531756090715e-14,
        8.206751781562208e-16,
        -1.4569353102324466e-16,
        2.942735644119143e-18,
    ],
};

#[cfg(test)]
mod tests {
    use super::{erf, erfc};

    /// (x, erf x, erfc x), from mpmath at 40 digits, rounded to f64.
    const TABLE: [(f64, f64, f64); 25] = [
        (1e-300, 1.1283791670955126e-300, 1.0),
        (1e-10, 1.1283791670955126e-10, 0.999999999887162),
        (0.1, 0.1124629160182849, 0.887537083981715),
        (0.5, 0.5204998778130465, 0.4795001221869535),
        (0.8, 0.7421009647076605, 0.2578990352923395),
        (0.84375, 0.7672256612323416, 0.23277433876765838),
        (0.9, 0.7969082124228322, 0.20309178757716786),
        (1.0, 0.8427007929497149, 0.15729920705028513),
        (1.5, 0.9661051464753108, 0.033894853524689274),
        (2.0, 0.9953222650189527, 0.004677734981047266),
        (2.5, 0.999593047982555, 0.0004069520174449589),
        (3.0, 0.9999779095030014, 2.209049699858544e-05),
        (4.0, 0.9999999845827421, 1.541725790028002e-08),
        (5.0, 0.9999999999984626, 1.537459794428035e-12),
        (5.9, 0.9999999999999999, 7.190409783550478e-17),
        (6.0, 1.0, 2.1519736712498913e-17),
        (8.0, 1.0, 1.1224297172982926e-29),
        (10.0, 1.0, 2.088487583762545e-45),
        (15.0, 1.0, 7.212994172451207e-100),
        (20.0, 1.0, 5.395865611607901e-176),
        (26.0, 1.0, 5.663192408856143e-296),
        (-0.3, -0.3286267594591274, 1.3286267594591274),
        (-1.2, -0.9103139782296353, 1.9103139782296354),
        (-3.5, -0.9999992569016276, 1.9999992569016276),
        (-7.0, -1.0, 2.0),
    ];

    /// Agreement with the 40-digit values to 1e-15, relative (a few ulp), on
    /// every branch and across the branch points, both signs.
    #[test]
    fn erf_and_erfc_match_high_precision_values() {
        for (x, e, c) in TABLE {
            assert!(
                (erf(x) - e).abs() <= 1e-15 * e.abs(),
                "erf({x:e}) = {:e}, want {e:e}",
                erf(x)
            );
            assert!(
                (erfc(x) - c).abs() <= 1e-15 * c,
                "erfc({x:e}) = {:e}, want {c:e}",
                erfc(x)
            );
            assert_eq!(erf(-x), -erf(x), "erf is odd at {x:e}");
        }
    }

    #[test]
    fn special_values() {
        assert_eq!(erf(0.0).to_bits(), 0.0f64.to_bits());
        assert_eq!(erf(-0.0).to_bits(), (-0.0f64).to_bits());
        assert_eq!((erf(f64::INFINITY), erf(f64::NEG_INFINITY)), (1.0, -1.0));
        assert_eq!((erfc(f64::INFINITY), erfc(f64::NEG_INFINITY)), (0.0, 2.0));
        assert_eq!((erfc(30.0), erfc(-30.0)), (0.0, 2.0));
        assert!(erf(f64::NAN).is_nan() && erfc(f64::NAN).is_nan());
        // Continuity at the branch points: one step down in x multiplies
        // erfc by about 1 + 2x·step.
        for b in [0.84375f64, 1.5, 2.5, 4.0, 6.0] {
            let lo = b.next_down();
            let want = erfc(b) * (1.0 + 2.0 * b * (b - lo));
            assert!((erfc(lo) - want).abs() <= 4.0 * f64::EPSILON * want, "{b}");
        }
    }
}
