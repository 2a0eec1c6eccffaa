//! Finite-difference check of every primitive's backward rule: for each op, a
//! small graph `loss = sum(r * op(params...))` (r a fixed random tensor) is
//! differentiated by `pgc_ir::passes::autodiff::backward`, run on the CPU
//! backend in f64, and each parameter gradient is compared with central
//! differences `(L(p + h) - L(p - h)) / 2h` element by element.
#![allow(clippy::neg_cmp_op_on_partial_ord)] // `!(e <= tol)` also fails on NaN

use pgc_backends::cpu::{self, Tensor};
use pgc_ir::passes::autodiff::backward;
use pgc_ir::{AttnPart, BinaryFn, Graph, Init, Mode, Op, ParamInfo, QuantSpec, ReduceFn, TensorType, UnaryFn, ValueId};
use std::collections::HashMap;

/// Deterministic xorshift numbers for test data.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [-1, 1).
    fn sym(&mut self) -> f64 {
        2.0 * self.next() - 1.0
    }
}

#[derive(Clone, Copy)]
enum Dom {
    /// Uniform in [-1, 1).
    Any,
    /// Magnitude in [0.2, 1), random sign (away from kinks at 0).
    AwayFromZero,
    /// In [0.5, 2).
    Positive,
}

struct Case {
    name: String,
    g: Graph,
    params: HashMap<String, Tensor<f64>>,
    inputs: HashMap<String, Tensor<f64>>,
    /// Parameters whose gradient is checked (all but the loss weights).
    checked: Vec<String>,
    rng: Rng,
}

impl Case {
    fn new(name: impl Into<String>, seed: u64) -> Self {
        Case {
            name: name.into(),
            g: Graph::new(Mode::Train),
            params: HashMap::new(),
            inputs: HashMap::new(),
            checked: vec![],
            rng: Rng(0x9E3779B97F4A7C15 ^ seed.wrapping_mul(0x2545F4914F6CDD1D)),
        }
    }
    fn param(&mut self, name: &str, shape: &[usize], dom: Dom) -> ValueId {
        let n: usize = shape.iter().product();
        let data: Vec<f64> = (0..n)
            .map(|_| match dom {
                Dom::Any => self.rng.sym(),
                Dom::AwayFromZero => {
                    let m = 0.2 + 0.8 * self.rng.next();
                    if self.rng.next() < 0.5 {
                        -m
                    } else {
                        m
                    }
                }
                Dom::Positive => 0.5 + 1.5 * self.rng.next(),
            })
            .collect();
        self.params.insert(name.into(), Tensor::float(shape.to_vec(), data));
        self.checked.push(name.into());
        self.declare(name, shape)
    }
    fn declare(&mut self, name: &str, shape: &[usize]) -> ValueId {
        let id = self
            .g
            .add_param(ParamInfo { name: name.into(), shape: shape.to_vec(), quant: QuantSpec::default(), init: Init::Zeros, origin: None })
            .unwrap();
        self.g.push(Op::Param { id }, &[], None).unwrap()
    }
    fn ids(&mut self, name: &str, shape: &[usize], vals: Vec<i32>) -> ValueId {
        self.inputs.insert(name.into(), Tensor::int(shape.to_vec(), vals));
        self.g.push(Op::Input { name: name.into(), ty: TensorType::i32(shape.to_vec()) }, &[], None).unwrap()
    }
    fn op(&mut self, op: Op, args: &[ValueId]) -> ValueId {
        self.g.push(op, args, None).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }
    /// `loss = sum(r * y)` with `r` random (not checked), and the output `y`.
    fn finish(mut self, y: ValueId) -> Self {
        let shape = self.g.ty(y).shape.clone();
        let n: usize = shape.iter().product();
        let r: Vec<f64> = (0..n).map(|_| self.rng.sym()).collect();
        self.params.insert("__r".into(), Tensor::float(shape.clone(), r));
        let rv = self.declare("__r", &shape);
        let m = self.op(Op::Binary { f: BinaryFn::Mul }, &[y, rv]);
        let flat = self.op(Op::Reshape { shape: vec![n] }, &[m]);
        let l = self.op(Op::Reduce { f: ReduceFn::Sum, axis: 0, keepdim: false }, &[flat]);
        self.g.outputs.push(("loss".into(), l));
        self
    }
    /// A case whose output already is the scalar loss.
    fn finish_scalar(mut self, l: ValueId) -> Self {
        self.g.outputs.push(("loss".into(), l));
        self
    }
}

fn loss(g: &Graph, params: &HashMap<String, Tensor<f64>>, inputs: &HashMap<String, Tensor<f64>>) -> f64 {
    cpu::execute(g, params, inputs, Some(&["loss"])).unwrap().get("loss").unwrap().to_f64_vec()[0]
}

/// Worst relative error (max|a-b| / max|b|) over the checked parameters.
fn check(case: &Case) -> f64 {
    let bg = backward(&case.g, "loss").unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let names: Vec<String> = case.checked.iter().map(|p| format!("grad.{p}")).collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let run = cpu::execute(&bg, &case.params, &case.inputs, Some(&refs)).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let h = 1e-6;
    let mut worst = 0.0f64;
    for p in &case.checked {
        let analytic = run.get(&format!("grad.{p}")).unwrap().to_f64_vec();
        let base = case.params[p].to_f64_vec();
        let mut numeric = vec![0.0; base.len()];
        let mut params = case.params.clone();
        for i in 0..base.len() {
            let mut v = base.clone();
            v[i] = base[i] + h;
            params.insert(p.clone(), Tensor::float(case.params[p].shape.clone(), v.clone()));
            let lp = loss(&case.g, &params, &case.inputs);
            v[i] = base[i] - h;
            params.insert(p.clone(), Tensor::float(case.params[p].shape.clone(), v));
            let lm = loss(&case.g, &params, &case.inputs);
            numeric[i] = (lp - lm) / (2.0 * h);
        }
        let scale = numeric.iter().chain(&analytic).fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = numeric.iter().zip(&analytic).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        let rel = if scale > 1e-12 { diff / scale } else { diff };
        worst = worst.max(rel);
    }
    worst
}

fn run_cases(cases: Vec<Case>, tol: f64) {
    let mut failed = vec![];
    for c in &cases {
        let e = check(c);
        println!("{:<40} rel err {e:.3e}", c.name);
        if !(e <= tol) {
            failed.push(format!("{} ({e:.3e})", c.name));
        }
    }
    assert!(failed.is_empty(), "gradient check failed (tolerance {tol:e}): {}", failed.join(", "));
}

const TOL: f64 = 1e-6;

#[test]
fn unary_ops() {
    use UnaryFn::*;
    let mut cases = vec![];
    for (k, (f, dom)) in [
        (Neg, Dom::Any),
        (Abs, Dom::AwayFromZero),
        (Relu, Dom::AwayFromZero),
        (Step, Dom::AwayFromZero),
        (Square, Dom::Any),
        (Sqrt, Dom::Positive),
        (Rsqrt, Dom::Positive),
        (Recip, Dom::Positive),
        (Sigmoid, Dom::Any),
        (Tanh, Dom::Any),
        (Exp, Dom::Any),
        (Log, Dom::Positive),
        (Softplus, Dom::Any),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = Case::new(format!("unary {f:?}"), k as u64);
        let x = c.param("x", &[3, 4], dom);
        let y = c.op(Op::Unary { f }, &[x]);
        cases.push(c.finish(y));
    }
    for (k, op) in [Op::LeakyRelu { slope: 0.1 }, Op::LeakyStep { slope: 0.1 }].into_iter().enumerate() {
        let mut c = Case::new(op.name(), 100 + k as u64);
        let x = c.param("x", &[3, 4], Dom::AwayFromZero);
        let y = c.op(op, &[x]);
        cases.push(c.finish(y));
    }
    run_cases(cases, TOL);
}

#[test]
fn binary_ops_with_broadcasting() {
    use BinaryFn::*;
    let shapes: [(&[usize], &[usize]); 4] = [(&[2, 3, 4], &[2, 3, 4]), (&[2, 3, 4], &[3, 1]), (&[4], &[2, 3, 4]), (&[2, 3, 4], &[])];
    let mut cases = vec![];
    let mut seed = 200;
    for f in [Add, Sub, Mul, Div, Max, Min, Eq] {
        for (sa, sb) in shapes {
            seed += 1;
            let mut c = Case::new(format!("binary {f:?} {sa:?} {sb:?}"), seed);
            let a = c.param("a", sa, Dom::Any);
            let b = c.param("b", sb, if f == Div { Dom::Positive } else { Dom::Any });
            let y = c.op(Op::Binary { f }, &[a, b]);
            cases.push(c.finish(y));
        }
    }
    run_cases(cases, TOL);
}

#[test]
fn reductions() {
    let mut cases = vec![];
    let mut seed = 300;
    for f in [ReduceFn::Sum, ReduceFn::Mean, ReduceFn::Max] {
        for axis in 0..3 {
            for keepdim in [false, true] {
                seed += 1;
                let mut c = Case::new(format!("reduce {f:?} axis {axis} keepdim {keepdim}"), seed);
                let x = c.param("x", &[2, 3, 4], Dom::Any);
                let y = c.op(Op::Reduce { f, axis, keepdim }, &[x]);
                cases.push(c.finish(y));
            }
        }
    }
    run_cases(cases, TOL);
}

#[test]
fn layout_ops() {
    let mut cases = vec![];
    let mut c = Case::new("reshape", 400);
    let x = c.param("x", &[2, 3, 4], Dom::Any);
    let y = c.op(Op::Reshape { shape: vec![6, 4] }, &[x]);
    cases.push(c.finish(y));
    for (k, perm) in [vec![2, 0, 1], vec![1, 0, 2], vec![0, 2, 1]].into_iter().enumerate() {
        let mut c = Case::new(format!("permute {perm:?}"), 401 + k as u64);
        let x = c.param("x", &[2, 3, 4], Dom::Any);
        let y = c.op(Op::Permute { perm }, &[x]);
        cases.push(c.finish(y));
    }
    for (k, (from, to)) in [(vec![3, 1], vec![2, 3, 4]), (vec![], vec![2, 3]), (vec![4], vec![3, 4])].into_iter().enumerate() {
        let mut c = Case::new(format!("broadcast {from:?} -> {to:?}"), 410 + k as u64);
        let x = c.param("x", &from, Dom::Any);
        let y = c.op(Op::Broadcast { shape: to.clone() }, &[x]);
        cases.push(c.finish(y));
        let mut c = Case::new(format!("sum_to {to:?} -> {from:?}"), 420 + k as u64);
        let x = c.param("x", &to, Dom::Any);
        let y = c.op(Op::SumTo { shape: from }, &[x]);
        cases.push(c.finish(y));
    }
    for axis in 0..3 {
        let mut c = Case::new(format!("index axis {axis}"), 430 + axis as u64);
        let x = c.param("x", &[2, 3, 4], Dom::Any);
        let y = c.op(Op::Index { axis, index: 1 }, &[x]);
        cases.push(c.finish(y));
        let mut c = Case::new(format!("unindex axis {axis}"), 440 + axis as u64);
        let x = c.param("x", &[2, 3], Dom::Any);
        let y = c.op(Op::Unindex { axis, index: 1, size: 3 }, &[x]);
        cases.push(c.finish(y));
    }
    for (k, (axis, offset)) in [(1, 1), (1, -1), (1, 2), (0, 1), (2, -3)].into_iter().enumerate() {
        let mut c = Case::new(format!("shift axis {axis} offset {offset}"), 450 + k as u64);
        let x = c.param("x", &[2, 3, 4], Dom::Any);
        let y = c.op(Op::Shift { axis, offset }, &[x]);
        cases.push(c.finish(y));
    }
    run_cases(cases, TOL);
}

#[test]
fn matrix_products() {
    let mut cases = vec![];
    let mut c = Case::new("linear", 500);
    let x = c.param("x", &[2, 3, 4], Dom::Any);
    let w = c.param("w", &[5, 4], Dom::Any);
    let y = c.op(Op::Linear, &[x, w]);
    cases.push(c.finish(y));
    let mut c = Case::new("matmul", 501);
    let d = c.param("dy", &[2, 3, 5], Dom::Any);
    let w = c.param("w", &[5, 4], Dom::Any);
    let y = c.op(Op::MatMul, &[d, w]);
    cases.push(c.finish(y));
    let mut c = Case::new("outer_sum", 502);
    let d = c.param("dy", &[2, 3, 5], Dom::Any);
    let x = c.param("x", &[2, 3, 4], Dom::Any);
    let y = c.op(Op::OuterSum, &[d, x]);
    cases.push(c.finish(y));
    let mut c = Case::new("linear tied twice (fan-in)", 503);
    let x = c.param("x", &[3, 4], Dom::Any);
    let w = c.param("w", &[4, 4], Dom::Any);
    let y1 = c.op(Op::Linear, &[x, w]);
    let w2 = c.op(Op::Param { id: c.g.param_id("w").expect("declared above") }, &[]);
    let y = c.op(Op::Linear, &[y1, w2]);
    cases.push(c.finish(y));
    run_cases(cases, TOL);
}

#[test]
fn embeddings_and_hashing() {
    let mut cases = vec![];
    let mut c = Case::new("gather", 600);
    let t = c.param("table", &[7, 3], Dom::Any);
    let ids = c.ids("ids", &[2, 4], vec![0, 3, 3, 6, 1, 0, 6, 6]);
    let y = c.op(Op::Gather, &[t, ids]);
    cases.push(c.finish(y));
    let mut c = Case::new("scatter_add", 601);
    let ids = c.ids("ids", &[2, 4], vec![0, 3, 3, 6, 1, 0, 6, 6]);
    let d = c.param("dy", &[2, 4, 3], Dom::Any);
    let y = c.op(Op::ScatterAdd { rows: 7 }, &[ids, d]);
    cases.push(c.finish(y));
    let mut c = Case::new("bigram_hash -> gather", 602);
    let ids = c.ids("ids", &[2, 5], vec![1, 9, 4, 4, 0, 7, 2, 8, 8, 3]);
    let h = c.op(Op::BigramHash { buckets: 11 }, &[ids]);
    let t = c.param("table", &[11, 2], Dom::Any);
    let y = c.op(Op::Gather, &[t, h]);
    cases.push(c.finish(y));
    run_cases(cases, TOL);
}

#[test]
fn rope_attention_cross_entropy() {
    let mut cases = vec![];
    for inverse in [false, true] {
        let mut c = Case::new(format!("rope inverse {inverse}"), 700 + inverse as u64);
        let x = c.param("x", &[2, 2, 5, 6], Dom::Any);
        let y = c.op(Op::Rope { base: 10000.0, inverse }, &[x]);
        cases.push(c.finish(y));
    }
    for (k, (h, hk)) in [(4, 2), (3, 1), (2, 2)].into_iter().enumerate() {
        let mut c = Case::new(format!("causal_attention heads {h} kv {hk}"), 710 + k as u64);
        let q = c.param("q", &[2, h, 5, 4], Dom::Any);
        let kk = c.param("k", &[2, hk, 5, 4], Dom::Any);
        let v = c.param("v", &[2, hk, 5, 4], Dom::Any);
        let y = c.op(Op::CausalAttention { scale: 0.7 }, &[q, kk, v]);
        cases.push(c.finish(y));
    }
    let mut c = Case::new("cross_entropy", 720);
    let z = c.param("z", &[2, 3, 7], Dom::Any);
    let t = c.ids("t", &[2, 3], vec![0, 6, 3, 3, 1, 5]);
    let l = c.op(Op::CrossEntropy, &[z, t]);
    cases.push(c.finish_scalar(l));
    let mut c = Case::new("cross_entropy scaled", 721);
    let z = c.param("z", &[4, 5], Dom::Any);
    let t = c.ids("t", &[4], vec![4, 0, 2, 2]);
    let l = c.op(Op::CrossEntropy, &[z, t]);
    cases.push(c.finish(l));
    run_cases(cases, TOL);
}

/// Composites as the model lowers them: RMS norm, softcap, relu^2 MLP.
#[test]
fn composites() {
    let mut cases = vec![];
    let mut c = Case::new("rms norm", 800);
    let x = c.param("x", &[2, 3, 4], Dom::Any);
    let sq = c.op(Op::Unary { f: UnaryFn::Square }, &[x]);
    let m = c.op(Op::Reduce { f: ReduceFn::Mean, axis: 2, keepdim: true }, &[sq]);
    let eps = c.op(Op::Scalar { value: 1.1920928955078125e-07 }, &[]);
    let me = c.op(Op::Binary { f: BinaryFn::Add }, &[m, eps]);
    let r = c.op(Op::Unary { f: UnaryFn::Rsqrt }, &[me]);
    let y = c.op(Op::Binary { f: BinaryFn::Mul }, &[x, r]);
    cases.push(c.finish(y));
    let mut c = Case::new("softcap", 801);
    let z = c.param("z", &[3, 5], Dom::Any);
    let cap = c.op(Op::Scalar { value: 0.5 }, &[]);
    let d = c.op(Op::Binary { f: BinaryFn::Div }, &[z, cap]);
    let t = c.op(Op::Unary { f: UnaryFn::Tanh }, &[d]);
    let y = c.op(Op::Binary { f: BinaryFn::Mul }, &[t, cap]);
    cases.push(c.finish(y));
    let mut c = Case::new("relu^2 mlp", 802);
    let x = c.param("x", &[3, 4], Dom::Any);
    let fc = c.param("fc", &[6, 4], Dom::Any);
    let pj = c.param("proj", &[4, 6], Dom::Any);
    let h = c.op(Op::Linear, &[x, fc]);
    let h = c.op(Op::Unary { f: UnaryFn::Relu }, &[h]);
    let h = c.op(Op::Unary { f: UnaryFn::Square }, &[h]);
    let y = c.op(Op::Linear, &[h, pj]);
    cases.push(c.finish(y));
    run_cases(cases, 1e-5);
}

/// FakeQuant has zero derivative almost everywhere; its rule is the
/// straight-through estimator, so the gradient must equal the upstream one.
#[test]
fn fake_quant_is_straight_through() {
    let mut c = Case::new("fake_quant", 900);
    let w = c.param("w", &[3, 8], Dom::Any);
    let y = c.op(Op::FakeQuant { bits: 4 }, &[w]);
    let c = c.finish(y);
    let bg = backward(&c.g, "loss").unwrap();
    let run = cpu::execute(&bg, &c.params, &c.inputs, Some(&["grad.w", "grad.__r"])).unwrap();
    assert_eq!(run.get("grad.w").unwrap().to_f64_vec(), c.params["__r"].to_f64_vec());
    // d loss / d r = fake_quant(w), on the 4-bit grid of each row's scale
    let q = run.get("grad.__r").unwrap().to_f64_vec();
    assert!(q.iter().zip(c.params["w"].to_f64_vec()).all(|(a, b)| (a - b).abs() <= 1.0 / 14.0 + 1e-12));
}

#[test]
fn unused_parameters_get_zero_gradients_and_second_order_is_refused() {
    let mut c = Case::new("unused", 901);
    let x = c.param("x", &[2, 2], Dom::Any);
    let _u = c.param("u", &[3], Dom::Any);
    let y = c.op(Op::Unary { f: UnaryFn::Exp }, &[x]);
    let c = c.finish(y);
    let bg = backward(&c.g, "loss").unwrap();
    let run = cpu::execute(&bg, &c.params, &c.inputs, Some(&["grad.u"])).unwrap();
    assert_eq!(run.get("grad.u").unwrap().to_f64_vec(), vec![0.0; 3]);

    let mut c = Case::new("second order", 902);
    let q = c.param("q", &[1, 1, 2, 2], Dom::Any);
    let y = c.op(Op::CausalAttentionGrad { scale: 1.0, wrt: AttnPart::Q }, &[q, q, q, q]);
    let c = c.finish(y);
    assert!(backward(&c.g, "loss").is_err());
}
