//! SIMD micro-kernels for `x86_64`.
//!
//! * AVX2 + FMA, `f32`: 6 × 16 register tile — 12 `ymm` accumulators, 2 `ymm`
//!   for the B row and 1 for the broadcast A element (15 of 16 registers).
//! * AVX2 + FMA, `f64`: 6 × 8 register tile — same register budget with
//!   4-lane vectors. Both come from one generic body over [`Avx2Vec`]
//!   (`__m256` or `__m256d`), as do the two dot-product kernels.
//! * AVX-512F, `f32`: 8 × 32 register tile, 16 `zmm` accumulators, masked
//!   edges.
//! * The implicit-GEMM convolution (`gemm::implicit`), `f32`: the AVX-512
//!   8 × 48 tile with each B row read from its own offset (three runs of 16
//!   pixels, masked; fewer rows take more runs), an AVX2 4 × 24 tile
//!   likewise (three runs of 8), the stride-2 column split of its input
//!   planes (AVX-512), and with AVX-512 the weight-gradient tile (taps ×
//!   output channels, the input broadcast) and a 16 × 16 transpose.
//!
//! Edge tiles (fewer than `MR` rows or `NR` columns) run a kernel instantiated
//! for exactly that many rows and for one or two vectors of columns, so no
//! multiply-adds are wasted on padding rows; columns beyond the tile width
//! inside the last vector are computed but never stored.

use super::kernel::{Blocking, Elem, MicroKernel, check_dot, check_tile};
use std::arch::x86_64::*;

/// Calls the `R × NV`-vector instantiation of a tile kernel for `rows` rows
/// (one of the listed counts) and one or two (`wide`) vectors of columns. A
/// kernel generic over its vector type is named with it: `kernel::<V>`.
macro_rules! tile_dispatch {
    ($kernel:ident::<$v:ty>, $rows:expr, $wide:expr, [$($r:literal),*], $args:tt) => {
        match ($rows, $wide) {
            $(($r, true) => $kernel::<$v, $r, 2> $args,
            ($r, false) => $kernel::<$v, $r, 1> $args,)*
            (rows, _) => unreachable!("tile of {rows} rows"),
        }
    };
    ($kernel:ident, $rows:expr, $wide:expr, [$($r:literal),*], $args:tt) => {
        match ($rows, $wide) {
            $(($r, true) => $kernel::<$r, 2> $args,
            ($r, false) => $kernel::<$r, 1> $args,)*
            (rows, _) => unreachable!("tile of {rows} rows"),
        }
    };
}

/// Calls the `R × C` instantiation of a tile kernel (a dot-product or a
/// convolution tile) for the given (rows, columns), one of the listed pairs;
/// `kernel::<V>` as above. `up_to_4x3` lists the AVX2 kernels' tiles: 1 to
/// 4 rows × 1 to 3 columns.
macro_rules! pair_dispatch {
    ($kernel:ident $(::<$v:ty>)?, $shape:expr, up_to_4x3, $args:tt) => {
        pair_dispatch!(
            $kernel $(::<$v>)?,
            $shape,
            [
                (4, 3),
                (4, 2),
                (4, 1),
                (3, 3),
                (3, 2),
                (3, 1),
                (2, 3),
                (2, 2),
                (2, 1),
                (1, 3),
                (1, 2),
                (1, 1)
            ],
            $args
        )
    };
    ($kernel:ident::<$v:ty>, $shape:expr, [$(($r:literal, $c:literal)),*], $args:tt) => {
        match $shape {
            $(($r, $c) => $kernel::<$v, $r, $c> $args,)*
            (r, c) => unreachable!("no tile of {r} × {c}"),
        }
    };
    ($kernel:ident, $shape:expr, [$(($r:literal, $c:literal)),*], $args:tt) => {
        match $shape {
            $(($r, $c) => $kernel::<$r, $c> $args,)*
            (r, c) => unreachable!("no tile of {r} × {c}"),
        }
    };
}

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

/// Hints the CPU to bring the cache line holding `x` into cache
/// (`prefetcht0`).
#[inline(always)]
pub(crate) fn prefetch<T>(x: &T) {
    // SAFETY: `prefetcht0` is part of SSE, which every `x86_64` CPU has; a
    // prefetch is only a hint and never faults (and `x` is a valid
    // reference anyway).
    unsafe { _mm_prefetch::<_MM_HINT_T0>((x as *const T).cast::<i8>()) }
}

/// AVX2+FMA `f32` micro-kernel (6 × 16).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2F32(pub(crate) Avx2Fma);

/// AVX2+FMA `f64` micro-kernel (6 × 8).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2F64(pub(crate) Avx2Fma);

/// The first `N` slices' start pointers, the first slice's standing in for
/// missing ones (never read: the dot kernels read only as many as there are
/// slices).
fn ptrs<T, const N: usize>(v: &[&[T]]) -> [*const T; N] {
    std::array::from_fn(|i| v.get(i).map_or(v[0].as_ptr(), |x| x.as_ptr()))
}

impl MicroKernel for Avx2F32 {
    type T = f32;
    const MR: usize = 6;
    const NR: usize = 16;
    const DOT_ROWS: usize = 4;
    const DOT_COLS: usize = 3;
    const BLOCKING: Blocking = Blocking {
        kc: 256,
        mc: 144,
        nc: 1024,
    };

    #[inline]
    fn run(
        self,
        kc: usize,
        alpha: f32,
        a: &[f32],
        b: &[f32],
        ldb: usize,
        beta: f32,
        c: &mut [&mut [f32]],
    ) {
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
            tile_dispatch!(
                kernel_avx2::<__m256>,
                c.len(),
                wide,
                [6, 5, 4, 3, 2, 1],
                (kc, alpha, a, b, ldb, beta, c)
            )
        }
    }

    #[inline]
    fn dot(self, alpha: f32, a: &[&[f32]], b: &[&[f32]], beta: f32, c: &mut [&mut [f32]]) {
        let len = check_dot(4, 3, a, b, c);
        let (ap, bp) = (ptrs::<_, 4>(a), ptrs::<_, 3>(b));
        // SAFETY: `self` holds an `Avx2Fma` token, so AVX2 and FMA are
        // available. `check_dot` verified that every row of `a` and column of
        // `b` holds `len` elements and that `c` is `a.len() × b.len()`; the
        // instantiation below reads `len` elements from each of the first
        // `R` row pointers and `C` column pointers (`R = a.len()`,
        // `C = b.len()`) and writes `c[r][j]` for `r < R`, `j < C` only.
        unsafe {
            pair_dispatch!(
                dot_avx2::<__m256>,
                (a.len(), b.len()),
                up_to_4x3,
                (len, alpha, ap, bp, beta, c)
            )
        }
    }
}

impl MicroKernel for Avx2F64 {
    type T = f64;
    const MR: usize = 6;
    const NR: usize = 8;
    const DOT_ROWS: usize = 4;
    const DOT_COLS: usize = 3;
    const BLOCKING: Blocking = Blocking {
        kc: 256,
        mc: 72,
        nc: 512,
    };

    #[inline]
    fn run(
        self,
        kc: usize,
        alpha: f64,
        a: &[f64],
        b: &[f64],
        ldb: usize,
        beta: f64,
        c: &mut [&mut [f64]],
    ) {
        let cols = check_tile(Self::MR, Self::NR, kc, a, b, ldb, c);
        let (a, b) = (a.as_ptr(), b.as_ptr());
        // SAFETY: as for the `f32` kernel: the token proves AVX2+FMA, and
        // `check_tile` bounds every access: `R <= 6` rows of A per step,
        // `4 * NV <= 8` columns of B per row, `cols <= 4 * NV` elements
        // written per row of `c`.
        unsafe {
            let wide = cols > 4;
            tile_dispatch!(
                kernel_avx2::<__m256d>,
                c.len(),
                wide,
                [6, 5, 4, 3, 2, 1],
                (kc, alpha, a, b, ldb, beta, c)
            )
        }
    }

    #[inline]
    fn dot(self, alpha: f64, a: &[&[f64]], b: &[&[f64]], beta: f64, c: &mut [&mut [f64]]) {
        let len = check_dot(4, 3, a, b, c);
        let (ap, bp) = (ptrs::<_, 4>(a), ptrs::<_, 3>(b));
        // SAFETY: `self` holds an `Avx2Fma` token, so AVX2 and FMA are
        // available. `check_dot` verified that every row of `a` and column of
        // `b` holds `len` elements and that `c` is `a.len() × b.len()`; the
        // instantiation below reads `len` elements from each of the first
        // `R` row pointers and `C` column pointers (`R = a.len()`,
        // `C = b.len()`) and writes `c[r][j]` for `r < R`, `j < C` only.
        unsafe {
            pair_dispatch!(
                dot_avx2::<__m256d>,
                (a.len(), b.len()),
                up_to_4x3,
                (len, alpha, ap, bp, beta, c)
            )
        }
    }
}

/// A 256-bit vector of `f32` or `f64` and the AVX2+FMA operations the
/// kernels below use, so that one generic body serves both element types.
///
/// Every method is `#[inline(always)]` and only meaningful inlined into a
/// function compiled with `avx2,fma` (the generic kernels): there the
/// intrinsics it calls are inlined too.
///
/// # Safety
/// Every method requires AVX2 and FMA; `load` and `store` need `p` valid
/// for `LANES` elements, `load_first` for its first `n`.
trait Avx2Vec: Copy {
    /// The element type.
    type E: Elem;
    /// Elements per vector.
    const LANES: usize;
    /// All zeros.
    unsafe fn zero() -> Self;
    /// `LANES` elements from `p` (unaligned).
    unsafe fn load(p: *const Self::E) -> Self;
    /// The first `n < LANES` elements from `p`, zeros above; reads only those.
    unsafe fn load_first(p: *const Self::E, n: usize) -> Self;
    /// Every lane set to `x`.
    unsafe fn splat(x: Self::E) -> Self;
    /// `a·b + c`, fused.
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
    /// `a + b`.
    unsafe fn add(a: Self, b: Self) -> Self;
    /// `a · b`.
    unsafe fn mul(a: Self, b: Self) -> Self;
    /// Writes the `LANES` elements to `p` (unaligned).
    unsafe fn store(p: *mut Self::E, v: Self);
    /// The sums of the lanes of four vectors.
    unsafe fn sum4(v: [Self; 4]) -> [Self::E; 4];
}

impl Avx2Vec for __m256 {
    type E = f32;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller upholds `Avx2Vec`'s contract: AVX2 and FMA are available, and any
        // pointer is valid for the lanes read or written.
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller upholds `Avx2Vec`'s contract: AVX2 and FMA are available, and any
        // pointer is valid for the lanes read or written.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> Self {
        // SAFETY: the caller upholds `Avx2Vec`'s contract: AVX2 and FMA are available, and any
        // pointer is valid for the lanes read or written.
        unsafe {
            // Lanes whose index is below n are read; the others are never
            // accessed and read as zero.
            let mask = _mm256_cmpgt_epi32(
                _mm256_set1_epi32(n as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            );
            _mm256_maskload_ps(p, mask)
        }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        // SAFETY: the caller upholds `Avx2Vec`'s contract: AVX2 and FMA are available, and any
        // pointer is valid for the lanes read or written.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: the caller upholds `Avx2Vec`'s contract: AVX2 and FMA are available, and any
        // pointer is valid for the lanes read or written.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        // SAFETY: the caller upholds `Avx2Vec`'s contract: AVX2 and FMA are available, and any
        // pointer is valid for the lanes read or written.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        // SAFETY: the caller upholds `Avx2Vec`'s contract: AVX2 and FMA are available, and any
        // pointer is valid for the lanes read or written.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self) {
        // SAFETY: the caller upholds `Avx2Vec`'s contract: AVX2 and FMA are available, and any
        // pointer is valid for the lanes read or written.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn sum4(v: [Self; 4]) -> [f32; 4] {
        // SAFETY: the caller upholds `Avx2Vec`'s contract: AVX2 and FMA are available, and any
        // pointer is valid for the lanes read or written.
        unsafe {
            // Three horizontal adds and one cross-lane add give the four sums.
            let h = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
            let sums = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
            let mut out = [0.0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), sums);
            out
        }
    }
}

impl Avx2Vec for __m256d {
    type E = f64;
    const LANES: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller upholds `Avx2Vec`'s contract: AVX2 and FMA are available, and any
        // pointer is valid for the lanes read or written.
        unsafe { _mm256_setzero_pd() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        // SAFETY: the caller upholds `Avx2Vec`'s contract: AVX2 and FMA are available, and any
        // pointer is valid for the lanes read or written.
        unsafe { _mm256_loadu_pd(p) }
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f64, n: usize) -> Self {
        // SAFETY: the caller upholds `Avx2Vec`'s contract: AVX2 and FMA are available, and any
        // pointer is valid for the lanes read or written.
        unsafe {
            let mask =
                _mm256_cmpgt_epi64(_mm256_set1_epi64x(n as i64), _mm256_setr_epi64x(0, 1, 2, 3));
            _mm256_maskload_pd(p, mask)
        }
    }
    #[inline(always)]
    unsafe fn splat(x: f64) -> Self {
        // SAFETY: the caller upholds `Avx2Vec`'s contract: AVX2 and FMA are available, and any
        // pointer is valid for the lanes read or written.
        unsafe { _mm256_set1_pd(x) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: the caller upholds `Avx2Vec`'s contract: AVX2 and FMA are available, and any
        // pointer is valid for the lanes read or written.
        unsafe { _mm256_fmadd_pd(a, b, c) }
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        // SAFETY: the caller upholds `Avx2Vec`'s contract: AVX2 and FMA are available, and any
        // pointer is valid for the lanes read or written.
        unsafe { _mm256_add_pd(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        // SAFETY: the caller upholds `Avx2Vec`'s contract: AVX2 and FMA are available, and any
        // pointer is valid for the lanes read or written.
        unsafe { _mm256_mul_pd(a, b) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f64, v: Self) {
        // SAFETY: the caller upholds `Avx2Vec`'s contract: AVX2 and FMA are available, and any
        // pointer is valid for the lanes read or written.
        unsafe { _mm256_storeu_pd(p, v) }
    }
    #[inline(always)]
    unsafe fn sum4(v: [Self; 4]) -> [f64; 4] {
        // SAFETY: the caller upholds `Avx2Vec`'s contract: AVX2 and FMA are available, and any
        // pointer is valid for the lanes read or written.
        unsafe {
            let h01 = _mm256_hadd_pd(v[0], v[1]); // [v0 lo, v1 lo, v0 hi, v1 hi]
            let h23 = _mm256_hadd_pd(v[2], v[3]); // [v2 lo, v3 lo, v2 hi, v3 hi]
            let swapped = _mm256_permute2f128_pd::<0x21>(h01, h23);
            let blended = _mm256_blend_pd::<0b1100>(h01, h23);
            let mut out = [0.0f64; 4];
            _mm256_storeu_pd(out.as_mut_ptr(), _mm256_add_pd(swapped, blended));
            out
        }
    }
}

/// `R × (LANES·NV)` AVX2 tile kernel body, for `f32` (`V = __m256`) and
/// `f64` (`V = __m256d`).
///
/// # Safety
/// AVX2 and FMA must be available; `a` must be valid for reads of
/// `kc * 6` elements, `b` for reads of `(kc - 1) * ldb + LANES * NV`
/// elements (when `kc > 0`); `c` must have at least `R` rows, each at most
/// `LANES * NV` long.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_avx2<V: Avx2Vec, const R: usize, const NV: usize>(
    kc: usize,
    alpha: V::E,
    a: *const V::E,
    b: *const V::E,
    ldb: usize,
    beta: V::E,
    c: &mut [&mut [V::E]],
) {
    // SAFETY: the caller upholds this function's contract (# Safety above): the CPU features it
    // enables are available, and the pointers are valid for every element read or written.
    unsafe {
        const MR: usize = 6;
        let l = V::LANES;
        let mut acc = [[V::zero(); NV]; R];
        let mut ap = a;
        let mut bp = b;
        // One step of k: a row of B times a column of the A panel.
        let step = |acc: &mut [[V; NV]; R], ap: *const V::E, brow: *const V::E| {
            let mut bv = [V::zero(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = V::load(brow.add(l * v));
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = V::splat(*ap.add(r));
                for v in 0..NV {
                    accr[v] = V::fmadd(av, bv[v], accr[v]);
                }
            }
        };
        // Main loop, unrolled by two steps of k.
        let mut p = 0;
        while p + 2 <= kc {
            step(&mut acc, ap, bp);
            step(&mut acc, ap.add(MR), bp.add(ldb));
            ap = ap.add(2 * MR);
            bp = bp.add(2 * ldb);
            p += 2;
        }
        if p < kc {
            step(&mut acc, ap, bp);
        }

        let (one, zero) = (V::E::ONE, V::E::ZERO);
        let valpha = V::splat(alpha);
        let vbeta = V::splat(beta);
        for (r, accr) in acc.iter().enumerate() {
            let row: &mut [V::E] = c.get_unchecked_mut(r);
            let cols = row.len();
            let cp = row.as_mut_ptr();
            for (v, &x) in accr.iter().enumerate() {
                let x = if alpha == one { x } else { V::mul(x, valpha) };
                let off = l * v;
                if off + l <= cols {
                    let dst = cp.add(off);
                    let out = if beta == zero {
                        x
                    } else if beta == one {
                        V::add(V::load(dst), x)
                    } else {
                        V::fmadd(V::load(dst), vbeta, x)
                    };
                    V::store(dst, out);
                } else if off < cols {
                    let mut tmp = [zero; 8];
                    V::store(tmp.as_mut_ptr(), x);
                    for (i, &t) in tmp.iter().enumerate().take(cols - off) {
                        let d = cp.add(off + i);
                        *d = if beta == zero { t } else { t + beta * *d };
                    }
                }
            }
        }
    }
}

/// `R × C` AVX2 dot-product tile, for `f32` (`V = __m256`) and `f64`
/// (`V = __m256d`): `c[r][j] = alpha·(a_r · b_j) + beta·c[r][j]`.
///
/// # Safety
/// AVX2 and FMA must be available; `a[..R]` and `b[..C]` must each be
/// valid for reads of `len` elements; `c` must have at least `R` rows of at
/// least `C` elements.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)] // the reduction walks acc column-wise
unsafe fn dot_avx2<V: Avx2Vec, const R: usize, const C: usize>(
    len: usize,
    alpha: V::E,
    a: [*const V::E; 4],
    b: [*const V::E; 3],
    beta: V::E,
    c: &mut [&mut [V::E]],
) {
    // SAFETY: the caller upholds this function's contract (# Safety above): the CPU features it
    // enables are available, and the pointers are valid for every element read or written.
    unsafe {
        let l = V::LANES;
        let mut acc = [[V::zero(); C]; R];
        // One block of `l` (or, masked, the last `n < l`) elements.
        let block = |acc: &mut [[V; C]; R], p: usize, n: usize| {
            let ld = |x: *const V::E| {
                if n == l {
                    V::load(x.add(p))
                } else {
                    V::load_first(x.add(p), n)
                }
            };
            let mut bv = [V::zero(); C];
            for (j, x) in bv.iter_mut().enumerate() {
                *x = ld(b[j]);
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = ld(a[r]);
                for j in 0..C {
                    accr[j] = V::fmadd(av, bv[j], accr[j]);
                }
            }
        };
        let mut p = 0;
        while p + l <= len {
            block(&mut acc, p, l);
            p += l;
        }
        if p < len {
            block(&mut acc, p, len - p);
        }
        // Each column's (up to) four row sums at once.
        for j in 0..C {
            let v: [V; 4] = std::array::from_fn(|r| if r < R { acc[r][j] } else { V::zero() });
            for (r, &s) in V::sum4(v).iter().enumerate().take(R) {
                let s = alpha * s;
                let d = c.get_unchecked_mut(r).get_unchecked_mut(j);
                *d = if beta == V::E::ZERO { s } else { s + beta * *d };
            }
        }
    }
}

/// Proof that the running CPU supports AVX-512F.
///
/// Obtained only from [`Avx512::detect`]; see [`Avx2Fma`] for why holding
/// the token makes the `#[target_feature(enable = "avx512f")]` calls sound.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512 {
    _private: (),
}

impl Avx512 {
    /// Returns a token if (and only if) the CPU supports AVX-512F (and AVX2
    /// and FMA, so that the AVX2 kernels are available beside it).
    #[inline]
    pub(crate) fn detect() -> Option<Self> {
        Avx2Fma::detect()?;
        is_x86_feature_detected!("avx512f").then_some(Avx512 { _private: () })
    }
}

/// AVX-512F `f32` micro-kernel (8 × 32): 16 `zmm` accumulators, two for the
/// B row; the A element is broadcast straight from memory into each FMA.
/// Twice the lanes of [`Avx2F32`] per instruction, so on CPUs with two
/// 512-bit FMA ports it doubles the arithmetic ceiling. Its dot-product
/// variant is a 4 × 4 tile (16 accumulators).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512F32(pub(crate) Avx512);

impl MicroKernel for Avx512F32 {
    type T = f32;
    const MR: usize = 8;
    const NR: usize = 32;
    const DOT_ROWS: usize = 4;
    const DOT_COLS: usize = 4;
    const BLOCKING: Blocking = Blocking {
        kc: 192,
        mc: 144,
        nc: 1024,
    };

    #[inline]
    fn run(
        self,
        kc: usize,
        alpha: f32,
        a: &[f32],
        b: &[f32],
        ldb: usize,
        beta: f32,
        c: &mut [&mut [f32]],
    ) {
        let cols = check_tile(Self::MR, Self::NR, kc, a, b, ldb, c);
        let (a, b) = (a.as_ptr(), b.as_ptr());
        // SAFETY: `self` holds an `Avx512` token, so AVX-512F is available.
        // `check_tile` verified that `a` holds `kc * 8` elements, that `b`
        // holds `(kc - 1) * ldb + 32`, that there are `1..=8` rows in `c`,
        // each `cols` (`1..=32`) long; the instantiation chosen below reads
        // exactly `R` rows of A per step, `16 * NV <= 32` columns of B per
        // row, and writes (masked) `cols <= 16 * NV` elements of each of the
        // `R` rows of `c`.
        unsafe {
            let wide = cols > 16;
            tile_dispatch!(
                kernel_f32_512,
                c.len(),
                wide,
                [8, 7, 6, 5, 4, 3, 2, 1],
                (kc, alpha, a, b, ldb, beta, c)
            )
        }
    }

    #[inline]
    fn dot(self, alpha: f32, a: &[&[f32]], b: &[&[f32]], beta: f32, c: &mut [&mut [f32]]) {
        let len = check_dot(4, 4, a, b, c);
        let (ap, bp) = (ptrs::<_, 4>(a), ptrs::<_, 4>(b));
        // SAFETY: `self` holds an `Avx512` token, so AVX-512F is available.
        // `check_dot` verified that every row of `a` and column of `b` holds
        // `len` elements and that `c` is `a.len() × b.len()`; the
        // instantiation below reads `len` elements from each of the first `R`
        // row pointers and `C` column pointers (`R = a.len()`, `C = b.len()`)
        // and writes `c[r][j]` for `r < R`, `j < C` only.
        unsafe {
            pair_dispatch!(
                dot_f32_512,
                (a.len(), b.len()),
                [
                    (4, 4),
                    (4, 3),
                    (4, 2),
                    (4, 1),
                    (3, 4),
                    (3, 3),
                    (3, 2),
                    (3, 1),
                    (2, 4),
                    (2, 3),
                    (2, 2),
                    (2, 1),
                    (1, 4),
                    (1, 3),
                    (1, 2),
                    (1, 1)
                ],
                (len, alpha, ap, bp, beta, c)
            )
        }
    }
}

/// `R × (16·NV)` `f32` AVX-512 kernel body.
///
/// # Safety
/// AVX-512F must be available; `a` must be valid for reads of `kc * 8`
/// elements, `b` for reads of `(kc - 1) * ldb + 16 * NV` elements (when
/// `kc > 0`); `c` must have at least `R` rows, each at most `16 * NV` long.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_f32_512<const R: usize, const NV: usize>(
    kc: usize,
    alpha: f32,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    beta: f32,
    c: &mut [&mut [f32]],
) {
    // SAFETY: the caller upholds this function's contract (# Safety above): the CPU features it
    // enables are available, and the pointers are valid for every element read or written.
    unsafe {
        const MR: usize = 8;
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        let mut ap = a;
        let mut bp = b;
        // Main loop, unrolled by two steps of k.
        let mut p = 0;
        while p + 2 <= kc {
            for s in 0..2 {
                let brow = bp.add(s * ldb);
                let mut bv = [_mm512_setzero_ps(); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(brow.add(16 * v));
                }
                for (r, accr) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ap.add(s * MR + r));
                    for v in 0..NV {
                        accr[v] = _mm512_fmadd_ps(av, bv[v], accr[v]);
                    }
                }
            }
            ap = ap.add(2 * MR);
            bp = bp.add(2 * ldb);
            p += 2;
        }
        if p < kc {
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(bp.add(16 * v));
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(r));
                for v in 0..NV {
                    accr[v] = _mm512_fmadd_ps(av, bv[v], accr[v]);
                }
            }
        }

        let valpha = _mm512_set1_ps(alpha);
        let vbeta = _mm512_set1_ps(beta);
        for (r, accr) in acc.iter().enumerate() {
            let row: &mut [f32] = c.get_unchecked_mut(r);
            let cols = row.len();
            let cp = row.as_mut_ptr();
            for (v, &x) in accr.iter().enumerate() {
                let off = 16 * v;
                if off >= cols {
                    break;
                }
                let x = if alpha == 1.0 {
                    x
                } else {
                    _mm512_mul_ps(x, valpha)
                };
                // Lanes past the row's end are masked off: never read, never written.
                let mask: __mmask16 = if off + 16 <= cols {
                    0xffff
                } else {
                    ((1u32 << (cols - off)) - 1) as __mmask16
                };
                let dst = cp.add(off);
                let out = if beta == 0.0 {
                    x
                } else if beta == 1.0 {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst), x)
                } else {
                    _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, dst), vbeta, x)
                };
                _mm512_mask_storeu_ps(dst, mask, out);
            }
        }
    }
}

/// `R × C` dot-product tile for f32 on 512-bit vectors:
/// `c[r][j] = alpha·(a_r · b_j) + beta·c[r][j]`.
///
/// # Safety
/// AVX-512F must be available; `a[..R]` and `b[..C]` must each be valid for
/// reads of `len` elements; `c` must have at least `R` rows of at least `C`
/// elements.
#[target_feature(enable = "avx512f")]
unsafe fn dot_f32_512<const R: usize, const C: usize>(
    len: usize,
    alpha: f32,
    a: [*const f32; 4],
    b: [*const f32; 4],
    beta: f32,
    c: &mut [&mut [f32]],
) {
    // SAFETY: the caller upholds this function's contract (# Safety above): the CPU features it
    // enables are available, and the pointers are valid for every element read or written.
    unsafe {
        const L: usize = 16;
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut p = 0;
        while p + L <= len {
            let mut bv = [_mm512_setzero_ps(); C];
            for (j, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(b[j].add(p));
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = _mm512_loadu_ps(a[r].add(p));
                for (x, &bj) in accr.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, bj, *x);
                }
            }
            p += L;
        }
        if p < len {
            // Tail: masked loads read only the `len - p` remaining elements
            // (masked-off lanes are never accessed and read as zero).
            let mask: __mmask16 = ((1u32 << (len - p)) - 1) as __mmask16;
            let mut bv = [_mm512_setzero_ps(); C];
            for (j, x) in bv.iter_mut().enumerate() {
                *x = _mm512_maskz_loadu_ps(mask, b[j].add(p));
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = _mm512_maskz_loadu_ps(mask, a[r].add(p));
                for (x, &bj) in accr.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, bj, *x);
                }
            }
        }
        // All (up to) sixteen sums at once: lane `4r + j` of `sums` is the sum
        // of `acc[r][j]`. Every index below is a constant, so that the
        // accumulators stay in registers (an index computed at run time would
        // keep the array in memory, and the loop above with it).
        let z = _mm512_setzero_ps();
        let g = |r: usize, j: usize| if r < R && j < C { acc[r][j] } else { z };
        let sums = reduce16([
            g(0, 0),
            g(0, 2),
            g(0, 1),
            g(0, 3),
            g(2, 0),
            g(2, 2),
            g(2, 1),
            g(2, 3),
            g(1, 0),
            g(1, 2),
            g(1, 1),
            g(1, 3),
            g(3, 0),
            g(3, 2),
            g(3, 1),
            g(3, 3),
        ]);
        let mut out = [0.0f32; 16];
        _mm512_storeu_ps(out.as_mut_ptr(), sums);
        for r in 0..R {
            let row: &mut [f32] = c.get_unchecked_mut(r);
            for j in 0..C {
                let s = alpha * out[4 * r + j];
                let d = row.get_unchecked_mut(j);
                *d = if beta == 0.0 { s } else { s + beta * *d };
            }
        }
    }
}

/// The sums of the lanes of sixteen vectors in one vector: a tree of 15
/// additions of shuffled halves, quarters, pairs and single lanes, instead of
/// sixteen separate horizontal reductions (four additions and as many
/// shuffles each). Lane `l` of the result is the sum of input
/// `[0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15][l]` (a map that
/// is its own inverse: the caller passes the vector to sum into lane `l` at
/// that position).
#[target_feature(enable = "avx512f")]
#[inline]
fn reduce16(w: [__m512; 16]) -> __m512 {
    // 16 → 8: the low and high 256-bit halves of inputs `i` and `i + 8`, added.
    let half = |a: __m512, b: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xEE>(a, b),
        )
    };
    // 8 → 4: alternate 128-bit quarters.
    let quarter = |a: __m512, b: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xDD>(a, b),
        )
    };
    // 4 → 2: pairs of lanes within each quarter.
    let pair = |a: __m512, b: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(a, b),
            _mm512_shuffle_ps::<0xEE>(a, b),
        )
    };
    // 2 → 1: single lanes.
    let single = |a: __m512, b: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(a, b),
            _mm512_shuffle_ps::<0xDD>(a, b),
        )
    };
    let h = [
        half(w[0], w[8]),
        half(w[1], w[9]),
        half(w[2], w[10]),
        half(w[3], w[11]),
        half(w[4], w[12]),
        half(w[5], w[13]),
        half(w[6], w[14]),
        half(w[7], w[15]),
    ];
    let q = [
        quarter(h[0], h[4]),
        quarter(h[1], h[5]),
        quarter(h[2], h[6]),
        quarter(h[3], h[7]),
    ];
    single(pair(q[0], q[2]), pair(q[1], q[3]))
}

/// The operands of one implicit-GEMM convolution tile (see `gemm::implicit`
/// and the kernels' contracts): `rows` rows of a packed A panel, `kc` steps
/// of it (step `p` at `a + 8p`), their row offsets `offs` into `b`, `nruns` runs of output
/// pixels, the bias (null: none), whether to add to C, and C with its row
/// stride.
#[derive(Clone, Copy, Debug)]
pub(super) struct ConvTile {
    pub(super) rows: usize,
    pub(super) kc: usize,
    pub(super) a: *const f32,
    pub(super) offs: *const usize,
    pub(super) b: *const f32,
    pub(super) runs: *const super::implicit::PixelRun,
    pub(super) nruns: usize,
    pub(super) bias: *const f32,
    pub(super) accumulate: bool,
    pub(super) c: *mut f32,
    pub(super) ldc: usize,
}

/// Runs of pixels per AVX-512 tile of `rows` rows (1 to 8): three runs for a
/// whole panel (24 accumulators), more for fewer rows (up to 24), at most
/// six (each run's mask takes one of the seven mask registers).
pub(super) const fn tile_runs_512(rows: usize) -> usize {
    match rows {
        8 => 3,
        7 => 3,
        5 | 6 => 4,
        _ => 6,
    }
}

/// The implicit-GEMM convolution tile, AVX-512: for the first `t.rows` (1
/// to 8) rows of one packed A panel and `t.nruns` (1 to
/// [`tile_runs_512`]`(rows)`) runs of up to 16 pixels,
/// `C[r·ldc + run.c + j] (+)= bias[r] + Σ_p A[8p + r] · B[offs[p] + run.b + j]`
/// for `j < run.lanes` (lanes past it are neither read nor written).
/// Without `bias` (null) the sums start at 0; with `accumulate` they are
/// added to what C holds.
///
/// # Safety
/// AVX-512F must be available; `rows` must be in `1..=8` and `nruns` in
/// `1..=tile_runs_512(rows)`; `a` must be valid for reads at `8p + r`, `p <
/// kc`, `r < rows`, `offs` for reads of `kc`, `runs` of `nruns` runs with
/// `lanes` in `1..=16`; for every `p < kc` and run, `b` must be valid for
/// reads at `offs[p] + run.b + j`, `j < lanes`; `bias`, if not null, for
/// reads of `rows` elements; `c` for reads and writes at `r * ldc + run.c +
/// j` for `r < rows`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn conv_tile_f32_512(t: ConvTile) {
    // SAFETY: forwarded: the caller upholds the contract, which the
    // instantiation below shares (`MR = rows`, `nruns <= NV`).
    unsafe {
        match (t.rows, t.nruns) {
            (8, 3) => conv_tile_512::<8, 3>(t),
            (8, 2) => conv_tile_512::<8, 2>(t),
            (8, _) => conv_tile_512::<8, 1>(t),
            (7, _) => conv_tile_512::<7, { tile_runs_512(7) }>(t),
            (6, _) => conv_tile_512::<6, { tile_runs_512(6) }>(t),
            (5, _) => conv_tile_512::<5, { tile_runs_512(5) }>(t),
            (4, _) => conv_tile_512::<4, { tile_runs_512(4) }>(t),
            (3, _) => conv_tile_512::<3, { tile_runs_512(3) }>(t),
            (2, _) => conv_tile_512::<2, { tile_runs_512(2) }>(t),
            _ => conv_tile_512::<1, { tile_runs_512(1) }>(t),
        }
    }
}

/// [`conv_tile_f32_512`] for `MR` rows and up to `NV` runs (the runs past
/// `t.nruns` are masked off entirely: they neither read nor write).
///
/// # Safety
/// As [`conv_tile_f32_512`], with `rows == MR` and `1 <= nruns <= NV`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn conv_tile_512<const MR: usize, const NV: usize>(t: ConvTile) {
    // SAFETY: the caller upholds this function's contract: every read or
    // write below is at a position it lists (masked lanes are not accessed).
    unsafe {
        let ConvTile {
            kc,
            a,
            offs,
            b,
            runs,
            bias,
            accumulate,
            c,
            ldc,
            ..
        } = t;
        let nruns = t.nruns;
        let run = |v: usize| *runs.add(v.min(nruns - 1));
        let vb: [usize; NV] = std::array::from_fn(|v| run(v).b);
        let vc: [usize; NV] = std::array::from_fn(|v| run(v).c);
        let masks: [__mmask16; NV] = std::array::from_fn(|v| {
            if v < nruns {
                ((1u32 << run(v).lanes) - 1) as __mmask16
            } else {
                0
            }
        });
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        if !bias.is_null() {
            for (r, accr) in acc.iter_mut().enumerate() {
                *accr = [_mm512_set1_ps(*bias.add(r)); NV];
            }
        }
        // Unrolled by two steps of k (a last odd step runs alone).
        let mut p = 0;
        while p < kc {
            let steps = if p + 2 <= kc { 2 } else { 1 };
            for s in 0..steps {
                let off = *offs.add(p + s);
                let mut bv = [_mm512_setzero_ps(); NV];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = _mm512_maskz_loadu_ps(masks[v], b.add(off + vb[v]));
                }
                let ap = a.add((p + s) * 8);
                for (r, accr) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ap.add(r));
                    for v in 0..NV {
                        accr[v] = _mm512_fmadd_ps(av, bv[v], accr[v]);
                    }
                }
            }
            p += steps;
        }
        for (r, accr) in acc.iter().enumerate() {
            for v in 0..NV {
                let dst = c.add(r * ldc + vc[v]);
                let out = if accumulate {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(masks[v], dst), accr[v])
                } else {
                    accr[v]
                };
                _mm512_mask_storeu_ps(dst, masks[v], out);
            }
        }
    }
}

/// The implicit-GEMM convolution tile for AVX2 + FMA: as
/// [`conv_tile_f32_512`] for `t.rows` (1 to 4) rows of a packed A panel
/// (step `p` at `a + 8p`, still 8 apart) and `t.nruns` (1 to 3) runs of up
/// to 8 pixels: up to 12 `ymm` accumulators, 3 for B, 1 for the broadcast
/// A element.
///
/// # Safety
/// AVX2 and FMA must be available; as [`conv_tile_f32_512`] otherwise, with
/// `rows` in `1..=4`, `nruns` in `1..=3`, runs of at most 8 lanes.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn conv_tile_f32_256(t: ConvTile) {
    // SAFETY: forwarded: the caller upholds the contract, which the
    // instantiation below shares (`ROWS = rows`, `NV = nruns`).
    unsafe { pair_dispatch!(conv_tile_256, (t.rows, t.nruns), up_to_4x3, (t)) }
}

/// [`conv_tile_f32_256`] for `ROWS` rows and `NV` runs.
///
/// # Safety
/// As [`conv_tile_f32_256`], with `rows == ROWS` and `nruns == NV`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn conv_tile_256<const ROWS: usize, const NV: usize>(t: ConvTile) {
    // SAFETY: the caller upholds this function's contract: every read or
    // write below is at a position it lists (a whole run is read and
    // written with plain loads and stores, a shorter one with masked ones,
    // whose masked-off lanes are not accessed).
    unsafe {
        let ConvTile {
            kc,
            a,
            offs,
            b,
            bias,
            accumulate,
            c,
            ldc,
            ..
        } = t;
        let runs: [super::implicit::PixelRun; NV] = std::array::from_fn(|v| *t.runs.add(v));
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let masks: [__m256i; NV] = std::array::from_fn(|v| {
            _mm256_cmpgt_epi32(_mm256_set1_epi32(runs[v].lanes as i32), lanes)
        });
        let whole: [bool; NV] = std::array::from_fn(|v| runs[v].lanes == 8);
        let mut acc = [[_mm256_setzero_ps(); NV]; ROWS];
        if !bias.is_null() {
            for (r, accr) in acc.iter_mut().enumerate() {
                *accr = [_mm256_set1_ps(*bias.add(r)); NV];
            }
        }
        for p in 0..kc {
            let off = *offs.add(p);
            let mut bv = [_mm256_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                let src = b.add(off + runs[v].b);
                *x = if whole[v] {
                    _mm256_loadu_ps(src)
                } else {
                    _mm256_maskload_ps(src, masks[v])
                };
            }
            let ap = a.add(p * 8);
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(r));
                for v in 0..NV {
                    accr[v] = _mm256_fmadd_ps(av, bv[v], accr[v]);
                }
            }
        }
        for (r, accr) in acc.iter().enumerate() {
            for v in 0..NV {
                let dst = c.add(r * ldc + runs[v].c);
                if whole[v] {
                    let out = if accumulate {
                        _mm256_add_ps(_mm256_loadu_ps(dst), accr[v])
                    } else {
                        accr[v]
                    };
                    _mm256_storeu_ps(dst, out);
                } else {
                    let out = if accumulate {
                        _mm256_add_ps(_mm256_maskload_ps(dst, masks[v]), accr[v])
                    } else {
                        accr[v]
                    };
                    _mm256_maskstore_ps(dst, masks[v], out);
                }
            }
        }
    }
}

/// `even[t] = src[2t]`, `odd[t] = src[2t + 1]` for `t < n`, 16 pairs per
/// step (two loads, two two-source permutes), the last step masked.
///
/// # Safety
/// AVX-512F must be available; `src` must be valid for reads of `2n`
/// elements, `even` and `odd` for writes of `n`.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn deinterleave_f32_512(
    src: *const f32,
    even: *mut f32,
    odd: *mut f32,
    n: usize,
) {
    // SAFETY: the caller upholds this function's contract: every access
    // below is at pair `t < n` (masked off past it).
    unsafe {
        let ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let mut t = 0;
        while t < n {
            let pairs = (n - t).min(16);
            let (lo, hi, out) = if pairs == 16 {
                (
                    _mm512_loadu_ps(src.add(2 * t)),
                    _mm512_loadu_ps(src.add(2 * t + 16)),
                    0xffff,
                )
            } else {
                // `2·pairs` elements: the first `min(2·pairs, 16)` in `lo`.
                let m = |lanes: usize| ((1u32 << lanes.min(16)) - 1) as __mmask16;
                (
                    _mm512_maskz_loadu_ps(m(2 * pairs), src.add(2 * t)),
                    _mm512_maskz_loadu_ps(m((2 * pairs).saturating_sub(16)), src.add(2 * t + 16)),
                    m(pairs),
                )
            };
            _mm512_mask_storeu_ps(even.add(t), out, _mm512_permutex2var_ps(lo, ie, hi));
            _mm512_mask_storeu_ps(odd.add(t), out, _mm512_permutex2var_ps(lo, io, hi));
            t += pairs;
        }
    }
}

/// The operands of one tile of a convolution's weight gradient as an
/// implicit product (see `ImplicitGemm::weight_grad`): `R` groups of `T`
/// consecutive taps, group `r` reading `planes` from `offs[r]` (tap `t` one
/// element further on) and adding its sums for tap `t` into `out[r] + t·ldc`;
/// `nruns` runs of pixels, pixel `j` of a run reading `planes` at `run.b +
/// j·step` (plus the group's offset and the tap) and the output gradient's
/// `16·NV` values at `g + (run.c + j)·ldg`.
#[derive(Clone, Copy, Debug)]
pub(super) struct WeightTile {
    pub(super) planes: *const f32,
    pub(super) offs: *const usize,
    pub(super) out: *const *mut f32,
    pub(super) ldc: usize,
    pub(super) step: usize,
    pub(super) g: *const f32,
    pub(super) ldg: usize,
    pub(super) runs: *const super::implicit::PixelRun,
    pub(super) nruns: usize,
}

/// Groups per weight-gradient tile with `taps` taps and `nv` vectors: at
/// most 28 accumulators (with the `nv` output-gradient vectors and the
/// broadcast element, 31 of the 32 registers) and 6 group pointers (0 if no
/// kernel has that shape).
pub(super) const fn weight_tile_groups(taps: usize, nv: usize) -> usize {
    if taps == 0 || taps > 7 || (nv != 1 && nv != 2) {
        return 0;
    }
    let r = 28 / (taps * nv);
    if r > 6 {
        6
    } else if r == 0 {
        1
    } else {
        r
    }
}

/// The weight-gradient tile, AVX-512: for `taps` (1 to 7) taps and `nv` (1
/// or 2) vectors of 16 output channels, with `weight_tile_groups(taps, nv)`
/// groups, `out[r][t·ldc + o] += Σ_runs Σ_{j < lanes} planes[offs[r] + t +
/// run.b + j·step] · g[(run.c + j)·ldg + o]` for `o < 16·nv`. Each planes
/// element is broadcast and multiplied into `nv` vectors of the output
/// gradient, which is read once per pixel for every tap of every group.
///
/// # Safety
/// AVX-512F must be available; `weight_tile_groups(taps, nv)` must be
/// `R > 0`; `offs` and `out` must be valid for reads of `R` elements, `runs`
/// of `nruns` runs; for every group `r`, tap `t < taps`, run and `j <
/// lanes`, `planes` must be valid for reads at `offs[r] + t + run.b +
/// j·step` and `g` for reads of `16·nv` elements at `(run.c + j)·ldg`; every
/// `out[r]` for reads and writes of `16·nv` elements at `t·ldc`, `t < taps`,
/// and no two of those ranges may overlap.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn weight_tile_f32_512(t: WeightTile, taps: usize, nv: usize) {
    // SAFETY: forwarded: each instantiation's contract is this one's with
    // `T = taps`, `NV = nv` and `R = weight_tile_groups(taps, nv)`.
    unsafe {
        macro_rules! tiles {
            ($(($t:literal, $nv:literal)),*) => {
                match (taps, nv) {
                    $(($t, $nv) => weight_tile_512::<$t, $nv, { weight_tile_groups($t, $nv) }>(t),)*
                    _ => unreachable!("no weight-gradient tile for {taps} taps × {nv} vectors"),
                }
            };
        }
        tiles!(
            (1, 1),
            (2, 1),
            (3, 1),
            (4, 1),
            (5, 1),
            (6, 1),
            (7, 1),
            (1, 2),
            (2, 2),
            (3, 2),
            (4, 2),
            (5, 2),
            (6, 2),
            (7, 2)
        )
    }
}

/// [`weight_tile_f32_512`] for `T` taps, `NV` vectors and `R` groups.
///
/// # Safety
/// As [`weight_tile_f32_512`] with `taps = T`, `nv = NV`, `R` groups.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn weight_tile_512<const T: usize, const NV: usize, const R: usize>(t: WeightTile) {
    // SAFETY: the caller upholds this function's contract: every read and
    // write below is at a position it lists (the pointers step past the last
    // pixel with wrapping arithmetic and are not read there).
    unsafe {
        let mut acc = [[[_mm512_setzero_ps(); NV]; T]; R];
        let offs: [usize; R] = std::array::from_fn(|r| *t.offs.add(r));
        for q in 0..t.nruns {
            let run = *t.runs.add(q);
            let mut gp = t.g.add(run.c * t.ldg);
            let mut pp: [*const f32; R] = std::array::from_fn(|r| t.planes.add(offs[r] + run.b));
            for _ in 0..run.lanes {
                let gv: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(gp.add(16 * v)));
                for (accr, p) in acc.iter_mut().zip(pp.iter_mut()) {
                    for (tap, acct) in accr.iter_mut().enumerate() {
                        let a = _mm512_set1_ps(*p.add(tap));
                        for (x, &gv) in acct.iter_mut().zip(&gv) {
                            *x = _mm512_fmadd_ps(a, gv, *x);
                        }
                    }
                    *p = p.wrapping_add(t.step);
                }
                gp = gp.wrapping_add(t.ldg);
            }
        }
        for (r, accr) in acc.iter().enumerate() {
            let base = *t.out.add(r);
            for (tap, acct) in accr.iter().enumerate() {
                for (v, &x) in acct.iter().enumerate() {
                    let dst = base.add(tap * t.ldc + 16 * v);
                    _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), x));
                }
            }
        }
    }
}

/// The permutes of [`transpose16_f32_512`], per round `k` (`b = 2^k`): row
/// `i` (bit `k` clear) and its partner `i + b` become, lane `j`: the first
/// `(i, j)` if bit `k` of `j` is clear, else `(i + b, j − b)`; the second
/// `(i, j + b)` if it is clear, else `(i + b, j)` (indices of 16 and more
/// name the second source).
const TRANSPOSE16: [[[i32; 16]; 2]; 4] = {
    let mut t = [[[0; 16]; 2]; 4];
    let mut k = 0;
    while k < 4 {
        let b = 1 << k;
        let mut j = 0;
        while j < 16 {
            let (lo, hi) = if j & b == 0 {
                (j, j + b)
            } else {
                (16 + j - b, 16 + j)
            };
            t[k][0][j] = lo as i32;
            t[k][1][j] = hi as i32;
            j += 1;
        }
        k += 1;
    }
    t
};

/// Transposes a 16 × 16 block: `dst[j·ldd + i] = src[i·lds + j]` for
/// `i, j < 16`, in four rounds of two-source permutes (round `k` swaps bit
/// `k` of the row index with bit `k` of the column index).
///
/// # Safety
/// AVX-512F must be available; `src` must be valid for reads of 16
/// elements at `i·lds` and `dst` for writes of 16 at `j·ldd`, `i, j < 16`.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn transpose16_f32_512(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
    // SAFETY: the caller upholds this function's contract: 16 rows of 16
    // read from `src`, 16 of 16 written to `dst`.
    unsafe {
        let mut rows: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(src.add(i * lds)));
        for (k, [lo, hi]) in TRANSPOSE16.iter().enumerate() {
            let b = 1 << k;
            let (lo, hi) = (
                _mm512_loadu_si512(lo.as_ptr().cast()),
                _mm512_loadu_si512(hi.as_ptr().cast()),
            );
            for i in 0..16 {
                if i & b == 0 {
                    let (x, y) = (rows[i], rows[i + b]);
                    rows[i] = _mm512_permutex2var_ps(x, lo, y);
                    rows[i + b] = _mm512_permutex2var_ps(x, hi, y);
                }
            }
        }
        for (j, &row) in rows.iter().enumerate() {
            _mm512_storeu_ps(dst.add(j * ldd), row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lane `l` of `reduce16` sums the input its map names.
    #[test]
    fn reduce16_sums_each_input_into_its_lane() {
        if Avx512::detect().is_none() {
            return;
        }
        const SLOT: [usize; 16] = [0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15];
        // Input s has lanes s·100 + lane index; its sum is 1600·s + 120.
        let vals: Vec<[f32; 16]> = (0..16)
            .map(|s| std::array::from_fn(|i| (s * 100 + i) as f32))
            .collect();
        let mut out = [0.0f32; 16];
        // SAFETY: AVX-512F was detected above; every pointer covers 16 floats.
        unsafe {
            let v: [__m512; 16] = std::array::from_fn(|s| _mm512_loadu_ps(vals[s].as_ptr()));
            _mm512_storeu_ps(out.as_mut_ptr(), reduce16(v));
        }
        for l in 0..16 {
            assert_eq!(out[l], (1600 * SLOT[l] + 120) as f32, "lane {l}");
        }
    }
}
