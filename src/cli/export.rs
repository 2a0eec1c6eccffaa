//! `pgc export`: the parameters stored as the model's quantization annotations
//! say, zstd-22 compressed, written atomically to a `.pgz` artifact
//! (`pgc_runtime::artifact`). `--random-weights SEED` exports the seeded
//! training initialisation; `--weights` takes safetensors or a `.pgz`.

use super::{CliResult, Failure};
use pgc_ir::{Graph, Mode};
use pgc::pipeline::source;
use pgc_runtime::artifact;
use pgc_runtime::weights;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The model source (.pgdsl).
    pub model: PathBuf,
    /// Override a model constant, e.g. `--set layers=9`. Repeatable.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
    #[command(flatten)]
    pub params: ParamSource,
    /// Output artifact.
    #[arg(short = 'o', long = "out", value_name = "MODEL.pgz")]
    pub out: PathBuf,
}

pub(crate) fn bad(msg: impl std::fmt::Display) -> Failure {
    Failure::BadInput(format!("error: {msg}"))
}

/// The model lowered in `mode` with `sets`, and its IR hash (FNV-1a 64 of the IR's JSON text).
pub(crate) fn compile(model: &std::path::Path, sets: &[(String, String)], mode: Mode) -> Result<(Graph, u64), Failure> {
    let g = source::read_model(model)?.lower(sets, mode)?;
    let h = source::ir_hash(&g)?;
    Ok((g, h))
}

/// Where a command takes the model's parameters from (shared by `export`, `eval` and `run`).
#[derive(clap::Args)]
pub struct ParamSource {
    /// Parameters: safetensors (one tensor per parameter, PREFIX + NAME) or a .pgz artifact.
    #[arg(long, value_name = "W", required_unless_present = "random_weights", conflicts_with = "random_weights")]
    pub weights: Option<PathBuf>,
    /// Prefix of the parameter tensors in the weights file (e.g. `param.` for the golden files).
    #[arg(long, value_name = "P", default_value = "", requires = "weights")]
    pub weights_prefix: String,
    /// Use the model's training initialisation, seeded, instead of a weights file.
    #[arg(long, value_name = "SEED")]
    pub random_weights: Option<u64>,
}

impl ParamSource {
    /// Parameter values for `g` from `--weights` (safetensors or .pgz) or `--random-weights`.
    pub(crate) fn load(&self, g: &Graph) -> Result<HashMap<String, Vec<f64>>, Failure> {
        match (&self.weights, self.random_weights) {
            (Some(w), _) => {
                let v = weights::load_params(w, &self.weights_prefix, &g.params).map_err(bad)?;
                pgc::pipeline::checks::warn_unused_tensors(w, &self.weights_prefix, &g.params);
                note_ir_hash(w, g);
                Ok(v)
            }
            (None, Some(seed)) => {
                pgc::pipeline::checks::check_memory("the parameters", g.params.iter().map(|p| p.numel() as u128 * 8).sum())?;
                pgc_runtime::init::random_params(&g.params, seed).map_err(bad)
            }
            (None, None) => Err(bad("one of --weights or --random-weights is required")),
        }
    }
}

/// For a `.pgz`, say on stderr when its IR hash is not this model's (the
/// shapes matched, so it loads; the model text or constants differ).
fn note_ir_hash(w: &std::path::Path, g: &Graph) {
    let Ok(bytes) = std::fs::read(w) else { return };
    if !artifact::is_artifact(&bytes) {
        return;
    }
    let Ok(art) = artifact::load_bytes(&bytes) else { return };
    let Ok(h) = source::ir_hash(g) else { return };
    if h != art.ir_hash {
        eprintln!(
            "note: {} was exported from a model whose IR hash is {:016x}; this one's is {h:016x} (the parameter shapes match)",
            w.display(),
            art.ir_hash
        );
    }
}

pub fn run(args: ExportArgs) -> CliResult {
    let sets = super::parse_sets(&args.sets)?;
    let (g, ir_hash) = compile(&args.model, &sets, Mode::Eval)?;
    let values = args.params.load(&g)?;
    let bar = super::progress::Progress::new(g.params.len() as u64, "tensors quantized and compressed");
    let (bytes, art) = artifact::export_with_progress(&g.params, &values, ir_hash, &g.constants, &|| bar.inc(1)).map_err(bad)?;
    drop(bar);
    weights::write_atomic(&args.out, &bytes).map_err(|e| Failure::Other(e.into()))?;
    let raw: u64 = art.tensors.iter().map(|t| t.raw_bytes).sum();
    println!(
        "wrote {}: {} bytes ({} tensors, {} raw bytes before compression; budget {})",
        args.out.display(),
        art.total_bytes,
        art.tensors.len(),
        raw,
        artifact::BUDGET_BYTES
    );
    Ok(())
}
