//! Non-finite values (NaN, +∞, −∞) through conv2d: every fast path — both
//! Winograd variants, im2col + GEMM (plane slices, phase planes and runs),
//! and the pointwise product — gives NaN or ±∞ at exactly the outputs and
//! gradient entries where the definition (`conv::reference`) does, forward
//! and backward, whether the value sits in the input, the weight, the bias
//! or the upstream gradient.

use rand::SeedableRng;
use rand::rngs::StdRng;
use tapegrad::conv::{Conv2dGeometry, reference};
use tapegrad::{Conv2dOptions, Float, Tape, Tensor};

/// What a value is, as far as a check-finite tool cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Finite,
    Nan,
    PosInf,
    NegInf,
}

fn class<T: Float>(v: T) -> Class {
    let v = v.to_f64();
    if v.is_nan() {
        Class::Nan
    } else if v == f64::INFINITY {
        Class::PosInf
    } else if v == f64::NEG_INFINITY {
        Class::NegInf
    } else {
        Class::Finite
    }
}

/// Panics with `what` unless `got` has the class of `want` at every
/// position, and is close to it where both are finite.
fn same_pattern<T: Float>(what: &str, got: &Tensor<T>, want: &Tensor<T>, tol: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shapes differ");
    let mut wrong = Vec::new();
    for (i, (&g, &w)) in got.data().iter().zip(want.data()).enumerate() {
        let (cg, cw) = (class(g), class(w));
        let close = cg != Class::Finite
            || (g.to_f64() - w.to_f64()).abs() <= tol * w.to_f64().abs().max(1.0);
        if cg != cw || !close {
            wrong.push((i, g.to_f64(), w.to_f64()));
        }
    }
    let non_finite = want
        .data()
        .iter()
        .filter(|&&v| class(v) != Class::Finite)
        .count();
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} entries differ from the reference ({} non-finite there); \
         first (index, got, want): {:?}",
        wrong.len(),
        want.numel(),
        non_finite,
        &wrong[..wrong.len().min(6)]
    );
}

/// A conv shape and the fast path it takes (`tile` forces the Winograd
/// variant; 0 for the paths that are not Winograd).
struct Path {
    name: &'static str,
    x: [usize; 4],
    w: [usize; 4],
    opts: Conv2dOptions,
    tile: usize,
}

fn paths() -> Vec<Path> {
    let o = Conv2dOptions::default;
    vec![
        Path {
            name: "winograd F(2x2)",
            x: [2, 16, 8, 8],
            w: [16, 16, 3, 3],
            opts: o().padding(1),
            tile: 2,
        },
        Path {
            name: "winograd F(4x4)",
            x: [2, 16, 8, 8],
            w: [16, 16, 3, 3],
            opts: o().padding(1),
            tile: 4,
        },
        Path {
            name: "winograd F(4x4), padding (2, 0)",
            x: [1, 16, 6, 10],
            w: [16, 16, 3, 3],
            opts: o().padding((2, 0)),
            tile: 4,
        },
        Path {
            name: "im2col, plane slices",
            x: [2, 3, 7, 6],
            w: [4, 3, 3, 3],
            opts: o().padding(1),
            tile: 0,
        },
        Path {
            name: "im2col, phase planes",
            x: [2, 3, 9, 8],
            w: [4, 3, 3, 3],
            opts: o().stride(2).padding(1),
            tile: 0,
        },
        Path {
            name: "im2col, runs",
            x: [2, 4, 9, 7],
            w: [4, 2, 3, 2],
            opts: o()
                .padding((2, 1))
                .dilation((2, 1))
                .stride((1, 3))
                .groups(2),
            tile: 0,
        },
        Path {
            name: "pointwise",
            x: [2, 3, 5, 5],
            w: [4, 3, 1, 1],
            opts: o(),
            tile: 0,
        },
        Path {
            name: "1x1, strided and padded",
            x: [2, 3, 5, 5],
            w: [4, 3, 1, 1],
            opts: o().stride(2).padding(1),
            tile: 0,
        },
    ]
}

/// Which tensor gets the non-finite value.
#[derive(Clone, Copy, Debug)]
enum Target {
    Input,
    Weight,
    Bias,
    Grad,
}

/// Offsets to poison in a tensor of shape `s`: its first element (a
/// corner: for the weight, a tap that reads the padding at the border) and
/// one in the middle.
fn spots(s: &[usize]) -> [usize; 2] {
    let n: usize = s.iter().product();
    [0, (n / 2 + s[s.len() - 1] / 2).min(n - 1)]
}

fn poison<T: Float>(t: &Tensor<T>, at: usize, v: f64) -> Tensor<T> {
    let mut d = t.data().to_vec();
    d[at] = T::from_f64(v);
    Tensor::from_vec(d, t.shape().clone()).unwrap()
}

fn check_path<T: Float>(p: &Path, tol: f64, rng: &mut StdRng) {
    // On this thread and the workers of its convs only.
    let _tile = tapegrad::conv::force_winograd_tile(p.tile);
    let b_shape = [p.w[0]];
    let geom = Conv2dGeometry::new(&p.x, &p.w, Some(&b_shape), &p.opts);
    let x0 = Tensor::<T>::randn(p.x, rng);
    let w0 = Tensor::<T>::randn(p.w, rng);
    let b0 = Tensor::<T>::randn(b_shape, rng);
    let dy0 = Tensor::<T>::randn(geom.output_shape(), rng);
    for target in [Target::Input, Target::Weight, Target::Bias, Target::Grad] {
        let shape: &[usize] = match target {
            Target::Input => &p.x,
            Target::Weight => &p.w,
            Target::Bias => &b_shape,
            Target::Grad => &geom.output_shape(),
        };
        for at in spots(shape) {
            for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                let (mut x, mut w, mut b, mut dy) =
                    (x0.clone(), w0.clone(), b0.clone(), dy0.clone());
                match target {
                    Target::Input => x = poison(&x, at, v),
                    Target::Weight => w = poison(&w, at, v),
                    Target::Bias => b = poison(&b, at, v),
                    Target::Grad => dy = poison(&dy, at, v),
                }
                let what = format!("{} {}: {v} in {target:?} at {at}", T::NAME, p.name);
                let tape = Tape::<T>::new();
                let (xv, wv, bv) = (
                    tape.leaf(x.clone()),
                    tape.leaf(w.clone()),
                    tape.leaf(b.clone()),
                );
                let y = xv.conv2d(wv, Some(bv), p.opts);
                let g = y.backward_with(dy.clone());
                let want_y = reference::conv2d(&x, &w, Some(&b), p.opts);
                let r = reference::conv2d_backward(&x, &w, &dy, p.opts);
                same_pattern(&format!("{what}, y"), &y.value(), &want_y, tol);
                same_pattern(&format!("{what}, dx"), &g[xv], &r.dx, tol);
                same_pattern(&format!("{what}, dw"), &g[wv], &r.dw, tol);
                same_pattern(&format!("{what}, db"), &g[bv], &r.db, tol);
            }
        }
    }
}

#[test]
fn non_finite_values_land_where_the_definition_puts_them_f64() {
    let mut rng = StdRng::seed_from_u64(7);
    for p in paths() {
        check_path::<f64>(&p, 1e-10, &mut rng);
    }
}

#[test]
fn non_finite_values_land_where_the_definition_puts_them_f32() {
    let mut rng = StdRng::seed_from_u64(8);
    for p in paths() {
        check_path::<f32>(&p, 1e-4, &mut rng);
    }
}
