//! [`RmsProp`], as `torch.optim.RMSprop`.

use super::state::{StateReader, check_state_len};
use super::{Optimizer, OptimizerState, check_lengths, check_shape};
use crate::nn::{ParamGradsSource, Params};
use crate::{Float, Result};

/// RMSprop, exactly as `torch.optim.RMSprop`:
///
/// ```text
/// g ← g + wd·p
/// s ← α·s + (1 − α)·g²                          (square_avg, starts at 0)
/// centered: a ← a + (1 − α)·(g − a);  d ← √(s − a²) + ε     (grad_avg, starts at 0)
/// else:     d ← √s + ε
/// momentum > 0: b ← μ·b + g/d;  p ← p − lr·b    (momentum_buffer, starts at 0)
/// else:         p ← p − lr·g/d
/// ```
///
/// ```
/// use tapegrad::optim::RmsProp;
/// let opt = RmsProp::<f32>::new(0.01).alpha(0.9).momentum(0.9).centered(true);
/// assert_eq!((opt.alpha, opt.eps, opt.momentum), (0.9, 1e-8, 0.9));
/// assert!(opt.centered);
/// ```
#[derive(Clone, Debug)]
pub struct RmsProp<T: Float = f32> {
    /// Learning rate.
    pub lr: f64,
    /// Smoothing constant α of the running averages.
    pub alpha: f64,
    /// ε added to the denominator.
    pub eps: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Momentum factor μ (0 disables momentum).
    pub momentum: f64,
    /// Centered RMSprop: normalise by the estimated variance of the gradient.
    pub centered: bool,
    state: Vec<Option<RmsState<T>>>,
}

#[derive(Clone, Debug)]
struct RmsState<T> {
    step: u64,
    square_avg: Vec<T>,
    /// Empty until momentum is used.
    momentum_buffer: Vec<T>,
    /// Empty until centering is used.
    grad_avg: Vec<T>,
}

impl<T: Float> RmsProp<T> {
    /// RMSprop with PyTorch's defaults: α = 0.99, ε = 1e-8, no weight decay, no
    /// momentum, not centered.
    ///
    /// ```
    /// let opt = tapegrad::optim::RmsProp::<f32>::new(0.01);
    /// assert_eq!((opt.lr, opt.alpha, opt.momentum), (0.01, 0.99, 0.0));
    /// ```
    pub fn new(lr: f64) -> Self {
        RmsProp {
            lr,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
            state: Vec::new(),
        }
    }
    /// Sets the smoothing constant α.
    ///
    /// ```
    /// assert_eq!(tapegrad::optim::RmsProp::<f32>::new(0.01).alpha(0.9).alpha, 0.9);
    /// ```
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }
    /// Sets ε.
    ///
    /// ```
    /// assert_eq!(tapegrad::optim::RmsProp::<f32>::new(0.01).eps(1e-6).eps, 1e-6);
    /// ```
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    /// Sets the weight decay (L2 penalty).
    ///
    /// ```
    /// assert_eq!(tapegrad::optim::RmsProp::<f32>::new(0.01).weight_decay(1e-4).weight_decay, 1e-4);
    /// ```
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }
    /// Sets the momentum factor.
    ///
    /// ```
    /// assert_eq!(tapegrad::optim::RmsProp::<f32>::new(0.01).momentum(0.9).momentum, 0.9);
    /// ```
    pub fn momentum(mut self, m: f64) -> Self {
        self.momentum = m;
        self
    }
    /// Enables centered RMSprop.
    ///
    /// ```
    /// assert!(tapegrad::optim::RmsProp::<f32>::new(0.01).centered(true).centered);
    /// ```
    pub fn centered(mut self, on: bool) -> Self {
        self.centered = on;
        self
    }
}

impl<T: Float> Optimizer<T> for RmsProp<T> {
    fn step(&mut self, params: &mut Params<T>, grads: &dyn ParamGradsSource<T>) {
        let grads = grads.param_grads_for("RmsProp::step", params);
        let grads = &*grads;
        check_lengths("RmsProp::step", params, grads);
        self.state.resize_with(params.len(), || None);
        let ids: Vec<_> = params.iter().map(|(id, _, _)| id).collect();
        let (lr, alpha, one_alpha, eps, wd, mu) = (
            T::from_f64(self.lr),
            T::from_f64(self.alpha),
            T::from_f64(1.0 - self.alpha),
            T::from_f64(self.eps),
            T::from_f64(self.weight_decay),
            T::from_f64(self.momentum),
        );
        let (use_momentum, centered) = (self.momentum > 0.0, self.centered);
        for (i, id) in ids.into_iter().enumerate() {
            let Some(g) = &grads.as_slice()[i] else {
                continue;
            };
            check_shape("RmsProp::step", params, i, g);
            let n = g.numel();
            let st = self.state[i].get_or_insert_with(|| RmsState {
                step: 0,
                square_avg: vec![T::ZERO; n],
                momentum_buffer: Vec::new(),
                grad_avg: Vec::new(),
            });
            if use_momentum && st.momentum_buffer.len() != n {
                st.momentum_buffer = vec![T::ZERO; n];
            }
            if centered && st.grad_avg.len() != n {
                st.grad_avg = vec![T::ZERO; n];
            }
            st.step += 1;
            let p = params.get_mut(id).data_mut();
            for (j, (p, &g)) in p.iter_mut().zip(g.data()).enumerate() {
                let g = if self.weight_decay != 0.0 {
                    g + wd * *p
                } else {
                    g
                };
                let s = &mut st.square_avg[j];
                *s = *s * alpha + one_alpha * g * g;
                let avg = if centered {
                    let a = &mut st.grad_avg[j];
                    *a += one_alpha * (g - *a); // torch's lerp for weights < 0.5
                    (*s - *a * *a).sqrt() + eps
                } else {
                    s.sqrt() + eps
                };
                if use_momentum {
                    let b = &mut st.momentum_buffer[j];
                    *b = *b * mu + g / avg;
                    *p -= lr * *b;
                } else {
                    *p -= lr * (g / avg);
                }
            }
        }
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Kind `RMSprop`; hyper-parameters `lr`, `alpha`, `eps`, `weight_decay`,
    /// `momentum`, `centered`; per stepped parameter a step count, `square_avg`,
    /// `momentum_buffer` with momentum and `grad_avg` when centered.
    fn state_dict(&self, params: &Params<T>) -> OptimizerState<T> {
        check_state_len("RmsProp::state_dict", params, self.state.len());
        let mut s = OptimizerState::new("RMSprop", params);
        s.push_hyper("lr", self.lr);
        s.push_hyper("alpha", self.alpha);
        s.push_hyper("eps", self.eps);
        s.push_hyper("weight_decay", self.weight_decay);
        s.push_hyper("momentum", self.momentum);
        s.push_hyper("centered", f64::from(u8::from(self.centered)));
        for (i, st) in self.state.iter().enumerate() {
            let Some(st) = st else { continue };
            s.push_step(i, st.step);
            s.push_buffer("square_avg", params, i, &st.square_avg);
            if !st.momentum_buffer.is_empty() {
                s.push_buffer("momentum_buffer", params, i, &st.momentum_buffer);
            }
            if !st.grad_avg.is_empty() {
                s.push_buffer("grad_avg", params, i, &st.grad_avg);
            }
        }
        s
    }

    fn load_state_dict(&mut self, params: &Params<T>, state: OptimizerState<T>) -> Result<()> {
        let mut r = StateReader::new("RMSprop", params, state)?;
        let lr = r.hyper("lr")?;
        let alpha = r.hyper("alpha")?;
        let eps = r.hyper("eps")?;
        let weight_decay = r.hyper("weight_decay")?;
        let momentum = r.hyper("momentum")?;
        let centered = r.flag("centered")?;
        let mut states = Vec::with_capacity(params.len());
        for i in 0..params.len() {
            let Some(step) = r.step(i) else {
                states.push(None);
                continue;
            };
            let square_avg = r.required("square_avg", i)?;
            let momentum_buffer = if momentum > 0.0 {
                r.required("momentum_buffer", i)?
            } else {
                r.buffer("momentum_buffer", i)?.unwrap_or_default()
            };
            let grad_avg = if centered {
                r.required("grad_avg", i)?
            } else {
                r.buffer("grad_avg", i)?.unwrap_or_default()
            };
            states.push(Some(RmsState {
                step,
                square_avg,
                momentum_buffer,
                grad_avg,
            }));
        }
        r.finish()?;
        *self = RmsProp {
            lr,
            alpha,
            eps,
            weight_decay,
            momentum,
            centered,
            state: states,
        };
        Ok(())
    }
}
