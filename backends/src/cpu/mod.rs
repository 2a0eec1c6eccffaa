//! The CPU reference backend: executes forward and backward graphs in f64 or f32.
//!
//! [`execute`] interprets a verified [`Graph`] node by node, from named
//! parameters and inputs to the named outputs asked for. Only nodes those
//! outputs depend on run; each intermediate buffer is freed right after its
//! last use (use counts), and an element-wise op reuses its operand's buffer
//! when that was the operand's last use. The float type `F` ([`Real`]: f64
//! or f32) is the precision of every arithmetic step.
//!
//! Matrix products go through `matrixmultiply`, split over the rayon threads;
//! large element-wise loops, reductions and attention heads run on rayon too.
//! Attention computes one `T x T` score block per (batch, head) at a time. The
//! three `CausalAttentionGrad` nodes of one attention (same operands) are
//! computed together the first time one of them runs; the others are kept
//! until their turn.

mod attention;
pub mod autocast;
mod error;
pub mod linalg;
pub mod plan_exec;
pub mod ops;
pub mod real;
pub mod tensor;

pub use real::Real;
pub use tensor::{Buf, Tensor};

use pgc_ir::{AttnPart, Graph, Op, TensorType, ValueId};
use std::collections::HashMap;
use std::time::Instant;

pub use error::CpuError;

/// Time spent per op kind.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// (op name, nodes run, seconds), slowest first.
    pub ops: Vec<(&'static str, usize, f64)>,
}

impl Profile {
    pub fn render(&self) -> String {
        let total: f64 = self.ops.iter().map(|o| o.2).sum();
        let mut s = format!("{:<24} {:>6} {:>10}\n", "op", "nodes", "seconds");
        for (name, n, t) in &self.ops {
            s += &format!("{name:<24} {n:>6} {t:>10.4}\n");
        }
        s += &format!("{:<24} {:>6} {total:>10.4}\n", "total", "");
        s
    }
}

/// The outputs asked for, by name, and the time per op kind.
pub struct Run<F> {
    pub outputs: Vec<(String, Tensor<F>)>,
    pub profile: Profile,
}

impl<F> Run<F> {
    pub fn get(&self, name: &str) -> Option<&Tensor<F>> {
        self.outputs.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// Run `g` on `params` (by parameter name) and `inputs` (by `Input` name) and
/// return the outputs named in `wanted` (all outputs when `None`).
pub fn execute<F: Real>(
    g: &Graph,
    params: &HashMap<String, Tensor<F>>,
    inputs: &HashMap<String, Tensor<F>>,
    wanted: Option<&[&str]>,
) -> Result<Run<F>, CpuError> {
    execute_impl(g, params, inputs, wanted, None)
}

/// [`execute`], rounding to bf16 where `cast` says (the autocast yardstick).
pub(crate) fn execute_impl<F: Real>(
    g: &Graph,
    params: &HashMap<String, Tensor<F>>,
    inputs: &HashMap<String, Tensor<F>>,
    wanted: Option<&[&str]>,
    cast: Option<&autocast::Autocast>,
) -> Result<Run<F>, CpuError> {
    pgc_ir::verify(g).map_err(|es| CpuError::Invalid(es.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")))?;
    let outs = wanted_outputs(g, wanted)?;
    let n = g.nodes.len();
    let mut needed = vec![false; n];
    for (_, v) in &outs {
        needed[v.index()] = true;
    }
    for i in (0..n).rev() {
        if needed[i] {
            for a in &g.nodes[i].args {
                needed[a.index()] = true;
            }
        }
    }
    let mut remaining = vec![0u32; n];
    for (i, node) in g.nodes.iter().enumerate() {
        if needed[i] {
            for a in &node.args {
                remaining[a.index()] += 1;
            }
        }
    }
    for (_, v) in &outs {
        remaining[v.index()] += 1;
    }
    // Attention gradient groups: operands -> [(part, node)].
    let mut attn_groups: HashMap<Vec<ValueId>, Vec<(AttnPart, usize)>> = HashMap::new();
    for (i, node) in g.nodes.iter().enumerate() {
        if let (true, Op::CausalAttentionGrad { wrt, .. }) = (needed[i], &node.op) {
            attn_groups.entry(node.args.clone()).or_default().push((*wrt, i));
        }
    }
    let mut stash: HashMap<usize, Tensor<F>> = HashMap::new();
    let mut vals: Vec<Option<Tensor<F>>> = vec![None; n];
    let mut prof: HashMap<&'static str, (usize, f64)> = HashMap::new();

    for i in 0..n {
        if !needed[i] {
            continue;
        }
        let node = &g.nodes[i];
        let mut args = Vec::with_capacity(node.args.len());
        for a in &node.args {
            let ai = a.index();
            remaining[ai] -= 1;
            let t = if remaining[ai] == 0 { vals[ai].take() } else { vals[ai].clone() };
            args.push(t.expect("internal: operand computed before use"));
        }
        if let Some(c) = cast {
            for &k in &c.round_args[i] {
                let t = std::mem::replace(&mut args[k], Tensor::float(vec![0], vec![]));
                args[k] = autocast::round_tensor(t);
            }
        }
        let start = Instant::now();
        let opname = node.op.name();
        let oerr = |msg: String| CpuError::Op { node: i as u32, op: opname, msg };
        let out: Tensor<F> = match &node.op {
            Op::Input { name, ty } => load_input(inputs, name, ty)?,
            Op::Param { id } => load_param(g, params, g.param_name(*id))?,
            Op::CausalAttentionGrad { scale, .. } => match stash.remove(&i) {
                Some(t) => t,
                None => {
                    let group = &attn_groups[&node.args];
                    let want = [AttnPart::Q, AttnPart::K, AttnPart::V].map(|p| group.iter().any(|(w, _)| *w == p));
                    let res = attention::backward(&args[0], &args[1], &args[2], &args[3], *scale, want);
                    let mut mine = None;
                    for (part, node_id) in group {
                        let k = *part as usize;
                        let t = res[k].clone().expect("computed");
                        if *node_id == i {
                            mine = Some(t);
                        } else if *node_id > i {
                            stash.insert(*node_id, t);
                        }
                    }
                    mine.expect("node is in its group")
                }
            },
            Op::Rope { base, inverse } if cast.is_some_and(|c| c.compute[i] == autocast::Dt::Bf16) => {
                autocast::rope_bf16(&args[0], *base, *inverse)
            }
            op => eval(op, args, &node.ty).map_err(oerr)?,
        };
        let out = match cast {
            Some(c) if c.round_out[i] => autocast::round_tensor(out),
            _ => out,
        };
        if out.shape != node.ty.shape || out.dtype() != node.ty.dtype {
            return Err(oerr(format!("internal: computed {}{:?}, expected {}", out.dtype(), out.shape, node.ty)));
        }
        let e = prof.entry(opname).or_default();
        e.0 += 1;
        e.1 += start.elapsed().as_secs_f64();
        if remaining[i] > 0 {
            vals[i] = Some(out);
        }
    }
    let outputs = outs
        .iter()
        .map(|(name, v)| (name.clone(), vals[v.index()].clone().expect("output computed")))
        .collect();
    let mut ops: Vec<_> = prof.into_iter().map(|(k, (c, t))| (k, c, t)).collect();
    ops.sort_by(|a, b| b.2.total_cmp(&a.2));
    Ok(Run { outputs, profile: Profile { ops } })
}

/// Evaluate one op on its operands (all except the ones with external state).
fn eval<F: Real>(op: &Op, args: Vec<Tensor<F>>, ty: &TensorType) -> Result<Tensor<F>, String> {
    eval_with(op, args, ty, &mut ops::Fresh)
}

/// [`eval`] with the outputs of the element-wise, layout and reduction ops
/// taken from `alloc`.
pub(crate) fn eval_with<F: Real>(op: &Op, mut args: Vec<Tensor<F>>, ty: &TensorType, alloc: &mut dyn ops::Alloc<F>) -> Result<Tensor<F>, String> {
    let bad_id = |what: &str, (pos, id): (usize, i32), limit: usize| format!("{what} {id} at position {pos} is outside 0..{limit}");
    Ok(match op {
        Op::Input { .. } | Op::Param { .. } | Op::CausalAttentionGrad { .. } => {
            unreachable!("handled by execute")
        }
        Op::Scalar { value } => Tensor::float(vec![], vec![F::from_f64(*value)]),
        Op::Unary { f } => {
            let f = *f;
            ops::map(args.pop().unwrap(), move |x| ops::unary_fn(f, x), alloc)
        }
        Op::LeakyRelu { slope } => {
            let s = F::from_f64(*slope);
            ops::map(args.pop().unwrap(), move |x| if x > F::ZERO { x } else { s * x }, alloc)
        }
        Op::LeakyStep { slope } => {
            let s = F::from_f64(*slope);
            ops::map(args.pop().unwrap(), move |x| if x > F::ZERO { F::ONE } else { s }, alloc)
        }
        Op::Binary { f } => {
            let f = *f;
            let b = args.pop().unwrap();
            let a = args.pop().unwrap();
            ops::binary(a, b, &ty.shape, move |x, y| ops::binary_fn(f, x, y), alloc)
        }
        Op::Reduce { f, axis, keepdim } => ops::reduce(args.pop().unwrap(), *f, *axis, *keepdim, alloc),
        Op::Reshape { shape } => args.pop().unwrap().with_shape(shape.clone()),
        Op::Permute { perm } => ops::permute(args.pop().unwrap(), perm, alloc),
        Op::Broadcast { shape } => ops::broadcast(args.pop().unwrap(), shape, alloc),
        Op::SumTo { shape } => ops::sum_to(args.pop().unwrap(), shape, alloc),
        Op::Index { axis, index } => ops::index(args.pop().unwrap(), *axis, *index, alloc),
        Op::Unindex { axis, index, size } => ops::unindex(args.pop().unwrap(), *axis, *index, *size, alloc),
        Op::Linear => linalg::linear(&args[0], &args[1]),
        Op::MatMul => linalg::matmul(&args[0], &args[1]),
        Op::OuterSum => linalg::outer_sum(&args[0], &args[1]),
        Op::Gather => ops::gather(&args[0], &args[1], alloc).map_err(|e| bad_id("token id", e, args[0].shape[0]))?,
        Op::ScatterAdd { rows } => ops::scatter_add(&args[0], &args[1], *rows, alloc).map_err(|e| bad_id("row id", e, *rows))?,
        Op::BigramHash { buckets } => ops::bigram_hash(&args[0], *buckets),
        Op::Shift { axis, offset } => ops::shift(args.pop().unwrap(), *axis, *offset, alloc),
        Op::Rope { base, inverse } => ops::rope(args.pop().unwrap(), *base, *inverse),
        Op::CausalAttention { scale } => attention::forward(&args[0], &args[1], &args[2], *scale),
        Op::FakeQuant { bits } => ops::fake_quant(args.pop().unwrap(), *bits),
        Op::CrossEntropy => {
            let v = *args[0].shape.last().unwrap();
            ops::cross_entropy(&args[0], &args[1]).map_err(|e| bad_id("target", e, v))?
        }
        Op::CrossEntropyGrad => {
            let v = *args[0].shape.last().unwrap();
            ops::cross_entropy_grad(&args[0], &args[1], &args[2]).map_err(|e| bad_id("target", e, v))?
        }
    })
}

/// Maximum absolute value of a float slice (0 for an empty one).
/// Run `g` as PyTorch's bf16 autocast would (f32 arithmetic, bf16 where
/// autocast rounds; see the module docs), returning the outputs in `wanted`.
pub fn execute_autocast(
    g: &Graph,
    params: &HashMap<String, Tensor<f32>>,
    inputs: &HashMap<String, Tensor<f32>>,
    wanted: Option<&[&str]>,
) -> Result<Run<f32>, CpuError> {
    let cast = autocast::Autocast::analyze(g)?;
    execute_impl(g, params, inputs, wanted, Some(&cast))
}

/// The yardstick error per output: `max|a - b| / max|b|` of the bf16
/// autocast run of `g` against `reference` (the float64 results, by output
/// name), for the outputs in `wanted` (all when `None`). Outputs without a
/// reference are left out.
pub fn yardstick_errors(
    g: &Graph,
    params: &HashMap<String, Tensor<f32>>,
    inputs: &HashMap<String, Tensor<f32>>,
    wanted: Option<&[&str]>,
    reference: &HashMap<String, Vec<f64>>,
) -> Result<Vec<(String, f64)>, CpuError> {
    let run = execute_autocast(g, params, inputs, wanted)?;
    let mut out = Vec::new();
    for (name, t) in &run.outputs {
        let Some(b) = reference.get(name) else { continue };
        let a = t.to_f64_vec();
        if a.len() != b.len() {
            return Err(CpuError::Invalid(format!("output `{name}`: {} values, the reference has {}", a.len(), b.len())));
        }
        out.push((name.clone(), rel_err(&a, b)));
    }
    Ok(out)
}

pub fn max_abs(x: &[f64]) -> f64 {
    x.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// The relative error `max|a - b| / max|b|` of two tensors of equal length
/// (`max|a - b|` when `b` is all zero).
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d = a.iter().zip(b).fold(0.0f64, |m, (x, y)| if (x - y).is_nan() { f64::INFINITY } else { m.max((x - y).abs()) });
    let s = max_abs(b);
    if s > 0.0 {
        d / s
    } else {
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgc_ir::{BinaryFn, Init, Mode, ParamInfo, QuantSpec, ReduceFn};

    fn graph_with(params: &[(&str, &[usize])]) -> (Graph, Vec<ValueId>) {
        let mut g = Graph::new(Mode::Eval);
        let mut ids = vec![];
        for (name, shape) in params {
            let id = g.add_param(ParamInfo { name: name.to_string(), shape: shape.to_vec(), quant: QuantSpec::default(), init: Init::Zeros, origin: None })
                .unwrap();
            ids.push(g.push(Op::Param { id: id }, &[], None).unwrap());
        }
        (g, ids)
    }

    #[test]
    fn broadcast_binary_and_reduce() {
        let (mut g, p) = graph_with(&[("a", &[2, 3]), ("b", &[3])]);
        let s = g.push(Op::Binary { f: BinaryFn::Mul }, &[p[0], p[1]], None).unwrap();
        let r = g.push(Op::Reduce { f: ReduceFn::Sum, axis: 1, keepdim: false }, &[s], None).unwrap();
        g.outputs.push(("r".into(), r));
        let mut params = HashMap::new();
        params.insert("a".to_string(), Tensor::<f64>::float(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]));
        params.insert("b".to_string(), Tensor::<f64>::float(vec![3], vec![1., 10., 100.]));
        let run = execute(&g, &params, &HashMap::new(), None).unwrap();
        assert_eq!(run.get("r").unwrap().f(), &[321.0, 654.0]);
        params.remove("b");
        assert!(matches!(execute(&g, &params, &HashMap::new(), None), Err(CpuError::MissingParam(_))));
    }

    #[test]
    fn fake_quant_rounds_half_to_even_with_f16_scales() {
        // row max 7 -> scale 1: 2.5 -> 2, 3.5 -> 4, -0.5 -> -0
        let w = Tensor::<f64>::float(vec![1, 4], vec![2.5, 3.5, -0.5, 7.0]);
        assert_eq!(ops::fake_quant(w, 4).f(), &[2.0, 4.0, -0.0, 7.0]);
        // zero row: scale is f16's smallest normal, values stay zero
        let z = Tensor::<f64>::float(vec![1, 2], vec![0.0, 0.0]);
        assert_eq!(ops::fake_quant(z, 4).f(), &[0.0, 0.0]);
        // scale 0.1/7 is not an f16: the grid is the rounded scale
        let w = Tensor::<f64>::float(vec![1, 2], vec![0.1, -0.05]);
        let s = half::f16::from_f32((0.1f64 / 7.0) as f32).to_f64();
        let out = ops::fake_quant(w, 4);
        assert_eq!(out.f()[0], (0.1 / s).round_ties_even().min(7.0) * s);
        // the fast rounding equals round-half-even, in both precisions
        let row: Vec<f64> = (0..400).map(|i| (i as f64 - 200.0) * 0.0437 + if i % 3 == 0 { 0.0 } else { 1e-9 }).collect();
        let amax = row.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for bits in [2, 4, 6, 8] {
            let qmax = ((1 << (bits - 1)) - 1) as f64;
            let s = half::f16::from_f32((amax / qmax) as f32).to_f64();
            let want: Vec<f64> = row.iter().map(|v| (v / s).round_ties_even().clamp(-qmax - 1.0, qmax) * s).collect();
            assert_eq!(ops::fake_quant(Tensor::<f64>::float(vec![1, 400], row.clone()), bits).f(), &want[..]);
            let r32: Vec<f32> = row.iter().map(|&v| v as f32).collect();
            let s32 = half::f16::from_f32(r32.iter().fold(0.0f32, |m, v| m.max(v.abs())) / qmax as f32).to_f32();
            let want32: Vec<f32> = r32.iter().map(|v| (v / s32).round_ties_even().clamp(-qmax as f32 - 1.0, qmax as f32) * s32).collect();
            assert_eq!(ops::fake_quant(Tensor::<f32>::float(vec![1, 400], r32), bits).f(), &want32[..]);
        }
    }

    #[test]
    fn bigram_hash_matches_the_spec() {
        let ids = Tensor::<f64>::int(vec![1, 3], vec![5, 7, 1000]);
        let h = ops::bigram_hash(&ids, 97);
        let m = 96i64;
        assert_eq!(h.i(), &[96, (((36313 * 7) ^ (27191 * 5)) % m) as i32, (((36313 * 1000) ^ (27191 * 7)) % m) as i32]);
    }

    fn seq(n: usize, k: usize) -> Vec<f64> {
        (0..n).map(|i| (((i * 2654435761 + k) % 1000) as f64) / 500.0 - 1.0).collect()
    }

    /// Element of a row-major tensor at a multi-index, with broadcasting from the right.
    fn at(x: &[f64], shape: &[usize], idx: &[usize]) -> f64 {
        let off = idx.len() - shape.len();
        let mut o = 0;
        for (d, &s) in shape.iter().enumerate() {
            o = o * s + if s == 1 { 0 } else { idx[off + d] };
        }
        x[o]
    }

    fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
        let mut out = vec![vec![]];
        for &s in shape {
            out = out.into_iter().flat_map(|p| (0..s).map(move |i| [p.clone(), vec![i]].concat())).collect();
        }
        out
    }

    /// The parallel paths (large tensors) agree with a naive definition.
    /// Buffers full of NaN, as a recycled buffer may be.
    struct Dirty;
    impl ops::Alloc<f64> for Dirty {
        fn buf(&mut self, len: usize) -> Vec<f64> {
            vec![f64::NAN; len]
        }
    }

    /// Every op that takes an output buffer gives the same result from
    /// NaN-filled buffers as from fresh zeroed ones.
    #[test]
    fn ops_overwrite_recycled_buffers() {
        const SHAPE: [usize; 3] = [3, 7, 5];
        let x = || Tensor::<f64>::float(SHAPE.to_vec(), seq(105, 3));
        let ids = Tensor::<f64>::int(vec![2, 3], vec![4, 0, 4, 1, 3, 3]);
        let table = Tensor::<f64>::float(vec![5, 6], seq(30, 4));
        let dy = Tensor::<f64>::float(vec![2, 3, 6], seq(36, 5));
        let shared = x();
        let keep = shared.clone(); // shared storage: map/binary cannot reuse it
        let _hold = (shared.clone(), keep.clone());
        type Case = Box<dyn Fn(&mut dyn ops::Alloc<f64>) -> Tensor<f64>>;
        let cases: Vec<(&str, Case)> = vec![
            ("map", Box::new(move |a| ops::map(shared.clone(), |v| v * 2.0, a))),
            ("binary", Box::new(move |a| ops::binary(keep.clone(), x(), &SHAPE, |p, q| p - q, a))),
            ("index", Box::new(move |a| ops::index(x(), 1, 4, a))),
            ("unindex", Box::new(move |a| ops::unindex(x(), 1, 2, 4, a))),
            ("shift", Box::new(move |a| ops::shift(x(), 1, 2, a))),
            (
                "gather",
                Box::new({
                    let (t, i) = (table.clone(), ids.clone());
                    move |a| ops::gather(&t, &i, a).unwrap()
                }),
            ),
            ("scatter_add", Box::new(move |a| ops::scatter_add(&ids, &dy, 5, a).unwrap())),
        ];
        for (name, f) in &cases {
            let (fresh, dirty) = (f(&mut ops::Fresh), f(&mut Dirty));
            assert_eq!(fresh.shape, dirty.shape, "{name}");
            assert_eq!(fresh.to_f64_vec(), dirty.to_f64_vec(), "{name}");
        }
    }

    #[test]
    fn large_layout_ops_match_naive() {
        // Output buffers come from an allocator whose buffers are all NaN
        // (the plan executor's pool hands out used ones): every op must
        // overwrite every element it returns.
        let shape = [6, 33, 40, 5];
        let n: usize = shape.iter().product();
        let x = seq(n, 1);
        let xt = || Tensor::<f64>::float(shape.to_vec(), x.clone());
        for bshape in [vec![33, 1, 5], vec![40, 5], vec![6, 1, 1, 1]] {
            let b = seq(bshape.iter().product(), 2);
            let out = ops::binary(xt(), Tensor::float(bshape.clone(), b.clone()), &shape, |p, q| p * q - q, &mut Dirty);
            for (k, idx) in indices(&shape).iter().enumerate().step_by(7) {
                let (p, q) = (at(&x, &shape, idx), at(&b, &bshape, idx));
                assert_eq!(out.f()[k], p * q - q, "{bshape:?} {idx:?}");
            }
            let bc = ops::broadcast(Tensor::<f64>::float(bshape.clone(), b.clone()), &shape, &mut Dirty);
            for (k, idx) in indices(&shape).iter().enumerate().step_by(5) {
                assert_eq!(bc.f()[k], at(&b, &bshape, idx));
            }
            let st = ops::sum_to(xt(), &bshape, &mut Dirty);
            let mut want = vec![0.0; b.len()];
            for (k, idx) in indices(&shape).iter().enumerate() {
                let off = idx.len() - bshape.len();
                let mut o = 0;
                for (d, &s) in bshape.iter().enumerate() {
                    o = o * s + if s == 1 { 0 } else { idx[off + d] };
                }
                want[o] += x[k];
            }
            assert!(rel_err(&st.to_f64_vec(), &want) < 1e-13, "sum_to {bshape:?}");
        }
        let p = ops::permute(xt(), &[2, 0, 3, 1], &mut Dirty);
        assert_eq!(p.shape, vec![40, 6, 5, 33]);
        for (k, idx) in indices(&p.shape).iter().enumerate().step_by(3) {
            assert_eq!(p.f()[k], at(&x, &shape, &[idx[1], idx[3], idx[0], idx[2]]));
        }
        for axis in 0..4 {
            let r = ops::reduce(xt(), ReduceFn::Max, axis, false, &mut Dirty);
            let s = ops::reduce(xt(), ReduceFn::Mean, axis, true, &mut Dirty);
            let mut oshape = shape.to_vec();
            oshape.remove(axis);
            for (k, idx) in indices(&oshape).iter().enumerate().step_by(3) {
                let vals: Vec<f64> = (0..shape[axis])
                    .map(|j| {
                        let mut full = idx.clone();
                        full.insert(axis, j);
                        at(&x, &shape, &full)
                    })
                    .collect();
                assert_eq!(r.f()[k], vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max));
                let mean = vals.iter().sum::<f64>() / vals.len() as f64;
                assert!((s.f()[k] - mean).abs() < 1e-14);
            }
        }
    }

    /// Attention against a naive softmax at a size that takes the parallel paths.
    #[test]
    fn attention_matches_naive() {
        let (b, h, hk, t, d) = (2, 4, 2, 70, 16);
        let q = seq(b * h * t * d, 3);
        let k = seq(b * hk * t * d, 4);
        let v = seq(b * hk * t * d, 5);
        let scale = 0.25;
        let y = attention::forward(
            &Tensor::<f64>::float(vec![b, h, t, d], q.clone()),
            &Tensor::float(vec![b, hk, t, d], k.clone()),
            &Tensor::float(vec![b, hk, t, d], v.clone()),
            scale,
        );
        for bi in 0..b {
            for hi in 0..h {
                let kh = hi / (h / hk);
                for i in (0..t).step_by(9) {
                    let s: Vec<f64> = (0..=i)
                        .map(|j| (0..d).map(|l| q[((bi * h + hi) * t + i) * d + l] * k[((bi * hk + kh) * t + j) * d + l]).sum::<f64>() * scale)
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    for l in 0..d {
                        let want: f64 = (0..=i).map(|j| (s[j] - m).exp() / z * v[((bi * hk + kh) * t + j) * d + l]).sum();
                        let got = y.f()[((bi * h + hi) * t + i) * d + l];
                        assert!((got - want).abs() < 1e-13, "{bi} {hi} {i} {l}: {got} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_split_matches_single_thread() {
        let (m, k, n) = (300, 70, 90);
        let a: Vec<f64> = (0..m * k).map(|i| ((i * 7919) % 13) as f64 - 6.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| ((i * 104729) % 11) as f64 - 5.0).collect();
        let mut c = vec![0.0; m * n];
        linalg::gemm(m, k, n, &a, k, 1, &b, n, 1, &mut c);
        for i in (0..m).step_by(37) {
            for j in (0..n).step_by(11) {
                let want: f64 = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
                assert_eq!(c[i * n + j], want);
            }
        }
    }
}

/// A run-time input, checked against the type the graph declares for it.
pub(crate) fn load_input<F: Real>(inputs: &HashMap<String, Tensor<F>>, name: &str, ty: &TensorType) -> Result<Tensor<F>, CpuError> {
    let t = inputs.get(name).ok_or_else(|| CpuError::MissingInput(name.to_string()))?;
    if t.dtype() != ty.dtype || t.shape != ty.shape {
        return Err(CpuError::InputType { name: name.to_string(), expected: ty.clone(), got: format!("{}{:?}", t.dtype(), t.shape) });
    }
    Ok(t.clone())
}

/// A parameter's values, checked against its declaration (float, declared shape).
/// The graph outputs named in `wanted` (all of them when `None`), each with its value.
pub(crate) fn wanted_outputs(g: &Graph, wanted: Option<&[&str]>) -> Result<Vec<(String, ValueId)>, CpuError> {
    match wanted {
        None => Ok(g.outputs.clone()),
        Some(names) => names.iter().map(|n| g.output(n).map(|v| (n.to_string(), v)).ok_or_else(|| CpuError::NoOutput(n.to_string()))).collect(),
    }
}

pub(crate) fn load_param<F: Real>(g: &Graph, params: &HashMap<String, Tensor<F>>, name: &str) -> Result<Tensor<F>, CpuError> {
    let info = g.param(name).ok_or_else(|| CpuError::MissingParam(name.to_string()))?;
    let t = params.get(name).ok_or_else(|| CpuError::MissingParam(name.to_string()))?;
    if t.as_float().is_none() {
        return Err(CpuError::ParamDtype(name.to_string()));
    }
    if t.shape != info.shape {
        return Err(CpuError::ParamShape { name: name.to_string(), expected: info.shape.clone(), got: t.shape.clone() });
    }
    Ok(t.clone())
}
