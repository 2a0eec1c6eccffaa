//! Matrix products of the plan executor.
//!
//! f32 products go through the `gemm` crate, whose AVX-512 kernels (chosen at
//! run time; AVX2+FMA or scalar kernels on other CPUs) are faster than
//! matrixmultiply at the model's shapes. Its summation order differs from the
//! interpreter's, so f32 results agree to rounding (about 1e-6 relative), not
//! bitwise. f64 products stay on `cpu::linalg` (matrixmultiply), so the f64
//! plan executor stays bitwise equal to the interpreter.

use super::super::linalg;
use super::super::{Real, Tensor};
use super::pool::Pool;
use std::any::TypeId;

/// Products smaller than this many multiply-adds run on one thread.
const PAR_FLOPS: usize = 1 << 20;

/// `c = a @ b`, `c` a contiguous row-major `m x n` buffer (overwritten); `a`
/// (`m x k`) and `b` (`k x n`) given by base slices and element strides.
/// `threads`: whether the product may use the rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn gemm<F: Real>(m: usize, k: usize, n: usize, a: &[F], rsa: usize, csa: usize, b: &[F], rsb: usize, csb: usize, c: &mut [F], threads: bool) {
    if TypeId::of::<F>() != TypeId::of::<f32>() {
        assert_eq!(c.len(), m * n);
        return linalg::gemm(m, k, n, a, rsa, csa, b, rsb, csb, c);
    }
    product(m, k, n, a, rsa, csa, b, rsb, csb, c, threads, false)
}

/// `c += a @ b` (see [`gemm`]).
#[allow(clippy::too_many_arguments)]
pub fn gemm_acc<F: Real>(m: usize, k: usize, n: usize, a: &[F], rsa: usize, csa: usize, b: &[F], rsb: usize, csb: usize, c: &mut [F], threads: bool) {
    if TypeId::of::<F>() != TypeId::of::<f32>() {
        assert_eq!(c.len(), m * n);
        return linalg::gemm_acc(m, k, n, a, rsa, csa, b, rsb, csb, c);
    }
    product(m, k, n, a, rsa, csa, b, rsb, csb, c, threads, true)
}

/// The f32 product through the gemm crate: `c = a @ b`, or `c += a @ b` when `acc`.
#[allow(clippy::too_many_arguments)]
fn product<F: Real>(m: usize, k: usize, n: usize, a: &[F], rsa: usize, csa: usize, b: &[F], rsb: usize, csb: usize, c: &mut [F], threads: bool, acc: bool) {
    assert!(TypeId::of::<F>() == TypeId::of::<f32>(), "gemm crate path is f32 only");
    assert_eq!(c.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            c.fill(F::ZERO);
        }
        return;
    }
    // Bounds: the last element each operand reaches must be in its slice.
    assert!((m - 1) * rsa + (k - 1) * csa < a.len(), "gemm: a out of bounds");
    assert!((k - 1) * rsb + (n - 1) * csb < b.len(), "gemm: b out of bounds");
    let par = if threads && m * n * k >= PAR_FLOPS && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: F is f32 (asserted); bounds checked; c is exclusively borrowed.
    unsafe {
        gemm::gemm::<f32>(
            m,
            n,
            k,
            c.as_mut_ptr() as *mut f32,
            1,
            n as isize,
            acc,
            a.as_ptr() as *const f32,
            csa as isize,
            rsa as isize,
            b.as_ptr() as *const f32,
            csb as isize,
            rsb as isize,
            if acc { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// `x[..., K] @ w[N, K]^T`.
pub fn linear<F: Real>(x: &Tensor<F>, w: &Tensor<F>, pool: &mut Pool<F>) -> Tensor<F> {
    let (n, k) = (w.shape[0], w.shape[1]);
    let m = x.numel() / k.max(1);
    let mut out = pool.take(m * n);
    gemm(m, k, n, x.f(), k, 1, w.f(), 1, k, &mut out, true);
    let mut s = x.shape.clone();
    *s.last_mut().unwrap() = n;
    Tensor::float(s, out)
}

/// `dy[..., N] @ w[N, K]`.
pub fn matmul<F: Real>(dy: &Tensor<F>, w: &Tensor<F>, pool: &mut Pool<F>) -> Tensor<F> {
    let (n, k) = (w.shape[0], w.shape[1]);
    let m = dy.numel() / n.max(1);
    let mut out = pool.take(m * k);
    gemm(m, n, k, dy.f(), n, 1, w.f(), k, 1, &mut out, true);
    let mut s = dy.shape.clone();
    *s.last_mut().unwrap() = k;
    Tensor::float(s, out)
}

/// `sum over leading axes of dy[..., N]^T x[..., K]` : `[N, K]`.
pub fn outer_sum<F: Real>(dy: &Tensor<F>, x: &Tensor<F>, pool: &mut Pool<F>) -> Tensor<F> {
    let n = *dy.shape.last().unwrap();
    let k = *x.shape.last().unwrap();
    let m = dy.numel() / n.max(1);
    let mut out = pool.take(n * k);
    gemm(n, m, k, dy.f(), 1, n, x.f(), k, 1, &mut out, true);
    Tensor::float(vec![n, k], out)
}
