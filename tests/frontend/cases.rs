//! Data-driven frontend tests, run through the `pgc` binary.
//!
//! - `tests/dsl/ok/NAME.pgdsl`: `pgc compile NAME.pgdsl --emit ir` exits 0 and
//!   prints exactly `NAME.ir` (the text IR beside it).
//! - `tests/dsl/err/NAME.pgdsl`: `pgc compile NAME.pgdsl` exits 2, writes no
//!   output file, and prints exactly `NAME.stderr`.
//!
//! Directives in a case's leading `//` comments:
//! - `// set: a=1 b=2` passes `--set a=1 --set b=2`;
//! - `// expect: LINE:COL TEXT` (error cases) asserts the first error is at
//!   LINE:COL of the file and its message contains TEXT;
//!   `// expect: global TEXT` asserts an error without a location.
//!
//! `PGC_BLESS=1 cargo test --test frontend cases::` rewrites the expected files.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cases(dir: &str) -> Vec<PathBuf> {
    let d = root().join("tests/dsl").join(dir);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&d)
        .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pgdsl"))
        .collect();
    v.sort();
    v
}

fn directives(src: &str, key: &str) -> Vec<String> {
    src.lines()
        .map(str::trim)
        .take_while(|l| l.starts_with("//") || l.is_empty())
        .filter_map(|l| l.trim_start_matches('/').trim().strip_prefix(key).map(|r| r.trim().to_string()))
        .collect()
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap().display().to_string()
}

fn run(case: &Path, extra: &[&str], out_dir: Option<&Path>) -> std::process::Output {
    let src = std::fs::read_to_string(case).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgc"));
    cmd.current_dir(root()).env("NO_COLOR", "1").arg("compile").arg(rel(case));
    for s in directives(&src, "set:") {
        for kv in s.split_whitespace() {
            cmd.arg("--set").arg(kv);
        }
    }
    if let Some(o) = out_dir {
        cmd.arg("-o").arg(o);
    }
    cmd.args(extra);
    cmd.output().expect("running pgc")
}

fn bless() -> bool {
    std::env::var_os("PGC_BLESS").is_some_and(|v| v != "0")
}

/// Compare or (when blessing) rewrite; returns a failure description.
fn check_expected(path: &Path, actual: &str) -> Option<String> {
    if bless() {
        std::fs::write(path, actual).unwrap();
        return None;
    }
    match std::fs::read_to_string(path) {
        Ok(exp) if exp == actual => None,
        Ok(exp) => Some(format!("{}: differs from the actual output\n--- expected\n{exp}\n--- actual\n{actual}", rel(path))),
        Err(_) => Some(format!("{}: missing (run with PGC_BLESS=1)\n--- actual\n{actual}", rel(path))),
    }
}

#[test]
fn ok_cases_compile_to_the_expected_ir() {
    let cases = cases("ok");
    assert!(cases.len() >= 5, "too few ok cases");
    let mut failures = Vec::new();
    for c in &cases {
        let out = run(c, &["--emit", "ir"], None);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.code() != Some(0) {
            failures.push(format!("{}: exit {:?}\n{}", rel(c), out.status.code(), String::from_utf8_lossy(&out.stderr)));
            continue;
        }
        if let Some(f) = check_expected(&c.with_extension("ir"), &stdout) {
            failures.push(f);
        }
        // The printed IR parses back.
        if let Err(e) = pgc_ir::text::parse(&stdout) {
            failures.push(format!("{}: printed IR does not parse: {e}", rel(c)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn error_cases_exit_2_with_located_messages() {
    let cases = cases("err");
    assert!(cases.len() >= 30, "need at least 30 malformed programs, have {}", cases.len());
    let mut failures = Vec::new();
    let tmp = std::env::temp_dir().join(format!("pgc-err-cases-{}", std::process::id()));
    for c in &cases {
        let src = std::fs::read_to_string(c).unwrap();
        let out_dir = tmp.join(c.file_stem().unwrap());
        let out = run(c, &[], Some(&out_dir));
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let name = rel(c);
        if out.status.code() != Some(2) {
            failures.push(format!("{name}: expected exit 2, got {:?}\n{stderr}", out.status.code()));
            continue;
        }
        if stderr.contains("panicked") || stderr.contains('\x1b') {
            failures.push(format!("{name}: panic or color codes in\n{stderr}"));
        }
        for f in ["model.ir.json", "report.json"] {
            if out_dir.join(f).exists() {
                failures.push(format!("{name}: wrote {f} despite the error"));
            }
        }
        let first = stderr.lines().next().unwrap_or("");
        let expects = directives(&src, "expect:");
        if expects.is_empty() {
            failures.push(format!("{name}: no `// expect:` directive"));
        }
        for e in expects {
            let (at, text) = e.split_once(' ').unwrap_or((e.as_str(), ""));
            let located = if at == "global" {
                first.starts_with(&format!("error: {name}: "))
            } else {
                first.starts_with(&format!("error: {name}:{at}: "))
            };
            if !located || !first.contains(text) {
                failures.push(format!("{name}: expected first line at {at} containing `{text}`, got\n{stderr}"));
            }
        }
        if let Some(f) = check_expected(&c.with_extension("stderr"), &stderr) {
            failures.push(f);
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(failures.is_empty(), "{} failure(s):\n\n{}", failures.len(), failures.join("\n\n"));
}
