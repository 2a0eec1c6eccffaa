//! The plan executor: runs a kernel [`Plan`] kernel by kernel, in plan order,
//! on the CPU.
//!
//! Every value a kernel stores (its `outputs`) lives in its own buffer until
//! the last kernel reading it has run; values a kernel computes and does not
//! store (`Place::Fused`) live only while that kernel runs. Each kernel
//! evaluates its prologue and its ops in topological order:
//! - matrix products (Linear, MatMul, OuterSum, leading axes flattened) go
//!   through matrixmultiply (`cpu::linalg`);
//! - attention forward and backward call the reference CPU attention; the q,
//!   k and v gradients of one attention in one kernel are computed together;
//! - every other op (element-wise, row-wise, reductions, gather, scatter,
//!   cross entropy, weight preparation and fake quantization, GEMM prologues
//!   and epilogues) is evaluated by the reference op implementations
//!   (`cpu::ops`), one op at a time.
//!
//! Numerics therefore match [`super::execute`] op for op; the plan only
//! changes which values are kept and when they are freed.
//!
//! Element-wise kernels made only of Unary, Binary, Broadcast, Scalar,
//! LeakyRelu and LeakyStep ops (outputs of one shape, or a Permute /
//! Reshape(Permute) of it, stored in the permuted layout) are compiled with
//! cranelift into native row loops ([`jit`]), bitwise equal to the
//! reference. Not done yet (issue 8): compiled row-wise, reduction, GEMM
//! epilogue/prologue, cross-entropy and weight-prep kernels (interpreted op
//! by op), and element-wise kernels with Unindex. The full model is bound
//! by its matrix products, so the plan executor runs at about the
//! interpreter's speed, not the 2x the issue asks for.

pub mod jit;

use super::{attention, eval, load_input, load_param, CpuError, Profile, Real, Run, Tensor};
use pgc_ir::plan::{self, FusionRule, Plan, PlanOptions, Precision};
use pgc_ir::{AttnPart, Graph, Op, ValueId};
use std::collections::{BTreeSet, HashMap};
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
/// kernels are compiled with cranelift first (see [`jit`]).
pub fn execute_plan<F: Real>(
    g: &Graph,
    plan: &Plan,
    params: &HashMap<String, Tensor<F>>,
    inputs: &HashMap<String, Tensor<F>>,
    wanted: Option<&[&str]>,
) -> Result<Run<F>, CpuError> {
    let jit = jit::compile::<F>(g, &plan.kernels).map_err(CpuError::Invalid)?;
    execute_plan_with(g, plan, params, inputs, wanted, Some(&jit))
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
    let outs: Vec<(String, ValueId)> = match wanted {
        None => g.outputs.clone(),
        Some(names) => names
            .iter()
            .map(|n| g.output(n).map(|v| (n.to_string(), v)).ok_or_else(|| CpuError::NoOutput(n.to_string())))
            .collect::<Result<_, _>>()?,
    };
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

    for (k, kr) in plan.kernels.iter().enumerate() {
        let start = Instant::now();
        if let Some(c) = jit.and_then(|j| j.kernels.get(&k)) {
            let args: Vec<Tensor<F>> = c.loads.iter().map(|(m, _)| fetch(g, params, inputs, &stored, &HashMap::new(), *m)).collect::<Result<_, _>>()?;
            let slices: Vec<&[F]> = args.iter().map(|t| t.as_float().expect("checked: float input")).collect();
            let outs = jit::run(c, &slices);
            for ((m, _, _), data) in c.stores.iter().zip(outs) {
                stored[*m] = Some(Tensor::float(g.nodes[*m].ty.shape.clone(), data));
            }
            drop(args);
            for v in &kr.inputs {
                let m = v.index();
                if last_read[m] == k && !keep[m] {
                    stored[m] = None;
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
        for &m in &order {
            let node = &g.nodes[m];
            let opname = node.op.name();
            let oerr = |msg: String| CpuError::Op { node: m as u32, op: opname, msg };
            let out: Tensor<F> = match &node.op {
                Op::Input { name, ty } => load_input(inputs, name, ty)?,
                Op::Param { name } => load_param(g, params, name)?,
                Op::CausalAttentionGrad { wrt, scale } => {
                    if !attn_done.contains_key(&node.args) {
                        let want = [AttnPart::Q, AttnPart::K, AttnPart::V].map(|p| {
                            order.iter().any(|&o| matches!(&g.nodes[o].op, Op::CausalAttentionGrad { wrt, .. } if *wrt == p) && g.nodes[o].args == node.args)
                        });
                        let a: Vec<Tensor<F>> = node.args.iter().map(|a| fetch(g, params, inputs, &stored, &local, a.index())).collect::<Result<_, _>>()?;
                        let res = attention::backward(&a[0], &a[1], &a[2], &a[3], *scale, want);
                        attn_done.insert(node.args.clone(), res);
                    }
                    attn_done.get_mut(&node.args).unwrap()[*wrt as usize].take().ok_or_else(|| oerr("internal: attention gradient computed twice".into()))?
                }
                op => {
                    let a: Vec<Tensor<F>> = node.args.iter().map(|a| fetch(g, params, inputs, &stored, &local, a.index())).collect::<Result<_, _>>()?;
                    eval(op, a, &node.ty).map_err(oerr)?
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
        drop(local);
        for v in &kr.inputs {
            let m = v.index();
            if last_read[m] == k && !keep[m] {
                stored[m] = None;
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
        Op::Param { name } => load_param(g, params, name),
        Op::Input { name, .. } => inputs.get(name).cloned().ok_or_else(|| CpuError::MissingInput(name.clone())),
        op => Err(CpuError::Op { node: m as u32, op: op.name(), msg: "internal: read before any kernel computed it".into() }),
    }
}
