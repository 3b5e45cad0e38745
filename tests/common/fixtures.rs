//! Reader for the PyTorch reference fixtures in `tests/fixtures/*.txt`.
//!
//! The files are produced by `scripts/gen_fixtures.py` (the tests never run
//! it). Format, one file per group of cases:
//!
//! ```text
//! # comment (anywhere between directives)
//! case <name>
//! param <key> <v1> [<v2> ...]
//! tensor <name> <ndim> <d0> ... <dn-1>
//! <prod(dims) values, whitespace separated, row-major, may wrap lines>
//! end
//! ```
//!
//! A 0-dim tensor (`ndim` 0) holds exactly one value. Integer tensors (class
//! targets) are stored as f64; use [`Case::tensor_usize`] to read them.
//! Malformed input makes [`load`] / [`parse`] panic naming the file and line.
#![allow(dead_code)]

use std::path::PathBuf;

/// One named fixture case: a set of numeric params and named tensors.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    params: Vec<(String, Vec<f64>)>,
    tensors: Vec<(String, Vec<usize>, Vec<f64>)>,
}

impl Case {
    /// All values of param `key`. Panics (naming case and key) if missing.
    pub fn param(&self, key: &str) -> &[f64] {
        match self.params.iter().find(|(k, _)| k == key) {
            Some((_, v)) => v,
            None => panic!(
                "fixture case `{}` has no param `{}` (params: {:?})",
                self.name,
                key,
                self.params
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
            ),
        }
    }

    /// The single value of param `key`. Panics if missing or not exactly one value.
    pub fn param_f64(&self, key: &str) -> f64 {
        let v = self.param(key);
        assert!(
            v.len() == 1,
            "fixture case `{}`: param `{}` has {} values, expected 1",
            self.name,
            key,
            v.len()
        );
        v[0]
    }

    /// Param `key` as non-negative integers. Panics if missing or if a value
    /// is not a non-negative integer.
    pub fn param_usize(&self, key: &str) -> Vec<usize> {
        self.param(key)
            .iter()
            .map(|&v| to_usize(v, || format!("case `{}` param `{}`", self.name, key)))
            .collect()
    }

    /// Param `key` read as a boolean flag (`0` or `1`). Panics otherwise.
    pub fn param_bool(&self, key: &str) -> bool {
        let v = self.param_f64(key);
        assert!(
            v == 0.0 || v == 1.0,
            "fixture case `{}`: param `{}` = {} is not 0 or 1",
            self.name,
            key,
            v
        );
        v == 1.0
    }

    pub fn has_param(&self, key: &str) -> bool {
        self.params.iter().any(|(k, _)| k == key)
    }

    /// `(shape, row-major data)` of tensor `name`. Panics (naming case and
    /// tensor) if missing. A 0-dim tensor has an empty shape and one value.
    pub fn tensor(&self, name: &str) -> (&[usize], &[f64]) {
        match self.tensors.iter().find(|(n, _, _)| n == name) {
            Some((_, shape, data)) => (shape, data),
            None => panic!(
                "fixture case `{}` has no tensor `{}` (tensors: {:?})",
                self.name,
                name,
                self.tensor_names()
            ),
        }
    }

    /// Tensor `name` with integer values (e.g. class targets) as usize.
    pub fn tensor_usize(&self, name: &str) -> (&[usize], Vec<usize>) {
        let (shape, data) = self.tensor(name);
        let ints = data
            .iter()
            .map(|&v| to_usize(v, || format!("case `{}` tensor `{}`", self.name, name)))
            .collect();
        (shape, ints)
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.iter().any(|(n, _, _)| n == name)
    }

    /// Param keys in file order.
    pub fn param_names(&self) -> Vec<&str> {
        self.params.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// Tensor names in file order.
    pub fn tensor_names(&self) -> Vec<&str> {
        self.tensors.iter().map(|(n, _, _)| n.as_str()).collect()
    }
}

fn to_usize(v: f64, what: impl Fn() -> String) -> usize {
    if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= usize::MAX as f64 {
        v as usize
    } else {
        panic!(
            "fixture {}: value {} is not a non-negative integer",
            what(),
            v
        )
    }
}

/// Find the case called `name` in `cases`. Panics listing the names if absent.
pub fn find<'a>(cases: &'a [Case], name: &str) -> &'a Case {
    match cases.iter().find(|c| c.name == name) {
        Some(c) => c,
        None => panic!(
            "no fixture case `{}` (have: {:?})",
            name,
            cases.iter().map(|c| c.name.as_str()).collect::<Vec<_>>()
        ),
    }
}

/// Read and parse `tests/fixtures/<file_name>` (relative to the crate root).
pub fn load(file_name: &str) -> Vec<Case> {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", file_name]
        .iter()
        .collect();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture file {}: {}", path.display(), e));
    let cases = parse(&text, file_name);
    assert!(
        !cases.is_empty(),
        "fixture file {} has no cases",
        path.display()
    );
    cases
}

/// A tensor whose values are still being read.
struct Pending {
    name: String,
    shape: Vec<usize>,
    data: Vec<f64>,
    want: usize,
    line: usize,
}

/// Parse fixture text. `origin` (e.g. the file name) is used in panic messages.
pub fn parse(text: &str, origin: &str) -> Vec<Case> {
    let fail = |line: usize, msg: String| -> ! {
        panic!("{}:{}: malformed fixture: {}", origin, line, msg)
    };

    let mut cases: Vec<Case> = Vec::new();
    let mut current: Option<(Case, usize)> = None; // (case, line of `case`)
    let mut pending: Option<Pending> = None;

    for (idx, raw) in text.lines().enumerate() {
        let lineno = idx + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }

        if let Some(mut p) = pending.take() {
            for tok in line.split_whitespace() {
                let v: f64 = tok.parse().unwrap_or_else(|_| {
                    fail(
                        lineno,
                        format!(
                            "tensor `{}` (declared line {}) expects {} values, got {} before \
                             non-number `{}`",
                            p.name,
                            p.line,
                            p.want,
                            p.data.len(),
                            tok
                        ),
                    )
                });
                p.data.push(v);
            }
            if p.data.len() > p.want {
                fail(
                    lineno,
                    format!(
                        "tensor `{}` expects {} values, got {}",
                        p.name,
                        p.want,
                        p.data.len()
                    ),
                );
            }
            if p.data.len() == p.want {
                let (case, _) = current.as_mut().expect("tensor outside case");
                case.tensors.push((p.name, p.shape, p.data));
            } else {
                pending = Some(p);
            }
            continue;
        }

        let mut toks = line.split_whitespace();
        let directive = toks.next().unwrap();
        let rest: Vec<&str> = toks.collect();
        match directive {
            "case" => {
                if let Some((c, l)) = &current {
                    fail(
                        lineno,
                        format!(
                            "`case` inside case `{}` (opened line {}) without `end`",
                            c.name, l
                        ),
                    );
                }
                if rest.len() != 1 {
                    fail(lineno, "`case` needs exactly one name".to_string());
                }
                if cases.iter().any(|c| c.name == rest[0]) {
                    fail(lineno, format!("duplicate case name `{}`", rest[0]));
                }
                current = Some((
                    Case {
                        name: rest[0].to_string(),
                        params: Vec::new(),
                        tensors: Vec::new(),
                    },
                    lineno,
                ));
            }
            "param" => {
                let Some((case, _)) = current.as_mut() else {
                    fail(lineno, "`param` outside a case".to_string())
                };
                if rest.len() < 2 {
                    fail(
                        lineno,
                        "`param` needs a key and at least one value".to_string(),
                    );
                }
                let key = rest[0];
                if case.has_param(key) {
                    fail(
                        lineno,
                        format!("duplicate param `{}` in case `{}`", key, case.name),
                    );
                }
                let vals = rest[1..]
                    .iter()
                    .map(|t| {
                        t.parse::<f64>().unwrap_or_else(|_| {
                            fail(lineno, format!("param `{}`: `{}` is not a number", key, t))
                        })
                    })
                    .collect();
                case.params.push((key.to_string(), vals));
            }
            "tensor" => {
                let Some((case, _)) = current.as_mut() else {
                    fail(lineno, "`tensor` outside a case".to_string())
                };
                if rest.len() < 2 {
                    fail(lineno, "`tensor` needs a name and ndim".to_string());
                }
                let name = rest[0];
                if case.has_tensor(name) {
                    fail(
                        lineno,
                        format!("duplicate tensor `{}` in case `{}`", name, case.name),
                    );
                }
                let parse_usize = |t: &str| -> usize {
                    t.parse::<usize>().unwrap_or_else(|_| {
                        fail(
                            lineno,
                            format!("tensor `{}`: `{}` is not a dimension", name, t),
                        )
                    })
                };
                let ndim = parse_usize(rest[1]);
                let shape: Vec<usize> = rest[2..].iter().map(|t| parse_usize(t)).collect();
                if shape.len() != ndim {
                    fail(
                        lineno,
                        format!(
                            "tensor `{}`: ndim {} but {} dims given",
                            name,
                            ndim,
                            shape.len()
                        ),
                    );
                }
                let want: usize = shape.iter().product(); // 1 for a 0-dim tensor
                if want == 0 {
                    case.tensors.push((name.to_string(), shape, Vec::new()));
                } else {
                    pending = Some(Pending {
                        name: name.to_string(),
                        shape,
                        data: Vec::with_capacity(want),
                        want,
                        line: lineno,
                    });
                }
            }
            "end" => {
                if !rest.is_empty() {
                    fail(lineno, "`end` takes no arguments".to_string());
                }
                match current.take() {
                    Some((case, _)) => cases.push(case),
                    None => fail(lineno, "`end` without `case`".to_string()),
                }
            }
            other => fail(lineno, format!("unknown directive `{}`", other)),
        }
    }

    let last = text.lines().count();
    if let Some(p) = pending {
        fail(
            last,
            format!(
                "end of input in tensor `{}` (line {}): {} of {} values",
                p.name,
                p.line,
                p.data.len(),
                p.want
            ),
        );
    }
    if let Some((c, l)) = current {
        fail(
            last,
            format!("end of input inside case `{}` (opened line {})", c.name, l),
        );
    }
    cases
}
