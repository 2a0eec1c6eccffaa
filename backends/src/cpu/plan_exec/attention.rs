//! Causal attention of the plan executor. In f32: the reference algorithm
//! (`cpu::attention`: query blocks against the keys they see, grouped
//! key/value heads) with the `gemm` crate for the per-block products, which
//! at these small shapes are far from peak with matrixmultiply. In f64: the reference itself, so f64 stays bitwise equal
//! to the interpreter.

use super::super::{attention as reference, Real, Tensor};
use super::gemm::{gemm, gemm_acc};
use super::pool::Pool;
use rayon::prelude::*;
use std::any::TypeId;

/// Query rows per block (as the reference; larger blocks measured slower:
/// the masked part they compute and discard outweighs the larger products).
const ROWS: usize = 64;

/// One (batch, kv head) group's dq (its query heads), dk and dv.
type GroupGrads<'a, F> = (&'a mut [F], &'a mut [F], &'a mut [F]);

fn is_f32<F: Real>() -> bool {
    TypeId::of::<F>() == TypeId::of::<f32>()
}

/// Probabilities of query rows `i0..i0 + rb` against keys `0..w` (`w = i0 + rb`),
/// as `cpu::attention::probs`.
fn probs<F: Real>(q: &[F], k: &[F], i0: usize, rb: usize, d: usize, scale: F, p: &mut [F]) {
    let w = i0 + rb;
    gemm(rb, d, w, &q[i0 * d..w * d], d, 1, &k[..w * d], 1, d, p, false);
    for r in 0..rb {
        let i = i0 + r;
        let row = &mut p[r * w..(r + 1) * w];
        for v in row[..=i].iter_mut() {
            *v *= scale;
        }
        // The row maximum over independent lanes (max is order-free).
        let mut lanes = [F::NEG_INFINITY; 16];
        let mut ch = row[..=i].chunks_exact(16);
        for c in &mut ch {
            for l in 0..16 {
                lanes[l] = lanes[l].max(c[l]);
            }
        }
        let m = ch.remainder().iter().chain(&lanes).fold(F::NEG_INFINITY, |m, &v| m.max(v));
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
pub fn forward<F: Real>(q: &Tensor<F>, k: &Tensor<F>, v: &Tensor<F>, scale: f64, pool: &mut Pool<F>) -> Tensor<F> {
    if !is_f32::<F>() {
        return reference::forward(q, k, v, scale);
    }
    let (b, h, hk, t, d) = (q.shape[0], q.shape[1], k.shape[1], q.shape[2], q.shape[3]);
    let rep = h / hk;
    let (qf, kf, vf) = (q.f(), k.f(), v.f());
    let scale = F::from_f64(scale);
    let mut out = pool.take(b * h * t * d);
    let blk = t * d;
    if blk == 0 {
        return Tensor::float(q.shape.clone(), out);
    }
    let rows = ROWS.min(t);
    out.par_chunks_mut(blk).enumerate().for_each_init(
        || vec![F::ZERO; rows * t],
        |p, (bh, o)| {
            let (bi, hi) = (bh / h, bh % h);
            let kv = (bi * hk + hi / rep) * blk;
            let (qb, kb, vb) = (&qf[bh * blk..(bh + 1) * blk], &kf[kv..kv + blk], &vf[kv..kv + blk]);
            for i0 in (0..t).step_by(rows) {
                let rb = rows.min(t - i0);
                let w = i0 + rb;
                let p = &mut p[..rb * w];
                probs(qb, kb, i0, rb, d, scale, p);
                gemm(rb, w, d, p, w, 1, &vb[..w * d], d, 1, &mut o[i0 * d..w * d], false);
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
    pool: &mut Pool<F>,
) -> [Option<Tensor<F>>; 3] {
    if !is_f32::<F>() {
        return reference::backward(q, k, v, dy, scale, want);
    }
    let (b, h, hk, t, d) = (q.shape[0], q.shape[1], k.shape[1], q.shape[2], q.shape[3]);
    let rep = h / hk;
    let (qf, kf, vf, gf) = (q.f(), k.f(), v.f(), dy.f());
    let sc = F::from_f64(scale);
    let blk = t * d;
    let mut take = |want: bool, len: usize| if want { pool.take(len) } else { Vec::new() };
    let mut dq = take(want[0], b * h * blk);
    let mut dk = take(want[1], b * hk * blk);
    let mut dv = take(want[2], b * hk * blk);
    // dk and dv accumulate over query blocks and heads.
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
        let rows = ROWS.min(t);
        let cap = rows * t;
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
                    for i0 in (0..t).step_by(rows) {
                        let rb = rows.min(t - i0);
                        let w = i0 + rb;
                        let (p, dp) = (&mut p[..rb * w], &mut dp[..rb * w]);
                        probs(qb, kb, i0, rb, d, sc, p);
                        let gblk = &gb[i0 * d..w * d];
                        if want[2] {
                            // dv[0..w] += P^T dy[block]
                            gemm_acc(w, rb, d, p, 1, w, gblk, d, 1, &mut dvg[..w * d], false);
                        }
                        if !(want[0] || want[1]) {
                            continue;
                        }
                        // dP = dy[block] v[0..w]^T; dS = P (dP - rowsum(P dP)) * scale
                        gemm(rb, d, w, gblk, d, 1, &vb[..w * d], 1, d, dp, false);
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
                            gemm(rb, w, d, dp, w, 1, &kb[..w * d], d, 1, &mut dqg[r * blk + i0 * d..r * blk + w * d], false);
                        }
                        if want[1] {
                            // dk[0..w] += dS^T q[block]
                            gemm_acc(w, rb, d, dp, 1, w, &qb[i0 * d..w * d], d, 1, &mut dkg[..w * d], false);
                        }
                    }
                }
            },
        );
    }
    let mk = |w: bool, v: Vec<F>, shape: &[usize]| w.then(|| Tensor::float(shape.to_vec(), v));
    [mk(want[0], dq, &q.shape), mk(want[1], dk, &k.shape), mk(want[2], dv, &v.shape)]
}
