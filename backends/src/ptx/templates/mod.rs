//! Plan-independent kernel templates: each takes a configuration (shapes,
//! layouts, tile sizes, precision, a fused epilogue as data) and emits
//! kernels with the builder; none reads the kernel plan. The plan adapters
//! (`adapters/`) choose the configurations.
//!
//! * [`gemm`]: GEMMs `C = op(A) @ op(B)` in the model's training layouts,
//!   bf16 on tensor cores (`mma.sync` m16n8k16, `ldmatrix`, a `cp.async`
//!   multi-stage pipeline) or f32 FFMA, any M, N, K, optional split-K;
//! * [`gemm_wgmma`]: the Hopper path of the bf16 GEMMs (TMA, mbarriers,
//!   a producer warpgroup and two `wgmma` consumer warpgroups);
//! * [`epilogue`]: the fused epilogue as serializable data;
//! * [`attention`]: flash attention forward and backward (mma.sync or FFMA),
//!   and the q/k preparation row kernels;
//! * [`optim`]: the optimizer step (AdamW, Muon with Newton-Schulz GEMMs, SWA).

pub mod attention;
pub mod epilogue;
pub mod gemm;
pub mod gemm_wgmma;
pub mod optim;
