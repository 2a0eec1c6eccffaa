//! The kernel plan: the graph partitioned into fused kernels (the fusion
//! rules in [`rules`]), each with its kind, the IR ops it covers, what it
//! reads and writes, its FLOPs and fewest bytes; and the memory plan that
//! places every stored value in one activation arena with reuse. [`text`]
//! prints a plan for people and the `tests/ir` file tests.
//!
//! The plan is a value beside the graph (the algorithm/schedule split): the
//! graph says what is computed, the plan how it is grouped and stored.
//! Backends emit one kernel per plan entry and fill in its launch geometry.

pub mod classify;
pub mod dot;
mod fuse;
pub mod memory;
pub mod rules;
pub mod text;

pub use classify::KernelKind;
pub use rules::FusionRule;

use crate::op::{Op, ParamId};
pub use crate::types::DType;
use crate::{Graph, Mode, ValueId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};

/// Name of the pass, for dumps.
pub const NAME: &str = "fusion";

pub use crate::types::Precision;

#[derive(Clone, Debug)]
pub struct PlanOptions {
    pub precision: Precision,
    pub rules: BTreeSet<FusionRule>,
    /// Graph outputs the plan must store (others, e.g. `logits` during
    /// training, are computed only as far as other outputs need them).
    pub outputs: Vec<String>,
}

impl PlanOptions {
    /// Every rule on, every graph output stored.
    pub fn all(g: &Graph, precision: Precision) -> Self {
        PlanOptions { precision, rules: FusionRule::ALL.into_iter().collect(), outputs: g.outputs.iter().map(|(n, _)| n.clone()).collect() }
    }
}


/// Where a value lives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "at", rename_all = "snake_case")]
pub enum Place {
    /// A run-time input (tokens).
    Input { name: String },
    /// A parameter's fp32 master. `prepared` is the arena slot of its bf16 copy
    /// when tensor cores read it.
    Param { id: ParamId, prepared: Option<Slot> },
    /// An immediate constant.
    Scalar { value: f64 },
    /// Written by a kernel to the arena.
    Arena(Slot),
    /// Computed inside its kernel and never stored.
    Fused,
    /// Computed by no kernel: nothing stored depends on it.
    Dead,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    pub offset: u64,
    pub bytes: u64,
    pub storage: DType,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kernel {
    pub name: String,
    pub kind: KernelKind,
    /// IR nodes computed by this kernel, in topological order.
    pub ops: Vec<ValueId>,
    /// Nodes recomputed here from stored inputs (e.g. `rms(x)` rows in a GEMM).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prologue: Vec<ValueId>,
    /// Values read from memory (arena, parameters, inputs).
    pub inputs: Vec<ValueId>,
    /// Values written to memory.
    pub outputs: Vec<ValueId>,
    /// Fusion rules that shaped this kernel.
    pub rules: Vec<FusionRule>,
    /// u128: exact for any shape the frontend accepts.
    pub flops: u128,
    /// Each input read once and each output written once, at its storage width.
    pub min_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub mode: Mode,
    pub precision: Precision,
    pub rules: Vec<FusionRule>,
    pub kernels: Vec<Kernel>,
    /// One entry per graph node.
    pub values: Vec<Place>,
    /// Size of the activation arena: the peak activation memory.
    pub arena_bytes: u64,
    pub flops: u128,
    pub min_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("plan: no graph output named `{0}`")]
    UnknownOutput(String),
}

/// Partition `g` into kernels and place every stored value.
pub fn build(g: &Graph, opts: &PlanOptions) -> Result<Plan, PlanError> {
    let mut requested = HashSet::new();
    for name in &opts.outputs {
        requested.insert(g.output(name).ok_or_else(|| PlanError::UnknownOutput(name.clone()))?.index());
    }
    // Only what a requested output needs is planned.
    let n = g.nodes.len();
    let mut live = vec![false; n];
    for &r in &requested {
        live[r] = true;
    }
    for i in (0..n).rev() {
        if live[i] {
            for a in &g.nodes[i].args {
                live[a.index()] = true;
            }
        }
    }
    let groups: Vec<_> = fuse::partition(g, opts.precision, &opts.rules, &requested, &live)
        .into_iter()
        .filter_map(|mut gr| {
            gr.nodes.retain(|&m| live[m]);
            (!gr.nodes.is_empty()).then_some(gr)
        })
        .collect();

    let mut owner = vec![usize::MAX; n];
    for (k, gr) in groups.iter().enumerate() {
        for &m in &gr.nodes {
            owner[m] = k;
        }
    }
    let mut kernels = Vec::with_capacity(groups.len());
    // Kernels reading each value, for lifetimes and storage.
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (k, gr) in groups.iter().enumerate() {
        let inside: HashSet<usize> = gr.nodes.iter().chain(&gr.prologue).copied().collect();
        let mut inputs = BTreeSet::new();
        // The attention backward also reads the forward's output (FlashAttention's
        // D = rowsum(dO * O)), so that output stays stored until then.
        if gr.kind == KernelKind::AttentionBackward {
            for &m in &gr.nodes {
                let fwd = (0..n).find(|&f| matches!(g.nodes[f].op, Op::CausalAttention { .. }) && g.nodes[f].args[..] == g.nodes[m].args[..3]);
                if let Some(f) = fwd.filter(|&f| live[f] && !inside_of(&gr.nodes, f)) {
                    inputs.insert(f);
                }
            }
        }
        for &m in gr.nodes.iter().chain(&gr.prologue) {
            for a in &g.nodes[m].args {
                let a = a.index();
                if !inside.contains(&a) && !matches!(g.nodes[a].op, Op::Scalar { .. }) {
                    inputs.insert(a);
                }
            }
        }
        for &v in &inputs {
            readers[v].push(k);
        }
        kernels.push(Kernel {
            name: kernel_name(g, k, gr.kind, &gr.nodes),
            kind: gr.kind,
            ops: gr.nodes.iter().map(|&m| ValueId(m as u32)).collect(),
            prologue: gr.prologue.iter().map(|&m| ValueId(m as u32)).collect(),
            inputs: inputs.iter().map(|&m| ValueId(m as u32)).collect(),
            outputs: Vec::new(),
            rules: gr.rules.iter().copied().collect(),
            flops: 0,
            min_bytes: 0,
        });
    }
    // A kernel's outputs: its values read by other kernels or requested.
    for (k, gr) in groups.iter().enumerate() {
        let outs: Vec<ValueId> = gr
            .nodes
            .iter()
            .copied()
            .filter(|&m| requested.contains(&m) || readers[m].iter().any(|&r| r != k))
            // A fake-quantized weight's master is read, not copied: the kernel stores the fake-quant.
            .filter(|&m| {
                !(gr.kind == KernelKind::WeightPrep
                    && matches!(g.nodes[m].op, Op::Param { .. })
                    && gr.nodes.iter().any(|&f| matches!(g.nodes[f].op, Op::FakeQuant { .. }) && g.nodes[f].args[0].index() == m))
            })
            .map(|m| ValueId(m as u32))
            .collect();
        kernels[k].outputs = outs;
    }

    // Storage: bf16 for values only tensor cores read, directly or through
    // reshapes and permutes (precision policy: the attention output before
    // its head merge), else f32; i32 for ids. Graph outputs are always f32.
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in g.nodes.iter().enumerate().filter(|&(i, _)| live[i]) {
        for a in &node.args {
            users[a.index()].push(i);
        }
    }
    fn feeds_tensor_cores_only(g: &Graph, users: &[Vec<usize>], requested: &HashSet<usize>, m: usize) -> bool {
        !requested.contains(&m)
            && users[m].iter().all(|&u| {
                fuse::is_tensor_core_operand(g, u, m)
                    || (matches!(g.nodes[u].op, Op::Reshape { .. } | Op::Permute { .. }) && feeds_tensor_cores_only(g, users, requested, u))
            })
    }
    // With bf16-gemm-outputs, a GEMM kernel's product itself (not a sum its
    // epilogue forms) and the attention backward's dk, dv are stored in bf16
    // whoever reads them.
    let bf16_product = |m: usize| -> bool {
        opts.precision == Precision::Bf16
            && opts.rules.contains(&FusionRule::Bf16GemmOutputs)
            && !requested.contains(&m)
            && match g.nodes[m].op {
                Op::Linear | Op::MatMul => groups.get(owner[m]).is_some_and(|gr| gr.kind == KernelKind::Gemm),
                // dk and dv leave the attention backward's registers once; dq is accumulated atomically in f32.
                Op::CausalAttentionGrad { wrt, .. } => wrt != crate::op::AttnPart::Q,
                // Read only by reductions over leading axes (the rotated q the
                // q_gain gradient sums against dq), which accumulate in f32.
                _ => !readers[m].is_empty() && readers[m].iter().all(|&r| groups[r].kind == KernelKind::Reduce),
            }
    };
    let storage = |m: usize| -> DType {
        if g.nodes[m].ty.dtype == DType::I32 {
            return DType::I32;
        }
        let tensor_core_only = opts.precision == Precision::Bf16 && feeds_tensor_cores_only(g, &users, &requested, m);
        if tensor_core_only || bf16_product(m) {
            DType::Bf16
        } else {
            DType::F32
        }
    };
    let stored: Vec<(usize, usize)> =
        kernels.iter().enumerate().flat_map(|(k, kr)| kr.outputs.iter().map(move |v| (v.index(), k))).collect();
    // Values a backend accumulates atomically into a zero-filled slot
    // (the requested parameter gradients, sums over leading axes,
    // scatter-adds) live from
    // the first kernel: nothing else uses their memory before them, so their
    // zero-fills can all happen before the first launch.
    let grads: HashSet<usize> = opts.outputs.iter().filter(|n| n.starts_with("grad.")).filter_map(|n| g.output(n)).map(|v| v.index()).collect();
    let accumulated = |m: usize| -> bool { grads.contains(&m) || matches!(g.nodes[m].op, Op::SumTo { .. } | Op::Reduce { .. } | Op::ScatterAdd { .. }) };
    let lifetimes: Vec<memory::Lifetime> = stored
        .iter()
        .map(|&(m, k)| {
            let last = if requested.contains(&m) { kernels.len() } else { readers[m].iter().copied().max().unwrap_or(k) };
            let first = if accumulated(m) { 0 } else { k };
            memory::Lifetime { bytes: g.nodes[m].ty.numel() as u64 * u64::from(storage(m).bytes()), first, last }
        })
        .collect();
    let (offsets, arena_bytes) = memory::assign(&lifetimes);

    let mut values: Vec<Place> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(m, node)| match &node.op {
            Op::Input { name, .. } => Place::Input { name: name.clone() },
            Op::Param { id } => Place::Param { id: *id, prepared: None },
            Op::Scalar { value } => Place::Scalar { value: *value },
            _ if owner[m] != usize::MAX => Place::Fused,
            _ => Place::Dead,
        })
        .collect();
    for (i, &(m, _)) in stored.iter().enumerate() {
        let slot = Slot { offset: offsets[i], bytes: lifetimes[i].bytes, storage: storage(m) };
        values[m] = match &values[m] {
            Place::Param { id, .. } => Place::Param { id: *id, prepared: Some(slot) },
            _ => Place::Arena(slot),
        };
    }

    for (k, gr) in groups.iter().enumerate() {
        let kr = &mut kernels[k];
        kr.flops = gr.nodes.iter().map(|&m| node_cost_flops(g, m, gr.kind)).sum();
        let width = |v: &ValueId| -> u64 {
            let m = v.index();
            let numel = g.nodes[m].ty.numel() as u64;
            match &values[m] {
                Place::Arena(s) => s.bytes,
                // A weight preparation reads the fp32 master; others read the prepared copy if any.
                Place::Param { prepared: Some(s), .. } if kr.kind != KernelKind::WeightPrep => s.bytes,
                _ => numel * 4,
            }
        };
        kr.min_bytes = kr.inputs.iter().chain(&kr.outputs).map(width).sum();
        if kr.kind == KernelKind::WeightPrep {
            // A weight preparation reads the fp32 master of the parameter it
            // holds (not an input: the param node is its own op) and writes
            // the prepared copy at the copy's width; counting the output as
            // the master (4 bytes per element) left the write out.
            let numel = |v: &ValueId| g.nodes[v.index()].ty.numel() as u64;
            let masters: u64 = kr.ops.iter().filter(|v| matches!(g.nodes[v.index()].op, Op::Param { .. })).map(|v| numel(v) * 4).sum();
            let written: u64 = kr
                .outputs
                .iter()
                .map(|v| match &values[v.index()] {
                    Place::Arena(s) | Place::Param { prepared: Some(s), .. } => s.bytes,
                    _ => numel(v) * 4,
                })
                .sum();
            kr.min_bytes = kr.inputs.iter().map(width).sum::<u64>() + masters + written;
        }
    }
    let flops = kernels.iter().map(|k| k.flops).sum();
    let min_bytes = kernels.iter().map(|k| k.min_bytes).sum();
    Ok(Plan { mode: g.mode, precision: opts.precision, rules: opts.rules.iter().copied().collect(), kernels, values, arena_bytes, flops, min_bytes })
}

/// FLOPs of a node inside a kernel: matrix products and attention as in the
/// compile report; the attention backward once per kernel (five T x T
/// products, 2.5 times the forward); one FLOP per element for the rest.
fn node_cost_flops(g: &Graph, m: usize, kind: KernelKind) -> u128 {
    let node = &g.nodes[m];
    match &node.op {
        Op::Linear | Op::MatMul | Op::OuterSum | Op::CausalAttention { .. } => crate::report::node_flops(g, m),
        Op::CausalAttentionGrad { wrt, .. } => {
            let q = g.ty(node.args[0]);
            let (b, h, t, d) = (q.shape[0] as u128, q.shape[1] as u128, q.shape[2] as u128, q.shape[3] as u128);
            let fwd = 2 * b * h * t * t * d;
            let together = kind == KernelKind::AttentionBackward && matches!(wrt, crate::op::AttnPart::Q);
            if together || kind != KernelKind::AttentionBackward {
                fwd * 5 / 2
            } else {
                0
            }
        }
        Op::Input { .. } | Op::Param { .. } | Op::Scalar { .. } | Op::Reshape { .. } | Op::Permute { .. } => 0,
        _ => node.ty.numel().max(node.args.first().map(|a| g.ty(*a).numel()).unwrap_or(0)) as u128,
    }
}

fn inside_of(nodes: &[usize], m: usize) -> bool {
    nodes.binary_search(&m).is_ok()
}

fn kernel_name(g: &Graph, k: usize, kind: KernelKind, nodes: &[usize]) -> String {
    let anchor = nodes
        .iter()
        .find(|&&m| classify::initial_kind(g, m) == Some(kind))
        .or_else(|| nodes.first())
        .copied();
    let scope = anchor.and_then(|m| g.nodes[m].origin.as_ref()).map(|o| o.scope.as_str()).filter(|s| !s.is_empty());
    let param = anchor.and_then(|m| match &g.nodes[m].op {
        Op::Param { id } => Some(g.param_name(*id)),
        _ => None,
    });
    let tag = param.or(scope).unwrap_or("model").replace('.', "_");
    format!("k{k:03}_{}_{}", kind.name(), tag)
}

impl Plan {
    /// A one-line-per-kernel table for humans.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        for k in &self.kernels {
            *counts.entry(k.kind.name()).or_default() += 1;
        }
        s.push_str(&format!(
            "{} mode, {:?}: {} kernels ({}), {:.2} GFLOP, {:.1} MB moved at least, peak activations {:.1} MB\n",
            match self.mode {
                Mode::Train => "train",
                Mode::Eval => "eval",
            },
            self.precision,
            self.kernels.len(),
            counts.iter().map(|(k, c)| format!("{c} {k}")).collect::<Vec<_>>().join(", "),
            self.flops as f64 / 1e9,
            self.min_bytes as f64 / 1e6,
            self.arena_bytes as f64 / 1e6,
        ));
        s
    }
}
