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

/// `[B, H, T, d]` output of causal attention.
pub fn forward<F: Real>(q: &Tensor<F>, k: &Tensor<F>, v: &Tensor<F>, scale: f64, pool: &mut Pool<F>) -> Tensor<F> {
    reference::forward_with(q, k, v, scale, ROWS, pool.take(q.numel()), &Single)
}

/// Gradients of causal attention w.r.t. q, k and v (those asked for in `want`).
pub fn backward<F: Real>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    dy: &Tensor<F>,
    scale: f64,
    want: [bool; 3],
    pool: &mut Pool<F>,
) -> [Option<Tensor<F>>; 3] {
    let mut take = |w: bool, len: usize| if w { pool.take(len) } else { Vec::new() };
    let bufs = [take(want[0], q.numel()), take(want[1], k.numel()), take(want[2], v.numel())];
    reference::backward_with(q, k, v, dy, scale, want, ROWS, bufs, &Single)
}
