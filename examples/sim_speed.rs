//! Simulator speed on a GEMM-like kernel (the bf16 mma.sync tile of
//! tests/ptx/gemm_bf16_mma.ptx over a batch of blocks), in thread-instructions
//! per second: `cargo run --release --example sim_speed`. A benchmark, not a
//! test (the figure depends on the machine's load); docs/PERF.md records it.

#[path = "common/sim_measure.rs"]
mod sim_measure;

use pgc_runtime::sim::SimOptions;
use sim_measure::measure;

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
