//! Elementwise one-axis transforms over long rows, a chunk of [`LANES`]
//! values at a time.
//!
//! Each Winograd transform is a small fixed linear map applied along one
//! axis of many tiles at once: `K` output rows from `N` input rows, the same
//! map at every position. [`transform`] loads a chunk of every input row
//! into local arrays ([`Lanes`]), applies the map to whole chunks, and
//! stores them: with no aliasing between local arrays to worry about, the
//! compiler turns each operation into one vector instruction.

use crate::Float;
use std::ops::{Add, Mul, Sub};

/// The arithmetic of the one-axis maps: on scalars (tests) or on [`Lanes`].
pub(super) trait Arith:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self>
{
    fn splat(x: f64) -> Self;
}

macro_rules! scalar_arith {
    ($($t:ty),*) => {$(
        impl Arith for $t {
            #[inline(always)]
            fn splat(x: f64) -> Self {
                <$t as Float>::from_f64(x)
            }
        }
    )*};
}
scalar_arith!(f32, f64);

/// Values per chunk of [`transform`]: one 256-bit vector of `f32`.
pub(super) const LANES: usize = 8;

/// [`LANES`] values side by side. Arithmetic on a pair is a fixed-length
/// elementwise loop on local arrays.
#[derive(Clone, Copy)]
pub(super) struct Lanes<T>([T; LANES]);

macro_rules! lanes_op {
    ($trait:ident, $method:ident, $op:tt) => {
        #[allow(clippy::assign_op_pattern)]
        impl<T: Float> $trait for Lanes<T> {
            type Output = Self;
            #[inline(always)]
            fn $method(self, rhs: Self) -> Self {
                let mut r = self.0;
                for (a, b) in r.iter_mut().zip(rhs.0) {
                    *a = *a $op b;
                }
                Lanes(r)
            }
        }
    };
}
lanes_op!(Add, add, +);
lanes_op!(Sub, sub, -);
lanes_op!(Mul, mul, *);

impl<T: Float> Arith for Lanes<T> {
    #[inline(always)]
    fn splat(x: f64) -> Self {
        Lanes([T::from_f64(x); LANES])
    }
}

/// A one-axis map, `N` values in and `K` out, as a type: [`transform`] calls
/// it statically, so it is inlined into the chunk loop.
pub(super) trait OneAxis<const N: usize, const K: usize> {
    fn apply<V: Arith>(x: [V; N]) -> [V; K];
}

/// `out[at[k] + q] = F(inp[·][q])[k]` for `q < n`: the map `F` elementwise
/// over `N` input rows into `K` windows of `out`, a chunk of [`LANES`] at a
/// time. It runs on whole chunks: past `n`, up to the next multiple of
/// [`LANES`], it reads values (the inputs must be that long) and writes
/// values that are not used: into room the caller leaves in `out`, or into
/// the start of a window the caller writes again afterwards (the next tile
/// row's, the next part's). The windows, whole chunks long, must be in
/// ascending order and disjoint: every row is cut into chunks once, before
/// the loop, so the loop itself indexes without bounds checks.
#[inline(always)]
pub(super) fn transform<T: Float, F: OneAxis<N, K>, const N: usize, const K: usize>(
    inp: [&[T]; N],
    out: &mut [T],
    at: [usize; K],
    n: usize,
) {
    let chunks = n.div_ceil(LANES);
    let len = chunks * LANES;
    let mut x: [&[[T; LANES]]; N] = [&[]; N];
    for (xj, r) in x.iter_mut().zip(inp) {
        *xj = r[..len].as_chunks().0;
    }
    let mut y: [&mut [[T; LANES]]; K] = std::array::from_fn(|_| Default::default());
    let (mut rest, mut end) = (out, 0);
    for (yk, &a) in y.iter_mut().zip(&at) {
        let gap = a
            .checked_sub(end)
            .expect("transform: windows out of order or overlapping");
        let (w, r) = std::mem::take(&mut rest)[gap..].split_at_mut(len);
        (*yk, rest, end) = (w.as_chunks_mut().0, r, a + len);
    }
    for ch in 0..chunks {
        let mut xv = [Lanes([T::ZERO; LANES]); N];
        for (xi, r) in xv.iter_mut().zip(&x) {
            xi.0 = r[ch];
        }
        let v = F::apply(xv);
        for (yk, vk) in y.iter_mut().zip(&v) {
            yk[ch] = vk.0;
        }
    }
}

/// [`transform`] over `rows` rows of windows at once: `out[at[k] +
/// u·out_step + q] = F(inp[·][u·in_step + q])[k]` for `u < rows`, `q < n`,
/// row by row in order (so a row's last chunk may run into the next row's
/// start, written again after). For short rows (a tile row of tiles, one or
/// two chunks), where cutting every window of every row would cost more
/// than the map itself: the bounds are checked once, for the whole call.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn transform_rows<T: Float, F: OneAxis<N, K>, const N: usize, const K: usize>(
    inp: [&[T]; N],
    in_step: usize,
    out: &mut [T],
    at: [usize; K],
    out_step: usize,
    rows: usize,
    n: usize,
) {
    if rows == 0 || n == 0 {
        return;
    }
    let len = n.next_multiple_of(LANES);
    // The end of the last row's last chunk, from a window's start.
    let span = |step: usize| {
        (rows - 1)
            .checked_mul(step)
            .and_then(|s| s.checked_add(len))
            .expect("transform_rows: windows too long")
    };
    let (in_span, out_span) = (span(in_step), span(out_step));
    let mut x: [*const T; N] = [std::ptr::null(); N];
    for (p, r) in x.iter_mut().zip(inp) {
        *p = r[..in_span].as_ptr();
    }
    for &a in &at {
        assert!(
            a.checked_add(out_span).is_some_and(|e| e <= out.len()),
            "transform_rows: window past the output"
        );
    }
    let o = out.as_mut_ptr();
    for u in 0..rows {
        let (ui, uo) = (u * in_step, u * out_step);
        for base in (0..n).step_by(LANES) {
            let mut xv = [Lanes([T::ZERO; LANES]); N];
            for (xi, &p) in xv.iter_mut().zip(&x) {
                // SAFETY: `base + LANES ≤ len`, so the chunk ends by
                // `(rows − 1)·in_step + len = in_span`, within the input
                // row `p` points to (sliced to `in_span` above).
                xi.0 = unsafe { p.add(ui + base).cast::<[T; LANES]>().read_unaligned() };
            }
            let y = F::apply(xv);
            for (&a, yk) in at.iter().zip(&y) {
                // SAFETY: as for the inputs, the chunk ends by
                // `a + out_span ≤ out.len()` (asserted above); `o` is the
                // only pointer into `out` while it is written.
                unsafe {
                    o.add(a + uo + base)
                        .cast::<[T; LANES]>()
                        .write_unaligned(yk.0)
                };
            }
        }
    }
}

/// `K` windows of `len` values of `v`, at `f(0)`, `f(1)`, ….
#[inline(always)]
pub(super) fn windows<T, const K: usize>(
    v: &[T],
    len: usize,
    f: impl Fn(usize) -> usize,
) -> [&[T]; K] {
    let mut w: [&[T]; K] = [&[]; K];
    for (i, w) in w.iter_mut().enumerate() {
        *w = &v[f(i)..][..len];
    }
    w
}

/// `[f(0), f(1), …]`.
#[inline(always)]
pub(super) fn offsets<const K: usize>(f: impl Fn(usize) -> usize) -> [usize; K] {
    let mut at = [0; K];
    for (i, a) in at.iter_mut().enumerate() {
        *a = f(i);
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    struct SumDiff;
    impl OneAxis<2, 2> for SumDiff {
        fn apply<V: Arith>([a, b]: [V; 2]) -> [V; 2] {
            [a + b, a - b]
        }
    }

    /// Every position of every row is mapped, into the right windows; a
    /// row's last chunk may run into the next row, which writes it again,
    /// but nothing runs past the last row's last chunk.
    #[test]
    fn transform_rows_maps_every_row() {
        for (n, rows, in_step, out_step) in [
            (1usize, 3usize, 9usize, 8usize),
            (8, 2, 9, 8),
            (9, 3, 10, 9),
            (5, 1, 0, 0),
        ] {
            let len = n.next_multiple_of(LANES);
            let in_len = (rows - 1) * in_step + len;
            let a: Vec<f64> = (0..in_len).map(|i| i as f64).collect();
            let b: Vec<f64> = (0..in_len).map(|i| (i * i) as f64).collect();
            let out_span = (rows - 1) * out_step + len;
            let mut out = vec![-1.0; 2 * out_span + 3];
            transform_rows::<f64, SumDiff, 2, 2>(
                [&a, &b],
                in_step,
                &mut out,
                [0, out_span],
                out_step,
                rows,
                n,
            );
            for u in 0..rows {
                for q in 0..n {
                    let (i, o) = (u * in_step + q, u * out_step + q);
                    assert_eq!(out[o], a[i] + b[i]);
                    assert_eq!(out[out_span + o], a[i] - b[i]);
                }
            }
            assert!(out[2 * out_span..].iter().all(|&v| v == -1.0));
        }
    }

    /// Every position below `n` is mapped, into the right windows; whole
    /// chunks past `n` may be written, nothing past them.
    #[test]
    fn transform_maps_every_position_into_its_window() {
        for n in [1usize, 7, 8, 9, 20] {
            let len = n.next_multiple_of(LANES);
            let a: Vec<f64> = (0..len).map(|i| i as f64).collect();
            let b: Vec<f64> = (0..len).map(|i| (i * i) as f64).collect();
            let mut out = vec![-1.0; 2 * len + 3];
            transform::<f64, SumDiff, 2, 2>([&a, &b], &mut out, [0, len], n);
            for q in 0..n {
                assert_eq!(out[q], a[q] + b[q]);
                assert_eq!(out[len + q], a[q] - b[q]);
            }
            assert!(out[2 * len..].iter().all(|&v| v == -1.0));
        }
    }
}
