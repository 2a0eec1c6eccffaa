//! Pass-level file tests: every `tests/ir/*.ir` file names a test, holds an
//! IR body in the text form of `pgc_ir::text`, and after a `----` line the
//! expected output. `PGC_BLESS=1 cargo test --release --test ir cases::`
//! rewrites the expected outputs (read the diff before committing it).
//!
//! ```text
//! ; comments start with `;`
//! test plan rules=elementwise,rowwise precision=f32
//! graph eval {
//!   ...
//! }
//! ----
//! plan eval f32: ...
//! ```
//!
//! Header lines (before the body): `;` comments, one `test KIND key=value...`
//! line, and for `test run` any number of `set NAME = [v, ...]` (a parameter's
//! or an input's values, row-major) or `set NAME = random(LO..HI)` (i32 ids
//! drawn from the seed). Kinds:
//!
//! - `test verify`: parse and verify; prints `ok`, the parse error, or every
//!   verifier error (`LINE:COL: message` where the node has a location).
//! - `test autodiff [loss=NAME]`: the graph with its backward pass, or the error.
//! - `test dce`: the graph after dead-code elimination.
//! - `test plan [rules=all|none|a,b,..] [no-fuse=a,b] [precision=f32|bf16]
//!   [outputs=a,b] [autodiff=LOSS]`: the kernel plan in its text form
//!   (`pgc_ir::plan::text`), or the error.
//! - `test run backends=interp,cpu,sim [seed=N] [precision=f32|bf16]
//!   [outputs=a,b] [autodiff=LOSS] [tol=X]`: runs the graph on the reference
//!   interpreter (f64), the CPU plan executor (f64, tolerance 1e-12) and the
//!   generated PTX on the simulator (`precision`, tolerance `tol`, by default
//!   1e-5 for f32 and 3e-2 for bf16); prints the interpreter's outputs (six
//!   significant digits) and, per other backend, whether it agrees
//!   (`max|got - want| / max|want|` per output). Float parameters and inputs
//!   not `set` are drawn uniform in [-1, 1) from the seed.
//!
//! Whatever the kind, a body that parses must print back to text that parses
//! to the same graph.

use pgc_backends::cpu::{self, Tensor};
use pgc_ir::plan::{self, FusionRule, PlanOptions, Precision};
use pgc_ir::{DType, Graph, Op};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bless() -> bool {
    std::env::var_os("PGC_BLESS").is_some_and(|v| v != "0")
}

/// One test file, split into its parts.
struct Case {
    kind: String,
    opts: HashMap<String, String>,
    /// `set NAME = ...` lines, in order.
    sets: Vec<(String, String)>,
    /// The file up to the `----` line with the header lines blanked, so the
    /// parser's line numbers are the file's.
    body: String,
    /// Everything up to and including the `----` line, kept when blessing.
    head: String,
    expected: Option<String>,
}

fn split_case(text: &str) -> Result<Case, String> {
    let mut kind = None;
    let mut opts = HashMap::new();
    let mut sets = Vec::new();
    let mut body = String::new();
    let mut head = String::new();
    let mut in_header = true;
    let mut expected = None;
    let mut rest = text;
    while !rest.is_empty() {
        let (line, tail) = match rest.find('\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        rest = tail;
        head.push_str(line);
        head.push('\n');
        let t = line.trim();
        if t == "----" {
            expected = Some(tail.to_string());
            break;
        }
        if in_header && (t.is_empty() || t.starts_with(';') || t.starts_with("test ") || t == "test" || t.starts_with("set ")) {
            if let Some(r) = t.strip_prefix("test") {
                if kind.is_some() {
                    return Err("two `test` lines".into());
                }
                let mut w = r.split_whitespace();
                kind = Some(w.next().ok_or("`test` needs a kind")?.to_string());
                for kv in w {
                    let (k, v) = kv.split_once('=').ok_or_else(|| format!("expected key=value, got `{kv}`"))?;
                    opts.insert(k.to_string(), v.to_string());
                }
            } else if let Some(r) = t.strip_prefix("set ") {
                let (name, v) = r.split_once('=').ok_or_else(|| format!("expected `set NAME = VALUES`, got `{t}`"))?;
                sets.push((name.trim().to_string(), v.trim().to_string()));
            }
            body.push('\n');
        } else {
            in_header = false;
            body.push_str(line);
            body.push('\n');
        }
    }
    let kind = kind.ok_or("no `test KIND` line")?;
    if expected.is_none() {
        head.push_str("----\n");
    }
    Ok(Case { kind, opts, sets, body, head, expected })
}

/// The graph, or the text a failed parse or verification prints.
fn load(body: &str) -> Result<Graph, String> {
    let g = pgc_ir::text::parse(body).map_err(|e| format!("parse error: {e}\n"))?;
    pgc_ir::verify(&g).map_err(|es| es.iter().map(|e| format!("verify error: {e}\n")).collect::<String>())?;
    Ok(g)
}

fn errors(es: &[pgc_ir::GraphError]) -> String {
    es.iter().map(|e| format!("error: {e}\n")).collect()
}

/// Run one case; returns its output, or a failure that no expected text can excuse.
fn run_case(c: &Case) -> Result<String, String> {
    let allowed: &[&str] = match c.kind.as_str() {
        "verify" | "dce" => &[],
        "autodiff" => &["loss"],
        "plan" => &["rules", "no-fuse", "precision", "outputs", "autodiff"],
        "run" => &["backends", "seed", "precision", "outputs", "autodiff", "tol"],
        k => return Err(format!("unknown test kind `{k}` (verify, autodiff, dce, plan, run)")),
    };
    if let Some(k) = c.opts.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("`test {}` takes no option `{k}` (options: {})", c.kind, allowed.join(", ")));
    }
    if !c.sets.is_empty() && c.kind != "run" {
        return Err("`set` lines are for `test run` only".into());
    }
    // Every graph that parses prints back to the same graph.
    if let Ok(g) = pgc_ir::text::parse(&c.body) {
        round_trip(&g)?;
    }
    if c.kind == "verify" {
        let g = match pgc_ir::text::parse(&c.body) {
            Ok(g) => g,
            Err(e) => return Ok(format!("parse error: {e}\n")),
        };
        return Ok(match pgc_ir::verify(&g) {
            Ok(()) => "ok\n".into(),
            Err(es) => errors(&es),
        });
    }
    let g = match load(&c.body) {
        Ok(g) => g,
        Err(text) => return Ok(text),
    };
    let verified = |g: &Graph, what: &str| pgc_ir::verify(g).map_err(|es| format!("{what} does not verify:\n{}", errors(&es)));
    match c.kind.as_str() {
        "autodiff" => {
            let loss = c.opts.get("loss").map(String::as_str).unwrap_or("loss");
            Ok(match pgc_ir::passes::autodiff::backward(&g, loss) {
                Ok(b) => {
                    verified(&b, "the backward graph")?;
                    round_trip(&b)?;
                    pgc_ir::text::print(&b)
                }
                Err(e) => format!("error: {e}\n"),
            })
        }
        "dce" => {
            let d = pgc_ir::passes::dce::dce(&g);
            verified(&d, "the graph after dce")?;
            round_trip(&d)?;
            Ok(pgc_ir::text::print(&d))
        }
        "plan" => {
            let g = match differentiate(&g, c)? {
                Ok(g) => g,
                Err(text) => return Ok(text),
            };
            let mut opts = PlanOptions::all(&g, precision(c)?);
            opts.rules = rules(c)?;
            if let Some(o) = c.opts.get("outputs") {
                opts.outputs = o.split(',').map(str::to_string).collect();
            }
            Ok(match plan::build(&g, &opts) {
                Ok(p) => {
                    check_plan(&g, &p)?;
                    plan::text::print(&g, &p)
                }
                Err(e) => format!("error: {e}\n"),
            })
        }
        "run" => {
            let g = match differentiate(&g, c)? {
                Ok(g) => g,
                Err(text) => return Ok(text),
            };
            run_backends(&g, c)
        }
        _ => unreachable!("kinds checked above"),
    }
}

/// The text form of `g` parses back to `g`.
fn round_trip(g: &Graph) -> Result<(), String> {
    let printed = pgc_ir::text::print(g);
    match pgc_ir::text::parse(&printed) {
        Ok(back) if back == *g => Ok(()),
        Ok(_) => Err(format!("the printed graph parses to a different graph:\n{printed}")),
        Err(e) => Err(format!("the printed graph does not parse ({e}):\n{printed}")),
    }
}

/// `autodiff=LOSS`: the graph with its backward pass (Err(text): the error to print).
fn differentiate(g: &Graph, c: &Case) -> Result<Result<Graph, String>, String> {
    Ok(match c.opts.get("autodiff") {
        None => Ok(g.clone()),
        Some(loss) => pgc_ir::passes::autodiff::backward(g, loss).map_err(|e| format!("error: {e}\n")),
    })
}

fn precision(c: &Case) -> Result<Precision, String> {
    match c.opts.get("precision").map(String::as_str) {
        None | Some("f32") => Ok(Precision::F32),
        Some("bf16") => Ok(Precision::Bf16),
        Some(p) => Err(format!("precision must be f32 or bf16, got `{p}`")),
    }
}

fn rule_list(s: &str) -> Result<Vec<FusionRule>, String> {
    s.split(',').map(|r| FusionRule::parse(r).ok_or_else(|| format!("unknown fusion rule `{r}`"))).collect()
}

fn rules(c: &Case) -> Result<BTreeSet<FusionRule>, String> {
    let mut set: BTreeSet<FusionRule> = match c.opts.get("rules").map(String::as_str) {
        None | Some("all") => FusionRule::ALL.into_iter().collect(),
        Some("none") => BTreeSet::new(),
        Some(list) => rule_list(list)?.into_iter().collect(),
    };
    if let Some(off) = c.opts.get("no-fuse") {
        for r in rule_list(off)? {
            set.remove(&r);
        }
    }
    Ok(set)
}

/// Invariants of any plan: every live op is in exactly one kernel, every
/// kernel input is stored or a source, every stored value has a slot.
fn check_plan(g: &Graph, p: &plan::Plan) -> Result<(), String> {
    let mut owner = vec![None; g.nodes.len()];
    for (k, kr) in p.kernels.iter().enumerate() {
        for v in &kr.ops {
            if let Some(other) = owner[v.index()].replace(k) {
                return Err(format!("{v} is computed by kernels {other} and {k}"));
            }
        }
        for v in kr.inputs.iter().chain(&kr.outputs) {
            if matches!(p.values[v.index()], plan::Place::Fused | plan::Place::Dead) {
                return Err(format!("kernel {} reads or writes {v}, which is not stored", kr.name));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// test run

/// SplitMix64: the seeded values of `test run`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1), on a grid of 2^-20 (exact in f32 and bf16-free of rounding surprises).
    fn uniform(&mut self) -> f64 {
        (self.next() >> 43) as f64 / (1u64 << 20) as f64 - 1.0
    }
}

enum Values {
    F(Vec<f64>),
    I(Vec<i32>),
}

/// The values of every parameter and input: `set` lines, else seeded.
fn values(g: &Graph, c: &Case) -> Result<HashMap<String, Values>, String> {
    let seed: u64 = c.opts.get("seed").map(|s| s.parse().map_err(|_| format!("bad seed `{s}`"))).transpose()?.unwrap_or(1);
    let mut rng = Rng(seed);
    let sets: HashMap<&str, &str> = c.sets.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut wanted: Vec<(String, DType, usize)> = g.params.iter().map(|p| (p.name.clone(), DType::F32, p.numel())).collect();
    for n in &g.nodes {
        if let Op::Input { name, ty } = &n.op {
            if !wanted.iter().any(|(w, ..)| w == name) {
                wanted.push((name.clone(), ty.dtype, ty.numel()));
            }
        }
    }
    if let Some(k) = sets.keys().find(|k| !wanted.iter().any(|(w, ..)| w == *k)) {
        return Err(format!("`set {k}`: no parameter or input of that name"));
    }
    let mut out = HashMap::new();
    for (name, dtype, n) in wanted {
        let v = match (sets.get(name.as_str()), dtype) {
            (None, DType::F32 | DType::Bf16) => Values::F((0..n).map(|_| rng.uniform()).collect()),
            (None, DType::I32) => return Err(format!("i32 input `{name}` needs a `set {name} = ...` line")),
            (Some(s), _) => {
                let v = if let Some(range) = s.strip_prefix("random(").and_then(|r| r.strip_suffix(')')) {
                    let (lo, hi) = range.split_once("..").ok_or_else(|| format!("`set {name}`: expected random(LO..HI)"))?;
                    let (lo, hi): (i64, i64) = (lo.trim().parse().map_err(|_| "bad LO")?, hi.trim().parse().map_err(|_| "bad HI")?);
                    if hi <= lo {
                        return Err(format!("`set {name}`: empty range"));
                    }
                    (0..n).map(|_| (lo + (rng.next() % (hi - lo) as u64) as i64) as f64).collect()
                } else {
                    let v: Vec<f64> = serde_json::from_str(s).map_err(|e| format!("`set {name}`: {e}"))?;
                    v
                };
                if v.len() != n {
                    return Err(format!("`set {name}`: {} values for {n} elements", v.len()));
                }
                match dtype {
                    DType::F32 | DType::Bf16 => Values::F(v),
                    DType::I32 => Values::I(v.iter().map(|&x| x as i32).collect()),
                }
            }
        };
        out.insert(name, v);
    }
    Ok(out)
}

/// Six significant digits, shortest form.
fn fmt6(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let r: f64 = format!("{v:.5e}").parse().expect("a formatted float parses");
    format!("{}", if r == 0.0 { 0.0 } else { r })
}

fn run_backends(g: &Graph, c: &Case) -> Result<String, String> {
    let backends: Vec<&str> = c.opts.get("backends").map(String::as_str).unwrap_or("interp").split(',').collect();
    if let Some(b) = backends.iter().find(|b| !["interp", "cpu", "sim"].contains(b)) {
        return Err(format!("unknown backend `{b}` (interp, cpu, sim)"));
    }
    let names: Vec<String> = match c.opts.get("outputs") {
        Some(o) => o.split(',').map(str::to_string).collect(),
        None => g.outputs.iter().map(|(n, _)| n.clone()).collect(),
    };
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let vals = values(g, c)?;
    let mut params = HashMap::new();
    for p in &g.params {
        let Some(Values::F(v)) = vals.get(&p.name) else { unreachable!("parameters are float") };
        params.insert(p.name.clone(), Tensor::<f64>::from_f64(p.shape.clone(), v));
    }
    let mut inputs = HashMap::new();
    for n in &g.nodes {
        if let Op::Input { name, ty } = &n.op {
            let t = match &vals[name] {
                Values::F(v) => Tensor::<f64>::from_f64(ty.shape.clone(), v),
                Values::I(v) => Tensor::<f64>::int(ty.shape.clone(), v.clone()),
            };
            inputs.insert(name.clone(), t);
        }
    }
    // The reference: every other backend is compared with it.
    let want = cpu::execute::<f64>(g, &params, &inputs, Some(&refs)).map_err(|e| format!("interp: {e}"))?;
    let want: Vec<(String, Vec<usize>, Vec<f64>)> = names
        .iter()
        .map(|n| {
            let t = want.get(n).expect("interp returns what it was asked for");
            (n.clone(), t.shape.clone(), t.to_f64_vec())
        })
        .collect();
    let mut out = String::from("interp:\n");
    for (name, shape, v) in &want {
        let ty = pgc_ir::TensorType::f32(shape.clone());
        out.push_str(&format!("  {name} : {ty} = [{}]\n", v.iter().map(|&x| fmt6(x)).collect::<Vec<_>>().join(", ")));
    }
    let sim_tol = match c.opts.get("tol") {
        Some(t) => t.parse::<f64>().map_err(|_| format!("bad tol `{t}`"))?,
        None if precision(c)? == Precision::Bf16 => 3e-2,
        None => 1e-5,
    };
    for b in backends.iter().filter(|b| **b != "interp") {
        let (got, tol) = match *b {
            "cpu" => {
                let rules = FusionRule::ALL.into_iter().collect();
                let r = cpu::plan_exec::execute::<f64>(g, &params, &inputs, Some(&refs), &rules)
                    .map(|run| names.iter().map(|n| run.get(n).expect("asked for").to_f64_vec()).collect::<Vec<_>>())
                    .map_err(|e| e.to_string());
                (r, 1e-12)
            }
            _ => (run_sim(g, c, &vals, &names), sim_tol),
        };
        let line = match got {
            Err(e) => format!("{b}: error: {e}\n"),
            Ok(got) => {
                let mut bad = Vec::new();
                for ((name, _, w), v) in want.iter().zip(&got) {
                    let e = if v.len() == w.len() { cpu::rel_err(v, w) } else { f64::INFINITY };
                    println!("{b} {name}: rel err {e:.3e} (tol {tol:.0e})");
                    if !(e <= tol) {
                        bad.push(format!("{name} rel err {e:.2e} > {tol:.0e}"));
                    }
                }
                if bad.is_empty() {
                    format!("{b}: agrees with interp\n")
                } else {
                    format!("{b}: differs from interp: {}\n", bad.join(", "))
                }
            }
        };
        out.push_str(&line);
    }
    Ok(out)
}

/// The generated PTX on the simulator: plan with the PTX backend's rules, compile, run.
fn run_sim(g: &Graph, c: &Case, vals: &HashMap<String, Values>, names: &[String]) -> Result<Vec<Vec<f64>>, String> {
    let mut opts = PlanOptions::all(g, precision(c)?);
    opts.rules = pgc_backends::ptx::compile::supported_rules();
    opts.outputs = names.to_vec();
    let p = plan::build(g, &opts).map_err(|e| e.to_string())?;
    let program = pgc_backends::ptx::compile::compile_program(g, &p).map_err(|e| e.to_string())?;
    let dev = pgc_runtime::sim::SimDevice::new();
    let mut ex = pgc_runtime::exec::Executor::new(&dev, &program, g).map_err(|e| e.to_string())?;
    let params: HashMap<String, Vec<f32>> = g
        .params
        .iter()
        .map(|p| match &vals[&p.name] {
            Values::F(v) => (p.name.clone(), v.iter().map(|&x| x as f32).collect()),
            Values::I(_) => unreachable!("parameters are float"),
        })
        .collect();
    ex.set_params(&params).map_err(|e| e.to_string())?;
    for name in ex.input_names() {
        match &vals[&name] {
            Values::I(v) => ex.set_input(&name, v).map_err(|e| e.to_string())?,
            Values::F(_) => return Err(format!("input `{name}` is float; the executor takes i32 inputs only (make it a parameter)")),
        }
    }
    ex.run().map_err(|e| e.to_string())?;
    names.iter().map(|n| ex.read_output(n).map(|v| v.iter().map(|&x| x as f64).collect()).map_err(|e| e.to_string())).collect()
}

// ---------------------------------------------------------------------------

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

#[test]
fn ir_file_tests() {
    let dir = root().join("tests/ir");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ir"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "need at least 30 pass-level file tests, have {}", files.len());
    let filter = std::env::var("PGC_IR_FILTER").ok();
    let mut failures = Vec::new();
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for f in &files {
        let name = rel(f);
        if filter.as_ref().is_some_and(|flt| !name.contains(flt.as_str())) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let case = match split_case(&text) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        *kinds.entry(case.kind.clone()).or_default() += 1;
        let actual = match run_case(&case) {
            Ok(a) => a,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        if bless() {
            if case.expected.as_deref() != Some(actual.as_str()) {
                std::fs::write(f, format!("{}{actual}", case.head)).unwrap();
                println!("blessed {name}");
            }
            continue;
        }
        match &case.expected {
            Some(exp) if *exp == actual => println!("ok {name}"),
            Some(exp) => failures.push(format!("{name}: differs from the expected output\n--- expected\n{exp}--- actual\n{actual}")),
            None => failures.push(format!("{name}: no `----` line and expected output (run with PGC_BLESS=1)\n--- actual\n{actual}")),
        }
    }
    println!("kinds: {kinds:?}");
    assert!(failures.is_empty(), "{} of {} file test(s) failed:\n\n{}", failures.len(), files.len(), failures.join("\n\n"));
}

/// The runner itself: a header is split from the body with line numbers
/// kept, and a wrong expected output is a failure.
#[test]
fn runner_splits_and_compares() {
    let text = "; c\ntest verify\ngraph eval {\n  %0 = scalar value=1.0 : f32[]\n  %1 = neg %0 : f32[2]\n}\n----\nok\n";
    let c = split_case(text).unwrap();
    assert_eq!(c.kind, "verify");
    assert_eq!(c.expected.as_deref(), Some("ok\n"));
    assert_eq!(c.body.lines().count(), 6);
    let out = run_case(&c).unwrap();
    assert_eq!(out, "error: %1 = neg: recorded type f32[2] but operands give f32[]\n");
    assert_ne!(Some(out.as_str()), c.expected.as_deref());
    let bad = "test verify\ngraph eval {\n  %0 = scalr value=1.0 : f32[]\n}\n----\n";
    assert_eq!(run_case(&split_case(bad).unwrap()).unwrap(), "parse error: line 3: unknown op `scalr`\n");
    assert!(run_case(&split_case("test nonesuch\ngraph eval {\n}\n").unwrap()).is_err());
    assert!(run_case(&split_case("test dce loss=x\ngraph eval {\n}\n").unwrap()).is_err());
    assert_eq!(fmt6(1.0 / 3.0), "0.333333");
    assert_eq!(fmt6(-1234567.0), "-1234570");
    assert_eq!(fmt6(-0.0), "0");
}

/// `pgc compile --emit plan` prints both plans in the text form, and
/// `--emit plan-json` the JSON of plan.json.
#[test]
fn compile_emits_the_plan_as_text_and_json() {
    let run = |emit: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgc"))
            .current_dir(root())
            .args(["compile", "tests/dsl/ok/mlp.pgdsl", "--no-ptxas", "--emit", emit])
            .output()
            .expect("running pgc");
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let text = run("plan");
    assert!(text.starts_with("// train\nplan train bf16: "), "{text}");
    assert!(text.contains("\n// eval\nplan eval bf16: "), "{text}");
    assert!(text.contains("\nkernel k000_"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&run("plan-json")).expect("plan-json is JSON");
    let kernels = json["train"]["kernels"].as_array().expect("train kernels");
    assert_eq!(text.split("// eval").next().unwrap().matches("\nkernel ").count(), kernels.len());
}
