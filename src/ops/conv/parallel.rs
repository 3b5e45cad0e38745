//! Dividing independent items (the samples of a batch, the planes of a
//! pooling input) between threads, for conv2d and the pooling ops.
//!
//! The thread count is [`gemm::num_threads`], so `TAPEGRAD_THREADS` and
//! [`gemm::set_num_threads`] govern every parallel op alike. The items are cut
//! into a few contiguous chunks per thread, and each thread takes the next
//! chunk when it has finished one: on a machine whose cores do not run at the
//! same speed (a VM whose host shares one of its cores with another tenant,
//! as on the benchmark machine), the faster core does more chunks instead of
//! waiting for the slower one. Each chunk has its own output slice and its own
//! partial sums, added up in chunk order afterwards, so results do not depend
//! on which thread ran which chunk. With one thread everything runs on the
//! calling thread, without touching the pool.

use crate::gemm;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Mutex;

/// Chunks per thread: enough for a fast core to take over a slow core's
/// share, few enough that per-chunk setup and partial sums stay small.
const CHUNKS_PER_THREAD: usize = 4;

/// Splits `0..items` into contiguous, near-equal ranges: [`CHUNKS_PER_THREAD`]
/// per thread (at most one per item), and a single range when the whole job
/// is below `min_work` (in the caller's units, `work_per_item` per item) or
/// there is one thread, where waking a second thread would cost more than it
/// saves.
pub(crate) fn split_work(items: usize, work_per_item: usize, min_work: usize) -> Vec<Range<usize>> {
    let threads = gemm::num_threads();
    let tasks = if threads < 2 || items.saturating_mul(work_per_item) < min_work {
        1
    } else {
        (threads * CHUNKS_PER_THREAD).min(items).max(1)
    };
    (0..tasks)
        .map(|t| items * t / tasks..items * (t + 1) / tasks)
        .collect()
}

/// The independent planes of a pooling or resampling call (the N·C planes of
/// an NCHW input): `count` of them, `input` and `output` elements each, and
/// about `work` units of work (elements visited) per plane.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Planes {
    pub count: usize,
    pub input: usize,
    pub output: usize,
    pub work: usize,
}

/// Below this many elements visited in all, a plane-wise op runs on one thread.
const MIN_PLANE_WORK: usize = 1 << 16;

impl Planes {
    /// The planes split between threads (one range unless the work is large).
    pub(crate) fn split(&self) -> Vec<Range<usize>> {
        split_work(self.count, self.work, MIN_PLANE_WORK)
    }

    /// Splits `out` (`per` elements for each plane) along [`split`](Self::split)
    /// and runs `f(planes, chunk)` on each part, in parallel. Each plane is
    /// computed by one thread alone, so the result does not depend on the
    /// thread count.
    pub(crate) fn par<U: Send>(
        &self,
        out: &mut [U],
        per: usize,
        f: impl Fn(Range<usize>, &mut [U]) + Sync,
    ) {
        let ranges = self.split();
        let jobs: Vec<_> = ranges
            .iter()
            .cloned()
            .zip(split_by(out, &ranges, per))
            .collect();
        run_jobs(jobs, |(planes, out)| f(planes, out));
    }
}

/// Cuts `data` into one chunk per range, `per` elements per index of the range.
pub(crate) fn split_by<'a, T>(
    mut data: &'a mut [T],
    ranges: &[Range<usize>],
    per: usize,
) -> Vec<&'a mut [T]> {
    ranges
        .iter()
        .map(|r| {
            let (head, tail) = std::mem::take(&mut data).split_at_mut(r.len() * per);
            data = tail;
            head
        })
        .collect()
}

/// Runs `f` on every job: on the calling thread when there is one job or one
/// thread (its GEMMs may then use every thread), else on the calling thread
/// and the pool's workers together, each job's GEMMs kept on its own thread
/// ([`gemm::on_this_thread`]) and the calling thread's test switches
/// ([`gemm::force_avx2`] and the like) handed on. Thread `t` of `T` runs the `t`-th of `T`
/// near-equal runs of consecutive jobs, front to back, and when it is done
/// takes jobs from the back of the others' runs. So a batch split the same
/// way by consecutive ops stays on the same cores (and caches) unless one
/// thread falls behind.
pub(crate) fn run_jobs<J: Send>(jobs: Vec<J>, f: impl Fn(J) + Sync) {
    run_jobs_on(gemm::num_threads(), jobs, f)
}

/// [`run_jobs`] on up to `threads` threads.
fn run_jobs_on<J: Send>(threads: usize, jobs: Vec<J>, f: impl Fn(J) + Sync) {
    let threads = threads.min(jobs.len());
    if threads < 2 {
        return jobs.into_iter().for_each(f);
    }
    let n = jobs.len();
    let mut jobs = jobs.into_iter();
    let runs: Vec<Mutex<VecDeque<J>>> = (0..threads)
        .map(|t| {
            Mutex::new(
                jobs.by_ref()
                    .take(n * (t + 1) / threads - n * t / threads)
                    .collect(),
            )
        })
        .collect();
    let lock = |t: usize| runs[t].lock().unwrap_or_else(|e| e.into_inner());
    // The calling thread's test switches, for the jobs run by the others.
    let sw = gemm::switches::current();
    crate::threads::run(threads, |t| {
        gemm::switches::with(sw, || {
            gemm::on_this_thread(|| {
                // A lock is held only to take a job, not while running it.
                while let Some(job) = {
                    let own = lock(t).pop_front();
                    own.or_else(|| (1..threads).find_map(|d| lock((t + d) % threads).pop_back()))
                } {
                    f(job);
                }
            })
        })
    });
}

/// One chunk of a conv backward: its samples, its part of dX, and its own
/// partial sums of the weight gradient (or of Winograd's dU) and of db.
pub(crate) struct BackwardJob<'a, T> {
    pub samples: Range<usize>,
    pub dx: Option<&'a mut [T]>,
    pub dw: Option<&'a mut [T]>,
    pub db: Option<&'a mut [T]>,
}

/// The per-chunk partial sums of a conv backward: one run of `len` elements
/// per chunk when the gradient is wanted, none otherwise.
pub(crate) struct Partials<T> {
    data: Vec<T>,
    len: usize,
    wanted: bool,
}

impl<T: crate::Float> Partials<T> {
    /// Room for `chunks` partial sums of `len` elements each, if `wanted`;
    /// [`run_backward_jobs`] clears each chunk's part before its job runs.
    pub(crate) fn new(wanted: bool, chunks: usize, len: usize) -> Self {
        Partials {
            data: crate::buffer::scratch(if wanted { chunks * len } else { 0 }),
            len,
            wanted,
        }
    }

    /// The partials added up in chunk order (contiguous adds, split between
    /// threads when long), or `None` if the gradient was not wanted. The
    /// result does not depend on which thread ran which chunk.
    pub(crate) fn sum(mut self) -> Option<Vec<T>> {
        if !self.wanted {
            return None;
        }
        let len = self.len;
        if len == 0 {
            return Some(Vec::new());
        }
        let (total, rest) = self.data.split_at_mut(len);
        crate::threads::for_each_part(total, 1 << 15, |off, t| {
            for part in rest.chunks_exact(len) {
                t.iter_mut().zip(&part[off..]).for_each(|(a, &b)| *a += b);
            }
        });
        if self.data.len() == len {
            return Some(self.data);
        }
        // A copy, and the runs go back to the pool at their full length:
        // truncated, the next call's `scratch` of this size would zero
        // what lay past the first run (1.75 MB on `deep`).
        let mut out = crate::buffer::with_capacity(len);
        out.extend_from_slice(&self.data[..len]);
        crate::buffer::recycle(self.data);
        Some(out)
    }
}

/// The outputs of a conv backward whose batch is cut into `ranges`: dX
/// (unspecified values until each chunk writes its part), and the chunks'
/// partial sums of the weight gradient (`dw_len` each) and of db, for the
/// gradients wanted.
pub(crate) struct BackwardBuffers<T> {
    pub dx: Option<Vec<T>>,
    pub dw: Partials<T>,
    pub db: Partials<T>,
}

impl<T: crate::Float> BackwardBuffers<T> {
    /// Buffers for `chunks` chunks; `need` is whether dX, dW and db are wanted.
    pub(crate) fn new(
        geom: &super::Conv2dGeometry,
        chunks: usize,
        [need_dx, need_dw, need_db]: [bool; 3],
        dw_len: usize,
    ) -> Self {
        BackwardBuffers {
            dx: need_dx.then(|| crate::buffer::scratch(geom.input_shape().iter().product())),
            dw: Partials::new(need_dw, chunks, dw_len),
            db: Partials::new(need_db, chunks, geom.out_channels),
        }
    }

    /// One job per range of samples: its part of dX and its own run of the
    /// dW and db partial sums.
    pub(crate) fn jobs<'a>(
        &'a mut self,
        geom: &super::Conv2dGeometry,
        ranges: &[Range<usize>],
    ) -> Vec<BackwardJob<'a, T>> {
        let dx_per_sample = geom.in_channels * geom.in_hw();
        let mut dx = self
            .dx
            .as_deref_mut()
            .map(|d| split_by(d, ranges, dx_per_sample).into_iter());
        // Empty runs (nothing wanted, or a zero-length gradient) give `None`.
        let mut dw = self.dw.data.chunks_mut(self.dw.len.max(1));
        let mut db = self.db.data.chunks_mut(self.db.len.max(1));
        ranges
            .iter()
            .map(|r| BackwardJob {
                samples: r.clone(),
                dx: dx.as_mut().and_then(Iterator::next),
                dw: dw.next(),
                db: db.next(),
            })
            .collect()
    }
}

/// [`run_jobs`] for backward jobs: each job's partial sums are cleared on
/// the thread that runs it (as [`Partials`] requires), then `f` runs —
/// except the dW partial when `f` writes it whole (`dw_written`: the first
/// product of a job with samples overwrites it, sparing a clear of the
/// whole run). A job without samples (an empty batch) thus contributes
/// zeros.
pub(crate) fn run_backward_jobs<'a, T: crate::Float>(
    jobs: Vec<BackwardJob<'a, T>>,
    dw_written: bool,
    f: impl Fn(BackwardJob<'a, T>) + Sync,
) {
    run_jobs(jobs, |mut job| {
        let clear_dw = !dw_written || job.samples.is_empty();
        let dw = job.dw.as_deref_mut().filter(|_| clear_dw);
        for part in [dw, job.db.as_deref_mut()].into_iter().flatten() {
            part.fill(T::ZERO);
        }
        f(job)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_items_evenly() {
        for items in 0..20 {
            let r = split_work(items, 1, 0);
            assert_eq!(r.first().map_or(0, |r| r.start), 0);
            assert_eq!(r.last().map_or(0, |r| r.end), items);
            assert!(r.windows(2).all(|w| w[0].end == w[1].start));
            let lens: Vec<usize> = r.iter().map(|r| r.len()).collect();
            assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
        }
        assert_eq!(split_work(100, 10, 2000).len(), 1);
    }

    #[test]
    fn every_job_runs_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // With job 0 slow, the other threads finish their own runs and take
        // jobs from the back of the first.
        for threads in [1, 2, 3] {
            for slow in [false, true] {
                let hits: Vec<AtomicUsize> = (0..37).map(|_| AtomicUsize::new(0)).collect();
                run_jobs_on(threads, (0..37).collect(), |i: usize| {
                    if slow && i == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                let what = format!("{threads} threads, slow {slow}");
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn a_thread_that_falls_behind_has_its_last_jobs_taken() {
        // Thread 0's run is jobs 0..10, thread 1's 10..20. Job 0 blocks until
        // job 9 has run: only the other thread can run job 9 (from the back
        // of thread 0's run), so the test ends only if stealing works. Run
        // serially (the pool busy with another test), job 0 would wait for
        // ever: the region is then retried until it gets the pool.
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};
        let stolen = (0..200).any(|_| {
            let nine = AtomicBool::new(false);
            let gave_up = AtomicBool::new(false);
            run_jobs_on(2, (0..20).collect(), |i: usize| {
                if i == 9 {
                    nine.store(true, Ordering::SeqCst);
                }
                if i == 0 {
                    let t0 = Instant::now();
                    while !nine.load(Ordering::SeqCst) {
                        if t0.elapsed() > Duration::from_millis(50) {
                            gave_up.store(true, Ordering::SeqCst);
                            break;
                        }
                        std::thread::yield_now();
                    }
                }
            });
            !gave_up.load(Ordering::SeqCst)
        });
        assert!(stolen, "job 9 never ran while job 0 waited for it");
    }

    #[test]
    fn chunks_follow_the_ranges() {
        let mut data: Vec<usize> = (0..12).collect();
        let ranges = [0..1, 1..4];
        let chunks = split_by(&mut data, &ranges, 3);
        assert_eq!(chunks[0], &[0, 1, 2]);
        assert_eq!(chunks[1], &[3, 4, 5, 6, 7, 8, 9, 10, 11]);
    }
}
