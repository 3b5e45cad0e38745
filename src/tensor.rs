//! [`Tensor`]: an immutable, cheaply clonable, contiguous n-dimensional array.

use crate::shape::Shape;
use crate::{Error, Float, Result};
use smallvec::SmallVec;
use std::fmt;
use std::sync::Arc;

/// A contiguous row-major n-dimensional array of `f32` or `f64`.
///
/// Storage is shared (`Arc`), so `clone()` copies a pointer, not the data:
/// binding model parameters to a tape every training step costs nothing.
/// Mutation goes through [`Tensor::data_mut`], which copies only if the
/// storage is shared (copy-on-write).
///
/// ```
/// use tapegrad::Tensor;
/// let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]).unwrap();
/// assert_eq!(t.shape().to_string(), "[2, 3]");
/// assert_eq!(t.get(&[1, 2]), 6.0);
/// let u = t.clone(); // shares storage
/// assert_eq!(u.data(), t.data());
/// ```
#[derive(Clone)]
pub struct Tensor<T: Float = f32> {
    data: Storage<T>,
    shape: Shape,
}

/// A tensor's elements: one value inline (scalar-sized tensors never allocate,
/// which keeps long chains of scalar ops cheap), or shared heap storage.
#[derive(Clone)]
enum Storage<T: Float> {
    One(T),
    Shared(Arc<Buf<T>>),
}

/// A heap buffer. When its last owner drops it, a large buffer goes to the
/// recycling pool (see `buffer.rs`). (The hook sits here rather than on `Storage`,
/// so dropping a one-element tensor has nothing to run.)
struct Buf<T: Float>(Vec<T>);

/// A copy (copy-on-write in [`Tensor::data_mut`]) goes into a recycled buffer too.
impl<T: Float> Clone for Buf<T> {
    fn clone(&self) -> Self {
        let mut v = crate::buffer::with_capacity(self.0.len());
        v.extend_from_slice(&self.0);
        Buf(v)
    }
}

impl<T: Float> Drop for Buf<T> {
    fn drop(&mut self) {
        crate::buffer::recycle(std::mem::take(&mut self.0));
    }
}

impl<T: Float> Storage<T> {
    #[inline]
    fn from_vec(v: Vec<T>) -> Self {
        if v.len() == 1 {
            Storage::One(v[0])
        } else {
            Storage::Shared(Arc::new(Buf(v)))
        }
    }
}

impl<T: Float> std::ops::Deref for Storage<T> {
    type Target = [T];
    #[inline]
    fn deref(&self) -> &[T] {
        match self {
            Storage::One(v) => std::slice::from_ref(v),
            Storage::Shared(a) => &a.0,
        }
    }
}

/// Elements from which the elementwise kernels of the tape's ops (unary forward,
/// elementwise backward) split their work between threads: below it, waking a
/// second thread costs more than it saves (relu runs ~3 elements per ns).
const PAR_ELEMENTWISE: usize = 1 << 16;

impl<T: Float> Tensor<T> {
    /// Wraps `data` (row-major) in a tensor of `shape`; errors if the lengths differ.
    ///
    /// ```
    /// use tapegrad::Tensor;
    /// assert!(Tensor::from_vec(vec![1.0f64; 6], [2, 3]).is_ok());
    /// assert!(Tensor::from_vec(vec![1.0f64; 5], [2, 3]).is_err());
    /// ```
    pub fn from_vec(data: Vec<T>, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        let Some(n) = shape.try_numel() else {
            return Err(Error::Shape {
                op: "from_vec",
                message: format!("shape {shape} has more elements than usize can count"),
            });
        };
        if data.len() != n {
            return Err(Error::Shape {
                op: "from_vec",
                message: format!(
                    "{} values do not fill shape {} ({} elements)",
                    data.len(),
                    shape,
                    n
                ),
            });
        }
        Ok(Tensor {
            data: Storage::from_vec(data),
            shape,
        })
    }

    /// Internal constructor for kernels that computed a buffer of the right size.
    #[inline]
    pub(crate) fn from_parts(data: Vec<T>, shape: Shape) -> Self {
        debug_assert_eq!(data.len(), shape.numel());
        Tensor {
            data: Storage::from_vec(data),
            shape,
        }
    }

    /// Internal constructor from exactly `shape.numel()` values; a one-element
    /// result is stored inline without allocating.
    #[inline]
    pub(crate) fn collect(shape: Shape, mut values: impl Iterator<Item = T>) -> Self {
        if shape.numel() == 1 {
            let v = values.next().expect("collect: one value");
            return Tensor {
                data: Storage::One(v),
                shape,
            };
        }
        let mut v: Vec<T> = crate::buffer::with_capacity(shape.numel());
        v.extend(values);
        debug_assert_eq!(v.len(), shape.numel());
        Tensor {
            data: Storage::Shared(Arc::new(Buf(v))),
            shape,
        }
    }

    /// A rank-0 tensor holding one value.
    ///
    /// ```
    /// let t = tapegrad::Tensor::scalar(2.5f32);
    /// assert_eq!(t.rank(), 0);
    /// assert_eq!(t.item(), 2.5);
    /// ```
    pub fn scalar(v: T) -> Self {
        Tensor {
            data: Storage::One(v),
            shape: Shape::scalar(),
        }
    }

    /// A tensor filled with `v`.
    ///
    /// ```
    /// let t = tapegrad::Tensor::full([2, 2], 7.0f64);
    /// assert_eq!(t.data(), &[7.0; 4]);
    /// ```
    ///
    /// Panics naming the shape if it holds more elements than memory can address.
    #[track_caller]
    pub fn full(shape: impl Into<Shape>, v: T) -> Self {
        let shape = shape.into();
        let n = alloc_len::<T>("full", &shape);
        Self::from_parts(crate::buffer::full(n, v), shape)
    }

    /// A tensor of zeros.
    ///
    /// ```
    /// assert_eq!(tapegrad::Tensor::<f32>::zeros([3]).data(), &[0.0; 3]);
    /// ```
    pub fn zeros(shape: impl Into<Shape>) -> Self {
        Self::full(shape, T::ZERO)
    }

    /// A tensor of ones.
    ///
    /// ```
    /// assert_eq!(tapegrad::Tensor::<f32>::ones([2]).data(), &[1.0, 1.0]);
    /// ```
    pub fn ones(shape: impl Into<Shape>) -> Self {
        Self::full(shape, T::ONE)
    }

    /// `[0, 1, …, n-1]` as a rank-1 tensor.
    ///
    /// ```
    /// assert_eq!(tapegrad::Tensor::<f64>::arange(4).data(), &[0.0, 1.0, 2.0, 3.0]);
    /// ```
    pub fn arange(n: usize) -> Self {
        Self::from_parts((0..n).map(T::from_usize).collect(), Shape::from([n]))
    }

    /// Standard normal samples (Box–Muller) drawn from the caller's RNG: same seed, same tensor.
    ///
    /// ```
    /// use tapegrad::rand::SeedableRng;
    /// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
    /// let a = tapegrad::Tensor::<f32>::randn([2, 3], &mut rng);
    /// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(0);
    /// assert_eq!(a.data(), tapegrad::Tensor::<f32>::randn([2, 3], &mut rng).data());
    /// ```
    pub fn randn<R: rand::Rng + ?Sized>(shape: impl Into<Shape>, rng: &mut R) -> Self {
        use rand::RngExt;
        let shape = shape.into();
        let n = alloc_len::<T>("randn", &shape);
        let mut v = Vec::with_capacity(n + 1);
        while v.len() < n {
            // Box–Muller: two uniforms in (0, 1] give two independent normals.
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            let r = (-2.0 * u1.ln()).sqrt();
            let th = std::f64::consts::TAU * u2;
            v.push(T::from_f64(r * th.cos()));
            v.push(T::from_f64(r * th.sin()));
        }
        v.truncate(n);
        Self::from_parts(v, shape)
    }

    /// Uniform samples in `[lo, hi)` drawn from the caller's RNG.
    ///
    /// ```
    /// use tapegrad::rand::SeedableRng;
    /// let mut rng = tapegrad::rand::rngs::StdRng::seed_from_u64(1);
    /// let t = tapegrad::Tensor::<f64>::rand_uniform([100], -1.0, 1.0, &mut rng);
    /// assert!(t.data().iter().all(|&v| (-1.0..1.0).contains(&v)));
    /// ```
    pub fn rand_uniform<R: rand::Rng + ?Sized>(
        shape: impl Into<Shape>,
        lo: T,
        hi: T,
        rng: &mut R,
    ) -> Self {
        use rand::RngExt;
        let shape = shape.into();
        let (lo64, hi64) = (lo.to_f64(), hi.to_f64());
        let v = (0..alloc_len::<T>("rand_uniform", &shape))
            .map(|_| {
                let v = T::from_f64(lo64 + (hi64 - lo64) * rng.random::<f64>());
                // Rounding to f32 can land on `hi`; keep the interval half-open.
                if v >= hi {
                    lo.max(hi - (hi - lo) * T::EPSILON)
                } else {
                    v
                }
            })
            .collect();
        Self::from_parts(v, shape)
    }

    /// The shape.
    ///
    /// ```
    /// assert_eq!(&tapegrad::Tensor::<f32>::zeros([4, 5]).shape()[..], &[4, 5]);
    /// ```
    #[inline]
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// Number of elements.
    ///
    /// ```
    /// assert_eq!(tapegrad::Tensor::<f32>::zeros([4, 5]).numel(), 20);
    /// ```
    #[inline]
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Number of axes.
    ///
    /// ```
    /// assert_eq!(tapegrad::Tensor::<f32>::zeros([4, 5]).rank(), 2);
    /// ```
    #[inline]
    pub fn rank(&self) -> usize {
        self.shape.rank()
    }

    /// The elements, row-major.
    ///
    /// ```
    /// assert_eq!(tapegrad::Tensor::<f32>::arange(3).data(), &[0.0, 1.0, 2.0]);
    /// ```
    #[inline]
    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// Mutable access to the elements; copies the storage first if another tensor shares it.
    ///
    /// ```
    /// let a = tapegrad::Tensor::<f32>::zeros([2]);
    /// let mut b = a.clone();
    /// b.data_mut()[0] = 1.0;
    /// assert_eq!(a.data(), &[0.0, 0.0]); // a is untouched
    /// assert_eq!(b.data(), &[1.0, 0.0]);
    /// ```
    pub fn data_mut(&mut self) -> &mut [T] {
        match &mut self.data {
            Storage::One(v) => std::slice::from_mut(v),
            Storage::Shared(a) => Arc::make_mut(a).0.as_mut_slice(),
        }
    }

    /// The elements as an owned `Vec` (copied only if shared).
    ///
    /// ```
    /// assert_eq!(tapegrad::Tensor::<f32>::ones([2]).into_vec(), vec![1.0, 1.0]);
    /// ```
    pub fn into_vec(mut self) -> Vec<T> {
        match &mut self.data {
            Storage::One(v) => vec![*v],
            // Take the vector out if we are its only owner (leaving an empty one behind).
            Storage::Shared(a) => match Arc::get_mut(a) {
                Some(b) => std::mem::take(&mut b.0),
                None => a.0.to_vec(),
            },
        }
    }

    /// Whether two tensors share the same heap storage (no copy was made).
    /// One-element tensors are stored inline, so they never share.
    ///
    /// ```
    /// let a = tapegrad::Tensor::<f32>::zeros([2]);
    /// assert!(a.shares_storage(&a.clone()));
    /// ```
    pub fn shares_storage(&self, other: &Tensor<T>) -> bool {
        match (&self.data, &other.data) {
            (Storage::Shared(a), Storage::Shared(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The single value of a one-element tensor; panics otherwise.
    ///
    /// ```
    /// assert_eq!(tapegrad::Tensor::full([1, 1], 3.0f32).item(), 3.0);
    /// ```
    #[track_caller]
    pub fn item(&self) -> T {
        assert!(
            self.numel() == 1,
            "item: tensor of shape {} has {} elements, not 1",
            self.shape,
            self.numel()
        );
        self.data[0]
    }

    /// The element at a multi-index; panics if the index is out of bounds.
    ///
    /// ```
    /// let t = tapegrad::Tensor::<f32>::arange(6).reshape([2, 3]);
    /// assert_eq!(t.get(&[1, 0]), 3.0);
    /// ```
    #[track_caller]
    pub fn get(&self, index: &[usize]) -> T {
        self.data[self.offset(index, "get")]
    }

    /// Sets the element at a multi-index (copy-on-write).
    ///
    /// ```
    /// let mut t = tapegrad::Tensor::<f32>::zeros([2, 2]);
    /// t.set(&[0, 1], 5.0);
    /// assert_eq!(t.data(), &[0.0, 5.0, 0.0, 0.0]);
    /// ```
    #[track_caller]
    pub fn set(&mut self, index: &[usize], v: T) {
        let o = self.offset(index, "set");
        self.data_mut()[o] = v;
    }

    #[track_caller]
    fn offset(&self, index: &[usize], op: &str) -> usize {
        assert!(
            index.len() == self.rank() && index.iter().zip(self.shape.iter()).all(|(i, d)| i < d),
            "{op}: index {index:?} is out of bounds for shape {}",
            self.shape
        );
        index
            .iter()
            .zip(self.shape.strides())
            .map(|(i, s)| i * s)
            .sum()
    }

    /// The same data viewed with another shape of the same size (no copy).
    /// Panics naming both shapes if the sizes differ.
    ///
    /// ```
    /// let t = tapegrad::Tensor::<f32>::arange(6);
    /// let r = t.reshape([3, 2]);
    /// assert!(r.shares_storage(&t));
    /// ```
    #[track_caller]
    pub fn reshape(&self, shape: impl Into<Shape>) -> Tensor<T> {
        let shape = shape.into();
        let n = shape.try_numel();
        assert!(
            n == Some(self.numel()),
            "reshape: cannot view {} ({} elements) as {} ({} elements)",
            self.shape,
            self.numel(),
            shape,
            n.map_or("more than usize can count".to_string(), |n| n.to_string())
        );
        Tensor {
            data: self.data.clone(),
            shape,
        }
    }

    /// Applies `f` to every element.
    ///
    /// ```
    /// let t = tapegrad::Tensor::<f32>::arange(3).map(|v| v * 2.0);
    /// assert_eq!(t.data(), &[0.0, 2.0, 4.0]);
    /// ```
    #[inline]
    pub fn map(&self, f: impl Fn(T) -> T) -> Tensor<T> {
        if let Storage::One(v) = self.data {
            return Tensor {
                data: Storage::One(f(v)),
                shape: self.shape.clone(),
            };
        }
        Self::collect(self.shape.clone(), self.data.iter().map(|&v| f(v)))
    }

    /// [`map`](Self::map) split between threads when the tensor is large.
    #[inline]
    pub(crate) fn par_map(&self, f: impl Fn(T) -> T + Sync) -> Tensor<T> {
        let x = &self.data[..];
        if x.len() < PAR_ELEMENTWISE {
            return self.map(f);
        }
        let mut out = crate::buffer::scratch(x.len());
        crate::threads::for_each_part(&mut out, PAR_ELEMENTWISE, |off, part| {
            for (o, &v) in part.iter_mut().zip(&x[off..]) {
                *o = f(v);
            }
        });
        Self::from_parts(out, self.shape.clone())
    }

    /// Combines two tensors of the same shape elementwise; `op` names the caller in the panic
    /// message if the shapes differ.
    ///
    /// ```
    /// use tapegrad::Tensor;
    /// let a = Tensor::<f32>::arange(3);
    /// let s = a.zip_map(&a, "add", |x, y| x + y);
    /// assert_eq!(s.data(), &[0.0, 2.0, 4.0]);
    /// ```
    #[track_caller]
    pub fn zip_map(&self, other: &Tensor<T>, op: &str, f: impl Fn(T, T) -> T) -> Tensor<T> {
        assert!(
            self.shape == other.shape,
            "{op}: shapes {} and {} differ",
            self.shape,
            other.shape
        );
        let v = self
            .data
            .iter()
            .zip(other.data.iter())
            .map(|(&a, &b)| f(a, b));
        Self::collect(self.shape.clone(), v)
    }

    /// [`zip_map`](Self::zip_map) of two tensors of one shape, split between
    /// threads when they are large.
    #[inline]
    pub(crate) fn par_zip_map(&self, other: &Tensor<T>, f: impl Fn(T, T) -> T + Sync) -> Tensor<T> {
        debug_assert!(self.shape == other.shape);
        let (a, b) = (&self.data[..], &other.data[..]);
        if a.len() < PAR_ELEMENTWISE {
            return self.zip_map(other, "zip", f);
        }
        let mut out = crate::buffer::scratch(a.len());
        crate::threads::for_each_part(&mut out, PAR_ELEMENTWISE, |off, part| {
            for ((o, &a), &b) in part.iter_mut().zip(&a[off..]).zip(&b[off..]) {
                *o = f(a, b);
            }
        });
        Self::from_parts(out, self.shape.clone())
    }

    /// The value of a tensor stored inline (one element), else `None`.
    #[inline(always)]
    pub(crate) fn as_one(&self) -> Option<T> {
        match self.data {
            Storage::One(v) => Some(v),
            Storage::Shared(_) => None,
        }
    }

    /// A one-element tensor of `shape` (which must have one element) holding `v`.
    #[inline(always)]
    pub(crate) fn one(v: T, shape: Shape) -> Self {
        debug_assert_eq!(shape.numel(), 1);
        Tensor {
            data: Storage::One(v),
            shape,
        }
    }

    /// The gradient of an elementwise op: `self · f(x, y)` per element, where `self` is
    /// the output gradient and `x`, `y` the op's input and output (all of one shape).
    #[inline]
    pub(crate) fn grad_map(
        &self,
        x: &Tensor<T>,
        y: &Tensor<T>,
        f: impl Fn(T, T) -> T + Sync,
    ) -> Tensor<T> {
        if let (Storage::One(g), Storage::One(x), Storage::One(y)) = (&self.data, &x.data, &y.data)
        {
            return Tensor {
                data: Storage::One(*g * f(*x, *y)),
                shape: self.shape.clone(),
            };
        }
        debug_assert!(self.shape == x.shape && self.shape == y.shape);
        let (gs, xs, ys) = (&self.data[..], &x.data[..], &y.data[..]);
        let mut out = crate::buffer::scratch(gs.len());
        crate::threads::for_each_part(&mut out, PAR_ELEMENTWISE, |off, part| {
            let ins = gs[off..].iter().zip(&xs[off..]).zip(&ys[off..]);
            for (o, ((&g, &x), &y)) in part.iter_mut().zip(ins) {
                *o = g * f(x, y);
            }
        });
        Self::from_parts(out, self.shape.clone())
    }

    /// `self += other` elementwise; the shapes must match. Gradient
    /// accumulation: the sum lands in whichever buffer is not shared (the
    /// addition commutes exactly), else in a new (recycled) buffer written in
    /// one pass, never a copy of `self` then an add. Large tensors are split
    /// between threads.
    #[inline]
    pub(crate) fn add_assign_same_shape(&mut self, mut other: Tensor<T>) {
        debug_assert!(self.shape == other.shape);
        let (Storage::Shared(a), Storage::Shared(b)) = (&mut self.data, &mut other.data) else {
            for (a, b) in self.data_mut().iter_mut().zip(other.data()) {
                *a += *b;
            }
            return;
        };
        if Arc::get_mut(a).is_none() && Arc::get_mut(b).is_some() {
            std::mem::swap(a, b);
        }
        let b = &b.0[..];
        match Arc::get_mut(a) {
            Some(a) => crate::threads::for_each_part(&mut a.0, PAR_ELEMENTWISE, |off, part| {
                for (a, &b) in part.iter_mut().zip(&b[off..]) {
                    *a += b;
                }
            }),
            None => {
                let x = &a.0[..];
                let mut out = crate::buffer::scratch(x.len());
                crate::threads::for_each_part(&mut out, PAR_ELEMENTWISE, |off, part| {
                    for ((o, &x), &b) in part.iter_mut().zip(&x[off..]).zip(&b[off..]) {
                        *o = x + b;
                    }
                });
                *a = Arc::new(Buf(out));
            }
        }
    }

    /// Sum of all elements.
    ///
    /// ```
    /// assert_eq!(tapegrad::Tensor::<f32>::arange(4).sum_all(), 6.0);
    /// ```
    pub fn sum_all(&self) -> T {
        sum_lanes(&self.data)
    }

    /// Euclidean norm of all elements, in `f64`.
    ///
    /// ```
    /// let t = tapegrad::Tensor::from_vec(vec![3.0f32, 4.0], [2]).unwrap();
    /// assert_eq!(t.norm(), 5.0);
    /// ```
    pub fn norm(&self) -> f64 {
        self.data
            .iter()
            .map(|v| v.to_f64() * v.to_f64())
            .sum::<f64>()
            .sqrt()
    }

    /// Whether every element is finite.
    ///
    /// ```
    /// assert!(tapegrad::Tensor::<f32>::ones([3]).all_finite());
    /// ```
    pub fn all_finite(&self) -> bool {
        self.data.iter().all(|v| v.is_finite())
    }

    /// Converts to another float type.
    ///
    /// ```
    /// let t = tapegrad::Tensor::<f32>::arange(2).cast::<f64>();
    /// assert_eq!(t.data(), &[0.0f64, 1.0]);
    /// ```
    pub fn cast<U: Float>(&self) -> Tensor<U> {
        Tensor::from_parts(
            self.data.iter().map(|v| U::from_f64(v.to_f64())).collect(),
            self.shape.clone(),
        )
    }

    /// The largest absolute difference between two tensors of the same shape (in `f64`);
    /// NaN if either holds a NaN, so a tolerance check like `d < 1e-9` fails on NaN
    /// instead of passing silently.
    ///
    /// ```
    /// use tapegrad::Tensor;
    /// let a = Tensor::from_vec(vec![1.0f64, 2.0], [2]).unwrap();
    /// let b = Tensor::from_vec(vec![1.0f64, 2.5], [2]).unwrap();
    /// assert_eq!(a.max_abs_diff(&b), 0.5);
    /// ```
    pub fn max_abs_diff(&self, other: &Tensor<T>) -> f64 {
        assert!(
            self.shape == other.shape,
            "max_abs_diff: shapes {} and {} differ",
            self.shape,
            other.shape
        );
        self.data
            .iter()
            .zip(other.data.iter())
            .map(|(a, b)| (a.to_f64() - b.to_f64()).abs())
            .fold(0.0, |m: f64, d| if d.is_nan() || d > m { d } else { m })
    }

    /// Elementwise `op` with numpy broadcasting; `name` is the op named in the panic message.
    #[track_caller]
    pub(crate) fn broadcast_zip(
        &self,
        other: &Tensor<T>,
        name: &str,
        f: impl Fn(T, T) -> T + Sync,
    ) -> Tensor<T> {
        if self.shape == other.shape {
            return self.par_zip_map(other, f);
        }
        if other.numel() == 1 && other.rank() <= self.rank() {
            let b = other.data[0];
            return self.map(|a| f(a, b));
        }
        if self.numel() == 1 && self.rank() <= other.rank() {
            let a = self.data[0];
            return other.map(|b| f(a, b));
        }
        let Some(out) = Shape::broadcast(&self.shape, &other.shape) else {
            panic!(
                "{name}: shapes {} and {} cannot be broadcast together",
                self.shape, other.shape
            )
        };
        let sa = broadcast_strides(&self.shape, &out);
        let sb = broadcast_strides(&other.shape, &out);
        let mut v = crate::buffer::with_capacity(out.numel());
        let (a, b) = (&self.data[..], &other.data[..]);
        for_each_row(&out, &[&sa, &sb], |offs, len, inner| {
            let (oa, ob) = (offs[0], offs[1]);
            let (ia, ib) = (inner[0], inner[1]);
            for j in 0..len {
                v.push(f(a[oa + j * ia], b[ob + j * ib]));
            }
        });
        Self::from_parts(v, out)
    }

    /// Sums this tensor down to `target`, the shape it was broadcast from
    /// (the backward of broadcasting). Panics if `target` does not broadcast to `self.shape()`.
    ///
    /// ```
    /// use tapegrad::Tensor;
    /// let g = Tensor::<f32>::ones([2, 3]);
    /// assert_eq!(g.sum_to([3]).data(), &[2.0, 2.0, 2.0]);
    /// assert_eq!(g.sum_to([2, 1]).data(), &[3.0, 3.0]);
    /// ```
    #[track_caller]
    pub fn sum_to(&self, target: impl Into<Shape>) -> Tensor<T> {
        let target = target.into();
        if target == self.shape {
            return self.clone();
        }
        assert!(
            Shape::broadcast(&target, &self.shape).as_ref() == Some(&self.shape),
            "sum_to: shape {} does not broadcast to {}",
            target,
            self.shape
        );
        let st = broadcast_strides(&target, &self.shape);
        let mut acc = crate::buffer::full(target.numel(), T::ZERO);
        let g = &self.data[..];
        let mut k = 0;
        for_each_row(&self.shape, &[&st], |offs, len, inner| {
            let o = offs[0];
            if inner[0] == 0 {
                let s: T = g[k..k + len].iter().copied().sum();
                acc[o] += s;
            } else {
                for j in 0..len {
                    acc[o + j] += g[k + j];
                }
            }
            k += len;
        });
        Self::from_parts(acc, target)
    }

    /// Broadcasts this tensor to `shape` (copying). Panics if it does not broadcast.
    ///
    /// ```
    /// let t = tapegrad::Tensor::<f32>::arange(2).reshape([2, 1]).broadcast_to([2, 3]);
    /// assert_eq!(t.data(), &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    /// ```
    #[track_caller]
    pub fn broadcast_to(&self, shape: impl Into<Shape>) -> Tensor<T> {
        let shape = shape.into();
        if shape == self.shape {
            return self.clone();
        }
        assert!(
            Shape::broadcast(&self.shape, &shape).as_ref() == Some(&shape),
            "broadcast_to: shape {} does not broadcast to {}",
            self.shape,
            shape
        );
        let st = broadcast_strides(&self.shape, &shape);
        let mut v = crate::buffer::with_capacity(shape.numel());
        let a = &self.data[..];
        for_each_row(&shape, &[&st], |offs, len, inner| {
            for j in 0..len {
                v.push(a[offs[0] + j * inner[0]]);
            }
        });
        Self::from_parts(v, shape)
    }

    /// Reorders the axes (copying): output axis `i` is input axis `perm[i]`.
    ///
    /// ```
    /// let t = tapegrad::Tensor::<f32>::arange(6).reshape([2, 3]).permute(&[1, 0]);
    /// assert_eq!(t.data(), &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    /// ```
    #[track_caller]
    pub fn permute(&self, perm: &[usize]) -> Tensor<T> {
        let r = self.rank();
        let mut seen: SmallVec<[bool; 8]> = SmallVec::from_elem(false, r);
        assert!(
            perm.len() == r
                && perm
                    .iter()
                    .all(|&p| p < r && !std::mem::replace(&mut seen[p], true)),
            "permute: {perm:?} is not a permutation of the {r} axes of shape {}",
            self.shape
        );
        let in_strides = self.shape.strides();
        let out_shape = Shape(perm.iter().map(|&p| self.shape[p]).collect());
        let st: SmallVec<[usize; 4]> = perm.iter().map(|&p| in_strides[p]).collect();
        let mut v = crate::buffer::with_capacity(self.numel());
        let a = &self.data[..];
        for_each_row(&out_shape, &[&st], |offs, len, inner| {
            for j in 0..len {
                v.push(a[offs[0] + j * inner[0]]);
            }
        });
        Self::from_parts(v, out_shape)
    }
}

/// The number of elements of a new tensor of `shape` made by `op`; panics naming
/// both if it overflows `usize` or its bytes exceed `isize::MAX` (what a `Vec`
/// can hold), rather than wrapping or failing inside the allocator.
fn alloc_len<T>(op: &str, shape: &Shape) -> usize {
    match shape.try_numel() {
        Some(n)
            if n.checked_mul(std::mem::size_of::<T>())
                .is_some_and(|b| b <= isize::MAX as usize) =>
        {
            n
        }
        _ => panic!(
            "{op}: shape {shape} has more elements than a tensor of {}-byte values can hold",
            std::mem::size_of::<T>()
        ),
    }
}

/// Strides of `shape` read as if broadcast to `out` (0 along stretched or missing axes).
pub(crate) fn broadcast_strides(shape: &Shape, out: &Shape) -> SmallVec<[usize; 4]> {
    let s = shape.strides();
    let off = out.rank() - shape.rank();
    (0..out.rank())
        .map(|i| {
            if i < off || shape[i - off] == 1 {
                0
            } else {
                s[i - off]
            }
        })
        .collect()
}

/// Walks `shape` in row-major order one innermost row at a time, calling
/// `f(offsets, row_len, inner_strides)` with each operand's offset at the row start
/// (operands described by their strides over `shape`).
pub(crate) fn for_each_row(
    shape: &Shape,
    strides: &[&SmallVec<[usize; 4]>],
    mut f: impl FnMut(&[usize], usize, &[usize]),
) {
    let n = shape.numel();
    if n == 0 {
        return;
    }
    let r = shape.rank();
    let k = strides.len();
    let mut offs: SmallVec<[usize; 4]> = SmallVec::from_elem(0, k);
    if r == 0 {
        f(&offs, 1, &offs.clone());
        return;
    }
    let len = shape[r - 1];
    let inner: SmallVec<[usize; 4]> = strides.iter().map(|s| s[r - 1]).collect();
    let mut idx: SmallVec<[usize; 4]> = SmallVec::from_elem(0, r);
    let rows = n / len;
    for _ in 0..rows {
        f(&offs, len, &inner);
        // Advance the multi-index over the outer axes (odometer).
        let mut ax = r - 1;
        while ax > 0 {
            ax -= 1;
            idx[ax] += 1;
            for (o, s) in offs.iter_mut().zip(strides) {
                *o += s[ax];
            }
            if idx[ax] < shape[ax] {
                break;
            }
            for (o, s) in offs.iter_mut().zip(strides) {
                *o -= s[ax] * shape[ax];
            }
            idx[ax] = 0;
        }
    }
}

impl<T: Float> fmt::Debug for Tensor<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)?;
        write!(f, " ({}, shape {})", T::NAME, self.shape)
    }
}

/// Prints like numpy/PyTorch: nested brackets, aligned columns, 4 decimals;
/// axes longer than 6 are summarised as `first 3, ..., last 3` when the tensor
/// has more than 1000 elements.
impl<T: Float> fmt::Display for Tensor<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let summarise = self.numel() > 1000;
        let fmt_v = |v: T| {
            let x = v.to_f64();
            if x.is_finite() && x != 0.0 && (x.abs() >= 1e5 || x.abs() < 1e-4) {
                format!("{x:.4e}")
            } else {
                format!("{x:.4}")
            }
        };
        let width = self.data.iter().map(|&v| fmt_v(v).len()).max().unwrap_or(1);
        #[allow(clippy::too_many_arguments)]
        fn rec<T: Float>(
            t: &Tensor<T>,
            f: &mut fmt::Formatter<'_>,
            axis: usize,
            off: usize,
            strides: &[usize],
            summarise: bool,
            width: usize,
            fmt_v: &dyn Fn(T) -> String,
        ) -> fmt::Result {
            if axis == t.rank() {
                return write!(f, "{:>width$}", fmt_v(t.data[off]));
            }
            let n = t.shape[axis];
            let indent = " ".repeat(axis + 8);
            write!(f, "[")?;
            let items: Vec<Option<usize>> = if summarise && n > 6 {
                (0..3)
                    .map(Some)
                    .chain([None])
                    .chain((n - 3..n).map(Some))
                    .collect()
            } else {
                (0..n).map(Some).collect()
            };
            for (j, it) in items.iter().enumerate() {
                if j > 0 {
                    if axis + 1 == t.rank() {
                        write!(f, ", ")?;
                    } else {
                        write!(f, ",{}{}", "\n".repeat(t.rank() - axis - 1), indent)?;
                    }
                }
                match it {
                    Some(i) => rec(
                        t,
                        f,
                        axis + 1,
                        off + i * strides[axis],
                        strides,
                        summarise,
                        width,
                        fmt_v,
                    )?,
                    None => write!(f, "...")?,
                }
            }
            write!(f, "]")
        }
        write!(f, "tensor(")?;
        let strides = self.shape.strides();
        rec(self, f, 0, 0, &strides, summarise, width, &fmt_v)?;
        write!(f, ")")
    }
}

/// Approximate equality with the `approx` crate: same shape, and every pair of
/// elements within `epsilon` (compared in `f64`).
///
/// ```
/// use approx::assert_abs_diff_eq;
/// use tapegrad::Tensor;
/// let a = Tensor::from_vec(vec![1.0f32, 2.0], [2]).unwrap();
/// let b = Tensor::from_vec(vec![1.0f32, 2.0 + 1e-7], [2]).unwrap();
/// assert_abs_diff_eq!(a, b, epsilon = 1e-6);
/// assert!(approx::abs_diff_ne!(a, b.reshape([2, 1]), epsilon = 1.0)); // shapes differ
/// ```
impl<T: Float> approx::AbsDiffEq for Tensor<T> {
    type Epsilon = f64;
    fn default_epsilon() -> f64 {
        T::EPSILON.to_f64()
    }
    fn abs_diff_eq(&self, other: &Self, epsilon: f64) -> bool {
        self.shape == other.shape
            && self
                .data
                .iter()
                .zip(other.data.iter())
                .all(|(a, b)| a.to_f64().abs_diff_eq(&b.to_f64(), epsilon))
    }
}

/// Relative approximate equality with the `approx` crate (elementwise, in `f64`).
///
/// ```
/// use approx::assert_relative_eq;
/// use tapegrad::Tensor;
/// let a = Tensor::from_vec(vec![1000.0f64, 1e-3], [2]).unwrap();
/// let b = Tensor::from_vec(vec![1000.001, 1.000001e-3], [2]).unwrap();
/// assert_relative_eq!(a, b, max_relative = 1e-5);
/// ```
impl<T: Float> approx::RelativeEq for Tensor<T> {
    fn default_max_relative() -> f64 {
        T::EPSILON.to_f64()
    }
    fn relative_eq(&self, other: &Self, epsilon: f64, max_relative: f64) -> bool {
        self.shape == other.shape
            && self
                .data
                .iter()
                .zip(other.data.iter())
                .all(|(a, b)| a.to_f64().relative_eq(&b.to_f64(), epsilon, max_relative))
    }
}

impl<T: Float> PartialEq for Tensor<T> {
    /// Exact equality: same shape and IEEE-equal values (NaN ≠ NaN and 0.0 = −0.0, as for floats).
    fn eq(&self, other: &Self) -> bool {
        self.shape == other.shape && self.data[..] == other.data[..]
    }
}

/// The sum of `xs` in sixteen interleaved partial sums, added pairwise at
/// the end: independent additions the compiler keeps in vector registers
/// (a single running sum waits on each addition's latency, ~4× slower), and
/// rounding error that grows with n/16 rather than n. Folded from +0 (std's
/// float `Sum` starts at −0, so an empty sum would be −0). The order is fixed,
/// so the result does not depend on the thread count.
fn sum_lanes<T: Float>(xs: &[T]) -> T {
    const L: usize = 16;
    let mut acc = [T::ZERO; L];
    let mut chunks = xs.chunks_exact(L);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += v;
    }
    let mut width = L;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lane sum is exact where every partial sum is (integers), +0 when
    /// empty, and within a few ulps of the f64 sum of random f32 data at
    /// every length around the lane count.
    #[test]
    fn sum_lanes_is_exact_on_integers_and_accurate_on_random_data() {
        assert!(sum_lanes::<f32>(&[]).is_sign_positive());
        for n in [1usize, 15, 16, 17, 31, 33, 1000, 100_003] {
            let ints: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
            let want: f64 = ints.iter().map(|&v| v as f64).sum();
            assert_eq!(sum_lanes(&ints) as f64, want, "n = {n}");
            let mut state = n as u64 + 1;
            let rand: Vec<f32> = (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                })
                .collect();
            let exact: f64 = rand.iter().map(|&v| v as f64).sum();
            let abs: f64 = rand.iter().map(|&v| (v as f64).abs()).sum();
            let err = (sum_lanes(&rand) as f64 - exact).abs();
            assert!(
                err <= abs * f32::EPSILON as f64 * 4.0,
                "n = {n}: error {err}"
            );
        }
    }

    #[test]
    fn the_last_owner_of_a_large_buffer_recycles_it() {
        // f64 and a size of its own, so other tests' buffers do not interfere.
        let n = 3 * crate::buffer::MIN_BYTES / 8 + 7;
        let a = Tensor::<f64>::full([n], 1.0);
        let ptr = a.data().as_ptr();
        let b = a.clone();
        drop(a); // still shared: not recycled
        let other = crate::buffer::with_capacity::<f64>(n);
        assert_ne!(other.as_ptr(), ptr);
        drop(b); // the last owner: recycled
        let again = crate::buffer::with_capacity::<f64>(n);
        assert_eq!(again.as_ptr(), ptr);
        // into_vec of a sole owner takes the buffer without copying.
        let t = Tensor::<f64>::full([n], 2.0);
        let p = t.data().as_ptr();
        let v = t.into_vec();
        assert_eq!(v.as_ptr(), p);
    }

    #[test]
    fn accumulation_adds_into_an_unshared_buffer_or_a_new_one() {
        // Small, and large enough to be split between threads.
        for n in [5, 3 * PAR_ELEMENTWISE + 3] {
            let a = Tensor::<f32>::from_vec((0..n).map(|i| i as f32 * 0.5).collect(), [n]).unwrap();
            let b = Tensor::<f32>::from_vec((0..n).map(|i| 1.0 / (i as f32 + 1.0)).collect(), [n])
                .unwrap();
            let want: Vec<f32> = a.data().iter().zip(b.data()).map(|(x, y)| x + y).collect();
            let fresh = |t: &Tensor<f32>| Tensor::from_vec(t.data().to_vec(), [n]).unwrap();
            // `self` unshared: summed in place.
            let mut acc = fresh(&a);
            let p = acc.data().as_ptr();
            acc.add_assign_same_shape(b.clone());
            assert_eq!(acc.data(), &want[..]);
            assert_eq!(acc.data().as_ptr(), p);
            // `self` shared, `other` not: summed into `other`'s buffer; `a` untouched.
            let (mut acc, other) = (a.clone(), fresh(&b));
            let p = other.data().as_ptr();
            acc.add_assign_same_shape(other);
            assert_eq!(acc.data(), &want[..]);
            assert_eq!(acc.data().as_ptr(), p);
            assert!(!acc.shares_storage(&a));
            // Both shared: a new buffer; neither input changes.
            let mut acc = a.clone();
            acc.add_assign_same_shape(b.clone());
            assert_eq!(acc.data(), &want[..]);
            assert!(!acc.shares_storage(&a) && !acc.shares_storage(&b));
            assert_eq!(a.data()[1], 0.5);
            assert_eq!(b.data()[1], 0.5);
        }
        let mut one = Tensor::<f64>::scalar(1.5);
        one.add_assign_same_shape(Tensor::scalar(2.0));
        assert_eq!(one.item(), 3.5);
    }

    #[test]
    fn large_same_shape_zips_match_the_serial_loop() {
        let n = 2 * PAR_ELEMENTWISE + 5;
        let a = Tensor::<f32>::from_vec((0..n).map(|i| i as f32 / 3.0).collect(), [n]).unwrap();
        let b = Tensor::<f32>::from_vec((0..n).map(|i| 7.0 - i as f32).collect(), [n]).unwrap();
        let f = |x: f32, y: f32| x * y - 0.5;
        // Split between the default number of threads (elementwise: the split
        // cannot change a value).
        assert_eq!(a.broadcast_zip(&b, "test", f), a.zip_map(&b, "test", f));
    }

    #[test]
    fn display_matches_pytorch_layout() {
        let t = Tensor::<f32>::arange(6).reshape([2, 3]);
        assert_eq!(
            t.to_string(),
            "tensor([[0.0000, 1.0000, 2.0000],\n        [3.0000, 4.0000, 5.0000]])"
        );
        assert_eq!(Tensor::<f64>::scalar(-2.5).to_string(), "tensor(-2.5000)");
        let big = Tensor::<f32>::arange(2000).reshape([40, 50]).to_string();
        assert_eq!(big.matches("...").count(), 7, "{big}"); // 6 rows elided in, plus one elided row
        assert_eq!(
            format!("{:?}", Tensor::<f64>::zeros([1])),
            "tensor([0.0000]) (f64, shape [1])"
        );
    }

    #[test]
    fn broadcast_and_sum_to_are_adjoint() {
        // <broadcast_to(a), g> = <a, sum_to(g)> for any a, g.
        let a = Tensor::<f64>::arange(3).reshape([3, 1]);
        let g = Tensor::<f64>::arange(12).reshape([2, 3, 2]);
        let lhs: f64 = a
            .broadcast_to([2, 3, 2])
            .data()
            .iter()
            .zip(g.data())
            .map(|(x, y)| x * y)
            .sum();
        let rhs: f64 = a
            .data()
            .iter()
            .zip(g.sum_to([3, 1]).data())
            .map(|(x, y)| x * y)
            .sum();
        assert_eq!(lhs, rhs);
    }

    #[test]
    fn inline_scalars_behave_like_heap_tensors() {
        let mut s = Tensor::<f32>::from_vec(vec![2.0], [1, 1]).unwrap();
        let c = s.clone();
        s.data_mut()[0] = 3.0;
        assert_eq!((c.item(), s.item()), (2.0, 3.0));
        assert_eq!(s.clone().into_vec(), vec![3.0]);
        assert!(!s.shares_storage(&c));
    }
}
