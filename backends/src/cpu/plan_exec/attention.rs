//! Causal attention of the plan executor: the reference algorithm
//! (`cpu::attention`: query blocks against the keys they see, grouped
//! key/value heads) with the `gemm` crate for the per-block products in f32
//! (at these small shapes matrixmultiply is far from peak) and the outputs
//! from the buffer pool. In f64 the products stay on matrixmultiply, so f64
//! stays bitwise equal to the interpreter.

use super::super::attention::{self as reference, Linalg, Products, ROWS};
use super::super::real::{f32_slice, f32_slice_mut};
use super::super::{Real, Tensor};
use super::gemm::{gemm, gemm_acc, Threads};
use super::pool::Pool;
use pgc_ir::{Graph, Op, ValueId};
use std::collections::{HashMap, HashSet};
use super::vmath;

/// The plan executor's products, one thread each (the attention already
/// runs its blocks in parallel).
struct Single;

#[allow(clippy::too_many_arguments)]
impl<F: Real> Products<F> for Single {
    fn gemm(&self, m: usize, k: usize, n: usize, a: &[F], rsa: usize, csa: usize, b: &[F], rsb: usize, csb: usize, c: &mut [F]) {
        gemm(m, k, n, a, rsa, csa, b, rsb, csb, c, Threads::One)
    }
    fn gemm_acc(&self, m: usize, k: usize, n: usize, a: &[F], rsa: usize, csa: usize, b: &[F], rsb: usize, csb: usize, c: &mut [F]) {
        gemm_acc(m, k, n, a, rsa, csa, b, rsb, csb, c, Threads::One)
    }
    fn exp_shifted_sum(&self, row: &mut [F], max: F) -> F {
        match f32_slice_mut(row) {
            Some(r) => F::from_f64(vmath::exp_shifted_sum(r, max.to_f64() as f32) as f64),
            None => reference_exp_shifted_sum(row, max),
        }
    }
    fn dot(&self, a: &[F], b: &[F]) -> F {
        match (f32_slice(a), f32_slice(b)) {
            (Some(x), Some(y)) => F::from_f64(vmath::dot(x, y) as f64),
            _ => Linalg.dot(a, b),
        }
    }
}

/// The reference's row exponentials (f64 stays bitwise the interpreter's).
fn reference_exp_shifted_sum<F: Real>(row: &mut [F], max: F) -> F {
    Products::<F>::exp_shifted_sum(&Linalg, row, max)
}

/// The probabilities of forward attentions whose backward runs later in
/// the same run, by (q, k, v) value: the backward reuses them instead of
/// computing `softmax(q k^T)` again. Kept up to [`Kept::BUDGET`] bytes at a
/// time; beyond it the backward recomputes (the results are bitwise the
/// same either way).
pub struct Kept<F> {
    /// (q, k, v) of the attentions that have a backward in this graph.
    wanted: HashSet<[ValueId; 3]>,
    probs: HashMap<[ValueId; 3], Vec<F>>,
    bytes: usize,
}

impl<F: Real> Kept<F> {
    /// Bytes of probabilities kept at once.
    pub const BUDGET: usize = 512 << 20;

    pub fn new(g: &Graph) -> Self {
        let wanted = g.nodes.iter().filter(|n| matches!(n.op, Op::CausalAttentionGrad { .. })).map(|n| [n.args[0], n.args[1], n.args[2]]).collect();
        Kept { wanted, probs: HashMap::new(), bytes: 0 }
    }

    /// Return every kept buffer to `pool` (the run is over).
    pub fn release(self, pool: &mut Pool<F>) {
        for (_, v) in self.probs {
            pool.give_vec(v);
        }
    }
}

/// The (q, k, v) key of an attention node's first three operands.
fn key(args: &[ValueId]) -> [ValueId; 3] {
    [args[0], args[1], args[2]]
}

/// `[B, H, T, d]` output of causal attention `args` = (q, k, v).
pub fn forward<F: Real>(q: &Tensor<F>, k: &Tensor<F>, v: &Tensor<F>, scale: f64, args: &[ValueId], kept: &mut Kept<F>, pool: &mut Pool<F>) -> Tensor<F> {
    let len = q.shape[0] * q.shape[1] * reference::probs_len(q.shape[2], ROWS);
    let bytes = len * std::mem::size_of::<F>();
    let key = key(args);
    if kept.wanted.contains(&key) && !kept.probs.contains_key(&key) && kept.bytes + bytes <= Kept::<F>::BUDGET {
        let mut buf = pool.take(len);
        let out = reference::forward_with(q, k, v, scale, ROWS, pool.take(q.numel()), &Single, Some(&mut buf));
        kept.bytes += bytes;
        kept.probs.insert(key, buf);
        return out;
    }
    reference::forward_with(q, k, v, scale, ROWS, pool.take(q.numel()), &Single, None)
}

/// Gradients of causal attention `args` = (q, k, v, dy) w.r.t. q, k and v
/// (those asked for in `want`), with the forward's probabilities when kept.
pub fn backward<F: Real>([q, k, v, dy]: [&Tensor<F>; 4], scale: f64, want: [bool; 3], args: &[ValueId], kept: &mut Kept<F>, pool: &mut Pool<F>) -> [Option<Tensor<F>>; 3] {
    let bufs = reference::grad_bufs([q, k, v], want, |n| pool.take(n));
    let probs = kept.probs.remove(&key(args));
    let out = reference::backward_with(q, k, v, dy, scale, want, ROWS, bufs, &Single, probs.as_deref());
    if let Some(p) = probs {
        kept.bytes -= p.len() * std::mem::size_of::<F>();
        pool.give_vec(p);
    }
    out
}
