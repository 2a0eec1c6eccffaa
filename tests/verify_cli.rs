//! `pgc verify` on the simulator with a tiny configuration of models/11l.pgdsl:
//! a passing run (exit 0, a table with every gradient), a run that must fail
//! (`--tol 1e-12`: exit 1), bad input (exit 2), and `--backend cuda` without
//! a GPU (exit 2, a clear message, no panic).

mod common;
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
    assert!(t.contains("2.0e-2"), "the bf16 tolerance is printed: {t}");
    assert!(!t.contains("grad."), "eval mode has no gradients: {t}");
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
