//! Planted bugs: each must be reported by the simulator as the specific error
//! (kind, kernel, block, thread, PTX line), never as wrong numbers.

use crate::harness;

use harness::*;
use pgc_runtime::device::{Device, DeviceError, DeviceExt, KernelArg, LaunchConfig};
use pgc_runtime::sim::{SimDevice, SimErrorKind, SimOptions};

#[test]
fn out_of_bounds_store_is_reported() {
    let src = ptx("bugs/oob_store.ptx");
    let d = SimDevice::new();
    let n = 200usize;
    let a = d.upload_f32(&vec![1.0; n]).unwrap();
    let b = d.upload_f32(&vec![2.0; n]).unwrap();
    let c = d.alloc(n * 4).unwrap();
    let m = d.load_module(&src).unwrap();
    let e = sim_err(d.launch(&m, "vector_add", LaunchConfig::linear(2, 128), &[KernelArg::Buf(a, 0), KernelArg::Buf(b, 0), KernelArg::Buf(c, 0), KernelArg::U32(n as u32)]));
    assert_eq!(e.kind, SimErrorKind::OutOfBounds);
    assert_eq!(e.kernel, "vector_add");
    assert_eq!(e.line, line_of(&src, "BUG: off by one"));
    // thread 199 = block 1, thread 71 stores c[200]
    assert_eq!((e.block, e.thread), ([1, 0, 0], [71, 0, 0]));
    assert!(e.msg.contains("past the start of a 800-byte allocation"), "{}", e.msg);
    let shown = e.to_string();
    assert!(shown.contains("vector_add") && shown.contains("block (1,0,0)") && shown.contains("thread (71,0,0)") && shown.contains(&format!("line {}", e.line)), "{shown}");
}

#[test]
fn missing_barrier_is_reported_as_a_race() {
    let src = ptx("bugs/missing_barrier.ptx");
    let d = SimDevice::new();
    let x = d.upload_f32(&vec![0.5; 64 * 64]).unwrap();
    let y = d.alloc(64 * 64 * 4).unwrap();
    let m = d.load_module(&src).unwrap();
    let cfg = LaunchConfig { grid: [2, 2, 1], block: [32, 8, 1], shared_bytes: 0 };
    let e = sim_err(d.launch(&m, "transpose", cfg, &[KernelArg::Buf(x, 0), KernelArg::Buf(y, 0), KernelArg::U32(64), KernelArg::U32(64)]));
    assert_eq!(e.kind, SimErrorKind::Race);
    assert!(e.msg.contains("no barrier in between"), "{}", e.msg);
    // the conflicting access is one of the tile stores/loads
    assert!(src.lines().nth(e.line as usize - 1).is_some_and(|l| l.contains(".shared.f32")), "line {}", e.line);
    // the correct kernel passes
    let good = d.load_module(&ptx("transpose.ptx")).unwrap();
    d.launch(&good, "transpose", cfg, &[KernelArg::Buf(x, 0), KernelArg::Buf(y, 0), KernelArg::U32(64), KernelArg::U32(64)]).unwrap();
}

#[test]
fn uninitialised_shared_read_is_reported() {
    let src = ptx("bugs/uninit_shared.ptx");
    let d = SimDevice::new();
    let x = d.upload_f32(&vec![1.0; 64]).unwrap();
    let out = d.alloc(4).unwrap();
    let m = d.load_module(&src).unwrap();
    let e = sim_err(d.launch(&m, "block_sum", LaunchConfig::linear(1, 64), &[KernelArg::Buf(x, 0), KernelArg::Buf(out, 0)]));
    assert_eq!(e.kind, SimErrorKind::UninitializedRead);
    assert_eq!(e.line, line_of(&src, "BUG: s[t + 64]"));
    assert_eq!(e.thread, [0, 0, 0]);
    // with 128 threads, as written for, it computes the sum
    let x = d.upload_f32(&(0..128).map(|i| i as f32).collect::<Vec<_>>()).unwrap();
    d.launch(&m, "block_sum", LaunchConfig::linear(1, 128), &[KernelArg::Buf(x, 0), KernelArg::Buf(out, 0)]).unwrap();
    assert_eq!(d.download_f32(&out).unwrap()[0], 8128.0);
}

#[test]
fn unsupported_instruction_is_a_load_error_naming_the_line() {
    let src = ptx("bugs/unsupported.ptx");
    let d = SimDevice::new();
    match d.load_module(&src) {
        Err(DeviceError::Ptx { line, msg, .. }) => {
            assert_eq!(line, 20);
            assert_eq!(line, line_of(&src, "bfind.u32"));
            assert!(msg.contains("unsupported instruction `bfind.u32`"), "{msg}");
        }
        other => panic!("expected a PTX error, got {other:?}"),
    }
}

#[test]
fn barrier_divergence_is_reported() {
    let src = ptx("bugs/barrier_divergence.ptx");
    let d = SimDevice::new();
    let out = d.alloc(128 * 4).unwrap();
    let m = d.load_module(&src).unwrap();
    let e = sim_err(d.launch(&m, "divergent_barrier", LaunchConfig::linear(1, 128), &[KernelArg::Buf(out, 0)]));
    assert_eq!(e.kind, SimErrorKind::BarrierDivergence);
    assert_eq!(e.line, line_of(&src, "BUG: inside"));
    assert!(e.msg.contains("exited"), "{}", e.msg);
    // with 64 threads every thread reaches the barrier: fine
    d.launch(&m, "divergent_barrier", LaunchConfig::linear(1, 64), &[KernelArg::Buf(out, 0)]).unwrap();
    assert_eq!(d.download_u32(&out).unwrap()[..4], [1, 0, 3, 2]);
}

#[test]
fn barrier_inside_a_warp_divergent_branch_is_reported() {
    // threads 0..15 of the warp reach the barrier, 16..31 do not
    let src = ptx("bugs/barrier_divergence.ptx").replace("setp.ge.u32         %p1, %r1, 64;", "setp.ge.u32         %p1, %r1, 16;");
    let d = SimDevice::new();
    let out = d.alloc(128 * 4).unwrap();
    let m = d.load_module(&src).unwrap();
    let e = sim_err(d.launch(&m, "divergent_barrier", LaunchConfig::linear(1, 32), &[KernelArg::Buf(out, 0)]));
    assert_eq!(e.kind, SimErrorKind::BarrierDivergence);
    assert!(e.msg.contains("not by lanes"), "{}", e.msg);
}

#[test]
fn reading_a_cp_async_destination_before_the_wait_is_reported() {
    let good = ptx("cp_async_pipeline.ptx");
    let src = good.replace("cp.async.wait_group 2;", "// (wait removed)");
    assert_ne!(src, good);
    let d = SimDevice::new();
    let x = d.upload_f32(&vec![1.0; 4 * 512]).unwrap();
    let out = d.alloc(128 * 4).unwrap();
    let m = d.load_module(&src).unwrap();
    let e = sim_err(d.launch(&m, "cp_async_pipeline", LaunchConfig::linear(1, 128), &[KernelArg::Buf(x, 0), KernelArg::Buf(out, 0), KernelArg::U32(4)]));
    assert_eq!(e.kind, SimErrorKind::AsyncCopyHazard);
    assert_eq!(e.line, line_of(&src, "ld.shared.v4.f32"));
}

#[test]
fn waiting_for_too_few_cp_async_groups_is_reported() {
    // wait_group 3 leaves the current tile's group in flight
    let src = ptx("cp_async_pipeline.ptx").replace("cp.async.wait_group 2;", "cp.async.wait_group 3;");
    let d = SimDevice::new();
    let x = d.upload_f32(&vec![1.0; 6 * 512]).unwrap();
    let out = d.alloc(128 * 4).unwrap();
    let m = d.load_module(&src).unwrap();
    let e = sim_err(d.launch(&m, "cp_async_pipeline", LaunchConfig::linear(1, 128), &[KernelArg::Buf(x, 0), KernelArg::Buf(out, 0), KernelArg::U32(6)]));
    assert_eq!(e.kind, SimErrorKind::AsyncCopyHazard);
}

#[test]
fn misaligned_access_is_reported() {
    let src = ptx("vector_add.ptx").replace("ld.global.f32       %f2, [%rd6];", "ld.global.f32       %f2, [%rd6+2];");
    let d = SimDevice::new();
    let a = d.upload_f32(&[1.0; 32]).unwrap();
    let m = d.load_module(&src).unwrap();
    let e = sim_err(d.launch(&m, "vector_add", LaunchConfig::linear(1, 32), &[KernelArg::Buf(a, 0), KernelArg::Buf(a, 0), KernelArg::Buf(a, 0), KernelArg::U32(32)]));
    assert_eq!(e.kind, SimErrorKind::Misaligned);
    assert_eq!(e.line, line_of(&src, "[%rd6+2]"));
}

#[test]
fn out_of_bounds_shared_access_is_reported() {
    // transpose with the store index running past the 4224-byte tile
    let src = ptx("transpose.ptx").replace("st.shared.f32       [%r12+3168], %f4;", "st.shared.f32       [%r12+4096], %f4;");
    let d = SimDevice::new();
    let x = d.upload_f32(&vec![0.5; 32 * 32]).unwrap();
    let y = d.alloc(32 * 32 * 4).unwrap();
    let m = d.load_module(&src).unwrap();
    let cfg = LaunchConfig { grid: [1, 1, 1], block: [32, 8, 1], shared_bytes: 0 };
    let e = sim_err(d.launch(&m, "transpose", cfg, &[KernelArg::Buf(x, 0), KernelArg::Buf(y, 0), KernelArg::U32(32), KernelArg::U32(32)]));
    assert_eq!(e.kind, SimErrorKind::OutOfBounds);
    assert!(e.msg.contains("shared"), "{}", e.msg);
    assert_eq!(e.line, line_of(&src, "[%r12+4096]"));
}

#[test]
fn shuffle_in_divergent_code_is_reported() {
    // the shuffles run only in lanes != 0 (the predicate from the lane test), but name all 32 lanes
    let src = ptx("warp_reduce.ptx").replace("shfl.sync.bfly.b32  %f2, %f1, 16, 31, -1;", "setp.eq.u32 %p2, %r1, 0;\n    @!%p2 shfl.sync.bfly.b32  %f2, %f1, 16, 31, -1;");
    let d = SimDevice::new();
    let x = d.upload_f32(&[1.0; 32]).unwrap();
    let o = d.alloc(32 * 4).unwrap();
    let m = d.load_module(&src).unwrap();
    let e = sim_err(d.launch(&m, "warp_reduce", LaunchConfig::linear(1, 32), &[KernelArg::Buf(x, 0), KernelArg::Buf(o, 0), KernelArg::Buf(o, 0), KernelArg::Buf(o, 0)]));
    assert_eq!(e.kind, SimErrorKind::WarpDivergence);
    assert!(e.msg.contains("member mask"), "{}", e.msg);
}

#[test]
fn mma_in_a_partial_warp_is_reported() {
    let d = SimDevice::new();
    let a = d.alloc(8192).unwrap();
    let m = d.load_module(&ptx("gemm_bf16_mma.ptx")).unwrap();
    // 100 threads: the last warp has 4 lanes
    let e = sim_err(d.launch(&m, "gemm_bf16_64x64x64", LaunchConfig::linear(1, 100), &[KernelArg::Buf(a, 0), KernelArg::Buf(a, 0), KernelArg::Buf(a, 0)]));
    assert!(matches!(e.kind, SimErrorKind::WarpDivergence | SimErrorKind::OutOfBounds | SimErrorKind::UninitializedRead), "{e}");
}

#[test]
fn infinite_loop_hits_the_step_limit() {
    let src = ".version 8.0\n.target sm_90a\n.address_size 64\n.visible .entry spin()\n{\n$L:\n    bra $L;\n}\n";
    let d = SimDevice::with_options(SimOptions { max_warp_steps: 10_000, ..SimOptions::default() });
    let m = d.load_module(src).unwrap();
    let e = sim_err(d.launch(&m, "spin", LaunchConfig::linear(1, 32), &[]));
    assert_eq!(e.kind, SimErrorKind::StepLimit);
    assert_eq!(e.line, 7);
}

#[test]
fn parse_errors_name_line_and_column_and_never_panic() {
    let d = SimDevice::new();
    let src = ptx("vector_add.ptx").replace("add.rn.f32          %f3, %f1, %f2;", "add.rn.f32          %f3, %f1 %f2;");
    match d.load_module(&src) {
        Err(DeviceError::Ptx { line, col, .. }) => {
            assert_eq!(line, line_of(&src, "%f1 %f2"));
            assert!(col > 1);
        }
        other => panic!("{other:?}"),
    }
    // undeclared register
    let src = ptx("vector_add.ptx").replace("st.global.f32       [%rd7], %f3;", "st.global.f32       [%rd7], %f9;");
    assert!(matches!(d.load_module(&src), Err(DeviceError::Ptx { .. })));
    // every truncation and a few mutations of every kernel: errors or loads, never a panic
    for name in ["vector_add.ptx", "warp_reduce.ptx", "transpose.ptx", "gemm_bf16_mma.ptx", "cp_async_pipeline.ptx"] {
        let src = ptx(name);
        let bytes = src.as_bytes();
        for cut in (0..bytes.len()).step_by(7) {
            if let Ok(s) = std::str::from_utf8(&bytes[..cut]) {
                let _ = d.load_module(s);
            }
        }
        let mut rng = Rng::new(name.len() as u64);
        for _ in 0..200 {
            let mut b = bytes.to_vec();
            let i = (rng.next_u64() % b.len() as u64) as usize;
            b[i] = b"%.,;[]{}@!|0f-x_ \n"[(rng.next_u64() % 18) as usize];
            if let Ok(s) = std::str::from_utf8(&b) {
                let _ = d.load_module(s);
            }
        }
    }
}

#[test]
fn wild_addresses_are_out_of_bounds_not_panics() {
    // vector loads at addresses near 2^64 and far outside any allocation
    let src = ".version 8.0\n.target sm_90a\n.address_size 64\n.visible .entry wild(.param .u64 p)\n{\n    .reg .b64 %rd<4>;\n    .reg .f32 %f<4>;\n    ld.param.u64 %rd1, [p];\n    ld.global.v4.f32 {%f0, %f1, %f2, %f3}, [%rd1+-16];\n    ret;\n}\n";
    let d = SimDevice::new();
    let m = d.load_module(src).unwrap();
    for addr in [0u64, 16, u64::MAX - 15, 1 << 63] {
        let e = sim_err(d.launch(&m, "wild", LaunchConfig::linear(1, 32), &[KernelArg::U64(addr)]));
        assert_eq!(e.kind, SimErrorKind::OutOfBounds, "{addr:#x}: {e}");
        assert_eq!(e.line, 9);
    }
}
