//! AVX2 + FMA micro-kernels for `x86_64`.
//!
//! * `f32`: 6 × 16 register tile — 12 `ymm` accumulators, 2 `ymm` for the B
//!   row and 1 for the broadcast A element (15 of 16 registers).
//! * `f64`: 6 × 8 register tile — same register budget with 4-lane vectors.
//!
//! Edge tiles (fewer than `MR` rows or `NR` columns) run a kernel instantiated
//! for exactly that many rows and for one or two vectors of columns, so no
//! multiply-adds are wasted on padding rows; columns beyond the tile width
//! inside the last vector are computed but never stored.

use super::kernel::{check_tile, Blocking, MicroKernel};
use std::arch::x86_64::*;

/// Proof that the running CPU supports AVX2 and FMA.
///
/// The private field means the only way to obtain one is [`Avx2Fma::detect`],
/// which checks the CPU at run time; every kernel entry point takes `self` by
/// value, so holding a value is what makes calling the
/// `#[target_feature(enable = "avx2,fma")]` functions sound.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2Fma {
    _private: (),
}

impl Avx2Fma {
    /// Returns a token if (and only if) the CPU supports AVX2 and FMA.
    #[inline]
    pub(crate) fn detect() -> Option<Self> {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            Some(Avx2Fma { _private: () })
        } else {
            None
        }
    }
}

/// AVX2+FMA `f32` micro-kernel (6 × 16).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2F32(pub(crate) Avx2Fma);

/// AVX2+FMA `f64` micro-kernel (6 × 8).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2F64(pub(crate) Avx2Fma);

impl MicroKernel for Avx2F32 {
    type T = f32;
    const MR: usize = 6;
    const NR: usize = 16;
    const BLOCKING: Blocking = Blocking {
        kc: 256,
        mc: 144,
        nc: 4096,
    };

    #[inline]
    fn run(self, kc: usize, alpha: f32, a: &[f32], b: &[f32], ldb: usize, beta: f32, c: &mut [&mut [f32]]) {
        let cols = check_tile(Self::MR, Self::NR, kc, a, b, ldb, c);
        let (a, b) = (a.as_ptr(), b.as_ptr());
        // SAFETY: `self` holds an `Avx2Fma` token, so AVX2 and FMA are
        // available. `check_tile` verified that `a` holds `kc * 6` elements,
        // that `b` holds `(kc - 1) * ldb + 16`, that there are `1..=6` rows in
        // `c`, each `cols` (`1..=16`) long; the instantiation chosen below
        // reads exactly `R` rows of A per step, `8 * NV <= 16` columns of B
        // per row, and writes `cols <= 8 * NV` elements of each of the `R`
        // rows of `c`.
        unsafe {
            let wide = cols > 8;
            match (c.len(), wide) {
                (6, true) => kernel_f32::<6, 2>(kc, alpha, a, b, ldb, beta, c),
                (5, true) => kernel_f32::<5, 2>(kc, alpha, a, b, ldb, beta, c),
                (4, true) => kernel_f32::<4, 2>(kc, alpha, a, b, ldb, beta, c),
                (3, true) => kernel_f32::<3, 2>(kc, alpha, a, b, ldb, beta, c),
                (2, true) => kernel_f32::<2, 2>(kc, alpha, a, b, ldb, beta, c),
                (1, true) => kernel_f32::<1, 2>(kc, alpha, a, b, ldb, beta, c),
                (6, false) => kernel_f32::<6, 1>(kc, alpha, a, b, ldb, beta, c),
                (5, false) => kernel_f32::<5, 1>(kc, alpha, a, b, ldb, beta, c),
                (4, false) => kernel_f32::<4, 1>(kc, alpha, a, b, ldb, beta, c),
                (3, false) => kernel_f32::<3, 1>(kc, alpha, a, b, ldb, beta, c),
                (2, false) => kernel_f32::<2, 1>(kc, alpha, a, b, ldb, beta, c),
                _ => kernel_f32::<1, 1>(kc, alpha, a, b, ldb, beta, c),
            }
        }
    }
}

impl MicroKernel for Avx2F64 {
    type T = f64;
    const MR: usize = 6;
    const NR: usize = 8;
    const BLOCKING: Blocking = Blocking {
        kc: 256,
        mc: 72,
        nc: 2048,
    };

    #[inline]
    fn run(self, kc: usize, alpha: f64, a: &[f64], b: &[f64], ldb: usize, beta: f64, c: &mut [&mut [f64]]) {
        let cols = check_tile(Self::MR, Self::NR, kc, a, b, ldb, c);
        let (a, b) = (a.as_ptr(), b.as_ptr());
        // SAFETY: as for the `f32` kernel: the token proves AVX2+FMA, and
        // `check_tile` bounds every access: `R <= 6` rows of A per step,
        // `4 * NV <= 8` columns of B per row, `cols <= 4 * NV` elements
        // written per row of `c`.
        unsafe {
            let wide = cols > 4;
            match (c.len(), wide) {
                (6, true) => kernel_f64::<6, 2>(kc, alpha, a, b, ldb, beta, c),
                (5, true) => kernel_f64::<5, 2>(kc, alpha, a, b, ldb, beta, c),
                (4, true) => kernel_f64::<4, 2>(kc, alpha, a, b, ldb, beta, c),
                (3, true) => kernel_f64::<3, 2>(kc, alpha, a, b, ldb, beta, c),
                (2, true) => kernel_f64::<2, 2>(kc, alpha, a, b, ldb, beta, c),
                (1, true) => kernel_f64::<1, 2>(kc, alpha, a, b, ldb, beta, c),
                (6, false) => kernel_f64::<6, 1>(kc, alpha, a, b, ldb, beta, c),
                (5, false) => kernel_f64::<5, 1>(kc, alpha, a, b, ldb, beta, c),
                (4, false) => kernel_f64::<4, 1>(kc, alpha, a, b, ldb, beta, c),
                (3, false) => kernel_f64::<3, 1>(kc, alpha, a, b, ldb, beta, c),
                (2, false) => kernel_f64::<2, 1>(kc, alpha, a, b, ldb, beta, c),
                _ => kernel_f64::<1, 1>(kc, alpha, a, b, ldb, beta, c),
            }
        }
    }
}

/// `R × (8·NV)` `f32` kernel body.
///
/// # Safety
/// AVX2 and FMA must be available; `a` must be valid for reads of
/// `kc * 6` elements, `b` for reads of `(kc - 1) * ldb + 8 * NV` elements
/// (when `kc > 0`); `c` must have at least `R` rows, each at most `8 * NV`
/// long.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_f32<const R: usize, const NV: usize>(
    kc: usize,
    alpha: f32,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    beta: f32,
    c: &mut [&mut [f32]],
) {
    const MR: usize = 6;
    let mut acc = [[_mm256_setzero_ps(); NV]; R];
    let mut ap = a;
    let mut bp = b;
    // Main loop, unrolled by two steps of k.
    let mut p = 0;
    while p + 2 <= kc {
        for s in 0..2 {
            let brow = bp.add(s * ldb);
            let mut bv = [_mm256_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(brow.add(8 * v));
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(s * MR + r));
                for v in 0..NV {
                    accr[v] = _mm256_fmadd_ps(av, bv[v], accr[v]);
                }
            }
        }
        ap = ap.add(2 * MR);
        bp = bp.add(2 * ldb);
        p += 2;
    }
    if p < kc {
        let mut bv = [_mm256_setzero_ps(); NV];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(bp.add(8 * v));
        }
        for (r, accr) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*ap.add(r));
            for v in 0..NV {
                accr[v] = _mm256_fmadd_ps(av, bv[v], accr[v]);
            }
        }
    }

    let valpha = _mm256_set1_ps(alpha);
    let vbeta = _mm256_set1_ps(beta);
    for (r, accr) in acc.iter().enumerate() {
        let row: &mut [f32] = c.get_unchecked_mut(r);
        let cols = row.len();
        let cp = row.as_mut_ptr();
        for (v, &x) in accr.iter().enumerate() {
            let x = if alpha == 1.0 { x } else { _mm256_mul_ps(x, valpha) };
            let off = 8 * v;
            if off + 8 <= cols {
                let dst = cp.add(off);
                let out = if beta == 0.0 {
                    x
                } else if beta == 1.0 {
                    _mm256_add_ps(_mm256_loadu_ps(dst), x)
                } else {
                    _mm256_fmadd_ps(_mm256_loadu_ps(dst), vbeta, x)
                };
                _mm256_storeu_ps(dst, out);
            } else if off < cols {
                let mut tmp = [0.0f32; 8];
                _mm256_storeu_ps(tmp.as_mut_ptr(), x);
                for (l, &t) in tmp.iter().enumerate().take(cols - off) {
                    let d = cp.add(off + l);
                    *d = if beta == 0.0 { t } else { t + beta * *d };
                }
            }
        }
    }
}

/// `R × (4·NV)` `f64` kernel body.
///
/// # Safety
/// AVX2 and FMA must be available; `a` must be valid for reads of
/// `kc * 6` elements, `b` for reads of `(kc - 1) * ldb + 4 * NV` elements
/// (when `kc > 0`); `c` must have at least `R` rows, each at most `4 * NV`
/// long.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_f64<const R: usize, const NV: usize>(
    kc: usize,
    alpha: f64,
    a: *const f64,
    b: *const f64,
    ldb: usize,
    beta: f64,
    c: &mut [&mut [f64]],
) {
    const MR: usize = 6;
    let mut acc = [[_mm256_setzero_pd(); NV]; R];
    let mut ap = a;
    let mut bp = b;
    let mut p = 0;
    while p + 2 <= kc {
        for s in 0..2 {
            let brow = bp.add(s * ldb);
            let mut bv = [_mm256_setzero_pd(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm256_loadu_pd(brow.add(4 * v));
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_sd(&*ap.add(s * MR + r));
                for v in 0..NV {
                    accr[v] = _mm256_fmadd_pd(av, bv[v], accr[v]);
                }
            }
        }
        ap = ap.add(2 * MR);
        bp = bp.add(2 * ldb);
        p += 2;
    }
    if p < kc {
        let mut bv = [_mm256_setzero_pd(); NV];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm256_loadu_pd(bp.add(4 * v));
        }
        for (r, accr) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_sd(&*ap.add(r));
            for v in 0..NV {
                accr[v] = _mm256_fmadd_pd(av, bv[v], accr[v]);
            }
        }
    }

    let valpha = _mm256_set1_pd(alpha);
    let vbeta = _mm256_set1_pd(beta);
    for (r, accr) in acc.iter().enumerate() {
        let row: &mut [f64] = c.get_unchecked_mut(r);
        let cols = row.len();
        let cp = row.as_mut_ptr();
        for (v, &x) in accr.iter().enumerate() {
            let x = if alpha == 1.0 { x } else { _mm256_mul_pd(x, valpha) };
            let off = 4 * v;
            if off + 4 <= cols {
                let dst = cp.add(off);
                let out = if beta == 0.0 {
                    x
                } else if beta == 1.0 {
                    _mm256_add_pd(_mm256_loadu_pd(dst), x)
                } else {
                    _mm256_fmadd_pd(_mm256_loadu_pd(dst), vbeta, x)
                };
                _mm256_storeu_pd(dst, out);
            } else if off < cols {
                let mut tmp = [0.0f64; 4];
                _mm256_storeu_pd(tmp.as_mut_ptr(), x);
                for (l, &t) in tmp.iter().enumerate().take(cols - off) {
                    let d = cp.add(off + l);
                    *d = if beta == 0.0 { t } else { t + beta * *d };
                }
            }
        }
    }
}
