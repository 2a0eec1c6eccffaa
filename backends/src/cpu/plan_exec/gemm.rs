//! Matrix products of the plan executor.
//!
//! f32 products go through the `gemm` crate, whose AVX-512 kernels (chosen at
//! run time; AVX2+FMA or scalar kernels on other CPUs) are faster than
//! matrixmultiply at the model's shapes. Its summation order differs from the
//! interpreter's, so f32 results agree to rounding (about 1e-6 relative), not
//! bitwise. f64 products stay on `cpu::linalg` (matrixmultiply), so the f64
//! plan executor stays bitwise equal to the interpreter.
//!
//! Large f32 products run as two halves of the output (rows or columns, see
//! [`Threads`]) on two threads, each a single-threaded crate call; a
//! column-major right operand (the weight of `x @ w^T`) is first copied
//! row-major, which the crate packs far faster.

use super::super::linalg;
use super::super::{Real, Tensor};
use super::pool::Pool;
use std::any::TypeId;

/// Products smaller than this many multiply-adds run on one thread.
const PAR_FLOPS: usize = 1 << 20;

/// How a product uses the rayon pool.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Threads {
    /// One thread (the caller already runs in parallel).
    One,
    /// Two halves of the output's rows, one product each, in parallel.
    Rows,
    /// Two halves of the output's columns, one product each, in parallel.
    Cols,
}

/// `c = a @ b`, `c` a contiguous row-major `m x n` buffer (overwritten); `a`
/// (`m x k`) and `b` (`k x n`) given by base slices and element strides.
#[allow(clippy::too_many_arguments)]
pub fn gemm<F: Real>(m: usize, k: usize, n: usize, a: &[F], rsa: usize, csa: usize, b: &[F], rsb: usize, csb: usize, c: &mut [F], threads: Threads) {
    gemm_into(m, k, n, a, rsa, csa, b, rsb, csb, c, threads, false)
}

/// `c += a @ b` (see [`gemm`]).
#[allow(clippy::too_many_arguments)]
pub fn gemm_acc<F: Real>(m: usize, k: usize, n: usize, a: &[F], rsa: usize, csa: usize, b: &[F], rsb: usize, csb: usize, c: &mut [F], threads: Threads) {
    gemm_into(m, k, n, a, rsa, csa, b, rsb, csb, c, threads, true)
}

/// [`gemm`], or [`gemm_acc`] when `acc`: f32 through the gemm crate, f64 through [`linalg`].
#[allow(clippy::too_many_arguments)]
fn gemm_into<F: Real>(m: usize, k: usize, n: usize, a: &[F], rsa: usize, csa: usize, b: &[F], rsb: usize, csb: usize, c: &mut [F], threads: Threads, acc: bool) {
    if TypeId::of::<F>() != TypeId::of::<f32>() {
        assert_eq!(c.len(), m * n);
        let f = if acc { linalg::gemm_acc } else { linalg::gemm };
        return f(m, k, n, a, rsa, csa, b, rsb, csb, c);
    }
    product(m, k, n, a, rsa, csa, b, rsb, csb, c, threads, acc)
}

/// The f32 product through the gemm crate: `c = a @ b`, or `c += a @ b` when `acc`.
#[allow(clippy::too_many_arguments)]
fn product<F: Real>(m: usize, k: usize, n: usize, a: &[F], rsa: usize, csa: usize, b: &[F], rsb: usize, csb: usize, c: &mut [F], threads: Threads, acc: bool) {
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
    let large = m * n * k >= PAR_FLOPS;
    // The crate packs a column-major `b` one strided element at a time
    // (about 1 ns each); a blocked transpose into row-major scratch costs
    // less than half that, and then packing is a straight copy.
    let transpose_b = large && rsb == 1 && csb != 1;
    let block =
        Block { a: a.as_ptr() as *const f32, rsa, csa, b: b.as_ptr() as *const f32, rsb, csb, c: c.as_mut_ptr() as *mut f32, ldc: n, k, acc, transpose_b };
    let split = if !large || rayon::current_num_threads() < 2 { Threads::One } else { threads };
    // Two independent halves rather than the crate's own threading: each
    // thread packs only its half of the operands, and at these shapes
    // (a few hundred rows) the crate's finer-grained parallel loop spends
    // more time waking and waiting than it gains.
    match split {
        Threads::One => block.run(0..m, 0..n),
        Threads::Rows => {
            let h = half(m);
            rayon::join(|| block.run(0..h, 0..n), || block.run(h..m, 0..n));
        }
        Threads::Cols => {
            let h = half(n);
            rayon::join(|| block.run(0..m, 0..h), || block.run(0..m, h..n));
        }
    }
}

/// Where a length splits in two for [`Threads::Rows`]/[`Threads::Cols`]:
/// the middle, rounded up to a multiple of 16 (whole register tiles).
fn half(len: usize) -> usize {
    (len / 2).div_ceil(16).saturating_mul(16).min(len)
}

/// One f32 product's operands as raw parts, so that two threads can compute
/// disjoint blocks of `c`.
struct Block {
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    rsb: usize,
    csb: usize,
    c: *mut f32,
    ldc: usize,
    k: usize,
    acc: bool,
    /// Copy `b`'s columns into row-major scratch first.
    transpose_b: bool,
}

thread_local! {
    /// Per-thread scratch for [`Block::transpose_b`]: reused, so large
    /// copies do not fault in fresh pages on every product.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `dst[kk * n + j] = b[kk * rsb + j * csb]` for `kk < k`, `j < n`, in
/// 16 x 16 tiles (reads and writes each stay within a few cache lines).
///
/// # Safety
/// `b` must be valid for every index read.
unsafe fn copy_row_major(b: *const f32, rsb: usize, csb: usize, k: usize, n: usize, dst: &mut [f32]) {
    const TILE: usize = 16;
    for k0 in (0..k).step_by(TILE) {
        let k1 = (k0 + TILE).min(k);
        for j0 in (0..n).step_by(TILE) {
            let j1 = (j0 + TILE).min(n);
            for j in j0..j1 {
                let col = b.add(j * csb);
                for kk in k0..k1 {
                    dst[kk * n + j] = *col.add(kk * rsb);
                }
            }
        }
    }
}

// SAFETY: the operands are only read; `run` calls of one product write
// disjoint rows/columns of `c`, which the caller borrows exclusively.
unsafe impl Sync for Block {}

impl Block {
    /// `c[rows, cols] (+)= a[rows, :] @ b[:, cols]` on this thread.
    fn run(&self, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) {
        if rows.is_empty() || cols.is_empty() {
            return;
        }
        if self.transpose_b {
            let n = cols.len();
            return SCRATCH.with_borrow_mut(|scratch| {
                scratch.resize(self.k * n, 0.0);
                // SAFETY: as below; the scratch is this thread's own.
                unsafe {
                    copy_row_major(self.b.add(cols.start * self.csb), self.rsb, self.csb, self.k, n, scratch);
                    let b = Block { b: scratch.as_ptr(), rsb: n, csb: 1, c: self.c.add(cols.start), transpose_b: false, ..*self };
                    b.run(rows, 0..n);
                }
            });
        }
        // SAFETY: `product` checked that a, b and c cover every index the
        // full product reaches; these ranges lie within it.
        unsafe {
            gemm::gemm::<f32>(
                rows.len(),
                cols.len(),
                self.k,
                self.c.add(rows.start * self.ldc + cols.start),
                1,
                self.ldc as isize,
                self.acc,
                self.a.add(rows.start * self.rsa),
                self.csa as isize,
                self.rsa as isize,
                self.b.add(cols.start * self.csb),
                self.csb as isize,
                self.rsb as isize,
                if self.acc { 1.0 } else { 0.0 },
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    }
}

/// `x[..., K] @ w[N, K]^T`.
pub fn linear<F: Real>(x: &Tensor<F>, w: &Tensor<F>, pool: &mut Pool<F>) -> Tensor<F> {
    let (n, k) = (w.shape[0], w.shape[1]);
    let m = x.numel() / k.max(1);
    let mut out = pool.take(m * n);
    gemm(m, k, n, x.f(), k, 1, w.f(), 1, k, &mut out, Threads::Cols);
    let mut s = x.shape.clone();
    *s.last_mut().unwrap() = n;
    Tensor::float(s, out)
}

/// `dy[..., N] @ w[N, K]`.
pub fn matmul<F: Real>(dy: &Tensor<F>, w: &Tensor<F>, pool: &mut Pool<F>) -> Tensor<F> {
    let (n, k) = (w.shape[0], w.shape[1]);
    let m = dy.numel() / n.max(1);
    let mut out = pool.take(m * k);
    gemm(m, n, k, dy.f(), n, 1, w.f(), k, 1, &mut out, Threads::Cols);
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
    gemm(n, m, k, dy.f(), 1, n, x.f(), k, 1, &mut out, Threads::Rows);
    Tensor::float(vec![n, k], out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every threading split, with `b` row- or column-major (the transposed
    /// copy), overwriting or accumulating, against a naive f64 product; the
    /// sizes are above `PAR_FLOPS` and not multiples of the split's tiles.
    #[test]
    fn splits_and_layouts_match_a_naive_product() {
        let (m, k, n) = (70, 301, 90);
        assert!(m * k * n >= PAR_FLOPS);
        let val = |i: usize, s: usize| (((i * 2654435761 + s * 97) % 1000) as f32) / 500.0 - 1.0;
        let a: Vec<f32> = (0..m * k).map(|i| val(i, 1)).collect();
        let b_rm: Vec<f32> = (0..k * n).map(|i| val(i, 2)).collect();
        // The same matrix column-major: b_cm[j * k + kk] = b[kk][j].
        let mut b_cm = vec![0.0f32; k * n];
        for kk in 0..k {
            for j in 0..n {
                b_cm[j * k + kk] = b_rm[kk * n + j];
            }
        }
        let c0: Vec<f32> = (0..m * n).map(|i| val(i, 3)).collect();
        for acc in [false, true] {
            let want: Vec<f64> = (0..m * n)
                .map(|i| {
                    let (r, j) = (i / n, i % n);
                    let dot: f64 = (0..k).map(|kk| a[r * k + kk] as f64 * b_rm[kk * n + j] as f64).sum();
                    dot + if acc { c0[i] as f64 } else { 0.0 }
                })
                .collect();
            for threads in [Threads::One, Threads::Rows, Threads::Cols] {
                for (b, rsb, csb, layout) in [(&b_rm, n, 1, "row-major"), (&b_cm, 1, k, "column-major")] {
                    let mut c = c0.clone();
                    if acc {
                        gemm_acc(m, k, n, &a, k, 1, b, rsb, csb, &mut c, threads);
                    } else {
                        gemm(m, k, n, &a, k, 1, b, rsb, csb, &mut c, threads);
                    }
                    let err = c.iter().zip(&want).fold(0.0f64, |e, (&x, &y)| e.max((x as f64 - y).abs()));
                    assert!(err < 1e-3, "{threads:?} b {layout} acc {acc}: max error {err}");
                }
            }
        }
    }
}
