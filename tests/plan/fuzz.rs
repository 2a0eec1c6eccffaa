//! Randomly assembled models, end to end: each seed builds a small DSL model
//! from the 11-layer model's pieces (RMS norms, per-channel scales and mixes,
//! residual projections, relu^2 MLPs, SmearGate, GQA attention with the q/k
//! norm, rotary and q_gain, a softcapped LM head or a plain weighted sum) at
//! awkward sizes, plans its training graph with a random subset of the PTX
//! backend's fusion rules, and runs it on the simulator (sanitizer on):
//! - f32 plans: loss and every gradient within 1e-4 of the CPU backend in f64
//!   (`max|a-b| / max|b|` per tensor);
//! - bf16 plans: every output finite;
//! - the CPU plan executor on the same plan in f64: within 1e-9 of the
//!   interpreter.
//!
//! The fusion rules decide which ops share a kernel and what is stored; this
//! checks that any combination of them yields the same values.

use pgc_backends::cpu::{self, Tensor};
use pgc_backends::ptx::compile::{compile_program, supported_rules};
use pgc_ir::plan::{self, FusionRule, PlanOptions, Precision};
use pgc_ir::{DType, Graph, Mode, Op};
use pgc_runtime::exec::Executor;
use pgc_runtime::sim::SimDevice;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;

/// Models per run (each takes a fraction of a second on the simulator);
/// `PGC_FUZZ_MODELS=N` runs more.
const MODELS: u64 = 64;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn normal(&mut self) -> f64 {
        let u = ((self.next() as f64) / ((1u64 << 53) as f64)).max(1e-12);
        let v = (self.next() as f64) / ((1u64 << 53) as f64);
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// A model source for `seed`, and a one-line description.
fn model_source(seed: u64) -> (String, String) {
    let mut r = Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) ^ 0x5DEECE66D);
    let (b, t) = (r.pick(&[1usize, 2, 3]), r.pick(&[5usize, 11, 17, 33]));
    let (heads, kv_heads, hd) = (r.pick(&[2usize, 4]), 0, r.pick(&[8usize, 16]));
    let kv_heads = if kv_heads == 0 { heads / r.pick(&[1usize, 2]) } else { kv_heads };
    let d = heads * hd;
    let layers = 2 + r.below(4) as usize;
    let mut s = String::new();
    let mut what = format!("B{b} T{t} D{d} ({heads}x{hd}, kv {kv_heads}):");
    writeln!(s, "const norm_eps = 1.1920928955078125e-07;").unwrap();
    writeln!(s, "fn rms(x) {{ x * rsqrt(mean(x^2, -1, keepdim=true) + norm_eps) }}").unwrap();
    writeln!(s, "let targets = input target_ids[{b}, {t}]: i32;").unwrap();
    writeln!(s, "let h = param x0[{b}, {t}, {d}];").unwrap();
    for i in 0..layers {
        let kind = r.below(7);
        let line = match kind {
            0 => format!("h = h * param mix{i}[{d}];"),
            1 => format!("h = rms(h) * param g{i}[{d}];"),
            2 => format!("h = h + param s{i}[{d}] * linear(rms(h), param w{i}[{d}, {d}]);"),
            3 => {
                let e = 2 * d + 4;
                format!("h = h + param ms{i}[{d}] * linear(square(relu(linear(rms(h), param a{i}[{e}, {d}]))), param p{i}[{d}, {e}]);")
            }
            4 => format!("let z{i} = sigmoid(param gate{i}[{d}]);\nh = (1 - z{i}) * h + z{i} * shift(h, axis=1);"),
            5 => {
                let dk = kv_heads * hd;
                let scale = 1.0 / (hd as f64).sqrt();
                format!(
                    "let u{i} = rms(h);\n\
                     let q{i} = rope(rms(split_heads(linear(u{i}, param wq{i}[{d}, {d}]), {heads})), 10000.0) * reshape(param qg{i}[{heads}], [{heads}, 1, 1]);\n\
                     let k{i} = rope(rms(split_heads(linear(u{i}, param wk{i}[{dk}, {d}]), {kv_heads})), 10000.0);\n\
                     let v{i} = split_heads(linear(u{i}, param wv{i}[{dk}, {d}]), {kv_heads});\n\
                     h = h + param as{i}[{d}] * linear(merge_heads(causal_attention(q{i}, k{i}, v{i}, {scale})), param wo{i}[{d}, {d}]);"
                )
            }
            _ => format!("h = h + param c{i}[{d}] * h;"),
        };
        what.push_str([" mix", " norm", " proj", " mlp", " smear", " attn", " scale"][kind as usize]);
        writeln!(s, "{line}").unwrap();
    }
    if r.below(2) == 0 {
        let v = r.pick(&[37usize, 64, 70]);
        writeln!(s, "output loss = cross_entropy(30.0 * tanh(linear(rms(h), param head[{v}, {d}]) / 30.0), targets);").unwrap();
        what.push_str(&format!(" head({v})"));
    } else {
        // A sum of squares: no cancellation, so the f32 loss keeps its relative precision.
        writeln!(s, "output loss = sum(reshape(square(h * param wl[{b}, {t}, {d}]), [{}]), 0);", b * t * d).unwrap();
        what.push_str(" sum");
    }
    (s, what)
}

/// The training graph of `src`.
fn train_graph(src: &str) -> Graph {
    let fwd = pgc_frontend::compile_model(src, "fuzz.pgdsl", &[], Mode::Train).unwrap_or_else(|d| panic!("{}\n{src}", d.render(src)));
    pgc_ir::passes::autodiff::backward(&fwd, "loss").unwrap()
}

/// Run `g`'s plan with `rules` in `precision` on the simulator; every graph output.
fn run_sim(g: &Graph, rules: &BTreeSet<FusionRule>, precision: Precision, params: &HashMap<String, Vec<f32>>, ids: &[i32]) -> HashMap<String, Vec<f32>> {
    let mut opts = PlanOptions::all(g, precision);
    opts.rules = rules.clone();
    let p = plan::build(g, &opts).unwrap();
    let prog = compile_program(g, &p).unwrap_or_else(|e| panic!("compile: {e}"));
    let dev = SimDevice::new();
    let mut ex = Executor::new(&dev, &prog, g).unwrap();
    ex.set_params(params).unwrap();
    ex.set_input("target_ids", ids).unwrap();
    ex.run().unwrap_or_else(|e| panic!("run: {e}"));
    g.outputs.iter().map(|(n, _)| (n.clone(), ex.read_output(n).unwrap())).collect()
}

#[test]
fn random_models_match_the_cpu_under_random_fusion_rules() {
    // The backend's rules, and qk-prologue-into-attention (staged there, see `supported_rules`).
    let mut supported: Vec<FusionRule> = supported_rules().into_iter().collect();
    supported.push(FusionRule::QkPrologueIntoAttention);
    let mut fails = Vec::new();
    let models = std::env::var("PGC_FUZZ_MODELS").ok().and_then(|v| v.parse().ok()).unwrap_or(MODELS);
    for seed in 0..models {
        let (src, what) = model_source(seed);
        let g = train_graph(&src);
        let mut r = Rng(seed ^ 0xABCDEF);
        let rules: BTreeSet<FusionRule> = supported.iter().copied().filter(|_| r.below(4) != 0).collect();
        let mut params32 = HashMap::new();
        let mut params64 = HashMap::new();
        for pi in &g.params {
            let v: Vec<f32> = (0..pi.numel()).map(|_| (r.normal() * 0.5) as f32).collect();
            params64.insert(pi.name.clone(), Tensor::float(pi.shape.clone(), v.iter().map(|&x| x as f64).collect()));
            params32.insert(pi.name.clone(), v);
        }
        let tshape = g.nodes.iter().find_map(|n| match &n.op {
            Op::Input { name, ty } if name == "target_ids" && ty.dtype == DType::I32 => Some(ty.shape.clone()),
            _ => None,
        });
        let Some(tshape) = tshape else { panic!("seed {seed}: no target_ids input") };
        let vocab = g.params.iter().find(|p| p.name == "head").map_or(1, |p| p.shape[0]);
        let ids: Vec<i32> = (0..tshape.iter().product::<usize>()).map(|_| r.below(vocab as u64) as i32).collect();
        let mut inputs64 = HashMap::new();
        inputs64.insert("target_ids".to_string(), Tensor::int(tshape.clone(), ids.clone()));
        let want = cpu::execute::<f64>(&g, &params64, &inputs64, None).unwrap_or_else(|e| panic!("seed {seed}: cpu: {e}"));

        let planned = cpu::plan_exec::execute::<f64>(&g, &params64, &inputs64, None, &rules).unwrap_or_else(|e| panic!("seed {seed}: plan executor: {e}"));
        let mut worst_cpu = 0.0f64;
        for (name, _) in &g.outputs {
            let w = want.get(name).unwrap().as_float().unwrap();
            let e = cpu::rel_err(planned.get(name).unwrap().as_float().unwrap(), w);
            worst_cpu = if e <= worst_cpu { worst_cpu } else { e };
        }

        let got = run_sim(&g, &rules, Precision::F32, &params32, &ids);
        let mut worst = (0.0f64, String::new());
        for (name, _) in &g.outputs {
            let w = want.get(name).unwrap().as_float().unwrap().to_vec();
            let a: Vec<f64> = got[name].iter().map(|&x| x as f64).collect();
            let e = cpu::rel_err(&a, &w);
            if !(e <= worst.0) {
                worst = (e, name.clone());
            }
        }
        let bf16 = run_sim(&g, &rules, Precision::Bf16, &params32, &ids);
        let finite = bf16.values().all(|v| v.iter().all(|x| x.is_finite()));
        let off: Vec<&str> = supported.iter().filter(|x| !rules.contains(x)).map(|x| x.name()).collect();
        println!("seed {seed:2}: {what}; rules off {off:?}: f32 worst {:.2e} ({}), bf16 finite {finite}, plan executor f64 {worst_cpu:.1e}", worst.0, worst.1);
        if !(worst.0 <= 1e-4) || !finite || !(worst_cpu <= 1e-9) {
            fails.push(format!("seed {seed}: f32 {:.3e} on {}, bf16 finite {finite}, plan executor {worst_cpu:.3e}\n{src}", worst.0, worst.1));
        }
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}
