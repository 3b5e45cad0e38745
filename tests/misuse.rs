//! Every public op given invalid shapes or options panics (or errs) with a
//! message that names the op and the offending values: one table row per
//! misuse, checked against the exact text, so a message cannot silently
//! degrade into an index panic from deep inside a kernel.

mod common;
use common::panics::panic_message;

use std::panic::{AssertUnwindSafe, catch_unwind};
use tapegrad::{
    Conv2dOptions, CrossEntropyOptions, Mask, Pool2dOptions, Reduction, Tape, Tensor, Var,
};

/// A misuse: its name, what it does on a fresh tape, and the exact message expected.
type Case = (&'static str, Box<dyn Fn(&Tape<f64>)>, &'static str);

fn leaf<'t>(tape: &'t Tape<f64>, shape: &[usize]) -> Var<'t, f64> {
    tape.leaf(Tensor::ones(shape))
}

fn cases() -> Vec<Case> {
    vec![
        (
            "add",
            Box::new(|t| _ = leaf(t, &[2, 3]) + leaf(t, &[4])),
            "add: shapes [2, 3] and [4] cannot be broadcast together",
        ),
        (
            "sub",
            Box::new(|t| _ = leaf(t, &[2, 3]) - leaf(t, &[2, 2])),
            "sub: shapes [2, 3] and [2, 2] cannot be broadcast together",
        ),
        (
            "mul",
            Box::new(|t| _ = leaf(t, &[3]) * leaf(t, &[2])),
            "mul: shapes [3] and [2] cannot be broadcast together",
        ),
        (
            "div",
            Box::new(|t| _ = leaf(t, &[3, 2]) / leaf(t, &[2, 3, 4])),
            "div: shapes [3, 2] and [2, 3, 4] cannot be broadcast together",
        ),
        (
            "matmul inner",
            Box::new(|t| _ = leaf(t, &[2, 3]).matmul(leaf(t, &[4, 5]))),
            "matmul: [2, 3] × [4, 5]: inner dimensions 3 and 4 differ",
        ),
        (
            "matmul rank",
            Box::new(|t| _ = leaf(t, &[3]).matmul(leaf(t, &[3, 5]))),
            "matmul: [3] × [3, 5]: expected 2-D × 2-D, 3-D × 3-D or 3-D × 2-D",
        ),
        (
            "linear weight",
            Box::new(|t| _ = leaf(t, &[2, 3]).linear(leaf(t, &[4, 5]), None)),
            "linear: input [2, 3] and weight [4, 5] do not fit: expected [N, in] and [out, in]",
        ),
        (
            "linear bias",
            Box::new(|t| _ = leaf(t, &[2, 3]).linear(leaf(t, &[4, 3]), Some(leaf(t, &[5])))),
            "linear: bias [5] does not match weight [4, 3]: expected [4]",
        ),
        (
            "sum_axes out of range",
            Box::new(|t| _ = leaf(t, &[2, 3]).sum_axes(&[2], false)),
            "sum_axes: axis 2 is out of range for shape [2, 3] (rank 2)",
        ),
        (
            "mean_axes twice",
            Box::new(|t| _ = leaf(t, &[2, 3]).mean_axes(&[1, -1], false)),
            "mean_axes: axis 1 given twice for shape [2, 3]",
        ),
        (
            "max_axis empty",
            Box::new(|t| _ = leaf(t, &[2, 0]).max_axis(1, false)),
            "max_axis: axis 1 of shape [2, 0] is empty",
        ),
        (
            "reshape",
            Box::new(|t| _ = leaf(t, &[2, 3]).reshape([4])),
            "reshape: cannot view [2, 3] (6 elements) as [4] (4 elements)",
        ),
        (
            "permute",
            Box::new(|t| _ = leaf(t, &[2, 3]).permute(&[0, 0])),
            "permute: [0, 0] is not a permutation of the 2 axes of shape [2, 3]",
        ),
        (
            "transpose",
            Box::new(|t| _ = leaf(t, &[2, 3]).transpose(0, 2)),
            "transpose: axis 2 is out of range for shape [2, 3] (rank 2)",
        ),
        (
            "softmax axis",
            Box::new(|t| _ = leaf(t, &[2, 3]).softmax(2)),
            "softmax: axis 2 is out of range for shape [2, 3] (rank 2)",
        ),
        (
            "log_softmax axis",
            Box::new(|t| _ = leaf(t, &[2, 3]).log_softmax(-3)),
            "log_softmax: axis -3 is out of range for shape [2, 3] (rank 2)",
        ),
        (
            "mse_loss",
            Box::new(|t| _ = leaf(t, &[2, 3]).mse_loss(leaf(t, &[3, 2]))),
            "mse_loss: input [2, 3] and target [3, 2] must have the same shape",
        ),
        (
            "cross_entropy rank",
            Box::new(|t| _ = leaf(t, &[2, 3, 4]).cross_entropy(&[0, 1])),
            "cross_entropy: logits must be [N, C], got [2, 3, 4]",
        ),
        (
            "cross_entropy count",
            Box::new(|t| _ = leaf(t, &[2, 3]).cross_entropy(&[0])),
            "cross_entropy: logits [2, 3] need 2 targets, got 1",
        ),
        (
            "cross_entropy target",
            Box::new(|t| _ = leaf(t, &[2, 3]).cross_entropy(&[0, 3])),
            "cross_entropy: target[1] = 3 is out of range for 3 classes (logits [2, 3])",
        ),
        (
            "maximum",
            Box::new(|t| _ = leaf(t, &[2, 3]).maximum(leaf(t, &[4]))),
            "maximum: shapes [2, 3] and [4] cannot be broadcast together",
        ),
        (
            "minimum",
            Box::new(|t| _ = leaf(t, &[3]).minimum(leaf(t, &[2, 2]))),
            "minimum: shapes [3] and [2, 2] cannot be broadcast together",
        ),
        (
            "select",
            Box::new(|t| {
                _ = Var::select(
                    &Mask::new(vec![true; 6], [2, 3]).unwrap(),
                    leaf(t, &[4]),
                    leaf(t, &[2, 3]),
                )
            }),
            "select: mask [2, 3], a [4] and b [2, 3] cannot be broadcast together",
        ),
        (
            "hardtanh min > max",
            Box::new(|t| _ = leaf(t, &[2]).hardtanh(1.0, -1.5)),
            "hardtanh: min 1 is greater than max -1.5",
        ),
        (
            "mse_loss_with",
            Box::new(|t| _ = leaf(t, &[2, 3]).mse_loss_with(leaf(t, &[3, 2]), Reduction::Sum)),
            "mse_loss_with: input [2, 3] and target [3, 2] must have the same shape",
        ),
        (
            "l1_loss",
            Box::new(|t| _ = leaf(t, &[2, 3]).l1_loss(leaf(t, &[3]), Reduction::Mean)),
            "l1_loss: input [2, 3] and target [3] must have the same shape",
        ),
        (
            "smooth_l1_loss beta",
            Box::new(|t| _ = leaf(t, &[2]).smooth_l1_loss(leaf(t, &[2]), -0.5, Reduction::Mean)),
            "smooth_l1_loss: beta -0.5 must be non-negative",
        ),
        (
            "huber_loss delta",
            Box::new(|t| _ = leaf(t, &[2]).huber_loss(leaf(t, &[2]), 0.0, Reduction::Mean)),
            "huber_loss: delta 0 must be positive",
        ),
        (
            "huber_loss shapes",
            Box::new(|t| _ = leaf(t, &[2]).huber_loss(leaf(t, &[1]), 1.0, Reduction::None)),
            "huber_loss: input [2] and target [1] must have the same shape",
        ),
        (
            "bce_with_logits shapes",
            Box::new(|t| {
                _ = leaf(t, &[2, 4]).binary_cross_entropy_with_logits(
                    leaf(t, &[2, 1]),
                    None,
                    Reduction::Mean,
                )
            }),
            "binary_cross_entropy_with_logits: input [2, 4] and target [2, 1] must have the same shape",
        ),
        (
            "bce_with_logits pos_weight shape",
            Box::new(|t| {
                _ = leaf(t, &[2, 4]).binary_cross_entropy_with_logits(
                    leaf(t, &[2, 4]),
                    Some(&Tensor::ones([3])),
                    Reduction::Mean,
                )
            }),
            "binary_cross_entropy_with_logits: pos_weight [3] does not broadcast to input [2, 4]",
        ),
        (
            "bce_with_logits pos_weight negative",
            Box::new(|t| {
                _ = leaf(t, &[2, 2]).binary_cross_entropy_with_logits(
                    leaf(t, &[2, 2]),
                    Some(&Tensor::from_vec(vec![1.0, -2.0], [2]).unwrap()),
                    Reduction::Mean,
                )
            }),
            "binary_cross_entropy_with_logits: pos_weight[1] = -2 is negative",
        ),
        (
            "nll_loss rank",
            Box::new(|t| _ = leaf(t, &[3]).nll_loss(&[0, 1, 2], None, None, Reduction::Mean)),
            "nll_loss: input must be [N, C] or [N, C, d1, …], got [3]",
        ),
        (
            "nll_loss no classes",
            Box::new(|t| _ = leaf(t, &[2, 0]).nll_loss(&[0, 0], None, None, Reduction::Mean)),
            "nll_loss: input [2, 0] has no classes",
        ),
        (
            "nll_loss count",
            Box::new(|t| _ = leaf(t, &[2, 3, 4]).nll_loss(&[0; 5], None, None, Reduction::Mean)),
            "nll_loss: input [2, 3, 4] needs 8 targets (one per element of [2, 4]), got 5",
        ),
        (
            "nll_loss target",
            Box::new(|t| _ = leaf(t, &[2, 3]).nll_loss(&[0, 3], None, Some(4), Reduction::Mean)),
            "nll_loss: target[1] = 3 is out of range for 3 classes (input [2, 3])",
        ),
        (
            "nll_loss weight shape",
            Box::new(|t| {
                _ = leaf(t, &[2, 3]).nll_loss(
                    &[0, 1],
                    Some(&Tensor::ones([2])),
                    None,
                    Reduction::Mean,
                )
            }),
            "nll_loss: weight [2] must be [C] = [3] for input [2, 3]",
        ),
        (
            "nll_loss weight negative",
            Box::new(|t| {
                _ = leaf(t, &[2, 3]).nll_loss(
                    &[0, 1],
                    Some(&Tensor::from_vec(vec![1.0, 1.0, -0.5], [3]).unwrap()),
                    None,
                    Reduction::Mean,
                )
            }),
            "nll_loss: weight[2] = -0.5 is negative",
        ),
        (
            "cross_entropy_with target",
            Box::new(|t| {
                _ = leaf(t, &[1, 3, 2, 2]).cross_entropy_with(
                    &[0, 255, 1, 7],
                    CrossEntropyOptions {
                        ignore_index: Some(255),
                        ..Default::default()
                    },
                )
            }),
            "cross_entropy_with: target[3] = 7 is out of range for 3 classes (input [1, 3, 2, 2])",
        ),
        (
            "cross_entropy_with label_smoothing",
            Box::new(|t| {
                _ = leaf(t, &[2, 3]).cross_entropy_with(
                    &[0, 1],
                    CrossEntropyOptions {
                        label_smoothing: 1.5,
                        ..Default::default()
                    },
                )
            }),
            "cross_entropy_with: label_smoothing 1.5 must be in [0, 1]",
        ),
        (
            "cross_entropy_with weight shape",
            Box::new(|t| {
                _ = leaf(t, &[2, 3]).cross_entropy_with(
                    &[0, 1],
                    CrossEntropyOptions {
                        weight: Some(Tensor::ones([3, 1])),
                        ..Default::default()
                    },
                )
            }),
            "cross_entropy_with: weight [3, 1] must be [C] = [3] for input [2, 3]",
        ),
        (
            "conv2d rank",
            Box::new(|t| {
                _ = leaf(t, &[1, 3, 5]).conv2d(
                    leaf(t, &[2, 3, 3, 3]),
                    None,
                    Conv2dOptions::default(),
                )
            }),
            "conv2d: input [1, 3, 5] and weight [2, 3, 3, 3] must be rank 4: input [N, C, H, W], weight [O, C/groups, kh, kw]",
        ),
        (
            "conv2d channels",
            Box::new(|t| {
                _ = leaf(t, &[1, 3, 5, 5]).conv2d(
                    leaf(t, &[2, 2, 3, 3]),
                    None,
                    Conv2dOptions::default(),
                )
            }),
            "conv2d: input [1, 3, 5, 5] has 3 channels but weight [2, 2, 3, 3] expects 2·groups(1) = 2",
        ),
        (
            "conv2d groups",
            Box::new(|t| {
                _ = leaf(t, &[1, 4, 5, 5]).conv2d(
                    leaf(t, &[3, 2, 3, 3]),
                    None,
                    Conv2dOptions::default().groups(2),
                )
            }),
            "conv2d: weight [3, 2, 3, 3] has 3 output channels, which groups(2) does not divide (input [1, 4, 5, 5])",
        ),
        (
            "conv2d bias",
            Box::new(|t| {
                _ = leaf(t, &[1, 3, 5, 5]).conv2d(
                    leaf(t, &[2, 3, 3, 3]),
                    Some(leaf(t, &[3])),
                    Conv2dOptions::default(),
                )
            }),
            "conv2d: bias [3] does not match weight [2, 3, 3, 3]: expected [2] (input [1, 3, 5, 5])",
        ),
        (
            "conv2d kernel too large",
            Box::new(|t| {
                _ = leaf(t, &[1, 3, 2, 5]).conv2d(
                    leaf(t, &[2, 3, 3, 3]),
                    None,
                    Conv2dOptions::default(),
                )
            }),
            "conv2d: kernel (3, 3) with dilation (1, 1) spans (3, 3), larger than the padded input (2, 5) (input [1, 3, 2, 5] padded by (0, 0), weight [2, 3, 3, 3])",
        ),
        (
            "conv2d stride 0",
            Box::new(|t| {
                _ = leaf(t, &[1, 3, 5, 5]).conv2d(
                    leaf(t, &[2, 3, 3, 3]),
                    None,
                    Conv2dOptions::default().stride(0),
                )
            }),
            "conv2d: stride (0, 0) must be at least 1 on both axes (input [1, 3, 5, 5], weight [2, 3, 3, 3])",
        ),
        (
            "conv2d dilation 0",
            Box::new(|t| {
                _ = leaf(t, &[1, 3, 5, 5]).conv2d(
                    leaf(t, &[2, 3, 3, 3]),
                    None,
                    Conv2dOptions::default().dilation((1, 0)),
                )
            }),
            "conv2d: dilation (1, 0) must be at least 1 on both axes (input [1, 3, 5, 5], weight [2, 3, 3, 3])",
        ),
        (
            "conv2d groups 0",
            Box::new(|t| {
                _ = leaf(t, &[1, 3, 5, 5]).conv2d(
                    leaf(t, &[2, 3, 3, 3]),
                    None,
                    Conv2dOptions::default().groups(0),
                )
            }),
            "conv2d: groups must be at least 1 (input [1, 3, 5, 5], weight [2, 3, 3, 3])",
        ),
        (
            "max_pool2d rank",
            Box::new(|t| _ = leaf(t, &[3, 5, 5]).max_pool2d(2)),
            "max_pool2d: input [3, 5, 5] must be [N, C, H, W] (rank 4)",
        ),
        (
            "max_pool2d kernel too large",
            Box::new(|t| _ = leaf(t, &[1, 1, 5, 5]).max_pool2d(6)),
            "max_pool2d: kernel (6, 6) is larger than the padded input (5, 5) (input [1, 1, 5, 5] padded by (0, 0))",
        ),
        (
            "max_pool2d stride 0",
            Box::new(|t| _ = leaf(t, &[1, 1, 5, 5]).max_pool2d(Pool2dOptions::new(2).stride(0))),
            "max_pool2d: stride (0, 0) must be at least 1 on both axes (input [1, 1, 5, 5])",
        ),
        (
            "avg_pool2d padding",
            Box::new(|t| _ = leaf(t, &[1, 1, 5, 5]).avg_pool2d(Pool2dOptions::new(2).padding(2))),
            "avg_pool2d: padding (2, 2) must be at most half the kernel (2, 2) (input [1, 1, 5, 5])",
        ),
        (
            "backward of a vector",
            Box::new(|t| _ = leaf(t, &[2]).backward()),
            "backward: node 0 (leaf) has shape [2], not a scalar; use backward_with(seed) for a vector-Jacobian product",
        ),
        (
            "backward seed",
            Box::new(|t| _ = leaf(t, &[2]).backward_with(Tensor::ones([3]))),
            "backward: seed of shape [3] does not match node 0 (leaf) of shape [2]",
        ),
        (
            "Tensor::reshape",
            Box::new(|_| _ = Tensor::<f64>::ones([2, 3]).reshape([5])),
            "reshape: cannot view [2, 3] (6 elements) as [5] (5 elements)",
        ),
        (
            "Tensor::permute",
            Box::new(|_| _ = Tensor::<f64>::ones([2, 3]).permute(&[1])),
            "permute: [1] is not a permutation of the 2 axes of shape [2, 3]",
        ),
        (
            "Tensor::zip_map",
            Box::new(|_| {
                _ = Tensor::<f64>::ones([2]).zip_map(&Tensor::ones([3]), "my_op", |a, b| a + b)
            }),
            "my_op: shapes [2] and [3] differ",
        ),
        (
            "Tensor::broadcast_to",
            Box::new(|_| _ = Tensor::<f64>::ones([2, 3]).broadcast_to([3, 3])),
            "broadcast_to: shape [2, 3] does not broadcast to [3, 3]",
        ),
        (
            "Tensor::sum_to",
            Box::new(|_| _ = Tensor::<f64>::ones([2, 3]).sum_to([4])),
            "sum_to: shape [4] does not broadcast to [2, 3]",
        ),
        (
            "Tensor::item",
            Box::new(|_| _ = Tensor::<f64>::ones([2]).item()),
            "item: tensor of shape [2] has 2 elements, not 1",
        ),
        (
            "Tensor::get",
            Box::new(|_| _ = Tensor::<f64>::ones([2, 3]).get(&[1, 3])),
            "get: index [1, 3] is out of bounds for shape [2, 3]",
        ),
    ]
}

#[test]
fn every_misuse_gets_a_message_naming_the_op_and_the_values() {
    let mut wrong = Vec::new();
    for (name, f, want) in cases() {
        let tape = Tape::<f64>::new();
        let got = panic_message(|| f(&tape));
        if got != want {
            wrong.push(format!("{name}:\n   got: {got}\n  want: {want}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn fallible_constructors_return_errors_naming_the_op() {
    let err = Tensor::<f64>::from_vec(vec![1.0; 5], [2, 3]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "from_vec: 5 values do not fill shape [2, 3] (6 elements)"
    );
    let err = Tensor::<f64>::from_vec(vec![], [1 << 33, 1 << 33]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "from_vec: shape [8589934592, 8589934592] has more elements than usize can count"
    );
    let err = Mask::new(vec![true; 3], [2, 2]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Mask::new: 3 values do not fill shape [2, 2] (4 elements)"
    );
}

/// A misuse panic points at the user's line, not into tapegrad's source.
#[test]
fn panics_point_at_the_callers_line() {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let hook_seen = seen.clone();
    let previous = std::panic::take_hook();
    // Other tests of this binary panic on their own threads at the same time:
    // record only this thread's panics.
    let me = std::thread::current().id();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != me {
            return;
        }
        let at = info
            .location()
            .map(|l| l.file().to_string())
            .unwrap_or_default();
        hook_seen.lock().unwrap().push(at);
    }));
    let tape = Tape::<f64>::new();
    type Case<'a> = (&'static str, Box<dyn Fn() + 'a>);
    let cases: Vec<Case> = vec![
        (
            "add",
            Box::new(|| _ = leaf(&tape, &[2, 3]) + leaf(&tape, &[4])),
        ),
        (
            "matmul",
            Box::new(|| _ = leaf(&tape, &[2, 3]).matmul(leaf(&tape, &[4, 5]))),
        ),
        (
            "reshape",
            Box::new(|| _ = leaf(&tape, &[2, 3]).reshape([4])),
        ),
        ("softmax", Box::new(|| _ = leaf(&tape, &[2, 3]).softmax(2))),
        (
            "cross_entropy",
            Box::new(|| _ = leaf(&tape, &[2, 3]).cross_entropy(&[0, 3])),
        ),
        (
            "conv2d",
            Box::new(|| {
                _ = leaf(&tape, &[1, 3, 5, 5]).conv2d(
                    leaf(&tape, &[2, 2, 3, 3]),
                    None,
                    Conv2dOptions::default(),
                )
            }),
        ),
        (
            "max_pool2d",
            Box::new(|| _ = leaf(&tape, &[3, 5, 5]).max_pool2d(2)),
        ),
        ("item", Box::new(|| _ = Tensor::<f64>::ones([2]).item())),
    ];
    let mut wrong = vec![];
    for (name, f) in cases {
        seen.lock().unwrap().clear();
        let _ = catch_unwind(AssertUnwindSafe(f));
        let at = seen.lock().unwrap().last().cloned().unwrap_or_default();
        if !at.ends_with("tests/misuse.rs") {
            wrong.push(format!("{name}: {at}"));
        }
    }
    std::panic::set_hook(previous);
    assert!(
        wrong.is_empty(),
        "panics located inside tapegrad: {wrong:?}"
    );
}
