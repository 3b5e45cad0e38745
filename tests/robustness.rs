//! Misuse and extreme inputs give the right answer or a clear panic, never a
//! silently wrong one: softmax and cross-entropy at any logit magnitude,
//! gradients and parameter ids tied to their tape and store, sizes that
//! overflow, recording inside a backward closure, high-rank permutes, and the
//! buffer pools' release and cap.

mod common;
use common::panics::panic_message;

use tapegrad::nn::Params;
use tapegrad::{Float, Shape, Tape, Tensor, settings};

/// softmax, log_softmax and cross-entropy (value and gradient) of lanes of
/// logits near `a`, against the same formulas evaluated in f64 from the exact
/// differences to the lane maximum, to `rtol` relative to the larger of the value
/// and 1 (ln Σ is near 0 when one logit dominates, and is then accurate in
/// absolute terms). `next` steps to the next representable value.
fn check_large_logits<T: Float>(a: f64, next: fn(T) -> T, rtol: f64) {
    let x0 = T::from_f64(a);
    let x1 = next(x0);
    let x2 = next(x1);
    // Lanes: two equal logits, and three logits one and two steps apart.
    let lanes: [Vec<T>; 2] = [vec![x0, x0], vec![x1, x0, x2]];
    for lane in &lanes {
        let n = lane.len();
        let m = lane
            .iter()
            .map(|v| v.to_f64())
            .fold(f64::NEG_INFINITY, f64::max);
        // Differences of nearby floats are exact in f64.
        let d: Vec<f64> = lane.iter().map(|v| v.to_f64() - m).collect();
        let sum: f64 = d.iter().map(|v| v.exp()).sum();
        let want_sm: Vec<f64> = d.iter().map(|v| v.exp() / sum).collect();
        let want_lsm: Vec<f64> = d.iter().map(|v| v - sum.ln()).collect();
        let close = |got: T, want: f64, what: &str, k: usize| {
            let got = got.to_f64();
            assert!(
                (got - want).abs() <= rtol * want.abs().max(1.0),
                "{what} of {lane:?} (scale {a:e}) at {k}: got {got}, want {want}"
            );
        };
        let tape = Tape::<T>::new();
        let x = tape.leaf(Tensor::from_vec(lane.clone(), [1, n]).unwrap());
        let sm = x.softmax(1).value();
        let lsm = x.log_softmax(1).value();
        for k in 0..n {
            close(sm.data()[k], want_sm[k], "softmax", k);
            close(lsm.data()[k], want_lsm[k], "log_softmax", k);
        }
        let target = n - 1;
        let loss = x.cross_entropy(&[target]);
        close(
            loss.value().item(),
            -want_lsm[target],
            "cross_entropy",
            target,
        );
        let g = loss.backward();
        for (k, (&sm, &got)) in want_sm.iter().zip(g[x].data()).enumerate() {
            let want = sm - if k == target { 1.0 } else { 0.0 };
            let got = got.to_f64();
            assert!(
                (got - want).abs() <= rtol,
                "cross_entropy gradient of {lane:?} (scale {a:e}) at {k}: got {got}, want {want}"
            );
        }
    }
}

#[test]
fn softmax_and_cross_entropy_are_exact_at_any_logit_magnitude() {
    let up32 = |v: f32| f32::from_bits(v.to_bits() + 1);
    let up64 = |v: f64| f64::from_bits(v.to_bits() + 1);
    for e in [3, 5, 7, 8, 10, 15, 20, 30] {
        for sign in [1.0, -1.0] {
            check_large_logits::<f32>(sign * 10f64.powi(e), up32, 1e-6);
        }
    }
    for e in [15, 16, 20, 50, 100, 200, 300] {
        for sign in [1.0, -1.0] {
            check_large_logits::<f64>(sign * 10f64.powi(e), up64, 1e-14);
        }
    }
    // The audit's case: two equal f32 logits of 1e8 are a fair coin.
    let tape = Tape::<f32>::new();
    let x = tape.leaf(Tensor::from_vec(vec![1e8, 1e8], [1, 2]).unwrap());
    assert_eq!(x.softmax(1).value().data(), &[0.5, 0.5]);
    let loss = x.cross_entropy(&[0]);
    assert!((loss.value().item() - 2f32.ln()).abs() < 1e-7);
    assert_eq!(loss.backward()[x].data(), &[-0.5, 0.5]);
}

#[test]
fn gradients_are_tied_to_their_tape() {
    let a = Tape::<f64>::new();
    let b = Tape::<f64>::new();
    let xa = a.leaf(Tensor::ones([2]));
    let xb = b.leaf(Tensor::ones([2, 3]));
    let ga = (xa * 2.0).sum().backward();
    assert_eq!(ga[xa].data(), &[2.0, 2.0]);
    for (what, f) in [
        (
            "index",
            Box::new(|| _ = ga[xb].clone()) as Box<dyn FnOnce()>,
        ),
        ("get", Box::new(|| _ = ga.get(xb))),
    ] {
        let msg = panic_message(f);
        assert!(
            msg.contains("node 0 belongs to another tape"),
            "{what}: {msg}"
        );
    }
    let mut ga2 = (xa * 2.0).sum().backward();
    let msg = panic_message(|| _ = ga2.take(xb));
    assert!(
        msg.contains("take: node 0 belongs to another tape"),
        "{msg}"
    );

    // A cleared tape is a new tape: its old gradients do not answer for new nodes.
    let mut t = Tape::<f64>::new();
    let old = {
        let x = t.leaf(Tensor::ones([2]));
        x.sum().backward()
    };
    t.clear();
    let y = t.leaf(Tensor::ones([5]));
    assert!(!old.belongs_to(&t));
    let msg = panic_message(|| _ = old.get(y));
    assert!(msg.contains("before it was cleared"), "{msg}");
}

#[test]
fn param_ids_and_gradients_are_tied_to_their_store() {
    let mut p = Params::<f64>::default();
    let mut q = Params::<f64>::default();
    let wp = p.add("w", Tensor::ones([2]));
    let wq = q.add("w", Tensor::ones([3]));
    let _ = q.add("v", Tensor::ones([1]));
    let msg = panic_message(|| _ = p.get(wq));
    assert!(
        msg.contains("params.get: parameter #0 was registered in another Params store"),
        "{msg}"
    );
    // A clone shares its store's ids.
    let c = p.clone();
    assert_eq!(c.get(wp).data(), &[1.0, 1.0]);

    let tp = Tape::new();
    let tq = Tape::new();
    let bp = p.bind(&tp);
    let bq = q.bind(&tq);
    let msg = panic_message(|| _ = bp[wq]);
    assert!(msg.contains("bound[id]"), "{msg}");
    // Gradients of another tape are refused by `grads`.
    let gq = (bq[wq] * 2.0).sum().backward();
    let msg = panic_message(|| drop(bp.grads(gq)));
    assert!(msg.contains("computed on another tape"), "{msg}");
    // Another store's gradients are refused by the optimizers.
    let gq = bq.grads((bq[wq] * 2.0).sum().backward());
    let msg = panic_message(|| {
        let mut sgd = tapegrad::optim::Sgd::new(0.1);
        tapegrad::optim::Optimizer::step(&mut sgd, &mut p, &gq)
    });
    assert!(msg.contains("another model's parameters"), "{msg}");
    let msg = panic_message(|| _ = gq.get(wp));
    assert!(msg.contains("param grads"), "{msg}");
}

#[test]
fn sizes_that_overflow_are_errors_not_wrapped_products() {
    let huge = (1usize << 63) + 1;
    let err = Tensor::<f64>::from_vec(vec![1.0; 6], [3, 2, huge]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("from_vec: shape [3, 2, {huge}] has more elements than usize can count")
    );
    let msg = panic_message(|| drop(Tensor::<f32>::zeros([1 << 32, 1 << 32])));
    assert_eq!(
        msg,
        "full: shape [4294967296, 4294967296] has more elements than a tensor of 4-byte values can hold"
    );
    // Elements that fit in usize but not their bytes.
    let msg = panic_message(|| drop(Tensor::<f64>::zeros([1 << 61])));
    assert!(
        msg.starts_with("full: shape [2305843009213693952]"),
        "{msg}"
    );
    let t = Tensor::<f32>::arange(6);
    let msg = panic_message(|| drop(t.reshape([1 << 32, 1 << 32])));
    assert_eq!(
        msg,
        "reshape: cannot view [6] (6 elements) as [4294967296, 4294967296] (more than usize can count elements)"
    );
    assert_eq!(Shape::from([1 << 40, 1 << 40, 0]).numel(), 0);
    let msg = panic_message(|| _ = Shape::from([1 << 40, 1 << 40]).numel());
    assert!(msg.contains("overflows usize"), "{msg}");
}

#[test]
fn recording_inside_a_backward_closure_says_what_to_do() {
    // A custom op whose closure records on the tape it is being run from (a
    // backward closure is `'static`, so it can only reach a leaked tape).
    let tape2: &'static Tape<f64> = Box::leak(Box::new(Tape::new()));
    let x2 = tape2.leaf(Tensor::ones([2]));
    let y2 = tape2.record("my_op", x2.value(), &[x2], move |ctx| {
        let c = tape2.constant(ctx.grad.clone());
        let mut v = tapegrad::ParentGrads::new();
        v.push(Some(c.value()));
        v
    });
    let msg = panic_message(|| drop(y2.sum().backward()));
    assert!(
        msg.starts_with("constant: cannot record on a tape while backward() is running on it"),
        "{msg}"
    );
}

#[test]
fn permute_handles_any_rank() {
    // 17 axes of size 1 or 2: reverse them and back.
    let dims: Vec<usize> = (0..17).map(|i| 1 + i % 2).collect();
    let n: usize = dims.iter().product();
    let t = Tensor::<f64>::arange(n).reshape(dims.clone());
    let rev: Vec<usize> = (0..17).rev().collect();
    let p = t.permute(&rev);
    let back: Vec<usize> = dims.iter().rev().copied().collect();
    assert_eq!(&p.shape()[..], &back[..]);
    assert_eq!(p.permute(&rev).data(), t.data());
    // The gradient of a permute is the inverse permute.
    let tape = Tape::<f64>::new();
    let x = tape.leaf(t.clone());
    let w = tape.constant(Tensor::arange(n).reshape(back));
    let g = (x.permute(&rev) * w).sum().backward();
    assert_eq!(g[x].data(), w.value().permute(&rev).data());
    let msg = panic_message(|| drop(t.permute(&[0, 1])));
    assert!(msg.contains("is not a permutation of the 17 axes"), "{msg}");
}

#[test]
fn pooled_memory_can_be_released_and_capped() {
    // One test owns the pool settings (tests in this binary run in parallel,
    // and the limit and the held-bytes count are process-wide).
    settings::release_pooled_memory();
    {
        let tape = Tape::<f32>::new();
        let x = tape.leaf(Tensor::ones([64, 16, 32, 32]));
        let y = (x * 2.0).relu().sum();
        let _ = y.backward();
    }
    let held = settings::pooled_bytes();
    assert!(
        held >= 4 << 20,
        "a large graph leaves buffers pooled ({held} bytes)"
    );
    settings::release_pooled_memory();
    assert_eq!(settings::pooled_bytes(), 0);

    // With a cap, no pool holds more than the cap.
    settings::set_pool_limit(1 << 20);
    drop(Tensor::<f32>::zeros([1 << 19])); // 2 MiB: over the cap, not kept
    assert_eq!(settings::pooled_bytes(), 0);
    drop(Tensor::<f32>::zeros([1 << 17])); // 512 KiB: kept
    assert_eq!(settings::pooled_bytes(), 512 << 10);
    settings::set_pool_limit(0); // recycling off
    drop(Tensor::<f32>::zeros([1 << 17]));
    assert!(settings::pooled_bytes() <= 512 << 10);
    settings::set_pool_limit(256 << 20);
    settings::release_pooled_memory();
    assert_eq!(settings::pooled_bytes(), 0);
}
