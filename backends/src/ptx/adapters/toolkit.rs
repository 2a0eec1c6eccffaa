//! The adapters' shared toolkit: fused launches, the emitter behind the
//! element-wise, row-wise, reduction, gather, scatter, cross-entropy and
//! weight-preparation kernels ([`super::fused`]) and the staging launches of
//! GEMMs and attention; and the operand/output helpers every adapter uses.
//!
//! A [`Fused`] launch is a list of independent [`Section`]s over one grid of
//! `256`-thread blocks; each section stores some outputs:
//! * [`Section::Items`]: a grid-stride loop over `n` work items (one thread
//!   per `vec` consecutive elements of same-shaped outputs, with `vec`-wide
//!   vector loads and stores where the indices line up; per `(output element,
//!   chunk)` of a reduction over leading axes; per element of a scatter-add).
//! * [`Section::Rows`]: a warp-stride loop over `rows` rows, one warp per row:
//!   row-level values first (the row reductions, lanes splitting the row and
//!   combining with `shfl.sync.bfly`, and everything else that depends only
//!   on the row), stored once per row by lane 0; then a lane-strided loop over
//!   the `len` columns storing the per-element outputs. Column sums (a
//!   `SumTo` over the leading axes of a value in the row space, e.g. the
//!   gradient of a per-channel scale next to a norm's backward) accumulate in
//!   shared memory, one `[len]` slice per warp (each lane always owns the same
//!   columns, so no synchronisation inside the loop); after the rows the block
//!   adds its warps' slices and one `red.global.add.f32` per column.
//!
//! Stores are plain (`st.global`, bf16 rounded to nearest) or atomic
//! (`red.global.add.f32` into an output the launch zero-fills first).

use crate::ptx::builder::*;
use crate::ptx::ctx::{Ctx, PtxError};
use crate::scalar::expr::*;
use crate::ptx::pointwise::{BufArg, GraphExprs};
use crate::ptx::pointwise::lower::{red_add, store, Lower};
use crate::ptx::program::{ArgRef, Launch, ZeroRef};
use pgc_ir::plan::Place;
use pgc_ir::{DType, Op, ReduceFn, ValueId};

pub const THREADS: u32 = 256;
/// Most blocks a fused launch uses (grid-stride loops cover the rest).
pub const MAX_BLOCKS: u32 = 4096;
/// Work items a chunked reduction aims for (enough to fill an H100).
const TARGET_ITEMS: u64 = 1 << 17;
/// Row reductions with fewer rows than this and rows at least `SPLIT_LEN`
/// long split each row over several warps (parts of `SPLIT_PART` or more).
const SPLIT_ROWS: u32 = 1024;
const SPLIT_LEN: u32 = 8192;
const SPLIT_PART: u64 = 2048;
/// Most blocks of a row section with column sums (each adds its partial sums once).
const COL_SUM_BLOCKS: u64 = 512;
/// Most dynamic shared memory for column sums (an H100 block may use 227 KiB).
const COL_SUM_SMEM: u32 = 192 * 1024;

/// One output store.
#[derive(Clone, Debug)]
pub struct Store {
    pub buf: Buf,
    pub index: E,
    pub value: E,
    /// `red.global.add.f32` instead of a store.
    pub atomic: bool,
}

#[derive(Clone, Debug)]
pub enum Section {
    /// `stores` hold every element of a work item: `vec` consecutive
    /// elements per store target when `vec > 1`.
    Items { var: Var, n: u32, vec: u32, stores: Vec<Store> },
    /// `col` ranges over `len / vec`: each lane takes `vec` consecutive columns.
    /// `col_sums`: atomic stores whose index depends on the column only,
    /// accumulated over the rows in shared memory (see the module doc).
    Rows { row: Var, col: Var, rows: u32, len: u32, vec: u32, row_stores: Vec<Store>, col_stores: Vec<Store>, col_sums: Vec<Store> },
}

impl Section {
    fn roots(&self) -> Vec<E> {
        let st = |s: &[Store]| s.iter().flat_map(|s| [s.index, s.value]).collect::<Vec<_>>();
        match self {
            Section::Items { stores, .. } => st(stores),
            Section::Rows { row_stores, col_stores, col_sums, .. } => {
                let mut v = st(row_stores);
                v.extend(st(col_stores));
                v.extend(st(col_sums));
                v
            }
        }
    }
    fn blocks(&self) -> u64 {
        match self {
            Section::Items { n, .. } => (*n as u64).div_ceil(THREADS as u64),
            // Column sums: fewer blocks, more rows per warp, fewer atomics at the end.
            Section::Rows { rows, col_sums, .. } if !col_sums.is_empty() => (*rows as u64).div_ceil((THREADS / 32) as u64).min(COL_SUM_BLOCKS),
            Section::Rows { rows, .. } => (*rows as u64).div_ceil((THREADS / 32) as u64),
        }
    }
    /// Shared-memory floats of the column sums: one slice of the columns per warp and sum.
    fn col_sum_floats(&self) -> u32 {
        match self {
            Section::Rows { len, vec, col_sums, .. } => (THREADS / 32) * col_sums.len() as u32 * (len / vec),
            Section::Items { .. } => 0,
        }
    }
}

/// A launch under construction.
pub struct Fused<'g> {
    pub gx: GraphExprs<'g>,
    pub sections: Vec<Section>,
    pub zero_first: Vec<ZeroRef>,
}

impl<'g> Fused<'g> {
    pub fn new(gx: GraphExprs<'g>) -> Self {
        Fused { gx, sections: Vec::new(), zero_first: Vec::new() }
    }
}


/// How a non-GEMM kernel reads a stored value: arena slot, fp32 master or run-time input.
pub fn plain_source(cx: &Ctx, v: ValueId) -> Result<(DType, ArgRef), PtxError> {
    Ok(match &cx.plan.values[v.index()] {
        Place::Arena(s) => (s.storage, ArgRef::Value(v)),
        Place::Param { id, .. } => (DType::F32, ArgRef::ParamMaster(*id)),
        Place::Input { .. } => (if cx.g.ty(v).dtype == DType::I32 { DType::I32 } else { DType::F32 }, ArgRef::Value(v)),
        other => return Err(PtxError::Unsupported(format!("%{} is read but not stored ({other:?})", v.index()))),
    })
}

/// Where a kernel writes output `v`.
pub fn output_target(cx: &Ctx, v: ValueId) -> Result<(DType, ArgRef), PtxError> {
    Ok(match &cx.plan.values[v.index()] {
        Place::Arena(s) | Place::Param { prepared: Some(s), .. } => (s.storage, ArgRef::Value(v)),
        other => return Err(PtxError::Unsupported(format!("output %{} has no slot ({other:?})", v.index()))),
    })
}

/// Emit a fused launch as entry `name`; returns its geometry.
pub fn emit(cx: &mut Ctx, name: &str, f: Fused) -> Result<Launch, PtxError> {
    let Fused { gx, sections, zero_first } = f;
    let blocks = sections.iter().map(|s| s.blocks()).max().unwrap_or(1).clamp(1, MAX_BLOCKS as u64) as u32;
    let stride = blocks * THREADS;
    let nwarps = stride / 32;
    let mut b = KernelBuilder::new(name);
    // `.minnctapersm 2`: up to 128 registers. With `.maxntid` alone ptxas
    // aims at 8 blocks per SM (32 registers) and spills large fused kernels.
    b.max_threads(THREADS, Some(2));
    let params: Vec<Param> = (0..gx.x.bufs.len()).map(|i| b.param(&format!("b{i}"), ParamType::U64)).collect();
    let x = &gx.x;
    let mut lw = Lower::new(x);
    for (i, p) in params.iter().enumerate() {
        let r = b.ld_param_global_ptr(p);
        lw.bind_buf(Buf(i as u32), r);
    }
    let tid = b.special(Special::TidX);
    let ctaid = b.special(Special::CtaidX);
    let gtid = b.mad_lo(Type::U32, ctaid, THREADS, tid);
    let lane = b.bin(BinOp::And, Type::U32, tid, 31u32);
    let gwarp = b.bin(BinOp::Shr, Type::U32, gtid, 5u32);
    lw.lane = Some(lane);
    lw.converged = true;
    // Column sums: zeroed shared accumulators, one region per section.
    let smem_floats: u32 = sections.iter().map(|s| s.col_sum_floats()).sum();
    let smem = (smem_floats > 0).then(|| {
        let sym = b.extern_shared("pgc_colsum", 16);
        let base = b.shared_addr(&sym);
        b.for_range(tid, smem_floats, THREADS, false, |b, i| {
            let a = b.mad_lo(Type::U32, i, 4u32, base);
            b.st(Space::Shared, Type::F32, Addr::reg(a), 0.0f32);
        });
        b.bar_sync();
        base
    });
    let warp_in_block = b.bin(BinOp::Shr, Type::U32, tid, 5u32);
    let mut smem_at = 0u32;
    for s in &sections {
        let roots = s.roots();
        lw.hoist(&mut b, &roots);
        match s {
            Section::Items { var, n, vec, stores } => {
                b.comment(format!("items: {n} x {vec}"));
                b.for_range(gtid, *n, stride, false, |b, i| {
                    lw.push_scope();
                    lw.bind(*var, i, false);
                    lw.converged = false;
                    emit_stores_at(b, &mut lw, &roots, stores, *vec);
                    lw.converged = true;
                    lw.unbind(*var);
                    lw.pop_scope();
                });
            }
            Section::Rows { row, col, rows, len, vec, row_stores, col_stores, col_sums } => {
                b.comment(format!("rows: {rows} x {len}, one warp per row, {vec} column(s) per lane"));
                let col_roots: Vec<E> = col_stores.iter().chain(col_sums).flat_map(|s| [s.index, s.value]).collect();
                let groups = *len / *vec;
                let nsum = col_sums.len() as u32;
                // This warp's slice: [nsum][groups] floats.
                let slice = smem.filter(|_| nsum > 0).map(|base| {
                    let first = b.mad_lo(Type::U32, warp_in_block, nsum * groups * 4, base);
                    b.add(Type::U32, first, smem_at * 4)
                });
                b.for_range(gwarp, *rows, nwarps, true, |b, r| {
                    lw.push_scope();
                    lw.bind(*row, r, true);
                    lw.hoist(b, &roots);
                    if !row_stores.is_empty() {
                        let first = b.setp(Cmp::Eq, Type::U32, lane, 0u32);
                        for st in row_stores {
                            emit_store(b, &mut lw, st, Some(first));
                        }
                    }
                    if !col_stores.is_empty() || !col_sums.is_empty() {
                        b.for_range(lane, *len / *vec, 32, false, |b, c| {
                            lw.push_scope();
                            lw.bind(*col, c, false);
                            lw.converged = false;
                            emit_stores_at(b, &mut lw, &col_roots, col_stores, *vec);
                            if let Some(slice) = slice {
                                for (k, st) in col_sums.iter().enumerate() {
                                    let v = lw.emit_reg(b, st.value);
                                    let at = b.mad_lo(Type::U32, c, 4u32, slice);
                                    let a = Addr::reg_off(at, (k as u32 * groups * 4) as i64);
                                    let old = b.ld(Space::Shared, Type::F32, a.clone());
                                    let sum = b.bin(BinOp::Add, Type::F32, old, v);
                                    b.st(Space::Shared, Type::F32, a, sum);
                                }
                            }
                            lw.converged = true;
                            lw.unbind(*col);
                            lw.pop_scope();
                        });
                    }
                    lw.unbind(*row);
                    lw.pop_scope();
                });
                if let (Some(base), false) = (smem, col_sums.is_empty()) {
                    // Every warp's rows are done: add the warps' slices, one atomic per column.
                    b.bar_sync();
                    let region = b.add(Type::U32, base, smem_at * 4);
                    for (k, st) in col_sums.iter().enumerate() {
                        b.for_range(tid, groups, THREADS, false, |b, c| {
                            let mut acc = b.val(Type::F32, 0.0f32);
                            let at = b.mad_lo(Type::U32, c, 4u32, region);
                            for w in 0..THREADS / 32 {
                                let off = ((w * nsum + k as u32) * groups * 4) as i64;
                                let v = b.ld(Space::Shared, Type::F32, Addr::reg_off(at, off));
                                acc = b.bin(BinOp::Add, Type::F32, acc, v);
                            }
                            lw.push_scope();
                            lw.bind(*col, c, false);
                            let addr = lw.address(b, st.buf, st.index);
                            red_add(b, addr, acc.into(), None);
                            lw.unbind(*col);
                            lw.pop_scope();
                        });
                    }
                    smem_at += s.col_sum_floats();
                }
            }
        }
    }
    b.ret();
    let entry = cx.add_kernel(b.finish());
    let args: Vec<ArgRef> = gx.buf_args.iter().map(|a| cx.resolve(a)).collect();
    let launch = Launch { grid: [blocks, 1, 1], block: [THREADS, 1, 1], shared_bytes: smem_floats * 4 };
    cx.launch(&entry, launch, args, zero_first);
    Ok(launch)
}

/// Stores of consecutive elements (`base + j`, `j < vec`, `base` a multiple
/// of `vec`) to one buffer as one vector store; the rest one by one.
/// `stores` at the bound element: `vec` consecutive ones with vector loads
/// (of the loads below `roots`) and vector stores when `vec > 1`.
fn emit_stores_at(b: &mut KernelBuilder, lw: &mut Lower, roots: &[E], stores: &[Store], vec: u32) {
    if vec > 1 {
        lw.vector_loads(b, roots, vec);
        emit_stores_vec(b, lw, stores, vec);
    } else {
        for st in stores {
            emit_store(b, lw, st, None);
        }
    }
}

fn emit_stores_vec(b: &mut KernelBuilder, lw: &mut Lower, stores: &[Store], vec: u32) {
    let mut done = vec![false; stores.len()];
    for i in 0..stores.len() {
        if done[i] || stores[i].atomic {
            continue;
        }
        let (base, off) = lw.x.split_offset(stores[i].index);
        if off != 0 || !lw.x.div(base).is_multiple_of(vec as u64) || lw.x.bufs[stores[i].buf.0 as usize] == DType::I32 {
            continue;
        }
        let mut group = vec![i];
        for j in 1..vec {
            let want = (stores[i].buf, base, j);
            match (0..stores.len()).find(|&k| !done[k] && !stores[k].atomic && (stores[k].buf, lw.x.split_offset(stores[k].index).0, lw.x.split_offset(stores[k].index).1) == want) {
                Some(k) => group.push(k),
                None => break,
            }
        }
        if group.len() as u32 != vec {
            continue;
        }
        let vals: Vec<Reg> = group.iter().map(|&k| lw.emit_reg(b, stores[k].value)).collect();
        let addr = lw.address(b, stores[i].buf, base);
        match lw.x.bufs[stores[i].buf.0 as usize] {
            DType::F32 => b.st_vec(Space::Global, Type::F32, addr, vals.iter().map(|&v| v.into()).collect()),
            DType::Bf16 => {
                let words: Vec<Operand> = vals.chunks(2).map(|p| b.pack_bf16x2(p[1], p[0]).into()).collect();
                b.st_vec(Space::Global, Type::B32, addr, words);
            }
            DType::I32 => unreachable!(),
        }
        for k in group {
            done[k] = true;
        }
    }
    for (k, st) in stores.iter().enumerate() {
        if !done[k] {
            emit_store(b, lw, st, None);
        }
    }
}

fn emit_store(b: &mut KernelBuilder, lw: &mut Lower, st: &Store, pred: Option<Reg>) {
    let v = lw.emit_reg(b, st.value);
    let addr = lw.address(b, st.buf, st.index);
    if st.atomic {
        red_add(b, addr, v.into(), pred);
    } else {
        let elem = lw.x.bufs[st.buf.0 as usize];
        store(b, elem, addr, v.into(), pred);
    }
}

// ---------------------------------------------------------------------------
// Plan kernels of the fused kinds.

/// The rows a row-reducing node works over: `(rows, row length)`.
fn row_space(gx: &GraphExprs, v: ValueId) -> Option<(u32, u32)> {
    let g = gx.g;
    let node = g.node(v);
    let s = |k: usize| g.ty(node.args[k]).shape.clone();
    let split = |shape: &[usize], trailing: usize| -> (u32, u32) {
        let l: usize = shape[shape.len() - trailing..].iter().product();
        let n: usize = shape.iter().product();
        ((n / l.max(1)) as u32, l as u32)
    };
    match &node.op {
        Op::Reduce { axis, .. } if *axis + 1 == s(0).len() => Some(split(&s(0), 1)),
        Op::SumTo { shape } => {
            let t = trailing_reduced(&s(0), shape);
            (t > 0).then(|| split(&s(0), t))
        }
        Op::FakeQuant { .. } | Op::CrossEntropy | Op::CrossEntropyGrad => Some(split(&s(0), 1)),
        _ => None,
    }
}

/// Reduced axes of a `SumTo` from `s` to `o` (input axis numbers).
fn sum_to_reduced(s: &[usize], o: &[usize]) -> Vec<usize> {
    let pad = s.len() - o.len();
    (0..s.len()).filter(|&i| i < pad || (o[i - pad] == 1 && s[i] != 1)).collect()
}

/// How many trailing axes of `s` a `SumTo` to `o` reduces (size-1 axes count as reduced).
fn trailing_reduced(s: &[usize], o: &[usize]) -> usize {
    let red = sum_to_reduced(s, o);
    let mut t = 0;
    while t < s.len() && (red.contains(&(s.len() - 1 - t)) || s[s.len() - 1 - t] == 1) {
        t += 1;
    }
    // Only count it as a row reduction when something non-trivial is reduced there.
    if (0..t).any(|k| red.contains(&(s.len() - 1 - k))) {
        t
    } else {
        0
    }
}

struct RowsSpec {
    rows: u32,
    len: u32,
    /// Columns per lane of the element-wise outputs.
    vec: u32,
    row: Var,
    col: Var,
    row_stores: Vec<Store>,
    col_stores: Vec<Store>,
    col_sums: Vec<Store>,
}

fn space<'a>(spaces: &'a mut Vec<RowsSpec>, gx: &mut GraphExprs, rows: u32, len: u32) -> &'a mut RowsSpec {
    if let Some(i) = spaces.iter().position(|s| s.rows == rows && s.len == len) {
        return &mut spaces[i];
    }
    let vec = if len >= 128 && len.is_multiple_of(4) { 4 } else { 1 };
    let row = gx.x.var(Ty::U32, rows as u64, "row");
    let col = gx.x.var(Ty::U32, (len / vec) as u64, "col");
    spaces.push(RowsSpec { rows, len, vec, row, col, row_stores: vec![], col_stores: vec![], col_sums: vec![] });
    spaces.last_mut().unwrap()
}

/// Sections storing `outs` (node, buffer, element type); `ops` are the kernel's nodes.
pub fn plan_outputs(f: &mut Fused, outs: &[(ValueId, Buf, DType)], ops: &[ValueId]) -> Result<(), PtxError> {
    let g = f.gx.g;
    let mut spaces: Vec<RowsSpec> = Vec::new();
    // Row spaces of the kernel's row-reducing nodes, in node order.
    for &v in ops {
        if let Some((r, l)) = row_space(&f.gx, v) {
            space(&mut spaces, &mut f.gx, r, l);
        }
    }
    let mut deferred: Vec<(ValueId, Buf, DType)> = Vec::new();
    let mut items: Vec<Section> = Vec::new();
    for &(o, buf, elem) in outs {
        let node = g.node(o);
        let atomic_ok = elem == DType::F32;
        match &node.op {
            Op::ScatterAdd { rows } if ops.contains(&o) => {
                if !atomic_ok {
                    return Err(PtxError::Unsupported("scatter-add into a bf16 output".into()));
                }
                let (ids, dy) = (node.args[0], node.args[1]);
                let ds = g.ty(dy).shape.clone();
                let n: usize = ds.iter().product();
                let c = *ds.last().unwrap() as u32;
                let var = f.gx.x.var(Ty::U32, n as u64, "i");
                let ve = f.gx.x.var_e(var);
                let idx = f.gx.x.unravel(ve, &ds);
                let r = idx.len();
                let id = f.gx.value(ids, &idx[..r - 1])?;
                let id = f.gx.x.min_c(id, *rows as u32 - 1);
                let val = f.gx.value(dy, &idx)?;
                let index = f.gx.x.linear(&[*rows, c as usize], &[id, idx[r - 1]]);
                items.push(Section::Items { var, n: n as u32, vec: 1, stores: vec![Store { buf, index, value: val, atomic: true }] });
                f.zero_first.push(ZeroRef::Value(o));
            }
            Op::CrossEntropy if ops.contains(&o) => {
                if !atomic_ok {
                    return Err(PtxError::Unsupported("cross entropy into a bf16 output".into()));
                }
                let (z, t) = (node.args[0], node.args[1]);
                let (rows, len) = row_space(&f.gx, o).unwrap();
                let sp = space(&mut spaces, &mut f.gx, rows, len);
                let (row, _) = (sp.row, sp.col);
                let re = f.gx.x.var_e(row);
                let tshape = g.ty(t).shape.clone();
                let ridx = f.gx.x.unravel(re, &tshape);
                let l = f.gx.ce_row_loss(z, t, &ridx)?;
                let nf = f.gx.x.f32_c(rows as f32);
                let value = f.gx.x.fdiv(l, nf);
                let index = f.gx.x.int_c(0);
                space(&mut spaces, &mut f.gx, rows, len).row_stores.push(Store { buf, index, value, atomic: true });
                f.zero_first.push(ZeroRef::Value(o));
            }
            Op::Reduce { .. } | Op::SumTo { .. } if ops.contains(&o) => {
                plan_reduction(f, &mut spaces, &mut items, o, buf, atomic_ok)?;
            }
            _ => deferred.push((o, buf, elem)),
        }
    }
    // Element-wise outputs: into a row space of matching shape, else their own loop.
    type ShapeGroup = (Vec<usize>, Vec<(ValueId, Buf)>);
    let mut by_shape: Vec<ShapeGroup> = Vec::new();
    for (o, buf, _) in deferred {
        let shape = g.ty(o).shape.clone();
        let n: usize = shape.iter().product();
        let last = shape.last().copied().unwrap_or(1);
        if let Some(i) = spaces.iter().position(|s| s.rows as usize * s.len as usize == n && s.len as usize == last && !shape.is_empty()) {
            let (row, col, vec) = (spaces[i].row, spaces[i].col, spaces[i].vec);
            let (re, ce) = (f.gx.x.var_e(row), f.gx.x.var_e(col));
            let lead = f.gx.x.unravel(re, &shape[..shape.len() - 1]);
            let c0 = f.gx.x.mul_c(ce, vec);
            for j in 0..vec {
                let mut idx = lead.clone();
                idx.push(f.gx.x.add_c(c0, j));
                let value = f.gx.value(o, &idx)?;
                let index = f.gx.x.linear(&shape, &idx);
                spaces[i].col_stores.push(Store { buf, index, value, atomic: false });
            }
            continue;
        }
        // A reshape/permute of a value in a row space (e.g. a norm's backward
        // stored as [B, T, H*d] from rows of d): stored from the row loop at
        // the permuted index, so row-level values are not recomputed per element.
        if let Some((i, m)) = row_image(f, &spaces, ops, o) {
            let (row, col, vec, len) = (spaces[i].row, spaces[i].col, spaces[i].vec, spaces[i].len as usize);
            let mshape = g.ty(m).shape.clone();
            let (re, ce) = (f.gx.x.var_e(row), f.gx.x.var_e(col));
            let lead = f.gx.x.unravel(re, &mshape[..mshape.len() - 1]);
            let c0 = f.gx.x.mul_c(ce, vec);
            debug_assert_eq!(*mshape.last().unwrap(), len);
            for j in 0..vec {
                let mut idx = lead.clone();
                idx.push(f.gx.x.add_c(c0, j));
                let oi = f.gx.forward_index(m, o, &idx).expect("checked by row_image");
                let value = f.gx.value(o, &oi)?;
                let index = f.gx.x.linear(&shape, &oi);
                spaces[i].col_stores.push(Store { buf, index, value, atomic: false });
            }
            continue;
        }
        if let Some(i) = spaces.iter().position(|s| s.rows as usize == n) {
            let re = f.gx.x.var_e(spaces[i].row);
            let idx = f.gx.x.unravel(re, &shape);
            let value = f.gx.value(o, &idx)?;
            let index = f.gx.x.linear(&shape, &idx);
            spaces[i].row_stores.push(Store { buf, index, value, atomic: false });
            continue;
        }
        match by_shape.iter().position(|(s, _)| *s == shape) {
            Some(k) => by_shape[k].1.push((o, buf)),
            None => by_shape.push((shape.clone(), vec![(o, buf)])),
        }
    }
    for (shape, outs) in by_shape {
        let sec = items_section(&mut f.gx, &shape, &outs)?;
        f.sections.push(sec);
    }
    for s in spaces {
        if !s.row_stores.is_empty() || !s.col_stores.is_empty() || !s.col_sums.is_empty() {
            let (row, col, rows, len, vec) = (s.row, s.col, s.rows, s.len, s.vec);
            f.sections.push(Section::Rows { row, col, rows, len, vec, row_stores: s.row_stores, col_stores: s.col_stores, col_sums: s.col_sums });
        }
    }
    f.sections.extend(items);
    Ok(())
}

/// A value `m` of the kernel in row space `i` (its shape is the space's rows
/// by `len`) of which output `o` is a reshape/permute/element-wise image.
fn row_image(f: &mut Fused, spaces: &[RowsSpec], ops: &[ValueId], o: ValueId) -> Option<(usize, ValueId)> {
    let g = f.gx.g;
    let n = g.ty(o).numel();
    for &m in ops.iter().rev() {
        let ms = &g.ty(m).shape;
        let Some(&last) = ms.last() else { continue };
        if m == o || g.ty(m).numel() != n {
            continue;
        }
        let Some(i) = spaces.iter().position(|s| s.rows as usize * s.len as usize == n && s.len as usize == last) else { continue };
        let probe: Vec<E> = ms.iter().map(|_| f.gx.x.int_c(0)).collect();
        if f.gx.forward_index(m, o, &probe).is_some() {
            return Some((i, m));
        }
    }
    None
}

/// A reduction output: per row (warp per row) when it reduces the last axes,
/// else per (output element, chunk) with atomics.
fn plan_reduction(f: &mut Fused, spaces: &mut Vec<RowsSpec>, items: &mut Vec<Section>, o: ValueId, buf: Buf, atomic_ok: bool) -> Result<(), PtxError> {
    let g = f.gx.g;
    let node = g.node(o);
    let x = node.args[0];
    let s = g.ty(x).shape.clone();
    let oshape = node.ty.shape.clone();
    let onum: usize = oshape.iter().product();
    if let Some((rows, len)) = row_space(&f.gx, o) {
        // Reduces the trailing axes: one warp per row (or per part of a long row).
        let is_max = matches!(node.op, Op::Reduce { f: ReduceFn::Max, .. });
        let full_rows = rows as usize == onum;
        if is_max || (full_rows && !(atomic_ok && rows < SPLIT_ROWS && len >= SPLIT_LEN)) {
            let sp = space(spaces, &mut f.gx, rows, len);
            let re = f.gx.x.var_e(sp.row);
            let idx = f.gx.x.unravel(re, &oshape);
            let value = f.gx.value(o, &idx)?;
            let index = f.gx.x.linear(&oshape, &idx);
            space(spaces, &mut f.gx, rows, len).row_stores.push(Store { buf, index, value, atomic: false });
            return Ok(());
        }
        if !atomic_ok {
            return Err(PtxError::Unsupported("a partial reduction into a bf16 output".into()));
        }
        // Few long rows: split each into parts (at least SPLIT_PART long), one warp per part.
        let parts = if rows < SPLIT_ROWS && len >= SPLIT_LEN {
            ((TARGET_ITEMS / 32).div_ceil(rows as u64)).clamp(1, (len as u64).div_ceil(SPLIT_PART))
        } else {
            1
        };
        let sub = (len as u64).div_ceil(parts) as u32;
        let parts = (len as u64).div_ceil(sub as u64) as u32;
        let (t, red, is_mean) = match &node.op {
            Op::SumTo { shape } => (trailing_reduced(&s, shape), sum_to_reduced(&s, shape), false),
            Op::Reduce { f: rf, axis, .. } => (1, vec![*axis], *rf == ReduceFn::Mean),
            _ => unreachable!(),
        };
        let sp = space(spaces, &mut f.gx, rows * parts, sub);
        let re = f.gx.x.var_e(sp.row);
        let (rowe, kk0) = if parts > 1 {
            let r = f.gx.x.div_c(re, parts);
            let p = f.gx.x.rem_c(re, parts);
            (r, Some(f.gx.x.mul_c(p, sub)))
        } else {
            (re, None)
        };
        let lead_shape = &s[..s.len() - t];
        let lead = f.gx.x.unravel(rowe, lead_shape);
        let k = f.gx.x.var(Ty::U32, sub as u64, "k");
        let ke = f.gx.x.var_e(k);
        let kk = match kk0 {
            Some(first) => f.gx.x.add(first, ke),
            None => ke,
        };
        let kc = f.gx.x.min_c(kk, len - 1);
        let tail = f.gx.x.unravel(kc, &s[s.len() - t..]);
        let mut xi = lead.clone();
        xi.extend(tail);
        let mut body = f.gx.value(x, &xi)?;
        if parts > 1 {
            let valid = f.gx.x.lt_c(kk, len);
            let z = f.gx.x.f32_c(0.0);
            body = f.gx.x.sel(valid, body, z);
        }
        let mut value = f.gx.x.reduce(RedOp::Sum, k, sub, body);
        if is_mean {
            let nf = f.gx.x.f32_c(len as f32);
            value = f.gx.x.fdiv(value, nf);
        }
        // The output element of this row: reduced axes at 0.
        let pad = s.len() - oshape.len().min(s.len());
        let oi: Vec<E> = match &node.op {
            Op::SumTo { .. } => (pad..s.len()).map(|i| if i >= s.len() - t || red.contains(&i) { f.gx.x.int_c(0) } else { lead[i] }).collect(),
            Op::Reduce { keepdim: true, .. } => {
                let mut v = lead.clone();
                v.push(f.gx.x.int_c(0));
                v
            }
            _ => lead.clone(),
        };
        let index = f.gx.x.linear(&oshape, &oi);
        let atomic = parts > 1 || !full_rows;
        space(spaces, &mut f.gx, rows * parts, sub).row_stores.push(Store { buf, index, value, atomic });
        if atomic {
            f.zero_first.push(ZeroRef::Value(o));
        }
        return Ok(());
    }
    // A sum over every leading axis of a value in one of the kernel's row
    // spaces (which may depend on the rows' reductions): column sums there.
    if let Op::SumTo { .. } = node.op {
        let len = *s.last().unwrap_or(&1);
        let rows = s.iter().product::<usize>() / len.max(1);
        let fits = |sp: &RowsSpec, extra: u32| {
            let floats: u32 = spaces.iter().map(|o| (THREADS / 32) * o.col_sums.len() as u32 * (o.len / o.vec)).sum();
            (floats + extra * (THREADS / 32) * sp.len / sp.vec) * 4 <= COL_SUM_SMEM
        };
        let i = spaces.iter().position(|sp| sp.rows as usize == rows && sp.len as usize == len && onum == len && len > 1);
        if let Some(i) = i.filter(|&i| atomic_ok && fits(&spaces[i], spaces[i].vec)) {
            let (row, col, vec) = (spaces[i].row, spaces[i].col, spaces[i].vec);
            let (re, ce) = (f.gx.x.var_e(row), f.gx.x.var_e(col));
            let lead = f.gx.x.unravel(re, &s[..s.len() - 1]);
            let c0 = f.gx.x.mul_c(ce, vec);
            for j in 0..vec {
                let cj = f.gx.x.add_c(c0, j);
                let mut xi = lead.clone();
                xi.push(cj);
                let value = f.gx.value(x, &xi)?;
                let index = cj;
                spaces[i].col_sums.push(Store { buf, index, value, atomic: true });
            }
            f.zero_first.push(ZeroRef::Value(o));
            return Ok(());
        }
    }
    // Reduction over leading / middle axes: chunks of the reduced range per work item.
    let (reduced_len, is_max, is_mean) = match &node.op {
        Op::Reduce { f: rf, axis, .. } => (s[*axis], *rf == ReduceFn::Max, *rf == ReduceFn::Mean),
        Op::SumTo { shape } => (sum_to_reduced(&s, shape).iter().map(|&i| s[i]).product(), false, false),
        _ => unreachable!(),
    };
    let chunks = if is_max || !atomic_ok || reduced_len == 0 {
        1
    } else {
        (TARGET_ITEMS.div_ceil(onum.max(1) as u64)).clamp(1, (reduced_len as u64).div_ceil(32).max(1))
    };
    let ch = (reduced_len as u64).div_ceil(chunks) as u32;
    let chunks = (reduced_len as u64).div_ceil(ch.max(1) as u64).max(1);
    let n = onum as u64 * chunks;
    if n > u32::MAX as u64 {
        return Err(PtxError::Unsupported("reduction too large".into()));
    }
    let w = f.gx.x.var(Ty::U32, n, "w");
    let we = f.gx.x.var_e(w);
    let oi_lin = f.gx.x.rem_c(we, onum as u32);
    let chunk = f.gx.x.div_c(we, onum as u32);
    let oidx = f.gx.x.unravel(oi_lin, &oshape);
    let first = f.gx.x.mul_c(chunk, ch);
    let k = f.gx.x.var(Ty::U32, ch as u64, "k");
    let ke = f.gx.x.var_e(k);
    let at = f.gx.x.add(first, ke);
    let at = f.gx.x.min_c(at, reduced_len as u32 - 1);
    let xi = match &node.op {
        Op::Reduce { axis, keepdim, .. } => {
            let mut xi = oidx.clone();
            if *keepdim {
                xi[*axis] = at;
            } else {
                xi.insert(*axis, at);
            }
            xi
        }
        Op::SumTo { .. } => f.gx.sum_to_index(&s, &oshape, &oidx, Some(at)),
        _ => unreachable!(),
    };
    let body = f.gx.value(x, &xi)?;
    let body = if chunks > 1 {
        let at = f.gx.x.add(first, ke);
        let valid = f.gx.x.lt_c(at, reduced_len as u32);
        let z = f.gx.x.f32_c(0.0);
        f.gx.x.sel(valid, body, z)
    } else {
        body
    };
    let mut value = f.gx.x.reduce(if is_max { RedOp::Max } else { RedOp::Sum }, k, ch, body);
    if is_mean {
        let nf = f.gx.x.f32_c(reduced_len as f32);
        value = f.gx.x.fdiv(value, nf);
    }
    let index = f.gx.x.linear(&oshape, &oidx);
    items.push(Section::Items { var: w, n: n as u32, vec: 1, stores: vec![Store { buf, index, value, atomic: chunks > 1 }] });
    if chunks > 1 {
        f.zero_first.push(ZeroRef::Value(o));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Staging: values copied / converted into other buffers by a small launch.

/// Where value `v` (stored by an earlier kernel) can be read in element type
/// `want`: its arena slot, prepared copy or fp32 master when the type matches;
/// otherwise a launch converts it into a new scratch buffer first.
pub fn operand(cx: &mut Ctx, v: ValueId, want: DType, what: &str) -> Result<ArgRef, PtxError> {
    match &cx.plan.values[v.index()] {
        Place::Arena(s) if s.storage == want => return Ok(ArgRef::Value(v)),
        Place::Param { prepared: Some(s), .. } if s.storage == want => return Ok(ArgRef::Value(v)),
        Place::Param { id, .. } if want == DType::F32 => return Ok(ArgRef::ParamMaster(*id)),
        _ => {}
    }
    let n = cx.g.ty(v).numel();
    let aux = cx.scratch(n as u64 * want.bytes() as u64);
    let (elem, arg) = plain_source(cx, v)?;
    copy(cx, v, (elem, arg), (want, ArgRef::Aux(aux)), what)?;
    Ok(ArgRef::Aux(aux))
}

/// A launch copying value `v` from `src` to `dst` (element types converted).
pub fn copy(cx: &mut Ctx, v: ValueId, src: (DType, ArgRef), dst: (DType, ArgRef), what: &str) -> Result<(), PtxError> {
    let g = cx.g;
    let shape = g.ty(v).shape.clone();
    let mut gx = GraphExprs::new(g, []);
    gx.source(v, src.0, src.1);
    let out = gx.buffer(dst.0, BufArg::Ref(dst.1));
    let sec = items_section(&mut gx, &shape, &[(v, out)])?;
    let mut f = Fused::new(gx);
    f.sections.push(sec);
    let name = cx.unique_name(&format!("{}_{what}", cx.plan.kernels[cx.kernel].name));
    emit(cx, &name, f)?;
    Ok(())
}

/// One thread per `vec` consecutive elements of outputs of shape `shape`
/// (`vec` = 4, 2 or 1, the widest dividing the element count).
pub fn items_section(gx: &mut GraphExprs, shape: &[usize], outs: &[(ValueId, Buf)]) -> Result<Section, PtxError> {
    let n: usize = shape.iter().product();
    let vec = [4usize, 2, 1].into_iter().find(|v| n.is_multiple_of(*v) && n >= *v).unwrap_or(1);
    let groups = n / vec;
    let var = gx.x.var(Ty::U32, groups as u64, "i");
    let ve = gx.x.var_e(var);
    let base = gx.x.mul_c(ve, vec as u32);
    let mut stores = Vec::new();
    for j in 0..vec as u32 {
        let e = gx.x.add_c(base, j);
        let idx = gx.x.unravel(e, shape);
        for &(o, buf) in outs {
            let value = gx.value(o, &idx)?;
            stores.push(Store { buf, index: e, value, atomic: false });
        }
    }
    Ok(Section::Items { var, n: groups as u32, vec: vec as u32, stores })
}
