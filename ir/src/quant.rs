//! Quantization annotations carried by parameters: how a tensor is stored in
//! the artifact, how it is fake-quantized while training, how much is pruned.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How a parameter is stored in the exported artifact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "class", rename_all = "snake_case")]
pub enum StorageClass {
    /// Signed integers of `bits` (2..=8) per row with an f16 scale per row;
    /// `clip_percentile` (e.g. 99.99984) clips each row's range before scaling.
    Int { bits: u32, clip_percentile: Option<f64> },
    F16,
    F32,
}

impl StorageClass {
    /// Bytes in the raw (uncompressed) artifact for a tensor of this shape:
    /// packed values plus f16 row scales for the integer classes.
    pub fn raw_bytes(&self, shape: &[usize]) -> u64 {
        let n: u64 = shape.iter().map(|&d| d as u64).product();
        match self {
            StorageClass::F16 => 2 * n,
            StorageClass::F32 => 4 * n,
            StorageClass::Int { bits, .. } => {
                let rows = if shape.len() >= 2 { shape[0] as u64 } else { 1 };
                (n * *bits as u64).div_ceil(8) + 2 * rows
            }
        }
    }
    /// Short name used in reports: `int4`, `f16`, `f32`.
    pub fn label(&self) -> String {
        match self {
            StorageClass::Int { bits, .. } => format!("int{bits}"),
            StorageClass::F16 => "f16".into(),
            StorageClass::F32 => "f32".into(),
        }
    }
}

/// Quantization-aware training of a parameter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Qat {
    None,
    /// Per-row fake quantization to `bits` in train mode, straight-through gradient.
    Ste { bits: u32 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantSpec {
    pub storage: StorageClass,
    pub qat: Qat,
    /// Fraction (0..1) of the smallest-magnitude values zeroed before export.
    pub prune: f64,
}

impl Default for QuantSpec {
    fn default() -> Self {
        QuantSpec { storage: StorageClass::F32, qat: Qat::None, prune: 0.0 }
    }
}

impl fmt::Display for StorageClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageClass::Int { bits, clip_percentile: None } => write!(f, "int{bits}"),
            StorageClass::Int { bits, clip_percentile: Some(p) } => write!(f, "int{bits}(clip={p:?})"),
            StorageClass::F16 => f.write_str("f16"),
            StorageClass::F32 => f.write_str("f32"),
        }
    }
}

impl fmt::Display for Qat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Qat::None => f.write_str("none"),
            Qat::Ste { bits } => write!(f, "ste{bits}"),
        }
    }
}

/// Training initialisation of a parameter (spec/MODEL.md, "Initialisation").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Init {
    Zeros,
    /// Every element equal to `value`.
    Constant { value: f64 },
    /// Row r filled with `values[r]` (e.g. resid_mix = (1, 0)).
    Rows { values: Vec<f64> },
    Normal { std: f64 },
    /// Orthogonal matrix (rows or columns orthonormal), times `gain`.
    Orthogonal { gain: f64 },
    /// Uniform in [-bound, bound) (PyTorch's default for a linear weight:
    /// bound = 1 / sqrt(fan_in)).
    Uniform { bound: f64 },
}

impl fmt::Display for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Init::Zeros => f.write_str("zeros"),
            Init::Constant { value } => write!(f, "const({value:?})"),
            Init::Rows { values } => {
                f.write_str("rows(")?;
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{v:?}")?;
                }
                f.write_str(")")
            }
            Init::Normal { std } => write!(f, "normal({std:?})"),
            Init::Orthogonal { gain } => write!(f, "orthogonal({gain:?})"),
            Init::Uniform { bound } => write!(f, "uniform({bound:?})"),
        }
    }
}
