//! Named parameters that live outside the tape, and their binding to a tape.

use crate::{Error, Float, Gradients, Result, Tape, Tensor, Var};
use std::ops::Index;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The index of a parameter in a [`Params`] store.
///
/// ```
/// let mut p = tapegrad::nn::Params::<f32>::new();
/// let id: tapegrad::nn::ParamId = p.add("w", tapegrad::Tensor::zeros([1]));
/// assert_eq!(p.id("w"), Some(id));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId {
    /// The store that issued it (a clone of a store shares its identity).
    store: StoreId,
    /// Its position in the store.
    index: usize,
}

/// A process-wide unique identity of a [`Params`] store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct StoreId(u64);

impl StoreId {
    fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        StoreId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// The panic of a [`ParamId`] used on a store that did not issue it.
#[cold]
#[inline(never)]
fn foreign_id(what: &str, id: ParamId) -> ! {
    panic!(
        "{what}: parameter #{} was registered in another Params store (ids are only \
         valid on the store that returned them, its clones, and their bindings and gradients)",
        id.index
    )
}

/// A model's parameters: named tensors (`"conv1.weight"`, …) in registration order.
///
/// Layers register their tensors here and keep the returned [`ParamId`]s. Each
/// training step binds the store to a fresh tape with [`bind`](Params::bind)
/// (the tensors are shared, not copied), runs forward and backward, and hands
/// the gradients to an optimizer.
///
/// ```
/// use tapegrad::nn::Params;
/// use tapegrad::{Tape, Tensor};
/// let mut params = Params::<f32>::new();
/// let w = params.add("w", Tensor::ones([2]));
/// let tape = Tape::new();
/// let bound = params.bind(&tape);
/// let loss = (bound[w] * 3.0).sum();
/// let grads = bound.grads(loss.backward());
/// assert_eq!(grads[w].data(), &[3.0, 3.0]);
/// ```
#[derive(Clone)]
pub struct Params<T: Float = f32> {
    names: Vec<String>,
    values: Vec<Tensor<T>>,
    store: StoreId,
}

impl<T: Float> Default for Params<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Float> Params<T> {
    /// An empty store.
    ///
    /// ```
    /// assert!(tapegrad::nn::Params::<f32>::new().is_empty());
    /// ```
    pub fn new() -> Self {
        Params {
            names: Vec::new(),
            values: Vec::new(),
            store: StoreId::fresh(),
        }
    }

    /// Registers a tensor under `name`; panics if the name is taken.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::<f32>::new();
    /// let id = p.add("bias", tapegrad::Tensor::zeros([3]));
    /// assert_eq!(p.name(id), "bias");
    /// ```
    pub fn add(&mut self, name: impl Into<String>, value: Tensor<T>) -> ParamId {
        let name = name.into();
        assert!(
            self.id(&name).is_none(),
            "params: a parameter named `{name}` already exists"
        );
        self.names.push(name);
        self.values.push(value);
        self.param_id(self.values.len() - 1)
    }

    /// Number of parameter tensors.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::<f32>::new();
    /// p.add("a", tapegrad::Tensor::zeros([3]));
    /// assert_eq!(p.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the store is empty.
    ///
    /// ```
    /// assert!(tapegrad::nn::Params::<f64>::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Total number of scalar parameters.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::<f32>::new();
    /// p.add("a", tapegrad::Tensor::zeros([3, 4]));
    /// p.add("b", tapegrad::Tensor::zeros([4]));
    /// assert_eq!(p.num_elements(), 16);
    /// ```
    pub fn num_elements(&self) -> usize {
        self.values.iter().map(Tensor::numel).sum()
    }

    /// The id of the parameter called `name`.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::<f32>::new();
    /// let id = p.add("a", tapegrad::Tensor::zeros([1]));
    /// assert_eq!(p.id("a"), Some(id));
    /// assert_eq!(p.id("b"), None);
    /// ```
    pub fn id(&self, name: &str) -> Option<ParamId> {
        let i = self.names.iter().position(|n| n == name)?;
        Some(self.param_id(i))
    }

    /// The id of the parameter at `index`.
    fn param_id(&self, index: usize) -> ParamId {
        ParamId {
            store: self.store,
            index,
        }
    }

    /// The position of `id` in this store; panics (naming `what`) if another store issued it.
    #[inline]
    fn index_of(&self, id: ParamId, what: &str) -> usize {
        if id.store != self.store {
            foreign_id(what, id);
        }
        id.index
    }

    /// The name of a parameter.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::<f32>::new();
    /// let id = p.add("fc.weight", tapegrad::Tensor::zeros([1]));
    /// assert_eq!(p.name(id), "fc.weight");
    /// ```
    pub fn name(&self, id: ParamId) -> &str {
        &self.names[self.index_of(id, "params.name")]
    }

    /// The current value of a parameter.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::<f32>::new();
    /// let id = p.add("a", tapegrad::Tensor::ones([2]));
    /// assert_eq!(p.get(id).data(), &[1.0, 1.0]);
    /// ```
    pub fn get(&self, id: ParamId) -> &Tensor<T> {
        &self.values[self.index_of(id, "params.get")]
    }

    /// Mutable access to a parameter (used by optimizers; copy-on-write if a tape still shares it).
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::<f32>::new();
    /// let id = p.add("a", tapegrad::Tensor::ones([2]));
    /// p.get_mut(id).data_mut()[0] = 5.0;
    /// assert_eq!(p.get(id).data(), &[5.0, 1.0]);
    /// ```
    pub fn get_mut(&mut self, id: ParamId) -> &mut Tensor<T> {
        let i = self.index_of(id, "params.get_mut");
        &mut self.values[i]
    }

    /// Replaces a parameter's value; panics naming it if the shape differs.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::<f32>::new();
    /// let id = p.add("a", tapegrad::Tensor::ones([2]));
    /// p.set(id, tapegrad::Tensor::zeros([2]));
    /// assert_eq!(p.get(id).data(), &[0.0, 0.0]);
    /// ```
    pub fn set(&mut self, id: ParamId, value: Tensor<T>) {
        let i = self.index_of(id, "params.set");
        assert!(
            value.shape() == self.values[i].shape(),
            "params: `{}` has shape {}, cannot set a value of shape {}",
            self.names[i],
            self.values[i].shape(),
            value.shape()
        );
        self.values[i] = value;
    }

    /// `(id, name, value)` for every parameter, in registration order.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::<f32>::new();
    /// p.add("a", tapegrad::Tensor::ones([2]));
    /// let names: Vec<&str> = p.iter().map(|(_, n, _)| n).collect();
    /// assert_eq!(names, ["a"]);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &str, &Tensor<T>)> {
        self.names
            .iter()
            .zip(&self.values)
            .enumerate()
            .map(|(i, (n, v))| (self.param_id(i), n.as_str(), v))
    }

    /// Saves every parameter, by name, in the safetensors format (opens in PyTorch with
    /// `safetensors.torch.load_file`, or in candle).
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::<f32>::new();
    /// p.add("fc.weight", tapegrad::Tensor::ones([2, 3]));
    /// let path = std::env::temp_dir().join("tapegrad_params_save_doc.safetensors");
    /// p.save(&path).unwrap();
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let named: Vec<(&str, &Tensor<T>)> = self
            .names
            .iter()
            .map(String::as_str)
            .zip(&self.values)
            .collect();
        crate::io::save_safetensors(path, &named)
    }

    /// Loads values saved by [`save`](Params::save) (or by PyTorch) into this model's
    /// parameters. Every parameter must be in the file with the same shape, and the
    /// file must hold nothing else; otherwise an [`Error::Parameter`] names the
    /// offending parameter and nothing is changed.
    ///
    /// ```
    /// use tapegrad::{nn::Params, Tensor};
    /// let path = std::env::temp_dir().join("tapegrad_params_load_doc.safetensors");
    /// let mut a = Params::<f32>::new();
    /// a.add("w", Tensor::full([2], 7.0));
    /// a.save(&path).unwrap();
    /// let mut b = Params::<f32>::new();
    /// let w = b.add("w", Tensor::zeros([2]));
    /// b.load(&path).unwrap();
    /// assert_eq!(b.get(w).data(), &[7.0, 7.0]);
    /// let mut c = Params::<f32>::new();
    /// c.add("w", Tensor::zeros([3]));
    /// assert!(c.load(&path).unwrap_err().to_string().contains("`w`"));
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let loaded = crate::io::load_safetensors::<T>(path)?;
        self.assign(loaded)
    }

    /// Replaces every parameter with the named tensors given (checked as in [`load`](Params::load)).
    ///
    /// ```
    /// use tapegrad::{nn::Params, Tensor};
    /// let mut p = Params::<f32>::new();
    /// p.add("w", Tensor::zeros([1]));
    /// let err = p.assign(vec![("v".to_string(), Tensor::zeros([1]))]).unwrap_err();
    /// assert_eq!(err.to_string(), "parameter `v`: is in the file but not in the model (model has: w)");
    /// ```
    pub fn assign(&mut self, named: Vec<(String, Tensor<T>)>) -> Result<()> {
        let mut slots: Vec<Option<Tensor<T>>> = vec![None; self.len()];
        for (name, t) in named {
            let Some(id) = self.id(&name) else {
                return Err(Error::Parameter {
                    name,
                    message: format!(
                        "is in the file but not in the model (model has: {})",
                        self.names.join(", ")
                    ),
                });
            };
            let want = self.values[id.index].shape();
            if t.shape() != want {
                return Err(Error::Parameter {
                    name,
                    message: format!(
                        "has shape {} in the file but {} in the model",
                        t.shape(),
                        want
                    ),
                });
            }
            slots[id.index] = Some(t);
        }
        if let Some(i) = slots.iter().position(Option::is_none) {
            return Err(Error::Parameter {
                name: self.names[i].clone(),
                message: "is missing from the file".into(),
            });
        }
        self.values = slots
            .into_iter()
            .map(|t| t.expect("checked above"))
            .collect();
        Ok(())
    }

    /// Records every parameter on `tape` as a leaf (sharing storage, no copy).
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::<f32>::new();
    /// let id = p.add("a", tapegrad::Tensor::ones([2]));
    /// let tape = tapegrad::Tape::new();
    /// let b = p.bind(&tape);
    /// assert!(b[id].value().shares_storage(p.get(id)));
    /// ```
    pub fn bind<'t>(&self, tape: &'t Tape<T>) -> Bound<'t, T> {
        Bound {
            vars: self.values.iter().map(|v| tape.leaf(v.clone())).collect(),
            store: self.store,
        }
    }

    /// Records every parameter on `tape` as a constant (evaluation: no gradients, no closures kept).
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::<f32>::new();
    /// let id = p.add("a", tapegrad::Tensor::ones([2]));
    /// let tape = tapegrad::Tape::new();
    /// assert!(!p.bind_frozen(&tape)[id].requires_grad());
    /// ```
    pub fn bind_frozen<'t>(&self, tape: &'t Tape<T>) -> Bound<'t, T> {
        Bound {
            vars: self
                .values
                .iter()
                .map(|v| tape.constant(v.clone()))
                .collect(),
            store: self.store,
        }
    }
}

/// A [`Params`] store bound to one tape: the [`Var`] of each parameter, indexed by [`ParamId`].
///
/// ```
/// let mut p = tapegrad::nn::Params::<f32>::new();
/// let w = p.add("w", tapegrad::Tensor::ones([3]));
/// let tape = tapegrad::Tape::new();
/// let bound = p.bind(&tape);
/// assert_eq!(bound[w].op(), "leaf");
/// ```
pub struct Bound<'t, T: Float = f32> {
    vars: Vec<Var<'t, T>>,
    store: StoreId,
}

impl<'t, T: Float> Bound<'t, T> {
    /// Extracts the parameters' gradients (moving them, no copy) from a backward pass.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::<f32>::new();
    /// let id = p.add("a", tapegrad::Tensor::ones([2]));
    /// let tape = tapegrad::Tape::new();
    /// let b = p.bind(&tape);
    /// let g = b.grads(b[id].sum().backward());
    /// assert_eq!(g[id].data(), &[1.0, 1.0]);
    /// ```
    ///
    /// Panics if `grads` were computed on another tape than the one this store
    /// was bound to.
    pub fn grads(&self, mut grads: Gradients<T>) -> ParamGrads<T> {
        if let Some(&v) = self.vars.first() {
            assert!(
                grads.belongs_to(v.tape()),
                "bound.grads: the gradients were computed on another tape than the one \
                 these parameters are bound to (call backward() on a loss built from this binding)"
            );
        }
        ParamGrads {
            grads: self.vars.iter().map(|&v| grads.take(v)).collect(),
            store: self.store,
        }
    }
}

impl<'t, T: Float> Index<ParamId> for Bound<'t, T> {
    type Output = Var<'t, T>;
    fn index(&self, id: ParamId) -> &Var<'t, T> {
        if id.store != self.store {
            foreign_id("bound[id]", id);
        }
        &self.vars[id.index]
    }
}

/// The gradient of each parameter after a backward pass (`None`: the loss did not depend on it).
///
/// ```
/// let mut p = tapegrad::nn::Params::<f32>::new();
/// let w = p.add("w", tapegrad::Tensor::ones([3]));
/// let tape = tapegrad::Tape::new();
/// let bound = p.bind(&tape);
/// let grads: tapegrad::nn::ParamGrads = bound.grads((bound[w] * 2.0).sum().backward());
/// assert_eq!(grads[w].data(), &[2.0; 3]);
/// ```
pub struct ParamGrads<T: Float = f32> {
    grads: Vec<Option<Tensor<T>>>,
    store: StoreId,
}

impl<T: Float> ParamGrads<T> {
    /// Gradients in parameter order.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::<f32>::new();
    /// p.add("a", tapegrad::Tensor::ones([2]));
    /// let tape = tapegrad::Tape::new();
    /// let b = p.bind(&tape);
    /// let unused = tape.leaf(tapegrad::Tensor::scalar(1.0));
    /// let g = b.grads(unused.backward());
    /// assert!(g.as_slice()[0].is_none());
    /// ```
    pub fn as_slice(&self) -> &[Option<Tensor<T>>] {
        &self.grads
    }

    /// Whether these are gradients of `params`' parameters (taken from one of
    /// its bindings, or a clone's).
    ///
    /// ```
    /// use tapegrad::{nn::Params, Tape, Tensor};
    /// let mut p = Params::<f32>::new();
    /// let w = p.add("w", Tensor::ones([1]));
    /// let tape = Tape::new();
    /// let b = p.bind(&tape);
    /// let g = b.grads(b[w].sum().backward());
    /// assert!(g.belongs_to(&p) && !g.belongs_to(&Params::new()));
    /// ```
    pub fn belongs_to(&self, params: &Params<T>) -> bool {
        self.store == params.store
    }

    /// The global L2 norm of all gradients (for monitoring or clipping).
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::<f32>::new();
    /// let id = p.add("a", tapegrad::Tensor::ones([4]));
    /// let tape = tapegrad::Tape::new();
    /// let b = p.bind(&tape);
    /// assert_eq!(b.grads(b[id].sum().backward()).norm(), 2.0);
    /// ```
    pub fn norm(&self) -> f64 {
        self.grads
            .iter()
            .flatten()
            .map(|g| g.norm().powi(2))
            .sum::<f64>()
            .sqrt()
    }
}

impl<T: Float> ParamGrads<T> {
    /// The gradient of one parameter, if the loss depended on it.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::<f32>::new();
    /// let (a, b) = (p.add("a", tapegrad::Tensor::ones([1])), p.add("b", tapegrad::Tensor::ones([1])));
    /// let tape = tapegrad::Tape::new();
    /// let bound = p.bind(&tape);
    /// let g = bound.grads(bound[a].sum().backward());
    /// assert!(g.get(a).is_some() && g.get(b).is_none());
    /// ```
    pub fn get(&self, id: ParamId) -> Option<&Tensor<T>> {
        if id.store != self.store {
            foreign_id("param grads", id);
        }
        self.grads[id.index].as_ref()
    }
}

/// Indexing panics if the parameter got no gradient (the loss did not depend on it);
/// use [`ParamGrads::get`] for an `Option`.
impl<T: Float> Index<ParamId> for ParamGrads<T> {
    type Output = Tensor<T>;
    fn index(&self, id: ParamId) -> &Tensor<T> {
        self.get(id).unwrap_or_else(|| {
            panic!(
                "param grads: parameter #{} got no gradient (the loss does not depend on it)",
                id.index
            )
        })
    }
}

impl<T: Float> ParamGrads<T> {
    /// Gradients in parameter order, mutably (for in-place clipping).
    pub(crate) fn as_mut_slice(&mut self) -> &mut [Option<Tensor<T>>] {
        &mut self.grads
    }
}
