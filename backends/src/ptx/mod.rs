//! PTX emission for sm_90a: a typed PTX builder and one emitter per kernel kind.
//!
//! * [`builder`]: typed registers (`.pred/.b16/.b32/.b64/.f32`), instructions
//!   as values checked against their types when pushed, guards, labels,
//!   structured if-then and counted loops, parameters, static / dynamic
//!   (`extern`) shared and `.local` arrays, vector loads and stores,
//!   `cp.async`, `ldmatrix`, `mma.sync`, `red`; the text is rendered in one
//!   place ([`builder::Module::render`]: `.version 8.0`, `.target sm_90a`).
//! * [`gemm`]: GEMMs `C = op(A) @ op(B)` in the model's three training
//!   layouts (and the fourth), bf16 on tensor cores (`mma.sync` m16n8k16,
//!   `ldmatrix`, a `cp.async` multi-stage pipeline) or f32 FFMA, any M, N, K,
//!   optional split-K; tile shapes are a [`gemm::TileConfig`].
//! * [`epilogue`]: the fused epilogue as serializable data
//!   ([`epilogue::EpiStep`]: row/column scale, bias, relu², relu² gradient,
//!   residual add, auxiliary stores; output f32 or bf16).
//! * [`program`]: the compiled program handed to the runtime: the PTX module
//!   of a plan and its ordered launches with symbolic arguments.
//! * [`ptxas`]: finding and running ptxas, parsing registers / spills /
//!   shared memory per kernel.
//! * [`testing`]: the GEMM test matrix, deterministic inputs and an f64
//!   reference (used by the tests under `tests/ptx_gemm*.rs`).

pub mod attention;
pub mod builder;
pub mod compile;
pub mod epilogue;
pub mod gemm;
pub mod kinds;
pub mod pointwise;
pub mod program;
pub mod ptxas;
pub mod testing;

pub use builder::{Kernel, KernelBuilder, Module};
pub use epilogue::{ElemType, EpiStep, Epilogue};
pub use gemm::{emit_gemm, AStore, BStore, GemmConfig, GemmKernel, GemmLayout, Precision, TileConfig};
