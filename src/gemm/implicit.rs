//! The product of an implicit-GEMM convolution: `C = A · B + bias` where A
//! (the weights, `m × k`) is packed once and B (`k × pixels`) is never built:
//! its row `p` is a window of one buffer (the padded input, or its phase
//! planes) starting at `offs[p]`, and each run of output pixels reads it at
//! its own offset in that buffer. So a convolution runs without a column
//! matrix: the micro-kernel reads the input where it lies.
//!
//! It exists for `f32` on x86-64 with AVX-512F (a tile of 8 output channels
//! × three runs of 16 pixels) or AVX2 + FMA (4 × three runs of 8). With
//! AVX-512 the weight gradient is one too ([`ImplicitGemm::weight_grad`]):
//! `C = planes-windows · G`, the output gradient `G` pixel-major, each
//! planes element broadcast against 16 or 32 of its columns.
//! [`ImplicitGemm::detect`] says which runs here, and [`ImplicitGemm::run`]
//! checks every offset once, before the loops, so that the kernel's reads
//! and writes stay in the slices.

/// A run of output pixels: `lanes` (1 to the kernel's
/// [`run_len`](ImplicitGemm::run_len)) consecutive pixels whose B entries
/// start at `b` (plus each row's offset) and whose outputs start at `c` (plus
/// the output channel's row offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PixelRun {
    /// Offset of the run's first pixel in B, added to each row's offset.
    pub b: usize,
    /// Offset of the run's first pixel in C's rows.
    pub c: usize,
    /// Pixels in the run.
    pub lanes: usize,
}

/// Rows of A per packed micro-panel.
pub(crate) const PANEL: usize = 8;

/// Depth of one pass of the kernel over A and B: the B entries a tile reads
/// in one pass stay in L1 across the panels of A.
const KC: usize = 160;

/// The instruction set the kernel runs with; holding one is the proof that
/// the CPU has it.
#[derive(Clone, Copy, Debug)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512(super::x86::Avx512),
    #[cfg(target_arch = "x86_64")]
    Avx2(super::x86::Avx2Fma),
    #[cfg(not(target_arch = "x86_64"))]
    Never(std::convert::Infallible),
}

/// Work for [`ImplicitGemm::vectorized`]: implement `run` with
/// `#[inline(always)]`, so that it compiles with the kernel's instruction set.
pub(crate) trait Vectorized {
    /// What the work returns.
    type Out;
    /// Does the work.
    fn run(self) -> Self::Out;
}

/// Proof that an implicit-GEMM kernel runs on this CPU for the element type
/// it was detected for (`f32`, AVX-512F or AVX2 + FMA, as the test switches
/// allow).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ImplicitGemm {
    isa: Isa,
}

impl ImplicitGemm {
    /// The kernel, if one runs for element type `T` on this CPU now: AVX-512
    /// unless a test switch caps the kernels at AVX2, else AVX2 unless it
    /// forces the portable ones.
    pub(crate) fn detect<T: 'static>() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
            let path = super::default_path();
            if path == super::Path::Auto
                && let Some(tok) = super::x86::Avx512::detect()
            {
                return Some(ImplicitGemm {
                    isa: Isa::Avx512(tok),
                });
            }
            if path != super::Path::Portable
                && let Some(tok) = super::x86::Avx2Fma::detect()
            {
                return Some(ImplicitGemm {
                    isa: Isa::Avx2(tok),
                });
            }
        }
        None
    }

    /// Pixels per run at most: a vector of the kernel (16 with AVX-512, 8 with AVX2).
    pub(crate) fn run_len(self) -> usize {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) => 16,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => 8,
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Never(never) => match never {},
        }
    }

    /// Packs the `m × k` matrix whose element `(i, p)` is `at(i, p)` for
    /// [`run`](Self::run): micro-panel `q` holds rows `8q..8q + 8`, element
    /// `(8q + r, p)` at `q·8·k + p·8 + r`; the last panel's rows past `m`
    /// are zeros.
    pub(crate) fn pack(m: usize, k: usize, at: impl Fn(usize, usize) -> f32) -> Vec<f32> {
        let len = m
            .checked_next_multiple_of(PANEL)
            .and_then(|rows| rows.checked_mul(k));
        let mut a = vec![0.0; len.expect("implicit GEMM: A's size overflows")];
        for (q, panel) in a.chunks_exact_mut(PANEL * k.max(1)).enumerate() {
            for (p, step) in panel.chunks_exact_mut(PANEL).enumerate() {
                for (r, x) in step.iter_mut().enumerate().take(m - q * PANEL) {
                    *x = at(q * PANEL + r, p);
                }
            }
        }
        a
    }

    /// Runs `work` compiled with the kernel's instruction set enabled:
    /// [`Vectorized::run`] (`#[inline(always)]` in every impl) inlines into
    /// a function with that target feature, so its loops may use the wider
    /// vectors and the helpers it calls (such as
    /// [`deinterleave`](Self::deinterleave)) inline into them. (A closure
    /// would not do: it is inlined only if small.)
    pub(crate) fn vectorized<V: Vectorized>(self, work: V) -> V::Out {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            fn avx512<V: Vectorized>(work: V) -> V::Out {
                work.run()
            }
            #[target_feature(enable = "avx2,fma")]
            fn avx2<V: Vectorized>(work: V) -> V::Out {
                work.run()
            }
            match self.isa {
                // SAFETY: the token proves the CPU has AVX-512F.
                Isa::Avx512(_) => unsafe { avx512(work) },
                // SAFETY: the token proves the CPU has AVX2 and FMA.
                Isa::Avx2(_) => unsafe { avx2(work) },
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        match self.isa {
            Isa::Never(never) => match never {},
        }
    }

    /// For each row `r < rows` of `n` pairs: `even[r·ld + t] = src[r·lds +
    /// 2t]` and `odd[r·ld + t] = src[r·lds + 2t + 1]`, `t < n`, with AVX-512
    /// two-source permutes (the column split of a stride-2 conv's phase
    /// planes: input rows `lds` apart into plane rows `ld` apart), returning
    /// `true`; without AVX-512 it writes nothing and returns `false`, and the
    /// caller's portable split serves.
    ///
    /// # Panics
    /// If a row reads past the end of `src` or writes past the end of `even`
    /// or `odd`.
    #[inline(always)]
    pub(crate) fn deinterleave(
        self,
        src: &[f32],
        lds: usize,
        even: &mut [f32],
        odd: &mut [f32],
        ld: usize,
        (rows, n): (usize, usize),
    ) -> bool {
        // The end of the last row (checked: a sum that wrapped would pass).
        let end = |step: usize, len: usize| {
            rows.checked_sub(1)
                .map_or(Some(0), |r| r.checked_mul(step)?.checked_add(len))
        };
        let fits = |step, len, have: usize| end(step, len).is_some_and(|e| e <= have);
        assert!(
            n.checked_mul(2).is_some_and(|n2| fits(lds, n2, src.len()))
                && fits(ld, n, even.len())
                && fits(ld, n, odd.len()),
            "deinterleave: {rows} rows of {n} pairs do not fit"
        );
        #[cfg(target_arch = "x86_64")]
        if let Isa::Avx512(_) = self.isa {
            for r in 0..rows {
                // SAFETY: the token proves the CPU has AVX-512F; row `r`
                // reads `src[r·lds..r·lds + 2n]` and writes `n` elements of
                // `even` and `odd` from `r·ld`, inside them (checked above
                // for the last row, so for every row).
                unsafe {
                    super::x86::deinterleave_f32_512(
                        src.as_ptr().add(r * lds),
                        even.as_mut_ptr().add(r * ld),
                        odd.as_mut_ptr().add(r * ld),
                        n,
                    )
                };
            }
            return true;
        }
        false
    }

    /// `C[i·ldc + run.c + t] = bias[i] + Σ_p A[i, p] · B[offs[p] + run.b + t]`
    /// for every row `i < m` of A (packed by [`pack`](Self::pack), `k =
    /// offs.len()`), every run and `t < run.lanes`; without `bias` the sums
    /// start at 0. Nothing else of C is written. `ahead` — data the caller
    /// reads next, such as the next sample's input — is brought into cache a
    /// few lines per tile, so that its misses overlap the arithmetic.
    ///
    /// # Panics
    /// If `a` is not `m × k` packed (`m` rounded up to whole panels of 8),
    /// `bias` is not `m` long, a run is empty or longer than
    /// [`run_len`](Self::run_len), or a run reads past the end of `b` or
    /// writes past the end of `c`.
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
        // Checked: a product that wrapped would pass the comparison.
        assert!(
            m.checked_next_multiple_of(PANEL)
                .and_then(|rows| rows.checked_mul(k))
                .is_some_and(|len| a.len() == len),
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
                (1..=self.run_len()).contains(&r.lanes),
                "implicit GEMM: a run of {} pixels",
                r.lanes
            );
            // Checked: a sum that wrapped would pass the comparison.
            let b_end = max_off
                .checked_add(r.b)
                .and_then(|e| e.checked_add(r.lanes));
            assert!(
                k == 0 || b_end.is_some_and(|e| e <= b.len()),
                "implicit GEMM: a run reads past the end of B"
            );
            let c_end = ((m - 1).checked_mul(ldc))
                .and_then(|e| e.checked_add(r.c))
                .and_then(|e| e.checked_add(r.lanes));
            assert!(
                c_end.is_some_and(|e| e <= c.len()),
                "implicit GEMM: a run writes past the end of C"
            );
        }
        #[cfg(not(target_arch = "x86_64"))]
        match self.isa {
            Isa::Never(never) => match never {},
        }
        // The loops, the operands checked: the whole blocks of rows of A (8
        // with AVX-512, 4 with AVX2), then the last, partial one; for each,
        // each tile of runs (3 with AVX-512 — more for a partial block — 3
        // with AVX2), each pass of at most `KC` rows of B, each block.
        #[cfg(target_arch = "x86_64")]
        {
            let (rows, per_tile_runs) = match self.isa {
                Isa::Avx512(_) => (8, super::x86::tile_runs_512(8)),
                Isa::Avx2(_) => (4, 3),
            };
            let tail = m % rows;
            let tail_runs = match self.isa {
                Isa::Avx512(_) => super::x86::tile_runs_512(tail),
                Isa::Avx2(_) => 3,
            };
            let parts = [
                (0..m - tail, rows, per_tile_runs),
                (m - tail..m, tail, tail_runs),
            ];
            let passes = k.div_ceil(KC).max(1);
            // Lines of `ahead` to prefetch per tile, spread over all tiles.
            let tiles: usize = parts
                .iter()
                .filter(|(_, mr, _)| *mr > 0)
                .map(|(r, mr, nv)| runs.len().div_ceil(*nv) * passes * r.len().div_ceil(*mr))
                .sum();
            let mut lines = ahead.chunks(16);
            let per_tile = lines.len().div_ceil(tiles.max(1));
            for (block, mr, nv) in parts {
                if block.is_empty() {
                    continue;
                }
                // As many tiles as `nv` runs each need, the runs spread
                // evenly over them (16 runs in tiles of 3: 3, 3, 3, 3, 2, 2,
                // not a last tile of one run, which reloads A for little).
                let ntiles = runs.len().div_ceil(nv);
                let tile_at = |t: usize| runs.len() * t / ntiles;
                for tile in (0..ntiles).map(|t| &runs[tile_at(t)..tile_at(t + 1)]) {
                    for pass in 0..passes {
                        let (p0, p1) = (k * pass / passes, k * (pass + 1) / passes);
                        for i0 in block.clone().step_by(mr) {
                            for line in lines.by_ref().take(per_tile) {
                                super::prefetch(&line[0]);
                            }
                            // Row `i0` of panel `i0 / 8`, from step `p0` on (with
                            // no depth, `a` is empty and nothing is read from it).
                            let at = (i0 / PANEL) * PANEL * k + p0 * PANEL + i0 % PANEL;
                            let t = super::x86::ConvTile {
                                rows: mr,
                                kc: p1 - p0,
                                a: a[at.min(a.len())..].as_ptr(),
                                offs: offs[p0..].as_ptr(),
                                b: b.as_ptr(),
                                runs: tile.as_ptr(),
                                nruns: tile.len(),
                                bias: match bias {
                                    Some(bias) if pass == 0 => bias[i0..].as_ptr(),
                                    _ => std::ptr::null(),
                                },
                                accumulate: pass > 0,
                                c: c[i0 * ldc..].as_mut_ptr(),
                                ldc,
                            };
                            // SAFETY: the token proves the CPU has the kernel's
                            // instruction set. `t.a` starts `p0` steps into the
                            // panel holding rows `i0..i0 + mr` (`a` is `m × k`
                            // in panels of 8, checked; `mr` rows from `i0` stay
                            // in one panel: whole blocks of 8 or 4, or the last
                            // `m mod rows`), and the kernel reads `p1 − p0`
                            // steps of 8 from it; it reads offsets
                            // `offs[p0..p1]`, each at most `max_off`, and each
                            // run was checked to read `b` below `max_off + b +
                            // lanes <= b.len()` with at most `run_len` lanes;
                            // the bias (first pass only) is `mr` of `m` values
                            // from `i0`; C is written at rows `i0..i0 + mr <= m`
                            // of stride `ldc` and the runs' lanes, checked
                            // against `c.len()`; the tile holds 1 to `nv` runs,
                            // the most the kernel takes for `mr` rows.
                            unsafe {
                                match self.isa {
                                    Isa::Avx512(_) => super::x86::conv_tile_f32_512(t),
                                    Isa::Avx2(_) => super::x86::conv_tile_f32_256(t),
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Taps per group at most in [`ImplicitGemm::weight_grad`].
pub(crate) const MAX_TAPS: usize = 7;

/// One group of taps of [`ImplicitGemm::weight_grad`]: its offset in the
/// planes, and the row of C that receives its first tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TapGroup {
    /// Offset in the planes of the group's first tap.
    pub off: usize,
    /// Row of C for the group's first tap (tap `t` adds into row `row + t`).
    pub row: usize,
}

impl ImplicitGemm {
    /// Whether [`weight_grad`](Self::weight_grad) and
    /// [`transpose`](Self::transpose) run here (AVX-512 only).
    pub(crate) fn has_weight_grad(self) -> bool {
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => false,
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Never(never) => match never {},
        }
    }

    /// `dst[j·rows + i] = src[i·lds + j]` for `i < rows`, `j < cols`: the
    /// transpose of a `rows × cols` block (row stride `lds`), in 16 × 16
    /// blocks with AVX-512 and the edges one element at a time.
    ///
    /// # Panics
    /// Without AVX-512, if `lds < cols`, or if either slice is too short.
    pub(crate) fn transpose(
        self,
        src: &[f32],
        rows: usize,
        cols: usize,
        lds: usize,
        dst: &mut [f32],
    ) {
        assert!(self.has_weight_grad(), "transpose: needs AVX-512");
        if rows == 0 || cols == 0 {
            return;
        }
        let src_end = (rows - 1)
            .checked_mul(lds)
            .and_then(|e| e.checked_add(cols));
        assert!(
            lds >= cols && src_end.is_some_and(|e| e <= src.len()),
            "transpose: source too short or its row stride below the width"
        );
        assert!(
            rows.checked_mul(cols).is_some_and(|e| e <= dst.len()),
            "transpose: destination too short"
        );
        let (rb, cb) = (rows / 16 * 16, cols / 16 * 16);
        #[cfg(target_arch = "x86_64")]
        for i in (0..rb).step_by(16) {
            for j in (0..cb).step_by(16) {
                // SAFETY: AVX-512F (asserted); rows `i..i + 16 <= rows` of
                // `src` from column `j`, 16 each (`j + 16 <= cols`), inside
                // `src` (checked above); rows `j..j + 16 <= cols` of `dst`
                // (stride `rows`) from column `i`, inside `rows · cols`.
                unsafe {
                    super::x86::transpose16_f32_512(
                        src.as_ptr().add(i * lds + j),
                        lds,
                        dst.as_mut_ptr().add(j * rows + i),
                        rows,
                    )
                };
            }
        }
        for i in 0..rows {
            let from = if i < rb { cb } else { 0 };
            for j in from..cols {
                dst[j * rows + i] = src[i * lds + j];
            }
        }
    }

    /// A convolution's weight gradient as an implicit product, the planes
    /// read in place: for every group `q` of `taps` consecutive taps, tap `t
    /// < taps` and column `o < width`,
    /// `C[(q.row + t)·ldc + o] += Σ_runs Σ_{j < lanes} planes[q.off + t + run.b
    /// + j·step] · g[(run.c + j)·ldg + o]` — `g` holds the output gradient
    /// pixel-major (a row of `width` output channels per pixel). Each planes
    /// element is broadcast against up to 32 channels of `g` at once.
    ///
    /// # Panics
    /// Without AVX-512 ([`has_weight_grad`](Self::has_weight_grad)); if
    /// `taps` is not in `1..=MAX_TAPS`, `width` not a multiple of 16 or
    /// above `ldc`, two groups' rows overlap, a run is empty, `ldc` exceeds
    /// C's length, or a group or run reads or writes past the end of its
    /// slice (all sums checked).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn weight_grad(
        self,
        planes: &[f32],
        groups: &[TapGroup],
        taps: usize,
        step: usize,
        g: &[f32],
        ldg: usize,
        width: usize,
        runs: &[PixelRun],
        c: &mut [f32],
        ldc: usize,
    ) {
        assert!(self.has_weight_grad(), "weight_grad: needs AVX-512");
        assert!(
            (1..=MAX_TAPS).contains(&taps) && width.is_multiple_of(16) && ldc >= width,
            "weight_grad: {taps} taps, {width} columns, ldc {ldc}"
        );
        if groups.is_empty() || width == 0 || runs.is_empty() {
            return;
        }
        // C: every group's rows inside C and apart from the others'.
        let mut rows: Vec<usize> = groups.iter().map(|q| q.row).collect();
        rows.sort_unstable();
        assert!(
            rows.windows(2).all(|w| w[1] - w[0] >= taps),
            "weight_grad: groups' rows overlap"
        );
        let last = rows[rows.len() - 1];
        // Checked: a sum that wrapped would pass the comparison.
        let c_end = (last.checked_add(taps - 1))
            .and_then(|e| e.checked_mul(ldc))
            .and_then(|e| e.checked_add(width));
        assert!(
            c_end.is_some_and(|e| e <= c.len()) && ldc <= c.len(),
            "weight_grad: a group writes past the end of C"
        );
        // The planes and g: each run's last pixel, from the furthest group.
        let max_off = groups.iter().map(|q| q.off).max().unwrap_or(0);
        for r in runs {
            assert!(r.lanes > 0, "weight_grad: an empty run");
            let b_end = (r.lanes - 1)
                .checked_mul(step)
                .and_then(|e| e.checked_add(r.b))
                .and_then(|e| e.checked_add(max_off))
                .and_then(|e| e.checked_add(taps));
            assert!(
                b_end.is_some_and(|e| e <= planes.len()),
                "weight_grad: a run reads past the end of the planes"
            );
            let g_end = (r.c.checked_add(r.lanes - 1))
                .and_then(|e| e.checked_mul(ldg))
                .and_then(|e| e.checked_add(width));
            assert!(
                g_end.is_some_and(|e| e <= g.len()),
                "weight_grad: a run reads past the end of g"
            );
        }
        #[cfg(target_arch = "x86_64")]
        {
            use super::x86::{WeightTile, weight_tile_f32_512, weight_tile_groups};
            // A tile's missing groups read the first group's taps and add
            // into a sink, each into its own part (`ldc` is at most C's
            // length, checked above, so the product stays small).
            let mut sink = vec![0.0f32; weight_tile_groups(taps, 1) * taps * ldc];
            let base = c.as_mut_ptr();
            for o0 in (0..width).step_by(32) {
                let nv = ((width - o0) / 16).min(2);
                let per = weight_tile_groups(taps, nv);
                for tile in groups.chunks(per) {
                    // `per` is at most 6 (`weight_tile_groups`).
                    let offs: [usize; 6] =
                        std::array::from_fn(|r| tile.get(r).unwrap_or(&tile[0]).off);
                    let out: [*mut f32; 6] = std::array::from_fn(|r| match tile.get(r) {
                        // In bounds: row `q.row + taps − 1` ends inside C (checked).
                        Some(q) => base.wrapping_add(q.row * ldc + o0),
                        None => sink.as_mut_ptr().wrapping_add(r * taps * ldc + o0),
                    });
                    let t = WeightTile {
                        planes: planes.as_ptr(),
                        offs: offs.as_ptr(),
                        out: out.as_ptr(),
                        ldc,
                        step,
                        g: g[o0..].as_ptr(),
                        ldg,
                        runs: runs.as_ptr(),
                        nruns: runs.len(),
                    };
                    // SAFETY: `has_weight_grad` (asserted) proves AVX-512F.
                    // `per` groups of `taps` in 1..=7 with `nv` 1 or 2 have a
                    // tile; `offs` and `out` hold (at least) `per` entries. Every group's
                    // offset is at most `max_off`, and each run was checked
                    // to read the planes below `max_off + taps + b +
                    // (lanes−1)·step` and `g` below `(c + lanes − 1)·ldg +
                    // width`, which covers `o0 + 16·nv`. Each `out[r]` is a
                    // group's rows (inside C and disjoint from the others',
                    // checked) or part `r` of the sink (`taps · ldc` each,
                    // `per` parts at most: `weight_tile_groups` is largest
                    // with one vector; `o0 + 16·nv <= width <= ldc`).
                    unsafe { weight_tile_f32_512(t, taps, nv) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels this CPU runs: the best, and AVX2 when the best is
    /// AVX-512 (forced on this thread while the guard lives).
    fn kernels() -> Vec<(ImplicitGemm, Option<super::super::SwitchGuard>)> {
        let mut out: Vec<_> = ImplicitGemm::detect::<f32>()
            .map(|k| (k, None))
            .into_iter()
            .collect();
        if out.first().is_some_and(|(k, _)| k.run_len() == 16) {
            let guard = super::super::force_avx2(true);
            if let Some(k) = ImplicitGemm::detect::<f32>() {
                out.push((k, Some(guard)));
            }
        }
        out
    }

    /// A product whose B rows overlap (windows of one buffer), with runs of
    /// every length, a count of runs that leaves a partial tile, depth over
    /// two passes, and row counts that fill whole panels of 8 and leave a
    /// partial one (each size of the last tile), against the definition,
    /// with each kernel; integers, so the sums are exact.
    #[test]
    fn matches_the_definition() {
        for (kern, _guard) in kernels() {
            matches_the_definition_with(kern);
        }
    }

    fn matches_the_definition_with(kern: ImplicitGemm) {
        for m in [16, 1, 2, 3, 4, 5, 6, 7, 9, 13] {
            matches_the_definition_with_rows(kern, m);
        }
    }

    fn matches_the_definition_with_rows(kern: ImplicitGemm, m: usize) {
        let (k, ldc) = (2 * KC + 7, 200);
        let offs: Vec<usize> = (0..k).map(|p| (p * 7) % 50).collect();
        let b: Vec<f32> = (0..300).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
        let w: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let bias: Vec<f32> = (0..m).map(|i| i as f32).collect();
        let a = ImplicitGemm::pack(m, k, |i, p| w[i * k + p]);
        let runs: Vec<PixelRun> = (1..=kern.run_len())
            .chain([3, kern.run_len(), 5])
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
        // 17 to 19 runs: every remainder of a tile of 2 or 3 runs.
        let cases = [None, Some(&bias[..])].into_iter().flat_map(|bias| {
            let runs = &runs;
            (runs.len() - 2..=runs.len()).map(move |count| (bias, &runs[..count]))
        });
        for (bias, runs) in cases {
            let mut c = vec![f32::NAN; m * ldc];
            kern.run(&a, m, bias, &b, &offs, runs, &mut c, ldc, &w);
            let mut want = vec![f32::NAN; m * ldc];
            for r in runs {
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

    /// Every length from 0 to past three steps of 16 pairs with AVX-512;
    /// the AVX2 kernel leaves the split to its caller.
    #[test]
    fn deinterleave_splits_every_length() {
        for (kern, _guard) in kernels() {
            let avx512 = kern.run_len() == 16;
            let (mut e, mut o) = ([-1.0; 4], [-1.0; 4]);
            assert_eq!(
                kern.deinterleave(&[1.0; 8], 8, &mut e, &mut o, 4, (1, 4)),
                avx512
            );
            if avx512 {
                deinterleave_splits_every_length_with(kern);
            } else {
                assert_eq!((e, o), ([-1.0; 4], [-1.0; 4]), "wrote without AVX-512");
            }
        }
    }

    fn deinterleave_splits_every_length_with(kern: ImplicitGemm) {
        let src: Vec<f32> = (0..400).map(|i| i as f32).collect();
        for (rows, n) in (0..=55)
            .map(|n| (1usize, n))
            .chain([(0, 5), (2, 16), (3, 17), (4, 7)])
        {
            let (lds, ld) = (2 * n + 3, n + 2);
            // Exactly long enough: the last row ends where the slices end.
            let last = |step: usize, len: usize| rows.checked_sub(1).map_or(0, |r| r * step + len);
            let (src_len, len) = (last(lds, 2 * n), last(ld, n));
            let (mut e, mut o) = (vec![-1.0; len + 3], vec![-1.0; len + 3]);
            let (ev, od) = (&mut e[..len], &mut o[..len]);
            assert!(kern.deinterleave(&src[..src_len], lds, ev, od, ld, (rows, n)));
            for i in 0..len + 3 {
                let (r, t) = (i / ld, i % ld);
                let want = |phase| (r < rows && t < n).then(|| src[r * lds + 2 * t + phase]);
                assert_eq!(
                    (e[i], o[i]),
                    (want(0).unwrap_or(-1.0), want(1).unwrap_or(-1.0)),
                    "{rows} rows of {n}, element {i}"
                );
            }
        }
    }

    /// A row that does not fit is refused before anything is written.
    #[test]
    #[should_panic(expected = "do not fit")]
    fn deinterleave_refuses_rows_past_the_end() {
        let Some(kern) = ImplicitGemm::detect::<f32>() else {
            panic!("do not fit (no implicit-GEMM kernel here)");
        };
        let (mut e, mut o) = ([0.0; 10], [0.0; 10]);
        kern.deinterleave(&[1.0; 30], 12, &mut e, &mut o, 4, (3, 3));
    }

    /// The weight-gradient product against the definition, integers so
    /// the sums are exact: every tap count, one to three vectors of
    /// columns, group counts that leave partial tiles (their sink sums must
    /// not land in C), runs of several lengths at strides 1 to 3, and C's
    /// sums added to what it held.
    #[test]
    fn weight_grad_matches_the_definition() {
        let Some(kern) = ImplicitGemm::detect::<f32>().filter(|k| k.has_weight_grad()) else {
            return;
        };
        let planes: Vec<f32> = (0..900).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        for taps in 1..=MAX_TAPS {
            for width in [16, 32, 48] {
                for (ngroups, step) in [(1, 1), (5, 2), (13, 3)] {
                    let ldc = width + 3;
                    let ldg = width + 5;
                    // Rows spaced `taps + 1` apart (a gap row stays untouched).
                    let groups: Vec<TapGroup> = (0..ngroups)
                        .map(|q| TapGroup {
                            off: (q * 37) % 200,
                            row: q * (taps + 1),
                        })
                        .collect();
                    let runs: Vec<PixelRun> = [1, 7, 16, 23]
                        .iter()
                        .scan((0, 0), |(b, c), &lanes| {
                            let r = PixelRun {
                                b: *b,
                                c: *c,
                                lanes,
                            };
                            (*b, *c) = (*b + 31, *c + lanes + 2);
                            Some(r)
                        })
                        .collect();
                    let npix = runs.last().map_or(0, |r| r.c + r.lanes);
                    let g: Vec<f32> = (0..npix * ldg)
                        .map(|i| ((i * 5) % 11) as f32 - 5.0)
                        .collect();
                    let rows = ngroups * (taps + 1);
                    let mut c: Vec<f32> = (0..rows * ldc).map(|i| (i % 3) as f32).collect();
                    let mut want = c.clone();
                    for q in &groups {
                        for t in 0..taps {
                            for o in 0..width {
                                let mut sum = 0.0;
                                for r in &runs {
                                    for j in 0..r.lanes {
                                        let a = planes[q.off + t + r.b + j * step];
                                        sum += a * g[(r.c + j) * ldg + o];
                                    }
                                }
                                want[(q.row + t) * ldc + o] += sum;
                            }
                        }
                    }
                    kern.weight_grad(
                        &planes, &groups, taps, step, &g, ldg, width, &runs, &mut c, ldc,
                    );
                    assert_eq!(c, want, "{taps} taps, width {width}, {ngroups} groups");
                }
            }
        }
    }

    /// `weight_grad` on zeros: planes of `planes` elements, the `groups`
    /// with 3 taps, one run of `lanes` pixels `step` apart, 16 columns.
    fn weight_grad_on_zeros(planes: usize, groups: &[TapGroup], step: usize, lanes: usize) {
        let Some(kern) = ImplicitGemm::detect::<f32>().filter(|k| k.has_weight_grad()) else {
            panic!(
                "no AVX-512 here: groups' rows overlap, writes past the end of C, reads past the end of the planes"
            );
        };
        let run = PixelRun { b: 0, c: 0, lanes };
        let g = vec![0.0; 16 * lanes];
        let mut c = vec![0.0; 16 * 8];
        kern.weight_grad(
            &vec![0.0; planes],
            groups,
            3,
            step,
            &g,
            16,
            16,
            &[run],
            &mut c,
            16,
        );
    }

    #[test]
    #[should_panic(expected = "groups' rows overlap")]
    fn weight_grad_refuses_overlapping_rows() {
        let groups = [TapGroup { off: 0, row: 0 }, TapGroup { off: 0, row: 2 }];
        weight_grad_on_zeros(8, &groups, 1, 1);
    }

    /// A row near the end of the address space: its last tap's row wraps
    /// an unchecked sum to a small one.
    #[test]
    #[should_panic(expected = "writes past the end of C")]
    fn weight_grad_refuses_rows_whose_end_wraps() {
        weight_grad_on_zeros(
            8,
            &[TapGroup {
                off: 0,
                row: usize::MAX - 1,
            }],
            1,
            1,
        );
    }

    #[test]
    #[should_panic(expected = "reads past the end of the planes")]
    fn weight_grad_refuses_a_run_past_the_planes() {
        // Pixel 3 at step 2 reads from 2 + 6, taps to 2 + 6 + 2 = 10 > 9.
        weight_grad_on_zeros(9, &[TapGroup { off: 2, row: 0 }], 2, 4);
    }

    /// Every shape around the 16 × 16 blocks, with a row stride past the width.
    #[test]
    fn transpose_matches_for_every_shape() {
        let Some(kern) = ImplicitGemm::detect::<f32>().filter(|k| k.has_weight_grad()) else {
            return;
        };
        for rows in [0, 1, 15, 16, 17, 32, 33] {
            for cols in [0, 1, 5, 16, 31, 48] {
                let lds = cols + 3;
                let src: Vec<f32> = (0..rows * lds).map(|i| i as f32).collect();
                let mut dst = vec![-1.0; rows * cols + 2];
                kern.transpose(&src, rows, cols, lds, &mut dst);
                for i in 0..rows {
                    for j in 0..cols {
                        assert_eq!(
                            dst[j * rows + i],
                            src[i * lds + j],
                            "{rows}x{cols} ({i}, {j})"
                        );
                    }
                }
                assert_eq!(
                    &dst[rows * cols..],
                    &[-1.0, -1.0],
                    "{rows}x{cols}: wrote past"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "reads past the end of B")]
    fn a_run_past_the_end_of_b_is_refused() {
        let Some(kern) = ImplicitGemm::detect::<f32>() else {
            panic!("reads past the end of B (no implicit-GEMM kernel here)");
        };
        let a = ImplicitGemm::pack(8, 2, |_, _| 1.0);
        let run = PixelRun {
            b: 10,
            c: 0,
            lanes: kern.run_len(),
        };
        let mut c = vec![0.0; 8 * 16];
        kern.run(&a, 8, None, &[0.0; 20], &[0, 5], &[run], &mut c, 16, &[]);
    }
}
