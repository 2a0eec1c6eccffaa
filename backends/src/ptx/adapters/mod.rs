//! Plan adapters: one per plan kernel kind. Each reads its plan kernel
//! (ops, inputs, outputs, storage) and calls the plan-independent templates
//! (`templates/`: GEMM, attention, epilogue) or the toolkit's fused launches.
//!
//! * [`toolkit`]: what the adapters share: fused launches of grid-stride
//!   sections, operands and output targets;
//! * [`fused`]: element-wise, row-wise, reduction, gather, scatter, cross
//!   entropy and weight preparation (one launch of grid-stride sections);
//! * [`gemm`]: matrix products with prologue and epilogue;
//! * [`lm_head`]: the LM head GEMM with softcap and cross entropy in its epilogues;
//! * [`attention`]: flash attention forward and backward.

pub mod attention;
pub mod fused;
pub mod gemm;
pub mod lm_head;
pub mod toolkit;
