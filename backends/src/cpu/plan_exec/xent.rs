//! Cross entropy and its gradient sharing one log-sum-exp per logits row
//! (the reference computes it for each op). Same per-row arithmetic as
//! `cpu::ops::cross_entropy` / `cross_entropy_grad`, so bitwise equal.

use super::super::ops::PAR_MIN;
use super::super::{Real, Tensor};
use super::pool::Pool;
use rayon::prelude::*;

/// Per-row log-sum-exp of `z[..., V]` (as `cpu::ops::row_lse`).
pub fn row_lse<F: Real>(z: &Tensor<F>) -> Vec<F> {
    let v = *z.shape.last().unwrap();
    let zf = z.f();
    let n = zf.len() / v.max(1);
    let lse = |i: usize| {
        let row = &zf[i * v..(i + 1) * v];
        let m = row.iter().fold(F::NEG_INFINITY, |m, &x| m.max(x));
        let s: F = row.iter().map(|&x| (x - m).exp()).sum();
        m + s.ln()
    };
    if zf.len() < PAR_MIN {
        (0..n).map(lse).collect()
    } else {
        (0..n).into_par_iter().map(lse).collect()
    }
}

/// The targets, or an error naming the first one outside `0..v`.
fn targets<F: Real>(t: &Tensor<F>, v: usize) -> Result<&[i32], String> {
    let tg = t.as_int().ok_or("targets must be i32")?;
    match tg.iter().position(|&x| x < 0 || x as usize >= v) {
        Some(p) => Err(format!("target {} at position {p} is outside 0..{v}", tg[p])),
        None => Ok(tg),
    }
}

/// Mean cross entropy of `z[..., V]` against targets `t`, given `lse = row_lse(z)`.
pub fn loss<F: Real>(z: &Tensor<F>, t: &Tensor<F>, lse: &[F]) -> Result<Tensor<F>, String> {
    let v = *z.shape.last().unwrap();
    let tg = targets(t, v)?;
    let zf = z.f();
    let n = tg.len();
    let mut total = F::ZERO;
    for i in 0..n {
        total += lse[i] - zf[i * v + tg[i] as usize];
    }
    Ok(Tensor::float(vec![], vec![total / F::from_f64(n as f64)]))
}

/// `dz = (softmax(z) - onehot(t)) * dloss / N`, given `lse = row_lse(z)`.
pub fn grad<F: Real>(z: &Tensor<F>, t: &Tensor<F>, dloss: &Tensor<F>, lse: &[F], pool: &mut Pool<F>) -> Result<Tensor<F>, String> {
    let v = *z.shape.last().unwrap();
    let tg = targets(t, v)?;
    let zf = z.f();
    let n = tg.len();
    let scale = dloss.f()[0] / F::from_f64(n as f64);
    let mut out = pool.take(zf.len());
    if v > 0 {
        let body = |i: usize, o: &mut [F]| {
            let row = &zf[i * v..(i + 1) * v];
            for j in 0..v {
                o[j] = (row[j] - lse[i]).exp() * scale;
            }
            o[tg[i] as usize] -= scale;
        };
        if zf.len() < PAR_MIN {
            out.chunks_mut(v).enumerate().for_each(|(i, o)| body(i, o));
        } else {
            out.par_chunks_mut(v).enumerate().for_each(|(i, o)| body(i, o));
        }
    }
    Ok(Tensor::float(z.shape.clone(), out))
}
