//! Optimizers with PyTorch's exact update rules ([`Sgd`], [`Adam`], AdamW, [`RmsProp`]),
//! learning-rate [`Schedule`]s, gradient clipping ([`ParamGrads::clip_norm`],
//! [`ParamGrads::clip_value`]) and optimizer checkpoints ([`OptimizerState`]).
//!
//! ```
//! use tapegrad::nn::Params;
//! use tapegrad::optim::{Optimizer, Sgd};
//! use tapegrad::{Tape, Tensor};
//! let mut params = Params::<f64>::default();
//! let w = params.add("w", Tensor::from_vec(vec![1.0, -2.0], [2]).unwrap());
//! let mut opt = Sgd::new(0.1);
//! for _ in 0..100 {
//!     let grads = {
//!         let tape = Tape::new();
//!         let p = params.bind(&tape);
//!         p.grads((p[w] * p[w]).sum().backward()) // minimise |w|²
//!     };
//!     opt.step(&mut params, &grads);
//! }
//! assert!(params.get(w).norm() < 1e-6);
//! ```
//!
//! [`ParamGrads::clip_norm`]: crate::nn::ParamGrads::clip_norm
//! [`ParamGrads::clip_value`]: crate::nn::ParamGrads::clip_value

mod adam;
mod clip;
mod rmsprop;
mod schedule;
mod sgd;
mod state;

pub use adam::Adam;
pub use rmsprop::RmsProp;
pub use schedule::{Anneal, OneCycle, Schedule};
pub use sgd::Sgd;
pub use state::OptimizerState;

use crate::nn::{ParamGrads, ParamGradsSource, Params};
use crate::{Float, Result, Tensor};
use std::path::Path;

/// An optimizer updates parameters in place from their gradients, and can save and
/// restore its state (buffers, step counts, hyper-parameters) by parameter name.
///
/// ```
/// use tapegrad::optim::{Adam, Optimizer, Sgd};
/// let mut opts: Vec<Box<dyn Optimizer<f32>>> = vec![Box::new(Sgd::new(0.1)), Box::new(Adam::new(1e-3))];
/// for o in &mut opts {
///     o.set_lr(o.lr() / 2.0);
/// }
/// assert_eq!(opts[0].lr(), 0.05);
/// ```
pub trait Optimizer<T: Float> {
    /// One update from `grads`: the [`Gradients`](crate::Gradients) of a
    /// backward pass through a tape `params` were bound to, or the
    /// [`ParamGrads`] of a binding (e.g. after clipping). Parameters without a
    /// gradient (the loss did not depend on them) are left untouched, and so
    /// is their state.
    ///
    /// ```
    /// use tapegrad::nn::Params;
    /// use tapegrad::optim::{Optimizer, Sgd};
    /// use tapegrad::{Tape, Tensor};
    /// let mut params = Params::new();
    /// let w = params.add("w", Tensor::ones([2]));
    /// let tape = Tape::new();
    /// let grads = (params.bind(&tape)[w] * 3.0).sum().backward();
    /// Sgd::new(0.1).step(&mut params, &grads);
    /// assert_eq!(params.get(w).data(), &[0.7, 0.7]);
    /// ```
    fn step(&mut self, params: &mut Params<T>, grads: &dyn ParamGradsSource<T>);

    /// The current learning rate.
    fn lr(&self) -> f64;

    /// Sets the learning rate (for schedules).
    fn set_lr(&mut self, lr: f64);

    /// A copy of the optimizer's state — its kind, hyper-parameters (including the
    /// current learning rate), and for every parameter of `params` (the store it steps)
    /// that has state, its step count and buffers, keyed by the parameter's name.
    ///
    /// Panics if the optimizer holds state for more parameters than `params` has.
    ///
    /// ```
    /// use tapegrad::optim::{Optimizer, Sgd};
    /// let params = tapegrad::nn::Params::new();
    /// let state = Sgd::<f32>::new(0.1).momentum(0.9).state_dict(&params);
    /// assert_eq!(state.kind, "Sgd");
    /// assert_eq!(state.hyper("momentum"), Some(0.9));
    /// ```
    fn state_dict(&self, params: &Params<T>) -> OptimizerState<T>;

    /// Replaces the optimizer's hyper-parameters and state with `state`, taken (by
    /// [`state_dict`](Optimizer::state_dict)) from the same kind of optimizer stepping
    /// parameters with the same names and shapes as `params`.
    ///
    /// Errors, changing nothing, if the kind differs, the parameter names differ, an
    /// entry is missing, unexpected or of the wrong shape, or a hyper-parameter or step
    /// count is missing or invalid.
    ///
    /// ```
    /// use tapegrad::optim::{Adam, Optimizer, Sgd};
    /// let params = tapegrad::nn::Params::new();
    /// let state = Sgd::<f32>::new(0.5).state_dict(&params);
    /// let mut other = Sgd::<f32>::new(0.1);
    /// other.load_state_dict(&params, state.clone()).unwrap();
    /// assert_eq!(other.lr(), 0.5);
    /// let err = Adam::<f32>::new(1e-3).load_state_dict(&params, state).unwrap_err();
    /// assert!(err.to_string().contains("Sgd"));
    /// ```
    fn load_state_dict(&mut self, params: &Params<T>, state: OptimizerState<T>) -> Result<()>;

    /// The optimizer's state as the bytes of a safetensors file (see [`OptimizerState`]
    /// for the layout).
    ///
    /// ```
    /// use tapegrad::optim::{Optimizer, Sgd};
    /// let params = tapegrad::nn::Params::new();
    /// let opt = Sgd::<f32>::new(0.1);
    /// let bytes = opt.save_state_bytes(&params).unwrap();
    /// let mut back = Sgd::<f32>::new(1.0);
    /// back.load_state_bytes(&params, &bytes).unwrap();
    /// assert_eq!(back.lr(), 0.1);
    /// ```
    fn save_state_bytes(&self, params: &Params<T>) -> Result<Vec<u8>> {
        self.state_dict(params).to_bytes()
    }

    /// Loads state written by [`save_state_bytes`](Optimizer::save_state_bytes)
    /// (checked as in [`load_state_dict`](Optimizer::load_state_dict)).
    ///
    /// ```
    /// use tapegrad::optim::{Optimizer, Sgd};
    /// let params = tapegrad::nn::Params::new();
    /// assert!(Sgd::<f32>::new(0.1).load_state_bytes(&params, b"not safetensors").is_err());
    /// ```
    fn load_state_bytes(&mut self, params: &Params<T>, bytes: &[u8]) -> Result<()> {
        self.load_state_dict(params, OptimizerState::from_bytes(bytes)?)
    }

    /// Saves the optimizer's state to a safetensors file at `path` (replaced whole or
    /// not at all). Save the model with [`Params::save`] beside it.
    ///
    /// ```
    /// use tapegrad::optim::{Adam, Optimizer};
    /// let params = tapegrad::nn::Params::new();
    /// let path = std::env::temp_dir().join(format!("tapegrad-doc-opt-{}.safetensors", std::process::id()));
    /// Adam::<f32>::new(1e-3).save_state(&params, &path).unwrap();
    /// let mut opt = Adam::<f32>::new(0.5);
    /// opt.load_state(&params, &path).unwrap();
    /// assert_eq!(opt.lr(), 1e-3);
    /// std::fs::remove_file(&path).unwrap();
    /// ```
    fn save_state(&self, params: &Params<T>, path: &Path) -> Result<()> {
        let bytes = self
            .save_state_bytes(params)
            .map_err(|e| crate::io::in_file(path, e))?;
        crate::io::write_replacing(path, &bytes)
    }

    /// Loads state saved by [`save_state`](Optimizer::save_state) (checked as in
    /// [`load_state_dict`](Optimizer::load_state_dict); errors name the file).
    ///
    /// ```
    /// use tapegrad::optim::{Optimizer, Sgd};
    /// let params = tapegrad::nn::Params::new();
    /// let missing = std::env::temp_dir().join("tapegrad-doc-no-such-file.safetensors");
    /// assert!(Sgd::<f32>::new(0.1).load_state(&params, &missing).is_err());
    /// ```
    fn load_state(&mut self, params: &Params<T>, path: &Path) -> Result<()> {
        let bytes = crate::io::read_file(path)?;
        self.load_state_bytes(params, &bytes)
            .map_err(|e| crate::io::in_file(path, e))
    }
}

fn check_lengths<T: Float>(op: &str, params: &Params<T>, grads: &ParamGrads<T>) {
    assert!(
        grads.belongs_to(params),
        "{op}: the gradients are of another model's parameters (take them with \
         `params.bind(&tape)` of the Params being stepped, then `bound.grads(...)`)"
    );
    assert!(
        params.len() == grads.as_slice().len(),
        "{op}: {} parameters but {} gradients (were the gradients taken from this model's binding?)",
        params.len(),
        grads.as_slice().len()
    );
}

fn check_shape<T: Float>(op: &str, params: &Params<T>, i: usize, g: &Tensor<T>) {
    let (_, name, p) = params.iter().nth(i).expect("index in range");
    assert!(
        p.shape() == g.shape(),
        "{op}: gradient of `{name}` has shape {} but the parameter has shape {}",
        g.shape(),
        p.shape()
    );
}
