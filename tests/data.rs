//! Tests of `tapegrad::data`: the embedded digits, the stratified split, batching and
//! normalisation, and the MNIST IDX loader (round trips and a table of bad inputs).

use rand::SeedableRng;
use std::collections::HashSet;
use std::path::PathBuf;
use tapegrad::data::{self, Dataset, Normalize, mnist};
use tapegrad::{Error, Tensor};

/// Class counts of the 1,797-image UCI test partition. `digits.rst` does not list them;
/// they are on the UCI dataset page ("No of examples in testing set") and match the CSV.
const DIGITS_CLASS_COUNTS: [usize; 10] = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180];

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

// ---------------------------------------------------------------- digits

#[test]
fn digits_has_1797_images_of_8x8_with_labels_0_to_9() {
    let d = data::digits();
    assert_eq!(d.len(), 1797);
    assert_eq!(d.image_shape(), [1, 8, 8]);
    assert_eq!((d.num_classes(), d.max_value()), (10, 16));
    assert_eq!(d.images().len(), 1797 * 64);
    assert_eq!(d.labels().len(), 1797);
    let labels: HashSet<u8> = d.labels().iter().copied().collect();
    assert_eq!(labels, (0..10).collect());
    assert_eq!(d.images().iter().max(), Some(&16));
    assert_eq!(d.images().iter().min(), Some(&0));
}

#[test]
fn digits_class_counts_match_uci() {
    assert_eq!(data::digits().class_counts(), DIGITS_CLASS_COUNTS.to_vec());
}

#[test]
fn digits_match_the_csv() {
    let d = data::digits();
    // First and last rows of scikit-learn's digits.csv.
    let first = [
        0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0,
        0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0,
        0, 6, 13, 10, 0, 0, 0,
    ];
    let last = [
        0, 0, 10, 14, 8, 1, 0, 0, 0, 2, 16, 14, 6, 1, 0, 0, 0, 0, 15, 15, 8, 15, 0, 0, 0, 0, 5, 16,
        16, 10, 0, 0, 0, 0, 12, 15, 15, 12, 0, 0, 0, 4, 16, 6, 4, 16, 6, 0, 0, 8, 16, 10, 8, 16, 8,
        0, 0, 1, 8, 12, 14, 12, 1, 0,
    ];
    assert_eq!(d.image(0), &first);
    assert_eq!(d.label(0), 0);
    assert_eq!(d.image(1796), &last);
    assert_eq!(d.label(1796), 8);
    // FNV-1a 64 of the packed file (64 pixels then the label, per image), as computed
    // from data/digits.bin by Python; catches any change to the embedded data.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..d.len() {
        for &b in d.image(i).iter().chain(&[d.label(i) as u8]) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    assert_eq!(h, 0x7768_69cc_e379_5967);
    assert_eq!(d.images().iter().map(|&v| v as u64).sum::<u64>(), 561_718);
}

#[test]
fn dataset_debug_is_a_summary() {
    assert_eq!(
        format!("{:?}", data::digits()),
        "Dataset { len: 1797, image_shape: [1, 8, 8], num_classes: 10, max_value: 16 }"
    );
}

#[test]
fn dataset_new_rejects_inconsistent_input() {
    let cases: Vec<(Result<Dataset, Error>, &str)> = vec![
        (
            Dataset::new(vec![0; 7], vec![0, 1], [1, 2, 2], 2, 1),
            "2 labels need 2 × 4 = 8 pixel bytes",
        ),
        (
            Dataset::new(vec![0; 4], vec![2], [1, 2, 2], 2, 1),
            "label 2 of image 0 is out of range for 2 classes",
        ),
        (
            Dataset::new(vec![0, 0, 0, 0, 0, 9], vec![0, 1], [1, 1, 3], 2, 8),
            "pixel 2 of image 1 is 9, above max_value 8",
        ),
        (
            Dataset::new(vec![], vec![], [1, 0, 2], 2, 1),
            "invalid image shape [1, 0, 2]",
        ),
        (
            Dataset::new(vec![], vec![], [1, 1, 1], 0, 1),
            "num_classes (0) and max_value (1) must be positive",
        ),
        (
            Dataset::new(vec![], vec![], [1, 1, 1], 2, 0),
            "num_classes (2) and max_value (0) must be positive",
        ),
    ];
    for (res, want) in cases {
        let err = res.expect_err(want);
        assert!(matches!(err, Error::Data(_)), "{err:?}");
        assert!(
            err.to_string().contains(want),
            "`{err}` should contain `{want}`"
        );
    }
}

#[test]
fn subset_picks_images_and_labels() {
    let d = data::digits();
    let s = d.subset(&[7, 7, 100]);
    assert_eq!(s.len(), 3);
    assert_eq!(s.image(0), d.image(7));
    assert_eq!(s.image(1), d.image(7));
    assert_eq!(s.image(2), d.image(100));
    assert_eq!(s.labels(), &[d.labels()[7], d.labels()[7], d.labels()[100]]);
    assert_eq!(
        (s.image_shape(), s.num_classes(), s.max_value()),
        ([1, 8, 8], 10, 16)
    );
}

#[test]
#[should_panic(expected = "image 1797 is out of range for a dataset of 1797")]
fn image_out_of_range_panics() {
    data::digits().image(1797);
}

// ---------------------------------------------------------------- split

#[test]
fn digits_split_is_1437_360_with_36_per_class_and_no_overlap() {
    let d = data::digits();
    let (train_idx, test_idx) = d
        .stratified_split_indices(360, data::DIGITS_SPLIT_SEED)
        .unwrap();
    assert_eq!((train_idx.len(), test_idx.len()), (1437, 360));
    let train_set: HashSet<usize> = train_idx.iter().copied().collect();
    let test_set: HashSet<usize> = test_idx.iter().copied().collect();
    assert_eq!(train_set.len(), 1437, "no repeats in train");
    assert_eq!(test_set.len(), 360, "no repeats in test");
    assert!(train_set.is_disjoint(&test_set));
    assert_eq!(train_set.union(&test_set).count(), 1797);
    assert!(train_idx.windows(2).all(|w| w[0] < w[1]) && test_idx.windows(2).all(|w| w[0] < w[1]));

    let (train, test) = data::digits_train_test();
    assert_eq!((train.len(), test.len()), (1437, 360));
    assert_eq!(test.class_counts(), vec![36; 10]);
    let want_train: Vec<usize> = DIGITS_CLASS_COUNTS.iter().map(|c| c - 36).collect();
    assert_eq!(train.class_counts(), want_train);
    // The datasets hold exactly the images and labels at those indices.
    for (k, &i) in test_idx.iter().enumerate() {
        assert_eq!((test.image(k), test.label(k)), (d.image(i), d.label(i)));
    }
    for (k, &i) in train_idx.iter().enumerate() {
        assert_eq!((train.image(k), train.label(k)), (d.image(i), d.label(i)));
    }
}

#[test]
fn split_is_deterministic_for_a_seed_and_varies_with_it() {
    let d = data::digits();
    let a = d.stratified_split_indices(360, 5).unwrap();
    let b = d.stratified_split_indices(360, 5).unwrap();
    let c = d.stratified_split_indices(360, 6).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.1, c.1);
    let (train5, test5) = d.stratified_split(360, 5).unwrap();
    assert_eq!(test5, d.subset(&a.1));
    assert_eq!(train5, d.subset(&a.0));
}

#[test]
fn split_spreads_a_remainder_over_the_first_classes() {
    let (_, test) = data::digits().stratified_split(365, 1).unwrap();
    assert_eq!(
        test.class_counts(),
        vec![37, 37, 37, 37, 37, 36, 36, 36, 36, 36]
    );
    let (train, test) = data::digits().stratified_split(0, 1).unwrap();
    assert_eq!((train.len(), test.len()), (1797, 0));
}

#[test]
fn split_errors_name_the_problem() {
    let d = data::digits();
    let err = d.stratified_split(1798, 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "stratified_split: test_count 1798 exceeds the 1797 images"
    );
    // 10 × 175 = 1750: class 8 has only 174 images.
    let err = d.stratified_split(1750, 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "stratified_split: class 8 needs 175 test images but has only 174"
    );
}

// ---------------------------------------------------------------- normalisation & batches

fn mean_std(t: &Tensor<f64>) -> (f64, f64) {
    let n = t.numel() as f64;
    let mean = t.data().iter().sum::<f64>() / n;
    let var = t.data().iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[test]
fn normalised_train_set_has_mean_0_std_1() {
    let (train, test) = data::digits_train_test();
    let norm = train.normalization();
    let x = train.to_tensor::<f64>(norm);
    assert_eq!(&x.shape()[..], &[1437, 1, 8, 8]);
    let (m, s) = mean_std(&x);
    assert!(m.abs() < 1e-12, "mean {m}");
    assert!((s - 1.0).abs() < 1e-12, "std {s}");
    // The test set uses the training statistics: close to, but not exactly, 0 and 1.
    let (m, s) = mean_std(&test.to_tensor::<f64>(norm));
    assert!(
        m.abs() < 0.05 && (s - 1.0).abs() < 0.05,
        "test mean {m}, std {s}"
    );
    assert_ne!(test.normalization(), norm);
    // The statistics are those of v/16 over all pixels.
    let px: Vec<f64> = train.images().iter().map(|&v| v as f64 / 16.0).collect();
    let mean = px.iter().sum::<f64>() / px.len() as f64;
    assert!((norm.mean - mean).abs() < 1e-12);
}

#[test]
fn normalisation_formula_and_identity() {
    let d = data::digits();
    let x = d.to_tensor::<f32>(Normalize::IDENTITY);
    assert!(x.data().iter().all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(x.get(&[0, 0, 0, 3]), 13.0 / 16.0);
    let n = Normalize {
        mean: 0.25,
        std: 0.5,
    };
    let y = d.to_tensor::<f32>(n);
    assert_eq!(y.get(&[0, 0, 0, 3]), ((13.0 / 16.0 - 0.25) / 0.5) as f32);
    // f32 and f64 agree up to rounding.
    let z = d.to_tensor::<f64>(n).cast::<f32>();
    assert_eq!(y.data(), z.data());
}

#[test]
fn constant_dataset_normalises_with_std_1() {
    let d = Dataset::new(vec![3; 8], vec![0, 1], [1, 2, 2], 2, 4).unwrap();
    assert_eq!(
        d.normalization(),
        Normalize {
            mean: 0.75,
            std: 1.0
        }
    );
    let empty = Dataset::new(vec![], vec![], [1, 2, 2], 2, 4).unwrap();
    assert_eq!(empty.normalization(), Normalize::IDENTITY);
    assert_eq!(empty.batches::<f32>(4, Normalize::IDENTITY).count(), 0);
    assert_eq!(
        &empty.to_tensor::<f32>(Normalize::IDENTITY).shape()[..],
        &[0, 1, 2, 2]
    );
}

#[test]
fn batches_cover_the_dataset_once_with_a_partial_last_batch() {
    let (train, _) = data::digits_train_test();
    let norm = train.normalization();
    let batches: Vec<_> = train.batches::<f32>(64, norm).collect();
    assert_eq!(batches.len(), 23); // 22 × 64 + 29 = 1437
    assert_eq!(train.batches::<f32>(64, norm).len(), 23);
    for b in &batches[..22] {
        assert_eq!(&b.images.shape()[..], &[64, 1, 8, 8]);
        assert_eq!(b.len(), 64);
    }
    assert_eq!(&batches[22].images.shape()[..], &[29, 1, 8, 8]);
    let order: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(order, (0..1437).collect::<Vec<_>>());
    let whole = train.to_tensor::<f32>(norm);
    let cat: Vec<f32> = batches
        .iter()
        .flat_map(|b| b.images.data().to_vec())
        .collect();
    assert_eq!(cat, whole.data());
    for b in &batches {
        for (&i, &l) in b.indices.iter().zip(&b.labels) {
            assert_eq!(l, train.label(i));
        }
    }
    // Exact division: no empty trailing batch.
    assert_eq!(
        train
            .batches::<f64>(479, norm)
            .map(|b| b.len())
            .collect::<Vec<_>>(),
        [479; 3]
    );
    assert_eq!(
        train
            .batches::<f64>(5000, norm)
            .map(|b| b.len())
            .collect::<Vec<_>>(),
        [1437]
    );
}

#[test]
fn shuffled_batches_are_a_seeded_permutation() {
    let (train, _) = data::digits_train_test();
    let norm = train.normalization();
    let run = |seed| -> Vec<_> {
        train
            .shuffled_batches::<f32>(100, norm, &mut rng(seed))
            .collect()
    };
    let (a, b, c) = (run(1), run(1), run(2));
    let idx = |bs: &[tapegrad::data::Batch<f32>]| -> Vec<usize> {
        bs.iter().flat_map(|b| b.indices.clone()).collect()
    };
    assert_eq!(idx(&a), idx(&b));
    assert_ne!(idx(&a), idx(&c));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.images.data(), y.images.data());
        assert_eq!(x.labels, y.labels);
    }
    let mut sorted = idx(&a);
    assert_ne!(sorted, (0..1437).collect::<Vec<_>>(), "actually shuffled");
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1437).collect::<Vec<_>>(), "a permutation");
    assert_eq!(a.len(), 15);
    assert_eq!(a[14].len(), 37);
    // Each batch holds the normalised images at its indices.
    let b0 = &a[0];
    let again = train.batch::<f32>(&b0.indices, norm);
    assert_eq!(again.images.data(), b0.images.data());
    assert_eq!(again.labels, b0.labels);
    // Successive epochs from one RNG differ.
    let mut r = rng(3);
    let e1 = idx(&train
        .shuffled_batches::<f32>(100, norm, &mut r)
        .collect::<Vec<_>>());
    let e2 = idx(&train
        .shuffled_batches::<f32>(100, norm, &mut r)
        .collect::<Vec<_>>());
    assert_ne!(e1, e2);
}

#[test]
#[should_panic(expected = "batch_size must be at least 1")]
fn zero_batch_size_panics() {
    let d = data::digits();
    let _ = d.batches::<f32>(0, Normalize::IDENTITY);
}

// ---------------------------------------------------------------- IDX

fn idx_images(count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for d in [count, rows, cols] {
        b.extend(d.to_be_bytes());
    }
    b.extend_from_slice(pixels);
    b
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 1];
    b.extend((labels.len() as u32).to_be_bytes());
    b.extend_from_slice(labels);
    b
}

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("tapegrad-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn idx_round_trip_from_bytes() {
    let pixels: Vec<u8> = (0..3 * 4 * 5).map(|v| (v * 7 % 256) as u8).collect();
    let im = mnist::parse_idx_images(&idx_images(3, 4, 5, &pixels)).unwrap();
    assert_eq!((im.count, im.rows, im.cols), (3, 4, 5));
    assert_eq!(im.pixels, pixels);
    let labels = mnist::parse_idx_labels(&idx_labels(&[9, 0, 4])).unwrap();
    assert_eq!(labels, vec![9, 0, 4]);
    let d = mnist::to_dataset(im, labels).unwrap();
    assert_eq!(
        (d.len(), d.image_shape(), d.num_classes(), d.max_value()),
        (3, [1, 4, 5], 10, 255)
    );
    assert_eq!(d.image(2), &pixels[40..60]);
    assert_eq!(d.label(0), 9);
    // Empty files are valid.
    assert_eq!(
        mnist::parse_idx_images(&idx_images(0, 28, 28, &[]))
            .unwrap()
            .count,
        0
    );
    assert_eq!(
        mnist::parse_idx_labels(&idx_labels(&[])).unwrap(),
        Vec::<u8>::new()
    );
    // MNIST-like normalisation uses v/255.
    let x = d.to_tensor::<f64>(Normalize::IDENTITY);
    assert_eq!(x.get(&[0, 0, 0, 1]), 7.0 / 255.0);
}

#[test]
fn idx_round_trip_through_files() {
    let dir = TempDir::new("mnist-ok");
    let files = [
        idx_images(4, 2, 3, &[10; 24]),
        idx_labels(&[1, 2, 3, 4]),
        idx_images(2, 2, 3, &[200; 12]),
        idx_labels(&[5, 6]),
    ];
    for (name, bytes) in mnist::FILE_NAMES.iter().zip(&files) {
        std::fs::write(dir.0.join(name), bytes).unwrap();
    }
    let (train, test) = mnist::load(&dir.0).unwrap();
    assert_eq!((train.len(), test.len()), (4, 2));
    assert_eq!(train.labels(), &[1, 2, 3, 4]);
    assert_eq!(test.image(1), &[200; 6]);
    assert_eq!(
        mnist::load_idx_labels(dir.0.join(mnist::FILE_NAMES[3])).unwrap(),
        vec![5, 6]
    );
}

#[test]
fn idx_image_parse_errors_say_what_was_expected_and_found() {
    let ok = idx_images(3, 2, 2, &[0; 12]);
    let with = |i: usize, v: u8| {
        let mut b = ok.clone();
        b[i] = v;
        b
    };
    let table: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "label file given as images",
            idx_labels(&[1, 2]),
            &["expected 0x00000803, found 0x00000801", "label file"],
        ),
        (
            "wrong element type",
            with(2, 0x0d),
            &["expected 0x00000803, found 0x00000d03", "element type 0x0d"],
        ),
        (
            "wrong rank",
            with(3, 2),
            &[
                "expected 0x00000803, found 0x00000802",
                "2 dimensions, expected 3",
            ],
        ),
        (
            "not IDX",
            b"P5\n28 28\n255\n".to_vec(),
            &["expected 0x00000803, found 0x50350a32", "not an IDX file"],
        ),
        (
            "gzip",
            vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0],
            &["found 0x1f8b0800", "gzip"],
        ),
        (
            "too short for magic",
            vec![0, 0, 8],
            &["only 3 bytes, too short for the 4-byte magic number"],
        ),
        (
            "header truncated",
            ok[..10].to_vec(),
            &["header truncated", "header is 16 bytes, the file has 10"],
        ),
        (
            "zero rows",
            idx_images(3, 0, 2, &[]),
            &["images of 0×2 pixels have no pixels"],
        ),
        (
            "truncated data",
            ok[..ok.len() - 1].to_vec(),
            &[
                "truncated",
                "3 images of 2×2 = 12 bytes of data, but only 11 bytes follow",
            ],
        ),
        (
            "trailing data",
            [ok.clone(), vec![0, 0]].concat(),
            &["2 unexpected bytes after the 12 bytes"],
        ),
        (
            "count too large",
            idx_images(u32::MAX, 28, 28, &[0; 10]),
            &["4294967295 images of 28×28 = 3367254359280 bytes of data, but only 10 bytes follow"],
        ),
        (
            "size overflows 64 bits",
            idx_images(u32::MAX, u32::MAX, u32::MAX, &[]),
            &["4294967295 images of 4294967295×4294967295 = 79228162458924105385300197375 bytes"],
        ),
    ];
    for (case, bytes, wants) in table {
        let err = mnist::parse_idx_images(&bytes).expect_err(case);
        assert!(matches!(err, Error::Data(_)), "{case}: {err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with("IDX images: "), "{case}: {msg}");
        for want in wants {
            assert!(
                msg.contains(want),
                "{case}: `{msg}` should contain `{want}`"
            );
        }
    }
}

#[test]
fn idx_label_parse_errors_say_what_was_expected_and_found() {
    let table: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "image file given as labels",
            idx_images(1, 1, 1, &[0]),
            &["expected 0x00000801, found 0x00000803", "image file"],
        ),
        (
            "wrong rank",
            vec![0, 0, 8, 2, 0, 0, 0, 1, 0, 0, 0, 1, 0],
            &[
                "expected 0x00000801, found 0x00000802",
                "2 dimensions, expected 1",
            ],
        ),
        (
            "header truncated",
            vec![0, 0, 8, 1, 0, 0],
            &["header is 8 bytes, the file has 6"],
        ),
        (
            "truncated",
            idx_labels(&[1, 2, 3])[..10].to_vec(),
            &["3 labels = 3 bytes of data, but only 2 bytes follow"],
        ),
        (
            "label out of range",
            idx_labels(&[1, 9, 10, 3]),
            &["label 10 at index 2 is out of range (MNIST labels are 0..=9)"],
        ),
        (
            "label 255",
            idx_labels(&[255]),
            &["label 255 at index 0 is out of range"],
        ),
    ];
    for (case, bytes, wants) in table {
        let err = mnist::parse_idx_labels(&bytes).expect_err(case);
        assert!(matches!(err, Error::Data(_)), "{case}: {err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with("IDX labels: "), "{case}: {msg}");
        for want in wants {
            assert!(
                msg.contains(want),
                "{case}: `{msg}` should contain `{want}`"
            );
        }
    }
}

#[test]
fn idx_count_mismatch_is_an_error() {
    let im = mnist::parse_idx_images(&idx_images(3, 1, 1, &[0, 1, 2])).unwrap();
    let err = mnist::to_dataset(im, vec![0, 1]).unwrap_err();
    assert_eq!(err.to_string(), "MNIST: 3 images but 2 labels");
}

/// Writes the four MNIST files (a valid set, then `edit` applied) into a fresh directory.
fn mnist_dir(tag: &str, edit: impl FnOnce(&mut [Vec<u8>; 4])) -> TempDir {
    let dir = TempDir::new(tag);
    let mut files = [
        idx_images(2, 2, 2, &[1; 8]),
        idx_labels(&[0, 1]),
        idx_images(1, 2, 2, &[2; 4]),
        idx_labels(&[7]),
    ];
    edit(&mut files);
    for (name, bytes) in mnist::FILE_NAMES.iter().zip(&files) {
        std::fs::write(dir.0.join(name), bytes).unwrap();
    }
    dir
}

#[test]
fn mnist_load_errors_name_the_file() {
    // Missing file: Error::Io with the path.
    let dir = mnist_dir("mnist-missing", |_| {});
    let path = dir.0.join("t10k-labels-idx1-ubyte");
    std::fs::remove_file(&path).unwrap();
    match mnist::load(&dir.0).unwrap_err() {
        Error::Io { path: p, source } => {
            assert_eq!(p, path.display().to_string());
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            assert!(!source.to_string().contains("gunzip"));
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }

    // Missing file with a .gz next to it: the error says to decompress it.
    std::fs::write(dir.0.join("t10k-labels-idx1-ubyte.gz"), [0x1f, 0x8b]).unwrap();
    let err = mnist::load(&dir.0).unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    let msg = err.to_string();
    assert!(msg.starts_with(&path.display().to_string()), "{msg}");
    assert!(msg.contains("t10k-labels-idx1-ubyte.gz exists"), "{msg}");
    assert!(
        msg.contains("only uncompressed IDX files are read: run `gunzip"),
        "{msg}"
    );

    // Bad contents: the message starts with the file's path.
    let dir = mnist_dir("mnist-bad-label", |f| f[1] = idx_labels(&[0, 11]));
    let err = mnist::load(&dir.0).unwrap_err().to_string();
    let p = dir.0.join("train-labels-idx1-ubyte").display().to_string();
    assert_eq!(
        err,
        format!("{p}: IDX labels: label 11 at index 1 is out of range (MNIST labels are 0..=9)")
    );

    // Image/label count mismatch names both files.
    let dir = mnist_dir("mnist-count", |f| f[3] = idx_labels(&[7, 7]));
    let err = mnist::load(&dir.0).unwrap_err().to_string();
    assert!(err.starts_with("MNIST test: "), "{err}");
    assert!(
        err.contains("t10k-images-idx3-ubyte has 1 images but"),
        "{err}"
    );
    assert!(err.contains("t10k-labels-idx1-ubyte has 2 labels"), "{err}");

    // Train and test images of different sizes.
    let dir = mnist_dir("mnist-dims", |f| f[2] = idx_images(1, 1, 4, &[2; 4]));
    let err = mnist::load(&dir.0).unwrap_err().to_string();
    assert_eq!(
        err,
        "MNIST: train images are [1, 2, 2] but test images are [1, 1, 4]"
    );

    // Truncated image file.
    let dir = mnist_dir("mnist-trunc", |f| {
        f[0].pop();
    });
    let err = mnist::load(&dir.0).unwrap_err().to_string();
    assert!(
        err.contains("train-images-idx3-ubyte: IDX images: truncated"),
        "{err}"
    );
    assert!(
        err.contains("2 images of 2×2 = 8 bytes of data, but only 7 bytes follow"),
        "{err}"
    );
}

// ---------------------------------------------------------------- augmentation

mod augmentation {
    use super::rng;
    use rand::RngExt;
    use tapegrad::Tensor;
    use tapegrad::data::{self, augment};

    /// A batch with no zero pixel (values 1..), so zero fill is recognisable.
    fn batch(n: usize, c: usize, h: usize, w: usize) -> Tensor<f64> {
        let v: Vec<f64> = (0..n * c * h * w).map(|i| 1.0 + i as f64).collect();
        Tensor::from_vec(v, [n, c, h, w]).unwrap()
    }

    /// The naive definition: pixel (y − dy, x − dx) of the source, or 0 outside.
    fn shifted_naive(x: &Tensor<f64>, offsets: &[(isize, isize)]) -> Tensor<f64> {
        let s = x.shape().to_vec();
        let (h, w) = (s[2] as isize, s[3] as isize);
        let mut out = Tensor::zeros(x.shape().clone());
        for (i, &(dy, dx)) in offsets.iter().enumerate() {
            for c in 0..s[1] {
                for y in 0..h {
                    for xx in 0..w {
                        let (sy, sx) = (y - dy, xx - dx);
                        if (0..h).contains(&sy) && (0..w).contains(&sx) {
                            let v = x.get(&[i, c, sy as usize, sx as usize]);
                            out.set(&[i, c, y as usize, xx as usize], v);
                        }
                    }
                }
            }
        }
        out
    }

    /// The naive random crop: zero-pad by `p`, then cut the window at (top, left),
    /// drawing top then left per image from `0..=2p`.
    fn crop_naive(x: &Tensor<f64>, p: usize, seed: u64) -> Tensor<f64> {
        let s = x.shape().to_vec();
        let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
        let mut r = rng(seed);
        let mut out = Tensor::zeros(x.shape().clone());
        for i in 0..n {
            let top = r.random_range(0..=2 * p);
            let left = r.random_range(0..=2 * p);
            for ch in 0..c {
                let mut padded = vec![vec![0.0; w + 2 * p]; h + 2 * p];
                for y in 0..h {
                    for xx in 0..w {
                        padded[y + p][xx + p] = x.get(&[i, ch, y, xx]);
                    }
                }
                for y in 0..h {
                    for xx in 0..w {
                        out.set(&[i, ch, y, xx], padded[top + y][left + xx]);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn random_crop_is_a_crop_of_the_zero_padded_image() {
        for (shape, pad) in [
            ([6, 2, 5, 7], 2),
            ([3, 1, 8, 8], 4),
            ([4, 3, 3, 3], 5),
            ([2, 1, 4, 4], 0),
        ] {
            let x = batch(shape[0], shape[1], shape[2], shape[3]);
            let y = augment::random_crop(&x, pad, &mut rng(11));
            assert_eq!(y.shape(), x.shape());
            assert_eq!(
                y.data(),
                crop_naive(&x, pad, 11).data(),
                "{shape:?} pad {pad}"
            );
        }
    }

    #[test]
    fn random_shift_moves_pixels_by_the_drawn_offsets() {
        let x = batch(10, 2, 6, 5);
        let k = 2;
        let y = augment::random_shift(&x, k, &mut rng(5));
        let mut r = rng(5);
        let offsets: Vec<(isize, isize)> = (0..10)
            .map(|_| {
                let dy = r.random_range(0..=2 * k) as isize - k as isize;
                let dx = r.random_range(0..=2 * k) as isize - k as isize;
                (dy, dx)
            })
            .collect();
        assert!(offsets.iter().all(|&(a, b)| a.abs() <= 2 && b.abs() <= 2));
        assert!(offsets.iter().any(|&(a, b)| a != 0 || b != 0));
        assert_eq!(y.data(), shifted_naive(&x, &offsets).data());
    }

    #[test]
    fn translate_matches_the_definition_and_fills_with_zeros() {
        let x = batch(7, 2, 4, 5);
        let offsets = [(0, 0), (1, 2), (-1, -3), (3, -4), (-4, 0), (0, 5), (9, -9)];
        let y = augment::translate(&x, &offsets);
        assert_eq!(y.data(), shifted_naive(&x, &offsets).data());
        // Exactly the uncovered pixels are zero: |dy|·W + |dx|·H − |dy|·|dx| per channel.
        for (i, &(dy, dx)) in offsets.iter().enumerate() {
            let (dy, dx) = (dy.unsigned_abs().min(4), dx.unsigned_abs().min(5));
            let zeros = y.data()[i * 40..(i + 1) * 40]
                .iter()
                .filter(|&&v| v == 0.0)
                .count();
            assert_eq!(zeros, 2 * (dy * 5 + dx * 4 - dy * dx), "image {i}");
        }
        // Padding regions of a crop are zero: an all-ones image keeps exactly its ones.
        let ones = Tensor::<f32>::ones([50, 1, 6, 6]);
        let y = augment::random_crop(&ones, 3, &mut rng(2));
        assert!(y.data().iter().all(|&v| v == 0.0 || v == 1.0));
        assert!(y.data().contains(&0.0));
    }

    #[test]
    fn flips_mirror_rows_and_twice_is_identity() {
        let x = batch(4, 3, 2, 5);
        let which = [true, false, true, true];
        let y = augment::flip_horizontal(&x, &which);
        for (i, &f) in which.iter().enumerate() {
            for c in 0..3 {
                for r in 0..2 {
                    for col in 0..5 {
                        let src = if f { 4 - col } else { col };
                        assert_eq!(y.get(&[i, c, r, col]), x.get(&[i, c, r, src]));
                    }
                }
            }
        }
        assert_eq!(augment::flip_horizontal(&y, &which).data(), x.data());
        // The same seed draws the same flips, so flipping twice with it is the identity.
        let once = augment::random_flip(&x, 0.5, &mut rng(9));
        assert_eq!(
            augment::random_flip(&once, 0.5, &mut rng(9)).data(),
            x.data()
        );
        // About half of a large batch is flipped.
        let big = batch(1000, 1, 1, 2);
        let f = augment::random_flip(&big, 0.5, &mut rng(1));
        let flipped = f.data().chunks(2).filter(|p| p[0] > p[1]).count();
        assert!((420..580).contains(&flipped), "{flipped}");
    }

    #[test]
    fn a_seed_gives_the_same_augmentation() {
        let d = data::digits();
        let x = d
            .batch::<f32>(&(0..64).collect::<Vec<_>>(), d.normalization())
            .images;
        let run = |seed| {
            let mut r = rng(seed);
            let y = augment::random_crop(&x, 2, &mut r);
            let y = augment::random_shift(&y, 1, &mut r);
            augment::random_flip(&y, 0.5, &mut r)
        };
        assert_eq!(run(3).data(), run(3).data());
        assert_ne!(run(3).data(), run(4).data());
        assert_eq!(run(3).shape(), x.shape());
    }

    #[test]
    #[should_panic(
        expected = "random_crop: expected a batch of images [N, C, H, W], got shape [8, 8]"
    )]
    fn augmentation_needs_a_4d_batch() {
        augment::random_crop(&Tensor::<f32>::zeros([8, 8]), 1, &mut rng(0));
    }

    #[test]
    #[should_panic(expected = "translate: 1 offsets for a batch of 2 images")]
    fn translate_needs_one_offset_per_image() {
        augment::translate(&Tensor::<f32>::zeros([2, 1, 3, 3]), &[(0, 0)]);
    }

    #[test]
    fn targets_are_the_labels_as_usize() {
        let (train, _) = data::digits_train_test();
        let t = train.targets();
        assert_eq!(t.len(), train.len());
        assert!(t.iter().zip(train.labels()).all(|(&a, &b)| a == b as usize));
        assert!((0..train.len()).all(|i| t[i] == train.label(i)));
    }
}
