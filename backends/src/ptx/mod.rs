//! PTX emission for sm_90a: a typed PTX builder and one emitter per kernel kind.
//!
//! * [`builder`]: typed registers, instructions, kernels and modules; the text
//!   is rendered in one place ([`builder::Module::render`]).
//! * [`gemm`]: GEMMs (bf16 tensor cores with `mma.sync`/`ldmatrix`/`cp.async`,
//!   or f32 FFMA) with fused epilogues ([`epilogue`]).
//! * [`ptxas`]: assembling with ptxas and reading its resource figures.

pub mod builder;
pub mod epilogue;
pub mod gemm;
pub mod ptxas;
pub mod testing;

pub use builder::{Kernel, KernelBuilder, Module};
pub use epilogue::{ElemType, EpiStep, Epilogue};
pub use gemm::{emit_gemm, AStore, BStore, GemmConfig, GemmKernel, GemmLayout, Precision, TileConfig};
