//! Recycling of large tensor buffers.
//!
//! A training step allocates and frees the same large activations and gradients
//! every time. Handed back to glibc, freed blocks above its trim threshold are
//! returned to the OS and every page faults again on the next step: measured on
//! `cnn_step`, 27,300 page faults per benchmark run and ~30 % of the step's time.
//! So large buffers (≥ [`MIN_BYTES`]) released by a dropped tensor go to a small
//! per-thread pool instead, and the kernels that make large outputs take from it.
//! The pool is bounded ([`MAX_BUFFERS`], [`MAX_BYTES`]); beyond that, memory goes
//! back to the allocator as usual.

use crate::Float;
use std::any::Any;
use std::cell::RefCell;

/// Buffers smaller than this are left to the allocator (its bins recycle them cheaply).
pub(crate) const MIN_BYTES: usize = 64 * 1024;
/// At most this many buffers are kept per thread and element type.
pub(crate) const MAX_BUFFERS: usize = 32;
/// At most this many bytes are kept per thread and element type.
pub(crate) const MAX_BYTES: usize = 256 << 20;

/// The free buffers of one element type.
type Pool<T> = Vec<Vec<T>>;

thread_local! {
    static POOLS: RefCell<(Pool<f32>, Pool<f64>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

fn with_pool<T: Float, R>(f: impl FnOnce(&mut Vec<Vec<T>>) -> R) -> Option<R> {
    POOLS
        .try_with(|p| {
            let mut p = p.try_borrow_mut().ok()?;
            let (a, b) = &mut *p;
            if let Some(a) = (a as &mut dyn Any).downcast_mut::<Vec<Vec<T>>>() {
                Some(f(a))
            } else {
                (b as &mut dyn Any).downcast_mut::<Vec<Vec<T>>>().map(f)
            }
        })
        .ok()
        .flatten()
}

/// A pooled buffer with room for `n` elements (and its old contents), if one fits.
fn take<T: Float>(n: usize) -> Option<Vec<T>> {
    if n * std::mem::size_of::<T>() < MIN_BYTES {
        return None;
    }
    with_pool::<T, _>(|pool| {
        // The smallest pooled buffer that fits without wasting more than a fifth of it
        // (steps repeat the same shapes, so exact fits are the common case).
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= n && v.capacity() <= n + n / 4)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i)?;
        // `remove` keeps the pool ordered oldest first, for `recycle`.
        Some(pool.remove(best))
    })
    .flatten()
}

/// An empty vector with room for at least `n` elements, recycled when possible.
pub(crate) fn with_capacity<T: Float>(n: usize) -> Vec<T> {
    match take(n) {
        Some(mut v) => {
            v.clear();
            v
        }
        None => Vec::with_capacity(n),
    }
}

/// `n` copies of `value`, in a recycled buffer when possible. Large buffers
/// are filled by all [`gemm::num_threads`](crate::gemm::num_threads) threads.
pub(crate) fn full<T: Float>(n: usize, value: T) -> Vec<T> {
    match take(n) {
        Some(mut v) => {
            v.truncate(n);
            v.resize(n, value);
            fill(&mut v, value);
            v
        }
        // A zeroed allocation (the OS hands out zero pages lazily).
        None if value == T::ZERO => vec![T::ZERO; n],
        None => {
            let mut v = vec![T::ZERO; n];
            fill(&mut v, value);
            v
        }
    }
}

/// `n` elements whose values are unspecified (a recycled buffer's old
/// contents, or zeros), for outputs the caller overwrites entirely. Debug
/// builds fill it with NaN, so that an element a kernel forgets to write
/// shows up in the tests rather than passing as a stale value.
pub(crate) fn scratch<T: Float>(n: usize) -> Vec<T> {
    let mut v = match take(n) {
        Some(mut v) => {
            v.truncate(n);
            v.resize(n, T::ZERO);
            v
        }
        None => vec![T::ZERO; n],
    };
    if cfg!(debug_assertions) {
        v.fill(T::from_f64(f64::NAN));
    }
    v
}

/// Sets every element of `v` to `value`, splitting a large buffer between
/// threads (each fills, and so brings into its cache, one contiguous part).
pub(crate) fn fill<T: Float>(v: &mut [T], value: T) {
    crate::threads::for_each_part(v, 1 << 18, |_, part| part.fill(value));
}

/// Hands a buffer back for reuse (or to the allocator if it is small or
/// larger than the whole pool). A full pool drops its oldest buffers to make
/// room: the buffers freed last are the ones the next step asks for again,
/// while old ones may be of sizes nothing uses any more.
pub(crate) fn recycle<T: Float>(v: Vec<T>) {
    let bytes = v.capacity() * std::mem::size_of::<T>();
    if !(MIN_BYTES..=MAX_BYTES).contains(&bytes) {
        return;
    }
    let _ = with_pool::<T, _>(|pool| {
        let size = |b: &Vec<T>| b.capacity() * std::mem::size_of::<T>();
        let mut held: usize = pool.iter().map(size).sum();
        let mut evict = 0;
        while pool.len() - evict >= MAX_BUFFERS || held + bytes > MAX_BYTES {
            held -= size(&pool[evict]);
            evict += 1;
        }
        pool.drain(..evict);
        pool.push(v);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_reused_small_ones_are_not() {
        let big = full::<f32>(100_000, 1.0);
        let ptr = big.as_ptr();
        recycle(big);
        let again = with_capacity::<f32>(90_000);
        assert_eq!(again.as_ptr(), ptr, "a fitting pooled buffer is handed out");
        assert!(again.is_empty());
        let zeros = full::<f32>(90_000, 0.0);
        assert!(zeros.iter().all(|&v| v == 0.0), "refilled, not stale");
        recycle(again);
        // A buffer much too big for the request is not used.
        let small = with_capacity::<f32>(10_000);
        assert_ne!(small.as_ptr(), ptr);
        // f64 buffers live in their own pool.
        let d = with_capacity::<f64>(90_000);
        assert_ne!(d.as_ptr() as *const f32, ptr);
    }

    #[test]
    fn full_refills_recycled_buffers_of_every_length() {
        // Longer, equal and shorter recycled buffers.
        for (old, new) in [(300_000, 260_000), (300_000, 300_000), (250_000, 300_000)] {
            recycle(full::<f32>(old, 7.0));
            let v = full::<f32>(new, -1.5);
            assert_eq!(v.len(), new);
            assert!(v.iter().all(|&x| x == -1.5), "{old} -> {new}");
            recycle(v);
        }
        let fresh = full::<f64>(200_000, 2.0);
        assert!(fresh.iter().all(|&x| x == 2.0));
    }

    #[test]
    fn scratch_has_the_length_asked_for_and_is_poisoned_in_debug_builds() {
        recycle(full::<f32>(100_000, 3.0));
        for n in [90_000, 100_000, 10] {
            let v = scratch::<f32>(n);
            assert_eq!(v.len(), n);
            if cfg!(debug_assertions) {
                assert!(v.iter().all(|x| x.is_nan()));
            }
            recycle(v);
        }
    }

    #[test]
    fn the_pool_is_bounded_and_keeps_the_newest_buffers() {
        let mut newest = vec![];
        for i in 0..(MAX_BUFFERS + 10) {
            let v = vec![i as f64; 20_000];
            if i >= 10 {
                newest.push(v.as_ptr());
            }
            recycle(v);
        }
        let held: Vec<*const f64> =
            with_pool::<f64, _>(|p| p.iter().map(|b| b.as_ptr()).collect()).unwrap();
        assert_eq!(held, newest, "the oldest ten were dropped");
        // A buffer that would overflow the byte budget evicts as many old ones as needed.
        recycle(vec![0.0f64; MAX_BYTES / 8 - 20_000]);
        let bytes: usize =
            with_pool::<f64, _>(|p| p.iter().map(|b| b.capacity() * 8).sum()).unwrap();
        assert!(bytes <= MAX_BYTES);
        // One larger than the whole budget is not kept.
        recycle(vec![0.0f32; MAX_BYTES / 4 + 1]);
        assert!(with_pool::<f32, _>(|p| p.iter().all(|b| b.capacity() <= MAX_BYTES / 4)).unwrap());
    }
}
