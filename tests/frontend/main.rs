//! The frontend's tests (.pgdsl cases, `pgc compile` end to end), one binary.

#[path = "../common/mod.rs"]
mod common;

mod cases;
mod cli;
