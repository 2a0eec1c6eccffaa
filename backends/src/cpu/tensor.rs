//! Host tensors of the CPU backend: a shape and shared, immutable storage.

use super::real::Real;
use pgc_ir::{DType, Shape};
use std::sync::Arc;

/// DType of a tensor: floats in the working precision, or i32 token ids.
#[derive(Clone, Debug)]
pub enum Buf<F> {
    F(Arc<Vec<F>>),
    I(Arc<Vec<i32>>),
}

/// A dense row-major tensor. Cloning shares the storage (reshape is free).
#[derive(Clone, Debug)]
pub struct Tensor<F> {
    pub shape: Shape,
    pub buf: Buf<F>,
}

impl<F: Real> Tensor<F> {
    /// A float tensor; panics if `data.len()` does not match `shape`.
    pub fn float(shape: impl Into<Shape>, data: Vec<F>) -> Self {
        let shape = shape.into();
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor data does not match shape {shape:?}");
        Tensor { shape, buf: Buf::F(Arc::new(data)) }
    }
    /// An i32 tensor; panics if `data.len()` does not match `shape`.
    pub fn int(shape: impl Into<Shape>, data: Vec<i32>) -> Self {
        let shape = shape.into();
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor data does not match shape {shape:?}");
        Tensor { shape, buf: Buf::I(Arc::new(data)) }
    }
    /// A float tensor from f64 values, converted to the working precision.
    pub fn from_f64(shape: impl Into<Shape>, data: &[f64]) -> Self {
        Self::float(shape, data.iter().map(|&v| F::from_f64(v)).collect())
    }
    pub fn zeros(shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        let n = shape.iter().product();
        Self::float(shape, vec![F::ZERO; n])
    }
    pub fn dtype(&self) -> DType {
        match self.buf {
            Buf::F(_) => DType::F32,
            Buf::I(_) => DType::I32,
        }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn as_float(&self) -> Option<&[F]> {
        match &self.buf {
            Buf::F(v) => Some(v),
            Buf::I(_) => None,
        }
    }
    pub fn as_int(&self) -> Option<&[i32]> {
        match &self.buf {
            Buf::I(v) => Some(v),
            Buf::F(_) => None,
        }
    }
    /// The float data; the graph was verified, so a float operand is float.
    pub(crate) fn f(&self) -> &[F] {
        self.as_float().expect("internal: float operand expected (graph was verified)")
    }
    pub(crate) fn i(&self) -> &[i32] {
        self.as_int().expect("internal: i32 operand expected (graph was verified)")
    }
    /// The float data as a vector, without copying when the storage is not shared.
    pub fn into_float_vec(self) -> Vec<F> {
        match self.buf {
            Buf::F(v) => Arc::try_unwrap(v).unwrap_or_else(|v| (*v).clone()),
            Buf::I(v) => v.iter().map(|&x| F::from_f64(x as f64)).collect(),
        }
    }
    /// Owned float storage when this tensor holds the only reference.
    pub(crate) fn try_take(self) -> Result<Vec<F>, Tensor<F>> {
        match self.buf {
            Buf::F(v) => Arc::try_unwrap(v).map_err(|v| Tensor { shape: self.shape, buf: Buf::F(v) }),
            b => Err(Tensor { shape: self.shape, buf: b }),
        }
    }
    /// Values as f64, whatever the storage.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.buf {
            Buf::F(v) => v.iter().map(|x| x.to_f64()).collect(),
            Buf::I(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }
    pub(crate) fn with_shape(self, shape: Shape) -> Self {
        Tensor { shape, buf: self.buf }
    }
}
