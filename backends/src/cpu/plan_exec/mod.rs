//! The plan executor: runs a kernel [`Plan`] kernel by kernel, in plan order,
//! on the CPU.
//!
//! Every value a kernel stores (its `outputs`) lives in its own buffer until
//! the last kernel reading it has run; values a kernel computes and does not
//! store (`Place::Fused`) live only while that kernel runs. Freed buffers go
//! to a pool ([`pool`]) that later kernels (and later runs) draw from, so
//! large outputs do not pay fresh pages' faults. Each kernel evaluates its
//! prologue and its ops in topological order:
//! - element-wise kernels (Unary, Binary, Broadcast, Scalar, LeakyRelu,
//!   LeakyStep; outputs of one shape or a Permute / Reshape(Permute) of it)
//!   are compiled with cranelift into native row loops ([`jit`]), and so are
//!   the runs of such ops inside the other kernels (GEMM epilogues, the
//!   element-wise work around reductions and norms, ending in a row sum or
//!   mean where one follows): bitwise equal to the reference ops;
//! - matrix products (Linear, MatMul, OuterSum, leading axes flattened) go
//!   through the `gemm` crate in f32 (AVX-512 when the CPU has it) and
//!   matrixmultiply in f64 ([`gemm`]);
//! - weight preparation (per-row fake quantization) runs a vectorised
//!   (AVX2 where the CPU has it), parallel version of the reference, and rope reuses its cos/sin tables
//!   within a run ([`rope`]); both bitwise equal to the reference;
//! - attention forward and backward run the reference algorithm with the
//!   `gemm` crate's products in f32 and vectorised softmax rows
//!   (`exp` and sums, `vmath`), the reference itself in f64
//!   ([`attention`]); the q, k and v gradients of one attention in one
//!   kernel are computed together, from the probabilities the forward
//!   kept (up to a memory budget);
//! - cross entropy and its gradient share their log-sum-exp rows ([`xent`]);
//! - every other op (other reductions, gather, scatter, shift, layout copies)
//!   is evaluated by the reference op implementations (`cpu::ops`), their
//!   output buffers taken from the pool.
//!
//! In f64 the results are therefore bitwise the interpreter's
//! ([`super::execute`]); in f32 they differ by the GEMMs' summation order
//! and the softmax rows' `exp` and sums (about 1e-6 relative).
//!
//! Its speed against the interpreter, and where the time goes, are measured
//! by `tests/cpu/plan_exec.rs` (`full_model`, printed) and recorded in docs/PERF.md.

mod attention;
pub mod gemm;
pub mod jit;
pub mod pool;
pub mod quant;
mod rope;
mod vmath;
mod xent;

use pool::Pool;

use super::{eval_with, load_input, load_param, wanted_outputs, CpuError, Profile, Real, Run, Tensor};
use pgc_ir::plan::{self, FusionRule, Kernel, Plan, PlanOptions, Precision};
use pgc_ir::{AttnPart, Graph, Op, ValueId};
use std::any::TypeId;
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Plan `g` for the CPU with the fusion `rules` (f32 storage, no bf16
/// copies), storing the outputs in `wanted` (all when `None`).
pub fn plan_for(g: &Graph, rules: &BTreeSet<FusionRule>, wanted: Option<&[&str]>) -> Result<Plan, CpuError> {
    let mut opts = PlanOptions::all(g, Precision::F32);
    opts.rules = rules.clone();
    if let Some(w) = wanted {
        opts.outputs = w.iter().map(|s| s.to_string()).collect();
    }
    plan::build(g, &opts).map_err(|e| CpuError::Invalid(e.to_string()))
}

/// Plan `g` with `rules` and run the plan: [`super::execute`]'s contract.
pub fn execute<F: Real>(
    g: &Graph,
    params: &HashMap<String, Tensor<F>>,
    inputs: &HashMap<String, Tensor<F>>,
    wanted: Option<&[&str]>,
    rules: &BTreeSet<FusionRule>,
) -> Result<Run<F>, CpuError> {
    pgc_ir::verify(g).map_err(|es| CpuError::Invalid(es.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")))?;
    let plan = plan_for(g, rules, wanted)?;
    execute_plan(g, &plan, params, inputs, wanted)
}

/// Run a plan built for `g`; return the outputs named in `wanted` (all graph
/// outputs when `None`; each must be stored by the plan). Element-wise
/// kernels are compiled with cranelift first (see [`jit`]), or taken from
/// the compilations of recent runs of the same graph and plan.
pub fn execute_plan<F: Real>(
    g: &Graph,
    plan: &Plan,
    params: &HashMap<String, Tensor<F>>,
    inputs: &HashMap<String, Tensor<F>>,
    wanted: Option<&[&str]>,
) -> Result<Run<F>, CpuError> {
    let jit = compiled::<F>(g, plan)?;
    execute_plan_with(g, plan, params, inputs, wanted, Some(&jit))
}

/// Compiled kernels of recent (graph, plan) pairs, per float type: a training
/// loop runs the same plan every step and compiles it once.
type JitCache = Vec<(TypeId, Graph, Vec<Kernel>, Arc<jit::JitKernels>)>;
static JIT_CACHE: Mutex<JitCache> = Mutex::new(Vec::new());
/// Entries kept in [`JIT_CACHE`].
const JIT_CACHE_LEN: usize = 4;

/// The plan's kernels compiled for `F`, from the cache when the same graph
/// and kernels were compiled before (compared in full, not by hash).
fn compiled<F: Real>(g: &Graph, plan: &Plan) -> Result<Arc<jit::JitKernels>, CpuError> {
    let ty = TypeId::of::<F>();
    {
        let cache = JIT_CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((.., j)) = cache.iter().find(|(t, cg, ck, _)| *t == ty && cg == g && *ck == plan.kernels) {
            return Ok(j.clone());
        }
    }
    let j = Arc::new(jit::compile::<F>(g, &plan.kernels).map_err(CpuError::Invalid)?);
    let mut cache = JIT_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= JIT_CACHE_LEN {
        cache.remove(0);
    }
    cache.push((ty, g.clone(), plan.kernels.clone(), j.clone()));
    Ok(j)
}

/// [`execute_plan`] with already compiled kernels (`None`: interpret every kernel).
pub fn execute_plan_with<F: Real>(
    g: &Graph,
    plan: &Plan,
    params: &HashMap<String, Tensor<F>>,
    inputs: &HashMap<String, Tensor<F>>,
    wanted: Option<&[&str]>,
    jit: Option<&jit::JitKernels>,
) -> Result<Run<F>, CpuError> {
    let outs = wanted_outputs(g, wanted)?;
    let n = g.nodes.len();
    if plan.values.len() != n {
        return Err(CpuError::Invalid(format!("the plan has {} values, the graph {n} nodes", plan.values.len())));
    }
    // Stored values: when the last kernel reading them has run, they are freed.
    let mut last_read = vec![usize::MAX; n];
    for (k, kr) in plan.kernels.iter().enumerate() {
        for v in &kr.inputs {
            last_read[v.index()] = k;
        }
    }
    let mut keep = vec![false; n];
    for (_, v) in &outs {
        keep[v.index()] = true;
    }
    let mut stored: Vec<Option<Tensor<F>>> = vec![None; n];
    let mut prof: HashMap<&'static str, (usize, f64)> = HashMap::new();
    let mut pool = Pool::<F>::checkout();
    let mut rope_tables = rope::Tables::default();
    let mut kept_probs = attention::Kept::<F>::new(g);

    for (k, kr) in plan.kernels.iter().enumerate() {
        let start = Instant::now();
        if let Some(c) = jit.and_then(|j| j.kernels.get(&k)) {
            let args: Vec<Tensor<F>> = c.sources.iter().map(|&m| fetch(g, params, inputs, &stored, &HashMap::new(), m)).collect::<Result<_, _>>()?;
            let slices: Vec<&[F]> = args.iter().map(|t| t.as_float().expect("checked: float input")).collect();
            let bufs = c.store_lens.iter().map(|&len| pool.take(len)).collect();
            let outs = jit::run(c, &slices, bufs);
            for ((m, _, _), data) in c.stores.iter().zip(outs) {
                stored[*m] = Some(Tensor::float(g.nodes[*m].ty.shape.clone(), data));
            }
            drop(args);
            for v in &kr.inputs {
                let m = v.index();
                if last_read[m] == k && !keep[m] {
                    if let Some(t) = stored[m].take() {
                        pool.give(t);
                    }
                }
            }
            let e = prof.entry("elementwise (jit)").or_default();
            e.0 += 1;
            e.1 += start.elapsed().as_secs_f64();
            continue;
        }
        // Prologue and ops, in topological (node id) order.
        let mut order: Vec<usize> = kr.prologue.iter().chain(&kr.ops).map(|v| v.index()).collect();
        order.sort_unstable();
        order.dedup();
        let mut local: HashMap<usize, Tensor<F>> = HashMap::new();
        // The attention gradients of one kernel with the same operands, computed together.
        let mut attn_done: HashMap<Vec<ValueId>, [Option<Tensor<F>>; 3]> = HashMap::new();
        let segs = jit.and_then(|j| j.segments.get(&k));
        // Log-sum-exp rows by logits value, shared by cross entropy and its gradient.
        let mut lse: HashMap<usize, Vec<F>> = HashMap::new();
        let mut done: Vec<usize> = jit.and_then(|j| j.skip.get(&k)).cloned().unwrap_or_default();
        for &m in &order {
            if done.contains(&m) {
                continue;
            }
            if let Some(seg) = segs.and_then(|s| s.get(&m)) {
                let c = &seg.code;
                let args: Vec<Tensor<F>> = c.sources.iter().map(|&a| fetch(g, params, inputs, &stored, &local, a)).collect::<Result<_, _>>()?;
                let slices: Vec<&[F]> = args.iter().map(|t| t.as_float().expect("checked: float input")).collect();
                let bufs = c.store_lens.iter().map(|&len| pool.take(len)).collect();
                let outs = jit::run(c, &slices, bufs);
                drop(args);
                for ((v, _, _), data) in c.stores.iter().zip(outs) {
                    local.insert(*v, Tensor::float(g.nodes[*v].ty.shape.clone(), data));
                }
                done.extend_from_slice(&seg.ops);
                continue;
            }
            let node = &g.nodes[m];
            let opname = node.op.name();
            let oerr = |msg: String| CpuError::Op { node: m as u32, op: opname, msg };
            let out: Tensor<F> = match &node.op {
                Op::Input { name, ty } => load_input(inputs, name, ty)?,
                Op::Param { id } => load_param(g, params, g.param_name(*id))?,
                Op::CausalAttentionGrad { wrt, scale } => {
                    if !attn_done.contains_key(&node.args) {
                        let want = [AttnPart::Q, AttnPart::K, AttnPart::V].map(|p| {
                            order.iter().any(|&o| matches!(&g.nodes[o].op, Op::CausalAttentionGrad { wrt, .. } if *wrt == p) && g.nodes[o].args == node.args)
                        });
                        let a: Vec<Tensor<F>> = node.args.iter().map(|a| fetch(g, params, inputs, &stored, &local, a.index())).collect::<Result<_, _>>()?;
                        let res = attention::backward([&a[0], &a[1], &a[2], &a[3]], *scale, want, &node.args, &mut kept_probs, &mut pool);
                        attn_done.insert(node.args.clone(), res);
                    }
                    attn_done.get_mut(&node.args).unwrap()[*wrt as usize].take().ok_or_else(|| oerr("internal: attention gradient computed twice".into()))?
                }
                op => {
                    let a: Vec<Tensor<F>> = node.args.iter().map(|a| fetch(g, params, inputs, &stored, &local, a.index())).collect::<Result<_, _>>()?;
                    match op {
                        Op::Linear => gemm::linear(&a[0], &a[1], &mut pool),
                        Op::MatMul => gemm::matmul(&a[0], &a[1], &mut pool),
                        Op::OuterSum => gemm::outer_sum(&a[0], &a[1], &mut pool),
                        Op::FakeQuant { bits } => quant::fake_quant(&a[0], *bits, &mut pool),
                        Op::CrossEntropy | Op::CrossEntropyGrad => {
                            let rows = match lse.entry(node.args[0].index()) {
                                Entry::Occupied(e) => e.into_mut(),
                                Entry::Vacant(e) => e.insert(xent::row_lse(&a[0]).map_err(oerr)?),
                            };
                            match op {
                                Op::CrossEntropy => xent::loss(&a[0], &a[1], rows),
                                _ => xent::grad(&a[0], &a[1], &a[2], rows, &mut pool),
                            }
                            .map_err(oerr)?
                        }
                        Op::CausalAttention { scale } => attention::forward(&a[0], &a[1], &a[2], *scale, &node.args, &mut kept_probs, &mut pool),
                        Op::Rope { base, inverse } => rope::rope(&a[0], *base, *inverse, &mut rope_tables, &mut pool),
                        _ => eval_with(op, a, &node.ty, &mut pool).map_err(oerr)?,
                    }
                }
            };
            if out.shape != node.ty.shape || out.dtype() != node.ty.dtype {
                return Err(oerr(format!("internal: computed {}{:?}, expected {}", out.dtype(), out.shape, node.ty)));
            }
            local.insert(m, out);
        }
        for v in &kr.outputs {
            let m = v.index();
            let t = local.remove(&m).ok_or_else(|| CpuError::Invalid(format!("kernel {}: output %{m} not computed", kr.name)))?;
            stored[m] = Some(t);
        }
        for (_, t) in local.drain() {
            pool.give(t);
        }
        for v in &kr.inputs {
            let m = v.index();
            if last_read[m] == k && !keep[m] {
                if let Some(t) = stored[m].take() {
                    pool.give(t);
                }
            }
        }
        let e = prof.entry(kr.kind.name()).or_default();
        e.0 += 1;
        e.1 += start.elapsed().as_secs_f64();
    }
    let outputs = outs
        .iter()
        .map(|(name, v)| {
            let t = stored[v.index()].clone().ok_or_else(|| CpuError::Invalid(format!("the plan does not store output `{name}`")))?;
            Ok((name.clone(), t))
        })
        .collect::<Result<_, CpuError>>()?;
    drop(stored);
    kept_probs.release(&mut pool);
    pool.checkin();
    let mut ops: Vec<_> = prof.into_iter().map(|(k, (c, t))| (k, c, t)).collect();
    ops.sort_by(|a, b| b.2.total_cmp(&a.2));
    Ok(Run { outputs, profile: Profile { ops } })
}

/// An operand of a kernel's op: computed in this kernel, stored by an
/// earlier one, or a parameter, input or scalar.
fn fetch<F: Real>(
    g: &Graph,
    params: &HashMap<String, Tensor<F>>,
    inputs: &HashMap<String, Tensor<F>>,
    stored: &[Option<Tensor<F>>],
    local: &HashMap<usize, Tensor<F>>,
    m: usize,
) -> Result<Tensor<F>, CpuError> {
    if let Some(t) = local.get(&m).or(stored[m].as_ref()) {
        return Ok(t.clone());
    }
    match &g.nodes[m].op {
        Op::Scalar { value } => Ok(Tensor::float(vec![], vec![F::from_f64(*value)])),
        Op::Param { id } => load_param(g, params, g.param_name(*id)),
        Op::Input { name, .. } => inputs.get(name).cloned().ok_or_else(|| CpuError::MissingInput(name.clone())),
        op => Err(CpuError::Op { node: m as u32, op: op.name(), msg: "internal: read before any kernel computed it".into() }),
    }
}
