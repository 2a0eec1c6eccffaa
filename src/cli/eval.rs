//! `pgc eval`: bits per byte on FineWeb token shards with sliding windows
//! (spec/MODEL.md, "Evaluation"; windows as `pgc_runtime::data::windows`).
//! The model runs in eval mode on the CPU backend (f64) or as the PTX program
//! on the simulator or a CUDA GPU (bf16 kernels), `--batch` windows of `seq`
//! tokens per forward; the per-target NLL comes from the logits
//! (`logsumexp(z) - z[target]`) and only each window's scored targets count.
//! `bpb = (mean nll / ln 2) * (tokens / bytes)`.

use super::export::{bad, compile};
use super::{CliResult, Failure};
use pgc_backends::cpu::{self, Tensor};
use pgc_ir::plan::Precision;
use pgc_ir::{Graph, Mode};
use pgc_runtime::device::Device;
use pgc_runtime::exec::Executor;
use pgc_runtime::data::{self, ByteTable, Window};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EvalBackend {
    /// The CPU reference backend (f64).
    Cpu,
    /// The generated PTX (bf16 kernels) on the simulator.
    Sim,
    /// The generated PTX (bf16 kernels) on a CUDA GPU.
    Cuda,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// The model source (.pgdsl).
    pub model: PathBuf,
    /// Override a model constant, e.g. `--set layers=9`. Repeatable. `seq` is the window length.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
    #[command(flatten)]
    pub params: super::export::ParamSource,
    /// Token shards (wildcards in the file name), concatenated in name order.
    #[arg(long, value_name = "GLOB")]
    pub data: String,
    /// The SentencePiece model (.model) for the byte table.
    #[arg(long, value_name = "SP.model")]
    pub tokenizer: PathBuf,
    /// Targets scored per window (after the first).
    #[arg(long, value_name = "S", default_value_t = 64)]
    pub stride: usize,
    /// Windows per forward pass.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub batch: usize,
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: EvalBackend,
    /// Print a JSON object (val_loss, val_bpb, tokens, bytes).
    #[arg(long)]
    pub json: bool,
}

/// Sum of NLL over each window's scored targets (windows all of length `seq`
/// except possibly when there are fewer tokens), run `batch` windows at a time.
fn nll_sum(
    model: &std::path::Path,
    sets: &[(String, String)],
    values: &HashMap<String, Vec<f64>>,
    tokens: &[u16],
    wins: &[Window],
    batch: usize,
    device: Option<&dyn Device>,
) -> Result<f64, Failure> {
    let mut graphs: HashMap<(usize, usize), Graph> = HashMap::new();
    let mut params: Option<HashMap<String, Tensor<f64>>> = None;
    let mut total = 0.0;
    let bar = super::progress::Progress::new(wins.len() as u64, "eval windows");
    // group consecutive windows of the same length
    let mut i = 0;
    while i < wins.len() {
        let len = wins[i].len;
        let mut j = i;
        while j < wins.len() && j - i < batch && wins[j].len == len {
            j += 1;
        }
        let group = &wins[i..j];
        let b = group.len();
        if let std::collections::hash_map::Entry::Vacant(e) = graphs.entry((b, len)) {
            let mut s: Vec<(String, String)> = sets.iter().filter(|(k, _)| k != "batch" && k != "seq").cloned().collect();
            s.push(("batch".into(), b.to_string()));
            s.push(("seq".into(), len.to_string()));
            e.insert(compile(model, &s, Mode::Eval)?.0);
        }
        let g = &graphs[&(b, len)];
        let params = params.get_or_insert_with(|| {
            g.params.iter().map(|p| (p.name.clone(), Tensor::from_f64(p.shape.clone(), &values[&p.name]))).collect()
        });
        let mut inp = Vec::with_capacity(b * len);
        let mut tgt = Vec::with_capacity(b * len);
        for w in group {
            inp.extend(tokens[w.start..w.start + w.len].iter().map(|&t| t as i32));
            tgt.extend(tokens[w.start + 1..w.start + w.len + 1].iter().map(|&t| t as i32));
        }
        let mut inputs = HashMap::new();
        inputs.insert("input_ids".to_string(), Tensor::<f64>::int(vec![b, len], inp.clone()));
        inputs.insert("target_ids".to_string(), Tensor::<f64>::int(vec![b, len], tgt.clone()));
        let logits = match device {
            None => {
                let run = cpu::execute(g, params, &inputs, Some(&["logits"])).map_err(bad)?;
                run.get("logits").ok_or_else(|| bad("the model has no `logits` output"))?.to_f64_vec()
            }
            Some(dev) => ptx_logits(dev, g, values, &inp, &tgt)?,
        };
        let vocab = logits.len() / (b * len);
        for (wi, w) in group.iter().enumerate() {
            for t in w.score_from..w.len {
                let z = &logits[(wi * len + t) * vocab..(wi * len + t + 1) * vocab];
                let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + z.iter().map(|&v| (v - m).exp()).sum::<f64>().ln();
                total += lse - z[tgt[wi * len + t] as usize];
            }
        }
        bar.inc(b as u64);
        i = j;
    }
    Ok(total)
}

/// The logits of one batch of windows from the model's PTX program (bf16 kernels).
fn ptx_logits(dev: &dyn Device, g: &Graph, values: &HashMap<String, Vec<f64>>, ids: &[i32], targets: &[i32]) -> Result<Vec<f64>, Failure> {
    let names = ["loss".to_string(), "logits".to_string()];
    let plan = pgc::pipeline::ptx::plan(g, Precision::Bf16, &names, &[])?;
    let program = pgc::pipeline::ptx::compile(g, &plan).map_err(|e| bad(format!("the PTX backend cannot compile this model: {e}")))?;
    let internal = |e: pgc_runtime::exec::ExecError| Failure::Other(anyhow::anyhow!("{e}"));
    let mut ex = Executor::new(dev, &program, g).map_err(internal)?;
    let params: HashMap<String, Vec<f32>> = values.iter().map(|(k, v)| (k.clone(), v.iter().map(|&x| x as f32).collect())).collect();
    ex.set_params(&params).map_err(internal)?;
    ex.set_input("input_ids", ids).map_err(internal)?;
    ex.set_input("target_ids", targets).map_err(internal)?;
    ex.run().map_err(internal)?;
    Ok(ex.read_output("logits").map_err(internal)?.into_iter().map(f64::from).collect())
}

/// What [`bits_per_byte`] measured.
pub(crate) struct Bpb {
    pub val_loss: f64,
    pub val_bpb: f64,
    /// Scored targets and the bytes they carry.
    pub tokens: u64,
    pub bytes: u64,
    pub windows: usize,
}

/// Mean NLL and bits per byte of `values` on `tokens` in sliding windows of
/// `seq` (stride `stride`, `batch` windows per forward); `pgc eval` and
/// `pgc train`'s validation and roundtrip evaluation.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bits_per_byte(
    model: &std::path::Path,
    sets: &[(String, String)],
    values: &HashMap<String, Vec<f64>>,
    tokens: &[u16],
    table: &ByteTable,
    seq: usize,
    stride: usize,
    batch: usize,
    device: Option<&dyn Device>,
) -> Result<Bpb, Failure> {
    let wins = data::windows(tokens.len(), seq, stride);
    let mut n_tok = 0u64;
    let mut n_bytes = 0u64;
    for w in &wins {
        for t in w.score_from..w.len {
            let pos = w.start + t + 1;
            n_tok += 1;
            n_bytes += table.bytes(tokens[pos - 1], tokens[pos]);
        }
    }
    let total = nll_sum(model, sets, values, tokens, &wins, batch, device)?;
    let val_loss = total / n_tok.max(1) as f64;
    let val_bpb = val_loss / std::f64::consts::LN_2 * (n_tok as f64 / n_bytes.max(1) as f64);
    Ok(Bpb { val_loss, val_bpb, tokens: n_tok, bytes: n_bytes, windows: wins.len() })
}

pub fn run(args: EvalArgs) -> CliResult {
    let sim;
    let cuda;
    let device: Option<&dyn Device> = match args.backend {
        EvalBackend::Cpu => None,
        EvalBackend::Sim => {
            sim = pgc_runtime::sim::SimDevice::new();
            Some(&sim)
        }
        EvalBackend::Cuda => {
            cuda = super::run::open_cuda("pgc eval")?;
            Some(&cuda)
        }
    };
    if args.stride == 0 || args.batch == 0 {
        return Err(bad("--stride and --batch must be at least 1"));
    }
    let sets = super::parse_sets(&args.sets)?;
    let (g, _) = compile(&args.model, &sets, Mode::Eval)?;
    let vocab = g.constant("vocab").ok_or_else(|| bad("the model has no `vocab` constant"))? as usize;
    let seq = g.constant("seq").ok_or_else(|| bad("the model has no `seq` constant"))? as usize;
    if args.stride > seq {
        return Err(bad(format!("--stride {} is longer than the window (seq {seq})", args.stride)));
    }
    let values = args.params.load(&g)?;
    let tokens = data::read_shards(&args.data).map_err(bad)?;
    if let Some(p) = tokens.iter().position(|&t| t as usize >= vocab) {
        return Err(bad(format!("{}: token {} at position {p} is outside the vocabulary 0..{vocab}", args.data, tokens[p])));
    }
    if tokens.len() < 2 {
        return Err(bad(format!("{}: fewer than 2 tokens", args.data)));
    }
    let table = ByteTable::load(&args.tokenizer, vocab).map_err(bad)?;
    let b = bits_per_byte(&args.model, &sets, &values, &tokens, &table, seq, args.stride, args.batch, device)?;
    let (val_loss, val_bpb, n_tok, n_bytes, wins) = (b.val_loss, b.val_bpb, b.tokens, b.bytes, b.windows);
    if args.json {
        let v = json!({"val_loss": val_loss, "val_bpb": val_bpb, "tokens": n_tok, "bytes": n_bytes, "windows": wins, "stride": args.stride, "seq": seq});
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| Failure::Other(e.into()))?);
    } else {
        println!("val_loss {val_loss:.6} val_bpb {val_bpb:.6} ({n_tok} tokens, {n_bytes} bytes, {wins} windows of {seq}, stride {})", args.stride);
    }
    Ok(())
}
