//! batch_norm_train, batch_norm_eval, layer_norm and group_norm: float64
//! gradient checks of every option, PyTorch's values and gradients
//! (tests/fixtures/norm.txt, from scripts/gen_fixtures.py), batch norm on a
//! large NCHW tensor against a naive definition at 1 and 2 threads, and the
//! exact panic messages.

mod common;
use common::fixtures::{self, Case};
use common::panics::panic_message;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tapegrad::gradcheck::{Options, gradcheck};
use tapegrad::{Float, Tape, Tensor, Var, settings};

fn randn(shape: &[usize], seed: u64) -> Tensor<f64> {
    Tensor::randn(shape, &mut StdRng::seed_from_u64(seed))
}

fn uniform(shape: &[usize], lo: f64, hi: f64, seed: u64) -> Tensor<f64> {
    Tensor::rand_uniform(shape, lo, hi, &mut StdRng::seed_from_u64(seed))
}

fn check<F>(name: &str, f: F, inputs: &[Tensor<f64>])
where
    F: for<'t> Fn(&'t Tape<f64>, &[Var<'t, f64>]) -> Var<'t, f64>,
{
    let report = gradcheck(f, inputs, Options::default());
    assert!(report.passed(), "{name}: {report}");
}

/// Every combination of (weight, bias) given or not.
const AFFINE: [(bool, bool); 4] = [(true, true), (false, false), (true, false), (false, true)];

/// The inputs of a gradcheck: x, then weight and bias of shape `param` if given.
fn inputs(x: Tensor<f64>, param: &[usize], w: bool, b: bool, seed: u64) -> Vec<Tensor<f64>> {
    let mut v = vec![x];
    if w {
        v.push(uniform(param, 0.5, 1.5, seed + 1));
    }
    if b {
        v.push(randn(param, seed + 2));
    }
    v
}

/// Weight and bias among the gradcheck's vars.
fn affine_vars<'t>(
    v: &[Var<'t, f64>],
    w: bool,
    b: bool,
) -> (Option<Var<'t, f64>>, Option<Var<'t, f64>>) {
    (w.then(|| v[1]), b.then(|| v[1 + usize::from(w)]))
}

#[test]
fn batch_norm_gradcheck() {
    for (rank, shape) in [(2, vec![5, 3]), (3, vec![3, 2, 4]), (4, vec![2, 3, 3, 2])] {
        let c = shape[1];
        for (k, &(w, b)) in AFFINE.iter().enumerate() {
            let seed = 10 * rank + k as u64;
            let x = randn(&shape, seed).map(|v| 1.5 * v + 0.3);
            let inp = inputs(x, &[c], w, b, seed);
            check(
                &format!("batch_norm_train {shape:?} weight {w} bias {b}"),
                |_, v| {
                    let (wv, bv) = affine_vars(v, w, b);
                    v[0].batch_norm_train(wv, bv, 1e-5).0
                },
                &inp,
            );
            let rm = randn(&[c], seed + 3);
            let rv = uniform(&[c], 0.5, 2.0, seed + 4);
            check(
                &format!("batch_norm_eval {shape:?} weight {w} bias {b}"),
                |_, v| {
                    let (wv, bv) = affine_vars(v, w, b);
                    v[0].batch_norm_eval(wv, bv, &rm, &rv, 1e-5)
                },
                &inp,
            );
        }
    }
}

#[test]
fn layer_norm_gradcheck() {
    let cases: [(&[usize], &[usize]); 3] =
        [(&[2, 3, 4], &[4]), (&[2, 3, 4], &[3, 4]), (&[5], &[5])];
    for (i, (shape, norm)) in cases.into_iter().enumerate() {
        for (k, &(w, b)) in AFFINE.iter().enumerate() {
            let seed = 100 + 10 * i as u64 + k as u64;
            let inp = inputs(randn(shape, seed), norm, w, b, seed);
            check(
                &format!("layer_norm {shape:?} over {norm:?} weight {w} bias {b}"),
                |_, v| {
                    let (wv, bv) = affine_vars(v, w, b);
                    v[0].layer_norm(norm, wv, bv, 1e-5)
                },
                &inp,
            );
        }
    }
}

#[test]
fn group_norm_gradcheck() {
    let shapes: [&[usize]; 3] = [&[2, 4, 3, 2], &[2, 4, 5], &[3, 4]];
    for (i, shape) in shapes.into_iter().enumerate() {
        for groups in [1, 2, 4] {
            for (k, &(w, b)) in AFFINE.iter().enumerate() {
                let seed = 200 + 20 * i as u64 + 4 * groups as u64 + k as u64;
                let inp = inputs(randn(shape, seed), &[4], w, b, seed);
                check(
                    &format!("group_norm {shape:?} groups {groups} weight {w} bias {b}"),
                    |_, v| {
                        let (wv, bv) = affine_vars(v, w, b);
                        v[0].group_norm(groups, wv, bv, 1e-5)
                    },
                    &inp,
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// PyTorch reference values
// ---------------------------------------------------------------------------

fn tensor(case: &Case, name: &str) -> Tensor<f64> {
    let (shape, data) = case.tensor(name);
    Tensor::from_vec(data.to_vec(), shape).unwrap()
}

fn assert_close(case: &Case, what: &str, got: &Tensor<f64>, tol: f64) {
    let want = tensor(case, what);
    assert_eq!(got.shape(), want.shape(), "{}: {what} shape", case.name);
    let d = got.max_abs_diff(&want);
    assert!(
        d <= tol,
        "{}: {what} differs from PyTorch by {d:e}",
        case.name
    );
}

/// Runs `op` on the case's x, weight and bias and compares y, dx, dw and db.
fn check_case<F>(case: &Case, op: F)
where
    F: for<'t> Fn(Var<'t, f64>, Option<Var<'t, f64>>, Option<Var<'t, f64>>) -> Var<'t, f64>,
{
    let tape = Tape::<f64>::new();
    let x = tape.leaf(tensor(case, "x"));
    let w = case
        .param_bool("weight")
        .then(|| tape.leaf(tensor(case, "w")));
    let b = case
        .param_bool("bias")
        .then(|| tape.leaf(tensor(case, "b")));
    let y = op(x, w, b);
    let g = y.backward_with(tensor(case, "dy"));
    assert_close(case, "y", &y.value(), 1e-10);
    assert_close(case, "dx", &g[x], 1e-10);
    if let Some(w) = w {
        assert_close(case, "dw", &g[w], 1e-10);
    }
    if let Some(b) = b {
        assert_close(case, "db", &g[b], 1e-10);
    }
}

#[test]
fn norms_match_pytorch() {
    let cases = fixtures::load("norm.txt");
    let count = |prefix: &str| cases.iter().filter(|c| c.name.starts_with(prefix)).count();
    for case in &cases {
        let name = case.name.as_str();
        if name.starts_with("bn_running") {
            continue;
        }
        let eps = case.param_f64("eps");
        if name.starts_with("bn_train") {
            check_case(case, |x, w, b| x.batch_norm_train(w, b, eps).0);
        } else if name.starts_with("bn_eval") {
            let (rm, rv) = (tensor(case, "running_mean"), tensor(case, "running_var"));
            check_case(case, |x, w, b| x.batch_norm_eval(w, b, &rm, &rv, eps));
        } else if name.starts_with("ln_") {
            let norm = case.param_usize("normalized_shape");
            check_case(case, |x, w, b| x.layer_norm(&norm, w, b, eps));
        } else if name.starts_with("gn_") {
            let groups = case.param_usize("groups")[0];
            check_case(case, |x, w, b| x.group_norm(groups, w, b, eps));
        } else {
            panic!("unknown norm fixture case {name}");
        }
    }
    assert_eq!(count("bn_train"), 13);
    assert_eq!(count("bn_eval"), 12);
    assert_eq!(count("ln_"), 12);
    assert_eq!(count("gn_"), 10);
}

/// BatchNorm2d's running statistics, updated from the op's batch statistics
/// the way a layer does (PyTorch's rule), over three training passes.
#[test]
fn batch_stats_give_pytorch_running_statistics() {
    let cases = fixtures::load("norm.txt");
    for name in ["bn_running_0.1", "bn_running_none"] {
        let case = fixtures::find(&cases, name);
        let momentum = case.param_f64("momentum");
        let eps = case.param_f64("eps");
        let mut rm = tensor(case, "running_mean0");
        let mut rv = tensor(case, "running_var0");
        for k in 1..=3 {
            let tape = Tape::<f64>::new();
            let x = tape.constant(tensor(case, &format!("x{k}")));
            let (y, stats) = x.batch_norm_train(None, None, eps);
            assert_close(case, &format!("y{k}"), &y.value(), 1e-10);
            let f = if momentum < 0.0 {
                1.0 / k as f64
            } else {
                momentum
            };
            let n = stats.count as f64;
            let unbiased = stats.var.map(|v| v * n / (n - 1.0));
            rm = rm.zip_map(&stats.mean, "update", |r, m| (1.0 - f) * r + f * m);
            rv = rv.zip_map(&unbiased, "update", |r, v| (1.0 - f) * r + f * v);
            assert_close(case, &format!("running_mean{k}"), &rm, 1e-12);
            assert_close(case, &format!("running_var{k}"), &rv, 1e-12);
            assert_eq!(
                case.tensor(&format!("num_batches_tracked{k}")).1,
                &[k as f64]
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Large tensors against the definition, at 1 and 2 threads
// ---------------------------------------------------------------------------

/// Training-mode batch norm by its definition, in f64: y and the gradients of
/// x, weight and bias for upstream gradient `g`.
fn naive_batch_norm(
    x: &[f64],
    g: &[f64],
    shape: [usize; 4],
    w: &[f64],
    b: &[f64],
    eps: f64,
) -> [Vec<f64>; 4] {
    let [n, c, h, wd] = shape;
    let hw = h * wd;
    let m = (n * hw) as f64;
    let at = |i: usize, ch: usize, p: usize| (i * c + ch) * hw + p;
    let (mut y, mut dx) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    let (mut dw, mut db) = (vec![0.0; c], vec![0.0; c]);
    for ch in 0..c {
        let idx: Vec<usize> = (0..n)
            .flat_map(|i| (0..hw).map(move |p| at(i, ch, p)))
            .collect();
        let mean = idx.iter().map(|&k| x[k]).sum::<f64>() / m;
        let var = idx.iter().map(|&k| (x[k] - mean).powi(2)).sum::<f64>() / m;
        let r = 1.0 / (var + eps).sqrt();
        let xhat = |k: usize| (x[k] - mean) * r;
        let mg = idx.iter().map(|&k| g[k]).sum::<f64>() / m;
        let mgx = idx.iter().map(|&k| g[k] * xhat(k)).sum::<f64>() / m;
        for &k in &idx {
            y[k] = w[ch] * xhat(k) + b[ch];
            dx[k] = w[ch] * r * (g[k] - mg - xhat(k) * mgx);
        }
        dw[ch] = mgx * m;
        db[ch] = mg * m;
    }
    [y, dx, dw, db]
}

/// Batch norm of a [8, 32, 32, 32] tensor in `T`: forward and backward
/// against the definition, and the same bits at 1 and 2 threads.
fn large_batch_norm<T: Float>(tol: f64) {
    let shape = [8, 32, 32, 32];
    let mut rng = StdRng::seed_from_u64(7);
    // A mean far above the spread: in f32, subtracting the mean rounded to
    // f32 alone would be off by ~1e-6 of the spread.
    let x = Tensor::<f64>::randn(shape, &mut rng).map(|v| v + 100.0);
    let g = Tensor::<f64>::randn(shape, &mut rng);
    let w = uniform(&[32], 0.5, 1.5, 8);
    let b = randn(&[32], 9);
    let (xt, gt, wt, bt) = (x.cast::<T>(), g.cast::<T>(), w.cast::<T>(), b.cast::<T>());
    // The definition on the values the op sees (rounded to T).
    let want = naive_batch_norm(
        xt.cast::<f64>().data(),
        gt.cast::<f64>().data(),
        shape,
        wt.cast::<f64>().data(),
        bt.cast::<f64>().data(),
        1e-5,
    );
    let mut results = Vec::new();
    for threads in [1, 2] {
        settings::set_num_threads(threads);
        let tape = Tape::<T>::new();
        let (xv, wv, bv) = (
            tape.leaf(xt.clone()),
            tape.leaf(wt.clone()),
            tape.leaf(bt.clone()),
        );
        let (y, _) = xv.batch_norm_train(Some(wv), Some(bv), 1e-5);
        let grads = y.backward_with(gt.clone());
        let got = [
            y.value(),
            grads[xv].clone(),
            grads[wv].clone(),
            grads[bv].clone(),
        ];
        for (what, (got, want)) in ["y", "dx", "dw", "db"].iter().zip(got.iter().zip(&want)) {
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let err = got
                .cast::<f64>()
                .data()
                .iter()
                .zip(want)
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err <= tol * scale,
                "{} {what} at {threads} threads: max error {err:e} (max |value| {scale:e})",
                T::NAME
            );
        }
        results.push(got);
    }
    settings::set_num_threads(0);
    for (a, b) in results[0].iter().zip(&results[1]) {
        assert!(a.data() == b.data(), "{}: 1 and 2 threads differ", T::NAME);
    }
}

#[test]
fn large_batch_norm_matches_definition_f64() {
    large_batch_norm::<f64>(1e-12);
}

#[test]
fn large_batch_norm_matches_definition_f32() {
    large_batch_norm::<f32>(5e-7);
}

/// Layer and group norm give the same bits at 1 and 2 threads on large inputs.
#[test]
fn layer_and_group_norm_are_thread_count_independent() {
    let x = randn(&[8, 32, 16, 16], 11).cast::<f32>();
    let g = randn(&[8, 32, 16, 16], 12).cast::<f32>();
    let w = uniform(&[32], 0.5, 1.5, 13).cast::<f32>();
    let lw = uniform(&[16, 16], 0.5, 1.5, 14).cast::<f32>();
    let mut results = Vec::new();
    for threads in [1, 2] {
        settings::set_num_threads(threads);
        let tape = Tape::<f32>::new();
        let (xv, wv, lwv) = (
            tape.leaf(x.clone()),
            tape.leaf(w.clone()),
            tape.leaf(lw.clone()),
        );
        let gn = xv.group_norm(4, Some(wv), Some(wv), 1e-5);
        let ln = xv.layer_norm(&[16, 16], Some(lwv), None, 1e-5);
        let grads = (gn + ln).backward_with(g.clone());
        results.push([
            gn.value(),
            ln.value(),
            grads[xv].clone(),
            grads[wv].clone(),
            grads[lwv].clone(),
        ]);
    }
    settings::set_num_threads(0);
    for (a, b) in results[0].iter().zip(&results[1]) {
        assert!(a.data() == b.data(), "1 and 2 threads differ");
    }
}

// ---------------------------------------------------------------------------
// Misuse
// ---------------------------------------------------------------------------

type Misuse = (&'static str, Box<dyn Fn(&Tape<f64>)>, &'static str);

fn leaf<'t>(tape: &'t Tape<f64>, shape: &[usize]) -> Var<'t, f64> {
    tape.leaf(Tensor::ones(shape))
}

#[test]
fn misuse_panics_name_the_op_and_shapes() {
    let ones = |s: &[usize]| Tensor::<f64>::ones(s);
    let cases: Vec<Misuse> = vec![
        (
            "batch_norm_train rank",
            Box::new(|t| _ = leaf(t, &[3]).batch_norm_train(None, None, 1e-5)),
            "batch_norm_train: input [3] must be [N, C] or [N, C, *] (rank at least 2)",
        ),
        (
            "batch_norm_train weight",
            Box::new(|t| _ = leaf(t, &[2, 3, 4]).batch_norm_train(Some(leaf(t, &[4])), None, 1e-5)),
            "batch_norm_train: weight [4] does not match input [2, 3, 4]: expected [3] (one per channel)",
        ),
        (
            "batch_norm_train bias",
            Box::new(|t| _ = leaf(t, &[2, 3]).batch_norm_train(None, Some(leaf(t, &[3, 1])), 1e-5)),
            "batch_norm_train: bias [3, 1] does not match input [2, 3]: expected [3] (one per channel)",
        ),
        (
            "batch_norm_train one value per channel",
            Box::new(|t| _ = leaf(t, &[1, 3]).batch_norm_train(None, None, 1e-5)),
            "batch_norm_train: expected more than 1 value per channel when training, got input [1, 3] (1 value per channel)",
        ),
        (
            "batch_norm_train one value per channel, spatial",
            Box::new(|t| _ = leaf(t, &[1, 2, 1, 1]).batch_norm_train(None, None, 1e-5)),
            "batch_norm_train: expected more than 1 value per channel when training, got input [1, 2, 1, 1] (1 value per channel)",
        ),
        (
            "batch_norm_train empty",
            Box::new(|t| _ = leaf(t, &[0, 2]).batch_norm_train(None, None, 1e-5)),
            "batch_norm_train: expected more than 1 value per channel when training, got input [0, 2] (0 values per channel)",
        ),
        (
            "batch_norm_eval rank",
            Box::new(move |t| {
                _ = leaf(t, &[]).batch_norm_eval(None, None, &ones(&[1]), &ones(&[1]), 1e-5)
            }),
            "batch_norm_eval: input [] must be [N, C] or [N, C, *] (rank at least 2)",
        ),
        (
            "batch_norm_eval running_mean",
            Box::new(move |t| {
                _ = leaf(t, &[2, 3]).batch_norm_eval(None, None, &ones(&[2]), &ones(&[3]), 1e-5)
            }),
            "batch_norm_eval: running_mean [2] does not match input [2, 3]: expected [3] (one per channel)",
        ),
        (
            "batch_norm_eval running_var",
            Box::new(move |t| {
                _ = leaf(t, &[2, 3]).batch_norm_eval(None, None, &ones(&[3]), &ones(&[]), 1e-5)
            }),
            "batch_norm_eval: running_var [] does not match input [2, 3]: expected [3] (one per channel)",
        ),
        (
            "batch_norm_eval weight",
            Box::new(move |t| {
                _ = leaf(t, &[2, 3]).batch_norm_eval(
                    Some(leaf(t, &[2])),
                    None,
                    &ones(&[3]),
                    &ones(&[3]),
                    1e-5,
                )
            }),
            "batch_norm_eval: weight [2] does not match input [2, 3]: expected [3] (one per channel)",
        ),
        (
            "layer_norm empty normalized_shape",
            Box::new(|t| _ = leaf(t, &[2, 3]).layer_norm(&[], None, None, 1e-5)),
            "layer_norm: normalized_shape [] must have at least one dimension (input [2, 3])",
        ),
        (
            "layer_norm not trailing",
            Box::new(|t| _ = leaf(t, &[2, 3, 4]).layer_norm(&[3], None, None, 1e-5)),
            "layer_norm: normalized_shape [3] is not the trailing shape of input [2, 3, 4]",
        ),
        (
            "layer_norm longer than input",
            Box::new(|t| _ = leaf(t, &[4]).layer_norm(&[2, 4], None, None, 1e-5)),
            "layer_norm: normalized_shape [2, 4] is not the trailing shape of input [4]",
        ),
        (
            "layer_norm weight",
            Box::new(|t| {
                _ = leaf(t, &[2, 3, 4]).layer_norm(&[3, 4], Some(leaf(t, &[4])), None, 1e-5)
            }),
            "layer_norm: weight [4] does not match input [2, 3, 4]: expected [3, 4] (normalized_shape)",
        ),
        (
            "layer_norm bias",
            Box::new(|t| _ = leaf(t, &[2, 3]).layer_norm(&[3], None, Some(leaf(t, &[1, 3])), 1e-5)),
            "layer_norm: bias [1, 3] does not match input [2, 3]: expected [3] (normalized_shape)",
        ),
        (
            "group_norm rank",
            Box::new(|t| _ = leaf(t, &[4]).group_norm(2, None, None, 1e-5)),
            "group_norm: input [4] must be [N, C] or [N, C, *] (rank at least 2)",
        ),
        (
            "group_norm zero groups",
            Box::new(|t| _ = leaf(t, &[2, 4, 3]).group_norm(0, None, None, 1e-5)),
            "group_norm: groups must be at least 1, got 0 (input [2, 4, 3])",
        ),
        (
            "group_norm groups not dividing C",
            Box::new(|t| _ = leaf(t, &[2, 4, 3]).group_norm(3, None, None, 1e-5)),
            "group_norm: the 4 channels of input [2, 4, 3] are not divisible by 3 groups",
        ),
        (
            "group_norm weight",
            Box::new(|t| _ = leaf(t, &[2, 4, 3]).group_norm(2, Some(leaf(t, &[2])), None, 1e-5)),
            "group_norm: weight [2] does not match input [2, 4, 3]: expected [4] (one per channel)",
        ),
        (
            "group_norm bias",
            Box::new(|t| _ = leaf(t, &[2, 4]).group_norm(2, None, Some(leaf(t, &[4, 1])), 1e-5)),
            "group_norm: bias [4, 1] does not match input [2, 4]: expected [4] (one per channel)",
        ),
    ];
    for (name, f, want) in cases {
        let tape = Tape::<f64>::new();
        let got = panic_message(|| f(&tape));
        assert_eq!(got, want, "{name}");
    }
}

/// Edge cases that are valid: a single sample with spatial extent trains,
/// evaluation takes a single value per channel, a group norm of one channel
/// per group with one value is 0 (plus bias), and NaN stays in its channel.
#[test]
fn edge_cases() {
    let tape = Tape::<f64>::new();
    let x = tape.leaf(Tensor::from_vec(vec![1.0, 3.0, 5.0, 9.0], [1, 2, 2]).unwrap());
    let (y, stats) = x.batch_norm_train(None, None, 0.0);
    assert_eq!(y.value().data(), &[-1.0, 1.0, -1.0, 1.0]);
    assert_eq!(
        (stats.mean.data(), stats.var.data(), stats.count),
        (&[2.0, 7.0][..], &[1.0, 4.0][..], 2)
    );

    let one = tape.leaf(Tensor::full([1, 2], 3.0));
    let (m, v) = (Tensor::full([2], 1.0), Tensor::full([2], 4.0));
    assert_eq!(
        one.batch_norm_eval(None, None, &m, &v, 0.0).value().data(),
        &[1.0, 1.0]
    );

    let b = tape.leaf(Tensor::from_vec(vec![0.5, -0.5], [2]).unwrap());
    let gn = one.group_norm(2, None, Some(b), 1e-5);
    assert_eq!(gn.value().data(), &[0.5, -0.5]);

    let nan = tape.leaf(Tensor::from_vec(vec![f64::NAN, 1.0, 2.0, 3.0], [2, 2]).unwrap());
    let (y, stats) = nan.batch_norm_train(None, None, 1e-5);
    let y = y.value();
    assert!(y.data()[0].is_nan() && y.data()[2].is_nan());
    assert!(y.data()[1].is_finite() && y.data()[3].is_finite());
    assert!(stats.var.data()[0].is_nan());

    // Empty batches: evaluation, layer norm and group norm give empty outputs.
    let empty = tape.leaf(Tensor::zeros([0, 3, 2]));
    let (m, v) = (Tensor::zeros([3]), Tensor::ones([3]));
    assert_eq!(
        empty
            .batch_norm_eval(None, None, &m, &v, 1e-5)
            .value()
            .numel(),
        0
    );
    assert_eq!(
        empty.layer_norm(&[3, 2], None, None, 1e-5).value().numel(),
        0
    );
    let g = empty.group_norm(3, None, None, 1e-5).sum().backward();
    assert_eq!(g[empty].numel(), 0);
}
