//! [`OptimizerState`]: an optimizer's state keyed by parameter name, and its
//! safetensors encoding.

use crate::nn::Params;
use crate::{Error, Float, Result, Tensor};
use std::collections::BTreeMap;

/// A snapshot of an optimizer's state, keyed by the names of the parameters it steps
/// (from [`Optimizer::state_dict`](super::Optimizer::state_dict)).
///
/// In a file ([`to_bytes`](OptimizerState::to_bytes), safetensors):
///
/// - each buffer is a tensor named `<buffer>.<parameter>` with the parameter's shape
///   and element type: `momentum_buffer.fc.weight` (SGD, RMSprop), `exp_avg.…`,
///   `exp_avg_sq.…`, `max_exp_avg_sq.…` (Adam), `square_avg.…`, `grad_avg.…` (RMSprop) —
///   PyTorch's names;
/// - the `__metadata__` header holds `optimizer` (the kind: `Sgd`, `Adam`, `AdamW`,
///   `RMSprop`), `params` (the parameter names in order, one per line), one
///   `hyper.<name>` per hyper-parameter (`hyper.lr`, …; exact decimal `f64`,
///   booleans as `0`/`1`) and one `step.<parameter>` per parameter that has taken a
///   step (Adam, RMSprop), as exact integers.
///
/// A parameter that never received a gradient has no entries.
///
/// ```
/// use tapegrad::nn::Params;
/// use tapegrad::optim::{Adam, Optimizer, OptimizerState};
/// use tapegrad::{Tape, Tensor};
/// let mut params = Params::new();
/// let w = params.add("w", Tensor::ones([2]));
/// let mut opt = Adam::new(0.1);
/// let grads = {
///     let tape = Tape::new();
///     let p = params.bind(&tape);
///     p.grads(p[w].sum().backward())
/// };
/// opt.step(&mut params, &grads);
/// let state = opt.state_dict(&params);
/// assert_eq!(state.kind, "Adam");
/// assert_eq!(state.steps, vec![("w".to_string(), 1)]);
/// let names: Vec<&str> = state.buffers.iter().map(|(n, _)| n.as_str()).collect();
/// assert_eq!(names, ["exp_avg.w", "exp_avg_sq.w"]);
/// let back = OptimizerState::<f32>::from_bytes(&state.to_bytes().unwrap()).unwrap();
/// assert_eq!(back.hyper("lr"), Some(0.1));
/// ```
#[derive(Clone, Debug)]
pub struct OptimizerState<T: Float = f32> {
    /// The optimizer: `Sgd`, `Adam`, `AdamW` or `RMSprop`.
    pub kind: String,
    /// The names of the parameters of the store it steps, in order.
    pub params: Vec<String>,
    /// Hyper-parameters by name (booleans as 0 or 1), including the current `lr`.
    pub hyper: Vec<(String, f64)>,
    /// The step count of each parameter that has one, by parameter name.
    pub steps: Vec<(String, u64)>,
    /// Buffers, named `<buffer>.<parameter>`.
    pub buffers: Vec<(String, Tensor<T>)>,
}

const KIND_KEY: &str = "optimizer";
const PARAMS_KEY: &str = "params";
const HYPER_PREFIX: &str = "hyper.";
const STEP_PREFIX: &str = "step.";

fn state_error(message: String) -> Error {
    Error::Data(format!("optimizer state: {message}"))
}

impl<T: Float> OptimizerState<T> {
    /// An empty state of optimizer `kind` for the parameters of `params`.
    pub(crate) fn new(kind: &str, params: &Params<T>) -> Self {
        OptimizerState {
            kind: kind.to_string(),
            params: params.iter().map(|(_, n, _)| n.to_string()).collect(),
            hyper: Vec::new(),
            steps: Vec::new(),
            buffers: Vec::new(),
        }
    }

    /// Records a hyper-parameter.
    pub(crate) fn push_hyper(&mut self, name: &str, value: f64) {
        self.hyper.push((name.to_string(), value));
    }

    /// Records parameter `i`'s step count.
    pub(crate) fn push_step(&mut self, i: usize, step: u64) {
        self.steps.push((self.params[i].clone(), step));
    }

    /// Records a buffer of parameter `i` (given the values, shaped like the parameter).
    pub(crate) fn push_buffer(&mut self, buffer: &str, params: &Params<T>, i: usize, values: &[T]) {
        let (_, name, p) = params.iter().nth(i).expect("index in range");
        let t = Tensor::from_vec(values.to_vec(), p.shape().clone())
            .expect("a buffer has its parameter's size");
        self.buffers.push((format!("{buffer}.{name}"), t));
    }

    /// The hyper-parameter called `name`, if recorded.
    ///
    /// ```
    /// use tapegrad::optim::{Optimizer, RmsProp};
    /// let s = RmsProp::<f32>::new(0.01).state_dict(&tapegrad::nn::Params::new());
    /// assert_eq!(s.hyper("alpha"), Some(0.99));
    /// assert_eq!(s.hyper("beta1"), None);
    /// ```
    pub fn hyper(&self, name: &str) -> Option<f64> {
        self.hyper.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }

    /// The state as the bytes of a safetensors file (layout in the [type docs](Self)).
    /// Errors if a parameter name holds a line break, or a name appears twice.
    ///
    /// ```
    /// use tapegrad::optim::{Optimizer, Sgd};
    /// let state = Sgd::<f64>::new(0.1).state_dict(&tapegrad::nn::Params::default());
    /// let (tensors, meta) = tapegrad::io::from_safetensors_bytes_with_metadata::<f64>(&state.to_bytes().unwrap()).unwrap();
    /// assert!(tensors.is_empty());
    /// assert!(meta.contains(&("optimizer".to_string(), "Sgd".to_string())));
    /// assert!(meta.contains(&("hyper.lr".to_string(), "0.1".to_string())));
    /// ```
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        if let Some(n) = self.params.iter().find(|n| n.contains('\n')) {
            return Err(Error::Parameter {
                name: n.clone(),
                message: "a name with a line break cannot be stored in an optimizer state file"
                    .into(),
            });
        }
        let mut meta: Vec<(String, String)> = vec![
            (KIND_KEY.to_string(), self.kind.clone()),
            (PARAMS_KEY.to_string(), self.params.join("\n")),
        ];
        meta.extend(
            self.hyper
                .iter()
                .map(|(k, v)| (format!("{HYPER_PREFIX}{k}"), format!("{v:?}"))),
        );
        meta.extend(
            self.steps
                .iter()
                .map(|(k, v)| (format!("{STEP_PREFIX}{k}"), v.to_string())),
        );
        let mut seen = std::collections::HashSet::new();
        if let Some((k, _)) = meta.iter().find(|(k, _)| !seen.insert(k.as_str())) {
            return Err(state_error(format!("entry `{k}` appears twice")));
        }
        let meta: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let tensors: Vec<(&str, &Tensor<T>)> =
            self.buffers.iter().map(|(n, t)| (n.as_str(), t)).collect();
        crate::io::to_safetensors_bytes_with_metadata(&tensors, &meta)
    }

    /// Parses bytes written by [`to_bytes`](OptimizerState::to_bytes). Errors if they
    /// are not a safetensors file of `T`, or the metadata is missing, unknown or malformed.
    /// (Whether the state fits an optimizer and its parameters is checked when it is
    /// loaded, by [`Optimizer::load_state_dict`](super::Optimizer::load_state_dict).)
    ///
    /// ```
    /// use tapegrad::{io, optim::OptimizerState, Tensor};
    /// let plain = io::to_safetensors_bytes(&[("w", &Tensor::<f32>::ones([1]))]).unwrap();
    /// let err = OptimizerState::<f32>::from_bytes(&plain).unwrap_err();
    /// assert_eq!(err.to_string(), "optimizer state: no `optimizer` entry (not an optimizer state file)");
    /// ```
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (buffers, meta) = crate::io::from_safetensors_bytes_with_metadata::<T>(bytes)?;
        let mut kind = None;
        let mut params = None;
        let mut hyper = Vec::new();
        let mut steps = Vec::new();
        for (k, v) in meta {
            if k == KIND_KEY {
                kind = Some(v);
            } else if k == PARAMS_KEY {
                params = Some(if v.is_empty() {
                    Vec::new()
                } else {
                    v.split('\n').map(str::to_string).collect()
                });
            } else if let Some(name) = k.strip_prefix(HYPER_PREFIX) {
                let x: f64 = v.parse().map_err(|_| {
                    state_error(format!("hyper-parameter `{name}` = `{v}` is not a number"))
                })?;
                hyper.push((name.to_string(), x));
            } else if let Some(name) = k.strip_prefix(STEP_PREFIX) {
                let n: u64 = v.parse().map_err(|_| Error::Parameter {
                    name: name.to_string(),
                    message: format!("step count `{v}` in the optimizer state is not an integer"),
                })?;
                steps.push((name.to_string(), n));
            } else {
                return Err(state_error(format!("unknown metadata entry `{k}`")));
            }
        }
        let kind = kind.ok_or_else(|| {
            state_error(format!(
                "no `{KIND_KEY}` entry (not an optimizer state file)"
            ))
        })?;
        let params = params.ok_or_else(|| state_error(format!("no `{PARAMS_KEY}` entry")))?;
        Ok(OptimizerState {
            kind,
            params,
            hyper,
            steps,
            buffers,
        })
    }
}

/// Takes an [`OptimizerState`] apart for one optimizer, checking it against the
/// parameters as it goes; [`finish`](StateReader::finish) rejects anything left over.
pub(crate) struct StateReader<'a, T: Float> {
    params: &'a Params<T>,
    hyper: BTreeMap<String, f64>,
    steps: BTreeMap<String, u64>,
    buffers: BTreeMap<String, Tensor<T>>,
}

impl<'a, T: Float> StateReader<'a, T> {
    /// Checks the kind and the parameter names.
    pub(crate) fn new(kind: &str, params: &'a Params<T>, state: OptimizerState<T>) -> Result<Self> {
        if state.kind != kind {
            return Err(state_error(format!(
                "holds the state of {}, cannot be loaded into {kind}",
                state.kind
            )));
        }
        let names: Vec<&str> = params.iter().map(|(_, n, _)| n).collect();
        if let Some(n) = names.iter().find(|n| !state.params.iter().any(|s| s == *n)) {
            return Err(Error::Parameter {
                name: n.to_string(),
                message: "is in the model but not in the optimizer state".into(),
            });
        }
        if let Some(n) = state.params.iter().find(|s| !names.contains(&s.as_str())) {
            return Err(Error::Parameter {
                name: n.clone(),
                message: format!(
                    "is in the optimizer state but not in the model (model has: {})",
                    names.join(", ")
                ),
            });
        }
        if state.params.len() != names.len() || state.params.iter().zip(&names).any(|(a, b)| a != b)
        {
            return Err(state_error(format!(
                "the parameters are in another order (state: {}; model: {})",
                state.params.join(", "),
                names.join(", ")
            )));
        }
        let mut buffers = BTreeMap::new();
        for (k, t) in state.buffers {
            if buffers.insert(k.clone(), t).is_some() {
                return Err(state_error(format!("entry `{k}` appears twice")));
            }
        }
        Ok(StateReader {
            params,
            hyper: state.hyper.into_iter().collect(),
            steps: state.steps.into_iter().collect(),
            buffers,
        })
    }

    /// A hyper-parameter (required).
    pub(crate) fn hyper(&mut self, name: &str) -> Result<f64> {
        self.hyper
            .remove(name)
            .ok_or_else(|| state_error(format!("hyper-parameter `{name}` is missing")))
    }

    /// A boolean hyper-parameter (required, 0 or 1).
    pub(crate) fn flag(&mut self, name: &str) -> Result<bool> {
        match self.hyper(name)? {
            0.0 => Ok(false),
            1.0 => Ok(true),
            v => Err(state_error(format!(
                "hyper-parameter `{name}` is {v}, expected 0 or 1"
            ))),
        }
    }

    /// The name of parameter `i`.
    fn name(&self, i: usize) -> &'a str {
        self.params.iter().nth(i).expect("index in range").1
    }

    /// Parameter `i`'s step count, if it has one.
    pub(crate) fn step(&mut self, i: usize) -> Option<u64> {
        let name = self.name(i);
        self.steps.remove(name)
    }

    /// Buffer `buffer` of parameter `i`, if present; an error if its shape differs
    /// from the parameter's.
    pub(crate) fn buffer(&mut self, buffer: &str, i: usize) -> Result<Option<Vec<T>>> {
        let (_, name, p) = self.params.iter().nth(i).expect("index in range");
        let key = format!("{buffer}.{name}");
        let Some(t) = self.buffers.remove(&key) else {
            return Ok(None);
        };
        if t.shape() != p.shape() {
            return Err(Error::Parameter {
                name: key,
                message: format!(
                    "has shape {} in the optimizer state but the parameter has shape {}",
                    t.shape(),
                    p.shape()
                ),
            });
        }
        Ok(Some(t.data().to_vec()))
    }

    /// Buffer `buffer` of parameter `i`, which must be present.
    pub(crate) fn required(&mut self, buffer: &str, i: usize) -> Result<Vec<T>> {
        let name = self.name(i);
        self.buffer(buffer, i)?.ok_or_else(|| Error::Parameter {
            name: format!("{buffer}.{name}"),
            message: "is missing from the optimizer state".into(),
        })
    }

    /// Errors naming the first entry nobody asked for.
    pub(crate) fn finish(self) -> Result<()> {
        if let Some(k) = self.hyper.keys().next() {
            return Err(state_error(format!("unexpected hyper-parameter `{k}`")));
        }
        if let Some(k) = self.steps.keys().next() {
            return Err(Error::Parameter {
                name: format!("{STEP_PREFIX}{k}"),
                message: "is in the optimizer state but this optimizer has no step count there"
                    .into(),
            });
        }
        if let Some(k) = self.buffers.keys().next() {
            return Err(Error::Parameter {
                name: k.clone(),
                message: "is in the optimizer state but not expected by this optimizer".into(),
            });
        }
        Ok(())
    }
}

/// Panics unless the optimizer's per-parameter state fits in `params`.
pub(crate) fn check_state_len<T: Float>(op: &str, params: &Params<T>, state_len: usize) {
    assert!(
        state_len <= params.len(),
        "{op}: the optimizer has state for {state_len} parameters but the store has {} \
         (pass the Params this optimizer steps)",
        params.len()
    );
}
