//! The primitive operations of the graph and their typing rules.
//!
//! Every node computes one tensor. Ops are plain data (serde enums) so graphs
//! can be matched, rewritten, printed and serialized. Forward-only primitives
//! and the extra primitives autodiff needs for backward graphs live together:
//! a backward graph is an ordinary graph.

use crate::types::{broadcast_shapes, broadcasts_to, numel, DType, Shape, TensorType};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnaryFn {
    Neg,
    Abs,
    Relu,
    /// 1 where x > 0, else 0 (derivative of relu).
    Step,
    Square,
    Sqrt,
    Rsqrt,
    Recip,
    Sigmoid,
    Tanh,
    Exp,
    Log,
    /// `log(1 + exp(x))`.
    Softplus,
}

impl UnaryFn {
    /// Every unary function (the text form, the DSL and the tests iterate it).
    pub const ALL: [UnaryFn; 13] = [
        UnaryFn::Neg,
        UnaryFn::Abs,
        UnaryFn::Relu,
        UnaryFn::Step,
        UnaryFn::Square,
        UnaryFn::Sqrt,
        UnaryFn::Rsqrt,
        UnaryFn::Recip,
        UnaryFn::Sigmoid,
        UnaryFn::Tanh,
        UnaryFn::Exp,
        UnaryFn::Log,
        UnaryFn::Softplus,
    ];

    /// The mnemonic: the op's name in the text form and (but `step`) the DSL
    /// builtin; also its serde name.
    pub fn name(self) -> &'static str {
        match self {
            UnaryFn::Neg => "neg",
            UnaryFn::Abs => "abs",
            UnaryFn::Relu => "relu",
            UnaryFn::Step => "step",
            UnaryFn::Square => "square",
            UnaryFn::Sqrt => "sqrt",
            UnaryFn::Rsqrt => "rsqrt",
            UnaryFn::Recip => "recip",
            UnaryFn::Sigmoid => "sigmoid",
            UnaryFn::Tanh => "tanh",
            UnaryFn::Exp => "exp",
            UnaryFn::Log => "log",
            UnaryFn::Softplus => "softplus",
        }
    }

    pub fn from_name(name: &str) -> Option<UnaryFn> {
        UnaryFn::ALL.into_iter().find(|u| u.name() == name)
    }

    /// The value at `x` in f64, as the tensor op computes it (NaN propagates
    /// through relu); the frontend folds constant arguments with it.
    pub fn eval(self, x: f64) -> f64 {
        match self {
            UnaryFn::Neg => -x,
            UnaryFn::Abs => x.abs(),
            UnaryFn::Relu => {
                if x > 0.0 || x.is_nan() {
                    x
                } else {
                    0.0
                }
            }
            UnaryFn::Step => (x > 0.0) as u8 as f64,
            UnaryFn::Square => x * x,
            UnaryFn::Sqrt => x.sqrt(),
            UnaryFn::Rsqrt => 1.0 / x.sqrt(),
            UnaryFn::Recip => 1.0 / x,
            UnaryFn::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            UnaryFn::Tanh => x.tanh(),
            UnaryFn::Exp => x.exp(),
            UnaryFn::Log => x.ln(),
            UnaryFn::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryFn {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    /// 1.0 where a == b, else 0.0.
    Eq,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReduceFn {
    Sum,
    Mean,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttnPart {
    Q,
    K,
    V,
}

/// Index of a parameter in `Graph::params`: the IR and the plan refer to a
/// parameter by it; its name (the state_dict key) is `Graph::params[id].name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ParamId(pub u32);

impl ParamId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A primitive operation. Operand order is fixed per op and documented on the variant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A run-time input (token ids, targets). No operands.
    Input { name: String, ty: TensorType },
    /// A parameter (an entry of `Graph::params`). No operands.
    Param { id: ParamId },
    /// A float scalar constant of shape [].
    Scalar { value: f64 },
    /// Element-wise function of one operand.
    Unary { f: UnaryFn },
    /// `x > 0 ? x : slope * x`.
    LeakyRelu { slope: f64 },
    /// `x > 0 ? 1 : slope` (derivative of leaky relu).
    LeakyStep { slope: f64 },
    /// Element-wise function of two operands with numpy broadcasting.
    Binary { f: BinaryFn },
    /// Reduction over one axis.
    Reduce { f: ReduceFn, axis: usize, keepdim: bool },
    /// Same elements, new shape.
    Reshape { shape: Shape },
    /// out.shape[i] = in.shape[perm[i]].
    Permute { perm: Vec<usize> },
    /// Broadcast (numpy rules) to `shape`.
    Broadcast { shape: Shape },
    /// Sum over broadcast axes down to `shape` (the adjoint of Broadcast).
    SumTo { shape: Shape },
    /// Select `index` along `axis`, dropping that axis.
    Index { axis: usize, index: usize },
    /// Adjoint of Index: a tensor with `axis` of length `size`, zero except at `index`.
    Unindex { axis: usize, index: usize, size: usize },
    /// `(x[..., K], w[N, K]) -> x @ w^T : [..., N]`.
    Linear,
    /// `(dy[..., N], w[N, K]) -> dy @ w : [..., K]` (input gradient of Linear).
    MatMul,
    /// `(dy[..., N], x[..., K]) -> sum over leading axes of dy^T x : [N, K]`
    /// (weight gradient of Linear).
    OuterSum,
    /// `(table[R, C], ids[...] i32) -> [..., C]` embedding gather.
    Gather,
    /// `(ids[...] i32, dy[..., C]) -> [rows, C]` scatter-add (adjoint of Gather).
    ScatterAdd { rows: usize },
    /// `ids[B, T] i32 -> i32[B, T]` hashed bigram bucket (spec/MODEL.md step 1).
    BigramHash { buckets: usize },
    /// `out[.., t, ..] = x[.., t - offset, ..]` along `axis`, zero where out of range.
    /// offset 1 is the shift-by-one-token of SmearGate; -1 its adjoint.
    Shift { axis: usize, offset: i64 },
    /// Rotary embedding of `x[..., T, hd]` (positions along axis -2, halves
    /// rotated against each other). `inverse` rotates by the negated angle
    /// (the adjoint).
    Rope { base: f64, inverse: bool },
    /// `(q[B, H, T, d], k[B, Hk, T, d], v[B, Hk, T, d]) -> [B, H, T, d]`:
    /// causal softmax attention, query head h reads kv head h / (H / Hk).
    CausalAttention { scale: f64 },
    /// `(q, k, v, dy) -> gradient w.r.t. q, k or v` of CausalAttention.
    CausalAttentionGrad { scale: f64, wrt: AttnPart },
    /// Per-row (last axis) fake quantization to `bits` (spec/MODEL.md). The
    /// gradient passes straight through.
    FakeQuant { bits: u32 },
    /// `(logits[..., V], targets[...] i32) -> [] mean cross entropy`.
    CrossEntropy,
    /// `(logits[..., V], targets[...] i32, dloss[]) -> dlogits[..., V]`.
    CrossEntropyGrad,
}

/// A typing error of one op application, without location (the caller adds it).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct TypeError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, TypeError> {
    Err(TypeError(msg.into()))
}

impl Op {
    /// Short mnemonic used in the text form and messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::Scalar { .. } => "scalar",
            Op::Unary { f } => f.name(),
            Op::LeakyRelu { .. } => "leaky_relu",
            Op::LeakyStep { .. } => "leaky_step",
            Op::Binary { f } => match f {
                BinaryFn::Add => "add",
                BinaryFn::Sub => "sub",
                BinaryFn::Mul => "mul",
                BinaryFn::Div => "div",
                BinaryFn::Max => "maximum",
                BinaryFn::Min => "minimum",
                BinaryFn::Eq => "eq",
            },
            Op::Reduce { f, .. } => match f {
                ReduceFn::Sum => "sum",
                ReduceFn::Mean => "mean",
                ReduceFn::Max => "max",
            },
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::Broadcast { .. } => "broadcast",
            Op::SumTo { .. } => "sum_to",
            Op::Index { .. } => "index",
            Op::Unindex { .. } => "unindex",
            Op::Linear => "linear",
            Op::MatMul => "matmul",
            Op::OuterSum => "outer_sum",
            Op::Gather => "gather",
            Op::ScatterAdd { .. } => "scatter_add",
            Op::BigramHash { .. } => "bigram_hash",
            Op::Shift { .. } => "shift",
            Op::Rope { .. } => "rope",
            Op::CausalAttention { .. } => "causal_attention",
            Op::CausalAttentionGrad { .. } => "causal_attention_grad",
            Op::FakeQuant { .. } => "fake_quant",
            Op::CrossEntropy => "cross_entropy",
            Op::CrossEntropyGrad => "cross_entropy_grad",
        }
    }

    /// Number of operands the op takes (listed per op: a new op must say).
    pub fn arity(&self) -> usize {
        match self {
            Op::Input { .. } | Op::Param { .. } | Op::Scalar { .. } => 0,
            Op::Unary { .. }
            | Op::LeakyRelu { .. }
            | Op::LeakyStep { .. }
            | Op::Reduce { .. }
            | Op::Reshape { .. }
            | Op::Permute { .. }
            | Op::Broadcast { .. }
            | Op::SumTo { .. }
            | Op::Index { .. }
            | Op::Unindex { .. }
            | Op::BigramHash { .. }
            | Op::Shift { .. }
            | Op::Rope { .. }
            | Op::FakeQuant { .. } => 1,
            Op::Binary { .. }
            | Op::Linear
            | Op::MatMul
            | Op::OuterSum
            | Op::Gather
            | Op::ScatterAdd { .. }
            | Op::CrossEntropy => 2,
            Op::CausalAttention { .. } | Op::CrossEntropyGrad => 3,
            Op::CausalAttentionGrad { .. } => 4,
        }
    }

    /// The result type of applying this op to operands of the given types.
    /// `param_ty` resolves a `Param` by its id.
    pub fn infer(
        &self,
        args: &[&TensorType],
        param_ty: &dyn Fn(ParamId) -> Option<TensorType>,
    ) -> Result<TensorType, TypeError> {
        if args.len() != self.arity() {
            return err(format!("{} takes {} operand(s), got {}", self.name(), self.arity(), args.len()));
        }
        let float = |i: usize| -> Result<&TensorType, TypeError> {
            if args[i].dtype != DType::F32 {
                return err(format!("{}: operand {} must be f32, got {}", self.name(), i + 1, args[i]));
            }
            Ok(args[i])
        };
        let int = |i: usize| -> Result<&TensorType, TypeError> {
            if args[i].dtype != DType::I32 {
                return err(format!("{}: operand {} must be i32 token ids, got {}", self.name(), i + 1, args[i]));
            }
            Ok(args[i])
        };
        let axis_ok = |axis: usize, rank: usize| -> Result<(), TypeError> {
            if axis >= rank {
                return err(format!("{}: axis {axis} out of range for rank {rank}", self.name()));
            }
            Ok(())
        };
        match self {
            Op::Input { ty, .. } => Ok(ty.clone()),
            Op::Param { id } => param_ty(*id).ok_or_else(|| TypeError(format!("unknown parameter #{}", id.0))),
            Op::Scalar { .. } => Ok(TensorType::f32(vec![])),
            Op::Unary { .. } | Op::LeakyRelu { .. } | Op::LeakyStep { .. } | Op::FakeQuant { .. } => {
                let x = float(0)?;
                if let Op::FakeQuant { bits } = self {
                    if !(2..=8).contains(bits) {
                        return err(format!("fake_quant: bits must be 2..=8, got {bits}"));
                    }
                    if x.rank() != 2 {
                        return err(format!("fake_quant: expects a matrix (per-row scales), got {x}"));
                    }
                }
                Ok(x.clone())
            }
            Op::Binary { .. } => {
                let (a, b) = (float(0)?, float(1)?);
                match broadcast_shapes(&a.shape, &b.shape) {
                    Some(s) => Ok(TensorType::f32(s)),
                    None => err(format!("{}: shapes {a} and {b} do not broadcast", self.name())),
                }
            }
            Op::Reduce { axis, keepdim, .. } => {
                let x = float(0)?;
                axis_ok(*axis, x.rank())?;
                let mut s = x.shape.clone();
                if *keepdim {
                    s[*axis] = 1;
                } else {
                    s.remove(*axis);
                }
                Ok(TensorType::f32(s))
            }
            Op::Reshape { shape } => {
                if numel(shape) != args[0].numel() {
                    return err(format!("reshape: {} has {} elements, target {:?} has {}", args[0], args[0].numel(), shape, numel(shape)));
                }
                Ok(TensorType::new(args[0].dtype, shape.clone()))
            }
            Op::Permute { perm } => {
                let x = args[0];
                let mut seen = vec![false; x.rank()];
                if perm.len() != x.rank() || perm.iter().any(|&p| p >= x.rank() || std::mem::replace(&mut seen[p], true)) {
                    return err(format!("permute: {perm:?} is not a permutation of the {} axes of {x}", x.rank()));
                }
                Ok(TensorType::new(x.dtype, perm.iter().map(|&p| x.shape[p]).collect::<Shape>()))
            }
            Op::Broadcast { shape } => {
                let x = float(0)?;
                if !broadcasts_to(&x.shape, shape) {
                    return err(format!("broadcast: {x} does not broadcast to {shape:?}"));
                }
                Ok(TensorType::f32(shape.clone()))
            }
            Op::SumTo { shape } => {
                let x = float(0)?;
                if !broadcasts_to(shape, &x.shape) {
                    return err(format!("sum_to: {shape:?} does not broadcast to {x}"));
                }
                Ok(TensorType::f32(shape.clone()))
            }
            Op::Index { axis, index } => {
                let x = args[0];
                axis_ok(*axis, x.rank())?;
                if *index >= x.shape[*axis] {
                    return err(format!("index {index} out of range for axis {axis} of {x}"));
                }
                let mut s = x.shape.clone();
                s.remove(*axis);
                Ok(TensorType::new(x.dtype, s))
            }
            Op::Unindex { axis, index, size } => {
                let x = float(0)?;
                if *axis > x.rank() || index >= size {
                    return err(format!("unindex: bad axis {axis} / index {index} of {size} for {x}"));
                }
                let mut s = x.shape.clone();
                s.insert(*axis, *size);
                Ok(TensorType::f32(s))
            }
            Op::Linear | Op::MatMul => {
                let (x, w) = (float(0)?, float(1)?);
                if w.rank() != 2 || x.rank() < 1 {
                    return err(format!("{}: expects x[..., K] and a matrix, got {x} and {w}", self.name()));
                }
                let (k_in, n_out) = if matches!(self, Op::Linear) { (w.shape[1], w.shape[0]) } else { (w.shape[0], w.shape[1]) };
                if x.shape[x.rank() - 1] != k_in {
                    return err(format!("{}: inner dimensions differ: {x} and weight {w}", self.name()));
                }
                let mut s = x.shape.clone();
                *s.last_mut().unwrap() = n_out;
                Ok(TensorType::f32(s))
            }
            Op::OuterSum => {
                let (dy, x) = (float(0)?, float(1)?);
                if dy.rank() < 1 || dy.rank() != x.rank() || dy.shape[..dy.rank() - 1] != x.shape[..x.rank() - 1] {
                    return err(format!("outer_sum: leading axes differ: {dy} and {x}"));
                }
                Ok(TensorType::f32(vec![dy.shape[dy.rank() - 1], x.shape[x.rank() - 1]]))
            }
            Op::Gather => {
                let (t, ids) = (float(0)?, int(1)?);
                if t.rank() != 2 {
                    return err(format!("gather: table must be a matrix, got {t}"));
                }
                let mut s = ids.shape.clone();
                s.push(t.shape[1]);
                Ok(TensorType::f32(s))
            }
            Op::ScatterAdd { rows } => {
                let (ids, dy) = (int(0)?, float(1)?);
                if dy.rank() != ids.rank() + 1 || dy.shape[..ids.rank()] != ids.shape[..] {
                    return err(format!("scatter_add: {dy} does not match ids {ids}"));
                }
                Ok(TensorType::f32(vec![*rows, dy.shape[dy.rank() - 1]]))
            }
            Op::BigramHash { buckets } => {
                let ids = int(0)?;
                if ids.rank() != 2 || *buckets < 2 {
                    return err(format!("bigram_hash: expects ids[B, T] and at least 2 buckets, got {ids} and {buckets}"));
                }
                Ok(ids.clone())
            }
            Op::Shift { axis, .. } => {
                axis_ok(*axis, args[0].rank())?;
                Ok(float(0)?.clone())
            }
            Op::Rope { .. } => {
                let x = float(0)?;
                if x.rank() < 2 || x.shape[x.rank() - 1] % 2 != 0 {
                    return err(format!("rope: expects x[..., T, head_dim] with an even head_dim, got {x}"));
                }
                Ok(x.clone())
            }
            Op::CausalAttention { .. } | Op::CausalAttentionGrad { .. } => {
                let (q, k, v) = (float(0)?, float(1)?, float(2)?);
                if q.rank() != 4 || k.shape != v.shape || k.rank() != 4 {
                    return err(format!("causal_attention: expects q[B,H,T,d], k and v [B,Hk,T,d]; got {q}, {k}, {v}"));
                }
                let (b, h, t, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
                let hk = k.shape[1];
                if k.shape[0] != b || k.shape[2] != t || k.shape[3] != d || hk == 0 || h % hk != 0 {
                    return err(format!("causal_attention: q {q} and k/v {k} disagree (heads must be a multiple of kv heads)"));
                }
                match self {
                    Op::CausalAttentionGrad { wrt, .. } => {
                        if float(3)?.shape != q.shape {
                            return err(format!("causal_attention_grad: dy {} must have q's shape {q}", args[3]));
                        }
                        Ok(match wrt {
                            AttnPart::Q => q.clone(),
                            AttnPart::K => k.clone(),
                            AttnPart::V => v.clone(),
                        })
                    }
                    _ => Ok(q.clone()),
                }
            }
            Op::CrossEntropy | Op::CrossEntropyGrad => {
                let (z, t) = (float(0)?, int(1)?);
                if z.rank() != t.rank() + 1 || z.shape[..t.rank()] != t.shape[..] {
                    return err(format!("cross_entropy: logits {z} do not match targets {t}"));
                }
                if matches!(self, Op::CrossEntropyGrad) {
                    if float(2)?.rank() != 0 {
                        return err("cross_entropy_grad: dloss must be a scalar");
                    }
                    return Ok(z.clone());
                }
                Ok(TensorType::f32(vec![]))
            }
        }
    }
}
