//! Lowering expressions to PTX.
//!
//! [`Lower`] emits each node once per binding of its free variables: the memo
//! key is the node plus the registers its free variables are bound to, so a
//! value that depends only on the row is shared by every column of an
//! unrolled GEMM epilogue, and a value that depends on nothing is computed
//! once per kernel. Loops open a memo scope that is dropped when they close.
//! [`Lower::hoist`] emits, before a loop, every subexpression of its body that
//! does not depend on the loop variable (loop-invariant code motion).
//!
//! Reductions are lowered cooperatively when the warp is converged and every
//! free variable of the reduction is warp-uniform (lanes split the range,
//! `shfl.sync.bfly` combines), sequentially otherwise.
//!
//! Math: `div.rn`, `sqrt.rn` and `1 / sqrt.rn` where the CPU backend rounds
//! exactly; `exp` from `ex2.approx` with the rounding error of `x log2(e)`
//! corrected (about 2 ulp on hardware); `log` by the fdlibm `logf` reduction
//! and polynomial (< 1 ulp); `tanh` by its Taylor series below 0.55 and
//! `1 - 2 / (exp(2|x|) + 1)` above; `sigmoid` as `1 / (1 + exp(-x))`.

use crate::scalar::expr::*;
use crate::ptx::builder::*;
use std::collections::{HashMap, HashSet};

/// How a variable is bound during lowering.
#[derive(Clone, Copy, Debug)]
struct Binding {
    reg: Reg,
    /// Every lane of the warp holds the same value.
    uniform: bool,
}

type Key = (E, Vec<Reg>);

/// The lowering state of one kernel (or one epilogue).
pub struct Lower<'x> {
    pub x: &'x Exprs,
    bufs: Vec<Option<Reg>>,
    vars: Vec<Option<Binding>>,
    scopes: Vec<HashMap<Key, Operand>>,
    /// All 32 lanes of the warp execute the current code together.
    pub converged: bool,
    /// `%laneid` (needed for cooperative reductions).
    pub lane: Option<Reg>,
    /// Nesting of `emit`: past [`PREFETCH_DEPTH`] the operands are emitted
    /// bottom-up first (see [`Lower::prefetch`]).
    depth: usize,
}

/// `emit` nesting after which a chain is emitted from its bottom with an
/// explicit stack, so a 100,000-op chain does not overflow the thread's stack.
const PREFETCH_DEPTH: usize = 64;

const LOG2E_HI: f32 = std::f32::consts::LOG2_E;
const LN2: f32 = std::f32::consts::LN_2;

fn f32_op(v: f32) -> Operand {
    Operand::F32(v)
}

impl<'x> Lower<'x> {
    pub fn new(x: &'x Exprs) -> Self {
        debug_assert_eq!(x.float, Float::F32, "PTX computes in f32");
        Lower { x, bufs: vec![None; x.bufs.len()], vars: vec![None; x.vars.len()], scopes: vec![HashMap::new()], converged: false, lane: None, depth: 0 }
    }

    /// Bind buffer `buf` to a global base pointer (`.b64`).
    pub fn bind_buf(&mut self, buf: Buf, ptr: Reg) {
        self.bufs[buf.0 as usize] = Some(ptr);
    }

    pub fn buf_reg(&self, buf: Buf) -> Reg {
        self.bufs[buf.0 as usize].expect("buffer bound")
    }

    pub fn bind(&mut self, v: Var, reg: Reg, uniform: bool) {
        self.vars[v.0 as usize] = Some(Binding { reg, uniform });
    }

    pub fn unbind(&mut self, v: Var) {
        self.vars[v.0 as usize] = None;
    }

    pub fn push_scope(&mut self) {
        self.scopes.push(HashMap::new());
    }

    pub fn pop_scope(&mut self) {
        self.scopes.pop();
        assert!(!self.scopes.is_empty(), "scope underflow");
    }

    fn key(&self, e: E) -> Option<Key> {
        let mut regs = Vec::with_capacity(self.x.free(e).len());
        for v in self.x.free(e) {
            regs.push(self.vars[v.0 as usize]?.reg);
        }
        Some((e, regs))
    }

    fn lookup(&self, key: &Key) -> Option<Operand> {
        self.scopes.iter().rev().find_map(|s| s.get(key).cloned())
    }

    fn all_bound(&self, e: E) -> bool {
        self.x.free(e).iter().all(|v| self.vars[v.0 as usize].is_some())
    }

    fn all_uniform(&self, e: E) -> bool {
        self.x.free(e).iter().all(|v| self.vars[v.0 as usize].is_some_and(|b| b.uniform))
    }

    /// Emit every maximal subexpression of `roots` whose free variables are all
    /// bound now (before a loop that binds more).
    pub fn hoist(&mut self, b: &mut KernelBuilder, roots: &[E]) {
        let mut seen = HashSet::new();
        let mut stack: Vec<E> = roots.to_vec();
        while let Some(e) = stack.pop() {
            if !seen.insert(e) {
                continue;
            }
            if self.all_bound(e) {
                let key = self.key(e).unwrap();
                if self.lookup(&key).is_none() && !matches!(self.x.get(e), Expr::Int(_) | Expr::F(_) | Expr::Var(_)) {
                    self.emit(b, e);
                }
                continue;
            }
            match *self.x.get(e) {
                Expr::Bigram(a, c, _) => stack.extend([a, c]),
                Expr::Load(_, a) | Expr::Reduce(_, _, _, a) => stack.push(a),
                ref n => {
                    push_operands(n, &mut stack);
                }
            }
        }
    }

    /// Vector loads for the loads reachable from `roots` (outside reduction
    /// bodies) that read `vec` consecutive elements `base + j` of a buffer
    /// with `base` a multiple of `vec`: one `ld.global.nc.v{vec}` (bf16: packed
    /// words) instead of `vec` scalar loads; the values go into the memo.
    pub fn vector_loads(&mut self, b: &mut KernelBuilder, roots: &[E], vec: u32) {
        let x = self.x;
        let mut seen = HashSet::new();
        let mut stack: Vec<E> = roots.to_vec();
        type Group = ((Buf, E, u32), Vec<Option<E>>);
        let mut groups: Vec<Group> = Vec::new();
        while let Some(e) = stack.pop() {
            if !seen.insert(e) {
                continue;
            }
            match *x.get(e) {
                Expr::Load(buf, idx) => {
                    // index = base + vec * w + j: group by (base, w), slot j.
                    let (base, off) = x.split_offset(idx);
                    let (w, j) = (off / vec, off % vec);
                    if self.all_bound(e) && x.div(base).is_multiple_of(vec as u64) {
                        let key = self.key(e).unwrap();
                        if self.lookup(&key).is_none() {
                            match groups.iter_mut().find(|(k, _)| *k == (buf, base, w)) {
                                Some((_, v)) => v[j as usize] = Some(e),
                                None => {
                                    let mut v = vec![None; vec as usize];
                                    v[j as usize] = Some(e);
                                    groups.push(((buf, base, w), v));
                                }
                            }
                        }
                    }
                    stack.push(idx);
                }
                Expr::Bigram(a, c, _) => stack.extend([a, c]),
                // reductions keep their own loads
                ref n => {
                    push_operands(n, &mut stack);
                }
            }
        }
        for ((buf, base, w), loads) in groups {
            if loads.iter().any(|l| l.is_none()) {
                continue;
            }
            let elem = x.bufs[buf.0 as usize];
            let addr = self.address(b, buf, base).plus((w * vec * elem.bytes()) as i64);
            let regs: Vec<Reg> = match elem {
                DType::F32 | DType::I32 => {
                    let (ty, class) = if elem == DType::F32 { (Type::F32, RegClass::F32) } else { (Type::U32, RegClass::B32) };
                    let regs: Vec<Reg> = (0..vec).map(|_| b.reg(class)).collect();
                    b.ld_vec(Space::Global, true, ty, &regs, addr);
                    regs
                }
                DType::Bf16 => {
                    if vec < 2 {
                        continue;
                    }
                    let words: Vec<Reg> = (0..vec / 2).map(|_| b.reg(RegClass::B32)).collect();
                    b.ld_vec(Space::Global, true, Type::B32, &words, addr);
                    let mut regs = Vec::new();
                    for w in words {
                        let lo = b.bin(BinOp::Shl, Type::B32, w, 16u32);
                        let hi = b.bin(BinOp::And, Type::B32, w, 0xffff_0000u32);
                        for h in [lo, hi] {
                            let f = b.reg(RegClass::F32);
                            b.mov(Type::B32, f, h);
                            regs.push(f);
                        }
                    }
                    regs
                }
            };
            for (l, r) in loads.into_iter().zip(regs) {
                let key = self.key(l.unwrap()).unwrap();
                self.scopes.last_mut().unwrap().insert(key, r.into());
            }
        }
    }

    /// The value of `e` as an operand (immediates for constants).
    pub fn emit(&mut self, b: &mut KernelBuilder, e: E) -> Operand {
        let key = self.key(e).unwrap_or_else(|| panic!("unbound variable in {:?}", self.x.get(e)));
        if let Some(o) = self.lookup(&key) {
            return o;
        }
        if self.depth > 0 && self.depth.is_multiple_of(PREFETCH_DEPTH) {
            self.prefetch(b, e);
            if let Some(o) = self.lookup(&key) {
                return o;
            }
        }
        self.depth += 1;
        let o = self.compute(b, e);
        self.depth -= 1;
        self.scopes.last_mut().unwrap().insert(key, o.clone());
        o
    }

    /// Emit the arithmetic below `e` (down to loads, reductions and leaves,
    /// which keep their own emission) with an explicit stack, in id order:
    /// operands have smaller ids (the DAG is built bottom-up), so each
    /// `compute` finds its operands bound and recurses one level.
    fn prefetch(&mut self, b: &mut KernelBuilder, e: E) {
        let mut seen = HashSet::new();
        let mut stack = vec![e];
        let mut found = Vec::new();
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            match self.key(n) {
                Some(k) if self.lookup(&k).is_none() => {}
                _ => continue,
            }
            if !push_operands(self.x.get(n), &mut stack) {
                continue;
            }
            found.push(n);
        }
        found.sort_unstable();
        let depth = std::mem::replace(&mut self.depth, 1);
        for n in found {
            self.emit(b, n);
        }
        self.depth = depth;
    }

    /// The value of `e` in a register.
    /// The operands of a binary node: the first in a register.
    fn emit_pair(&mut self, b: &mut KernelBuilder, a1: E, a2: E) -> (Reg, Operand) {
        let a = self.emit_reg(b, a1);
        (a, self.emit(b, a2))
    }

    pub fn emit_reg(&mut self, b: &mut KernelBuilder, e: E) -> Reg {
        let o = self.emit(b, e);
        self.materialize(b, self.x.ty(e), o)
    }

    fn materialize(&mut self, b: &mut KernelBuilder, ty: Ty, o: Operand) -> Reg {
        match o {
            Operand::Reg(r) => r,
            Operand::Imm(v) if ty == Ty::Pred => b.setp(Cmp::Ne, Type::U32, Operand::Imm(v), 0u32),
            other => b.val(
                match ty {
                    Ty::U32 => Type::U32,
                    Ty::Float => Type::F32,
                    Ty::Pred => unreachable!(),
                },
                other,
            ),
        }
    }

    fn compute(&mut self, b: &mut KernelBuilder, e: E) -> Operand {
        let x = self.x;
        match *x.get(e) {
            Expr::Int(v) => Operand::Imm(v as i64),
            // Exact: the PTX kinds build f32 arenas.
            Expr::F(bits) => f32_op(f64::from_bits(bits) as f32),
            Expr::Bool(v) => b.setp(Cmp::Ne, Type::U32, Operand::Imm(v as i64), 0u32).into(),
            Expr::Var(v) => self.vars[v.0 as usize].expect("bound").reg.into(),
            Expr::I2(op, a1, a2) => {
                let (a, c) = self.emit_pair(b, a1, a2);
                let bop = match op {
                    IOp::Add => BinOp::Add,
                    IOp::Mul => BinOp::MulLo,
                    IOp::Min => BinOp::Min,
                    IOp::Max => BinOp::Max,
                };
                b.bin(bop, Type::U32, a, c).into()
            }
            Expr::Div(a1, c) | Expr::Rem(a1, c) => {
                let a = self.emit_reg(b, a1);
                // A power of two divides by a shift, takes the remainder by a mask.
                let (op, c) = match (matches!(x.get(e), Expr::Rem(..)), c.is_power_of_two()) {
                    (false, true) => (BinOp::Shr, c.trailing_zeros()),
                    (false, false) => (BinOp::Div, c),
                    (true, true) => (BinOp::And, c - 1),
                    (true, false) => (BinOp::Rem, c),
                };
                b.bin(op, Type::U32, a, c).into()
            }
            Expr::SubSat(a1, c) => {
                let a = self.emit_reg(b, a1);
                let m = b.bin(BinOp::Max, Type::U32, a, c);
                b.bin(BinOp::Sub, Type::U32, m, c).into()
            }
            Expr::Lt(a1, a2) | Expr::IEq(a1, a2) => {
                let (a, c) = self.emit_pair(b, a1, a2);
                let cmp = if matches!(x.get(e), Expr::Lt(..)) { Cmp::Lt } else { Cmp::Eq };
                b.setp(cmp, Type::U32, a, c).into()
            }
            Expr::FCmp(op, a1, a2) => {
                let (a, c) = self.emit_pair(b, a1, a2);
                let cmp = match op {
                    FCmp::Gt => Cmp::Gt,
                    FCmp::Le => Cmp::Le,
                    FCmp::Eq => Cmp::Eq,
                };
                b.setp(cmp, Type::F32, a, c).into()
            }
            Expr::And(a1, a2) => {
                let a = self.emit_reg(b, a1);
                let c = self.emit_reg(b, a2);
                b.and_pred(a, c).into()
            }
            Expr::Not(a1) => {
                let a = self.emit_reg(b, a1);
                b.unary(UnOp::Not, Type::Pred, a).into()
            }
            Expr::Sel(p1, a1, a2) => {
                let p = self.emit_reg(b, p1);
                let a = self.emit(b, a1);
                let c = self.emit(b, a2);
                let ty = if x.ty(a1) == Ty::Float { Type::F32 } else { Type::U32 };
                b.selp(ty, a, c, p).into()
            }
            Expr::F1(f, a1) => {
                let a = self.emit_reg(b, a1);
                self.f1(b, f, a).into()
            }
            Expr::F2(f, a1, a2) => {
                let (a, c) = self.emit_pair(b, a1, a2);
                let op = match f {
                    F2::Add => BinOp::Add,
                    F2::Sub => BinOp::Sub,
                    F2::Mul => BinOp::Mul,
                    F2::Div => BinOp::Div,
                    F2::Max => BinOp::Max,
                    F2::Min => BinOp::Min,
                };
                b.bin(op, Type::F32, a, c).into()
            }
            Expr::Load(buf, i1) => {
                let elem = x.bufs[buf.0 as usize];
                let addr = self.address(b, buf, i1);
                load(b, elem, addr).into()
            }
            Expr::Bigram(c1, p1, m) => {
                let cur = self.emit_reg(b, c1);
                let prev = self.emit_reg(b, p1);
                let a = b.mul_wide_u32(cur, 36313u32);
                let p = b.mul_wide_u32(prev, 27191u32);
                let h = b.bin(BinOp::Xor, Type::U64, a, p);
                let r = b.bin(BinOp::Rem, Type::U64, h, m as u64);
                b.cvt(Type::U32, Type::U64, None, r).into()
            }
            Expr::Reduce(op, v, len, body) => self.reduce(b, e, op, v, len, body).into(),
        }
    }

    /// The global address of element `index` of `buf`.
    pub fn address(&mut self, b: &mut KernelBuilder, buf: Buf, index: E) -> Addr {
        let base = self.buf_reg(buf);
        let es = self.x.bufs[buf.0 as usize].bytes();
        match self.emit(b, index) {
            Operand::Imm(v) => Addr::reg_off(base, v * es as i64),
            o => {
                let r = self.materialize(b, Ty::U32, o);
                Addr::reg(b.mad_wide_u32(r, es, base))
            }
        }
    }

    fn reduce(&mut self, b: &mut KernelBuilder, e: E, op: RedOp, v: Var, len: u32, body: E) -> Reg {
        let coop = self.converged && self.lane.is_some() && self.all_uniform(e);
        let (init, bop) = match op {
            RedOp::Sum => (0.0f32, BinOp::Add),
            RedOp::Max => (f32::NEG_INFINITY, BinOp::Max),
        };
        let acc = b.val(Type::F32, init);
        // Everything in the body that does not depend on the reduction variable.
        self.hoist(b, &[body]);
        let was = self.converged;
        let (start, step): (Operand, u32) = if coop { (self.lane.unwrap().into(), 32) } else { (0u32.into(), 1) };
        b.comment(format!("{} over {len} ({})", if op == RedOp::Sum { "sum" } else { "max" }, if coop { "warp" } else { "sequential" }));
        b.for_range(start, len, step, false, |b, k| {
            self.push_scope();
            self.bind(v, k, false);
            self.converged = false;
            // A body unrolled over 4 consecutive elements reads them with vector loads.
            self.vector_loads(b, &[body], 4);
            let val = self.emit(b, body);
            b.bin_to(bop, Type::F32, acc, acc, val);
            self.unbind(v);
            self.pop_scope();
        });
        self.converged = was;
        if coop {
            for m in [16u32, 8, 4, 2, 1] {
                let o = b.shfl_bfly(acc, m);
                b.bin_to(bop, Type::F32, acc, acc, o);
            }
        }
        acc
    }

    fn f1(&mut self, b: &mut KernelBuilder, f: F1, a: Reg) -> Reg {
        match f {
            F1::Neg => b.unary(UnOp::Neg, Type::F32, a),
            F1::Abs => b.unary(UnOp::Abs, Type::F32, a),
            F1::Sqrt => b.unary(UnOp::Sqrt, Type::F32, a),
            F1::Rsqrt => {
                let s = b.unary(UnOp::Sqrt, Type::F32, a);
                let one = b.val(Type::F32, 1.0f32);
                b.bin(BinOp::Div, Type::F32, one, s)
            }
            F1::Recip => {
                let one = b.val(Type::F32, 1.0f32);
                b.bin(BinOp::Div, Type::F32, one, a)
            }
            F1::Exp => exp(b, a),
            F1::Log => log(b, a),
            F1::Tanh => tanh(b, a),
            F1::Sigmoid => {
                let n = b.unary(UnOp::Neg, Type::F32, a);
                let ex = exp(b, n);
                let d = b.bin(BinOp::Add, Type::F32, ex, 1.0f32);
                let one = b.val(Type::F32, 1.0f32);
                b.bin(BinOp::Div, Type::F32, one, d)
            }
            F1::RoundEven => b.cvt(Type::F32, Type::F32, Some(Rnd::Rni), a),
            F1::F16Scale => f16_scale(b, a),
        }
    }
}

/// Load one element at `addr` as f32 (f32, bf16) or u32 (i32).
pub fn load(b: &mut KernelBuilder, elem: DType, addr: Addr) -> Reg {
    match elem {
        DType::F32 => b.ld_global_nc(Type::F32, addr),
        DType::I32 => b.ld_global_nc(Type::U32, addr),
        DType::Bf16 => {
            let h = b.ld_global_nc(Type::B16, addr);
            b.cvt(Type::F32, Type::Bf16, None, h)
        }
    }
}

/// Store `v` (f32 or u32) to `addr` in element type `elem`, optionally under a guard.
pub fn store(b: &mut KernelBuilder, elem: DType, addr: Addr, v: Operand, pred: Option<Reg>) {
    let put = |b: &mut KernelBuilder, ty: Type, v: Operand| match pred {
        Some(p) => b.guarded(p, false, |b| b.st(Space::Global, ty, addr.clone(), v)),
        None => b.st(Space::Global, ty, addr.clone(), v),
    };
    match elem {
        DType::F32 => put(b, Type::F32, v),
        DType::I32 => put(b, Type::U32, v),
        DType::Bf16 => {
            let h = b.cvt(Type::Bf16, Type::F32, Some(Rnd::Rn), v);
            put(b, Type::B16, h.into())
        }
    }
}

/// `red.global.add.f32 [addr], v`, optionally under a guard.
pub fn red_add(b: &mut KernelBuilder, addr: Addr, v: Operand, pred: Option<Reg>) {
    match pred {
        Some(p) => b.guarded(p, false, |b| b.red_add(Space::Global, Type::F32, addr, v)),
        None => b.red_add(Space::Global, Type::F32, addr, v),
    }
}

/// `exp(x)`: `2^y` with `y = x log2(e)` rounded, times `1 + err ln 2` where
/// `err` is the rounding error of `y` (exact by fma) plus the error of the
/// f32 `log2(e)`.
pub fn exp(b: &mut KernelBuilder, x: Reg) -> Reg {
    let lo: f32 = (std::f64::consts::LOG2_E - LOG2E_HI as f64) as f32;
    let y = b.bin(BinOp::Mul, Type::F32, x, LOG2E_HI);
    let ny = b.unary(UnOp::Neg, Type::F32, y);
    let err = b.fma_f32(x, LOG2E_HI, ny);
    let err = b.fma_f32(x, lo, err);
    let p = b.unary(UnOp::Ex2Approx, Type::F32, y);
    let t = b.bin(BinOp::Mul, Type::F32, err, LN2);
    let r = b.fma_f32(p, t, p);
    // 2^y overflowed: keep +inf (fma(inf, -t, inf) would be NaN).
    let big = b.setp(Cmp::Ge, Type::F32, y, 128.0f32);
    b.selp(Type::F32, f32::INFINITY, r, big)
}

/// `ln(x)`: fdlibm's `logf` (argument reduction to `[sqrt(2)/2, sqrt(2))`,
/// `s = f / (2 + f)`, a degree-14 polynomial in `s`).
pub fn log(b: &mut KernelBuilder, x: Reg) -> Reg {
    // fdlibm e_logf.c constants, by their bits.
    const LN2_HI: f32 = f32::from_bits(0x3f31_7180);
    const LN2_LO: f32 = f32::from_bits(0x3717_f7d1);
    const LG: [f32; 7] = [
        f32::from_bits(0x3f2a_aaab),
        f32::from_bits(0x3ecc_cccd),
        f32::from_bits(0x3e92_4925),
        f32::from_bits(0x3e63_8e29),
        f32::from_bits(0x3e3a_3325),
        f32::from_bits(0x3e1c_d04f),
        f32::from_bits(0x3e17_8897),
    ];
    // Subnormals: scale by 2^25.
    let sub = b.setp(Cmp::Lt, Type::F32, x, f32::MIN_POSITIVE);
    let xs_big = b.bin(BinOp::Mul, Type::F32, x, 33_554_432.0f32);
    let xs = b.selp(Type::F32, xs_big, x, sub);
    let kadj = b.selp(Type::S32, -25i32, 0i32, sub);
    let ix = b.reg(RegClass::B32);
    b.mov(Type::B32, ix, xs);
    let e = b.bin(BinOp::Shr, Type::U32, ix, 23u32);
    let k0 = b.bin(BinOp::Sub, Type::S32, e, 127i32);
    let k0 = b.bin(BinOp::Add, Type::S32, k0, kadj);
    let mant = b.bin(BinOp::And, Type::B32, ix, 0x007f_ffffu32);
    let i = b.bin(BinOp::Add, Type::U32, mant, 0x4a_fb20u32);
    let i = b.bin(BinOp::And, Type::B32, i, 0x0080_0000u32);
    let hi = b.bin(BinOp::Xor, Type::B32, i, 0x3f80_0000u32);
    let mbits = b.bin(BinOp::Or, Type::B32, mant, hi);
    let ki = b.bin(BinOp::Shr, Type::U32, i, 23u32);
    let k = b.bin(BinOp::Add, Type::S32, k0, ki);
    let m = b.reg(RegClass::F32);
    b.mov(Type::B32, m, mbits);
    let f = b.bin(BinOp::Sub, Type::F32, m, 1.0f32);
    let two_f = b.bin(BinOp::Add, Type::F32, f, 2.0f32);
    let s = b.bin(BinOp::Div, Type::F32, f, two_f);
    let dk = b.cvt(Type::F32, Type::S32, Some(Rnd::Rn), k);
    let z = b.bin(BinOp::Mul, Type::F32, s, s);
    let w = b.bin(BinOp::Mul, Type::F32, z, z);
    // t1 = w (Lg2 + w (Lg4 + w Lg6)); t2 = z (Lg1 + w (Lg3 + w (Lg5 + w Lg7)))
    let t1 = b.fma_f32(w, LG[5], LG[3]);
    let t1 = b.fma_f32(w, t1, LG[1]);
    let t1 = b.bin(BinOp::Mul, Type::F32, w, t1);
    let t2 = b.fma_f32(w, LG[6], LG[4]);
    let t2 = b.fma_f32(w, t2, LG[2]);
    let t2 = b.fma_f32(w, t2, LG[0]);
    let t2 = b.bin(BinOp::Mul, Type::F32, z, t2);
    let r = b.bin(BinOp::Add, Type::F32, t2, t1);
    // dk ln2_hi - ((hfsq - (s (hfsq + R) + dk ln2_lo)) - f)
    let ff = b.bin(BinOp::Mul, Type::F32, f, f);
    let hfsq = b.bin(BinOp::Mul, Type::F32, ff, 0.5f32);
    let hr = b.bin(BinOp::Add, Type::F32, hfsq, r);
    let shr = b.bin(BinOp::Mul, Type::F32, s, hr);
    let dlo = b.bin(BinOp::Mul, Type::F32, dk, LN2_LO);
    let inner = b.bin(BinOp::Add, Type::F32, shr, dlo);
    let t = b.bin(BinOp::Sub, Type::F32, hfsq, inner);
    let t = b.bin(BinOp::Sub, Type::F32, t, f);
    let dhi = b.bin(BinOp::Mul, Type::F32, dk, LN2_HI);
    let res = b.bin(BinOp::Sub, Type::F32, dhi, t);
    // Specials: log(0) = -inf, log(x < 0) = NaN, log(inf) = inf, log(NaN) = NaN.
    let zero = b.setp(Cmp::Eq, Type::F32, x, 0.0f32);
    let res = b.selp(Type::F32, f32::NEG_INFINITY, res, zero);
    let neg = b.setp(Cmp::Lt, Type::F32, x, 0.0f32);
    let res = b.selp(Type::F32, f32::NAN, res, neg);
    let inf = b.setp(Cmp::Eq, Type::F32, x, f32::INFINITY);
    let res = b.selp(Type::F32, f32::INFINITY, res, inf);
    let ord = b.setp(Cmp::Eq, Type::F32, x, x);
    b.selp(Type::F32, res, x, ord)
}

/// `tanh(x)`: the Taylor series (odd, to x^19) for |x| < 0.55, else
/// `sign(x) (1 - 2 / (exp(2|x|) + 1))`.
pub fn tanh(b: &mut KernelBuilder, x: Reg) -> Reg {
    const C: [f64; 9] = [
        -1.0 / 3.0,
        2.0 / 15.0,
        -17.0 / 315.0,
        62.0 / 2835.0,
        -1382.0 / 155925.0,
        21844.0 / 6081075.0,
        -929569.0 / 638512875.0,
        6404582.0 / 10854718875.0,
        -443861162.0 / 1856156927625.0,
    ];
    let ax = b.unary(UnOp::Abs, Type::F32, x);
    let z = b.bin(BinOp::Mul, Type::F32, x, x);
    let mut p = b.val(Type::F32, C[8] as f32);
    for c in C[..8].iter().rev() {
        p = b.fma_f32(p, z, *c as f32);
    }
    let pz = b.bin(BinOp::Mul, Type::F32, p, z);
    let small = b.fma_f32(x, pz, x);
    let two = b.bin(BinOp::Add, Type::F32, ax, ax);
    let e = exp(b, two);
    let e1 = b.bin(BinOp::Add, Type::F32, e, 1.0f32);
    let two_c = b.val(Type::F32, 2.0f32);
    let q = b.bin(BinOp::Div, Type::F32, two_c, e1);
    let one = b.val(Type::F32, 1.0f32);
    let big = b.bin(BinOp::Sub, Type::F32, one, q);
    let nbig = b.unary(UnOp::Neg, Type::F32, big);
    let neg = b.setp(Cmp::Lt, Type::F32, x, 0.0f32);
    let big = b.selp(Type::F32, nbig, big, neg);
    let is_small = b.setp(Cmp::Lt, Type::F32, ax, 0.55f32);
    b.selp(Type::F32, small, big, is_small)
}

/// The f16 rounding of a positive scale, at least `2^-14`, `+inf` past f16's range.
pub fn f16_scale(b: &mut KernelBuilder, v: Reg) -> Reg {
    let bits = b.reg(RegClass::B32);
    b.mov(Type::B32, bits, v);
    let odd = b.bin(BinOp::Shr, Type::U32, bits, 13u32);
    let odd = b.bin(BinOp::And, Type::B32, odd, 1u32);
    let r = b.bin(BinOp::Add, Type::U32, bits, 0xfffu32);
    let r = b.bin(BinOp::Add, Type::U32, r, odd);
    let r = b.bin(BinOp::And, Type::B32, r, 0xffff_e000u32);
    let rf = b.reg(RegClass::F32);
    b.mov(Type::B32, rf, r);
    let over = b.setp(Cmp::Gt, Type::F32, rf, 65504.0f32);
    let rf = b.selp(Type::F32, f32::INFINITY, rf, over);
    let tiny = 2.0f32.powi(-14);
    let small = b.setp(Cmp::Lt, Type::F32, v, tiny);
    b.selp(Type::F32, tiny, rf, small)
}

/// Pushes the operands of an arithmetic node (in the order the walks visit
/// them); false, pushing nothing, for leaves, loads, reductions and bigrams.
fn push_operands(n: &Expr, stack: &mut Vec<E>) -> bool {
    match *n {
        Expr::I2(_, a, c) | Expr::Lt(a, c) | Expr::IEq(a, c) | Expr::FCmp(_, a, c) | Expr::And(a, c) | Expr::F2(_, a, c) => stack.extend([a, c]),
        Expr::Div(a, _) | Expr::Rem(a, _) | Expr::SubSat(a, _) | Expr::Not(a) | Expr::F1(_, a) => stack.push(a),
        Expr::Sel(p, a, c) => stack.extend([p, a, c]),
        Expr::Int(_) | Expr::Bool(_) | Expr::F(_) | Expr::Var(_) | Expr::Load(..) | Expr::Reduce(..) | Expr::Bigram(..) => return false,
    }
    true
}
