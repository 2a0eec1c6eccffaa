//! The graph verifier. Invariants checked (all errors are collected, not just the first):
//!
//! 1. Every operand id refers to an earlier node (the node list is topologically ordered).
//! 2. Each node has its op's arity, and its recorded type equals the type its op
//!    infers from its operands (dtype and static shape).
//! 3. `Param` nodes refer to a declared parameter; parameter names are unique.
//! 6. Values are f32 or i32: bf16 is a storage type the plan chooses, not a
//!    graph type.
//! 4. Every output names an existing node; output names are unique.
//! 5. Quantization annotations are in range: int storage 2..=8 bits, QAT 2..=8
//!    bits and only on matrices, prune fraction in [0, 1), clip percentile in (0, 100].

use crate::graph::{Graph, GraphError};
use crate::quant::{Qat, StorageClass};
use std::collections::HashSet;

pub fn verify(g: &Graph) -> Result<(), Vec<GraphError>> {
    let mut errors = Vec::new();
    let mut names = HashSet::new();
    for p in &g.params {
        let e = |m: String| GraphError { message: format!("parameter `{}`: {m}", p.name), origin: p.origin.clone() };
        if !names.insert(p.name.as_str()) {
            errors.push(e("declared twice".into()));
        }
        if let StorageClass::Int { bits, clip_percentile } = &p.quant.storage {
            if !(2..=8).contains(bits) {
                errors.push(e(format!("int storage needs 2..=8 bits, got {bits}")));
            }
            if let Some(c) = clip_percentile {
                if !(*c > 0.0 && *c <= 100.0) {
                    errors.push(e(format!("clip percentile must be in (0, 100], got {c}")));
                }
            }
        }
        if let Qat::Ste { bits } = p.quant.qat {
            if !(2..=8).contains(&bits) {
                errors.push(e(format!("QAT needs 2..=8 bits, got {bits}")));
            }
            if p.shape.len() != 2 {
                errors.push(e(format!("QAT quantizes per row and needs a matrix, shape is {:?}", p.shape)));
            }
        }
        if !(0.0..1.0).contains(&p.quant.prune) {
            errors.push(e(format!("prune fraction must be in [0, 1), got {}", p.quant.prune)));
        }
    }
    for (i, n) in g.nodes.iter().enumerate() {
        let loc = |m: String| GraphError { message: format!("%{i} = {}: {m}", n.op.name()), origin: n.origin.clone() };
        if let Some(a) = n.args.iter().find(|a| a.index() >= i) {
            errors.push(loc(format!("operand {a} is not defined before use")));
            continue;
        }
        if n.ty.dtype == crate::types::DType::Bf16 {
            errors.push(loc("bf16 is a storage type of the plan; graph values are f32 or i32".into()));
        }
        let tys: Vec<_> = n.args.iter().map(|a| &g.nodes[a.index()].ty).collect();
        match n.op.infer(&tys, &|id| g.params.get(id.index()).map(|p| crate::types::TensorType::f32(p.shape.clone()))) {
            Ok(t) if t == n.ty => {}
            Ok(t) => errors.push(loc(format!("recorded type {} but operands give {t}", n.ty))),
            Err(e) => errors.push(loc(e.0)),
        }
    }
    let mut outs = HashSet::new();
    for (name, v) in &g.outputs {
        if v.index() >= g.nodes.len() {
            errors.push(GraphError { message: format!("output `{name}` refers to undefined {v}"), origin: None });
        }
        if !outs.insert(name.as_str()) {
            errors.push(GraphError { message: format!("output `{name}` defined twice"), origin: None });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}
