//! Normalisation ([`Normalize`]) and mini-batching ([`Batch`], [`Batches`]) of a [`Dataset`].

use super::Dataset;
use crate::{Float, Tensor};
use rand::seq::SliceRandom;

/// Pixel normalisation: pixel `v` of a dataset with maximum `max_value` becomes
/// `(v / max_value − mean) / std`.
///
/// `mean` and `std` are in units of `v / max_value` (i.e. of pixels scaled to `[0, 1]`).
/// Compute them once on the training set with [`Dataset::normalization`] and apply the
/// same `Normalize` to every split, so the test set sees the training statistics.
///
/// ```
/// use tapegrad::data::Normalize;
/// let n = Normalize { mean: 0.5, std: 0.25 };
/// assert_eq!(n.apply(16, 16), 2.0); // (1.0 − 0.5) / 0.25
/// assert_eq!(Normalize::IDENTITY.apply(4, 16), 0.25); // only scaled to [0, 1]
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    /// Mean of `v / max_value`, subtracted first.
    pub mean: f64,
    /// Standard deviation of `v / max_value`, divided by second.
    pub std: f64,
}

impl Normalize {
    /// No centring or scaling beyond `v / max_value`: `mean = 0`, `std = 1`.
    ///
    /// ```
    /// let n = tapegrad::data::Normalize::IDENTITY;
    /// assert_eq!((n.mean, n.std), (0.0, 1.0));
    /// ```
    pub const IDENTITY: Normalize = Normalize {
        mean: 0.0,
        std: 1.0,
    };

    /// The normalised value of pixel `v` from a dataset whose pixels go up to `max_value`.
    ///
    /// ```
    /// let n = tapegrad::data::Normalize { mean: 0.25, std: 0.5 };
    /// assert_eq!(n.apply(0, 255), -0.5);
    /// ```
    pub fn apply(&self, v: u8, max_value: u8) -> f64 {
        (v as f64 / max_value as f64 - self.mean) / self.std
    }

    /// The 256 possible outputs, indexed by pixel value, converted to `T` once.
    fn table<T: Float>(&self, max_value: u8) -> [T; 256] {
        std::array::from_fn(|v| T::from_f64(self.apply(v as u8, max_value)))
    }
}

/// A mini-batch: images as a `[B, C, H, W]` tensor, their labels and their indices in
/// the dataset they came from.
///
/// ```
/// let d = tapegrad::data::digits();
/// let b = d.batch::<f64>(&[5, 0], tapegrad::data::Normalize::IDENTITY);
/// assert_eq!(&b.images.shape()[..], &[2, 1, 8, 8]);
/// assert_eq!(b.labels, vec![5, 0]);
/// assert_eq!(b.indices, vec![5, 0]);
/// ```
#[derive(Clone, Debug)]
pub struct Batch<T: Float = f32> {
    /// The normalised images, `[B, C, H, W]`.
    pub images: Tensor<T>,
    /// The class of each image (for [`Var::cross_entropy`](crate::Var::cross_entropy)).
    pub labels: Vec<usize>,
    /// Which images of the dataset these are.
    pub indices: Vec<usize>,
}

impl<T: Float> Batch<T> {
    /// Number of images in the batch.
    ///
    /// ```
    /// let d = tapegrad::data::digits();
    /// assert_eq!(d.batch::<f32>(&[1, 2, 3], d.normalization()).len(), 3);
    /// ```
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch is empty (only possible from [`Dataset::batch`] with no indices).
    ///
    /// ```
    /// let d = tapegrad::data::digits();
    /// assert!(d.batch::<f32>(&[], d.normalization()).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Iterator over the mini-batches of a [`Dataset`], from [`Dataset::batches`] or
/// [`Dataset::shuffled_batches`]. Every image appears exactly once per pass; the last
/// batch holds the remainder (`len % batch_size` images) when the size does not divide.
///
/// ```
/// let d = tapegrad::data::digits();
/// let it = d.batches::<f32>(500, d.normalization());
/// assert_eq!(it.len(), 4); // 500 + 500 + 500 + 297
/// ```
#[derive(Clone, Debug)]
pub struct Batches<'a, T: Float = f32> {
    dataset: &'a Dataset,
    order: Vec<usize>,
    pos: usize,
    batch_size: usize,
    table: [T; 256],
}

impl<T: Float> Iterator for Batches<'_, T> {
    type Item = Batch<T>;

    fn next(&mut self) -> Option<Batch<T>> {
        if self.pos >= self.order.len() {
            return None;
        }
        let end = (self.pos + self.batch_size).min(self.order.len());
        let b = self.dataset.gather(&self.order[self.pos..end], &self.table);
        self.pos = end;
        Some(b)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = (self.order.len() - self.pos).div_ceil(self.batch_size);
        (n, Some(n))
    }
}

impl<T: Float> ExactSizeIterator for Batches<'_, T> {}

impl Dataset {
    /// The mean and (population) standard deviation of `v / max_value` over every pixel
    /// of every image — one scalar pair, not per channel. A zero standard deviation
    /// (all pixels equal) is replaced by 1 so normalising never divides by zero.
    ///
    /// ```
    /// let (train, _) = tapegrad::data::digits_train_test();
    /// let n = train.normalization();
    /// assert!((n.mean - 0.3).abs() < 0.01 && (n.std - 0.38).abs() < 0.01);
    /// ```
    pub fn normalization(&self) -> Normalize {
        // Exact integer histogram, then the moments in f64.
        let mut hist = [0u64; 256];
        for &v in self.images() {
            hist[v as usize] += 1;
        }
        let n = self.images().len() as f64;
        if n == 0.0 {
            return Normalize::IDENTITY;
        }
        let m = self.max_value() as f64;
        let mean = hist
            .iter()
            .enumerate()
            .map(|(v, &c)| c as f64 * (v as f64 / m))
            .sum::<f64>()
            / n;
        let var = hist
            .iter()
            .enumerate()
            .map(|(v, &c)| c as f64 * (v as f64 / m - mean).powi(2))
            .sum::<f64>()
            / n;
        let std = var.sqrt();
        Normalize {
            mean,
            std: if std > 0.0 { std } else { 1.0 },
        }
    }

    /// The images at `indices` (in that order) as one normalised [`Batch`].
    /// Panics if an index is out of range.
    ///
    /// ```
    /// use tapegrad::data::Normalize;
    /// let d = tapegrad::data::digits();
    /// let b = d.batch::<f32>(&[0], Normalize::IDENTITY);
    /// assert_eq!(b.images.get(&[0, 0, 0, 2]), 5.0 / 16.0);
    /// ```
    pub fn batch<T: Float>(&self, indices: &[usize], norm: Normalize) -> Batch<T> {
        self.gather(indices, &norm.table(self.max_value()))
    }

    fn gather<T: Float>(&self, indices: &[usize], table: &[T; 256]) -> Batch<T> {
        let mut x = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            x.extend(self.image(i).iter().map(|&v| table[v as usize]));
        }
        let [c, h, w] = self.image_shape();
        Batch {
            images: Tensor::from_vec(x, [indices.len(), c, h, w])
                .expect("gathered exactly B·C·H·W pixels"),
            labels: indices.iter().map(|&i| self.label(i)).collect(),
            indices: indices.to_vec(),
        }
    }

    /// The whole dataset as one normalised `[N, C, H, W]` tensor, in order (for
    /// evaluation; the labels are [`Dataset::labels`]).
    ///
    /// ```
    /// let (train, test) = tapegrad::data::digits_train_test();
    /// let x = test.to_tensor::<f64>(train.normalization());
    /// assert_eq!(&x.shape()[..], &[360, 1, 8, 8]);
    /// ```
    pub fn to_tensor<T: Float>(&self, norm: Normalize) -> Tensor<T> {
        let indices: Vec<usize> = (0..self.len()).collect();
        self.batch(&indices, norm).images
    }

    /// Mini-batches of `batch_size` images in dataset order; the last one is smaller
    /// when `batch_size` does not divide `len()` (it is kept, not dropped).
    /// Panics if `batch_size == 0`.
    ///
    /// ```
    /// let (train, _) = tapegrad::data::digits_train_test();
    /// let sizes: Vec<usize> = train.batches::<f32>(500, train.normalization()).map(|b| b.len()).collect();
    /// assert_eq!(sizes, vec![500, 500, 437]);
    /// ```
    pub fn batches<T: Float>(&self, batch_size: usize, norm: Normalize) -> Batches<'_, T> {
        self.batches_in((0..self.len()).collect(), batch_size, norm)
    }

    /// Mini-batches of `batch_size` images in a random order: a permutation of
    /// `0..len()` is drawn once, up front, with `tapegrad::rand::seq::SliceRandom::shuffle` on `rng`
    /// (so the same RNG state gives the same batches), then cut like [`Dataset::batches`].
    /// Panics if `batch_size == 0`.
    ///
    /// ```
    /// use tapegrad::rand::SeedableRng;
    /// let d = tapegrad::data::digits();
    /// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(42);
    /// let first = d.shuffled_batches::<f32>(32, d.normalization(), &mut rng).next().unwrap();
    /// assert_eq!(&first.images.shape()[..], &[32, 1, 8, 8]);
    /// ```
    pub fn shuffled_batches<T: Float>(
        &self,
        batch_size: usize,
        norm: Normalize,
        rng: &mut (impl rand::Rng + ?Sized),
    ) -> Batches<'_, T> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(rng);
        self.batches_in(order, batch_size, norm)
    }

    fn batches_in<T: Float>(
        &self,
        order: Vec<usize>,
        batch_size: usize,
        norm: Normalize,
    ) -> Batches<'_, T> {
        assert!(batch_size > 0, "batches: batch_size must be at least 1");
        Batches {
            dataset: self,
            order,
            pos: 0,
            batch_size,
            table: norm.table(self.max_value()),
        }
    }
}
