//! pgc's graph IR.
//!
//! A [`Graph`] is a list of typed nodes in topological order over parameters
//! (with quantization annotations) and run-time inputs, plus named outputs.
//! It is built by the frontend's lowering, checked by [`verify`], printed and
//! parsed by [`text`], serialized with serde, and transformed by the passes in
//! [`passes`].

pub mod graph;
pub mod op;
pub mod quant;
pub mod types;
pub mod verify;

pub use graph::{Graph, GraphError, Mode, Node, Origin, ParamInfo, ValueId};
pub use op::{AttnPart, BinaryFn, Op, ParamId, ReduceFn, TypeError, UnaryFn};
pub use quant::{Init, Qat, QuantSpec, StorageClass};
pub use types::{broadcast_shapes, numel, DType, Shape, TensorType};
pub use verify::verify;
pub mod passes;
pub mod plan;
pub mod report;
pub mod text;
