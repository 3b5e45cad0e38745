//! The one-axis maps of the two Winograd variants, F(2×2, 3×3) and
//! F(4×4, 3×3) (Lavin and Gray's matrices; interpolation points 0, ±1, ∞ and
//! 0, ±1, ±2, ∞).
//!
//! A 2-D transform is its one-axis map down each column, then across each
//! row: `Bᵀ d B`, `G g Gᵀ`, `Aᵀ m A`. The backward pass also uses the
//! adjoints: `A` (the gradient of the products from that of the outputs) and
//! `Gᵀ` (of the kernel from that of its transform).

use super::lanes::{Arith, OneAxis};

/// A variant F(TILE×TILE, 3×3): tiles of `TILE` output pixels along each
/// axis, over `SPAN = TILE + 2` input pixels, with its one-axis maps.
pub(super) trait Variant<const TILE: usize, const SPAN: usize> {
    /// `Bᵀ`: the input under a tile to its transform.
    type Bt: OneAxis<SPAN, SPAN>;
    /// `B`, the adjoint of `Bᵀ`.
    type B: OneAxis<SPAN, SPAN>;
    /// `Aᵀ`: the products to the tile's outputs.
    type At: OneAxis<SPAN, TILE>;
    /// `A`, the adjoint of `Aᵀ`.
    type A: OneAxis<TILE, SPAN>;
    /// `G`: the kernel to its transform.
    type G: OneAxis<3, SPAN>;
    /// `Gᵀ`, the adjoint of `G`.
    type Gt: OneAxis<SPAN, 3>;
}

/// Defines a variant: its type, one type per one-axis map (each calling its
/// function), and the `Variant` impl that names them.
macro_rules! variant {
    (
        $(#[$doc:meta])* $name:ident<$tile:literal, $span:literal> {
            Bt: $bt:ident = $fbt:ident,
            B: $b:ident = $fb:ident,
            At: $at:ident = $fat:ident,
            A: $a:ident = $fa:ident,
            G: $g:ident = $fg:ident,
            Gt: $gt:ident = $fgt:ident $(,)?
        }
    ) => {
        $(#[$doc])*
        pub(super) struct $name;

        impl Variant<$tile, $span> for $name {
            type Bt = $bt;
            type B = $b;
            type At = $at;
            type A = $a;
            type G = $g;
            type Gt = $gt;
        }

        one_axis!($bt: $span -> $span = $fbt);
        one_axis!($b: $span -> $span = $fb);
        one_axis!($at: $span -> $tile = $fat);
        one_axis!($a: $tile -> $span = $fa);
        one_axis!($g: 3 -> $span = $fg);
        one_axis!($gt: $span -> 3 = $fgt);
    };
}

macro_rules! one_axis {
    ($name:ident: $n:literal -> $k:literal = $f:ident) => {
        #[doc = concat!("[`", stringify!($f), "`] as a type.")]
        pub(super) struct $name;
        impl OneAxis<$n, $k> for $name {
            #[inline(always)]
            fn apply<V: Arith>(x: [V; $n]) -> [V; $k] {
                $f(x)
            }
        }
    };
}

variant! {
    /// F(2×2, 3×3): 16 products per 4 outputs (2.25× fewer multiplications
    /// than the direct 36).
    F2<2, 4> { Bt: Bt2 = bt2, B: B2 = b2, At: At2 = at2, A: A2 = a2, G: G2 = g2, Gt: Gt2 = gt2 }
}

/// `Bᵀ d = (d0 − d2, d1 + d2, d2 − d1, d1 − d3)`.
#[inline(always)]
fn bt2<V: Arith>([d0, d1, d2, d3]: [V; 4]) -> [V; 4] {
    [d0 - d2, d1 + d2, d2 - d1, d1 - d3]
}

/// `B y = (y0, y1 − y2 + y3, y1 + y2 − y0, −y3)`, the transpose of [`bt2`].
#[inline(always)]
fn b2<V: Arith>([y0, y1, y2, y3]: [V; 4]) -> [V; 4] {
    [y0, y1 - y2 + y3, y1 + y2 - y0, V::splat(0.0) - y3]
}

/// `Aᵀ m = (m0 + m1 + m2, m1 − m2 − m3)`.
#[inline(always)]
fn at2<V: Arith>([m0, m1, m2, m3]: [V; 4]) -> [V; 2] {
    [m0 + m1 + m2, m1 - m2 - m3]
}

/// `A y = (y0, y0 + y1, y0 − y1, −y1)`.
#[inline(always)]
fn a2<V: Arith>([y0, y1]: [V; 2]) -> [V; 4] {
    [y0, y0 + y1, y0 - y1, V::splat(0.0) - y1]
}

/// `G g = (g0, (g0 + g1 + g2)/2, (g0 − g1 + g2)/2, g2)`.
#[inline(always)]
fn g2<V: Arith>([g0, g1, g2]: [V; 3]) -> [V; 4] {
    let half = V::splat(0.5);
    let s = g0 + g2;
    [g0, (s + g1) * half, (s - g1) * half, g2]
}

/// `Gᵀ u = (u0 + (u1 + u2)/2, (u1 − u2)/2, (u1 + u2)/2 + u3)`.
#[inline(always)]
fn gt2<V: Arith>([u0, u1, u2, u3]: [V; 4]) -> [V; 3] {
    let half = V::splat(0.5);
    let (s, d) = ((u1 + u2) * half, (u1 - u2) * half);
    [u0 + s, d, s + u3]
}

variant! {
    /// F(4×4, 3×3): 36 products per 16 outputs (4× fewer multiplications
    /// than the direct 144), for larger constants in the transforms (rounding
    /// errors of a few units in the last place more than F(2×2, 3×3)).
    F4<4, 6> { Bt: Bt4 = bt4, B: B4 = b4, At: At4 = at4, A: A4 = a4, G: G4 = g4, Gt: Gt4 = gt4 }
}

/// `Bᵀ d`, rows `(4, 0, −5, 0, 1, 0)`, `(0, −4, −4, 1, 1, 0)`,
/// `(0, 4, −4, −1, 1, 0)`, `(0, −2, −1, 2, 1, 0)`, `(0, 2, −1, −2, 1, 0)`,
/// `(0, 4, 0, −5, 0, 1)`.
#[inline(always)]
fn bt4<V: Arith>([d0, d1, d2, d3, d4, d5]: [V; 6]) -> [V; 6] {
    let (two, four, five) = (V::splat(2.0), V::splat(4.0), V::splat(5.0));
    let (s12, d12) = (d1 + d2, d1 - d2);
    let d31 = d3 - d1;
    [
        four * d0 - five * d2 + d4,
        d4 + d3 - four * s12,
        d4 - d3 + four * d12,
        d4 - d2 + two * d31,
        d4 - d2 - two * d31,
        four * d1 - five * d3 + d5,
    ]
}

/// `B y`, the transpose of [`bt4`].
#[inline(always)]
fn b4<V: Arith>([y0, y1, y2, y3, y4, y5]: [V; 6]) -> [V; 6] {
    let (two, four, five) = (V::splat(2.0), V::splat(4.0), V::splat(5.0));
    let (s12, d12) = (y1 + y2, y1 - y2);
    let (s34, d34) = (y3 + y4, y3 - y4);
    [
        four * y0,
        four * (y5 - d12) - two * d34,
        V::splat(0.0) - five * y0 - four * s12 - s34,
        d12 + two * d34 - five * y5,
        y0 + s12 + s34,
        y5,
    ]
}

/// `Aᵀ m`, rows `(1, 1, 1, 1, 1, 0)`, `(0, 1, −1, 2, −2, 0)`,
/// `(0, 1, 1, 4, 4, 0)`, `(0, 1, −1, 8, −8, 1)`.
#[inline(always)]
fn at4<V: Arith>([m0, m1, m2, m3, m4, m5]: [V; 6]) -> [V; 4] {
    let (two, four, eight) = (V::splat(2.0), V::splat(4.0), V::splat(8.0));
    let (s12, d12) = (m1 + m2, m1 - m2);
    let (s34, d34) = (m3 + m4, m3 - m4);
    [
        m0 + s12 + s34,
        d12 + two * d34,
        s12 + four * s34,
        d12 + eight * d34 + m5,
    ]
}

/// `A y`, the transpose of [`at4`].
#[inline(always)]
fn a4<V: Arith>([y0, y1, y2, y3]: [V; 4]) -> [V; 6] {
    let (two, four, eight) = (V::splat(2.0), V::splat(4.0), V::splat(8.0));
    let (e, o) = (y0 + y2, y1 + y3);
    let (e4, o2) = (y0 + four * y2, two * y1 + eight * y3);
    [y0, e + o, e - o, e4 + o2, e4 - o2, y3]
}

/// `G g`, rows `(1/4, 0, 0)`, `(−1/6, −1/6, −1/6)`, `(−1/6, 1/6, −1/6)`,
/// `(1/24, 1/12, 1/6)`, `(1/24, −1/12, 1/6)`, `(0, 0, 1)`.
#[inline(always)]
fn g4<V: Arith>([g0, g1, g2]: [V; 3]) -> [V; 6] {
    let (half, quarter, sixth) = (V::splat(0.5), V::splat(0.25), V::splat(1.0 / 6.0));
    let s = g0 + g2;
    let (q0, h1) = (g0 * quarter, g1 * half);
    [
        q0,
        (s + g1) * V::splat(-1.0 / 6.0),
        (g1 - s) * sixth,
        (q0 + h1 + g2) * sixth,
        (q0 - h1 + g2) * sixth,
        g2,
    ]
}

/// `Gᵀ u`, the transpose of [`g4`].
#[inline(always)]
fn gt4<V: Arith>([u0, u1, u2, u3, u4, u5]: [V; 6]) -> [V; 3] {
    let (quarter, sixth) = (V::splat(0.25), V::splat(1.0 / 6.0));
    let (twelfth, twentyfourth) = (V::splat(1.0 / 12.0), V::splat(1.0 / 24.0));
    let (s12, d21) = (u1 + u2, u2 - u1);
    let (s34, d34) = (u3 + u4, u3 - u4);
    [
        u0 * quarter - s12 * sixth + s34 * twentyfourth,
        d21 * sixth + d34 * twelfth,
        (s34 - s12) * sixth + u5,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// ⟨Aᵀ m, y⟩ = ⟨m, A y⟩, ⟨Bᵀ d, y⟩ = ⟨d, B y⟩ and ⟨G g, u⟩ = ⟨g, Gᵀ u⟩
    /// for both variants.
    fn adjoints<W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>() {
        let m: [f64; SPAN] = std::array::from_fn(|i| (i as f64 * 0.7).sin() + 0.3);
        let y: [f64; TILE] = std::array::from_fn(|i| (i as f64 * 1.3).cos() - 0.2);
        let k = [0.8, -1.5, 0.35];
        let lhs = dot(&<W::At as OneAxis<SPAN, TILE>>::apply(m), &y);
        assert!((lhs - dot(&m, &<W::A as OneAxis<TILE, SPAN>>::apply(y))).abs() < 1e-12);
        // Each unit vector, so that every entry of B is checked.
        for e in 0..SPAN {
            let d: [f64; SPAN] = std::array::from_fn(|i| f64::from(u8::from(i == e)));
            let lhs = dot(&<W::Bt as OneAxis<SPAN, SPAN>>::apply(d), &m);
            let rhs = dot(&d, &<W::B as OneAxis<SPAN, SPAN>>::apply(m));
            assert!((lhs - rhs).abs() < 1e-12, "B row {e}: {lhs} vs {rhs}");
        }
        let lhs = dot(&<W::G as OneAxis<3, SPAN>>::apply(k), &m);
        assert!((lhs - dot(&k, &<W::Gt as OneAxis<SPAN, 3>>::apply(m))).abs() < 1e-12);
    }

    #[test]
    fn adjoints_are_transposes() {
        adjoints::<F2, 2, 4>();
        adjoints::<F4, 4, 6>();
    }

    /// One axis of the minimal filtering: `Aᵀ [(G g) ⊙ (Bᵀ d)]` is the valid
    /// correlation of `d` (SPAN values) with `g` (3), TILE outputs.
    fn one_axis_is_a_correlation<W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>() {
        let d: [f64; SPAN] = std::array::from_fn(|i| ((i * 7) % 11) as f64 - 3.0);
        let k = [0.5, -1.25, 2.0];
        let u = <W::G as OneAxis<3, SPAN>>::apply(k);
        let v = <W::Bt as OneAxis<SPAN, SPAN>>::apply(d);
        let y = <W::At as OneAxis<SPAN, TILE>>::apply(std::array::from_fn(|i| u[i] * v[i]));
        for (i, &yi) in y.iter().enumerate() {
            let want = d[i] * k[0] + d[i + 1] * k[1] + d[i + 2] * k[2];
            assert!((yi - want).abs() < 1e-12, "{i}: {yi} vs {want}");
        }
    }

    #[test]
    fn minimal_filtering_is_a_correlation() {
        one_axis_is_a_correlation::<F2, 2, 4>();
        one_axis_is_a_correlation::<F4, 4, 6>();
    }
}
