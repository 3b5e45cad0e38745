//! Dense matrix multiplication (GEMM) — the engine under conv2d (via
//! im2col), linear layers and `matmul`.
//!
//! [`sgemm`] and [`dgemm`] compute `C = alpha·op(A)·op(B) + beta·C` for
//! row-major `C` and arbitrarily strided `A` and `B`, so transposed operands
//! are expressed by swapping strides and cost nothing extra.
//!
//! # Design
//!
//! The implementation follows the BLIS scheme:
//!
//! * the `n` dimension is cut into blocks of `NC` columns and `k` into blocks
//!   of `KC`; each `KC × NC` block of B is packed into `NR`-column
//!   micro-panels (sized to stay in L2);
//! * `m` is cut into blocks of `MC` rows; each `MC × KC` block of A is packed
//!   into `MR`-row micro-panels;
//! * a register-blocked micro-kernel multiplies one A micro-panel by one B
//!   micro-panel into an `MR × NR` tile of C. With a long `k` the B panel is
//!   the outer loop (reused from L1 by every A panel); with a short `k`,
//!   where writing C dominates, the A panel is, so C is written a few rows at
//!   a time along the rows rather than down `MC` rows at once.
//!
//! Packing absorbs the strides, so every transpose combination runs the same
//! micro-kernel. On `x86_64` the micro-kernels are hand-written with
//! `std::arch` intrinsics and chosen at run time: with AVX-512F, `f32` runs
//! an 8 × 32 kernel on 512-bit vectors (16 accumulators); with AVX2 and FMA,
//! `f32` runs 6 × 16 and `f64` 6 × 8 (12 accumulators each; `f64` uses this
//! one on AVX-512 CPUs too). Elsewhere a portable plain-Rust kernel that the
//! compiler auto-vectorises is used. Packing
//! buffers are thread-local, 64-byte aligned and reused, so steady-state
//! calls do not allocate.
//!
//! When both operands are contiguous along `k` (A row-major, B the transpose
//! of a row-major matrix — a convolution's weight gradient `dY·colsᵀ`, or a
//! linear layer's `X·Wᵀ`) and `C` is small, packing would cost as much as the
//! arithmetic, so a 4 × 3 dot-product kernel reads the operands in place
//! instead.
//!
//! Large products are split across threads (see [`set_num_threads`]): along
//! `n` when it is wide, along `m` when it is tall, or along `k` (with a final
//! reduction) when `C` is small but `k` is long, as for a convolution's weight
//! gradient. The split is chosen by a small cost model that counts the
//! duplicated packing work each choice implies; small products stay on the
//! calling thread.
//!
//! # Example
//! ```
//! use tapegrad::gemm::sgemm;
//! // C (2×2) = A (2×3) · B (3×2), all row-major.
//! let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
//! let b = [7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
//! let mut c = [0.0f32; 4];
//! sgemm(2, 2, 3, 1.0, &a, 3, 1, &b, 2, 1, 0.0, &mut c, 2);
//! assert_eq!(c, [58.0, 64.0, 139.0, 154.0]);
//! ```

pub(crate) mod implicit;
mod kernel;
mod pack;
pub mod peak;
pub(crate) mod prepacked;
pub(crate) mod switches;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::cell::{Cell, RefCell};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use kernel::{Elem, MicroKernel, Portable};
use pack::{MatRef, pack_a, pack_b, packed_len};
pub use switches::SwitchGuard;

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

/// Single-precision general matrix multiply:
/// `C = alpha·A·B + beta·C` with `A` `m × k`, `B` `k × n`, `C` `m × n`.
///
/// * `A` element `(i, p)` is `a[i * rsa + p * csa]`;
/// * `B` element `(p, j)` is `b[p * rsb + j * csb]`;
/// * `C` element `(i, j)` is `c[i * ldc + j]` (row-major, `ldc >= n`).
///
/// A row-major matrix with `cols` columns has strides `(cols, 1)`; its
/// transpose is the same slice with strides `(1, cols)`. All four transpose
/// combinations therefore run at the same speed.
///
/// When `beta == 0`, `C` is write-only: its previous contents are never read,
/// so uninitialised garbage (even NaN) does not leak into the result. When
/// `k == 0` or `alpha == 0`, `C` is just scaled by `beta`.
///
/// Large products run on up to [`num_threads`] threads.
///
/// # Panics
/// If a slice is too short for the given dimensions and strides, if
/// `ldc < n` (for non-empty `C`), or if an index computation overflows.
///
/// # Example
/// ```
/// use tapegrad::gemm::sgemm;
/// // C (2×2) = Aᵀ · B where A is stored row-major as 3×2.
/// let a_stored = [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]; // 3×2, so Aᵀ is 2×3
/// let b = [7.0, 8.0, 9.0, 10.0, 11.0, 12.0]; // 3×2 row-major
/// let mut c = [1.0f32; 4];
/// // op(A) = Aᵀ: element (i, p) at a_stored[p * 2 + i] → rsa = 1, csa = 2.
/// sgemm(2, 2, 3, 1.0, &a_stored, 1, 2, &b, 2, 1, 1.0, &mut c, 2);
/// assert_eq!(c, [59.0, 65.0, 140.0, 155.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    gemm_entry(
        "sgemm",
        default_path(),
        call_threads(),
        m,
        n,
        k,
        alpha,
        (a, rsa, csa),
        (b, rsb, csb),
        beta,
        c,
        ldc,
    );
}

/// Double-precision general matrix multiply:
/// `C = alpha·A·B + beta·C` with `A` `m × k`, `B` `k × n`, `C` `m × n`.
///
/// The layout conventions, `beta == 0` semantics, threading and panics are
/// exactly those of [`sgemm`].
///
/// # Example
/// ```
/// use tapegrad::gemm::dgemm;
/// // C (1×1) = 2 · aᵀb (a dot product as a 1×3 · 3×1 product).
/// let a = [1.0, 2.0, 3.0];
/// let b = [4.0, 5.0, 6.0];
/// let mut c = [f64::NAN]; // never read, since beta == 0
/// dgemm(1, 1, 3, 2.0, &a, 3, 1, &b, 1, 1, 0.0, &mut c, 1);
/// assert_eq!(c, [64.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn dgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    a: &[f64],
    rsa: usize,
    csa: usize,
    b: &[f64],
    rsb: usize,
    csb: usize,
    beta: f64,
    c: &mut [f64],
    ldc: usize,
) {
    gemm_entry(
        "dgemm",
        default_path(),
        call_threads(),
        m,
        n,
        k,
        alpha,
        (a, rsa, csa),
        (b, rsb, csb),
        beta,
        c,
        ldc,
    );
}

/// Sets the number of threads [`sgemm`] / [`dgemm`] may use for large
/// products. `0` restores the default: the `TAPEGRAD_THREADS` environment
/// variable if it holds a positive integer, otherwise
/// [`std::thread::available_parallelism`].
///
/// The calling thread is one of them; the others are tapegrad's own worker
/// threads, started on first use (see the `threads` module in
/// `docs/design.md`).
///
/// # Example
/// ```
/// use tapegrad::gemm::{num_threads, set_num_threads};
/// set_num_threads(1);
/// assert_eq!(num_threads(), 1);
/// set_num_threads(0); // back to the default
/// assert!(num_threads() >= 1);
/// ```
pub fn set_num_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

/// The number of threads GEMM calls may use: the value given to
/// [`set_num_threads`], or when that is unset (or `0`) the
/// `TAPEGRAD_THREADS` environment variable (read once), or else the
/// machine's available parallelism. Always at least 1.
///
/// # Example
/// ```
/// assert!(tapegrad::gemm::num_threads() >= 1);
/// ```
pub fn num_threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => default_threads(),
        n => n,
    }
}

/// Runs the portable (non-SIMD) micro-kernels (`true`) or the best ones
/// the CPU supports (`false`) in every [`sgemm`] / [`dgemm`] call and
/// convolution started on the calling thread, for as long as the returned
/// guard lives (the ops hand the setting to their worker threads; other
/// threads are unaffected). Intended for testing and benchmarking the
/// fallback path on machines that have AVX2; results agree with the SIMD
/// path up to floating-point rounding.
///
/// # Example
/// ```
/// use tapegrad::gemm::{force_portable, sgemm};
/// let mut c = [0.0f32];
/// {
///     let _portable = force_portable(true);
///     sgemm(1, 1, 2, 1.0, &[1.0, 2.0], 2, 1, &[3.0, 4.0], 1, 1, 0.0, &mut c, 1);
/// } // dropped: this thread's previous setting is back
/// assert_eq!(c, [11.0]);
/// ```
#[doc(hidden)]
pub fn force_portable(on: bool) -> SwitchGuard {
    switches::force_path(if on { Path::Portable } else { Path::Auto })
}

/// Caps the micro-kernels at AVX2+FMA (`true`) or lets them use AVX-512
/// where the CPU has it (`false`) in every GEMM and convolution started on
/// the calling thread, for as long as the returned guard lives (handed to
/// the ops' worker threads; other threads are unaffected). Intended for
/// testing the AVX2 kernels on AVX-512 machines; results agree up to
/// rounding. [`force_avx2_process_wide`] sets the default of threads that
/// hold no guard.
///
/// # Example
/// ```
/// use tapegrad::gemm::{force_avx2, sgemm};
/// let _avx2 = force_avx2(true);
/// let mut c = [0.0f32];
/// sgemm(1, 1, 2, 1.0, &[1.0, 2.0], 2, 1, &[3.0, 4.0], 1, 1, 0.0, &mut c, 1);
/// drop(_avx2);
/// assert_eq!(c, [11.0]);
/// ```
#[doc(hidden)]
pub fn force_avx2(on: bool) -> SwitchGuard {
    switches::force_path(if on { Path::Avx2 } else { Path::Auto })
}

/// [`force_avx2`] as the process-wide default: what every thread that holds
/// no guard runs (the benchmark's `--avx2`). A guard still overrides it on
/// its thread.
///
/// # Example
/// ```
/// use tapegrad::gemm::{force_avx2_process_wide, sgemm};
/// force_avx2_process_wide(true);
/// let mut c = [0.0f32];
/// sgemm(1, 1, 2, 1.0, &[1.0, 2.0], 2, 1, &[3.0, 4.0], 1, 1, 0.0, &mut c, 1);
/// force_avx2_process_wide(false);
/// assert_eq!(c, [11.0]);
/// ```
#[doc(hidden)]
pub fn force_avx2_process_wide(on: bool) {
    switches::set_default_path(if on { Path::Avx2 } else { Path::Auto });
}

/// The kernel family a GEMM started now on this thread runs: `"avx512"`,
/// `"avx2"` or `"portable"` (the [`force_avx2`] / [`force_portable`]
/// guards and the CPU decide). For tests.
///
/// ```
/// use tapegrad::gemm::{force_portable, kernel_family};
/// let _g = force_portable(true);
/// assert_eq!(kernel_family::<f32>(), "portable");
/// ```
#[doc(hidden)]
pub fn kernel_family<T: 'static>() -> &'static str {
    let path = default_path();
    #[cfg(target_arch = "x86_64")]
    {
        let f32_ = std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>();
        if path == Path::Auto && f32_ && x86::Avx512::detect().is_some() {
            return "avx512";
        }
        if path != Path::Portable && x86::Avx2Fma::detect().is_some() {
            return "avx2";
        }
    }
    let _ = path;
    "portable"
}

/// Runs `f` with every [`sgemm`] / [`dgemm`] call it makes on this thread
/// kept on this thread (no split), whatever [`num_threads`] says. For callers
/// that already divide their work between threads (a convolution split over
/// the batch), so that the small per-task products do not split again.
/// Nests; the previous setting is restored even if `f` panics.
pub(crate) fn on_this_thread<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SERIAL.with(|s| s.replace(true)));
    f()
}

// ---------------------------------------------------------------------------
// Configuration state
// ---------------------------------------------------------------------------

static THREADS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set inside [`on_this_thread`]: GEMM calls on this thread run serially.
    static SERIAL: Cell<bool> = const { Cell::new(false) };
}

/// The thread count for a GEMM called now on this thread.
fn call_threads() -> usize {
    if SERIAL.with(|s| s.get()) {
        1
    } else {
        num_threads()
    }
}

fn default_threads() -> usize {
    static DEFAULT: OnceLock<usize> = OnceLock::new();
    *DEFAULT.get_or_init(|| {
        std::env::var("TAPEGRAD_THREADS")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}

/// Which family of micro-kernels to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// The best kernel the CPU supports.
    Auto,
    /// The best kernel the CPU supports, but no wider than AVX2 (no AVX-512).
    Avx2,
    /// The portable kernel, regardless of CPU features.
    Portable,
}

/// Whether SIMD code paths are allowed (not forced off by [`force_portable`]).
pub(crate) fn simd_allowed() -> bool {
    default_path() != Path::Portable
}

/// The kernel family for a product started now on this thread (see
/// [`switches`]).
fn default_path() -> Path {
    switches::path()
}

// ---------------------------------------------------------------------------
// Validation and dispatch
// ---------------------------------------------------------------------------

/// Elements a strided `rows × cols` operand spans (0 if it is empty).
fn span(what: &str, name: &str, rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        return 0;
    }
    (rows - 1)
        .checked_mul(rs)
        .and_then(|x| (cols - 1).checked_mul(cs).and_then(|y| x.checked_add(y)))
        .and_then(|x| x.checked_add(1))
        .unwrap_or_else(|| {
            panic!("{name}: index overflow for {what} ({rows}×{cols}, strides {rs}, {cs})")
        })
}

/// Element types with an engine (kernel selection + thread-local buffers).
trait Engine: Elem {
    /// Runs a validated, non-trivial product with the kernel chosen by `path`.
    #[allow(clippy::too_many_arguments)]
    fn run(
        path: Path,
        threads: usize,
        m: usize,
        n: usize,
        k: usize,
        alpha: Self,
        a: MatRef<'_, Self>,
        b: MatRef<'_, Self>,
        beta: Self,
        c: &mut [Self],
        ldc: usize,
    );

    /// Runs [`prepacked::drive`] with this type's AVX2+FMA kernel, or with
    /// its AVX-512 kernel when `avx512` (only called after the CPU was found
    /// to support the kernel's features when A was packed).
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    fn run_prepacked_simd(
        avx512: bool,
        s: prepacked::Shape<'_, Self>,
        a: &[Self],
        n: usize,
        b: &[Self],
        ldb: usize,
        beta: Self,
        c: &mut [Self],
        ldc: usize,
    );

    /// Runs `f` with this thread's reusable (A, B) packing buffers.
    fn with_pack_buffers<R>(f: impl FnOnce(&mut Vec<Self>, &mut Vec<Self>) -> R) -> R;

    /// Runs `f` with this thread's reusable reduction buffer.
    fn with_reduce_buffer<R>(f: impl FnOnce(&mut Vec<Self>) -> R) -> R;
}

macro_rules! impl_engine {
    ($t:ty, $simd:ident, $pack:ident, $reduce:ident $(, $simd512:ident)?) => {
        thread_local! {
            static $pack: RefCell<(Vec<$t>, Vec<$t>)> = const { RefCell::new((Vec::new(), Vec::new())) };
            static $reduce: RefCell<Vec<$t>> = const { RefCell::new(Vec::new()) };
        }

        impl Engine for $t {
            fn run(
                path: Path,
                threads: usize,
                m: usize,
                n: usize,
                k: usize,
                alpha: Self,
                a: MatRef<'_, Self>,
                b: MatRef<'_, Self>,
                beta: Self,
                c: &mut [Self],
                ldc: usize,
            ) {
                #[cfg(target_arch = "x86_64")]
                {
                    $(if path == Path::Auto {
                        if let Some(tok) = x86::Avx512::detect() {
                            return drive(x86::$simd512(tok), threads, m, n, k, alpha, a, b, beta, c, ldc);
                        }
                    })?
                }
                #[cfg(target_arch = "x86_64")]
                if path != Path::Portable {
                    if let Some(tok) = x86::Avx2Fma::detect() {
                        return drive(x86::$simd(tok), threads, m, n, k, alpha, a, b, beta, c, ldc);
                    }
                }
                let _ = path;
                drive(Portable::<$t>::new(), threads, m, n, k, alpha, a, b, beta, c, ldc)
            }

            #[cfg(target_arch = "x86_64")]
            fn run_prepacked_simd(
                avx512: bool,
                s: prepacked::Shape<'_, Self>,
                a: &[Self],
                n: usize,
                b: &[Self],
                ldb: usize,
                beta: Self,
                c: &mut [Self],
                ldc: usize,
            ) {
                $(if avx512 {
                    let tok = x86::Avx512::detect().expect("AVX-512 was detected when A was packed");
                    return prepacked::drive(x86::$simd512(tok), s, a, n, b, ldb, beta, c, ldc);
                })?
                assert!(!avx512, "no AVX-512 kernel for {}", std::any::type_name::<$t>());
                let tok = x86::Avx2Fma::detect().expect("AVX2+FMA was detected when A was packed");
                prepacked::drive(x86::$simd(tok), s, a, n, b, ldb, beta, c, ldc)
            }

            fn with_pack_buffers<R>(f: impl FnOnce(&mut Vec<Self>, &mut Vec<Self>) -> R) -> R {
                $pack.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut bufs) => {
                        let (pa, pb) = &mut *bufs;
                        f(pa, pb)
                    }
                    // Re-entrant use on this thread (not expected, but possible
                    // through work stealing): fall back to fresh buffers.
                    Err(_) => f(&mut Vec::new(), &mut Vec::new()),
                })
            }

            fn with_reduce_buffer<R>(f: impl FnOnce(&mut Vec<Self>) -> R) -> R {
                $reduce.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut buf) => f(&mut buf),
                    Err(_) => f(&mut Vec::new()),
                })
            }
        }
    };
}

impl_engine!(f32, Avx2F32, PACK_F32, REDUCE_F32, Avx512F32);
impl_engine!(f64, Avx2F64, PACK_F64, REDUCE_F64);

/// Validates the arguments, handles the degenerate cases, and runs the product.
#[allow(clippy::too_many_arguments)]
fn gemm_entry<T: Engine>(
    name: &str,
    path: Path,
    threads: usize,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    (a, rsa, csa): (&[T], usize, usize),
    (b, rsb, csb): (&[T], usize, usize),
    beta: T,
    c: &mut [T],
    ldc: usize,
) {
    let need_a = span("A", name, m, k, rsa, csa);
    assert!(
        a.len() >= need_a,
        "{name}: A (m×k = {m}×{k}, rsa={rsa}, csa={csa}) needs {need_a} elements, slice has {}",
        a.len()
    );
    let need_b = span("B", name, k, n, rsb, csb);
    assert!(
        b.len() >= need_b,
        "{name}: B (k×n = {k}×{n}, rsb={rsb}, csb={csb}) needs {need_b} elements, slice has {}",
        b.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        ldc >= n,
        "{name}: ldc ({ldc}) < n ({n}) for C (m×n = {m}×{n})"
    );
    let need_c = span("C", name, m, n, ldc, 1);
    assert!(
        c.len() >= need_c,
        "{name}: C (m×n = {m}×{n}, ldc={ldc}) needs {need_c} elements, slice has {}",
        c.len()
    );
    let c = &mut c[..need_c];
    if k == 0 || alpha == T::ZERO {
        scale_c(m, n, beta, c, ldc);
        return;
    }
    let a = MatRef {
        data: &a[..need_a],
        rs: rsa,
        cs: csa,
    };
    let b = MatRef {
        data: &b[..need_b],
        rs: rsb,
        cs: csb,
    };
    T::run(path, threads.max(1), m, n, k, alpha, a, b, beta, c, ldc);
}

/// `C = beta·C` (`beta == 0` overwrites with zeros without reading).
fn scale_c<T: Elem>(m: usize, n: usize, beta: T, c: &mut [T], ldc: usize) {
    for row in c.chunks_mut(ldc).take(m) {
        let row = &mut row[..n];
        if beta == T::ZERO {
            row.fill(T::ZERO);
        } else if beta != T::ONE {
            for x in row {
                *x = beta * *x;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Views of C
// ---------------------------------------------------------------------------

/// Largest `MR` of any kernel (size of the tile-row scratch array).
const MAX_MR: usize = 8;

/// The part of C one thread writes.
enum CView<'a, T> {
    /// A contiguous row-major block with row stride `ldc`.
    Contig { data: &'a mut [T], ldc: usize },
    /// Individual rows (used when threads split C by columns).
    Rows(Vec<&'a mut [T]>),
}

impl<T> CView<'_, T> {
    /// Fills `out[..rows]` with the rows of the `rows × cols` tile at `(i0, j0)`.
    #[inline]
    fn tile<'s>(
        &'s mut self,
        i0: usize,
        j0: usize,
        rows: usize,
        cols: usize,
        out: &mut [&'s mut [T]; MAX_MR],
    ) {
        match self {
            CView::Contig { data, ldc } => {
                let ldc = *ldc;
                let mut rest: &'s mut [T] = &mut data[i0 * ldc + j0..];
                for (r, slot) in out.iter_mut().enumerate().take(rows) {
                    let taken = std::mem::take(&mut rest);
                    if r + 1 < rows {
                        let (head, tail) = taken.split_at_mut(ldc);
                        *slot = &mut head[..cols];
                        rest = tail;
                    } else {
                        *slot = &mut taken[..cols];
                    }
                }
            }
            CView::Rows(rs) => {
                for (slot, row) in out.iter_mut().zip(rs[i0..i0 + rows].iter_mut()) {
                    *slot = &mut row[j0..j0 + cols];
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Single-threaded five-loop driver
// ---------------------------------------------------------------------------

/// Splits `total` into `ceil(total / max)` near-equal blocks, each rounded up
/// to a multiple of `unit` (but never above `max`, which is a multiple of
/// `unit`); returns the block size.
fn balanced_block(total: usize, max: usize, unit: usize) -> usize {
    let blocks = total.div_ceil(max);
    total.div_ceil(blocks).next_multiple_of(unit).min(max)
}

/// Computes `C = alpha·A·B + beta·C` for one thread's part of the problem.
/// Requires `m, n, k > 0`.
#[allow(clippy::too_many_arguments)]
fn gemm_serial<K: MicroKernel>(
    kern: K,
    m: usize,
    n: usize,
    k: usize,
    alpha: K::T,
    a: MatRef<'_, K::T>,
    b: MatRef<'_, K::T>,
    beta: K::T,
    c: &mut CView<'_, K::T>,
) where
    K::T: Engine,
{
    if use_dot::<K>(m, n, k, &a, &b) {
        gemm_dot(kern, m, n, k, alpha, a, b, beta, c);
        return;
    }
    let (mr, nr) = (K::MR, K::NR);
    let blk = K::BLOCKING;
    let kc_max = balanced_block(k, blk.kc, 1);
    let mc_max = balanced_block(m, blk.mc, mr);
    // The packed B block (kc × nc) is sized by bytes: a short kc allows a
    // wider block, whose longer contiguous source runs stream better.
    let nc_cap = (blk.nc * blk.kc / kc_max).clamp(blk.nc, 8 * blk.nc) / nr * nr;
    let nc_max = balanced_block(n, nc_cap, nr);
    K::T::with_pack_buffers(|abuf, bbuf| {
        let abuf = aligned(abuf, packed_len(mc_max.min(m), mr, kc_max));
        let bbuf = aligned(bbuf, packed_len(nc_max.min(n), nr, kc_max));
        for jc in (0..n).step_by(nc_max) {
            let nc = nc_max.min(n - jc);
            for pc in (0..k).step_by(kc_max) {
                let kc = kc_max.min(k - pc);
                let beta_eff = if pc == 0 { beta } else { K::T::ONE };
                pack_b_dispatch::<K>(kc, nc, b.sub(pc, jc), bbuf);
                for ic in (0..m).step_by(mc_max) {
                    let mc = mc_max.min(m - ic);
                    pack_a_dispatch::<K>(mc, kc, a.sub(ic, pc), abuf);
                    let mut run_tile = |ir: usize, jr: usize| {
                        let rows = mr.min(mc - ir);
                        let cols = nr.min(nc - jr);
                        let ap = &abuf[(ir / mr) * kc * mr..][..kc * mr];
                        let bp = &bbuf[(jr / nr) * kc * nr..][..kc * nr];
                        let mut tile: [&mut [K::T]; MAX_MR] = Default::default();
                        c.tile(ic + ir, jc + jr, rows, cols, &mut tile);
                        kern.run(kc, alpha, ap, bp, nr, beta_eff, &mut tile[..rows]);
                    };
                    if row_panel_outer(mc, kc, mr) {
                        for ir in (0..mc).step_by(mr) {
                            for jr in (0..nc).step_by(nr) {
                                run_tile(ir, jr);
                            }
                        }
                    } else {
                        for jr in (0..nc).step_by(nr) {
                            for ir in (0..mc).step_by(mr) {
                                run_tile(ir, jr);
                            }
                        }
                    }
                }
            }
        }
    });
}

/// Order of the two innermost loops. With the B micro-panel outer (the
/// classic BLIS order) each B panel is reused from L1 by every A panel, but
/// the C tiles written in a row are `mc` rows apart; when `kc` is short, C
/// traffic dominates and writing that many rows at once (often at a
/// power-of-two stride, so they fight over the same cache sets) is slow.
/// Then the A panel goes outer, and C is written a few rows at a time,
/// streaming along them.
fn row_panel_outer(mc: usize, kc: usize, mr: usize) -> bool {
    mc > 4 * mr && kc < 128
}

/// Whether to run the unpacked dot-product kernel: only when both operands
/// are contiguous along `k` and one side of `C` is short enough that packing
/// (each packed element feeds only `m` or `n` multiply-adds) would dominate.
/// (With `C` 64 × 64 and `k` 72–216, the Winograd weight gradients of the
/// benchmark's `deep`, packing measured faster.)
fn use_dot<K: MicroKernel>(
    m: usize,
    n: usize,
    k: usize,
    a: &MatRef<'_, K::T>,
    b: &MatRef<'_, K::T>,
) -> bool {
    K::DOT_ROWS > 0 && a.cs == 1 && b.rs == 1 && k >= 128 && m.min(n) <= 32
}

/// `C = alpha·A·B + beta·C` with the dot-product kernel (A row-major, B
/// column-major; no packing). Requires `m, n, k > 0`.
#[allow(clippy::too_many_arguments)]
fn gemm_dot<K: MicroKernel>(
    kern: K,
    m: usize,
    n: usize,
    k: usize,
    alpha: K::T,
    a: MatRef<'_, K::T>,
    b: MatRef<'_, K::T>,
    beta: K::T,
    c: &mut CView<'_, K::T>,
) {
    let (dr, dcn) = (K::DOT_ROWS, K::DOT_COLS);
    let size = std::mem::size_of::<K::T>();
    // A block of k long enough to amortise the final horizontal reductions,
    // short enough that one tile's A rows stay in L1 while the B columns
    // stream past; block boundaries stay on 64-byte multiples.
    let kc_max = balanced_block(k, DOT_KC_BYTES / size, 64 / size);
    for pc in (0..k).step_by(kc_max) {
        let kc = kc_max.min(k - pc);
        let beta_eff = if pc == 0 { beta } else { K::T::ONE };
        for i0 in (0..m).step_by(dr) {
            let rows = dr.min(m - i0);
            let a_rows: [&[K::T]; MAX_MR] = std::array::from_fn(|r| {
                if r < rows {
                    &a.data[(i0 + r) * a.rs + pc..][..kc]
                } else {
                    &[]
                }
            });
            for j0 in (0..n).step_by(dcn) {
                let cols = dcn.min(n - j0);
                let b_cols: [&[K::T]; MAX_MR] = std::array::from_fn(|j| {
                    if j < cols {
                        &b.data[(j0 + j) * b.cs + pc..][..kc]
                    } else {
                        &[]
                    }
                });
                let mut tile: [&mut [K::T]; MAX_MR] = Default::default();
                c.tile(i0, j0, rows, cols, &mut tile);
                kern.dot(
                    alpha,
                    &a_rows[..rows],
                    &b_cols[..cols],
                    beta_eff,
                    &mut tile[..rows],
                );
            }
        }
    }
}

/// Length in bytes of one row's slice in a block of the dot kernel.
const DOT_KC_BYTES: usize = 4096;

/// Hints the CPU to bring the cache line holding `x` into cache.
#[inline(always)]
fn prefetch<T>(x: &T) {
    #[cfg(target_arch = "x86_64")]
    x86::prefetch(x);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// Hints the CPU to bring every cache line of `x` into cache.
#[inline(always)]
pub(crate) fn prefetch_all<T>(x: &[T]) {
    for line in x.chunks((64 / std::mem::size_of::<T>().max(1)).max(1)) {
        prefetch(&line[0]);
    }
}

/// Grows `buf` as needed and returns a `len`-element window of it that
/// starts on a 64-byte boundary, so packed panels never straddle cache
/// lines (unaligned 32-byte loads that split a line cost a third of the
/// micro-kernel's speed).
fn aligned<T: Elem>(buf: &mut Vec<T>, len: usize) -> &mut [T] {
    let slack = 64 / std::mem::size_of::<T>();
    if buf.len() < len + slack {
        buf.resize(len + slack, T::ZERO);
    }
    let off = buf.as_ptr().align_offset(64);
    let off = if off <= slack { off } else { 0 };
    &mut buf[off..off + len]
}

/// `pack_a` with the kernel's `MR` as a compile-time constant.
fn pack_a_dispatch<K: MicroKernel>(mc: usize, kc: usize, a: MatRef<'_, K::T>, out: &mut [K::T]) {
    match K::MR {
        4 => pack_a::<K::T, 4>(mc, kc, a, out),
        6 => pack_a::<K::T, 6>(mc, kc, a, out),
        8 => pack_a::<K::T, 8>(mc, kc, a, out),
        mr => unreachable!("unsupported MR {mr}"),
    }
}

/// `pack_b` with the kernel's `NR` as a compile-time constant.
fn pack_b_dispatch<K: MicroKernel>(kc: usize, nc: usize, b: MatRef<'_, K::T>, out: &mut [K::T]) {
    match K::NR {
        4 => pack_b::<K::T, 4>(kc, nc, b, out),
        8 => pack_b::<K::T, 8>(kc, nc, b, out),
        16 => pack_b::<K::T, 16>(kc, nc, b, out),
        32 => pack_b::<K::T, 32>(kc, nc, b, out),
        nr => unreachable!("unsupported NR {nr}"),
    }
}

// ---------------------------------------------------------------------------
// Threading
// ---------------------------------------------------------------------------

/// How a product is divided between threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    /// Run on the calling thread.
    Serial,
    /// Column blocks of C of the given width.
    N(usize),
    /// Row blocks of C of the given height.
    M(usize),
    /// Slices of the `k` range of the given depth, summed at the end.
    K(usize),
}

/// Cost of packing one element, in multiply-add equivalents.
const PACK_COST: f64 = 8.0;
/// Fixed cost of going parallel (task hand-off and waking a pool thread,
/// measured at 10–50 µs on a VM), in multiply-add equivalents.
const PAR_OVERHEAD: f64 = 1_000_000.0;

/// Chooses a split by estimating, for each option, the critical-path work of
/// the busiest thread: its multiply-adds plus its packing (which is
/// duplicated across threads for the operand that is not split).
fn plan_split(m: usize, n: usize, k: usize, threads: usize, mr: usize, nr: usize) -> Split {
    if threads <= 1 {
        return Split::Serial;
    }
    let (mf, nf, kf, t) = (m as f64, n as f64, k as f64, threads as f64);
    let serial = mf * nf * kf + PACK_COST * (mf * kf + kf * nf);
    let mut best = (serial, Split::Serial);
    // Along n: each thread packs all of A and its share of B.
    let w = n.div_ceil(threads).next_multiple_of(nr);
    if w < n {
        let wf = w as f64;
        let cost = mf * wf * kf + PACK_COST * (mf * kf + kf * wf) + PAR_OVERHEAD;
        if cost < best.0 {
            best = (cost, Split::N(w));
        }
    }
    // Along m: each thread packs all of B and its share of A.
    let h = m.div_ceil(threads).next_multiple_of(mr);
    if h < m {
        let hf = h as f64;
        let cost = hf * nf * kf + PACK_COST * (hf * kf + kf * nf) + PAR_OVERHEAD;
        if cost < best.0 {
            best = (cost, Split::M(h));
        }
    }
    // Along k: no duplicated packing, but a serial reduction of C.
    let d = k.div_ceil(threads);
    if d < k {
        let df = d as f64;
        let cost = mf * nf * df
            + PACK_COST * (mf * df + df * nf)
            + PACK_COST * mf * nf * (t - 1.0)
            + PAR_OVERHEAD;
        if cost < best.0 {
            best = (cost, Split::K(d));
        }
    }
    best.1
}

/// One thread's share of a product.
struct Task<'a, T> {
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<'a, T>,
    b: MatRef<'a, T>,
    beta: T,
    c: CView<'a, T>,
}

/// Runs each task's product in parallel, one task per thread (the calling
/// thread and tapegrad's workers).
fn run_parallel<K: MicroKernel>(kern: K, alpha: K::T, tasks: Vec<Task<'_, K::T>>)
where
    K::T: Engine,
{
    // The kernel is chosen; the switches still travel, for anything the
    // tasks consult them for.
    let sw = switches::current();
    let run = move |mut t: Task<'_, K::T>| {
        switches::with(sw, || {
            gemm_serial(kern, t.m, t.n, t.k, alpha, t.a, t.b, t.beta, &mut t.c)
        })
    };
    crate::threads::for_each_job(tasks, run);
}

/// Runs a validated, non-trivial product with kernel `kern` on up to
/// `threads` threads.
#[allow(clippy::too_many_arguments)]
fn drive<K: MicroKernel>(
    kern: K,
    threads: usize,
    m: usize,
    n: usize,
    k: usize,
    alpha: K::T,
    a: MatRef<'_, K::T>,
    b: MatRef<'_, K::T>,
    beta: K::T,
    c: &mut [K::T],
    ldc: usize,
) where
    K::T: Engine,
{
    let split = plan_split(m, n, k, threads, K::MR, K::NR);
    match split {
        Split::Serial => {
            let mut view = CView::Contig { data: c, ldc };
            gemm_serial(kern, m, n, k, alpha, a, b, beta, &mut view);
        }
        Split::M(h) => {
            let tasks = c
                .chunks_mut(h * ldc)
                .enumerate()
                .map(|(q, data)| {
                    let i0 = q * h;
                    Task {
                        m: h.min(m - i0),
                        n,
                        k,
                        a: a.sub(i0, 0),
                        b,
                        beta,
                        c: CView::Contig { data, ldc },
                    }
                })
                .collect();
            run_parallel(kern, alpha, tasks);
        }
        Split::N(w) => {
            let parts = n.div_ceil(w);
            let mut rows: Vec<Vec<&mut [K::T]>> =
                (0..parts).map(|_| Vec::with_capacity(m)).collect();
            for row in c.chunks_mut(ldc) {
                let mut rest = &mut row[..n];
                for part in rows.iter_mut() {
                    let width = w.min(rest.len());
                    let (head, tail) = std::mem::take(&mut rest).split_at_mut(width);
                    part.push(head);
                    rest = tail;
                }
            }
            let tasks = rows
                .into_iter()
                .enumerate()
                .map(|(q, part)| {
                    let j0 = q * w;
                    Task {
                        m,
                        n: w.min(n - j0),
                        k,
                        a,
                        b: b.sub(0, j0),
                        beta,
                        c: CView::Rows(part),
                    }
                })
                .collect();
            run_parallel(kern, alpha, tasks);
        }
        Split::K(d) => {
            let parts = k.div_ceil(d);
            K::T::with_reduce_buffer(|buf| {
                let need = (parts - 1) * m * n;
                if buf.len() < need {
                    buf.resize(need, K::T::ZERO);
                }
                let mut tasks = Vec::with_capacity(parts);
                tasks.push(Task {
                    m,
                    n,
                    k: d,
                    a,
                    b,
                    beta,
                    c: CView::Contig { data: &mut *c, ldc },
                });
                for (q, data) in buf[..need].chunks_mut(m * n).enumerate() {
                    let p0 = (q + 1) * d;
                    tasks.push(Task {
                        m,
                        n,
                        k: d.min(k - p0),
                        a: a.sub(0, p0),
                        b: b.sub(p0, 0),
                        beta: K::T::ZERO,
                        c: CView::Contig { data, ldc: n },
                    });
                }
                run_parallel(kern, alpha, tasks);
                for part in buf[..need].chunks(m * n) {
                    for (crow, prow) in c.chunks_mut(ldc).zip(part.chunks(n)) {
                        for (x, &y) in crow.iter_mut().zip(prow) {
                            *x = *x + y;
                        }
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small deterministic generator (xorshift64*), values in [-1, 1).
    struct Rng(u64);
    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// Test-side conversion between the element type and f64.
    trait TestElem: Engine {
        const EPS: f64;
        fn from_f64(x: f64) -> Self;
        fn to_f64(self) -> f64;
    }
    impl TestElem for f32 {
        const EPS: f64 = f32::EPSILON as f64;
        fn from_f64(x: f64) -> Self {
            x as f32
        }
        fn to_f64(self) -> f64 {
            self as f64
        }
    }
    impl TestElem for f64 {
        const EPS: f64 = f64::EPSILON;
        fn from_f64(x: f64) -> Self {
            x
        }
        fn to_f64(self) -> f64 {
            self
        }
    }

    /// Operand layout used to build a strided view of a logical matrix.
    #[derive(Clone, Copy, Debug)]
    enum Layout {
        /// Row-major with `pad` extra elements per row.
        RowMajor(usize),
        /// Column-major (i.e. a transposed row-major matrix) with padding.
        ColMajor(usize),
        /// Neither stride is 1.
        Strided,
    }

    /// Stores a logical `rows × cols` matrix (`f(i, j)`) in the given layout;
    /// returns (storage, row stride, col stride). Unused slots hold NaN so any
    /// stray read shows up in the result.
    fn store<T: TestElem>(
        rows: usize,
        cols: usize,
        layout: Layout,
        f: impl Fn(usize, usize) -> f64,
    ) -> (Vec<T>, usize, usize) {
        let (rs, cs) = match layout {
            Layout::RowMajor(pad) => (cols + pad, 1),
            Layout::ColMajor(pad) => (1, rows + pad),
            Layout::Strided => (2 * cols + 1, 2),
        };
        let len = if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        };
        let mut v = vec![T::from_f64(f64::NAN); len];
        for i in 0..rows {
            for j in 0..cols {
                v[i * rs + j * cs] = T::from_f64(f(i, j));
            }
        }
        (v, rs, cs)
    }

    #[derive(Clone, Copy, Debug)]
    struct Case {
        m: usize,
        n: usize,
        k: usize,
        alpha: f64,
        beta: f64,
        la: Layout,
        lb: Layout,
        ldc_pad: usize,
    }

    /// Runs one case through `gemm_entry` and compares with a naive f64
    /// triple loop, with an error bound proportional to `k`.
    fn check_case<T: TestElem>(case: Case, path: Path, threads: usize, rng: &mut Rng) {
        let Case {
            m,
            n,
            k,
            alpha,
            beta,
            la,
            lb,
            ldc_pad,
        } = case;
        let av: Vec<f64> = (0..m * k).map(|_| rng.uniform()).collect();
        let bv: Vec<f64> = (0..k * n).map(|_| rng.uniform()).collect();
        let cv: Vec<f64> = (0..m * n).map(|_| rng.uniform()).collect();
        let (a, rsa, csa) = store::<T>(m, k, la, |i, p| av[i * k + p]);
        let (b, rsb, csb) = store::<T>(k, n, lb, |p, j| bv[p * n + j]);
        let ldc = n + ldc_pad;
        let c_len = if m == 0 { 0 } else { (m - 1) * ldc + n };
        let mut c = vec![T::from_f64(f64::NAN); c_len];
        for i in 0..m {
            for j in 0..n {
                c[i * ldc + j] = if beta == 0.0 {
                    // beta == 0 must not read C: garbage must not propagate.
                    T::from_f64(f64::NAN)
                } else {
                    T::from_f64(cv[i * n + j])
                };
            }
        }
        let c_pad_before: Vec<T> = c.clone();
        gemm_entry(
            "test",
            path,
            threads,
            m,
            n,
            k,
            T::from_f64(alpha),
            (&a, rsa, csa),
            (&b, rsb, csb),
            T::from_f64(beta),
            &mut c,
            ldc,
        );
        for i in 0..m {
            for j in 0..n {
                let mut dot = 0.0;
                let mut mag = 0.0;
                for p in 0..k {
                    // Use the values as rounded to T, like the kernel sees them.
                    let x =
                        T::from_f64(av[i * k + p]).to_f64() * T::from_f64(bv[p * n + j]).to_f64();
                    dot += x;
                    mag += x.abs();
                }
                let c0 = if beta == 0.0 {
                    0.0
                } else {
                    T::from_f64(cv[i * n + j]).to_f64()
                };
                let want = alpha * dot + beta * c0;
                let bound = T::EPS
                    * (k as f64 + 4.0)
                    * (alpha.abs() * mag + beta.abs() * c0.abs() + 1e-30)
                    * 2.0;
                let got = c[i * ldc + j].to_f64();
                assert!(
                    (got - want).abs() <= bound,
                    "{case:?} path={path:?} threads={threads}: C[{i},{j}] = {got}, want {want} (bound {bound})"
                );
            }
            // Padding between rows of C is untouched.
            for j in n..ldc {
                if i + 1 < m {
                    let (x, y) = (c[i * ldc + j].to_f64(), c_pad_before[i * ldc + j].to_f64());
                    assert!(x.is_nan() && y.is_nan(), "{case:?}: padding of C modified");
                }
            }
        }
    }

    const LAYOUTS: [Layout; 5] = [
        Layout::RowMajor(0),
        Layout::ColMajor(0),
        Layout::RowMajor(3),
        Layout::ColMajor(2),
        Layout::Strided,
    ];

    fn random_cases<T: TestElem>(path: Path) {
        // A different stream of cases for each kernel family and type.
        let mut rng = Rng(1 + path as u64 + 3 * (std::mem::size_of::<T>() as u64 / 8));
        let sizes = [
            1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 17, 23, 31, 33, 47, 64, 65, 100,
        ];
        for it in 0..400 {
            let m = sizes[rng.below(sizes.len())];
            let n = sizes[rng.below(sizes.len())];
            let k = sizes[rng.below(sizes.len())];
            let la = LAYOUTS[rng.below(LAYOUTS.len())];
            let lb = LAYOUTS[rng.below(LAYOUTS.len())];
            let alpha = [1.0, -0.5, 2.0][rng.below(3)];
            let beta = [0.0, 1.0, 0.75, -1.0][rng.below(4)];
            let ldc_pad = rng.below(3);
            let threads = 1 + it % 3;
            let case = Case {
                m,
                n,
                k,
                alpha,
                beta,
                la,
                lb,
                ldc_pad,
            };
            check_case::<T>(case, path, threads, &mut rng);
        }
    }

    /// All four transpose combinations, every beta kind, sizes straddling
    /// the register tile and cache blocks (KC = 256, MC = 144 / 72 / 64).
    fn blocking_edges<T: TestElem>(path: Path) {
        let mut rng = Rng(99);
        let shapes = [
            (1, 1, 1),
            (6, 16, 256),
            (7, 17, 257),
            (150, 33, 300),
            (13, 70, 513),
            (145, 9, 40),
            (3, 4100, 5),
            (5, 6, 131), // dot kernel: partial tiles in both directions, masked tail
        ];
        for &(m, n, k) in &shapes {
            for (la, lb) in [
                (Layout::RowMajor(0), Layout::RowMajor(0)),
                (Layout::ColMajor(0), Layout::RowMajor(0)),
                (Layout::RowMajor(0), Layout::ColMajor(0)),
                (Layout::ColMajor(1), Layout::ColMajor(1)),
            ] {
                for beta in [0.0, 1.0, 0.5] {
                    let case = Case {
                        m,
                        n,
                        k,
                        alpha: 1.5,
                        beta,
                        la,
                        lb,
                        ldc_pad: 1,
                    };
                    check_case::<T>(case, path, 1, &mut rng);
                }
            }
        }
    }

    #[test]
    fn split_planning() {
        // Conv forward: wide n -> split n.
        assert!(matches!(plan_split(16, 32768, 27, 2, 6, 16), Split::N(_)));
        assert!(matches!(plan_split(64, 4096, 576, 2, 6, 16), Split::N(_)));
        // Conv weight gradient: tiny C, long k -> split k.
        assert!(matches!(plan_split(16, 27, 32768, 2, 6, 16), Split::K(_)));
        // Tall and narrow -> split m.
        assert!(matches!(plan_split(4096, 16, 64, 2, 6, 16), Split::M(_)));
        // Tiny products stay serial; one thread is always serial.
        assert_eq!(plan_split(64, 10, 784, 2, 6, 16), Split::Serial);
        assert_eq!(plan_split(512, 512, 512, 1, 6, 16), Split::Serial);
    }

    /// Shapes large enough to be split each way, with 2 and 3 threads.
    fn threaded<T: TestElem>(path: Path) {
        let mut rng = Rng(7);
        let shapes = [(16, 4096, 27), (512, 16, 64), (8, 8, 20000), (70, 90, 300)];
        for &(m, n, k) in &shapes {
            for threads in [2, 3] {
                for (la, lb) in [
                    (Layout::RowMajor(0), Layout::RowMajor(0)),
                    (Layout::RowMajor(0), Layout::ColMajor(0)),
                ] {
                    for beta in [0.0, 0.5] {
                        let case = Case {
                            m,
                            n,
                            k,
                            alpha: 1.0,
                            beta,
                            la,
                            lb,
                            ldc_pad: 2,
                        };
                        check_case::<T>(case, path, threads, &mut rng);
                    }
                }
            }
        }
    }

    /// One test per kernel family the machine may run, for `f32` and `f64`
    /// (AVX-512 has an `f32` kernel only, so `f64` has no separate AVX2 case):
    /// `$name::f32_simd`, `$name::f32_avx2`, `$name::f32_portable`, ….
    macro_rules! per_path {
        ($name:ident, $check:ident) => {
            mod $name {
                use super::*;
                #[test]
                fn f32_simd() {
                    $check::<f32>(Path::Auto);
                }
                #[test]
                fn f32_avx2() {
                    $check::<f32>(Path::Avx2);
                }
                #[test]
                fn f32_portable() {
                    $check::<f32>(Path::Portable);
                }
                #[test]
                fn f64_simd() {
                    $check::<f64>(Path::Auto);
                }
                #[test]
                fn f64_portable() {
                    $check::<f64>(Path::Portable);
                }
            }
        };
    }
    per_path!(random_small, random_cases);
    per_path!(blocking_edge_shapes, blocking_edges);
    per_path!(threaded_splits, threaded);

    #[test]
    fn k_zero_scales_c() {
        for path in [Path::Auto, Path::Avx2, Path::Portable] {
            let mut c = vec![1.0f32, 2.0, 3.0, 4.0];
            gemm_entry(
                "t",
                path,
                1,
                2,
                2,
                0,
                5.0f32,
                (&[], 0, 0),
                (&[], 0, 0),
                2.0,
                &mut c,
                2,
            );
            assert_eq!(c, [2.0, 4.0, 6.0, 8.0]);
            let mut c = vec![f64::NAN; 4];
            gemm_entry(
                "t",
                path,
                1,
                2,
                2,
                0,
                5.0f64,
                (&[], 0, 0),
                (&[], 0, 0),
                0.0,
                &mut c,
                2,
            );
            assert_eq!(c, [0.0; 4]);
        }
    }

    #[test]
    fn alpha_zero_ignores_a_and_b() {
        let a = [f32::NAN; 4];
        let b = [f32::INFINITY; 4];
        let mut c = [1.0f32, 2.0, 3.0, 4.0];
        sgemm(2, 2, 2, 0.0, &a, 2, 1, &b, 2, 1, 3.0, &mut c, 2);
        assert_eq!(c, [3.0, 6.0, 9.0, 12.0]);
    }

    #[test]
    fn empty_dimensions_are_noops() {
        let mut c = [7.0f32; 3];
        sgemm(0, 3, 4, 1.0, &[], 4, 1, &[0.0; 12], 3, 1, 0.0, &mut c, 3);
        sgemm(3, 0, 4, 1.0, &[0.0; 12], 4, 1, &[], 0, 1, 0.0, &mut c, 0);
        assert_eq!(c, [7.0; 3]);
    }

    #[test]
    fn nan_in_c_with_beta_zero_does_not_propagate() {
        for path in [Path::Auto, Path::Avx2, Path::Portable] {
            let (m, n, k) = (13, 37, 9);
            let a = vec![1.0f32; m * k];
            let b = vec![0.5f32; k * n];
            let mut c = vec![f32::NAN; m * n];
            gemm_entry(
                "t",
                path,
                1,
                m,
                n,
                k,
                1.0f32,
                (&a, k, 1),
                (&b, n, 1),
                0.0,
                &mut c,
                n,
            );
            assert!(c.iter().all(|&x| x == 4.5), "{path:?}");
        }
    }

    #[test]
    fn public_wrappers_match_reference() {
        // 3×2 · 2×4, B given transposed (stored 4×2 row-major).
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let bt = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, -1.0];
        let want = [1.0, 2.0, 3.0, 0.0, 3.0, 4.0, 7.0, 2.0, 5.0, 6.0, 11.0, 4.0];
        let mut c32 = [0.0f32; 12];
        let a32: Vec<f32> = a.iter().map(|&x| x as f32).collect();
        let b32: Vec<f32> = bt.iter().map(|&x| x as f32).collect();
        sgemm(3, 4, 2, 1.0, &a32, 2, 1, &b32, 1, 2, 0.0, &mut c32, 4);
        let mut c64 = [0.0f64; 12];
        dgemm(3, 4, 2, 1.0, &a, 2, 1, &bt, 1, 2, 0.0, &mut c64, 4);
        for i in 0..12 {
            assert_eq!(c32[i] as f64, want[i]);
            assert_eq!(c64[i], want[i]);
        }
    }

    #[test]
    #[should_panic(expected = "sgemm: A (m×k = 4×5")]
    fn short_a_panics() {
        let mut c = [0.0f32; 16];
        sgemm(
            4, 4, 5, 1.0, &[0.0; 19], 5, 1, &[0.0; 20], 4, 1, 0.0, &mut c, 4,
        );
    }

    #[test]
    #[should_panic(expected = "dgemm: B (k×n")]
    fn short_b_panics() {
        let mut c = [0.0f64; 16];
        dgemm(
            4, 4, 5, 1.0, &[0.0; 20], 5, 1, &[0.0; 19], 1, 5, 0.0, &mut c, 4,
        );
    }

    #[test]
    #[should_panic(expected = "sgemm: C (m×n = 4×4, ldc=5)")]
    fn short_c_panics() {
        let mut c = [0.0f32; 18];
        sgemm(
            4, 4, 5, 1.0, &[0.0; 20], 5, 1, &[0.0; 20], 4, 1, 0.0, &mut c, 5,
        );
    }

    #[test]
    #[should_panic(expected = "sgemm: ldc (3) < n (4)")]
    fn small_ldc_panics() {
        let mut c = [0.0f32; 16];
        sgemm(
            4, 4, 5, 1.0, &[0.0; 20], 5, 1, &[0.0; 20], 4, 1, 0.0, &mut c, 3,
        );
    }

    /// Many threads (including the pool's workers, so splits nest) calling
    /// the engine at once each get their own packing buffers and correct results.
    #[test]
    fn concurrent_and_nested_calls() {
        let (m, n, k) = (37, 300, 200);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 13) as f32 - 6.0).collect();
        let mut want = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        let check = |t: usize| {
            let mut c = vec![f32::NAN; m * n];
            let path = if t.is_multiple_of(2) {
                Path::Auto
            } else {
                Path::Portable
            };
            gemm_entry(
                "t",
                path,
                2,
                m,
                n,
                k,
                1.0f32,
                (&a, k, 1),
                (&b, n, 1),
                0.0,
                &mut c,
                n,
            );
            // Small integers: every order of summation is exact.
            assert_eq!(c, want);
        };
        let check = &check;
        std::thread::scope(|s| {
            for u in 0..4 {
                s.spawn(move || crate::threads::run(2, |t| check(2 * u + t)));
            }
        });
    }

    #[test]
    fn thread_count_setting() {
        set_num_threads(3);
        assert_eq!(num_threads(), 3);
        set_num_threads(0);
        assert!(num_threads() >= 1);
    }
}
