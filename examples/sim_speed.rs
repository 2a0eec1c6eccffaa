//! Simulator speed on a GEMM-like kernel (the bf16 mma.sync tile of
//! tests/ptx/gemm_bf16_mma.ptx over a batch of blocks), in thread-instructions
//! per second: `cargo run --release --example sim_speed`. A benchmark, not a
//! test (the figure depends on the machine's load); docs/PERF.md records it.

#[allow(dead_code)]
#[path = "../tests/sim/harness.rs"]
mod harness;

use harness::*;
use pgc_runtime::device::{Device, DeviceExt, KernelArg, LaunchConfig};
use pgc_runtime::sim::{SimDevice, SimOptions};

fn measure(opts: SimOptions, batch: usize) -> (f64, u64) {
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

fn main() {
    let batch = if cfg!(debug_assertions) { 16 } else { 256 };
    let (rate, insts) = measure(SimOptions::default(), batch);
    let (rate_nochk, _) = measure(SimOptions { racecheck: false, initcheck: false, ..SimOptions::default() }, batch);
    let (rate_1t, _) = measure(SimOptions { threads: 1, ..SimOptions::default() }, batch);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "sim_speed: GEMM 64x64x64 bf16 mma.sync x {batch} blocks, {insts} thread-instructions per launch: \
         {:.1} M thread-inst/s ({cores} host threads, all checks), {:.1} M/s (checks off), {:.1} M/s (1 host thread){}",
        rate / 1e6,
        rate_nochk / 1e6,
        rate_1t / 1e6,
        if cfg!(debug_assertions) { " [debug build: not representative]" } else { "" }
    );
}
