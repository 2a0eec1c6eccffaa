//! The fusion rules. Each can be switched off (`pgc compile --no-fuse NAME`)
//! so layouts can be compared; with every rule off, each op is its own kernel.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FusionRule {
    /// An element-wise op joins the kernel of its consumers when they are all
    /// in one element-wise, row-wise, reduction, gather, scatter or cross-entropy
    /// kernel (it is recomputed there instead of stored and reloaded).
    Elementwise,
    /// A last-axis reduction (RMS norm's mean of squares) joins the element-wise
    /// kernel that consumes it over the same rows: one row-wise kernel per norm.
    Rowwise,
    /// Element-wise consumers of a matrix product (relu^2, residual add with
    /// per-channel scale, resid_mix, gradient accumulation) run in its epilogue.
    GemmEpilogue,
    /// `rms(x)` read only as the input of matrix products is not stored: the
    /// norm kernel stores the row scale and each GEMM applies it to its output rows.
    RmsnormIntoGemm,
    /// The q/k RMS norm, rotary embedding and q_gain, when read only by the
    /// attention forward, run in the attention kernel's prologue.
    QkPrologueIntoAttention,
    /// The tied output head: logits GEMM, softcap, cross entropy and the logits
    /// gradient in one kernel; logits are stored only when asked for.
    LmHeadCrossEntropy,
    /// The q, k and v gradients of one attention in one backward kernel.
    AttentionBackwardTogether,
    /// A cheap one-input element-wise value (relu of a pre-activation) is
    /// recomputed by a kernel that also reads its input, and a reshape/permute
    /// view of a value stored anyway is indexed through, instead of read from
    /// memory; it is stored only if another kernel still reads it.
    RecomputeElementwise,
    /// An element-wise kernel that reads a value a row-wise kernel computes,
    /// over the same shape (and otherwise only parameters), runs in that
    /// row-wise kernel as an extra output: the value is not read back (the
    /// gradient scaled by attn_scale / mlp_scale before its GEMMs).
    ElementwiseIntoProducer,
    /// Every weight preparation (bf16 copies, fake quantization) in one
    /// kernel: one launch per step instead of one per weight.
    WeightPrepTogether,
    /// Storage, not fusion (bf16 plans): a matrix product read by other
    /// kernels is stored in bf16 even when a row-wise or element-wise kernel
    /// reads it (the q/k projections before their norm, the fc
    /// pre-activation, the input gradients), as PyTorch's autocast stores
    /// linear outputs; so are the attention backward's key and value
    /// gradients, and values only reductions read (they accumulate in
    /// f32). Sums formed in an epilogue (residual adds, gradient
    /// accumulation) and the atomically accumulated dq stay f32.
    Bf16GemmOutputs,
}

impl FusionRule {
    pub const ALL: [FusionRule; 11] = [
        FusionRule::Elementwise,
        FusionRule::Rowwise,
        FusionRule::GemmEpilogue,
        FusionRule::RmsnormIntoGemm,
        FusionRule::QkPrologueIntoAttention,
        FusionRule::LmHeadCrossEntropy,
        FusionRule::AttentionBackwardTogether,
        FusionRule::RecomputeElementwise,
        FusionRule::ElementwiseIntoProducer,
        FusionRule::WeightPrepTogether,
        FusionRule::Bf16GemmOutputs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FusionRule::Elementwise => "elementwise",
            FusionRule::Rowwise => "rowwise",
            FusionRule::GemmEpilogue => "gemm-epilogue",
            FusionRule::RmsnormIntoGemm => "rmsnorm-into-gemm",
            FusionRule::QkPrologueIntoAttention => "qk-prologue-into-attention",
            FusionRule::LmHeadCrossEntropy => "lm-head-cross-entropy",
            FusionRule::AttentionBackwardTogether => "attention-backward-together",
            FusionRule::RecomputeElementwise => "recompute-elementwise",
            FusionRule::ElementwiseIntoProducer => "elementwise-into-producer",
            FusionRule::WeightPrepTogether => "weight-prep-together",
            FusionRule::Bf16GemmOutputs => "bf16-gemm-outputs",
        }
    }

    pub fn parse(s: &str) -> Option<FusionRule> {
        FusionRule::ALL.into_iter().find(|r| r.name() == s)
    }
}
