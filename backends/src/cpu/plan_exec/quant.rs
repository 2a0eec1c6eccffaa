//! Weight preparation: per-row fake quantization (`Op::FakeQuant`), bitwise
//! equal to `cpu::ops::fake_quant`. The row maximum is taken over 16
//! independent lanes (max is exact and order-free, NaN-propagating either
//! way), so it vectorises instead of running one long dependency chain; the
//! clamp is branch-free; rows are split over the rayon threads.

use super::super::{Real, Tensor};
use super::pool::Pool;
use rayon::prelude::*;

const LANES: usize = 16;

/// `w[rows, cols]` fake-quantized to `bits` per row.
pub fn fake_quant<F: Real>(w: &Tensor<F>, bits: u32, pool: &mut Pool<F>) -> Tensor<F> {
    let cols = w.shape[1];
    let qmax = ((1i64 << (bits - 1)) - 1) as f64;
    let (qmaxf, qminf) = (F::from_f64(qmax), F::from_f64(-qmax - 1.0));
    let floor = F::from_f64(1e-12);
    let tiny = F::from_f64(half::f16::MIN_POSITIVE.to_f64());
    // The NaN `Real::max` returns (it does not pass an operand's NaN through).
    let nan = F::NEG_INFINITY.max(F::from_f64(f64::NAN));
    let wf = w.f();
    let mut out = pool.take(wf.len());
    if cols == 0 {
        return Tensor::float(w.shape.clone(), out);
    }
    let body = |r: usize, o: &mut [F]| {
        let row = &wf[r * cols..(r + 1) * cols];
        let mut lanes = [F::ZERO; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for ch in &mut chunks {
            for i in 0..LANES {
                lanes[i] = lanes[i].max(ch[i].abs());
            }
        }
        let amax = chunks.remainder().iter().chain(&lanes).fold(F::ZERO, |m, &v| m.max(v.abs()));
        let s = (amax / qmaxf).max(floor).round_to_f16().max(tiny);
        for (d, &v) in o.iter_mut().zip(row) {
            // `(v / s).max(qminf).min(qmaxf)` as branch-free selects
            // (NaN-propagating like `Real::max`).
            let x = v / s;
            let lo = if x < qminf { qminf } else { x };
            let c = if lo > qmaxf { qmaxf } else { lo };
            #[allow(clippy::eq_op)] // x != x: NaN
            let x = if x != x { nan } else { c };
            let q = (x + F::ROUND_MAGIC) - F::ROUND_MAGIC;
            *d = q * s;
        }
    };
    if wf.len() < super::super::ops::PAR_MIN {
        out.chunks_mut(cols).enumerate().for_each(|(r, o)| body(r, o));
    } else {
        out.par_chunks_mut(cols).enumerate().for_each(|(r, o)| body(r, o));
    }
    Tensor::float(w.shape.clone(), out)
}
