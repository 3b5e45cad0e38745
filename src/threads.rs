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

#[cfg(test)]
mod tests {
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
}
