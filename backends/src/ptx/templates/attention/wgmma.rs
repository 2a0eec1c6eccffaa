//! The Hopper attention forward (head dim 64, bf16, causal, GQA): TMA,
//! mbarriers and warp-specialized `wgmma`, FlashAttention-3's structure
//! without its ping-pong scheduling yet.
//!
//! A block takes 128 query rows of one head with three warpgroups: the
//! producer's thread 0 loads the Q tile once and streams the 64-key K and V
//! tiles of the head's kv head through a 2-stage ring (`full` / `empty`
//! mbarriers); each consumer warpgroup owns 64 query rows and per key tile
//! computes `S = Q K^T` (four `wgmma.m64n64k16`, Q and K from 128-byte
//! swizzled descriptors), the online softmax in the log2 domain on the
//! accumulators (each thread holds two rows), and `O += P V` (four
//! `wgmma.m64n64k16` with P from registers in the A-fragment layout and V
//! transposed from shared memory). Tiles above the diagonal are skipped;
//! keys past the row's position or past `T` are masked.
//!
//! Parameters: `q, k, v` (tensor maps over the `[rows, 64]` bf16 matrices of
//! the `[B, heads, T, 64]` tensors; boxes of 128 rows for q, 64 for k and v),
//! then `o, lse` (pointers), `h, hk, t` (`.u32`), `scale` (`.f32`). Outputs as
//! the mma.sync forward writes them: `o` in [`AttnConfig::out`], `lse` the
//! natural-log log-sum-exp rows (f32 `[B, H, T]`), so its backward reads them.

use super::common::*;
use super::mma::c_to_a;
use crate::ptx::builder::*;
use crate::ptx::templates::gemm_wgmma;

/// Query rows per block (two consumer warpgroups of 64).
pub const BLOCK_Q: u32 = 128;
/// Keys per tile.
pub const TILE_K: u32 = 64;
const THREADS: u32 = 384;
const STAGES: u32 = 2;
const HEAD_DIM: u32 = 64;
const ROW_BYTES: u32 = HEAD_DIM * 2;

/// The boxes the launch's tensor maps move: (q rows, k and v rows) of 64 columns.
pub const BOXES: (u32, u32) = (BLOCK_Q, TILE_K);

/// A 128-byte-swizzle descriptor (SBO 1024: 8 rows of 128 bytes).
fn descriptor(b: &mut KernelBuilder, addr: Reg, lbo: u32) -> Reg {
    gemm_wgmma::descriptor(b, addr, lbo, 8 * ROW_BYTES)
}

/// The forward kernel (`cfg.head_dim == 64`, bf16 precision, `[B, H, T, d]` layout).
pub(super) fn forward(cfg: &AttnConfig) -> AttnKernel {
    let q_bytes = BLOCK_Q * ROW_BYTES;
    let kv_bytes = TILE_K * ROW_BYTES;
    let stage_bytes = 2 * kv_bytes;
    let ring_off = q_bytes;
    let bars_off = ring_off + STAGES * stage_bytes;
    let smem_bytes = bars_off + 8 * (1 + 2 * STAGES) + 1024;

    let mut b = KernelBuilder::new(&format!("attn_fwd_wgmma_{}", cfg.tag()));
    b.max_threads(THREADS, Some(1));
    b.comment(format!("{cfg:?}: wgmma forward, {BLOCK_Q} query rows x {TILE_K}-key tiles, {STAGES}-stage TMA ring"));
    let q_map = b.tensor_map_param("q");
    let k_map = b.tensor_map_param("k");
    let v_map = b.tensor_map_param("v");
    let ptrs: Vec<Reg> = ["o", "lse"].iter().map(|n| {
        let p = b.param(n, ParamType::U64);
        b.ld_param_global_ptr(&p)
    }).collect();
    let (o, lse) = (ptrs[0], ptrs[1]);
    let ph = b.param("h", ParamType::U32);
    let phk = b.param("hk", ParamType::U32);
    let pt = b.param("t", ParamType::U32);
    let ps = b.param("scale", ParamType::F32);
    let (h, hk, t, scale) = (b.ld_param(&ph), b.ld_param(&phk), b.ld_param(&pt), b.ld_param(&ps));
    let p = AttnParams { ptrs: ptrs.clone(), h, hk, t, scale };
    let smem_sym = b.extern_shared("pgc_dyn_smem", 1024);
    let raw = b.shared_addr(&smem_sym);
    let up = b.add(Type::U32, raw, 1023u32);
    let smem = b.bin(BinOp::And, Type::U32, up, !1023u32);
    let QueryBlock { hh, bb, kvh, q0 } = query_block(&mut b, &p, BLOCK_Q);
    let tid = b.special(Special::TidX);
    let bars = b.add(Type::U32, smem, bars_off);
    let q_full = Addr::reg(bars);
    let full = |b: &mut KernelBuilder, s: Reg| -> Addr {
        let a = b.mad_lo(Type::U32, s, 8u32, bars);
        Addr::reg_off(a, 8)
    };
    let empty = |b: &mut KernelBuilder, s: Reg| -> Addr {
        let a = b.mad_lo(Type::U32, s, 8u32, bars);
        Addr::reg_off(a, 8 + 8 * STAGES as i64)
    };
    // key tiles 0 ..= min(last query, T - 1) / TILE_K
    let n_kt = {
        let qlast = b.add(Type::U32, q0, BLOCK_Q - 1);
        let tl = b.bin(BinOp::Sub, Type::U32, t, 1u32);
        let klast = b.bin(BinOp::Min, Type::U32, qlast, tl);
        let kt = b.bin(BinOp::Div, Type::U32, klast, TILE_K);
        b.add(Type::U32, kt, 1u32)
    };
    // first rows of this head's q and of its kv head's k, v in the [rows, 64] matrices
    let q_row0 = {
        let bh = b.mad_lo(Type::U32, bb, h, hh);
        let r = b.mul_lo(Type::U32, bh, t);
        b.add(Type::U32, r, q0)
    };
    let kv_row0 = {
        let bh = b.mad_lo(Type::U32, bb, hk, kvh);
        b.mul_lo(Type::U32, bh, t)
    };

    let t0 = b.setp(Cmp::Eq, Type::U32, tid, 0u32);
    b.if_then(t0, false, |b| {
        b.mbar_init(q_full.clone(), 1u32);
        for s in 0..STAGES {
            let sv = b.val(Type::U32, s);
            let f = full(b, sv);
            b.mbar_init(f, 1u32);
            let e = empty(b, sv);
            // one arrival per consumer warp
            b.mbar_init(e, 8u32);
        }
        b.push(Inst::FenceMbarrierInit);
    });
    let (wg, consumer) = gemm_wgmma::split_warpgroups(&mut b, tid);

    b.comment("producer: thread 0 loads Q once, then streams the K / V tiles");
    let done = b.new_label();
    b.push_guarded(Guard { pred: t0, negate: true }, Inst::Bra { target: done, uni: false });
    b.mbar_arrive(q_full.clone(), Some(Operand::Imm(q_bytes as i64)));
    b.tma_load(Addr::reg(smem), q_map, vec![0u32.into(), q_row0.into()], q_full.clone());
    {
        let stage = b.val(Type::U32, 0u32);
        let phase = b.val(Type::U32, 0u32);
        b.for_range(0u32, n_kt, 1, false, |b, j| {
            let reuse = b.setp(Cmp::Ge, Type::U32, j, STAGES);
            b.if_then(reuse, false, |b| {
                let par = b.bin(BinOp::Xor, Type::U32, phase, 1u32);
                let e = empty(b, stage);
                b.mbar_wait(e, par);
            });
            let f = full(b, stage);
            b.mbar_arrive(f.clone(), Some(Operand::Imm(stage_bytes as i64)));
            let ks = b.mad_lo(Type::U32, stage, stage_bytes, smem);
            let ks = b.add(Type::U32, ks, ring_off);
            let vs = b.add(Type::U32, ks, kv_bytes);
            let r = b.mad_lo(Type::U32, j, TILE_K, kv_row0);
            b.tma_load(Addr::reg(ks), k_map, vec![0u32.into(), r.into()], f.clone());
            b.tma_load(Addr::reg(vs), v_map, vec![0u32.into(), r.into()], f);
            advance(b, stage, phase);
        });
    }
    b.place(done);
    b.ret();

    b.place(consumer);
    b.comment("consumers: 64 query rows each");
    let cw = b.add(Type::U32, wg, u32::MAX);
    let lane = b.bin(BinOp::And, Type::U32, tid, 31u32);
    let warp = {
        let w = b.bin(BinOp::Shr, Type::U32, tid, 5u32);
        b.bin(BinOp::And, Type::U32, w, 3u32)
    };
    let g = b.bin(BinOp::Shr, Type::U32, lane, 2u32);
    let tq = b.bin(BinOp::And, Type::U32, lane, 3u32);
    let col2 = b.mul_lo(Type::U32, tq, 2u32);
    let lane0 = b.setp(Cmp::Eq, Type::U32, lane, 0u32);
    // this thread's rows: row_a, row_a + 8 (positions in the sequence)
    let wrow = b.mad_lo(Type::U32, cw, 64u32, q0);
    let wrow = b.mad_lo(Type::U32, warp, 16u32, wrow);
    let row_a = b.add(Type::U32, wrow, g);
    let c = fmul(&mut b, scale, LOG2E);
    let ninf = f32::NEG_INFINITY;
    let m = [b.val(Type::F32, ninf), b.val(Type::F32, ninf)];
    let l = [b.val(Type::F32, 0.0f32), b.val(Type::F32, 0.0f32)];
    let oacc: Vec<Reg> = (0..HEAD_DIM / 2).map(|_| b.val(Type::F32, 0.0f32)).collect();
    let sacc: Vec<Reg> = (0..TILE_K / 2).map(|_| b.reg(RegClass::F32)).collect();
    let q_base = b.mad_lo(Type::U32, cw, 64 * ROW_BYTES, smem);
    b.mbar_wait(q_full, 0u32);
    {
        let stage = b.val(Type::U32, 0u32);
        let phase = b.val(Type::U32, 0u32);
        // the warpgroup's last key tile (the other one may need one more);
        // wgmma is warpgroup-wide, so the four warps skip together
        let my_last = {
            let r = b.mad_lo(Type::U32, cw, 64u32, q0);
            let r = b.add(Type::U32, r, 63u32);
            b.bin(BinOp::Div, Type::U32, r, TILE_K)
        };
        b.for_range(0u32, n_kt, 1, true, |b, j| {
            let f = full(b, stage);
            b.mbar_wait(f, phase);
            let ks = b.mad_lo(Type::U32, stage, stage_bytes, smem);
            let ks = b.add(Type::U32, ks, ring_off);
            let vs = b.add(Type::U32, ks, kv_bytes);
            // a warpgroup whose rows all precede the tile skips it (its P would be 0)
            let skip = b.setp(Cmp::Gt, Type::U32, j, my_last);
            let next = b.new_label();
            b.push_guarded(Guard { pred: skip, negate: false }, Inst::Bra { target: next, uni: false });
            b.comment("S = Q K^T");
            b.wgmma_fence();
            for kk in 0..HEAD_DIM / 16 {
                let qa = b.add(Type::U32, q_base, kk * 32);
                let da = descriptor(b, qa, 16);
                let ka = b.add(Type::U32, ks, kk * 32);
                let db = descriptor(b, ka, 16);
                b.wgmma(&sacc, WgmmaA::Desc(da), db, if kk == 0 { 0u32 } else { 1u32 }, false, false);
            }
            b.wgmma_commit();
            b.wgmma_wait(0);
            let s4: Vec<[Reg; 4]> = sacc.chunks(4).map(|q| {
                let v: Vec<Reg> = q.iter().map(|&x| fmul(b, x, c)).collect();
                [v[0], v[1], v[2], v[3]]
            }).collect();
            b.comment("mask keys past each row (and past T)");
            let k0 = b.mul_lo(Type::U32, j, TILE_K);
            let kc = b.add(Type::U32, k0, col2);
            let row_b = b.add(Type::U32, row_a, 8u32);
            let tl = b.bin(BinOp::Sub, Type::U32, t, 1u32);
            for (nt, q4) in s4.iter().enumerate() {
                for (e, &x) in q4.iter().enumerate() {
                    let key = b.add(Type::U32, kc, nt as u32 * 8 + (e as u32 & 1));
                    let row = if e < 2 { row_a } else { row_b };
                    let lim = b.bin(BinOp::Min, Type::U32, row, tl);
                    let masked = b.setp(Cmp::Gt, Type::U32, key, lim);
                    b.push_guarded(Guard { pred: masked, negate: false }, Inst::Mov { ty: Type::F32, dst: x, src: ninf.into() });
                }
            }
            b.comment("online softmax (log2 domain)");
            let mut alpha = [m[0]; 2];
            let mut base = [m[0]; 2];
            for hr in 0..2 {
                let vals: Vec<Reg> = s4.iter().flat_map(|q4| [q4[2 * hr], q4[2 * hr + 1]]).collect();
                let mx = vals[1..].iter().fold(vals[0], |acc, &x| fmax(b, acc, x));
                let mx = group_reduce(b, mx, 4, BinOp::Max);
                let mnew = fmax(b, m[hr], mx);
                // a row with every key masked so far keeps -inf: exponents from 0 then
                let dead = b.setp(Cmp::Eq, Type::F32, mnew, ninf);
                base[hr] = b.selp(Type::F32, 0.0f32, mnew, dead);
                let dm = fsub(b, m[hr], base[hr]);
                alpha[hr] = ex2(b, dm);
                b.mov(Type::F32, m[hr], mnew);
            }
            let mut pr: Vec<[Reg; 4]> = Vec::new();
            let mut rsum = [None, None];
            for q4 in &s4 {
                let mut outp = [q4[0]; 4];
                for (e, &x) in q4.iter().enumerate() {
                    let hr = e / 2;
                    let d = fsub(b, x, base[hr]);
                    let pe = ex2(b, d);
                    outp[e] = pe;
                    rsum[hr] = Some(match rsum[hr] {
                        None => pe,
                        Some(acc) => fadd(b, acc, pe),
                    });
                }
                pr.push(outp);
            }
            for hr in 0..2 {
                b.fma_f32_to(l[hr], l[hr], alpha[hr], rsum[hr].unwrap_or(l[hr]));
            }
            for (i, &x) in oacc.iter().enumerate() {
                fmul_to(b, x, alpha[(i / 2) % 2]);
            }
            b.comment("O += P V (P from registers, V transposed)");
            let pa: Vec<[Reg; 4]> = (0..TILE_K as usize / 16).map(|kk| c_to_a(b, &pr, kk)).collect();
            b.wgmma_fence();
            for (kk, a) in pa.iter().enumerate() {
                let va = b.add(Type::U32, vs, kk as u32 * 16 * ROW_BYTES);
                let db = descriptor(b, va, 64 * ROW_BYTES);
                b.wgmma(&oacc, WgmmaA::Regs(*a), db, 1u32, false, true);
            }
            b.wgmma_commit();
            b.wgmma_wait(0);
            b.place(next);
            b.if_then(lane0, false, |b| {
                let e = empty(b, stage);
                b.mbar_arrive(e, None);
            });
            advance(b, stage, phase);
        });
    }

    b.comment("normalize and store O, lse");
    let rows = ForwardRows { bb, hh, row_a, tq, col2 };
    let o4: Vec<[Reg; 4]> = oacc.chunks(4).map(|q| [q[0], q[1], q[2], q[3]]).collect();
    store_forward(&mut b, cfg, (o, lse), &p, &rows, (l, m), &o4);
    b.ret();
    AttnKernel { kernel: b.finish(), threads: THREADS, smem_bytes, grid_kind: GridKind::QueryBlocks, rows_per_block: BLOCK_Q }
}

/// `stage += 1` around the ring, flipping `phase` at the wrap.
fn advance(b: &mut KernelBuilder, stage: Reg, phase: Reg) {
    gemm_wgmma::advance(b, stage, phase, STAGES)
}
