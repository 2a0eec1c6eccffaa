//! All-f32 attention (`--precision f32`): FFMA, no tensor cores.
//!
//! A group of `G = max(d / 16, 1)` consecutive threads owns one row (a
//! query in the forward and the dq kernel, a key in the dk/dv kernel); thread
//! `i` of the group holds dimensions `i, i + G, i + 2G, ..` in registers, so
//! the group reads a shared row with consecutive words (no bank conflicts,
//! and every row of the warp reads the same row: a broadcast). Dot products
//! are summed over the group with `shfl.sync.bfly`. The other operand streams
//! through shared memory in tiles of 32 rows (`cp.async`, one stage), one
//! row at a time, with a per-element online softmax in the forward.

use super::common::*;
use crate::ptx::builder::*;

const THREADS: u32 = 128;
/// Rows per shared-memory tile of the streamed operand.
const TILE: u32 = 32;

struct Geo {
    d: u32,
    /// threads per row
    g: u32,
    /// dimensions per thread
    dpt: u32,
    /// rows per block
    rows: u32,
}

fn geo(cfg: &AttnConfig) -> Geo {
    let d = cfg.head_dim;
    let g = (d / 16).max(1);
    Geo { d, g, dpt: d / g, rows: THREADS / g }
}

struct Thread {
    tid: Reg,
    /// index in the row group
    gi: Reg,
    /// local row
    rl: Reg,
    /// `gi * 4`
    gi4: Reg,
}

fn thread(b: &mut KernelBuilder, g: u32) -> Thread {
    let tid = b.special(Special::TidX);
    let gi = b.bin(BinOp::And, Type::U32, tid, g - 1);
    let rl = b.bin(BinOp::Shr, Type::U32, tid, g.trailing_zeros());
    let gi4 = b.mul_lo(Type::U32, gi, 4u32);
    Thread { tid, gi, rl, gi4 }
}

/// The thread's dimensions of row `row` of a head (zero when `!ok`).
fn load_dims(b: &mut KernelBuilder, ge: &Geo, hr: &HeadRows, row: Reg, th: &Thread, ok: Reg) -> Vec<Reg> {
    let ra = b.mad_wide_u32(row, hr.stride, hr.base);
    let c = b.cvt(Type::U64, Type::U32, None, th.gi4);
    let a = b.add_u64(ra, c);
    (0..ge.dpt)
        .map(|i| {
            let x = b.val(Type::F32, 0.0f32);
            b.guarded(ok, false, |b| b.ld_vec(Space::Global, true, Type::F32, &[x], Addr::reg_off(a, (i * ge.g * 4) as i64)));
            x
        })
        .collect()
}

fn store_dims(b: &mut KernelBuilder, ge: &Geo, hr: &HeadRows, row: Reg, th: &Thread, ok: Reg, vals: &[Reg]) {
    let ra = b.mad_wide_u32(row, hr.stride, hr.base);
    let c = b.cvt(Type::U64, Type::U32, None, th.gi4);
    let a = b.add_u64(ra, c);
    for (i, &v) in vals.iter().enumerate() {
        b.guarded(ok, false, |b| b.st(Space::Global, Type::F32, Addr::reg_off(a, (i as u32 * ge.g * 4) as i64), v));
    }
}

/// The thread's dimensions of shared row `base` (the thread's column offset included).
fn smem_dims(b: &mut KernelBuilder, ge: &Geo, base: Reg) -> Vec<Reg> {
    (0..ge.dpt).map(|i| b.ld(Space::Shared, Type::F32, Addr::reg_off(base, (i * ge.g * 4) as i64))).collect()
}

/// Dot product of two register vectors, summed over the row group.
fn dot(b: &mut KernelBuilder, ge: &Geo, x: &[Reg], y: &[Reg]) -> Reg {
    let mut acc = fmul(b, x[0], y[0]);
    for i in 1..x.len() {
        acc = b.fma_f32(x[i], y[i], acc);
    }
    group_reduce(b, acc, ge.g, BinOp::Add)
}

/// Number of key tiles the query rows `q0 .. q0 + rows` see: `ceil(min(q0 + rows, t) / TILE)`.
fn key_tiles(b: &mut KernelBuilder, q0: Reg, rows: u32, t: Reg) -> Reg {
    let e = b.add(Type::U32, q0, rows);
    let kend = b.bin(BinOp::Min, Type::U32, e, t);
    let k1 = b.add(Type::U32, kend, TILE - 1);
    b.bin(BinOp::Div, Type::U32, k1, TILE)
}

/// Stream key/value tiles `0..n_kt` through shared memory (the k tile at
/// `smem`, the v tile `tile_bytes` after it) and run `body(key, k_addr)` for
/// every key of each tile: `k_addr` is this thread's dims of the key in shared
/// memory, its value's at `k_addr + tile_bytes`.
#[allow(clippy::too_many_arguments)]
fn for_each_key(
    b: &mut KernelBuilder,
    th: &Thread,
    smem: Reg,
    tile_bytes: u32,
    (kr, vr): (&HeadRows, &HeadRows),
    n_kt: Reg,
    t: Reg,
    d: u32,
    mut body: impl FnMut(&mut KernelBuilder, Reg, Reg),
) {
    let loader = TileLoader::new(b, th.tid, THREADS, TILE, d * 4, d * 4, d * 4);
    let vs = b.add(Type::U32, smem, tile_bytes);
    let kt0 = b.add(Type::U32, smem, th.gi4);
    b.for_range(0u32, n_kt, 1, true, |b, kt| {
        let load = |b: &mut KernelBuilder, r0| {
            loader.load(b, smem, kr, r0, t);
            loader.load(b, vs, vr, r0, t);
        };
        stream_tile(b, kt, d, kt0, load, |b, _, key, ka| body(b, key, ka));
    });
}

/// Streams tile `tile` (rows `tile * TILE ..`) into shared memory with
/// `load(b, first row)` (cp.async, between barriers) and runs `body(b, j,
/// row, addr)` for each row `j` of it: `addr` is `base + j * d * 4`, the
/// thread's dims of the row when `base` is the tile's plus the thread's column.
fn stream_tile(
    b: &mut KernelBuilder,
    tile: Reg,
    d: u32,
    base: Reg,
    load: impl FnOnce(&mut KernelBuilder, Reg),
    mut body: impl FnMut(&mut KernelBuilder, Reg, Reg, Reg),
) {
    b.bar_sync();
    let r0 = b.mul_lo(Type::U32, tile, TILE);
    load(b, r0);
    b.cp_async_commit();
    b.cp_async_wait_all();
    b.bar_sync();
    b.for_range(0u32, TILE, 1, true, |b, j| {
        let row = b.add(Type::U32, r0, j);
        let addr = b.mad_lo(Type::U32, j, d * 4, base);
        body(b, j, row, addr);
    });
}

/// Opens kernel `attn_{kind}_{tag}` with its geometry and thread; `(rows,
/// row)` name what a block and a row group own in the comment.
fn open(cfg: &AttnConfig, kind: &str, params: &[&str], (rows, row): (&str, &str)) -> (KernelBuilder, Geo, AttnParams, Reg, Thread) {
    let ge = geo(cfg);
    let comment = format!("{cfg:?}: {} {rows} per block, {} threads per {row}", ge.rows, ge.g);
    let (mut b, p, smem) = open_kernel(&format!("attn_{kind}_{}", cfg.tag()), THREADS, params, comment);
    let th = thread(&mut b, ge.g);
    (b, ge, p, smem, th)
}

/// The block's query rows: the block, this thread's row, whether it is
/// inside T, and the rows of `q` in the row's head.
fn query_rows(b: &mut KernelBuilder, cfg: &AttnConfig, ge: &Geo, p: &AttnParams, th: &Thread, q: Reg) -> (QueryBlock, Reg, Reg, HeadRows) {
    let qb = query_block(b, p, ge.rows);
    let row = b.add(Type::U32, qb.q0, th.rl);
    let row_ok = b.setp(Cmp::Lt, Type::U32, row, p.t);
    let qr = head_rows(b, cfg.layout, q, qb.bb, qb.hh, p.h, p.t, ge.d, 4);
    (qb, row, row_ok, qr)
}

pub(super) fn forward(cfg: &AttnConfig) -> AttnKernel {
    let (mut b, ge, p, smem, th) = open(cfg, "fwd", &FWD_PARAMS, ("query rows", "row"));
    let d = ge.d;
    let tile_bytes = TILE * d * 4;
    let [q, k, v, o, lse] = [p.ptrs[0], p.ptrs[1], p.ptrs[2], p.ptrs[3], p.ptrs[4]];
    let (QueryBlock { hh, bb, kvh, q0 }, row, row_ok, qr) = query_rows(&mut b, cfg, &ge, &p, &th, q);
    let kr = head_rows(&mut b, cfg.layout, k, bb, kvh, p.hk, p.t, d, 4);
    let vr = head_rows(&mut b, cfg.layout, v, bb, kvh, p.hk, p.t, d, 4);
    let c = fmul(&mut b, p.scale, LOG2E);
    let qv = load_dims(&mut b, &ge, &qr, row, &th, row_ok);
    let ov: Vec<Reg> = (0..ge.dpt).map(|_| b.val(Type::F32, 0.0f32)).collect();
    let m = b.val(Type::F32, f32::NEG_INFINITY);
    let l = b.val(Type::F32, 0.0f32);
    let n_kt = key_tiles(&mut b, q0, ge.rows, p.t);
    for_each_key(&mut b, &th, smem, tile_bytes, (&kr, &vr), n_kt, p.t, d, |b, key, ka| {
        let kv = smem_dims(b, &ge, ka);
        let s = dot(b, &ge, &qv, &kv);
        let s2 = fmul(b, s, c);
        let masked = b.setp(Cmp::Gt, Type::U32, key, row);
        b.push_guarded(Guard { pred: masked, negate: false }, Inst::Mov { ty: Type::F32, dst: s2, src: f32::NEG_INFINITY.into() });
        let mnew = fmax(b, m, s2);
        let dm = fsub(b, m, mnew);
        let alpha = ex2(b, dm);
        let x = fsub(b, s2, mnew);
        let pp = ex2(b, x);
        b.fma_f32_to(l, l, alpha, pp);
        b.mov(Type::F32, m, mnew);
        let va = b.add(Type::U32, ka, tile_bytes);
        let vv = smem_dims(b, &ge, va);
        for (oi, vi) in ov.iter().zip(&vv) {
            let pv = fmul(b, pp, *vi);
            b.fma_f32_to(*oi, *oi, alpha, pv);
        }
    });
    let inv = b.unary(UnOp::Rcp, Type::F32, l);
    let outs: Vec<Reg> = ov.iter().map(|&x| fmul(&mut b, x, inv)).collect();
    let or = head_rows(&mut b, cfg.layout, o, bb, hh, p.h, p.t, d, 4);
    store_dims(&mut b, &ge, &or, row, &th, row_ok, &outs);
    let lg = b.unary(UnOp::Lg2Approx, Type::F32, l);
    let s2 = fadd(&mut b, m, lg);
    let val = fmul(&mut b, s2, LN2);
    let first = b.setp(Cmp::Eq, Type::U32, th.gi, 0u32);
    let w = b.and_pred(first, row_ok);
    let lb = stat_base(&mut b, lse, bb, hh, p.h, p.t);
    let la = b.mad_wide_u32(row, 4u32, lb);
    b.guarded(w, false, |b| b.st(Space::Global, Type::F32, Addr::reg(la), val));
    b.ret();
    AttnKernel { kernel: b.finish(), threads: THREADS, smem_bytes: 2 * tile_bytes, grid_kind: GridKind::QueryBlocks, rows_per_block: ge.rows }
}

/// dK and dV: a row group per key, streaming the query tiles of every query
/// head of the key's group.
pub(super) fn backward_dkdv(cfg: &AttnConfig) -> AttnKernel {
    let (mut b, ge, p, smem, th) = open(cfg, "bwd_dkdv", &BWD_PARAMS, ("keys", "key"));
    let d = ge.d;
    let tile_bytes = TILE * d * 4;
    let [q, k, v, dout, lse, dsum, _dq, dk, dv] =
        [p.ptrs[0], p.ptrs[1], p.ptrs[2], p.ptrs[3], p.ptrs[4], p.ptrs[5], p.ptrs[6], p.ptrs[7], p.ptrs[8]];
    let (kb, kvh, bb) = grid_xyz(&mut b, false);
    let group = b.bin(BinOp::Div, Type::U32, p.h, p.hk);
    let h0 = b.mul_lo(Type::U32, kvh, group);
    let k0 = b.mul_lo(Type::U32, kb, ge.rows);
    let key = b.add(Type::U32, k0, th.rl);
    let key_ok = b.setp(Cmp::Lt, Type::U32, key, p.t);
    let kr = head_rows(&mut b, cfg.layout, k, bb, kvh, p.hk, p.t, d, 4);
    let vr = head_rows(&mut b, cfg.layout, v, bb, kvh, p.hk, p.t, d, 4);
    let c = fmul(&mut b, p.scale, LOG2E);
    let kv = load_dims(&mut b, &ge, &kr, key, &th, key_ok);
    let vv = load_dims(&mut b, &ge, &vr, key, &th, key_ok);
    let dkv: Vec<Reg> = (0..ge.dpt).map(|_| b.val(Type::F32, 0.0f32)).collect();
    let dvv: Vec<Reg> = (0..ge.dpt).map(|_| b.val(Type::F32, 0.0f32)).collect();
    let qt0 = b.bin(BinOp::Div, Type::U32, k0, TILE);
    let t1 = b.add(Type::U32, p.t, TILE - 1);
    let nqt = b.bin(BinOp::Div, Type::U32, t1, TILE);
    let loader = TileLoader::new(&mut b, th.tid, THREADS, TILE, d * 4, d * 4, d * 4);
    let qs = smem;
    let dos = b.add(Type::U32, smem, tile_bytes);
    let ls = b.add(Type::U32, smem, 2 * tile_bytes);
    let dss = b.add(Type::U32, ls, TILE * 4);
    let q_t = b.add(Type::U32, qs, th.gi4);
    b.for_range(0u32, group, 1, true, |b, hi| {
        let hh = b.add(Type::U32, h0, hi);
        let qr = head_rows(b, cfg.layout, q, bb, hh, p.h, p.t, d, 4);
        let dor = head_rows(b, cfg.layout, dout, bb, hh, p.h, p.t, d, 4);
        let lb = stat_base(b, lse, bb, hh, p.h, p.t);
        let db = stat_base(b, dsum, bb, hh, p.h, p.t);
        b.for_range(qt0, nqt, 1, true, |b, qt| {
            let load = |b: &mut KernelBuilder, r0| {
                loader.load(b, qs, &qr, r0, p.t);
                loader.load(b, dos, &dor, r0, p.t);
                load_stats(b, th.tid, 0, TILE, ls, lb, r0, p.t);
                load_stats(b, th.tid, TILE, TILE, dss, db, r0, p.t);
            };
            stream_tile(b, qt, d, q_t, load, |b, i, query, qa| {
                let qi = smem_dims(b, &ge, qa);
                let doa = b.add(Type::U32, qa, tile_bytes);
                let doi = smem_dims(b, &ge, doa);
                let s = dot(b, &ge, &kv, &qi);
                let dp = dot(b, &ge, &vv, &doi);
                let i4 = b.mul_lo(Type::U32, i, 4u32);
                let la = b.add(Type::U32, ls, i4);
                let lse_i = b.ld(Space::Shared, Type::F32, Addr::reg(la));
                let ds_i = b.ld(Space::Shared, Type::F32, Addr::reg_off(la, (TILE * 4) as i64));
                let nl = fmul(b, lse_i, -LOG2E);
                let x = b.fma_f32(s, c, nl);
                let pp = ex2(b, x);
                let vis = b.setp(Cmp::Ge, Type::U32, query, key);
                let inq = b.setp(Cmp::Lt, Type::U32, query, p.t);
                let ok = b.and_pred(vis, inq);
                b.push_guarded(Guard { pred: ok, negate: true }, Inst::Mov { ty: Type::F32, dst: pp, src: 0.0f32.into() });
                let dd = fsub(b, dp, ds_i);
                let dsc = fmul(b, pp, dd);
                for ii in 0..ge.dpt as usize {
                    b.fma_f32_to(dvv[ii], pp, doi[ii], dvv[ii]);
                    b.fma_f32_to(dkv[ii], dsc, qi[ii], dkv[ii]);
                }
            });
        });
    });
    let dks: Vec<Reg> = dkv.iter().map(|&x| fmul(&mut b, x, p.scale)).collect();
    let dkr = head_rows(&mut b, cfg.layout, dk, bb, kvh, p.hk, p.t, d, 4);
    let dvr = head_rows(&mut b, cfg.layout, dv, bb, kvh, p.hk, p.t, d, 4);
    store_dims(&mut b, &ge, &dkr, key, &th, key_ok, &dks);
    store_dims(&mut b, &ge, &dvr, key, &th, key_ok, &dvv);
    b.ret();
    AttnKernel {
        kernel: b.finish(),
        threads: THREADS,
        smem_bytes: 2 * tile_bytes + 2 * TILE * 4,
        grid_kind: GridKind::KeyBlocks,
        rows_per_block: ge.rows,
    }
}

/// dQ: a row group per query, streaming the visible key/value tiles.
pub(super) fn backward_dq(cfg: &AttnConfig) -> AttnKernel {
    let (mut b, ge, p, smem, th) = open(cfg, "bwd_dq", &BWD_PARAMS, ("query rows", "row"));
    let d = ge.d;
    let tile_bytes = TILE * d * 4;
    let [q, k, v, dout, lse, dsum, dq, _dk, _dv] =
        [p.ptrs[0], p.ptrs[1], p.ptrs[2], p.ptrs[3], p.ptrs[4], p.ptrs[5], p.ptrs[6], p.ptrs[7], p.ptrs[8]];
    let (QueryBlock { hh, bb, kvh, q0 }, row, row_ok, qr) = query_rows(&mut b, cfg, &ge, &p, &th, q);
    let dor = head_rows(&mut b, cfg.layout, dout, bb, hh, p.h, p.t, d, 4);
    let kr = head_rows(&mut b, cfg.layout, k, bb, kvh, p.hk, p.t, d, 4);
    let vr = head_rows(&mut b, cfg.layout, v, bb, kvh, p.hk, p.t, d, 4);
    let c = fmul(&mut b, p.scale, LOG2E);
    let qv = load_dims(&mut b, &ge, &qr, row, &th, row_ok);
    let dov = load_dims(&mut b, &ge, &dor, row, &th, row_ok);
    let stat = |b: &mut KernelBuilder, ptr: Reg| {
        let sb = stat_base(b, ptr, bb, hh, p.h, p.t);
        let a = b.mad_wide_u32(row, 4u32, sb);
        let x = b.val(Type::F32, 0.0f32);
        b.guarded(row_ok, false, |b| b.ld_vec(Space::Global, true, Type::F32, &[x], Addr::reg(a)));
        x
    };
    let lse_r = stat(&mut b, lse);
    let nl = fmul(&mut b, lse_r, -LOG2E);
    let ds_r = stat(&mut b, dsum);
    let dqv: Vec<Reg> = (0..ge.dpt).map(|_| b.val(Type::F32, 0.0f32)).collect();
    let n_kt = key_tiles(&mut b, q0, ge.rows, p.t);
    for_each_key(&mut b, &th, smem, tile_bytes, (&kr, &vr), n_kt, p.t, d, |b, key, ka| {
        let kj = smem_dims(b, &ge, ka);
        let va = b.add(Type::U32, ka, tile_bytes);
        let vj = smem_dims(b, &ge, va);
        let s = dot(b, &ge, &qv, &kj);
        let dp = dot(b, &ge, &dov, &vj);
        let x = b.fma_f32(s, c, nl);
        let pp = ex2(b, x);
        let masked = b.setp(Cmp::Gt, Type::U32, key, row);
        b.push_guarded(Guard { pred: masked, negate: false }, Inst::Mov { ty: Type::F32, dst: pp, src: 0.0f32.into() });
        let dd = fsub(b, dp, ds_r);
        let dsc = fmul(b, pp, dd);
        for (acc, kx) in dqv.iter().zip(&kj) {
            b.fma_f32_to(*acc, dsc, *kx, *acc);
        }
    });
    let outs: Vec<Reg> = dqv.iter().map(|&x| fmul(&mut b, x, p.scale)).collect();
    let dqr = head_rows(&mut b, cfg.layout, dq, bb, hh, p.h, p.t, d, 4);
    store_dims(&mut b, &ge, &dqr, row, &th, row_ok, &outs);
    b.ret();
    AttnKernel { kernel: b.finish(), threads: THREADS, smem_bytes: 2 * tile_bytes, grid_kind: GridKind::QueryBlocks, rows_per_block: ge.rows }
}
