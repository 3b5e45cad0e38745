//! Gradient clipping on [`ParamGrads`], as `torch.nn.utils.clip_grad_norm_` and
//! `clip_grad_value_`.

use crate::Float;
use crate::nn::ParamGrads;

impl<T: Float> ParamGrads<T> {
    /// Scales every gradient down so that their total norm is at most `max_norm`, as
    /// `torch.nn.utils.clip_grad_norm_(…, max_norm, norm_type)`; returns the total norm
    /// before clipping.
    ///
    /// The total norm is the `norm_type`-norm of all gradient elements together (the
    /// norm of the per-tensor norms): `(Σ|g|ᵖ)^(1/p)` for a finite `p > 0`, the largest
    /// `|g|` for `f64::INFINITY`; it is computed in `f64`. Every gradient is then
    /// multiplied by `max_norm / (total + 1e-6)` when that is below 1. As in PyTorch
    /// (`error_if_nonfinite=False`), a non-finite total is not an error: a NaN total
    /// makes every gradient NaN, an infinite one multiplies them by 0. Parameters
    /// without a gradient are skipped. Panics if `norm_type` is not positive (or is NaN).
    ///
    /// ```
    /// use tapegrad::{nn::Params, Tape, Tensor};
    /// let mut p = Params::<f64>::default();
    /// let w = p.add("w", Tensor::from_vec(vec![3.0, 4.0], [2]).unwrap());
    /// let tape = Tape::new();
    /// let b = p.bind(&tape);
    /// let mut grads = b.grads((b[w] * b[w]).sum().backward() ); // 2w = [6, 8], norm 10
    /// let total = grads.clip_norm(1.0, 2.0);
    /// assert_eq!(total, 10.0);
    /// assert!((grads.norm() - 1.0).abs() < 1e-6);
    /// assert_eq!(grads.clip_norm(5.0, f64::INFINITY), grads[w].data()[1]); // max |g|, under 5: unchanged
    /// ```
    pub fn clip_norm(&mut self, max_norm: f64, norm_type: f64) -> f64 {
        assert!(
            norm_type > 0.0,
            "clip_norm: norm_type must be positive or infinite, got {norm_type}"
        );
        let grads = self.as_mut_slice();
        let values = || grads.iter().flatten().flat_map(|g| g.data().iter());
        let total = if norm_type == f64::INFINITY {
            // NaN-propagating maximum (f64::max would drop a NaN).
            values()
                .map(|v| v.to_f64().abs())
                .fold(0.0, |m: f64, a| if a.is_nan() || a > m { a } else { m })
        } else if norm_type == 2.0 {
            values()
                .map(|v| v.to_f64() * v.to_f64())
                .sum::<f64>()
                .sqrt()
        } else if norm_type == 1.0 {
            values().map(|v| v.to_f64().abs()).sum::<f64>()
        } else {
            values()
                .map(|v| v.to_f64().abs().powf(norm_type))
                .sum::<f64>()
                .powf(1.0 / norm_type)
        };
        let coef = max_norm / (total + 1e-6);
        // torch multiplies by clamp(coef, max=1): a no-op at 1, NaN when coef is NaN.
        if coef < 1.0 || coef.is_nan() {
            let c = T::from_f64(coef);
            for g in grads.iter_mut().flatten() {
                for v in g.data_mut() {
                    *v *= c;
                }
            }
        }
        total
    }

    /// Clamps every gradient element to `[−clip, clip]`, as
    /// `torch.nn.utils.clip_grad_value_` (NaN elements stay NaN). Panics if `clip`
    /// is negative or NaN.
    ///
    /// ```
    /// use tapegrad::{nn::Params, Tape, Tensor};
    /// let mut p = Params::new();
    /// let w = p.add("w", Tensor::from_vec(vec![-3.0, 0.5], [2]).unwrap());
    /// let tape = Tape::new();
    /// let b = p.bind(&tape);
    /// let mut grads = b.grads((b[w] * b[w]).sum().backward()); // [-6, 1]
    /// grads.clip_value(2.0);
    /// assert_eq!(grads[w].data(), &[-2.0, 1.0]);
    /// ```
    pub fn clip_value(&mut self, clip: f64) {
        assert!(
            clip >= 0.0,
            "clip_value: the bound must be non-negative, got {clip}"
        );
        let (lo, hi) = (T::from_f64(-clip), T::from_f64(clip));
        for g in self.as_mut_slice().iter_mut().flatten() {
            for v in g.data_mut() {
                // Comparisons are false for NaN, which passes through as in torch.clamp.
                if *v < lo {
                    *v = lo;
                } else if *v > hi {
                    *v = hi;
                }
            }
        }
    }
}
