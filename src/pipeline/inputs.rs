//! What a run starts from: the lowered graph (with the backward pass when
//! gradients are wanted), the parameter values and the tokens.

use super::source::{read_model, with_backward};
use super::{checks, input, internal, Result};
use pgc_ir::{Graph, Mode};
use pgc_runtime::weights::{self, HostData, HostTensor, Tokens};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the tokens come from.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// A safetensors file with `input_ids` and `target_ids` (int32, [B, T]).
    File(PathBuf),
    /// Seeded random tokens; `seq` defaults to the model's `seq` constant.
    Random { seed: u64, batch: usize, seq: Option<usize> },
}

/// Where the parameters come from.
#[derive(Clone, Debug)]
pub enum WeightSource {
    /// Safetensors (one tensor per parameter, `prefix` + name).
    File { path: PathBuf, prefix: String },
    /// The model's training initialisation, seeded; `dense` gives the
    /// all-zero parameters seeded values too (see [`densify`]).
    Random { seed: u64, dense: bool },
}

/// One run's model, constants, inputs and mode.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub model: PathBuf,
    pub sets: Vec<(String, String)>,
    pub tokens: TokenSource,
    pub weights: WeightSource,
    pub mode: Mode,
    /// Gradients in eval mode too (train mode always has them).
    pub grads: bool,
    /// Run with NaN or infinite weights (refused otherwise, naming the tensor).
    pub allow_nonfinite: bool,
}

impl RunSpec {
    /// Seeded random weights and tokens (tokens seeded `seed + 1`), as `pgc verify` and `pgc bench` make them.
    pub fn random(model: PathBuf, sets: Vec<(String, String)>, seed: u64, batch: usize, seq: Option<usize>, mode: Mode, dense: bool) -> Self {
        RunSpec {
            model,
            sets,
            tokens: TokenSource::Random { seed: seed.wrapping_add(1), batch, seq },
            weights: WeightSource::Random { seed, dense },
            mode,
            grads: false,
            allow_nonfinite: false,
        }
    }
}

/// What a run starts from.
pub struct RunInputs {
    pub graph: Graph,
    pub values: HashMap<String, Vec<f64>>,
    pub tokens: Tokens,
    pub with_grads: bool,
    pub mode: Mode,
}

/// Read the model, tokens and parameters `spec` names; lower the model
/// (with the backward pass in train mode or with `grads`). The tokens fix
/// the `batch` and `seq` constants.
pub fn prepare(spec: &RunSpec) -> Result<RunInputs> {
    let src = read_model(&spec.model)?;
    let path = &src.path;
    let mut sets = spec.sets.clone();
    let tokens: Tokens = match &spec.tokens {
        TokenSource::File(t) => weights::load_tokens(t).map_err(input)?,
        TokenSource::Random { seed, batch, seq } => {
            let g = src.lower(&sets, spec.mode)?;
            let vocab = g.constant("vocab").ok_or_else(|| input(format!("{path}: the model has no `vocab` constant for --random-tokens")))?;
            let seq = match seq {
                Some(s) => *s,
                None => g.constant("seq").ok_or_else(|| input(format!("{path}: the model has no `seq` constant; pass --seq")))? as usize,
            };
            if *batch == 0 || seq == 0 {
                return Err(input("--batch and --seq must be at least 1"));
            }
            checks::check_memory(&format!("--batch {batch} --seq {seq} (the token ids alone)"), *batch as u128 * seq as u128 * 8)?;
            let (input_ids, target_ids) = pgc_runtime::init::random_tokens(*seed, *batch, seq, vocab as u32);
            Tokens { batch: *batch, seq, input_ids, target_ids, source: PathBuf::from(format!("--random-tokens {seed}")) }
        }
    };
    for (name, val) in [("batch", tokens.batch), ("seq", tokens.seq)] {
        for (_, v) in sets.iter().filter(|(k, _)| k == name) {
            if v.parse::<usize>().ok() != Some(val) {
                return Err(input(format!("--set {name}={v} disagrees with the tokens ({} has {name} {val})", tokens.source.display())));
            }
        }
        sets.retain(|(k, _)| k != name);
        sets.push((name.into(), val.to_string()));
    }
    let fwd = src.lower(&sets, spec.mode)?;
    if let Some(vocab) = fwd.constant("vocab") {
        tokens.check_vocab(vocab as usize).map_err(input)?;
    }
    let values = match &spec.weights {
        WeightSource::File { path, prefix } => {
            let v = weights::load_params(path, prefix, &fwd.params).map_err(input)?;
            checks::warn_unused_tensors(path, prefix, &fwd.params);
            if !spec.allow_nonfinite {
                checks::check_finite(path, &fwd.params, &v)?;
            }
            v
        }
        WeightSource::Random { seed, dense } => {
            checks::check_memory("the parameters", fwd.params.iter().map(|p| p.numel() as u128 * 8).sum())?;
            let mut v = pgc_runtime::init::random_params(&fwd.params, *seed).map_err(input)?;
            if *dense {
                densify(&fwd.params, &mut v, *seed);
            }
            v
        }
    };
    let with_grads = spec.mode == Mode::Train || spec.grads;
    let graph = if with_grads { with_backward(&fwd, "loss")? } else { fwd };
    Ok(RunInputs { graph, values, tokens, with_grads, mode: spec.mode })
}

/// Replace every all-zero parameter by seeded normal values / sqrt(fan-in)
/// (fan-in: the last dimension), rounded to f32: the training initialisation
/// zero-initialises output projections, which would leave the gradients of
/// everything before them zero and so unchecked.
pub fn densify(params: &[pgc_ir::graph::ParamInfo], values: &mut HashMap<String, Vec<f64>>, seed: u64) {
    for p in params {
        let Some(v) = values.get_mut(&p.name) else { continue };
        if v.is_empty() || v.iter().any(|&x| x != 0.0) {
            continue;
        }
        let fan_in = match p.shape.last() {
            Some(&n) if p.shape.len() >= 2 => n as f64,
            _ => 100.0,
        };
        let mut rng = pgc_runtime::init::Rng::new(seed ^ 0x5eed_de05, &format!("dense:{}", p.name));
        for x in v.iter_mut() {
            *x = (rng.normal() / fan_in.sqrt()) as f32 as f64;
        }
    }
}

/// The names a run writes: loss, logits and (with gradients) grad.NAME per parameter.
pub fn output_names(graph: &Graph, with_grads: bool) -> Vec<String> {
    let mut names: Vec<String> = vec!["loss".into(), "logits".into()];
    if with_grads {
        names.extend(graph.params.iter().map(|p| format!("grad.{}", p.name)));
    }
    names
}

/// Write the parameters (f32) and tokens a run uses (names as in the spec;
/// tokens `input_ids`, `target_ids` int32 [B, T]).
pub fn dump_inputs(path: &Path, graph: &Graph, values: &HashMap<String, Vec<f64>>, tokens: &Tokens) -> Result<()> {
    let mut tensors: Vec<(String, HostTensor)> = graph
        .params
        .iter()
        .map(|p| (p.name.clone(), HostTensor::new(p.shape.clone(), HostData::F32(values[&p.name].iter().map(|&x| x as f32).collect()))))
        .collect();
    let shape = vec![tokens.batch, tokens.seq];
    tensors.push(("input_ids".into(), HostTensor::new(shape.clone(), HostData::I32(tokens.input_ids.clone()))));
    tensors.push(("target_ids".into(), HostTensor::new(shape, HostData::I32(tokens.target_ids.clone()))));
    weights::save(path, &tensors, None).map_err(|e| internal(format!("writing {}: {e}", path.display())))
}

/// One run's results.
pub struct Outcome {
    pub loss: f64,
    pub seconds: f64,
    pub tensors: Vec<(String, HostTensor)>,
    /// The per-kernel (or per-op) time table, when asked for.
    pub profile: Option<String>,
    /// What the device did (launches, thread-instructions, compile times).
    pub device_note: Option<String>,
}
