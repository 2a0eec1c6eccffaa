//! Causal softmax attention with grouped key/value heads, forward and
//! backward. Queries are taken in blocks of [`ROWS`] rows; a block's scores
//! are computed only against the keys it can see (`0..=last row`), so at most
//! `ROWS x T` scores per thread live at a time and the masked upper triangle
//! is never computed. Work is split over (batch, head) for the forward and
//! over (batch, kv head) groups for the backward (the group's query heads
//! accumulate into the same key/value gradients).

use super::linalg::{gemm, gemm_acc};
use super::real::Real;
use super::tensor::Tensor;
use rayon::prelude::*;

/// Query rows per block.
pub const ROWS: usize = 64;

struct Dims {
    b: usize,
    h: usize,
    hk: usize,
    t: usize,
    d: usize,
}

fn dims<F: Real>(q: &Tensor<F>, k: &Tensor<F>) -> Dims {
    Dims { b: q.shape[0], h: q.shape[1], hk: k.shape[1], t: q.shape[2], d: q.shape[3] }
}

/// Probabilities of query rows `i0..i0 + rb` against keys `0..w` (`w = i0 + rb`):
/// `P = softmax(scale * q k^T)` with the causal mask, in `p` (`rb x w`, row-major).
fn probs<F: Real>(q: &[F], k: &[F], i0: usize, rb: usize, d: usize, scale: F, p: &mut [F]) {
    let w = i0 + rb;
    gemm(rb, d, w, &q[i0 * d..w * d], d, 1, &k[..w * d], 1, d, p);
    for r in 0..rb {
        let i = i0 + r;
        let row = &mut p[r * w..(r + 1) * w];
        let mut m = F::NEG_INFINITY;
        for v in row[..=i].iter_mut() {
            *v *= scale;
            m = m.max(*v);
        }
        let mut s = F::ZERO;
        for v in row[..=i].iter_mut() {
            *v = (*v - m).exp();
            s += *v;
        }
        for v in row[..=i].iter_mut() {
            *v = *v / s;
        }
        row[i + 1..].fill(F::ZERO);
    }
}

/// `[B, H, T, d]` output of causal attention.
pub fn forward<F: Real>(q: &Tensor<F>, k: &Tensor<F>, v: &Tensor<F>, scale: f64) -> Tensor<F> {
    forward_rows(q, k, v, scale, ROWS)
}

fn forward_rows<F: Real>(q: &Tensor<F>, k: &Tensor<F>, v: &Tensor<F>, scale: f64, rows: usize) -> Tensor<F> {
    let Dims { b, h, hk, t, d } = dims(q, k);
    let rep = h / hk;
    let (qf, kf, vf) = (q.f(), k.f(), v.f());
    let scale = F::from_f64(scale);
    let mut out = vec![F::ZERO; b * h * t * d];
    let blk = t * d;
    if blk == 0 {
        return Tensor::float(q.shape.clone(), out);
    }
    out.par_chunks_mut(blk).enumerate().for_each_init(
        || vec![F::ZERO; rows.min(t) * t],
        |p, (bh, o)| {
            let (bi, hi) = (bh / h, bh % h);
            let kv = (bi * hk + hi / rep) * blk;
            let (qb, kb, vb) = (&qf[bh * blk..(bh + 1) * blk], &kf[kv..kv + blk], &vf[kv..kv + blk]);
            for i0 in (0..t).step_by(rows) {
                let rb = rows.min(t - i0);
                let w = i0 + rb;
                let p = &mut p[..rb * w];
                probs(qb, kb, i0, rb, d, scale, p);
                gemm(rb, w, d, p, w, 1, &vb[..w * d], d, 1, &mut o[i0 * d..w * d]);
            }
        },
    );
    Tensor::float(q.shape.clone(), out)
}

/// Gradients of causal attention w.r.t. q, k and v (those asked for in `want`).
pub fn backward<F: Real>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    dy: &Tensor<F>,
    scale: f64,
    want: [bool; 3],
) -> [Option<Tensor<F>>; 3] {
    backward_rows(q, k, v, dy, scale, want, ROWS)
}

fn backward_rows<F: Real>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    dy: &Tensor<F>,
    scale: f64,
    want: [bool; 3],
    rows: usize,
) -> [Option<Tensor<F>>; 3] {
    let Dims { b, h, hk, t, d } = dims(q, k);
    let rep = h / hk;
    let (qf, kf, vf, gf) = (q.f(), k.f(), v.f(), dy.f());
    let sc = F::from_f64(scale);
    let blk = t * d;
    let mut dq = vec![F::ZERO; if want[0] { b * h * blk } else { 0 }];
    let mut dk = vec![F::ZERO; if want[1] { b * hk * blk } else { 0 }];
    let mut dv = vec![F::ZERO; if want[2] { b * hk * blk } else { 0 }];
    if blk > 0 {
        let groups = b * hk;
        // Per group: (dq for its rep query heads, dk, dv) chunks, possibly empty.
        let split = |v: &mut Vec<F>, len: usize| -> Vec<SendSlice<F>> {
            if v.is_empty() {
                (0..groups).map(|_| SendSlice(std::ptr::null_mut(), 0)).collect()
            } else {
                v.chunks_mut(len).map(|c| SendSlice(c.as_mut_ptr(), c.len())).collect()
            }
        };
        let dqs = split(&mut dq, rep * blk);
        let dks = split(&mut dk, blk);
        let dvs = split(&mut dv, blk);
        let cap = rows.min(t) * t;
        (0..groups).into_par_iter().for_each_init(
            || (vec![F::ZERO; cap], vec![F::ZERO; cap]),
            |(p, dp), g| {
                let (bi, kh) = (g / hk, g % hk);
                let kv = g * blk;
                let (kb, vb) = (&kf[kv..kv + blk], &vf[kv..kv + blk]);
                // SAFETY: each group owns disjoint chunks of dq, dk and dv.
                let (dqg, dkg, dvg) = unsafe { (dqs[g].get(), dks[g].get(), dvs[g].get()) };
                for r in 0..rep {
                    let hi = kh * rep + r;
                    let qo = (bi * h + hi) * blk;
                    let (qb, gb) = (&qf[qo..qo + blk], &gf[qo..qo + blk]);
                    for i0 in (0..t).step_by(rows) {
                        let rb = rows.min(t - i0);
                        let w = i0 + rb;
                        let (p, dp) = (&mut p[..rb * w], &mut dp[..rb * w]);
                        probs(qb, kb, i0, rb, d, sc, p);
                        let gblk = &gb[i0 * d..w * d];
                        if want[2] {
                            // dv[0..w] += P^T dy[block]
                            gemm_acc(w, rb, d, p, 1, w, gblk, d, 1, &mut dvg[..w * d]);
                        }
                        if !(want[0] || want[1]) {
                            continue;
                        }
                        // dP = dy[block] v[0..w]^T; dS = P (dP - rowsum(P dP)) * scale
                        gemm(rb, d, w, gblk, d, 1, &vb[..w * d], 1, d, dp);
                        for rr in 0..rb {
                            let i = i0 + rr;
                            let (pr, dr) = (&p[rr * w..rr * w + i + 1], &mut dp[rr * w..(rr + 1) * w]);
                            let dsum: F = pr.iter().zip(dr.iter()).map(|(&a, &b)| a * b).sum();
                            for j in 0..=i {
                                dr[j] = pr[j] * (dr[j] - dsum) * sc;
                            }
                            dr[i + 1..].fill(F::ZERO);
                        }
                        if want[0] {
                            // dq[block] = dS k[0..w]
                            gemm(rb, w, d, dp, w, 1, &kb[..w * d], d, 1, &mut dqg[r * blk + i0 * d..r * blk + w * d]);
                        }
                        if want[1] {
                            // dk[0..w] += dS^T q[block]
                            gemm_acc(w, rb, d, dp, 1, w, &qb[i0 * d..w * d], d, 1, &mut dkg[..w * d]);
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
            close(&forward_rows(&q, &k, &v, 0.3, rows), &forward_rows(&q, &k, &v, 0.3, t));
            let a = backward_rows(&q, &k, &v, &dy, 0.3, [true; 3], rows);
            let c = backward_rows(&q, &k, &v, &dy, 0.3, [true; 3], t);
            for i in 0..3 {
                close(a[i].as_ref().unwrap(), c[i].as_ref().unwrap());
            }
        }
    }
}

/// A mutable chunk handed to one parallel task.
struct SendSlice<F>(*mut F, usize);
unsafe impl<F> Send for SendSlice<F> {}
unsafe impl<F> Sync for SendSlice<F> {}
impl<F> SendSlice<F> {
    /// # Safety
    /// Only one task may hold the slice at a time.
    #[allow(clippy::mut_from_ref)]
    unsafe fn get(&self) -> &mut [F] {
        if self.0.is_null() {
            &mut []
        } else {
            std::slice::from_raw_parts_mut(self.0, self.1)
        }
    }
}
