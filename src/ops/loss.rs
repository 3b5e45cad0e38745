//! Losses, as PyTorch defines them: elementwise losses between an input and a
//! target of one shape (`mse_loss`, `l1_loss`, `smooth_l1_loss`, `huber_loss`,
//! `binary_cross_entropy_with_logits`), and class-index losses over `[N, C]` or
//! `[N, C, d1, …]` (`nll_loss`, `cross_entropy`, `cross_entropy_with`). Each
//! takes a [`Reduction`] (PyTorch's `reduction=`), except `mse_loss` and
//! `cross_entropy`, which keep PyTorch's default, the mean.

use super::reduce::graph_one;
use super::softmax::log_softmax_lanes;
use crate::shape::Shape;
use crate::tape::{GraphCtx, GraphGrads, graph_fn, one, two};
use crate::{Float, Tensor, Var};

/// How a loss combines its per-element (or per-sample) values: PyTorch's
/// `reduction` argument. The default is [`Reduction::Mean`], as in PyTorch.
///
/// ```
/// use tapegrad::{Reduction, Tape, Tensor};
/// let tape = Tape::<f64>::new();
/// let x = tape.leaf(Tensor::from_vec(vec![1.0, -3.0], [2]).unwrap());
/// let t = tape.constant(Tensor::zeros([2]));
/// assert_eq!(x.l1_loss(t, Reduction::None).value().data(), &[1.0, 3.0]);
/// assert_eq!(x.l1_loss(t, Reduction::Sum).value().item(), 4.0);
/// assert_eq!(x.l1_loss(t, Reduction::default()).value().item(), 2.0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    /// No reduction: the loss of every element (or sample), in the input's
    /// shape (for class-index losses, the input's shape without the class axis).
    None,
    /// The sum of the per-element losses.
    Sum,
    /// The mean of the per-element losses; for class-index losses with class
    /// weights, the sum divided by the sum of the weights of the (not ignored)
    /// targets. The mean of nothing is NaN (0/0), as in PyTorch.
    #[default]
    Mean,
}

/// Options of [`Var::cross_entropy_with`] (PyTorch's `F.cross_entropy`
/// keyword arguments). The default is plain mean cross-entropy.
///
/// ```
/// use tapegrad::{CrossEntropyOptions, Reduction, Tensor};
/// let o = CrossEntropyOptions {
///     weight: Some(Tensor::<f32>::from_vec(vec![1.0, 2.0, 0.5], [3]).unwrap()),
///     label_smoothing: 0.1,
///     ..Default::default()
/// };
/// assert_eq!(o.reduction, Reduction::Mean);
/// assert_eq!(o.ignore_index, None);
/// ```
#[derive(Clone, Debug)]
pub struct CrossEntropyOptions<T: Float = f32> {
    /// A weight per class, shape `[C]`, non-negative (`None`: all 1).
    pub weight: Option<Tensor<T>>,
    /// A class index whose targets contribute nothing, neither to the loss nor
    /// to the mean's denominator (PyTorch's default, −100, is `None` here).
    pub ignore_index: Option<usize>,
    /// ε in [0, 1]: the target distribution is (1 − ε)·onehot + ε/C, i.e.
    /// loss = (1 − ε)·nll + ε·(−Σ_c w_c·log p_c)/C.
    pub label_smoothing: f64,
    /// How the per-sample losses are combined.
    pub reduction: Reduction,
}

impl<T: Float> Default for CrossEntropyOptions<T> {
    fn default() -> Self {
        CrossEntropyOptions {
            weight: None,
            ignore_index: None,
            label_smoothing: 0.0,
            reduction: Reduction::Mean,
        }
    }
}

/// Reduces per-element losses `l` (of `shape`) to the loss's value.
fn reduce<T: Float>(l: Vec<T>, shape: Shape, reduction: Reduction, denominator: T) -> Tensor<T> {
    match reduction {
        Reduction::None => Tensor::from_parts(l, shape),
        Reduction::Sum => Tensor::scalar(l.iter().fold(T::ZERO, |s, &v| s + v)),
        Reduction::Mean => Tensor::scalar(l.iter().fold(T::ZERO, |s, &v| s + v) / denominator),
    }
}

/// The upstream gradient of element `i` of the unreduced loss: the reduction's adjoint.
#[inline]
fn upstream<T: Float>(
    g: &Tensor<T>,
    reduction: Reduction,
    denominator: T,
) -> impl Fn(usize) -> T + '_ {
    let k = match reduction {
        Reduction::None => T::ZERO,
        Reduction::Sum => g.item(),
        Reduction::Mean => g.item() / denominator,
    };
    move |i| {
        if reduction == Reduction::None {
            g.data()[i]
        } else {
            k
        }
    }
}

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
    #[track_caller]
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
    #[track_caller]
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
        if let Some((i, &t)) = targets.iter().enumerate().find(|&(_, &t)| t >= c) {
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

/// sgn(d): −1, 0 or 1 (NaN for NaN), the derivative of |d| with PyTorch's 0 at 0.
#[inline]
fn sgn<T: Float>(d: T) -> T {
    if d > T::ZERO {
        T::ONE
    } else if d < T::ZERO {
        -T::ONE
    } else if d == T::ZERO {
        T::ZERO
    } else {
        d
    }
}

/// ln σ(x) = min(x, 0) − ln(1 + e^(−|x|)), without overflow.
#[inline]
fn log_sigmoid<T: Float>(x: T) -> T {
    x.min(T::ZERO) - (-x.abs()).exp().ln_1p()
}

/// σ(x) without overflow.
#[inline]
fn sigmoid<T: Float>(x: T) -> T {
    if x >= T::ZERO {
        T::ONE / (T::ONE + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::ONE + e)
    }
}

/// An elementwise loss ℓ(x, t, c, k) and its derivatives (∂ℓ/∂x, ∂ℓ/∂t), where
/// c is a per-element constant (BCE's pos_weight, else 1) and k a constant of
/// the loss (β, δ).
struct Pointwise<T: Float> {
    loss: fn(T, T, T, T) -> T,
    partials: fn(T, T, T, T) -> (T, T),
    /// The elementwise loss from twice-differentiable ops (its graph backward).
    composite: Composite<T>,
}

/// An elementwise loss ℓ(x, t, c, k) built from `Var` ops.
type Composite<T> = for<'v> fn(Var<'v, T>, Var<'v, T>, Option<Var<'v, T>>, T) -> Var<'v, T>;

/// A 0/1 constant of `d`'s shape: 1 where `inside(d)`.
fn mask<'v, T: Float>(d: Var<'v, T>, inside: impl Fn(T) -> bool) -> Var<'v, T> {
    d.constant_map(|v| if inside(v) { T::ONE } else { T::ZERO })
}

impl<'t, T: Float> Var<'t, T> {
    /// Records the elementwise loss `f` between `self` and a target of the
    /// same shape, reduced.
    fn pointwise_loss(
        self,
        target: Var<'t, T>,
        op: &'static str,
        per_element: Option<Tensor<T>>,
        k: T,
        reduction: Reduction,
        f: Pointwise<T>,
    ) -> Var<'t, T> {
        let Pointwise {
            loss,
            partials,
            composite,
        } = f;
        let (x, t) = (self.value(), target.value());
        assert!(
            x.shape() == t.shape(),
            "{op}: input {} and target {} must have the same shape",
            x.shape(),
            t.shape()
        );
        let c_at = |c: &Option<Tensor<T>>, i: usize| c.as_ref().map_or(T::ONE, |c| c.data()[i]);
        let l: Vec<T> = (0..x.numel())
            .map(|i| loss(x.data()[i], t.data()[i], c_at(&per_element, i), k))
            .collect();
        // Mean over zero elements is 0/0 = NaN, as in PyTorch.
        let n = T::from_usize(x.numel());
        let y = reduce(l, x.shape().clone(), reduction, n);
        let per_element2 = per_element.clone();
        let graph = graph_fn(move |ctx: &GraphCtx<'_, '_, T>| {
            let (x, t) = (ctx.inputs[0], ctx.inputs[1]);
            let c = per_element2.as_ref().map(|c| x.tape().constant(c.clone()));
            let l = composite(x, t, c, k);
            let l = match reduction {
                Reduction::None => l,
                Reduction::Sum => l.sum(),
                Reduction::Mean => l.sum().div_scalar(n),
            };
            l.composite_grads(ctx.grad, ctx.inputs, ctx.needs_grad)
        });
        self.tape.record_differentiable(
            op,
            y,
            &[self, target],
            move |ctx| {
                let (x, t) = (ctx.inputs[0], ctx.inputs[1]);
                let g = upstream(ctx.grad, reduction, n);
                let (mut dx, mut dt) = (Vec::new(), Vec::new());
                for i in 0..x.numel() {
                    let (px, pt) = partials(x.data()[i], t.data()[i], c_at(&per_element, i), k);
                    let gi = g(i);
                    if ctx.needs_grad[0] {
                        dx.push(gi * px);
                    }
                    if ctx.needs_grad[1] {
                        dt.push(gi * pt);
                    }
                }
                let wrap = |v: Vec<T>| Tensor::from_parts(v, x.shape().clone());
                two(
                    ctx.needs_grad[0].then(|| wrap(dx)),
                    ctx.needs_grad[1].then(|| wrap(dt)),
                )
            },
            graph,
        )
    }

    /// Squared error (x − t)², reduced: `mse_loss` with a [`Reduction`].
    /// ∂ℓ/∂x = 2(x − t), ∂ℓ/∂t = −2(x − t) (times the reduction's factor).
    ///
    /// ```
    /// use tapegrad::{Reduction, Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let a = tape.leaf(Tensor::from_vec(vec![1.0, 2.0], [2]).unwrap());
    /// let b = tape.constant(Tensor::zeros([2]));
    /// let l = a.mse_loss_with(b, Reduction::Sum);
    /// assert_eq!(l.value().item(), 5.0);
    /// assert_eq!(l.backward()[a].data(), &[2.0, 4.0]);
    /// ```
    #[track_caller]
    pub fn mse_loss_with(self, target: Var<'t, T>, reduction: Reduction) -> Var<'t, T> {
        self.pointwise_loss(
            target,
            "mse_loss_with",
            None,
            T::ZERO,
            reduction,
            Pointwise {
                loss: |x, t, _, _| (x - t) * (x - t),
                partials: |x, t, _, _| {
                    let d = (x - t) + (x - t);
                    (d, -d)
                },
                composite: |x, t, _, _| (x - t) * (x - t),
            },
        )
    }

    /// Absolute error |x − t|, reduced. ∂ℓ/∂x = sgn(x − t), 0 where x = t
    /// (PyTorch's convention), ∂ℓ/∂t = −sgn(x − t).
    ///
    /// ```
    /// use tapegrad::{Reduction, Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let a = tape.leaf(Tensor::from_vec(vec![1.0, 0.0, -3.0], [3]).unwrap());
    /// let b = tape.constant(Tensor::zeros([3]));
    /// let l = a.l1_loss(b, Reduction::Mean);
    /// assert_eq!(l.value().item(), 4.0 / 3.0);
    /// assert_eq!(l.backward()[a].data(), &[1.0 / 3.0, 0.0, -1.0 / 3.0]);
    /// ```
    #[track_caller]
    pub fn l1_loss(self, target: Var<'t, T>, reduction: Reduction) -> Var<'t, T> {
        self.pointwise_loss(
            target,
            "l1_loss",
            None,
            T::ZERO,
            reduction,
            Pointwise {
                loss: |x, t, _, _| (x - t).abs(),
                partials: |x, t, _, _| {
                    let s = sgn(x - t);
                    (s, -s)
                },
                composite: |x, t, _, _| (x - t).abs(),
            },
        )
    }

    /// Smooth L1 loss with threshold β ≥ 0: with d = x − t,
    /// ℓ = ½d²/β if |d| < β, else |d| − ½β (β = 0 is the L1 loss).
    /// ∂ℓ/∂x = d/β if |d| < β, else sgn(d); ∂ℓ/∂t = −∂ℓ/∂x.
    /// Panics if β is negative or NaN.
    ///
    /// ```
    /// use tapegrad::{Reduction, Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let a = tape.leaf(Tensor::from_vec(vec![0.5, 3.0], [2]).unwrap());
    /// let b = tape.constant(Tensor::zeros([2]));
    /// let l = a.smooth_l1_loss(b, 1.0, Reduction::Sum);
    /// assert_eq!(l.value().item(), 0.125 + 2.5);
    /// assert_eq!(l.backward()[a].data(), &[0.5, 1.0]);
    /// ```
    #[track_caller]
    pub fn smooth_l1_loss(self, target: Var<'t, T>, beta: f64, reduction: Reduction) -> Var<'t, T> {
        assert!(
            beta >= 0.0,
            "smooth_l1_loss: beta {beta} must be non-negative"
        );
        self.pointwise_loss(
            target,
            "smooth_l1_loss",
            None,
            T::from_f64(beta),
            reduction,
            Pointwise {
                loss: |x, t, _, beta| {
                    let d = (x - t).abs();
                    if d < beta {
                        T::from_f64(0.5) * d * d / beta
                    } else {
                        d - T::from_f64(0.5) * beta
                    }
                },
                partials: |x, t, _, beta| {
                    let d = x - t;
                    let p = if d.abs() < beta { d / beta } else { sgn(d) };
                    (p, -p)
                },
                composite: |x, t, _, beta| {
                    let d = x - t;
                    if beta == T::ZERO {
                        return d.abs();
                    }
                    let inside = mask(d, |v| v.abs() < beta);
                    let half = T::from_f64(0.5);
                    inside * d * d * (half / beta)
                        + inside.rsub_scalar(T::ONE) * (d.abs() - half * beta)
                },
            },
        )
    }

    /// Huber loss with threshold δ > 0: with d = x − t,
    /// ℓ = ½d² if |d| < δ, else δ·(|d| − ½δ).
    /// ∂ℓ/∂x = d if |d| ≤ δ, else δ·sgn(d); ∂ℓ/∂t = −∂ℓ/∂x.
    /// Panics if δ is not positive.
    ///
    /// ```
    /// use tapegrad::{Reduction, Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let a = tape.leaf(Tensor::from_vec(vec![0.5, 3.0], [2]).unwrap());
    /// let b = tape.constant(Tensor::zeros([2]));
    /// let l = a.huber_loss(b, 2.0, Reduction::Sum);
    /// assert_eq!(l.value().item(), 0.125 + 4.0);
    /// assert_eq!(l.backward()[a].data(), &[0.5, 2.0]);
    /// ```
    #[track_caller]
    pub fn huber_loss(self, target: Var<'t, T>, delta: f64, reduction: Reduction) -> Var<'t, T> {
        assert!(delta > 0.0, "huber_loss: delta {delta} must be positive");
        self.pointwise_loss(
            target,
            "huber_loss",
            None,
            T::from_f64(delta),
            reduction,
            Pointwise {
                loss: |x, t, _, delta| {
                    let d = (x - t).abs();
                    if d < delta {
                        T::from_f64(0.5) * d * d
                    } else {
                        delta * (d - T::from_f64(0.5) * delta)
                    }
                },
                partials: |x, t, _, delta| {
                    let d = x - t;
                    let p = if d < -delta {
                        -delta
                    } else if d > delta {
                        delta
                    } else {
                        d
                    };
                    (p, -p)
                },
                composite: |x, t, _, delta| {
                    let d = x - t;
                    let inside = mask(d, |v| v.abs() < delta);
                    let half = T::from_f64(0.5);
                    inside * d * d * half
                        + inside.rsub_scalar(T::ONE) * (d.abs() - half * delta) * delta
                },
            },
        )
    }

    /// Binary cross-entropy of logits x against targets t ∈ [0, 1] of the same
    /// shape, with an optional positive-class weight p (broadcast to the
    /// input's shape, e.g. one per class `[C]`):
    /// ℓ = −[p·t·ln σ(x) + (1 − t)·ln(1 − σ(x))]
    ///   = (1 − t)·x − (1 + (p − 1)·t)·ln σ(x),
    /// with ln σ(x) = min(x, 0) − ln(1 + e^(−|x|)), exact at any magnitude.
    /// ∂ℓ/∂x = (1 + (p − 1)·t)·σ(x) − p·t (σ(x) − t without p);
    /// ∂ℓ/∂t = −x − (p − 1)·ln σ(x).
    ///
    /// Panics if the shapes differ, if `pos_weight` does not broadcast to the
    /// input's shape, or if it holds a negative value.
    ///
    /// ```
    /// use tapegrad::{Reduction, Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![0.0, 1e4, -1e4], [3]).unwrap());
    /// let t = tape.constant(Tensor::from_vec(vec![1.0, 1.0, 0.0], [3]).unwrap());
    /// let l = x.binary_cross_entropy_with_logits(t, None, Reduction::None);
    /// assert_eq!(l.value().data(), &[2f64.ln(), 0.0, 0.0]);
    /// let g = l.sum().backward();
    /// assert_eq!(g[x].data(), &[-0.5, 0.0, 0.0]);
    /// ```
    #[track_caller]
    pub fn binary_cross_entropy_with_logits(
        self,
        target: Var<'t, T>,
        pos_weight: Option<&Tensor<T>>,
        reduction: Reduction,
    ) -> Var<'t, T> {
        const OP: &str = "binary_cross_entropy_with_logits";
        let pos_weight = pos_weight.map(|p| {
            let shape = self.shape();
            assert!(
                Shape::broadcast(p.shape(), &shape).as_ref() == Some(&shape),
                "{OP}: pos_weight {} does not broadcast to input {shape}",
                p.shape()
            );
            if let Some((i, v)) = p.data().iter().enumerate().find(|&(_, &v)| v < T::ZERO) {
                panic!("{OP}: pos_weight[{i}] = {v} is negative");
            }
            p.broadcast_to(shape)
        });
        self.pointwise_loss(
            target,
            OP,
            pos_weight,
            T::ZERO,
            reduction,
            Pointwise {
                loss: |x, t, p, _| (T::ONE - t) * x - (T::ONE + (p - T::ONE) * t) * log_sigmoid(x),
                partials: |x, t, p, _| {
                    let dx = (T::ONE + (p - T::ONE) * t) * sigmoid(x) - p * t;
                    let dt = -x - (p - T::ONE) * log_sigmoid(x);
                    (dx, dt)
                },
                // (1 − t)·x + (1 + (p − 1)·t)·softplus(−x), softplus(−x) = −ln σ(x).
                composite: |x, t, p, _| {
                    let sp = x.neg().softplus(1.0, f64::INFINITY);
                    let scale = match p {
                        Some(p) => t * p.add_scalar(-T::ONE) + T::ONE,
                        None => t * T::ZERO + T::ONE,
                    };
                    t.rsub_scalar(T::ONE) * x + scale * sp
                },
            },
        )
    }
}

/// The layout of a class-index loss: input `[N, C, d1, …]` viewed as
/// `(N, C, inner)`, `inner = d1·…` (1 for `[N, C]`), one target per `(n, d…)`,
/// with the class weights, the ignored class and the output shape `[N, d1, …]`.
#[derive(Clone)]
struct ClassLoss<T: Float> {
    c: usize,
    inner: usize,
    targets: Vec<usize>,
    weight: Option<Vec<T>>,
    ignore_index: Option<usize>,
    out_shape: Shape,
}

impl<T: Float> ClassLoss<T> {
    /// Checks the input's shape, the targets and the weights, naming `op` in the panic.
    fn new(
        op: &str,
        shape: &Shape,
        targets: &[usize],
        weight: Option<&Tensor<T>>,
        ignore_index: Option<usize>,
    ) -> Self {
        assert!(
            shape.rank() >= 2,
            "{op}: input must be [N, C] or [N, C, d1, …], got {shape}"
        );
        let (n, c) = (shape[0], shape[1]);
        let inner: usize = shape[2..].iter().product();
        assert!(c > 0, "{op}: input {shape} has no classes");
        let mut out: Vec<usize> = vec![n];
        out.extend_from_slice(&shape[2..]);
        let out_shape = Shape::from(&out[..]);
        assert!(
            targets.len() == n * inner,
            "{op}: input {shape} needs {} targets (one per element of {out_shape}), got {}",
            n * inner,
            targets.len()
        );
        if let Some(w) = weight {
            assert!(
                w.shape()[..] == [c],
                "{op}: weight {} must be [C] = [{c}] for input {shape}",
                w.shape()
            );
            if let Some((i, v)) = w.data().iter().enumerate().find(|&(_, &v)| v < T::ZERO) {
                panic!("{op}: weight[{i}] = {v} is negative");
            }
        }
        let ignored = |t: usize| Some(t) == ignore_index;
        if let Some((i, &t)) = targets
            .iter()
            .enumerate()
            .find(|&(_, &t)| t >= c && !ignored(t))
        {
            panic!("{op}: target[{i}] = {t} is out of range for {c} classes (input {shape})");
        }
        ClassLoss {
            c,
            inner,
            targets: targets.to_vec(),
            weight: weight.map(|w| w.data().to_vec()),
            ignore_index,
            out_shape,
        }
    }

    /// The weight of class `k`.
    #[inline]
    /// The loss rebuilt from twice-differentiable ops on the log-probabilities
    /// `logp` (its graph backward): −Σ_j M_j·logp_j per position, with
    /// M = (1 − ε)·w_t at the target plus ε·w_j/C at every class (0 where the
    /// target is ignored), then reduced (the mean divides by `wsum`).
    fn composite<'t>(&self, logp: Var<'t, T>, eps: T, reduction: Reduction, wsum: T) -> Var<'t, T> {
        let shape = logp.shape();
        let mut m = crate::buffer::full(shape.numel(), T::ZERO);
        let eps_c = eps / T::from_usize(self.c);
        self.for_each(|_, base, t| {
            for j in 0..self.c {
                m[base + j * self.inner] = eps_c * self.w(j);
            }
            m[base + t * self.inner] += (T::ONE - eps) * self.w(t);
        });
        let m = logp.tape().constant(Tensor::from_parts(m, shape));
        let l = (logp * m).sum_axes(&[1], false).neg();
        match reduction {
            Reduction::None => l,
            Reduction::Sum => l.sum(),
            Reduction::Mean => l.sum().div_scalar(wsum),
        }
    }

    fn w(&self, k: usize) -> T {
        self.weight.as_ref().map_or(T::ONE, |w| w[k])
    }

    /// Calls `f(p, base, t)` for every target `p` that is not ignored, with
    /// `base` the input index of class 0 at that position and `t` its class
    /// (the input index of class k is `base + k·inner`).
    fn for_each(&self, mut f: impl FnMut(usize, usize, usize)) {
        for (p, &t) in self.targets.iter().enumerate() {
            if Some(t) != self.ignore_index {
                let (i, s) = (p / self.inner, p % self.inner);
                f(p, i * self.c * self.inner + s, t);
            }
        }
    }

    /// The per-position losses (1 − ε)·(−w_t·log p_t) + (ε/C)·(−Σ_k w_k·log p_k),
    /// 0 where ignored, and the sum of the weights of the targets not ignored
    /// (the mean's denominator).
    fn losses(&self, logp: &[T], eps: T) -> (Vec<T>, T) {
        let mut l = vec![T::ZERO; self.targets.len()];
        let mut wsum = T::ZERO;
        let eps_c = eps / T::from_usize(self.c);
        self.for_each(|p, base, t| {
            let wt = self.w(t);
            wsum += wt;
            let mut v = (T::ONE - eps) * (-wt * logp[base + t * self.inner]);
            if eps != T::ZERO {
                let smooth =
                    (0..self.c).fold(T::ZERO, |s, k| s - self.w(k) * logp[base + k * self.inner]);
                v += eps_c * smooth;
            }
            l[p] = v;
        });
        (l, wsum)
    }
}

impl<'t, T: Float> Var<'t, T> {
    /// Negative log-likelihood of log-probabilities `[N, C]` or `[N, C, d1, …]`
    /// (e.g. the output of `log_softmax(1)`) against class indices, one per
    /// `[N, d1, …]` position, flattened row-major: ℓ = −w_t·x\[t\] per position,
    /// 0 for a target equal to `ignore_index`. With [`Reduction::Mean`] the sum
    /// is divided by the sum of the weights of the targets not ignored (PyTorch's
    /// weighted mean); [`Reduction::None`] gives the `[N, d1, …]` losses.
    /// ∂ℓ/∂x\[t\] = −w_t, 0 for every other class.
    ///
    /// Panics naming the op for a rank below 2, no classes, a wrong number
    /// of targets, a target out of range (other than `ignore_index`), or a
    /// weight that is not `[C]` or holds a negative value.
    ///
    /// ```
    /// use tapegrad::{Reduction, Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let logp = tape.leaf(Tensor::from_vec(vec![-1.0, -2.0, -3.0, -4.0], [2, 2]).unwrap());
    /// let w = Tensor::from_vec(vec![1.0, 3.0], [2]).unwrap();
    /// let l = logp.nll_loss(&[0, 1], Some(&w), None, Reduction::Mean);
    /// assert_eq!(l.value().item(), (1.0 + 3.0 * 4.0) / 4.0);
    /// assert_eq!(l.backward()[logp].data(), &[-0.25, 0.0, 0.0, -0.75]);
    /// ```
    #[track_caller]
    pub fn nll_loss(
        self,
        targets: &[usize],
        weight: Option<&Tensor<T>>,
        ignore_index: Option<usize>,
        reduction: Reduction,
    ) -> Var<'t, T> {
        let x = self.value();
        let cl = ClassLoss::new("nll_loss", x.shape(), targets, weight, ignore_index);
        let (l, wsum) = cl.losses(x.data(), T::ZERO);
        let y = reduce(l, cl.out_shape.clone(), reduction, wsum);
        let cl2 = cl.clone();
        self.tape.record_differentiable(
            "nll_loss",
            y,
            &[self],
            move |ctx| {
                let g = upstream(ctx.grad, reduction, wsum);
                let mut d = crate::buffer::full(ctx.inputs[0].numel(), T::ZERO);
                cl.for_each(|p, base, t| d[base + t * cl.inner] = -g(p) * cl.w(t));
                one(Tensor::from_parts(d, ctx.inputs[0].shape().clone()))
            },
            move |ctx| {
                let l = cl2.composite(ctx.inputs[0], T::ZERO, reduction, wsum);
                l.composite_grads(ctx.grad, ctx.inputs, ctx.needs_grad)
            },
        )
    }

    /// Cross-entropy of logits `[N, C]` or `[N, C, d1, …]` (classes on axis 1,
    /// e.g. NCHW segmentation logits with `N·H·W` targets flattened row-major)
    /// against class indices, with PyTorch's options ([`CrossEntropyOptions`]):
    /// class weights, an ignored class, label smoothing and the reduction.
    /// With log p = log_softmax(x) over the classes, ε the smoothing and w the
    /// weights (1 without), each position not ignored contributes
    /// ℓ = (1 − ε)·(−w_t·log p_t) + (ε/C)·Σ_k (−w_k·log p_k);
    /// the mean divides the sum by Σ w_t over the targets not ignored (both
    /// parts, as PyTorch). With a = the ℓ's gradient with respect to log p,
    /// ∂ℓ/∂x_k = a_k − p_k·Σ_j a_j, i.e.
    /// p_k·((1 − ε)·w_t + (ε/C)·Σ_j w_j) − (1 − ε)·w_t·[k = t] − (ε/C)·w_k.
    /// Computed in the frame shifted by each position's largest logit, so large
    /// logits are exact.
    ///
    /// Panics as [`nll_loss`](Var::nll_loss) does (naming `cross_entropy_with`),
    /// and for a label smoothing outside [0, 1].
    ///
    /// ```
    /// use tapegrad::{CrossEntropyOptions, Reduction, Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// // [N=1, C=2, H=1, W=3] logits, 3 pixel targets, one ignored.
    /// let x = tape.leaf(Tensor::zeros([1, 2, 1, 3]));
    /// let opts = CrossEntropyOptions { ignore_index: Some(7), ..Default::default() };
    /// let l = x.cross_entropy_with(&[0, 7, 1], opts);
    /// assert!((l.value().item() - 2f64.ln()).abs() < 1e-15);
    /// let per_pixel = x.cross_entropy_with(&[0, 7, 1], CrossEntropyOptions {
    ///     ignore_index: Some(7),
    ///     reduction: Reduction::None,
    ///     ..Default::default()
    /// });
    /// assert_eq!(&per_pixel.shape()[..], &[1, 1, 3]);
    /// assert_eq!(per_pixel.value().data()[1], 0.0);
    /// ```
    #[track_caller]
    pub fn cross_entropy_with(
        self,
        targets: &[usize],
        options: CrossEntropyOptions<T>,
    ) -> Var<'t, T> {
        const OP: &str = "cross_entropy_with";
        let eps = options.label_smoothing;
        let x = self.value();
        let cl = ClassLoss::new(
            OP,
            x.shape(),
            targets,
            options.weight.as_ref(),
            options.ignore_index,
        );
        assert!(
            (0.0..=1.0).contains(&eps),
            "{OP}: label_smoothing {eps} must be in [0, 1]"
        );
        let (eps, reduction) = (T::from_f64(eps), options.reduction);
        let n = x.shape()[0];
        let logp = log_softmax_lanes(x.data(), n, cl.c, cl.inner);
        let (l, wsum) = cl.losses(&logp, eps);
        drop(logp);
        let y = reduce(l, cl.out_shape.clone(), reduction, wsum);
        let cl2 = cl.clone();
        let graph = graph_fn(move |ctx: &GraphCtx<'_, '_, T>| {
            let l = cl2.composite(ctx.inputs[0].log_softmax(1), eps, reduction, wsum);
            l.composite_grads(ctx.grad, ctx.inputs, ctx.needs_grad)
        });
        self.tape.record_differentiable(
            OP,
            y,
            &[self],
            move |ctx| {
                let x = ctx.inputs[0];
                let g = upstream(ctx.grad, reduction, wsum);
                let eps_c = eps / T::from_usize(cl.c);
                let w_all = (0..cl.c).fold(T::ZERO, |s, k| s + cl.w(k));
                // Starts as log p; every position not ignored is overwritten with its
                // gradient, the ignored ones are zeroed below.
                let mut d = log_softmax_lanes(x.data(), n, cl.c, cl.inner);
                let mut done = vec![false; cl.targets.len()];
                cl.for_each(|p, base, t| {
                    let k = g(p);
                    let wt = (T::ONE - eps) * cl.w(t);
                    let total = wt + eps_c * w_all;
                    for j in 0..cl.c {
                        let i = base + j * cl.inner;
                        let mut v = d[i].exp() * total - eps_c * cl.w(j);
                        if j == t {
                            v -= wt;
                        }
                        d[i] = k * v;
                    }
                    done[p] = true;
                });
                for (p, _) in done.iter().enumerate().filter(|&(_, &f)| !f) {
                    let (i, s) = (p / cl.inner, p % cl.inner);
                    for j in 0..cl.c {
                        d[i * cl.c * cl.inner + j * cl.inner + s] = T::ZERO;
                    }
                }
                one(Tensor::from_parts(d, x.shape().clone()))
            },
            graph,
        )
    }
}
