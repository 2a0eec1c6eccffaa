//! `pgc compile`.

use super::{CliResult, Failure};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct CompileArgs {
    /// The model source (.pgdsl).
    pub model: PathBuf,
    /// Override a model constant, e.g. `--set layers=9`. Repeatable.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
    /// Output directory for model.ir.json, report.json (and later plan.json, model.ptx).
    #[arg(short = 'o', long = "out")]
    pub out: Option<PathBuf>,
}

pub fn run(args: CompileArgs) -> CliResult {
    let _sets = super::parse_sets(&args.sets)?;
    Err(Failure::Other(anyhow::anyhow!("the frontend is being written; {} not compiled", args.model.display())))
}
