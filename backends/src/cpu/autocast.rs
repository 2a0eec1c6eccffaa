//! The bf16 yardstick: the CPU reference interpreter in f32, rounding to bf16
//! exactly where PyTorch's bf16 autocast rounds (`../shared/reference/pgref.py`
//! under `torch.autocast(dtype=bfloat16)`, as `torch_bf16_errors.py` runs it),
//! so that PyTorch's own bf16 error can be had for any model at any shape
//! without PyTorch. pgc's bf16 kernels are judged against it ([`Contract`]).
//!
//! What PyTorch does, and so what [`Autocast::analyze`] assigns per value:
//! - Linear layers (`Linear`, `MatMul`, `OuterSum`) and attention
//!   (`CausalAttention`, `CausalAttentionGrad`) are on autocast's bf16 list:
//!   their operands are rounded to bf16 (a parameter through its bf16 copy),
//!   they accumulate in f32, their result is bf16. Attention computes in f32
//!   between bf16 inputs and a bf16 result: PyTorch's CPU SDPA for GQA (and
//!   for any shape its fused kernel does not take) is the math path, which
//!   upcasts q, k, v.
//! - Every other op computes in its operands' dtype, one rounding per op:
//!   an element-wise op or reduction of bf16 values is bf16 (computed in f32,
//!   rounded once, as PyTorch's CPU kernels do); mixing a bf16 activation with
//!   an f32 one promotes to f32. Parameters and what is computed from
//!   parameters alone are cast to the activation's dtype where they meet one
//!   (pgref's `.to(x.dtype)`), after any arithmetic on them (fake
//!   quantization, sigmoid) and before layout ops; Python scalars and 0-dim
//!   tensors combine unrounded (CPU scalars). So the q/k RMS norms, rotary
//!   products (tables rounded to bf16), relu^2 and the softcap run in bf16;
//!   the residual stream, embeddings, other norms and the gated mixes stay
//!   f32; cross entropy is on autocast's f32 list.
//! - Autograd computes each op's gradient in that op's dtype and casts it to
//!   the dtype of the value it is the gradient of; gradients of a value are
//!   summed in its dtype. A parameter's gradient through its bf16 copy is
//!   rounded to bf16. `tanh` and `sigmoid` have fused backward kernels (one
//!   rounding); every other rule node rounds once.
//!
//! [`execute`] runs a graph this way; [`yardstick_errors`] gives the error of
//! that run against a reference per output.

use super::error::CpuError;
use super::real::Real;
use super::tensor::Tensor;
use pgc_ir::passes::autodiff::{self, Adjoints};
use pgc_ir::{BinaryFn, DType, Graph, Op, UnaryFn, ValueId};

/// The numerics contract for bf16: `err(pgc) <= k * err(yardstick) + floor`
/// per tensor, `err = max|a - b| / max|b|` against the float64 reference
/// (FlashAttention's test convention: k = 2, 3 with a softcap, as here).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Contract {
    pub k: f64,
    pub floor: f64,
}

/// The bound pgc's bf16 programs are held to.
pub const BF16_CONTRACT: Contract = Contract { k: 3.0, floor: 4e-3 };

impl Contract {
    /// The largest error allowed for a tensor whose yardstick error is `yard`.
    pub fn limit(&self, yard: f64) -> f64 {
        self.k * yard + self.floor
    }
    /// Whether `err` is within the bound (a NaN on either side fails).
    pub fn holds(&self, err: f64, yard: f64) -> bool {
        err.is_finite() && yard.is_finite() && err <= self.limit(yard)
    }
}

/// The ratio `err / yard` (how many yardsticks), infinite when the yardstick
/// is exactly 0 and `err` is not.
pub fn ratio(err: f64, yard: f64) -> f64 {
    if yard > 0.0 {
        err / yard
    } else if err == 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// The median of some ratios (NaN for none).
pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// A value's dtype under autocast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dt {
    Int,
    F32,
    Bf16,
}

/// Where one run rounds to bf16, per node of a graph.
#[derive(Clone, Debug)]
pub struct Autocast {
    /// The dtype each node computes in.
    pub compute: Vec<Dt>,
    /// The node's result is rounded to bf16.
    pub round_out: Vec<bool>,
    /// Operand positions rounded to bf16 before the node computes (those
    /// not already bf16 values).
    pub round_args: Vec<Vec<usize>>,
}

/// Round to the nearest bf16 (ties to even) and back.
pub fn round_bf16<F: Real>(x: F) -> F {
    F::from_f64(half::bf16::from_f64(x.to_f64()).to_f64())
}

fn is_layout(op: &Op) -> bool {
    matches!(op, Op::Reshape { .. } | Op::Permute { .. } | Op::Broadcast { .. } | Op::Index { .. })
}

/// Ops on autocast's bf16 list: operands cast to bf16, bf16 result.
fn is_bf16_op(op: &Op) -> bool {
    matches!(op, Op::Linear | Op::MatMul | Op::OuterSum | Op::CausalAttention { .. } | Op::CausalAttentionGrad { .. })
}

impl Autocast {
    /// The rounding of every node of `g`. A graph with `grad.*` outputs must
    /// be one `autodiff::backward` built (its gradients take the dtypes of
    /// their values); a forward graph needs nothing else.
    pub fn analyze(g: &Graph) -> Result<Self, CpuError> {
        let has_grads = g.outputs.iter().any(|(n, _)| n.starts_with("grad."));
        let adj = if has_grads {
            let scalars = g.outputs.iter().filter(|(n, v)| !n.starts_with("grad.") && g.ty(*v).numel() == 1);
            let found = scalars.clone().find_map(|(n, _)| autodiff::recover_adjoints(g, n));
            Some(found.ok_or_else(|| {
                CpuError::Invalid("bf16 autocast: the graph's gradients were not built by autodiff from one of its scalar outputs".into())
            })?)
        } else {
            None
        };
        Ok(Self::with_adjoints(g, adj.as_ref()))
    }

    fn with_adjoints(g: &Graph, adj: Option<&Adjoints>) -> Self {
        let n = g.nodes.len();
        let fwd_n = adj.map(|a| a.forward_nodes).unwrap_or(n);
        let is_float = |v: ValueId| g.ty(v).dtype == DType::F32;
        // Forward: weak values (parameters, scalars and what is computed
        // from them alone) take their consumer's dtype; the others get one.
        let mut weak = vec![false; n];
        let mut dt = vec![Dt::F32; n];
        for i in 0..fwd_n {
            let node = &g.nodes[i];
            let fargs: Vec<ValueId> = node.args.iter().copied().filter(|&a| is_float(a)).collect();
            if node.ty.dtype != DType::F32 {
                dt[i] = Dt::Int;
                continue;
            }
            match &node.op {
                Op::Param { .. } | Op::Scalar { .. } => weak[i] = true,
                _ if is_bf16_op(&node.op) => dt[i] = Dt::Bf16,
                Op::CrossEntropy | Op::CrossEntropyGrad | Op::Gather => dt[i] = Dt::F32,
                _ if !fargs.is_empty() && fargs.iter().all(|a| weak[a.index()]) && !matches!(node.op, Op::ScatterAdd { .. }) => {
                    weak[i] = true
                }
                _ => {
                    let strong: Vec<Dt> = fargs.iter().filter(|a| !weak[a.index()]).map(|a| dt[a.index()]).collect();
                    dt[i] = if strong.contains(&Dt::F32) || strong.is_empty() { Dt::F32 } else { Dt::Bf16 };
                }
            }
        }
        // Weak layout ops follow their consumers (the cast comes before a
        // reshape); other weak values are f32 (the cast comes after them).
        for i in (0..fwd_n).rev() {
            if !weak[i] || !is_layout(&g.nodes[i].op) {
                continue;
            }
            let mut users = g.nodes[i + 1..fwd_n].iter().enumerate().filter(|(_, u)| u.args.contains(&ValueId(i as u32)));
            let mut any = false;
            let all_bf16 = users.all(|(j, _)| {
                any = true;
                dt[i + 1 + j] == Dt::Bf16
            });
            if any && all_bf16 {
                dt[i] = Dt::Bf16;
            }
        }
        let mut compute = dt.clone();
        let mut round_out: Vec<bool> = (0..fwd_n).map(|i| dt[i] == Dt::Bf16 && !matches!(g.nodes[i].op, Op::Scalar { .. })).collect();
        // Backward: a rule's nodes compute in its forward op's dtype; a
        // gradient is cast to its value's dtype; sums of gradients are done
        // in the value's dtype.
        if let Some(adj) = adj {
            for i in fwd_n..n {
                let node = &g.nodes[i];
                let (rule, of) = adj.of(ValueId(i as u32)).unwrap_or((None, None));
                if node.ty.dtype != DType::F32 {
                    compute.push(Dt::Int);
                    round_out.push(false);
                    continue;
                }
                let d_rule = rule.map(|y| compute[y.index()]).unwrap_or(Dt::F32);
                let d_of = of.map(|x| dt[x.index()]).unwrap_or(Dt::F32);
                let accumulates = of.is_some()
                    && matches!(node.op, Op::Binary { f: BinaryFn::Add })
                    && node.args.iter().all(|a| a.index() >= fwd_n && adj.of(*a).and_then(|r| r.1) == of);
                let fused = rule.is_some_and(|y| matches!(g.node(y).op, Op::Unary { f: UnaryFn::Tanh | UnaryFn::Sigmoid }));
                let (c, r) = if matches!(node.op, Op::Scalar { .. }) {
                    (Dt::F32, false)
                } else if accumulates {
                    (d_of, d_of == Dt::Bf16)
                } else if of.is_some() {
                    (d_rule, d_rule == Dt::Bf16 || d_of == Dt::Bf16)
                } else {
                    (d_rule, d_rule == Dt::Bf16 && !fused)
                };
                compute.push(c);
                round_out.push(r);
            }
        }
        // Which values hold bf16 numbers already: rounded results and layout
        // views of them.
        let mut valued = vec![false; n];
        for i in 0..n {
            let node = &g.nodes[i];
            valued[i] = round_out[i] || (is_layout(&node.op) && node.args.first().is_some_and(|a| valued[a.index()]));
        }
        let round_args = (0..n)
            .map(|i| {
                let node = &g.nodes[i];
                if compute[i] != Dt::Bf16 {
                    return Vec::new();
                }
                let all = is_bf16_op(&node.op);
                node.args
                    .iter()
                    .enumerate()
                    .filter(|(_, &a)| {
                        let an = g.node(a);
                        is_float(a)
                            && !valued[a.index()]
                            && (all || (!matches!(an.op, Op::Scalar { .. }) && !an.ty.shape.is_empty()))
                    })
                    .map(|(k, _)| k)
                    .collect()
            })
            .collect();
        Autocast { compute, round_out, round_args }
    }
}

/// A copy of `t` with every float rounded to bf16 (int tensors unchanged).
pub(crate) fn round_tensor<F: Real>(t: Tensor<F>) -> Tensor<F> {
    match t.as_float() {
        None => t,
        Some(_) => {
            let shape = t.shape.clone();
            let mut v = t.into_float_vec();
            for x in v.iter_mut() {
                *x = round_bf16(*x);
            }
            Tensor::float(shape, v)
        }
    }
}

/// Rotary embedding as pgref writes it in bf16: tables computed in f32 and
/// rounded to bf16, each product and each sum rounded
/// (`x1 * cos + x2 * sin`, `-x1 * sin + x2 * cos`); `inverse` is its
/// adjoint as autograd forms it (`g1 * cos - g2 * sin`, `g1 * sin + g2 * cos`).
pub(crate) fn rope_bf16<F: Real>(x: &Tensor<F>, base: f64, inverse: bool) -> Tensor<F> {
    let r = x.shape.len();
    let (t, hd) = (x.shape[r - 2], x.shape[r - 1]);
    let half = hd / 2;
    let (cos, sin) = super::ops::rope_tables::<f32>(t, hd, base);
    let cb: Vec<F> = cos.iter().map(|&c| round_bf16(F::from_f64(c as f64))).collect();
    let sb: Vec<F> = sin.iter().map(|&s| round_bf16(F::from_f64(s as f64))).collect();
    let xf = x.f();
    let mut out = vec![F::ZERO; xf.len()];
    let rb = round_bf16::<F>;
    if hd > 0 {
        for (ri, (row, orow)) in xf.chunks(hd).zip(out.chunks_mut(hd)).enumerate() {
            let p = ri % t;
            let (c, s) = (&cb[p * half..(p + 1) * half], &sb[p * half..(p + 1) * half]);
            for j in 0..half {
                let (a, b) = (row[j], row[j + half]);
                if inverse {
                    orow[j] = rb(rb(a * c[j]) - rb(b * s[j]));
                    orow[j + half] = rb(rb(a * s[j]) + rb(b * c[j]));
                } else {
                    orow[j] = rb(rb(a * c[j]) + rb(b * s[j]));
                    orow[j + half] = rb(rb(-a * s[j]) + rb(b * c[j]));
                }
            }
        }
    }
    Tensor::float(x.shape.clone(), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_and_ratio() {
        let c = BF16_CONTRACT;
        assert!(c.holds(3.0 * 1e-2 + 4e-3, 1e-2));
        assert!(!c.holds(3.0 * 1e-2 + 4.1e-3, 1e-2));
        assert!(!c.holds(f64::NAN, 1e-2) && !c.holds(1e-3, f64::NAN));
        assert!(c.holds(4e-3, 0.0));
        assert_eq!(ratio(2e-2, 1e-2), 2.0);
        assert_eq!(ratio(0.0, 0.0), 0.0);
        assert_eq!(ratio(1e-9, 0.0), f64::INFINITY);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: to even (1).
        assert_eq!(round_bf16(1.0f32 + 2f32.powi(-8)), 1.0);
        assert_eq!(round_bf16(1.0f32 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert_eq!(round_bf16(-1.5f64), -1.5);
        assert!(round_bf16(f32::NAN).is_nan());
    }
}
