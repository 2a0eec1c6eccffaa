//! Subcommands and the error convention shared by all of them.

pub mod bench;
pub mod compile;
pub mod eval;
pub mod export;
pub mod inspect;
pub mod profile;
pub mod progress;
pub mod run;
pub mod train;
pub mod verify;

use std::process::ExitCode;

/// How a subcommand failed; decides the exit status.
#[derive(Debug)]
pub enum Failure {
    /// Bad input (model text, weights, tokens, flags): exit 2. The message is
    /// already formatted for the terminal (diagnostics included).
    BadInput(String),
    /// A check ran and failed (e.g. `verify`): exit 1.
    CheckFailed(String),
    /// Anything else (I/O on outputs, internal errors): exit 2 with context.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl From<pgc::pipeline::PipelineError> for Failure {
    fn from(e: pgc::pipeline::PipelineError) -> Self {
        use pgc::pipeline::PipelineError as E;
        match e {
            E::Input(m) => Failure::BadInput(format!("error: {m}")),
            E::Diagnostics(m) => Failure::BadInput(m),
            E::Internal(m) => Failure::Other(anyhow::anyhow!(m)),
        }
    }
}

pub type CliResult = Result<(), Failure>;

pub fn finish(result: CliResult) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BadInput(msg)) => {
            eprintln!("{}", msg.trim_end());
            ExitCode::from(2)
        }
        Err(Failure::CheckFailed(msg)) => {
            eprintln!("{}", msg.trim_end());
            ExitCode::from(1)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Parse `--set NAME=VALUE` flags into pairs (the model decides what names exist).
pub fn parse_sets(sets: &[String]) -> Result<Vec<(String, String)>, Failure> {
    sets.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => Err(Failure::BadInput(format!("error: --set expects NAME=VALUE, got `{s}`"))),
        })
        .collect()
}
