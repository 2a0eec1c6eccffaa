//! What the attention kernels share: configurations, kernel descriptions,
//! errors, and the emission helpers of the forward, backward and row kernels.

use crate::ptx::builder::*;
use crate::ptx::templates::epilogue::DType;
use crate::ptx::templates::gemm::Precision;
use serde::{Deserialize, Serialize};

/// Memory layout of the per-head tensors (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttnLayout {
    /// `[B, heads, T, d]`
    Bhtd,
    /// `[B, T, heads, d]`
    Bthd,
}

impl AttnLayout {
    pub(super) fn tag(self) -> &'static str {
        match self {
            AttnLayout::Bhtd => "bhtd",
            AttnLayout::Bthd => "bthd",
        }
    }
}

/// Everything that determines the attention kernels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttnConfig {
    pub precision: Precision,
    /// 8, 16, 32 or 64.
    pub head_dim: u32,
    pub layout: AttnLayout,
    /// Element type of the forward output `o` (f32 precision: must be F32).
    pub out: DType,
    /// Element type of `dk` and `dv` (f32 precision: must be F32).
    pub grad_out: DType,
    /// The q/k prologue (RMS norm, rotary, `q_gain`): when set, q and k
    /// arrive raw from the projections and [`emit_attention`] also emits the
    /// prep kernels and their backward ([`PrologueKernels`]).
    #[serde(default)]
    pub prologue: Option<Prologue>,
}

/// The fused q/k prologue of an attention configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prologue {
    /// Element type of the gradients of the raw q and k.
    pub dx: DType,
}

impl AttnConfig {
    pub fn new(precision: Precision, head_dim: u32, layout: AttnLayout) -> Self {
        let e = match precision {
            Precision::Bf16 => DType::Bf16,
            Precision::F32 => DType::F32,
        };
        AttnConfig { precision, head_dim, layout, out: e, grad_out: DType::F32, prologue: None }
    }

    /// With the q/k prologue (raw-gradient element type `dx`).
    pub fn with_prologue(mut self, dx: DType) -> Self {
        self.prologue = Some(Prologue { dx });
        self
    }

    /// The element type of q, k, v and do.
    pub fn in_type(&self) -> DType {
        match self.precision {
            Precision::Bf16 => DType::Bf16,
            Precision::F32 => DType::F32,
        }
    }

    pub fn validate(&self) -> Result<(), AttnError> {
        if !matches!(self.head_dim, 8 | 16 | 32 | 64) {
            return Err(AttnError(format!("head_dim {} is not 8, 16, 32 or 64", self.head_dim)));
        }
        let dx = self.prologue.map_or(DType::F32, |p| p.dx);
        if [self.out, self.grad_out, dx].contains(&DType::I32) {
            return Err(AttnError("attention tensors are f32 or bf16, not i32".into()));
        }
        if self.precision == Precision::F32 && (self.out != DType::F32 || self.grad_out != DType::F32 || dx != DType::F32) {
            return Err(AttnError("f32 precision writes f32 outputs only".into()));
        }
        Ok(())
    }

    /// Name stem shared by the kernels of this configuration.
    pub fn tag(&self) -> String {
        let p = match self.precision {
            Precision::Bf16 => "bf16",
            Precision::F32 => "f32",
        };
        let e = |t: DType| match t {
            DType::F32 => "f",
            DType::Bf16 => "h",
            DType::I32 => "i",
        };
        format!("{p}_d{}_{}_o{}{}", self.head_dim, self.layout.tag(), e(self.out), e(self.grad_out))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("attention: {0}")]
pub struct AttnError(pub String);

/// What a kernel's grid is laid over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GridKind {
    /// `[ceil(T / rows), H, B]`
    QueryBlocks,
    /// `[ceil(T / rows), Hk, B]`
    KeyBlocks,
    /// `[ceil(B * H * T / rows), 1, 1]`
    Rows,
    /// `[ceil(B * T / rows), heads, 1]` (the prep kernels: `heads` is the
    /// tensor's own head count)
    PrepRows,
}

/// An emitted kernel and how to launch it.
#[derive(Clone, Debug)]
pub struct AttnKernel {
    pub kernel: Kernel,
    pub threads: u32,
    /// Dynamic shared memory per block.
    pub smem_bytes: u32,
    pub grid_kind: GridKind,
    /// Rows (queries, keys or tensor rows) per block.
    pub rows_per_block: u32,
}

impl AttnKernel {
    pub fn name(&self) -> &str {
        &self.kernel.name
    }
    pub fn block(&self) -> [u32; 3] {
        [self.threads, 1, 1]
    }
    /// Grid for `B` batches, `H` query heads, `Hk` kv heads, `T` positions
    /// (prep kernels: `h` is the head count of the tensor they process).
    pub fn grid(&self, b: u32, h: u32, hk: u32, t: u32) -> [u32; 3] {
        let r = self.rows_per_block;
        match self.grid_kind {
            GridKind::QueryBlocks => [t.div_ceil(r), h, b],
            GridKind::KeyBlocks => [t.div_ceil(r), hk, b],
            GridKind::Rows => [(b * h * t).div_ceil(r), 1, 1],
            GridKind::PrepRows => [(b * t).div_ceil(r), h, 1],
        }
    }
}

/// The kernels of one attention configuration. Order of a training step:
/// `prologue.q`, `prologue.k`, `fwd`; then `dot`, every `bwd`,
/// `prologue.q_bwd` (its `dy` is the f32 `dq`), `prologue.k_bwd` (`dy` = `dk`).
#[derive(Clone, Debug)]
pub struct AttnKernels {
    pub fwd: AttnKernel,
    pub dot: AttnKernel,
    /// Launched in order with the same arguments.
    pub bwd: Vec<AttnKernel>,
    pub prologue: Option<PrologueKernels>,
}

/// The q/k prep kernels of an attention with a [`Prologue`] (see [`QkPrepConfig`]).
#[derive(Clone, Debug)]
pub struct PrologueKernels {
    /// `y = rope(rms_norm(q_raw)) * q_gain[h]`
    pub q: AttnKernel,
    /// `y = rope(rms_norm(k_raw))`
    pub k: AttnKernel,
    /// raw-q gradient and the `q_gain` gradient from the f32 `dq`
    pub q_bwd: AttnKernel,
    /// raw-k gradient from `dk` (element type [`AttnConfig::grad_out`])
    pub k_bwd: AttnKernel,
}

impl AttnKernels {
    pub fn all(&self) -> Vec<&AttnKernel> {
        let mut v = vec![&self.fwd, &self.dot];
        v.extend(self.bwd.iter());
        if let Some(p) = &self.prologue {
            v.extend([&p.q, &p.k, &p.q_bwd, &p.k_bwd]);
        }
        v
    }
}

// ---------------------------------------------------------------------------
// Shared emission helpers.

pub(super) const LOG2E: f32 = std::f32::consts::LOG2_E;
pub(super) const LN2: f32 = std::f32::consts::LN_2;

pub(super) fn fmul(b: &mut KernelBuilder, x: impl Into<Operand>, y: impl Into<Operand>) -> Reg {
    b.bin(BinOp::Mul, Type::F32, x, y)
}
pub(super) fn fadd(b: &mut KernelBuilder, x: impl Into<Operand>, y: impl Into<Operand>) -> Reg {
    b.bin(BinOp::Add, Type::F32, x, y)
}
pub(super) fn fsub(b: &mut KernelBuilder, x: impl Into<Operand>, y: impl Into<Operand>) -> Reg {
    b.bin(BinOp::Sub, Type::F32, x, y)
}
pub(super) fn fmax(b: &mut KernelBuilder, x: impl Into<Operand>, y: impl Into<Operand>) -> Reg {
    b.bin(BinOp::Max, Type::F32, x, y)
}
pub(super) fn ex2(b: &mut KernelBuilder, x: impl Into<Operand>) -> Reg {
    b.unary(UnOp::Ex2Approx, Type::F32, x)
}
/// `x *= y` in place.
pub(super) fn fmul_to(b: &mut KernelBuilder, x: Reg, y: impl Into<Operand>) {
    b.bin_to(BinOp::Mul, Type::F32, x, x, y);
}

/// Sum (or max) of `x` over aligned groups of `n` lanes (a power of two up
/// to 32); every lane of the warp must execute it.
pub(super) fn group_reduce(b: &mut KernelBuilder, x: Reg, n: u32, op: BinOp) -> Reg {
    let mut acc = x;
    let mut m = 1;
    while m < n {
        let o = b.shfl_bfly(acc, m);
        acc = b.bin(op, Type::F32, acc, o);
        m *= 2;
    }
    acc
}

/// The (low, high) bf16 halves of a packed `.b32` as f32 bit patterns.
pub(super) fn unpack_bf16x2(b: &mut KernelBuilder, w: Reg) -> (Reg, Reg) {
    let lo = b.bin(BinOp::Shl, Type::B32, w, 16u32);
    let hi = b.bin(BinOp::And, Type::B32, w, 0xffff_0000u32);
    (lo, hi)
}

/// Base address of row 0 of head `h` of batch `bb` in a per-head tensor with
/// `nh` heads, and the row stride in bytes (a `.u32` register).
pub(super) struct HeadRows {
    pub(super) base: Reg,
    pub(super) stride: Reg,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn head_rows(
    b: &mut KernelBuilder,
    layout: AttnLayout,
    ptr: Reg,
    bb: Reg,
    h: Reg,
    nh: Reg,
    t: Reg,
    d: u32,
    es: u32,
) -> HeadRows {
    let row_bytes = d * es;
    match layout {
        AttnLayout::Bhtd => {
            let bh = b.mad_lo(Type::U32, bb, nh, h);
            let r0 = b.mul_lo(Type::U32, bh, t);
            let off = b.mul_wide_u32(r0, row_bytes);
            let base = b.add_u64(ptr, off);
            let stride = b.val(Type::U32, row_bytes);
            HeadRows { base, stride }
        }
        AttnLayout::Bthd => {
            let bt = b.mul_lo(Type::U32, bb, t);
            let r0 = b.mad_lo(Type::U32, bt, nh, h);
            let off = b.mul_wide_u32(r0, row_bytes);
            let base = b.add_u64(ptr, off);
            let stride = b.mul_lo(Type::U32, nh, row_bytes);
            HeadRows { base, stride }
        }
    }
}

/// Base address of the f32 row statistics (`lse`, `dsum`: `[B, H, T]`) of head `h`.
pub(super) fn stat_base(b: &mut KernelBuilder, ptr: Reg, bb: Reg, h: Reg, nh: Reg, t: Reg) -> Reg {
    let bh = b.mad_lo(Type::U32, bb, nh, h);
    let r0 = b.mul_lo(Type::U32, bh, t);
    b.mad_wide_u32(r0, 4u32, ptr)
}

/// Copies a `rows x cols` tile of a head (rows `row0..row0 + rows`, columns
/// `0..cols` of `valid` meaningful ones) into shared memory with 16-byte
/// `cp.async`s; rows at or past `t` and columns past `valid` are zero-filled.
pub(super) struct TileLoader {
    pub(super) rows: u32,
    /// shared row stride (bytes)
    pub(super) srs: u32,
    /// rows covered by one pass of all threads
    pub(super) rpp: u32,
    pub(super) passes: u32,
    pub(super) rt: Reg,
    pub(super) col_ok: Reg,
    pub(super) cbytes: Reg,
    pub(super) soff: Reg,
}

impl TileLoader {
    /// `row_bytes`: bytes per shared row holding data (a multiple of 16);
    /// `valid_bytes`: bytes per row present in memory (a multiple of 16).
    pub(super) fn new(b: &mut KernelBuilder, tid: Reg, threads: u32, rows: u32, row_bytes: u32, valid_bytes: u32, srs: u32) -> TileLoader {
        assert!(row_bytes.is_multiple_of(16) && valid_bytes.is_multiple_of(16) && valid_bytes <= row_bytes);
        let cpr = row_bytes / 16;
        assert!(cpr.is_power_of_two() && threads.is_multiple_of(cpr));
        let rpp = threads / cpr;
        let passes = rows.div_ceil(rpp);
        let rt = b.bin(BinOp::Shr, Type::U32, tid, cpr.trailing_zeros());
        let ct = b.bin(BinOp::And, Type::U32, tid, cpr - 1);
        let cb = b.mul_lo(Type::U32, ct, 16u32);
        let col_ok = b.setp(Cmp::Lt, Type::U32, cb, valid_bytes);
        let cbytes = b.cvt(Type::U64, Type::U32, None, cb);
        let soff = b.mad_lo(Type::U32, rt, srs, cb);
        TileLoader { rows, srs, rpp, passes, rt, col_ok, cbytes, soff }
    }

    pub(super) fn load(&self, b: &mut KernelBuilder, dst: Reg, src: &HeadRows, row0: Reg, t: Reg) {
        let sdst = b.add(Type::U32, dst, self.soff);
        let row_t = b.add(Type::U32, row0, self.rt);
        let gcol = b.add_u64(src.base, self.cbytes);
        for p in 0..self.passes {
            let body = |b: &mut KernelBuilder| {
                let row = b.add(Type::U32, row_t, p * self.rpp);
                let in_t = b.setp(Cmp::Lt, Type::U32, row, t);
                let ok = b.and_pred(in_t, self.col_ok);
                let g = b.mad_wide_u32(row, src.stride, gcol);
                let s = b.selp(Type::U64, g, src.base, ok);
                let n = b.selp(Type::U32, 16u32, 0u32, ok);
                b.cp_async(CpCache::Cg, Addr::reg_off(sdst, (p * self.rpp * self.srs) as i64), Addr::reg(s), 16, Some(n.into()));
            };
            if (p + 1) * self.rpp > self.rows {
                let inside = b.setp(Cmp::Lt, Type::U32, self.rt, self.rows - p * self.rpp);
                b.if_then(inside, false, body);
            } else {
                body(b);
            }
        }
    }
}

/// Copies `n` f32 row statistics (`base[row0 .. row0 + n]`, zero past `t`)
/// into shared memory at `dst` with 4-byte `cp.async`s; threads
/// `first .. first + n` take one element each.
#[allow(clippy::too_many_arguments)]
pub(super) fn load_stats(b: &mut KernelBuilder, tid: Reg, first: u32, n: u32, dst: Reg, base: Reg, row0: Reg, t: Reg) {
    let e = b.bin(BinOp::Sub, Type::U32, tid, first);
    let mine = b.setp(Cmp::Lt, Type::U32, e, n); // wraps for tid < first
    b.if_then(mine, false, |b| {
        let row = b.add(Type::U32, row0, e);
        let ok = b.setp(Cmp::Lt, Type::U32, row, t);
        let g = b.mad_wide_u32(row, 4u32, base);
        let s = b.selp(Type::U64, g, base, ok);
        let sz = b.selp(Type::U32, 4u32, 0u32, ok);
        let sd = b.mad_lo(Type::U32, e, 4u32, dst);
        b.cp_async(CpCache::Ca, Addr::reg(sd), Addr::reg(s), 4, Some(sz.into()));
    });
}

/// Common kernel parameters of the attention kernels.
pub(super) struct AttnParams {
    pub(super) ptrs: Vec<Reg>,
    pub(super) h: Reg,
    pub(super) hk: Reg,
    pub(super) t: Reg,
    pub(super) scale: Reg,
}

pub(super) fn declare(b: &mut KernelBuilder, names: &[&str]) -> AttnParams {
    let ps: Vec<Param> = names.iter().map(|n| b.param(n, ParamType::U64)).collect();
    let ph = b.param("h", ParamType::U32);
    let phk = b.param("hk", ParamType::U32);
    let pt = b.param("t", ParamType::U32);
    let ps_ = b.param("scale", ParamType::F32);
    let ptrs = ps.iter().map(|p| b.ld_param_global_ptr(p)).collect();
    let h = b.ld_param(&ph);
    let hk = b.ld_param(&phk);
    let t = b.ld_param(&pt);
    let scale = b.ld_param(&ps_);
    AttnParams { ptrs, h, hk, t, scale }
}

/// A streaming kernel's opening: the builder of kernel `name` for `threads`
/// threads, its parameters (see [`declare`]), the `comment` and the base
/// address of the dynamic shared memory.
pub(super) fn open_kernel(name: &str, threads: u32, names: &[&str], comment: String) -> (KernelBuilder, AttnParams, Reg) {
    let mut b = KernelBuilder::new(name);
    b.max_threads(threads, None);
    let p = declare(&mut b, names);
    b.comment(comment);
    let smem_sym = b.extern_shared("pgc_dyn_smem", 128);
    let smem = b.shared_addr(&smem_sym);
    (b, p, smem)
}

/// The block's grid coordinates (row block, head, batch); `reverse_x` runs
/// the row blocks last to first (the causal ones with the most work first).
pub(super) fn grid_xyz(b: &mut KernelBuilder, reverse_x: bool) -> (Reg, Reg, Reg) {
    let x = b.special(Special::CtaidX);
    let x = if reverse_x {
        let n = b.special(Special::NctaidX);
        let n1 = b.bin(BinOp::Sub, Type::U32, n, 1u32);
        b.bin(BinOp::Sub, Type::U32, n1, x)
    } else {
        x
    };
    (x, b.special(Special::CtaidY), b.special(Special::CtaidZ))
}

/// A block of `rows` query rows (blocks in reverse order): its head `hh`,
/// batch `bb`, the key/value head `kvh` of its group and first row `q0`.
pub(super) struct QueryBlock {
    pub(super) hh: Reg,
    pub(super) bb: Reg,
    pub(super) kvh: Reg,
    pub(super) q0: Reg,
}

pub(super) fn query_block(b: &mut KernelBuilder, p: &AttnParams, rows: u32) -> QueryBlock {
    let (qb, hh, bb) = grid_xyz(b, true);
    let group = b.bin(BinOp::Div, Type::U32, p.h, p.hk);
    let kvh = b.bin(BinOp::Div, Type::U32, hh, group);
    let q0 = b.mul_lo(Type::U32, qb, rows);
    QueryBlock { hh, bb, kvh, q0 }
}

pub(super) const FWD_PARAMS: [&str; 5] = ["q", "k", "v", "o", "lse"];
pub(super) const BWD_PARAMS: [&str; 9] = ["q", "k", "v", "do", "lse", "dsum", "dq", "dk", "dv"];

/// Store `vals` (consecutive columns of one row) as f32 or bf16 at `addr`
/// under `pred`: f32 as `.v2`/`.v4` (or scalars), bf16 as packed pairs.
pub(super) fn store_row_vals(b: &mut KernelBuilder, ty: DType, addr: Addr, vals: &[Reg], pred: Reg) {
    match ty {
        DType::I32 => unreachable!("validate() rejects i32 tensors here"),
        DType::F32 => {
            let ops: Vec<Operand> = vals.iter().map(|&r| r.into()).collect();
            b.guarded(pred, false, |b| b.st_vec(Space::Global, Type::F32, addr, ops));
        }
        DType::Bf16 => {
            assert!(vals.len().is_multiple_of(2));
            let packed: Vec<Operand> = vals.chunks(2).map(|p| b.pack_bf16x2(p[1], p[0]).into()).collect();
            b.guarded(pred, false, |b| b.st_vec(Space::Global, Type::B32, addr, packed));
        }
    }
}


/// Where a forward thread's two rows are: batch, head, the first row
/// (`row_a`; the other is `row_a + 8`), the lane's index in its quad and its
/// first column (`2 * tq`).
pub(super) struct ForwardRows {
    pub(super) bb: Reg,
    pub(super) hh: Reg,
    pub(super) row_a: Reg,
    pub(super) tq: Reg,
    pub(super) col2: Reg,
}

/// The forward's end: `o = acc / l` for the thread's two rows (accumulators
/// in the m16n8 layout, `oacc[nt]` holding columns `8 nt + col2 (+1)`), and
/// `lse = ln2 * (m + log2 l)` from the quad's first lane; `l` the partial row
/// sums (reduced over the quad here), `m` the row maxima in log2 units.
pub(super) fn store_forward(b: &mut KernelBuilder, cfg: &AttnConfig, (o, lse): (Reg, Reg), p: &AttnParams, r: &ForwardRows, (l, m): ([Reg; 2], [Reg; 2]), oacc: &[[Reg; 4]]) {
    let or = head_rows(b, cfg.layout, o, r.bb, r.hh, p.h, p.t, cfg.head_dim, cfg.out.bytes());
    let lse_base = stat_base(b, lse, r.bb, r.hh, p.h, p.t);
    let col_bytes = b.mul_lo(Type::U32, r.col2, cfg.out.bytes());
    let col_bytes = b.cvt(Type::U64, Type::U32, None, col_bytes);
    let first_in_quad = b.setp(Cmp::Eq, Type::U32, r.tq, 0u32);
    for h in 0..2usize {
        let lt = group_reduce(b, l[h], 4, BinOp::Add);
        let inv = b.unary(UnOp::Rcp, Type::F32, lt);
        let row = b.add(Type::U32, r.row_a, 8 * h as u32);
        let ok = b.setp(Cmp::Lt, Type::U32, row, p.t);
        let rowaddr = b.mad_wide_u32(row, or.stride, or.base);
        let rowaddr = b.add_u64(rowaddr, col_bytes);
        for (nt, acc) in oacc.iter().enumerate() {
            let v0 = fmul(b, acc[2 * h], inv);
            let v1 = fmul(b, acc[2 * h + 1], inv);
            let addr = Addr::reg_off(rowaddr, (nt as u32 * 8 * cfg.out.bytes()) as i64);
            store_row_vals(b, cfg.out, addr, &[v0, v1], ok);
        }
        let lg = b.unary(UnOp::Lg2Approx, Type::F32, lt);
        let s2 = fadd(b, m[h], lg);
        let val = fmul(b, s2, LN2);
        let w = b.and_pred(ok, first_in_quad);
        let la = b.mad_wide_u32(row, 4u32, lse_base);
        b.guarded(w, false, |b| b.st(Space::Global, Type::F32, Addr::reg(la), val));
    }
}
