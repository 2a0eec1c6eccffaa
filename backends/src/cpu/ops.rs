//! Kernels of the CPU backend, one function per op family. Every function
//! computes exactly what the op's doc in `pgc_ir::op` says, in precision `F`.

use super::real::Real;
use super::tensor::Tensor;
use pgc_ir::{BinaryFn, ReduceFn, Shape, UnaryFn};
use rayon::prelude::*;

/// Below this many elements a loop runs on the calling thread.
pub const PAR_MIN: usize = 1 << 15;

/// A raw pointer that may cross threads; users guarantee disjoint writes.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole wrapper).
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

fn chunk_len(n: usize) -> usize {
    let t = rayon::current_num_threads().max(1);
    (n / (4 * t)).max(4096)
}

/// `out[i] = f(i-th block)` over chunks, in parallel when large.
pub(crate) fn par_fill<F: Real>(out: &mut [F], f: impl Fn(usize, &mut [F]) + Sync + Send) {
    let n = out.len();
    if n < PAR_MIN {
        f(0, out);
    } else {
        let c = chunk_len(n);
        out.par_chunks_mut(c).enumerate().for_each(|(k, ch)| f(k * c, ch));
    }
}

/// Contiguous strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Strides of `from` seen through a broadcast to `to` (rank of `to`; 0 on broadcast axes).
fn bcast_strides(from: &[usize], to: &[usize]) -> Vec<usize> {
    let st = strides(from);
    let off = to.len() - from.len();
    (0..to.len())
        .map(|i| if i < off || from[i - off] == 1 { 0 } else { st[i - off] })
        .collect()
}

/// (outer, n, inner) of a shape around `axis`.
pub fn split3(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

/// Calls `f(row, offsets)` for rows `r0..r1` of `shape` (a row = the last axis),
/// with each operand's element offset of the row start given its strides.
fn for_rows<const K: usize>(shape: &[usize], st: [&[usize]; K], r0: usize, r1: usize, mut f: impl FnMut(usize, [usize; K])) {
    let lead = &shape[..shape.len().saturating_sub(1)];
    let r = lead.len();
    let mut idx = vec![0usize; r];
    let mut rem = r0;
    for d in (0..r).rev() {
        idx[d] = rem % lead[d];
        rem /= lead[d];
    }
    let mut off = [0usize; K];
    for k in 0..K {
        off[k] = (0..r).map(|d| idx[d] * st[k][d]).sum();
    }
    for row in r0..r1 {
        f(row, off);
        // odometer increment
        let mut d = r;
        while d > 0 {
            d -= 1;
            idx[d] += 1;
            for k in 0..K {
                off[k] += st[k][d];
            }
            if idx[d] < lead[d] {
                break;
            }
            for k in 0..K {
                off[k] -= st[k][d] * lead[d];
            }
            idx[d] = 0;
        }
    }
}

#[inline]
pub fn unary_fn<F: Real>(f: UnaryFn, x: F) -> F {
    match f {
        UnaryFn::Neg => -x,
        UnaryFn::Abs => x.abs(),
        UnaryFn::Relu => {
            // NaN propagates, as in torch.relu.
            if x > F::ZERO || x.is_nan() {
                x
            } else {
                F::ZERO
            }
        }
        UnaryFn::Step => {
            if x > F::ZERO {
                F::ONE
            } else {
                F::ZERO
            }
        }
        UnaryFn::Square => x * x,
        UnaryFn::Sqrt => x.sqrt(),
        UnaryFn::Rsqrt => F::ONE / x.sqrt(),
        UnaryFn::Recip => F::ONE / x,
        UnaryFn::Sigmoid => F::ONE / (F::ONE + (-x).exp()),
        UnaryFn::Tanh => x.tanh(),
        UnaryFn::Exp => x.exp(),
        UnaryFn::Log => x.ln(),
        UnaryFn::Softplus => {
            // max(x, 0) + log1p(exp(-|x|)), log1p(t) = log(u) * (t / (u - 1))
            // with u = 1 + t (t where u rounds to 1): `scalar::ops` computes
            // the same steps.
            let t = (-x.abs()).exp();
            let u = F::ONE + t;
            let l = if u == F::ONE { t } else { u.ln() * (t / (u - F::ONE)) };
            x.max(F::ZERO) + l
        }
    }
}

#[inline]
pub fn binary_fn<F: Real>(f: BinaryFn, a: F, b: F) -> F {
    match f {
        BinaryFn::Add => a + b,
        BinaryFn::Sub => a - b,
        BinaryFn::Mul => a * b,
        BinaryFn::Div => a / b,
        BinaryFn::Max => a.max(b),
        BinaryFn::Min => a.min(b),
        BinaryFn::Eq => {
            if a == b {
                F::ONE
            } else {
                F::ZERO
            }
        }
    }
}

/// Where an op's output buffer comes from: fresh memory for the
/// interpreter ([`Fresh`]), recycled buffers for the plan executor (whose
/// pool implements this). The contents are unspecified: an op overwrites
/// every element, or zero-fills first where it accumulates.
pub trait Alloc<F: Real> {
    fn buf(&mut self, len: usize) -> Vec<F>;
    /// A zero-filled buffer (for ops that accumulate or leave gaps).
    fn zeroed(&mut self, len: usize) -> Vec<F> {
        let mut v = self.buf(len);
        v.fill(F::ZERO);
        v
    }
}

/// Fresh zeroed memory for every output.
pub struct Fresh;

impl<F: Real> Alloc<F> for Fresh {
    fn buf(&mut self, len: usize) -> Vec<F> {
        vec![F::ZERO; len]
    }
    fn zeroed(&mut self, len: usize) -> Vec<F> {
        // Fresh memory is zero already.
        self.buf(len)
    }
}

/// Element-wise map, in place when the storage is not shared.
pub fn map<F: Real>(x: Tensor<F>, f: impl Fn(F) -> F + Sync + Send, alloc: &mut dyn Alloc<F>) -> Tensor<F> {
    let shape = x.shape.clone();
    match x.try_take() {
        Ok(mut v) => {
            par_fill(&mut v, |_, ch| ch.iter_mut().for_each(|e| *e = f(*e)));
            Tensor::float(shape, v)
        }
        Err(x) => {
            let src = x.f();
            let mut out = alloc.buf(src.len());
            par_fill(&mut out, |s, ch| {
                let n = ch.len();
                for (o, &e) in ch.iter_mut().zip(&src[s..s + n]) {
                    *o = f(e)
                }
            });
            Tensor::float(shape, out)
        }
    }
}

/// Element-wise function of two same-shaped float slices into `out`.
fn zip_into<F: Real>(out: &mut [F], a: &[F], b: &[F], f: &(impl Fn(F, F) -> F + Sync + Send)) {
    par_fill(out, |s, ch| {
        let n = ch.len();
        let (a, b) = (&a[s..s + n], &b[s..s + n]);
        for i in 0..ch.len() {
            ch[i] = f(a[i], b[i]);
        }
    });
}

/// Numpy-broadcasting binary op into a tensor of shape `out_shape`.
pub fn binary<F: Real>(a: Tensor<F>, b: Tensor<F>, out_shape: &[usize], f: impl Fn(F, F) -> F + Sync + Send, alloc: &mut dyn Alloc<F>) -> Tensor<F> {
    let n: usize = out_shape.iter().product();
    if a.shape == out_shape && b.shape == out_shape {
        return match a.try_take() {
            Ok(mut av) => {
                let bf = b.f();
                par_fill(&mut av, |s, ch| {
                    let n = ch.len();
                    let bb = &bf[s..s + n];
                    for i in 0..ch.len() {
                        ch[i] = f(ch[i], bb[i]);
                    }
                });
                Tensor::float(out_shape.to_vec(), av)
            }
            Err(a) => {
                let mut out = alloc.buf(n);
                zip_into(&mut out, a.f(), b.f(), &f);
                Tensor::float(out_shape.to_vec(), out)
            }
        };
    }
    if b.numel() == 1 {
        let s = b.f()[0];
        if a.shape == out_shape {
            return map(a, |x| f(x, s), alloc);
        }
    }
    if a.numel() == 1 {
        let s = a.f()[0];
        if b.shape == out_shape {
            return map(b, |x| f(s, x), alloc);
        }
    }
    let sa = bcast_strides(&a.shape, out_shape);
    let sb = bcast_strides(&b.shape, out_shape);
    let (af, bf) = (a.f(), b.f());
    let mut out = alloc.buf(n);
    if n == 0 {
        return Tensor::float(out_shape.to_vec(), out);
    }
    let l = *out_shape.last().unwrap_or(&1);
    let (la, lb) = (*sa.last().unwrap_or(&0), *sb.last().unwrap_or(&0));
    if out_shape.is_empty() {
        out[0] = f(af[0], bf[0]);
        return Tensor::float(vec![], out);
    }
    let rows = n / l.max(1);
    let rows_per = if n < PAR_MIN { rows } else { (chunk_len(n) / l.max(1)).max(1) };
    out.par_chunks_mut(rows_per * l).enumerate().for_each(|(c, ch)| {
        let r0 = c * rows_per;
        let r1 = (r0 + rows_per).min(rows);
        for_rows(out_shape, [&sa[..], &sb[..]], r0, r1, |row, [oa, ob]| {
            let o = &mut ch[(row - r0) * l..(row - r0 + 1) * l];
            for j in 0..l {
                o[j] = f(af[oa + j * la], bf[ob + j * lb]);
            }
        });
    });
    Tensor::float(out_shape.to_vec(), out)
}

/// Materialised numpy broadcast.
pub fn broadcast<F: Real>(x: Tensor<F>, shape: &[usize], alloc: &mut dyn Alloc<F>) -> Tensor<F> {
    if x.shape == shape {
        return x;
    }
    let n: usize = shape.iter().product();
    if x.numel() == 1 {
        let mut out = alloc.buf(n);
        out.fill(x.f()[0]);
        return Tensor::float(shape.to_vec(), out);
    }
    let sx = bcast_strides(&x.shape, shape);
    let xf = x.f();
    let mut out = alloc.buf(n);
    let l = *shape.last().unwrap();
    let lx = *sx.last().unwrap();
    let rows = n / l.max(1);
    if n == 0 {
        return Tensor::float(shape.to_vec(), out);
    }
    let rows_per = if n < PAR_MIN { rows } else { (chunk_len(n) / l.max(1)).max(1) };
    out.par_chunks_mut(rows_per * l).enumerate().for_each(|(c, ch)| {
        let r0 = c * rows_per;
        let r1 = (r0 + rows_per).min(rows);
        for_rows(shape, [&sx[..]], r0, r1, |row, [ox]| {
            let o = &mut ch[(row - r0) * l..(row - r0 + 1) * l];
            if lx == 0 {
                o.fill(xf[ox]);
            } else {
                o.copy_from_slice(&xf[ox..ox + l]);
            }
        });
    });
    Tensor::float(shape.to_vec(), out)
}

/// Sum over broadcast axes down to `shape`.
pub fn sum_to<F: Real>(x: Tensor<F>, shape: &[usize], alloc: &mut dyn Alloc<F>) -> Tensor<F> {
    if x.shape == shape {
        return x;
    }
    let xs = x.shape.clone();
    let r = xs.len();
    let pad = r - shape.len();
    let padded: Vec<usize> = (0..r).map(|i| if i < pad { 1 } else { shape[i - pad] }).collect();
    // Reduce one axis at a time from the front: a chain of reductions keeps
    // every step a simple, parallel loop.
    let mut cur = x;
    for axis in 0..r {
        if padded[axis] == 1 && xs[axis] != 1 {
            cur = reduce(cur, ReduceFn::Sum, axis, true, alloc);
        }
    }
    cur.with_shape(shape.to_vec())
}

/// Sum of a slice in 8 interleaved partial sums (combined pairwise at the
/// end): the additions are independent, so they pipeline and vectorise,
/// where one running sum waits on every previous addition.
pub fn sum_lanes<F: Real>(x: &[F]) -> F {
    const L: usize = 8;
    let mut acc = [F::ZERO; L];
    let mut ch = x.chunks_exact(L);
    for c in &mut ch {
        for i in 0..L {
            acc[i] += c[i];
        }
    }
    for (i, &v) in ch.remainder().iter().enumerate() {
        acc[i] += v;
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// Reduction over one axis.
pub fn reduce<F: Real>(x: Tensor<F>, f: ReduceFn, axis: usize, keepdim: bool, alloc: &mut dyn Alloc<F>) -> Tensor<F> {
    let (outer, n, inner) = split3(&x.shape, axis);
    let xf = x.f();
    let mut out = alloc.zeroed(outer * inner);
    let nf = F::from_f64(n as f64);
    let finish = |v: F| if f == ReduceFn::Mean { v / nf } else { v };
    if inner == 1 {
        par_fill(&mut out, |s, ch| {
            for (i, o) in ch.iter_mut().enumerate() {
                let row = &xf[(s + i) * n..(s + i + 1) * n];
                *o = finish(match f {
                    ReduceFn::Sum | ReduceFn::Mean => sum_lanes(row),
                    ReduceFn::Max => row.iter().copied().fold(F::NEG_INFINITY, |m, v| m.max(v)),
                });
            }
        });
    } else {
        let work = |o: usize, dst: &mut [F]| {
            let base = o * n * inner;
            dst.copy_from_slice(&xf[base..base + inner]);
            for j in 1..n {
                let src = &xf[base + j * inner..base + (j + 1) * inner];
                match f {
                    ReduceFn::Sum | ReduceFn::Mean => dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s),
                    ReduceFn::Max => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = d.max(s)),
                }
            }
            if f == ReduceFn::Mean {
                dst.iter_mut().for_each(|d| *d = *d / nf);
            }
        };
        if n == 0 {
            // empty reduction: sum 0, max -inf
            if f == ReduceFn::Max {
                out.fill(F::NEG_INFINITY);
            }
        } else if outer * n * inner < PAR_MIN || outer == 1 {
            for o in 0..outer {
                work(o, &mut out[o * inner..(o + 1) * inner]);
            }
        } else {
            out.par_chunks_mut(inner).enumerate().for_each(|(o, dst)| work(o, dst));
        }
    }
    let mut s = x.shape.clone();
    if keepdim {
        s[axis] = 1;
    } else {
        s.remove(axis);
    }
    Tensor::float(s, out)
}

/// General permutation of axes (copy).
pub fn permute<F: Real>(x: Tensor<F>, perm: &[usize], alloc: &mut dyn Alloc<F>) -> Tensor<F> {
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return x;
    }
    let xs = &x.shape;
    let st = strides(xs);
    let oshape: Shape = perm.iter().map(|&p| xs[p]).collect();
    let ost: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    let n = x.numel();
    macro_rules! go {
        ($src:expr, $out:expr) => {{
            let src = $src;
            let mut out = $out;
            if n > 0 {
                let l = *oshape.last().unwrap();
                let ls = *ost.last().unwrap();
                let rows = n / l;
                let rows_per = if n < PAR_MIN { rows } else { (chunk_len(n) / l).max(1) };
                out.par_chunks_mut(rows_per * l).enumerate().for_each(|(c, ch)| {
                    let r0 = c * rows_per;
                    let r1 = (r0 + rows_per).min(rows);
                    for_rows(&oshape, [&ost[..]], r0, r1, |row, [ox]| {
                        let o = &mut ch[(row - r0) * l..(row - r0 + 1) * l];
                        if ls == 1 {
                            o.copy_from_slice(&src[ox..ox + l]);
                        } else {
                            for j in 0..l {
                                o[j] = src[ox + j * ls];
                            }
                        }
                    });
                });
            }
            out
        }};
    }
    match x.as_float() {
        Some(src) => Tensor::float(oshape.clone(), go!(src, alloc.buf(n))),
        None => Tensor::int(oshape.clone(), go!(x.i(), vec![0i32; n])),
    }
}

/// Select `index` along `axis`.
pub fn index<F: Real>(x: Tensor<F>, axis: usize, index: usize, alloc: &mut dyn Alloc<F>) -> Tensor<F> {
    let (outer, n, inner) = split3(&x.shape, axis);
    let mut s = x.shape.clone();
    s.remove(axis);
    match x.as_float() {
        Some(xf) => {
            let mut out = alloc.buf(outer * inner);
            for o in 0..outer {
                out[o * inner..(o + 1) * inner].copy_from_slice(&xf[(o * n + index) * inner..(o * n + index + 1) * inner]);
            }
            Tensor::float(s, out)
        }
        None => {
            let xi = x.i();
            let mut out = Vec::with_capacity(outer * inner);
            for o in 0..outer {
                out.extend_from_slice(&xi[(o * n + index) * inner..(o * n + index + 1) * inner]);
            }
            Tensor::int(s, out)
        }
    }
}

/// Adjoint of index: zeros with `x` placed at `index` of a new axis of length `size`.
pub fn unindex<F: Real>(x: Tensor<F>, axis: usize, index: usize, size: usize, alloc: &mut dyn Alloc<F>) -> Tensor<F> {
    let mut s = x.shape.clone();
    s.insert(axis, size);
    let (outer, _, inner) = split3(&s, axis);
    let xf = x.f();
    let mut out = alloc.zeroed(outer * size * inner);
    for o in 0..outer {
        out[(o * size + index) * inner..(o * size + index + 1) * inner].copy_from_slice(&xf[o * inner..(o + 1) * inner]);
    }
    Tensor::float(s, out)
}

/// `out[.., t, ..] = x[.., t - offset, ..]`, zero outside.
pub fn shift<F: Real>(x: Tensor<F>, axis: usize, offset: i64, alloc: &mut dyn Alloc<F>) -> Tensor<F> {
    let (outer, n, inner) = split3(&x.shape, axis);
    let xf = x.f();
    let mut out = alloc.zeroed(xf.len());
    for o in 0..outer {
        for t in 0..n {
            let src = t as i64 - offset;
            if src >= 0 && (src as usize) < n {
                let s = src as usize;
                out[(o * n + t) * inner..(o * n + t + 1) * inner].copy_from_slice(&xf[(o * n + s) * inner..(o * n + s + 1) * inner]);
            }
        }
    }
    Tensor::float(x.shape.clone(), out)
}

/// cos and sin tables `[T, hd/2]` computed in precision F as pgref does:
/// `inv = 1 / base^(arange(0, hd, 2) / hd)`, `angle = t * inv`.
pub fn rope_tables<F: Real>(t: usize, hd: usize, base: f64) -> (Vec<F>, Vec<F>) {
    let half = hd / 2;
    let b = F::from_f64(base);
    let hdf = F::from_f64(hd as f64);
    let inv: Vec<F> = (0..half).map(|j| F::ONE / b.powf(F::from_f64((2 * j) as f64) / hdf)).collect();
    let mut cos = vec![F::ZERO; t * half];
    let mut sin = vec![F::ZERO; t * half];
    for p in 0..t {
        let pf = F::from_f64(p as f64);
        for j in 0..half {
            let a = pf * inv[j];
            cos[p * half + j] = a.cos();
            sin[p * half + j] = a.sin();
        }
    }
    (cos, sin)
}

/// Rotary embedding of `x[..., T, hd]`; `inverse` rotates by the negated angle.
pub fn rope<F: Real>(x: Tensor<F>, base: f64, inverse: bool) -> Tensor<F> {
    let r = x.shape.len();
    let (t, hd) = (x.shape[r - 2], x.shape[r - 1]);
    let (cos, sin) = rope_tables::<F>(t, hd, base);
    let mut out = vec![F::ZERO; x.numel()];
    rope_into(x.f(), t, hd, &cos, &sin, inverse, &mut out);
    Tensor::float(x.shape.clone(), out)
}

/// [`rope`] of `xf` (blocks of `t x hd`) into `out` with the tables of
/// [`rope_tables`]; an odd `hd` leaves each row's last element zero.
pub(crate) fn rope_into<F: Real>(xf: &[F], t: usize, hd: usize, cos: &[F], sin: &[F], inverse: bool, out: &mut [F]) {
    let half = hd / 2;
    let block = t * hd;
    if block == 0 {
        return;
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
}

/// Per-row fake quantization (spec/MODEL.md): scale rounded to f16 and at
/// least f16's smallest normal, round half to even, clamp to the int range.
pub fn fake_quant<F: Real>(w: Tensor<F>, bits: u32) -> Tensor<F> {
    let (rows, cols) = (w.shape[0], w.shape[1]);
    let qmax = ((1i64 << (bits - 1)) - 1) as f64;
    let (qmaxf, qminf) = (F::from_f64(qmax), F::from_f64(-qmax - 1.0));
    let floor = F::from_f64(1e-12);
    let tiny = F::from_f64(half::f16::MIN_POSITIVE.to_f64());
    let wf = w.f();
    let mut out = vec![F::ZERO; wf.len()];
    if cols == 0 {
        return Tensor::float(w.shape.clone(), out);
    }
    let body = |r: usize, o: &mut [F]| {
        let row = &wf[r * cols..(r + 1) * cols];
        let amax = row.iter().fold(F::ZERO, |m, &v| m.max(v.abs()));
        let s = (amax / qmaxf).max(floor).round_to_f16().max(tiny);
        for (d, &v) in o.iter_mut().zip(row) {
            // clamp(round(x)) == round(clamp(x)) for integer bounds; after the
            // clamp |x| <= 128, where the magic-number rounding is exact
            // round-half-to-even (and much faster than a libm call).
            let x = (v / s).max(qminf).min(qmaxf);
            let q = (x + F::ROUND_MAGIC) - F::ROUND_MAGIC;
            *d = q * s;
        }
    };
    if wf.len() < PAR_MIN {
        out.chunks_mut(cols).enumerate().for_each(|(r, o)| body(r, o));
    } else {
        out.par_chunks_mut(cols).enumerate().for_each(|(r, o)| body(r, o));
    }
    let _ = rows;
    Tensor::float(w.shape.clone(), out)
}

/// Hashed bigram buckets of `ids[B, T]` (spec/MODEL.md step 1), i64 arithmetic.
pub fn bigram_hash<F: Real>(ids: &Tensor<F>, buckets: usize) -> Tensor<F> {
    let (b, t) = (ids.shape[0], ids.shape[1]);
    let x = ids.i();
    let m = buckets as i64 - 1;
    let mut out = vec![0i32; b * t];
    for bi in 0..b {
        for ti in 0..t {
            out[bi * t + ti] = if ti == 0 {
                m as i32
            } else {
                let cur = x[bi * t + ti] as i64;
                let prev = x[bi * t + ti - 1] as i64;
                ((36313 * cur) ^ (27191 * prev)).rem_euclid(m) as i32
            };
        }
    }
    Tensor::int(ids.shape.clone(), out)
}

/// Embedding gather; `Err((position, id))` for an id outside the table.
pub fn gather<F: Real>(table: &Tensor<F>, ids: &Tensor<F>, alloc: &mut dyn Alloc<F>) -> Result<Tensor<F>, (usize, i32)> {
    let (rows, c) = (table.shape[0], table.shape[1]);
    let tf = table.f();
    let idx = ids.i();
    if let Some((p, &id)) = idx.iter().enumerate().find(|(_, &id)| id < 0 || id as usize >= rows) {
        return Err((p, id));
    }
    let mut out = alloc.buf(idx.len() * c);
    for (p, &id) in idx.iter().enumerate() {
        out[p * c..(p + 1) * c].copy_from_slice(&tf[id as usize * c..(id as usize + 1) * c]);
    }
    let mut s = ids.shape.clone();
    s.push(c);
    Ok(Tensor::float(s, out))
}

/// Scatter-add of rows of `dy[..., C]` into a `[rows, C]` table at `ids`.
pub fn scatter_add<F: Real>(ids: &Tensor<F>, dy: &Tensor<F>, rows: usize, alloc: &mut dyn Alloc<F>) -> Result<Tensor<F>, (usize, i32)> {
    let c = *dy.shape.last().unwrap();
    let idx = ids.i();
    let d = dy.f();
    let mut out = alloc.zeroed(rows * c);
    for (p, &id) in idx.iter().enumerate() {
        if id < 0 || id as usize >= rows {
            return Err((p, id));
        }
        let dst = &mut out[id as usize * c..(id as usize + 1) * c];
        dst.iter_mut().zip(&d[p * c..(p + 1) * c]).for_each(|(o, &v)| *o += v);
    }
    Ok(Tensor::float(vec![rows, c], out))
}

/// Per-row log-sum-exp of a `[N, V]` matrix.
pub(crate) fn row_lse<F: Real>(z: &[F], v: usize) -> Vec<F> {
    let n = z.len() / v.max(1);
    let lse = |i: usize| {
        let row = &z[i * v..(i + 1) * v];
        let m = row.iter().fold(F::NEG_INFINITY, |m, &x| m.max(x));
        let s: F = row.iter().map(|&x| (x - m).exp()).sum();
        m + s.ln()
    };
    if z.len() < PAR_MIN {
        (0..n).map(lse).collect()
    } else {
        (0..n).into_par_iter().map(lse).collect()
    }
}

fn check_targets(t: &[i32], v: usize) -> Result<(), (usize, i32)> {
    match t.iter().position(|&x| x < 0 || x as usize >= v) {
        Some(p) => Err((p, t[p])),
        None => Ok(()),
    }
}

/// Mean cross entropy of `z[..., V]` against targets, stable log-sum-exp.
pub fn cross_entropy<F: Real>(z: &Tensor<F>, t: &Tensor<F>) -> Result<Tensor<F>, (usize, i32)> {
    let v = *z.shape.last().unwrap();
    let (zf, tg) = (z.f(), t.i());
    check_targets(tg, v)?;
    let lse = row_lse(zf, v);
    Ok(Tensor::float(vec![], vec![cross_entropy_mean(zf, v, tg, &lse)]))
}

/// The mean over rows of `lse[i] - z[i, t[i]]` (targets checked).
pub(crate) fn cross_entropy_mean<F: Real>(zf: &[F], v: usize, tg: &[i32], lse: &[F]) -> F {
    let n = tg.len();
    let mut total = F::ZERO;
    for i in 0..n {
        total += lse[i] - zf[i * v + tg[i] as usize];
    }
    total / F::from_f64(n as f64)
}

/// `dz = (softmax(z) - onehot(t)) * dloss / N`.
pub fn cross_entropy_grad<F: Real>(z: &Tensor<F>, t: &Tensor<F>, dloss: &Tensor<F>) -> Result<Tensor<F>, (usize, i32)> {
    let v = *z.shape.last().unwrap();
    let (zf, tg) = (z.f(), t.i());
    check_targets(tg, v)?;
    let lse = row_lse(zf, v);
    let mut out = vec![F::ZERO; zf.len()];
    cross_entropy_grad_into(zf, v, tg, &lse, dloss.f()[0], &mut out);
    Ok(Tensor::float(z.shape.clone(), out))
}

/// [`cross_entropy_grad`] into `out` (every element written), given `lse = row_lse(z)`.
pub(crate) fn cross_entropy_grad_into<F: Real>(zf: &[F], v: usize, tg: &[i32], lse: &[F], dloss: F, out: &mut [F]) {
    if v == 0 {
        return;
    }
    let scale = dloss / F::from_f64(tg.len() as f64);
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
