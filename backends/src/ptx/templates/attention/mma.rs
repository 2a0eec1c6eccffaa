//! bf16 flash attention on tensor cores (`mma.sync.m16n8k16`, `ldmatrix`,
//! `cp.async`): the forward and the FlashAttention-2 backward.
//!
//! Fragment conventions (PTX ISA, m16n8k16): lane = 4 * g + tq; an A
//! fragment holds rows `g, g + 8` and columns `2tq, 2tq + 1, 2tq + 8, 2tq + 9`;
//! a C fragment `c0, c1` (row g, columns `2tq, 2tq + 1`) and `c2, c3` (row
//! g + 8). Two C tiles of adjacent 8-column groups are, packed to bf16, the
//! A fragment of the next product (`P` in `P V`, `dS` in `dS Q`).
//!
//! `ldmatrix.x4` lane addresses (lane supplies row `r = lane % 8` of matrix
//! `i = lane / 8`, `lo = i & 1`, `hi = i >> 1`), for a tile stored with row
//! stride `rs` bytes:
//! * `X = (lo * 8 + r) * rs + hi * 16`: A from `[m][k]` (non-trans), or B
//!   from `[k][n]` (`.trans`), giving two n-tiles' (b0, b1);
//! * `Y = (hi * 8 + r) * rs + lo * 16`: B from `[n][k]` (non-trans), two
//!   n-tiles, or A from `[k][m]` (`.trans`).

use super::common::*;
use crate::ptx::builder::*;

const WARPS: u32 = 4;
const THREADS: u32 = WARPS * 32;
/// Query rows (forward) / keys (backward) per block: 16 per warp.
const BLOCK: u32 = 16 * WARPS;
/// Keys per tile (forward) / queries per tile (backward).
const TILE: u32 = 64;

/// Per-thread lane decomposition.
struct Lanes {
    tid: Reg,
    warp: Reg,
    /// lane / 4
    g: Reg,
    /// lane % 4
    tq: Reg,
    /// ldmatrix offsets `X` and `Y` without the row stride applied: (row, col bytes)
    x_row: Reg,
    x_col: Reg,
    y_row: Reg,
    y_col: Reg,
}

impl Lanes {
    fn new(b: &mut KernelBuilder) -> Lanes {
        let tid = b.special(Special::TidX);
        let lane = b.bin(BinOp::And, Type::U32, tid, 31u32);
        let warp = b.bin(BinOp::Shr, Type::U32, tid, 5u32);
        let g = b.bin(BinOp::Shr, Type::U32, lane, 2u32);
        let tq = b.bin(BinOp::And, Type::U32, lane, 3u32);
        let i = b.bin(BinOp::Shr, Type::U32, lane, 3u32);
        let r = b.bin(BinOp::And, Type::U32, lane, 7u32);
        let lo = b.bin(BinOp::And, Type::U32, i, 1u32);
        let hi = b.bin(BinOp::Shr, Type::U32, i, 1u32);
        let x_row = b.mad_lo(Type::U32, lo, 8u32, r);
        let x_col = b.mul_lo(Type::U32, hi, 16u32);
        let y_row = b.mad_lo(Type::U32, hi, 8u32, r);
        let y_col = b.mul_lo(Type::U32, lo, 16u32);
        Lanes { tid, warp, g, tq, x_row, x_col, y_row, y_col }
    }

    /// `X` lane offset for row stride `rs`, plus `extra_rows` rows.
    fn x(&self, b: &mut KernelBuilder, rs: u32, extra_rows: Option<Reg>) -> Reg {
        let row = match extra_rows {
            Some(e) => b.add(Type::U32, self.x_row, e),
            None => self.x_row,
        };
        b.mad_lo(Type::U32, row, rs, self.x_col)
    }
    fn y(&self, b: &mut KernelBuilder, rs: u32, extra_rows: Option<Reg>) -> Reg {
        let row = match extra_rows {
            Some(e) => b.add(Type::U32, self.y_row, e),
            None => self.y_row,
        };
        b.mad_lo(Type::U32, row, rs, self.y_col)
    }
}

fn zero_acc(b: &mut KernelBuilder, n: u32) -> Vec<[Reg; 4]> {
    (0..n)
        .map(|_| {
            let r: [Reg; 4] = b.regs(RegClass::F32);
            for &x in &r {
                b.mov(Type::F32, x, 0.0f32);
            }
            r
        })
        .collect()
}

/// A fragments (bf16) for k-step `j` from C tiles `2j` and `2j + 1`.
pub(super) fn c_to_a(b: &mut KernelBuilder, c: &[[Reg; 4]], j: usize) -> [Reg; 4] {
    let (x, y) = (c[2 * j], c[2 * j + 1]);
    [b.pack_bf16x2(x[1], x[0]), b.pack_bf16x2(x[3], x[2]), b.pack_bf16x2(y[1], y[0]), b.pack_bf16x2(y[3], y[2])]
}

/// `acc[n-tiles] += A(16 x 16k) B`, where B's fragments come from one
/// `ldmatrix.x4` per n-tile pair and k-step: `addr(kstep, pair)` gives the
/// address, `trans` its mode.
fn mma_row(
    b: &mut KernelBuilder,
    acc: &mut [[Reg; 4]],
    a: &[[Reg; 4]],
    trans: bool,
    addr: impl Fn(u32, u32) -> Addr,
) {
    for (ks, af) in a.iter().enumerate() {
        for pair in 0..acc.len() as u32 / 2 {
            let r = b.ldmatrix(4, trans, addr(ks as u32, pair));
            let (c0, c1) = (acc[2 * pair as usize], acc[2 * pair as usize + 1]);
            b.mma_bf16(c0, *af, [r[0], r[1]], c0);
            b.mma_bf16(c1, *af, [r[2], r[3]], c1);
        }
    }
}

/// Padded head dimension (a multiple of the mma k, 16).
fn padded(d: u32) -> u32 {
    d.max(16)
}

/// Shared row stride (bytes) of a bf16 tile with `cols` columns: +16 bytes
/// so that the 8 rows of an ldmatrix phase land in distinct bank groups.
fn row_stride(cols: u32) -> u32 {
    cols * 2 + 16
}

/// The head of iteration `j` of `n` over a two-stage `cp.async` pipeline
/// (stage `i` at `stage0 + (i % 2) * stage_bytes`): waits for stage `j`,
/// starts `prefetch(b, stage address, j + 1)` of the next stage when there
/// is one, and returns stage `j`'s address.
fn pipeline_stage(
    b: &mut KernelBuilder,
    j: Reg,
    n: Reg,
    stage0: Reg,
    stage_bytes: u32,
    prefetch: impl FnOnce(&mut KernelBuilder, Reg, Reg),
) -> Reg {
    b.cp_async_wait(0);
    b.bar_sync();
    let jn = b.add(Type::U32, j, 1u32);
    let more = b.setp(Cmp::Lt, Type::U32, jn, n);
    let par_n = b.bin(BinOp::And, Type::U32, jn, 1u32);
    b.if_then(more, false, |b| {
        let next = b.mad_lo(Type::U32, par_n, stage_bytes, stage0);
        prefetch(b, next, jn);
    });
    b.cp_async_commit();
    let par = b.bin(BinOp::And, Type::U32, j, 1u32);
    b.mad_lo(Type::U32, par, stage_bytes, stage0)
}

// ---------------------------------------------------------------------------
// Forward.

pub(super) fn forward(cfg: &AttnConfig) -> AttnKernel {
    let d = cfg.head_dim;
    let dp = padded(d);
    let rs = row_stride(dp);
    let tile_bytes = TILE * rs;
    assert_eq!(BLOCK, TILE, "the diagonal logic assumes square tiles");
    // shared: Q, then 2 stages of (K, V)
    let q_off = 0;
    let kv_off = BLOCK * rs;
    let stage_bytes = 2 * tile_bytes;
    let smem_bytes = kv_off + 2 * stage_bytes;

    let (mut b, p, smem) = open_kernel(&format!("attn_fwd_{}", cfg.tag()), THREADS, &FWD_PARAMS, format!("{cfg:?}: {BLOCK} query rows x {TILE}-key tiles, head dim {d} (padded {dp})"));
    let [q, k, v, o, lse] = [p.ptrs[0], p.ptrs[1], p.ptrs[2], p.ptrs[3], p.ptrs[4]];
    let ln = Lanes::new(&mut b);
    let QueryBlock { hh, bb, kvh, q0 } = query_block(&mut b, &p, BLOCK);
    let es = 2;
    let qr = head_rows(&mut b, cfg.layout, q, bb, hh, p.h, p.t, d, es);
    let kr = head_rows(&mut b, cfg.layout, k, bb, kvh, p.hk, p.t, d, es);
    let vr = head_rows(&mut b, cfg.layout, v, bb, kvh, p.hk, p.t, d, es);
    let c = fmul(&mut b, p.scale, LOG2E);

    b.comment("Q tile, then K/V tile 0");
    let loader = TileLoader::new(&mut b, ln.tid, THREADS, TILE, dp * 2, d * 2, rs);
    let qs = b.add(Type::U32, smem, q_off);
    loader.load(&mut b, qs, &qr, q0, p.t);
    b.cp_async_commit();
    let zero = b.val(Type::U32, 0u32);
    let ks0 = b.add(Type::U32, smem, kv_off);
    let vs0 = b.add(Type::U32, ks0, tile_bytes);
    loader.load(&mut b, ks0, &kr, zero, p.t);
    loader.load(&mut b, vs0, &vr, zero, p.t);
    b.cp_async_commit();
    // key tiles 0 ..= min(last query, T - 1) / TILE
    let qlast = b.add(Type::U32, q0, BLOCK - 1);
    let tl = b.bin(BinOp::Sub, Type::U32, p.t, 1u32);
    let klast = b.bin(BinOp::Min, Type::U32, qlast, tl);
    let kt_last = b.bin(BinOp::Div, Type::U32, klast, TILE);
    let n_kt = b.add(Type::U32, kt_last, 1u32);

    b.cp_async_wait(1);
    b.bar_sync();
    b.comment("Q fragments (A, rows 16 * warp ..)");
    let wrow = b.mul_lo(Type::U32, ln.warp, 16u32);
    let q_lane = ln.x(&mut b, rs, Some(wrow));
    let q_lane = b.add(Type::U32, q_lane, qs);
    let qf: Vec<[Reg; 4]> = (0..dp / 16)
        .map(|ks| {
            let r = b.ldmatrix(4, false, Addr::reg_off(q_lane, (ks * 32) as i64));
            [r[0], r[1], r[2], r[3]]
        })
        .collect();
    let k_lane = ln.y(&mut b, rs, None);
    let v_lane = ln.x(&mut b, rs, None);

    // running state: row max (log2 units), partial row sums, O accumulators
    let ninf = f32::NEG_INFINITY;
    let m = [b.val(Type::F32, ninf), b.val(Type::F32, ninf)];
    let l = [b.val(Type::F32, 0.0f32), b.val(Type::F32, 0.0f32)];
    let mut oacc = zero_acc(&mut b, dp / 8);
    let row_a = b.add(Type::U32, q0, wrow);
    let row_a = b.add(Type::U32, row_a, ln.g); // rows row_a, row_a + 8
    let col2 = b.mul_lo(Type::U32, ln.tq, 2u32);

    b.comment("main loop over key tiles");
    b.for_range(0u32, n_kt, 1, true, |b, j| {
        let ks = pipeline_stage(b, j, n_kt, ks0, stage_bytes, |b, ks, jn| {
            let vs = b.add(Type::U32, ks, tile_bytes);
            let r0 = b.mul_lo(Type::U32, jn, TILE);
            loader.load(b, ks, &kr, r0, p.t);
            loader.load(b, vs, &vr, r0, p.t);
        });
        let vs = b.add(Type::U32, ks, tile_bytes);
        let kl = b.add(Type::U32, ks, k_lane);
        let vl = b.add(Type::U32, vs, v_lane);

        b.comment("S = Q K^T");
        let mut s = zero_acc(b, TILE / 8);
        mma_row(b, &mut s, &qf, false, |ks, pair| Addr::reg_off(kl, (pair * 16 * rs + ks * 32) as i64));
        for t in &s {
            for &x in t {
                fmul_to(b, x, c);
            }
        }
        b.comment("causal mask on tiles crossing the diagonal");
        let k0 = b.mul_lo(Type::U32, j, TILE);
        let kmax = b.add(Type::U32, k0, TILE - 1);
        let wmin = b.add(Type::U32, q0, wrow);
        let need = b.setp(Cmp::Gt, Type::U32, kmax, wmin);
        b.if_then(need, false, |b| {
            let kc = b.add(Type::U32, k0, col2);
            let row_b = b.add(Type::U32, row_a, 8u32);
            for (nt, t) in s.iter().enumerate() {
                for (e, &x) in t.iter().enumerate() {
                    let key = b.add(Type::U32, kc, nt as u32 * 8 + (e as u32 & 1));
                    let row = if e < 2 { row_a } else { row_b };
                    let masked = b.setp(Cmp::Gt, Type::U32, key, row);
                    b.push_guarded(Guard { pred: masked, negate: false }, Inst::Mov { ty: Type::F32, dst: x, src: ninf.into() });
                }
            }
        });
        b.comment("online softmax (log2 domain)");
        let mut alpha = [m[0]; 2];
        for h in 0..2 {
            let vals: Vec<Reg> = s.iter().flat_map(|t| [t[2 * h], t[2 * h + 1]]).collect();
            let mx = vals[1..].iter().fold(vals[0], |acc, &x| fmax(b, acc, x));
            let mx = group_reduce(b, mx, 4, BinOp::Max);
            let mnew = fmax(b, m[h], mx);
            let dm = fsub(b, m[h], mnew);
            alpha[h] = ex2(b, dm);
            b.mov(Type::F32, m[h], mnew);
        }
        let mut rsum = [None, None];
        for t in &mut s {
            for (e, te) in t.iter_mut().enumerate() {
                let h = e / 2;
                let x = fsub(b, *te, m[h]);
                let pe = ex2(b, x);
                *te = pe;
                rsum[h] = Some(match rsum[h] {
                    None => pe,
                    Some(acc) => fadd(b, acc, pe),
                });
            }
        }
        for h in 0..2 {
            b.fma_f32_to(l[h], l[h], alpha[h], rsum[h].unwrap());
        }
        for t in &oacc {
            for e in 0..4 {
                fmul_to(b, t[e], alpha[e / 2]);
            }
        }
        b.comment("O += P V");
        let pf: Vec<[Reg; 4]> = (0..TILE as usize / 16).map(|kk| c_to_a(b, &s, kk)).collect();
        mma_row(b, &mut oacc, &pf, true, |ks, pair| Addr::reg_off(vl, (ks * 16 * rs + pair * 32) as i64));
    });
    b.cp_async_wait_all();

    b.comment("normalize and store O, lse");
    let rows = ForwardRows { bb, hh, row_a, tq: ln.tq, col2 };
    store_forward(&mut b, cfg, (o, lse), &p, &rows, (l, m), &oacc[..(d / 8) as usize]);
    b.ret();
    AttnKernel { kernel: b.finish(), threads: THREADS, smem_bytes, grid_kind: GridKind::QueryBlocks, rows_per_block: BLOCK }
}

// ---------------------------------------------------------------------------
// Backward.

pub(super) fn backward(cfg: &AttnConfig) -> AttnKernel {
    let d = cfg.head_dim;
    let dp = padded(d);
    let rs = row_stride(dp);
    let tile_bytes = TILE * rs;
    // shared: K, V (BLOCK rows), then 2 stages of (Q, dO, lse, dsum). V is
    // read into registers before the loop (behind the loop's first barrier),
    // so dS^T [BLOCK keys][TILE queries] reuses its space.
    let k_off = 0;
    let v_off = BLOCK * rs;
    let ds_rs = row_stride(TILE);
    let ds_off = v_off;
    let st_off = v_off + BLOCK * rs.max(ds_rs);
    let stage_bytes = 2 * tile_bytes + 2 * TILE * 4;
    let smem_bytes = st_off + 2 * stage_bytes;

    let (mut b, p, smem) = open_kernel(&format!("attn_bwd_{}", cfg.tag()), THREADS, &BWD_PARAMS, format!("{cfg:?}: {BLOCK} keys per block x {TILE}-query tiles, head dim {d} (padded {dp})"));
    let [q, k, v, dout, lse, dsum, dq, dk, dv] =
        [p.ptrs[0], p.ptrs[1], p.ptrs[2], p.ptrs[3], p.ptrs[4], p.ptrs[5], p.ptrs[6], p.ptrs[7], p.ptrs[8]];
    let ln = Lanes::new(&mut b);
    let (kb, kvh, bb) = grid_xyz(&mut b, false);
    let group = b.bin(BinOp::Div, Type::U32, p.h, p.hk);
    let k0 = b.mul_lo(Type::U32, kb, BLOCK);
    let es = 2;
    let kr = head_rows(&mut b, cfg.layout, k, bb, kvh, p.hk, p.t, d, es);
    let vr = head_rows(&mut b, cfg.layout, v, bb, kvh, p.hk, p.t, d, es);
    let c = fmul(&mut b, p.scale, LOG2E);
    let h0 = b.mul_lo(Type::U32, kvh, group);

    let loader = TileLoader::new(&mut b, ln.tid, THREADS, TILE, dp * 2, d * 2, rs);
    b.comment("K, V tiles");
    let ks = b.add(Type::U32, smem, k_off);
    let vs = b.add(Type::U32, smem, v_off);
    loader.load(&mut b, ks, &kr, k0, p.t);
    loader.load(&mut b, vs, &vr, k0, p.t);
    b.cp_async_commit();

    // iterations: for each head of the group, query tiles qt0 .. nq
    let qt0 = b.bin(BinOp::Div, Type::U32, k0, TILE);
    let tt = b.add(Type::U32, p.t, TILE - 1);
    let nq = b.bin(BinOp::Div, Type::U32, tt, TILE);
    let per_head = b.bin(BinOp::Sub, Type::U32, nq, qt0);
    let iters = b.mul_lo(Type::U32, per_head, group);
    let st0 = b.add(Type::U32, smem, st_off);

    // a cursor (head, query tile) and its stage loads
    struct Cursor {
        h: Reg,
        qt: Reg,
    }
    let advance = |b: &mut KernelBuilder, cu: &Cursor| {
        b.bin_to(BinOp::Add, Type::U32, cu.qt, cu.qt, 1u32);
        let wrap = b.setp(Cmp::Ge, Type::U32, cu.qt, nq);
        b.push(Inst::Selp { ty: Type::U32, dst: cu.qt, a: qt0.into(), b: cu.qt.into(), p: wrap });
        let hn = b.add(Type::U32, cu.h, 1u32);
        b.push(Inst::Selp { ty: Type::U32, dst: cu.h, a: hn.into(), b: cu.h.into(), p: wrap });
    };
    let load_stage = |b: &mut KernelBuilder, cu: &Cursor, stage: Reg| {
        let qr = head_rows(b, cfg.layout, q, bb, cu.h, p.h, p.t, d, es);
        let dor = head_rows(b, cfg.layout, dout, bb, cu.h, p.h, p.t, d, es);
        let r0 = b.mul_lo(Type::U32, cu.qt, TILE);
        loader.load(b, stage, &qr, r0, p.t);
        let ds = b.add(Type::U32, stage, tile_bytes);
        loader.load(b, ds, &dor, r0, p.t);
        let ls = b.add(Type::U32, stage, 2 * tile_bytes);
        let lb = stat_base(b, lse, bb, cu.h, p.h, p.t);
        load_stats(b, ln.tid, 0, TILE, ls, lb, r0, p.t);
        let dsb = b.add(Type::U32, ls, TILE * 4);
        let db = stat_base(b, dsum, bb, cu.h, p.h, p.t);
        load_stats(b, ln.tid, TILE, TILE, dsb, db, r0, p.t);
    };
    let ld = Cursor { h: b.val(Type::U32, h0), qt: b.val(Type::U32, qt0) };
    let cu = Cursor { h: b.val(Type::U32, h0), qt: b.val(Type::U32, qt0) };
    b.comment("stage 0");
    load_stage(&mut b, &ld, st0);
    b.cp_async_commit();
    advance(&mut b, &ld);
    b.cp_async_wait(1);
    b.bar_sync();

    b.comment("K, V fragments (A, rows = the warp's 16 keys)");
    let wrow = b.mul_lo(Type::U32, ln.warp, 16u32);
    let kv_lane = ln.x(&mut b, rs, Some(wrow));
    let k_lane = b.add(Type::U32, kv_lane, ks);
    let v_lane = b.add(Type::U32, kv_lane, vs);
    let frags = |b: &mut KernelBuilder, base: Reg| -> Vec<[Reg; 4]> {
        (0..dp / 16)
            .map(|kk| {
                let r = b.ldmatrix(4, false, Addr::reg_off(base, (kk * 32) as i64));
                [r[0], r[1], r[2], r[3]]
            })
            .collect()
    };
    let kf = frags(&mut b, k_lane);
    let vf = frags(&mut b, v_lane);
    let y_lane = ln.y(&mut b, rs, None);
    let x_lane = ln.x(&mut b, rs, None);
    // dS^T A-fragment (trans) lanes for dQ: stored [key][query], rows = keys
    let ds_base = b.add(Type::U32, smem, ds_off);
    let wq = b.mul_lo(Type::U32, wrow, 2u32);
    let ds_lane = ln.y(&mut b, ds_rs, None);
    let ds_lane = b.add(Type::U32, ds_lane, wq);
    let ds_lane = b.add(Type::U32, ds_lane, ds_base);
    // K as B for dQ = dS K: [key][dim] = [k][n], trans
    let kq_lane = b.add(Type::U32, x_lane, ks);

    let mut dk_acc = zero_acc(&mut b, dp / 8);
    let mut dv_acc = zero_acc(&mut b, dp / 8);
    let key_a = b.add(Type::U32, k0, wrow);
    let key_a = b.add(Type::U32, key_a, ln.g); // keys key_a, key_a + 8
    let key_b = b.add(Type::U32, key_a, 8u32);
    let col2 = b.mul_lo(Type::U32, ln.tq, 2u32);
    let col2b = b.mul_lo(Type::U32, col2, 4u32);
    let neg_log2e = -LOG2E;

    b.comment("loop over (query head, query tile)");
    b.for_range(0u32, iters, 1, true, |b, it| {
        let qs = pipeline_stage(b, it, iters, st0, stage_bytes, |b, stg, _| {
            load_stage(b, &ld, stg);
            advance(b, &ld);
        });
        let dos = b.add(Type::U32, qs, tile_bytes);
        let ls = b.add(Type::U32, qs, 2 * tile_bytes);
        let q0 = b.mul_lo(Type::U32, cu.qt, TILE);

        b.comment("S^T = K Q^T (16 keys x 64 queries per warp)");
        let qy = b.add(Type::U32, qs, y_lane);
        let mut s = zero_acc(b, TILE / 8);
        mma_row(b, &mut s, &kf, false, |kk, pair| Addr::reg_off(qy, (pair * 16 * rs + kk * 32) as i64));
        b.comment("P^T = exp2(c S^T - log2e lse[query])");
        let lsa = b.add(Type::U32, ls, col2b);
        let stat = |b: &mut KernelBuilder, off: u32| -> Vec<[Reg; 2]> {
            (0..TILE / 8)
                .map(|nt| {
                    let r: [Reg; 2] = b.regs(RegClass::F32);
                    b.ld_vec(Space::Shared, false, Type::F32, &r, Addr::reg_off(lsa, (off + nt * 32) as i64));
                    r
                })
                .collect()
        };
        let lsev = stat(b, 0);
        for (nt, t) in s.iter_mut().enumerate() {
            for e in 0..4 {
                let nl = fmul(b, lsev[nt][e & 1], neg_log2e);
                let x = b.fma_f32(t[e], c, nl);
                t[e] = ex2(b, x);
            }
        }
        let qmin_lt = {
            let kmax = b.add(Type::U32, k0, wrow);
            let kmax = b.add(Type::U32, kmax, 15u32);
            b.setp(Cmp::Lt, Type::U32, q0, kmax)
        };
        b.if_then(qmin_lt, false, |b| {
            let qc = b.add(Type::U32, q0, col2);
            for (nt, t) in s.iter().enumerate() {
                for (e, &x) in t.iter().enumerate() {
                    let qi = b.add(Type::U32, qc, nt as u32 * 8 + (e as u32 & 1));
                    let key = if e < 2 { key_a } else { key_b };
                    let masked = b.setp(Cmp::Lt, Type::U32, qi, key);
                    b.push_guarded(Guard { pred: masked, negate: false }, Inst::Mov { ty: Type::F32, dst: x, src: 0.0f32.into() });
                }
            }
        });
        b.comment("dV += P^T dO");
        let pf: Vec<[Reg; 4]> = (0..TILE as usize / 16).map(|kk| c_to_a(b, &s, kk)).collect();
        let dox = b.add(Type::U32, dos, x_lane);
        mma_row(b, &mut dv_acc, &pf, true, |kk, pair| Addr::reg_off(dox, (kk * 16 * rs + pair * 32) as i64));
        b.comment("dP^T = V dO^T");
        let doy = b.add(Type::U32, dos, y_lane);
        let mut dpt = zero_acc(b, TILE / 8);
        mma_row(b, &mut dpt, &vf, false, |kk, pair| Addr::reg_off(doy, (pair * 16 * rs + kk * 32) as i64));
        b.comment("dS^T = P^T (dP^T - dsum[query])");
        let dsv = stat(b, TILE * 4);
        let mut dst = vec![];
        for (nt, t) in dpt.iter().enumerate() {
            let mut r = [t[0]; 4];
            for e in 0..4 {
                let x = fsub(b, t[e], dsv[nt][e & 1]);
                r[e] = fmul(b, s[nt][e], x);
            }
            dst.push(r);
        }
        b.comment("dK += dS^T Q");
        let dsf: Vec<[Reg; 4]> = (0..TILE as usize / 16).map(|kk| c_to_a(b, &dst, kk)).collect();
        let qx = b.add(Type::U32, qs, x_lane);
        mma_row(b, &mut dk_acc, &dsf, true, |kk, pair| Addr::reg_off(qx, (kk * 16 * rs + pair * 32) as i64));
        b.comment("dS^T -> shared [key][query] (bf16)");
        let srow = b.add(Type::U32, wrow, ln.g);
        let sa = b.mad_lo(Type::U32, srow, ds_rs, ds_base);
        let cb = b.mul_lo(Type::U32, col2, 2u32);
        let sa = b.add(Type::U32, sa, cb);
        for (kk, f) in dsf.iter().enumerate() {
            // f = (row g, cols 16kk + 2tq..), (row g+8, ..), (row g, +8), (row g+8, +8)
            let base = kk as i64 * 32;
            b.st(Space::Shared, Type::B32, Addr::reg_off(sa, base), f[0]);
            b.st(Space::Shared, Type::B32, Addr::reg_off(sa, base + 8 * ds_rs as i64), f[1]);
            b.st(Space::Shared, Type::B32, Addr::reg_off(sa, base + 16), f[2]);
            b.st(Space::Shared, Type::B32, Addr::reg_off(sa, base + 16 + 8 * ds_rs as i64), f[3]);
        }
        b.bar_sync();
        b.comment("dQ[16 queries of this warp] += scale * dS K (red.global.add.f32)");
        let mut dq_acc = zero_acc(b, dp / 8);
        let af: Vec<[Reg; 4]> = (0..BLOCK / 16)
            .map(|kk| {
                let r = b.ldmatrix(4, true, Addr::reg_off(ds_lane, (kk * 16 * ds_rs) as i64));
                [r[0], r[1], r[2], r[3]]
            })
            .collect();
        mma_row(b, &mut dq_acc, &af, true, |kk, pair| Addr::reg_off(kq_lane, (kk * 16 * rs + pair * 32) as i64));
        let dqr = head_rows(b, cfg.layout, dq, bb, cu.h, p.h, p.t, d, 4);
        let qrow = b.add(Type::U32, q0, wrow);
        let qrow = b.add(Type::U32, qrow, ln.g);
        let colf = b.cvt(Type::U64, Type::U32, None, col2b);
        for h in 0..2u32 {
            let row = b.add(Type::U32, qrow, 8 * h);
            let ok = b.setp(Cmp::Lt, Type::U32, row, p.t);
            let ra = b.mad_wide_u32(row, dqr.stride, dqr.base);
            let ra = b.add_u64(ra, colf);
            for (nt, acc) in dq_acc.iter().enumerate().take((d / 8) as usize) {
                for e in 0..2 {
                    let val = fmul(b, acc[2 * h as usize + e], p.scale);
                    let addr = Addr::reg_off(ra, (nt * 32 + e * 4) as i64);
                    b.guarded(ok, false, |b| b.red_add(Space::Global, Type::F32, addr, val));
                }
            }
        }
        advance(b, &cu);
    });
    b.cp_async_wait_all();

    b.comment("store dK (scaled), dV");
    let ge = cfg.grad_out;
    let dkr = head_rows(&mut b, cfg.layout, dk, bb, kvh, p.hk, p.t, d, ge.bytes());
    let dvr = head_rows(&mut b, cfg.layout, dv, bb, kvh, p.hk, p.t, d, ge.bytes());
    let col_bytes = b.mul_lo(Type::U32, col2, ge.bytes());
    let col_bytes = b.cvt(Type::U64, Type::U32, None, col_bytes);
    for h in 0..2usize {
        let key = if h == 0 { key_a } else { key_b };
        let ok = b.setp(Cmp::Lt, Type::U32, key, p.t);
        for (hr, acc, scale) in [(&dkr, &mut dk_acc, true), (&dvr, &mut dv_acc, false)] {
            let ra = b.mad_wide_u32(key, hr.stride, hr.base);
            let ra = b.add_u64(ra, col_bytes);
            for (nt, t) in acc.iter().enumerate().take((d / 8) as usize) {
                let (v0, v1) = if scale {
                    (fmul(&mut b, t[2 * h], p.scale), fmul(&mut b, t[2 * h + 1], p.scale))
                } else {
                    (t[2 * h], t[2 * h + 1])
                };
                store_row_vals(&mut b, ge, Addr::reg_off(ra, (nt as u32 * 8 * ge.bytes()) as i64), &[v0, v1], ok);
            }
        }
    }
    b.ret();
    AttnKernel { kernel: b.finish(), threads: THREADS, smem_bytes, grid_kind: GridKind::KeyBlocks, rows_per_block: BLOCK }
}
