//! The full 11-layer model (27.9M parameters) on the CPU backend: `pgc run`
//! at batch 1, seq 256 in f32 with random weights and tokens (prints the
//! time; the budget is 5 s for forward+backward in a release build),
//! and f32 against f64 at full width, which exercises the multi-threaded
//! paths (split matrix products, parallel element-wise loops) that the small
//! golden shapes do not reach.

use pgc_backends::cpu::{self, rel_err, Real, Tensor};
use pgc_ir::{Graph, Mode};
use pgc_runtime::weights::SafeFile;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn full_model_batch1_seq256_f32() {
    let d = std::env::temp_dir().join(format!("pgc-run-full-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let out = d.join("full.safetensors");
    let o = Command::new(env!("CARGO_BIN_EXE_pgc"))
        .arg("run")
        .arg(root().join("models/11l.pgdsl"))
        .args(["--random-weights", "1", "--random-tokens", "2", "--batch", "1", "--seq", "256"])
        .args(["--mode", "train", "--backend", "cpu", "--precision", "f32", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let msg = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    println!("{msg}");
    assert!(o.status.success(), "{msg}");
    assert!(msg.contains("forward+backward"), "{msg}");
    let f = SafeFile::open(&out).unwrap();
    assert_eq!(f.get("logits", "").unwrap().shape, vec![1, 256, 1024]);
    let loss = f.get("loss", "").unwrap().data.to_f64()[0];
    // Training initialisation: small tied embedding, zero output projections.
    assert!(loss.is_finite() && (loss - 1024f64.ln()).abs() < 0.1, "loss {loss}");
    // The zero-initialised output projections get gradients (and, through them, everything later).
    for n in ["grad.blocks.0.attn.proj.weight", "grad.blocks.10.mlp.proj.weight", "grad.tok_emb.weight"] {
        let g = f.get(n, "").unwrap().data.to_f64();
        assert!(g.iter().all(|x| x.is_finite()) && g.iter().any(|&x| x != 0.0), "{n}");
    }
    let names = f.names();
    assert_eq!(names.iter().filter(|n| n.starts_with("grad.")).count(), 116);
    std::fs::remove_dir_all(&d).unwrap();
}

fn run<F: Real>(g: &Graph, values: &HashMap<String, Vec<f64>>, ids: &[i32], tgt: &[i32], shape: &[usize]) -> Vec<(String, Vec<f64>)> {
    let params = g.params.iter().map(|p| (p.name.clone(), Tensor::<F>::from_f64(p.shape.clone(), &values[&p.name]))).collect();
    let mut inputs = HashMap::new();
    inputs.insert("input_ids".to_string(), Tensor::<F>::int(shape.to_vec(), ids.to_vec()));
    inputs.insert("target_ids".to_string(), Tensor::<F>::int(shape.to_vec(), tgt.to_vec()));
    let r = cpu::execute(g, &params, &inputs, None).unwrap();
    r.outputs.into_iter().map(|(n, t)| (n, t.to_f64_vec())).collect()
}

#[test]
fn full_width_f32_agrees_with_f64() {
    let (b, t) = (2, 96);
    let path = root().join("models/11l.pgdsl");
    let src = std::fs::read_to_string(&path).unwrap();
    // Full width, fewer layers to keep the f64 pass short.
    let sets: Vec<(String, String)> =
        [("layers", "3"), ("batch", "2"), ("seq", "96")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let fwd = pgc_frontend::compile_model(&src, "11l.pgdsl", &sets, Mode::Train).unwrap_or_else(|d| panic!("{}", d.render(&src)));
    let g = pgc_ir::passes::autodiff::backward(&fwd, "loss").unwrap();
    // Dense weights (the training init has zero matrices, which would hide paths).
    let mut values = pgc_runtime::init::random_params(&g.params, 5).unwrap();
    for p in &g.params {
        if p.shape.len() == 2 && p.name != "tok_emb.weight" && values[&p.name].iter().all(|&x| x == 0.0) {
            let mut rng = pgc_runtime::init::Rng::new(9, &p.name);
            let s = 1.0 / (p.shape[1] as f64).sqrt();
            values.insert(p.name.clone(), (0..p.numel()).map(|_| s * rng.normal()).collect());
        }
    }
    // Round to f32 so both precisions start from the same numbers.
    for v in values.values_mut() {
        v.iter_mut().for_each(|x| *x = *x as f32 as f64);
    }
    let (ids, tgt) = pgc_runtime::init::random_tokens(7, b, t, 1024);
    let a = run::<f32>(&g, &values, &ids, &tgt, &[b, t]);
    let r = run::<f64>(&g, &values, &ids, &tgt, &[b, t]);
    let mut worst = (String::new(), 0.0f64);
    for ((n, x), (_, y)) in a.iter().zip(&r) {
        let e = rel_err(x, y);
        if e > worst.1 {
            worst = (n.clone(), e);
        }
    }
    println!("f32 vs f64 at full width: worst {} {:.3e}", worst.0, worst.1);
    assert!(worst.1 < 2e-3, "f32 vs f64: {} {:.3e}", worst.0, worst.1);
}
