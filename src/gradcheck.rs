//! Finite-difference gradient checking in `f64`, with PyTorch's defaults.
//!
//! [`gradcheck`] compares the gradients `backward()` computes with central
//! differences `(f(x + ε) − f(x − ε)) / 2ε`. A non-scalar output is reduced to
//! the scalar `r = Σ out ⊙ v` for a fixed random `v`, so what is checked is the
//! vector-Jacobian product vᵀJ — exactly what backward computes — and a wrong
//! Jacobian entry is caught with probability 1.

use crate::{Tape, Tensor, Var};
use rand::SeedableRng;
use std::fmt;

/// How many finite differences to take.
///
/// ```
/// use tapegrad::gradcheck::{Mode, Options};
/// let cheap = Options { mode: Mode::RandomDirections(4), ..Options::default() };
/// assert_eq!(cheap.mode, Mode::RandomDirections(4));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Perturb every input element separately: 2 forward passes per element.
    Full,
    /// Compare the directional derivative vᵀJu along this many random directions u
    /// (all inputs at once): 2 forward passes per direction, for large inputs.
    RandomDirections(usize),
}

/// Tolerances and mode for [`gradcheck`]. The defaults are PyTorch's
/// (`eps = 1e-6`, `atol = 1e-5`, `rtol = 1e-3`), full mode.
///
/// ```
/// let o = tapegrad::gradcheck::Options::default();
/// assert_eq!((o.eps, o.atol, o.rtol), (1e-6, 1e-5, 1e-3));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Finite-difference step.
    pub eps: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance (relative to the numeric value).
    pub rtol: f64,
    /// Full or random-direction checking.
    pub mode: Mode,
    /// Seed of the projection vector v and of the random directions.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            eps: 1e-6,
            atol: 1e-5,
            rtol: 1e-3,
            mode: Mode::Full,
            seed: 0,
        }
    }
}

/// One compared value: which input and element (or which direction), analytic vs numeric.
///
/// ```
/// use tapegrad::gradcheck::{Comparison, Options};
/// let c = Comparison { input: Some(0), index: vec![1], analytic: 2.0, numeric: 2.0 + 1e-6 };
/// assert!(c.excess(&Options::default()) < 1.0);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// Index of the input tensor (`None` in random-direction mode, where all inputs move).
    pub input: Option<usize>,
    /// Multi-index of the element within the input, or `[direction]` in random-direction mode.
    pub index: Vec<usize>,
    /// What `backward()` computed.
    pub analytic: f64,
    /// The central difference.
    pub numeric: f64,
}

impl Comparison {
    /// |analytic − numeric| divided by the allowed error `atol + rtol·|numeric|` (≤ 1 passes;
    /// NaN if either value is NaN).
    ///
    /// ```
    /// use tapegrad::gradcheck::{Comparison, Options};
    /// let c = Comparison { input: Some(0), index: vec![0], analytic: 1.0, numeric: 1.1 };
    /// assert!(c.excess(&Options::default()) > 1.0);
    /// ```
    pub fn excess(&self, o: &Options) -> f64 {
        (self.analytic - self.numeric).abs() / (o.atol + o.rtol * self.numeric.abs())
    }
}

/// The result of a [`gradcheck`]: how many values were compared and the worst one.
/// Its `Display` names the worst input and index, analytic vs numeric.
///
/// ```
/// use tapegrad::gradcheck::{gradcheck, Options};
/// let x = tapegrad::Tensor::from_vec(vec![1.0, 2.0], [2]).unwrap();
/// let report = gradcheck(|_, v| v[0].exp().sum(), &[x], Options::default());
/// assert_eq!(report.checked, 2);
/// assert!(report.to_string().starts_with("gradcheck passed: 2 values compared; worst: input 0"));
/// ```
#[derive(Clone, Debug)]
pub struct Report {
    /// Number of compared values.
    pub checked: usize,
    /// The comparison with the largest [`Comparison::excess`], if any value was compared.
    pub worst: Option<Comparison>,
    /// The options used.
    pub options: Options,
}

impl Report {
    /// Whether at least one value was compared and every one was within tolerance
    /// (a NaN on either side fails).
    ///
    /// ```
    /// use tapegrad::gradcheck::{gradcheck, Options};
    /// use tapegrad::Tensor;
    /// let x = Tensor::from_vec(vec![0.5, -1.5], [2]).unwrap();
    /// assert!(gradcheck(|_, v| v[0].tanh(), &[x], Options::default()).passed());
    /// ```
    pub fn passed(&self) -> bool {
        // `<=` is false for NaN, so a NaN gradient (analytic or numeric) fails.
        self.worst
            .as_ref()
            .is_some_and(|w| w.excess(&self.options) <= 1.0)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed() { "passed" } else { "FAILED" };
        write!(f, "gradcheck {verdict}: {} values compared", self.checked)?;
        if let Some(w) = &self.worst {
            let what = match w.input {
                Some(i) => format!("input {i} at index {:?}", w.index),
                None => format!("random direction {}", w.index[0]),
            };
            write!(
                f,
                "; worst: {what}: analytic {:.10e} vs numeric {:.10e} (|diff| {:.3e}, allowed {:.3e})",
                w.analytic,
                w.numeric,
                (w.analytic - w.numeric).abs(),
                self.options.atol + self.options.rtol * w.numeric.abs()
            )?;
        }
        Ok(())
    }
}

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        idx[k] = i % d.max(1);
        i /= d.max(1);
    }
    idx
}

/// Checks the gradients of `f` with respect to every input against central
/// differences. `f` builds its graph on the tape it is given, from the inputs
/// (recorded as leaves), and returns the output node.
///
/// ```
/// use tapegrad::gradcheck::{gradcheck, Options};
/// use tapegrad::Tensor;
/// let a = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], [2, 2]).unwrap();
/// let b = Tensor::from_vec(vec![0.5, -1.0], [2]).unwrap();
/// let report = gradcheck(|_, x| (x[0] * x[1]).exp().sum(), &[a, b], Options::default());
/// assert!(report.passed(), "{report}");
/// ```
pub fn gradcheck<F>(f: F, inputs: &[Tensor<f64>], options: Options) -> Report
where
    F: for<'t> Fn(&'t Tape<f64>, &[Var<'t, f64>]) -> Var<'t, f64>,
{
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    // The scalar r(x) = Σ f(x) ⊙ v, evaluated without recording gradients.
    let eval = |xs: &[Tensor<f64>], v: &Tensor<f64>| -> f64 {
        let tape = Tape::<f64>::new();
        let vars: Vec<_> = xs.iter().map(|x| tape.constant(x.clone())).collect();
        let out = f(&tape, &vars).value();
        out.data().iter().zip(v.data()).map(|(a, b)| a * b).sum()
    };
    // Analytic: one backward pass seeded with v.
    let tape = Tape::<f64>::new();
    let vars: Vec<_> = inputs.iter().map(|x| tape.leaf(x.clone())).collect();
    let out = f(&tape, &vars);
    let out_shape = out.shape();
    let v = if out_shape.numel() == 1 {
        Tensor::ones(out_shape)
    } else {
        Tensor::randn(out_shape, &mut rng)
    };
    let grads = out.backward_with(v.clone());
    let analytic: Vec<Tensor<f64>> = vars
        .iter()
        .zip(inputs)
        .map(|(&var, x)| {
            grads
                .get(var)
                .cloned()
                .unwrap_or_else(|| Tensor::zeros(x.shape()))
        })
        .collect();
    drop(grads);
    compare(&|xs| eval(xs, &v), &analytic, inputs, options, &mut rng)
}

/// [`gradcheck`] with default options, panicking with the report if it fails.
///
/// ```
/// use tapegrad::Tensor;
/// let x = Tensor::from_vec(vec![0.3, 0.7, -0.2], [3]).unwrap();
/// tapegrad::gradcheck::assert_gradcheck(|_, v| v[0].sigmoid(), &[x]);
/// ```
pub fn assert_gradcheck<F>(f: F, inputs: &[Tensor<f64>])
where
    F: for<'t> Fn(&'t Tape<f64>, &[Var<'t, f64>]) -> Var<'t, f64>,
{
    let report = gradcheck(f, inputs, Options::default());
    assert!(report.passed(), "{report}");
}

/// Checks second derivatives: the gradient of the first-order gradient,
/// taken as a graph ([`Var::grad_graph`]), against central differences of
/// the first-order gradient (PyTorch's `gradgradcheck` semantics, for the
/// inputs). With `r = Σ f(x) ⊙ v` for a fixed random `v` (1 for a scalar
/// output) and fixed random `uₖ`, it compares the gradient of
/// `s(x) = Σₖ ⟨∂r/∂xₖ, uₖ⟩` computed by `backward()` through the graph of
/// the gradient with `(s(x + ε) − s(x − ε)) / 2ε`, where each `s` is a
/// first-order `backward()`. Panics (naming the op) if the graph holds an op
/// whose gradient cannot be differentiated.
///
/// ```
/// use tapegrad::gradcheck::{gradgradcheck, Options};
/// use tapegrad::Tensor;
/// let x = Tensor::from_vec(vec![0.3, -1.2, 2.0], [3]).unwrap();
/// let report = gradgradcheck(|_, v| (v[0] * v[0]).tanh().sum(), &[x], Options::default());
/// assert!(report.passed(), "{report}");
/// ```
pub fn gradgradcheck<F>(f: F, inputs: &[Tensor<f64>], options: Options) -> Report
where
    F: for<'t> Fn(&'t Tape<f64>, &[Var<'t, f64>]) -> Var<'t, f64>,
{
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed ^ 0x5eed);
    // The output's shape, for v.
    let out_shape = {
        let tape = Tape::<f64>::new();
        let vars: Vec<_> = inputs.iter().map(|x| tape.constant(x.clone())).collect();
        f(&tape, &vars).shape()
    };
    let v = if out_shape.numel() == 1 {
        Tensor::ones(out_shape)
    } else {
        Tensor::randn(out_shape, &mut rng)
    };
    let us: Vec<Tensor<f64>> = inputs
        .iter()
        .map(|x| Tensor::randn(x.shape(), &mut rng))
        .collect();
    let dot = |a: &Tensor<f64>, b: &Tensor<f64>| -> f64 {
        a.data().iter().zip(b.data()).map(|(x, y)| x * y).sum()
    };
    // s(x) from a first-order backward.
    let eval = |xs: &[Tensor<f64>]| -> f64 {
        let tape = Tape::<f64>::new();
        let vars: Vec<_> = xs.iter().map(|x| tape.leaf(x.clone())).collect();
        let out = f(&tape, &vars);
        if !out.requires_grad() {
            return 0.0;
        }
        let g = out.backward_with(v.clone());
        vars.iter()
            .zip(&us)
            .map(|(&x, u)| g.get(x).map_or(0.0, |gx| dot(gx, u)))
            .sum()
    };
    // ∂s/∂x through the gradient's graph.
    let tape = Tape::<f64>::new();
    let vars: Vec<_> = inputs.iter().map(|x| tape.leaf(x.clone())).collect();
    let out = f(&tape, &vars);
    let analytic: Vec<Tensor<f64>> = if out.requires_grad() {
        let gs = out.grad_graph_with(tape.constant(v.clone()), &vars);
        let s = gs
            .iter()
            .zip(&us)
            .map(|(&g, u)| (g * tape.constant(u.clone())).sum())
            .reduce(|a, b| a + b)
            .expect("at least one input");
        let grads = s.requires_grad().then(|| s.backward());
        vars.iter()
            .zip(inputs)
            .map(|(&x, t)| {
                grads
                    .as_ref()
                    .and_then(|g| g.get(x).cloned())
                    .unwrap_or_else(|| Tensor::zeros(t.shape()))
            })
            .collect()
    } else {
        inputs.iter().map(|t| Tensor::zeros(t.shape())).collect()
    };
    compare(&eval, &analytic, inputs, options, &mut rng)
}

/// Compares `analytic` (the gradient of the scalar `eval` at `inputs`) with
/// central differences of `eval`, as `options.mode` says.
fn compare(
    eval: &dyn Fn(&[Tensor<f64>]) -> f64,
    analytic: &[Tensor<f64>],
    inputs: &[Tensor<f64>],
    options: Options,
    rng: &mut rand::rngs::StdRng,
) -> Report {
    let mut worst: Option<Comparison> = None;
    let mut checked = 0;
    let mut consider = |c: Comparison| {
        checked += 1;
        if worst
            .as_ref()
            .is_none_or(|w| c.excess(&options).total_cmp(&w.excess(&options)).is_gt())
        {
            worst = Some(c);
        }
    };
    let mut xs: Vec<Tensor<f64>> = inputs.to_vec();
    match options.mode {
        Mode::Full => {
            for i in 0..inputs.len() {
                for j in 0..inputs[i].numel() {
                    let x0 = inputs[i].data()[j];
                    xs[i].data_mut()[j] = x0 + options.eps;
                    let plus = eval(&xs);
                    xs[i].data_mut()[j] = x0 - options.eps;
                    let minus = eval(&xs);
                    xs[i].data_mut()[j] = x0;
                    consider(Comparison {
                        input: Some(i),
                        index: unravel(j, inputs[i].shape()),
                        analytic: analytic[i].data()[j],
                        numeric: (plus - minus) / (2.0 * options.eps),
                    });
                }
            }
        }
        Mode::RandomDirections(k) => {
            for d in 0..k {
                let dirs: Vec<Tensor<f64>> = inputs
                    .iter()
                    .map(|x| Tensor::randn(x.shape(), rng))
                    .collect();
                let shifted = |sign: f64| -> Vec<Tensor<f64>> {
                    inputs
                        .iter()
                        .zip(&dirs)
                        .map(|(x, u)| {
                            x.zip_map(u, "gradgradcheck", |x, u| x + sign * options.eps * u)
                        })
                        .collect()
                };
                let numeric = (eval(&shifted(1.0)) - eval(&shifted(-1.0))) / (2.0 * options.eps);
                let analytic: f64 = analytic
                    .iter()
                    .zip(&dirs)
                    .map(|(g, u)| {
                        g.data()
                            .iter()
                            .zip(u.data())
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                    })
                    .sum();
                consider(Comparison {
                    input: None,
                    index: vec![d],
                    analytic,
                    numeric,
                });
            }
        }
    }
    Report {
        checked,
        worst,
        options,
    }
}
