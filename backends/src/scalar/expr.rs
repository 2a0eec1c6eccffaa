//! The scalar expression DAG: hash-consed, simplified on construction.
//!
//! Every node is an [`Expr`] over earlier nodes ([`E`] ids). Integer nodes are
//! `u32` index arithmetic; float nodes are math in the arena's [`Float`]
//! precision (f32 for PTX; f32 or f64 for the CPU JIT, as the CPU backend's
//! working precision); predicates are booleans.
//! Construction goes through [`Exprs`]'s helper methods, which fold constants,
//! apply the index identities that make reshapes and broadcasts collapse
//! (`(a*c + b) / c = a` when `b < c`, `x % c = x` when `x < c`, ...) using a
//! per-node upper bound and known divisor, and intern the result, so the same
//! computation built twice is one node (shared subexpressions are emitted once).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
pub use pgc_ir::types::DType;

/// An expression id (index into [`Exprs::nodes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct E(pub u32);

/// A loop / binding variable (index into [`Exprs::vars`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Var(pub u32);

/// A buffer read by `Load` (index into [`Exprs::bufs`]); the lowering binds
/// each to a base pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Buf(pub u32);

/// The type of a node's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ty {
    U32,
    Pred,
    /// A float of the arena's [`Float`] precision.
    Float,
}

/// The precision of an arena's float nodes: constants are rounded to it and
/// constant folding computes in it, so a folded node equals what the code
/// generator would have computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Float {
    #[default]
    F32,
    F64,
}

/// The scalar type a buffer element of type `d` loads as (f32 and bf16 as
/// float, i32 as u32).
pub fn value_ty(d: DType) -> Ty {
    match d {
        DType::I32 => Ty::U32,
        DType::F32 | DType::Bf16 => Ty::Float,
    }
}

/// Two-operand `u32` operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IOp {
    Add,
    Mul,
    Min,
    Max,
}

/// One-operand float functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum F1 {
    Neg,
    Abs,
    /// `sqrt.rn`
    Sqrt,
    /// `1 / sqrt(x)`, both correctly rounded (as the CPU backend computes it).
    Rsqrt,
    /// `1 / x` (`div.rn`).
    Recip,
    Exp,
    Log,
    Tanh,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// Round to an integral value, ties to even (`cvt.rni.f32.f32`).
    RoundEven,
    /// The fake-quantization row scale: round to the nearest f16 (ties to
    /// even), at least f16's smallest normal `2^-14`, overflow to `+inf`.
    F16Scale,
}

/// Two-operand float operations (`Div` is `div.rn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum F2 {
    Add,
    Sub,
    Mul,
    Div,
    /// NaN-ignoring maximum (like `f64::max` and PTX `max.f32`).
    Max,
    Min,
}

/// Float comparisons (ordered: false when either side is NaN).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FCmp {
    Gt,
    Le,
    Eq,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RedOp {
    Sum,
    Max,
}

/// One node of the DAG.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Expr {
    Int(u32),
    Bool(bool),
    /// A float constant, by the bits of its f64 value (exactly an f32 in an
    /// f32 arena).
    F(u64),
    Var(Var),
    I2(IOp, E, E),
    /// `a / c` (unsigned).
    Div(E, u32),
    /// `a % c`.
    Rem(E, u32),
    /// `max(a, c) - c` (saturating subtraction).
    SubSat(E, u32),
    /// Unsigned `a < b`.
    Lt(E, E),
    /// `a == b` (u32).
    IEq(E, E),
    FCmp(FCmp, E, E),
    And(E, E),
    Not(E),
    /// `p ? a : b` (a, b of the same type: u32 or f32).
    Sel(E, E, E),
    F1(F1, E),
    F2(F2, E, E),
    /// Element `index` of a buffer, converted to a float (f32, bf16) or u32 (i32).
    Load(Buf, E),
    /// The hashed bigram bucket `((36313 cur) xor (27191 prev)) mod m`, in 64-bit arithmetic.
    Bigram(E, E, u32),
    /// `op` over `var` in `0..len` of `body` (`body` may use `var`).
    Reduce(RedOp, Var, u32, E),
}

/// Facts about a node: type, free variables, an exclusive upper bound of its
/// value (u32 nodes; `u64::MAX` when unknown) and a known divisor of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub ty: Ty,
    /// Sorted, without duplicates.
    pub free: Vec<Var>,
    pub bound: u64,
    pub div: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VarInfo {
    pub ty: Ty,
    /// Exclusive upper bound of a u32 variable (its loop extent).
    pub extent: u64,
    pub name: String,
}

/// The expression arena.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Exprs {
    pub float: Float,
    pub nodes: Vec<Expr>,
    pub meta: Vec<Meta>,
    pub vars: Vec<VarInfo>,
    pub bufs: Vec<DType>,
    #[serde(skip)]
    intern: HashMap<Expr, E>,
}

const UNKNOWN: u64 = u64::MAX;
/// The divisor recorded for the constant 0 (divisible by everything we ask about).
const DIV_ZERO: u64 = 1 << 40;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn merge_free(a: &[Var], b: &[Var]) -> Vec<Var> {
    let mut v: Vec<Var> = a.iter().chain(b).copied().collect();
    v.sort_unstable();
    v.dedup();
    v
}

impl Exprs {
    /// An arena of f32 floats.
    pub fn new() -> Self {
        Self::default()
    }

    /// An arena whose float nodes are of precision `float`.
    pub fn with_float(float: Float) -> Self {
        Exprs { float, ..Self::default() }
    }

    /// `v` rounded to the arena's precision.
    pub fn round(&self, v: f64) -> f64 {
        match self.float {
            Float::F32 => v as f32 as f64,
            Float::F64 => v,
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn get(&self, e: E) -> &Expr {
        &self.nodes[e.0 as usize]
    }

    pub fn meta(&self, e: E) -> &Meta {
        &self.meta[e.0 as usize]
    }

    pub fn ty(&self, e: E) -> Ty {
        self.meta[e.0 as usize].ty
    }

    pub fn free(&self, e: E) -> &[Var] {
        &self.meta[e.0 as usize].free
    }

    pub fn bound(&self, e: E) -> u64 {
        self.meta[e.0 as usize].bound
    }

    pub fn div(&self, e: E) -> u64 {
        self.meta[e.0 as usize].div
    }

    /// The constant value of a u32 node, if it is one.
    pub fn int(&self, e: E) -> Option<u32> {
        match self.get(e) {
            Expr::Int(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_bool(&self, e: E) -> Option<bool> {
        match self.get(e) {
            Expr::Bool(v) => Some(*v),
            _ => None,
        }
    }

    /// The value of a float constant node, if it is one.
    pub fn as_float(&self, e: E) -> Option<f64> {
        match self.get(e) {
            Expr::F(b) => Some(f64::from_bits(*b)),
            _ => None,
        }
    }

    /// A new variable.
    pub fn var(&mut self, ty: Ty, extent: u64, name: &str) -> Var {
        self.vars.push(VarInfo { ty, extent, name: name.to_string() });
        Var(self.vars.len() as u32 - 1)
    }

    /// A new buffer of element type `elem`.
    pub fn buf(&mut self, elem: DType) -> Buf {
        self.bufs.push(elem);
        Buf(self.bufs.len() as u32 - 1)
    }

    /// Rebuild the interning table (after deserialization).
    pub fn reindex(&mut self) {
        self.intern = self.nodes.iter().enumerate().map(|(i, x)| (x.clone(), E(i as u32))).collect();
    }

    /// Intern `x` (no simplification).
    fn mk(&mut self, x: Expr) -> E {
        if let Some(&e) = self.intern.get(&x) {
            return e;
        }
        let meta = self.compute_meta(&x);
        let e = E(self.nodes.len() as u32);
        self.nodes.push(x.clone());
        self.meta.push(meta);
        self.intern.insert(x, e);
        e
    }

    fn compute_meta(&self, x: &Expr) -> Meta {
        let m = |e: &E| &self.meta[e.0 as usize];
        let u32m = |bound: u64, div: u64, free: Vec<Var>| Meta { ty: Ty::U32, free, bound, div: div.max(1) };
        match x {
            Expr::Int(v) => u32m(*v as u64 + 1, if *v == 0 { DIV_ZERO } else { *v as u64 }, vec![]),
            Expr::Bool(_) => Meta { ty: Ty::Pred, free: vec![], bound: UNKNOWN, div: 1 },
            Expr::F(_) => Meta { ty: Ty::Float, free: vec![], bound: UNKNOWN, div: 1 },
            Expr::Var(v) => {
                let info = &self.vars[v.0 as usize];
                Meta { ty: info.ty, free: vec![*v], bound: if info.ty == Ty::U32 { info.extent } else { UNKNOWN }, div: 1 }
            }
            Expr::I2(op, a, b) => {
                let (ma, mb) = (m(a), m(b));
                let free = merge_free(&ma.free, &mb.free);
                let (ba, bb) = (ma.bound, mb.bound);
                match op {
                    IOp::Add => {
                        let bound = if ba == UNKNOWN || bb == UNKNOWN { UNKNOWN } else { (ba + bb - 1).min(UNKNOWN - 1) };
                        u32m(bound, gcd(ma.div, mb.div), free)
                    }
                    IOp::Mul => {
                        let bound = if ba == UNKNOWN || bb == UNKNOWN {
                            UNKNOWN
                        } else {
                            (ba - 1).saturating_mul(bb - 1).saturating_add(1)
                        };
                        u32m(bound, ma.div.saturating_mul(mb.div).min(DIV_ZERO), free)
                    }
                    IOp::Min => u32m(ba.min(bb), gcd(ma.div, mb.div), free),
                    IOp::Max => u32m(if ba == UNKNOWN || bb == UNKNOWN { UNKNOWN } else { ba.max(bb) }, gcd(ma.div, mb.div), free),
                }
            }
            Expr::Div(a, c) => {
                let ma = m(a);
                let c = *c as u64;
                let bound = if ma.bound == UNKNOWN { UNKNOWN } else { (ma.bound - 1) / c + 1 };
                let div = if ma.div % c == 0 { ma.div / c } else { 1 };
                u32m(bound, div, ma.free.clone())
            }
            Expr::Rem(a, c) => {
                let ma = m(a);
                u32m(ma.bound.min(*c as u64), gcd(ma.div, *c as u64), ma.free.clone())
            }
            Expr::SubSat(a, c) => {
                let ma = m(a);
                let bound = if ma.bound == UNKNOWN { UNKNOWN } else { ma.bound.saturating_sub(*c as u64).max(1) };
                u32m(bound, gcd(ma.div, *c as u64), ma.free.clone())
            }
            Expr::Lt(a, b) | Expr::IEq(a, b) | Expr::FCmp(_, a, b) | Expr::And(a, b) => {
                Meta { ty: Ty::Pred, free: merge_free(&m(a).free, &m(b).free), bound: UNKNOWN, div: 1 }
            }
            Expr::Not(a) => Meta { ty: Ty::Pred, free: m(a).free.clone(), bound: UNKNOWN, div: 1 },
            Expr::Sel(p, a, b) => {
                let (ma, mb) = (m(a), m(b));
                let free = merge_free(&merge_free(&m(p).free, &ma.free), &mb.free);
                let bound = if ma.bound == UNKNOWN || mb.bound == UNKNOWN { UNKNOWN } else { ma.bound.max(mb.bound) };
                Meta { ty: ma.ty, free, bound, div: gcd(ma.div, mb.div).max(1) }
            }
            Expr::F1(_, a) => Meta { ty: Ty::Float, free: m(a).free.clone(), bound: UNKNOWN, div: 1 },
            Expr::F2(_, a, b) => Meta { ty: Ty::Float, free: merge_free(&m(a).free, &m(b).free), bound: UNKNOWN, div: 1 },
            Expr::Load(buf, i) => {
                let ty = value_ty(self.bufs[buf.0 as usize]);
                Meta { ty, free: m(i).free.clone(), bound: UNKNOWN, div: 1 }
            }
            Expr::Bigram(a, b, md) => u32m(*md as u64, 1, merge_free(&m(a).free, &m(b).free)),
            Expr::Reduce(_, v, _, body) => {
                let free = m(body).free.iter().copied().filter(|x| x != v).collect();
                Meta { ty: Ty::Float, free, bound: UNKNOWN, div: 1 }
            }
        }
    }

    // ---- constructors with simplification --------------------------------

    pub fn int_c(&mut self, v: u32) -> E {
        self.mk(Expr::Int(v))
    }

    pub fn bool_c(&mut self, v: bool) -> E {
        self.mk(Expr::Bool(v))
    }

    pub fn f32_c(&mut self, v: f32) -> E {
        self.float_c(v as f64)
    }

    /// The float constant `v`, rounded to the arena's precision.
    pub fn float_c(&mut self, v: f64) -> E {
        let v = self.round(v);
        self.mk(Expr::F(v.to_bits()))
    }

    pub fn var_e(&mut self, v: Var) -> E {
        self.mk(Expr::Var(v))
    }

    fn check_u32(&self, es: &[E]) {
        for e in es {
            debug_assert_eq!(self.ty(*e), Ty::U32, "u32 operand expected: {:?}", self.get(*e));
        }
    }

    pub fn add(&mut self, a: E, b: E) -> E {
        self.check_u32(&[a, b]);
        match (self.int(a), self.int(b)) {
            (Some(x), Some(y)) => return self.int_c(x.wrapping_add(y)),
            (Some(0), None) => return b,
            (None, Some(0)) => return a,
            (Some(_), None) => return self.add(b, a),
            _ => {}
        }
        // (y / c) * c + y % c = y: a linear index of an unravelled index.
        if let Some(y) = self.undo_unravel(a, b).or_else(|| self.undo_unravel(b, a)) {
            return y;
        }
        // Keep constants outermost: (x + c1) + c2 = x + (c1 + c2); (x + c) + y = (x + y) + c.
        if let Some(c2) = self.int(b) {
            if let Expr::I2(IOp::Add, x, c1) = *self.get(a) {
                if let Some(c1) = self.int(c1) {
                    let s = self.int_c(c1.wrapping_add(c2));
                    return self.add(x, s);
                }
            }
        } else {
            if let Expr::I2(IOp::Add, x, c) = *self.get(a) {
                if self.int(c).is_some() {
                    let xy = self.add(x, b);
                    return self.add(xy, c);
                }
            }
            if let Expr::I2(IOp::Add, y, c) = *self.get(b) {
                if self.int(c).is_some() {
                    let xy = self.add(a, y);
                    return self.add(xy, c);
                }
            }
        }
        self.mk(Expr::I2(IOp::Add, a, b))
    }

    /// `y` when `a = (y / c) * c` and `b = y % c`.
    fn undo_unravel(&mut self, a: E, b: E) -> Option<E> {
        let Expr::I2(IOp::Mul, d, c) = *self.get(a) else { return None };
        let c = self.int(c)?;
        let Expr::Rem(y, c2) = *self.get(b) else { return None };
        if c2 != c {
            return None;
        }
        (self.div_c(y, c) == d).then_some(y)
    }

    pub fn add_c(&mut self, a: E, c: u32) -> E {
        let c = self.int_c(c);
        self.add(a, c)
    }

    pub fn mul(&mut self, a: E, b: E) -> E {
        self.check_u32(&[a, b]);
        match (self.int(a), self.int(b)) {
            (Some(x), Some(y)) => return self.int_c(x.wrapping_mul(y)),
            (Some(0), _) | (_, Some(0)) => return self.int_c(0),
            (Some(1), None) => return b,
            (None, Some(1)) => return a,
            (Some(_), None) => return self.mul(b, a),
            _ => {}
        }
        if let Some(c2) = self.int(b) {
            match *self.get(a) {
                // (x * c1) * c2 = x * (c1 c2)
                Expr::I2(IOp::Mul, x, c1) if self.int(c1).is_some() => {
                    let c = self.int_c(self.int(c1).unwrap().wrapping_mul(c2));
                    return self.mul(x, c);
                }
                // (x + c1) * c2 = x c2 + c1 c2 (keeps constants outermost)
                Expr::I2(IOp::Add, x, c1) if self.int(c1).is_some() => {
                    let x2 = self.mul_c(x, c2);
                    return self.add_c(x2, self.int(c1).unwrap().wrapping_mul(c2));
                }
                _ => {}
            }
        }
        self.mk(Expr::I2(IOp::Mul, a, b))
    }

    pub fn mul_c(&mut self, a: E, c: u32) -> E {
        let c = self.int_c(c);
        self.mul(a, c)
    }

    pub fn min(&mut self, a: E, b: E) -> E {
        self.check_u32(&[a, b]);
        if let (Some(x), Some(y)) = (self.int(a), self.int(b)) {
            return self.int_c(x.min(y));
        }
        if a == b {
            return a;
        }
        // min(x, c) = x when x < c + 1.
        if let Some(c) = self.int(b) {
            if self.bound(a) <= c as u64 + 1 {
                return a;
            }
        }
        if let Some(c) = self.int(a) {
            if self.bound(b) <= c as u64 + 1 {
                return b;
            }
        }
        self.mk(Expr::I2(IOp::Min, a, b))
    }

    pub fn min_c(&mut self, a: E, c: u32) -> E {
        let c = self.int_c(c);
        self.min(a, c)
    }

    pub fn max(&mut self, a: E, b: E) -> E {
        self.check_u32(&[a, b]);
        if let (Some(x), Some(y)) = (self.int(a), self.int(b)) {
            return self.int_c(x.max(y));
        }
        if a == b || self.int(b) == Some(0) {
            return a;
        }
        if self.int(a) == Some(0) {
            return b;
        }
        self.mk(Expr::I2(IOp::Max, a, b))
    }

    /// `a / c`.
    pub fn div_c(&mut self, a: E, c: u32) -> E {
        self.check_u32(&[a]);
        assert!(c > 0, "division by zero");
        if c == 1 {
            return a;
        }
        if let Some(x) = self.int(a) {
            return self.int_c(x / c);
        }
        if self.bound(a) <= c as u64 {
            return self.int_c(0);
        }
        match *self.get(a) {
            // (x * k c) / c = x * k
            Expr::I2(IOp::Mul, x, k) if self.int(k).is_some_and(|k| k % c == 0) => {
                let k = self.int(k).unwrap();
                return self.mul_c(x, k / c);
            }
            // (x / c1) / c2 = x / (c1 c2)
            Expr::Div(x, c1) if (c1 as u64) * (c as u64) <= u32::MAX as u64 => return self.div_c(x, c1 * c),
            // (p + q) / c = p / c + q / c when c divides p or q
            Expr::I2(IOp::Add, p, q) => {
                let c64 = c as u64;
                if self.div(p).is_multiple_of(c64) || self.div(q).is_multiple_of(c64) {
                    let pd = self.div_c(p, c);
                    let qd = self.div_c(q, c);
                    return self.add(pd, qd);
                }
                // (p + q) / c = p / c when g = gcd(div(p), c) divides p and c and q < g
                for (p, q) in [(p, q), (q, p)] {
                    if self.bound(q) <= gcd(self.div(p), c64) {
                        return self.div_c(p, c);
                    }
                }
            }
            _ => {}
        }
        self.mk(Expr::Div(a, c))
    }

    /// `a % c`.
    pub fn rem_c(&mut self, a: E, c: u32) -> E {
        self.check_u32(&[a]);
        assert!(c > 0, "remainder by zero");
        if c == 1 {
            return self.int_c(0);
        }
        if let Some(x) = self.int(a) {
            return self.int_c(x % c);
        }
        if self.bound(a) <= c as u64 {
            return a;
        }
        let c64 = c as u64;
        if self.div(a).is_multiple_of(c64) {
            return self.int_c(0);
        }
        match *self.get(a) {
            // (p + q) % c = q % c when c divides p
            Expr::I2(IOp::Add, p, q) => {
                if self.div(p).is_multiple_of(c64) {
                    return self.rem_c(q, c);
                }
                if self.div(q).is_multiple_of(c64) {
                    return self.rem_c(p, c);
                }
                // (p + q) % c = p % c + q when g = gcd(div(p), c) and q < g
                for (p, q) in [(p, q), (q, p)] {
                    if self.bound(q) <= gcd(self.div(p), c64) {
                        let r = self.rem_c(p, c);
                        return self.add(r, q);
                    }
                }
            }
            // (x % k c) % c = x % c
            Expr::Rem(x, k) if k % c == 0 => return self.rem_c(x, c),
            _ => {}
        }
        self.mk(Expr::Rem(a, c))
    }

    /// `max(a, c) - c`.
    pub fn sub_sat(&mut self, a: E, c: u32) -> E {
        self.check_u32(&[a]);
        if c == 0 {
            return a;
        }
        if let Some(x) = self.int(a) {
            return self.int_c(x.saturating_sub(c));
        }
        // (x + c1) - c with c1 >= c
        if let Expr::I2(IOp::Add, x, c1) = *self.get(a) {
            if let Some(c1) = self.int(c1) {
                if c1 >= c {
                    return self.add_c(x, c1 - c);
                }
            }
        }
        self.mk(Expr::SubSat(a, c))
    }

    pub fn lt(&mut self, a: E, b: E) -> E {
        self.check_u32(&[a, b]);
        if let (Some(x), Some(y)) = (self.int(a), self.int(b)) {
            return self.bool_c(x < y);
        }
        if let Some(y) = self.int(b) {
            if self.bound(a) <= y as u64 {
                return self.bool_c(true);
            }
            if y == 0 {
                return self.bool_c(false);
            }
        }
        self.mk(Expr::Lt(a, b))
    }

    pub fn lt_c(&mut self, a: E, c: u32) -> E {
        let c = self.int_c(c);
        self.lt(a, c)
    }

    pub fn ieq(&mut self, a: E, b: E) -> E {
        self.check_u32(&[a, b]);
        if let (Some(x), Some(y)) = (self.int(a), self.int(b)) {
            return self.bool_c(x == y);
        }
        if a == b {
            return self.bool_c(true);
        }
        if let Some(y) = self.int(b) {
            if self.bound(a) <= y as u64 {
                return self.bool_c(false);
            }
        }
        self.mk(Expr::IEq(a, b))
    }

    pub fn ieq_c(&mut self, a: E, c: u32) -> E {
        let c = self.int_c(c);
        self.ieq(a, c)
    }

    pub fn fcmp(&mut self, op: FCmp, a: E, b: E) -> E {
        // Constants are exact in the arena's precision: comparing them as f64 is exact.
        if let (Some(x), Some(y)) = (self.as_float(a), self.as_float(b)) {
            return self.bool_c(match op {
                FCmp::Gt => x > y,
                FCmp::Le => x <= y,
                FCmp::Eq => x == y,
            });
        }
        self.mk(Expr::FCmp(op, a, b))
    }

    pub fn and(&mut self, a: E, b: E) -> E {
        match (self.as_bool(a), self.as_bool(b)) {
            (Some(false), _) | (_, Some(false)) => self.bool_c(false),
            (Some(true), _) => b,
            (_, Some(true)) => a,
            _ if a == b => a,
            _ => self.mk(Expr::And(a, b)),
        }
    }

    pub fn not(&mut self, a: E) -> E {
        if let Some(v) = self.as_bool(a) {
            return self.bool_c(!v);
        }
        if let Expr::Not(x) = *self.get(a) {
            return x;
        }
        self.mk(Expr::Not(a))
    }

    /// `p ? a : b`.
    pub fn sel(&mut self, p: E, a: E, b: E) -> E {
        debug_assert_eq!(self.ty(p), Ty::Pred);
        debug_assert_eq!(self.ty(a), self.ty(b));
        match self.as_bool(p) {
            Some(true) => return a,
            Some(false) => return b,
            None => {}
        }
        if a == b {
            return a;
        }
        if let Expr::Not(q) = *self.get(p) {
            return self.sel(q, b, a);
        }
        self.mk(Expr::Sel(p, a, b))
    }

    pub fn f1(&mut self, f: F1, a: E) -> E {
        if let Some(x) = self.as_float(a) {
            // Only what every code generator rounds exactly (no libm calls).
            macro_rules! fold {
                ($x:expr) => {
                    match f {
                        F1::Neg => Some(-$x),
                        F1::Abs => Some($x.abs()),
                        F1::Sqrt => Some($x.sqrt()),
                        F1::Rsqrt => Some(1.0 / $x.sqrt()),
                        F1::Recip => Some(1.0 / $x),
                        _ => None,
                    }
                };
            }
            let folded = match self.float {
                Float::F32 => fold!(x as f32).map(|v| v as f64),
                Float::F64 => fold!(x),
            };
            if let Some(v) = folded {
                return self.float_c(v);
            }
        }
        self.mk(Expr::F1(f, a))
    }

    pub fn f2(&mut self, f: F2, a: E, b: E) -> E {
        if let (Some(x), Some(y)) = (self.as_float(a), self.as_float(b)) {
            macro_rules! fold {
                ($x:expr, $y:expr) => {
                    match f {
                        F2::Add => $x + $y,
                        F2::Sub => $x - $y,
                        F2::Mul => $x * $y,
                        F2::Div => $x / $y,
                        F2::Max => $x.max($y),
                        F2::Min => $x.min($y),
                    }
                };
            }
            let v = match self.float {
                Float::F32 => fold!(x as f32, y as f32) as f64,
                Float::F64 => fold!(x, y),
            };
            return self.float_c(v);
        }
        self.mk(Expr::F2(f, a, b))
    }

    pub fn fadd(&mut self, a: E, b: E) -> E {
        self.f2(F2::Add, a, b)
    }
    pub fn fsub(&mut self, a: E, b: E) -> E {
        self.f2(F2::Sub, a, b)
    }
    pub fn fmul(&mut self, a: E, b: E) -> E {
        self.f2(F2::Mul, a, b)
    }
    pub fn fdiv(&mut self, a: E, b: E) -> E {
        self.f2(F2::Div, a, b)
    }

    pub fn load(&mut self, buf: Buf, index: E) -> E {
        self.check_u32(&[index]);
        self.mk(Expr::Load(buf, index))
    }

    pub fn bigram(&mut self, cur: E, prev: E, m: u32) -> E {
        self.check_u32(&[cur, prev]);
        self.mk(Expr::Bigram(cur, prev, m))
    }

    /// `op` over `var` in `0..len` of `body`.
    pub fn reduce(&mut self, op: RedOp, var: Var, len: u32, body: E) -> E {
        if len == 1 && !self.free(body).contains(&var) {
            return body;
        }
        self.mk(Expr::Reduce(op, var, len, body))
    }

    /// `(base, off)` with `e = base + off` (`off` a constant, 0 if none).
    pub fn split_offset(&self, e: E) -> (E, u32) {
        match *self.get(e) {
            Expr::I2(IOp::Add, base, c) if self.int(c).is_some() => (base, self.int(c).unwrap()),
            _ => (e, 0),
        }
    }

    // ---- index helpers ---------------------------------------------------

    /// Row-major linear index of `idx` in `shape`.
    pub fn linear(&mut self, shape: &[usize], idx: &[E]) -> E {
        assert_eq!(shape.len(), idx.len(), "index rank");
        let mut acc = self.int_c(0);
        for (i, &d) in shape.iter().enumerate() {
            acc = self.mul_c(acc, d as u32);
            acc = self.add(acc, idx[i]);
        }
        acc
    }

    /// The multi-index of linear index `lin` in `shape`.
    pub fn unravel(&mut self, lin: E, shape: &[usize]) -> Vec<E> {
        let mut out = vec![lin; shape.len()];
        let mut stride: u64 = 1;
        for i in (0..shape.len()).rev() {
            let d = shape[i] as u64;
            let q = if stride == 1 { lin } else { self.div_c(lin, stride as u32) };
            // The outermost index needs no remainder: `lin` is in range by construction.
            out[i] = if i == 0 { q } else { self.rem_c(q, d as u32) };
            stride *= d.max(1);
        }
        out
    }

}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_round_trips_collapse() {
        let mut x = Exprs::new();
        let h = x.var(Ty::U32, 3, "h");
        let j = x.var(Ty::U32, 16, "j");
        let (he, je) = (x.var_e(h), x.var_e(j));
        // [H, d] -> [D] -> [H, d]
        let lin = x.linear(&[3, 16], &[he, je]);
        let back = x.unravel(lin, &[3, 16]);
        assert_eq!(back, vec![he, je]);
        // (h*16 + j + 16) / 16 = h + 1
        let l1 = x.add_c(lin, 16);
        let d = x.div_c(l1, 16);
        let h1 = x.add_c(he, 1);
        assert_eq!(d, h1);
        let r = x.rem_c(l1, 16);
        assert_eq!(r, je);
        // linear(unravel(i)) = i, also for 4 consecutive elements per thread
        let i = x.var(Ty::U32, 3 * 33 * 48 / 4, "i");
        let ie = x.var_e(i);
        let base = x.mul_c(ie, 4);
        for j in 0..4 {
            let e = x.add_c(base, j);
            let idx = x.unravel(e, &[3, 33, 48]);
            assert_eq!(x.linear(&[3, 33, 48], &idx), e);
            // the broadcast [48] operand reads (4 i % 48) + j
            let r = x.rem_c(e, 48);
            let r0 = x.rem_c(base, 48);
            assert_eq!(r, x.add_c(r0, j));
        }
    }

    #[test]
    fn constants_fold_and_intern() {
        let mut x = Exprs::new();
        let a = x.int_c(6);
        let b = x.int_c(7);
        let p = x.mul(a, b);
        assert_eq!(x.int(p), Some(42));
        let v = x.var(Ty::U32, 100, "i");
        let ve = x.var_e(v);
        let s1 = x.add(ve, p);
        let s2 = x.add(p, ve);
        assert_eq!(s1, s2);
        let lt = x.lt_c(ve, 100);
        assert_eq!(x.as_bool(lt), Some(true));
    }
}
