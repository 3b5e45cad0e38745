//! Matrix products: `matmul` (2-D, batched 3-D, 3-D by 2-D) and the fused `linear`.
//!
//! For Y = A·B: dA = dY·Bᵀ and dB = Aᵀ·dY. Transposes are never materialised:
//! the GEMM takes strides.

use crate::shape::Shape;
use crate::tape::{GraphCtx, GraphGrads, graph_fn, two};
use crate::{Float, Tensor, Var};

/// `C (m×n) = A (m×k) · B (k×n)` for row-major slices, optionally transposed via strides.
#[allow(clippy::too_many_arguments)]
#[inline]
fn mm<T: Float>(m: usize, n: usize, k: usize, a: &[T], ta: bool, b: &[T], tb: bool, c: &mut [T]) {
    // A stored as m×k (ta = false) or as k×m (ta = true); same for B.
    let (rsa, csa) = if ta { (1, m) } else { (k, 1) };
    let (rsb, csb) = if tb { (1, k) } else { (n, 1) };
    T::gemm(m, n, k, T::ONE, a, rsa, csa, b, rsb, csb, T::ZERO, c, n);
}

/// Which matmul form two shapes make: (batch, m, k, n, b_is_batched).
#[track_caller]
fn matmul_dims(a: &Shape, b: &Shape) -> (usize, usize, usize, usize, bool) {
    // A macro, not a closure: a closure's panic would point here, not at the caller.
    macro_rules! bad {
        ($why:expr) => {
            panic!("matmul: {a} × {b}: {}", $why)
        };
    }
    let (batch, m, k, n, bb) = match (a.rank(), b.rank()) {
        (2, 2) => (1, a[0], a[1], b[1], false),
        (3, 3) => {
            if a[0] != b[0] {
                bad!(&format!("batch sizes {} and {} differ", a[0], b[0]));
            }
            (a[0], a[1], a[2], b[2], true)
        }
        (3, 2) => (a[0], a[1], a[2], b[1], false),
        _ => bad!("expected 2-D × 2-D, 3-D × 3-D or 3-D × 2-D"),
    };
    let kb = if b.rank() == 3 { b[1] } else { b[0] };
    if k != kb {
        bad!(&format!("inner dimensions {k} and {kb} differ"));
    }
    (batch, m, k, n, bb)
}

impl<'t, T: Float> Var<'t, T> {
    /// Matrix product. `[m, k] × [k, n] → [m, n]`; batched `[b, m, k] × [b, k, n] → [b, m, n]`;
    /// `[b, m, k] × [k, n] → [b, m, n]` (the same matrix for every batch entry).
    ///
    /// Backward: dA = dY·Bᵀ, dB = Aᵀ·dY (summed over the batch when B is shared).
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let a = tape.leaf(Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], [2, 2]).unwrap());
    /// let b = tape.leaf(Tensor::from_vec(vec![1.0, 0.0, 0.0, 1.0], [2, 2]).unwrap());
    /// assert_eq!(a.matmul(b).value().data(), &[1.0, 2.0, 3.0, 4.0]);
    /// ```
    #[track_caller]
    pub fn matmul(self, other: Var<'t, T>) -> Var<'t, T> {
        let (av, bv) = (self.value(), other.value());
        let (batch, m, k, n, b_batched) = matmul_dims(av.shape(), bv.shape());
        let out_shape: Shape = if av.rank() == 2 {
            Shape::from([m, n])
        } else {
            Shape::from([batch, m, n])
        };
        let mut y = crate::buffer::full(batch * m * n, T::ZERO);
        if b_batched {
            for i in 0..batch {
                let (a, b) = (
                    &av.data()[i * m * k..][..m * k],
                    &bv.data()[i * k * n..][..k * n],
                );
                mm(m, n, k, a, false, b, false, &mut y[i * m * n..][..m * n]);
            }
        } else {
            // A shared B: the batch folds into the rows.
            mm(batch * m, n, k, av.data(), false, bv.data(), false, &mut y);
        }
        let y = Tensor::from_parts(y, out_shape);
        let graph = graph_fn(move |ctx: &GraphCtx<'_, '_, T>| {
            let (a, b, g) = (ctx.inputs[0], ctx.inputs[1], ctx.grad);
            let da = ctx.needs_grad[0].then(|| g.matmul(b.transpose(-2, -1)));
            let db = ctx.needs_grad[1].then(|| {
                if b_batched || a.shape().rank() == 2 {
                    a.transpose(-2, -1).matmul(g)
                } else {
                    // A shared B: the batch folds into the rows.
                    let a2 = a.reshape([batch * m, k]).transpose(0, 1);
                    a2.matmul(g.reshape([batch * m, n]))
                }
            });
            let mut v = GraphGrads::new();
            v.extend([da, db]);
            v
        });
        self.tape.record_differentiable(
            "matmul",
            y,
            &[self, other],
            move |ctx| {
                let (a, b, g) = (ctx.inputs[0], ctx.inputs[1], ctx.grad.data());
                let da = ctx.needs_grad[0].then(|| {
                    let mut da = crate::buffer::full(batch * m * k, T::ZERO);
                    if b_batched {
                        for i in 0..batch {
                            let b = &b.data()[i * k * n..][..k * n];
                            mm(
                                m,
                                k,
                                n,
                                &g[i * m * n..][..m * n],
                                false,
                                b,
                                true,
                                &mut da[i * m * k..][..m * k],
                            );
                        }
                    } else {
                        mm(batch * m, k, n, g, false, b.data(), true, &mut da);
                    }
                    Tensor::from_parts(da, a.shape().clone())
                });
                let db = ctx.needs_grad[1].then(|| {
                    let mut db = crate::buffer::full(b.numel(), T::ZERO);
                    if b_batched {
                        for i in 0..batch {
                            let a = &a.data()[i * m * k..][..m * k];
                            mm(
                                k,
                                n,
                                m,
                                a,
                                true,
                                &g[i * m * n..][..m * n],
                                false,
                                &mut db[i * k * n..][..k * n],
                            );
                        }
                    } else {
                        mm(k, n, batch * m, a.data(), true, g, false, &mut db);
                    }
                    Tensor::from_parts(db, b.shape().clone())
                });
                two(da, db)
            },
            graph,
        )
    }

    /// A fully connected layer: `y = x·Wᵀ + b` with x `[N, in]`, W `[out, in]`
    /// (PyTorch's layout), optional b `[out]`.
    ///
    /// Backward: dx = dy·W, dW = dyᵀ·x, db = Σₙ dy.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.constant(Tensor::ones([1, 3]));
    /// let w = tape.leaf(Tensor::ones([2, 3]));
    /// let b = tape.leaf(Tensor::from_vec(vec![0.5, -0.5], [2]).unwrap());
    /// assert_eq!(x.linear(w, Some(b)).value().data(), &[3.5, 2.5]);
    /// ```
    #[track_caller]
    pub fn linear(self, weight: Var<'t, T>, bias: Option<Var<'t, T>>) -> Var<'t, T> {
        let (xv, wv) = (self.value(), weight.value());
        let (xs, ws) = (xv.shape(), wv.shape());
        assert!(
            xs.rank() == 2 && ws.rank() == 2 && xs[1] == ws[1],
            "linear: input {xs} and weight {ws} do not fit: expected [N, in] and [out, in]"
        );
        let (n, inf, outf) = (xs[0], xs[1], ws[0]);
        let mut y = crate::buffer::full(n * outf, T::ZERO);
        mm(n, outf, inf, xv.data(), false, wv.data(), true, &mut y);
        let mut parents = vec![self, weight];
        if let Some(b) = bias {
            let bv = b.value();
            assert!(
                bv.shape()[..] == [outf],
                "linear: bias {} does not match weight {ws}: expected [{outf}]",
                bv.shape()
            );
            for row in y.chunks_exact_mut(outf.max(1)) {
                for (v, &bb) in row.iter_mut().zip(bv.data()) {
                    *v += bb;
                }
            }
            parents.push(b);
        }
        let y = Tensor::from_parts(y, Shape::from([n, outf]));
        let graph = graph_fn(move |ctx: &GraphCtx<'_, '_, T>| {
            let (x, w, g) = (ctx.inputs[0], ctx.inputs[1], ctx.grad);
            let mut v = GraphGrads::new();
            v.push(ctx.needs_grad[0].then(|| g.matmul(w)));
            v.push(ctx.needs_grad[1].then(|| g.transpose(0, 1).matmul(x)));
            if ctx.inputs.len() == 3 {
                v.push(ctx.needs_grad[2].then(|| g.sum_to([outf])));
            }
            v
        });
        self.tape.record_differentiable(
            "linear",
            y,
            &parents,
            move |ctx| {
                let (x, w, g) = (ctx.inputs[0], ctx.inputs[1], ctx.grad.data());
                let dx = ctx.needs_grad[0].then(|| {
                    let mut dx = crate::buffer::full(n * inf, T::ZERO);
                    mm(n, inf, outf, g, false, w.data(), false, &mut dx);
                    Tensor::from_parts(dx, x.shape().clone())
                });
                let dw = ctx.needs_grad[1].then(|| {
                    let mut dw = crate::buffer::full(outf * inf, T::ZERO);
                    mm(outf, inf, n, g, true, x.data(), false, &mut dw);
                    Tensor::from_parts(dw, w.shape().clone())
                });
                let mut out = two(dx, dw);
                if ctx.inputs.len() == 3 {
                    out.push(ctx.needs_grad[2].then(|| ctx.grad.sum_to([outf])));
                }
                out
            },
            graph,
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::{Tape, Tensor};

    #[test]
    #[should_panic(expected = "matmul: [2, 3] × [4, 5]: inner dimensions 3 and 4 differ")]
    fn matmul_names_both_shapes() {
        let tape = Tape::<f32>::new();
        let a = tape.leaf(Tensor::zeros([2, 3]));
        let b = tape.leaf(Tensor::zeros([4, 5]));
        let _ = a.matmul(b);
    }
}
