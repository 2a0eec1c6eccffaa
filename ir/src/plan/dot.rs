//! The kernel plan as a Graphviz graph (`pgc compile --emit dot`).

use super::{Place, Plan};
use crate::Graph;
use std::fmt::Write;

/// The plan as a Graphviz digraph: a box per kernel (kind, FLOPs, fewest
/// bytes), an ellipse per stored buffer it reads or writes (arena slot,
/// parameter, input), edges labelled with the buffer's bytes.
pub fn render(g: &Graph, plan: &Plan) -> String {
    let mut s = String::from("digraph plan {\n  rankdir=TB;\n  node [fontname=\"sans-serif\", fontsize=10];\n");
    let bytes = |v: usize| -> u64 {
        match &plan.values[v] {
            Place::Arena(slot) | Place::Param { prepared: Some(slot), .. } => slot.bytes,
            _ => g.nodes[v].ty.numel() as u64 * 4,
        }
    };
    let label = |v: usize| -> String {
        let what = match &plan.values[v] {
            Place::Param { id, .. } => format!("param {}", g.params.get(id.index()).map_or("?", |p| p.name.as_str())),
            Place::Input { name } => format!("input {name}"),
            _ => format!("%{v} {}", g.nodes[v].op.name()),
        };
        let shape: Vec<String> = g.nodes[v].ty.shape.iter().map(|d| d.to_string()).collect();
        format!("{what}\\n[{}]", shape.join(", "))
    };
    let mut buffers = std::collections::BTreeSet::new();
    for k in &plan.kernels {
        buffers.extend(k.inputs.iter().chain(&k.outputs).map(|v| v.index()));
    }
    for v in &buffers {
        let _ = writeln!(s, "  v{v} [shape=ellipse, label=\"{}\"];", esc(&label(*v)));
    }
    for (i, k) in plan.kernels.iter().enumerate() {
        let _ = writeln!(
            s,
            "  k{i} [shape=box, style=filled, fillcolor=\"#dde8f6\", label=\"{}\\n{} | {:.3} GFLOP | {:.2} MB\"];",
            esc(&k.name),
            k.kind.name(),
            k.flops as f64 / 1e9,
            k.min_bytes as f64 / 1e6
        );
        for v in &k.inputs {
            let _ = writeln!(s, "  v{} -> k{i} [label=\"{}\"];", v.index(), human(bytes(v.index())));
        }
        for v in &k.outputs {
            let _ = writeln!(s, "  k{i} -> v{} [label=\"{}\"];", v.index(), human(bytes(v.index())));
        }
    }
    s.push_str("}\n");
    s
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn human(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

