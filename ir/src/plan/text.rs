//! The plan's readable text form (`pgc compile --emit plan`, the `test plan`
//! file tests in `tests/ir/`).
//!
//! ```text
//! plan eval f32: 1 kernels, 40 flops, 112 bytes at least, arena 256 bytes
//!   rules: elementwise, gemm-epilogue
//! kernel k000_gemm_model gemm flops=40 min_bytes=112 rules=gemm-epilogue
//!   read  %0 input x : f32[2,3]
//!   read  %1 param w : f32[4,3]
//!   const %3 scalar 0.5
//!   op    %2 = linear %0, %1 : f32[2,4]
//!   op    %4 = mul %2, %3 : f32[2,4]
//!   write %4 arena 0..32 f32 : f32[2,4]
//! output y = %4 arena 0..32 f32
//! dead: %5
//! ```
//!
//! A kernel block lists what it reads (with each value's place), the scalar
//! immediates its ops use, its prologue ops (`pro`, recomputed from stored
//! inputs) and ops as text-IR node lines, and what it writes. Launch geometry is
//! the backend's business and not printed.

use super::{Place, Plan, Precision, Slot, DType};
use crate::{Graph, ParamId, ValueId};
use std::fmt::Write;

/// Print `plan`, built for `g`, in the text form.
pub fn print(g: &Graph, plan: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "plan {} {}: {} kernels, {} flops, {} bytes at least, arena {} bytes",
        plan.mode.name(),
        precision_name(plan.precision),
        plan.kernels.len(),
        plan.flops,
        plan.min_bytes,
        plan.arena_bytes
    );
    let rules: Vec<&str> = plan.rules.iter().map(|r| r.name()).collect();
    let _ = writeln!(s, "  rules: {}", if rules.is_empty() { "none".to_string() } else { rules.join(", ") });
    for k in &plan.kernels {
        let _ = write!(s, "kernel {} {} flops={} min_bytes={}", k.name, k.kind.name(), k.flops, k.min_bytes);
        if !k.rules.is_empty() {
            let _ = write!(s, " rules={}", k.rules.iter().map(|r| r.name()).collect::<Vec<_>>().join(","));
        }
        s.push('\n');
        for &v in &k.inputs {
            let _ = writeln!(s, "  read  {v} {}{}", place(g, plan, v), ty(g, v));
        }
        // Scalar operands are immediates, not reads: listed so the ops read whole.
        let mut consts: Vec<ValueId> = Vec::new();
        for v in k.prologue.iter().chain(&k.ops) {
            for a in g.nodes.get(v.index()).map(|n| n.args.as_slice()).unwrap_or(&[]) {
                if matches!(plan.values.get(a.index()), Some(Place::Scalar { .. })) && !consts.contains(a) {
                    consts.push(*a);
                }
            }
        }
        for v in consts {
            let _ = writeln!(s, "  const {v} {}", place(g, plan, v));
        }
        for &v in &k.prologue {
            let _ = writeln!(s, "  pro   {}", node(g, v));
        }
        for &v in &k.ops {
            let _ = writeln!(s, "  op    {}", node(g, v));
        }
        for &v in &k.outputs {
            let _ = writeln!(s, "  write {v} {}{}", place(g, plan, v), ty(g, v));
        }
    }
    for (name, v) in &g.outputs {
        let _ = writeln!(s, "output {name} = {v} {}", place(g, plan, *v));
    }
    // A value recomputed in a kernel's prologue is placed `Dead` (no kernel
    // owns it) but is computed: not listed.
    let recomputed: Vec<ValueId> = plan.kernels.iter().flat_map(|k| k.prologue.iter().copied()).collect();
    let dead: Vec<String> = plan
        .values
        .iter()
        .enumerate()
        .filter(|&(i, p)| matches!(p, Place::Dead) && !recomputed.contains(&ValueId(i as u32)))
        .map(|(i, _)| format!("%{i}"))
        .collect();
    if !dead.is_empty() {
        let _ = writeln!(s, "dead: {}", dead.join(", "));
    }
    s
}

fn precision_name(p: Precision) -> &'static str {
    match p {
        Precision::Bf16 => "bf16",
        Precision::F32 => "f32",
    }
}

fn storage_name(s: DType) -> &'static str {
    match s {
        DType::F32 => "f32",
        DType::Bf16 => "bf16",
        DType::I32 => "i32",
    }
}

fn slot(s: &Slot) -> String {
    format!("{}..{} {}", s.offset, s.offset + s.bytes, storage_name(s.storage))
}

/// A value's place; the plan may come from a file, so ids are not trusted.
fn place(g: &Graph, plan: &Plan, v: ValueId) -> String {
    let param = |id: ParamId| g.params.get(id.index()).map_or_else(|| format!("#{} (not in the graph)", id.0), |p| p.name.clone());
    match plan.values.get(v.index()) {
        None => "(no place in the plan)".into(),
        Some(Place::Input { name }) => format!("input {name}"),
        Some(Place::Param { id, prepared: None }) => format!("param {}", param(*id)),
        Some(Place::Param { id, prepared: Some(p) }) => format!("param {} prepared {}", param(*id), slot(p)),
        Some(Place::Scalar { value }) => format!("scalar {value:?}"),
        Some(Place::Arena(p)) => format!("arena {}", slot(p)),
        Some(Place::Fused) => "fused".into(),
        Some(Place::Dead) => "dead".into(),
    }
}

fn ty(g: &Graph, v: ValueId) -> String {
    g.nodes.get(v.index()).map(|n| format!(" : {}", n.ty)).unwrap_or_default()
}

fn node(g: &Graph, v: ValueId) -> String {
    if v.index() < g.nodes.len() {
        crate::text::print_node(g, v.index())
    } else {
        format!("{v} (not in the graph)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{build, PlanOptions};
    use crate::{BinaryFn, Init, Mode, Op, ParamInfo, QuantSpec, TensorType, UnaryFn};

    #[test]
    fn prints_kernels_places_and_dead_values() {
        let mut g = Graph::new(Mode::Eval);
        g.add_param(ParamInfo { name: "w".into(), shape: vec![4, 3], quant: QuantSpec::default(), init: Init::Zeros, origin: None }).unwrap();
        let x = g.push(Op::Input { name: "x".into(), ty: TensorType::f32(vec![2, 3]) }, &[], None).unwrap();
        let w = g.push(Op::Param { id: g.param_id("w").expect("declared parameter") }, &[], None).unwrap();
        let y = g.push(Op::Linear, &[x, w], None).unwrap();
        let r = g.push(Op::Unary { f: UnaryFn::Relu }, &[y], None).unwrap();
        let _dead = g.push(Op::Binary { f: BinaryFn::Add }, &[r, r], None).unwrap();
        g.outputs.push(("y".into(), r));
        let p = build(&g, &PlanOptions::all(&g, Precision::F32)).unwrap();
        let t = print(&g, &p);
        assert!(t.starts_with("plan eval f32: 1 kernels, "), "{t}");
        assert!(t.contains("  read  %1 param w : f32[4,3]\n"), "{t}");
        assert!(t.contains("  op    %2 = linear %0, %1 : f32[2,4]\n"), "{t}");
        assert!(t.contains("  write %3 arena 0..32 f32 : f32[2,4]\n"), "{t}");
        assert!(t.contains("output y = %3 arena 0..32 f32\n"), "{t}");
        assert!(t.ends_with("dead: %4\n"), "{t}");
    }
}
