// The README is the crate's front page. Its links name the guides in `docs/`
// (right on the repository page); these definitions come first, so in rustdoc
// the same link labels lead to the guides' rustdoc pages instead.
#![doc = "[design]: crate::guides::design"]
#![doc = "[conv-backprop]: crate::guides::conv_backprop"]
#![doc = "[benchmarks]: crate::guides::benchmarks"]
#![doc = "[data]: crate::guides::data"]
#![doc = "[dependencies]: crate::guides::dependencies"]
#![doc = "[training-chart]: crate::guides::training_chart"]
#![doc = "[seed-graph]: crate::guides::seed_graph"]
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod buffer;
mod erf;
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
pub mod higher;
pub mod io;

pub use error::{Error, Result};
pub use float::Float;
pub use ops::loss::{CrossEntropyOptions, Reduction};
pub use ops::select::Mask;
pub use ops::{
    conv,
    conv::Conv2dOptions,
    conv::ConvTranspose2dOptions,
    conv::Pair,
    norm::BatchStats,
    pool::Pool2dOptions,
    resample::{PadMode, UpsampleSize},
};
pub use shape::Shape;
pub use tape::{
    BackwardCtx, BackwardFn, BackwardOptions, Gradients, GraphCtx, GraphGrads, ParentGrads, Tape,
    Var,
};
pub use tensor::Tensor;

pub mod nn;
pub mod optim;

/// The random-number crate tapegrad's API takes generators from (initialisation,
/// shuffling, dropout, augmentation), re-exported so that a `Cargo.toml` needs
/// only tapegrad: `tapegrad::rand::rngs::StdRng`, `tapegrad::rand::SeedableRng`.
pub use rand;

/// The small-vector crate behind [`ParentGrads`], re-exported for custom ops
/// (`tapegrad::smallvec::smallvec![Some(dx)]`).
pub use smallvec;

/// What most programs use, in one import: `use tapegrad::prelude::*;`.
///
/// ```
/// use tapegrad::prelude::*;
/// let mut params = Params::new();
/// let model = Sequential::new().push(Linear::new(&mut params, "fc", 4, 2));
/// let tape = Tape::new();
/// let x = tape.constant(Tensor::ones([3, 4]));
/// let loss = model.forward(&params.bind(&tape), x).cross_entropy(&[0, 1, 1]);
/// Sgd::new(0.1).step(&mut params, &loss.backward());
/// ```
pub mod prelude {
    pub use crate::nn::{
        self, AvgPool2d, BasicBlock, BatchNorm, Conv2d, Dropout, Flatten, GlobalAvgPool2d, Linear,
        MaxPool2d, Mode, Module, ParamGradsSource, Params, ReLU, Sequential, Sigmoid, Tanh,
        predict,
    };
    pub use crate::optim::{Adam, Optimizer, Schedule, Sgd};
    pub use crate::{Conv2dOptions, Pool2dOptions, Tape, Tensor, Var};
    pub use rand::rngs::StdRng;
    pub use rand::{Rng, SeedableRng};
}

/// The guides in the repository's `docs/` folder, readable here too.
pub mod guides {
    /// The architecture: tensor, tape, ops, nn, and how to add an op.
    pub mod design {
        #![doc = include_str!("../docs/design.md")]
    }
    /// The convolution backward, derived, with the worked example.
    pub mod conv_backprop {
        #![doc = include_str!("../docs/conv-backprop.md")]
    }
    /// How to run the benchmark, what each case is, and the latest figures.
    pub mod benchmarks {
        #![doc = include_str!("../docs/benchmarks.md")]
    }
    /// The embedded digits, MNIST, safetensors.
    pub mod data {
        #![doc = include_str!("../docs/data.md")]
    }
    /// Every dependency and why.
    pub mod dependencies {
        #![doc = include_str!("../docs/dependencies.md")]
    }
    /// A training run of the main job as a picture: loss and accuracies per
    /// epoch, and the test set's confusion matrix (`train_digits --plot`).
    pub mod training_chart {
        #![doc = include_str!("../docs/images/train_digits.svg")]
    }
    /// The seed example's graph with each node's gradient norm
    /// (`Tape::to_svg`, from `seed_walkthrough`).
    pub mod seed_graph {
        #![doc = include_str!("../docs/images/seed_graph.svg")]
    }
}

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
