//! Bounded mutation fuzz of the file loaders: `io::from_safetensors_bytes` and
//! `data::mnist::{parse_idx_images, parse_idx_labels}`.
//!
//! Valid files are built (safetensors with `io::to_safetensors_bytes`, IDX by hand),
//! then mutated with seeded edits: bit flips, interesting byte values, truncation,
//! junk appended, a rewritten header length, JSON numbers and dtypes replaced by
//! extreme values, IDX dimensions set huge, ranges duplicated or deleted. For every
//! mutant the loaders must return (no panic), must not ask the allocator for more
//! than `max(64 × input length, 1 MiB)` in one request or in live bytes, and an `Ok`
//! must be self-consistent.
//!
//! A counting global allocator measures the requests of the thread it is armed on
//! (a request too large to be honest is refused, so a runaway allocation aborts
//! rather than thrashing; rerun with `FUZZ_TRACE=1` to see the case that did it).

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use tapegrad::data::mnist::{self, IdxImages};
use tapegrad::{Tensor, io};

// ---------------------------------------------------------------------------
// Counting allocator
// ---------------------------------------------------------------------------

/// Requests above this are refused outright while armed (the loader would then
/// abort the process: better than swapping the machine to death).
const HARD_CAP: usize = 1 << 30;

#[derive(Clone, Copy, Default)]
struct Stats {
    /// Largest single request (alloc, alloc_zeroed or the new size of a realloc).
    largest: usize,
    /// Bytes allocated and not yet freed by this thread since arming.
    live: isize,
    /// Highest `live` seen.
    peak: isize,
}

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates, so the
    // allocator can use it.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static STATS: Cell<Stats> = const { Cell::new(Stats { largest: 0, live: 0, peak: 0 }) };
}

struct Counting;

impl Counting {
    /// Records a request of `new` bytes replacing `old` bytes; false if it is refused.
    fn note(new: usize, old: usize) -> bool {
        let armed = ARMED.try_with(Cell::get).unwrap_or(false);
        if !armed {
            return true;
        }
        let _ = STATS.try_with(|s| {
            let mut st = s.get();
            st.largest = st.largest.max(new);
            st.live += new as isize - old as isize;
            st.peak = st.peak.max(st.live);
            s.set(st);
        });
        new <= HARD_CAP
    }

    fn freed(size: usize) {
        if ARMED.try_with(Cell::get).unwrap_or(false) {
            let _ = STATS.try_with(|s| {
                let mut st = s.get();
                st.live -= size as isize;
                s.set(st);
            });
        }
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged,
// so `System`'s guarantees carry over; the bookkeeping only touches this thread's
// `Cell`s (const-initialised, no destructor, so no allocation and no reentrancy),
// and a refused request returns null, which `GlobalAlloc` allows.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Counting::note(layout.size(), 0) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Counting::note(layout.size(), 0) {
            return std::ptr::null_mut();
        }
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        Counting::freed(layout.size());
        // SAFETY: `ptr` came from `System` with this layout (every block does).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !Counting::note(new_size, layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds the rest.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` with this thread's allocations counted; returns its result and the stats.
/// A panic inside `f` is caught and returned as `Err` with its message.
fn measured<R>(f: impl FnOnce() -> R) -> (std::thread::Result<R>, Stats) {
    STATS.with(|s| s.set(Stats::default()));
    ARMED.with(|a| a.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    ARMED.with(|a| a.set(false));
    (r, STATS.with(Cell::get))
}

fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = e.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

// ---------------------------------------------------------------------------
// Seed files
// ---------------------------------------------------------------------------

fn safetensors_seeds() -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(7);
    let w = Tensor::<f32>::randn([2, 3, 4], &mut rng);
    let b = Tensor::<f32>::from_vec(vec![0.5, -0.0, f32::NAN], [3]).unwrap();
    let s = Tensor::<f32>::scalar(1.25);
    let empty = Tensor::<f32>::zeros([0, 3]);
    let w64 = Tensor::<f64>::randn([3, 2], &mut rng);
    let one = Tensor::<f64>::ones([1, 1, 1, 5]);
    vec![
        io::to_safetensors_bytes(&[("conv.weight", &w), ("conv.bias", &b), ("scale", &s)]).unwrap(),
        io::to_safetensors_bytes(&[("a", &empty), ("b", &b)]).unwrap(),
        io::to_safetensors_bytes(&[("w", &w64), ("v", &one)]).unwrap(),
        io::to_safetensors_bytes::<f64>(&[]).unwrap(),
    ]
}

fn idx_images(count: u32, rows: u32, cols: u32) -> Vec<u8> {
    let mut b = mnist::IMAGES_MAGIC.to_be_bytes().to_vec();
    for d in [count, rows, cols] {
        b.extend(d.to_be_bytes());
    }
    b.extend((0..count * rows * cols).map(|i| (i * 37 % 256) as u8));
    b
}

fn idx_labels(count: u32) -> Vec<u8> {
    let mut b = mnist::LABELS_MAGIC.to_be_bytes().to_vec();
    b.extend(count.to_be_bytes());
    b.extend((0..count).map(|i| (i * 7 % 10) as u8));
    b
}

// ---------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------

const INTERESTING_BYTES: [u8; 10] = [0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE, b'"', b'[', b'9', b'-'];

const INTERESTING_U64: [u64; 12] = [
    0,
    1,
    7,
    8,
    0xFF,
    0x7FFF_FFFF,
    0xFFFF_FFFF,
    1 << 32,
    1 << 40,
    100_000_001,
    i64::MAX as u64,
    u64::MAX,
];

const INTERESTING_U32: [u32; 9] = [
    0,
    1,
    2,
    255,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    60_000,
    1 << 24,
];

/// Strings a JSON number of the header may become.
const JSON_NUMBERS: [&str; 12] = [
    "0",
    "1",
    "-1",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "1e300",
    "0.5",
    "99999999999999999999999999",
    "null",
    "[]",
];

/// Whole headers: shapes whose product overflows or is zero times huge, a scalar,
/// metadata, deep nesting, offsets past the data.
const WHOLE_HEADERS: [&str; 9] = [
    r#"{"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#,
    r#"{"x":{"dtype":"F32","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}}"#,
    r#"{"x":{"dtype":"F64","shape":[0,18446744073709551615,18446744073709551615,2],"data_offsets":[0,0]}}"#,
    r#"{"x":{"dtype":"F64","shape":[],"data_offsets":[0,8]}}"#,
    r#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"y":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
    r#"{"__metadata__":{"k":"v"},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
    r#"{"x":{"dtype":"F32","shape":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],"data_offsets":[0,4]}}"#,
    r#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[18446744073709551611,18446744073709551615]}}"#,
    "{}",
];

const DTYPES: [&str; 8] = ["F32", "F64", "F16", "BF16", "I64", "BOOL", "U8", "XYZ"];

/// A byte range `start..end` of a file.
type Span = (usize, usize);

/// The header length, and the byte ranges of the JSON numbers and of the dtype strings
/// in a safetensors header.
fn header_tokens(file: &[u8]) -> (usize, Vec<Span>, Vec<Span>) {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let h = &file[8..8 + n];
    let mut numbers = vec![];
    let mut i = 0;
    while i < h.len() {
        if h[i].is_ascii_digit() {
            let start = i;
            while i < h.len() && h[i].is_ascii_digit() {
                i += 1;
            }
            numbers.push((8 + start, 8 + i));
        } else {
            i += 1;
        }
    }
    let text = std::str::from_utf8(h).unwrap();
    let dtypes = text
        .match_indices("\"dtype\":\"")
        .map(|(p, m)| {
            let start = p + m.len();
            let end = start + text[start..].find('"').unwrap();
            (8 + start, 8 + end)
        })
        .collect();
    (n, numbers, dtypes)
}

/// Replaces `file[a..b]` with `with`; if `fix_len`, rewrites the header length so the
/// new header is still read whole.
fn splice_header(file: &mut Vec<u8>, a: usize, b: usize, with: &[u8], fix_len: bool) {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap());
    file.splice(a..b, with.iter().copied());
    if fix_len {
        let n = (n as i64 + with.len() as i64 - (b - a) as i64) as u64;
        file[..8].copy_from_slice(&n.to_le_bytes());
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Safetensors,
    IdxImages,
    IdxLabels,
}

/// Applies one random mutation to `file`; returns what it did.
fn mutate(file: &mut Vec<u8>, format: Format, original: &[u8], rng: &mut StdRng) -> String {
    let len = file.len();
    let pos = |rng: &mut StdRng| rng.random_range(0..len.max(1));
    match rng.random_range(0..12) {
        0 if len > 0 => {
            let (i, bit) = (pos(rng), rng.random_range(0..8));
            file[i] ^= 1 << bit;
            format!("flip bit {bit} of byte {i}")
        }
        1 if len > 0 => {
            let i = pos(rng);
            let v = INTERESTING_BYTES[rng.random_range(0..INTERESTING_BYTES.len())];
            file[i] = v;
            format!("byte {i} = {v:#04x}")
        }
        2 => {
            let n = rng.random_range(0..=len);
            file.truncate(n);
            format!("truncate to {n} bytes")
        }
        3 => {
            let n = rng.random_range(1..=64);
            let fill = rng.random_range(0..3);
            for _ in 0..n {
                file.push(match fill {
                    0 => 0,
                    1 => 0xFF,
                    _ => rng.random_range(0..=255) as u8,
                });
            }
            format!("append {n} junk bytes (kind {fill})")
        }
        4 if len > 1 => {
            let a = pos(rng);
            let b = rng.random_range(a..=len.min(a + 64));
            let at = rng.random_range(0..=len);
            let copy = file[a..b].to_vec();
            file.splice(at..at, copy);
            format!("duplicate bytes {a}..{b} at {at}")
        }
        5 if len > 1 => {
            let a = pos(rng);
            let b = rng.random_range(a..=len.min(a + 64));
            file.drain(a..b);
            format!("delete bytes {a}..{b}")
        }
        6 if len > 0 => {
            let (a, b) = (pos(rng), pos(rng));
            file.swap(a, b);
            format!("swap bytes {a} and {b}")
        }
        // Format-aware mutations, always on the pristine file's layout.
        7..=11 => match format {
            Format::Safetensors => {
                *file = original.to_vec();
                safetensors_field(file, rng)
            }
            Format::IdxImages | Format::IdxLabels => {
                *file = original.to_vec();
                let dims = if format == Format::IdxImages { 3 } else { 1 };
                let field = rng.random_range(0..=dims);
                let v = if rng.random_bool(0.8) {
                    INTERESTING_U32[rng.random_range(0..INTERESTING_U32.len())]
                } else {
                    rng.random::<u32>()
                };
                file[4 * field..4 * field + 4].copy_from_slice(&v.to_be_bytes());
                if field == 0 {
                    format!("magic = {v:#010x}")
                } else {
                    format!("dimension {} = {v}", field - 1)
                }
            }
        },
        _ => "no change".to_string(),
    }
}

/// A header-aware edit of a pristine safetensors file.
fn safetensors_field(file: &mut Vec<u8>, rng: &mut StdRng) -> String {
    let (n, numbers, dtypes) = header_tokens(file);
    match rng.random_range(0..4) {
        0 => {
            let v = if rng.random_bool(0.5) {
                INTERESTING_U64[rng.random_range(0..INTERESTING_U64.len())]
            } else {
                (n as i64 + rng.random_range(-9..=9)).max(0) as u64
            };
            file[..8].copy_from_slice(&v.to_le_bytes());
            format!("header length = {v}")
        }
        1 | 2 if !numbers.is_empty() => {
            let (a, b) = numbers[rng.random_range(0..numbers.len())];
            let with = JSON_NUMBERS[rng.random_range(0..JSON_NUMBERS.len())];
            let old = String::from_utf8_lossy(&file[a..b]).into_owned();
            let fix = rng.random_bool(0.8);
            splice_header(file, a, b, with.as_bytes(), fix);
            format!("JSON number {old} at byte {a} = {with} (header length fixed: {fix})")
        }
        3 if !dtypes.is_empty() => {
            let (a, b) = dtypes[rng.random_range(0..dtypes.len())];
            let with = DTYPES[rng.random_range(0..DTYPES.len())];
            splice_header(file, a, b, with.as_bytes(), true);
            format!("dtype at byte {a} = {with}")
        }
        _ => {
            // Replace the whole header (the data stays).
            let with = WHOLE_HEADERS[rng.random_range(0..WHOLE_HEADERS.len())];
            splice_header(file, 8, 8 + n, with.as_bytes(), true);
            format!("header = {with}")
        }
    }
}

// ---------------------------------------------------------------------------
// Running the loaders
// ---------------------------------------------------------------------------

/// The largest single request any loader call made (for the summary line).
static LARGEST_SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Self-consistency of a loaded safetensors file.
fn check_tensors<T: tapegrad::Float>(out: &[(String, Tensor<T>)]) -> Result<(), String> {
    for (name, t) in out {
        let product = t.shape().iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if product != Some(t.numel()) || t.numel() != t.data().len() {
            return Err(format!(
                "tensor `{name}`: shape {} but numel {} and {} values",
                t.shape(),
                t.numel(),
                t.data().len()
            ));
        }
    }
    if !out.windows(2).all(|w| w[0].0 < w[1].0) {
        return Err("names are not sorted and distinct".to_string());
    }
    Ok(())
}

/// Runs the loader for `format` on `bytes`; returns whether it accepted them, or what
/// went wrong (panic, inconsistent result, too much memory).
fn load(format: Format, bytes: &[u8]) -> Result<bool, String> {
    let (result, stats) = measured(|| -> Result<bool, String> {
        match format {
            Format::Safetensors => {
                let a = io::from_safetensors_bytes::<f32>(bytes);
                let b = io::from_safetensors_bytes::<f64>(bytes);
                if let Ok(t) = &a {
                    check_tensors(t)?;
                }
                if let Ok(t) = &b {
                    check_tensors(t)?;
                }
                // A loaded tensor must also be printable (Debug and Display walk the shape).
                for (name, t) in a.iter().flatten() {
                    let _ = format!("{name}: {t:?} {t}");
                }
                for (name, t) in b.iter().flatten() {
                    let _ = format!("{name}: {t:?} {t}");
                }
                Ok(a.is_ok() || b.is_ok())
            }
            Format::IdxImages => match mnist::parse_idx_images(bytes) {
                Ok(IdxImages {
                    count,
                    rows,
                    cols,
                    pixels,
                }) => {
                    if count.checked_mul(rows).and_then(|v| v.checked_mul(cols))
                        != Some(pixels.len())
                    {
                        return Err(format!(
                            "{count} images of {rows}x{cols} but {} pixels",
                            pixels.len()
                        ));
                    }
                    if rows == 0 || cols == 0 {
                        return Err("accepted images without pixels".to_string());
                    }
                    Ok(true)
                }
                Err(_) => Ok(false),
            },
            Format::IdxLabels => match mnist::parse_idx_labels(bytes) {
                Ok(labels) => {
                    if labels.len() + 8 != bytes.len() {
                        return Err(format!(
                            "{} labels from {} bytes",
                            labels.len(),
                            bytes.len()
                        ));
                    }
                    if let Some(l) = labels.iter().find(|&&l| l as usize >= mnist::NUM_CLASSES) {
                        return Err(format!("accepted label {l}"));
                    }
                    Ok(true)
                }
                Err(_) => Ok(false),
            },
        }
    });
    LARGEST_SEEN.fetch_max(stats.largest, std::sync::atomic::Ordering::Relaxed);
    let bound = (64 * bytes.len()).max(1 << 20);
    if stats.largest > bound || stats.peak > bound as isize {
        return Err(format!(
            "allocated too much: largest request {} bytes, peak live {} bytes (bound {bound})",
            stats.largest, stats.peak
        ));
    }
    match result {
        Ok(r) => r,
        Err(e) => Err(format!("panicked: {}", panic_message(&*e))),
    }
}

/// Fuzzes `count` mutants of each seed file; returns how many were accepted.
fn fuzz(format: Format, seeds: &[Vec<u8>], count: u64, base: u64) -> (u64, u64) {
    let trace = std::env::var_os("FUZZ_TRACE").is_some();
    let (mut accepted, mut total) = (0, 0);
    for (k, original) in seeds.iter().enumerate() {
        assert_eq!(
            load(format, original),
            Ok(true),
            "{format:?} seed file {k} must load"
        );
        for i in 0..count {
            let seed = base + (k as u64) * 1_000_000 + i;
            let mut rng = StdRng::seed_from_u64(seed);
            let mut file = original.clone();
            let steps = rng.random_range(1..=3);
            let what: Vec<String> = (0..steps)
                .map(|_| mutate(&mut file, format, original, &mut rng))
                .collect();
            let what = what.join("; then ");
            if trace {
                eprintln!("{format:?} seed file {k}, seed {seed}: {what}");
            }
            match load(format, &file) {
                Ok(ok) => accepted += ok as u64,
                Err(e) => panic!(
                    "{format:?} loader, seed file {k}, mutation seed {seed} ({what}), \
                     {} bytes: {e}",
                    file.len()
                ),
            }
            total += 1;
        }
    }
    (accepted, total)
}

/// All formats in one test function, so the per-thread counters see one fuzz at a time.
#[test]
fn loaders_survive_mutations() {
    let st = fuzz(Format::Safetensors, &safetensors_seeds(), 5000, 1);
    let im = fuzz(
        Format::IdxImages,
        &[
            idx_images(3, 4, 5),
            idx_images(1, 1, 1),
            idx_images(0, 28, 28),
        ],
        3000,
        2,
    );
    let lb = fuzz(Format::IdxLabels, &[idx_labels(6), idx_labels(0)], 3000, 3);
    eprintln!(
        "accepted mutants: safetensors {}/{}, IDX images {}/{}, IDX labels {}/{}; \
         largest single allocation {} bytes",
        st.0,
        st.1,
        im.0,
        im.1,
        lb.0,
        lb.1,
        LARGEST_SEEN.load(std::sync::atomic::Ordering::Relaxed)
    );
    // The mutations must mostly break the files, but not always (some edits are
    // harmless, e.g. a flipped bit in the data): both paths get exercised.
    for (what, (ok, n)) in [("safetensors", st), ("images", im), ("labels", lb)] {
        assert!(ok > 0 && ok < n, "{what}: {ok} of {n} mutants accepted");
    }
}

/// An empty tensor whose other dimensions multiply past `usize` is a clear error, not a
/// tensor whose strides overflow when it is printed or indexed.
#[test]
fn empty_tensor_with_overflowing_dimensions_is_an_error() {
    let header = r#"{"x":{"dtype":"F64","shape":[0,18446744073709551615,3],"data_offsets":[0,0]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header.as_bytes());
    let err = io::from_safetensors_bytes::<f64>(&file).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("parameter `x`: shape [0, 18446744073709551615, 3] is too large"),
        "{err}"
    );
    // Zero times dimensions that fit is still a valid empty tensor.
    let header = r#"{"x":{"dtype":"F64","shape":[0,4294967296,3],"data_offsets":[0,0]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header.as_bytes());
    let t = &io::from_safetensors_bytes::<f64>(&file).unwrap()[0].1;
    assert_eq!((&t.shape()[..], t.numel()), (&[0, 4294967296, 3][..], 0));
}

/// The allocator bound is live: a loader-sized allocation within the bound passes, one
/// beyond it is reported.
#[test]
fn allocation_bound_is_enforced() {
    let ((), small) = {
        let (r, s) = measured(|| drop(vec![0u8; 1000]));
        (r.unwrap(), s)
    };
    assert!(small.largest >= 1000, "{}", small.largest);
    let (r, big) = measured(|| drop(Vec::<u8>::with_capacity(8 << 20)));
    r.unwrap();
    assert!(big.largest >= 8 << 20 && big.peak >= 8 << 20);
    let (r, _) = measured(|| panic!("caught"));
    assert_eq!(panic_message(&*r.unwrap_err()), "caught");
}
