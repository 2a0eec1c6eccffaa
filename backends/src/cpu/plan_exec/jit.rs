//! Cranelift-compiled element-wise kernels.
//!
//! An `Elementwise` kernel whose ops are all Unary, Binary, Broadcast,
//! Scalar, LeakyRelu or LeakyStep, whose outputs all have one shape S (or
//! are a Permute / Reshape(Permute) of such a value: stored with permuted
//! strides) and whose inputs broadcast to S, compiles to one native function that computes
//! a row (the last axis of S) of every output:
//! `fn(n: i64, inputs: *const *const F, outputs: *const *mut F)`.
//! Each input is loaded at its row base plus `j * stride`, with stride 0 for a
//! broadcast axis; intermediate values stay in registers. The host loop hands
//! out rows (in parallel for large kernels).
//!
//! What an op computes is the shared scalar IR ([`crate::scalar::ops`], the
//! one the PTX kinds lower): each program's element is built as expressions
//! over its loads ([`ElementCode`]) and lowered here, scalar and 4-lane.
//! Exact numerics: +, -, *, /, sqrt, neg, abs, comparisons and selects are
//! native instructions (IEEE, no contraction), which round exactly as the
//! Rust reference; exp, ln, tanh, max and min call back into the reference's
//! Rust functions (`Real::exp` etc.), so results are bitwise equal to
//! `cpu::ops` (the scalar IR takes the same steps as `cpu::ops::unary_fn`).
//! Sigmoid is `1 / (1 + exp(-x))` with exp called back.
//!
//! In the other kernels (row-wise, GEMM epilogues, ...) the runs of such ops
//! compile the same way as segments, and a run may end in a row sum or mean
//! (over the last axis, [`row_reduction`]): the row function then adds the
//! reduced values into 8 partial sums in the reference's order
//! (`ops::sum_lanes`) and stores one value per row, so the norms' and
//! softmax-style row statistics are compiled too, bitwise as the reference.
//! A segment reads a permute/reshape chain of another kernel's value (the
//! q/k head layouts) in place, through the view's strides
//! ([`view_chain`]); a view only such segments read is not copied at all.
//! Any other op, or a kernel of another kind, is left to the interpreter.

use super::super::{ops, Real};
use crate::scalar::expr::{Expr, Exprs, FCmp, Float, Ty, Var, E, F1, F2};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::immediates::{Ieee32, Ieee64};
use cranelift_codegen::ir::{types, AbiParam, Endianness, FuncRef, InstBuilder, MemFlagsData, Type, Value};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
use pgc_ir::plan::{Kernel, KernelKind};
use pgc_ir::{BinaryFn, DType, Graph, Op, ReduceFn};
use std::collections::HashMap;

/// The ops a compiled kernel may contain.
pub const JIT_OPS: &[&str] = &[
    "unary (all)",
    "binary (all)",
    "broadcast",
    "scalar",
    "leaky_relu",
    "leaky_step",
    "permute / reshape(permute) as an output's layout",
    "sum / mean over the last axis, ending a segment",
    "permute / reshape chains of another kernel's value, read in place",
];

// The functions compiled code calls, in the working precision `F`.
extern "C" fn cb_exp<F: Real>(x: F) -> F {
    x.exp()
}
extern "C" fn cb_ln<F: Real>(x: F) -> F {
    x.ln()
}
extern "C" fn cb_tanh<F: Real>(x: F) -> F {
    x.tanh()
}
extern "C" fn cb_max<F: Real>(a: F, b: F) -> F {
    ops::binary_fn(BinaryFn::Max, a, b)
}
extern "C" fn cb_min<F: Real>(a: F, b: F) -> F {
    ops::binary_fn(BinaryFn::Min, a, b)
}

/// Makes the callbacks in `F` known to the compiled code.
fn register_callbacks<F: Real>(jb: &mut JITBuilder) {
    jb.symbol("pgc_exp", cb_exp::<F> as *const u8);
    jb.symbol("pgc_ln", cb_ln::<F> as *const u8);
    jb.symbol("pgc_tanh", cb_tanh::<F> as *const u8);
    jb.symbol("pgc_max", cb_max::<F> as *const u8);
    jb.symbol("pgc_min", cb_min::<F> as *const u8);
}

/// One compiled kernel: what to load, where to store, and the row function.
pub struct Compiled {
    /// Graph values loaded (kernel inputs), in argument order, with their
    /// element strides over the iteration shape (0 on broadcast axes).
    pub loads: Vec<(usize, Vec<usize>)>,
    /// The value whose buffer each load reads: the loaded value itself, or
    /// for a layout view (a permute/reshape chain of another kernel's value,
    /// not materialised) the chain's root, read through the view's strides.
    pub sources: Vec<usize>,
    /// Graph values stored, in argument order: (stored value, the value
    /// computed in the loop, its element strides in the stored layout over
    /// the iteration shape; a permuted layout for Permute(+Reshape) outputs).
    pub stores: Vec<(usize, usize, Vec<usize>)>,
    /// Elements of each store's buffer: the iteration shape's, or one per
    /// row for a row reduction.
    pub store_lens: Vec<usize>,
    pub shape: Vec<usize>,
    pub func: unsafe extern "C" fn(i64, *const *const u8, *const *mut u8),
}

/// A compiled segment of a kernel otherwise evaluated op by op.
pub struct Segment {
    /// Its ops (graph values), in topological order.
    pub ops: Vec<usize>,
    pub code: Compiled,
}

/// The compiled element-wise kernels of a plan, by kernel index, and the
/// compiled segments of the other kernels (by kernel index, then first op).
/// Holds the JIT module (the code lives as long as this value).
pub struct JitKernels {
    _module: Option<JITModule>,
    pub kernels: HashMap<usize, Compiled>,
    pub segments: HashMap<usize, HashMap<usize, Segment>>,
    /// Per kernel, the layout views that only compiled segments read
    /// (through their strides): not evaluated at all.
    pub skip: HashMap<usize, Vec<usize>>,
    /// Kernels left to the interpreter, with the reason.
    pub fallback: Vec<(usize, String)>,
}

// The module is only read after finalization; function pointers are plain code.
unsafe impl Send for JitKernels {}
unsafe impl Sync for JitKernels {}

fn bcast_strides(from: &[usize], to: &[usize]) -> Option<Vec<usize>> {
    if from.len() > to.len() {
        return None;
    }
    let st = ops::strides(from);
    let off = to.len() - from.len();
    let mut out = Vec::with_capacity(to.len());
    for i in 0..to.len() {
        if i < off || from[i - off] == 1 {
            out.push(0);
        } else if from[i - off] == to[i] {
            out.push(st[i - off]);
        } else {
            return None;
        }
    }
    Some(out)
}

/// A list of element-wise ops to compile into one row function: the ops in
/// topological order, the values it loads and the values it stores.
pub struct Program {
    pub ops: Vec<usize>,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
    /// Inputs that are layout views read through their chain
    /// ([`view_chain`]), with the chain's root.
    pub views: Vec<(usize, usize)>,
}

impl Program {
    /// A whole element-wise kernel.
    fn of_kernel(kr: &Kernel) -> Result<Program, String> {
        if kr.kind != KernelKind::Elementwise {
            return Err(format!("kind {}", kr.kind.name()));
        }
        if !kr.prologue.is_empty() {
            return Err("has a prologue".into());
        }
        let ix = |v: &Vec<pgc_ir::ValueId>| v.iter().map(|v| v.index()).collect();
        Ok(Program { ops: ix(&kr.ops), inputs: ix(&kr.inputs), outputs: ix(&kr.outputs), views: vec![] })
    }
}

/// A layout view: `m`, a chain of permutes and reshapes computed in the
/// kernel (`in_kernel`) of a value that is not (another kernel's output, a
/// parameter or an input), as (that root, the view's shape, its element
/// strides into the root's buffer). `None` when `m` is not such a chain or a
/// reshape in it would need a copy (a reshape of a permuted view).
pub fn view_chain(g: &Graph, m: usize, in_kernel: impl Fn(usize) -> bool) -> Option<(usize, Vec<usize>, Vec<usize>)> {
    let is_layout = |v: usize| matches!(g.nodes[v].op, Op::Permute { .. } | Op::Reshape { .. });
    let mut chain = vec![];
    let mut v = m;
    while is_layout(v) && in_kernel(v) {
        chain.push(v);
        v = g.nodes[v].args[0].index();
    }
    if chain.is_empty() || in_kernel(v) || g.nodes[v].ty.dtype != DType::F32 {
        return None;
    }
    let mut shape = g.nodes[v].ty.shape.clone();
    let mut strides = ops::strides(&shape);
    for &c in chain.iter().rev() {
        match &g.nodes[c].op {
            Op::Permute { perm } => {
                shape = perm.iter().map(|&d| shape[d]).collect();
                strides = perm.iter().map(|&d| strides[d]).collect();
            }
            Op::Reshape { shape: to } => {
                if strides != ops::strides(&shape) {
                    return None;
                }
                shape = to.clone();
                strides = ops::strides(&shape);
            }
            _ => unreachable!("a layout op"),
        }
    }
    Some((v, shape, strides))
}

/// Ops a segment of a non-element-wise kernel may hold (Scalar constants are
/// folded into the code wherever they are read); a row reduction
/// ([`row_reduction`]) ends its segment.
fn segment_op(g: &Graph, m: usize) -> bool {
    let op = &g.nodes[m].op;
    matches!(op, Op::Unary { .. } | Op::Binary { .. } | Op::Broadcast { .. } | Op::LeakyRelu { .. } | Op::LeakyStep { .. } | Op::Permute { .. } | Op::Reshape { .. })
        || row_reduction(g, m).is_some()
}

/// A sum or mean of float value `m`'s operand over its last axis (`Reduce`
/// over the last axis, or `SumTo` a shape that differs only in a last axis
/// of 1), over a non-empty axis: `Some(true)` for a mean. Such a reduction
/// compiles into the end of a segment, summed in the reference's order
/// ([`ops::sum_lanes`]).
pub fn row_reduction(g: &Graph, m: usize) -> Option<bool> {
    let node = &g.nodes[m];
    let x = &g.nodes[node.args.first()?.index()].ty;
    let r = x.shape.len();
    if r == 0 || x.dtype != DType::F32 || node.ty.dtype != DType::F32 || x.shape[r - 1] == 0 {
        return None;
    }
    match node.op {
        Op::Reduce { f: ReduceFn::Sum, axis, .. } if axis == r - 1 => Some(false),
        Op::Reduce { f: ReduceFn::Mean, axis, .. } if axis == r - 1 => Some(true),
        // (A `SumTo` onto its own shape is the identity, not a sum: -0 stays -0.)
        Op::SumTo { ref shape } if shape.len() == r && shape[r - 1] == 1 && x.shape[r - 1] > 1 && shape[..r - 1] == x.shape[..r - 1] => Some(false),
        _ => None,
    }
}

/// The element-wise segments of a kernel evaluated op by op: maximal runs of
/// consecutive (in the kernel's topological order) element-wise float ops,
/// and, where a run's stored values differ in shape, its sub-runs of one
/// shape. Each reads what its ops use from outside it and stores what later
/// ops of the kernel or the kernel's outputs use.
pub fn segments(g: &Graph, kr: &Kernel, float: Float) -> Vec<Program> {
    let mut order: Vec<usize> = kr.prologue.iter().chain(&kr.ops).map(|v| v.index()).collect();
    order.sort_unstable();
    order.dedup();
    let ok = |m: usize| g.nodes[m].ty.dtype == DType::F32 && segment_op(g, m);
    let in_kernel = |v: usize| order.binary_search(&v).is_ok();
    // Views of other kernels' values are read through their strides, not
    // computed: they neither join nor end a run.
    let views: Vec<(usize, usize)> = order.iter().filter_map(|&m| view_chain(g, m, in_kernel).map(|(root, ..)| (m, root))).collect();
    let mut runs: Vec<Vec<usize>> = vec![];
    let mut cur: Vec<usize> = vec![];
    for &m in &order {
        if matches!(g.nodes[m].op, Op::Scalar { .. }) || views.iter().any(|&(v, _)| v == m) {
            continue;
        }
        if ok(m) {
            cur.push(m);
            // What reads a row's sum needs the whole row summed first.
            if row_reduction(g, m).is_some() {
                runs.push(std::mem::take(&mut cur));
            }
        } else if !cur.is_empty() {
            runs.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        runs.push(cur);
    }
    let program = |ops: &[usize]| -> Program {
        let inside = |m: usize| ops.contains(&m);
        let mut inputs = vec![];
        for &m in ops {
            for a in &g.nodes[m].args {
                let a = a.index();
                if !inside(a) && !matches!(g.nodes[a].op, Op::Scalar { .. }) && !inputs.contains(&a) {
                    inputs.push(a);
                }
            }
        }
        let used_after = |v: usize| {
            kr.outputs.iter().any(|o| o.index() == v) || order.iter().any(|&o| !inside(o) && g.nodes[o].args.iter().any(|a| a.index() == v))
        };
        let outputs = ops.iter().copied().filter(|&v| used_after(v)).collect();
        let views = views.iter().copied().filter(|(v, _)| inputs.contains(v)).collect();
        Program { ops: ops.to_vec(), inputs, outputs, views }
    };
    let mut out = vec![];
    for run in runs {
        let p = program(&run);
        if analyse(g, &p, float).is_ok() {
            out.push(p);
            continue;
        }
        let mut i = 0;
        while i < run.len() {
            let mut j = i + 1;
            while j < run.len() && g.nodes[run[j]].ty.shape == g.nodes[run[i]].ty.shape {
                j += 1;
            }
            let p = program(&run[i..j]);
            if analyse(g, &p, float).is_ok() {
                out.push(p);
            }
            i = j;
        }
    }
    out
}

/// The layout views of kernel `kr` that nothing but the segments `progs`
/// reads (each reads them through their strides) and the kernel does not
/// store: a chain's inner views count as read only by the outer ones.
fn views_only_segments_read(g: &Graph, kr: &Kernel, progs: &[Program]) -> Vec<usize> {
    let mut order: Vec<usize> = kr.prologue.iter().chain(&kr.ops).map(|v| v.index()).collect();
    order.sort_unstable();
    order.dedup();
    let in_segment = |m: usize| progs.iter().any(|p| p.ops.contains(&m));
    let read_through = |m: usize| progs.iter().any(|p| p.views.iter().any(|&(v, root)| v == m || chain_to(g, v, root).contains(&m)));
    let mut unread: Vec<usize> = vec![];
    for &m in order.iter().rev() {
        if !read_through(m) || kr.outputs.iter().any(|o| o.index() == m) {
            continue;
        }
        let readers_ok = order.iter().filter(|&&u| g.nodes[u].args.iter().any(|a| a.index() == m)).all(|&u| in_segment(u) || unread.contains(&u));
        if readers_ok {
            unread.push(m);
        }
    }
    unread
}

/// A program's iteration shape, loads (value, strides), stores (stored
/// value, computed value, strides) and the code of one element.
struct Analysis {
    shape: Vec<usize>,
    loads: Vec<(usize, Vec<usize>)>,
    stores: Vec<(usize, usize, Vec<usize>)>,
    code: ElementCode,
}

/// One element of a program as scalar expressions: each load a float
/// variable, each computed value an expression over them.
struct ElementCode {
    x: Exprs,
    /// The variable of each load, in load order.
    loads: Vec<Var>,
    /// The expression of each loaded or computed graph value.
    values: HashMap<usize, E>,
}

impl ElementCode {
    /// The element code of `ops` (the row reduction `red`, if any, excluded:
    /// the row function sums its operand), loading `loads`.
    fn build(g: &Graph, ops: &[usize], loads: &[(usize, Vec<usize>)], red: Option<usize>, float: Float) -> Result<ElementCode, String> {
        let mut x = Exprs::with_float(float);
        let mut values = HashMap::new();
        let mut vars = Vec::with_capacity(loads.len());
        for (m, _) in loads {
            let v = x.var(Ty::Float, 0, "load");
            vars.push(v);
            values.insert(*m, x.var_e(v));
        }
        for &m in ops {
            let node = &g.nodes[m];
            if Some(m) == red || matches!(node.op, Op::Permute { .. } | Op::Reshape { .. }) {
                continue;
            }
            let mut args = Vec::with_capacity(node.args.len());
            for a in &node.args {
                let a = a.index();
                args.push(match (values.get(&a), &g.nodes[a].op) {
                    (Some(&e), _) => e,
                    (None, Op::Scalar { value }) => x.float_c(*value),
                    (None, _) => return Err(format!("operand %{a} of %{m} is neither loaded nor computed")),
                });
            }
            let e = match &node.op {
                // The loads' strides broadcast; the value is the operand's.
                Op::Broadcast { .. } => args[0],
                op => crate::scalar::ops::pointwise(&mut x, op, &args).ok_or_else(|| format!("op {}", op.name()))?,
            };
            values.insert(m, e);
        }
        Ok(ElementCode { x, loads: vars, values })
    }

    /// The nodes `roots` depend on, in dependency order (a node's operands
    /// have smaller ids), or why one has no cranelift lowering.
    fn reachable(&self, roots: &[E]) -> Result<Vec<E>, String> {
        let mut seen = std::collections::HashSet::new();
        let mut stack: Vec<E> = roots.to_vec();
        while let Some(e) = stack.pop() {
            if !seen.insert(e) {
                continue;
            }
            match *self.x.get(e) {
                Expr::F(_) | Expr::Var(_) => {}
                Expr::F1(f, a) => {
                    if matches!(f, F1::RoundEven | F1::F16Scale) {
                        return Err(format!("scalar function {f:?}"));
                    }
                    stack.push(a);
                }
                Expr::F2(_, a, c) | Expr::FCmp(_, a, c) | Expr::And(a, c) => stack.extend([a, c]),
                Expr::Not(a) => stack.push(a),
                Expr::Sel(p, a, c) if self.x.ty(a) == Ty::Float => stack.extend([p, a, c]),
                ref other => return Err(format!("scalar node {other:?}")),
            }
        }
        let mut order: Vec<E> = seen.into_iter().collect();
        order.sort_unstable();
        Ok(order)
    }
}

fn analyse(g: &Graph, kr: &Program, float: Float) -> Result<Analysis, String> {
    if kr.outputs.is_empty() {
        return Err("no outputs".into());
    }
    // A row reduction: the program's last op, stored once per row.
    let reds: Vec<usize> = kr.ops.iter().copied().filter(|&m| row_reduction(g, m).is_some()).collect();
    let red = match reds[..] {
        [] => None,
        [r] if kr.ops.last() == Some(&r) && kr.outputs.contains(&r) => Some(r),
        _ => return Err("a row reduction not last, not stored, or not alone".into()),
    };
    let is_layout = |m: usize| matches!(g.nodes[m].op, Op::Permute { .. } | Op::Reshape { .. });
    let in_kernel = |m: usize| kr.ops.contains(&m);
    // Each output: the value computed in the loop (core) and the permutation
    // of its layout (identity unless the output is Permute or Reshape(Permute)).
    let mut chains: Vec<(usize, usize, Vec<usize>)> = Vec::new();
    let mut layout_used = std::collections::HashSet::new();
    for &o in kr.outputs.iter().filter(|&&o| Some(o) != red) {
        let mut core = o;
        let mut perm: Option<Vec<usize>> = None;
        if let Op::Reshape { .. } = g.nodes[core].op {
            layout_used.insert(core);
            core = g.nodes[core].args[0].index();
            if g.nodes[core].ty.numel() != g.nodes[o].ty.numel() {
                return Err("reshape changes size".into());
            }
        }
        if let Op::Permute { perm: p } = &g.nodes[core].op {
            if !in_kernel(core) {
                return Err("reshape of a permute from another kernel".into());
            }
            layout_used.insert(core);
            perm = Some(p.clone());
            core = g.nodes[core].args[0].index();
        }
        if in_kernel(core) && is_layout(core) {
            return Err("nested layout ops".into());
        }
        // A reshape/permute of a value another kernel stored: nothing is
        // computed here to store (the interpreter copies it).
        if !in_kernel(core) {
            return Err("a layout view of a value from another kernel".into());
        }
        let cs = g.nodes[core].ty.shape.clone();
        let r = cs.len();
        let perm = perm.unwrap_or_else(|| (0..r).collect());
        let pshape: Vec<usize> = perm.iter().map(|&d| cs[d]).collect();
        let ps = ops::strides(&pshape);
        let mut st = vec![0; r];
        for (j, &d) in perm.iter().enumerate() {
            st[d] = ps[j];
        }
        chains.push((o, core, st));
    }
    // The iteration shape: the reduced operand's, else the outputs'.
    let shape = match (red, chains.first()) {
        (Some(r), _) => g.nodes[g.nodes[r].args[0].index()].ty.shape.clone(),
        (None, Some(first)) => g.nodes[first.1].ty.shape.clone(),
        (None, None) => return Err("no outputs".into()),
    };
    for (_, c, _) in &chains {
        if g.nodes[*c].ty.shape != shape {
            return Err("outputs of different shapes".into());
        }
    }
    let shape = if shape.is_empty() { vec![1] } else { shape };
    let mut chains: Vec<(usize, usize, Vec<usize>)> =
        chains.into_iter().map(|(o, c, st)| (o, c, if st.is_empty() { vec![1] } else { st })).collect();
    if let Some(r) = red {
        // One value per row: the reduced shape's strides over the outer axes.
        let out = &g.nodes[r].ty.shape;
        let mut st = ops::strides(out);
        st.truncate(shape.len() - 1);
        st.push(0);
        chains.push((r, r, st));
    }
    for &m in &kr.ops {
        let node = &g.nodes[m];
        if node.ty.dtype != DType::F32 {
            return Err(format!("non-float value %{m}"));
        }
        if is_layout(m) {
            if !layout_used.contains(&m) {
                return Err(format!("op {} inside the kernel", node.op.name()));
            }
            continue;
        }
        if Some(m) == red {
            let x = node.args[0].index();
            if layout_used.contains(&x) || matches!(g.nodes[x].op, Op::Scalar { .. }) {
                return Err("a row reduction of a layout op or a constant".into());
            }
            continue;
        }
        match node.op {
            Op::Unary { .. } | Op::Binary { .. } | Op::Broadcast { .. } | Op::Scalar { .. } | Op::LeakyRelu { .. } | Op::LeakyStep { .. } => {}
            ref op => return Err(format!("op {}", op.name())),
        }
        if node.args.iter().any(|a| layout_used.contains(&a.index())) {
            return Err("a layout op feeds arithmetic".into());
        }
        bcast_strides(&node.ty.shape, &shape).ok_or_else(|| format!("%{m} does not broadcast to the kernel shape"))?;
    }
    let mut loads = Vec::new();
    for &v in &kr.inputs {
        let node = &g.nodes[v];
        if node.ty.dtype != DType::F32 {
            return Err(format!("non-float input %{v}"));
        }
        let st = if let Some(&(_, root)) = kr.views.iter().find(|(x, _)| *x == v) {
            let path = chain_to(g, v, root);
            let (_, vshape, vstrides) = view_chain(g, v, |m| path.contains(&m)).ok_or("a view needing a copy")?;
            view_strides(&vshape, &vstrides, &shape).ok_or_else(|| format!("view %{v} does not broadcast"))?
        } else {
            bcast_strides(&node.ty.shape, &shape).ok_or_else(|| format!("input %{v} does not broadcast"))?
        };
        loads.push((v, st));
    }
    let code = ElementCode::build(g, &kr.ops, &loads, red, float)?;
    // Every value the row function stores or sums has a lowering.
    let mut roots = Vec::new();
    for &(_, core, _) in &chains {
        let m = if Some(core) == red { g.nodes[core].args[0].index() } else { core };
        roots.push(*code.values.get(&m).ok_or_else(|| format!("%{m} is neither loaded nor computed"))?);
    }
    code.reachable(&roots)?;
    Ok(Analysis { shape, loads, stores: chains, code })
}

/// The layout ops from `v` down to (not including) `root`, following first
/// operands.
fn chain_to(g: &Graph, v: usize, root: usize) -> Vec<usize> {
    let mut path = vec![];
    let mut x = v;
    while x != root && matches!(g.nodes[x].op, Op::Permute { .. } | Op::Reshape { .. }) {
        path.push(x);
        x = g.nodes[x].args[0].index();
    }
    path
}

/// Strides over the iteration shape `to` of a view (`shape`, `strides`)
/// broadcast to it (numpy rules, 0 on broadcast axes).
fn view_strides(shape: &[usize], strides: &[usize], to: &[usize]) -> Option<Vec<usize>> {
    let off = to.len().checked_sub(shape.len())?;
    (0..to.len())
        .map(|i| match i.checked_sub(off) {
            None => Some(0),
            Some(j) if shape[j] == to[i] => Some(strides[j]),
            Some(j) if shape[j] == 1 => Some(0),
            Some(_) => None,
        })
        .collect()
}

struct Callbacks {
    exp: FuncId,
    ln: FuncId,
    tanh: FuncId,
    max: FuncId,
    min: FuncId,
}

/// Code generation of one step of a row loop: element `i` (scalar) or
/// elements `i..i + lanes` (vector) of every store.
struct Emitter<'a> {
    g: &'a Graph,
    code: &'a ElementCode,
    fty: Type,
    vty: Type,
    lanes: usize,
    size: i64,
    inner: usize,
    /// exp, ln, tanh, max, min
    refs: [FuncRef; 5],
    in_bases: Vec<Value>,
    out_bases: Vec<Value>,
}

impl Emitter<'_> {
    fn fconst(&self, b: &mut FunctionBuilder, v: f64, vector: bool) -> Value {
        let x = if self.fty == types::F64 { b.ins().f64const(Ieee64::with_float(v)) } else { b.ins().f32const(Ieee32::with_float(v as f32)) };
        if vector {
            b.ins().splat(self.vty, x)
        } else {
            x
        }
    }

    /// A call to a scalar callback, lane by lane for vectors.
    fn call(&self, b: &mut FunctionBuilder, f: FuncRef, xs: &[Value], vector: bool) -> Value {
        if !vector {
            let inst = b.ins().call(f, xs);
            return b.inst_results(inst)[0];
        }
        let mut out = None;
        for l in 0..self.lanes as u8 {
            let args: Vec<Value> = xs.iter().map(|&x| b.ins().extractlane(x, l)).collect();
            let inst = b.ins().call(f, &args);
            let r = b.inst_results(inst)[0];
            out = Some(match out {
                None => b.ins().splat(self.vty, r),
                Some(v) => b.ins().insertlane(v, r, l),
            });
        }
        out.expect("at least one lane")
    }

    /// `c ? x : y` for a comparison `c` of scalars or of vectors (lane masks).
    fn select(&self, b: &mut FunctionBuilder, c: Value, x: Value, y: Value, vector: bool) -> Value {
        if vector {
            let mask = b.ins().bitcast(self.vty, MemFlagsData::new().with_endianness(Endianness::Little), c);
            b.ins().bitselect(mask, x, y)
        } else {
            b.ins().select(c, x, y)
        }
    }

    /// Element `i` (or elements `i..i + lanes`) of every store in `stores`,
    /// and the value of graph value `extra` there (a row reduction's operand).
    #[allow(clippy::too_many_arguments)]
    fn row_step(
        &self,
        b: &mut FunctionBuilder,
        i: Value,
        loads: &[(usize, Vec<usize>)],
        stores: &[(usize, usize, Vec<usize>)],
        extra: Option<usize>,
        vector: bool,
    ) -> Option<Value> {
        let (size, inner) = (self.size, self.inner);
        // Plain (not "aligned") flags: vector accesses need not be 16-byte aligned.
        let vflags = MemFlagsData::new().with_notrap();
        let flags = MemFlagsData::trusted();
        let byte_off = b.ins().imul_imm_s(i, size);
        let mut vars: HashMap<Var, Value> = HashMap::new();
        for (li, (_, st)) in loads.iter().enumerate() {
            let base = self.in_bases[li];
            let x = match (st[inner], vector) {
                (0, false) => b.ins().load(self.fty, flags, base, 0),
                (0, true) => {
                    let x = b.ins().load(self.fty, flags, base, 0);
                    b.ins().splat(self.vty, x)
                }
                (1, false) => {
                    let addr = b.ins().iadd(base, byte_off);
                    b.ins().load(self.fty, flags, addr, 0)
                }
                (1, true) => {
                    let addr = b.ins().iadd(base, byte_off);
                    b.ins().load(self.vty, vflags, addr, 0)
                }
                (s, vector) => {
                    let off = b.ins().imul_imm_s(i, size * s as i64);
                    let addr = b.ins().iadd(base, off);
                    let x = b.ins().load(self.fty, flags, addr, 0);
                    if vector {
                        let mut v = b.ins().splat(self.vty, x);
                        for l in 1..self.lanes {
                            let y = b.ins().load(self.fty, flags, addr, (size * s as i64 * l as i64) as i32);
                            v = b.ins().insertlane(v, y, l as u8);
                        }
                        v
                    } else {
                        x
                    }
                }
            };
            vars.insert(self.code.loads[li], x);
        }
        let value_of = |m: usize| self.code.values[&m];
        let mut roots: Vec<E> = stores.iter().map(|(_, core, _)| value_of(*core)).collect();
        roots.extend(extra.map(value_of));
        let vals = self.lower(b, &roots, &vars, vector);
        for (si, (_, core, st)) in stores.iter().enumerate() {
            let s = st[inner] as i64;
            let off = if s == 1 { byte_off } else { b.ins().imul_imm_s(i, size * s) };
            let addr = b.ins().iadd(self.out_bases[si], off);
            let v = vals[&value_of(*core)];
            if !vector {
                b.ins().store(flags, v, addr, 0);
            } else if s == 1 {
                b.ins().store(vflags, v, addr, 0);
            } else {
                for l in 0..self.lanes {
                    let x = b.ins().extractlane(v, l as u8);
                    b.ins().store(flags, x, addr, (size * s * l as i64) as i32);
                }
            }
        }
        extra.map(|m| vals[&value_of(m)])
    }

    /// The scalar expressions `roots` (and what they depend on) as cranelift
    /// values, the loads' variables bound to `vars`; predicates are `i8`
    /// (scalar) or lane masks (vector).
    fn lower(&self, b: &mut FunctionBuilder, roots: &[E], vars: &HashMap<Var, Value>, vector: bool) -> HashMap<E, Value> {
        let order = self.code.reachable(roots).expect("checked by analyse");
        let mut v: HashMap<E, Value> = HashMap::new();
        for e in order {
            let out = match *self.code.x.get(e) {
                Expr::F(bits) => self.fconst(b, f64::from_bits(bits), vector),
                Expr::Var(x) => vars[&x],
                Expr::F1(f, a) => self.f1(b, f, v[&a], vector),
                Expr::F2(f, a, c) => {
                    let (x, y) = (v[&a], v[&c]);
                    match f {
                        F2::Add => b.ins().fadd(x, y),
                        F2::Sub => b.ins().fsub(x, y),
                        F2::Mul => b.ins().fmul(x, y),
                        F2::Div => b.ins().fdiv(x, y),
                        F2::Max => self.call(b, self.refs[3], &[x, y], vector),
                        F2::Min => self.call(b, self.refs[4], &[x, y], vector),
                    }
                }
                Expr::FCmp(op, a, c) => {
                    let cc = match op {
                        FCmp::Gt => FloatCC::GreaterThan,
                        FCmp::Le => FloatCC::LessThanOrEqual,
                        FCmp::Eq => FloatCC::Equal,
                    };
                    b.ins().fcmp(cc, v[&a], v[&c])
                }
                Expr::And(p, q) => b.ins().band(v[&p], v[&q]),
                // A scalar predicate is 0 or 1; a vector one a lane mask.
                Expr::Not(p) if vector => b.ins().bnot(v[&p]),
                Expr::Not(p) => b.ins().bxor_imm_s(v[&p], 1),
                Expr::Sel(p, x, y) => self.select(b, v[&p], v[&x], v[&y], vector),
                ref other => unreachable!("checked by analyse: {other:?}"),
            };
            v.insert(e, out);
        }
        v
    }

    fn f1(&self, b: &mut FunctionBuilder, f: F1, x: Value, vector: bool) -> Value {
        let fc = |b: &mut FunctionBuilder, v: f64| self.fconst(b, v, vector);
        match f {
            F1::Neg => b.ins().fneg(x),
            F1::Abs => b.ins().fabs(x),
            F1::Sqrt => b.ins().sqrt(x),
            F1::Rsqrt => {
                let one = fc(b, 1.0);
                let s = b.ins().sqrt(x);
                b.ins().fdiv(one, s)
            }
            F1::Recip => {
                let one = fc(b, 1.0);
                b.ins().fdiv(one, x)
            }
            F1::Sigmoid => {
                let one = fc(b, 1.0);
                let nx = b.ins().fneg(x);
                let ex = self.call(b, self.refs[0], &[nx], vector);
                let d = b.ins().fadd(one, ex);
                b.ins().fdiv(one, d)
            }
            F1::Tanh => self.call(b, self.refs[2], &[x], vector),
            F1::Exp => self.call(b, self.refs[0], &[x], vector),
            F1::Log => self.call(b, self.refs[1], &[x], vector),
            F1::RoundEven | F1::F16Scale => unreachable!("checked by analyse: {f:?}"),
        }
    }

    /// The body of an element-wise row function: whole vectors first, then
    /// the remaining elements one at a time.
    fn row_map(&self, b: &mut FunctionBuilder, n: Value, loads: &[(usize, Vec<usize>)], stores: &[(usize, usize, Vec<usize>)]) {
        let iv = b.declare_var(types::I64);
        let zero_i = b.ins().iconst(types::I64, 0);
        b.def_var(iv, zero_i);
        let nv = b.ins().band_imm_s(n, -(self.lanes as i64));
        Self::counted_loop(b, iv, nv, self.lanes, |b, i| {
            self.row_step(b, i, loads, stores, None, true);
        });
        Self::counted_loop(b, iv, n, 1, |b, i| {
            self.row_step(b, i, loads, stores, None, false);
        });
    }

    /// `while i < end { body(i); i += step }` on the variable `iv`; leaves
    /// the builder in the block after the loop.
    fn counted_loop(b: &mut FunctionBuilder, iv: Variable, end: Value, step: usize, mut body: impl FnMut(&mut FunctionBuilder, Value)) {
        let (header, block, exit) = (b.create_block(), b.create_block(), b.create_block());
        b.ins().jump(header, &[]);
        b.switch_to_block(header);
        let i = b.use_var(iv);
        let c = b.ins().icmp(IntCC::SignedLessThan, i, end);
        b.ins().brif(c, block, &[], exit, &[]);
        b.switch_to_block(block);
        let i = b.use_var(iv);
        body(b, i);
        let i1 = b.ins().iadd_imm_s(i, step as i64);
        b.def_var(iv, i1);
        b.ins().jump(header, &[]);
        b.switch_to_block(exit);
    }

    /// The body of a row function whose program ends in the row reduction
    /// `red` (of `x`, into store `red_store`): the other ops and stores
    /// element by element, with the reduced values added into 8 partial
    /// sums in [`ops::sum_lanes`]'s order (element `j` of each group of 8
    /// into sum `j`, the tail likewise), combined as it does, divided by the
    /// row length for a mean, and stored once.
    fn row_reduce(
        &self,
        b: &mut FunctionBuilder,
        n: Value,
        loads: &[(usize, Vec<usize>)],
        stores: &[(usize, usize, Vec<usize>)],
        red: usize,
        mean: bool,
    ) {
        const SUMS: usize = 8;
        let x = self.g.nodes[red].args[0].index();
        let red_store = stores.iter().position(|s| s.0 == red).expect("analyse stores the reduction");
        let others: Vec<(usize, usize, Vec<usize>)> = stores.iter().filter(|s| s.0 != red).cloned().collect();
        let per = SUMS / self.lanes;
        let zero_v = self.fconst(b, 0.0, true);
        let accs: Vec<_> = (0..per)
            .map(|_| {
                let v = b.declare_var(self.vty);
                b.def_var(v, zero_v);
                v
            })
            .collect();
        let iv = b.declare_var(types::I64);
        let zero_i = b.ins().iconst(types::I64, 0);
        b.def_var(iv, zero_i);
        let n8 = b.ins().band_imm_s(n, -(SUMS as i64));
        Self::counted_loop(b, iv, n8, SUMS, |b, i| {
            for (k, acc) in accs.iter().enumerate() {
                let ik = b.ins().iadd_imm_s(i, (k * self.lanes) as i64);
                let xv = self.row_step(b, ik, loads, &others, Some(x), true).expect("the reduced value");
                let a = b.use_var(*acc);
                let a = b.ins().fadd(a, xv);
                b.def_var(*acc, a);
            }
        });
        // The partial sums as scalars, then the tail (fewer than 8 elements), unrolled.
        let sums: Vec<_> = (0..SUMS)
            .map(|j| {
                let v = b.use_var(accs[j / self.lanes]);
                let s = b.ins().extractlane(v, (j % self.lanes) as u8);
                let var = b.declare_var(self.fty);
                b.def_var(var, s);
                var
            })
            .collect();
        let done = b.create_block();
        for (j, sum) in sums.iter().enumerate().take(SUMS - 1) {
            let (step, next) = (b.create_block(), b.create_block());
            let ij = b.ins().iadd_imm_s(n8, j as i64);
            let c = b.ins().icmp(IntCC::SignedLessThan, ij, n);
            b.ins().brif(c, step, &[], done, &[]);
            b.switch_to_block(step);
            let xv = self.row_step(b, ij, loads, &others, Some(x), false).expect("the reduced value");
            let a = b.use_var(*sum);
            let a = b.ins().fadd(a, xv);
            b.def_var(*sum, a);
            b.ins().jump(next, &[]);
            b.switch_to_block(next);
        }
        b.ins().jump(done, &[]);
        b.switch_to_block(done);
        let s: Vec<Value> = sums.iter().map(|&v| b.use_var(v)).collect();
        let (p04, p26, p15, p37) = (b.ins().fadd(s[0], s[4]), b.ins().fadd(s[2], s[6]), b.ins().fadd(s[1], s[5]), b.ins().fadd(s[3], s[7]));
        let (l, r) = (b.ins().fadd(p04, p26), b.ins().fadd(p15, p37));
        let mut total = b.ins().fadd(l, r);
        if mean {
            let nf = b.ins().fcvt_from_sint(self.fty, n);
            total = b.ins().fdiv(total, nf);
        }
        b.ins().store(MemFlagsData::trusted(), total, self.out_bases[red_store], 0);
    }
}

/// Compile every compilable element-wise kernel of `kernels` for float type `F`.
pub fn compile<F: Real>(g: &Graph, kernels: &[Kernel]) -> Result<JitKernels, String> {
    let f64_mode = std::mem::size_of::<F>() == 8;
    let float = if f64_mode { Float::F64 } else { Float::F32 };
    // (kernel, first op of the segment or None for the whole kernel, program, analysis)
    let mut plan = Vec::new();
    let mut fallback = Vec::new();
    let mut skip = HashMap::new();
    for (k, kr) in kernels.iter().enumerate() {
        let whole = Program::of_kernel(kr).and_then(|p| analyse(g, &p, float).map(|a| (p, a)));
        match whole {
            Ok((p, a)) => plan.push((k, None, p, a)),
            Err(why) => {
                if kr.kind == KernelKind::Elementwise {
                    fallback.push((k, why));
                }
                let progs = segments(g, kr, float);
                let unread = views_only_segments_read(g, kr, &progs);
                if !unread.is_empty() {
                    skip.insert(k, unread);
                }
                for p in progs {
                    let a = analyse(g, &p, float)?;
                    plan.push((k, Some(p.ops[0]), p, a));
                }
            }
        }
    }
    if plan.is_empty() {
        return Ok(JitKernels { _module: None, kernels: HashMap::new(), segments: HashMap::new(), skip, fallback });
    }
    let e = |x: &dyn std::fmt::Display| format!("cranelift: {x}");
    let mut fb = settings::builder();
    fb.set("use_colocated_libcalls", "false").map_err(|x| e(&x))?;
    fb.set("is_pic", "false").map_err(|x| e(&x))?;
    fb.set("opt_level", "speed").map_err(|x| e(&x))?;
    let isa = cranelift_native::builder().map_err(|x| e(&x))?.finish(settings::Flags::new(fb)).map_err(|x| e(&x))?;
    let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
    if f64_mode {
        register_callbacks::<f64>(&mut jb);
    } else {
        register_callbacks::<f32>(&mut jb);
    }
    let mut module = JITModule::new(jb);
    let fty: Type = if f64_mode { types::F64 } else { types::F32 };
    // 128-bit vectors (what cranelift's x64 backend offers): 4 f32 or 2 f64 lanes.
    let (vty, lanes): (Type, usize) = if f64_mode { (types::F64X2, 2) } else { (types::F32X4, 4) };
    let ptr = module.target_config().pointer_type();
    let mut sig1 = module.make_signature();
    sig1.params.push(AbiParam::new(fty));
    sig1.returns.push(AbiParam::new(fty));
    let mut sig2 = module.make_signature();
    sig2.params.push(AbiParam::new(fty));
    sig2.params.push(AbiParam::new(fty));
    sig2.returns.push(AbiParam::new(fty));
    let cbs = Callbacks {
        exp: module.declare_function("pgc_exp", Linkage::Import, &sig1).map_err(|x| e(&x))?,
        ln: module.declare_function("pgc_ln", Linkage::Import, &sig1).map_err(|x| e(&x))?,
        tanh: module.declare_function("pgc_tanh", Linkage::Import, &sig1).map_err(|x| e(&x))?,
        max: module.declare_function("pgc_max", Linkage::Import, &sig2).map_err(|x| e(&x))?,
        min: module.declare_function("pgc_min", Linkage::Import, &sig2).map_err(|x| e(&x))?,
    };
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    let mut ids = Vec::new();
    for (fi, (k, first, kr, Analysis { shape, loads, stores, code })) in plan.into_iter().enumerate() {
        ctx.func.signature.params.clear();
        ctx.func.signature.returns.clear();
        ctx.func.signature.params.push(AbiParam::new(types::I64));
        ctx.func.signature.params.push(AbiParam::new(ptr));
        ctx.func.signature.params.push(AbiParam::new(ptr));
        {
            let refs = [
                module.declare_func_in_func(cbs.exp, &mut ctx.func),
                module.declare_func_in_func(cbs.ln, &mut ctx.func),
                module.declare_func_in_func(cbs.tanh, &mut ctx.func),
                module.declare_func_in_func(cbs.max, &mut ctx.func),
                module.declare_func_in_func(cbs.min, &mut ctx.func),
            ];
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let n = b.block_params(entry)[0];
            let ins = b.block_params(entry)[1];
            let outs = b.block_params(entry)[2];
            let flags = MemFlagsData::trusted();
            let in_bases: Vec<Value> = (0..loads.len()).map(|i| b.ins().load(ptr, flags, ins, (i * 8) as i32)).collect();
            let out_bases: Vec<Value> = (0..stores.len()).map(|i| b.ins().load(ptr, flags, outs, (i * 8) as i32)).collect();
            let em = Emitter { g, code: &code, fty, vty, lanes, size: if f64_mode { 8 } else { 4 }, inner: shape.len() - 1, refs, in_bases, out_bases };
            match kr.ops.iter().find_map(|&m| row_reduction(g, m).map(|mean| (m, mean))) {
                Some((red, mean)) => em.row_reduce(&mut b, n, &loads, &stores, red, mean),
                None => em.row_map(&mut b, n, &loads, &stores),
            }
            b.ins().return_(&[]);
            b.seal_all_blocks();
            b.finalize(module.target_config());
        }
        let id = module.declare_function(&format!("f{fi}_k{k}"), Linkage::Local, &ctx.func.signature).map_err(|x| e(&x))?;
        module.define_function(id, &mut ctx).map_err(|x| e(&format!("{x:?}")))?;
        module.clear_context(&mut ctx);
        let sources: Vec<usize> = loads.iter().map(|(v, _)| kr.views.iter().find(|(x, _)| x == v).map_or(*v, |&(_, root)| root)).collect();
        ids.push((k, first, kr.ops, id, shape, loads, sources, stores));
    }
    module.finalize_definitions().map_err(|x| e(&x))?;
    let mut out = HashMap::new();
    let mut segs: HashMap<usize, HashMap<usize, Segment>> = HashMap::new();
    for (k, first, ops, id, shape, loads, sources, stores) in ids {
        let p = module.get_finalized_function(id);
        // SAFETY: compiled above with exactly this signature.
        let func = unsafe { std::mem::transmute::<*const u8, unsafe extern "C" fn(i64, *const *const u8, *const *mut u8)>(p) };
        let store_lens = stores.iter().map(|(v, ..)| g.nodes[*v].ty.numel()).collect();
        let c = Compiled { loads, sources, stores, store_lens, shape, func };
        match first {
            None => {
                out.insert(k, c);
            }
            Some(f) => {
                segs.entry(k).or_default().insert(f, Segment { ops, code: c });
            }
        }
    }
    Ok(JitKernels { _module: Some(module), kernels: out, segments: segs, skip, fallback })
}

/// Run a compiled kernel on its input slices, into `outs` (one buffer per
/// store, of the iteration shape's size; every element is overwritten).
pub fn run<F: Real>(c: &Compiled, inputs: &[&[F]], mut outs: Vec<Vec<F>>) -> Vec<Vec<F>> {
    use rayon::prelude::*;
    let numel: usize = c.shape.iter().product();
    assert!(outs.len() == c.stores.len() && outs.iter().zip(&c.store_lens).all(|(o, &l)| o.len() == l), "jit::run: output buffers do not match the kernel");
    assert!(inputs.len() == c.loads.len(), "jit::run: wrong number of inputs");
    if numel == 0 {
        return outs;
    }
    let l = *c.shape.last().unwrap();
    let rows = numel / l;
    let r = c.shape.len();
    let in_ptrs: Vec<usize> = inputs.iter().map(|s| s.as_ptr() as usize).collect();
    let out_ptrs: Vec<usize> = outs.iter_mut().map(|o| o.as_mut_ptr() as usize).collect();
    let size = std::mem::size_of::<F>();
    let do_rows = |r0: usize, r1: usize| {
        let mut ip = vec![0usize; in_ptrs.len()];
        let mut op = vec![0usize; out_ptrs.len()];
        let mut idx = vec![0usize; r];
        // Multi-index of row r0 over the outer axes.
        let mut rem = r0;
        for d in (0..r - 1).rev() {
            idx[d] = rem % c.shape[d];
            rem /= c.shape[d];
        }
        for _ in r0..r1 {
            for (i, (_, st)) in c.loads.iter().enumerate() {
                let off: usize = (0..r - 1).map(|d| idx[d] * st[d]).sum();
                ip[i] = in_ptrs[i] + off * size;
            }
            for (i, (_, _, st)) in c.stores.iter().enumerate() {
                let off: usize = (0..r - 1).map(|d| idx[d] * st[d]).sum();
                op[i] = out_ptrs[i] + off * size;
            }
            // SAFETY: pointers in bounds (strides from the shapes); rows are disjoint.
            unsafe { (c.func)(l as i64, ip.as_ptr() as *const *const u8, op.as_ptr() as *const *mut u8) };
            for d in (0..r - 1).rev() {
                idx[d] += 1;
                if idx[d] < c.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    };
    if numel < ops::PAR_MIN || rows == 1 {
        do_rows(0, rows);
    } else {
        let chunks = (rayon::current_num_threads() * 4).min(rows);
        let per = rows.div_ceil(chunks);
        (0..chunks).into_par_iter().for_each(|ch| {
            let r0 = ch * per;
            let r1 = ((ch + 1) * per).min(rows);
            if r0 < r1 {
                do_rows(r0, r1);
            }
        });
    }
    outs
}
