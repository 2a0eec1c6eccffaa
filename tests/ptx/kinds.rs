//! Each PTX kernel kind on its own, against the CPU backend (f64) on random
//! inputs of awkward shapes: a small model (a DSL snippet) is planned with
//! the PTX backend's fusion rules, compiled with `compile_program`, and run
//! through the program executor on the simulator (sanitizer on). Every value
//! any kernel stores is compared with the CPU's value of the same node:
//! `max|a - b| / max|b|` at most 1e-5 for f32 plans and 2e-2 for bf16 plans.
//! Every stored value and scratch buffer starts as NaN, so an element no
//! kernel writes shows up.

use crate::common;
use common::{ODD, TINY};
use pgc_backends::cpu::{self, Tensor};
use pgc_backends::ptx::compile::{compile_program, supported_rules};
use pgc_backends::ptx::program::{ArgRef, LaunchStep, Program};
use pgc_ir::plan::{self, FusionRule, KernelKind, Place, PlanOptions, Precision};
use pgc_ir::{DType, Graph, Mode, Op, ValueId};
use pgc_runtime::exec::Executor;
use pgc_runtime::sim::SimDevice;
use std::collections::HashMap;

/// A deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn uniform(&mut self) -> f64 {
        (self.next() as f64) / ((1u64 << 53) as f64)
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-12), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn graph(src: &str, mode: Mode, sets: &[(&str, &str)]) -> Graph {
    let sets: Vec<(String, String)> = sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let g = pgc_frontend::compile_model(src, "test.pgdsl", &sets, mode).unwrap_or_else(|d| panic!("{}", d.render(src)));
    if mode == Mode::Train && g.output("loss").is_some() {
        pgc_ir::passes::autodiff::backward(&g, "loss").unwrap()
    } else {
        g
    }
}

/// The code (text after the name) of a hand-written entry `pgc_test_nanfill(p, n)`.
const NANFILL_CODE: &str = "(.param .u64 p, .param .u32 n)
{
\t.reg .pred %p<2>;
\t.reg .b16 %h<2>;
\t.reg .b32 %r<6>;
\t.reg .b64 %rd<4>;
\tld.param.u64 %rd0, [p];
\tld.param.u32 %r0, [n];
\tmov.u32 %r1, %ctaid.x;
\tmov.u32 %r2, %tid.x;
\tmad.lo.u32 %r3, %r1, 256, %r2;
\tsetp.ge.u32 %p0, %r3, %r0;
\t@%p0 bra $DONE;
\tmul.wide.u32 %rd1, %r3, 2;
\tadd.u64 %rd2, %rd0, %rd1;
\tmov.b16 %h0, 0xffff;
\tst.global.b16 [%rd2], %h0;
$DONE:
\tret;
}
";

/// The program with NaN fills of every stored value and scratch buffer first.
fn with_nan_fills(p: &Program) -> Program {
    let mut q = p.clone();
    use pgc_backends::ptx::builder::{Param, ParamType};
    let params = vec![Param { name: "p".into(), ty: ParamType::U64 }, Param { name: "n".into(), ty: ParamType::U32 }];
    q.entries.push(pgc_backends::ptx::program::Entry { name: "pgc_test_nanfill".into(), params, max_threads: None, code: NANFILL_CODE.into() });
    let mut pre = Vec::new();
    let fill = |arg: ArgRef, bytes: u64| {
        let n = (bytes / 2) as u32;
        LaunchStep { plan_kernel: 0, entry: "pgc_test_nanfill".into(), grid: [n.div_ceil(256).max(1), 1, 1], block: [256, 1, 1], shared_bytes: 0, args: vec![arg, ArgRef::U32(n)], zero_first: vec![] }
    };
    for (i, place) in p.plan.values.iter().enumerate() {
        if let Place::Arena(s) | Place::Param { prepared: Some(s), .. } = place {
            pre.push(fill(ArgRef::Value(ValueId(i as u32)), s.bytes));
        }
    }
    for (i, a) in p.aux.iter().enumerate() {
        if let pgc_backends::ptx::program::AuxBuffer::Scratch { bytes } = a {
            pre.push(fill(ArgRef::Aux(i), *bytes));
        }
    }
    pre.extend(q.launches);
    q.launches = pre;
    q
}

struct Case<'a> {
    name: &'static str,
    src: &'a str,
    sets: &'static [(&'static str, &'static str)],
    mode: Mode,
    /// Exclusive upper bound of the token ids.
    ids: i32,
    /// Parameter scale.
    scale: f64,
    /// Check each kernel against the CPU run on the kernel's actual inputs as
    /// the device stored them (else against one CPU run of the whole graph).
    isolate: bool,
}

struct Outcome {
    worst: f64,
    /// Graph outputs against one f64 run of the whole graph (isolated cases).
    end_to_end: Vec<(String, f64)>,
    kinds: Vec<KernelKind>,
    lines: Vec<String>,
}

/// Plan, compile and run `case` in `precision`; compare every stored value.
fn run_case(case: &Case, precision: Precision, rules: &[FusionRule], seed: u64) -> Outcome {
    let g = graph(case.src, case.mode, case.sets);
    let mut opts = PlanOptions::all(&g, precision);
    opts.rules = rules.iter().copied().collect();
    if case.mode == Mode::Train {
        opts.outputs.retain(|n| n != "logits");
    }
    let p = plan::build(&g, &opts).unwrap();
    let prog = compile_program(&g, &p).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let prog = with_nan_fills(&prog);

    let mut rng = Rng(seed);
    let mut params32: HashMap<String, Vec<f32>> = HashMap::new();
    let mut params64: HashMap<String, Tensor<f64>> = HashMap::new();
    for pi in &g.params {
        let v: Vec<f32> = (0..pi.numel()).map(|_| (rng.normal() * case.scale) as f32).collect();
        params64.insert(pi.name.clone(), Tensor::float(pi.shape.clone(), v.iter().map(|&x| x as f64).collect()));
        params32.insert(pi.name.clone(), v);
    }
    let mut inputs64: HashMap<String, Tensor<f64>> = HashMap::new();
    let mut inputs32: HashMap<String, Vec<i32>> = HashMap::new();
    for n in &g.nodes {
        if let Op::Input { name, ty } = &n.op {
            assert_eq!(ty.dtype, DType::I32);
            let v: Vec<i32> = (0..ty.numel()).map(|_| (rng.next() % case.ids as u64) as i32).collect();
            inputs64.insert(name.clone(), Tensor::int(ty.shape.clone(), v.clone()));
            inputs32.insert(name.clone(), v);
        }
    }

    let dev = SimDevice::new();
    let mut ex = Executor::new(&dev, &prog, &g).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    ex.set_params(&params32).unwrap();
    for (k, v) in &inputs32 {
        ex.set_input(k, v).unwrap();
    }
    // Launch by launch; each plan kernel's outputs are read right after its
    // last launch (the memory plan reuses a slot once its last reader ran).
    let mut got_vals: HashMap<ValueId, Vec<f64>> = HashMap::new();
    let mut in_vals: HashMap<(usize, ValueId), Vec<f64>> = HashMap::new();
    let nfill = prog.launches.iter().take_while(|l| l.entry == "pgc_test_nanfill").count();
    for i in 0..ex.launch_count() {
        let l = &prog.launches[i];
        let first_of_kernel = i >= nfill && (i == nfill || prog.launches[i - 1].plan_kernel != l.plan_kernel);
        if case.isolate && first_of_kernel {
            let k = &p.kernels[l.plan_kernel];
            let tensor_cores = matches!(k.kind, KernelKind::Gemm | KernelKind::LmHead | KernelKind::Attention | KernelKind::AttentionBackward);
            for &v in &k.inputs {
                let read = match &p.values[v.index()] {
                    Place::Arena(s) => s.storage != DType::I32,
                    Place::Param { prepared: Some(_), .. } => tensor_cores,
                    _ => false,
                };
                if read {
                    in_vals.insert((l.plan_kernel, v), ex.read_stored(v).unwrap().iter().map(|&x| x as f64).collect());
                }
            }
        }
        ex.launch_step(i).unwrap_or_else(|e| panic!("{} ({precision:?}): {e}", case.name));
        let last_of_kernel = i >= nfill && prog.launches.get(i + 1).is_none_or(|n| n.plan_kernel != l.plan_kernel);
        if last_of_kernel {
            for &o in &p.kernels[l.plan_kernel].outputs {
                got_vals.insert(o, ex.read_stored(o).unwrap().iter().map(|&x| x as f64).collect());
            }
        }
    }

    // Reference: every stored value as an extra output of the graph, in f64.
    let mut stored: Vec<(usize, ValueId)> = Vec::new();
    for (ki, k) in p.kernels.iter().enumerate() {
        for &o in &k.outputs {
            stored.push((ki, o));
        }
    }
    let names: Vec<String> = stored.iter().map(|(_, v)| format!("__v{}", v.0)).collect();
    let mut end_to_end = Vec::new();
    if case.isolate {
        let outs: Vec<(String, ValueId)> = g.outputs.iter().filter(|(_, v)| got_vals.contains_key(v)).cloned().collect();
        let refs: Vec<&str> = outs.iter().map(|(n, _)| n.as_str()).collect();
        let full = cpu::execute::<f64>(&g, &params64, &inputs64, Some(&refs)).unwrap();
        for (n, v) in &outs {
            end_to_end.push((n.clone(), cpu::rel_err(&got_vals[v], full.get(n).unwrap().as_float().unwrap())));
        }
    }
    let want: HashMap<String, Tensor<f64>> = if case.isolate {
        // One CPU run per kernel, its stored inputs replaced by the device's values.
        let mut all = HashMap::new();
        for (ki, k) in p.kernels.iter().enumerate() {
            let mut gk = g.clone();
            let mut params = params64.clone();
            for &v in &k.inputs {
                let Some(vals) = in_vals.get(&(ki, v)) else { continue };
                let name = format!("__in{}", v.0);
                let shape = g.ty(v).shape.clone();
                gk.nodes[v.index()].op = Op::Param { id: pgc_ir::ParamId(gk.params.len() as u32) };
                gk.nodes[v.index()].args.clear();
                gk.params.push(pgc_ir::ParamInfo { name: name.clone(), shape: shape.clone(), quant: Default::default(), init: pgc_ir::Init::Zeros, origin: None });
                params.insert(name, Tensor::float(shape, vals.clone()));
            }
            gk.outputs = k.outputs.iter().map(|o| (format!("__v{}", o.0), *o)).collect();
            let run = cpu::execute::<f64>(&gk, &params, &inputs64, None).unwrap_or_else(|e| panic!("{}: reference of {}: {e}", case.name, k.name));
            all.extend(run.outputs);
        }
        all
    } else {
        let mut g2 = g.clone();
        for (_, v) in &stored {
            g2.outputs.push((format!("__v{}", v.0), *v));
        }
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        cpu::execute::<f64>(&g2, &params64, &inputs64, Some(&refs)).unwrap().outputs.into_iter().collect()
    };

    let mut worst = 0.0f64;
    let mut lines = Vec::new();
    for ((ki, v), name) in stored.iter().zip(&names) {
        let got = got_vals[v].clone();
        let w = want.get(name).unwrap();
        let wv: Vec<f64> = match w.as_float() {
            Some(f) => f.to_vec(),
            None => w.as_int().unwrap().iter().map(|&i| i as f64).collect(),
        };
        let e = cpu::rel_err(&got, &wv);
        if std::env::var_os("PGC_DEBUG").is_some() && e > 1e-3 {
            let bad: Vec<(usize, f64, f64)> = got.iter().zip(&wv).enumerate().filter(|(_, (a, b))| !within((*a - *b).abs(), 1e-3)).map(|(i, (a, b))| (i, *a, *b)).take(20).collect();
            println!("%{} mismatches: {bad:?}", v.0);
        }
        let k = &p.kernels[*ki];
        lines.push(format!("{:<44} %{:<5} {:<16} {:?} rel err {e:.2e}", k.name, v.0, g.node(*v).op.name(), g.ty(*v).shape));
        worst = worst.max(e);
    }
    Outcome { worst, end_to_end, kinds: p.kernels.iter().map(|k| k.kind).collect(), lines }
}

/// `e <= tol`, false for NaN.
fn within(e: f64, tol: f64) -> bool {
    e <= tol
}

fn tol(p: Precision) -> f64 {
    match p {
        Precision::F32 => 1e-5,
        Precision::Bf16 => 2e-2,
    }
}

/// Run in both precisions with the backend's rules; require `kind` in the plan.
fn check(case: &Case, kind: KernelKind) {
    let rules: Vec<FusionRule> = supported_rules().into_iter().collect();
    check_with(case, &[kind], &rules);
}

fn check_with(case: &Case, kinds: &[KernelKind], rules: &[FusionRule]) {
    let mut fails = Vec::new();
    for (i, precision) in [Precision::F32, Precision::Bf16].into_iter().enumerate() {
        let out = run_case(case, precision, rules, 17 + i as u64);
        for kind in kinds {
            assert!(out.kinds.contains(kind), "{}: no {kind:?} kernel in the plan: {:?}", case.name, out.kinds);
        }
        println!("== {} {precision:?}: worst {:.2e} (tol {:.0e})", case.name, out.worst, tol(precision));
        for l in &out.lines {
            println!("   {l}");
        }
        if !out.end_to_end.is_empty() {
            let (n, e) = out.end_to_end.iter().fold((String::new(), 0.0f64), |a, (n, e)| if *e > a.1 { (n.clone(), *e) } else { a });
            println!("   end to end ({} outputs against one f64 run of the graph): worst {e:.2e} ({n})", out.end_to_end.len());
            for (n, e) in &out.end_to_end {
                println!("      {n:<40} {e:.2e}");
            }
            // The f32 path end to end, as the golden checks require (1e-4).
            if precision == Precision::F32 && !within(e, 1e-4) {
                fails.push(format!("{} f32 end to end: {n} {e:.3e} > 1e-4", case.name));
            }
        }
        if !within(out.worst, tol(precision)) {
            fails.push(format!("{} {precision:?}: {:.3e} > {:.0e}", case.name, out.worst, tol(precision)));
        }
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

#[test]
fn elementwise_math_and_index_ops() {
    check(
        &Case {
            name: "elementwise",
            sets: &[],
            src: "
let a = param a[3, 33, 48];
let b = param b[48];
let c = param c[33, 1];
let y = tanh(a * b) + exp(-square(a)) / (1 + sigmoid(c)) - relu(a) * 0.5 + abs(b) ^ 0.5 + log(1.5 + abs(a));
let z = maximum(a, c) - minimum(b, a) + rsqrt(2 + square(c)) + recip(3 + b) + leaky_relu(a, 0.25);
let p = permute(reshape(y, [3, 33, 4, 12]), [0, 2, 1, 3]);
output y = y + shift(z, axis=1);
output p = p * reshape(index(p, 1, 2), [3, 1, 33, 12]);
output s = shift(z, axis=1, offset=-2) + sqrt(abs(a));
",
            mode: Mode::Eval,
            ids: 1,
            scale: 1.0,
            isolate: false,
        },
        KernelKind::Elementwise,
    );
}

#[test]
fn math_functions_one_by_one() {
    check(
        &Case {
            name: "math",
            sets: &[],
            src: "
let a = param a[5, 37];
output t = tanh(a);
output e = exp(a);
output l = log(abs(a));
output s = sigmoid(a);
output q = sqrt(abs(a));
output r = rsqrt(abs(a));
output c = recip(a);
output x = relu(a) + square(a);
output p = softplus(a);
",
            mode: Mode::Eval,
            ids: 1,
            scale: 3.0,
            isolate: false,
        },
        KernelKind::Elementwise,
    );
}

/// Softplus and its derivative (the sigmoid) in an element-wise kernel and in
/// the loss's reductions, against the CPU backend.
#[test]
fn softplus_in_training() {
    check(
        &Case {
            name: "softplus",
            sets: &[],
            src: "
let a = param a[5, 37];
let b = param b[37];
output y = softplus(a * b) - softplus(-a);
output loss = sum(sum(softplus(a) * b, -1), 0);
",
            mode: Mode::Train,
            ids: 1,
            scale: 3.0,
            isolate: false,
        },
        KernelKind::Elementwise,
    );
}

const ROWS_SRC: &str = "
const norm_eps = 1.1920928955078125e-07;
fn rms(x) { x * rsqrt(mean(x^2, -1, keepdim=true) + norm_eps) }
let x = param x[3, 33, 48];
let g = sigmoid(param gate[48]);
let h = rms(x);
let s = (1 - g) * h + g * shift(h, axis=1);
let q = rms(split_heads(s, 3));
let q = rope(q, 10000.0) * reshape(param q_gain[3], [3, 1, 1]);
let w = param w[3, 3, 33, 16];
output q = q;
output s = s;
output loss = sum(reshape(q * w, [4752]), 0) + sum(sum(sum(s * x, -1), -1), -1);
";

#[test]
fn rowwise_norms_smear_rope() {
    check(&Case { name: "rowwise", src: ROWS_SRC, sets: &[], mode: Mode::Eval, ids: 1, scale: 1.0, isolate: false }, KernelKind::RowWise);
}

#[test]
fn reduce_backward_of_norms_smear_rope() {
    check(&Case { name: "reduce", src: ROWS_SRC, sets: &[], mode: Mode::Train, ids: 1, scale: 1.0, isolate: false }, KernelKind::Reduce);
}

const EMBED_SRC: &str = "
let ids = input input_ids[3, 33]: i32;
let targets = input target_ids[3, 33]: i32;
let tok = param tok[200, 48];
let big = param big[97, 12];
let zt = param zt[200, 200];
let x = embedding(tok, ids);
let b = embedding(big, bigram_hash(ids, 97));
let z = 30.0 * tanh(embedding(zt, ids) * 4.0 / 30.0);
let w = fake_quant(param wq[17, 40], 4);
let u = param u[17, 40];
output logits = z;
output loss = cross_entropy(z, targets) + sum(sum(sum(x * x, -1), -1), -1) * 0.01 + sum(sum(sum(b, -1), -1), -1) + sum(sum(w * u, -1), -1);
";

/// A per-channel mix before an RMS norm (the model's `resid_mix` pattern): in
/// training the norm's backward row sum, the mix's gradient (a column sum over
/// all rows of a value that needs the row sum) and the input gradient share
/// one row-wise kernel. Row lengths 36 (one column per lane) and 132 (four per
/// lane); a head-split norm with rotary beside it stores its gradient permuted.
fn norm_scale_src(d: usize) -> String {
    format!(
        "
const norm_eps = 1.1920928955078125e-07;
fn rms(x) {{ x * rsqrt(mean(x^2, -1, keepdim=true) + norm_eps) }}
let x = param x[3, 11, {d}] * param mix[{d}];
let y = rms(x) * param s[{d}];
let q = rope(rms(split_heads(param u[3, 11, {d}], 2)), 10000.0) * reshape(param g[2], [2, 1, 1]);
output loss = sum(sum(sum(y * param w[3, 11, {d}], -1), -1), -1) + sum(reshape(q * param v[3, 2, 11, {h}], [{n}]), 0);
",
        h = d / 2,
        n = 3 * 11 * d
    )
}

#[test]
fn rowwise_backward_with_column_sums_in_shared_memory() {
    for d in [36, 132] {
        let src = norm_scale_src(d);
        let g = graph(&src, Mode::Train, &[]);
        let mut opts = PlanOptions::all(&g, Precision::Bf16);
        opts.rules = supported_rules();
        let p = plan::build(&g, &opts).unwrap();
        let prog = compile_program(&g, &p).unwrap();
        // The column sums took the shared-memory path in some row-wise launch.
        assert!(
            prog.launches.iter().any(|l| p.kernels[l.plan_kernel].kind == KernelKind::RowWise && l.shared_bytes > 0),
            "d = {d}: no row-wise launch with column sums"
        );
        check(&Case { name: "rowwise-colsum", src: &src, sets: &[], mode: Mode::Train, ids: 1, scale: 1.0, isolate: true }, KernelKind::RowWise);
    }
}

#[test]
fn gather_embedding_and_bigram_hash() {
    check(&Case { name: "gather", src: EMBED_SRC, sets: &[], mode: Mode::Eval, ids: 200, scale: 1.0, isolate: false }, KernelKind::Gather);
}

#[test]
fn scatter_cross_entropy_and_fake_quant_in_training() {
    let case = Case { name: "scatter-ce-quant", src: EMBED_SRC, sets: &[], mode: Mode::Train, ids: 200, scale: 1.0, isolate: false };
    let rules: Vec<FusionRule> = supported_rules().into_iter().collect();
    check_with(&case, &[KernelKind::Scatter, KernelKind::CrossEntropy, KernelKind::WeightPrep], &rules);
}

const MLP_SRC: &str = "
const norm_eps = 1.1920928955078125e-07;
fn rms(x) { x * rsqrt(mean(x^2, -1, keepdim=true) + norm_eps) }
let x = param x[3, 33, 48];
let w1 = param fc[200, 48];
let w2 = param proj[48, 200];
let wv = param wv[16, 48];
let s = param s[48];
let u = rms(x);
let h = relu(linear(u, w1));
let y = x + s * linear(square(h), w2);
let v = split_heads(linear(u, wv), 2);
let x2 = param x2[3, 11, 33];
let z = linear(rms(x2), param wz[20, 33]);
output y = y;
output v = v;
output z = z;
output loss = sum(sum(sum(y * y, -1), -1), -1) + sum(reshape(v * v, [1584]), 0);
";

#[test]
fn gemm_with_prologue_and_epilogues() {
    check(&Case { name: "gemm-eval", src: MLP_SRC, sets: &[], mode: Mode::Eval, ids: 1, scale: 0.3, isolate: false }, KernelKind::Gemm);
}

#[test]
fn gemm_backward_products_and_epilogues() {
    check(&Case { name: "gemm-train", src: MLP_SRC, sets: &[], mode: Mode::Train, ids: 1, scale: 0.3, isolate: false }, KernelKind::Gemm);
}

const ATTN_SRC: &str = "
const norm_eps = 1.1920928955078125e-07;
const heads = 3;
const kv_heads = 1;
fn rms(x) { x * rsqrt(mean(x^2, -1, keepdim=true) + norm_eps) }
let x = param x[2, 33, 48];
let wq = param wq[48, 48];
let wk = param wk[16, 48];
let wv = param wv[16, 48];
let wo = param wo[48, 48];
let q = rms(split_heads(linear(x, wq), heads));
let k = rms(split_heads(linear(x, wk), kv_heads));
let v = split_heads(linear(x, wv), kv_heads);
let q = rope(q, 10000.0) * reshape(param q_gain[heads], [heads, 1, 1]);
let k = rope(k, 10000.0);
let y = linear(merge_heads(causal_attention(q, k, v, 0.25)), wo);
output y = y;
output loss = sum(sum(sum(y * y, -1), -1), -1);
";

#[test]
fn attention_forward() {
    check(&Case { name: "attention-eval", src: ATTN_SRC, sets: &[], mode: Mode::Eval, ids: 1, scale: 0.3, isolate: false }, KernelKind::Attention);
}

#[test]
fn attention_backward() {
    check(&Case { name: "attention-train", src: ATTN_SRC, sets: &[], mode: Mode::Train, ids: 1, scale: 0.3, isolate: false }, KernelKind::AttentionBackward);
}

const MODEL_11L: &str = include_str!("../../models/11l.pgdsl");
#[test]
fn model_11l_tiny_train() {
    check(&Case { name: "11l-tiny-train", src: MODEL_11L, sets: TINY, mode: Mode::Train, ids: 64, scale: 0.2, isolate: true }, KernelKind::Gemm);
}

#[test]
fn model_11l_odd_train() {
    check(&Case { name: "11l-odd-train", src: MODEL_11L, sets: ODD, mode: Mode::Train, ids: 200, scale: 0.2, isolate: true }, KernelKind::AttentionBackward);
}

#[test]
fn model_11l_odd_eval() {
    check(&Case { name: "11l-odd-eval", src: MODEL_11L, sets: ODD, mode: Mode::Eval, ids: 200, scale: 0.2, isolate: true }, KernelKind::Attention);
}

#[test]
fn reductions_of_every_shape() {
    check(
        &Case {
            name: "reductions",
            src: "
let a = param a[9000];
let b = param b[2, 10000];
let c = param c[300, 37];
let d = param d[5, 7, 9];
output s1 = sum(a, 0);
output s2 = sum(b, -1);
output s3 = mean(b, -1, keepdim=true);
output s4 = max(b, -1);
output s5 = sum(c, 0);
output s6 = mean(c, 0, keepdim=true);
output s7 = max(c, 0);
output s8 = sum(d, 1);
output s9 = max(d, 1, keepdim=true);
output s10 = sum(sum(d * d, 2), 0);
output loss = sum(sum(sum(d, 2), 1), 0) * sum(a, 0);
",
            sets: &[],
            mode: Mode::Train,
            ids: 1,
            scale: 1.0,
            isolate: false,
        },
        KernelKind::Reduce,
    );
}

/// An LM head on awkward shapes: 3 x 11 rows, dim 36, vocab 70 (no tile
/// multiple), RMS norm in the GEMM prologue, softcap `CAP` (`{cap}`).
fn lm_head_src(head: &str) -> String {
    format!(
        "
const norm_eps = 1.1920928955078125e-07;
fn rms(x) {{ x * rsqrt(mean(x^2, -1, keepdim=true) + norm_eps) }}
let ids = input input_ids[3, 11]: i32;
let targets = input target_ids[3, 11]: i32;
let tok = param tok[70, 36];
let x = embedding(tok, ids) * param g[36];
let raw = linear(rms(x), param head[70, 36]);
let logits = {head};
output logits = logits;
output loss = cross_entropy(logits, targets);
"
    )
}

/// The entries launched for the LM head kernel of `src` in `mode` (bf16).
fn lm_head_launches(src: &str, mode: Mode) -> Vec<String> {
    let g = graph(src, mode, &[]);
    let mut opts = PlanOptions::all(&g, Precision::Bf16);
    opts.rules = supported_rules();
    opts.outputs.retain(|n| n != "logits" || mode == Mode::Eval);
    let p = plan::build(&g, &opts).unwrap();
    let prog = compile_program(&g, &p).unwrap();
    prog.launches.iter().filter(|l| p.kernels[l.plan_kernel].kind == KernelKind::LmHead).map(|l| l.entry.clone()).collect()
}

#[test]
fn lm_head_with_softcap_cross_entropy_in_gemm_epilogues() {
    // The head's launches: GEMM + row pass (+ the gradient GEMM in training),
    // no launch reading the logits back.
    let src = lm_head_src("30.0 * tanh(raw / 30.0)");
    let train = lm_head_launches(&src, Mode::Train);
    assert_eq!(train.len(), 3, "{train:?}");
    assert!(train[1].ends_with("_lse") && train[2].ends_with("_grad"), "{train:?}");
    let eval = lm_head_launches(&src, Mode::Eval);
    assert_eq!(eval.len(), 2, "{eval:?}");

    // Train (loss and the logits gradient, logits not stored) and eval (loss
    // and logits): the head's own kernels checked on their stored inputs.
    let src = lm_head_src("30.0 * tanh(raw / 30.0)");
    for mode in [Mode::Train, Mode::Eval] {
        check(&Case { name: "lm-head", src: &src, sets: &[], mode, ids: 70, scale: 1.5, isolate: true }, KernelKind::LmHead);
    }
    // The full model's head (tiny config).
    for mode in [Mode::Train, Mode::Eval] {
        check(&Case { name: "lm-head-11l", src: MODEL_11L, sets: TINY, mode, ids: 64, scale: 0.2, isolate: true }, KernelKind::LmHead);
    }
}

#[test]
fn lm_head_without_a_bounding_softcap_falls_back() {
    // No bound on the logits (no softcap, or one above 40): the product goes
    // through scratch and the row-wise cross entropy, same values.
    for head in ["raw * 2.0", "50.0 * tanh(raw / 50.0)"] {
        let src = lm_head_src(head);
        let train = lm_head_launches(&src, Mode::Train);
        assert!(train.iter().any(|e| e.ends_with("_epilogue")) && !train.iter().any(|e| e.ends_with("_lse")), "{head}: {train:?}");
        for mode in [Mode::Train, Mode::Eval] {
            check(&Case { name: "lm-head-unbounded", src: &src, sets: &[], mode, ids: 70, scale: 1.5, isolate: true }, KernelKind::LmHead);
        }
    }
}

#[test]
fn attention_with_the_qk_prologue_and_split_backward() {
    // `qk-prologue-into-attention` (left out of the backend's rules: the
    // prologue runs as a launch into scratch before the attention) and
    // `attention-backward-together` off (each gradient its own kernel).
    let mut rules: Vec<FusionRule> = supported_rules().into_iter().filter(|r| *r != FusionRule::AttentionBackwardTogether).collect();
    rules.push(FusionRule::QkPrologueIntoAttention);
    check_with(&Case { name: "attention-rules", src: ATTN_SRC, sets: &[], mode: Mode::Train, ids: 1, scale: 0.3, isolate: false }, &[KernelKind::AttentionBackward], &rules);
    // In eval the q/k prologue joins the attention kernel.
    check_with(&Case { name: "attention-prologue", src: ATTN_SRC, sets: &[], mode: Mode::Eval, ids: 1, scale: 0.3, isolate: false }, &[KernelKind::Attention], &rules);
}

#[test]
fn every_rule_off() {
    check_with(&Case { name: "unfused", src: MODEL_11L, sets: TINY, mode: Mode::Train, ids: 64, scale: 0.2, isolate: true }, &[KernelKind::CrossEntropy], &[]);
}

/// exp, log, tanh, sigmoid and rsqrt element by element over hard inputs
/// (tanh's series/exp switch at 0.55, large arguments, log near 1, of 0 and
/// of subnormals):
/// relative error per element at most 4e-7 (a few ulp; the simulator
/// computes `ex2.approx` exactly, hardware is within 2^-22 of it).
#[test]
fn math_functions_per_element() {
    let mut xs: Vec<f64> = vec![0.0, 1e-30, 1e-8, 1e-3, 0.1, 0.5, 0.549, 0.55, 0.551, 0.6, 1.0, 2.0, 5.0, 9.0, 15.0, 40.0, 80.0, 87.0];
    let mut v = 1e-6;
    while v < 100.0 {
        xs.push(v);
        v *= 1.37;
    }
    let xs: Vec<f64> = xs.iter().flat_map(|&x| [x, -x]).map(|x: f64| x as f32 as f64).collect();
    let n = xs.len();
    let src = format!(
        "let a = param a[{n}];\noutput e = exp(a);\noutput t = tanh(a);\noutput s = sigmoid(a);\noutput l = log(abs(a) + 1e-37);\noutput l1 = log(1 + a * 1e-4);\noutput r = rsqrt(abs(a) + 1e-30);\noutput ls = log(abs(a) * 1e-35);\n"
    );
    let g = graph(&src, Mode::Eval, &[]);
    let mut opts = PlanOptions::all(&g, Precision::F32);
    opts.rules = supported_rules();
    let p = plan::build(&g, &opts).unwrap();
    let prog = compile_program(&g, &p).unwrap();
    let dev = SimDevice::new();
    let mut ex = Executor::new(&dev, &prog, &g).unwrap();
    let vals: Vec<f32> = xs.iter().map(|&x| x as f32).collect();
    ex.set_params(&HashMap::from([("a".to_string(), vals.clone())])).unwrap();
    ex.run().unwrap();
    let want = |name: &str, x: f64| -> f64 {
        match name {
            "e" => x.exp(),
            "t" => x.tanh(),
            "s" => 1.0 / (1.0 + (-x).exp()),
            "l" => ((x.abs() as f32 + 1e-37f32) as f64).ln(),
            "l1" => ((1.0f32 + (x as f32) * 1e-4f32) as f64).ln(),
            "r" => 1.0 / ((x.abs() as f32 + 1e-30f32) as f64).sqrt(),
            "ls" => ((x.abs() as f32 * 1e-35f32) as f64).ln(),
            _ => unreachable!(),
        }
    };
    let mut fails = Vec::new();
    for name in ["e", "t", "s", "l", "l1", "r", "ls"] {
        let got = ex.read_output(name).unwrap();
        let mut worst = (0.0f64, 0.0f64);
        for (i, &x) in xs.iter().enumerate() {
            let w = want(name, x);
            let e = if w.is_infinite() || w == 0.0 { if got[i] as f64 == w { 0.0 } else { f64::INFINITY } } else { ((got[i] as f64 - w) / w).abs() };
            if !(e <= worst.0) {
                worst = (e, x);
            }
        }
        println!("{name:<3} worst relative error {:.2e} at x = {:e}", worst.0, worst.1);
        if !within(worst.0, 4e-7) {
            fails.push(format!("{name}: {:.3e} at x = {:e}", worst.0, worst.1));
        }
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}
