//! AST -> compact pre-decoded kernels.
//!
//! Every operand becomes an index into one of three per-warp register files
//! (32-bit, 64-bit, predicate). Immediates and special registers are turned
//! into constant registers filled when a warp starts, so the interpreter never
//! looks at an operand kind at run time. Labels become instruction indices and
//! every branch carries its reconvergence point (immediate post-dominator).
#![allow(clippy::needless_range_loop, clippy::collapsible_if, clippy::collapsible_match, clippy::too_many_arguments)]

use super::num::Rnd;
use super::parse::{AddrBase, Entry, Imm, Instr, Module, Operand, ParseError, Span, StateSpace, Stmt, VarDecl};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    B8,
    B16,
    B32,
    B64,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F16,
    F16x2,
    BF16,
    BF16x2,
    F32,
    F64,
    Pred,
}

impl Ty {
    pub fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "b8" => Ty::B8,
            "b16" => Ty::B16,
            "b32" => Ty::B32,
            "b64" => Ty::B64,
            "u8" => Ty::U8,
            "u16" => Ty::U16,
            "u32" => Ty::U32,
            "u64" => Ty::U64,
            "s8" => Ty::S8,
            "s16" => Ty::S16,
            "s32" => Ty::S32,
            "s64" => Ty::S64,
            "f16" => Ty::F16,
            "f16x2" => Ty::F16x2,
            "bf16" => Ty::BF16,
            "bf16x2" => Ty::BF16x2,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "pred" => Ty::Pred,
            _ => return None,
        })
    }
    pub fn bytes(self) -> u32 {
        match self {
            Ty::B8 | Ty::U8 | Ty::S8 => 1,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::F16 | Ty::BF16 => 2,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 | Ty::F16x2 | Ty::BF16x2 => 4,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 8,
            Ty::Pred => 1,
        }
    }
    pub fn signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }
    pub fn is_float(self) -> bool {
        matches!(self, Ty::F16 | Ty::F16x2 | Ty::BF16 | Ty::BF16x2 | Ty::F32 | Ty::F64)
    }
    pub fn is_int(self) -> bool {
        !self.is_float() && self != Ty::Pred
    }
    fn class(self) -> Class {
        match self {
            Ty::Pred => Class::P,
            t if t.bytes() == 8 => Class::R64,
            _ => Class::R32,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    R32,
    R64,
    P,
}

/// A register-file operand: index into the 32-bit or 64-bit file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    R32(u32),
    R64(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Global,
    Shared,
    Local,
    Param,
    Generic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    None,
    R32(u32),
    R64(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    pub base: Base,
    pub off: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IOp {
    Add,
    Sub,
    MulLo,
    MulHiU,
    MulHiS,
    MinU,
    MinS,
    MaxU,
    MaxS,
    And,
    Or,
    Xor,
    Shl,
    ShrU,
    ShrS,
    DivU,
    DivS,
    RemU,
    RemS,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IUop {
    Not,
    Neg,
    AbsS,
    Popc,
    Clz,
    Brev,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FOp {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FUop {
    Neg,
    Abs,
    Rcp,
    Sqrt,
    Rsqrt,
    Ex2,
    Lg2,
    Tanh,
    Sin,
    Cos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HOp {
    Add,
    Sub,
    Mul,
    Fma,
    Min,
    Max,
    Neg,
    Abs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Lo,
    Ls,
    Hi,
    Hs,
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoolOp {
    And,
    Or,
    Xor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteMode {
    All,
    Any,
    Uni,
    Ballot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomOp {
    Add,
    Min,
    Max,
    Exch,
    Cas,
    And,
    Or,
    Xor,
    Inc,
    Dec,
}

/// Float flags: `.ftz`, `.sat`.
pub const FTZ: u8 = 1;
pub const SAT: u8 = 2;

#[derive(Debug, Clone, PartialEq)]
pub enum Inst {
    I32 { op: IOp, d: u32, a: u32, b: u32, w16: bool },
    I64 { op: IOp, d: u32, a: u32, b: u32 },
    /// 64-bit shift, shift amount from the 32-bit file
    Sh64 { op: IOp, d: u32, a: u32, b: u32 },
    IU32 { op: IUop, d: u32, a: u32 },
    IU64 { op: IUop, d: u32, a: u32 },
    /// mad.lo / mad.hi (.u32/.s32): d = lo/hi(a*b) + c
    Mad32 { hi: Option<bool>, d: u32, a: u32, b: u32, c: u32 },
    Mad64 { d: u32, a: u32, b: u32, c: u32 },
    /// mul.wide / mad.wide: 32x32 -> 64 (+ c from the 64-bit file)
    MulWide { signed: bool, d: u32, a: u32, b: u32, c: Option<u32> },
    /// mul.wide .u16/.s16 -> 32
    MulWide16 { signed: bool, d: u32, a: u32, b: u32 },
    F32 { op: FOp, d: u32, a: u32, b: u32, fl: u8 },
    Fma32 { d: u32, a: u32, b: u32, c: u32, fl: u8 },
    FU32 { op: FUop, d: u32, a: u32, fl: u8 },
    F64 { op: FOp, d: u32, a: u32, b: u32 },
    Fma64 { d: u32, a: u32, b: u32, c: u32 },
    FU64 { op: FUop, d: u32, a: u32 },
    /// f16/bf16 scalar or x2 arithmetic (32-bit file), computed exactly and rounded once (rn)
    Half { op: HOp, bf: bool, x2: bool, d: u32, a: u32, b: u32, c: u32 },
    Setp { cmp: Cmp, ty: Ty, d: u32, dn: Option<u32>, a: Reg, b: Reg, comb: Option<(BoolOp, u32, bool)> },
    PredOp { op: BoolOp, d: u32, a: u32, an: bool, b: u32, bn: bool },
    PredNot { d: u32, a: u32 },
    PredMov { d: u32, a: u32 },
    Selp { d: Reg, a: Reg, b: Reg, p: u32, pn: bool },
    Cvt { d: Reg, a: Reg, from: Ty, to: Ty, rnd: Rnd, int_rnd: bool, sat: bool, ftz: bool, relu: bool, satfinite: bool },
    CvtPack { d: u32, a: u32, b: u32, bf: bool, rnd: Rnd, relu: bool, satfinite: bool },
    Mov32 { d: u32, a: u32 },
    Mov64 { d: u32, a: u32 },
    /// set predicate from/to an integer (not in PTX; used for `mov.pred p, 1`)
    PredSet { d: u32, v: bool },
    /// `mov.b32 d, {h0, h1}` (16-bit parts) / `mov.b64 d, {r0, r1}` (32-bit parts)
    Pack { d: Reg, parts: Vec<u32>, bits: u32 },
    /// `mov.b32 {h0, h1}, a` / `mov.b64 {r0, r1}, a`
    Unpack { a: Reg, parts: Vec<Option<u32>>, bits: u32 },
    Ld { space: Space, ty: Ty, d: Vec<Option<Reg>>, addr: Addr },
    St { space: Space, ty: Ty, s: Vec<Reg>, addr: Addr },
    Atom { space: Space, op: AtomOp, ty: Ty, d: Option<u32>, addr: Addr, b: u32, c: Option<u32> },
    Bra { target: u32, uni: bool },
    Exit,
    Bar { arrive: bool, id: u32, count: Option<u32> },
    BarWarp { mask: u32 },
    Nop,
    Shfl { mode: ShflMode, d: u32, p: Option<u32>, a: u32, b: u32, c: u32, mask: u32 },
    Vote { mode: VoteMode, d: Reg, dp: u32, a: u32, an: bool, mask: u32 },
    Activemask { d: u32 },
    CpAsync { bytes: u32, dst: Addr, src: Addr, src_size: Option<u32> },
    CpCommit,
    CpWait { n: u32 },
    Ldmatrix { num: u32, trans: bool, d: [u32; 4], addr: Addr },
    Mma { bf: bool, d: [u32; 4], a: [u32; 4], b: [u32; 2], c: [u32; 4] },
    Cvta { to: bool, space: Space, d: Reg, a: Reg },
    Prmt { d: u32, a: u32, b: u32, c: u32 },
    Lop3 { d: u32, a: u32, b: u32, c: u32, lut: u8 },
    // ---- Hopper: mbarriers, TMA, the async proxy, wgmma (see hopper.rs)
    /// `mbarrier.init.shared.b64 [a], count`
    MbarInit { addr: Addr, count: u32 },
    /// `mbarrier.arrive{.expect_tx}.shared.b64 state|_, [a]{, tx}` (`arrive`)
    /// and `mbarrier.expect_tx.shared.b64 [a], tx` (not `arrive`)
    MbarArrive { addr: Addr, tx: Option<u32>, arrive: bool, state: Option<u32> },
    /// `mbarrier.{try,test}_wait.parity.shared.b64 p, [a], parity`
    MbarWait { p: u32, addr: Addr, parity: u32 },
    /// `cp.async.bulk.tensor.Nd.shared::cluster.global.tile.mbarrier::complete_tx::bytes [dst], [map, {c..}], [mbar]`
    /// (`map` a 64-bit register)
    TmaLoad { dst: Addr, map: u32, coords: Vec<u32>, mbar: Addr },
    /// `cp.async.bulk.tensor.Nd.global.shared::cta.tile.bulk_group [map, {c..}], [src]`
    TmaStore { map: u32, coords: Vec<u32>, src: Addr },
    /// `cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [dst], [src], bytes`
    BulkReduceAdd { dst: Addr, src: Addr, bytes: u32 },
    BulkCommit,
    /// `cp.async.bulk.wait_group{.read} n`
    BulkWait { n: u32, read: bool },
    /// `fence.proxy.async{.shared::cta}`
    FenceProxyAsync,
    WgFence,
    WgCommit,
    WgWait { n: u32 },
    /// `wgmma.mma_async.sync.aligned.m64nNk16.f32.{bf16,f16}.{bf16,f16}`
    Wgmma { n: u32, bf: bool, d: Vec<u32>, a: WgA, b: u32, scale_d: (u32, bool), neg_a: bool, neg_b: bool, trans_a: bool, trans_b: bool },
    /// `elect.sync d|p, membermask` (`d` may be `_`)
    Elect { d: Option<u32>, p: u32, mask: u32 },
    /// `setmaxnreg.{inc,dec}.sync.aligned.u32 n`
    Setmaxnreg { n: u32 },
    /// `stmatrix.sync.aligned.m8n8.x{1,2,4}{.trans}.shared.b16 [a], {r..}`
    Stmatrix { num: u32, trans: bool, s: [u32; 4], addr: Addr },
}

/// The A operand of a wgmma: a shared-memory descriptor (64-bit register)
/// or four 32-bit registers of bf16x2 pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WgA {
    Desc(u32),
    Regs([u32; 4]),
}

impl Inst {
    /// Whether this is one of the warpgroup-collective `wgmma.*` instructions.
    pub fn is_warpgroup(&self) -> bool {
        matches!(self, Inst::WgFence | Inst::WgCommit | Inst::WgWait { .. } | Inst::Wgmma { .. })
    }

    /// Calls `f` with every 32-bit register the instruction reads or writes
    /// (for the wgmma register checks; constants are registers too, harmless).
    pub fn regs32(&self, f: &mut dyn FnMut(u32)) {
        let reg = |r: &Reg, f: &mut dyn FnMut(u32)| {
            if let Reg::R32(x) = r {
                f(*x)
            }
        };
        let addr = |a: &Addr, f: &mut dyn FnMut(u32)| {
            if let Base::R32(x) = a.base {
                f(x)
            }
        };
        match self {
            Inst::I32 { d, a, b, .. } | Inst::F32 { d, a, b, .. } | Inst::Half { d, a, b, .. } => {
                for x in [d, a, b] {
                    f(*x)
                }
                if let Inst::Half { c, .. } = self {
                    f(*c)
                }
            }
            Inst::Sh64 { b, .. } => f(*b),
            Inst::IU32 { d, a, .. } | Inst::FU32 { d, a, .. } | Inst::Mov32 { d, a } => {
                f(*d);
                f(*a)
            }
            Inst::Mad32 { d, a, b, c, .. } | Inst::Fma32 { d, a, b, c, .. } | Inst::Prmt { d, a, b, c } | Inst::Lop3 { d, a, b, c, .. } => {
                for x in [d, a, b, c] {
                    f(*x)
                }
            }
            Inst::MulWide { a, b, .. } => {
                f(*a);
                f(*b)
            }
            Inst::MulWide16 { d, a, b, .. } | Inst::CvtPack { d, a, b, .. } => {
                for x in [d, a, b] {
                    f(*x)
                }
            }
            Inst::Setp { a, b, .. } => {
                reg(a, f);
                reg(b, f)
            }
            Inst::Selp { d, a, b, .. } => {
                for r in [d, a, b] {
                    reg(r, f)
                }
            }
            Inst::Cvt { d, a, .. } | Inst::Cvta { d, a, .. } => {
                reg(d, f);
                reg(a, f)
            }
            Inst::Pack { d, parts, .. } => {
                reg(d, f);
                parts.iter().for_each(|p| f(*p))
            }
            Inst::Unpack { a, parts, .. } => {
                reg(a, f);
                parts.iter().flatten().for_each(|p| f(*p))
            }
            Inst::Ld { d, addr: a, .. } => {
                d.iter().flatten().for_each(|r| reg(r, f));
                addr(a, f)
            }
            Inst::St { s, addr: a, .. } => {
                s.iter().for_each(|r| reg(r, f));
                addr(a, f)
            }
            Inst::Atom { d, addr: a, b, c, .. } => {
                d.iter().for_each(|x| f(*x));
                f(*b);
                c.iter().for_each(|x| f(*x));
                addr(a, f)
            }
            Inst::Shfl { d, a, b, c, mask, .. } => {
                for x in [d, a, b, c, mask] {
                    f(*x)
                }
            }
            Inst::Vote { d, mask, .. } => {
                reg(d, f);
                f(*mask)
            }
            Inst::Activemask { d } => f(*d),
            Inst::BarWarp { mask } => f(*mask),
            Inst::Bar { id, count, .. } => {
                f(*id);
                count.iter().for_each(|x| f(*x))
            }
            Inst::CpAsync { dst, src, src_size, .. } => {
                addr(dst, f);
                addr(src, f);
                src_size.iter().for_each(|x| f(*x))
            }
            Inst::Ldmatrix { num, d, addr: a, .. } => {
                d[..*num as usize].iter().for_each(|x| f(*x));
                addr(a, f)
            }
            Inst::Stmatrix { num, s, addr: a, .. } => {
                s[..*num as usize].iter().for_each(|x| f(*x));
                addr(a, f)
            }
            Inst::Mma { d, a, b, c, .. } => {
                d.iter().chain(a).chain(b).chain(c).for_each(|x| f(*x))
            }
            Inst::MbarInit { addr: a, count } => {
                addr(a, f);
                f(*count)
            }
            Inst::MbarArrive { addr: a, tx, .. } => {
                addr(a, f);
                tx.iter().for_each(|x| f(*x))
            }
            Inst::MbarWait { addr: a, parity, .. } => {
                addr(a, f);
                f(*parity)
            }
            Inst::TmaLoad { dst, coords, mbar, .. } => {
                addr(dst, f);
                addr(mbar, f);
                coords.iter().for_each(|x| f(*x))
            }
            Inst::TmaStore { coords, src, .. } => {
                addr(src, f);
                coords.iter().for_each(|x| f(*x))
            }
            Inst::BulkReduceAdd { dst, src, bytes } => {
                addr(dst, f);
                addr(src, f);
                f(*bytes)
            }
            Inst::Elect { d, mask, .. } => {
                d.iter().for_each(|x| f(*x));
                f(*mask)
            }
            Inst::I64 { .. }
            | Inst::IU64 { .. }
            | Inst::Mad64 { .. }
            | Inst::F64 { .. }
            | Inst::Fma64 { .. }
            | Inst::FU64 { .. }
            | Inst::PredOp { .. }
            | Inst::PredNot { .. }
            | Inst::PredMov { .. }
            | Inst::Mov64 { .. }
            | Inst::PredSet { .. }
            | Inst::Bra { .. }
            | Inst::Exit
            | Inst::Nop
            | Inst::CpCommit
            | Inst::CpWait { .. }
            | Inst::BulkCommit
            | Inst::BulkWait { .. }
            | Inst::FenceProxyAsync
            | Inst::Setmaxnreg { .. }
            | Inst::WgFence
            | Inst::WgCommit
            | Inst::WgWait { .. }
            | Inst::Wgmma { .. } => {}
        }
    }
}

impl Inst {
    pub fn is_branch(&self) -> bool {
        matches!(self, Inst::Bra { .. })
    }
}

/// A decoded instruction with its guard and source line.
#[derive(Debug, Clone)]
pub struct DInst {
    pub inst: Inst,
    /// predicate register index, or u32::MAX for none
    pub guard: u32,
    pub guard_neg: bool,
    pub line: u32,
    /// for branches: reconvergence pc (immediate post-dominator), RECONV_NONE if none
    pub reconv: u32,
}

pub const RECONV_NONE: u32 = u32::MAX;
pub const NO_GUARD: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    Tid(u8),
    Ntid(u8),
    Ctaid(u8),
    Nctaid(u8),
    Laneid,
    Warpid,
    Nwarpid,
    LanemaskEq,
    LanemaskLt,
    LanemaskLe,
    LanemaskGt,
    LanemaskGe,
}

#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub offset: u32,
    pub size: u32,
    pub ty: Ty,
}

#[derive(Debug, Clone)]
pub struct Kernel {
    pub name: String,
    pub insts: Vec<DInst>,
    pub n32: u32,
    pub n64: u32,
    pub np: u32,
    /// constant registers: (index, value broadcast to every lane)
    pub const32: Vec<(u32, u32)>,
    pub const64: Vec<(u32, u64)>,
    pub specials: Vec<(u32, Special)>,
    pub params: Vec<Param>,
    pub param_bytes: u32,
    /// bytes of static shared memory (dynamic shared starts at `dyn_shared_offset`)
    pub static_shared: u32,
    pub dyn_shared_offset: u32,
    pub local_bytes: u32,
    /// uses mbarriers, TMA or wgmma (turns on the async-proxy bookkeeping)
    pub hopper: bool,
    /// uses wgmma (turns on the per-instruction accumulator checks)
    pub wgmma: bool,
}

/// Module-scope `.global` variables, allocated by the device at load time.
#[derive(Debug, Clone)]
pub struct GlobalVar {
    pub name: String,
    pub size: u64,
    pub align: u32,
    pub init: Vec<u8>,
    pub span: Span,
}

pub type DResult<T> = Result<T, ParseError>;

fn derr<T>(span: Span, msg: impl Into<String>) -> DResult<T> {
    Err(ParseError { span, msg: msg.into() })
}

/// `r`'s number when it is 64-bit (`wide`) or 32-bit (not), else "expected a
/// N-bit `what`" at `span`.
fn of_width(r: Reg, wide: bool, span: Span, what: &str) -> DResult<u32> {
    match (r, wide) {
        (Reg::R32(r), false) | (Reg::R64(r), true) => Ok(r),
        _ => derr(span, format!("expected a {}-bit {what}", if wide { 64 } else { 32 })),
    }
}

fn elem_bytes(ty: &str, span: Span) -> DResult<u32> {
    match Ty::parse(ty) {
        Some(Ty::Pred) | None => derr(span, format!("unsupported variable type .{ty}")),
        Some(t) => Ok(t.bytes()),
    }
}

fn var_size(v: &VarDecl) -> DResult<Option<u64>> {
    let eb = elem_bytes(&v.ty, v.span)? as u64;
    let mut n: u64 = 1;
    for d in &v.dims {
        match d {
            Some(k) => n = n.checked_mul(*k).ok_or(ParseError { span: v.span, msg: "array too large".into() })?,
            None => return Ok(None),
        }
    }
    let s = n.checked_mul(eb).ok_or(ParseError { span: v.span, msg: "array too large".into() })?;
    if s > 1 << 40 {
        return derr(v.span, "array too large");
    }
    Ok(Some(s))
}

fn imm_bytes(init: &[Imm], ty: Ty, span: Span) -> DResult<Vec<u8>> {
    let mut out = Vec::new();
    for i in init {
        let bits: u64 = match (i, ty.is_float()) {
            (Imm::Int(v), false) => *v as u64,
            (Imm::F32Bits(b), true) if ty == Ty::F32 => *b as u64,
            (Imm::F64Bits(b), true) if ty == Ty::F64 => *b,
            (Imm::Float(f), true) if ty == Ty::F32 => (*f as f32).to_bits() as u64,
            (Imm::Float(f), true) if ty == Ty::F64 => f.to_bits(),
            _ => return derr(span, "unsupported initializer"),
        };
        out.extend_from_slice(&bits.to_le_bytes()[..ty.bytes() as usize]);
    }
    Ok(out)
}

/// Collect module-scope `.global` variables (the device allocates them).
pub fn module_globals(m: &Module) -> DResult<Vec<GlobalVar>> {
    let mut out = Vec::new();
    for v in &m.globals {
        if v.space != StateSpace::Global {
            continue;
        }
        let Some(size) = var_size(v)? else {
            return derr(v.span, "a .global variable needs a size");
        };
        let ty = Ty::parse(&v.ty).ok_or(ParseError { span: v.span, msg: format!("bad type .{}", v.ty) })?;
        let mut init = imm_bytes(&v.init, ty, v.span)?;
        if init.len() as u64 > size {
            return derr(v.span, "initializer larger than the variable");
        }
        init.resize(size as usize, 0);
        out.push(GlobalVar { name: v.name.clone(), size, align: v.align.unwrap_or(ty.bytes()).max(1), init, span: v.span });
    }
    Ok(out)
}

#[derive(Clone, Copy)]
enum Sym {
    Reg(Class, u32),
    Shared(u32),
    Local(u32),
    Param(u32),
    Global(u64),
}

struct Dec<'a> {
    syms: HashMap<String, Sym>,
    n32: u32,
    n64: u32,
    np: u32,
    c32: HashMap<u32, u32>,
    c64: HashMap<u64, u32>,
    specials: HashMap<String, u32>,
    special_list: Vec<(u32, Special)>,
    labels: HashMap<String, u32>,
    globals: &'a HashMap<String, u64>,
}

/// modifier list with use tracking: unknown modifiers are errors
struct Mods<'a> {
    list: &'a [String],
    used: Vec<bool>,
    span: Span,
    op: &'a str,
}

const IGNORED_MODS: &[&str] = &[
    "ca", "cg", "cs", "lu", "cv", "wb", "wt", "nc", "weak", "relaxed", "acquire", "release", "gpu", "cta", "sys", "L1::evict_last", "L1::evict_first", "L1::evict_normal", "L1::no_allocate", "L2::64B", "L2::128B", "L2::256B", "L2::evict_last", "L2::evict_first", "L2::evict_normal", "volatile",
];

impl<'a> Mods<'a> {
    fn new(i: &'a Instr) -> Self {
        Mods { list: &i.mods, used: vec![false; i.mods.len()], span: i.span, op: &i.op }
    }
    fn take(&mut self, m: &str) -> bool {
        for (k, s) in self.list.iter().enumerate() {
            if !self.used[k] && s == m {
                self.used[k] = true;
                return true;
            }
        }
        false
    }
    fn take_any(&mut self, ms: &[&'static str]) -> Option<&'static str> {
        for (k, s) in self.list.iter().enumerate() {
            if self.used[k] {
                continue;
            }
            if let Some(m) = ms.iter().find(|m| **m == s) {
                self.used[k] = true;
                return Some(m);
            }
        }
        None
    }
    fn types(&mut self) -> Vec<Ty> {
        let mut v = Vec::new();
        for (k, s) in self.list.iter().enumerate() {
            if !self.used[k] {
                if let Some(t) = Ty::parse(s) {
                    self.used[k] = true;
                    v.push(t);
                }
            }
        }
        v
    }
    fn one_type(&mut self) -> DResult<Ty> {
        let t = self.types();
        if t.len() != 1 {
            return derr(self.span, format!("`{}` needs exactly one type modifier", self.full()));
        }
        Ok(t[0])
    }
    fn space(&mut self) -> Space {
        match self.take_any(&["global", "shared", "shared::cta", "local", "param", "const"]) {
            Some("global") => Space::Global,
            Some("shared") | Some("shared::cta") => Space::Shared,
            Some("local") => Space::Local,
            Some("param") => Space::Param,
            Some("const") => Space::Global,
            _ => Space::Generic,
        }
    }
    fn rnd(&mut self) -> Option<(Rnd, bool)> {
        match self.take_any(&["rn", "rz", "rm", "rp", "rni", "rzi", "rmi", "rpi"])? {
            "rn" => Some((Rnd::N, false)),
            "rz" => Some((Rnd::Z, false)),
            "rm" => Some((Rnd::M, false)),
            "rp" => Some((Rnd::P, false)),
            "rni" => Some((Rnd::N, true)),
            "rzi" => Some((Rnd::Z, true)),
            "rmi" => Some((Rnd::M, true)),
            _ => Some((Rnd::P, true)),
        }
    }
    fn full(&self) -> String {
        let mut s = self.op.to_string();
        for m in self.list {
            s.push('.');
            s.push_str(m);
        }
        s
    }
    fn finish(&self) -> DResult<()> {
        for (k, s) in self.list.iter().enumerate() {
            if !self.used[k] && !IGNORED_MODS.contains(&s.as_str()) {
                return derr(self.span, format!("unsupported instruction `{}`: modifier `.{}` is not supported by the simulator", self.full(), s));
            }
        }
        Ok(())
    }
}

fn unsupported<T>(i: &Instr) -> DResult<T> {
    let mut s = i.op.clone();
    for m in &i.mods {
        s.push('.');
        s.push_str(m);
    }
    derr(i.span, format!("unsupported instruction `{s}`"))
}

fn special_of(name: &str) -> Option<Special> {
    let comp = |c: &str| match c {
        "x" => Some(0u8),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    let (base, c) = match name.split_once('.') {
        Some((b, c)) => (b, comp(c)),
        None => (name, None),
    };
    Some(match (base, c) {
        ("%tid", Some(c)) => Special::Tid(c),
        ("%ntid", Some(c)) => Special::Ntid(c),
        ("%ctaid", Some(c)) => Special::Ctaid(c),
        ("%nctaid", Some(c)) => Special::Nctaid(c),
        ("%laneid", None) => Special::Laneid,
        ("%warpid", None) => Special::Warpid,
        ("%nwarpid", None) => Special::Nwarpid,
        ("%lanemask_eq", None) => Special::LanemaskEq,
        ("%lanemask_lt", None) => Special::LanemaskLt,
        ("%lanemask_le", None) => Special::LanemaskLe,
        ("%lanemask_gt", None) => Special::LanemaskGt,
        ("%lanemask_ge", None) => Special::LanemaskGe,
        _ => return None,
    })
}

impl<'a> Dec<'a> {
    fn const32(&mut self, v: u32) -> u32 {
        if let Some(&r) = self.c32.get(&v) {
            return r;
        }
        let r = self.n32;
        self.n32 += 1;
        self.c32.insert(v, r);
        r
    }
    fn const64(&mut self, v: u64) -> u32 {
        if let Some(&r) = self.c64.get(&v) {
            return r;
        }
        let r = self.n64;
        self.n64 += 1;
        self.c64.insert(v, r);
        r
    }

    fn lookup(&mut self, name: &str, span: Span) -> DResult<Sym> {
        if let Some(s) = self.syms.get(name) {
            return Ok(*s);
        }
        if let Some(sp) = special_of(name) {
            let r = match self.specials.get(name) {
                Some(&r) => r,
                None => {
                    let r = self.n32;
                    self.n32 += 1;
                    self.specials.insert(name.to_string(), r);
                    self.special_list.push((r, sp));
                    r
                }
            };
            return Ok(Sym::Reg(Class::R32, r));
        }
        if let Some(&a) = self.globals.get(name) {
            return Ok(Sym::Global(a));
        }
        if name.starts_with('%') && (name.starts_with("%clock") || name.starts_with("%globaltimer") || name.starts_with("%sm") || name.starts_with("%envreg")) {
            return derr(span, format!("unsupported special register `{name}`"));
        }
        derr(span, format!("undeclared identifier `{name}`"))
    }

    /// Immediate as bits for a value of type `ty`.
    fn imm_bits(&self, imm: &Imm, ty: Ty, span: Span) -> DResult<u64> {
        Ok(match (imm, ty) {
            (Imm::Int(v), t) if t.is_int() => {
                let bits = t.bytes() * 8;
                // negative literals are accepted for unsigned types too (two's complement bits)
                let lo = -(1i128 << (bits - 1));
                let hi = (1i128 << bits) - 1;
                if *v < lo || *v > hi {
                    return derr(span, format!("constant {v} does not fit .{ty:?}"));
                }
                (*v as u64) & if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 }
            }
            (Imm::F32Bits(b), Ty::F32) => *b as u64,
            (Imm::F32Bits(b), Ty::F64) => (f32::from_bits(*b) as f64).to_bits(),
            (Imm::F64Bits(b), Ty::F64) => *b,
            (Imm::F64Bits(b), Ty::F32) => (f64::from_bits(*b) as f32).to_bits() as u64,
            (Imm::Float(f), Ty::F32) => (*f as f32).to_bits() as u64,
            (Imm::Float(f), Ty::F64) => f.to_bits(),
            (Imm::Int(v), Ty::F32) => (*v as f32).to_bits() as u64,
            (Imm::Int(v), Ty::F64) => (*v as f64).to_bits(),
            (Imm::F32Bits(b), Ty::B32 | Ty::U32 | Ty::S32) => *b as u64,
            (Imm::F64Bits(b), Ty::B64 | Ty::U64 | Ty::S64) => *b,
            (Imm::Int(v), Ty::F16 | Ty::BF16 | Ty::F16x2 | Ty::BF16x2) => (*v as u64) & 0xffff_ffff,
            _ => return derr(span, format!("constant of the wrong kind for .{ty:?}")),
        })
    }

    /// A source operand of type `ty`, in the register file of that type's width.
    fn src(&mut self, o: &Operand, ty: Ty) -> DResult<Reg> {
        let want = ty.class();
        match o {
            Operand::Name(n, sp) => match self.lookup(n, *sp)? {
                Sym::Reg(c, r) => match (c, want) {
                    (Class::R32, Class::R32) => Ok(Reg::R32(r)),
                    (Class::R64, Class::R64) => Ok(Reg::R64(r)),
                    _ => derr(*sp, format!("register `{n}` has the wrong width for .{ty:?}")),
                },
                Sym::Shared(a) | Sym::Local(a) | Sym::Param(a) => match want {
                    Class::R32 => Ok(Reg::R32(self.const32(a))),
                    Class::R64 => Ok(Reg::R64(self.const64(a as u64))),
                    Class::P => derr(*sp, "a variable address is not a predicate"),
                },
                Sym::Global(a) => match want {
                    Class::R64 => Ok(Reg::R64(self.const64(a))),
                    _ => derr(*sp, "the address of a .global variable needs a 64-bit operand"),
                },
            },
            Operand::Imm(imm, sp) => {
                let bits = self.imm_bits(imm, ty, *sp)?;
                match want {
                    Class::R32 => Ok(Reg::R32(self.const32(bits as u32))),
                    Class::R64 => Ok(Reg::R64(self.const64(bits))),
                    Class::P => derr(*sp, "a constant is not a predicate register"),
                }
            }
            _ => derr(o.span(), "expected a register or constant operand"),
        }
    }
    fn src32(&mut self, o: &Operand, ty: Ty) -> DResult<u32> {
        of_width(self.src(o, ty)?, false, o.span(), "operand")
    }
    fn src64(&mut self, o: &Operand, ty: Ty) -> DResult<u32> {
        of_width(self.src(o, ty)?, true, o.span(), "operand")
    }
    /// A destination register (not a constant) of type `ty`.
    fn dst(&mut self, o: &Operand, ty: Ty) -> DResult<Reg> {
        match o {
            Operand::Name(n, sp) => match self.lookup(n, *sp)? {
                Sym::Reg(c, r) if !n.starts_with("%tid") && special_of(n).is_none() => match (c, ty.class()) {
                    (Class::R32, Class::R32) => Ok(Reg::R32(r)),
                    (Class::R64, Class::R64) => Ok(Reg::R64(r)),
                    _ => derr(*sp, format!("register `{n}` has the wrong width for .{ty:?}")),
                },
                _ => derr(*sp, format!("`{n}` is not a writable register")),
            },
            _ => derr(o.span(), "expected a destination register"),
        }
    }
    fn dst32(&mut self, o: &Operand, ty: Ty) -> DResult<u32> {
        of_width(self.dst(o, ty)?, false, o.span(), "register")
    }
    fn dst64(&mut self, o: &Operand, ty: Ty) -> DResult<u32> {
        of_width(self.dst(o, ty)?, true, o.span(), "register")
    }
    /// a register of any width (for ld/st/cvt of narrow types, which may use wider registers)
    fn any_reg(&mut self, o: &Operand, ty: Ty, write: bool) -> DResult<Reg> {
        match o {
            Operand::Name(n, sp) => match self.lookup(n, *sp)? {
                Sym::Reg(Class::R32, r) => {
                    if ty.bytes() > 4 {
                        return derr(*sp, format!("register `{n}` is too narrow for .{ty:?}"));
                    }
                    if write && special_of(n).is_some() {
                        return derr(*sp, format!("`{n}` is not writable"));
                    }
                    Ok(Reg::R32(r))
                }
                Sym::Reg(Class::R64, r) => Ok(Reg::R64(r)),
                Sym::Reg(Class::P, _) => derr(*sp, format!("`{n}` is a predicate")),
                _ if write => derr(*sp, format!("`{n}` is not a register")),
                _ => self.src(o, ty),
            },
            Operand::Imm(..) if !write => self.src(o, ty),
            _ => derr(o.span(), "expected a register"),
        }
    }
    fn pred(&mut self, o: &Operand) -> DResult<(u32, bool)> {
        match o {
            Operand::Name(n, sp) | Operand::NotName(n, sp) => match self.lookup(n, *sp)? {
                Sym::Reg(Class::P, r) => Ok((r, matches!(o, Operand::NotName(..)))),
                _ => derr(*sp, format!("`{n}` is not a predicate register")),
            },
            _ => derr(o.span(), "expected a predicate register"),
        }
    }
    fn addr(&mut self, o: &Operand, space: Space) -> DResult<Addr> {
        let Operand::Addr { base, offset, span } = o else {
            return derr(o.span(), "expected an address `[...]`");
        };
        let off = *offset;
        match base {
            AddrBase::None => Ok(Addr { base: Base::None, off }),
            AddrBase::Name(n) => match self.lookup(n, *span)? {
                Sym::Reg(Class::R32, r) => Ok(Addr { base: Base::R32(r), off }),
                Sym::Reg(Class::R64, r) => Ok(Addr { base: Base::R64(r), off }),
                Sym::Reg(Class::P, _) => derr(*span, "a predicate cannot be an address"),
                Sym::Shared(a) => {
                    if !matches!(space, Space::Shared) {
                        return derr(*span, format!("`{n}` is a .shared variable; use a .shared access"));
                    }
                    Ok(Addr { base: Base::None, off: off.wrapping_add(a as i64) })
                }
                Sym::Local(a) => {
                    if !matches!(space, Space::Local) {
                        return derr(*span, format!("`{n}` is a .local variable; use a .local access"));
                    }
                    Ok(Addr { base: Base::None, off: off.wrapping_add(a as i64) })
                }
                Sym::Param(a) => {
                    if !matches!(space, Space::Param) {
                        return derr(*span, format!("`{n}` is a kernel parameter; use ld.param"));
                    }
                    Ok(Addr { base: Base::None, off: off.wrapping_add(a as i64) })
                }
                Sym::Global(a) => {
                    if !matches!(space, Space::Global | Space::Generic) {
                        return derr(*span, format!("`{n}` is a .global variable"));
                    }
                    Ok(Addr { base: Base::None, off: off.wrapping_add(a as i64) })
                }
            },
        }
    }
    fn label(&self, o: &Operand) -> DResult<u32> {
        match o {
            Operand::Name(n, sp) => self.labels.get(n).copied().ok_or(ParseError { span: *sp, msg: format!("undefined label `{n}`") }),
            _ => derr(o.span(), "expected a label"),
        }
    }
}

fn nargs(i: &Instr, n: usize) -> DResult<()> {
    if i.args.len() != n {
        return derr(i.span, format!("`{}` takes {} operands, found {}", i.op, n, i.args.len()));
    }
    Ok(())
}

fn vec_regs(o: &Operand) -> Vec<&Operand> {
    match o {
        Operand::Vector(v, _) => v.iter().collect(),
        x => vec![x],
    }
}

/// Decode every kernel of a module.
pub fn decode_module(m: &Module, globals: &HashMap<String, u64>) -> DResult<Vec<Kernel>> {
    // module-scope shared variables come first in every kernel's shared window
    let mut out = Vec::new();
    for e in &m.entries {
        out.push(decode_entry(m, e, globals)?);
    }
    Ok(out)
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// Places variable `v` (`size` bytes aligned to `align`) after the `*used`
/// bytes of its space, as symbol `sym(offset)`; past `limit` bytes, the error `full`.
fn place(syms: &mut HashMap<String, Sym>, v: &VarDecl, used: &mut u64, (size, align): (u64, u64), sym: fn(u32) -> Sym, (limit, full): (u64, &str)) -> DResult<()> {
    *used = align_up(*used, align);
    if syms.insert(v.name.clone(), sym(*used as u32)).is_some() {
        return derr(v.span, format!("`{}` declared twice", v.name));
    }
    *used += size;
    if *used > limit {
        return derr(v.span, full);
    }
    Ok(())
}

fn decode_entry(m: &Module, e: &Entry, globals: &HashMap<String, u64>) -> DResult<Kernel> {
    let mut d = Dec {
        syms: HashMap::new(),
        n32: 0,
        n64: 0,
        np: 0,
        c32: HashMap::new(),
        c64: HashMap::new(),
        specials: HashMap::new(),
        special_list: Vec::new(),
        labels: HashMap::new(),
        globals,
    };
    // params
    let mut params = Vec::new();
    let mut poff: u64 = 0;
    for p in &e.params {
        let ty = Ty::parse(&p.ty).ok_or(ParseError { span: p.span, msg: format!("unsupported parameter type .{}", p.ty) })?;
        if ty == Ty::Pred {
            return derr(p.span, "predicate parameters are not supported");
        }
        let Some(size) = var_size(p)? else {
            return derr(p.span, "a parameter needs a size");
        };
        let align = p.align.map(|a| a as u64).unwrap_or(ty.bytes() as u64);
        poff = align_up(poff, align);
        if poff + size > 32764 {
            return derr(p.span, "kernel parameters exceed 32764 bytes");
        }
        params.push(Param { name: p.name.clone(), offset: poff as u32, size: size as u32, ty });
        if d.syms.insert(p.name.clone(), Sym::Param(poff as u32)).is_some() {
            return derr(p.span, format!("duplicate parameter `{}`", p.name));
        }
        poff += size;
    }
    // declarations: registers, shared, local
    let mut shared_off: u64 = 0;
    let mut dyn_align: u64 = 16;
    let mut dyn_syms = Vec::new();
    let mut local_off: u64 = 0;
    let decls: Vec<&VarDecl> = m.globals.iter().filter(|v| v.space == StateSpace::Shared).chain(e.body.iter().filter_map(|s| if let Stmt::Decl(v) = s { Some(v) } else { None })).collect();
    for v in decls {
        match v.space {
            StateSpace::Reg => {
                let ty = Ty::parse(&v.ty).ok_or(ParseError { span: v.span, msg: format!("unsupported register type .{}", v.ty) })?;
                if !v.dims.is_empty() {
                    return derr(v.span, "register arrays are not supported");
                }
                let class = ty.class();
                let names: Vec<String> = match v.range {
                    Some(n) => (0..n).map(|k| format!("{}{}", v.name, k)).collect(),
                    None => vec![v.name.clone()],
                };
                for n in names {
                    let idx = match class {
                        Class::R32 => {
                            d.n32 += 1;
                            d.n32 - 1
                        }
                        Class::R64 => {
                            d.n64 += 1;
                            d.n64 - 1
                        }
                        Class::P => {
                            d.np += 1;
                            d.np - 1
                        }
                    };
                    if d.syms.insert(n.clone(), Sym::Reg(class, idx)).is_some() {
                        return derr(v.span, format!("`{n}` declared twice"));
                    }
                }
                if d.n32 + d.n64 + d.np > 1 << 16 {
                    return derr(v.span, "too many registers");
                }
            }
            StateSpace::Shared => {
                let eb = elem_bytes(&v.ty, v.span)? as u64;
                let align = v.align.map(|a| a as u64).unwrap_or(eb).max(1);
                match var_size(v)? {
                    None => {
                        if !v.extern_ {
                            return derr(v.span, "an unsized .shared array must be `.extern`");
                        }
                        dyn_align = dyn_align.max(align);
                        dyn_syms.push((v.name.clone(), v.span));
                    }
                    Some(size) => {
                        if !v.init.is_empty() {
                            return derr(v.span, ".shared variables cannot be initialised");
                        }
                        place(&mut d.syms, v, &mut shared_off, (size, align), Sym::Shared, (228 * 1024, "static shared memory exceeds 228 KiB"))?;
                    }
                }
            }
            StateSpace::Local => {
                let eb = elem_bytes(&v.ty, v.span)? as u64;
                let align = v.align.map(|a| a as u64).unwrap_or(eb).max(1);
                let Some(size) = var_size(v)? else {
                    return derr(v.span, "a .local variable needs a size");
                };
                place(&mut d.syms, v, &mut local_off, (size, align), Sym::Local, (512 * 1024, "local memory exceeds 512 KiB per thread"))?;
            }
            StateSpace::Global | StateSpace::Const => return derr(v.span, "a .global/.const variable inside a kernel is not supported"),
            StateSpace::Param => return derr(v.span, ".param declarations in a kernel body are not supported"),
        }
    }
    let dyn_off = align_up(shared_off, dyn_align);
    for (n, sp) in dyn_syms {
        if d.syms.insert(n.clone(), Sym::Shared(dyn_off as u32)).is_some() {
            return derr(sp, format!("`{n}` declared twice"));
        }
    }
    // labels
    let mut n = 0u32;
    for s in &e.body {
        match s {
            Stmt::Label(l, sp) => {
                if d.labels.insert(l.clone(), n).is_some() {
                    return derr(*sp, format!("label `{l}` defined twice"));
                }
            }
            Stmt::Instr(_) => n += 1,
            Stmt::Decl(_) => {}
        }
    }
    let mut insts = Vec::new();
    for s in &e.body {
        if let Stmt::Instr(i) = s {
            insts.push(decode_instr(&mut d, i)?);
        }
    }
    // falling off the end exits
    insts.push(DInst { inst: Inst::Exit, guard: NO_GUARD, guard_neg: false, line: 0, reconv: RECONV_NONE });
    compute_reconvergence(&mut insts);
    let mut const32: Vec<(u32, u32)> = d.c32.iter().map(|(v, r)| (*r, *v)).collect();
    const32.sort();
    let mut const64: Vec<(u32, u64)> = d.c64.iter().map(|(v, r)| (*r, *v)).collect();
    const64.sort();
    Ok(Kernel {
        name: e.name.clone(),
        n32: d.n32,
        n64: d.n64,
        np: d.np,
        const32,
        const64,
        specials: d.special_list,
        params,
        param_bytes: poff as u32,
        static_shared: shared_off as u32,
        dyn_shared_offset: dyn_off as u32,
        local_bytes: align_up(local_off, 16) as u32,
        hopper: insts.iter().any(|i| matches!(i.inst, Inst::MbarInit { .. } | Inst::MbarArrive { .. } | Inst::MbarWait { .. } | Inst::TmaLoad { .. } | Inst::TmaStore { .. } | Inst::BulkReduceAdd { .. } | Inst::Wgmma { .. } | Inst::Stmatrix { .. } | Inst::FenceProxyAsync)),
        wgmma: insts.iter().any(|i| matches!(i.inst, Inst::Wgmma { .. })),
        insts,
    })
}

fn cmp_of(s: &str) -> Option<Cmp> {
    Some(match s {
        "eq" => Cmp::Eq,
        "ne" => Cmp::Ne,
        "lt" => Cmp::Lt,
        "le" => Cmp::Le,
        "gt" => Cmp::Gt,
        "ge" => Cmp::Ge,
        "lo" => Cmp::Lo,
        "ls" => Cmp::Ls,
        "hi" => Cmp::Hi,
        "hs" => Cmp::Hs,
        "equ" => Cmp::Equ,
        "neu" => Cmp::Neu,
        "ltu" => Cmp::Ltu,
        "leu" => Cmp::Leu,
        "gtu" => Cmp::Gtu,
        "geu" => Cmp::Geu,
        "num" => Cmp::Num,
        "nan" => Cmp::Nan,
        _ => return None,
    })
}

fn decode_instr(d: &mut Dec, i: &Instr) -> DResult<DInst> {
    let (guard, guard_neg) = match &i.guard {
        Some((n, neg)) => match d.lookup(n, i.span)? {
            Sym::Reg(Class::P, r) => (r, *neg),
            _ => return derr(i.span, format!("guard `{n}` is not a predicate register")),
        },
        None => (NO_GUARD, false),
    };
    let mut m = Mods::new(i);
    let a = &i.args;
    let inst = match i.op.as_str() {
        "add" | "sub" | "mul" | "min" | "max" | "div" | "rem" | "and" | "or" | "xor" | "shl" | "shr" => decode_binary(d, i, &mut m)?,
        "mad" | "fma" => decode_mad(d, i, &mut m)?,
        "neg" | "abs" | "not" | "rcp" | "sqrt" | "rsqrt" | "ex2" | "lg2" | "tanh" | "sin" | "cos" | "popc" | "clz" | "brev" => decode_unary(d, i, &mut m)?,
        "setp" => {
            let cmp = m.take_any(&["eq", "ne", "lt", "le", "gt", "ge", "lo", "ls", "hi", "hs", "equ", "neu", "ltu", "leu", "gtu", "geu", "num", "nan"]).and_then(cmp_of).ok_or(ParseError { span: i.span, msg: "setp needs a comparison".into() })?;
            let bop = match m.take_any(&["and", "or", "xor"]) {
                Some("and") => Some(BoolOp::And),
                Some("or") => Some(BoolOp::Or),
                Some("xor") => Some(BoolOp::Xor),
                _ => None,
            };
            m.take("ftz");
            let ty = m.one_type()?;
            if matches!(ty, Ty::F16 | Ty::BF16 | Ty::F16x2 | Ty::BF16x2 | Ty::Pred | Ty::B8 | Ty::U8 | Ty::S8) {
                return unsupported(i);
            }
            let ok = match cmp {
                Cmp::Eq | Cmp::Ne => true,
                Cmp::Lt | Cmp::Le | Cmp::Gt | Cmp::Ge => !matches!(ty, Ty::B16 | Ty::B32 | Ty::B64),
                Cmp::Lo | Cmp::Ls | Cmp::Hi | Cmp::Hs => ty.is_int(),
                _ => ty.is_float(),
            };
            if !ok {
                return derr(i.span, format!("comparison {cmp:?} is not valid for .{ty:?}"));
            }
            nargs(i, if bop.is_some() { 4 } else { 3 })?;
            let (dp, dn) = match &a[0] {
                Operand::Pair(p, q, _) => (d.pred(p)?.0, Some(d.pred(q)?.0)),
                o => (d.pred(o)?.0, None),
            };
            let comb = match bop {
                Some(op) => {
                    let (c, cn) = d.pred(&a[3])?;
                    Some((op, c, cn))
                }
                None => None,
            };
            Inst::Setp { cmp, ty, d: dp, dn, a: d.src(&a[1], ty)?, b: d.src(&a[2], ty)?, comb }
        }
        "selp" => {
            let ty = m.one_type()?;
            nargs(i, 4)?;
            let (p, pn) = d.pred(&a[3])?;
            Inst::Selp { d: d.dst(&a[0], ty)?, a: d.src(&a[1], ty)?, b: d.src(&a[2], ty)?, p, pn }
        }
        "mov" => decode_mov(d, i, &mut m)?,
        "cvt" => decode_cvt(d, i, &mut m)?,
        "cvta" => {
            let to = m.take("to");
            let space = m.space();
            if !matches!(space, Space::Global | Space::Shared | Space::Local) && (space != Space::Param || to) {
                return unsupported(i);
            }
            let ty = m.one_type()?;
            if !matches!(ty, Ty::U64 | Ty::U32 | Ty::B64 | Ty::B32) {
                return unsupported(i);
            }
            nargs(i, 2)?;
            Inst::Cvta { to, space, d: d.dst(&a[0], ty)?, a: d.src(&a[1], ty)? }
        }
        "ld" | "st" => {
            let space = m.space();
            if i.op == "st" && space == Space::Param {
                return derr(i.span, "st.param is not supported in a kernel");
            }
            let n = match m.take_any(&["v2", "v4"]) {
                Some("v2") => 2,
                Some("v4") => 4,
                _ => 1,
            };
            let ty = m.one_type()?;
            if ty == Ty::Pred {
                return unsupported(i);
            }
            nargs(i, 2)?;
            let (ro, ao) = if i.op == "ld" { (&a[0], &a[1]) } else { (&a[1], &a[0]) };
            let regs = vec_regs(ro);
            if regs.len() != n || (n > 1 && !matches!(ro, Operand::Vector(..))) {
                return derr(ro.span(), format!("expected {n} registers"));
            }
            let addr = d.addr(ao, space)?;
            if i.op == "ld" {
                let mut v = Vec::new();
                for r in regs {
                    v.push(match r {
                        Operand::Sink(_) => None,
                        r => Some(d.any_reg(r, ty, true)?),
                    });
                }
                Inst::Ld { space, ty, d: v, addr }
            } else {
                let mut v = Vec::new();
                for r in regs {
                    v.push(d.any_reg(r, ty, false)?);
                }
                Inst::St { space, ty, s: v, addr }
            }
        }
        "atom" | "red" => {
            let space = m.space();
            if !matches!(space, Space::Global | Space::Shared) {
                return derr(i.span, format!("`{}` needs .global or .shared (generic atomics are not supported)", m.full()));
            }
            let op = match m.take_any(&["add", "min", "max", "exch", "cas", "and", "or", "xor", "inc", "dec"]) {
                Some("add") => AtomOp::Add,
                Some("min") => AtomOp::Min,
                Some("max") => AtomOp::Max,
                Some("exch") => AtomOp::Exch,
                Some("cas") => AtomOp::Cas,
                Some("and") => AtomOp::And,
                Some("or") => AtomOp::Or,
                Some("xor") => AtomOp::Xor,
                Some("inc") => AtomOp::Inc,
                Some("dec") => AtomOp::Dec,
                _ => return unsupported(i),
            };
            let ty = m.one_type()?;
            if !matches!(ty, Ty::U32 | Ty::S32 | Ty::B32 | Ty::F32) {
                return derr(i.span, format!("unsupported instruction `{}`: only 32-bit atomics are supported", m.full()));
            }
            if ty == Ty::F32 && !matches!(op, AtomOp::Add | AtomOp::Exch | AtomOp::Min | AtomOp::Max) {
                return unsupported(i);
            }
            let is_red = i.op == "red";
            let nops = if is_red { 2 } else { 3 } + if op == AtomOp::Cas { 1 } else { 0 };
            nargs(i, nops)?;
            let k = if is_red { 0 } else { 1 };
            let dd = if is_red { None } else { Some(d.dst32(&a[0], ty)?) };
            let addr = d.addr(&a[k], space)?;
            let b = d.src32(&a[k + 1], ty)?;
            let c = if op == AtomOp::Cas { Some(d.src32(&a[k + 2], ty)?) } else { None };
            Inst::Atom { space, op, ty, d: dd, addr, b, c }
        }
        "bra" => {
            let uni = m.take("uni");
            nargs(i, 1)?;
            Inst::Bra { target: d.label(&a[0])?, uni }
        }
        "ret" | "exit" => {
            nargs(i, 0)?;
            Inst::Exit
        }
        "bar" | "barrier" => {
            if m.take("warp") {
                m.take("sync");
                nargs(i, 1)?;
                Inst::BarWarp { mask: d.src32(&a[0], Ty::B32)? }
            } else {
                let arrive = match m.take_any(&["sync", "arrive", "red"]) {
                    Some("sync") => false,
                    Some("arrive") => true,
                    _ => return unsupported(i),
                };
                m.take("aligned");
                m.take("cta");
                if a.is_empty() || a.len() > 2 {
                    return derr(i.span, "bar takes a barrier id and an optional thread count");
                }
                let id = d.src32(&a[0], Ty::U32)?;
                let count = if a.len() == 2 { Some(d.src32(&a[1], Ty::U32)?) } else { None };
                Inst::Bar { arrive, id, count }
            }
        }
        "fence" if i.mods.iter().any(|x| x == "proxy") && i.mods.iter().any(|x| x == "async") => {
            m.take("proxy");
            m.take("async");
            nargs(i, 0)?;
            // only the shared-memory (or unqualified) form orders what the simulator checks
            if m.take("global") {
                Inst::Nop
            } else {
                m.take_any(&["shared::cta", "shared::cluster", "shared"]);
                Inst::FenceProxyAsync
            }
        }
        "fence" if i.mods.iter().any(|x| x == "mbarrier_init") => {
            m.take("mbarrier_init");
            m.take("release");
            m.take("cluster");
            nargs(i, 0)?;
            Inst::Nop
        }
        "mbarrier" | "wgmma" | "elect" | "setmaxnreg" | "stmatrix" => decode_hopper(d, i, &mut m)?,
        "cp" if i.mods.iter().any(|x| x == "bulk") => decode_hopper(d, i, &mut m)?,
        "membar" | "fence" => {
            m.take("proxy");
            m.take("async");
            m.take_any(&["cta", "gl", "gpu", "sys", "shared", "shared::cta", "global", "acq_rel", "sc"]);
            m.take_any(&["cta", "gl", "gpu", "sys", "shared", "shared::cta", "global", "acq_rel", "sc"]);
            Inst::Nop
        }
        "shfl" => {
            if !m.take("sync") {
                return derr(i.span, "shfl without .sync is not supported (use shfl.sync)");
            }
            let mode = match m.take_any(&["up", "down", "bfly", "idx"]) {
                Some("up") => ShflMode::Up,
                Some("down") => ShflMode::Down,
                Some("bfly") => ShflMode::Bfly,
                Some("idx") => ShflMode::Idx,
                _ => return unsupported(i),
            };
            let ty = m.one_type()?;
            if ty != Ty::B32 {
                return unsupported(i);
            }
            nargs(i, 5)?;
            let (dd, p) = match &a[0] {
                Operand::Pair(x, y, _) => (d.dst32(x, ty)?, Some(d.pred(y)?.0)),
                o => (d.dst32(o, ty)?, None),
            };
            Inst::Shfl { mode, d: dd, p, a: d.src32(&a[1], ty)?, b: d.src32(&a[2], Ty::B32)?, c: d.src32(&a[3], Ty::B32)?, mask: d.src32(&a[4], Ty::B32)? }
        }
        "vote" => {
            if !m.take("sync") {
                return derr(i.span, "vote without .sync is not supported");
            }
            let mode = match m.take_any(&["all", "any", "uni", "ballot"]) {
                Some("all") => VoteMode::All,
                Some("any") => VoteMode::Any,
                Some("uni") => VoteMode::Uni,
                Some("ballot") => VoteMode::Ballot,
                _ => return unsupported(i),
            };
            let ty = m.one_type()?;
            nargs(i, 3)?;
            let (pa, an) = d.pred(&a[1])?;
            let mask = d.src32(&a[2], Ty::B32)?;
            if mode == VoteMode::Ballot {
                if ty != Ty::B32 {
                    return unsupported(i);
                }
                Inst::Vote { mode, d: d.dst(&a[0], Ty::B32)?, dp: 0, a: pa, an, mask }
            } else {
                if ty != Ty::Pred {
                    return unsupported(i);
                }
                Inst::Vote { mode, d: Reg::R32(0), dp: d.pred(&a[0])?.0, a: pa, an, mask }
            }
        }
        "activemask" => {
            m.one_type()?;
            nargs(i, 1)?;
            Inst::Activemask { d: d.dst32(&a[0], Ty::B32)? }
        }
        "cp" => {
            if m.take("async") {
                if m.take("commit_group") {
                    nargs(i, 0)?;
                    Inst::CpCommit
                } else if m.take("wait_group") {
                    nargs(i, 1)?;
                    let n = match &a[0] {
                        Operand::Imm(Imm::Int(v), _) if *v >= 0 && *v < 1 << 16 => *v as u32,
                        o => return derr(o.span(), "cp.async.wait_group takes a constant"),
                    };
                    Inst::CpWait { n }
                } else if m.take("wait_all") {
                    nargs(i, 0)?;
                    // commit the pending copies, then wait for every group
                    Inst::CpWait { n: u32::MAX }
                } else {
                    let cg = m.take("cg");
                    if !cg && !m.take("ca") {
                        return unsupported(i);
                    }
                    let s1 = m.space();
                    let s2 = m.space();
                    if s1 != Space::Shared || s2 != Space::Global {
                        return derr(i.span, "cp.async must be .shared.global");
                    }
                    if a.len() < 3 || a.len() > 4 {
                        return derr(i.span, "cp.async takes [dst], [src], cp-size{, src-size}");
                    }
                    let bytes = match &a[2] {
                        Operand::Imm(Imm::Int(v), _) if matches!(v, 4 | 8 | 16) => *v as u32,
                        o => return derr(o.span(), "cp.async size must be 4, 8 or 16"),
                    };
                    if cg && bytes != 16 {
                        return derr(i.span, "cp.async.cg needs size 16");
                    }
                    let src_size = if a.len() == 4 { Some(d.src32(&a[3], Ty::U32)?) } else { None };
                    Inst::CpAsync { bytes, dst: d.addr(&a[0], Space::Shared)?, src: d.addr(&a[1], Space::Global)?, src_size }
                }
            } else {
                return unsupported(i);
            }
        }
        "ldmatrix" => {
            let (num, trans) = matrix_shape(i, &mut m)?;
            let space = m.space();
            if !matches!(space, Space::Shared) {
                return derr(i.span, "ldmatrix needs .shared");
            }
            if m.one_type()? != Ty::B16 {
                return unsupported(i);
            }
            nargs(i, 2)?;
            let regs = vec_regs(&a[0]);
            if regs.len() != num as usize {
                return derr(a[0].span(), format!("ldmatrix .x{num} needs {num} registers"));
            }
            let mut dd = [0u32; 4];
            for (k, r) in regs.iter().enumerate() {
                dd[k] = d.dst32(r, Ty::B32)?;
            }
            Inst::Ldmatrix { num, trans, d: dd, addr: d.addr(&a[1], Space::Shared)? }
        }
        "mma" => {
            if !(m.take("sync") && m.take("aligned") && m.take("m16n8k16") && m.take("row") && m.take("col")) {
                return unsupported(i);
            }
            let t = m.types();
            let bf = match t.as_slice() {
                [Ty::F32, Ty::BF16, Ty::BF16, Ty::F32] => true,
                [Ty::F32, Ty::F16, Ty::F16, Ty::F32] => false,
                _ => return derr(i.span, format!("unsupported instruction `{}`: mma supports .f32.bf16.bf16.f32 and .f32.f16.f16.f32", m.full())),
            };
            nargs(i, 4)?;
            let get = |d: &mut Dec, o: &Operand, n: usize, src: bool| -> DResult<Vec<u32>> {
                let regs = vec_regs(o);
                if regs.len() != n {
                    return derr(o.span(), format!("expected {n} registers"));
                }
                regs.iter().map(|r| if src { d.src32(r, Ty::B32) } else { d.dst32(r, Ty::B32) }).collect()
            };
            let dd = get(d, &a[0], 4, false)?;
            let aa = get(d, &a[1], 4, true)?;
            let bb = get(d, &a[2], 2, true)?;
            let cc = get(d, &a[3], 4, true)?;
            Inst::Mma { bf, d: [dd[0], dd[1], dd[2], dd[3]], a: [aa[0], aa[1], aa[2], aa[3]], b: [bb[0], bb[1]], c: [cc[0], cc[1], cc[2], cc[3]] }
        }
        "prmt" => {
            if m.one_type()? != Ty::B32 {
                return unsupported(i);
            }
            nargs(i, 4)?;
            Inst::Prmt { d: d.dst32(&a[0], Ty::B32)?, a: d.src32(&a[1], Ty::B32)?, b: d.src32(&a[2], Ty::B32)?, c: d.src32(&a[3], Ty::B32)? }
        }
        "lop3" => {
            if m.one_type()? != Ty::B32 {
                return unsupported(i);
            }
            nargs(i, 5)?;
            let lut = match &a[4] {
                Operand::Imm(Imm::Int(v), _) if (0..256).contains(v) => *v as u8,
                o => return derr(o.span(), "lop3 needs a constant LUT"),
            };
            Inst::Lop3 { d: d.dst32(&a[0], Ty::B32)?, a: d.src32(&a[1], Ty::B32)?, b: d.src32(&a[2], Ty::B32)?, c: d.src32(&a[3], Ty::B32)?, lut }
        }
        _ => return unsupported(i),
    };
    m.finish()?;
    Ok(DInst { inst, guard, guard_neg, line: i.span.line, reconv: RECONV_NONE })
}

/// `ldmatrix`/`stmatrix`'s `.sync.aligned.m8n8.x{1,2,4}{.trans}`: the matrix count and the transpose.
fn matrix_shape(i: &Instr, m: &mut Mods) -> DResult<(u32, bool)> {
    if !(m.take("sync") && m.take("aligned") && m.take("m8n8")) {
        return unsupported(i);
    }
    let num = match m.take_any(&["x1", "x2", "x4"]) {
        Some("x1") => 1,
        Some("x2") => 2,
        Some("x4") => 4,
        _ => return unsupported(i),
    };
    Ok((num, m.take("trans")))
}

/// An integer immediate operand in `range`.
fn imm_in(o: &Operand, range: std::ops::RangeInclusive<i128>, what: &str) -> DResult<i128> {
    match o {
        Operand::Imm(Imm::Int(v), _) if range.contains(v) => Ok(*v),
        o => derr(o.span(), format!("{what} must be a constant in {}..={}", range.start(), range.end())),
    }
}

/// The tensor-map operand `[map, {c0, ..}]`: the 64-bit register holding
/// the map's generic address, and the coordinate registers (`.s32`).
fn tensor_operand(d: &mut Dec, o: &Operand, dims: usize) -> DResult<(u32, Vec<u32>)> {
    let Operand::TensorAddr { map, coords, span } = o else {
        return derr(o.span(), "expected a tensor operand `[map, {x, y, ..}]`");
    };
    // ptxas takes the map's generic address in a 64-bit register (cvta.param of the parameter)
    let off = match d.lookup(map, *span)? {
        Sym::Reg(Class::R64, r) => r,
        _ => return derr(*span, format!("`{map}` is not a 64-bit register: a tensor map is addressed by its generic address (cvta.param.u64 of the parameter)")),
    };
    if coords.len() != dims {
        return derr(*span, format!("a {dims}d tensor copy takes {dims} coordinates, found {}", coords.len()));
    }
    let c = coords.iter().map(|c| d.src32(c, Ty::S32)).collect::<DResult<Vec<u32>>>()?;
    Ok((off, c))
}

/// mbarrier, cp.async.bulk(.tensor), wgmma, elect, setmaxnreg, stmatrix.
fn decode_hopper(d: &mut Dec, i: &Instr, m: &mut Mods) -> DResult<Inst> {
    let a = &i.args;
    Ok(match i.op.as_str() {
        "mbarrier" => {
            let Some(kind) = m.take_any(&["init", "arrive", "expect_tx", "try_wait", "test_wait"]) else {
                return unsupported(i);
            };
            let expect = kind == "arrive" && m.take("expect_tx");
            let parity = m.take("parity");
            for q in ["release", "acquire", "relaxed", "cta", "cluster"] {
                m.take(q);
            }
            if !matches!(m.space(), Space::Shared) {
                return derr(i.span, format!("`{}`: the simulator supports mbarriers in .shared::cta", m.full()));
            }
            if !matches!(m.one_type()?, Ty::B64) {
                return unsupported(i);
            }
            match kind {
                "init" => {
                    nargs(i, 2)?;
                    Inst::MbarInit { addr: d.addr(&a[0], Space::Shared)?, count: d.src32(&a[1], Ty::U32)? }
                }
                "arrive" => {
                    nargs(i, if expect { 3 } else { 2 })?;
                    let state = match &a[0] {
                        Operand::Sink(_) => None,
                        o => Some(d.dst64(o, Ty::B64)?),
                    };
                    let tx = if expect { Some(d.src32(&a[2], Ty::U32)?) } else { None };
                    Inst::MbarArrive { addr: d.addr(&a[1], Space::Shared)?, tx, arrive: true, state }
                }
                "expect_tx" => {
                    nargs(i, 2)?;
                    Inst::MbarArrive { addr: d.addr(&a[0], Space::Shared)?, tx: Some(d.src32(&a[1], Ty::U32)?), arrive: false, state: None }
                }
                _ => {
                    if !parity {
                        return derr(i.span, format!("`{}`: the simulator supports the .parity form of mbarrier waits", m.full()));
                    }
                    // an optional suspend-time hint is accepted and ignored
                    if a.len() != 3 && a.len() != 4 {
                        return derr(i.span, "mbarrier.try_wait.parity takes p, [addr], parity{, hint}");
                    }
                    Inst::MbarWait { p: d.pred(&a[0])?.0, addr: d.addr(&a[1], Space::Shared)?, parity: d.src32(&a[2], Ty::U32)? }
                }
            }
        }
        "cp" => {
            let reduce = m.take("reduce");
            if !(m.take("async") && m.take("bulk")) {
                return unsupported(i);
            }
            if reduce {
                // the plain (non-tensor) shared -> global add of f32; the tensor form is not supported
                if !(m.take("global") && m.take("shared::cta") && m.take("bulk_group") && m.take("add") && m.take("f32")) {
                    return derr(i.span, format!("`{}`: the simulator supports cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 only", m.full()));
                }
                nargs(i, 3)?;
                return Ok(Inst::BulkReduceAdd { dst: d.addr(&a[0], Space::Global)?, src: d.addr(&a[1], Space::Shared)?, bytes: d.src32(&a[2], Ty::U32)? });
            }
            if m.take("commit_group") {
                nargs(i, 0)?;
                return Ok(Inst::BulkCommit);
            }
            if m.take("wait_group") {
                let read = m.take("read");
                nargs(i, 1)?;
                return Ok(Inst::BulkWait { n: imm_in(&a[0], 0..=63, "cp.async.bulk.wait_group's count")? as u32, read });
            }
            if !m.take("tensor") {
                return derr(i.span, format!("`{}`: the simulator supports cp.async.bulk.tensor (tiled), not plain bulk copies", m.full()));
            }
            let dims = match m.take_any(&["1d", "2d", "3d", "4d", "5d"]) {
                Some(x) => (x.as_bytes()[0] - b'0') as usize,
                None => return derr(i.span, "cp.async.bulk.tensor needs a dimension (.1d to .5d)"),
            };
            m.take("tile");
            m.take("L2::cache_hint");
            if i.mods.iter().any(|x| x.starts_with("multicast") || x == "im2col") {
                return derr(i.span, format!("`{}`: multicast and im2col copies are not supported (no clusters in the simulator)", m.full()));
            }
            // the destination's state space comes first: .shared::cluster.global loads, .global.shared::cta stores
            let first_space = i.mods.iter().find(|x| x.starts_with("shared") || *x == "global").map(|x| x.as_str());
            if first_space != Some("global") && (m.take("shared::cluster") || m.take("shared::cta")) {
                // load: global -> shared
                if !m.take("global") || !m.take("mbarrier::complete_tx::bytes") {
                    return derr(i.span, format!("`{}`: a tensor load is .shared::cluster.global.mbarrier::complete_tx::bytes", m.full()));
                }
                nargs(i, 3)?;
                let (map, coords) = tensor_operand(d, &a[1], dims)?;
                Inst::TmaLoad { dst: d.addr(&a[0], Space::Shared)?, map, coords, mbar: d.addr(&a[2], Space::Shared)? }
            } else if m.take("global") {
                if !(m.take("shared::cta") && m.take("bulk_group")) {
                    return derr(i.span, format!("`{}`: a tensor store is .global.shared::cta.bulk_group", m.full()));
                }
                nargs(i, 2)?;
                let (map, coords) = tensor_operand(d, &a[0], dims)?;
                Inst::TmaStore { map, coords, src: d.addr(&a[1], Space::Shared)? }
            } else {
                return unsupported(i);
            }
        }
        "wgmma" => {
            if m.take("fence") {
                m.take("sync");
                m.take("aligned");
                nargs(i, 0)?;
                return Ok(Inst::WgFence);
            }
            if m.take("commit_group") {
                m.take("sync");
                m.take("aligned");
                nargs(i, 0)?;
                return Ok(Inst::WgCommit);
            }
            if m.take("wait_group") {
                m.take("sync");
                m.take("aligned");
                nargs(i, 1)?;
                return Ok(Inst::WgWait { n: imm_in(&a[0], 0..=7, "wgmma.wait_group's count")? as u32 });
            }
            if !(m.take("mma_async") && m.take("sync") && m.take("aligned")) {
                return unsupported(i);
            }
            let shape = i.mods.iter().find(|x| x.starts_with("m64n") && x.ends_with("k16")).cloned();
            let n: u32 = match shape.as_deref().and_then(|s| s[4..s.len() - 3].parse::<u32>().ok()) {
                Some(n) if (8..=256).contains(&n) && n.is_multiple_of(8) => n,
                _ => return derr(i.span, format!("`{}`: the simulator supports wgmma shapes m64nNk16 (N = 8..256, a multiple of 8) on 16-bit inputs", m.full())),
            };
            m.take(shape.as_deref().unwrap_or(""));
            let bf = match m.types().as_slice() {
                [Ty::F32, Ty::BF16, Ty::BF16] => true,
                [Ty::F32, Ty::F16, Ty::F16] => false,
                _ => return derr(i.span, format!("`{}`: wgmma supports .f32.bf16.bf16 and .f32.f16.f16", m.full())),
            };
            let regs_a = matches!(a.get(1), Some(Operand::Vector(..)));
            nargs(i, if regs_a { 7 } else { 8 })?;
            let dregs = vec_regs(&a[0]);
            if dregs.len() != n as usize / 2 {
                return derr(a[0].span(), format!("m64n{n}k16 with f32 accumulators takes {} registers, found {}", n / 2, dregs.len()));
            }
            let dd = dregs.iter().map(|r| d.dst32(r, Ty::F32)).collect::<DResult<Vec<u32>>>()?;
            let wa = if regs_a {
                let r = vec_regs(&a[1]);
                if r.len() != 4 {
                    return derr(a[1].span(), "a wgmma A fragment is 4 registers");
                }
                let v = r.iter().map(|x| d.src32(x, Ty::B32)).collect::<DResult<Vec<u32>>>()?;
                WgA::Regs([v[0], v[1], v[2], v[3]])
            } else {
                WgA::Desc(d.src64(&a[1], Ty::B64)?)
            };
            let b = d.src64(&a[2], Ty::B64)?;
            let scale_d = match &a[3] {
                Operand::Imm(Imm::Int(v), _) if (0..=1).contains(v) => {
                    // a constant scale-d: a predicate register that is always (or never) set
                    let p = d.np;
                    d.np += 1;
                    (p, *v == 1)
                }
                o => {
                    let (p, neg) = d.pred(o)?;
                    (p, neg)
                }
            };
            let sgn = |o: &Operand| -> DResult<bool> { Ok(imm_in(o, -1..=1, "wgmma's imm-scale")? == -1) };
            let neg_a = sgn(&a[4])?;
            let neg_b = sgn(&a[5])?;
            let (trans_a, trans_b) = if regs_a {
                (false, imm_in(&a[6], 0..=1, "wgmma's imm-trans-b")? == 1)
            } else {
                (imm_in(&a[6], 0..=1, "wgmma's imm-trans-a")? == 1, imm_in(&a[7], 0..=1, "wgmma's imm-trans-b")? == 1)
            };
            Inst::Wgmma { n, bf, d: dd, a: wa, b, scale_d, neg_a, neg_b, trans_a, trans_b }
        }
        "elect" => {
            if !m.take("sync") {
                return unsupported(i);
            }
            nargs(i, 2)?;
            let (dd, p) = match &a[0] {
                Operand::Pair(x, y, _) => (
                    match x.as_ref() {
                        Operand::Sink(_) => None,
                        x => Some(d.dst32(x, Ty::B32)?),
                    },
                    d.pred(y)?.0,
                ),
                o => return derr(o.span(), "elect.sync takes `d|p, membermask`"),
            };
            Inst::Elect { d: dd, p, mask: d.src32(&a[1], Ty::B32)? }
        }
        "setmaxnreg" => {
            if m.take_any(&["inc", "dec"]).is_none() || !(m.take("sync") && m.take("aligned")) || m.one_type()? != Ty::U32 {
                return unsupported(i);
            }
            nargs(i, 1)?;
            let n = imm_in(&a[0], 24..=256, "setmaxnreg's count")? as u32;
            if !n.is_multiple_of(8) {
                return derr(a[0].span(), "setmaxnreg's count must be a multiple of 8");
            }
            Inst::Setmaxnreg { n }
        }
        "stmatrix" => {
            let (num, trans) = matrix_shape(i, m)?;
            if !matches!(m.space(), Space::Shared) || m.one_type()? != Ty::B16 {
                return unsupported(i);
            }
            nargs(i, 2)?;
            let regs = vec_regs(&a[1]);
            if regs.len() != num as usize {
                return derr(a[1].span(), format!("stmatrix .x{num} takes {num} registers"));
            }
            let mut s = [0u32; 4];
            for (k, r) in regs.iter().enumerate() {
                s[k] = d.src32(r, Ty::B32)?;
            }
            Inst::Stmatrix { num, trans, s, addr: d.addr(&a[0], Space::Shared)? }
        }
        _ => return unsupported(i),
    })
}

fn float_flags(m: &mut Mods) -> u8 {
    let mut fl = 0;
    if m.take("ftz") {
        fl |= FTZ;
    }
    if m.take("sat") {
        fl |= SAT;
    }
    fl
}

fn decode_binary(d: &mut Dec, i: &Instr, m: &mut Mods) -> DResult<Inst> {
    let a = &i.args;
    let op = i.op.as_str();
    // predicate logic
    if matches!(op, "and" | "or" | "xor") && m.list.iter().any(|s| s == "pred") {
        m.take("pred");
        nargs(i, 3)?;
        let bop = match op {
            "and" => BoolOp::And,
            "or" => BoolOp::Or,
            _ => BoolOp::Xor,
        };
        let (pd, _) = d.pred(&a[0])?;
        let (pa, an) = d.pred(&a[1])?;
        let (pb, bn) = d.pred(&a[2])?;
        return Ok(Inst::PredOp { op: bop, d: pd, a: pa, an, b: pb, bn });
    }
    let wide = op == "mul" && m.take("wide");
    let hi = op == "mul" && m.take("hi");
    if op == "mul" && !wide && !hi {
        m.take("lo");
    }
    let rnd = m.rnd();
    let full = m.take("full");
    let approx = m.take("approx");
    let fl = float_flags(m);
    let ty = m.one_type()?;
    nargs(i, 3)?;
    if wide {
        return match ty {
            Ty::U32 | Ty::S32 => Ok(Inst::MulWide { signed: ty.signed(), d: d.dst64(&a[0], Ty::U64)?, a: d.src32(&a[1], ty)?, b: d.src32(&a[2], ty)?, c: None }),
            Ty::U16 | Ty::S16 => Ok(Inst::MulWide16 { signed: ty.signed(), d: d.dst32(&a[0], Ty::U32)?, a: d.src32(&a[1], ty)?, b: d.src32(&a[2], ty)? }),
            _ => unsupported(i),
        };
    }
    match ty {
        Ty::F32 => {
            if let Some((r, int)) = rnd {
                if r != Rnd::N || int {
                    return derr(i.span, format!("unsupported instruction `{}`: only round-to-nearest float arithmetic is supported", m.full()));
                }
            }
            let fop = match op {
                "add" => FOp::Add,
                "sub" => FOp::Sub,
                "mul" => FOp::Mul,
                "div" => {
                    if rnd.is_none() && !full && !approx {
                        return derr(i.span, "div.f32 needs .rn, .full or .approx");
                    }
                    FOp::Div
                }
                "min" => FOp::Min,
                "max" => FOp::Max,
                _ => return unsupported(i),
            };
            Ok(Inst::F32 { op: fop, d: d.dst32(&a[0], ty)?, a: d.src32(&a[1], ty)?, b: d.src32(&a[2], ty)?, fl })
        }
        Ty::F64 => {
            if let Some((r, int)) = rnd {
                if r != Rnd::N || int {
                    return unsupported(i);
                }
            }
            let fop = match op {
                "add" => FOp::Add,
                "sub" => FOp::Sub,
                "mul" => FOp::Mul,
                "div" => FOp::Div,
                "min" => FOp::Min,
                "max" => FOp::Max,
                _ => return unsupported(i),
            };
            Ok(Inst::F64 { op: fop, d: d.dst64(&a[0], ty)?, a: d.src64(&a[1], ty)?, b: d.src64(&a[2], ty)? })
        }
        Ty::F16 | Ty::BF16 | Ty::F16x2 | Ty::BF16x2 => {
            let hop = match op {
                "add" => HOp::Add,
                "sub" => HOp::Sub,
                "mul" => HOp::Mul,
                "min" => HOp::Min,
                "max" => HOp::Max,
                _ => return unsupported(i),
            };
            if fl != 0 || matches!(rnd, Some((r, _)) if r != Rnd::N) {
                return unsupported(i);
            }
            let bf = matches!(ty, Ty::BF16 | Ty::BF16x2);
            let x2 = matches!(ty, Ty::F16x2 | Ty::BF16x2);
            let (dd, aa, bb) = (d.dst32(&a[0], ty)?, d.src32(&a[1], ty)?, d.src32(&a[2], ty)?);
            Ok(Inst::Half { op: hop, bf, x2, d: dd, a: aa, b: bb, c: bb })
        }
        _ => {
            if fl != 0 || rnd.is_some() || full || approx {
                return unsupported(i);
            }
            let s = ty.signed();
            let iop = match (op, s) {
                ("add", _) => IOp::Add,
                ("sub", _) => IOp::Sub,
                ("mul", _) if hi => {
                    if s {
                        IOp::MulHiS
                    } else {
                        IOp::MulHiU
                    }
                }
                ("mul", _) => IOp::MulLo,
                ("min", false) => IOp::MinU,
                ("min", true) => IOp::MinS,
                ("max", false) => IOp::MaxU,
                ("max", true) => IOp::MaxS,
                ("div", false) => IOp::DivU,
                ("div", true) => IOp::DivS,
                ("rem", false) => IOp::RemU,
                ("rem", true) => IOp::RemS,
                ("and", _) => IOp::And,
                ("or", _) => IOp::Or,
                ("xor", _) => IOp::Xor,
                ("shl", _) => IOp::Shl,
                ("shr", false) => IOp::ShrU,
                ("shr", true) => IOp::ShrS,
                _ => return unsupported(i),
            };
            match ty.bytes() {
                4 => {
                    let shift = matches!(iop, IOp::Shl | IOp::ShrU | IOp::ShrS);
                    Ok(Inst::I32 { op: iop, d: d.dst32(&a[0], ty)?, a: d.src32(&a[1], ty)?, b: d.src32(&a[2], if shift { Ty::U32 } else { ty })?, w16: false })
                }
                8 => {
                    if matches!(iop, IOp::Shl | IOp::ShrU | IOp::ShrS) {
                        Ok(Inst::Sh64 { op: iop, d: d.dst64(&a[0], ty)?, a: d.src64(&a[1], ty)?, b: d.src32(&a[2], Ty::U32)? })
                    } else {
                        Ok(Inst::I64 { op: iop, d: d.dst64(&a[0], ty)?, a: d.src64(&a[1], ty)?, b: d.src64(&a[2], ty)? })
                    }
                }
                2 if matches!(iop, IOp::Add | IOp::Sub | IOp::MulLo | IOp::And | IOp::Or | IOp::Xor | IOp::Shl) => {
                    let shift = iop == IOp::Shl;
                    Ok(Inst::I32 { op: iop, d: d.dst32(&a[0], ty)?, a: d.src32(&a[1], ty)?, b: d.src32(&a[2], if shift { Ty::U32 } else { ty })?, w16: true })
                }
                _ => unsupported(i),
            }
        }
    }
}

fn decode_mad(d: &mut Dec, i: &Instr, m: &mut Mods) -> DResult<Inst> {
    let a = &i.args;
    let wide = m.take("wide");
    let hi = m.take("hi");
    if !wide && !hi {
        m.take("lo");
    }
    let rnd = m.rnd();
    let fl = float_flags(m);
    let ty = m.one_type()?;
    nargs(i, 4)?;
    match ty {
        Ty::F32 => {
            if i.op == "fma" && rnd.is_none() {
                return derr(i.span, "fma.f32 needs a rounding modifier (.rn)");
            }
            if matches!(rnd, Some((r, int)) if r != Rnd::N || int) {
                return derr(i.span, format!("unsupported instruction `{}`: only fma.rn is supported", m.full()));
            }
            Ok(Inst::Fma32 { d: d.dst32(&a[0], ty)?, a: d.src32(&a[1], ty)?, b: d.src32(&a[2], ty)?, c: d.src32(&a[3], ty)?, fl })
        }
        Ty::F64 => {
            if matches!(rnd, Some((r, int)) if r != Rnd::N || int) || rnd.is_none() {
                return unsupported(i);
            }
            Ok(Inst::Fma64 { d: d.dst64(&a[0], ty)?, a: d.src64(&a[1], ty)?, b: d.src64(&a[2], ty)?, c: d.src64(&a[3], ty)? })
        }
        Ty::F16 | Ty::BF16 | Ty::F16x2 | Ty::BF16x2 if i.op == "fma" => {
            if fl != 0 || !matches!(rnd, Some((Rnd::N, false))) {
                return unsupported(i);
            }
            let bf = matches!(ty, Ty::BF16 | Ty::BF16x2);
            let x2 = matches!(ty, Ty::F16x2 | Ty::BF16x2);
            Ok(Inst::Half { op: HOp::Fma, bf, x2, d: d.dst32(&a[0], ty)?, a: d.src32(&a[1], ty)?, b: d.src32(&a[2], ty)?, c: d.src32(&a[3], ty)? })
        }
        Ty::U32 | Ty::S32 if i.op == "mad" && fl == 0 && rnd.is_none() => {
            if wide {
                Ok(Inst::MulWide { signed: ty.signed(), d: d.dst64(&a[0], Ty::U64)?, a: d.src32(&a[1], ty)?, b: d.src32(&a[2], ty)?, c: Some(d.src64(&a[3], Ty::U64)?) })
            } else {
                Ok(Inst::Mad32 { hi: if hi { Some(ty.signed()) } else { None }, d: d.dst32(&a[0], ty)?, a: d.src32(&a[1], ty)?, b: d.src32(&a[2], ty)?, c: d.src32(&a[3], ty)? })
            }
        }
        Ty::U64 | Ty::S64 if i.op == "mad" && !wide && !hi && fl == 0 && rnd.is_none() => Ok(Inst::Mad64 { d: d.dst64(&a[0], ty)?, a: d.src64(&a[1], ty)?, b: d.src64(&a[2], ty)?, c: d.src64(&a[3], ty)? }),
        _ => unsupported(i),
    }
}

fn decode_unary(d: &mut Dec, i: &Instr, m: &mut Mods) -> DResult<Inst> {
    let a = &i.args;
    let op = i.op.as_str();
    if op == "not" && m.list.iter().any(|s| s == "pred") {
        m.take("pred");
        nargs(i, 2)?;
        return Ok(Inst::PredNot { d: d.pred(&a[0])?.0, a: d.pred(&a[1])?.0 });
    }
    let rnd = m.rnd();
    let approx = m.take("approx");
    let full = m.take("full");
    let fl = float_flags(m);
    let ty = m.one_type()?;
    nargs(i, 2)?;
    let _ = full;
    if matches!(rnd, Some((r, int)) if r != Rnd::N || int) {
        return derr(i.span, format!("unsupported instruction `{}`: only round-to-nearest is supported", m.full()));
    }
    let fop = match op {
        "neg" => Some(FUop::Neg),
        "abs" => Some(FUop::Abs),
        "rcp" => Some(FUop::Rcp),
        "sqrt" => Some(FUop::Sqrt),
        "rsqrt" => Some(FUop::Rsqrt),
        "ex2" => Some(FUop::Ex2),
        "lg2" => Some(FUop::Lg2),
        "tanh" => Some(FUop::Tanh),
        "sin" => Some(FUop::Sin),
        "cos" => Some(FUop::Cos),
        _ => None,
    };
    let needs_mode = matches!(op, "rcp" | "sqrt");
    let needs_approx = matches!(op, "rsqrt" | "ex2" | "lg2" | "tanh" | "sin" | "cos");
    match ty {
        Ty::F32 | Ty::F64 => {
            let Some(fop) = fop else { return unsupported(i) };
            if needs_mode && rnd.is_none() && !approx {
                return derr(i.span, format!("`{}` needs .rn or .approx", m.full()));
            }
            if needs_approx && !approx {
                return derr(i.span, format!("`{}` needs .approx", m.full()));
            }
            if ty == Ty::F32 {
                Ok(Inst::FU32 { op: fop, d: d.dst32(&a[0], ty)?, a: d.src32(&a[1], ty)?, fl })
            } else {
                if fl != 0 || matches!(fop, FUop::Tanh | FUop::Sin | FUop::Cos | FUop::Ex2 | FUop::Lg2) {
                    return unsupported(i);
                }
                Ok(Inst::FU64 { op: fop, d: d.dst64(&a[0], ty)?, a: d.src64(&a[1], ty)? })
            }
        }
        Ty::F16 | Ty::BF16 | Ty::F16x2 | Ty::BF16x2 => {
            let hop = match op {
                "neg" => HOp::Neg,
                "abs" => HOp::Abs,
                _ => return unsupported(i),
            };
            let bf = matches!(ty, Ty::BF16 | Ty::BF16x2);
            let x2 = matches!(ty, Ty::F16x2 | Ty::BF16x2);
            let (dd, aa) = (d.dst32(&a[0], ty)?, d.src32(&a[1], ty)?);
            Ok(Inst::Half { op: hop, bf, x2, d: dd, a: aa, b: aa, c: aa })
        }
        _ => {
            if fl != 0 || rnd.is_some() || approx {
                return unsupported(i);
            }
            let iop = match (op, ty.signed()) {
                ("not", _) => IUop::Not,
                ("neg", true) => IUop::Neg,
                ("abs", true) => IUop::AbsS,
                ("popc", _) => IUop::Popc,
                ("clz", _) => IUop::Clz,
                ("brev", _) => IUop::Brev,
                _ => return unsupported(i),
            };
            match ty.bytes() {
                4 => Ok(Inst::IU32 { op: iop, d: d.dst32(&a[0], ty)?, a: d.src32(&a[1], ty)? }),
                8 => {
                    if matches!(iop, IUop::Popc | IUop::Clz) {
                        // result is 32-bit
                        return unsupported(i);
                    }
                    Ok(Inst::IU64 { op: iop, d: d.dst64(&a[0], ty)?, a: d.src64(&a[1], ty)? })
                }
                _ => unsupported(i),
            }
        }
    }
}

fn decode_mov(d: &mut Dec, i: &Instr, m: &mut Mods) -> DResult<Inst> {
    let a = &i.args;
    let ty = m.one_type()?;
    nargs(i, 2)?;
    if ty == Ty::Pred {
        let (pd, _) = d.pred(&a[0])?;
        return match &a[1] {
            Operand::Imm(Imm::Int(v), _) => Ok(Inst::PredSet { d: pd, v: *v != 0 }),
            o => Ok(Inst::PredMov { d: pd, a: d.pred(o)?.0 }),
        };
    }
    // pack / unpack
    if let Operand::Vector(parts, _) = &a[1] {
        let bits = match (ty.bytes(), parts.len()) {
            (4, 2) => 16,
            (8, 2) => 32,
            (8, 4) => 16,
            (4, 4) => 8,
            _ => return derr(i.span, "unsupported vector mov"),
        };
        if bits == 8 {
            return unsupported(i);
        }
        let mut ps = Vec::new();
        for p in parts {
            ps.push(d.src32(p, if bits == 16 { Ty::B16 } else { Ty::B32 })?);
        }
        return Ok(Inst::Pack { d: d.dst(&a[0], ty)?, parts: ps, bits });
    }
    if let Operand::Vector(parts, _) = &a[0] {
        let bits = match (ty.bytes(), parts.len()) {
            (4, 2) => 16,
            (8, 2) => 32,
            (8, 4) => 16,
            _ => return derr(i.span, "unsupported vector mov"),
        };
        let mut ps = Vec::new();
        for p in parts {
            ps.push(match p {
                Operand::Sink(_) => None,
                p => Some(d.dst32(p, if bits == 16 { Ty::B16 } else { Ty::B32 })?),
            });
        }
        return Ok(Inst::Unpack { a: d.src(&a[1], ty)?, parts: ps, bits });
    }
    match d.dst(&a[0], ty)? {
        Reg::R32(r) => Ok(Inst::Mov32 { d: r, a: d.src32(&a[1], ty)? }),
        Reg::R64(r) => Ok(Inst::Mov64 { d: r, a: d.src64(&a[1], ty)? }),
    }
}

fn decode_cvt(d: &mut Dec, i: &Instr, m: &mut Mods) -> DResult<Inst> {
    let a = &i.args;
    let rnd = m.rnd();
    let ftz = m.take("ftz");
    let sat = m.take("sat");
    let relu = m.take("relu");
    let satfinite = m.take("satfinite");
    let t = m.types();
    if t.len() != 2 {
        return derr(i.span, "cvt needs a destination and a source type");
    }
    let (to, from) = (t[0], t[1]);
    if matches!(to, Ty::F16x2 | Ty::BF16x2) {
        if from != Ty::F32 {
            return unsupported(i);
        }
        nargs(i, 3)?;
        let r = match rnd {
            Some((r, false)) => r,
            _ => return derr(i.span, "cvt to .f16x2/.bf16x2 needs .rn/.rz/.rm/.rp"),
        };
        return Ok(Inst::CvtPack { d: d.dst32(&a[0], Ty::B32)?, a: d.src32(&a[1], Ty::F32)?, b: d.src32(&a[2], Ty::F32)?, bf: to == Ty::BF16x2, rnd: r, relu, satfinite });
    }
    if matches!(from, Ty::F16x2 | Ty::BF16x2 | Ty::Pred) || to == Ty::Pred {
        return unsupported(i);
    }
    nargs(i, 2)?;
    // rounding requirements (PTX): float->int needs an integer rounding mode;
    // float->narrower float and int->float need a float rounding mode;
    // float->same float with .rXi rounds to an integral value.
    let (r, int_rnd) = match rnd {
        Some(x) => x,
        None => {
            let needs = (from.is_float() && to.is_int()) || (from.is_int() && to.is_float()) || (from.is_float() && to.is_float() && to.bytes() < from.bytes());
            if needs {
                return derr(i.span, format!("`{}` needs a rounding modifier", m.full()));
            }
            (Rnd::N, false)
        }
    };
    if from.is_float() && to.is_int() && !int_rnd {
        return derr(i.span, "float-to-integer cvt needs .rni/.rzi/.rmi/.rpi");
    }
    let dreg = d.any_reg(&a[0], to, true)?;
    let areg = d.any_reg(&a[1], from, false)?;
    Ok(Inst::Cvt { d: dreg, a: areg, from, to, rnd: r, int_rnd, sat, ftz, relu, satfinite })
}

/// Fill `reconv` of every branch with the first instruction of its block's
/// immediate post-dominator (RECONV_NONE where only the exit post-dominates).
fn compute_reconvergence(insts: &mut [DInst]) {
    let n = insts.len();
    // leaders
    let mut leader = vec![false; n + 1];
    leader[0] = true;
    for (k, di) in insts.iter().enumerate() {
        match di.inst {
            Inst::Bra { target, .. } => {
                leader[target as usize] = true;
                leader[k + 1] = true;
            }
            Inst::Exit => leader[k + 1] = true,
            _ => {}
        }
    }
    let starts: Vec<usize> = (0..n).filter(|&k| leader[k]).collect();
    let nb = starts.len();
    let mut block_of = vec![0usize; n];
    for (b, &s) in starts.iter().enumerate() {
        let e = if b + 1 < nb { starts[b + 1] } else { n };
        for k in s..e {
            block_of[k] = b;
        }
    }
    let exit = nb; // virtual exit node
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); nb];
    for b in 0..nb {
        let e = if b + 1 < nb { starts[b + 1] } else { n };
        let last = &insts[e - 1];
        let guarded = last.guard != NO_GUARD;
        let fall = |s: &mut Vec<usize>| {
            if e < n {
                s.push(block_of[e]);
            } else {
                s.push(exit);
            }
        };
        match last.inst {
            Inst::Bra { target, .. } => {
                succ[b].push(if (target as usize) < n { block_of[target as usize] } else { exit });
                if guarded {
                    fall(&mut succ[b]);
                }
            }
            Inst::Exit => {
                succ[b].push(exit);
                if guarded {
                    fall(&mut succ[b]);
                }
            }
            _ => fall(&mut succ[b]),
        }
    }
    // reverse graph: preds in reverse = forward successors. DFS from exit over forward predecessors.
    let mut pred: Vec<Vec<usize>> = vec![Vec::new(); nb + 1];
    for b in 0..nb {
        for &s in &succ[b] {
            pred[s].push(b);
        }
    }
    // postorder of the reverse graph starting at exit (iterative DFS)
    let mut order = Vec::with_capacity(nb + 1);
    let mut seen = vec![false; nb + 1];
    let mut stack: Vec<(usize, usize)> = vec![(exit, 0)];
    seen[exit] = true;
    while let Some(&mut (v, ref mut k)) = stack.last_mut() {
        if *k < pred[v].len() {
            let w = pred[v][*k];
            *k += 1;
            if !seen[w] {
                seen[w] = true;
                stack.push((w, 0));
            }
        } else {
            order.push(v);
            stack.pop();
        }
    }
    let mut po_num = vec![usize::MAX; nb + 1];
    for (i, &v) in order.iter().enumerate() {
        po_num[v] = i;
    }
    const UNDEF: usize = usize::MAX;
    let mut ipdom = vec![UNDEF; nb + 1];
    ipdom[exit] = exit;
    let mut changed = true;
    while changed {
        changed = false;
        for &v in order.iter().rev() {
            if v == exit {
                continue;
            }
            // "predecessors" in the reverse graph are forward successors
            let mut new = UNDEF;
            for &s in &succ[v] {
                if ipdom[s] == UNDEF {
                    continue;
                }
                if new == UNDEF {
                    new = s;
                } else {
                    let (mut x, mut y) = (s, new);
                    while x != y {
                        while po_num[x] < po_num[y] {
                            x = ipdom[x];
                        }
                        while po_num[y] < po_num[x] {
                            y = ipdom[y];
                        }
                    }
                    new = x;
                }
            }
            if new != ipdom[v] {
                ipdom[v] = new;
                changed = true;
            }
        }
    }
    for k in 0..n {
        if insts[k].inst.is_branch() {
            let b = block_of[k];
            let p = ipdom[b];
            insts[k].reconv = if p == UNDEF || p == exit { RECONV_NONE } else { starts[p] as u32 };
        }
    }
}
