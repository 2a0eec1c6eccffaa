//! The PTX backend on the simulator against the PyTorch float64 golden files:
//! `pgc run --backend sim` on the golden configs tiny, small and odd, train
//! and eval (eval with `--grads`, so every golden tensor is compared), with
//! `--precision f32` (relative error at most 1e-4 per tensor) and `bf16` (the
//! numerics contract: `err <= 3 * yardstick + 4e-3` per tensor against both
//! PyTorch's stored bf16 autocast error and the built-in yardstick): loss,
//! logits and every gradient. Relative error per tensor:
//! `max|a - b| / max|b|`. The body is `tests/common/golden.rs`; it prints
//! each case's worst tensors, and for bf16 every tensor's ratio to the
//! yardstick and the median ratio.
//!
//! When the PTX backend cannot compile the model yet (a kernel kind without
//! an emitter), the test fails with the compiler's message, which names
//! what is missing.

use crate::common;
use common::golden::{self, Backend, Prec};
use pgc_backends::ptx::compile::{emit_plan_kernel, supported_rules};
use pgc_backends::ptx::ctx::Ctx;
use pgc_ir::plan::{self, PlanOptions, Precision};
use pgc_ir::Mode;
use pgc_runtime::weights::SafeFile;
use std::collections::BTreeMap;

/// Which kernel kinds the PTX backend emits for this config and mode: every
/// plan kernel through its kind's emitter, carrying on past failures (the
/// program compiler stops at the first). One line per kind.
fn emitter_census(file: &SafeFile, mode: Mode, precision: Precision) -> String {
    let meta = file.metadata();
    let cfg: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&meta["config"]).unwrap();
    let sets: Vec<(String, String)> = cfg.into_iter().map(|(k, v)| (k, v.to_string())).collect();
    let path = golden::root().join("models/11l.pgdsl");
    let src = std::fs::read_to_string(&path).unwrap();
    let fwd = pgc_frontend::compile_model(&src, &path.display().to_string(), &sets, mode).unwrap();
    let g = pgc_ir::passes::autodiff::backward(&fwd, "loss").unwrap();
    let mut opts = PlanOptions::all(&g, precision);
    opts.rules = supported_rules();
    let p = plan::build(&g, &opts).unwrap();
    let mut cx = Ctx::new(&g, &p);
    let mut kinds_seen: BTreeMap<&'static str, (usize, Vec<String>)> = BTreeMap::new();
    for (ki, k) in p.kernels.iter().enumerate() {
        cx.kernel = ki;
        let r = emit_plan_kernel(&mut cx, ki);
        let e = kinds_seen.entry(k.kind.name()).or_default();
        e.0 += 1;
        if let Err(err) = r {
            e.1.push(format!("{}: {err}", k.name));
        }
    }
    let mut out = format!("PTX emitters, {} {:?} ({} plan kernels):\n", mode.name(), precision, p.kernels.len());
    for (kind, (n, errs)) in &kinds_seen {
        if errs.is_empty() {
            out += &format!("  {kind:<20} {n:>4} kernels: all emitted\n");
        } else {
            out += &format!("  {kind:<20} {n:>4} kernels: {} MISSING, e.g. {}\n", errs.len(), errs[0]);
        }
    }
    out
}

fn check(name: &str, precisions: &[Prec]) {
    let file = SafeFile::open(&golden::root().join(format!("tests/golden/{name}.safetensors"))).unwrap();
    let explain = |m: Mode, p: Prec| emitter_census(&file, m, if p == Prec::F32 { Precision::F32 } else { Precision::Bf16 });
    golden::check(name, Backend::Sim, precisions, &explain);
}

#[test]
fn golden_tiny_f32_on_the_simulator() {
    check("tiny", &[Prec::F32]);
}

#[test]
fn golden_odd_f32_on_the_simulator() {
    check("odd", &[Prec::F32]);
}

#[test]
fn golden_tiny_bf16_on_the_simulator() {
    check("tiny", &[Prec::Bf16]);
}

#[test]
fn golden_small_bf16_on_the_simulator() {
    check("small", &[Prec::Bf16]);
}

#[test]
fn golden_odd_bf16_on_the_simulator() {
    check("odd", &[Prec::Bf16]);
}
