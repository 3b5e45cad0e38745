//! Data augmentation of image batches `[N, C, H, W]`: random crops of a zero-padded
//! image, random shifts and random horizontal flips, each image drawn independently
//! from the caller's RNG (the same RNG state gives the same output), and the
//! deterministic [`translate`] and [`flip_horizontal`] they are built on.
//!
//! Every function returns a new tensor of the input's shape; all channels of an image
//! move together. The pixels that move in from outside the image are `0` — apply the
//! augmentation after normalising and 0 is the mean pixel, or before, and it is black.
//!
//! ```
//! use tapegrad::rand::SeedableRng;
//! use tapegrad::data::{self, augment};
//! let d = data::digits();
//! let mut order = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
//! let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(1);
//! for batch in d.shuffled_batches::<f32>(64, d.normalization(), &mut order).take(2) {
//!     let x = augment::random_crop(&batch.images, 1, &mut rng);
//!     let x = augment::random_flip(&x, 0.5, &mut rng);
//!     assert_eq!(x.shape(), batch.images.shape());
//! }
//! ```

use crate::{Float, Tensor};
use rand::{Rng, RngExt};

/// `[N, C, H, W]` of a batch; panics naming `op` for any other rank.
fn dims<T: Float>(op: &str, images: &Tensor<T>) -> [usize; 4] {
    match images.shape()[..] {
        [n, c, h, w] => [n, c, h, w],
        _ => panic!(
            "{op}: expected a batch of images [N, C, H, W], got shape {}",
            images.shape()
        ),
    }
}

/// Moves the content of each image `i` by `offsets[i] = (dy, dx)` pixels — down and
/// right for positive values — filling the uncovered pixels with 0:
/// `out[i, c, y, x] = images[i, c, y − dy, x − dx]` where that is inside the image,
/// else 0. Panics if `images` is not `[N, C, H, W]` or `offsets.len() != N`.
///
/// ```
/// use tapegrad::{data::augment, Tensor};
/// let x = Tensor::<f32>::arange(9).reshape([1, 1, 3, 3]); // 0 1 2 / 3 4 5 / 6 7 8
/// let y = augment::translate(&x, &[(1, -1)]);
/// assert_eq!(y.data(), &[0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 4.0, 5.0, 0.0]);
/// ```
pub fn translate<T: Float>(images: &Tensor<T>, offsets: &[(isize, isize)]) -> Tensor<T> {
    let [n, c, h, w] = dims("translate", images);
    assert!(
        offsets.len() == n,
        "translate: {} offsets for a batch of {n} images",
        offsets.len()
    );
    let src = images.data();
    let mut out = vec![T::ZERO; src.len()];
    let plane = h * w;
    for (i, &(dy, dx)) in offsets.iter().enumerate() {
        // Output columns x with 0 ≤ x − dx < w.
        let x0 = dx.clamp(0, w as isize) as usize;
        let x1 = (w as isize + dx).clamp(0, w as isize) as usize;
        if x0 >= x1 {
            continue;
        }
        for ch in 0..c {
            let base = (i * c + ch) * plane;
            for y in 0..h {
                let sy = y as isize - dy;
                if sy < 0 || sy >= h as isize {
                    continue;
                }
                let (dst, s) = (base + y * w, base + sy as usize * w);
                let sx0 = (x0 as isize - dx) as usize;
                out[dst + x0..dst + x1].copy_from_slice(&src[s + sx0..s + sx0 + (x1 - x0)]);
            }
        }
    }
    Tensor::from_vec(out, images.shape().clone()).expect("same number of elements")
}

/// Mirrors left–right the images `i` with `which[i]` true:
/// `out[i, c, y, x] = images[i, c, y, W − 1 − x]`; the others are copied unchanged.
/// Panics if `images` is not `[N, C, H, W]` or `which.len() != N`.
///
/// ```
/// use tapegrad::{data::augment, Tensor};
/// let x = Tensor::<f64>::arange(4).reshape([2, 1, 1, 2]);
/// assert_eq!(augment::flip_horizontal(&x, &[true, false]).data(), &[1.0, 0.0, 2.0, 3.0]);
/// ```
pub fn flip_horizontal<T: Float>(images: &Tensor<T>, which: &[bool]) -> Tensor<T> {
    let [n, c, h, w] = dims("flip_horizontal", images);
    assert!(
        which.len() == n,
        "flip_horizontal: {} flags for a batch of {n} images",
        which.len()
    );
    let mut out = images.clone();
    if w > 0 {
        let image = c * h * w;
        for (i, &flip) in which.iter().enumerate() {
            if flip {
                let data = &mut out.data_mut()[i * image..(i + 1) * image];
                for row in data.chunks_exact_mut(w) {
                    row.reverse();
                }
            }
        }
    }
    out
}

/// A random `H × W` crop of each image padded with `padding` zeros on every side, as
/// torchvision's `RandomCrop((H, W), padding)`: for each image in turn, `top` then
/// `left` are drawn uniformly from `0..=2·padding` (`rng.random_range`), and
/// `out[i, c, y, x] = padded[i, c, top + y, left + x]` — that is, [`translate`] by
/// `(padding − top, padding − left)`. Panics if `images` is not `[N, C, H, W]`.
///
/// ```
/// use tapegrad::rand::SeedableRng;
/// use tapegrad::{data::augment, Tensor};
/// let x = Tensor::<f32>::ones([8, 1, 4, 4]);
/// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(1);
/// let y = augment::random_crop(&x, 2, &mut rng);
/// assert_eq!(&y.shape()[..], &[8, 1, 4, 4]);
/// assert!(y.data().iter().all(|&v| v == 0.0 || v == 1.0));
/// ```
pub fn random_crop<T: Float, R: Rng + ?Sized>(
    images: &Tensor<T>,
    padding: usize,
    rng: &mut R,
) -> Tensor<T> {
    let [n, ..] = dims("random_crop", images);
    let p = padding as isize;
    let offsets: Vec<(isize, isize)> = (0..n)
        .map(|_| {
            let top = rng.random_range(0..=2 * padding) as isize;
            let left = rng.random_range(0..=2 * padding) as isize;
            (p - top, p - left)
        })
        .collect();
    translate(images, &offsets)
}

/// Shifts each image by a random whole number of pixels, up to `max_shift` each way:
/// for each image in turn, `dy` then `dx` are drawn uniformly from
/// `−max_shift..=max_shift` (as `rng.random_range(0..=2·max_shift) − max_shift`), then
/// [`translate`] by `(dy, dx)` (zero fill). Panics if `images` is not `[N, C, H, W]`.
///
/// ```
/// use tapegrad::rand::SeedableRng;
/// use tapegrad::{data::augment, Tensor};
/// let x = Tensor::<f32>::ones([4, 2, 5, 5]);
/// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(7);
/// let y = augment::random_shift(&x, 1, &mut rng);
/// // At most one row and one column of each image are uncovered.
/// for img in y.data().chunks(50) {
///     assert!(img.iter().filter(|&&v| v == 1.0).count() >= 2 * 16);
/// }
/// ```
pub fn random_shift<T: Float, R: Rng + ?Sized>(
    images: &Tensor<T>,
    max_shift: usize,
    rng: &mut R,
) -> Tensor<T> {
    let [n, ..] = dims("random_shift", images);
    let k = max_shift as isize;
    let offsets: Vec<(isize, isize)> = (0..n)
        .map(|_| {
            let dy = rng.random_range(0..=2 * max_shift) as isize - k;
            let dx = rng.random_range(0..=2 * max_shift) as isize - k;
            (dy, dx)
        })
        .collect();
    translate(images, &offsets)
}

/// Mirrors each image left–right with probability `p`, as torchvision's
/// `RandomHorizontalFlip(p)`: one `rng.random_bool(p)` per image, in order, then
/// [`flip_horizontal`]. Panics if `p` is not in `[0, 1]` or `images` is not
/// `[N, C, H, W]`.
///
/// ```
/// use tapegrad::rand::SeedableRng;
/// use tapegrad::{data::augment, Tensor};
/// let x = Tensor::<f32>::arange(6).reshape([3, 1, 1, 2]);
/// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
/// assert_eq!(augment::random_flip(&x, 1.0, &mut rng).data(), &[1.0, 0.0, 3.0, 2.0, 5.0, 4.0]);
/// assert_eq!(augment::random_flip(&x, 0.0, &mut rng).data(), x.data());
/// ```
pub fn random_flip<T: Float, R: Rng + ?Sized>(
    images: &Tensor<T>,
    p: f64,
    rng: &mut R,
) -> Tensor<T> {
    let [n, ..] = dims("random_flip", images);
    assert!(
        (0.0..=1.0).contains(&p),
        "random_flip: the probability must be in [0, 1], got {p}"
    );
    let which: Vec<bool> = (0..n).map(|_| rng.random_bool(p)).collect();
    flip_horizontal(images, &which)
}
