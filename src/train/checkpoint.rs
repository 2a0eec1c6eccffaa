//! Checkpoints: one safetensors file, `DIR/checkpoint.safetensors`, written
//! atomically (a temporary file beside it, then a rename), so a crash leaves
//! the last good one. It holds the weights, the optimizer state, the SWA sum,
//! the per-step records and `param0.*`/`param1.*` (so a resumed run's
//! trajectory is whole), all f64 (exact for an f32 run), and in its metadata
//! the step, the clock, the loader position and what the run was made of
//! (hyperparameters, model constants, precision, token stream), which a
//! resume must repeat.

use super::optim::State;
use super::swa::Swa;
use super::{Hyper, Record, TrainState, Trainer};
use crate::pipeline::{input, internal, Result};
use pgc_backends::cpu::Real;
use pgc_runtime::weights::{self, HostData, HostTensor, SafeFile};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The file a checkpoint directory holds.
pub fn file(dir: &Path) -> PathBuf {
    dir.join("checkpoint.safetensors")
}

/// The metadata key of the checkpoint's description.
const KEY: &str = "pgc_train_checkpoint";

#[derive(Serialize, Deserialize, Debug)]
struct Meta {
    version: u32,
    step: u64,
    clock_ms: f64,
    loader_pos: u64,
    stop_after: Option<u64>,
    swa_count: u64,
    /// AdamW update counts by parameter name.
    adam_steps: HashMap<String, u64>,
    precision: String,
    batch: usize,
    seq: usize,
    sets: Vec<(String, String)>,
    hp: Hyper,
    names: Vec<String>,
    tokens_len: usize,
    tokens_hash: u64,
}

/// A tensor as f64 (exact for f32 values).
pub(crate) fn f64_tensor<F: Real>(shape: &[usize], v: &[F]) -> HostTensor {
    HostTensor::new(shape.to_vec(), HostData::F64(v.iter().map(|x| x.to_f64()).collect()))
}

/// Write `t`'s state to `DIR/checkpoint.safetensors` (creating DIR).
pub fn save<F: Real>(dir: &Path, t: &mut Trainer<'_, F>) -> Result<()> {
    t.sync()?;
    std::fs::create_dir_all(dir).map_err(|e| internal(format!("creating checkpoint folder {}: {e}", dir.display())))?;
    let st = &t.state;
    let mut out = Vec::new();
    let mut adam_steps = HashMap::new();
    for (i, (n, s)) in t.names.iter().zip(&t.shapes).enumerate() {
        out.push((format!("param.{n}"), f64_tensor(s, &st.params[i])));
        out.push((format!("param0.{n}"), f64_tensor(s, &t.init[i])));
        if let Some(first) = &st.first {
            out.push((format!("param1.{n}"), f64_tensor(s, &first[i])));
        }
        if let Some(sum) = &st.swa.sum {
            out.push((format!("swa_sum.{n}"), f64_tensor(s, &sum[i])));
        }
        for (k, v) in st.opt[i].tensors() {
            out.push((format!("state.{n}.{k}"), f64_tensor(s, v)));
        }
        if let State::Adam { step, .. } = &st.opt[i] {
            adam_steps.insert(n.clone(), *step);
        }
    }
    if st.step > 0 {
        for (k, v) in records(&st.record) {
            out.push((k.to_string(), HostTensor::new(vec![v.len()], HostData::F64(v.clone()))));
        }
    }
    let meta = Meta {
        version: 1,
        step: st.step,
        clock_ms: st.clock_ms,
        loader_pos: st.loader_pos,
        stop_after: st.stop_after,
        swa_count: st.swa.count,
        adam_steps,
        precision: t.kind.clone(),
        batch: t.batch,
        seq: t.seq,
        sets: t.sets.clone(),
        hp: t.hp.clone(),
        names: t.names.clone(),
        tokens_len: t.stream.tokens.len(),
        tokens_hash: t.stream.hash(),
    };
    let json = serde_json::to_string(&meta).map_err(internal)?;
    let path = file(dir);
    weights::save(&path, &out, Some(HashMap::from([(KEY.to_string(), json)]))).map_err(|e| internal(e.to_string()))
}

/// The per-step records by their golden names.
pub(crate) fn records(r: &Record) -> [(&'static str, &Vec<f64>); 4] {
    [("loss", &r.loss), ("lr_scale", &r.lr_scale), ("muon_momentum", &r.muon_momentum), ("grad_norm", &r.grad_norm)]
}

/// Restore `t`'s state (and initial weights) from `DIR/checkpoint.safetensors`;
/// refused, naming the difference, when the checkpoint was made by a run of
/// other hyperparameters, model constants, precision or token stream.
pub fn resume<F: Real>(dir: &Path, t: &mut Trainer<'_, F>) -> Result<()> {
    let path = file(dir);
    let f = SafeFile::open(&path).map_err(|e| input(format!("--resume {}: {e}", dir.display())))?;
    let meta: Meta = f
        .metadata()
        .get(KEY)
        .and_then(|m| serde_json::from_str(m).ok())
        .ok_or_else(|| input(format!("{}: not a pgc train checkpoint (no `{KEY}` metadata)", path.display())))?;
    let mut diffs = Vec::new();
    if meta.precision != t.kind {
        diffs.push(format!("precision {} (this run: {})", meta.precision, t.kind));
    }
    if meta.names != t.names {
        diffs.push("the model's parameters".to_string());
    }
    if (meta.batch, meta.seq) != (t.batch, t.seq) {
        diffs.push(format!("batch {} seq {} (this run: batch {} seq {})", meta.batch, meta.seq, t.batch, t.seq));
    }
    let sorted = |v: &[(String, String)]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    if sorted(&meta.sets) != sorted(&t.sets) {
        diffs.push(format!("model constants {:?} (this run: {:?})", sorted(&meta.sets), sorted(&t.sets)));
    }
    let (a, b) = (meta.hp.to_hp_args(), t.hp.to_hp_args());
    let hp_diff: Vec<String> = a.iter().zip(&b).filter(|(x, y)| x != y).map(|(x, y)| format!("{x} (this run: {y})")).collect();
    if !hp_diff.is_empty() {
        diffs.push(format!("hyperparameters {}", hp_diff.join(", ")));
    }
    if (meta.tokens_len, meta.tokens_hash) != (t.stream.tokens.len(), t.stream.hash()) {
        diffs.push(format!("the token stream ({} tokens; this run: {} tokens, or other ones)", meta.tokens_len, t.stream.tokens.len()));
    }
    if !diffs.is_empty() {
        return Err(input(format!("--resume {}: the checkpoint was made by another run: {}", dir.display(), diffs.join("; "))));
    }
    let get = |name: &str, n: usize| -> Result<Vec<F>> {
        let v = f.get(name, "a checkpoint tensor").map_err(input)?.data.to_f64();
        if v.len() != n {
            return Err(input(format!("{}: `{name}` has {} elements, expected {n}", path.display(), v.len())));
        }
        Ok(v.into_iter().map(F::from_f64).collect())
    };
    let mut st = TrainState {
        step: meta.step,
        clock_ms: meta.clock_ms,
        loader_pos: meta.loader_pos,
        stop_after: meta.stop_after,
        params: Vec::new(),
        opt: t.state.opt.clone(),
        swa: Swa { sum: None, count: meta.swa_count },
        record: Record::default(),
        first: None,
    };
    let (mut first, mut sum) = (Vec::new(), Vec::new());
    for (i, n) in t.names.clone().iter().enumerate() {
        let len = t.init[i].len();
        st.params.push(get(&format!("param.{n}"), len)?);
        t.init[i] = get(&format!("param0.{n}"), len)?.iter().map(|x| x.to_f64()).collect();
        if meta.step > 0 {
            first.push(get(&format!("param1.{n}"), len)?);
        }
        if meta.swa_count > 0 {
            sum.push(get(&format!("swa_sum.{n}"), len)?);
        }
        for (k, v) in st.opt[i].tensors_mut() {
            *v = get(&format!("state.{n}.{k}"), len)?;
        }
        if let State::Adam { step, .. } = &mut st.opt[i] {
            *step = meta.adam_steps.get(n).copied().unwrap_or(0);
        }
    }
    st.first = (meta.step > 0).then_some(first);
    st.swa.sum = (meta.swa_count > 0).then_some(sum);
    if meta.step > 0 {
        let rec = |k: &str| -> Result<Vec<f64>> { Ok(f.get(k, "a per-step record").map_err(input)?.data.to_f64()) };
        st.record = Record { loss: rec("loss")?, lr_scale: rec("lr_scale")?, muon_momentum: rec("muon_momentum")?, grad_norm: rec("grad_norm")? };
    }
    t.state = st;
    t.state_replaced()
}
