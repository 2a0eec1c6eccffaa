//! `pgc bench` without a GPU: exit 2 with a clear message, no panic; bad
//! flags exit 2. (The timing itself runs on a GPU: scripts/gpu-check.)

use crate::common;
use common::output_text as text;
use std::path::Path;
use std::process::{Command, Output};

fn bench(extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgc"))
        .arg("bench")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/11l.pgdsl"))
        .args(["--set", "layers=2"])
        .args(extra)
        .env("PGC_CUDA_LIB", "none")
        .output()
        .unwrap()
}


#[test]
fn without_a_gpu_bench_exits_2_and_says_why() {
    let o = bench(&["--backend", "cuda", "--batch", "2", "--seq", "64", "--graph"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("backend `cuda` is not available"), "{t}");
    assert!(t.contains("CUDA"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn bad_flags_exit_2() {
    for extra in [&["--batch", "0", "--seq", "64"][..], &["--batch", "2"][..], &["--batch", "2", "--seq", "64", "--backend", "sim"][..]] {
        let o = bench(extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", text(&o));
        assert!(!text(&o).contains("panicked"), "{}", text(&o));
    }
}

/// The mock CUDA driver of tests/cuda/mock_driver.rs (host memory, kernels
/// other than `vector_add` are no-ops taking 0.25 ms of its clock), built
/// with `cc`; None (the test passes with a note) without a C compiler.
fn mock_driver() -> Option<(common::TempDir, std::path::PathBuf)> {
    let src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda/mock_driver.rs")).ok()?;
    let start = src.find("const MOCK: &str = r#\"")? + "const MOCK: &str = r#\"".len();
    let end = start + src[start..].find("\"#;")?;
    let dir = common::TempDir::new("bench-mock");
    let c = dir.join("mock.c");
    std::fs::write(&c, &src[start..end]).ok()?;
    let lib = dir.join("libcuda.so.1");
    let out = Command::new("cc").args(["-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o"]).arg(&lib).arg(&c).output().ok()?;
    if !out.status.success() {
        println!("cc could not build the mock driver:\n{}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some((dir, lib))
}

/// The whole bench/run/verify path on the mock driver (the numbers mean nothing there).
#[test]
fn bench_run_and_verify_go_through_on_a_mock_driver() {
    let Some((_mock_dir, lib)) = mock_driver() else {
        println!("note: no C compiler; the mock-driver run is skipped");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tiny = ["--set", "vocab=64", "--set", "dim=32", "--set", "heads=4", "--set", "kv_heads=2", "--set", "layers=3", "--set", "bigram_buckets=32", "--set", "bigram_dim=8"];
    let pgc = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_pgc")).args(args).env("PGC_CUDA_LIB", &lib).output().unwrap();
    let model = root.join("models/11l.pgdsl");
    let m = model.to_str().unwrap();

    let o = pgc(&[&["bench", m][..], &tiny, &["--batch", "2", "--seq", "16", "--graph", "--repeats", "3", "--top", "5"]].concat());
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    for want in ["pgc mock GPU", "x floor", "total (sum of per-launch medians)", "train step (forward+backward):", "as a CUDA graph", "BENCH step_ms="] {
        assert!(t.contains(want), "wanted `{want}` in: {t}");
    }

    let dir = common::TempDir::new("bench-mock-out");
    let out = dir.join("o.safetensors");
    let inputs = dir.join("in.safetensors");
    let o = pgc(&[
        &["run", m][..],
        &tiny,
        &["--random-weights", "1", "--dense-weights", "--random-tokens", "2", "--batch", "2", "--seq", "16", "--mode", "train", "--backend", "cuda"],
        &["--out", out.to_str().unwrap(), "--dump-inputs", inputs.to_str().unwrap()],
    ]
    .concat());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(out.exists() && inputs.exists());
    let names = pgc_runtime::weights::SafeFile::open(&inputs).unwrap().names();
    for n in ["input_ids", "target_ids", "tok_emb.weight", "blocks.2.mlp.proj.weight", "bigram.scale"] {
        assert!(names.iter().any(|x| x == n), "{n} not in {names:?}");
    }

    // The mock computes nothing: verify must report a failure (exit 1), not crash.
    let o = pgc(&[&["verify", m][..], &tiny, &["--backend", "cuda", "--batch", "2", "--seq", "16"]].concat());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("verify: FAIL"), "{}", text(&o));
}
