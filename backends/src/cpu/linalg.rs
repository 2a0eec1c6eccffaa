//! Matrix products through `matrixmultiply`, split over the rayon threads.

use super::ops::SendPtr;
use super::real::Real;
use super::tensor::Tensor;
use rayon::prelude::*;

/// Products smaller than this many multiply-adds run on one thread.
const PAR_FLOPS: usize = 1 << 20;

/// `c = a @ b`, `c` a contiguous row-major `m x n` buffer (overwritten); `a`
/// (`m x k`) and `b` (`k x n`) given by base slices and element strides.
#[allow(clippy::too_many_arguments)]
pub fn gemm<F: Real>(m: usize, k: usize, n: usize, a: &[F], rsa: usize, csa: usize, b: &[F], rsb: usize, csb: usize, c: &mut [F]) {
    gemm_beta(m, k, n, a, rsa, csa, b, rsb, csb, F::ZERO, c)
}

/// `c += a @ b` (see [`gemm`]).
#[allow(clippy::too_many_arguments)]
pub fn gemm_acc<F: Real>(m: usize, k: usize, n: usize, a: &[F], rsa: usize, csa: usize, b: &[F], rsb: usize, csb: usize, c: &mut [F]) {
    gemm_beta(m, k, n, a, rsa, csa, b, rsb, csb, F::ONE, c)
}

/// `c = a @ b + beta c`; `beta` is 0 (overwrite, `c` may hold anything) or 1.
#[allow(clippy::too_many_arguments)]
fn gemm_beta<F: Real>(m: usize, k: usize, n: usize, a: &[F], rsa: usize, csa: usize, b: &[F], rsb: usize, csb: usize, beta: F, c: &mut [F]) {
    assert_eq!(c.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if beta == F::ZERO {
            c.fill(F::ZERO);
        }
        return;
    }
    // Bounds: the last element each operand reaches must be in its slice.
    assert!((m - 1) * rsa + (k - 1) * csa < a.len(), "gemm: a out of bounds");
    assert!((k - 1) * rsb + (n - 1) * csb < b.len(), "gemm: b out of bounds");
    let threads = rayon::current_num_threads().max(1);
    let (ap, bp, cp) = (a.as_ptr() as usize, b.as_ptr() as usize, SendPtr(c.as_mut_ptr()));
    let call = |m0: usize, mc: usize, n0: usize, nc: usize| unsafe {
        (F::GEMM)(
            mc,
            k,
            nc,
            F::ONE,
            (ap as *const F).add(m0 * rsa),
            rsa as isize,
            csa as isize,
            (bp as *const F).add(n0 * csb),
            rsb as isize,
            csb as isize,
            beta,
            cp.get().add(m0 * n + n0),
            n as isize,
            1,
        )
    };
    if threads == 1 || m * n * k < PAR_FLOPS {
        call(0, m, 0, n);
        return;
    }
    if m >= n {
        let step = m.div_ceil(threads).next_multiple_of(8).min(m);
        (0..m.div_ceil(step)).into_par_iter().for_each(|i| {
            let m0 = i * step;
            call(m0, step.min(m - m0), 0, n)
        });
    } else {
        let step = n.div_ceil(threads).next_multiple_of(8).min(n);
        (0..n.div_ceil(step)).into_par_iter().for_each(|i| {
            let n0 = i * step;
            call(0, m, n0, step.min(n - n0))
        });
    }
}

/// `x[..., K] @ w[N, K]^T`.
pub fn linear<F: Real>(x: &Tensor<F>, w: &Tensor<F>) -> Tensor<F> {
    let (n, k) = (w.shape[0], w.shape[1]);
    let m = x.numel() / k.max(1);
    let mut out = vec![F::ZERO; m * n];
    gemm(m, k, n, x.f(), k, 1, w.f(), 1, k, &mut out);
    let mut s = x.shape.clone();
    *s.last_mut().unwrap() = n;
    Tensor::float(s, out)
}

/// `dy[..., N] @ w[N, K]`.
pub fn matmul<F: Real>(dy: &Tensor<F>, w: &Tensor<F>) -> Tensor<F> {
    let (n, k) = (w.shape[0], w.shape[1]);
    let m = dy.numel() / n.max(1);
    let mut out = vec![F::ZERO; m * k];
    gemm(m, n, k, dy.f(), n, 1, w.f(), k, 1, &mut out);
    let mut s = dy.shape.clone();
    *s.last_mut().unwrap() = k;
    Tensor::float(s, out)
}

/// `sum over leading axes of dy[..., N]^T x[..., K]` : `[N, K]`.
pub fn outer_sum<F: Real>(dy: &Tensor<F>, x: &Tensor<F>) -> Tensor<F> {
    let n = *dy.shape.last().unwrap();
    let k = *x.shape.last().unwrap();
    let m = dy.numel() / n.max(1);
    let mut out = vec![F::ZERO; n * k];
    gemm(n, m, k, dy.f(), 1, n, x.f(), k, 1, &mut out);
    Tensor::float(vec![n, k], out)
}
