//! The Hopper attention kernels (head dim 64, bf16, causal, GQA): TMA,
//! mbarriers and warp-specialized `wgmma`, FlashAttention-3's structure
//! without its ping-pong scheduling yet. The forward first; the backward
//! ([`backward`]) below.
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
    init_barriers(&mut b, t0, &q_full, 1, &full, &empty);
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

// ---------------------------------------------------------------------------
// Backward.

/// Keys per backward block (two consumer warpgroups of 64).
pub const BWD_BLOCK_K: u32 = 128;
/// Query rows per backward tile.
pub const BWD_TILE_Q: u32 = 64;
/// The boxes the backward's tensor maps move: (q and do rows, k and v rows) of 64 columns.
pub const BWD_BOXES: (u32, u32) = (BWD_TILE_Q, 64);
const BWD_PRODUCER_REGS: u32 = 40;
const BWD_CONSUMER_REGS: u32 = 232;

/// The backward kernel (`cfg.head_dim == 64`, bf16, `[B, H, T, d]`).
///
/// A block owns 128 keys of one kv head; each consumer warpgroup 64 of them,
/// with dK and dV (64 x 64 each) accumulated in registers over every query
/// tile at or below the diagonal of every query head of the group. The
/// producer warpgroup streams 64-row Q and dO tiles through a 2-stage TMA
/// ring (thread 0) and the tile's lse / dsum rows into shared memory (warp 1).
/// Per tile a consumer computes, on wgmma: `S^T = K Q^T`, `dP^T = V dO^T`
/// (both K-major from 128-byte swizzled tiles), then `P^T` and
/// `dS^T = P^T (dP^T - dsum)` on the accumulators, `dV += P^T dO` and
/// `dK += dS^T Q` (A from registers, B MN-major), and `dQ = dS K` with dS^T
/// stored swizzled in shared memory as an MN-major A. The 64 x 64 f32 dQ
/// partial goes through shared memory to one `cp.reduce.async.bulk` add per
/// tile into the f32 `dq` (zeroed by the `dot` kernel), instead of 4096
/// scalar `red.global.add`s.
///
/// Parameters: `q, k, v, do` (tensor maps over the `[rows, 64]` bf16
/// matrices, boxes of [`BWD_BOXES`] rows), then `lse, dsum, dq, dk, dv`
/// (pointers), `h, hk, t`, `scale`: the mma.sync backward's contract.
pub(super) fn backward(cfg: &AttnConfig) -> AttnKernel {
    const TQ: u32 = BWD_TILE_Q;
    let half_bytes = 64 * ROW_BYTES; // a 64-row bf16 tile: 8 KiB
    let k_off = 0;
    let v_off = 2 * half_bytes;
    let ring_off = 4 * half_bytes;
    let stage_bytes = 2 * half_bytes; // Q, dO
    let ds_off = ring_off + STAGES * stage_bytes;
    let dq_off = ds_off + 2 * half_bytes;
    let dq_bytes = TQ * HEAD_DIM * 4;
    let stats_off = dq_off + 2 * dq_bytes;
    let stats_bytes = 2 * TQ * 4; // lse, dsum
    let bars_off = stats_off + STAGES * stats_bytes;
    let smem_bytes = bars_off + 8 * (1 + 2 * STAGES) + 1024;

    let mut b = KernelBuilder::new(&format!("attn_bwd_wgmma_{}", cfg.tag()));
    b.max_threads(THREADS, Some(1));
    b.comment(format!("{cfg:?}: wgmma backward, {BWD_BLOCK_K} keys per block x {TQ}-query tiles, {STAGES}-stage TMA ring"));
    let maps: Vec<Reg> = ["q", "k", "v", "do"].iter().map(|n| b.tensor_map_param(n)).collect();
    let (q_map, k_map, v_map, do_map) = (maps[0], maps[1], maps[2], maps[3]);
    let ptrs: Vec<Reg> = ["lse", "dsum", "dq", "dk", "dv"].iter().map(|n| {
        let p = b.param(n, ParamType::U64);
        b.ld_param_global_ptr(&p)
    }).collect();
    let (lse, dsum, dq, dk, dv) = (ptrs[0], ptrs[1], ptrs[2], ptrs[3], ptrs[4]);
    let ph = b.param("h", ParamType::U32);
    let phk = b.param("hk", ParamType::U32);
    let pt = b.param("t", ParamType::U32);
    let ps = b.param("scale", ParamType::F32);
    let (h, hk, t, scale) = (b.ld_param(&ph), b.ld_param(&phk), b.ld_param(&pt), b.ld_param(&ps));
    let smem_sym = b.extern_shared("pgc_dyn_smem", 1024);
    let raw = b.shared_addr(&smem_sym);
    let up = b.add(Type::U32, raw, 1023u32);
    let smem = b.bin(BinOp::And, Type::U32, up, !1023u32);
    let (kb, kvh, bb) = grid_xyz(&mut b, false);
    let tid = b.special(Special::TidX);
    let group = b.bin(BinOp::Div, Type::U32, h, hk);
    let k0 = b.mul_lo(Type::U32, kb, BWD_BLOCK_K);
    let h0 = b.mul_lo(Type::U32, kvh, group);
    // iterations: for each query head of the group, query tiles qt0 .. nq
    let qt0 = b.bin(BinOp::Div, Type::U32, k0, TQ);
    let tt = b.add(Type::U32, t, TQ - 1);
    let nq = b.bin(BinOp::Div, Type::U32, tt, TQ);
    let per_head = b.bin(BinOp::Sub, Type::U32, nq, qt0);
    let iters = b.mul_lo(Type::U32, per_head, group);
    let kv_row0 = {
        let bh = b.mad_lo(Type::U32, bb, hk, kvh);
        let r = b.mul_lo(Type::U32, bh, t);
        b.add(Type::U32, r, k0)
    };
    let bars = b.add(Type::U32, smem, bars_off);
    let kv_full = Addr::reg(bars);
    let full = |b: &mut KernelBuilder, s: Reg| -> Addr {
        let a = b.mad_lo(Type::U32, s, 8u32, bars);
        Addr::reg_off(a, 8)
    };
    let empty = |b: &mut KernelBuilder, s: Reg| -> Addr {
        let a = b.mad_lo(Type::U32, s, 8u32, bars);
        Addr::reg_off(a, 8 + 8 * STAGES as i64)
    };
    // (query head, query tile) of an iteration, advanced in loop order
    struct Cursor {
        h: Reg,
        qt: Reg,
    }
    let cursor = |b: &mut KernelBuilder| Cursor { h: b.val(Type::U32, h0), qt: b.val(Type::U32, qt0) };
    let step = |b: &mut KernelBuilder, cu: &Cursor| {
        b.bin_to(BinOp::Add, Type::U32, cu.qt, cu.qt, 1u32);
        let wrap = b.setp(Cmp::Ge, Type::U32, cu.qt, nq);
        b.push(Inst::Selp { ty: Type::U32, dst: cu.qt, a: qt0.into(), b: cu.qt.into(), p: wrap });
        let hn = b.add(Type::U32, cu.h, 1u32);
        b.push(Inst::Selp { ty: Type::U32, dst: cu.h, a: hn.into(), b: cu.h.into(), p: wrap });
    };
    // first row of (head, query tile) in the [B * H * T] rows of q, do, lse, dsum, dq
    let q_row = |b: &mut KernelBuilder, cu: &Cursor| -> Reg {
        let bh = b.mad_lo(Type::U32, bb, h, cu.h);
        let r = b.mul_lo(Type::U32, bh, t);
        b.mad_lo(Type::U32, cu.qt, TQ, r)
    };

    let t0 = b.setp(Cmp::Eq, Type::U32, tid, 0u32);
    // full: thread 0's arrival with the TMA bytes, and warp 1's 32 lanes with the row statistics
    init_barriers(&mut b, t0, &kv_full, 33, &full, &empty);
    // (computed before the split: both sides use them)
    let warp_id = b.bin(BinOp::Shr, Type::U32, tid, 5u32);
    let lane = b.bin(BinOp::And, Type::U32, tid, 31u32);
    let (wg, consumer) = gemm_wgmma::split_warpgroups(&mut b, tid);

    b.push(Inst::Setmaxnreg { inc: false, n: BWD_PRODUCER_REGS });
    b.comment("producer: thread 0 loads K, V once, then streams Q / dO tiles; warp 1 the lse / dsum rows");
    let done = b.new_label();
    let stats_warp = b.setp(Cmp::Eq, Type::U32, warp_id, 1u32);
    let not_t0 = b.new_label();
    b.push_guarded(Guard { pred: t0, negate: true }, Inst::Bra { target: not_t0, uni: false });
    {
        b.mbar_arrive(kv_full.clone(), Some(Operand::Imm(4 * half_bytes as i64)));
        for (i, (map, off)) in [(k_map, k_off), (k_map, k_off + half_bytes), (v_map, v_off), (v_map, v_off + half_bytes)].into_iter().enumerate() {
            let dst = b.add(Type::U32, smem, off);
            let r = b.add(Type::U32, kv_row0, (i as u32 % 2) * 64);
            b.tma_load(Addr::reg(dst), map, vec![0u32.into(), r.into()], kv_full.clone());
        }
        let stage = b.val(Type::U32, 0u32);
        let phase = b.val(Type::U32, 0u32);
        let cu = cursor(&mut b);
        b.for_range(0u32, iters, 1, false, |b, j| {
            let reuse = b.setp(Cmp::Ge, Type::U32, j, STAGES);
            b.if_then(reuse, false, |b| {
                let par = b.bin(BinOp::Xor, Type::U32, phase, 1u32);
                let e = empty(b, stage);
                b.mbar_wait(e, par);
            });
            let f = full(b, stage);
            b.mbar_arrive(f.clone(), Some(Operand::Imm(stage_bytes as i64)));
            let qs = b.mad_lo(Type::U32, stage, stage_bytes, smem);
            let qs = b.add(Type::U32, qs, ring_off);
            let dos = b.add(Type::U32, qs, half_bytes);
            let r = q_row(b, &cu);
            b.tma_load(Addr::reg(qs), q_map, vec![0u32.into(), r.into()], f.clone());
            b.tma_load(Addr::reg(dos), do_map, vec![0u32.into(), r.into()], f);
            step(b, &cu);
            advance(b, stage, phase);
        });
        b.bra(done);
    }
    b.place(not_t0);
    b.push_guarded(Guard { pred: stats_warp, negate: true }, Inst::Bra { target: done, uni: false });
    {
        let stage = b.val(Type::U32, 0u32);
        let phase = b.val(Type::U32, 0u32);
        let cu = cursor(&mut b);
        let two = b.mul_lo(Type::U32, lane, 2u32);
        b.for_range(0u32, iters, 1, true, |b, j| {
            let reuse = b.setp(Cmp::Ge, Type::U32, j, STAGES);
            b.if_then(reuse, false, |b| {
                let par = b.bin(BinOp::Xor, Type::U32, phase, 1u32);
                let e = empty(b, stage);
                b.mbar_wait(e, par);
            });
            let st = b.mad_lo(Type::U32, stage, stats_bytes, smem);
            let st = b.add(Type::U32, st, stats_off);
            let r0 = q_row(b, &cu);
            let q0 = b.mul_lo(Type::U32, cu.qt, TQ);
            for e in 0..2u32 {
                let pos = b.add(Type::U32, q0, two);
                let pos = b.add(Type::U32, pos, e);
                let ok = b.setp(Cmp::Lt, Type::U32, pos, t);
                let row = b.add(Type::U32, r0, two);
                let row = b.add(Type::U32, row, e);
                for (src, soff) in [(lse, 0u32), (dsum, TQ * 4)] {
                    let x = b.val(Type::F32, 0.0f32);
                    let ga = b.mad_wide_u32(row, 4u32, src);
                    b.guarded(ok, false, |b| b.ld_vec(Space::Global, true, Type::F32, &[x], Addr::reg(ga)));
                    let sa = b.mad_lo(Type::U32, two, 4u32, st);
                    b.st(Space::Shared, Type::F32, Addr::reg_off(sa, (soff + 4 * e) as i64), x);
                }
            }
            let f = full(b, stage);
            b.mbar_arrive(f, None);
            step(b, &cu);
            advance(b, stage, phase);
        });
    }
    b.place(done);
    b.ret();

    b.place(consumer);
    b.push(Inst::Setmaxnreg { inc: true, n: BWD_CONSUMER_REGS });
    b.comment("consumers: 64 keys each");
    let cw = b.add(Type::U32, wg, u32::MAX);
    let warp = b.bin(BinOp::And, Type::U32, warp_id, 3u32);
    let g = b.bin(BinOp::Shr, Type::U32, lane, 2u32);
    let tq = b.bin(BinOp::And, Type::U32, lane, 3u32);
    let col2 = b.mul_lo(Type::U32, tq, 2u32);
    let lane0 = b.setp(Cmp::Eq, Type::U32, lane, 0u32);
    let wtid = b.bin(BinOp::And, Type::U32, tid, 127u32);
    let leader = b.setp(Cmp::Eq, Type::U32, wtid, 0u32);
    let wg_k0 = b.mad_lo(Type::U32, cw, 64u32, k0);
    let wrow = b.mul_lo(Type::U32, warp, 16u32);
    let key_a = b.add(Type::U32, wg_k0, wrow);
    let key_a = b.add(Type::U32, key_a, g);
    let key_b = b.add(Type::U32, key_a, 8u32);
    let sub = b.mul_lo(Type::U32, cw, half_bytes);
    let ks = b.add(Type::U32, smem, sub);
    let vs = b.add(Type::U32, ks, v_off);
    let ds_base = b.add(Type::U32, ks, ds_off);
    let dq_s = b.mad_lo(Type::U32, cw, dq_bytes, smem);
    let dq_s = b.add(Type::U32, dq_s, dq_off);
    let c = fmul(&mut b, scale, LOG2E);
    let dkacc: Vec<Reg> = (0..HEAD_DIM / 2).map(|_| b.val(Type::F32, 0.0f32)).collect();
    let dvacc: Vec<Reg> = (0..HEAD_DIM / 2).map(|_| b.val(Type::F32, 0.0f32)).collect();
    let sacc: Vec<Reg> = (0..TQ / 2).map(|_| b.reg(RegClass::F32)).collect();
    let pacc: Vec<Reg> = (0..TQ / 2).map(|_| b.reg(RegClass::F32)).collect();
    let qacc: Vec<Reg> = (0..HEAD_DIM / 2).map(|_| b.reg(RegClass::F32)).collect();
    // this thread's dS^T rows (keys wrow + g, + 8) in the 128-byte-swizzled
    // [key][query] tile: 16-byte chunk j of the row lands at chunk j ^ g
    let ds_row = {
        let r = b.add(Type::U32, wrow, g);
        let a = b.mad_lo(Type::U32, r, ROW_BYTES, ds_base);
        b.mad_lo(Type::U32, tq, 4u32, a)
    };
    let chunk_off = |b: &mut KernelBuilder, j: u32| -> Reg {
        let x = b.bin(BinOp::Xor, Type::U32, g, j);
        b.bin(BinOp::Shl, Type::U32, x, 4u32)
    };
    let dq_row = {
        let r = b.add(Type::U32, wrow, g);
        let a = b.mad_lo(Type::U32, r, HEAD_DIM * 4, dq_s);
        b.mad_lo(Type::U32, col2, 4u32, a)
    };
    b.mbar_wait(kv_full, 0u32);
    {
        let stage = b.val(Type::U32, 0u32);
        let phase = b.val(Type::U32, 0u32);
        let cu = cursor(&mut b);
        let tl = b.bin(BinOp::Sub, Type::U32, t, 1u32);
        let wg_dead = b.setp(Cmp::Ge, Type::U32, wg_k0, t);
        b.for_range(0u32, iters, 1, true, |b, _j| {
            let f = full(b, stage);
            b.mbar_wait(f, phase);
            let qs = b.mad_lo(Type::U32, stage, stage_bytes, smem);
            let qs = b.add(Type::U32, qs, ring_off);
            let dos = b.add(Type::U32, qs, half_bytes);
            let st = b.mad_lo(Type::U32, stage, stats_bytes, smem);
            let st = b.add(Type::U32, st, stats_off);
            let q0 = b.mul_lo(Type::U32, cu.qt, TQ);
            // a warpgroup whose keys all follow the tile's queries (or lie past T) skips it
            let next = b.new_label();
            let qlast = b.add(Type::U32, q0, TQ - 1);
            let early = b.setp(Cmp::Lt, Type::U32, qlast, wg_k0);
            let skip = b.bin(BinOp::Or, Type::Pred, early, wg_dead);
            b.push_guarded(Guard { pred: skip, negate: false }, Inst::Bra { target: next, uni: false });

            b.comment("S^T = K Q^T, dP^T = V dO^T");
            b.wgmma_fence();
            for (acc, a_base, b_base) in [(&sacc, ks, qs), (&pacc, vs, dos)] {
                for kk in 0..HEAD_DIM / 16 {
                    let aa = b.add(Type::U32, a_base, kk * 32);
                    let da = descriptor(b, aa, 16);
                    let ba = b.add(Type::U32, b_base, kk * 32);
                    let db = descriptor(b, ba, 16);
                    b.wgmma(acc, WgmmaA::Desc(da), db, if kk == 0 { 0u32 } else { 1u32 }, false, false);
                }
                b.wgmma_commit();
            }
            b.wgmma_wait(1);
            b.comment("P^T = exp2(c S^T - log2e lse[query]), masked");
            let stat = |b: &mut KernelBuilder, off: u32| -> Vec<[Reg; 2]> {
                let base = b.mad_lo(Type::U32, col2, 4u32, st);
                (0..TQ / 8)
                    .map(|nt| {
                        let r: [Reg; 2] = b.regs(RegClass::F32);
                        b.ld_vec(Space::Shared, false, Type::F32, &r, Addr::reg_off(base, (off + nt * 32) as i64));
                        r
                    })
                    .collect()
            };
            let lsev = stat(b, 0);
            let s4: Vec<[Reg; 4]> = sacc.chunks(4).enumerate().map(|(nt, q4)| {
                let mut o = [q4[0]; 4];
                for (e, &x) in q4.iter().enumerate() {
                    let nl = fmul(b, lsev[nt][e & 1], -LOG2E);
                    let y = b.fma_f32(x, c, nl);
                    o[e] = ex2(b, y);
                }
                o
            }).collect();
            let need = {
                let kl = b.add(Type::U32, wg_k0, 63u32);
                let diag = b.setp(Cmp::Lt, Type::U32, q0, kl);
                let tail = b.setp(Cmp::Gt, Type::U32, qlast, tl);
                b.bin(BinOp::Or, Type::Pred, diag, tail)
            };
            b.if_then(need, false, |b| {
                let qc = b.add(Type::U32, q0, col2);
                for (nt, q4) in s4.iter().enumerate() {
                    for (e, &x) in q4.iter().enumerate() {
                        let qi = b.add(Type::U32, qc, nt as u32 * 8 + (e as u32 & 1));
                        let key = if e < 2 { key_a } else { key_b };
                        // a query before the key, or past T (a row of the next head)
                        let before = b.setp(Cmp::Lt, Type::U32, qi, key);
                        let past = b.setp(Cmp::Ge, Type::U32, qi, t);
                        let m = b.bin(BinOp::Or, Type::Pred, before, past);
                        b.push_guarded(Guard { pred: m, negate: false }, Inst::Mov { ty: Type::F32, dst: x, src: 0.0f32.into() });
                    }
                }
            });
            b.wgmma_wait(0);
            b.comment("dS^T = P^T (dP^T - dsum[query])");
            let dsv = stat(b, TQ * 4);
            let d4: Vec<[Reg; 4]> = pacc.chunks(4).enumerate().map(|(nt, q4)| {
                let mut o = [q4[0]; 4];
                for (e, &x) in q4.iter().enumerate() {
                    let y = fsub(b, x, dsv[nt][e & 1]);
                    o[e] = fmul(b, s4[nt][e], y);
                }
                o
            }).collect();
            let pf: Vec<[Reg; 4]> = (0..TQ as usize / 16).map(|kk| c_to_a(b, &s4, kk)).collect();
            let dsf: Vec<[Reg; 4]> = (0..TQ as usize / 16).map(|kk| c_to_a(b, &d4, kk)).collect();
            b.comment("dS^T -> shared (bf16, [key][query], 128-byte swizzle)");
            for (kk, f) in dsf.iter().enumerate() {
                // f: (row g, chunk 2kk), (row g + 8, chunk 2kk), (row g, 2kk + 1), (row g + 8, 2kk + 1)
                for (i, &w) in f.iter().enumerate() {
                    let j = 2 * kk as u32 + (i as u32 / 2);
                    let off = chunk_off(b, j);
                    let a = b.add(Type::U32, ds_row, off);
                    b.st(Space::Shared, Type::B32, Addr::reg_off(a, if i % 2 == 1 { 8 * ROW_BYTES as i64 } else { 0 }), w);
                }
            }
            b.comment("dV += P^T dO, dK += dS^T Q (A from registers, B MN-major)");
            b.wgmma_fence();
            for (acc, frags, b_base) in [(&dvacc, &pf, dos), (&dkacc, &dsf, qs)] {
                for (kk, a) in frags.iter().enumerate() {
                    let ba = b.add(Type::U32, b_base, kk as u32 * 16 * ROW_BYTES);
                    let db = descriptor(b, ba, 64 * ROW_BYTES);
                    b.wgmma(acc, WgmmaA::Regs(*a), db, 1u32, false, true);
                }
            }
            b.wgmma_commit();
            // the previous tile's dQ add must have read its shared buffer before it is rewritten
            b.if_then(leader, false, |b| b.push(Inst::BulkWait { n: 0, read: true }));
            b.fence_proxy_async();
            wg_barrier(b, cw);
            b.comment("dQ = dS K (dS^T from shared as an MN-major A, K MN-major)");
            b.wgmma_fence();
            for kk in 0..BWD_BLOCK_K / 2 / 16 {
                let aa = b.add(Type::U32, ds_base, kk * 16 * ROW_BYTES);
                let da = descriptor(b, aa, 64 * ROW_BYTES);
                let ba = b.add(Type::U32, ks, kk * 16 * ROW_BYTES);
                let db = descriptor(b, ba, 64 * ROW_BYTES);
                b.wgmma(&qacc, WgmmaA::Desc(da), db, if kk == 0 { 0u32 } else { 1u32 }, true, true);
            }
            b.wgmma_commit();
            b.wgmma_wait(0);
            b.comment("scale * dQ -> shared f32 [query][64], then one bulk add into dq");
            for (nt, q4) in qacc.chunks(4).enumerate() {
                for hr in 0..2 {
                    let v0 = fmul(b, q4[2 * hr], scale);
                    let v1 = fmul(b, q4[2 * hr + 1], scale);
                    let off = (hr as u32 * 8 * HEAD_DIM * 4 + nt as u32 * 32) as i64;
                    b.st_vec(Space::Shared, Type::F32, Addr::reg_off(dq_row, off), vec![v0.into(), v1.into()]);
                }
            }
            b.fence_proxy_async();
            wg_barrier(b, cw);
            b.if_then(leader, false, |b| {
                let left = b.bin(BinOp::Sub, Type::U32, t, q0);
                let rows = b.bin(BinOp::Min, Type::U32, left, TQ);
                let bytes = b.mul_lo(Type::U32, rows, HEAD_DIM * 4);
                let r = q_row(b, &cu);
                let ga = b.mad_wide_u32(r, HEAD_DIM * 4, dq);
                b.bulk_reduce_add_f32(Addr::reg(ga), Addr::reg(dq_s), bytes);
                b.push(Inst::BulkCommit);
            });
            b.place(next);
            b.if_then(lane0, false, |b| {
                let e = empty(b, stage);
                b.mbar_arrive(e, None);
            });
            step(b, &cu);
            advance(b, stage, phase);
        });
    }
    b.if_then(leader, false, |b| b.push(Inst::BulkWait { n: 0, read: false }));

    b.comment("store dK (scaled), dV");
    let ge = cfg.grad_out;
    let dkr = head_rows(&mut b, cfg.layout, dk, bb, kvh, hk, t, HEAD_DIM, ge.bytes());
    let dvr = head_rows(&mut b, cfg.layout, dv, bb, kvh, hk, t, HEAD_DIM, ge.bytes());
    let col_bytes = b.mul_lo(Type::U32, col2, ge.bytes());
    let col_bytes = b.cvt(Type::U64, Type::U32, None, col_bytes);
    for hr in 0..2usize {
        let key = if hr == 0 { key_a } else { key_b };
        let ok = b.setp(Cmp::Lt, Type::U32, key, t);
        for (rows, acc, scaled) in [(&dkr, &dkacc, true), (&dvr, &dvacc, false)] {
            let ra = b.mad_wide_u32(key, rows.stride, rows.base);
            let ra = b.add_u64(ra, col_bytes);
            for (nt, q4) in acc.chunks(4).enumerate() {
                let (v0, v1) = if scaled { (fmul(&mut b, q4[2 * hr], scale), fmul(&mut b, q4[2 * hr + 1], scale)) } else { (q4[2 * hr], q4[2 * hr + 1]) };
                store_row_vals(&mut b, ge, Addr::reg_off(ra, (nt as u32 * 8 * ge.bytes()) as i64), &[v0, v1], ok);
            }
        }
    }
    b.ret();
    AttnKernel { kernel: b.finish(), threads: THREADS, smem_bytes, grid_kind: GridKind::KeyBlocks, rows_per_block: BWD_BLOCK_K }
}

/// `bar.sync 1 + cw, 128`: the consumer warpgroup `cw`'s own named barrier.
fn wg_barrier(b: &mut KernelBuilder, cw: Reg) {
    let first = b.setp(Cmp::Eq, Type::U32, cw, 0u32);
    b.push_guarded(Guard { pred: first, negate: false }, Inst::BarCount { id: 1, count: 128, arrive: false });
    b.push_guarded(Guard { pred: first, negate: true }, Inst::BarCount { id: 2, count: 128, arrive: false });
}

/// Thread `t0` initialises the once-loaded tile's barrier `first` (one
/// arrival) and the ring's `full` (`full_count` arrivals) and `empty` (one
/// arrival per consumer warp) barriers of every stage.
fn init_barriers(b: &mut KernelBuilder, t0: Reg, first: &Addr, full_count: u32, full: &dyn Fn(&mut KernelBuilder, Reg) -> Addr, empty: &dyn Fn(&mut KernelBuilder, Reg) -> Addr) {
    b.if_then(t0, false, |b| {
        b.mbar_init(first.clone(), 1u32);
        for s in 0..STAGES {
            let sv = b.val(Type::U32, s);
            let f = full(b, sv);
            b.mbar_init(f, full_count);
            let e = empty(b, sv);
            b.mbar_init(e, 8u32);
        }
        b.push(Inst::FenceMbarrierInit);
    });
}
