//! Reverse-mode autodiff: from a forward graph and its scalar loss, the gradient of every parameter.
//!
//! [`backward`] copies the forward graph and appends, in reverse topological
//! order, the adjoint of every node that both depends on a parameter and
//! feeds the loss. The rules form one table ([`rule`]), one arm per op:
//!
//! | op | adjoint of each operand, for an incoming gradient `g` |
//! |---|---|
//! | `Unary` | `g * f'(x)`: neg `-g`, abs `g (step(x) - step(-x))`, relu `g step(x)`, square `2 x g`, sqrt `0.5 g / y`, rsqrt `-0.5 g y^3`, recip `-g y^2`, sigmoid `g y (1 - y)`, tanh `g (1 - y^2)`, exp `g y`, log `g / x`, softplus `g sigmoid(x)`; step: none |
//! | `LeakyRelu` | `g leaky_step(x)`; `LeakyStep`: none |
//! | `Binary` | add `g, g`; sub `g, -g`; mul `g b, g a`; div `g / b, -(g a) / (b b)`; max/min `g m_a / (m_a + m_b)` with `m = eq(out, operand)` (ties split evenly, as PyTorch does); eq: none. Every operand adjoint is `SumTo` its shape when it was broadcast |
//! | `Reduce` | sum: `Broadcast(g)`; mean: `Broadcast(g) / n`; max: `Broadcast(g) * m / sum(m)` with `m = eq(x, Broadcast(out))` |
//! | `Reshape` | `Reshape` back; `Permute`: the inverse permutation |
//! | `Broadcast` | `SumTo` the operand shape; `SumTo`: `Broadcast` back |
//! | `Index` | `Unindex`; `Unindex`: `Index` |
//! | `Linear(x, w)` | `MatMul(g, w)`, `OuterSum(g, x)` |
//! | `MatMul(d, w)` | `Linear(g, w)`, `OuterSum(d, g)` |
//! | `OuterSum(d, x)` | `Linear(x, g)`, `MatMul(d, g)` |
//! | `Gather(table, ids)` | `ScatterAdd(ids, g)`; `ScatterAdd(ids, d)`: `Gather(g, ids)` |
//! | `BigramHash` | none (integer) |
//! | `Shift{offset}` | `Shift{-offset}` |
//! | `Rope{inverse}` | `Rope{!inverse}` (a rotation's adjoint is its inverse) |
//! | `CausalAttention(q, k, v)` | `CausalAttentionGrad{wrt: Q, K, V}(q, k, v, g)` |
//! | `FakeQuant` | `g` (straight-through estimator) |
//! | `CrossEntropy(z, t)` | `CrossEntropyGrad(z, t, g)` |
//! | `CausalAttentionGrad`, `CrossEntropyGrad` | no rule (second order): an error |
//!
//! Gradients reaching a value along several uses are summed with `Add`; a
//! parameter read by several `Param` nodes (the tied embedding) likewise.
//! Outputs `grad.NAME` are added for every declared parameter, a zero tensor
//! (`Broadcast` of `Scalar 0`) where the loss does not depend on it. Backward
//! nodes carry the origin of the forward node they differentiate.
//!
//! [`backward_traced`] also returns which forward node's rule made each
//! backward node and which forward value's gradient it is ([`Adjoints`]), so
//! that a precision model can give a gradient the dtype of its value (as
//! PyTorch's autograd does); [`recover_adjoints`] finds the same record for a
//! graph [`backward`] built.

use crate::graph::{Graph, GraphError, Origin, ValueId};
use crate::op::{AttnPart, BinaryFn, Op, ParamId, ReduceFn, UnaryFn};
use crate::types::DType;
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum AutodiffError {
    #[error("autodiff: the graph has no output named `{0}` to differentiate")]
    NoLoss(String),
    #[error("autodiff: the loss `{name}` must be a single float element, it is {ty}")]
    NotScalar { name: String, ty: String },
    #[error("autodiff: %{node} = {op}: no gradient rule ({why})")]
    NoRule { node: u32, op: &'static str, why: &'static str },
    #[error("autodiff: output `{0}` already exists")]
    OutputClash(String),
    #[error("autodiff: building the backward graph: {0}")]
    Graph(#[from] GraphError),
    #[error("autodiff: the backward graph fails verification: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Verify(Vec<GraphError>),
}

/// Name of the pass, for dumps.
pub const NAME: &str = "autodiff";

/// The forward graph `fwd` with the backward nodes of `loss` appended and an
/// output `grad.NAME` for every parameter. The result passes [`crate::verify`].
pub fn backward(fwd: &Graph, loss: &str) -> Result<Graph, AutodiffError> {
    backward_traced(fwd, loss).map(|(g, _)| g)
}

/// Where the backward nodes of a graph came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Adjoints {
    /// Nodes `0..forward_nodes` are the forward graph; the rest were appended.
    pub forward_nodes: usize,
    /// Per appended node (index `i - forward_nodes`): the forward node whose
    /// gradient rule made it (`None`: the loss seed and zero gradients).
    pub rule_of: Vec<Option<ValueId>>,
    /// Per appended node: the forward value whose gradient (one contribution,
    /// or the sum of several) this node is, if it is one; `None` for the
    /// intermediate values of a rule.
    pub grad_of: Vec<Option<ValueId>>,
}

impl Adjoints {
    /// The record of node `v`, `None` for a forward node.
    pub fn of(&self, v: ValueId) -> Option<(Option<ValueId>, Option<ValueId>)> {
        let i = v.index().checked_sub(self.forward_nodes)?;
        Some((*self.rule_of.get(i)?, *self.grad_of.get(i)?))
    }
}

/// The [`Adjoints`] of a graph that [`backward`] built from some forward graph
/// with this `loss`, found by rebuilding: the forward part is the shortest
/// prefix that holds every output except the `grad.*` ones and from which
/// `backward` gives back exactly `g`. `None` when `g` has no `grad.*` outputs
/// or was not built that way.
pub fn recover_adjoints(g: &Graph, loss: &str) -> Option<Adjoints> {
    let fwd_outputs: Vec<(String, ValueId)> = g.outputs.iter().filter(|(n, _)| !n.starts_with("grad.")).cloned().collect();
    if fwd_outputs.len() == g.outputs.len() {
        return None;
    }
    let min = fwd_outputs.iter().map(|(_, v)| v.index() + 1).max().unwrap_or(0);
    // The loss seed (`Scalar 1`) is the first appended node.
    for n in min..g.nodes.len() {
        if !matches!(g.nodes[n].op, Op::Scalar { value } if value == 1.0) {
            continue;
        }
        let fwd = Graph { mode: g.mode, constants: g.constants.clone(), params: g.params.clone(), nodes: g.nodes[..n].to_vec(), outputs: fwd_outputs.clone() };
        if let Ok((b, adj)) = backward_traced(&fwd, loss) {
            if b.nodes == g.nodes && b.outputs == g.outputs {
                return Some(adj);
            }
        }
    }
    None
}

/// [`backward`], with the record of where each appended node came from.
pub fn backward_traced(fwd: &Graph, loss: &str) -> Result<(Graph, Adjoints), AutodiffError> {
    let loss_id = fwd.output(loss).ok_or_else(|| AutodiffError::NoLoss(loss.to_string()))?;
    let lty = fwd.ty(loss_id);
    if lty.dtype != DType::F32 || lty.numel() != 1 {
        return Err(AutodiffError::NotScalar { name: loss.to_string(), ty: lty.to_string() });
    }
    for p in &fwd.params {
        let name = format!("grad.{}", p.name);
        if fwd.output(&name).is_some() {
            return Err(AutodiffError::OutputClash(name));
        }
    }
    let n = fwd.nodes.len();
    // Values that depend on a parameter through float data.
    let mut dep = vec![false; n];
    for (i, node) in fwd.nodes.iter().enumerate() {
        dep[i] = node.ty.dtype == DType::F32
            && (matches!(node.op, Op::Param { .. }) || node.args.iter().any(|a| dep[a.index()]));
    }
    // Values the loss depends on.
    let mut live = vec![false; n];
    live[loss_id.index()] = true;
    for i in (0..n).rev() {
        if live[i] {
            for a in &fwd.nodes[i].args {
                live[a.index()] = true;
            }
        }
    }
    let need: Vec<bool> = (0..n).map(|i| dep[i] && live[i]).collect();

    let mut g = fwd.clone();
    let mut grads: Vec<Option<ValueId>> = vec![None; n];
    let mut param_grads: HashMap<ParamId, ValueId> = HashMap::new();
    let mut adj = Adjoints { forward_nodes: n, rule_of: Vec::new(), grad_of: Vec::new() };
    // Nodes appended since the last call get `rule` as their rule.
    let mark = |g: &Graph, adj: &mut Adjoints, rule: Option<ValueId>| {
        let have = adj.forward_nodes + adj.rule_of.len();
        adj.rule_of.extend(std::iter::repeat(rule).take(g.nodes.len() - have));
        adj.grad_of.resize(adj.rule_of.len(), None);
    };
    // A gradient passed on unchanged (add, fake quantization) stays the
    // gradient of the value it was made for.
    let set_grad = |adj: &mut Adjoints, v: ValueId, of: ValueId| {
        if let Some(i) = v.index().checked_sub(adj.forward_nodes) {
            adj.grad_of[i].get_or_insert(of);
        }
    };
    {
        let mut b = Builder { g: &mut g, origin: fwd.node(loss_id).origin.clone() };
        let one = b.push(Op::Scalar { value: 1.0 }, &[])?;
        let seed = b.reshape(one, &lty.shape)?;
        grads[loss_id.index()] = Some(seed);
        mark(&g, &mut adj, None);
        set_grad(&mut adj, seed, loss_id);
    }
    for i in (0..n).rev() {
        if !need[i] {
            continue;
        }
        let Some(gy) = grads[i] else { continue };
        let node = &fwd.nodes[i];
        let yid = ValueId(i as u32);
        let mut b = Builder { g: &mut g, origin: node.origin.clone() };
        if let Op::Param { id } = node.op {
            let acc = match param_grads.get(&id) {
                Some(&prev) => b.bin(BinaryFn::Add, prev, gy)?,
                None => gy,
            };
            param_grads.insert(id, acc);
            mark(&g, &mut adj, Some(yid));
            set_grad(&mut adj, acc, yid);
            continue;
        }
        let wants: Vec<bool> = node.args.iter().map(|a| need[a.index()]).collect();
        let contribs = rule(&mut b, fwd, yid, gy, &wants)?;
        mark(b.g, &mut adj, Some(yid));
        for (k, gx) in contribs {
            if !wants[k] {
                continue;
            }
            let a = node.args[k];
            set_grad(&mut adj, gx, a);
            let mut b = Builder { g: &mut g, origin: node.origin.clone() };
            let sum = match grads[a.index()] {
                Some(prev) => b.bin(BinaryFn::Add, prev, gx)?,
                None => gx,
            };
            grads[a.index()] = Some(sum);
            mark(&g, &mut adj, Some(yid));
            set_grad(&mut adj, sum, a);
        }
    }
    let mut outs = Vec::new();
    for (i, p) in fwd.params.iter().enumerate() {
        let gid = match param_grads.get(&ParamId(i as u32)) {
            Some(&v) => v,
            None => {
                let mut b = Builder { g: &mut g, origin: p.origin.clone() };
                let z = b.push(Op::Scalar { value: 0.0 }, &[])?;
                let v = b.push(Op::Broadcast { shape: p.shape.clone() }, &[z])?;
                mark(&g, &mut adj, None);
                v
            }
        };
        outs.push((format!("grad.{}", p.name), gid));
    }
    g.outputs.extend(outs);
    crate::verify(&g).map_err(AutodiffError::Verify)?;
    Ok((g, adj))
}

/// Appends nodes with one origin.
struct Builder<'a> {
    g: &'a mut Graph,
    origin: Option<Origin>,
}

impl Builder<'_> {
    fn push(&mut self, op: Op, args: &[ValueId]) -> Result<ValueId, GraphError> {
        self.g.push(op, args, self.origin.clone())
    }
    fn un(&mut self, f: UnaryFn, x: ValueId) -> Result<ValueId, GraphError> {
        self.push(Op::Unary { f }, &[x])
    }
    fn bin(&mut self, f: BinaryFn, a: ValueId, b: ValueId) -> Result<ValueId, GraphError> {
        self.push(Op::Binary { f }, &[a, b])
    }
    fn scalar(&mut self, value: f64) -> Result<ValueId, GraphError> {
        self.push(Op::Scalar { value }, &[])
    }
    fn mul_scalar(&mut self, x: ValueId, value: f64) -> Result<ValueId, GraphError> {
        let s = self.scalar(value)?;
        self.bin(BinaryFn::Mul, x, s)
    }
    fn reshape(&mut self, x: ValueId, shape: &[usize]) -> Result<ValueId, GraphError> {
        if self.g.ty(x).shape == shape {
            return Ok(x);
        }
        self.push(Op::Reshape { shape: shape.to_vec() }, &[x])
    }
    fn sum_to(&mut self, x: ValueId, shape: &[usize]) -> Result<ValueId, GraphError> {
        if self.g.ty(x).shape == shape {
            return Ok(x);
        }
        self.push(Op::SumTo { shape: shape.to_vec() }, &[x])
    }
    fn broadcast(&mut self, x: ValueId, shape: &[usize]) -> Result<ValueId, GraphError> {
        if self.g.ty(x).shape == shape {
            return Ok(x);
        }
        self.push(Op::Broadcast { shape: shape.to_vec() }, &[x])
    }
}

/// The gradient rule table: for node `y` with incoming gradient `gy`, the
/// adjoint contribution to each operand `k` with `wants[k]`.
fn rule(b: &mut Builder, fwd: &Graph, y: ValueId, gy: ValueId, wants: &[bool]) -> Result<Vec<(usize, ValueId)>, AutodiffError> {
    let node = fwd.node(y);
    let args = &node.args;
    let x = |k: usize| args[k];
    let xshape = |k: usize| fwd.ty(args[k]).shape.clone();
    let no_rule = |why: &'static str| AutodiffError::NoRule { node: y.0, op: node.op.name(), why };
    let mut out: Vec<(usize, ValueId)> = Vec::new();
    match &node.op {
        Op::Input { .. } | Op::Param { .. } | Op::Scalar { .. } => {}
        Op::Unary { f } => {
            let x0 = x(0);
            let gx = match f {
                UnaryFn::Neg => Some(b.un(UnaryFn::Neg, gy)?),
                UnaryFn::Abs => {
                    let pos = b.un(UnaryFn::Step, x0)?;
                    let nx = b.un(UnaryFn::Neg, x0)?;
                    let neg = b.un(UnaryFn::Step, nx)?;
                    let sign = b.bin(BinaryFn::Sub, pos, neg)?;
                    Some(b.bin(BinaryFn::Mul, gy, sign)?)
                }
                UnaryFn::Relu => {
                    let s = b.un(UnaryFn::Step, x0)?;
                    Some(b.bin(BinaryFn::Mul, gy, s)?)
                }
                UnaryFn::Step => None,
                UnaryFn::Square => {
                    let two_x = b.mul_scalar(x0, 2.0)?;
                    Some(b.bin(BinaryFn::Mul, gy, two_x)?)
                }
                UnaryFn::Sqrt => {
                    let h = b.mul_scalar(gy, 0.5)?;
                    Some(b.bin(BinaryFn::Div, h, y)?)
                }
                UnaryFn::Rsqrt => {
                    let y2 = b.un(UnaryFn::Square, y)?;
                    let y3 = b.bin(BinaryFn::Mul, y2, y)?;
                    let d = b.mul_scalar(y3, -0.5)?;
                    Some(b.bin(BinaryFn::Mul, gy, d)?)
                }
                UnaryFn::Recip => {
                    let y2 = b.un(UnaryFn::Square, y)?;
                    let t = b.bin(BinaryFn::Mul, gy, y2)?;
                    Some(b.un(UnaryFn::Neg, t)?)
                }
                UnaryFn::Sigmoid => {
                    let one = b.scalar(1.0)?;
                    let om = b.bin(BinaryFn::Sub, one, y)?;
                    let d = b.bin(BinaryFn::Mul, y, om)?;
                    Some(b.bin(BinaryFn::Mul, gy, d)?)
                }
                UnaryFn::Tanh => {
                    let one = b.scalar(1.0)?;
                    let y2 = b.un(UnaryFn::Square, y)?;
                    let d = b.bin(BinaryFn::Sub, one, y2)?;
                    Some(b.bin(BinaryFn::Mul, gy, d)?)
                }
                UnaryFn::Exp => Some(b.bin(BinaryFn::Mul, gy, y)?),
                UnaryFn::Log => Some(b.bin(BinaryFn::Div, gy, x0)?),
                UnaryFn::Softplus => {
                    let s = b.un(UnaryFn::Sigmoid, x0)?;
                    Some(b.bin(BinaryFn::Mul, gy, s)?)
                }
            };
            out.extend(gx.map(|v| (0, v)));
        }
        Op::LeakyRelu { slope } => {
            let s = b.push(Op::LeakyStep { slope: *slope }, &[x(0)])?;
            out.push((0, b.bin(BinaryFn::Mul, gy, s)?));
        }
        Op::LeakyStep { .. } => {}
        Op::Binary { f } => {
            let (a, c) = (x(0), x(1));
            let (ga, gc) = match f {
                BinaryFn::Add => (Some(gy), Some(gy)),
                BinaryFn::Sub => (Some(gy), if wants[1] { Some(b.un(UnaryFn::Neg, gy)?) } else { None }),
                BinaryFn::Mul => (
                    if wants[0] { Some(b.bin(BinaryFn::Mul, gy, c)?) } else { None },
                    if wants[1] { Some(b.bin(BinaryFn::Mul, gy, a)?) } else { None },
                ),
                BinaryFn::Div => {
                    let ga = if wants[0] { Some(b.bin(BinaryFn::Div, gy, c)?) } else { None };
                    let gc = if wants[1] {
                        let num = b.bin(BinaryFn::Mul, gy, a)?;
                        let den = b.bin(BinaryFn::Mul, c, c)?;
                        let q = b.bin(BinaryFn::Div, num, den)?;
                        Some(b.un(UnaryFn::Neg, q)?)
                    } else {
                        None
                    };
                    (ga, gc)
                }
                BinaryFn::Max | BinaryFn::Min => {
                    let ma = b.bin(BinaryFn::Eq, y, a)?;
                    let mc = b.bin(BinaryFn::Eq, y, c)?;
                    let cnt = b.bin(BinaryFn::Add, ma, mc)?;
                    let mut part = |m: ValueId, want: bool| -> Result<Option<ValueId>, GraphError> {
                        if !want {
                            return Ok(None);
                        }
                        let w = b.bin(BinaryFn::Div, m, cnt)?;
                        Ok(Some(b.bin(BinaryFn::Mul, gy, w)?))
                    };
                    (part(ma, wants[0])?, part(mc, wants[1])?)
                }
                BinaryFn::Eq => (None, None),
            };
            if let Some(v) = ga {
                out.push((0, b.sum_to(v, &xshape(0))?));
            }
            if let Some(v) = gc {
                out.push((1, b.sum_to(v, &xshape(1))?));
            }
        }
        Op::Reduce { f, axis, keepdim } => {
            let xs = xshape(0);
            let mut kshape = xs.clone();
            kshape[*axis] = 1;
            let gk = if *keepdim { gy } else { b.reshape(gy, &kshape)? };
            let gb = b.broadcast(gk, &xs)?;
            let gx = match f {
                ReduceFn::Sum => gb,
                ReduceFn::Mean => {
                    let n = b.scalar(xs[*axis] as f64)?;
                    b.bin(BinaryFn::Div, gb, n)?
                }
                ReduceFn::Max => {
                    let yk = if *keepdim { y } else { b.reshape(y, &kshape)? };
                    let yb = b.broadcast(yk, &xs)?;
                    let m = b.bin(BinaryFn::Eq, x(0), yb)?;
                    let cnt = b.push(Op::Reduce { f: ReduceFn::Sum, axis: *axis, keepdim: true }, &[m])?;
                    let w = b.bin(BinaryFn::Div, m, cnt)?;
                    b.bin(BinaryFn::Mul, gb, w)?
                }
            };
            out.push((0, gx));
        }
        Op::Reshape { .. } => {
            let xs = xshape(0);
            out.push((0, b.reshape(gy, &xs)?));
        }
        Op::Permute { perm } => {
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            out.push((0, b.push(Op::Permute { perm: inv }, &[gy])?));
        }
        Op::Broadcast { .. } => {
            let xs = xshape(0);
            out.push((0, b.sum_to(gy, &xs)?));
        }
        Op::SumTo { .. } => {
            let xs = xshape(0);
            out.push((0, b.broadcast(gy, &xs)?));
        }
        Op::Index { axis, index } => {
            let size = xshape(0)[*axis];
            out.push((0, b.push(Op::Unindex { axis: *axis, index: *index, size }, &[gy])?));
        }
        Op::Unindex { axis, index, .. } => {
            out.push((0, b.push(Op::Index { axis: *axis, index: *index }, &[gy])?));
        }
        Op::Linear => {
            if wants[0] {
                out.push((0, b.push(Op::MatMul, &[gy, x(1)])?));
            }
            if wants[1] {
                out.push((1, b.push(Op::OuterSum, &[gy, x(0)])?));
            }
        }
        Op::MatMul => {
            if wants[0] {
                out.push((0, b.push(Op::Linear, &[gy, x(1)])?));
            }
            if wants[1] {
                out.push((1, b.push(Op::OuterSum, &[x(0), gy])?));
            }
        }
        Op::OuterSum => {
            if wants[0] {
                out.push((0, b.push(Op::Linear, &[x(1), gy])?));
            }
            if wants[1] {
                out.push((1, b.push(Op::MatMul, &[x(0), gy])?));
            }
        }
        Op::Gather => {
            let rows = xshape(0)[0];
            out.push((0, b.push(Op::ScatterAdd { rows }, &[x(1), gy])?));
        }
        Op::ScatterAdd { .. } => {
            out.push((1, b.push(Op::Gather, &[gy, x(0)])?));
        }
        Op::BigramHash { .. } => {}
        Op::Shift { axis, offset } => {
            out.push((0, b.push(Op::Shift { axis: *axis, offset: -*offset }, &[gy])?));
        }
        Op::Rope { base, inverse } => {
            out.push((0, b.push(Op::Rope { base: *base, inverse: !*inverse }, &[gy])?));
        }
        Op::CausalAttention { scale } => {
            for (k, wrt) in [AttnPart::Q, AttnPart::K, AttnPart::V].into_iter().enumerate() {
                if wants[k] {
                    let v = b.push(Op::CausalAttentionGrad { scale: *scale, wrt }, &[x(0), x(1), x(2), gy])?;
                    out.push((k, v));
                }
            }
        }
        Op::FakeQuant { .. } => out.push((0, gy)),
        Op::CrossEntropy => {
            out.push((0, b.push(Op::CrossEntropyGrad, &[x(0), x(1), gy])?));
        }
        Op::CausalAttentionGrad { .. } => return Err(no_rule("second-order attention gradients are not supported")),
        Op::CrossEntropyGrad => return Err(no_rule("second-order cross-entropy gradients are not supported")),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Mode, ParamInfo};
    use crate::quant::{Init, QuantSpec};
    use crate::types::TensorType;

    fn param(g: &mut Graph, name: &str, shape: &[usize]) -> ValueId {
        let id = g.add_param(ParamInfo {
            name: name.into(),
            shape: shape.to_vec(),
            quant: QuantSpec::default(),
            init: Init::Zeros,
            origin: None,
        })
        .unwrap();
        g.push(Op::Param { id: id }, &[], None).unwrap()
    }

    #[test]
    fn linear_cross_entropy_has_grads_for_every_param() {
        let mut g = Graph::new(Mode::Train);
        let w = param(&mut g, "w", &[5, 3]);
        let _unused = param(&mut g, "unused", &[2]);
        let x = param(&mut g, "x", &[2, 4, 3]);
        let t = g.push(Op::Input { name: "t".into(), ty: TensorType::i32(vec![2, 4]) }, &[], None).unwrap();
        let z = g.push(Op::Linear, &[x, w], None).unwrap();
        let l = g.push(Op::CrossEntropy, &[z, t], None).unwrap();
        g.outputs.push(("loss".into(), l));
        let bg = backward(&g, "loss").unwrap();
        for n in ["grad.w", "grad.x", "grad.unused"] {
            let v = bg.output(n).unwrap();
            assert_eq!(bg.ty(v).shape, bg.param(&n[5..]).unwrap().shape);
        }
        assert!(matches!(backward(&g, "nope"), Err(AutodiffError::NoLoss(_))));
    }

    #[test]
    fn adjoints_name_each_gradient_and_are_recovered_from_the_graph() {
        let mut g = Graph::new(Mode::Train);
        let w = param(&mut g, "w", &[5, 3]);
        let x = param(&mut g, "x", &[2, 4, 3]);
        let t = g.push(Op::Input { name: "t".into(), ty: TensorType::i32(vec![2, 4]) }, &[], None).unwrap();
        let z = g.push(Op::Linear, &[x, w], None).unwrap();
        let s = g.push(Op::Unary { f: UnaryFn::Tanh }, &[z], None).unwrap();
        let l = g.push(Op::CrossEntropy, &[s, t], None).unwrap();
        g.outputs.push(("loss".into(), l));
        let (bg, adj) = backward_traced(&g, "loss").unwrap();
        assert_eq!(adj.forward_nodes, g.nodes.len());
        assert_eq!(adj.rule_of.len(), bg.nodes.len() - g.nodes.len());
        // grad.w is the OuterSum the Linear rule (z) made: the gradient of the w node.
        let gw = bg.output("grad.w").unwrap();
        assert!(matches!(bg.node(gw).op, Op::OuterSum));
        assert_eq!(adj.of(gw), Some((Some(z), Some(w))));
        // The tanh rule's product is the gradient of z; its (1 - y^2) is not a gradient.
        let gz = bg.nodes.iter().position(|n| matches!(n.op, Op::MatMul)).map(|i| bg.nodes[i].args[0]).unwrap();
        assert_eq!(adj.of(gz), Some((Some(s), Some(z))));
        let sub = bg.nodes.iter().position(|n| matches!(n.op, Op::Binary { f: BinaryFn::Sub })).unwrap();
        assert_eq!(adj.of(ValueId(sub as u32)), Some((Some(s), None)));
        assert_eq!(adj.of(z), None);
        assert_eq!(recover_adjoints(&bg, "loss"), Some(adj));
        assert_eq!(recover_adjoints(&g, "loss"), None);
        let mut other = bg.clone();
        other.nodes.last_mut().unwrap().origin = Some(Default::default());
        assert_eq!(recover_adjoints(&other, "loss"), None, "a graph autodiff did not build");
    }

    #[test]
    fn non_scalar_loss_is_rejected() {
        let mut g = Graph::new(Mode::Train);
        let w = param(&mut g, "w", &[5, 3]);
        g.outputs.push(("loss".into(), w));
        assert!(matches!(backward(&g, "loss"), Err(AutodiffError::NotScalar { .. })));
    }
}
