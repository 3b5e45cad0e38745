//! The convolution, transposed convolution and pooling layers.

use super::params::{Bound, ParamId, Params};
use super::{Module, init_uniform};
use crate::{Conv2dOptions, ConvTranspose2dOptions, Float, Pair, Pool2dOptions, Var};

/// A 2-D convolution layer, weight `[out, in/groups, kh, kw]`, bias `[out]`.
///
/// ```
/// use tapegrad::rand::SeedableRng;
/// use tapegrad::nn::{Conv2d, Module, Params};
/// use tapegrad::Conv2dOptions;
/// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
/// let mut params = Params::new();
/// let conv = Conv2d::with_options(&mut params, "conv1", 1, 8, 3, Conv2dOptions::default().padding(1), true, &mut rng);
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
    /// A convolution from `in_channels` to `out_channels` with a `kernel`
    /// (square `k` or `(kh, kw)`), stride 1, no padding, and a bias, as
    /// PyTorch's `nn.Conv2d(in, out, k)`: registers `<name>.weight` and
    /// `<name>.bias` with PyTorch's initialisation drawn from the store's
    /// generator ([`Params::init_rng`]). Set the geometry with
    /// [`stride`](Conv2d::stride), [`padding`](Conv2d::padding) and
    /// [`dilation`](Conv2d::dilation); [`with_options`](Conv2d::with_options)
    /// takes groups, no bias, or your own generator.
    ///
    /// ```
    /// use tapegrad::nn::{Conv2d, Params};
    /// let mut p = Params::new();
    /// let c = Conv2d::new(&mut p, "conv", 3, 8, 3).stride(2).padding(1);
    /// assert_eq!(&p.get(c.weight).shape()[..], &[8, 3, 3, 3]);
    /// assert_eq!(c.options.stride.h, 2);
    /// ```
    pub fn new<T: Float>(
        params: &mut Params<T>,
        name: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: impl Into<Pair>,
    ) -> Self {
        let mut rng = params.init_rng();
        let opts = Conv2dOptions::default();
        Self::with_options(
            params,
            name,
            in_channels,
            out_channels,
            kernel,
            opts,
            true,
            &mut rng,
        )
    }

    /// Registers `<name>.weight` and `<name>.bias` (PyTorch's default initialisation,
    /// fan_in = in/groups·kh·kw) for a `kernel` (square `k` or `(kh, kw)`).
    ///
    /// ```
    /// use tapegrad::rand::SeedableRng;
    /// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
    /// let mut p = tapegrad::nn::Params::new();
    /// let c = tapegrad::nn::Conv2d::with_options(&mut p, "c", 4, 8, (3, 1), Default::default(), false, &mut rng);
    /// assert_eq!(&p.get(c.weight).shape()[..], &[8, 4, 3, 1]);
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn with_options<T: Float, R: rand::Rng + ?Sized>(
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
/// use tapegrad::rand::SeedableRng;
/// use tapegrad::nn::{ConvTranspose2d, Module, Params};
/// use tapegrad::ConvTranspose2dOptions;
/// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
/// let mut params = Params::new();
/// let up = ConvTranspose2dOptions::default().stride(2).padding(1);
/// let deconv = ConvTranspose2d::with_options(&mut params, "up1", 8, 4, 4, up, true, &mut rng);
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
    /// A transposed convolution from `in_channels` to `out_channels` with a
    /// `kernel` (square `k` or `(kh, kw)`), stride 1, no padding, and a bias,
    /// as PyTorch's `nn.ConvTranspose2d(in, out, k)`, initialised from the
    /// store's generator ([`Params::init_rng`]). Set the geometry with
    /// [`stride`](ConvTranspose2d::stride), [`padding`](ConvTranspose2d::padding),
    /// [`output_padding`](ConvTranspose2d::output_padding) and
    /// [`dilation`](ConvTranspose2d::dilation);
    /// [`with_options`](ConvTranspose2d::with_options) takes groups, no bias,
    /// or your own generator.
    ///
    /// ```
    /// use tapegrad::nn::{ConvTranspose2d, Params};
    /// let mut p = Params::new();
    /// let up = ConvTranspose2d::new(&mut p, "up", 8, 4, 4).stride(2).padding(1);
    /// assert_eq!(&p.get(up.weight).shape()[..], &[8, 4, 4, 4]);
    /// ```
    pub fn new<T: Float>(
        params: &mut Params<T>,
        name: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: impl Into<Pair>,
    ) -> Self {
        let mut rng = params.init_rng();
        let opts = ConvTranspose2dOptions::default();
        Self::with_options(
            params,
            name,
            in_channels,
            out_channels,
            kernel,
            opts,
            true,
            &mut rng,
        )
    }

    /// The same layer with another output padding (`p` or `(ph, pw)`), added
    /// to one side of the output to pick among the sizes a strided
    /// convolution maps to the same input size.
    ///
    /// ```
    /// let c = tapegrad::nn::ConvTranspose2d::new(&mut tapegrad::nn::Params::new(), "c", 1, 1, 3)
    ///     .stride(2)
    ///     .output_padding(1);
    /// assert_eq!(c.options.output_padding.h, 1);
    /// ```
    pub fn output_padding(mut self, output_padding: impl Into<Pair>) -> Self {
        self.options = self.options.output_padding(output_padding);
        self
    }

    /// Registers `<name>.weight` and `<name>.bias` for a `kernel` (square `k`
    /// or `(kh, kw)`), with PyTorch's default initialisation for
    /// `ConvTranspose2d`: U(−1/√fan_in, 1/√fan_in) for both, where PyTorch
    /// computes fan_in from the weight's second dimension,
    /// `out/groups · kh · kw`.
    ///
    /// ```
    /// use tapegrad::rand::SeedableRng;
    /// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
    /// let mut p = tapegrad::nn::Params::new();
    /// let opts = tapegrad::ConvTranspose2dOptions::default().groups(2);
    /// let c = tapegrad::nn::ConvTranspose2d::with_options(&mut p, "c", 4, 8, (3, 1), opts, false, &mut rng);
    /// let w = p.get(c.weight);
    /// assert_eq!(&w.shape()[..], &[4, 4, 3, 1]);
    /// assert!(w.data().iter().all(|v| v.abs() <= 1.0 / 12f32.sqrt())); // fan_in 4·3·1
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn with_options<T: Float, R: rand::Rng + ?Sized>(
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

/// The geometry setters both convolution layers have: each returns the layer
/// with one of its `options` changed (none of them changes the parameters).
macro_rules! geometry_setters {
    ($layer:ident) => {
        geometry_setters!(@one $layer, stride, "stride (`s` or `(sh, sw)`)",
            ".stride((1, 2))", "(c.options.stride.h, c.options.stride.w), (1, 2)");
        geometry_setters!(@one $layer, padding, "padding (`p` or `(ph, pw)`)",
            ".padding(1)", "c.options.padding.w, 1");
        geometry_setters!(@one $layer, dilation, "dilation (`d` or `(dh, dw)`)",
            ".dilation(2)", "c.options.dilation.h, 2");
    };
    (@one $layer:ident, $field:ident, $what:literal, $call:literal, $check:literal) => {
        impl $layer {
            #[doc = concat!(
                "The same layer with another ", $what, ".\n\n```\n",
                "let c = tapegrad::nn::", stringify!($layer),
                "::new(&mut tapegrad::nn::Params::new(), \"c\", 1, 1, 3)", $call, ";\n",
                "assert_eq!(", $check, ");\n```"
            )]
            pub fn $field(mut self, $field: impl Into<Pair>) -> Self {
                self.options = self.options.$field($field);
                self
            }
        }
    };
}

geometry_setters!(Conv2d);
geometry_setters!(ConvTranspose2d);

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

impl MaxPool2d {
    /// Max pooling over `kernel` windows (square `k` or `(kh, kw)`) with the
    /// stride equal to the kernel, as PyTorch's `nn.MaxPool2d(k)`; other
    /// options through `MaxPool2d(Pool2dOptions::new(k)…)`.
    ///
    /// ```
    /// assert_eq!(tapegrad::nn::MaxPool2d::new(2).0.kernel.h, 2);
    /// ```
    pub fn new(kernel: impl Into<Pair>) -> Self {
        MaxPool2d(Pool2dOptions::new(kernel))
    }
}

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

impl AvgPool2d {
    /// Average pooling over `kernel` windows (square `k` or `(kh, kw)`) with
    /// the stride equal to the kernel, as PyTorch's `nn.AvgPool2d(k)`; other
    /// options through `AvgPool2d(Pool2dOptions::new(k)…)`.
    ///
    /// ```
    /// assert_eq!(tapegrad::nn::AvgPool2d::new((2, 3)).0.kernel.w, 3);
    /// ```
    pub fn new(kernel: impl Into<Pair>) -> Self {
        AvgPool2d(Pool2dOptions::new(kernel))
    }
}

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
