//! The PTX backend's entry point: a kernel plan -> a [`Program`] (one PTX
//! module and the ordered launches that run the plan).
//!
//! [`compile_program`] walks the plan's kernels in order and hands each to
//! the emitter of its kind (`adapters/`); every emitter produces one or more
//! launches of entries in the one module; the launches (with their
//! geometry) live in the program, and the plan is left as the planner made it. Kernels identical up
//! to their name share one entry ([`Ctx::add_kernel`]), so the layers of a
//! model reuse their kernels.
//!
//! ## Scalar code generation (`crate::scalar`, lowered by `pointwise/`)
//! Every kind computes the kernel plan's element-wise work through one
//! demand-driven generator (the scalar IR the CPU JIT lowers too): the value of an IR node at a multi-index is an
//! expression built recursively through the kernel's ops down to loads of its
//! inputs (index algebra per op: broadcast, reshape, permute, index/unindex,
//! shift, rope, bigram hash, gather), hash-consed and simplified on
//! construction; reductions are expressions too. The lowering emits each
//! expression once per binding of its free variables, hoists loop
//! invariants, and makes reductions warp-cooperative where the warp agrees
//! on the row.
//!
//! ## Kernels per kind (256-thread blocks unless said)
//! * element-wise, gather, weight preparation and the rest of the fused kinds:
//!   one launch of grid-stride sections ([`adapters::fused`]): 4 (or 2)
//!   consecutive elements per thread with vector loads/stores; row-wise work
//!   (norms, fake quantization, cross entropy) one warp per row, each row
//!   reduction a pass of lanes over the row (4 consecutive elements per step)
//!   and a butterfly shuffle, then a lane-strided pass storing the row's
//!   elements (outputs of shape `[..., 1]` once per row by lane 0);
//!   reductions over leading axes one thread per (output element, chunk of
//!   the reduced range) with `red.global.add.f32` into a zero-filled output;
//!   few long rows split over several warps likewise; scatter-add one thread
//!   per element of the gradient, `red.global.add.f32` into the zero-filled table.
//! * GEMM: the GEMM emitter's tiles ([`super::templates::gemm`]), the plan's epilogue ops
//!   as a pointwise program at each output element, the rms-norm prologue as a
//!   row scale; bf16 GEMMs convert f32 operands while loading.
//! * LM head: with a softcap bounding the logits, the GEMM with the softcap,
//!   per-row sums for the log-sum-exp and the cross entropy in its epilogue,
//!   a row pass for the loss, and the GEMM again with the logits gradient in
//!   its epilogue ([`adapters::lm_head`]); otherwise the logits GEMM into f32
//!   scratch, then a row-wise launch one warp per row.
//! * attention: the flash-attention emitters ([`super::templates::attention`]).

use super::adapters;
use super::ctx::{Ctx, PtxError};
use super::program::{ArgRef, Launch, LaunchStep, Program, ZeroRef};
use super::templates::gemm::GemmPath;
use pgc_ir::plan::{FusionRule, KernelKind, Place, Plan};
use pgc_ir::{Graph, ValueId};
use std::collections::BTreeSet;

/// The fusion rules the emitters implement; plans for this backend should be
/// built with only these.
///
/// `lm-head-cross-entropy` is emitted as GEMM epilogues (see
/// [`super::adapters::lm_head`]): the logits are not stored unless asked.
///
/// Missing:
/// * `qk-prologue-into-attention`: the q/k prologue would run as a row-wise
///   launch into scratch before the attention launch (no bytes saved); with the
///   rule off it is an ordinary row-wise kernel.
pub fn supported_rules() -> BTreeSet<FusionRule> {
    [
        FusionRule::Elementwise,
        FusionRule::Rowwise,
        FusionRule::GemmEpilogue,
        FusionRule::RmsnormIntoGemm,
        FusionRule::LmHeadCrossEntropy,
        FusionRule::AttentionBackwardTogether,
        FusionRule::RecomputeElementwise,
        FusionRule::ElementwiseIntoProducer,
        FusionRule::WeightPrepTogether,
        FusionRule::Bf16GemmOutputs,
    ]
        .into_iter()
        .collect()
}

fn check_sizes(g: &Graph) -> Result<(), PtxError> {
    for (i, n) in g.nodes.iter().enumerate() {
        if n.ty.numel() >= (1usize << 31) {
            return Err(PtxError::Unsupported(format!("%{i} has {} elements; kernels index with 32-bit integers (at most 2^31 - 1)", n.ty.numel())));
        }
    }
    Ok(())
}

/// Choices of the PTX backend that the plan does not make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PtxOptions {
    /// The bf16 GEMMs' path where their shapes allow it (default wgmma).
    pub gemm_path: GemmPath,
    /// The attention forward's path where it applies (bf16, head dim 64; default wgmma).
    pub attention_path: GemmPath,
    /// wgmma GEMMs launch one block per SM, each walking many tiles (the
    /// default); off, one block per tile (the same kernel, the same results):
    /// what `pgc profile`'s sampled blocks want, a tile's cost per block.
    pub persistent: bool,
}

impl Default for PtxOptions {
    fn default() -> Self {
        PtxOptions { gemm_path: GemmPath::Wgmma, attention_path: GemmPath::Wgmma, persistent: true }
    }
}

/// Compile a kernel plan of `g` to a PTX program with the default options.
pub fn compile_program(g: &Graph, plan: &Plan) -> Result<Program, PtxError> {
    compile_program_with(g, plan, &PtxOptions::default())
}

/// Compile a kernel plan of `g` to a PTX program.
pub fn compile_program_with(g: &Graph, plan: &Plan, opts: &PtxOptions) -> Result<Program, PtxError> {
    if plan.values.len() != g.nodes.len() {
        return Err(PtxError::Unsupported(format!("the plan places {} values but the graph has {} nodes", plan.values.len(), g.nodes.len())));
    }
    check_sizes(g)?;
    let mut cx = Ctx::new(g, plan);
    cx.gemm_path = opts.gemm_path;
    cx.attention_path = opts.attention_path;
    cx.persistent = opts.persistent;
    for (ki, k) in plan.kernels.iter().enumerate() {
        cx.kernel = ki;
        emit_plan_kernel(&mut cx, ki).map_err(|e| PtxError::Kernel { kernel: k.name.clone(), kind: k.kind.name(), msg: e.to_string() })?;
    }
    let mut launches = cx.launches;
    hoist_zero_fills(plan, &mut launches);
    Ok(Program::new(plan.clone(), &cx.module, launches, cx.aux))
}

/// What a launch's pointers reach: arena byte ranges and aux buffers.
fn footprint(plan: &Plan, l: &LaunchStep) -> (Vec<(u64, u64)>, Vec<usize>) {
    let (mut arena, mut aux) = (Vec::new(), Vec::new());
    let value = |v: ValueId, arena: &mut Vec<(u64, u64)>| {
        if let Some(Place::Arena(s) | Place::Param { prepared: Some(s), .. }) = plan.values.get(v.index()) {
            arena.push((s.offset, s.offset + s.bytes));
        }
    };
    for a in l.args.iter().filter_map(|a| a.pointer()) {
        match a {
            ArgRef::Value(v) => value(*v, &mut arena),
            ArgRef::Aux(k) => aux.push(*k),
            _ => {}
        }
    }
    for z in &l.zero_first {
        match z {
            ZeroRef::Value(v) => value(*v, &mut arena),
            ZeroRef::Aux(k) => aux.push(*k),
        }
    }
    (arena, aux)
}

/// Move every zero-fill to the earliest launch after which nothing touches
/// its memory before the launch that needs it, so that zero-fills gather on
/// few launches (the executor zeroes one launch's regions in one helper
/// launch). A slot reused by an earlier value keeps its fill after that
/// value's last reader.
fn hoist_zero_fills(plan: &Plan, launches: &mut [LaunchStep]) {
    let mut prints: Vec<(Vec<(u64, u64)>, Vec<usize>)> = launches.iter().map(|l| footprint(plan, l)).collect();
    for j in 0..launches.len() {
        let zeros = std::mem::take(&mut launches[j].zero_first);
        for z in zeros {
            let (range, aux) = match &z {
                ZeroRef::Value(v) => match plan.values.get(v.index()) {
                    Some(Place::Arena(s) | Place::Param { prepared: Some(s), .. }) => (Some((s.offset, s.offset + s.bytes)), None),
                    _ => (None, None),
                },
                ZeroRef::Aux(k) => (None, Some(*k)),
            };
            let touches = |p: &(Vec<(u64, u64)>, Vec<usize>)| match (range, aux) {
                (Some((a, b)), _) => p.0.iter().any(|&(c, d)| a < d && c < b),
                (None, Some(k)) => p.1.contains(&k),
                // Not in the arena or an aux buffer: left where it is.
                (None, None) => true,
            };
            let mut at = j;
            while at > 0 && !touches(&prints[at - 1]) {
                at -= 1;
            }
            if at != j {
                match (range, aux) {
                    (Some(r), _) => prints[at].0.push(r),
                    (None, Some(k)) => prints[at].1.push(k),
                    _ => {}
                }
            }
            launches[at].zero_first.push(z);
        }
    }
}

/// Hand plan kernel `ki` to the adapter of its kind (its main launch).
pub fn emit_plan_kernel(cx: &mut Ctx, ki: usize) -> Result<Launch, PtxError> {
    match cx.plan.kernels[ki].kind {
        KernelKind::Gemm => adapters::gemm::emit_kernel(cx, ki),
        // The softcapped head with cross entropy in its epilogues, else a plain GEMM kernel.
        KernelKind::LmHead => match adapters::lm_head::emit_kernel(cx, ki) {
            Ok(Some(l)) => Ok(l),
            Ok(None) => adapters::gemm::emit_kernel(cx, ki),
            Err(e) => Err(e),
        },
        KernelKind::Attention | KernelKind::AttentionBackward => adapters::attention::emit_kernel(cx, ki),
        KernelKind::Elementwise
        | KernelKind::RowWise
        | KernelKind::Reduce
        | KernelKind::Gather
        | KernelKind::Scatter
        | KernelKind::WeightPrep
        | KernelKind::CrossEntropy => adapters::fused::emit_kernel(cx, ki),
    }
}
