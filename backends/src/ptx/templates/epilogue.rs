//! GEMM epilogues as data.
//!
//! An [`Epilogue`] is a list of [`EpiStep`]s applied in order to each f32
//! accumulator value `v` at output position `(row, col)` of the `[M, N]`
//! result, followed by the store of `v` to the output in `out` precision
//! (unless a pointwise step stores the outputs itself). The steps are plain
//! serializable values; the GEMM emitters turn them into PTX.
//!
//! Every buffer a step names becomes one `.u64` kernel parameter (in step
//! order, after the GEMM's own parameters).
//!
//! The two steps:
//! * RMS-norm row scale: `[RowScale { param: "rstd" }]` (`out = acc * rstd[row]`;
//!   linear, so allowed under split-K)
//! * anything element-wise: `[Pointwise(program)]` ([`PwEpilogue`]: a scalar
//!   program over `row`, `col` and the accumulator that stores every output
//!   itself; the kernel plan's fused epilogue ops compile to one), e.g. relu²
//!   with its pre-activation, a residual add, a bias

use crate::ptx::builder::*;
use crate::ptx::pointwise::epi::{PwEpilogue, PwLower};
use serde::{Deserialize, Serialize};
pub use pgc_ir::types::DType;

/// log2 of an element's bytes (address shifts).
fn log2_bytes(d: DType) -> u32 {
    d.bytes().trailing_zeros()
}

/// One step of an epilogue, applied to the value `v` of one output element.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum EpiStep {
    /// `v *= param[row]` (f32 vector of length M), e.g. the RMS-norm `1/rms` of the input row.
    RowScale { param: String },
    /// Run a scalar program at `(row, col)` with the accumulator `v` (see
    /// [`PwEpilogue`]); it stores every output itself, so it must be the last
    /// step and the main output `c` is not written.
    Pointwise(Box<PwEpilogue>),
}

impl EpiStep {
    /// Every kernel parameter this step adds, in order.
    pub fn params(&self) -> Vec<&str> {
        match self {
            EpiStep::RowScale { param } => vec![param],
            EpiStep::Pointwise(p) => p.params.iter().map(|s| s.as_str()).collect(),
        }
    }
    fn is_row(&self) -> bool {
        matches!(self, EpiStep::RowScale { .. })
    }
    /// Whether the step is linear in `v` with no side effects (allowed under split-K,
    /// where each split applies the epilogue to its partial sum).
    pub fn is_linear(&self) -> bool {
        matches!(self, EpiStep::RowScale { .. })
    }
}

/// A GEMM epilogue: steps, then the store of the result in `out` precision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Epilogue {
    pub steps: Vec<EpiStep>,
    pub out: DType,
}

impl Epilogue {
    /// Store the accumulator as is.
    pub fn store(out: DType) -> Self {
        Epilogue { steps: vec![], out }
    }
    /// `out = acc * r[row]` (RMS-norm row scale).
    pub fn row_scale(param: &str, out: DType) -> Self {
        Epilogue { steps: vec![EpiStep::RowScale { param: param.into() }], out }
    }

    /// The extra kernel parameters, in order.
    pub fn params(&self) -> Vec<String> {
        self.steps.iter().flat_map(|s| s.params()).map(|p| p.to_string()).collect()
    }

    /// A short tag for kernel names.
    pub fn tag(&self) -> String {
        let mut t = String::new();
        let dt = |d: &DType| match d {
            DType::F32 => "f",
            DType::Bf16 => "h",
            DType::I32 => "i",
        };
        for s in &self.steps {
            t.push_str(match s {
                EpiStep::RowScale { .. } => "r",
                EpiStep::Pointwise(_) => "p",
            });
        }
        t.push('_');
        t.push_str(dt(&self.out));
        t
    }

    pub fn validate(&self, reserved: &[&str]) -> Result<(), String> {
        if self.out == DType::I32 {
            return Err("epilogue tensors are f32 or bf16, not i32".into());
        }
        let mut seen: Vec<&str> = reserved.to_vec();
        if let Some(i) = self.steps.iter().position(|s| matches!(s, EpiStep::Pointwise(_))) {
            if i + 1 != self.steps.len() {
                return Err("a pointwise step must be the last step of an epilogue".into());
            }
        }
        for s in &self.steps {
            for p in s.params() {
                if p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("epilogue parameter name `{p}` is not an identifier"));
                }
                if seen.contains(&p) {
                    return Err(format!("epilogue parameter `{p}` appears twice"));
                }
                seen.push(p);
            }
        }
        Ok(())
    }
}

/// Registers the epilogue code needs: pointers per step, the output, M and N.
pub(crate) struct EpiRegs<'a> {
    ptrs: Vec<Vec<Reg>>,
    out: Reg,
    n: Reg,
    /// Accumulate into the output with `red.global.add.f32` (split-K).
    atomic_out: bool,
    /// The lowering state of a final pointwise step.
    pw: Option<PwLower<'a>>,
}

/// Declare the epilogue's parameters (after the GEMM's) and return their handles.
pub(crate) fn declare_params(b: &mut KernelBuilder, epi: &Epilogue) -> Vec<Vec<Param>> {
    epi.steps.iter().map(|s| s.params().into_iter().map(|p| b.param(p, ParamType::U64)).collect()).collect()
}

/// Load the epilogue's pointers (plus their byte `offsets`, a batched GEMM's).
#[allow(clippy::too_many_arguments)]
pub(crate) fn setup<'a>(b: &mut KernelBuilder, epi: &'a Epilogue, params: &[Vec<Param>], offsets: Option<&[Vec<Reg>]>, out: Reg, m: Reg, n: Reg, atomic_out: bool) -> EpiRegs<'a> {
    let ptrs: Vec<Vec<Reg>> = params
        .iter()
        .enumerate()
        .map(|(i, ps)| {
            ps.iter()
                .enumerate()
                .map(|(j, p)| {
                    let r = b.ld_param_global_ptr(p);
                    match offsets {
                        Some(o) => b.add_u64(r, o[i][j]),
                        None => r,
                    }
                })
                .collect()
        })
        .collect();
    let pw = match epi.steps.last() {
        Some(EpiStep::Pointwise(p)) => Some(PwLower::new(b, p, ptrs.last().unwrap(), m, n)),
        _ => None,
    };
    EpiRegs { ptrs, out, n, atomic_out, pw }
}

fn guarded_load_f32(b: &mut KernelBuilder, ok: Reg, addr: Addr) -> Reg {
    let v = b.val(Type::F32, 0.0f32);
    b.guarded(ok, false, |b| b.ld_vec(Space::Global, true, Type::F32, &[v], addr));
    v
}

/// Per-row values (one register per row-indexed step, `None` for others).
pub(crate) fn load_row_vals(b: &mut KernelBuilder, epi: &Epilogue, r: &EpiRegs, row: Reg, ok: Reg) -> Vec<Option<Reg>> {
    epi.steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if !s.is_row() {
                return None;
            }
            let off = b.mul_wide_u32(row, 4u32);
            let a = b.add_u64(r.ptrs[i][0], off);
            Some(guarded_load_f32(b, ok, Addr::reg(a)))
        })
        .collect()
}

/// A group of 1 or 2 output elements in one row at adjacent columns.
/// `vector`: the group is accessed with one vector access under `preds[0]`
/// (the caller guarantees both columns are in bounds together and the
/// address is aligned); otherwise element `j` is accessed under `preds[j]`.
pub(crate) struct Group<'a> {
    /// Element index `row * N + col` of the first element (`.b64`).
    pub idx: Reg,
    /// Row and column of the first element.
    pub row: Reg,
    pub col: Reg,
    pub preds: &'a [Reg],
    pub vector: bool,
    /// Row values (from [`load_row_vals`]).
    pub row_vals: &'a [Option<Reg>],
}

fn elem_addr(b: &mut KernelBuilder, ptr: Reg, idx: Reg, dt: DType) -> Addr {
    let off = b.bin(BinOp::Shl, Type::U64, idx, log2_bytes(dt));
    Addr::reg(b.add_u64(ptr, off))
}

fn store_tensor(b: &mut KernelBuilder, ptr: Reg, dt: DType, g: &Group, vals: &[Reg]) {
    let addr = elem_addr(b, ptr, g.idx, dt);
    let n = vals.len();
    match dt {
        DType::I32 => unreachable!("validate() rejects i32 tensors here"),
        DType::F32 => {
            if g.vector {
                let src: Vec<Operand> = vals.iter().map(|&v| v.into()).collect();
                b.guarded(g.preds[0], false, |b| b.st_vec(Space::Global, Type::F32, addr, src));
            } else {
                for j in 0..n {
                    let a = addr.plus(4 * j as i64);
                    b.guarded(g.preds[j], false, |b| b.st(Space::Global, Type::F32, a, vals[j]));
                }
            }
        }
        DType::Bf16 => {
            if g.vector && n == 2 {
                let packed = b.pack_bf16x2(vals[1], vals[0]);
                b.guarded(g.preds[0], false, |b| b.st(Space::Global, Type::B32, addr, packed));
            } else {
                for j in 0..n {
                    let h = b.cvt(Type::Bf16, Type::F32, Some(Rnd::Rn), vals[j]);
                    let a = addr.plus(2 * j as i64);
                    let p = if g.vector { g.preds[0] } else { g.preds[j] };
                    b.guarded(p, false, |b| b.st(Space::Global, Type::B16, a, h));
                }
            }
        }
    }
}

/// Apply the epilogue to the group's values and store them.
pub(crate) fn emit_group(b: &mut KernelBuilder, epi: &Epilogue, r: &mut EpiRegs, g: &Group, acc: &[Reg]) {
    let n = acc.len();
    assert!(n == 1 || n == 2);
    let mut v: Vec<Reg> = acc.to_vec();
    for (i, s) in epi.steps.iter().enumerate() {
        match s {
            EpiStep::RowScale { .. } => {
                let rv = g.row_vals[i].unwrap();
                for x in v.iter_mut() {
                    *x = b.bin(BinOp::Mul, Type::F32, *x, rv);
                }
            }
            EpiStep::Pointwise(_) => {
                let pw = r.pw.as_mut().expect("pointwise state");
                for (j, x) in v.iter().enumerate() {
                    let p = if g.vector { g.preds[0] } else { g.preds[j] };
                    pw.element(b, g.row, g.col, j as u32, *x, p);
                }
                return;
            }
        }
    }
    if r.atomic_out {
        assert_eq!(epi.out, DType::F32);
        let addr = elem_addr(b, r.out, g.idx, DType::F32);
        for (j, x) in v.iter().enumerate() {
            let p = if g.vector { g.preds[0] } else { g.preds[j] };
            b.guarded(p, false, |b| b.red_add(Space::Global, Type::F32, addr.plus(4 * j as i64), *x));
        }
    } else {
        store_tensor(b, r.out, epi.out, g, &v);
    }
}

/// After the last group of `row` in this thread: the pointwise step's row
/// sums, combined over the lanes `lane ^ x` (`x` in `lanes`) and added by
/// `leader` (see [`PwLower::finish_row`]). Every lane of the warp calls it.
pub(crate) fn finish_row(b: &mut KernelBuilder, r: &mut EpiRegs, row: Reg, row_ok: Reg, lanes: &[u32], leader: Reg) {
    if let Some(pw) = r.pw.as_mut().filter(|pw| pw.has_row_sums()) {
        pw.finish_row(b, row, row_ok, lanes, leader);
    }
}

impl EpiRegs<'_> {
    /// Whether the epilogue sums values per row (see [`finish_row`]).
    pub(crate) fn has_row_sums(&self) -> bool {
        self.pw.as_ref().is_some_and(|pw| pw.has_row_sums())
    }
}

/// `row * N + col` as a 64-bit element index.
pub(crate) fn elem_index(b: &mut KernelBuilder, r: &EpiRegs<'_>, row: Reg, col: Reg) -> Reg {
    let c = b.cvt(Type::U64, Type::U32, None, col);
    let rn = b.mul_wide_u32(row, r.n);
    b.add_u64(rn, c)
}
