//! One emitter per plan kernel kind.
//!
//! * [`fused`]: element-wise, row-wise, reduction, gather, scatter, cross
//!   entropy and weight preparation (one launch of grid-stride sections);
//! * [`gemm`]: matrix products with prologue and epilogue;
//! * [`lm_head`]: the LM head GEMM with softcap and cross entropy in its epilogues;
//! * [`attention`]: flash attention forward and backward.

pub mod attention;
pub mod fused;
pub mod gemm;
pub mod lm_head;
