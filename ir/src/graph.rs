//! The tensor graph: parameters, nodes in topological order, named outputs.

use crate::op::{Op, ParamId, TypeError};
use crate::quant::{Init, QuantSpec};
use crate::types::{Shape, TensorType};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Index of a node in `Graph::nodes`; a node's operands always have smaller ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ValueId(pub u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// Where a node came from in the model source, for diagnostics and kernel names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub line: u32,
    pub col: u32,
    /// Parameter scope the node was built in, e.g. `blocks.3.attn` (may be empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub op: Op,
    pub args: Vec<ValueId>,
    pub ty: TensorType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamInfo {
    /// Full dotted name, the PyTorch state_dict name (`blocks.3.attn.c_q.weight`).
    pub name: String,
    pub shape: Shape,
    pub quant: QuantSpec,
    pub init: Init,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

impl ParamInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Train mode fake-quantizes QAT weights; eval mode uses them as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Train,
    Eval,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Train => "train",
            Mode::Eval => "eval",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub mode: Mode,
    /// Model constants after `--set` overrides, for reports and artifact headers.
    #[serde(default)]
    pub constants: Vec<(String, f64)>,
    pub params: Vec<ParamInfo>,
    pub nodes: Vec<Node>,
    /// Named results (`loss`, `logits`, `grad.NAME` after autodiff).
    pub outputs: Vec<(String, ValueId)>,
}

/// A typing error located at a node.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}{message}", origin.as_ref().map(|o| format!("{}:{}: ", o.line, o.col)).unwrap_or_default())]
pub struct GraphError {
    pub message: String,
    pub origin: Option<Origin>,
}

impl Graph {
    pub fn new(mode: Mode) -> Self {
        Graph { mode, constants: Vec::new(), params: Vec::new(), nodes: Vec::new(), outputs: Vec::new() }
    }

    pub fn node(&self, v: ValueId) -> &Node {
        &self.nodes[v.index()]
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.nodes[v.index()].ty
    }

    pub fn param(&self, name: &str) -> Option<&ParamInfo> {
        self.params.iter().find(|p| p.name == name)
    }

    /// The id of the parameter named `name`.
    pub fn param_id(&self, name: &str) -> Option<ParamId> {
        self.params.iter().position(|p| p.name == name).map(|i| ParamId(i as u32))
    }

    /// The parameter `id` names (ids come from this graph: out of range panics).
    pub fn param_info(&self, id: ParamId) -> &ParamInfo {
        &self.params[id.index()]
    }

    /// The name of parameter `id`.
    pub fn param_name(&self, id: ParamId) -> &str {
        &self.params[id.index()].name
    }

    pub fn output(&self, name: &str) -> Option<ValueId> {
        self.outputs.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    pub fn constant(&self, name: &str) -> Option<f64> {
        self.constants.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// Total number of parameter elements.
    pub fn param_count(&self) -> u64 {
        self.params.iter().map(|p| p.numel() as u64).sum()
    }

    /// Declare a parameter; errors if the name is taken.
    pub fn add_param(&mut self, p: ParamInfo) -> Result<ParamId, GraphError> {
        if self.param(&p.name).is_some() {
            return Err(GraphError { message: format!("parameter `{}` declared twice", p.name), origin: p.origin });
        }
        self.params.push(p);
        Ok(ParamId(self.params.len() as u32 - 1))
    }

    /// Append a node, inferring its type from its operands.
    pub fn push(&mut self, op: Op, args: &[ValueId], origin: Option<Origin>) -> Result<ValueId, GraphError> {
        let ty = self.infer(&op, args).map_err(|e| GraphError { message: e.0, origin: origin.clone() })?;
        let id = ValueId(self.nodes.len() as u32);
        self.nodes.push(Node { op, args: args.to_vec(), ty, origin });
        Ok(id)
    }

    /// The type `op` would have applied to `args` in this graph.
    pub fn infer(&self, op: &Op, args: &[ValueId]) -> Result<TensorType, TypeError> {
        let n = self.nodes.len();
        if let Some(bad) = args.iter().find(|a| a.index() >= n) {
            return Err(TypeError(format!("{}: operand {bad} is not defined", op.name())));
        }
        let tys: Vec<&TensorType> = args.iter().map(|a| &self.nodes[a.index()].ty).collect();
        op.infer(&tys, &|id| self.params.get(id.index()).map(|p| TensorType::f32(p.shape.clone())))
    }

    /// How many times each value is used as an operand or output.
    pub fn use_counts(&self) -> Vec<u32> {
        let mut uses = vec![0u32; self.nodes.len()];
        for n in &self.nodes {
            for a in &n.args {
                uses[a.index()] += 1;
            }
        }
        for (_, v) in &self.outputs {
            uses[v.index()] += 1;
        }
        uses
    }
}
