//! Graph -> kernel plan -> PTX program -> outputs on a device (the simulator or CUDA).

use super::inputs::{output_names, Outcome};
use super::{input, internal, Result};
use pgc_backends::ptx::program::Program;
use pgc_ir::plan::{self, FusionRule, Plan, PlanOptions, Precision};
use pgc_ir::Graph;
use pgc_runtime::device::Device;
use pgc_runtime::exec::{ExecError, Executor};
use pgc_runtime::sim::SimDevice;
use pgc_runtime::weights::{HostData, HostTensor, Tokens};
use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

/// The fusion rules the PTX backend implements: plans for it use only these.
pub fn supported_rules() -> BTreeSet<FusionRule> {
    pgc_backends::ptx::compile::supported_rules()
}

/// The kernel plan for the PTX backend storing `outputs` (the supported fusion rules less `disabled`).
pub fn plan(g: &Graph, precision: Precision, outputs: &[String], disabled: &[FusionRule]) -> Result<Plan> {
    let mut opts = PlanOptions::all(g, precision);
    opts.rules = supported_rules().into_iter().filter(|r| !disabled.contains(r)).collect();
    opts.outputs = outputs.to_vec();
    plan::build(g, &opts).map_err(internal)
}

/// The PTX backend's options: `PGC_GEMM_PATH=mma.sync` keeps the bf16 GEMMs
/// on the mma.sync kernels (for comparison), `PGC_ATTENTION_PATH=mma.sync`
/// the attention forward; the default, `wgmma`, puts every GEMM whose shapes
/// allow it, and the head-dim-64 attention forward, on the Hopper kernels.
pub fn ptx_options() -> Result<pgc_backends::ptx::compile::PtxOptions> {
    use pgc_backends::ptx::templates::gemm::GemmPath;
    let mut o = pgc_backends::ptx::compile::PtxOptions::default();
    for (var, slot) in [("PGC_GEMM_PATH", &mut o.gemm_path), ("PGC_ATTENTION_PATH", &mut o.attention_path)] {
        match std::env::var(var).ok().as_deref() {
            None | Some("") | Some("wgmma") => {}
            Some("mma.sync") | Some("mma") => *slot = GemmPath::MmaSync,
            Some(other) => return Err(input(format!("{var}={other}: expected `wgmma` or `mma.sync`"))),
        }
    }
    Ok(o)
}

/// Compile a plan to a PTX program (the error: what the emitters do not handle).
pub fn compile(g: &Graph, plan: &Plan) -> Result<Program> {
    compile_with(g, plan, &ptx_options()?)
}

/// [`compile`] with options of the caller's choosing.
pub fn compile_with(g: &Graph, plan: &Plan, opts: &pgc_backends::ptx::compile::PtxOptions) -> Result<Program> {
    pgc_backends::ptx::compile::compile_program_with(g, plan, opts).map_err(input)
}

fn exec_err(e: ExecError) -> super::PipelineError {
    internal(e)
}

/// Upload the parameters (as f32 masters) and the token inputs.
pub fn set_inputs(ex: &mut Executor<'_>, values: &HashMap<String, Vec<f64>>, tokens: &Tokens) -> Result<()> {
    let params: HashMap<String, Vec<f32>> = values.iter().map(|(k, v)| (k.clone(), v.iter().map(|&x| x as f32).collect())).collect();
    ex.set_params(&params).map_err(exec_err)?;
    for name in ex.input_names() {
        let ids = match name.as_str() {
            "input_ids" => &tokens.input_ids,
            "target_ids" => &tokens.target_ids,
            other => return Err(input(format!("the model has an input `{other}`; pgc supplies only input_ids and target_ids"))),
        };
        ex.set_input(&name, ids).map_err(exec_err)?;
    }
    Ok(())
}

fn host_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Plan, compile and run the graph's PTX program on `dev` (the simulator, or
/// a GPU); `sim` is the same device when it is the simulator, for its
/// thread-instruction counts. With `profile`, launches run one at a time,
/// synchronised, and the outcome has a per-kernel table. `on_launch(done,
/// total)` runs after each launch (the binary draws a progress bar from it:
/// a simulated step takes minutes).
#[allow(clippy::too_many_arguments)]
pub fn execute(
    dev: &dyn Device,
    sim: Option<&SimDevice>,
    graph: &Graph,
    values: &HashMap<String, Vec<f64>>,
    tokens: &Tokens,
    with_grads: bool,
    precision: Precision,
    profile: bool,
    on_launch: &mut dyn FnMut(usize, usize),
) -> Result<Outcome> {
    let names = output_names(graph, with_grads);
    let plan = plan(graph, precision, &names, &[])?;
    let t_compile = Instant::now();
    let program = compile(graph, &plan).map_err(|e| input(format!("the PTX backend cannot compile this model: {e}")))?;
    let compile_s = t_compile.elapsed().as_secs_f64();
    let t_load = Instant::now();
    let mut ex = Executor::new(dev, &program, graph).map_err(exec_err)?;
    set_inputs(&mut ex, values, tokens)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let insts = || sim.map(|d| d.total_thread_instructions()).unwrap_or(0);
    let insts0 = insts();
    let t0 = Instant::now();
    let mut per_kernel: Vec<(f64, u64)> = vec![(0.0, 0); program.plan.kernels.len()];
    if profile {
        for i in 0..ex.launch_count() {
            let t = Instant::now();
            let before = insts();
            ex.launch_step(i).map_err(exec_err)?;
            dev.synchronize().map_err(|e| exec_err(ExecError::Device { what: "synchronize".into(), source: e }))?;
            let k = program.launches[i].plan_kernel;
            per_kernel[k].0 += t.elapsed().as_secs_f64();
            per_kernel[k].1 += insts() - before;
            on_launch(i + 1, ex.launch_count());
        }
    } else {
        ex.run_with(on_launch).map_err(exec_err)?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let insts = insts() - insts0;

    let mut tensors = Vec::with_capacity(names.len());
    let mut loss = f64::NAN;
    for name in &names {
        let data = ex.read_output(name).map_err(exec_err)?;
        let v = graph.output(name).ok_or_else(|| input(format!("the model has no output `{name}`")))?;
        let shape = if name == "loss" { vec![1] } else { graph.ty(v).shape.clone() };
        if name == "loss" {
            loss = data.first().copied().unwrap_or(f32::NAN) as f64;
        }
        tensors.push((name.clone(), HostTensor::new(shape, HostData::F32(data))));
    }
    let ptx_kib = program.ptx().len() / 1024;
    let device_note = Some(match sim {
        Some(_) => format!(
            "sim: {} kernels, {} launches, {:.3e} thread-instructions, {seconds:.3} s on the simulator ({} host threads); PTX compile {compile_s:.3} s, {ptx_kib} KiB of PTX",
            program.plan.kernels.len(),
            program.launches.len(),
            insts as f64,
            host_threads(),
        ),
        None => format!(
            "{}: {} kernels, {} launches, {seconds:.3} s on the device (first run: includes lazy work); PTX compile {compile_s:.3} s, {ptx_kib} KiB of PTX; module load (driver JIT) + upload {load_s:.3} s",
            dev.name(),
            program.plan.kernels.len(),
            program.launches.len(),
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
