//! `pgc run`: one forward (and backward) pass of a model on a backend.
//!
//! The model is lowered with `batch` and `seq` taken from the tokens; in
//! train mode (or eval with `--grads`) the autodiff pass appends the
//! backward graph. OUT gets `loss` ([1]), `logits` ([B, T, vocab]) and
//! `grad.NAME` per parameter, in f64 when the precision is f64, else f32,
//! written atomically: a failed run leaves no output file.

use super::{CliResult, Failure};
use pgc_backends::cpu::{self, Real, Tensor};
use pgc_ir::{Graph, Mode};
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
    /// The CPU reference backend.
    Cpu,
    /// The PTX simulator (not available for `run` yet).
    Sim,
    /// CUDA on a GPU (not available for `run` yet).
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    F64,
    F32,
    /// bf16 tensor-core kernels (GPU backends only; not available yet).
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
    /// Working precision.
    #[arg(long, value_enum, default_value = "f64")]
    pub precision: Precision,
    /// Output file (safetensors).
    #[arg(long, value_name = "OUT.safetensors")]
    pub out: PathBuf,
    /// Also compute and write the gradients in eval mode.
    #[arg(long)]
    pub grads: bool,
    /// Print the time spent per op kind.
    #[arg(long)]
    pub profile: bool,
}

fn bad(msg: impl std::fmt::Display) -> Failure {
    Failure::BadInput(format!("error: {msg}"))
}

pub fn run(args: RunArgs) -> CliResult {
    let t_start = Instant::now();
    match args.backend {
        Backend::Cpu => {}
        other => {
            return Err(bad(format!("backend `{}` is not available for `pgc run` yet (use --backend cpu)", format!("{other:?}").to_lowercase())))
        }
    }
    if args.precision == Precision::Bf16 {
        return Err(bad("precision bf16 is for the GPU backends; the cpu backend computes in f64 or f32"));
    }
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
        pgc_frontend::compile_model(&source, &path, sets, mode).map_err(|d| Failure::BadInput(d.render(&source)))
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
        (Some(w), _) => weights::load_params(w, &args.weights_prefix, &fwd.params).map_err(bad)?,
        (None, Some(seed)) => pgc_runtime::init::random_params(&fwd.params, seed).map_err(bad)?,
        (None, None) => return Err(bad("one of --weights or --random-weights is required")),
    };

    let with_grads = mode == Mode::Train || args.grads;
    let graph = if with_grads {
        pgc_ir::passes::autodiff::backward(&fwd, "loss").map_err(|e| Failure::Other(e.into()))?
    } else {
        fwd
    };
    let t_prep = t_start.elapsed().as_secs_f64();
    let result = match args.precision {
        Precision::F64 => execute::<f64>(&graph, &values, &tokens, with_grads, args.profile, HostData::F64)?,
        _ => execute::<f32>(&graph, &values, &tokens, with_grads, args.profile, HostData::F32)?,
    };
    weights::save(&args.out, &result.tensors, None).map_err(|e| Failure::Other(e.into()))?;
    println!(
        "loss {:.10} ({} mode, {} precision, batch {} seq {}, {} parameters)",
        result.loss,
        mode.name(),
        if args.precision == Precision::F64 { "f64" } else { "f32" },
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
    if let Some(p) = result.profile {
        print!("{p}");
    }
    Ok(())
}

struct Outcome {
    loss: f64,
    seconds: f64,
    tensors: Vec<(String, HostTensor)>,
    profile: Option<String>,
}

fn execute<F: Real>(
    graph: &Graph,
    values: &HashMap<String, Vec<f64>>,
    tokens: &Tokens,
    with_grads: bool,
    profile: bool,
    store: impl Fn(Vec<F>) -> HostData,
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
    let mut names: Vec<String> = vec!["loss".into(), "logits".into()];
    if with_grads {
        names.extend(graph.params.iter().map(|p| format!("grad.{}", p.name)));
    }
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let t0 = Instant::now();
    let run = cpu::execute(graph, &params, &inputs, Some(&refs)).map_err(bad)?;
    let seconds = t0.elapsed().as_secs_f64();
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
    Ok(Outcome { loss, seconds, tensors, profile })
}
