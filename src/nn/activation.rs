//! Stateless activation layers for [`Sequential`](super::Sequential): GELU,
//! SiLU, Softplus, ELU and Hardtanh, with PyTorch's defaults. In plain code
//! call the `Var` method instead (`x.gelu()`, `x.silu()`, …).

use super::Module;
use super::params::Bound;
use crate::{Float, Var};

/// GELU: exact (`x.gelu()`, the default) or, with `tanh_approximation`, the
/// tanh form (`x.gelu_tanh()`, PyTorch's `approximate='tanh'`).
///
/// ```
/// use tapegrad::nn::{Module, Params, GELU};
/// let tape = tapegrad::Tape::<f64>::new();
/// let p = Params::default().bind(&tape);
/// let x = tape.constant(tapegrad::Tensor::from_vec(vec![0.0, 1.0], [2]).unwrap());
/// let exact = GELU::default().forward(&p, x).value();
/// let approx = GELU::tanh().forward(&p, x).value();
/// assert!((exact.data()[1] - approx.data()[1]).abs() < 1e-3);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GELU {
    /// Use the tanh approximation instead of the exact erf form.
    pub tanh_approximation: bool,
}

impl GELU {
    /// The tanh approximation.
    ///
    /// ```
    /// assert!(tapegrad::nn::GELU::tanh().tanh_approximation);
    /// ```
    pub fn tanh() -> Self {
        GELU {
            tanh_approximation: true,
        }
    }
}

impl<T: Float> Module<T> for GELU {
    fn forward<'t>(&self, _: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        if self.tanh_approximation {
            x.gelu_tanh()
        } else {
            x.gelu()
        }
    }
}

/// SiLU (swish), y = x·σ(x); in plain code call `x.silu()`.
///
/// ```
/// use tapegrad::nn::{Module, Params, SiLU};
/// let tape = tapegrad::Tape::<f32>::new();
/// let p = Params::new().bind(&tape);
/// let x = tape.constant(tapegrad::Tensor::zeros([2]));
/// assert_eq!(SiLU.forward(&p, x).value().data(), &[0.0, 0.0]);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiLU;

impl<T: Float> Module<T> for SiLU {
    fn forward<'t>(&self, _: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        x.silu()
    }
}

/// Softplus with its β and threshold (PyTorch's defaults: 1 and 20); in plain
/// code call `x.softplus(beta, threshold)`.
///
/// ```
/// use tapegrad::nn::{Module, Params, Softplus};
/// let tape = tapegrad::Tape::<f64>::new();
/// let p = Params::default().bind(&tape);
/// let x = tape.constant(tapegrad::Tensor::from_vec(vec![0.0, 50.0], [2]).unwrap());
/// assert_eq!(Softplus::default().forward(&p, x).value().data(), &[2f64.ln(), 50.0]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Softplus {
    /// β: y = ln(1 + e^(βx))/β.
    pub beta: f64,
    /// Above βx = threshold, y = x.
    pub threshold: f64,
}

impl Default for Softplus {
    fn default() -> Self {
        Softplus {
            beta: 1.0,
            threshold: 20.0,
        }
    }
}

impl<T: Float> Module<T> for Softplus {
    fn forward<'t>(&self, _: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        x.softplus(self.beta, self.threshold)
    }
}

/// ELU with its α (PyTorch's default is 1); in plain code call `x.elu(alpha)`.
///
/// ```
/// use tapegrad::nn::{Module, Params, ELU};
/// let tape = tapegrad::Tape::<f64>::new();
/// let p = Params::default().bind(&tape);
/// let x = tape.constant(tapegrad::Tensor::from_vec(vec![-1.0, 2.0], [2]).unwrap());
/// assert_eq!(ELU(2.0).forward(&p, x).value().data(), &[2.0 * (-1f64).exp_m1(), 2.0]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ELU(pub f64);

impl Default for ELU {
    fn default() -> Self {
        ELU(1.0)
    }
}

impl<T: Float> Module<T> for ELU {
    fn forward<'t>(&self, _: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        x.elu(self.0)
    }
}

/// Hardtanh: x clamped to [min, max] (PyTorch's defaults: −1 and 1); in plain
/// code call `x.hardtanh(min, max)`. ReLU6 is `Hardtanh { min: 0.0, max: 6.0 }`.
///
/// ```
/// use tapegrad::nn::{Hardtanh, Module, Params};
/// let tape = tapegrad::Tape::<f32>::new();
/// let p = Params::new().bind(&tape);
/// let x = tape.constant(tapegrad::Tensor::from_vec(vec![-3.0, 0.5, 3.0], [3]).unwrap());
/// assert_eq!(Hardtanh::default().forward(&p, x).value().data(), &[-1.0, 0.5, 1.0]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hardtanh {
    /// The lower bound.
    pub min: f64,
    /// The upper bound.
    pub max: f64,
}

impl Default for Hardtanh {
    fn default() -> Self {
        Hardtanh {
            min: -1.0,
            max: 1.0,
        }
    }
}

impl<T: Float> Module<T> for Hardtanh {
    fn forward<'t>(&self, _: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        x.hardtanh(self.min, self.max)
    }
}
