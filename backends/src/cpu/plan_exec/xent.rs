//! Cross entropy and its gradient sharing one log-sum-exp per logits row
//! (the reference computes it for each op). Same per-row arithmetic as
//! `cpu::ops::cross_entropy` / `cross_entropy_grad`, so bitwise equal.

use super::super::ops;
use super::super::{Real, Tensor};
use super::pool::Pool;

/// Per-row log-sum-exp of `z[..., V]`.
pub fn row_lse<F: Real>(z: &Tensor<F>) -> Result<Vec<F>, String> {
    Ok(ops::row_lse(z.f(), row_len(z)?))
}

/// `V` of logits `z[..., V]`.
fn row_len<F: Real>(z: &Tensor<F>) -> Result<usize, String> {
    z.shape.last().copied().ok_or_else(|| "logits of rank 0".to_string())
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
    let v = row_len(z)?;
    let tg = targets(t, v)?;
    Ok(Tensor::float(vec![], vec![ops::cross_entropy_mean(z.f(), v, tg, lse)]))
}

/// `dz = (softmax(z) - onehot(t)) * dloss / N`, given `lse = row_lse(z)`.
pub fn grad<F: Real>(z: &Tensor<F>, t: &Tensor<F>, dloss: &Tensor<F>, lse: &[F], pool: &mut Pool<F>) -> Result<Tensor<F>, String> {
    let v = row_len(z)?;
    let tg = targets(t, v)?;
    let mut out = pool.take(z.numel());
    ops::cross_entropy_grad_into(z.f(), v, tg, lse, dloss.f()[0], &mut out);
    Ok(Tensor::float(z.shape.clone(), out))
}
