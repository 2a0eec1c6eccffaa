//! The trajectory file (`--trajectory`): the golden layout of TRAINING.md
//! section 14. `param0.*` (f32 when every value is f32-exact, else f64),
//! the per-step `loss`, `lr_scale`, `muon_momentum`, `grad_norm`, the
//! weights after the first step `param1.*` and after the last `param.*`
//! (not averaged), `swa.*` (sum / count, when SWA collected) and the
//! optimizer state `state.NAME.{exp_avg, exp_avg_sq, momentum_buffer}`, in
//! f64 (exact for an f32 run); `tokens` (the stream as far as the run's
//! `iterations` reach) and the forward golden of its first micro-batch at
//! `param.*` (`input_ids`, `target_ids`, `train.*`, `eval.*`: the CPU in
//! float64, whatever backend trained). Metadata: `config` (the model
//! constants), `train` (the hyperparameters), `derived`.

use super::checkpoint::{f64_tensor, records};
use super::Trainer;
use crate::pipeline::cpu::{self, CpuExecutor};
use crate::pipeline::source::{read_model, with_backward};
use crate::pipeline::{internal, Result};
use pgc_backends::cpu::Real;
use pgc_ir::Mode;
use pgc_runtime::weights::{self, HostData, HostTensor, Tokens};
use std::collections::HashMap;
use std::path::Path;

pub fn write<F: Real>(path: &Path, t: &mut Trainer<'_, F>) -> Result<()> {
    t.sync()?;
    let st = &t.state;
    let mut out = Vec::new();
    let avg = st.swa.average();
    for (i, (n, s)) in t.names.iter().zip(&t.shapes).enumerate() {
        let p0 = &t.init[i];
        let data = if p0.iter().all(|&x| (x as f32) as f64 == x) { HostData::F32(p0.iter().map(|&x| x as f32).collect()) } else { HostData::F64(p0.clone()) };
        out.push((format!("param0.{n}"), HostTensor::new(s.clone(), data)));
        if let Some(first) = &st.first {
            out.push((format!("param1.{n}"), f64_tensor(s, &first[i])));
        }
        out.push((format!("param.{n}"), f64_tensor(s, &st.params[i])));
        if let Some(a) = &avg {
            out.push((format!("swa.{n}"), f64_tensor(s, &a[i])));
        }
        for (k, v) in st.opt[i].tensors() {
            out.push((format!("state.{n}.{k}"), f64_tensor(s, v)));
        }
    }
    // The stream the run reads (as far as `iterations` steps reach) and the
    // forward golden of the first micro-batch at the final weights.
    let span = t.batch * t.seq + 1;
    let used = (t.hp.iterations * t.hp.micro_batches() * span as u64).min(t.stream.tokens.len() as u64) as usize;
    out.push(("tokens".to_string(), HostTensor::new(vec![used], HostData::I32(t.stream.tokens[..used].to_vec()))));
    out.extend(forward_golden(t)?);
    if st.step > 0 {
        for (k, v) in records(&st.record) {
            out.push((k.to_string(), HostTensor::new(vec![v.len()], HostData::F64(v.clone()))));
        }
    }
    let config: serde_json::Map<String, serde_json::Value> = t
        .sets
        .iter()
        .map(|(k, v)| (k.clone(), v.parse::<f64>().map(|x| serde_json::json!(x)).unwrap_or_else(|_| serde_json::json!(v))))
        .chain([("seq".to_string(), serde_json::json!(t.seq))])
        .collect();
    let mut groups: HashMap<&str, Vec<&str>> = HashMap::new();
    for (n, g) in t.names.iter().zip(&t.groups) {
        groups.entry(g.name()).or_default().push(n);
    }
    let derived = serde_json::json!({
        "steps_run": st.step,
        "finished": t.finished(),
        "swa_count": st.swa.count,
        "swa_applied": st.swa.count > 1,
        "train_batch_tokens": t.tokens_per_step(),
        "dtype": if F::NAME == "f64" { "float64" } else { "float32" },
        "lr_schedule": if !t.hp.by_clock() { "iteration" } else if t.hp.sim_step_ms > 0.0 { "wallclock(simulated)" } else { "wallclock" },
        "clock_ms": st.clock_ms,
        "groups": groups,
        "backend": t.kind,
    });
    let meta = HashMap::from([
        ("config".to_string(), serde_json::Value::Object(config).to_string()),
        ("train".to_string(), serde_json::to_string(&t.hp).map_err(internal)?),
        ("derived".to_string(), derived.to_string()),
    ]);
    weights::save(path, &out, Some(meta)).map_err(|e| internal(e.to_string()))
}

/// `input_ids`, `target_ids` (the first micro-batch: stream span 0) and
/// `train.*`, `eval.*` (loss, logits, every gradient) computed by the CPU
/// plan executor in float64 at the run's final weights `param.*`: the
/// layout of `golden/tiny.safetensors`, whatever backend trained.
fn forward_golden<F: Real>(t: &Trainer<'_, F>) -> Result<Vec<(String, HostTensor)>> {
    let span = t.batch * t.seq + 1;
    let u = t.stream.span(0, span);
    let tokens = Tokens { batch: t.batch, seq: t.seq, input_ids: u[..span - 1].to_vec(), target_ids: u[1..].to_vec(), source: t.model.clone() };
    let values: HashMap<String, Vec<f64>> = t.names.iter().zip(&t.state.params).map(|(n, v)| (n.clone(), v.iter().map(|x| x.to_f64()).collect())).collect();
    let shape = vec![t.batch, t.seq];
    let mut out = vec![
        ("input_ids".to_string(), HostTensor::new(shape.clone(), HostData::I32(tokens.input_ids.clone()))),
        ("target_ids".to_string(), HostTensor::new(shape, HostData::I32(tokens.target_ids.clone()))),
    ];
    let src = read_model(&t.model)?;
    for (prefix, mode) in [("train", Mode::Train), ("eval", Mode::Eval)] {
        let g = with_backward(&src.lower(&t.sets, mode)?, "loss")?;
        let o = cpu::execute::<f64>(&g, &values, &tokens, true, false, HostData::F64, CpuExecutor::Plan, 1)?;
        out.extend(o.tensors.into_iter().map(|(n, v)| (format!("{prefix}.{n}"), v)));
    }
    Ok(out)
}
