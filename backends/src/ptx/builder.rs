//! A typed PTX builder.
//!
//! Kernels are built as a list of [`Stmt`]s (an optional guard predicate plus
//! an [`Inst`]), each instruction a typed value whose operands are checked
//! against its type when it is pushed ([`Inst::check`]); the text is produced
//! in one place, [`Module::render`]. Registers are virtual and typed by their
//! class ([`RegClass`]: `.pred`, `.b16`, `.b32`, `.b64`, `.f32`); ptxas does
//! the allocation, so emitters allocate fresh registers freely and reuse a
//! register only for loop-carried values.
//!
//! ```text
//! let mut k = KernelBuilder::new("axpy");
//! let x = k.param("x", ParamType::U64);
//! let px = k.ld_param(&x);              // ld.param.u64 %rd0, [x];
//! let tid = k.special(Special::TidX);  // mov.u32 %r0, %tid.x;
//! ...
//! let mut m = Module::new();
//! m.push(k.finish());
//! let text = m.render();
//! ```

use std::collections::BTreeMap;
use std::fmt::{self, Write};

/// The class (declared type) of a virtual register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegClass {
    Pred,
    B16,
    B32,
    B64,
    F32,
}

impl RegClass {
    pub const ALL: [RegClass; 5] = [RegClass::Pred, RegClass::B16, RegClass::B32, RegClass::B64, RegClass::F32];
    fn decl(self) -> &'static str {
        match self {
            RegClass::Pred => ".pred",
            RegClass::B16 => ".b16",
            RegClass::B32 => ".b32",
            RegClass::B64 => ".b64",
            RegClass::F32 => ".f32",
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            RegClass::Pred => "%p",
            RegClass::B16 => "%h",
            RegClass::B32 => "%r",
            RegClass::B64 => "%rd",
            RegClass::F32 => "%f",
        }
    }
}

/// A virtual register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reg {
    pub class: RegClass,
    pub id: u32,
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.class.prefix(), self.id)
    }
}

/// An instruction type suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    Pred,
    B16,
    B32,
    B64,
    U16,
    U32,
    U64,
    S32,
    S64,
    F32,
    Bf16,
    Bf16x2,
}

impl Type {
    pub fn name(self) -> &'static str {
        match self {
            Type::Pred => "pred",
            Type::B16 => "b16",
            Type::B32 => "b32",
            Type::B64 => "b64",
            Type::U16 => "u16",
            Type::U32 => "u32",
            Type::U64 => "u64",
            Type::S32 => "s32",
            Type::S64 => "s64",
            Type::F32 => "f32",
            Type::Bf16 => "bf16",
            Type::Bf16x2 => "bf16x2",
        }
    }
    /// Size in bytes (predicates: 0).
    pub fn bytes(self) -> u32 {
        match self {
            Type::Pred => 0,
            Type::B16 | Type::U16 | Type::Bf16 => 2,
            Type::B32 | Type::U32 | Type::S32 | Type::F32 | Type::Bf16x2 => 4,
            Type::B64 | Type::U64 | Type::S64 => 8,
        }
    }
    /// The register class a fresh destination of this type gets.
    pub fn class(self) -> RegClass {
        match self {
            Type::Pred => RegClass::Pred,
            Type::B16 | Type::U16 | Type::Bf16 => RegClass::B16,
            Type::B32 | Type::U32 | Type::S32 | Type::Bf16x2 => RegClass::B32,
            Type::F32 => RegClass::F32,
            Type::B64 | Type::U64 | Type::S64 => RegClass::B64,
        }
    }
    /// Whether a register of class `c` may be an operand of an instruction of
    /// this type (PTX: bit-size registers are compatible with every type of
    /// their size; `.f32` registers with `.f32` and `.b32`).
    pub fn accepts(self, c: RegClass) -> bool {
        match c {
            RegClass::Pred => self == Type::Pred,
            RegClass::B16 => matches!(self, Type::B16 | Type::U16 | Type::Bf16),
            RegClass::B32 => matches!(self, Type::B32 | Type::U32 | Type::S32 | Type::F32 | Type::Bf16x2),
            RegClass::F32 => matches!(self, Type::F32 | Type::B32),
            RegClass::B64 => matches!(self, Type::B64 | Type::U64 | Type::S64),
        }
    }
}

/// Special registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Special {
    TidX,
    TidY,
    CtaidX,
    CtaidY,
    CtaidZ,
    NtidX,
    NctaidX,
    LaneId,
}

impl Special {
    fn name(self) -> &'static str {
        match self {
            Special::TidX => "%tid.x",
            Special::TidY => "%tid.y",
            Special::CtaidX => "%ctaid.x",
            Special::CtaidY => "%ctaid.y",
            Special::CtaidZ => "%ctaid.z",
            Special::NtidX => "%ntid.x",
            Special::NctaidX => "%nctaid.x",
            Special::LaneId => "%laneid",
        }
    }
}

/// An instruction operand.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    Reg(Reg),
    /// An integer immediate (also used for `.b16`/`.b32`/`.b64` bit patterns).
    Imm(i64),
    /// An `.f32` immediate, rendered exactly as `0fXXXXXXXX`.
    F32(f32),
    Special(Special),
    /// The address of a `.shared` (or other) variable.
    Sym(String),
}

impl From<Reg> for Operand {
    fn from(r: Reg) -> Self {
        Operand::Reg(r)
    }
}
impl From<&Reg> for Operand {
    fn from(r: &Reg) -> Self {
        Operand::Reg(*r)
    }
}
impl From<i64> for Operand {
    fn from(v: i64) -> Self {
        Operand::Imm(v)
    }
}
impl From<u32> for Operand {
    fn from(v: u32) -> Self {
        Operand::Imm(v as i64)
    }
}
impl From<i32> for Operand {
    fn from(v: i32) -> Self {
        Operand::Imm(v as i64)
    }
}
impl From<u64> for Operand {
    fn from(v: u64) -> Self {
        Operand::Imm(v as i64)
    }
}
impl From<f32> for Operand {
    fn from(v: f32) -> Self {
        Operand::F32(v)
    }
}
impl From<Special> for Operand {
    fn from(s: Special) -> Self {
        Operand::Special(s)
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Reg(r) => write!(f, "{r}"),
            Operand::Imm(v) => write!(f, "{v}"),
            Operand::F32(v) => write!(f, "0f{:08X}", v.to_bits()),
            Operand::Special(s) => f.write_str(s.name()),
            Operand::Sym(s) => f.write_str(s),
        }
    }
}

impl Operand {
    pub fn as_reg(&self) -> Option<Reg> {
        match self {
            Operand::Reg(r) => Some(*r),
            _ => None,
        }
    }
}

/// A memory address: a register (or symbol) plus a constant byte offset.
#[derive(Clone, Debug, PartialEq)]
pub struct Addr {
    pub base: AddrBase,
    pub offset: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AddrBase {
    Reg(Reg),
    Sym(String),
}

impl Addr {
    pub fn reg(r: Reg) -> Addr {
        Addr { base: AddrBase::Reg(r), offset: 0 }
    }
    pub fn reg_off(r: Reg, offset: i64) -> Addr {
        Addr { base: AddrBase::Reg(r), offset }
    }
    pub fn sym(s: &str) -> Addr {
        Addr { base: AddrBase::Sym(s.to_string()), offset: 0 }
    }
    pub fn plus(&self, off: i64) -> Addr {
        Addr { base: self.base.clone(), offset: self.offset + off }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.base {
            AddrBase::Reg(r) => write!(f, "[{r}")?,
            AddrBase::Sym(s) => write!(f, "[{s}")?,
        }
        // ptxas takes `[r+-4]` for negative offsets
        if self.offset != 0 {
            write!(f, "+{}", self.offset)?;
        }
        f.write_str("]")
    }
}

/// State spaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Space {
    Global,
    Shared,
    Param,
    Local,
}

impl Space {
    fn name(self) -> &'static str {
        match self {
            Space::Global => "global",
            Space::Shared => "shared",
            Space::Param => "param",
            Space::Local => "local",
        }
    }
}

/// Two-operand operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    /// Integer multiply, low half (`mul.lo`).
    MulLo,
    /// Integer multiply to the double width (`mul.wide`; the destination is twice the type's size).
    MulWide,
    /// Floating-point multiply (`mul.rn`).
    Mul,
    /// Floating-point divide (`div.rn`) or integer divide.
    Div,
    Rem,
    Min,
    Max,
    And,
    Or,
    Xor,
    Shl,
    Shr,
}

impl BinOp {
    fn name(self, ty: Type) -> String {
        let f = ty == Type::F32;
        match self {
            BinOp::Add => "add".into(),
            BinOp::Sub => "sub".into(),
            BinOp::MulLo => "mul.lo".into(),
            BinOp::MulWide => "mul.wide".into(),
            BinOp::Mul => if f { "mul.rn".into() } else { "mul.lo".into() },
            BinOp::Div => if f { "div.rn".into() } else { "div".into() },
            BinOp::Rem => "rem".into(),
            BinOp::Min => "min".into(),
            BinOp::Max => "max".into(),
            BinOp::And => "and".into(),
            BinOp::Or => "or".into(),
            BinOp::Xor => "xor".into(),
            BinOp::Shl => "shl".into(),
            BinOp::Shr => "shr".into(),
        }
    }
}

/// One-operand operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
    Abs,
    /// `sqrt.rn.f32`
    Sqrt,
    /// `rcp.rn.f32`
    Rcp,
    /// `rsqrt.approx.f32`
    RsqrtApprox,
    /// `ex2.approx.f32`
    Ex2Approx,
    /// `lg2.approx.f32`
    Lg2Approx,
}

impl UnOp {
    fn name(self) -> &'static str {
        match self {
            UnOp::Neg => "neg",
            UnOp::Not => "not",
            UnOp::Abs => "abs",
            UnOp::Sqrt => "sqrt.rn",
            UnOp::Rcp => "rcp.rn",
            UnOp::RsqrtApprox => "rsqrt.approx",
            UnOp::Ex2Approx => "ex2.approx",
            UnOp::Lg2Approx => "lg2.approx",
        }
    }
}

/// Comparison operators of `setp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn name(self) -> &'static str {
        match self {
            Cmp::Eq => "eq",
            Cmp::Ne => "ne",
            Cmp::Lt => "lt",
            Cmp::Le => "le",
            Cmp::Gt => "gt",
            Cmp::Ge => "ge",
        }
    }
}

/// Rounding modes of `cvt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rnd {
    Rn,
    Rz,
    Rni,
    Rzi,
}

impl Rnd {
    fn name(self) -> &'static str {
        match self {
            Rnd::Rn => ".rn",
            Rnd::Rz => ".rz",
            Rnd::Rni => ".rni",
            Rnd::Rzi => ".rzi",
        }
    }
}

/// Cache operator of `cp.async`: `.ca` (4, 8 or 16 bytes) or `.cg` (16 bytes, bypasses L1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpCache {
    Ca,
    Cg,
}

/// Lane-exchange modes of `shfl.sync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

impl ShflMode {
    fn name(self) -> &'static str {
        match self {
            ShflMode::Up => "up",
            ShflMode::Down => "down",
            ShflMode::Bfly => "bfly",
            ShflMode::Idx => "idx",
        }
    }
}

/// A branch target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Label(pub u32);

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "$L{}", self.0)
    }
}

/// A PTX instruction.
#[derive(Clone, Debug, PartialEq)]
pub enum Inst {
    Mov { ty: Type, dst: Reg, src: Operand },
    Unary { op: UnOp, ty: Type, dst: Reg, a: Operand },
    Bin { op: BinOp, ty: Type, dst: Reg, a: Operand, b: Operand },
    /// `mad.lo` / `mad.wide` (integer): `dst = a * b + c`.
    Mad { wide: bool, ty: Type, dst: Reg, a: Operand, b: Operand, c: Operand },
    /// `fma.rn.f32`
    Fma { dst: Reg, a: Operand, b: Operand, c: Operand },
    Setp { cmp: Cmp, ty: Type, dst: Reg, a: Operand, b: Operand },
    /// `and/or/not` on predicates are `Bin`/`Unary` with type `Pred`.
    Selp { ty: Type, dst: Reg, a: Operand, b: Operand, p: Reg },
    /// `cvt[.rnd][.sat].dty.sty dst, src[, src2]` (`src2` only for the packed `.bf16x2`).
    Cvt { dty: Type, sty: Type, rnd: Option<Rnd>, dst: Reg, src: Operand, src2: Option<Operand> },
    /// `cvta.to.global.u64` (address of a generic pointer in the global window).
    CvtaToGlobal { dst: Reg, src: Reg },
    /// `ld[.space][.nc][.vN].ty`
    Ld { space: Space, nc: bool, ty: Type, dst: Vec<Reg>, addr: Addr },
    St { space: Space, ty: Type, src: Vec<Operand>, addr: Addr },
    /// `red.space.add.ty [addr], src` (atomic reduction, no result).
    RedAdd { space: Space, ty: Type, addr: Addr, src: Operand },
    /// `cp.async.{ca,cg}.shared.global [dst], [src], size[, src_size]`.
    CpAsync { cache: CpCache, dst: Addr, src: Addr, size: u32, src_size: Option<Operand> },
    CpAsyncCommit,
    CpAsyncWait(u32),
    CpAsyncWaitAll,
    /// `bar.sync id`
    BarSync(u32),
    /// `ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16`
    Ldmatrix { trans: bool, dst: Vec<Reg>, addr: Addr },
    /// `shfl.sync.mode.b32 dst, a, b, c, membermask` (`b`: lane / offset /
    /// xor mask, `c`: clamp and segment mask, e.g. `0x1f` for the whole warp).
    Shfl { mode: ShflMode, dst: Reg, a: Operand, b: Operand, c: Operand, mask: Operand },
    /// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d, a, b, c`
    MmaBf16 { d: [Reg; 4], a: [Reg; 4], b: [Reg; 2], c: [Reg; 4] },
    Bra { target: Label, uni: bool },
    Ret,
    // ---- Hopper (sm_90a): mbarriers, TMA, the async proxy, wgmma
    /// `cvta.param.u64 dst, src` (the generic address of a kernel parameter, e.g. a tensor map)
    CvtaParam { dst: Reg, src: Reg },
    /// `mbarrier.init.shared::cta.b64 [addr], count`
    MbarInit { addr: Addr, count: Operand },
    /// `mbarrier.arrive{.expect_tx}.shared::cta.b64 _, [addr]{, tx}`
    MbarArrive { addr: Addr, expect_tx: Option<Operand> },
    /// `mbarrier.try_wait.parity.shared::cta.b64 dst, [addr], parity`
    MbarTryWait { dst: Reg, addr: Addr, parity: Operand },
    /// `cp.async.bulk.tensor.Nd.shared::cluster.global.tile.mbarrier::complete_tx::bytes [dst], [map, {coords}], [mbar]`
    TmaLoad { dst: Addr, map: Reg, coords: Vec<Operand>, mbar: Addr },
    /// `cp.async.bulk.tensor.Nd.global.shared::cta.tile.bulk_group [map, {coords}], [src]`
    TmaStore { map: Reg, coords: Vec<Operand>, src: Addr },
    /// `cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [dst], [src], bytes`:
    /// adds `bytes / 4` contiguous f32 from shared memory into global memory
    /// (element-wise atomic adds; 16-byte aligned addresses, `bytes % 16 == 0`)
    BulkReduceAddF32 { dst: Addr, src: Addr, bytes: Operand },
    /// `cp.async.bulk.commit_group`
    BulkCommit,
    /// `cp.async.bulk.wait_group{.read} n`
    BulkWait { n: u32, read: bool },
    /// `fence.proxy.async.shared::cta` (ordinary shared stores become visible to TMA and wgmma)
    FenceProxyAsync,
    /// `fence.mbarrier_init.release.cluster`
    FenceMbarrierInit,
    /// `wgmma.fence.sync.aligned`
    WgmmaFence,
    /// `wgmma.commit_group.sync.aligned`
    WgmmaCommit,
    /// `wgmma.wait_group.sync.aligned n`
    WgmmaWait(u32),
    /// `wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16 {d}, a, b, scale_d, 1, 1{, trans_a}, trans_b`
    Wgmma { d: Vec<Reg>, a: WgmmaA, b: Reg, scale_d: Operand, trans_a: bool, trans_b: bool },
    /// `elect.sync _|dst, 0xffffffff` (one lane of the warp)
    Elect { dst: Reg },
    /// `setmaxnreg.{inc,dec}.sync.aligned.u32 n`
    Setmaxnreg { inc: bool, n: u32 },
    /// `stmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16 [addr], {src}`
    Stmatrix { trans: bool, src: Vec<Reg>, addr: Addr },
    /// `bar.sync id, count` / `bar.arrive id, count`: a named barrier over `count` threads
    BarCount { id: u32, count: u32, arrive: bool },
}

/// The A operand of a wgmma: a shared-memory matrix descriptor (64-bit) or
/// a 64x16 fragment in four registers of bf16 pairs.
#[derive(Clone, Debug, PartialEq)]
pub enum WgmmaA {
    Desc(Reg),
    Regs([Reg; 4]),
}

/// An optional guard predicate `@p` / `@!p`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guard {
    pub pred: Reg,
    pub negate: bool,
}

/// One body line.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    Inst { guard: Option<Guard>, inst: Inst },
    Label(Label),
    Comment(String),
}

fn want(ok: bool, inst: &Inst, what: &str) {
    assert!(ok, "ill-typed PTX instruction ({what}): {inst:?}");
}

fn op_ok(ty: Type, o: &Operand) -> bool {
    match o {
        Operand::Reg(r) => ty.accepts(r.class),
        Operand::F32(_) => ty == Type::F32 || ty == Type::B32,
        Operand::Imm(_) => ty != Type::Pred,
        Operand::Special(_) => matches!(ty, Type::U32 | Type::B32 | Type::S32),
        Operand::Sym(_) => matches!(ty, Type::U32 | Type::U64 | Type::B32 | Type::B64),
    }
}

fn wide(ty: Type) -> Type {
    match ty {
        Type::U32 => Type::U64,
        Type::S32 => Type::S64,
        Type::B32 => Type::B64,
        t => panic!("no wide form of {t:?}"),
    }
}

impl Inst {
    /// Check operand classes against the instruction's type; panics on an
    /// emitter bug (an ill-typed instruction never reaches the text).
    pub fn check(&self) {
        match self {
            Inst::Mov { ty, dst, src } => {
                want(ty.accepts(dst.class) && op_ok(*ty, src), self, "mov")
            }
            Inst::Unary { ty, dst, a, .. } => want(ty.accepts(dst.class) && op_ok(*ty, a), self, "unary"),
            Inst::Bin { op, ty, dst, a, b } => {
                let dt = if *op == BinOp::MulWide { wide(*ty) } else { *ty };
                let bt = if matches!(op, BinOp::Shl | BinOp::Shr) { Type::U32 } else { *ty };
                want(dt.accepts(dst.class) && op_ok(*ty, a) && op_ok(bt, b), self, "binary")
            }
            Inst::Mad { wide: w, ty, dst, a, b, c } => {
                let dt = if *w { wide(*ty) } else { *ty };
                want(dt.accepts(dst.class) && op_ok(*ty, a) && op_ok(*ty, b) && op_ok(dt, c), self, "mad")
            }
            Inst::Fma { dst, a, b, c } => want(
                Type::F32.accepts(dst.class) && op_ok(Type::F32, a) && op_ok(Type::F32, b) && op_ok(Type::F32, c),
                self,
                "fma",
            ),
            Inst::Setp { ty, dst, a, b, .. } => {
                want(dst.class == RegClass::Pred && op_ok(*ty, a) && op_ok(*ty, b), self, "setp")
            }
            Inst::Selp { ty, dst, a, b, p } => want(
                ty.accepts(dst.class) && op_ok(*ty, a) && op_ok(*ty, b) && p.class == RegClass::Pred,
                self,
                "selp",
            ),
            Inst::Cvt { dty, sty, dst, src, src2, .. } => {
                want(dty.accepts(dst.class) && op_ok(*sty, src), self, "cvt");
                want(src2.is_some() == (*dty == Type::Bf16x2), self, "cvt bf16x2 takes two sources");
                if let Some(s2) = src2 {
                    want(op_ok(*sty, s2), self, "cvt src2");
                }
            }
            Inst::CvtaToGlobal { dst, src } => {
                want(dst.class == RegClass::B64 && src.class == RegClass::B64, self, "cvta")
            }
            Inst::Ld { space, ty, dst, addr, .. } => {
                want(matches!(dst.len(), 1 | 2 | 4), self, "vector width");
                want(dst.iter().all(|r| ty.accepts(r.class)), self, "ld dst");
                check_addr(*space, addr, self);
            }
            Inst::St { space, ty, src, addr } => {
                want(matches!(src.len(), 1 | 2 | 4), self, "vector width");
                want(src.iter().all(|o| op_ok(*ty, o)), self, "st src");
                check_addr(*space, addr, self);
            }
            Inst::RedAdd { space, ty, addr, src } => {
                want(matches!(space, Space::Global | Space::Shared), self, "red space");
                want(matches!(ty, Type::F32 | Type::U32 | Type::S32 | Type::U64), self, "red type");
                want(op_ok(*ty, src), self, "red src");
                check_addr(*space, addr, self);
            }
            Inst::CpAsync { cache, dst, src, size, src_size } => {
                want(matches!(size, 4 | 8 | 16), self, "cp-size");
                want(*cache == CpCache::Ca || *size == 16, self, ".cg needs 16 bytes");
                check_addr(Space::Shared, dst, self);
                check_addr(Space::Global, src, self);
                if let Some(s) = src_size {
                    want(op_ok(Type::U32, s), self, "src-size");
                }
            }
            Inst::Ldmatrix { dst, addr, .. } => {
                want(matches!(dst.len(), 1 | 2 | 4), self, "ldmatrix count");
                want(dst.iter().all(|r| r.class == RegClass::B32), self, "ldmatrix dst");
                check_addr(Space::Shared, addr, self);
            }
            Inst::Shfl { dst, a, b, c, mask, .. } => want(
                Type::B32.accepts(dst.class)
                    && op_ok(Type::B32, a)
                    && op_ok(Type::B32, b)
                    && op_ok(Type::B32, c)
                    && op_ok(Type::B32, mask),
                self,
                "shfl",
            ),
            Inst::MmaBf16 { d, a, b, c } => {
                want(d.iter().chain(c.iter()).all(|r| r.class == RegClass::F32), self, "mma f32 accumulators");
                want(a.iter().chain(b.iter()).all(|r| r.class == RegClass::B32), self, "mma bf16x2 operands");
            }
            Inst::CpAsyncCommit
            | Inst::CpAsyncWait(_)
            | Inst::CpAsyncWaitAll
            | Inst::BarSync(_)
            | Inst::Bra { .. }
            | Inst::Ret
            | Inst::BulkCommit
            | Inst::FenceProxyAsync
            | Inst::FenceMbarrierInit
            | Inst::WgmmaFence
            | Inst::WgmmaCommit => {}
            Inst::CvtaParam { dst, src } => want(dst.class == RegClass::B64 && src.class == RegClass::B64, self, "cvta.param"),
            Inst::MbarInit { addr, count } => {
                check_addr(Space::Shared, addr, self);
                want(op_ok(Type::U32, count), self, "mbarrier count");
            }
            Inst::MbarArrive { addr, expect_tx } => {
                check_addr(Space::Shared, addr, self);
                if let Some(t) = expect_tx {
                    want(op_ok(Type::U32, t), self, "expect_tx bytes");
                }
            }
            Inst::MbarTryWait { dst, addr, parity } => {
                want(dst.class == RegClass::Pred && op_ok(Type::U32, parity), self, "try_wait");
                check_addr(Space::Shared, addr, self);
            }
            Inst::TmaLoad { dst, map, coords, mbar } => {
                want(map.class == RegClass::B64 && (1..=5).contains(&coords.len()) && coords.iter().all(|c| op_ok(Type::S32, c)), self, "tma load");
                check_addr(Space::Shared, dst, self);
                check_addr(Space::Shared, mbar, self);
            }
            Inst::TmaStore { map, coords, src } => {
                want(map.class == RegClass::B64 && (1..=5).contains(&coords.len()) && coords.iter().all(|c| op_ok(Type::S32, c)), self, "tma store");
                check_addr(Space::Shared, src, self);
            }
            Inst::BulkReduceAddF32 { dst, src, bytes } => {
                check_addr(Space::Global, dst, self);
                check_addr(Space::Shared, src, self);
                want(op_ok(Type::U32, bytes), self, "bulk reduce bytes");
            }
            Inst::BulkWait { n, .. } => want(*n < 64, self, "bulk wait_group count"),
            Inst::WgmmaWait(n) => want(*n < 8, self, "wgmma wait_group count"),
            Inst::Wgmma { d, a, b, scale_d, trans_a, .. } => {
                let n = d.len() * 2;
                want((8..=256).contains(&n) && n % 8 == 0, self, "wgmma N (d holds N/2 f32 registers)");
                want(d.iter().all(|r| r.class == RegClass::F32), self, "wgmma f32 accumulators");
                want(b.class == RegClass::B64, self, "wgmma B descriptor");
                match a {
                    WgmmaA::Desc(r) => want(r.class == RegClass::B64, self, "wgmma A descriptor"),
                    WgmmaA::Regs(r) => want(r.iter().all(|x| x.class == RegClass::B32) && !*trans_a, self, "wgmma A fragment (no transpose)"),
                }
                want(matches!(scale_d, Operand::Reg(Reg { class: RegClass::Pred, .. }) | Operand::Imm(0 | 1)), self, "wgmma scale-d");
            }
            Inst::Elect { dst } => want(dst.class == RegClass::Pred, self, "elect"),
            Inst::Setmaxnreg { n, .. } => want((24..=256).contains(n) && n % 8 == 0, self, "setmaxnreg count"),
            Inst::Stmatrix { src, addr, .. } => {
                want(matches!(src.len(), 1 | 2 | 4) && src.iter().all(|r| r.class == RegClass::B32), self, "stmatrix registers");
                check_addr(Space::Shared, addr, self);
            }
            Inst::BarCount { id, count, .. } => want(*id < 16 && *count > 0 && count % 32 == 0, self, "named barrier"),
        }
    }

    /// Registers written by the instruction.
    pub fn defs(&self) -> Vec<Reg> {
        match self {
            Inst::Mov { dst, .. }
            | Inst::Unary { dst, .. }
            | Inst::Bin { dst, .. }
            | Inst::Mad { dst, .. }
            | Inst::Fma { dst, .. }
            | Inst::Setp { dst, .. }
            | Inst::Selp { dst, .. }
            | Inst::Cvt { dst, .. }
            | Inst::CvtaToGlobal { dst, .. }
            | Inst::Shfl { dst, .. } => vec![*dst],
            Inst::Ld { dst, .. } | Inst::Ldmatrix { dst, .. } => dst.clone(),
            Inst::MmaBf16 { d, .. } => d.to_vec(),
            Inst::Wgmma { d, .. } => d.clone(),
            Inst::CvtaParam { dst, .. } | Inst::MbarTryWait { dst, .. } | Inst::Elect { dst } => vec![*dst],
            _ => vec![],
        }
    }
}

fn check_addr(space: Space, a: &Addr, inst: &Inst) {
    if let AddrBase::Reg(r) = &a.base {
        // Shared addresses may be 32-bit (the shared window); others are 64-bit.
        let ok = match space {
            Space::Shared => matches!(r.class, RegClass::B32 | RegClass::B64),
            _ => r.class == RegClass::B64,
        };
        want(ok, inst, "address register");
    }
}

fn join<T: fmt::Display>(xs: &[T]) -> String {
    xs.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
}

fn vec_suffix(n: usize) -> &'static str {
    match n {
        1 => "",
        2 => ".v2",
        4 => ".v4",
        _ => unreachable!(),
    }
}

fn braced<T: fmt::Display>(xs: &[T]) -> String {
    if xs.len() == 1 {
        xs[0].to_string()
    } else {
        format!("{{{}}}", join(xs))
    }
}

impl fmt::Display for Inst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Inst::Mov { ty, dst, src } => write!(f, "mov.{} {dst}, {src};", ty.name()),
            Inst::Unary { op, ty, dst, a } => write!(f, "{}.{} {dst}, {a};", op.name(), ty.name()),
            Inst::Bin { op, ty, dst, a, b } => {
                let t = match op {
                    BinOp::Shl => match ty {
                        Type::U32 | Type::S32 => "b32",
                        Type::U64 | Type::S64 => "b64",
                        t => t.name(),
                    },
                    BinOp::And | BinOp::Or | BinOp::Xor => match ty {
                        Type::U32 | Type::S32 => "b32",
                        Type::U64 | Type::S64 => "b64",
                        t => t.name(),
                    },
                    _ => ty.name(),
                };
                write!(f, "{}.{t} {dst}, {a}, {b};", op.name(*ty))
            }
            Inst::Mad { wide, ty, dst, a, b, c } => {
                write!(f, "mad.{}.{} {dst}, {a}, {b}, {c};", if *wide { "wide" } else { "lo" }, ty.name())
            }
            Inst::Fma { dst, a, b, c } => write!(f, "fma.rn.f32 {dst}, {a}, {b}, {c};"),
            Inst::Setp { cmp, ty, dst, a, b } => write!(f, "setp.{}.{} {dst}, {a}, {b};", cmp.name(), ty.name()),
            Inst::Selp { ty, dst, a, b, p } => write!(f, "selp.{} {dst}, {a}, {b}, {p};", ty.name()),
            Inst::Cvt { dty, sty, rnd, dst, src, src2 } => {
                write!(f, "cvt{}.{}.{} {dst}, {src}", rnd.map(|r| r.name()).unwrap_or(""), dty.name(), sty.name())?;
                if let Some(s2) = src2 {
                    write!(f, ", {s2}")?;
                }
                f.write_str(";")
            }
            Inst::CvtaToGlobal { dst, src } => write!(f, "cvta.to.global.u64 {dst}, {src};"),
            Inst::Ld { space, nc, ty, dst, addr } => write!(
                f,
                "ld.{}{}{}.{} {}, {addr};",
                space.name(),
                if *nc { ".nc" } else { "" },
                vec_suffix(dst.len()),
                ty.name(),
                braced(dst)
            ),
            Inst::St { space, ty, src, addr } => {
                write!(f, "st.{}{}.{} {addr}, {};", space.name(), vec_suffix(src.len()), ty.name(), braced(src))
            }
            Inst::RedAdd { space, ty, addr, src } => write!(f, "red.{}.add.{} {addr}, {src};", space.name(), ty.name()),
            Inst::CpAsync { cache, dst, src, size, src_size } => {
                let c = match cache {
                    CpCache::Ca => "ca",
                    CpCache::Cg => "cg",
                };
                write!(f, "cp.async.{c}.shared.global {dst}, {src}, {size}")?;
                if let Some(s) = src_size {
                    write!(f, ", {s}")?;
                }
                f.write_str(";")
            }
            Inst::CpAsyncCommit => f.write_str("cp.async.commit_group;"),
            Inst::CpAsyncWait(n) => write!(f, "cp.async.wait_group {n};"),
            Inst::CpAsyncWaitAll => f.write_str("cp.async.wait_all;"),
            Inst::BarSync(id) => write!(f, "bar.sync {id};"),
            Inst::Ldmatrix { trans, dst, addr } => write!(
                f,
                "ldmatrix.sync.aligned.m8n8.x{}{}.shared.b16 {{{}}}, {addr};",
                dst.len(),
                if *trans { ".trans" } else { "" },
                join(dst)
            ),
            Inst::Shfl { mode, dst, a, b, c, mask } => {
                write!(f, "shfl.sync.{}.b32 {dst}, {a}, {b}, {c}, {mask};", mode.name())
            }
            Inst::MmaBf16 { d, a, b, c } => write!(
                f,
                "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{{}}}, {{{}}}, {{{}}}, {{{}}};",
                join(d),
                join(a),
                join(b),
                join(c)
            ),
            Inst::Bra { target, uni } => write!(f, "bra{} {target};", if *uni { ".uni" } else { "" }),
            Inst::Ret => f.write_str("ret;"),
            Inst::CvtaParam { dst, src } => write!(f, "cvta.param.u64 {dst}, {src};"),
            Inst::MbarInit { addr, count } => write!(f, "mbarrier.init.shared::cta.b64 {addr}, {count};"),
            Inst::MbarArrive { addr, expect_tx: None } => write!(f, "mbarrier.arrive.shared::cta.b64 _, {addr};"),
            Inst::MbarArrive { addr, expect_tx: Some(t) } => write!(f, "mbarrier.arrive.expect_tx.shared::cta.b64 _, {addr}, {t};"),
            Inst::MbarTryWait { dst, addr, parity } => write!(f, "mbarrier.try_wait.parity.shared::cta.b64 {dst}, {addr}, {parity};"),
            Inst::TmaLoad { dst, map, coords, mbar } => write!(
                f,
                "cp.async.bulk.tensor.{}d.shared::cluster.global.tile.mbarrier::complete_tx::bytes {dst}, [{map}, {{{}}}], {mbar};",
                coords.len(),
                join(coords)
            ),
            Inst::TmaStore { map, coords, src } => {
                write!(f, "cp.async.bulk.tensor.{}d.global.shared::cta.tile.bulk_group [{map}, {{{}}}], {src};", coords.len(), join(coords))
            }
            Inst::BulkReduceAddF32 { dst, src, bytes } => write!(f, "cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 {dst}, {src}, {bytes};"),
            Inst::BulkCommit => f.write_str("cp.async.bulk.commit_group;"),
            Inst::BulkWait { n, read } => write!(f, "cp.async.bulk.wait_group{} {n};", if *read { ".read" } else { "" }),
            Inst::FenceProxyAsync => f.write_str("fence.proxy.async.shared::cta;"),
            Inst::FenceMbarrierInit => f.write_str("fence.mbarrier_init.release.cluster;"),
            Inst::WgmmaFence => f.write_str("wgmma.fence.sync.aligned;"),
            Inst::WgmmaCommit => f.write_str("wgmma.commit_group.sync.aligned;"),
            Inst::WgmmaWait(n) => write!(f, "wgmma.wait_group.sync.aligned {n};"),
            Inst::Wgmma { d, a, b, scale_d, trans_a, trans_b } => {
                write!(f, "wgmma.mma_async.sync.aligned.m64n{}k16.f32.bf16.bf16 {{{}}}, ", d.len() * 2, join(d))?;
                match a {
                    WgmmaA::Desc(r) => write!(f, "{r}, {b}, {scale_d}, 1, 1, {}, {};", *trans_a as u32, *trans_b as u32),
                    WgmmaA::Regs(r) => write!(f, "{{{}}}, {b}, {scale_d}, 1, 1, {};", join(r), *trans_b as u32),
                }
            }
            Inst::Elect { dst } => write!(f, "elect.sync _|{dst}, 0xffffffff;"),
            Inst::Setmaxnreg { inc, n } => write!(f, "setmaxnreg.{}.sync.aligned.u32 {n};", if *inc { "inc" } else { "dec" }),
            Inst::Stmatrix { trans, src, addr } => write!(
                f,
                "stmatrix.sync.aligned.m8n8.x{}{}.shared.b16 {addr}, {{{}}};",
                src.len(),
                if *trans { ".trans" } else { "" },
                join(src)
            ),
            Inst::BarCount { id, count, arrive } => write!(f, "bar.{} {id}, {count};", if *arrive { "arrive" } else { "sync" }),
        }
    }
}

/// Kernel parameter types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    U64,
    U32,
    S32,
    F32,
    /// `.param .align A .b8 name[S]`: an opaque byte array passed by value
    /// (a TMA tensor map is 128 bytes, 64-byte aligned); addressed, not loaded.
    Bytes { align: u32, size: u32 },
}

impl ParamType {
    /// The register type a scalar parameter loads as.
    fn ty(self) -> Option<Type> {
        match self {
            ParamType::U64 => Some(Type::U64),
            ParamType::U32 => Some(Type::U32),
            ParamType::S32 => Some(Type::S32),
            ParamType::F32 => Some(Type::F32),
            ParamType::Bytes { .. } => None,
        }
    }

    /// Bytes the parameter occupies in the parameter buffer.
    pub fn size(self) -> u32 {
        match self {
            ParamType::U64 => 8,
            ParamType::U32 | ParamType::S32 | ParamType::F32 => 4,
            ParamType::Bytes { size, .. } => size,
        }
    }

    /// The declaration of parameter `sym` as PTX text.
    fn decl(self, sym: &str) -> String {
        match self {
            ParamType::U64 => format!(".param .u64 {sym}"),
            ParamType::U32 => format!(".param .u32 {sym}"),
            ParamType::S32 => format!(".param .s32 {sym}"),
            ParamType::F32 => format!(".param .f32 {sym}"),
            ParamType::Bytes { align, size } => format!(".param .align {align} .b8 {sym}[{size}]"),
        }
    }
}

/// A kernel parameter.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Param {
    pub name: String,
    pub ty: ParamType,
}

/// A static `.shared` array declared inside a kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedDecl {
    pub name: String,
    pub align: u32,
    pub bytes: u32,
}

/// A finished kernel.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<Param>,
    /// `.maxntid` (threads per block), when known.
    pub max_threads: Option<u32>,
    pub min_blocks_per_sm: Option<u32>,
    pub shared: Vec<SharedDecl>,
    /// `extern .shared` (dynamic) array used by the kernel: name and alignment.
    pub extern_shared: Option<(String, u32)>,
    /// `.local` (per-thread) arrays.
    pub local: Vec<SharedDecl>,
    pub body: Vec<Stmt>,
    pub reg_counts: BTreeMap<RegClass, u32>,
}

/// Builds one `.entry`.
pub struct KernelBuilder {
    name: String,
    params: Vec<Param>,
    max_threads: Option<u32>,
    min_blocks_per_sm: Option<u32>,
    shared: Vec<SharedDecl>,
    extern_shared: Option<(String, u32)>,
    local: Vec<SharedDecl>,
    body: Vec<Stmt>,
    next_reg: BTreeMap<RegClass, u32>,
    next_label: u32,
    guard: Option<Guard>,
}

impl KernelBuilder {
    pub fn new(name: &str) -> Self {
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.is_empty(),
            "kernel name `{name}` is not a PTX identifier"
        );
        KernelBuilder {
            name: name.to_string(),
            params: vec![],
            max_threads: None,
            min_blocks_per_sm: None,
            shared: vec![],
            extern_shared: None,
            local: vec![],
            body: vec![],
            next_reg: BTreeMap::new(),
            next_label: 0,
            guard: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `.maxntid threads, 1, 1` (and `.minnctapersm` when given).
    pub fn max_threads(&mut self, threads: u32, min_blocks: Option<u32>) {
        self.max_threads = Some(threads);
        self.min_blocks_per_sm = min_blocks;
    }

    // ---- declarations -------------------------------------------------

    /// Declare a parameter (in order).
    pub fn param(&mut self, name: &str, ty: ParamType) -> Param {
        assert!(!self.params.iter().any(|p| p.name == name), "duplicate parameter {name}");
        if let ParamType::Bytes { align, size } = ty {
            assert!(align.is_power_of_two() && size > 0 && size % align == 0, "byte parameter {name}: align {align}, size {size}");
        }
        let p = Param { name: name.to_string(), ty };
        self.params.push(p.clone());
        p
    }

    /// Parameter names are scoped to their entry, so the symbol does not
    /// repeat the kernel's name: an entry's text (less its name) is the same
    /// whatever it is called, which deduplication and the ptxas cache key on.
    fn param_sym(&self, p: &Param) -> String {
        param_sym(&p.name)
    }

    /// Load a scalar parameter into a fresh register.
    pub fn ld_param(&mut self, p: &Param) -> Reg {
        let ty = p.ty.ty().unwrap_or_else(|| panic!("parameter {} is a byte array: address it, do not load it", p.name));
        let dst = self.reg(ty.class());
        let sym = self.param_sym(p);
        self.push(Inst::Ld { space: Space::Param, nc: false, ty, dst: vec![dst], addr: Addr::sym(&sym) });
        dst
    }

    /// Load a pointer parameter and convert it to a global-window address.
    pub fn ld_param_global_ptr(&mut self, p: &Param) -> Reg {
        assert_eq!(p.ty, ParamType::U64);
        let r = self.ld_param(p);
        let g = self.reg(RegClass::B64);
        self.push(Inst::CvtaToGlobal { dst: g, src: r });
        g
    }

    /// A static `.shared` array; returns its symbol name.
    pub fn shared_array(&mut self, name: &str, align: u32, bytes: u32) -> String {
        assert!(!self.shared.iter().any(|s| s.name == name));
        self.shared.push(SharedDecl { name: name.to_string(), align, bytes });
        name.to_string()
    }

    /// A per-thread `.local` array; returns its symbol name (address it with
    /// `Addr::sym` in `ld.local`/`st.local`).
    pub fn local_array(&mut self, name: &str, align: u32, bytes: u32) -> String {
        assert!(!self.local.iter().any(|s| s.name == name));
        self.local.push(SharedDecl { name: name.to_string(), align, bytes });
        name.to_string()
    }

    /// The dynamic `extern .shared` array (one per kernel); returns its symbol.
    pub fn extern_shared(&mut self, name: &str, align: u32) -> String {
        self.extern_shared = Some((name.to_string(), align));
        name.to_string()
    }

    /// A 32-bit shared-window address of a shared symbol.
    pub fn shared_addr(&mut self, sym: &str) -> Reg {
        let r = self.reg(RegClass::B32);
        self.push(Inst::Mov { ty: Type::U32, dst: r, src: Operand::Sym(sym.to_string()) });
        r
    }

    // ---- registers, labels, statements -------------------------------

    pub fn reg(&mut self, class: RegClass) -> Reg {
        let n = self.next_reg.entry(class).or_insert(0);
        let r = Reg { class, id: *n };
        *n += 1;
        r
    }

    pub fn regs<const N: usize>(&mut self, class: RegClass) -> [Reg; N] {
        std::array::from_fn(|_| self.reg(class))
    }

    pub fn new_label(&mut self) -> Label {
        self.next_label += 1;
        Label(self.next_label)
    }

    pub fn place(&mut self, l: Label) {
        self.body.push(Stmt::Label(l));
    }

    pub fn comment(&mut self, text: impl Into<String>) {
        let t: String = text.into();
        for line in t.lines() {
            self.body.push(Stmt::Comment(line.to_string()));
        }
    }

    /// Push an instruction (under the current guard, if any).
    pub fn push(&mut self, inst: Inst) {
        inst.check();
        if let Some(g) = self.guard {
            assert!(!inst.defs().contains(&g.pred), "guarded instruction redefines its guard");
        }
        self.body.push(Stmt::Inst { guard: self.guard, inst });
    }

    /// Push an instruction under an explicit guard.
    pub fn push_guarded(&mut self, g: Guard, inst: Inst) {
        assert!(self.guard.is_none(), "nested guards");
        inst.check();
        self.body.push(Stmt::Inst { guard: Some(g), inst });
    }

    /// Emit the instructions of `f` under `@p` (or `@!p` when `negate`).
    pub fn guarded<R>(&mut self, pred: Reg, negate: bool, f: impl FnOnce(&mut Self) -> R) -> R {
        assert_eq!(pred.class, RegClass::Pred);
        assert!(self.guard.is_none(), "nested guards");
        self.guard = Some(Guard { pred, negate });
        let r = f(self);
        self.guard = None;
        r
    }

    /// `if (p != negate) { f }` as a branch around the body.
    pub fn if_then(&mut self, pred: Reg, negate: bool, f: impl FnOnce(&mut Self)) {
        assert!(self.guard.is_none());
        let end = self.new_label();
        self.push_guarded(Guard { pred, negate: !negate }, Inst::Bra { target: end, uni: false });
        f(self);
        self.place(end);
    }

    /// A counted loop `for (i = start; i < end; i += step) body(i)` over `.u32`
    /// values; `end` is evaluated once. The body sees the induction register
    /// (do not write it). Runs zero times when `start >= end`. `uniform`: every
    /// thread of a warp takes the same trip count (branches are `bra.uni`).
    pub fn for_range(
        &mut self,
        start: impl Into<Operand>,
        end: impl Into<Operand>,
        step: u32,
        uniform: bool,
        body: impl FnOnce(&mut Self, Reg),
    ) {
        let i = self.reg(RegClass::B32);
        let end = end.into();
        self.mov(Type::U32, i, start);
        let top = self.new_label();
        let exit = self.new_label();
        let p = self.setp(Cmp::Ge, Type::U32, i, end.clone());
        self.push_guarded(Guard { pred: p, negate: false }, Inst::Bra { target: exit, uni: uniform });
        self.place(top);
        body(self, i);
        self.bin_to(BinOp::Add, Type::U32, i, i, step);
        let p2 = self.setp(Cmp::Lt, Type::U32, i, end);
        self.push_guarded(Guard { pred: p2, negate: false }, Inst::Bra { target: top, uni: uniform });
        self.place(exit);
    }

    // ---- typed instruction helpers ----------------------------------

    pub fn mov(&mut self, ty: Type, dst: Reg, src: impl Into<Operand>) {
        self.push(Inst::Mov { ty, dst, src: src.into() });
    }

    /// A fresh register holding `src`.
    pub fn val(&mut self, ty: Type, src: impl Into<Operand>) -> Reg {
        let d = self.reg(ty.class());
        self.mov(ty, d, src);
        d
    }

    pub fn special(&mut self, s: Special) -> Reg {
        self.val(Type::U32, s)
    }

    pub fn bin(&mut self, op: BinOp, ty: Type, a: impl Into<Operand>, b: impl Into<Operand>) -> Reg {
        let dt = if op == BinOp::MulWide { wide(ty) } else { ty };
        let d = self.reg(dt.class());
        self.bin_to(op, ty, d, a, b);
        d
    }

    pub fn bin_to(&mut self, op: BinOp, ty: Type, dst: Reg, a: impl Into<Operand>, b: impl Into<Operand>) {
        self.push(Inst::Bin { op, ty, dst, a: a.into(), b: b.into() });
    }

    pub fn unary(&mut self, op: UnOp, ty: Type, a: impl Into<Operand>) -> Reg {
        let d = self.reg(ty.class());
        self.push(Inst::Unary { op, ty, dst: d, a: a.into() });
        d
    }

    pub fn add(&mut self, ty: Type, a: impl Into<Operand>, b: impl Into<Operand>) -> Reg {
        self.bin(BinOp::Add, ty, a, b)
    }

    pub fn mul_lo(&mut self, ty: Type, a: impl Into<Operand>, b: impl Into<Operand>) -> Reg {
        self.bin(BinOp::MulLo, ty, a, b)
    }

    /// `mul.wide.u32`: a 64-bit product of two 32-bit values.
    pub fn mul_wide_u32(&mut self, a: impl Into<Operand>, b: impl Into<Operand>) -> Reg {
        self.bin(BinOp::MulWide, Type::U32, a, b)
    }

    /// `mad.lo`: `a * b + c` in the type's width.
    pub fn mad_lo(&mut self, ty: Type, a: impl Into<Operand>, b: impl Into<Operand>, c: impl Into<Operand>) -> Reg {
        let d = self.reg(ty.class());
        self.push(Inst::Mad { wide: false, ty, dst: d, a: a.into(), b: b.into(), c: c.into() });
        d
    }

    /// `mad.wide.u32`: 64-bit `a * b + c` from 32-bit `a`, `b`.
    pub fn mad_wide_u32(&mut self, a: impl Into<Operand>, b: impl Into<Operand>, c: impl Into<Operand>) -> Reg {
        let d = self.reg(RegClass::B64);
        self.push(Inst::Mad { wide: true, ty: Type::U32, dst: d, a: a.into(), b: b.into(), c: c.into() });
        d
    }

    pub fn fma_f32(&mut self, a: impl Into<Operand>, b: impl Into<Operand>, c: impl Into<Operand>) -> Reg {
        let d = self.reg(RegClass::F32);
        self.fma_f32_to(d, a, b, c);
        d
    }

    pub fn fma_f32_to(&mut self, dst: Reg, a: impl Into<Operand>, b: impl Into<Operand>, c: impl Into<Operand>) {
        self.push(Inst::Fma { dst, a: a.into(), b: b.into(), c: c.into() });
    }

    pub fn setp(&mut self, cmp: Cmp, ty: Type, a: impl Into<Operand>, b: impl Into<Operand>) -> Reg {
        let d = self.reg(RegClass::Pred);
        self.push(Inst::Setp { cmp, ty, dst: d, a: a.into(), b: b.into() });
        d
    }

    pub fn and_pred(&mut self, a: Reg, b: Reg) -> Reg {
        self.bin(BinOp::And, Type::Pred, a, b)
    }

    pub fn selp(&mut self, ty: Type, a: impl Into<Operand>, b: impl Into<Operand>, p: Reg) -> Reg {
        let d = self.reg(ty.class());
        self.push(Inst::Selp { ty, dst: d, a: a.into(), b: b.into(), p });
        d
    }

    pub fn cvt(&mut self, dty: Type, sty: Type, rnd: Option<Rnd>, src: impl Into<Operand>) -> Reg {
        let d = self.reg(dty.class());
        self.push(Inst::Cvt { dty, sty, rnd, dst: d, src: src.into(), src2: None });
        d
    }

    /// `cvt.rn.bf16x2.f32 d, hi, lo`: pack two f32 as bf16 (`lo` in the low half).
    pub fn pack_bf16x2(&mut self, hi: Reg, lo: Reg) -> Reg {
        let d = self.reg(RegClass::B32);
        self.push(Inst::Cvt {
            dty: Type::Bf16x2,
            sty: Type::F32,
            rnd: Some(Rnd::Rn),
            dst: d,
            src: hi.into(),
            src2: Some(lo.into()),
        });
        d
    }

    /// 64-bit `base + off` (off a 64-bit register or an immediate).
    pub fn add_u64(&mut self, base: Reg, off: impl Into<Operand>) -> Reg {
        self.add(Type::U64, base, off)
    }

    pub fn ld(&mut self, space: Space, ty: Type, addr: Addr) -> Reg {
        let d = self.reg(ty.class());
        self.push(Inst::Ld { space, nc: false, ty, dst: vec![d], addr });
        d
    }

    /// `ld.global.nc` (read-only path) into a fresh register.
    pub fn ld_global_nc(&mut self, ty: Type, addr: Addr) -> Reg {
        let d = self.reg(ty.class());
        self.push(Inst::Ld { space: Space::Global, nc: true, ty, dst: vec![d], addr });
        d
    }

    /// Vector load into given registers (`.v2`/`.v4` when more than one).
    pub fn ld_vec(&mut self, space: Space, nc: bool, ty: Type, dst: &[Reg], addr: Addr) {
        self.push(Inst::Ld { space, nc, ty, dst: dst.to_vec(), addr });
    }

    pub fn st(&mut self, space: Space, ty: Type, addr: Addr, src: impl Into<Operand>) {
        self.push(Inst::St { space, ty, src: vec![src.into()], addr });
    }

    pub fn st_vec(&mut self, space: Space, ty: Type, addr: Addr, src: Vec<Operand>) {
        self.push(Inst::St { space, ty, src, addr });
    }

    /// `red.global.add` (atomic accumulate).
    pub fn red_add(&mut self, space: Space, ty: Type, addr: Addr, src: impl Into<Operand>) {
        self.push(Inst::RedAdd { space, ty, addr, src: src.into() });
    }

    pub fn cp_async(&mut self, cache: CpCache, dst: Addr, src: Addr, size: u32, src_size: Option<Operand>) {
        self.push(Inst::CpAsync { cache, dst, src, size, src_size });
    }

    pub fn cp_async_commit(&mut self) {
        self.push(Inst::CpAsyncCommit);
    }

    pub fn cp_async_wait(&mut self, n: u32) {
        self.push(Inst::CpAsyncWait(n));
    }

    pub fn cp_async_wait_all(&mut self) {
        self.push(Inst::CpAsyncWaitAll);
    }

    pub fn bar_sync(&mut self) {
        self.push(Inst::BarSync(0));
    }

    pub fn ldmatrix(&mut self, n: usize, trans: bool, addr: Addr) -> Vec<Reg> {
        let dst: Vec<Reg> = (0..n).map(|_| self.reg(RegClass::B32)).collect();
        self.push(Inst::Ldmatrix { trans, dst: dst.clone(), addr });
        dst
    }

    /// `shfl.sync.bfly.b32` over the whole warp (every lane must execute it):
    /// the value of lane `laneid ^ xor`, in a fresh register of `a`'s class.
    pub fn shfl_bfly(&mut self, a: Reg, xor: u32) -> Reg {
        let d = self.reg(a.class);
        self.push(Inst::Shfl {
            mode: ShflMode::Bfly,
            dst: d,
            a: a.into(),
            b: xor.into(),
            c: 0x1fu32.into(),
            mask: Operand::Imm(0xffff_ffff),
        });
        d
    }

    pub fn mma_bf16(&mut self, d: [Reg; 4], a: [Reg; 4], b: [Reg; 2], c: [Reg; 4]) {
        self.push(Inst::MmaBf16 { d, a, b, c });
    }

    // ---- Hopper

    /// A TMA tensor-map parameter (`.param .align 64 .b8 name[128]`) and
    /// the register holding its generic address, which is how TMA
    /// instructions name a map.
    pub fn tensor_map_param(&mut self, name: &str) -> Reg {
        let p = self.param(name, ParamType::Bytes { align: 64, size: 128 });
        let sym = self.param_sym(&p);
        let r = self.reg(RegClass::B64);
        self.push(Inst::Mov { ty: Type::U64, dst: r, src: Operand::Sym(sym) });
        self.push(Inst::CvtaParam { dst: r, src: r });
        r
    }

    pub fn mbar_init(&mut self, addr: Addr, count: impl Into<Operand>) {
        self.push(Inst::MbarInit { addr, count: count.into() });
    }

    pub fn mbar_arrive(&mut self, addr: Addr, expect_tx: Option<Operand>) {
        self.push(Inst::MbarArrive { addr, expect_tx });
    }

    /// Spin until the phase of parity `parity` of the mbarrier at `addr` has
    /// completed (`try_wait` may time out, so it loops).
    pub fn mbar_wait(&mut self, addr: Addr, parity: impl Into<Operand>) {
        let parity = parity.into();
        let top = self.new_label();
        self.place(top);
        let p = self.reg(RegClass::Pred);
        self.push(Inst::MbarTryWait { dst: p, addr, parity });
        self.push_guarded(Guard { pred: p, negate: true }, Inst::Bra { target: top, uni: false });
    }

    pub fn tma_load(&mut self, dst: Addr, map: Reg, coords: Vec<Operand>, mbar: Addr) {
        self.push(Inst::TmaLoad { dst, map, coords, mbar });
    }

    pub fn tma_store(&mut self, map: Reg, coords: Vec<Operand>, src: Addr) {
        self.push(Inst::TmaStore { map, coords, src });
    }

    /// Add `bytes` of f32 at shared `src` into global `dst` (a bulk copy:
    /// commit it with [`Inst::BulkCommit`] and wait before reusing `src`).
    pub fn bulk_reduce_add_f32(&mut self, dst: Addr, src: Addr, bytes: impl Into<Operand>) {
        self.push(Inst::BulkReduceAddF32 { dst, src, bytes: bytes.into() });
    }

    /// Commit this thread's TMA stores and wait until they have read shared memory.
    pub fn bulk_commit_and_wait_read(&mut self) {
        self.push(Inst::BulkCommit);
        self.push(Inst::BulkWait { n: 0, read: true });
    }

    pub fn fence_proxy_async(&mut self) {
        self.push(Inst::FenceProxyAsync);
    }

    pub fn wgmma_fence(&mut self) {
        self.push(Inst::WgmmaFence);
    }

    pub fn wgmma_commit(&mut self) {
        self.push(Inst::WgmmaCommit);
    }

    pub fn wgmma_wait(&mut self, n: u32) {
        self.push(Inst::WgmmaWait(n));
    }

    pub fn wgmma(&mut self, d: &[Reg], a: WgmmaA, b: Reg, scale_d: impl Into<Operand>, trans_a: bool, trans_b: bool) {
        self.push(Inst::Wgmma { d: d.to_vec(), a, b, scale_d: scale_d.into(), trans_a, trans_b });
    }

    /// A predicate true in one lane of the (converged) warp.
    pub fn elect(&mut self) -> Reg {
        let p = self.reg(RegClass::Pred);
        self.push(Inst::Elect { dst: p });
        p
    }

    pub fn bar_count(&mut self, id: u32, count: u32, arrive: bool) {
        self.push(Inst::BarCount { id, count, arrive });
    }

    pub fn bra(&mut self, target: Label) {
        self.push(Inst::Bra { target, uni: false });
    }

    pub fn ret(&mut self) {
        self.push(Inst::Ret);
    }

    pub fn finish(self) -> Kernel {
        let mut reg_counts = self.next_reg;
        reg_counts.retain(|_, n| *n > 0);
        Kernel {
            name: self.name,
            params: self.params,
            max_threads: self.max_threads,
            min_blocks_per_sm: self.min_blocks_per_sm,
            shared: self.shared,
            extern_shared: self.extern_shared,
            local: self.local,
            body: self.body,
            reg_counts,
        }
    }
}

fn param_sym(name: &str) -> String {
    format!("param_{name}")
}

impl Kernel {
    /// Number of instructions (not labels or comments).
    pub fn instruction_count(&self) -> usize {
        self.body.iter().filter(|s| matches!(s, Stmt::Inst { .. })).count()
    }

    /// The entry's text: `.visible .entry NAME` followed by [`Kernel::code`].
    pub fn render(&self) -> String {
        format!(".visible .entry {}{}", self.name, self.code())
    }

    /// Everything of the entry's text after its name: the parameter list,
    /// the directives and the body. It does not mention the name.
    pub fn code(&self) -> String {
        let mut out = String::new();
        out.push_str("(\n");
        for (i, p) in self.params.iter().enumerate() {
            let sep = if i + 1 < self.params.len() { "," } else { "" };
            let _ = writeln!(out, "\t{}{}", p.ty.decl(&param_sym(&p.name)), sep);
        }
        out.push(')');
        if let Some(t) = self.max_threads {
            let _ = write!(out, "\n.maxntid {t}, 1, 1");
        }
        if let Some(b) = self.min_blocks_per_sm {
            let _ = write!(out, "\n.minnctapersm {b}");
        }
        out.push_str("\n{\n");
        for (class, n) in &self.reg_counts {
            let _ = writeln!(out, "\t.reg {} {}<{}>;", class.decl(), class.prefix(), n);
        }
        for s in &self.shared {
            let _ = writeln!(out, "\t.shared .align {} .b8 {}[{}];", s.align, s.name, s.bytes);
        }
        for s in &self.local {
            let _ = writeln!(out, "\t.local .align {} .b8 {}[{}];", s.align, s.name, s.bytes);
        }
        out.push('\n');
        for s in &self.body {
            match s {
                Stmt::Label(l) => {
                    let _ = writeln!(out, "{l}:");
                }
                Stmt::Comment(c) => {
                    let _ = writeln!(out, "\t// {c}");
                }
                Stmt::Inst { guard, inst } => {
                    out.push('\t');
                    if let Some(g) = guard {
                        let _ = write!(out, "@{}{} ", if g.negate { "!" } else { "" }, g.pred);
                    }
                    let _ = writeln!(out, "{inst}");
                }
            }
        }
        out.push_str("}\n");
        out
    }
}

/// A PTX module: header plus kernels.
#[derive(Clone, Debug)]
pub struct Module {
    pub version: (u32, u32),
    pub target: String,
    pub kernels: Vec<Kernel>,
}

impl Default for Module {
    fn default() -> Self {
        Self::new()
    }
}

impl Module {
    pub fn new() -> Self {
        Module { version: (8, 0), target: "sm_90a".into(), kernels: vec![] }
    }

    pub fn push(&mut self, k: Kernel) {
        assert!(!self.kernels.iter().any(|o| o.name == k.name), "duplicate kernel {}", k.name);
        self.kernels.push(k);
    }

    /// The module's text: [`Module::header`] and each kernel's text.
    pub fn render(&self) -> String {
        let mut out = self.header();
        for k in &self.kernels {
            out.push_str(&k.render());
            out.push('\n');
        }
        out
    }

    /// Everything before the first entry: version, target, address size and
    /// the module-scope `extern .shared` arrays of the kernels.
    pub fn header(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "//\n// Generated by pgc (parameter-golf compiler)\n//\n");
        let _ = writeln!(out, ".version {}.{}", self.version.0, self.version.1);
        let _ = writeln!(out, ".target {}", self.target);
        let _ = writeln!(out, ".address_size 64\n");
        // Dynamic shared arrays live at module scope (one declaration per name).
        let mut ext: BTreeMap<&str, u32> = BTreeMap::new();
        for k in &self.kernels {
            if let Some((n, a)) = &k.extern_shared {
                let e = ext.entry(n.as_str()).or_insert(*a);
                *e = (*e).max(*a);
            }
        }
        for (n, a) in &ext {
            let _ = writeln!(out, ".extern .shared .align {a} .b8 {n}[];");
        }
        if !ext.is_empty() {
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_typed_instructions() {
        let mut k = KernelBuilder::new("t");
        let p = k.param("x", ParamType::U64);
        let n = k.param("n", ParamType::U32);
        k.max_threads(128, None);
        let px = k.ld_param_global_ptr(&p);
        let nn = k.ld_param(&n);
        let tid = k.special(Special::TidX);
        let inb = k.setp(Cmp::Lt, Type::U32, tid, nn);
        k.if_then(inb, false, |k| {
            let off = k.mul_wide_u32(tid, 4u32);
            let a = k.add_u64(px, off);
            let v = k.ld_global_nc(Type::F32, Addr::reg(a));
            let w = k.fma_f32(v, 2.0f32, 1.0f32);
            k.st(Space::Global, Type::F32, Addr::reg(a), w);
        });
        k.ret();
        let mut m = Module::new();
        m.push(k.finish());
        let s = m.render();
        assert!(s.contains(".target sm_90a"));
        assert!(s.contains("setp.lt.u32 %p0, %r1, %r0;"), "{s}");
        assert!(s.contains("@!%p0 bra $L1;"), "{s}");
        assert!(s.contains("fma.rn.f32 %f1, %f0, 0f40000000, 0f3F800000;"), "{s}");
        assert!(s.contains(".maxntid 128, 1, 1"));
    }

    #[test]
    fn renders_shfl_and_lg2() {
        let mut k = KernelBuilder::new("t");
        let x = k.val(Type::F32, 1.0f32);
        let y = k.shfl_bfly(x, 2);
        assert_eq!(y.class, RegClass::F32);
        let _ = k.unary(UnOp::Lg2Approx, Type::F32, y);
        let mut m = Module::new();
        m.push(k.finish());
        let s = m.render();
        assert!(s.contains("shfl.sync.bfly.b32 %f1, %f0, 2, 31, 4294967295;"), "{s}");
        assert!(s.contains("lg2.approx.f32 %f2, %f1;"), "{s}");
    }

    #[test]
    #[should_panic(expected = "ill-typed")]
    fn rejects_ill_typed() {
        let mut k = KernelBuilder::new("t");
        let f = k.reg(RegClass::F32);
        let r = k.reg(RegClass::B32);
        k.bin_to(BinOp::Add, Type::U32, r, f, 1u32);
    }
}
