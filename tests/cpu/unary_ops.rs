//! Every unary function (`UnaryFn::ALL`, so a new op is covered without
//! edits) on the CPU backends, on awkward inputs (NaN, infinities, signed
//! zeros, tiny and huge values, a sweep): the interpreter against the f64
//! definition `UnaryFn::eval`, and the CPU plan executor, whose element-wise
//! kernels cranelift compiles from the shared scalar IR, bitwise against the
//! interpreter (f32 and f64). Softplus, forward and backward, also through
//! the DSL. The PTX side is in tests/ptx/kinds.rs (`math_functions_one_by_one`,
//! `softplus_in_training`).

use pgc_backends::cpu::{self, plan_exec, Real, Tensor};
use pgc_ir::graph::ParamInfo;
use pgc_ir::plan::FusionRule;
use pgc_ir::{Graph, Init, Mode, Op, QuantSpec, UnaryFn};
use std::collections::{BTreeSet, HashMap};

/// Specials, then a sweep over [-20, 20]; 227 values (not a multiple of the
/// vector lanes: the row functions' scalar tail runs too).
fn inputs() -> Vec<f64> {
    let mut v = vec![
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        1e-8,
        -1e-8,
        0.5,
        -0.5,
        1.0,
        -1.0,
        2.5,
        -2.5,
        17.0,
        -17.0,
        30.0,
        -30.0,
        88.0,
        -88.0,
        100.0,
        -100.0,
        1000.0,
        -1000.0,
    ];
    v.extend((0..202).map(|i| -20.0 + i as f64 * 0.2013));
    v
}

/// A graph with one output per unary function of the parameter `a`.
fn all_unary() -> Graph {
    let mut g = Graph::new(Mode::Eval);
    let n = inputs().len();
    g.add_param(ParamInfo { name: "a".into(), shape: vec![n], quant: QuantSpec::default(), init: Init::Zeros, origin: None }).unwrap();
    let a = g.push(Op::Param { id: g.param_id("a").expect("declared parameter") }, &[], None).unwrap();
    for f in UnaryFn::ALL {
        let y = g.push(Op::Unary { f }, &[a], None).unwrap();
        g.outputs.push((f.name().to_string(), y));
    }
    g
}

fn params<F: Real>(xs: &[f64]) -> HashMap<String, Tensor<F>> {
    HashMap::from([("a".to_string(), Tensor::<F>::from_f64(vec![xs.len()], xs))])
}

fn same_bits(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// `got` is `want` within `rel` (and `abs` near zero); NaN only where `want` is.
fn close(got: f64, want: f64, rel: f64, abs: f64) -> bool {
    if want.is_nan() || got.is_nan() {
        return want.is_nan() && got.is_nan();
    }
    if want.is_infinite() {
        return got == want;
    }
    (got - want).abs() <= rel * want.abs() + abs
}

#[test]
fn interpreter_computes_each_unary_function() {
    let g = all_unary();
    let xs = inputs();
    let mut bad = vec![];
    for (precision, rel, abs) in [("f64", 4e-16, 1e-300), ("f32", 4e-7, 1e-37)] {
        let outs = if precision == "f64" {
            cpu::execute::<f64>(&g, &params(&xs), &HashMap::new(), None).unwrap().outputs.into_iter().map(|(n, t)| (n, t.to_f64_vec())).collect::<Vec<_>>()
        } else {
            cpu::execute::<f32>(&g, &params(&xs), &HashMap::new(), None).unwrap().outputs.into_iter().map(|(n, t)| (n, t.to_f64_vec())).collect()
        };
        for (name, got) in outs {
            let f = UnaryFn::from_name(&name).unwrap();
            for (&x, &y) in xs.iter().zip(&got) {
                // The f32 run computes from x rounded to f32.
                let x = if precision == "f32" { x as f32 as f64 } else { x };
                let want = f.eval(x);
                let want = if precision == "f32" { want as f32 as f64 } else { want };
                if !close(y, want, rel, abs) {
                    bad.push(format!("{precision} {name}({x:e}) = {y:e}, want {want:e}"));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn softplus_is_stable_and_its_gradient_is_the_sigmoid() {
    let f = UnaryFn::Softplus;
    // No overflow for large |x|; log1p accuracy where exp(-|x|) is below the rounding of 1.
    for (x, want) in [(1000.0, 1000.0), (-1000.0, 0.0), (0.0, std::f64::consts::LN_2), (-40.0, (-40.0f64).exp()), (40.0, 40.0)] {
        let got = cpu::ops::unary_fn::<f64>(f, x);
        assert!(close(got, want, 1e-15, 0.0), "softplus({x}) = {got:e}, want {want:e}");
        assert!(close(f.eval(x), want, 1e-15, 0.0), "eval softplus({x}) = {:e}, want {want:e}", f.eval(x));
    }
    assert!(cpu::ops::unary_fn::<f32>(f, -100.0) > 0.0, "softplus(-100) in f32 is exp(-100), not 0");
    // The DSL op, its constant folding and its derivative (autodiff, interpreted).
    let src = "
let a = param a[4, 6];
output c = a * 0 + softplus(0.5);
output loss = sum(sum(softplus(a), -1), 0);
";
    let g = pgc_frontend::compile_model(src, "t.pgdsl", &[], Mode::Train).unwrap_or_else(|d| panic!("{}", d.render(src)));
    let g = pgc_ir::passes::autodiff::backward(&g, "loss").unwrap();
    let xs: Vec<f64> = (0..24).map(|i| -6.0 + i as f64 * 0.55).collect();
    let p = HashMap::from([("a".to_string(), Tensor::<f64>::from_f64(vec![4, 6], &xs))]);
    let run = cpu::execute::<f64>(&g, &p, &HashMap::new(), None).unwrap();
    let get = |n: &str| run.outputs.iter().find(|(m, _)| m == n).unwrap_or_else(|| panic!("no output {n}: {:?}", run.outputs.iter().map(|o| &o.0).collect::<Vec<_>>())).1.to_f64_vec();
    assert!(get("c").iter().all(|&c| close(c, f.eval(0.5), 1e-15, 0.0)), "softplus(0.5) folded: {:?}", get("c"));
    let loss: f64 = xs.iter().map(|&x| f.eval(x)).sum();
    assert!(close(get("loss")[0], loss, 1e-14, 0.0), "loss {} want {loss}", get("loss")[0]);
    let grad = get("grad.a");
    for (&x, &gx) in xs.iter().zip(&grad) {
        let s = 1.0 / (1.0 + (-x).exp());
        assert!(close(gx, s, 1e-15, 0.0), "d softplus/dx at {x}: {gx} want sigmoid {s}");
    }
}

#[test]
fn plan_executor_compiles_each_unary_function_bitwise() {
    let g = all_unary();
    let xs = inputs();
    let rules: BTreeSet<FusionRule> = FusionRule::ALL.into_iter().collect();
    let plan = plan_exec::plan_for(&g, &rules, None).unwrap();
    fn check<F: Real>(g: &Graph, plan: &pgc_ir::plan::Plan, xs: &[f64]) {
        let jit = plan_exec::jit::compile::<F>(g, &plan.kernels).unwrap();
        assert!(jit.fallback.is_empty(), "{}: left to the interpreter: {:?}", F::NAME, jit.fallback);
        assert_eq!(jit.kernels.len(), plan.kernels.len(), "{}: every kernel compiled", F::NAME);
        let p = params::<F>(xs);
        let with = plan_exec::execute_plan_with(g, plan, &p, &HashMap::new(), None, Some(&jit)).unwrap();
        let without = plan_exec::execute_plan_with(g, plan, &p, &HashMap::new(), None, None).unwrap();
        let interp = cpu::execute::<F>(g, &p, &HashMap::new(), None).unwrap();
        for (((n, a), (_, b)), (_, c)) in with.outputs.iter().zip(&without.outputs).zip(&interp.outputs) {
            for (((&x, y), z), w) in xs.iter().zip(a.to_f64_vec()).zip(b.to_f64_vec()).zip(c.to_f64_vec()) {
                assert!(same_bits(y, z) && same_bits(y, w), "{} {n}({x:e}): jit {y:e}, plan interpreted {z:e}, interpreter {w:e}", F::NAME);
            }
        }
    }
    check::<f32>(&g, &plan, &xs);
    check::<f64>(&g, &plan, &xs);
}

#[test]
fn plan_executor_softplus_backward_bitwise() {
    let src = "
let a = param a[5, 37];
let b = param b[37];
output y = softplus(a * b) - softplus(-a);
output loss = sum(sum(softplus(a) * b, -1), 0);
";
    let g = pgc_frontend::compile_model(src, "t.pgdsl", &[], Mode::Train).unwrap_or_else(|d| panic!("{}", d.render(src)));
    let g = pgc_ir::passes::autodiff::backward(&g, "loss").unwrap();
    let rules: BTreeSet<FusionRule> = FusionRule::ALL.into_iter().collect();
    let plan = plan_exec::plan_for(&g, &rules, None).unwrap();
    fn check<F: Real>(g: &Graph, plan: &pgc_ir::plan::Plan) {
        let a: Vec<f64> = (0..5 * 37).map(|i| ((i * 2654435761usize) % 1000) as f64 / 40.0 - 12.5).collect();
        let b: Vec<f64> = (0..37).map(|i| ((i * 97) % 13) as f64 / 3.0 - 2.0).collect();
        let p = HashMap::from([("a".to_string(), Tensor::<F>::from_f64(vec![5, 37], &a)), ("b".to_string(), Tensor::<F>::from_f64(vec![37], &b))]);
        let jit = plan_exec::jit::compile::<F>(g, &plan.kernels).unwrap();
        let compiled = jit.kernels.len() + jit.segments.values().map(|s| s.len()).sum::<usize>();
        assert!(compiled > 0, "{}: nothing compiled", F::NAME);
        let with = plan_exec::execute_plan_with(g, plan, &p, &HashMap::new(), None, Some(&jit)).unwrap();
        let without = plan_exec::execute_plan_with(g, plan, &p, &HashMap::new(), None, None).unwrap();
        let interp = cpu::execute::<F>(g, &p, &HashMap::new(), None).unwrap();
        assert!(with.outputs.iter().any(|(n, _)| n == "grad.a"), "the gradient is an output");
        let tol = if F::NAME == "f64" { 1e-12 } else { 1e-5 };
        for (((n, x), (_, y)), (m, z)) in with.outputs.iter().zip(&without.outputs).zip(&interp.outputs) {
            assert_eq!(n, m);
            let (x, y, z) = (x.to_f64_vec(), y.to_f64_vec(), z.to_f64_vec());
            assert!(x.iter().zip(&y).all(|(p, q)| same_bits(*p, *q)), "{} {n}: compiled kernels differ from interpreted ones", F::NAME);
            let e = cpu::rel_err(&x, &z);
            assert!(e <= tol, "{} {n}: plan executor vs interpreter {e:e}", F::NAME);
        }
    }
    check::<f32>(&g, &plan);
    check::<f64>(&g, &plan);
}
