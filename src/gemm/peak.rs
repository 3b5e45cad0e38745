//! Peak fused-multiply-add throughput measurement.
//!
//! The GEMM benchmark reports its results as a fraction of this number, so it
//! is measured the same way a micro-kernel would use the machine: many
//! independent FMA dependency chains (enough to cover the FMA latency on both
//! FMA ports) on the widest `f32` vectors the GEMM kernels use (512-bit with
//! AVX-512, else 256-bit), with no memory traffic at all.

use std::time::Instant;

/// Number of inner-loop iterations per timed run (each iteration issues
/// `CHAINS` vector FMAs).
const ITERS: u64 = 20_000_000;
/// Independent accumulator chains: 12 covers a 4-cycle latency × 2 ports with
/// room to spare while staying inside the 16 architectural `ymm` registers.
const CHAINS: usize = 12;
/// Lanes per vector (`f32` in a 256-bit register).
const LANES: usize = 8;

/// Measures the peak single-precision FMA throughput of this machine in
/// GFLOP/s (one FMA counts as two floating-point operations), running the
/// same register-only FMA loop on `threads` threads at once (`0` is treated
/// as `1`).
///
/// On `x86_64` CPUs with AVX-512F the loop uses 512-bit `vfmadd`
/// instructions on twelve independent accumulators, the ceiling of the
/// AVX-512 `f32` micro-kernel; with AVX2 and FMA only (or when
/// [`force_avx2`](super::force_avx2) caps the kernels) it uses 256-bit ones,
/// the ceiling of the AVX2 kernels. Elsewhere a portable loop with
/// the same structure is timed instead (whatever the compiler makes of it),
/// so the number is still a meaningful ceiling for the portable GEMM path.
///
/// The measurement takes roughly a tenth of a second per call (best of three
/// runs of [`fma_sample`]).
///
/// # Example
/// ```
/// let gflops = tapegrad::gemm::peak::peak_fma_gflops(1);
/// assert!(gflops > 0.0);
/// ```
pub fn peak_fma_gflops(threads: usize) -> f64 {
    (0..3).map(|_| fma_sample(threads, 1.0)).fold(0.0, f64::max)
}

/// One run of the FMA loop of [`peak_fma_gflops`] on `threads` threads at
/// once (`0` is treated as `1`), `scale` times as long as one of its runs
/// (about 30 ms at `1.0`); returns its GFLOP/s. Benchmarks that sample the
/// ceiling repeatedly, next to the work they compare with it, use this.
///
/// # Example
/// ```
/// let gflops = tapegrad::gemm::peak::fma_sample(2, 0.1);
/// assert!(gflops > 0.0);
/// ```
pub fn fma_sample(threads: usize, scale: f64) -> f64 {
    let iters = ((ITERS as f64 * scale) as u64).max(1000);
    // The calling thread's kernel family, for the threads spawned here.
    let path = super::default_path();
    let start = Instant::now();
    let flops: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| s.spawn(move || fma_loop(iters, path)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let secs = start.elapsed().as_secs_f64();
    if secs > 0.0 {
        flops as f64 / secs / 1e9
    } else {
        0.0
    }
}

/// Runs the FMA loop once on the current thread, `iters` iterations' worth,
/// and returns the number of floating-point operations it performed.
fn fma_loop(iters: u64, path: super::Path) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if path == super::Path::Auto && super::x86::Avx512::detect().is_some() {
            // SAFETY: `fma_loop_avx512` only requires AVX-512F, whose
            // presence was just checked at run time.
            let out = unsafe { fma_loop_avx512(iters / 2, std::hint::black_box(1e-9)) };
            std::hint::black_box(out);
            return (iters / 2) * (CHAINS * 2 * LANES * 2) as u64;
        }
        if path != super::Path::Portable
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
        {
            // SAFETY: `fma_loop_avx2` only requires the AVX2 and FMA target
            // features, whose presence was just checked at run time.
            let out = unsafe { fma_loop_avx2(iters, std::hint::black_box(1e-9)) };
            std::hint::black_box(out);
            return iters * (CHAINS * LANES * 2) as u64;
        }
    }
    let _ = path;
    let out = fma_loop_portable(iters / 4, std::hint::black_box(1e-9));
    std::hint::black_box(out);
    (iters / 4) * (CHAINS * LANES * 2) as u64
}

/// Portable version: twelve arrays of eight lanes, updated with `a*b + c`.
fn fma_loop_portable(iters: u64, x: f32) -> f32 {
    let mut acc = [[0.0f32; LANES]; CHAINS];
    for (i, chain) in acc.iter_mut().enumerate() {
        for (l, v) in chain.iter_mut().enumerate() {
            *v = (i * LANES + l) as f32 * 1e-3;
        }
    }
    let m = [std::hint::black_box(0.999_999f32); LANES];
    let add = [x; LANES];
    for _ in 0..iters {
        for chain in acc.iter_mut() {
            for l in 0..LANES {
                chain[l] = chain[l] * m[l] + add[l];
            }
        }
    }
    acc.iter().flatten().sum()
}

/// AVX2+FMA version: twelve `ymm` accumulators, each updated by one
/// `vfmadd231ps` per iteration.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: u64, x: f32) -> f32 {
    use std::arch::x86_64::*;
    let m = _mm256_set1_ps(std::hint::black_box(0.999_999));
    let add = _mm256_set1_ps(x);
    let mut acc = [_mm256_setzero_ps(); CHAINS];
    for (i, a) in acc.iter_mut().enumerate() {
        *a = _mm256_set1_ps(i as f32 * 1e-3);
    }
    for _ in 0..iters {
        // Fully unrolled by the compiler (constant trip count): twelve
        // independent FMAs per iteration, all register to register.
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, m, add);
        }
    }
    let mut sum = _mm256_setzero_ps();
    for a in acc {
        sum = _mm256_add_ps(sum, a);
    }
    let mut lanes = [0.0f32; LANES];
    // SAFETY: `lanes` holds `LANES` (8) f32, the 256 bits stored.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    lanes.iter().sum()
}

/// AVX-512F version: twelve `zmm` accumulators, each updated by one
/// `vfmadd231ps` per iteration.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(iters: u64, x: f32) -> f32 {
    use std::arch::x86_64::*;
    let m = _mm512_set1_ps(std::hint::black_box(0.999_999));
    let add = _mm512_set1_ps(x);
    let mut acc = [_mm512_setzero_ps(); CHAINS];
    for (i, a) in acc.iter_mut().enumerate() {
        *a = _mm512_set1_ps(i as f32 * 1e-3);
    }
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, m, add);
        }
    }
    let mut sum = _mm512_setzero_ps();
    for a in acc {
        sum = _mm512_add_ps(sum, a);
    }
    _mm512_reduce_add_ps(sum)
}
