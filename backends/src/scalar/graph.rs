//! The value of an IR node at a multi-index, as an expression.
//!
//! [`GraphExprs::value`] is the demand-driven code generator: asked for node
//! `v` at index `idx` (one u32 expression per axis), it maps the index through
//! the node's op to its operands' indices and recurses, down to loads of the
//! kernel's inputs (at their storage type), immediates and overrides (a GEMM
//! accumulator standing for the product). `(node, index)` pairs are memoized
//! and the expressions are hash-consed, so shared subexpressions exist once.
//!
//! Index algebra (output index -> operand index):
//! * broadcasting (binary ops, `Broadcast`): size-1 and missing leading axes read index 0;
//! * `Reshape`: the common prefix and suffix of the two shapes pass through,
//!   the middle is linearized and unravelled (and simplifies back when the
//!   shapes only split or merge axes);
//! * `Permute`, `Index` (a fixed index inserted), `Unindex` (zero off the
//!   index), `Shift` (offset, zero outside, the read clamped in range);
//! * `Rope`: the partner element `j +- d/2`, cos/sin from a rotary table;
//! * `BigramHash`: the ids at `t` and `t - 1`; `Gather`: the row read from the ids;
//! * reductions (`Reduce`, `SumTo`, the row max of `FakeQuant`, the
//!   log-sum-exp of cross entropy) become `Reduce` nodes over a fresh variable.

use super::expr::*;
use super::{ops, ScalarError};
use pgc_ir::{Graph, Op, ReduceFn, ValueId};
use std::collections::{HashMap, HashSet};

/// What a buffer of the expressions is bound to at launch time: `R`, the code
/// generator's reference to a buffer (PTX: a launch argument), or a table
/// the caller makes.
#[derive(Clone, Debug, PartialEq)]
pub enum BufArg<R> {
    Ref(R),
    /// The rotary table `AuxBuffer::RopeTable { positions, half, base }` (allocated by the caller).
    Rope { positions: usize, half: usize, base: f64 },
}

/// Builds expressions for the nodes of one kernel; `R` names buffers.
pub struct GraphExprs<'g, R> {
    pub g: &'g Graph,
    pub x: Exprs,
    /// One entry per buffer of `x`.
    pub buf_args: Vec<BufArg<R>>,
    /// Nodes computed by this kernel (others are read from memory).
    inside: HashSet<usize>,
    /// Stored values this kernel may read, by node.
    sources: HashMap<usize, Buf>,
    /// Readable values whose buffer is made at the first read.
    lazy: HashMap<usize, (DType, R)>,
    overrides: HashMap<(usize, Vec<E>), E>,
    /// Values overridden at some index: any other index is an error.
    overridden: HashSet<usize>,
    memo: HashMap<(usize, Vec<E>), E>,
    /// Row helpers (log-sum-exp, row max) by (kind, node, row index).
    rows: HashMap<(u8, usize, Vec<E>), E>,
    ropes: HashMap<(usize, usize, u64), Buf>,
    /// Nesting of `value` calls: past [`PREFETCH_DEPTH`] the operands are
    /// evaluated bottom-up first (see [`GraphExprs::prefetch`]).
    depth: usize,
}

/// `value` nesting after which a chain is evaluated from its bottom with an
/// explicit stack, so a 100,000-op chain does not overflow the thread's stack.
const PREFETCH_DEPTH: usize = 64;

fn err<T>(msg: impl Into<String>) -> Result<T, ScalarError> {
    Err(ScalarError::Unsupported(msg.into()))
}

impl<'g, R> GraphExprs<'g, R> {
    pub fn new(g: &'g Graph, inside: impl IntoIterator<Item = ValueId>) -> Self {
        GraphExprs {
            g,
            x: Exprs::new(),
            buf_args: Vec::new(),
            inside: inside.into_iter().map(|v| v.index()).collect(),
            sources: HashMap::new(),
            lazy: HashMap::new(),
            overrides: HashMap::new(),
            overridden: HashSet::new(),
            memo: HashMap::new(),
            rows: HashMap::new(),
            ropes: HashMap::new(),
            depth: 0,
        }
    }

    /// A new buffer bound to `arg`.
    pub fn buffer(&mut self, elem: DType, arg: BufArg<R>) -> Buf {
        let b = self.x.buf(elem);
        self.buf_args.push(arg);
        b
    }

    /// Read node `v` from memory through `buf` (a kernel input, a scratch copy, ...).
    pub fn source(&mut self, v: ValueId, elem: DType, arg: R) -> Buf {
        let b = self.buffer(elem, BufArg::Ref(arg));
        self.sources.insert(v.index(), b);
        b
    }

    /// Read node `v` from `arg`, making the buffer (a kernel parameter) only if it is read.
    pub fn source_lazy(&mut self, v: ValueId, elem: DType, arg: R) {
        self.lazy.insert(v.index(), (elem, arg));
    }

    /// Read node `v` through an existing buffer.
    pub fn source_buf(&mut self, v: ValueId, buf: Buf) {
        self.sources.insert(v.index(), buf);
    }

    pub fn has_source(&self, v: ValueId) -> bool {
        self.sources.contains_key(&v.index()) || self.lazy.contains_key(&v.index())
    }

    /// Node `v` at `idx` is the expression `e` (e.g. a GEMM accumulator);
    /// `v` at any other index becomes an error.
    pub fn set_override(&mut self, v: ValueId, idx: Vec<E>, e: E) {
        self.overridden.insert(v.index());
        self.overrides.insert((v.index(), idx), e);
    }

    pub fn shape(&self, v: ValueId) -> &[usize] {
        &self.g.ty(v).shape
    }

    fn f(&mut self, v: f32) -> E {
        self.x.f32_c(v)
    }

    /// Broadcast index: operand of shape `from` read by an output index of shape `to`.
    pub fn bidx(&mut self, from: &[usize], to: &[usize], idx: &[E]) -> Vec<E> {
        let off = to.len() - from.len();
        (0..from.len()).map(|k| if from[k] == 1 { self.x.int_c(0) } else { idx[k + off] }).collect()
    }

    /// The value of node `v` at multi-index `idx`.
    pub fn value(&mut self, v: ValueId, idx: &[E]) -> Result<E, ScalarError> {
        let i = v.index();
        let node = &self.g.nodes[i];
        if idx.len() != node.ty.rank() {
            return err(format!("internal: %{i} indexed with {} axes, has {}", idx.len(), node.ty.rank()));
        }
        let key = (i, idx.to_vec());
        if let Some(&e) = self.overrides.get(&key) {
            return Ok(e);
        }
        if self.overridden.contains(&i) {
            return err(format!("%{i} ({}) is read at another element than the one this thread holds", node.op.name()));
        }
        if let Some(&e) = self.memo.get(&key) {
            return Ok(e);
        }
        let e = match &node.op {
            Op::Scalar { value } => self.x.float_c(*value),
            Op::Input { .. } | Op::Param { .. } => self.load(v, idx)?,
            _ if !self.inside.contains(&i) => self.load(v, idx)?,
            _ => {
                if self.depth > 0 && self.depth.is_multiple_of(PREFETCH_DEPTH) {
                    self.prefetch(v, idx)?;
                    if let Some(&e) = self.memo.get(&key) {
                        return Ok(e);
                    }
                }
                self.depth += 1;
                let r = self.op_value(v, idx);
                self.depth -= 1;
                r?
            }
        };
        self.memo.insert(key, e);
        Ok(e)
    }

    /// Walk down from `v` at `idx` with an explicit stack through the ops
    /// whose operand indices follow from the output index alone (element-wise
    /// ops, broadcasts, reshapes, permutes, index), then evaluate what was
    /// found in node order (operands come first in the graph), so every
    /// evaluation finds its chain operand memoized and recurses one level.
    fn prefetch(&mut self, v: ValueId, idx: &[E]) -> Result<(), ScalarError> {
        let g = self.g;
        let mut stack: Vec<(ValueId, Vec<E>)> = vec![(v, idx.to_vec())];
        let mut seen: HashSet<(usize, Vec<E>)> = HashSet::new();
        let mut found: Vec<(ValueId, Vec<E>)> = Vec::new();
        while let Some((n, ii)) = stack.pop() {
            let i = n.index();
            let key = (i, ii);
            if !self.inside.contains(&i) || self.memo.contains_key(&key) || self.overridden.contains(&i) || seen.contains(&key) {
                continue;
            }
            let node = g.node(n);
            let ii = &key.1;
            let out_shape = &node.ty.shape;
            let shape_of = |k: usize| &g.ty(node.args[k]).shape;
            match &node.op {
                Op::Unary { .. } | Op::LeakyRelu { .. } | Op::LeakyStep { .. } => stack.push((node.args[0], ii.clone())),
                Op::Binary { .. } => {
                    for k in 0..2 {
                        let ik = self.bidx(shape_of(k), out_shape, ii);
                        stack.push((node.args[k], ik));
                    }
                }
                Op::Broadcast { .. } => {
                    let ia = self.bidx(shape_of(0), out_shape, ii);
                    stack.push((node.args[0], ia));
                }
                Op::Reshape { .. } => {
                    let ia = self.reshape_index(shape_of(0), out_shape, ii);
                    stack.push((node.args[0], ia));
                }
                Op::Permute { perm } => {
                    let mut ia = vec![ii[0]; perm.len()];
                    for (o, &p) in perm.iter().enumerate() {
                        ia[p] = ii[o];
                    }
                    stack.push((node.args[0], ia));
                }
                Op::Index { axis, index } => {
                    let mut ia = ii.clone();
                    let c = self.x.int_c(*index as u32);
                    ia.insert(*axis, c);
                    stack.push((node.args[0], ia));
                }
                _ => {}
            }
            found.push((n, key.1.clone()));
            seen.insert(key);
        }
        found.sort_by_key(|(n, _)| n.index());
        let depth = std::mem::replace(&mut self.depth, 1);
        let r = found.into_iter().try_for_each(|(n, ii)| self.value(n, &ii).map(|_| ()));
        self.depth = depth;
        r
    }

    fn load(&mut self, v: ValueId, idx: &[E]) -> Result<E, ScalarError> {
        if let Some((elem, arg)) = self.lazy.remove(&v.index()) {
            self.source(v, elem, arg);
        }
        let Some(&buf) = self.sources.get(&v.index()) else {
            return err(format!("internal: the kernel reads %{} ({}) but has no buffer for it", v.index(), self.g.node(v).op.name()));
        };
        let shape = self.g.ty(v).shape.clone();
        let lin = self.x.linear(&shape, idx);
        Ok(self.x.load(buf, lin))
    }

    fn rope_table(&mut self, positions: usize, half: usize, base: f64) -> Buf {
        if let Some(&b) = self.ropes.get(&(positions, half, base.to_bits())) {
            return b;
        }
        let b = self.buffer(DType::F32, BufArg::Rope { positions, half, base });
        self.ropes.insert((positions, half, base.to_bits()), b);
        b
    }

    fn op_value(&mut self, v: ValueId, idx: &[E]) -> Result<E, ScalarError> {
        let g = self.g;
        let node = g.node(v);
        let out_shape = node.ty.shape.clone();
        let arg = |k: usize| node.args[k];
        let shape_of = |k: usize| g.ty(node.args[k]).shape.clone();
        Ok(match &node.op {
            Op::Unary { .. } | Op::LeakyRelu { .. } | Op::LeakyStep { .. } => {
                let a = self.value(arg(0), idx)?;
                return ops::pointwise(&mut self.x, &node.op, &[a]).ok_or_else(|| ScalarError::Unsupported(format!("internal: {} is not element-wise", node.op.name())));
            }
            Op::Binary { .. } => {
                let ia = self.bidx(&shape_of(0), &out_shape, idx);
                let ib = self.bidx(&shape_of(1), &out_shape, idx);
                let a = self.value(arg(0), &ia)?;
                let b = self.value(arg(1), &ib)?;
                return ops::pointwise(&mut self.x, &node.op, &[a, b]).ok_or_else(|| ScalarError::Unsupported(format!("internal: {} is not element-wise", node.op.name())));
            }
            Op::Broadcast { .. } => {
                let ia = self.bidx(&shape_of(0), &out_shape, idx);
                self.value(arg(0), &ia)?
            }
            Op::Reduce { f, axis, keepdim } => {
                let s = shape_of(0);
                let n = s[*axis];
                let x = arg(0);
                let op = if *f == ReduceFn::Max { RedOp::Max } else { RedOp::Sum };
                let r = self.reduce_over(op, n as u32, *axis + 1 == s.len(), |gx, k| {
                    let mut ii: Vec<E> = idx.to_vec();
                    if *keepdim {
                        ii[*axis] = k;
                    } else {
                        ii.insert(*axis, k);
                    }
                    gx.value(x, &ii)
                })?;
                if *f == ReduceFn::Mean {
                    let nf = self.f(n as f32);
                    self.x.fdiv(r, nf)
                } else {
                    r
                }
            }
            Op::SumTo { .. } => {
                let s = shape_of(0);
                let x = arg(0);
                let (total, contiguous) = sum_to_total(&s, &out_shape);
                if total == 0 {
                    let ii = self.sum_to_index(&s, &out_shape, idx, None);
                    self.value(x, &ii)?
                } else {
                    self.reduce_over(RedOp::Sum, total, contiguous, |gx, k| {
                        let ii = gx.sum_to_index(&s, &out_shape, idx, Some(k));
                        gx.value(x, &ii)
                    })?
                }
            }
            Op::Reshape { .. } => {
                let ii = self.reshape_index(&shape_of(0), &out_shape, idx);
                self.value(arg(0), &ii)?
            }
            Op::Permute { perm } => {
                let mut ii = vec![idx[0]; perm.len()];
                for (o, &p) in perm.iter().enumerate() {
                    ii[p] = idx[o];
                }
                self.value(arg(0), &ii)?
            }
            Op::Index { axis, index } => {
                let mut ii = idx.to_vec();
                let c = self.x.int_c(*index as u32);
                ii.insert(*axis, c);
                self.value(arg(0), &ii)?
            }
            Op::Unindex { axis, index, .. } => {
                let p = self.x.ieq_c(idx[*axis], *index as u32);
                let mut ii = idx.to_vec();
                ii.remove(*axis);
                let a = self.value(arg(0), &ii)?;
                let z = self.f(0.0);
                self.x.sel(p, a, z)
            }
            Op::Shift { axis, offset } => {
                let n = out_shape[*axis] as u32;
                let t = idx[*axis];
                let z = self.f(0.0);
                if *offset == 0 {
                    self.value(arg(0), idx)?
                } else if offset.unsigned_abs() >= n as u64 {
                    z
                } else {
                    let (valid, src) = if *offset > 0 {
                        let o = *offset as u32;
                        let lim = self.x.int_c(o - 1);
                        (self.x.lt(lim, t), self.x.sub_sat(t, o))
                    } else {
                        let o = offset.unsigned_abs() as u32;
                        let tp = self.x.add_c(t, o);
                        (self.x.lt_c(tp, n), self.x.min_c(tp, n - 1))
                    };
                    let mut ii = idx.to_vec();
                    ii[*axis] = src;
                    let a = self.value(arg(0), &ii)?;
                    self.x.sel(valid, a, z)
                }
            }
            Op::Rope { base, inverse } => {
                let r = out_shape.len();
                let (tlen, d) = (out_shape[r - 2], out_shape[r - 1]);
                let h = (d / 2) as u32;
                let (t, j) = (idx[r - 2], idx[r - 1]);
                let lo = self.x.lt_c(j, h);
                let jj = self.x.rem_c(j, h);
                let up = self.x.add_c(j, h);
                let down = self.x.sub_sat(j, h);
                let partner = self.x.sel(lo, up, down);
                let xj = self.value(arg(0), idx)?;
                let mut ip = idx.to_vec();
                ip[r - 1] = partner;
                let xp = self.value(arg(0), &ip)?;
                let table = self.rope_table(tlen, h as usize, *base);
                let th = self.x.mul_c(t, h);
                let ci = self.x.add(th, jj);
                let si = self.x.add_c(ci, tlen as u32 * h);
                let c = self.x.load(table, ci);
                let s = self.x.load(table, si);
                let nxp = self.x.f1(F1::Neg, xp);
                let coef = if *inverse { self.x.sel(lo, nxp, xp) } else { self.x.sel(lo, xp, nxp) };
                let a = self.x.fmul(xj, c);
                let b = self.x.fmul(coef, s);
                self.x.fadd(a, b)
            }
            Op::BigramHash { buckets } => {
                let m = (*buckets - 1) as u32;
                let (bb, t) = (idx[0], idx[1]);
                let cur = self.value(arg(0), &[bb, t])?;
                let tp = self.x.sub_sat(t, 1);
                let prev = self.value(arg(0), &[bb, tp])?;
                let zero = self.x.int_c(0);
                let pos = self.x.lt(zero, t);
                let h = self.x.bigram(cur, prev, m);
                let mc = self.x.int_c(m);
                self.x.sel(pos, h, mc)
            }
            Op::Gather => {
                let rows = shape_of(0)[0] as u32;
                let r = idx.len();
                let id = self.value(arg(1), &idx[..r - 1])?;
                let id = self.x.min_c(id, rows - 1);
                self.value(arg(0), &[id, idx[r - 1]])?
            }
            Op::FakeQuant { bits } => {
                let (r, c) = (idx[0], idx[1]);
                let s = self.quant_scale(arg(0), r, *bits)?;
                let w = self.value(arg(0), &[r, c])?;
                let qmax = ((1i64 << (bits - 1)) - 1) as f32;
                let x = self.x.fdiv(w, s);
                let lo = self.f(-qmax - 1.0);
                let hi = self.f(qmax);
                let x = self.x.f2(F2::Max, x, lo);
                let x = self.x.f2(F2::Min, x, hi);
                let q = self.x.f1(F1::RoundEven, x);
                self.x.fmul(q, s)
            }
            Op::CrossEntropy => {
                let tshape = shape_of(1);
                let n = tshape.iter().product::<usize>();
                let k = self.x.var(Ty::U32, n as u64, "row");
                let ke = self.x.var_e(k);
                let row = self.x.unravel(ke, &tshape);
                let l = self.ce_row_loss(arg(0), arg(1), &row)?;
                let total = self.x.reduce(RedOp::Sum, k, n as u32, l);
                let nf = self.f(n as f32);
                self.x.fdiv(total, nf)
            }
            Op::CrossEntropyGrad => {
                let r = idx.len();
                let row = &idx[..r - 1];
                let n = shape_of(1).iter().product::<usize>();
                let lse = self.lse(arg(0), row)?;
                let dl = self.value(arg(2), &[])?;
                let nf = self.f(n as f32);
                let scale = self.x.fdiv(dl, nf);
                let z = self.value(arg(0), idx)?;
                let d = self.x.fsub(z, lse);
                let e = self.x.f1(F1::Exp, d);
                let p = self.x.fmul(e, scale);
                let tg = self.value(arg(1), row)?;
                let hit = self.x.ieq(idx[r - 1], tg);
                let zero = self.f(0.0);
                let oh = self.x.sel(hit, scale, zero);
                self.x.fsub(p, oh)
            }
            Op::Linear | Op::MatMul | Op::OuterSum | Op::CausalAttention { .. } | Op::CausalAttentionGrad { .. } | Op::ScatterAdd { .. } => {
                return err(format!("%{} ({}) is not element-wise and cannot be computed inside this kernel", v.index(), node.op.name()))
            }
            Op::Input { .. } | Op::Param { .. } | Op::Scalar { .. } => unreachable!("handled by value"),
        })
    }

    /// `op` over `k` in `0..len` of `body(k)`. `contiguous` (the reduced
    /// elements are consecutive in memory) and `len` a multiple of 4 from 128
    /// on: four consecutive `k` per step (`op` over `q` of the four values at
    /// `4q + j`), so the lowering can read them with one vector load.
    pub fn reduce_over(
        &mut self,
        op: RedOp,
        len: u32,
        contiguous: bool,
        mut body: impl FnMut(&mut Self, E) -> Result<E, ScalarError>,
    ) -> Result<E, ScalarError> {
        if contiguous && len >= 128 && len.is_multiple_of(4) {
            let q = self.x.var(Ty::U32, len as u64 / 4, "q");
            let qe = self.x.var_e(q);
            let base = self.x.mul_c(qe, 4);
            let mut acc: Option<E> = None;
            for j in 0..4 {
                let k = self.x.add_c(base, j);
                let v = body(self, k)?;
                acc = Some(match (acc, op) {
                    (None, _) => v,
                    (Some(a), RedOp::Sum) => self.x.fadd(a, v),
                    (Some(a), RedOp::Max) => self.x.f2(F2::Max, a, v),
                });
            }
            Ok(self.x.reduce(op, q, len / 4, acc.unwrap()))
        } else {
            let k = self.x.var(Ty::U32, len as u64, "k");
            let ke = self.x.var_e(k);
            let v = body(self, ke)?;
            Ok(self.x.reduce(op, k, len, v))
        }
    }

    /// The operand index of `SumTo` (input shape `s`, output shape `o`) at
    /// output index `idx`, the reduced axes at flat index `k` (over their
    /// product, see [`sum_to_total`]; `None` when nothing is reduced).
    pub fn sum_to_index(&mut self, s: &[usize], o: &[usize], idx: &[E], k: Option<E>) -> Vec<E> {
        let pad = s.len() - o.len();
        let reduced: Vec<usize> = (0..s.len()).filter(|&i| i < pad || (o[i - pad] == 1 && s[i] != 1)).collect();
        if reduced.is_empty() {
            return (0..s.len()).map(|i| if s[i] == 1 { self.x.int_c(0) } else { idx[i - pad] }).collect();
        }
        let rshape: Vec<usize> = reduced.iter().map(|&i| s[i]).collect();
        let kk = k.expect("a reduction index");
        let parts = self.x.unravel(kk, &rshape);
        let mut ii = Vec::with_capacity(s.len());
        let mut r = 0;
        for i in 0..s.len() {
            if reduced.contains(&i) {
                ii.push(parts[r]);
                r += 1;
            } else if s[i] == 1 {
                ii.push(self.x.int_c(0));
            } else {
                ii.push(idx[i - pad]);
            }
        }
        ii
    }

    /// Operand index of a reshape from `from` to `to` at output index `idx`.
    pub fn reshape_index(&mut self, from: &[usize], to: &[usize], idx: &[E]) -> Vec<E> {
        let mut p = 0;
        while p < from.len() && p < to.len() && from[p] == to[p] {
            p += 1;
        }
        let mut q = 0;
        while q < from.len() - p && q < to.len() - p && from[from.len() - 1 - q] == to[to.len() - 1 - q] {
            q += 1;
        }
        let mid_to = &to[p..to.len() - q];
        let mid_from = &from[p..from.len() - q];
        let lin = self.x.linear(mid_to, &idx[p..to.len() - q]);
        let mid = self.x.unravel(lin, mid_from);
        let mut ii: Vec<E> = idx[..p].to_vec();
        ii.extend(mid);
        ii.extend_from_slice(&idx[to.len() - q..]);
        ii
    }

    /// The fake-quantization row scale of row `r` (from `max_j |w[r, j]|`).
    fn quant_scale(&mut self, w: ValueId, r: E, bits: u32) -> Result<E, ScalarError> {
        let key = (0u8, w.index(), vec![r, self.x.int_c(bits)]);
        if let Some(&e) = self.rows.get(&key) {
            return Ok(e);
        }
        let cols = self.shape(w)[1];
        let amax = self.reduce_over(RedOp::Max, cols as u32, true, |gx, k| {
            let wk = gx.value(w, &[r, k])?;
            Ok(gx.x.f1(F1::Abs, wk))
        })?;
        // CPU: fold from 0 (an empty row has scale 1e-12 -> tiny).
        let zero = self.f(0.0);
        let amax = self.x.f2(F2::Max, amax, zero);
        let qmax = ((1i64 << (bits - 1)) - 1) as f32;
        let qm = self.f(qmax);
        let s = self.x.fdiv(amax, qm);
        let floor = self.f(1e-12);
        let s = self.x.f2(F2::Max, s, floor);
        let s = self.x.f1(F1::F16Scale, s);
        self.rows.insert(key, s);
        Ok(s)
    }

    /// Log-sum-exp of row `row` of logits `z[..., V]`: `m + ln(sum exp(z - m))`.
    pub fn lse(&mut self, z: ValueId, row: &[E]) -> Result<E, ScalarError> {
        let key = (1u8, z.index(), row.to_vec());
        if let Some(&e) = self.rows.get(&key) {
            return Ok(e);
        }
        let v = *self.shape(z).last().unwrap() as u32;
        let at = |gx: &mut Self, k: E| -> Result<E, ScalarError> {
            let mut ii = row.to_vec();
            ii.push(k);
            gx.value(z, &ii)
        };
        let m = self.reduce_over(RedOp::Max, v, true, at)?;
        let s = self.reduce_over(RedOp::Sum, v, true, |gx, k| {
            let zk = at(gx, k)?;
            let d = gx.x.fsub(zk, m);
            Ok(gx.x.f1(F1::Exp, d))
        })?;
        let l = self.x.f1(F1::Log, s);
        let r = self.x.fadd(m, l);
        self.rows.insert(key, r);
        Ok(r)
    }

    /// Use `e` as the log-sum-exp of row `row` of logits `z` (computed by an
    /// earlier launch) instead of reducing the row.
    pub fn preset_lse(&mut self, z: ValueId, row: &[E], e: E) {
        self.rows.insert((1u8, z.index(), row.to_vec()), e);
    }

    /// `lse(row) - z[row, target[row]]`: one row's cross-entropy term.
    pub fn ce_row_loss(&mut self, z: ValueId, t: ValueId, row: &[E]) -> Result<E, ScalarError> {
        let v = *self.shape(z).last().unwrap() as u32;
        let lse = self.lse(z, row)?;
        let tg = self.value(t, row)?;
        let tg = self.x.min_c(tg, v - 1);
        let mut ii = row.to_vec();
        ii.push(tg);
        let zt = self.value(z, &ii)?;
        Ok(self.x.fsub(lse, zt))
    }

    /// The index of node `to` that holds the element of `from` at `idx`, when
    /// `to` is computed from `from` by element-wise ops (same shape) and
    /// reshapes/permutes along the path; None otherwise.
    pub fn forward_index(&mut self, from: ValueId, to: ValueId, idx: &[E]) -> Option<Vec<E>> {
        if from == to {
            return Some(idx.to_vec());
        }
        let node = self.g.node(to);
        // Follow the first operand that depends on `from`.
        let a = *node.args.iter().find(|a| self.depends_on(**a, from))?;
        let ia = self.forward_index(from, a, idx)?;
        let sa = self.g.ty(a).shape.clone();
        let so = node.ty.shape.clone();
        match &node.op {
            Op::Unary { .. } | Op::LeakyRelu { .. } | Op::LeakyStep { .. } | Op::Binary { .. } | Op::Broadcast { .. } if sa == so => Some(ia),
            // The logits gradient at a logit's index (its value also needs the
            // row's log-sum-exp: computable only where it is preset).
            Op::CrossEntropyGrad if a == node.args[0] && sa == so => Some(ia),
            // A reshape maps indices both ways: the output index of operand index `ia`.
            Op::Reshape { .. } => Some(self.reshape_index(&so, &sa, &ia)),
            Op::Permute { perm } => Some(perm.iter().map(|&p| ia[p]).collect()),
            _ => None,
        }
    }

    fn depends_on(&self, v: ValueId, on: ValueId) -> bool {
        let mut seen = HashSet::new();
        let mut stack = vec![v];
        while let Some(x) = stack.pop() {
            if x == on {
                return true;
            }
            if x.index() < on.index() || !self.inside.contains(&x.index()) || !seen.insert(x) {
                continue;
            }
            stack.extend(self.g.node(x).args.iter().copied());
        }
        false
    }
}

/// The number of elements a `SumTo` from `s` to `o` adds into each output
/// element (0 when it reduces nothing), and whether they are consecutive in
/// memory (the reduced axes are a suffix of `s`, ignoring size-1 axes).
pub fn sum_to_total(s: &[usize], o: &[usize]) -> (u32, bool) {
    let pad = s.len() - o.len();
    let reduced: Vec<usize> = (0..s.len()).filter(|&i| i < pad || (o[i - pad] == 1 && s[i] != 1)).collect();
    if reduced.is_empty() {
        return (0, false);
    }
    let total: usize = reduced.iter().map(|&i| s[i]).product();
    let first = reduced[0];
    let contiguous = (first..s.len()).all(|i| reduced.contains(&i) || s[i] == 1);
    (total as u32, contiguous)
}
