//! The tape (a Wengert list): nodes in creation order, [`Var`] handles, and `backward()`.
//!
//! Every op appends one node holding its value, its parents' ids and a
//! local-gradient closure. Creation order is a topological order, so the
//! backward pass is one reverse sweep over the nodes — no sort, no recursion,
//! any depth.

use crate::shape::Shape;
use crate::{Float, Tensor};
use smallvec::SmallVec;
use std::cell::{Cell, Ref, RefCell, RefMut};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The gradient of each parent of a node, in parent order (`None`: no contribution).
///
/// ```
/// use tapegrad::smallvec::smallvec;
/// let g: tapegrad::ParentGrads<f32> = smallvec![Some(tapegrad::Tensor::ones([2])), None];
/// assert_eq!(g.len(), 2);
/// ```
pub type ParentGrads<T> = SmallVec<[Option<Tensor<T>>; 2]>;

/// A node's local-gradient closure: maps the output gradient (and the values
/// read from the tape) to each parent's gradient contribution.
///
/// ```
/// use tapegrad::smallvec::smallvec;
/// // The local gradient of y = 2x.
/// let f: tapegrad::BackwardFn<f32> = Box::new(|ctx| smallvec![Some(ctx.grad.map(|g| 2.0 * g))]);
/// # let _ = f;
/// ```
pub type BackwardFn<T> = Box<dyn Fn(&BackwardCtx<'_, T>) -> ParentGrads<T>>;

/// What a local-gradient closure sees during the backward sweep.
///
/// The parents' values are read from the tape at backward time, never copied
/// into the closure.
///
/// ```
/// use tapegrad::{Tape, Tensor};
/// use tapegrad::smallvec::smallvec;
/// // y = a·b elementwise: da = g·b, db = g·a, skipping parents that need no gradient.
/// let tape = Tape::<f64>::new();
/// let a = tape.leaf(Tensor::full([2], 3.0));
/// let b = tape.constant(Tensor::full([2], 5.0));
/// let y = tape.record("my_mul", Tensor::full([2], 15.0), &[a, b], |ctx| {
///     let (a, b) = (ctx.inputs[0], ctx.inputs[1]);
///     smallvec![
///         ctx.needs_grad[0].then(|| ctx.grad.zip_map(b, "my_mul", |g, b| g * b)),
///         ctx.needs_grad[1].then(|| ctx.grad.zip_map(a, "my_mul", |g, a| g * a)),
///     ]
/// });
/// assert_eq!(y.sum().backward()[a].data(), &[5.0, 5.0]);
/// ```
pub struct BackwardCtx<'a, T: Float> {
    /// ∂loss/∂output: the gradient flowing into this node (same shape as `output`).
    pub grad: &'a Tensor<T>,
    /// The parents' values, in the order the op recorded them.
    pub inputs: &'a [&'a Tensor<T>],
    /// This node's own value (the op's output).
    pub output: &'a Tensor<T>,
    /// Whether each parent wants a gradient; a closure may skip work (return `None`) where false.
    pub needs_grad: &'a [bool],
    /// The constant saved with [`Tape::record_scalar`] (e.g. the factor of `mul_scalar`);
    /// zero for ops recorded with [`Tape::record`].
    pub scalar: T,
}

/// What a differentiable backward sees when gradients are taken as a graph
/// ([`Var::grad_graph`]): the same things as [`BackwardCtx`], as [`Var`]s on
/// the tape, so the gradients it builds can be differentiated again.
///
/// ```
/// use tapegrad::{Tape, Tensor};
/// use tapegrad::smallvec::smallvec;
/// // y = x³ with dy/dx = 3x² as tensors (first order) and as Vars (any order).
/// let tape = Tape::<f64>::new();
/// let x = tape.leaf(Tensor::full([1], 2.0));
/// let y = tape.record_differentiable(
///     "cube",
///     x.value().map(|v| v * v * v),
///     &[x],
///     |ctx| smallvec![Some(ctx.grad.zip_map(ctx.inputs[0], "cube", |g, x| 3.0 * g * x * x))],
///     |ctx| {
///         let x = ctx.inputs[0];
///         smallvec![Some(ctx.grad * x * x * 3.0)]
///     },
/// );
/// let dx = y.sum().grad_graph(&[x])[0];
/// assert_eq!(dx.value().item(), 12.0);
/// assert_eq!(dx.sum().backward()[x].item(), 12.0); // d²y/dx² = 6x
/// ```
pub struct GraphCtx<'a, 't, T: Float> {
    /// ∂loss/∂output, as a node.
    pub grad: Var<'t, T>,
    /// The parents, in the order the op recorded them.
    pub inputs: &'a [Var<'t, T>],
    /// This node.
    pub output: Var<'t, T>,
    /// Whether each parent wants a gradient.
    pub needs_grad: &'a [bool],
    /// The constant saved with the node (see [`Tape::record_scalar`]).
    pub scalar: T,
}

/// The gradient of each parent of a node as a [`Var`] (`None`: no contribution).
pub type GraphGrads<'t, T> = SmallVec<[Option<Var<'t, T>>; 2]>;

/// An op's backward both ways: on tensors, for the fast first-order
/// `backward()`, and as [`Var`] ops, for [`Var::grad_graph`] (gradients that
/// can be differentiated again). The two must compute the same values.
pub(crate) trait Differentiable<T: Float> {
    /// First order.
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> ParentGrads<T>;
    /// As a graph on the tape.
    fn backward_graph<'t>(&self, ctx: &GraphCtx<'_, 't, T>) -> GraphGrads<'t, T>;
}

/// Gives a graph-backward closure its higher-ranked type (a closure bound
/// to a `let` is not inferred as one).
#[inline(always)]
pub(crate) fn graph_fn<T: Float, G>(g: G) -> G
where
    G: for<'a, 'g> Fn(&GraphCtx<'a, 'g, T>) -> GraphGrads<'g, T>,
{
    g
}

/// A [`Differentiable`] made of two closures.
struct Both<F, G>(F, G);

impl<T: Float, F, G> Differentiable<T> for Both<F, G>
where
    F: Fn(&BackwardCtx<'_, T>) -> ParentGrads<T>,
    G: for<'a, 't> Fn(&GraphCtx<'a, 't, T>) -> GraphGrads<'t, T>,
{
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> ParentGrads<T> {
        (self.0)(ctx)
    }
    fn backward_graph<'t>(&self, ctx: &GraphCtx<'_, 't, T>) -> GraphGrads<'t, T> {
        (self.1)(ctx)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Leaf,
    Constant,
    Op,
    /// A node whose value was given back with [`Var::release`].
    Released,
}

/// How a node maps its output gradient to its parents' gradients.
pub(crate) enum Backward<T: Float> {
    /// No gradient flows through the node (an input, or no parent requires one).
    None,
    /// One parent, `dx = g` (e.g. `x + c`): the gradient is passed through.
    Identity,
    /// One parent, elementwise `dx = g · f′(x, y, c)` with `c` the node's saved scalar.
    /// The derivative captures nothing (see [`Backward::elementwise`]), so this is a
    /// pointer to its vtable: no allocation to make or free.
    Elementwise(&'static dyn Elementwise<T>),
    /// Any op: a local-gradient closure (see [`Tape::record`]); first order only.
    Closure(BackwardFn<T>),
    /// Any op, differentiable again (see [`Tape::record_differentiable`]).
    Twice(Box<dyn Differentiable<T>>),
}

/// The backward of a one-parent elementwise op, `dx = g · f′(x, y, c)`.
pub(crate) trait Elementwise<T: Float> {
    /// One element.
    fn scalar(&self, g: T, x: T, y: T, c: T) -> T;
    /// Whole tensors of one shape (the derivative is inlined in the loop).
    fn tensor(&self, g: &Tensor<T>, x: &Tensor<T>, y: &Tensor<T>, c: T) -> Tensor<T>;
    /// `g · f′(x, y, c)` as a graph (for [`Var::grad_graph`]).
    fn graph<'t>(&self, g: Var<'t, T>, x: Var<'t, T>, y: Var<'t, T>, c: T) -> Var<'t, T>;
}

/// An [`Elementwise`] backward from a derivative `f′(x, y, c)` on numbers
/// and the gradient `g · f′(x, y, c)` built from [`Var`] ops.
pub(crate) struct Deriv<F, G>(pub(crate) F, pub(crate) G);

impl<T: Float, F, G> Elementwise<T> for Deriv<F, G>
where
    F: Fn(T, T, T) -> T + Sync,
    G: for<'t> Fn(Var<'t, T>, Var<'t, T>, Var<'t, T>, T) -> Var<'t, T> + Sync,
{
    #[inline]
    fn scalar(&self, g: T, x: T, y: T, c: T) -> T {
        g * (self.0)(x, y, c)
    }

    fn tensor(&self, g: &Tensor<T>, x: &Tensor<T>, y: &Tensor<T>, c: T) -> Tensor<T> {
        g.grad_map(x, y, |x, y| (self.0)(x, y, c))
    }

    fn graph<'t>(&self, g: Var<'t, T>, x: Var<'t, T>, y: Var<'t, T>, c: T) -> Var<'t, T> {
        (self.1)(g, x, y, c)
    }
}

impl<T: Float> Backward<T> {
    /// The elementwise backward `dx = g · df(x, y, c)`, with `dxv(g, x, y, c)`
    /// the same gradient as a graph. Both must capture nothing (checked at
    /// compile time): zero-sized values are "leaked" without allocating.
    #[inline]
    pub(crate) fn elementwise<F, G>(df: F, dxv: G) -> Self
    where
        F: Fn(T, T, T) -> T + Sync + 'static,
        G: for<'t> Fn(Var<'t, T>, Var<'t, T>, Var<'t, T>, T) -> Var<'t, T> + Sync + 'static,
    {
        const {
            assert!(
                std::mem::size_of::<F>() == 0 && std::mem::size_of::<G>() == 0,
                "an elementwise derivative must capture nothing"
            )
        };
        Backward::Elementwise(Box::leak(Box::new(Deriv(df, dxv))))
    }
}

/// One recorded value. Kept small and free of per-node heap data: a single parent's
/// id sits on the node (several go to the tape's shared `parent_ids`), and elementwise
/// ops refer to their derivative instead of boxing a closure.
struct Node<T: Float> {
    value: Tensor<T>,
    /// The parent's id if the node has exactly one parent (most ops), else where its
    /// parents' ids start in the tape's `parent_ids`.
    parents_at: usize,
    parents_len: u32,
    op: &'static str,
    kind: Kind,
    requires_grad: bool,
    /// A constant the op saved for its backward (see `record_scalar`).
    scalar: T,
    backward: Backward<T>,
}

/// The nodes in creation order, and every node's parent ids back to back.
struct Graph<T: Float> {
    nodes: Vec<Node<T>>,
    parent_ids: Vec<usize>,
}

impl<T: Float> Graph<T> {
    /// The value of node `id`; panics if it was released.
    #[inline]
    fn value(&self, id: usize) -> &Tensor<T> {
        let node = &self.nodes[id];
        if node.kind == Kind::Released {
            released(id, node.op);
        }
        &node.value
    }

    /// The parent ids of `node`.
    #[inline]
    fn parents<'a>(&'a self, node: &'a Node<T>) -> &'a [usize] {
        if node.parents_len == 1 {
            std::slice::from_ref(&node.parents_at)
        } else {
            &self.parent_ids[node.parents_at..node.parents_at + node.parents_len as usize]
        }
    }
}

/// A recording of tensor operations, for reverse-mode differentiation.
///
/// Create one per forward pass (or [`clear`](Tape::clear) it), feed it tensors
/// with [`leaf`](Tape::leaf) (receives a gradient) and [`constant`](Tape::constant)
/// (does not), compute with the returned [`Var`]s, and call
/// [`Var::backward`] on the scalar loss. The tape owns every node; dropping it
/// frees the whole graph, so nothing is kept alive by accident.
///
/// `Tape` (no parameter) is `Tape<f32>` in type position (`let tape: Tape = Tape::new();`);
/// in an expression, `Tape::new()` infers its float type from the tensors fed to it, so
/// write `Tape::<f32>::new()` or `Tape::<f64>::new()` when nothing else pins it.
///
/// ```
/// use tapegrad::{Tape, Tensor};
/// let tape: Tape = Tape::new();
/// let x = tape.leaf(Tensor::from_vec(vec![1.0, -2.0, 3.0], [3]).unwrap());
/// let y = (x * x).sum();
/// let grads = y.backward();
/// assert_eq!(grads[x].data(), &[2.0, -4.0, 6.0]);
/// ```
pub struct Tape<T: Float = f32> {
    graph: RefCell<Graph<T>>,
    check_finite: Cell<bool>,
    /// This tape's identity (renewed by [`clear`](Tape::clear)): the [`Gradients`]
    /// of a backward pass carry it, so indexing them with a `Var` of another tape,
    /// or of this tape before it was cleared, panics instead of answering for
    /// whichever node has the same index.
    identity: TapeId,
    /// False for a [`Tape::no_grad`] tape: nothing requires a gradient.
    grad_enabled: bool,
    /// The parameter stores bound to this tape for training, so that an
    /// optimizer can take this tape's [`Gradients`] directly.
    bindings: RefCell<Vec<Binding>>,
}

/// A parameter store bound to a tape: the store's identity and the node of
/// each of its parameters, in parameter order.
#[derive(Clone, Debug)]
pub(crate) struct Binding {
    pub(crate) store: u64,
    pub(crate) leaves: Vec<usize>,
}

/// A process-wide unique tape identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TapeId(u64);

impl TapeId {
    fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        TapeId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl<T: Float> Default for Tape<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Float> Tape<T> {
    /// An empty tape.
    ///
    /// ```
    /// let tape = tapegrad::Tape::<f64>::new();
    /// assert!(tape.is_empty());
    /// ```
    pub fn new() -> Self {
        Tape {
            graph: RefCell::new(Graph {
                nodes: Vec::new(),
                parent_ids: Vec::new(),
            }),
            check_finite: Cell::new(false),
            identity: TapeId::fresh(),
            grad_enabled: true,
            bindings: RefCell::new(Vec::new()),
        }
    }

    /// A tape for inference (PyTorch's `torch.no_grad()` / `inference_mode()`):
    /// nothing on it requires a gradient (a [`leaf`](Tape::leaf) is recorded as
    /// a constant), so no op stores a backward closure, and a value nobody will
    /// read again can be given back early with [`Var::release`] ([`Sequential`](crate::nn::Sequential)
    /// does so for each layer's input). `backward()` on it panics.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::no_grad();
    /// let x = tape.leaf(Tensor::ones([2]));
    /// let h = x.exp();
    /// let y = h * 2.0;
    /// h.release(); // h's buffer is freed now, not when the tape is dropped
    /// assert!(!y.requires_grad());
    /// assert_eq!(y.value().data(), &[2.0 * 1f32.exp(); 2]);
    /// ```
    pub fn no_grad() -> Self {
        let mut tape = Self::new();
        tape.grad_enabled = false;
        tape
    }

    /// Whether ops on this tape record gradients (false for [`Tape::no_grad`]).
    ///
    /// ```
    /// assert!(tapegrad::Tape::<f32>::new().grad_enabled());
    /// assert!(!tapegrad::Tape::<f32>::no_grad().grad_enabled());
    /// ```
    pub fn grad_enabled(&self) -> bool {
        self.grad_enabled
    }

    /// An empty tape with room for `n` nodes (avoids regrowth on long graphs).
    ///
    /// ```
    /// let tape = tapegrad::Tape::<f32>::with_capacity(1000);
    /// assert_eq!(tape.len(), 0);
    /// ```
    pub fn with_capacity(n: usize) -> Self {
        Tape {
            graph: RefCell::new(Graph {
                nodes: Vec::with_capacity(n),
                parent_ids: Vec::with_capacity(n),
            }),
            check_finite: Cell::new(false),
            identity: TapeId::fresh(),
            grad_enabled: true,
            bindings: RefCell::new(Vec::new()),
        }
    }

    /// Number of nodes recorded so far.
    ///
    /// ```
    /// let tape = tapegrad::Tape::<f32>::new();
    /// tape.constant(tapegrad::Tensor::scalar(1.0));
    /// assert_eq!(tape.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.graph.borrow().nodes.len()
    }

    /// Whether no node has been recorded.
    ///
    /// ```
    /// assert!(tapegrad::Tape::<f32>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every node so the tape (and its allocation) can record the next step.
    /// Taking `&mut self` guarantees no [`Var`] of the old graph is still alive.
    ///
    /// ```
    /// let mut tape = tapegrad::Tape::<f32>::new();
    /// tape.leaf(tapegrad::Tensor::scalar(1.0));
    /// tape.clear();
    /// assert!(tape.is_empty());
    /// ```
    pub fn clear(&mut self) {
        let graph = self.graph.get_mut();
        graph.nodes.clear();
        graph.parent_ids.clear();
        self.bindings.get_mut().clear();
        self.identity = TapeId::fresh();
    }

    /// Notes that the parameters of store `store` are the leaves `leaves`
    /// (in parameter order), for [`Gradients::bound_leaves`].
    pub(crate) fn note_binding(&self, store: u64, leaves: Vec<usize>) {
        if self.grad_enabled {
            self.bindings.borrow_mut().push(Binding { store, leaves });
        }
    }

    /// Makes every op check its output, and `backward()` every gradient, for NaN or
    /// infinity; the first non-finite value panics naming the node and its op.
    ///
    /// ```should_panic
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// tape.set_check_finite(true);
    /// let x = tape.leaf(Tensor::from_vec(vec![-1.0], [1]).unwrap());
    /// let _ = x.log(); // panics: "check_finite: node 1 (log) produced a non-finite value …"
    /// ```
    pub fn set_check_finite(&self, on: bool) {
        self.check_finite.set(on);
    }

    /// Records a tensor that receives a gradient (an input or a parameter).
    ///
    /// ```
    /// let tape = tapegrad::Tape::<f32>::new();
    /// let w = tape.leaf(tapegrad::Tensor::ones([2, 2]));
    /// assert!(w.requires_grad());
    /// ```
    pub fn leaf(&self, value: Tensor<T>) -> Var<'_, T> {
        self.push_input(value, Kind::Leaf)
    }

    /// Records a tensor that never receives a gradient (data, targets, fixed weights).
    ///
    /// ```
    /// let tape = tapegrad::Tape::<f32>::new();
    /// let c = tape.constant(tapegrad::Tensor::ones([2]));
    /// assert!(!c.requires_grad());
    /// ```
    pub fn constant(&self, value: Tensor<T>) -> Var<'_, T> {
        self.push_input(value, Kind::Constant)
    }

    /// Records the result of an op: its label, its value, its parents and its
    /// local-gradient closure. This is how every op in the crate is written, and
    /// how you add your own (see `docs/design.md`).
    ///
    /// The closure is stored only if some parent requires a gradient.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// use tapegrad::smallvec::smallvec;
    /// // y = x³, dy/dx = 3x²
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![2.0], [1]).unwrap());
    /// let y = tape.record("cube", x.value().map(|v| v * v * v), &[x], |ctx| {
    ///     smallvec![Some(ctx.grad.zip_map(ctx.inputs[0], "cube", |g, x| g * 3.0 * x * x))]
    /// });
    /// assert_eq!(y.sum().backward()[x].data(), &[12.0]);
    /// ```
    pub fn record<'t>(
        &'t self,
        op: &'static str,
        value: Tensor<T>,
        parents: &[Var<'t, T>],
        backward: impl Fn(&BackwardCtx<'_, T>) -> ParentGrads<T> + 'static,
    ) -> Var<'t, T> {
        self.record_scalar(op, value, parents, T::ZERO, backward)
    }

    /// [`record`](Tape::record) with one constant saved on the node and handed to the
    /// closure as `ctx.scalar`. A closure that captures nothing is zero-sized and is
    /// stored without a heap allocation, so ops with a constant (`x * c`, `xᵖ`,
    /// `leaky_relu`) should pass it here rather than capture it.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// use tapegrad::smallvec::smallvec;
    /// // y = c·x, dy/dx = c
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![1.0, 2.0], [2]).unwrap());
    /// let c = 3.0;
    /// let y = tape.record_scalar("scale", x.value().map(|v| c * v), &[x], c, |ctx| {
    ///     smallvec![Some(ctx.grad.map(|g| g * ctx.scalar))]
    /// });
    /// assert_eq!(y.sum().backward()[x].data(), &[3.0, 3.0]);
    /// ```
    pub fn record_scalar<'t>(
        &'t self,
        op: &'static str,
        value: Tensor<T>,
        parents: &[Var<'t, T>],
        scalar: T,
        backward: impl Fn(&BackwardCtx<'_, T>) -> ParentGrads<T> + 'static,
    ) -> Var<'t, T> {
        self.push_op(op, value, parents, scalar, move || {
            Backward::Closure(Box::new(backward))
        })
    }

    /// [`record`](Tape::record) for an op whose gradient can itself be
    /// differentiated: `backward` computes the parents' gradients on tensors
    /// (the fast path of `backward()`), and `graph` computes the same
    /// gradients with [`Var`] ops (the path of [`Var::grad_graph`], so
    /// gradients of gradients, Hessian-vector products and gradient
    /// penalties work through the op). An op recorded with `record` instead
    /// panics, naming itself, if its gradient is differentiated.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// use tapegrad::smallvec::smallvec;
    /// // y = sin(x): dy/dx = cos(x) on tensors, and as a graph through y' = cos(x)
    /// // recorded as another differentiable op (d cos/dx = −sin).
    /// fn sin<'t>(x: tapegrad::Var<'t, f64>) -> tapegrad::Var<'t, f64> {
    ///     x.tape().record_differentiable(
    ///         "sin",
    ///         x.value().map(f64::sin),
    ///         &[x],
    ///         |ctx| smallvec![Some(ctx.grad.zip_map(ctx.inputs[0], "sin", |g, x| g * x.cos()))],
    ///         |ctx| smallvec![Some(ctx.grad * sin(ctx.inputs[0] + std::f64::consts::FRAC_PI_2))],
    ///     )
    /// }
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::full([1], 0.5));
    /// let dx = sin(x).sum().grad_graph(&[x])[0];
    /// assert!((dx.value().item() - 0.5f64.cos()).abs() < 1e-15);
    /// let d2 = dx.sum().backward()[x].item();
    /// assert!((d2 + 0.5f64.sin()).abs() < 1e-15);
    /// ```
    pub fn record_differentiable<'t, G>(
        &'t self,
        op: &'static str,
        value: Tensor<T>,
        parents: &[Var<'t, T>],
        backward: impl Fn(&BackwardCtx<'_, T>) -> ParentGrads<T> + 'static,
        graph: G,
    ) -> Var<'t, T>
    where
        G: for<'a, 'g> Fn(&GraphCtx<'a, 'g, T>) -> GraphGrads<'g, T> + 'static,
    {
        self.push_op(op, value, parents, T::ZERO, move || {
            Backward::Twice(Box::new(Both(backward, graph)))
        })
    }

    /// [`record_differentiable`](Tape::record_differentiable) with a constant
    /// saved on the node (`ctx.scalar` in both closures).
    pub(crate) fn record_differentiable_scalar<'t, G>(
        &'t self,
        op: &'static str,
        value: Tensor<T>,
        parents: &[Var<'t, T>],
        scalar: T,
        backward: impl Fn(&BackwardCtx<'_, T>) -> ParentGrads<T> + 'static,
        graph: G,
    ) -> Var<'t, T>
    where
        G: for<'a, 'g> Fn(&GraphCtx<'a, 'g, T>) -> GraphGrads<'g, T> + 'static,
    {
        self.push_op(op, value, parents, scalar, move || {
            Backward::Twice(Box::new(Both(backward, graph)))
        })
    }

    /// Records a one-parent op whose backward is not a closure (see [`Backward`]):
    /// its value is `f` of the parent's value, computed under the same borrow.
    #[inline(always)]
    pub(crate) fn record_unary<'t>(
        &'t self,
        op: &'static str,
        parent: Var<'t, T>,
        f: impl FnOnce(&Tensor<T>) -> Tensor<T>,
        scalar: T,
        backward: Backward<T>,
    ) -> Var<'t, T> {
        assert!(
            std::ptr::eq(parent.tape, self),
            "{op}: input 0 (node {}) belongs to another tape",
            parent.id
        );
        let mut graph = self.graph_mut(op);
        let nodes = &mut graph.nodes;
        let requires_grad = nodes[parent.id].requires_grad;
        if nodes[parent.id].kind == Kind::Released {
            released(parent.id, nodes[parent.id].op);
        }
        let value = f(&nodes[parent.id].value);
        let id = push_in_place(nodes, || Node {
            value,
            parents_at: parent.id,
            parents_len: 1,
            op,
            kind: Kind::Op,
            requires_grad,
            scalar,
            backward: if requires_grad {
                backward
            } else {
                Backward::None
            },
        });
        if self.check_finite.get() && !nodes[id].value.all_finite() {
            let node = nodes.pop().expect("just pushed");
            non_finite_value(&graph, op, &node.value, &[parent.id]);
        }
        Var { tape: self, id }
    }

    /// Appends an op node; `backward` is called only if some parent requires a gradient.
    fn push_op<'t>(
        &'t self,
        op: &'static str,
        value: Tensor<T>,
        parents: &[Var<'t, T>],
        scalar: T,
        backward: impl FnOnce() -> Backward<T>,
    ) -> Var<'t, T> {
        let mut graph = self.graph_mut(op);
        let graph = &mut *graph;
        let mut requires_grad = false;
        for (k, p) in parents.iter().enumerate() {
            // Two tapes in one scope share the lifetime `'t`, so the type system cannot
            // stop a Var of another tape from being passed here; its id would silently
            // name the wrong node.
            assert!(
                std::ptr::eq(p.tape, self),
                "{op}: input {k} (node {}) belongs to another tape",
                p.id
            );
            requires_grad |= graph.nodes[p.id].requires_grad;
        }
        let parents_len = u32::try_from(parents.len()).expect("tape: too many parents");
        let parents_at = if let [p] = parents {
            p.id
        } else {
            let at = graph.parent_ids.len();
            graph.parent_ids.extend(parents.iter().map(|p| p.id));
            at
        };
        if self.check_finite.get() && !value.all_finite() {
            let ids: SmallVec<[usize; 4]> = parents.iter().map(|p| p.id).collect();
            non_finite_value(graph, op, &value, &ids);
        }
        let id = push_in_place(&mut graph.nodes, || Node {
            value,
            parents_at,
            parents_len,
            op,
            kind: Kind::Op,
            requires_grad,
            scalar,
            backward: if requires_grad {
                backward()
            } else {
                Backward::None
            },
        });
        Var { tape: self, id }
    }

    /// Records a node without parents (a leaf or a constant).
    fn push_input(&self, value: Tensor<T>, kind: Kind) -> Var<'_, T> {
        let op = if kind == Kind::Leaf {
            "leaf"
        } else {
            "constant"
        };
        let kind = if self.grad_enabled {
            kind
        } else {
            Kind::Constant
        };
        let mut graph = self.graph_mut(op);
        if self.check_finite.get() && !value.all_finite() {
            non_finite_value(&graph, op, &value, &[]);
        }
        let id = push_in_place(&mut graph.nodes, || Node {
            value,
            parents_at: 0,
            parents_len: 0,
            op,
            kind,
            requires_grad: kind == Kind::Leaf,
            scalar: T::ZERO,
            backward: Backward::None,
        });
        Var { tape: self, id }
    }

    /// Applies `f` to the value of node `id` without cloning it.
    #[inline]
    pub(crate) fn with_value<R>(&self, id: usize, f: impl FnOnce(&Tensor<T>) -> R) -> R {
        f(self.graph.borrow().value(id))
    }

    /// The value of node `id` (a cheap clone sharing storage).
    pub(crate) fn value_of(&self, id: usize) -> Tensor<T> {
        self.graph.borrow().value(id).clone()
    }

    /// Borrow of the graph, for ops that only read values.
    fn graph(&self) -> Ref<'_, Graph<T>> {
        self.graph.borrow()
    }

    /// The graph, for appending the node of `op`. The only way it can be
    /// borrowed already is a backward closure recording on the tape while
    /// `backward()` walks it, which the tape does not support: say so.
    #[inline(always)]
    fn graph_mut(&self, op: &str) -> RefMut<'_, Graph<T>> {
        match self.graph.try_borrow_mut() {
            Ok(g) => g,
            Err(_) => recording_during_backward(op),
        }
    }

    /// The graph in Graphviz DOT: one box per node with its id, op and shape,
    /// and, if `grads` is given, the norm of each node's gradient.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::ones([2]));
    /// let y = x.exp().sum();
    /// let g = y.backward();
    /// let dot = tape.to_dot(Some(&g));
    /// assert!(dot.starts_with("digraph tape {"));
    /// assert!(dot.contains("exp"));
    /// assert!(dot.contains("|grad|"));
    /// ```
    pub fn to_dot(&self, grads: Option<&Gradients<T>>) -> String {
        let graph = self.graph();
        let mut s = String::from(
            "digraph tape {\n  rankdir=BT;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for (i, n) in graph.nodes.iter().enumerate() {
            let shape = if n.kind == Kind::Released {
                "released".to_string()
            } else {
                n.value.shape().to_string()
            };
            let mut label = format!("#{i} {}\\n{shape}", n.op);
            if let Some(g) = grads.and_then(|g| g.by_id(i)) {
                let _ = write!(label, "\\n|grad| = {:.4e}", g.norm());
            }
            let style = match n.kind {
                Kind::Leaf => ", style=filled, fillcolor=\"#dbeafe\"",
                Kind::Constant => ", style=dashed",
                Kind::Op => "",
                Kind::Released => ", style=dotted",
            };
            let _ = writeln!(s, "  n{i} [label=\"{label}\"{style}];");
            for &p in graph.parents(n) {
                let _ = writeln!(s, "  n{p} -> n{i};");
            }
        }
        s.push_str("}\n");
        s
    }

    /// The graph as an SVG picture, with nothing to install: one box per node
    /// (id, op, shape and, if `grads` is given, the gradient's norm), leaves
    /// shaded and constants dashed, in rows by depth (a node sits one row
    /// below its deepest parent), with an edge from each parent to its child.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::ones([2]));
    /// let y = (x * 2.0).relu().sum();
    /// let svg = tape.to_svg(Some(&y.backward()));
    /// assert!(svg.starts_with("<svg") && svg.contains("relu") && svg.contains("|grad|"));
    /// ```
    pub fn to_svg(&self, grads: Option<&Gradients<T>>) -> String {
        let graph = self.graph();
        let nodes = &graph.nodes;
        // Row of each node: one below its deepest parent; column: order within the row.
        let mut depth = vec![0usize; nodes.len()];
        let mut column = vec![0usize; nodes.len()];
        let mut per_row: Vec<usize> = vec![];
        for (i, n) in nodes.iter().enumerate() {
            depth[i] = graph
                .parents(n)
                .iter()
                .map(|&p| depth[p] + 1)
                .max()
                .unwrap_or(0);
            if per_row.len() <= depth[i] {
                per_row.resize(depth[i] + 1, 0);
            }
            column[i] = per_row[depth[i]];
            per_row[depth[i]] += 1;
        }
        let (bw, bh, gx, gy) = (170.0, 48.0, 30.0, 46.0);
        let pos = |i: usize| {
            (
                20.0 + column[i] as f64 * (bw + gx),
                20.0 + depth[i] as f64 * (bh + gy),
            )
        };
        let width = 40.0 + per_row.iter().max().copied().unwrap_or(1) as f64 * (bw + gx);
        let height = 40.0 + per_row.len() as f64 * (bh + gy);
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
             font-family=\"monospace\" font-size=\"11\">\n\
             <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" \
             markerWidth=\"6\" markerHeight=\"6\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\"/></marker></defs>\n"
        );
        for (i, n) in nodes.iter().enumerate() {
            let (x, y) = pos(i);
            for &p in graph.parents(n) {
                let (px, py) = pos(p);
                let _ = writeln!(
                    s,
                    "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{y}\" stroke=\"#888\" marker-end=\"url(#arrow)\"/>",
                    px + bw / 2.0,
                    py + bh,
                    x + bw / 2.0
                );
            }
        }
        for (i, n) in nodes.iter().enumerate() {
            let (x, y) = pos(i);
            let (fill, dash) = match n.kind {
                Kind::Leaf => ("#dbeafe", ""),
                Kind::Constant | Kind::Released => ("#ffffff", " stroke-dasharray=\"4 3\""),
                Kind::Op => ("#f5f5f5", ""),
            };
            let shape = if n.kind == Kind::Released {
                "released".to_string()
            } else {
                n.value.shape().to_string()
            };
            let grad = grads
                .filter(|g| g.tape == self.identity)
                .and_then(|g| g.by_id(i))
                .map(|g| format!("|grad| = {:.4e}", g.norm()))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{bw}\" height=\"{bh}\" rx=\"6\" fill=\"{fill}\" stroke=\"#333\"{dash}/>\n\
                 <text x=\"{}\" y=\"{}\">#{i} {}</text>\n<text x=\"{}\" y=\"{}\">{shape}</text>\n<text x=\"{}\" y=\"{}\">{grad}</text>",
                x + 8.0,
                y + 15.0,
                n.op,
                x + 8.0,
                y + 29.0,
                x + 8.0,
                y + 43.0
            );
        }
        s.push_str("</svg>\n");
        s
    }

    /// One line per node: id, op, shape, parents (for debugging and teaching).
    ///
    /// ```
    /// let tape = tapegrad::Tape::<f32>::new();
    /// let x = tape.leaf(tapegrad::Tensor::ones([2]));
    /// let _ = x.relu();
    /// assert!(tape.summary().contains("relu"));
    /// ```
    pub fn summary(&self) -> String {
        let graph = self.graph();
        let mut s = String::new();
        for (i, n) in graph.nodes.iter().enumerate() {
            let _ = writeln!(
                s,
                "#{i:<4} {:<16} {:<16} parents {:?}",
                n.op,
                n.value.shape().to_string(),
                graph.parents(n)
            );
        }
        s
    }

    /// The chain rule, node by node: one row per node in creation order with
    /// its id, op, parents, shape, value and gradient (each shown in full
    /// when it has at most 4 elements, else as norm, min and max), for
    /// following how an output gradient turns into every other one.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![1.0, 2.0], [2]).unwrap());
    /// let y = (x * x).sum();
    /// let g = y.backward();
    /// let t = tape.trace(&g);
    /// assert!(t.contains("mul") && t.contains("[2, 4]")); // dy/dx = 2x
    /// ```
    pub fn trace(&self, grads: &Gradients<T>) -> String {
        fn describe<T: Float>(t: &Tensor<T>) -> String {
            let v = t.data();
            if v.len() <= 4 {
                let items: Vec<String> = v.iter().map(|x| format!("{:.4}", x.to_f64())).collect();
                return format!("[{}]", items.join(", ")).replace(".0000", "");
            }
            let (lo, hi) = v
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
                    (lo.min(x.to_f64()), hi.max(x.to_f64()))
                });
            format!("‖·‖ {:.4}, min {lo:.4}, max {hi:.4}", t.norm())
        }
        let graph = self.graph();
        let mut s = format!(
            "{:<5} {:<18} {:<10} {:<14} {:<38} {}\n",
            "node", "op", "parents", "shape", "value", "gradient"
        );
        for (i, n) in graph.nodes.iter().enumerate() {
            let parents: Vec<String> = graph.parents(n).iter().map(|p| p.to_string()).collect();
            let value = if n.kind == Kind::Released {
                "released".to_string()
            } else {
                describe(&n.value)
            };
            let grad = if grads.tape == self.identity {
                grads.by_id(i).map_or("-".to_string(), describe)
            } else {
                "(other tape)".to_string()
            };
            let _ = writeln!(
                s,
                "#{i:<4} {:<18} {:<10} {:<14} {:<38} {grad}",
                n.op,
                parents.join(","),
                n.value.shape().to_string(),
                value
            );
        }
        s
    }

    fn backward_from(&self, root: usize, seed: Tensor<T>, keep_intermediate: bool) -> Gradients<T> {
        let graph = self.graph();
        let nodes = &graph.nodes[..];
        let check = self.check_finite.get();
        let root_node = &nodes[root];
        assert!(
            seed.shape() == root_node.value.shape(),
            "backward: seed of shape {} does not match node {root} ({}) of shape {}",
            seed.shape(),
            root_node.op,
            root_node.value.shape()
        );
        let mut grads: Vec<Option<Tensor<T>>> = Vec::with_capacity(root + 1);
        grads.resize_with(root + 1, || None);
        if root_node.requires_grad || root_node.kind == Kind::Leaf {
            grads[root] = Some(seed);
        }
        // Reused across nodes (cleared, never reallocated): per-node allocation-free.
        let mut inputs: Vec<&Tensor<T>> = Vec::with_capacity(4);
        let mut needs: Vec<bool> = Vec::with_capacity(4);
        for i in (0..=root).rev() {
            // Parents come before their children, so the slots a node adds into are all
            // in `before`, and its own gradient is read in place, not moved out and back.
            let (before, rest) = grads.split_at_mut(i);
            let Some(g) = rest[0].as_ref() else { continue };
            let node = &nodes[i];
            match node.backward {
                Backward::None => {}
                Backward::Closure(ref bw) => {
                    self.call_closure(&graph, i, &**bw, g, &mut inputs, &mut needs, before);
                }
                Backward::Twice(ref bw) => {
                    let f = |ctx: &BackwardCtx<'_, T>| bw.backward(ctx);
                    self.call_closure(&graph, i, &f, g, &mut inputs, &mut needs, before);
                }
                Backward::Identity | Backward::Elementwise(_) => {
                    // One-parent elementwise ops: the parent's gradient has the node's shape
                    // by construction, and the parent requires one (else there is no backward).
                    let p = node.parents_at;
                    let (x, y) = (&nodes[p].value, &node.value);
                    if let (Some(g1), Some(x1), Some(y1)) = (g.as_one(), x.as_one(), y.as_one()) {
                        // One element: plain scalar arithmetic, written straight into the slot.
                        let d = match node.backward {
                            Backward::Elementwise(e) => e.scalar(g1, x1, y1, node.scalar),
                            _ => g1,
                        };
                        if check && !d.is_finite() {
                            non_finite_gradient(i, node.op, 0, p, nodes[p].op);
                        }
                        match &mut before[p] {
                            Some(acc) => acc.data_mut()[0] += d,
                            slot => *slot = Some(Tensor::one(d, g.shape().clone())),
                        }
                    } else {
                        let pgrad = match node.backward {
                            Backward::Elementwise(e) => e.tensor(g, x, y, node.scalar),
                            _ => g.clone(),
                        };
                        if check && !pgrad.all_finite() {
                            non_finite_gradient(i, node.op, 0, p, nodes[p].op);
                        }
                        accumulate(&mut before[p], pgrad);
                    }
                }
            }
            if !keep_intermediate && node.kind != Kind::Leaf {
                rest[0] = None;
            }
        }
        Gradients {
            grads,
            tape: self.identity,
            bindings: self.bindings.borrow().clone(),
        }
    }

    /// The gradient of node `root` with respect to every node, as nodes
    /// recorded on this tape (see [`Var::grad_graph`]); `seed` is ∂L/∂root.
    ///
    /// With `inputs`, the sweep treats those nodes as inputs: it stops at the
    /// lowest of them and does not go on through any of them (for an op that
    /// takes its graph backward from a composite of its inputs).
    fn backward_graph_from<'t>(
        &'t self,
        root: usize,
        seed: Var<'t, T>,
        inputs: Option<&[usize]>,
    ) -> Vec<Option<Var<'t, T>>> {
        let mut grads: Vec<Option<Var<'t, T>>> = vec![None; root + 1];
        {
            let graph = self.graph();
            let node = &graph.nodes[root];
            assert!(
                seed.shape() == *node.value.shape(),
                "grad_graph: seed of shape {} does not match node {root} ({}) of shape {}",
                seed.shape(),
                node.op,
                node.value.shape()
            );
            if node.requires_grad || node.kind == Kind::Leaf {
                grads[root] = Some(seed);
            }
        }
        let lowest = inputs.map_or(0, |ids| ids.iter().copied().min().unwrap_or(0));
        for i in (lowest..=root).rev() {
            let Some(g) = grads[i] else { continue };
            if inputs.is_some_and(|ids| ids.contains(&i)) {
                continue;
            }
            // Read what the node needs under a short borrow, and take its backward
            // out: the backward records new nodes, which needs the tape mutably.
            let (parents, needs, scalar, op, backward) = {
                let mut graph = self.graph_mut("grad_graph");
                let parents: SmallVec<[usize; 4]> = graph.parents(&graph.nodes[i]).into();
                let needs: SmallVec<[bool; 4]> = parents
                    .iter()
                    .map(|&p| graph.nodes[p].requires_grad)
                    .collect();
                let node = &mut graph.nodes[i];
                let backward = std::mem::replace(&mut node.backward, Backward::None);
                (parents, needs, node.scalar, node.op, backward)
            };
            // Put the backward back even if it panics.
            let guard = Restore {
                tape: self,
                id: i,
                backward: Some(backward),
            };
            let inputs: SmallVec<[Var<'t, T>; 4]> =
                parents.iter().map(|&id| Var { tape: self, id }).collect();
            let output = Var { tape: self, id: i };
            let pgrads: GraphGrads<'t, T> = match guard.backward.as_ref().expect("set above") {
                Backward::None => SmallVec::new(),
                Backward::Identity => std::iter::once(Some(g)).collect(),
                Backward::Elementwise(e) => {
                    std::iter::once(Some(e.graph(g, inputs[0], output, scalar))).collect()
                }
                Backward::Closure(_) => not_twice_differentiable(i, op),
                Backward::Twice(bw) => {
                    let ctx = GraphCtx {
                        grad: g,
                        inputs: &inputs,
                        output,
                        needs_grad: &needs,
                        scalar,
                    };
                    bw.backward_graph(&ctx)
                }
            };
            drop(guard);
            for (k, (&p, pg)) in parents.iter().zip(pgrads).enumerate() {
                let Some(pg) = pg else { continue };
                if !needs[k] {
                    continue;
                }
                let (pshape, gshape) = (inputs[k].shape(), pg.shape());
                assert!(
                    pshape == gshape,
                    "grad_graph: node {i} ({op}): gradient for input {k} has shape {gshape} but the input has shape {pshape}"
                );
                grads[p] = Some(match grads[p] {
                    None => pg,
                    Some(acc) => acc + pg,
                });
            }
        }
        grads
    }

    /// Runs the closure `bw` of node `i` on its output gradient `g` and adds the
    /// returned gradients into the parents' slots, checking their shapes (and, with
    /// check-finite on, their values). `inputs` and `needs` are scratch space.
    #[allow(clippy::too_many_arguments)]
    fn call_closure<'g>(
        &self,
        graph: &'g Graph<T>,
        i: usize,
        bw: &dyn Fn(&BackwardCtx<'_, T>) -> ParentGrads<T>,
        g: &Tensor<T>,
        inputs: &mut Vec<&'g Tensor<T>>,
        needs: &mut Vec<bool>,
        grads: &mut [Option<Tensor<T>>],
    ) {
        let nodes = &graph.nodes;
        let node = &nodes[i];
        let parents = graph.parents(node);
        inputs.clear();
        needs.clear();
        for &p in parents {
            let parent = &nodes[p];
            inputs.push(&parent.value);
            needs.push(parent.requires_grad);
        }
        let ctx = BackwardCtx {
            grad: g,
            inputs,
            output: &node.value,
            needs_grad: needs,
            scalar: node.scalar,
        };
        let mut pg = bw(&ctx);
        assert!(
            pg.len() == parents.len(),
            "backward of node {i} ({}) returned {} gradients for {} parents",
            node.op,
            pg.len(),
            parents.len()
        );
        for (k, (&p, slot)) in parents.iter().zip(pg.iter_mut()).enumerate() {
            let Some(pgrad) = slot.take() else { continue };
            if !needs[k] {
                continue;
            }
            let pshape = inputs[k].shape();
            assert!(
                pgrad.shape() == pshape,
                "backward of node {i} ({}): gradient for input {k} has shape {} but the input has shape {}",
                node.op,
                pgrad.shape(),
                pshape
            );
            if self.check_finite.get() && !pgrad.all_finite() {
                non_finite_gradient(i, node.op, k, p, nodes[p].op);
            }
            accumulate(&mut grads[p], pgrad);
        }
    }
}

/// The check-finite panic of the forward pass: the next node of `graph`, made by `op`
/// from the nodes `parents`, has a non-finite value.
#[cold]
fn non_finite_value<T: Float>(
    graph: &Graph<T>,
    op: &str,
    value: &Tensor<T>,
    parents: &[usize],
) -> ! {
    let inputs: Vec<String> = parents
        .iter()
        .map(|&p| format!("node {p} ({})", graph.nodes[p].op))
        .collect();
    panic!(
        "check_finite: node {} ({op}) produced a non-finite value in forward \
         (shape {}, inputs: [{}])",
        graph.nodes.len(),
        value.shape(),
        inputs.join(", ")
    );
}

/// Appends `make()` to `v` and returns its index, building the element directly in
/// `v`'s buffer. `v.push(node)` builds a tape node in a stack temporary and copies it
/// over, reading back at 8 and 16 bytes fields just written a byte or 4 bytes at a
/// time, which stalls the CPU until the stores drain: writing in place takes the
/// forward of `chain10k` (10,000 scalar ops) from ~28 to ~23 ns per node (six
/// alternating runs of a chain probe, pinned).
#[inline(always)]
fn push_in_place<E>(v: &mut Vec<E>, make: impl FnOnce() -> E) -> usize {
    v.reserve(1);
    let id = v.len();
    v.spare_capacity_mut()[0].write(make());
    // SAFETY: `reserve` left room for element `id` (the first spare one), and it
    // was just initialised; if `make` panics, nothing was written and the length
    // is unchanged.
    unsafe { v.set_len(id + 1) };
    id
}

/// Puts a node's backward back when the graph sweep is done with it.
struct Restore<'t, T: Float> {
    tape: &'t Tape<T>,
    id: usize,
    backward: Option<Backward<T>>,
}

impl<T: Float> Drop for Restore<'_, T> {
    fn drop(&mut self) {
        if let Some(b) = self.backward.take()
            && let Ok(mut graph) = self.tape.graph.try_borrow_mut()
        {
            graph.nodes[self.id].backward = b;
        }
    }
}

/// The panic of an op whose backward has no graph form.
#[cold]
#[inline(never)]
fn not_twice_differentiable(id: usize, op: &str) -> ! {
    panic!(
        "grad_graph: node {id} ({op}) cannot be differentiated twice: its backward is \
         first-order only (a custom op recorded with Tape::record; use \
         Tape::record_differentiable to give it a backward made of Var ops)"
    )
}

/// The panic of a read of a released node's value.
#[cold]
#[inline(never)]
fn released(id: usize, op: &str) -> ! {
    panic!("node {id} ({op}) was released with Var::release: its value is gone")
}

/// The panic of an op recorded while the tape is being walked backward.
#[cold]
#[inline(never)]
fn recording_during_backward(op: &str) -> ! {
    panic!(
        "{op}: cannot record on a tape while backward() is running on it (a backward \
         closure of a custom op called a Var op or Tape::leaf/constant/record); compute \
         the closure's gradients with Tensor methods (map, zip_map, matmul, …) instead"
    )
}

/// The check-finite panic of the backward sweep.
#[cold]
fn non_finite_gradient(i: usize, op: &str, k: usize, p: usize, parent_op: &str) -> ! {
    panic!(
        "check_finite: node {i} ({op}) produced a non-finite gradient in backward for its input {k} (node {p}, {parent_op})"
    );
}

/// Adds `g` into a gradient slot (in place when the slot's storage is not shared).
#[inline(always)]
fn accumulate<T: Float>(slot: &mut Option<Tensor<T>>, g: Tensor<T>) {
    match slot {
        None => *slot = Some(g),
        Some(acc) => acc.add_assign_same_shape(g),
    }
}

/// A handle to a node on a [`Tape`]: an index plus a borrow of the tape. `Copy`, so
/// it can be used any number of times (gradients sum over every use).
///
/// ```
/// use tapegrad::{Tape, Tensor};
/// let tape = Tape::<f64>::new();
/// let x = tape.leaf(Tensor::scalar(3.0));
/// let y = x * x + x; // x used three times
/// assert_eq!(y.backward()[x].item(), 7.0); // 2x + 1
/// ```
pub struct Var<'t, T: Float = f32> {
    pub(crate) tape: &'t Tape<T>,
    pub(crate) id: usize,
}

impl<T: Float> Clone for Var<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: Float> Copy for Var<'_, T> {}

impl<T: Float> std::fmt::Debug for Var<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let graph = self.tape.graph();
        let n = &graph.nodes[self.id];
        write!(f, "Var(#{} {} {})", self.id, n.op, n.value.shape())
    }
}

/// Options for [`Var::backward_with_options`].
///
/// ```
/// use tapegrad::{BackwardOptions, Tape, Tensor};
/// let tape = Tape::<f32>::new();
/// let x = tape.leaf(Tensor::ones([3]));
/// let h = x.exp();
/// let loss = h.sum();
/// let g = loss.backward_with_options(BackwardOptions { keep_intermediate: false, ..Default::default() });
/// assert!(g.get(x).is_some());
/// assert!(g.get(h).is_none()); // intermediate gradients were dropped as soon as used
/// ```
#[derive(Clone, Debug)]
pub struct BackwardOptions<T: Float> {
    /// The upstream gradient ∂L/∂output (a vector-Jacobian product); `None` means 1 for a scalar output.
    pub seed: Option<Tensor<T>>,
    /// Keep every node's gradient (the default) or only the leaves', to save memory.
    pub keep_intermediate: bool,
}

impl<T: Float> Default for BackwardOptions<T> {
    fn default() -> Self {
        BackwardOptions {
            seed: None,
            keep_intermediate: true,
        }
    }
}

impl<'t, T: Float> Var<'t, T> {
    /// The node's index on its tape.
    ///
    /// ```
    /// let tape = tapegrad::Tape::<f32>::new();
    /// assert_eq!(tape.leaf(tapegrad::Tensor::scalar(1.0)).id(), 0);
    /// ```
    pub fn id(self) -> usize {
        self.id
    }

    /// The tape this node lives on.
    ///
    /// ```
    /// let tape = tapegrad::Tape::<f32>::new();
    /// let x = tape.leaf(tapegrad::Tensor::scalar(1.0));
    /// assert!(std::ptr::eq(x.tape(), &tape));
    /// ```
    pub fn tape(self) -> &'t Tape<T> {
        self.tape
    }

    /// The node's value (shares storage with the tape's copy).
    ///
    /// ```
    /// let tape = tapegrad::Tape::<f32>::new();
    /// let x = tape.leaf(tapegrad::Tensor::scalar(2.0));
    /// assert_eq!((x * 3.0).value().item(), 6.0);
    /// ```
    pub fn value(self) -> Tensor<T> {
        self.tape.value_of(self.id)
    }

    /// The node's shape.
    ///
    /// ```
    /// let tape = tapegrad::Tape::<f32>::new();
    /// assert_eq!(&tape.leaf(tapegrad::Tensor::zeros([2, 5])).shape()[..], &[2, 5]);
    /// ```
    pub fn shape(self) -> Shape {
        self.tape.graph().value(self.id).shape().clone()
    }

    /// Gives the node's value back (its buffer goes back to the allocator now,
    /// not to tapegrad's buffer pool, and not when the tape is dropped; a
    /// buffer shared with another node lives on with it), for inference on a [`Tape::no_grad`]
    /// tape, where no backward pass will need it. Reading the value afterwards
    /// (directly or through an op) panics naming the node. Releasing twice is
    /// harmless.
    ///
    /// Panics on a tape that records gradients: there every value may be
    /// needed by `backward()`.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::no_grad();
    /// let h = tape.leaf(Tensor::ones([1000])) * 2.0;
    /// let s = h.sum();
    /// h.release();
    /// assert_eq!(s.value().item(), 2000.0);
    /// ```
    pub fn release(self) {
        assert!(
            !self.tape.grad_enabled,
            "release: node {} ({}) is on a tape that records gradients, and backward() may \
             need its value; release values on a Tape::no_grad() tape",
            self.id,
            self.op()
        );
        let mut graph = self.tape.graph_mut("release");
        let node = &mut graph.nodes[self.id];
        node.kind = Kind::Released;
        let value = std::mem::replace(&mut node.value, Tensor::scalar(T::ZERO));
        drop(graph);
        crate::buffer::drop_unpooled(value);
    }

    /// The op that produced this node (`"leaf"`, `"constant"`, `"matmul"`, …).
    ///
    /// ```
    /// let tape = tapegrad::Tape::<f32>::new();
    /// let x = tape.leaf(tapegrad::Tensor::scalar(2.0));
    /// assert_eq!(x.exp().op(), "exp");
    /// ```
    pub fn op(self) -> &'static str {
        self.tape.graph().nodes[self.id].op
    }

    /// Whether gradients flow to this node (it is a leaf or depends on one).
    ///
    /// ```
    /// let tape = tapegrad::Tape::<f32>::new();
    /// let x = tape.leaf(tapegrad::Tensor::scalar(2.0));
    /// assert!(x.exp().requires_grad());
    /// assert!(!x.detach().requires_grad());
    /// ```
    pub fn requires_grad(self) -> bool {
        self.tape.graph().nodes[self.id].requires_grad
    }

    /// The same value as a constant: gradients stop here.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::scalar(3.0));
    /// let y = x * x.detach(); // d/dx = x (the detached factor is a constant)
    /// assert_eq!(y.backward()[x].item(), 3.0);
    /// ```
    pub fn detach(self) -> Var<'t, T> {
        self.tape.constant(self.value())
    }

    /// Backpropagates from this scalar node: the gradient of every node with
    /// respect to it. Each call computes fresh gradients from scratch (nothing
    /// accumulates across calls), so calling it twice gives the same result.
    /// Panics if the node is not a one-element tensor; use [`backward_with`](Var::backward_with) then.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![1.0, 2.0], [2]).unwrap());
    /// let h = x * 2.0;
    /// let loss = h.sum();
    /// let g = loss.backward();
    /// assert_eq!(g[h].data(), &[1.0, 1.0]); // intermediate gradients are kept
    /// assert_eq!(g[x].data(), &[2.0, 2.0]);
    /// assert_eq!(loss.backward()[x].data(), g[x].data()); // idempotent
    /// ```
    pub fn backward(self) -> Gradients<T> {
        self.backward_with_options(BackwardOptions::default())
    }

    /// Backpropagates an explicit upstream gradient `seed` (same shape as this node):
    /// computes the vector-Jacobian product seedᵀ·J for every node.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![1.0, 2.0], [2]).unwrap());
    /// let y = x * x;
    /// let g = y.backward_with(Tensor::from_vec(vec![1.0, 10.0], [2]).unwrap());
    /// assert_eq!(g[x].data(), &[2.0, 40.0]);
    /// ```
    pub fn backward_with(self, seed: Tensor<T>) -> Gradients<T> {
        self.backward_with_options(BackwardOptions {
            seed: Some(seed),
            keep_intermediate: true,
        })
    }

    /// The gradients of this scalar node with respect to `wrt`, as nodes on
    /// the same tape (PyTorch's `torch.autograd.grad(y, wrt, create_graph=True)`,
    /// JAX's `grad`): ordinary `Var`s that every op applies to and that can be
    /// differentiated again, to any order — for Hessian-vector products,
    /// gradient penalties, or derivatives of a network's output with respect
    /// to its input inside a loss. A node the output does not depend on gets
    /// a zero gradient. Panics if the node is not a one-element tensor, or if
    /// the graph holds an op whose backward is first-order only (naming it).
    ///
    /// The ordinary `backward()` is unaffected: it stays the fast path.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![1.0, 2.0], [2]).unwrap());
    /// let y = (x * x * x).sum();                 // y = Σ x³
    /// let g = y.grad_graph(&[x])[0];             // 3x², a Var
    /// assert_eq!(g.value().data(), &[3.0, 12.0]);
    /// let v = tape.constant(Tensor::from_vec(vec![1.0, 0.0], [2]).unwrap());
    /// let hv = (g * v).sum().backward()[x].clone(); // Hessian-vector product: diag(6x)·v
    /// assert_eq!(hv.data(), &[6.0, 0.0]);
    /// ```
    pub fn grad_graph(self, wrt: &[Var<'t, T>]) -> Vec<Var<'t, T>> {
        let shape = self.shape();
        assert!(
            shape.numel() == 1,
            "grad_graph: node {} ({}) has shape {shape}, not a scalar; use grad_graph_with(seed, wrt)",
            self.id,
            self.op()
        );
        let seed = self.tape.constant(Tensor::full(shape, T::ONE));
        self.grad_graph_with(seed, wrt)
    }

    /// [`grad_graph`](Var::grad_graph) with an explicit upstream gradient
    /// `seed` (a `Var` of this node's shape, itself differentiable): the
    /// vector-Jacobian product seedᵀ·J as nodes.
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf(Tensor::from_vec(vec![1.0, 2.0], [2]).unwrap());
    /// let v = tape.leaf(Tensor::from_vec(vec![1.0, 10.0], [2]).unwrap());
    /// let g = (x * x).grad_graph_with(v, &[x])[0]; // 2x·v
    /// assert_eq!(g.value().data(), &[2.0, 40.0]);
    /// ```
    pub fn grad_graph_with(self, seed: Var<'t, T>, wrt: &[Var<'t, T>]) -> Vec<Var<'t, T>> {
        assert!(
            self.tape.grad_enabled,
            "grad_graph: node {} ({}) is on a Tape::no_grad() tape, which records no gradients",
            self.id,
            self.op()
        );
        for (k, w) in wrt.iter().enumerate() {
            assert!(
                std::ptr::eq(w.tape, self.tape),
                "grad_graph: wrt[{k}] (node {}) belongs to another tape",
                w.id
            );
        }
        let grads = self.tape.backward_graph_from(self.id, seed, None);
        wrt.iter()
            .map(|&w| match grads.get(w.id).copied().flatten() {
                Some(g) => g,
                None => self.tape.constant(Tensor::zeros(w.shape())),
            })
            .collect()
    }

    /// The graph gradients of an op from a composite of its inputs: `self` is
    /// the op's value rebuilt from `inputs` with twice-differentiable ops, and
    /// `seed` the op's output gradient. Only the composite's own nodes are
    /// walked (it stops at `inputs`), and inputs that need no gradient get `None`.
    pub(crate) fn composite_grads(
        self,
        seed: Var<'t, T>,
        inputs: &[Var<'t, T>],
        needs: &[bool],
    ) -> GraphGrads<'t, T> {
        let ids: SmallVec<[usize; 4]> = inputs.iter().map(|v| v.id).collect();
        let grads = self.tape.backward_graph_from(self.id, seed, Some(&ids));
        inputs
            .iter()
            .zip(needs)
            .map(|(v, &need)| {
                need.then(|| match grads.get(v.id).copied().flatten() {
                    Some(g) => g,
                    None => self.tape.constant(Tensor::zeros(v.shape())),
                })
            })
            .collect()
    }

    /// Backpropagates with explicit [`BackwardOptions`].
    ///
    /// ```
    /// use tapegrad::{BackwardOptions, Tape, Tensor};
    /// let tape = Tape::<f32>::new();
    /// let x = tape.leaf(Tensor::ones([2]));
    /// let g = x.sum().backward_with_options(BackwardOptions::default());
    /// assert_eq!(g[x].data(), &[1.0, 1.0]);
    /// ```
    pub fn backward_with_options(self, opts: BackwardOptions<T>) -> Gradients<T> {
        assert!(
            self.tape.grad_enabled,
            "backward: node {} ({}) is on a Tape::no_grad() tape, which records no gradients",
            self.id,
            self.op()
        );
        let seed = match opts.seed {
            Some(s) => s,
            None => {
                let shape = self.shape();
                assert!(
                    shape.numel() == 1,
                    "backward: node {} ({}) has shape {shape}, not a scalar; use backward_with(seed) \
                     for a vector-Jacobian product",
                    self.id,
                    self.op()
                );
                Tensor::full(shape, T::ONE)
            }
        };
        self.tape
            .backward_from(self.id, seed, opts.keep_intermediate)
    }
}

/// The gradients computed by one backward pass, indexed by [`Var`].
///
/// Indexing panics (naming the node) if the node got no gradient: it does not
/// require grad, it is not an ancestor of the output, or only leaf gradients were kept.
/// [`get`](Gradients::get) returns an `Option` instead. Indexing, `get` and `take`
/// with a `Var` of another tape (or of this tape before [`Tape::clear`]) panic
/// naming the mismatch: gradients are tied to the tape that computed them.
///
/// ```
/// use tapegrad::{Tape, Tensor};
/// let tape = Tape::<f32>::new();
/// let x = tape.leaf(Tensor::ones([2]));
/// let c = tape.constant(Tensor::ones([2]));
/// let g = (x * c).sum().backward();
/// assert!(g.get(x).is_some());
/// assert!(g.get(c).is_none());
/// ```
pub struct Gradients<T: Float = f32> {
    grads: Vec<Option<Tensor<T>>>,
    /// The tape (and its generation) the gradients were computed on.
    tape: TapeId,
    /// The parameter stores bound to that tape when they were computed.
    bindings: Vec<Binding>,
}

impl<T: Float> Gradients<T> {
    /// The gradient of `var`, if it got one.
    ///
    /// ```
    /// let tape = tapegrad::Tape::<f32>::new();
    /// let x = tape.leaf(tapegrad::Tensor::scalar(1.0));
    /// assert_eq!(x.exp().backward().get(x).unwrap().item(), 1.0f32.exp());
    /// ```
    pub fn get(&self, var: Var<'_, T>) -> Option<&Tensor<T>> {
        self.check_tape(var, "get");
        self.by_id(var.id)
    }

    /// Panics if `var` is not a node of the tape (as it was) that computed these gradients.
    #[inline]
    fn check_tape(&self, var: Var<'_, T>, what: &str) {
        if var.tape.identity != self.tape {
            foreign_var(var.id, what);
        }
    }

    /// Whether these gradients were computed on `tape` as it is now (not
    /// before a [`clear`](Tape::clear)).
    ///
    /// ```
    /// use tapegrad::{Tape, Tensor};
    /// let (a, b) = (Tape::<f32>::new(), Tape::<f32>::new());
    /// let g = a.leaf(Tensor::scalar(1.0)).backward();
    /// assert!(g.belongs_to(&a) && !g.belongs_to(&b));
    /// ```
    pub fn belongs_to(&self, tape: &Tape<T>) -> bool {
        tape.identity == self.tape
    }

    /// The gradient of node `id`, if it got one.
    ///
    /// ```
    /// let tape = tapegrad::Tape::<f32>::new();
    /// let x = tape.leaf(tapegrad::Tensor::scalar(1.0));
    /// assert!(x.exp().backward().by_id(x.id()).is_some());
    /// ```
    pub fn by_id(&self, id: usize) -> Option<&Tensor<T>> {
        self.grads.get(id).and_then(|g| g.as_ref())
    }

    /// The nodes of each binding of parameter store `store` to the tape these
    /// gradients were computed on (one slice per binding, in parameter order).
    pub(crate) fn bound_leaves(&self, store: u64) -> impl Iterator<Item = &[usize]> {
        self.bindings
            .iter()
            .filter(move |b| b.store == store)
            .map(|b| b.leaves.as_slice())
    }

    /// Removes and returns the gradient of `var` (no copy), e.g. to hand it to an optimizer.
    ///
    /// ```
    /// let tape = tapegrad::Tape::<f32>::new();
    /// let x = tape.leaf(tapegrad::Tensor::scalar(1.0));
    /// let mut g = (x * 2.0).backward();
    /// assert_eq!(g.take(x).unwrap().item(), 2.0);
    /// assert!(g.get(x).is_none());
    /// ```
    pub fn take(&mut self, var: Var<'_, T>) -> Option<Tensor<T>> {
        self.check_tape(var, "take");
        self.grads.get_mut(var.id).and_then(|g| g.take())
    }
}

/// The panic of a [`Gradients`] lookup with a `Var` of another tape.
#[cold]
#[inline(never)]
fn foreign_var(id: usize, what: &str) -> ! {
    panic!(
        "gradients: {what}: node {id} belongs to another tape (or to this tape before \
         it was cleared) than the one these gradients were computed on"
    )
}

impl<T: Float> std::ops::Index<Var<'_, T>> for Gradients<T> {
    type Output = Tensor<T>;
    fn index(&self, var: Var<'_, T>) -> &Tensor<T> {
        self.get(var).unwrap_or_else(|| {
            panic!(
                "gradients: node {} ({}) has no gradient (it does not require grad, is not an \
                 ancestor of the output, or only leaf gradients were kept)",
                var.id,
                var.op()
            )
        })
    }
}

/// The gradient of a single-input op. (Built with `push`: the `smallvec!` macro
/// goes through a heap `Vec`, an allocation per node on scalar chains.)
#[inline]
pub(crate) fn one<T: Float>(g: Tensor<T>) -> ParentGrads<T> {
    let mut v = SmallVec::new();
    v.push(Some(g));
    v
}

/// The gradients of a two-input op (`None` where a parent needs none).
#[inline]
pub(crate) fn two<T: Float>(a: Option<Tensor<T>>, b: Option<Tensor<T>>) -> ParentGrads<T> {
    let mut v = SmallVec::new();
    v.push(a);
    v.push(b);
    v
}

#[cfg(test)]
mod tests {
    use super::push_in_place;

    /// `push_in_place` appends at every capacity (growing the buffer when
    /// full), returns the index, and leaves the vector as it was when the
    /// element's constructor panics.
    #[test]
    fn push_in_place_appends_and_survives_a_panicking_constructor() {
        let mut v: Vec<String> = Vec::new();
        for i in 0..100 {
            let full = v.len() == v.capacity();
            assert_eq!(push_in_place(&mut v, || i.to_string()), i);
            assert!(!full || v.capacity() > i);
        }
        assert!(v.iter().enumerate().all(|(i, s)| *s == i.to_string()));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            push_in_place(&mut v, || -> String {
                std::panic::resume_unwind(Box::new("no"))
            })
        }));
        assert!(caught.is_err());
        assert_eq!(v.len(), 100);
        assert_eq!(push_in_place(&mut v, || "last".into()), 100);
        assert_eq!(v[100], "last");
    }
}
