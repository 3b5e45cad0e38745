//! The product of an implicit-GEMM convolution: `C = A · B + bias` where A
//! (the weights, `m × k`) is packed once and B (`k × pixels`) is never built:
//! its row `p` is a window of one buffer (the padded input, or its phase
//! planes) starting at `offs[p]`, and each run of up to 16 output pixels
//! reads it at its own offset in that buffer. So a convolution runs without
//! a column matrix: the micro-kernel reads the input where it lies.
//!
//! The kernel is an 8 × 32 AVX-512 tile (8 output channels, two runs of 16
//! pixels); it exists for `f32` on CPUs with AVX-512F. [`ImplicitGemm::detect`]
//! says whether it runs here, and [`ImplicitGemm::run`] checks every offset
//! once, before the loops, so that the kernel's reads and writes stay in the
//! slices.

/// A run of output pixels: `lanes` (1..=16) consecutive pixels whose B
/// entries start at `b` (plus each row's offset) and whose outputs start at
/// `c` (plus the output channel's row offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PixelRun {
    /// Offset of the run's first pixel in B, added to each row's offset.
    pub b: usize,
    /// Offset of the run's first pixel in C's rows.
    pub c: usize,
    /// Pixels in the run, 1 to 16.
    pub lanes: usize,
}

/// Rows of A per micro-panel.
pub(crate) const PANEL: usize = 8;

/// Pixels per run at most.
pub(crate) const RUN: usize = 16;

/// Depth of one pass of the kernel over A and B: the B entries a tile reads
/// in one pass (two runs of [`RUN`] pixels per row) stay in L1 across the
/// panels of A.
const KC: usize = 160;

/// Proof that the implicit-GEMM kernel runs on this CPU for the element type
/// it was detected for (`f32`, AVX-512F, and no test switch forcing a
/// narrower path).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ImplicitGemm {
    #[cfg(target_arch = "x86_64")]
    _tok: super::x86::Avx512,
    #[cfg(not(target_arch = "x86_64"))]
    never: std::convert::Infallible,
}

impl ImplicitGemm {
    /// The kernel, if it runs for element type `T` on this CPU now.
    pub(crate) fn detect<T: 'static>() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
            && super::default_path() == super::Path::Auto
        {
            return super::x86::Avx512::detect().map(|tok| ImplicitGemm { _tok: tok });
        }
        None
    }

    /// Packs the `m × k` matrix whose element `(i, p)` is `at(i, p)` for
    /// [`run`](Self::run): micro-panel `q` holds rows `8q..8q + 8`, element
    /// `(8q + r, p)` at `q·8·k + p·8 + r`. `m` must be a multiple of 8.
    pub(crate) fn pack(m: usize, k: usize, at: impl Fn(usize, usize) -> f32) -> Vec<f32> {
        assert!(
            m.is_multiple_of(PANEL),
            "implicit GEMM: {m} rows, not whole panels of 8"
        );
        let mut a = vec![0.0; m * k];
        for (q, panel) in a.chunks_exact_mut(PANEL * k.max(1)).enumerate() {
            for (p, step) in panel.chunks_exact_mut(PANEL).enumerate() {
                for (r, x) in step.iter_mut().enumerate() {
                    *x = at(q * PANEL + r, p);
                }
            }
        }
        a
    }

    /// Runs `f` compiled with AVX-512F enabled: `f` inlines into a function
    /// with that target feature, so its loops may use 512-bit vectors and
    /// the AVX-512 helpers it calls (such as [`deinterleave`](Self::deinterleave))
    /// inline into them.
    pub(crate) fn vectorized<R>(self, f: impl FnOnce() -> R) -> R {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            fn body<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: `self` holds an `Avx512` token, so AVX-512F is available.
            unsafe { body(f) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        match self.never {}
    }

    /// `even[t] = src[2t]` and `odd[t] = src[2t + 1]` for `t < even.len()`
    /// (AVX-512 permutes): the column split of a stride-2 conv's phase planes.
    ///
    /// # Panics
    /// If `odd` is not as long as `even` or `src` holds fewer than twice as many.
    #[inline(always)]
    pub(crate) fn deinterleave(self, src: &[f32], even: &mut [f32], odd: &mut [f32]) {
        let n = even.len();
        assert!(
            odd.len() == n && src.len() >= 2 * n,
            "deinterleave: lengths"
        );
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `self` holds an `Avx512` token, so AVX-512F is available;
        // `src` holds `2n` elements and `even`, `odd` `n` each (checked).
        unsafe {
            super::x86::deinterleave_f32_512(src.as_ptr(), even.as_mut_ptr(), odd.as_mut_ptr(), n)
        };
        #[cfg(not(target_arch = "x86_64"))]
        match self.never {}
    }

    /// `C[i·ldc + run.c + t] = bias[i] + Σ_p A[i, p] · B[offs[p] + run.b + t]`
    /// for every row `i < m` of A (packed by [`pack`](Self::pack), `k =
    /// offs.len()`), every run and `t < run.lanes`; without `bias` the sums
    /// start at 0. Nothing else of C is written. `ahead` — data the caller
    /// reads next, such as the next sample's input — is brought into cache a
    /// few lines per tile, so that its misses overlap the arithmetic.
    ///
    /// # Panics
    /// If `a` is not `m × k` packed (`m` a multiple of 8), `bias` is not `m`
    /// long, a run is empty or longer than 16, or a run reads past the end of
    /// `b` or writes past the end of `c`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run(
        self,
        a: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        b: &[f32],
        offs: &[usize],
        runs: &[PixelRun],
        c: &mut [f32],
        ldc: usize,
        ahead: &[f32],
    ) {
        let k = offs.len();
        assert!(
            m.is_multiple_of(PANEL) && a.len() == m * k,
            "implicit GEMM: A has {} elements, not {m} × {k} in panels of 8",
            a.len()
        );
        assert!(
            bias.is_none_or(|b| b.len() == m),
            "implicit GEMM: bias is not {m} long"
        );
        if m == 0 || runs.is_empty() {
            return;
        }
        let max_off = offs.iter().copied().max().unwrap_or(0);
        for r in runs {
            assert!(
                (1..=RUN).contains(&r.lanes),
                "implicit GEMM: a run of {} pixels",
                r.lanes
            );
            assert!(
                k == 0 || max_off + r.b + r.lanes <= b.len(),
                "implicit GEMM: a run reads past the end of B"
            );
            assert!(
                (m - 1) * ldc + r.c + r.lanes <= c.len(),
                "implicit GEMM: a run writes past the end of C"
            );
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `self` holds an `Avx512` token, so AVX-512F is available
        // (the only requirement of `run_x86` beyond the checks above).
        unsafe {
            self.run_x86(a, m, bias, b, offs, runs, c, ldc, ahead)
        };
        #[cfg(not(target_arch = "x86_64"))]
        match self.never {}
    }

    /// [`run`](Self::run)'s loops, its operands checked: for each pair of
    /// runs, each pass of at most [`KC`] rows of B, each panel of A. Compiled
    /// with AVX-512F, so that the kernel inlines into the loops.
    ///
    /// # Safety
    /// AVX-512F must be available, and the operands must have passed
    /// [`run`](Self::run)'s checks.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_x86(
        self,
        a: &[f32],
        m: usize,
        bias: Option<&[f32]>,
        b: &[f32],
        offs: &[usize],
        runs: &[PixelRun],
        c: &mut [f32],
        ldc: usize,
        ahead: &[f32],
    ) {
        let k = offs.len();
        let passes = k.div_ceil(KC).max(1);
        let mask = |lanes: usize| ((1u32 << lanes) - 1) as u16;
        // Lines of `ahead` to prefetch per tile, spread over all tiles.
        let tiles = runs.len().div_ceil(2) * passes * (m / PANEL);
        let mut lines = ahead.chunks(16);
        let per_tile = lines.len().div_ceil(tiles.max(1));
        for pair in runs.chunks(2) {
            let (r0, r1) = (pair[0], *pair.last().expect("chunks are never empty"));
            let (vb, vc) = ([r0.b, r1.b], [r0.c, r1.c]);
            let masks = [mask(r0.lanes), mask(r1.lanes)];
            for pass in 0..passes {
                let (p0, p1) = (k * pass / passes, k * (pass + 1) / passes);
                for q in 0..m / PANEL {
                    for line in lines.by_ref().take(per_tile) {
                        super::prefetch(&line[0]);
                    }
                    let bias = match bias {
                        Some(bias) if pass == 0 => bias[q * PANEL..].as_ptr(),
                        _ => std::ptr::null(),
                    };
                    let ap = a[q * PANEL * k + p0 * PANEL..].as_ptr();
                    let cp = c[q * PANEL * ldc..].as_mut_ptr();
                    // SAFETY: AVX-512F is available (this function's
                    // contract; `self` holds an `Avx512` token). `ap` starts `p0` steps into panel `q`, which
                    // holds `k` steps of 8 (checked: `a` is `m × k`), and the
                    // kernel reads `p1 − p0` of them; it reads offsets
                    // `offs[p0..p1]`; every row offset is at most `max_off`,
                    // and each run was checked to read `b` below
                    // `max_off + b + lanes <= b.len()`; the bias (first pass
                    // only) is 8 of `m` values from `8q`; C is written at
                    // rows `8q..8q + 8 <= m` of stride `ldc` and the run's
                    // lanes, checked against `c.len()`.
                    unsafe {
                        let offs = offs[p0..].as_ptr();
                        let (bp, acc) = (b.as_ptr(), pass > 0);
                        if pair.len() == 2 {
                            super::x86::conv_tile_f32_512::<2>(
                                p1 - p0,
                                ap,
                                offs,
                                bp,
                                vb,
                                masks,
                                bias,
                                acc,
                                cp,
                                ldc,
                                vc,
                            );
                        } else {
                            super::x86::conv_tile_f32_512::<1>(
                                p1 - p0,
                                ap,
                                offs,
                                bp,
                                vb,
                                masks,
                                bias,
                                acc,
                                cp,
                                ldc,
                                vc,
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A product whose B rows overlap (windows of one buffer), with runs of
    /// every length, an odd count of runs, and depth over two passes, against
    /// the definition; integers, so the sums are exact.
    #[test]
    fn matches_the_definition() {
        let Some(kern) = ImplicitGemm::detect::<f32>() else {
            return;
        };
        let (m, k, ldc) = (16, 2 * KC + 7, 160);
        let offs: Vec<usize> = (0..k).map(|p| (p * 7) % 50).collect();
        let b: Vec<f32> = (0..300).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
        let w: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let bias: Vec<f32> = (0..m).map(|i| i as f32).collect();
        let a = ImplicitGemm::pack(m, k, |i, p| w[i * k + p]);
        let runs: Vec<PixelRun> = (1..=RUN)
            .chain([3])
            .scan((0, 0), |(b, c), lanes| {
                // Reads overlap; writes do not (C's runs are disjoint).
                let r = PixelRun {
                    b: *b,
                    c: *c + 1,
                    lanes,
                };
                (*b, *c) = (*b + 4 + lanes % 3, *c + 1 + lanes);
                Some(r)
            })
            .collect();
        for bias in [None, Some(&bias[..])] {
            let mut c = vec![f32::NAN; m * ldc];
            kern.run(&a, m, bias, &b, &offs, &runs, &mut c, ldc, &w);
            let mut want = vec![f32::NAN; m * ldc];
            for r in &runs {
                for i in 0..m {
                    for t in 0..r.lanes {
                        let dot: f32 = (0..k).map(|p| w[i * k + p] * b[offs[p] + r.b + t]).sum();
                        want[i * ldc + r.c + t] = dot + bias.map_or(0.0, |b| b[i]);
                    }
                }
            }
            // Written exactly where the runs are, NaN elsewhere.
            for (got, want) in c.iter().zip(&want) {
                assert!(
                    got == want || (got.is_nan() && want.is_nan()),
                    "{got} vs {want}"
                );
            }
        }
    }

    /// Every length from 0 to past three steps of 16 pairs.
    #[test]
    fn deinterleave_splits_every_length() {
        let Some(kern) = ImplicitGemm::detect::<f32>() else {
            return;
        };
        let src: Vec<f32> = (0..120).map(|i| i as f32).collect();
        for n in 0..=55 {
            let (mut e, mut o) = (vec![-1.0; n + 3], vec![-1.0; n + 3]);
            kern.deinterleave(&src[..2 * n], &mut e[..n], &mut o[..n]);
            for t in 0..n {
                assert_eq!(
                    (e[t], o[t]),
                    (src[2 * t], src[2 * t + 1]),
                    "n = {n}, t = {t}"
                );
            }
            assert!(
                e[n..].iter().chain(&o[n..]).all(|&v| v == -1.0),
                "n = {n}: wrote past the end"
            );
        }
    }

    #[test]
    #[should_panic(expected = "reads past the end of B")]
    fn a_run_past_the_end_of_b_is_refused() {
        let Some(kern) = ImplicitGemm::detect::<f32>() else {
            panic!("reads past the end of B (no AVX-512 here)");
        };
        let a = ImplicitGemm::pack(8, 2, |_, _| 1.0);
        let run = PixelRun {
            b: 10,
            c: 0,
            lanes: 16,
        };
        let mut c = vec![0.0; 8 * 16];
        kern.run(&a, 8, None, &[0.0; 30], &[0, 5], &[run], &mut c, 16, &[]);
    }
}
