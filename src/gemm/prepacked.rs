//! Products with a small, reused A packed once, and B read in place.
//!
//! A convolution multiplies the same small matrix (its weights, a few dozen
//! rows) by many column blocks, one per block of output pixels. The general
//! driver packs both operands on every call; with so few rows of A, packing
//! B (each packed element then feeds only `m` multiply-adds) costs nearly as
//! much as the arithmetic, and repacking A on every call is wasted work.
//! Here A is packed once into [`PackedA`] (all of `k`, in `MR`-row
//! micro-panels per block of `k`), and B — row-major with unit column stride,
//! as the column matrices and output gradients of a convolution are — is fed
//! to the micro-kernel straight from where it lies, 16 (f32) or 8 (f64)
//! columns at a time. Only a panel that would read past the end of the slice,
//! or past its rows when they are closer than NR apart, is copied
//! (zero-padded) first.
//!
//! The entry points are generic over the element type and dispatch on it:
//! `f32` and `f64` are supported (the types of [`crate::Float`]).

use super::kernel::{Elem, MicroKernel, Portable};

use super::{CView, Engine, MAX_MR, balanced_block};
use std::any::TypeId;

/// The micro-kernel family a [`PackedA`] was packed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    Portable,
}

/// Which kernel runs for element type `T` now, and its `MR` and `kc`.
fn kind_for<T: 'static>() -> (Kind, usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if TypeId::of::<T>() == TypeId::of::<f32>()
        && super::default_path() == super::Path::Auto
        && super::x86::Avx512::detect().is_some()
    {
        return (
            Kind::Avx512,
            super::x86::Avx512F32::MR,
            super::x86::Avx512F32::BLOCKING.kc,
        );
    }
    #[cfg(target_arch = "x86_64")]
    if super::default_path() != super::Path::Portable && super::x86::Avx2Fma::detect().is_some() {
        return if TypeId::of::<T>() == TypeId::of::<f32>() {
            (
                Kind::Avx2,
                super::x86::Avx2F32::MR,
                super::x86::Avx2F32::BLOCKING.kc,
            )
        } else {
            (
                Kind::Avx2,
                super::x86::Avx2F64::MR,
                super::x86::Avx2F64::BLOCKING.kc,
            )
        };
    }
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        (
            Kind::Portable,
            Portable::<f32>::MR,
            Portable::<f32>::BLOCKING.kc,
        )
    } else {
        (
            Kind::Portable,
            Portable::<f64>::MR,
            Portable::<f64>::BLOCKING.kc,
        )
    }
}

/// An `m × k` matrix packed for [`gemm_prepacked`]: `k` is cut into blocks of
/// at most `kc`; within a block starting at `pc` of depth `kcb`, micro-panel
/// `q` holds the `rows_q` rows from `start_q` ([`panel_rows`]) with element
/// `(r, p)` at `data[panels·MR·pc + q·MR·kcb + p·MR + r]` (unused slots are zero).
#[derive(Clone, Debug)]
pub(crate) struct PackedA<T> {
    data: Vec<T>,
    m: usize,
    k: usize,
    mr: usize,
    kc: usize,
    kind: Kind,
    /// `(start_q, rows_q)` of each micro-panel.
    panels: Vec<(usize, usize)>,
}

/// Cuts `m` rows into micro-panels of at most `mr` rows, avoiding panels of one
/// to three rows where possible: a kernel that short has too few independent
/// accumulators to cover the FMA latency and runs at half speed or less. So
/// `32 = 6+6+6+6+4+4` rather than `6+6+6+6+6+2` (`mr = 6`).
fn panel_rows(m: usize, mr: usize) -> Vec<(usize, usize)> {
    let (q, r) = (m / mr, m % mr);
    let mut heights = vec![mr; q];
    if r > 0 {
        if q > 0 && 2 * r < mr {
            // Share the last full panel with the remainder: mr + r = hi + lo.
            heights.pop();
            heights.push((mr + r).div_ceil(2));
            heights.push((mr + r) / 2);
        } else {
            heights.push(r);
        }
    }
    let mut start = 0;
    heights
        .into_iter()
        .map(|h| {
            let p = (start, h);
            start += h;
            p
        })
        .collect()
}

impl<T: Copy + Default + 'static> PackedA<T> {
    /// Packs the `m × k` matrix whose element `(i, p)` is `at(i, p)`.
    ///
    /// Panics if `T` is neither `f32` nor `f64`.
    pub(crate) fn new(m: usize, k: usize, at: impl Fn(usize, usize) -> T) -> Self {
        assert!(
            TypeId::of::<T>() == TypeId::of::<f32>() || TypeId::of::<T>() == TypeId::of::<f64>(),
            "gemm: PackedA supports f32 and f64 only"
        );
        let (kind, mr, kc_max) = kind_for::<T>();
        let kc = if k == 0 {
            1
        } else {
            balanced_block(k, kc_max, 1)
        };
        let heights = panel_rows(m, mr);
        let panels = heights.len();
        let mut data = vec![T::default(); panels * mr * k];
        for pc in (0..k).step_by(kc) {
            let kcb = kc.min(k - pc);
            let block = &mut data[panels * mr * pc..][..panels * mr * kcb];
            for (panel, &(start, rows)) in block.chunks_exact_mut(mr * kcb).zip(&heights) {
                for (p, step) in panel.chunks_exact_mut(mr).enumerate() {
                    for (r, x) in step.iter_mut().enumerate().take(rows) {
                        *x = at(start + r, pc + p);
                    }
                }
            }
        }
        PackedA {
            data,
            m,
            k,
            mr,
            kc,
            kind,
            panels: heights,
        }
    }
}

/// `&[T]` as `&[U]` when they are the same type.
pub(crate) fn cast<T: 'static, U: 'static>(s: &[T]) -> Option<&[U]> {
    (TypeId::of::<T>() == TypeId::of::<U>()).then(|| {
        // SAFETY: `T` and `U` are the same type (equal `TypeId`s), so this
        // reinterprets the slice as itself: same pointer, length and lifetime.
        unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<U>(), s.len()) }
    })
}

/// `&mut [T]` as `&mut [U]` when they are the same type.
pub(crate) fn cast_mut<T: 'static, U: 'static>(s: &mut [T]) -> Option<&mut [U]> {
    (TypeId::of::<T>() == TypeId::of::<U>()).then(|| {
        // SAFETY: as in `cast`; the unique borrow of `s` moves into the result.
        unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<U>(), s.len()) }
    })
}

/// `C (m × n) = A · B + beta·C` with `A` = `a` (`m × k`, packed) and `B` the
/// `k × n` row-major matrix whose element `(p, j)` is `b[p·ldb + j]`, `C`
/// row-major with row stride `ldc`. `beta_zero`: overwrite C (never read
/// it); else add into it. Runs on the calling thread.
///
/// Panics if a slice is too short for the dimensions, or `ldc < n`.
pub(crate) fn gemm_prepacked<T: Copy + Default + 'static>(
    a: &PackedA<T>,
    n: usize,
    b: &[T],
    ldb: usize,
    beta_zero: bool,
    c: &mut [T],
    ldc: usize,
) {
    gemm_prepacked_ahead(a, n, b, ldb, beta_zero, c, ldc, &[])
}

/// [`gemm_prepacked`] that also brings `ahead` — data the caller reads next,
/// such as the next sample's input — into cache, a few lines per tile, so
/// that its misses overlap the arithmetic instead of stalling the next read.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_prepacked_ahead<T: Copy + Default + 'static>(
    a: &PackedA<T>,
    n: usize,
    b: &[T],
    ldb: usize,
    beta_zero: bool,
    c: &mut [T],
    ldc: usize,
    ahead: &[T],
) {
    let (m, k) = (a.m, a.k);
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n, "gemm_prepacked: ldc ({ldc}) < n ({n})");
    assert!(
        c.len() >= (m - 1) * ldc + n,
        "gemm_prepacked: C ({m}×{n}, ldc {ldc}) needs {} elements, slice has {}",
        (m - 1) * ldc + n,
        c.len()
    );
    assert!(
        k == 0 || (ldb >= n && b.len() >= (k - 1) * ldb + n),
        "gemm_prepacked: B ({k}×{n}, ldb {ldb}) too short ({} elements)",
        b.len()
    );
    if let Some(c32) = cast_mut::<T, f32>(c) {
        let (a32, b32) = (cast(&a.data).unwrap(), cast(b).unwrap());
        let ahead = cast(ahead).unwrap();
        run::<f32, T>(a, a32, n, b32, ldb, beta_zero, c32, ldc, ahead);
    } else if let Some(c64) = cast_mut::<T, f64>(c) {
        let (a64, b64) = (cast(&a.data).unwrap(), cast(b).unwrap());
        let ahead = cast(ahead).unwrap();
        run::<f64, T>(a, a64, n, b64, ldb, beta_zero, c64, ldc, ahead);
    } else {
        unreachable!("PackedA::new admits only f32 and f64");
    }
}

/// [`gemm_prepacked`] for a concrete element type, with the kernel `a` was packed for.
#[allow(clippy::too_many_arguments)]
fn run<E: Engine, X>(
    a: &PackedA<X>,
    adata: &[E],
    n: usize,
    b: &[E],
    ldb: usize,
    beta_zero: bool,
    c: &mut [E],
    ldc: usize,
    ahead: &[E],
) where
    Portable<E>: MicroKernel<T = E>,
{
    let beta = if beta_zero { E::ZERO } else { E::ONE };
    let shape = Shape {
        m: a.m,
        k: a.k,
        mr: a.mr,
        kc: a.kc,
        panels: &a.panels,
        ahead,
    };
    match a.kind {
        #[cfg(target_arch = "x86_64")]
        Kind::Avx2 => E::run_prepacked_simd(false, shape, adata, n, b, ldb, beta, c, ldc),
        #[cfg(target_arch = "x86_64")]
        Kind::Avx512 => E::run_prepacked_simd(true, shape, adata, n, b, ldb, beta, c, ldc),
        Kind::Portable => drive(Portable::<E>::new(), shape, adata, n, b, ldb, beta, c, ldc),
    }
}

/// The sizes and micro-panels of a packed A.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape<'a, T> {
    m: usize,
    k: usize,
    mr: usize,
    kc: usize,
    panels: &'a [(usize, usize)],
    /// Data to prefetch while the tiles run (see [`gemm_prepacked_ahead`]).
    ahead: &'a [T],
}

/// Whether `rows` cache lines `ld` elements apart would crowd L1: 64 sets of
/// 64-byte lines (48 KiB, 12 ways, or 32 KiB, 8 ways), so lines a multiple
/// of 4 KiB apart share one set; more than 8 lines per set evict each other
/// before the micro-kernel's next pass over them.
fn crowds_l1<T>(ld: usize, rows: usize) -> bool {
    let lines = ld * std::mem::size_of::<T>() / 64;
    let period = 64 / gcd(lines.max(1) % 64, 64).max(1);
    (ld * std::mem::size_of::<T>()).is_multiple_of(64) && rows > 8 * period
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The loops: for each block of `k`, each `NR`-column panel of B (in place,
/// or copied when it would run past the end of `b`), each micro-panel of A.
#[allow(clippy::too_many_arguments)]
pub(super) fn drive<K: MicroKernel>(
    kern: K,
    s: Shape<'_, K::T>,
    a: &[K::T],
    n: usize,
    b: &[K::T],
    ldb: usize,
    beta: K::T,
    c: &mut [K::T],
    ldc: usize,
) where
    K::T: Engine,
{
    let (mr, nr) = (K::MR, K::NR);
    assert_eq!(s.mr, mr, "gemm_prepacked: A packed for another kernel");
    let (m, k) = (s.m, s.k);
    let panels = s.panels.len();
    let mut view = CView::Contig { data: c, ldc };
    if k == 0 {
        if beta == K::T::ZERO {
            for i in 0..m {
                let mut tile: [&mut [K::T]; MAX_MR] = Default::default();
                view.tile(i, 0, 1, n, &mut tile);
                tile[0].fill(K::T::ZERO);
            }
        }
        return;
    }
    // Cache lines of `ahead` to prefetch per tile, spread over all tiles.
    let line = (64 / std::mem::size_of::<K::T>()).max(1);
    let tiles = k.div_ceil(s.kc) * n.div_ceil(nr) * panels;
    let per_tile = s.ahead.len().div_ceil(line).div_ceil(tiles.max(1));
    let mut next_line = 0;
    K::T::with_pack_buffers(|_, copy| {
        for pc in (0..k).step_by(s.kc) {
            let kcb = s.kc.min(k - pc);
            let beta_eff = if pc == 0 { beta } else { K::T::ONE };
            let ablock = &a[panels * mr * pc..][..panels * mr * kcb];
            // Rows a multiple of 4 KiB apart would all land in the same few L1
            // sets and evict each other between the kernel's passes: copy this
            // block of B to rows an odd number of cache lines apart first (long
            // contiguous copies), with room for the last panel's NR columns.
            let (b, ldb, off0) = if crowds_l1::<K::T>(ldb, kcb) {
                let line = (64 / std::mem::size_of::<K::T>()).max(1);
                let ld2 = (n.next_multiple_of(nr).div_ceil(line) | 1) * line;
                if copy.len() < kcb * ld2 {
                    copy.resize(kcb * ld2, K::T::ZERO);
                }
                for (p, row) in copy.chunks_exact_mut(ld2).take(kcb).enumerate() {
                    row[..n].copy_from_slice(&b[(pc + p) * ldb..][..n]);
                }
                (&copy[..kcb * ld2], ld2, 0)
            } else {
                (b, ldb, pc * ldb)
            };
            let mut edge: Vec<K::T> = Vec::new();
            for jr in (0..n).step_by(nr) {
                let cols = nr.min(n - jr);
                let off = off0 + jr;
                // In place when the kernel's NR columns fit in each row (rows
                // closer than NR apart would overlap) and in the slice.
                let in_place = ldb >= nr && off + (kcb - 1) * ldb + nr <= b.len();
                let (bp, ldbp): (&[K::T], usize) = if in_place {
                    (&b[off..], ldb)
                } else {
                    // The kernel reads NR columns: copy this panel, zero-padded.
                    edge.clear();
                    edge.resize(kcb * nr, K::T::ZERO);
                    for (p, row) in edge.chunks_exact_mut(nr).enumerate() {
                        row[..cols].copy_from_slice(&b[off + p * ldb..][..cols]);
                    }
                    (&edge, nr)
                };
                for (ap, &(start, rows)) in ablock.chunks_exact(mr * kcb).zip(s.panels) {
                    for _ in 0..per_tile {
                        if let Some(x) = s.ahead.get(next_line * line) {
                            super::prefetch(x);
                        }
                        next_line += 1;
                    }
                    let mut tile: [&mut [K::T]; MAX_MR] = Default::default();
                    view.tile(start, jr, rows, cols, &mut tile);
                    kern.run(kcb, K::T::ONE, ap, bp, ldbp, beta_eff, &mut tile[..rows]);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// B with rows closer than the kernel's NR columns (a narrow block, as a
    /// Winograd conv of a 2×2 image passes), `k` past one block of `kc`, and
    /// C exactly the reference product (with the machine's best kernel, whose
    /// NR is 32 with AVX-512 and 16 with AVX2).
    #[test]
    fn narrow_b_with_deep_k_matches_the_reference() {
        let (m, n, k, ldb) = (19, 5, 700, 8);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let b: Vec<f32> = (0..k * ldb).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
        let mut want = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k)
                    .map(|p| a[i * k + p] as f64 * b[p * ldb + j] as f64)
                    .sum();
            }
        }
        let packed = PackedA::new(m, k, |i, p| a[i * k + p]);
        let mut c = vec![f32::NAN; m * n];
        gemm_prepacked(&packed, n, &b, ldb, true, &mut c, n);
        // Integers well inside f32's exact range: the sums are exact.
        assert!(c.iter().zip(&want).all(|(&c, &w)| c as f64 == w));
        // Prefetching other data (longer than the tiles can spread) changes nothing.
        let mut c2 = vec![f32::NAN; m * n];
        gemm_prepacked_ahead(&packed, n, &b, ldb, true, &mut c2, n, &a);
        assert_eq!(c, c2);
    }
}
