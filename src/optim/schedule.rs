//! Learning-rate [`Schedule`]s, with PyTorch's formulas.

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
/// let warm = Schedule::warmup(0.1, 5, cos.clone());
/// assert!((warm.at(0) - 0.1).abs() < 1e-12 && warm.at(5) == cos.at(0));
/// let one = Schedule::one_cycle(0.1, 100);
/// assert!((one.at(0) - 0.004).abs() < 1e-12); // max_lr / 25
/// ```
#[derive(Clone, Debug, PartialEq)]
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
    /// Linear warm-up, then another schedule: for `step < steps` the rate is
    /// `then.at(0) · (start_factor + (1 − start_factor) · step / steps)`, rising from
    /// `start_factor` times the inner schedule's initial rate; from `steps` on it is
    /// `then.at(step − steps)` — PyTorch's `SequentialLR([LinearLR(start_factor,
    /// total_iters=steps), then], milestones=[steps])`. Built by [`Schedule::warmup`].
    Warmup {
        /// The fraction of the initial rate to start from.
        start_factor: f64,
        /// Length of the warm-up, in steps.
        steps: usize,
        /// The schedule after the warm-up (its step 0 is the first step after it).
        then: Box<Schedule>,
    },
    /// The one-cycle policy, as PyTorch's `OneCycleLR` (see [`OneCycle`]).
    OneCycle(OneCycle),
}

/// How [`OneCycle`] moves between two rates within a phase.
///
/// ```
/// use tapegrad::optim::{Anneal, OneCycle};
/// let lin = OneCycle::new(1.0, 100).anneal(Anneal::Linear);
/// assert_eq!(lin.anneal, Anneal::Linear);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anneal {
    /// `end + (start − end)·(1 + cos(π·pct))/2` (PyTorch's `anneal_strategy="cos"`).
    Cos,
    /// `start + (end − start)·pct` (`anneal_strategy="linear"`).
    Linear,
}

/// The one-cycle learning-rate policy, exactly as `torch.optim.lr_scheduler.OneCycleLR`
/// (the learning rate only: momentum is not cycled).
///
/// The rate starts at `initial = max_lr / div_factor`, rises to `max_lr` at step
/// `pct_start·total_steps − 1`, then falls to `min = initial / final_div_factor` at
/// step `total_steps − 1`. With `three_phase`, it falls back to `initial` at step
/// `2·pct_start·total_steps − 2` and then to `min`. Within a phase running from step
/// `s₀` to `s₁`, `pct = (step − s₀)/(s₁ − s₀)` and the rate is annealed by [`Anneal`].
/// Steps past `total_steps` give the rate at `total_steps` (PyTorch raises an error
/// there).
///
/// ```
/// use tapegrad::optim::{OneCycle, Schedule};
/// let s = OneCycle::new(0.1, 100);
/// assert!((s.at(0) - 0.1 / 25.0).abs() < 1e-15);
/// assert!((s.at(29) - 0.1).abs() < 1e-15); // the peak, at 0.3·100 − 1
/// assert!((s.at(99) - 0.1 / 25.0 / 1e4).abs() < 1e-15);
/// let schedule: Schedule = s.into();
/// assert_eq!(schedule.at(29), s.at(29));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OneCycle {
    /// The peak rate.
    pub max_lr: f64,
    /// The length of the cycle, in steps.
    pub total_steps: usize,
    /// The fraction of the cycle spent rising (default 0.3).
    pub pct_start: f64,
    /// Cosine (default) or linear annealing.
    pub anneal: Anneal,
    /// `initial = max_lr / div_factor` (default 25).
    pub div_factor: f64,
    /// `min = initial / final_div_factor` (default 1e4).
    pub final_div_factor: f64,
    /// A third phase: rise, fall back to `initial`, then anneal to `min` (default off).
    pub three_phase: bool,
}

impl OneCycle {
    /// A cycle of `total_steps` peaking at `max_lr`, with PyTorch's defaults
    /// (`pct_start = 0.3`, cosine, `div_factor = 25`, `final_div_factor = 1e4`, two phases).
    ///
    /// ```
    /// let s = tapegrad::optim::OneCycle::new(0.1, 1000);
    /// assert_eq!((s.pct_start, s.div_factor, s.final_div_factor), (0.3, 25.0, 1e4));
    /// ```
    pub fn new(max_lr: f64, total_steps: usize) -> Self {
        OneCycle {
            max_lr,
            total_steps,
            pct_start: 0.3,
            anneal: Anneal::Cos,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
        }
    }
    /// Sets the fraction of the cycle spent rising.
    ///
    /// ```
    /// assert_eq!(tapegrad::optim::OneCycle::new(0.1, 10).pct_start(0.5).pct_start, 0.5);
    /// ```
    pub fn pct_start(mut self, pct: f64) -> Self {
        self.pct_start = pct;
        self
    }
    /// Sets the annealing.
    ///
    /// ```
    /// use tapegrad::optim::{Anneal, OneCycle};
    /// assert_eq!(OneCycle::new(0.1, 10).anneal(Anneal::Linear).anneal, Anneal::Linear);
    /// ```
    pub fn anneal(mut self, anneal: Anneal) -> Self {
        self.anneal = anneal;
        self
    }
    /// Sets `div_factor` (`initial = max_lr / div_factor`).
    ///
    /// ```
    /// assert!((tapegrad::optim::OneCycle::new(0.1, 10).div_factor(10.0).at(0) - 0.01).abs() < 1e-15);
    /// ```
    pub fn div_factor(mut self, d: f64) -> Self {
        self.div_factor = d;
        self
    }
    /// Sets `final_div_factor` (`min = initial / final_div_factor`).
    ///
    /// ```
    /// assert_eq!(tapegrad::optim::OneCycle::new(0.1, 10).final_div_factor(100.0).final_div_factor, 100.0);
    /// ```
    pub fn final_div_factor(mut self, d: f64) -> Self {
        self.final_div_factor = d;
        self
    }
    /// Enables the three-phase variant.
    ///
    /// ```
    /// assert!(tapegrad::optim::OneCycle::new(0.1, 10).three_phase(true).three_phase);
    /// ```
    pub fn three_phase(mut self, on: bool) -> Self {
        self.three_phase = on;
        self
    }

    /// The learning rate at `step`.
    ///
    /// ```
    /// let s = tapegrad::optim::OneCycle::new(1.0, 10);
    /// assert!(s.at(2) == 1.0 && s.at(1) < 1.0 && s.at(3) < 1.0);
    /// ```
    pub fn at(&self, step: usize) -> f64 {
        let total = self.total_steps as f64;
        let initial = self.max_lr / self.div_factor;
        let min = initial / self.final_div_factor;
        let rise_end = self.pct_start * total - 1.0;
        let phases: &[(f64, f64, f64)] = if self.three_phase {
            &[
                (rise_end, initial, self.max_lr),
                (2.0 * self.pct_start * total - 2.0, self.max_lr, initial),
                (total - 1.0, initial, min),
            ]
        } else {
            &[
                (rise_end, initial, self.max_lr),
                (total - 1.0, self.max_lr, min),
            ]
        };
        let step = step.min(self.total_steps) as f64;
        let mut start_step = 0.0;
        for (i, &(end_step, from, to)) in phases.iter().enumerate() {
            if step <= end_step || i == phases.len() - 1 {
                let pct = (step - start_step) / (end_step - start_step);
                return match self.anneal {
                    Anneal::Cos => {
                        to + (from - to) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0)
                    }
                    Anneal::Linear => (to - from) * pct + from,
                };
            }
            start_step = end_step;
        }
        unreachable!("the last phase always matches")
    }
}

impl From<OneCycle> for Schedule {
    fn from(c: OneCycle) -> Self {
        Schedule::OneCycle(c)
    }
}

impl Schedule {
    /// The learning rate at `step`.
    ///
    /// ```
    /// assert_eq!(tapegrad::optim::Schedule::Constant(0.1).at(99), 0.1);
    /// ```
    pub fn at(&self, step: usize) -> f64 {
        match *self {
            Schedule::Warmup {
                start_factor,
                steps,
                ref then,
            } => {
                if step < steps {
                    let f = start_factor + (1.0 - start_factor) * step as f64 / steps as f64;
                    then.at(0) * f
                } else {
                    then.at(step - steps)
                }
            }
            Schedule::OneCycle(ref c) => c.at(step),
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

    /// A linear warm-up of `steps` steps from `start_factor · then.at(0)`, followed by
    /// `then` (see [`Schedule::Warmup`]).
    ///
    /// ```
    /// use tapegrad::optim::Schedule;
    /// let s = Schedule::warmup(0.25, 3, Schedule::Constant(0.4));
    /// let lrs: Vec<f64> = (0..5).map(|i| s.at(i)).collect();
    /// assert_eq!(lrs, [0.1, 0.2, 0.30000000000000004, 0.4, 0.4]);
    /// ```
    pub fn warmup(start_factor: f64, steps: usize, then: Schedule) -> Schedule {
        Schedule::Warmup {
            start_factor,
            steps,
            then: Box::new(then),
        }
    }

    /// PyTorch's `OneCycleLR(max_lr, total_steps)` with its defaults; see [`OneCycle`]
    /// to change them.
    ///
    /// ```
    /// let s = tapegrad::optim::Schedule::one_cycle(1.0, 10);
    /// assert_eq!(s.at(2), 1.0);
    /// ```
    pub fn one_cycle(max_lr: f64, total_steps: usize) -> Schedule {
        Schedule::OneCycle(OneCycle::new(max_lr, total_steps))
    }
}
