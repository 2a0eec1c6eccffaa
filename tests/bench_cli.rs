//! `pgc bench` without a GPU: exit 2 with a clear message, no panic; bad
//! flags exit 2. (The timing itself runs on a GPU: scripts/gpu-check.)

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

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
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
