//! Plan attention kernels onto the flash-attention emitters
//! ([`crate::ptx::templates::attention`]), tensors in the IR's `[B, heads, T, d]` layout.
//!
//! * `Attention`: `fwd(q, k, v, o, lse)`; `lse` (f32 `[B, H, T]`) goes to a
//!   scratch buffer that the backward of the same attention reads. Ops of the
//!   kernel other than the attention (a fused q/k prologue) are computed by a
//!   fused launch into scratch first, in the attention's input type.
//! * `AttentionBackward`: `dot(o, do, dsum, dq)` then the backward kernel(s)
//!   `(q, k, v, do, lse, dsum, dq, dk, dv)`; `dq` is f32 (accumulated with
//!   atomics in bf16), `dk`, `dv` in one element type. Gradients the plan
//!   kernel does not store go to scratch; gradients stored in another type
//!   than the kernels write are converted by a copy launch.
//!
//! q, k, v and do are read in the precision's type (bf16 or f32), staged
//! into scratch when stored otherwise. Head dims 8, 16, 32 and 64.

use super::toolkit::{self, output_target, plan_outputs, Fused};
use crate::ptx::templates::attention::{emit_attention, emit_backward_wgmma, emit_forward_wgmma, wgmma_backward_boxes, wgmma_forward_boxes, AttnConfig, AttnKernel, AttnKernels, AttnLayout};
use crate::ptx::templates::gemm::GemmPath;
use crate::ptx::ctx::{Ctx, PtxError};
use pgc_ir::types::DType;
use crate::ptx::pointwise::{BufArg, GraphExprs};
use crate::ptx::program::{ArgRef, Launch, ZeroRef};
use pgc_ir::plan::{Place, Precision};
use pgc_ir::{AttnPart, Op, ValueId};

/// The attention kernels' tensors are float: i32 never reaches them, and a
/// float that is not bf16 is f32.
fn to_elem_type(e: DType) -> DType {
    match e {
        DType::Bf16 => DType::Bf16,
        DType::F32 | DType::I32 => DType::F32,
    }
}

struct Dims {
    b: u32,
    h: u32,
    hk: u32,
    t: u32,
    d: u32,
}

fn dims(cx: &Ctx, q: ValueId, k: ValueId) -> Dims {
    let sq = &cx.g.ty(q).shape;
    let sk = &cx.g.ty(k).shape;
    Dims { b: sq[0] as u32, h: sq[1] as u32, hk: sk[1] as u32, t: sq[2] as u32, d: sq[3] as u32 }
}

fn precision(cx: &Ctx) -> (Precision, DType) {
    match cx.plan.precision {
        Precision::Bf16 => (Precision::Bf16, DType::Bf16),
        Precision::F32 => (Precision::F32, DType::F32),
    }
}

/// The kernels of `cfg` (added to the module by [`launch`], once: attention
/// kernels are named by their configuration, and several layers share one).
fn kernels(cfg: &AttnConfig) -> Result<AttnKernels, PtxError> {
    Ok(emit_attention(cfg)?)
}

fn launch(cx: &mut Ctx, k: &AttnKernel, d: &Dims, args: Vec<ArgRef>, zero: Vec<ZeroRef>) -> Launch {
    if !cx.module.kernels.iter().any(|m| m.name == k.kernel.name) {
        cx.add_kernel(k.kernel.clone());
    }
    let l = Launch { grid: k.grid(d.b, d.h, d.hk, d.t), block: k.block(), shared_bytes: k.smem_bytes };
    cx.launch(&k.kernel.name.clone(), l, args, zero);
    l
}

fn sizes(d: &Dims, scale: f64) -> [ArgRef; 4] {
    [ArgRef::U32(d.h), ArgRef::U32(d.hk), ArgRef::U32(d.t), ArgRef::F32(scale as f32)]
}

/// Read attention operand `v` in type `want`: computed by this kernel (a fused
/// prologue) -> a fused launch into scratch; stored -> as stored or staged.
fn input(cx: &mut Ctx, ki: usize, v: ValueId, want: DType, what: &str) -> Result<ArgRef, PtxError> {
    let kernel = cx.plan.kernels[ki].clone();
    if !kernel.ops.contains(&v) {
        return toolkit::operand(cx, v, want, what);
    }
    let g = cx.g;
    let aux = cx.scratch(g.ty(v).numel() as u64 * want.bytes() as u64);
    let inside: Vec<ValueId> = kernel.ops.iter().copied().filter(|&o| !matches!(g.node(o).op, Op::CausalAttention { .. })).collect();
    let mut gx = GraphExprs::new(g, inside.iter().copied());
    for &i in &kernel.inputs {
        let (elem, arg) = toolkit::plain_source(cx, i)?;
        gx.source_lazy(i, elem, arg);
    }
    let buf = gx.buffer(want, BufArg::Ref(ArgRef::Aux(aux)));
    let mut f = Fused::new(gx);
    plan_outputs(&mut f, &[(v, buf, want)], &inside)?;
    let name = cx.unique_name(&format!("{}_{what}", kernel.name));
    toolkit::emit(cx, &name, f)?;
    Ok(ArgRef::Aux(aux))
}

pub fn emit_kernel(cx: &mut Ctx, ki: usize) -> Result<Launch, PtxError> {
    let kernel = cx.plan.kernels[ki].clone();
    let g = cx.g;
    if let Some(&fwd) = kernel.ops.iter().find(|&&v| matches!(g.node(v).op, Op::CausalAttention { .. })) {
        return forward(cx, ki, fwd);
    }
    let grads: Vec<ValueId> = kernel.ops.iter().copied().filter(|&v| matches!(g.node(v).op, Op::CausalAttentionGrad { .. })).collect();
    if grads.is_empty() || grads.len() != kernel.ops.len() {
        return Err(PtxError::Unsupported("an attention backward kernel with ops other than attention gradients".into()));
    }
    backward(cx, &grads)
}

fn config(cx: &Ctx, d: &Dims) -> Result<AttnConfig, PtxError> {
    if !matches!(d.d, 8 | 16 | 32 | 64) {
        return Err(PtxError::Unsupported(format!("attention head_dim {} (the kernels take 8, 16, 32 or 64)", d.d)));
    }
    Ok(AttnConfig::new(precision(cx).0, d.d, AttnLayout::Bhtd))
}

/// The Hopper kernels apply: wgmma attention on, bf16, head dim 64.
fn hopper(cx: &Ctx, cfg: &AttnConfig, d: &Dims) -> bool {
    cx.attention_path == GemmPath::Wgmma && cfg.precision == Precision::Bf16 && d.d == 64
}

/// Turn the leading pointer arguments into tensor maps over their
/// `[rows, d]` matrices: per argument (query-headed?, box rows).
fn as_maps(args: &mut [ArgRef], d: &Dims, maps: &[(bool, u32)]) {
    for (i, &(query, bx)) in maps.iter().enumerate() {
        let rows = d.b * if query { d.h } else { d.hk } * d.t;
        let of = Box::new(std::mem::replace(&mut args[i], ArgRef::U32(0)));
        args[i] = ArgRef::TensorMap { of, rows, cols: d.d, box_rows: bx, box_cols: d.d };
    }
}

fn forward(cx: &mut Ctx, ki: usize, fwd: ValueId) -> Result<Launch, PtxError> {
    let g = cx.g;
    let node = g.node(fwd).clone();
    let Op::CausalAttention { scale } = node.op else { unreachable!() };
    let (q, k, v) = (node.args[0], node.args[1], node.args[2]);
    let d = dims(cx, q, k);
    let mut cfg = config(cx, &d)?;
    let want = precision(cx).1;
    let (qa, ka, va) = (input(cx, ki, q, want, "q")?, input(cx, ki, k, want, "k")?, input(cx, ki, v, want, "v")?);
    let o_elem = match &cx.plan.values[fwd.index()] {
        Place::Arena(s) => s.storage,
        _ => want,
    };
    if precision(cx).0 == Precision::Bf16 {
        cfg.out = to_elem_type(o_elem);
    }
    let o = match &cx.plan.values[fwd.index()] {
        Place::Arena(_) => ArgRef::Value(fwd),
        _ => ArgRef::Aux(cx.scratch(node.ty.numel() as u64 * cfg.out.bytes() as u64)),
    };
    let lse = cx.scratch(d.b as u64 * d.h as u64 * d.t as u64 * 4);
    cx.lse.insert(fwd.index(), (lse, o.clone(), cfg.out));
    let ks = kernels(&cfg)?;
    let mut args = vec![qa, ka, va, o, ArgRef::Aux(lse)];
    args.extend(sizes(&d, scale));
    if hopper(cx, &cfg, &d) {
        // the Hopper forward: q, k, v through tensor maps over their [rows, 64] matrices
        let k = emit_forward_wgmma(&cfg)?;
        let (qb, kb) = wgmma_forward_boxes();
        as_maps(&mut args, &d, &[(true, qb), (false, kb), (false, kb)]);
        return Ok(launch(cx, &k, &d, args, vec![]));
    }
    Ok(launch(cx, &ks.fwd, &d, args, vec![]))
}

fn backward(cx: &mut Ctx, grads: &[ValueId]) -> Result<Launch, PtxError> {
    let g = cx.g;
    let node = g.node(grads[0]).clone();
    let Op::CausalAttentionGrad { scale, .. } = node.op else { unreachable!() };
    let (q, k, v, dy) = (node.args[0], node.args[1], node.args[2], node.args[3]);
    let d = dims(cx, q, k);
    let (prec, want) = precision(cx);
    let mut cfg = config(cx, &d)?;
    // The forward of this attention: its output and log-sum-exp.
    let fwd = (0..g.nodes.len()).find(|&f| matches!(g.nodes[f].op, Op::CausalAttention { .. }) && g.nodes[f].args[..] == node.args[..3]);
    let (lse, o, o_type) = match fwd.and_then(|f| cx.lse.get(&f).cloned()) {
        Some(x) => x,
        None => {
            // No forward ran in this program: run one here (o and lse into scratch).
            let mut fcfg = cfg.clone();
            fcfg.out = to_elem_type(want);
            let ks = kernels(&fcfg)?;
            let (qa, ka, va) = (toolkit::operand(cx, q, want, "q")?, toolkit::operand(cx, k, want, "k")?, toolkit::operand(cx, v, want, "v")?);
            let o = ArgRef::Aux(cx.scratch(g.ty(q).numel() as u64 * fcfg.out.bytes() as u64));
            let lse = cx.scratch(d.b as u64 * d.h as u64 * d.t as u64 * 4);
            let mut args = vec![qa, ka, va, o.clone(), ArgRef::Aux(lse)];
            args.extend(sizes(&d, scale));
            launch(cx, &ks.fwd, &d, args, vec![]);
            (lse, o, fcfg.out)
        }
    };
    cfg.out = o_type;
    let stored = |cx: &Ctx, part: AttnPart| -> Option<(ValueId, DType)> {
        grads.iter().copied().find(|&x| matches!(g.node(x).op, Op::CausalAttentionGrad { wrt, .. } if wrt == part)).and_then(|x| match &cx.plan.values[x.index()] {
            Place::Arena(s) => Some((x, s.storage)),
            _ => None,
        })
    };
    let (gq, gk, gv) = (stored(cx, AttnPart::Q), stored(cx, AttnPart::K), stored(cx, AttnPart::V));
    // dk, dv in one type: bf16 only when both are stored bf16 (bf16 precision).
    let kv_type = match (gk, gv) {
        (Some((_, DType::Bf16)), Some((_, DType::Bf16))) if prec == Precision::Bf16 => DType::Bf16,
        (Some((_, DType::Bf16)), None) | (None, Some((_, DType::Bf16))) if prec == Precision::Bf16 => DType::Bf16,
        _ => DType::F32,
    };
    cfg.grad_out = to_elem_type(kv_type);
    let ks = kernels(&cfg)?;
    let (qa, ka, va, da) = (
        toolkit::operand(cx, q, want, "q")?,
        toolkit::operand(cx, k, want, "k")?,
        toolkit::operand(cx, v, want, "v")?,
        toolkit::operand(cx, dy, want, "do")?,
    );
    // Destinations: the output slot when its type matches, else scratch (+ a copy after).
    let mut copies: Vec<(ValueId, usize, DType)> = Vec::new();
    let mut dest = |cx: &mut Ctx, stored: Option<(ValueId, DType)>, ty: DType, like: ValueId| -> ArgRef {
        match stored {
            Some((x, e)) if e == ty => ArgRef::Value(x),
            Some((x, _)) => {
                let a = cx.scratch(g.ty(x).numel() as u64 * ty.bytes() as u64);
                copies.push((x, a, ty));
                ArgRef::Aux(a)
            }
            None => ArgRef::Aux(cx.scratch(g.ty(like).numel() as u64 * ty.bytes() as u64)),
        }
    };
    let dq = dest(cx, gq, DType::F32, q);
    let dk = dest(cx, gk, kv_type, k);
    let dv = dest(cx, gv, kv_type, v);
    let dsum = cx.scratch(d.b as u64 * d.h as u64 * d.t as u64 * 4);
    let rows = d.b * d.h * d.t;
    launch(cx, &ks.dot, &d, vec![o, da.clone(), ArgRef::Aux(dsum), dq.clone(), ArgRef::U32(d.h), ArgRef::U32(d.t), ArgRef::U32(rows)], vec![]);
    let mut args = vec![qa, ka, va, da, ArgRef::Aux(lse), ArgRef::Aux(dsum), dq, dk, dv];
    args.extend(sizes(&d, scale));
    let last = if hopper(cx, &cfg, &d) {
        // the Hopper backward: q, k, v, do through tensor maps
        let k = emit_backward_wgmma(&cfg)?;
        let (qb, kb) = wgmma_backward_boxes();
        as_maps(&mut args, &d, &[(true, qb), (false, kb), (false, kb), (true, qb)]);
        launch(cx, &k, &d, args, vec![])
    } else {
        let mut last = None;
        for bk in &ks.bwd {
            last = Some(launch(cx, bk, &d, args.clone(), vec![]));
        }
        last.expect("a backward kernel")
    };
    for (x, a, ty) in copies {
        let dst = output_target(cx, x)?;
        toolkit::copy(cx, x, (ty, ArgRef::Aux(a)), dst, "convert")?;
    }
    Ok(last)
}
