//! The simulator's work on a GEMM-like kernel (the bf16 mma.sync tile of
//! tests/ptx/gemm_bf16_mma.ptx over a batch of blocks) does not depend on its
//! options: the same thread-instructions with checks on or off and on one or
//! many host threads. The speed is a benchmark, not a test (it depends on the
//! machine's load): `cargo run --release --example sim_speed`.

#[path = "../../examples/common/sim_measure.rs"]
mod sim_measure;

use pgc_runtime::sim::SimOptions;
use sim_measure::measure;

#[test]
fn gemm_work_does_not_depend_on_the_options() {
    let batch = 16;
    let (rate, insts) = measure(SimOptions::default(), batch);
    let (rate_nochk, insts_nochk) = measure(SimOptions { racecheck: false, initcheck: false, ..SimOptions::default() }, batch);
    let (rate_1t, insts_1t) = measure(SimOptions { threads: 1, ..SimOptions::default() }, batch);
    // performance counters on (off in the three runs above): printed, not asserted
    let (rate_cnt, insts_cnt) = measure(SimOptions { counters: true, ..SimOptions::default() }, batch);
    assert!(insts > 0);
    assert_eq!(insts_nochk, insts, "the checks change the instructions executed");
    assert_eq!(insts_1t, insts, "the host threads change the instructions executed");
    assert_eq!(insts_cnt, insts, "the counters change the instructions executed");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "sim_speed: GEMM 64x64x64 bf16 mma.sync x {batch} blocks, {insts} thread-instructions per launch: \
         {:.1} M thread-inst/s ({cores} host threads, all checks), {:.1} M/s (checks off), {:.1} M/s (1 host thread), {:.1} M/s (counters on){}",
        rate / 1e6,
        rate_nochk / 1e6,
        rate_1t / 1e6,
        rate_cnt / 1e6,
        if cfg!(debug_assertions) { " [debug build: not representative]" } else { "" }
    );
}
