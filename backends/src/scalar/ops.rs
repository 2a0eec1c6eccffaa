//! The scalar meaning of the graph's element-wise ops, written once: both code
//! generators build these expressions (the PTX kinds through
//! [`super::graph::GraphExprs`], the CPU JIT per row element) and lower them.
//! They compute what `cpu::ops::unary_fn` / `binary_fn` compute, operation
//! for operation, so the JIT stays bitwise the interpreter.

use super::expr::*;
use pgc_ir::{BinaryFn, Op, UnaryFn};

/// `f(a)`.
pub fn unary(x: &mut Exprs, f: UnaryFn, a: E) -> E {
    match f {
        UnaryFn::Neg => x.f1(F1::Neg, a),
        UnaryFn::Abs => x.f1(F1::Abs, a),
        UnaryFn::Relu => {
            // NaN propagates (x <= 0 is false for NaN), as in the CPU backend.
            let z = x.float_c(0.0);
            let le = x.fcmp(FCmp::Le, a, z);
            x.sel(le, z, a)
        }
        UnaryFn::Step => {
            let z = x.float_c(0.0);
            let one = x.float_c(1.0);
            let gt = x.fcmp(FCmp::Gt, a, z);
            x.sel(gt, one, z)
        }
        UnaryFn::Square => x.fmul(a, a),
        UnaryFn::Sqrt => x.f1(F1::Sqrt, a),
        UnaryFn::Rsqrt => x.f1(F1::Rsqrt, a),
        UnaryFn::Recip => x.f1(F1::Recip, a),
        UnaryFn::Sigmoid => x.f1(F1::Sigmoid, a),
        UnaryFn::Tanh => x.f1(F1::Tanh, a),
        UnaryFn::Exp => x.f1(F1::Exp, a),
        UnaryFn::Log => x.f1(F1::Log, a),
        UnaryFn::Softplus => {
            // max(x, 0) + log1p(exp(-|x|)): exp never overflows. log1p(t) is
            // log(u) * (t / (u - 1)) with u = 1 + t (the rounding of u cancels;
            // t itself where u rounds to 1), from the primitives every backend has.
            let z = x.float_c(0.0);
            let one = x.float_c(1.0);
            let ab = x.f1(F1::Abs, a);
            let n = x.f1(F1::Neg, ab);
            let t = x.f1(F1::Exp, n);
            let u = x.fadd(one, t);
            let exact = x.fcmp(FCmp::Eq, u, one);
            let lu = x.f1(F1::Log, u);
            let um1 = x.fsub(u, one);
            let q = x.fdiv(t, um1);
            let lq = x.fmul(lu, q);
            let l = x.sel(exact, t, lq);
            let m = x.f2(F2::Max, a, z);
            x.fadd(m, l)
        }
    }
}

/// `f(a, b)`.
pub fn binary(x: &mut Exprs, f: BinaryFn, a: E, b: E) -> E {
    match f {
        BinaryFn::Add => x.fadd(a, b),
        BinaryFn::Sub => x.fsub(a, b),
        BinaryFn::Mul => x.fmul(a, b),
        BinaryFn::Div => x.fdiv(a, b),
        BinaryFn::Max => x.f2(F2::Max, a, b),
        BinaryFn::Min => x.f2(F2::Min, a, b),
        BinaryFn::Eq => {
            let p = x.fcmp(FCmp::Eq, a, b);
            let (one, zero) = (x.float_c(1.0), x.float_c(0.0));
            x.sel(p, one, zero)
        }
    }
}

/// The value of element-wise op `op` at one element from its operands'
/// values there (`args`, in operand order); `None` for an op that is not
/// element-wise arithmetic (layout, reductions, indexing: their index maps
/// are the code generator's business).
pub fn pointwise(x: &mut Exprs, op: &Op, args: &[E]) -> Option<E> {
    Some(match (op, args) {
        (Op::Scalar { value }, []) => x.float_c(*value),
        (Op::Unary { f }, &[a]) => unary(x, *f, a),
        (Op::Binary { f }, &[a, b]) => binary(x, *f, a, b),
        (Op::LeakyRelu { slope }, &[a]) => {
            let z = x.float_c(0.0);
            let pos = x.fcmp(FCmp::Gt, a, z);
            let s = x.float_c(*slope);
            let sa = x.fmul(s, a);
            x.sel(pos, a, sa)
        }
        (Op::LeakyStep { slope }, &[a]) => {
            let z = x.float_c(0.0);
            let pos = x.fcmp(FCmp::Gt, a, z);
            let one = x.float_c(1.0);
            let s = x.float_c(*slope);
            x.sel(pos, one, s)
        }
        _ => return None,
    })
}
