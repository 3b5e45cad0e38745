//! The crate's error type for fallible constructors, data loading and file I/O.

use std::fmt;

/// What went wrong in a fallible tapegrad call.
///
/// Graph ops given incompatible shapes panic instead (a programming error,
/// like an out-of-bounds index); everything that depends on data or files
/// returns this error.
///
/// ```
/// use tapegrad::{Error, Tensor};
/// let err = Tensor::<f32>::from_vec(vec![1.0, 2.0, 3.0], [2, 2]).unwrap_err();
/// assert!(matches!(err, Error::Shape { .. }));
/// assert_eq!(err.to_string(), "from_vec: 3 values do not fill shape [2, 2] (4 elements)");
/// ```
#[derive(Debug)]
pub enum Error {
    /// Shapes that do not fit together; `op` names the operation.
    Shape {
        /// The operation that rejected the shapes.
        op: &'static str,
        /// What was wrong, with the shapes.
        message: String,
    },
    /// Malformed or inconsistent data (a file's contents, a label out of range…).
    Data(String),
    /// A named parameter is missing, unexpected or has the wrong shape.
    Parameter {
        /// The parameter's name.
        name: String,
        /// What was wrong.
        message: String,
    },
    /// An I/O error, with the path involved.
    Io {
        /// The file or directory.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape { op, message } => write!(f, "{op}: {message}"),
            Error::Data(m) => write!(f, "{m}"),
            Error::Parameter { name, message } => write!(f, "parameter `{name}`: {message}"),
            Error::Io { path, source } => write!(f, "{path}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// `Result<T, tapegrad::Error>`.
///
/// ```
/// fn load() -> tapegrad::Result<tapegrad::Tensor> {
///     tapegrad::Tensor::from_vec(vec![1.0], [1])
/// }
/// assert!(load().is_ok());
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;
