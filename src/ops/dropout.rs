//! Dropout: each element (or each channel) is zeroed with probability `p` and
//! the survivors are scaled by 1/(1 − p), so the expected value is unchanged
//! ("inverted" dropout, as PyTorch). The mask comes from the caller's RNG, so a
//! run is repeatable for a seed. These ops always drop: a layer in evaluation
//! mode simply does not call them (see [`nn::Dropout`](crate::nn::Dropout)).

use super::reduce::graph_one;
use crate::tape::one;
use crate::{Float, Tensor, Var};
use rand::RngExt;

/// Checks a dropout probability.
fn check_p(op: &str, p: f64) {
    assert!(
        (0.0..=1.0).contains(&p),
        "{op}: the drop probability must be in [0, 1], got {p}"
    );
}

/// The scale of a kept element: 1/(1 − p), or 0 when everything is dropped.
fn keep_scale<T: Float>(p: f64) -> T {
    if p < 1.0 {
        T::from_f64(1.0 / (1.0 - p))
    } else {
        T::ZERO
    }
}

/// One mask value per group: `scale` with probability 1 − p, else 0.
fn draw_mask<T: Float, R: rand::Rng + ?Sized>(groups: usize, p: f64, rng: &mut R) -> Vec<T> {
    let scale = keep_scale::<T>(p);
    (0..groups)
        .map(|_| {
            if rng.random::<f64>() < p {
                T::ZERO
            } else {
                scale
            }
        })
        .collect()
}

impl<'t, T: Float> Var<'t, T> {
    /// Elementwise dropout: yᵢ = xᵢ·mᵢ with mᵢ = 1/(1 − p) with probability
    /// 1 − p, else 0, drawn from `rng`. ∂y/∂x = m (the same mask).
    /// p = 0 returns `self`; p = 1 gives zeros. Panics if p is not in [0, 1].
    ///
    /// ```
    /// use tapegrad::rand::SeedableRng;
    /// use tapegrad::{Tape, Tensor};
    /// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::ones([1000]));
    /// let y = x.dropout(0.5, &mut rng);
    /// let kept = y.value().data().iter().filter(|&&v| v == 2.0).count();
    /// assert!((400..600).contains(&kept)); // the rest are 0
    /// let g = y.sum().backward();
    /// assert_eq!(g[x].data(), y.value().data()); // dy/dx is the mask
    /// ```
    #[track_caller]
    pub fn dropout<R: rand::Rng + ?Sized>(self, p: f64, rng: &mut R) -> Var<'t, T> {
        check_p("dropout", p);
        if p == 0.0 {
            return self;
        }
        let x = self.value();
        let mask = Tensor::from_parts(draw_mask(x.numel(), p, rng), x.shape().clone());
        self.apply_mask("dropout", mask)
    }

    /// Channel dropout (PyTorch's `dropout2d`) of an `[N, C, *]` input: every
    /// value of channel c of sample n is multiplied by the same m₍ₙ,c₎ =
    /// 1/(1 − p) with probability 1 − p, else 0. ∂y/∂x = m. p = 0 returns
    /// `self`. Panics if p is not in [0, 1] or the input has rank < 2.
    ///
    /// ```
    /// use tapegrad::rand::SeedableRng;
    /// use tapegrad::{Tape, Tensor};
    /// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(1);
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::ones([2, 8, 3, 3]));
    /// let y = x.dropout2d(0.5, &mut rng).value();
    /// for plane in y.data().chunks(9) {
    ///     assert!(plane.iter().all(|&v| v == plane[0])); // whole channels kept or dropped
    /// }
    /// ```
    #[track_caller]
    pub fn dropout2d<R: rand::Rng + ?Sized>(self, p: f64, rng: &mut R) -> Var<'t, T> {
        check_p("dropout2d", p);
        let x = self.value();
        let s = x.shape();
        assert!(
            s.rank() >= 2,
            "dropout2d: input {s} must be [N, C, *] (rank at least 2)"
        );
        if p == 0.0 {
            return self;
        }
        let channels = s[0] * s[1];
        let per: usize = s[2..].iter().product();
        let m = draw_mask::<T, R>(channels, p, rng);
        let mut data = crate::buffer::with_capacity(x.numel());
        for &v in &m {
            data.extend(std::iter::repeat_n(v, per));
        }
        let mask = Tensor::from_parts(data, s.clone());
        self.apply_mask("dropout2d", mask)
    }

    /// y = x ⊙ mask, dx = g ⊙ mask.
    fn apply_mask(self, op: &'static str, mask: Tensor<T>) -> Var<'t, T> {
        let y = self.value().zip_map(&mask, op, |x, m| x * m);
        let mask2 = mask.clone();
        self.tape.record_differentiable(
            op,
            y,
            &[self],
            move |ctx| one(ctx.grad.zip_map(&mask, op, |g, m| g * m)),
            move |ctx| graph_one(ctx.grad * ctx.grad.tape().constant(mask2.clone())),
        )
    }
}
