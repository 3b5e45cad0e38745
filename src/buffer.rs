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

/// An empty vector with room for at least `n` elements, recycled when possible.
pub(crate) fn with_capacity<T: Float>(n: usize) -> Vec<T> {
    if n * std::mem::size_of::<T>() >= MIN_BYTES {
        let reused = with_pool::<T, _>(|pool| {
            // The smallest pooled buffer that fits without wasting more than a fifth of it
            // (steps repeat the same shapes, so exact fits are the common case).
            let best = pool
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= n && v.capacity() <= n + n / 4)
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i)?;
            Some(pool.swap_remove(best))
        })
        .flatten();
        if let Some(mut v) = reused {
            v.clear();
            return v;
        }
    }
    Vec::with_capacity(n)
}

/// `n` copies of `value`, in a recycled buffer when possible.
pub(crate) fn full<T: Float>(n: usize, value: T) -> Vec<T> {
    let mut v = with_capacity(n);
    v.resize(n, value);
    v
}

/// Hands a buffer back for reuse (or to the allocator if it is small or the pool is full).
pub(crate) fn recycle<T: Float>(v: Vec<T>) {
    let bytes = v.capacity() * std::mem::size_of::<T>();
    if bytes < MIN_BYTES {
        return;
    }
    let _ = with_pool::<T, _>(|pool| {
        let held: usize = pool
            .iter()
            .map(|b| b.capacity() * std::mem::size_of::<T>())
            .sum();
        if pool.len() < MAX_BUFFERS && held + bytes <= MAX_BYTES {
            pool.push(v);
        }
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
    fn the_pool_is_bounded() {
        for _ in 0..(MAX_BUFFERS + 10) {
            recycle(vec![0.0f64; 20_000]);
        }
        let held = with_pool::<f64, _>(|p| p.len()).unwrap();
        assert!(held <= MAX_BUFFERS);
    }
}
