//! Vectorised f32 row arithmetic for the plan executor's softmax pieces:
//! `exp` of a row shifted by its maximum (with the row's sum) and dot
//! products. The reference sums serially and calls libm's `expf` once per
//! element; these keep 16 independent partial sums and evaluate `exp` with a
//! polynomial the compiler vectorises (AVX2+FMA when the CPU has it, chosen
//! at run time). The results differ from the reference by rounding only:
//! `exp` within 2 ulp, sums in another order.

/// Lanes of the partial sums (one AVX-512 register, two AVX2 registers).
const LANES: usize = 16;

/// `exp(x)` for `x <= 0` (the softmax's shifted scores): relative error
/// within 2 ulp; exactly 0 below -87.3 (where `expf` is subnormal or 0) and
/// for `-inf`; NaN for NaN.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.max(-87.3);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // Degree-6 Taylor polynomial of exp on |r| <= ln2/2 (error < 2e-8 relative).
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    // `x - x` carries a NaN through (`max` above drops it).
    #[allow(clippy::eq_op)]
    if x < -87.3 {
        0.0
    } else {
        p * scale + (x - x)
    }
}

#[inline(always)]
fn exp_shifted_sum_body(row: &mut [f32], max: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let e = exp_nonpositive(c[l] - max);
            c[l] = e;
            acc[l] += e;
        }
    }
    let mut s = 0.0f32;
    for v in chunks.into_remainder() {
        *v = exp_nonpositive(*v - max);
        s += *v;
    }
    acc.iter().sum::<f32>() + s
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_shifted_sum_avx2(row: &mut [f32], max: f32) -> f32 {
    exp_shifted_sum_body(row, max)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b)
}

/// Whether the CPU has AVX2 and FMA (the vectorised paths of this module
/// and of fake quantization).
pub(super) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `row[j] = exp(row[j] - max)`; returns the sum of the new row. `max` must
/// be at least every element (the softmax's row maximum).
pub fn exp_shifted_sum(row: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { exp_shifted_sum_avx2(row, max) };
    }
    exp_shifted_sum_body(row, max)
}

/// `sum(a[j] * b[j])` over the shorter length.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { dot_avx2(a, b) };
    }
    dot_body(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp();
            let got = exp_nonpositive(x) as f64;
            worst = worst.max((got - want).abs() / want);
            x += 0.000_37;
        }
        // 2 ulp of f32 is 2^-22 relative.
        assert!(worst < 2.4e-7, "worst relative error {worst:e}");
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(-100.0), 0.0);
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    #[test]
    fn row_exp_and_dot_match_serial_sums() {
        for len in [0usize, 1, 15, 16, 17, 100, 257] {
            let row: Vec<f32> = (0..len).map(|i| -((i * 37 % 101) as f32) / 10.0).collect();
            let mut a = row.clone();
            let s = exp_shifted_sum(&mut a, 0.5);
            let want: Vec<f64> = row.iter().map(|&v| ((v - 0.5) as f64).exp()).collect();
            for (g, w) in a.iter().zip(&want) {
                assert!(((*g as f64) - w).abs() <= 3e-7 * w, "{g} vs {w}");
            }
            let ws: f64 = want.iter().sum();
            assert!(((s as f64) - ws).abs() <= 1e-6 * ws.max(1e-30), "sum {s} vs {ws}");
            let d = dot(&a, &row) as f64;
            let wd: f64 = want.iter().zip(&row).map(|(x, y)| x * *y as f64).sum();
            assert!((d - wd).abs() <= 1e-5 * wd.abs().max(1.0), "dot {d} vs {wd}");
        }
    }
}
