//! Rotary embedding with its cos/sin tables computed once per run (the
//! reference recomputes them, `T * hd / 2` sines and cosines, for each of the
//! model's rope ops) and its output from the buffer pool. Same tables and
//! arithmetic as `cpu::ops::rope`, so bitwise equal to it.

use super::super::ops::{rope_into, rope_tables};
use super::super::{Real, Tensor};
use super::pool::Pool;
use std::collections::HashMap;

type CosSin<F> = (Vec<F>, Vec<F>);

/// cos and sin tables by (T, hd, base bits).
#[derive(Default)]
pub struct Tables<F> {
    by_shape: HashMap<(usize, usize, u64), CosSin<F>>,
}

/// `ops::rope` of `x[..., T, hd]`.
pub fn rope<F: Real>(x: &Tensor<F>, base: f64, inverse: bool, tables: &mut Tables<F>, pool: &mut Pool<F>) -> Tensor<F> {
    let r = x.shape.len();
    let (t, hd) = (x.shape[r - 2], x.shape[r - 1]);
    let (cos, sin) = tables.by_shape.entry((t, hd, base.to_bits())).or_insert_with(|| rope_tables::<F>(t, hd, base));
    let mut out = pool.take(x.numel());
    rope_into(x.f(), t, hd, cos, sin, inverse, &mut out);
    Tensor::float(x.shape.clone(), out)
}
