//! A compiled program: the PTX module of a kernel plan as structured data
//! (each entry's name, parameter signature and text, from the builder) and
//! the launches that run it, in order, each with its geometry. This is what
//! the PTX backend hands to the runtime: the executor resolves every
//! [`ArgRef`] to a device pointer or scalar and launches each [`LaunchStep`]
//! on a `Device` (the simulator or CUDA); nothing reads the PTX text back.
//!
//! One plan kernel becomes one or more launches (e.g. a zero-fill before an
//! atomically accumulated output, or a split-K GEMM's partial passes).

use super::builder::{Module, Param};
use pgc_ir::plan::Plan;
use pgc_ir::{ParamId, ValueId};
use serde::{Deserialize, Serialize};

/// Launch geometry of one entry's launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

/// What a kernel argument refers to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arg", rename_all = "snake_case")]
pub enum ArgRef {
    /// Pointer to a value where the plan stores it: its arena slot, the bf16
    /// copy of a prepared parameter, or a run-time input's buffer.
    Value(ValueId),
    /// Pointer to a parameter's fp32 master copy.
    ParamMaster(ParamId),
    /// Pointer to auxiliary buffer `index` of [`Program::aux`].
    Aux(usize),
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
    /// A TMA tensor map (128 bytes by value) over the bf16 matrix `of` points
    /// at: `rows x cols` row-major (`cols` contiguous), moved in boxes of
    /// `box_rows x box_cols` with the 128-byte swizzle (the wgmma GEMMs' A and B).
    TensorMap { of: Box<ArgRef>, rows: u32, cols: u32, box_rows: u32, box_cols: u32 },
}


impl ArgRef {
    /// The buffer the argument points at: itself for a pointer, the matrix
    /// of a tensor map, `None` for a scalar.
    pub fn pointer(&self) -> Option<&ArgRef> {
        match self {
            ArgRef::Value(_) | ArgRef::ParamMaster(_) | ArgRef::Aux(_) => Some(self),
            ArgRef::TensorMap { of, .. } => of.pointer(),
            ArgRef::U32(_) | ArgRef::I32(_) | ArgRef::U64(_) | ArgRef::F32(_) => None,
        }
    }
}

/// A buffer the program needs besides the plan's values: constant tables
/// the executor computes on the host, or scratch that lives as long as the program.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuxBuffer {
    /// Rotary tables, f32: `cos[t, j]` for t < positions, j < half, followed by
    /// `sin[t, j]`; angle `t * base^(-2j / (2 * half))` computed in f64 on the host.
    RopeTable { positions: usize, half: usize, base: f64 },
    /// Uninitialised device memory of `bytes` (e.g. attention log-sum-exp rows
    /// written by a forward kernel and read by its backward).
    Scratch { bytes: u64 },
}

/// Where a zero-fill writes before a launch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "at", rename_all = "snake_case")]
pub enum ZeroRef {
    Value(ValueId),
    Aux(usize),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaunchStep {
    /// Index of the plan kernel this launch belongs to.
    pub plan_kernel: usize,
    /// The `.entry` name in the module.
    pub entry: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Dynamic shared memory (the executor raises the kernel's limit above 48 KiB).
    pub shared_bytes: u32,
    pub args: Vec<ArgRef>,
    /// Buffers set to zero before this launch (outputs accumulated with atomics).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zero_first: Vec<ZeroRef>,
}

/// One `.entry` of the module.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    /// The parameters in order (what a launch's arguments must match).
    pub params: Vec<Param>,
    /// `.maxntid`, when the kernel declares it: launches use at most this many threads per block.
    pub max_threads: Option<u32>,
    /// The entry's text after its name (parameter list, directives, body):
    /// the same for kernels identical up to their names.
    pub code: String,
}

/// The entries of a builder module, as data.
pub fn entries_of(module: &Module) -> Vec<Entry> {
    module.kernels.iter().map(|k| Entry { name: k.name.clone(), params: k.params.clone(), max_threads: k.max_threads, code: k.code() }).collect()
}

impl Entry {
    /// The instructions the entry's matrix products use: `"wgmma"`,
    /// `"mma.sync"`, `"ffma"` (an f32 FMA kernel), `None` without products.
    pub fn product_path(&self) -> Option<&'static str> {
        if self.code.contains("wgmma.mma_async") {
            Some("wgmma")
        } else if self.code.contains("mma.sync") {
            Some("mma.sync")
        } else {
            None
        }
    }

    /// The entry's PTX text.
    pub fn text(&self) -> String {
        format!(".visible .entry {}{}", self.name, self.code)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Program {
    /// The plan as the planner made it (launch geometry lives in `launches`).
    pub plan: Plan,
    /// The module's text before its entries (version, target, module-scope declarations).
    pub header: String,
    /// Every entry any launch uses, in module order.
    pub entries: Vec<Entry>,
    pub launches: Vec<LaunchStep>,
    pub aux: Vec<AuxBuffer>,
}

impl Program {
    /// A program of `module`'s kernels.
    pub fn new(plan: Plan, module: &Module, launches: Vec<LaunchStep>, aux: Vec<AuxBuffer>) -> Program {
        Program { plan, header: module.header(), entries: entries_of(module), launches, aux }
    }

    /// The whole PTX module.
    pub fn ptx(&self) -> String {
        self.module_of(0..self.entries.len())
    }

    /// A module of the header and the entries at `indices` (in that order).
    pub fn module_of(&self, indices: impl IntoIterator<Item = usize>) -> String {
        let mut out = self.header.clone();
        for i in indices {
            out.push_str(&self.entries[i].text());
            out.push('\n');
        }
        out
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }
}
