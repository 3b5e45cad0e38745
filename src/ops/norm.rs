//! Normalisation: batch norm (training and evaluation), layer norm and group
//! norm, with the semantics of PyTorch's `F.batch_norm`, `F.layer_norm` and
//! `F.group_norm`.
//!
//! Each op normalises sets of values, `x̂ = (x − μ)·r` with `r = 1/√(σ² + eps)`
//! (μ and the biased variance σ² of the set, or given running statistics),
//! then applies an optional affine map `y = γ·x̂ + β`. The sets:
//!
//! - batch norm: one per channel, over the batch and every spatial position
//!   (γ, β per channel);
//! - layer norm: one per leading index, over the trailing `normalized_shape`
//!   (γ, β per element of `normalized_shape`);
//! - group norm: one per (sample, group), over `C / groups` channels × every
//!   spatial position (γ, β per channel).
//!
//! Backward, for a set of `M` values with upstream gradient `g`, and
//! `d = γ·g` the gradient reaching `x̂`:
//!
//! - statistics of the set itself (batch norm training, layer and group norm):
//!   `dx = r·(d − mean(d) − x̂·mean(d·x̂))`, the means over the set;
//! - constant statistics (batch norm evaluation): `dx = r·d`;
//! - `dγ = Σ g·x̂` and `dβ = Σ g`, summed over every value γ and β scale.
//!
//! Numerics: the statistics and the backward's sums (`Σ g`, `Σ g·(x − μ)`)
//! run over eight interleaved partial sums (so they vectorise); each block of
//! 128 values is summed in the tensor's type (at most 16 terms per partial
//! sum) and the blocks' sums are added in `f64`. The variance takes two
//! passes: the mean, then `Σ(x − μ)²` corrected by `(Σ(x − μ))²/M` (which also
//! refines the mean). The mean is kept as an `f32`/`f64` part, subtracted from
//! every value, plus an `f64` remainder folded into the per-set constants, so
//! `f32` results stay within about 1e-7 of the exact ones (relative to the
//! largest value) even when the mean dwarfs the spread. Layer norm's `dγ` and
//! `dβ` and its row sums with a weight add in `f64` directly.
//!
//! The sets are independent, so the work is split between threads by whole
//! sets (channels, rows, (sample, group) blocks; layer norm's `dγ` and `dβ`
//! by columns), and every sum runs in the same order whatever the thread
//! count: results are bit-identical at any number of threads.

use super::conv::parallel::{run_jobs, split_by, split_work};
use crate::gemm::prefetch_all as prefetch;
use crate::shape::Shape;
use crate::tape::{GraphCtx, graph_fn};
use crate::{Float, ParentGrads, Tensor, Var};
use std::ops::Range;

/// Batch statistics of a training-mode batch norm: per-channel mean and
/// *biased* variance, and the number of values each was taken over
/// (N·spatial), for the running-statistics update.
///
/// A layer keeping running statistics updates them as PyTorch does:
/// `running_var ← (1 − m)·running_var + m·var·count/(count − 1)` (the
/// unbiased variance), `running_mean ← (1 − m)·running_mean + m·mean`.
///
/// ```
/// use tapegrad::{BatchStats, Tape, Tensor};
/// let tape = Tape::<f64>::new();
/// let x = tape.leaf(Tensor::from_vec(vec![1.0, 10.0, 3.0, 20.0], [2, 2]).unwrap());
/// let (_, stats): (_, BatchStats<f64>) = x.batch_norm_train(None, None, 1e-5);
/// assert_eq!(stats.mean.data(), &[2.0, 15.0]);
/// assert_eq!(stats.var.data(), &[1.0, 25.0]); // biased: over count values
/// assert_eq!(stats.count, 2);
/// ```
#[derive(Clone, Debug)]
pub struct BatchStats<T: Float> {
    /// Mean of each channel, shape `[C]`.
    pub mean: Tensor<T>,
    /// Biased variance (divided by `count`) of each channel, shape `[C]`.
    pub var: Tensor<T>,
    /// Values per channel: N times the spatial size.
    pub count: usize,
}

/// Below this many input elements, a normalisation runs on one thread.
const MIN_PARALLEL_WORK: usize = 1 << 16;

/// Interleaved partial sums: enough independent lanes for the compiler to
/// vectorise a sum, added up in a fixed order.
const LANES: usize = 8;

/// Values summed in the tensor's own type before the partial sums move to
/// `f64`: 16 per lane.
const BLOCK: usize = 16 * LANES;

/// [`LANES`] partial sums in `f64`.
#[derive(Clone, Copy)]
struct Acc([f64; LANES]);

impl Acc {
    const ZERO: Acc = Acc([0.0; LANES]);

    /// The sum of the lanes, in a fixed order.
    fn total(self) -> f64 {
        let a = self.0;
        ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
    }
}

/// Adds `fu(a[i], b[i])` into `s` and `fv(a[i], b[i])` into `t` for every
/// `i` (`a` and `b` have the same length), [`LANES`] at a time. Each block of
/// [`BLOCK`] values is summed in `T`, in [`LANES`] interleaved sums of at most
/// 16 terms (an `f32` rounding error of a few units in the last place of the
/// block's sum), and the blocks' sums are added in `f64`.
///
/// The two sums are separate loops over fixed-size arrays: written as one
/// loop returning a pair, the compiler pairs `u[l]` with `v[l]` in a vector
/// instead of the lanes of each.
#[inline(always)]
fn accumulate<T: Float>(
    s: &mut Acc,
    t: &mut Acc,
    a: &[T],
    b: &[T],
    fu: impl Fn(T, T) -> T,
    fv: impl Fn(T, T) -> T,
) {
    debug_assert_eq!(a.len(), b.len());
    for (a, b) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let (mut u, mut v) = ([T::ZERO; LANES], [T::ZERO; LANES]);
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (a, b) in ca.zip(cb) {
            let a: &[T; LANES] = a.try_into().expect("LANES values");
            let b: &[T; LANES] = b.try_into().expect("LANES values");
            for l in 0..LANES {
                u[l] += fu(a[l], b[l]);
            }
            for l in 0..LANES {
                v[l] += fv(a[l], b[l]);
            }
        }
        if !ra.is_empty() {
            // The tail, padded with zeros whose terms are dropped. (Indexing
            // `u` by a variable lane would keep it in memory for the whole
            // loop.)
            let n = ra.len();
            let (mut a, mut b) = ([T::ZERO; LANES], [T::ZERO; LANES]);
            a[..n].copy_from_slice(ra);
            b[..n].copy_from_slice(rb);
            for l in 0..LANES {
                let (p, q) = (fu(a[l], b[l]), fv(a[l], b[l]));
                u[l] += if l < n { p } else { T::ZERO };
                v[l] += if l < n { q } else { T::ZERO };
            }
        }
        // Without the barrier the compiler matches the `f32` sums to the
        // two-wide `f64` vectors they are added to and runs the whole loop on
        // two lanes instead of four (or eight).
        let (u, v) = std::hint::black_box((u, v));
        for l in 0..LANES {
            s.0[l] += u[l].to_f64();
            t.0[l] += v[l].to_f64();
        }
    }
}

/// Mean and biased variance of the `count` values of the slices `segments()`
/// yields (called twice: the variance takes a second pass).
fn moments<'a, T: Float, I: Iterator<Item = &'a [T]>>(
    segments: impl Fn() -> I,
    count: usize,
) -> (f64, f64) {
    let (mut s, mut unused) = (Acc::ZERO, Acc::ZERO);
    for x in segments() {
        accumulate(&mut s, &mut unused, x, x, |v, _| v, |_, _| T::ZERO);
    }
    let m = count as f64;
    // The first pass's mean, in T: the second pass's centre.
    let centre = T::from_f64(s.total() / m);
    let (mut d, mut d2) = (Acc::ZERO, Acc::ZERO);
    for x in segments() {
        accumulate(
            &mut d,
            &mut d2,
            x,
            x,
            |v, _| v - centre,
            |v, _| (v - centre) * (v - centre),
        );
    }
    let (d, d2) = (d.total(), d2.total());
    // Σ(x − μ)² with μ = centre + d/m the refined mean; never below 0 (NaN stays).
    let var = (d2 - d * d / m) / m;
    (centre.to_f64() + d / m, if var < 0.0 { 0.0 } else { var })
}

/// `mean` as `hi + lo`: `hi` in `T`, subtracted from every value (exactly,
/// for values within a factor 2 of it), and the remainder `lo` in `f64`,
/// folded into per-set constants. In `f32`, `x − hi` alone would be off by
/// up to half an ulp of the mean, which is much of the spread once the mean
/// is large (a mean of 1000 and a deviation of 0.5: 6e-5 of the deviation).
fn split_mean<T: Float>(mean: f64) -> (T, f64) {
    let hi = T::from_f64(mean);
    (hi, mean - hi.to_f64())
}

/// `Σ g` and `Σ g·(x − mean)` over the pairs of slices `segments` yields.
fn grad_sums<'a, T: Float>(
    segments: impl Iterator<Item = (&'a [T], &'a [T])>,
    mean: f64,
) -> (f64, f64) {
    let (hi, lo) = split_mean::<T>(mean);
    let (mut sg, mut sgx) = (Acc::ZERO, Acc::ZERO);
    for (g, x) in segments {
        accumulate(&mut sg, &mut sgx, g, x, |g, _| g, |g, x| g * (x - hi));
    }
    let sg = sg.total();
    (sg, sgx.total() - lo * sg)
}

/// `y = (x − mean)·scale + shift`.
#[inline]
fn affine<T: Float>(y: &mut [T], x: &[T], mean: T, scale: T, shift: T) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = (x - mean) * scale + shift;
    }
}

/// `dx = a·g + b·(x − mean) + c`: the input gradient of a normalisation.
#[inline]
fn input_grad<T: Float>(dx: &mut [T], g: &[T], x: &[T], mean: T, a: T, b: T, c: T) {
    for ((dx, &g), &x) in dx.iter_mut().zip(g).zip(x) {
        *dx = a * g + b * (x - mean) + c;
    }
}

/// An `[N, C, *]` tensor seen as N·C planes of `inner` contiguous values.
#[derive(Clone, Copy, Debug)]
struct Planes {
    n: usize,
    c: usize,
    inner: usize,
}

impl Planes {
    /// Panics, naming `op`, unless `shape` has rank ≥ 2.
    fn new(op: &str, shape: &Shape) -> Self {
        assert!(
            shape.rank() >= 2,
            "{op}: input {shape} must be [N, C] or [N, C, *] (rank at least 2)"
        );
        Planes {
            n: shape[0],
            c: shape[1],
            inner: shape[2..].iter().product(),
        }
    }

    /// The plane of sample `i`, channel `c`.
    #[inline]
    fn plane<'a, T>(&self, x: &'a [T], i: usize, c: usize) -> &'a [T] {
        &x[(i * self.c + c) * self.inner..][..self.inner]
    }

    /// The channels split between threads (one range unless the tensor is large).
    fn split(&self) -> Vec<Range<usize>> {
        split_work(self.c, self.n * self.inner, MIN_PARALLEL_WORK)
    }

    /// `out` (`n·c·inner` values, if any) cut into its planes and grouped by
    /// the channel ranges: for each range, the planes of its first channel
    /// (samples in order), then of the next, and so on. Empty groups if `out`
    /// is `None`.
    fn by_channel<'a, T>(
        &self,
        out: Option<&'a mut [T]>,
        ranges: &[Range<usize>],
    ) -> Vec<Vec<&'a mut [T]>> {
        let Some(mut rest) = out else {
            return ranges.iter().map(|_| Vec::new()).collect();
        };
        let mut groups: Vec<Vec<Option<&'a mut [T]>>> = ranges
            .iter()
            .map(|r| (0..r.len() * self.n).map(|_| None).collect())
            .collect();
        let mut group_of = vec![0; self.c];
        for (j, r) in ranges.iter().enumerate() {
            group_of[r.clone()].fill(j);
        }
        for i in 0..self.n {
            for c in 0..self.c {
                let (plane, tail) = std::mem::take(&mut rest).split_at_mut(self.inner);
                rest = tail;
                let j = group_of[c];
                groups[j][(c - ranges[j].start) * self.n + i] = Some(plane);
            }
        }
        groups
            .into_iter()
            .map(|g| g.into_iter().map(|p| p.expect("every plane")).collect())
            .collect()
    }
}

/// Panics, naming `op`, unless the optional parameter `what` has shape `want`.
fn check_param<T: Float>(
    op: &str,
    what: &str,
    param: Option<&Tensor<T>>,
    want: &Shape,
    input: &Shape,
    per: &str,
) {
    if let Some(p) = param {
        assert!(
            p.shape() == want,
            "{op}: {what} {} does not match input {input}: expected {want} ({per})",
            p.shape()
        );
    }
}

/// The parents of a normalisation (input, then weight and bias if given) and
/// the positions of weight and bias among them.
fn parents<'t, T: Float>(
    x: Var<'t, T>,
    weight: Option<Var<'t, T>>,
    bias: Option<Var<'t, T>>,
) -> (Vec<Var<'t, T>>, Option<usize>, Option<usize>) {
    let mut p = vec![x];
    let wi = weight.map(|w| {
        p.push(w);
        p.len() - 1
    });
    let bi = bias.map(|b| {
        p.push(b);
        p.len() - 1
    });
    (p, wi, bi)
}

/// Whether parent `i` (if present) wants a gradient.
fn wants<T: Float>(ctx: &crate::BackwardCtx<'_, T>, i: Option<usize>) -> bool {
    i.is_some_and(|i| ctx.needs_grad[i])
}

/// The gradients of input, weight and bias, in parent order.
fn grads<T: Float>(
    dx: Option<Tensor<T>>,
    dw: Option<Option<Tensor<T>>>,
    db: Option<Option<Tensor<T>>>,
) -> ParentGrads<T> {
    let mut v = ParentGrads::new();
    v.push(dx);
    v.extend(dw);
    v.extend(db);
    v
}

/// A parameter's values in `f64` (`default` everywhere if absent).
fn values_f64<T: Float>(p: Option<&Tensor<T>>, len: usize, default: f64) -> Vec<f64> {
    match p {
        Some(p) => p.data().iter().map(|v| v.to_f64()).collect(),
        None => vec![default; len],
    }
}

/// `f64` values as a tensor of `shape`.
fn tensor_from_f64<T: Float>(v: &[f64], shape: Shape) -> Tensor<T> {
    Tensor::from_parts(v.iter().map(|&v| T::from_f64(v)).collect(), shape)
}

impl<'t, T: Float> Var<'t, T> {
    /// Batch normalisation in training mode (PyTorch's `F.batch_norm` with
    /// `training=True`) over an `[N, C]` or `[N, C, *]` input: each channel is
    /// normalised with its batch mean μ and biased variance σ² over the N·spatial
    /// values, `y = γ·(x − μ)/√(σ² + eps) + β`. `weight` (γ) and `bias` (β) have
    /// shape `[C]`. Also returns the batch statistics, for a layer's running
    /// averages (the op keeps none).
    ///
    /// Backward, with `r = 1/√(σ² + eps)`, `x̂ = (x − μ)·r`, and the means over
    /// the channel's N·spatial values:
    /// `dx = γ·r·(g − mean(g) − x̂·mean(g·x̂))`, `dγ = Σ g·x̂`, `dβ = Σ g`.
    ///
    /// Panics, naming `batch_norm_train` and the shapes, if the input has rank
    /// below 2, weight or bias is not `[C]`, or a channel has a single value
    /// (as PyTorch: the variance of one value says nothing).
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![1.0, 3.0, 5.0, 7.0], [2, 1, 2]).unwrap());
    /// let w = tape.leaf(Tensor::full([1], 2.0));
    /// let b = tape.leaf(Tensor::full([1], 1.0));
    /// let (y, stats) = x.batch_norm_train(Some(w), Some(b), 0.0);
    /// assert_eq!(stats.mean.data(), &[4.0]);
    /// assert_eq!(stats.var.data(), &[5.0]);
    /// let s = 2.0 / 5f64.sqrt();
    /// assert_eq!(y.value().data(), &[1.0 - 3.0 * s, 1.0 - s, 1.0 + s, 1.0 + 3.0 * s]);
    /// let g = y.sum().backward();
    /// assert!(g[x].data().iter().all(|d| d.abs() < 1e-12)); // a constant shift does nothing
    /// assert_eq!(g[b].data(), &[4.0]);
    /// ```
    #[track_caller]
    pub fn batch_norm_train(
        self,
        weight: Option<Var<'t, T>>,
        bias: Option<Var<'t, T>>,
        eps: f64,
    ) -> (Var<'t, T>, BatchStats<T>) {
        let (y, stats) = self.batch_norm("batch_norm_train", weight, bias, None, eps);
        (y, stats.expect("training computes statistics"))
    }

    /// Batch normalisation in evaluation mode (PyTorch's `F.batch_norm` with
    /// `training=False`): each channel is normalised with the given running
    /// statistics, `y = γ·(x − running_mean)/√(running_var + eps) + β`. The
    /// running statistics (shape `[C]`) are constants; the result is
    /// differentiable in the input, `weight` (γ) and `bias` (β), both `[C]`.
    ///
    /// Backward, with `r = 1/√(running_var + eps)` and
    /// `x̂ = (x − running_mean)·r`: `dx = γ·r·g`, `dγ = Σ g·x̂`, `dβ = Σ g`,
    /// summed over the channel's N·spatial values.
    ///
    /// Panics, naming `batch_norm_eval` and the shapes, if the input has rank
    /// below 2 or weight, bias, `running_mean` or `running_var` is not `[C]`.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![1.0, 3.0, 5.0, 7.0], [2, 2]).unwrap());
    /// let (mean, var) = (Tensor::from_vec(vec![1.0, 3.0], [2]).unwrap(), Tensor::full([2], 4.0));
    /// let y = x.batch_norm_eval(None, None, &mean, &var, 0.0);
    /// assert_eq!(y.value().data(), &[0.0, 0.0, 2.0, 2.0]);
    /// assert_eq!(y.sum().backward()[x].data(), &[0.5; 4]);
    /// ```
    #[track_caller]
    pub fn batch_norm_eval(
        self,
        weight: Option<Var<'t, T>>,
        bias: Option<Var<'t, T>>,
        running_mean: &Tensor<T>,
        running_var: &Tensor<T>,
        eps: f64,
    ) -> Var<'t, T> {
        let running = Some((running_mean, running_var));
        self.batch_norm("batch_norm_eval", weight, bias, running, eps)
            .0
    }

    /// Batch norm with the batch's statistics (`running` is `None`) or given
    /// ones; returns the batch's statistics when it computed them.
    fn batch_norm(
        self,
        op: &'static str,
        weight: Option<Var<'t, T>>,
        bias: Option<Var<'t, T>>,
        running: Option<(&Tensor<T>, &Tensor<T>)>,
        eps: f64,
    ) -> (Var<'t, T>, Option<BatchStats<T>>) {
        let xv = self.value();
        let shape = xv.shape();
        let l = Planes::new(op, shape);
        let (wv, bv) = (weight.map(|w| w.value()), bias.map(|b| b.value()));
        let per_channel = Shape::from([l.c]);
        let per = "one per channel";
        check_param(op, "weight", wv.as_ref(), &per_channel, shape, per);
        check_param(op, "bias", bv.as_ref(), &per_channel, shape, per);
        if let Some((m, v)) = running {
            check_param(op, "running_mean", Some(m), &per_channel, shape, per);
            check_param(op, "running_var", Some(v), &per_channel, shape, per);
        }
        let count = l.n * l.inner;
        let train = running.is_none();
        assert!(
            !train || count > 1,
            "{op}: expected more than 1 value per channel when training, got input {shape} \
             ({count} value{} per channel)",
            if count == 1 { "" } else { "s" }
        );
        let gamma = values_f64(wv.as_ref(), l.c, 1.0);
        let beta = values_f64(bv.as_ref(), l.c, 0.0);
        // Per channel: the mean and variance used, and r = 1/√(σ² + eps).
        let (mut mean, mut var) = match running {
            Some((m, v)) => (values_f64(Some(m), l.c, 0.0), values_f64(Some(v), l.c, 0.0)),
            None => (vec![0.0; l.c], vec![0.0; l.c]),
        };
        let mut rstd = vec![0.0; l.c];
        let x = xv.data();
        // Every plane is overwritten.
        let mut y = crate::buffer::scratch(xv.numel());
        let ranges = l.split();
        let jobs: Vec<_> = ranges
            .iter()
            .cloned()
            .zip(l.by_channel(Some(&mut y), &ranges))
            .zip(split_by(&mut mean, &ranges, 1))
            .zip(split_by(&mut var, &ranges, 1))
            .zip(split_by(&mut rstd, &ranges, 1))
            .map(|((((r, y), m), v), s)| (r, y, m, v, s))
            .collect();
        run_jobs(jobs, |(channels, mut ys, mean, var, rstd)| {
            for (k, c) in channels.enumerate() {
                if train {
                    (mean[k], var[k]) = moments(
                        || {
                            (0..l.n).map(|i| {
                                if i + 1 < l.n {
                                    prefetch(l.plane(x, i + 1, c));
                                }
                                l.plane(x, i, c)
                            })
                        },
                        count,
                    );
                }
                rstd[k] = 1.0 / (var[k] + eps).sqrt();
                let (mu, lo) = split_mean(mean[k]);
                let scale = gamma[c] * rstd[k];
                let shift = T::from_f64(beta[c] - lo * scale);
                let scale = T::from_f64(scale);
                let ys = &mut ys[k * l.n..(k + 1) * l.n];
                for i in 0..l.n {
                    if i + 1 < l.n {
                        prefetch(ys[i + 1]);
                    }
                    affine(ys[i], l.plane(x, i, c), mu, scale, shift);
                }
            }
        });
        let y = Tensor::from_parts(y, shape.clone());
        let stats = train.then(|| BatchStats {
            mean: tensor_from_f64(&mean, per_channel.clone()),
            var: tensor_from_f64(&var, per_channel.clone()),
            count,
        });
        let (parents, wi, bi) = parents(self, weight, bias);
        let running_t = running.map(|(m, v)| (m.clone(), v.clone()));
        let graph = graph_fn(move |ctx: &GraphCtx<'_, '_, T>| {
            let (w, b) = (wi.map(|i| ctx.inputs[i]), bi.map(|i| ctx.inputs[i]));
            let y = batch_norm_composite(ctx.inputs[0], w, b, running_t.as_ref(), eps);
            y.composite_grads(ctx.grad, ctx.inputs, ctx.needs_grad)
        });
        let y = self.tape.record_differentiable(
            op,
            y,
            &parents,
            move |ctx| {
                let (x, g) = (ctx.inputs[0].data(), ctx.grad.data());
                let gamma = wi.map(|i| ctx.inputs[i].data());
                let (want_dw, want_db) = (wants(ctx, wi), wants(ctx, bi));
                let mut dx = ctx.needs_grad[0].then(|| crate::buffer::scratch(x.len()));
                // Per channel: Σ g and Σ g·(x − μ), if needed.
                let need_sums = train || want_dw || want_db;
                let mut sums = vec![(0.0, 0.0); if need_sums { l.c } else { 0 }];
                let ranges = l.split();
                let jobs: Vec<_> = ranges
                    .iter()
                    .cloned()
                    .zip(l.by_channel(dx.as_deref_mut(), &ranges))
                    .zip(split_by(&mut sums, &ranges, usize::from(need_sums)))
                    .map(|((r, dx), s)| (r, dx, s))
                    .collect();
                run_jobs(jobs, |(channels, mut dxs, sums)| {
                    for (k, c) in channels.enumerate() {
                        let (sg, sgx) = if need_sums {
                            let planes = (0..l.n).map(|i| {
                                if i + 1 < l.n {
                                    prefetch(l.plane(g, i + 1, c));
                                    prefetch(l.plane(x, i + 1, c));
                                }
                                (l.plane(g, i, c), l.plane(x, i, c))
                            });
                            sums[k] = grad_sums(planes, mean[c]);
                            sums[k]
                        } else {
                            (0.0, 0.0)
                        };
                        if dxs.is_empty() {
                            continue;
                        }
                        let (r, m) = (rstd[c], count as f64);
                        let gr = gamma.map_or(1.0, |w| w[c].to_f64()) * r;
                        // dx = γr·g − γr³·Σg(x − μ)/M·(x − μ) − γr·Σg/M (training).
                        let (b, cc) = if train {
                            (-gr * r * r * sgx / m, -gr * sg / m)
                        } else {
                            (0.0, 0.0)
                        };
                        // b·(x − μ) = b·(x − hi) − b·lo.
                        let (mu, lo) = split_mean(mean[c]);
                        let (a, b, cc) =
                            (T::from_f64(gr), T::from_f64(b), T::from_f64(cc - b * lo));
                        let dxs = &mut dxs[k * l.n..(k + 1) * l.n];
                        for i in 0..l.n {
                            if i + 1 < l.n {
                                prefetch(dxs[i + 1]);
                            }
                            input_grad(dxs[i], l.plane(g, i, c), l.plane(x, i, c), mu, a, b, cc);
                        }
                    }
                });
                let shape = Shape::from([l.c]);
                let dw = want_dw.then(|| {
                    let dw: Vec<f64> = sums.iter().zip(&rstd).map(|(s, r)| s.1 * r).collect();
                    tensor_from_f64(&dw, shape.clone())
                });
                let db = want_db.then(|| {
                    let db: Vec<f64> = sums.iter().map(|s| s.0).collect();
                    tensor_from_f64(&db, shape.clone())
                });
                let dx = dx.map(|dx| Tensor::from_parts(dx, ctx.inputs[0].shape().clone()));
                grads(dx, wi.map(|_| dw), bi.map(|_| db))
            },
            graph,
        );
        (y, stats)
    }

    /// Layer normalisation (PyTorch's `F.layer_norm`): the trailing dimensions
    /// of the input, which must equal `normalized_shape`, are normalised
    /// together for each leading index, `y = γ·(x − μ)/√(σ² + eps) + β` with the
    /// mean μ and biased variance σ² over those `M` values. `weight` (γ) and
    /// `bias` (β) have shape `normalized_shape` (elementwise affine).
    ///
    /// Backward, per set of `M` values, with `r = 1/√(σ² + eps)`,
    /// `x̂ = (x − μ)·r` and `d = γ·g`: `dx = r·(d − mean(d) − x̂·mean(d·x̂))`;
    /// `dγ = Σ g·x̂` and `dβ = Σ g` over the leading indices.
    ///
    /// Panics, naming `layer_norm` and the shapes, if `normalized_shape` is empty
    /// or not the input's trailing shape, or weight or bias does not have it.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![1.0, 3.0, 0.0, 10.0], [2, 2]).unwrap());
    /// let b = tape.leaf(Tensor::from_vec(vec![0.5, -0.5], [2]).unwrap());
    /// let y = x.layer_norm(&[2], None, Some(b), 0.0);
    /// assert_eq!(y.value().data(), &[-0.5, 0.5, -0.5, 0.5]);
    /// assert_eq!(y.sum().backward()[b].data(), &[2.0, 2.0]);
    /// ```
    #[track_caller]
    pub fn layer_norm(
        self,
        normalized_shape: &[usize],
        weight: Option<Var<'t, T>>,
        bias: Option<Var<'t, T>>,
        eps: f64,
    ) -> Var<'t, T> {
        let op = "layer_norm";
        let xv = self.value();
        let shape = xv.shape();
        let norm = Shape::from(normalized_shape);
        assert!(
            !normalized_shape.is_empty(),
            "{op}: normalized_shape {norm} must have at least one dimension (input {shape})"
        );
        assert!(
            shape.rank() >= norm.rank() && shape[shape.rank() - norm.rank()..] == norm[..],
            "{op}: normalized_shape {norm} is not the trailing shape of input {shape}"
        );
        let (wv, bv) = (weight.map(|w| w.value()), bias.map(|b| b.value()));
        let per = "normalized_shape";
        check_param(op, "weight", wv.as_ref(), &norm, shape, per);
        check_param(op, "bias", bv.as_ref(), &norm, shape, per);
        let m = norm.numel();
        let rows = shape.numel().checked_div(m).unwrap_or(0);
        let ones = || vec![T::ONE; m];
        let gamma = wv.as_ref().map_or_else(ones, |w| w.data().to_vec());
        let beta = bv
            .as_ref()
            .map_or_else(|| vec![T::ZERO; m], |b| b.data().to_vec());
        let x = xv.data();
        let mut mean = vec![0.0; rows];
        let mut rstd = vec![0.0; rows];
        // Every row is overwritten.
        let mut y = crate::buffer::scratch(xv.numel());
        let ranges = split_work(rows, m, MIN_PARALLEL_WORK);
        let jobs: Vec<_> = ranges
            .iter()
            .cloned()
            .zip(split_by(&mut y, &ranges, m))
            .zip(split_by(&mut mean, &ranges, 1))
            .zip(split_by(&mut rstd, &ranges, 1))
            .map(|(((r, y), mu), s)| (r, y, mu, s))
            .collect();
        run_jobs(jobs, |(rows, y, mean, rstd)| {
            for (k, (row, y)) in rows.zip(y.chunks_exact_mut(m)).enumerate() {
                let x = &x[row * m..][..m];
                let (mu, var) = moments(|| std::iter::once(x), m);
                (mean[k], rstd[k]) = (mu, 1.0 / (var + eps).sqrt());
                let (hi, lo) = split_mean::<T>(mu);
                let (lo, r) = (T::from_f64(lo), T::from_f64(rstd[k]));
                for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(&gamma).zip(&beta) {
                    *y = ((x - hi) - lo) * r * w + b;
                }
            }
        });
        let y = Tensor::from_parts(y, shape.clone());
        let (parents, wi, bi) = parents(self, weight, bias);
        let k = normalized_shape.len();
        let graph = graph_fn(move |ctx: &GraphCtx<'_, '_, T>| {
            let (w, b) = (wi.map(|i| ctx.inputs[i]), bi.map(|i| ctx.inputs[i]));
            let y = layer_norm_composite(ctx.inputs[0], k, w, b, eps);
            y.composite_grads(ctx.grad, ctx.inputs, ctx.needs_grad)
        });
        self.tape.record_differentiable(
            op,
            y,
            &parents,
            move |ctx| {
                let (x, g) = (ctx.inputs[0].data(), ctx.grad.data());
                let (want_dw, want_db) = (wants(ctx, wi), wants(ctx, bi));
                let dx = ctx.needs_grad[0].then(|| {
                    let mut dx = crate::buffer::scratch(x.len());
                    let gamma = wi.map(|i| ctx.inputs[i].data());
                    let ranges = split_work(rows, m, MIN_PARALLEL_WORK);
                    let jobs: Vec<_> = ranges
                        .iter()
                        .cloned()
                        .zip(split_by(&mut dx, &ranges, m))
                        .collect();
                    run_jobs(jobs, |(rows, dx)| {
                        for (row, dx) in rows.zip(dx.chunks_exact_mut(m)) {
                            let (g, x) = (&g[row * m..][..m], &x[row * m..][..m]);
                            let (mu, r) = (mean[row], rstd[row]);
                            layer_norm_row_grad(dx, g, x, gamma, mu, r);
                        }
                    });
                    Tensor::from_parts(dx, ctx.inputs[0].shape().clone())
                });
                // dγ and dβ, split by columns: each column sums its rows in order.
                let (mut dw, mut db) = (vec![0.0; m], vec![0.0; m]);
                if want_dw || want_db {
                    let ranges = split_work(m, rows, MIN_PARALLEL_WORK);
                    let jobs: Vec<_> = ranges
                        .iter()
                        .cloned()
                        .zip(split_by(&mut dw, &ranges, 1))
                        .zip(split_by(&mut db, &ranges, 1))
                        .map(|((r, w), b)| (r, w, b))
                        .collect();
                    run_jobs(jobs, |(cols, dw, db)| {
                        for row in 0..rows {
                            let (mu, r) = (mean[row], rstd[row]);
                            let g = &g[row * m..][cols.clone()];
                            let x = &x[row * m..][cols.clone()];
                            for (((dw, db), &g), &x) in
                                dw.iter_mut().zip(db.iter_mut()).zip(g).zip(x)
                            {
                                let g = g.to_f64();
                                *dw += g * (x.to_f64() - mu) * r;
                                *db += g;
                            }
                        }
                    });
                }
                let dw = want_dw.then(|| tensor_from_f64(&dw, norm.clone()));
                let db = want_db.then(|| tensor_from_f64(&db, norm.clone()));
                grads(dx, wi.map(|_| dw), bi.map(|_| db))
            },
            graph,
        )
    }

    /// Group normalisation (PyTorch's `F.group_norm`) of an `[N, C]` or
    /// `[N, C, *]` input: the C channels are cut into `groups` consecutive
    /// groups, and each (sample, group) is normalised with the mean μ and biased
    /// variance σ² of its `C/groups × spatial` values,
    /// `y = γ·(x − μ)/√(σ² + eps) + β`. `weight` (γ) and `bias` (β) have shape
    /// `[C]` (per channel).
    ///
    /// Backward, per (sample, group) of `M` values, with `r = 1/√(σ² + eps)`,
    /// `x̂ = (x − μ)·r` and `d = γ·g`: `dx = r·(d − mean(d) − x̂·mean(d·x̂))`;
    /// `dγ = Σ g·x̂` and `dβ = Σ g` over each channel's N·spatial values.
    ///
    /// Panics, naming `group_norm` and the shapes, if the input has rank below 2,
    /// `groups` is 0 or does not divide C, or weight or bias is not `[C]`.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// // One sample, 4 channels of 1 value, 2 groups: (1, 3) and (5, 9).
    /// let x = tape.leaf(Tensor::from_vec(vec![1.0, 3.0, 5.0, 9.0], [1, 4]).unwrap());
    /// let w = tape.leaf(Tensor::from_vec(vec![1.0, 1.0, 2.0, 2.0], [4]).unwrap());
    /// let y = x.group_norm(2, Some(w), None, 0.0);
    /// assert_eq!(y.value().data(), &[-1.0, 1.0, -2.0, 2.0]);
    /// assert_eq!(y.sum().backward()[w].data(), &[-1.0, 1.0, -1.0, 1.0]);
    /// ```
    #[track_caller]
    pub fn group_norm(
        self,
        groups: usize,
        weight: Option<Var<'t, T>>,
        bias: Option<Var<'t, T>>,
        eps: f64,
    ) -> Var<'t, T> {
        let op = "group_norm";
        let xv = self.value();
        let shape = xv.shape();
        let l = Planes::new(op, shape);
        assert!(
            groups >= 1,
            "{op}: groups must be at least 1, got 0 (input {shape})"
        );
        assert!(
            l.c.is_multiple_of(groups),
            "{op}: the {} channels of input {shape} are not divisible by {groups} groups",
            l.c
        );
        let (wv, bv) = (weight.map(|w| w.value()), bias.map(|b| b.value()));
        let per = "one per channel";
        let per_channel = Shape::from([l.c]);
        check_param(op, "weight", wv.as_ref(), &per_channel, shape, per);
        check_param(op, "bias", bv.as_ref(), &per_channel, shape, per);
        let gamma = values_f64(wv.as_ref(), l.c, 1.0);
        let beta = values_f64(bv.as_ref(), l.c, 0.0);
        // Blocks: one per (sample, group), `cpg` consecutive planes.
        let cpg = l.c / groups;
        let blocks = l.n * groups;
        let m = cpg * l.inner;
        let x = xv.data();
        let mut mean = vec![0.0; blocks];
        let mut rstd = vec![0.0; blocks];
        // Every block is overwritten.
        let mut y = crate::buffer::scratch(xv.numel());
        let ranges = split_work(blocks, m, MIN_PARALLEL_WORK);
        let jobs: Vec<_> = ranges
            .iter()
            .cloned()
            .zip(split_by(&mut y, &ranges, m))
            .zip(split_by(&mut mean, &ranges, 1))
            .zip(split_by(&mut rstd, &ranges, 1))
            .map(|(((r, y), mu), s)| (r, y, mu, s))
            .collect();
        run_jobs(jobs, |(range, y, mean, rstd)| {
            for (k, block) in range.enumerate() {
                let xb = &x[block * m..][..m];
                let (mu, var) = moments(|| std::iter::once(xb), m);
                (mean[k], rstd[k]) = (mu, 1.0 / (var + eps).sqrt());
                let (hi, lo) = split_mean::<T>(mu);
                let first = (block % groups) * cpg;
                let yb = &mut y[k * m..][..m];
                for (j, (y, x)) in yb
                    .chunks_exact_mut(l.inner.max(1))
                    .zip(xb.chunks_exact(l.inner.max(1)))
                    .enumerate()
                {
                    let c = first + j;
                    let scale = gamma[c] * rstd[k];
                    let shift = T::from_f64(beta[c] - lo * scale);
                    affine(y, x, hi, T::from_f64(scale), shift);
                }
            }
        });
        let y = Tensor::from_parts(y, shape.clone());
        let (parents, wi, bi) = parents(self, weight, bias);
        let graph = graph_fn(move |ctx: &GraphCtx<'_, '_, T>| {
            let (w, b) = (wi.map(|i| ctx.inputs[i]), bi.map(|i| ctx.inputs[i]));
            let y = group_norm_composite(ctx.inputs[0], groups, w, b, eps);
            y.composite_grads(ctx.grad, ctx.inputs, ctx.needs_grad)
        });
        self.tape.record_differentiable(
            op,
            y,
            &parents,
            move |ctx| {
                let (x, g) = (ctx.inputs[0].data(), ctx.grad.data());
                let (want_dw, want_db) = (wants(ctx, wi), wants(ctx, bi));
                let mut dx = ctx.needs_grad[0].then(|| crate::buffer::scratch(x.len()));
                // Per (sample, channel) plane: Σ g and Σ g·(x − μ).
                let mut sums = vec![(0.0, 0.0); l.n * l.c];
                let ranges = split_work(blocks, m, MIN_PARALLEL_WORK);
                let dx_parts: Vec<Option<&mut [T]>> = match dx.as_deref_mut() {
                    Some(dx) => split_by(dx, &ranges, m).into_iter().map(Some).collect(),
                    None => ranges.iter().map(|_| None).collect(),
                };
                let jobs: Vec<_> = ranges
                    .iter()
                    .cloned()
                    .zip(dx_parts)
                    .zip(split_by(&mut sums, &ranges, cpg))
                    .map(|((r, dx), s)| (r, dx, s))
                    .collect();
                run_jobs(jobs, |(range, mut dx, sums)| {
                    let inner = l.inner.max(1);
                    for (k, block) in range.enumerate() {
                        let (xb, gb) = (&x[block * m..][..m], &g[block * m..][..m]);
                        let (mu, r) = (mean[block], rstd[block]);
                        let first = (block % groups) * cpg;
                        // Σ d and Σ d·(x − μ) over the block, d = γ·g.
                        let (mut sd, mut sdx) = (0.0, 0.0);
                        let planes = gb.chunks_exact(inner).zip(xb.chunks_exact(inner));
                        for (j, (gp, xp)) in planes.enumerate() {
                            let s = grad_sums(std::iter::once((gp, xp)), mu);
                            sums[k * cpg + j] = s;
                            sd += gamma[first + j] * s.0;
                            sdx += gamma[first + j] * s.1;
                        }
                        let Some(dx) = dx.as_deref_mut() else {
                            continue;
                        };
                        let mf = m as f64;
                        let (b, cc) = (-r * r * r * sdx / mf, -r * sd / mf);
                        let (mu, lo) = split_mean(mu);
                        let (b, cc) = (T::from_f64(b), T::from_f64(cc - b * lo));
                        let dxb = &mut dx[k * m..][..m];
                        let planes = dxb
                            .chunks_exact_mut(inner)
                            .zip(gb.chunks_exact(inner))
                            .zip(xb.chunks_exact(inner));
                        for (j, ((dx, g), x)) in planes.enumerate() {
                            let a = T::from_f64(gamma[first + j] * r);
                            input_grad(dx, g, x, mu, a, b, cc);
                        }
                    }
                });
                // dγ_c = Σₙ r(n, group of c)·Σ g(x − μ), dβ_c = Σₙ Σ g, samples in order.
                let (mut dw, mut db) = (vec![0.0; l.c], vec![0.0; l.c]);
                for i in 0..l.n {
                    for c in 0..l.c {
                        let (sg, sgx) = sums[i * l.c + c];
                        dw[c] += sgx * rstd[i * groups + c / cpg];
                        db[c] += sg;
                    }
                }
                let shape = Shape::from([l.c]);
                let dw = want_dw.then(|| tensor_from_f64(&dw, shape.clone()));
                let db = want_db.then(|| tensor_from_f64(&db, shape.clone()));
                let dx = dx.map(|dx| Tensor::from_parts(dx, ctx.inputs[0].shape().clone()));
                grads(dx, wi.map(|_| dw), bi.map(|_| db))
            },
            graph,
        )
    }
}

/// The input gradient of one layer-norm row: with `d = γ·g`,
/// `dx = r·d − r³·Σd(x − μ)/M·(x − μ) − r·Σd/M`.
fn layer_norm_row_grad<T: Float>(
    dx: &mut [T],
    g: &[T],
    x: &[T],
    gamma: Option<&[T]>,
    mean: f64,
    r: f64,
) {
    let m = x.len() as f64;
    let (sd, sdx) = match gamma {
        Some(w) => {
            // Σ d and Σ d·(x − μ), d = γ·g, in interleaved f64 partial sums.
            let (mut sd, mut sdx) = (Acc::ZERO, Acc::ZERO);
            for ((g, w), x) in g.chunks(LANES).zip(w.chunks(LANES)).zip(x.chunks(LANES)) {
                for l in 0..g.len() {
                    let d = g[l].to_f64() * w[l].to_f64();
                    sd.0[l] += d;
                    sdx.0[l] += d * (x[l].to_f64() - mean);
                }
            }
            (sd.total(), sdx.total())
        }
        None => grad_sums(std::iter::once((g, x)), mean),
    };
    let (b, c) = (-r * r * r * sdx / m, -r * sd / m);
    let (mu, lo) = split_mean(mean);
    let (b, c, rt) = (T::from_f64(b), T::from_f64(c - b * lo), T::from_f64(r));
    match gamma {
        Some(w) => {
            for (((dx, &g), &x), &w) in dx.iter_mut().zip(g).zip(x).zip(w) {
                *dx = rt * w * g + b * (x - mu) + c;
            }
        }
        None => input_grad(dx, g, x, mu, rt, b, c),
    }
}

/// `(x − μ)/√(σ² + eps)` over `axes` (kept as size 1), with the biased variance.
fn normalize<'t, T: Float>(x: Var<'t, T>, axes: &[isize], eps: f64) -> Var<'t, T> {
    let d = x - x.mean_axes(axes, true);
    let var = (d * d).mean_axes(axes, true);
    d * (var + T::from_f64(eps)).powf(T::from_f64(-0.5))
}

/// `y·w + b` with `w` and `b` reshaped to `shape` (for broadcasting), each if given.
fn scale_shift<'t, T: Float>(
    y: Var<'t, T>,
    w: Option<Var<'t, T>>,
    b: Option<Var<'t, T>>,
    shape: &[usize],
) -> Var<'t, T> {
    let y = match w {
        Some(w) => y * w.reshape(shape),
        None => y,
    };
    match b {
        Some(b) => y + b.reshape(shape),
        None => y,
    }
}

/// Batch norm rebuilt from twice-differentiable ops (its graph backward):
/// statistics over every axis but 1, or the given running statistics.
fn batch_norm_composite<'t, T: Float>(
    x: Var<'t, T>,
    w: Option<Var<'t, T>>,
    b: Option<Var<'t, T>>,
    running: Option<&(Tensor<T>, Tensor<T>)>,
    eps: f64,
) -> Var<'t, T> {
    let s = x.shape();
    let mut pshape = vec![1; s.rank()];
    pshape[1] = s[1];
    let y = match running {
        None => {
            let axes: Vec<isize> = (0..s.rank() as isize).filter(|&a| a != 1).collect();
            normalize(x, &axes, eps)
        }
        Some((m, v)) => {
            let tape = x.tape();
            let m = tape.constant(m.reshape(&pshape[..]));
            let r = v
                .reshape(&pshape[..])
                .map(|v| T::ONE / (v + T::from_f64(eps)).sqrt());
            (x - m) * tape.constant(r)
        }
    };
    scale_shift(y, w, b, &pshape)
}

/// Layer norm over the trailing `k` axes, rebuilt from twice-differentiable ops.
fn layer_norm_composite<'t, T: Float>(
    x: Var<'t, T>,
    k: usize,
    w: Option<Var<'t, T>>,
    b: Option<Var<'t, T>>,
    eps: f64,
) -> Var<'t, T> {
    let s = x.shape();
    let r = s.rank();
    let axes: Vec<isize> = ((r - k) as isize..r as isize).collect();
    scale_shift(normalize(x, &axes, eps), w, b, &s[r - k..])
}

/// Group norm rebuilt from twice-differentiable ops.
fn group_norm_composite<'t, T: Float>(
    x: Var<'t, T>,
    groups: usize,
    w: Option<Var<'t, T>>,
    b: Option<Var<'t, T>>,
    eps: f64,
) -> Var<'t, T> {
    let s = x.shape();
    let (n, c) = (s[0], s[1]);
    let rest = s.numel() / (n * groups).max(1);
    let y = normalize(x.reshape([n, groups, rest]), &[2], eps).reshape(s.clone());
    let mut pshape = vec![1; s.rank()];
    pshape[1] = c;
    scale_shift(y, w, b, &pshape)
}

#[cfg(test)]
mod tests {
    use super::{Planes, moments, split_mean};

    #[test]
    fn moments_are_exact_far_from_zero() {
        // 1e4 + k/8 for k < 1000 (exact in f32): mean 1e4 + 999/16, variance (1000² − 1)/(12·64).
        let x: Vec<f32> = (0..1000).map(|k| 1e4 + k as f32 / 8.0).collect();
        let (mean, var) = moments(|| x.chunks(37), x.len());
        assert_eq!(mean, 1e4 + 999.0 / 16.0);
        let want = (1e6 - 1.0) / (12.0 * 64.0);
        assert!((var - want).abs() <= 1e-12 * want, "{var} vs {want}");
        // A mean that f32 cannot hold: the remainder keeps it.
        let (hi, lo) = split_mean::<f32>(mean + 1e-3);
        assert_eq!(hi as f64 + lo, mean + 1e-3);
    }

    #[test]
    fn planes_are_grouped_by_channel() {
        let l = Planes {
            n: 2,
            c: 3,
            inner: 2,
        };
        let mut out: Vec<usize> = (0..12).collect();
        let ranges = [0..2, 2..3];
        let groups = l.by_channel(Some(&mut out), &ranges);
        let firsts: Vec<Vec<usize>> = groups
            .iter()
            .map(|g| g.iter().map(|p| p[0]).collect())
            .collect();
        // Channel 0 (samples 0, 1), channel 1, then channel 2.
        assert_eq!(firsts, vec![vec![0, 6, 2, 8], vec![4, 10]]);
        assert!(
            l.by_channel::<usize>(None, &ranges)
                .iter()
                .all(Vec::is_empty)
        );
    }
}
