//! `pgc train`: the record's training loop (TRAINING.md) on a backend.
//!
//! The cpu backend runs the compiled forward and backward pass (the plan
//! executor) and the optimizer in exact f64 or f32 (`pgc::train`). The sim
//! and cuda backends run the PTX program of the step and the optimizer as
//! generated kernels (`pgc::train::device`), in f32 or bf16 (the record's
//! precision: bf16 tensor-core GEMMs and Newton-Schulz, f32 masters), with
//! the state kept in device memory.
//!
//! `--val GLOB --tokenizer SP.model` measures the validation bpb (TRAINING.md
//! section 9: the split cut to whole `seq` rows plus one token, non-overlapping
//! rows, eval mode, `pgc eval`'s code on the CPU in f64) before the first step,
//! every `val_loss_every` steps and after the last; its time is outside the
//! training clock. `--export OUT.pgz` ends the run as section 12 says: SWA,
//! pruning, the artifact (`pgc export`'s code, written atomically) and, with
//! `--val`, the roundtrip evaluation of the artifact read back (sliding
//! windows, `eval_stride`, `eval_batch_seqs`).
//!
//! `--steps N` ends the run after its step N (counted from the start of the
//! run, also when resuming), as an interruption would; the schedule still
//! follows `iterations` and the clock. With `--checkpoint DIR` the state is
//! written there when the run stops (and every `--checkpoint-every` steps);
//! `--resume DIR` continues it, bit for bit on cpu.

use super::eval::{bits_per_byte, Bpb};
use super::{CliResult, Failure};
use pgc_ir::Mode;
use pgc_runtime::artifact;
use pgc_runtime::data::{self, ByteTable};
use pgc::pipeline::inputs::WeightSource;
use pgc::train::{self, checkpoint, trajectory, Hyper, StepInfo, TokenStream, TrainSpec, Trainer};
use pgc::train::device::DeviceProgram;
use pgc_backends::cpu::Real;
use pgc_ir::types::Precision;
use pgc_runtime::device::Device;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
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
    /// Validation shards (`fineweb_val_*.bin`), one stream in name order (needs --tokenizer).
    #[arg(long, value_name = "GLOB", requires_all = ["data", "tokenizer"])]
    pub val: Option<String>,
    /// SentencePiece model for the bits per byte of --val.
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
    /// Where the step runs: the CPU reference, the PTX simulator, or a CUDA GPU.
    #[arg(long, value_enum)]
    pub backend: TrainBackend,
    /// Working precision [default: f64 on cpu, bf16 on sim and cuda]. cpu: f64 or f32; sim, cuda: f32 or bf16.
    #[arg(long, value_enum)]
    pub precision: Option<TrainPrecision>,
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
    /// At the end: SWA, pruning, export to this .pgz artifact and (with --val) its roundtrip evaluation.
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
    let device = args.backend != TrainBackend::Cpu;
    let precision = args.precision.unwrap_or(if device { TrainPrecision::Bf16 } else { TrainPrecision::F64 });
    match (args.backend, precision) {
        (TrainBackend::Cpu, TrainPrecision::Bf16) => return Err(bad("the cpu backend trains in f64 or f32; bf16 is for --backend sim or cuda")),
        (TrainBackend::Sim | TrainBackend::Cuda, TrainPrecision::F64) => return Err(bad("the sim and cuda backends train in f32 or bf16; f64 is for --backend cpu")),
        _ => {}
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
    let plan_precision = if precision == TrainPrecision::Bf16 { Precision::Bf16 } else { Precision::F32 };
    let dev: Option<(Box<dyn Device>, &str)> = match args.backend {
        TrainBackend::Cpu => None,
        TrainBackend::Sim => Some((Box::new(pgc_runtime::sim::SimDevice::new()), "sim")),
        TrainBackend::Cuda => Some((Box::new(super::run::open_cuda("pgc train")?), "cuda")),
    };
    match (precision, dev) {
        (TrainPrecision::F64, _) => go::<f64>(&args, &spec, None),
        (_, Some((d, name))) => go::<f32>(&args, &spec, Some((d, name, plan_precision))),
        (_, None) => go::<f32>(&args, &spec, None),
    }
}

/// The model in eval mode with the user's `--set` (what `pgc export` and
/// `pgc eval` lower with the same flags): validation and the artifact.
struct EvalModel {
    path: PathBuf,
    sets: Vec<(String, String)>,
    graph: pgc_ir::Graph,
    ir_hash: u64,
}

/// The validation split (`--val`) and the tokenizer's byte table.
struct Val {
    tokens: Vec<u16>,
    table: ByteTable,
    seq: usize,
}

impl Val {
    fn load(glob: &str, tokenizer: &Path, m: &EvalModel, seq: usize) -> Result<Val, Failure> {
        let vocab = m.graph.constant("vocab").ok_or_else(|| bad("the model has no `vocab` constant"))? as usize;
        let tokens = data::read_shards(glob).map_err(bad)?;
        if let Some(p) = tokens.iter().position(|&t| t as usize >= vocab) {
            return Err(bad(format!("--val {glob}: token {} at position {p} is outside the vocabulary 0..{vocab}", tokens[p])));
        }
        if tokens.len() < seq + 1 {
            return Err(bad(format!("--val {glob}: {} tokens; one validation row needs seq {seq} + 1", tokens.len())));
        }
        let table = ByteTable::load(tokenizer, vocab).map_err(bad)?;
        Ok(Val { tokens, table, seq })
    }

    /// Section 9: the split cut to whole rows of `seq` plus one token, in
    /// non-overlapping rows (windows of stride `seq`). The batch changes no
    /// value; the CPU runs `eval_batch_seqs` rows per forward to bound memory.
    fn during(&self, m: &EvalModel, hp: &Hyper, values: &HashMap<String, Vec<f64>>) -> Result<Bpb, Failure> {
        let rows = (self.tokens.len() - 1) / self.seq;
        let toks = &self.tokens[..rows * self.seq + 1];
        bits_per_byte(&m.path, &m.sets, values, toks, &self.table, self.seq, self.seq, hp.eval_batch_seqs.max(1) as usize, None)
    }

    /// Section 12 step 4: the whole split in sliding windows (`eval_stride`, `eval_batch_seqs` per batch).
    fn roundtrip(&self, m: &EvalModel, hp: &Hyper, values: &HashMap<String, Vec<f64>>) -> Result<Bpb, Failure> {
        let stride = (hp.eval_stride as usize).clamp(1, self.seq);
        bits_per_byte(&m.path, &m.sets, values, &self.tokens, &self.table, self.seq, stride, hp.eval_batch_seqs.max(1) as usize, None)
    }
}

fn by_name<F: Real>(names: &[String], weights: &[Vec<F>]) -> HashMap<String, Vec<f64>> {
    names.iter().zip(weights).map(|(n, w)| (n.clone(), w.iter().map(|x| x.to_f64()).collect())).collect()
}

/// A device to train on: the device, the backend's name, the program's precision.
type OnDevice<'n> = (Box<dyn Device>, &'n str, Precision);

fn go<F: Real>(args: &TrainArgs, spec: &TrainSpec, device: Option<OnDevice<'_>>) -> CliResult {
    let t_start = Instant::now();
    let setup = train::prepare(spec)?;
    let program;
    let mut t = match device {
        None => Trainer::<F>::new(setup)?,
        Some((dev, backend, precision)) => {
            program = DeviceProgram::new(dev, backend, &setup.graph, precision)?;
            Trainer::<F>::on_device(setup, &program)?
        }
    };
    if let Some(dir) = &args.resume {
        checkpoint::resume(dir, &mut t)?;
    }
    let eval_model = if args.val.is_some() || args.export.is_some() {
        let (graph, ir_hash) = super::export::compile(&spec.model, &spec.sets, Mode::Eval)?;
        Some(EvalModel { path: spec.model.clone(), sets: spec.sets.clone(), graph, ir_hash })
    } else {
        None
    };
    let val = match (&args.val, &args.tokenizer, &eval_model) {
        (Some(g), Some(tk), Some(m)) => Some(Val::load(g, tk, m, t.seq)?),
        _ => None,
    };
    let mut vals: Vec<(u64, Bpb)> = Vec::new();
    let mut validate = |t: &mut Trainer<F>| -> Result<String, Failure> {
        let (Some(v), Some(m)) = (&val, &eval_model) else { return Ok(String::new()) };
        t.sync()?;
        let t0 = Instant::now();
        let b = v.during(m, &t.hp, &by_name(&t.names, &t.state.params))?;
        let s = format!(" val_loss {:.6} val_bpb {:.6} ({:.1}s)", b.val_loss, b.val_bpb, t0.elapsed().as_secs_f64());
        vals.push((t.state.step, b));
        Ok(s)
    };
    let start_step = t.state.step;
    let stop_at = args.steps.unwrap_or(u64::MAX);
    let t_setup = t_start.elapsed().as_secs_f64();
    if start_step == 0 && val.is_some() {
        let v0 = validate(&mut t)?;
        eprintln!("step 0/{}{v0}", t.hp.iterations.min(stop_at));
    }
    let (mut seconds, mut opt_seconds, mut last) = (0.0, 0.0, None::<StepInfo>);
    while !t.finished() && t.state.step < stop_at {
        let info = t.step()?;
        seconds += info.seconds;
        opt_seconds += info.optimizer_seconds;
        let n = info.step;
        let last_one = t.finished() || n >= stop_at;
        // Validation happens between steps; Trainer::step measures only itself, so the clock excludes it.
        let val_here = last_one || (t.hp.val_loss_every > 0 && n % t.hp.val_loss_every == 0);
        let val_text = if val_here { validate(&mut t)? } else { String::new() };
        if n == start_step + 1 || last_one || !val_text.is_empty() || (t.hp.train_log_every > 0 && n % t.hp.train_log_every == 0) {
            eprintln!("{}{val_text}", progress_line(&t, &info, seconds, n - start_step, stop_at));
        }
        if let (Some(dir), Some(every)) = (&args.checkpoint, args.checkpoint_every) {
            if every > 0 && n % every == 0 && !last_one {
                checkpoint::save(dir, &mut t)?;
            }
        }
        last = Some(info);
    }
    if let Some(dir) = &args.checkpoint {
        checkpoint::save(dir, &mut t)?;
    }
    if let Some(path) = &args.trajectory {
        trajectory::write(path, &mut t)?;
    }
    t.sync()?;
    let exported = match (&args.export, &eval_model) {
        (Some(out), Some(m)) if t.finished() => Some(export(out, &t, m, val.as_ref())?),
        (Some(out), _) => {
            eprintln!("note: {} not written: the run stopped at step {} of {} (resume it to the end to export)", out.display(), t.state.step, t.hp.iterations);
            None
        }
        _ => None,
    };
    let st = &t.state;
    let steps_here = st.step - start_step;
    let tok_s = if seconds > 0.0 { (steps_here * t.tokens_per_step()) as f64 / seconds } else { 0.0 };
    let loss = last.as_ref().map(|i| i.loss).or_else(|| st.record.loss.last().copied());
    let val_json: Vec<_> = vals.iter().map(|(s, b)| json!({"step": s, "val_loss": b.val_loss, "val_bpb": b.val_bpb})).collect();
    if args.json {
        let v = json!({
            "steps": st.step,
            "steps_this_run": steps_here,
            "finished": t.finished(),
            "loss": loss,
            "swa_count": st.swa.count,
            "swa_applied": st.swa.count > 1,
            "train_seconds": seconds,
            "optimizer_seconds": opt_seconds,
            "tokens_per_second": tok_s,
            "setup_seconds": t_setup,
            "backend": format!("{:?}", args.backend).to_lowercase(),
            "precision": t.kind.split(' ').next_back().unwrap_or(F::NAME),
            "optimizer_launches": t.optimizer_launches(),
            "checkpoint": args.checkpoint.as_ref().map(|d| checkpoint::file(d).display().to_string()),
            "trajectory": args.trajectory.as_ref().map(|p| p.display().to_string()),
            "val": val_json,
            "val_bpb": vals.last().map(|(_, b)| b.val_bpb),
            "export": exported,
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
        if let Some((s, b)) = vals.last() {
            println!("val_loss {:.6} val_bpb {:.6} after step {s}", b.val_loss, b.val_bpb);
        }
        if let Some(d) = &args.checkpoint {
            println!("checkpoint: {}", checkpoint::file(d).display());
        }
        if let Some(p) = &args.trajectory {
            println!("trajectory: {}", p.display());
        }
    }
    Ok(())
}

/// Section 12: SWA (the trainer's final weights), pruning, the artifact
/// written atomically, then read back from disk and (with `--val`) evaluated.
/// Reported on stderr; returned for `--json`.
fn export<F: Real>(out: &Path, t: &Trainer<F>, m: &EvalModel, val: Option<&Val>) -> Result<serde_json::Value, Failure> {
    let mut values = by_name(&t.names, &t.final_weights());
    let mut pruned = 0usize;
    for (n, s) in t.names.iter().zip(&t.shapes) {
        pruned += train::prune::prune(values.get_mut(n).expect("a value per parameter"), train::prune::fraction(n, s));
    }
    // Pruned as section 12 says; the model's `prune` annotations (`pgc export`'s rule) would prune again.
    let params: Vec<_> = m.graph.params.iter().cloned().map(|mut p| {
        p.quant.prune = 0.0;
        p
    }).collect();
    let (bytes, art) = artifact::export(&params, &values, m.ir_hash, &m.graph.constants).map_err(bad)?;
    pgc_runtime::weights::write_atomic(out, &bytes).map_err(|e| Failure::Other(e.into()))?;
    let size = art.total_bytes;
    let within = size <= artifact::BUDGET_BYTES;
    eprintln!(
        "exported {}: {size} bytes ({} tensors, {pruned} weights pruned, SWA {}), {} the {} byte budget by {} bytes",
        out.display(),
        art.tensors.len(),
        if t.state.swa.count > 1 { format!("average of {} snapshots", t.state.swa.count) } else { "not applied".to_string() },
        if within { "under" } else { "OVER" },
        artifact::BUDGET_BYTES,
        size.abs_diff(artifact::BUDGET_BYTES)
    );
    let mut rt = None;
    if let Some(v) = val {
        let read = std::fs::read(out).map_err(|e| bad(format!("{}: {e}", out.display())))?;
        let back = artifact::load_bytes(&read).and_then(|a| artifact::params_from(a, &m.graph.params)).map_err(bad)?;
        let t0 = Instant::now();
        let b = v.roundtrip(m, &t.hp, &back)?;
        eprintln!(
            "roundtrip {}: val_loss {:.6} val_bpb {:.6} ({} tokens, {} bytes, stride {}; {:.1}s)",
            out.display(),
            b.val_loss,
            b.val_bpb,
            b.tokens,
            b.bytes,
            (t.hp.eval_stride as usize).clamp(1, v.seq),
            t0.elapsed().as_secs_f64()
        );
        rt = Some(b);
    }
    Ok(json!({
        "path": out.display().to_string(),
        "bytes": size,
        "budget_bytes": artifact::BUDGET_BYTES,
        "within_budget": within,
        "tensors": art.tensors.len(),
        "pruned": pruned,
        "swa_applied": t.state.swa.count > 1,
        "roundtrip_val_loss": rt.as_ref().map(|b| b.val_loss),
        "roundtrip_val_bpb": rt.as_ref().map(|b| b.val_bpb),
    }))
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
