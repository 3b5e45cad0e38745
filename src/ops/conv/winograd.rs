//! Winograd's minimal filtering F(2×2, 3×3) for 3×3, stride-1, undilated
//! convolutions with enough channels: 2.25× fewer multiplications than the
//! direct (im2col) product, for the forward pass and both gradients.
//!
//! Each 2×2 block ("tile") of output pixels of one output channel is
//!
//! ```text
//! Y_t = Aᵀ [ Σ_c U[o, c] ⊙ V_t[c] ] A,    U[o, c] = G g[o, c] Gᵀ (4×4),   V_t[c] = Bᵀ d_t[c] B (4×4)
//! ```
//!
//! where `g[o, c]` is the 3×3 kernel and `d_t[c]` the 4×4 input patch under the
//! tile (zero in the padding). For each of the 16 positions ξ of the 4×4
//! transforms, `M_ξ = U_ξ · V_ξ` is a GEMM `(O × C) · (C × tiles)`: 16 products
//! of depth C instead of one of depth 9·C. The transforms are
//!
//! ```text
//! Bᵀ d:  (d0 − d2,  d1 + d2,  d2 − d1,  d1 − d3)        per column of d, then per row
//! G g:   (g0,  (g0 + g1 + g2)/2,  (g0 − g1 + g2)/2,  g2)
//! Aᵀ m:  (m0 + m1 + m2,  m1 − m2 − m3)
//! ```
//!
//! Gradients:
//!
//! - dX is itself such a conv: dY padded by `2 − padding`, with the kernels
//!   turned 180° and input and output channels swapped;
//! - dW: `∂L/∂U[o, c] = Σ_t (A dY_t[o] Aᵀ) ⊙ V_t[c]` — 16 GEMMs
//!   `(O × tiles) · (tiles × C)` summed over the batch — then
//!   `dW[o, c] = Gᵀ (∂L/∂U[o, c]) G`.
//!
//! The transforms of a row of tiles run on whole rows at once (the input rows
//! split into even and odd columns), so they vectorise; transformed data is
//! laid out `[ξ][channel][tile]`, one GEMM operand per ξ. Per sample, the
//! tiles are processed in blocks of tile rows small enough for the
//! transformed input and output to stay in L2.

use super::im2col::{
    batch_split, block_stride, gemm, input_block, output_block, sum, with_scratch, Grads, MatRef,
};
use super::parallel::{
    backward_jobs, run_backward_jobs, run_jobs, split_by, BackwardJob, Partials,
};
use super::Conv2dGeometry;
use crate::gemm::prepacked::{gemm_prepacked, PackedA};
use crate::simd::multiversion;
use crate::Float;
use std::ops::Range;

/// Channels per group (input and output) below which the direct product wins:
/// the 16 GEMMs have depth C, and a very short depth spends more time storing
/// results than multiplying.
const MIN_CHANNELS: usize = 16;

/// Target size of one block's transformed input and output.
const BLOCK_BYTES: usize = 1 << 20;

/// Whether `conv2d` takes the Winograd path for this geometry: 3×3, stride 1,
/// dilation 1, padding at most 2 (so that dX is also such a conv), and at
/// least [`MIN_CHANNELS`] input and output channels per group.
pub(super) fn applies(geom: &Conv2dGeometry) -> bool {
    let axis_ok = |a: &super::AxisGeometry| {
        a.kernel == 3 && a.stride == 1 && a.dilation == 1 && a.padding <= 2 && a.output >= 2
    };
    axis_ok(&geom.h)
        && axis_ok(&geom.w)
        && geom.in_per_group() >= MIN_CHANNELS
        && geom.out_per_group() >= MIN_CHANNELS
}

/// `G g Gᵀ` of a 3×3 kernel given by `at(i, j)`, row-major 4×4.
fn filter_transform<T: Float>(at: impl Fn(usize, usize) -> T) -> [T; 16] {
    let half = T::from_f64(0.5);
    let g1 = |x: [T; 3]| {
        [
            x[0],
            (x[0] + x[1] + x[2]) * half,
            (x[0] - x[1] + x[2]) * half,
            x[2],
        ]
    };
    // Rows: G applied down each column of g (4×3), then across each row.
    let cols: [[T; 4]; 3] = std::array::from_fn(|j| g1([at(0, j), at(1, j), at(2, j)]));
    let mut u = [T::ZERO; 16];
    for i in 0..4 {
        let row = g1([cols[0][i], cols[1][i], cols[2][i]]);
        u[i * 4..i * 4 + 4].copy_from_slice(&row);
    }
    u
}

/// `Gᵀ du G`: the gradient of a 3×3 kernel from that of its transform.
fn filter_transform_adjoint<T: Float>(du: &[T; 16]) -> [T; 9] {
    let half = T::from_f64(0.5);
    // Gᵀ x for a 4-vector: (x0 + (x1 + x2)/2, (x1 − x2)/2, (x1 + x2)/2 + x3).
    let gt = |x: [T; 4]| {
        [
            x[0] + (x[1] + x[2]) * half,
            (x[1] - x[2]) * half,
            (x[1] + x[2]) * half + x[3],
        ]
    };
    let cols: [[T; 3]; 4] = std::array::from_fn(|j| gt([du[j], du[4 + j], du[8 + j], du[12 + j]]));
    let mut g = [T::ZERO; 9];
    for i in 0..3 {
        let row = gt([cols[0][i], cols[1][i], cols[2][i], cols[3][i]]);
        g[i * 3..i * 3 + 3].copy_from_slice(&row);
    }
    g
}

/// The tiles of one Winograd conv: `th × tw` tiles of 2×2 output pixels over an
/// `oh × ow` output, read from an `ih × iw` input padded by `(ph, pw)`.
#[derive(Clone, Copy, Debug)]
struct Tiles {
    ih: usize,
    iw: usize,
    ph: usize,
    pw: usize,
    oh: usize,
    ow: usize,
    th: usize,
    tw: usize,
}

impl Tiles {
    fn new(ih: usize, iw: usize, ph: usize, pw: usize) -> Self {
        let (oh, ow) = (ih + 2 * ph - 2, iw + 2 * pw - 2);
        Tiles {
            ih,
            iw,
            ph,
            pw,
            oh,
            ow,
            th: oh.div_ceil(2),
            tw: ow.div_ceil(2),
        }
    }

    /// Tile rows per block: the transformed input (`cin` channels) and output
    /// (`cout`) of a block take about [`BLOCK_BYTES`].
    fn blocks<T>(&self, cin: usize, cout: usize) -> impl Iterator<Item = Range<usize>> {
        let row_bytes = 16 * (cin + cout) * self.tw * std::mem::size_of::<T>();
        let max = (BLOCK_BYTES / row_bytes.max(1)).clamp(1, self.th);
        let rows = self.th.div_ceil(self.th.div_ceil(max));
        let th = self.th;
        (0..th).step_by(rows).map(move |r| r..(r + rows).min(th))
    }

    /// Row stride of the transformed data of the largest block.
    fn ld<T>(&self, cin: usize, cout: usize) -> usize {
        let rows = self
            .blocks::<T>(cin, cout)
            .map(|r| r.len())
            .max()
            .unwrap_or(0);
        block_stride::<T>(rows * self.tw)
    }
}

/// Reusable buffers for the transforms of one block of `rows` tile rows.
struct Rows<T> {
    /// Even and odd columns of one padded input row, `tw + 1` each.
    even: Vec<T>,
    odd: Vec<T>,
    /// The row transform of the padded input rows under the block, split by
    /// the parity of the padded row: `re[j][u][q]` (component j of tile column
    /// q of padded row 2u; `ro` for row 2u + 1), `rows + 1` rows of `tw`.
    re: Vec<T>,
    ro: Vec<T>,
    /// Row sums and differences of an output transform, 4 × `nt` each.
    sums: Vec<T>,
    diffs: Vec<T>,
}

impl<T: Float> Rows<T> {
    fn new(tw: usize, rows: usize) -> Self {
        let plane = 4 * (rows + 1) * tw;
        Rows {
            even: vec![T::ZERO; tw + 1],
            odd: vec![T::ZERO; tw + 1],
            re: vec![T::ZERO; plane],
            ro: vec![T::ZERO; plane],
            sums: vec![T::ZERO; 4 * rows * tw],
            diffs: vec![T::ZERO; 4 * rows * tw],
        }
    }
}

/// Splits an input row, padded by `pw` zeros on the left (and as many as
/// needed on the right), into its even and odd columns:
/// `even[q] = row[2q − pw]`, `odd[q] = row[2q + 1 − pw]` (0 outside the row).
#[inline(always)]
fn split_row<T: Float>(line: &[T], pw: usize, even: &mut [T], odd: &mut [T]) {
    let at = |col: usize| {
        col.checked_sub(pw)
            .and_then(|s| line.get(s))
            .copied()
            .unwrap_or(T::ZERO)
    };
    let n = even.len();
    // Interior: the pairs (2q − pw, 2q + 1 − pw) that lie inside the row.
    let lo = pw.div_ceil(2);
    let hi = ((line.len() + pw) / 2).clamp(lo, n);
    for q in (0..lo).chain(hi..n) {
        even[q] = at(2 * q);
        odd[q] = at(2 * q + 1);
    }
    let start = 2 * lo - pw;
    let pairs = line[start..].chunks_exact(2);
    for ((e, o), p) in even[lo..hi].iter_mut().zip(&mut odd[lo..hi]).zip(pairs) {
        *e = p[0];
        *o = p[1];
    }
}

/// Input transform of one block of tile rows: `v[ξ][c][t]` (row stride `ld`,
/// `t` counting the block's tiles) `= (Bᵀ d_t[c] B)[ξ]` for a `cin`-channel input
/// `x` (`[cin, ih, iw]`). Each padded input row is transformed across once
/// (it lies under two tile rows); the transform down the four rows under each
/// tile then runs over the whole block at once.
#[inline(always)]
fn input_transform<T: Float>(
    t: &Tiles,
    cin: usize,
    x: &[T],
    rows: Range<usize>,
    ld: usize,
    v: &mut [T],
    buf: &mut Rows<T>,
) {
    let (tw, nt) = (t.tw, rows.len() * t.tw);
    let urows = rows.len() + 1;
    for c in 0..cin {
        let plane = &x[c * t.ih * t.iw..][..t.ih * t.iw];
        for u in 0..urows {
            for parity in 0..2 {
                let r = (2 * (rows.start + u) + parity) as isize - t.ph as isize;
                if r < 0 || r as usize >= t.ih {
                    buf.even.fill(T::ZERO);
                    buf.odd.fill(T::ZERO);
                } else {
                    let line = &plane[r as usize * t.iw..][..t.iw];
                    split_row(line, t.pw, &mut buf.even, &mut buf.odd);
                }
                // Across (x0..x3 of tile q = even[q], odd[q], even[q + 1],
                // odd[q + 1]): (x0 − x2, x1 + x2, x2 − x1, x1 − x3).
                let dst = if parity == 0 {
                    &mut buf.re
                } else {
                    &mut buf.ro
                };
                let at = |j: usize| (j * urows + u) * tw;
                let [r0, r1, r2, r3] = four_rows_mut(dst, [at(0), at(1), at(2), at(3)], tw);
                let (e, o) = (&buf.even, &buf.odd);
                transform4(
                    [&e[..tw], &o[..tw], &e[1..], &o[1..]],
                    [r0, r1, r2, r3],
                    |[x0, x1, x2, x3]| [x0 - x2, x1 + x2, x2 - x1, x1 - x3],
                );
            }
        }
        // Down: tile row u has padded rows 2u, 2u + 1, 2u + 2, 2u + 3 = re[u],
        // ro[u], re[u + 1], ro[u + 1]; over the whole block at once.
        for j in 0..4 {
            let (re, ro) = (&buf.re[j * urows * tw..], &buf.ro[j * urows * tw..]);
            let at = |i: usize| ((i * 4 + j) * cin + c) * ld;
            let [o0, o1, o2, o3] = four_rows_mut(v, [at(0), at(1), at(2), at(3)], nt);
            transform4(
                [&re[..nt], &ro[..nt], &re[tw..tw + nt], &ro[tw..tw + nt]],
                [o0, o1, o2, o3],
                |[x0, x1, x2, x3]| [x0 - x2, x1 + x2, x2 - x1, x1 - x3],
            );
        }
    }
}

/// `out[·][q] = f(inp[·][q])` elementwise over four rows of equal length:
/// a plain loop over slices, which the compiler vectorises.
#[inline(always)]
fn transform4<T: Float>(inp: [&[T]; 4], out: [&mut [T]; 4], f: impl Fn([T; 4]) -> [T; 4]) {
    let n = out[0].len();
    let [i0, i1, i2, i3] = inp.map(|r| &r[..n]);
    let [o0, o1, o2, o3] = out;
    let (o1, o2, o3) = (&mut o1[..n], &mut o2[..n], &mut o3[..n]);
    for q in 0..n {
        let y = f([i0[q], i1[q], i2[q], i3[q]]);
        o0[q] = y[0];
        o1[q] = y[1];
        o2[q] = y[2];
        o3[q] = y[3];
    }
}

/// Four disjoint `len`-element windows of `v` at the given (increasing) offsets.
fn four_rows_mut<T>(v: &mut [T], at: [usize; 4], len: usize) -> [&mut [T]; 4] {
    let (a, rest) = v[at[0]..].split_at_mut(at[1] - at[0]);
    let (b, rest) = rest.split_at_mut(at[2] - at[1]);
    let (c, d) = rest.split_at_mut(at[3] - at[2]);
    [&mut a[..len], &mut b[..len], &mut c[..len], &mut d[..len]]
}

/// Output transform of one block of tile rows: `y[o]` (`[cout, oh, ow]`) gets
/// `Aᵀ M_t[o] A (+ bias[o])` from `m[ξ][o][t]` (row stride `ld`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn output_transform<T: Float>(
    t: &Tiles,
    cout: usize,
    m: &[T],
    rows: Range<usize>,
    ld: usize,
    bias: Option<&[T]>,
    y: &mut [T],
    buf: &mut Rows<T>,
) {
    let (tw, nt) = (t.tw, rows.len() * t.tw);
    for o in 0..cout {
        let b = bias.map_or(T::ZERO, |b| b[o]);
        let plane = &mut y[o * t.oh * t.ow..][..t.oh * t.ow];
        // Aᵀ down each column j, over the whole block: s_j = m0 + m1 + m2,
        // d_j = m1 − m2 − m3.
        let mrow = |xi: usize| &m[(xi * cout + o) * ld..][..nt];
        for j in 0..4 {
            let (m0, m1, m2, m3) = (mrow(j), mrow(4 + j), mrow(8 + j), mrow(12 + j));
            let s = &mut buf.sums[j * nt..][..nt];
            let d = &mut buf.diffs[j * nt..][..nt];
            for q in 0..nt {
                s[q] = m0[q] + m1[q] + m2[q];
                d[q] = m1[q] - m2[q] - m3[q];
            }
        }
        // Then across, into output rows 2u (from s) and 2u + 1 (from d):
        // pixel 2q = x0 + x1 + x2, pixel 2q + 1 = x1 − x2 − x3.
        for (u, ti) in rows.clone().enumerate() {
            for (r, src) in [&buf.sums, &buf.diffs].into_iter().enumerate() {
                let i = 2 * ti + r;
                if i >= t.oh {
                    break;
                }
                let line = &mut plane[i * t.ow..][..t.ow];
                let x = |j: usize| &src[j * nt + u * tw..][..tw];
                let (x0, x1, x2, x3) = (x(0), x(1), x(2), x(3));
                for ((((pair, &a), &b1), &c), &d) in
                    line.chunks_exact_mut(2).zip(x0).zip(x1).zip(x2).zip(x3)
                {
                    pair[0] = a + b1 + c + b;
                    pair[1] = b1 - c - d + b;
                }
                if t.ow % 2 == 1 {
                    let q = tw - 1;
                    line[t.ow - 1] = x0[q] + x1[q] + x2[q] + b;
                }
            }
        }
    }
}

/// `A dY_t Aᵀ` of one block of tile rows: `w[ξ][o][t]` (row stride `ld`) from a
/// `cout`-channel output gradient `dy` (`[cout, oh, ow]`).
#[inline(always)]
fn grad_transform<T: Float>(
    t: &Tiles,
    cout: usize,
    dy: &[T],
    rows: Range<usize>,
    ld: usize,
    w: &mut [T],
    buf: &mut Rows<T>,
) {
    let (tw, nt) = (t.tw, rows.len() * t.tw);
    let urows = rows.len() + 1;
    for o in 0..cout {
        let plane = &dy[o * t.oh * t.ow..][..t.oh * t.ow];
        // Across each output row of the block: A y = (y0, y0 + y1, y0 − y1, −y1)
        // for the pair of pixels (y0, y1) of each tile (0 past the edge).
        for u in 0..rows.len() {
            for parity in 0..2 {
                let i = 2 * (rows.start + u) + parity;
                let (even, odd) = (&mut buf.even[..tw], &mut buf.odd[..tw]);
                if i >= t.oh {
                    even.fill(T::ZERO);
                    odd.fill(T::ZERO);
                } else {
                    split_row(&plane[i * t.ow..][..t.ow], 0, even, odd);
                }
                let dst = if parity == 0 {
                    &mut buf.re
                } else {
                    &mut buf.ro
                };
                let at = |j: usize| (j * urows + u) * tw;
                let [r0, r1, r2, r3] = four_rows_mut(dst, [at(0), at(1), at(2), at(3)], tw);
                let (e, od) = (&buf.even[..tw], &buf.odd[..tw]);
                transform4([e, od, e, od], [r0, r1, r2, r3], |[y0, y1, _, _]| {
                    [y0, y0 + y1, y0 - y1, -y1]
                });
            }
        }
        // Then down each component j, over the whole block.
        for j in 0..4 {
            let (a, b) = (
                &buf.re[j * urows * tw..][..nt],
                &buf.ro[j * urows * tw..][..nt],
            );
            let at = |i: usize| ((i * 4 + j) * cout + o) * ld;
            let [w0, w1, w2, w3] = four_rows_mut(w, [at(0), at(1), at(2), at(3)], nt);
            transform4([a, b, a, b], [w0, w1, w2, w3], |[y0, y1, _, _]| {
                [y0, y0 + y1, y0 - y1, -y1]
            });
        }
    }
}

/// The 16 transformed kernels of one group, each packed as the `rows × cols`
/// matrix `(i, p) ↦ U_ξ[i, p]`, from `at(ξ, i, p)`; the 16 are packed in
/// parallel when there are many kernels (64×64: ~0.3 ms on one thread).
fn pack_transformed<T: Float>(
    rows: usize,
    cols: usize,
    u: impl Fn(usize, usize, usize) -> T + Sync,
) -> Vec<PackedA<T>> {
    let mut out: Vec<Option<PackedA<T>>> = (0..16).map(|_| None).collect();
    let pack = |(xi, slot): (usize, &mut Option<PackedA<T>>)| {
        *slot = Some(PackedA::new(rows, cols, |i, p| u(xi, i, p)));
    };
    let jobs: Vec<_> = out.iter_mut().enumerate().collect();
    if rows * cols < PAR_KERNELS {
        jobs.into_iter().for_each(pack);
    } else {
        run_jobs(jobs, pack);
    }
    out.into_iter().flatten().collect()
}

/// Kernels per group from which their transforms are computed in parallel.
const PAR_KERNELS: usize = 1024;

multiversion!(fn input_transform_simd<T: Float>(
    t: &Tiles, cin: usize, x: &[T], rows: Range<usize>, ld: usize, v: &mut [T], buf: &mut Rows<T>,
) => input_transform);
multiversion!(fn output_transform_simd<T: Float>(
    t: &Tiles, cout: usize, m: &[T], rows: Range<usize>, ld: usize, bias: Option<&[T]>,
    y: &mut [T], buf: &mut Rows<T>,
) => output_transform);
multiversion!(fn grad_transform_simd<T: Float>(
    t: &Tiles, cout: usize, dy: &[T], rows: Range<usize>, ld: usize, w: &mut [T], buf: &mut Rows<T>,
) => grad_transform);

/// The scratch lengths `(v, m)` of [`conv_one`] for these tiles and channels.
fn conv_scratch<T>(t: &Tiles, cin: usize, cout: usize) -> (usize, usize) {
    let ld = t.ld::<T>(cin, cout);
    (16 * cin * ld, 16 * cout * ld)
}

/// Rows buffers sized for the blocks of `t`.
fn rows_for<T: Float>(t: &Tiles, cin: usize, cout: usize) -> Rows<T> {
    let max_rows = t.blocks::<T>(cin, cout).map(|r| r.len()).max().unwrap_or(0);
    Rows::new(t.tw, max_rows)
}

/// One Winograd conv of one sample and group: `y` (`[cout, oh, ow]`) from `x`
/// (`[cin, ih, iw]`) with the packed transformed kernels `u[ξ]` (`cout × cin`),
/// plus the bias; `v` and `m` are scratch of [`conv_scratch`] lengths.
#[allow(clippy::too_many_arguments)]
fn conv_one<T: Float>(
    t: &Tiles,
    cin: usize,
    cout: usize,
    x: &[T],
    u: &[PackedA<T>],
    bias: Option<&[T]>,
    y: &mut [T],
    v: &mut [T],
    m: &mut [T],
    buf: &mut Rows<T>,
) {
    let ld = t.ld::<T>(cin, cout);
    for rows in t.blocks::<T>(cin, cout) {
        let nt = rows.len() * t.tw;
        input_transform_simd(t, cin, x, rows.clone(), ld, v, buf);
        for (xi, uxi) in u.iter().enumerate() {
            let vx = &v[xi * cin * ld..][..cin * ld];
            let mx = &mut m[xi * cout * ld..][..cout * ld];
            gemm_prepacked(uxi, nt, vx, ld, true, mx, ld);
        }
        output_transform_simd(t, cout, m, rows, ld, bias, y, buf);
    }
}

/// Adds one sample and group's `∂L/∂U_ξ` (`du[ξ]`, `cout × cin`) from its
/// input `x` (`[cin, ih, iw]`) and output gradient `dy` (`[cout, oh, ow]`);
/// `v` and `wd` are scratch of [`conv_scratch`] lengths.
#[allow(clippy::too_many_arguments)]
fn weight_grad_one<T: Float>(
    t: &Tiles,
    cin: usize,
    cout: usize,
    x: &[T],
    dy: &[T],
    du: &mut [T],
    v: &mut [T],
    wd: &mut [T],
    buf: &mut Rows<T>,
) {
    let ld = t.ld::<T>(cin, cout);
    for rows in t.blocks::<T>(cin, cout) {
        let nt = rows.len() * t.tw;
        input_transform_simd(t, cin, x, rows.clone(), ld, v, buf);
        grad_transform_simd(t, cout, dy, rows, ld, wd, buf);
        for xi in 0..16 {
            // dU_ξ (cout × cin) += Wd_ξ (cout × nt) · V_ξᵀ (nt × cin)
            let a = MatRef {
                data: &wd[xi * cout * ld..][..cout * ld],
                rs: ld,
                cs: 1,
            };
            let b = MatRef {
                data: &v[xi * cin * ld..][..cin * ld],
                rs: 1,
                cs: ld,
            };
            let c = &mut du[xi * cout * cin..][..cout * cin];
            gemm(cout, cin, nt, a, b, T::ONE, c, cin);
        }
    }
}

/// The 16 transformed kernels of every group, packed `rows × cols` from
/// `kernel(g, i, p)`, the 3×3 kernel (row-major) that entry `(i, p)` of group
/// `g`'s matrices transforms.
fn transformed_kernels<T: Float>(
    groups: usize,
    rows: usize,
    cols: usize,
    kernel: impl Fn(usize, usize, usize) -> [T; 9] + Sync,
) -> Vec<Vec<PackedA<T>>> {
    (0..groups)
        .map(|g| {
            let mut us = vec![[T::ZERO; 16]; rows * cols];
            let min_len = if rows * cols < PAR_KERNELS {
                usize::MAX
            } else {
                0
            };
            crate::threads::for_each_part(&mut us, min_len, |off, part| {
                for (ip, u) in (off..).zip(part) {
                    let k = kernel(g, ip / cols, ip % cols);
                    *u = filter_transform(|i, j| k[i * 3 + j]);
                }
            });
            pack_transformed(rows, cols, |xi, i, p| us[i * cols + p][xi])
        })
        .collect()
}

/// Forward: `Y = conv2d(X, W) + b` by Winograd F(2×2, 3×3); see [`applies`].
pub(super) fn forward<T: Float>(
    geom: &Conv2dGeometry,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
) -> Vec<T> {
    let (cg, og) = (geom.in_per_group(), geom.out_per_group());
    let t = Tiles::new(geom.h.input, geom.w.input, geom.h.padding, geom.w.padding);
    debug_assert_eq!((t.oh, t.ow), (geom.out_h(), geom.out_w()));
    let u = transformed_kernels(geom.groups, og, cg, |g, o, c| {
        w[(g * og * cg + o * cg + c) * 9..][..9]
            .try_into()
            .expect("3x3 kernel")
    });
    // Every pixel is written by `output_transform`.
    let mut y = crate::buffer::scratch(geom.output_shape().iter().product());
    let ranges = batch_split(geom);
    let jobs: Vec<_> = ranges
        .iter()
        .cloned()
        .zip(split_by(&mut y, &ranges, geom.out_channels * geom.out_hw()))
        .collect();
    let (v_len, m_len) = conv_scratch::<T>(&t, cg, og);
    run_jobs(jobs, |(samples, y)| {
        let mut buf = rows_for(&t, cg, og);
        with_scratch(v_len, |v: &mut [T]| {
            with_scratch(m_len, |m: &mut [T]| {
                for (local, n) in samples.enumerate() {
                    for (g, ug) in u.iter().enumerate() {
                        let xg = &x[input_block(geom, n, g)];
                        let yg = &mut y[output_block(geom, local, g)];
                        let bg = b.map(|b| &b[g * og..(g + 1) * og]);
                        conv_one(&t, cg, og, xg, ug, bg, yg, v, m, &mut buf);
                    }
                }
            })
        })
    });
    y
}

/// Backward by Winograd F(2×2, 3×3), in one pass over the batch (split
/// between threads): dX as a conv of dY (kernels turned 180°, channels
/// swapped, padding `2 − p`); dW from the transformed input and output
/// gradient (`∂L/∂U`, summed per task, then `Gᵀ·dU·G`); db as row sums of dY.
pub(super) fn backward<T: Float>(
    geom: &Conv2dGeometry,
    x: &[T],
    w: &[T],
    dy: &[T],
    need_dx: bool,
    need_dw: bool,
    need_db: bool,
) -> Grads<T> {
    let (cg, og, ohw) = (geom.in_per_group(), geom.out_per_group(), geom.out_hw());
    let ranges = batch_split(geom);
    let tasks = ranges.len();
    // dX[c] = Σ_o conv(dY[o] padded by 2 − p, g[o, c] turned 180°).
    let tx = Tiles::new(
        geom.out_h(),
        geom.out_w(),
        2 - geom.h.padding,
        2 - geom.w.padding,
    );
    debug_assert_eq!((tx.oh, tx.ow), (geom.h.input, geom.w.input));
    let ux = if need_dx {
        transformed_kernels(geom.groups, cg, og, |g, c, o| {
            let k = &w[((g * og + o) * cg + c) * 9..][..9];
            std::array::from_fn(|e| k[8 - e])
        })
    } else {
        Vec::new()
    };
    let tw = Tiles::new(geom.h.input, geom.w.input, geom.h.padding, geom.w.padding);
    let du_len = geom.groups * 16 * og * cg;
    // Every pixel is written by `conv_one`'s output transform.
    let mut dx = need_dx.then(|| crate::buffer::scratch(geom.input_shape().iter().product()));
    // Each chunk clears its own partial dU and db first.
    let mut du_parts = Partials::new(need_dw, tasks, du_len);
    let mut db_parts = Partials::new(need_db, tasks, geom.out_channels);
    {
        let dx_per_sample = geom.in_channels * geom.in_hw();
        let jobs = backward_jobs(
            &ranges,
            dx.as_deref_mut(),
            dx_per_sample,
            &mut du_parts,
            &mut db_parts,
        );
        let (xv, xm) = conv_scratch::<T>(&tx, og, cg);
        let (wv, wm) = conv_scratch::<T>(&tw, cg, og);
        run_backward_jobs(jobs, |job| {
            let BackwardJob {
                samples,
                mut dx,
                dw: mut du,
                mut db,
            } = job;
            let mut bufx = rows_for(&tx, og, cg);
            let mut bufw = rows_for(&tw, cg, og);
            with_scratch(xv.max(wv), |v: &mut [T]| {
                with_scratch(xm.max(wm), |m: &mut [T]| {
                    for (local, n) in samples.enumerate() {
                        for g in 0..geom.groups {
                            let dyg = &dy[output_block(geom, n, g)];
                            if let Some(db) = db.as_deref_mut() {
                                for (o, plane) in dyg.chunks_exact(ohw).enumerate() {
                                    db[g * og + o] += sum(plane);
                                }
                            }
                            if let Some(dx) = dx.as_deref_mut() {
                                let dxg = &mut dx[input_block(geom, local, g)];
                                conv_one(&tx, og, cg, dyg, &ux[g], None, dxg, v, m, &mut bufx);
                            }
                            if let Some(du) = du.as_deref_mut() {
                                let xg = &x[input_block(geom, n, g)];
                                let dug = &mut du[g * 16 * og * cg..][..16 * og * cg];
                                weight_grad_one(&tw, cg, og, xg, dyg, dug, v, m, &mut bufw);
                            }
                        }
                    }
                })
            })
        });
    }
    // The chunks' partial dU, summed in chunk order, ...
    let dw = du_parts.sum().map(|total| {
        // ... then each kernel's 16 entries gathered and transformed back.
        let mut dw = vec![[T::ZERO; 9]; geom.out_channels * cg];
        crate::threads::for_each_part(&mut dw, PAR_KERNELS, |off, part| {
            for (kernel, d) in (off..).zip(part.iter_mut()) {
                let (g, oc) = (kernel / (og * cg), kernel % (og * cg));
                let (o, c) = (oc / cg, oc % cg);
                let dug = &total[g * 16 * og * cg..];
                let acc: [T; 16] = std::array::from_fn(|xi| dug[(xi * og + o) * cg + c]);
                *d = filter_transform_adjoint(&acc);
            }
        });
        // A plain Vec (not a tensor's storage), so nothing recycles it on
        // drop: hand it back to the pool for the next call.
        crate::buffer::recycle(total);
        dw.into_iter().flatten().collect::<Vec<T>>()
    });
    let db = db_parts.sum();
    Grads { dx, dw, db }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transforms reproduce a direct 3×3 correlation on one 4×4 patch:
    /// `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` is the 2×2 valid correlation of d with g.
    #[test]
    fn one_tile_is_a_correlation() {
        let g: Vec<f64> = (0..9).map(|i| (i as f64) * 0.5 - 1.0).collect();
        let d: Vec<f64> = (0..16).map(|i| ((i * 7) % 11) as f64 - 3.0).collect();
        let u = filter_transform(|i, j| g[i * 3 + j]);
        let t = Tiles::new(4, 4, 0, 0);
        let mut buf = Rows::new(t.tw, t.th);
        let ld = 1;
        let mut v = vec![0.0; 16];
        input_transform(&t, 1, &d, 0..1, ld, &mut v, &mut buf);
        let m: Vec<f64> = (0..16).map(|xi| u[xi] * v[xi]).collect();
        let mut y = vec![0.0; 4];
        output_transform(&t, 1, &m, 0..1, ld, None, &mut y, &mut buf);
        for i in 0..2 {
            for j in 0..2 {
                let want: f64 = (0..3)
                    .flat_map(|a| (0..3).map(move |b| (a, b)))
                    .map(|(a, b)| d[(i + a) * 4 + j + b] * g[a * 3 + b])
                    .sum();
                assert!(
                    (y[i * 2 + j] - want).abs() < 1e-12,
                    "{i} {j}: {} vs {want}",
                    y[i * 2 + j]
                );
            }
        }
    }

    /// `Gᵀ · G` is the adjoint of `G · Gᵀ`: ⟨G g Gᵀ, du⟩ = ⟨g, Gᵀ du G⟩.
    #[test]
    fn filter_transform_adjoint_is_the_adjoint() {
        let g: Vec<f64> = (0..9).map(|i| ((i * 5) % 7) as f64 - 2.0).collect();
        let du: [f64; 16] = std::array::from_fn(|i| ((i * 3) % 5) as f64 - 1.5);
        let u = filter_transform(|i, j| g[i * 3 + j]);
        let back = filter_transform_adjoint(&du);
        let lhs: f64 = u.iter().zip(&du).map(|(a, b)| a * b).sum();
        let rhs: f64 = g.iter().zip(&back).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-12);
    }
}
