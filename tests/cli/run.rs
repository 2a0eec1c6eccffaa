//! `pgc run` end to end: the golden files through the command line, and bad
//! weights / tokens rejected with exit status 2, the tensor named, and no
//! output file written.

use crate::common;
use common::output_text as text;
use pgc_backends::cpu::rel_err;
use pgc_runtime::weights::{save, HostData, HostTensor, SafeFile};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn golden(name: &str) -> PathBuf {
    root().join(format!("tests/golden/{name}.safetensors"))
}

fn tmpdir(test: &str) -> common::TempDir {
    common::TempDir::new(&format!("run-cli-{test}"))
}

/// `--set` flags for a golden file's config.
fn sets(file: &Path) -> Vec<String> {
    let meta = SafeFile::open(file).unwrap().metadata();
    let cfg: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&meta["config"]).unwrap();
    cfg.into_iter().flat_map(|(k, v)| ["--set".to_string(), format!("{k}={v}")]).collect()
}

fn pgc(args: &[&str], sets: &[String]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgc"));
    c.arg("run").arg(root().join("models/11l.pgdsl")).args(sets).args(args);
    c.output().unwrap()
}


#[test]
fn golden_tiny_through_the_cli() {
    let d = tmpdir("golden");
    let g = golden("tiny");
    let gs = g.to_str().unwrap();
    let s = sets(&g);
    let want = SafeFile::open(&g).unwrap();
    for (mode, extra, prec, tol) in
        [("train", None, "f64", 1e-9), ("eval", Some("--grads"), "f64", 1e-9), ("eval", None, "f64", 1e-9), ("train", None, "f32", 1e-4)]
    {
        let out = d.join(format!("{mode}-{prec}-{}.safetensors", extra.is_some()));
        let mut args = vec!["--weights", gs, "--weights-prefix", "param.", "--tokens", gs, "--mode", mode, "--backend", "cpu", "--precision", prec];
        args.extend(extra);
        args.extend(["--out", out.to_str().unwrap()]);
        let o = pgc(&args, &s);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("loss ") && text(&o).contains(" s"), "prints loss and time: {}", text(&o));
        let got = SafeFile::open(&out).unwrap();
        let names = got.names();
        let grads = names.iter().filter(|n| n.starts_with("grad.")).count();
        assert_eq!(grads > 0, mode == "train" || extra.is_some(), "{names:?}");
        assert!(names.contains(&"loss".to_string()) && names.contains(&"logits".to_string()));
        for n in &names {
            let t = got.get(n, "").unwrap();
            match (&t.data, prec) {
                (HostData::F64(_), "f64") | (HostData::F32(_), "f32") => {}
                _ => panic!("{n}: stored in the wrong precision for {prec}"),
            }
            let w = want.get(&format!("{mode}.{n}"), "").unwrap();
            assert_eq!(t.shape, w.shape, "{n}");
            let e = rel_err(&t.data.to_f64(), &w.data.to_f64());
            assert!(e <= tol, "{mode} {prec} {n}: rel err {e:e} > {tol:e}");
        }
    }
}

#[test]
fn random_weights_and_tokens() {
    let d = tmpdir("random");
    let out = d.join("out.safetensors");
    let s = sets(&golden("tiny"));
    let s: Vec<String> = s.chunks(2).filter(|c| !c[1].starts_with("batch=") && !c[1].starts_with("seq=")).flatten().cloned().collect();
    let args = ["--random-weights", "3", "--random-tokens", "4", "--batch", "2", "--seq", "9", "--mode", "train", "--precision", "f32"];
    let o = pgc(&[&args[..], &["--out", out.to_str().unwrap()]].concat(), &s);
    assert!(o.status.success(), "{}", text(&o));
    let f = SafeFile::open(&out).unwrap();
    assert_eq!(f.get("logits", "").unwrap().shape, vec![2, 9, 64]);
    let loss = f.get("loss", "").unwrap().data.to_f64()[0];
    // tok_emb ~ N(0, 0.005) and zero projections: logits near 0, loss near ln(vocab).
    assert!((loss - 64f64.ln()).abs() < 0.05, "loss {loss}");
    // deterministic for a seed
    let out2 = d.join("out2.safetensors");
    let o = pgc(&[&args[..], &["--out", out2.to_str().unwrap()]].concat(), &s);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());
}

/// A copy of the tiny golden file with `edit` applied to its tensor list.
fn edited(d: &Path, name: &str, edit: impl FnOnce(&mut Vec<(String, HostTensor)>)) -> PathBuf {
    let mut ts = SafeFile::open(&golden("tiny")).unwrap().all().unwrap();
    edit(&mut ts);
    let p = d.join(name);
    save(&p, &ts, None).unwrap();
    p
}

/// Runs with the given weights and tokens; expects exit 2, a message naming
/// `tensor` (and containing `also`), and no output file.
fn expect_bad(d: &Path, weights: &Path, tokens: &Path, tensor: &str, also: &str) {
    let out = d.join(format!("out-{}.safetensors", tensor.replace('.', "_")));
    let s = sets(&golden("tiny"));
    let o = pgc(
        &[
            "--weights",
            weights.to_str().unwrap(),
            "--weights-prefix",
            "param.",
            "--tokens",
            tokens.to_str().unwrap(),
            "--mode",
            "train",
            "--out",
            out.to_str().unwrap(),
        ],
        &s,
    );
    let msg = text(&o);
    assert_eq!(o.status.code(), Some(2), "{msg}");
    assert!(msg.contains(&format!("`{tensor}`")), "message should name `{tensor}`: {msg}");
    assert!(msg.contains(also), "message should say `{also}`: {msg}");
    assert!(!msg.contains("panicked"), "{msg}");
    assert!(!out.exists(), "no output file on bad input");
    let left: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| !n.contains(".tmp-")), "temporary files left: {left:?}");
}

#[test]
fn bad_weights_exit_2_naming_the_tensor() {
    let d = tmpdir("badw");
    let g = golden("tiny");
    let missing = edited(&d, "missing.safetensors", |ts| ts.retain(|(n, _)| n != "param.blocks.1.mlp.fc.weight"));
    expect_bad(&d, &missing, &g, "param.blocks.1.mlp.fc.weight", "missing");
    let shape = edited(&d, "shape.safetensors", |ts| {
        let t = ts.iter_mut().find(|(n, _)| n == "param.tok_emb.weight").unwrap();
        t.1.shape = vec![32, 64];
    });
    expect_bad(&d, &shape, &g, "param.tok_emb.weight", "[64, 32]");
    let dtype = edited(&d, "dtype.safetensors", |ts| {
        let t = ts.iter_mut().find(|(n, _)| n == "param.smear.gate").unwrap();
        t.1 = HostTensor::new(t.1.shape.clone(), HostData::I32(vec![0; t.1.data.len()]));
    });
    expect_bad(&d, &dtype, &g, "param.smear.gate", "f32 or f64");
}

#[test]
fn bad_tokens_exit_2_naming_the_tensor() {
    let d = tmpdir("badt");
    let g = golden("tiny");
    let vocab = edited(&d, "vocab.safetensors", |ts| {
        let t = ts.iter_mut().find(|(n, _)| n == "input_ids").unwrap();
        let HostData::I32(v) = &mut t.1.data else { panic!() };
        v[5] = 64;
    });
    expect_bad(&d, &g, &vocab, "input_ids", "64");
    let neg = edited(&d, "neg.safetensors", |ts| {
        let t = ts.iter_mut().find(|(n, _)| n == "target_ids").unwrap();
        let HostData::I32(v) = &mut t.1.data else { panic!() };
        v[0] = -1;
    });
    expect_bad(&d, &g, &neg, "target_ids", "-1");
    let rank = edited(&d, "rank.safetensors", |ts| {
        let t = ts.iter_mut().find(|(n, _)| n == "input_ids").unwrap();
        t.1.shape = vec![2, 16, 1];
    });
    expect_bad(&d, &g, &rank, "input_ids", "rank 2");
    let missing = edited(&d, "notarget.safetensors", |ts| ts.retain(|(n, _)| n != "target_ids"));
    expect_bad(&d, &g, &missing, "target_ids", "missing");
}

#[test]
fn unavailable_backend_and_inconsistent_sets_exit_2() {
    let d = tmpdir("backend");
    let g = golden("tiny");
    let gs = g.to_str().unwrap();
    let out = d.join("o.safetensors");
    let base = ["--weights", gs, "--weights-prefix", "param.", "--tokens", gs, "--mode", "eval", "--out", out.to_str().unwrap()];
    let s = sets(&g);
    let o = pgc(&[&base[..], &["--backend", "cuda"]].concat(), &s);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not available"), "{}", text(&o));
    let mut s2 = s.clone();
    s2.extend(["--set".to_string(), "seq=8".to_string()]);
    let o = pgc(&base, &s2);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("seq"), "{}", text(&o));
    assert!(!out.exists());
}

/// `--repeat N` runs the pass N times on the CPU backends, reports the
/// first, median and fastest run, and writes the last run's outputs (the
/// same as a single run's); the GPU backends refuse it.
#[test]
fn repeat_reports_every_run_and_writes_the_same_outputs() {
    let d = tmpdir("repeat");
    let g = golden("tiny");
    let gs = g.to_str().unwrap();
    let s = sets(&g);
    for backend in ["cpu", "interp"] {
        let (once, thrice) = (d.join(format!("{backend}-1.safetensors")), d.join(format!("{backend}-3.safetensors")));
        let base = ["--weights", gs, "--weights-prefix", "param.", "--tokens", gs, "--mode", "train", "--backend", backend];
        let o = pgc(&[&base[..], &["--out", once.to_str().unwrap()]].concat(), &s);
        assert!(o.status.success(), "{}", text(&o));
        assert!(!text(&o).contains(" runs: "), "{}", text(&o));
        let o = pgc(&[&base[..], &["--repeat", "3", "--out", thrice.to_str().unwrap()]].concat(), &s);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("3 runs: first "), "{}", text(&o));
        let (a, b) = (SafeFile::open(&once).unwrap(), SafeFile::open(&thrice).unwrap());
        assert_eq!(a.names(), b.names());
        for n in a.names() {
            assert_eq!(a.get(&n, "test").unwrap().data.to_f64(), b.get(&n, "test").unwrap().data.to_f64(), "{backend} {n}");
        }
    }
    let o = pgc(&["--weights", gs, "--weights-prefix", "param.", "--tokens", gs, "--mode", "train", "--backend", "sim", "--repeat", "2", "--out", d.join("sim.safetensors").to_str().unwrap()], &s);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--repeat is for the cpu and interp backends"), "{}", text(&o));
    assert!(!d.join("sim.safetensors").exists());
}
