//! `pgc eval` on the generated PTX (simulator) agrees with the CPU reference on
//! the sample shard, and `--backend cuda` without a GPU is a clean exit 2.

use crate::common;
use common::output_text;
use std::process::Command;

const SETS: &[&str] = &[
    "--set", "layers=2", "--set", "dim=32", "--set", "heads=4", "--set", "kv_heads=2",
    "--set", "seq=128", "--set", "bigram_buckets=64", "--set", "bigram_dim=8",
];

fn eval(backend: &str) -> std::process::Output {
    let root = env!("CARGO_MANIFEST_DIR");
    Command::new(env!("CARGO_BIN_EXE_pgc"))
        .arg("eval")
        .arg(format!("{root}/models/11l.pgdsl"))
        .args(SETS)
        .args(["--random-weights", "3", "--stride", "128", "--batch", "64", "--json", "--backend", backend])
        .arg("--data")
        .arg(format!("{root}/tests/data/sample_val_000000.bin"))
        .arg("--tokenizer")
        .arg(format!("{root}/tests/data/fineweb_1024_bpe.model"))
        .env("PGC_CUDA_LIB", "none")
        .output()
        .unwrap()
}

#[test]
fn sim_and_cpu_give_the_same_bits_per_byte() {
    let get = |backend: &str| -> serde_json::Value {
        let o = eval(backend);
        assert!(o.status.success(), "{backend}: {}", output_text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (cpu, sim) = (get("cpu"), get("sim"));
    assert_eq!(cpu["tokens"], 57685);
    assert_eq!(sim["tokens"], 57685);
    assert_eq!(sim["bytes"], 148461);
    let (a, b) = (cpu["val_loss"].as_f64().unwrap(), sim["val_loss"].as_f64().unwrap());
    assert!((a - b).abs() / a < 1e-4, "cpu {a} vs sim {b}");
    let (a, b) = (cpu["val_bpb"].as_f64().unwrap(), sim["val_bpb"].as_f64().unwrap());
    assert!((a - b).abs() / a < 1e-4, "cpu {a} vs sim {b}");
}

#[test]
fn cuda_without_a_gpu_exits_2() {
    let o = eval("cuda");
    assert_eq!(o.status.code(), Some(2), "{}", output_text(&o));
    assert!(output_text(&o).contains("not available"), "{}", output_text(&o));
}
