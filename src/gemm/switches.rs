//! Test and benchmark switches: which family of micro-kernels runs, and
//! which Winograd variant every Winograd conv takes.
//!
//! Each switch has a process-wide default (what the benchmark's `--avx2` and
//! `--winograd-tile` set) and a per-thread override, set by a
//! [`SwitchGuard`] for as long as it lives. An op reads the calling thread's
//! setting when it starts and hands it to the worker threads that run its
//! parts ([`current`] and [`with`]), so a test that holds a guard changes its
//! own ops only, never those of tests running at the same time on other
//! threads.

use super::Path;
use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// The overrides in force on one thread (`None`: the process default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Switches {
    /// The kernel family.
    path: Option<Path>,
    /// The Winograd tile: 2 or 4, or 0 for the one each geometry picks.
    tile: Option<usize>,
}

thread_local! {
    static LOCAL: Cell<Switches> = const { Cell::new(Switches { path: None, tile: None }) };
}

/// The process-wide kernel family: 0 auto, 1 AVX2, 2 portable.
static DEFAULT_PATH: AtomicU8 = AtomicU8::new(0);
/// The process-wide Winograd tile (0: each geometry picks).
static DEFAULT_TILE: AtomicUsize = AtomicUsize::new(0);

/// This thread's overrides, to hand to the threads that run parts of an op.
pub(crate) fn current() -> Switches {
    LOCAL.with(Cell::get)
}

/// Runs `f` with `s` as this thread's overrides, then restores the previous
/// ones (also if `f` panics). Worker threads run an op's parts inside this,
/// with the overrides of the thread that started the op.
pub(crate) fn with<R>(s: Switches, f: impl FnOnce() -> R) -> R {
    let _restore = SwitchGuard::install(s);
    f()
}

/// Installs `s` as this thread's overrides until the guard is dropped: the
/// form of [`with`] for a closure that cannot be wrapped.
pub(crate) fn install(s: Switches) -> SwitchGuard {
    SwitchGuard::install(s)
}

/// The kernel family for a product started now on this thread.
pub(super) fn path() -> Path {
    current()
        .path
        .unwrap_or_else(|| match DEFAULT_PATH.load(Ordering::Relaxed) {
            1 => Path::Avx2,
            2 => Path::Portable,
            _ => Path::Auto,
        })
}

/// The Winograd tile forced on this thread (2 or 4), or 0: each geometry picks.
pub(crate) fn winograd_tile() -> usize {
    current()
        .tile
        .unwrap_or_else(|| DEFAULT_TILE.load(Ordering::Relaxed))
}

/// Sets the process-wide kernel family (what threads without an override use).
pub(super) fn set_default_path(p: Path) {
    let code = match p {
        Path::Auto => 0,
        Path::Avx2 => 1,
        Path::Portable => 2,
    };
    DEFAULT_PATH.store(code, Ordering::Relaxed);
}

/// Sets the process-wide Winograd tile (0, 2 or 4; checked by the caller).
pub(crate) fn set_default_tile(tile: usize) {
    DEFAULT_TILE.store(tile, Ordering::Relaxed);
}

/// Overrides this thread's kernel family until the guard is dropped.
pub(super) fn force_path(p: Path) -> SwitchGuard {
    SwitchGuard::install(Switches {
        path: Some(p),
        ..current()
    })
}

/// Overrides this thread's Winograd tile (0, 2 or 4) until the guard is dropped.
pub(crate) fn force_tile(tile: usize) -> SwitchGuard {
    SwitchGuard::install(Switches {
        tile: Some(tile),
        ..current()
    })
}

/// A test or benchmark switch set on the calling thread (and on the worker
/// threads of the ops it starts) for as long as the guard lives; dropping it
/// restores the previous setting. Returned by
/// [`force_avx2`](super::force_avx2), [`force_portable`](super::force_portable)
/// and [`conv::force_winograd_tile`](crate::conv::force_winograd_tile).
/// Guards nest (drop them in the reverse order of their creation, as scopes
/// do); a guard stays on its thread (it is not `Send`).
///
/// ```
/// use tapegrad::gemm::{force_portable, sgemm};
/// let mut c = [0.0f32];
/// {
///     let _portable = force_portable(true);
///     sgemm(1, 1, 2, 1.0, &[1.0, 2.0], 2, 1, &[3.0, 4.0], 1, 1, 0.0, &mut c, 1);
/// } // the best kernels again from here
/// assert_eq!(c, [11.0]);
/// ```
#[must_use = "the switch is undone when the guard is dropped"]
#[derive(Debug)]
pub struct SwitchGuard {
    prev: Switches,
    /// Restores a thread-local value: must be dropped on its own thread.
    _not_send: PhantomData<*const ()>,
}

impl SwitchGuard {
    fn install(s: Switches) -> Self {
        SwitchGuard {
            prev: LOCAL.with(|l| l.replace(s)),
            _not_send: PhantomData,
        }
    }
}

impl Drop for SwitchGuard {
    fn drop(&mut self) {
        LOCAL.with(|l| l.set(self.prev));
    }
}
