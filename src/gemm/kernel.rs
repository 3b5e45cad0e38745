//! Micro-kernel abstraction and the portable (plain Rust) micro-kernels.
//!
//! A micro-kernel multiplies one packed `MR × kc` panel of A by one
//! `kc × NR` panel of B and merges the `MR × NR` result into a tile of C:
//! `C_tile = alpha · (A_panel · B_panel) + beta · C_tile` (with `beta == 0`
//! meaning "overwrite, never read C").

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Add, Mul};

/// Element types the GEMM engine works on (`f32` and `f64`).
pub(crate) trait Elem:
    Copy + Send + Sync + PartialEq + Debug + Default + Add<Output = Self> + Mul<Output = Self> + 'static
{
    /// Additive identity.
    const ZERO: Self;
    /// Multiplicative identity.
    const ONE: Self;
}

impl Elem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl Elem for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// Cache-blocking parameters of the five-loop GEMM driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Blocking {
    /// Depth of a packed panel (the `k` extent kept hot in L1 for one B micro-panel).
    pub kc: usize,
    /// Rows of A packed at once (the packed A block lives in L2); multiple of `MR`.
    pub mc: usize,
    /// Columns of B packed at once (the packed B block lives in L3); multiple of `NR`.
    pub nc: usize,
}

/// A register-blocked micro-kernel together with the blocking it is tuned for.
pub(crate) trait MicroKernel: Copy + Send + Sync {
    /// Element type.
    type T: Elem;
    /// Rows of the register tile (rows per packed A panel).
    const MR: usize;
    /// Columns of the register tile (columns per packed B panel).
    const NR: usize;
    /// Cache blocking to use with this kernel.
    const BLOCKING: Blocking;

    /// Computes `c = alpha · a·b + beta · c` on one tile.
    ///
    /// * `a`: packed A panel, element `(r, p)` at `a[p * MR + r]`, `a.len() >= kc * MR`.
    /// * `b`: B panel, element `(p, j)` at `b[p * ldb + j]`,
    ///   `b.len() >= (kc - 1) * ldb + NR` when `kc > 0`.
    /// * `c`: the rows of the C tile (`1..=MR` of them), each `1..=NR` long
    ///   and all of the same length.
    ///
    /// `beta == 0` overwrites `c` without reading it.
    #[allow(clippy::too_many_arguments)]
    fn run(
        self,
        kc: usize,
        alpha: Self::T,
        a: &[Self::T],
        b: &[Self::T],
        ldb: usize,
        beta: Self::T,
        c: &mut [&mut [Self::T]],
    );

    /// Rows of A per tile of the dot-product kernel (0: no such kernel).
    const DOT_ROWS: usize = 0;
    /// Columns of B per tile of the dot-product kernel.
    const DOT_COLS: usize = 0;

    /// Dot-product kernel for operands that are both contiguous along `k`
    /// (A row-major, B column-major — e.g. `X·Wᵀ` or a weight gradient
    /// `dY·colsᵀ`), which needs no packing at all:
    /// `c[r][j] = alpha · (a[r] · b[j]) + beta · c[r][j]`.
    ///
    /// `a` holds `1..=DOT_ROWS` rows and `b` `1..=DOT_COLS` columns, all of
    /// the same length; `c` has `a.len()` rows of `b.len()` elements. Only
    /// called when `DOT_ROWS > 0`.
    fn dot(
        self,
        alpha: Self::T,
        a: &[&[Self::T]],
        b: &[&[Self::T]],
        beta: Self::T,
        c: &mut [&mut [Self::T]],
    ) {
        let _ = (alpha, a, b, beta, c);
        unreachable!("this micro-kernel has no dot-product variant");
    }
}

/// Checks the dot-kernel contract documented on [`MicroKernel::dot`];
/// panics if it is violated. Returns the common length of the vectors.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // only SIMD kernels have a dot variant
pub(crate) fn check_dot<T>(
    rows: usize,
    cols: usize,
    a: &[&[T]],
    b: &[&[T]],
    c: &[&mut [T]],
) -> usize {
    assert!(
        (1..=rows).contains(&a.len()),
        "gemm dot kernel: bad row count"
    );
    assert!(
        (1..=cols).contains(&b.len()),
        "gemm dot kernel: bad column count"
    );
    let len = a[0].len();
    assert!(
        a.iter().all(|r| r.len() == len) && b.iter().all(|r| r.len() == len),
        "gemm dot kernel: ragged operands"
    );
    assert!(
        c.len() == a.len() && c.iter().all(|r| r.len() == b.len()),
        "gemm dot kernel: bad C tile"
    );
    len
}

/// Checks the micro-kernel contract documented on [`MicroKernel::run`];
/// panics if it is violated. Returns the number of tile columns.
#[inline(always)]
pub(crate) fn check_tile<T>(
    mr: usize,
    nr: usize,
    kc: usize,
    a: &[T],
    b: &[T],
    ldb: usize,
    c: &[&mut [T]],
) -> usize {
    let rows = c.len();
    assert!((1..=mr).contains(&rows), "gemm micro-kernel: bad tile rows");
    let cols = c[0].len();
    assert!((1..=nr).contains(&cols), "gemm micro-kernel: bad tile cols");
    assert!(
        c.iter().all(|r| r.len() == cols),
        "gemm micro-kernel: ragged tile"
    );
    assert!(ldb >= nr, "gemm micro-kernel: ldb < NR");
    // Checked arithmetic: a wrapped bound would let the SIMD kernels read
    // past the panels (release builds do not check overflow).
    let need_a = kc
        .checked_mul(mr)
        .expect("gemm micro-kernel: kc·MR overflows");
    assert!(a.len() >= need_a, "gemm micro-kernel: A panel too short");
    let need_b = match kc {
        0 => 0,
        _ => (kc - 1)
            .checked_mul(ldb)
            .and_then(|x| x.checked_add(nr))
            .expect("gemm micro-kernel: B panel extent overflows"),
    };
    assert!(b.len() >= need_b, "gemm micro-kernel: B panel too short");
    cols
}

/// The portable micro-kernel: plain Rust on fixed-size arrays, which LLVM
/// turns into SIMD code for whatever vector width the target has.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Portable<T>(PhantomData<T>);

impl<T> Portable<T> {
    /// The portable kernel is always available.
    pub(crate) const fn new() -> Self {
        Portable(PhantomData)
    }
}

/// Generic body of the portable kernel for a `MR × NR` register tile.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn portable_kernel<T: Elem, const MR: usize, const NR: usize>(
    kc: usize,
    alpha: T,
    a: &[T],
    b: &[T],
    ldb: usize,
    beta: T,
    c: &mut [&mut [T]],
) {
    let cols = check_tile(MR, NR, kc, a, b, ldb, c);
    let mut acc = [[T::ZERO; NR]; MR];
    for p in 0..kc {
        let ap: &[T; MR] = a[p * MR..p * MR + MR].try_into().expect("MR slice");
        let bp: &[T; NR] = b[p * ldb..p * ldb + NR].try_into().expect("NR slice");
        for r in 0..MR {
            let av = ap[r];
            for j in 0..NR {
                acc[r][j] = acc[r][j] + av * bp[j];
            }
        }
    }
    for (row, accr) in c.iter_mut().zip(acc.iter()) {
        let row = &mut row[..cols];
        if beta == T::ZERO {
            for (cv, &x) in row.iter_mut().zip(accr.iter()) {
                *cv = alpha * x;
            }
        } else {
            for (cv, &x) in row.iter_mut().zip(accr.iter()) {
                *cv = alpha * x + beta * *cv;
            }
        }
    }
}

/// The portable kernel for one element type: `MR × NR` tile and blocking.
macro_rules! portable_kernel_impl {
    ($t:ty, $mr:literal, $nr:literal, $nc:literal) => {
        impl MicroKernel for Portable<$t> {
            type T = $t;
            const MR: usize = $mr;
            const NR: usize = $nr;
            const BLOCKING: Blocking = Blocking {
                kc: 256,
                mc: 64,
                nc: $nc,
            };
            #[inline]
            fn run(
                self,
                kc: usize,
                alpha: $t,
                a: &[$t],
                b: &[$t],
                ldb: usize,
                beta: $t,
                c: &mut [&mut [$t]],
            ) {
                portable_kernel::<$t, $mr, $nr>(kc, alpha, a, b, ldb, beta, c)
            }
        }
    };
}

portable_kernel_impl!(f32, 4, 8, 1024);
portable_kernel_impl!(f64, 4, 4, 512);

#[cfg(test)]
mod tests {
    use super::check_tile;

    /// Bounds that wrap around in `usize` must not pass for empty panels.
    #[test]
    #[should_panic(expected = "overflows")]
    fn tile_bounds_that_overflow_panic() {
        let mut row = [0.0f32; 4];
        let c = [&mut row[..]];
        // kc·8 wraps to exactly 0 (usize::MAX + 1).
        check_tile::<f32>(8, 32, usize::MAX / 8 + 1, &[], &[], 32, &c);
    }

    #[test]
    fn tile_bounds_that_fit_pass() {
        let mut row = [0.0f32; 4];
        let c = [&mut row[..]];
        let (a, b) = (vec![0.0f32; 3 * 8], vec![0.0f32; 2 * 40 + 32]);
        assert_eq!(check_tile::<f32>(8, 32, 3, &a, &b, 40, &c), 4);
    }
}
