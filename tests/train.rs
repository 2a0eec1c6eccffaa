//! `pgc train` on the cpu backend against the float64 training trajectories
//! of `reference/pgtrain.py` (tests/golden/train_{tiny,odd}.safetensors,
//! TRAINING.md section 14): each run starts from the file's `param0.*` and
//! `tokens` with its `config` as `--set` and its `train` metadata as `--hp`.
//!
//! - f64: every key of the trajectory (losses, schedules, gradient norms,
//!   `param1.*`, final `param.*`, `swa.*`, `state.*`) within 1e-9 relative
//!   (`max|a - b| / max|b|`).
//! - f32: `param1.*` (one step) within 5e-3 (Adam's first step divides by
//!   `|g| + eps`, which magnifies f32 gradient error near 1e-8).
//! - A run interrupted after step 5 (`--steps 5 --checkpoint`) and resumed
//!   gives the uninterrupted trajectory bit for bit.
//! - Bad input exits 2 with a message.

#![allow(clippy::neg_cmp_op_on_partial_ord)] // `!(err <= tol)` also fails on NaN

mod common;
use common::{output_text, TempDir};
use pgc_runtime::weights::SafeFile;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/train_{name}.safetensors"))
}

/// `pgc train` on golden `name` with its config and hyperparameters, plus `extra` flags.
fn train_cmd(name: &str, extra: &[&str]) -> Command {
    let g = golden_path(name);
    let file = SafeFile::open(&g).unwrap();
    let meta = file.metadata();
    let cfg: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&meta["config"]).unwrap();
    let batch = cfg["batch"].to_string();
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgc"));
    c.arg("train").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/11l.pgdsl"));
    for (k, v) in cfg.iter().filter(|(k, _)| *k != "batch") {
        c.arg("--set").arg(format!("{k}={v}"));
    }
    let hp: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&meta["train"]).unwrap();
    for (k, v) in &hp {
        let text = match v {
            serde_json::Value::Array(a) => a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        c.arg("--hp").arg(format!("{k}={text}"));
    }
    c.args(["--weights", g.to_str().unwrap(), "--weights-prefix", "param0.", "--tokens", g.to_str().unwrap(), "--batch", &batch]);
    if !extra.contains(&"--backend") {
        c.args(["--backend", "cpu"]);
    }
    c.args(extra);
    c
}

fn run_ok(mut c: Command, what: &str) -> String {
    let t = Instant::now();
    let o = c.output().unwrap();
    let text = output_text(&o);
    assert!(o.status.success(), "{what} failed ({}):\n{text}", o.status);
    eprintln!("{what}: {:.1} s", t.elapsed().as_secs_f64());
    text
}

/// Every golden tensor whose name starts with one of `prefixes` (or equals
/// it), compared with the trajectory: the worst relative errors, and the
/// names above `tol` (or missing).
fn compare(name: &str, traj: &Path, prefixes: &[&str], tol: f64) {
    let gold = SafeFile::open(&golden_path(name)).unwrap();
    let ours = SafeFile::open(traj).unwrap();
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    for n in gold.names() {
        if !prefixes.iter().any(|p| n == *p || (p.ends_with('.') && n.starts_with(p))) {
            continue;
        }
        let b = gold.get(&n, "").unwrap().data.to_f64();
        let Ok(a) = ours.get(&n, "") else {
            bad.push(format!("{n}: missing from the trajectory"));
            continue;
        };
        let a = a.data.to_f64();
        assert_eq!(a.len(), b.len(), "{n}: length");
        let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max).max(1e-300);
        let err = if a.iter().any(|x| x.is_nan()) { f64::NAN } else { diff / scale };
        if !(err <= tol) {
            bad.push(format!("{n}: {err:.3e}"));
        }
        rows.push((err, n));
    }
    rows.sort_by(|x, y| y.0.total_cmp(&x.0));
    let worst: Vec<String> = rows.iter().take(6).map(|(e, n)| format!("{n} {e:.2e}")).collect();
    eprintln!("{name}: {} tensors, worst: {}", rows.len(), worst.join(", "));
    assert!(!rows.is_empty(), "{name}: nothing compared");
    assert!(bad.is_empty(), "{name}: above {tol:e}:\n{}", bad.join("\n"));
}

const ALL: &[&str] = &["loss", "lr_scale", "muon_momentum", "grad_norm", "param1.", "param.", "swa.", "state."];

fn golden_f64(name: &str) {
    let d = TempDir::new(&format!("train-{name}-f64"));
    let traj = d.path().join("traj.safetensors");
    run_ok(train_cmd(name, &["--precision", "f64", "--trajectory", traj.to_str().unwrap()]), &format!("pgc train {name} f64"));
    compare(name, &traj, ALL, 1e-9);
}

#[test]
fn golden_tiny_f64() {
    golden_f64("tiny");
}

#[test]
fn golden_odd_f64() {
    golden_f64("odd");
}

#[test]
fn golden_first_step_f32() {
    for name in ["tiny", "odd"] {
        let d = TempDir::new(&format!("train-{name}-f32"));
        let traj = d.path().join("traj.safetensors");
        run_ok(train_cmd(name, &["--precision", "f32", "--steps", "1", "--trajectory", traj.to_str().unwrap()]), &format!("pgc train {name} f32"));
        compare(name, &traj, &["param1."], 5e-3);
    }
}

/// All tensors of two files, bit for bit.
fn assert_same_bits(a: &Path, b: &Path) {
    let (fa, fb) = (SafeFile::open(a).unwrap(), SafeFile::open(b).unwrap());
    assert_eq!(fa.names(), fb.names());
    for n in fa.names() {
        let (x, y) = (fa.get(&n, "").unwrap(), fb.get(&n, "").unwrap());
        assert_eq!(x.shape, y.shape, "{n}");
        let bits = |v: Vec<f64>| v.into_iter().map(f64::to_bits).collect::<Vec<_>>();
        assert!(bits(x.data.to_f64()) == bits(y.data.to_f64()), "{n}: resumed differs from uninterrupted");
    }
}

#[test]
fn interrupted_and_resumed_equals_uninterrupted() {
    let d = TempDir::new("train-resume");
    let (full, resumed) = (d.path().join("full.safetensors"), d.path().join("resumed.safetensors"));
    let ck = d.path().join("ck");
    run_ok(train_cmd("odd", &["--trajectory", full.to_str().unwrap()]), "uninterrupted");
    let text = run_ok(train_cmd("odd", &["--steps", "5", "--checkpoint", ck.to_str().unwrap()]), "steps 1-5");
    assert!(text.contains("interrupted"), "{text}");
    // Written atomically: the folder holds the checkpoint and nothing else.
    let files: Vec<String> = std::fs::read_dir(&ck).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(files, ["checkpoint.safetensors"]);
    let text = run_ok(train_cmd("odd", &["--resume", ck.to_str().unwrap(), "--trajectory", resumed.to_str().unwrap(), "--json"]), "resumed 6-14");
    let v: serde_json::Value = serde_json::from_str(text.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    assert_eq!((v["steps"].as_u64(), v["steps_this_run"].as_u64(), v["finished"].as_bool()), (Some(14), Some(9), Some(true)), "{text}");
    assert_same_bits(&full, &resumed);
    // A resume with other hyperparameters is refused, naming the difference.
    let o = train_cmd("odd", &["--resume", ck.to_str().unwrap(), "--hp", "matrix_lr=0.03"]).output().unwrap();
    let text = output_text(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("matrix_lr=0.03") && text.contains("another run"), "{text}");
}

#[test]
fn bad_input_exits_2_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["--hp", "iterationz=3"], "unknown hyperparameter"),
        (&["--hp", "beta2=1.5"], "beta2 must be in [0, 1)"),
        (&["--hp", "adam_eps=x"], "adam_eps"),
        (&["--steps", "100"], "--steps 100"),
        (&["--backend", "sim"], "not yet supported for training"),
        (&["--precision", "bf16"], "bf16"),
        (&["--hp", "train_batch_tokens=7"], "train_batch_tokens=7 disagrees"),
        // A learning rate this large drives the weights to infinity: stopped, not written.
        (&["--hp", "matrix_lr=1e300", "--hp", "tied_embed_lr=1e300", "--hp", "scalar_lr=1e300"], "training diverged"),
    ];
    for (flags, want) in cases {
        let o = train_cmd("tiny", flags).output().unwrap();
        let text = output_text(&o);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {text}");
        assert!(text.contains(want), "{flags:?}: expected `{want}` in:\n{text}");
    }
}
