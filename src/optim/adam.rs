//! [`Adam`] and AdamW, as `torch.optim.Adam` / `torch.optim.AdamW`.

use super::state::{StateReader, check_state_len};
use super::{Optimizer, OptimizerState, check_lengths, check_shape};
use crate::nn::{ParamGradsSource, Params};
use crate::{Error, Float, Result};

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
    fn step(&mut self, params: &mut Params<T>, grads: &dyn ParamGradsSource<T>) {
        let grads = grads.param_grads_for("Adam::step", params);
        let grads = &*grads;
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

    /// Kind `Adam` or `AdamW`; hyper-parameters `lr`, `beta1`, `beta2`, `eps`,
    /// `weight_decay`, `amsgrad`; per stepped parameter a step count, `exp_avg`,
    /// `exp_avg_sq`, and `max_exp_avg_sq` with AMSGrad.
    fn state_dict(&self, params: &Params<T>) -> OptimizerState<T> {
        check_state_len("Adam::state_dict", params, self.state.len());
        let mut s = OptimizerState::new(self.kind(), params);
        s.push_hyper("lr", self.lr);
        s.push_hyper("beta1", self.betas.0);
        s.push_hyper("beta2", self.betas.1);
        s.push_hyper("eps", self.eps);
        s.push_hyper("weight_decay", self.weight_decay);
        s.push_hyper("amsgrad", f64::from(u8::from(self.amsgrad)));
        for (i, st) in self.state.iter().enumerate() {
            let Some(st) = st else { continue };
            s.push_step(i, st.t as u64);
            s.push_buffer("exp_avg", params, i, &st.m);
            s.push_buffer("exp_avg_sq", params, i, &st.v);
            if !st.vmax.is_empty() {
                s.push_buffer("max_exp_avg_sq", params, i, &st.vmax);
            }
        }
        s
    }

    fn load_state_dict(&mut self, params: &Params<T>, state: OptimizerState<T>) -> Result<()> {
        let mut r = StateReader::new(self.kind(), params, state)?;
        let lr = r.hyper("lr")?;
        let betas = (r.hyper("beta1")?, r.hyper("beta2")?);
        let eps = r.hyper("eps")?;
        let weight_decay = r.hyper("weight_decay")?;
        let amsgrad = r.flag("amsgrad")?;
        let mut states = Vec::with_capacity(params.len());
        for i in 0..params.len() {
            let Some(t) = r.step(i) else {
                states.push(None);
                continue;
            };
            let name = params.iter().nth(i).expect("index in range").1;
            let t = i32::try_from(t).map_err(|_| Error::Parameter {
                name: format!("step.{name}"),
                message: format!("step count {t} is too large"),
            })?;
            let m = r.required("exp_avg", i)?;
            let v = r.required("exp_avg_sq", i)?;
            let vmax = if amsgrad {
                r.required("max_exp_avg_sq", i)?
            } else {
                r.buffer("max_exp_avg_sq", i)?.unwrap_or_default()
            };
            states.push(Some(AdamState { t, m, v, vmax }));
        }
        r.finish()?;
        *self = Adam {
            lr,
            betas,
            eps,
            weight_decay,
            decoupled: self.decoupled,
            amsgrad,
            state: states,
        };
        Ok(())
    }
}

impl<T: Float> Adam<T> {
    /// `Adam` or `AdamW`, the kind recorded in a state file.
    fn kind(&self) -> &'static str {
        if self.decoupled { "AdamW" } else { "Adam" }
    }
}
