//! The hand-written PTX kernels of tests/ptx, run on the simulator through the
//! `Device` trait and compared with Rust computations.

use crate::harness;

use harness::*;
use pgc_runtime::device::{Device, DeviceExt, KernelArg, LaunchConfig};
use pgc_runtime::sim::{SimDevice, SimOptions};

fn dev() -> Box<dyn Device> {
    Box::new(SimDevice::new())
}

#[test]
fn vector_add_matches_rust() {
    let d = dev();
    let d: &dyn Device = d.as_ref();
    let n = 1000usize; // 8 blocks of 128, the last one partial
    let mut rng = Rng::new(1);
    let (a, b) = (rng.vec(n), rng.vec(n));
    let (ba, bb) = (d.upload_f32(&a).unwrap(), d.upload_f32(&b).unwrap());
    let bc = d.alloc(n * 4).unwrap();
    let m = d.load_module(&ptx("vector_add.ptx")).unwrap();
    d.launch(&m, "vector_add", LaunchConfig::linear(n.div_ceil(128) as u32, 128), &[KernelArg::Buf(ba, 0), KernelArg::Buf(bb, 0), KernelArg::Buf(bc, 0), KernelArg::U32(n as u32)]).unwrap();
    d.synchronize().unwrap();
    let c = d.download_f32(&bc).unwrap();
    for i in 0..n {
        assert_eq!(c[i].to_bits(), (a[i] + b[i]).to_bits(), "element {i}");
    }
}

#[test]
fn warp_shuffle_reductions_match_rust() {
    let d = SimDevice::new();
    let (blocks, threads) = (4usize, 128usize);
    let n = blocks * threads;
    let mut rng = Rng::new(2);
    let x = rng.vec(n);
    let bx = d.upload_f32(&x).unwrap();
    let (bs, bm, bscan) = (d.alloc(n / 32 * 4).unwrap(), d.alloc(n / 32 * 4).unwrap(), d.alloc(n * 4).unwrap());
    let m = d.load_module(&ptx("warp_reduce.ptx")).unwrap();
    d.launch(&m, "warp_reduce", LaunchConfig::linear(blocks as u32, threads as u32), &[KernelArg::Buf(bx, 0), KernelArg::Buf(bs, 0), KernelArg::Buf(bm, 0), KernelArg::Buf(bscan, 0)]).unwrap();
    let (sums, maxs, scan) = (d.download_f32(&bs).unwrap(), d.download_f32(&bm).unwrap(), d.download_f32(&bscan).unwrap());
    for w in 0..n / 32 {
        let seg = &x[w * 32..w * 32 + 32];
        // butterfly, in the kernel's order
        let mut v = seg.to_vec();
        for off in [16, 8, 4, 2, 1] {
            v = (0..32).map(|l| v[l] + v[l ^ off]).collect();
        }
        assert_eq!(sums[w].to_bits(), v[0].to_bits(), "sum of warp {w}");
        let mx = seg.iter().cloned().fold(f32::MIN, f32::max);
        assert_eq!(maxs[w], mx, "max of warp {w}");
        let mut s = seg.to_vec();
        for off in [1, 2, 4, 8, 16] {
            s = (0..32).map(|l| if l >= off { s[l] + s[l - off] } else { s[l] }).collect();
        }
        for l in 0..32 {
            assert_eq!(scan[w * 32 + l].to_bits(), s[l].to_bits(), "scan of warp {w} lane {l}");
        }
    }
}

#[test]
fn shared_memory_transpose_with_barriers() {
    let d = SimDevice::new();
    let (rows, cols) = (64usize, 96usize);
    let x: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
    let bi = d.upload_f32(&x).unwrap();
    let bo = d.alloc(rows * cols * 4).unwrap();
    let m = d.load_module(&ptx("transpose.ptx")).unwrap();
    let cfg = LaunchConfig { grid: [(cols / 32) as u32, (rows / 32) as u32, 1], block: [32, 8, 1], shared_bytes: 0 };
    d.launch(&m, "transpose", cfg, &[KernelArg::Buf(bi, 0), KernelArg::Buf(bo, 0), KernelArg::U32(rows as u32), KernelArg::U32(cols as u32)]).unwrap();
    let y = d.download_f32(&bo).unwrap();
    for r in 0..rows {
        for c in 0..cols {
            assert_eq!(y[c * rows + r], x[r * cols + c], "out[{c}][{r}]");
        }
    }
    let st = d.last_launch_stats();
    assert_eq!(st.blocks, 6);
    assert!(st.thread_instructions > 6 * 256 * 40, "{st:?}");
}

fn run_gemm(d: &dyn Device, batch: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let a: Vec<f32> = rng.vec(batch * 64 * 64);
    let b: Vec<f32> = rng.vec(batch * 64 * 64);
    let ah: Vec<u16> = a.iter().map(|&x| bf16_bits(x)).collect();
    let bh: Vec<u16> = b.iter().map(|&x| bf16_bits(x)).collect();
    let (ba, bb) = (d.upload_u16(&ah).unwrap(), d.upload_u16(&bh).unwrap());
    let bc = d.alloc(batch * 64 * 64 * 4).unwrap();
    let m = d.load_module(&ptx("gemm_bf16_mma.ptx")).unwrap();
    d.launch(&m, "gemm_bf16_64x64x64", LaunchConfig::linear(batch as u32, 128), &[KernelArg::Buf(ba, 0), KernelArg::Buf(bb, 0), KernelArg::Buf(bc, 0)]).unwrap();
    let c = d.download_f32(&bc).unwrap();
    (ah.iter().map(|&h| bf16_to_f32(h)).collect(), bh.iter().map(|&h| bf16_to_f32(h)).collect(), c)
}

#[test]
fn mma_bf16_gemm_tile_matches_f32_gemm() {
    let d = SimDevice::new();
    for batch in [1usize, 3] {
        let (a, b, c) = run_gemm(&d, batch, 7 + batch as u64);
        for t in 0..batch {
            let at = &a[t * 4096..(t + 1) * 4096];
            let bt = &b[t * 4096..(t + 1) * 4096];
            let reference = gemm_f32(at, bt, 64, 64, 64);
            let ct = &c[t * 4096..(t + 1) * 4096];
            let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
            let mut worst = 0f32;
            for i in 0..4096 {
                worst = worst.max((ct[i] - reference[i]).abs());
            }
            // both sides are exact products summed in f32/f64: a few ulps of the largest value
            assert!(worst <= 4e-6 * scale, "batch {t}: max |diff| {worst} vs scale {scale}");
            // and a layout mistake would be far off: check a few entries exactly against f64
            for &(i, j) in &[(0usize, 0usize), (5, 9), (17, 33), (63, 63), (40, 7)] {
                let exact: f64 = (0..64).map(|p| at[i * 64 + p] as f64 * bt[p * 64 + j] as f64).sum();
                assert!((ct[i * 64 + j] as f64 - exact).abs() <= 1e-5 * scale as f64, "C[{i}][{j}]");
            }
        }
    }
}

#[test]
fn cp_async_multistage_pipeline() {
    let d = SimDevice::new();
    let (blocks, ntiles) = (2usize, 7usize);
    let mut rng = Rng::new(3);
    let x = rng.vec(blocks * ntiles * 512);
    let bx = d.upload_f32(&x).unwrap();
    let bo = d.alloc(blocks * 128 * 4).unwrap();
    let m = d.load_module(&ptx("cp_async_pipeline.ptx")).unwrap();
    d.launch(&m, "cp_async_pipeline", LaunchConfig::linear(blocks as u32, 128), &[KernelArg::Buf(bx, 0), KernelArg::Buf(bo, 0), KernelArg::U32(ntiles as u32)]).unwrap();
    let out = d.download_f32(&bo).unwrap();
    for b in 0..blocks {
        for t in 0..128 {
            let j = (t + 37) & 127;
            let mut acc = 0f32;
            for tile in 0..ntiles {
                for q in 0..4 {
                    acc += x[(b * ntiles + tile) * 512 + j * 4 + q];
                }
            }
            assert_eq!(out[b * 128 + t].to_bits(), acc.to_bits(), "block {b} thread {t}");
        }
    }
}

#[test]
fn single_and_multi_threaded_runs_agree() {
    let one = SimDevice::with_options(SimOptions { threads: 1, ..SimOptions::default() });
    let two = SimDevice::with_options(SimOptions { threads: 2, ..SimOptions::default() });
    let (_, _, c1) = run_gemm(&one, 4, 11);
    let (_, _, c2) = run_gemm(&two, 4, 11);
    assert_eq!(c1, c2);
    assert_eq!(two.last_launch_stats().host_threads, 2);
}

#[test]
fn freed_buffers_and_bad_arguments_are_errors() {
    let d = SimDevice::new();
    let m = d.load_module(&ptx("vector_add.ptx")).unwrap();
    let a = d.alloc(64).unwrap();
    // wrong count and wrong kinds of arguments
    let e = d.launch(&m, "vector_add", LaunchConfig::linear(1, 16), &[KernelArg::Buf(a, 0)]).unwrap_err();
    assert!(e.to_string().contains("4 parameters"), "{e}");
    let e = d.launch(&m, "vector_add", LaunchConfig::linear(1, 16), &[KernelArg::U32(0), KernelArg::Buf(a, 0), KernelArg::Buf(a, 0), KernelArg::U32(16)]).unwrap_err();
    assert!(e.to_string().contains("parameter `a`"), "{e}");
    assert!(d.launch(&m, "nope", LaunchConfig::linear(1, 16), &[]).is_err());
    assert!(d.launch(&m, "vector_add", LaunchConfig::linear(1, 2048), &[KernelArg::Buf(a, 0), KernelArg::Buf(a, 0), KernelArg::Buf(a, 0), KernelArg::U32(16)]).is_err());
    d.free(a).unwrap();
    assert!(d.copy_to_device(&a, &[0u8; 4]).is_err());
    assert!(d.free(a).is_err());
}

fn collatz_steps(mut x: u32) -> u32 {
    let mut s = 0;
    while x != 1 && s <= 299 {
        x = if x.is_multiple_of(2) { x / 2 } else { 3 * x + 1 };
        s += 1;
    }
    s
}

#[test]
fn divergent_loops_branches_and_early_exit_reconverge() {
    let d = SimDevice::new();
    let (blocks, threads) = (3usize, 100usize); // the last warp of each block has 4 lanes
    let n = blocks * threads;
    let (o1, o2) = (d.alloc(n * 4).unwrap(), d.alloc(n * 4).unwrap());
    let m = d.load_module(&ptx("divergence.ptx")).unwrap();
    d.launch(&m, "divergence", LaunchConfig::linear(blocks as u32, threads as u32), &[KernelArg::Buf(o1, 0), KernelArg::Buf(o2, 0)]).unwrap();
    let (out, out2) = (d.download_u32(&o1).unwrap(), d.download_u32(&o2).unwrap());
    let a = |i: usize| {
        let s = collatz_steps(i as u32 + 1);
        if i.is_multiple_of(3) {
            if i.is_multiple_of(2) {
                2 * s
            } else {
                3 * s
            }
        } else {
            s + 7
        }
    };
    for i in 0..n {
        let partner = i ^ 1; // same warp and block: blocks and warps start at even indices
        assert_eq!(out[i], a(i) * 1000 + a(partner), "out[{i}]");
        assert_eq!(out2[i], if i % 5 == 4 { 0 } else { i as u32 }, "out2[{i}]");
    }
}

#[test]
fn static_and_dynamic_shared_memory() {
    let d = SimDevice::new();
    let o = d.alloc(65 * 4).unwrap();
    let m = d.load_module(&ptx("dynamic_shared.ptx")).unwrap();
    let cfg = LaunchConfig { grid: [1, 1, 1], block: [64, 1, 1], shared_bytes: 256 };
    d.launch(&m, "dynamic_shared", cfg, &[KernelArg::Buf(o, 0)]).unwrap();
    let out = d.download_u32(&o).unwrap();
    assert_eq!(out[0], 16, "the dynamic array follows the 16-byte static header");
    for t in 0..64 {
        assert_eq!(out[1 + t], ((t + 1) % 64) as u32);
    }
    // too little dynamic shared memory for 64 threads
    let e = d.launch(&m, "dynamic_shared", LaunchConfig { shared_bytes: 128, ..cfg }, &[KernelArg::Buf(o, 0)]).unwrap_err();
    assert!(e.to_string().contains("OutOfBounds") && e.to_string().contains("thread (32,0,0)"), "{e}");
}
