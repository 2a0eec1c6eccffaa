//! Every PTX file under tests/ptx assembles with `ptxas -arch=sm_90a`.
//! ptxas is looked up in $PGC_PTXAS, then PATH, then where
//! scripts/install-ptxas puts it (.tools/cuda-nvcc/...). Without ptxas the test
//! fails when CI is set (CI installs it) and prints a loud skip note otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

fn find_ptxas() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PGC_PTXAS") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("ptxas");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var_os("PGC_TOOLS_DIR").map(PathBuf::from).unwrap_or_else(|| root.join(".tools"));
    let p = dir.join("cuda-nvcc/nvidia/cuda_nvcc/bin/ptxas");
    p.is_file().then_some(p)
}

fn ptx_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            ptx_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "ptx") {
            out.push(p);
        }
    }
}

#[test]
fn test_kernels_assemble_with_ptxas() {
    let Some(ptxas) = find_ptxas() else {
        if std::env::var_os("CI").is_some() {
            panic!("ptxas not found (CI is set): run scripts/install-ptxas or set PGC_PTXAS");
        }
        eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        eprintln!("!!! SKIPPED: ptxas not found; the PTX test kernels were NOT assembled.");
        eprintln!("!!! Run scripts/install-ptxas (or set PGC_PTXAS) to enable this check.");
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
        return;
    };
    let mut files = Vec::new();
    ptx_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ptx"), &mut files);
    files.sort();
    assert!(files.len() >= 10, "expected the test kernels, found {files:?}");
    let out = std::env::temp_dir().join(format!("pgc-sim-ptxas-{}.cubin", std::process::id()));
    let mut failures = Vec::new();
    for f in &files {
        let r = Command::new(&ptxas).arg("-arch=sm_90a").arg(f).arg("-o").arg(&out).output().expect("running ptxas");
        if !r.status.success() {
            failures.push(format!("{}:\n{}", f.display(), String::from_utf8_lossy(&r.stderr)));
        }
    }
    let _ = std::fs::remove_file(&out);
    assert!(failures.is_empty(), "ptxas ({}) rejected:\n{}", ptxas.display(), failures.join("\n"));
    eprintln!("ptxas {} assembled {} files", ptxas.display(), files.len());
}
