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
#[derive(Default)]
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
    ///
    /// Panics naming the shape if the product overflows `usize`; use
    /// [`try_numel`](Shape::try_numel) to test for that.
    #[inline]
    #[track_caller]
    pub fn numel(&self) -> usize {
        match self.try_numel() {
            Some(n) => n,
            None => numel_overflow(self),
        }
    }

    /// Number of elements, or `None` if the product of the dimensions overflows
    /// `usize` (a shape with a zero dimension has 0 elements whatever the others).
    ///
    /// ```
    /// use tapegrad::Shape;
    /// assert_eq!(Shape::from([3, 4]).try_numel(), Some(12));
    /// assert_eq!(Shape::from([1 << 32, 1 << 32]).try_numel(), None);
    /// assert_eq!(Shape::from([1 << 32, 1 << 32, 0]).try_numel(), Some(0));
    /// ```
    #[inline]
    pub fn try_numel(&self) -> Option<usize> {
        let (mut n, mut overflow) = (1usize, false);
        for &d in self.0.iter() {
            let (p, o) = n.overflowing_mul(d);
            n = p;
            overflow |= o;
        }
        if !overflow {
            Some(n)
        } else if self.0.contains(&0) {
            Some(0)
        } else {
            None
        }
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
            // Saturating: an empty tensor may have other dimensions whose
            // product overflows; its strides are never used to index.
            s[i] = s[i + 1].saturating_mul(self.0[i + 1]);
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
    #[track_caller]
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

/// The panic of [`Shape::numel`] on a shape too large to count.
#[cold]
#[inline(never)]
fn numel_overflow(shape: &Shape) -> ! {
    panic!("shape {shape}: the number of elements overflows usize")
}

impl Clone for Shape {
    #[inline]
    fn clone(&self) -> Self {
        // Shapes are cloned on every op: build the inline buffer from whole words
        // rather than going through SmallVec's generic `extend` or a `memcpy` call
        // (measurable costs on scalar chains).
        let d = &self.0[..];
        if d.len() > 4 {
            return Shape(SmallVec::from_slice(d));
        }
        let mut buf = [0; 4];
        for (b, &v) in buf.iter_mut().zip(d) {
            *b = v;
        }
        Shape(SmallVec::from_buf_and_len(buf, self.0.len()))
    }
}

impl PartialEq for Shape {
    #[inline]
    fn eq(&self, other: &Shape) -> bool {
        // Element by element: shapes are short, and slice equality calls `memcmp`.
        self.0.len() == other.0.len() && self.0.iter().zip(other.0.iter()).all(|(a, b)| a == b)
    }
}

impl Eq for Shape {}

impl std::hash::Hash for Shape {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0[..].hash(state);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, RandomState};

    #[test]
    fn clone_eq_and_hash_agree_at_every_rank() {
        let hasher = RandomState::new();
        for rank in 0..=7 {
            let dims: Vec<usize> = (2..2 + rank).collect();
            let a = Shape::from(&dims[..]);
            let c = a.clone();
            assert_eq!(&c[..], &dims[..]);
            assert_eq!(c.rank(), rank);
            assert!(a == c && c == Shape::from(dims.clone()));
            assert_eq!(hasher.hash_one(&a), hasher.hash_one(&c));
            let mut longer = dims.clone();
            longer.push(1);
            assert_ne!(a, Shape::from(longer));
            if let Some((last, rest)) = dims.split_last() {
                let mut other = rest.to_vec();
                other.push(last + 1);
                assert_ne!(a, Shape::from(other));
            }
        }
        assert_eq!(Shape::default(), Shape::scalar());
    }
}
