//! The tape's per-node overhead alone: a chain of 10,000 scalar ops (`+ 0.1`, `× 0.9`,
//! `tanh` in turn), recorded, differentiated and dropped, without the benchmark's
//! counting allocator. Prints ns per node, `OUTER` times (default 5), each the mean of
//! `REPS` graphs (default 20). Small enough to run under `valgrind --tool=callgrind`
//! (`OUTER=1 REPS=2`) for an instruction count that does not depend on machine noise.
//!
//! `cargo run --release --example chain_probe`

use tapegrad::{Tape, Tensor};
fn main() {
    let outer: usize = std::env::var("OUTER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    for _ in 0..outer {
        let t0 = std::time::Instant::now();
        let reps: usize = std::env::var("REPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20);
        for _ in 0..reps {
            let tape = Tape::<f32>::with_capacity(10_001);
            let x = tape.leaf(Tensor::scalar(0.5));
            let mut y = x;
            for i in 0..10_000 {
                y = match i % 3 {
                    0 => y + 0.1,
                    1 => y * 0.9,
                    _ => y.tanh(),
                };
            }
            let g = y.backward();
            std::hint::black_box(&g);
        }
        let ns = t0.elapsed().as_nanos() as f64 / (reps as f64 * 10_000.0);
        println!("{ns:.1} ns/node");
    }
}
