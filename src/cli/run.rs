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

use super::{CliResult, Failure};
use pgc_backends::cpu::{self, Real, Tensor};
use pgc_backends::ptx::program::Program;
use pgc_ir::plan::{self, FusionRule, Plan, PlanOptions};
use pgc_ir::{Graph, Mode};
use pgc_runtime::device::Device;
use pgc_runtime::exec::Executor;
use pgc_runtime::sim::SimDevice;
use std::collections::BTreeSet;
use pgc_runtime::weights::{self, HostData, HostTensor, Tokens};
use std::collections::HashMap;
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
pub enum Precision {
    F64,
    F32,
    /// bf16 tensor-core kernels with fp32 accumulation (sim and cuda backends only).
    Bf16,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The model source (.pgdsl).
    pub model: PathBuf,
    /// Override a model constant, e.g. `--set layers=9`. Repeatable. `batch` and `seq` come from the tokens.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
    /// Parameters: one tensor per parameter, named PREFIX + NAME (f32 or f64).
    #[arg(long, value_name = "W.safetensors", required_unless_present = "random_weights", conflicts_with = "random_weights")]
    pub weights: Option<PathBuf>,
    /// Prefix of the parameter tensors in the weights file (e.g. `param.` for the golden files).
    #[arg(long, value_name = "P", default_value = "", requires = "weights")]
    pub weights_prefix: String,
    /// Use the model's training initialisation, seeded, instead of a weights file.
    #[arg(long, value_name = "SEED")]
    pub random_weights: Option<u64>,
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
    /// Working precision [default: f64 on the cpu backend, bf16 on sim and cuda].
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
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
    /// A run on seeded random weights and tokens (tokens seeded `seed + 1`), as
    /// `pgc verify` and `pgc bench` make them; nothing is written.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn random(
        model: PathBuf,
        sets: Vec<String>,
        seed: u64,
        batch: usize,
        seq: Option<usize>,
        mode: ModeArg,
        backend: Backend,
        precision: Precision,
        dense_weights: bool,
    ) -> Self {
        RunArgs {
            model,
            sets,
            weights: None,
            weights_prefix: String::new(),
            random_weights: Some(seed),
            tokens: None,
            random_tokens: Some(seed.wrapping_add(1)),
            batch: Some(batch),
            seq,
            mode,
            backend,
            precision: Some(precision),
            out: PathBuf::new(),
            grads: false,
            profile: false,
            repeat: 1,
            dense_weights,
            dump_inputs: None,
            allow_nonfinite: false,
        }
    }
}

/// What a run starts from: the graph (with the backward pass when gradients
/// are wanted), parameter values and tokens.
pub(crate) struct Prepared {
    pub graph: Graph,
    pub values: HashMap<String, Vec<f64>>,
    pub tokens: Tokens,
    pub with_grads: bool,
    pub mode: Mode,
}

/// Open the CUDA device, or a bad-input failure naming why not (no GPU, no driver).
pub(crate) fn open_cuda(command: &str) -> Result<pgc_runtime::cuda::CudaDevice, Failure> {
    pgc_runtime::cuda::CudaDevice::new(0).map_err(|e| bad(format!("backend `cuda` is not available here ({command} needs a CUDA GPU): {e}")))
}

fn bad(msg: impl std::fmt::Display) -> Failure {
    Failure::BadInput(format!("error: {msg}"))
}

pub fn run(args: RunArgs) -> CliResult {
    let t_start = Instant::now();
    let precision = args.precision.unwrap_or(match args.backend {
        Backend::Cpu | Backend::Interp => Precision::F64,
        Backend::Sim | Backend::Cuda => Precision::Bf16,
    });
    match (args.backend, precision) {
        (b @ (Backend::Cpu | Backend::Interp), Precision::Bf16) => {
            let name = format!("{b:?}").to_lowercase();
            return Err(bad(format!("precision bf16 is for the GPU backends (sim, cuda); the {name} backend computes in f64 or f32")));
        }
        (Backend::Sim | Backend::Cuda, Precision::F64) => {
            return Err(bad("precision f64 is for the cpu backend; the sim and cuda backends run the PTX kernels in bf16 or f32"));
        }
        _ => {}
    }
    if args.repeat > 1 && matches!(args.backend, Backend::Sim | Backend::Cuda) {
        return Err(bad("--repeat is for the cpu and interp backends; time the GPU kernels with `pgc bench`"));
    }
    // Open the GPU first: without one, fail before any work and write nothing.
    let cuda = if args.backend == Backend::Cuda { Some(open_cuda("pgc run")?) } else { None };
    let Prepared { graph, values, tokens, with_grads, mode } = prepare(&args)?;
    let elem = if precision == Precision::F64 { 8 } else { 4 };
    super::check_memory("this run (parameters and its largest activation)", super::run_memory(&graph, elem))?;
    let t_prep = t_start.elapsed().as_secs_f64();
    if let Some(path) = &args.dump_inputs {
        dump_inputs(path, &graph, &values, &tokens)?;
    }
    let result = match (args.backend, precision) {
        (Backend::Sim, p) => {
            let dev = SimDevice::new();
            execute_ptx(&dev, Some(&dev), &graph, &values, &tokens, with_grads, ptx_precision(p), args.profile)?
        }
        (Backend::Cuda, p) => {
            let dev = cuda.as_ref().expect("opened above");
            execute_ptx(dev, None, &graph, &values, &tokens, with_grads, ptx_precision(p), args.profile)?
        }
        (b, Precision::F64) => execute_on::<f64>(&graph, &values, &tokens, with_grads, args.profile, HostData::F64, b == Backend::Cpu, args.repeat)?,
        (b, _) => execute_on::<f32>(&graph, &values, &tokens, with_grads, args.profile, HostData::F32, b == Backend::Cpu, args.repeat)?,
    };
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

/// Replace every all-zero parameter by seeded normal values / sqrt(fan-in)
/// (fan-in: the last dimension), rounded to f32: the training initialisation
/// zero-initialises output projections, which would leave the gradients of
/// everything before them zero and so unchecked.
pub(crate) fn densify(params: &[pgc_ir::graph::ParamInfo], values: &mut HashMap<String, Vec<f64>>, seed: u64) {
    for p in params {
        let Some(v) = values.get_mut(&p.name) else { continue };
        if v.is_empty() || v.iter().any(|&x| x != 0.0) {
            continue;
        }
        let fan_in = if p.shape.len() >= 2 { *p.shape.last().unwrap() as f64 } else { 100.0 };
        let mut rng = pgc_runtime::init::Rng::new(seed ^ 0x5eed_de05, &format!("dense:{}", p.name));
        for x in v.iter_mut() {
            *x = (rng.normal() / fan_in.sqrt()) as f32 as f64;
        }
    }
}

pub(crate) fn ptx_precision(p: Precision) -> plan::Precision {
    if p == Precision::Bf16 {
        plan::Precision::Bf16
    } else {
        plan::Precision::F32
    }
}

/// Write the parameters (f32) and tokens a run uses (names as in the spec;
/// tokens `input_ids`, `target_ids` int32 [B, T]).
pub(crate) fn dump_inputs(path: &std::path::Path, graph: &Graph, values: &HashMap<String, Vec<f64>>, tokens: &Tokens) -> Result<(), Failure> {
    let mut tensors: Vec<(String, HostTensor)> = graph
        .params
        .iter()
        .map(|p| (p.name.clone(), HostTensor::new(p.shape.clone(), HostData::F32(values[&p.name].iter().map(|&x| x as f32).collect()))))
        .collect();
    let shape = vec![tokens.batch, tokens.seq];
    tensors.push(("input_ids".into(), HostTensor::new(shape.clone(), HostData::I32(tokens.input_ids.clone()))));
    tensors.push(("target_ids".into(), HostTensor::new(shape, HostData::I32(tokens.target_ids.clone()))));
    weights::save(path, &tensors, None).map_err(|e| Failure::Other(anyhow::anyhow!("writing {}: {e}", path.display())))
}

/// Read the model, tokens and parameters a run's flags name; lower the model
/// (with the backward pass in train mode or with `--grads`).
pub(crate) fn prepare(args: &RunArgs) -> Result<Prepared, Failure> {
    let mut sets = super::parse_sets(&args.sets)?;
    let path = args.model.display().to_string();
    let bytes = std::fs::read(&args.model).map_err(|e| bad(format!("cannot read {path}: {e}")))?;
    let source = String::from_utf8(bytes)
        .map_err(|e| bad(format!("{path}: not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to())))?;
    let mode = match args.mode {
        ModeArg::Train => Mode::Train,
        ModeArg::Eval => Mode::Eval,
    };
    let compile = |sets: &[(String, String)]| {
        super::lower_model(&source, &path, sets, mode)
    };

    // Tokens fix batch and seq.
    let tokens: Tokens = match (&args.tokens, args.random_tokens) {
        (Some(t), _) => weights::load_tokens(t).map_err(bad)?,
        (None, Some(seed)) => {
            let g = compile(&sets)?;
            let vocab = g.constant("vocab").ok_or_else(|| bad(format!("{path}: the model has no `vocab` constant for --random-tokens")))?;
            let batch = args.batch.unwrap_or(1);
            let seq = match args.seq {
                Some(s) => s,
                None => g.constant("seq").ok_or_else(|| bad(format!("{path}: the model has no `seq` constant; pass --seq")))? as usize,
            };
            if batch == 0 || seq == 0 {
                return Err(bad("--batch and --seq must be at least 1"));
            }
            super::check_memory(&format!("--batch {batch} --seq {seq} (the token ids alone)"), batch as u128 * seq as u128 * 8)?;
            let (input_ids, target_ids) = pgc_runtime::init::random_tokens(seed, batch, seq, vocab as u32);
            Tokens { batch, seq, input_ids, target_ids, source: PathBuf::from(format!("--random-tokens {seed}")) }
        }
        (None, None) => return Err(bad("one of --tokens or --random-tokens is required")),
    };
    for (name, val) in [("batch", tokens.batch), ("seq", tokens.seq)] {
        for (_, v) in sets.iter().filter(|(k, _)| k == name) {
            if v.parse::<usize>().ok() != Some(val) {
                return Err(bad(format!("--set {name}={v} disagrees with the tokens ({} has {name} {val})", tokens.source.display())));
            }
        }
        sets.retain(|(k, _)| k != name);
        sets.push((name.into(), val.to_string()));
    }
    let fwd = compile(&sets)?;
    if let Some(vocab) = fwd.constant("vocab") {
        tokens.check_vocab(vocab as usize).map_err(bad)?;
    }

    // Parameters.
    let values: HashMap<String, Vec<f64>> = match (&args.weights, args.random_weights) {
        (Some(w), _) => {
            let v = weights::load_params(w, &args.weights_prefix, &fwd.params).map_err(bad)?;
            super::warn_unused_tensors(w, &args.weights_prefix, &fwd.params);
            if !args.allow_nonfinite {
                super::check_finite(w, &fwd.params, &v)?;
            }
            v
        }
        (None, Some(seed)) => {
            super::check_memory("the parameters", fwd.params.iter().map(|p| p.numel() as u128 * 8).sum())?;
            let mut v = pgc_runtime::init::random_params(&fwd.params, seed).map_err(bad)?;
            if args.dense_weights {
                densify(&fwd.params, &mut v, seed);
            }
            v
        }
        (None, None) => return Err(bad("one of --weights or --random-weights is required")),
    };

    let with_grads = mode == Mode::Train || args.grads;
    let graph = if with_grads {
        pgc_ir::passes::autodiff::backward(&fwd, "loss").map_err(|e| Failure::Other(e.into()))?
    } else {
        fwd
    };
    Ok(Prepared { graph, values, tokens, with_grads, mode })
}

pub(crate) struct Outcome {
    pub loss: f64,
    pub seconds: f64,
    pub tensors: Vec<(String, HostTensor)>,
    pub profile: Option<String>,
    /// What the device did (simulator: launches, thread-instructions).
    pub device_note: Option<String>,
}

/// The names `pgc run` writes: loss, logits and (with gradients) grad.NAME per parameter.
pub(crate) fn output_names(graph: &Graph, with_grads: bool) -> Vec<String> {
    let mut names: Vec<String> = vec!["loss".into(), "logits".into()];
    if with_grads {
        names.extend(graph.params.iter().map(|p| format!("grad.{}", p.name)));
    }
    names
}

/// The fusion rules the PTX backend implements: plans for it use only these.
pub(crate) fn ptx_supported_rules() -> BTreeSet<FusionRule> {
    pgc_backends::ptx::compile::supported_rules()
}

/// Compile a plan to a PTX program (errors as text: e.g. a kernel kind with no emitter yet).
pub(crate) fn compile_ptx(g: &Graph, plan: &Plan) -> Result<Program, String> {
    pgc_backends::ptx::compile::compile_program(g, plan).map_err(|e| e.to_string())
}

/// The kernel plan for the PTX backend storing `outputs` (only the supported fusion rules).
pub(crate) fn ptx_plan(g: &Graph, precision: plan::Precision, outputs: &[String], disabled: &[FusionRule]) -> Result<Plan, Failure> {
    let mut opts = PlanOptions::all(g, precision);
    opts.rules = ptx_supported_rules().into_iter().filter(|r| !disabled.contains(r)).collect();
    opts.outputs = outputs.to_vec();
    plan::build(g, &opts).map_err(|e| Failure::Other(e.into()))
}

/// Plan, compile and run the graph's PTX program on `dev` (the simulator, or
/// a GPU); `sim` is the same device when it is the simulator, for its
/// thread-instruction counts.
#[allow(clippy::too_many_arguments)]
pub(crate) fn execute_ptx(
    dev: &dyn Device,
    sim: Option<&SimDevice>,
    graph: &Graph,
    values: &HashMap<String, Vec<f64>>,
    tokens: &Tokens,
    with_grads: bool,
    precision: plan::Precision,
    profile: bool,
) -> Result<Outcome, Failure> {
    let names = output_names(graph, with_grads);
    let plan = ptx_plan(graph, precision, &names, &[])?;
    let t_compile = Instant::now();
    let program = compile_ptx(graph, &plan).map_err(|e| bad(format!("the PTX backend cannot compile this model: {e}")))?;
    let compile_s = t_compile.elapsed().as_secs_f64();
    let internal = |e: pgc_runtime::exec::ExecError| Failure::Other(anyhow::anyhow!("{e}"));
    let t_load = Instant::now();
    let mut ex = Executor::new(dev, &program, graph).map_err(internal)?;
    set_executor_inputs(&mut ex, values, tokens)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let insts = || sim.map(|d| d.total_thread_instructions()).unwrap_or(0);
    let insts0 = insts();
    let t0 = Instant::now();
    let mut per_kernel: Vec<(f64, u64)> = vec![(0.0, 0); program.plan.kernels.len()];
    let bar = super::progress::Progress::new(ex.launch_count() as u64, "kernel launches");
    if profile {
        for i in 0..ex.launch_count() {
            bar.set(i as u64);
            let t = Instant::now();
            let before = insts();
            ex.launch_step(i).map_err(internal)?;
            dev.synchronize().map_err(|e| internal(pgc_runtime::exec::ExecError::Device { what: "synchronize".into(), source: e }))?;
            let k = program.launches[i].plan_kernel;
            per_kernel[k].0 += t.elapsed().as_secs_f64();
            per_kernel[k].1 += insts() - before;
        }
    } else {
        ex.run_with(&mut |done, _| bar.set(done as u64)).map_err(internal)?;
    }
    drop(bar);
    let seconds = t0.elapsed().as_secs_f64();
    let insts = insts() - insts0;

    let mut tensors = Vec::with_capacity(names.len());
    let mut loss = f64::NAN;
    for name in &names {
        let data = ex.read_output(name).map_err(internal)?;
        let v = graph.output(name).ok_or_else(|| bad(format!("the model has no output `{name}`")))?;
        let shape = if name == "loss" { vec![1] } else { graph.ty(v).shape.clone() };
        if name == "loss" {
            loss = data.first().copied().unwrap_or(f32::NAN) as f64;
        }
        tensors.push((name.clone(), HostTensor::new(shape, HostData::F32(data))));
    }
    let device_note = Some(match sim {
        Some(_) => format!(
            "sim: {} kernels, {} launches, {:.3e} thread-instructions, {:.3} s on the simulator ({} host threads); PTX compile {:.3} s, {} KiB of PTX",
            program.plan.kernels.len(),
            program.launches.len(),
            insts as f64,
            seconds,
            host_threads(),
            compile_s,
            program.ptx.len() / 1024
        ),
        None => format!(
            "{}: {} kernels, {} launches, {:.3} s on the device (first run: includes lazy work); PTX compile {:.3} s, {} KiB of PTX; module load (driver JIT) + upload {:.3} s",
            dev.name(),
            program.plan.kernels.len(),
            program.launches.len(),
            seconds,
            compile_s,
            program.ptx.len() / 1024,
            load_s
        ),
    });
    let profile = profile.then(|| {
        let mut order: Vec<usize> = (0..per_kernel.len()).collect();
        order.sort_by(|&a, &b| per_kernel[b].1.cmp(&per_kernel[a].1).then(per_kernel[b].0.total_cmp(&per_kernel[a].0)));
        let mut s = match sim {
            Some(_) => format!("{:<48} {:<18} {:>14} {:>10}\n", "kernel", "kind", "thread-insts", "wall s"),
            None => format!("{:<48} {:<18} {:>10}   (host wall time per kernel, synchronized)\n", "kernel", "kind", "wall s"),
        };
        for k in order {
            let kr = &program.plan.kernels[k];
            s += &match sim {
                Some(_) => format!("{:<48} {:<18} {:>14} {:>10.4}\n", kr.name, kr.kind.name(), per_kernel[k].1, per_kernel[k].0),
                None => format!("{:<48} {:<18} {:>10.6}\n", kr.name, kr.kind.name(), per_kernel[k].0),
            };
        }
        s
    });
    Ok(Outcome { loss, seconds, tensors, profile, device_note })
}

/// Upload the parameters (as f32 masters) and the token inputs.
pub(crate) fn set_executor_inputs(ex: &mut Executor<'_>, values: &HashMap<String, Vec<f64>>, tokens: &Tokens) -> Result<(), Failure> {
    let internal = |e: pgc_runtime::exec::ExecError| Failure::Other(anyhow::anyhow!("{e}"));
    let params: HashMap<String, Vec<f32>> = values.iter().map(|(k, v)| (k.clone(), v.iter().map(|&x| x as f32).collect())).collect();
    ex.set_params(&params).map_err(internal)?;
    for name in ex.input_names() {
        let ids = match name.as_str() {
            "input_ids" => &tokens.input_ids,
            "target_ids" => &tokens.target_ids,
            other => return Err(bad(format!("the model has an input `{other}`; pgc supplies only input_ids and target_ids"))),
        };
        ex.set_input(&name, ids).map_err(internal)?;
    }
    Ok(())
}

fn host_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Run on the CPU reference interpreter.
pub(crate) fn execute<F: Real>(
    graph: &Graph,
    values: &HashMap<String, Vec<f64>>,
    tokens: &Tokens,
    with_grads: bool,
    profile: bool,
    store: impl Fn(Vec<F>) -> HostData,
) -> Result<Outcome, Failure> {
    execute_on(graph, values, tokens, with_grads, profile, store, false, 1)
}

/// Run on the CPU plan executor (`on_plan`) or the reference interpreter,
/// `repeat` times (the time reported: the fastest run; the outputs: the last).
#[allow(clippy::too_many_arguments)]
fn execute_on<F: Real>(
    graph: &Graph,
    values: &HashMap<String, Vec<f64>>,
    tokens: &Tokens,
    with_grads: bool,
    profile: bool,
    store: impl Fn(Vec<F>) -> HostData,
    on_plan: bool,
    repeat: u32,
) -> Result<Outcome, Failure> {
    let params: HashMap<String, Tensor<F>> = graph
        .params
        .iter()
        .map(|p| (p.name.clone(), Tensor::from_f64(p.shape.clone(), &values[&p.name])))
        .collect();
    let shape = vec![tokens.batch, tokens.seq];
    let mut inputs = HashMap::new();
    inputs.insert("input_ids".to_string(), Tensor::<F>::int(shape.clone(), tokens.input_ids.clone()));
    inputs.insert("target_ids".to_string(), Tensor::<F>::int(shape, tokens.target_ids.clone()));
    let names = output_names(graph, with_grads);
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    // The plan executor: plan and cranelift compile first, reported apart from
    // the run (like the simulator's PTX compile).
    let mut notes = Vec::new();
    let compiled = if on_plan {
        let t0 = Instant::now();
        let rules = pgc_ir::plan::FusionRule::ALL.into_iter().collect();
        let plan = cpu::plan_exec::plan_for(graph, &rules, Some(&refs)).map_err(bad)?;
        let jit = cpu::plan_exec::jit::compile::<F>(graph, &plan.kernels).map_err(|e| bad(format!("compiling the plan's kernels: {e}")))?;
        let segments: usize = jit.segments.values().map(|s| s.len()).sum();
        notes.push(format!(
            "cpu: {} kernels; compiled with cranelift: {} whole kernels and {segments} element-wise/row-sum segments of others; plan + compile {:.3} s",
            plan.kernels.len(),
            jit.kernels.len(),
            t0.elapsed().as_secs_f64()
        ));
        Some((plan, jit))
    } else {
        None
    };
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..repeat {
        // The previous run's outputs are freed first, as in a training loop.
        drop(last.take());
        let t = Instant::now();
        let run = match &compiled {
            Some((plan, jit)) => cpu::plan_exec::execute_plan_with(graph, plan, &params, &inputs, Some(&refs), Some(jit)),
            None => cpu::execute(graph, &params, &inputs, Some(&refs)),
        }
        .map_err(bad)?;
        times.push(t.elapsed().as_secs_f64());
        last = Some(run);
    }
    let run = last.expect("repeat is at least 1");
    let seconds = times.iter().copied().fold(f64::INFINITY, f64::min);
    if times.len() > 1 {
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        notes.push(format!("{} runs: first {:.3} s, median {:.3} s, fastest {:.3} s (reported)", times.len(), times[0], sorted[sorted.len() / 2], seconds));
    }
    let device_note = (!notes.is_empty()).then(|| notes.join("\n"));
    let profile = profile.then(|| run.profile.render());
    drop(params);
    let loss = run.get("loss").map(|t| t.to_f64_vec()[0]).unwrap_or(f64::NAN);
    let tensors = run
        .outputs
        .into_iter()
        .map(|(name, t)| {
            let shape = if name == "loss" { vec![1] } else { t.shape.clone() };
            (name, HostTensor::new(shape, store(t.into_float_vec())))
        })
        .collect();
    Ok(Outcome { loss, seconds, tensors, profile, device_note })
}
