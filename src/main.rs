//! `pgc`, the parameter-golf compiler. The CLI contract is in
//! ../shared/spec/DESIGN.md ("The command line contract"); each subcommand
//! lives in its own module under `src/cli/`.

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "pgc",
    version,
    about = "The parameter-golf compiler: .pgdsl models to fused sm_90a PTX, with a CPU reference",
    long_about = "pgc lowers a model written in .pgdsl to a typed graph IR with quantization \
annotations, derives the backward pass, fuses the graph into kernels and emits PTX for \
H100 (sm_90a). A CPU backend computes the same program as the reference.\n\n\
Exit status: 0 success, 1 a check failed, 2 bad input."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// No progress bars (they are only drawn when stderr is a terminal).
    #[arg(long, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Compile a model: IR, report (parameters, storage, FLOPs, per-kernel floors), kernel plans, PTX (train and eval) and ptxas figures.
    Compile(cli::compile::CompileArgs),
    /// Run a forward (and backward) pass: loss, logits and gradients to a safetensors file.
    Run(cli::run::RunArgs),
    /// Check the PTX program on a device (sim or cuda) against the CPU backend (f64): relative error per tensor.
    Verify(cli::verify::VerifyArgs),
    /// Time the PTX program on a CUDA GPU: per kernel against its floor, and the whole step.
    Bench(cli::bench::BenchArgs),
    /// Kernel performance without a GPU: simulator counters on sampled blocks of every launch, a per-kernel estimate, a roofline.
    Profile(cli::profile::ProfileArgs),
    /// Export the parameters as a quantized, zstd-22 compressed artifact (.pgz).
    Export(cli::export::ExportArgs),
    /// Show an artifact: per tensor class, shape, raw and compressed bytes; the total against the budget.
    Inspect(cli::inspect::InspectArgs),
    /// Bits per byte on token shards: sliding-window evaluation.
    Eval(cli::eval::EvalArgs),
    /// Train: the record's optimizer (Muon, AdamW, clipping, SWA) and schedule around the compiled forward and backward pass.
    Train(Box<cli::train::TrainArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::progress::set_quiet(cli.quiet);
    let result = match cli.command {
        Command::Compile(a) => cli::compile::run(a),
        Command::Run(a) => cli::run::run(a),
        Command::Verify(a) => cli::verify::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Profile(a) => cli::profile::run(a),
        Command::Export(a) => cli::export::run(a),
        Command::Inspect(a) => cli::inspect::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Train(a) => cli::train::run(*a),
    };
    cli::finish(result)
}
