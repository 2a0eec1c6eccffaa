//! pgc as a library: [`pipeline`] runs the compiler's stages (text -> graph
//! -> plan -> program -> execution) for the `pgc` subcommands and for
//! programs that drive them (the training loop).

pub mod pipeline;
pub mod train;
