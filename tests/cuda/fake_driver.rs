//! The CUDA backend against fake driver libraries (built here with `cc`; the
//! tests pass with a note where there is no C compiler): a driver whose
//! `cuInit` reports no device, and one that lacks `cuInit` altogether (cudarc
//! panics on a missing symbol: `CudaDevice::open` must turn that into an
//! error). Each runs in a child process of this test binary, since cudarc
//! binds the driver library once per process.

use pgc_runtime::cuda::{CudaDevice, CudaOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

const CHILD_ENV: &str = "PGC_FAKE_CUDA_CHILD";

const NO_DEVICE: &str = r#"
int cuInit(unsigned flags) { (void)flags; return 100; }
int cuGetErrorName(int e, const char **s) { (void)e; *s = "CUDA_ERROR_NO_DEVICE"; return 0; }
int cuGetErrorString(int e, const char **s) { (void)e; *s = "no CUDA-capable device is detected (fake driver)"; return 0; }
"#;

const NO_CUINIT: &str = r#"
int cuDriverGetVersion(int *v) { *v = 12040; return 0; }
"#;

/// Build `libcuda.so.1` (soname included) from `src` in a fresh folder; None without a C compiler.
fn build_fake(tag: &str, src: &str) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("pgc-fake-cuda-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let c = dir.join("fake.c");
    std::fs::write(&c, src).ok()?;
    let lib = dir.join("libcuda.so.1");
    let out = Command::new("cc").args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"]).arg(&lib).arg(&c).output().ok()?;
    if !out.status.success() {
        eprintln!("cc failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some(lib)
}

/// Run `child_open_fake` in a child process with `lib`; returns its output.
fn run_child(lib: &Path) -> (bool, String) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["--exact", &crate::test_name(module_path!(), "child_open_fake"), "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, lib)
        .output()
        .expect("run the test binary");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The child: open device 0 with the fake library and print the outcome.
#[test]
fn child_open_fake() {
    let Some(lib) = std::env::var_os(CHILD_ENV) else { return };
    match CudaDevice::open(0, &CudaOptions { library: Some(lib.into()) }) {
        Ok(d) => println!("OUTCOME: opened {} (a real driver shadows the fake)", d.info().name),
        Err(e) => println!("OUTCOME: error: {e}"),
    }
}

fn check(tag: &str, src: &str, want: &[&str]) {
    let Some(lib) = build_fake(tag, src) else {
        println!("skip: no C compiler to build a fake libcuda");
        return;
    };
    let (ok, text) = run_child(&lib);
    let _ = std::fs::remove_dir_all(lib.parent().unwrap());
    println!("{text}");
    assert!(ok, "the child failed (a panic escaped?):\n{text}");
    let outcome = text.lines().find_map(|l| l.find("OUTCOME:").map(|i| &l[i..])).unwrap_or_else(|| panic!("no outcome:\n{text}"));
    if outcome.contains("a real driver shadows the fake") || outcome.contains("could not be loaded") {
        println!("skip: {outcome}");
        return;
    }
    for w in want {
        assert!(outcome.contains(w), "`{w}` not in: {outcome}");
    }
}

#[test]
fn driver_without_a_gpu() {
    check("nodev", NO_DEVICE, &["CUDA driver not available", "cuInit failed", "CUDA_ERROR_NO_DEVICE"]);
}

#[test]
fn driver_missing_a_symbol_does_not_panic_through() {
    check("nocuinit", NO_CUINIT, &["CUDA driver not available", "could not be used", "cuInit"]);
}
