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

const ALL: &[&str] = &["loss", "lr_scale", "muon_momentum", "grad_norm", "param1.", "param.", "swa.", "state.", "tokens", "input_ids", "target_ids", "train.", "eval."];

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

/// The step on the simulator: the PTX program of the forward and backward
/// pass and the optimizer kernels, in f32. One step against the golden
/// `param1.*` (the tolerance TRAINING.md gives float32).
#[test]
fn golden_first_step_sim_f32() {
    for name in ["tiny", "odd"] {
        let d = TempDir::new(&format!("train-{name}-sim-f32"));
        let traj = d.path().join("traj.safetensors");
        let text = run_ok(
            train_cmd(name, &["--backend", "sim", "--precision", "f32", "--steps", "1", "--trajectory", traj.to_str().unwrap(), "--json"]),
            &format!("pgc train {name} sim f32"),
        );
        compare(name, &traj, &["param1."], 5e-3);
        let v: serde_json::Value = serde_json::from_str(text.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
        assert_eq!((v["backend"].as_str(), v["precision"].as_str()), (Some("sim"), Some("f32")), "{text}");
        assert!(v["optimizer_launches"].as_u64().unwrap() > 0, "{text}");
    }
}

/// The whole tiny trajectory on the simulator in bf16 (the record's GPU
/// precision: bf16 program, bf16 Newton-Schulz): every step's loss within
/// 2e-2 relative of the float64 golden loss.
#[test]
fn golden_tiny_sim_bf16_losses() {
    let d = TempDir::new("train-tiny-sim-bf16");
    let traj = d.path().join("traj.safetensors");
    run_ok(train_cmd("tiny", &["--backend", "sim", "--precision", "bf16", "--trajectory", traj.to_str().unwrap()]), "pgc train tiny sim bf16");
    let gold = SafeFile::open(&golden_path("tiny")).unwrap().get("loss", "").unwrap().data.to_f64();
    let ours = SafeFile::open(&traj).unwrap().get("loss", "").unwrap().data.to_f64();
    assert_eq!(ours.len(), gold.len(), "steps");
    let rel: Vec<f64> = ours.iter().zip(&gold).map(|(a, b)| (a - b).abs() / b.abs()).collect();
    eprintln!("tiny sim bf16: loss relative errors {:?}", rel.iter().map(|e| format!("{e:.1e}")).collect::<Vec<_>>());
    assert!(rel.iter().all(|&e| e <= 2e-2), "a step's loss is more than 2e-2 off: {rel:?}\nours {ours:?}\ngolden {gold:?}");
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

/// On the simulator the state lives in device memory: a checkpoint copies
/// it out, `--resume` uploads it, and the resumed run continues the same
/// trajectory (the simulator adds partial sums in a thread-dependent order,
/// so it is compared within float32 noise, not bit for bit).
#[test]
fn sim_interrupted_and_resumed_continues_the_run() {
    let d = TempDir::new("train-sim-resume");
    let (full, resumed) = (d.path().join("full.safetensors"), d.path().join("resumed.safetensors"));
    let ck = d.path().join("ck");
    let sim = ["--backend", "sim", "--precision", "f32"];
    fn with<'a>(sim: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [sim, extra].concat()
    }
    run_ok(train_cmd("tiny", &with(&sim, &["--trajectory", full.to_str().unwrap()])), "sim uninterrupted");
    run_ok(train_cmd("tiny", &with(&sim, &["--steps", "5", "--checkpoint", ck.to_str().unwrap()])), "sim steps 1-5");
    // The checkpoint names the backend: a cpu run does not resume it.
    let o = train_cmd("tiny", &["--precision", "f32", "--resume", ck.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(output_text(&o).contains("precision sim f32"), "{}", output_text(&o));
    run_ok(train_cmd("tiny", &with(&sim, &["--resume", ck.to_str().unwrap(), "--trajectory", resumed.to_str().unwrap()])), "sim resumed 6-16");
    let (a, b) = (SafeFile::open(&full).unwrap(), SafeFile::open(&resumed).unwrap());
    let mut worst = (0.0f64, String::new());
    for n in a.names().into_iter().filter(|n| ["loss", "grad_norm"].contains(&n.as_str()) || n.starts_with("param.") || n.starts_with("state.") || n.starts_with("swa.")) {
        let (x, y) = (a.get(&n, "").unwrap().data.to_f64(), b.get(&n, "").unwrap().data.to_f64());
        let scale = x.iter().map(|v| v.abs()).fold(1e-30, f64::max);
        let e = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max) / scale;
        if !(e <= worst.0) {
            worst = (e, n);
        }
    }
    eprintln!("sim resume: worst relative difference {:.2e} ({})", worst.0, worst.1);
    assert!(worst.0 <= 5e-3, "resumed differs from uninterrupted: {} {:.3e}", worst.1, worst.0);
}

#[test]
fn bad_input_exits_2_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["--hp", "iterationz=3"], "unknown hyperparameter"),
        (&["--hp", "beta2=1.5"], "beta2 must be in [0, 1)"),
        (&["--hp", "adam_eps=x"], "adam_eps"),
        (&["--steps", "100"], "--steps 100"),
        (&["--backend", "sim", "--precision", "f64"], "f32 or bf16"),
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

/// The head of the sample FineWeb shard as a shard of its own (keeps the validations short).
fn head_shard(dir: &Path, tokens: usize) -> PathBuf {
    let src = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sample_val_000000.bin")).unwrap();
    let mut out = Vec::with_capacity(1024 + 2 * tokens);
    for h in [20240520i32, 1, tokens as i32].into_iter().chain(std::iter::repeat_n(0, 253)) {
        out.extend_from_slice(&h.to_le_bytes());
    }
    out.extend_from_slice(&src[1024..1024 + 2 * tokens]);
    let p = dir.join("fineweb_val_000000.bin");
    std::fs::write(&p, out).unwrap();
    p
}

/// Real data end to end: a small model trained on the sample shard with
/// validation, SWA and export; the validation bpb falls, the artifact is
/// under budget and `pgc eval` of it gives the roundtrip bpb.
#[test]
fn fineweb_validation_export_and_roundtrip() {
    let d = TempDir::new("train-export");
    let val = head_shard(d.path(), 8192);
    let out = d.path().join("model.pgz");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (model, sp) = (root.join("models/11l.pgdsl"), root.join("tests/data/fineweb_1024_bpe.model"));
    let sets = ["layers=1", "dim=32", "heads=2", "kv_heads=1", "seq=64", "bigram_buckets=256", "bigram_dim=16"];
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgc"));
    c.arg("train").arg(&model);
    for s in sets {
        c.args(["--set", s]);
    }
    // By iteration (no clock): the warmdown's last 8 steps have s_t < 0.4, so SWA collects after steps 25 and 30.
    for h in ["iterations=30", "max_wallclock_seconds=0", "warmdown_iters=20", "swa_every=5", "val_loss_every=10"] {
        c.args(["--hp", h]);
    }
    c.args(["--random-weights", "1", "--data", root.join("tests/data/sample_val_000000.bin").to_str().unwrap()]);
    c.args(["--val", val.to_str().unwrap(), "--tokenizer", sp.to_str().unwrap()]);
    c.args(["--batch", "4", "--backend", "cpu", "--precision", "f32", "--export", out.to_str().unwrap(), "--json"]);
    let text = run_ok(c, "pgc train --val --export");
    let v: serde_json::Value = serde_json::from_str(text.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    let vals = v["val"].as_array().unwrap();
    let steps: Vec<u64> = vals.iter().map(|x| x["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 10, 20, 30], "{text}");
    let bpb: Vec<f64> = vals.iter().map(|x| x["val_bpb"].as_f64().unwrap()).collect();
    assert!(bpb.windows(2).all(|w| w[1] < w[0]) && bpb[0] > 3.0 && bpb[3] < 3.5, "validation bpb should fall: {bpb:?}\n{text}");
    assert!(text.contains("val_bpb") && text.contains("step 10/30"), "the progress line shows the validation:\n{text}");
    let e = &v["export"];
    assert_eq!((e["swa_applied"].as_bool(), e["within_budget"].as_bool()), (Some(true), Some(true)), "{text}");
    let size = std::fs::metadata(&out).unwrap().len();
    assert_eq!(e["bytes"].as_u64(), Some(size), "{text}");
    // Written atomically: the folder holds the artifact and the validation shard, no temporary.
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    let rt = e["roundtrip_val_bpb"].as_f64().unwrap();
    // Quantization and SWA move it a little from the last validation (other windows, same split).
    assert!(rt.is_finite() && (rt - bpb[3]).abs() < 0.15, "roundtrip {rt} vs last validation {}\n{text}", bpb[3]);
    // `pgc eval` reads the artifact and, with the roundtrip's windows, gives its number.
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgc"));
    c.arg("eval").arg(&model);
    for s in sets {
        c.args(["--set", s]);
    }
    c.args(["--weights", out.to_str().unwrap(), "--data", val.to_str().unwrap(), "--tokenizer", sp.to_str().unwrap()]);
    c.args(["--stride", "64", "--batch", "32", "--json"]);
    let text = run_ok(c, "pgc eval of the artifact");
    let j = text.find('{').unwrap();
    let ev: serde_json::Value = serde_json::from_str(&text[j..text.rfind('}').unwrap() + 1]).unwrap();
    let eb = ev["val_bpb"].as_f64().unwrap();
    assert!((eb - rt).abs() <= 1e-9 * rt, "pgc eval {eb} vs roundtrip {rt}");
}
