//! The kernel plan's tests (the real model's plan, randomly assembled models
//! end to end), one binary.

#[path = "../common/mod.rs"]
mod common;

mod model;
mod fuzz;
