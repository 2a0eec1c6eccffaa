//! `pgc run --backend cpu` (the plan executor) and `--backend interp` (the
//! unfused reference interpreter) give the same loss and gradients.

use pgc_runtime::weights::SafeFile;
use std::path::Path;
use std::process::Command;

#[test]
fn cpu_and_interp_backends_agree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = std::env::temp_dir().join(format!("pgc-plan-exec-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let mut files = Vec::new();
    for backend in ["cpu", "interp"] {
        let out = d.join(format!("{backend}.safetensors"));
        let o = Command::new(env!("CARGO_BIN_EXE_pgc"))
            .arg("run")
            .arg(root.join("models/11l.pgdsl"))
            .args(["--set", "layers=2", "--set", "dim=64", "--set", "bigram_dim=32", "--set", "bigram_buckets=64"])
            .args(["--random-weights", "3", "--random-tokens", "4", "--batch", "2", "--seq", "16", "--mode", "train"])
            .args(["--backend", backend, "--precision", "f64", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        let msg = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{backend}: {msg}");
        assert!(msg.contains(&format!("{backend} backend")), "{msg}");
        files.push(SafeFile::open(&out).unwrap());
    }
    let names = files[0].names();
    assert!(names.iter().any(|n| n.starts_with("grad.")));
    for n in &names {
        let a = files[0].get(n, "").unwrap().data.to_f64();
        let b = files[1].get(n, "").unwrap().data.to_f64();
        assert_eq!(a, b, "{n}: cpu (plan) and interp differ");
    }
    std::fs::remove_dir_all(&d).unwrap();
}
