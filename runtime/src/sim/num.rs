//! Number formats and rounding: conversions between integers, f64, f32, f16
//! and bf16 under the PTX rounding modes, done exactly (round-to-nearest-even
//! first, then a one-ulp correction for the directed modes).

use half::{bf16, f16};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rnd {
    /// to nearest, ties to even
    N,
    /// toward zero
    Z,
    /// toward -inf
    M,
    /// toward +inf
    P,
}

/// Canonical NaN bits PTX produces for 16-bit conversions.
pub const NAN16: u16 = 0x7fff;
pub const NAN32: u32 = 0x7fff_ffff;

fn next_up_bits(b: u64, sign: u64) -> u64 {
    if b == 0 || b == sign {
        1
    } else if b & sign == 0 {
        b + 1
    } else {
        b - 1
    }
}
fn next_down_bits(b: u64, sign: u64) -> u64 {
    if b == 0 || b == sign {
        sign | 1
    } else if b & sign == 0 {
        b - 1
    } else {
        b + 1
    }
}

/// Given the round-to-nearest candidate `c_bits` (whose exact value compares to
/// the exact source as `ord`: candidate minus source), apply the directed mode.
fn adjust(c_bits: u64, sign: u64, ord: std::cmp::Ordering, src_neg: bool, mode: Rnd) -> u64 {
    use std::cmp::Ordering::*;
    match (ord, mode) {
        (Equal, _) | (_, Rnd::N) => c_bits,
        (Greater, Rnd::M) => next_down_bits(c_bits, sign),
        (Greater, Rnd::Z) if !src_neg => next_down_bits(c_bits, sign),
        (Less, Rnd::P) => next_up_bits(c_bits, sign),
        (Less, Rnd::Z) if src_neg => next_up_bits(c_bits, sign),
        _ => c_bits,
    }
}

fn cmp_f64(a: f64, b: f64) -> std::cmp::Ordering {
    a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal)
}

pub fn f64_to_f32(x: f64, mode: Rnd) -> f32 {
    if x.is_nan() {
        return f32::from_bits(NAN32);
    }
    let c = x as f32;
    let b = adjust(c.to_bits() as u64, 0x8000_0000, cmp_f64(c as f64, x), x < 0.0, mode);
    f32::from_bits(b as u32)
}

pub fn f64_to_bf16(x: f64, mode: Rnd) -> u16 {
    if x.is_nan() {
        return NAN16;
    }
    let c = bf16::from_f64(x);
    adjust(c.to_bits() as u64, 0x8000, cmp_f64(c.to_f64(), x), x < 0.0, mode) as u16
}

pub fn f64_to_f16(x: f64, mode: Rnd) -> u16 {
    if x.is_nan() {
        return NAN16;
    }
    let c = f16::from_f64(x);
    adjust(c.to_bits() as u64, 0x8000, cmp_f64(c.to_f64(), x), x < 0.0, mode) as u16
}

/// f32 -> bf16 bits (exact path through f64: f32 values are exact in f64).
pub fn f32_to_bf16(x: f32, mode: Rnd) -> u16 {
    if mode == Rnd::N {
        let b = x.to_bits();
        if x.is_nan() {
            return NAN16;
        }
        let round = 0x7fff + ((b >> 16) & 1);
        return (b.wrapping_add(round) >> 16) as u16;
    }
    f64_to_bf16(x as f64, mode)
}

pub fn f32_to_f16(x: f32, mode: Rnd) -> u16 {
    f64_to_f16(x as f64, mode)
}

pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}
pub fn f16_to_f32(b: u16) -> f32 {
    f16::from_bits(b).to_f32()
}

pub fn i64_to_f32(x: i64, mode: Rnd) -> f32 {
    let c = x as f32;
    let cv = c as i128; // exact: |c| <= 2^63
    let b = adjust(c.to_bits() as u64, 0x8000_0000, cv.cmp(&(x as i128)), x < 0, mode);
    f32::from_bits(b as u32)
}
pub fn u64_to_f32(x: u64, mode: Rnd) -> f32 {
    let c = x as f32;
    let cv = c as i128;
    let b = adjust(c.to_bits() as u64, 0x8000_0000, cv.cmp(&(x as i128)), false, mode);
    f32::from_bits(b as u32)
}
pub fn i64_to_f64(x: i64, mode: Rnd) -> f64 {
    let c = x as f64;
    let cv = c as i128;
    f64::from_bits(adjust(c.to_bits(), 1 << 63, cv.cmp(&(x as i128)), x < 0, mode))
}
pub fn u64_to_f64(x: u64, mode: Rnd) -> f64 {
    let c = x as f64;
    let cv = c as i128;
    f64::from_bits(adjust(c.to_bits(), 1 << 63, cv.cmp(&(x as i128)), false, mode))
}

/// Round to an integral value in f64 (the `.rni/.rzi/.rmi/.rpi` modes).
pub fn round_int(x: f64, mode: Rnd) -> f64 {
    match mode {
        Rnd::N => x.round_ties_even(),
        Rnd::Z => x.trunc(),
        Rnd::M => x.floor(),
        Rnd::P => x.ceil(),
    }
}

/// Float -> integer with saturation to `[lo, hi]`; NaN -> 0 (PTX semantics).
pub fn f64_to_int_sat(x: f64, mode: Rnd, lo: i128, hi: i128) -> i128 {
    if x.is_nan() {
        return 0;
    }
    let r = round_int(x, mode);
    if r <= lo as f64 {
        lo
    } else if r >= hi as f64 {
        hi
    } else {
        r as i128
    }
}

/// Flush a subnormal f32 to a zero of the same sign (`.ftz`).
#[inline]
pub fn ftz32(x: f32) -> f32 {
    if x.is_subnormal() {
        f32::from_bits(x.to_bits() & 0x8000_0000)
    } else {
        x
    }
}

/// `.sat` for floats: clamp to [0, 1], NaN -> +0.
#[inline]
pub fn sat01(x: f32) -> f32 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_round_to_nearest_even() {
        // 1 + 2^-8 is exactly between 1 and 1+2^-7 -> ties to even (1.0)
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0, Rnd::N), 0x3f80);
        // 1 + 3*2^-8 is between 1+2^-7 (odd) and 1+2^-6 -> even (1+2^-6 = 0x3f82)
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0, Rnd::N), 0x3f82);
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0 + 1.0 / 65536.0, Rnd::N), 0x3f81);
        assert_eq!(f32_to_bf16(f32::NAN, Rnd::N), NAN16);
        assert_eq!(f32_to_bf16(f32::MAX, Rnd::N), 0x7f80); // overflows to inf
        assert_eq!(f32_to_bf16(f32::MAX, Rnd::Z), 0x7f7f);
        assert_eq!(f32_to_bf16(-1.0 - 1.0 / 256.0 - 1.0 / 65536.0, Rnd::Z), 0xbf80);
        assert_eq!(f32_to_bf16(-1.0 - 1.0 / 65536.0, Rnd::M), 0xbf81);
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 65536.0, Rnd::P), 0x3f81);
        for &x in &[1.0f32, 3.14159, -2.5e-3, 6.0e10, 1.0e-40] {
            assert_eq!(f32_to_bf16(x, Rnd::N), f64_to_bf16(x as f64, Rnd::N), "{x}");
        }
    }

    #[test]
    fn f16_and_f32_rounding() {
        assert_eq!(f32_to_f16(1.0, Rnd::N), 0x3c00);
        assert_eq!(f32_to_f16(65520.0, Rnd::N), 0x7c00);
        assert_eq!(f32_to_f16(65520.0, Rnd::Z), 0x7bff);
        assert_eq!(f64_to_f32(1.0 + 2f64.powi(-24), Rnd::N), 1.0);
        assert_eq!(f64_to_f32(1.0 + 2f64.powi(-30), Rnd::P), 1.0 + 2f32.powi(-23));
        assert_eq!(i64_to_f32(16777217, Rnd::N), 16777216.0);
        assert_eq!(i64_to_f32(16777217, Rnd::P), 16777218.0);
        assert_eq!(i64_to_f32(-16777217, Rnd::Z), -16777216.0);
        assert_eq!(f64_to_int_sat(3.5, Rnd::N, 0, 255), 4);
        assert_eq!(f64_to_int_sat(2.5, Rnd::N, 0, 255), 2);
        assert_eq!(f64_to_int_sat(-1.0, Rnd::Z, 0, 255), 0);
        assert_eq!(f64_to_int_sat(f64::NAN, Rnd::Z, -128, 127), 0);
        assert_eq!(f64_to_int_sat(1e10, Rnd::Z, i32::MIN as i128, i32::MAX as i128), i32::MAX as i128);
    }
}
