//! `pgc verify` on the simulator with a tiny configuration of models/11l.pgdsl:
//! a passing run (exit 0, a table with every gradient), a run that must fail
//! (`--tol 1e-12`: exit 1), bad input (exit 2), and `--backend cuda` without
//! a GPU (exit 2, a clear message, no panic).

use crate::common;
use common::output_text as text;
use std::path::Path;
use std::process::{Command, Output};

const TINY: [&str; 14] = [
    "--set", "vocab=64", "--set", "dim=32", "--set", "heads=4", "--set", "kv_heads=2", "--set", "layers=3", "--set", "bigram_buckets=32",
    "--set", "bigram_dim=8",
];

fn verify(extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgc"))
        .arg("verify")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/11l.pgdsl"))
        .args(TINY)
        .args(["--batch", "2", "--seq", "16"])
        .args(extra)
        .env("PGC_CUDA_LIB", "none")
        .output()
        .unwrap()
}


#[test]
fn f32_on_the_simulator_passes_with_every_gradient_in_the_table() {
    let o = verify(&["--backend", "sim", "--precision", "f32"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("verify: PASS"), "{t}");
    for name in ["loss", "logits", "grad.tok_emb.weight", "grad.blocks.2.mlp.proj.weight", "grad.blocks.0.attn.c_q.weight"] {
        assert!(t.lines().any(|l| l.starts_with(&format!("{name} ")) && l.ends_with("ok")), "no passing row for {name}: {t}");
    }
}

#[test]
fn bf16_eval_on_the_simulator_passes() {
    let o = verify(&["--backend", "sim", "--mode", "eval", "--seed", "3"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("3 x yardstick + 4e-3"), "the bf16 contract is printed: {t}");
    assert!(t.contains("median ratio"), "the median ratio is printed: {t}");
    assert!(!t.contains("grad."), "eval mode has no gradients: {t}");
}

/// bf16 train through the contract: every row has pgc's error, the
/// yardstick's, their ratio and the limit `3 * yardstick + 4e-3`.
#[test]
fn bf16_train_on_the_simulator_meets_the_contract() {
    let o = verify(&["--backend", "sim", "--seed", "1"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    let rows: Vec<&str> = t.lines().filter(|l| l.starts_with("grad.") || l.starts_with("loss ") || l.starts_with("logits ")).collect();
    assert!(rows.len() > 30, "{t}");
    for r in rows {
        let f: Vec<&str> = r.split_whitespace().collect();
        let (err, yard, limit): (f64, f64, f64) = (f[3].parse().unwrap(), f[4].parse().unwrap(), f[6].parse().unwrap());
        assert!((limit - (3.0 * yard + 4e-3)).abs() <= 1e-3 * limit, "{r}");
        assert!(err <= limit && f[7] == "ok", "{r}");
        assert!(yard > 0.0, "the yardstick has a bf16-sized error: {r}");
    }
}

#[test]
fn an_impossible_tolerance_fails_with_exit_1() {
    let o = verify(&["--backend", "sim", "--precision", "f32", "--tol", "1e-12"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("FAIL"), "{t}");
    assert!(t.contains("verify: FAIL"), "{t}");
}

#[test]
fn bad_input_exits_2() {
    let o = verify(&["--backend", "sim", "--set", "layers=x"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = verify(&["--backend", "sim", "--tol=-1"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--tol"), "{}", text(&o));
}

#[test]
fn cuda_without_a_gpu_exits_2_with_a_clear_message() {
    let o = verify(&["--backend", "cuda"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("backend `cuda` is not available"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}
