//! Causal flash attention (forward and backward) with grouped key/value heads,
//! and the q/k prologue (per-head RMS norm, rotary embedding, `q_gain`) with
//! its backward.
//!
//! ## Tensors and layouts
//!
//! `B` batch, `H` query heads, `Hk` key/value heads (`H % Hk == 0`; query
//! head `h` reads kv head `h / (H / Hk)`), `T` sequence length, `d` the head
//! dimension (baked into the kernel: 8, 16, 32 or 64). Every per-head tensor
//! (`q, o, do, dq` with `H` heads; `k, v, dk, dv` with `Hk` heads) is
//! contiguous, row-major, in one of two layouts ([`AttnLayout`], baked in):
//! * [`AttnLayout::Bhtd`]: `[B, heads, T, d]` (the IR's `CausalAttention`
//!   operand layout): element `(b, h, t, j)` at `((b * heads + h) * T + t) * d + j`;
//! * [`AttnLayout::Bthd`]: `[B, T, heads, d]`, i.e. the `[B*T, heads*d]` output
//!   of the projection GEMM and the input of the output projection, with no
//!   transposes: element at `((b * T + t) * heads + h) * d + j`.
//!
//! Row statistics (`lse`, `dsum`) are f32 `[B, H, T]` in both layouts.
//! `lse` is the natural-log log-sum-exp of the scaled scores of each query
//! row: `lse = ln sum_{j <= t} exp(scale * q_t . k_j)`.
//!
//! ## Kernels ([`emit_attention`])
//!
//! | kernel | bf16 ([`Precision::Bf16`]) | f32 ([`Precision::F32`]) |
//! |---|---|---|
//! | `fwd` | flash forward on tensor cores (mma.sync; at d = 64 also the Hopper kernel of [`emit_forward_wgmma`]) | FFMA, a group of threads per query row |
//! | `dot` | `dsum = rowsum(do * o)`, zeroes `dq` | `dsum = rowsum(do * o)` |
//! | `bwd` | one kernel: dk, dv per key block, dq by `red.global.add.f32` (at d = 64 also the Hopper kernel of [`emit_backward_wgmma`]: dq by one bulk reduce-add per tile) | two kernels: dk/dv per key row, dq per query row |
//!
//! Parameters (all pointers `.u64`, sizes `.u32`, `scale` `.f32`):
//! * `fwd(q, k, v, o, lse, h, hk, t, scale)`: q, k, v in the precision's
//!   element type (bf16 or f32), `o` in [`AttnConfig::out`], `lse` f32.
//! * `dot(o, do, dsum, dq, h, t, rows)`, `rows = B * H * T`: `o` as the
//!   forward wrote it, `do` in the precision's type, `dsum` f32 `[B, H, T]`;
//!   bf16: also sets the f32 `dq` to zero (the backward accumulates into it);
//!   f32: `dq` is not touched (may be 0).
//! * every `bwd` kernel: `(q, k, v, do, lse, dsum, dq, dk, dv, h, hk, t, scale)`;
//!   `dq` is f32 (bf16: accumulated atomically into the zeroed buffer; f32:
//!   written), `dk, dv` in [`AttnConfig::grad_out`] (bf16 precision) or f32.
//!   `dk, dv` are summed over the `H / Hk` query heads of their kv head.
//!
//! Launch: `block = [threads, 1, 1]`, dynamic shared memory `smem_bytes`,
//! grid from [`AttnKernel::grid`]:
//! * bf16 `fwd`: `[ceil(T / 64), H, B]`, 128 threads (4 warps x 16 query rows).
//!   Block `x` takes query block `ceil(T/64) - 1 - x` (longest first). Key/value
//!   tiles of 64 rows stream through a 2-stage `cp.async` ring; only the
//!   `q0 / 64 + 1` tiles at or below the diagonal are loaded, and only tiles
//!   crossing the diagonal are masked. `S = Q K^T` and `O += P V` use
//!   `mma.sync.m16n8k16` bf16 with f32 accumulation (`ldmatrix` fragments,
//!   `P` converted to bf16 in registers); the online softmax runs in f32 in the
//!   log2 domain (`ex2.approx`). `d = 8` is padded to the mma k of 16 with
//!   zero-filled columns.
//! * bf16 `bwd`: `[ceil(T / 64), Hk, B]`, 128 threads (4 warps x 16 keys).
//!   FlashAttention-2: each block owns 64 keys of one kv head and walks the
//!   query blocks at or below the diagonal of every query head of its group
//!   (Q, dO, lse, dsum tiles double-buffered with `cp.async`), accumulating dk
//!   and dv in registers; `dS` goes through shared memory and each warp adds
//!   its 16 query rows of `dS K` into `dq` with `red.global.add.f32`.
//! * f32 kernels: `[ceil(T / R), heads, B]` with `R = 128 / G` rows per block,
//!   `G = max(d / 16, 1)` threads per row (each holds `d / G` interleaved
//!   dimensions and reduces dot products with `shfl.sync.bfly`).
//! * `dot`: `[ceil(rows / (128 / (d / 8))), 1, 1]`.
//!
//! Any `T >= 1` works: loads past `T` are zero-filled `cp.async`s (never
//! issued), stores and atomics are predicated. `scale` is a run-time
//! parameter (the model uses `1 / sqrt(d)`).
//!
//! Resources (ptxas 12.9, `-arch=sm_90a -O3`, `[B, H, T, d]` layout; zero
//! spills everywhere, `tests/ptx/attention_ptxas.rs`); registers / dynamic
//! shared memory per block:
//!
//! | kernel | d = 8 | d = 16 | d = 32 | d = 64 |
//! |---|---|---|---|---|
//! | bf16 `fwd` (128 threads) | 65 / 15 KiB | 72 / 15 KiB | 86 / 25 KiB | 126 / 45 KiB |
//! | bf16 `bwd` (128 threads) | 112 / 25 KiB | 101 / 25 KiB | 128 / 35 KiB | 229 / 55 KiB |
//! | f32 `fwd` | 38 / 2 KiB | 62 / 4 KiB | 55 / 8 KiB | 56 / 16 KiB |
//! | f32 `bwd` dk/dv, dq | 64, 48 | 110, 90 | 94, 79 | 96, 80 |
//! | `dot`, prep, prep backward | 21-26, 24-26, 27-32 (no shared memory) | | | |
//!
//! The Hopper kernels (384 threads: a producer warpgroup and two consumer
//! warpgroups, `setmaxnreg` 40 / 232 in the backward): forward 109 registers
//! and 49 KiB, backward 168 registers at launch and 114 KiB.
//!
//! The bf16 backward at d = 64 takes 55 KiB of dynamic shared memory: above
//! 48 KiB the CUDA runtime must raise the kernel's dynamic shared-memory limit
//! (`cuFuncSetAttribute`) before the launch, as for the large GEMM tiles.
//!
//! ## The q/k prologue ([`AttnConfig::prologue`], [`emit_qk_prep`], [`emit_qk_prep_bwd`])
//!
//! The model applies RMS norm over the head dimension, rotary embedding and
//! (for q) `q_gain[h]` between the projections and the attention. This is a
//! separate, memory-bound row kernel rather than part of the attention
//! kernels: fused into the forward, the key side would be renormalized and
//! rotated once per (query block, query head) that reads each key tile, and
//! the backward needs the normalized q and k again anyway; the prep kernel
//! costs one pass over q and k (about a tenth of the attention's time at
//! T = 2048) and stores exactly what both attention kernels read. With
//! [`AttnConfig::prologue`] set, [`emit_attention`] returns the four prep
//! kernels with the attention kernels ([`PrologueKernels`]); see
//! [`QkPrepConfig`] for their parameters.

mod common;
mod ffma;
mod mma;
mod rows;
mod wgmma;

pub use common::{AttnConfig, AttnError, AttnKernel, AttnKernels, AttnLayout, GridKind, Prologue, PrologueKernels};
use super::gemm::Precision;

pub use rows::{emit_qk_prep, emit_qk_prep_bwd, rope_table, QkPrepConfig};
/// The prep configurations of an attention's prologue: (q, k).
pub fn prologue_configs(cfg: &AttnConfig, p: Prologue) -> (QkPrepConfig, QkPrepConfig) {
    let mut q = QkPrepConfig::new(cfg.precision, cfg.head_dim, cfg.layout, true);
    q.dx = p.dx;
    let mut k = QkPrepConfig::new(cfg.precision, cfg.head_dim, cfg.layout, false);
    k.dx = p.dx;
    k.dy = cfg.grad_out;
    (q, k)
}

/// The Hopper forward (TMA, mbarriers, warp-specialized wgmma; see
/// `wgmma.rs`): bf16, head dim 64, `[B, H, T, d]`. Its `q`, `k`, `v` are
/// tensor maps over the `[rows, 64]` matrices with boxes of
/// [`wgmma_forward_boxes`] rows; the rest of its contract is the mma.sync
/// forward's.
pub fn emit_forward_wgmma(cfg: &AttnConfig) -> Result<AttnKernel, AttnError> {
    cfg.validate()?;
    if cfg.precision != Precision::Bf16 || cfg.head_dim != 64 || cfg.layout != AttnLayout::Bhtd {
        return Err(AttnError(format!("the wgmma forward takes bf16, head dim 64, [B, H, T, d]: {cfg:?}")));
    }
    Ok(wgmma::forward(cfg))
}

/// The Hopper backward (see `wgmma.rs`): bf16, head dim 64, `[B, H, T, d]`.
/// Its `q, k, v, do` are tensor maps over the `[rows, 64]` matrices with
/// boxes of [`wgmma_backward_boxes`] rows; the rest of its contract is the
/// mma.sync backward's (launched after `dot`, which zeroes `dq`).
pub fn emit_backward_wgmma(cfg: &AttnConfig) -> Result<AttnKernel, AttnError> {
    cfg.validate()?;
    if cfg.precision != Precision::Bf16 || cfg.head_dim != 64 || cfg.layout != AttnLayout::Bhtd {
        return Err(AttnError(format!("the wgmma backward takes bf16, head dim 64, [B, H, T, d]: {cfg:?}")));
    }
    Ok(wgmma::backward(cfg))
}

/// Rows of the wgmma backward's tensor-map boxes: (q and do, k and v).
pub fn wgmma_backward_boxes() -> (u32, u32) {
    wgmma::BWD_BOXES
}

/// Rows of the wgmma forward's tensor-map boxes: (q, k and v).
pub fn wgmma_forward_boxes() -> (u32, u32) {
    wgmma::BOXES
}

/// Emit the forward, the `dsum` kernel and the backward kernel(s).
pub fn emit_attention(cfg: &AttnConfig) -> Result<AttnKernels, AttnError> {
    cfg.validate()?;
    let prologue = match cfg.prologue {
        Some(p) => {
            let (q, k) = prologue_configs(cfg, p);
            Some(PrologueKernels { q: emit_qk_prep(&q)?, k: emit_qk_prep(&k)?, q_bwd: emit_qk_prep_bwd(&q)?, k_bwd: emit_qk_prep_bwd(&k)? })
        }
        None => None,
    };
    Ok(match cfg.precision {
        Precision::Bf16 => AttnKernels { fwd: mma::forward(cfg), dot: rows::dot(cfg), bwd: vec![mma::backward(cfg)], prologue },
        Precision::F32 => AttnKernels {
            fwd: ffma::forward(cfg),
            dot: rows::dot(cfg),
            bwd: vec![ffma::backward_dkdv(cfg), ffma::backward_dq(cfg)],
            prologue,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ptx::templates::epilogue::DType;

    #[test]
    fn rejects_bad_configs() {
        assert!(AttnConfig::new(Precision::Bf16, 48, AttnLayout::Bhtd).validate().is_err());
        let mut c = AttnConfig::new(Precision::F32, 16, AttnLayout::Bhtd);
        c.out = DType::Bf16;
        assert!(c.validate().is_err());
        assert!(AttnConfig::new(Precision::Bf16, 8, AttnLayout::Bthd).validate().is_ok());
    }
}
