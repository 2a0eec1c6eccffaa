//! Dead-code elimination: drop every node no output depends on.
//!
//! Nodes keep their relative order; operand ids and outputs are renumbered.
//! Parameters stay declared even when unused (their `grad.NAME` outputs and
//! the weights file still name them).

use crate::graph::{Graph, ValueId};

/// Name of the pass, for dumps.
pub const NAME: &str = "dce";

/// `g` without the nodes that no output reaches.
pub fn dce(g: &Graph) -> Graph {
    let n = g.nodes.len();
    let mut live = vec![false; n];
    for (_, v) in &g.outputs {
        live[v.index()] = true;
    }
    for i in (0..n).rev() {
        if live[i] {
            for a in &g.nodes[i].args {
                live[a.index()] = true;
            }
        }
    }
    let mut map = vec![ValueId(u32::MAX); n];
    let mut out = Graph {
        mode: g.mode,
        constants: g.constants.clone(),
        params: g.params.clone(),
        nodes: Vec::new(),
        outputs: Vec::new(),
    };
    for (i, node) in g.nodes.iter().enumerate() {
        if live[i] {
            let mut node = node.clone();
            node.args.iter_mut().for_each(|a| *a = map[a.index()]);
            map[i] = ValueId(out.nodes.len() as u32);
            out.nodes.push(node);
        }
    }
    out.outputs = g.outputs.iter().map(|(name, v)| (name.clone(), map[v.index()])).collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Mode;
    use crate::op::{Op, UnaryFn};

    #[test]
    fn removes_unreachable_nodes_and_renumbers() {
        let mut g = Graph::new(Mode::Eval);
        let a = g.push(Op::Scalar { value: 1.0 }, &[], None).unwrap();
        let _dead = g.push(Op::Scalar { value: 2.0 }, &[], None).unwrap();
        let b = g.push(Op::Unary { f: UnaryFn::Exp }, &[a], None).unwrap();
        let _dead2 = g.push(Op::Unary { f: UnaryFn::Neg }, &[b], None).unwrap();
        g.outputs.push(("y".into(), b));
        let d = dce(&g);
        assert_eq!(d.nodes.len(), 2);
        assert_eq!(d.nodes[1].args, vec![ValueId(0)]);
        assert_eq!(d.output("y"), Some(ValueId(1)));
        crate::verify(&d).unwrap();
    }
}
