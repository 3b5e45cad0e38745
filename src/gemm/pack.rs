//! Packing of A and B blocks into contiguous micro-panels.
//!
//! Packing is where the caller's strides disappear: whatever the layout of A
//! and B (row-major, transposed, or arbitrary strides), the micro-kernel
//! always reads unit-stride panels. Each layout has a fast path:
//! unit column stride (row-major), unit row stride (column-major, i.e. a
//! transposed row-major operand), and a general strided fallback.

use super::kernel::Elem;

/// A read-only strided matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatRef<'a, T> {
    /// Backing storage, starting at element `(0, 0)`.
    pub data: &'a [T],
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// The view whose `(0, 0)` element is this view's `(i, j)` element.
    ///
    /// `(i, j)` must be an element of the matrix (so the offset is in range).
    #[inline]
    pub(crate) fn sub(&self, i: usize, j: usize) -> MatRef<'a, T> {
        MatRef {
            data: &self.data[i * self.rs + j * self.cs..],
            rs: self.rs,
            cs: self.cs,
        }
    }
}

/// Length of the buffer needed to pack `rows` rows into panels of `r` rows
/// with depth `depth`.
#[inline]
pub(crate) fn packed_len(rows: usize, r: usize, depth: usize) -> usize {
    rows.div_ceil(r) * r * depth
}

/// Copies `src` (length `nc`, one step of k across a block) into the `NR`-wide
/// panels of `out` at depth `p`, zero-filling the tail of the last panel.
/// `ahead`, if given, is a later run of the source that will be packed soon;
/// its cache lines are prefetched, one per line copied.
#[inline(always)]
fn scatter_row<T: Elem, const NR: usize>(
    src: &[T],
    ahead: Option<&[T]>,
    p: usize,
    kc: usize,
    out: &mut [T],
) {
    let mut panels = out.chunks_exact_mut(NR * kc);
    let mut chunks = src.chunks_exact(NR);
    let ahead = ahead.unwrap_or(&[]);
    let line = (64 / std::mem::size_of::<T>()).max(1);
    // `chunks` must come first: `zip` polls its left side first, and a
    // consumed-but-unused panel would be skipped.
    for (q, (s, panel)) in (&mut chunks).zip(&mut panels).enumerate() {
        if let Some(x) = ahead.get(q * NR) {
            super::prefetch(x);
        }
        if NR > line
            && let Some(x) = ahead.get(q * NR + line)
        {
            super::prefetch(x);
        }
        let s: &[T; NR] = s.try_into().expect("NR chunk");
        let d: &mut [T; NR] = (&mut panel[p * NR..p * NR + NR])
            .try_into()
            .expect("NR chunk");
        *d = *s;
    }
    let tail = chunks.remainder();
    if !tail.is_empty()
        && let Some(panel) = panels.next()
    {
        let d = &mut panel[p * NR..p * NR + NR];
        for (j, x) in d.iter_mut().enumerate() {
            *x = tail.get(j).copied().unwrap_or(T::ZERO);
        }
    }
}

/// How many runs ahead of the one being copied `scatter_row` prefetches.
const PREFETCH_RUNS: usize = 2;

/// Packs the `mc × kc` block `a` into `MR`-row panels: panel `q` holds rows
/// `q·MR .. q·MR + MR` with element `(r, p)` at `out[q·MR·kc + p·MR + r]`.
/// Rows past `mc` in the last panel are zero-filled.
pub(crate) fn pack_a<T: Elem, const MR: usize>(
    mc: usize,
    kc: usize,
    a: MatRef<'_, T>,
    out: &mut [T],
) {
    if mc == 0 || kc == 0 {
        return;
    }
    let out = &mut out[..packed_len(mc, MR, kc)];
    if a.rs == 1 && a.cs != 1 {
        // Column-major: each step of k is a contiguous run of `mc` values;
        // stream through them and scatter into all panels.
        for p in 0..kc {
            let ahead = if p + PREFETCH_RUNS < kc {
                Some(&a.data[(p + PREFETCH_RUNS) * a.cs..][..mc])
            } else {
                None
            };
            scatter_row::<T, MR>(&a.data[p * a.cs..][..mc], ahead, p, kc, out);
        }
        return;
    }
    for (q, dst) in out.chunks_exact_mut(MR * kc).enumerate() {
        let i0 = q * MR;
        let rows = MR.min(mc - i0);
        if a.cs == 1 {
            // Row-major: MR contiguous source rows, interleaved into the panel.
            let srcs: [&[T]; MR] = std::array::from_fn(|r| {
                if r < rows {
                    &a.data[(i0 + r) * a.rs..][..kc]
                } else {
                    &[]
                }
            });
            if rows == MR {
                for (p, d) in dst.chunks_exact_mut(MR).enumerate() {
                    for r in 0..MR {
                        d[r] = srcs[r][p];
                    }
                }
            } else {
                for (p, d) in dst.chunks_exact_mut(MR).enumerate() {
                    for r in 0..MR {
                        d[r] = if r < rows { srcs[r][p] } else { T::ZERO };
                    }
                }
            }
        } else {
            for (p, d) in dst.chunks_exact_mut(MR).enumerate() {
                for (r, x) in d.iter_mut().enumerate() {
                    *x = if r < rows {
                        a.data[(i0 + r) * a.rs + p * a.cs]
                    } else {
                        T::ZERO
                    };
                }
            }
        }
    }
}

/// Packs the `kc × nc` block `b` into `NR`-column panels: panel `q` holds
/// columns `q·NR .. q·NR + NR` with element `(p, j)` at
/// `out[q·NR·kc + p·NR + j]`. Columns past `nc` in the last panel are
/// zero-filled.
pub(crate) fn pack_b<T: Elem, const NR: usize>(
    kc: usize,
    nc: usize,
    b: MatRef<'_, T>,
    out: &mut [T],
) {
    if nc == 0 || kc == 0 {
        return;
    }
    let out = &mut out[..packed_len(nc, NR, kc)];
    if b.cs == 1 {
        // Row-major: each step of k is a contiguous run of `nc` values.
        // Streaming through whole rows (rather than panel by panel, which
        // would touch one cache line per row of B and defeat the hardware
        // prefetcher) keeps this bandwidth-bound copy fast.
        for p in 0..kc {
            let ahead = if p + PREFETCH_RUNS < kc {
                Some(&b.data[(p + PREFETCH_RUNS) * b.rs..][..nc])
            } else {
                None
            };
            scatter_row::<T, NR>(&b.data[p * b.rs..][..nc], ahead, p, kc, out);
        }
        return;
    }
    for (q, dst) in out.chunks_exact_mut(NR * kc).enumerate() {
        let j0 = q * NR;
        let cols = NR.min(nc - j0);
        if b.rs == 1 {
            // Column-major: read each source column contiguously and scatter
            // it down the panel (the panel is small enough to stay in L1).
            for j in 0..NR {
                if j < cols {
                    let src = &b.data[(j0 + j) * b.cs..][..kc];
                    for (d, &x) in dst.chunks_exact_mut(NR).zip(src) {
                        d[j] = x;
                    }
                } else {
                    for d in dst.chunks_exact_mut(NR) {
                        d[j] = T::ZERO;
                    }
                }
            }
        } else {
            for (p, d) in dst.chunks_exact_mut(NR).enumerate() {
                for (j, x) in d.iter_mut().enumerate() {
                    *x = if j < cols {
                        b.data[p * b.rs + (j0 + j) * b.cs]
                    } else {
                        T::ZERO
                    };
                }
            }
        }
    }
}
