//! `pgc eval`: bits per byte with sliding windows (not yet implemented).

use super::export::bad;
use super::CliResult;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// The model source (.pgdsl).
    pub model: PathBuf,
}

pub fn run(_args: EvalArgs) -> CliResult {
    Err(bad("pgc eval is not implemented yet"))
}
