//! The UCI "Optical Recognition of Handwritten Digits" data (scikit-learn's copy),
//! embedded in the crate.

use super::Dataset;

const COUNT: usize = 1797;
const PIXELS: usize = 64;

/// 1,797 records of 64 pixel bytes (8×8, row-major, 0..=16) then the label byte (0..=9),
/// generated from scikit-learn's `digits.csv` by `scripts/pack_digits.py`.
const DIGITS_BIN: &[u8] = include_bytes!("../../data/digits.bin");

// The length is checked when the crate is compiled; pixel and label ranges at load.
const _: () = assert!(DIGITS_BIN.len() == COUNT * (PIXELS + 1));

/// The number of test images in [`digits_train_test`]: 36 per class.
///
/// ```
/// assert_eq!(tapegrad::data::DIGITS_TEST_COUNT, 360);
/// ```
pub const DIGITS_TEST_COUNT: usize = 360;

/// The seed of [`digits_train_test`].
///
/// ```
/// assert_eq!(tapegrad::data::DIGITS_SPLIT_SEED, 0);
/// ```
pub const DIGITS_SPLIT_SEED: u64 = 0;

/// The 1,797 8×8 handwritten digits (UCI ML repository, "Optical Recognition of
/// Handwritten Digits", as shipped by scikit-learn), embedded in the crate: no I/O.
///
/// Images are `[1, 8, 8]` with pixels in `0..=16` (`max_value() == 16`), labels `0..=9`,
/// in the order of scikit-learn's `load_digits()`. Class counts:
/// `[178, 182, 177, 183, 181, 182, 181, 179, 174, 180]`.
/// See `docs/data.md` for provenance and licence (CC BY 4.0).
///
/// # Panics
///
/// Only if the embedded bytes are corrupt (a pixel above 16 or a label above 9), which
/// the test suite rules out; their length is checked at compile time.
///
/// ```
/// let d = tapegrad::data::digits();
/// assert_eq!((d.len(), d.num_classes(), d.max_value()), (1797, 10, 16));
/// assert_eq!(d.image_shape(), [1, 8, 8]);
/// ```
pub fn digits() -> Dataset {
    let mut images = Vec::with_capacity(COUNT * PIXELS);
    let mut labels = Vec::with_capacity(COUNT);
    for rec in DIGITS_BIN.chunks_exact(PIXELS + 1) {
        images.extend_from_slice(&rec[..PIXELS]);
        labels.push(rec[PIXELS]);
    }
    Dataset::new(images, labels, [1, 8, 8], 10, 16).unwrap_or_else(|e| {
        panic!("the embedded data/digits.bin is corrupt ({e}); regenerate it with scripts/pack_digits.py")
    })
}

/// The crate's fixed train/test split of [`digits`]:
/// `digits().stratified_split(DIGITS_TEST_COUNT, DIGITS_SPLIT_SEED)`, i.e. 1,437 training
/// and 360 test images, 36 of each class in the test set, both in the original order.
///
/// ```
/// let (train, test) = tapegrad::data::digits_train_test();
/// assert_eq!((train.len(), test.len()), (1437, 360));
/// assert_eq!(test.class_counts(), vec![36; 10]);
/// ```
pub fn digits_train_test() -> (Dataset, Dataset) {
    digits()
        .stratified_split(DIGITS_TEST_COUNT, DIGITS_SPLIT_SEED)
        .expect("every digit class has at least 36 images")
}
