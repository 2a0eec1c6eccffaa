//! Rotary embedding with its cos/sin tables computed once per run (the
//! reference recomputes them, `T * hd / 2` sines and cosines, for each of the
//! model's rope ops) and its output from the buffer pool. Same tables and
//! arithmetic as `cpu::ops::rope`, so bitwise equal to it.

use super::super::ops::{rope_tables, PAR_MIN};
use super::super::{Real, Tensor};
use super::pool::Pool;
use rayon::prelude::*;
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
    let half = hd / 2;
    let (cos, sin) = tables.by_shape.entry((t, hd, base.to_bits())).or_insert_with(|| rope_tables::<F>(t, hd, base));
    let (cos, sin) = (&*cos, &*sin);
    let xf = x.f();
    let mut out = pool.take(xf.len());
    let block = t * hd;
    if block == 0 {
        return Tensor::float(x.shape.clone(), out);
    }
    let body = |bi: usize, ob: &mut [F]| {
        let xb = &xf[bi * block..(bi + 1) * block];
        for p in 0..t {
            let row = &xb[p * hd..(p + 1) * hd];
            let orow = &mut ob[p * hd..(p + 1) * hd];
            let (c, s) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
            for j in 0..half {
                let (a, b) = (row[j], row[j + half]);
                if inverse {
                    orow[j] = a * c[j] - b * s[j];
                    orow[j + half] = a * s[j] + b * c[j];
                } else {
                    orow[j] = a * c[j] + b * s[j];
                    orow[j + half] = -a * s[j] + b * c[j];
                }
            }
            // An odd hd leaves the last element of each row untouched by the
            // rotation; the reference leaves it zero.
            if hd % 2 == 1 {
                orow[hd - 1] = F::ZERO;
            }
        }
    };
    if xf.len() < PAR_MIN {
        out.chunks_mut(block).enumerate().for_each(|(i, ob)| body(i, ob));
    } else {
        out.par_chunks_mut(block).enumerate().for_each(|(i, ob)| body(i, ob));
    }
    Tensor::float(x.shape.clone(), out)
}
