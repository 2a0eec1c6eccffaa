//! The typed PTX builder's features in one probe kernel, assembled with ptxas
//! and run on the simulator: `.u64/.u32/.f32` parameters, vector loads,
//! static and dynamic (`extern`) shared memory, a `.local` array, guarded
//! instructions, if-then, a counted loop with a per-thread trip count, a
//! uniform counted loop, negative address offsets, `bar.sync`, and the
//! bf16x2 pack used by GEMM epilogues.

use crate::common;

use pgc_backends::ptx::builder::*;
use pgc_backends::ptx::ptxas;
use common::gemm_matrix::{bf16_to_f32, f32_to_bf16};
use pgc_runtime::device::{Device, DeviceExt, KernelArg, LaunchConfig};
use pgc_runtime::sim::SimDevice;

const THREADS: u32 = 128;

fn probe() -> Module {
    let mut b = KernelBuilder::new("builder_probe");
    b.max_threads(THREADS, None);
    let px = b.param("x", ParamType::U64);
    let py = b.param("y", ParamType::U64);
    let pz = b.param("z", ParamType::U64);
    let pn = b.param("n", ParamType::U32);
    let pscale = b.param("scale", ParamType::F32);
    let sh = b.shared_array("probe_sh", 16, THREADS * 4);
    let dynsym = b.extern_shared("probe_dyn", 16);
    let loc = b.local_array("probe_loc", 4, 16);
    b.comment("probe kernel\nsecond comment line");
    let x = b.ld_param_global_ptr(&px);
    let y = b.ld_param_global_ptr(&py);
    let z = b.ld_param_global_ptr(&pz);
    let n = b.ld_param(&pn);
    let scale = b.ld_param(&pscale);
    let tid = b.special(Special::TidX);

    // s = x[4t] + ... + x[4t+3] when 4t + 3 < n, else 0
    let quad = b.mul_lo(Type::U32, tid, 4u32);
    let last = b.add(Type::U32, quad, 3u32);
    let inb = b.setp(Cmp::Lt, Type::U32, last, n);
    let v: [Reg; 4] = b.regs(RegClass::F32);
    for r in v {
        b.mov(Type::F32, r, 0.0f32);
    }
    let off = b.mul_wide_u32(quad, 4u32);
    let xa = b.add_u64(x, off);
    b.guarded(inb, false, |b| b.ld_vec(Space::Global, true, Type::F32, &v, Addr::reg(xa)));
    let s01 = b.bin(BinOp::Add, Type::F32, v[0], v[1]);
    let s23 = b.bin(BinOp::Add, Type::F32, v[2], v[3]);
    let s = b.bin(BinOp::Add, Type::F32, s01, s23);

    // neighbour (t+1) through static shared memory, partner (t^1) through dynamic shared memory
    let sh_base = b.shared_addr(&sh);
    let dyn_base = b.shared_addr(&dynsym);
    let t4 = b.mul_lo(Type::U32, tid, 4u32);
    let my_sh = b.add(Type::U32, sh_base, t4);
    b.st(Space::Shared, Type::F32, Addr::reg(my_sh), s);
    let ss = b.bin(BinOp::Mul, Type::F32, s, scale);
    let my_dyn = b.add(Type::U32, dyn_base, t4);
    b.st(Space::Shared, Type::F32, Addr::reg(my_dyn), ss);
    b.bar_sync();
    let t1 = b.add(Type::U32, tid, 1u32);
    let nb_idx = b.bin(BinOp::And, Type::U32, t1, THREADS - 1);
    let nb_off = b.mul_lo(Type::U32, nb_idx, 4u32);
    let nb_a = b.add(Type::U32, sh_base, nb_off);
    let nb = b.ld(Space::Shared, Type::F32, Addr::reg(nb_a));
    let mirror = b.bin(BinOp::Xor, Type::U32, tid, 1u32);
    let mo = b.mul_lo(Type::U32, mirror, 4u32);
    let mo_a = b.add(Type::U32, dyn_base, mo);
    let mir = b.ld(Space::Shared, Type::F32, Addr::reg(mo_a));

    // a per-thread trip count (tid % 4) and a uniform one (3)
    let cnt = b.val(Type::F32, 0.0f32);
    let trips = b.bin(BinOp::Rem, Type::U32, tid, 4u32);
    b.for_range(0u32, trips, 1, false, |b, _| b.bin_to(BinOp::Add, Type::F32, cnt, cnt, 1.0f32));
    b.for_range(0u32, 3u32, 1, true, |b, i| {
        let f = b.cvt(Type::F32, Type::U32, Some(Rnd::Rn), i);
        let h = b.bin(BinOp::Mul, Type::F32, f, 0.125f32);
        b.bin_to(BinOp::Add, Type::F32, cnt, cnt, h);
    });

    // through local memory
    b.st(Space::Local, Type::F32, Addr::sym(&loc).plus(8), s);
    let l = b.ld(Space::Local, Type::F32, Addr::sym(&loc).plus(8));

    // y[t] = nb + mir + cnt + l (at (y + 4(t+1)) - 4); only threads below n/4 store
    let a1 = b.bin(BinOp::Add, Type::F32, nb, mir);
    let a2 = b.bin(BinOp::Add, Type::F32, a1, cnt);
    let out = b.bin(BinOp::Add, Type::F32, a2, l);
    let yo = b.mad_wide_u32(tid, 4u32, 4u64);
    let ya = b.add_u64(y, yo);
    let nq = b.bin(BinOp::Shr, Type::U32, n, 2u32);
    let store_ok = b.setp(Cmp::Lt, Type::U32, tid, nq);
    b.if_then(store_ok, false, |b| {
        b.st(Space::Global, Type::F32, Addr::reg_off(ya, -4), out);
        // z[t] = bf16x2 { hi: s, lo: -s }
        let neg = b.unary(UnOp::Neg, Type::F32, s);
        let packed = b.pack_bf16x2(s, neg);
        let zo = b.mul_wide_u32(tid, 4u32);
        let za = b.add_u64(z, zo);
        b.st(Space::Global, Type::B32, Addr::reg(za), packed);
    });
    b.ret();
    let mut m = Module::new();
    m.push(b.finish());
    m
}

#[test]
fn builder_probe_assembles_and_runs() {
    let text = probe().render();
    assert!(text.contains(".extern .shared .align 16 .b8 probe_dyn[];"), "{text}");
    assert!(text.contains(".local .align 4 .b8 probe_loc[16];"), "{text}");
    assert!(text.contains("bra.uni"), "{text}");
    assert!(text.contains("+-4]"), "{text}");
    if let Some(r) = ptxas::assemble_or_skip(&text, "builder probe") {
        let k = r.kernel("builder_probe").expect("ptxas reports the kernel");
        assert_eq!(k.shared_bytes, THREADS * 4, "static shared memory: {k:?}");
        assert!(k.registers > 0);
    }

    let n_valid = 100u32; // threads 0..25 have data and store
    let x: Vec<f32> = (0..THREADS * 4).map(|i| ((i * 37 % 101) as f32 - 50.0) / 8.0).collect();
    let scale = 0.75f32;
    let dev = SimDevice::new();
    let m = dev.load_module(&text).unwrap();
    let xb = dev.upload_f32(&x).unwrap();
    let yb = dev.upload_f32(&vec![f32::NAN; THREADS as usize]).unwrap();
    let zb = dev.upload_u32(&vec![0xdeadbeef; THREADS as usize]).unwrap();
    let cfg = LaunchConfig { grid: [1, 1, 1], block: [THREADS, 1, 1], shared_bytes: THREADS * 4 };
    dev.launch(
        &m,
        "builder_probe",
        cfg,
        &[KernelArg::Buf(xb, 0), KernelArg::Buf(yb, 0), KernelArg::Buf(zb, 0), KernelArg::U32(n_valid), KernelArg::F32(scale)],
    )
    .unwrap();
    let y = dev.download_f32(&yb).unwrap();
    let z = dev.download_u32(&zb).unwrap();
    let s: Vec<f32> = (0..THREADS as usize)
        .map(|t| if 4 * t + 3 < n_valid as usize { (x[4 * t] + x[4 * t + 1]) + (x[4 * t + 2] + x[4 * t + 3]) } else { 0.0 })
        .collect();
    for t in 0..THREADS as usize {
        if t < (n_valid / 4) as usize {
            let cnt = (t % 4) as f32 + (0.0 + 0.125 + 0.25);
            let want = ((s[(t + 1) % 128] + s[t ^ 1] * scale) + cnt) + s[t];
            assert_eq!(y[t], want, "y[{t}]");
            let (hi, lo) = ((z[t] >> 16) as u16, (z[t] & 0xffff) as u16);
            assert_eq!(hi, f32_to_bf16(s[t]), "z[{t}] high half");
            assert_eq!(bf16_to_f32(lo), -bf16_to_f32(hi), "z[{t}] low half");
        } else {
            assert!(y[t].is_nan(), "y[{t}] must not be written");
            assert_eq!(z[t], 0xdeadbeef, "z[{t}] must not be written");
        }
    }
}
