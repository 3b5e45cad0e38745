//! The differentiable ops. Each module adds methods to [`Var`](crate::Var) and holds,
//! side by side, each op's forward computation, its local-gradient closure and its
//! derivative (in the doc comment). Adding an op means adding a method here that calls
//! [`Tape::record`](crate::Tape::record); nothing else in the crate changes.

mod activation;
mod arith;
pub mod conv;
mod dropout;
pub(crate) mod loss;
mod matmul;
pub mod norm;
pub mod pool;
pub(crate) mod reduce;
pub mod resample;
mod reshape;
pub(crate) mod select;
mod softmax;
mod unary;

use crate::tape::one;
use crate::{Float, Tensor, Var};
use std::sync::Arc;

/// A map on tensors, linear in its argument.
type Map<T> = Arc<dyn Fn(&Tensor<T>) -> Tensor<T>>;

/// A linear map and its adjoint, for ops whose backward is linear in the
/// output gradient (pooling, resampling, padding, slicing): recorded with
/// [`apply_linear`], the map's gradient is its adjoint and the adjoint's is
/// the map, so such an op differentiates to any order with no more code than
/// its forward and backward kernels.
#[derive(Clone)]
pub(crate) struct LinearMap<T: Float> {
    op: &'static str,
    apply: Map<T>,
    adjoint_op: &'static str,
    adjoint: Map<T>,
}

impl<T: Float> LinearMap<T> {
    /// The map `apply` (recorded as `op`) with adjoint `adjoint` (recorded as `adjoint_op`).
    pub(crate) fn new(
        op: &'static str,
        apply: impl Fn(&Tensor<T>) -> Tensor<T> + 'static,
        adjoint_op: &'static str,
        adjoint: impl Fn(&Tensor<T>) -> Tensor<T> + 'static,
    ) -> Self {
        LinearMap {
            op,
            apply: Arc::new(apply),
            adjoint_op,
            adjoint: Arc::new(adjoint),
        }
    }

    /// The adjoint, as a map whose adjoint is this one.
    fn transposed(&self) -> Self {
        LinearMap {
            op: self.adjoint_op,
            apply: self.adjoint.clone(),
            adjoint_op: self.op,
            adjoint: self.apply.clone(),
        }
    }
}

/// Records `map(x)`, differentiable to any order.
pub(crate) fn apply_linear<'t, T: Float>(x: Var<'t, T>, map: &LinearMap<T>) -> Var<'t, T> {
    let y = (map.apply)(&x.value());
    let (first, graph) = (map.clone(), map.transposed());
    x.tape().record_differentiable(
        map.op,
        y,
        &[x],
        move |ctx| one((first.adjoint)(ctx.grad)),
        move |ctx| reduce::graph_one(apply_linear(ctx.grad, &graph)),
    )
}

/// Records an op whose value is `value` (computed from `x`) and whose
/// backward is the linear map `backward` of the output gradient (with its
/// adjoint, the forward's linear part): first order through the kernel,
/// any higher order through [`apply_linear`].
pub(crate) fn record_linear_backward<'t, T: Float>(
    x: Var<'t, T>,
    op: &'static str,
    value: Tensor<T>,
    backward: LinearMap<T>,
) -> Var<'t, T> {
    let first = backward.clone();
    x.tape().record_differentiable(
        op,
        value,
        &[x],
        move |ctx| one((first.apply)(ctx.grad)),
        move |ctx| reduce::graph_one(apply_linear(ctx.grad, &backward)),
    )
}
