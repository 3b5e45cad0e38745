//! The resampling layers: upsampling, padding and adaptive pooling.

use super::Module;
use super::params::Bound;
use crate::{Float, PadMode, UpsampleSize, Var};

/// How [`Upsample`] interpolates.
///
/// ```
/// use tapegrad::nn::UpsampleMode;
/// assert_ne!(UpsampleMode::Nearest, UpsampleMode::Bilinear { align_corners: false });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpsampleMode {
    /// Nearest neighbour ([`Var::upsample_nearest2d`]).
    Nearest,
    /// Bilinear ([`Var::upsample_bilinear2d`]), with or without aligned corners.
    Bilinear {
        /// Whether the corner pixels of input and output line up.
        align_corners: bool,
    },
}

/// The stateless upsampling layer (PyTorch's `nn.Upsample`): nearest or
/// bilinear, to a size or by scale factors.
///
/// ```
/// use tapegrad::nn::{Module, Params, Upsample};
/// use tapegrad::UpsampleSize;
/// let tape = tapegrad::Tape::<f32>::new();
/// let p = Params::new().bind(&tape);
/// let x = tape.constant(tapegrad::Tensor::ones([1, 2, 3, 3]));
/// let up = Upsample::nearest(UpsampleSize::Scale(2.0, 2.0));
/// assert_eq!(&up.forward(&p, x).shape()[..], &[1, 2, 6, 6]);
/// let bi = Upsample::bilinear(UpsampleSize::Size(4, 5), false);
/// assert_eq!(bi.forward(&p, x).value().data(), &[1.0; 40]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Upsample {
    /// The output size or the scale factors.
    pub size: UpsampleSize,
    /// Nearest or bilinear.
    pub mode: UpsampleMode,
}

impl Upsample {
    /// Nearest-neighbour upsampling to `size`.
    ///
    /// ```
    /// let up = tapegrad::nn::Upsample::nearest(tapegrad::UpsampleSize::Size(8, 8));
    /// assert_eq!(up.mode, tapegrad::nn::UpsampleMode::Nearest);
    /// ```
    pub fn nearest(size: UpsampleSize) -> Self {
        Upsample {
            size,
            mode: UpsampleMode::Nearest,
        }
    }

    /// Bilinear upsampling to `size`.
    ///
    /// ```
    /// use tapegrad::nn::{Upsample, UpsampleMode};
    /// let up = Upsample::bilinear(tapegrad::UpsampleSize::Scale(2.0, 2.0), true);
    /// assert_eq!(up.mode, UpsampleMode::Bilinear { align_corners: true });
    /// ```
    pub fn bilinear(size: UpsampleSize, align_corners: bool) -> Self {
        Upsample {
            size,
            mode: UpsampleMode::Bilinear { align_corners },
        }
    }
}

impl<T: Float> Module<T> for Upsample {
    fn forward<'t>(&self, _: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        match self.mode {
            UpsampleMode::Nearest => x.upsample_nearest2d(self.size),
            UpsampleMode::Bilinear { align_corners } => {
                x.upsample_bilinear2d(self.size, align_corners)
            }
        }
    }
}

/// The stateless padding layer over the last two axes; in plain code call
/// `x.pad2d(padding, mode)`. `padding` is `[left, right, top, bottom]`
/// (PyTorch's `nn.ZeroPad2d`, `ConstantPad2d`, `ReflectionPad2d` and
/// `ReplicationPad2d`).
///
/// ```
/// use tapegrad::nn::{Module, Pad2d, Params};
/// use tapegrad::PadMode;
/// let tape = tapegrad::Tape::<f32>::new();
/// let p = Params::new().bind(&tape);
/// let x = tape.constant(tapegrad::Tensor::ones([1, 1, 2, 2]));
/// let y = Pad2d { padding: [1, 1, 0, 0], mode: PadMode::Constant(0.0) }.forward(&p, x);
/// assert_eq!(y.value().data(), &[0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pad2d {
    /// `[left, right, top, bottom]`.
    pub padding: [usize; 4],
    /// Constant, reflect or replicate.
    pub mode: PadMode,
}

impl<T: Float> Module<T> for Pad2d {
    fn forward<'t>(&self, _: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        x.pad2d(self.padding, self.mode)
    }
}

/// The stateless adaptive average-pooling layer to an `(h, w)` output
/// (PyTorch's `nn.AdaptiveAvgPool2d`); in plain code call `x.adaptive_avg_pool2d(out)`.
///
/// ```
/// use tapegrad::nn::{AdaptiveAvgPool2d, Flatten, Module, Params, Sequential};
/// let tape = tapegrad::Tape::<f32>::new();
/// let p = Params::new().bind(&tape);
/// let x = tape.constant(tapegrad::Tensor::arange(8).reshape([1, 2, 2, 2]));
/// let head = Sequential::new().push(AdaptiveAvgPool2d((1, 1))).push(Flatten);
/// assert_eq!(head.forward(&p, x).value().data(), &[1.5, 5.5]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaptiveAvgPool2d(pub (usize, usize));

impl<T: Float> Module<T> for AdaptiveAvgPool2d {
    fn forward<'t>(&self, _: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        x.adaptive_avg_pool2d(self.0)
    }
}

/// The stateless adaptive max-pooling layer to an `(h, w)` output
/// (PyTorch's `nn.AdaptiveMaxPool2d`); in plain code call `x.adaptive_max_pool2d(out)`.
///
/// ```
/// use tapegrad::nn::{AdaptiveMaxPool2d, Module, Params};
/// let tape = tapegrad::Tape::<f32>::new();
/// let p = Params::new().bind(&tape);
/// let x = tape.constant(tapegrad::Tensor::arange(9).reshape([1, 1, 3, 3]));
/// assert_eq!(AdaptiveMaxPool2d((2, 2)).forward(&p, x).value().data(), &[4.0, 5.0, 7.0, 8.0]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaptiveMaxPool2d(pub (usize, usize));

impl<T: Float> Module<T> for AdaptiveMaxPool2d {
    fn forward<'t>(&self, _: &Bound<'t, T>, x: Var<'t, T>) -> Var<'t, T> {
        x.adaptive_max_pool2d(self.0)
    }
}
