//! Derivatives of any order, built on [`Var::grad_graph`]: Hessian-vector
//! products, full Hessians and Jacobians of small functions (by rows, as
//! JAX's `jacrev`), and the second-derivative check
//! [`gradgradcheck`](crate::gradcheck::gradgradcheck) lives in `gradcheck`.
//!
//! `grad_graph` returns gradients as ordinary nodes on the same tape, so any
//! of these can also be written by hand: take the gradient as a graph,
//! combine it with other ops, and call `backward()` (or `grad_graph` again).
//!
//! ```
//! use tapegrad::{Tape, Tensor};
//! // A gradient penalty (WGAN-GP): (‖∂D/∂x‖ − 1)², trained with backward().
//! let tape = Tape::<f64>::new();
//! let w = tape.leaf(Tensor::from_vec(vec![0.5, -2.0], [2, 1]).unwrap());
//! let x = tape.leaf(Tensor::from_vec(vec![1.0, 2.0], [1, 2]).unwrap());
//! let d = x.matmul(w).tanh().sum();                     // a tiny critic D(x)
//! let gx = d.grad_graph(&[x])[0];                       // ∂D/∂x, a Var
//! let penalty = ((gx * gx).sum().sqrt() - 1.0).powf(2.0);
//! let g = penalty.backward();
//! assert_eq!(g[w].shape(), w.value().shape());          // the penalty trains the critic
//! ```

use crate::{Float, Tape, Tensor, Var};

/// The Hessian-vector product of a scalar function at `x` along `v`:
/// returns `(f(x), ∇f(x), H(x)·v)`, with one forward, one graph backward and
/// one backward (never the whole Hessian).
///
/// ```
/// use tapegrad::{higher::hvp, Tensor};
/// // f(x) = Σ xᵢ³: ∇f = 3x², H = diag(6x).
/// let x = Tensor::from_vec(vec![1.0, 2.0], [2]).unwrap();
/// let v = Tensor::from_vec(vec![1.0, 1.0], [2]).unwrap();
/// let (f, g, hv) = hvp(|x| (x * x * x).sum(), &x, &v);
/// assert_eq!(f, 9.0);
/// assert_eq!(g.data(), &[3.0, 12.0]);
/// assert_eq!(hv.data(), &[6.0, 12.0]);
/// ```
pub fn hvp<T: Float>(
    f: impl for<'t> Fn(Var<'t, T>) -> Var<'t, T>,
    x: &Tensor<T>,
    v: &Tensor<T>,
) -> (T, Tensor<T>, Tensor<T>) {
    assert!(
        x.shape() == v.shape(),
        "hvp: x {} and v {} must have the same shape",
        x.shape(),
        v.shape()
    );
    let tape = Tape::new();
    let xv = tape.leaf(x.clone());
    let y = scalar_output("hvp", f(xv));
    let g = y.grad_graph(&[xv])[0];
    let gv = (g * tape.constant(v.clone())).sum();
    let hv = grad_or_zeros(gv, xv);
    (y.value().item(), g.value(), hv)
}

/// The Hessian of a scalar function at `x`, as an `[n, n]` tensor (n the
/// number of elements of `x`): one graph backward, then one backward per row.
///
/// ```
/// use tapegrad::{higher::hessian, Tensor};
/// // f(v) = (Σ vᵢ)³: every second derivative is 6·Σ vᵢ.
/// let v = Tensor::from_vec(vec![1.0, 2.0], [2]).unwrap();
/// let h = hessian(|v| v.sum().powf(3.0), &v);
/// assert_eq!(h.data(), &[18.0; 4]);
/// ```
pub fn hessian<T: Float>(f: impl for<'t> Fn(Var<'t, T>) -> Var<'t, T>, x: &Tensor<T>) -> Tensor<T> {
    let n = x.numel();
    let tape = Tape::new();
    let xv = tape.leaf(x.clone());
    let y = scalar_output("hessian", f(xv));
    let g = y.grad_graph(&[xv])[0];
    let mut rows = Vec::with_capacity(n * n);
    for i in 0..n {
        let mut e = vec![T::ZERO; n];
        e[i] = T::ONE;
        let seed = Tensor::from_vec(e, x.shape().clone()).expect("n values");
        let gi = (g * tape.constant(seed)).sum();
        rows.extend_from_slice(grad_or_zeros(gi, xv).data());
    }
    Tensor::from_vec(rows, [n, n]).expect("n·n values")
}

/// The Jacobian of `f` at `x`, as an `[m, n]` tensor (m elements out, n in),
/// by rows: one forward and one backward per output element (reverse mode,
/// JAX's `jacrev`).
///
/// ```
/// use tapegrad::{higher::jacobian, Tensor};
/// // f(x) = x ⊙ x: J = diag(2x).
/// let x = Tensor::from_vec(vec![2.0, 3.0], [2]).unwrap();
/// let j = jacobian(|x| x * x, &x);
/// assert_eq!(j.data(), &[4.0, 0.0, 0.0, 6.0]);
/// ```
pub fn jacobian<T: Float>(
    f: impl for<'t> Fn(Var<'t, T>) -> Var<'t, T>,
    x: &Tensor<T>,
) -> Tensor<T> {
    let n = x.numel();
    let tape = Tape::new();
    let xv = tape.leaf(x.clone());
    let y = f(xv);
    let out_shape = y.shape();
    let m = out_shape.numel();
    let mut rows = Vec::with_capacity(m * n);
    for i in 0..m {
        let mut e = vec![T::ZERO; m];
        e[i] = T::ONE;
        let seed = Tensor::from_vec(e, out_shape.clone()).expect("m values");
        let g = y.backward_with(seed);
        match g.get(xv) {
            Some(row) => rows.extend_from_slice(row.data()),
            None => rows.extend(std::iter::repeat_n(T::ZERO, n)),
        }
    }
    Tensor::from_vec(rows, [m, n]).expect("m·n values")
}

/// Checks that `y` is a one-element output.
fn scalar_output<'t, T: Float>(op: &str, y: Var<'t, T>) -> Var<'t, T> {
    let s = y.shape();
    assert!(
        s.numel() == 1,
        "{op}: the function must return a scalar, got shape {s}"
    );
    y
}

/// The gradient of `y` with respect to `x`, zeros if `y` does not depend on it.
fn grad_or_zeros<T: Float>(y: Var<'_, T>, x: Var<'_, T>) -> Tensor<T> {
    if !y.requires_grad() {
        return Tensor::zeros(x.shape());
    }
    y.backward()
        .get(x)
        .cloned()
        .unwrap_or_else(|| Tensor::zeros(x.shape()))
}
