//! The CPU backend against the PyTorch float64 golden files (tests/golden,
//! copied from ../shared/golden, produced by ../shared/reference/pgref.py):
//! `models/11l.pgdsl` lowered with each file's config (its `config`
//! metadata) as `--set` overrides, run forward and backward in train and eval
//! mode, in f64 (relative error at most 1e-9 per tensor) and in f32 (1e-4).
//! Relative error per tensor: `max|a - b| / max|b|`.
#![allow(clippy::neg_cmp_op_on_partial_ord)] // `!(err <= tol)` also fails on NaN

mod common;
use common::{golden_sets as sets_of, model_11l_with_grads as compile};
use pgc_backends::cpu::{self, rel_err, Real};
use pgc_ir::{Graph, Mode};
use pgc_runtime::weights::SafeFile;
use std::path::Path;

const TOL_F64: f64 = 1e-9;
const TOL_F32: f64 = 1e-4;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}



struct Row {
    case: String,
    tensor: String,
    err: f64,
    tol: f64,
}

fn run_precision<F: Real>(file: &SafeFile, g: &Graph, mode: &str, tol: f64, rows: &mut Vec<Row>) {
    let (params, inputs) = common::golden_params_and_inputs::<F>(file, g);
    let run = cpu::execute(g, &params, &inputs, None).unwrap();
    let case = format!("{} {mode} {}", file.path.file_stem().unwrap().to_string_lossy(), F::NAME);
    let mut compared = 0;
    for (name, t) in &run.outputs {
        let want = file.get(&format!("{mode}.{name}"), "a golden result").unwrap_or_else(|e| panic!("{case}: {e}"));
        let got = t.to_f64_vec();
        assert_eq!(got.len(), want.data.len(), "{case}: {name}: size");
        rows.push(Row { case: case.clone(), tensor: name.clone(), err: rel_err(&got, &want.data.to_f64()), tol });
        compared += 1;
    }
    // Every golden result of this mode was compared.
    let golden = file.names().iter().filter(|n| n.starts_with(&format!("{mode}."))).count();
    assert_eq!(compared, golden, "{case}: outputs {compared} vs golden tensors {golden}");
}

fn check_golden(name: &str) {
    let file = SafeFile::open(&root().join(format!("tests/golden/{name}.safetensors"))).unwrap();
    let sets = sets_of(&file);
    let mut rows = Vec::new();
    for (mode, m) in [("train", Mode::Train), ("eval", Mode::Eval)] {
        let g = compile(&sets, m);
        run_precision::<f64>(&file, &g, mode, TOL_F64, &mut rows);
        run_precision::<f32>(&file, &g, mode, TOL_F32, &mut rows);
    }
    // Table: the worst tensors of each case.
    let mut out = format!("golden {name}: worst relative errors (max|a-b| / max|b|)\n{:<22} {:<40} {:>10} {:>8}\n", "case", "tensor", "rel err", "limit");
    let mut cases: Vec<String> = rows.iter().map(|r| r.case.clone()).collect();
    cases.dedup();
    for c in &cases {
        let mut rs: Vec<&Row> = rows.iter().filter(|r| &r.case == c).collect();
        rs.sort_by(|a, b| b.err.total_cmp(&a.err));
        for r in rs.iter().take(3) {
            out += &format!("{:<22} {:<40} {:>10.3e} {:>8.0e}\n", r.case, r.tensor, r.err, r.tol);
        }
        let loss = rows.iter().find(|r| &r.case == c && r.tensor == "loss").unwrap();
        out += &format!("{:<22} {:<40} {:>10.3e} {:>8.0e}\n", loss.case, "loss", loss.err, loss.tol);
    }
    println!("{out}");
    let bad: Vec<String> =
        rows.iter().filter(|r| !(r.err <= r.tol)).map(|r| format!("{} {}: {:.3e} > {:.0e}", r.case, r.tensor, r.err, r.tol)).collect();
    assert!(bad.is_empty(), "golden {name}: {} tensors off:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn golden_tiny() {
    check_golden("tiny");
}

#[test]
fn golden_small() {
    check_golden("small");
}

#[test]
fn golden_odd() {
    check_golden("odd");
}
