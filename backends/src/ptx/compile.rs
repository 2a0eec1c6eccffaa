//! The PTX backend's entry point: a kernel plan -> a [`Program`] (one PTX
//! module and the ordered launches that run the plan).
//!
//! [`compile_program`] walks the plan's kernels in order and hands each to
//! the emitter of its kind (`kinds/`); every emitter produces one or more
//! launches of entries in the one module, and the plan comes back with each
//! kernel's launch geometry filled in (its main launch). Kernels identical up
//! to their name share one entry ([`Ctx::add_kernel`]), so the layers of a
//! model reuse their kernels.
//!
//! ## Scalar code generation (`crate::scalar`, lowered by `pointwise/`)
//! Every kind computes the kernel plan's element-wise work through one
//! demand-driven generator (the scalar IR the CPU JIT lowers too): the value of an IR node at a multi-index is an
//! expression built recursively through the kernel's ops down to loads of its
//! inputs (index algebra per op: broadcast, reshape, permute, index/unindex,
//! shift, rope, bigram hash, gather), hash-consed and simplified on
//! construction; reductions are expressions too. The lowering emits each
//! expression once per binding of its free variables, hoists loop
//! invariants, and makes reductions warp-cooperative where the warp agrees
//! on the row.
//!
//! ## Kernels per kind (256-thread blocks unless said)
//! * element-wise, gather, weight preparation and the rest of the fused kinds:
//!   one launch of grid-stride sections ([`kinds::fused`]): 4 (or 2)
//!   consecutive elements per thread with vector loads/stores; row-wise work
//!   (norms, fake quantization, cross entropy) one warp per row, each row
//!   reduction a pass of lanes over the row (4 consecutive elements per step)
//!   and a butterfly shuffle, then a lane-strided pass storing the row's
//!   elements (outputs of shape `[..., 1]` once per row by lane 0);
//!   reductions over leading axes one thread per (output element, chunk of
//!   the reduced range) with `red.global.add.f32` into a zero-filled output;
//!   few long rows split over several warps likewise; scatter-add one thread
//!   per element of the gradient, `red.global.add.f32` into the zero-filled table.
//! * GEMM: the GEMM emitter's tiles ([`super::gemm`]), the plan's epilogue ops
//!   as a pointwise program at each output element, the rms-norm prologue as a
//!   row scale; bf16 GEMMs convert f32 operands while loading.
//! * LM head: with a softcap bounding the logits, the GEMM with the softcap,
//!   per-row sums for the log-sum-exp and the cross entropy in its epilogue,
//!   a row pass for the loss, and the GEMM again with the logits gradient in
//!   its epilogue ([`kinds::lm_head`]); otherwise the logits GEMM into f32
//!   scratch, then a row-wise launch one warp per row.
//! * attention: the flash-attention emitters ([`super::attention`]).

use super::builder::{Kernel, Module};
use super::kinds;
use super::pointwise::BufArg;
use super::program::{ArgRef, AuxBuffer, LaunchStep, Program, ZeroRef};
use pgc_ir::plan::{FusionRule, KernelKind, Launch, Plan};
use pgc_ir::Graph;
use std::collections::{BTreeSet, HashMap, HashSet};

#[derive(Debug, thiserror::Error)]
pub enum PtxError {
    /// Something the emitters do not handle (a shape, an op in a place, a kind).
    #[error("{0}")]
    Unsupported(String),
    #[error("plan kernel `{kernel}` ({kind}): {msg}")]
    Kernel { kernel: String, kind: &'static str, msg: String },
    #[error(transparent)]
    Gemm(#[from] super::gemm::GemmError),
    #[error(transparent)]
    Attention(#[from] super::attention::AttnError),
}

impl From<crate::scalar::ScalarError> for PtxError {
    fn from(e: crate::scalar::ScalarError) -> Self {
        match e {
            crate::scalar::ScalarError::Unsupported(m) => PtxError::Unsupported(m),
        }
    }
}

/// The fusion rules the emitters implement; plans for this backend should be
/// built with only these.
///
/// `lm-head-cross-entropy` is emitted as GEMM epilogues (see
/// [`super::kinds::lm_head`]): the logits are not stored unless asked.
///
/// Missing:
/// * `qk-prologue-into-attention`: the q/k prologue would run as a row-wise
///   launch into scratch before the attention launch (no bytes saved); with the
///   rule off it is an ordinary row-wise kernel.
pub fn supported_rules() -> BTreeSet<FusionRule> {
    [
        FusionRule::Elementwise,
        FusionRule::Rowwise,
        FusionRule::GemmEpilogue,
        FusionRule::RmsnormIntoGemm,
        FusionRule::LmHeadCrossEntropy,
        FusionRule::AttentionBackwardTogether,
        FusionRule::RecomputeElementwise,
    ]
        .into_iter()
        .collect()
}

/// State shared by the emitters while compiling one plan.
pub struct Ctx<'a> {
    pub g: &'a Graph,
    pub plan: &'a Plan,
    pub module: Module,
    pub launches: Vec<LaunchStep>,
    pub aux: Vec<AuxBuffer>,
    /// The plan kernel being compiled.
    pub kernel: usize,
    /// Attention forward node -> (aux buffer of its log-sum-exp rows, its
    /// output, the output's element type), for the backward.
    pub lse: HashMap<usize, (usize, ArgRef, super::epilogue::ElemType)>,
    names: HashSet<String>,
    /// Kernel text (with its name blanked) -> the entry already in the module.
    bodies: HashMap<String, String>,
}

impl<'a> Ctx<'a> {
    pub fn new(g: &'a Graph, plan: &'a Plan) -> Self {
        Ctx {
            g,
            plan,
            module: Module::new(),
            launches: Vec::new(),
            aux: Vec::new(),
            kernel: 0,
            lse: HashMap::new(),
            names: HashSet::new(),
            bodies: HashMap::new(),
        }
    }

    /// A rotary table (one per distinct shape and base).
    pub fn rope_aux(&mut self, positions: usize, half: usize, base: f64) -> usize {
        let want = AuxBuffer::RopeTable { positions, half, base };
        if let Some(i) = self.aux.iter().position(|a| *a == want) {
            return i;
        }
        self.aux.push(want);
        self.aux.len() - 1
    }

    /// A scratch buffer of `bytes` (at least 4).
    pub fn scratch(&mut self, bytes: u64) -> usize {
        self.aux.push(AuxBuffer::Scratch { bytes: bytes.max(4).next_multiple_of(16) });
        self.aux.len() - 1
    }

    pub fn resolve(&mut self, a: &BufArg) -> ArgRef {
        match a {
            BufArg::Ref(r) => r.clone(),
            BufArg::Rope { positions, half, base } => ArgRef::Aux(self.rope_aux(*positions, *half, *base)),
        }
    }

    /// An entry name derived from `base`, unique in the module.
    pub fn unique_name(&mut self, base: &str) -> String {
        let clean: String = base.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
        let mut name = clean.clone();
        let mut i = 1;
        while !self.names.insert(name.clone()) {
            name = format!("{clean}_{i}");
            i += 1;
        }
        name
    }

    /// Add a kernel to the module unless an identical one (up to its name) is
    /// there already; returns the entry to launch. Layers of the same shape
    /// share their kernels this way.
    pub fn add_kernel(&mut self, k: Kernel) -> String {
        let mut m = Module::new();
        m.push(k.clone());
        let key = m.render().replace(&k.name, "\u{1}");
        if let Some(e) = self.bodies.get(&key) {
            return e.clone();
        }
        self.bodies.insert(key, k.name.clone());
        let name = k.name.clone();
        self.module.push(k);
        name
    }

    /// Append a launch of `entry` for the current plan kernel.
    pub fn launch(&mut self, entry: &str, l: Launch, args: Vec<ArgRef>, zero_first: Vec<ZeroRef>) {
        self.launches.push(LaunchStep {
            plan_kernel: self.kernel,
            entry: entry.to_string(),
            grid: l.grid,
            block: l.block,
            shared_bytes: l.shared_bytes,
            args,
            zero_first,
        });
    }
}

fn check_sizes(g: &Graph) -> Result<(), PtxError> {
    for (i, n) in g.nodes.iter().enumerate() {
        if n.ty.numel() >= (1usize << 31) {
            return Err(PtxError::Unsupported(format!("%{i} has {} elements; kernels index with 32-bit integers (at most 2^31 - 1)", n.ty.numel())));
        }
    }
    Ok(())
}

/// Compile a kernel plan of `g` to a PTX program.
pub fn compile_program(g: &Graph, plan: &Plan) -> Result<Program, PtxError> {
    if plan.values.len() != g.nodes.len() {
        return Err(PtxError::Unsupported(format!("the plan places {} values but the graph has {} nodes", plan.values.len(), g.nodes.len())));
    }
    check_sizes(g)?;
    let mut cx = Ctx::new(g, plan);
    let mut geo: Vec<Option<Launch>> = Vec::with_capacity(plan.kernels.len());
    for (ki, k) in plan.kernels.iter().enumerate() {
        cx.kernel = ki;
        let r = match k.kind {
            KernelKind::Gemm | KernelKind::LmHead => kinds::gemm::emit_kernel(&mut cx, ki),
            KernelKind::Attention | KernelKind::AttentionBackward => kinds::attention::emit_kernel(&mut cx, ki),
            KernelKind::Elementwise
            | KernelKind::RowWise
            | KernelKind::Reduce
            | KernelKind::Gather
            | KernelKind::Scatter
            | KernelKind::WeightPrep
            | KernelKind::CrossEntropy => kinds::fused::emit_kernel(&mut cx, ki),
        };
        let l = r.map_err(|e| PtxError::Kernel { kernel: k.name.clone(), kind: k.kind.name(), msg: e.to_string() })?;
        geo.push(Some(l));
    }
    let mut plan = plan.clone();
    for (k, l) in plan.kernels.iter_mut().zip(geo) {
        k.launch = l;
    }
    Ok(Program { plan, ptx: cx.module.render(), launches: cx.launches, aux: cx.aux })
}
