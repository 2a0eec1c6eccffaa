//! The `.pgz` artifact: round trip to exactly the values each storage class
//! defines (computed independently here), QAT tensors bit-exact with the CPU
//! backend's fake quantization, corrupt and truncated input rejected without a
//! panic, and `pgc export` / `inspect` / `run --weights X.pgz` end to end.

use crate::common;

use pgc_backends::cpu::{ops::fake_quant, Tensor};
use pgc_ir::{Graph, Init, Mode, ParamInfo, Qat, QuantSpec, StorageClass};
use pgc_runtime::artifact::{self, load_bytes};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tmpdir(test: &str) -> common::TempDir {
    common::TempDir::new(&format!("artifact-{test}"))
}

/// A small deterministic generator (independent of the runtime's).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64) / ((1u64 << 53) as f64)
    }
    /// Roughly normal, scaled.
    fn normal(&mut self, std: f64) -> f64 {
        (0..6).map(|_| self.next()).sum::<f64>() / 6.0 * 2.0 - 1.0 + 0.0 * std + (self.next() - 0.5) * std
    }
}

fn param(name: &str, shape: &[usize], storage: StorageClass, prune: f64) -> ParamInfo {
    ParamInfo { name: name.into(), shape: shape.to_vec(), quant: QuantSpec { storage, qat: Qat::None, prune }, init: Init::Zeros, origin: None }
}

/// Round to the nearest f16 value (ties to even), written out with f64 arithmetic.
fn f16_round(x: f64) -> f64 {
    if x == 0.0 {
        return 0.0;
    }
    let e = (((x.to_bits() >> 52) & 0x7ff) as i32 - 1023).max(-14);
    let ulp = 2f64.powi(e - 10);
    let y = x / ulp;
    let fl = y.floor();
    let d = y - fl;
    let r = if d > 0.5 || (d == 0.5 && fl % 2.0 != 0.0) { fl + 1.0 } else { fl };
    r * ulp
}

/// The storage-class definitions, written out again from spec/MODEL.md.
fn expected(p: &ParamInfo, w: &[f64]) -> Vec<f64> {
    let mut w = w.to_vec();
    // pruning: the floor(prune * n) smallest |w| (ties: lower index first) become zero
    let k = (p.quant.prune * w.len() as f64).floor() as usize;
    let mut order: Vec<usize> = (0..w.len()).collect();
    order.sort_by(|&a, &b| w[a].abs().partial_cmp(&w[b].abs()).unwrap().then(a.cmp(&b)));
    for &i in &order[..k] {
        w[i] = 0.0;
    }
    match &p.quant.storage {
        StorageClass::F16 => w.iter().map(|&v| f16_round(v)).collect(),
        StorageClass::F32 => w.iter().map(|&v| v as f32 as f64).collect(),
        StorageClass::Int { bits, clip_percentile } => {
            let rows = if p.shape.len() >= 2 { p.shape[0] } else { 1 };
            let cols = w.len() / rows;
            let qmax = (2f64).powi(*bits as i32 - 1) - 1.0;
            let mut out = Vec::new();
            for r in 0..rows {
                let mut row: Vec<f64> = w[r * cols..(r + 1) * cols].to_vec();
                if let Some(pc) = clip_percentile {
                    let mut a: Vec<f64> = row.iter().map(|v| v.abs()).collect();
                    a.sort_by(|x, y| x.partial_cmp(y).unwrap());
                    let pos = pc / 100.0 * (a.len() - 1) as f64;
                    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
                    let c = a[lo] + (a[hi] - a[lo]) * (pos - lo as f64);
                    for v in row.iter_mut() {
                        *v = v.max(-c).min(c);
                    }
                }
                let amax = row.iter().map(|v| v.abs()).fold(0.0, f64::max);
                let mut s = f16_round((amax / qmax).max(1e-12) as f32 as f64);
                if s < 6.103515625e-05 {
                    s = 6.103515625e-05;
                }
                for v in row {
                    let x = v / s;
                    // round half to even, written out
                    let fl = x.floor();
                    let d = x - fl;
                    let r = if d > 0.5 || (d == 0.5 && fl % 2.0 != 0.0) { fl + 1.0 } else { fl };
                    out.push(r.max(-qmax - 1.0).min(qmax) * s);
                }
            }
            out
        }
    }
}

#[test]
fn round_trip_gives_exactly_the_storage_class_values() {
    let int = |bits, clip| StorageClass::Int { bits, clip_percentile: clip };
    let params = vec![
        param("a.int4", &[24, 40], int(4, None), 0.0),
        param("a.int4.pruned", &[24, 40], int(4, None), 0.05),
        param("b.int5", &[16, 33], int(5, None), 0.03),
        param("c.int6", &[32, 64], int(6, None), 0.03),
        param("d.int8.clip", &[12, 700], int(8, Some(99.99984)), 0.0),
        param("d.int8.clip90", &[5, 50], int(8, Some(90.0)), 0.0),
        param("e.int3.vec", &[17], int(3, None), 0.0),
        param("f.f16", &[8, 9], StorageClass::F16, 0.0),
        param("f.f16.pruned", &[100], StorageClass::F16, 0.1),
        param("g.f32", &[3, 3, 3], StorageClass::F32, 0.0),
        param("h.scalar", &[], StorageClass::F16, 0.0),
        param("i.zero.rows", &[4, 8], int(6, None), 0.0),
        param("j.tiny", &[2, 4], int(4, None), 0.0),
    ];
    let mut g = Lcg(7);
    let mut values: HashMap<String, Vec<f64>> = HashMap::new();
    for p in &params {
        let n: usize = p.shape.iter().product();
        let v: Vec<f64> = match p.name.as_str() {
            "i.zero.rows" => (0..n).map(|i| if i < 8 { 0.0 } else { g.normal(0.1) }).collect(),
            "j.tiny" => (0..n).map(|i| (i as f64 - 3.5) * 1e-9).collect(),
            // exact ties: multiples of half a step
            "a.int4" => (0..n).map(|i| if i % 40 == 0 { 0.7 } else { ((i % 15) as f64 - 7.0) * 0.05 }).collect(),
            _ => (0..n).map(|_| g.normal(0.3) * 0.2).collect(),
        };
        values.insert(p.name.clone(), v);
    }
    let (bytes, exported) = artifact::export(&params, &values, 0xabcdef, &[("dim".into(), 4.0)]).unwrap();
    let art = load_bytes(&bytes).unwrap();
    assert_eq!(art.ir_hash, 0xabcdef);
    assert_eq!(art.constants, vec![("dim".to_string(), 4.0)]);
    assert_eq!(art.total_bytes as usize, bytes.len());
    for p in &params {
        let t = art.get(&p.name).unwrap();
        assert_eq!(t.shape, p.shape, "{}", p.name);
        assert_eq!(t.storage, p.quant.storage, "{}", p.name);
        let want = expected(p, &values[&p.name]);
        assert_eq!(t.values.len(), want.len(), "{}", p.name);
        for (i, (a, b)) in t.values.iter().zip(&want).enumerate() {
            assert!(a.to_bits() == b.to_bits() || (*a == 0.0 && *b == 0.0), "{} [{i}]: loaded {a}, defined {b}", p.name);
        }
        // export reports the same values it writes
        assert_eq!(exported.get(&p.name).unwrap().values, t.values, "{}", p.name);
        if let StorageClass::Int { bits, .. } = p.quant.storage {
            if bits < 8 {
                assert!(matches!(t.packing, artifact::Packing::Bits | artifact::Packing::Bytes));
            }
        }
    }
    // pruning zeroed at least the requested count
    let t = art.get("a.int4.pruned").unwrap();
    assert!(t.values.iter().filter(|v| **v == 0.0).count() >= (0.05 * 960.0) as usize);
}

/// A small model's parameters, lowered for training.
fn small_model() -> Graph {
    let src = std::fs::read_to_string(root().join("models/11l.pgdsl")).unwrap();
    let sets: Vec<(String, String)> = [("vocab", "64"), ("dim", "64"), ("heads", "4"), ("kv_heads", "2"), ("layers", "3"), ("bigram_buckets", "32"), ("bigram_dim", "16"), ("seq", "16")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    pgc_frontend::compile_model(&src, "11l.pgdsl", &sets, Mode::Train).unwrap()
}

fn dense_values(g: &Graph, seed: u64) -> HashMap<String, Vec<f64>> {
    let mut r = Lcg(seed);
    g.params.iter().map(|p| (p.name.clone(), (0..p.numel()).map(|_| (r.next() - 0.5) * 0.3).collect())).collect()
}

#[test]
fn qat_tensors_equal_the_fake_quantized_weights_bit_for_bit() {
    let mut g = small_model();
    let values = dense_values(&g, 11);
    let qat: Vec<(String, u32)> = g
        .params
        .iter()
        .filter_map(|p| match p.quant.qat {
            Qat::Ste { bits } => Some((p.name.clone(), bits)),
            Qat::None => None,
        })
        .collect();
    assert!(qat.len() >= 6, "{qat:?}");
    let shapes: HashMap<String, Vec<usize>> = g.params.iter().map(|p| (p.name.clone(), p.shape.clone())).collect();
    let fq = |name: &str, bits: u32| {
        let p = ParamInfo { name: name.into(), shape: shapes[name].clone(), quant: QuantSpec::default(), init: Init::Zeros, origin: None };
        fake_quant(Tensor::<f64>::from_f64(p.shape.clone(), &values[name]), bits).to_f64_vec()
    };
    // with the model's pruning: each value is the fake-quantized weight or zero
    let (bytes, _) = artifact::export(&g.params, &values, 1, &g.constants).unwrap();
    let art = load_bytes(&bytes).unwrap();
    for (name, bits) in &qat {
        let want = fq(name, *bits);
        let got = &art.get(name).unwrap().values;
        for (a, b) in got.iter().zip(&want) {
            assert!(a.to_bits() == b.to_bits() || *a == 0.0, "{name}: {a} vs fake quant {b}");
        }
        let p = g.params.iter().find(|p| &p.name == name).unwrap();
        let k = (p.quant.prune * got.len() as f64).floor() as usize;
        assert!(p.quant.prune > 0.0 && got.iter().filter(|v| **v == 0.0).count() >= k, "{name}");
    }
    // pruning off: bit for bit
    for p in g.params.iter_mut() {
        p.quant.prune = 0.0;
    }
    let (bytes, _) = artifact::export(&g.params, &values, 1, &g.constants).unwrap();
    let art = load_bytes(&bytes).unwrap();
    for (name, bits) in &qat {
        let want = fq(name, *bits);
        let got = &art.get(name).unwrap().values;
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{name}[{i}]: {a} vs fake quant {b}");
        }
    }
}

#[test]
fn corrupt_and_truncated_artifacts_are_errors_not_panics() {
    let g = small_model();
    let values = dense_values(&g, 3);
    let (bytes, _) = artifact::export(&g.params, &values, 5, &g.constants).unwrap();
    assert!(load_bytes(&bytes).is_ok());
    let mut r = Lcg(99);
    let mut errors = 0;
    for i in 0..10_000 {
        let mut b = bytes.clone();
        match i % 4 {
            0 => b.truncate((r.next() * b.len() as f64) as usize),
            1 => {
                let p = (r.next() * b.len() as f64) as usize;
                b[p] ^= 1 << ((r.next() * 8.0) as u32);
            }
            _ => {
                // mutate the body and fix the checksum and length so the parser itself is exercised
                for _ in 0..1 + (i % 3) {
                    let p = 16 + (r.next() * (b.len() - 16) as f64) as usize;
                    b[p] = (r.next() * 256.0) as u8;
                }
                if i % 8 == 2 {
                    b.truncate(16 + (r.next() * (b.len() - 16) as f64) as usize);
                }
                let crc = artifact::crc32(&b[16..]);
                let len = (b.len() - 16) as u32;
                b[8..12].copy_from_slice(&crc.to_le_bytes());
                b[12..16].copy_from_slice(&len.to_le_bytes());
            }
        }
        match load_bytes(&b) {
            Err(e) => {
                errors += 1;
                assert!(!e.to_string().is_empty());
            }
            // a truncation or a flipped bit is always caught (length, checksum)
            Ok(_) if i % 4 < 2 => panic!("mutation {i} was not detected"),
            // with the checksum recomputed, a changed literal inside a zstd frame can still decode
            Ok(a) => assert_eq!(a.tensors.len(), g.params.len()),
        }
    }
    assert!(errors >= 5_000, "{errors}");
}

fn pgc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pgc")).args(args).output().unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

const TINY: [&str; 16] = [
    "--set", "vocab=64", "--set", "dim=32", "--set", "heads=4", "--set", "kv_heads=2", "--set", "layers=3", "--set", "bigram_buckets=32", "--set", "bigram_dim=8", "--set",
    "seq=16",
];

#[test]
fn export_inspect_and_run_with_a_pgz() {
    let d = tmpdir("cli");
    let model = root().join("models/11l.pgdsl");
    let m = model.to_str().unwrap();
    let pgz = d.join("m.pgz");
    let dump = d.join("deq.safetensors");
    let mut a = vec!["export", m];
    a.extend(TINY);
    a.extend(["--random-weights", "4", "-o", pgz.to_str().unwrap()]);
    let o = pgc(&a);
    assert!(o.status.success(), "{}", text(&o));
    let o = pgc(&["inspect", pgz.to_str().unwrap(), "--json", "--dump", dump.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ab = v["artifact_bytes"].as_u64().unwrap();
    assert_eq!(ab, std::fs::metadata(&pgz).unwrap().len());
    assert!(v["seed_format_bytes"].as_u64().unwrap() > 0);
    let o = pgc(&["inspect", pgz.to_str().unwrap(), "--code-bytes", "1000"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("blocks.0.mlp.fc.weight") && t.contains("int4") && t.contains("16000000") && t.contains("seed format"), "{t}");

    // run with the artifact == run with its dequantized dump
    let run = |w: &Path, out: &Path| {
        let mut a = vec!["run", m];
        a.extend(TINY);
        a.extend(["--weights", w.to_str().unwrap(), "--random-tokens", "1", "--batch", "2", "--mode", "eval", "--out", out.to_str().unwrap()]);
        let o = pgc(&a);
        assert!(o.status.success(), "{}", text(&o));
        pgc_runtime::weights::SafeFile::open(out).unwrap().get("loss", "loss").unwrap().data.to_f64()[0]
    };
    let l1 = run(&pgz, &d.join("o1.safetensors"));
    let l2 = run(&dump, &d.join("o2.safetensors"));
    assert_eq!(l1, l2);
    assert!(l1.is_finite());

    // truncated artifact: exit 2, the file named, no panic
    let bytes = std::fs::read(&pgz).unwrap();
    let bad = d.join("bad.pgz");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let o = pgc(&["inspect", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("bad.pgz") && !text(&o).contains("panicked"), "{}", text(&o));
    let o3 = d.join("o3.safetensors");
    let mut a = vec!["run", m];
    a.extend(TINY);
    a.extend(["--weights", bad.to_str().unwrap(), "--random-tokens", "1", "--batch", "1", "--mode", "eval", "--out", o3.to_str().unwrap()]);
    let o = pgc(&a);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!d.join("o3.safetensors").exists());
    // a model that does not match: the tensor named
    let o4 = d.join("o4.safetensors");
    let mut a = vec!["run", m];
    a.extend(TINY);
    a.extend(["--set", "dim=64", "--weights", pgz.to_str().unwrap(), "--random-tokens", "1", "--batch", "1", "--mode", "eval", "--out", o4.to_str().unwrap()]);
    let o = pgc(&a);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("shape"), "{}", text(&o));
}

#[test]
fn artifact_is_no_larger_than_the_seed_format() {
    let d = tmpdir("size");
    let m = root().join("models/11l.pgdsl");
    let pgz = d.join("m.pgz");
    let sets = ["--set", "layers=2", "--set", "dim=128", "--set", "heads=4", "--set", "kv_heads=2", "--set", "bigram_buckets=256"];
    let mut a = vec!["export", m.to_str().unwrap()];
    a.extend(sets);
    a.extend(["--random-weights", "3", "-o", pgz.to_str().unwrap()]);
    let o = pgc(&a);
    assert!(o.status.success(), "{}", text(&o));
    let o = pgc(&["inspect", pgz.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (ab, sb) = (v["artifact_bytes"].as_u64().unwrap(), v["seed_format_bytes"].as_u64().unwrap());
    assert!(ab <= sb, "artifact {ab} > seed format {sb}");
    // every int4 tensor is stored packed or in bytes, and the table says which
    for t in v["tensors"].as_array().unwrap() {
        if t["class"] == "int4" || t["class"] == "int6" {
            assert!(t["packing"] == "bitpacked" || t["packing"] == "bytes", "{t}");
        }
    }
}

#[test]
fn re_export_of_an_artifact_is_identical_and_a_foreign_ir_hash_is_noted() {
    let d = tmpdir("reexport");
    let m = root().join("models/11l.pgdsl");
    let m = m.to_str().unwrap();
    let (p1, p2, p3) = (d.join("a.pgz"), d.join("b.pgz"), d.join("c.pgz"));
    let mut a = vec!["export", m];
    a.extend(TINY);
    a.extend(["--random-weights", "8", "-o", p1.to_str().unwrap()]);
    assert!(pgc(&a).status.success());
    let mut a = vec!["export", m];
    a.extend(TINY);
    a.extend(["--weights", p1.to_str().unwrap(), "-o", p2.to_str().unwrap()]);
    let o = pgc(&a);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("note:"), "{}", text(&o));
    assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap(), "quantization is idempotent");
    let mut a = vec!["export", m];
    a.extend(TINY);
    a.extend(["--set", "softcap=20", "--weights", p1.to_str().unwrap(), "-o", p3.to_str().unwrap()]);
    let o = pgc(&a);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("IR hash"), "{}", text(&o));
}
