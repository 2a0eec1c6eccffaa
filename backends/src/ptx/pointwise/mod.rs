//! The PTX side of the scalar kernel IR ([`crate::scalar`]).
//!
//! * [`lower`]: the expressions as PTX, each emitted once per binding of its
//!   free variables, loop invariants hoisted, reductions warp-cooperative
//!   where the warp agrees on the row;
//! * [`epi`]: the generic GEMM epilogue step (a scalar program per output
//!   element of a GEMM);
//! * [`GraphExprs`] / [`BufArg`]: the scalar IR's graph builder with buffers
//!   bound to launch arguments.

pub mod epi;
pub mod lower;

use super::program::ArgRef;

/// The values of a kernel's nodes as scalar expressions, buffers bound to launch arguments.
pub type GraphExprs<'g> = crate::scalar::graph::GraphExprs<'g, ArgRef>;
/// What a buffer of a PTX kernel's expressions is bound to.
pub type BufArg = crate::scalar::graph::BufArg<ArgRef>;
