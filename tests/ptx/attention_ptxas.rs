//! Every attention kernel (forward, dsum, backward; bf16 and f32; both
//! layouts; f32 and bf16 outputs; with the q/k prologue kernels) and every
//! q/k prep variant assembles with
//! `ptxas -arch=sm_90a -O3` with zero spill bytes and no stack frame, for
//! head dims 8, 16, 32 and 64. Prints the registers and shared memory of each.

use pgc_backends::ptx::templates::attention::{emit_attention, emit_backward_wgmma, emit_forward_wgmma, emit_qk_prep, emit_qk_prep_bwd, AttnConfig, AttnKernel, AttnLayout, QkPrepConfig};
use pgc_backends::ptx::builder::Module;
use pgc_backends::ptx::templates::epilogue::DType;
use pgc_backends::ptx::templates::gemm::Precision;
use pgc_backends::ptx::ptxas;
use std::collections::BTreeMap;

fn all_kernels() -> Vec<AttnKernel> {
    let mut out: Vec<AttnKernel> = vec![];
    for d in [8, 16, 32, 64] {
        for layout in [AttnLayout::Bhtd, AttnLayout::Bthd] {
            let mut cfgs = vec![AttnConfig::new(Precision::F32, d, layout).with_prologue(DType::F32)];
            for (o, g) in [(DType::Bf16, DType::F32), (DType::F32, DType::F32), (DType::Bf16, DType::Bf16)] {
                let mut c = AttnConfig::new(Precision::Bf16, d, layout).with_prologue(DType::Bf16);
                c.out = o;
                c.grad_out = g;
                cfgs.push(c);
            }
            for c in cfgs {
                let ks = emit_attention(&c).unwrap();
                out.extend(ks.all().into_iter().cloned());
                // the Hopper forward where it applies (bf16, d = 64, [B, H, T, d])
                if let Ok(k) = emit_forward_wgmma(&c) {
                    out.push(k);
                }
                if let Ok(k) = emit_backward_wgmma(&c) {
                    out.push(k);
                }
            }
            for p in [Precision::Bf16, Precision::F32] {
                for gain in [true, false] {
                    let mut c = QkPrepConfig::new(p, d, layout, gain);
                    out.push(emit_qk_prep(&c).unwrap());
                    out.push(emit_qk_prep_bwd(&c).unwrap());
                    c.dx = DType::Bf16;
                    out.push(emit_qk_prep_bwd(&c).unwrap());
                }
            }
        }
    }
    // the dsum and prep kernels recur across configurations: keep one of each name
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|k| seen.insert(k.name().to_string()));
    out
}

#[test]
fn attention_kernels_assemble_without_spills() {
    let kernels = all_kernels();
    let mut module = Module::new();
    let by_name: BTreeMap<String, &AttnKernel> = kernels.iter().map(|k| (k.name().to_string(), k)).collect();
    for k in &kernels {
        module.push(k.kernel.clone());
    }
    let text = module.render();
    let Some(report) = ptxas::assemble_or_skip(&text, "the attention kernels") else { return };
    assert_eq!(report.kernels.len(), kernels.len(), "ptxas reported other kernels:\n{}", report.log);
    println!("{:<44} {:>5} {:>6} {:>6} {:>7}", "kernel", "regs", "spillS", "spillL", "dynsmem");
    for k in &report.kernels {
        println!("{:<44} {:>5} {:>6} {:>6} {:>7}", k.name, k.registers, k.spill_stores, k.spill_loads, by_name[&k.name].smem_bytes);
    }
    for k in &report.kernels {
        assert_eq!((k.spill_stores, k.spill_loads, k.stack_frame), (0, 0, 0), "{} spills: {k:?}", k.name);
        let threads = by_name[&k.name].threads;
        assert!(k.registers * threads <= 65536, "{}: {} registers x {threads} threads", k.name, k.registers);
        assert!(by_name[&k.name].smem_bytes + k.shared_bytes <= 227 * 1024, "{}: too much shared memory", k.name);
    }
}
