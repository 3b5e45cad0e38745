//! The index math of sliding-window ops, written once.
//!
//! [`AxisGeometry`] is one spatial axis of a convolution or a pooling window:
//! the output size and the mapping between output positions, kernel taps and
//! input positions. [`Conv2dGeometry`] is two of them plus the batch, channel
//! and group sizes, validated against the tensor shapes. The naive reference,
//! the im2col fast path, their backward passes and the pooling ops all read
//! their indices from here.

use super::{Conv2dOptions, ConvTranspose2dOptions, Pair};
use crate::{Error, Result};
use std::ops::Range;

/// What is wrong with the options shared by conv2d and conv_transpose2d
/// (a zero stride or dilation, zero groups, groups not dividing the input's
/// channels), if anything: the message, with both shapes.
fn option_error(
    input: &[usize],
    weight: &[usize],
    stride: Pair,
    dilation: Pair,
    groups: usize,
) -> Option<String> {
    let c = input[1];
    if stride.h == 0 || stride.w == 0 {
        Some(format!(
            "stride {stride} must be at least 1 on both axes (input {input:?}, weight {weight:?})"
        ))
    } else if dilation.h == 0 || dilation.w == 0 {
        Some(format!(
            "dilation {dilation} must be at least 1 on both axes (input {input:?}, weight {weight:?})"
        ))
    } else if groups == 0 {
        Some(format!(
            "groups must be at least 1 (input {input:?}, weight {weight:?})"
        ))
    } else if !c.is_multiple_of(groups) {
        Some(format!(
            "input {input:?} has {c} channels, which groups({groups}) does not divide \
             (weight {weight:?})"
        ))
    } else {
        None
    }
}

/// One spatial axis of a sliding-window op: `output` windows of `kernel` taps,
/// `dilation` apart, the window moving by `stride` over an input of `input`
/// positions zero-padded by `padding` on both sides.
///
/// Output position `o` and kernel tap `k` read input position
/// `o·stride + k·dilation − padding` (none when that falls in the padding), and
/// `output = floor((input + 2·padding − dilation·(kernel − 1) − 1) / stride) + 1`:
/// when the stride does not divide evenly, the last input positions are read by
/// no window (and get a zero gradient).
///
/// ```
/// use tapegrad::conv::AxisGeometry;
/// // 7 inputs, kernel 2, stride 2: floor((7 - 2) / 2) + 1 = 3 windows; input 6 is never read.
/// let a = AxisGeometry::new(7, 2, 2, 0, 1).unwrap();
/// assert_eq!(a.output, 3);
/// assert_eq!(a.input_index(2, 1), Some(5));
/// assert_eq!(a.valid_outputs(0), 0..3);
/// // With padding 1, output 0's first tap reads the padding.
/// let p = AxisGeometry::new(5, 3, 1, 1, 1).unwrap();
/// assert_eq!(p.input_index(0, 0), None);
/// assert_eq!(p.valid_taps(0), 1..3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AxisGeometry {
    /// Input size along the axis (without padding).
    pub input: usize,
    /// Kernel (window) size.
    pub kernel: usize,
    /// Step between consecutive windows.
    pub stride: usize,
    /// Zeros added at each end of the input.
    pub padding: usize,
    /// Step between consecutive kernel taps (1 = dense).
    pub dilation: usize,
    /// Number of windows: the output size along the axis.
    pub output: usize,
}

/// Why [`AxisGeometry::build`] rejects an axis; the callers turn it into
/// their op's message, with the shapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AxisFault {
    /// `kernel`, `stride` or `dilation` (named) is zero.
    Zero(&'static str),
    /// A size computed from `name` (padding, dilation or kernel) = `value` does not
    /// fit `isize`; `detail` is the computation.
    Overflow {
        name: &'static str,
        value: usize,
        detail: String,
    },
    /// The dilated kernel spans more than the padded input.
    DoesNotFit { span: usize, padded: usize },
}

impl AxisFault {
    /// The fault as a message for `axis` ("height" or "width"), or `None`
    /// for [`DoesNotFit`](Self::DoesNotFit), which the callers describe
    /// with both axes.
    pub(crate) fn overflow(&self, axis: &str) -> Option<String> {
        match self {
            AxisFault::Overflow {
                name,
                value,
                detail,
            } => Some(format!(
                "{name} {value} on the {axis} axis overflows: {detail}"
            )),
            _ => None,
        }
    }
}

/// The largest extent an axis may have: sizes are `isize`-sized, as every
/// slice's length (and PyTorch's 64-bit signed sizes).
const MAX_EXTENT: usize = isize::MAX as usize;

impl AxisGeometry {
    /// The geometry of one axis, or `None` if `kernel`, `stride` or `dilation` is zero,
    /// the dilated kernel is longer than the padded input, or the padded input
    /// `input + 2·padding` or the dilated kernel `dilation·(kernel − 1) + 1`
    /// exceeds `isize::MAX` (no size is ever computed with wrapping arithmetic).
    /// Any stride is allowed: one larger than the padded input gives one window.
    ///
    /// ```
    /// use tapegrad::conv::AxisGeometry;
    /// assert_eq!(AxisGeometry::new(5, 3, 1, 0, 1).unwrap().output, 3);
    /// assert_eq!(AxisGeometry::new(5, 3, 2, 1, 2).unwrap().output, 2); // span 5 over 7
    /// assert!(AxisGeometry::new(2, 3, 1, 0, 1).is_none());
    /// assert!(AxisGeometry::new(5, 3, 1, 1 << 63, 1).is_none()); // 5 + 2·2⁶³ overflows
    /// assert_eq!(AxisGeometry::new(5, 3, 1 << 63, 1, 1).unwrap().output, 1);
    /// ```
    pub fn new(
        input: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        dilation: usize,
    ) -> Option<Self> {
        Self::build(input, kernel, stride, padding, dilation).ok()
    }

    /// [`new`](Self::new), saying what is wrong: every size is computed with
    /// checked arithmetic and must fit `isize`.
    pub(crate) fn build(
        input: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        dilation: usize,
    ) -> Result<Self, AxisFault> {
        Self::build_with(input, kernel, stride, padding, dilation, false)
    }

    /// The geometry of a pooling axis in PyTorch's `ceil_mode`, or `None`
    /// where [`new`](Self::new) gives `None` — except that a kernel longer
    /// than the padded input is allowed when the rounded-up count below is
    /// still one window:
    ///
    /// `output = ceil((input + 2·padding − dilation·(kernel − 1) − 1) / stride) + 1`,
    /// minus one if the last window would start at or past `input + padding`
    /// (every window starts inside the input or its left padding). The last
    /// window may run past the padded input; [`valid_taps`](Self::valid_taps)
    /// and [`window`](Self::window) clip it, and
    /// [`padded_taps`](Self::padded_taps) counts its taps inside the padded bounds.
    ///
    /// ```
    /// use tapegrad::conv::AxisGeometry;
    /// // 6 inputs, kernel 2, stride 2, padding 1: ceil(6/2) + 1 = 4 windows,
    /// // the last starting at 3·2 − 1 = 5 and reading input 5 only.
    /// let a = AxisGeometry::new_ceil(6, 2, 2, 1, 1).unwrap();
    /// assert_eq!(a.output, 4);
    /// assert_eq!(a.window(3).collect::<Vec<_>>(), vec![5]);
    /// assert_eq!(a.padded_taps(3), 2); // taps at padded positions 6 and 7 (input 5, right padding)
    /// // 5 inputs, kernel 2, stride 2: ceil(3/2) + 1 = 3, the last window clipped to input 4.
    /// assert_eq!(AxisGeometry::new_ceil(5, 2, 2, 0, 1).unwrap().output, 3);
    /// assert_eq!(AxisGeometry::new(5, 2, 2, 0, 1).unwrap().output, 2);
    /// // A kernel of 3 over 2 inputs with stride 2: ceil(−1/2) + 1 = 1 window.
    /// assert_eq!(AxisGeometry::new_ceil(2, 3, 2, 0, 1).unwrap().output, 1);
    /// assert!(AxisGeometry::new_ceil(2, 5, 2, 0, 1).is_none());
    /// ```
    pub fn new_ceil(
        input: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        dilation: usize,
    ) -> Option<Self> {
        Self::build_with(input, kernel, stride, padding, dilation, true).ok()
    }

    /// [`build`](Self::build) with or without `ceil_mode` (see [`new_ceil`](Self::new_ceil)).
    pub(crate) fn build_with(
        input: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        dilation: usize,
        ceil_mode: bool,
    ) -> Result<Self, AxisFault> {
        for (name, v) in [
            ("kernel", kernel),
            ("stride", stride),
            ("dilation", dilation),
        ] {
            if v == 0 {
                return Err(AxisFault::Zero(name));
            }
        }
        let span = dilation
            .checked_mul(kernel - 1)
            .and_then(|v| v.checked_add(1))
            .filter(|&v| v <= MAX_EXTENT)
            .ok_or_else(|| match dilation {
                1 => AxisFault::Overflow {
                    name: "kernel",
                    value: kernel,
                    detail: "it exceeds isize::MAX".into(),
                },
                _ => AxisFault::Overflow {
                    name: "dilation",
                    value: dilation,
                    detail: format!(
                        "the kernel's span {dilation}·({kernel} − 1) + 1 exceeds isize::MAX"
                    ),
                },
            })?;
        let padded = padding
            .checked_mul(2)
            .and_then(|v| v.checked_add(input))
            .filter(|&v| v <= MAX_EXTENT)
            .ok_or_else(|| AxisFault::Overflow {
                name: "padding",
                value: padding,
                detail: format!("the padded input {input} + 2·{padding} exceeds isize::MAX"),
            })?;
        // In ceil mode the numerator gains stride − 1 and may start below
        // zero: down to −(stride − 1) it still rounds up to one window.
        let slack = if ceil_mode { stride - 1 } else { 0 };
        if span > padded.saturating_add(slack) {
            return Err(AxisFault::DoesNotFit { span, padded });
        }
        let output = if ceil_mode {
            // ceil((padded − span) / stride) + 1 = floor((padded + stride − 1 − span) / stride) + 1,
            // computed without forming padded + stride − 1 (which may overflow).
            let mut output = match padded.checked_sub(span) {
                Some(d) => d / stride + usize::from(d % stride != 0) + 1,
                None => 1,
            };
            // The last window must start inside the input or its left
            // padding: (output − 1)·stride < input + padding.
            if (output - 1)
                .checked_mul(stride)
                .is_none_or(|start| start >= input + padding)
            {
                output -= 1;
            }
            output
        } else {
            // No overflow: padded − span < isize::MAX, and the quotient is smaller.
            (padded - span) / stride + 1
        };
        Ok(AxisGeometry {
            input,
            kernel,
            stride,
            padding,
            dilation,
            output,
        })
    }

    /// The extent of the dilated kernel, `dilation·(kernel − 1) + 1`.
    ///
    /// ```
    /// assert_eq!(tapegrad::conv::AxisGeometry::new(9, 3, 1, 0, 2).unwrap().span(), 5);
    /// ```
    pub fn span(&self) -> usize {
        self.dilation * (self.kernel - 1) + 1
    }

    /// Position of tap `k` of window `o` in the padded input, `o·stride +
    /// k·dilation`, or `None` if that overflows: a position past the padded
    /// input, which callers may ask about (the end of an empty range of
    /// outputs, under a stride near `usize::MAX`).
    #[inline(always)]
    fn padded_index(&self, o: usize, k: usize) -> Option<usize> {
        o.checked_mul(self.stride)?
            .checked_add(k.checked_mul(self.dilation)?)
    }

    /// The input position read by output `o` at kernel tap `k`:
    /// `o·stride + k·dilation − padding`, or `None` if that is padding.
    ///
    /// ```
    /// use tapegrad::conv::AxisGeometry;
    /// let a = AxisGeometry::new(4, 3, 1, 1, 1).unwrap();
    /// assert_eq!(a.input_index(0, 0), None);    // left padding
    /// assert_eq!(a.input_index(0, 1), Some(0));
    /// assert_eq!(a.input_index(3, 2), None);    // right padding
    /// ```
    #[inline]
    pub fn input_index(&self, o: usize, k: usize) -> Option<usize> {
        self.padded_index(o, k)?
            .checked_sub(self.padding)
            .filter(|&i| i < self.input)
    }

    /// The outputs `o` whose tap `k` reads inside the input (not padding): a
    /// contiguous range, along which the input position advances by `stride`.
    /// This is the input→output direction of [`input_index`](Self::input_index).
    ///
    /// ```
    /// use tapegrad::conv::AxisGeometry;
    /// let a = AxisGeometry::new(4, 3, 1, 1, 1).unwrap(); // 4 outputs
    /// assert_eq!(a.valid_outputs(0), 1..4);
    /// assert_eq!(a.valid_outputs(1), 0..4);
    /// assert_eq!(a.valid_outputs(2), 0..3);
    /// ```
    pub fn valid_outputs(&self, k: usize) -> Range<usize> {
        let off = k * self.dilation;
        // Need padding ≤ o·stride + off ≤ input − 1 + padding.
        let lo = (self.padding.saturating_sub(off)).div_ceil(self.stride);
        let hi = match (self.input + self.padding).checked_sub(off + 1) {
            Some(top) => (top / self.stride + 1).min(self.output),
            None => 0,
        };
        lo.min(hi)..hi
    }

    /// The kernel taps `k` of window `o` that read inside the input (not padding).
    ///
    /// ```
    /// use tapegrad::conv::AxisGeometry;
    /// let a = AxisGeometry::new(4, 3, 1, 1, 1).unwrap();
    /// assert_eq!(a.valid_taps(0), 1..3);
    /// assert_eq!(a.valid_taps(1), 0..3);
    /// assert_eq!(a.valid_taps(3), 0..2);
    /// ```
    pub fn valid_taps(&self, o: usize) -> Range<usize> {
        let Some(start) = self.padded_index(o, 0) else {
            return 0..0;
        };
        // Need padding ≤ start + k·dilation ≤ input − 1 + padding.
        let lo = (self.padding.saturating_sub(start)).div_ceil(self.dilation);
        let hi = match (self.input + self.padding)
            .checked_sub(start)
            .and_then(|t| t.checked_sub(1))
        {
            Some(top) => (top / self.dilation + 1).min(self.kernel),
            None => 0,
        };
        lo.min(hi)..hi
    }

    /// How many taps of window `o` lie inside the padded input (the input and
    /// the padding on both sides): the kernel, except for a last window that
    /// runs past the end in ceil mode. Average pooling with
    /// `count_include_pad` divides by this (PyTorch's rule).
    ///
    /// ```
    /// use tapegrad::conv::AxisGeometry;
    /// let a = AxisGeometry::new_ceil(7, 3, 2, 1, 1).unwrap(); // padded input 9, 4 windows
    /// assert_eq!((0..4).map(|o| a.padded_taps(o)).collect::<Vec<_>>(), vec![3, 3, 3, 3]);
    /// let b = AxisGeometry::new_ceil(6, 3, 2, 1, 1).unwrap(); // padded input 8, 4 windows
    /// assert_eq!(b.padded_taps(3), 2);
    /// ```
    pub fn padded_taps(&self, o: usize) -> usize {
        let padded = self.input + 2 * self.padding;
        match self.padded_index(o, 0) {
            Some(start) if start < padded => {
                (padded - start).div_ceil(self.dilation).min(self.kernel)
            }
            _ => 0,
        }
    }

    /// The input positions window `o` reads, in tap order (padding skipped).
    ///
    /// ```
    /// use tapegrad::conv::AxisGeometry;
    /// let a = AxisGeometry::new(6, 3, 2, 1, 2).unwrap();
    /// assert_eq!(a.window(0).collect::<Vec<_>>(), vec![1, 3]);
    /// assert_eq!(a.window(1).collect::<Vec<_>>(), vec![1, 3, 5]);
    /// ```
    pub fn window(&self, o: usize) -> impl Iterator<Item = usize> + '_ {
        self.valid_taps(o)
            .filter_map(move |k| self.input_index(o, k))
    }
}

/// The full geometry of one `conv2d` call: batch, channel and group sizes, and
/// the two spatial axes. Built (and validated) from the input, weight and bias
/// shapes and the [`Conv2dOptions`]; the forward pass, the backward pass, the
/// naive [`reference`](mod@super::reference) and the im2col fast path all take
/// their sizes and indices from it.
///
/// Layouts: input NCHW `[N, C, H, W]`, weight OIHW `[O, C/groups, kh, kw]`,
/// bias `[O]`, output `[N, O, out_h, out_w]`. Output channel `o` belongs to
/// group `o / (O/groups)` and sees input channels
/// `group·C/groups .. (group + 1)·C/groups`.
///
/// ```
/// use tapegrad::conv::{Conv2dGeometry, Conv2dOptions};
/// let g = Conv2dGeometry::new(&[2, 4, 7, 9], &[6, 2, 3, 3], None, &Conv2dOptions::default().stride(2).groups(2));
/// assert_eq!(g.output_shape(), [2, 6, 3, 4]);
/// assert_eq!((g.in_per_group(), g.out_per_group(), g.patch_len()), (2, 3, 18));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dGeometry {
    /// Batch size N.
    pub batch: usize,
    /// Input channels C.
    pub in_channels: usize,
    /// Output channels O.
    pub out_channels: usize,
    /// Number of groups (1: dense; C: depthwise).
    pub groups: usize,
    /// The height axis (kernel kh, stride, padding, dilation, out_h).
    pub h: AxisGeometry,
    /// The width axis (kernel kw, stride, padding, dilation, out_w).
    pub w: AxisGeometry,
}

impl Conv2dGeometry {
    /// Validates the shapes against each other and the options, panicking with a
    /// message that names `conv2d` and the shapes (see [`try_new`](Self::try_new)
    /// for the checks).
    ///
    /// ```should_panic
    /// use tapegrad::conv::{Conv2dGeometry, Conv2dOptions};
    /// // panics: "conv2d: input [2, 3, 8, 8] has 3 channels but weight [4, 2, 3, 3] expects 2·groups(1) = 2"
    /// Conv2dGeometry::new(&[2, 3, 8, 8], &[4, 2, 3, 3], None, &Conv2dOptions::default());
    /// ```
    #[track_caller]
    pub fn new(
        input: &[usize],
        weight: &[usize],
        bias: Option<&[usize]>,
        options: &Conv2dOptions,
    ) -> Self {
        match Self::try_new(input, weight, bias, options) {
            Ok(g) => g,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`new`](Self::new) but returns the error. Rejects: input or weight not
    /// rank 4; zero stride or dilation; zero groups; C or O not divisible by
    /// groups; weight channels ≠ C/groups; an empty kernel; a (dilated) kernel
    /// larger than the padded input; a padded input or dilated kernel beyond
    /// `isize::MAX` (every size is computed with checked arithmetic); an output
    /// of more than `isize::MAX` elements (or a plane of it, when N or O is 0);
    /// a bias that is not `[O]`. Any stride is allowed: one beyond the padded
    /// input gives a single output row or column.
    ///
    /// ```
    /// use tapegrad::conv::{Conv2dGeometry, Conv2dOptions};
    /// let e = Conv2dGeometry::try_new(&[1, 1, 2, 2], &[1, 1, 3, 3], None, &Conv2dOptions::default());
    /// assert!(e.unwrap_err().to_string().starts_with("conv2d: kernel (3, 3)"));
    /// let huge = Conv2dOptions::default().padding((1 << 63, 0));
    /// let e = Conv2dGeometry::try_new(&[1, 1, 5, 5], &[1, 1, 3, 3], None, &huge).unwrap_err();
    /// assert!(e.to_string().starts_with("conv2d: padding 9223372036854775808 on the height axis overflows"));
    /// ```
    pub fn try_new(
        input: &[usize],
        weight: &[usize],
        bias: Option<&[usize]>,
        options: &Conv2dOptions,
    ) -> Result<Self> {
        let fail = |message: String| {
            Err(Error::Shape {
                op: "conv2d",
                message,
            })
        };
        let Conv2dOptions {
            stride,
            padding,
            dilation,
            groups,
        } = *options;
        if input.len() != 4 || weight.len() != 4 {
            return fail(format!(
                "input {input:?} and weight {weight:?} must be rank 4: \
                 input [N, C, H, W], weight [O, C/groups, kh, kw]"
            ));
        }
        let (n, c, ih, iw) = (input[0], input[1], input[2], input[3]);
        let (o, cg, kh, kw) = (weight[0], weight[1], weight[2], weight[3]);
        if let Some(message) = option_error(input, weight, stride, dilation, groups) {
            return fail(message);
        }
        if o % groups != 0 {
            return fail(format!(
                "weight {weight:?} has {o} output channels, which groups({groups}) does not \
                 divide (input {input:?})"
            ));
        }
        if cg * groups != c {
            return fail(format!(
                "input {input:?} has {c} channels but weight {weight:?} expects \
                 {cg}·groups({groups}) = {}",
                cg * groups
            ));
        }
        if kh == 0 || kw == 0 {
            return fail(format!(
                "weight {weight:?} has an empty kernel (input {input:?})"
            ));
        }
        let ah = AxisGeometry::build(ih, kh, stride.h, padding.h, dilation.h);
        let aw = AxisGeometry::build(iw, kw, stride.w, padding.w, dilation.w);
        for (axis, a) in [("height", &ah), ("width", &aw)] {
            if let Some(m) = a.as_ref().err().and_then(|f| f.overflow(axis)) {
                return fail(format!("{m} (input {input:?}, weight {weight:?})"));
            }
        }
        let (h, w) = match (ah, aw) {
            (Ok(h), Ok(w)) => (h, w),
            (h, w) => {
                // Sizes that fit (any overflow was reported above).
                let extent = |a: &Result<AxisGeometry, AxisFault>,
                              k: usize,
                              d: usize,
                              i: usize,
                              p: usize| match a {
                    Err(AxisFault::DoesNotFit { span, padded }) => (*span, *padded),
                    _ => (d * (k - 1) + 1, i + 2 * p),
                };
                let (sh, ph) = extent(&h, kh, dilation.h, ih, padding.h);
                let (sw, pw) = extent(&w, kw, dilation.w, iw, padding.w);
                return fail(format!(
                    "kernel ({kh}, {kw}) with dilation {dilation} spans {}, larger than the \
                     padded input ({ph}, {pw}) (input {input:?} padded by {padding}, weight {weight:?})",
                    Pair::new(sh, sw),
                ));
            }
        };
        // The output must be addressable, and so must every plane of the
        // input, weight and output when a tensor is empty (an empty batch or
        // channel dimension leaves the others unbounded by any allocation).
        let fits = |dims: &[usize]| {
            dims.iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1)))
                .is_some_and(|v| v <= MAX_EXTENT)
        };
        let out = [n, o, h.output, w.output];
        if !(fits(input) && fits(weight) && fits(&out)) {
            return fail(format!(
                "input {input:?}, weight {weight:?} or the output {out:?} has more elements \
                 than isize::MAX (stride {stride}, padding {padding}, dilation {dilation})"
            ));
        }
        if let Some(b) = bias
            && b != [o]
        {
            return fail(format!(
                "bias {b:?} does not match weight {weight:?}: expected [{o}] (input {input:?})"
            ));
        }
        Ok(Conv2dGeometry {
            batch: n,
            in_channels: c,
            out_channels: o,
            groups,
            h,
            w,
        })
    }

    /// The geometry of a transposed convolution ([`Var::conv_transpose2d`](crate::Var::conv_transpose2d)),
    /// as the `conv2d` it is the adjoint of: the conv that maps the transposed
    /// convolution's *output* back to its *input*, with the same weight read
    /// as OIHW. So for a transposed convolution of `input` `[N, C_in, H, W]`
    /// and `weight` `[C_in, C_out/groups, kh, kw]`, the geometry's
    /// [`output_shape`](Self::output_shape) is `input`, its
    /// [`weight_shape`](Self::weight_shape) is `weight`, and its
    /// [`input_shape`](Self::input_shape) is the transposed convolution's
    /// output `[N, C_out, H_out, W_out]`, with per axis
    /// `out = (in − 1)·stride − 2·padding + dilation·(k − 1) + output_padding + 1`.
    ///
    /// When `output_padding ≥ stride` (allowed when it is below the dilation)
    /// the conv over that output would have `⌊output_padding/stride⌋` more
    /// rows (or columns) than the transposed convolution's input; the
    /// geometry keeps only the first `in` ([`AxisGeometry::output`] is
    /// `in`): the rows past them are read by no input pixel. Panics, naming
    /// `conv_transpose2d` and the shapes, on bad input (see
    /// [`try_transposed`](Self::try_transposed)).
    ///
    /// ```
    /// use tapegrad::conv::{Conv2dGeometry, ConvTranspose2dOptions};
    /// let o = ConvTranspose2dOptions::default().stride(2).padding(1).output_padding(1);
    /// let g = Conv2dGeometry::transposed(&[8, 4, 5, 5], &[4, 3, 3, 3], None, &o);
    /// assert_eq!(g.input_shape(), [8, 3, 10, 10]); // (5 − 1)·2 − 2 + 2 + 1 + 1
    /// assert_eq!(g.output_shape(), [8, 4, 5, 5]);
    /// assert_eq!(g.weight_shape(), [4, 3, 3, 3]);
    /// ```
    #[track_caller]
    pub fn transposed(
        input: &[usize],
        weight: &[usize],
        bias: Option<&[usize]>,
        options: &ConvTranspose2dOptions,
    ) -> Self {
        Self::try_transposed(input, weight, bias, options).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`transposed`](Self::transposed) but returns the error. Rejects:
    /// input or weight not rank 4; zero stride, dilation or groups; C_in not
    /// divisible by groups; weight's first dimension ≠ C_in; an empty kernel;
    /// an input with no rows or columns; an `output_padding` not smaller than
    /// the stride or the dilation on some axis (PyTorch's rule); an output size
    /// that is not positive or overflows `isize` (checked arithmetic
    /// throughout); tensors of more than `isize::MAX` elements; a bias that is
    /// not `[C_out]`.
    ///
    /// ```
    /// use tapegrad::conv::{Conv2dGeometry, ConvTranspose2dOptions};
    /// let o = ConvTranspose2dOptions::default().stride(2).output_padding(2);
    /// let e = Conv2dGeometry::try_transposed(&[1, 1, 3, 3], &[1, 1, 3, 3], None, &o).unwrap_err();
    /// assert!(e.to_string().starts_with("conv_transpose2d: output_padding (2, 2) must be smaller than"));
    /// ```
    pub fn try_transposed(
        input: &[usize],
        weight: &[usize],
        bias: Option<&[usize]>,
        options: &ConvTranspose2dOptions,
    ) -> Result<Self> {
        let fail = |message: String| {
            Err(Error::Shape {
                op: "conv_transpose2d",
                message,
            })
        };
        let ConvTranspose2dOptions {
            stride,
            padding,
            output_padding,
            dilation,
            groups,
        } = *options;
        if input.len() != 4 || weight.len() != 4 {
            return fail(format!(
                "input {input:?} and weight {weight:?} must be rank 4: \
                 input [N, C_in, H, W], weight [C_in, C_out/groups, kh, kw]"
            ));
        }
        let (n, c, ih, iw) = (input[0], input[1], input[2], input[3]);
        let (wc, og, kh, kw) = (weight[0], weight[1], weight[2], weight[3]);
        if let Some(message) = option_error(input, weight, stride, dilation, groups) {
            return fail(message);
        }
        if wc != c {
            return fail(format!(
                "input {input:?} has {c} channels but weight {weight:?} expects {wc} \
                 (weight [C_in, C_out/groups, kh, kw])"
            ));
        }
        let Some(o) = og.checked_mul(groups).filter(|&o| o <= MAX_EXTENT) else {
            return fail(format!(
                "weight {weight:?} with groups({groups}) has more than isize::MAX output channels \
                 (input {input:?})"
            ));
        };
        if kh == 0 || kw == 0 {
            return fail(format!(
                "weight {weight:?} has an empty kernel (input {input:?})"
            ));
        }
        if ih == 0 || iw == 0 {
            return fail(format!(
                "input {input:?} has no rows or columns (weight {weight:?})"
            ));
        }
        let op_ok = |op: usize, s: usize, d: usize| op < s || op < d;
        if !(op_ok(output_padding.h, stride.h, dilation.h)
            && op_ok(output_padding.w, stride.w, dilation.w))
        {
            return fail(format!(
                "output_padding {output_padding} must be smaller than stride {stride} or \
                 dilation {dilation} on each axis (input {input:?}, weight {weight:?})"
            ));
        }
        let extent = |axis: &str, i: usize, k: usize, s: usize, p: usize, d: usize, op: usize| {
            transposed_extent(i, k, s, p, d, op).map_err(|m| {
                format!("{m} on the {axis} axis (input {input:?}, weight {weight:?}, stride {stride}, padding {padding}, output_padding {output_padding}, dilation {dilation})")
            })
        };
        let oh = extent(
            "height",
            ih,
            kh,
            stride.h,
            padding.h,
            dilation.h,
            output_padding.h,
        );
        let ow = extent(
            "width",
            iw,
            kw,
            stride.w,
            padding.w,
            dilation.w,
            output_padding.w,
        );
        let (oh, ow) = match (oh, ow) {
            (Ok(oh), Ok(ow)) => (oh, ow),
            (Err(m), _) | (_, Err(m)) => return fail(m),
        };
        let fits = |dims: &[usize]| {
            dims.iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1)))
                .is_some_and(|v| v <= MAX_EXTENT)
        };
        let out = [n, o, oh, ow];
        if !(fits(input) && fits(weight) && fits(&out)) {
            return fail(format!(
                "input {input:?}, weight {weight:?} or the output {out:?} has more elements \
                 than isize::MAX (stride {stride}, padding {padding}, dilation {dilation})"
            ));
        }
        if let Some(b) = bias
            && b != [o]
        {
            return fail(format!(
                "bias {b:?} does not match weight {weight:?} and groups({groups}): \
                     expected [{o}] (input {input:?})"
            ));
        }
        // The conv from the output back to the input: it fits by construction
        // (its padded input is (in − 1)·stride + dilation·(k − 1) + output_padding + 1).
        let axis = |out: usize, i: usize, k: usize, s: usize, p: usize, d: usize| {
            let mut a = AxisGeometry::build(out, k, s, p, d).expect("the adjoint conv fits");
            // ⌊output_padding / stride⌋ windows past the input's last pixel, if any, are dropped.
            debug_assert!(a.output >= i);
            a.output = i;
            a
        };
        Ok(Conv2dGeometry {
            batch: n,
            in_channels: o,
            out_channels: c,
            groups,
            h: axis(oh, ih, kh, stride.h, padding.h, dilation.h),
            w: axis(ow, iw, kw, stride.w, padding.w, dilation.w),
        })
    }

    /// Output height: `floor((H + 2p − d(kh − 1) − 1) / s) + 1`.
    ///
    /// ```
    /// use tapegrad::conv::{Conv2dGeometry, Conv2dOptions};
    /// let g = Conv2dGeometry::new(&[1, 1, 7, 9], &[1, 1, 3, 3], None, &Conv2dOptions::default().stride((2, 1)));
    /// assert_eq!((g.out_h(), g.out_w()), (3, 7));
    /// ```
    pub fn out_h(&self) -> usize {
        self.h.output
    }

    /// Output width: `floor((W + 2p − d(kw − 1) − 1) / s) + 1`.
    ///
    /// ```
    /// use tapegrad::conv::{Conv2dGeometry, Conv2dOptions};
    /// let g = Conv2dGeometry::new(&[1, 1, 5, 5], &[1, 1, 3, 3], None, &Conv2dOptions::default().padding(1));
    /// assert_eq!(g.out_w(), 5);
    /// ```
    pub fn out_w(&self) -> usize {
        self.w.output
    }

    /// `[N, C, H, W]`.
    ///
    /// ```
    /// use tapegrad::conv::{Conv2dGeometry, Conv2dOptions};
    /// let g = Conv2dGeometry::new(&[2, 3, 5, 4], &[1, 3, 1, 1], None, &Conv2dOptions::default());
    /// assert_eq!(g.input_shape(), [2, 3, 5, 4]);
    /// ```
    pub fn input_shape(&self) -> [usize; 4] {
        [self.batch, self.in_channels, self.h.input, self.w.input]
    }

    /// `[O, C/groups, kh, kw]`.
    ///
    /// ```
    /// use tapegrad::conv::{Conv2dGeometry, Conv2dOptions};
    /// let g = Conv2dGeometry::new(&[1, 4, 5, 5], &[4, 1, 3, 2], None, &Conv2dOptions::default().groups(4));
    /// assert_eq!(g.weight_shape(), [4, 1, 3, 2]);
    /// ```
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.in_per_group(),
            self.h.kernel,
            self.w.kernel,
        ]
    }

    /// `[N, O, out_h, out_w]`.
    ///
    /// ```
    /// use tapegrad::conv::{Conv2dGeometry, Conv2dOptions};
    /// let g = Conv2dGeometry::new(&[2, 1, 4, 4], &[3, 1, 2, 2], None, &Conv2dOptions::default());
    /// assert_eq!(g.output_shape(), [2, 3, 3, 3]);
    /// ```
    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.out_channels, self.out_h(), self.out_w()]
    }

    /// Input channels per group, C/groups.
    ///
    /// ```
    /// use tapegrad::conv::{Conv2dGeometry, Conv2dOptions};
    /// let g = Conv2dGeometry::new(&[1, 4, 3, 3], &[2, 2, 1, 1], None, &Conv2dOptions::default().groups(2));
    /// assert_eq!(g.in_per_group(), 2);
    /// ```
    pub fn in_per_group(&self) -> usize {
        self.in_channels / self.groups
    }

    /// Output channels per group, O/groups.
    ///
    /// ```
    /// use tapegrad::conv::{Conv2dGeometry, Conv2dOptions};
    /// let g = Conv2dGeometry::new(&[1, 3, 3, 3], &[6, 1, 1, 1], None, &Conv2dOptions::default().groups(3));
    /// assert_eq!(g.out_per_group(), 2); // a depthwise conv with channel multiplier 2
    /// ```
    pub fn out_per_group(&self) -> usize {
        self.out_channels / self.groups
    }

    /// Length of one receptive field of one group, `C/groups · kh · kw`: the rows
    /// of the im2col matrix and the columns of the weight seen as a matrix.
    ///
    /// ```
    /// use tapegrad::conv::{Conv2dGeometry, Conv2dOptions};
    /// let g = Conv2dGeometry::new(&[1, 3, 5, 5], &[2, 3, 3, 2], None, &Conv2dOptions::default());
    /// assert_eq!(g.patch_len(), 18);
    /// ```
    pub fn patch_len(&self) -> usize {
        self.in_per_group() * self.h.kernel * self.w.kernel
    }

    /// Input pixels per channel, H·W.
    ///
    /// ```
    /// use tapegrad::conv::{Conv2dGeometry, Conv2dOptions};
    /// let g = Conv2dGeometry::new(&[1, 1, 5, 4], &[1, 1, 3, 3], None, &Conv2dOptions::default());
    /// assert_eq!((g.in_hw(), g.out_hw()), (20, 6));
    /// ```
    pub fn in_hw(&self) -> usize {
        self.h.input * self.w.input
    }

    /// Output pixels per channel, out_h·out_w.
    ///
    /// ```
    /// use tapegrad::conv::{Conv2dGeometry, Conv2dOptions};
    /// let g = Conv2dGeometry::new(&[1, 1, 5, 4], &[1, 1, 1, 1], None, &Conv2dOptions::default().stride(2));
    /// assert_eq!(g.out_hw(), 6);
    /// ```
    pub fn out_hw(&self) -> usize {
        self.out_h() * self.out_w()
    }

    /// Whether the conv is pointwise (1x1 kernel, stride 1, no padding, and
    /// the output as large as the input — a transposed conv's geometry may
    /// cut its output back): each sample's input then already is its im2col
    /// matrix, and the fast path skips im2col.
    ///
    /// ```
    /// use tapegrad::conv::{Conv2dGeometry, Conv2dOptions};
    /// let opts = Conv2dOptions::default();
    /// assert!(Conv2dGeometry::new(&[1, 2, 4, 4], &[3, 2, 1, 1], None, &opts).is_pointwise());
    /// assert!(!Conv2dGeometry::new(&[1, 2, 4, 4], &[3, 2, 1, 1], None, &opts.padding(1)).is_pointwise());
    /// ```
    pub fn is_pointwise(&self) -> bool {
        let unit = |a: &AxisGeometry| {
            a.kernel == 1 && a.stride == 1 && a.padding == 0 && a.output == a.input
        };
        unit(&self.h) && unit(&self.w)
    }

    /// The input pixel `(row, col)` that output pixel `(i, j)` reads at kernel tap
    /// `(ki, kj)`, or `None` if that is padding: `(i·sh + ki·dh − ph, j·sw + kj·dw − pw)`.
    ///
    /// ```
    /// use tapegrad::conv::{Conv2dGeometry, Conv2dOptions};
    /// let g = Conv2dGeometry::new(&[1, 1, 5, 5], &[1, 1, 3, 3], None, &Conv2dOptions::default().padding(1));
    /// assert_eq!(g.input_pixel(0, 0, 0, 0), None);
    /// assert_eq!(g.input_pixel(2, 3, 1, 2), Some((2, 4)));
    /// ```
    #[inline]
    pub fn input_pixel(&self, i: usize, j: usize, ki: usize, kj: usize) -> Option<(usize, usize)> {
        Some((self.h.input_index(i, ki)?, self.w.input_index(j, kj)?))
    }
}

/// One axis of a transposed convolution's output,
/// `(input − 1)·stride − 2·padding + dilation·(kernel − 1) + output_padding + 1`,
/// with checked arithmetic: it must be positive and fit `isize`. The error
/// says which term overflows or what the size would be.
fn transposed_extent(
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    output_padding: usize,
) -> std::result::Result<usize, String> {
    let fit = |v: Option<usize>| v.filter(|&v| v <= MAX_EXTENT);
    let grown = fit((input - 1).checked_mul(stride)).ok_or_else(|| {
        format!("stride {stride} overflows: ({input} − 1)·{stride} exceeds isize::MAX")
    })?;
    let span = fit(dilation.checked_mul(kernel - 1)).ok_or_else(|| {
        format!("dilation {dilation} overflows: {dilation}·({kernel} − 1) exceeds isize::MAX")
    })?;
    let full = fit(grown
        .checked_add(span)
        .and_then(|v| v.checked_add(output_padding))
        .and_then(|v| v.checked_add(1)))
    .ok_or_else(|| {
        format!(
            "the output size {grown} + {span} + {output_padding} + 1 (before padding) exceeds isize::MAX"
        )
    })?;
    match padding.checked_mul(2).filter(|&p2| p2 < full) {
        Some(p2) => Ok(full - p2),
        None => Err(format!(
            "the output size ({input} − 1)·{stride} − 2·{padding} + {dilation}·({kernel} − 1) + \
             {output_padding} + 1 = {} is not positive",
            full as i128 - 2 * padding as i128
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::AxisGeometry;

    /// `valid_outputs`, `valid_taps` and `window` agree with `input_index` on every
    /// small geometry: the inverse mappings are derived, not re-invented.
    #[test]
    fn inverse_mappings_agree_with_input_index() {
        for input in 1..9 {
            for kernel in 1..5 {
                for stride in 1..4 {
                    for padding in 0..3 {
                        for dilation in 1..3 {
                            for a in [
                                AxisGeometry::new(input, kernel, stride, padding, dilation),
                                AxisGeometry::new_ceil(input, kernel, stride, padding, dilation),
                            ]
                            .into_iter()
                            .flatten()
                            {
                                for k in 0..kernel {
                                    let want: Vec<usize> = (0..a.output)
                                        .filter(|&o| a.input_index(o, k).is_some())
                                        .collect();
                                    let got: Vec<usize> = a.valid_outputs(k).collect();
                                    assert_eq!(got, want, "{a:?} tap {k}");
                                }
                                for o in 0..a.output {
                                    let want: Vec<usize> = (0..kernel)
                                        .filter(|&k| a.input_index(o, k).is_some())
                                        .collect();
                                    assert_eq!(
                                        a.valid_taps(o).collect::<Vec<_>>(),
                                        want,
                                        "{a:?} out {o}"
                                    );
                                    let pos: Vec<usize> =
                                        (0..kernel).filter_map(|k| a.input_index(o, k)).collect();
                                    assert_eq!(
                                        a.window(o).collect::<Vec<_>>(),
                                        pos,
                                        "{a:?} out {o}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Ceil mode against PyTorch's formula in signed arithmetic: the
    /// rounded-up count, one fewer if the last window would start at or past
    /// `input + padding`, and no geometry where that leaves no window.
    #[test]
    fn ceil_mode_follows_pytorchs_rule() {
        for input in 1..9i64 {
            for kernel in 1..6i64 {
                for stride in 1..5i64 {
                    for padding in 0..3i64 {
                        let num = input + 2 * padding - (kernel - 1) - 1 + stride - 1;
                        let mut out = num.div_euclid(stride) + 1;
                        if (out - 1) * stride >= input + padding {
                            out -= 1;
                        }
                        let [i, k, s, p] = [input, kernel, stride, padding].map(|v| v as usize);
                        let got = AxisGeometry::new_ceil(i, k, s, p, 1).map(|a| a.output as i64);
                        assert_eq!(
                            got,
                            (out >= 1).then_some(out),
                            "{input} {kernel} {stride} {padding}"
                        );
                        if let Some(a) = AxisGeometry::new_ceil(i, k, s, p, 1) {
                            let floor = AxisGeometry::new(i, k, s, p, 1).map_or(0, |f| f.output);
                            if 2 * p <= k {
                                assert!(a.output >= floor && a.output <= floor + 1, "{a:?}");
                            }
                            for o in 0..a.output {
                                // Windows that start in the padding (≤ kernel / 2) still read the input.
                                if 2 * p <= k {
                                    assert!(!a.valid_taps(o).is_empty(), "{a:?} {o}");
                                }
                                let end = (o * s + k).min(i + 2 * p);
                                assert_eq!(a.padded_taps(o), end - o * s, "{a:?} {o}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn output_size_uses_the_floor() {
        // (7 + 0 − 1·(3 − 1) − 1) / 3 + 1 = floor(4/3) + 1 = 2
        assert_eq!(AxisGeometry::new(7, 3, 3, 0, 1).unwrap().output, 2);
        // (9 + 2 − 2·(2 − 1) − 1) / 2 + 1 = 4 + 1 = 5
        assert_eq!(AxisGeometry::new(9, 2, 2, 1, 2).unwrap().output, 5);
        assert!(AxisGeometry::new(3, 2, 1, 0, 3).is_none()); // span 4 > 3
        assert!(AxisGeometry::new(3, 2, 0, 0, 1).is_none());
    }
}
