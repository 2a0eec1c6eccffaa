//! `pgc train`: the record's training loop (TRAINING.md) on a backend.
//!
//! The cpu backend runs the compiled forward and backward pass (the plan
//! executor) and the optimizer in exact f64 or f32 (`pgc::train`). sim and
//! cuda training, bf16, validation (`--val`, `--tokenizer`) and `--export`
//! are not implemented yet: they stop with a message and exit 2.
//!
//! `--steps N` ends the run after its step N (counted from the start of the
//! run, also when resuming), as an interruption would; the schedule still
//! follows `iterations` and the clock. With `--checkpoint DIR` the state is
//! written there when the run stops (and every `--checkpoint-every` steps);
//! `--resume DIR` continues it, bit for bit on cpu.

use super::{CliResult, Failure};
use pgc::pipeline::inputs::WeightSource;
use pgc::train::{self, checkpoint, trajectory, Hyper, StepInfo, TokenStream, TrainSpec, Trainer};
use pgc_backends::cpu::Real;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TrainBackend {
    Cpu,
    Sim,
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TrainPrecision {
    F64,
    F32,
    Bf16,
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The model source (.pgdsl).
    pub model: PathBuf,
    /// Override a model constant, e.g. `--set layers=2`. Repeatable. `batch` comes from --batch.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
    /// Initial parameters: one tensor per parameter, named PREFIX + NAME (f32 or f64).
    #[arg(long, value_name = "W", required_unless_present_any = ["random_weights", "resume"], conflicts_with = "random_weights")]
    pub weights: Option<PathBuf>,
    /// Prefix of the parameter tensors in the weights file (`param0.` for the golden trajectories).
    #[arg(long, value_name = "P", default_value = "", requires = "weights")]
    pub weights_prefix: String,
    /// The model's training initialisation, seeded, instead of a weights file.
    #[arg(long, value_name = "SEED")]
    pub random_weights: Option<u64>,
    /// FineWeb train shards (`fineweb_train_*.bin`), one stream in name order.
    #[arg(long, value_name = "GLOB", required_unless_present = "tokens", conflicts_with = "tokens")]
    pub data: Option<String>,
    /// Validation shards (not implemented yet).
    #[arg(long, value_name = "GLOB", requires = "data")]
    pub val: Option<String>,
    /// SentencePiece model for the bits-per-byte of --val (not implemented yet).
    #[arg(long, value_name = "SP.model", requires = "val")]
    pub tokenizer: Option<PathBuf>,
    /// A token stream: safetensors with a 1-D int32 `tokens` tensor.
    #[arg(long, value_name = "T.safetensors")]
    pub tokens: Option<PathBuf>,
    /// A hyperparameter (TRAINING.md section 1, or a key of the golden files' `train` metadata). Repeatable.
    #[arg(long = "hp", value_name = "NAME=VALUE")]
    pub hps: Vec<String>,
    /// Sequences per micro-batch.
    #[arg(long, value_name = "B")]
    pub batch: usize,
    #[arg(long, value_enum)]
    pub backend: TrainBackend,
    /// Working precision [default: f64].
    #[arg(long, value_enum, default_value = "f64")]
    pub precision: TrainPrecision,
    /// Stop after step N of the run, as an interruption would (leaves a checkpoint with --checkpoint).
    #[arg(long, value_name = "N")]
    pub steps: Option<u64>,
    /// The training-time cap in minutes (sets max_wallclock_seconds; the LR warmdown then runs by clock).
    #[arg(long, value_name = "M")]
    pub minutes: Option<f64>,
    /// Write checkpoints to DIR (atomically) when the run stops.
    #[arg(long, value_name = "DIR")]
    pub checkpoint: Option<PathBuf>,
    /// Also write a checkpoint every N steps (needs --checkpoint).
    #[arg(long, value_name = "N", requires = "checkpoint")]
    pub checkpoint_every: Option<u64>,
    /// Continue the run checkpointed in DIR (same flags as the run that wrote it).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Write the trajectory (golden layout, TRAINING.md section 14) to this safetensors file.
    #[arg(long, value_name = "OUT.safetensors")]
    pub trajectory: Option<PathBuf>,
    /// Export the trained weights as a .pgz artifact (not implemented yet).
    #[arg(long, value_name = "OUT.pgz")]
    pub export: Option<PathBuf>,
    /// A JSON summary on stdout instead of the text one.
    #[arg(long)]
    pub json: bool,
}

fn bad(msg: impl std::fmt::Display) -> Failure {
    Failure::BadInput(format!("error: {msg}"))
}

/// The hyperparameters the flags describe: the record's, then each `--hp`, then `--minutes`.
fn hyper(args: &TrainArgs) -> Result<Hyper, Failure> {
    let mut hp = Hyper::default();
    for s in &args.hps {
        let (k, v) = s.split_once('=').ok_or_else(|| bad(format!("--hp expects NAME=VALUE, got `{s}`")))?;
        hp.set(k.trim(), v).map_err(bad)?;
    }
    if let Some(m) = args.minutes {
        if !(m.is_finite() && m > 0.0) {
            return Err(bad(format!("--minutes {m}: expected a positive number of minutes")));
        }
        hp.max_wallclock_seconds = 60.0 * m;
    }
    Ok(hp)
}

pub fn run(args: TrainArgs) -> CliResult {
    match args.backend {
        TrainBackend::Cpu => {}
        b => return Err(bad(format!("backend `{}` is not yet supported for training (use --backend cpu)", format!("{b:?}").to_lowercase()))),
    }
    for (given, what) in [(args.val.is_some(), "--val"), (args.tokenizer.is_some(), "--tokenizer"), (args.export.is_some(), "--export")] {
        if given {
            return Err(bad(format!("{what} is not yet supported by pgc train")));
        }
    }
    let hp = hyper(&args)?;
    if let Some(n) = args.steps {
        if n == 0 || n > hp.iterations {
            return Err(bad(format!("--steps {n}: the run has steps 1..={} (iterations)", hp.iterations)));
        }
    }
    let weights = match (&args.weights, args.random_weights) {
        (Some(w), _) => WeightSource::File { path: w.clone(), prefix: args.weights_prefix.clone() },
        (None, Some(seed)) => WeightSource::Random { seed, dense: false },
        // Resuming: the checkpoint holds the weights; the model's own init only fills the shapes.
        (None, None) => WeightSource::Random { seed: hp.seed, dense: false },
    };
    let tokens = match (&args.tokens, &args.data) {
        (Some(t), _) => TokenStream::File(t.clone()),
        (None, Some(d)) => TokenStream::Shards(d.clone()),
        (None, None) => return Err(bad("one of --tokens or --data is required")),
    };
    let spec = TrainSpec { model: args.model.clone(), sets: super::parse_sets(&args.sets)?, weights, tokens, batch: args.batch, hp };
    match args.precision {
        TrainPrecision::F64 => go::<f64>(&args, &spec),
        TrainPrecision::F32 => go::<f32>(&args, &spec),
        TrainPrecision::Bf16 => Err(bad("precision bf16 is for the sim and cuda backends, which do not train yet; the cpu backend trains in f64 or f32")),
    }
}

fn go<F: Real>(args: &TrainArgs, spec: &TrainSpec) -> CliResult {
    let t_start = Instant::now();
    let setup = train::prepare(spec)?;
    let mut t = Trainer::<F>::new(setup)?;
    if let Some(dir) = &args.resume {
        checkpoint::resume(dir, &mut t)?;
    }
    let start_step = t.state.step;
    let stop_at = args.steps.unwrap_or(u64::MAX);
    let t_setup = t_start.elapsed().as_secs_f64();
    let (mut seconds, mut last) = (0.0, None::<StepInfo>);
    while !t.finished() && t.state.step < stop_at {
        let info = t.step()?;
        seconds += info.seconds;
        let n = info.step;
        let last_one = t.finished() || n >= stop_at;
        if n == start_step + 1 || last_one || (t.hp.train_log_every > 0 && n % t.hp.train_log_every == 0) {
            eprintln!("{}", progress_line(&t, &info, seconds, n - start_step, stop_at));
        }
        if let (Some(dir), Some(every)) = (&args.checkpoint, args.checkpoint_every) {
            if every > 0 && n % every == 0 && !last_one {
                checkpoint::save(dir, &t)?;
            }
        }
        last = Some(info);
    }
    if let Some(dir) = &args.checkpoint {
        checkpoint::save(dir, &t)?;
    }
    if let Some(path) = &args.trajectory {
        trajectory::write(path, &t)?;
    }
    let st = &t.state;
    let steps_here = st.step - start_step;
    let tok_s = if seconds > 0.0 { (steps_here * t.tokens_per_step()) as f64 / seconds } else { 0.0 };
    let loss = last.as_ref().map(|i| i.loss).or_else(|| st.record.loss.last().copied());
    if args.json {
        let v = serde_json::json!({
            "steps": st.step,
            "steps_this_run": steps_here,
            "finished": t.finished(),
            "loss": loss,
            "swa_count": st.swa.count,
            "swa_applied": st.swa.count > 1,
            "train_seconds": seconds,
            "tokens_per_second": tok_s,
            "setup_seconds": t_setup,
            "backend": "cpu",
            "precision": F::NAME,
            "checkpoint": args.checkpoint.as_ref().map(|d| checkpoint::file(d).display().to_string()),
            "trajectory": args.trajectory.as_ref().map(|p| p.display().to_string()),
        });
        println!("{v}");
    } else {
        println!(
            "trained {} step{} ({} of {} in this run{}), last loss {}, SWA {} snapshot{}; {:.3} s training ({:.0} tokens/s), setup {:.3} s",
            st.step,
            if st.step == 1 { "" } else { "s" },
            steps_here,
            t.hp.iterations,
            if t.finished() { ", finished" } else { ", interrupted" },
            loss.map_or("-".to_string(), |l| format!("{l:.6}")),
            st.swa.count,
            if st.swa.count == 1 { "" } else { "s" },
            seconds,
            tok_s,
            t_setup
        );
        if let Some(d) = &args.checkpoint {
            println!("checkpoint: {}", checkpoint::file(d).display());
        }
        if let Some(p) = &args.trajectory {
            println!("trajectory: {}", p.display());
        }
    }
    Ok(())
}

/// `step N/M loss L lr_scale S tokens/s R eta E`: the ETA from the mean step
/// time of this run, to the step limit (or `--steps`) or the clock's cap.
fn progress_line<F: Real>(t: &Trainer<F>, info: &StepInfo, seconds: f64, steps_here: u64, stop_at: u64) -> String {
    let target = t.hp.iterations.min(stop_at);
    let per_step = seconds / steps_here.max(1) as f64;
    let mut eta = target.saturating_sub(info.step) as f64 * per_step;
    if t.hp.by_clock() {
        eta = eta.min((t.hp.max_wallclock_seconds - t.elapsed_ms() / 1000.0).max(0.0));
    }
    let tok_s = if per_step > 0.0 { info.tokens as f64 / per_step } else { 0.0 };
    format!(
        "step {}/{} loss {:.6} lr_scale {:.4} muon_momentum {:.4} grad_norm {:.4e} tokens/s {:.0} eta {:.1}s",
        info.step, target, info.loss, info.lr_scale, info.muon_momentum, info.grad_norm, tok_s, eta
    )
}
