//! The scalar code generator shared by every kernel kind.
//!
//! * [`expr`]: a hash-consed DAG of scalar expressions (u32 index arithmetic,
//!   f32 math, predicates, loads, reductions), simplified as it is built;
//! * [`graph`]: the value of any IR node at a multi-index as such an
//!   expression, recursively through the kernel's ops (the demand-driven part);
//! * [`lower`]: the expressions as PTX, each emitted once per binding of its
//!   free variables, loop invariants hoisted, reductions warp-cooperative
//!   where the warp agrees on the row.

pub mod epi;
pub mod expr;
pub mod graph;
pub mod lower;
