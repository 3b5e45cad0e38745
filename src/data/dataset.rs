//! [`Dataset`]: labelled `u8` images, with subsetting and the stratified split.

use crate::{Error, Result};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use std::fmt;

/// A labelled set of same-sized images stored as raw `u8` pixels.
///
/// Image `i` is `channels × height × width` bytes, row-major (CHW), each in
/// `0..=max_value` (16 for the digits, 255 for MNIST); its label is in
/// `0..num_classes`. Pixels become floats only when batched (see
/// [`Dataset::batches`], [`Dataset::to_tensor`]).
///
/// ```
/// let d = tapegrad::data::digits();
/// assert_eq!(d.len(), 1797);
/// assert_eq!(d.image_shape(), [1, 8, 8]);
/// assert_eq!(d.image(0).len(), 64);
/// assert_eq!(d.label(0), 0);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Dataset {
    images: Vec<u8>,
    labels: Vec<u8>,
    shape: [usize; 3],
    num_classes: usize,
    max_value: u8,
}

impl Dataset {
    /// Builds a dataset from `labels.len()` images of `shape = [channels, height, width]`
    /// concatenated in `images`.
    ///
    /// Errors ([`Error::Data`]) if `images` does not hold exactly `labels.len()` images,
    /// an image dimension or `num_classes` or `max_value` is zero, a label is
    /// `≥ num_classes`, or a pixel exceeds `max_value`.
    ///
    /// ```
    /// use tapegrad::data::Dataset;
    /// // Two 1×2×2 images with pixels in 0..=255, classes 0..3.
    /// let d = Dataset::new(vec![0, 255, 10, 20, 1, 2, 3, 4], vec![2, 0], [1, 2, 2], 3, 255).unwrap();
    /// assert_eq!(d.len(), 2);
    /// assert_eq!(d.image(1), &[1, 2, 3, 4]);
    /// let err = Dataset::new(vec![0; 4], vec![3], [1, 2, 2], 3, 255).unwrap_err();
    /// assert_eq!(err.to_string(), "dataset: label 3 of image 0 is out of range for 3 classes");
    /// ```
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u8>,
        shape: [usize; 3],
        num_classes: usize,
        max_value: u8,
    ) -> Result<Self> {
        let per = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let per = match per {
            Some(p) if p > 0 => p,
            _ => {
                return Err(Error::Data(format!(
                    "dataset: invalid image shape {shape:?}"
                )));
            }
        };
        if num_classes == 0 || max_value == 0 {
            return Err(Error::Data(format!(
                "dataset: num_classes ({num_classes}) and max_value ({max_value}) must be positive"
            )));
        }
        if labels.len().checked_mul(per) != Some(images.len()) {
            return Err(Error::Data(format!(
                "dataset: {} labels need {} × {per} = {} pixel bytes for images of shape {shape:?}, got {}",
                labels.len(),
                labels.len(),
                labels.len().saturating_mul(per),
                images.len()
            )));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= num_classes)
        {
            return Err(Error::Data(format!(
                "dataset: label {l} of image {i} is out of range for {num_classes} classes"
            )));
        }
        if let Some((k, &v)) = images.iter().enumerate().find(|&(_, &v)| v > max_value) {
            return Err(Error::Data(format!(
                "dataset: pixel {} of image {} is {v}, above max_value {max_value}",
                k % per,
                k / per
            )));
        }
        Ok(Dataset {
            images,
            labels,
            shape,
            num_classes,
            max_value,
        })
    }

    /// Number of images.
    ///
    /// ```
    /// assert_eq!(tapegrad::data::digits().len(), 1797);
    /// ```
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the dataset has no images.
    ///
    /// ```
    /// assert!(!tapegrad::data::digits().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `[channels, height, width]` of every image.
    ///
    /// ```
    /// assert_eq!(tapegrad::data::digits().image_shape(), [1, 8, 8]);
    /// ```
    pub fn image_shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Channels per image (1 for the digits and MNIST).
    ///
    /// ```
    /// assert_eq!(tapegrad::data::digits().channels(), 1);
    /// ```
    pub fn channels(&self) -> usize {
        self.shape[0]
    }

    /// Image height in pixels.
    ///
    /// ```
    /// assert_eq!(tapegrad::data::digits().height(), 8);
    /// ```
    pub fn height(&self) -> usize {
        self.shape[1]
    }

    /// Image width in pixels.
    ///
    /// ```
    /// assert_eq!(tapegrad::data::digits().width(), 8);
    /// ```
    pub fn width(&self) -> usize {
        self.shape[2]
    }

    /// Pixels per image: `channels × height × width`.
    ///
    /// ```
    /// assert_eq!(tapegrad::data::digits().image_len(), 64);
    /// ```
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of classes; labels are `0..num_classes`.
    ///
    /// ```
    /// assert_eq!(tapegrad::data::digits().num_classes(), 10);
    /// ```
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The largest value a pixel can take (16 for the digits, 255 for MNIST); the
    /// first step of normalisation divides by it.
    ///
    /// ```
    /// assert_eq!(tapegrad::data::digits().max_value(), 16);
    /// ```
    pub fn max_value(&self) -> u8 {
        self.max_value
    }

    /// The pixels of image `i` (CHW, row-major). Panics if `i >= len()`.
    ///
    /// ```
    /// let d = tapegrad::data::digits();
    /// assert_eq!(&d.image(0)[..8], &[0, 0, 5, 13, 9, 1, 0, 0]);
    /// ```
    pub fn image(&self, i: usize) -> &[u8] {
        assert!(
            i < self.len(),
            "image {i} is out of range for a dataset of {}",
            self.len()
        );
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// The label of image `i`. Panics if `i >= len()`.
    ///
    /// ```
    /// assert_eq!(tapegrad::data::digits().label(1), 1);
    /// ```
    pub fn label(&self, i: usize) -> usize {
        assert!(
            i < self.len(),
            "label {i} is out of range for a dataset of {}",
            self.len()
        );
        self.labels[i] as usize
    }

    /// All pixels, image after image.
    ///
    /// ```
    /// let d = tapegrad::data::digits();
    /// assert_eq!(d.images().len(), 1797 * 64);
    /// ```
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    /// All labels, in image order.
    ///
    /// ```
    /// assert_eq!(&tapegrad::data::digits().labels()[..3], &[0, 1, 2]);
    /// ```
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// All labels as `usize`, in image order — ready for
    /// [`Var::cross_entropy`](crate::Var::cross_entropy) over the whole set (e.g. with
    /// [`Dataset::to_tensor`]). [`Dataset::labels`] is the stored bytes.
    ///
    /// ```
    /// use tapegrad::{data, Tape};
    /// let (train, test) = data::digits_train_test();
    /// let targets: Vec<usize> = test.targets();
    /// assert_eq!(targets.len(), 360);
    /// // Uniform logits: the loss is ln 10.
    /// let tape = Tape::new();
    /// let logits = tape.constant(tapegrad::Tensor::<f64>::zeros([360, 10]));
    /// let loss = logits.cross_entropy(&test.targets()).value().data()[0];
    /// assert!((loss - 10f64.ln()).abs() < 1e-12);
    /// ```
    pub fn targets(&self) -> Vec<usize> {
        self.labels.iter().map(|&l| usize::from(l)).collect()
    }

    /// How many images each class has (index = class).
    ///
    /// ```
    /// let counts = tapegrad::data::digits().class_counts();
    /// assert_eq!(counts, vec![178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
    /// ```
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.num_classes];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }

    /// The images at `indices`, in that order (repeats allowed).
    /// Panics if an index is out of range.
    ///
    /// ```
    /// let d = tapegrad::data::digits();
    /// let s = d.subset(&[10, 3]);
    /// assert_eq!(s.len(), 2);
    /// assert_eq!(s.image(1), d.image(3));
    /// assert_eq!(s.label(0), d.label(10));
    /// ```
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            images,
            labels,
            shape: self.shape,
            num_classes: self.num_classes,
            max_value: self.max_value,
        }
    }

    /// The indices of a balanced, stratified, seeded train/test split: returns
    /// `(train_indices, test_indices)`, each sorted ascending. See
    /// [`Dataset::stratified_split`] for how it is computed.
    ///
    /// ```
    /// let d = tapegrad::data::digits();
    /// let (train, test) = d.stratified_split_indices(360, 0).unwrap();
    /// assert_eq!((train.len(), test.len()), (1437, 360));
    /// assert!(test.windows(2).all(|w| w[0] < w[1]));
    /// ```
    pub fn stratified_split_indices(
        &self,
        test_count: usize,
        seed: u64,
    ) -> Result<(Vec<usize>, Vec<usize>)> {
        let k = self.num_classes;
        let counts = self.class_counts();
        if test_count > self.len() {
            return Err(Error::Data(format!(
                "stratified_split: test_count {test_count} exceeds the {} images",
                self.len()
            )));
        }
        let quota = |c: usize| test_count / k + usize::from(c < test_count % k);
        if let Some(c) = (0..k).find(|&c| quota(c) > counts[c]) {
            return Err(Error::Data(format!(
                "stratified_split: class {c} needs {} test images but has only {}",
                quota(c),
                counts[c]
            )));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut is_test = vec![false; self.len()];
        for c in 0..k {
            let mut members: Vec<usize> = (0..self.len())
                .filter(|&i| self.labels[i] as usize == c)
                .collect();
            members.shuffle(&mut rng);
            for &i in &members[..quota(c)] {
                is_test[i] = true;
            }
        }
        let (test, train): (Vec<usize>, Vec<usize>) = (0..self.len()).partition(|&i| is_test[i]);
        Ok((train, test))
    }

    /// Splits into `(train, test)` with `test_count` test images spread evenly over the
    /// classes, deterministically for `seed`.
    ///
    /// How it is computed:
    /// 1. class `c` (of `k`) gets a test quota of `test_count / k`, plus one more for
    ///    the first `test_count % k` classes (`c < test_count % k`);
    /// 2. one `tapegrad::rand::rngs::StdRng::seed_from_u64(seed)` is created; for `c = 0, 1, …, k−1`
    ///    in turn, the indices of class `c` (ascending) are shuffled with
    ///    `tapegrad::rand::seq::SliceRandom::shuffle` and the first `quota(c)` go to the test set;
    /// 3. both sets keep the original order (ascending indices).
    ///
    /// So the test set is *balanced* (equal counts per class, not proportional). For the
    /// digits, `stratified_split(360, seed)` gives 1,437 / 360 with 36 per class.
    /// The same seed gives the same split for a given `rand` version (`StdRng` may change
    /// between `rand` releases; a test pins the split used by [`digits_train_test`]).
    ///
    /// Errors if `test_count > len()` or a class has fewer images than its quota.
    ///
    /// [`digits_train_test`]: crate::data::digits_train_test
    ///
    /// ```
    /// let d = tapegrad::data::digits();
    /// let (train, test) = d.stratified_split(360, 7).unwrap();
    /// assert_eq!((train.len(), test.len()), (1437, 360));
    /// assert_eq!(test.class_counts(), vec![36; 10]);
    /// assert!(d.stratified_split(2000, 7).is_err());
    /// ```
    pub fn stratified_split(&self, test_count: usize, seed: u64) -> Result<(Dataset, Dataset)> {
        let (train, test) = self.stratified_split_indices(test_count, seed)?;
        Ok((self.subset(&train), self.subset(&test)))
    }
}

/// A summary, not the pixels: `Dataset { len: 1797, image_shape: [1, 8, 8], num_classes: 10, max_value: 16 }`.
impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("len", &self.len())
            .field("image_shape", &self.shape)
            .field("num_classes", &self.num_classes)
            .field("max_value", &self.max_value)
            .finish()
    }
}
