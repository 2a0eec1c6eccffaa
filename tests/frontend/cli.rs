//! `pgc compile` end to end: parameter counts, report.json, model.ir.json
//! round trip, `--emit`, `--dump-after`, exit statuses, no partial outputs.

use crate::common;

use pgc_ir::Graph;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pgc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgc")).current_dir(root()).env("NO_COLOR", "1").args(args).output().expect("running pgc")
}

fn tmpdir(name: &str) -> common::TempDir {
    common::TempDir::absent(&format!("cli-{name}"))
}

fn compile_to(model: &str, sets: &[&str], name: &str) -> (Output, common::TempDir) {
    let dir = tmpdir(name);
    let mut args = vec!["compile", model, "-o", dir.to_str().unwrap()];
    for s in sets {
        args.push("--set");
        args.push(s);
    }
    (pgc(&args), dir)
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

#[test]
fn param_counts_in_report_and_summary() {
    for (model, sets, params, printed) in [
        ("models/11l.pgdsl", vec![], 27_878_489u64, "parameters: 27,878,489"),
        ("models/10l_int5.pgdsl", vec![], 25_517_137, "parameters: 25,517,137"),
        ("models/11l.pgdsl", vec!["layers=9", "bigram_buckets=4096"], 22_368_841, "parameters: 22,368,841"),
    ] {
        let (out, dir) = compile_to(model, &sets, &format!("count{params}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(printed), "{stdout}");
        let r = report(&dir);
        assert_eq!(r["params"].as_u64(), Some(params));
        let st = r["storage"].as_object().unwrap();
        let sum: u64 = st.values().map(|c| c["params"].as_u64().unwrap()).sum();
        assert_eq!(sum, params);
        let bytes: u64 = st.values().map(|c| c["bytes"].as_u64().unwrap()).sum();
        assert_eq!(r["raw_artifact_bytes"].as_u64(), Some(bytes));
        assert!(r["forward_flops_per_token"].as_u64().unwrap() > 0);
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn report_numbers_for_11l() {
    let (out, dir) = compile_to("models/11l.pgdsl", &[], "report11");
    assert_eq!(out.status.code(), Some(0));
    let r = report(&dir);
    // int4: 22 MLP matrices of 1536x512, packed two per byte, plus an f16 scale per row.
    assert_eq!(r["storage"]["int4"]["params"].as_u64(), Some(22 * 1536 * 512));
    assert_eq!(r["storage"]["int4"]["bytes"].as_u64(), Some(22 * 1536 * 512 / 2 + 2 * 11 * (1536 + 512)));
    // Matrix FLOPs: 2 per weight per token (blocks, bigram projection, tied head),
    // plus causal attention 2*H*T*d per layer and token.
    let mats = 11 * (512 * 512 * 2 + 256 * 512 * 2 + 1536 * 512 * 2) + 512 * 128 + 1024 * 512;
    assert_eq!(r["forward_flops_per_token"].as_u64(), Some(2 * mats + 11 * 2 * 8 * 2048 * 64));
    assert_eq!(r["constants"]["layers"].as_u64(), Some(11));
    assert_eq!(r["constants"]["norm_eps"].as_f64(), Some(1.1920928955078125e-07));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn ir_json_round_trips_through_the_file() {
    let (out, dir) = compile_to("models/11l.pgdsl", &["layers=3"], "json");
    assert_eq!(out.status.code(), Some(0));
    let text = std::fs::read_to_string(dir.join("model.ir.json")).unwrap();
    let g: Graph = serde_json::from_str(&text).unwrap();
    let again = serde_json::to_string(&g).unwrap();
    let g2: Graph = serde_json::from_str(&again).unwrap();
    assert_eq!(g, g2);
    assert_eq!(text.trim_end(), again);
    assert_eq!(g.mode, pgc_ir::Mode::Train);
    assert!(pgc_ir::verify(&g).is_ok());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn emit_ir_prints_text_that_parses_to_the_json_graph() {
    let dir = tmpdir("emit");
    let out = pgc(&["compile", "models/11l.pgdsl", "--set", "layers=2", "--emit", "ir,report", "-o", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    // The summary moves to stderr when stdout carries emitted content.
    assert!(String::from_utf8_lossy(&out.stderr).contains("parameters:"));
    let ir_end = stdout.find("\n}\n").expect("text IR") + 3;
    let g = pgc_ir::text::parse(&stdout[..ir_end]).unwrap();
    let j: Graph = serde_json::from_str(&std::fs::read_to_string(dir.join("model.ir.json")).unwrap()).unwrap();
    assert_eq!(g, j);
    let rep: serde_json::Value = serde_json::from_str(&stdout[ir_end..]).unwrap();
    assert_eq!(rep["params"], report(&dir)["params"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn dump_after_lower() {
    let dir = tmpdir("dump");
    let out = pgc(&["compile", "models/10l_int5.pgdsl", "--set", "layers=1", "--dump-after", "lower", "-o", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with("// IR after pass `lower`\ngraph train {"), "{stdout}");
    assert!(dir.join("after-lower.ir").exists());
    let bad = pgc(&["compile", "models/11l.pgdsl", "--dump-after", "nosuchpass"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("lower"));
    let help = pgc(&["compile", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("possible values: lower"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_input_exits_2_and_writes_nothing() {
    let dir = tmpdir("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("bad.pgdsl");
    std::fs::write(&model, "const dim = 4;\nlet w = param w[dim, dim]: f32;\nlet x = input x[3, 5]: f32;\noutput y = linear(x, w);\n").unwrap();
    let out_dir = dir.join("out");
    let out = pgc(&["compile", model.to_str().unwrap(), "-o", out_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.pgdsl:4:12: linear: inner dimensions differ"), "{stderr}");
    assert!(stderr.contains("output y = linear(x, w);"), "{stderr}");
    assert!(!out_dir.join("report.json").exists() && !out_dir.join("model.ir.json").exists());

    let missing = pgc(&["compile", "models/nonexistent.pgdsl"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read models/nonexistent.pgdsl"));

    let malformed = pgc(&["compile", "models/11l.pgdsl", "--set", "layers"]);
    assert_eq!(malformed.status.code(), Some(2));

    let unknown = pgc(&["compile", "models/11l.pgdsl", "--set", "layer=3"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("did you mean `layers`?"));

    std::fs::write(&model, [0xffu8, 0xfe, b'\n']).unwrap();
    let binary = pgc(&["compile", model.to_str().unwrap()]);
    assert_eq!(binary.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&binary.stderr).contains("not UTF-8"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn one_line_edits_of_the_model() {
    // relu^2 -> leaky-relu^2, dropping SmearGate, dropping the bigram, int4 -> int5:
    // each is one line of models/11l.pgdsl.
    let src = std::fs::read_to_string(root().join("models/11l.pgdsl")).unwrap();
    let dir = tmpdir("edits");
    std::fs::create_dir_all(&dir).unwrap();
    type Check = Box<dyn Fn(&serde_json::Value, &Graph)>;
    let edits: [(&str, &str, Check); 4] = [
        (
            "    let h = relu(linear(u, w_fc));",
            "    let h = leaky_relu(linear(u, w_fc), 0.5);",
            Box::new(|_, g| assert!(g.nodes.iter().any(|n| matches!(n.op, pgc_ir::Op::LeakyRelu { .. })))),
        ),
        ("x = scope smear { smear(x) };", "", Box::new(|r, g| {
            assert_eq!(r["params"].as_u64(), Some(27_878_489 - 512));
            assert!(g.param("smear.gate").is_none());
        })),
        ("x = x + scope bigram { bigram(ids) };", "", Box::new(|r, _| {
            assert_eq!(r["params"].as_u64(), Some(27_878_489 - 10240 * 128 - 512 * 128 - 1));
        })),
        ("const mlp_bits = 4;", "const mlp_bits = 5;", Box::new(|r, _| {
            assert_eq!(r["storage"]["int5"]["params"].as_u64(), Some(22 * 1536 * 512));
        })),
    ];
    for (i, (from, to, check)) in edits.iter().enumerate() {
        let lines: Vec<&str> = src.lines().collect();
        let hits: Vec<usize> = (0..lines.len()).filter(|&k| lines[k].contains(from)).collect();
        assert_eq!(hits.len(), 1, "`{from}` must be on exactly one line");
        let edited: Vec<String> =
            lines.iter().enumerate().map(|(k, l)| if k == hits[0] { l.replace(from, to) } else { l.to_string() }).collect();
        let path = dir.join(format!("edit{i}.pgdsl"));
        std::fs::write(&path, edited.join("\n")).unwrap();
        let out_dir = dir.join(format!("out{i}"));
        let out = pgc(&["compile", path.to_str().unwrap(), "-o", out_dir.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "edit {i}: {}", String::from_utf8_lossy(&out.stderr));
        let g: Graph = serde_json::from_str(&std::fs::read_to_string(out_dir.join("model.ir.json")).unwrap()).unwrap();
        check(&report(&out_dir), &g);
    }
    let _ = std::fs::remove_dir_all(dir);
}
