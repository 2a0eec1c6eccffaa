//! What a new user hit in one afternoon (issue 20), each case as written:
//! exit 2 with a clear message (or success), never a panic (101) or an abort
//! (134), never a destroyed special file. The allocation cases run under an
//! address-space limit (`ulimit -v`), where an attempt to allocate the
//! figure would abort.

use crate::common;
use common::{output_text as text, TempDir};
use std::path::Path;
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn model() -> String {
    root().join("models/11l.pgdsl").display().to_string()
}

fn pgc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgc")).args(args).env("PGC_PTXAS_CACHE", "0").output().unwrap()
}

/// `pgc ARGS` under `ulimit -v KB` (8 GB: the figures below need far more).
fn pgc_limited(args: &[&str]) -> Output {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!("ulimit -v 8000000 && exec '{}' {}", env!("CARGO_BIN_EXE_pgc"), quoted.join(" "));
    Command::new("sh").arg("-c").arg(script).output().unwrap()
}

fn assert_bad(o: &Output, wants: &[&str]) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    for w in wants {
        assert!(t.contains(w), "wanted `{w}` in: {t}");
    }
    assert!(!t.contains("panicked") && !t.contains("overflowed"), "{t}");
}

#[test]
fn zero_sized_dimensions_name_the_constant_in_every_command() {
    let out = TempDir::absent("robust-zero");
    let o = out.to_str().unwrap();
    for c in ["seq", "batch", "vocab", "mlp_mult", "dim"] {
        let set = format!("{c}=0");
        let r = pgc(&["compile", &model(), "--set", &set, "-o", o, "--no-ptxas"]);
        assert_bad(&r, &["zero-sized", &format!("--set {c}=0")]);
        assert!(!out.exists(), "--set {set}: nothing is written");
    }
    let r = pgc(&["run", &model(), "--set", "vocab=0", "--random-weights", "1", "--random-tokens", "2", "--batch", "1", "--seq", "8", "--mode", "eval", "--out", &format!("{o}.st")]);
    assert_bad(&r, &["zero-sized", "--set vocab=0"]);
    let r = pgc(&["export", &model(), "--set", "vocab=0", "--random-weights", "1", "-o", &format!("{o}.pgz")]);
    assert_bad(&r, &["zero-sized", "--set vocab=0"]);
    let r = pgc(&["run", &model(), "--set", "layers=2", "--random-weights", "1", "--random-tokens", "2", "--batch", "0", "--mode", "eval", "--out", &format!("{o}.st")]);
    assert_bad(&r, &["--batch and --seq must be at least 1"]);
}

/// A chain of 100,000 loop iterations (200,000 ops, the loop limit) compiles
/// to PTX: every pass is iterative (no stack overflow) and close to linear.
#[test]
fn a_100000_op_chain_compiles() {
    let d = TempDir::new("robust-chain");
    let src = "const n = 8;\nlet x = input x[2, n]: f32;\nlet y = x;\nfor i in 0..100000 { y = y * 1.0001 + 0.0; }\noutput loss = mean(mean(y * y, -1), -1);\n";
    let m = d.join("chain.pgdsl");
    std::fs::write(&m, src).unwrap();
    let out = d.join("out");
    let r = pgc(&["compile", m.to_str().unwrap(), "--no-ptxas", "-o", out.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let ptx = std::fs::read_to_string(out.join("model.ptx")).unwrap();
    assert!(ptx.matches("mul.f32").count() + ptx.matches("mul.rn.f32").count() + ptx.matches("fma.rn.f32").count() >= 100_000, "the chain is in the kernel");
}

#[test]
fn a_long_line_gives_a_short_message() {
    let d = TempDir::new("robust-long");
    let m = d.join("long.pgdsl");
    // 10 MB on one line, with many errors in it.
    let mut src = String::from("let a = 1;");
    while src.len() < 10_000_000 {
        src.push_str(" let b = @; let c = 2;");
    }
    std::fs::write(&m, &src).unwrap();
    let r = pgc(&["compile", m.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(2), "{}", &text(&r)[..2000.min(text(&r).len())]);
    assert!(r.stderr.len() < 200_000, "{} bytes of stderr", r.stderr.len());
    let t = String::from_utf8_lossy(&r.stderr);
    assert!(t.contains("error: ") && t.contains(":1:"), "{}", &t[..2000.min(t.len())]);
}

#[test]
fn allocations_sized_by_input_are_refused_with_the_figure() {
    let d = TempDir::new("robust-alloc");
    let o = d.join("x");
    let o = o.to_str().unwrap();
    let m = model();
    let cases: Vec<Vec<&str>> = vec![
        vec!["export", &m, "--set", "vocab=50000000", "--random-weights", "1", "-o", o],
        vec!["export", &m, "--set", "bigram_buckets=100000000", "--random-weights", "1", "-o", o],
        vec!["export", &m, "--set", "mlp_mult=100000", "--random-weights", "1", "-o", o],
        vec!["run", &m, "--set", "vocab=50000000", "--random-weights", "1", "--random-tokens", "2", "--batch", "1", "--seq", "64", "--mode", "eval", "--out", o],
        vec!["run", &m, "--random-weights", "1", "--random-tokens", "2", "--batch", "100000", "--seq", "100000", "--mode", "eval", "--out", o],
    ];
    for c in &cases {
        let r = pgc_limited(c);
        assert_bad(&r, &["of memory", "GB"]);
        assert!(!Path::new(o).exists(), "{c:?}: nothing written");
    }
}

#[test]
fn nonsense_is_not_silent() {
    let d = TempDir::new("robust-nonsense");
    let out = d.join("out");
    let (o, m) = (out.to_str().unwrap(), model());
    // A sequence the kernels cannot index: -o fails, the FLOP count is exact (past 2^64).
    let r = pgc(&["compile", &m, "--set", "seq=100000000", "--no-ptxas", "-o", o]);
    assert_bad(&r, &["cannot be made", "32-bit"]);
    assert!(!out.exists());
    let r = pgc(&["compile", &m, "--set", "seq=100000000", "--no-ptxas", "--emit", "report"]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    let rep: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert!(rep["forward_flops"].as_f64().unwrap() > 1e20, "{}", rep["forward_flops"]);
    // An empty model, a model without a loss, a loop over a zero constant.
    let empty = d.join("empty.pgdsl");
    std::fs::write(&empty, "").unwrap();
    assert_bad(&pgc(&["compile", empty.to_str().unwrap()]), &["declares no `output`"]);
    let noloss = d.join("noloss.pgdsl");
    std::fs::write(&noloss, "let x = input x[2, 4]: f32;\noutput y = x * 2;\n").unwrap();
    let r = pgc(&["compile", noloss.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert!(text(&r).contains("no `output loss`"), "{}", text(&r));
    let r = pgc(&["compile", &m, "--set", "layers=0"]);
    assert!(text(&r).contains("warning") && text(&r).contains("`layers` is 0"), "{}", text(&r));
    // Constants outside their domain.
    assert_bad(&pgc(&["compile", &m, "--set", "norm_eps=-1"]), &["norm_eps must be positive"]);
}

fn tiny_sets() -> Vec<String> {
    common::TINY.iter().flat_map(|(k, v)| ["--set".to_string(), format!("{k}={v}")]).collect()
}

#[test]
fn weights_files_are_checked() {
    use pgc_runtime::weights::{save, HostData, HostTensor, SafeFile};
    let d = TempDir::new("robust-weights");
    let sets = tiny_sets();
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let m = model();
    let run = |w: &Path, extra: &[&str]| {
        let out = d.join("out.safetensors");
        let mut a: Vec<&str> = vec!["run", &m];
        a.extend(&sets);
        a.extend(["--weights", w.to_str().unwrap(), "--random-tokens", "2", "--mode", "eval", "--batch", "2", "--out", out.to_str().unwrap()]);
        a.extend(extra);
        pgc(&a)
    };
    // Parameters (with a prefix) from `--dump-inputs`.
    let dump = d.join("dump.safetensors");
    let mut a: Vec<&str> = vec!["run", &m];
    a.extend(&sets);
    let out = d.join("o.safetensors");
    a.extend(["--random-weights", "1", "--random-tokens", "2", "--mode", "eval", "--batch", "2", "--out", out.to_str().unwrap(), "--dump-inputs", dump.to_str().unwrap()]);
    assert_eq!(pgc(&a).status.code(), Some(0));
    let f = SafeFile::open(&dump).unwrap();
    let names: Vec<String> = f.names().into_iter().filter(|n| n != "input_ids" && n != "target_ids").collect();
    let get = |n: &str| f.get(n, "a parameter").unwrap();
    let write = |path: &Path, rename: &dyn Fn(&str) -> String, poison: Option<&str>| {
        let ts: Vec<(String, HostTensor)> = names
            .iter()
            .map(|n| {
                let mut t = get(n);
                if poison == Some(n.as_str()) {
                    if let HostData::F32(v) = &mut t.data {
                        v[3] = f32::NAN;
                    }
                }
                (rename(n), HostTensor::new(t.shape.clone(), t.data))
            })
            .collect();
        save(path, &ts, None).unwrap();
    };
    // NaN weights: refused with the tensor and index, unless --allow-nonfinite.
    let nan = d.join("nan.safetensors");
    write(&nan, &|n| n.to_string(), Some("tok_emb.weight"));
    assert_bad(&run(&nan, &[]), &["tok_emb.weight", "flat index 3", "--allow-nonfinite"]);
    let r = run(&nan, &["--allow-nonfinite"]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    // A prefix nobody passed: say which.
    let pre = d.join("pre.safetensors");
    write(&pre, &|n| format!("model.{n}"), None);
    assert_bad(&run(&pre, &[]), &["--weights-prefix model."]);
    // An extra tensor: warned about by name.
    let extra = d.join("extra.safetensors");
    let mut ts: Vec<(String, HostTensor)> = names.iter().map(|n| (n.clone(), get(n))).collect();
    ts.push(("blocks.0.atn.c_q.weight".into(), HostTensor::new(vec![2], HostData::F32(vec![0.0, 1.0]))));
    save(&extra, &ts, None).unwrap();
    let r = run(&extra, &[]);
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    assert!(text(&r).contains("warning") && text(&r).contains("`blocks.0.atn.c_q.weight`"), "{}", text(&r));
    // A .pgz with a broken magic is not a safetensors problem.
    let pgz = d.join("broken.pgz");
    std::fs::write(&pgz, b"PGX\0\x01\0\0\0\0\0\0\0\0\0\0\0rest").unwrap();
    assert_bad(&run(&pgz, &[]), &["not a pgc artifact"]);
    let r = pgc(&["inspect", pgz.to_str().unwrap()]);
    assert_bad(&r, &["not a pgc artifact"]);
}

#[test]
fn output_files_keep_special_files_and_links() {
    let d = TempDir::new("robust-out");
    let sets = tiny_sets();
    let m = model();
    let run = |out: &str| {
        let mut a: Vec<&str> = vec!["run", &m];
        a.extend(sets.iter().map(String::as_str));
        a.extend(["--random-weights", "1", "--random-tokens", "2", "--mode", "eval", "--batch", "2", "--out", out]);
        pgc(&a)
    };
    // A character device is written through, not replaced.
    let r = run("/dev/null");
    assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
        // A symlink is followed: the target gets the file, the link stays.
        let target = d.join("target.safetensors");
        let link = d.join("link.safetensors");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let r = run(link.to_str().unwrap());
        assert_eq!(r.status.code(), Some(0), "{}", text(&r));
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(pgc_runtime::weights::SafeFile::open(&target).unwrap().names().contains(&"loss".to_string()));
    }
    // `compile -o DIR` twice: the set is replaced, nothing is left beside it.
    let out = d.join("out");
    for layers in ["layers=2", "layers=3"] {
        let r = pgc(&["compile", &m, "--set", layers, "--no-ptxas", "-o", out.to_str().unwrap()]);
        assert_eq!(r.status.code(), Some(0), "{}", text(&r));
    }
    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(rep["constants"]["layers"], 3);
    let left: Vec<String> = std::fs::read_dir(&*d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| !n.contains(".tmp")), "{left:?}");
}
