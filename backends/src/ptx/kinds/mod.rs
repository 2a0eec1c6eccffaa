//! One emitter per plan kernel kind.
//!
//! * [`fused`]: element-wise, row-wise, reduction, gather, scatter, cross
//!   entropy and weight preparation (one launch of grid-stride sections);
//! * [`gemm`]: matrix products with prologue and epilogue, and the LM head;
//! * [`attention`]: flash attention forward and backward.

pub mod attention;
pub mod fused;
pub mod gemm;
