//! Hopper's asynchronous instructions through the simulator: TMA copies
//! (every swizzle mode, boxes over the tensor's edge), mbarrier phases,
//! wgmma from shared-memory descriptors and from registers, and a planted
//! bug for each sanitizer check (each test fails without its check).
//! The semantics follow the PTX ISA; docs SUBSET.md says which were checked
//! on silicon.

use crate::harness::*;
use pgc_runtime::device::{DevBuf, Device, DeviceError, DeviceExt, KernelArg, LaunchConfig, TensorMap, TmaDtype, TmaSwizzle};
use pgc_runtime::sim::{SimDevice, SimErrorKind};

fn upload_u16(d: &SimDevice, v: &[u16]) -> DevBuf {
    d.upload_u16(v).unwrap()
}

fn download_u16(d: &SimDevice, b: &DevBuf) -> Vec<u16> {
    let mut bytes = vec![0u8; b.bytes];
    d.copy_from_device(b, &mut bytes).unwrap();
    bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()
}

/// The shared byte offset of box element (r, c) under a swizzle, for a box of
/// `box_cols` 2-byte elements per row starting at a 1024-aligned address.
fn swizzled(r: usize, c: usize, box_cols: usize, sw: TmaSwizzle) -> usize {
    sw.apply(((r * box_cols + c) * 2) as u32) as usize
}

struct Roundtrip {
    rows: usize,
    cols: usize,
    pitch: usize,
    box_rows: usize,
    box_cols: usize,
    sw: TmaSwizzle,
}

/// Runs tma_roundtrip over a rows x cols bf16 tensor (row pitch `pitch`
/// elements); returns the source, the destination and the raw shared dumps.
fn roundtrip(rt: &Roundtrip, src_text: &str) -> Result<(Vec<u16>, Vec<u16>, Vec<u16>), DeviceError> {
    let d = SimDevice::new();
    let m = d.load_module(src_text).unwrap();
    let mut rng = Rng::new(7);
    let n = rt.rows * rt.pitch;
    let src: Vec<u16> = (0..n).map(|_| bf16_bits(rng.uniform())).collect();
    let a = upload_u16(&d, &src);
    let b = upload_u16(&d, &vec![0xdead; n]);
    let (gx, gy) = (rt.cols.div_ceil(rt.box_cols), rt.rows.div_ceil(rt.box_rows));
    let box_bytes = rt.box_rows * rt.box_cols * 2;
    let raw = d.alloc(gx * gy * box_bytes).unwrap();
    let map = |buf: &DevBuf| TensorMap::matrix(buf, 0, TmaDtype::Bf16, rt.rows as u64, rt.cols as u64, (rt.pitch * 2) as u64, rt.box_rows as u32, rt.box_cols as u32, rt.sw).unwrap();
    let cfg = LaunchConfig { grid: [gx as u32, gy as u32, 1], block: [128, 1, 1], shared_bytes: 0 };
    d.launch(
        &m,
        "tma_roundtrip",
        cfg,
        &[KernelArg::TensorMap(map(&a)), KernelArg::TensorMap(map(&b)), KernelArg::Buf(raw, 0), KernelArg::U32(box_bytes as u32), KernelArg::U32(rt.box_cols as u32), KernelArg::U32(rt.box_rows as u32)],
    )?;
    Ok((src, download_u16(&d, &b), download_u16(&d, &raw)))
}

#[test]
fn tma_load_and_store_round_trip_in_every_swizzle_mode() {
    let text = ptx("hopper/tma_roundtrip.ptx");
    for (sw, box_cols) in [(TmaSwizzle::None, 64), (TmaSwizzle::B32, 16), (TmaSwizzle::B64, 32), (TmaSwizzle::B128, 64)] {
        // 70 columns and 100 rows: boxes hang over the right and bottom edges
        let rt = Roundtrip { rows: 100, cols: 70, pitch: 72, box_rows: 64, box_cols, sw };
        let (src, dst, raw) = roundtrip(&rt, &text).unwrap_or_else(|e| panic!("{sw:?}: {e}"));
        let gx = rt.cols.div_ceil(box_cols);
        let box_elems = rt.box_rows * box_cols;
        for by in 0..rt.rows.div_ceil(rt.box_rows) {
            for bx in 0..gx {
                let dump = &raw[(by * gx + bx) * box_elems..][..box_elems];
                for r in 0..rt.box_rows {
                    for c in 0..box_cols {
                        let (y, x) = (by * rt.box_rows + r, bx * box_cols + c);
                        let want = if y < rt.rows && x < rt.cols { src[y * rt.pitch + x] } else { 0 };
                        let got = dump[swizzled(r, c, box_cols, sw) / 2];
                        assert_eq!(got, want, "{sw:?}: box ({bx},{by}) element ({r},{c})");
                    }
                }
            }
        }
        for y in 0..rt.rows {
            for x in 0..rt.pitch {
                let want = if x < rt.cols { src[y * rt.pitch + x] } else { 0xdead };
                assert_eq!(dst[y * rt.pitch + x], want, "{sw:?}: stored ({y},{x}): the store writes the tensor and nothing past its columns");
            }
        }
    }
}

#[test]
fn a_tensor_map_the_driver_would_refuse_is_refused() {
    let d = SimDevice::new();
    let b = d.alloc(4096).unwrap();
    // 256-byte inner box with a 128-byte swizzle span
    assert!(TensorMap::matrix(&b, 0, TmaDtype::Bf16, 8, 128, 256, 8, 128, TmaSwizzle::B128).unwrap_err().contains("swizzle span"));
    // a row pitch that is not a multiple of 16 bytes
    assert!(TensorMap::matrix(&b, 0, TmaDtype::Bf16, 8, 70, 140, 8, 64, TmaSwizzle::None).unwrap_err().contains("multiple of 16"));
    // past the buffer
    assert!(TensorMap::matrix(&b, 0, TmaDtype::Bf16, 64, 64, 128, 8, 64, TmaSwizzle::None).unwrap_err().contains("overruns"));
    // a plain pointer where the kernel expects a map
    let m = d.load_module(&ptx("hopper/tma_roundtrip.ptx")).unwrap();
    let r = d.launch(&m, "tma_roundtrip", LaunchConfig::linear(1, 128), &[KernelArg::Buf(b, 0), KernelArg::Buf(b, 0), KernelArg::Buf(b, 0), KernelArg::U32(0), KernelArg::U32(0), KernelArg::U32(0)]);
    assert!(matches!(r, Err(DeviceError::BadArgs { .. })), "{r:?}");
}

fn small_roundtrip(text: &str) -> Result<(Vec<u16>, Vec<u16>, Vec<u16>), DeviceError> {
    roundtrip(&Roundtrip { rows: 64, cols: 64, pitch: 64, box_rows: 64, box_cols: 64, sw: TmaSwizzle::B128 }, text)
}

#[test]
fn a_store_without_the_proxy_fence_is_reported() {
    let good = ptx("hopper/tma_roundtrip.ptx");
    small_roundtrip(&good).unwrap();
    let bad = good.replace("    fence.proxy.async.shared::cta;\n", "");
    let e = sim_err(small_roundtrip(&bad).map(|_| ()));
    assert_eq!(e.kind, SimErrorKind::ProxyFence);
    assert_eq!(e.line, line_of(&bad, "cp.async.bulk.tensor.2d.global"));
    assert!(e.msg.contains("no fence.proxy.async"), "{}", e.msg);
}

#[test]
fn reading_before_the_mbarrier_wait_is_reported() {
    let good = ptx("hopper/tma_roundtrip.ptx");
    // the wait loop gone: the dump reads bytes the TMA load has not delivered
    let bad = good.replace("    mbarrier.try_wait.parity.shared::cta.b64 %p1, [%r9], 0;\n    @!%p1 bra $WAIT;\n", "");
    let e = sim_err(small_roundtrip(&bad).map(|_| ()));
    assert_eq!(e.kind, SimErrorKind::AsyncCopyHazard);
    assert_eq!(e.line, line_of(&bad, "ld.shared.v4.b32"));
}

#[test]
fn waiting_on_the_wrong_parity_is_reported() {
    let good = ptx("hopper/tma_roundtrip.ptx");
    // parity 1 is the phase before the first: "complete" at once, so the wait does not wait
    let bad = good.replace("[%r9], 0;\n    @!%p1", "[%r9], 1;\n    @!%p1");
    assert_ne!(bad, good);
    let e = sim_err(small_roundtrip(&bad).map(|_| ()));
    assert_eq!(e.kind, SimErrorKind::AsyncCopyHazard);
    assert_eq!(e.line, line_of(&bad, "ld.shared.v4.b32"));
}

#[test]
fn a_missing_expect_tx_is_a_deadlock_or_a_transaction_error() {
    let good = ptx("hopper/tma_roundtrip.ptx");
    // arrive without announcing the bytes: the phase completes at the arrival, and the
    // threads read the box before it lands
    let bad = good.replace("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%r9], %r1;", "mbarrier.arrive.shared::cta.b64 _, [%r9];");
    let e = sim_err(small_roundtrip(&bad).map(|_| ()));
    assert_eq!(e.kind, SimErrorKind::AsyncCopyHazard);
    assert_eq!(e.line, line_of(&bad, "ld.shared.v4.b32"));
    // announce fewer bytes than the box: the landing overdraws the transaction count
    let bad = good.replace("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%r9], %r1;", "mbarrier.arrive.expect_tx.shared::cta.b64 _, [%r9], 64;");
    let e = sim_err(small_roundtrip(&bad).map(|_| ()));
    assert_eq!(e.kind, SimErrorKind::Mbarrier);
    assert!(e.msg.contains("more bytes than"), "{}", e.msg);
    // no arrival at all: the phase can never complete, every thread waits
    let bad = good.replace("    @%p0 mbarrier.arrive.expect_tx.shared::cta.b64 _, [%r9], %r1;\n", "");
    let e = sim_err(small_roundtrip(&bad).map(|_| ()));
    assert_eq!(e.kind, SimErrorKind::Deadlock);
    assert!(e.msg.contains("1 of 1 arrivals missing") && e.msg.contains("warp 3"), "{}", e.msg);
    // without the init
    let bad = good.replace("    @%p0 mbarrier.init.shared::cta.b64 [%r9], 1;\n", "");
    let e = sim_err(small_roundtrip(&bad).map(|_| ()));
    assert_eq!(e.kind, SimErrorKind::Mbarrier);
    assert!(e.msg.contains("no initialised mbarrier"), "{}", e.msg);
}

#[test]
fn overwriting_shared_memory_a_tma_store_still_reads_is_reported() {
    let good = ptx("hopper/tma_roundtrip.ptx");
    // thread 0 scribbles over the box between the store and its wait
    let bad = good.replace(
        "    @%p0 cp.async.bulk.commit_group;\n",
        "    @%p0 st.shared.u32 [%r8], 0;\n    @%p0 cp.async.bulk.commit_group;\n",
    );
    let e = sim_err(small_roundtrip(&bad).map(|_| ()));
    assert_eq!(e.kind, SimErrorKind::AsyncCopyHazard);
    assert_eq!(e.line, line_of(&bad, "st.shared.u32 [%r8], 0"));
    // exiting before the store's read completes
    let bad = good.replace("    @%p0 cp.async.bulk.wait_group.read 0;\n", "");
    let e = sim_err(small_roundtrip(&bad).map(|_| ()));
    assert_eq!(e.kind, SimErrorKind::AsyncCopyHazard);
    assert!(e.msg.contains("wait_group.read"), "{}", e.msg);
    // an ordinary store over the mbarrier object
    let bad = good.replace("    bar.sync 0;\n    @%p0 cp.async.bulk.tensor.2d.global", "    bar.sync 0;\n    @%p0 st.shared.u32 [%r9], 0;\n    @%p0 cp.async.bulk.tensor.2d.global");
    let e = sim_err(small_roundtrip(&bad).map(|_| ()));
    assert_eq!(e.kind, SimErrorKind::Mbarrier);
    assert_eq!(e.line, line_of(&bad, "st.shared.u32 [%r9], 0"));
}

/// Runs `bulk_reduce` on `blocks` blocks adding `bytes` into a buffer of
/// 1024 f32 starting at 0.5; returns the buffer.
fn bulk_reduce(text: &str, blocks: u32, bytes: u32) -> Result<Vec<f32>, DeviceError> {
    let d = SimDevice::new();
    let m = d.load_module(text).unwrap();
    let init = vec![0.5f32; 1024];
    let dst = d.alloc(4096).unwrap();
    d.copy_to_device(&dst, &init.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    d.launch(&m, "bulk_reduce", LaunchConfig { grid: [blocks, 1, 1], block: [128, 1, 1], shared_bytes: 0 }, &[KernelArg::Buf(dst, 0), KernelArg::U32(bytes)])?;
    let mut out = vec![0u8; 4096];
    d.copy_from_device(&dst, &mut out).unwrap();
    Ok(out.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

#[test]
fn bulk_reduce_adds_every_block_into_global_memory() {
    let text = ptx("hopper/bulk_reduce.ptx");
    for (blocks, bytes) in [(1u32, 16u32), (3, 1040), (5, 4096)] {
        let got = bulk_reduce(&text, blocks, bytes).unwrap();
        for (i, &g) in got.iter().enumerate() {
            let added: f32 = if (i as u32) < bytes / 4 { (0..blocks).map(|b| (i as u32 + 1000 * b) as f32 * 0.25).sum() } else { 0.0 };
            assert_eq!(g, 0.5 + added, "{blocks} blocks, {bytes} bytes: element {i}");
        }
    }
}

#[test]
fn bulk_reduce_hazards_are_reported() {
    let good = ptx("hopper/bulk_reduce.ptx");
    bulk_reduce(&good, 2, 512).unwrap();
    // the shared values written without fence.proxy.async: the bulk copy may not see them
    let bad = good.replace("    fence.proxy.async.shared::cta;\n", "");
    let e = sim_err(bulk_reduce(&bad, 2, 512));
    assert_eq!(e.kind, SimErrorKind::ProxyFence);
    assert_eq!(e.line, line_of(&bad, "@%p0 cp.reduce.async.bulk"));
    // the source overwritten while the copy still reads it
    let bad = good.replace("    @%p0 cp.async.bulk.commit_group;\n", "    @%p0 st.shared.f32 [%r3], 0f00000000;\n    @%p0 cp.async.bulk.commit_group;\n");
    let e = sim_err(bulk_reduce(&bad, 2, 512));
    assert_eq!(e.kind, SimErrorKind::AsyncCopyHazard);
    assert_eq!(e.line, line_of(&bad, "st.shared.f32 [%r3], 0f00000000"));
    // exiting before the copy has read shared memory
    let bad = good.replace("    @%p0 cp.async.bulk.wait_group.read 0;\n", "");
    let e = sim_err(bulk_reduce(&bad, 2, 512));
    assert_eq!(e.kind, SimErrorKind::AsyncCopyHazard);
    // a size that is not a multiple of 16 bytes, and a source past the block's shared memory
    let e = sim_err(bulk_reduce(&good, 1, 20));
    assert!(e.msg.contains("multiple of 16"), "{}", e.msg);
    let bad = good.replace("[%rd0], [%r3], %r1;", "[%rd0], [%r3+3968], %r1;");
    let e = sim_err(bulk_reduce(&bad, 1, 512));
    assert_eq!(e.kind, SimErrorKind::OutOfBounds);
}
