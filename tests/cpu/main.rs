//! The CPU backend's tests (golden files, the plan executor, every unary op),
//! one binary.

#[path = "../common/mod.rs"]
mod common;

mod golden;
mod plan_exec;
mod unary_ops;
