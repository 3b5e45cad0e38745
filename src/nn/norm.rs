//! Normalisation layers: [`BatchNorm`] (with its running statistics as
//! buffers), [`LayerNorm`], [`GroupNorm`], and the residual [`BasicBlock`]
//! built from convolutions and batch norm.

use super::conv::Conv2d;
use super::layers::Module;
use super::params::{Bound, BufferId, ParamId, Params};
use crate::{Conv2dOptions, Float, Tensor, Var};

/// The options of [`BatchNorm`]; the default is PyTorch's: `eps` 1e-5,
/// `momentum` 0.1, affine, tracking running statistics.
///
/// ```
/// let o = tapegrad::nn::BatchNormOptions { momentum: None, ..Default::default() };
/// assert_eq!((o.eps, o.affine, o.track_running_stats), (1e-5, true, true));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormOptions {
    /// Added to the variance before the square root.
    pub eps: f64,
    /// Weight of the newest batch in the running statistics; `None` averages
    /// every batch so far equally (a cumulative moving average).
    pub momentum: Option<f64>,
    /// Learn a per-channel scale (`weight`, initialised to 1) and shift (`bias`, 0).
    pub affine: bool,
    /// Keep running statistics (buffers `running_mean`, `running_var`,
    /// `num_batches_tracked`) and normalise with them in evaluation mode;
    /// without them, batch statistics are used in both modes.
    pub track_running_stats: bool,
}

impl Default for BatchNormOptions {
    fn default() -> Self {
        BatchNormOptions {
            eps: 1e-5,
            momentum: Some(0.1),
            affine: true,
            track_running_stats: true,
        }
    }
}

/// The running statistics of a [`BatchNorm`] layer.
#[derive(Clone, Copy, Debug)]
pub struct RunningStats {
    /// Running mean per channel (`<name>.running_mean`, initially 0).
    pub mean: BufferId,
    /// Running unbiased variance per channel (`<name>.running_var`, initially 1).
    pub var: BufferId,
    /// Training batches seen (`<name>.num_batches_tracked`, saved as `I64`).
    pub num_batches_tracked: BufferId,
}

/// Batch normalisation over the channels of `[N, C]`, `[N, C, L]`
/// (PyTorch's `BatchNorm1d`) or `[N, C, H, W]` (`BatchNorm2d`) inputs.
///
/// In training mode (see [`Mode`](super::Mode)) it normalises each channel with
/// the batch's mean and biased variance, `y = γ·(x − μ)/√(σ² + eps) + β`,
/// and updates the running statistics as PyTorch does:
/// `running = (1 − m)·running + m·batch` with the batch's *unbiased*
/// variance, `m` the momentum (or 1/`num_batches_tracked` without one). In
/// evaluation mode it normalises with the running statistics. The buffers
/// are saved and loaded with the parameters under PyTorch's names, so a
/// state dict moves between the two.
///
/// ```
/// use tapegrad::nn::{BatchNorm, Module, Params};
/// use tapegrad::{Tape, Tensor};
/// let mut params = Params::<f64>::default();
/// let bn = BatchNorm::new_2d(&mut params, "bn1", 2);
/// let x = Tensor::from_vec(vec![1.0, 3.0, 10.0, 10.0, 5.0, 7.0, 20.0, 20.0], [2, 2, 2, 1]).unwrap();
/// let tape = Tape::new();
/// let y = bn.forward(&params.bind(&tape), tape.constant(x));
/// // channel 0 holds 1, 3, 5, 7: mean 4, biased variance 5
/// assert!((y.value().get(&[0, 0, 0, 0]) + 3.0 / (5.0f64 + 1e-5).sqrt()).abs() < 1e-12);
/// let stats = bn.running.unwrap();
/// assert!((params.buffer(stats.mean).data()[0] - 0.4).abs() < 1e-12); // 0.9·0 + 0.1·4
/// assert_eq!(params.buffer(stats.num_batches_tracked).item(), 1.0);
/// ```
#[derive(Clone, Debug)]
pub struct BatchNorm {
    /// The per-channel scale γ `[C]` (`<name>.weight`), if affine.
    pub weight: Option<ParamId>,
    /// The per-channel shift β `[C]` (`<name>.bias`), if affine.
    pub bias: Option<ParamId>,
    /// The running statistics, if tracked.
    pub running: Option<RunningStats>,
    /// The options it was built with.
    pub options: BatchNormOptions,
    /// Number of channels C.
    pub num_features: usize,
    /// The input ranks it accepts (`[2, 3]` for 1-D, `[4]` for 2-D).
    ranks: &'static [usize],
    /// Its name, for messages.
    name: String,
}

impl BatchNorm {
    /// PyTorch's `BatchNorm2d(num_features)` for `[N, C, H, W]` inputs, with the
    /// default [`BatchNormOptions`], registering `<name>.weight`, `<name>.bias`,
    /// `<name>.running_mean`, `<name>.running_var` and `<name>.num_batches_tracked`.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// tapegrad::nn::BatchNorm::new_2d(&mut p, "bn", 8);
    /// assert_eq!((p.len(), p.buffers().count()), (2, 3));
    /// ```
    pub fn new_2d<T: Float>(params: &mut Params<T>, name: &str, num_features: usize) -> Self {
        Self::with_options(
            params,
            name,
            num_features,
            &[4],
            BatchNormOptions::default(),
        )
    }

    /// PyTorch's `BatchNorm1d(num_features)` for `[N, C]` or `[N, C, L]` inputs.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// let bn = tapegrad::nn::BatchNorm::new_1d(&mut p, "bn", 8);
    /// assert_eq!(bn.num_features, 8);
    /// ```
    pub fn new_1d<T: Float>(params: &mut Params<T>, name: &str, num_features: usize) -> Self {
        Self::with_options(
            params,
            name,
            num_features,
            &[2, 3],
            BatchNormOptions::default(),
        )
    }

    /// Batch norm with explicit options, for inputs of the given ranks
    /// (`&[4]` for 2-D, `&[2, 3]` for 1-D).
    ///
    /// ```
    /// use tapegrad::nn::{BatchNorm, BatchNormOptions, Params};
    /// let mut p = Params::new();
    /// let o = BatchNormOptions { affine: false, track_running_stats: false, ..Default::default() };
    /// let bn = BatchNorm::with_options(&mut p, "bn", 4, &[4], o);
    /// assert!(bn.weight.is_none() && bn.running.is_none() && p.is_empty());
    /// ```
    pub fn with_options<T: Float>(
        params: &mut Params<T>,
        name: &str,
        num_features: usize,
        ranks: &'static [usize],
        options: BatchNormOptions,
    ) -> Self {
        let (weight, bias) = if options.affine {
            (
                Some(params.add(format!("{name}.weight"), Tensor::ones([num_features]))),
                Some(params.add(format!("{name}.bias"), Tensor::zeros([num_features]))),
            )
        } else {
            (None, None)
        };
        let running = options.track_running_stats.then(|| RunningStats {
            mean: params.add_buffer(
                format!("{name}.running_mean"),
                Tensor::zeros([num_features]),
            ),
            var: params.add_buffer(format!("{name}.running_var"), Tensor::ones([num_features])),
            num_batches_tracked: params.add_count_buffer(format!("{name}.num_batches_tracked")),
        });
        BatchNorm {
            weight,
            bias,
            running,
            options,
            num_features,
            ranks,
            name: name.to_string(),
        }
    }

    /// Updates the running statistics with a training batch's statistics.
    fn update_running<T: Float>(
        &self,
        p: &Bound<'_, T>,
        r: &RunningStats,
        mean: &Tensor<T>,
        var: &Tensor<T>,
        count: usize,
    ) {
        let tracked = p.buffer(r.num_batches_tracked).item() + T::ONE;
        p.set_buffer(r.num_batches_tracked, Tensor::scalar(tracked));
        let m = match self.options.momentum {
            Some(m) => T::from_f64(m),
            None => T::ONE / tracked,
        };
        // The running variance is the unbiased one (count > 1 was checked by the op).
        let unbias = T::from_usize(count) / T::from_usize(count - 1);
        let old_mean = p.buffer(r.mean);
        let old_var = p.buffer(r.var);
        let new_mean = old_mean.zip_map(mean, "batch_norm", |o, b| (T::ONE - m) * o + m * b);
        let new_var = old_var.zip_map(var, "batch_norm", |o, b| {
            (T::ONE - m) * o + m * (b * unbias)
        });
        p.set_buffer(r.mean, new_mean);
        p.set_buffer(r.var, new_var);
    }
}

impl<T: Float> Module<T> for BatchNorm {
    fn forward<'t>(&self, p: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        let s = x.shape();
        assert!(
            self.ranks.contains(&s.rank()) && s[1] == self.num_features,
            "batch_norm `{}`: input {s} does not fit {} features (expected rank {:?}, channels on axis 1)",
            self.name,
            self.num_features,
            self.ranks
        );
        let (w, b) = (self.weight.map(|id| p[id]), self.bias.map(|id| p[id]));
        let eps = self.options.eps;
        match (&self.running, p.is_training()) {
            (Some(r), false) => {
                let (mean, var) = (p.buffer(r.mean), p.buffer(r.var));
                x.batch_norm_eval(w, b, &mean, &var, eps)
            }
            (running, training) => {
                let (y, stats) = x.batch_norm_train(w, b, eps);
                if let (Some(r), true) = (running, training) {
                    self.update_running(p, r, &stats.mean, &stats.var, stats.count);
                }
                y
            }
        }
    }
}

/// Layer normalisation over the trailing dimensions `normalized_shape`, with
/// an elementwise affine transform (PyTorch's `LayerNorm`): `<name>.weight`
/// (ones) and `<name>.bias` (zeros) of shape `normalized_shape`.
///
/// ```
/// use tapegrad::nn::{LayerNorm, Module, Params};
/// let mut params = Params::<f64>::default();
/// let ln = LayerNorm::new(&mut params, "ln", &[4], 1e-5);
/// let tape = tapegrad::Tape::new();
/// let x = tape.constant(tapegrad::Tensor::arange(8).reshape([2, 4]));
/// let y = ln.forward(&params.bind(&tape), x).value();
/// assert!(y.data()[..4].iter().sum::<f64>().abs() < 1e-12); // each row has mean 0
/// ```
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// The scale, shape `normalized_shape`.
    pub weight: ParamId,
    /// The shift, shape `normalized_shape`.
    pub bias: ParamId,
    /// The trailing dimensions normalised over.
    pub normalized_shape: Vec<usize>,
    /// Added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// Registers `<name>.weight` and `<name>.bias`.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// let ln = tapegrad::nn::LayerNorm::new(&mut p, "ln", &[3, 4], 1e-5);
    /// assert_eq!(&p.get(ln.weight).shape()[..], &[3, 4]);
    /// ```
    pub fn new<T: Float>(
        params: &mut Params<T>,
        name: &str,
        normalized_shape: &[usize],
        eps: f64,
    ) -> Self {
        LayerNorm {
            weight: params.add(format!("{name}.weight"), Tensor::ones(normalized_shape)),
            bias: params.add(format!("{name}.bias"), Tensor::zeros(normalized_shape)),
            normalized_shape: normalized_shape.to_vec(),
            eps,
        }
    }
}

impl<T: Float> Module<T> for LayerNorm {
    fn forward<'t>(&self, p: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        x.layer_norm(
            &self.normalized_shape,
            Some(p[self.weight]),
            Some(p[self.bias]),
            self.eps,
        )
    }
}

/// Group normalisation of `[N, C, *]` inputs (PyTorch's `GroupNorm`):
/// statistics per sample over each group of C/groups channels, then a
/// per-channel affine transform `<name>.weight` (ones) and `<name>.bias` (zeros).
///
/// ```
/// use tapegrad::nn::{GroupNorm, Module, Params};
/// let mut params = Params::new();
/// let gn = GroupNorm::new(&mut params, "gn", 2, 4, 1e-5);
/// let tape = tapegrad::Tape::new();
/// let x = tape.constant(tapegrad::Tensor::ones([1, 4, 2, 2]));
/// assert_eq!(gn.forward(&params.bind(&tape), x).value().data(), &[0.0; 16]);
/// ```
#[derive(Clone, Debug)]
pub struct GroupNorm {
    /// The per-channel scale `[C]`.
    pub weight: ParamId,
    /// The per-channel shift `[C]`.
    pub bias: ParamId,
    /// Number of groups.
    pub groups: usize,
    /// Added to the variance.
    pub eps: f64,
}

impl GroupNorm {
    /// Registers `<name>.weight` and `<name>.bias` for `channels` channels in `groups` groups.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// let gn = tapegrad::nn::GroupNorm::new(&mut p, "gn", 4, 8, 1e-5);
    /// assert_eq!(gn.groups, 4);
    /// ```
    pub fn new<T: Float>(
        params: &mut Params<T>,
        name: &str,
        groups: usize,
        channels: usize,
        eps: f64,
    ) -> Self {
        GroupNorm {
            weight: params.add(format!("{name}.weight"), Tensor::ones([channels])),
            bias: params.add(format!("{name}.bias"), Tensor::zeros([channels])),
            groups,
            eps,
        }
    }
}

impl<T: Float> Module<T> for GroupNorm {
    fn forward<'t>(&self, p: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        x.group_norm(
            self.groups,
            Some(p[self.weight]),
            Some(p[self.bias]),
            self.eps,
        )
    }
}

/// A residual block as in ResNet-18/34 (PyTorch's torchvision `BasicBlock`):
/// `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`, with 3×3 convs
/// without bias (the first with the block's stride) and a shortcut that is
/// the identity, or a strided 1×1 conv and batch norm when the stride or the
/// channel count changes. Parameters are named `<name>.conv1`, `<name>.bn1`,
/// `<name>.conv2`, `<name>.bn2`, `<name>.downsample.0`, `<name>.downsample.1` (torchvision's names).
///
/// ```
/// use tapegrad::rand::SeedableRng;
/// use tapegrad::nn::{BasicBlock, Module, Params};
/// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
/// let mut params = Params::new();
/// let block = BasicBlock::with_rng(&mut params, "layer1", 8, 16, 2, &mut rng);
/// let tape = tapegrad::Tape::new();
/// let x = tape.constant(tapegrad::Tensor::ones([2, 8, 8, 8]));
/// assert_eq!(&block.forward(&params.bind(&tape), x).shape()[..], &[2, 16, 4, 4]);
/// ```
#[derive(Clone, Debug)]
pub struct BasicBlock {
    /// The first 3×3 conv (with the block's stride).
    pub conv1: Conv2d,
    /// Its batch norm.
    pub bn1: BatchNorm,
    /// The second 3×3 conv.
    pub conv2: Conv2d,
    /// Its batch norm.
    pub bn2: BatchNorm,
    /// The projection shortcut, when the shape changes.
    pub shortcut: Option<(Conv2d, BatchNorm)>,
}

impl BasicBlock {
    /// A block from `in_channels` to `out_channels` with the given stride,
    /// its convolutions initialised from the store's generator
    /// ([`Params::init_rng`]); [`with_rng`](BasicBlock::with_rng) takes your own.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// let b = tapegrad::nn::BasicBlock::new(&mut p, "layer2.0", 16, 32, 2);
    /// assert!(b.shortcut.is_some()); // a 1×1 strided projection
    /// ```
    pub fn new<T: Float>(
        params: &mut Params<T>,
        name: &str,
        in_channels: usize,
        out_channels: usize,
        stride: usize,
    ) -> Self {
        let mut rng = params.init_rng();
        Self::with_rng(params, name, in_channels, out_channels, stride, &mut rng)
    }

    /// A block from `in_channels` to `out_channels` with the given stride.
    ///
    /// ```
    /// use tapegrad::rand::SeedableRng;
    /// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
    /// let mut p = tapegrad::nn::Params::new();
    /// let b = tapegrad::nn::BasicBlock::with_rng(&mut p, "blk", 16, 16, 1, &mut rng);
    /// assert!(b.shortcut.is_none());
    /// ```
    pub fn with_rng<T: Float, R: rand::Rng + ?Sized>(
        params: &mut Params<T>,
        name: &str,
        in_channels: usize,
        out_channels: usize,
        stride: usize,
        rng: &mut R,
    ) -> Self {
        let o3 = |s: usize| Conv2dOptions::default().stride(s).padding(1);
        let conv1 = Conv2d::with_options(
            params,
            &format!("{name}.conv1"),
            in_channels,
            out_channels,
            3,
            o3(stride),
            false,
            rng,
        );
        let bn1 = BatchNorm::new_2d(params, &format!("{name}.bn1"), out_channels);
        let conv2 = Conv2d::with_options(
            params,
            &format!("{name}.conv2"),
            out_channels,
            out_channels,
            3,
            o3(1),
            false,
            rng,
        );
        let bn2 = BatchNorm::new_2d(params, &format!("{name}.bn2"), out_channels);
        let shortcut = (stride != 1 || in_channels != out_channels).then(|| {
            let o1 = Conv2dOptions::default().stride(stride);
            (
                Conv2d::with_options(
                    params,
                    &format!("{name}.downsample.0"),
                    in_channels,
                    out_channels,
                    1,
                    o1,
                    false,
                    rng,
                ),
                BatchNorm::new_2d(params, &format!("{name}.downsample.1"), out_channels),
            )
        });
        BasicBlock {
            conv1,
            bn1,
            conv2,
            bn2,
            shortcut,
        }
    }
}

impl<T: Float> Module<T> for BasicBlock {
    fn forward<'t>(&self, p: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        let h = self.bn1.forward(p, self.conv1.forward(p, x)).relu();
        let h = self.bn2.forward(p, self.conv2.forward(p, h));
        let short = match &self.shortcut {
            Some((conv, bn)) => bn.forward(p, conv.forward(p, x)),
            None => x,
        };
        (h + short).relu()
    }
}
