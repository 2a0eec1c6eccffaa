//! `pgc compile`: model source -> IR (JSON, text) -> backward graph -> kernel
//! plan -> PTX program; report.
//!
//! With `-o DIR` (or `--emit plan,ptx,report`), the train and eval graphs are
//! planned for the PTX backend (the fusion rules it supports, minus
//! `--no-fuse`) and compiled: `DIR/model.ptx` holds the train program's
//! module (forward + backward), `DIR/model.eval.ptx` the eval program's, and
//! `plan.json` the plans with their launch geometry (`plan.txt` in text form). ptxas (found through
//! `PGC_PTXAS`, `PATH` or `.tools/`) assembles the train module once, for
//! sm_90a, and report.json gets, per kernel, its FLOPs, minimum bytes, floor
//! and ptxas figures (see [`kernel_rows`]).

use super::{CliResult, Failure};
use anyhow::Context;
use pgc_backends::ptx::program::Program;
use pgc_backends::ptx::ptxas::{self, PtxasReport};
use pgc::pipeline::ptx as pipeline_ptx;
use pgc::pipeline::source;
use pgc::pipeline::roofline::{Floor, PEAK_BF16_FLOPS, PEAK_BYTES_PER_S, PEAK_F32_FLOPS};
use pgc_ir::plan::{FusionRule, Plan, Precision};
#[cfg(test)]
use pgc_ir::plan::KernelKind;
use pgc_ir::report::Report;
use pgc_ir::{Graph, Mode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;


/// Passes whose result `--dump-after` can print, in pipeline order.
pub const PASSES: &[&str] = &["lower", "autodiff"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// The IR in its text form (train mode).
    Ir,
    /// The IR as JSON (as written to model.ir.json).
    Json,
    /// report.json.
    Report,
    /// The kernel plans in text form (train: forward+backward; eval: forward), as in plan.txt.
    Plan,
    /// plan.json: the kernel plans with the PTX backend's launch geometry.
    PlanJson,
    /// model.ptx: the train program's PTX module.
    Ptx,
    /// The train kernel plan as a Graphviz graph: kernels, the buffers they
    /// read and write, bytes on the edges (`dot -Tsvg` draws it).
    Dot,
}

#[derive(clap::Args)]
pub struct CompileArgs {
    /// The model source (.pgdsl).
    pub model: PathBuf,
    /// Override a model constant, e.g. `--set layers=9`. Repeatable.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
    /// Output directory: model.ir.json, report.json, plan.json, plan.txt, model.ptx (train
    /// program) and model.eval.ptx (eval program), replaced together. Fails (exit 2) when the PTX cannot be made.
    #[arg(short = 'o', long = "out")]
    pub out: Option<PathBuf>,
    /// Print to stdout (comma-separated): ir (text IR), json (IR JSON), report (report.json),
    /// plan (the kernel plans as text), plan-json (plan.json), ptx (model.ptx, the train module).
    /// The human summary then goes to stderr.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub emit: Vec<Emit>,
    /// Print the IR (text form) after the named pass; with -o also write DIR/after-PASS.ir.
    #[arg(long = "dump-after", value_name = "PASS", value_parser = clap::builder::PossibleValuesParser::new(PASSES))]
    pub dump_after: Vec<String>,
    /// Switch a fusion rule off (repeatable), to compare kernel layouts.
    #[arg(long = "no-fuse", value_name = "RULE", value_parser = clap::builder::PossibleValuesParser::new(FusionRule::ALL.map(FusionRule::name)))]
    pub no_fuse: Vec<String>,
    /// Kernel precision: bf16 tensor cores with fp32 accumulation, or all fp32.
    #[arg(long, value_enum, default_value = "bf16")]
    pub precision: PlanPrecision,
    /// Do not run ptxas (no registers / spills / shared memory in the report).
    #[arg(long)]
    pub no_ptxas: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanPrecision {
    Bf16,
    F32,
}

pub fn run(args: CompileArgs) -> CliResult {
    let t_start = Instant::now();
    let sets = super::parse_sets(&args.sets)?;
    let model = source::read_model(&args.model)?;
    let path = model.path.clone();
    let graph = model.lower(&sets, Mode::Train)?;

    let report = Report::from_graph(&graph);
    // A model with a scalar `loss` output trains: plan its backward pass too.
    // Other programs (library snippets, tests) are planned forward only.
    let train = match graph.output("loss") {
        Some(_) => source::with_backward(&graph, "loss")?,
        None => {
            eprintln!("warning: {path}: the model has no `output loss`: no backward pass, both plans are forward only (and `pgc run` needs a loss)");
            graph.clone()
        }
    };
    let eval = model.lower(&sets, Mode::Eval)?;
    let precision = match args.precision {
        PlanPrecision::Bf16 => Precision::Bf16,
        PlanPrecision::F32 => Precision::F32,
    };
    let disabled: Vec<FusionRule> = args.no_fuse.iter().filter_map(|n| FusionRule::parse(n)).collect();
    let plans = [("train", plan_for(&train, precision, &disabled, true)?), ("eval", plan_for(&eval, precision, &disabled, false)?)];

    // The PTX programs (and ptxas), when something that needs them is asked for.
    let want_ptx = args.out.is_some() || args.emit.iter().any(|e| matches!(e, Emit::Ptx | Emit::PlanJson | Emit::Report));
    let mut notes = String::new();
    let mut warnings = String::new();
    let mut ptx_json = json!(null);
    let mut programs: [Option<Program>; 2] = [None, None];
    let mut ptxas_reports: [Option<PtxasReport>; 2] = [None, None];
    if want_ptx {
        let t0 = Instant::now();
        for (i, g) in [&train, &eval].into_iter().enumerate() {
            match pipeline_ptx::compile(g, &plans[i].1) {
                Ok(p) => programs[i] = Some(p),
                Err(e) => warnings.push_str(&format!("warning: no PTX for the {} program: {e}\n", plans[i].0)),
            }
        }
        // -o writes model.ptx and model.eval.ptx, --emit ptx prints one: without them the command failed.
        if (args.out.is_some() || args.emit.contains(&Emit::Ptx)) && programs.iter().any(Option::is_none) {
            return Err(Failure::BadInput(format!(
                "{}error: {path}: the PTX asked for (-o DIR or --emit ptx) cannot be made; nothing written",
                warnings.replace("warning: no PTX", "error: no PTX")
            )));
        }
        let ptx_s = t0.elapsed().as_secs_f64();
        ptx_json = json!({ "precision": format!("{precision:?}").to_lowercase(), "compile_seconds": ptx_s });
        let unsupported: Vec<&str> = FusionRule::ALL
            .into_iter()
            .filter(|r| !disabled.contains(r) && !pipeline_ptx::supported_rules().contains(r))
            .map(FusionRule::name)
            .collect();
        if !unsupported.is_empty() {
            notes.push_str(&format!("note: fusion rules the PTX backend does not implement yet (off): {}\n", unsupported.join(", ")));
            ptx_json["rules_off_unsupported"] = json!(unsupported);
        }
        if programs[0].is_none() {
            ptx_json["error"] = json!(warnings.trim_end());
        }
        let files = ["model.ptx", "model.eval.ptx"];
        for (i, p) in programs.iter().enumerate() {
            if let Some(p) = p {
                // Every launch of a step: the program's, and the executor's
                // zero-fill launches (one per launch that has zero-fills).
                let zero_launches = p.launches.iter().filter(|l| !l.zero_first.is_empty()).count();
                let regions: usize = p.launches.iter().map(|l| l.zero_first.len()).sum();
                ptx_json[plans[i].0] = json!({
                    "file": files[i],
                    "bytes": p.ptx().len(),
                    "entries": p.entries.len(),
                    "launches": p.launches.len() + zero_launches,
                    "kernel_launches": p.launches.len(),
                    "zero_fill_launches": zero_launches,
                    "zero_fill_regions": regions,
                });
                notes.push_str(&format!(
                    "launches {}: {} per step ({} kernel launches, {zero_launches} zero-fill launches for {regions} regions)\n",
                    plans[i].0,
                    p.launches.len() + zero_launches,
                    p.launches.len()
                ));
            }
        }
        if programs.iter().any(Option::is_some) {
            if args.no_ptxas {
                ptx_json["ptxas"] = json!({ "skipped": "--no-ptxas" });
            } else if let Some(exe) = ptxas::find_ptxas() {
                ptx_json["ptxas"] = json!({ "path": exe.display().to_string() });
                let results = run_ptxas(&exe, [programs[0].as_ref(), programs[1].as_ref()]);
                for (i, r) in results.into_iter().enumerate() {
                    let which = plans[i].0;
                    match r {
                        None => {}
                        Some(Ok(run)) => {
                            let r = run.report;
                            let max_reg = r.kernels.iter().map(|k| k.registers).max().unwrap_or(0);
                            let spills: u64 = r.kernels.iter().map(|k| (k.spill_stores + k.spill_loads) as u64).sum();
                            notes.push_str(&format!(
                                "ptxas (sm_90a, {which} module): {} kernels ({} assembled, {} reused: identical or cached), max {max_reg} registers, {spills} spill bytes, {:.2} s\n",
                                r.kernels.len(),
                                run.assembled,
                                r.kernels.len().saturating_sub(run.assembled),
                                run.seconds
                            ));
                            ptx_json[which]["ptxas"] = json!({
                                "seconds": run.seconds, "kernels": r.kernels.len(), "assembled": run.assembled,
                                "max_registers": max_reg, "spill_bytes": spills,
                            });
                            ptxas_reports[i] = Some(r);
                        }
                        Some(Err(e)) => {
                            warnings.push_str(&format!("warning: ptxas rejected {}: {e}\n", files[i]));
                            ptx_json[which]["ptxas"] = json!({ "error": e.to_string() });
                        }
                    }
                }
            } else {
                warnings.push_str("warning: ptxas not found (set PGC_PTXAS, put it on PATH, or run scripts/install-ptxas): no register / spill figures\n");
                ptx_json["ptxas"] = json!({ "error": "not found" });
            }
        }
    }
    let mut report_value = report.to_json();
    if want_ptx {
        report_value["ptx"] = ptx_json;
        let rows = [
            kernel_rows(&plans[0].1, programs[0].as_ref(), ptxas_reports[0].as_ref()),
            kernel_rows(&plans[1].1, programs[1].as_ref(), ptxas_reports[1].as_ref()),
        ];
        report_value["totals"] = json!({ "train": plan_totals(&plans[0].1, &rows[0]), "eval": plan_totals(&plans[1].1, &rows[1]) });
        let [train_rows, eval_rows] = rows;
        report_value["kernels"] = json!({
            "peaks": { "bf16_flops": PEAK_BF16_FLOPS, "f32_flops": PEAK_F32_FLOPS, "bytes_per_s": PEAK_BYTES_PER_S, "card": "H100 SXM5 datasheet" },
            "train": train_rows,
            "eval": eval_rows,
        });
    }

    // Serialized directly (not through a serde_json::Value, which holds no u128 counts).
    #[derive(serde::Serialize)]
    struct Plans<'a> {
        train: &'a Plan,
        eval: &'a Plan,
    }
    let plan_json = serde_json::to_string_pretty(&Plans { train: &plans[0].1, eval: &plans[1].1 })
        .context("serializing the plan")?
        + "\n";
    let plan_text = format!(
        "// train\n{}// eval\n{}",
        pgc_ir::plan::text::print(&train, &plans[0].1),
        pgc_ir::plan::text::print(&eval, &plans[1].1)
    );
    let report_json = serde_json::to_string_pretty(&report_value).context("serializing the report")? + "\n";
    let ir_json = serde_json::to_string(&graph).context("serializing the IR")? + "\n";

    let mut stdout = String::new();
    let mut files: Vec<(String, String)> = vec![
        ("model.ir.json".into(), ir_json.clone()),
        ("report.json".into(), report_json.clone()),
        ("plan.json".into(), plan_json.clone()),
        ("plan.txt".into(), plan_text.clone()),
    ];
    if let Some(p) = &programs[0] {
        files.push(("model.ptx".into(), p.ptx()));
    }
    if let Some(p) = &programs[1] {
        files.push(("model.eval.ptx".into(), p.ptx()));
    }
    for pass in &args.dump_after {
        let text = dump(if pass == "autodiff" { &train } else { &graph });
        stdout.push_str(&format!("// IR after pass `{pass}`\n{text}"));
        files.push((format!("after-{pass}.ir"), text));
    }
    for e in &args.emit {
        match e {
            Emit::Ir => stdout.push_str(&pgc_ir::text::print(&graph)),
            Emit::Json => stdout.push_str(&ir_json),
            Emit::Report => stdout.push_str(&report_json),
            Emit::Plan => stdout.push_str(&plan_text),
            Emit::PlanJson => stdout.push_str(&plan_json),
            Emit::Dot => stdout.push_str(&pgc_ir::plan::dot::render(&train, &plans[0].1)),
            Emit::Ptx => match &programs[0] {
                Some(p) => stdout.push_str(&p.ptx()),
                None => return Err(Failure::Other(anyhow::anyhow!("--emit ptx: {}", warnings.trim_end()))),
            },
        }
    }
    if let Some(dir) = &args.out {
        write_all_atomic(dir, &files)?;
    }
    let mut summary = format!("{}\n{}", model.path, report.summary());
    for (name, plan) in &plans {
        summary.push_str(&format!("plan {name}: {}", plan.summary()));
    }
    summary.push_str(&notes);
    if want_ptx {
        summary.push_str(&format!("compile: {:.2} s\n", t_start.elapsed().as_secs_f64()));
    }
    eprint!("{warnings}");
    if stdout.is_empty() {
        print!("{summary}");
    } else {
        eprint!("{summary}");
        print!("{stdout}");
    }
    Ok(())
}

/// The kernel plan of a graph for the PTX backend (its supported fusion
/// rules minus `disabled`): train plans store the loss and every gradient,
/// eval plans the loss and the logits.
fn plan_for(g: &Graph, precision: Precision, disabled: &[FusionRule], train: bool) -> Result<Plan, Failure> {
    let mut outputs: Vec<String> = g.outputs.iter().map(|(n, _)| n.clone()).collect();
    if g.output("loss").is_some() {
        outputs.retain(|o| if train { o != "logits" } else { o == "loss" || o == "logits" });
    }
    Ok(pipeline_ptx::plan(g, precision, &outputs, disabled)?)
}

/// What ptxas said about one module: per-entry figures, how many entries
/// were assembled now (the rest came from the cache), and the seconds spent.
pub(crate) struct PtxasRun {
    pub(crate) report: PtxasReport,
    pub(crate) assembled: usize,
    pub(crate) seconds: f64,
}

/// A module's entries with their cache keys, and the module of the entries
/// to assemble (None: all known).
type ModulePlan = (Vec<(String, u128)>, Option<String>);

/// ptxas over each given program's module: entries whose figures are cached
/// (same ptxas, same module header, same entry code) are not assembled
/// again; the rest of each module is assembled in one ptxas run, the modules
/// in parallel. The eval module's entries that equal a train entry are
/// taken from the train run.
pub(crate) fn run_ptxas(exe: &Path, programs: [Option<&Program>; 2]) -> [Option<Result<PtxasRun, ptxas::PtxasError>>; 2] {
    let cache = ptxas_cache::Cache::open(exe);
    let t0 = Instant::now();
    // Per module: (entry name, key) for every entry, and the module to assemble (None: all cached).
    let mut plans: [Option<ModulePlan>; 2] = [None, None];
    let mut scheduled = std::collections::HashSet::new();
    for (i, p) in programs.iter().enumerate() {
        let Some(p) = p else { continue };
        let keys: Vec<(String, u128)> = p.entries.iter().map(|e| (e.name.clone(), cache.key(&p.header, &e.code))).collect();
        let todo: Vec<usize> = (0..keys.len()).filter(|&j| cache.get(keys[j].1).is_none() && scheduled.insert(keys[j].1)).collect();
        let sub = (!todo.is_empty()).then(|| p.module_of(todo));
        plans[i] = Some((keys, sub));
    }
    let runs: [Option<Result<(PtxasReport, f64), ptxas::PtxasError>>; 2] = std::thread::scope(|sc| {
        let handles = plans.each_ref().map(|p| {
            p.as_ref().and_then(|(_, sub)| sub.as_ref()).map(|sub| {
                sc.spawn(move || {
                    let t = Instant::now();
                    ptxas::assemble_with(exe, sub).map(|r| (r, t.elapsed().as_secs_f64()))
                })
            })
        });
        handles.map(|h| h.map(|h| h.join().unwrap_or_else(|_| Err(ptxas::PtxasError::Rejected("the ptxas thread panicked".into())))))
    });
    // Record what was assembled, then answer every entry from the cache.
    let mut fresh: std::collections::HashMap<u128, pgc_backends::ptx::ptxas::KernelResources> = Default::default();
    let mut out: [Option<Result<PtxasRun, ptxas::PtxasError>>; 2] = [None, None];
    let mut errors: [Option<ptxas::PtxasError>; 2] = [None, None];
    let mut assembled = [0usize; 2];
    for (i, r) in runs.into_iter().enumerate() {
        match r {
            None => {}
            Some(Err(e)) => errors[i] = Some(e),
            Some(Ok((report, _))) => {
                let (keys, _) = plans[i].as_ref().expect("a run has a plan");
                assembled[i] = report.kernels.len();
                for k in &report.kernels {
                    if let Some((_, key)) = keys.iter().find(|(n, _)| *n == k.name) {
                        cache.put(*key, k);
                        fresh.insert(*key, k.clone());
                    }
                }
            }
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    for i in 0..2 {
        let Some((keys, _)) = &plans[i] else { continue };
        if let Some(e) = errors[i].take() {
            out[i] = Some(Err(e));
            continue;
        }
        let mut kernels = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (name, key) in keys {
            match fresh.get(key).cloned().or_else(|| cache.get(*key)) {
                Some(mut k) => {
                    k.name = name.clone();
                    kernels.push(k);
                }
                None => missing.push(name.clone()),
            }
        }
        out[i] = Some(if missing.is_empty() {
            Ok(PtxasRun { report: PtxasReport { ptxas: exe.to_path_buf(), kernels, log: String::new() }, assembled: assembled[i], seconds })
        } else {
            Err(ptxas::PtxasError::Rejected(format!("ptxas reported nothing for {}", missing.join(", "))))
        });
    }
    out
}

/// A cache of ptxas figures per entry, on disk (`PGC_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/pgc`, else `~/.cache/pgc`; `PGC_PTXAS_CACHE=0` turns it
/// off), keyed by the ptxas binary (path, size, modification time), the
/// module header and the entry's code (its text less its name, as the
/// program carries it).
mod ptxas_cache {
    use pgc_backends::ptx::ptxas::KernelResources;
    use std::hash::{Hash, Hasher};
    use std::path::{Path, PathBuf};

    pub struct Cache {
        dir: Option<PathBuf>,
        tool: String,
        mem: std::cell::RefCell<std::collections::HashMap<u128, KernelResources>>,
    }

    impl Cache {
        pub fn open(exe: &Path) -> Cache {
            let off = std::env::var_os("PGC_PTXAS_CACHE").is_some_and(|v| v == "0");
            let base = std::env::var_os("PGC_CACHE_DIR")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("pgc")))
                .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/pgc")));
            let dir = base.filter(|_| !off).map(|b| b.join("ptxas")).filter(|d| std::fs::create_dir_all(d).is_ok());
            let meta = std::fs::metadata(exe).ok();
            let tool = format!(
                "{}|{}|{:?}",
                exe.display(),
                meta.as_ref().map(|m| m.len()).unwrap_or(0),
                meta.and_then(|m| m.modified().ok())
            );
            Cache { dir, tool, mem: Default::default() }
        }

        /// 128 bits from two differently seeded 64-bit hashes.
        pub fn key(&self, header: &str, code: &str) -> u128 {
            let h = |seed: u64| {
                let mut s = std::collections::hash_map::DefaultHasher::new();
                seed.hash(&mut s);
                self.tool.hash(&mut s);
                header.hash(&mut s);
                code.hash(&mut s);
                s.finish()
            };
            ((h(0x9e37_79b9) as u128) << 64) | h(0x85eb_ca6b) as u128
        }

        pub fn get(&self, key: u128) -> Option<KernelResources> {
            if let Some(k) = self.mem.borrow().get(&key) {
                return Some(k.clone());
            }
            let path = self.dir.as_ref()?.join(format!("{key:032x}.json"));
            let k: KernelResources = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
            self.mem.borrow_mut().insert(key, k.clone());
            Some(k)
        }

        pub fn put(&self, key: u128, k: &KernelResources) {
            self.mem.borrow_mut().insert(key, k.clone());
            if let (Some(dir), Ok(text)) = (&self.dir, serde_json::to_string(k)) {
                // Write then rename: a concurrent reader never sees half a file.
                let tmp = dir.join(format!(".{key:032x}.{}.tmp", std::process::id()));
                if std::fs::write(&tmp, text).is_ok() {
                    let _ = std::fs::rename(&tmp, dir.join(format!("{key:032x}.json")));
                }
            }
        }
    }

}

/// One report row per plan kernel: name, kind, FLOPs, minimum bytes and the
/// floor `max(flops / peak, min_bytes / bandwidth)` (peak: bf16 tensor cores
/// for the matrix-product kinds of a bf16 plan, else fp32), which bound sets
/// it; with a program, its launches' entries; with a ptxas report, per entry
/// registers, spill bytes (stores + loads), static shared memory, and the
/// kernel's dynamic shared memory, with the kernel's maxima.
pub fn kernel_rows(plan: &Plan, program: Option<&Program>, ptxas: Option<&PtxasReport>) -> Value {
    let rows: Vec<Value> = plan
        .kernels
        .iter()
        .enumerate()
        .map(|(k, kr)| {
            let floor = Floor::of(plan, kr);
            let mut row = json!({
                "name": kr.name,
                "kind": kr.kind, // as in plan.json
                "flops": pgc_ir::report::count_json(kr.flops),
                "min_bytes": kr.min_bytes,
                "floor_s": floor.seconds(),
                "bound": floor.bound(),
                "peak": if floor.tensor_cores { "bf16" } else { "f32" },
            });
            if let Some(p) = program {
                let mut entries: Vec<Value> = Vec::new();
                let (mut max_reg, mut spills, mut max_smem) = (0u32, 0u64, 0u64);
                let mut seen = std::collections::BTreeSet::new();
                for l in p.launches.iter().filter(|l| l.plan_kernel == k) {
                    if !seen.insert(l.entry.clone()) {
                        continue;
                    }
                    let mut e = json!({ "entry": l.entry, "grid": l.grid, "block": l.block, "dynamic_shared_bytes": l.shared_bytes });
                    if let Some(r) = ptxas.and_then(|r| r.kernel(&l.entry)) {
                        let sp = (r.spill_stores + r.spill_loads) as u64;
                        e["registers"] = json!(r.registers);
                        e["spill_bytes"] = json!(sp);
                        e["static_shared_bytes"] = json!(r.shared_bytes);
                        max_reg = max_reg.max(r.registers);
                        spills += sp;
                        max_smem = max_smem.max(r.shared_bytes as u64 + l.shared_bytes as u64);
                    }
                    entries.push(e);
                }
                row["launches"] = json!(p.launches.iter().filter(|l| l.plan_kernel == k).count());
                row["entries"] = json!(entries);
                // the instructions of the kernel's products: tensor-core path, or FFMA in f32 plans
                let products = matches!(kr.kind, pgc_ir::plan::KernelKind::Gemm | pgc_ir::plan::KernelKind::Attention | pgc_ir::plan::KernelKind::AttentionBackward | pgc_ir::plan::KernelKind::LmHead);
                let path = p.launches.iter().filter(|l| l.plan_kernel == k).filter_map(|l| p.entry(&l.entry).and_then(|e| e.product_path())).next();
                match (path, products) {
                    (Some(x), _) => row["path"] = json!(x),
                    (None, true) => row["path"] = json!("ffma"),
                    _ => {}
                }
                if ptxas.is_some() {
                    row["registers"] = json!(max_reg);
                    row["spill_bytes"] = json!(spills);
                    row["shared_bytes"] = json!(max_smem);
                }
            }
            row
        })
        .collect();
    Value::Array(rows)
}

/// A plan's totals: FLOPs, the fewest bytes its kernels move, the sum of the
/// kernels' floors (the step's floor when kernels run one after another), the
/// peak activation memory (the arena) and the kernel count.
fn plan_totals(plan: &Plan, rows: &Value) -> Value {
    let floor: f64 = rows.as_array().map(|r| r.iter().filter_map(|k| k["floor_s"].as_f64()).sum()).unwrap_or(0.0);
    json!({
        "kernels": plan.kernels.len(),
        "flops": pgc_ir::report::count_json(plan.flops),
        "min_bytes": plan.min_bytes,
        "floor_s": floor,
        "peak_activation_bytes": plan.arena_bytes,
    })
}

fn dump(g: &Graph) -> String {
    pgc_ir::text::print(g)
}

/// Replace the outputs in `dir` at once (see `pgc_runtime::outfile::replace_dir`):
/// a kill or a failure leaves the old set or the new one, never a mix. A
/// folder that also holds other files gets each output replaced on its own.
fn write_all_atomic(dir: &Path, files: &[(String, String)]) -> Result<(), Failure> {
    let files: Vec<(String, Vec<u8>)> = files.iter().map(|(n, c)| (n.clone(), c.clone().into_bytes())).collect();
    // Files an earlier compile may have written (model.eval.ptx, dumps): part of the set.
    let ours = |n: &str| {
        matches!(n, "model.ir.json" | "report.json" | "plan.json" | "plan.txt" | "model.ptx" | "model.eval.ptx")
            || (n.starts_with("after-") && n.ends_with(".ir"))
    };
    pgc_runtime::outfile::replace_dir(dir, &files, ours).map_err(|e| Failure::Other(anyhow::anyhow!("writing {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgc_backends::ptx::builder::Module;
    use pgc_backends::ptx::templates::epilogue::{DType, Epilogue};
    use pgc_backends::ptx::templates::gemm::{emit_gemm, GemmConfig, GemmLayout, Precision as GemmPrecision};
    use pgc_backends::ptx::program::{ArgRef, LaunchStep};

    fn tiny_train() -> Graph {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/11l.pgdsl");
        let src = std::fs::read_to_string(path).unwrap();
        let sets: Vec<(String, String)> =
            [("vocab", "64"), ("dim", "32"), ("heads", "4"), ("kv_heads", "2"), ("layers", "2"), ("seq", "16"), ("batch", "2")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let g = pgc_frontend::compile_model(&src, path, &sets, Mode::Train).unwrap();
        pgc_ir::passes::autodiff::backward(&g, "loss").unwrap()
    }

    /// A program with one real GEMM kernel (two launches of one entry) attached to the plan's first GEMM kernel.
    fn program(plan: &Plan) -> (Program, usize) {
        let k = plan.kernels.iter().position(|k| k.kind == KernelKind::Gemm).unwrap();
        let cfg = GemmConfig::new(GemmPrecision::Bf16, GemmLayout::LINEAR, 100, 72, 40, Epilogue::store(DType::F32));
        let gk = emit_gemm(&cfg).unwrap();
        let mut m = Module::new();
        m.push(gk.kernel.clone());
        let step = LaunchStep {
            plan_kernel: k,
            entry: gk.name().to_string(),
            grid: gk.grid(100, 72),
            block: gk.block(),
            shared_bytes: gk.smem_bytes,
            args: vec![ArgRef::U32(0)],
            zero_first: vec![],
        };
        (Program::new(plan.clone(), &m, vec![step.clone(), step], vec![]), k)
    }

    #[test]
    fn kernel_rows_carry_floor_entries_and_ptxas_figures() {
        let g = tiny_train();
        let plan = plan_for(&g, Precision::Bf16, &[], true).unwrap();
        let (prog, k) = program(&plan);
        let rows = kernel_rows(&plan, Some(&prog), None);
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), plan.kernels.len());
        for (r, kr) in rows.iter().zip(&plan.kernels) {
            assert_eq!(r["name"], kr.name.as_str());
            assert_eq!(r["flops"].as_u64().map(u128::from), Some(kr.flops));
            assert_eq!(r["min_bytes"], kr.min_bytes);
            let tc = pgc::pipeline::roofline::on_tensor_cores(&plan, kr.kind);
            let want = (kr.flops as f64 / if tc { PEAK_BF16_FLOPS } else { PEAK_F32_FLOPS }).max(kr.min_bytes as f64 / PEAK_BYTES_PER_S);
            assert_eq!(r["floor_s"].as_f64().unwrap(), want, "{}", kr.name);
        }
        assert_eq!(rows[k]["kind"], "gemm");
        assert_eq!(rows[k]["kind"], serde_json::to_value(KernelKind::Gemm).unwrap());
        assert_eq!(rows[k]["peak"], "bf16");
        assert_eq!(rows[k]["launches"], 2);
        assert_eq!(rows[k]["entries"].as_array().unwrap().len(), 1, "one row per distinct entry");
        assert!(rows[k].get("registers").is_none(), "no ptxas figures without ptxas");

        let Some(report) = ptxas::assemble_or_skip(&prog.ptx(), "the compile report's GEMM") else { return };
        let rows = kernel_rows(&plan, Some(&prog), Some(&report));
        let row = &rows.as_array().unwrap()[k];
        let regs = row["registers"].as_u64().unwrap();
        assert!(regs > 16 && regs <= 255, "{row}");
        assert_eq!(row["spill_bytes"], 0);
        assert!(row["shared_bytes"].as_u64().unwrap() >= prog.launches[0].shared_bytes as u64);
        assert_eq!(row["entries"][0]["registers"].as_u64().unwrap(), regs);
    }

    #[test]
    fn ptxas_cache_keys_ignore_entry_names() {
        // Two kernels identical up to their names have the same code, so one key.
        let g = tiny_train();
        let plan = plan_for(&g, Precision::Bf16, &[], true).unwrap();
        let (prog, _) = program(&plan);
        let cfg = GemmConfig::new(GemmPrecision::Bf16, GemmLayout::LINEAR, 100, 72, 40, Epilogue::store(DType::F32));
        let mut k = emit_gemm(&cfg).unwrap().kernel;
        let c = ptxas_cache::Cache::open(Path::new("/nonexistent/ptxas"));
        let key = |code: &str| c.key(&prog.header, code);
        let original = key(&prog.entries[0].code);
        k.name = "renamed".into();
        assert_eq!(key(&k.code()), original, "same code up to the name");
        assert!(!prog.entries[0].code.contains(&prog.entries[0].name), "the code does not mention the entry's name");
        let cfg2 = GemmConfig::new(GemmPrecision::Bf16, GemmLayout::LINEAR, 100, 72, 40, Epilogue::store(DType::Bf16));
        assert_ne!(key(&emit_gemm(&cfg2).unwrap().kernel.code()), original, "a bf16 output is other code");
        assert_ne!(c.key("another header", &prog.entries[0].code), original);
    }

    #[test]
    fn f32_plans_use_the_fp32_peak() {
        let g = tiny_train();
        let plan = plan_for(&g, Precision::F32, &[], true).unwrap();
        let rows = kernel_rows(&plan, None, None);
        assert!(rows.as_array().unwrap().iter().all(|r| r["peak"] == "f32" && r.get("entries").is_none()));
    }
}
