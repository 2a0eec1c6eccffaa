//! wgmma through the simulator: a 64 x 64 output tile per warpgroup, its
//! operands brought by TMA (A and B from shared-memory descriptors, K-major
//! in every swizzle mode, B also MN-major) or A from registers, checked
//! against a float64 reference; and planted bugs for the wgmma checks.
//! The kernels come from the PTX builder and are kept, blessed, under
//! tests/ptx/hopper/ (so ptxas assembles them in `ptxas.rs` and the GPU
//! recorder can run them): `PGC_BLESS=1` rewrites them.

use crate::harness::*;
use pgc_backends::ptx::builder::{Addr, BinOp, Cmp, KernelBuilder, Module, Operand, ParamType, Reg, RegClass, Special, Type, WgmmaA};
use pgc_runtime::device::{DevBuf, Device, DeviceError, DeviceExt, KernelArg, LaunchConfig, TensorMap, TmaDtype, TmaSwizzle};
use pgc_runtime::sim::{SimDevice, SimErrorKind, SimOptions};

/// How a variant lays out its operands.
#[derive(Clone, Copy, Debug)]
struct Variant {
    name: &'static str,
    /// A: TMA with this swizzle (K-major), or `None` for A from registers
    a: Option<TmaSwizzle>,
    /// B K-major with this swizzle, or MN-major (transposed) 128B
    b: TmaSwizzle,
    b_mn: bool,
}

const VARIANTS: [Variant; 6] = [
    Variant { name: "wgmma_k_sw128", a: Some(TmaSwizzle::B128), b: TmaSwizzle::B128, b_mn: false },
    Variant { name: "wgmma_k_sw64", a: Some(TmaSwizzle::B64), b: TmaSwizzle::B64, b_mn: false },
    Variant { name: "wgmma_k_sw32", a: Some(TmaSwizzle::B32), b: TmaSwizzle::B32, b_mn: false },
    Variant { name: "wgmma_k_interleave", a: Some(TmaSwizzle::None), b: TmaSwizzle::None, b_mn: false },
    Variant { name: "wgmma_b_mn_sw128", a: Some(TmaSwizzle::B128), b: TmaSwizzle::B128, b_mn: true },
    Variant { name: "wgmma_a_regs", a: None, b: TmaSwizzle::B128, b_mn: false },
];

/// Elements of K per TMA box row for a K-major operand (one swizzle span;
/// 16 bytes without a swizzle, the canonical core-matrix row).
fn kc(sw: TmaSwizzle) -> u32 {
    match sw.span() {
        0 => 8,
        s => s / 2,
    }
}

fn swizzle_code(sw: TmaSwizzle) -> u64 {
    match sw {
        TmaSwizzle::None => 0,
        TmaSwizzle::B128 => 1,
        TmaSwizzle::B64 => 2,
        TmaSwizzle::B32 => 3,
    }
}

/// The descriptor's fixed upper bits and LBO for a 64-row K-major operand
/// laid out as TMA boxes of `kc` columns (or the MN-major 128B layout).
fn desc_bits(sw: TmaSwizzle, mn: bool) -> (u64, u64) {
    let (lbo, sbo) = if mn {
        (8192u64, 1024u64)
    } else if sw == TmaSwizzle::None {
        // core matrices of 8 rows x 16 bytes: 8-row groups 128 bytes apart, k halves one box apart
        (64 * 16, 128)
    } else {
        (16, 8 * sw.span() as u64)
    };
    ((sbo >> 4) << 32 | swizzle_code(sw) << 62, (lbo >> 4) << 16)
}

/// The byte offset, from the operand's base, of k16 step `s` of a 64-wide K tile.
fn step_offset(sw: TmaSwizzle, mn: bool, s: u32) -> u32 {
    if mn {
        return s * 16 * 128;
    }
    let kc = kc(sw);
    (16 * s / kc) * (64 * kc * 2) + (16 * s % kc) * 2
}

const A_OFF: u32 = 0;
const B_OFF: u32 = 8192;
const BAR_OFF: u32 = 16384;

/// The kernel of a variant. `plant`: a bug to build in (for the checks' tests).
fn build(v: &Variant, plant: Option<&str>) -> String {
    let mut k = KernelBuilder::new(v.name);
    k.max_threads(128, Some(1));
    let (a_map, a_ptr) = match v.a {
        Some(_) => (Some(k.tensor_map_param("a_map")), None),
        None => {
            let p = k.param("a", ParamType::U64);
            let r = k.ld_param_global_ptr(&p);
            (None, Some(r))
        }
    };
    let b_map = k.tensor_map_param("b_map");
    let c_p = k.param("c", ParamType::U64);
    let c = k.ld_param_global_ptr(&c_p);
    let ldc_p = k.param("ldc", ParamType::U32);
    let ldc = k.ld_param(&ldc_p);
    let kt_p = k.param("k_tiles", ParamType::U32);
    let k_tiles = k.ld_param(&kt_p);
    let lda_p = k.param("lda", ParamType::U32);
    let lda = k.ld_param(&lda_p);
    let smem = k.shared_array("smem", 1024, BAR_OFF + 8);
    let base = k.shared_addr(&smem);
    let bar = k.add(Type::U32, base, BAR_OFF);
    let tid = k.special(Special::TidX);
    let warp = k.bin(BinOp::Shr, Type::U32, tid, 5u32);
    let lane = k.special(Special::LaneId);
    let n0 = {
        let x = k.special(Special::CtaidX);
        k.mul_lo(Type::U32, x, 64u32)
    };
    let m0 = {
        let y = k.special(Special::CtaidY);
        k.mul_lo(Type::U32, y, 64u32)
    };
    let t0 = k.setp(Cmp::Eq, Type::U32, tid, 0u32);
    k.if_then(t0, false, |k| {
        k.mbar_init(Addr::reg(bar), 1u32);
        k.push(pgc_backends::ptx::builder::Inst::FenceMbarrierInit);
    });
    k.bar_sync();
    let acc: Vec<Reg> = (0..32).map(|_| k.reg(RegClass::F32)).collect();
    for r in &acc {
        k.mov(Type::F32, *r, 0.0f32);
    }
    let tx = if v.a.is_some() { 16384u32 } else { 8192 };
    let (a_hi, a_lbo) = desc_bits(v.a.unwrap_or(TmaSwizzle::None), false);
    let (b_hi, b_lbo) = desc_bits(v.b, v.b_mn);
    k.for_range(0u32, k_tiles, 1, true, |k, kt| {
        let k0 = k.mul_lo(Type::U32, kt, 64u32);
        let parity = k.bin(BinOp::And, Type::U32, kt, 1u32);
        k.if_then(t0, false, |k| {
            k.mbar_arrive(Addr::reg(bar), Some(Operand::Imm(tx as i64)));
            if let (Some(sw), Some(map)) = (v.a, a_map) {
                let c = kc(sw);
                for j in 0..64 / c {
                    let dst = k.add(Type::U32, base, A_OFF + j * 64 * c * 2);
                    let x = k.add(Type::U32, k0, j * c);
                    k.tma_load(Addr::reg(dst), map, vec![x.into(), m0.into()], Addr::reg(bar));
                }
            }
            if v.b_mn {
                let dst = k.add(Type::U32, base, B_OFF);
                k.tma_load(Addr::reg(dst), b_map, vec![n0.into(), k0.into()], Addr::reg(bar));
            } else {
                let c = kc(v.b);
                for j in 0..64 / c {
                    let dst = k.add(Type::U32, base, B_OFF + j * 64 * c * 2);
                    let x = k.add(Type::U32, k0, j * c);
                    k.tma_load(Addr::reg(dst), b_map, vec![x.into(), n0.into()], Addr::reg(bar));
                }
            }
        });
        // A from registers: this warp's 16 rows of the four k16 steps, the mma.sync A layout
        let mut frags = Vec::new();
        if let Some(a) = a_ptr {
            let row = {
                let r = k.mad_lo(Type::U32, warp, 16u32, m0);
                let g = k.bin(BinOp::Shr, Type::U32, lane, 2u32);
                k.add(Type::U32, r, g)
            };
            let kcol = {
                let t = k.bin(BinOp::And, Type::U32, lane, 3u32);
                let t2 = k.mul_lo(Type::U32, t, 2u32);
                k.add(Type::U32, k0, t2)
            };
            for s in 0..4u32 {
                let mut regs = Vec::new();
                for (dr, dk) in [(0u32, 0u32), (8, 0), (0, 8), (8, 8)] {
                    let r = k.add(Type::U32, row, dr);
                    let kk = k.add(Type::U32, kcol, 16 * s + dk);
                    let idx = k.mad_lo(Type::U32, r, lda, kk);
                    let off = k.mul_wide_u32(idx, 2u32);
                    let p = k.add_u64(a, off);
                    regs.push(k.ld(pgc_backends::ptx::builder::Space::Global, Type::B32, Addr::reg(p)));
                }
                frags.push([regs[0], regs[1], regs[2], regs[3]]);
            }
        }
        k.mbar_wait(Addr::reg(bar), parity);
        if plant != Some("no_fence") {
            k.wgmma_fence();
        }
        for s in 0..4u32 {
            let mk = |k: &mut KernelBuilder, off: u32, hi: u64, lbo: u64| -> Reg {
                let a = k.add(Type::U32, base, off);
                let lo = k.bin(BinOp::Shr, Type::U32, a, 4u32);
                let lo = k.bin(BinOp::And, Type::U32, lo, 0x3fffu32);
                let lo = k.bin(BinOp::Or, Type::U32, lo, lbo as u32);
                let w = k.cvt(Type::U64, Type::U32, None, lo);
                k.bin(BinOp::Or, Type::B64, w, Operand::Imm(hi as i64))
            };
            let db = mk(k, B_OFF + step_offset(v.b, v.b_mn, s), b_hi, b_lbo);
            let a = match v.a {
                Some(sw) => WgmmaA::Desc(mk(k, A_OFF + step_offset(sw, false, s), a_hi, a_lbo)),
                None => WgmmaA::Regs(frags[s as usize]),
            };
            k.wgmma(&acc, a, db, 1u32, false, v.b_mn);
        }
        k.wgmma_commit();
        if !matches!(plant, Some("no_wait" | "read_in_flight")) {
            k.wgmma_wait(0);
        }
        if plant == Some("read_in_flight") {
            // reads an accumulator while its wgmma may still run
            let t = k.reg(RegClass::F32);
            k.mov(Type::F32, t, acc[0]);
            k.wgmma_wait(0);
        }
        // every warp's wgmma has read the tiles before thread 0 refills them
        if plant != Some("no_barrier") {
            k.bar_sync();
        }
    });
    if plant == Some("no_wait") {
        k.wgmma_wait(0);
    }
    // the accumulator fragment: row 16w + lane/4 (+8), column 8(i/4) + 2(lane%4) (+1)
    let g = k.bin(BinOp::Shr, Type::U32, lane, 2u32);
    let t = k.bin(BinOp::And, Type::U32, lane, 3u32);
    let row0 = k.mad_lo(Type::U32, warp, 16u32, m0);
    let row0 = k.add(Type::U32, row0, g);
    let col0 = k.mad_lo(Type::U32, t, 2u32, n0);
    for (i, r) in acc.iter().enumerate() {
        let i = i as u32;
        let row = k.add(Type::U32, row0, 8 * ((i / 2) % 2));
        let col = k.add(Type::U32, col0, (i / 4) * 8 + i % 2);
        let idx = k.mad_lo(Type::U32, row, ldc, col);
        let off = k.mul_wide_u32(idx, 4u32);
        let p = k.add_u64(c, off);
        k.st(pgc_backends::ptx::builder::Space::Global, Type::F32, Addr::reg(p), *r);
    }
    k.ret();
    let mut m = Module::new();
    m.push(k.finish());
    m.render()
}

fn blessed(v: &Variant) -> String {
    let text = build(v, None);
    let path = ptx_dir().join("hopper").join(format!("{}.ptx", v.name));
    if std::env::var_os("PGC_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let kept = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(kept == text, "{} differs from what the builder makes: rerun with PGC_BLESS=1", path.display());
    text
}

struct Case {
    m: usize,
    n: usize,
    k: usize,
}

fn run(v: &Variant, text: &str, cs: &Case, block: u32) -> Result<(Vec<f32>, Vec<f64>), DeviceError> {
    run_on(&SimDevice::new(), v, text, cs, block)
}

fn run_on(d: &SimDevice, v: &Variant, text: &str, cs: &Case, block: u32) -> Result<(Vec<f32>, Vec<f64>), DeviceError> {
    let m = d.load_module(text).unwrap();
    let mut rng = Rng::new(11);
    // K padded to a multiple of 8 elements (16-byte rows for TMA); the padding is never read
    let lda = cs.k.div_ceil(8) * 8;
    let a: Vec<u16> = (0..cs.m * lda).map(|i| if i % lda < cs.k { bf16_bits(rng.uniform()) } else { 0 }).collect();
    let (b, ldb): (Vec<u16>, usize) = if v.b_mn {
        // B stored k-major rows: [K, N]
        ((0..cs.k * cs.n).map(|_| bf16_bits(rng.uniform())).collect(), cs.n)
    } else {
        ((0..cs.n * lda).map(|i| if i % lda < cs.k { bf16_bits(rng.uniform()) } else { 0 }).collect(), lda)
    };
    let ab = d.upload_u16(&a).unwrap();
    let bb = d.upload_u16(&b).unwrap();
    let cb = d.alloc(cs.m * cs.n * 4).unwrap();
    let tmap = |buf: &DevBuf, rows: usize, cols: usize, ld: usize, box_rows: u32, box_cols: u32, sw| TensorMap::matrix(buf, 0, TmaDtype::Bf16, rows as u64, cols as u64, (ld * 2) as u64, box_rows, box_cols, sw).unwrap();
    let k_tiles = cs.k.div_ceil(64) as u32;
    let a_arg = match v.a {
        Some(sw) => KernelArg::TensorMap(tmap(&ab, cs.m, cs.k, lda, 64, kc(sw), sw)),
        None => KernelArg::Buf(ab, 0),
    };
    let b_arg = if v.b_mn { tmap(&bb, cs.k, cs.n, ldb, 64, 64, TmaSwizzle::B128) } else { tmap(&bb, cs.n, cs.k, ldb, 64, kc(v.b), v.b) };
    let cfg = LaunchConfig { grid: [(cs.n / 64) as u32, (cs.m / 64) as u32, 1], block: [block, 1, 1], shared_bytes: 0 };
    d.launch(&m, v.name, cfg, &[a_arg, KernelArg::TensorMap(b_arg), KernelArg::Buf(cb, 0), KernelArg::U32(cs.n as u32), KernelArg::U32(k_tiles), KernelArg::U32(lda as u32)])?;
    let got = d.download_f32(&cb).unwrap();
    let mut want = vec![0f64; cs.m * cs.n];
    for i in 0..cs.m {
        for j in 0..cs.n {
            let mut s = 0f64;
            for p in 0..cs.k {
                let bv = if v.b_mn { b[p * ldb + j] } else { b[j * ldb + p] };
                s += bf16_to_f32(a[i * lda + p]) as f64 * bf16_to_f32(bv) as f64;
            }
            want[i * cs.n + j] = s;
        }
    }
    Ok((got, want))
}

#[test]
fn wgmma_tiles_match_the_reference_in_every_operand_layout() {
    for v in &VARIANTS {
        let text = blessed(v);
        // K = 72 leaves the second K tile mostly out of bounds (TMA fills zeros)
        let cs = if v.a.is_some() { Case { m: 128, n: 128, k: 72 } } else { Case { m: 128, n: 64, k: 128 } };
        let (got, want) = run(v, &text, &cs, 128).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        let scale = want.iter().fold(0f64, |a, &b| a.max(b.abs()));
        let worst = got.iter().zip(&want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0f64, f64::max) / scale;
        eprintln!("{}: worst relative error {worst:.2e}", v.name);
        assert!(worst < 1e-6, "{}: worst relative error {worst:e}", v.name);
    }
}

#[test]
fn reading_an_accumulator_before_wait_group_is_reported() {
    let v = &VARIANTS[0];
    let cs = Case { m: 64, n: 64, k: 64 };
    let bad = build(v, Some("read_in_flight"));
    let e = sim_err(run(v, &bad, &cs, 128));
    assert_eq!(e.kind, SimErrorKind::WgmmaHazard);
    assert!(e.msg.contains("before the wgmma.wait_group"), "{}", e.msg);
    // no wait in the K loop: the refill of the second K tile overwrites operands the first tile's wgmmas read
    let bad = build(v, Some("no_wait"));
    let e = sim_err(run(v, &bad, &Case { m: 64, n: 64, k: 128 }, 128));
    assert_eq!(e.kind, SimErrorKind::AsyncCopyHazard);
    assert!(e.msg.contains("in-flight wgmma"), "{}", e.msg);
}

#[test]
fn a_wgmma_without_its_fence_is_reported() {
    let v = &VARIANTS[0];
    let bad = build(v, Some("no_fence"));
    let e = sim_err(run(v, &bad, &Case { m: 64, n: 64, k: 64 }, 128));
    assert_eq!(e.kind, SimErrorKind::WgmmaHazard);
    assert!(e.msg.contains("wgmma.fence"), "{}", e.msg);
}

#[test]
fn refilling_tiles_a_wgmma_still_reads_is_reported() {
    let v = &VARIANTS[0];
    let bad = build(v, Some("no_barrier"));
    // two K tiles: thread 0 refills while warps 1-3 have not yet issued (or finished) theirs
    let e = sim_err(run(v, &bad, &Case { m: 64, n: 64, k: 128 }, 128));
    assert!(matches!(e.kind, SimErrorKind::AsyncCopyHazard | SimErrorKind::Race), "{e}");
}

#[test]
fn a_partial_warpgroup_is_reported() {
    let v = &VARIANTS[0];
    let text = build(v, None);
    let e = sim_err(run(v, &text, &Case { m: 64, n: 64, k: 64 }, 96));
    assert_eq!(e.kind, SimErrorKind::WarpDivergence);
    assert!(e.msg.contains("warpgroup") || e.msg.contains("multiple of 4"), "{}", e.msg);
}


#[test]
fn the_counters_count_wgmma_flops_by_shape() {
    // 128 x 128 outputs over two 64-deep K tiles: 2 x 128 x 128 x 128 tensor FLOPs
    let d = SimDevice::with_options(SimOptions { counters: true, ..SimOptions::default() });
    let v = &VARIANTS[0];
    run_on(&d, v, &build(v, None), &Case { m: 128, n: 128, k: 72 }, 128).unwrap();
    let c = d.take_launch_counters();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].tensor_flops(), 2 * 128 * 128 * 128);
    // and the TMA copies' global bytes: A and B, 128 rows x 72 columns of bf16 each, per column block
    assert!(c[0].read_bytes >= 2 * 128 * 72 * 2, "{}", c[0].read_bytes);
}
