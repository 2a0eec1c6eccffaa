//! Element types and static tensor types.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Element type of a tensor, the one vocabulary of the whole compiler: graph
/// values, plan storage, kernel buffers and GEMM/attention operands.
///
/// Float tensors are `F32` in the graph: the graph states *what* is computed;
/// the precision it is computed in (f64 reference, f32, bf16 tensor cores) is
/// an execution choice made by each backend. `Bf16` is a storage type: the
/// plan stores values and kernels read operands in it (the verifier rejects
/// it in a graph).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    Bf16,
    I32,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::I32 => "i32",
        }
    }
    pub fn parse(s: &str) -> Option<DType> {
        match s {
            "f32" => Some(DType::F32),
            "bf16" => Some(DType::Bf16),
            "i32" => Some(DType::I32),
            _ => None,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::Bf16)
    }
    /// Bytes of one element in memory.
    pub fn bytes(self) -> u32 {
        match self {
            DType::Bf16 => 2,
            DType::F32 | DType::I32 => 4,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A static shape; `[]` is a scalar.
pub type Shape = Vec<usize>;

/// Number of elements of a shape (1 for a scalar).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorType {
    pub fn new(dtype: DType, shape: impl Into<Shape>) -> Self {
        TensorType { dtype, shape: shape.into() }
    }
    pub fn f32(shape: impl Into<Shape>) -> Self {
        Self::new(DType::F32, shape)
    }
    pub fn i32(shape: impl Into<Shape>) -> Self {
        Self::new(DType::I32, shape)
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Numpy-style broadcast of two shapes (right-aligned), or None if incompatible.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Shape> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// True when `from` broadcasts to `to` (numpy rules, `to` fixed).
pub fn broadcasts_to(from: &[usize], to: &[usize]) -> bool {
    from.len() <= to.len() && broadcast_shapes(from, to).as_deref() == Some(to)
}

/// How kernels compute: bf16 operands on tensor cores with fp32
/// accumulation, or all fp32 (the plan's precision, and a GEMM's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Bf16,
    F32,
}

impl Precision {
    /// Bytes of one operand element (bf16: 2, f32: 4).
    pub fn elem_bytes(self) -> u32 {
        match self {
            Precision::Bf16 => 2,
            Precision::F32 => 4,
        }
    }
}
