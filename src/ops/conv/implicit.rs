//! conv2d's forward pass as an implicit GEMM: the product `Y = W · cols(X)`
//! without the column matrix.
//!
//! Each sample's group input is written once into zero-padded phase planes:
//! padded pixel `(u·sh + a, v·sw + b)` is element `(u, v)` of plane `(a, b)`
//! (`hq × wq`; at stride 1 the single plane is the padded input). Output
//! pixel `(i, j)` at tap `(ki, kj)` reads padded pixel `(i·sh + ki·dh,
//! j·sw + kj·dw)`, which is element `(i + ⌊ki·dh/sh⌋, j + ⌊kj·dw/sw⌋)` of plane
//! `((ki·dh) mod sh, (kj·dw) mod sw)`. So the column matrix's row for tap
//! `(c, ki, kj)` is the planes read from one offset on, and a run of
//! consecutive output pixels of one output row reads consecutive plane
//! elements: entry `(c, ki, kj)` of output pixel `(i, j)` is
//! `planes[off(c, ki, kj) + i·wq + j]`. The micro-kernel
//! ([`ImplicitGemm`]) reads those entries where they lie, a run of pixels of
//! an output row at a time (16 with AVX-512, 8 with AVX2), instead of
//! copying them into a column matrix first.
//! Padding reads the planes' zeros, which are multiplied like any pixel, as
//! in the im2col product (a NaN weight over the padding gives NaN).
//!
//! It runs for `f32` where the CPU has AVX-512F or AVX2 + FMA (see
//! [`applies`]); the output channels are the kernel's rows, 8 at a time
//! (4 with AVX2), and the last, partial panel takes a tile of fewer rows
//! (and with AVX-512 more runs). The same
//! products compute the input gradient — the transposed conv's forward — by
//! phase of the input ([`transposed`]), and with AVX-512 the weight
//! gradient reads the padded input in place too ([`weight_grad`]). im2col +
//! GEMM remains the path for everything else.

use super::Conv2dGeometry;
use super::im2col::{batch_split, input_block, next_input, output_block, with_scratch};
use super::parallel::{BackwardBuffers, run_backward_jobs, run_jobs, split_by};
use crate::Float;
use crate::gemm::implicit::{ImplicitGemm, MAX_TAPS, PixelRun, TapGroup, Vectorized};
use crate::gemm::prepacked::{cast, cast_mut};
use std::any::TypeId;

/// The padded phase planes of one group input.
#[derive(Clone, Copy, Debug)]
struct Planes {
    sh: usize,
    sw: usize,
    hq: usize,
    wq: usize,
}

impl Planes {
    fn of(geom: &Conv2dGeometry) -> Self {
        let (sh, sw) = (geom.h.stride, geom.w.stride);
        let hp = geom.h.input + 2 * geom.h.padding;
        let wp = geom.w.input + 2 * geom.w.padding;
        Planes {
            sh,
            sw,
            hq: hp.div_ceil(sh),
            wq: wp.div_ceil(sw),
        }
    }

    /// Elements of one plane.
    fn plane(&self) -> usize {
        self.hq * self.wq
    }

    /// Elements of the planes of `channels` channels.
    fn len(&self, channels: usize) -> usize {
        channels * self.sh * self.sw * self.plane()
    }

    /// Offset of plane `(a, b)` of channel `c`.
    fn offset(&self, c: usize, a: usize, b: usize) -> usize {
        ((c * self.sh + a) * self.sw + b) * self.plane()
    }

    /// Offset of each column-matrix row (tap `(c, ki, kj)`, in the weight's
    /// order) in the planes.
    fn offsets(&self, geom: &Conv2dGeometry) -> Vec<usize> {
        let (kh, kw) = (geom.h.kernel, geom.w.kernel);
        let (dh, dw) = (geom.h.dilation, geom.w.dilation);
        let mut offs = Vec::with_capacity(geom.patch_len());
        for c in 0..geom.in_per_group() {
            for ki in 0..kh {
                for kj in 0..kw {
                    let (ti, tj) = (ki * dh, kj * dw);
                    let plane = self.offset(c, ti % self.sh, tj % self.sw);
                    offs.push(plane + (ti / self.sh) * self.wq + tj / self.sw);
                }
            }
        }
        offs
    }

    /// The output pixels in runs of up to `len` along each output row.
    fn runs(&self, geom: &Conv2dGeometry, len: usize) -> Vec<PixelRun> {
        let (oh, ow) = (geom.out_h(), geom.out_w());
        (0..oh)
            .flat_map(|i| {
                (0..ow).step_by(len).map(move |j| PixelRun {
                    b: i * self.wq + j,
                    c: i * ow + j,
                    lanes: len.min(ow - j),
                })
            })
            .collect()
    }
}

/// Work that writes group input `x` (`[C/G, H, W]`) into its places in the
/// planes `out`; it runs through [`ImplicitGemm::vectorized`], compiled
/// with the kernel's instruction set. It writes the input's elements only:
/// the padding lies at the same places for every sample, so the caller
/// zeroes the planes once ([`zeroed_planes`]) and they stay zero there.
/// Input column `s` is padded column `s + pw`: phase `(s + pw) mod sw`,
/// element `(s + pw) / sw` of its plane row. At stride 2 a row's even
/// columns go to one plane and its odd ones to the other, in one pass
/// (all of a phase's rows in one call of [`ImplicitGemm::deinterleave`]
/// with AVX-512, else im2col's split). `x` has `channels` channels of `ih ×
/// iw`; `(ph, pw)` is the padding before the first row and column.
struct Fill<'a> {
    kern: ImplicitGemm,
    p: &'a Planes,
    channels: usize,
    size: (usize, usize),
    pad: (usize, usize),
    x: &'a [f32],
    out: &'a mut [f32],
}

impl Vectorized for Fill<'_> {
    type Out = ();
    #[inline(always)]
    fn run(self) {
        let Fill {
            kern,
            p,
            channels,
            size: (ih, iw),
            pad: (ph, pw),
            x,
            out,
        } = self;
        let (wq, sh, sw, plane) = (p.wq, p.sh, p.sw, p.plane());
        // Stride 2 across: even input columns land in phase `pw mod 2` from
        // element `pw / 2` on, odd ones in the other phase from `(pw + 1) / 2`.
        let (se, so) = (pw / 2, pw.div_ceil(2));
        let (ne, no) = (iw.div_ceil(2), iw / 2);
        assert!(
            x.len() >= channels * ih * iw,
            "implicit GEMM: a group input shorter than its channels"
        );
        if ih == 0 || iw == 0 {
            return;
        }
        for (c, xc) in x.chunks_exact(ih * iw).take(channels).enumerate() {
            let chan = &mut out[p.offset(c, 0, 0)..][..sh * sw * plane];
            for (a, phase) in chan.chunks_exact_mut(sw * plane).enumerate() {
                // Padded row `u·sh + a` is input row `u·sh + a − ph`: the
                // first input row of phase `a` and its plane row.
                let r0 = (a + sh - ph % sh) % sh;
                let u0 = (r0 + ph) / sh;
                if r0 >= ih {
                    continue;
                }
                let (src, rows) = (&xc[r0 * iw..], (ih - r0).div_ceil(sh));
                if sw == 2 {
                    let (p0, p1) = phase.split_at_mut(plane);
                    let (pe, po) = if pw % 2 == 0 { (p0, p1) } else { (p1, p0) };
                    let (e, o) = (&mut pe[u0 * wq + se..], &mut po[u0 * wq + so..]);
                    if !kern.deinterleave(src, sh * iw, e, o, wq, (rows, no)) {
                        for r in 0..rows {
                            let (e, o) = (&mut e[r * wq..][..no], &mut o[r * wq..][..no]);
                            super::im2col::deinterleave(&src[r * sh * iw..][..2 * no], e, o);
                        }
                    }
                    if ne > no {
                        for r in 0..rows {
                            e[r * wq + no] = src[r * sh * iw + iw - 1];
                        }
                    }
                    continue;
                }
                for r in 0..rows {
                    let (src, row) = (&src[r * sh * iw..][..iw], &mut phase[(u0 + r) * wq..]);
                    if sw == 1 {
                        row[pw..pw + iw].copy_from_slice(src);
                    } else {
                        for (s, &v) in src.iter().enumerate() {
                            let col = s + pw;
                            row[(col % sw) * plane + col / sw] = v;
                        }
                    }
                }
            }
        }
    }
}

/// The planes buffer of a job (`len` elements, as [`with_scratch`] gives
/// it), zeroed once: [`Fill`] then writes each sample's input over the
/// same places and the padding stays zero.
fn zeroed_planes(pl: &mut [f32]) -> &mut [f32] {
    pl.fill(0.0);
    pl
}

/// Whether conv2d's forward pass of this geometry takes the implicit GEMM
/// for element type `T`: `f32` with the kernel available
/// ([`ImplicitGemm::detect`]), a kernel larger than one pixel or a stride or padding (a
/// pointwise conv already reads its input in place), no empty dimension,
/// strides no longer than the kernel (a longer one leaves phase planes no tap
/// reads), windows that stay inside the padded input, and planes within
/// [`plane_budget`].
pub(super) fn applies<T: 'static>(geom: &Conv2dGeometry) -> bool {
    // The planes: `C/G` channels of the padded input, rounded up to whole strides.
    let padded = |a: &super::AxisGeometry| {
        let p = a.padding.checked_mul(2)?.checked_add(a.input)?;
        p.div_ceil(a.stride).checked_mul(a.stride)
    };
    let planes = || {
        let (h, w) = (padded(&geom.h)?, padded(&geom.w)?);
        geom.in_per_group().checked_mul(h)?.checked_mul(w)
    };
    TypeId::of::<T>() == TypeId::of::<f32>()
        && ImplicitGemm::detect::<T>().is_some()
        && !geom.is_pointwise()
        && geom.batch > 0
        && geom.in_per_group() > 0
        && geom.out_per_group() > 0
        && geom.h.stride <= geom.h.kernel
        && geom.w.stride <= geom.w.kernel
        && windows_inside(&geom.h)
        && windows_inside(&geom.w)
        && planes().is_some_and(|n| n <= plane_budget(geom))
}

/// Whether an axis's windows stay inside the padded input (checked arithmetic).
fn windows_inside(a: &super::AxisGeometry) -> bool {
    let span = (a.kernel.checked_sub(1))
        .and_then(|k| k.checked_mul(a.dilation))
        .map(|s| s + 1);
    let end = span.and_then(|s| {
        (a.output.checked_sub(1)?)
            .checked_mul(a.stride)?
            .checked_add(s)
    });
    let padded = a
        .padding
        .checked_mul(2)
        .and_then(|p| p.checked_add(a.input));
    matches!((end, padded), (Some(e), Some(p)) if e <= p)
}

/// The most elements the implicit paths give one group's planes: twice what
/// im2col's column matrix of a whole sample and one group's input and output
/// take, and a little more. (Padding and dilation far past the data would
/// otherwise make the planes huge where im2col stays small.)
fn plane_budget(geom: &Conv2dGeometry) -> usize {
    let ohw = geom.out_hw();
    geom.patch_len()
        .saturating_mul(ohw)
        .saturating_add(geom.in_per_group().saturating_mul(geom.in_hw()))
        .saturating_add(geom.out_per_group().saturating_mul(ohw))
        .saturating_mul(2)
        .saturating_add(1 << 12)
}

/// `&[T]` as `&[f32]` (`T` is `f32`: checked by [`applies`] and [`transposed_applies`]).
fn as_f32<T: 'static>(s: &[T]) -> &[f32] {
    cast(s).expect("the implicit paths run for f32 only")
}

/// `&mut [T]` as `&mut [f32]` (`T` is `f32`).
fn as_f32_mut<T: 'static>(s: &mut [T]) -> &mut [f32] {
    cast_mut(s).expect("the implicit paths run for f32 only")
}

/// conv2d's forward pass (`geom` must pass [`applies`]): per group, the
/// weights (and bias) packed once; per sample, the group input's planes,
/// then one implicit product into the output. The batch is split between
/// threads as im2col's is.
pub(super) fn forward<T: Float>(
    geom: &Conv2dGeometry,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
) -> Vec<T> {
    assert!(applies::<T>(geom), "implicit GEMM: not for this conv");
    let kern = ImplicitGemm::detect::<T>().expect("checked by applies");
    let (x, w, b) = (as_f32(x), as_f32(w), b.map(as_f32));
    let (og, ckk, ohw) = (geom.out_per_group(), geom.patch_len(), geom.out_hw());
    let packed: Vec<Vec<f32>> = (0..geom.groups)
        .map(|g| ImplicitGemm::pack(og, ckk, |o, p| w[(g * og + o) * ckk + p]))
        .collect();
    let planes = Planes::of(geom);
    let (offs, runs) = (planes.offsets(geom), planes.runs(geom, kern.run_len()));
    let plen = planes.len(geom.in_per_group());
    let ranges = batch_split(geom);
    // Every output element is written by its run.
    let mut y = crate::buffer::scratch::<T>(geom.output_shape().iter().product());
    {
        let y32 = as_f32_mut(&mut y);
        let chunks = split_by(y32, &ranges, geom.out_channels * ohw);
        let jobs: Vec<_> = ranges.iter().cloned().zip(chunks).collect();
        run_jobs(jobs, |(samples, y)| {
            with_scratch(plen, |pl: &mut [f32]| {
                let pl = zeroed_planes(pl);
                for (local, n) in samples.clone().enumerate() {
                    for (g, a) in packed.iter().enumerate() {
                        let xg = &x[input_block(geom, n, g)];
                        let (cg, size) = (geom.in_per_group(), (geom.h.input, geom.w.input));
                        let pad = (geom.h.padding, geom.w.padding);
                        kern.vectorized(Fill {
                            kern,
                            p: &planes,
                            channels: cg,
                            size,
                            pad,
                            x: xg,
                            out: pl,
                        });
                        let bias = b.map(|b| &b[g * og..][..og]);
                        let yg = &mut y[output_block(geom, local, g)];
                        let ahead = next_input(geom, x, &samples, n, g);
                        kern.run(a, og, bias, pl, &offs, &runs, yg, ohw, ahead);
                    }
                }
            })
        });
    }
    y
}

/// Whether conv2d's weight gradient for this geometry runs as an implicit
/// product ([`weight_grad`]) for element type `T`: `f32` with the AVX-512
/// kernel, output channels per group a multiple of 16 (the kernel's
/// vectors), not a pointwise conv (whose weight gradient is one product
/// already), no dilation across (a group's taps are consecutive elements),
/// windows inside the padded input and the padded input within
/// [`plane_budget`]. (One padded input serves any stride.)
pub(super) fn weight_grad_applies<T: 'static>(geom: &Conv2dGeometry) -> bool {
    let padded = |a: &super::AxisGeometry| a.padding.checked_mul(2)?.checked_add(a.input);
    let planes = || {
        let (h, w) = (padded(&geom.h)?, padded(&geom.w)?);
        geom.in_per_group().checked_mul(h)?.checked_mul(w)
    };
    TypeId::of::<T>() == TypeId::of::<f32>()
        && ImplicitGemm::detect::<T>().is_some_and(|k| k.has_weight_grad())
        && !geom.is_pointwise()
        && geom.batch > 0
        && geom.in_per_group() > 0
        && geom.out_per_group() > 0
        && geom.out_per_group().is_multiple_of(16)
        && geom.out_hw() > 0
        && geom.w.dilation == 1
        && windows_inside(&geom.h)
        && windows_inside(&geom.w)
        && planes().is_some_and(|n| n <= plane_budget(geom))
}

/// Output gradient values (`f32`) per pixel block of [`weight_grad`]: the
/// block's transposed output gradient stays in L2 while every tile of taps
/// reads it.
const WEIGHT_GRAD_BLOCK: usize = 16 << 10;

/// conv2d's weight gradient `dW` (`[O, C/G, kh, kw]`) from the input `x` and
/// the output gradient `dy` (`geom` must pass [`weight_grad_applies`]): per
/// sample and group, the padded input is written once, and per block of
/// output rows the output gradient is transposed pixel-major; then each
/// group of taps of one kernel row (`(c, ki)`, the taps `kj` in chunks of at
/// most [`MAX_TAPS`]) reads the padded input in place
/// ([`ImplicitGemm::weight_grad`]): tap `(c, ki, kj)` of output pixel `(i,
/// j)` is padded element `(i·sh + ki·dh, j·sw + kj)`. The products are
/// im2col's (padding reads zeros). The batch is split between threads as
/// im2col's is, each chunk summing its own `dWᵀ`, added up in chunk order
/// ([`BackwardBuffers`]), then transposed into `dW`.
pub(super) fn weight_grad<T: Float>(geom: &Conv2dGeometry, x: &[T], dy: &[T]) -> Vec<T> {
    assert!(
        weight_grad_applies::<T>(geom),
        "implicit GEMM: not for this conv"
    );
    let kern = ImplicitGemm::detect::<T>().expect("checked by weight_grad_applies");
    let (x, dy) = (as_f32(x), as_f32(dy));
    let (cg, og, ckk) = (geom.in_per_group(), geom.out_per_group(), geom.patch_len());
    let (kh, kw) = (geom.h.kernel, geom.w.kernel);
    let (oh, ow, ohw) = (geom.out_h(), geom.out_w(), geom.out_hw());
    let planes = Planes {
        sh: 1,
        sw: 1,
        hq: geom.h.input + 2 * geom.h.padding,
        wq: geom.w.input + 2 * geom.w.padding,
    };
    // The taps of each kernel row in near-equal chunks of at most MAX_TAPS
    // (at most two sizes), grouped by size.
    let chunks = kw.div_ceil(MAX_TAPS);
    let sizes: Vec<(usize, usize)> = (0..chunks)
        .map(|q| (kw * q / chunks, kw * (q + 1) / chunks))
        .collect();
    let mut classes: Vec<(usize, Vec<TapGroup>)> = Vec::new();
    for &(k0, k1) in &sizes {
        let taps = k1 - k0;
        let pos = match classes.iter().position(|(t, _)| *t == taps) {
            Some(p) => p,
            None => {
                classes.push((taps, Vec::new()));
                classes.len() - 1
            }
        };
        for c in 0..cg {
            for ki in 0..kh {
                classes[pos].1.push(TapGroup {
                    off: c * planes.plane() + ki * geom.h.dilation * planes.wq + k0,
                    row: (c * kh + ki) * kw + k0,
                });
            }
        }
    }
    let rows_per_block = (WEIGHT_GRAD_BLOCK / (og * ow)).clamp(1, oh);
    let blocks: Vec<(usize, Vec<PixelRun>)> = (0..oh)
        .step_by(rows_per_block)
        .map(|i0| {
            let i1 = (i0 + rows_per_block).min(oh);
            let runs = (i0..i1)
                .map(|i| PixelRun {
                    b: i * geom.h.stride * planes.wq,
                    c: (i - i0) * ow,
                    lanes: ow,
                })
                .collect();
            (i0 * ow, runs)
        })
        .collect();
    let plen = planes.len(cg);
    let gt_len = rows_per_block * ow * og;
    let ranges = batch_split(geom);
    // Each chunk's partial dWᵀ (cleared by its job), summed in chunk order.
    let mut out = BackwardBuffers::<f32>::new(
        geom,
        ranges.len(),
        [false, true, false],
        geom.groups * ckk * og,
    );
    run_backward_jobs(out.jobs(geom, &ranges), false, |job| {
        let dwt = job.dw.expect("the weight gradient was asked for");
        with_scratch(plen + gt_len, |buf: &mut [f32]| {
            let (pl, gt) = buf.split_at_mut(plen);
            let pl = zeroed_planes(pl);
            for n in job.samples.clone() {
                for g in 0..geom.groups {
                    kern.vectorized(Fill {
                        kern,
                        p: &planes,
                        channels: cg,
                        size: (geom.h.input, geom.w.input),
                        pad: (geom.h.padding, geom.w.padding),
                        x: &x[input_block(geom, n, g)],
                        out: pl,
                    });
                    let dyg = &dy[output_block(geom, n, g)];
                    let dwg = &mut dwt[g * ckk * og..][..ckk * og];
                    for (p0, runs) in &blocks {
                        let px = runs.len() * ow;
                        kern.transpose(&dyg[*p0..], og, px, ohw, gt);
                        for (taps, groups) in &classes {
                            let step = geom.w.stride;
                            kern.weight_grad(pl, groups, *taps, step, gt, og, og, runs, dwg, og);
                        }
                    }
                }
            }
        })
    });
    // dW[g·og + o][k] = dWᵀ_g[k][o].
    let total = out.dw.sum().expect("the weight gradient was asked for");
    let mut dw = crate::buffer::scratch::<T>(geom.out_channels * ckk);
    let dw32 = as_f32_mut(&mut dw);
    for (src, dst) in total
        .chunks_exact(ckk * og)
        .zip(dw32.chunks_exact_mut(og * ckk))
    {
        kern.transpose(src, ckk, og, og, dst);
    }
    dw
}

/// One axis of conv2d's input gradient taken by phase: input positions
/// `r = a + s·u` (phase `a < s`) receive from the taps `k` with
/// `(a + p − k·d) ≡ 0 (mod s)`, each reading output position `u + δ`,
/// `δ = (a + p − k·d) / s`.
struct AxisPhases {
    /// Per phase: how many input positions it has, and its taps with their δ.
    phases: Vec<(usize, Vec<(usize, isize)>)>,
    /// Zeros before and after the output (gradient) so that every read is inside.
    lo: usize,
    hi: usize,
}

impl AxisPhases {
    fn of(a: &super::AxisGeometry) -> Self {
        let (s, p, d) = (a.stride as isize, a.padding as isize, a.dilation as isize);
        let (mut lo, mut hi) = (0isize, a.output as isize - 1);
        let phases = (0..a.stride)
            .map(|ph| {
                let n = a.input.saturating_sub(ph).div_ceil(a.stride);
                let taps: Vec<(usize, isize)> = (0..a.kernel)
                    .filter_map(|k| {
                        let t = ph as isize + p - k as isize * d;
                        (t.rem_euclid(s) == 0).then_some((k, t.div_euclid(s)))
                    })
                    .collect();
                if n > 0 {
                    for &(_, delta) in &taps {
                        lo = lo.min(delta);
                        hi = hi.max(n as isize - 1 + delta);
                    }
                }
                (n, taps)
            })
            .collect();
        AxisPhases {
            phases,
            lo: (-lo) as usize,
            hi: (hi - (a.output as isize - 1)) as usize,
        }
    }
}

/// Whether conv2d's input gradient for this geometry (the transposed conv's
/// forward) runs by phase as implicit products ([`transposed`]) for element
/// type `T`: `f32` with a kernel available (the input channels per group
/// are the product's rows), not a pointwise conv (whose input
/// gradient is one product already), strides no longer than the kernel (a
/// longer one leaves phases without taps), no empty dimension, and the
/// padded output gradient within [`plane_budget`].
pub(super) fn transposed_applies<T: 'static>(geom: &Conv2dGeometry) -> bool {
    let axis_ok = |a: &super::AxisGeometry| a.input > 0 && a.output > 0 && a.stride <= a.kernel;
    let fits = TypeId::of::<T>() == TypeId::of::<f32>()
        && ImplicitGemm::detect::<T>().is_some()
        && !geom.is_pointwise()
        && geom.batch > 0
        && geom.out_per_group() > 0
        && geom.in_per_group() > 0
        && axis_ok(&geom.h)
        && axis_ok(&geom.w);
    // Only now (strides bounded by the kernel) the phases are worth computing.
    fits && {
        let padded = |a: &super::AxisGeometry| {
            let p = AxisPhases::of(a);
            p.lo.checked_add(a.output)?.checked_add(p.hi)
        };
        let planes = || {
            let (h, w) = (padded(&geom.h)?, padded(&geom.w)?);
            geom.out_per_group().checked_mul(h)?.checked_mul(w)
        };
        planes().is_some_and(|n| n <= plane_budget(geom))
    }
}

/// conv2d's input gradient `dX` from an output gradient `g` (`[N, O, oh,
/// ow]`) and the weight `w` (`[O, C/G, kh, kw]`), plus `bias[c]` on every
/// pixel of input channel `c` if given — the transposed conv's forward pass
/// (`geom` must pass [`transposed_applies`]).
///
/// By phase: the input pixels `(a + sh·u, b + sw·v)` of phase `(a, b)` receive
/// only from the taps of that phase ([`AxisPhases`]), each reading `g` at
/// `(u + δh, v + δw)` — a stride-1 correlation of the zero-padded `g` with
/// those taps, which is an implicit product like [`forward`]'s (rows: the
/// input channels; depth: output channels × the phase's taps). Each phase's
/// result is then interleaved into `dX` (written in place at stride 1). No
/// column matrix is built and nothing is scattered with additions.
pub(super) fn transposed<T: Float>(
    geom: &Conv2dGeometry,
    g: &[T],
    w: &[T],
    bias: Option<&[T]>,
) -> Vec<T> {
    assert!(
        transposed_applies::<T>(geom),
        "implicit GEMM: not for this conv"
    );
    let kern = ImplicitGemm::detect::<T>().expect("checked by transposed_applies");
    let (g, w, bias) = (as_f32(g), as_f32(w), bias.map(as_f32));
    let (cg, og, khw) = (
        geom.in_per_group(),
        geom.out_per_group(),
        geom.h.kernel * geom.w.kernel,
    );
    let (ih, iw, oh, ow) = (geom.h.input, geom.w.input, geom.out_h(), geom.out_w());
    let (sh, sw) = (geom.h.stride, geom.w.stride);
    let (ah, aw) = (AxisPhases::of(&geom.h), AxisPhases::of(&geom.w));
    // The output gradient padded once, read by every phase.
    let planes = Planes {
        sh: 1,
        sw: 1,
        hq: ah.lo + oh + ah.hi,
        wq: aw.lo + ow + aw.hi,
    };
    let direct = sh == 1 && sw == 1;
    // Per phase `(a, b)`: its size, its taps' offsets in the planes, its runs,
    // and per group the weights packed in the taps' order.
    struct Phase {
        a: usize,
        b: usize,
        n: usize,
        m: usize,
        offs: Vec<usize>,
        runs: Vec<PixelRun>,
        packed: Vec<Vec<f32>>,
    }
    let len = kern.run_len();
    let mut phases = Vec::new();
    for (a, (n, taps_h)) in ah.phases.iter().enumerate() {
        for (b, (m, taps_w)) in aw.phases.iter().enumerate() {
            if *n == 0 || *m == 0 {
                continue;
            }
            let mut offs = Vec::with_capacity(og * taps_h.len() * taps_w.len());
            let mut taps = Vec::with_capacity(offs.capacity());
            for o in 0..og {
                for &(kh, dh) in taps_h {
                    for &(kw, dw) in taps_w {
                        let row = (dh + ah.lo as isize) as usize;
                        let col = (dw + aw.lo as isize) as usize;
                        offs.push(o * planes.plane() + row * planes.wq + col);
                        taps.push(o * cg * khw + kh * geom.w.kernel + kw);
                    }
                }
            }
            // Written in place at stride 1 (rows of `iw`), else into the
            // phase's own `n × m` buffer.
            let ldr = if direct { iw } else { *m };
            let runs = (0..*n)
                .flat_map(|u| {
                    (0..*m).step_by(len).map(move |v| PixelRun {
                        b: u * planes.wq + v,
                        c: u * ldr + v,
                        lanes: len.min(m - v),
                    })
                })
                .collect();
            let packed = (0..geom.groups)
                .map(|gr| {
                    let base = gr * og * cg * khw;
                    ImplicitGemm::pack(cg, taps.len(), |c, p| w[base + taps[p] + c * khw])
                })
                .collect();
            phases.push(Phase {
                a,
                b,
                n: *n,
                m: *m,
                offs,
                runs,
                packed,
            });
        }
    }
    let plen = planes.len(og);
    let buf_len = if direct {
        0
    } else {
        cg * ah.phases[0].0 * aw.phases[0].0
    };
    let ranges = batch_split(geom);
    let (in_block, out_block) = (geom.in_channels * ih * iw, geom.out_channels * oh * ow);
    // Every element is written: each input pixel belongs to one phase.
    let mut dx = crate::buffer::scratch::<T>(geom.input_shape().iter().product());
    {
        let dx32 = as_f32_mut(&mut dx);
        let chunks = split_by(dx32, &ranges, in_block);
        let jobs: Vec<_> = ranges.iter().cloned().zip(chunks).collect();
        run_jobs(jobs, |(samples, dx)| {
            with_scratch(plen + buf_len, |buf: &mut [f32]| {
                let (pl, pbuf) = buf.split_at_mut(plen);
                let pl = zeroed_planes(pl);
                for (local, n) in samples.clone().enumerate() {
                    for gr in 0..geom.groups {
                        let gg = &g[n * out_block + gr * og * oh * ow..][..og * oh * ow];
                        let pad = (ah.lo, aw.lo);
                        kern.vectorized(Fill {
                            kern,
                            p: &planes,
                            channels: og,
                            size: (oh, ow),
                            pad,
                            x: gg,
                            out: pl,
                        });
                        let dxg = &mut dx[local * in_block + gr * cg * ih * iw..][..cg * ih * iw];
                        let bias = bias.map(|b| &b[gr * cg..][..cg]);
                        for ph in &phases {
                            let a = &ph.packed[gr];
                            if direct {
                                kern.run(a, cg, bias, pl, &ph.offs, &ph.runs, dxg, ih * iw, &[]);
                                continue;
                            }
                            let nm = ph.n * ph.m;
                            let out = &mut pbuf[..cg * nm];
                            kern.run(a, cg, bias, pl, &ph.offs, &ph.runs, out, nm, &[]);
                            kern.vectorized(Scatter {
                                phase: (ph.a, ph.b),
                                stride: (sh, sw),
                                size: (ih, iw),
                                m: ph.m,
                                src: out,
                                dst: dxg,
                            });
                        }
                    }
                }
            })
        });
    }
    dx
}

/// Work that writes phase `(a, b)`'s values `src` (`[C, n, m]`) into `dst`
/// (`[C, ih, iw]`): `dst[c][a + sh·u][b + sw·v] = src[c][u][v]`; it runs
/// through [`ImplicitGemm::vectorized`].
struct Scatter<'a> {
    phase: (usize, usize),
    stride: (usize, usize),
    size: (usize, usize),
    m: usize,
    src: &'a [f32],
    dst: &'a mut [f32],
}

impl Vectorized for Scatter<'_> {
    type Out = ();
    #[inline(always)]
    fn run(self) {
        let Scatter {
            phase: (a, b),
            stride: (sh, sw),
            size: (ih, iw),
            m,
            src,
            dst,
        } = self;
        let n = ih.saturating_sub(a).div_ceil(sh);
        for (sc, dc) in src.chunks_exact(n * m).zip(dst.chunks_exact_mut(ih * iw)) {
            for (u, row) in sc.chunks_exact(m).enumerate() {
                let line = &mut dc[(a + sh * u) * iw..][..iw];
                for (v, &x) in row.iter().enumerate() {
                    line[b + sw * v] = x;
                }
            }
        }
    }
}
