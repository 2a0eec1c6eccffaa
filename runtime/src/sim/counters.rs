//! Performance counters of the simulator (off unless
//! [`SimOptions::counters`](super::SimOptions) asks for them): what Nsight
//! Compute would report about the instruction stream, computed from the
//! 32 lane addresses of every warp instruction.
//!
//! Per PTX instruction (so per source line), summed over the blocks run:
//! - issued warp instructions and active lanes (warp divergence);
//! - global memory (`ld/st/atom/red/cp.async` in `.global`, and generic
//!   accesses that resolve there): requests (one per warp instruction),
//!   the distinct 32-byte sectors each touches, and the bytes the lanes
//!   asked for; sector efficiency is `bytes / (32 * sectors)`;
//! - shared memory: requests and wavefronts. A request is split into phases
//!   of `128 / lane_bytes` lanes (32 lanes for 4-byte accesses, 16 for 8,
//!   8 for 16 and for each `ldmatrix` matrix); a phase takes as many
//!   wavefronts as the largest number of distinct 4-byte words that fall in
//!   one of the 32 banks (the same word is a broadcast). Ideal is one
//!   wavefront per phase; `wavefronts / ideal` is the n-way bank conflict;
//! - atomics: lanes and the distinct addresses they update (contention).
//!
//! Per launch: the bytes read and written, each byte counted once (a lower
//! bound of DRAM traffic), kept as one 32-bit byte mask per 32-byte sector.

use super::decode::{Inst, Space};
use std::collections::HashMap;

/// What an instruction does, for the instruction mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InstClass {
    /// `mma.sync` (tensor cores)
    Mma,
    Ldmatrix,
    /// integer and floating-point arithmetic, conversions, moves, predicates
    Alu,
    /// special-function unit: rcp/sqrt/rsqrt/ex2/lg2/tanh/sin/cos, divisions
    Sfu,
    GlobalLoad,
    GlobalStore,
    SharedLoad,
    SharedStore,
    LocalMemory,
    /// `atom` / `red` in any space
    Atomic,
    /// `bar.*`, `cp.async` waits and commits
    Barrier,
    /// branches, exit, warp votes and shuffles
    Control,
}

pub const CLASSES: [InstClass; 12] = [
    InstClass::Mma,
    InstClass::Ldmatrix,
    InstClass::Alu,
    InstClass::Sfu,
    InstClass::GlobalLoad,
    InstClass::GlobalStore,
    InstClass::SharedLoad,
    InstClass::SharedStore,
    InstClass::LocalMemory,
    InstClass::Atomic,
    InstClass::Barrier,
    InstClass::Control,
];

impl InstClass {
    pub fn name(self) -> &'static str {
        match self {
            InstClass::Mma => "mma",
            InstClass::Ldmatrix => "ldmatrix",
            InstClass::Alu => "alu",
            InstClass::Sfu => "sfu",
            InstClass::GlobalLoad => "global_load",
            InstClass::GlobalStore => "global_store",
            InstClass::SharedLoad => "shared_load",
            InstClass::SharedStore => "shared_store",
            InstClass::LocalMemory => "local",
            InstClass::Atomic => "atomic",
            InstClass::Barrier => "barrier",
            InstClass::Control => "control",
        }
    }

    /// The class of a decoded instruction (generic accesses count as global:
    /// pgc's kernels name their spaces).
    pub fn of(inst: &Inst) -> InstClass {
        use super::decode::FUop;
        let mem = |space: &Space, store: bool| match (space, store) {
            (Space::Shared, false) => InstClass::SharedLoad,
            (Space::Shared, true) => InstClass::SharedStore,
            (Space::Local, _) => InstClass::LocalMemory,
            (Space::Param, _) => InstClass::Alu,
            (_, false) => InstClass::GlobalLoad,
            (_, true) => InstClass::GlobalStore,
        };
        match inst {
            Inst::Mma { .. } | Inst::Wgmma { .. } => InstClass::Mma,
            Inst::TmaLoad { .. } => InstClass::GlobalLoad,
            Inst::TmaStore { .. } => InstClass::GlobalStore,
            Inst::BulkReduceAdd { .. } => InstClass::Atomic,
            Inst::Stmatrix { .. } => InstClass::SharedStore,
            Inst::MbarInit { .. } | Inst::MbarArrive { .. } | Inst::MbarWait { .. } | Inst::BulkCommit | Inst::BulkWait { .. } | Inst::WgFence | Inst::WgCommit | Inst::WgWait { .. } => InstClass::Barrier,
            Inst::Ldmatrix { .. } => InstClass::Ldmatrix,
            Inst::Ld { space, .. } => mem(space, false),
            Inst::St { space, .. } => mem(space, true),
            Inst::CpAsync { .. } => InstClass::GlobalLoad,
            Inst::Atom { .. } => InstClass::Atomic,
            Inst::Bar { .. } | Inst::BarWarp { .. } | Inst::CpCommit | Inst::CpWait { .. } => InstClass::Barrier,
            Inst::Bra { .. } | Inst::Exit | Inst::Shfl { .. } | Inst::Vote { .. } | Inst::Activemask { .. } => InstClass::Control,
            Inst::FU32 { op, .. } | Inst::FU64 { op, .. } if !matches!(op, FUop::Neg | FUop::Abs) => InstClass::Sfu,
            Inst::F32 { op: super::decode::FOp::Div, .. } | Inst::F64 { op: super::decode::FOp::Div, .. } => InstClass::Sfu,
            _ => InstClass::Alu,
        }
    }
}

/// The tensor-core FLOPs of one warp's issue of `inst`: `mma.sync.m16n8k16`
/// 2 x 16 x 8 x 16; a wgmma m64nNk16 is issued by the four warps of its
/// warpgroup, each counted for a quarter, 2 x 16 x N x 16.
pub fn tensor_flops(inst: &Inst) -> u64 {
    match inst {
        Inst::Mma { .. } => 2 * 16 * 8 * 16,
        Inst::Wgmma { n, .. } => 2 * 16 * *n as u64 * 16,
        _ => 0,
    }
}

/// Counters of one PTX instruction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PcCounts {
    /// issued warp instructions (predicated-off ones included, as hardware issues them)
    pub warp_insts: u64,
    /// active lanes summed over the issues (guard applied)
    pub lanes: u64,
    pub global_requests: u64,
    pub global_sectors: u64,
    /// bytes the lanes asked for
    pub global_bytes: u64,
    /// distinct bytes within each request (a broadcast counts once), summed
    pub global_distinct_bytes: u64,
    pub shared_requests: u64,
    pub shared_wavefronts: u64,
    pub shared_ideal: u64,
    pub atomic_lanes: u64,
    pub atomic_addresses: u64,
}

impl PcCounts {
    pub fn add(&mut self, o: &PcCounts) {
        self.warp_insts += o.warp_insts;
        self.lanes += o.lanes;
        self.global_requests += o.global_requests;
        self.global_sectors += o.global_sectors;
        self.global_bytes += o.global_bytes;
        self.global_distinct_bytes += o.global_distinct_bytes;
        self.shared_requests += o.shared_requests;
        self.shared_wavefronts += o.shared_wavefronts;
        self.shared_ideal += o.shared_ideal;
        self.atomic_lanes += o.atomic_lanes;
        self.atomic_addresses += o.atomic_addresses;
    }
}

/// Byte masks of the global sectors touched (sector address -> bytes).
pub type SectorMap = HashMap<u64, u32>;

/// One host thread's counters for the blocks it ran.
pub struct BlockCounters {
    pub pcs: Vec<PcCounts>,
    pub read: SectorMap,
    pub written: SectorMap,
    scratch: Vec<u64>,
    masks: Vec<(u64, u32)>,
}

impl BlockCounters {
    pub fn new(n_insts: usize) -> Self {
        BlockCounters { pcs: vec![PcCounts::default(); n_insts], read: HashMap::new(), written: HashMap::new(), scratch: Vec::with_capacity(256), masks: Vec::with_capacity(256) }
    }

    /// One global request: `(address, bytes)` per active lane.
    pub fn global(&mut self, pc: usize, acc: &[(u64, u32)], write: bool, atomic: bool) {
        if acc.is_empty() {
            return;
        }
        let map = if write { &mut self.written } else { &mut self.read };
        self.masks.clear();
        let mut bytes = 0u64;
        for &(a, n) in acc {
            bytes += n as u64;
            let end = a + n as u64;
            let mut s = a >> 5;
            while s << 5 < end {
                let lo = a.max(s << 5) - (s << 5);
                let hi = end.min((s + 1) << 5) - (s << 5);
                let m = if hi - lo == 32 { u32::MAX } else { ((1u32 << (hi - lo)) - 1) << lo };
                self.masks.push((s, m));
                s += 1;
            }
        }
        // merge the lanes' masks per sector
        self.masks.sort_unstable_by_key(|x| x.0);
        let (mut sectors, mut distinct) = (0u64, 0u64);
        let mut i = 0;
        while i < self.masks.len() {
            let (s, mut m) = self.masks[i];
            i += 1;
            while i < self.masks.len() && self.masks[i].0 == s {
                m |= self.masks[i].1;
                i += 1;
            }
            sectors += 1;
            distinct += m.count_ones() as u64;
            *map.entry(s).or_insert(0) |= m;
        }
        let c = &mut self.pcs[pc];
        c.global_requests += 1;
        c.global_sectors += sectors;
        c.global_bytes += bytes;
        c.global_distinct_bytes += distinct;
        if atomic {
            // read-modify-write: the bytes are read as well
            let r = &mut self.read;
            for &(a, n) in acc {
                let s = a >> 5;
                *r.entry(s).or_insert(0) |= ((1u32 << n) - 1) << (a & 31);
            }
            Self::contention(c, acc, &mut self.scratch);
        }
    }

    fn contention(c: &mut PcCounts, acc: &[(u64, u32)], scratch: &mut Vec<u64>) {
        scratch.clear();
        scratch.extend(acc.iter().map(|a| a.0));
        scratch.sort_unstable();
        scratch.dedup();
        c.atomic_lanes += acc.len() as u64;
        c.atomic_addresses += scratch.len() as u64;
    }

    /// One shared request: `(lane, address)` of the active lanes, each
    /// accessing `lane_bytes` bytes (the whole vector).
    pub fn shared(&mut self, pc: usize, acc: &[(u8, u64)], lane_bytes: u32, atomic: bool) {
        if acc.is_empty() {
            return;
        }
        let (w, ideal) = wavefronts(acc, lane_bytes, &mut self.scratch);
        let c = &mut self.pcs[pc];
        c.shared_requests += 1;
        c.shared_wavefronts += w;
        c.shared_ideal += ideal;
        if atomic {
            let g: Vec<(u64, u32)> = acc.iter().map(|&(_, a)| (a, 4)).collect();
            Self::contention(c, &g, &mut self.scratch);
        }
    }

    pub fn merge(&mut self, o: BlockCounters) {
        for (a, b) in self.pcs.iter_mut().zip(&o.pcs) {
            a.add(b);
        }
        for (k, v) in o.read {
            *self.read.entry(k).or_insert(0) |= v;
        }
        for (k, v) in o.written {
            *self.written.entry(k).or_insert(0) |= v;
        }
    }
}

/// Wavefronts of one shared-memory request and the ideal count (one per phase).
pub fn wavefronts(acc: &[(u8, u64)], lane_bytes: u32, scratch: &mut Vec<u64>) -> (u64, u64) {
    let per_phase = (128 / lane_bytes.max(1)).clamp(1, 32) as u8;
    let (mut total, mut ideal) = (0u64, 0u64);
    let mut phase = 0u8;
    loop {
        scratch.clear();
        for &(l, a) in acc {
            if l / per_phase == phase {
                let w0 = a >> 2;
                let w1 = (a + lane_bytes.max(1) as u64 - 1) >> 2;
                for w in w0..=w1 {
                    // bank in the top bits so that sorting groups by bank
                    scratch.push((w & 31) << 58 | w);
                }
            }
        }
        if !scratch.is_empty() {
            scratch.sort_unstable();
            scratch.dedup();
            let mut best = 0u64;
            let mut run = 0u64;
            let mut bank = u64::MAX;
            for &x in scratch.iter() {
                let b = x >> 58;
                if b == bank {
                    run += 1;
                } else {
                    bank = b;
                    run = 1;
                }
                best = best.max(run);
            }
            total += best;
            ideal += 1;
        }
        phase += 1;
        if phase as u32 * per_phase as u32 >= 32 {
            break;
        }
    }
    (total, ideal)
}

/// The counters of one launch, merged over the host threads.
#[derive(Clone, Debug)]
pub struct LaunchCounters {
    pub kernel: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub blocks_total: u64,
    /// linear block ids run (`x + gx * (y + gy * z)`), in the order chosen
    pub blocks_run: Vec<u64>,
    /// per instruction of the kernel
    pub pcs: Vec<PcCounts>,
    /// PTX line and class per instruction
    pub lines: Vec<u32>,
    pub classes: Vec<InstClass>,
    /// per instruction: the tensor-core FLOPs one warp's issue of it does
    /// ([`tensor_flops`]; 0 for everything but mma.sync and wgmma)
    pub flops: Vec<u64>,
    /// unique bytes of the blocks run
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// extrapolated to the whole grid (see [`extrapolate`])
    pub read_bytes_est: f64,
    pub written_bytes_est: f64,
    /// the buffers named for the launch (address, bytes), and per buffer
    /// the extrapolated unique bytes read and written
    pub regions: Vec<(u64, u64)>,
    pub region_read: Vec<f64>,
    pub region_written: Vec<f64>,
    /// extrapolated unique bytes outside every named buffer
    pub outside_read: f64,
    pub outside_written: f64,
}

impl LaunchCounters {
    /// Whole grid / blocks run.
    pub fn scale(&self) -> f64 {
        self.blocks_total as f64 / self.blocks_run.len().max(1) as f64
    }

    /// Sum over the instructions (blocks run only).
    pub fn total(&self) -> PcCounts {
        let mut t = PcCounts::default();
        for p in &self.pcs {
            t.add(p);
        }
        t
    }

    /// Tensor-core FLOPs of the blocks run.
    pub fn tensor_flops(&self) -> u64 {
        self.pcs.iter().zip(&self.flops).map(|(p, &f)| p.warp_insts * f).sum()
    }

    /// Issued warp instructions per class (blocks run only).
    pub fn by_class(&self) -> Vec<(InstClass, u64)> {
        CLASSES
            .iter()
            .map(|&c| (c, self.pcs.iter().zip(&self.classes).filter(|(_, k)| **k == c).map(|(p, _)| p.warp_insts).sum()))
            .collect()
    }

    /// Counters per PTX line (blocks run only), lines in order.
    pub fn by_line(&self) -> Vec<(u32, PcCounts)> {
        let mut m: std::collections::BTreeMap<u32, PcCounts> = Default::default();
        for (p, &l) in self.pcs.iter().zip(&self.lines) {
            m.entry(l).or_default().add(p);
        }
        m.into_iter().collect()
    }
}

/// Unique bytes of a sector map, extrapolated from the blocks run to the
/// grid: the bytes inside each of `regions` (address, bytes; the buffers the
/// launch's arguments point at) scale with `scale` but never beyond the
/// region's size (a buffer every block reads, a weight panel read by every
/// row of tiles, is counted once); bytes outside every region scale alone.
pub fn extrapolate(map: &SectorMap, regions: &[(u64, u64)], scale: f64) -> Extrapolated {
    let mut order: Vec<usize> = (0..regions.len()).filter(|&i| regions[i].1 > 0).collect();
    order.sort_unstable_by_key(|&i| regions[i]);
    let mut per = vec![0u64; regions.len()];
    let (mut raw, mut outside) = (0u64, 0u64);
    for (&s, &m) in map {
        let n = m.count_ones() as u64;
        raw += n;
        let a = s << 5;
        // the last regions starting at or before the sector that still contain it
        let i = order.partition_point(|&r| regions[r].0 <= a);
        let hit = order[..i].iter().rev().take(8).find(|&&r| a < regions[r].0 + regions[r].1);
        match hit {
            Some(&r) => per[r] += n,
            None => outside += n,
        }
    }
    let per_region: Vec<f64> = per.iter().zip(regions).map(|(&b, r)| (b as f64 * scale).min(r.1 as f64)).collect();
    let outside = outside as f64 * scale;
    Extrapolated { raw, est: per_region.iter().sum::<f64>() + outside, per_region, outside }
}

/// What [`extrapolate`] found.
#[derive(Clone, Debug, Default)]
pub struct Extrapolated {
    /// unique bytes of the blocks run
    pub raw: u64,
    /// extrapolated to the grid
    pub est: f64,
    /// per region (in the order given), extrapolated and capped
    pub per_region: Vec<f64>,
    /// outside every region, extrapolated
    pub outside: f64,
}
