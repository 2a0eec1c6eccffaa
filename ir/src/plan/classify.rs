//! Which kind of kernel each op belongs to before fusion.

use crate::op::Op;
use crate::Graph;
use serde::{Deserialize, Serialize};

/// The kind of a kernel in the plan; each PTX emitter handles one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelKind {
    /// fp32 master weight -> bf16 copy, with fake quantization fused for QAT weights.
    WeightPrep,
    /// A matrix product (Linear, MatMul, OuterSum) with fused prologue and epilogue.
    Gemm,
    /// Flash attention forward (optionally with the q/k norm, rotary, q_gain prologue).
    Attention,
    /// Flash attention backward: the q, k and v gradients of one attention.
    AttentionBackward,
    /// Reductions over the last axis with the element-wise work around them (norms).
    RowWise,
    /// Reductions over leading axes (gradients of broadcast parameters).
    Reduce,
    /// Fused element-wise work over one index space.
    Elementwise,
    /// Embedding gathers (with the bigram hash).
    Gather,
    /// Scatter-adds into embedding tables.
    Scatter,
    /// Cross entropy and its gradient over rows of logits.
    CrossEntropy,
    /// The tied output head: GEMM, softcap, cross entropy and the logits gradient in one kernel.
    LmHead,
}

impl KernelKind {
    pub fn name(self) -> &'static str {
        match self {
            KernelKind::WeightPrep => "weight_prep",
            KernelKind::Gemm => "gemm",
            KernelKind::Attention => "attention",
            KernelKind::AttentionBackward => "attention_backward",
            KernelKind::RowWise => "rowwise",
            KernelKind::Reduce => "reduce",
            KernelKind::Elementwise => "elementwise",
            KernelKind::Gather => "gather",
            KernelKind::Scatter => "scatter",
            KernelKind::CrossEntropy => "cross_entropy",
            KernelKind::LmHead => "lm_head",
        }
    }
}

/// The kernel kind an op starts in, or None for sources (inputs, parameters,
/// scalar constants), which live in memory or as immediates.
pub fn initial_kind(g: &Graph, i: usize) -> Option<KernelKind> {
    let n = &g.nodes[i];
    Some(match &n.op {
        Op::Input { .. } | Op::Param { .. } | Op::Scalar { .. } => return None,
        Op::Linear | Op::MatMul | Op::OuterSum => KernelKind::Gemm,
        Op::CausalAttention { .. } => KernelKind::Attention,
        Op::CausalAttentionGrad { .. } => KernelKind::AttentionBackward,
        Op::Reduce { axis, .. } => {
            let rank = g.ty(n.args[0]).rank();
            if *axis + 1 == rank {
                KernelKind::RowWise
            } else {
                KernelKind::Reduce
            }
        }
        Op::SumTo { .. } if is_row_reduction(g, i) => KernelKind::RowWise,
        Op::SumTo { .. } => KernelKind::Reduce,
        Op::Gather => KernelKind::Gather,
        Op::ScatterAdd { .. } => KernelKind::Scatter,
        Op::FakeQuant { .. } => KernelKind::WeightPrep,
        Op::CrossEntropy | Op::CrossEntropyGrad => KernelKind::CrossEntropy,
        op if is_elementwise(op) => KernelKind::Elementwise,
        _ => unreachable!("every op is classified above or element-wise"),
    })
}

/// True for ops that compute each output element from a fixed set of input
/// elements (no reduction, no matrix product).
pub fn is_elementwise(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary { .. }
            | Op::LeakyRelu { .. }
            | Op::LeakyStep { .. }
            | Op::Binary { .. }
            | Op::Broadcast { .. }
            | Op::Reshape { .. }
            | Op::Permute { .. }
            | Op::Index { .. }
            | Op::Unindex { .. }
            | Op::Shift { .. }
            | Op::Rope { .. }
            | Op::BigramHash { .. }
    )
}

/// True for a reduction whose result has one value per row of its input (last axis reduced).
pub fn is_row_reduction(g: &Graph, i: usize) -> bool {
    match &g.nodes[i].op {
        Op::Reduce { axis, .. } => *axis + 1 == g.ty(g.nodes[i].args[0]).rank(),
        // A sum over exactly the last axis, kept as size 1 (`sum_to [.., 1]`).
        Op::SumTo { shape } => {
            let s = &g.ty(g.nodes[i].args[0]).shape;
            shape.len() == s.len() && shape.last() == Some(&1) && s.last() != Some(&1) && shape[..shape.len() - 1] == s[..s.len() - 1]
        }
        _ => false,
    }
}
