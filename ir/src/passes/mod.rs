//! Graph-to-graph passes. Each has a name (for `--dump-after NAME`).
//!
//! - [`autodiff`]: append the backward graph of a scalar loss (`grad.NAME` outputs).
//! - [`dce`]: drop nodes no output depends on.

pub mod autodiff;
pub mod dce;
