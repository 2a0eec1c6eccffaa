//! Loading and saving parameter tensors and token files (safetensors), with checks.
//!
//! - [`load_params`]: one tensor per parameter, named `PREFIX + NAME`, f32 or
//!   f64 (converted), of the parameter's exact shape; other tensors in the
//!   file are ignored.
//! - [`load_tokens`]: `input_ids` and `target_ids`, int32 (int64 accepted),
//!   rank 2 `[batch, seq]`, the same shape; [`Tokens::check_vocab`] checks
//!   every id against the vocabulary.
//! - [`save`]: writes a file atomically (a temporary file in the same folder,
//!   then a rename), so a failed run never leaves a partial output.
//!
//! Every error names the file, the tensor and what was expected.

use pgc_ir::ParamInfo;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{}: cannot read: {err}", path.display())]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{}: not a valid safetensors file: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    #[error("{}: missing tensor `{tensor}` (expected {what})", path.display())]
    Missing { path: PathBuf, tensor: String, what: String },
    #[error("{}: missing tensor `{tensor}`, but the file has `{prefix}{tensor}`: pass --weights-prefix {prefix}", path.display())]
    MissingPrefix { path: PathBuf, tensor: String, prefix: String },
    #[error("{}: tensor `{tensor}` has shape {got:?}, expected {expected}", path.display())]
    Shape { path: PathBuf, tensor: String, expected: String, got: Vec<usize> },
    #[error("{}: tensor `{tensor}` has dtype {got}, expected {expected}", path.display())]
    Dtype { path: PathBuf, tensor: String, expected: &'static str, got: String },
    #[error("{}: tensor `{tensor}`: token id {id} at [{b}, {t}] is outside the vocabulary 0..{vocab}", path.display())]
    TokenRange { path: PathBuf, tensor: String, id: i64, b: usize, t: usize, vocab: usize },
    #[error("{}: tensors `input_ids` {input:?} and `target_ids` {target:?} must have the same shape", path.display())]
    TokenShapes { path: PathBuf, input: Vec<usize>, target: Vec<usize> },
    #[error("{}: {msg}", path.display())]
    Artifact { path: PathBuf, msg: String },
    #[error("{}: cannot write: {err}", path.display())]
    Write { path: PathBuf, err: std::io::Error },
    #[error("{}: cannot serialize: {msg}", path.display())]
    Serialize { path: PathBuf, msg: String },
}

/// Tensor data as read from or written to a file.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
    I64(Vec<i64>),
}

impl HostData {
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::F64(v) => v.len(),
            HostData::I32(v) => v.len(),
            HostData::I64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Values as f64 (exact for every stored type except i64 beyond 2^53).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            HostData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            HostData::F64(v) => v.clone(),
            HostData::I32(v) => v.iter().map(|&x| x as f64).collect(),
            HostData::I64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }
    fn dtype(&self) -> Dtype {
        match self {
            HostData::F32(_) => Dtype::F32,
            HostData::F64(_) => Dtype::F64,
            HostData::I32(_) => Dtype::I32,
            HostData::I64(_) => Dtype::I64,
        }
    }
    fn bytes(&self) -> Vec<u8> {
        match self {
            HostData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            HostData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            HostData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            HostData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: HostData,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: HostData) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor data does not match shape {shape:?}");
        HostTensor { shape, data }
    }
}

/// A safetensors file read into memory.
pub struct SafeFile {
    pub path: PathBuf,
    bytes: Vec<u8>,
}

fn dtype_name(d: Dtype) -> String {
    format!("{d:?}").to_lowercase()
}

impl SafeFile {
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        let bytes = std::fs::read(path).map_err(|err| WeightsError::Read { path: path.to_path_buf(), err })?;
        let f = SafeFile { path: path.to_path_buf(), bytes };
        f.st()?;
        Ok(f)
    }
    fn st(&self) -> Result<SafeTensors<'_>, WeightsError> {
        SafeTensors::deserialize(&self.bytes).map_err(|e| WeightsError::Format { path: self.path.clone(), msg: e.to_string() })
    }
    /// The `__metadata__` strings of the file.
    pub fn metadata(&self) -> HashMap<String, String> {
        SafeTensors::read_metadata(&self.bytes).ok().and_then(|(_, m)| m.metadata().clone()).unwrap_or_default()
    }
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.st().map(|s| s.names().into_iter().map(String::from).collect()).unwrap_or_default();
        v.sort();
        v
    }
    pub fn contains(&self, name: &str) -> bool {
        self.st().map(|s| s.tensor(name).is_ok()).unwrap_or(false)
    }
    /// A tensor in whatever supported dtype it is stored (f32, f64, i32, i64).
    pub fn get(&self, name: &str, what: &str) -> Result<HostTensor, WeightsError> {
        let st = self.st()?;
        let view = st
            .tensor(name)
            .map_err(|_| WeightsError::Missing { path: self.path.clone(), tensor: name.into(), what: what.into() })?;
        let raw = view.data();
        let data = match view.dtype() {
            Dtype::F32 => HostData::F32(raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()),
            Dtype::F64 => HostData::F64(raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()),
            Dtype::I32 => HostData::I32(raw.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).collect()),
            Dtype::I64 => HostData::I64(raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()),
            d => {
                return Err(WeightsError::Dtype {
                    path: self.path.clone(),
                    tensor: name.into(),
                    expected: "f32, f64, i32 or i64",
                    got: dtype_name(d),
                })
            }
        };
        Ok(HostTensor { shape: view.shape().to_vec(), data })
    }
    /// Every tensor of the file, sorted by name.
    pub fn all(&self) -> Result<Vec<(String, HostTensor)>, WeightsError> {
        self.names().into_iter().map(|n| self.get(&n, "a tensor").map(|t| (n, t))).collect()
    }
}

/// Parameter values (f64) by parameter name, read from `PREFIX + NAME` tensors.
pub fn load_params(path: &Path, prefix: &str, params: &[ParamInfo]) -> Result<HashMap<String, Vec<f64>>, WeightsError> {
    // A `.pgz` artifact (by its magic): dequantized on load.
    if let Ok(mut fh) = std::fs::File::open(path) {
        let mut magic = [0u8; 4];
        if std::io::Read::read_exact(&mut fh, &mut magic).is_ok() && crate::artifact::is_artifact(&magic) {
            let bytes = std::fs::read(path).map_err(|err| WeightsError::Read { path: path.to_path_buf(), err })?;
            let fe = |e: crate::artifact::ArtifactError| WeightsError::Artifact { path: path.to_path_buf(), msg: e.to_string() };
            return crate::artifact::params_from(crate::artifact::load_bytes(&bytes).map_err(fe)?, params).map_err(fe);
        }
    }
    let f = SafeFile::open(path).map_err(|e| sniff(path, e))?;
    let st = f.st()?;
    let mut out = HashMap::new();
    for p in params {
        let tensor = format!("{prefix}{}", p.name);
        let what = format!("parameter `{}`, f32 or f64 of shape {:?}", p.name, p.shape);
        let view = match st.tensor(&tensor) {
            Ok(v) => v,
            Err(_) => {
                // The usual cause: the names carry a prefix (`param.`) and none was given.
                let prefix = st.names().into_iter().find_map(|n| n.strip_suffix(tensor.as_str()).filter(|p| !p.is_empty()).map(String::from));
                return Err(match prefix {
                    Some(prefix) => WeightsError::MissingPrefix { path: f.path.clone(), tensor, prefix },
                    None => WeightsError::Missing { path: f.path.clone(), tensor, what },
                });
            }
        };
        if !matches!(view.dtype(), Dtype::F32 | Dtype::F64) {
            return Err(WeightsError::Dtype { path: f.path.clone(), tensor, expected: "f32 or f64", got: dtype_name(view.dtype()) });
        }
        if view.shape() != p.shape.as_slice() {
            return Err(WeightsError::Shape {
                path: f.path.clone(),
                tensor,
                expected: format!("{:?} (parameter `{}`)", p.shape, p.name),
                got: view.shape().to_vec(),
            });
        }
        let raw = view.data();
        let vals: Vec<f64> = match view.dtype() {
            Dtype::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64).collect(),
            _ => raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect(),
        };
        out.insert(p.name.clone(), vals);
    }
    Ok(out)
}

/// A weights file that is neither format: say what it is not by its name and
/// first bytes (a `.pgz` with a broken magic is not a safetensors problem).
fn sniff(path: &Path, e: WeightsError) -> WeightsError {
    let WeightsError::Format { .. } = e else { return e };
    let mut head = [0u8; 9];
    let n = std::fs::File::open(path).and_then(|mut f| std::io::Read::read(&mut f, &mut head)).unwrap_or(0);
    let pgz = path.extension().is_some_and(|x| x == "pgz");
    let json_header = n == 9 && head[8] == b'{';
    if pgz || !json_header {
        let what = if pgz { "not a pgc artifact" } else { "neither a pgc artifact nor a safetensors file" };
        return WeightsError::Artifact {
            path: path.to_path_buf(),
            msg: format!("{what}: the file starts with {:02x?}, an artifact with {:02x?} (\"PGZ\\0\")", &head[..n.min(4)], crate::artifact::MAGIC),
        };
    }
    e
}

/// Tensors of a safetensors weights file that no parameter reads: with a
/// prefix, the names under it that are not `PREFIX + NAME` of a parameter;
/// without one, every name that is not a parameter's (a typo'd name is the
/// usual cause). Empty for `.pgz` artifacts and unreadable files.
pub fn unused_tensors(path: &Path, prefix: &str, params: &[ParamInfo]) -> Vec<String> {
    let Ok(f) = SafeFile::open(path) else { return Vec::new() };
    let wanted: std::collections::HashSet<String> = params.iter().map(|p| format!("{prefix}{}", p.name)).collect();
    let mut extra: Vec<String> = f.names().into_iter().filter(|n| n.starts_with(prefix) && !wanted.contains(n)).collect();
    extra.sort();
    extra
}

/// Token ids and targets, `[batch, seq]` each, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tokens {
    pub batch: usize,
    pub seq: usize,
    pub input_ids: Vec<i32>,
    pub target_ids: Vec<i32>,
    /// Where they came from, for messages.
    pub source: PathBuf,
}

impl Tokens {
    /// Every id must be in `0..vocab`.
    pub fn check_vocab(&self, vocab: usize) -> Result<(), WeightsError> {
        for (name, ids) in [("input_ids", &self.input_ids), ("target_ids", &self.target_ids)] {
            if let Some(p) = ids.iter().position(|&x| x < 0 || x as usize >= vocab) {
                return Err(WeightsError::TokenRange {
                    path: self.source.clone(),
                    tensor: name.into(),
                    id: ids[p] as i64,
                    b: p / self.seq.max(1),
                    t: p % self.seq.max(1),
                    vocab,
                });
            }
        }
        Ok(())
    }
}

/// Read `input_ids` and `target_ids` (int32 or int64, rank 2, same shape).
pub fn load_tokens(path: &Path) -> Result<Tokens, WeightsError> {
    let f = SafeFile::open(path)?;
    let mut got = Vec::new();
    for name in ["input_ids", "target_ids"] {
        let t = f.get(name, "int32 token ids of shape [batch, seq]")?;
        if t.shape.len() != 2 {
            return Err(WeightsError::Shape {
                path: f.path.clone(),
                tensor: name.into(),
                expected: "rank 2 [batch, seq]".into(),
                got: t.shape,
            });
        }
        let ids: Vec<i32> = match t.data {
            HostData::I32(v) => v,
            HostData::I64(v) => {
                let mut out = Vec::with_capacity(v.len());
                for (p, x) in v.into_iter().enumerate() {
                    match i32::try_from(x) {
                        Ok(y) => out.push(y),
                        Err(_) => {
                            return Err(WeightsError::TokenRange {
                                path: f.path.clone(),
                                tensor: name.into(),
                                id: x,
                                b: p / t.shape[1].max(1),
                                t: p % t.shape[1].max(1),
                                vocab: i32::MAX as usize,
                            })
                        }
                    }
                }
                out
            }
            other => {
                return Err(WeightsError::Dtype {
                    path: f.path.clone(),
                    tensor: name.into(),
                    expected: "i32 (or i64)",
                    got: dtype_name(other.dtype()),
                })
            }
        };
        got.push((t.shape, ids));
    }
    let (tshape, target_ids) = got.pop().unwrap();
    let (ishape, input_ids) = got.pop().unwrap();
    if ishape != tshape {
        return Err(WeightsError::TokenShapes { path: f.path.clone(), input: ishape, target: tshape });
    }
    if ishape[0] == 0 || ishape[1] == 0 {
        return Err(WeightsError::Shape {
            path: f.path.clone(),
            tensor: "input_ids".into(),
            expected: "a non-empty [batch, seq]".into(),
            got: ishape,
        });
    }
    Ok(Tokens { batch: ishape[0], seq: ishape[1], input_ids, target_ids, source: f.path })
}

/// Write `tensors` (and string metadata) to `path` atomically: the bytes go
/// to a temporary file beside it, which is then renamed over `path`.
pub fn save(path: &Path, tensors: &[(String, HostTensor)], metadata: Option<HashMap<String, String>>) -> Result<(), WeightsError> {
    let bytes: Vec<(String, Vec<u8>)> = tensors.iter().map(|(n, t)| (n.clone(), t.data.bytes())).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, t), (_, b))| {
            safetensors::tensor::TensorView::new(t.data.dtype(), t.shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| WeightsError::Serialize { path: path.to_path_buf(), msg: format!("`{n}`: {e}") })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let buf = safetensors::serialize(views, metadata).map_err(|e| WeightsError::Serialize { path: path.to_path_buf(), msg: e.to_string() })?;
    write_atomic(path, &buf)
}

/// Write `bytes` to `path` whole (see [`crate::outfile::write_atomic`]: a
/// regular file through an unnamed temporary and a rename, a device or FIFO
/// written through, a symlink followed).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WeightsError> {
    crate::outfile::write_atomic(path, bytes).map_err(|err| WeightsError::Write { path: path.to_path_buf(), err })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgc_ir::{Init, QuantSpec};

    /// A file in a folder of its own per test name: tests run in parallel and
    /// one checks that its folder holds no leftover temporaries.
    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pgc-weights-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    fn p(name: &str, shape: &[usize]) -> ParamInfo {
        ParamInfo { name: name.into(), shape: shape.to_vec(), quant: QuantSpec::default(), init: Init::Zeros, origin: None }
    }

    #[test]
    fn params_round_trip_and_errors_name_the_tensor() {
        let path = tmp("w.safetensors");
        let ts = vec![
            ("param.a".to_string(), HostTensor::new(vec![2, 2], HostData::F32(vec![1., 2., 3., 4.]))),
            ("param.s".to_string(), HostTensor::new(vec![], HostData::F64(vec![0.5]))),
            ("ids".to_string(), HostTensor::new(vec![1], HostData::I32(vec![3]))),
        ];
        save(&path, &ts, None).unwrap();
        let got = load_params(&path, "param.", &[p("a", &[2, 2]), p("s", &[])]).unwrap();
        assert_eq!(got["a"], vec![1., 2., 3., 4.]);
        assert_eq!(got["s"], vec![0.5]);
        let e = load_params(&path, "param.", &[p("b", &[2])]).unwrap_err().to_string();
        assert!(e.contains("missing tensor `param.b`"), "{e}");
        let e = load_params(&path, "param.", &[p("a", &[4])]).unwrap_err().to_string();
        assert!(e.contains("`param.a`") && e.contains("[2, 2]") && e.contains("[4]"), "{e}");
        let e = load_params(&path, "", &[p("ids", &[1])]).unwrap_err().to_string();
        assert!(e.contains("`ids`") && e.contains("dtype i32"), "{e}");
        // nothing left behind but the file itself
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.iter().all(|n| !n.to_string_lossy().contains(".tmp-")), "{left:?}");
    }

    #[test]
    fn tokens_are_checked() {
        let path = tmp("t.safetensors");
        let ok = vec![
            ("input_ids".to_string(), HostTensor::new(vec![1, 3], HostData::I64(vec![1, 2, 3]))),
            ("target_ids".to_string(), HostTensor::new(vec![1, 3], HostData::I32(vec![2, 3, 9]))),
        ];
        save(&path, &ok, None).unwrap();
        let t = load_tokens(&path).unwrap();
        assert_eq!((t.batch, t.seq, t.input_ids.clone()), (1, 3, vec![1, 2, 3]));
        assert!(t.check_vocab(10).is_ok());
        let e = t.check_vocab(9).unwrap_err().to_string();
        assert!(e.contains("`target_ids`") && e.contains("token id 9 at [0, 2]"), "{e}");
        let bad = vec![
            ("input_ids".to_string(), HostTensor::new(vec![3], HostData::I32(vec![1, 2, 3]))),
            ("target_ids".to_string(), HostTensor::new(vec![1, 3], HostData::I32(vec![2, 3, 9]))),
        ];
        save(&path, &bad, None).unwrap();
        let e = load_tokens(&path).unwrap_err().to_string();
        assert!(e.contains("`input_ids`") && e.contains("rank 2"), "{e}");
        save(&path, &bad[1..], None).unwrap();
        let e = load_tokens(&path).unwrap_err().to_string();
        assert!(e.contains("missing tensor `input_ids`"), "{e}");
    }
}
