//! The LM head with its softcap and cross entropy in GEMM epilogues
//! (`lm-head-cross-entropy`): the `[rows, V]` logits never go through memory
//! unless the plan stores them (`pgc run`, eval with logits).
//!
//! With logits bounded by a softcap `z = c * tanh(x / c)`, `|z| <= c`, the
//! log-sum-exp needs no running maximum: `lse = c + ln(sum exp(z - c))`, every
//! term in `[e^-2c, 1]` (normal f32 for `c <= 40`). Three launches:
//! 1. the GEMM `x W^T` whose epilogue computes `z` at each element and adds
//!    `exp(z - c)` and `[col == target] * z` into two per-row sums (quad
//!    shuffles, one atomic per row and warp); it stores the logits only when
//!    the plan stores them;
//! 2. a row pass: `lse[row] = c + ln(sum)`, `loss += (lse - z_target) / rows`;
//! 3. when the kernel holds the logits gradient: the GEMM again, its epilogue
//!    computing the gradient outputs at each element from the recomputed `z`
//!    and `lse[row]` (`(exp(z - lse) - [col == target]) * dloss / rows`, then
//!    the softcap's backward), stored in the type the backward GEMMs read.
//!
//! Recomputing the product costs the head's forward FLOPs once more and
//! replaces writing and reading the f32 logits. Without such a bound (no
//! softcap, or `c > 40`) [`emit_kernel`] returns `None` and the kernel takes
//! the product-in-scratch path of [`super::gemm`].

use super::toolkit::{self, output_target, Fused, Section, Store};
use super::gemm::{PwBuild, Setup};
use crate::ptx::ctx::{Ctx, PtxError};
use crate::ptx::templates::epilogue::EpiStep;
use crate::scalar::expr::{Ty, F1};
use pgc_ir::types::DType;
use crate::ptx::pointwise::{BufArg, GraphExprs};
use crate::ptx::program::{ArgRef, Launch, ZeroRef};
use pgc_ir::plan::Kernel as PlanKernel;
use pgc_ir::{BinaryFn, Graph, Op, UnaryFn, ValueId};

/// Largest softcap for which `exp(z - c)` stays a normal f32 down to `z = -c`.
const MAX_CAP: f64 = 40.0;

/// The softcap bound `c` of logits `z = c * tanh(..)` (either operand order).
fn softcap_bound(g: &Graph, z: ValueId) -> Option<f64> {
    let node = g.node(z);
    let Op::Binary { f: BinaryFn::Mul } = node.op else { return None };
    let (a, b) = (node.args[0], node.args[1]);
    let scalar = |v: ValueId| match g.node(v).op {
        Op::Scalar { value } => Some(value),
        _ => None,
    };
    let is_tanh = |v: ValueId| matches!(g.node(v).op, Op::Unary { f: UnaryFn::Tanh });
    let c = match (scalar(a), scalar(b)) {
        (Some(c), None) if is_tanh(b) => c,
        (None, Some(c)) if is_tanh(a) => c,
        _ => return None,
    };
    (c > 0.0 && c <= MAX_CAP).then_some(c)
}

/// Whether `v` is computed (inside `ops`) from `from`.
fn depends_on(g: &Graph, ops: &[ValueId], v: ValueId, from: ValueId) -> bool {
    let mut stack = vec![v];
    let mut seen = std::collections::HashSet::new();
    while let Some(x) = stack.pop() {
        if x == from {
            return true;
        }
        if ops.contains(&x) && seen.insert(x) {
            stack.extend(g.node(x).args.iter().copied());
        }
    }
    false
}

/// Emit the LM head kernel `ki` as described in the module doc; `None` when
/// its shape of graph is not the one handled here (nothing emitted then).
pub fn emit_kernel(cx: &mut Ctx, ki: usize) -> Result<Option<Launch>, PtxError> {
    let kernel = cx.plan.kernels[ki].clone();
    let g = cx.g;
    let Some(ce) = kernel.ops.iter().copied().find(|&v| matches!(g.node(v).op, Op::CrossEntropy)) else { return Ok(None) };
    let (z, t) = (g.node(ce).args[0], g.node(ce).args[1]);
    let Some(cap) = softcap_bound(g, z) else { return Ok(None) };
    let grads: Vec<ValueId> =
        kernel.ops.iter().copied().filter(|&v| matches!(g.node(v).op, Op::CrossEntropyGrad) && g.node(v).args[..2] == [z, t]).collect();
    // Every output: the loss, values of the forward (no gradient in them), or the gradient's images.
    let mut fwd_outs = Vec::new();
    let mut bwd_outs = Vec::new();
    for &o in &kernel.outputs {
        if o == ce {
            continue;
        }
        if depends_on(g, &kernel.ops, o, ce) {
            return Ok(None);
        }
        if grads.iter().any(|&d| depends_on(g, &kernel.ops, o, d)) {
            bwd_outs.push(o);
        } else {
            fwd_outs.push(o);
        }
    }
    // The head's own launches come last in `build`, after every epilogue is
    // built; on Unsupported, drop operand staging launches made before.
    let before = cx.launches.len();
    match build(cx, &kernel, ce, z, t, cap, &fwd_outs, &bwd_outs) {
        Ok(l) => Ok(Some(l)),
        Err(PtxError::Unsupported(_)) => {
            cx.launches.truncate(before);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[allow(clippy::too_many_arguments)]
fn build(
    cx: &mut Ctx,
    kernel: &PlanKernel,
    ce: ValueId,
    z: ValueId,
    t: ValueId,
    cap: f64,
    fwd_outs: &[ValueId],
    bwd_outs: &[ValueId],
) -> Result<Launch, PtxError> {
    let g = cx.g;
    let su = Setup::new(cx, kernel)?;
    let p = su.p;
    if g.ty(z).shape != g.ty(p).shape {
        return Err(PtxError::Unsupported("logits of another shape than the product".into()));
    }
    let rows = g.ty(t).numel();
    let rows_u32 = u32::try_from(rows).map_err(|_| PtxError::Unsupported("too many rows".into()))?;
    let sum_exp = cx.scratch(rows as u64 * 4);
    let z_target = cx.scratch(rows as u64 * 4);
    let lse = cx.scratch(rows as u64 * 4);

    // 1. Logits (stored only if asked) and the two row sums.
    let mut fwd = PwBuild::new(cx, &kernel.ops, &kernel.prologue, &kernel.inputs, p)?;
    for &o in fwd_outs {
        fwd.store_output(cx, o)?;
    }
    let zi = fwd.index_of(z)?;
    if zi != fwd.pidx {
        return Err(PtxError::Unsupported("logits not at the product's index".into()));
    }
    let zv = fwd.gx.value(z, &zi)?;
    let c = fwd.gx.x.f32_c(cap as f32);
    let shifted = fwd.gx.x.fsub(zv, c);
    let e = fwd.gx.x.f1(F1::Exp, shifted);
    fwd.row_sum(ArgRef::Aux(sum_exp), e);
    let tg = fwd.gx.value(t, &zi[..zi.len() - 1])?;
    let hit = fwd.gx.x.ieq(zi[zi.len() - 1], tg);
    let zero = fwd.gx.x.f32_c(0.0);
    let zt = fwd.gx.x.sel(hit, zv, zero);
    fwd.row_sum(ArgRef::Aux(z_target), zt);
    let (fwd_epi, fwd_args) = fwd.finish(cx);

    // 2. lse per row and the mean loss.
    let mut gx = GraphExprs::new(g, []);
    let s_buf = gx.buffer(DType::F32, BufArg::Ref(ArgRef::Aux(sum_exp)));
    let zt_buf = gx.buffer(DType::F32, BufArg::Ref(ArgRef::Aux(z_target)));
    let lse_buf = gx.buffer(DType::F32, BufArg::Ref(ArgRef::Aux(lse)));
    let var = gx.x.var(Ty::U32, rows as u64, "row");
    let r = gx.x.var_e(var);
    let s = gx.x.load(s_buf, r);
    let ln = gx.x.f1(F1::Log, s);
    let c = gx.x.f32_c(cap as f32);
    let row_lse = gx.x.fadd(c, ln);
    let ztv = gx.x.load(zt_buf, r);
    let term = gx.x.fsub(row_lse, ztv);
    let nf = gx.x.f32_c(rows as f32);
    let term = gx.x.fdiv(term, nf);
    let mut stores = vec![Store { buf: lse_buf, index: r, value: row_lse, atomic: false }];
    let mut zero_loss = Vec::new();
    if kernel.outputs.contains(&ce) {
        let (elem, arg) = output_target(cx, ce)?;
        if elem != DType::F32 {
            return Err(PtxError::Unsupported("a bf16 loss".into()));
        }
        let loss_buf = gx.buffer(DType::F32, BufArg::Ref(arg));
        let index = gx.x.int_c(0);
        stores.push(Store { buf: loss_buf, index, value: term, atomic: true });
        zero_loss.push(ZeroRef::Value(ce));
    }
    let mut rows_pass = Fused::new(gx);
    rows_pass.sections.push(Section::Items { var, n: rows_u32, vec: 1, stores });
    rows_pass.zero_first = zero_loss;

    // 3. The logits gradient and its images, from the recomputed logits and lse[row].
    let bwd = if bwd_outs.is_empty() {
        None
    } else {
        let mut pb = PwBuild::new(cx, &kernel.ops, &kernel.prologue, &kernel.inputs, p)?;
        let lse_b = pb.gx.buffer(DType::F32, BufArg::Ref(ArgRef::Aux(lse)));
        let re = pb.row_e();
        let l = pb.gx.x.load(lse_b, re);
        let row = pb.pidx[..pb.pidx.len() - 1].to_vec();
        pb.gx.preset_lse(z, &row, l);
        for &o in bwd_outs {
            pb.store_output(cx, o)?;
        }
        Some(pb.finish(cx))
    };

    // Every epilogue is built: emit.
    let name = cx.unique_name(&kernel.name);
    let mut cfg = su.config(vec![EpiStep::Pointwise(Box::new(fwd_epi))], DType::F32);
    cfg.name = name;
    let c_arg = su.a.clone();
    let mut launch = su.launch(cx, cfg, c_arg, fwd_args, vec![ZeroRef::Aux(sum_exp), ZeroRef::Aux(z_target)])?;
    let rows_name = cx.unique_name(&format!("{}_lse", kernel.name));
    toolkit::emit(cx, &rows_name, rows_pass)?;
    if let Some((epi, args)) = bwd {
        let mut cfg = su.config(vec![EpiStep::Pointwise(Box::new(epi))], DType::F32);
        cfg.name = cx.unique_name(&format!("{}_grad", kernel.name));
        let c_arg = su.a.clone();
        launch = su.launch(cx, cfg, c_arg, args, vec![])?;
    }
    Ok(launch)
}
