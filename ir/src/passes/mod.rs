//! Graph-to-graph passes. Each has a name (for `--dump-after NAME`).

pub mod autodiff;
