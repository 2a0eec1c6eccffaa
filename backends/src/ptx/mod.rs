//! PTX emission for sm_90a. Data flows one way through these modules:
//! [`compile`] walks a kernel plan and hands each kernel to its plan adapter
//! ([`adapters`], sharing [`ctx`]); adapters call the plan-independent
//! templates ([`templates`]: GEMM, attention, epilogue) and the scalar kernel
//! IR ([`crate::scalar`], lowered by [`pointwise`]); everything emits through the typed [`builder`];
//! the result is a [`program::Program`].
//!
//! * [`builder`]: typed registers (`.pred/.b16/.b32/.b64/.f32`), instructions
//!   as values checked against their types when pushed, guards, labels,
//!   structured if-then and counted loops, parameters, static / dynamic
//!   (`extern`) shared and `.local` arrays, vector loads and stores,
//!   `cp.async`, `ldmatrix`, `mma.sync`, `red`, and Hopper's `mbarrier`,
//!   TMA (`cp.async.bulk.tensor`, tensor-map parameters), `fence.proxy.async`,
//!   `wgmma`, `elect`, `setmaxnreg`, `stmatrix`, counted named barriers; the
//!   text is rendered in one place ([`builder::Module::render`]: `.version
//!   8.0`, `.target sm_90a`).
//! * [`compile`]: the entry point, plan -> program ([`compile::PtxOptions`]:
//!   the GEMM path).
//! * [`ctx`]: the state and error type the adapters share.
//! * [`adapters`]: one per plan kernel kind, and their shared toolkit.
//! * [`templates`]: GEMM (mma.sync, and the warp-specialized TMA + wgmma
//!   path), attention and epilogue emitters, configured by data.
//! * [`pointwise`]: the scalar kernel IR ([`crate::scalar`]: expressions of
//!   graph values at a multi-index) lowered to PTX, and the GEMM's pointwise
//!   epilogue step.
//! * [`program`]: the compiled program handed to the runtime: its entries
//!   (name, parameter signature, text) and its ordered launches with
//!   symbolic arguments (pointers, scalars, tensor maps over pointers).
//! * [`ptxas`]: finding and running ptxas, parsing registers / spills /
//!   shared memory per kernel.
//!
//! The GEMM test matrix (configurations, inputs, an f64 reference) is test
//! support, not API: it lives in `tests/common/gemm_matrix.rs`.

pub mod adapters;
pub mod builder;
pub mod compile;
pub mod ctx;
pub mod pointwise;
pub mod program;
pub mod ptxas;
pub mod templates;

pub use builder::{Kernel, KernelBuilder, Module};
pub use templates::epilogue::{DType, EpiStep, Epilogue};
pub use templates::gemm::{emit_gemm, AStore, BStore, GemmConfig, GemmKernel, GemmLayout, Precision, TileConfig};
