//! `pgc compile -o DIR`: the per-kernel figures in report.json (name, kind,
//! FLOPs, minimum bytes, floor against the H100 SXM datasheet peaks), one
//! row per kernel of plan.json, and -- once the PTX backend compiles the model
//! -- `model.ptx` (which the simulator loads) with ptxas figures per kernel
//! and no spills.

use crate::common;
use common::output_text as text;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tmpdir(test: &str) -> common::TempDir {
    common::TempDir::absent(&format!("compile-ptx-{test}"))
}

fn compile(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgc"))
        .arg("compile")
        .arg(root().join("models/11l.pgdsl"))
        .args(extra)
        .arg("-o")
        .arg(dir)
        .output()
        .unwrap()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}


/// Every plan kernel has a report row with consistent figures.
fn check_rows(report: &Value, plan: &Value, which: &str) {
    let rows = report["kernels"][which].as_array().unwrap_or_else(|| panic!("report.json has no kernels.{which}"));
    let kernels = plan[which]["kernels"].as_array().unwrap();
    assert_eq!(rows.len(), kernels.len(), "{which}: one row per plan kernel");
    for (r, k) in rows.iter().zip(kernels) {
        assert_eq!(r["name"], k["name"]);
        assert_eq!(r["kind"], k["kind"]);
        assert_eq!(r["flops"], k["flops"]);
        assert_eq!(r["min_bytes"], k["min_bytes"]);
        let floor = r["floor_s"].as_f64().unwrap();
        let peak = if r["peak"] == "bf16" { 989e12 } else { 67e12 };
        let want = (k["flops"].as_f64().unwrap() / peak).max(k["min_bytes"].as_f64().unwrap() / 3.35e12);
        assert!((floor - want).abs() <= 1e-12 * want.max(1e-30), "{}: floor {floor} vs {want}", r["name"]);
    }
}

#[test]
fn report_has_per_kernel_figures_and_ptx_when_the_backend_compiles() {
    for (prec, extra) in [("bf16", vec!["--set", "layers=2"]), ("f32", vec!["--set", "layers=2", "--precision", "f32"])] {
        let dir = tmpdir(prec);
        let o = compile(&dir, &extra);
        assert!(o.status.success(), "{}", text(&o));
        let report = json(&dir.join("report.json"));
        let plan = json(&dir.join("plan.json"));
        check_rows(&report, &plan, "train");
        check_rows(&report, &plan, "eval");
        for which in ["train", "eval"] {
            let t = &report["totals"][which];
            let rows = report["kernels"][which].as_array().unwrap();
            assert_eq!(t["kernels"].as_u64().unwrap() as usize, rows.len());
            assert_eq!(t["flops"], plan[which]["flops"]);
            assert_eq!(t["min_bytes"], plan[which]["min_bytes"]);
            assert_eq!(t["peak_activation_bytes"], plan[which]["arena_bytes"]);
            let sum: f64 = rows.iter().map(|r| r["floor_s"].as_f64().unwrap()).sum();
            assert!((t["floor_s"].as_f64().unwrap() - sum).abs() <= 1e-12 * sum, "{which}: {t}");
        }
        assert_eq!(report["kernels"]["peaks"]["bf16_flops"], 989e12);
        let gemm_peak = report["kernels"]["train"].as_array().unwrap().iter().find(|r| r["kind"] == "gemm").unwrap()["peak"].clone();
        assert_eq!(gemm_peak, prec, "GEMMs are floored against the {prec} peak");
        let ptx = dir.join("model.ptx");
        assert!(ptx.exists(), "-o succeeded without model.ptx: {}", text(&o));
        let src = std::fs::read_to_string(&ptx).unwrap();
        assert!(src.contains(".target sm_90a"));
        // The simulator parses and decodes the whole module.
        use pgc_runtime::device::Device;
        let dev = pgc_runtime::sim::SimDevice::new();
        dev.load_module(&src).unwrap_or_else(|e| panic!("model.ptx ({prec}) does not load in the simulator: {e}"));
        assert!(dir.join("model.eval.ptx").exists());
        if report["ptx"]["ptxas"].get("path").is_some() {
            for which in ["train", "eval"] {
                let p = &report["ptx"][which]["ptxas"];
                assert_eq!(p["spill_bytes"], 0, "{which} spills: {}", report["ptx"]);
                for r in report["kernels"][which].as_array().unwrap() {
                    assert!(r["registers"].as_u64().unwrap() > 0, "{r}");
                    assert_eq!(r["spill_bytes"], 0, "{r}");
                }
                assert!(text(&o).contains(&format!("ptxas (sm_90a, {which} module):")), "{}", text(&o));
            }
        } else {
            let other = &report["ptx"]["ptxas"];
            if std::env::var_os("CI").is_some() {
                panic!("ptxas did not run under CI: {other}");
            }
            eprintln!("\n!!!!!!!! SKIPPED ptxas figures: {other} !!!!!!!!\n");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The whole model, ptxas included (no cached figures): timed (the target is
/// under 10 s for a release build).
#[test]
fn full_model_compile_time() {
    let dir = tmpdir("full");
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_pgc"))
        .arg("compile")
        .arg(root().join("models/11l.pgdsl"))
        .arg("-o")
        .arg(&dir)
        .env("PGC_PTXAS_CACHE", "0")
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", text(&o));
    println!("pgc compile models/11l.pgdsl -o DIR: {secs:.2} s ({} build)\n{}", if cfg!(debug_assertions) { "debug" } else { "release" }, text(&o));
    let report = json(&dir.join("report.json"));
    assert_eq!(report["params"], 27_878_489);
    let _ = std::fs::remove_dir_all(&dir);
}
