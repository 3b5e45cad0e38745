//! The worker threads behind every parallel op (conv, pooling, GEMM splits,
//! large elementwise kernels and fills).
//!
//! A parallel region ([`run`]) cuts its work into a few numbered parts. The
//! calling thread and up to `parts − 1` workers take parts one at a time
//! until none is left; the caller returns when every part has finished. So
//! with [`gemm::num_threads`](crate::gemm::num_threads) = 2 exactly two
//! threads are busy. Each thread takes its own part first (the caller part
//! 0, worker `w` part `w + 1`), then any left over. Consecutive ops on a
//! batch split it the same way, so each core reads back from its own cache
//! what it wrote in the op before: at two threads this made `cnn_step`'s
//! ReLUs a third faster than when the parts went to whichever thread came
//! first.
//!
//! A training step runs a dozen short regions (0.05–1 ms each) with little
//! serial work between them (`cnn_step` runs 12). With rayon's pool,
//! used before, a worker asleep after a region took 7 µs to wake for the
//! next one, and ~30 µs after a millisecond of idleness (the host had halted
//! its vCPU); the caller in turn slept while it waited for the worker's last
//! part and woke late: a region of two 10 µs parts took 17–24 µs. Here a
//! worker polls for the next region for [`SPIN`] before it sleeps, and the
//! caller polls for the last part for as long, so the same region takes
//! 11.3 µs when the regions come less than 200 µs apart. The cost is a
//! worker's core kept busy for up to [`SPIN`] after each region, as OpenMP
//! runtimes do by default; with more threads than cores, nobody polls.
//!
//! A region started while another is running (from a part, or from a second
//! user thread) runs all its parts on its own thread, in order.

use std::any::Any;
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker polls for the next region, and the caller for the
/// end of its region, before sleeping.
const SPIN: Duration = Duration::from_micros(200);

/// [`SPIN`], or zero when the latest region used more threads than the
/// machine has cores: a polling thread would then take a core from one
/// with work to do.
fn spin() -> Duration {
    static CORES: OnceLock<usize> = OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if POOL.helpers.load(Ordering::Relaxed) < cores {
        SPIN
    } else {
        Duration::ZERO
    }
}

/// The work of one region, as the workers see it. The lifetime is a lie
/// told in [`run`], which does not return before the last use.
type Job = &'static (dyn Fn(usize) + Sync);

/// The region being run.
struct Region {
    /// Its number ([`Pool::epoch`] when it was posted).
    epoch: u64,
    job: Job,
    /// The workers it wants: `0..helpers`.
    helpers: usize,
    /// Whether each part has been taken.
    taken: Vec<bool>,
    /// Parts not taken yet.
    left: usize,
}

impl Region {
    /// Takes part `own` if it is free, else the last free part (but never
    /// part 0 for a worker: the caller is sure to come for it).
    fn take(&mut self, own: usize) -> Option<usize> {
        let i = if self.taken.get(own) == Some(&false) {
            own
        } else {
            let last = self.taken.iter().rposition(|&t| !t)?;
            if last == 0 && own != 0 {
                return None;
            }
            last
        };
        self.taken[i] = true;
        self.left -= 1;
        Some(i)
    }
}

struct Pool {
    /// The current region, if any; taken parts are counted under this lock.
    region: Mutex<Option<Region>>,
    /// Raised on every new region; idle workers poll it without the lock.
    epoch: AtomicU64,
    /// The latest region's [`Region::helpers`], set before `epoch` is raised:
    /// a worker it does not want goes on waiting without taking the lock.
    helpers: AtomicUsize,
    /// Parts of the current region not finished yet.
    pending: AtomicUsize,
    /// Workers sleeping on `wake` (read under the `region` lock).
    sleepers: AtomicUsize,
    wake: Condvar,
    /// Whether the caller sleeps on `done` (read under the `region` lock).
    caller_sleeps: AtomicBool,
    done: Condvar,
    /// The first panic of a part run by a worker, for the caller to resume.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Held by the thread running a region.
    busy: AtomicBool,
    /// Workers started so far (they run until the process exits).
    started: AtomicUsize,
    /// Held while starting workers.
    starting: Mutex<()>,
}

static POOL: Pool = Pool {
    region: Mutex::new(None),
    epoch: AtomicU64::new(0),
    helpers: AtomicUsize::new(0),
    pending: AtomicUsize::new(0),
    sleepers: AtomicUsize::new(0),
    wake: Condvar::new(),
    caller_sleeps: AtomicBool::new(false),
    done: Condvar::new(),
    panic: Mutex::new(None),
    busy: AtomicBool::new(false),
    started: AtomicUsize::new(0),
    starting: Mutex::new(()),
};

thread_local! {
    /// Set while this thread runs a part: a region started inside one runs inline.
    static IN_PART: Cell<bool> = const { Cell::new(false) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A part's panic is caught before it can poison a lock; recover anyway.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f(0)`, …, `f(parts − 1)`, each exactly once, on this thread and up
/// to `parts − 1` worker threads (fewer if
/// [`gemm::num_threads`](crate::gemm::num_threads) is lower), and returns
/// when all have finished. A panic in a part is resumed here once every part
/// that started has finished; after a panic in the caller's own part, parts
/// no thread has taken yet are skipped.
pub(crate) fn run(parts: usize, f: impl Fn(usize) + Sync) {
    // Workers to wake: never more threads than `gemm::num_threads`.
    let helpers = parts.min(crate::gemm::num_threads()).saturating_sub(1);
    if helpers == 0 || IN_PART.with(|p| p.get()) {
        return (0..parts).for_each(f);
    }
    start_workers(helpers);
    if POOL
        .busy
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return (0..parts).for_each(f);
    }
    let f: &(dyn Fn(usize) + Sync) = &f;
    // SAFETY: only the lifetime changes. Workers use `job` only for a part
    // they took from this region, and this function does not return, nor
    // unwind, before `pending` says every part has finished (the wait below
    // runs whether or not the caller's own parts panicked), so `f` outlives
    // every use.
    let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
    // Relaxed: workers read it only after taking a part under the lock below.
    POOL.pending.store(parts, Ordering::Relaxed);
    let epoch = {
        let mut region = lock(&POOL.region);
        let epoch = POOL.epoch.load(Ordering::Relaxed) + 1;
        *region = Some(Region {
            epoch,
            job,
            helpers,
            taken: vec![false; parts],
            left: parts,
        });
        POOL.helpers.store(helpers, Ordering::Relaxed);
        POOL.epoch.store(epoch, Ordering::Release);
        if POOL.sleepers.load(Ordering::Relaxed) > 0 {
            POOL.wake.notify_all();
        }
        epoch
    };
    let own = catch_unwind(AssertUnwindSafe(|| {
        IN_PART.with(|p| p.set(true));
        while let Some((job, i)) = take(epoch, 0) {
            job(i);
            POOL.pending.fetch_sub(1, Ordering::Release);
        }
    }));
    if own.is_err() {
        // Parts left untaken will not run; count them as finished.
        let mut region = lock(&POOL.region);
        if let Some(r) = region.as_mut() {
            POOL.pending.fetch_sub(r.left, Ordering::Release);
            r.taken.fill(true);
            r.left = 0;
        }
        // The caller's own part counted as finished too.
        POOL.pending.fetch_sub(1, Ordering::Release);
    }
    IN_PART.with(|p| p.set(false));
    wait_for_workers();
    *lock(&POOL.region) = None;
    let worker_panic = lock(&POOL.panic).take();
    POOL.busy.store(false, Ordering::Release);
    if let Err(p) = own {
        std::mem::forget(worker_panic);
        resume_unwind(p);
    }
    if let Some(p) = worker_panic {
        resume_unwind(p);
    }
}

/// Takes a part of region `epoch`, if it is still running and has one left:
/// part `own` if free (the caller's is 0, worker `w`'s is `w + 1`), else the
/// last one left (see [`Region::take`]). A thread thus runs the same part of every region, and so
/// (for ops split the same way, as consecutive ops on one batch are) reads
/// what it wrote in the previous region from its own core's cache.
fn take(epoch: u64, own: usize) -> Option<(Job, usize)> {
    let mut region = lock(&POOL.region);
    let r = region.as_mut().filter(|r| r.epoch == epoch)?;
    r.take(own).map(|i| (r.job, i))
}

/// Returns once `pending` is 0: polls for [`spin()`], then sleeps on `done`.
fn wait_for_workers() {
    let (t0, spin) = (Instant::now(), spin());
    while POOL.pending.load(Ordering::Acquire) != 0 {
        if t0.elapsed() < spin {
            std::hint::spin_loop();
            continue;
        }
        let mut region = lock(&POOL.region);
        POOL.caller_sleeps.store(true, Ordering::Relaxed);
        while POOL.pending.load(Ordering::Acquire) != 0 {
            region = POOL.done.wait(region).unwrap_or_else(|e| e.into_inner());
        }
        POOL.caller_sleeps.store(false, Ordering::Relaxed);
    }
}

/// Starts workers until there are at least `n`.
fn start_workers(n: usize) {
    if POOL.started.load(Ordering::Acquire) >= n {
        return;
    }
    let _one_at_a_time = lock(&POOL.starting);
    while POOL.started.load(Ordering::Relaxed) < n {
        let index = POOL.started.load(Ordering::Relaxed);
        // Regions up to now are seen: the one about to be posted is not,
        // however late the thread starts.
        let seen = POOL.epoch.load(Ordering::Acquire);
        std::thread::Builder::new()
            .name(format!("tapegrad-{index}"))
            .spawn(move || worker(index, seen))
            .expect("tapegrad: could not start a worker thread");
        POOL.started.store(index + 1, Ordering::Release);
    }
}

/// A worker's loop: wait for a region that wants it, take its parts until
/// none is left, repeat.
fn worker(index: usize, mut seen: u64) {
    IN_PART.with(|p| p.set(true));
    loop {
        seen = next_region(seen, index);
        while let Some((job, i)) = take(seen, index + 1) {
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| job(i))) {
                let mut first = lock(&POOL.panic);
                if first.is_none() {
                    *first = Some(p);
                } else {
                    // Not dropped here: a payload whose drop panicked would
                    // end this thread before the part is counted as finished.
                    std::mem::forget(p);
                }
            }
            if POOL.pending.fetch_sub(1, Ordering::Release) == 1 {
                // The last part: wake the caller if it went to sleep. Checked
                // under the lock, so a caller about to sleep sees `pending` 0.
                let _region = lock(&POOL.region);
                if POOL.caller_sleeps.load(Ordering::Relaxed) {
                    POOL.done.notify_one();
                }
            }
        }
    }
}

/// Waits for a region after `seen` that wants worker `index` (see
/// [`Region::helpers`]); returns its epoch.
fn next_region(mut seen: u64, index: usize) -> u64 {
    let (mut t0, spin) = (Instant::now(), spin());
    loop {
        let epoch = POOL.epoch.load(Ordering::Acquire);
        if epoch != seen && index >= POOL.helpers.load(Ordering::Relaxed) {
            // Not wanted: seen, and the wait goes on as before.
            seen = epoch;
            continue;
        }
        if epoch != seen {
            let wanted = lock(&POOL.region)
                .as_ref()
                .filter(|r| r.epoch > seen && index < r.helpers)
                .map(|r| r.epoch);
            if let Some(e) = wanted {
                return e;
            }
            // Over, or not wanting this worker: seen.
            seen = epoch;
            t0 = Instant::now();
            continue;
        }
        if t0.elapsed() < spin {
            std::hint::spin_loop();
            continue;
        }
        let mut region = lock(&POOL.region);
        POOL.sleepers.fetch_add(1, Ordering::Relaxed);
        while POOL.epoch.load(Ordering::Acquire) == seen {
            region = POOL.wake.wait(region).unwrap_or_else(|e| e.into_inner());
        }
        POOL.sleepers.fetch_sub(1, Ordering::Relaxed);
        // `t0` is left as it was: woken for a region that does not want it,
        // the worker goes back to sleep at once.
        drop(region);
    }
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
    let parts: Vec<Mutex<Option<&mut [T]>>> =
        out.chunks_mut(chunk).map(|p| Mutex::new(Some(p))).collect();
    run(parts.len(), |i| {
        if let Some(part) = lock(&parts[i]).take() {
            f(i * chunk, part);
        }
    });
}

/// Runs `f(job)` once for every job, each job on one of up to `threads`
/// threads (see [`run`]).
pub(crate) fn for_each_job<J: Send>(jobs: Vec<J>, f: impl Fn(J) + Sync) {
    let jobs: Vec<Mutex<Option<J>>> = jobs.into_iter().map(|j| Mutex::new(Some(j))).collect();
    run(jobs.len(), |i| {
        if let Some(job) = lock(&jobs[i]).take() {
            f(job);
        }
    });
}

/// Runs `f` once on this thread and once on each of the first
/// `threads − 1` workers (capped by
/// [`gemm::num_threads`](crate::gemm::num_threads)), for per-thread
/// housekeeping. Each part waits (20 ms at most) until every part has
/// started, so that no thread takes two; a worker that misses the region
/// anyway (it was slow to wake, or the region ran on this thread alone)
/// simply does not run `f`.
pub(crate) fn on_every_thread(threads: usize, f: impl Fn() + Sync) {
    let started = AtomicUsize::new(0);
    run(threads, |_| {
        f();
        started.fetch_add(1, Ordering::AcqRel);
        let t0 = Instant::now();
        while started.load(Ordering::Acquire) < threads && t0.elapsed() < Duration::from_millis(20)
        {
            std::thread::yield_now();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::{for_each_part_on, run};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_part_runs_once_before_run_returns() {
        for parts in [0, 1, 2, 3, 7] {
            let counts: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
            run(parts, |i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                counts.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                "{parts}"
            );
        }
    }

    /// Held by the tests that keep the pool busy for long and by those that
    /// check which thread ran a part (a region started while the pool is
    /// busy runs on its own thread).
    static EXCLUSIVE: Mutex<()> = Mutex::new(());

    fn exclusive() -> std::sync::MutexGuard<'static, ()> {
        EXCLUSIVE.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The threads that ran parts 0 and 1 of a region of two slow parts.
    fn who_ran_two_parts() -> (std::thread::ThreadId, std::thread::ThreadId) {
        let ids = Mutex::new([None; 2]);
        run(2, |i| {
            ids.lock().unwrap()[i] = Some(std::thread::current().id());
            std::thread::sleep(std::time::Duration::from_millis(1));
        });
        let [a, b] = ids.into_inner().unwrap();
        (a.unwrap(), b.unwrap())
    }

    #[test]
    fn each_thread_runs_its_own_part() {
        let _pool = exclusive();
        // Part 0 is the caller's, part 1 worker 0's (when the pool is free:
        // other tests may hold it, and the region then runs on this thread).
        let me = std::thread::current().id();
        let mut pooled = 0;
        for _ in 0..200 {
            let (zero, one) = who_ran_two_parts();
            assert_eq!(zero, me);
            pooled += (one != me) as usize;
        }
        assert!(pooled > 0, "no region ran on a worker");
    }

    #[test]
    fn a_region_after_idling_wakes_a_sleeping_worker() {
        let _pool = exclusive();
        // Longer than the polling: the worker is asleep when the region comes.
        let me = std::thread::current().id();
        let woken = (0..40)
            .filter(|_| {
                std::thread::sleep(super::SPIN * 5);
                who_ran_two_parts().1 != me
            })
            .count();
        // A lost wake-up would leave every part 1 to the caller; a few may
        // run here because another test holds the pool.
        assert!(
            woken >= 20,
            "part 1 ran on a worker in {woken} of 40 regions"
        );
    }

    /// Random regions from several threads: parts of 2 to 8, some sleeping,
    /// some nesting a region, some panicking (the caller's or a worker's).
    /// `run` never returns or unwinds while a part still runs, no part runs
    /// twice, and every part runs unless the caller's own part panicked.
    #[test]
    fn no_part_outlives_its_region() {
        let _pool = exclusive();
        fn next(s: &mut u64) -> u64 {
            *s ^= *s << 13;
            *s ^= *s >> 7;
            *s ^= *s << 17;
            *s
        }
        std::thread::scope(|sc| {
            for u in 0..3u64 {
                sc.spawn(move || {
                    let mut seed = 0x9E37_79B9_7F4A_7C15 ^ (u + 1);
                    for _ in 0..500 {
                        let parts = 2 + (next(&mut seed) % 7) as usize;
                        let (bad, pause) = ((next(&mut seed) % 10) as usize, next(&mut seed) % 3);
                        let active = AtomicUsize::new(0);
                        let runs: Vec<AtomicUsize> =
                            (0..parts).map(|_| AtomicUsize::new(0)).collect();
                        let r = std::panic::catch_unwind(|| {
                            run(parts, |i| {
                                active.fetch_add(1, Ordering::SeqCst);
                                runs[i].fetch_add(1, Ordering::SeqCst);
                                match pause {
                                    1 => std::thread::sleep(std::time::Duration::from_micros(300)),
                                    2 => std::thread::yield_now(),
                                    _ => {}
                                }
                                active.fetch_sub(1, Ordering::SeqCst);
                                if i == bad {
                                    // Unwinds without the panic hook's message.
                                    std::panic::resume_unwind(Box::new(i));
                                }
                                if i == 1 && bad == 5 {
                                    run(2, |_| {});
                                }
                            })
                        });
                        assert_eq!(active.load(Ordering::SeqCst), 0, "a part outlived run");
                        assert!(runs.iter().all(|c| c.load(Ordering::SeqCst) <= 1));
                        if bad < parts {
                            assert!(r.is_err());
                        } else {
                            assert!(r.is_ok());
                            assert!(runs.iter().all(|c| c.load(Ordering::SeqCst) == 1));
                        }
                    }
                });
            }
        });
    }

    #[test]
    fn nested_and_concurrent_regions_run_every_part() {
        let _pool = exclusive();
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        run(3, |_| {
                            run(2, |_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            })
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 200 * 3 * 2);
    }

    #[test]
    fn a_panicking_part_reaches_the_caller_after_the_others_finish() {
        let _pool = exclusive();
        for bad in [0, 1] {
            let (started, finished) = (AtomicUsize::new(0), AtomicUsize::new(0));
            let r = std::panic::catch_unwind(|| {
                run(2, |i| {
                    if i == bad {
                        panic!("part {i}");
                    }
                    started.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    finished.fetch_add(1, Ordering::Relaxed);
                })
            });
            assert!(r.is_err(), "part {bad}");
            // The other part either ran to its end before the panic reached
            // here, or (left untaken after the caller's panic) never started.
            assert_eq!(
                started.load(Ordering::Relaxed),
                finished.load(Ordering::Relaxed)
            );
            // The pool is usable again.
            let n = AtomicUsize::new(0);
            run(2, |_| {
                n.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(n.load(Ordering::Relaxed), 2);
        }
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
