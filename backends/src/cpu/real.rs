//! The working precision of the CPU backend: f64 (the reference) or f32.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// A float type the CPU backend computes in. Every arithmetic step of an op
/// is done in this type (as PyTorch does in the tensor's dtype).
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + Debug
    + Display
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + Sum
{
    const ZERO: Self;
    const ONE: Self;
    const NAME: &'static str;
    const NEG_INFINITY: Self;
    /// 1.5 * 2^(mantissa bits): `(x + M) - M` rounds `x` to an integer, half
    /// to even, for `|x| < 2^(mantissa bits - 1)`.
    const ROUND_MAGIC: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn tanh(self) -> Self;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    fn powf(self, e: Self) -> Self;
    fn round_ties_even(self) -> Self;
    fn is_nan(self) -> bool;
    fn max(self, o: Self) -> Self;
    fn min(self, o: Self) -> Self;
    /// Round to the nearest IEEE half (through f32, as PyTorch's conversion
    /// of a double to float16 does) and back.
    fn round_to_f16(self) -> Self;
    /// `c = alpha * a @ b + beta * c` for row/column strided matrices
    /// (`a` is m x k, `b` k x n, `c` m x n): the matrixmultiply kernel for
    /// this type. Arguments: m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc.
    ///
    /// # Safety (of a call)
    /// The pointers and strides must describe valid, non-overlapping (for c) memory.
    const GEMM: GemmFn<Self>;
}

/// `unsafe fn(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)`, as
/// matrixmultiply's `sgemm`/`dgemm` take them.
pub type GemmFn<T> = unsafe fn(usize, usize, usize, T, *const T, isize, isize, *const T, isize, isize, T, *mut T, isize, isize);

/// Methods that call the inherent method of the same name.
macro_rules! forward_unary {
    ($t:ident: $($f:ident -> $r:ty),*) => {
        $(
            #[inline]
            fn $f(self) -> $r {
                $t::$f(self)
            }
        )*
    };
}

/// `keep_a ? a : b`, NaN (`nan`) when either is NaN: torch.maximum/minimum.
#[inline]
fn nan_propagating<T: Real>(a: T, b: T, nan: T, keep_a: bool) -> T {
    if a.is_nan() || b.is_nan() {
        nan
    } else if keep_a {
        a
    } else {
        b
    }
}

macro_rules! impl_real {
    ($t:ident, $gemm:path, $name:literal, $magic:expr) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NAME: &'static str = $name;
            const NEG_INFINITY: Self = $t::NEG_INFINITY;
            const ROUND_MAGIC: Self = $magic;
            const GEMM: GemmFn<Self> = $gemm;
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            forward_unary!($t: exp -> Self, ln -> Self, tanh -> Self, sqrt -> Self, abs -> Self, sin -> Self, cos -> Self, round_ties_even -> Self, is_nan -> bool);
            #[inline]
            fn powf(self, e: Self) -> Self {
                $t::powf(self, e)
            }
            #[inline]
            fn max(self, o: Self) -> Self {
                nan_propagating(self, o, $t::NAN, self >= o)
            }
            #[inline]
            fn min(self, o: Self) -> Self {
                nan_propagating(self, o, $t::NAN, self <= o)
            }
            #[inline]
            fn round_to_f16(self) -> Self {
                half::f16::from_f32(self as f32).to_f32() as $t
            }
        }
    };
}

impl_real!(f64, matrixmultiply::dgemm, "f64", 6755399441055744.0);
impl_real!(f32, matrixmultiply::sgemm, "f32", 12582912.0);

/// `s` as f32 when `F` is f32 (for f32-only fast paths), else `None`.
pub fn f32_slice<F: Real>(s: &[F]) -> Option<&[f32]> {
    // SAFETY: F is f32 (same type, layout and lifetime).
    (std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>()).then(|| unsafe { std::slice::from_raw_parts(s.as_ptr() as *const f32, s.len()) })
}

/// `s` as mutable f32 when `F` is f32, else `None`.
pub fn f32_slice_mut<F: Real>(s: &mut [F]) -> Option<&mut [f32]> {
    if std::any::TypeId::of::<F>() == std::any::TypeId::of::<f32>() {
        // SAFETY: F is f32 (same type, layout and lifetime); the borrow moves.
        Some(unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut f32, s.len()) })
    } else {
        None
    }
}
