//! The PTX backend's tests (GEMM and attention templates, every kernel kind,
//! ptxas checks, the golden files on the simulator), one binary; the
//! hand-written PTX data files of this folder belong to tests/sim.

#[path = "../common/mod.rs"]
mod common;

mod attention;
mod attention_ptxas;
mod gemm;
mod gemm_builder;
mod gemm_ptxas;
mod golden_sim;
mod kinds;
mod kinds_ptxas;
