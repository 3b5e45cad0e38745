//! The tapegrad benchmark: `cargo bench --bench tapegrad`.
//!
//! Prints one line per measurement, `case<TAB>framework<TAB>threads<TAB>median_ms<TAB>gflops`,
//! with the machine's own peak FMA throughput (`peak_fma`) measured in the same run, so each
//! figure also reads as a fraction of the physical limit. Lines starting with `#` are notes
//! (ns per node for `chain10k`, peak heap for `cnn_step`, fractions of peak).
//!
//! Options (after `--`): `--quick` (fewer repetitions), `--threads 1,2`, `--case NAME` (repeatable;
//! a conv case's name runs its `_fwd` and `_fwdbwd` lines, `tconv` both transposed-conv lines),
//! `--avx2` (cap the kernels, and `peak_fma`, at AVX2 on an AVX-512 machine), `--winograd-tile 2|4`
//! (every Winograd conv with that variant instead of the one its shape picks).

use rand::SeedableRng;
use rand::rngs::StdRng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tapegrad::nn::{
    self, BasicBlock, BatchNorm, Conv2d, Flatten, GlobalAvgPool2d, Linear, MaxPool2d, Module,
    Params, ReLU, Sequential,
};
use tapegrad::optim::{Optimizer, Sgd};
use tapegrad::{Conv2dOptions, ConvTranspose2dOptions, Pool2dOptions, Tape, Tensor, gemm};

/// Counts live and peak heap bytes, for the memory figure of `cnn_step`.
/// Every call goes to the system allocator's own entry point, so the cases
/// run as under the default allocator: `alloc_zeroed` stays `calloc` (fresh
/// pages come zeroed, with no `memset`) and `realloc` stays `realloc` (the
/// trait's defaults would allocate, fill or copy, and free instead).
struct CountingAlloc;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

impl CountingAlloc {
    fn grew(bytes: usize) {
        let now = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            Self::grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            Self::grew(l.size());
        }
        p
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        // Counted as holding the old and the new block at once (as a realloc
        // that moves does for a moment), so the peak is never under-counted.
        Self::grew(new_size);
        // SAFETY: same contract as the caller's.
        let q = unsafe { System.realloc(p, l, new_size) };
        let freed = if q.is_null() { new_size } else { l.size() };
        LIVE.fetch_sub(freed, Ordering::Relaxed);
        q
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

struct Cfg {
    reps: usize,
    threads: Vec<usize>,
    only: Vec<String>,
}

/// One line of the output: a closure timed `reps` times at a thread count.
struct Measure {
    case: String,
    threads: usize,
    /// Floating-point operations per run, for the GFLOP/s column.
    flops: Option<f64>,
    /// One run; `Some(gflops)` if it measures its own rate (`peak_fma`).
    run: Box<dyn FnMut() -> Option<f64>>,
    samples_ms: Vec<f64>,
    /// The rates the runs reported, if they report one.
    rates: Vec<f64>,
}

impl Measure {
    fn new(
        case: String,
        threads: usize,
        flops: Option<f64>,
        mut run: impl FnMut() + 'static,
    ) -> Self {
        Measure {
            case,
            threads,
            flops,
            run: Box::new(move || {
                run();
                None
            }),
            samples_ms: vec![],
            rates: vec![],
        }
    }

    /// `peak_fma` at `threads` threads, sampled in the rounds like every
    /// case, so that its figure comes from the same minutes as theirs.
    fn peak(threads: usize) -> Self {
        Measure {
            case: "peak_fma".into(),
            threads,
            flops: None,
            run: Box::new(move || Some(gemm::peak::fma_sample(threads, PEAK_SCALE))),
            samples_ms: vec![],
            rates: vec![],
        }
    }

    /// The median rate the runs reported (`peak_fma`), if any.
    fn median_rate(&self) -> Option<f64> {
        let mut r = self.rates.clone();
        r.sort_by(|a, b| a.total_cmp(b));
        r.get(r.len() / 2).copied()
    }

    fn median_ms(&self) -> f64 {
        let mut t = self.samples_ms.clone();
        t.sort_by(|a, b| a.total_cmp(b));
        t[t.len() / 2]
    }
}

/// Runs of a measurement timed back to back within one round.
const PER_ROUND: usize = 3;

/// Length of one `peak_fma` sample, as a fraction of one run of
/// `peak_fma_gflops` (about 8 ms).
const PEAK_SCALE: f64 = 0.25;

/// Times every measurement `reps` times, in rounds (after a pass of two
/// untimed runs of each): each round gives every
/// measurement in turn one untimed warm-up run (caches, thread pools, scratch
/// and the recycled-buffer pool are then in the state a training loop keeps
/// them in) and `PER_ROUND` timed runs. A burst of load from the host then
/// lands on a few samples of many lines instead of on every sample of one,
/// and a case's 1- and 2-thread figures are taken side by side.
fn run_rounds(measures: &mut [Measure], reps: usize) {
    // One untimed pass over everything first (thread pools, first-touch of
    // every buffer size, the process's first seconds).
    for m in measures.iter_mut() {
        gemm::set_num_threads(m.threads);
        (m.run)();
        (m.run)();
    }
    for _ in 0..reps.div_ceil(PER_ROUND) {
        for m in measures.iter_mut() {
            gemm::set_num_threads(m.threads);
            (m.run)();
            for _ in 0..PER_ROUND {
                let t0 = Instant::now();
                let rate = (m.run)();
                m.samples_ms.push(t0.elapsed().as_secs_f64() * 1e3);
                m.rates.extend(rate);
            }
        }
    }
    gemm::set_num_threads(0);
}

fn line(case: &str, threads: usize, ms: f64, gflops: Option<f64>) {
    let g = gflops.map_or("-".to_string(), |g| format!("{g:.1}"));
    println!("{case}\ttapegrad\t{threads}\t{ms:.3}\t{g}");
}

struct ConvCase {
    name: &'static str,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

const CASES: &[ConvCase] = &[
    ConvCase {
        name: "seed",
        n: 1,
        c: 1,
        h: 3,
        w: 3,
        o: 1,
        k: 2,
        stride: 1,
        pad: 0,
    },
    ConvCase {
        name: "small",
        n: 32,
        c: 3,
        h: 32,
        w: 32,
        o: 16,
        k: 3,
        stride: 1,
        pad: 1,
    },
    ConvCase {
        name: "mid",
        n: 32,
        c: 16,
        h: 32,
        w: 32,
        o: 32,
        k: 3,
        stride: 1,
        pad: 1,
    },
    ConvCase {
        name: "deep",
        n: 16,
        c: 64,
        h: 16,
        w: 16,
        o: 64,
        k: 3,
        stride: 1,
        pad: 1,
    },
    ConvCase {
        name: "strided",
        n: 32,
        c: 32,
        h: 32,
        w: 32,
        o: 64,
        k: 3,
        stride: 2,
        pad: 1,
    },
    ConvCase {
        name: "wide",
        n: 8,
        c: 3,
        h: 128,
        w: 128,
        o: 16,
        k: 5,
        stride: 1,
        pad: 2,
    },
];

/// The `_fwd` and `_fwdbwd` measurements of one conv case at `threads`.
fn conv_case(cc: &ConvCase, threads: usize, rng: &mut StdRng) -> [Measure; 2] {
    let x = Tensor::<f32>::randn([cc.n, cc.c, cc.h, cc.w], rng);
    let wt = Tensor::<f32>::randn([cc.o, cc.c, cc.k, cc.k], rng);
    let b = Tensor::<f32>::randn([cc.o], rng);
    let opts = Conv2dOptions::default().stride(cc.stride).padding(cc.pad);
    let out = |s: usize| (s + 2 * cc.pad - cc.k) / cc.stride + 1;
    let flops = 2.0 * (cc.n * cc.o * out(cc.h) * out(cc.w) * cc.c * cc.k * cc.k) as f64;
    let (x2, wt2, b2) = (x.clone(), wt.clone(), b.clone());
    let fwd = move || {
        let tape = Tape::new();
        let y = tape.constant(x.clone()).conv2d(
            tape.constant(wt.clone()),
            Some(tape.constant(b.clone())),
            opts,
        );
        std::hint::black_box(y.value());
    };
    let fwdbwd = move || {
        let tape = Tape::new();
        let (xv, wv, bv) = (
            tape.leaf(x2.clone()),
            tape.leaf(wt2.clone()),
            tape.leaf(b2.clone()),
        );
        let y = xv.conv2d(wv, Some(bv), opts);
        let g = y.backward_with(Tensor::ones(y.shape()));
        std::hint::black_box(&g[wv]);
    };
    [
        Measure::new(format!("{}_fwd", cc.name), threads, Some(flops), fwd),
        Measure::new(
            format!("{}_fwdbwd", cc.name),
            threads,
            Some(3.0 * flops),
            fwdbwd,
        ),
    ]
}

/// `tconv_fwd` and `tconv_fwdbwd` at `threads`, as the peers' `tconv`: a
/// DCGAN-style decoder layer, N=32, C_in=32, 16×16 → C_out=16, k4, stride 2,
/// padding 1 → 32×32; the forward without a graph (a no-grad tape), then
/// forward + sum + backward for x, w and b. FLOPs counted as the equivalent
/// direct conv, `2·N·C_in·H·W·C_out·k²` per pass.
fn tconv_case(threads: usize, want: impl Fn(&str) -> bool, rng: &mut StdRng) -> Vec<Measure> {
    let (n, cin, h, w, cout, k) = (32, 32, 16, 16, 16, 4);
    let opts = ConvTranspose2dOptions::default().stride(2).padding(1);
    let flops = 2.0 * (n * cin * h * w * cout * k * k) as f64;
    let x = Tensor::<f32>::randn([n, cin, h, w], rng);
    let wt = Tensor::<f32>::randn([cin, cout, k, k], rng);
    let b = Tensor::<f32>::randn([cout], rng);
    let (x2, wt2, b2) = (x.clone(), wt.clone(), b.clone());
    let fwd = move || {
        let tape = Tape::no_grad();
        let y = tape.leaf(x.clone()).conv_transpose2d(
            tape.leaf(wt.clone()),
            Some(tape.leaf(b.clone())),
            opts,
        );
        std::hint::black_box(y.value());
    };
    let fwdbwd = move || {
        let tape = Tape::new();
        let (xv, wv, bv) = (
            tape.leaf(x2.clone()),
            tape.leaf(wt2.clone()),
            tape.leaf(b2.clone()),
        );
        let g = xv.conv_transpose2d(wv, Some(bv), opts).sum().backward();
        std::hint::black_box((&g[xv], &g[wv], &g[bv]));
    };
    let mut out = vec![];
    if want("tconv_fwd") {
        out.push(Measure::new("tconv_fwd".into(), threads, Some(flops), fwd));
    }
    if want("tconv_fwdbwd") {
        let m = Measure::new("tconv_fwdbwd".into(), threads, Some(3.0 * flops), fwdbwd);
        out.push(m);
    }
    out
}

/// A chain of `N` scalar ops, recorded, differentiated and dropped.
const CHAIN: usize = 10_000;

fn chain10k() -> Measure {
    Measure::new("chain10k".into(), 1, None, || {
        let tape = Tape::<f32>::with_capacity(CHAIN + 1);
        let x = tape.leaf(Tensor::scalar(0.5));
        let mut y = x;
        for i in 0..CHAIN {
            y = match i % 3 {
                0 => y + 0.1,
                1 => y * 0.9,
                _ => y.tanh(),
            };
        }
        let g = y.backward();
        std::hint::black_box(g[x].item());
    })
}

struct Cnn {
    conv1: Conv2d,
    conv2: Conv2d,
    fc: Linear,
}

/// One SGD-momentum training step of the small CNN, as a closure owning its
/// model, data and optimizer.
fn cnn_step(rng: &mut StdRng) -> impl FnMut() + 'static {
    let mut params = Params::new();
    let pad1 = Conv2dOptions::default().padding(1);
    let net = Cnn {
        conv1: Conv2d::with_options(&mut params, "conv1", 1, 8, 3, pad1, true, rng),
        conv2: Conv2d::with_options(&mut params, "conv2", 8, 16, 3, pad1, true, rng),
        fc: Linear::with_options(&mut params, "fc", 16 * 7 * 7, 10, true, rng),
    };
    let x = Tensor::<f32>::randn([64, 1, 28, 28], rng);
    let labels: Vec<usize> = (0..64).map(|i| i % 10).collect();
    let mut opt = Sgd::new(0.01).momentum(0.9);
    let pool = Pool2dOptions::new(2);
    move || {
        let grads = {
            let tape = Tape::new();
            let p = params.bind(&tape);
            let h = tape.constant(x.clone());
            let h = h
                .conv2d(
                    p[net.conv1.weight],
                    net.conv1.bias.map(|b| p[b]),
                    net.conv1.options,
                )
                .relu()
                .max_pool2d(pool);
            let h = h
                .conv2d(
                    p[net.conv2.weight],
                    net.conv2.bias.map(|b| p[b]),
                    net.conv2.options,
                )
                .relu()
                .max_pool2d(pool);
            let logits = h
                .flatten()
                .linear(p[net.fc.weight], net.fc.bias.map(|b| p[b]));
            p.grads(logits.cross_entropy(&labels).backward())
        };
        opt.step(&mut params, &grads);
    }
}

/// Peak heap of `cnn_step` (a fresh model, a few steps, on its own) against
/// what a step must hold at once.
fn cnn_step_memory(rng: &mut StdRng) {
    // Heap in use before the model exists: everything above it at the peak belongs to
    // this case (parameters, input, optimizer state, activations, gradients, scratch and
    // the buffers recycled between steps).
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let mut step = cnn_step(rng);
    for _ in 0..5 {
        step();
    }
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    // What a step must hold (f32): the input; the parameters, their gradients and
    // momentum (3·p); every activation and its gradient.
    let acts = 64 * (8 * 28 * 28 * 2 + 8 * 14 * 14 + 16 * 14 * 14 * 2 + 16 * 7 * 7 + 10);
    let p = 8 * 9 + 8 + 16 * 8 * 9 + 16 + 784 * 10 + 10;
    let needed = 4 * (64 * 28 * 28 + 3 * p + 2 * acts);
    println!(
        "# cnn_step: peak heap {:.2} MB; parameters + activations + gradients {:.2} MB; ratio {:.2}",
        peak as f64 / 1e6,
        needed as f64 / 1e6,
        peak as f64 / needed as f64
    );
}

/// One SGD-momentum (0.9, lr 0.01) training step of a ResNet-8 on a batch of
/// 32 3×32×32 images in training mode, as `resnet_step` in the peers'
/// `bench_torch.py`: stem conv 3→16 + BN + ReLU, residual blocks 16→16 (s1),
/// 16→32 (s2), 32→64 (s2), global average pooling, linear 64→10, cross-entropy.
/// Also returns the number of parameters.
fn resnet_step(rng: &mut StdRng) -> (impl FnMut() + 'static, usize) {
    let mut params = Params::new();
    let pad = Conv2dOptions::default().padding(1);
    let net = Sequential::new()
        .push(Conv2d::with_options(
            &mut params,
            "conv1",
            3,
            16,
            3,
            pad,
            false,
            rng,
        ))
        .push(BatchNorm::new_2d(&mut params, "bn1", 16))
        .push(ReLU)
        .push(BasicBlock::with_rng(&mut params, "layer1", 16, 16, 1, rng))
        .push(BasicBlock::with_rng(&mut params, "layer2", 16, 32, 2, rng))
        .push(BasicBlock::with_rng(&mut params, "layer3", 32, 64, 2, rng))
        .push(GlobalAvgPool2d)
        .push(Linear::with_options(&mut params, "fc", 64, 10, true, rng));
    let x = Tensor::<f32>::randn([32, 3, 32, 32], rng);
    let labels: Vec<usize> = (0..32).map(|i| i % 10).collect();
    let mut opt = Sgd::new(0.01).momentum(0.9);
    let count = params.num_elements();
    let step = move || {
        let grads = {
            let tape = Tape::new();
            let p = params.bind(&tape);
            let loss = net
                .forward(&p, tape.constant(x.clone()))
                .cross_entropy(&labels);
            p.grads(loss.backward())
        };
        opt.step(&mut params, &grads);
    };
    (step, count)
}

/// Peak heap of `resnet_step` (a fresh model, a few steps, on its own)
/// against what a step must hold at once, as for [`cnn_step_memory`].
fn resnet_step_memory(rng: &mut StdRng) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let (mut step, p) = resnet_step(rng);
    for _ in 0..5 {
        step();
    }
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    // Every op's output, batch 32: the stem (conv, BN, ReLU) and the first
    // block (conv, BN, ReLU, conv, BN, add, ReLU) at 16×32×32; the two
    // downsampling blocks (the same seven plus the shortcut's conv and BN) at
    // 32×16×16 and 64×8×8; pooling [32, 64] and the logits [32, 10].
    let acts = 32 * (10 * 16 * 32 * 32 + 9 * 32 * 16 * 16 + 9 * 64 * 8 * 8 + 64 + 10);
    let needed = 4 * (32 * 3 * 32 * 32 + 3 * p + 2 * acts);
    println!(
        "# resnet_step: peak heap {:.2} MB; parameters + activations + gradients {:.2} MB; ratio {:.2}",
        peak as f64 / 1e6,
        needed as f64 / 1e6,
        peak as f64 / needed as f64
    );
}

/// Peak heap of predicting the 360 held-out digits in one batch with the
/// `train_digits` model through [`nn::predict`] (no graph, each activation
/// freed once consumed), against parameters + input + the two largest
/// activations.
fn predict_memory(rng: &mut StdRng) {
    let mut params = Params::new();
    let pad = Conv2dOptions::default().padding(1);
    let pool = MaxPool2d(Pool2dOptions::new(2));
    let model = Sequential::new()
        .push(Conv2d::with_options(
            &mut params,
            "conv1",
            1,
            16,
            3,
            pad,
            true,
            rng,
        ))
        .push(ReLU)
        .push(pool)
        .push(Conv2d::with_options(
            &mut params,
            "conv2",
            16,
            32,
            3,
            pad,
            true,
            rng,
        ))
        .push(ReLU)
        .push(pool)
        .push(Flatten)
        .push(Linear::with_options(
            &mut params,
            "fc",
            32 * 2 * 2,
            10,
            true,
            rng,
        ));
    let (_, test) = tapegrad::data::digits_train_test();
    let x = test.to_tensor::<f32>(test.normalization());
    let n = test.len();
    tapegrad::settings::release_pooled_memory();
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let logits = nn::predict(&model, &params, x);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    assert_eq!(logits.shape()[0], n);
    drop(logits);
    tapegrad::settings::release_pooled_memory();
    // f32: the parameters, the input [360, 1, 8, 8] (already allocated, so not in
    // the peak above) and the two largest activations (conv1's output and its ReLU,
    // [360, 16, 8, 8] each).
    let needed = 4 * (params.num_elements() + 2 * n * 16 * 64);
    println!(
        "# predict_digits: peak heap {:.2} MB; parameters + two largest activations {:.2} MB; ratio {:.2}; the input ({:.2} MB) was allocated before",
        peak as f64 / 1e6,
        needed as f64 / 1e6,
        peak as f64 / needed as f64,
        (4 * n * 64) as f64 / 1e6
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cfg = Cfg {
        reps: 30,
        threads: vec![1, 2],
        only: vec![],
    };
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--quick" => cfg.reps = 6,
            "--threads" => {
                i += 1;
                cfg.threads = args[i]
                    .split(',')
                    .map(|t| t.parse().expect("--threads 1,2"))
                    .collect();
            }
            "--case" => {
                i += 1;
                cfg.only.push(args[i].clone());
            }
            "--avx2" => gemm::force_avx2_process_wide(true),
            "--winograd-tile" => {
                i += 1;
                let tile = args[i].parse().expect("--winograd-tile 2|4");
                tapegrad::conv::force_winograd_tile_process_wide(tile);
            }
            "--bench" => {}
            other => eprintln!("ignoring unknown argument {other}"),
        }
        i += 1;
    }
    let want = |name: &str| cfg.only.is_empty() || cfg.only.iter().any(|o| o == name);
    println!(
        "# tapegrad benchmark; f32; median of {} runs per line, taken {PER_ROUND} at a time (after a warm-up run) in {} interleaved rounds over all lines",
        cfg.reps.div_ceil(PER_ROUND) * PER_ROUND,
        cfg.reps.div_ceil(PER_ROUND)
    );
    println!("case\tframework\tthreads\tmedian_ms\tgflops");
    let mut rng = StdRng::seed_from_u64(0);
    if want("cnn_step") {
        cnn_step_memory(&mut rng);
    }
    if want("predict_digits") {
        predict_memory(&mut rng);
    }
    if want("resnet_step") {
        // Its own generator, so the cases below draw the same data with or without it.
        resnet_step_memory(&mut StdRng::seed_from_u64(1));
    }
    let mut measures = vec![];
    for &t in &cfg.threads {
        measures.push(Measure::peak(t));
        for cc in CASES.iter().filter(|c| want(c.name)) {
            measures.extend(conv_case(cc, t, &mut rng));
        }
        measures.extend(tconv_case(t, |c| want("tconv") || want(c), &mut rng));
        if want("cnn_step") {
            measures.push(Measure::new("cnn_step".into(), t, None, cnn_step(&mut rng)));
        }
        if want("resnet_step") {
            let (step, _) = resnet_step(&mut rng);
            measures.push(Measure::new("resnet_step".into(), t, None, step));
        }
    }
    if want("chain10k") {
        measures.push(chain10k());
    }
    run_rounds(&mut measures, cfg.reps);
    let mut peaks = vec![];
    for m in &measures {
        if let Some(rate) = m.median_rate() {
            println!("{}\ttapegrad\t{}\t-\t{rate:.1}", m.case, m.threads);
            peaks.push((m.threads, rate));
            continue;
        }
        let ms = m.median_ms();
        line(&m.case, m.threads, ms, m.flops.map(|f| f / ms / 1e6));
        if m.case == "chain10k" {
            println!(
                "# chain10k: {:.0} ns per node (forward + backward + teardown)",
                ms * 1e6 / CHAIN as f64
            );
        }
    }
    for &(t, p) in &peaks {
        println!(
            "# peak_fma at {t} thread(s): {p:.1} GFLOP/s; divide a case's gflops by this for its fraction of peak"
        );
    }
    speed_ups(&measures, &peaks);
}

/// One note line of the speed-up of every case from 1 to 2 threads (ratio
/// of the medians), next to that of `peak_fma` over the same rounds: the
/// machine's own scaling, which no case can beat for long.
fn speed_ups(measures: &[Measure], peaks: &[(usize, f64)]) {
    let at = |case: &str, t: usize| {
        measures
            .iter()
            .find(|m| m.case == case && m.threads == t && m.rates.is_empty())
            .map(Measure::median_ms)
    };
    let peak = |t: usize| peaks.iter().find(|p| p.0 == t).map(|p| p.1);
    let mut parts = vec![];
    let large = |m: &&Measure| m.case.ends_with("_fwdbwd") || m.case == "cnn_step";
    for m in measures.iter().filter(|m| m.threads == 1).filter(large) {
        if let (Some(one), Some(two)) = (at(&m.case, 1), at(&m.case, 2)) {
            parts.push(format!("{} {:.2}", m.case, one / two));
        }
    }
    if let (Some(one), Some(two), false) = (peak(1), peak(2), parts.is_empty()) {
        println!(
            "# speed-up from 1 to 2 threads (median over median): {}; peak_fma {:.2} (the machine's own scaling in the same rounds)",
            parts.join(", "),
            two / one
        );
    }
}
