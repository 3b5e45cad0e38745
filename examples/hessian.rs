//! Second derivatives of a small network's loss: Hessian-vector products and
//! the full Hessian through `grad_graph`, both checked against central
//! differences of the gradient, then Newton's method on a small convex
//! problem (L2-regularised logistic regression), converging quadratically.
//!
//! ```text
//! cargo run --release --example hessian
//! ```

use tapegrad::higher::{hessian, hvp};
use tapegrad::prelude::*;

/// The loss of a tiny MLP (4 → 3 tanh → 2, cross-entropy) as a function of
/// all its weights packed in one vector of 4·3 + 3·2 = 18 values.
fn mlp_loss<'t>(w: Var<'t, f64>) -> Var<'t, f64> {
    let tape = w.tape();
    let x = tape.constant(
        Tensor::from_vec(
            (0..20).map(|i| ((i * 7) % 11) as f64 / 5.0 - 1.0).collect(),
            [5, 4],
        )
        .unwrap(),
    );
    let w1 = w.reshape([18, 1]);
    let (a, b) = (first(w1, 12).reshape([3, 4]), last(w1, 6).reshape([2, 3]));
    x.linear(a, None)
        .tanh()
        .linear(b, None)
        .cross_entropy(&[0, 1, 1, 0, 1])
}

/// The first `n` entries of a column vector, by a constant selection matrix.
fn first<'t>(v: Var<'t, f64>, n: usize) -> Var<'t, f64> {
    let len = v.shape()[0];
    let sel = Tensor::from_vec(
        (0..n * len)
            .map(|k| if k / len == k % len { 1.0 } else { 0.0 })
            .collect(),
        [n, len],
    )
    .unwrap();
    v.tape().constant(sel).matmul(v)
}

/// The last `n` entries of a column vector.
fn last<'t>(v: Var<'t, f64>, n: usize) -> Var<'t, f64> {
    let len = v.shape()[0];
    let off = len - n;
    let sel = Tensor::from_vec(
        (0..n * len)
            .map(|k| if k / len + off == k % len { 1.0 } else { 0.0 })
            .collect(),
        [n, len],
    )
    .unwrap();
    v.tape().constant(sel).matmul(v)
}

/// ∇f at `w` by a first-order backward.
fn grad(f: fn(Var<'_, f64>) -> Var<'_, f64>, w: &Tensor<f64>) -> Tensor<f64> {
    let tape = Tape::new();
    let v = tape.leaf(w.clone());
    f(v).backward()[v].clone()
}

fn main() {
    let mut rng = StdRng::seed_from_u64(0);
    let w = Tensor::<f64>::randn([18], &mut rng).map(|v| 0.5 * v);

    // Hessian-vector product against central differences of the gradient.
    let u = Tensor::<f64>::randn([18], &mut rng);
    let (loss, _, hu) = hvp(mlp_loss, &w, &u);
    let eps = 1e-5;
    let shifted = |s: f64| w.zip_map(&u, "shift", |w, u| w + s * eps * u);
    let (gp, gm) = (
        grad(mlp_loss, &shifted(1.0)),
        grad(mlp_loss, &shifted(-1.0)),
    );
    let fd = gp.zip_map(&gm, "fd", |a, b| (a - b) / (2.0 * eps));
    println!(
        "MLP loss {loss:.6}; ‖H·u − finite differences‖∞ = {:.2e}",
        hu.max_abs_diff(&fd)
    );

    // The full Hessian, row by row against central differences.
    let h = hessian(mlp_loss, &w);
    let mut worst: f64 = 0.0;
    for i in 0..18 {
        let mut e = Tensor::<f64>::zeros([18]);
        e.data_mut()[i] = eps;
        let (gp, gm) = (
            grad(mlp_loss, &w.zip_map(&e, "+", |a, b| a + b)),
            grad(mlp_loss, &w.zip_map(&e, "-", |a, b| a - b)),
        );
        for j in 0..18 {
            let fd = (gp.data()[j] - gm.data()[j]) / (2.0 * eps);
            worst = worst.max((h.get(&[j, i]) - fd).abs());
        }
    }
    let asym = (0..18)
        .flat_map(|i| (0..18).map(move |j| (i, j)))
        .map(|(i, j)| (h.get(&[i, j]) - h.get(&[j, i])).abs())
        .fold(0.0, f64::max);
    println!(
        "full 18×18 Hessian: max |H − finite differences| = {worst:.2e}, max |H − Hᵀ| = {asym:.2e}"
    );

    // Newton's method on L2-regularised logistic regression (convex): each
    // step solves H·d = ∇f with the exact Hessian; the gradient norm falls
    // quadratically once close.
    println!("\nNewton's method, logistic regression with L2 (4 parameters):");
    let mut theta = Tensor::<f64>::zeros([4]);
    for step in 0..7 {
        let tape = Tape::new();
        let t = tape.leaf(theta.clone());
        let loss = logistic(t);
        let g = loss.grad_graph(&[t])[0];
        let gv = g.value();
        let norm = gv.data().iter().map(|v| v * v).sum::<f64>().sqrt();
        println!(
            "  step {step}: loss {:.12}  ‖∇f‖ = {norm:.3e}",
            loss.value().item()
        );
        if norm < 1e-14 {
            break;
        }
        let h = hessian(logistic, &theta);
        let d = solve(&h, gv.data());
        theta = theta.zip_map(&Tensor::from_vec(d, [4]).unwrap(), "newton", |t, d| t - d);
    }
}

/// Mean logistic loss of a fixed small data set plus 0.1·‖θ‖²/2.
fn logistic<'t>(theta: Var<'t, f64>) -> Var<'t, f64> {
    let tape = theta.tape();
    let x = tape.constant(
        Tensor::from_vec(
            (0..32).map(|i| ((i * 5) % 9) as f64 / 4.0 - 1.0).collect(),
            [8, 4],
        )
        .unwrap(),
    );
    let y =
        tape.constant(Tensor::from_vec(vec![1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0], [8]).unwrap());
    let z = x.matmul(theta.reshape([4, 1])).reshape([8]);
    let nll = z.binary_cross_entropy_with_logits(y, None, tapegrad::Reduction::Mean);
    nll + (theta * theta).sum() * 0.05
}

/// Solves the small dense system `a·x = b` by Gaussian elimination with partial pivoting.
fn solve(a: &Tensor<f64>, b: &[f64]) -> Vec<f64> {
    let n = b.len();
    let mut m: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| a.get(&[i, j])).chain([b[i]]).collect())
        .collect();
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| m[i][c].abs().total_cmp(&m[j][c].abs()))
            .unwrap();
        m.swap(c, p);
        let (top, below) = m.split_at_mut(c + 1);
        let pivot = &top[c];
        for row in below {
            let f = row[c] / pivot[c];
            for (v, p) in row[c..].iter_mut().zip(&pivot[c..]) {
                *v -= f * p;
            }
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| m[r][k] * x[k]).sum();
        x[r] = (m[r][n] - s) / m[r][r];
    }
    x
}
