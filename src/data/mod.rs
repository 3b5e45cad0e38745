//! Datasets for training small CNNs: the embedded UCI handwritten digits, an MNIST IDX
//! loader, a seeded stratified train/test split, normalisation and mini-batching into
//! `[B, C, H, W]` tensors.
//!
//! Images are stored as raw `u8` pixels (`0..=max_value`) and only become floats when
//! they are batched: each pixel `v` becomes `(v / max_value − mean) / std`, with
//! `mean`/`std` a [`Normalize`] computed from the *training* set and applied unchanged
//! to the test set.
//!
//! ```
//! use tapegrad::rand::SeedableRng;
//! use tapegrad::data;
//!
//! let (train, test) = data::digits_train_test(); // 1,437 / 360, 36 test images per class
//! let norm = train.normalization();
//! let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
//! for batch in train.shuffled_batches::<f32>(64, norm, &mut rng) {
//!     assert_eq!(&batch.images.shape()[1..], &[1, 8, 8]);
//!     assert_eq!(batch.labels.len(), batch.images.shape()[0]);
//! }
//! let x_test = test.to_tensor::<f32>(norm); // [360, 1, 8, 8], train statistics
//! assert_eq!(&x_test.shape()[..], &[360, 1, 8, 8]);
//! ```
//!
//! [`augment`] holds random crops, shifts and flips of a batch.
//!
//! See `docs/data.md` for the data's provenance and licence.

pub mod augment;
mod batch;
mod dataset;
mod digits;
pub mod mnist;

pub use batch::{Batch, Batches, Normalize};
pub use dataset::Dataset;
pub use digits::{DIGITS_SPLIT_SEED, DIGITS_TEST_COUNT, digits, digits_train_test};
