//! The worker threads behind every parallel op (conv, pooling, GEMM splits,
//! large elementwise kernels and fills).
//!
//! A parallel region runs its first part on the calling thread and hands the
//! others to a pool of `num_threads() − 1` workers, so that with
//! [`gemm::num_threads`](crate::gemm::num_threads) = 2 exactly two threads are
//! busy. Rayon's global pool would add as many workers as cores on top of the
//! caller: three runnable threads on two cores, where the scheduler sometimes
//! queued the woken worker behind the caller and the region ran serially
//! (traced on `mid`'s forward: in about half the calls the worker started its
//! part only when the caller had finished its own).

use std::sync::{Arc, Mutex};

/// The pool and its worker count, rebuilt when the thread count changes.
static POOL: Mutex<Option<(usize, Arc<rayon::ThreadPool>)>> = Mutex::new(None);

/// The pool for `workers` worker threads.
fn pool(workers: usize) -> Arc<rayon::ThreadPool> {
    let mut slot = POOL.lock().unwrap_or_else(|e| e.into_inner());
    match &*slot {
        Some((n, p)) if *n == workers => p.clone(),
        _ => {
            let p = Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(workers)
                    .thread_name(|i| format!("tapegrad-{i}"))
                    .build()
                    .expect("tapegrad: could not start worker threads"),
            );
            *slot = Some((workers, p.clone()));
            p
        }
    }
}

/// Runs `op` on this thread with a scope whose spawned jobs run on the
/// workers (one fewer than [`gemm::num_threads`](crate::gemm::num_threads),
/// at least one); returns when they have all finished.
pub(crate) fn in_place_scope<'s, R>(op: impl FnOnce(&rayon::Scope<'s>) -> R) -> R {
    let workers = crate::gemm::num_threads().saturating_sub(1).max(1);
    pool(workers).in_place_scope(op)
}

/// Runs `f(offset, part)` over consecutive parts of `out` that cover it,
/// one part per [`gemm::num_threads`](crate::gemm::num_threads) thread when
/// `out` has at least `min_len` elements, else `f(0, out)` on this thread.
/// For elementwise kernels: `offset` locates the part's inputs.
pub(crate) fn for_each_part<T: Send>(
    out: &mut [T],
    min_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    for_each_part_on(out, min_len, crate::gemm::num_threads(), f)
}

/// [`for_each_part`] on up to `threads` threads.
fn for_each_part_on<T: Send>(
    out: &mut [T],
    min_len: usize,
    threads: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if threads < 2 || out.len() < min_len.max(2) {
        return f(0, out);
    }
    let chunk = out.len().div_ceil(threads);
    let f = &f;
    in_place_scope(|s| {
        let mut parts = out.chunks_mut(chunk).enumerate();
        let first = parts.next();
        for (i, part) in parts {
            s.spawn(move |_| f(i * chunk, part));
        }
        if let Some((_, part)) = first {
            f(0, part);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::for_each_part_on;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_spawned_job_runs_before_the_scope_returns() {
        let done = AtomicUsize::new(0);
        let r = super::in_place_scope(|s| {
            for _ in 0..10 {
                s.spawn(|_| {
                    done.fetch_add(1, Ordering::Relaxed);
                });
            }
            7
        });
        assert_eq!((r, done.load(Ordering::Relaxed)), (7, 10));
    }

    #[test]
    fn parts_cover_the_buffer_once_with_their_offsets() {
        // Split between threads above `min_len`; lengths that do not divide
        // evenly included.
        for len in [0, 1, 10, 300_001, 1 << 20] {
            for threads in [1, 2, 3] {
                let mut v = vec![0usize; len];
                for_each_part_on(&mut v, 1000, threads, |off, part| {
                    for (i, x) in part.iter_mut().enumerate() {
                        *x += off + i + 1;
                    }
                });
                assert!(
                    v.iter().enumerate().all(|(i, &x)| x == i + 1),
                    "{len}, {threads} threads"
                );
            }
        }
    }
}
