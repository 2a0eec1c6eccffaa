//! The simulator measurement of examples/sim_speed.rs and tests/sim/speed.rs
//! (included by both with `#[path]`).

#[allow(dead_code)]
#[path = "../../tests/sim/harness.rs"]
mod harness;

use harness::*;
use pgc_runtime::device::{Device, DeviceExt, KernelArg, LaunchConfig};
use pgc_runtime::sim::{SimDevice, SimOptions};

/// (best thread-instructions per second of 3 launches, thread-instructions
/// per launch) of the bf16 mma.sync GEMM tile over `batch` blocks.
pub fn measure(opts: SimOptions, batch: usize) -> (f64, u64) {
    let d = SimDevice::with_options(opts);
    let mut rng = Rng::new(5);
    let a: Vec<u16> = (0..batch * 4096).map(|_| bf16_bits(rng.uniform())).collect();
    let ba = d.upload_u16(&a).unwrap();
    let bc = d.alloc(batch * 4096 * 4).unwrap();
    let m = d.load_module(&ptx("gemm_bf16_mma.ptx")).unwrap();
    let args = [KernelArg::Buf(ba, 0), KernelArg::Buf(ba, 0), KernelArg::Buf(bc, 0)];
    d.launch(&m, "gemm_bf16_64x64x64", LaunchConfig::linear(2, 128), &args).unwrap(); // warm-up
    let mut best = 0f64;
    let mut insts = 0;
    for _ in 0..3 {
        d.launch(&m, "gemm_bf16_64x64x64", LaunchConfig::linear(batch as u32, 128), &args).unwrap();
        let st = d.last_launch_stats();
        insts = st.thread_instructions;
        best = best.max(st.thread_instructions as f64 / st.wall.as_secs_f64());
    }
    (best, insts)
}
