//! The convolution, transposed convolution and pooling layers.

use super::params::{Bound, ParamId, Params};
use super::{init_uniform, Module};
use crate::{Conv2dOptions, ConvTranspose2dOptions, Float, Pair, Pool2dOptions, Var};

/// A 2-D convolution layer, weight `[out, in/groups, kh, kw]`, bias `[out]`.
///
/// ```
/// use rand::SeedableRng;
/// use tapegrad::nn::{Conv2d, Module, Params};
/// use tapegrad::Conv2dOptions;
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let mut params = Params::<f32>::new();
/// let conv = Conv2d::new(&mut params, "conv1", 1, 8, 3, Conv2dOptions::default().padding(1), true, &mut rng);
/// let tape = tapegrad::Tape::new();
/// let y = conv.forward(&params.bind(&tape), tape.constant(tapegrad::Tensor::ones([2, 1, 8, 8])));
/// assert_eq!(&y.shape()[..], &[2, 8, 8, 8]);
/// ```
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// The weight `[out, in/groups, kh, kw]` (named `<name>.weight`).
    pub weight: ParamId,
    /// The bias `[out]` (named `<name>.bias`), if any.
    pub bias: Option<ParamId>,
    /// Stride, padding, dilation and groups.
    pub options: Conv2dOptions,
}

impl Conv2d {
    /// Registers `<name>.weight` and `<name>.bias` (PyTorch's default initialisation,
    /// fan_in = in/groups·kh·kw) for a `kernel` (square `k` or `(kh, kw)`).
    ///
    /// ```
    /// use rand::SeedableRng;
    /// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    /// let mut p = tapegrad::nn::Params::<f32>::new();
    /// let c = tapegrad::nn::Conv2d::new(&mut p, "c", 4, 8, (3, 1), Default::default(), false, &mut rng);
    /// assert_eq!(&p.get(c.weight).shape()[..], &[8, 4, 3, 1]);
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn new<T: Float, R: rand::Rng + ?Sized>(
        params: &mut Params<T>,
        name: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: impl Into<Pair>,
        options: Conv2dOptions,
        bias: bool,
        rng: &mut R,
    ) -> Self {
        let (weight, bias) = register(
            params,
            ("Conv2d", name),
            (in_channels, out_channels),
            kernel.into(),
            options.groups,
            false,
            bias,
            rng,
        );
        Conv2d {
            weight,
            bias,
            options,
        }
    }
}

impl<T: Float> Module<T> for Conv2d {
    fn forward<'t>(&self, p: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        x.conv2d(p[self.weight], self.bias.map(|b| p[b]), self.options)
    }
}

/// A 2-D transposed convolution layer ([`Var::conv_transpose2d`]), weight
/// `[in, out/groups, kh, kw]` (PyTorch's layout), bias `[out]`: the usual
/// upsampling layer of decoders and generators.
///
/// ```
/// use rand::SeedableRng;
/// use tapegrad::nn::{ConvTranspose2d, Module, Params};
/// use tapegrad::ConvTranspose2dOptions;
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let mut params = Params::<f32>::new();
/// let up = ConvTranspose2dOptions::default().stride(2).padding(1);
/// let deconv = ConvTranspose2d::new(&mut params, "up1", 8, 4, 4, up, true, &mut rng);
/// let tape = tapegrad::Tape::new();
/// let y = deconv.forward(&params.bind(&tape), tape.constant(tapegrad::Tensor::ones([2, 8, 7, 7])));
/// assert_eq!(&y.shape()[..], &[2, 4, 14, 14]); // twice the size
/// ```
#[derive(Clone, Debug)]
pub struct ConvTranspose2d {
    /// The weight `[in, out/groups, kh, kw]` (named `<name>.weight`).
    pub weight: ParamId,
    /// The bias `[out]` (named `<name>.bias`), if any.
    pub bias: Option<ParamId>,
    /// Stride, padding, output padding, dilation and groups.
    pub options: ConvTranspose2dOptions,
}

impl ConvTranspose2d {
    /// Registers `<name>.weight` and `<name>.bias` for a `kernel` (square `k`
    /// or `(kh, kw)`), with PyTorch's default initialisation for
    /// `ConvTranspose2d`: U(−1/√fan_in, 1/√fan_in) for both, where PyTorch
    /// computes fan_in from the weight's second dimension,
    /// `out/groups · kh · kw`.
    ///
    /// ```
    /// use rand::SeedableRng;
    /// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    /// let mut p = tapegrad::nn::Params::<f32>::new();
    /// let opts = tapegrad::ConvTranspose2dOptions::default().groups(2);
    /// let c = tapegrad::nn::ConvTranspose2d::new(&mut p, "c", 4, 8, (3, 1), opts, false, &mut rng);
    /// let w = p.get(c.weight);
    /// assert_eq!(&w.shape()[..], &[4, 4, 3, 1]);
    /// assert!(w.data().iter().all(|v| v.abs() <= 1.0 / 12f32.sqrt())); // fan_in 4·3·1
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn new<T: Float, R: rand::Rng + ?Sized>(
        params: &mut Params<T>,
        name: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: impl Into<Pair>,
        options: ConvTranspose2dOptions,
        bias: bool,
        rng: &mut R,
    ) -> Self {
        let (weight, bias) = register(
            params,
            ("ConvTranspose2d", name),
            (in_channels, out_channels),
            kernel.into(),
            options.groups,
            true,
            bias,
            rng,
        );
        ConvTranspose2d {
            weight,
            bias,
            options,
        }
    }
}

impl<T: Float> Module<T> for ConvTranspose2d {
    fn forward<'t>(&self, p: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        x.conv_transpose2d(p[self.weight], self.bias.map(|b| p[b]), self.options)
    }
}

/// The stateless max-pooling layer; in plain code call `x.max_pool2d(options)`.
///
/// ```
/// use tapegrad::nn::{MaxPool2d, Module, Params};
/// use tapegrad::Pool2dOptions;
/// let tape = tapegrad::Tape::<f32>::new();
/// let p = Params::new().bind(&tape);
/// let x = tape.constant(tapegrad::Tensor::zeros([1, 1, 4, 4]));
/// assert_eq!(&MaxPool2d(Pool2dOptions::new(2)).forward(&p, x).shape()[..], &[1, 1, 2, 2]);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct MaxPool2d(pub Pool2dOptions);

impl<T: Float> Module<T> for MaxPool2d {
    fn forward<'t>(&self, _: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        x.max_pool2d(self.0)
    }
}

/// The stateless average-pooling layer; in plain code call `x.avg_pool2d(options)`.
///
/// ```
/// use tapegrad::nn::{AvgPool2d, Module, Params};
/// use tapegrad::Pool2dOptions;
/// let tape = tapegrad::Tape::<f32>::new();
/// let p = Params::new().bind(&tape);
/// let x = tape.constant(tapegrad::Tensor::ones([1, 1, 4, 4]));
/// let y = AvgPool2d(Pool2dOptions::new(2)).forward(&p, x);
/// assert_eq!(y.value().data(), &[1.0; 4]);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct AvgPool2d(pub Pool2dOptions);

impl<T: Float> Module<T> for AvgPool2d {
    fn forward<'t>(&self, _: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        x.avg_pool2d(self.0)
    }
}

/// Global average pooling: `[N, C, H, W]` → `[N, C]`, the mean of each
/// channel's plane (PyTorch's `AdaptiveAvgPool2d(1)` followed by `flatten(1)`).
/// ∂y/∂x = 1/(H·W) over the plane.
///
/// ```
/// use tapegrad::nn::{GlobalAvgPool2d, Module, Params};
/// let tape = tapegrad::Tape::<f32>::new();
/// let p = Params::new().bind(&tape);
/// let x = tape.constant(tapegrad::Tensor::arange(8).reshape([1, 2, 2, 2]));
/// assert_eq!(GlobalAvgPool2d.forward(&p, x).value().data(), &[1.5, 5.5]);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct GlobalAvgPool2d;

impl<T: Float> Module<T> for GlobalAvgPool2d {
    fn forward<'t>(&self, _: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        let s = x.shape();
        assert!(
            s.rank() == 4,
            "global_avg_pool2d: input {s} must be [N, C, H, W] (rank 4)"
        );
        x.mean_axes(&[2, 3], false)
    }
}

/// Registers a convolution's `<name>.weight` and optional `<name>.bias` with
/// PyTorch's initialisation, U(±1/√fan_in) for both, fan_in being the
/// weight's second dimension times the kernel: a conv2d weight is
/// `[out, in/groups, kh, kw]`, a transposed one (`transposed`)
/// `[in, out/groups, kh, kw]`. Panics, naming the layer, if `groups` does
/// not divide both channel counts.
#[allow(clippy::too_many_arguments)]
fn register<T: Float, R: rand::Rng + ?Sized>(
    params: &mut Params<T>,
    (layer, name): (&str, &str),
    (in_channels, out_channels): (usize, usize),
    k: Pair,
    groups: usize,
    transposed: bool,
    bias: bool,
    rng: &mut R,
) -> (ParamId, Option<ParamId>) {
    let g = groups.max(1);
    assert!(
        in_channels.is_multiple_of(g) && out_channels.is_multiple_of(g),
        "{layer} `{name}`: {in_channels} input and {out_channels} output channels must both be divisible by groups ({g})"
    );
    let (first, second) = if transposed {
        (in_channels, out_channels / g)
    } else {
        (out_channels, in_channels / g)
    };
    let fan_in = second * k.h * k.w;
    let weight = params.add(
        format!("{name}.weight"),
        init_uniform([first, second, k.h, k.w], fan_in, rng),
    );
    let bias = bias.then(|| {
        params.add(
            format!("{name}.bias"),
            init_uniform([out_channels], fan_in, rng),
        )
    });
    (weight, bias)
}
