//! A compiled program: the PTX module of a kernel plan and the launches that
//! run it, in order. This is what the PTX backend hands to the runtime: the
//! executor (runtime) resolves every [`ArgRef`] to a device pointer or scalar
//! and launches each [`LaunchStep`] on a `Device` (the simulator or CUDA).
//!
//! One plan kernel becomes one or more launches (e.g. a zero-fill before an
//! atomically accumulated output, or a split-K GEMM's partial passes).

use pgc_ir::plan::Plan;
use pgc_ir::ValueId;
use serde::{Deserialize, Serialize};

/// What a kernel argument refers to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arg", rename_all = "snake_case")]
pub enum ArgRef {
    /// Pointer to a value where the plan stores it: its arena slot, the bf16
    /// copy of a prepared parameter, or a run-time input's buffer.
    Value(ValueId),
    /// Pointer to a parameter's fp32 master copy.
    ParamMaster(String),
    /// Pointer to auxiliary buffer `index` of [`Program::aux`].
    Aux(usize),
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Program {
    /// The plan, with each kernel's launch geometry filled in.
    pub plan: Plan,
    /// The whole PTX module (every entry of every launch).
    pub ptx: String,
    pub launches: Vec<LaunchStep>,
    pub aux: Vec<AuxBuffer>,
}
