//! [`Sgd`]: stochastic gradient descent, as `torch.optim.SGD`.

use super::state::{StateReader, check_state_len};
use super::{Optimizer, OptimizerState, check_lengths, check_shape};
use crate::nn::{ParamGradsSource, Params};
use crate::{Float, Result};

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
    fn step(&mut self, params: &mut Params<T>, grads: &dyn ParamGradsSource<T>) {
        let grads = grads.param_grads_for("Sgd::step", params);
        let grads = &*grads;
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

    /// Kind `Sgd`; hyper-parameters `lr`, `momentum`, `dampening`, `weight_decay`,
    /// `nesterov`; a `momentum_buffer` per parameter that has one.
    fn state_dict(&self, params: &Params<T>) -> OptimizerState<T> {
        check_state_len("Sgd::state_dict", params, self.buffers.len());
        let mut s = OptimizerState::new("Sgd", params);
        s.push_hyper("lr", self.lr);
        s.push_hyper("momentum", self.momentum);
        s.push_hyper("dampening", self.dampening);
        s.push_hyper("weight_decay", self.weight_decay);
        s.push_hyper("nesterov", f64::from(u8::from(self.nesterov)));
        for (i, b) in self.buffers.iter().enumerate() {
            if let Some(b) = b {
                s.push_buffer("momentum_buffer", params, i, b);
            }
        }
        s
    }

    fn load_state_dict(&mut self, params: &Params<T>, state: OptimizerState<T>) -> Result<()> {
        let mut r = StateReader::new("Sgd", params, state)?;
        let lr = r.hyper("lr")?;
        let momentum = r.hyper("momentum")?;
        let dampening = r.hyper("dampening")?;
        let weight_decay = r.hyper("weight_decay")?;
        let nesterov = r.flag("nesterov")?;
        let buffers = (0..params.len())
            .map(|i| r.buffer("momentum_buffer", i))
            .collect::<Result<Vec<_>>>()?;
        r.finish()?;
        *self = Sgd {
            lr,
            momentum,
            dampening,
            weight_decay,
            nesterov,
            buffers,
        };
        Ok(())
    }
}
