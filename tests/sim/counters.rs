//! The simulator's performance counters on planted kernels, one per counter:
//! coalesced / strided / vector global loads (sectors per request), a
//! transposed shared read (32-way bank conflicts) and its padded twin (none),
//! ldmatrix, atomics on one address (contention), divergence (active lanes),
//! the tensor-instruction count of a GEMM tile; sampled launches (which
//! blocks, extrapolation capped per buffer) and lazy device memory.

use crate::harness;

use harness::*;
use pgc_runtime::device::{Device, DeviceExt, KernelArg, LaunchConfig};
use pgc_runtime::sim::counters::{InstClass, LaunchCounters, PcCounts};
use pgc_runtime::sim::{SimDevice, SimOptions};

fn counting() -> SimDevice {
    SimDevice::with_options(SimOptions { counters: true, ..SimOptions::default() })
}

/// The counters of the (only) instruction of `class` on PTX line `line`.
fn at_line(c: &LaunchCounters, line: u32) -> PcCounts {
    c.by_line().into_iter().find(|(l, _)| *l == line).unwrap_or_else(|| panic!("no counters for line {line}")).1
}

const HEAD: &str = ".version 8.0\n.target sm_90a\n.address_size 64\n";

/// out[t] = in[t * stride] (f32), one warp per block; blocks cover consecutive ranges.
fn strided_ptx() -> String {
    format!(
        "{HEAD}.visible .entry strided(.param .u64 inp, .param .u64 out, .param .u32 stride) {{
  .reg .b32 %r<8>; .reg .b64 %rd<8>; .reg .f32 %f<2>;
  ld.param.u64 %rd0, [inp];
  ld.param.u64 %rd1, [out];
  ld.param.u32 %r1, [stride];
  mov.u32 %r0, %tid.x;
  mov.u32 %r2, %ctaid.x;
  mad.lo.u32 %r3, %r2, 32, %r0;
  mul.lo.u32 %r4, %r3, %r1;
  mul.wide.u32 %rd2, %r4, 4;
  add.u64 %rd3, %rd0, %rd2;
  ld.global.f32 %f0, [%rd3]; // LOAD
  mul.wide.u32 %rd4, %r3, 4;
  add.u64 %rd5, %rd1, %rd4;
  st.global.f32 [%rd5], %f0; // STORE
  ret;
}}
"
    )
}

fn run_strided(dev: &SimDevice, stride: u32, blocks: u32) -> LaunchCounters {
    let n = (blocks * 32 * stride) as usize;
    let inp = dev.upload_f32(&vec![1.0; n]).unwrap();
    let out = dev.alloc(blocks as usize * 32 * 4).unwrap();
    let m = dev.load_module(&strided_ptx()).unwrap();
    dev.set_regions(vec![(inp.addr, inp.bytes as u64), (out.addr, out.bytes as u64)]);
    dev.launch(&m, "strided", LaunchConfig::linear(blocks, 32), &[KernelArg::Buf(inp, 0), KernelArg::Buf(out, 0), KernelArg::U32(stride)]).unwrap();
    let mut recs = dev.take_launch_counters();
    assert_eq!(recs.len(), 1);
    recs.pop().unwrap()
}

#[test]
fn global_sectors_per_request() {
    let src = strided_ptx();
    let (ld, st) = (line_of(&src, "// LOAD"), line_of(&src, "// STORE"));
    for (stride, sectors) in [(1u32, 4u64), (2, 8), (8, 32)] {
        let dev = counting();
        let c = run_strided(&dev, stride, 1);
        let l = at_line(&c, ld);
        assert_eq!((l.global_requests, l.global_sectors, l.global_bytes, l.global_distinct_bytes), (1, sectors, 128, 128), "stride {stride}");
        let s = at_line(&c, st);
        assert_eq!((s.global_requests, s.global_sectors), (1, 4), "stride {stride}: the store is coalesced");
        // each byte once: 32 floats read (wherever they lie) and 32 written
        assert_eq!((c.read_bytes, c.written_bytes), (128, 128));
        let eff = l.global_distinct_bytes as f64 / (32 * l.global_sectors) as f64;
        println!("stride {stride}: {} sectors/request, sector efficiency {:.0}%", l.global_sectors, 100.0 * eff);
    }
}

#[test]
fn vector_loads_and_classes() {
    let src = format!(
        "{HEAD}.visible .entry v4(.param .u64 inp, .param .u64 out) {{
  .reg .b32 %r<4>; .reg .b64 %rd<6>; .reg .f32 %f<4>; .reg .pred %p<2>;
  ld.param.u64 %rd0, [inp];
  ld.param.u64 %rd1, [out];
  mov.u32 %r0, %tid.x;
  mul.wide.u32 %rd2, %r0, 16;
  add.u64 %rd3, %rd0, %rd2;
  ld.global.v4.f32 {{%f0, %f1, %f2, %f3}}, [%rd3]; // V4
  setp.lt.u32 %p0, %r0, 8;
  @%p0 rcp.approx.f32 %f0, %f0; // GUARDED
  add.u64 %rd4, %rd1, %rd2;
  st.global.v4.f32 [%rd4], {{%f0, %f1, %f2, %f3}};
  ret;
}}
"
    );
    let dev = counting();
    let inp = dev.upload_f32(&vec![2.0; 128]).unwrap();
    let out = dev.alloc(512).unwrap();
    let m = dev.load_module(&src).unwrap();
    dev.launch(&m, "v4", LaunchConfig::linear(1, 32), &[KernelArg::Buf(inp, 0), KernelArg::Buf(out, 0)]).unwrap();
    let c = dev.take_launch_counters().pop().unwrap();
    let v = at_line(&c, line_of(&src, "// V4"));
    assert_eq!((v.global_requests, v.global_sectors, v.global_bytes), (1, 16, 512));
    // divergence: the guarded instruction issues once with 8 active lanes
    let g = at_line(&c, line_of(&src, "// GUARDED"));
    assert_eq!((g.warp_insts, g.lanes), (1, 8));
    let classes: std::collections::BTreeMap<InstClass, u64> = c.by_class().into_iter().collect();
    assert_eq!(classes[&InstClass::GlobalLoad], 1);
    assert_eq!(classes[&InstClass::GlobalStore], 1);
    assert_eq!(classes[&InstClass::Sfu], 1);
    assert_eq!(classes[&InstClass::Control], 1); // ret
    assert_eq!(c.total().warp_insts, 11);
}

/// A 32 x 32 u32 tile in shared memory with row stride `stride` words:
/// written by columns (conflict-free), then read transposed by rows.
fn transpose_ptx() -> String {
    format!(
        "{HEAD}.visible .entry tr(.param .u64 out, .param .u32 stride) {{
  .reg .b32 %r<10>; .reg .b64 %rd<4>; .reg .pred %p<2>;
  .shared .align 16 .b8 tile[4352];
  mov.u32 %r0, %tid.x;
  ld.param.u32 %r1, [stride];
  mov.u32 %r6, tile;
  mov.u32 %r2, 0;
LOOP:
  mad.lo.u32 %r3, %r2, %r1, %r0;
  shl.b32 %r3, %r3, 2;
  add.u32 %r3, %r3, %r6;
  st.shared.u32 [%r3], %r0; // WRITE
  add.u32 %r2, %r2, 1;
  setp.lt.u32 %p0, %r2, 32;
  @%p0 bra LOOP;
  bar.sync 0;
  mul.lo.u32 %r4, %r0, %r1;
  shl.b32 %r4, %r4, 2;
  add.u32 %r4, %r4, %r6;
  ld.shared.u32 %r5, [%r4]; // READ
  ld.param.u64 %rd0, [out];
  mul.wide.u32 %rd1, %r0, 4;
  add.u64 %rd0, %rd0, %rd1;
  st.global.u32 [%rd0], %r5;
  ret;
}}
"
    )
}

#[test]
fn shared_bank_conflicts_transposed_and_padded() {
    let src = transpose_ptx();
    for (stride, ways) in [(32u32, 32u64), (33, 1), (34, 2)] {
        let dev = counting();
        let out = dev.alloc(128).unwrap();
        let m = dev.load_module(&src).unwrap();
        dev.launch(&m, "tr", LaunchConfig::linear(1, 32), &[KernelArg::Buf(out, 0), KernelArg::U32(stride)]).unwrap();
        let c = dev.take_launch_counters().pop().unwrap();
        let r = at_line(&c, line_of(&src, "// READ"));
        assert_eq!((r.shared_requests, r.shared_ideal), (1, 1));
        assert_eq!(r.shared_wavefronts / r.shared_ideal, ways, "row stride {stride} words");
        let w = at_line(&c, line_of(&src, "// WRITE"));
        assert_eq!((w.shared_requests, w.shared_wavefronts, w.shared_ideal), (32, 32, 32), "the column writes are conflict-free");
        println!("row stride {stride}: transposed read {}-way", r.shared_wavefronts / r.shared_ideal);
        // the values are right too (row t, column 0 was written by thread 0)
        assert_eq!(dev.download_u32(&out).unwrap(), vec![0u32; 32]);
    }
}

#[test]
fn wide_shared_accesses_use_phases() {
    use pgc_runtime::sim::counters::wavefronts;
    let mut s = Vec::new();
    // 16-byte lanes, contiguous: 4 phases of 8 lanes, one wavefront each
    let acc: Vec<(u8, u64)> = (0..32u8).map(|l| (l, l as u64 * 16)).collect();
    assert_eq!(wavefronts(&acc, 16, &mut s), (4, 4));
    // 16-byte lanes with a 256-byte stride: the 8 lanes of a phase share banks 0..3
    let acc: Vec<(u8, u64)> = (0..32u8).map(|l| (l, l as u64 * 256)).collect();
    assert_eq!(wavefronts(&acc, 16, &mut s), (32, 4));
    // 4-byte lanes all reading one word: a broadcast
    let acc: Vec<(u8, u64)> = (0..32u8).map(|l| (l, 64)).collect();
    assert_eq!(wavefronts(&acc, 4, &mut s), (1, 1));
    // 2-byte lanes, contiguous: 16 words, one wavefront
    let acc: Vec<(u8, u64)> = (0..32u8).map(|l| (l, l as u64 * 2)).collect();
    assert_eq!(wavefronts(&acc, 2, &mut s), (1, 1));
}

#[test]
fn atomics_contention() {
    let src = format!(
        "{HEAD}.visible .entry at(.param .u64 out, .param .u32 spread) {{
  .reg .b32 %r<4>; .reg .b64 %rd<4>; .reg .f32 %f<2>;
  ld.param.u64 %rd0, [out];
  ld.param.u32 %r1, [spread];
  mov.u32 %r0, %tid.x;
  rem.u32 %r2, %r0, %r1;
  mul.wide.u32 %rd1, %r2, 4;
  add.u64 %rd2, %rd0, %rd1;
  mov.f32 %f0, 0f3F800000;
  red.global.add.f32 [%rd2], %f0; // RED
  ret;
}}
"
    );
    for (spread, lanes_per_addr) in [(1u32, 32u64), (32, 1), (4, 8)] {
        let dev = counting();
        let out = dev.upload_f32(&[0.0; 32]).unwrap();
        let m = dev.load_module(&src).unwrap();
        dev.launch(&m, "at", LaunchConfig::linear(1, 32), &[KernelArg::Buf(out, 0), KernelArg::U32(spread)]).unwrap();
        let c = dev.take_launch_counters().pop().unwrap();
        let r = at_line(&c, line_of(&src, "// RED"));
        assert_eq!(r.atomic_lanes / r.atomic_addresses, lanes_per_addr);
        assert_eq!(c.written_bytes, 4 * spread as u64);
        // the lanes' updates of one address are one distinct word of the request
        assert_eq!((r.global_bytes, r.global_distinct_bytes), (128, 4 * spread as u64));
        assert_eq!(dev.download_f32(&out).unwrap()[0], 32.0 / spread as f32);
    }
}

#[test]
fn gemm_tile_tensor_instructions_and_ldmatrix() {
    let dev = counting();
    let a: Vec<u16> = (0..4096).map(|i| bf16_bits((i % 7) as f32 * 0.25)).collect();
    let ba = dev.upload_u16(&a).unwrap();
    let bc = dev.alloc(4096 * 4).unwrap();
    let src = ptx("gemm_bf16_mma.ptx");
    let m = dev.load_module(&src).unwrap();
    dev.launch(&m, "gemm_bf16_64x64x64", LaunchConfig::linear(1, 128), &[KernelArg::Buf(ba, 0), KernelArg::Buf(ba, 0), KernelArg::Buf(bc, 0)]).unwrap();
    let c = dev.take_launch_counters().pop().unwrap();
    let classes: std::collections::BTreeMap<InstClass, u64> = c.by_class().into_iter().collect();
    // 64 x 64 x 64 in m16n8k16 steps
    assert_eq!(classes[&InstClass::Mma], 64 * 64 * 64 / (16 * 8 * 16));
    let t = c.total();
    println!(
        "gemm tile: {} warp instructions, mma {}, ldmatrix {}, shared {} requests / {} wavefronts (ideal {}), global {} sectors / {} requests",
        t.warp_insts, classes[&InstClass::Mma], classes[&InstClass::Ldmatrix], t.shared_requests, t.shared_wavefronts, t.shared_ideal, t.global_sectors, t.global_requests
    );
    // A and B are the same 8 KiB buffer: read once; C 16 KiB written once
    assert_eq!((c.read_bytes, c.written_bytes), (8192, 16384));
    assert!(t.shared_ideal > 0 && t.shared_wavefronts >= t.shared_ideal);
}

#[test]
fn sampled_launch_runs_first_last_and_seeded_blocks() {
    let dev = SimDevice::with_options(SimOptions { counters: true, sample_blocks: Some(5), sample_seed: 7, ..SimOptions::default() });
    let c = run_strided(&dev, 1, 100);
    assert_eq!(c.blocks_total, 100);
    assert_eq!(c.blocks_run.len(), 5);
    assert_eq!(&c.blocks_run[..2], &[0, 99]);
    let mut b = c.blocks_run.clone();
    b.sort();
    b.dedup();
    assert_eq!(b.len(), 5);
    // disjoint blocks: the estimate is the whole grid's bytes
    assert_eq!((c.read_bytes, c.written_bytes), (5 * 128, 5 * 128));
    assert_eq!((c.read_bytes_est, c.written_bytes_est), (100.0 * 128.0, 100.0 * 128.0));
    assert_eq!(c.scale(), 20.0);
    // the same seed picks the same blocks
    let again = pgc_runtime::sim::sample_blocks(100, 5, 7, 0);
    assert_eq!(again, c.blocks_run);
}

#[test]
fn sampled_estimate_is_capped_by_the_buffer() {
    // every block reads the same 32 floats (stride 0 reads one float per block...
    // so use a broadcast kernel: block b reads in[t], writes out[b * 32 + t])
    let src = format!(
        "{HEAD}.visible .entry bc(.param .u64 inp, .param .u64 out) {{
  .reg .b32 %r<4>; .reg .b64 %rd<6>; .reg .f32 %f<2>;
  ld.param.u64 %rd0, [inp];
  ld.param.u64 %rd1, [out];
  mov.u32 %r0, %tid.x;
  mov.u32 %r1, %ctaid.x;
  mul.wide.u32 %rd2, %r0, 4;
  add.u64 %rd3, %rd0, %rd2;
  ld.global.f32 %f0, [%rd3];
  mad.lo.u32 %r2, %r1, 32, %r0;
  mul.wide.u32 %rd4, %r2, 4;
  add.u64 %rd5, %rd1, %rd4;
  st.global.f32 [%rd5], %f0;
  ret;
}}
"
    );
    let dev = SimDevice::with_options(SimOptions { counters: true, sample_blocks: Some(4), ..SimOptions::default() });
    let inp = dev.upload_f32(&[1.0; 32]).unwrap();
    let out = dev.alloc(64 * 128).unwrap();
    let m = dev.load_module(&src).unwrap();
    dev.set_regions(vec![(inp.addr, inp.bytes as u64), (out.addr, out.bytes as u64)]);
    dev.launch(&m, "bc", LaunchConfig::linear(64, 32), &[KernelArg::Buf(inp, 0), KernelArg::Buf(out, 0)]).unwrap();
    let c = dev.take_launch_counters().pop().unwrap();
    assert_eq!(c.read_bytes, 128);
    assert_eq!(c.read_bytes_est, 128.0, "the shared input counts once, not once per block");
    assert_eq!(c.written_bytes_est, 64.0 * 128.0);
}

#[test]
fn lazy_memory_materialises_written_pages_only() {
    let dev = SimDevice::with_options(SimOptions { lazy_memory: Some(3), memory_bytes: 1 << 40, sample_blocks: Some(2), ..SimOptions::default() });
    // 40 GiB: more than this machine has
    let big = dev.alloc(40 << 30).unwrap();
    let m = dev.load_module(&strided_ptx()).unwrap();
    // 2^20 blocks of 32 floats read at stride 1 from `big`, written to `big` + 20 GiB
    let blocks = 1u32 << 20;
    dev.launch(&m, "strided", LaunchConfig::linear(blocks, 32), &[KernelArg::Buf(big, 0), KernelArg::Buf(big, 20 << 30), KernelArg::U32(1)]).unwrap();
    let resident = dev.resident_bytes();
    assert!(resident <= 2 * 65536, "{resident} bytes resident after writing two blocks' outputs");
    println!("lazy 40 GiB allocation: {resident} bytes resident after a sampled launch");
    // never-written words read as seeded finite values in [-1, 1), the same each time
    let mut head = vec![0u8; 64];
    dev.copy_from_device(&big, &mut head).unwrap();
    let mut again = vec![0u8; 64];
    dev.copy_from_device(&big, &mut again).unwrap();
    assert_eq!(head, again);
    for c in head.chunks_exact(4) {
        let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        assert!(x.is_finite() && (-1.0..1.0).contains(&x), "{x}");
    }
    assert!(head.chunks_exact(4).any(|c| c != [0, 0, 0, 0]));
}
