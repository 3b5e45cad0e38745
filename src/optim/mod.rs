//! Optimizers with PyTorch's exact update rules ([`Sgd`], [`Adam`], AdamW), and
//! learning-rate schedules.
//!
//! ```
//! use tapegrad::nn::Params;
//! use tapegrad::optim::{Optimizer, Sgd};
//! use tapegrad::{Tape, Tensor};
//! let mut params = Params::<f64>::new();
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

use crate::nn::{ParamGrads, Params};
use crate::{Float, Tensor};

/// An optimizer updates parameters in place from their gradients.
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
    /// One update. Parameters whose gradient is `None` are left untouched (and their state too).
    fn step(&mut self, params: &mut Params<T>, grads: &ParamGrads<T>);
    /// The current learning rate.
    fn lr(&self) -> f64;
    /// Sets the learning rate (for schedules).
    fn set_lr(&mut self, lr: f64);
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
    let (id, name, p) = params.iter().nth(i).expect("index in range");
    let _ = id;
    assert!(
        p.shape() == g.shape(),
        "{op}: gradient of `{name}` has shape {} but the parameter has shape {}",
        g.shape(),
        p.shape()
    );
}

/// Stochastic gradient descent with momentum, dampening, Nesterov and weight decay,
/// exactly as `torch.optim.SGD`:
///
/// ```text
/// g ← g + wd·p
/// if momentum ≠ 0: b ← g on the first step, else b ← μ·b + (1 − dampening)·g
///                  g ← g + μ·b if nesterov, else g ← b
/// p ← p − lr·g
/// ```
///
/// ```
/// let opt = tapegrad::optim::Sgd::<f32>::new(0.1).momentum(0.9).nesterov(true).weight_decay(1e-4);
/// assert_eq!(opt.momentum, 0.9);
/// ```
#[derive(Clone, Debug)]
pub struct Sgd<T: Float = f32> {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor μ (0 disables momentum).
    pub momentum: f64,
    /// Dampening of the momentum update.
    pub dampening: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    buffers: Vec<Option<Vec<T>>>,
}

impl<T: Float> Sgd<T> {
    /// Plain SGD with learning rate `lr`.
    ///
    /// ```
    /// assert_eq!(tapegrad::optim::Sgd::<f32>::new(0.5).lr, 0.5);
    /// ```
    pub fn new(lr: f64) -> Self {
        Sgd {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            buffers: Vec::new(),
        }
    }
    /// Sets the momentum factor.
    ///
    /// ```
    /// assert_eq!(tapegrad::optim::Sgd::<f32>::new(0.1).momentum(0.9).momentum, 0.9);
    /// ```
    pub fn momentum(mut self, m: f64) -> Self {
        self.momentum = m;
        self
    }
    /// Sets the dampening.
    ///
    /// ```
    /// assert_eq!(tapegrad::optim::Sgd::<f32>::new(0.1).dampening(0.5).dampening, 0.5);
    /// ```
    pub fn dampening(mut self, d: f64) -> Self {
        self.dampening = d;
        self
    }
    /// Sets the weight decay (L2 penalty).
    ///
    /// ```
    /// assert_eq!(tapegrad::optim::Sgd::<f32>::new(0.1).weight_decay(0.01).weight_decay, 0.01);
    /// ```
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }
    /// Enables Nesterov momentum (needs momentum > 0 and dampening 0, as PyTorch).
    ///
    /// ```
    /// assert!(tapegrad::optim::Sgd::<f32>::new(0.1).momentum(0.9).nesterov(true).nesterov);
    /// ```
    pub fn nesterov(mut self, on: bool) -> Self {
        self.nesterov = on;
        self
    }
}

impl<T: Float> Optimizer<T> for Sgd<T> {
    fn step(&mut self, params: &mut Params<T>, grads: &ParamGrads<T>) {
        check_lengths("Sgd::step", params, grads);
        assert!(
            !self.nesterov || (self.momentum > 0.0 && self.dampening == 0.0),
            "Sgd: Nesterov momentum requires a momentum and zero dampening"
        );
        self.buffers.resize_with(params.len(), || None);
        let ids: Vec<_> = params.iter().map(|(id, _, _)| id).collect();
        let (lr, mu, damp, wd) = (
            T::from_f64(self.lr),
            T::from_f64(self.momentum),
            T::from_f64(1.0 - self.dampening),
            T::from_f64(self.weight_decay),
        );
        for (i, id) in ids.into_iter().enumerate() {
            let Some(g) = &grads.as_slice()[i] else {
                continue;
            };
            check_shape("Sgd::step", params, i, g);
            let p = params.get_mut(id).data_mut();
            let g = g.data();
            if self.momentum == 0.0 {
                for (p, &g) in p.iter_mut().zip(g) {
                    *p -= lr * (g + wd * *p);
                }
                continue;
            }
            let first = self.buffers[i].is_none();
            let buf = self.buffers[i].get_or_insert_with(|| vec![T::ZERO; g.len()]);
            for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
                let d = g + wd * *p;
                *b = if first { d } else { mu * *b + damp * d };
                let step = if self.nesterov { d + mu * *b } else { *b };
                *p -= lr * step;
            }
        }
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
}

/// Adam and AdamW, exactly as `torch.optim.Adam` / `torch.optim.AdamW`:
///
/// ```text
/// Adam:  g ← g + wd·p            AdamW: p ← p·(1 − lr·wd)
/// m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²;  (amsgrad: v̂ ← max(v̂, v), used for v)
/// p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
/// ```
///
/// ```
/// let adam = tapegrad::optim::Adam::<f32>::new(1e-3);
/// let adamw = tapegrad::optim::Adam::<f32>::adamw(1e-3, 1e-2);
/// assert!(!adam.decoupled && adamw.decoupled);
/// ```
#[derive(Clone, Debug)]
pub struct Adam<T: Float = f32> {
    /// Learning rate.
    pub lr: f64,
    /// β₁, β₂.
    pub betas: (f64, f64),
    /// ε added to the denominator.
    pub eps: f64,
    /// Weight decay: an L2 term in the gradient (Adam) or decoupled decay (AdamW).
    pub weight_decay: f64,
    /// AdamW's decoupled weight decay.
    pub decoupled: bool,
    /// The AMSGrad variant.
    pub amsgrad: bool,
    state: Vec<Option<AdamState<T>>>,
}

#[derive(Clone, Debug)]
struct AdamState<T> {
    t: i32,
    m: Vec<T>,
    v: Vec<T>,
    vmax: Vec<T>,
}

impl<T: Float> Adam<T> {
    /// Adam with PyTorch's defaults (β = (0.9, 0.999), ε = 1e-8, no weight decay).
    ///
    /// ```
    /// assert_eq!(tapegrad::optim::Adam::<f32>::new(1e-3).betas, (0.9, 0.999));
    /// ```
    pub fn new(lr: f64) -> Self {
        Adam {
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            amsgrad: false,
            state: Vec::new(),
        }
    }
    /// AdamW: Adam with decoupled weight decay `wd` (PyTorch's default wd is 1e-2).
    ///
    /// ```
    /// assert_eq!(tapegrad::optim::Adam::<f32>::adamw(1e-3, 0.01).weight_decay, 0.01);
    /// ```
    pub fn adamw(lr: f64, weight_decay: f64) -> Self {
        Adam {
            weight_decay,
            decoupled: true,
            ..Self::new(lr)
        }
    }
    /// Sets β₁ and β₂.
    ///
    /// ```
    /// assert_eq!(tapegrad::optim::Adam::<f32>::new(1e-3).betas(0.8, 0.99).betas, (0.8, 0.99));
    /// ```
    pub fn betas(mut self, b1: f64, b2: f64) -> Self {
        self.betas = (b1, b2);
        self
    }
    /// Sets ε.
    ///
    /// ```
    /// assert_eq!(tapegrad::optim::Adam::<f32>::new(1e-3).eps(1e-6).eps, 1e-6);
    /// ```
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    /// Sets the weight decay (L2 for Adam, decoupled for AdamW).
    ///
    /// ```
    /// assert_eq!(tapegrad::optim::Adam::<f32>::new(1e-3).weight_decay(0.1).weight_decay, 0.1);
    /// ```
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }
    /// Enables AMSGrad.
    ///
    /// ```
    /// assert!(tapegrad::optim::Adam::<f32>::new(1e-3).amsgrad(true).amsgrad);
    /// ```
    pub fn amsgrad(mut self, on: bool) -> Self {
        self.amsgrad = on;
        self
    }
}

impl<T: Float> Optimizer<T> for Adam<T> {
    fn step(&mut self, params: &mut Params<T>, grads: &ParamGrads<T>) {
        check_lengths("Adam::step", params, grads);
        self.state.resize_with(params.len(), || None);
        let ids: Vec<_> = params.iter().map(|(id, _, _)| id).collect();
        let (b1, b2) = self.betas;
        for (i, id) in ids.into_iter().enumerate() {
            let Some(g) = &grads.as_slice()[i] else {
                continue;
            };
            check_shape("Adam::step", params, i, g);
            let n = g.numel();
            let st = self.state[i].get_or_insert_with(|| AdamState {
                t: 0,
                m: vec![T::ZERO; n],
                v: vec![T::ZERO; n],
                vmax: if self.amsgrad {
                    vec![T::ZERO; n]
                } else {
                    Vec::new()
                },
            });
            if self.amsgrad && st.vmax.len() != n {
                st.vmax = vec![T::ZERO; n]; // AMSGrad switched on after the first step
            }
            st.t += 1;
            let bc1 = 1.0 - b1.powi(st.t);
            let bc2_sqrt = (1.0 - b2.powi(st.t)).sqrt();
            let step_size = T::from_f64(self.lr / bc1);
            let (tb1, tb2, eps, wd) = (
                T::from_f64(b1),
                T::from_f64(b2),
                T::from_f64(self.eps),
                T::from_f64(self.weight_decay),
            );
            let (one_b1, one_b2, bc2s) = (
                T::from_f64(1.0 - b1),
                T::from_f64(1.0 - b2),
                T::from_f64(bc2_sqrt),
            );
            let decay = T::from_f64(1.0 - self.lr * self.weight_decay);
            let p = params.get_mut(id).data_mut();
            let vmax = if self.amsgrad {
                &mut st.vmax[..]
            } else {
                &mut [][..]
            };
            for (j, (p, &g)) in p.iter_mut().zip(g.data()).enumerate() {
                let g = if self.decoupled {
                    *p *= decay;
                    g
                } else {
                    g + wd * *p
                };
                let (m, v) = (&mut st.m[j], &mut st.v[j]);
                *m = tb1 * *m + one_b1 * g;
                *v = tb2 * *v + one_b2 * g * g;
                let v = if let Some(vm) = vmax.get_mut(j) {
                    *vm = vm.max(*v);
                    *vm
                } else {
                    *v
                };
                *p -= step_size * *m / (v.sqrt() / bc2s + eps);
            }
        }
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
}

/// A learning-rate schedule: the rate to use at a given step (or epoch).
///
/// ```
/// use tapegrad::optim::Schedule;
/// let cos = Schedule::Cosine { base: 1.0, min: 0.0, total: 10 };
/// assert_eq!(cos.at(0), 1.0);
/// assert!((cos.at(5) - 0.5).abs() < 1e-12);
/// assert_eq!(cos.at(10), 0.0);
/// let step = Schedule::Step { base: 1.0, gamma: 0.1, every: 3 };
/// assert!((step.at(7) - 0.01).abs() < 1e-12);
/// ```
#[derive(Clone, Copy, Debug)]
pub enum Schedule {
    /// A constant rate.
    Constant(f64),
    /// `base · gamma^(step / every)` (PyTorch's StepLR).
    Step {
        /// Initial rate.
        base: f64,
        /// Decay factor.
        gamma: f64,
        /// Steps between decays.
        every: usize,
    },
    /// `min + (base − min)(1 + cos(π·step/total))/2` (PyTorch's CosineAnnealingLR, one half-period).
    Cosine {
        /// Initial rate.
        base: f64,
        /// Final rate.
        min: f64,
        /// Steps to reach `min`.
        total: usize,
    },
}

impl Schedule {
    /// The learning rate at `step`.
    ///
    /// ```
    /// assert_eq!(tapegrad::optim::Schedule::Constant(0.1).at(99), 0.1);
    /// ```
    pub fn at(&self, step: usize) -> f64 {
        match *self {
            Schedule::Constant(lr) => lr,
            Schedule::Step { base, gamma, every } => {
                base * gamma.powi((step / every.max(1)) as i32)
            }
            Schedule::Cosine { base, min, total } => {
                let t = (step.min(total) as f64) / (total.max(1) as f64);
                min + (base - min) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
        }
    }
}
