//! Layers with PyTorch's default initialisation, and [`Sequential`].

use super::params::{Bound, ParamId, Params};
use crate::{Float, Tape, Tensor, Var};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::sync::Mutex;

/// U(−bound, bound) samples from the caller's RNG, `bound = 1/√fan_in`: PyTorch's default
/// for both weights (kaiming-uniform with a = √5 gives exactly this bound) and biases.
///
/// ```
/// use tapegrad::rand::SeedableRng;
/// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
/// let w = tapegrad::nn::init_uniform::<f32, _>([8, 4], 4, &mut rng);
/// assert!(w.data().iter().all(|v| v.abs() <= 0.5));
/// ```
pub fn init_uniform<T: Float, R: rand::Rng + ?Sized>(
    shape: impl Into<crate::Shape>,
    fan_in: usize,
    rng: &mut R,
) -> Tensor<T> {
    // kaiming_uniform(a=√5): gain = √(2/(1+a²)) = √(1/3), bound = gain·√(3/fan_in) = 1/√fan_in.
    let bound = T::from_f64(1.0 / (fan_in.max(1) as f64).sqrt());
    Tensor::rand_uniform(shape, -bound, bound, rng)
}

/// Something that maps one activation to the next, given the bound parameters.
///
/// ```
/// use tapegrad::nn::{Bound, Module, Params};
/// use tapegrad::Var;
/// /// A parameter-free layer: y = 2x.
/// struct Double;
/// impl Module<f32> for Double {
///     fn forward<'t>(&self, _: &Bound<'t, f32>, x: Var<'t, f32>) -> Var<'t, f32> {
///         x * 2.0
///     }
/// }
/// let tape = tapegrad::Tape::new();
/// let p = Params::new().bind(&tape);
/// let y = Double.forward(&p, tape.constant(tapegrad::Tensor::ones([2])));
/// assert_eq!(y.value().data(), &[2.0, 2.0]);
/// ```
pub trait Module<T: Float> {
    /// Applies the layer to `x`, reading parameters from `p`.
    fn forward<'t>(&self, p: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T>;
}

/// A fully connected layer: `y = x·Wᵀ + b`, W `[out, in]`, b `[out]`.
///
/// ```
/// use tapegrad::rand::SeedableRng;
/// use tapegrad::nn::{Linear, Module, Params};
/// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
/// let mut params = Params::new();
/// let fc = Linear::with_options(&mut params, "fc", 3, 2, true, &mut rng);
/// assert_eq!(&params.get(fc.weight).shape()[..], &[2, 3]);
/// let tape = tapegrad::Tape::new();
/// let y = fc.forward(&params.bind(&tape), tape.constant(tapegrad::Tensor::ones([5, 3])));
/// assert_eq!(&y.shape()[..], &[5, 2]);
/// ```
#[derive(Clone, Debug)]
pub struct Linear {
    /// The weight `[out, in]` (named `<name>.weight`).
    pub weight: ParamId,
    /// The bias `[out]` (named `<name>.bias`), if any.
    pub bias: Option<ParamId>,
}

impl Linear {
    /// A fully connected layer from `in_features` to `out_features` with a
    /// bias, as PyTorch's `nn.Linear(in, out)`: registers `<name>.weight`
    /// `[out, in]` and `<name>.bias` with PyTorch's initialisation drawn from
    /// the store's generator ([`Params::init_rng`]);
    /// [`with_options`](Linear::with_options) takes no bias or your own generator.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// let fc = tapegrad::nn::Linear::new(&mut p, "fc", 8, 10);
    /// assert_eq!(&p.get(fc.weight).shape()[..], &[10, 8]);
    /// assert!(fc.bias.is_some());
    /// ```
    pub fn new<T: Float>(
        params: &mut Params<T>,
        name: &str,
        in_features: usize,
        out_features: usize,
    ) -> Self {
        let mut rng = params.init_rng();
        Self::with_options(params, name, in_features, out_features, true, &mut rng)
    }

    /// Registers `<name>.weight` and `<name>.bias` with PyTorch's default initialisation.
    ///
    /// ```
    /// use tapegrad::rand::SeedableRng;
    /// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
    /// let mut p = tapegrad::nn::Params::new();
    /// tapegrad::nn::Linear::with_options(&mut p, "head", 8, 10, false, &mut rng);
    /// assert_eq!(p.len(), 1);
    /// ```
    pub fn with_options<T: Float, R: rand::Rng + ?Sized>(
        params: &mut Params<T>,
        name: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
        rng: &mut R,
    ) -> Self {
        let weight = params.add(
            format!("{name}.weight"),
            init_uniform([out_features, in_features], in_features, rng),
        );
        let bias = bias.then(|| {
            params.add(
                format!("{name}.bias"),
                init_uniform([out_features], in_features, rng),
            )
        });
        Linear { weight, bias }
    }
}

impl<T: Float> Module<T> for Linear {
    fn forward<'t>(&self, p: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        x.linear(p[self.weight], self.bias.map(|b| p[b]))
    }
}

/// The stateless ReLU layer (for [`Sequential`]); in plain code call `x.relu()`.
///
/// ```
/// use tapegrad::nn::{Module, Params, ReLU};
/// let tape = tapegrad::Tape::<f32>::new();
/// let p = Params::new().bind(&tape);
/// let x = tape.constant(tapegrad::Tensor::from_vec(vec![-1.0, 2.0], [2]).unwrap());
/// assert_eq!(ReLU.forward(&p, x).value().data(), &[0.0, 2.0]);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ReLU;

impl<T: Float> Module<T> for ReLU {
    fn forward<'t>(&self, _: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        x.relu()
    }
}

/// The stateless tanh layer; in plain code call `x.tanh()`.
///
/// ```
/// use tapegrad::nn::{Module, Params, Tanh};
/// let tape = tapegrad::Tape::<f32>::new();
/// let p = Params::new().bind(&tape);
/// let x = tape.constant(tapegrad::Tensor::zeros([2]));
/// assert_eq!(Tanh.forward(&p, x).value().data(), &[0.0, 0.0]);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Tanh;

impl<T: Float> Module<T> for Tanh {
    fn forward<'t>(&self, _: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        x.tanh()
    }
}

/// The stateless sigmoid layer; in plain code call `x.sigmoid()`.
///
/// ```
/// use tapegrad::nn::{Module, Params, Sigmoid};
/// let tape = tapegrad::Tape::<f32>::new();
/// let p = Params::new().bind(&tape);
/// let x = tape.constant(tapegrad::Tensor::zeros([2]));
/// assert_eq!(Sigmoid.forward(&p, x).value().data(), &[0.5, 0.5]);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Sigmoid;

impl<T: Float> Module<T> for Sigmoid {
    fn forward<'t>(&self, _: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        x.sigmoid()
    }
}

/// The leaky ReLU layer with its negative slope (PyTorch's default is 0.01);
/// in plain code call `x.leaky_relu(slope)`.
///
/// ```
/// use tapegrad::nn::{LeakyReLU, Module, Params};
/// let tape = tapegrad::Tape::<f32>::new();
/// let p = Params::new().bind(&tape);
/// let x = tape.constant(tapegrad::Tensor::from_vec(vec![-2.0, 3.0], [2]).unwrap());
/// assert_eq!(LeakyReLU(0.5).forward(&p, x).value().data(), &[-1.0, 3.0]);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct LeakyReLU(pub f64);

impl Default for LeakyReLU {
    fn default() -> Self {
        LeakyReLU(0.01)
    }
}

impl<T: Float> Module<T> for LeakyReLU {
    fn forward<'t>(&self, _: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        x.leaky_relu(T::from_f64(self.0))
    }
}

/// Dropout with probability `p` in training mode, the identity in evaluation
/// mode (see [`Mode`](super::Mode)). The masks come from the layer's own RNG,
/// seeded when it is built, so a run is repeatable.
///
/// ```
/// use tapegrad::rand::SeedableRng;
/// use tapegrad::nn::{Dropout, Module, Params};
/// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
/// let drop = Dropout::new(0.5, &mut rng);
/// let params = Params::new();
/// let tape = tapegrad::Tape::new();
/// let x = tape.constant(tapegrad::Tensor::ones([100]));
/// let train = drop.forward(&params.bind(&tape), x).value();
/// assert!(train.data().iter().all(|&v| v == 0.0 || v == 2.0));
/// let eval = drop.forward(&params.bind_eval(&tape), x);
/// assert_eq!(eval.id(), x.id()); // the identity
/// ```
pub struct Dropout {
    /// The drop probability.
    pub p: f64,
    /// Per channel (`dropout2d`) rather than per element.
    channels: bool,
    rng: Mutex<StdRng>,
}

impl Dropout {
    /// Elementwise dropout with probability `p` (PyTorch's `nn.Dropout`); its
    /// RNG is seeded from `rng`. Panics if `p` is not in [0, 1].
    ///
    /// ```
    /// use tapegrad::rand::SeedableRng;
    /// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
    /// assert_eq!(tapegrad::nn::Dropout::new(0.1, &mut rng).p, 0.1);
    /// ```
    pub fn new<R: rand::Rng + ?Sized>(p: f64, rng: &mut R) -> Self {
        Self::build(p, false, rng)
    }

    /// Channel dropout with probability `p` (PyTorch's `nn.Dropout2d`): whole
    /// channels of an `[N, C, *]` input are kept or zeroed.
    ///
    /// ```
    /// use tapegrad::rand::SeedableRng;
    /// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
    /// assert_eq!(tapegrad::nn::Dropout::new_2d(0.2, &mut rng).p, 0.2);
    /// ```
    pub fn new_2d<R: rand::Rng + ?Sized>(p: f64, rng: &mut R) -> Self {
        Self::build(p, true, rng)
    }

    fn build<R: rand::Rng + ?Sized>(p: f64, channels: bool, rng: &mut R) -> Self {
        assert!(
            (0.0..=1.0).contains(&p),
            "Dropout: the drop probability must be in [0, 1], got {p}"
        );
        Dropout {
            p,
            channels,
            rng: Mutex::new(StdRng::seed_from_u64(rng.next_u64())),
        }
    }
}

impl<T: Float> Module<T> for Dropout {
    fn forward<'t>(&self, p: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        if !p.is_training() {
            return x;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        if self.channels {
            x.dropout2d(self.p, &mut *rng)
        } else {
            x.dropout(self.p, &mut *rng)
        }
    }
}

/// The stateless flatten layer (`[N, …]` → `[N, rest]`); in plain code call `x.flatten()`.
///
/// ```
/// use tapegrad::nn::{Flatten, Module, Params};
/// let tape = tapegrad::Tape::<f32>::new();
/// let p = Params::new().bind(&tape);
/// let x = tape.constant(tapegrad::Tensor::zeros([2, 3, 4]));
/// assert_eq!(&Flatten.forward(&p, x).shape()[..], &[2, 12]);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Flatten;

impl<T: Float> Module<T> for Flatten {
    fn forward<'t>(&self, _: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        x.flatten()
    }
}

/// Layers applied in order.
///
/// ```
/// use tapegrad::rand::SeedableRng;
/// use tapegrad::nn::{Linear, Module, Params, ReLU, Sequential};
/// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
/// let mut params = Params::new();
/// let mlp = Sequential::new()
///     .push(Linear::with_options(&mut params, "fc1", 4, 8, true, &mut rng))
///     .push(ReLU)
///     .push(Linear::with_options(&mut params, "fc2", 8, 2, true, &mut rng));
/// let tape = tapegrad::Tape::new();
/// let y = mlp.forward(&params.bind(&tape), tape.constant(tapegrad::Tensor::ones([3, 4])));
/// assert_eq!(&y.shape()[..], &[3, 2]);
/// ```
#[derive(Default)]
pub struct Sequential<T: Float = f32> {
    layers: Vec<Box<dyn Module<T>>>,
}

impl<T: Float> Sequential<T> {
    /// An empty stack.
    ///
    /// ```
    /// assert_eq!(tapegrad::nn::Sequential::<f32>::new().len(), 0);
    /// ```
    pub fn new() -> Self {
        Sequential { layers: Vec::new() }
    }

    /// Appends a layer.
    ///
    /// ```
    /// let s = tapegrad::nn::Sequential::<f32>::new().push(tapegrad::nn::ReLU);
    /// assert_eq!(s.len(), 1);
    /// ```
    #[allow(clippy::should_implement_trait)]
    pub fn push(mut self, layer: impl Module<T> + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self
    }

    /// Number of layers.
    ///
    /// ```
    /// assert!(tapegrad::nn::Sequential::<f32>::new().is_empty());
    /// ```
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Applies the layers in order and returns every layer's output (the
    /// last is the model's output), so any intermediate activation's gradient
    /// can be read after `backward()`.
    ///
    /// ```
    /// use tapegrad::nn::{Module, Params, ReLU, Sequential, Tanh};
    /// use tapegrad::{Tape, Tensor};
    /// let model = Sequential::<f64>::new().push(Tanh).push(ReLU);
    /// let tape = Tape::new();
    /// let p = Params::default().bind(&tape);
    /// let x = tape.leaf(Tensor::ones([2]));
    /// let hs = model.forward_all(&p, x);
    /// let g = hs[1].sum().backward();
    /// assert_eq!(g[hs[0]].data(), &[1.0, 1.0]); // the gradient at tanh's output
    /// ```
    pub fn forward_all<'t>(&self, p: &Bound<'t, T>, x: Var<'t, T>) -> Vec<Var<'t, T>> {
        let mut outs = Vec::with_capacity(self.layers.len());
        let mut h = x;
        for layer in &self.layers {
            h = layer.forward(p, h);
            outs.push(h);
        }
        outs
    }

    /// Whether there are no layers.
    ///
    /// ```
    /// assert!(tapegrad::nn::Sequential::<f32>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl<T: Float> Module<T> for Sequential<T> {
    /// Applies the layers in order. On a [`Tape::no_grad`](crate::Tape::no_grad)
    /// tape each layer's input (but the first's, which is the caller's) is
    /// released as soon as the layer has run, so inference holds about two
    /// activations at a time instead of every one.
    fn forward<'t>(&self, p: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        let release = !x.tape().grad_enabled();
        let mut h = x;
        for (i, layer) in self.layers.iter().enumerate() {
            let next = layer.forward(p, h);
            if release && i > 0 && next.id() != h.id() {
                h.release();
            }
            h = next;
        }
        h
    }
}

/// Runs `model` on `x` in evaluation mode without recording a graph (PyTorch's
/// `model.eval()` under `torch.inference_mode()`): a [`Tape::no_grad`](crate::Tape::no_grad)
/// tape, parameters bound with [`Params::bind_eval`], no backward closure
/// stored, and with [`Sequential`] each activation freed once the next layer has
/// consumed it.
///
/// ```
/// use tapegrad::rand::SeedableRng;
/// use tapegrad::nn::{predict, Linear, Params, ReLU, Sequential};
/// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
/// let mut params = Params::new();
/// let mlp = Sequential::new()
///     .push(Linear::with_options(&mut params, "fc1", 4, 8, true, &mut rng))
///     .push(ReLU)
///     .push(Linear::with_options(&mut params, "fc2", 8, 2, true, &mut rng));
/// let y = predict(&mlp, &params, tapegrad::Tensor::ones([3, 4]));
/// assert_eq!(&y.shape()[..], &[3, 2]);
/// ```
pub fn predict<T: Float>(model: &impl Module<T>, params: &Params<T>, x: Tensor<T>) -> Tensor<T> {
    let tape = Tape::no_grad();
    let p = params.bind_eval(&tape);
    let y = model.forward(&p, tape.constant(x));
    y.value()
}
