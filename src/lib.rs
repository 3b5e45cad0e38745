#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod buffer;
mod error;
mod float;
mod ops;
mod shape;
mod simd;
mod tape;
mod tensor;
mod threads;

pub mod data;
pub mod gemm;
pub mod gradcheck;
pub mod io;

pub use error::{Error, Result};
pub use float::Float;
pub use ops::{conv, conv::Conv2dOptions, conv::Pair, pool::Pool2dOptions};
pub use shape::Shape;
pub use tape::{BackwardCtx, BackwardFn, BackwardOptions, Gradients, ParentGrads, Tape, Var};
pub use tensor::Tensor;

pub mod nn;
pub mod optim;
