//! `pgc run --backend sim|cuda`: the error paths of the command line (exit
//! status 2, a message saying what is wrong, no output file). The golden
//! numbers of the sim backend are checked by tests/ptx/golden_sim.rs.

use crate::common;
use common::output_text as text;
use pgc_runtime::weights::{save, HostTensor, SafeFile};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tmpdir(test: &str) -> common::TempDir {
    common::TempDir::new(&format!("exec-cli-{test}"))
}

fn golden() -> PathBuf {
    root().join("tests/golden/tiny.safetensors")
}

fn sets(file: &Path) -> Vec<String> {
    let meta = SafeFile::open(file).unwrap().metadata();
    let cfg: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&meta["config"]).unwrap();
    cfg.into_iter().flat_map(|(k, v)| ["--set".to_string(), format!("{k}={v}")]).collect()
}

fn run(weights: &Path, extra: &[&str], out: &Path) -> Output {
    let g = golden();
    Command::new(env!("CARGO_BIN_EXE_pgc"))
        .arg("run")
        .arg(root().join("models/11l.pgdsl"))
        .args(sets(&g))
        .args(["--weights", weights.to_str().unwrap(), "--weights-prefix", "param.", "--tokens", g.to_str().unwrap()])
        .args(extra)
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap()
}


fn expect_2(o: &Output, needle: &str, out: &Path) {
    assert_eq!(o.status.code(), Some(2), "{}", text(o));
    assert!(text(o).contains(needle), "wanted `{needle}` in: {}", text(o));
    assert!(!text(o).contains("panicked"), "{}", text(o));
    assert!(!out.exists(), "an output file was written on failure");
}

#[test]
fn precisions_and_backends_that_do_not_go_together() {
    let d = tmpdir("prec");
    let out = d.join("o.safetensors");
    let g = golden();
    let o = run(&g, &["--mode", "train", "--backend", "sim", "--precision", "f64"], &out);
    expect_2(&o, "precision f64 is for the cpu backend", &out);
    let o = run(&g, &["--mode", "eval", "--backend", "cuda"], &out);
    expect_2(&o, "backend `cuda` is not available", &out);
}

/// `--backend cpu --precision bf16` is the bf16 yardstick: its results are
/// bf16 numbers (logits, and every gradient reaches f32 through a bf16
/// rounding or a sum of them) and as close to the float64 golden results as
/// PyTorch's bf16 autocast is (its stored errors: loss 1.2e-5, logits 3.7e-3).
#[test]
fn cpu_bf16_is_the_autocast_yardstick() {
    let d = tmpdir("yardstick");
    let out = d.join("o.safetensors");
    let g = golden();
    let o = run(&g, &["--mode", "train", "--backend", "cpu", "--precision", "bf16"], &out);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("yardstick"), "{}", text(&o));
    let got = SafeFile::open(&out).unwrap();
    let want = SafeFile::open(&g).unwrap();
    let logits = got.get("logits", "").unwrap().data.to_f64();
    assert!(logits.iter().all(|&x| pgc_backends::cpu::autocast::round_bf16(x) == x), "logits are not all bf16 values");
    let w = want.get("train.logits", "").unwrap().data.to_f64();
    let err = pgc_backends::cpu::rel_err(&logits, &w);
    assert!(err > 1e-4 && err < 2e-2, "logits error {err:.3e}: not a bf16-sized error");
    let (l, wl) = (got.get("loss", "").unwrap().data.to_f64()[0], want.get("train.loss", "").unwrap().data.to_f64()[0]);
    assert!(((l - wl) / wl).abs() < 1e-3, "loss {l} vs golden {wl}");
}

#[test]
fn bad_weights_are_rejected_before_the_simulator_starts() {
    let d = tmpdir("weights");
    let out = d.join("o.safetensors");
    let file = SafeFile::open(&golden()).unwrap();
    let mut ts: Vec<(String, HostTensor)> = file.all().unwrap();
    let name = "param.blocks.0.attn.c_q.weight";
    let i = ts.iter().position(|(n, _)| n == name).unwrap();
    ts[i].1.shape = vec![ts[i].1.shape.iter().product::<usize>()];
    let w = d.join("bad.safetensors");
    save(&w, &ts, None).unwrap();
    for prec in ["bf16", "f32"] {
        let o = run(&w, &["--mode", "train", "--backend", "sim", "--precision", prec], &out);
        expect_2(&o, "blocks.0.attn.c_q.weight", &out);
    }
}
