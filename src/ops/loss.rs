//! Losses: mean squared error and softmax cross-entropy over logits, both mean-reduced
//! as PyTorch's defaults.

use super::reduce::graph_one;
use super::softmax::log_softmax_lanes;
use crate::shape::Shape;
use crate::tape::{one, two, GraphGrads};
use crate::{Float, Tensor, Var};

impl<'t, T: Float> Var<'t, T> {
    /// Mean squared error `L = mean((a − b)²)` between tensors of the same shape.
    /// ∂L/∂a = 2(a − b)/n, ∂L/∂b = −2(a − b)/n.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let a = tape.leaf(Tensor::from_vec(vec![1.0, 2.0], [2]).unwrap());
    /// let b = tape.constant(Tensor::from_vec(vec![0.0, 0.0], [2]).unwrap());
    /// let l = a.mse_loss(b);
    /// assert_eq!(l.value().item(), 2.5);
    /// assert_eq!(l.backward()[a].data(), &[1.0, 2.0]);
    /// ```
    pub fn mse_loss(self, target: Var<'t, T>) -> Var<'t, T> {
        let (a, b) = (self.value(), target.value());
        assert!(
            a.shape() == b.shape(),
            "mse_loss: input {} and target {} must have the same shape",
            a.shape(),
            b.shape()
        );
        // Mean over zero elements is 0/0 = NaN, as in PyTorch.
        let n = T::from_usize(a.numel());
        let s: T = a
            .data()
            .iter()
            .zip(b.data())
            .fold(T::ZERO, |s, (&x, &y)| s + (x - y) * (x - y));
        self.tape.record_differentiable_scalar(
            "mse_loss",
            Tensor::scalar(s / n),
            &[self, target],
            n,
            |ctx| {
                let k = (ctx.grad.item() + ctx.grad.item()) / ctx.scalar;
                let d = ctx.inputs[0].zip_map(ctx.inputs[1], "mse_loss", |x, y| k * (x - y));
                let db = ctx.needs_grad[1].then(|| d.map(|v| -v));
                two(Some(d), db)
            },
            |ctx| {
                let (a, b) = (ctx.inputs[0], ctx.inputs[1]);
                let d = (a - b) * (ctx.grad * (T::from_f64(2.0) / ctx.scalar));
                let mut v = GraphGrads::new();
                v.push(ctx.needs_grad[0].then_some(d));
                v.push(ctx.needs_grad[1].then(|| d.neg()));
                v
            },
        )
    }

    /// Cross-entropy of logits `[N, C]` against integer class targets (length N),
    /// mean over the batch: `L = (1/N) Σₙ (logsumexp(xₙ) − xₙ[tₙ])`, computed stably.
    /// ∂L/∂xₙ = (softmax(xₙ) − onehot(tₙ)) / N.
    ///
    /// Panics naming the op if the shapes disagree or a target is out of range.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let logits = tape.leaf(Tensor::zeros([2, 4]));
    /// let loss = logits.cross_entropy(&[1, 3]);
    /// assert!((loss.value().item() - 4f64.ln()).abs() < 1e-12);
    /// let g = loss.backward();
    /// assert_eq!(g[logits].get(&[0, 1]), (0.25 - 1.0) / 2.0);
    /// ```
    pub fn cross_entropy(self, targets: &[usize]) -> Var<'t, T> {
        let x = self.value();
        let s = x.shape();
        assert!(
            s.rank() == 2,
            "cross_entropy: logits must be [N, C], got {s}"
        );
        let (n, c) = (s[0], s[1]);
        assert!(
            targets.len() == n,
            "cross_entropy: logits {s} need {n} targets, got {}",
            targets.len()
        );
        if let Some((i, &t)) = targets.iter().enumerate().find(|(_, &t)| t >= c) {
            panic!("cross_entropy: target[{i}] = {t} is out of range for {c} classes (logits {s})");
        }
        assert!(c > 0, "cross_entropy: logits {s} have no classes");
        let logp = log_softmax_lanes(x.data(), n, c, 1);
        let total: T = targets
            .iter()
            .enumerate()
            .fold(T::ZERO, |s, (i, &t)| s - logp[i * c + t]);
        // An empty batch gives 0/0 = NaN, as in PyTorch.
        let inv_n = T::ONE / T::from_usize(n);
        let targets = targets.to_vec();
        let onehot = {
            let mut m = crate::buffer::full(n * c, T::ZERO);
            for (i, &t) in targets.iter().enumerate() {
                m[i * c + t] = T::ONE;
            }
            Tensor::from_parts(m, Shape::from([n, c]))
        };
        self.tape.record_differentiable(
            "cross_entropy",
            Tensor::scalar(total * inv_n),
            &[self],
            move |ctx| {
                let x = ctx.inputs[0];
                let k = ctx.grad.item() * inv_n;
                let mut d: Vec<T> = log_softmax_lanes(x.data(), n, c, 1);
                for (i, row) in d.chunks_exact_mut(c).enumerate() {
                    for v in row.iter_mut() {
                        *v = v.exp() * k;
                    }
                    row[targets[i]] -= k;
                }
                one(Tensor::from_parts(d, Shape::from([n, c])))
            },
            move |ctx| {
                let x = ctx.inputs[0];
                let p = x.softmax(1) - x.tape().constant(onehot.clone());
                graph_one(p * (ctx.grad * inv_n))
            },
        )
    }
}
