//! The compiler pipeline as a library, one entry per stage of DESIGN.md:
//!
//! | stage | entry |
//! |---|---|
//! | text -> graph | [`source::read_model`], [`source::ModelSource::lower`] |
//! | graph -> graph with the backward pass | [`source::with_backward`] |
//! | what a run starts from (graph, weights, tokens) | [`inputs::prepare`] |
//! | graph -> kernel plan | [`ptx::plan`] (PTX backend), `pgc_backends::cpu::plan_exec::plan_for` (CPU) |
//! | plan -> PTX program | [`ptx::compile`] |
//! | program -> outputs on a device | [`ptx::execute`] |
//! | graph -> outputs on the CPU | [`cpu::execute`]; the bf16 yardstick [`cpu::execute_yardstick`] |
//! | plan -> floors at the card's peaks | [`roofline`] |
//!
//! The `pgc` subcommands parse flags and call these; the training loop
//! calls them too. Errors are [`PipelineError`]: bad input (the binary's
//! exit 2) apart from internal failures.

pub mod checks;
pub mod cpu;
pub mod inputs;
pub mod ptx;
pub mod roofline;
pub mod source;

/// How a stage failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Bad input (model constants, weights, tokens, options), one line.
    #[error("{0}")]
    Input(String),
    /// DSL diagnostics, already rendered for the terminal (positions, source lines).
    #[error("{0}")]
    Diagnostics(String),
    /// Anything else: an internal error of a stage, or I/O on outputs.
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

pub(crate) fn input(msg: impl std::fmt::Display) -> PipelineError {
    PipelineError::Input(msg.to_string())
}

pub(crate) fn internal(msg: impl std::fmt::Display) -> PipelineError {
    PipelineError::Internal(msg.to_string())
}
