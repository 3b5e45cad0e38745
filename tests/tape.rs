//! The tape's contract: gradient flow, fan-out, constants and detach, idempotent
//! backward, deep graphs, memory options, check-finite, DOT output, error messages.

use tapegrad::{BackwardOptions, Tape, Tensor};

fn t(v: &[f64], shape: &[usize]) -> Tensor<f64> {
    Tensor::from_vec(v.to_vec(), shape).unwrap()
}

#[test]
fn fan_out_accumulates() {
    // y = a·b + a·c + exp(a): a is used three times.
    let tape = Tape::<f64>::new();
    let a = tape.leaf(t(&[0.5, -1.0], &[2]));
    let b = tape.leaf(t(&[2.0, 3.0], &[2]));
    let c = tape.leaf(t(&[-1.0, 4.0], &[2]));
    let y = (a * b + a * c + a.exp()).sum();
    let g = y.backward();
    for i in 0..2 {
        let expect = b.value().data()[i] + c.value().data()[i] + a.value().data()[i].exp();
        assert!((g[a].data()[i] - expect).abs() < 1e-12);
    }
    assert_eq!(g[b].data(), a.value().data());
}

#[test]
fn intermediate_gradients_are_kept() {
    let tape = Tape::<f64>::new();
    let x = tape.leaf(t(&[1.0, 2.0], &[2]));
    let h = x * x;
    let loss = (h * 3.0).sum();
    let g = loss.backward();
    assert_eq!(g[h].data(), &[3.0, 3.0]);
    assert_eq!(g[loss].item(), 1.0);
    assert_eq!(g[x].data(), &[6.0, 12.0]);
}

#[test]
fn keep_only_leaves() {
    let tape = Tape::<f64>::new();
    let x = tape.leaf(t(&[1.0, 2.0], &[2]));
    let h = x * x;
    let loss = h.sum();
    let g = loss.backward_with_options(BackwardOptions {
        keep_intermediate: false,
        ..Default::default()
    });
    assert!(g.get(h).is_none());
    assert!(g.get(loss).is_none());
    assert_eq!(g[x].data(), &[2.0, 4.0]);
}

#[test]
fn constants_and_detach_stop_the_flow() {
    let tape = Tape::<f64>::new();
    let x = tape.leaf(t(&[2.0], &[1]));
    let c = tape.constant(t(&[5.0], &[1]));
    let y = x * c + x.detach() * x;
    let g = y.sum().backward();
    assert_eq!(g[x].item(), 5.0 + 2.0);
    assert!(g.get(c).is_none());
    assert!(!c.requires_grad());
    // A graph made only of constants records no closures and gives no gradients to them.
    let z = (c * c).sum();
    assert!(!z.requires_grad());
    assert!(z.backward().get(c).is_none());
}

#[test]
fn nodes_off_the_path_get_no_gradient() {
    let tape = Tape::<f64>::new();
    let x = tape.leaf(t(&[1.0], &[1]));
    let unused = tape.leaf(t(&[1.0], &[1]));
    let later = x.exp(); // created after nothing that feeds the loss
    let loss = (x * 2.0).sum();
    let g = loss.backward();
    assert!(g.get(unused).is_none());
    assert!(g.get(later).is_none());
}

#[test]
fn backward_is_idempotent() {
    let tape = Tape::<f32>::new();
    let x = tape.leaf(Tensor::from_vec(vec![0.3, -0.7, 1.1], [3]).unwrap());
    let loss = (x.tanh() * x).sum();
    let g1 = loss.backward();
    let g2 = loss.backward();
    assert_eq!(g1[x].data(), g2[x].data());
}

#[test]
fn backward_with_seed_is_a_vjp() {
    let tape = Tape::<f64>::new();
    let a = tape.leaf(t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]));
    let y = a.matmul(a); // non-scalar
    let seed = t(&[1.0, 0.0, 0.0, 0.0], &[2, 2]);
    let g = y.backward_with(seed);
    // d(y00)/dA = [[2a00, a10], [a01, 0]] for y00 = a00² + a01·a10
    assert_eq!(g[a].data(), &[2.0, 3.0, 2.0, 0.0]);
}

#[test]
#[should_panic(expected = "backward: node 1 (exp) has shape [2], not a scalar")]
fn backward_on_non_scalar_needs_a_seed() {
    let tape = Tape::<f32>::new();
    let x = tape.leaf(Tensor::ones([2]));
    let _ = x.exp().backward();
}

#[test]
#[should_panic(expected = "backward: seed of shape [3] does not match node 1 (exp) of shape [2]")]
fn seed_shape_must_match() {
    let tape = Tape::<f32>::new();
    let x = tape.leaf(Tensor::ones([2]));
    let _ = x.exp().backward_with(Tensor::ones([3]));
}

#[test]
fn million_node_chain_does_not_overflow_the_stack() {
    let tape = Tape::<f32>::with_capacity(1_000_001);
    let x = tape.leaf(Tensor::scalar(1.0));
    let mut y = x;
    for _ in 0..1_000_000 {
        y = y * 1.0;
    }
    assert_eq!(tape.len(), 1_000_001);
    let g = y.backward_with_options(BackwardOptions {
        keep_intermediate: false,
        ..Default::default()
    });
    assert_eq!(g[x].item(), 1.0);
}

#[test]
fn f32_and_f64_agree() {
    let run32 = {
        let tape = Tape::<f32>::new();
        let x = tape.leaf(Tensor::from_vec(vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [2, 3]).unwrap());
        let y = x.softmax(1).log().mean();
        y.backward()[x].cast::<f64>()
    };
    let run64 = {
        let tape = Tape::<f64>::new();
        let x = tape.leaf(Tensor::from_vec(vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [2, 3]).unwrap());
        let y = x.softmax(1).log().mean();
        y.backward()[x].clone()
    };
    approx::assert_abs_diff_eq!(run32, run64, epsilon = 1e-6);
}

#[test]
#[should_panic(expected = "check_finite: node 2 (log) produced a non-finite value in forward")]
fn check_finite_names_the_forward_op() {
    let tape = Tape::<f64>::new();
    tape.set_check_finite(true);
    let x = tape.leaf(t(&[1.0, 2.0], &[2]));
    let y = x - 1.0; // [0, 1]
    let _ = y.log(); // log(0) = -inf
}

#[test]
#[should_panic(
    expected = "check_finite: node 1 (sqrt) produced a non-finite gradient in backward for its input 0 (node 0, leaf)"
)]
fn check_finite_names_the_backward_op() {
    let tape = Tape::<f64>::new();
    tape.set_check_finite(true);
    let x = tape.leaf(t(&[0.0], &[1])); // sqrt(0) = 0 is finite, its derivative is not
    let _ = x.sqrt().sum().backward();
}

#[test]
#[should_panic(
    expected = "check_finite: node 2 (div) produced a non-finite gradient in backward for its input 1 (node 1, leaf)"
)]
fn check_finite_names_a_closure_op_in_backward() {
    let tape = Tape::<f64>::new();
    tape.set_check_finite(true);
    let a = tape.leaf(t(&[1.0], &[1]));
    let b = tape.leaf(t(&[1e-200], &[1])); // a/b is finite, ∂/∂b = −a/b² is not
    let _ = a.div(b).sum().backward();
}

#[test]
fn scalar_chain_gradients_match_the_chain_rule() {
    // The elementwise fast path (one-element values) through every op kind it covers,
    // with fan-out: y = tanh(x·0.9 + 0.1) − x, dy/dx = 0.9·(1 − tanh²) − 1.
    let tape = Tape::<f64>::new();
    let x = tape.leaf(Tensor::scalar(0.5));
    let h = (x * 0.9 + 0.1).tanh();
    let y = h + (-x);
    let g = y.backward();
    let th = (0.5f64 * 0.9 + 0.1).tanh();
    assert_eq!(g[x].item(), 0.9 * (1.0 - th * th) - 1.0);
    assert_eq!(g[h].item(), 1.0);
    let gy = g[y].clone();
    assert_eq!((gy.item(), gy.rank()), (1.0, 0));
}

#[test]
fn summary_lists_each_nodes_parents() {
    // Single parents are stored on the node, several in the tape's shared list.
    let tape = Tape::<f32>::new();
    let a = tape.leaf(Tensor::ones([2]));
    let b = tape.leaf(Tensor::ones([2]));
    let c = (a * b).exp();
    let _ = tape.record("three", Tensor::ones([2]), &[a, c, b], |_| {
        let mut g = tapegrad::ParentGrads::new();
        g.extend([None, None, None]);
        g
    });
    let lines: Vec<String> = tape.summary().lines().map(|l| l.to_string()).collect();
    assert_eq!(lines.len(), 5);
    assert!(lines[0].ends_with("parents []"), "{}", lines[0]);
    assert!(lines[2].ends_with("parents [0, 1]"), "{}", lines[2]);
    assert!(lines[3].ends_with("parents [2]"), "{}", lines[3]);
    assert!(lines[4].ends_with("parents [0, 3, 1]"), "{}", lines[4]);
}

#[test]
fn without_check_finite_non_finite_values_flow() {
    let tape = Tape::<f64>::new();
    let x = tape.leaf(t(&[0.0], &[1]));
    let g = x.sqrt().sum().backward();
    assert!(g[x].item().is_infinite());
}

#[test]
fn dot_output_lists_nodes_edges_and_gradient_norms() {
    let tape = Tape::<f64>::new();
    let x = tape.leaf(t(&[3.0, 4.0], &[2]));
    let y = (x * 2.0).sum();
    let before = tape.to_dot(None);
    assert!(
        before.contains("n0 -> n1;") && before.contains("n1 -> n2;"),
        "{before}"
    );
    assert!(!before.contains("|grad|"));
    let g = y.backward();
    let after = tape.to_dot(Some(&g));
    assert!(after.contains("#1 mul_scalar"), "{after}");
    assert!(after.contains("|grad| = 2.8284e0"), "{after}"); // |[2, 2]| = 2√2
}

#[test]
#[should_panic(expected = "gradients: node 1 (constant) has no gradient")]
fn indexing_a_missing_gradient_names_the_node() {
    let tape = Tape::<f32>::new();
    let x = tape.leaf(Tensor::ones([1]));
    let c = tape.constant(Tensor::ones([1]));
    let g = (x * c).sum().backward();
    let _ = &g[c];
}

#[test]
#[should_panic(
    expected = "backward of node 1 (bad): gradient for input 0 has shape [3] but the input has shape [2]"
)]
fn a_custom_op_returning_the_wrong_shape_is_caught() {
    use smallvec::smallvec;
    let tape = Tape::<f32>::new();
    let x = tape.leaf(Tensor::ones([2]));
    let y = tape.record("bad", Tensor::ones([2]), &[x], |_| {
        smallvec![Some(Tensor::ones([3]))]
    });
    let _ = y.sum().backward();
}

#[test]
fn clear_reuses_the_tape() {
    let mut tape = Tape::<f32>::new();
    for step in 0..3 {
        tape.clear();
        let x = tape.leaf(Tensor::full([2], step as f32));
        let g = (x * x).sum().backward();
        assert_eq!(g[x].data(), &[2.0 * step as f32; 2]);
        assert_eq!(tape.len(), 3);
    }
}

#[test]
fn leaf_binding_shares_storage() {
    let w = Tensor::<f32>::ones([64, 64]);
    let tape = Tape::<f32>::new();
    let v = tape.leaf(w.clone());
    assert!(v.value().shares_storage(&w));
}

#[test]
#[should_panic(expected = "mul: input 1 (node 0) belongs to another tape")]
fn vars_of_two_tapes_cannot_be_mixed() {
    let t1 = Tape::<f64>::new();
    let t2 = Tape::<f64>::new();
    let a = t1.leaf(Tensor::scalar(2.0));
    let b = t2.leaf(Tensor::scalar(3.0));
    let _ = a * b;
}

/// Elementwise ops on tensors large enough to be split between threads give,
/// at 1 and 2 threads, exactly the per-element formula, forward and backward.
#[test]
fn large_elementwise_ops_match_the_per_element_formula() {
    let n = 300_001; // not a multiple of the thread count
    let x: Vec<f64> = (0..n)
        .map(|i| ((i * 7919) % 2001) as f64 / 1000.0 - 1.0)
        .collect();
    for threads in [1, 2] {
        tapegrad::gemm::set_num_threads(threads);
        let tape = Tape::<f64>::new();
        let xv = tape.leaf(Tensor::from_vec(x.clone(), [n]).unwrap());
        let y = (xv.relu() * 3.0 + xv.tanh()).sum();
        let g = y.backward();
        let got = g[xv].data();
        for (i, &v) in x.iter().enumerate() {
            let relu_d = if v > 0.0 { 3.0 } else { 0.0 };
            let want = relu_d + (1.0 - v.tanh() * v.tanh());
            assert!(
                (got[i] - want).abs() < 1e-12,
                "{threads} threads, element {i}"
            );
        }
    }
    tapegrad::gemm::set_num_threads(0);
}
