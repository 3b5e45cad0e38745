//! Dividing independent items (the samples of a batch, the planes of a
//! pooling input) between threads, for conv2d and the pooling ops.
//!
//! The thread count is [`gemm::num_threads`], so `TAPEGRAD_THREADS` and
//! [`gemm::set_num_threads`] govern every parallel op alike. One task per
//! thread, each a contiguous range of items; with one task everything runs
//! on the calling thread, without touching rayon.

use crate::gemm;
use std::ops::Range;

/// Splits `0..items` into one contiguous, near-equal range per task: one task
/// per thread, at most one per item, and a single task when the whole job
/// is below `min_work` (in the caller's units, `work_per_item` per item), where
/// waking a second thread would cost more than it saves.
pub(crate) fn split_work(items: usize, work_per_item: usize, min_work: usize) -> Vec<Range<usize>> {
    let tasks = if items.saturating_mul(work_per_item) < min_work {
        1
    } else {
        gemm::num_threads().min(items).max(1)
    };
    (0..tasks)
        .map(|t| items * t / tasks..items * (t + 1) / tasks)
        .collect()
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

/// Runs `f` on every job: on the calling thread when there is one job (its
/// GEMMs may then use every thread), else in parallel on rayon's pool, the
/// first job on the calling thread, each job's GEMMs kept on its own thread
/// ([`gemm::on_this_thread`]).
pub(crate) fn run_jobs<J: Send>(jobs: Vec<J>, f: impl Fn(J) + Sync) {
    let mut jobs = jobs.into_iter();
    let Some(first) = jobs.next() else { return };
    if jobs.len() == 0 {
        return f(first);
    }
    let f = &f;
    crate::threads::in_place_scope(|s| {
        for job in jobs {
            s.spawn(move |_| gemm::on_this_thread(|| f(job)));
        }
        gemm::on_this_thread(|| f(first));
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
    fn chunks_follow_the_ranges() {
        let mut data: Vec<usize> = (0..12).collect();
        let ranges = [0..1, 1..4];
        let chunks = split_by(&mut data, &ranges, 3);
        assert_eq!(chunks[0], &[0, 1, 2]);
        assert_eq!(chunks[1], &[3, 4, 5, 6, 7, 8, 9, 10, 11]);
    }
}
