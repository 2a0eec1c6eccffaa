//! Weight preparation: per-row fake quantization (`Op::FakeQuant`), bitwise
//! equal to `cpu::ops::fake_quant`. The row maximum is taken over 16
//! independent lanes (max is exact and order-free, NaN-propagating either
//! way), so it vectorises instead of running one long dependency chain; in
//! f32 the per-element division and clamp run four lanes at a time (SSE2);
//! rows are split over the rayon threads.

use super::super::real::{f32_slice, f32_slice_mut};
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
    let avx2 = super::vmath::has_avx2();
    let body = |r: usize, o: &mut [F]| {
        let row = &wf[r * cols..(r + 1) * cols];
        let amax = match f32_slice(row) {
            // SAFETY: the CPU has AVX2 (checked).
            Some(row32) if avx2 => F::from_f64(unsafe { amax_abs_f32x8(row32) } as f64),
            _ => {
                let mut lanes = [F::ZERO; LANES];
                let mut chunks = row.chunks_exact(LANES);
                for ch in &mut chunks {
                    for i in 0..LANES {
                        lanes[i] = lanes[i].max(ch[i].abs());
                    }
                }
                chunks.remainder().iter().chain(&lanes).fold(F::ZERO, |m, &v| m.max(v.abs()))
            }
        };
        let s = (amax / qmaxf).max(floor).round_to_f16().max(tiny);
        let done = match (f32_slice(row), f32_slice_mut(o)) {
            (Some(row32), Some(o32)) => {
                let f = |x: F| x.to_f64() as f32;
                if avx2 {
                    // SAFETY: the CPU has AVX2 (checked).
                    unsafe { quant_f32x8(row32, o32, f(s), f(qminf), f(qmaxf), f(nan)) }
                } else {
                    quant_f32x4(row32, o32, f(s), f(qminf), f(qmaxf), f(nan))
                }
            }
            _ => 0,
        };
        for (d, &v) in o[done..].iter_mut().zip(&row[done..]) {
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

/// The quantization of the scalar loop, four f32 lanes at a time (SSE2, part
/// of every x86-64): the same IEEE operations, so the same values. Returns
/// how many leading elements it did.
#[cfg(target_arch = "x86_64")]
fn quant_f32x4(row: &[f32], o: &mut [f32], s: f32, qmin: f32, qmax: f32, nan: f32) -> usize {
    use std::arch::x86_64::*;
    let n = row.len().min(o.len()) / 4 * 4;
    // SAFETY: SSE2 is baseline on x86-64; loads and stores stay below n.
    unsafe {
        let (vs, vmin, vmax, vnan) = (_mm_set1_ps(s), _mm_set1_ps(qmin), _mm_set1_ps(qmax), _mm_set1_ps(nan));
        let magic = _mm_set1_ps(<f32 as Real>::ROUND_MAGIC);
        let sel = |m: __m128, a: __m128, b: __m128| _mm_or_ps(_mm_and_ps(m, a), _mm_andnot_ps(m, b));
        for i in (0..n).step_by(4) {
            let x = _mm_div_ps(_mm_loadu_ps(row.as_ptr().add(i)), vs);
            let lo = sel(_mm_cmplt_ps(x, vmin), vmin, x);
            let c = sel(_mm_cmpgt_ps(lo, vmax), vmax, lo);
            let x = sel(_mm_cmpunord_ps(x, x), vnan, c);
            let q = _mm_sub_ps(_mm_add_ps(x, magic), magic);
            _mm_storeu_ps(o.as_mut_ptr().add(i), _mm_mul_ps(q, vs));
        }
    }
    n
}

#[cfg(not(target_arch = "x86_64"))]
fn quant_f32x4(_: &[f32], _: &mut [f32], _: f32, _: f32, _: f32, _: f32) -> usize {
    0
}

/// [`quant_f32x4`] eight lanes at a time.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quant_f32x8(row: &[f32], o: &mut [f32], s: f32, qmin: f32, qmax: f32, nan: f32) -> usize {
    use std::arch::x86_64::*;
    let n = row.len().min(o.len()) / 8 * 8;
    let (vs, vmin, vmax, vnan) = (_mm256_set1_ps(s), _mm256_set1_ps(qmin), _mm256_set1_ps(qmax), _mm256_set1_ps(nan));
    let magic = _mm256_set1_ps(<f32 as Real>::ROUND_MAGIC);
    for i in (0..n).step_by(8) {
        // SAFETY: i + 8 <= n, within both slices.
        let x = _mm256_div_ps(unsafe { _mm256_loadu_ps(row.as_ptr().add(i)) }, vs);
        let lo = _mm256_blendv_ps(x, vmin, _mm256_cmp_ps::<_CMP_LT_OQ>(x, vmin));
        let c = _mm256_blendv_ps(lo, vmax, _mm256_cmp_ps::<_CMP_GT_OQ>(lo, vmax));
        let x = _mm256_blendv_ps(c, vnan, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
        let q = _mm256_sub_ps(_mm256_add_ps(x, magic), magic);
        unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(i), _mm256_mul_ps(q, vs)) };
    }
    n
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn quant_f32x8(_: &[f32], _: &mut [f32], _: f32, _: f32, _: f32, _: f32) -> usize {
    0
}

/// `max |x|` over the row, NaN when any element is NaN (as the reference's
/// NaN-propagating `Real::max` fold gives), eight lanes at a time.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn amax_abs_f32x8(row: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = row.len() / 8 * 8;
    let sign = _mm256_set1_ps(-0.0);
    let (mut m, mut nans) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for i in (0..n).step_by(8) {
        // SAFETY: i + 8 <= n <= row.len().
        let x = _mm256_andnot_ps(sign, unsafe { _mm256_loadu_ps(row.as_ptr().add(i)) });
        nans = _mm256_or_ps(nans, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
        m = _mm256_max_ps(m, x);
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: 8 lanes into an 8-element array.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
    let mut amax = lanes.iter().fold(0.0f32, |a, &v| a.max(v));
    let mut any_nan = _mm256_movemask_ps(nans) != 0;
    for &v in &row[n..] {
        any_nan |= v.is_nan();
        amax = amax.max(v.abs());
    }
    if any_nan {
        f32::NAN
    } else {
        amax
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn amax_abs_f32x8(_: &[f32]) -> f32 {
    unreachable!("has_avx2() is false off x86-64")
}
