//! Every GEMM configuration of the test matrix (each layout, bf16 and f32,
//! the awkward shapes, each epilogue, each tile preset) assembles with
//! `ptxas -arch=sm_90a -O3` with zero spills.
//!
//! With `PGC_GEMM_DUMP=DIR` the test also writes `DIR/gemm.ptx` (all kernels)
//! and `DIR/cases.json` (the cases with their configurations and launch
//! geometry), which `scripts`-less device checks can run on a real GPU.

use pgc_backends::ptx::builder::Module;
use pgc_backends::ptx::gemm::emit_gemm;
use pgc_backends::ptx::ptxas;
use pgc_backends::ptx::testing::cases;
use std::collections::BTreeMap;

#[test]
fn all_gemm_configurations_assemble_without_spills() {
    let cases = cases();
    let mut module = Module::new();
    let mut kernels = BTreeMap::new();
    let mut manifest = vec![];
    for c in &cases {
        let name = c.config.name.clone();
        if let Some(prev) = kernels.get(&name) {
            assert_eq!(prev, &c.config, "two configurations named {name}");
        } else {
            let k = emit_gemm(&c.config).unwrap_or_else(|e| panic!("{e}"));
            module.push(k.kernel.clone());
            kernels.insert(name.clone(), c.config.clone());
        }
        let k = emit_gemm(&c.config).unwrap();
        manifest.push(serde_json::json!({
            "kernel": name,
            "m": c.m, "n": c.n, "k": c.k,
            "grid": k.grid(c.m, c.n),
            "block": k.block(),
            "smem_bytes": k.smem_bytes,
            "config": c.config,
            "tensors": c.tensors(),
        }));
    }
    let text = module.render();
    if let Some(dir) = std::env::var_os("PGC_GEMM_DUMP") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("gemm.ptx"), &text).unwrap();
        std::fs::write(dir.join("cases.json"), serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    }
    let Some(report) = ptxas::assemble_or_skip(&text, "the GEMM test matrix") else { return };
    assert_eq!(report.kernels.len(), module.kernels.len(), "ptxas reported other kernels:\n{}", report.log);
    println!("{:<64} {:>5} {:>6} {:>6} {:>7}", "kernel", "regs", "spillS", "spillL", "dynsmem");
    for k in &report.kernels {
        let cfg = &kernels[&k.name];
        println!(
            "{:<64} {:>5} {:>6} {:>6} {:>7}",
            k.name,
            k.registers,
            k.spill_stores,
            k.spill_loads,
            cfg.smem_bytes()
        );
    }
    for k in &report.kernels {
        assert_eq!((k.spill_stores, k.spill_loads, k.stack_frame), (0, 0, 0), "{} spills: {k:?}", k.name);
        let threads = kernels[&k.name].tile.threads();
        assert!(k.registers * threads <= 65536, "{}: {} registers x {threads} threads", k.name, k.registers);
    }
}
