//! The record's optimizer step as kernels (TRAINING.md sections 4 to 7):
//! gradient accumulation, the clip norm's sums of squares, AdamW, Muon
//! (momentum, Nesterov, the Newton-Schulz iterations as GEMMs, the update)
//! and the SWA sum. Plan-independent: the trainer's device engine
//! (`pgc_runtime::optim`) owns the buffers and launches these.
//!
//! Every element-wise kernel works on a batch of tensors: a table of
//! [`ENTRY_BYTES`]-byte entries (pointers, sizes and per-tensor scalars, as
//! `.u64` words), one per `%ctaid.y`, and a grid-stride loop of
//! [`THREADS`]-thread blocks over the entry's `n` elements (`.u32`,
//! `n < 2^31`) along `%ctaid.x`; the parameters after `table` are shared by
//! the batch. f32 arithmetic in the order the CPU trainer uses (`mul.rn` then
//! `add`, `div.rn`, `sqrt.rn`), so that `--precision f32` on a device
//! follows the CPU's float32 run up to the order of the sums. Scalars that
//! change per step (learning rates, bias corrections, the clip coefficient)
//! are parameters computed on the host in f64; what is fixed for a run (the
//! Newton-Schulz coefficients, the matrix shapes) is baked into the kernels.
//!
//! | entry | table entry words | shared parameters | effect |
//! |---|---|---|---|
//! | `opt_accum_{f32,bf16}` | `dst, src, n` | `w, add` | `dst = (add ? dst : 0) + w * src` |
//! | `opt_sumsq` | `x, n, out` | | `out[0] += sum x^2` (per-thread partials, warp shuffles, one `red` per warp) |
//! | `opt_adamw` | `p, g, m, v, n` | `gscale, decay, use_decay, b1, b1c, b2, b2c, bias2, eps, step` | decoupled decay, moments, bias-corrected step |
//! | `opt_muon_pre` | `g, buf, d, norm, n, rows, cols, tall` | `gscale, mu, nesterov` | momentum, Nesterov, `d` (transposed when tall), `norm[0] += sum d^2` |
//! | `opt_ns_scale_{f32,bf16}` | `d, x, norm, n` | `eps` | `x = d / (sqrt(norm[0]) + eps)` |
//! | `opt_muon_post_{f32,bf16}` | `p, x, n, rows, cols, tall, scale` | `decay, use_decay, alpha` | `p = p * decay + alpha * (x * scale)` (`x` transposed back when tall) |
//! | `opt_swa` | `s, p, n` | `add` | `s = (add ? s : 0) + p` |
//!
//! The Newton-Schulz GEMMs of an `m x n` working matrix (`m <= n`, the
//! gradient transposed when tall) come from [`ns_gemms`]: `A = X X^T`,
//! `B = b A + c (A A)`, `X' = a X + B X`, each with the GEMM template's
//! pointwise epilogue, in f32 (FFMA) or bf16 (tensor cores, the record's
//! precision).

use super::epilogue::{DType, EpiStep, Epilogue};
use super::gemm::{emit_gemm, GemmConfig, GemmError, GemmKernel, GemmLayout, Precision};
use crate::ptx::builder::*;
use crate::ptx::pointwise::epi::{PwEpilogue, PwStore};
use crate::scalar::expr::{Exprs, Ty};

/// Threads per block of the element-wise kernels.
pub const THREADS: u32 = 256;
/// Most blocks an element-wise launch uses (the grid-stride loop covers the rest).
pub const MAX_BLOCKS: u32 = 1024;

pub const SUMSQ: &str = "opt_sumsq";
pub const ADAMW: &str = "opt_adamw";
pub const MUON_PRE: &str = "opt_muon_pre";
pub const SWA: &str = "opt_swa";

/// `opt_accum_*` for a gradient stored as `src`.
pub fn accum_entry(src: DType) -> &'static str {
    match src {
        DType::Bf16 => "opt_accum_bf16",
        _ => "opt_accum_f32",
    }
}

/// `opt_ns_scale_*` writing the working matrix in `ns`.
pub fn ns_scale_entry(ns: DType) -> &'static str {
    match ns {
        DType::Bf16 => "opt_ns_scale_bf16",
        _ => "opt_ns_scale_f32",
    }
}

/// `opt_muon_post_*` reading the working matrix in `ns`.
pub fn muon_post_entry(ns: DType) -> &'static str {
    match ns {
        DType::Bf16 => "opt_muon_post_bf16",
        _ => "opt_muon_post_f32",
    }
}

/// Blocks along `%ctaid.x` of an element-wise launch whose largest tensor has `n` elements.
pub fn blocks(n: usize) -> u32 {
    (n.div_ceil(THREADS as usize) as u32).clamp(1, MAX_BLOCKS)
}

/// The element-wise kernels (every entry of the table but the GEMMs).
pub fn elementwise_module() -> Module {
    let mut m = Module::new();
    for src in [DType::F32, DType::Bf16] {
        m.push(accum(src));
    }
    m.push(sumsq());
    m.push(adamw());
    m.push(muon_pre());
    for ns in [DType::F32, DType::Bf16] {
        m.push(ns_scale(ns));
        m.push(muon_post(ns));
    }
    m.push(swa());
    m
}

/// Bytes of one tensor's entry in a kernel's table (eight `.u64` words; a
/// `.u32` or `.f32` value in a word's low half).
pub const ENTRY_BYTES: u64 = 64;

struct Kb {
    b: KernelBuilder,
    /// This block's table entry (`table + %ctaid.y * ENTRY_BYTES`).
    entry: Reg,
}

impl Kb {
    /// A kernel over the tensors of its table (parameter `table`, one entry
    /// per `%ctaid.y`); the parameters declared after it are shared.
    fn new(name: &str) -> Kb {
        let mut b = KernelBuilder::new(name);
        b.max_threads(THREADS, None);
        let t = b.param("table", ParamType::U64);
        let table = b.ld_param_global_ptr(&t);
        let y = b.special(Special::CtaidY);
        let entry = b.mad_wide_u32(y, ENTRY_BYTES as u32, table);
        Kb { b, entry }
    }
    /// Word `slot` of the entry: a device pointer.
    fn e_ptr(&mut self, slot: i64) -> Reg {
        let v = self.b.ld(Space::Global, Type::U64, Addr::reg_off(self.entry, 8 * slot));
        let g = self.b.reg(RegClass::B64);
        self.b.push(Inst::CvtaToGlobal { dst: g, src: v });
        g
    }
    /// Word `slot` of the entry: a `.u32`.
    fn e_u32(&mut self, slot: i64) -> Reg {
        self.b.ld(Space::Global, Type::U32, Addr::reg_off(self.entry, 8 * slot))
    }
    /// Word `slot` of the entry: an `.f32`.
    fn e_f32(&mut self, slot: i64) -> Reg {
        self.b.ld(Space::Global, Type::F32, Addr::reg_off(self.entry, 8 * slot))
    }
    /// Word `slot` of the entry as a predicate (`!= 0`).
    fn e_flag(&mut self, slot: i64) -> Reg {
        let v = self.e_u32(slot);
        self.b.setp(Cmp::Ne, Type::U32, v, 0u32)
    }
    fn u32(&mut self, name: &str) -> Reg {
        let p = self.b.param(name, ParamType::U32);
        self.b.ld_param(&p)
    }
    fn f32(&mut self, name: &str) -> Reg {
        let p = self.b.param(name, ParamType::F32);
        self.b.ld_param(&p)
    }
    /// A predicate `flag != 0` of a `.u32` parameter.
    fn flag(&mut self, name: &str) -> Reg {
        let v = self.u32(name);
        self.b.setp(Cmp::Ne, Type::U32, v, 0u32)
    }
    /// `for (i = global thread; i < n; i += grid threads) body(i)`.
    fn grid_stride(&mut self, n: Reg, body: impl FnOnce(&mut KernelBuilder, Reg)) {
        let b = &mut self.b;
        let (cta, ntid, tid, ncta) = (b.special(Special::CtaidX), b.special(Special::NtidX), b.special(Special::TidX), b.special(Special::NctaidX));
        let i = b.mad_lo(Type::U32, cta, ntid, tid);
        let stride = b.mul_lo(Type::U32, ncta, ntid);
        let top = b.new_label();
        let done = b.new_label();
        b.place(top);
        let past = b.setp(Cmp::Ge, Type::U32, i, n);
        b.guarded(past, false, |b| b.bra(done));
        body(b, i);
        b.bin_to(BinOp::Add, Type::U32, i, i, stride);
        b.bra(top);
        b.place(done);
    }
    fn finish(mut self) -> Kernel {
        self.b.ret();
        self.b.finish()
    }
}

fn elem_bytes(d: DType) -> u32 {
    d.bytes()
}

/// Address of element `i` of `base` (elements of `d`).
fn at(b: &mut KernelBuilder, base: Reg, i: Reg, d: DType) -> Addr {
    Addr::reg(b.mad_wide_u32(i, elem_bytes(d), base))
}

/// Load element `i` of `base` (elements of `d`) as f32.
fn load(b: &mut KernelBuilder, d: DType, base: Reg, i: Reg) -> Reg {
    let addr = at(b, base, i, d);
    match d {
        DType::Bf16 => {
            let h = b.ld(Space::Global, Type::B16, addr);
            b.cvt(Type::F32, Type::Bf16, None, h)
        }
        _ => b.ld(Space::Global, Type::F32, addr),
    }
}

/// Store an f32 value as element `i` of `base` in `d` (bf16: rounded to nearest even).
fn store(b: &mut KernelBuilder, d: DType, base: Reg, i: Reg, v: Reg) {
    let addr = at(b, base, i, d);
    match d {
        DType::Bf16 => {
            let h = b.cvt(Type::Bf16, Type::F32, Some(Rnd::Rn), v);
            b.st(Space::Global, Type::B16, addr, h);
        }
        _ => b.st(Space::Global, Type::F32, addr, v),
    }
}

fn mul(b: &mut KernelBuilder, x: impl Into<Operand>, y: impl Into<Operand>) -> Reg {
    b.bin(BinOp::Mul, Type::F32, x, y)
}

fn add(b: &mut KernelBuilder, x: impl Into<Operand>, y: impl Into<Operand>) -> Reg {
    b.bin(BinOp::Add, Type::F32, x, y)
}

/// Sum `acc` over the warp and add it to `out[0]` from lane 0.
fn warp_sum_to(b: &mut KernelBuilder, acc: Reg, out: Reg) {
    let mut s = acc;
    for x in [16, 8, 4, 2, 1] {
        let o = b.shfl_bfly(s, x);
        s = add(b, s, o);
    }
    let lane = b.special(Special::LaneId);
    let lead = b.setp(Cmp::Eq, Type::U32, lane, 0u32);
    b.guarded(lead, false, |b| b.red_add(Space::Global, Type::F32, Addr::reg(out), s));
}

/// The index of element `i` of a `rows x cols` row-major matrix in its
/// transpose (`cols x rows`) when `tall`, else `i`.
fn maybe_transposed(b: &mut KernelBuilder, i: Reg, rows: Reg, cols: Reg, tall: Reg) -> Reg {
    let r = b.bin(BinOp::Div, Type::U32, i, cols);
    let c = b.bin(BinOp::Rem, Type::U32, i, cols);
    let t = b.mad_lo(Type::U32, c, rows, r);
    b.selp(Type::U32, t, i, tall)
}

fn accum(src: DType) -> Kernel {
    let mut k = Kb::new(accum_entry(src));
    let (dst, s, n) = (k.e_ptr(0), k.e_ptr(1), k.e_u32(2));
    let w = k.f32("w");
    let add_p = k.flag("add");
    k.grid_stride(n, |b, i| {
        let g = load(b, src, s, i);
        let a = at(b, dst, i, DType::F32);
        let wg = mul(b, w, g);
        // The first micro-batch overwrites (the buffer may hold anything).
        let old = b.ld(Space::Global, Type::F32, a.clone());
        let sum = add(b, old, wg);
        let v = b.selp(Type::F32, sum, wg, add_p);
        b.st(Space::Global, Type::F32, a, v);
    });
    k.finish()
}

fn sumsq() -> Kernel {
    let mut k = Kb::new(SUMSQ);
    let (x, n, out) = (k.e_ptr(0), k.e_u32(1), k.e_ptr(2));
    let acc = k.b.val(Type::F32, 0.0f32);
    k.grid_stride(n, |b, i| {
        let v = load(b, DType::F32, x, i);
        let sq = mul(b, v, v);
        b.bin_to(BinOp::Add, Type::F32, acc, acc, sq);
    });
    warp_sum_to(&mut k.b, acc, out);
    k.finish()
}

fn adamw() -> Kernel {
    let mut k = Kb::new(ADAMW);
    let (p, g, m, v, n) = (k.e_ptr(0), k.e_ptr(1), k.e_ptr(2), k.e_ptr(3), k.e_u32(4));
    let gscale = k.f32("gscale");
    let decay = k.f32("decay");
    let use_decay = k.flag("use_decay");
    let (b1, b1c, b2, b2c) = (k.f32("b1"), k.f32("b1c"), k.f32("b2"), k.f32("b2c"));
    let (bias2, eps, step) = (k.f32("bias2"), k.f32("eps"), k.f32("step"));
    k.grid_stride(n, |b, i| {
        let (pa, ga, ma, va) = (at(b, p, i, DType::F32), at(b, g, i, DType::F32), at(b, m, i, DType::F32), at(b, v, i, DType::F32));
        let g0 = b.ld(Space::Global, Type::F32, ga);
        let gv = mul(b, g0, gscale);
        let p0 = b.ld(Space::Global, Type::F32, pa.clone());
        let pd = mul(b, p0, decay);
        let p1 = b.selp(Type::F32, pd, p0, use_decay);
        // exp_avg = exp_avg * b1 + g * (1 - b1)
        let m0 = b.ld(Space::Global, Type::F32, ma.clone());
        let t1 = mul(b, m0, b1);
        let t2 = mul(b, gv, b1c);
        let m1 = add(b, t1, t2);
        // exp_avg_sq = exp_avg_sq * b2 + (1 - b2) * g * g
        let v0 = b.ld(Space::Global, Type::F32, va.clone());
        let t3 = mul(b, v0, b2);
        let t4 = mul(b, b2c, gv);
        let t5 = mul(b, t4, gv);
        let v1 = add(b, t3, t5);
        // p += step * (exp_avg / (sqrt(exp_avg_sq) / bias2 + eps))
        let sq = b.unary(UnOp::Sqrt, Type::F32, v1);
        let q = b.bin(BinOp::Div, Type::F32, sq, bias2);
        let den = add(b, q, eps);
        let r = b.bin(BinOp::Div, Type::F32, m1, den);
        let u = mul(b, step, r);
        let p2 = add(b, p1, u);
        b.st(Space::Global, Type::F32, ma, m1);
        b.st(Space::Global, Type::F32, va, v1);
        b.st(Space::Global, Type::F32, pa, p2);
    });
    k.finish()
}

fn muon_pre() -> Kernel {
    let mut k = Kb::new(MUON_PRE);
    let (g, buf, d, norm) = (k.e_ptr(0), k.e_ptr(1), k.e_ptr(2), k.e_ptr(3));
    let (n, rows, cols, tall) = (k.e_u32(4), k.e_u32(5), k.e_u32(6), k.e_flag(7));
    let gscale = k.f32("gscale");
    let mu = k.f32("mu");
    let nesterov = k.flag("nesterov");
    let acc = k.b.val(Type::F32, 0.0f32);
    k.grid_stride(n, |b, i| {
        let g0 = load(b, DType::F32, g, i);
        let x = mul(b, g0, gscale);
        let ba = at(b, buf, i, DType::F32);
        let b0 = b.ld(Space::Global, Type::F32, ba.clone());
        let t = mul(b, b0, mu);
        let b1 = add(b, t, x);
        b.st(Space::Global, Type::F32, ba, b1);
        let mb = mul(b, mu, b1);
        let nv = add(b, x, mb);
        let dv = b.selp(Type::F32, nv, b1, nesterov);
        let j = maybe_transposed(b, i, rows, cols, tall);
        let da = at(b, d, j, DType::F32);
        b.st(Space::Global, Type::F32, da, dv);
        let sq = mul(b, dv, dv);
        b.bin_to(BinOp::Add, Type::F32, acc, acc, sq);
    });
    warp_sum_to(&mut k.b, acc, norm);
    k.finish()
}

fn ns_scale(ns: DType) -> Kernel {
    let mut k = Kb::new(ns_scale_entry(ns));
    let (d, x, norm, n) = (k.e_ptr(0), k.e_ptr(1), k.e_ptr(2), k.e_u32(3));
    let eps = k.f32("eps");
    let s = k.b.ld(Space::Global, Type::F32, Addr::reg(norm));
    let r = k.b.unary(UnOp::Sqrt, Type::F32, s);
    let den = add(&mut k.b, r, eps);
    k.grid_stride(n, |b, i| {
        let v = load(b, DType::F32, d, i);
        let q = b.bin(BinOp::Div, Type::F32, v, den);
        store(b, ns, x, i, q);
    });
    k.finish()
}

fn muon_post(ns: DType) -> Kernel {
    let mut k = Kb::new(muon_post_entry(ns));
    let (p, x) = (k.e_ptr(0), k.e_ptr(1));
    let (n, rows, cols, tall, scale) = (k.e_u32(2), k.e_u32(3), k.e_u32(4), k.e_flag(5), k.e_f32(6));
    let decay = k.f32("decay");
    let use_decay = k.flag("use_decay");
    let alpha = k.f32("alpha");
    k.grid_stride(n, |b, i| {
        let j = maybe_transposed(b, i, rows, cols, tall);
        let u = load(b, ns, x, j);
        let pa = at(b, p, i, DType::F32);
        let p0 = b.ld(Space::Global, Type::F32, pa.clone());
        let pd = mul(b, p0, decay);
        let p1 = b.selp(Type::F32, pd, p0, use_decay);
        let us = mul(b, u, scale);
        let step = mul(b, alpha, us);
        let p2 = add(b, p1, step);
        b.st(Space::Global, Type::F32, pa, p2);
    });
    k.finish()
}

fn swa() -> Kernel {
    let mut k = Kb::new(SWA);
    let (s, p, n) = (k.e_ptr(0), k.e_ptr(1), k.e_u32(2));
    let add_p = k.flag("add");
    k.grid_stride(n, |b, i| {
        let sa = at(b, s, i, DType::F32);
        let pv = load(b, DType::F32, p, i);
        let old = b.ld(Space::Global, Type::F32, sa.clone());
        let sum = add(b, old, pv);
        let v = b.selp(Type::F32, sum, pv, add_p);
        b.st(Space::Global, Type::F32, sa, v);
    });
    k.finish()
}

/// The three GEMMs of one Newton-Schulz iteration on an `m x n` working
/// matrix `X` (`m <= n`) stored in `ns`:
/// * `gram`: `A = X X^T` (`[m, m]`; parameters `a = X, b = X, c = A`);
/// * `poly`: `B = b A + c (A A)` (`a = A, b = A, c` unused, then the
///   epilogue's `A` and `B`);
/// * `update`: `X' = a X + B X` (`a = B, b = X, c` unused, then `X` and `X'`).
///
/// Sizes are `(m, m, n)`, `(m, m, m)` and `(m, n, m)`; then the batch
/// strides of `a, b, c` and of the epilogue's buffers.
pub struct NsGemms {
    pub gram: GemmKernel,
    pub poly: GemmKernel,
    pub update: GemmKernel,
}

/// `out[row, col] = k_load * load[row, col] + k_acc * acc` over an `[m, n]` output, both in `dt`.
fn axpy_epilogue(m: u32, n: u32, dt: DType, k_load: f64, k_acc: f64) -> Epilogue {
    let mut x = Exprs::new();
    let row = x.var(Ty::U32, m as u64, "row");
    let col = x.var(Ty::U32, n as u64, "col");
    let acc = x.var(Ty::Float, 0, "acc");
    let src = x.buf(dt);
    let dst = x.buf(dt);
    let (r, c) = (x.var_e(row), x.var_e(col));
    let idx = x.linear(&[m as usize, n as usize], &[r, c]);
    let l = x.load(src, idx);
    let kl = x.float_c(k_load);
    let ka = x.float_c(k_acc);
    let a = x.var_e(acc);
    let t1 = x.fmul(kl, l);
    let t2 = x.fmul(ka, a);
    let value = x.fadd(t1, t2);
    let pw = PwEpilogue { exprs: x, row, col, acc, params: vec!["src".into(), "dst".into()], stores: vec![PwStore { buf: dst, index: idx, value }], row_sums: vec![] };
    Epilogue { steps: vec![EpiStep::Pointwise(Box::new(pw))], out: dt }
}

/// The Newton-Schulz GEMMs for an `m x n` working matrix in `ns` (f32:
/// FFMA; bf16: tensor cores with f32 accumulation), coefficients `(a, b, c)`,
/// batched over `grid.z` (every matrix of one working shape in one launch;
/// the byte strides follow the parameters, see `GemmConfig::batched`).
pub fn ns_gemms(m: u32, n: u32, ns: DType, coeffs: [f64; 3]) -> Result<NsGemms, GemmError> {
    let precision = if ns == DType::Bf16 { Precision::Bf16 } else { Precision::F32 };
    let named = |c: GemmConfig, what: &str| {
        let mut c = c.with_batch();
        c.name = format!("opt_ns_{what}_{}_{m}x{n}", if ns == DType::Bf16 { "bf16" } else { "f32" });
        c
    };
    let gram = GemmConfig::new(precision, GemmLayout::LINEAR, m, m, n, Epilogue::store(ns));
    let poly = GemmConfig::new(precision, GemmLayout::INPUT_GRAD, m, m, m, axpy_epilogue(m, m, ns, coeffs[1], coeffs[2]));
    let update = GemmConfig::new(precision, GemmLayout::INPUT_GRAD, m, n, m, axpy_epilogue(m, n, ns, coeffs[0], 1.0));
    Ok(NsGemms { gram: emit_gemm(&named(gram, "gram"))?, poly: emit_gemm(&named(poly, "poly"))?, update: emit_gemm(&named(update, "update"))? })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_optimizer_kernels_assemble_for_sm_90a() {
        let mut m = super::elementwise_module();
        for (r, c, ns) in [(8, 24, super::DType::F32), (64, 96, super::DType::Bf16), (5, 7, super::DType::Bf16)] {
            let g = super::ns_gemms(r, c, ns, [3.4445, -4.7750, 2.0315]).expect("valid GEMMs");
            for k in [g.gram, g.poly, g.update] {
                m.push(k.kernel);
            }
        }
        // Skipped (with a note) where ptxas is not installed; scripts/test installs it.
        if let Some(r) = crate::ptx::ptxas::assemble_or_skip(&m.render(), "optimizer kernels") {
            assert_eq!(r.kernels.len(), 19, "{r:?}");
        }
    }
}
