//! The fast path of `conv2d`: im2col + GEMM.
//!
//! For one sample `n` and one group `g`, the column matrix `cols` has one row
//! per kernel tap `(c, ki, kj)` (`C/G · kh · kw` rows, the group's patch length)
//! and one column per output pixel `(i, j)` (`out_h · out_w` columns):
//!
//! ```text
//! cols[(c·kh + ki)·kw + kj, i·out_w + j] = X[n, g·C/G + c, i·sh + ki·dh − ph, j·sw + kj·dw − pw]   (0 in the padding)
//! ```
//!
//! Seeing the group's weights as the `O/G × C/G·kh·kw` matrix `W_g` (a row
//! block of the OIHW weight, addressed in place by offset and stride) and the
//! group's output channels of sample `n` as the `O/G × out_h·out_w` matrix `Y_ng`
//! (a contiguous block of the NCHW output):
//!
//! ```text
//! forward   Y_ng  = W_g · cols_ng                 (GEMM written straight into the output)
//! dW        dW_g += dY_ng · cols_ngᵀ              (accumulated over the batch by the GEMM's beta)
//! dX        dcols = W_gᵀ · dY_ng,  then col2im: dX[n, g·C/G + c, r, s] += dcols[…] (the adjoint of im2col)
//! ```
//!
//! A pointwise conv (1x1, stride 1, no padding) skips im2col: each sample's
//! group input `[C/G, H·W]` already is its column matrix, and dX is written by
//! the GEMM directly. [`im2col`] and [`col2im`] walk the matrix with the same
//! function ([`for_each_run`]), whose indices come from the geometry. The
//! column buffers are thread-local scratch reused across calls (they grow to
//! the largest conv seen on the thread and are never zero-filled, since
//! im2col writes every entry).

use super::Conv2dGeometry;
use super::parallel::{
    BackwardBuffers, BackwardJob, run_backward_jobs, run_jobs, split_by, split_work,
};
use crate::Float;
use crate::gemm::prepacked::{PackedA, gemm_prepacked, gemm_prepacked_ahead};
use crate::simd::multiversion;
use smallvec::SmallVec;
use std::any::Any;
use std::cell::RefCell;
use std::ops::Range;

thread_local! {
    /// One reusable buffer per element type (`Vec<f32>`, `Vec<f64>`), boxed as `Any`.
    static SCRATCH: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a thread-local buffer of `len` elements with unspecified contents
/// (NaN in debug builds, so that a value read before it is written shows up in
/// the tests). The buffer is taken out of the cache while in use, so nested
/// calls are fine.
pub(super) fn with_scratch<T: Float, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    let cached = SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let i = s.iter().position(|b| b.is::<Vec<T>>())?;
        s.swap_remove(i).downcast::<Vec<T>>().ok()
    });
    let mut buf: Box<Vec<T>> = cached.unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, T::ZERO);
    }
    if cfg!(debug_assertions) {
        buf[..len].fill(T::from_f64(f64::NAN));
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|s| s.borrow_mut().push(buf));
    r
}

/// A strided read-only matrix view: element (i, j) is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(super) struct MatRef<'a, T> {
    pub(super) data: &'a [T],
    pub(super) rs: usize,
    pub(super) cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A row-major matrix with `cols` columns.
    fn rows(data: &'a [T], cols: usize) -> Self {
        MatRef {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose (no copy: the strides swap).
    fn t(self) -> Self {
        MatRef {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// `C (m×n) = A (m×k) · B (k×n) + beta·C`, C row-major with row stride `ldc`.
/// `beta = 0` overwrites C without reading it.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef<T>,
    b: MatRef<T>,
    beta: T,
    c: &mut [T],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if beta == T::ZERO {
            for row in c.chunks_mut(ldc).take(m) {
                row[..n].fill(T::ZERO);
            }
        }
        return;
    }
    T::gemm(
        m,
        n,
        k,
        T::ONE,
        a.data,
        a.rs,
        a.cs,
        b.data,
        b.rs,
        b.cs,
        beta,
        c,
        ldc,
    );
}

/// The input channels of group `g` of sample `n`: `[C/G, H, W]`, contiguous.
pub(super) fn input_block(geom: &Conv2dGeometry, n: usize, g: usize) -> Range<usize> {
    let (cg, hw) = (geom.in_per_group(), geom.in_hw());
    let start = (n * geom.in_channels + g * cg) * hw;
    start..start + cg * hw
}

/// The output channels of group `g` of sample `n`: `[O/G, out_h, out_w]`, contiguous.
pub(super) fn output_block(geom: &Conv2dGeometry, n: usize, g: usize) -> Range<usize> {
    let (og, hw) = (geom.out_per_group(), geom.out_hw());
    let start = (n * geom.out_channels + g * og) * hw;
    start..start + og * hw
}

/// Target size of the column matrix of one block of output rows: the block
/// is built, used by the GEMM and (for dX) scattered back while it is still
/// in the core's L2 cache.
const COLS_BLOCK_BYTES: usize = 512 << 10;

/// The output rows of a sample, cut into near-equal blocks of whole rows
/// whose column matrix (`patch_len × rows·out_w`) takes about
/// [`COLS_BLOCK_BYTES`]. A pointwise conv, which builds no column matrix, takes
/// all rows at once.
fn row_blocks<T>(geom: &Conv2dGeometry) -> impl Iterator<Item = Range<usize>> {
    let oh = geom.out_h();
    let max_rows = if geom.is_pointwise() {
        oh
    } else {
        // `max(1)`: a conv with zero input channels has empty patches.
        let row_bytes = (geom.patch_len() * std::mem::size_of::<T>()).saturating_mul(geom.out_w());
        (COLS_BLOCK_BYTES / row_bytes.max(1)).clamp(1, oh)
    };
    let rows = oh.div_ceil(oh.div_ceil(max_rows));
    (0..oh).step_by(rows).map(move |i| i..(i + rows).min(oh))
}

/// Length of the scratch buffer: the column matrix of the largest row block
/// (none for a pointwise conv).
fn scratch_len<T>(geom: &Conv2dGeometry) -> usize {
    if geom.is_pointwise() {
        return 0;
    }
    let rows = row_blocks::<T>(geom).map(|r| r.len()).max().unwrap_or(0);
    geom.patch_len() * rows * geom.out_w()
}

/// The one walk over the column matrix of output rows `rows` of a (sample,
/// group), shared by [`im2col`] and [`col2im`]. The block has one row per
/// kernel tap and one column per output pixel of those rows; for each of its
/// rows and each output row the walk reports runs: `visit(row, col, len,
/// Some(x))` — entries `col + t` (t < len) of row `row` read the group input
/// at `x + t·stride_w`; `visit(row, col, len, None)` — `len` entries of padding.
#[inline(always)]
fn for_each_run(
    geom: &Conv2dGeometry,
    rows: Range<usize>,
    mut visit: impl FnMut(usize, usize, usize, Option<usize>),
) {
    let ow = geom.out_w();
    let (ih, iw) = (geom.h.input, geom.w.input);
    // Per column tap, once per call: its valid outputs and the first one's
    // input column.
    let taps_w: SmallVec<[_; 8]> = (0..geom.w.kernel)
        .map(|kj| {
            let js = geom.w.valid_outputs(kj);
            let first = geom.w.input_index(js.start, kj);
            (js, first)
        })
        .collect();
    let mut row = 0;
    for c in 0..geom.in_per_group() {
        for ki in 0..geom.h.kernel {
            for (js, first) in taps_w.iter().cloned() {
                for (t, i) in rows.clone().enumerate() {
                    let at = t * ow;
                    match (geom.h.input_index(i, ki), first) {
                        (Some(r), Some(s)) if !js.is_empty() => {
                            if js.start > 0 {
                                visit(row, at, js.start, None);
                            }
                            visit(row, at + js.start, js.len(), Some((c * ih + r) * iw + s));
                            if js.end < ow {
                                visit(row, at + js.end, ow - js.end, None);
                            }
                        }
                        _ => visit(row, at, ow, None),
                    }
                }
                row += 1;
            }
        }
    }
}

/// The phase planes of a conv's input, which turn a strided conv into
/// stride-1 shifts. Input pixel `(u·sh + a, v·sw + b)` is element `(u, v)` of
/// phase plane `(a, b)`, an `hq × wq` plane (zero past the input's edge), and
/// output pixel `(i, j)` at tap `(ki, kj)` reads phase plane
/// `(a, b) = ((ki·dh − ph) mod sh, (kj·dw − pw) mod sw)` at
/// `(i + ⌊(ki·dh − ph)/sh⌋, j + ⌊(kj·dw − pw)/sw⌋)`. When `wq == out_w`,
/// consecutive output rows read consecutive phase rows, so each row of a
/// column block is one slice of a phase plane, up to its edges: where a
/// window hangs over the left or right edge of the input, the slice holds
/// pixels of a neighbouring row, which must read as padding. At stride 1 the
/// input is its own single phase plane ("same" convs: `out_w == in_w`); at
/// stride 2 the planes are built once per sample (a quarter of the input each)
/// and every im2col row becomes one copy instead of a strided gather per
/// output row.
#[derive(Clone, Copy, Debug)]
struct Phases {
    sh: usize,
    sw: usize,
    hq: usize,
    wq: usize,
}

impl Phases {
    /// The phase layout of `geom`, if its column-block rows are plane slices
    /// and the stride is at most the input's size on each axis. (The planes
    /// take `⌈H/sh⌉·sh × ⌈W/sw⌉·sw` elements: under twice the input with
    /// such strides, but in proportion to a larger stride. A larger stride
    /// leaves a single output row or column, or windows over a large padding:
    /// the runs take those.)
    fn of(geom: &Conv2dGeometry) -> Option<Phases> {
        let (sh, sw) = (geom.h.stride, geom.w.stride);
        if sh > geom.h.input.max(1) || sw > geom.w.input.max(1) {
            return None;
        }
        let (hq, wq) = (geom.h.input.div_ceil(sh), geom.w.input.div_ceil(sw));
        (geom.out_w() == wq).then_some(Phases { sh, sw, hq, wq })
    }

    /// Whether the input is its own (single) phase plane.
    fn unit(&self) -> bool {
        self.sh == 1 && self.sw == 1
    }

    /// Elements of one phase plane.
    fn plane(&self) -> usize {
        self.hq * self.wq
    }

    /// Elements of the phase planes of `channels` channels (0 when unit: none are built).
    fn len(&self, channels: usize) -> usize {
        if self.unit() {
            0
        } else {
            channels * self.sh * self.sw * self.plane()
        }
    }

    /// Offset of phase plane `(a, b)` of channel `c`.
    fn offset(&self, c: usize, a: usize, b: usize) -> usize {
        ((c * self.sh + a) * self.sw + b) * self.plane()
    }

    /// Splits a group input `x` (`[C/G, H, W]`) into its phase planes, one
    /// pass over each input row (stride 2 across: even and odd columns at once).
    fn split<T: Float>(&self, geom: &Conv2dGeometry, x: &[T], out: &mut [T]) {
        split_simd(self, geom, x, out)
    }

    /// The adjoint of [`split`](Self::split) for gradients: writes each input
    /// pixel's entry of the phase planes `q` into `dx` (`[C/G, H, W]`).
    fn merge<T: Float>(&self, geom: &Conv2dGeometry, q: &[T], dx: &mut [T]) {
        merge_simd(self, geom, q, dx)
    }
}

multiversion!(fn split_simd<T: Float>(ph: &Phases, geom: &Conv2dGeometry, x: &[T], out: &mut [T]) => split);
multiversion!(fn merge_simd<T: Float>(ph: &Phases, geom: &Conv2dGeometry, q: &[T], dx: &mut [T]) => merge);

/// Pairs per chunk of [`deinterleave`] and [`interleave`]: fixed-length
/// loops, which the compiler turns into vector shuffles.
const PAIRS: usize = 8;

/// `even[t] = src[2t]`, `odd[t] = src[2t + 1]` for `t < even.len()`; `src`
/// holds at least `2·even.len()` values, `odd` at least as many as `even`.
#[inline(always)]
pub(super) fn deinterleave<T: Float>(src: &[T], even: &mut [T], odd: &mut [T]) {
    let n = even.len();
    let (src, odd) = (&src[..2 * n], &mut odd[..n]);
    let (mut e, mut o, mut s) = (
        even.chunks_exact_mut(PAIRS),
        odd.chunks_exact_mut(PAIRS),
        src.chunks_exact(2 * PAIRS),
    );
    for ((e, o), s) in (&mut e).zip(&mut o).zip(&mut s) {
        // Through local arrays, so that nothing can alias.
        let mut x = [T::ZERO; 2 * PAIRS];
        x.copy_from_slice(s);
        let (ev, od): ([T; PAIRS], [T; PAIRS]) = (
            std::array::from_fn(|i| x[2 * i]),
            std::array::from_fn(|i| x[2 * i + 1]),
        );
        e.copy_from_slice(&ev);
        o.copy_from_slice(&od);
    }
    let (e, o, s) = (e.into_remainder(), o.into_remainder(), s.remainder());
    for ((e, o), s) in e.iter_mut().zip(o).zip(s.chunks_exact(2)) {
        (*e, *o) = (s[0], s[1]);
    }
}

/// `dst[2t] = even[t]`, `dst[2t + 1] = odd[t]` for `t < even.len()`; `dst`
/// holds at least `2·even.len()` values, `odd` at least as many as `even`.
#[inline(always)]
fn interleave<T: Float>(even: &[T], odd: &[T], dst: &mut [T]) {
    let n = even.len();
    let (dst, odd) = (&mut dst[..2 * n], &odd[..n]);
    let (mut e, mut o, mut d) = (
        even.chunks_exact(PAIRS),
        odd.chunks_exact(PAIRS),
        dst.chunks_exact_mut(2 * PAIRS),
    );
    for ((e, o), d) in (&mut e).zip(&mut o).zip(&mut d) {
        // Through local arrays, so that nothing can alias.
        let (mut ev, mut od) = ([T::ZERO; PAIRS], [T::ZERO; PAIRS]);
        ev.copy_from_slice(e);
        od.copy_from_slice(o);
        let x: [T; 2 * PAIRS] =
            std::array::from_fn(|i| if i % 2 == 0 { ev[i / 2] } else { od[i / 2] });
        d.copy_from_slice(&x);
    }
    let (e, o, d) = (e.remainder(), o.remainder(), d.into_remainder());
    for ((&e, &o), d) in e.iter().zip(o).zip(d.chunks_exact_mut(2)) {
        (d[0], d[1]) = (e, o);
    }
}

/// [`Phases::split`]'s body.
#[inline(always)]
fn split<T: Float>(ph: &Phases, geom: &Conv2dGeometry, x: &[T], out: &mut [T]) {
    let (ih, iw, wq) = (geom.h.input, geom.w.input, ph.wq);
    for c in 0..geom.in_per_group() {
        for u in 0..ph.hq {
            for a in 0..ph.sh {
                let r = u * ph.sh + a;
                if r >= ih {
                    for b in 0..ph.sw {
                        out[ph.offset(c, a, b) + u * wq..][..wq].fill(T::ZERO);
                    }
                    continue;
                }
                let src = &x[(c * ih + r) * iw..][..iw];
                if ph.sw == 2 {
                    let (e0, o0) = (ph.offset(c, a, 0), ph.offset(c, a, 1));
                    let (head, tail) = out.split_at_mut(o0);
                    let even = &mut head[e0 + u * wq..][..wq];
                    let odd = &mut tail[u * wq..][..wq];
                    let done = iw / 2;
                    deinterleave(src, &mut even[..done], &mut odd[..done]);
                    if iw % 2 == 1 {
                        even[done] = src[iw - 1];
                        even[done + 1..].fill(T::ZERO);
                    } else {
                        even[done..].fill(T::ZERO);
                    }
                    odd[done..].fill(T::ZERO);
                    continue;
                }
                for b in 0..ph.sw {
                    let line = &mut out[ph.offset(c, a, b) + u * wq..][..wq];
                    let src = src.get(b..).unwrap_or(&[]);
                    let n = src.len().div_ceil(ph.sw);
                    line[..n]
                        .iter_mut()
                        .zip(src.iter().step_by(ph.sw))
                        .for_each(|(d, &v)| *d = v);
                    line[n..].fill(T::ZERO);
                }
            }
        }
    }
}

/// [`Phases::merge`]'s body.
#[inline(always)]
fn merge<T: Float>(ph: &Phases, geom: &Conv2dGeometry, q: &[T], dx: &mut [T]) {
    let (ih, iw, wq) = (geom.h.input, geom.w.input, ph.wq);
    for c in 0..geom.in_per_group() {
        for r in 0..ih {
            let (a, u) = (r % ph.sh, r / ph.sh);
            let dst = &mut dx[(c * ih + r) * iw..][..iw];
            if ph.sw == 2 {
                let even = &q[ph.offset(c, a, 0) + u * wq..][..wq];
                let odd = &q[ph.offset(c, a, 1) + u * wq..][..wq];
                let done = iw / 2;
                interleave(&even[..done], &odd[..done], dst);
                if iw % 2 == 1 {
                    dst[iw - 1] = even[done];
                }
                continue;
            }
            for b in 0..ph.sw.min(iw) {
                let src = &q[ph.offset(c, a, b) + u * wq..][..wq];
                dst[b..]
                    .iter_mut()
                    .step_by(ph.sw)
                    .zip(src)
                    .for_each(|(d, &v)| *d = v);
            }
        }
    }
}

/// For a conv whose column-block rows are phase-plane slices ([`Phases`]):
/// calls `visit(row, span, keep, src, js)` for each row (kernel tap) of the
/// column block of output rows `rows`. Entries `span` of the row (the output
/// rows whose tap is not in the top or bottom padding) hold a slice of a
/// phase plane; `keep ⊆ span` is the part inside the plane, whose first entry
/// is element `src` of the phase planes; in every output row of `span`, only
/// columns `js` are genuine, the others must read 0.
#[inline(always)]
fn for_each_slice(
    geom: &Conv2dGeometry,
    ph: Phases,
    rows: Range<usize>,
    mut visit: impl FnMut(usize, Range<usize>, Range<usize>, usize, Range<usize>),
) {
    let (ow, wq, plane) = (geom.out_w(), ph.wq as isize, ph.plane() as isize);
    // What depends on one kernel index only, computed once per call rather
    // than once per channel (each is a few integer divisions).
    let (taps_h, taps_w) = (axis_taps(&geom.h), axis_taps(&geom.w));
    let mut row = 0;
    for c in 0..geom.in_per_group() {
        for (valid, a, di) in taps_h.iter().cloned() {
            let is = valid.start.max(rows.start)..valid.end.min(rows.end);
            for (js, b, dj) in taps_w.iter().cloned() {
                if is.is_empty() {
                    visit(row, 0..0, 0..0, 0, js);
                    row += 1;
                    continue;
                }
                let span = (is.start - rows.start) * ow..(is.end - rows.start) * ow;
                // Plane element of entry `span.start + t`: base + t (output row
                // is.start reads phase row is.start + di, inside the plane; the
                // column shift dj may be negative).
                let base = (is.start as isize + di) * wq + dj;
                let lo = ((-base).max(0) as usize).min(span.len());
                let hi = (plane - base).clamp(lo as isize, span.len() as isize) as usize;
                let keep = span.start + lo..span.start + hi;
                let src = ph.offset(c, a, b) + (base + lo as isize).max(0) as usize;
                visit(row, span, keep, src, js);
                row += 1;
            }
        }
    }
}

/// For each kernel index `k` of one axis: the outputs whose tap reads
/// inside the input, and the tap's phase plane and shift along the axis,
/// `(k·dilation − padding)` modulo and divided (rounding down) by the
/// stride (the phase planes' count along the axis, see [`Phases`]).
fn axis_taps(a: &super::AxisGeometry) -> SmallVec<[(Range<usize>, usize, isize); 8]> {
    let (d, p, s) = (a.dilation as isize, a.padding as isize, a.stride as isize);
    (0..a.kernel)
        .map(|k| {
            let t = k as isize * d - p;
            (
                a.valid_outputs(k),
                t.rem_euclid(s) as usize,
                t.div_euclid(s),
            )
        })
        .collect()
}

/// Zeroes a slice that is usually one or two elements long, without the
/// call into `memset` that `fill` becomes for a length unknown at compile time.
#[inline(always)]
pub(super) fn zero_few<T: Float>(v: &mut [T]) {
    match v {
        [] => {}
        [a] => *a = T::ZERO,
        [a, b] => {
            *a = T::ZERO;
            *b = T::ZERO;
        }
        _ => v.fill(T::ZERO),
    }
}

/// Zeroes, in each output row of `span` (whole rows of `ow` entries), the
/// columns outside `js`.
#[inline(always)]
fn zero_edges<T: Float>(entries: &mut [T], span: Range<usize>, ow: usize, js: &Range<usize>) {
    if js.start == 0 && js.end == ow {
        return;
    }
    for line in entries[span].chunks_exact_mut(ow) {
        zero_few(&mut line[..js.start]);
        zero_few(&mut line[js.end..]);
    }
}

/// `dst[t] = src[t·S]`; `src` holds at least `(dst.len() − 1)·S + 1` elements.
#[inline(always)]
fn gather<T: Copy, const S: usize>(dst: &mut [T], src: &[T]) {
    let n = dst.len();
    let whole = (src.len() / S).min(n);
    for (d, c) in dst[..whole].iter_mut().zip(src.chunks_exact(S)) {
        *d = c[0];
    }
    for (t, d) in dst.iter_mut().enumerate().skip(whole) {
        *d = src[t * S];
    }
}

/// `dst[t·S] += src[t]`; `dst` holds at least `(src.len() − 1)·S + 1` elements.
#[inline(always)]
fn scatter_add<T: Float, const S: usize>(dst: &mut [T], src: &[T]) {
    let n = src.len();
    let whole = (dst.len() / S).min(n);
    for (c, &v) in dst.chunks_exact_mut(S).zip(&src[..whole]) {
        c[0] += v;
    }
    for (t, &v) in src.iter().enumerate().skip(whole) {
        dst[t * S] += v;
    }
}

/// Fills the first `rows.len()·out_w` columns of the `patch_len` rows of
/// `cols` (row stride `ld`) with the column matrix of output rows `rows` of a
/// group input: `x` is the group input (`[C/G, H, W]`), or its phase planes
/// when [`Phases::of`] has a layout that is not the unit one (see [`source`]).
fn im2col<T: Float>(geom: &Conv2dGeometry, x: &[T], rows: Range<usize>, ld: usize, cols: &mut [T]) {
    let nc = rows.len() * geom.out_w();
    if let Some(ph) = Phases::of(geom) {
        let ow = geom.out_w();
        for_each_slice(geom, ph, rows, |row, span, keep, src, js| {
            let dst = &mut cols[row * ld..][..nc];
            if keep.is_empty() {
                return dst.fill(T::ZERO);
            }
            dst[..keep.start].fill(T::ZERO);
            dst[keep.clone()].copy_from_slice(&x[src..src + keep.len()]);
            dst[keep.end..].fill(T::ZERO);
            zero_edges(dst, span, ow, &js);
        });
        return;
    }
    let sw = geom.w.stride;
    for_each_run(geom, rows, |row, col, len, src| {
        let dst = &mut cols[row * ld + col..][..len];
        match src {
            Some(s) => {
                let src = &x[s..=s + (len - 1) * sw];
                match sw {
                    1 => dst.copy_from_slice(src),
                    2 => gather::<T, 2>(dst, src),
                    _ => {
                        for (d, &v) in dst.iter_mut().zip(src.iter().step_by(sw)) {
                            *d = v;
                        }
                    }
                }
            }
            None => dst.fill(T::ZERO),
        }
    });
}

/// The adjoint of [`im2col`]: adds each entry of `cols` (row stride `ld`) into
/// the input pixel it was read from, in `dx` (`[C/G, H, W]`), or in its phase
/// planes when [`Phases::of`] has a layout that is not the unit one (merged
/// into the input gradient by [`Phases::merge`] after the last block).
/// `cols` is scratch: the slice walk zeroes its entries that read padding.
fn col2im<T: Float>(
    geom: &Conv2dGeometry,
    cols: &mut [T],
    rows: Range<usize>,
    ld: usize,
    dx: &mut [T],
) {
    let nc = rows.len() * geom.out_w();
    if let Some(ph) = Phases::of(geom) {
        let ow = geom.out_w();
        for_each_slice(geom, ph, rows, |row, span, keep, dst, js| {
            if keep.is_empty() {
                return;
            }
            let src = &mut cols[row * ld..][..nc];
            zero_edges(src, span, ow, &js);
            add_into(&mut dx[dst..dst + keep.len()], &src[keep]);
        });
        return;
    }
    let sw = geom.w.stride;
    for_each_run(geom, rows, |row, col, len, dst| {
        if let Some(d) = dst {
            let src = &cols[row * ld + col..][..len];
            let dst = &mut dx[d..=d + (len - 1) * sw];
            match sw {
                1 => add_into(dst, src),
                2 => scatter_add::<T, 2>(dst, src),
                _ => {
                    for (d, &v) in dst.iter_mut().step_by(sw).zip(src) {
                        *d += v;
                    }
                }
            }
        }
    });
}

/// `dst[t] += src[t]`, compiled with AVX2 where the CPU has it (col2im's
/// additions: rows of the column matrix into the input gradient).
fn add_into<T: Float>(dst: &mut [T], src: &[T]) {
    add_into_simd(dst, src)
}

multiversion!(fn add_into_simd<T: Float>(dst: &mut [T], src: &[T]) => add_into_body);

/// [`add_into`]'s body.
#[inline(always)]
fn add_into_body<T: Float>(dst: &mut [T], src: &[T]) {
    dst.iter_mut().zip(src).for_each(|(d, &v)| *d += v);
}

/// `Σ v`, with independent partial sums so the loop vectorises (a single
/// running sum is one long chain of dependent additions).
pub(super) fn sum<T: Float>(v: &[T]) -> T {
    const L: usize = 16;
    let mut acc = [T::ZERO; L];
    let mut chunks = v.chunks_exact(L);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    let tail = chunks.remainder().iter().fold(T::ZERO, |a, &x| a + x);
    let mut width = L;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            let upper = acc[i + width];
            acc[i] += upper;
        }
    }
    acc[0] + tail
}

/// Elements of the phase planes of a group input (0 if none are built).
fn phases_len(geom: &Conv2dGeometry) -> usize {
    Phases::of(geom).map_or(0, |ph| ph.len(geom.in_per_group()))
}

/// What im2col reads for a group input `x`: its phase planes (built into
/// `planes`) for a strided conv with a phase layout, else `x` itself.
fn source<'a, T: Float>(geom: &Conv2dGeometry, x: &'a [T], planes: &'a mut [T]) -> &'a [T] {
    match Phases::of(geom) {
        Some(ph) if !ph.unit() => {
            let planes = &mut planes[..ph.len(geom.in_per_group())];
            ph.split(geom, x, planes);
            planes
        }
        _ => x,
    }
}

/// The column matrix of output rows `rows` of a group input, as a row-major
/// matrix view: the input itself for a pointwise conv, else im2col into `scratch`.
fn columns<'a, T: Float>(
    geom: &Conv2dGeometry,
    x: &'a [T],
    rows: Range<usize>,
    scratch: &'a mut [T],
) -> MatRef<'a, T> {
    if geom.is_pointwise() {
        MatRef {
            data: &x[rows.start * geom.out_w()..],
            rs: geom.out_hw(),
            cs: 1,
        }
    } else {
        let width = rows.len() * geom.out_w();
        let cols = &mut scratch[..geom.patch_len() * width];
        im2col(geom, x, rows, width, cols);
        MatRef::rows(cols, width)
    }
}

// ---------------------------------------------------------------------------
// The passes
// ---------------------------------------------------------------------------

/// The batch split between threads, unless the whole conv is too small to
/// be worth waking a second thread (then its GEMMs may still split).
pub(super) fn batch_split(geom: &Conv2dGeometry) -> Vec<Range<usize>> {
    let flops_per_sample = [geom.out_channels, geom.out_hw(), geom.patch_len()]
        .iter()
        .fold(2usize, |acc, &d| acc.saturating_mul(d));
    split_work(geom.batch, flops_per_sample, 1 << 20)
}

/// Elements per cache line.
fn line_len<T>() -> usize {
    (64 / std::mem::size_of::<T>()).max(1)
}

/// Row stride of a column block `width` pixels wide: whole cache lines, an
/// odd number of them, so the micro-kernel's walk down a block of columns
/// spreads over every set of the L1 cache instead of a few.
pub(super) fn block_stride<T>(width: usize) -> usize {
    let lines = width.div_ceil(line_len::<T>());
    (lines | 1) * line_len::<T>()
}

/// The group input read after that of group `g` of sample `n` by a task
/// that runs `samples` (empty after its last).
pub(super) fn next_input<'a, T>(
    geom: &Conv2dGeometry,
    x: &'a [T],
    samples: &Range<usize>,
    n: usize,
    g: usize,
) -> &'a [T] {
    if g + 1 < geom.groups {
        &x[input_block(geom, n, g + 1)]
    } else if n + 1 < samples.end {
        &x[input_block(geom, n + 1, 0)]
    } else {
        &[]
    }
}

/// Forward: `Y_ng = W_g · cols_ng + b` for every sample and group, by blocks
/// of output rows. Each group's weights are packed once for the whole batch;
/// the column block is read by the micro-kernel in place (no second copy).
/// The bias is an extra column of the packed weights, against a row of ones
/// under the column block, so the GEMM writes the finished output. While the
/// last block of a group input is multiplied, the next group input (the next
/// read from memory) is prefetched.
pub(super) fn forward<T: Float>(
    geom: &Conv2dGeometry,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
) -> Vec<T> {
    forward_and_weight_grad(geom, x, w, b, None).0
}

/// [`forward`], and with `g` (an output gradient, NCHW of the output shape)
/// also the weight gradient `dW = Σ_n G_n · cols(X_n)ᵀ` from the same column
/// blocks, each built once for both products. That is the backward of
/// `conv_transpose2d`, whose dX is conv2d's forward of dY and whose dW is
/// conv2d's weight gradient with input dY (so both read the columns of dY).
/// Returns `(Y, dW)`, dW only with `g`.
pub(super) fn forward_and_weight_grad<T: Float>(
    geom: &Conv2dGeometry,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    g: Option<&[T]>,
) -> (Vec<T>, Option<Vec<T>>) {
    let (og, ckk, ohw, ow) = (
        geom.out_per_group(),
        geom.patch_len(),
        geom.out_hw(),
        geom.out_w(),
    );
    let pointwise = geom.is_pointwise();
    // With im2col the bias rides along as a row of ones; a pointwise conv reads
    // its input in place and adds the bias afterwards.
    let fused_bias = if pointwise { None } else { b };
    let depth = ckk + fused_bias.is_some() as usize;
    let packed: Vec<PackedA<T>> = (0..geom.groups)
        .map(|g| {
            PackedA::new(og, depth, |o, p| match fused_bias {
                Some(b) if p == ckk => b[g * og + o],
                _ => w[(g * og + o) * ckk + p],
            })
        })
        .collect();
    let max_rows = row_blocks::<T>(geom).map(|r| r.len()).max().unwrap_or(0);
    let stride = block_stride::<T>(max_rows * ow);
    let scratch_len = if pointwise { 0 } else { depth * stride };
    let ranges = batch_split(geom);
    // Each chunk's own partial dW (with `g`), summed in chunk order at the end.
    let mut out = BackwardBuffers::new(
        geom,
        ranges.len(),
        [false, g.is_some(), false],
        og * geom.groups * ckk,
    );
    // Overwritten block by block (the GEMMs run with beta = 0).
    let mut y = crate::buffer::scratch(geom.output_shape().iter().product());
    {
        let chunks = split_by(&mut y, &ranges, geom.out_channels * ohw);
        let jobs: Vec<_> = out.jobs(geom, &ranges).into_iter().zip(chunks).collect();
        run_jobs(jobs, |(job, y)| {
            let BackwardJob {
                samples, mut dw, ..
            } = job;
            if let Some(dw) = dw.as_deref_mut()
                && (samples.is_empty() || ohw == 0)
            {
                // No product writes this chunk's partial sum.
                dw.fill(T::ZERO);
            }
            with_scratch(scratch_len, |scratch: &mut [T]| {
                with_scratch(phases_len(geom), |planes: &mut [T]| {
                    for (local, n) in samples.clone().enumerate() {
                        for (gr, wg) in packed.iter().enumerate() {
                            let xg = source(geom, &x[input_block(geom, n, gr)], planes);
                            let yg = &mut y[output_block(geom, local, gr)];
                            for rows in row_blocks::<T>(geom) {
                                let (j0, nc) = (rows.start * ow, rows.len() * ow);
                                let cols = if pointwise {
                                    gemm_prepacked(
                                        wg,
                                        nc,
                                        &xg[j0..],
                                        ohw,
                                        true,
                                        &mut yg[j0..],
                                        ohw,
                                    );
                                    if let Some(b) = b {
                                        for (o, plane) in yg.chunks_exact_mut(ohw).enumerate() {
                                            let bias = b[gr * og + o];
                                            plane[j0..j0 + nc].iter_mut().for_each(|v| *v += bias);
                                        }
                                    }
                                    MatRef {
                                        data: &xg[j0..],
                                        rs: ohw,
                                        cs: 1,
                                    }
                                } else {
                                    let ld = block_stride::<T>(nc);
                                    let cols = &mut scratch[..depth * ld];
                                    // The last block's GEMM also brings the next
                                    // group input this task reads into cache.
                                    let ahead = match rows.end == geom.out_h() {
                                        true => next_input(geom, x, &samples, n, gr),
                                        false => &[],
                                    };
                                    im2col(geom, xg, rows, ld, cols);
                                    if fused_bias.is_some() {
                                        cols[ckk * ld..][..nc].fill(T::ONE);
                                    }
                                    let yb = &mut yg[j0..];
                                    gemm_prepacked_ahead(wg, nc, cols, ld, true, yb, ohw, ahead);
                                    MatRef::rows(cols, ld)
                                };
                                let (Some(g), Some(dw)) = (g, dw.as_deref_mut()) else {
                                    continue;
                                };
                                // The first product of the chunk writes its partial dW.
                                let beta = if local == 0 && j0 == 0 {
                                    T::ZERO
                                } else {
                                    T::ONE
                                };
                                let gb = MatRef {
                                    data: &g[output_block(geom, n, gr)][j0..],
                                    rs: ohw,
                                    cs: 1,
                                };
                                let dwg = &mut dw[gr * og * ckk..][..og * ckk];
                                gemm(og, ckk, nc, gb, cols.t(), beta, dwg, ckk);
                            }
                        }
                    }
                })
            })
        });
    }
    let dw = g.map(|_| out.dw.sum().expect("the weight gradient was asked for"));
    (y, dw)
}

/// The gradients of one conv2d call, each computed only if asked for.
pub(crate) struct Grads<T> {
    /// ∂L/∂X (NCHW).
    pub dx: Option<Vec<T>>,
    /// ∂L/∂W (OIHW).
    pub dw: Option<Vec<T>>,
    /// ∂L/∂b (`[O]`).
    pub db: Option<Vec<T>>,
}

/// Backward, in one pass over the batch (split between threads):
///
/// - `db[o] = Σ dY[n, o, ·]`, summed per sample while dY_n is in cache;
/// - `dW_g = Σ_n dY_ng · cols_ngᵀ`, by blocks of output rows (the column matrix
///   is rebuilt, not stored by the forward pass); each chunk sums its samples
///   into its own buffer, and the buffers are added in chunk order at the end;
/// - `dcols = W_gᵀ · dY_ng` by blocks, scattered into dX by col2im while in
///   cache (written directly by the GEMM for a pointwise conv).
///
/// `need` is whether dX, dW and db are wanted.
pub(super) fn backward<T: Float>(
    geom: &Conv2dGeometry,
    x: &[T],
    w: &[T],
    dy: &[T],
    need: [bool; 3],
) -> Grads<T> {
    let [need_dx, _, _] = need;
    let (og, ckk, ohw, ow) = (
        geom.out_per_group(),
        geom.patch_len(),
        geom.out_hw(),
        geom.out_w(),
    );
    // Each group's Wᵀ, packed once for the whole batch.
    let packed_wt: Vec<PackedA<T>> = if need_dx {
        (0..geom.groups)
            .map(|g| PackedA::new(ckk, og, |p, o| w[(g * og + o) * ckk + p]))
            .collect()
    } else {
        Vec::new()
    };
    let ranges = batch_split(geom);
    // Every block of dX is cleared (or overwritten) by the task that owns it.
    let mut out = BackwardBuffers::new(geom, ranges.len(), need, geom.out_channels * ckk);
    {
        // The first GEMM of a chunk (beta = 0) writes its partial dW.
        run_backward_jobs(out.jobs(geom, &ranges), geom.out_hw() > 0, |job| {
            let BackwardJob {
                samples,
                mut dx,
                mut dw,
                mut db,
            } = job;
            with_scratch(scratch_len::<T>(geom), |scratch: &mut [T]| {
                with_scratch(phases_len(geom), |planes: &mut [T]| {
                    for (local, n) in samples.enumerate() {
                        for g in 0..geom.groups {
                            let dyg = &dy[output_block(geom, n, g)];
                            if let Some(db) = db.as_deref_mut() {
                                for (o, plane) in dyg.chunks_exact(ohw).enumerate() {
                                    db[g * og + o] += sum(plane);
                                }
                            }
                            if let Some(dw) = dw.as_deref_mut() {
                                let xg = source(geom, &x[input_block(geom, n, g)], planes);
                                let dwg = &mut dw[g * og * ckk..][..og * ckk];
                                for rows in row_blocks::<T>(geom) {
                                    let (j0, nc) = (rows.start * ow, rows.len() * ow);
                                    let beta = if local == 0 && j0 == 0 {
                                        T::ZERO
                                    } else {
                                        T::ONE
                                    };
                                    let cols = columns(geom, xg, rows, scratch);
                                    let dyb = MatRef {
                                        data: &dyg[j0..],
                                        rs: ohw,
                                        cs: 1,
                                    };
                                    gemm(og, ckk, nc, dyb, cols.t(), beta, dwg, ckk);
                                }
                            }
                            if let (Some(dx), Some(wt)) = (dx.as_deref_mut(), packed_wt.get(g)) {
                                let dxg = &mut dx[input_block(geom, local, g)];
                                // A strided conv with a phase layout gathers dX in phase planes.
                                let phased = Phases::of(geom).filter(|ph| !ph.unit());
                                let acc = match phased {
                                    Some(ph) => {
                                        let q = &mut planes[..ph.len(geom.in_per_group())];
                                        q.fill(T::ZERO);
                                        q
                                    }
                                    None => {
                                        // col2im adds into dX (a scratch buffer): clear this
                                        // block here, on this task's thread, just before use.
                                        dxg.fill(T::ZERO);
                                        &mut *dxg
                                    }
                                };
                                for rows in row_blocks::<T>(geom) {
                                    let (j0, nc) = (rows.start * ow, rows.len() * ow);
                                    let dyb = &dyg[j0..];
                                    if geom.is_pointwise() {
                                        gemm_prepacked(wt, nc, dyb, ohw, true, &mut acc[j0..], ohw);
                                    } else {
                                        let dcols = &mut scratch[..ckk * nc];
                                        gemm_prepacked(wt, nc, dyb, ohw, true, dcols, nc);
                                        col2im(geom, dcols, rows, nc, acc);
                                    }
                                }
                                if let Some(ph) = phased {
                                    ph.merge(geom, &planes[..ph.len(geom.in_per_group())], dxg);
                                }
                            }
                        }
                    }
                })
            })
        });
    }
    let (dw, db) = (out.dw.sum(), out.db.sum());
    Grads { dx: out.dx, dw, db }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Conv2dOptions;

    /// col2im is the adjoint of im2col: ⟨im2col(x), c⟩ = ⟨x, col2im(c)⟩.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        let opts = Conv2dOptions::default()
            .stride((2, 3))
            .padding((1, 2))
            .dilation((2, 1));
        let geom = Conv2dGeometry::new(&[1, 2, 7, 8], &[1, 2, 3, 2], None, &opts);
        let x: Vec<f64> = (0..2 * 7 * 8)
            .map(|i| ((i * 37) % 11) as f64 - 5.0)
            .collect();
        let len = geom.patch_len() * geom.out_hw();
        let all = 0..geom.out_h();
        let c: Vec<f64> = (0..len).map(|i| ((i * 13) % 7) as f64 - 3.0).collect();
        let mut cols = vec![f64::NAN; len]; // im2col must overwrite everything
        im2col(&geom, &x, all.clone(), geom.out_hw(), &mut cols);
        let mut back = vec![0.0; x.len()];
        col2im(&geom, &mut c.clone(), all, geom.out_hw(), &mut back);
        let lhs: f64 = cols.iter().zip(&c).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
        assert_eq!(lhs, rhs);
    }

    /// im2col of every block of output rows (both walks: runs, and the plane
    /// slices of "same" and strided convs with a phase layout) against the
    /// definition, and col2im against im2col by the adjoint identity, over many
    /// small geometries.
    #[test]
    fn blocks_match_the_definition() {
        let (mut unit, mut phased) = (0, 0);
        for (h, w) in [(5, 5), (7, 4), (1, 6), (6, 1), (8, 8), (7, 9)] {
            for k in 1..4 {
                for (sh, sw) in [(1, 1), (2, 1), (1, 2), (2, 2), (3, 2), (2, 3)] {
                    for pad in 0..3 {
                        for dil in 1..3 {
                            let opts = Conv2dOptions::default()
                                .stride((sh, sw))
                                .padding(pad)
                                .dilation((1, dil));
                            let Ok(geom) =
                                Conv2dGeometry::try_new(&[1, 2, h, w], &[1, 2, k, k], None, &opts)
                            else {
                                continue;
                            };
                            match Phases::of(&geom) {
                                Some(ph) if ph.unit() => unit += 1,
                                Some(_) => phased += 1,
                                None => {}
                            }
                            check_blocks(&geom);
                        }
                    }
                }
            }
        }
        assert!(unit > 10 && phased > 10, "{unit} {phased}");
    }

    fn check_blocks(geom: &Conv2dGeometry) {
        let x: Vec<f64> = (0..geom.in_per_group() * geom.in_hw())
            .map(|i| i as f64 + 1.0)
            .collect();
        let (ow, ckk) = (geom.out_w(), geom.patch_len());
        let mut planes = vec![f64::NAN; phases_len(geom)];
        let src = source(geom, &x, &mut planes).to_vec();
        for bh in 1..=geom.out_h() {
            for i0 in (0..geom.out_h()).step_by(bh) {
                let rows = i0..(i0 + bh).min(geom.out_h());
                let nc = rows.len() * ow;
                let ld = nc + 3;
                let mut cols = vec![f64::NAN; ckk * ld];
                im2col(geom, &src, rows.clone(), ld, &mut cols);
                let mut row = 0;
                for c in 0..geom.in_per_group() {
                    for ki in 0..geom.h.kernel {
                        for kj in 0..geom.w.kernel {
                            for (t, i) in rows.clone().enumerate() {
                                for j in 0..ow {
                                    let want =
                                        geom.input_pixel(i, j, ki, kj).map_or(0.0, |(r, s)| {
                                            x[(c * geom.h.input + r) * geom.w.input + s]
                                        });
                                    assert_eq!(
                                        cols[row * ld + t * ow + j],
                                        want,
                                        "{geom:?} rows {rows:?}"
                                    );
                                }
                            }
                            row += 1;
                        }
                    }
                }
                // ⟨im2col(x), d⟩ = ⟨x, col2im(d)⟩ with integer values: exact.
                let d: Vec<f64> = (0..ckk * ld).map(|i| ((i * 7) % 5) as f64 - 2.0).collect();
                let mut back = vec![0.0; x.len()];
                match Phases::of(geom).filter(|ph| !ph.unit()) {
                    Some(ph) => {
                        let mut q = vec![0.0; ph.len(geom.in_per_group())];
                        col2im(geom, &mut d.clone(), rows.clone(), ld, &mut q);
                        ph.merge(geom, &q, &mut back);
                    }
                    None => col2im(geom, &mut d.clone(), rows.clone(), ld, &mut back),
                }
                let lhs: f64 = (0..ckk)
                    .flat_map(|r| (0..nc).map(move |j| r * ld + j))
                    .map(|e| cols[e] * d[e])
                    .sum();
                let rhs: f64 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
                assert_eq!(lhs, rhs, "{geom:?} rows {rows:?}");
            }
        }
    }

    #[test]
    fn scratch_is_reused_and_nests() {
        let first = with_scratch::<f32, _>(10, |a| a.as_ptr() as usize);
        // The same buffer comes back (no new allocation) for a smaller or equal size.
        assert_eq!(with_scratch::<f32, _>(8, |a| a.as_ptr() as usize), first);
        // A nested call gets its own buffer; f64 has its own cache slot.
        with_scratch::<f32, _>(10, |a| {
            let outer = a.as_ptr() as usize;
            with_scratch::<f32, _>(5, |b| assert_ne!(b.as_ptr() as usize, outer));
        });
        with_scratch::<f64, _>(3, |a| assert_eq!(a.len(), 3));
    }
}
