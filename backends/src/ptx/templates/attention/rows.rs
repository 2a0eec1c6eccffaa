//! Row kernels around the attention: `dsum = rowsum(do * o)` (with the
//! zeroing of the bf16 backward's dq accumulator) and the q/k prologue
//! (RMS norm over the head dimension, rotary embedding, `q_gain`) with its
//! backward.

use super::common::*;
use crate::ptx::builder::*;
use crate::ptx::templates::epilogue::DType;
use crate::ptx::templates::gemm::Precision;
use serde::{Deserialize, Serialize};

const THREADS: u32 = 128;

/// Element offset (in elements, `.u32`) of row `(bb, hh, tt)` of a per-head tensor.
fn row_index(b: &mut KernelBuilder, layout: AttnLayout, bb: Reg, hh: Reg, tt: Reg, nh: Reg, t: Reg) -> Reg {
    match layout {
        AttnLayout::Bhtd => {
            let bh = b.mad_lo(Type::U32, bb, nh, hh);
            b.mad_lo(Type::U32, bh, t, tt)
        }
        AttnLayout::Bthd => {
            let bt = b.mad_lo(Type::U32, bb, t, tt);
            b.mad_lo(Type::U32, bt, nh, hh)
        }
    }
}

/// Load `n` (4 or 8) consecutive elements as f32 (zero when `!ok`).
fn load_vals(b: &mut KernelBuilder, ty: DType, addr: Reg, n: u32, ok: Reg) -> Vec<Reg> {
    match ty {
        DType::I32 => unreachable!("validate() rejects i32 tensors here"),
        DType::Bf16 => {
            let w: Vec<Reg> = (0..n / 2).map(|_| b.val(Type::B32, 0u32)).collect();
            b.guarded(ok, false, |b| b.ld_vec(Space::Global, true, Type::B32, &w, Addr::reg(addr)));
            w.iter()
                .flat_map(|&x| {
                    let (lo, hi) = unpack_bf16x2(b, x);
                    [lo, hi]
                })
                .collect()
        }
        DType::F32 => {
            let v: Vec<Reg> = (0..n).map(|_| b.val(Type::F32, 0.0f32)).collect();
            for (i, c) in v.chunks(4).enumerate() {
                b.guarded(ok, false, |b| b.ld_vec(Space::Global, true, Type::F32, c, Addr::reg_off(addr, i as i64 * 16)));
            }
            v
        }
    }
}

/// `dsum[r] = sum_j do[r, j] * o[r, j]` over the `rows = B * H * T` rows;
/// bf16 precision also zeroes `dq` (f32, q's layout). `d / 8` threads per
/// row, 8 elements each.
pub(super) fn dot(cfg: &AttnConfig) -> AttnKernel {
    let d = cfg.head_dim;
    let lanes = d / 8;
    let rpb = THREADS / lanes;
    let zero_dq = cfg.precision == Precision::Bf16;
    let name = format!("attn_dot_{}", cfg.tag());
    let mut b = KernelBuilder::new(&name);
    b.max_threads(THREADS, None);
    let names = ["o", "do", "dsum", "dq"];
    let ps: Vec<Param> = names.iter().map(|n| b.param(n, ParamType::U64)).collect();
    let ph = b.param("h", ParamType::U32);
    let pt = b.param("t", ParamType::U32);
    let pr = b.param("rows", ParamType::U32);
    let ptrs: Vec<Reg> = ps.iter().map(|p| b.ld_param_global_ptr(p)).collect();
    let (o, dout, dsum, dq) = (ptrs[0], ptrs[1], ptrs[2], ptrs[3]);
    let h = b.ld_param(&ph);
    let t = b.ld_param(&pt);
    let rows = b.ld_param(&pr);
    b.comment(format!("{cfg:?}: {lanes} threads per row{}", if zero_dq { ", zeroes dq" } else { "" }));
    let tid = b.special(Special::TidX);
    let li = b.bin(BinOp::And, Type::U32, tid, lanes - 1);
    let rl = b.bin(BinOp::Shr, Type::U32, tid, lanes.trailing_zeros());
    let bx = b.special(Special::CtaidX);
    let r = b.mad_lo(Type::U32, bx, rpb, rl);
    let ok = b.setp(Cmp::Lt, Type::U32, r, rows);
    let tt = b.bin(BinOp::Rem, Type::U32, r, t);
    let bh = b.bin(BinOp::Div, Type::U32, r, t);
    let bb = b.bin(BinOp::Div, Type::U32, bh, h);
    let hh = b.bin(BinOp::Rem, Type::U32, bh, h);
    let ri = row_index(&mut b, cfg.layout, bb, hh, tt, h, t);
    let e0 = b.mul_lo(Type::U32, ri, d);
    let e0 = b.mad_lo(Type::U32, li, 8u32, e0);
    let oa = b.mad_wide_u32(e0, cfg.out.bytes(), o);
    let da = b.mad_wide_u32(e0, cfg.in_type().bytes(), dout);
    let ov = load_vals(&mut b, cfg.out, oa, 8, ok);
    let dv = load_vals(&mut b, cfg.in_type(), da, 8, ok);
    let mut acc = fmul(&mut b, ov[0], dv[0]);
    for i in 1..8 {
        acc = b.fma_f32(ov[i], dv[i], acc);
    }
    let acc = group_reduce(&mut b, acc, lanes, BinOp::Add);
    let first = b.setp(Cmp::Eq, Type::U32, li, 0u32);
    let w = b.and_pred(first, ok);
    let sa = b.mad_wide_u32(r, 4u32, dsum);
    b.guarded(w, false, |b| b.st(Space::Global, Type::F32, Addr::reg(sa), acc));
    if zero_dq {
        let qa = b.mad_wide_u32(e0, 4u32, dq);
        let z = b.val(Type::F32, 0.0f32);
        for i in 0..2 {
            b.guarded(ok, false, |b| b.st_vec(Space::Global, Type::F32, Addr::reg_off(qa, i * 16), vec![z.into(); 4]));
        }
    }
    b.ret();
    AttnKernel { kernel: b.finish(), threads: THREADS, smem_bytes: 0, grid_kind: GridKind::Rows, rows_per_block: rpb }
}

// ---------------------------------------------------------------------------
// The q/k prologue.

/// The q/k prologue: `y = rope(rms_norm(x)) * gain[h]` per row of `d`
/// elements of a per-head tensor `x` (q or k, straight from the projection).
///
/// * `prep(x, y, gain, cos, sin, nh, t, bt, eps)`: `x` and `y` in the
///   precision's element type (`y` is what the attention kernels read: for
///   bf16 the normalized values rounded once), `gain` f32 `[nh]` (ignored
///   when [`QkPrepConfig::gain`] is false), `cos`, `sin` f32 `[T, d / 2]`
///   ([`rope_table`]), `nh` the tensor's head count, `bt = B * T`.
/// * `prep_bwd(x, dy, dx, gain, dgain, cos, sin, nh, t, bt, eps)`: given the
///   gradient `dy` (element type [`QkPrepConfig::dy`]) of `y`, recomputes the
///   forward from `x` in f32 and writes `dx` ([`QkPrepConfig::dx`]) and, with a
///   gain, adds `sum over b, t of dy . rope(rms_norm(x))` into the f32
///   `dgain[h]` (`red.global.add.f32`: zero it first).
///
/// Rotary embedding: with `a = x[j]`, `b = x[j + d/2]` (j < d/2) the output is
/// `(a cos + b sin, -a sin + b cos)` at angle `t * base^(-2j/d)`, taken from
/// the f64-computed table (an f32 angle would be off by `t * ulp`, about 1e-4
/// rad at t = 2047). RMS norm: `x / sqrt(mean(x^2) + eps)`.
///
/// Launch: `[ceil(B * T / rows_per_block), nh, 1]` blocks of 128 threads, `d/2`
/// threads per row (one rotary pair each), 8 rows per thread group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QkPrepConfig {
    pub precision: Precision,
    pub head_dim: u32,
    pub layout: AttnLayout,
    /// Multiply by `gain[h]` (q) or not (k).
    pub gain: bool,
    /// Element type of `dy` in the backward.
    pub dy: DType,
    /// Element type of `dx` in the backward.
    pub dx: DType,
}

impl QkPrepConfig {
    pub fn new(precision: Precision, head_dim: u32, layout: AttnLayout, gain: bool) -> Self {
        QkPrepConfig { precision, head_dim, layout, gain, dy: DType::F32, dx: DType::F32 }
    }
    fn io(&self) -> DType {
        match self.precision {
            Precision::Bf16 => DType::Bf16,
            Precision::F32 => DType::F32,
        }
    }
    /// Name stem of the forward kernel (independent of `dy`, `dx`).
    pub fn fwd_tag(&self) -> String {
        format!(
            "{}_d{}_{}_{}",
            match self.precision {
                Precision::Bf16 => "bf16",
                Precision::F32 => "f32",
            },
            self.head_dim,
            self.layout.tag(),
            if self.gain { "g" } else { "ng" },
        )
    }
    /// Name stem of the backward kernel.
    pub fn tag(&self) -> String {
        let e = |t: DType| match t {
            DType::F32 => "f",
            DType::Bf16 => "h",
            DType::I32 => "i",
        };
        format!("{}_{}{}", self.fwd_tag(), e(self.dy), e(self.dx))
    }
    pub fn validate(&self) -> Result<(), AttnError> {
        if !matches!(self.head_dim, 8 | 16 | 32 | 64) {
            return Err(AttnError(format!("qk prep: head_dim {} is not 8, 16, 32 or 64", self.head_dim)));
        }
        if self.dy == DType::I32 || self.dx == DType::I32 {
            return Err(AttnError("qk prep: gradients are f32 or bf16, not i32".into()));
        }
        Ok(())
    }
}

/// Rows per iteration of a block and iterations per block.
const PREP_ITERS: u32 = 8;

/// `cos` and `sin` tables `[t, d / 2]` (row-major, f32) of the rotary
/// embedding with `inv_freq[j] = base^(-2j/d)`, computed in f64.
pub fn rope_table(t: u32, d: u32, base: f64) -> (Vec<f32>, Vec<f32>) {
    let half = (d / 2) as usize;
    let mut c = Vec::with_capacity(t as usize * half);
    let mut s = Vec::with_capacity(t as usize * half);
    for p in 0..t as usize {
        for j in 0..half {
            let inv = 1.0 / base.powf((2 * j) as f64 / d as f64);
            let a = p as f64 * inv;
            c.push(a.cos() as f32);
            s.push(a.sin() as f32);
        }
    }
    (c, s)
}

/// Per-thread state of one prep row: whether it exists, its element row
/// index, `1/rms`, the normalized pair and the rotary cos/sin.
struct PrepRow {
    valid: Reg,
    ri: Reg,
    r: Reg,
    na: Reg,
    nb: Reg,
    cs: Reg,
    sn: Reg,
}

struct PrepCtx {
    half: u32,
    j: Reg,
    rl: Reg,
    rpp: u32,
    hh: Reg,
    nh: Reg,
    t: Reg,
    bt: Reg,
    eps: Reg,
    cos: Reg,
    sin: Reg,
    bx: Reg,
}

fn load_scalar(b: &mut KernelBuilder, ty: DType, base: Reg, elem: Reg, ok: Reg) -> Reg {
    let a = b.mad_wide_u32(elem, ty.bytes(), base);
    match ty {
        DType::I32 => unreachable!("validate() rejects i32 tensors here"),
        DType::F32 => {
            let x = b.val(Type::F32, 0.0f32);
            b.guarded(ok, false, |b| b.ld_vec(Space::Global, true, Type::F32, &[x], Addr::reg(a)));
            x
        }
        DType::Bf16 => {
            let h = b.val(Type::B16, 0u32);
            b.guarded(ok, false, |b| b.ld_vec(Space::Global, true, Type::B16, &[h], Addr::reg(a)));
            b.cvt(Type::F32, Type::Bf16, None, h)
        }
    }
}

fn store_scalar(b: &mut KernelBuilder, ty: DType, base: Reg, elem: Reg, ok: Reg, v: Reg) {
    let a = b.mad_wide_u32(elem, ty.bytes(), base);
    match ty {
        DType::I32 => unreachable!("validate() rejects i32 tensors here"),
        DType::F32 => b.guarded(ok, false, |b| b.st(Space::Global, Type::F32, Addr::reg(a), v)),
        DType::Bf16 => {
            let h = b.cvt(Type::Bf16, Type::F32, Some(Rnd::Rn), v);
            b.guarded(ok, false, |b| b.st(Space::Global, Type::B16, Addr::reg(a), h));
        }
    }
}

/// Load row `it` of this block's iteration and normalize it.
fn prep_row(b: &mut KernelBuilder, cfg: &QkPrepConfig, cx: &PrepCtx, x: Reg, it: Reg) -> PrepRow {
    let d = cfg.head_dim;
    let base = b.mul_lo(Type::U32, cx.bx, cx.rpp * PREP_ITERS);
    let base = b.mad_lo(Type::U32, it, cx.rpp, base);
    let btr = b.add(Type::U32, base, cx.rl);
    let valid = b.setp(Cmp::Lt, Type::U32, btr, cx.bt);
    let tt = b.bin(BinOp::Rem, Type::U32, btr, cx.t);
    let bb = b.bin(BinOp::Div, Type::U32, btr, cx.t);
    let ri = row_index(b, cfg.layout, bb, cx.hh, tt, cx.nh, cx.t);
    let e = b.mad_lo(Type::U32, ri, d, cx.j);
    let a = load_scalar(b, cfg.io(), x, e, valid);
    let e2 = b.add(Type::U32, e, cx.half);
    let bv = load_scalar(b, cfg.io(), x, e2, valid);
    let ss = fmul(b, a, a);
    let ss = b.fma_f32(bv, bv, ss);
    let ss = group_reduce(b, ss, cx.half, BinOp::Add);
    let ms = b.fma_f32(ss, 1.0f32 / d as f32, cx.eps);
    let sq = b.unary(UnOp::Sqrt, Type::F32, ms);
    let r = b.unary(UnOp::Rcp, Type::F32, sq);
    let na = fmul(b, a, r);
    let nb = fmul(b, bv, r);
    let ci = b.mad_lo(Type::U32, tt, cx.half, cx.j);
    let cs = b.mad_wide_u32(ci, 4u32, cx.cos);
    let sa = b.mad_wide_u32(ci, 4u32, cx.sin);
    let cs = b.ld_global_nc(Type::F32, Addr::reg(cs));
    let sn = b.ld_global_nc(Type::F32, Addr::reg(sa));
    PrepRow { valid, ri, r, na, nb, cs, sn }
}

/// Opens prep kernel `name`: declares its parameters (pointers `names`, then
/// nh, t, bt, eps), the per-thread context and, with `cfg.gain`, loads the
/// head's gain (pointer "gain").
fn prep_begin(name: &str, cfg: &QkPrepConfig, names: &[&str]) -> (KernelBuilder, Vec<Reg>, PrepCtx, Option<Reg>) {
    let mut kb = KernelBuilder::new(name);
    let b = &mut kb;
    b.max_threads(THREADS, None);
    let ps: Vec<Param> = names.iter().map(|n| b.param(n, ParamType::U64)).collect();
    let pnh = b.param("nh", ParamType::U32);
    let pt = b.param("t", ParamType::U32);
    let pbt = b.param("bt", ParamType::U32);
    let peps = b.param("eps", ParamType::F32);
    let ptrs: Vec<Reg> = ps.iter().map(|p| b.ld_param_global_ptr(p)).collect();
    let nh = b.ld_param(&pnh);
    let t = b.ld_param(&pt);
    let bt = b.ld_param(&pbt);
    let eps = b.ld_param(&peps);
    let half = cfg.head_dim / 2;
    let tid = b.special(Special::TidX);
    let j = b.bin(BinOp::And, Type::U32, tid, half - 1);
    let rl = b.bin(BinOp::Shr, Type::U32, tid, half.trailing_zeros());
    let bx = b.special(Special::CtaidX);
    let hh = b.special(Special::CtaidY);
    let cos = ptrs[names.iter().position(|n| *n == "cos").unwrap()];
    let sin = ptrs[names.iter().position(|n| *n == "sin").unwrap()];
    let cx = PrepCtx { half, j, rl, rpp: THREADS / half, hh, nh, t, bt, eps, cos, sin, bx };
    b.comment(format!("{cfg:?}: {} threads per row", cx.half));
    let g = cfg.gain.then(|| {
        let gain = ptrs[names.iter().position(|n| *n == "gain").unwrap()];
        let a = b.mad_wide_u32(cx.hh, 4u32, gain);
        b.ld_global_nc(Type::F32, Addr::reg(a))
    });
    (kb, ptrs, cx, g)
}

/// The rotary rotation of the normalized pair: `(a cos + b sin, -a sin + b cos)`.
fn rotate(b: &mut KernelBuilder, pr: &PrepRow) -> (Reg, Reg) {
    let ac = fmul(b, pr.na, pr.cs);
    let ya = b.fma_f32(pr.nb, pr.sn, ac);
    let bc = fmul(b, pr.nb, pr.cs);
    let nas = fmul(b, pr.na, pr.sn);
    (ya, fsub(b, bc, nas))
}

fn prep_finish(mut b: KernelBuilder, cx: &PrepCtx) -> AttnKernel {
    b.ret();
    AttnKernel { kernel: b.finish(), threads: THREADS, smem_bytes: 0, grid_kind: GridKind::PrepRows, rows_per_block: cx.rpp * PREP_ITERS }
}

/// The forward prep kernel (see [`QkPrepConfig`]).
pub fn emit_qk_prep(cfg: &QkPrepConfig) -> Result<AttnKernel, AttnError> {
    cfg.validate()?;
    let d = cfg.head_dim;
    let names = ["x", "y", "gain", "cos", "sin"];
    let (mut b, ptrs, cx, g) = prep_begin(&format!("qk_prep_{}", cfg.fwd_tag()), cfg, &names);
    let (x, y) = (ptrs[0], ptrs[1]);
    b.for_range(0u32, PREP_ITERS, 1, true, |b, it| {
        let pr = prep_row(b, cfg, &cx, x, it);
        let (mut ya, mut yb) = rotate(b, &pr);
        if let Some(g) = g {
            ya = fmul(b, ya, g);
            yb = fmul(b, yb, g);
        }
        let e = b.mad_lo(Type::U32, pr.ri, d, cx.j);
        store_scalar(b, cfg.io(), y, e, pr.valid, ya);
        let e2 = b.add(Type::U32, e, cx.half);
        store_scalar(b, cfg.io(), y, e2, pr.valid, yb);
    });
    Ok(prep_finish(b, &cx))
}

/// The backward of the prep kernel (see [`QkPrepConfig`]).
pub fn emit_qk_prep_bwd(cfg: &QkPrepConfig) -> Result<AttnKernel, AttnError> {
    cfg.validate()?;
    let d = cfg.head_dim;
    let names = ["x", "dy", "dx", "gain", "dgain", "cos", "sin"];
    let (mut b, ptrs, cx, g) = prep_begin(&format!("qk_prep_bwd_{}", cfg.tag()), cfg, &names);
    let (x, dy, dx, dgain) = (ptrs[0], ptrs[1], ptrs[2], ptrs[4]);
    let gacc = b.val(Type::F32, 0.0f32);
    b.for_range(0u32, PREP_ITERS, 1, true, |b, it| {
        let pr = prep_row(b, cfg, &cx, x, it);
        let e = b.mad_lo(Type::U32, pr.ri, d, cx.j);
        let e2 = b.add(Type::U32, e, cx.half);
        let dya = load_scalar(b, cfg.dy, dy, e, pr.valid);
        let dyb = load_scalar(b, cfg.dy, dy, e2, pr.valid);
        let (dua, dub) = match g {
            Some(g) => {
                // gain gradient: dy . u with u the rotated, normalized row
                let (ua, ub) = rotate(b, &pr);
                b.fma_f32_to(gacc, dya, ua, gacc);
                b.fma_f32_to(gacc, dyb, ub, gacc);
                (fmul(b, dya, g), fmul(b, dyb, g))
            }
            None => (dya, dyb),
        };
        // rotary transpose: (da cos - db sin, da sin + db cos)
        let ac = fmul(b, dua, pr.cs);
        let bs = fmul(b, dub, pr.sn);
        let dna = fsub(b, ac, bs);
        let as_ = fmul(b, dua, pr.sn);
        let dnb = b.fma_f32(dub, pr.cs, as_);
        // rms norm: dx = r (dn - n mean(dn . n))
        let dd = fmul(b, dna, pr.na);
        let dd = b.fma_f32(dnb, pr.nb, dd);
        let dd = group_reduce(b, dd, cx.half, BinOp::Add);
        let mean = fmul(b, dd, 1.0f32 / d as f32);
        let nm = b.unary(UnOp::Neg, Type::F32, mean);
        let xa = b.fma_f32(pr.na, nm, dna);
        let xb = b.fma_f32(pr.nb, nm, dnb);
        let xa = fmul(b, xa, pr.r);
        let xb = fmul(b, xb, pr.r);
        store_scalar(b, cfg.dx, dx, e, pr.valid, xa);
        store_scalar(b, cfg.dx, dx, e2, pr.valid, xb);
    });
    if cfg.gain {
        let s = group_reduce(&mut b, gacc, 32, BinOp::Add);
        let tid = b.special(Special::TidX);
        let lane = b.bin(BinOp::And, Type::U32, tid, 31u32);
        let first = b.setp(Cmp::Eq, Type::U32, lane, 0u32);
        let a = b.mad_wide_u32(cx.hh, 4u32, dgain);
        b.guarded(first, false, |b| b.red_add(Space::Global, Type::F32, Addr::reg(a), s));
    }
    Ok(prep_finish(b, &cx))
}
