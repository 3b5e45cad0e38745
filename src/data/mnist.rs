//! MNIST in its original IDX format (`train-images-idx3-ubyte` & co., uncompressed).
//!
//! IDX files are big-endian: a 4-byte magic number `0x00 0x00 <type> <rank>` (type `0x08`
//! = unsigned byte), then one `u32` per dimension, then the data. MNIST images are rank 3
//! (`0x00000803`: count, rows, cols), labels rank 1 (`0x00000801`: count).
//!
//! Every malformed input gives an `Err` that says what was expected and what was found;
//! nothing here panics on bad data. The dataset is not bundled: download the four files
//! (e.g. from a mirror of Yann LeCun's MNIST page) and `gunzip` them.
//!
//! ```
//! use tapegrad::data::mnist;
//! let dir = std::env::temp_dir().join("tapegrad-doc-mnist-missing");
//! let err = mnist::load(&dir).unwrap_err();
//! assert!(err.to_string().contains("train-images-idx3-ubyte"));
//! ```

use super::Dataset;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Magic number of an IDX file of unsigned bytes with 3 dimensions (MNIST images).
///
/// ```
/// assert_eq!(tapegrad::data::mnist::IMAGES_MAGIC.to_be_bytes(), [0, 0, 8, 3]);
/// ```
pub const IMAGES_MAGIC: u32 = 0x0000_0803;

/// Magic number of an IDX file of unsigned bytes with 1 dimension (MNIST labels).
///
/// ```
/// assert_eq!(tapegrad::data::mnist::LABELS_MAGIC.to_be_bytes(), [0, 0, 8, 1]);
/// ```
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// File names [`load`] reads: `[train images, train labels, test images, test labels]`.
///
/// ```
/// assert_eq!(tapegrad::data::mnist::FILE_NAMES[2], "t10k-images-idx3-ubyte");
/// ```
pub const FILE_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Number of MNIST classes; [`parse_idx_labels`] rejects labels `≥ NUM_CLASSES`.
///
/// ```
/// assert_eq!(tapegrad::data::mnist::NUM_CLASSES, 10);
/// ```
pub const NUM_CLASSES: usize = 10;

/// The contents of an IDX image file: `count` images of `rows × cols` bytes, row-major.
///
/// ```
/// let bytes = [0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 7, 9];
/// let im = tapegrad::data::mnist::parse_idx_images(&bytes).unwrap();
/// assert_eq!((im.count, im.rows, im.cols), (1, 1, 2));
/// assert_eq!(im.pixels, vec![7, 9]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows per image (28 for MNIST).
    pub rows: usize,
    /// Columns per image (28 for MNIST).
    pub cols: usize,
    /// `count × rows × cols` pixel bytes.
    pub pixels: Vec<u8>,
}

fn data_err(what: &str, msg: String) -> Error {
    Error::Data(format!("IDX {what}: {msg}"))
}

fn read_u32(bytes: &[u8], at: usize) -> usize {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
}

/// Checks the magic number and the header length; returns the dimensions.
fn parse_header(bytes: &[u8], what: &str, expected: u32) -> Result<Vec<usize>> {
    let rank = (expected & 0xff) as usize;
    if bytes.len() < 4 {
        return Err(data_err(
            what,
            format!(
                "file is only {} bytes, too short for the 4-byte magic number (expected {expected:#010x})",
                bytes.len()
            ),
        ));
    }
    let found = read_u32(bytes, 0) as u32;
    if found != expected {
        let why = if bytes[..2] == [0x1f, 0x8b] {
            "this is a gzip file: decompress it first".to_string()
        } else if bytes[..2] != [0, 0] {
            "not an IDX file".to_string()
        } else if bytes[2] != 0x08 {
            format!(
                "element type {:#04x}, but only 0x08 (unsigned byte) is supported",
                bytes[2]
            )
        } else if found == IMAGES_MAGIC {
            "3 dimensions: this looks like an image file, not a label file".to_string()
        } else if found == LABELS_MAGIC {
            "1 dimension: this looks like a label file, not an image file".to_string()
        } else {
            format!("{} dimensions, expected {rank}", bytes[3])
        };
        return Err(data_err(
            what,
            format!("bad magic number: expected {expected:#010x}, found {found:#010x} ({why})"),
        ));
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(data_err(
            what,
            format!(
                "header truncated: a rank-{rank} IDX header is {header} bytes, the file has {}",
                bytes.len()
            ),
        ));
    }
    Ok((0..rank).map(|d| read_u32(bytes, 4 + 4 * d)).collect())
}

/// Checks that exactly `expected` data bytes follow a `header`-byte header.
fn check_len(
    bytes: &[u8],
    what: &str,
    header: usize,
    expected: u128,
    promised: &str,
) -> Result<()> {
    let actual = (bytes.len() - header) as u128;
    if actual < expected {
        return Err(data_err(
            what,
            format!(
                "truncated: the header promises {promised} = {expected} bytes of data, but only {actual} bytes follow the {header}-byte header"
            ),
        ));
    }
    if actual > expected {
        return Err(data_err(
            what,
            format!(
                "{} unexpected bytes after the {expected} bytes of data the header promises ({promised})",
                actual - expected
            ),
        ));
    }
    Ok(())
}

/// Parses an IDX image file (magic `0x00000803`) held in memory.
///
/// Errors ([`Error::Data`]) on a wrong magic number (the message gives the expected and
/// the found value), a short header, zero-sized images, or a data section shorter or
/// longer than `count × rows × cols` bytes.
///
/// ```
/// use tapegrad::data::mnist::parse_idx_images;
/// let mut bytes = vec![0, 0, 8, 3];
/// for d in [2u32, 2, 2] { bytes.extend(d.to_be_bytes()); }
/// bytes.extend([0, 1, 2, 3, 4, 5, 6, 7]);
/// assert_eq!(parse_idx_images(&bytes).unwrap().pixels[5], 5);
/// let err = parse_idx_images(&bytes[..20]).unwrap_err();
/// assert!(err.to_string().contains("truncated"));
/// ```
pub fn parse_idx_images(bytes: &[u8]) -> Result<IdxImages> {
    let what = "images";
    let dims = parse_header(bytes, what, IMAGES_MAGIC)?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    if rows == 0 || cols == 0 {
        return Err(data_err(
            what,
            format!("images of {rows}×{cols} pixels have no pixels"),
        ));
    }
    let expected = count as u128 * rows as u128 * cols as u128; // < 2^96: cannot overflow
    check_len(
        bytes,
        what,
        16,
        expected,
        &format!("{count} images of {rows}×{cols}"),
    )?;
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels: bytes[16..].to_vec(),
    })
}

/// Parses an IDX label file (magic `0x00000801`) held in memory.
///
/// Errors ([`Error::Data`]) on a wrong magic number, a short header, a data section
/// shorter or longer than the label count, or a label `≥ 10` (naming its index).
///
/// ```
/// use tapegrad::data::mnist::parse_idx_labels;
/// let bytes = [0, 0, 8, 1, 0, 0, 0, 3, 7, 0, 9];
/// assert_eq!(parse_idx_labels(&bytes).unwrap(), vec![7, 0, 9]);
/// let bad = [0, 0, 8, 1, 0, 0, 0, 1, 10];
/// assert!(parse_idx_labels(&bad).unwrap_err().to_string().contains("out of range"));
/// ```
pub fn parse_idx_labels(bytes: &[u8]) -> Result<Vec<u8>> {
    let what = "labels";
    let count = parse_header(bytes, what, LABELS_MAGIC)?[0];
    check_len(bytes, what, 8, count as u128, &format!("{count} labels"))?;
    let labels = &bytes[8..];
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| l as usize >= NUM_CLASSES)
    {
        return Err(data_err(
            what,
            format!("label {l} at index {i} is out of range (MNIST labels are 0..=9)"),
        ));
    }
    Ok(labels.to_vec())
}

/// Pairs parsed images with their labels into a [`Dataset`] (`[1, rows, cols]` images,
/// pixels `0..=255`, 10 classes). Errors if the counts differ.
///
/// ```
/// use tapegrad::data::mnist;
/// let im = mnist::parse_idx_images(&[0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 200]).unwrap();
/// let d = mnist::to_dataset(im.clone(), vec![4]).unwrap();
/// assert_eq!((d.len(), d.label(0), d.max_value()), (1, 4, 255));
/// let err = mnist::to_dataset(im, vec![4, 5]).unwrap_err();
/// assert_eq!(err.to_string(), "MNIST: 1 images but 2 labels");
/// ```
pub fn to_dataset(images: IdxImages, labels: Vec<u8>) -> Result<Dataset> {
    if images.count != labels.len() {
        return Err(Error::Data(format!(
            "MNIST: {} images but {} labels",
            images.count,
            labels.len()
        )));
    }
    Dataset::new(
        images.pixels,
        labels,
        [1, images.rows, images.cols],
        NUM_CLASSES,
        255,
    )
}

/// Reads a whole file; a missing file is an [`Error::Io`] with the path, which also says
/// so if a gzip-compressed `<name>.gz` sits next to it.
fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        let mut gz = path.as_os_str().to_owned();
        gz.push(".gz");
        let gz = PathBuf::from(gz);
        let source = if e.kind() == std::io::ErrorKind::NotFound && gz.is_file() {
            std::io::Error::new(
                e.kind(),
                format!(
                    "{e}; {} exists, but only uncompressed IDX files are read: run `gunzip {}` first",
                    gz.display(),
                    gz.display()
                ),
            )
        } else {
            e
        };
        Error::Io { path: path.display().to_string(), source }
    })
}

/// Prefixes a parse error with the file it came from.
fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::Data(m) => Error::Data(format!("{}: {m}", path.display())),
        other => other,
    }
}

/// Reads and parses an IDX image file (see [`parse_idx_images`]); format errors are
/// prefixed with the path, a missing or unreadable file is an [`Error::Io`].
///
/// ```
/// use tapegrad::data::mnist;
/// let path = std::env::temp_dir().join("tapegrad-doc-images-idx3-ubyte");
/// std::fs::write(&path, [0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 42]).unwrap();
/// assert_eq!(mnist::load_idx_images(&path).unwrap().pixels, vec![42]);
/// std::fs::remove_file(&path).unwrap();
/// assert!(matches!(mnist::load_idx_images(&path), Err(tapegrad::Error::Io { .. })));
/// ```
pub fn load_idx_images(path: impl AsRef<Path>) -> Result<IdxImages> {
    let path = path.as_ref();
    parse_idx_images(&read(path)?).map_err(|e| in_file(path, e))
}

/// Reads and parses an IDX label file (see [`parse_idx_labels`]); format errors are
/// prefixed with the path, a missing or unreadable file is an [`Error::Io`].
///
/// ```
/// use tapegrad::data::mnist;
/// let path = std::env::temp_dir().join("tapegrad-doc-labels-idx1-ubyte");
/// std::fs::write(&path, [0, 0, 8, 1, 0, 0, 0, 2, 3, 1]).unwrap();
/// assert_eq!(mnist::load_idx_labels(&path).unwrap(), vec![3, 1]);
/// std::fs::remove_file(&path).unwrap();
/// ```
pub fn load_idx_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    parse_idx_labels(&read(path)?).map_err(|e| in_file(path, e))
}

fn load_split(dir: &Path, split: &str, images: &str, labels: &str) -> Result<Dataset> {
    let (ip, lp) = (dir.join(images), dir.join(labels));
    let im = load_idx_images(&ip)?;
    let lab = load_idx_labels(&lp)?;
    if im.count != lab.len() {
        return Err(Error::Data(format!(
            "MNIST {split}: {} has {} images but {} has {} labels",
            ip.display(),
            im.count,
            lp.display(),
            lab.len()
        )));
    }
    to_dataset(im, lab)
}

/// Loads MNIST from the four uncompressed IDX files in `dir` ([`FILE_NAMES`]): returns
/// `(train, test)` — 60,000 and 10,000 `[1, 28, 28]` images for the real data, pixels
/// `0..=255`, labels `0..=9`.
///
/// Errors: a missing file is an [`Error::Io`] naming it (and pointing at a `.gz` next to
/// it, if there is one — compressed files are not read); malformed contents, an
/// image/label count mismatch or train and test images of different sizes are
/// [`Error::Data`] naming the file.
///
/// With the real files, `load("data/mnist")?` gives 60,000 / 10,000 images and
/// `train.normalization()` ≈ `{ mean: 0.1307, std: 0.3081 }`. A tiny stand-in:
///
/// ```
/// use tapegrad::data::mnist;
/// let dir = std::env::temp_dir().join(format!("tapegrad-doc-mnist-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let images = |n: u8| {
///     let mut b = vec![0, 0, 8, 3, 0, 0, 0, n, 0, 0, 0, 2, 0, 0, 0, 2];
///     b.extend((0..4 * n).map(|v| v * 10));
///     b
/// };
/// let labels = |n: u8| [vec![0, 0, 8, 1, 0, 0, 0, n], (0..n).collect()].concat();
/// for (name, bytes) in mnist::FILE_NAMES.iter().zip([images(3), labels(3), images(2), labels(2)]) {
///     std::fs::write(dir.join(name), bytes).unwrap();
/// }
/// let (train, test) = mnist::load(&dir).unwrap();
/// assert_eq!((train.len(), test.len()), (3, 2));
/// assert_eq!(train.image_shape(), [1, 2, 2]);
/// assert_eq!(train.image(1), &[40, 50, 60, 70]);
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub fn load(dir: impl AsRef<Path>) -> Result<(Dataset, Dataset)> {
    let dir = dir.as_ref();
    let train = load_split(dir, "train", FILE_NAMES[0], FILE_NAMES[1])?;
    let test = load_split(dir, "test", FILE_NAMES[2], FILE_NAMES[3])?;
    if train.image_shape() != test.image_shape() {
        return Err(Error::Data(format!(
            "MNIST: train images are {:?} but test images are {:?}",
            train.image_shape(),
            test.image_shape()
        )));
    }
    Ok((train, test))
}
