//! Every kernel the PTX backend generates for models/11l.pgdsl (train and
//! eval plans, bf16 and f32) assembles with `ptxas -arch=sm_90a` with zero
//! spill bytes. One ptxas run per plan module.

use pgc_backends::ptx::compile::{compile_program, supported_rules};
use pgc_backends::ptx::ptxas;
use pgc_ir::plan::{self, PlanOptions, Precision};
use pgc_ir::Mode;

use crate::common;
use common::model_11l as model;

#[test]
fn the_11l_model_assembles_without_spills() {
    let mut summary = Vec::new();
    let mut fails = Vec::new();
    for mode in [Mode::Train, Mode::Eval] {
        let g = model(&[("batch", "2")], mode);
        for precision in [Precision::Bf16, Precision::F32] {
            let mut opts = PlanOptions::all(&g, precision);
            opts.rules = supported_rules();
            if mode == Mode::Train {
                opts.outputs.retain(|n| n != "logits");
            }
            let p = plan::build(&g, &opts).unwrap();
            let t = std::time::Instant::now();
            let prog = compile_program(&g, &p).unwrap_or_else(|e| panic!("{mode:?} {precision:?}: {e}"));
            let compile_s = t.elapsed().as_secs_f64();
            let what = format!("11l {mode:?} {precision:?}");
            let Some(r) = ptxas::assemble_or_skip(&prog.ptx(), &what) else { return };
            let entries = &prog.entries;
            assert_eq!(r.kernels.len(), entries.len(), "{what}: ptxas reported {} of {} kernels\n{}", r.kernels.len(), entries.len(), r.log);
            let max_regs = r.kernels.iter().map(|k| k.registers).max().unwrap_or(0);
            for k in &r.kernels {
                if k.spill_stores + k.spill_loads + k.stack_frame > 0 || k.registers > 255 {
                    fails.push(format!("{what}: {k:?}"));
                }
            }
            summary.push(format!(
                "{what}: {} plan kernels, {} launches, {} entries, compile {compile_s:.2} s, max {max_regs} registers, spills {}",
                p.kernels.len(),
                prog.launches.len(),
                entries.len(),
                r.kernels.iter().map(|k| k.spill_stores + k.spill_loads).sum::<u32>()
            ));
        }
    }
    for s in &summary {
        println!("{s}");
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}
