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
mod reduce;
pub mod resample;
mod reshape;
pub(crate) mod select;
mod softmax;
mod unary;
