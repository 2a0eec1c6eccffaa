//! Causal softmax attention with grouped key/value heads, forward and
//! backward. Queries are taken in blocks of [`ROWS`] rows; a block's scores
//! are computed only against the keys it can see (`0..=last row`), so at most
//! `ROWS x T` scores per thread live at a time and the masked upper triangle
//! is never computed. Work is split over (batch, head) for the forward and
//! over (batch, kv head) groups for the backward (the group's query heads
//! accumulate into the same key/value gradients).
//!
//! The per-block matrix products go through a [`Products`] implementation:
//! [`Linalg`] (matrixmultiply) for the reference; the plan executor passes
//! its own (the `gemm` crate in f32) and its pooled output buffers.

use super::linalg;
use super::real::Real;
use super::tensor::Tensor;
use rayon::prelude::*;

/// Query rows per block.
pub const ROWS: usize = 64;

/// The matrix products of the attention, `c = a @ b` and `c += a @ b` with
/// `a` (`m x k`) and `b` (`k x n`) given by slices and element strides and `c`
/// a contiguous `m x n` buffer (as [`linalg::gemm`]), and its row
/// arithmetic (provided: the reference's serial loops).
#[allow(clippy::too_many_arguments)]
pub trait Products<F: Real>: Sync {
    fn gemm(&self, m: usize, k: usize, n: usize, a: &[F], rsa: usize, csa: usize, b: &[F], rsb: usize, csb: usize, c: &mut [F]);
    fn gemm_acc(&self, m: usize, k: usize, n: usize, a: &[F], rsa: usize, csa: usize, b: &[F], rsb: usize, csb: usize, c: &mut [F]);

    /// `row[j] = exp(row[j] - max)`, returning the new row's sum (the
    /// softmax numerators and denominator). The reference: in order, serially.
    fn exp_shifted_sum(&self, row: &mut [F], max: F) -> F {
        let mut s = F::ZERO;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            s += *v;
        }
        s
    }

    /// `sum(a[j] * b[j])`. The reference: in order, serially.
    fn dot(&self, a: &[F], b: &[F]) -> F {
        a.iter().zip(b).map(|(&x, &y)| x * y).sum()
    }
}

/// The reference's products: [`linalg`] (matrixmultiply).
pub struct Linalg;

#[allow(clippy::too_many_arguments)]
impl<F: Real> Products<F> for Linalg {
    fn gemm(&self, m: usize, k: usize, n: usize, a: &[F], rsa: usize, csa: usize, b: &[F], rsb: usize, csb: usize, c: &mut [F]) {
        linalg::gemm(m, k, n, a, rsa, csa, b, rsb, csb, c)
    }
    fn gemm_acc(&self, m: usize, k: usize, n: usize, a: &[F], rsa: usize, csa: usize, b: &[F], rsb: usize, csb: usize, c: &mut [F]) {
        linalg::gemm_acc(m, k, n, a, rsa, csa, b, rsb, csb, c)
    }
}

/// One (batch, kv head) group's dq (its query heads), dk and dv.
type GroupGrads<'a, F> = (&'a mut [F], &'a mut [F], &'a mut [F]);

/// Probabilities of query rows `i0..i0 + rb` against keys `0..w` (`w = i0 + rb`):
/// `P = softmax(scale * q k^T)` with the causal mask, in `p` (`rb x w`, row-major).
#[allow(clippy::too_many_arguments)]
fn probs<F: Real, P: Products<F>>(prods: &P, q: &[F], k: &[F], i0: usize, rb: usize, d: usize, scale: F, p: &mut [F]) {
    let w = i0 + rb;
    prods.gemm(rb, d, w, &q[i0 * d..w * d], d, 1, &k[..w * d], 1, d, p);
    for r in 0..rb {
        let i = i0 + r;
        let row = &mut p[r * w..(r + 1) * w];
        for v in row[..=i].iter_mut() {
            *v *= scale;
        }
        // The row maximum over independent lanes (max is exact and order-free).
        let mut lanes = [F::NEG_INFINITY; 16];
        let mut ch = row[..=i].chunks_exact(16);
        for c in &mut ch {
            for l in 0..16 {
                lanes[l] = lanes[l].max(c[l]);
            }
        }
        let m = ch.remainder().iter().chain(&lanes).fold(F::NEG_INFINITY, |m, &v| m.max(v));
        let s = prods.exp_shifted_sum(&mut row[..=i], m);
        for v in row[..=i].iter_mut() {
            *v = *v / s;
        }
        row[i + 1..].fill(F::ZERO);
    }
}

/// `[B, H, T, d]` output of causal attention.
pub fn forward<F: Real>(q: &Tensor<F>, k: &Tensor<F>, v: &Tensor<F>, scale: f64) -> Tensor<F> {
    forward_with(q, k, v, scale, ROWS, vec![F::ZERO; q.numel()], &Linalg, None)
}

/// Elements of one head's probability blocks with `rows` query rows per
/// block: block `i0` holds `rb x (i0 + rb)` values, the blocks in order.
pub fn probs_len(t: usize, rows: usize) -> usize {
    let rows = rows.clamp(1, t.max(1));
    (0..t).step_by(rows).map(|i0| rows.min(t - i0) * (i0 + rows.min(t - i0))).sum()
}

/// [`forward`] with `rows` query rows per block, into `out` (`q`'s size, any
/// contents), with the products of `prods`. With `keep` (`B * H *
/// probs_len(T, rows)` elements) the probabilities are left there, each
/// head's blocks in turn, for [`backward_with`] to reuse.
#[allow(clippy::too_many_arguments)]
pub fn forward_with<F: Real, P: Products<F>>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    scale: f64,
    rows: usize,
    mut out: Vec<F>,
    prods: &P,
    keep: Option<&mut [F]>,
) -> Tensor<F> {
    let (h, hk, t, d) = (q.shape[1], k.shape[1], q.shape[2], q.shape[3]);
    let rep = h / hk;
    let (qf, kf, vf) = (q.f(), k.f(), v.f());
    let scale = F::from_f64(scale);
    assert_eq!(out.len(), qf.len());
    let blk = t * d;
    if blk == 0 {
        return Tensor::float(q.shape.clone(), out);
    }
    let rows = rows.min(t);
    let plen = probs_len(t, rows);
    // Each head's probabilities go to its part of `keep`, or to scratch.
    let mut keep: Vec<&mut [F]> = match keep {
        Some(kp) => {
            assert_eq!(kp.len(), out.len() / blk * plen, "attention: kept probabilities' size");
            kp.chunks_mut(plen).collect()
        }
        None => (0..out.len() / blk).map(|_| &mut [][..]).collect(),
    };
    out.par_chunks_mut(blk).zip(keep.par_iter_mut()).enumerate().for_each_init(
        || vec![F::ZERO; rows * t],
        |scratch, (bh, (o, kept))| {
            let (bi, hi) = (bh / h, bh % h);
            let kv = (bi * hk + hi / rep) * blk;
            let (qb, kb, vb) = (&qf[bh * blk..(bh + 1) * blk], &kf[kv..kv + blk], &vf[kv..kv + blk]);
            let mut off = 0;
            for i0 in (0..t).step_by(rows) {
                let rb = rows.min(t - i0);
                let w = i0 + rb;
                let p = if kept.is_empty() { &mut scratch[..rb * w] } else { &mut kept[off..off + rb * w] };
                off += rb * w;
                probs(prods, qb, kb, i0, rb, d, scale, p);
                prods.gemm(rb, w, d, p, w, 1, &vb[..w * d], d, 1, &mut o[i0 * d..w * d]);
            }
        },
    );
    Tensor::float(q.shape.clone(), out)
}

/// Gradients of causal attention w.r.t. q, k and v (those asked for in `want`).
pub fn backward<F: Real>(q: &Tensor<F>, k: &Tensor<F>, v: &Tensor<F>, dy: &Tensor<F>, scale: f64, want: [bool; 3]) -> [Option<Tensor<F>>; 3] {
    let bufs = grad_bufs([q, k, v], want, |n| vec![F::ZERO; n]);
    backward_with(q, k, v, dy, scale, want, ROWS, bufs, &Linalg, None)
}

/// The `bufs` of [`backward_with`]: `alloc(len)` for each of `ops` (q, k, v) whose gradient is wanted.
pub fn grad_bufs<F: Real>(ops: [&Tensor<F>; 3], want: [bool; 3], mut alloc: impl FnMut(usize) -> Vec<F>) -> [Vec<F>; 3] {
    std::array::from_fn(|i| if want[i] { alloc(ops[i].numel()) } else { Vec::new() })
}

/// [`backward`] with `rows` query rows per block, into `bufs` (dq, dk, dv:
/// the tensor's size when wanted, else empty; any contents), with the
/// products of `prods`; with `kept`, the probabilities [`forward_with`]
/// left for the same q, k and `rows` instead of computing them again.
#[allow(clippy::too_many_arguments)]
pub fn backward_with<F: Real, P: Products<F>>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    dy: &Tensor<F>,
    scale: f64,
    want: [bool; 3],
    rows: usize,
    bufs: [Vec<F>; 3],
    prods: &P,
    kept: Option<&[F]>,
) -> [Option<Tensor<F>>; 3] {
    let (b, h, hk, t, d) = (q.shape[0], q.shape[1], k.shape[1], q.shape[2], q.shape[3]);
    let rep = h / hk;
    let (qf, kf, vf, gf) = (q.f(), k.f(), v.f(), dy.f());
    let sc = F::from_f64(scale);
    let blk = t * d;
    let [mut dq, mut dk, mut dv] = bufs;
    for (w, buf, n) in [(want[0], &dq, qf.len()), (want[1], &dk, kf.len()), (want[2], &dv, vf.len())] {
        assert_eq!(buf.len(), if w { n } else { 0 });
    }
    // dk and dv accumulate over query blocks and heads; dq is written.
    dk.fill(F::ZERO);
    dv.fill(F::ZERO);
    if blk > 0 {
        let groups = b * hk;
        fn chunks<F>(v: &mut [F], len: usize, groups: usize) -> Vec<&mut [F]> {
            if v.is_empty() {
                (0..groups).map(|_| &mut [][..]).collect()
            } else {
                v.chunks_mut(len).collect()
            }
        }
        let work: Vec<(usize, GroupGrads<F>)> = chunks(&mut dq, rep * blk, groups)
            .into_iter()
            .zip(chunks(&mut dk, blk, groups))
            .zip(chunks(&mut dv, blk, groups))
            .map(|((a, b), c)| (a, b, c))
            .enumerate()
            .collect();
        let rows = rows.min(t);
        let cap = rows * t;
        let plen = probs_len(t, rows);
        if let Some(kp) = kept {
            assert_eq!(kp.len(), b * h * plen, "attention: kept probabilities' size");
        }
        work.into_par_iter().for_each_init(
            || (vec![F::ZERO; cap], vec![F::ZERO; cap]),
            |(p, dp), (g, (dqg, dkg, dvg))| {
                let (bi, kh) = (g / hk, g % hk);
                let kv = g * blk;
                let (kb, vb) = (&kf[kv..kv + blk], &vf[kv..kv + blk]);
                for r in 0..rep {
                    let hi = kh * rep + r;
                    let qo = (bi * h + hi) * blk;
                    let (qb, gb) = (&qf[qo..qo + blk], &gf[qo..qo + blk]);
                    let mut off = (bi * h + hi) * plen;
                    for i0 in (0..t).step_by(rows) {
                        let rb = rows.min(t - i0);
                        let w = i0 + rb;
                        let dp = &mut dp[..rb * w];
                        let p: &[F] = match kept {
                            Some(kp) => &kp[off..off + rb * w],
                            None => {
                                let p = &mut p[..rb * w];
                                probs(prods, qb, kb, i0, rb, d, sc, p);
                                p
                            }
                        };
                        off += rb * w;
                        let gblk = &gb[i0 * d..w * d];
                        if want[2] {
                            // dv[0..w] += P^T dy[block]
                            prods.gemm_acc(w, rb, d, p, 1, w, gblk, d, 1, &mut dvg[..w * d]);
                        }
                        if !(want[0] || want[1]) {
                            continue;
                        }
                        // dP = dy[block] v[0..w]^T; dS = P (dP - rowsum(P dP)) * scale
                        prods.gemm(rb, d, w, gblk, d, 1, &vb[..w * d], 1, d, dp);
                        for rr in 0..rb {
                            let i = i0 + rr;
                            let (pr, dr) = (&p[rr * w..rr * w + i + 1], &mut dp[rr * w..(rr + 1) * w]);
                            let dsum = prods.dot(pr, dr);
                            for j in 0..=i {
                                dr[j] = pr[j] * (dr[j] - dsum) * sc;
                            }
                            dr[i + 1..].fill(F::ZERO);
                        }
                        if want[0] {
                            // dq[block] = dS k[0..w]
                            prods.gemm(rb, w, d, dp, w, 1, &kb[..w * d], d, 1, &mut dqg[r * blk + i0 * d..r * blk + w * d]);
                        }
                        if want[1] {
                            // dk[0..w] += dS^T q[block]
                            prods.gemm_acc(w, rb, d, dp, 1, w, &qb[i0 * d..w * d], d, 1, &mut dkg[..w * d]);
                        }
                    }
                }
            },
        );
    }
    let mk = |w: bool, v: Vec<F>, shape: &[usize]| w.then(|| Tensor::float(shape.to_vec(), v));
    [mk(want[0], dq, &q.shape), mk(want[1], dk, &k.shape), mk(want[2], dv, &v.shape)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, k: usize) -> Vec<f64> {
        (0..n).map(|i| (((i * 2654435761 + k * 97) % 1000) as f64) / 500.0 - 1.0).collect()
    }

    /// Probabilities kept by the forward give the backward bitwise the
    /// gradients it computes on its own, for any block size.
    #[test]
    fn kept_probabilities_give_the_same_gradients() {
        let (b, h, hk, t, d) = (2, 4, 2, 70, 8);
        let q = Tensor::<f64>::float(vec![b, h, t, d], data(b * h * t * d, 5));
        let k = Tensor::<f64>::float(vec![b, hk, t, d], data(b * hk * t * d, 6));
        let v = Tensor::<f64>::float(vec![b, hk, t, d], data(b * hk * t * d, 7));
        let dy = Tensor::<f64>::float(vec![b, h, t, d], data(b * h * t * d, 8));
        for rows in [1, 16, 64, 200] {
            let mut kept = vec![f64::NAN; b * h * probs_len(t, rows)];
            let fwd = forward_with(&q, &k, &v, 0.3, rows, vec![0.0; q.numel()], &Linalg, Some(&mut kept));
            assert_eq!(fwd.f(), forward_with(&q, &k, &v, 0.3, rows, vec![0.0; q.numel()], &Linalg, None).f());
            let bufs = || [q.numel(), k.numel(), v.numel()].map(|n| vec![0.0; n]);
            let own = backward_with(&q, &k, &v, &dy, 0.3, [true; 3], rows, bufs(), &Linalg, None);
            let reused = backward_with(&q, &k, &v, &dy, 0.3, [true; 3], rows, bufs(), &Linalg, Some(&kept));
            for i in 0..3 {
                assert_eq!(own[i].as_ref().unwrap().f(), reused[i].as_ref().unwrap().f(), "rows {rows}, gradient {i}");
            }
        }
    }

    /// Blocked rows give the same results as one block of all rows.
    #[test]
    fn row_blocks_agree_with_a_single_block() {
        let (b, h, hk, t, d) = (2, 4, 2, 70, 8);
        let q = Tensor::<f64>::float(vec![b, h, t, d], data(b * h * t * d, 1));
        let k = Tensor::<f64>::float(vec![b, hk, t, d], data(b * hk * t * d, 2));
        let v = Tensor::<f64>::float(vec![b, hk, t, d], data(b * hk * t * d, 3));
        let dy = Tensor::<f64>::float(vec![b, h, t, d], data(b * h * t * d, 4));
        let close = |a: &Tensor<f64>, c: &Tensor<f64>| {
            let e = a.f().iter().zip(c.f()).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(e < 1e-13, "{e}");
        };
        for rows in [1, 16, 64] {
            let fwd = |rows: usize| forward_with(&q, &k, &v, 0.3, rows, vec![0.0; q.numel()], &Linalg, None);
            close(&fwd(rows), &fwd(t));
            let bwd = |rows: usize| backward_with(&q, &k, &v, &dy, 0.3, [true; 3], rows, [q.numel(), k.numel(), v.numel()].map(|n| vec![0.0; n]), &Linalg, None);
            let (a, c) = (bwd(rows), bwd(t));
            for i in 0..3 {
                close(a[i].as_ref().unwrap(), c[i].as_ref().unwrap());
            }
        }
    }
}

