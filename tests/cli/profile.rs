//! `pgc profile` and `pgc compile --emit dot` from the command line: the
//! table, the `--json` schema, the roofline SVG, sampled runs, bad input;
//! and on the golden configs (every block run) the plan's fewest bytes
//! against the measured unique bytes of every kernel, within the rules of
//! [`expected_ratio`].

use crate::common;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn pgc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgc"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pgc-profile-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn sets(cfg: &[(&str, &str)]) -> Vec<String> {
    cfg.iter().filter(|(k, _)| *k != "batch" && *k != "seq").flat_map(|(k, v)| ["--set".to_string(), format!("{k}={v}")]).collect()
}

fn get<'a>(cfg: &'a [(&str, &str)], k: &str) -> &'a str {
    cfg.iter().find(|(n, _)| *n == k).unwrap().1
}

/// Run `pgc profile` on a golden config; the JSON it wrote and its stdout.
fn profile(cfg: &[(&str, &str)], mode: &str, sample: u64, tag: &str, plot: Option<&Path>) -> (Value, String) {
    let json = tmp(&format!("{tag}.json"));
    let mut c = pgc();
    c.args(["profile", "models/11l.pgdsl"]).args(sets(cfg));
    c.args(["--batch", get(cfg, "batch"), "--seq", get(cfg, "seq"), "--mode", mode, "--sample", &sample.to_string()]);
    c.arg("--json").arg(&json);
    if let Some(p) = plot {
        c.arg("--plot").arg(p);
    }
    let out = c.output().unwrap();
    let text = common::output_text(&out);
    assert!(out.status.success(), "pgc profile failed:\n{text}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (v, text)
}

const KERNEL_KEYS: [&str; 12] =
    ["name", "kind", "flops", "plan_bytes", "unique_bytes", "requested_bytes", "sectors_per_request", "bank_conflict_ways", "tensor_share", "occupancy", "estimate_s", "bound"];

fn check_schema(v: &Value) {
    let ks = v["kernels"].as_array().expect("kernels is an array");
    assert!(!ks.is_empty());
    for k in ks {
        for key in KERNEL_KEYS {
            assert!(!k[key].is_null(), "kernel {} lacks `{key}`", k["name"]);
        }
        assert!(["tensor", "memory", "issue", "launch"].contains(&k["bound"].as_str().unwrap()));
        assert!(k["estimate_s"].as_f64().unwrap() > 0.0);
        let occ = k["occupancy"].as_f64().unwrap();
        assert!(occ > 0.0 && occ <= 1.0, "occupancy {occ}");
        let t = k["tensor_share"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&t));
    }
    // sorted by estimate
    let est: Vec<f64> = ks.iter().map(|k| k["estimate_s"].as_f64().unwrap()).collect();
    assert!(est.windows(2).all(|w| w[0] >= w[1]), "kernels not sorted by estimate");
    for key in ["flops", "plan_bytes", "unique_bytes", "estimate_s"] {
        assert!(!v["totals"][key].is_null(), "totals lack `{key}`");
    }
    let sum: u64 = ks.iter().map(|k| k["plan_bytes"].as_u64().unwrap()).sum();
    assert_eq!(v["totals"]["plan_bytes"].as_u64().unwrap(), sum);
    let sum: f64 = ks.iter().map(|k| k["estimate_s"].as_f64().unwrap()).sum();
    assert!((v["totals"]["estimate_s"].as_f64().unwrap() - sum).abs() <= 1e-9 * sum.max(1.0));
    assert!(!v["sampled_blocks"].is_null() && !v["card"].is_null());
}

/// The measured unique bytes of one kernel brought to what the plan counts
/// ("each input read once and each output written once, at its storage
/// width"), by the rules the raw ratio departs from it:
/// - a kernel of several launches (the attention backward's passes, the LM
///   head's two GEMM passes) re-reads its inputs per launch: each buffer
///   counts at most its size;
/// - a buffer a kernel writes and also reads (atomically accumulated column
///   sums, dq, the loss) counts once, as written;
/// - aux buffers (the attention's per-row statistics, scratch) are not in
///   the plan;
/// - a parameter read through an index (`skip_weights[i]`) is read only at
///   that row: the plan counts the whole parameter;
/// - gathers read only the embedding rows the tokens name, and scatters
///   update only those rows (the zero-fill before them is a helper launch):
///   less than the plan.
/// Returns (adjusted bytes, raw measured bytes, bytes of parameters not read).
/// A kernel is flagged (JSON `findings`, and by name in the text's findings
/// section) exactly when its bytes exceed the plan's by more than 10%, it has
/// bank conflicts, or its sector efficiency is under 90%.
fn check_findings(v: &Value, text: &str) {
    let section = text.split_once("findings (").map(|(_, s)| s).unwrap_or("");
    let mut flagged = 0;
    for k in v["kernels"].as_array().unwrap() {
        let name = k["name"].as_str().unwrap();
        let f = k["findings"].as_array().unwrap_or_else(|| panic!("{name}: no findings array"));
        let over = k["plan_bytes"].as_u64().unwrap() > 0 && k["bytes_ratio"].as_f64().unwrap() > 1.10;
        let bank = k["bank_conflict_ways"].as_f64().unwrap() > 1.005;
        let eff = k["global_sectors"].as_f64().unwrap() > 0.0 && k["sector_efficiency"].as_f64().unwrap() < 0.90;
        assert_eq!(f.len(), over as usize + bank as usize + eff as usize, "{name}: findings {f:?} for bytes {over}, bank {bank}, sectors {eff}");
        assert_eq!(section.contains(&format!("  {name}: ")), !f.is_empty(), "{name} flagged {f:?} but the text says otherwise:\n{section}");
        flagged += !f.is_empty() as usize;
    }
    assert!(flagged > 0, "the odd config's GEMMs store bf16 one element per lane: some kernel is flagged");
}

fn adjusted_bytes(k: &Value) -> (f64, f64, f64) {
    let (mut adj, mut params_unread) = (0.0, 0.0);
    for b in k["buffers"].as_array().unwrap() {
        let label = b["buffer"].as_str().unwrap();
        let (size, r, w) = (b["bytes"].as_f64().unwrap(), b["unique_read"].as_f64().unwrap(), b["unique_written"].as_f64().unwrap());
        if label.starts_with("aux ") {
            continue;
        }
        adj += if w > 0.0 { w.min(size) } else { r.min(size) };
        if w == 0.0 && (label.starts_with("master ") || label.contains(" param ")) {
            params_unread += size - r.min(size);
        }
    }
    (adj, k["unique_bytes"].as_f64().unwrap(), params_unread)
}

#[test]
fn golden_configs_plan_bytes_match_measured_unique_bytes() {
    let mut report = String::new();
    let mut bad = Vec::new();
    for (cname, cfg) in [("tiny", common::TINY), ("odd", common::ODD)] {
        for mode in ["train", "eval"] {
            let (v, _) = profile(cfg, mode, 0, &format!("{cname}-{mode}"), None);
            check_schema(&v);
            for k in v["kernels"].as_array().unwrap() {
                let (name, kind) = (k["name"].as_str().unwrap(), k["kind"].as_str().unwrap());
                let plan = k["plan_bytes"].as_f64().unwrap();
                let (adj, raw, params_unread) = adjusted_bytes(k);
                let outside = k["outside_buffers"]["unique_read"].as_f64().unwrap() + k["outside_buffers"]["unique_written"].as_f64().unwrap();
                let ok = outside == 0.0
                    && match kind {
                        "gather" | "scatter" => adj <= plan && adj > 0.0,
                        _ => adj + params_unread == plan,
                    };
                if raw != plan || !ok {
                    report.push_str(&format!(
                        "{cname:<5} {mode:<5} {name:<44} {kind:<18} plan {plan:>8} measured {raw:>8} (x{:.3}) by the rules {adj:>8}{}\n",
                        raw / plan,
                        if ok { "" } else { "  OUTSIDE THE RULES" }
                    ));
                }
                if !ok {
                    bad.push(format!("{cname} {mode} {name} ({kind}): plan {plan}, measured {raw}, by the rules {adj}, outside the buffers {outside}"));
                }
            }
        }
    }
    println!("kernels whose measured unique bytes differ from the plan's:\n{report}");
    assert!(bad.is_empty(), "{} kernels outside the rules:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn sampled_run_names_its_blocks_and_draws_a_roofline() {
    let svg = tmp("roofline.svg");
    let (v, text) = profile(common::ODD, "train", 3, "odd-sampled", Some(&svg));
    check_schema(&v);
    assert!(text.contains("ESTIMATE"), "{text}");
    assert!(text.contains("total"), "{text}");
    assert_eq!(v["sampled_blocks"]["per_launch"], 3);
    let launches = v["sampled_blocks"]["launches"].as_array().unwrap();
    assert!(!launches.is_empty());
    let mut sampled = 0;
    for l in launches {
        let total = l["blocks_total"].as_u64().unwrap();
        let run: Vec<u64> = l["blocks_run"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap()).collect();
        assert_eq!(run.len() as u64, total.min(3));
        if total > 3 {
            sampled += 1;
            assert_eq!(&run[..2], &[0, total - 1]);
        }
        assert!(run.iter().all(|&b| b < total));
    }
    assert!(sampled > 0, "no launch of the odd config has more than 3 blocks");
    check_findings(&v, &text);
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.starts_with("<svg") || s.contains("<svg"), "not an SVG");
    assert!(s.contains("<circle"), "no kernel points in the roofline");
    assert!(s.contains("arithmetic intensity"));
}

#[test]
fn bad_input_exits_2() {
    let out = pgc().args(["profile", "models/11l.pgdsl", "--batch", "0", "--seq", "16"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", common::output_text(&out));
    let out = pgc().args(["profile", "models/nope.pgdsl", "--batch", "1", "--seq", "16"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(common::output_text(&out).contains("nope.pgdsl"));
}

#[test]
fn compile_emits_the_plan_as_graphviz() {
    let out = pgc().args(["compile", "models/11l.pgdsl", "--no-ptxas", "--emit", "dot"]).args(sets(common::TINY)).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", common::output_text(&out));
    assert!(text.starts_with("digraph plan {"), "{}", &text[..text.len().min(200)]);
    assert!(text.trim_end().ends_with('}'));
    assert!(text.contains("k0 [shape=box"));
    assert!(text.lines().any(|l| l.trim_start().starts_with('v') && l.contains(" -> k") && l.contains("[label=\"")), "no buffer -> kernel edge");
    assert!(text.contains("k0 -> v"), "the first kernel writes nothing");
    let boxes = text.matches("[shape=box").count();
    assert!(boxes > 10, "{boxes} kernels");
}
