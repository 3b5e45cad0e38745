//! Random-graph property test: seeded random graphs of 3–12 ops in f64, each
//! gradient-checked twice — with the public `tapegrad::gradcheck` and with the central
//! differences written below, which share no code with it.
//!
//! The generator is shape-aware (it infers every node's shape before anything runs,
//! and the interpreter asserts the tape agrees), so every generated graph is valid.
//! Kinks are kept out of reach of the finite differences: after a graph's values are
//! drawn, every relu/leaky_relu input must be at least `MARGIN` from 0 and every max
//! (max_axis, max_pool2d window) must beat the runner-up by `MARGIN`; otherwise the
//! values are drawn again, and after a few tries the structure is drawn again.
//!
//! A failure prints the seed and the graph, one op per line with its shape; the
//! `one_seed` test runs a single seed (set `PROPERTY_SEED`) to reproduce it.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::fmt;
use tapegrad::gradcheck::{Mode, Options, gradcheck};
use tapegrad::{Conv2dOptions, Pair, Pool2dOptions, Tape, Tensor, Var};

/// Graphs per `cargo test` run (debug profile).
const QUICK_GRAPHS: u64 = 1500;
/// Graphs in the long (ignored) run, meant for `--release`.
const LONG_GRAPHS: u64 = 30_000;
/// Graphs starting on conv2d's Winograd path, quick and long.
const QUICK_WINOGRAD_GRAPHS: u64 = 60;
const LONG_WINOGRAD_GRAPHS: u64 = 1500;
/// Seeds of the quick and long runs do not overlap.
const QUICK_BASE: u64 = 0x5eed_0000;
const LONG_BASE: u64 = 0x10_0000_0000;

/// Distance every kink must keep from the evaluation point.
const MARGIN: f64 = 1e-3;
/// Largest magnitude any intermediate value may reach (keeps round-off small).
const MAX_ABS: f64 = 200.0;
/// Bounds keeping a graph cheap to check element by element.
const MAX_NODE_NUMEL: usize = 160;
const MAX_INPUT_NUMEL: usize = 256;

/// The step and tolerances of the independent check.
const FD_EPS: f64 = 1e-6;
const FD_ATOL: f64 = 1e-5;
const FD_RTOL: f64 = 1e-4;

// ---------------------------------------------------------------------------
// Graph description
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Bin {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Un {
    Tanh,
    Sigmoid,
    Exp,
    Relu,
    LeakyRelu(f64),
    Neg,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Sc {
    Add,
    Mul,
    Div,
    RSub,
}

#[derive(Clone, Debug)]
enum Op {
    /// Leaf `i` of the graph's inputs.
    Input(usize),
    /// A constant tensor (no gradient).
    Const(usize),
    Conv {
        x: usize,
        w: usize,
        b: Option<usize>,
        opts: Conv2dOptions,
    },
    Pool {
        x: usize,
        max: bool,
        opts: Pool2dOptions,
    },
    Bin {
        kind: Bin,
        a: usize,
        b: usize,
    },
    Scalar {
        kind: Sc,
        x: usize,
        c: f64,
    },
    Unary {
        kind: Un,
        x: usize,
    },
    Sum {
        x: usize,
        mean: bool,
    },
    Axes {
        x: usize,
        axes: Vec<isize>,
        keepdim: bool,
        mean: bool,
    },
    MaxAxis {
        x: usize,
        axis: isize,
        keepdim: bool,
    },
    Reshape {
        x: usize,
        shape: Vec<usize>,
    },
    Permute {
        x: usize,
        perm: Vec<usize>,
    },
    Transpose {
        x: usize,
        a: isize,
        b: isize,
    },
    Matmul {
        a: usize,
        b: usize,
    },
    Linear {
        x: usize,
        w: usize,
        b: Option<usize>,
    },
    Softmax {
        x: usize,
        axis: isize,
        log: bool,
    },
    Mse {
        a: usize,
        b: usize,
    },
    CrossEntropy {
        x: usize,
        targets: Vec<usize>,
    },
    /// Σₖ sum(nodeₖ ⊙ constₖ): joins the nodes nothing else used into one scalar.
    Readout {
        terms: Vec<(usize, usize)>,
    },
}

impl Op {
    /// The op's kind, for the coverage count.
    fn kind(&self) -> &'static str {
        match self {
            Op::Input(_) => "input",
            Op::Const(_) => "const",
            Op::Conv { b: Some(_), .. } => "conv2d+bias",
            Op::Conv { b: None, .. } => "conv2d",
            Op::Pool { max: true, .. } => "max_pool2d",
            Op::Pool { max: false, .. } => "avg_pool2d",
            Op::Bin { a, b, .. } if a == b => "binary(x, x)",
            Op::Bin { kind: Bin::Add, .. } => "add",
            Op::Bin { kind: Bin::Sub, .. } => "sub",
            Op::Bin { kind: Bin::Mul, .. } => "mul",
            Op::Bin { kind: Bin::Div, .. } => "div",
            Op::Scalar { .. } => "scalar",
            Op::Unary { kind: Un::Tanh, .. } => "tanh",
            Op::Unary {
                kind: Un::Sigmoid, ..
            } => "sigmoid",
            Op::Unary { kind: Un::Exp, .. } => "exp",
            Op::Unary { kind: Un::Relu, .. } => "relu",
            Op::Unary {
                kind: Un::LeakyRelu(_),
                ..
            } => "leaky_relu",
            Op::Unary { kind: Un::Neg, .. } => "neg",
            Op::Sum { mean: false, .. } => "sum",
            Op::Sum { mean: true, .. } => "mean",
            Op::Axes { mean: false, .. } => "sum_axes",
            Op::Axes { mean: true, .. } => "mean_axes",
            Op::MaxAxis { .. } => "max_axis",
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::Transpose { .. } => "transpose",
            Op::Matmul { .. } => "matmul",
            Op::Linear { .. } => "linear",
            Op::Softmax { log: false, .. } => "softmax",
            Op::Softmax { log: true, .. } => "log_softmax",
            Op::Mse { .. } => "mse_loss",
            Op::CrossEntropy { .. } => "cross_entropy",
            Op::Readout { .. } => "readout",
        }
    }

    /// The nodes this op reads.
    fn operands(&self) -> Vec<usize> {
        match self {
            Op::Input(_) | Op::Const(_) => vec![],
            Op::Conv { x, w, b, .. } | Op::Linear { x, w, b } => {
                let mut v = vec![*x, *w];
                v.extend(*b);
                v
            }
            Op::Bin { a, b, .. } | Op::Matmul { a, b } | Op::Mse { a, b } => vec![*a, *b],
            Op::Pool { x, .. }
            | Op::Scalar { x, .. }
            | Op::Unary { x, .. }
            | Op::Sum { x, .. }
            | Op::Axes { x, .. }
            | Op::MaxAxis { x, .. }
            | Op::Reshape { x, .. }
            | Op::Permute { x, .. }
            | Op::Transpose { x, .. }
            | Op::Softmax { x, .. }
            | Op::CrossEntropy { x, .. } => vec![*x],
            Op::Readout { terms } => terms.iter().map(|t| t.0).collect(),
        }
    }
}

/// How an input's values are drawn.
#[derive(Clone, Copy, Debug)]
enum Dist {
    /// Normal with this standard deviation.
    Normal(f64),
    /// Uniform in [0.5, 2): denominators.
    Positive,
}

#[derive(Clone, Debug)]
struct Node {
    op: Op,
    shape: Vec<usize>,
}

#[derive(Clone, Debug)]
struct Graph {
    nodes: Vec<Node>,
    /// Shape and distribution of each input (leaf).
    inputs: Vec<(Vec<usize>, Dist)>,
    consts: Vec<Tensor<f64>>,
    /// Number of ops drawn (not counting inputs, constants and the readout).
    ops: usize,
}

fn pair(p: Pair) -> String {
    if p.h == p.w {
        p.h.to_string()
    } else {
        format!("({}, {})", p.h, p.w)
    }
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.nodes.iter().enumerate() {
            let s = match &n.op {
                Op::Input(k) => format!("input {k} ({:?})", self.inputs[*k].1),
                Op::Const(_) => "constant".to_string(),
                Op::Conv { x, w, b, opts } => format!(
                    "conv2d(%{x}, weight %{w}, bias {}, stride {}, padding {}, dilation {}, groups {})",
                    b.map_or("none".to_string(), |b| format!("%{b}")),
                    pair(opts.stride),
                    pair(opts.padding),
                    pair(opts.dilation),
                    opts.groups
                ),
                Op::Pool { x, max, opts } => format!(
                    "{}(%{x}, kernel {}, stride {}, padding {}{})",
                    if *max { "max_pool2d" } else { "avg_pool2d" },
                    pair(opts.kernel),
                    opts.stride.map_or("= kernel".to_string(), pair),
                    pair(opts.padding),
                    if *max {
                        String::new()
                    } else {
                        format!(", count_include_pad {}", opts.count_include_pad)
                    }
                ),
                Op::Bin { kind, a, b } => format!("{kind:?}(%{a}, %{b})").to_lowercase(),
                Op::Scalar { kind, x, c } => match kind {
                    Sc::Add => format!("add_scalar(%{x}, {c})"),
                    Sc::Mul => format!("mul_scalar(%{x}, {c})"),
                    Sc::Div => format!("div_scalar(%{x}, {c})"),
                    Sc::RSub => format!("rsub_scalar(%{x}, {c})"),
                },
                Op::Unary { kind, x } => format!("{}(%{x})", format!("{kind:?}").to_lowercase()),
                Op::Sum { x, mean } => format!("{}(%{x})", if *mean { "mean" } else { "sum" }),
                Op::Axes {
                    x,
                    axes,
                    keepdim,
                    mean,
                } => format!(
                    "{}(%{x}, axes {axes:?}, keepdim {keepdim})",
                    if *mean { "mean_axes" } else { "sum_axes" }
                ),
                Op::MaxAxis { x, axis, keepdim } => {
                    format!("max_axis(%{x}, axis {axis}, keepdim {keepdim})")
                }
                Op::Reshape { x, shape } => format!("reshape(%{x}, {shape:?})"),
                Op::Permute { x, perm } => format!("permute(%{x}, {perm:?})"),
                Op::Transpose { x, a, b } => format!("transpose(%{x}, {a}, {b})"),
                Op::Matmul { a, b } => format!("matmul(%{a}, %{b})"),
                Op::Linear { x, w, b } => format!(
                    "linear(%{x}, weight %{w}, bias {})",
                    b.map_or("none".to_string(), |b| format!("%{b}"))
                ),
                Op::Softmax { x, axis, log } => format!(
                    "{}(%{x}, axis {axis})",
                    if *log { "log_softmax" } else { "softmax" }
                ),
                Op::Mse { a, b } => format!("mse_loss(%{a}, %{b})"),
                Op::CrossEntropy { x, targets } => {
                    format!("cross_entropy(%{x}, targets {targets:?})")
                }
                Op::Readout { terms } => {
                    let t: Vec<String> = terms
                        .iter()
                        .map(|(n, _)| format!("sum(%{n} * const)"))
                        .collect();
                    format!("readout: {}", t.join(" + "))
                }
            };
            writeln!(f, "  %{i} = {s} -> {:?}", n.shape)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Shape helpers
// ---------------------------------------------------------------------------

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

/// numpy broadcasting of two shapes, or `None` if they do not broadcast.
fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i < r - a.len() {
            1
        } else {
            a[i - (r - a.len())]
        };
        let db = if i < r - b.len() {
            1
        } else {
            b[i - (r - b.len())]
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// A random shape of `n` elements with rank `rank` (dims may be 1).
fn factor_shape(n: usize, rank: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut dims = vec![1; rank.max(1)];
    let mut m = n;
    let mut p = 2;
    while m > 1 {
        while m.is_multiple_of(p) {
            let i = rng.random_range(0..dims.len());
            dims[i] *= p;
            m /= p;
        }
        p += 1;
    }
    if rank == 0 {
        assert_eq!(n, 1);
        return vec![];
    }
    dims
}

fn shuffle<T>(v: &mut [T], rng: &mut StdRng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.random_range(0..=i));
    }
}

/// An axis of a rank-`rank` tensor, sometimes written negatively.
fn axis(rank: usize, rng: &mut StdRng) -> isize {
    let a = rng.random_range(0..rank) as isize;
    if rng.random_bool(0.4) {
        a - rank as isize
    } else {
        a
    }
}

/// Output length of a conv/pool axis, or `None` if the window does not fit.
fn out_len(input: usize, k: usize, s: usize, p: usize, d: usize) -> Option<usize> {
    let span = d * (k - 1) + 1;
    let padded = input + 2 * p;
    (span <= padded).then(|| (padded - span) / s + 1)
}

// ---------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------

struct Gen<'r> {
    rng: &'r mut StdRng,
    g: Graph,
    /// How many later ops read each node.
    uses: Vec<usize>,
}

impl Gen<'_> {
    fn push(&mut self, op: Op, shape: Vec<usize>) -> usize {
        for o in op.operands() {
            self.uses[o] += 1;
        }
        self.g.nodes.push(Node { op, shape });
        self.uses.push(0);
        self.g.nodes.len() - 1
    }

    fn input_numel(&self) -> usize {
        self.g.inputs.iter().map(|(s, _)| numel(s)).sum()
    }

    /// A new leaf, if the input budget allows it.
    fn input(&mut self, shape: Vec<usize>, dist: Dist) -> Option<usize> {
        if self.input_numel() + numel(&shape) > MAX_INPUT_NUMEL {
            return None;
        }
        self.g.inputs.push((shape.clone(), dist));
        let k = self.g.inputs.len() - 1;
        Some(self.push(Op::Input(k), shape))
    }

    fn constant(&mut self, shape: Vec<usize>) -> usize {
        let t = Tensor::randn(shape.clone(), self.rng);
        self.g.consts.push(t);
        let k = self.g.consts.len() - 1;
        self.push(Op::Const(k), shape)
    }

    fn shape(&self, n: usize) -> &[usize] {
        &self.g.nodes[n].shape
    }

    /// Non-input nodes whose shape satisfies `ok` (candidates for reuse).
    fn nodes_where(&self, ok: impl Fn(&[usize]) -> bool) -> Vec<usize> {
        (0..self.g.nodes.len())
            .filter(|&i| !matches!(self.g.nodes[i].op, Op::Const(_)) && ok(&self.g.nodes[i].shape))
            .collect()
    }

    /// The operand of the next op: mostly the newest node, sometimes an older one
    /// (which then fans out).
    fn pick_operand(&mut self) -> usize {
        let cands = self.nodes_where(|_| true);
        if self.rng.random_bool(0.7) {
            *cands.last().unwrap()
        } else {
            cands[self.rng.random_range(0..cands.len())]
        }
    }

    /// One random op on a random operand; `None` if the drawn op does not fit.
    fn try_op(&mut self) -> Option<usize> {
        let x = self.pick_operand();
        let s = self.shape(x).to_vec();
        let r = s.len();
        // Scalars (rank 0) only take elementwise ops; a full reduction or a loss is
        // drawn less often so that most graphs keep tensors flowing.
        let draw = self.rng.random_range(0..24);
        let draw = match draw {
            20..=22 if r == 4 => draw - 20,
            20..=23 => 2,
            9 | 17 | 18 if r >= 1 && self.rng.random_bool(0.5) => 3,
            _ => draw,
        };
        match draw {
            0 | 1 if r == 4 => self.conv(x, &s),
            2 if r == 4 => self.pool(x, &s),
            3..=5 => self.binary(x, &s),
            6 => {
                let kind = [Sc::Add, Sc::Mul, Sc::Div, Sc::RSub][self.rng.random_range(0..4)];
                let mut c = self.rng.random_range(0.5..2.0);
                if self.rng.random_bool(0.5) {
                    c = -c;
                }
                Some(self.push(Op::Scalar { kind, x, c }, s))
            }
            7 | 8 => {
                let kind = match self.rng.random_range(0..6) {
                    0 => Un::Tanh,
                    1 => Un::Sigmoid,
                    2 => Un::Exp,
                    3 => Un::Relu,
                    4 => Un::LeakyRelu(self.rng.random_range(0.05..0.5)),
                    _ => Un::Neg,
                };
                Some(self.push(Op::Unary { kind, x }, s))
            }
            9 => {
                let mean = self.rng.random_bool(0.5);
                Some(self.push(Op::Sum { x, mean }, vec![]))
            }
            10 if r >= 1 => {
                let mut axes: Vec<usize> = (0..r).collect();
                shuffle(&mut axes, self.rng);
                axes.truncate(self.rng.random_range(1..=r));
                let keepdim = self.rng.random_bool(0.5);
                let out: Vec<usize> = (0..r)
                    .filter_map(|i| match (axes.contains(&i), keepdim) {
                        (true, true) => Some(1),
                        (true, false) => None,
                        _ => Some(s[i]),
                    })
                    .collect();
                let axes = axes
                    .iter()
                    .map(|&a| {
                        if self.rng.random_bool(0.3) {
                            a as isize - r as isize
                        } else {
                            a as isize
                        }
                    })
                    .collect();
                let mean = self.rng.random_bool(0.5);
                Some(self.push(
                    Op::Axes {
                        x,
                        axes,
                        keepdim,
                        mean,
                    },
                    out,
                ))
            }
            11 if r >= 1 => {
                let a = axis(r, self.rng);
                let au = a.rem_euclid(r as isize) as usize;
                let keepdim = self.rng.random_bool(0.5);
                let mut out = s.clone();
                if keepdim {
                    out[au] = 1;
                } else {
                    out.remove(au);
                }
                Some(self.push(
                    Op::MaxAxis {
                        x,
                        axis: a,
                        keepdim,
                    },
                    out,
                ))
            }
            12 => {
                // Rank 4 half the time, so that conv and pooling get inputs.
                let rank = if self.rng.random_bool(0.5) {
                    4
                } else {
                    self.rng.random_range(1..=3)
                };
                let shape = factor_shape(numel(&s), rank, self.rng);
                Some(self.push(
                    Op::Reshape {
                        x,
                        shape: shape.clone(),
                    },
                    shape,
                ))
            }
            13 if r >= 2 => {
                if self.rng.random_bool(0.5) {
                    let mut perm: Vec<usize> = (0..r).collect();
                    shuffle(&mut perm, self.rng);
                    let out = perm.iter().map(|&p| s[p]).collect();
                    Some(self.push(Op::Permute { x, perm }, out))
                } else {
                    let (a, b) = (axis(r, self.rng), axis(r, self.rng));
                    let mut out = s.clone();
                    out.swap(
                        a.rem_euclid(r as isize) as usize,
                        b.rem_euclid(r as isize) as usize,
                    );
                    Some(self.push(Op::Transpose { x, a, b }, out))
                }
            }
            14 if r == 2 || r == 3 => self.matmul(x, &s),
            15 if r == 2 => {
                let (n, inf) = (s[0], s[1]);
                let outf = self.rng.random_range(1..=4);
                let w = self.input(vec![outf, inf], Dist::Normal(1.0 / (inf as f64).sqrt()))?;
                let b = if self.rng.random_bool(0.5) {
                    Some(self.input(vec![outf], Dist::Normal(0.5))?)
                } else {
                    None
                };
                Some(self.push(Op::Linear { x, w, b }, vec![n, outf]))
            }
            16 if r >= 1 => {
                let a = axis(r, self.rng);
                let log = self.rng.random_bool(0.5);
                Some(self.push(Op::Softmax { x, axis: a, log }, s))
            }
            17 => {
                // Another node of the same shape (fan-out; possibly x itself), a new
                // leaf or a constant.
                let same = self.nodes_where(|t| t == s.as_slice());
                let b = match self.rng.random_range(0..3) {
                    0 => same[self.rng.random_range(0..same.len())],
                    1 => self.input(s.clone(), Dist::Normal(1.0))?,
                    _ => self.constant(s.clone()),
                };
                let (a, b) = if self.rng.random_bool(0.5) {
                    (x, b)
                } else {
                    (b, x)
                };
                Some(self.push(Op::Mse { a, b }, vec![]))
            }
            18 if r == 2 && s[1] >= 1 => {
                let targets = (0..s[0]).map(|_| self.rng.random_range(0..s[1])).collect();
                Some(self.push(Op::CrossEntropy { x, targets }, vec![]))
            }
            19 => {
                // Reuse: the same node on both sides of a binary op.
                let kind = [Bin::Add, Bin::Sub, Bin::Mul][self.rng.random_range(0..3)];
                Some(self.push(Op::Bin { kind, a: x, b: x }, s))
            }
            _ => None,
        }
    }

    fn conv(&mut self, x: usize, s: &[usize]) -> Option<usize> {
        let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
        for _ in 0..8 {
            let divisors: Vec<usize> = (1..=c).filter(|g| c % g == 0).collect();
            let groups = divisors[self.rng.random_range(0..divisors.len())];
            let o = groups * self.rng.random_range(1..=(6 / groups).clamp(1, 2));
            let k = Pair::new(self.rng.random_range(1..=3), self.rng.random_range(1..=3));
            let st = Pair::new(self.rng.random_range(1..=2), self.rng.random_range(1..=2));
            let p = Pair::new(self.rng.random_range(0..=2), self.rng.random_range(0..=2));
            let d = Pair::new(self.rng.random_range(1..=2), self.rng.random_range(1..=2));
            let (Some(oh), Some(ow)) = (
                out_len(h, k.h, st.h, p.h, d.h),
                out_len(w, k.w, st.w, p.w, d.w),
            ) else {
                continue;
            };
            let out = vec![n, o, oh, ow];
            if numel(&out) > MAX_NODE_NUMEL {
                continue;
            }
            let fan_in = (c / groups * k.h * k.w) as f64;
            let wi = self.input(
                vec![o, c / groups, k.h, k.w],
                Dist::Normal(1.0 / fan_in.sqrt()),
            )?;
            let b = if self.rng.random_bool(0.5) {
                Some(self.input(vec![o], Dist::Normal(0.5))?)
            } else {
                None
            };
            let opts = Conv2dOptions::default()
                .stride(st)
                .padding(p)
                .dilation(d)
                .groups(groups);
            return Some(self.push(Op::Conv { x, w: wi, b, opts }, out));
        }
        None
    }

    fn pool(&mut self, x: usize, s: &[usize]) -> Option<usize> {
        for _ in 0..8 {
            let k = Pair::new(self.rng.random_range(1..=3), self.rng.random_range(1..=3));
            let p = Pair::new(
                self.rng.random_range(0..=k.h / 2),
                self.rng.random_range(0..=k.w / 2),
            );
            let mut opts = Pool2dOptions::new(k).padding(p);
            if self.rng.random_bool(0.6) {
                opts = opts.stride(Pair::new(
                    self.rng.random_range(1..=3),
                    self.rng.random_range(1..=3),
                ));
            }
            let max = self.rng.random_bool(0.5);
            if !max {
                opts = opts.count_include_pad(self.rng.random_bool(0.5));
            }
            let st = opts.stride_or_kernel();
            let (Some(oh), Some(ow)) = (
                out_len(s[2], k.h, st.h, p.h, 1),
                out_len(s[3], k.w, st.w, p.w, 1),
            ) else {
                continue;
            };
            return Some(self.push(Op::Pool { x, max, opts }, vec![s[0], s[1], oh, ow]));
        }
        None
    }

    /// A shape that broadcasts with `s`: some leading axes dropped or added, some
    /// axes set to 1, and axes where `s` is 1 sometimes stretched.
    fn broadcast_partner(&mut self, s: &[usize]) -> Vec<usize> {
        let drop = self.rng.random_range(0..=s.len().min(2));
        let mut p: Vec<usize> = s[drop..]
            .iter()
            .map(|&d| {
                if d == 1 && self.rng.random_bool(0.3) {
                    self.rng.random_range(2..=3)
                } else if self.rng.random_bool(0.3) {
                    1
                } else {
                    d
                }
            })
            .collect();
        if drop == 0 && s.len() < 4 && self.rng.random_bool(0.2) {
            p.insert(0, self.rng.random_range(1..=2));
        }
        p
    }

    fn binary(&mut self, x: usize, s: &[usize]) -> Option<usize> {
        let kind = [Bin::Add, Bin::Sub, Bin::Mul, Bin::Div][self.rng.random_range(0..4)];
        let fits = |t: &[usize]| broadcast(s, t).is_some_and(|o| numel(&o) <= MAX_NODE_NUMEL);
        let b = if kind == Bin::Div {
            // Denominators: fresh positive leaves.
            let p = self.broadcast_partner(s);
            if !fits(&p) {
                return None;
            }
            self.input(p, Dist::Positive)?
        } else {
            let existing = self.nodes_where(fits);
            match self.rng.random_range(0..3) {
                0 if !existing.is_empty() => existing[self.rng.random_range(0..existing.len())],
                1 => {
                    let p = self.broadcast_partner(s);
                    if !fits(&p) {
                        return None;
                    }
                    self.constant(p)
                }
                _ => {
                    let p = self.broadcast_partner(s);
                    if !fits(&p) {
                        return None;
                    }
                    self.input(p, Dist::Normal(1.0))?
                }
            }
        };
        let (a, b) = if kind != Bin::Div && self.rng.random_bool(0.5) {
            (b, x)
        } else {
            (x, b)
        };
        let out = broadcast(self.shape(a), self.shape(b)).unwrap();
        Some(self.push(Op::Bin { kind, a, b }, out))
    }

    fn matmul(&mut self, x: usize, s: &[usize]) -> Option<usize> {
        let n = self.rng.random_range(1..=4);
        if s.len() == 2 {
            let (m, k) = (s[0], s[1]);
            if self.rng.random_bool(0.5) {
                // x · B
                let b = self.input(vec![k, n], Dist::Normal(1.0 / (k as f64).sqrt()))?;
                Some(self.push(Op::Matmul { a: x, b }, vec![m, n]))
            } else {
                // A · x
                let a = self.input(vec![n, m], Dist::Normal(1.0 / (m as f64).sqrt()))?;
                Some(self.push(Op::Matmul { a, b: x }, vec![n, k]))
            }
        } else {
            let (bt, m, k) = (s[0], s[1], s[2]);
            let shape = if self.rng.random_bool(0.5) {
                vec![bt, k, n]
            } else {
                vec![k, n]
            };
            let b = self.input(shape, Dist::Normal(1.0 / (k as f64).sqrt()))?;
            let out = vec![bt, m, n];
            if numel(&out) > MAX_NODE_NUMEL {
                return None;
            }
            Some(self.push(Op::Matmul { a: x, b }, out))
        }
    }
}

/// Draws a graph's structure: one input, then `3..=12` ops, then (unless the last
/// node is the only one nothing reads, and a coin says to keep a tensor output) a
/// readout joining every unread node into a scalar.
fn generate(rng: &mut StdRng) -> Graph {
    generate_from(rng, false)
}

/// As [`generate`]; with `winograd`, the input is `[1, 16, H, W]` and the first op a
/// 3×3, stride-1, undilated conv to 16 channels (padding ≤ 2, output ≥ 2×2): the
/// shape on which conv2d takes its Winograd path. Its input and weight are not held to
/// the input budget, so later ops draw no new leaves.
fn generate_from(rng: &mut StdRng, winograd: bool) -> Graph {
    let mut builder = Gen {
        rng,
        g: Graph {
            nodes: vec![],
            inputs: vec![],
            consts: vec![],
            ops: 0,
        },
        uses: vec![],
    };
    if winograd {
        let (h, w) = (
            builder.rng.random_range(3..=6),
            builder.rng.random_range(3..=6),
        );
        let p = Pair::new(
            builder.rng.random_range(0..=2),
            builder.rng.random_range(0..=2),
        );
        let (oh, ow) = (h + 2 * p.h - 2, w + 2 * p.w - 2);
        let (oh, ow, p) = if oh < 2 || ow < 2 {
            (h, w, Pair::new(1, 1))
        } else {
            (oh, ow, p)
        };
        let leaf = |builder: &mut Gen, shape: Vec<usize>, dist| {
            builder.g.inputs.push((shape.clone(), dist));
            let k = builder.g.inputs.len() - 1;
            builder.push(Op::Input(k), shape)
        };
        let x = leaf(&mut builder, vec![1, 16, h, w], Dist::Normal(1.0));
        let wi = leaf(&mut builder, vec![16, 16, 3, 3], Dist::Normal(1.0 / 12.0));
        let b = builder
            .rng
            .random_bool(0.5)
            .then(|| leaf(&mut builder, vec![16], Dist::Normal(0.5)));
        let opts = Conv2dOptions::default().padding(p);
        builder.push(Op::Conv { x, w: wi, b, opts }, vec![1, 16, oh, ow]);
        builder.g.ops += 1;
    } else {
        // Half the time an image batch [N, C, H, W], else any rank 0..=4.
        let shape: Vec<usize> = if builder.rng.random_bool(0.5) {
            vec![
                builder.rng.random_range(1..=2),
                builder.rng.random_range(1..=4),
                builder.rng.random_range(2..=6),
                builder.rng.random_range(2..=6),
            ]
        } else {
            let rank = builder.rng.random_range(0..=4);
            (0..rank).map(|_| builder.rng.random_range(1..=4)).collect()
        };
        let shape = if numel(&shape) > 96 {
            vec![2, 2, 4, 5]
        } else {
            shape
        };
        builder.input(shape, Dist::Normal(1.0)).unwrap();
    }
    let target = builder.rng.random_range(3..=12);
    let mut tries = 0;
    while builder.g.ops < target && tries < 200 {
        tries += 1;
        if builder.try_op().is_some() {
            builder.g.ops += 1;
        }
    }
    let unread: Vec<usize> = (0..builder.g.nodes.len())
        .filter(|&i| {
            builder.uses[i] == 0 && !matches!(builder.g.nodes[i].op, Op::Input(_) | Op::Const(_))
        })
        .collect();
    let last = builder.g.nodes.len() - 1;
    if !(unread == [last] && builder.rng.random_bool(0.5)) {
        let terms = unread
            .iter()
            .map(|&n| {
                let s = builder.shape(n).to_vec();
                let c = builder.constant(s);
                (n, c)
            })
            .collect();
        builder.push(Op::Readout { terms }, vec![]);
    }
    builder.g
}

/// Draws values for every input.
fn draw_inputs(g: &Graph, rng: &mut StdRng) -> Vec<Tensor<f64>> {
    g.inputs
        .iter()
        .map(|(s, d)| match d {
            Dist::Normal(sd) => Tensor::randn(s.clone(), rng).map(|v| v * sd),
            Dist::Positive => Tensor::rand_uniform(s.clone(), 0.5, 2.0, rng),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Interpreter
// ---------------------------------------------------------------------------

/// Records the graph on `tape` from the given input vars; returns every node.
fn build<'t>(g: &Graph, tape: &'t Tape<f64>, inputs: &[Var<'t, f64>]) -> Vec<Var<'t, f64>> {
    let mut v: Vec<Var<'t, f64>> = Vec::with_capacity(g.nodes.len());
    for (i, node) in g.nodes.iter().enumerate() {
        let y = match &node.op {
            Op::Input(k) => inputs[*k],
            Op::Const(k) => tape.constant(g.consts[*k].clone()),
            Op::Conv { x, w, b, opts } => v[*x].conv2d(v[*w], b.map(|b| v[b]), *opts),
            Op::Pool { x, max: true, opts } => v[*x].max_pool2d(*opts),
            Op::Pool {
                x,
                max: false,
                opts,
            } => v[*x].avg_pool2d(*opts),
            Op::Bin { kind, a, b } => match kind {
                Bin::Add => v[*a] + v[*b],
                Bin::Sub => v[*a].sub(v[*b]),
                Bin::Mul => v[*a].mul(v[*b]),
                Bin::Div => v[*a] / v[*b],
            },
            Op::Scalar { kind, x, c } => match kind {
                Sc::Add => v[*x].add_scalar(*c),
                Sc::Mul => v[*x].mul_scalar(*c),
                Sc::Div => v[*x].div_scalar(*c),
                Sc::RSub => v[*x].rsub_scalar(*c),
            },
            Op::Unary { kind, x } => match kind {
                Un::Tanh => v[*x].tanh(),
                Un::Sigmoid => v[*x].sigmoid(),
                Un::Exp => v[*x].exp(),
                Un::Relu => v[*x].relu(),
                Un::LeakyRelu(s) => v[*x].leaky_relu(*s),
                Un::Neg => -v[*x],
            },
            Op::Sum { x, mean: false } => v[*x].sum(),
            Op::Sum { x, mean: true } => v[*x].mean(),
            Op::Axes {
                x,
                axes,
                keepdim,
                mean,
            } => {
                if *mean {
                    v[*x].mean_axes(axes, *keepdim)
                } else {
                    v[*x].sum_axes(axes, *keepdim)
                }
            }
            Op::MaxAxis { x, axis, keepdim } => v[*x].max_axis(*axis, *keepdim),
            Op::Reshape { x, shape } => v[*x].reshape(shape.clone()),
            Op::Permute { x, perm } => v[*x].permute(perm),
            Op::Transpose { x, a, b } => v[*x].transpose(*a, *b),
            Op::Matmul { a, b } => v[*a].matmul(v[*b]),
            Op::Linear { x, w, b } => v[*x].linear(v[*w], b.map(|b| v[b])),
            Op::Softmax { x, axis, log } => {
                if *log {
                    v[*x].log_softmax(*axis)
                } else {
                    v[*x].softmax(*axis)
                }
            }
            Op::Mse { a, b } => v[*a].mse_loss(v[*b]),
            Op::CrossEntropy { x, targets } => v[*x].cross_entropy(targets),
            Op::Readout { terms } => {
                let mut acc: Option<Var<'t, f64>> = None;
                for &(n, c) in terms {
                    let t = v[n].mul(v[c]).sum();
                    acc = Some(acc.map_or(t, |a| a + t));
                }
                acc.expect("a readout has at least one term")
            }
        };
        assert_eq!(
            &y.shape()[..],
            &node.shape[..],
            "node %{i}: the generator inferred {:?}, the tape made {}",
            node.shape,
            y.shape()
        );
        v.push(y);
    }
    v
}

fn output<'t>(g: &Graph, tape: &'t Tape<f64>, inputs: &[Var<'t, f64>]) -> Var<'t, f64> {
    *build(g, tape, inputs).last().unwrap()
}

// ---------------------------------------------------------------------------
// Keeping away from kinks and overflow
// ---------------------------------------------------------------------------

/// Gap between the largest and second-largest of `vals` (∞ for one value). An exact
/// tie at 0.0 counts as no tie: those zeros come from dead relus, all-padding conv
/// windows or x − x, which stay 0 under any small perturbation, so either choice of
/// maximum gets the same (zero) gradient.
fn gap(vals: impl Iterator<Item = f64>) -> f64 {
    let (mut a, mut b) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for x in vals {
        if x > a {
            b = a;
            a = x;
        } else if x > b {
            b = x;
        }
    }
    if a == 0.0 && b == 0.0 {
        f64::INFINITY
    } else {
        a - b
    }
}

/// Checks that the drawn values keep every kink at least `MARGIN` away and every
/// value in range; returns what is wrong otherwise.
fn check_values(g: &Graph, vals: &[Tensor<f64>]) -> Result<(), String> {
    for (i, (node, y)) in g.nodes.iter().zip(vals).enumerate() {
        if y.data().iter().any(|v| !v.is_finite() || v.abs() > MAX_ABS) {
            return Err(format!("%{i} is out of range"));
        }
        match &node.op {
            Op::Unary {
                kind: Un::Relu | Un::LeakyRelu(_),
                x,
            } if vals[*x].data().iter().any(|v| v.abs() < MARGIN) => {
                return Err(format!("%{i}: input within {MARGIN} of the kink"));
            }
            Op::Unary { kind: Un::Exp, x } if vals[*x].data().iter().any(|&v| v > 4.0) => {
                return Err(format!("%{i}: exp of a large value"));
            }
            Op::MaxAxis { x, axis, .. } => {
                let t = &vals[*x];
                let s = t.shape();
                let ax = axis.rem_euclid(s.len() as isize) as usize;
                let outer: usize = s[..ax].iter().product();
                let inner: usize = s[ax + 1..].iter().product();
                let n = s[ax];
                for o in 0..outer {
                    for j in 0..inner {
                        let lane = (0..n).map(|k| t.data()[(o * n + k) * inner + j]);
                        if gap(lane) < MARGIN {
                            return Err(format!("%{i}: near-tie in max_axis"));
                        }
                    }
                }
            }
            Op::Pool { x, max: true, opts } => {
                let t = &vals[*x];
                let s = t.shape();
                let (st, k, p) = (opts.stride_or_kernel(), opts.kernel, opts.padding);
                let (h, w) = (s[2], s[3]);
                let (oh, ow) = (node.shape[2], node.shape[3]);
                for plane in 0..s[0] * s[1] {
                    let base = plane * h * w;
                    for oi in 0..oh {
                        for oj in 0..ow {
                            let mut win = vec![];
                            for ki in 0..k.h {
                                for kj in 0..k.w {
                                    let r = (oi * st.h + ki) as isize - p.h as isize;
                                    let c = (oj * st.w + kj) as isize - p.w as isize;
                                    if (0..h as isize).contains(&r) && (0..w as isize).contains(&c)
                                    {
                                        win.push(t.data()[base + r as usize * w + c as usize]);
                                    }
                                }
                            }
                            if gap(win.into_iter()) < MARGIN {
                                return Err(format!("%{i}: near-tie in a max_pool2d window"));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The independent finite-difference check
// ---------------------------------------------------------------------------

/// Pins a closure to the graph-builder signature (a closure's own inference would
/// tie the returned `Var` to one lifetime).
fn builder<B>(b: B) -> B
where
    B: for<'t> Fn(&'t Tape<f64>, &[Var<'t, f64>]) -> Var<'t, f64>,
{
    b
}

/// The independent check for a function given as a tape builder: returns the number
/// of elements compared, or a description of the worst mismatch.
fn independent_check<B>(build: B, inputs: &[Tensor<f64>], seed: u64) -> Result<usize, String>
where
    B: for<'t> Fn(&'t Tape<f64>, &[Var<'t, f64>]) -> Var<'t, f64>,
{
    let mut rng = StdRng::seed_from_u64(seed ^ 0xfdfd_fdfd);
    let tape = Tape::<f64>::new();
    let leaves: Vec<_> = inputs.iter().map(|x| tape.leaf(x.clone())).collect();
    let out = build(&tape, &leaves);
    let w = Tensor::rand_uniform(out.shape(), -1.0, 1.0, &mut rng);
    let grads = out.backward_with(w.clone());
    let analytic: Vec<Vec<f64>> = leaves
        .iter()
        .zip(inputs)
        .map(|(&l, x)| {
            grads
                .get(l)
                .map_or_else(|| vec![0.0; x.numel()], |g| g.data().to_vec())
        })
        .collect();
    drop(grads);
    let r = |xs: &[Tensor<f64>]| -> f64 {
        let tape = Tape::<f64>::new();
        let vars: Vec<_> = xs.iter().map(|x| tape.constant(x.clone())).collect();
        let y = build(&tape, &vars).value();
        y.data().iter().zip(w.data()).map(|(a, b)| a * b).sum()
    };
    let mut xs = inputs.to_vec();
    let mut worst: Option<(f64, String)> = None;
    let mut compared = 0;
    for (i, (input, analytic)) in inputs.iter().zip(&analytic).enumerate() {
        assert_eq!(analytic.len(), input.numel(), "gradient of input {i}");
        for (j, &a) in analytic.iter().enumerate() {
            let x0 = input.data()[j];
            xs[i].data_mut()[j] = x0 + FD_EPS;
            let plus = r(&xs);
            xs[i].data_mut()[j] = x0 - FD_EPS;
            let minus = r(&xs);
            xs[i].data_mut()[j] = x0;
            let numeric = (plus - minus) / (2.0 * FD_EPS);
            let excess = (a - numeric).abs() / (FD_ATOL + FD_RTOL * numeric.abs());
            compared += 1;
            // NaN fails: `total_cmp` ranks it above every number.
            if excess.total_cmp(&1.0).is_gt()
                && worst
                    .as_ref()
                    .is_none_or(|w| excess.total_cmp(&w.0).is_gt())
            {
                worst = Some((
                    excess,
                    format!(
                        "input {i} element {j}: backward {a:.10e}, central difference {numeric:.10e} \
                         (|diff| {:.3e}, allowed {:.3e})",
                        (a - numeric).abs(),
                        FD_ATOL + FD_RTOL * numeric.abs()
                    ),
                ));
            }
        }
    }
    match worst {
        None => Ok(compared),
        Some((_, msg)) => Err(msg),
    }
}

// ---------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------

/// The independent check along `k` random directions u (all inputs at once):
/// (r(x + εu) − r(x − εu)) / 2ε against Σ ∇r ⊙ u, for inputs too large to perturb one
/// element at a time. Returns the number of directions, or the worst mismatch.
fn independent_directional<B>(
    build: B,
    inputs: &[Tensor<f64>],
    seed: u64,
    k: usize,
) -> Result<usize, String>
where
    B: for<'t> Fn(&'t Tape<f64>, &[Var<'t, f64>]) -> Var<'t, f64>,
{
    let mut rng = StdRng::seed_from_u64(seed ^ 0xd1d1_d1d1);
    let tape = Tape::<f64>::new();
    let leaves: Vec<_> = inputs.iter().map(|x| tape.leaf(x.clone())).collect();
    let out = build(&tape, &leaves);
    let w = Tensor::rand_uniform(out.shape(), -1.0, 1.0, &mut rng);
    let grads = out.backward_with(w.clone());
    let analytic: Vec<Option<Tensor<f64>>> =
        leaves.iter().map(|&l| grads.get(l).cloned()).collect();
    drop(grads);
    let r = |xs: &[Tensor<f64>]| -> f64 {
        let tape = Tape::<f64>::new();
        let vars: Vec<_> = xs.iter().map(|x| tape.constant(x.clone())).collect();
        let y = build(&tape, &vars).value();
        y.data().iter().zip(w.data()).map(|(a, b)| a * b).sum()
    };
    for d in 0..k {
        let us: Vec<Tensor<f64>> = inputs
            .iter()
            .map(|x| Tensor::rand_uniform(x.shape().clone(), -1.0, 1.0, &mut rng))
            .collect();
        let moved = |sign: f64| -> Vec<Tensor<f64>> {
            inputs
                .iter()
                .zip(&us)
                .map(|(x, u)| {
                    let v = x
                        .data()
                        .iter()
                        .zip(u.data())
                        .map(|(a, b)| a + sign * FD_EPS * b);
                    Tensor::from_vec(v.collect(), x.shape().clone()).unwrap()
                })
                .collect()
        };
        let numeric = (r(&moved(1.0)) - r(&moved(-1.0))) / (2.0 * FD_EPS);
        let a: f64 = analytic
            .iter()
            .zip(&us)
            .filter_map(|(g, u)| g.as_ref().map(|g| (g, u)))
            .map(|(g, u)| {
                g.data()
                    .iter()
                    .zip(u.data())
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
            })
            .sum();
        let allowed = FD_ATOL + FD_RTOL * numeric.abs();
        if (a - numeric).abs().total_cmp(&allowed).is_gt() {
            return Err(format!(
                "direction {d}: backward {a:.10e}, central difference {numeric:.10e} \
                 (|diff| {:.3e}, allowed {allowed:.3e})",
                (a - numeric).abs()
            ));
        }
    }
    Ok(k)
}

/// Checks one graph whose first op takes conv2d's Winograd path, along random
/// directions with both checkers; `tile` is forced (0: conv2d's own choice).
fn run_winograd_case(seed: u64, tile: usize) -> Result<bool, String> {
    const DIRECTIONS: usize = 12;
    let mut rng = StdRng::seed_from_u64(seed);
    for _structure in 0..4 {
        let g = generate_from(&mut rng, true);
        for _values in 0..4 {
            let inputs = draw_inputs(&g, &mut rng);
            let vals: Vec<Tensor<f64>> = {
                let tape = Tape::<f64>::new();
                let vars: Vec<_> = inputs.iter().map(|x| tape.constant(x.clone())).collect();
                build(&g, &tape, &vars).iter().map(|v| v.value()).collect()
            };
            if check_values(&g, &vals).is_err() {
                continue;
            }
            let describe = |what: String| {
                format!(
                    "winograd seed {seed} (tile {tile}): {what}\ngraph ({} ops):\n{g}",
                    g.ops
                )
            };
            let f = builder(|tape, x| output(&g, tape, x));
            let tile_guard = tapegrad::conv::force_winograd_tile(tile);
            let report = gradcheck(
                f,
                &inputs,
                Options {
                    seed,
                    mode: Mode::RandomDirections(DIRECTIONS),
                    ..Options::default()
                },
            );
            let mine = independent_directional(f, &inputs, seed, DIRECTIONS);
            drop(tile_guard);
            if !report.passed() {
                return Err(describe(format!("tapegrad::gradcheck: {report}")));
            }
            mine.map_err(|e| describe(format!("independent check: {e}")))?;
            return Ok(true);
        }
    }
    Ok(false)
}

fn run_winograd(base: u64, count: u64) {
    let mut checked = 0;
    for seed in base..base + count {
        let tile = [0, 2, 4][(seed % 3) as usize];
        checked += run_winograd_case(seed, tile).unwrap_or_else(|msg| panic!("{msg}")) as u64;
    }
    eprintln!("{count} Winograd seeds: {checked} graphs checked");
    assert!(
        checked * 20 >= count * 19,
        "only {checked} of {count} seeds gave a graph"
    );
}

/// What one seed produced: the graph that was checked (or none, if no drawn graph
/// kept its kinks clear) and the number of values compared.
struct Outcome {
    graph: Option<Graph>,
    compared: usize,
    /// Value draws refused for coming too near a kink or out of range.
    refused: usize,
}

/// Draws the graph of `seed`, checks it both ways, and returns an error message with
/// the seed and the graph on failure.
fn run_case(seed: u64) -> Result<Outcome, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut refused = 0;
    for _structure in 0..4 {
        let g = generate(&mut rng);
        for _values in 0..4 {
            let inputs = draw_inputs(&g, &mut rng);
            let vals: Vec<Tensor<f64>> = {
                let tape = Tape::<f64>::new();
                let vars: Vec<_> = inputs.iter().map(|x| tape.constant(x.clone())).collect();
                build(&g, &tape, &vars).iter().map(|v| v.value()).collect()
            };
            if check_values(&g, &vals).is_err() {
                refused += 1;
                continue;
            }
            let describe = |what: String| {
                let shapes: Vec<_> = g.inputs.iter().map(|(s, _)| s.clone()).collect();
                format!(
                    "seed {seed}: {what}\ninput shapes {shapes:?}\ngraph ({} ops):\n{g}\
                     reproduce: PROPERTY_SEED={seed} cargo test --test property one_seed",
                    g.ops
                )
            };
            let f = builder(|tape, x| output(&g, tape, x));
            let report = gradcheck(
                f,
                &inputs,
                Options {
                    seed,
                    ..Options::default()
                },
            );
            if !report.passed() {
                return Err(describe(format!("tapegrad::gradcheck: {report}")));
            }
            let compared = independent_check(f, &inputs, seed)
                .map_err(|e| describe(format!("independent check: {e}")))?;
            if compared != report.checked {
                return Err(describe(format!(
                    "the checks compared {compared} and {} values",
                    report.checked
                )));
            }
            return Ok(Outcome {
                graph: Some(g),
                compared,
                refused,
            });
        }
    }
    Ok(Outcome {
        graph: None,
        compared: 0,
        refused,
    })
}

/// Runs `count` seeds from `base`; asserts every graph passes, that few seeds had to
/// be skipped, and that every op kind was exercised.
fn run(base: u64, count: u64) {
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    let (mut skipped, mut compared, mut ops, mut refused) = (0, 0, 0, 0);
    for seed in base..base + count {
        let outcome = run_case(seed).unwrap_or_else(|msg| panic!("{msg}"));
        refused += outcome.refused;
        match outcome {
            Outcome { graph: None, .. } => skipped += 1,
            Outcome {
                graph: Some(g),
                compared: c,
                ..
            } => {
                compared += c;
                ops += g.ops;
                assert!((3..=12).contains(&g.ops), "seed {seed}: {} ops\n{g}", g.ops);
                for n in &g.nodes {
                    *kinds.entry(n.op.kind()).or_default() += 1;
                }
                // Fan-out: some node read by two later ops.
                let mut reads = vec![0; g.nodes.len()];
                for n in &g.nodes {
                    for o in n.op.operands() {
                        reads[o] += 1;
                    }
                }
                if reads.iter().any(|&r| r >= 2) {
                    *kinds.entry("fan-out").or_default() += 1;
                }
            }
        }
    }
    eprintln!(
        "{count} seeds: {} graphs checked ({ops} ops, {compared} values compared both ways), {skipped} skipped; \
         {refused} value draws refused near a kink or out of range",
        count - skipped
    );
    eprintln!("op counts: {kinds:?}");
    assert!(
        skipped * 20 <= count,
        "{skipped} of {count} seeds found no graph clear of kinks"
    );
    let min = (count / 100).max(2) as usize;
    for k in [
        "conv2d",
        "conv2d+bias",
        "max_pool2d",
        "avg_pool2d",
        "add",
        "sub",
        "mul",
        "div",
        "binary(x, x)",
        "scalar",
        "tanh",
        "sigmoid",
        "exp",
        "relu",
        "leaky_relu",
        "neg",
        "sum",
        "mean",
        "sum_axes",
        "mean_axes",
        "max_axis",
        "reshape",
        "permute",
        "transpose",
        "matmul",
        "linear",
        "softmax",
        "log_softmax",
        "mse_loss",
        "cross_entropy",
        "readout",
        "fan-out",
    ] {
        let n = kinds.get(k).copied().unwrap_or(0);
        assert!(
            n >= min,
            "op kind {k} was generated {n} times (want ≥ {min}): {kinds:?}"
        );
    }
}

#[test]
fn random_graphs() {
    run(QUICK_BASE, QUICK_GRAPHS);
}

#[test]
#[ignore = "long property run: cargo test --release --test property -- --ignored"]
fn random_graphs_long() {
    run(LONG_BASE, LONG_GRAPHS);
    run_winograd(LONG_BASE, LONG_WINOGRAD_GRAPHS);
}

/// Graphs starting with a conv on the Winograd path (both tile sizes), checked along
/// random directions: its weight alone has 2,304 elements.
#[test]
fn winograd_graphs() {
    run_winograd(QUICK_BASE, QUICK_WINOGRAD_GRAPHS);
}

/// One seed (`PROPERTY_SEED`, default the first quick seed), printing its graph.
#[test]
fn one_seed() {
    let seed = std::env::var("PROPERTY_SEED")
        .ok()
        .map(|s| s.parse().expect("PROPERTY_SEED must be an integer"))
        .unwrap_or(QUICK_BASE);
    match run_case(seed) {
        Ok(Outcome {
            graph, compared, ..
        }) => {
            let g = graph.expect("the seed gave no graph clear of kinks");
            eprintln!("seed {seed}: passed, {compared} values compared\n{g}");
            assert!(compared > 0);
        }
        Err(msg) => panic!("{msg}"),
    }
}

/// The independent checks must catch a wrong gradient: a custom op whose backward is
/// off by 1% in one element.
#[test]
fn independent_check_catches_a_wrong_gradient() {
    let x = Tensor::from_vec(vec![0.3, -0.7, 1.1], [3]).unwrap();
    let wrong = builder(|_, v| {
        let y = v[0].value().map(|a| a * a);
        v[0].tape().record("square_wrong", y, &[v[0]], |ctx| {
            let mut d = ctx.inputs[0].zip_map(ctx.grad, "square_wrong", |a, g| 2.0 * a * g);
            d.data_mut()[1] *= 1.01;
            tapegrad::ParentGrads::from_elem(Some(d), 1)
        })
    });
    let err = independent_check(wrong, std::slice::from_ref(&x), 1).unwrap_err();
    assert!(err.starts_with("input 0 element 1:"), "{err}");
    let err = independent_directional(wrong, std::slice::from_ref(&x), 1, 4).unwrap_err();
    assert!(err.starts_with("direction 0:"), "{err}");
    let right = builder(|_, v| v[0].mul(v[0]).tanh());
    assert_eq!(independent_check(right, std::slice::from_ref(&x), 1), Ok(3));
    assert_eq!(independent_directional(right, &[x], 1, 4), Ok(4));
}

/// The kink guard: a gap below the margin is refused, a tie at exact zeros is not.
#[test]
fn gap_rules() {
    assert_eq!(gap([1.0, 3.0, 2.0].into_iter()), 1.0);
    assert_eq!(gap([0.0, 0.0, -1.0].into_iter()), f64::INFINITY);
    assert_eq!(gap([0.5, 0.5].into_iter()), 0.0);
    assert_eq!(gap([2.0].into_iter()), f64::INFINITY);
}
