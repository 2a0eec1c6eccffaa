//! The state and error type every plan adapter shares while one plan is
//! compiled: the module being built, the launches so far, auxiliary
//! buffers, and entry deduplication. [`super::compile`] drives the adapters
//! with it; the adapters (`adapters/`) call the templates (`templates/`).

use super::builder::{Kernel, Module};
use super::pointwise::BufArg;
use super::program::{ArgRef, AuxBuffer, Launch, LaunchStep, ZeroRef};
use super::templates::epilogue::DType;
use super::templates::gemm::GemmPath;
use pgc_ir::plan::Plan;
use pgc_ir::Graph;
use std::collections::{HashMap, HashSet};

#[derive(Debug, thiserror::Error)]
pub enum PtxError {
    /// Something the emitters do not handle (a shape, an op in a place, a kind).
    #[error("{0}")]
    Unsupported(String),
    #[error("plan kernel `{kernel}` ({kind}): {msg}")]
    Kernel { kernel: String, kind: &'static str, msg: String },
    #[error(transparent)]
    Gemm(#[from] super::templates::gemm::GemmError),
    #[error(transparent)]
    Attention(#[from] super::templates::attention::AttnError),
}

impl From<crate::scalar::ScalarError> for PtxError {
    fn from(e: crate::scalar::ScalarError) -> Self {
        match e {
            crate::scalar::ScalarError::Unsupported(m) => PtxError::Unsupported(m),
        }
    }
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
    pub lse: HashMap<usize, (usize, ArgRef, DType)>,
    names: HashSet<String>,
    /// Kernel code (its text less its name) -> the entry already in the module.
    bodies: HashMap<String, String>,
    /// The bf16 GEMMs' path where their shapes allow it
    /// ([`super::templates::gemm::GemmConfig::wgmma_allowed`]; mma.sync elsewhere).
    pub gemm_path: GemmPath,
    /// The attention forward's path where it applies (bf16, head dim 64): wgmma or mma.sync.
    pub attention_path: GemmPath,
    /// Persistent wgmma GEMM launches (see `compile::PtxOptions::persistent`).
    pub persistent: bool,
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
            gemm_path: GemmPath::Wgmma,
            attention_path: GemmPath::Wgmma,
            persistent: true,
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
        // The entry's code does not mention its name; the dynamic shared
        // array is declared at module scope, so it is part of the identity.
        let key = format!("{:?}{}", k.extern_shared, k.code());
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

