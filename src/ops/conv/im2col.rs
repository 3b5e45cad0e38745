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
use crate::Float;
use std::any::Any;
use std::cell::RefCell;

thread_local! {
    /// One reusable buffer per element type (`Vec<f32>`, `Vec<f64>`), boxed as `Any`.
    static SCRATCH: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a thread-local buffer of `len` elements with unspecified contents.
/// The buffer is taken out of the cache while in use, so nested calls are fine.
fn with_scratch<T: Float, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    let cached = SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let i = s.iter().position(|b| b.is::<Vec<T>>())?;
        s.swap_remove(i).downcast::<Vec<T>>().ok()
    });
    let mut buf: Box<Vec<T>> = cached.unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, T::ZERO);
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|s| s.borrow_mut().push(buf));
    r
}

/// A strided read-only matrix view: element (i, j) is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
struct MatRef<'a, T> {
    data: &'a [T],
    rs: usize,
    cs: usize,
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
fn gemm<T: Float>(
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
fn input_block(geom: &Conv2dGeometry, n: usize, g: usize) -> std::ops::Range<usize> {
    let (cg, hw) = (geom.in_per_group(), geom.in_hw());
    let start = (n * geom.in_channels + g * cg) * hw;
    start..start + cg * hw
}

/// The output channels of group `g` of sample `n`: `[O/G, out_h, out_w]`, contiguous.
fn output_block(geom: &Conv2dGeometry, n: usize, g: usize) -> std::ops::Range<usize> {
    let (og, hw) = (geom.out_per_group(), geom.out_hw());
    let start = (n * geom.out_channels + g * og) * hw;
    start..start + og * hw
}

/// The weight rows of group `g` as the `O/G × patch_len` matrix `W_g` (in place).
fn weight_block<'a, T>(geom: &Conv2dGeometry, w: &'a [T], g: usize) -> MatRef<'a, T> {
    let (og, ckk) = (geom.out_per_group(), geom.patch_len());
    MatRef::rows(&w[g * og * ckk..][..og * ckk], ckk)
}

/// The one walk over the column matrix of a (sample, group), shared by [`im2col`]
/// and [`col2im`]. For each row and each output row `i` it reports runs:
/// `visit(col, len, Some(x))` — entries `col + t` (t < len) read the group input at
/// `x + t·stride_w`; `visit(col, len, None)` — `len` entries of padding.
fn for_each_run(geom: &Conv2dGeometry, mut visit: impl FnMut(usize, usize, Option<usize>)) {
    let (ow, ohw) = (geom.out_w(), geom.out_hw());
    let (ih, iw) = (geom.h.input, geom.w.input);
    let mut row = 0;
    for c in 0..geom.in_per_group() {
        for ki in 0..geom.h.kernel {
            for kj in 0..geom.w.kernel {
                let js = geom.w.valid_outputs(kj);
                let first = geom.w.input_index(js.start, kj);
                for i in 0..geom.out_h() {
                    let at = row * ohw + i * ow;
                    match (geom.h.input_index(i, ki), first) {
                        (Some(r), Some(s)) if !js.is_empty() => {
                            if js.start > 0 {
                                visit(at, js.start, None);
                            }
                            visit(at + js.start, js.len(), Some((c * ih + r) * iw + s));
                            if js.end < ow {
                                visit(at + js.end, ow - js.end, None);
                            }
                        }
                        _ => visit(at, ow, None),
                    }
                }
                row += 1;
            }
        }
    }
}

/// Fills the column matrix `cols` (`patch_len × out_hw`) from a group input `x` (`[C/G, H, W]`).
fn im2col<T: Float>(geom: &Conv2dGeometry, x: &[T], cols: &mut [T]) {
    let sw = geom.w.stride;
    for_each_run(geom, |at, len, src| {
        let dst = &mut cols[at..at + len];
        match src {
            Some(s) if sw == 1 => dst.copy_from_slice(&x[s..s + len]),
            Some(s) => {
                for (t, d) in dst.iter_mut().enumerate() {
                    *d = x[s + t * sw];
                }
            }
            None => dst.fill(T::ZERO),
        }
    });
}

/// The adjoint of [`im2col`]: adds each entry of `cols` into the input pixel it was read from.
fn col2im<T: Float>(geom: &Conv2dGeometry, cols: &[T], dx: &mut [T]) {
    let sw = geom.w.stride;
    for_each_run(geom, |at, len, src| {
        if let Some(s) = src {
            for (t, &v) in cols[at..at + len].iter().enumerate() {
                dx[s + t * sw] += v;
            }
        }
    });
}

/// The column matrix of a group input: the input itself for a pointwise conv,
/// else im2col into `scratch`.
fn columns<'a, T: Float>(geom: &Conv2dGeometry, x: &'a [T], scratch: &'a mut [T]) -> &'a [T] {
    if geom.is_pointwise() {
        x
    } else {
        im2col(geom, x, scratch);
        scratch
    }
}

/// Length of the column scratch buffer (none for a pointwise conv).
fn cols_len(geom: &Conv2dGeometry) -> usize {
    if geom.is_pointwise() {
        0
    } else {
        geom.patch_len() * geom.out_hw()
    }
}

/// Forward: `Y_ng = W_g · cols_ng` for every sample and group, plus the bias.
pub(super) fn forward<T: Float>(
    geom: &Conv2dGeometry,
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
) -> Vec<T> {
    let (og, ckk, ohw) = (geom.out_per_group(), geom.patch_len(), geom.out_hw());
    let mut y = vec![T::ZERO; geom.output_shape().iter().product()];
    with_scratch(cols_len(geom), |scratch: &mut [T]| {
        for n in 0..geom.batch {
            for g in 0..geom.groups {
                let cols = columns(geom, &x[input_block(geom, n, g)], scratch);
                let out = &mut y[output_block(geom, n, g)];
                gemm(
                    og,
                    ohw,
                    ckk,
                    weight_block(geom, w, g),
                    MatRef::rows(cols, ohw),
                    T::ZERO,
                    out,
                    ohw,
                );
            }
        }
    });
    if let Some(b) = b {
        for (p, plane) in y.chunks_exact_mut(ohw).enumerate() {
            let bias = b[p % geom.out_channels];
            plane.iter_mut().for_each(|v| *v += bias);
        }
    }
    y
}

/// dW: `dW_g = Σ_n dY_ng · cols_ngᵀ` (the column matrix is rebuilt, not stored by the forward pass).
pub(super) fn backward_weight<T: Float>(geom: &Conv2dGeometry, x: &[T], dy: &[T]) -> Vec<T> {
    let (og, ckk, ohw) = (geom.out_per_group(), geom.patch_len(), geom.out_hw());
    let mut dw = vec![T::ZERO; geom.out_channels * ckk];
    with_scratch(cols_len(geom), |scratch: &mut [T]| {
        for n in 0..geom.batch {
            let beta = if n == 0 { T::ZERO } else { T::ONE };
            for g in 0..geom.groups {
                let cols = columns(geom, &x[input_block(geom, n, g)], scratch);
                let dyg = MatRef::rows(&dy[output_block(geom, n, g)], ohw);
                let dwg = &mut dw[g * og * ckk..][..og * ckk];
                gemm(
                    og,
                    ckk,
                    ohw,
                    dyg,
                    MatRef::rows(cols, ohw).t(),
                    beta,
                    dwg,
                    ckk,
                );
            }
        }
    });
    dw
}

/// dX: `dcols = W_gᵀ · dY_ng`, scattered back by col2im (written directly when pointwise).
pub(super) fn backward_input<T: Float>(geom: &Conv2dGeometry, w: &[T], dy: &[T]) -> Vec<T> {
    let (og, ckk, ohw) = (geom.out_per_group(), geom.patch_len(), geom.out_hw());
    let mut dx = vec![T::ZERO; geom.input_shape().iter().product()];
    with_scratch(cols_len(geom), |dcols: &mut [T]| {
        for n in 0..geom.batch {
            for g in 0..geom.groups {
                let wgt = weight_block(geom, w, g).t();
                let dyg = MatRef::rows(&dy[output_block(geom, n, g)], ohw);
                let dxg = &mut dx[input_block(geom, n, g)];
                if geom.is_pointwise() {
                    gemm(ckk, ohw, og, wgt, dyg, T::ZERO, dxg, ohw);
                } else {
                    gemm(ckk, ohw, og, wgt, dyg, T::ZERO, dcols, ohw);
                    col2im(geom, dcols, dxg);
                }
            }
        }
    });
    dx
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
        let c: Vec<f64> = (0..cols_len(&geom))
            .map(|i| ((i * 13) % 7) as f64 - 3.0)
            .collect();
        let mut cols = vec![f64::NAN; cols_len(&geom)]; // im2col must overwrite everything
        im2col(&geom, &x, &mut cols);
        let mut back = vec![0.0; x.len()];
        col2im(&geom, &c, &mut back);
        let lhs: f64 = cols.iter().zip(&c).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
        assert_eq!(lhs, rhs);
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
