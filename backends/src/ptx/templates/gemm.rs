//! GEMM emitters: `C[M, N] = op(A) @ op(B)` with a fused [`Epilogue`].
//!
//! Two precisions share one skeleton (operand loaders into a multi-stage
//! shared-memory ring, the k-loop, the epilogue):
//! * [`Precision::Bf16`]: bf16 operands, f32 accumulation on tensor cores
//!   (`mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`), fragments read
//!   with `ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16`, tiles copied with
//!   `cp.async` (zero-filling out-of-bounds chunks with src-size 0).
//! * [`Precision::F32`]: f32 operands, `fma.rn.f32` on a 16-wide thread grid
//!   (the `--precision f32` debugging mode).
//!
//! ## Conventions (the kernel's contract)
//! * Parameters, in order: `a, b, c` (`.u64` pointers), `m, n, k` (`.u32`),
//!   then one `.u64` per epilogue step that names a tensor ([`Epilogue::params`]).
//!   Sizes are run-time parameters; tile shapes, layouts, vector widths and the
//!   epilogue are baked in.
//! * Layouts (all row-major in memory; leading dimension = the stored row length):
//!   - A: [`AStore::MK`] stores `A[M, K]` (K contiguous); [`AStore::KM`] stores
//!     `A^T` as `[K, M]` (M contiguous).
//!   - B: [`BStore::NK`] stores `[N, K]` (K contiguous: `x @ W^T` with `W[N, K]`);
//!     [`BStore::KN`] stores `[K, N]` (N contiguous).
//!   - C and every per-element epilogue tensor: `[M, N]`, leading dimension N.
//!
//!   The model's three training GEMMs: [`GemmLayout::LINEAR`] (`x[M,K] @ W[N,K]^T`),
//!   [`GemmLayout::INPUT_GRAD`] (`dy[M,N] @ W[N,K]`; GEMM `N` = model K),
//!   [`GemmLayout::WEIGHT_GRAD`] (`dy[T,N]^T @ x[T,K]`; GEMM `M,N,K` = model `N,K,T`).
//! * [`GemmConfig::a_f32`] / [`GemmConfig::b_f32`] (bf16 precision only): the
//!   operand is stored as f32 and converted to bf16 (round to nearest) as it
//!   is copied into shared memory (register-staged loads instead of
//!   `cp.async`, at most 4 elements per load); e.g. the residual stream read
//!   by a GEMM with an RMS-norm row scale.
//! * Vector widths `vec_a`, `vec_b` (elements per global load) are promises:
//!   the contiguous extent of the operand is a multiple of the width and the
//!   base pointer is aligned to `width * element size` bytes.
//!   [`GemmConfig::new`] picks the widest width the given sizes allow. `vec_c`
//!   (1 or 2) likewise for N and the output / epilogue tensors.
//! * Any `M, N, K >= 1` satisfying the promises works: loads outside the
//!   matrices are zero-filled (never issued), stores are predicated.
//! * M is limited by the grid: `ceil(M / bm) <= 65535` (8.4M rows at bm = 128).
//! * Launch: `grid = [ceil(N / bn), ceil(M / bm), split_k]`, `block = [threads, 1, 1]`,
//!   dynamic shared memory [`GemmKernel::smem_bytes`] (above 48 KiB the CUDA
//!   runtime must raise the kernel's dynamic shared-memory limit first).

use crate::ptx::builder::*;
use super::epilogue::{self, Epilogue};
use super::gemm_wgmma::{self, WgmmaSpec};
use serde::{Deserialize, Serialize};

/// bf16 operands on tensor cores with f32 accumulation, or f32 operands on FFMA:
/// the compiler's one precision type.
pub use pgc_ir::types::Precision;

/// How A (logically `[M, K]`) is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AStore {
    /// `[M, K]` row-major.
    MK,
    /// `[K, M]` row-major (A transposed).
    KM,
}

/// How B (logically `[K, N]`) is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BStore {
    /// `[N, K]` row-major (B transposed, e.g. a weight `W[N, K]` in `x @ W^T`).
    NK,
    /// `[K, N]` row-major.
    KN,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GemmLayout {
    pub a: AStore,
    pub b: BStore,
}

impl GemmLayout {
    /// `x[M, K] @ W[N, K]^T`
    pub const LINEAR: GemmLayout = GemmLayout { a: AStore::MK, b: BStore::NK };
    /// `dy[M, N] @ W[N, K]` (here GEMM `K` = the model's N, GEMM `N` = the model's K)
    pub const INPUT_GRAD: GemmLayout = GemmLayout { a: AStore::MK, b: BStore::KN };
    /// `dy[T, N]^T @ x[T, K]` (GEMM `M, N, K` = the model's `N, K, T`)
    pub const WEIGHT_GRAD: GemmLayout = GemmLayout { a: AStore::KM, b: BStore::KN };
    /// `A^T @ W^T`: not used by the model, supported for completeness.
    pub const TT: GemmLayout = GemmLayout { a: AStore::KM, b: BStore::NK };

    /// The contiguous extents of A and B in memory for a GEMM of `m x n x k`
    /// (what vector widths and tensor-map strides depend on).
    pub fn contiguous(self, m: u32, n: u32, k: u32) -> (u32, u32) {
        let a = match self.a {
            AStore::MK => k,
            AStore::KM => m,
        };
        let b = match self.b {
            BStore::NK => k,
            BStore::KN => n,
        };
        (a, b)
    }

    pub fn tag(self) -> &'static str {
        match (self.a, self.b) {
            (AStore::MK, BStore::NK) => "nt",
            (AStore::MK, BStore::KN) => "nn",
            (AStore::KM, BStore::KN) => "tn",
            (AStore::KM, BStore::NK) => "tt",
        }
    }
}

/// Block tile and pipeline shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TileConfig {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    /// Warps along M and N (bf16: each warp owns a `bm/warps_m x bn/warps_n`
    /// sub-tile; f32: only the total thread count matters).
    pub warps_m: u32,
    pub warps_n: u32,
    /// Shared-memory pipeline depth (2..=4).
    pub stages: u32,
    /// `.minnctapersm`: blocks per SM the register allocation must allow.
    #[serde(default = "one")]
    pub min_blocks: u32,
}

fn one() -> u32 {
    1
}

impl TileConfig {
    /// 128x128x64, 4 warps (warp tile 64x64), 3 stages, two blocks per SM
    /// (221 KiB of shared memory per SM): the big shapes. The fastest of the
    /// tiles timed on an H200 (250-310 TFLOP/s on the 11-layer model's GEMMs).
    pub const LARGE: TileConfig = TileConfig { bm: 128, bn: 128, bk: 64, warps_m: 2, warps_n: 2, stages: 3, min_blocks: 2 };
    /// 128x128x32, 8 warps (warp tile 64x32), 3 stages, two blocks per SM
    /// (at most 128 registers per thread): big shapes whose rows are not
    /// 16-byte aligned (more threads for the register-staged loads).
    pub const LARGE_8W: TileConfig = TileConfig { bm: 128, bn: 128, bk: 32, warps_m: 2, warps_n: 4, stages: 3, min_blocks: 2 };
    /// 64x64x32, 4 warps (warp tile 32x32), 3 stages.
    pub const MEDIUM: TileConfig = TileConfig { bm: 64, bn: 64, bk: 32, warps_m: 2, warps_n: 2, stages: 3, min_blocks: 1 };
    /// 32x32x32, 4 warps (warp tile 16x16), 2 stages: tiny shapes.
    pub const SMALL: TileConfig = TileConfig { bm: 32, bn: 32, bk: 32, warps_m: 2, warps_n: 2, stages: 2, min_blocks: 1 };
    /// f32 FFMA: 64x64x16, 256 threads (4x4 outputs each), 2 stages.
    pub const F32_DEFAULT: TileConfig = TileConfig { bm: 64, bn: 64, bk: 16, warps_m: 4, warps_n: 2, stages: 2, min_blocks: 1 };
    /// f32 FFMA: 32x32x16, 256 threads (2x2 outputs each), 2 stages.
    pub const F32_SMALL: TileConfig = TileConfig { bm: 32, bn: 32, bk: 16, warps_m: 4, warps_n: 2, stages: 2, min_blocks: 1 };

    pub fn threads(&self) -> u32 {
        self.warps_m * self.warps_n * 32
    }

    /// A reasonable tile for a problem size.
    pub fn pick(precision: Precision, m: u32, n: u32) -> TileConfig {
        match precision {
            Precision::Bf16 => {
                if m >= 512 && n >= 512 {
                    TileConfig::LARGE
                } else if m >= 64 && n >= 64 {
                    TileConfig::MEDIUM
                } else {
                    TileConfig::SMALL
                }
            }
            Precision::F32 => {
                if m >= 64 && n >= 64 {
                    TileConfig::F32_DEFAULT
                } else {
                    TileConfig::F32_SMALL
                }
            }
        }
    }
}

/// Which instructions a bf16 GEMM is built from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GemmPath {
    /// `cp.async` + `ldmatrix` + `mma.sync` (any sm_80+ GPU); also the FFMA
    /// kernels of f32 precision.
    #[default]
    MmaSync,
    /// Hopper: TMA loads into a ring of stages guarded by mbarriers, one
    /// producer warpgroup, two consumer warpgroups issuing `wgmma` (see `gemm_wgmma.rs`).
    Wgmma,
}

impl GemmPath {
    /// The name `report.json` gives the path (`"wgmma"`, `"mma.sync"`, `"ffma"`).
    pub fn label(self, precision: Precision) -> &'static str {
        match (self, precision) {
            (_, Precision::F32) => "ffma",
            (GemmPath::MmaSync, _) => "mma.sync",
            (GemmPath::Wgmma, _) => "wgmma",
        }
    }
}

/// Everything that determines one GEMM kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GemmConfig {
    pub name: String,
    pub precision: Precision,
    pub layout: GemmLayout,
    pub tile: TileConfig,
    /// Elements per global load of A / B (see the module doc).
    pub vec_a: u32,
    pub vec_b: u32,
    /// 2: output columns are accessed in pairs (N even); 1: one by one.
    pub vec_c: u32,
    /// Split the K range over `split_k` blocks (`grid.z`); each adds its
    /// partial result into C with `red.global.add.f32`, so C must hold the
    /// initial value (zero, or a gradient to accumulate into). Requires an f32
    /// output and an epilogue of linear steps only (the row scale).
    #[serde(default = "one")]
    pub split_k: u32,
    /// A (B) is stored as f32 and converted to bf16 while loading (bf16 precision).
    #[serde(default)]
    pub a_f32: bool,
    #[serde(default)]
    pub b_f32: bool,
    /// A batch of independent GEMMs of the same sizes over `grid.z`: after
    /// the epilogue's parameters come byte strides (`.u64`) for `a`, `b`,
    /// `c` and each epilogue buffer, in that order; GEMM `z` reads and writes
    /// every buffer at `z * stride`. Not with split-K.
    #[serde(default)]
    pub batched: bool,
    pub epilogue: Epilogue,
    /// mma.sync or wgmma (bf16 only; see [`GemmConfig::wgmma_allowed`]).
    #[serde(default)]
    pub path: GemmPath,
}

fn widest(extent: u32, max: u32) -> u32 {
    let mut v = max;
    while v > 1 && extent % v != 0 {
        v /= 2;
    }
    v
}

impl GemmConfig {
    /// A configuration for known sizes: tile by [`TileConfig::pick`], the
    /// widest vector widths the sizes allow, a generated name.
    pub fn new(precision: Precision, layout: GemmLayout, m: u32, n: u32, k: u32, epilogue: Epilogue) -> Self {
        let maxv = 16 / precision.elem_bytes();
        let (a_ext, b_ext) = layout.contiguous(m, n, k);
        let mut c = GemmConfig {
            name: String::new(),
            precision,
            layout,
            tile: TileConfig::pick(precision, m, n),
            vec_a: widest(a_ext, maxv),
            vec_b: widest(b_ext, maxv),
            vec_c: widest(n, 2),
            split_k: 1,
            a_f32: false,
            b_f32: false,
            batched: false,
            epilogue,
            path: GemmPath::MmaSync,
        };
        if c.tile == TileConfig::LARGE && (c.vec_a < maxv || c.vec_b < maxv) {
            c.tile = TileConfig::LARGE_8W;
        }
        c.name = c.default_name();
        c
    }

    /// Read A and/or B as f32 (converted to bf16 in the loader; bf16
    /// precision): narrower vector widths for those operands (at most 4), and
    /// the 8-warp large tile when a width drops.
    pub fn with_f32_operands(mut self, a: bool, b: bool, m: u32, n: u32, k: u32) -> Self {
        assert_eq!(self.precision, Precision::Bf16, "f32 operands are for bf16 GEMMs");
        self.a_f32 = a;
        self.b_f32 = b;
        let (a_ext, b_ext) = self.layout.contiguous(m, n, k);
        if a {
            self.vec_a = widest(a_ext, 4);
        }
        if b {
            self.vec_b = widest(b_ext, 4);
        }
        if self.tile == TileConfig::LARGE && (self.vec_a < 8 || self.vec_b < 8) {
            self.tile = TileConfig::LARGE_8W;
        }
        self.name = self.default_name();
        self
    }

    /// A batch of GEMMs over `grid.z` (see [`GemmConfig::batched`]).
    pub fn with_batch(mut self) -> Self {
        self.batched = true;
        self.name = self.default_name();
        self
    }

    pub fn with_tile(mut self, tile: TileConfig) -> Self {
        self.tile = tile;
        self.name = self.default_name();
        self
    }

    /// A split-K factor that fills `sms` multiprocessors when the output has
    /// too few tiles (weight gradients: small `M x N`, long `K`), keeping at
    /// least 4 k-tiles per split; 1 when the grid is already large enough.
    /// Only usable with an f32 output and a linear epilogue.
    pub fn suggest_split_k(&self, m: u32, n: u32, k: u32, sms: u32) -> u32 {
        let t = &self.tile;
        let blocks = m.div_ceil(t.bm) * n.div_ceil(t.bn);
        let slots = sms * t.min_blocks;
        let ktiles = k.div_ceil(t.bk);
        if blocks >= slots / 2 || ktiles < 8 {
            return 1;
        }
        slots.div_ceil(blocks).min(ktiles / 4).clamp(1, 16)
    }

    /// Accumulate into C over `splits` K ranges (see [`GemmConfig::split_k`]).
    pub fn with_split_k(mut self, splits: u32) -> Self {
        self.split_k = splits;
        self.name = self.default_name();
        self
    }

    /// Whether the wgmma path can run this GEMM at these sizes: each
    /// operand's contiguous extent a multiple of 8 elements (a tensor map's
    /// strides are multiples of 16 bytes; an f32 operand is converted 8
    /// elements at a time), no batch.
    pub fn wgmma_allowed(&self, m: u32, n: u32, k: u32) -> bool {
        let (a_ext, b_ext) = self.layout.contiguous(m, n, k);
        self.precision == Precision::Bf16 && !self.batched && a_ext % 8 == 0 && b_ext % 8 == 0
    }

    /// The wgmma path with its tile: 128 rows (two consumer warpgroups of 64),
    /// `bn` columns (the wgmma N: 64, 128 or 256), 64-deep K steps in `stages` stages.
    pub fn with_wgmma(mut self, bn: u32, stages: u32) -> Self {
        self.path = GemmPath::Wgmma;
        // warps_m counts warpgroups (one producer, two consumers), warps_n the warps in each
        self.tile = TileConfig { bm: 128, bn, bk: 64, warps_m: 3, warps_n: 4, stages, min_blocks: 1 };
        self.name = self.default_name();
        self
    }

    pub fn default_name(&self) -> String {
        let t = &self.tile;
        if self.path == GemmPath::Wgmma {
            let mut split = if self.split_k > 1 { format!("_k{}", self.split_k) } else { String::new() };
            if self.a_f32 || self.b_f32 {
                split.push_str(&format!("_f{}{}", if self.a_f32 { "a" } else { "" }, if self.b_f32 { "b" } else { "" }));
            }
            return format!("gemm_wgmma_{}_{}x{}x{}_s{}_v{}{split}_{}", self.layout.tag(), t.bm, t.bn, t.bk, t.stages, self.vec_c, self.epilogue.tag());
        }
        let mut split = if self.split_k > 1 { format!("_k{}", self.split_k) } else { String::new() };
        if self.a_f32 || self.b_f32 {
            split.push_str(&format!("_f{}{}", if self.a_f32 { "a" } else { "" }, if self.b_f32 { "b" } else { "" }));
        }
        if self.batched {
            split.push_str("_bt");
        }
        format!(
            "gemm_{}_{}_{}x{}x{}_w{}x{}_s{}{}_v{}{}{}{split}_{}",
            match self.precision {
                Precision::Bf16 => "bf16",
                Precision::F32 => "f32",
            },
            self.layout.tag(),
            t.bm,
            t.bn,
            t.bk,
            t.warps_m,
            t.warps_n,
            t.stages,
            if t.min_blocks > 1 { format!("b{}", t.min_blocks) } else { String::new() },
            self.vec_a,
            self.vec_b,
            self.vec_c,
            self.epilogue.tag()
        )
    }

    /// The wgmma emitter's view of this configuration.
    pub fn wgmma_spec(&self) -> WgmmaSpec {
        WgmmaSpec {
            name: self.name.clone(),
            a_km: self.layout.a == AStore::KM,
            b_kn: self.layout.b == BStore::KN,
            bn: self.tile.bn,
            stages: self.tile.stages,
            split_k: self.split_k,
            a_f32: self.a_f32,
            b_f32: self.b_f32,
        }
    }

    fn validate_wgmma(&self) -> Result<(), GemmError> {
        let bad = |msg: String| Err(GemmError::Config { name: self.name.clone(), msg });
        if self.precision != Precision::Bf16 || self.batched {
            return bad("the wgmma path takes bf16 precision and no batch".into());
        }
        let t = &self.tile;
        if (t.bm, t.bk, t.warps_m, t.warps_n) != (gemm_wgmma::BM, gemm_wgmma::BK, 1 + gemm_wgmma::CONSUMERS, 4) {
            return bad(format!("the wgmma tile is {}x{{bn}}x{} over {} warpgroups", gemm_wgmma::BM, gemm_wgmma::BK, 1 + gemm_wgmma::CONSUMERS));
        }
        if !matches!(self.vec_c, 1 | 2) {
            return bad("vec_c must be 1 or 2".into());
        }
        if self.split_k > 1 && (self.epilogue.out != epilogue::DType::F32 || !self.epilogue.steps.iter().all(|s| s.is_linear())) {
            return bad("split-K accumulates atomically: it needs an f32 output and only row-scale steps".into());
        }
        self.wgmma_spec().validate().or_else(bad)?;
        self.epilogue.validate(&["a", "b", "c", "m", "n", "k"]).map_err(|m| GemmError::Config { name: self.name.clone(), msg: m })?;
        if !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || self.name.is_empty() {
            return bad("kernel name is not an identifier".into());
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), GemmError> {
        if self.path == GemmPath::Wgmma {
            return self.validate_wgmma();
        }
        let t = &self.tile;
        let bad = |m: String| Err(GemmError::Config { name: self.name.clone(), msg: m });
        let pow2 = |x: u32| x.is_power_of_two();
        if !(pow2(t.bm) && pow2(t.bn) && pow2(t.bk) && pow2(t.warps_m) && pow2(t.warps_n)) {
            return bad("tile sizes and warp counts must be powers of two".into());
        }
        if !(2..=4).contains(&t.stages) {
            return bad("stages must be 2, 3 or 4".into());
        }
        let maxv = 16 / self.precision.elem_bytes();
        if (self.a_f32 || self.b_f32) && self.precision != Precision::Bf16 {
            return bad("f32 operands are converted only in bf16 GEMMs".into());
        }
        for (n, v, f32src) in [("vec_a", self.vec_a, self.a_f32), ("vec_b", self.vec_b, self.b_f32)] {
            let maxv = if f32src { 4 } else { maxv };
            if !pow2(v) || v > maxv {
                return bad(format!("{n} = {v}: must be a power of two up to {maxv}"));
            }
        }
        if !matches!(self.vec_c, 1 | 2) {
            return bad("vec_c must be 1 or 2".into());
        }
        if !(1..=64).contains(&t.min_blocks) {
            return bad("min_blocks must be 1..=64".into());
        }
        if !(1..=1024).contains(&self.split_k) {
            return bad("split_k must be 1..=1024".into());
        }
        if self.batched && self.split_k > 1 {
            return bad("a batched GEMM uses grid.z for the batch: no split-K".into());
        }
        if self.split_k > 1
            && (self.epilogue.out != epilogue::DType::F32 || !self.epilogue.steps.iter().all(|s| s.is_linear()))
        {
            return bad("split-K accumulates atomically: it needs an f32 output and only row-scale steps".into());
        }
        let threads = t.threads();
        if threads > 1024 {
            return bad("more than 1024 threads".into());
        }
        match self.precision {
            Precision::Bf16 => {
                if t.bk % 16 != 0 {
                    return bad("bk must be a multiple of 16".into());
                }
                if t.bm % (16 * t.warps_m) != 0 || t.bn % (16 * t.warps_n) != 0 {
                    return bad("warp tiles must be multiples of 16x16".into());
                }
            }
            Precision::F32 => {
                if threads % 16 != 0 || t.bn % 16 != 0 || t.bm % (threads / 16) != 0 {
                    return bad("f32: bn must be a multiple of 16 and bm of threads/16".into());
                }
            }
        }
        for (rows, cols, v) in self.operand_tiles() {
            if cols % v != 0 || threads % (cols / v) != 0 {
                return bad(format!("a {rows}x{cols} operand tile cannot be split over {threads} threads in vectors of {v}"));
            }
        }
        let reserved = ["a", "b", "c", "m", "n", "k"];
        self.epilogue
            .validate(&reserved)
            .map_err(|m| GemmError::Config { name: self.name.clone(), msg: m })?;
        if !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || self.name.is_empty() {
            return bad("kernel name is not an identifier".into());
        }
        Ok(())
    }

    /// (stored rows, stored cols, vector width) of the A and B tiles in shared memory.
    fn operand_tiles(&self) -> [(u32, u32, u32); 2] {
        let t = &self.tile;
        let a = match self.layout.a {
            AStore::MK => (t.bm, t.bk, self.vec_a),
            AStore::KM => (t.bk, t.bm, self.vec_a),
        };
        let b = match self.layout.b {
            BStore::NK => (t.bn, t.bk, self.vec_b),
            BStore::KN => (t.bk, t.bn, self.vec_b),
        };
        [a, b]
    }

    /// Row stride in bytes of a stored tile with `cols` columns: padded
    /// against bank conflicts (bf16: +16 bytes, so that the 8 row addresses of
    /// an `ldmatrix` phase hit 8 distinct 16-byte bank groups; f32: +`vec`
    /// words, so that 16 threads reading one word from 16 rows hit distinct banks).
    fn row_stride(&self, cols: u32, vec: u32) -> u32 {
        match self.precision {
            Precision::Bf16 => (cols + 8) * 2,
            Precision::F32 => (cols + vec) * 4,
        }
    }

    /// Row strides (bytes) of the A and B tiles in shared memory, and the
    /// offset of B's region (A's region comes first).
    fn tile_strides(&self) -> (u32, u32, u32) {
        let [(_, ac, av), (_, bc, bv)] = self.operand_tiles();
        let [ra, _] = self.region_bytes();
        (self.row_stride(ac, av), self.row_stride(bc, bv), ra)
    }

    fn region_bytes(&self) -> [u32; 2] {
        self.operand_tiles().map(|(rows, cols, v)| (rows * self.row_stride(cols, v)).next_multiple_of(128))
    }

    /// Dynamic shared memory per block.
    pub fn smem_bytes(&self) -> u32 {
        if self.path == GemmPath::Wgmma {
            return self.wgmma_spec().smem_bytes();
        }
        let [a, b] = self.region_bytes();
        (a + b) * self.tile.stages
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GemmError {
    #[error("GEMM kernel `{name}`: {msg}")]
    Config { name: String, msg: String },
}

/// An emitted GEMM kernel and how to launch it.
#[derive(Clone, Debug)]
pub struct GemmKernel {
    pub config: GemmConfig,
    pub kernel: Kernel,
    pub threads: u32,
    pub smem_bytes: u32,
}

impl GemmKernel {
    pub fn name(&self) -> &str {
        &self.kernel.name
    }
    /// The grid of one GEMM (a batched kernel: of a batch of 1; set `z` to the batch).
    pub fn grid(&self, m: u32, n: u32) -> [u32; 3] {
        if self.config.path == GemmPath::Wgmma {
            return gemm_wgmma::grid(&self.config.wgmma_spec(), m, n);
        }
        [n.div_ceil(self.config.tile.bn), m.div_ceil(self.config.tile.bm), self.config.split_k]
    }
    pub fn block(&self) -> [u32; 3] {
        [self.threads, 1, 1]
    }
    /// Parameter names in order.
    pub fn param_names(&self) -> Vec<String> {
        self.kernel.params.iter().map(|p| p.name.clone()).collect()
    }
}

/// Emit a GEMM kernel.
pub fn emit_gemm(cfg: &GemmConfig) -> Result<GemmKernel, GemmError> {
    cfg.validate()?;
    let kernel = match cfg.path {
        GemmPath::MmaSync => Skeleton::emit(cfg),
        GemmPath::Wgmma => gemm_wgmma::emit(&cfg.wgmma_spec(), &cfg.epilogue, |b, er, f| {
            let cm = Common { tid: f.tid, m0: f.m0, n0: f.n0, m: f.m, n: f.n, smem: f.smem };
            fragment_epilogue(b, cfg, &cm, er, (1, f.acc.len() as u32), &f.acc, (f.row0, f.col0));
        }),
    };
    Ok(GemmKernel { config: cfg.clone(), kernel, threads: cfg.tile.threads(), smem_bytes: cfg.smem_bytes() })
}

// ---------------------------------------------------------------------------
// Operand loader: global tile -> one shared-memory stage.

/// Copies one operand's `rows x cols` tile (cols contiguous in memory and in
/// shared memory) per k-step. Thread `t` handles the vector at tile row
/// `t / (cols/vec) + p * rows_per_pass` (pass `p`), column `(t % (cols/vec)) * vec`.
struct Loader {
    rows: u32,
    vec: u32,
    es: u32,
    rs: u32,
    rows_per_pass: u32,
    passes: u32,
    k_along_rows: bool,
    bk: u32,
    cp_async: bool,
    /// f32 in global memory, bf16 in shared memory (converted in registers).
    convert: bool,
    // run-time
    base: Reg,
    gptr: Reg,
    pass_stride: Reg,
    k_step: Operand,
    row_idx: Reg,
    col_idx: Reg,
    row_lim: Reg,
    col_lim: Reg,
    r0: Reg,
    soff: Reg,
}

struct LoaderSpec {
    rows: u32,
    cols: u32,
    vec: u32,
    region_off: u32,
    k_along_rows: bool,
    /// Tile origin in (stored row, stored col) coordinates for this block.
    row0: Operand,
    col0: Operand,
    row_lim: Reg,
    col_lim: Reg,
    ld: Reg,
    /// The operand is f32 in memory (bf16 GEMM: converted while loading).
    f32_src: bool,
}

impl Loader {
    fn new(b: &mut KernelBuilder, cfg: &GemmConfig, s: LoaderSpec, base: Reg, tid: Reg) -> Loader {
        let es = cfg.precision.elem_bytes();
        let convert = s.f32_src && cfg.precision == Precision::Bf16;
        // bytes per element in global memory
        let ges = if convert { 4 } else { es };
        let rs = cfg.row_stride(s.cols, s.vec);
        let cpr = s.cols / s.vec;
        let threads = cfg.tile.threads();
        let rows_per_pass = threads / cpr;
        let passes = s.rows.div_ceil(rows_per_pass);
        let cp_async = !convert && s.vec * es >= 4;
        b.comment(format!(
            "loader: {}x{} tile, {} B vectors, {} pass(es) of {} rows, {}",
            s.rows,
            s.cols,
            s.vec * ges,
            passes,
            rows_per_pass,
            if cp_async { "cp.async" } else if convert { "ld.global f32 -> bf16 st.shared" } else { "ld.global + st.shared" }
        ));
        let r0 = b.bin(BinOp::Shr, Type::U32, tid, cpr.trailing_zeros());
        let cm = b.bin(BinOp::And, Type::U32, tid, cpr - 1);
        let c0 = b.mul_lo(Type::U32, cm, s.vec);
        let row_idx = b.add(Type::U32, r0, s.row0);
        let col_idx = b.add(Type::U32, c0, s.col0);
        let rl = b.mul_wide_u32(row_idx, s.ld);
        let cw = b.cvt(Type::U64, Type::U32, None, col_idx);
        let e = b.add(Type::U64, rl, cw);
        let eb = b.bin(BinOp::Shl, Type::U64, e, ges.trailing_zeros());
        let gptr = b.add_u64(base, eb);
        let pass_stride = b.mul_wide_u32(s.ld, rows_per_pass * ges);
        let k_step: Operand = if s.k_along_rows { b.mul_wide_u32(s.ld, cfg.tile.bk * ges).into() } else { ((cfg.tile.bk * ges) as i64).into() };
        let so = b.mad_lo(Type::U32, r0, rs, s.region_off);
        let c0b = b.mul_lo(Type::U32, c0, es);
        let soff = b.add(Type::U32, so, c0b);
        Loader {
            rows: s.rows,
            vec: s.vec,
            es,
            rs,
            rows_per_pass,
            passes,
            k_along_rows: s.k_along_rows,
            bk: cfg.tile.bk,
            cp_async,
            convert,
            base,
            gptr,
            pass_stride,
            k_step,
            row_idx,
            col_idx,
            row_lim: s.row_lim,
            col_lim: s.col_lim,
            r0,
            soff,
        }
    }

    /// Copy the current k-tile into the stage at shared address `stage` (a
    /// `.b32` shared-window address of the stage's start), then advance.
    fn load(&self, b: &mut KernelBuilder, stage: Reg) {
        let sdst = b.add(Type::U32, stage, self.soff);
        let col_ok = b.setp(Cmp::Lt, Type::U32, self.col_idx, self.col_lim);
        let mut gaddr = self.gptr;
        for p in 0..self.passes {
            if p > 0 {
                gaddr = b.add_u64(gaddr, self.pass_stride);
            }
            let partial = (p + 1) * self.rows_per_pass > self.rows;
            let body = |b: &mut KernelBuilder| {
                let row = b.add(Type::U32, self.row_idx, p * self.rows_per_pass);
                let row_ok = b.setp(Cmp::Lt, Type::U32, row, self.row_lim);
                let ok = b.and_pred(row_ok, col_ok);
                let dst = Addr::reg_off(sdst, (p * self.rows_per_pass * self.rs) as i64);
                let bytes = self.vec * self.es;
                if self.convert {
                    // f32 -> bf16 through registers (zero where out of bounds).
                    let v: Vec<Reg> = (0..self.vec).map(|_| b.val(Type::F32, 0.0f32)).collect();
                    b.guarded(ok, false, |b| b.ld_vec(Space::Global, true, Type::F32, &v, Addr::reg(gaddr)));
                    if self.vec == 1 {
                        let h = b.cvt(Type::Bf16, Type::F32, Some(Rnd::Rn), v[0]);
                        b.st(Space::Shared, Type::B16, dst, h);
                    } else {
                        let words: Vec<Operand> = v.chunks(2).map(|p| b.pack_bf16x2(p[1], p[0]).into()).collect();
                        b.st_vec(Space::Shared, Type::B32, dst, words);
                    }
                } else if self.cp_async {
                    let src = b.selp(Type::U64, gaddr, self.base, ok);
                    let size = b.selp(Type::U32, bytes, 0u32, ok);
                    let cache = if bytes == 16 { CpCache::Cg } else { CpCache::Ca };
                    b.cp_async(cache, dst, Addr::reg(src), bytes, Some(size.into()));
                } else {
                    // 2-byte elements without 4-byte alignment: through registers.
                    let h = b.val(Type::B16, 0u32);
                    b.guarded(ok, false, |b| b.ld_vec(Space::Global, true, Type::B16, &[h], Addr::reg(gaddr)));
                    b.st(Space::Shared, Type::B16, dst, h);
                }
            };
            if partial {
                let in_tile = b.setp(Cmp::Lt, Type::U32, self.r0, self.rows - p * self.rows_per_pass);
                b.if_then(in_tile, false, body);
            } else {
                body(b);
            }
        }
        // advance to the next k-tile
        b.bin_to(BinOp::Add, Type::U64, self.gptr, self.gptr, self.k_step.clone());
        let idx = if self.k_along_rows { self.row_idx } else { self.col_idx };
        b.bin_to(BinOp::Add, Type::U32, idx, idx, self.bk);
    }
}

// ---------------------------------------------------------------------------
// The kernel skeleton.

pub(super) struct Common {
    pub(super) tid: Reg,
    pub(super) m0: Reg,
    pub(super) n0: Reg,
    pub(super) m: Reg,
    pub(super) n: Reg,
    pub(super) smem: Reg,
}

enum Compute {
    Mma(MmaState),
    Ffma(FfmaState),
}

struct Skeleton;

impl Skeleton {
    fn emit(cfg: &GemmConfig) -> Kernel {
        let t = cfg.tile;
        let mut b = KernelBuilder::new(&cfg.name);
        b.max_threads(t.threads(), Some(t.min_blocks));
        let pa = b.param("a", ParamType::U64);
        let pb = b.param("b", ParamType::U64);
        let pc = b.param("c", ParamType::U64);
        let pm = b.param("m", ParamType::U32);
        let pn = b.param("n", ParamType::U32);
        let pk = b.param("k", ParamType::U32);
        let epi_params = epilogue::declare_params(&mut b, &cfg.epilogue);
        let batch_params = cfg.batched.then(|| {
            let abc: Vec<Param> = ["a", "b", "c"].iter().map(|x| b.param(&format!("batch_stride_{x}"), ParamType::U64)).collect();
            let epi: Vec<Vec<Param>> = epi_params.iter().map(|ps| ps.iter().map(|p| b.param(&format!("batch_stride_{}", p.name), ParamType::U64)).collect()).collect();
            (abc, epi)
        });
        // A short, deterministic description (the full config holds hash maps).
        b.comment(format!(
            "{:?} {} tile {}x{}x{} ({}x{} warps, {} stages), vectors a{} b{} c{}, split-k {}, f32 operands a:{} b:{}, epilogue {}",
            cfg.precision,
            cfg.layout.tag(),
            t.bm,
            t.bn,
            t.bk,
            t.warps_m,
            t.warps_n,
            t.stages,
            cfg.vec_a,
            cfg.vec_b,
            cfg.vec_c,
            cfg.split_k,
            cfg.a_f32,
            cfg.b_f32,
            cfg.epilogue.tag()
        ));
        let smem_sym = b.extern_shared("pgc_dyn_smem", 128);

        let mut a = b.ld_param_global_ptr(&pa);
        let mut bb = b.ld_param_global_ptr(&pb);
        let mut c = b.ld_param_global_ptr(&pc);
        // A batch: GEMM z's buffers start z strides further.
        let z64 = cfg.batched.then(|| {
            let z = b.special(Special::CtaidZ);
            b.cvt(Type::U64, Type::U32, None, z)
        });
        let mut epi_offsets = None;
        if let (Some(z64), Some((abc, epi))) = (z64, &batch_params) {
            let shift = |b: &mut KernelBuilder, p: &Param| -> Reg {
                let stride = b.ld_param(p);
                b.mul_lo(Type::U64, z64, stride)
            };
            for (ptr, p) in [(&mut a, &abc[0]), (&mut bb, &abc[1]), (&mut c, &abc[2])] {
                let off = shift(&mut b, p);
                *ptr = b.add_u64(*ptr, off);
            }
            epi_offsets = Some(epi.iter().map(|ps| ps.iter().map(|p| shift(&mut b, p)).collect::<Vec<Reg>>()).collect::<Vec<_>>());
        }
        let m = b.ld_param(&pm);
        let n = b.ld_param(&pn);
        let k = b.ld_param(&pk);
        let tid = b.special(Special::TidX);
        let bx = b.special(Special::CtaidX);
        let by = b.special(Special::CtaidY);
        let m0 = b.mul_lo(Type::U32, by, t.bm);
        let n0 = b.mul_lo(Type::U32, bx, t.bn);
        let smem = b.shared_addr(&smem_sym);
        let cm = Common { tid, m0, n0, m, n, smem };

        let [ra, _rb] = cfg.region_bytes();
        let [(ar, ac, av), (br, bc, bv)] = cfg.operand_tiles();
        // The K range of this block: all of K, or one split's share of the k-tiles.
        let log_bk = t.bk.trailing_zeros();
        let (kb, kl): (Operand, Reg) = if cfg.split_k > 1 {
            b.comment(format!("split-K over {} blocks (grid.z)", cfg.split_k));
            let z = b.special(Special::CtaidZ);
            let tk = b.add(Type::U32, k, t.bk - 1);
            let total = b.bin(BinOp::Shr, Type::U32, tk, log_bk);
            let tp = b.add(Type::U32, total, cfg.split_k - 1);
            let per = b.bin(BinOp::Div, Type::U32, tp, cfg.split_k);
            let chunk = b.bin(BinOp::Shl, Type::U32, per, log_bk);
            let kbeg = b.mul_lo(Type::U32, z, chunk);
            let empty = b.setp(Cmp::Ge, Type::U32, kbeg, k);
            b.push_guarded(Guard { pred: empty, negate: false }, Inst::Ret);
            let e = b.add(Type::U32, kbeg, chunk);
            let kend = b.bin(BinOp::Min, Type::U32, e, k);
            (kbeg.into(), kend)
        } else {
            (0u32.into(), k)
        };
        let a_spec = match cfg.layout.a {
            AStore::MK => LoaderSpec {
                rows: ar, cols: ac, vec: av, region_off: 0, k_along_rows: false,
                row0: m0.into(), col0: kb.clone(), row_lim: m, col_lim: kl, ld: k, f32_src: cfg.a_f32,
            },
            AStore::KM => LoaderSpec {
                rows: ar, cols: ac, vec: av, region_off: 0, k_along_rows: true,
                row0: kb.clone(), col0: m0.into(), row_lim: kl, col_lim: m, ld: m, f32_src: cfg.a_f32,
            },
        };
        let b_spec = match cfg.layout.b {
            BStore::NK => LoaderSpec {
                rows: br, cols: bc, vec: bv, region_off: ra, k_along_rows: false,
                row0: n0.into(), col0: kb.clone(), row_lim: n, col_lim: kl, ld: k, f32_src: cfg.b_f32,
            },
            BStore::KN => LoaderSpec {
                rows: br, cols: bc, vec: bv, region_off: ra, k_along_rows: true,
                row0: kb.clone(), col0: n0.into(), row_lim: kl, col_lim: n, ld: n, f32_src: cfg.b_f32,
            },
        };
        b.comment("operand A");
        let la = Loader::new(&mut b, cfg, a_spec, a, tid);
        b.comment("operand B");
        let lb = Loader::new(&mut b, cfg, b_spec, bb, tid);

        let mut compute = match cfg.precision {
            Precision::Bf16 => Compute::Mma(MmaState::new(&mut b, cfg, &cm)),
            Precision::F32 => Compute::Ffma(FfmaState::new(&mut b, cfg, &cm)),
        };

        // k-loop over a ring of `stages` shared-memory stages.
        let stage_bytes = cfg.smem_bytes() / t.stages;
        let ring_end = cfg.smem_bytes();
        let klen = b.bin(BinOp::Sub, Type::U32, kl, kb.clone());
        let kt_add = b.add(Type::U32, klen, t.bk - 1);
        let ktiles = b.bin(BinOp::Shr, Type::U32, kt_add, log_bk);
        let rd = b.val(Type::U32, 0u32);
        let wr = b.val(Type::U32, 0u32);
        let advance = |b: &mut KernelBuilder, r: Reg| {
            b.bin_to(BinOp::Add, Type::U32, r, r, stage_bytes);
            let wrap = b.setp(Cmp::Ge, Type::U32, r, ring_end);
            b.push(Inst::Selp { ty: Type::U32, dst: r, a: 0u32.into(), b: r.into(), p: wrap });
        };
        b.comment(format!("prologue: fill {} stage(s)", t.stages - 1));
        for _ in 0..t.stages - 1 {
            let st = b.add(Type::U32, smem, wr);
            la.load(&mut b, st);
            lb.load(&mut b, st);
            b.cp_async_commit();
            advance(&mut b, wr);
        }
        b.comment("main loop");
        b.for_range(0u32, ktiles, 1, true, |b, _kt| {
            b.cp_async_wait(t.stages - 2);
            b.bar_sync();
            let st = b.add(Type::U32, smem, wr);
            la.load(b, st);
            lb.load(b, st);
            b.cp_async_commit();
            advance(b, wr);
            match &mut compute {
                Compute::Mma(s) => s.compute(b, cfg, rd),
                Compute::Ffma(s) => s.compute(b, cfg, rd),
            }
            advance(b, rd);
        });
        b.cp_async_wait_all();

        b.comment("epilogue");
        let mut er = epilogue::setup(&mut b, &cfg.epilogue, &epi_params, epi_offsets.as_deref(), c, m, n, cfg.split_k > 1);
        match &compute {
            Compute::Mma(s) => s.epilogue(&mut b, cfg, &cm, &mut er),
            Compute::Ffma(s) => s.epilogue(&mut b, cfg, &cm, &mut er),
        }
        b.ret();
        b.finish()
    }
}

// ---------------------------------------------------------------------------
// Tensor cores.

struct MmaState {
    mt: u32,
    nt: u32,
    /// Per-thread ldmatrix addresses (shared window, stage 0).
    a_lane: Reg,
    b_lane: Reg,
    a_rs: u32,
    b_rs: u32,
    acc: Vec<[Reg; 4]>,
    /// Thread's first output row / column (without the mt/nt offsets).
    row0: Reg,
    col0: Reg,
}

impl MmaState {
    fn new(b: &mut KernelBuilder, cfg: &GemmConfig, cm: &Common) -> MmaState {
        let t = cfg.tile;
        let wtm = t.bm / t.warps_m;
        let wtn = t.bn / t.warps_n;
        let (mt, nt) = (wtm / 16, wtn / 8);
        let (a_rs, b_rs, ra) = cfg.tile_strides();
        b.comment(format!("mma: warp tile {wtm}x{wtn} = {mt}x{nt} m16n8k16 tiles"));
        let lane = b.bin(BinOp::And, Type::U32, cm.tid, 31u32);
        let warp = b.bin(BinOp::Shr, Type::U32, cm.tid, 5u32);
        let wn = b.bin(BinOp::And, Type::U32, warp, t.warps_n - 1);
        let wm = b.bin(BinOp::Shr, Type::U32, warp, t.warps_n.trailing_zeros());
        // ldmatrix: lane supplies the row address of matrix idx = lane/8, row r = lane%8.
        let idx = b.bin(BinOp::Shr, Type::U32, lane, 3u32);
        let r = b.bin(BinOp::And, Type::U32, lane, 7u32);
        let lo = b.bin(BinOp::And, Type::U32, idx, 1u32); // idx & 1
        let hi = b.bin(BinOp::Shr, Type::U32, idx, 1u32); // idx >> 1
        let wm_off = b.mul_lo(Type::U32, wm, wtm);
        let wn_off = b.mul_lo(Type::U32, wn, wtn);
        // A fragments (a0..a3 = (m0-7,k0-7), (m8-15,k0-7), (m0-7,k8-15), (m8-15,k8-15)):
        // [m][k]: row m = wm_off + r + lo*8, col k = hi*8; [k][m], .trans: row
        // k = hi*8 + r, col m = wm_off + lo*8.
        let a_off = match cfg.layout.a {
            AStore::MK => frag_lane(b, false, (lo, hi), r, wm_off, a_rs),
            AStore::KM => frag_lane(b, true, (hi, lo), r, wm_off, a_rs),
        };
        let a_lane = b.add(Type::U32, a_off, cm.smem);
        // B fragments for an n-tile pair (b0,b1 of nt=2q; b0,b1 of nt=2q+1):
        // [n][k]: row n = wn_off + hi*8 + r, col k = lo*8; [k][n], .trans: row
        // k = lo*8 + r, col n = wn_off + hi*8.
        let b_off = match cfg.layout.b {
            BStore::NK => frag_lane(b, false, (hi, lo), r, wn_off, b_rs),
            BStore::KN => frag_lane(b, true, (lo, hi), r, wn_off, b_rs),
        };
        let b_off = b.add(Type::U32, b_off, ra);
        let b_lane = b.add(Type::U32, b_off, cm.smem);
        // accumulators
        let mut acc = vec![];
        for _ in 0..mt * nt {
            let regs: [Reg; 4] = b.regs(RegClass::F32);
            for &x in &regs {
                b.mov(Type::F32, x, 0.0f32);
            }
            acc.push(regs);
        }
        // epilogue coordinates: row = m0 + wm_off + lane/4 (+8), col = n0 + wn_off + (lane%4)*2 (+1)
        let g = b.bin(BinOp::Shr, Type::U32, lane, 2u32);
        let tig = b.bin(BinOp::And, Type::U32, lane, 3u32);
        let row0 = b.add(Type::U32, cm.m0, wm_off);
        let row0 = b.add(Type::U32, row0, g);
        let col0 = b.add(Type::U32, cm.n0, wn_off);
        let col0 = b.mad_lo(Type::U32, tig, 2u32, col0);
        MmaState { mt, nt, a_lane, b_lane, a_rs, b_rs, acc, row0, col0 }
    }

    fn compute(&mut self, b: &mut KernelBuilder, cfg: &GemmConfig, stage: Reg) {
        let a_base = b.add(Type::U32, self.a_lane, stage);
        let b_base = b.add(Type::U32, self.b_lane, stage);
        let a_trans = cfg.layout.a == AStore::KM;
        let b_trans = cfg.layout.b == BStore::KN;
        for kk in 0..cfg.tile.bk / 16 {
            let mut af = vec![];
            for i in 0..self.mt {
                let off = if a_trans { kk * 16 * self.a_rs + i * 32 } else { i * 16 * self.a_rs + kk * 32 };
                let r = b.ldmatrix(4, a_trans, Addr::reg_off(a_base, off as i64));
                af.push([r[0], r[1], r[2], r[3]]);
            }
            let mut bf = vec![];
            for q in 0..self.nt / 2 {
                let off = if b_trans { kk * 16 * self.b_rs + q * 32 } else { q * 16 * self.b_rs + kk * 32 };
                let r = b.ldmatrix(4, b_trans, Addr::reg_off(b_base, off as i64));
                bf.push([r[0], r[1]]);
                bf.push([r[2], r[3]]);
            }
            each_acc(&self.acc, self.mt, self.nt, |c, i, j| b.mma_bf16(c, af[i], bf[j], c));
        }
    }

    fn epilogue(&self, b: &mut KernelBuilder, cfg: &GemmConfig, cm: &Common, er: &mut epilogue::EpiRegs) {
        fragment_epilogue(b, cfg, cm, er, (self.mt, self.nt), &self.acc, (self.row0, self.col0));
    }
}

/// The epilogue over accumulators in the m16n8 fragment layout (mma.sync's,
/// and wgmma's per warp): `acc[i * nt + j]` holds rows `row0 + 16i (+8)`,
/// columns `col0 + 8j (+1)` of this lane.
pub(super) fn fragment_epilogue(b: &mut KernelBuilder, cfg: &GemmConfig, cm: &Common, er: &mut epilogue::EpiRegs, (mt, nt): (u32, u32), acc: &[[Reg; 4]], (row0, col0): (Reg, Reg)) {
    {
        let epi = &cfg.epilogue;
        let pair = cfg.vec_c == 2;
        let leader = row_sum_leader(b, er, cm.tid, 3);
        // column values for every column this thread owns
        let mut cols = vec![];
        for j in 0..nt {
            let col = b.add(Type::U32, col0, j * 8);
            let ok0 = b.setp(Cmp::Lt, Type::U32, col, cm.n);
            let col1 = b.add(Type::U32, col, 1u32);
            let ok1 = b.setp(Cmp::Lt, Type::U32, col1, cm.n);
            cols.push((col, ok0, ok1));
        }
        for i in 0..mt {
            for h in 0..2u32 {
                let (row, row_ok, rv) = epi_row(b, cfg, cm, er, row0, i * 16 + h * 8);
                for j in 0..nt as usize {
                    let (col, ok0, ok1) = &cols[j];
                    let acc = acc[i as usize * nt as usize + j];
                    let vals = [acc[2 * h as usize], acc[2 * h as usize + 1]];
                    let idx = epilogue::elem_index(b, er, row, *col);
                    let p0 = b.and_pred(row_ok, *ok0);
                    if pair {
                        let g = epilogue::Group { idx, row, col: *col, preds: &[p0], vector: true, row_vals: &rv };
                        epilogue::emit_group(b, epi, er, &g, &vals);
                    } else {
                        let p1 = b.and_pred(row_ok, *ok1);
                        let g = epilogue::Group { idx, row, col: *col, preds: &[p0, p1], vector: false, row_vals: &rv };
                        epilogue::emit_group(b, epi, er, &g, &vals);
                    }
                }
                // The 4 lanes of a quad hold this row's columns.
                if let Some(leader) = leader {
                    epilogue::finish_row(b, er, row, row_ok, &[1, 2], leader);
                }
            }
        }
    }
}

/// Byte offset in a bf16 tile (row stride `rs`) of the row this lane gives
/// ldmatrix: row `8 * row8 + r`, 16-byte column `col8`, the warp's offset
/// `w_off` on the rows; `trans` (the tile stored k-major): row `8 * row8 + r`
/// of k, column `w_off + 8 * col8` elements.
fn frag_lane(b: &mut KernelBuilder, trans: bool, (row8, col8): (Reg, Reg), r: Reg, w_off: Reg, rs: u32) -> Reg {
    if trans {
        let k_ = b.mad_lo(Type::U32, row8, 8u32, r);
        let off = b.mul_lo(Type::U32, k_, rs);
        let m_ = b.mad_lo(Type::U32, col8, 8u32, w_off);
        b.mad_lo(Type::U32, m_, 2u32, off)
    } else {
        let m_ = b.mad_lo(Type::U32, row8, 8u32, r);
        let m_ = b.add(Type::U32, m_, w_off);
        let off = b.mul_lo(Type::U32, m_, rs);
        b.mad_lo(Type::U32, col8, 16u32, off)
    }
}

/// `f(acc, i, j)` for the accumulators of an `mt x nt` grid, row-major.
fn each_acc<T: Copy>(acc: &[T], mt: u32, nt: u32, mut f: impl FnMut(T, usize, usize)) {
    for i in 0..mt as usize {
        for j in 0..nt as usize {
            f(acc[i * nt as usize + j], i, j);
        }
    }
}

/// With row sums, whether this thread leads its group of `group_mask + 1`
/// lanes (the lanes that hold one row's columns).
fn row_sum_leader(b: &mut KernelBuilder, er: &epilogue::EpiRegs, tid: Reg, group_mask: u32) -> Option<Reg> {
    er.has_row_sums().then(|| {
        let lane = b.bin(BinOp::And, Type::U32, tid, group_mask);
        b.setp(Cmp::Eq, Type::U32, lane, 0u32)
    })
}

/// Output row `row0 + off`: the row, whether it is inside M, and its
/// epilogue row values.
fn epi_row(b: &mut KernelBuilder, cfg: &GemmConfig, cm: &Common, er: &epilogue::EpiRegs, row0: Reg, off: u32) -> (Reg, Reg, Vec<Option<Reg>>) {
    let row = b.add(Type::U32, row0, off);
    let row_ok = b.setp(Cmp::Lt, Type::U32, row, cm.m);
    let rv = epilogue::load_row_vals(b, &cfg.epilogue, er, row, row_ok);
    (row, row_ok, rv)
}

// ---------------------------------------------------------------------------
// FFMA (f32).

struct FfmaState {
    /// Outputs per thread along M (rows ty + TY*i) and N (cols tx + 16*j).
    mi: u32,
    nj: u32,
    ty_n: u32,
    a_lane: Reg,
    b_lane: Reg,
    a_rs: u32,
    b_rs: u32,
    acc: Vec<Reg>,
    row0: Reg,
    col0: Reg,
}

impl FfmaState {
    fn new(b: &mut KernelBuilder, cfg: &GemmConfig, cm: &Common) -> FfmaState {
        let t = cfg.tile;
        let ty_n = t.threads() / 16;
        let (mi, nj) = (t.bm / ty_n, t.bn / 16);
        let (a_rs, b_rs, ra) = cfg.tile_strides();
        b.comment(format!("ffma: 16x{ty_n} threads, {mi}x{nj} outputs each"));
        let tx = b.bin(BinOp::And, Type::U32, cm.tid, 15u32);
        let ty = b.bin(BinOp::Shr, Type::U32, cm.tid, 4u32);
        let a_lane = match cfg.layout.a {
            AStore::MK => b.mad_lo(Type::U32, ty, a_rs, cm.smem), // As[m][k]
            AStore::KM => b.mad_lo(Type::U32, ty, 4u32, cm.smem), // As[k][m]
        };
        let b_lane = match cfg.layout.b {
            BStore::NK => b.mad_lo(Type::U32, tx, b_rs, cm.smem), // Bs[n][k]
            BStore::KN => b.mad_lo(Type::U32, tx, 4u32, cm.smem), // Bs[k][n]
        };
        let b_lane = b.add(Type::U32, b_lane, ra);
        let acc: Vec<Reg> = (0..mi * nj).map(|_| b.val(Type::F32, 0.0f32)).collect();
        let row0 = b.add(Type::U32, cm.m0, ty);
        let col0 = b.add(Type::U32, cm.n0, tx);
        FfmaState { mi, nj, ty_n, a_lane, b_lane, a_rs, b_rs, acc, row0, col0 }
    }

    fn compute(&mut self, b: &mut KernelBuilder, cfg: &GemmConfig, stage: Reg) {
        let a_base = b.add(Type::U32, self.a_lane, stage);
        let b_base = b.add(Type::U32, self.b_lane, stage);
        for kk in 0..cfg.tile.bk {
            let av: Vec<Reg> = (0..self.mi)
                .map(|i| {
                    let m = i * self.ty_n;
                    let off = match cfg.layout.a {
                        AStore::MK => m * self.a_rs + kk * 4,
                        AStore::KM => kk * self.a_rs + m * 4,
                    };
                    b.ld(Space::Shared, Type::F32, Addr::reg_off(a_base, off as i64))
                })
                .collect();
            let bv: Vec<Reg> = (0..self.nj)
                .map(|j| {
                    let n = j * 16;
                    let off = match cfg.layout.b {
                        BStore::NK => n * self.b_rs + kk * 4,
                        BStore::KN => kk * self.b_rs + n * 4,
                    };
                    b.ld(Space::Shared, Type::F32, Addr::reg_off(b_base, off as i64))
                })
                .collect();
            each_acc(&self.acc, self.mi, self.nj, |c, i, j| b.fma_f32_to(c, av[i], bv[j], c));
        }
    }

    fn epilogue(&self, b: &mut KernelBuilder, cfg: &GemmConfig, cm: &Common, er: &mut epilogue::EpiRegs) {
        let epi = &cfg.epilogue;
        let leader = row_sum_leader(b, er, cm.tid, 15);
        let mut cols = vec![];
        for j in 0..self.nj {
            let col = b.add(Type::U32, self.col0, j * 16);
            let ok = b.setp(Cmp::Lt, Type::U32, col, cm.n);
            cols.push((col, ok));
        }
        for i in 0..self.mi {
            let (row, row_ok, rv) = epi_row(b, cfg, cm, er, self.row0, i * self.ty_n);
            for j in 0..self.nj as usize {
                let (col, ok) = &cols[j];
                let idx = epilogue::elem_index(b, er, row, *col);
                let p = b.and_pred(row_ok, *ok);
                let g = epilogue::Group { idx, row, col: *col, preds: &[p], vector: false, row_vals: &rv };
                epilogue::emit_group(b, epi, er, &g, &[self.acc[i as usize * self.nj as usize + j]]);
            }
            // The 16 lanes with the same `ty` (a half warp) hold this row's columns.
            if let Some(leader) = leader {
                epilogue::finish_row(b, er, row, row_ok, &[1, 2, 4, 8], leader);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ptx::templates::epilogue::DType;

    #[test]
    fn rejects_bad_configs() {
        let e = Epilogue::store(DType::F32);
        let c = GemmConfig::new(Precision::Bf16, GemmLayout::LINEAR, 64, 64, 64, e.clone());
        assert!(c.clone().with_tile(TileConfig { bk: 8, ..TileConfig::SMALL }).validate().is_err());
        assert!(c.clone().with_tile(TileConfig { stages: 1, ..TileConfig::SMALL }).validate().is_err());
        assert!(c.clone().with_tile(TileConfig { bm: 48, ..TileConfig::SMALL }).validate().is_err());
        let mut bad = c.clone();
        bad.vec_a = 16;
        assert!(bad.validate().is_err());
        let dup = GemmConfig::new(Precision::Bf16, GemmLayout::LINEAR, 64, 64, 64, Epilogue::row_scale("m", DType::F32));
        assert!(dup.validate().is_err(), "epilogue parameter may not shadow m");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn picks_vector_widths_from_sizes() {
        let e = Epilogue::store(DType::F32);
        let c = GemmConfig::new(Precision::Bf16, GemmLayout::WEIGHT_GRAD, 33, 48, 200, e.clone());
        assert_eq!((c.vec_a, c.vec_b, c.vec_c), (1, 8, 2)); // A stored [K, M=33], B [K, N=48]
        let c = GemmConfig::new(Precision::F32, GemmLayout::LINEAR, 33, 48, 200, e);
        assert_eq!((c.vec_a, c.vec_b, c.vec_c), (4, 4, 2));
    }

    #[test]
    fn suggests_split_k_for_weight_gradients() {
        let e = Epilogue::store(DType::F32);
        let c = GemmConfig::new(Precision::Bf16, GemmLayout::WEIGHT_GRAD, 1536, 512, 16384, e.clone());
        assert_eq!(c.tile, TileConfig::LARGE);
        // 48 output tiles for 264 block slots: split about 6 ways
        assert_eq!(c.suggest_split_k(1536, 512, 16384, 132), 6);
        let c = GemmConfig::new(Precision::Bf16, GemmLayout::LINEAR, 16384, 1536, 512, e.clone());
        assert_eq!(c.suggest_split_k(16384, 1536, 512, 132), 1);
        let c = GemmConfig::new(Precision::Bf16, GemmLayout::LINEAR, 1024, 1024, 65, e);
        assert_eq!(c.tile, TileConfig::LARGE_8W, "unaligned rows get the 8-warp tile");
    }
}
