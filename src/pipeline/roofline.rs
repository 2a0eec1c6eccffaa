//! A kernel's floor: the larger of its FLOPs at the card's peak and its
//! fewest bytes at the card's bandwidth. The peaks are the H100 SXM
//! datasheet's (dense bf16 tensor cores, fp32 FMA, HBM3).

use pgc_ir::plan::{Kernel, KernelKind, Plan, Precision};

/// Dense bf16 tensor-core peak, FLOP/s.
pub const PEAK_BF16_FLOPS: f64 = 989e12;
/// fp32 FMA peak, FLOP/s.
pub const PEAK_F32_FLOPS: f64 = 67e12;
/// HBM3 bandwidth, bytes/s.
pub const PEAK_BYTES_PER_S: f64 = 3.35e12;

/// Whether a kernel's FLOPs run on tensor cores (bf16 plans: matrix products and attention).
pub fn on_tensor_cores(plan: &Plan, kind: KernelKind) -> bool {
    plan.precision == Precision::Bf16 && matches!(kind, KernelKind::Gemm | KernelKind::Attention | KernelKind::AttentionBackward | KernelKind::LmHead)
}

/// One kernel's floor and which bound sets it.
#[derive(Clone, Copy, Debug)]
pub struct Floor {
    pub compute_s: f64,
    pub memory_s: f64,
    /// The peak the FLOPs are counted against.
    pub tensor_cores: bool,
}

impl Floor {
    pub fn of(plan: &Plan, k: &Kernel) -> Floor {
        let tensor_cores = on_tensor_cores(plan, k.kind);
        let peak = if tensor_cores { PEAK_BF16_FLOPS } else { PEAK_F32_FLOPS };
        Floor { compute_s: k.flops as f64 / peak, memory_s: k.min_bytes as f64 / PEAK_BYTES_PER_S, tensor_cores }
    }
    pub fn seconds(&self) -> f64 {
        self.compute_s.max(self.memory_s)
    }
    pub fn bound(&self) -> &'static str {
        if self.compute_s >= self.memory_s {
            "compute"
        } else {
            "memory"
        }
    }
}
