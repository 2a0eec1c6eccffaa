//! `pgc eval` and `pgc_runtime::data`: the shard reader, the SentencePiece
//! byte table (148,461 bytes over the sample shard's targets), sliding windows
//! that score every target once, and the loss against an independent
//! per-window computation on the CPU backend.

use crate::common;

use pgc_backends::cpu::{self, Tensor};
use pgc_ir::Mode;
use pgc_runtime::data::{self, parse_pieces, parse_shard, ByteTable, PieceType};
use pgc_runtime::weights::{save, HostData, HostTensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
fn shard() -> PathBuf {
    root().join("tests/data/sample_val_000000.bin")
}
fn sp() -> PathBuf {
    root().join("tests/data/fineweb_1024_bpe.model")
}
fn tmpdir(test: &str) -> common::TempDir {
    common::TempDir::new(&format!("eval-{test}"))
}

#[test]
fn byte_table_of_the_sample_shard() {
    let toks = data::read_shard(&shard()).unwrap();
    assert_eq!(toks.len(), 57_686);
    let pieces = parse_pieces(&std::fs::read(sp()).unwrap()).unwrap();
    assert_eq!(pieces.len(), 1024);
    assert!(pieces.iter().any(|p| p.kind == PieceType::Control));
    assert!(pieces.iter().any(|p| p.kind == PieceType::Unknown));
    let t = ByteTable::new(&pieces, 1024);
    let total: u64 = (1..toks.len()).map(|i| t.bytes(toks[i - 1], toks[i])).sum();
    assert_eq!(total, 148_461);
}

/// A hand-built ModelProto: every piece kind and the leading-space rule.
#[test]
fn byte_rules_on_a_synthetic_model() {
    fn piece(s: &str, kind: Option<u8>) -> Vec<u8> {
        let mut m = vec![0x0a, s.len() as u8];
        m.extend(s.as_bytes());
        m.extend([0x15, 0, 0, 0x80, 0x3f]); // score 1.0 (field 2, fixed32)
        if let Some(k) = kind {
            m.extend([0x18, k]);
        }
        let mut out = vec![0x0a, m.len() as u8];
        out.extend(m);
        out
    }
    let mut b = Vec::new();
    for (s, k) in [("<unk>", Some(2)), ("<s>", Some(3)), ("<0x41>", Some(6)), ("\u{2581}ab", None), ("\u{e9}", Some(1)), ("x", Some(5)), ("\u{2581}", Some(4))] {
        b.extend(piece(s, k));
    }
    b.extend([0x12, 0x02, 0x08, 0x01]); // a trainer_spec field, skipped
    let pieces = parse_pieces(&b).unwrap();
    assert_eq!(pieces.len(), 7);
    let t = ByteTable::new(&pieces, 9);
    assert_eq!(t.base_bytes.len(), 9);
    assert_eq!(t.bytes(4, 0), 0); // unknown
    assert_eq!(t.bytes(4, 1), 0); // control
    assert_eq!(t.bytes(1, 2), 1); // byte piece
    assert_eq!(t.bytes(1, 3), 2); // after a boundary token: no space byte
    assert_eq!(t.bytes(0, 3), 2);
    assert_eq!(t.bytes(5, 3), 2); // after an unused piece (boundary)
    assert_eq!(t.bytes(4, 3), 3); // after a normal piece: the space counts
    assert_eq!(t.bytes(2, 3), 3); // after a byte piece too
    assert_eq!(t.bytes(3, 4), 2); // UTF-8 length
    assert_eq!(t.bytes(3, 5), 0); // unused
    assert_eq!(t.bytes(3, 6), 1); // user-defined lone marker
    assert_eq!(t.bytes(3, 8), 0); // beyond the pieces
}

#[test]
fn windows_score_every_target_once() {
    for n in [2usize, 3, 10, 129, 130, 1000, 57_686] {
        for seq in [1usize, 16, 128] {
            for stride in [1usize, 7, 64, 128] {
                if stride > seq {
                    continue;
                }
                let w = data::windows(n, seq, stride);
                let mut seen = vec![0u8; n - 1];
                for (k, x) in w.iter().enumerate() {
                    assert!(x.len <= seq && x.start + x.len < n, "{n} {seq} {stride}: {x:?}");
                    assert!(x.len == seq || x.len == n - 1, "{x:?}");
                    if k == 0 {
                        assert_eq!(x.score_from, 0);
                    } else {
                        assert!(x.len - x.score_from <= stride);
                    }
                    for t in x.score_from..x.len {
                        seen[x.start + t] += 1;
                    }
                }
                assert!(seen.iter().all(|&c| c == 1), "{n} {seq} {stride}");
            }
        }
    }
}

#[test]
fn bad_shards_and_tokenizers_are_errors() {
    let good = std::fs::read(shard()).unwrap();
    let p = Path::new("x.bin");
    assert!(parse_shard(p, &good).is_ok());
    let e = parse_shard(p, &good[..good.len() - 1]).unwrap_err().to_string();
    assert!(e.contains("x.bin") && e.contains("bytes"), "{e}");
    let mut b = good.clone();
    b[0] ^= 1;
    assert!(parse_shard(p, &b).unwrap_err().to_string().contains("magic"));
    let mut b = good.clone();
    b[4] = 2;
    assert!(parse_shard(p, &b).unwrap_err().to_string().contains("version"));
    let mut b = good.clone();
    b[8] ^= 4;
    assert!(parse_shard(p, &b).is_err());
    assert!(parse_shard(p, &good[..100]).is_err());
    // tokenizer: truncations and mutations never panic
    let m = std::fs::read(sp()).unwrap();
    let mut s = 12345u64;
    for i in 0..3000 {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut b = m.clone();
        if i % 2 == 0 {
            b.truncate((s >> 20) as usize % b.len());
        } else {
            let at = (s >> 20) as usize % b.len();
            b[at] = (s >> 8) as u8;
        }
        let _ = parse_pieces(&b);
    }
    assert!(parse_pieces(&[]).is_err());
    assert!(parse_pieces(&[0x0a, 0xff]).is_err());
}

const SETS: [(&str, &str); 8] =
    [("vocab", "1024"), ("dim", "32"), ("heads", "2"), ("kv_heads", "1"), ("layers", "2"), ("bigram_buckets", "32"), ("bigram_dim", "8"), ("seq", "128")];

/// Independent: one forward per window (batch 1), NLL from a plain log-softmax.
fn reference_loss(values: &HashMap<String, Vec<f64>>, toks: &[u16], seq: usize, stride: usize) -> f64 {
    let src = std::fs::read_to_string(root().join("models/11l.pgdsl")).unwrap();
    let mut sets: Vec<(String, String)> = SETS.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    sets.push(("batch".into(), "1".into()));
    let g = pgc_frontend::compile_model(&src, "11l.pgdsl", &sets, Mode::Eval).unwrap();
    let params: HashMap<String, Tensor<f64>> = g.params.iter().map(|p| (p.name.clone(), Tensor::from_f64(p.shape.clone(), &values[&p.name]))).collect();
    let targets = toks.len() - 1;
    let (mut sum, mut count) = (0.0f64, 0usize);
    let mut scored_to = 0usize; // targets [0, scored_to) done
    while scored_to < targets {
        let end = if scored_to == 0 { seq } else { (scored_to + stride).min(targets) };
        let start = end - seq;
        let x: Vec<i32> = toks[start..end].iter().map(|&t| t as i32).collect();
        let y: Vec<i32> = toks[start + 1..end + 1].iter().map(|&t| t as i32).collect();
        let mut inputs = HashMap::new();
        inputs.insert("input_ids".to_string(), Tensor::<f64>::int(vec![1, seq], x));
        inputs.insert("target_ids".to_string(), Tensor::<f64>::int(vec![1, seq], y.clone()));
        let run = cpu::execute(&g, &params, &inputs, Some(&["logits"])).unwrap();
        let z = run.get("logits").unwrap().to_f64_vec();
        let v = z.len() / seq;
        for t in (scored_to - start)..seq {
            let row = &z[t * v..(t + 1) * v];
            let lse = row.iter().map(|a| a.exp()).sum::<f64>().ln();
            sum += lse - row[y[t] as usize];
            count += 1;
        }
        scored_to = end;
    }
    assert_eq!(count, targets);
    sum / count as f64
}

#[test]
fn eval_matches_an_independent_per_window_computation() {
    let d = tmpdir("loss");
    let src = std::fs::read_to_string(root().join("models/11l.pgdsl")).unwrap();
    let sets: Vec<(String, String)> = SETS.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    let g = pgc_frontend::compile_model(&src, "11l.pgdsl", &sets, Mode::Eval).unwrap();
    // dense weights (the initialisation zeroes the projections)
    let mut s = 42u64;
    let mut values = HashMap::new();
    let mut ts = Vec::new();
    for p in &g.params {
        let fan = *p.shape.last().unwrap_or(&1) as f64;
        let v: Vec<f64> = (0..p.numel())
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (((s >> 11) as f64 / (1u64 << 53) as f64) - 0.5) * 2.0 / fan.sqrt()
            })
            .collect();
        ts.push((p.name.clone(), HostTensor::new(p.shape.clone(), HostData::F64(v.clone()))));
        values.insert(p.name.clone(), v);
    }
    let w = d.join("w.safetensors");
    save(&w, &ts, None).unwrap();
    let toks = data::read_shard(&shard()).unwrap();
    for stride in [64usize, 128] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pgc"));
        c.arg("eval").arg(root().join("models/11l.pgdsl"));
        for (k, v) in SETS {
            c.args(["--set", &format!("{k}={v}")]);
        }
        c.arg("--weights").arg(&w).arg("--data").arg(root().join("tests/data/sample_val_*.bin")).arg("--tokenizer").arg(sp());
        c.args(["--stride", &stride.to_string(), "--batch", "5", "--backend", "cpu", "--json"]);
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["tokens"].as_u64(), Some(57_685));
        assert_eq!(v["bytes"].as_u64(), Some(148_461));
        let loss = v["val_loss"].as_f64().unwrap();
        let want = reference_loss(&values, &toks, 128, stride);
        assert!((loss - want).abs() <= 1e-9, "stride {stride}: {loss} vs {want}");
        let bpb = v["val_bpb"].as_f64().unwrap();
        assert!((bpb - want / std::f64::consts::LN_2 * 57_685.0 / 148_461.0).abs() < 1e-9);
    }
    // a bad shard: exit 2, named
    let bad = d.join("bad.bin");
    std::fs::write(&bad, &std::fs::read(shard()).unwrap()[..5000]).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_pgc"));
    c.arg("eval").arg(root().join("models/11l.pgdsl"));
    for (k, v) in SETS {
        c.args(["--set", &format!("{k}={v}")]);
    }
    c.args(["--random-weights", "1", "--data"]).arg(&bad).arg("--tokenizer").arg(sp()).arg("--json");
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.bin"));
}
