//! [`Shape`]: the dimensions of a tensor, and the broadcasting rules.

use smallvec::SmallVec;
use std::fmt;
use std::ops::Deref;

/// The dimensions of a tensor, outermost first (row-major), stored inline for up to 4 axes.
///
/// Anything dimension-like converts into it: arrays, slices, `Vec<usize>`.
///
/// ```
/// use tapegrad::Shape;
/// let s = Shape::from([2, 3, 4]);
/// assert_eq!(s.numel(), 24);
/// assert_eq!(s.to_string(), "[2, 3, 4]");
/// assert_eq!(&s[..], &[2, 3, 4]);
/// ```
#[derive(PartialEq, Eq, Hash, Default)]
pub struct Shape(pub(crate) SmallVec<[usize; 4]>);

impl Shape {
    /// The shape of a scalar (rank 0, one element).
    ///
    /// ```
    /// assert_eq!(tapegrad::Shape::scalar().numel(), 1);
    /// ```
    pub fn scalar() -> Self {
        Shape(SmallVec::new())
    }

    /// Number of elements: the product of the dimensions (1 for a scalar).
    ///
    /// ```
    /// assert_eq!(tapegrad::Shape::from([2, 0, 3]).numel(), 0);
    /// ```
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }

    /// Number of axes.
    ///
    /// ```
    /// assert_eq!(tapegrad::Shape::from([5, 6]).rank(), 2);
    /// ```
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Row-major strides (in elements) of a contiguous tensor of this shape.
    ///
    /// ```
    /// assert_eq!(&tapegrad::Shape::from([2, 3, 4]).strides()[..], &[12, 4, 1]);
    /// ```
    pub fn strides(&self) -> SmallVec<[usize; 4]> {
        let mut s: SmallVec<[usize; 4]> = SmallVec::from_elem(1, self.0.len());
        for i in (0..self.0.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1] * self.0[i + 1];
        }
        s
    }

    /// The shape two operands broadcast to under numpy rules (align trailing
    /// axes; a dimension of 1 stretches), or `None` if they are incompatible.
    ///
    /// ```
    /// use tapegrad::Shape;
    /// let s = Shape::broadcast(&Shape::from([2, 1, 4]), &Shape::from([3, 1])).unwrap();
    /// assert_eq!(&s[..], &[2, 3, 4]);
    /// assert!(Shape::broadcast(&Shape::from([2]), &Shape::from([3])).is_none());
    /// ```
    pub fn broadcast(a: &Shape, b: &Shape) -> Option<Shape> {
        let r = a.rank().max(b.rank());
        let mut out = SmallVec::with_capacity(r);
        for i in 0..r {
            let da = if i + a.rank() >= r {
                a.0[i + a.rank() - r]
            } else {
                1
            };
            let db = if i + b.rank() >= r {
                b.0[i + b.rank() - r]
            } else {
                1
            };
            out.push(match (da, db) {
                (x, y) if x == y => x,
                (1, y) => y,
                (x, 1) => x,
                _ => return None,
            });
        }
        Some(Shape(out))
    }

    /// Normalises a possibly negative axis (`-1` is the last) for an `op` message.
    pub(crate) fn axis(&self, axis: isize, op: &str) -> usize {
        let r = self.rank() as isize;
        let a = if axis < 0 { axis + r } else { axis };
        assert!(
            (0..r).contains(&a),
            "{op}: axis {axis} is out of range for shape {self} (rank {r})"
        );
        a as usize
    }
}

impl Clone for Shape {
    #[inline]
    fn clone(&self) -> Self {
        // Shapes are cloned on every op: copy the inline buffer directly rather than
        // going through SmallVec's generic `extend` (a measurable cost on scalar chains).
        let n = self.0.len();
        if n <= 4 {
            let mut buf = [0usize; 4];
            buf[..n].copy_from_slice(&self.0);
            Shape(SmallVec::from_buf_and_len(buf, n))
        } else {
            Shape(SmallVec::from_slice(&self.0))
        }
    }
}

impl Deref for Shape {
    type Target = [usize];
    fn deref(&self) -> &[usize] {
        &self.0
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &self.0[..])
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &self.0[..])
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(SmallVec::from_slice(&d))
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(SmallVec::from_slice(d))
    }
}

impl<const N: usize> From<&[usize; N]> for Shape {
    fn from(d: &[usize; N]) -> Self {
        Shape(SmallVec::from_slice(d))
    }
}

impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(SmallVec::from_vec(d))
    }
}

impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}
