//! GEMM throughput benchmark (`cargo bench --bench gemm`).
//!
//! Prints one tab-separated line per measurement:
//! `case<TAB>framework<TAB>threads<TAB>median_ms<TAB>gflops`
//! for the convolution-shaped products tapegrad runs (forward, weight
//! gradient, input gradient via im2col), a linear layer, and 512³, at 1 and
//! 2 threads, plus `peak_fma` lines giving the machine's measured FMA
//! throughput ceiling (median_ms is `-` there).
//!
//! Optional arguments: substrings to filter case names by, and `--avx2` to
//! cap the kernels at AVX2 on an AVX-512 machine (for comparison).

use std::hint::black_box;
use std::time::{Duration, Instant};

use tapegrad::Float;
use tapegrad::gemm::set_num_threads;

/// Operand layouts: row-major (`N`) or the transpose of a row-major buffer (`T`).
#[derive(Clone, Copy)]
enum Op {
    N,
    T,
}

struct Case {
    name: String,
    m: usize,
    n: usize,
    k: usize,
    ta: Op,
    tb: Op,
    double: bool,
}

fn case(name: &str, m: usize, n: usize, k: usize, ta: Op, tb: Op) -> Case {
    Case {
        name: format!("{name}_m{m}_n{n}_k{k}"),
        m,
        n,
        k,
        ta,
        tb,
        double: false,
    }
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    // (C_out, C_in·kh·kw, N·H_out·W_out) of four convolution layers.
    let convs = [
        ("conv3x3_c3_16", 16, 27, 32768),
        ("conv3x3_c16_32", 32, 144, 32768),
        ("conv3x3_c64_64", 64, 576, 4096),
        ("conv5x5_c3_16", 16, 75, 131072),
    ];
    for &(name, cout, ckk, nhw) in &convs {
        // Forward: Y (C_out × NHW) = W (C_out × CKK) · cols (CKK × NHW).
        v.push(case(&format!("{name}_fwd"), cout, nhw, ckk, Op::N, Op::N));
        // Weight gradient: dW (C_out × CKK) = dY (C_out × NHW) · colsᵀ.
        v.push(case(&format!("{name}_dw"), cout, ckk, nhw, Op::N, Op::T));
        // Input gradient: dcols (CKK × NHW) = Wᵀ · dY (C_out × NHW).
        v.push(case(&format!("{name}_dx"), ckk, nhw, cout, Op::T, Op::N));
    }
    // Linear layer: Y (64 × 10) = X (64 × 784) · Wᵀ (W is 10 × 784).
    v.push(case("linear_fwd", 64, 10, 784, Op::N, Op::T));
    v.push(case("square_nn", 512, 512, 512, Op::N, Op::N));
    v.push(case("square_tt", 512, 512, 512, Op::T, Op::T));
    let mut d = case("square_nn_f64", 512, 512, 512, Op::N, Op::N);
    d.double = true;
    v.push(d);
    v
}

/// Strides of a `rows × cols` operand stored row-major (`N`) or as the
/// transpose of a row-major `cols × rows` buffer (`T`).
fn strides(op: Op, rows: usize, cols: usize) -> (usize, usize) {
    match op {
        Op::N => (cols, 1),
        Op::T => (1, rows),
    }
}

/// Times `f` repeatedly (after a warm-up) and returns the median in ms.
fn median_ms(mut f: impl FnMut()) -> f64 {
    f();
    let budget = Duration::from_millis(400);
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < 5 || (start.elapsed() < budget && times.len() < 200) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

/// Median time of `C = A·B` in precision `T` (inputs given in f64 and converted).
fn time_gemm<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    a: &[f64],
    (rsa, csa): (usize, usize),
    b: &[f64],
    (rsb, csb): (usize, usize),
) -> f64 {
    let a: Vec<T> = a.iter().map(|&x| T::from_f64(x)).collect();
    let b: Vec<T> = b.iter().map(|&x| T::from_f64(x)).collect();
    let mut cc = vec![T::ZERO; m * n];
    median_ms(|| {
        T::gemm(
            m,
            n,
            k,
            T::ONE,
            black_box(&a),
            rsa,
            csa,
            black_box(&b),
            rsb,
            csb,
            T::ZERO,
            &mut cc,
            n,
        );
        black_box(&mut cc);
    })
}

fn run(c: &Case, threads: usize) {
    set_num_threads(threads);
    let (m, n, k) = (c.m, c.n, c.k);
    let (rsa, csa) = strides(c.ta, m, k);
    let (rsb, csb) = strides(c.tb, k, n);
    let fill = |len: usize, seed: usize| -> Vec<f64> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f64) / 500.0 - 1.0)
            .collect()
    };
    let (a, b) = (fill(m * k, 1), fill(k * n, 2));
    let ms = if c.double {
        time_gemm::<f64>(m, n, k, &a, (rsa, csa), &b, (rsb, csb))
    } else {
        time_gemm::<f32>(m, n, k, &a, (rsa, csa), &b, (rsb, csb))
    };
    let gflops = 2.0 * (m * n * k) as f64 / (ms * 1e-3) / 1e9;
    println!("{}\ttapegrad\t{threads}\t{ms:.4}\t{gflops:.1}", c.name);
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments filter case names.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if std::env::args().any(|a| a == "--avx2") {
        tapegrad::gemm::force_avx2_process_wide(true);
    }
    let wanted =
        |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    if wanted("peak_fma") {
        for threads in [1, 2] {
            let g = tapegrad::gemm::peak::peak_fma_gflops(threads);
            println!("peak_fma\tfma_loop\t{threads}\t-\t{g:.1}");
        }
    }
    for c in cases().iter().filter(|c| wanted(&c.name)) {
        for threads in [1, 2] {
            run(c, threads);
        }
    }
    set_num_threads(0);
}
