//! `pgc run`: one forward (and backward) pass of a model on a backend.
//!
//! The model is lowered with `batch` and `seq` taken from the tokens; in
//! train mode (or eval with `--grads`) the autodiff pass appends the
//! backward graph. OUT gets `loss` ([1]), `logits` ([B, T, vocab]) and
//! `grad.NAME` per parameter, in f64 when the precision is f64, else f32,
//! written atomically: a failed run leaves no output file.
//!
//! `--backend sim` plans the graph for the PTX backend (only the fusion rules
//! it supports, `--precision bf16` or `f32`), compiles the plan to a PTX
//! program and runs it on the PTX simulator through the program executor
//! (`pgc_runtime::exec`, the one the CUDA runtime shares). `--backend cuda`
//! runs the same program through the same executor on the first GPU
//! (`CudaDevice::new(0)`); without a GPU or driver it exits 2 with the
//! driver's message and writes nothing.
//!
//! `--dump-inputs FILE` also writes the parameters (f32, spec names) and the
//! `input_ids`/`target_ids` the run used, e.g. for PyTorch to recompute.

use super::export::ParamSource;
use super::{CliResult, Failure};
use pgc::pipeline::cpu::CpuExecutor;
use pgc::pipeline::inputs::{self, RunInputs, RunSpec, TokenSource, WeightSource};
use pgc::pipeline::{cpu, ptx};
use pgc_ir::{plan, Mode};
use pgc_runtime::sim::SimDevice;
use pgc_runtime::weights::{self, HostData};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    Train,
    Eval,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The CPU backend on the kernel plan (cranelift-compiled element-wise kernels).
    Cpu,
    /// The unfused CPU reference interpreter (the oracle).
    Interp,
    /// The plan's PTX kernels on the PTX simulator (precision bf16 or f32).
    Sim,
    /// The plan's PTX kernels on the first CUDA GPU (precision bf16 or f32).
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
/// What `pgc run` computes in: f64 (cpu/interp only) besides the plan's two
/// precisions (`pgc_ir::types::Precision`), which `ptx_precision` maps to.
pub enum RunPrecision {
    F64,
    F32,
    /// sim and cuda: bf16 tensor-core kernels with fp32 accumulation. cpu and
    /// interp: the bf16 yardstick, the reference interpreter in f32 rounding to
    /// bf16 exactly where PyTorch's bf16 autocast does (what `pgc verify` judges
    /// bf16 kernels against; docs/PRECISION.md).
    Bf16,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The model source (.pgdsl).
    pub model: PathBuf,
    /// Override a model constant, e.g. `--set layers=9`. Repeatable. `batch` and `seq` come from the tokens.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
    #[command(flatten)]
    pub params: ParamSource,
    /// Token file with `input_ids` and `target_ids` (int32, [B, T]).
    #[arg(long, value_name = "T.safetensors", required_unless_present = "random_tokens", conflicts_with = "random_tokens")]
    pub tokens: Option<PathBuf>,
    /// Random tokens, seeded, instead of a token file (needs --batch; --seq defaults to the model's `seq`).
    #[arg(long, value_name = "SEED", requires = "batch")]
    pub random_tokens: Option<u64>,
    /// Batch size of the random tokens.
    #[arg(long, value_name = "B", requires = "random_tokens")]
    pub batch: Option<usize>,
    /// Sequence length of the random tokens.
    #[arg(long, value_name = "T", requires = "random_tokens")]
    pub seq: Option<usize>,
    /// train: fake-quantized QAT weights and gradients; eval: plain weights, loss and logits.
    #[arg(long, value_enum)]
    pub mode: ModeArg,
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: Backend,
    /// Working precision [default: f64 on the cpu backend, bf16 on sim and cuda;
    /// bf16 on cpu/interp is PyTorch's bf16 autocast emulated].
    #[arg(long, value_enum)]
    pub precision: Option<RunPrecision>,
    /// Output file (safetensors).
    #[arg(long, value_name = "OUT.safetensors")]
    pub out: PathBuf,
    /// Also compute and write the gradients in eval mode.
    #[arg(long)]
    pub grads: bool,
    /// Print the time spent per op kind.
    #[arg(long)]
    pub profile: bool,
    /// Run the pass N times (cpu and interp backends) and report the first
    /// and the fastest run: the first pays for fresh memory and cold caches,
    /// later ones run as a training loop's steps do. The outputs written are
    /// the last run's.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeat: u32,
    /// With --random-weights: give every parameter the initialisation leaves all zero (the
    /// zero-initialised projections) seeded normal values / sqrt(fan-in), so every gradient is non-trivial.
    #[arg(long, requires = "random_weights")]
    pub dense_weights: bool,
    /// Also write the parameters (f32, spec names) and tokens used to this safetensors file.
    #[arg(long, value_name = "FILE.safetensors")]
    pub dump_inputs: Option<PathBuf>,
    /// Run even when a weight is NaN or infinite (refused by default: the loss would be NaN).
    #[arg(long)]
    pub allow_nonfinite: bool,
}

impl RunArgs {
    /// The run these flags describe.
    pub(crate) fn spec(&self) -> Result<RunSpec, Failure> {
        let tokens = match (&self.tokens, self.random_tokens) {
            (Some(t), _) => TokenSource::File(t.clone()),
            (None, Some(seed)) => TokenSource::Random { seed, batch: self.batch.unwrap_or(1), seq: self.seq },
            (None, None) => return Err(bad("one of --tokens or --random-tokens is required")),
        };
        let weights = match (&self.params.weights, self.params.random_weights) {
            (Some(w), _) => WeightSource::File { path: w.clone(), prefix: self.params.weights_prefix.clone() },
            (None, Some(seed)) => WeightSource::Random { seed, dense: self.dense_weights },
            (None, None) => return Err(bad("one of --weights or --random-weights is required")),
        };
        Ok(RunSpec { model: self.model.clone(), sets: super::parse_sets(&self.sets)?, tokens, weights, mode: self.mode.into(), grads: self.grads, allow_nonfinite: self.allow_nonfinite })
    }
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Train => Mode::Train,
            ModeArg::Eval => Mode::Eval,
        }
    }
}

/// Open the CUDA device, or a bad-input failure naming why not (no GPU, no driver).
pub(crate) fn open_cuda(command: &str) -> Result<pgc_runtime::cuda::CudaDevice, Failure> {
    pgc_runtime::cuda::CudaDevice::new(0).map_err(|e| bad(format!("backend `cuda` is not available here ({command} needs a CUDA GPU): {e}")))
}

fn bad(msg: impl std::fmt::Display) -> Failure {
    Failure::BadInput(format!("error: {msg}"))
}

/// The plan precision of a PTX backend run.
pub(crate) fn ptx_precision(p: RunPrecision) -> plan::Precision {
    if p == RunPrecision::Bf16 {
        plan::Precision::Bf16
    } else {
        plan::Precision::F32
    }
}

pub fn run(args: RunArgs) -> CliResult {
    let t_start = Instant::now();
    let precision = args.precision.unwrap_or(match args.backend {
        Backend::Cpu | Backend::Interp => RunPrecision::F64,
        Backend::Sim | Backend::Cuda => RunPrecision::Bf16,
    });
    match (args.backend, precision) {
        (Backend::Sim | Backend::Cuda, RunPrecision::F64) => {
            return Err(bad("precision f64 is for the cpu backend; the sim and cuda backends run the PTX kernels in bf16 or f32"));
        }
        _ => {}
    }
    if args.repeat > 1 && matches!(args.backend, Backend::Sim | Backend::Cuda) {
        return Err(bad("--repeat is for the cpu and interp backends; time the GPU kernels with `pgc bench`"));
    }
    // Open the GPU first: without one, fail before any work and write nothing.
    let cuda = if args.backend == Backend::Cuda { Some(open_cuda("pgc run")?) } else { None };
    let RunInputs { graph, values, tokens, with_grads, mode } = inputs::prepare(&args.spec()?)?;
    let elem = if precision == RunPrecision::F64 { 8 } else { 4 };
    pgc::pipeline::checks::check_memory("this run (parameters and its largest activation)", pgc::pipeline::checks::run_memory(&graph, elem))?;
    let t_prep = t_start.elapsed().as_secs_f64();
    if let Some(path) = &args.dump_inputs {
        inputs::dump_inputs(path, &graph, &values, &tokens)?;
    }
    let bar = super::progress::Progress::lazy("kernel launches");
    let result = match (args.backend, precision) {
        (Backend::Sim, p) => {
            let dev = SimDevice::new();
            ptx::execute(&dev, Some(&dev), &graph, &values, &tokens, with_grads, ptx_precision(p), args.profile, &mut |d, t| bar.set_total(d, t))?
        }
        (Backend::Cuda, p) => {
            let dev = cuda.as_ref().expect("opened above");
            ptx::execute(dev, None, &graph, &values, &tokens, with_grads, ptx_precision(p), args.profile, &mut |d, t| bar.set_total(d, t))?
        }
        (_, RunPrecision::Bf16) => cpu::execute_yardstick(&graph, &values, &tokens, with_grads, args.profile, args.repeat)?,
        (b, RunPrecision::F64) => cpu::execute::<f64>(&graph, &values, &tokens, with_grads, args.profile, HostData::F64, cpu_executor(b), args.repeat)?,
        (b, _) => cpu::execute::<f32>(&graph, &values, &tokens, with_grads, args.profile, HostData::F32, cpu_executor(b), args.repeat)?,
    };
    drop(bar);
    weights::save(&args.out, &result.tensors, None).map_err(|e| Failure::Other(e.into()))?;
    println!(
        "loss {:.10} ({} mode, {} backend, {} precision, batch {} seq {}, {} parameters)",
        result.loss,
        mode.name(),
        format!("{:?}", args.backend).to_lowercase(),
        format!("{precision:?}").to_lowercase(),
        tokens.batch,
        tokens.seq,
        graph.param_count()
    );
    println!(
        "time: {} {:.3} s (setup {:.3} s, total {:.3} s); wrote {}",
        if with_grads { "forward+backward" } else { "forward" },
        result.seconds,
        t_prep,
        t_start.elapsed().as_secs_f64(),
        args.out.display()
    );
    if let Some(d) = &result.device_note {
        println!("{d}");
    }
    if let Some(p) = result.profile {
        print!("{p}");
    }
    Ok(())
}

fn cpu_executor(b: Backend) -> CpuExecutor {
    if b == Backend::Cpu {
        CpuExecutor::Plan
    } else {
        CpuExecutor::Interpreter
    }
}
