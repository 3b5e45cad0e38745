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
pub use ops::{
    conv, conv::Conv2dOptions, conv::ConvTranspose2dOptions, conv::Pair, norm::BatchStats,
    pool::Pool2dOptions,
};
pub use shape::Shape;
pub use tape::{BackwardCtx, BackwardFn, BackwardOptions, Gradients, ParentGrads, Tape, Var};
pub use tensor::Tensor;

pub mod nn;
pub mod optim;

pub mod settings {
    //! Process-wide settings, in one place: how many threads the parallel ops
    //! use, and how much memory tapegrad keeps for reuse between steps.
    //!
    //! - Threads: every parallel op (convolution, pooling, GEMM, large
    //!   elementwise kernels) splits its work between [`num_threads`] threads,
    //!   set with [`set_num_threads`] or the `TAPEGRAD_THREADS` environment
    //!   variable (default: the machine's available parallelism). Results are
    //!   bit-identical for a given thread count.
    //! - Memory: large buffers (64 KiB and up) freed by dropped tensors are kept
    //!   in per-thread pools, up to [`pool_limit`] bytes per thread and element
    //!   type, and handed to the next op that needs one, so a training loop does
    //!   not return its activations to the OS and fault them in again every step.
    //!   [`pooled_bytes`] says how much is held, [`release_pooled_memory`] gives
    //!   it all back (after a large one-off graph), and [`set_pool_limit`] caps
    //!   it (`0` turns recycling off).
    //!
    //! ```
    //! use tapegrad::settings;
    //! settings::set_num_threads(1);
    //! assert_eq!(settings::num_threads(), 1);
    //! settings::set_num_threads(0); // back to the default
    //! settings::release_pooled_memory();
    //! ```
    pub use crate::buffer::{pool_limit, pooled_bytes, release_pooled_memory, set_pool_limit};
    pub use crate::gemm::{num_threads, set_num_threads};
}
