//! Layers with PyTorch's default initialisation, and [`Sequential`].

use super::params::{Bound, ParamId, Params};
use crate::{Float, Tensor, Var};

/// U(−bound, bound) samples from the caller's RNG, `bound = 1/√fan_in`: PyTorch's default
/// for both weights (kaiming-uniform with a = √5 gives exactly this bound) and biases.
///
/// ```
/// use rand::SeedableRng;
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
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
/// use rand::SeedableRng;
/// use tapegrad::nn::{Linear, Module, Params};
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let mut params = Params::<f32>::new();
/// let fc = Linear::new(&mut params, "fc", 3, 2, true, &mut rng);
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
    /// Registers `<name>.weight` and `<name>.bias` with PyTorch's default initialisation.
    ///
    /// ```
    /// use rand::SeedableRng;
    /// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    /// let mut p = tapegrad::nn::Params::<f32>::new();
    /// tapegrad::nn::Linear::new(&mut p, "head", 8, 10, false, &mut rng);
    /// assert_eq!(p.len(), 1);
    /// ```
    pub fn new<T: Float, R: rand::Rng + ?Sized>(
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
/// use rand::SeedableRng;
/// use tapegrad::nn::{Linear, Module, Params, ReLU, Sequential};
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let mut params = Params::<f32>::new();
/// let mlp = Sequential::new()
///     .push(Linear::new(&mut params, "fc1", 4, 8, true, &mut rng))
///     .push(ReLU)
///     .push(Linear::new(&mut params, "fc2", 8, 2, true, &mut rng));
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
    fn forward<'t>(&self, p: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        self.layers.iter().fold(x, |h, l| l.forward(p, h))
    }
}
