//! Helpers shared by the integration tests (each test binary includes this
//! module with `mod common;` and uses what it needs).
#![allow(dead_code)]

pub mod gemm;
pub mod gemm_matrix;
pub mod golden;

use pgc_ir::{Graph, Mode};
use std::collections::HashMap;
use std::process::Output;

/// The golden config `tiny` as `--set` pairs (tests/golden/tiny.safetensors).
pub const TINY: &[(&str, &str)] = &[
    ("vocab", "64"), ("dim", "32"), ("heads", "4"), ("kv_heads", "2"), ("layers", "3"),
    ("bigram_buckets", "32"), ("bigram_dim", "8"), ("seq", "16"), ("batch", "2"),
];
/// The golden config `odd` as `--set` pairs (tests/golden/odd.safetensors).
pub const ODD: &[(&str, &str)] = &[
    ("vocab", "200"), ("dim", "48"), ("heads", "3"), ("kv_heads", "1"), ("layers", "5"),
    ("bigram_buckets", "97"), ("bigram_dim", "12"), ("seq", "33"), ("batch", "3"),
];

/// `models/11l.pgdsl` lowered with `sets`; in train mode with its backward pass.
pub fn model_11l(sets: &[(&str, &str)], mode: Mode) -> Graph {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/11l.pgdsl");
    let src = std::fs::read_to_string(path).unwrap();
    let sets: Vec<(String, String)> = sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let g = pgc_frontend::compile_model(&src, path, &sets, mode).unwrap_or_else(|d| panic!("{}", d.render(&src)));
    match mode {
        Mode::Train => pgc_ir::passes::autodiff::backward(&g, "loss").unwrap(),
        Mode::Eval => g,
    }
}

/// A finished command's stdout and stderr, for assertions and failure messages.
pub fn output_text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A golden file's config (JSON in its `config` metadata) as `--set` pairs.
pub fn golden_sets(file: &pgc_runtime::weights::SafeFile) -> Vec<(String, String)> {
    let meta = file.metadata();
    let cfg: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(meta.get("config").expect("golden file has a config")).expect("config is a JSON object");
    cfg.into_iter().map(|(k, v)| (k, v.to_string())).collect()
}

/// `models/11l.pgdsl` lowered with `sets` in `mode`, always with its backward
/// pass (the golden files hold gradients for eval mode too).
pub fn model_11l_with_grads(sets: &[(String, String)], mode: Mode) -> Graph {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/11l.pgdsl");
    let src = std::fs::read_to_string(path).unwrap();
    let g = pgc_frontend::compile_model(&src, path, sets, mode).unwrap_or_else(|d| panic!("{}", d.render(&src)));
    pgc_ir::passes::autodiff::backward(&g, "loss").unwrap()
}

/// A golden file's parameters (`param.NAME`, checked against the graph's
/// shapes) and token ids, in the CPU backend's working precision.
pub fn golden_params_and_inputs<F: pgc_backends::cpu::Real>(
    file: &pgc_runtime::weights::SafeFile,
    g: &Graph,
) -> (HashMap<String, pgc_backends::cpu::Tensor<F>>, HashMap<String, pgc_backends::cpu::Tensor<F>>) {
    use pgc_backends::cpu::Tensor;
    let params = g
        .params
        .iter()
        .map(|p| {
            let t = file.get(&format!("param.{}", p.name), "a golden parameter").unwrap();
            assert_eq!(t.shape, p.shape, "param.{}", p.name);
            (p.name.clone(), Tensor::from_f64(t.shape.clone(), &t.data.to_f64()))
        })
        .collect();
    let mut inputs = HashMap::new();
    for name in ["input_ids", "target_ids"] {
        let t = file.get(name, "token ids").unwrap();
        let pgc_runtime::weights::HostData::I32(ids) = t.data else { panic!("{name} is not int32") };
        inputs.insert(name.to_string(), Tensor::<F>::int(t.shape, ids));
    }
    (params, inputs)
}

/// A temporary directory under the system's, removed (with everything in
/// it) when dropped, also when the test fails: no `pgc-*` folders left
/// behind. `PGC_KEEP_TMP=1` keeps it for debugging.
pub struct TempDir {
    root: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl TempDir {
    /// A fresh, existing directory named after `tag` (and the process).
    pub fn new(tag: &str) -> TempDir {
        let t = TempDir::absent(tag);
        std::fs::create_dir_all(&t.path).unwrap();
        t
    }

    /// A path that does not exist yet (for commands that create their output
    /// folder), inside a fresh directory that is removed on drop.
    pub fn absent(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("pgc-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let path = root.join("d");
        TempDir { root, path }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.path
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.path
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("PGC_KEEP_TMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}
