//! The scalar kernel IR both code generators lower: what one element of a
//! kernel computes, with no target in it.
//!
//! * [`expr`]: a hash-consed DAG of scalar expressions (u32 index arithmetic,
//!   float math in the arena's precision, predicates, loads, reductions),
//!   simplified as it is built;
//! * [`ops`]: the scalar meaning of each element-wise graph op (unary,
//!   binary, leaky relu, constants), written once;
//! * [`graph`]: the value of any IR node at a multi-index as such an
//!   expression, recursively through a kernel's ops (index maps of layout
//!   ops, broadcasts, reductions), for the PTX kinds.
//!
//! Lowerings: `ptx::pointwise::lower` (PTX; loop-invariant hoisting, warp
//! reductions) and `cpu::plan_exec::jit` (cranelift, per row element, scalar
//! and 4-lane vector). This module imports neither.
//!
//! # Adding a unary op (checklist)
//!
//! Library files, in order (four):
//! 1. `ir/src/op.rs`: the [`pgc_ir::UnaryFn`] variant, its entry in
//!    `UnaryFn::ALL`, its mnemonic in `UnaryFn::name` (the text-form name and
//!    the DSL builtin; the frontend and the IR parser look names up there)
//!    and its f64 value in `UnaryFn::eval` (the frontend folds numbers with it);
//! 2. `ir/src/passes/autodiff.rs`: its derivative (and the rule table in the
//!    module doc);
//! 3. `backends/src/cpu/ops.rs`: `unary_fn`, the reference, in the working
//!    precision;
//! 4. `backends/src/scalar/ops.rs`: [`ops::unary`], the same steps as
//!    scalar expressions (the PTX kinds and the CPU JIT lower them; keep the
//!    operation order of `unary_fn`, the JIT is bitwise the interpreter).
//!
//! Only when the op needs a float primitive that [`expr::F1`] lacks (rather
//! than composing existing ones): the `F1` variant in `scalar/expr.rs`, its
//! PTX in `ptx/pointwise/lower.rs` (`Lower::f1`) and its cranelift in
//! `cpu/plan_exec/jit.rs` (`Emitter::f1`).
//!
//! Docs: the builtin table of `frontend/LANGUAGE.md`.
//!
//! Tests: add the op with its domain to `tests/ir/gradcheck.rs::unary_ops`
//! (autodiff against finite differences) and to the DSL of
//! `tests/ptx/kinds.rs::math_functions_one_by_one` (the PTX simulator
//! against the CPU backend); `tests/cpu/unary_ops.rs` runs every
//! `UnaryFn::ALL` on the interpreter (against `UnaryFn::eval`) and on the
//! CPU plan executor (cranelift, bitwise the interpreter in f32 and f64) on
//! NaN, infinities, signed zeros and a sweep, with no edit.

pub mod expr;
pub mod graph;
pub mod ops;

/// What the scalar IR cannot express for a kernel (an op or an index the
/// code generators do not handle there).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScalarError {
    #[error("{0}")]
    Unsupported(String),
}
