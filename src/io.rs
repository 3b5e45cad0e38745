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
    let dtype = dtype_of::<T>()?;
    let mut seen = HashSet::new();
    for &(name, _) in tensors {
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
    let buffers: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, t)| le_bytes(t).expect("T is f32 or f64"))
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, t), buf) in tensors.iter().zip(&buffers) {
        let view =
            TensorView::new(dtype, t.shape().to_vec(), buf).map_err(|e| Error::Parameter {
                name: name.to_string(),
                message: format!("cannot be serialised: {e}"),
            })?;
        views.push((*name, view));
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
/// [`Error::Parameter`] naming the first tensor (by name) whose dtype is not `T`'s.
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
        let t = from_le_bytes::<T>(view.data(), view.shape()).map_err(|e| Error::Parameter {
            name: name.clone(),
            message: e.to_string(),
        })?;
        out.push((name, t));
    }
    Ok((out, metadata))
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

/// Writes `bytes` to a temporary file next to `path`, then renames it over `path`.
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
