//! Layers and parameters: [`Params`] (named tensors outside the tape), [`Linear`],
//! [`Conv2d`], [`ConvTranspose2d`], stateless layers (activations, pooling,
//! [`Upsample`], [`Pad2d`], adaptive pooling), and [`Sequential`] for simple stacks.
//!
//! A model is plain Rust: a struct holding layers, with a `forward(&bound, x)`
//! method. Each training step binds the parameters to a fresh tape:
//!
//! ```
//! use tapegrad::rand::SeedableRng;
//! use tapegrad::nn::{Linear, Module, Params};
//! use tapegrad::{Tape, Tensor};
//! let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
//! let mut params = Params::new();
//! let fc = Linear::with_options(&mut params, "fc", 4, 3, true, &mut rng);
//! let tape = Tape::new();
//! let p = params.bind(&tape);
//! let x = tape.constant(Tensor::ones([2, 4]));
//! let loss = fc.forward(&p, x).cross_entropy(&[0, 2]);
//! let grads = p.grads(loss.backward());
//! assert_eq!(grads[fc.weight].shape(), params.get(fc.weight).shape());
//! ```

mod activation;
mod conv;
mod layers;
mod norm;
mod params;
mod resample;

pub use activation::{ELU, GELU, Hardtanh, SiLU, Softplus};
pub use conv::{AvgPool2d, Conv2d, ConvTranspose2d, GlobalAvgPool2d, MaxPool2d};
pub use layers::{
    Dropout, Flatten, LeakyReLU, Linear, Module, ReLU, Sequential, Sigmoid, Tanh, init_uniform,
    predict,
};
pub use norm::{BasicBlock, BatchNorm, BatchNormOptions, GroupNorm, LayerNorm, RunningStats};
pub use params::{Bound, BufferId, Mode, ParamGrads, ParamGradsSource, ParamId, Params};
pub use resample::{AdaptiveAvgPool2d, AdaptiveMaxPool2d, Pad2d, Upsample, UpsampleMode};
