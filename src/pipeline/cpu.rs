//! Graph -> outputs on the CPU: the reference interpreter, or the plan
//! executor (the kernel plan with cranelift-compiled element-wise kernels),
//! or the bf16 yardstick ([`execute_yardstick`]).

use super::inputs::{output_names, Outcome};
use super::{input, Result};
use pgc_backends::cpu::{self, Real, Tensor};
use pgc_ir::Graph;
use pgc_runtime::weights::{HostData, HostTensor, Tokens};
use std::collections::HashMap;
use std::time::Instant;

/// Which CPU executor runs the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuExecutor {
    /// The unfused reference interpreter (the oracle).
    Interpreter,
    /// The kernel plan, element-wise kernels compiled with cranelift.
    Plan,
}

/// Run the graph `repeat` times (at least once) in precision `F`; the time
/// reported is the fastest run's, the outputs the last run's (each stored
/// with `store`).
#[allow(clippy::too_many_arguments)]
pub fn execute<F: Real>(
    graph: &Graph,
    values: &HashMap<String, Vec<f64>>,
    tokens: &Tokens,
    with_grads: bool,
    profile: bool,
    store: impl Fn(Vec<F>) -> HostData,
    executor: CpuExecutor,
    repeat: u32,
) -> Result<Outcome> {
    let (params, inputs) = host_tensors::<F>(graph, values, tokens);
    let names = output_names(graph, with_grads);
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    // The plan executor: plan and cranelift compile first, reported apart from
    // the run (like the simulator's PTX compile).
    let mut notes = Vec::new();
    let compiled = if executor == CpuExecutor::Plan {
        let t0 = Instant::now();
        let rules = pgc_ir::plan::FusionRule::ALL.into_iter().collect();
        let plan = cpu::plan_exec::plan_for(graph, &rules, Some(&refs)).map_err(input)?;
        let jit = cpu::plan_exec::jit::compile::<F>(graph, &plan.kernels).map_err(|e| input(format!("compiling the plan's kernels: {e}")))?;
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
    for _ in 0..repeat.max(1) {
        // The previous run's outputs are freed first, as in a training loop.
        drop(last.take());
        let t = Instant::now();
        let run = match &compiled {
            Some((plan, jit)) => cpu::plan_exec::execute_plan_with(graph, plan, &params, &inputs, Some(&refs), Some(jit)),
            None => cpu::execute(graph, &params, &inputs, Some(&refs)),
        }
        .map_err(input)?;
        times.push(t.elapsed().as_secs_f64());
        last = Some(run);
    }
    let Some(run) = last else { unreachable!("the loop runs at least once") };
    let seconds = times.iter().copied().fold(f64::INFINITY, f64::min);
    if times.len() > 1 {
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        notes.push(format!("{} runs: first {:.3} s, median {:.3} s, fastest {:.3} s (reported)", times.len(), times[0], sorted[sorted.len() / 2], seconds));
    }
    let device_note = (!notes.is_empty()).then(|| notes.join("\n"));
    let profile = profile.then(|| run.profile.render());
    drop(params);
    let (loss, tensors) = host_outputs(run, store);
    Ok(Outcome { loss, seconds, tensors, profile, device_note })
}

/// Run the bf16 yardstick (`pgc_backends::cpu::autocast`: the reference
/// interpreter in f32, rounding to bf16 where PyTorch's bf16 autocast
/// rounds) `repeat` times (at least once): the time is the fastest run's,
/// the outputs (f32) the last run's.
pub fn execute_yardstick(graph: &Graph, values: &HashMap<String, Vec<f64>>, tokens: &Tokens, with_grads: bool, profile: bool, repeat: u32) -> Result<Outcome> {
    let (params, inputs) = host_tensors::<f32>(graph, values, tokens);
    let names = output_names(graph, with_grads);
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let mut seconds = f64::INFINITY;
    let mut last = None;
    for _ in 0..repeat.max(1) {
        drop(last.take());
        let t = Instant::now();
        last = Some(cpu::execute_autocast(graph, &params, &inputs, Some(&refs)).map_err(input)?);
        seconds = seconds.min(t.elapsed().as_secs_f64());
    }
    let Some(run) = last else { unreachable!("the loop runs at least once") };
    let profile = profile.then(|| run.profile.render());
    let (loss, tensors) = host_outputs(run, HostData::F32);
    let note = "cpu bf16: the yardstick (PyTorch's bf16 autocast emulated on the reference interpreter)".to_string();
    Ok(Outcome { loss, seconds, tensors, profile, device_note: Some(note) })
}

/// The graph's parameters (from `values`) and token inputs as tensors in `F`.
fn host_tensors<F: Real>(graph: &Graph, values: &HashMap<String, Vec<f64>>, tokens: &Tokens) -> (HashMap<String, Tensor<F>>, HashMap<String, Tensor<F>>) {
    let params = graph.params.iter().map(|p| (p.name.clone(), Tensor::from_f64(p.shape.clone(), &values[&p.name]))).collect();
    let shape = vec![tokens.batch, tokens.seq];
    let mut inputs = HashMap::new();
    inputs.insert("input_ids".to_string(), Tensor::<F>::int(shape.clone(), tokens.input_ids.clone()));
    inputs.insert("target_ids".to_string(), Tensor::<F>::int(shape, tokens.target_ids.clone()));
    (params, inputs)
}

/// A run's loss (NaN without one) and outputs as host tensors (stored with
/// `store`; the loss as shape [1]).
fn host_outputs<F: Real>(run: cpu::Run<F>, store: impl Fn(Vec<F>) -> HostData) -> (f64, Vec<(String, HostTensor)>) {
    let loss = run.get("loss").map(|t| t.to_f64_vec()[0]).unwrap_or(f64::NAN);
    let tensors = run
        .outputs
        .into_iter()
        .map(|(name, t)| {
            let shape = if name == "loss" { vec![1] } else { t.shape.clone() };
            (name, HostTensor::new(shape, store(t.into_float_vec())))
        })
        .collect();
    (loss, tensors)
}
