//! `pgc compile`: model source -> IR (JSON, text) -> backward graph -> kernel plan; report.

use super::{CliResult, Failure};
use anyhow::Context;
use pgc_ir::plan::{FusionRule, Plan, PlanOptions, Precision};
use pgc_ir::report::Report;
use pgc_ir::{Graph, Mode};
use std::path::{Path, PathBuf};

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
    /// plan.json: the kernel plans (train: forward+backward; eval: forward).
    Plan,
}

#[derive(clap::Args)]
pub struct CompileArgs {
    /// The model source (.pgdsl).
    pub model: PathBuf,
    /// Override a model constant, e.g. `--set layers=9`. Repeatable.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
    /// Output directory for model.ir.json, report.json (and later plan.json, model.ptx).
    #[arg(short = 'o', long = "out")]
    pub out: Option<PathBuf>,
    /// Print to stdout (comma-separated): ir (text IR), json (IR JSON), report (report JSON).
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanPrecision {
    Bf16,
    F32,
}

pub fn run(args: CompileArgs) -> CliResult {
    let sets = super::parse_sets(&args.sets)?;
    let path = args.model.display().to_string();
    let bytes = std::fs::read(&args.model).map_err(|e| Failure::BadInput(format!("error: cannot read {path}: {e}")))?;
    let source = String::from_utf8(bytes).map_err(|e| {
        Failure::BadInput(format!("error: {path}: not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()))
    })?;
    let graph = pgc_frontend::compile_model(&source, &path, &sets, Mode::Train)
        .map_err(|d| Failure::BadInput(d.render(&source)))?;

    let report = Report::from_graph(&graph);
    // A model with a scalar `loss` output trains: plan its backward pass too.
    // Other programs (library snippets, tests) are planned forward only.
    let train = match graph.output("loss") {
        Some(_) => pgc_ir::passes::autodiff::backward(&graph, "loss").context("deriving the backward pass")?,
        None => graph.clone(),
    };
    let eval = pgc_frontend::compile_model(&source, &path, &sets, Mode::Eval).map_err(|d| Failure::BadInput(d.render(&source)))?;
    let precision = match args.precision {
        PlanPrecision::Bf16 => Precision::Bf16,
        PlanPrecision::F32 => Precision::F32,
    };
    let plans = [("train", plan_for(&train, precision, &args.no_fuse, true)?), ("eval", plan_for(&eval, precision, &args.no_fuse, false)?)];
    let plan_json = serde_json::to_string_pretty(&serde_json::json!({ plans[0].0: plans[0].1, plans[1].0: plans[1].1 }))
        .context("serializing the plan")?
        + "\n";
    let report_json = serde_json::to_string_pretty(&report.to_json()).context("serializing the report")? + "\n";
    let ir_json = serde_json::to_string(&graph).context("serializing the IR")? + "\n";

    let mut stdout = String::new();
    let mut files: Vec<(String, String)> = vec![
        ("model.ir.json".into(), ir_json.clone()),
        ("report.json".into(), report_json.clone()),
        ("plan.json".into(), plan_json.clone()),
    ];
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
            Emit::Plan => stdout.push_str(&plan_json),
        }
    }
    if let Some(dir) = &args.out {
        write_all_atomic(dir, &files)?;
    }
    let mut summary = format!("{path}\n{}", report.summary());
    for (name, plan) in &plans {
        summary.push_str(&format!("plan {name}: {}", plan.summary()));
    }
    if stdout.is_empty() {
        print!("{summary}");
    } else {
        eprint!("{summary}");
        print!("{stdout}");
    }
    Ok(())
}

/// The kernel plan of a graph: train plans store the loss and every gradient,
/// eval plans the loss and the logits.
fn plan_for(g: &Graph, precision: Precision, no_fuse: &[String], train: bool) -> Result<Plan, Failure> {
    let mut opts = PlanOptions::all(g, precision);
    for name in no_fuse {
        // clap has checked the names against FusionRule::ALL.
        if let Some(rule) = FusionRule::parse(name) {
            opts.rules.remove(&rule);
        }
    }
    if g.output("loss").is_some() {
        opts.outputs.retain(|o| if train { o != "logits" } else { o == "loss" || o == "logits" });
    }
    pgc_ir::plan::build(g, &opts).map_err(|e| Failure::Other(e.into()))
}

fn dump(g: &Graph) -> String {
    pgc_ir::text::print(g)
}

/// Write every file under `dir` through temporary files, then rename them all:
/// on failure no output file is left half-written (and temporaries are removed).
fn write_all_atomic(dir: &Path, files: &[(String, String)]) -> Result<(), Failure> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pid = std::process::id();
    let mut temps = Vec::new();
    let cleanup = |temps: &[PathBuf]| {
        for t in temps {
            let _ = std::fs::remove_file(t);
        }
    };
    for (name, content) in files {
        let tmp = dir.join(format!(".{name}.tmp.{pid}"));
        if let Err(e) = std::fs::write(&tmp, content) {
            temps.push(tmp.clone());
            cleanup(&temps);
            return Err(Failure::Other(anyhow::anyhow!("writing {}: {e}", tmp.display())));
        }
        temps.push(tmp);
    }
    for ((name, _), tmp) in files.iter().zip(&temps) {
        let dst = dir.join(name);
        if let Err(e) = std::fs::rename(tmp, &dst) {
            cleanup(&temps);
            return Err(Failure::Other(anyhow::anyhow!("writing {}: {e}", dst.display())));
        }
    }
    Ok(())
}
