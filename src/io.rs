//! Named tensors on disk in the [safetensors] format (the format of Hugging Face and
//! `safetensors.torch.save_file` / `load_file`).
//!
//! - `Tensor<f32>` is stored as dtype `F32`, `Tensor<f64>` as `F64`, little-endian,
//!   row-major, with the tensor's shape (a rank-0 tensor has shape `[]`). Values
//!   round-trip bit for bit, including `-0.0`, subnormals, infinities and NaN payloads.
//! - Loading returns the tensors **sorted by name** (for files written here that is also
//!   their order in the file).
//! - The element type is never converted: loading an `F64` file as `f32` (or any integer
//!   or half-precision dtype as either) is an error naming the tensor. To change
//!   precision, load with the stored type and use [`Tensor::cast`].
//! - [`to_safetensors_bytes`] writes no `__metadata__` entry and the loaders ignore one;
//!   [`to_safetensors_bytes_with_metadata`] and [`from_safetensors_bytes_with_metadata`]
//!   write and read its string key/value pairs (optimizer state files use them).
//!
//! Errors: a file that cannot be read or written is [`Error::Io`] with its path; a
//! malformed file (bad header, truncated, inconsistent offsets) is [`Error::Data`]; a
//! problem with one tensor (wrong dtype, duplicate or reserved name when saving) is
//! [`Error::Parameter`] naming it.
//!
//! ```
//! use tapegrad::{io, Tensor};
//! let w = Tensor::<f32>::arange(6).reshape([2, 3]);
//! let b = Tensor::<f32>::zeros([2]);
//! let path = std::env::temp_dir().join(format!("tapegrad-doc-io-{}.safetensors", std::process::id()));
//! io::save_safetensors(&path, &[("fc.weight", &w), ("fc.bias", &b)]).unwrap();
//! let loaded = io::load_safetensors::<f32>(&path).unwrap();
//! assert_eq!(loaded[0].0, "fc.bias"); // sorted by name
//! assert_eq!(loaded[1].1.data(), w.data());
//! assert!(io::load_safetensors::<f64>(&path).is_err()); // stored as F32
//! std::fs::remove_file(&path).unwrap();
//! ```
//!
//! [safetensors]: https://github.com/huggingface/safetensors

use crate::{Error, Float, Result, Tensor};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::any::{Any, TypeId};
use std::collections::HashSet;
use std::path::Path;

/// The safetensors dtype of `T`, or an error for a `Float` other than `f32`/`f64`.
fn dtype_of<T: Float>() -> Result<Dtype> {
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        Ok(Dtype::F32)
    } else if TypeId::of::<T>() == TypeId::of::<f64>() {
        Ok(Dtype::F64)
    } else {
        Err(Error::Data(format!(
            "safetensors: element type {} is not supported",
            T::NAME
        )))
    }
}

/// The elements of `t` as little-endian bytes, bit-exact (no float arithmetic).
fn le_bytes<T: Float>(t: &Tensor<T>) -> Option<Vec<u8>> {
    let any: &dyn Any = t;
    if let Some(t) = any.downcast_ref::<Tensor<f32>>() {
        Some(t.data().iter().flat_map(|v| v.to_le_bytes()).collect())
    } else {
        any.downcast_ref::<Tensor<f64>>()
            .map(|t| t.data().iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// A tensor of `T` decoded bit-exactly from little-endian bytes of `T`'s own dtype.
fn from_le_bytes<T: Float>(bytes: &[u8], shape: &[usize]) -> Result<Tensor<T>> {
    let boxed: Box<dyn Any> = if TypeId::of::<T>() == TypeId::of::<f32>() {
        let v = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("chunk of 4")))
            .collect();
        Box::new(Tensor::<f32>::from_vec(v, shape)?)
    } else {
        let v = bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")))
            .collect();
        Box::new(Tensor::<f64>::from_vec(v, shape)?)
    };
    Ok(*boxed
        .downcast::<Tensor<T>>()
        .expect("T is f32 or f64 (checked by dtype_of)"))
}

/// Serialises named tensors to the bytes of a safetensors file (see the [module
/// docs](self) for the format).
///
/// Errors with [`Error::Parameter`] naming the tensor if a name appears twice or is the
/// reserved `__metadata__`.
///
/// ```
/// use tapegrad::{io, Tensor};
/// let t = Tensor::from_vec(vec![1.5f64, -0.0], [2]).unwrap();
/// let bytes = io::to_safetensors_bytes(&[("t", &t)]).unwrap();
/// let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
/// let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
/// assert!(header.starts_with(r#"{"t":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}}"#));
/// assert!(io::to_safetensors_bytes(&[("t", &t), ("t", &t)]).is_err());
/// ```
pub fn to_safetensors_bytes<T: Float>(tensors: &[(&str, &Tensor<T>)]) -> Result<Vec<u8>> {
    to_safetensors_bytes_with_metadata(tensors, &[])
}

/// Like [`to_safetensors_bytes`], plus string key/value pairs in the file's
/// `__metadata__` header entry (none is written when `metadata` is empty).
///
/// ```
/// use tapegrad::{io, Tensor};
/// let t = Tensor::<f32>::ones([2]);
/// let bytes = io::to_safetensors_bytes_with_metadata(&[("t", &t)], &[("lr", "0.1")]).unwrap();
/// let (tensors, meta) = io::from_safetensors_bytes_with_metadata::<f32>(&bytes).unwrap();
/// assert_eq!(tensors[0].0, "t");
/// assert_eq!(meta, vec![("lr".to_string(), "0.1".to_string())]);
/// ```
pub fn to_safetensors_bytes_with_metadata<T: Float>(
    tensors: &[(&str, &Tensor<T>)],
    metadata: &[(&str, &str)],
) -> Result<Vec<u8>> {
    let entries: Vec<Entry<'_, T>> = tensors.iter().map(|&(n, t)| Entry::float(n, t)).collect();
    entries_to_safetensors_bytes(&entries, metadata)
}

/// One tensor to save, and how: in its own float dtype, or as whole numbers
/// in `I64` (PyTorch's dtype for counters such as `num_batches_tracked`).
pub(crate) struct Entry<'a, T: Float> {
    name: &'a str,
    tensor: &'a Tensor<T>,
    count: bool,
}

impl<'a, T: Float> Entry<'a, T> {
    /// Saved as `F32`/`F64`.
    pub(crate) fn float(name: &'a str, tensor: &'a Tensor<T>) -> Self {
        Entry {
            name,
            tensor,
            count: false,
        }
    }

    /// Saved as `I64` (each value rounded to the nearest whole number).
    pub(crate) fn count(name: &'a str, tensor: &'a Tensor<T>) -> Self {
        Entry {
            name,
            tensor,
            count: true,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        if self.count {
            let ints = self.tensor.data().iter().map(|v| v.to_f64().round() as i64);
            ints.flat_map(i64::to_le_bytes).collect()
        } else {
            le_bytes(self.tensor).expect("T is f32 or f64")
        }
    }
}

/// [`to_safetensors_bytes`] over [`Entry`]s.
pub(crate) fn entries_to_safetensors_bytes<T: Float>(
    tensors: &[Entry<'_, T>],
    metadata: &[(&str, &str)],
) -> Result<Vec<u8>> {
    let dtype = dtype_of::<T>()?;
    let mut seen = HashSet::new();
    for &Entry { name, .. } in tensors {
        if name == "__metadata__" {
            return Err(Error::Parameter {
                name: name.to_string(),
                message: "`__metadata__` is reserved by the safetensors format".to_string(),
            });
        }
        if !seen.insert(name) {
            return Err(Error::Parameter {
                name: name.to_string(),
                message: "appears more than once in the list of tensors to save".to_string(),
            });
        }
    }
    let buffers: Vec<Vec<u8>> = tensors.iter().map(Entry::bytes).collect();
    let mut views = Vec::with_capacity(tensors.len());
    for (e, buf) in tensors.iter().zip(&buffers) {
        let dtype = if e.count { Dtype::I64 } else { dtype };
        let view = TensorView::new(dtype, e.tensor.shape().to_vec(), buf).map_err(|err| {
            Error::Parameter {
                name: e.name.to_string(),
                message: format!("cannot be serialised: {err}"),
            }
        })?;
        views.push((e.name, view));
    }
    let metadata = (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|&(k, v)| (k.to_string(), v.to_string()))
            .collect()
    });
    safetensors::serialize(views, metadata)
        .map_err(|e| Error::Data(format!("safetensors: cannot serialise: {e}")))
}

/// Parses the bytes of a safetensors file into named tensors of `T`, sorted by name.
///
/// Errors: [`Error::Data`] if the bytes are not a valid safetensors file (bad or truncated
/// header, offsets that do not match the shapes, missing or extra data);
/// [`Error::Parameter`] naming the first tensor (by name) whose dtype is not `T`'s, or
/// whose shape has non-zero dimensions multiplying past `usize` (an empty tensor such
/// as `[0, 2⁶³, 4]` holds no data, so only this check rejects it).
///
/// ```
/// use tapegrad::{io, Tensor};
/// let t = Tensor::<f32>::arange(4);
/// let bytes = io::to_safetensors_bytes(&[("x", &t)]).unwrap();
/// let back = io::from_safetensors_bytes::<f32>(&bytes).unwrap();
/// assert_eq!(back[0].0, "x");
/// assert_eq!(back[0].1.data(), t.data());
/// assert!(io::from_safetensors_bytes::<f32>(&bytes[..bytes.len() - 1]).is_err());
/// let err = io::from_safetensors_bytes::<f64>(&bytes).unwrap_err();
/// assert!(err.to_string().starts_with("parameter `x`: stored as F32"));
/// ```
pub fn from_safetensors_bytes<T: Float>(bytes: &[u8]) -> Result<Vec<(String, Tensor<T>)>> {
    Ok(from_safetensors_bytes_with_metadata(bytes)?.0)
}

/// Like [`from_safetensors_bytes`], and also returns the `__metadata__` key/value pairs,
/// sorted by key (empty when the file has none).
///
/// ```
/// use tapegrad::{io, Tensor};
/// let bytes = io::to_safetensors_bytes(&[("x", &Tensor::<f64>::zeros([1]))]).unwrap();
/// let (tensors, meta) = io::from_safetensors_bytes_with_metadata::<f64>(&bytes).unwrap();
/// assert_eq!(tensors.len(), 1);
/// assert!(meta.is_empty());
/// ```
#[allow(clippy::type_complexity)]
pub fn from_safetensors_bytes_with_metadata<T: Float>(
    bytes: &[u8],
) -> Result<(Vec<(String, Tensor<T>)>, Vec<(String, String)>)> {
    parse_safetensors(bytes, &[])
}

/// [`from_safetensors_bytes`], where the tensors named in `counts` may also be
/// stored as integers (`I64`, `I32`, `U8`, PyTorch's dtypes for counters),
/// converted to `T` when every value is exactly representable.
pub(crate) fn from_safetensors_bytes_with_counts<T: Float>(
    bytes: &[u8],
    counts: &[&str],
) -> Result<Vec<(String, Tensor<T>)>> {
    Ok(parse_safetensors(bytes, counts)?.0)
}

/// The tensors (sorted by name) and the metadata (sorted by key) of a
/// safetensors file; the tensors named in `counts` may be stored as integers.
#[allow(clippy::type_complexity)]
fn parse_safetensors<T: Float>(
    bytes: &[u8],
    counts: &[&str],
) -> Result<(Vec<(String, Tensor<T>)>, Vec<(String, String)>)> {
    let want = dtype_of::<T>()?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::Data(format!("safetensors: not a valid file: {e}")))?;
    let mut metadata: Vec<(String, String)> = header
        .metadata()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.sort();
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::Data(format!("safetensors: not a valid file: {e}")))?;
    let mut views = st.tensors();
    views.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::with_capacity(views.len());
    for (name, view) in views {
        if view.dtype() != want && counts.contains(&name.as_str()) {
            let t = counts_from_le_bytes::<T>(view.dtype(), view.data(), view.shape()).map_err(
                |message| Error::Parameter {
                    name: name.clone(),
                    message,
                },
            )?;
            out.push((name, t));
            continue;
        }
        if view.dtype() != want {
            let hint = match view.dtype() {
                Dtype::F32 | Dtype::F64 => {
                    let other = if view.dtype() == Dtype::F32 {
                        "f32"
                    } else {
                        "f64"
                    };
                    format!("; load the file as {other} and convert with Tensor::cast")
                }
                _ => String::new(),
            };
            return Err(Error::Parameter {
                name,
                message: format!(
                    "stored as {}, but {} ({want}) was requested{hint}",
                    view.dtype(),
                    T::NAME
                ),
            });
        }
        // An empty tensor passes the format's own size check whatever its other
        // dimensions are, but strides and index math need the product of the
        // non-zero dimensions to fit in a usize.
        let shape = view.shape();
        let mut nonzero = shape.iter().filter(|&&d| d != 0);
        if nonzero.try_fold(1usize, |p, &d| p.checked_mul(d)).is_none() {
            return Err(Error::Parameter {
                name,
                message: format!(
                    "shape {shape:?} is too large: the product of its non-zero dimensions \
                     overflows usize"
                ),
            });
        }
        let t = from_le_bytes::<T>(view.data(), view.shape()).map_err(|e| Error::Parameter {
            name: name.clone(),
            message: e.to_string(),
        })?;
        out.push((name, t));
    }
    Ok((out, metadata))
}

/// A counter tensor stored as integers, converted to `T` exactly (or an error message).
fn counts_from_le_bytes<T: Float>(
    dtype: Dtype,
    bytes: &[u8],
    shape: &[usize],
) -> std::result::Result<Tensor<T>, String> {
    let ints: Vec<i128> = match dtype {
        Dtype::I64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("chunk of 8")) as i128)
            .collect(),
        Dtype::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("chunk of 4")) as i128)
            .collect(),
        Dtype::U8 => bytes.iter().map(|&b| b as i128).collect(),
        other => {
            return Err(format!(
                "stored as {other}, but a count (an integer) was expected"
            ));
        }
    };
    let mut v = Vec::with_capacity(ints.len());
    for i in ints {
        let x = T::from_f64(i as f64);
        if x.to_f64() as i128 != i {
            return Err(format!(
                "count {i} is not exactly representable as {}",
                T::NAME
            ));
        }
        v.push(x);
    }
    Tensor::from_vec(v, shape).map_err(|e| e.to_string())
}

/// Adds the file's path to a format error.
pub(crate) fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::Data(m) => Error::Data(format!("{}: {m}", path.display())),
        Error::Parameter { name, message } => Error::Parameter {
            name,
            message: format!("{message} (in {})", path.display()),
        },
        other => other,
    }
}

/// Writes named tensors to a safetensors file at `path` (see the [module docs](self)).
///
/// The bytes go to a temporary file next to `path` that is then renamed over it, so an
/// existing file is replaced whole or not at all. Errors as
/// [`to_safetensors_bytes`], plus [`Error::Io`] with the path if writing fails.
///
/// ```
/// use tapegrad::{io, Tensor};
/// let path = std::env::temp_dir().join(format!("tapegrad-doc-save-{}.safetensors", std::process::id()));
/// io::save_safetensors(&path, &[("w", &Tensor::<f64>::ones([2, 2]))]).unwrap();
/// assert!(path.exists());
/// std::fs::remove_file(&path).unwrap();
/// ```
pub fn save_safetensors<T: Float>(
    path: impl AsRef<Path>,
    tensors: &[(&str, &Tensor<T>)],
) -> Result<()> {
    let path = path.as_ref();
    let bytes = to_safetensors_bytes(tensors).map_err(|e| in_file(path, e))?;
    write_replacing(path, &bytes)
}

/// Writes `bytes` to a temporary file next to `path`, then renames it over
/// `path`: an existing file is replaced whole or not at all.
pub(crate) fn write_replacing(path: &Path, bytes: &[u8]) -> Result<()> {
    let io_err = |p: &Path, source| Error::Io {
        path: p.display().to_string(),
        source,
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, bytes).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path, e)
    })
}

/// Reads a safetensors file into named tensors of `T`, sorted by name (see the [module
/// docs](self)).
///
/// Errors: [`Error::Io`] with the path if the file cannot be read; otherwise as
/// [`from_safetensors_bytes`], with the path added to the message.
///
/// ```
/// use tapegrad::{io, Error, Tensor};
/// let path = std::env::temp_dir().join(format!("tapegrad-doc-load-{}.safetensors", std::process::id()));
/// let t = Tensor::<f32>::arange(3);
/// io::save_safetensors(&path, &[("t", &t)]).unwrap();
/// let loaded = io::load_safetensors::<f32>(&path).unwrap();
/// assert_eq!(loaded[0].1.data(), t.data());
/// std::fs::remove_file(&path).unwrap();
/// assert!(matches!(io::load_safetensors::<f32>(&path), Err(Error::Io { .. })));
/// ```
pub fn load_safetensors<T: Float>(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor<T>)>> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    from_safetensors_bytes(&bytes).map_err(|e| in_file(path, e))
}

/// The bytes of the file at `path`, or [`Error::Io`] naming it.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}
