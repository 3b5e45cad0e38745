//! Recycling of large tensor buffers.
//!
//! A training step allocates and frees the same large activations and gradients
//! every time. Handed back to glibc, freed blocks above its trim threshold are
//! returned to the OS and every page faults again on the next step: measured on
//! `cnn_step`, 27,300 page faults per benchmark run and ~30 % of the step's time.
//! So large buffers (≥ [`MIN_BYTES`]) released by a dropped tensor go to a small
//! per-thread pool instead, and the kernels that make large outputs take from it.
//! The pool is bounded ([`MAX_BUFFERS`], and [`pool_limit`] bytes per thread and
//! element type, 256 MiB unless [`set_pool_limit`] says otherwise); beyond that,
//! memory goes back to the allocator as usual. [`release_pooled_memory`] empties
//! every thread's pools, e.g. after a large one-off graph.

use crate::Float;
use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Buffers smaller than this are left to the allocator (its bins recycle them cheaply).
pub(crate) const MIN_BYTES: usize = 64 * 1024;
/// At most this many buffers are kept per thread and element type. A step
/// must find every large buffer it freed last time: a ResNet-8 training step
/// (`resnet_step`) frees about 60, and with room for only 32 the oldest were
/// evicted and ~26 MB allocated (and page-faulted) afresh every step. The byte
/// budget ([`pool_limit`]) is the real bound; this one only keeps `take`'s
/// scan short.
pub(crate) const MAX_BUFFERS: usize = 128;
/// The default of [`pool_limit`].
pub(crate) const DEFAULT_MAX_BYTES: usize = 256 << 20;

/// Bytes a pool may hold (per thread and element type).
static LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_BYTES);
/// Bumped by [`release_pooled_memory`]: a thread whose pools were last emptied
/// in an older epoch empties them the next time it touches them.
static EPOCH: AtomicU64 = AtomicU64::new(0);
/// Bytes held by all the pools of all threads.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// The free buffers of one element type.
type Pool<T> = Vec<Vec<T>>;

/// One thread's pools, and the epoch they were last emptied in.
struct Pools {
    f32: Pool<f32>,
    f64: Pool<f64>,
    epoch: u64,
}

impl Pools {
    /// Drops every pooled buffer.
    fn clear(&mut self) {
        let bytes = held_bytes(&self.f32) + held_bytes(&self.f64);
        HELD.fetch_sub(bytes, Ordering::Relaxed);
        self.f32 = Vec::new();
        self.f64 = Vec::new();
    }
}

impl Drop for Pools {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Bytes held by one pool.
fn held_bytes<T>(pool: &Pool<T>) -> usize {
    pool.iter()
        .map(|b| b.capacity() * std::mem::size_of::<T>())
        .sum()
}

thread_local! {
    /// Set while a value given back by `Var::release` is dropped: its buffer
    /// goes to the allocator, not to the pool.
    static BYPASS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static POOLS: RefCell<Pools> = const {
        RefCell::new(Pools { f32: Vec::new(), f64: Vec::new(), epoch: 0 })
    };
}

fn with_pool<T: Float, R>(f: impl FnOnce(&mut Vec<Vec<T>>) -> R) -> Option<R> {
    POOLS
        .try_with(|p| {
            let mut p = p.try_borrow_mut().ok()?;
            let epoch = EPOCH.load(Ordering::Relaxed);
            if p.epoch != epoch {
                p.clear();
                p.epoch = epoch;
            }
            let Pools { f32: a, f64: b, .. } = &mut *p;
            if let Some(a) = (a as &mut dyn Any).downcast_mut::<Vec<Vec<T>>>() {
                Some(f(a))
            } else {
                (b as &mut dyn Any).downcast_mut::<Vec<Vec<T>>>().map(f)
            }
        })
        .ok()
        .flatten()
}

/// Drops `value` with recycling off on this thread: its large buffers go
/// straight back to the allocator. Graph-free inference releases each
/// activation once it is consumed, and the next layers' outputs are of other
/// sizes, so pooling the released buffers would only add them to the peak.
pub(crate) fn drop_unpooled<V>(value: V) {
    BYPASS.with(|b| {
        let was = b.replace(true);
        drop(value);
        b.set(was);
    });
}

/// Sets the most memory tapegrad keeps for reuse, in bytes, per thread and
/// element type (default 256 MiB; `0` turns recycling off). Pools holding
/// more shrink to it the next time they take a buffer back. Process-wide.
///
/// ```
/// use tapegrad::settings::{pool_limit, set_pool_limit};
/// set_pool_limit(64 << 20);
/// assert_eq!(pool_limit(), 64 << 20);
/// set_pool_limit(256 << 20); // the default
/// ```
pub fn set_pool_limit(bytes: usize) {
    LIMIT.store(bytes, Ordering::Relaxed);
}

/// The most memory kept for reuse per thread and element type, in bytes
/// (see [`set_pool_limit`]).
///
/// ```
/// assert!(tapegrad::settings::pool_limit() > 0);
/// ```
pub fn pool_limit() -> usize {
    LIMIT.load(Ordering::Relaxed)
}

/// Bytes held for reuse right now, over every thread's pools.
///
/// ```
/// use tapegrad::{settings, Tensor};
/// drop(Tensor::<f32>::zeros([1 << 20])); // a 4 MiB buffer goes to the pool
/// assert!(settings::pooled_bytes() >= 4 << 20);
/// settings::release_pooled_memory();
/// assert_eq!(settings::pooled_bytes(), 0);
/// ```
pub fn pooled_bytes() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// Gives every buffer kept for reuse back to the allocator (and so, for large
/// buffers, to the operating system), on every thread: the calling thread's
/// pools and those of tapegrad's worker threads (up to
/// [`num_threads`](crate::settings::num_threads)) are emptied before it returns. Call
/// it after a large one-off graph (a big evaluation batch, say) when the
/// training steps that follow are smaller; the next steps simply allocate
/// afresh. A user thread other than the caller that has run tapegrad ops
/// empties its pools the next time it runs one.
///
/// ```
/// tapegrad::settings::release_pooled_memory();
/// ```
pub fn release_pooled_memory() {
    EPOCH.fetch_add(1, Ordering::Relaxed);
    // Each thread that touches its pools after the new epoch empties them.
    crate::threads::on_every_thread(crate::gemm::num_threads(), || {
        let _ = with_pool::<f32, _>(|_| ());
    });
    let _ = with_pool::<f32, _>(|_| ());
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
        let v = pool.remove(best);
        HELD.fetch_sub(v.capacity() * std::mem::size_of::<T>(), Ordering::Relaxed);
        Some(v)
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
    let limit = pool_limit();
    if !(MIN_BYTES..=limit).contains(&bytes) || BYPASS.with(|b| b.get()) {
        return;
    }
    let _ = with_pool::<T, _>(|pool| {
        let size = |b: &Vec<T>| b.capacity() * std::mem::size_of::<T>();
        let mut held: usize = held_bytes(pool);
        let mut evict = 0;
        while pool.len() - evict >= MAX_BUFFERS || held + bytes > limit {
            held -= size(&pool[evict]);
            evict += 1;
        }
        let evicted: usize = pool.drain(..evict).map(|b| size(&b)).sum();
        pool.push(v);
        HELD.fetch_add(bytes, Ordering::Relaxed);
        HELD.fetch_sub(evicted, Ordering::Relaxed);
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
    fn a_step_that_frees_sixty_buffers_gets_every_one_back() {
        // A ResNet-8 training step frees about 60 large buffers; the next
        // step must find them all (each one fresh allocation is page faults).
        let sizes: Vec<usize> = (0..60).map(|i| 20_000 + 3_000 * (i % 6)).collect();
        let bufs: Vec<Vec<f64>> = sizes.iter().map(|&n| with_capacity(n)).collect();
        let ptrs: std::collections::HashSet<*const f64> = bufs.iter().map(|b| b.as_ptr()).collect();
        bufs.into_iter().for_each(recycle);
        let again: Vec<Vec<f64>> = sizes.iter().map(|&n| with_capacity(n)).collect();
        assert!(again.iter().all(|b| ptrs.contains(&b.as_ptr())));
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
        recycle(vec![0.0f64; DEFAULT_MAX_BYTES / 8 - 20_000]);
        let bytes: usize =
            with_pool::<f64, _>(|p| p.iter().map(|b| b.capacity() * 8).sum()).unwrap();
        assert!(bytes <= DEFAULT_MAX_BYTES);
        // One larger than the whole budget is not kept.
        recycle(vec![0.0f32; DEFAULT_MAX_BYTES / 4 + 1]);
        assert!(
            with_pool::<f32, _>(|p| p.iter().all(|b| b.capacity() <= DEFAULT_MAX_BYTES / 4))
                .unwrap()
        );
    }
}
