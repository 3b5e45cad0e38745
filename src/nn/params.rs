//! Named parameters that live outside the tape, and their binding to a tape.

use crate::{Error, Float, Gradients, Result, Tape, Tensor, Var};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::borrow::Cow;
use std::ops::Index;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The index of a parameter in a [`Params`] store.
///
/// ```
/// let mut p = tapegrad::nn::Params::new();
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

/// The index of a buffer (a tensor saved with the model but not trained, such
/// as batch norm's running statistics) in a [`Params`] store.
///
/// ```
/// let mut p = tapegrad::nn::Params::new();
/// let id: tapegrad::nn::BufferId = p.add_buffer("bn.running_mean", tapegrad::Tensor::zeros([4]));
/// assert_eq!(p.buffer(id).data(), &[0.0; 4]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufferId {
    store: StoreId,
    index: usize,
}

/// Whether a model runs in training or in evaluation mode: chosen when its
/// parameters are bound to a tape ([`Params::bind`] trains,
/// [`Params::bind_eval`] evaluates) and read by the layers that behave
/// differently (dropout is the identity and batch norm uses its running
/// statistics in evaluation). PyTorch's `model.train()` / `model.eval()`.
///
/// ```
/// use tapegrad::nn::{Mode, Params};
/// let params = Params::new();
/// let tape = tapegrad::Tape::new();
/// assert_eq!(params.bind(&tape).mode(), Mode::Train);
/// assert_eq!(params.bind_eval(&tape).mode(), Mode::Eval);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Training: batch statistics, dropout active, running statistics updated.
    Train,
    /// Evaluation: running statistics, dropout off, nothing updated.
    Eval,
}

/// A buffer's value, shared by the store and its bindings (a training-mode
/// forward pass updates it through the binding).
type Shared<T> = Arc<Mutex<Tensor<T>>>;

/// How a buffer is stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BufferKind {
    /// In the store's float type.
    Float,
    /// A count (PyTorch's `num_batches_tracked`), stored as `I64`.
    Count,
}

/// A named buffer.
struct Buffer<T: Float> {
    name: String,
    value: Shared<T>,
    kind: BufferKind,
}

impl<T: Float> Clone for Buffer<T> {
    /// A deep copy: the clone's buffer is its own.
    fn clone(&self) -> Self {
        Buffer {
            name: self.name.clone(),
            value: Arc::new(Mutex::new(lock(&self.value).clone())),
            kind: self.kind,
        }
    }
}

/// Locks a buffer (a panic while it was held cannot leave it half-written:
/// buffers are replaced whole).
fn lock<T: Float>(m: &Mutex<Tensor<T>>) -> std::sync::MutexGuard<'_, Tensor<T>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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

/// Replaces a shared buffer's value, keeping its shape.
fn set_shared<T: Float>(name: &str, slot: &Mutex<Tensor<T>>, value: Tensor<T>) {
    let mut cur = lock(slot);
    assert!(
        value.shape() == cur.shape(),
        "params: buffer `{name}` has shape {}, cannot set a value of shape {}",
        cur.shape(),
        value.shape()
    );
    *cur = value;
}

/// The panic of a [`BufferId`] used on a store that did not issue it.
#[cold]
#[inline(never)]
fn foreign_buffer(what: &str, id: BufferId) -> ! {
    panic!(
        "{what}: buffer #{} was registered in another Params store",
        id.index
    )
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
/// let mut params = Params::new();
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
    buffers: Vec<Buffer<T>>,
    store: StoreId,
    /// The seed the layers' short constructors initialise from, and how many
    /// generators [`init_rng`](Params::init_rng) has handed out since.
    init_seed: u64,
    init_draws: u64,
}

/// The seed of a new store's initialisation generator.
const DEFAULT_SEED: u64 = 0;

impl<T: Float> Default for Params<T> {
    /// An empty store of any float type (`Params::<f64>::default()`);
    /// [`Params::new`] is the `f32` one.
    ///
    /// ```
    /// let p = tapegrad::nn::Params::<f64>::default();
    /// assert!(p.is_empty());
    /// ```
    fn default() -> Self {
        Params {
            names: Vec::new(),
            values: Vec::new(),
            buffers: Vec::new(),
            store: StoreId::fresh(),
            init_seed: DEFAULT_SEED,
            init_draws: 0,
        }
    }
}

impl Params<f32> {
    /// An empty `f32` store (no type annotation needed); `Params::<f64>::default()`
    /// makes one of another float type. Its initialisation generator, which the
    /// layers' short constructors ([`Conv2d::new`](super::Conv2d::new),
    /// [`Linear::new`](super::Linear::new), …) draw from, starts from a fixed
    /// seed, so a model is the same on every run unless you
    /// [`set_seed`](Params::set_seed).
    ///
    /// ```
    /// let p = tapegrad::nn::Params::new();
    /// assert!(p.is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }
}

impl<T: Float> Params<T> {
    /// Re-seeds the initialisation that the layers' short constructors draw
    /// from (PyTorch's `torch.manual_seed` before building a model).
    ///
    /// ```
    /// use tapegrad::nn::{Linear, Params};
    /// let (mut a, mut b) = (Params::new(), Params::new());
    /// b.set_seed(7);
    /// let (fa, fb) = (Linear::new(&mut a, "fc", 4, 2), Linear::new(&mut b, "fc", 4, 2));
    /// assert_ne!(a.get(fa.weight).data(), b.get(fb.weight).data());
    /// ```
    pub fn set_seed(&mut self, seed: u64) {
        self.init_seed = seed;
        self.init_draws = 0;
    }

    /// A generator for one layer's initial values: the `k`-th call since the
    /// store was made (or [`set_seed`](Params::set_seed)) returns the same
    /// generator on every run, and a different one for every `k`. The layers'
    /// short constructors use it; custom layers can too (see
    /// [`init_uniform`](super::init_uniform)).
    ///
    /// ```
    /// use tapegrad::nn::{init_uniform, Params};
    /// let mut p = Params::new();
    /// let w = init_uniform([3, 2], 2, &mut p.init_rng());
    /// p.add("w", w);
    /// assert_eq!(p.len(), 1);
    /// ```
    pub fn init_rng(&mut self) -> StdRng {
        let k = self.init_draws;
        self.init_draws += 1;
        StdRng::seed_from_u64(self.init_seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// Registers a tensor under `name`; panics if the name is taken.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// let id = p.add("bias", tapegrad::Tensor::zeros([3]));
    /// assert_eq!(p.name(id), "bias");
    /// ```
    pub fn add(&mut self, name: impl Into<String>, value: Tensor<T>) -> ParamId {
        let name = name.into();
        self.check_new_name(&name);
        self.names.push(name);
        self.values.push(value);
        self.param_id(self.values.len() - 1)
    }

    /// Panics if `name` is taken by a parameter or a buffer.
    fn check_new_name(&self, name: &str) {
        assert!(
            self.id(name).is_none() && self.buffer_id(name).is_none(),
            "params: a parameter or buffer named `{name}` already exists"
        );
    }

    /// Registers a buffer: a tensor saved and loaded with the parameters but
    /// not trained (no gradient, no optimizer update), such as batch norm's
    /// running statistics. Panics if the name is taken.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// let b = p.add_buffer("bn.running_var", tapegrad::Tensor::ones([3]));
    /// assert_eq!(p.buffer_name(b), "bn.running_var");
    /// assert_eq!(p.len(), 0); // not a parameter
    /// ```
    pub fn add_buffer(&mut self, name: impl Into<String>, value: Tensor<T>) -> BufferId {
        self.push_buffer(name.into(), value, BufferKind::Float)
    }

    /// Registers a counter buffer (a scalar holding a whole number, such as
    /// batch norm's `num_batches_tracked`), saved as a 64-bit integer as
    /// PyTorch does.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// let n = p.add_count_buffer("bn.num_batches_tracked");
    /// assert_eq!(p.buffer(n).item(), 0.0);
    /// ```
    pub fn add_count_buffer(&mut self, name: impl Into<String>) -> BufferId {
        self.push_buffer(name.into(), Tensor::scalar(T::ZERO), BufferKind::Count)
    }

    fn push_buffer(&mut self, name: String, value: Tensor<T>, kind: BufferKind) -> BufferId {
        self.check_new_name(&name);
        self.buffers.push(Buffer {
            name,
            value: Arc::new(Mutex::new(value)),
            kind,
        });
        BufferId {
            store: self.store,
            index: self.buffers.len() - 1,
        }
    }

    /// The id of the buffer called `name`.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// let b = p.add_buffer("m", tapegrad::Tensor::zeros([1]));
    /// assert_eq!(p.buffer_id("m"), Some(b));
    /// ```
    pub fn buffer_id(&self, name: &str) -> Option<BufferId> {
        let index = self.buffers.iter().position(|b| b.name == name)?;
        Some(BufferId {
            store: self.store,
            index,
        })
    }

    /// The position of buffer `id`; panics if another store issued it.
    fn buffer_index(&self, id: BufferId, what: &str) -> usize {
        if id.store != self.store {
            foreign_buffer(what, id);
        }
        id.index
    }

    /// A buffer's current value (sharing storage).
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::<f64>::default();
    /// let b = p.add_buffer("m", tapegrad::Tensor::full([2], 0.5));
    /// assert_eq!(p.buffer(b).data(), &[0.5, 0.5]);
    /// ```
    pub fn buffer(&self, id: BufferId) -> Tensor<T> {
        lock(&self.buffers[self.buffer_index(id, "params.buffer")].value).clone()
    }

    /// Replaces a buffer's value; panics naming it if the shape differs.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::<f64>::default();
    /// let b = p.add_buffer("m", tapegrad::Tensor::zeros([2]));
    /// p.set_buffer(b, tapegrad::Tensor::ones([2]));
    /// assert_eq!(p.buffer(b).data(), &[1.0, 1.0]);
    /// ```
    pub fn set_buffer(&mut self, id: BufferId, value: Tensor<T>) {
        let b = &self.buffers[self.buffer_index(id, "params.set_buffer")];
        set_shared(&b.name, &b.value, value);
    }

    /// A buffer's name.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// let b = p.add_buffer("bn.running_mean", tapegrad::Tensor::zeros([1]));
    /// assert_eq!(p.buffer_name(b), "bn.running_mean");
    /// ```
    pub fn buffer_name(&self, id: BufferId) -> &str {
        &self.buffers[self.buffer_index(id, "params.buffer_name")].name
    }

    /// `(id, name, value)` for every buffer, in registration order.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// p.add_buffer("a", tapegrad::Tensor::zeros([1]));
    /// assert_eq!(p.buffers().map(|(_, n, _)| n).collect::<Vec<_>>(), ["a"]);
    /// ```
    pub fn buffers(&self) -> impl Iterator<Item = (BufferId, &str, Tensor<T>)> {
        self.buffers.iter().enumerate().map(|(index, b)| {
            let id = BufferId {
                store: self.store,
                index,
            };
            (id, b.name.as_str(), lock(&b.value).clone())
        })
    }

    /// Number of parameter tensors.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// p.add("a", tapegrad::Tensor::zeros([3]));
    /// assert_eq!(p.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the store is empty.
    ///
    /// ```
    /// assert!(tapegrad::nn::Params::<f64>::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Total number of scalar parameters.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
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
    /// let mut p = tapegrad::nn::Params::new();
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
    /// let mut p = tapegrad::nn::Params::new();
    /// let id = p.add("fc.weight", tapegrad::Tensor::zeros([1]));
    /// assert_eq!(p.name(id), "fc.weight");
    /// ```
    pub fn name(&self, id: ParamId) -> &str {
        &self.names[self.index_of(id, "params.name")]
    }

    /// The current value of a parameter.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// let id = p.add("a", tapegrad::Tensor::ones([2]));
    /// assert_eq!(p.get(id).data(), &[1.0, 1.0]);
    /// ```
    pub fn get(&self, id: ParamId) -> &Tensor<T> {
        &self.values[self.index_of(id, "params.get")]
    }

    /// Mutable access to a parameter (used by optimizers; copy-on-write if a tape still shares it).
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
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
    /// let mut p = tapegrad::nn::Params::new();
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
    /// let mut p = tapegrad::nn::Params::new();
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
    /// let mut p = tapegrad::nn::Params::new();
    /// p.add("fc.weight", tapegrad::Tensor::ones([2, 3]));
    /// let path = std::env::temp_dir().join("tapegrad_params_save_doc.safetensors");
    /// p.save(&path).unwrap();
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        crate::io::write_replacing(path, &self.to_safetensors_bytes()?)
    }

    /// Every parameter and buffer, by name, as the bytes of a safetensors file
    /// (what [`save`](Params::save) writes). Counter buffers are stored as `I64`.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// p.add("w", tapegrad::Tensor::ones([2]));
    /// let mut q = tapegrad::nn::Params::new();
    /// let w = q.add("w", tapegrad::Tensor::zeros([2]));
    /// q.assign_safetensors_bytes(&p.to_safetensors_bytes().unwrap()).unwrap();
    /// assert_eq!(q.get(w).data(), &[1.0, 1.0]);
    /// ```
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let buffers: Vec<(String, Tensor<T>, BufferKind)> = self
            .buffers
            .iter()
            .map(|b| (b.name.clone(), lock(&b.value).clone(), b.kind))
            .collect();
        let mut entries: Vec<crate::io::Entry<'_, T>> = self
            .names
            .iter()
            .zip(&self.values)
            .map(|(n, v)| crate::io::Entry::float(n, v))
            .collect();
        for (name, value, kind) in &buffers {
            entries.push(match kind {
                BufferKind::Float => crate::io::Entry::float(name, value),
                BufferKind::Count => crate::io::Entry::count(name, value),
            });
        }
        crate::io::entries_to_safetensors_bytes(&entries, &[])
    }

    /// Loads the bytes of a safetensors file into the parameters and buffers
    /// (checked as in [`load`](Params::load)).
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// p.add("w", tapegrad::Tensor::zeros([1]));
    /// assert!(p.assign_safetensors_bytes(b"not a file").is_err());
    /// ```
    pub fn assign_safetensors_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let loaded = self.parse_safetensors(bytes)?;
        self.assign(loaded)
    }

    /// The named tensors of a safetensors file, this store's counters accepted as integers.
    fn parse_safetensors(&self, bytes: &[u8]) -> Result<Vec<(String, Tensor<T>)>> {
        let counts: Vec<&str> = self
            .buffers
            .iter()
            .filter(|b| b.kind == BufferKind::Count)
            .map(|b| b.name.as_str())
            .collect();
        crate::io::from_safetensors_bytes_with_counts::<T>(bytes, &counts)
    }

    /// Loads values saved by [`save`](Params::save) (or by PyTorch) into this model's
    /// parameters. Every parameter must be in the file with the same shape, and the
    /// file must hold nothing else; otherwise an [`Error::Parameter`] names the
    /// offending parameter and nothing is changed.
    ///
    /// ```
    /// use tapegrad::{nn::Params, Tensor};
    /// let path = std::env::temp_dir().join("tapegrad_params_load_doc.safetensors");
    /// let mut a = Params::new();
    /// a.add("w", Tensor::full([2], 7.0));
    /// a.save(&path).unwrap();
    /// let mut b = Params::new();
    /// let w = b.add("w", Tensor::zeros([2]));
    /// b.load(&path).unwrap();
    /// assert_eq!(b.get(w).data(), &[7.0, 7.0]);
    /// let mut c = Params::new();
    /// c.add("w", Tensor::zeros([3]));
    /// assert!(c.load(&path).unwrap_err().to_string().contains("`w`"));
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        let loaded = self
            .parse_safetensors(&bytes)
            .map_err(|e| crate::io::in_file(path, e))?;
        self.assign(loaded)
    }

    /// Replaces every parameter with the named tensors given (checked as in [`load`](Params::load)).
    ///
    /// ```
    /// use tapegrad::{nn::Params, Tensor};
    /// let mut p = Params::new();
    /// p.add("w", Tensor::zeros([1]));
    /// let err = p.assign(vec![("v".to_string(), Tensor::zeros([1]))]).unwrap_err();
    /// assert_eq!(err.to_string(), "parameter `v`: is in the file but not in the model (model has: w)");
    /// ```
    pub fn assign(&mut self, named: Vec<(String, Tensor<T>)>) -> Result<()> {
        let np = self.len();
        // Parameters first, then buffers, in one list of slots.
        let mut slots: Vec<Option<Tensor<T>>> = vec![None; np + self.buffers.len()];
        for (name, t) in named {
            let (slot, want) = if let Some(id) = self.id(&name) {
                (id.index, self.values[id.index].shape().clone())
            } else if let Some(id) = self.buffer_id(&name) {
                (
                    np + id.index,
                    lock(&self.buffers[id.index].value).shape().clone(),
                )
            } else {
                let mut all: Vec<&str> = self.names.iter().map(String::as_str).collect();
                all.extend(self.buffers.iter().map(|b| b.name.as_str()));
                return Err(Error::Parameter {
                    name,
                    message: format!(
                        "is in the file but not in the model (model has: {})",
                        all.join(", ")
                    ),
                });
            };
            if *t.shape() != want {
                return Err(Error::Parameter {
                    name,
                    message: format!(
                        "has shape {} in the file but {} in the model",
                        t.shape(),
                        want
                    ),
                });
            }
            slots[slot] = Some(t);
        }
        if let Some(i) = slots.iter().position(Option::is_none) {
            let name = if i < np {
                self.names[i].clone()
            } else {
                self.buffers[i - np].name.clone()
            };
            return Err(Error::Parameter {
                name,
                message: "is missing from the file".into(),
            });
        }
        let mut slots = slots.into_iter().map(|t| t.expect("checked above"));
        self.values = slots.by_ref().take(np).collect();
        for (b, t) in self.buffers.iter().zip(slots) {
            *lock(&b.value) = t;
        }
        Ok(())
    }

    /// Records every parameter on `tape` as a leaf (sharing storage, no copy).
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// let id = p.add("a", tapegrad::Tensor::ones([2]));
    /// let tape = tapegrad::Tape::new();
    /// let b = p.bind(&tape);
    /// assert!(b[id].value().shares_storage(p.get(id)));
    /// ```
    pub fn bind<'t>(&self, tape: &'t Tape<T>) -> Bound<'t, T> {
        self.bind_mode(tape, Mode::Train)
    }

    /// Records every parameter on `tape` as a constant, in evaluation
    /// [`Mode`]: no gradients, no closures kept, dropout off, batch norm on its
    /// running statistics (which stay as they are). On a
    /// [`Tape::no_grad`] tape this is graph-free inference (see
    /// [`predict`](super::predict)).
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// let id = p.add("a", tapegrad::Tensor::ones([2]));
    /// let tape = tapegrad::Tape::new();
    /// let b = p.bind_eval(&tape);
    /// assert!(!b[id].requires_grad());
    /// assert_eq!(b.mode(), tapegrad::nn::Mode::Eval);
    /// ```
    pub fn bind_eval<'t>(&self, tape: &'t Tape<T>) -> Bound<'t, T> {
        self.bind_mode(tape, Mode::Eval)
    }

    /// Records every parameter on `tape` in the given mode: as leaves
    /// (receiving gradients) in [`Mode::Train`], as constants in
    /// [`Mode::Eval`]. [`bind`](Params::bind) and [`bind_eval`](Params::bind_eval) are the two cases.
    ///
    /// ```
    /// use tapegrad::nn::{Mode, Params};
    /// let p = Params::new();
    /// let tape = tapegrad::Tape::new();
    /// assert_eq!(p.bind_mode(&tape, Mode::Eval).mode(), Mode::Eval);
    /// ```
    pub fn bind_mode<'t>(&self, tape: &'t Tape<T>, mode: Mode) -> Bound<'t, T> {
        let vars: Vec<Var<'t, T>> = match mode {
            Mode::Train => self.values.iter().map(|v| tape.leaf(v.clone())).collect(),
            Mode::Eval => self
                .values
                .iter()
                .map(|v| tape.constant(v.clone()))
                .collect(),
        };
        if mode == Mode::Train {
            tape.note_binding(self.store.0, vars.iter().map(|v| v.id()).collect());
        }
        Bound {
            vars,
            buffers: self.buffers.iter().map(|b| b.value.clone()).collect(),
            mode,
            store: self.store,
        }
    }
}

/// A [`Params`] store bound to one tape: the [`Var`] of each parameter, indexed by [`ParamId`].
///
/// ```
/// let mut p = tapegrad::nn::Params::new();
/// let w = p.add("w", tapegrad::Tensor::ones([3]));
/// let tape = tapegrad::Tape::new();
/// let bound = p.bind(&tape);
/// assert_eq!(bound[w].op(), "leaf");
/// ```
pub struct Bound<'t, T: Float = f32> {
    vars: Vec<Var<'t, T>>,
    buffers: Vec<Shared<T>>,
    mode: Mode,
    store: StoreId,
}

impl<'t, T: Float> Bound<'t, T> {
    /// Training or evaluation (see [`Mode`]).
    ///
    /// ```
    /// let p = tapegrad::nn::Params::new();
    /// let tape = tapegrad::Tape::new();
    /// assert!(p.bind(&tape).is_training());
    /// ```
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether the mode is [`Mode::Train`].
    ///
    /// ```
    /// let p = tapegrad::nn::Params::new();
    /// let tape = tapegrad::Tape::new();
    /// assert!(!p.bind_eval(&tape).is_training());
    /// ```
    pub fn is_training(&self) -> bool {
        self.mode == Mode::Train
    }

    /// A buffer's current value.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// let m = p.add_buffer("m", tapegrad::Tensor::ones([2]));
    /// let tape = tapegrad::Tape::new();
    /// assert_eq!(p.bind(&tape).buffer(m).data(), &[1.0, 1.0]);
    /// ```
    pub fn buffer(&self, id: BufferId) -> Tensor<T> {
        lock(&self.buffers[self.buffer_index(id, "bound.buffer")]).clone()
    }

    /// Replaces a buffer's value in the store this binding came from (a layer's
    /// training-mode forward pass updating its running statistics). Panics
    /// naming the buffer if the shape differs.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
    /// let m = p.add_buffer("m", tapegrad::Tensor::zeros([2]));
    /// let tape = tapegrad::Tape::new();
    /// p.bind(&tape).set_buffer(m, tapegrad::Tensor::ones([2]));
    /// assert_eq!(p.buffer(m).data(), &[1.0, 1.0]);
    /// ```
    pub fn set_buffer(&self, id: BufferId, value: Tensor<T>) {
        let i = self.buffer_index(id, "bound.set_buffer");
        set_shared(&format!("buffer #{i}"), &self.buffers[i], value);
    }

    fn buffer_index(&self, id: BufferId, what: &str) -> usize {
        if id.store != self.store {
            foreign_buffer(what, id);
        }
        id.index
    }

    /// Extracts the parameters' gradients (moving them, no copy) from a backward pass.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
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
/// let mut p = tapegrad::nn::Params::new();
/// let w = p.add("w", tapegrad::Tensor::ones([3]));
/// let tape = tapegrad::Tape::new();
/// let bound = p.bind(&tape);
/// let grads: tapegrad::nn::ParamGrads = bound.grads((bound[w] * 2.0).sum().backward());
/// assert_eq!(grads[w].data(), &[2.0; 3]);
/// ```
#[derive(Clone)]
pub struct ParamGrads<T: Float = f32> {
    grads: Vec<Option<Tensor<T>>>,
    store: StoreId,
}

impl<T: Float> ParamGrads<T> {
    /// Gradients in parameter order.
    ///
    /// ```
    /// let mut p = tapegrad::nn::Params::new();
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
    /// let mut p = Params::new();
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
    /// let mut p = tapegrad::nn::Params::new();
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
    /// let mut p = tapegrad::nn::Params::new();
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

/// What an optimizer's [`step`](crate::optim::Optimizer::step) takes: the
/// [`ParamGrads`] of a binding, or the [`Gradients`] of a backward pass
/// straight away — on a tape the parameters were bound to for training, the
/// gradient of each parameter is the one of its leaf (summed over the
/// bindings when the store was bound more than once, e.g. a model applied
/// twice).
///
/// ```
/// use tapegrad::nn::{Linear, Module, ParamGradsSource, Params};
/// use tapegrad::{Tape, Tensor};
/// let mut params = Params::new();
/// let fc = Linear::new(&mut params, "fc", 3, 2);
/// let tape = Tape::new();
/// let x = tape.constant(Tensor::ones([4, 3]));
/// let grads = fc.forward(&params.bind(&tape), x).sum().backward();
/// let by_param = grads.param_grads(&params);
/// assert_eq!(by_param[fc.weight].data(), &[4.0; 6]); // Σ over the batch of x
/// ```
pub trait ParamGradsSource<T: Float>: sealed::Sealed {
    /// The gradient of each parameter of `params`, in registration order.
    /// Panics if these are not gradients of `params` (another store's, or a
    /// tape `params` was not bound to for training).
    fn param_grads(&self, params: &Params<T>) -> Cow<'_, ParamGrads<T>> {
        self.param_grads_for("param_grads", params)
    }

    /// [`param_grads`](ParamGradsSource::param_grads), with `op` (the caller)
    /// named in the panic.
    #[doc(hidden)]
    fn param_grads_for(&self, op: &str, params: &Params<T>) -> Cow<'_, ParamGrads<T>>;
}

mod sealed {
    /// Only tapegrad's gradient types are [`ParamGradsSource`](super::ParamGradsSource)s.
    pub trait Sealed {}
    impl<T: crate::Float> Sealed for super::ParamGrads<T> {}
    impl<T: crate::Float> Sealed for crate::Gradients<T> {}
}

impl<T: Float> ParamGradsSource<T> for ParamGrads<T> {
    fn param_grads_for(&self, op: &str, params: &Params<T>) -> Cow<'_, ParamGrads<T>> {
        assert!(
            self.belongs_to(params),
            "{op}: the gradients are of another model's parameters (take them with \
             `params.bind(&tape)` of the Params being stepped, then `bound.grads(...)`)"
        );
        Cow::Borrowed(self)
    }
}

impl<T: Float> ParamGradsSource<T> for Gradients<T> {
    fn param_grads_for(&self, op: &str, params: &Params<T>) -> Cow<'_, ParamGrads<T>> {
        let mut grads: Vec<Option<Tensor<T>>> = vec![None; params.len()];
        let mut bound = false;
        for leaves in self.bound_leaves(params.store.0) {
            bound = true;
            for (slot, &id) in grads.iter_mut().zip(leaves) {
                let Some(g) = self.by_id(id) else { continue };
                match slot {
                    Some(acc) => *acc = acc.zip_map(g, op, |a, b| a + b),
                    None => *slot = Some(g.clone()),
                }
            }
        }
        assert!(
            bound,
            "{op}: the gradients were computed on a tape these parameters were not bound \
             to for training (bind them with `params.bind(&tape)` and call backward() on a \
             loss built from that binding)"
        );
        Cow::Owned(ParamGrads {
            grads,
            store: params.store,
        })
    }
}
