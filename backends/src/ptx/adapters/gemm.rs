//! Plan GEMM kernels (and the LM head) onto the GEMM emitter.
//!
//! The product node maps to a [`GemmLayout`] with leading axes flattened:
//! * `Linear(x[..., K], w[N, K])` -> [`GemmLayout::LINEAR`], `M = numel(x) / K`;
//! * `MatMul(dy[..., N], w[N, K])` -> [`GemmLayout::INPUT_GRAD`] (GEMM `N, K` = model `K, N`);
//! * `OuterSum(dy[..., N], x[..., K])` -> [`GemmLayout::WEIGHT_GRAD`] (GEMM
//!   `M, N, K` = model `N, K, rows`), split-K with atomics when the output is
//!   small and the rows many.
//!
//! Operands are read in the precision's element type: bf16 arena values and
//! prepared parameter copies as they are, fp32 masters in f32 plans; in bf16
//! plans an operand stored as f32 (the residual stream under an RMS-norm row
//! scale, a weight without a bf16 copy) is converted to bf16 by the GEMM's
//! loader ([`GemmConfig::a_f32`]).
//! A prologue `rms(x) = x * r` (rmsnorm-into-gemm) becomes `A = x` and a row
//! scale `r[row]` on the output rows. The kernel's other ops are the
//! epilogue: a [`PwEpilogue`] program at each `(row, col)` with the
//! accumulator standing for the product, storing every output of the plan
//! kernel. When an output needs the product at another element than the
//! thread's own (or an LM head that [`super::lm_head`] does not take), the
//! product goes to an f32 scratch buffer and a fused launch computes the
//! outputs from it.

use super::toolkit::{self, output_target, plain_source, Fused};
use crate::ptx::ctx::{Ctx, PtxError};
use crate::ptx::templates::epilogue::{EpiStep, Epilogue};
use crate::ptx::templates::gemm::{emit_gemm, GemmConfig, GemmLayout, GemmPath};
use crate::ptx::templates::gemm_wgmma;
use crate::ptx::pointwise::epi::{PwEpilogue, PwRowSum, PwStore};
use crate::scalar::expr::{Ty, Var, E};
use pgc_ir::types::DType;
use crate::ptx::pointwise::{BufArg, GraphExprs};
use crate::ptx::program::{ArgRef, Launch, ZeroRef};
use pgc_ir::plan::{Kernel as PlanKernel, KernelKind, Place, Precision};
use pgc_ir::{BinaryFn, Op, ValueId};

/// Streaming multiprocessors of an H100 SXM (split-K sizing).
const SMS: u32 = 132;

struct Geometry {
    layout: GemmLayout,
    m: u32,
    n: u32,
    k: u32,
    a: ValueId,
    b: ValueId,
}

fn geometry(cx: &Ctx, p: ValueId) -> Result<Geometry, PtxError> {
    let g = cx.g;
    let node = g.node(p);
    let (x, y) = (node.args[0], node.args[1]);
    let sx = &g.ty(x).shape;
    let sy = &g.ty(y).shape;
    let last = |s: &[usize]| *s.last().unwrap();
    let rows = |s: &[usize]| s.iter().product::<usize>() / last(s).max(1);
    let u = |v: usize| -> Result<u32, PtxError> { u32::try_from(v).map_err(|_| PtxError::Unsupported(format!("GEMM size {v} too large"))) };
    Ok(match node.op {
        Op::Linear => Geometry { layout: GemmLayout::LINEAR, m: u(rows(sx))?, n: u(sy[0])?, k: u(sy[1])?, a: x, b: y },
        Op::MatMul => Geometry { layout: GemmLayout::INPUT_GRAD, m: u(rows(sx))?, n: u(sy[1])?, k: u(sy[0])?, a: x, b: y },
        Op::OuterSum => Geometry { layout: GemmLayout::WEIGHT_GRAD, m: u(last(sx))?, n: u(last(sy))?, k: u(rows(sx))?, a: x, b: y },
        _ => unreachable!(),
    })
}

/// Where operand `v` is read and whether it is f32 in a bf16 GEMM (converted
/// by the GEMM's loader); staged into scratch only when neither works.
fn operand(cx: &mut Ctx, v: ValueId, want: DType, what: &str) -> Result<(ArgRef, bool), PtxError> {
    if want == DType::Bf16 {
        match &cx.plan.values[v.index()] {
            Place::Arena(s) | Place::Param { prepared: Some(s), .. } if s.storage == DType::Bf16 => return Ok((ArgRef::Value(v), false)),
            Place::Arena(s) if s.storage == DType::F32 => return Ok((ArgRef::Value(v), true)),
            Place::Param { id, .. } => return Ok((ArgRef::ParamMaster(*id), true)),
            _ => {}
        }
    }
    Ok((toolkit::operand(cx, v, want, what)?, false))
}

/// A GEMM writes floats only.
fn elem_type(e: DType) -> Result<DType, PtxError> {
    match e {
        DType::F32 | DType::Bf16 => Ok(e),
        DType::I32 => Err(PtxError::Unsupported("an i32 GEMM output".into())),
    }
}

/// A plan GEMM's product, operands and prologue, ready for an epilogue.
pub(super) struct Setup {
    pub p: ValueId,
    prec: Precision,
    geo: Geometry,
    pub a: ArgRef,
    pub b: ArgRef,
    a32: bool,
    b32: bool,
    /// The RMS-norm row scale of the prologue, if any, and its argument.
    pre_steps: Vec<EpiStep>,
    pre_args: Vec<ArgRef>,
}

impl Setup {
    /// The product of kernel `kernel` and how the GEMM reads its operands.
    pub fn new(cx: &mut Ctx, kernel: &PlanKernel) -> Result<Setup, PtxError> {
        let g = cx.g;
        let prods: Vec<ValueId> = kernel.ops.iter().copied().filter(|&v| matches!(g.node(v).op, Op::Linear | Op::MatMul | Op::OuterSum)).collect();
        let [p] = prods[..] else {
            return Err(PtxError::Unsupported(format!("a GEMM kernel with {} matrix products", prods.len())));
        };
        let prec = cx.plan.precision;
        let want = match prec {
            Precision::Bf16 => DType::Bf16,
            Precision::F32 => DType::F32,
        };
        let mut geo = geometry(cx, p)?;
        // rmsnorm-into-gemm: A = x, output rows scaled by r.
        let mut row_scale: Option<ValueId> = None;
        if matches!(g.node(p).op, Op::Linear) && kernel.prologue.contains(&geo.a) {
            let m = g.node(geo.a);
            let is_row = |v: ValueId| g.ty(v).shape.last() == Some(&1) && g.ty(v).rank() == g.ty(geo.a).rank();
            let (x, r) = match (&m.op, m.args[0], m.args[1]) {
                (Op::Binary { f: BinaryFn::Mul }, a, b) if is_row(b) && g.ty(a).shape == g.ty(geo.a).shape => (a, b),
                (Op::Binary { f: BinaryFn::Mul }, a, b) if is_row(a) && g.ty(b).shape == g.ty(geo.a).shape => (b, a),
                _ => return Err(PtxError::Unsupported(format!("prologue %{} is not x * row_scale", geo.a.index()))),
            };
            geo.a = x;
            row_scale = Some(r);
        }
        let (a, a32) = operand(cx, geo.a, want, "a")?;
        let (b, b32) = operand(cx, geo.b, want, "b")?;
        let mut pre_steps = Vec::new();
        let mut pre_args = Vec::new();
        if let Some(r) = row_scale {
            let (elem, arg) = plain_source(cx, r)?;
            if elem != DType::F32 {
                return Err(PtxError::Unsupported("a bf16 row scale".into()));
            }
            pre_steps.push(EpiStep::RowScale { param: "rs".into() });
            pre_args.push(arg);
        }
        Ok(Setup { p, prec, geo, a, b, a32, b32, pre_steps, pre_args })
    }

    /// `M, N, K` as kernel arguments.
    pub fn sizes(&self) -> [ArgRef; 3] {
        [ArgRef::U32(self.geo.m), ArgRef::U32(self.geo.n), ArgRef::U32(self.geo.k)]
    }

    /// The GEMM configuration with the prologue's steps, then `steps`.
    pub fn config(&self, steps: Vec<EpiStep>, out: DType) -> GemmConfig {
        let mut all = self.pre_steps.clone();
        all.extend(steps);
        let c = GemmConfig::new(self.prec, self.geo.layout, self.geo.m, self.geo.n, self.geo.k, Epilogue { steps: all, out });
        if self.a32 || self.b32 {
            c.with_f32_operands(self.a32, self.b32, self.geo.m, self.geo.n, self.geo.k)
        } else {
            c
        }
    }

    /// Launch `cfg` on the operands with output `c`, the prologue's arguments, then `extra`.
    pub fn launch(&self, cx: &mut Ctx, cfg: GemmConfig, c: ArgRef, extra: Vec<ArgRef>, zero: Vec<ZeroRef>) -> Result<Launch, PtxError> {
        let mut args = self.pre_args.clone();
        args.extend(extra);
        launch_gemm(cx, cfg, [self.a.clone(), self.b.clone(), c], &self.sizes(), args, zero)
    }
}

/// Emit a plan GEMM kernel (or an LM head that [`super::lm_head`] does not
/// take: its product with the head's row work in the epilogue).
pub fn emit_kernel(cx: &mut Ctx, ki: usize) -> Result<Launch, PtxError> {
    let kernel = cx.plan.kernels[ki].clone();
    let g = cx.g;
    let su = Setup::new(cx, &kernel)?;
    let (p, geo) = (su.p, &su.geo);
    let a = su.a.clone();
    let config = |epi: Epilogue| su.config(epi.steps, epi.out);
    let name = cx.unique_name(&kernel.name);
    let outs = kernel.outputs.clone();
    let (m, n, k) = (geo.m, geo.n, geo.k);

    // The product alone: a plain epilogue (split-K for long weight gradients).
    if outs == [p] && kernel.kind == KernelKind::Gemm {
        let (elem, c) = output_target(cx, p)?;
        let epi = Epilogue { steps: vec![], out: elem_type(elem)? };
        let mut cfg = config(epi);
        let mut zero = Vec::new();
        if elem == DType::F32 && geo.layout == GemmLayout::WEIGHT_GRAD {
            let s = cfg.suggest_split_k(m, n, k, SMS);
            if s > 1 {
                cfg = cfg.with_split_k(s);
                zero.push(ZeroRef::Value(p));
            }
        }
        cfg.name = name.clone();
        return su.launch(cx, cfg, c, vec![], zero);
    }

    // The epilogue as a pointwise program.
    if kernel.kind == KernelKind::Gemm {
        match pointwise_epilogue(cx, &kernel.ops, &kernel.prologue, &kernel.inputs, &outs, p) {
            Ok((pw, args)) => {
                let mut cfg = config(Epilogue { steps: vec![EpiStep::Pointwise(Box::new(pw))], out: DType::F32 });
                cfg.name = name.clone();
                // `c` is not written by a pointwise epilogue: any valid pointer.
                let c = args.first().cloned().unwrap_or(a.clone());
                return su.launch(cx, cfg, c, args, vec![]);
            }
            Err(PtxError::Unsupported(_)) => {}
            Err(e) => return Err(e),
        }
    }

    // Fallback (and the LM head): the product into f32 scratch, then a fused launch.
    let numel = g.ty(p).numel();
    let aux = cx.scratch(numel as u64 * 4);
    let epi = Epilogue { steps: vec![], out: DType::F32 };
    let mut cfg = config(epi);
    cfg.name = name.clone();
    let launch = su.launch(cx, cfg, ArgRef::Aux(aux), vec![], vec![])?;
    let inside: Vec<ValueId> = kernel.ops.iter().copied().filter(|&v| v != p).collect();
    // Prologue nodes (recomputed values) are computed here too.
    let mut gx = GraphExprs::new(g, inside.iter().chain(&kernel.prologue).copied());
    gx.source(p, DType::F32, ArgRef::Aux(aux));
    for &v in &kernel.inputs {
        let (elem, arg) = plain_source(cx, v)?;
        gx.source_lazy(v, elem, arg);
    }
    let mut bufs = Vec::new();
    for &o in &outs {
        let (elem, arg) = output_target(cx, o)?;
        let buf = gx.buffer(elem, BufArg::Ref(arg));
        bufs.push((o, buf, elem));
    }
    let mut f = Fused::new(gx);
    toolkit::plan_outputs(&mut f, &bufs, &kernel.ops)?;
    let rest = cx.unique_name(&format!("{}_epilogue", kernel.name));
    toolkit::emit(cx, &rest, f)?;
    Ok(launch)
}

/// The wgmma tile's width and ring depth for an output `n` wide: 256-wide
/// tiles (3 stages of 48 KiB) for wide outputs with a light epilogue, 128
/// (4 of 32 KiB), 64 for narrow ones. A pointwise or split-K epilogue beside 128
/// accumulators per thread would spill (ptxas holds the kernel to 168
/// registers at 384 threads).
fn wgmma_tile(n: u32, light_epilogue: bool) -> (u32, u32) {
    match n {
        0..=64 => (64, 4),
        512.. if light_epilogue => (256, 3),
        _ => (128, 4),
    }
}

fn launch_gemm(cx: &mut Ctx, cfg: GemmConfig, abc: [ArgRef; 3], sizes: &[ArgRef; 3], extra: Vec<ArgRef>, zero: Vec<ZeroRef>) -> Result<Launch, PtxError> {
    let (m, n, k) = match (&sizes[0], &sizes[1], &sizes[2]) {
        (ArgRef::U32(m), ArgRef::U32(n), ArgRef::U32(k)) => (*m, *n, *k),
        _ => unreachable!(),
    };
    let mut cfg = cfg;
    let mut abc = abc;
    if cx.gemm_path == GemmPath::Wgmma && cfg.wgmma_allowed(m, n, k) {
        // the wgmma path reads A and B through tensor maps
        let name = std::mem::take(&mut cfg.name);
        let light = cfg.split_k == 1 && cfg.epilogue.steps.iter().all(|s| s.is_linear());
        let (bn, stages) = wgmma_tile(n, light);
        cfg = cfg.with_wgmma(bn, stages);
        cfg.name = name;
        let (ma, mb) = gemm_wgmma::operand_maps(&cfg.wgmma_spec(), m, n, k);
        for ((arg, mp), f32src) in abc.iter_mut().zip([ma, mb]).zip([cfg.a_f32, cfg.b_f32]) {
            if f32src {
                // converted by the producer warpgroup: a plain pointer
                continue;
            }
            let of = Box::new(std::mem::replace(arg, ArgRef::U32(0)));
            *arg = ArgRef::TensorMap { of, rows: mp.rows, cols: mp.cols, box_rows: mp.box_rows, box_cols: mp.box_cols };
        }
    }
    let gk = emit_gemm(&cfg)?;
    let mut grid = gk.grid(m, n);
    if cfg.path == GemmPath::Wgmma && !cx.persistent {
        // one block per output tile: the tile loop runs once per block
        grid[0] = m.div_ceil(cfg.tile.bm) * n.div_ceil(cfg.tile.bn);
    }
    let launch = Launch { grid, block: gk.block(), shared_bytes: gk.smem_bytes };
    let entry = cx.add_kernel(gk.kernel);
    let mut args: Vec<ArgRef> = abc.to_vec();
    args.extend(sizes.iter().cloned());
    args.extend(extra);
    cx.launch(&entry, launch, args, zero);
    Ok(launch)
}

/// The plan kernel's outputs as a program over `(row, col, acc)`; Unsupported
/// when some output needs the product at another element.
pub(super) fn pointwise_epilogue(
    cx: &mut Ctx,
    ops: &[ValueId],
    prologue: &[ValueId],
    inputs: &[ValueId],
    outs: &[ValueId],
    p: ValueId,
) -> Result<(PwEpilogue, Vec<ArgRef>), PtxError> {
    let mut pb = PwBuild::new(cx, ops, prologue, inputs, p)?;
    for &o in outs {
        pb.store_output(cx, o)?;
    }
    Ok(pb.finish(cx))
}

/// A pointwise epilogue under construction: the graph's values at the
/// element `(row, col)` of product `p`, whose value is the accumulator.
pub(super) struct PwBuild<'g> {
    pub gx: GraphExprs<'g>,
    p: ValueId,
    row: Var,
    col: Var,
    acc: Var,
    /// The index of the product at `(row, col)`.
    pub pidx: Vec<E>,
    stores: Vec<PwStore>,
    row_sums: Vec<PwRowSum>,
}

impl<'g> PwBuild<'g> {
    pub fn new(cx: &mut Ctx<'g>, ops: &[ValueId], prologue: &[ValueId], inputs: &[ValueId], p: ValueId) -> Result<Self, PtxError> {
        let g = cx.g;
        let mut gx = GraphExprs::new(g, ops.iter().chain(prologue).copied());
        for &v in inputs {
            let (elem, arg) = plain_source(cx, v)?;
            gx.source_lazy(v, elem, arg);
        }
        let pshape = g.ty(p).shape.clone();
        let (m, n) = match g.node(p).op {
            Op::OuterSum => (pshape[0], pshape[1]),
            _ => (pshape.iter().product::<usize>() / pshape.last().unwrap(), *pshape.last().unwrap()),
        };
        let row = gx.x.var(Ty::U32, m as u64, "row");
        let col = gx.x.var(Ty::U32, n as u64, "col");
        let acc = gx.x.var(Ty::Float, 0, "acc");
        let (re, ce, ae) = (gx.x.var_e(row), gx.x.var_e(col), gx.x.var_e(acc));
        let mut pidx = gx.x.unravel(re, &pshape[..pshape.len() - 1]);
        pidx.push(ce);
        gx.set_override(p, pidx.clone(), ae);
        Ok(PwBuild { gx, p, row, col, acc, pidx, stores: Vec::new(), row_sums: Vec::new() })
    }

    /// The GEMM row as an expression.
    pub fn row_e(&mut self) -> E {
        self.gx.x.var_e(self.row)
    }

    /// The index of `o` holding the product's element; Unsupported when `o` is
    /// not an element-wise image of the product.
    pub fn index_of(&mut self, o: ValueId) -> Result<Vec<E>, PtxError> {
        let pidx = self.pidx.clone();
        self.gx
            .forward_index(self.p, o, &pidx)
            .ok_or_else(|| PtxError::Unsupported(format!("output %{} is not an element-wise image of the product", o.index())))
    }

    /// Store output `o` of the plan kernel where the plan keeps it.
    pub fn store_output(&mut self, cx: &mut Ctx, o: ValueId) -> Result<(), PtxError> {
        let idx = self.index_of(o)?;
        let value = self.gx.value(o, &idx)?;
        let index = self.gx.x.linear(&cx.g.ty(o).shape.clone(), &idx);
        let (elem, arg) = output_target(cx, o)?;
        let buf = self.gx.buffer(elem, BufArg::Ref(arg));
        self.stores.push(PwStore { buf, index, value });
        Ok(())
    }

    /// `buf[row] += value` over the row's columns (`buf` f32, zeroed first).
    pub fn row_sum(&mut self, buf: ArgRef, value: E) {
        let b = self.gx.buffer(DType::F32, BufArg::Ref(buf));
        let index = self.row_e();
        self.row_sums.push(PwRowSum { buf: b, index, value });
    }

    /// The epilogue and its buffers' arguments (in parameter order).
    pub fn finish(self, cx: &mut Ctx) -> (PwEpilogue, Vec<ArgRef>) {
        let args: Vec<ArgRef> = self.gx.buf_args.iter().map(|a| cx.resolve(a)).collect();
        let params = (0..args.len()).map(|i| format!("e{i}")).collect();
        let epi = PwEpilogue { exprs: self.gx.x, row: self.row, col: self.col, acc: self.acc, params, stores: self.stores, row_sums: self.row_sums };
        (epi, args)
    }
}
