//! The Hopper GEMM: TMA, mbarriers and warp-specialized `wgmma`.
//!
//! One block computes a `128 x bn` tile of `C = op(A) @ op(B)` with three
//! warpgroups (384 threads):
//! * warpgroup 0, the producer: one thread walks the K tiles (64 deep) and,
//!   for each, waits until its ring stage is free (the stage's `empty`
//!   mbarrier), announces the stage's bytes on its `full` mbarrier and issues
//!   the TMA copies of A's `128 x 64` and B's `bn x 64` tiles into it;
//! * warpgroups 1 and 2, the consumers: each owns 64 rows of the tile. Per K
//!   tile it waits on the stage's `full` mbarrier, issues four
//!   `wgmma.m64n{bn}k16` on shared-memory descriptors, commits, and waits
//!   until only this group is in flight, so the previous stage can be
//!   released (each consumer warp arrives on its `empty` mbarrier): the copies
//!   of the next stages overlap the tensor cores.
//! * Every operand tile is stored with the 128-byte swizzle: K-major (A `[M, K]`,
//!   B `[N, K]`) as rows of 64 k, MN-major (A `[K, M]`, B `[K, N]`, read
//!   with wgmma's transpose) as boxes of 64 m or n by 64 k.
//! * Blocks are persistent ([`PERSISTENT_BLOCKS`]): each walks the output
//!   tiles in a grouped order, the ring and its mbarrier phases running on
//!   from tile to tile, so loads of the next tile overlap this tile's epilogue.
//! * The epilogue runs on the consumers' accumulators, which per warp have the
//!   `mma.sync` m16n8 layout, so the fused epilogues of the mma.sync path
//!   apply unchanged.
//!
//! Out-of-bounds rows, columns and K are zeros from TMA; stores are
//! predicated. Kernel parameters: `a`, `b` (tensor maps, 128 bytes each), `c`,
//! `m`, `n`, `k`, then the epilogue's. Split-K splits the K tiles over
//! `grid.z` as the mma.sync path does. Which tensor maps a launch passes:
//! [`operand_maps`].

use super::epilogue::{self, EpiRegs, Epilogue};
use crate::ptx::builder::*;

/// Threads per warpgroup.
pub const WARPGROUP: u32 = 128;
/// Consumer warpgroups (64 rows of the tile each) beside the producer.
pub const CONSUMERS: u32 = 2;
/// Rows of a block tile.
pub const BM: u32 = 64 * CONSUMERS;
/// K per stage.
pub const BK: u32 = 64;
const SWIZZLE_SPAN: u32 = 128;
/// Blocks of a launch (one per SM of an H100 / H200: 132): each walks the
/// output tiles `blockIdx.x, blockIdx.x + gridDim.x, ...`, so the producer
/// fills the next tile's stages while the consumers run this tile's epilogue.
pub const PERSISTENT_BLOCKS: u32 = 132;
/// `setmaxnreg` for 256-wide tiles: 128 x 40 + 256 x 232 registers fit the SM's 64K.
const PRODUCER_REGS: u32 = 40;
const CONSUMER_REGS: u32 = 232;
/// Output tiles are visited in groups of this many tile rows (the B tiles
/// of a group stay in L2 while its rows go by).
const GROUP_M: u32 = 8;

/// The grid of a launch over an `m x n` output: persistent blocks, and the
/// K splits along z.
pub fn grid(spec: &WgmmaSpec, m: u32, n: u32) -> [u32; 3] {
    let tiles = m.div_ceil(BM) * n.div_ceil(spec.bn);
    [tiles.clamp(1, PERSISTENT_BLOCKS), 1, spec.split_k]
}

/// What the emitter needs of a GEMM configuration.
#[derive(Clone, Debug)]
pub struct WgmmaSpec {
    pub name: String,
    /// A stored `[K, M]` (transposed) instead of `[M, K]`.
    pub a_km: bool,
    /// B stored `[K, N]` instead of `[N, K]`.
    pub b_kn: bool,
    /// Columns of a block tile: the wgmma's N.
    pub bn: u32,
    pub stages: u32,
    pub split_k: u32,
    /// A (B) is f32 in memory: the producer warpgroup loads it, converts to
    /// bf16 and stores it in the swizzled layout TMA would have written
    /// (then `fence.proxy.async` and an arrival per thread on `full`).
    pub a_f32: bool,
    pub b_f32: bool,
}

/// One operand's tensor map, as the launch must encode it: a row-major bf16
/// matrix of `rows x cols` (`cols` contiguous) moved in boxes of
/// `box_rows x box_cols`, 128-byte swizzle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OperandMap {
    pub rows: u32,
    pub cols: u32,
    pub box_rows: u32,
    pub box_cols: u32,
}

impl WgmmaSpec {
    fn a_bytes(&self) -> u32 {
        BM * BK * 2
    }
    fn b_bytes(&self) -> u32 {
        self.bn * BK * 2
    }
    fn stage_bytes(&self) -> u32 {
        self.a_bytes() + self.b_bytes()
    }
    /// Dynamic shared memory: the ring, then the `full` and `empty` mbarriers.
    pub fn smem_bytes(&self) -> u32 {
        // 1024 bytes of slack: the 128-byte swizzle repeats every 1024 bytes,
        // so the ring starts on a 1024-byte boundary of the shared window
        self.stages * self.stage_bytes() + 16 * self.stages + 1024
    }

    pub fn validate(&self) -> Result<(), String> {
        if !matches!(self.bn, 64 | 128 | 256) {
            return Err(format!("wgmma: bn = {} (64, 128 or 256)", self.bn));
        }
        if !(2..=8).contains(&self.stages) {
            return Err(format!("wgmma: {} stages (2 to 8)", self.stages));
        }
        if self.smem_bytes() > 227 * 1024 {
            return Err(format!("wgmma: {} bytes of shared memory per block (at most 227 KiB)", self.smem_bytes()));
        }
        if !(1..=1024).contains(&self.split_k) {
            return Err("split_k must be 1..=1024".into());
        }
        Ok(())
    }
}

/// The tensor maps of A and B for a GEMM of `m x n x k` (what the launch's
/// `a` and `b` arguments encode; an f32 operand is passed as a pointer instead).
pub fn operand_maps(spec: &WgmmaSpec, m: u32, n: u32, k: u32) -> (OperandMap, OperandMap) {
    let a = if spec.a_km { OperandMap { rows: k, cols: m, box_rows: BK, box_cols: 64 } } else { OperandMap { rows: m, cols: k, box_rows: BM, box_cols: BK } };
    let b = if spec.b_kn { OperandMap { rows: k, cols: n, box_rows: BK, box_cols: 64 } } else { OperandMap { rows: n, cols: k, box_rows: spec.bn, box_cols: BK } };
    (a, b)
}

/// A consumer thread's accumulators and coordinates, for the epilogue.
pub struct Fragment {
    pub tid: Reg,
    pub m0: Reg,
    pub n0: Reg,
    pub m: Reg,
    pub n: Reg,
    pub smem: Reg,
    /// `acc[j]`: rows `row0`, `row0 + 8`, columns `col0 + 8j (+1)` (the m16n8 layout)
    pub acc: Vec<[Reg; 4]>,
    pub row0: Reg,
    pub col0: Reg,
}

/// A wgmma shared-memory descriptor for the 128-byte swizzle: start address
/// `addr` (shared window), leading / stride byte offsets.
pub(crate) fn descriptor(b: &mut KernelBuilder, addr: Reg, lbo: u32, sbo: u32) -> Reg {
    let lo = b.bin(BinOp::Shr, Type::U32, addr, 4u32);
    let lo = b.bin(BinOp::And, Type::U32, lo, 0x3fffu32);
    let lo = b.bin(BinOp::Or, Type::U32, lo, (lbo >> 4) << 16);
    let w = b.cvt(Type::U64, Type::U32, None, lo);
    // swizzle mode 1 (128 bytes) in bits 62-63, SBO in bits 32-45
    let hi = (1u64 << 62) | ((sbo as u64 >> 4) << 32);
    b.bin(BinOp::Or, Type::B64, w, Operand::Imm(hi as i64))
}

/// The descriptor of k16 step `s` of an operand tile at `base`: K-major
/// tiles advance 32 bytes per step inside the swizzled row, MN-major ones
/// (`mn`) 16 rows of 128 bytes, their 64-wide blocks one box (8 KiB) apart.
fn step_descriptor(b: &mut KernelBuilder, base: Reg, s: u32, mn: bool) -> Reg {
    if mn {
        let a = b.add(Type::U32, base, s * 16 * SWIZZLE_SPAN);
        descriptor(b, a, 64 * BK * 2, 8 * SWIZZLE_SPAN)
    } else {
        let a = b.add(Type::U32, base, s * 32);
        descriptor(b, a, 16, 8 * SWIZZLE_SPAN)
    }
}

/// Emit the kernel; `epilogue_fn` writes the outputs from a consumer's fragment.
pub(crate) fn emit(spec: &WgmmaSpec, epi: &Epilogue, epilogue_fn: impl FnOnce(&mut KernelBuilder, &mut EpiRegs, &Fragment)) -> Kernel {
    let s_n = spec.stages;
    let mut b = KernelBuilder::new(&spec.name);
    b.max_threads(WARPGROUP * (1 + CONSUMERS), Some(1));
    b.comment(format!(
        "wgmma GEMM: A {} B {}, tile {BM}x{}x{BK}, {s_n} stages, split-k {}, epilogue {}",
        if spec.a_km { "[K,M]" } else { "[M,K]" },
        if spec.b_kn { "[K,N]" } else { "[N,K]" },
        spec.bn,
        spec.split_k,
        epi.tag()
    ));
    let operand = |b: &mut KernelBuilder, name: &str, f32src: bool| -> Reg {
        if f32src {
            let p = b.param(name, ParamType::U64);
            b.ld_param_global_ptr(&p)
        } else {
            b.tensor_map_param(name)
        }
    };
    let a_map = operand(&mut b, "a", spec.a_f32);
    let b_map = operand(&mut b, "b", spec.b_f32);
    let converts = spec.a_f32 || spec.b_f32;
    let pc = b.param("c", ParamType::U64);
    let pm = b.param("m", ParamType::U32);
    let pn = b.param("n", ParamType::U32);
    let pk = b.param("k", ParamType::U32);
    let epi_params = epilogue::declare_params(&mut b, epi);
    let smem_sym = b.extern_shared("pgc_dyn_smem", 1024);
    let c = b.ld_param_global_ptr(&pc);
    let m = b.ld_param(&pm);
    let n = b.ld_param(&pn);
    let k = b.ld_param(&pk);
    let tid = b.special(Special::TidX);
    let bx = b.special(Special::CtaidX);
    let nblocks = b.special(Special::NctaidX);
    // the output tiles and this block's first
    let tiles_m = {
        let t = b.add(Type::U32, m, BM - 1);
        b.bin(BinOp::Div, Type::U32, t, BM)
    };
    let tiles_n = {
        let t = b.add(Type::U32, n, spec.bn - 1);
        b.bin(BinOp::Div, Type::U32, t, spec.bn)
    };
    let tiles = b.mul_lo(Type::U32, tiles_m, tiles_n);
    let group_w = b.mul_lo(Type::U32, tiles_n, GROUP_M);
    // the ring from the first 1024-byte boundary of the dynamic shared memory
    let raw = b.shared_addr(&smem_sym);
    let up = b.add(Type::U32, raw, 1023u32);
    let ring = b.bin(BinOp::And, Type::U32, up, !1023u32);
    let bars = b.add(Type::U32, ring, s_n * spec.stage_bytes());
    let full = |b: &mut KernelBuilder, s: Reg| -> Addr {
        let o = b.mad_lo(Type::U32, s, 8u32, bars);
        Addr::reg(o)
    };
    let empty = |b: &mut KernelBuilder, s: Reg| -> Addr {
        let o = b.mad_lo(Type::U32, s, 8u32, bars);
        Addr::reg_off(o, 8 * s_n as i64)
    };

    // this block's K tiles: all, or one split's share
    let kt_all = {
        let t = b.add(Type::U32, k, BK - 1);
        b.bin(BinOp::Shr, Type::U32, t, BK.trailing_zeros())
    };
    let (kt0, ktiles) = if spec.split_k > 1 {
        let z = b.special(Special::CtaidZ);
        let t = b.add(Type::U32, kt_all, spec.split_k - 1);
        let per = b.bin(BinOp::Div, Type::U32, t, spec.split_k);
        let first = b.mul_lo(Type::U32, z, per);
        let none = b.setp(Cmp::Ge, Type::U32, first, kt_all);
        b.push_guarded(Guard { pred: none, negate: false }, Inst::Ret);
        let left = b.bin(BinOp::Sub, Type::U32, kt_all, first);
        (first, b.bin(BinOp::Min, Type::U32, left, per))
    } else {
        (b.val(Type::U32, 0u32), kt_all)
    };

    // thread 0 initialises the mbarriers: `full` completes on the producer's
    // arrival plus the stage's bytes, `empty` on one arrival per consumer warp
    let t0 = b.setp(Cmp::Eq, Type::U32, tid, 0u32);
    b.if_then(t0, false, |b| {
        for s in 0..s_n {
            let sv = b.val(Type::U32, s);
            let f = full(b, sv);
            // with a converted operand every producer thread arrives (after its stores)
            b.mbar_init(f, if converts { WARPGROUP } else { 1 });
            let e = empty(b, sv);
            b.mbar_init(e, CONSUMERS * 4);
        }
        b.push(Inst::FenceMbarrierInit);
    });
    let (wg, consumer) = split_warpgroups(&mut b, tid);

    // 256-wide tiles hold 128 accumulators per consumer thread: the producer
    // gives registers back so the consumers can have 232
    let regs = (spec.bn == 256).then_some((PRODUCER_REGS, CONSUMER_REGS));
    if let Some((p, _)) = regs {
        b.push(Inst::Setmaxnreg { inc: false, n: p });
    }
    // ---- producer: one thread feeds the ring (the whole warpgroup when it converts f32)
    b.comment(if converts { "producer warpgroup: TMA copies by thread 0, f32 operands converted by all" } else { "producer warpgroup: thread 0 issues the TMA copies" });
    let done = b.new_label();
    if !converts {
        b.push_guarded(Guard { pred: t0, negate: true }, Inst::Bra { target: done, uni: false });
    }
    let tma_bytes = if spec.a_f32 { 0 } else { spec.a_bytes() } + if spec.b_f32 { 0 } else { spec.b_bytes() };
    {
        let stage = b.val(Type::U32, 0u32);
        let phase = b.val(Type::U32, 0u32);
        // k tiles issued so far, over every output tile of this block
        let issued = b.val(Type::U32, 0u32);
        tile_loop(b_ref(&mut b), bx, nblocks, tiles, (group_w, tiles_m), spec.bn, false, &mut |b, m0, n0| {
        b.for_range(0u32, ktiles, 1, false, |b, kt| {
            // a stage's second and later uses wait for the consumers to free it
            let reuse = b.setp(Cmp::Ge, Type::U32, issued, s_n);
            b.bin_to(BinOp::Add, Type::U32, issued, issued, 1u32);
            b.if_then(reuse, false, |b| {
                let par = b.bin(BinOp::Xor, Type::U32, phase, 1u32);
                let e = empty(b, stage);
                b.mbar_wait(e, par);
            });
            let f = full(b, stage);
            if !converts {
                b.mbar_arrive(f.clone(), Some(Operand::Imm(spec.stage_bytes() as i64)));
            }
            let base = b.mad_lo(Type::U32, stage, spec.stage_bytes(), ring);
            let ktg = b.add(Type::U32, kt0, kt);
            let k0 = b.mul_lo(Type::U32, ktg, BK);
            // the boxes of each operand: (shared offset, x (contiguous), y, rows)
            let a_boxes: Vec<(u32, Reg, Reg, u32)> = if spec.a_km {
                (0..CONSUMERS).map(|c| (c * 64 * BK * 2, b.add(Type::U32, m0, 64 * c), k0, BK)).collect()
            } else {
                vec![(0, k0, m0, BM)]
            };
            let b_boxes: Vec<(u32, Reg, Reg, u32)> = if spec.b_kn {
                (0..spec.bn / 64).map(|j| (spec.a_bytes() + j * 64 * BK * 2, b.add(Type::U32, n0, 64 * j), k0, BK)).collect()
            } else {
                vec![(spec.a_bytes(), k0, n0, spec.bn)]
            };
            let tma = |b: &mut KernelBuilder, map: Reg, boxes: &[(u32, Reg, Reg, u32)]| {
                for &(off, x, y, _) in boxes {
                    let dst = b.add(Type::U32, base, off);
                    b.tma_load(Addr::reg(dst), map, vec![x.into(), y.into()], f.clone());
                }
            };
            if converts {
                b.if_then(t0, false, |b| {
                    if !spec.a_f32 {
                        tma(b, a_map, &a_boxes);
                    }
                    if !spec.b_f32 {
                        tma(b, b_map, &b_boxes);
                    }
                });
                // (rows, cols, leading dimension) of the f32 operands in memory
                let (a_rows, a_cols) = if spec.a_km { (k, m) } else { (m, k) };
                let (b_rows, b_cols) = if spec.b_kn { (k, n) } else { (n, k) };
                if spec.a_f32 {
                    for &bx in &a_boxes {
                        convert_box(b, a_map, base, bx, (a_rows, a_cols), tid);
                    }
                }
                if spec.b_f32 {
                    for &bx in &b_boxes {
                        convert_box(b, b_map, base, bx, (b_rows, b_cols), tid);
                    }
                }
                // the stores reach the async proxy (wgmma) once fenced; each thread
                // arrives after its own, thread 0 announcing the TMA bytes (the count
                // may go negative meanwhile: the phase waits for every arrival)
                b.fence_proxy_async();
                let f2 = full(b, stage);
                b.if_then(t0, false, |b| b.mbar_arrive(f2.clone(), (tma_bytes > 0).then_some(Operand::Imm(tma_bytes as i64))));
                b.if_then(t0, true, |b| b.mbar_arrive(f2.clone(), None));
            } else {
                if !spec.a_f32 {
                    tma(b, a_map, &a_boxes);
                }
                if !spec.b_f32 {
                    tma(b, b_map, &b_boxes);
                }
            }
            advance(b, stage, phase, s_n);
        });
        });
    }
    b.place(done);
    b.ret();

    // ---- consumers
    b.place(consumer);
    if let Some((_, c)) = regs {
        b.push(Inst::Setmaxnreg { inc: true, n: c });
    }
    b.comment(format!("consumer warpgroups: {} x wgmma.m64n{}k16 per stage", BK / 16, spec.bn));
    let cw = b.add(Type::U32, wg, u32::MAX); // consumer index 0..CONSUMERS
    let lane = b.bin(BinOp::And, Type::U32, tid, 31u32);
    let warp_in_wg = {
        let w = b.bin(BinOp::Shr, Type::U32, tid, 5u32);
        b.bin(BinOp::And, Type::U32, w, 3u32)
    };
    let acc: Vec<Reg> = (0..spec.bn / 2).map(|_| b.reg(RegClass::F32)).collect();
    let lane0 = b.setp(Cmp::Eq, Type::U32, lane, 0u32);
    let a_wg = b.mul_lo(Type::U32, cw, 64 * BK * 2);
    let g = b.bin(BinOp::Shr, Type::U32, lane, 2u32);
    let t = b.bin(BinOp::And, Type::U32, lane, 3u32);
    let mut er = epilogue::setup(&mut b, epi, &epi_params, None, c, m, n, spec.split_k > 1);
    let mut epilogue_fn = Some(epilogue_fn);
    {
        let stage = b.val(Type::U32, 0u32);
        let phase = b.val(Type::U32, 0u32);
        let prev = b.val(Type::U32, 0u32);
        tile_loop(b_ref(&mut b), bx, nblocks, tiles, (group_w, tiles_m), spec.bn, true, &mut |b, m0, n0| {
        for r in &acc {
            b.mov(Type::F32, *r, 0.0f32);
        }
        b.for_range(0u32, ktiles, 1, true, |b, kt| {
            let f = full(b, stage);
            b.mbar_wait(f, phase);
            let base = b.mad_lo(Type::U32, stage, spec.stage_bytes(), ring);
            let a_base = b.add(Type::U32, base, a_wg);
            let b_base = b.add(Type::U32, base, spec.a_bytes());
            b.wgmma_fence();
            for s in 0..BK / 16 {
                let da = step_descriptor(b, a_base, s, spec.a_km);
                let db = step_descriptor(b, b_base, s, spec.b_kn);
                b.wgmma(&acc, WgmmaA::Desc(da), db, 1u32, spec.a_km, spec.b_kn);
            }
            b.wgmma_commit();
            // this K tile's group may still run; the previous one has finished
            // reading its stage, which each warp now hands back to the producer
            b.wgmma_wait(1);
            let later = b.setp(Cmp::Gt, Type::U32, kt, 0u32);
            let release = b.and_pred(later, lane0);
            b.if_then(release, false, |b| {
                let e = empty(b, prev);
                b.mbar_arrive(e, None);
            });
            b.mov(Type::U32, prev, stage);
            advance(b, stage, phase, s_n);
        });
        // the tile's last group done: its stage goes back too, and the
        // accumulators are final
        b.wgmma_wait(0);
        b.if_then(lane0, false, |b| {
            let e = empty(b, prev);
            b.mbar_arrive(e, None);
        });
        b.comment("epilogue");
        let row0 = b.mad_lo(Type::U32, cw, 64u32, m0);
        let row0 = b.mad_lo(Type::U32, warp_in_wg, 16u32, row0);
        let row0 = b.add(Type::U32, row0, g);
        let col0 = b.mad_lo(Type::U32, t, 2u32, n0);
        let frag = Fragment { tid, m0, n0, m, n, smem: ring, acc: acc.chunks(4).map(|q| [q[0], q[1], q[2], q[3]]).collect(), row0, col0 };
        match epilogue_fn.take() {
            Some(f) => {
                // the epilogue's code, emitted once inside the loop
                f(b, &mut er, &frag);
            }
            None => unreachable!("the tile loop's body is emitted once"),
        }
        });
    }
    b.ret();
    b.finish()
}

fn b_ref(b: &mut KernelBuilder) -> &mut KernelBuilder {
    b
}

/// `body(m0, n0)` for the output tiles `first, first + step, ...` below
/// `tiles`, in groups of [`GROUP_M`] tile rows: tile `t` of group
/// `t / (GROUP_M * tiles_n)` is at row `first_row + (t % w) % rows_in_group`,
/// column `(t % w) / rows_in_group`.
fn tile_loop(b: &mut KernelBuilder, first: Reg, step: Reg, tiles: Reg, (group_w, tiles_m): (Reg, Reg), bn: u32, uniform: bool, body: &mut dyn FnMut(&mut KernelBuilder, Reg, Reg)) {
    let tile = b.val(Type::U32, first);
    let top = b.new_label();
    let exit = b.new_label();
    let p = b.setp(Cmp::Ge, Type::U32, tile, tiles);
    b.push_guarded(Guard { pred: p, negate: false }, Inst::Bra { target: exit, uni: uniform });
    b.place(top);
    let grp = b.bin(BinOp::Div, Type::U32, tile, group_w);
    let first_m = b.mul_lo(Type::U32, grp, GROUP_M);
    let left = b.bin(BinOp::Sub, Type::U32, tiles_m, first_m);
    let rows = b.bin(BinOp::Min, Type::U32, left, GROUP_M);
    let within = b.bin(BinOp::Rem, Type::U32, tile, group_w);
    let tm = {
        let r = b.bin(BinOp::Rem, Type::U32, within, rows);
        b.add(Type::U32, first_m, r)
    };
    let tn = b.bin(BinOp::Div, Type::U32, within, rows);
    let m0 = b.mul_lo(Type::U32, tm, BM);
    let n0 = b.mul_lo(Type::U32, tn, bn);
    body(b, m0, n0);
    b.bin_to(BinOp::Add, Type::U32, tile, tile, step);
    let p2 = b.setp(Cmp::Lt, Type::U32, tile, tiles);
    b.push_guarded(Guard { pred: p2, negate: false }, Inst::Bra { target: top, uni: uniform });
    b.place(exit);
}

/// The producer's 128 threads load box `(off, x0, y0, rows)` of an f32
/// operand (`rows x cols` in memory, `cols` contiguous and a multiple of 8)
/// 8 elements at a time, round them to bf16 and store them where a 128-byte
/// swizzled TMA copy would (row `r`, 16-byte chunk `c` at `r * 128 + (c ^ r % 8) * 16`).
fn convert_box(b: &mut KernelBuilder, ptr: Reg, base: Reg, (off, x0, y0, rows): (u32, Reg, Reg, u32), (n_rows, n_cols): (Reg, Reg), tid: Reg) {
    let chunks = rows * (BK / 8);
    for i in 0..chunks.div_ceil(WARPGROUP) {
        let idx = b.add(Type::U32, tid, i * WARPGROUP);
        let r = b.bin(BinOp::Shr, Type::U32, idx, 3u32);
        let c = b.bin(BinOp::And, Type::U32, idx, 7u32);
        let gy = b.add(Type::U32, y0, r);
        let gx = b.mad_lo(Type::U32, c, 8u32, x0);
        let in_r = b.setp(Cmp::Lt, Type::U32, gy, n_rows);
        let in_c = b.setp(Cmp::Lt, Type::U32, gx, n_cols);
        let ok = b.and_pred(in_r, in_c);
        let v: Vec<Reg> = (0..8).map(|_| b.val(Type::F32, 0.0f32)).collect();
        let e = b.mad_lo(Type::U32, gy, n_cols, gx);
        let boff = b.mul_wide_u32(e, 4u32);
        let p = b.add_u64(ptr, boff);
        b.guarded(ok, false, |b| {
            b.ld_vec(Space::Global, true, Type::F32, &v[..4], Addr::reg(p));
            b.ld_vec(Space::Global, true, Type::F32, &v[4..], Addr::reg_off(p, 16));
        });
        let packed: Vec<Operand> = (0..4).map(|j| b.pack_bf16x2(v[2 * j + 1], v[2 * j]).into()).collect();
        let rx = b.bin(BinOp::And, Type::U32, r, 7u32);
        let sc = b.bin(BinOp::Xor, Type::U32, c, rx);
        let so = b.mad_lo(Type::U32, r, 128u32, off);
        let so = b.mad_lo(Type::U32, sc, 16u32, so);
        let sa = b.add(Type::U32, base, so);
        b.st_vec(Space::Shared, Type::B32, Addr::reg(sa), packed);
    }
}

/// After the mbarriers' initialisation: a block barrier (so every thread sees
/// them), then warpgroup 0 (the producer) falls through while the consumers
/// branch to the returned label. Returns the thread's warpgroup too.
pub(crate) fn split_warpgroups(b: &mut KernelBuilder, tid: Reg) -> (Reg, Label) {
    b.bar_sync();
    let wg = b.bin(BinOp::Shr, Type::U32, tid, 7u32);
    let is_producer = b.setp(Cmp::Eq, Type::U32, wg, 0u32);
    let consumer = b.new_label();
    b.push_guarded(Guard { pred: is_producer, negate: true }, Inst::Bra { target: consumer, uni: false });
    (wg, consumer)
}

/// `stage += 1`, wrapping to 0 (and flipping `phase`) after the last stage.
pub(crate) fn advance(b: &mut KernelBuilder, stage: Reg, phase: Reg, stages: u32) {
    b.bin_to(BinOp::Add, Type::U32, stage, stage, 1u32);
    let wrap = b.setp(Cmp::Eq, Type::U32, stage, stages);
    b.push(Inst::Selp { ty: Type::U32, dst: stage, a: 0u32.into(), b: stage.into(), p: wrap });
    let flip = b.val(Type::U32, 0u32);
    b.push(Inst::Selp { ty: Type::U32, dst: flip, a: 1u32.into(), b: 0u32.into(), p: wrap });
    b.bin_to(BinOp::Xor, Type::U32, phase, phase, flip);
}
