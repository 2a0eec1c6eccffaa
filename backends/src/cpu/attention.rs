//! Causal softmax attention with grouped key/value heads, forward and
//! backward. One `T x T` score block per (batch, head) lives at a time per
//! thread; work is split over (batch, kv head) groups.

use super::linalg::gemm;
use super::real::Real;
use super::tensor::Tensor;
use rayon::prelude::*;

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

/// Probabilities `P = softmax(scale * q k^T)` with the causal mask, in `p` (`T x T`, zero above the diagonal).
fn probs<F: Real>(q: &[F], k: &[F], t: usize, d: usize, scale: F, p: &mut [F]) {
    gemm(t, d, t, q, d, 1, k, 1, d, p);
    for i in 0..t {
        let row = &mut p[i * t..(i + 1) * t];
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
        || vec![F::ZERO; t * t],
        |p, (bh, o)| {
            let (bi, hi) = (bh / h, bh % h);
            let kv = (bi * hk + hi / rep) * blk;
            probs(&qf[bh * blk..(bh + 1) * blk], &kf[kv..kv + blk], t, d, scale, p);
            gemm(t, t, d, p, t, 1, &vf[kv..kv + blk], d, 1, o);
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
        (0..groups).into_par_iter().for_each_init(
            || (vec![F::ZERO; t * t], vec![F::ZERO; t * t], vec![F::ZERO; blk]),
            |(p, dp, tmp), g| {
                let (bi, kh) = (g / hk, g % hk);
                let kv = g * blk;
                let (kb, vb) = (&kf[kv..kv + blk], &vf[kv..kv + blk]);
                // SAFETY: each group owns disjoint chunks of dq, dk and dv.
                let (dqg, dkg, dvg) = unsafe { (dqs[g].get(), dks[g].get(), dvs[g].get()) };
                for r in 0..rep {
                    let hi = kh * rep + r;
                    let qo = (bi * h + hi) * blk;
                    let (qb, gb) = (&qf[qo..qo + blk], &gf[qo..qo + blk]);
                    probs(qb, kb, t, d, sc, p);
                    if want[2] {
                        // dv += P^T dy
                        gemm(t, t, d, p, 1, t, gb, d, 1, tmp);
                        dvg.iter_mut().zip(tmp.iter()).for_each(|(a, &x)| *a += x);
                    }
                    if want[0] || want[1] {
                        // dP = dy v^T; dS = P (dP - rowsum(P dP)) * scale
                        gemm(t, d, t, gb, d, 1, vb, 1, d, dp);
                        for i in 0..t {
                            let (pr, dr) = (&p[i * t..=i * t + i], &mut dp[i * t..(i + 1) * t]);
                            let dsum: F = pr.iter().zip(dr.iter()).map(|(&a, &b)| a * b).sum();
                            for j in 0..=i {
                                dr[j] = pr[j] * (dr[j] - dsum) * sc;
                            }
                            dr[i + 1..].fill(F::ZERO);
                        }
                        if want[0] {
                            gemm(t, t, d, dp, t, 1, kb, d, 1, &mut dqg[r * blk..(r + 1) * blk]);
                        }
                        if want[1] {
                            gemm(t, t, d, dp, 1, t, qb, d, 1, tmp);
                            dkg.iter_mut().zip(tmp.iter()).for_each(|(a, &x)| *a += x);
                        }
                    }
                }
            },
        );
    }
    let mk = |w: bool, v: Vec<F>, shape: &[usize]| w.then(|| Tensor::float(shape.to_vec(), v));
    [mk(want[0], dq, &q.shape), mk(want[1], dk, &k.shape), mk(want[2], dv, &v.shape)]
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
