//! Winograd's minimal filtering F(m×m, 3×3) for 3×3, stride-1, undilated
//! convolutions with enough channels, for the forward pass and both
//! gradients: F(2×2, 3×3) (2.25× fewer multiplications than the direct,
//! im2col product) or F(4×4, 3×3) (4× fewer) — see [`tile_for`].
//!
//! Each m×m block ("tile") of output pixels of one output channel is
//!
//! ```text
//! Y_t = Aᵀ [ Σ_c U[o, c] ⊙ V_t[c] ] A,    U[o, c] = G g[o, c] Gᵀ,   V_t[c] = Bᵀ d_t[c] B
//! ```
//!
//! where `g[o, c]` is the 3×3 kernel and `d_t[c]` the (m+2)×(m+2) input patch
//! under the tile (zero in the padding); the matrices are in [`variants`].
//! For each of the (m+2)² positions ξ of the transforms, `M_ξ = U_ξ · V_ξ` is
//! a GEMM `(O × C) · (C × tiles)`: (m+2)² products of depth C instead of one
//! of depth 9·C.
//!
//! Gradients, both from `∂L/∂M_t[o] = A dY_t[o] Aᵀ` (the adjoint of the
//! output transform), computed once per tile and output channel:
//!
//! - dW: `∂L/∂U[o, c] = Σ_t ∂L/∂M_t[o] ⊙ V_t[c]` — one GEMM
//!   `(O × tiles) · (tiles × C)` per ξ, summed over the batch — then
//!   `dW[o, c] = Gᵀ (∂L/∂U[o, c]) G`;
//! - dX: `∂L/∂V_ξ = U_ξᵀ · ∂L/∂M_ξ` — one GEMM `(C × O) · (O × tiles)` per
//!   ξ — then the input transform's adjoint, `B ∂L/∂V_t[c] Bᵀ`, each tile's
//!   (m+2)×(m+2) patch added where tiles overlap
//!   ([`input_transform_adjoint`]). (dX could also be a Winograd conv of dY
//!   with the kernels turned 180°, but that transforms dY a second time.)
//!
//! Layout: transformed data is `[ξ][channel][tile]`, one GEMM operand per ξ,
//! the tiles of a block side by side. Every one-axis transform runs as one
//! long elementwise loop over a whole block of tiles ([`lanes::transform`]):
//! rows are first split by row and column phase (pixel `(m·u + kr, m·q +
//! kc)` at `[kr][kc][u][q]`), so that the `m + 2` input rows (or columns)
//! under a tile are phases 0..m of one group of m and phases 0, 1 of the
//! next, each a window of a phase plane shifted by one group. (The input's
//! phase planes keep `tw + 1` groups per tile row, so that the shift stays
//! within the row; its last transform, across, reads `tw + 1` groups and
//! writes `tw` per tile row, all tile rows in one call,
//! [`lanes::transform_rows`].) Blocks hold several whole samples when
//! samples are small (so the GEMMs stay wide), else runs of one sample's
//! tile rows, sized for the transformed input and output to stay in L2.

mod lanes;
mod variants;

use super::Conv2dGeometry;
use super::im2col::{
    Grads, MatRef, batch_split, block_stride, gemm, input_block, output_block, sum, with_scratch,
};
use super::parallel::{BackwardBuffers, BackwardJob, run_backward_jobs, run_jobs, split_by};
use crate::Float;
use crate::gemm::implicit::ImplicitGemm;
use crate::gemm::prepacked::{PackedA, cast, cast_mut, gemm_prepacked};
use crate::gemm::switches;
use crate::simd::multiversion;
use crate::threads::for_each_job;
use lanes::{LANES, offsets, transform, transform_rows, windows};
use std::ops::Range;
use variants::{F2, F4, Variant};

/// Channels per group (input and output) below which the direct product wins:
/// the GEMMs have depth C, and a very short depth spends more time storing
/// results than multiplying.
const MIN_CHANNELS: usize = 16;

/// Target size of one block's transformed input and output (1 MiB measured
/// faster than 512 KiB and 2 MiB on `mid` and `deep`, one thread).
const BLOCK_BYTES: usize = 1 << 20;

/// Whether `conv2d` takes the Winograd path for this geometry: 3×3, stride 1,
/// dilation 1, padding at most 2 (more puts output pixels whose window lies
/// wholly in the padding; such convs are rare and take im2col), an output of
/// at least 2×2, and at least [`MIN_CHANNELS`] input and output channels per
/// group. `conv2d` also requires its operands to be finite: the transforms
/// mix a tile's pixels, so a NaN or ±∞ would reach outputs whose windows do
/// not hold it.
pub(super) fn applies(geom: &Conv2dGeometry) -> bool {
    let axis_ok = |a: &super::AxisGeometry| {
        a.kernel == 3 && a.stride == 1 && a.dilation == 1 && a.padding <= 2 && a.output >= 2
    };
    axis_ok(&geom.h)
        && axis_ok(&geom.w)
        && geom.in_per_group() >= MIN_CHANNELS
        && geom.out_per_group() >= MIN_CHANNELS
}

/// 4×4 output tiles per sample from which F(4×4, 3×3) is used.
///
/// F(4×4, 3×3) does 44 % fewer multiplications than F(2×2, 3×3) and stores
/// 44 % less transformed data, but transforms 2.25× as many kernel values
/// (36 per kernel) and its per-sample GEMMs are 4× narrower. Measured with
/// the benchmark's `--winograd-tile` (minimum of 6 alternating runs, forward
/// and backward): `mid` (32×32 outputs, 16 → 32 channels, 64 tiles) 10.2 ms
/// against 12.6 on one thread and 6.2 against 6.3 on two; `deep` (16×16, 64
/// channels, 16 tiles) 7.4 ms for both on one thread, but 5.4 against 4.7 on
/// two, where each thread's chunk of the batch is two samples.
const F4_MIN_TILES: usize = 64;

/// Panics unless `tile` is a Winograd tile size to force (2 or 4) or 0 (the
/// geometry chooses).
pub(crate) fn check_tile(tile: usize) {
    assert!(
        matches!(tile, 0 | 2 | 4),
        "Winograd tiles are 2 or 4 pixels"
    );
}

/// The tile size (2 or 4) of the variant a conv of this geometry takes:
/// F(4×4, 3×3) when a sample's output has at least [`F4_MIN_TILES`] 4×4
/// tiles, else F(2×2, 3×3); unless the calling thread forces a variant
/// ([`force_winograd_tile`](super::force_winograd_tile)).
pub(crate) fn tile_for(geom: &Conv2dGeometry) -> usize {
    match crate::gemm::switches::winograd_tile() {
        0 if geom.out_h().div_ceil(4) * geom.out_w().div_ceil(4) >= F4_MIN_TILES => 4,
        0 => 2,
        forced => forced,
    }
}

/// The tiles of one Winograd conv: `th × tw` tiles of `tile × tile` output
/// pixels over an `oh × ow` output, read from an `ih × iw` input padded by
/// `(ph, pw)`.
#[derive(Clone, Copy, Debug)]
struct Tiles {
    tile: usize,
    ih: usize,
    iw: usize,
    ph: usize,
    pw: usize,
    oh: usize,
    ow: usize,
    th: usize,
    tw: usize,
}

/// Part of a block: tile rows `rows` of sample `n` (counted within the job),
/// whose tiles are columns `off..off + rows.len() · tw` of the block's
/// transformed data.
#[derive(Clone, Debug)]
struct Part {
    n: usize,
    rows: Range<usize>,
    off: usize,
}

impl Tiles {
    fn new(tile: usize, ih: usize, iw: usize, ph: usize, pw: usize) -> Self {
        let (oh, ow) = (ih + 2 * ph - 2, iw + 2 * pw - 2);
        Tiles {
            tile,
            ih,
            iw,
            ph,
            pw,
            oh,
            ow,
            th: oh.div_ceil(tile),
            tw: ow.div_ceil(tile),
        }
    }

    /// Positions ξ of a transformed tile: one GEMM each.
    fn xi(&self) -> usize {
        (self.tile + 2) * (self.tile + 2)
    }

    /// Groups of `tile` input columns per tile row in the input transform:
    /// tile q covers groups q and q + 1, so one more than the tiles.
    fn slots(&self) -> usize {
        self.tw + 1
    }

    /// Columns of the transformed data of a part of `rows` tile rows.
    fn part_len(&self, rows: usize) -> usize {
        rows * self.tw
    }

    /// Length of each plane of [`Rows`] for a part of `rows` tile rows: the
    /// input's column groups under it, rounded up to whole chunks of
    /// [`LANES`] (the transforms run on whole chunks), two more tile rows
    /// and one more chunk (for the reads shifted by one group, and the
    /// margin of [`input_transform_adjoint`]'s planes).
    fn plane(&self, rows: usize) -> usize {
        (rows * self.slots()).next_multiple_of(LANES) + 2 * self.slots() + LANES
    }

    /// Columns per block: the transformed input (`cin` channels) and output
    /// (`cout`) of a block take about [`BLOCK_BYTES`].
    fn budget<T>(&self, cin: usize, cout: usize) -> usize {
        let column_bytes = self.xi() * (cin + cout) * std::mem::size_of::<T>();
        (BLOCK_BYTES / column_bytes.max(1)).max(1)
    }

    /// Tile rows per block when a sample is cut into several.
    fn rows_per_block(&self, budget: usize) -> usize {
        let max = (budget / self.tw.max(1)).clamp(1, self.th.max(1));
        self.th.div_ceil(self.th.div_ceil(max)).max(1)
    }

    /// The blocks of a job of `samples` samples: several whole samples per
    /// block when they are small (so the GEMMs stay wide), else near-equal
    /// runs of one sample's tile rows.
    fn blocks<T>(&self, samples: usize, cin: usize, cout: usize) -> Vec<Vec<Part>> {
        let (per_sample, budget) = (self.part_len(self.th), self.budget::<T>(cin, cout));
        if per_sample <= budget {
            let k = (budget / per_sample.max(1)).max(1);
            let nb = samples.div_ceil(k);
            (0..nb)
                .map(|b| {
                    (samples * b / nb..samples * (b + 1) / nb)
                        .enumerate()
                        .map(|(i, n)| Part {
                            n,
                            rows: 0..self.th,
                            off: i * per_sample,
                        })
                        .collect()
                })
                .collect()
        } else {
            let rows = self.rows_per_block(budget);
            (0..samples)
                .flat_map(|n| {
                    (0..self.th).step_by(rows).map(move |r| {
                        vec![Part {
                            n,
                            rows: r..(r + rows).min(self.th),
                            off: 0,
                        }]
                    })
                })
                .collect()
        }
    }

    /// The most columns in a block and the most tile rows in a part, for
    /// blocks of up to `samples` samples.
    fn block_limits<T>(&self, samples: usize, cin: usize, cout: usize) -> (usize, usize) {
        let (per_sample, budget) = (self.part_len(self.th), self.budget::<T>(cin, cout));
        if per_sample <= budget {
            let k = (budget / per_sample.max(1)).clamp(1, samples.max(1));
            (k * per_sample, self.th)
        } else {
            let rows = self.rows_per_block(budget);
            (self.part_len(rows), rows)
        }
    }
}

/// Reusable buffers for the transforms of one part of up to `rows` tile
/// rows: `tile²` and `(tile + 2)·tile` planes of [`Tiles::plane`] values,
/// and for [`input_transform_adjoint`] `(tile + 2)·(tile + 4)` more.
struct Rows<T> {
    a: Vec<T>,
    b: Vec<T>,
    c: Vec<T>,
}

impl<T: Float> Rows<T> {
    /// Buffers for parts of up to `rows` tile rows, with `adjoint` those of
    /// [`input_transform_adjoint`] too. Their values are unspecified until
    /// written (NaN in debug builds, so that a value read before it is
    /// written shows up in the tests).
    fn new(t: &Tiles, rows: usize, adjoint: bool) -> Self {
        let (plane, span) = (t.plane(rows), t.tile + 2);
        let fill = if cfg!(debug_assertions) {
            T::from_f64(f64::NAN)
        } else {
            T::ZERO
        };
        Rows {
            a: vec![fill; t.tile * t.tile * plane],
            b: vec![fill; span * t.tile * plane],
            c: vec![
                fill;
                if adjoint {
                    span * (span + 2) * plane
                } else {
                    0
                }
            ],
        }
    }
}

/// Splits a row, padded by `pad ≤ TILE` zeros on the left (and as many as
/// needed on the right), into its columns by phase: `out[k · stride + q] =
/// row[TILE·q + k − pad]` (0 outside the row) for `k < TILE`, `q < slots`;
/// `TILE` is 2 or 4.
///
/// Column `TILE·g + r` of the row is phase `k = r + pad` of group `g` when
/// `r + pad < TILE`, else phase `r + pad − TILE` of group `g + 1`: each
/// phase plane is a phase of the unpadded row, shifted by at most one group.
/// The row's whole groups are split in one pass (which vectorizes), the
/// slots before and after them one by one.
#[inline(always)]
fn split_phases<T: Float, const TILE: usize>(
    line: &[T],
    pad: usize,
    out: &mut [T],
    stride: usize,
    slots: usize,
) {
    assert!(pad <= TILE && slots > 0);
    let mut p: [&mut [T]; TILE] = std::array::from_fn(|_| Default::default());
    let mut rest = &mut out[..(TILE - 1) * stride + slots];
    for pk in p.iter_mut() {
        let cut = stride.min(rest.len());
        let (plane, r) = std::mem::take(&mut rest).split_at_mut(cut);
        (*pk, rest) = (&mut plane[..slots], r);
    }
    // Plane k holds the row's phase `(k − pad) mod TILE`, one group on when
    // `k < pad`.
    let shift = |k: usize| usize::from(k < pad);
    // Whole groups that fit in every plane after its shift.
    let m = (line.len() / TILE).min(slots - 1);
    for (k, pk) in p.iter_mut().enumerate() {
        let (r, sh) = ((k + TILE - pad) % TILE, shift(k));
        pk[..sh].fill(T::ZERO);
        for (q, d) in pk.iter_mut().enumerate().skip(sh + m) {
            *d = line.get(TILE * (q - sh) + r).copied().unwrap_or(T::ZERO);
        }
    }
    let groups = line[..TILE * m].chunks_exact(TILE);
    if TILE == 2 {
        let [p0, p1] = &mut p[..] else {
            unreachable!("TILE is 2")
        };
        let (p0, p1) = (&mut p0[shift(0)..][..m], &mut p1[shift(1)..][..m]);
        // The planes of the row's phases 0 and 1.
        let (d0, d1) = if pad.is_multiple_of(2) {
            (p0, p1)
        } else {
            (p1, p0)
        };
        for ((a, b), x) in d0.iter_mut().zip(d1.iter_mut()).zip(groups) {
            (*a, *b) = (x[0], x[1]);
        }
    } else {
        let [p0, p1, p2, p3] = &mut p[..] else {
            unreachable!("TILE is 4")
        };
        let (p0, p1) = (&mut p0[shift(0)..][..m], &mut p1[shift(1)..][..m]);
        let (p2, p3) = (&mut p2[shift(2)..][..m], &mut p3[shift(3)..][..m]);
        let (d0, d1, d2, d3) = match pad % 4 {
            0 => (p0, p1, p2, p3),
            1 => (p1, p2, p3, p0),
            2 => (p2, p3, p0, p1),
            _ => (p3, p0, p1, p2),
        };
        for ((((a, b), c), d), x) in d0.iter_mut().zip(d1).zip(d2).zip(d3).zip(groups) {
            (*a, *b, *c, *d) = (x[0], x[1], x[2], x[3]);
        }
    }
}

/// Merges a row's columns from their phases, [`split_phases`]' adjoint:
/// `row[TILE·q + k − pad]` gets `ph[k][q]` (with `add`, added to it) for
/// `k < TILE`, `q < slots`, where it lies inside the row (`pad ≤ TILE`).
/// As there, the row's phase `r` is plane `(r + pad) mod TILE`, one slot on
/// when `r + pad ≥ TILE`: the whole groups in one pass, the rest column by
/// column.
#[inline(always)]
fn merge_phases<T: Float, const TILE: usize>(
    line: &mut [T],
    pad: usize,
    ph: [&[T]; TILE],
    slots: usize,
    add: bool,
) {
    assert!(pad <= TILE && slots > 0);
    let m = (line.len() / TILE).min(slots - 1);
    let (whole, tail) = line.split_at_mut(TILE * m);
    for (c, d) in (TILE * m..).zip(tail) {
        let r = c % TILE;
        let q = c / TILE + usize::from(r + pad >= TILE);
        if q < slots {
            let p = ph[(r + pad) % TILE][q];
            *d = if add { *d + p } else { p };
        }
    }
    // `src[r]`: the row's phase `r` over the whole groups.
    let mut src: [&[T]; TILE] = [&[]; TILE];
    for (r, s) in src.iter_mut().enumerate() {
        let k = (r + pad) % TILE;
        *s = &ph[k][usize::from(k < pad)..][..m];
    }
    let groups = whole.chunks_exact_mut(TILE);
    if TILE == 2 {
        let pairs = groups.zip(src[0]).zip(src[1]);
        if add {
            for ((g, &a), &b) in pairs {
                g[0] += a;
                g[1] += b;
            }
        } else {
            for ((g, &a), &b) in pairs {
                (g[0], g[1]) = (a, b);
            }
        }
    } else {
        let quads = groups.zip(src[0]).zip(src[1]).zip(src[2]).zip(src[3]);
        if add {
            for ((((g, &a), &b), &c), &d) in quads {
                g[0] += a;
                g[1] += b;
                g[2] += c;
                g[3] += d;
            }
        } else {
            for ((((g, &a), &b), &c), &d) in quads {
                (g[0], g[1], g[2], g[3]) = (a, b, c, d);
            }
        }
    }
}

/// Input transform of one part: `v[ξ][c][t]` (row stride `ld`, `t`
/// counting the part's columns) `= (Bᵀ d_t[c] B)[ξ]` for a `cin`-channel
/// input `x` (`[cin, ih, iw]`). Per channel, the padded rows under the part
/// are split by row and column phase (`a[kr][kc][u][q]` = padded pixel
/// `(m·u + kr, m·q + kc)`), transformed down (tile row u covers row phases
/// 0..m of group u and 0, 1 of group u + 1), then across (likewise by column),
/// each in one pass over the whole part.
#[inline(always)]
fn input_transform<T: Float, W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>(
    t: &Tiles,
    cin: usize,
    x: &[T],
    rows: Range<usize>,
    ld: usize,
    v: &mut [T],
    buf: &mut Rows<T>,
) {
    let (s, nr, tw) = (t.slots(), rows.len(), t.tw);
    // Column groups of the part's tile rows, as read by whole chunks, and
    // the plane length.
    let ns = nr * s;
    let (chunks, pl) = (ns.next_multiple_of(LANES), t.plane(nr));
    // Past the gathered groups: zero, so that every transform stays finite
    // (row phases from SPAN − TILE on are not gathered below the last tile
    // row).
    for (i, plane) in buf.a.chunks_exact_mut(pl).take(TILE * TILE).enumerate() {
        let gathered = if i / TILE < SPAN - TILE { nr + 1 } else { nr };
        plane[gathered * s..s + chunks].fill(T::ZERO);
    }
    for plane in buf.b.chunks_exact_mut(pl).take(SPAN * TILE) {
        plane[chunks..chunks + LANES].fill(T::ZERO);
    }
    // Row or column `i` under a tile: phase `i` of its group, or phase
    // `i − m` of the next one.
    let phase = |i: usize| if i < TILE { (i, 0) } else { (i - TILE, 1) };
    for c in 0..cin {
        let xc = &x[c * t.ih * t.iw..][..t.ih * t.iw];
        for u in 0..=nr {
            // Below the last tile row only its top two rows are used.
            for kr in 0..if u < nr { TILE } else { SPAN - TILE } {
                let at = kr * TILE * pl + u * s;
                let r = (TILE * (rows.start + u) + kr) as isize - t.ph as isize;
                if r < 0 || r as usize >= t.ih {
                    for kc in 0..TILE {
                        buf.a[at + kc * pl..][..s].fill(T::ZERO);
                    }
                } else {
                    let line = &xc[r as usize * t.iw..][..t.iw];
                    split_phases::<T, TILE>(line, t.pw, &mut buf.a[at..], pl, s);
                }
            }
        }
        // One row per column phase kc, the planes `pl` apart.
        let rows: [&[T]; SPAN] = windows(&buf.a, (TILE - 1) * pl + chunks, |i| {
            let (kr, du) = phase(i);
            kr * TILE * pl + du * s
        });
        let at = offsets(|i| i * TILE * pl);
        transform_rows::<T, W::Bt, SPAN, SPAN>(rows, pl, &mut buf.b, at, pl, TILE, ns);
        // Across, a tile row at a time, into the part's tiles `u·tw + q`
        // (a chunk past a row's end is overwritten by the next row's).
        let row_chunks = tw.next_multiple_of(LANES);
        for i in 0..SPAN {
            let cols: [&[T]; SPAN] = windows(&buf.b, nr.saturating_sub(1) * s + row_chunks, |j| {
                let (kc, shift) = phase(j);
                (i * TILE + kc) * pl + shift
            });
            let at = offsets(|j| ((i * SPAN + j) * cin + c) * ld);
            transform_rows::<T, W::Bt, SPAN, SPAN>(cols, s, v, at, tw, nr, tw);
        }
    }
}

/// The sum of two rows, as a one-axis map.
struct Sum2;

impl lanes::OneAxis<2, 1> for Sum2 {
    #[inline(always)]
    fn apply<V: lanes::Arith>([a, b]: [V; 2]) -> [V; 1] {
        [a + b]
    }
}

/// [`input_transform`]'s adjoint: `dx` (`[cin, ih, iw]`) gets the gradient
/// of the part's input from that of its transformed input, `dv[ξ][c][t]`
/// (row stride `ld`): each tile's `B dV_t[c] Bᵀ`, summed where tiles
/// overlap (their last two rows and columns are the next tile's first two).
/// Per channel, in the reverse order of [`input_transform`]'s steps:
///
/// 1. `B` across each tile row, into planes laid out by column group with a
///    zero between tile rows (and before the first), then the overlap
///    folded: column phase `kc` of group `q` is output `kc` of tile `q` plus
///    output `kc + m` of tile `q − 1`, a read shifted by one;
/// 2. `B` down, into planes by tile row with a zeroed group before the
///    first and after the last, then the row overlap folded likewise (a
///    read shifted by one group) into planes by row group;
/// 3. each row merged from its column phases: written, except the top two
///    rows of a part after a sample's first, which add to what the part
///    before wrote (parts of a sample run in order).
///
/// Every pixel of `dx` under the part is written (padding is dropped).
#[inline(always)]
fn input_transform_adjoint<
    T: Float,
    W: Variant<TILE, SPAN>,
    const TILE: usize,
    const SPAN: usize,
>(
    t: &Tiles,
    cin: usize,
    dv: &[T],
    rows: Range<usize>,
    ld: usize,
    dx: &mut [T],
    buf: &mut Rows<T>,
) {
    let (s, nr, tw) = (t.slots(), rows.len(), t.tw);
    let (ns, pl) = (nr * s, t.plane(nr));
    let (chunks, row_chunks) = (ns.next_multiple_of(LANES), tw.next_multiple_of(LANES));
    // Rows (or columns) under a tile past its group's m: the next group's
    // phases 0..SPAN − TILE, which fold into them.
    let fold = SPAN - TILE;
    // `c`: the across step's planes `e[i][r]` (value of column q of tile row
    // u at `1 + u·s + q`), then `f[i][kc]`, the folded planes of the column
    // phases below `fold`; phases from `fold` on need no folding and are
    // read from `e[i][kc]` itself (from its `1`).
    let folded = |i: usize, kc: usize| {
        if kc < fold {
            (SPAN * SPAN + i * fold + kc) * pl
        } else {
            (i * SPAN + kc) * pl + 1
        }
    };
    // The zeros before each tile row of `e` (and after the last). The
    // across step writes past a row's `tw` values (into the next row's room
    // and the zero between) only when `tw` is not a whole number of chunks:
    // then they are written again for every channel, else once.
    let zero_rows = |e: &mut [T]| {
        for plane in e.chunks_exact_mut(pl).take(SPAN * SPAN) {
            for z in plane.iter_mut().step_by(s).take(nr + 1) {
                *z = T::ZERO;
            }
        }
    };
    let rows_overrun = tw % LANES != 0;
    // The zeros of `b` before the first tile row (read by the row fold for
    // rows from `m` on; nothing writes there) and after the last (read for
    // rows below `fold`; the down step runs past `ns` into them unless `ns`
    // is a whole number of chunks).
    let zero_after = |b: &mut [T]| {
        for plane in b.chunks_exact_mut(pl).take(fold * TILE) {
            plane[s + ns..][..s].fill(T::ZERO);
        }
    };
    let down_overruns = ns % LANES != 0;
    for plane in buf.b.chunks_exact_mut(pl).take(SPAN * TILE) {
        plane[..s].fill(T::ZERO);
    }
    if !rows_overrun {
        zero_rows(&mut buf.c);
    }
    if !down_overruns {
        zero_after(&mut buf.b);
    }
    for c in 0..cin {
        let (e, f) = buf.c.split_at_mut(SPAN * SPAN * pl);
        for i in 0..SPAN {
            let cols: [&[T]; SPAN] = windows(dv, nr.saturating_sub(1) * tw + row_chunks, |j| {
                ((i * SPAN + j) * cin + c) * ld
            });
            let at = offsets(|r| (i * SPAN + r) * pl + 1);
            transform_rows::<T, W::B, SPAN, SPAN>(cols, tw, e, at, s, nr, tw);
        }
        if rows_overrun {
            zero_rows(e);
        }
        // One row per row i of the tiles.
        for kc in 0..fold {
            let pair: [&[T]; 2] = windows(e, (SPAN - 1) * SPAN * pl + chunks, |h| {
                (kc + h * TILE) * pl + 1 - h
            });
            let at = [kc * pl];
            transform_rows::<T, Sum2, 2, 1>(pair, SPAN * pl, f, at, fold * pl, SPAN, ns);
        }
        // Down: `b[r][kc]`, tile row u at `(u + 1)·s`, zero before the
        // first and after the last, then the rows below `fold` folded: row
        // phase kr of group g is output kr of tile row g plus output
        // kr + m of tile row g − 1, into `a[kr][kc]` at `g·s`.
        for kc in 0..TILE {
            let col: [&[T]; SPAN] = windows(&buf.c, chunks, |i| folded(i, kc));
            let at = offsets(|r| (r * TILE + kc) * pl + s);
            transform::<T, W::B, SPAN, SPAN>(col, &mut buf.b, at, ns);
        }
        if down_overruns {
            zero_after(&mut buf.b);
        }
        let groups = ns + s;
        // One row per column phase kc.
        let len = (TILE - 1) * pl + groups.next_multiple_of(LANES);
        for kr in 0..fold {
            let pair: [&[T]; 2] =
                windows(&buf.b, len, |h| (kr + h * TILE) * TILE * pl + s * (1 - h));
            let at = [kr * TILE * pl];
            transform_rows::<T, Sum2, 2, 1>(pair, pl, &mut buf.a, at, pl, TILE, groups);
        }
        let dxc = &mut dx[c * t.ih * t.iw..][..t.ih * t.iw];
        for g in 0..=nr {
            // Below the last tile row only the folded rows are left.
            for kr in 0..if g < nr { TILE } else { fold } {
                let r = (TILE * (rows.start + g) + kr) as isize - t.ph as isize;
                if r < 0 || r as usize >= t.ih {
                    continue;
                }
                let line = &mut dxc[r as usize * t.iw..][..t.iw];
                let ph: [&[T]; TILE] = if kr < fold {
                    windows(&buf.a, s, |kc| (kr * TILE + kc) * pl + g * s)
                } else {
                    windows(&buf.b, s, |kc| (kr * TILE + kc) * pl + (g + 1) * s)
                };
                let add = g == 0 && kr < fold && rows.start > 0;
                merge_phases::<T, TILE>(line, t.pw, ph, s, add);
            }
        }
    }
}

/// Output transform of one part: `y[o]` (`[cout, oh, ow]`) gets
/// `Aᵀ M_t[o] A (+ bias[o])` from `m[ξ][o][t]` (row stride `ld`): down each
/// column, then across (`a[k][l][t]` = pixel `(m·u + k, m·q + l)` of tile
/// `t`), then each output row's pixels interleaved from their column phases.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn output_transform<T: Float, W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>(
    t: &Tiles,
    cout: usize,
    m: &[T],
    rows: Range<usize>,
    ld: usize,
    bias: Option<&[T]>,
    y: &mut [T],
    buf: &mut Rows<T>,
) {
    let tw = t.tw;
    let n = t.part_len(rows.len());
    let pl = n.next_multiple_of(LANES);
    let full = t.ow / TILE;
    for o in 0..cout {
        let b = bias.map_or(T::ZERO, |b| b[o]);
        let yo = &mut y[o * t.oh * t.ow..][..t.oh * t.ow];
        // Down, one row per column j (`cout·ld` apart in `m`), then across,
        // one row per row k.
        let col: [&[T]; SPAN] = windows(m, (SPAN - 1) * cout * ld + pl, |i| {
            (i * SPAN * cout + o) * ld
        });
        let at = offsets(|k| k * SPAN * pl);
        transform_rows::<T, W::At, SPAN, TILE>(col, cout * ld, &mut buf.b, at, pl, SPAN, n);
        let row: [&[T]; SPAN] = windows(&buf.b, (TILE - 1) * SPAN * pl + pl, |j| j * pl);
        let at = offsets(|l| l * pl);
        transform_rows::<T, W::At, SPAN, TILE>(row, SPAN * pl, &mut buf.a, at, TILE * pl, TILE, n);
        for (u, ti) in rows.clone().enumerate() {
            for k in 0..TILE {
                let i = TILE * ti + k;
                if i >= t.oh {
                    break;
                }
                let line = &mut yo[i * t.ow..][..t.ow];
                // Column phase l of this row's tiles: pixels l, l + m, ….
                let ph = |l: usize| &buf.a[(k * TILE + l) * pl + u * tw..][..tw];
                let groups = line.chunks_exact_mut(TILE);
                if TILE == 2 {
                    for ((g, &a), &c) in groups.zip(ph(0)).zip(ph(1)) {
                        g.copy_from_slice(&[a + b, c + b]);
                    }
                } else {
                    let (p0, p1, p2, p3) = (ph(0), ph(1), ph(2), ph(3));
                    for ((((g, &a), &c), &d), &e) in groups.zip(p0).zip(p1).zip(p2).zip(p3) {
                        g.copy_from_slice(&[a + b, c + b, d + b, e + b]);
                    }
                }
                for (l, p) in line[TILE * full..].iter_mut().enumerate() {
                    *p = ph(l)[full] + b;
                }
            }
        }
    }
}

/// `A dY_t Aᵀ` of one part: `w[ξ][o][t]` (row stride `ld`) from a
/// `cout`-channel output gradient `dy` (`[cout, oh, ow]`): its rows split by
/// row and column phase (0 past the edge), transformed down, then across.
/// With `db`, each channel's sum over the part is added to `db[o]` (from the
/// split rows, while they are in cache).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn grad_transform<T: Float, W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>(
    t: &Tiles,
    cout: usize,
    dy: &[T],
    rows: Range<usize>,
    ld: usize,
    w: &mut [T],
    buf: &mut Rows<T>,
    mut db: Option<&mut [T]>,
) {
    let (tw, nr) = (t.tw, rows.len());
    let n = t.part_len(nr);
    let pl = n.next_multiple_of(LANES);
    // The columns past the part: zero, so that their transforms stay finite.
    for plane in buf.a.chunks_exact_mut(pl).take(TILE * TILE) {
        plane[n..].fill(T::ZERO);
    }
    for o in 0..cout {
        let dyo = &dy[o * t.oh * t.ow..][..t.oh * t.ow];
        for u in 0..nr {
            for k in 0..TILE {
                let at = k * TILE * pl + u * tw;
                let i = TILE * (rows.start + u) + k;
                if i >= t.oh {
                    for l in 0..TILE {
                        buf.a[at + l * pl..][..tw].fill(T::ZERO);
                    }
                } else {
                    let line = &dyo[i * t.ow..][..t.ow];
                    split_phases::<T, TILE>(line, 0, &mut buf.a[at..], pl, tw);
                }
            }
        }
        if let Some(db) = db.as_deref_mut() {
            let planes = buf.a.chunks_exact(pl).take(TILE * TILE);
            db[o] += planes.map(|p| sum(&p[..n])).fold(T::ZERO, |a, b| a + b);
        }
        // Down, one row per column phase l, then across, one row per row i
        // (`SPAN·cout·ld` apart in `w`).
        let col: [&[T]; TILE] = windows(&buf.a, (TILE - 1) * pl + pl, |k| k * TILE * pl);
        let at = offsets(|i| i * TILE * pl);
        transform_rows::<T, W::A, TILE, SPAN>(col, pl, &mut buf.b, at, pl, TILE, n);
        let row: [&[T]; TILE] = windows(&buf.b, (SPAN - 1) * TILE * pl + pl, |l| l * pl);
        let at = offsets(|j| (j * cout + o) * ld);
        transform_rows::<T, W::A, TILE, SPAN>(row, TILE * pl, w, at, SPAN * cout * ld, SPAN, n);
    }
}

/// `G g Gᵀ` of `n` 3×3 kernels at once: `w9` holds their 9 values as planes
/// (`w9[e · stride + k]`, `e = 3a + b`), `u` gets the `(m+2)²` transformed
/// values as planes of the same stride (`ξ = (m+2)·i + j`), through the
/// `3·(m+2)` planes of `tmp`. Every plane has room for whole chunks (`stride`
/// ≥ `n` rounded up to [`LANES`]); what lies past `n` only reaches lanes past
/// `n`.
#[inline(always)]
fn kernel_transforms<T: Float, W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>(
    w9: &[T],
    stride: usize,
    n: usize,
    u: &mut [T],
    tmp: &mut [T],
) {
    // Down each column b of g: tmp[3i + b] = (G g[·][b])[i].
    for b in 0..3 {
        let col: [&[T]; 3] = windows(w9, stride, |a| (3 * a + b) * stride);
        transform::<T, W::G, 3, SPAN>(col, tmp, offsets(|i| (3 * i + b) * stride), n);
    }
    // Then across each row i.
    for i in 0..SPAN {
        let row: [&[T]; 3] = windows(tmp, stride, |b| (3 * i + b) * stride);
        transform::<T, W::G, 3, SPAN>(row, u, offsets(|j| (SPAN * i + j) * stride), n);
    }
}

/// `Gᵀ du G` of `n` kernels at once, the gradient of the kernels from that
/// of their transforms: [`kernel_transforms`]' adjoint, planes as there.
#[inline(always)]
fn kernel_transform_adjoints<
    T: Float,
    W: Variant<TILE, SPAN>,
    const TILE: usize,
    const SPAN: usize,
>(
    du: &[T],
    stride: usize,
    n: usize,
    dw9: &mut [T],
    tmp: &mut [T],
) {
    // Across each row i of du: tmp[3i + b] = (Gᵀ du[i][·])[b].
    for i in 0..SPAN {
        let row: [&[T]; SPAN] = windows(du, stride, |j| (SPAN * i + j) * stride);
        transform::<T, W::Gt, SPAN, 3>(row, tmp, offsets(|b| (3 * i + b) * stride), n);
    }
    // Then down each column b.
    for b in 0..3 {
        let col: [&[T]; SPAN] = windows(tmp, stride, |i| (3 * i + b) * stride);
        transform::<T, W::Gt, SPAN, 3>(col, dw9, offsets(|a| (3 * a + b) * stride), n);
    }
}

multiversion!(fn input_transform_simd<T: Float, W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>(
    t: &Tiles, cin: usize, x: &[T], rows: Range<usize>, ld: usize, v: &mut [T], buf: &mut Rows<T>,
) => input_transform);
multiversion!(fn input_transform_adjoint_simd<T: Float, W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>(
    t: &Tiles, cin: usize, dv: &[T], rows: Range<usize>, ld: usize, dx: &mut [T], buf: &mut Rows<T>,
) => input_transform_adjoint);
multiversion!(fn output_transform_simd<T: Float, W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>(
    t: &Tiles, cout: usize, m: &[T], rows: Range<usize>, ld: usize, bias: Option<&[T]>,
    y: &mut [T], buf: &mut Rows<T>,
) => output_transform);
multiversion!(fn grad_transform_simd<T: Float, W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>(
    t: &Tiles, cout: usize, dy: &[T], rows: Range<usize>, ld: usize, w: &mut [T], buf: &mut Rows<T>,
    db: Option<&mut [T]>,
) => grad_transform);
multiversion!(fn kernel_transforms_simd<T: Float, W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>(
    w9: &[T], stride: usize, n: usize, u: &mut [T], tmp: &mut [T],
) => kernel_transforms);
multiversion!(fn kernel_transform_adjoints_simd<T: Float, W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>(
    du: &[T], stride: usize, n: usize, dw9: &mut [T], tmp: &mut [T],
) => kernel_transform_adjoints);

/// Kernels per group from which their transforms (and in backward the
/// adjoints) run in parallel.
const PAR_KERNELS: usize = 1024;

/// Kernels per parallel chunk of the kernel transforms and their adjoints:
/// all `n` below [`PAR_KERNELS`], else one run of whole [`LANES`] chunks per
/// thread. A multiple of [`LANES`], so it is also the stride of every
/// chunk's planes (the transforms run on whole chunks of lanes).
fn kernel_step(n: usize) -> usize {
    let threads = if n < PAR_KERNELS {
        1
    } else {
        crate::gemm::num_threads()
    };
    n.div_ceil(threads).next_multiple_of(LANES).max(LANES)
}

/// The transformed kernels of every group, one matrix per ξ, each packed
/// `rows × cols` from `kernel(g, i, p)`, the 3×3 kernel (row-major) that
/// entry `(i, p)` of group `g`'s matrices transforms. The transforms run in
/// chunks of [`kernel_step`] kernels, then the packing one ξ at a time, both
/// split between threads for large groups.
fn transformed_kernels<T: Float, W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>(
    groups: usize,
    rows: usize,
    cols: usize,
    kernel: impl Fn(usize, usize, usize) -> [T; 9] + Sync,
) -> Vec<Vec<PackedA<T>>> {
    let (n, xi, step) = (rows * cols, SPAN * SPAN, kernel_step(rows * cols));
    (0..groups)
        .map(|g| {
            // Chunk c's kernels (from c · step): their values as 9 planes,
            // then their transforms as xi, planes `step` apart (what lies
            // past a chunk's end in a plane only reaches lanes past it).
            // Taken here, on the thread that hands them back below, so that
            // the buffers stay in one thread's pool from call to call.
            let mut chunks: Vec<Vec<T>> = (0..n.div_ceil(step))
                .map(|_| crate::buffer::scratch(xi * step))
                .collect();
            let sw = switches::current();
            for_each_job(chunks.iter_mut().enumerate().collect(), |(c, u)| {
                let _sw = switches::install(sw);
                let ks = c * step..n.min((c + 1) * step);
                let len = ks.len();
                let mut w9 = crate::buffer::scratch(9 * step);
                for (j, k) in ks.enumerate() {
                    for (e, &v) in kernel(g, k / cols, k % cols).iter().enumerate() {
                        w9[e * step + j] = v;
                    }
                }
                let mut tmp = crate::buffer::scratch(3 * SPAN * step);
                kernel_transforms_simd::<T, W, TILE, SPAN>(&w9, step, len, u, &mut tmp);
                [w9, tmp].into_iter().for_each(crate::buffer::recycle);
            });
            // Kernel k of plane x: entry k mod step of chunk k / step. With a
            // few chunks (one per thread) found by subtraction: a division
            // per packed value cost more than the packing itself.
            let few = chunks.len() <= 4;
            let value = |x: usize, k: usize| {
                let (c, j) = if few {
                    let (mut c, mut j) = (0, k);
                    while j >= step {
                        (c, j) = (c + 1, j - step);
                    }
                    (c, j)
                } else {
                    (k / step, k % step)
                };
                chunks[c][x * step + j]
            };
            let mut packed: Vec<Option<PackedA<T>>> = (0..xi).map(|_| None).collect();
            let pack = |(x, slot): (usize, &mut Option<PackedA<T>>)| {
                *slot = Some(PackedA::new(rows, cols, |i, p| value(x, i * cols + p)));
            };
            let jobs: Vec<_> = packed.iter_mut().enumerate().collect();
            if n < PAR_KERNELS {
                jobs.into_iter().for_each(pack);
            } else {
                run_jobs(jobs, pack);
            }
            chunks.into_iter().for_each(crate::buffer::recycle);
            packed.into_iter().flatten().collect()
        })
        .collect()
}

/// `dW` (OIHW, `groups` groups of `n` kernels) from the summed gradient of
/// the transformed kernels, `total[g][ξ][k]`: [`kernel_transform_adjoints`]
/// in chunks of [`kernel_step`] kernels, split between threads for large
/// groups.
fn weight_grad_from<T: Float, W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>(
    groups: usize,
    n: usize,
    total: &[T],
) -> Vec<T> {
    let (xi, step) = (SPAN * SPAN, kernel_step(n));
    // Every element is written below. From the pool, not the allocator: a
    // fresh block this size comes from the OS, and its pages fault in every
    // step on whichever thread writes them first.
    let mut dw = crate::buffer::scratch(groups * n * 9);
    for (g, dwg) in dw.chunks_exact_mut(9 * n).enumerate() {
        let dug = &total[g * xi * n..][..xi * n];
        let jobs: Vec<_> = dwg.chunks_mut(9 * step).enumerate().collect();
        let sw = switches::current();
        for_each_job(jobs, |(c, dwc)| {
            let _sw = switches::install(sw);
            let (k0, len) = (c * step, dwc.len() / 9);
            // The chunk's dU as planes `step` apart.
            let mut du = crate::buffer::scratch(xi * step);
            for (to, from) in du.chunks_exact_mut(step).zip(dug.chunks_exact(n)) {
                to[..len].copy_from_slice(&from[k0..k0 + len]);
            }
            let mut dw9 = crate::buffer::scratch(9 * step);
            let mut tmp = crate::buffer::scratch(3 * SPAN * step);
            kernel_transform_adjoints_simd::<T, W, TILE, SPAN>(&du, step, len, &mut dw9, &mut tmp);
            for (k, d) in dwc.chunks_exact_mut(9).enumerate() {
                for (e, d) in d.iter_mut().enumerate() {
                    *d = dw9[e * step + k];
                }
            }
            // Plain Vecs (not a tensor's storage), so nothing recycles them
            // on drop: hand them back to the pool for the next call.
            [du, dw9, tmp].into_iter().for_each(crate::buffer::recycle);
        });
    }
    dw
}

/// Scratch for the blocks of a job of up to `samples` samples: the
/// transformed data's row stride, the lengths of the transformed input and
/// output, and the transform buffers.
struct Scratch<T> {
    ld: usize,
    v_len: usize,
    m_len: usize,
    rows: Rows<T>,
}

impl<T: Float> Scratch<T> {
    /// With `adjoint`, room for [`input_transform_adjoint`] too.
    fn new(t: &Tiles, samples: usize, cin: usize, cout: usize, adjoint: bool) -> Self {
        let (columns, rows) = t.block_limits::<T>(samples, cin, cout);
        // Room for the transforms' last chunk past the last column.
        let ld = block_stride::<T>(columns + LANES);
        Scratch {
            ld,
            v_len: t.xi() * cin * ld,
            m_len: t.xi() * cout * ld,
            rows: Rows::new(t, rows, adjoint),
        }
    }
}

/// Where one block's samples are: `(data, range)` gives sample `n`'s
/// `[channels, h, w]` slice of one group as `data[range(n)]`.
type Samples<'a, T, F> = (&'a [T], F);

/// One Winograd conv of one block of one group: `y[y_at(n)]` (`[cout, oh,
/// ow]`) of each part's sample from `x[x_at(n)]` (`[cin, ih, iw]`) with the
/// packed transformed kernels `u[ξ]` (`cout × cin`), plus the bias; `v` and
/// `m` are scratch of the [`Scratch`] lengths.
#[allow(clippy::too_many_arguments)]
fn conv_block<T: Float, W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>(
    t: &Tiles,
    cin: usize,
    cout: usize,
    parts: &[Part],
    (x, x_at): Samples<'_, T, impl Fn(usize) -> Range<usize>>,
    u: &[PackedA<T>],
    bias: Option<&[T]>,
    y: &mut [T],
    y_at: impl Fn(usize) -> Range<usize>,
    s: &mut Scratch<T>,
    v: &mut [T],
    m: &mut [T],
) {
    let ld = s.ld;
    for p in parts {
        let (xs, vs) = (&x[x_at(p.n)], &mut v[p.off..]);
        input_transform_simd::<T, W, TILE, SPAN>(t, cin, xs, p.rows.clone(), ld, vs, &mut s.rows);
    }
    let nt = parts.last().map_or(0, |p| p.off + t.part_len(p.rows.len()));
    for (xi, uxi) in u.iter().enumerate() {
        let vx = &v[xi * cin * ld..][..cin * ld];
        let mx = &mut m[xi * cout * ld..][..cout * ld];
        gemm_prepacked(uxi, nt, vx, ld, true, mx, ld);
    }
    for p in parts {
        let (ys, ms) = (&mut y[y_at(p.n)], &m[p.off..]);
        let rows = p.rows.clone();
        output_transform_simd::<T, W, TILE, SPAN>(t, cout, ms, rows, ld, bias, ys, &mut s.rows);
    }
}

/// Where one block's dX goes: the packed transposed kernels `U_ξᵀ`, and
/// `(data, range)` as in [`Samples`].
type DxOut<'a, T, F> = (&'a [PackedA<T>], &'a mut [T], F);

/// The backward pass of one block of one group, from the output gradient
/// `dy[dy_at(n)]` (`[cout, oh, ow]`) of each part's sample: its transform
/// `A dY_t Aᵀ` (`∂L/∂M`, into `wd`; with `db`, dY's sums over the block
/// added to `db`), then
///
/// - with `du`: adds the block's `∂L/∂U_ξ` (`cout × cin`) to it, or with
///   `first` writes it (`du` is not read), from the input `x[x_at(n)]`
///   (`[cin, ih, iw]`) transformed into `v`;
/// - with `dx`: `∂L/∂V_ξ = U_ξᵀ · ∂L/∂M_ξ` from the packed transposed
///   kernels `ut[ξ]` (`cin × cout`), into `v`, then its
///   [`input_transform_adjoint`] into `dx[dx_at(n)]`.
///
/// `v` and `wd` are scratch of the [`Scratch`] lengths.
#[allow(clippy::too_many_arguments)]
fn backward_block<T: Float, W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>(
    t: &Tiles,
    cin: usize,
    cout: usize,
    parts: &[Part],
    (x, x_at): Samples<'_, T, impl Fn(usize) -> Range<usize>>,
    (dy, dy_at): Samples<'_, T, impl Fn(usize) -> Range<usize>>,
    mut db: Option<&mut [T]>,
    du: Option<(&mut [T], bool)>,
    dx: Option<DxOut<'_, T, impl Fn(usize) -> Range<usize>>>,
    s: &mut Scratch<T>,
    v: &mut [T],
    wd: &mut [T],
) {
    let ld = s.ld;
    let nt = parts.last().map_or(0, |p| p.off + t.part_len(p.rows.len()));
    for p in parts {
        let (dys, ws, rows) = (&dy[dy_at(p.n)], &mut wd[p.off..], p.rows.clone());
        let db = db.as_deref_mut();
        grad_transform_simd::<T, W, TILE, SPAN>(t, cout, dys, rows, ld, ws, &mut s.rows, db);
    }
    if let Some((du, first)) = du {
        for p in parts {
            let (xs, vs) = (&x[x_at(p.n)], &mut v[p.off..]);
            let rows = p.rows.clone();
            input_transform_simd::<T, W, TILE, SPAN>(t, cin, xs, rows, ld, vs, &mut s.rows);
        }
        // dU_ξ (cout × cin) += Wd_ξ (cout × nt) · V_ξᵀ (nt × cin). With the
        // AVX-512 transpose (f32), V_ξᵀ is written out first, so that the
        // product packs it from whole rows instead of a column at a time.
        let beta = if first { T::ZERO } else { T::ONE };
        let transposer = ImplicitGemm::detect::<T>().filter(|k| k.has_weight_grad());
        let vt_len = if transposer.is_some() { nt * cin } else { 0 };
        with_scratch(vt_len, |vt: &mut [T]| {
            for xi in 0..SPAN * SPAN {
                let a = MatRef {
                    data: &wd[xi * cout * ld..][..cout * ld],
                    rs: ld,
                    cs: 1,
                };
                let vx = &v[xi * cin * ld..][..cin * ld];
                let b = match transposer {
                    Some(kern) => {
                        let src = cast::<T, f32>(vx).expect("f32");
                        kern.transpose(src, cin, nt, ld, cast_mut(vt).expect("f32"));
                        MatRef {
                            data: &*vt,
                            rs: cin,
                            cs: 1,
                        }
                    }
                    None => MatRef {
                        data: vx,
                        rs: 1,
                        cs: ld,
                    },
                };
                let c = &mut du[xi * cout * cin..][..cout * cin];
                gemm(cout, cin, nt, a, b, beta, c, cin);
            }
        });
    }
    if let Some((ut, dx, dx_at)) = dx {
        for (xi, ut) in ut.iter().enumerate() {
            // dV_ξ (cin × nt) = U_ξᵀ (cin × cout) · Wd_ξ (cout × nt)
            let wx = &wd[xi * cout * ld..][..cout * ld];
            let vx = &mut v[xi * cin * ld..][..cin * ld];
            gemm_prepacked(ut, nt, wx, ld, true, vx, ld);
        }
        for p in parts {
            let (vs, dxs) = (&v[p.off..], &mut dx[dx_at(p.n)]);
            let rows = p.rows.clone();
            input_transform_adjoint_simd::<T, W, TILE, SPAN>(
                t,
                cin,
                vs,
                rows,
                ld,
                dxs,
                &mut s.rows,
            );
        }
    }
}

/// Forward: `Y = conv2d(X, W) + b` by Winograd; see [`applies`] and
/// [`tile_for`].
pub(super) fn forward<T: Float>(
    geom: &Conv2dGeometry,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
) -> Vec<T> {
    match tile_for(geom) {
        4 => forward_with::<T, F4, 4, 6>(geom, x, w, b),
        _ => forward_with::<T, F2, 2, 4>(geom, x, w, b),
    }
}

/// [`forward`] by the variant `W`.
fn forward_with<T: Float, W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>(
    geom: &Conv2dGeometry,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
) -> Vec<T> {
    let (cg, og) = (geom.in_per_group(), geom.out_per_group());
    let (h, wd) = (&geom.h, &geom.w);
    let t = Tiles::new(TILE, h.input, wd.input, h.padding, wd.padding);
    debug_assert_eq!((t.oh, t.ow), (geom.out_h(), geom.out_w()));
    let u = transformed_kernels::<T, W, TILE, SPAN>(geom.groups, og, cg, |g, o, c| {
        w[(g * og * cg + o * cg + c) * 9..][..9]
            .try_into()
            .expect("3x3 kernel")
    });
    // Every pixel is written by `output_transform`.
    let mut y = crate::buffer::scratch(geom.output_shape().iter().product());
    let ranges = batch_split(geom);
    let most = ranges.iter().map(|r| r.len()).max().unwrap_or(0);
    let jobs: Vec<_> = ranges
        .iter()
        .cloned()
        .zip(split_by(&mut y, &ranges, geom.out_channels * geom.out_hw()))
        .collect();
    run_jobs(jobs, |(samples, y)| {
        let mut s = Scratch::new(&t, most, cg, og, false);
        with_scratch(s.v_len, |v: &mut [T]| {
            with_scratch(s.m_len, |m: &mut [T]| {
                for block in t.blocks::<T>(samples.len(), cg, og) {
                    for (g, ug) in u.iter().enumerate() {
                        let x_at = |n| input_block(geom, samples.start + n, g);
                        let bg = b.map(|b| &b[g * og..(g + 1) * og]);
                        let y_at = |n| output_block(geom, n, g);
                        conv_block::<T, W, TILE, SPAN>(
                            &t,
                            cg,
                            og,
                            &block,
                            (x, x_at),
                            ug,
                            bg,
                            y,
                            y_at,
                            &mut s,
                            v,
                            m,
                        );
                    }
                }
            })
        })
    });
    y
}

/// Backward by Winograd, in one pass over the batch (split between
/// threads), from the forward's tiles: `∂L/∂M = A dY_t Aᵀ` once per block,
/// then dW from it and the transformed input (`∂L/∂U`, summed per task, then
/// `Gᵀ·dU·G`), and dX through the transposed kernels and the input
/// transform's adjoint; db as sums of dY (taken inside the grad transform,
/// or in a pass of their own when db is the only gradient wanted). `need`
/// is whether dX, dW and db are wanted.
pub(super) fn backward<T: Float>(
    geom: &Conv2dGeometry,
    x: &[T],
    w: &[T],
    dy: &[T],
    need: [bool; 3],
) -> Grads<T> {
    match tile_for(geom) {
        4 => backward_with::<T, F4, 4, 6>(geom, x, w, dy, need),
        _ => backward_with::<T, F2, 2, 4>(geom, x, w, dy, need),
    }
}

/// [`backward`] by the variant `W`.
fn backward_with<T: Float, W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>(
    geom: &Conv2dGeometry,
    x: &[T],
    w: &[T],
    dy: &[T],
    [need_dx, need_dw, need_db]: [bool; 3],
) -> Grads<T> {
    let (cg, og, ohw) = (geom.in_per_group(), geom.out_per_group(), geom.out_hw());
    let xi = SPAN * SPAN;
    let ranges = batch_split(geom);
    let (tasks, most) = (
        ranges.len(),
        ranges.iter().map(|r| r.len()).max().unwrap_or(0),
    );
    let (h, wd) = (&geom.h, &geom.w);
    let t = Tiles::new(TILE, h.input, wd.input, h.padding, wd.padding);
    // U_ξᵀ per group: entry (c, o) is kernel (o, c)'s transform.
    let ut = if need_dx {
        transformed_kernels::<T, W, TILE, SPAN>(geom.groups, cg, og, |g, c, o| {
            w[((g * og + o) * cg + c) * 9..][..9]
                .try_into()
                .expect("3x3 kernel")
        })
    } else {
        Vec::new()
    };
    // Every pixel of dX is written by `input_transform_adjoint`; each
    // chunk's first block writes its partial dU, and it clears its db first.
    let need = [need_dx, need_dw, need_db];
    let mut out = BackwardBuffers::new(geom, tasks, need, geom.groups * xi * og * cg);
    run_backward_jobs(out.jobs(geom, &ranges), geom.out_hw() > 0, |job| {
        let BackwardJob {
            samples,
            mut dx,
            dw: mut du,
            mut db,
        } = job;
        let n0 = samples.start;
        if dx.is_none() && du.is_none() {
            // db alone: row sums of dY (else the blocks add them).
            if let Some(db) = db {
                for n in samples.clone() {
                    let dyn_ = &dy[output_block(geom, n, 0).start..];
                    for (o, plane) in dyn_.chunks_exact(ohw).take(og * geom.groups).enumerate() {
                        db[o] += sum(plane);
                    }
                }
            }
            return;
        }
        let mut s = Scratch::<T>::new(&t, most, cg, og, dx.is_some());
        with_scratch(s.v_len, |v: &mut [T]| {
            with_scratch(s.m_len, |m: &mut [T]| {
                for (b, block) in t.blocks::<T>(samples.len(), cg, og).iter().enumerate() {
                    for g in 0..geom.groups {
                        let x_at = |n| input_block(geom, n0 + n, g);
                        let dy_at = |n| output_block(geom, n0 + n, g);
                        let dug = du
                            .as_deref_mut()
                            .map(|du| (&mut du[g * xi * og * cg..][..xi * og * cg], b == 0));
                        let dxg = dx
                            .as_deref_mut()
                            .map(|dx| (&ut[g][..], dx, |n| input_block(geom, n, g)));
                        let dbg = db.as_deref_mut().map(|db| &mut db[g * og..][..og]);
                        backward_block::<T, W, TILE, SPAN>(
                            &t,
                            cg,
                            og,
                            block,
                            (x, x_at),
                            (dy, dy_at),
                            dbg,
                            dug,
                            dxg,
                            &mut s,
                            v,
                            m,
                        );
                    }
                }
            })
        });
    });
    // The chunks' partial dU, summed in chunk order, then transformed back.
    let dw = out.dw.sum().map(|total| {
        let dw = weight_grad_from::<T, W, TILE, SPAN>(geom.groups, og * cg, &total);
        crate::buffer::recycle(total);
        dw
    });
    let db = out.db.sum();
    Grads { dx: out.dx, dw, db }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`split_phases`] against its definition, for rows longer and
    /// shorter than the slots, every padding, both tiles.
    fn split_phases_by_definition<const TILE: usize>() {
        for len in 1..20 {
            for pad in 0..=TILE {
                for slots in 1..12 {
                    let line: Vec<f64> = (0..len).map(|i| i as f64 + 1.0).collect();
                    let stride = slots + 3;
                    let mut out = vec![f64::NAN; TILE * stride];
                    split_phases::<f64, TILE>(&line, pad, &mut out, stride, slots);
                    for k in 0..TILE {
                        for q in 0..slots {
                            let want = (TILE * q + k)
                                .checked_sub(pad)
                                .and_then(|c| line.get(c).copied())
                                .unwrap_or(0.0);
                            assert_eq!(out[k * stride + q], want, "{len} {pad} {slots} {k} {q}");
                        }
                        // Nothing written past the slots.
                        assert!(out[k * stride + slots..][..3].iter().all(|v| v.is_nan()));
                    }
                }
            }
        }
    }

    /// [`merge_phases`] against its definition, writing and adding.
    fn merge_phases_by_definition<const TILE: usize>() {
        for len in 1..20 {
            for pad in 0..=TILE {
                for slots in 1..12 {
                    for add in [false, true] {
                        let ph: Vec<Vec<f64>> = (0..TILE)
                            .map(|k| (0..slots).map(|q| (100 * k + q) as f64).collect())
                            .collect();
                        let mut line: Vec<f64> = (0..len).map(|i| -(i as f64)).collect();
                        let mut want = line.clone();
                        for (k, pk) in ph.iter().enumerate() {
                            for (q, &p) in pk.iter().enumerate() {
                                if let Some(d) = (TILE * q + k)
                                    .checked_sub(pad)
                                    .and_then(|c| want.get_mut(c))
                                {
                                    *d = if add { *d + p } else { p };
                                }
                            }
                        }
                        let phs: [&[f64]; TILE] = std::array::from_fn(|k| &ph[k][..]);
                        merge_phases::<f64, TILE>(&mut line, pad, phs, slots, add);
                        assert_eq!(line, want, "{len} {pad} {slots} {add}");
                    }
                }
            }
        }
    }

    #[test]
    fn merge_phases_matches_its_definition() {
        merge_phases_by_definition::<2>();
        merge_phases_by_definition::<4>();
    }

    #[test]
    fn split_phases_matches_its_definition() {
        split_phases_by_definition::<2>();
        split_phases_by_definition::<4>();
    }

    /// `G g Gᵀ` of one kernel, through the planes of [`kernel_transforms`].
    fn transform_one<W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>(
        k: &[f64],
    ) -> Vec<f64> {
        let mut w9 = vec![0.0; 9 * LANES];
        for (e, &v) in k.iter().enumerate() {
            w9[e * LANES] = v;
        }
        let (mut u, mut tmp) = (vec![0.0; SPAN * SPAN * LANES], vec![0.0; 3 * SPAN * LANES]);
        kernel_transforms::<f64, W, TILE, SPAN>(&w9, LANES, 1, &mut u, &mut tmp);
        (0..SPAN * SPAN).map(|xi| u[xi * LANES]).collect()
    }

    /// The transforms reproduce a direct 3×3 correlation on one patch of
    /// (m+2)×(m+2): `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` is the m×m valid correlation
    /// of d with g.
    fn one_tile_is_a_correlation<W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>() {
        let g: Vec<f64> = (0..9).map(|i| (i as f64) * 0.5 - 1.0).collect();
        let d: Vec<f64> = (0..SPAN * SPAN)
            .map(|i| ((i * 7) % 11) as f64 - 3.0)
            .collect();
        let u = transform_one::<W, TILE, SPAN>(&g);
        let t = Tiles::new(TILE, SPAN, SPAN, 0, 0);
        let mut buf = Rows::new(&t, t.th, false);
        let ld = t.part_len(1) + LANES;
        let mut v = vec![0.0; SPAN * SPAN * ld];
        input_transform::<f64, W, TILE, SPAN>(&t, 1, &d, 0..1, ld, &mut v, &mut buf);
        let m: Vec<f64> = (0..SPAN * SPAN * ld).map(|i| u[i / ld] * v[i]).collect();
        let mut y = vec![0.0; TILE * TILE];
        output_transform::<f64, W, TILE, SPAN>(&t, 1, &m, 0..1, ld, None, &mut y, &mut buf);
        for i in 0..TILE {
            for j in 0..TILE {
                let want: f64 = (0..3)
                    .flat_map(|a| (0..3).map(move |b| (a, b)))
                    .map(|(a, b)| d[(i + a) * SPAN + j + b] * g[a * 3 + b])
                    .sum();
                let got = y[i * TILE + j];
                assert!((got - want).abs() < 1e-12, "{i} {j}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn one_tile_of_each_variant_is_a_correlation() {
        one_tile_is_a_correlation::<F2, 2, 4>();
        one_tile_is_a_correlation::<F4, 4, 6>();
    }

    /// `Gᵀ · G` is the adjoint of `G · Gᵀ`: ⟨G g Gᵀ, du⟩ = ⟨g, Gᵀ du G⟩.
    fn kernel_adjoint<W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>() {
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let k: Vec<f64> = (0..9).map(|i| ((i * 5) % 7) as f64 - 2.0).collect();
        let du: Vec<f64> = (0..SPAN * SPAN)
            .map(|i| ((i * 3) % 5) as f64 - 1.5)
            .collect();
        let u = transform_one::<W, TILE, SPAN>(&k);
        let mut planes = vec![0.0; SPAN * SPAN * LANES];
        for (xi, &d) in du.iter().enumerate() {
            planes[xi * LANES] = d;
        }
        let (mut back, mut tmp) = (vec![0.0; 9 * LANES], vec![0.0; 3 * SPAN * LANES]);
        kernel_transform_adjoints::<f64, W, TILE, SPAN>(&planes, LANES, 1, &mut back, &mut tmp);
        let back: Vec<f64> = (0..9).map(|e| back[e * LANES]).collect();
        assert!((dot(&u, &du) - dot(&k, &back)).abs() < 1e-12);
    }

    #[test]
    fn kernel_transform_adjoints_are_adjoints() {
        kernel_adjoint::<F2, 2, 4>();
        kernel_adjoint::<F4, 4, 6>();
    }

    /// [`input_transform_adjoint`] is [`input_transform`]'s adjoint,
    /// ⟨V(x), dv⟩ = ⟨x, Vᵀ(dv)⟩, with the tile rows cut into parts of one,
    /// two and the rest (each part after the first adds into the rows it
    /// shares with the one before), on sizes with partial tiles and each
    /// padding from 0 to 2; and it writes every pixel of `dx` (which starts
    /// as NaN). As tight as in `conv2d`: buffers sized for each part alone,
    /// NaN in them and in `dv` past the part's columns, the row stride one
    /// chunk past the widest part.
    fn input_adjoint<T: Float, W: Variant<TILE, SPAN>, const TILE: usize, const SPAN: usize>(
        tol: f64,
    ) {
        let value = |i: usize, salt: usize| {
            T::from_f64(((i * 7919 + salt * 104_729) % 1013) as f64 / 506.0 - 1.0)
        };
        let nan = T::from_f64(f64::NAN);
        for (ih, iw, ph, pw) in [
            (7, 9, 1, 1),
            (12, 5, 0, 2),
            (6, 6, 2, 0),
            (13, 14, 1, 2),
            (3, 3, 0, 0),
        ] {
            let cin = 3;
            let t = Tiles::new(TILE, ih, iw, ph, pw);
            let x: Vec<T> = (0..cin * ih * iw).map(|i| value(i, 1)).collect();
            let cuts = [0, 1.min(t.th), 3.min(t.th), t.th];
            let parts: Vec<Range<usize>> = cuts
                .windows(2)
                .map(|w| w[0]..w[1])
                .filter(|r| !r.is_empty())
                .collect();
            let ld = t.part_len(t.th) + LANES;
            let mut dx = vec![nan; x.len()];
            let mut lhs = 0.0;
            for (k, rows) in parts.iter().enumerate() {
                let n = t.part_len(rows.len());
                let mut buf = Rows::new(&t, rows.len(), true);
                for b in [&mut buf.a, &mut buf.b, &mut buf.c] {
                    b.fill(nan);
                }
                let mut v = vec![nan; SPAN * SPAN * cin * ld];
                input_transform::<T, W, TILE, SPAN>(
                    &t,
                    cin,
                    &x,
                    rows.clone(),
                    ld,
                    &mut v,
                    &mut buf,
                );
                let mut dv = vec![nan; v.len()];
                for (i, d) in dv.iter_mut().enumerate().filter(|(i, _)| i % ld < n) {
                    *d = value(i, k + 2);
                    lhs += (v[i] * *d).to_f64();
                }
                for b in [&mut buf.a, &mut buf.b, &mut buf.c] {
                    b.fill(nan);
                }
                let rows = rows.clone();
                input_transform_adjoint::<T, W, TILE, SPAN>(
                    &t, cin, &dv, rows, ld, &mut dx, &mut buf,
                );
            }
            let what = format!("{ih}x{iw} pad ({ph}, {pw})");
            assert!(
                dx.iter().all(|d| d.to_f64().is_finite()),
                "{what}: a pixel of dx not written"
            );
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| (*a * *b).to_f64()).sum();
            assert!(
                (lhs - rhs).abs() < tol * lhs.abs().max(1.0),
                "{what}: {lhs} vs {rhs}"
            );
        }
    }

    #[test]
    fn input_transform_adjoints_are_adjoints() {
        input_adjoint::<f64, F2, 2, 4>(1e-9);
        input_adjoint::<f64, F4, 4, 6>(1e-9);
        input_adjoint::<f32, F2, 2, 4>(1e-4);
        input_adjoint::<f32, F4, 4, 6>(1e-4);
    }

    /// F(4×4, 3×3) from 64 4×4 output tiles per sample (the bench's `mid`,
    /// 32×32), F(2×2, 3×3) below (`deep`, 16×16).
    #[test]
    fn the_variant_follows_the_tiles_per_sample() {
        let opts = crate::Conv2dOptions::default().padding(1);
        let tile = |n: usize, c: usize, hw: usize| {
            let geom = Conv2dGeometry::new(&[n, c, hw, hw], &[c, c, 3, 3], None, &opts);
            assert!(applies(&geom));
            tile_for(&geom)
        };
        assert_eq!(tile(32, 16, 32), 4);
        assert_eq!(tile(1, 16, 29), 4);
        assert_eq!(tile(16, 64, 16), 2);
        assert_eq!(tile(2, 16, 28), 2);
    }

    /// Blocks cover every tile row of every sample once, at offsets that
    /// stay within the block limits, whole samples or runs of rows.
    #[test]
    fn blocks_cover_the_tiles_once() {
        for tile in [2, 4] {
            for (h, w, cin, cout, samples) in [
                (32, 32, 16, 32, 5),
                (32, 32, 64, 64, 3),
                (7, 300, 256, 256, 2),
            ] {
                let t = Tiles::new(tile, h, w, 1, 1);
                let (most_columns, most_rows) = t.block_limits::<f32>(samples, cin, cout);
                let mut seen = vec![0; samples * t.th];
                for block in t.blocks::<f32>(samples, cin, cout) {
                    let mut next = 0;
                    for p in &block {
                        assert_eq!(p.off, next);
                        assert!(p.rows.len() <= most_rows);
                        next += t.part_len(p.rows.len());
                        p.rows.clone().for_each(|r| seen[p.n * t.th + r] += 1);
                    }
                    assert!(next <= most_columns);
                }
                assert!(seen.iter().all(|&s| s == 1));
            }
        }
    }
}
