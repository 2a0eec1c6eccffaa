//! Every GEMM configuration of the test matrix (each layout, bf16 and f32,
//! the awkward shapes, each epilogue, each tile preset) and the model-sized
//! timing configurations assemble with `ptxas -arch=sm_90a -O3` with zero
//! spills.
//!
//! With `PGC_GEMM_DUMP=DIR` the test also writes, for device checks on a real
//! GPU, `DIR/kernels/NAME.ptx` (one module per kernel) and `DIR/cases.json` /
//! `DIR/perf.json` (the cases with their configurations and launch geometry);
//! `tests/ptx/gpu/gemm_check/device.sh DIR` then checks every case against a
//! numpy reference on the GPU, times the model-sized cases against torch, and
//! runs compute-sanitizer (memcheck, racecheck, initcheck, synccheck).

use crate::common;

use common::gemm_matrix::{cases, perf_cases, wgmma_cases, EpiCase, GemmCase, AWKWARD_SHAPES, LAYOUTS};
use pgc_backends::ptx::builder::Module;
use pgc_backends::ptx::ptxas;
use pgc_backends::ptx::templates::epilogue::DType;
use pgc_backends::ptx::templates::gemm::{emit_gemm, GemmConfig, Precision};
use std::collections::BTreeMap;

fn manifest(cases: &[GemmCase]) -> Vec<serde_json::Value> {
    cases
        .iter()
        .map(|c| {
            let k = emit_gemm(&c.config).unwrap();
            serde_json::json!({
                "kernel": c.config.name,
                "m": c.m, "n": c.n, "k": c.k,
                "grid": k.grid(c.m, c.n),
                "block": k.block(),
                "smem_bytes": k.smem_bytes,
                "config": c.config,
                "epi": c.epi,
                "tensors": c.tensors(),
            })
        })
        .collect()
}

#[test]
fn all_gemm_configurations_assemble_without_spills() {
    let mut test_cases = cases();
    test_cases.extend(wgmma_cases());
    let perf = perf_cases();
    let mut module = Module::new();
    let mut kernels: BTreeMap<String, GemmConfig> = BTreeMap::new();
    for c in test_cases.iter().chain(&perf) {
        let name = c.config.name.clone();
        if let Some(prev) = kernels.get(&name) {
            assert_eq!(prev, &c.config, "two configurations named {name}");
            continue;
        }
        let k = emit_gemm(&c.config).unwrap_or_else(|e| panic!("{e}"));
        module.push(k.kernel.clone());
        kernels.insert(name, c.config.clone());
    }
    if let Some(dir) = std::env::var_os("PGC_GEMM_DUMP") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(dir.join("kernels")).unwrap();
        for k in &module.kernels {
            let mut one = Module::new();
            one.push(k.clone());
            std::fs::write(dir.join("kernels").join(format!("{}.ptx", k.name)), one.render()).unwrap();
        }
        std::fs::write(dir.join("cases.json"), serde_json::to_string_pretty(&manifest(&test_cases)).unwrap()).unwrap();
        std::fs::write(dir.join("perf.json"), serde_json::to_string_pretty(&manifest(&perf)).unwrap()).unwrap();
    }
    let text = module.render();
    let Some(report) = ptxas::assemble_or_skip(&text, "the GEMM test matrix") else { return };
    assert_eq!(report.kernels.len(), module.kernels.len(), "ptxas reported other kernels:\n{}", report.log);
    println!("{:<64} {:>5} {:>6} {:>6} {:>7}", "kernel", "regs", "spillS", "spillL", "dynsmem");
    for k in &report.kernels {
        println!(
            "{:<64} {:>5} {:>6} {:>6} {:>7}",
            k.name,
            k.registers,
            k.spill_stores,
            k.spill_loads,
            kernels[&k.name].smem_bytes()
        );
    }
    for k in &report.kernels {
        assert_eq!((k.spill_stores, k.spill_loads, k.stack_frame), (0, 0, 0), "{} spills: {k:?}", k.name);
        let threads = kernels[&k.name].tile.threads();
        assert!(k.registers * threads <= 65536, "{}: {} registers x {threads} threads", k.name, k.registers);
    }
}

/// Every layout in both precisions on the awkward shapes assembles with no
/// spills, with the heaviest epilogue (relu² storing the pre-activation).
#[test]
fn gemm_kernels_assemble_without_spills() {
    let mut m = Module::new();
    for prec in [Precision::Bf16, Precision::F32] {
        for layout in LAYOUTS {
            for (mm, nn, kk) in AWKWARD_SHAPES {
                let relu2 = EpiCase::Relu2 { pre: Some(DType::Bf16) };
                let cfg = GemmCase::new(prec, layout, (mm, nn, kk), relu2, DType::Bf16).config;
                if m.kernels.iter().any(|k| k.name == cfg.name) {
                    continue;
                }
                m.push(emit_gemm(&cfg).unwrap().kernel);
            }
        }
    }
    let text = m.render();
    let Some(r) = ptxas::assemble_or_skip(&text, "GEMM kernels") else { return };
    for k in &r.kernels {
        eprintln!("{:<60} regs {:>3} spill {}/{} smem(static) {}", k.name, k.registers, k.spill_stores, k.spill_loads, k.shared_bytes);
    }
    assert_eq!(r.kernels.len(), m.kernels.len(), "{}", r.log);
    for k in &r.kernels {
        assert_eq!((k.spill_stores, k.spill_loads, k.stack_frame), (0, 0, 0), "{k:?}");
        assert!(k.registers > 0 && k.registers <= 255, "{k:?}");
    }
}
