//! The interpreter: blocks of warps of 32 lanes, SIMT reconvergence stack,
//! barriers, shared/local/param/global memory and the sanitizer checks.
#![allow(clippy::needless_range_loop, clippy::collapsible_if, clippy::collapsible_match, clippy::too_many_arguments)]

use super::decode::*;
use super::hopper::{box_elements, decode_tmap, MBar, MatDesc, MBAR_MAX, TMAP_BYTES};
use super::mem::{atomic_apply, Allocation, GlobalMem, LOCAL_WINDOW, PARAM_WINDOW, SHARED_WINDOW, WINDOW_SIZE};
use super::num::{self, Rnd};
use super::counters::BlockCounters;
use super::options::SimOptions;
use crate::device::{SimError, SimErrorKind, TmaSwizzle};
use std::collections::{HashMap, VecDeque};

pub const FULL: u32 = u32::MAX;

type R<T> = Result<T, Box<SimError>>;

/// Everything about one launch that every block shares (read-only).
pub struct Launch<'a> {
    pub k: &'a Kernel,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub params: Vec<u8>,
    pub mem: &'a GlobalMem,
    /// total shared bytes per block (static + dynamic)
    pub shared_size: u32,
    pub opts: &'a SimOptions,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Acc {
    Read,
    Write,
    Atomic,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    pc: u32,
    mask: u32,
    rpc: u32,
}

#[derive(Clone, Copy, Debug)]
struct BarWait {
    id: u32,
    count: Option<u32>,
    pc: u32,
    line: u32,
}

#[derive(Clone, Copy)]
struct CpOp {
    lane: u8,
    bytes: u8,
    dst: u32,
    line: u32,
    data: [u8; 16],
}

struct Warp {
    id: u32,
    r32: Vec<[u32; 32]>,
    r64: Vec<[u64; 32]>,
    p: Vec<u32>,
    stack: Vec<Entry>,
    valid: u32,
    exited: u32,
    wait: Option<BarWait>,
    done: bool,
    cp_pending: Vec<CpOp>,
    cp_groups: VecDeque<Vec<CpOp>>,
    /// waiting on an mbarrier or at a warpgroup rendezvous
    susp: Option<Susp>,
    /// the warpgroup rendezvous at this pc has passed: execute it
    pass: Option<u32>,
    /// wgmma bookkeeping (kernels with wgmma)
    wg: Option<Box<WarpWg>>,
    /// shared 16-byte chunks read by this warp's TMA stores, not yet committed / per committed group
    bulk_open: Vec<u32>,
    bulk_groups: VecDeque<Vec<u32>>,
}

/// Why an unfinished warp is not running, besides `bar.sync`.
#[derive(Clone, Copy, Debug)]
enum Susp {
    /// `mbarrier.try_wait` found the phase incomplete; woken when the barrier's phase moves
    Mbar { off: u32, phase: u32, line: u32 },
    /// at a warpgroup-collective instruction, waiting for the other warps of its warpgroup
    Group { pc: u32, line: u32 },
}

/// One wgmma in flight: the accumulator values it produces (written to the
/// registers at the `wgmma.wait_group` that covers it), the A-fragment
/// registers and the shared 16-byte chunks it reads.
struct WgOp {
    out: Vec<(u32, [u32; 32])>,
    aregs: Vec<u32>,
    chunks: Vec<u32>,
}

/// A warp's wgmma state.
struct WarpWg {
    /// per 32-bit register: how many in-flight wgmmas use it (accumulator or A fragment)
    busy: Vec<u16>,
    /// per 32-bit register: accessed by an ordinary instruction since the last `wgmma.fence`
    touched: Vec<bool>,
    open: Vec<WgOp>,
    groups: VecDeque<Vec<WgOp>>,
}

/// A TMA load in flight: it lands (and completes its mbarrier's
/// transaction bytes) when a thread waits on that mbarrier, when nothing
/// else can run, or at the end of the block.
struct TmaOp {
    mbar: u32,
    dst: u32,
    swz: TmaSwizzle,
    data: Vec<u8>,
    line: u32,
    warp: u32,
    lane: u8,
}

/// The block's async-proxy state (kernels with mbarriers, TMA or wgmma).
struct Hop {
    mbars: HashMap<u32, MBar>,
    /// per 8-byte shared word: the line of the `mbarrier.init` living there, 0 if none
    mbar_at: Vec<u32>,
    tma: Vec<TmaOp>,
    /// per 16-byte shared chunk: in-flight async-proxy reads (wgmma operands, TMA stores)
    aread: Vec<u16>,
    /// per shared byte: `(thread + 1) | fences << 11` of its last ordinary write, 0 if none
    gwrite: Vec<u32>,
    /// per thread: `fence.proxy.async` executed so far
    fences: Vec<u32>,
}

#[derive(Clone, Copy, Default)]
struct Shadow {
    w_epoch: u32,
    r_epoch: u32,
    w_line: u32,
    w_tid: u16,
    r_tid: u16,
}

const MULTI: u16 = 0xffff;
const PENDING: u16 = 0x8000;

/// Per-host-thread state reused across blocks.
pub struct BlockRunner<'a> {
    l: &'a Launch<'a>,
    warps: Vec<Warp>,
    ctaid: [u32; 3],
    shared: Vec<u8>,
    shadow: Vec<Shadow>,
    epoch: u32,
    local: Vec<u8>,
    arrivals: [u32; 16],
    /// first read of never-written shared memory in this barrier interval:
    /// (warp, lane, line, address). Reported when the interval ends, unless a
    /// write by another thread in the same interval turns it into a race.
    uninit: Option<(u32, usize, u32, usize)>,
    nthreads: u32,
    hint: usize,
    pub thread_insts: u64,
    pub warp_insts: u64,
    steps: u64,
    /// performance counters, when the options ask for them
    pub counters: Option<Box<BlockCounters>>,
    /// scratch for the counters' per-request lane lists
    acc_g: Vec<(u64, u32)>,
    acc_s: Vec<(u8, u64)>,
    hop: Option<Box<Hop>>,
}

macro_rules! each {
    ($mask:expr, |$l:ident| $body:expr) => {{
        let m: u32 = $mask;
        if m == FULL {
            for $l in 0..32usize {
                $body;
            }
        } else {
            let mut mm = m;
            while mm != 0 {
                let $l = mm.trailing_zeros() as usize;
                mm &= mm - 1;
                $body;
            }
        }
    }};
}

/// The binary float ops on lanes of bits: `$f` reads a lane's value, `$min`
/// and `$max` are the width's min and max.
macro_rules! float_bin {
    ($op:expr, $em:expr, $dv:ident, $av:ident, $bv:ident, $f:ident, $min:path, $max:path) => {
        match $op {
            FOp::Add => each!($em, |l| $dv[l] = ($f($av[l]) + $f($bv[l])).to_bits()),
            FOp::Sub => each!($em, |l| $dv[l] = ($f($av[l]) - $f($bv[l])).to_bits()),
            FOp::Mul => each!($em, |l| $dv[l] = ($f($av[l]) * $f($bv[l])).to_bits()),
            FOp::Div => each!($em, |l| $dv[l] = ($f($av[l]) / $f($bv[l])).to_bits()),
            FOp::Min => each!($em, |l| $dv[l] = $min($f($av[l]), $f($bv[l])).to_bits()),
            FOp::Max => each!($em, |l| $dv[l] = $max($f($av[l]), $f($bv[l])).to_bits()),
        }
    };
}

/// The lanes of mask `m`, lowest first (for bodies that `?` or `return`).
#[inline]
fn lanes(m: u32) -> impl Iterator<Item = usize> {
    let mut m = m;
    std::iter::from_fn(move || {
        (m != 0).then(|| {
            let l = m.trailing_zeros() as usize;
            m &= m - 1;
            l
        })
    })
}

impl Warp {
    /// Register `a` of either width, as u64 lanes.
    #[inline]
    fn read_wide(&self, a: &Reg) -> [u64; 32] {
        match a {
            Reg::R32(a) => self.r32[*a as usize].map(|x| x as u64),
            Reg::R64(a) => self.r64[*a as usize],
        }
    }

    /// Writes the lanes `em` of `v` to register `d` (truncated to a 32-bit one).
    #[inline]
    fn write_wide(&mut self, em: u32, d: &Reg, v: &[u64; 32]) {
        match d {
            Reg::R32(d) => {
                let dv = &mut self.r32[*d as usize];
                each!(em, |l| dv[l] = v[l] as u32);
            }
            Reg::R64(d) => {
                let dv = &mut self.r64[*d as usize];
                each!(em, |l| dv[l] = v[l]);
            }
        }
    }
}

#[inline]
fn f(x: u32) -> f32 {
    f32::from_bits(x)
}
#[inline]
fn fd(x: u64) -> f64 {
    f64::from_bits(x)
}

fn sext(v: u64, bytes: u32) -> i64 {
    let sh = 64 - bytes * 8;
    ((v << sh) as i64) >> sh
}

fn mask_bytes(v: u64, bytes: u32) -> u64 {
    if bytes >= 8 {
        v
    } else {
        v & ((1u64 << (bytes * 8)) - 1)
    }
}

fn lanes_str(m: u32) -> String {
    let v: Vec<String> = (0..32).filter(|l| m >> l & 1 == 1).map(|l| l.to_string()).collect();
    if v.len() > 8 {
        format!("{} lanes ({}..)", v.len(), v[..8].join(","))
    } else {
        v.join(",")
    }
}

impl<'a> BlockRunner<'a> {
    pub fn new(l: &'a Launch<'a>) -> Self {
        let nthreads = l.block[0] * l.block[1] * l.block[2];
        let nwarps = nthreads.div_ceil(32);
        let k = l.k;
        let warps = (0..nwarps)
            .map(|w| Warp {
                id: w,
                r32: vec![[0; 32]; k.n32 as usize],
                r64: vec![[0; 32]; k.n64 as usize],
                p: vec![0; k.np as usize],
                stack: Vec::with_capacity(16),
                valid: 0,
                exited: 0,
                wait: None,
                done: false,
                cp_pending: Vec::new(),
                cp_groups: VecDeque::new(),
                susp: None,
                pass: None,
                wg: k.wgmma.then(|| Box::new(WarpWg { busy: vec![0; k.n32 as usize], touched: vec![false; k.n32 as usize], open: Vec::new(), groups: VecDeque::new() })),
                bulk_open: Vec::new(),
                bulk_groups: VecDeque::new(),
            })
            .collect();
        BlockRunner {
            l,
            warps,
            ctaid: [0; 3],
            shared: vec![0; l.shared_size as usize],
            shadow: vec![Shadow::default(); l.shared_size as usize],
            epoch: 2,
            local: vec![0; k.local_bytes as usize * nthreads as usize],
            arrivals: [0; 16],
            uninit: None,
            nthreads,
            hint: 0,
            thread_insts: 0,
            warp_insts: 0,
            steps: 0,
            counters: l.opts.counters.then(|| Box::new(BlockCounters::new(k.insts.len()))),
            acc_g: Vec::new(),
            acc_s: Vec::new(),
            hop: k.hopper.then(|| {
                let sh = l.shared_size as usize;
                Box::new(Hop { mbars: HashMap::new(), mbar_at: vec![0; sh.div_ceil(8)], tma: Vec::new(), aread: vec![0; sh.div_ceil(16)], gwrite: vec![0; sh], fences: vec![0; nthreads as usize] })
            }),
        }
    }

    fn tid_of(&self, warp: u32, lane: usize) -> [u32; 3] {
        let t = warp * 32 + lane as u32;
        let b = self.l.block;
        [t % b[0], (t / b[0]) % b[1], t / (b[0] * b[1])]
    }

    fn error(&self, kind: SimErrorKind, warp: u32, lane: usize, line: u32, msg: String) -> Box<SimError> {
        Box::new(SimError { kind, kernel: self.l.k.name.clone(), block: self.ctaid, thread: self.tid_of(warp, lane), line, msg })
    }

    fn reset(&mut self, ctaid: [u32; 3]) {
        self.ctaid = ctaid;
        self.epoch = 2;
        self.arrivals = [0; 16];
        self.uninit = None;
        self.shadow.fill(Shadow::default());
        self.shared.fill(0);
        self.local.fill(0);
        if let Some(h) = self.hop.as_deref_mut() {
            h.mbars.clear();
            h.mbar_at.fill(0);
            h.tma.clear();
            h.aread.fill(0);
            h.gwrite.fill(0);
            h.fences.fill(0);
        }
        let k = self.l.k;
        let (b, g) = (self.l.block, self.l.grid);
        let nthreads = self.nthreads;
        let nwarps = self.warps.len() as u32;
        for w in self.warps.iter_mut() {
            for r in w.r32.iter_mut() {
                *r = [0; 32];
            }
            for r in w.r64.iter_mut() {
                *r = [0; 32];
            }
            w.p.fill(0);
            let first = w.id * 32;
            let n = nthreads.saturating_sub(first).min(32);
            w.valid = if n == 32 { FULL } else { (1u32 << n) - 1 };
            w.exited = 0;
            w.wait = None;
            w.done = false;
            w.stack.clear();
            w.stack.push(Entry { pc: 0, mask: w.valid, rpc: RECONV_NONE });
            w.cp_pending.clear();
            w.cp_groups.clear();
            w.susp = None;
            w.pass = None;
            w.bulk_open.clear();
            w.bulk_groups.clear();
            if let Some(g) = w.wg.as_deref_mut() {
                g.busy.fill(0);
                g.touched.fill(false);
                g.open.clear();
                g.groups.clear();
            }
            for &(r, v) in &k.const32 {
                w.r32[r as usize] = [v; 32];
            }
            for &(r, v) in &k.const64 {
                w.r64[r as usize] = [v; 32];
            }
            for &(r, sp) in &k.specials {
                let reg = &mut w.r32[r as usize];
                for (l, slot) in reg.iter_mut().enumerate() {
                    let t = first + l as u32;
                    let tid = [t % b[0], (t / b[0]) % b[1], t / (b[0] * b[1])];
                    let lane = l as u32;
                    *slot = match sp {
                        Special::Tid(c) => tid[c as usize],
                        Special::Ntid(c) => b[c as usize],
                        Special::Ctaid(c) => ctaid[c as usize],
                        Special::Nctaid(c) => g[c as usize],
                        Special::Laneid => lane,
                        Special::Warpid => w.id,
                        Special::Nwarpid => nwarps,
                        Special::LanemaskEq => 1 << lane,
                        Special::LanemaskLt => (1u32 << lane) - 1,
                        Special::LanemaskLe => ((1u64 << (lane + 1)) - 1) as u32,
                        Special::LanemaskGt => !(((1u64 << (lane + 1)) - 1) as u32),
                        Special::LanemaskGe => !((1u32 << lane) - 1),
                    };
                }
            }
        }
    }

    /// Run one block to completion.
    pub fn run_block(&mut self, ctaid: [u32; 3]) -> R<()> {
        self.reset(ctaid);
        loop {
            for wi in 0..self.warps.len() {
                let w = &self.warps[wi];
                if !w.done && w.wait.is_none() && w.susp.is_none() {
                    self.run_warp(wi)?;
                }
            }
            self.report_uninit()?;
            if self.warps.iter().all(|w| w.done) {
                return self.finish_block();
            }
            let mut progress = self.resolve_barriers()?;
            if self.hop.is_some() {
                progress |= self.resolve_async()?;
                // nothing runnable: let every TMA load in flight land, as the hardware eventually would
                if !progress && self.land_all()? {
                    progress = self.resolve_async()?;
                }
            }
            if !progress {
                return Err(self.stuck());
            }
        }
    }

    fn report_uninit(&mut self) -> R<()> {
        if let Some((w, l, line, k)) = self.uninit.take() {
            return Err(self.error(
                SimErrorKind::UninitializedRead,
                w,
                l,
                line,
                format!("read of uninitialised shared memory at shared address {k:#x}: no thread of the block wrote it before this read ({} bytes of shared memory per block)", self.l.shared_size),
            ));
        }
        Ok(())
    }

    fn resolve_barriers(&mut self) -> R<bool> {
        let live: u32 = self.warps.iter().map(|w| (w.valid & !w.exited).count_ones()).sum();
        let exited = self.nthreads - live;
        let mut released = false;
        for id in 0..16u32 {
            let waiters: Vec<usize> = (0..self.warps.len()).filter(|&w| self.warps[w].wait.is_some_and(|b| b.id == id)).collect();
            if waiters.is_empty() {
                continue;
            }
            let first = self.warps[waiters[0]].wait.unwrap_or_else(|| unreachable!());
            let fw = self.warps[waiters[0]].id;
            let flane = (self.warps[waiters[0]].valid & !self.warps[waiters[0]].exited).trailing_zeros() as usize;
            for &w in &waiters {
                let b = self.warps[w].wait.unwrap_or_else(|| unreachable!());
                if b.count != first.count {
                    return Err(self.error(SimErrorKind::BarrierDivergence, fw, flane, first.line, format!("barrier {id}: warps wait with different thread counts ({:?} at line {}, {:?} at line {})", first.count, first.line, b.count, b.line)));
                }
                if first.count.is_none() && b.pc != first.pc {
                    return Err(self.error(
                        SimErrorKind::BarrierDivergence,
                        fw,
                        flane,
                        first.line,
                        format!("barrier divergence: warps of the block wait at different barrier instructions (line {} and line {}): the block's threads did not all reach the same bar.sync", first.line, b.line),
                    ));
                }
            }
            let arrived: u32 = waiters.iter().map(|&w| (self.warps[w].valid & !self.warps[w].exited).count_ones()).sum::<u32>() + self.arrivals[id as usize];
            let expected = first.count.unwrap_or(self.nthreads);
            if first.count.is_none() && exited > 0 {
                let (ew, el) = self.warps.iter().find_map(|w| {
                    let e = w.exited & w.valid;
                    if e != 0 {
                        Some((w.id, e.trailing_zeros()))
                    } else {
                        None
                    }
                }).unwrap_or((0, 0));
                let et = self.tid_of(ew, el as usize);
                return Err(self.error(
                    SimErrorKind::BarrierDivergence,
                    fw,
                    flane,
                    first.line,
                    format!("barrier divergence: bar.sync {id} waits for all {} threads of the block, but {exited} thread(s) have exited (e.g. thread ({},{},{})) and can never arrive", self.nthreads, et[0], et[1], et[2]),
                ));
            }
            if arrived > expected {
                return Err(self.error(SimErrorKind::BarrierDivergence, fw, flane, first.line, format!("barrier {id}: {arrived} threads arrived but the barrier expects {expected}")));
            }
            if arrived == expected {
                for &w in &waiters {
                    self.warps[w].wait = None;
                }
                self.arrivals[id as usize] = 0;
                self.epoch += 1;
                released = true;
            }
        }
        Ok(released)
    }

    /// The error when no warp can make progress: a barrier that not enough
    /// threads can reach, or (with mbarriers and warpgroups) a deadlock with
    /// what every warp waits for.
    fn stuck(&self) -> Box<SimError> {
        if self.warps.iter().any(|w| w.susp.is_some()) {
            let mut what = Vec::new();
            for w in &self.warps {
                let s = match (w.done, w.wait, w.susp) {
                    (true, ..) => "finished".to_string(),
                    (_, Some(b), _) => format!("bar.sync {} at line {}", b.id, b.line),
                    (_, _, Some(Susp::Mbar { off, line, .. })) => {
                        let m = self.hop.as_deref().and_then(|h| h.mbars.get(&off));
                        match m {
                            Some(m) => format!(
                                "mbarrier.try_wait at line {line} on the mbarrier at shared {off:#x} (phase {}, {} of {} arrivals missing, {} transaction bytes expected)",
                                m.phase, m.pending, m.expected, m.tx
                            ),
                            None => format!("mbarrier.try_wait at line {line} on shared {off:#x}"),
                        }
                    }
                    (_, _, Some(Susp::Group { line, .. })) => format!("wgmma at line {line}, for the rest of its warpgroup"),
                    _ => "runnable".to_string(),
                };
                what.push(format!("warp {}: {s}", w.id));
            }
            let (wid, line) = self
                .warps
                .iter()
                .find_map(|w| match w.susp {
                    Some(Susp::Mbar { line, .. } | Susp::Group { line, .. }) => Some((w.id, line)),
                    None => None,
                })
                .unwrap_or((0, 0));
            return self.error(SimErrorKind::Deadlock, wid, 0, line, format!("deadlock: every warp waits and nothing in flight can release one; {}", what.join("; ")));
        }
        let w = self.warps.iter().find(|w| w.wait.is_some()).map(|w| (w.id, w.wait.unwrap_or_else(|| unreachable!()), (w.valid & !w.exited).trailing_zeros()));
        let (wid, b, lane) = w.unwrap_or((0, BarWait { id: 0, count: None, pc: 0, line: 0 }, 0));
        let arrived: u32 = self.warps.iter().filter(|w| w.wait.is_some_and(|x| x.id == b.id)).map(|w| (w.valid & !w.exited).count_ones()).sum::<u32>() + self.arrivals[b.id as usize];
        self.error(
            SimErrorKind::BarrierDivergence,
            wid,
            lane as usize,
            b.line,
            format!("barrier divergence (deadlock): barrier {} expects {} threads but only {arrived} can arrive; the other threads wait elsewhere or have exited", b.id, b.count.unwrap_or(self.nthreads)),
        )
    }

    // ------------------------------------------------------------ memory

    /// Record a read of `size` shared bytes at `off`; the common case (no
    /// hazard) is one pass without branches on the error paths.
    #[inline(always)]
    fn shadow_read(&mut self, warp: u32, lane: usize, off: usize, size: usize, line: u32) -> R<()> {
        if !self.l.opts.racecheck && !self.l.opts.initcheck {
            return Ok(());
        }
        let t = (warp * 32 + lane as u32) as u16;
        let e = self.epoch;
        let mut suspicious = false;
        for s in self.shadow[off..off + size].iter_mut() {
            suspicious |= (s.w_tid & PENDING != 0) | (s.w_epoch == e && s.w_tid != t) | (s.w_epoch == 0);
            if s.r_epoch != e {
                s.r_epoch = e;
                s.r_tid = t;
            } else if s.r_tid != t {
                s.r_tid = MULTI;
            }
        }
        if suspicious {
            self.shadow_read_slow(warp, lane, off, size, line)
        } else {
            Ok(())
        }
    }

    /// Shadow entry `k`, or the hazard error of an access (`what`: "read of",
    /// "write to") while a cp.async into it is in flight.
    fn shadow_settled(&self, k: usize, warp: u32, lane: usize, line: u32, what: &str) -> R<Shadow> {
        let s = self.shadow[k];
        if s.w_tid & PENDING != 0 {
            return Err(self.error(SimErrorKind::AsyncCopyHazard, warp, lane, line, format!("{what} shared address {k:#x} while a copy into it is in flight (a cp.async without its cp.async.wait_group, or a TMA load whose mbarrier was not waited on)")));
        }
        Ok(s)
    }

    /// "thread (x,y,z)" of the block's linear thread `tid`.
    fn thread_str(&self, tid: u16) -> String {
        let u = self.tid_of(0, tid as usize);
        format!("thread ({},{},{})", u[0], u[1], u[2])
    }

    #[cold]
    #[inline(never)]
    fn shadow_read_slow(&mut self, warp: u32, lane: usize, off: usize, size: usize, line: u32) -> R<()> {
        let (race, init) = (self.l.opts.racecheck, self.l.opts.initcheck);
        let t = (warp * 32 + lane as u32) as u16;
        let e = self.epoch;
        for k in off..off + size {
            let s = self.shadow_settled(k, warp, lane, line, "read of")?;
            if init && s.w_epoch == 0 && self.uninit.is_none() {
                self.uninit = Some((warp, lane, line, k));
            }
            if race && s.w_epoch == e && s.w_tid != t {
                return Err(self.error(SimErrorKind::Race, warp, lane, line, format!("shared-memory race: read of shared address {k:#x} written by {} at line {} with no barrier in between (read-after-write)", self.thread_str(s.w_tid), s.w_line)));
            }
        }
        Ok(())
    }

    #[inline(always)]
    fn shadow_write(&mut self, warp: u32, lane: usize, off: usize, size: usize, line: u32) -> R<()> {
        if self.hop.is_some() {
            self.hop_generic_write(warp, lane, off, size, line)?;
        }
        let race = self.l.opts.racecheck;
        let t = (warp * 32 + lane as u32) as u16;
        let e = self.epoch;
        let mut suspicious = false;
        for s in self.shadow[off..off + size].iter() {
            suspicious |= (s.w_tid & PENDING != 0) | (race & (((s.w_epoch == e) & (s.w_tid != t)) | ((s.r_epoch == e) & (s.r_tid != t))));
        }
        if !suspicious {
            for s in self.shadow[off..off + size].iter_mut() {
                s.w_epoch = e;
                s.w_tid = t;
                s.w_line = line;
            }
            return Ok(());
        }
        self.shadow_write_slow(warp, lane, off, size, line)
    }

    #[cold]
    #[inline(never)]
    fn shadow_write_slow(&mut self, warp: u32, lane: usize, off: usize, size: usize, line: u32) -> R<()> {
        let race = self.l.opts.racecheck;
        let t = (warp * 32 + lane as u32) as u16;
        let e = self.epoch;
        for k in off..off + size {
            let s = self.shadow_settled(k, warp, lane, line, "write to")?;
            if race {
                if s.w_epoch == e && s.w_tid != t {
                    return Err(self.error(SimErrorKind::Race, warp, lane, line, format!("shared-memory race: write to shared address {k:#x} also written by {} at line {} with no barrier in between (write-after-write)", self.thread_str(s.w_tid), s.w_line)));
                }
                if s.r_epoch == e && s.r_tid != t {
                    let who = if s.r_tid == MULTI { "other threads".to_string() } else { self.thread_str(s.r_tid) };
                    return Err(self.error(SimErrorKind::Race, warp, lane, line, format!("shared-memory race: write to shared address {k:#x} read by {who} with no barrier in between (write-after-read)")));
                }
            }
            let sm = &mut self.shadow[k];
            sm.w_epoch = e;
            sm.w_tid = t;
            sm.w_line = line;
        }
        Ok(())
    }

    #[inline]
    fn sh_check(&self, warp: u32, lane: usize, addr: u64, size: u32, line: u32) -> R<usize> {
        if addr.checked_add(size as u64).is_none_or(|e| e > self.l.shared_size as u64) {
            return Err(self.error(SimErrorKind::OutOfBounds, warp, lane, line, format!("out-of-bounds shared access: {size} bytes at shared address {addr:#x}, the block has {} bytes of shared memory", self.l.shared_size)));
        }
        Ok(addr as usize)
    }

    fn misaligned(&self, warp: u32, lane: usize, line: u32, what: &str, addr: u64, align: u32) -> Box<SimError> {
        self.error(SimErrorKind::Misaligned, warp, lane, line, format!("misaligned {what} access: address {addr:#x} is not a multiple of {align}"))
    }

    fn sh_read(&mut self, warp: u32, lane: usize, addr: u64, size: u32, line: u32) -> R<u64> {
        let off = self.sh_check(warp, lane, addr, size, line)?;
        self.shadow_read(warp, lane, off, size as usize, line)?;
        let mut b = [0u8; 8];
        b[..size as usize].copy_from_slice(&self.shared[off..off + size as usize]);
        Ok(u64::from_le_bytes(b))
    }

    fn sh_write(&mut self, warp: u32, lane: usize, addr: u64, size: u32, v: u64, line: u32) -> R<()> {
        let off = self.sh_check(warp, lane, addr, size, line)?;
        self.shadow_write(warp, lane, off, size as usize, line)?;
        self.shared[off..off + size as usize].copy_from_slice(&v.to_le_bytes()[..size as usize]);
        Ok(())
    }

    fn gl_find(&mut self, warp: u32, lane: usize, addr: u64, size: u32, line: u32) -> R<(&'a Allocation, u64)> {
        let mem: &'a GlobalMem = self.l.mem;
        match mem.find(addr, size as u64, &mut self.hint) {
            Some(x) => Ok(x),
            None => Err(self.error(SimErrorKind::OutOfBounds, warp, lane, line, format!("out-of-bounds global access: {size} bytes at address {addr:#x} ({})", mem.describe(addr)))),
        }
    }

    fn local_off(&self, warp: u32, lane: usize, addr: u64, size: u32, line: u32) -> R<usize> {
        let lb = self.l.k.local_bytes as u64;
        if addr.checked_add(size as u64).is_none_or(|e| e > lb) {
            return Err(self.error(SimErrorKind::OutOfBounds, warp, lane, line, format!("out-of-bounds local access: {size} bytes at local address {addr:#x}, each thread has {lb} bytes")));
        }
        Ok(((warp as usize * 32 + lane) * lb as usize) + addr as usize)
    }

    /// Resolve a generic address to (space, space address).
    fn generic(addr: u64) -> (Space, u64) {
        if (SHARED_WINDOW..SHARED_WINDOW + WINDOW_SIZE).contains(&addr) {
            (Space::Shared, addr - SHARED_WINDOW)
        } else if (LOCAL_WINDOW..LOCAL_WINDOW + WINDOW_SIZE).contains(&addr) {
            (Space::Local, addr - LOCAL_WINDOW)
        } else if (PARAM_WINDOW..PARAM_WINDOW + WINDOW_SIZE).contains(&addr) {
            (Space::Param, addr - PARAM_WINDOW)
        } else {
            (Space::Global, addr)
        }
    }

    /// (space, space address) of an address in `space`, generic ones resolved.
    #[inline]
    fn resolve(space: Space, addr: u64) -> (Space, u64) {
        if space == Space::Generic {
            Self::generic(addr)
        } else {
            (space, addr)
        }
    }

    fn read(&mut self, warp: u32, lane: usize, space: Space, addr: u64, size: u32, line: u32) -> R<u64> {
        let (space, addr) = Self::resolve(space, addr);
        match space {
            Space::Global | Space::Generic => {
                let (a, off) = self.gl_find(warp, lane, addr, size, line)?;
                Ok(a.load(off, size))
            }
            Space::Shared => self.sh_read(warp, lane, addr, size, line),
            Space::Local => {
                let o = self.local_off(warp, lane, addr, size, line)?;
                let mut b = [0u8; 8];
                b[..size as usize].copy_from_slice(&self.local[o..o + size as usize]);
                Ok(u64::from_le_bytes(b))
            }
            Space::Param => {
                let p = &self.l.params;
                if addr.checked_add(size as u64).is_none_or(|e| e > p.len() as u64) {
                    return Err(self.error(SimErrorKind::OutOfBounds, warp, lane, line, format!("out-of-bounds param access: {size} bytes at param offset {addr}, the kernel has {} bytes of parameters", p.len())));
                }
                let mut b = [0u8; 8];
                b[..size as usize].copy_from_slice(&p[addr as usize..(addr + size as u64) as usize]);
                Ok(u64::from_le_bytes(b))
            }
        }
    }

    fn write(&mut self, warp: u32, lane: usize, space: Space, addr: u64, size: u32, v: u64, line: u32) -> R<()> {
        let (space, addr) = Self::resolve(space, addr);
        match space {
            Space::Global | Space::Generic => {
                let (a, off) = self.gl_find(warp, lane, addr, size, line)?;
                a.store(off, size, v);
                Ok(())
            }
            Space::Shared => self.sh_write(warp, lane, addr, size, v, line),
            Space::Local => {
                let o = self.local_off(warp, lane, addr, size, line)?;
                self.local[o..o + size as usize].copy_from_slice(&v.to_le_bytes()[..size as usize]);
                Ok(())
            }
            Space::Param => Err(self.error(SimErrorKind::Other, warp, lane, line, "write to .param space".into())),
        }
    }

    #[inline]
    fn addr_of(w: &Warp, a: &Addr, lane: usize) -> u64 {
        let base = match a.base {
            Base::None => 0,
            Base::R32(r) => w.r32[r as usize][lane] as u64,
            Base::R64(r) => w.r64[r as usize][lane],
        };
        base.wrapping_add(a.off as u64)
    }

    // ------------------------------------------------------------ cp.async

    fn complete_group(&mut self, wi: usize, ops: Vec<CpOp>) -> R<()> {
        let wid = self.warps[wi].id;
        for op in ops {
            let off = op.dst as usize;
            for k in off..off + op.bytes as usize {
                self.shadow[k].w_tid &= !PENDING;
            }
            self.shadow_write(wid, op.lane as usize, off, op.bytes as usize, op.line)?;
            self.shared[off..off + op.bytes as usize].copy_from_slice(&op.data[..op.bytes as usize]);
        }
        Ok(())
    }

    fn finish_warp(&mut self, wi: usize) -> R<()> {
        if self.hop.is_some() {
            self.finish_warp_async(wi, 0)?;
        }
        let w = &mut self.warps[wi];
        w.done = true;
        let mut groups: Vec<Vec<CpOp>> = w.cp_groups.drain(..).collect();
        groups.push(std::mem::take(&mut w.cp_pending));
        for g in groups {
            self.complete_group(wi, g)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------ the async proxy (Hopper)

    /// An ordinary (generic-proxy) write of shared bytes `off..off + size` in
    /// a kernel with async-proxy state: remember the writer for the proxy
    /// fence check, and refuse writes into bytes an async read is using or
    /// into an mbarrier object.
    #[cold]
    fn hop_generic_write(&mut self, warp: u32, lane: usize, off: usize, size: usize, line: u32) -> R<()> {
        let Some(h) = self.hop.as_deref_mut() else { return Ok(()) };
        let t = (warp * 32 + lane as u32) as usize;
        let rec = (t as u32 + 1) | h.fences[t] << 11;
        h.gwrite[off..off + size].fill(rec);
        if let Some(c) = (off >> 4..=(off + size - 1) >> 4).find(|&c| h.aread[c] > 0) {
            return Err(self.error(
                SimErrorKind::AsyncCopyHazard,
                warp,
                lane,
                line,
                format!("write to shared address {:#x} while an in-flight wgmma or TMA store reads it (wait with wgmma.wait_group or cp.async.bulk.wait_group.read first)", (c << 4).max(off)),
            ));
        }
        if let Some(wd) = (off >> 3..=(off + size - 1) >> 3).find(|&wd| h.mbar_at[wd] != 0) {
            let il = h.mbar_at[wd];
            return Err(self.error(SimErrorKind::Mbarrier, warp, lane, line, format!("ordinary store to shared address {:#x} overwrites the mbarrier initialised at line {il}", wd << 3)));
        }
        Ok(())
    }

    /// An async-proxy read of shared byte `k` (wgmma operand, TMA store
    /// source): it must have landed, have been written, and any ordinary
    /// write to it must be followed by `fence.proxy.async` from its writer.
    fn async_read_ok(&self, k: usize, warp: u32, lane: usize, line: u32, what: &str) -> R<()> {
        let s = self.shadow[k];
        if s.w_tid & PENDING != 0 {
            return Err(self.error(SimErrorKind::AsyncCopyHazard, warp, lane, line, format!("{what} reads shared address {k:#x} before the copy into it has landed (wait on its mbarrier, or cp.async.wait_group, first)")));
        }
        if self.l.opts.initcheck && s.w_epoch == 0 {
            return Err(self.error(SimErrorKind::UninitializedRead, warp, lane, line, format!("{what} reads shared address {k:#x}, which nothing wrote")));
        }
        if let Some(h) = self.hop.as_deref() {
            let g = h.gwrite[k];
            if g != 0 {
                let t = (g & 0x7ff) as usize - 1;
                if h.fences[t] == g >> 11 {
                    return Err(self.error(
                        SimErrorKind::ProxyFence,
                        warp,
                        lane,
                        line,
                        format!("{what} reads shared address {k:#x}, written by {} with an ordinary store and no fence.proxy.async since (the async proxy may not see it)", self.thread_str(t as u16)),
                    ));
                }
            }
        }
        Ok(())
    }

    fn mbar_off(&self, warp: u32, lane: usize, addr: u64, line: u32) -> R<u32> {
        if !addr.is_multiple_of(8) {
            return Err(self.misaligned(warp, lane, line, "mbarrier", addr, 8));
        }
        Ok(self.sh_check(warp, lane, addr, 8, line)? as u32)
    }

    fn mbar_err(&self, warp: u32, lane: usize, line: u32, msg: String) -> Box<SimError> {
        self.error(SimErrorKind::Mbarrier, warp, lane, line, msg)
    }

    /// A completed mbarrier phase orders the threads it synchronises, so the
    /// race checker starts a new interval (as at a `bar.sync`).
    fn phase_completed(&mut self) {
        self.epoch += 1;
    }

    /// Land the TMA loads in flight on mbarrier `mbar` (every one if `None`), in issue order.
    fn land(&mut self, mbar: Option<u32>) -> R<bool> {
        let Some(h) = self.hop.as_deref_mut() else { return Ok(false) };
        if h.tma.is_empty() {
            return Ok(false);
        }
        let (now, keep): (Vec<TmaOp>, Vec<TmaOp>) = std::mem::take(&mut h.tma).into_iter().partition(|o| mbar.is_none_or(|m| o.mbar == m));
        h.tma = keep;
        let landed = !now.is_empty();
        for op in now {
            for (pos, &v) in op.data.iter().enumerate() {
                let a = op.swz.apply(op.dst + pos as u32) as usize;
                self.shared[a] = v;
                let sh = &mut self.shadow[a];
                sh.w_tid = (op.warp * 32 + op.lane as u32) as u16;
                // written by the async proxy before the waiting thread's interval: never a race
                sh.w_epoch = 1;
                sh.w_line = op.line;
            }
            let h = self.hop.as_deref_mut().unwrap_or_else(|| unreachable!());
            for a in op.dst..op.dst + op.data.len() as u32 {
                h.gwrite[op.swz.apply(a) as usize] = 0;
            }
            let done = match h.mbars.get_mut(&op.mbar) {
                Some(m) => m.complete_tx(op.data.len() as u64),
                None => Err(format!("the TMA load of line {} completes on shared address {:#x}, which no longer holds an mbarrier", op.line, op.mbar)),
            };
            match done {
                Ok(true) => self.phase_completed(),
                Ok(false) => {}
                Err(msg) => return Err(self.mbar_err(op.warp, op.lane as usize, op.line, msg)),
            }
        }
        Ok(landed)
    }

    fn land_all(&mut self) -> R<bool> {
        self.land(None)
    }

    /// Wake warps whose mbarrier moved on, and pass warpgroup rendezvous
    /// where all four warps arrived at the same instruction.
    fn resolve_async(&mut self) -> R<bool> {
        let mut progress = false;
        for wi in 0..self.warps.len() {
            if let Some(Susp::Mbar { off, phase, .. }) = self.warps[wi].susp {
                let moved = |s: &Self| s.hop.as_deref().and_then(|h| h.mbars.get(&off)).is_none_or(|m| m.phase != phase);
                if !moved(self) {
                    self.land(Some(off))?;
                }
                if moved(self) {
                    self.warps[wi].susp = None;
                    progress = true;
                }
            }
        }
        let groups = self.warps.len().div_ceil(4);
        for g in 0..groups {
            let ws = &self.warps[4 * g..(4 * g + 4).min(self.warps.len())];
            if ws.len() < 4 {
                if let Some(w) = ws.iter().find(|w| matches!(w.susp, Some(Susp::Group { .. }))) {
                    let line = match w.susp {
                        Some(Susp::Group { line, .. }) => line,
                        _ => 0,
                    };
                    return Err(self.error(SimErrorKind::WarpDivergence, w.id, 0, line, format!("wgmma needs whole warpgroups: warpgroup {g} has {} warps (the block has {} threads, not a multiple of 128)", ws.len(), self.nthreads)));
                }
                continue;
            }
            let pcs: Vec<Option<(u32, u32)>> = ws.iter().map(|w| match w.susp {
                Some(Susp::Group { pc, line }) => Some((pc, line)),
                _ => None,
            }).collect();
            if pcs.iter().all(|p| p.is_none()) {
                continue;
            }
            if let Some(i) = ws.iter().position(|w| w.done) {
                let (pc, line) = pcs.iter().flatten().next().copied().unwrap_or((0, 0));
                let _ = pc;
                return Err(self.error(SimErrorKind::WarpDivergence, ws[i].id, 0, line, format!("warpgroup divergence: the wgmma at line {line} needs all four warps of warpgroup {g}, but warp {} has exited", ws[i].id)));
            }
            if pcs.iter().all(|p| p.is_some()) {
                let (pc0, l0) = pcs[0].unwrap_or((0, 0));
                if let Some((_, l)) = pcs.iter().flatten().find(|(pc, _)| *pc != pc0) {
                    return Err(self.error(SimErrorKind::WarpDivergence, ws[0].id, 0, l0, format!("warpgroup divergence: warps of warpgroup {g} wait at different wgmma instructions (lines {l0} and {l})")));
                }
                for w in &mut self.warps[4 * g..4 * g + 4] {
                    w.susp = None;
                    w.pass = Some(pc0);
                }
                progress = true;
            }
        }
        Ok(progress)
    }

    /// End of a block: nothing of the async proxy may still be in flight.
    fn finish_block(&mut self) -> R<()> {
        if let Some(h) = self.hop.as_deref() {
            if let Some(op) = h.tma.first() {
                return Err(self.error(SimErrorKind::AsyncCopyHazard, op.warp, op.lane as usize, op.line, format!("the block finished with the TMA load of line {} still in flight: no thread waited on its mbarrier (shared {:#x})", op.line, op.mbar)));
            }
        }
        Ok(())
    }

    /// Checks when warp `wi` finishes: no wgmma or TMA store of its own in flight.
    fn finish_warp_async(&self, wi: usize, line: u32) -> R<()> {
        let w = &self.warps[wi];
        if let Some(g) = w.wg.as_deref() {
            if !g.open.is_empty() || !g.groups.is_empty() {
                return Err(self.error(SimErrorKind::WgmmaHazard, w.id, 0, line, "the warp exits with wgmma in flight (no wgmma.wait_group for its last group)".into()));
            }
        }
        if !w.bulk_open.is_empty() || !w.bulk_groups.is_empty() {
            return Err(self.error(SimErrorKind::AsyncCopyHazard, w.id, 0, line, "the warp exits while its TMA store still reads shared memory (cp.async.bulk.commit_group and cp.async.bulk.wait_group.read 0 first)".into()));
        }
        Ok(())
    }

    /// For kernels with wgmma: an ordinary instruction must not touch a
    /// register an in-flight wgmma owns; remember what it touched for the
    /// `wgmma.fence` check.
    #[inline]
    fn wg_reg_check(&mut self, wi: usize, inst: &Inst, line: u32) -> R<()> {
        let w = &mut self.warps[wi];
        let Some(g) = w.wg.as_deref_mut() else { return Ok(()) };
        let mut bad = None;
        inst.regs32(&mut |r| {
            let r = r as usize;
            if g.busy[r] > 0 && bad.is_none() {
                bad = Some(r);
            }
            g.touched[r] = true;
        });
        if let Some(r) = bad {
            let wid = w.id;
            return Err(self.error(SimErrorKind::WgmmaHazard, wid, 0, line, format!("register #{r} (a wgmma accumulator or A fragment) is accessed before the wgmma.wait_group that completes its wgmma")));
        }
        Ok(())
    }

    /// Complete all but the `keep` newest wgmma groups of warp `wi`.
    fn wg_complete(&mut self, wi: usize, keep: usize) {
        let mut done_chunks = Vec::new();
        {
            let w = &mut self.warps[wi];
            let Some(g) = w.wg.as_deref_mut() else { return };
            while g.groups.len() > keep {
                let ops = g.groups.pop_front().unwrap_or_default();
                for op in ops {
                    for (r, v) in &op.out {
                        w.r32[*r as usize] = *v;
                        g.busy[*r as usize] -= 1;
                    }
                    for r in &op.aregs {
                        g.busy[*r as usize] -= 1;
                    }
                    done_chunks.extend(op.chunks);
                }
            }
        }
        if let Some(h) = self.hop.as_deref_mut() {
            for c in done_chunks {
                h.aread[c as usize] -= 1;
            }
        }
    }

    /// The newest value of register `r` for a wgmma reading its accumulator:
    /// an earlier in-flight wgmma's result if one writes it.
    fn wg_current(w: &Warp, r: u32) -> [u32; 32] {
        if let Some(g) = w.wg.as_deref() {
            for op in g.open.iter().rev().chain(g.groups.iter().rev().flat_map(|x| x.iter().rev())) {
                if let Some((_, v)) = op.out.iter().find(|(x, _)| *x == r) {
                    return *v;
                }
            }
        }
        w.r32[r as usize]
    }

    /// One warp's part of `wgmma.mma_async` (rows 16q..16q+15 of the 64-row
    /// tile, q the warp's index in its warpgroup): read the operands now,
    /// compute, and keep the result in flight until its wait_group.
    fn exec_wgmma(&mut self, wi: usize, inst: &Inst, line: u32) -> R<()> {
        let Inst::Wgmma { n, bf, d, a, b, scale_d, neg_a, neg_b, trans_a, trans_b } = inst else { return Ok(()) };
        let (n, wid) = (*n as usize, self.warps[wi].id);
        let q = (wid % 4) as usize;
        let w = &self.warps[wi];
        let uniform64 = |r: u32, what: &str| -> R<u64> {
            let v = w.r64[r as usize];
            if v.iter().any(|&x| x != v[0]) {
                return Err(self.error(SimErrorKind::WarpDivergence, wid, 0, line, format!("wgmma: the {what} descriptor differs between lanes of the warp")));
            }
            Ok(v[0])
        };
        let bdesc = MatDesc::decode(uniform64(*b, "B")?);
        let adesc = match a {
            WgA::Desc(r) => Some(MatDesc::decode(uniform64(*r, "A")?)),
            WgA::Regs(_) => None,
        };
        for dsc in adesc.iter().chain(std::iter::once(&bdesc)) {
            if dsc.base_offset != 0 {
                return Err(self.error(SimErrorKind::Other, wid, 0, line, "wgmma: matrix descriptors with a non-zero base offset are not supported by the simulator".into()));
            }
        }
        let g = w.wg.as_deref().unwrap_or_else(|| unreachable!());
        let used: Vec<u32> = d.iter().copied().chain(match a {
            WgA::Regs(r) => r.to_vec(),
            WgA::Desc(_) => vec![],
        }).collect();
        if let Some(r) = used.iter().find(|&&r| g.touched[r as usize]) {
            return Err(self.error(SimErrorKind::WgmmaHazard, wid, 0, line, format!("wgmma uses register #{r}, which an ordinary instruction accessed since the last wgmma.fence (wgmma.fence.sync.aligned must separate them)")));
        }
        let half = |x: u16| if *bf { f32::from_bits((x as u32) << 16) as f64 } else { num::f16_to_f32(x) as f64 };
        // operands: A rows 16q.., B all n rows, as f64
        let mut chunks: Vec<u32> = Vec::new();
        let mut am = [[0f64; 16]; 16];
        let mut bm = vec![[0f64; 16]; n];
        let mut read16 = |s: &mut Self, addr: u32, what: &str| -> R<u16> {
            let k = s.sh_check(wid, 0, addr as u64, 2, line)?;
            if !addr.is_multiple_of(2) {
                return Err(s.misaligned(wid, 0, line, "wgmma operand", addr as u64, 2));
            }
            s.async_read_ok(k, wid, 0, line, what)?;
            s.async_read_ok(k + 1, wid, 0, line, what)?;
            chunks.push(addr >> 4);
            Ok(u16::from_le_bytes([s.shared[k], s.shared[k + 1]]))
        };
        match (a, adesc) {
            (_, Some(ad)) => {
                for (r, row) in am.iter_mut().enumerate() {
                    for (k, v) in row.iter_mut().enumerate() {
                        *v = half(read16(self, ad.addr16((16 * q + r) as u32, k as u32, *trans_a), "wgmma (A operand)")?);
                    }
                }
            }
            (WgA::Regs(ar), None) => {
                let w = &self.warps[wi];
                for (r, row) in am.iter_mut().enumerate() {
                    for (k, v) in row.iter_mut().enumerate() {
                        let lane = (r % 8) * 4 + (k % 8) / 2;
                        let word = w.r32[ar[r / 8 + 2 * (k / 8)] as usize][lane];
                        *v = half((word >> (16 * (k % 2))) as u16);
                    }
                }
            }
            _ => unreachable!(),
        }
        for (c, row) in bm.iter_mut().enumerate() {
            for (k, v) in row.iter_mut().enumerate() {
                *v = half(read16(self, bdesc.addr16(c as u32, k as u32, *trans_b), "wgmma (B operand)")?);
            }
        }
        let sa = if *neg_a { -1.0 } else { 1.0 };
        let sb = if *neg_b { -1.0 } else { 1.0 };
        let w = &self.warps[wi];
        let sd = w.p[scale_d.0 as usize];
        let mut out: Vec<(u32, [u32; 32])> = Vec::with_capacity(n / 2);
        for (i, &reg) in d.iter().enumerate() {
            let cur = Self::wg_current(w, reg);
            let mut v = [0u32; 32];
            for l in 0..32 {
                let row = l / 4 + 8 * ((i / 2) % 2);
                let col = (i / 4) * 8 + (l % 4) * 2 + (i % 2);
                let scale = (sd >> l & 1 == 1) != scale_d.1;
                let mut acc = if scale { f32::from_bits(cur[l]) as f64 } else { 0.0 };
                for k in 0..16 {
                    acc += sa * am[row][k] * sb * bm[col][k];
                }
                v[l] = (acc as f32).to_bits();
            }
            out.push((reg, v));
        }
        chunks.sort_unstable();
        chunks.dedup();
        let h = self.hop.as_deref_mut().unwrap_or_else(|| unreachable!());
        for &c in &chunks {
            h.aread[c as usize] += 1;
        }
        let aregs = match a {
            WgA::Regs(r) => r.to_vec(),
            WgA::Desc(_) => vec![],
        };
        let g = self.warps[wi].wg.as_deref_mut().unwrap_or_else(|| unreachable!());
        for r in d.iter().chain(&aregs) {
            g.busy[*r as usize] += 1;
        }
        g.open.push(WgOp { out, aregs, chunks });
        Ok(())
    }

    /// `cp.async.bulk.tensor` load by lane `l`: read the box now, put it in flight.
    /// The tensor map lane `l` names: a generic address of a kernel
    /// parameter (`cvta.param`) or of global memory.
    fn tensor_map(&mut self, wi: usize, l: usize, map: u32, line: u32) -> R<crate::device::TensorMap> {
        let wid = self.warps[wi].id;
        let a = self.warps[wi].r64[map as usize][l];
        let mut bytes = [0u8; TMAP_BYTES];
        if !a.is_multiple_of(64) {
            return Err(self.misaligned(wid, l, line, "tensor map", a, 64));
        }
        match Self::generic(a) {
            (Space::Param, off) => {
                let p = &self.l.params;
                if off + TMAP_BYTES as u64 > p.len() as u64 {
                    return Err(self.error(SimErrorKind::OutOfBounds, wid, l, line, format!("tensor map at param offset {off} runs past the {} bytes of parameters", p.len())));
                }
                bytes.copy_from_slice(&p[off as usize..off as usize + TMAP_BYTES]);
            }
            (Space::Global, g) => {
                let (al, o) = self.gl_find(wid, l, g, TMAP_BYTES as u32, line)?;
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = al.load(o + i as u64, 1) as u8;
                }
            }
            _ => return Err(self.error(SimErrorKind::Other, wid, l, line, format!("tensor map address {a:#x} is not a parameter or global address"))),
        }
        decode_tmap(&bytes).map_err(|m| self.error(SimErrorKind::Other, wid, l, line, m))
    }

    /// The counters' record of a TMA copy's global bytes (contiguous runs of the box).
    fn count_tma(&mut self, pc: u32, t: &crate::device::TensorMap, coords: &[i64], write: bool) {
        let es = t.dtype.bytes() as u64;
        let mut runs: Vec<(u64, u32)> = Vec::new();
        box_elements(t, coords, |_, g| {
            if let Some(g) = g {
                let a = t.addr + g;
                match runs.last_mut() {
                    Some((s, n)) if *s + *n as u64 == a => *n += es as u32,
                    _ => runs.push((a, es as u32)),
                }
            }
        });
        if let Some(c) = self.counters.as_deref_mut() {
            c.global(pc as usize, &runs, write, false);
        }
    }

    /// Lane `l`'s tensor map and box coordinates of a TMA copy (counted when
    /// the counters are on: `write` for a store).
    fn tma_box(&mut self, wi: usize, l: usize, map: u32, coords: &[u32], line: u32, pc: u32, write: bool) -> R<(crate::device::TensorMap, Vec<i64>)> {
        let wid = self.warps[wi].id;
        let t = self.tensor_map(wi, l, map, line)?;
        if coords.len() != t.rank as usize {
            return Err(self.error(SimErrorKind::Other, wid, l, line, format!("a {}d copy through a rank-{} tensor map", coords.len(), t.rank)));
        }
        let w = &self.warps[wi];
        let c: Vec<i64> = coords.iter().map(|&r| w.r32[r as usize][l] as i32 as i64).collect();
        if self.counters.is_some() {
            self.count_tma(pc, &t, &c, write);
        }
        Ok((t, c))
    }

    fn exec_tma_load(&mut self, wi: usize, l: usize, dst: &Addr, map: u32, coords: &[u32], mbar: &Addr, line: u32, pc: u32) -> R<()> {
        let wid = self.warps[wi].id;
        let (t, c) = self.tma_box(wi, l, map, coords, line, pc, false)?;
        let w = &self.warps[wi];
        let da = Self::addr_of(w, dst, l);
        let ma = Self::addr_of(w, mbar, l);
        if da % 128 != 0 {
            return Err(self.misaligned(wid, l, line, "TMA shared destination", da, 128));
        }
        let bytes = t.box_bytes();
        self.sh_check(wid, l, da, bytes as u32, line)?;
        let moff = self.mbar_off(wid, l, ma, line)?;
        if !self.hop.as_deref().is_some_and(|h| h.mbars.contains_key(&moff)) {
            return Err(self.mbar_err(wid, l, line, format!("the TMA load completes on shared address {moff:#x}, which holds no initialised mbarrier")));
        }
        let es = t.dtype.bytes() as u64;
        let mut data = vec![0u8; bytes as usize];
        let mut oob = None;
        let mem = self.l.mem;
        box_elements(&t, &c, |pos, g| {
            if let Some(g) = g {
                let ga = t.addr + g;
                match mem.find(ga, es, &mut self.hint) {
                    Some((a, o)) => {
                        for b in 0..es {
                            data[(pos * es + b) as usize] = a.load(o + b, 1) as u8;
                        }
                    }
                    None => oob = oob.or(Some(ga)),
                }
            }
        });
        if let Some(ga) = oob {
            return Err(self.error(SimErrorKind::OutOfBounds, wid, l, line, format!("TMA load reads global address {ga:#x} outside every allocation ({}): the tensor map's dims or strides overrun its buffer", mem.describe(ga))));
        }
        let da = da as u32;
        for a in da..da + bytes as u32 {
            let k = t.swizzle.apply(a) as usize;
            if k >= self.shared.len() {
                return Err(self.error(SimErrorKind::OutOfBounds, wid, l, line, format!("swizzled TMA destination {k:#x} is past the block's shared memory")));
            }
            if self.shadow[k].w_tid & PENDING != 0 {
                return Err(self.error(SimErrorKind::AsyncCopyHazard, wid, l, line, format!("TMA load into shared address {k:#x}, which another copy in flight also writes")));
            }
            let h = self.hop.as_deref().unwrap_or_else(|| unreachable!());
            if h.aread[k >> 4] > 0 {
                return Err(self.error(SimErrorKind::AsyncCopyHazard, wid, l, line, format!("TMA load overwrites shared address {k:#x} while an in-flight wgmma or TMA store reads it")));
            }
            let g = h.gwrite[k];
            if g != 0 && h.fences[(g & 0x7ff) as usize - 1] == g >> 11 {
                return Err(self.error(SimErrorKind::ProxyFence, wid, l, line, format!("TMA load overwrites shared address {k:#x}, written by {} with an ordinary store and no fence.proxy.async since", self.thread_str(((g & 0x7ff) - 1) as u16))));
            }
            self.shadow[k].w_tid |= PENDING;
        }
        let h = self.hop.as_deref_mut().unwrap_or_else(|| unreachable!());
        h.tma.push(TmaOp { mbar: moff, dst: da, swz: t.swizzle, data, line, warp: wid, lane: l as u8 });
        Ok(())
    }

    /// `cp.async.bulk.tensor` store by lane `l`: read the shared box through
    /// the async proxy, write the elements inside the tensor.
    fn exec_tma_store(&mut self, wi: usize, l: usize, map: u32, coords: &[u32], src: &Addr, line: u32, pc: u32) -> R<()> {
        let wid = self.warps[wi].id;
        let (t, c) = self.tma_box(wi, l, map, coords, line, pc, true)?;
        let sa = Self::addr_of(&self.warps[wi], src, l);
        if sa % 128 != 0 {
            return Err(self.misaligned(wid, l, line, "TMA shared source", sa, 128));
        }
        let bytes = t.box_bytes();
        self.sh_check(wid, l, sa, bytes as u32, line)?;
        let sa = sa as u32;
        let mut chunks = Vec::new();
        for a in sa..sa + bytes as u32 {
            let k = t.swizzle.apply(a) as usize;
            if k >= self.shared.len() {
                return Err(self.error(SimErrorKind::OutOfBounds, wid, l, line, format!("swizzled TMA source {k:#x} is past the block's shared memory")));
            }
            self.async_read_ok(k, wid, l, line, "TMA store")?;
            chunks.push((k >> 4) as u32);
        }
        let es = t.dtype.bytes() as u64;
        let mut err = None;
        let mem = self.l.mem;
        let shared = &self.shared;
        box_elements(&t, &c, |pos, g| {
            if let Some(g) = g {
                let ga = t.addr + g;
                match mem.find(ga, es, &mut self.hint) {
                    Some((a, o)) => {
                        for b in 0..es {
                            let k = t.swizzle.apply(sa + (pos * es + b) as u32) as usize;
                            a.store(o + b, 1, shared[k] as u64);
                        }
                    }
                    None => err = err.or(Some(ga)),
                }
            }
        });
        if let Some(ga) = err {
            return Err(self.error(SimErrorKind::OutOfBounds, wid, l, line, format!("TMA store writes global address {ga:#x} outside every allocation ({})", mem.describe(ga))));
        }
        chunks.sort_unstable();
        chunks.dedup();
        let h = self.hop.as_deref_mut().unwrap_or_else(|| unreachable!());
        for &ch in &chunks {
            h.aread[ch as usize] += 1;
        }
        self.warps[wi].bulk_open.extend(chunks);
        Ok(())
    }

    /// `cp.reduce.async.bulk...add.f32` by lane `l`: read `bytes` of shared
    /// memory through the async proxy (in flight until the bulk group's
    /// wait) and add them, as f32, into global memory (atomically: other
    /// blocks may add to the same elements).
    #[allow(clippy::too_many_arguments)]
    fn exec_bulk_reduce(&mut self, wi: usize, l: usize, dst: &Addr, src: &Addr, bytes: u32, line: u32, pc: u32) -> R<()> {
        let wid = self.warps[wi].id;
        let w = &self.warps[wi];
        let (ga, sa, n) = (Self::addr_of(w, dst, l), Self::addr_of(w, src, l), w.r32[bytes as usize][l]);
        if sa % 16 != 0 {
            return Err(self.misaligned(wid, l, line, "bulk reduce shared source", sa, 16));
        }
        if ga % 16 != 0 {
            return Err(self.misaligned(wid, l, line, "bulk reduce global destination", ga, 16));
        }
        if n % 16 != 0 {
            return Err(self.error(SimErrorKind::Other, wid, l, line, format!("bulk reduce of {n} bytes (must be a multiple of 16)")));
        }
        if n == 0 {
            return Ok(());
        }
        let k0 = self.sh_check(wid, l, sa, n, line)?;
        for k in k0..k0 + n as usize {
            self.async_read_ok(k, wid, l, line, "bulk reduce")?;
        }
        let (a, o) = self.gl_find(wid, l, ga, n, line)?;
        for e in 0..(n / 4) as usize {
            let k = k0 + 4 * e;
            let x = f32::from_le_bytes([self.shared[k], self.shared[k + 1], self.shared[k + 2], self.shared[k + 3]]);
            let off = o + 4 * e as u64;
            let y = f32::from_bits(a.load(off, 4) as u32) + x;
            a.store(off, 4, y.to_bits() as u64);
        }
        if let Some(c) = self.counters.as_deref_mut() {
            c.global(pc as usize, &[(ga, n)], true, true);
        }
        let chunks: Vec<u32> = (k0 as u32 >> 4..(k0 as u32 + n) >> 4).collect();
        let h = self.hop.as_deref_mut().unwrap_or_else(|| unreachable!());
        for &ch in &chunks {
            h.aread[ch as usize] += 1;
        }
        self.warps[wi].bulk_open.extend(chunks);
        Ok(())
    }

    // ------------------------------------------------------------ the warp loop

    fn run_warp(&mut self, wi: usize) -> R<()> {
        let k: &'a Kernel = self.l.k;
        let max_steps = self.l.opts.max_warp_steps;
        loop {
            let w = &mut self.warps[wi];
            let Some(top) = w.stack.last().copied() else {
                return self.finish_warp(wi);
            };
            if top.pc == top.rpc || top.mask == 0 {
                w.stack.pop();
                continue;
            }
            let pc = top.pc;
            let mask = top.mask;
            let di = &k.insts[pc as usize];
            let em = if di.guard == NO_GUARD {
                mask
            } else {
                let p = w.p[di.guard as usize];
                mask & if di.guard_neg { !p } else { p }
            };
            if k.wgmma && em != 0 && di.inst.is_warpgroup() {
                // the warpgroup's four warps meet here before any executes it
                if w.pass != Some(pc) {
                    w.susp = Some(Susp::Group { pc, line: di.line });
                    return Ok(());
                }
                w.pass = None;
            }
            self.thread_insts += mask.count_ones() as u64;
            self.warp_insts += 1;
            self.steps += 1;
            if let Some(c) = self.counters.as_deref_mut() {
                let p = &mut c.pcs[pc as usize];
                p.warp_insts += 1;
                p.lanes += em.count_ones() as u64;
            }
            if self.steps > max_steps {
                let wid = w.id;
                return Err(self.error(SimErrorKind::StepLimit, wid, mask.trailing_zeros() as usize, di.line, format!("the block exceeded the step limit of {max_steps} warp instructions (an infinite loop?)")));
            }
            let mut next = pc + 1;
            if em == 0 && !matches!(di.inst, Inst::Bra { .. }) {
                w.stack.last_mut().unwrap_or_else(|| unreachable!()).pc = next;
                continue;
            }
            let line = di.line;
            let wid = w.id;
            if k.wgmma && !di.inst.is_warpgroup() {
                self.wg_reg_check(wi, &di.inst, line)?;
            }
            let w = &mut self.warps[wi];
            match &di.inst {
                Inst::I32 { op, d, a, b, w16 } => {
                    let (av, bv) = (w.r32[*a as usize], w.r32[*b as usize]);
                    let dv = &mut w.r32[*d as usize];
                    exec_i32(*op, em, dv, &av, &bv);
                    if *w16 {
                        each!(em, |l| dv[l] &= 0xffff);
                    }
                }
                Inst::I64 { op, d, a, b } => {
                    let (av, bv) = (w.r64[*a as usize], w.r64[*b as usize]);
                    let dv = &mut w.r64[*d as usize];
                    exec_i64(*op, em, dv, &av, &bv);
                }
                Inst::Sh64 { op, d, a, b } => {
                    let (av, bv) = (w.r64[*a as usize], w.r32[*b as usize]);
                    let dv = &mut w.r64[*d as usize];
                    match op {
                        IOp::Shl => each!(em, |l| dv[l] = if bv[l] >= 64 { 0 } else { av[l] << bv[l] }),
                        IOp::ShrU => each!(em, |l| dv[l] = if bv[l] >= 64 { 0 } else { av[l] >> bv[l] }),
                        _ => each!(em, |l| dv[l] = ((av[l] as i64) >> bv[l].min(63)) as u64),
                    }
                }
                Inst::IU32 { op, d, a } => {
                    let av = w.r32[*a as usize];
                    exec_iu32(*op, em, &mut w.r32[*d as usize], &av);
                }
                Inst::IU64 { op, d, a } => {
                    let av = w.r64[*a as usize];
                    exec_iu64(*op, em, &mut w.r64[*d as usize], &av);
                }
                Inst::Mad32 { hi, d, a, b, c } => {
                    let (av, bv, cv) = (w.r32[*a as usize], w.r32[*b as usize], w.r32[*c as usize]);
                    let dv = &mut w.r32[*d as usize];
                    match hi {
                        None => each!(em, |l| dv[l] = av[l].wrapping_mul(bv[l]).wrapping_add(cv[l])),
                        Some(false) => each!(em, |l| dv[l] = (((av[l] as u64 * bv[l] as u64) >> 32) as u32).wrapping_add(cv[l])),
                        Some(true) => each!(em, |l| dv[l] = ((((av[l] as i32 as i64) * (bv[l] as i32 as i64)) >> 32) as u32).wrapping_add(cv[l])),
                    }
                }
                Inst::Mad64 { d, a, b, c } => {
                    let (av, bv, cv) = (w.r64[*a as usize], w.r64[*b as usize], w.r64[*c as usize]);
                    let dv = &mut w.r64[*d as usize];
                    each!(em, |l| dv[l] = av[l].wrapping_mul(bv[l]).wrapping_add(cv[l]));
                }
                Inst::MulWide { signed, d, a, b, c } => {
                    let (av, bv) = (w.r32[*a as usize], w.r32[*b as usize]);
                    let cv = match c {
                        Some(c) => w.r64[*c as usize],
                        None => [0; 32],
                    };
                    let dv = &mut w.r64[*d as usize];
                    if *signed {
                        each!(em, |l| dv[l] = ((av[l] as i32 as i64).wrapping_mul(bv[l] as i32 as i64) as u64).wrapping_add(cv[l]));
                    } else {
                        each!(em, |l| dv[l] = (av[l] as u64 * bv[l] as u64).wrapping_add(cv[l]));
                    }
                }
                Inst::MulWide16 { signed, d, a, b } => {
                    let (av, bv) = (w.r32[*a as usize], w.r32[*b as usize]);
                    let dv = &mut w.r32[*d as usize];
                    if *signed {
                        each!(em, |l| dv[l] = ((av[l] as u16 as i16 as i32) * (bv[l] as u16 as i16 as i32)) as u32);
                    } else {
                        each!(em, |l| dv[l] = (av[l] & 0xffff) * (bv[l] & 0xffff));
                    }
                }
                Inst::F32 { op, d, a, b, fl } => {
                    let (mut av, mut bv) = (w.r32[*a as usize], w.r32[*b as usize]);
                    if fl & FTZ != 0 {
                        each!(em, |l| {
                            av[l] = num::ftz32(f(av[l])).to_bits();
                            bv[l] = num::ftz32(f(bv[l])).to_bits()
                        });
                    }
                    let dv = &mut w.r32[*d as usize];
                    float_bin!(*op, em, dv, av, bv, f, fmin, fmax);
                    post_f32(dv, em, *fl);
                }
                Inst::Fma32 { d, a, b, c, fl } => {
                    let (mut av, mut bv, mut cv) = (w.r32[*a as usize], w.r32[*b as usize], w.r32[*c as usize]);
                    if fl & FTZ != 0 {
                        each!(em, |l| {
                            av[l] = num::ftz32(f(av[l])).to_bits();
                            bv[l] = num::ftz32(f(bv[l])).to_bits();
                            cv[l] = num::ftz32(f(cv[l])).to_bits()
                        });
                    }
                    let dv = &mut w.r32[*d as usize];
                    each!(em, |l| dv[l] = f(av[l]).mul_add(f(bv[l]), f(cv[l])).to_bits());
                    post_f32(dv, em, *fl);
                }
                Inst::FU32 { op, d, a, fl } => {
                    let mut av = w.r32[*a as usize];
                    if fl & FTZ != 0 {
                        each!(em, |l| av[l] = num::ftz32(f(av[l])).to_bits());
                    }
                    let dv = &mut w.r32[*d as usize];
                    match op {
                        FUop::Neg => each!(em, |l| dv[l] = av[l] ^ 0x8000_0000),
                        FUop::Abs => each!(em, |l| dv[l] = av[l] & 0x7fff_ffff),
                        FUop::Rcp => each!(em, |l| dv[l] = (1.0 / f(av[l])).to_bits()),
                        FUop::Sqrt => each!(em, |l| dv[l] = f(av[l]).sqrt().to_bits()),
                        FUop::Rsqrt => each!(em, |l| dv[l] = ((1.0 / (f(av[l]) as f64).sqrt()) as f32).to_bits()),
                        FUop::Ex2 => each!(em, |l| dv[l] = ((f(av[l]) as f64).exp2() as f32).to_bits()),
                        FUop::Lg2 => each!(em, |l| dv[l] = ((f(av[l]) as f64).log2() as f32).to_bits()),
                        FUop::Tanh => each!(em, |l| dv[l] = ((f(av[l]) as f64).tanh() as f32).to_bits()),
                        FUop::Sin => each!(em, |l| dv[l] = ((f(av[l]) as f64).sin() as f32).to_bits()),
                        FUop::Cos => each!(em, |l| dv[l] = ((f(av[l]) as f64).cos() as f32).to_bits()),
                    }
                    post_f32(dv, em, *fl);
                }
                Inst::F64 { op, d, a, b } => {
                    let (av, bv) = (w.r64[*a as usize], w.r64[*b as usize]);
                    let dv = &mut w.r64[*d as usize];
                    float_bin!(*op, em, dv, av, bv, fd, f64::min, f64::max);
                }
                Inst::Fma64 { d, a, b, c } => {
                    let (av, bv, cv) = (w.r64[*a as usize], w.r64[*b as usize], w.r64[*c as usize]);
                    let dv = &mut w.r64[*d as usize];
                    each!(em, |l| dv[l] = fd(av[l]).mul_add(fd(bv[l]), fd(cv[l])).to_bits());
                }
                Inst::FU64 { op, d, a } => {
                    let av = w.r64[*a as usize];
                    let dv = &mut w.r64[*d as usize];
                    match op {
                        FUop::Neg => each!(em, |l| dv[l] = av[l] ^ (1 << 63)),
                        FUop::Abs => each!(em, |l| dv[l] = av[l] & !(1 << 63)),
                        FUop::Rcp => each!(em, |l| dv[l] = (1.0 / fd(av[l])).to_bits()),
                        FUop::Sqrt => each!(em, |l| dv[l] = fd(av[l]).sqrt().to_bits()),
                        FUop::Rsqrt => each!(em, |l| dv[l] = (1.0 / fd(av[l]).sqrt()).to_bits()),
                        _ => {}
                    }
                }
                Inst::Half { op, bf, x2, d, a, b, c } => {
                    let (av, bv, cv) = (w.r32[*a as usize], w.r32[*b as usize], w.r32[*c as usize]);
                    let dv = &mut w.r32[*d as usize];
                    let n = if *x2 { 2 } else { 1 };
                    each!(em, |l| {
                        let mut r = 0u32;
                        for h in 0..n {
                            let sh = 16 * h;
                            let (x, y, z) = ((av[l] >> sh) as u16, (bv[l] >> sh) as u16, (cv[l] >> sh) as u16);
                            r |= (half_op(*op, *bf, x, y, z) as u32) << sh;
                        }
                        dv[l] = r
                    });
                }
                Inst::Setp { cmp, ty, d, dn, a, b, comb } => {
                    let mut res = 0u32;
                    match (a, b) {
                        (Reg::R32(a), Reg::R32(b)) => {
                            let (av, bv) = (&w.r32[*a as usize], &w.r32[*b as usize]);
                            match ty {
                                Ty::F32 => each!(em, |l| res |= (cmp_f(*cmp, f(av[l]) as f64, f(bv[l]) as f64) as u32) << l),
                                Ty::S32 => each!(em, |l| res |= (cmp_i(*cmp, av[l] as i32 as i64, bv[l] as i32 as i64) as u32) << l),
                                Ty::S16 => each!(em, |l| res |= (cmp_i(*cmp, av[l] as u16 as i16 as i64, bv[l] as u16 as i16 as i64) as u32) << l),
                                Ty::U16 | Ty::B16 => each!(em, |l| res |= (cmp_u(*cmp, (av[l] & 0xffff) as u64, (bv[l] & 0xffff) as u64) as u32) << l),
                                _ => each!(em, |l| res |= (cmp_u(*cmp, av[l] as u64, bv[l] as u64) as u32) << l),
                            }
                        }
                        (Reg::R64(a), Reg::R64(b)) => {
                            let (av, bv) = (&w.r64[*a as usize], &w.r64[*b as usize]);
                            match ty {
                                Ty::F64 => each!(em, |l| res |= (cmp_f(*cmp, fd(av[l]), fd(bv[l])) as u32) << l),
                                Ty::S64 => each!(em, |l| res |= (cmp_i(*cmp, av[l] as i64, bv[l] as i64) as u32) << l),
                                _ => each!(em, |l| res |= (cmp_u(*cmp, av[l], bv[l]) as u32) << l),
                            }
                        }
                        _ => {}
                    }
                    let (r1, r2) = match comb {
                        None => (res, !res),
                        Some((op, c, cn)) => {
                            let cv = if *cn { !w.p[*c as usize] } else { w.p[*c as usize] };
                            match op {
                                BoolOp::And => (res & cv, !res & cv),
                                BoolOp::Or => (res | cv, !res | cv),
                                BoolOp::Xor => (res ^ cv, !res ^ cv),
                            }
                        }
                    };
                    let pd = &mut w.p[*d as usize];
                    *pd = (*pd & !em) | (r1 & em);
                    if let Some(q) = dn {
                        let pq = &mut w.p[*q as usize];
                        *pq = (*pq & !em) | (r2 & em);
                    }
                }
                Inst::PredOp { op, d, a, an, b, bn } => {
                    let av = if *an { !w.p[*a as usize] } else { w.p[*a as usize] };
                    let bv = if *bn { !w.p[*b as usize] } else { w.p[*b as usize] };
                    let r = match op {
                        BoolOp::And => av & bv,
                        BoolOp::Or => av | bv,
                        BoolOp::Xor => av ^ bv,
                    };
                    let pd = &mut w.p[*d as usize];
                    *pd = (*pd & !em) | (r & em);
                }
                Inst::PredNot { d, a } => {
                    let r = !w.p[*a as usize];
                    let pd = &mut w.p[*d as usize];
                    *pd = (*pd & !em) | (r & em);
                }
                Inst::PredMov { d, a } => {
                    let r = w.p[*a as usize];
                    let pd = &mut w.p[*d as usize];
                    *pd = (*pd & !em) | (r & em);
                }
                Inst::PredSet { d, v } => {
                    let r = if *v { FULL } else { 0 };
                    let pd = &mut w.p[*d as usize];
                    *pd = (*pd & !em) | (r & em);
                }
                Inst::Selp { d, a, b, p, pn } => {
                    let pv = if *pn { !w.p[*p as usize] } else { w.p[*p as usize] };
                    match (d, a, b) {
                        (Reg::R32(d), Reg::R32(a), Reg::R32(b)) => {
                            let (av, bv) = (w.r32[*a as usize], w.r32[*b as usize]);
                            let dv = &mut w.r32[*d as usize];
                            each!(em, |l| dv[l] = if pv >> l & 1 == 1 { av[l] } else { bv[l] });
                        }
                        (Reg::R64(d), Reg::R64(a), Reg::R64(b)) => {
                            let (av, bv) = (w.r64[*a as usize], w.r64[*b as usize]);
                            let dv = &mut w.r64[*d as usize];
                            each!(em, |l| dv[l] = if pv >> l & 1 == 1 { av[l] } else { bv[l] });
                        }
                        _ => {}
                    }
                }
                Inst::Mov32 { d, a } => {
                    let av = w.r32[*a as usize];
                    let dv = &mut w.r32[*d as usize];
                    each!(em, |l| dv[l] = av[l]);
                }
                Inst::Mov64 { d, a } => {
                    let av = w.r64[*a as usize];
                    let dv = &mut w.r64[*d as usize];
                    each!(em, |l| dv[l] = av[l]);
                }
                Inst::Pack { d, parts, bits } => {
                    let mut v = [0u64; 32];
                    for (k, p) in parts.iter().enumerate() {
                        let pv = w.r32[*p as usize];
                        let sh = k as u32 * bits;
                        each!(em, |l| v[l] |= mask_bytes(pv[l] as u64, bits / 8) << sh);
                    }
                    w.write_wide(em, d, &v);
                }
                Inst::Unpack { a, parts, bits } => {
                    let v: [u64; 32] = w.read_wide(a);
                    for (k, p) in parts.iter().enumerate() {
                        if let Some(p) = p {
                            let sh = k as u32 * bits;
                            let dv = &mut w.r32[*p as usize];
                            each!(em, |l| dv[l] = mask_bytes(v[l] >> sh, bits / 8) as u32);
                        }
                    }
                }
                Inst::Cvt { d, a, from, to, rnd, int_rnd, sat, ftz, relu, satfinite } => {
                    let src: [u64; 32] = w.read_wide(a);
                    let mut out = [0u64; 32];
                    each!(em, |l| out[l] = cvt(src[l], *from, *to, *rnd, *int_rnd, *sat, *ftz, *relu, *satfinite));
                    w.write_wide(em, d, &out);
                }
                Inst::CvtPack { d, a, b, bf, rnd, relu, satfinite } => {
                    let (av, bv) = (w.r32[*a as usize], w.r32[*b as usize]);
                    let dv = &mut w.r32[*d as usize];
                    let conv = |x: f32| -> u32 {
                        let mut x = x;
                        if *relu && !x.is_nan() && x < 0.0 {
                            x = 0.0;
                        }
                        let mut h = if *bf { num::f32_to_bf16(x, *rnd) } else { num::f32_to_f16(x, *rnd) };
                        if *satfinite && !x.is_nan() && (h & 0x7fff) == if *bf { 0x7f80 } else { 0x7c00 } {
                            h = (h & 0x8000) | if *bf { 0x7f7f } else { 0x7bff };
                        }
                        h as u32
                    };
                    if *bf && *rnd == Rnd::N && !*relu && !*satfinite {
                        each!(em, |l| dv[l] = (num::f32_to_bf16(f(av[l]), Rnd::N) as u32) << 16 | num::f32_to_bf16(f(bv[l]), Rnd::N) as u32);
                    } else {
                        each!(em, |l| dv[l] = conv(f(av[l])) << 16 | conv(f(bv[l])));
                    }
                }
                Inst::Cvta { to, space, d, a } => {
                    let win = match space {
                        Space::Shared => SHARED_WINDOW,
                        Space::Local => LOCAL_WINDOW,
                        Space::Param => PARAM_WINDOW,
                        _ => 0,
                    };
                    let src: [u64; 32] = w.read_wide(a);
                    let mut out = [0u64; 32];
                    each!(em, |l| out[l] = if *to { src[l].wrapping_sub(win) } else { src[l].wrapping_add(win) });
                    w.write_wide(em, d, &out);
                }
                Inst::Prmt { d, a, b, c } => {
                    let (av, bv, cv) = (w.r32[*a as usize], w.r32[*b as usize], w.r32[*c as usize]);
                    let dv = &mut w.r32[*d as usize];
                    each!(em, |l| {
                        let bytes = ((bv[l] as u64) << 32 | av[l] as u64).to_le_bytes();
                        let mut r = 0u32;
                        for i in 0..4 {
                            let sel = (cv[l] >> (4 * i)) & 0xf;
                            let mut byte = bytes[(sel & 7) as usize];
                            if sel & 8 != 0 {
                                byte = if byte & 0x80 != 0 { 0xff } else { 0 };
                            }
                            r |= (byte as u32) << (8 * i);
                        }
                        dv[l] = r
                    });
                }
                Inst::Lop3 { d, a, b, c, lut } => {
                    let (av, bv, cv) = (w.r32[*a as usize], w.r32[*b as usize], w.r32[*c as usize]);
                    let dv = &mut w.r32[*d as usize];
                    let lut = *lut;
                    each!(em, |l| {
                        let mut r = 0u32;
                        for i in 0..8 {
                            if lut >> i & 1 == 1 {
                                let x = if i & 4 != 0 { av[l] } else { !av[l] };
                                let y = if i & 2 != 0 { bv[l] } else { !bv[l] };
                                let z = if i & 1 != 0 { cv[l] } else { !cv[l] };
                                r |= x & y & z;
                            }
                        }
                        dv[l] = r
                    });
                }
                Inst::Ld { space, ty, d, addr } => {
                    let size = ty.bytes();
                    let n = d.len() as u32;
                    let total = size * n;
                    self.count(wi, pc, *space, addr, em, total, Acc::Read);
                    let signed = ty.signed();
                    for l in lanes(em) {
                        let ad = Self::addr_of(&self.warps[wi], addr, l);
                        if ad % total as u64 != 0 {
                            return Err(self.misaligned(wid, l, line, "load", ad, total));
                        }
                        let (sp, sa) = Self::resolve(*space, ad);
                        let mut vals = [0u64; 4];
                        match sp {
                            // fast paths: one lookup / check for the whole vector
                            Space::Global | Space::Generic => {
                                let (a, off) = self.gl_find(wid, l, sa, total, line)?;
                                for (k, v) in vals.iter_mut().enumerate().take(n as usize) {
                                    *v = a.load(off + (k as u32 * size) as u64, size);
                                }
                            }
                            Space::Shared => {
                                let off = self.sh_check(wid, l, sa, total, line)?;
                                self.shadow_read(wid, l, off, total as usize, line)?;
                                for (k, v) in vals.iter_mut().enumerate().take(n as usize) {
                                    let o = off + (k as u32 * size) as usize;
                                    let mut b = [0u8; 8];
                                    b[..size as usize].copy_from_slice(&self.shared[o..o + size as usize]);
                                    *v = u64::from_le_bytes(b);
                                }
                            }
                            _ => {
                                for (k, v) in vals.iter_mut().enumerate().take(n as usize) {
                                    *v = self.read(wid, l, sp, sa.wrapping_add((k as u32 * size) as u64), size, line)?;
                                }
                            }
                        }
                        let w = &mut self.warps[wi];
                        for (k, r) in d.iter().enumerate() {
                            let v = if signed { sext(vals[k], size) as u64 } else { vals[k] };
                            match r {
                                Some(Reg::R32(r)) => w.r32[*r as usize][l] = v as u32,
                                Some(Reg::R64(r)) => w.r64[*r as usize][l] = v,
                                None => {}
                            }
                        }
                    }
                }
                Inst::St { space, ty, s, addr } => {
                    let size = ty.bytes();
                    let n = s.len() as u32;
                    let total = size * n;
                    self.count(wi, pc, *space, addr, em, total, Acc::Write);
                    for l in lanes(em) {
                        let w = &self.warps[wi];
                        let ad = Self::addr_of(w, addr, l);
                        if ad % total as u64 != 0 {
                            return Err(self.misaligned(wid, l, line, "store", ad, total));
                        }
                        let mut vals = [0u64; 4];
                        for (k, r) in s.iter().enumerate() {
                            vals[k] = mask_bytes(
                                match r {
                                    Reg::R32(r) => w.r32[*r as usize][l] as u64,
                                    Reg::R64(r) => w.r64[*r as usize][l],
                                },
                                size,
                            );
                        }
                        let (sp, sa) = Self::resolve(*space, ad);
                        match sp {
                            Space::Global | Space::Generic => {
                                let (a, off) = self.gl_find(wid, l, sa, total, line)?;
                                for (k, v) in vals.iter().enumerate().take(n as usize) {
                                    a.store(off + (k as u32 * size) as u64, size, *v);
                                }
                            }
                            Space::Shared => {
                                let off = self.sh_check(wid, l, sa, total, line)?;
                                self.shadow_write(wid, l, off, total as usize, line)?;
                                for (k, v) in vals.iter().enumerate().take(n as usize) {
                                    let o = off + (k as u32 * size) as usize;
                                    self.shared[o..o + size as usize].copy_from_slice(&v.to_le_bytes()[..size as usize]);
                                }
                            }
                            _ => {
                                for (k, v) in vals.iter().enumerate().take(n as usize) {
                                    self.write(wid, l, sp, sa.wrapping_add((k as u32 * size) as u64), size, *v, line)?;
                                }
                            }
                        }
                    }
                }
                Inst::Atom { space, op, ty, d, addr, b, c } => {
                    self.count(wi, pc, *space, addr, em, 4, Acc::Atomic);
                    for l in lanes(em) {
                        let w = &self.warps[wi];
                        let ad = Self::addr_of(w, addr, l);
                        let bv = w.r32[*b as usize][l];
                        let cv = c.map(|c| w.r32[c as usize][l]).unwrap_or(0);
                        if ad % 4 != 0 {
                            return Err(self.misaligned(wid, l, line, "atomic", ad, 4));
                        }
                        let old = if *space == Space::Shared {
                            let off = self.sh_check(wid, l, ad, 4, line)?;
                            if self.l.opts.initcheck {
                                for k in off..off + 4 {
                                    if self.shadow[k].w_epoch == 0 {
                                        return Err(self.error(SimErrorKind::UninitializedRead, wid, l, line, format!("atomic on uninitialised shared memory at shared address {k:#x}")));
                                    }
                                }
                            }
                            for k in off..off + 4 {
                                if self.shadow[k].w_tid & PENDING != 0 {
                                    return Err(self.error(SimErrorKind::AsyncCopyHazard, wid, l, line, format!("atomic on shared address {k:#x} while a cp.async into it is in flight")));
                                }
                            }
                            let old = u32::from_le_bytes([self.shared[off], self.shared[off + 1], self.shared[off + 2], self.shared[off + 3]]);
                            let new = if *op == AtomOp::Cas { if old == bv { cv } else { old } } else { atomic_apply(*op, *ty, old, bv) };
                            self.shared[off..off + 4].copy_from_slice(&new.to_le_bytes());
                            old
                        } else {
                            let (a, off) = self.gl_find(wid, l, ad, 4, line)?;
                            a.atomic(off, *op, *ty, bv, cv)
                        };
                        if let Some(d) = d {
                            self.warps[wi].r32[*d as usize][l] = old;
                        }
                    }
                }
                Inst::Bra { target, uni } => {
                    let taken = em;
                    let not_taken = mask & !em;
                    if taken == 0 {
                        // fall through
                    } else if not_taken == 0 {
                        next = *target;
                    } else {
                        if *uni {
                            return Err(self.error(SimErrorKind::WarpDivergence, wid, taken.trailing_zeros() as usize, line, format!("bra.uni is divergent: lanes {} branch, lanes {} do not", lanes_str(taken), lanes_str(not_taken))));
                        }
                        let rpc = di.reconv;
                        let w = &mut self.warps[wi];
                        let top = w.stack.last_mut().unwrap_or_else(|| unreachable!());
                        if top.rpc == rpc {
                            top.pc = next;
                            top.mask = not_taken;
                        } else {
                            top.pc = rpc;
                            w.stack.push(Entry { pc: next, mask: not_taken, rpc });
                        }
                        w.stack.push(Entry { pc: *target, mask: taken, rpc });
                        if w.stack.len() > 4096 {
                            return Err(self.error(SimErrorKind::Other, wid, taken.trailing_zeros() as usize, line, "reconvergence stack overflow".into()));
                        }
                        continue;
                    }
                }
                Inst::Exit => {
                    let w = &mut self.warps[wi];
                    w.exited |= em;
                    for e in w.stack.iter_mut() {
                        e.mask &= !em;
                    }
                    let top_alive = w.stack.last().is_some_and(|e| e.mask != 0);
                    w.stack.retain(|e| e.mask != 0);
                    if !top_alive {
                        continue;
                    }
                }
                Inst::Bar { arrive, id, count } => {
                    let w = &self.warps[wi];
                    let live = w.valid & !w.exited;
                    if em != live {
                        let missing = live & !em;
                        return Err(self.error(
                            SimErrorKind::BarrierDivergence,
                            wid,
                            em.trailing_zeros() as usize,
                            line,
                            format!("barrier divergence: bar at line {line} is reached by lanes {} of warp {wid} but not by lanes {} (they took another path or are predicated off)", lanes_str(em), lanes_str(missing)),
                        ));
                    }
                    let l0 = em.trailing_zeros() as usize;
                    let idv = w.r32[*id as usize][l0];
                    let cnt = count.map(|c| w.r32[c as usize][l0]);
                    if idv >= 16 {
                        return Err(self.error(SimErrorKind::Other, wid, l0, line, format!("barrier id {idv} out of range (0..15)")));
                    }
                    if let Some(c) = cnt {
                        if c == 0 || c % 32 != 0 || c > self.nthreads.div_ceil(32) * 32 {
                            return Err(self.error(SimErrorKind::Other, wid, l0, line, format!("barrier thread count {c} must be a non-zero multiple of 32 not above the block size")));
                        }
                    }
                    if *arrive {
                        self.arrivals[idv as usize] += live.count_ones();
                    } else {
                        let w = &mut self.warps[wi];
                        w.stack.last_mut().unwrap_or_else(|| unreachable!()).pc = next;
                        w.wait = Some(BarWait { id: idv, count: cnt, pc, line });
                        return Ok(());
                    }
                }
                Inst::BarWarp { mask: mr } => {
                    let mv = w.r32[*mr as usize][em.trailing_zeros() as usize];
                    self.check_converged(wi, em, mv, line, "bar.warp.sync")?;
                }
                Inst::Nop => {}
                Inst::Activemask { d } => {
                    let dv = &mut w.r32[*d as usize];
                    each!(em, |l| dv[l] = mask);
                }
                Inst::Shfl { mode, d, p, a, b, c, mask: mr } => {
                    let mv = w.r32[*mr as usize][em.trailing_zeros() as usize];
                    self.check_converged(wi, em, mv, line, "shfl.sync")?;
                    let w = &self.warps[wi];
                    let (av, bv, cv) = (w.r32[*a as usize], w.r32[*b as usize], w.r32[*c as usize]);
                    let mut out = [0u32; 32];
                    let mut pres = 0u32;
                    for l in lanes(em) {
                        let lane = l as i32;
                        let bval = (bv[l] & 31) as i32;
                        let cval = (cv[l] & 31) as i32;
                        let segmask = ((cv[l] >> 8) & 31) as i32;
                        let max_lane = (lane & segmask) | (cval & !segmask);
                        let min_lane = lane & segmask;
                        let (j, pval) = match mode {
                            ShflMode::Up => (lane - bval, lane - bval >= max_lane),
                            ShflMode::Down => (lane + bval, lane + bval <= max_lane),
                            ShflMode::Bfly => (lane ^ bval, (lane ^ bval) <= max_lane),
                            ShflMode::Idx => {
                                let j = min_lane | (bval & !segmask);
                                (j, j <= max_lane)
                            }
                        };
                        let j = if pval { j as usize } else { l };
                        if em >> j & 1 == 0 {
                            return Err(self.error(SimErrorKind::WarpDivergence, wid, l, line, format!("shfl.sync: lane {l} reads lane {j}, which does not execute this shfl (inactive, predicated off or exited): the result is undefined")));
                        }
                        out[l] = av[j];
                        pres |= (pval as u32) << l;
                    }
                    let w = &mut self.warps[wi];
                    let dv = &mut w.r32[*d as usize];
                    each!(em, |l| dv[l] = out[l]);
                    if let Some(p) = p {
                        let pd = &mut w.p[*p as usize];
                        *pd = (*pd & !em) | (pres & em);
                    }
                }
                Inst::Vote { mode, d, dp, a, an, mask: mr } => {
                    let mv = w.r32[*mr as usize][em.trailing_zeros() as usize];
                    self.check_converged(wi, em, mv, line, "vote.sync")?;
                    let w = &mut self.warps[wi];
                    let pv = (if *an { !w.p[*a as usize] } else { w.p[*a as usize] }) & em;
                    match mode {
                        VoteMode::Ballot => {
                            if let Reg::R32(d) = d {
                                let dv = &mut w.r32[*d as usize];
                                each!(em, |l| dv[l] = pv);
                            }
                        }
                        _ => {
                            let r = match mode {
                                VoteMode::All => pv == em,
                                VoteMode::Any => pv != 0,
                                _ => pv == em || pv == 0,
                            };
                            let pd = &mut w.p[*dp as usize];
                            *pd = (*pd & !em) | if r { em } else { 0 };
                        }
                    }
                }
                Inst::CpAsync { bytes, dst, src, src_size } => {
                    if self.counters.is_some() {
                        let w = &self.warps[wi];
                        self.acc_g.clear();
                        each!(em, |l| {
                            let ss = src_size.map(|r| w.r32[r as usize][l]).unwrap_or(*bytes).min(*bytes);
                            if ss > 0 {
                                self.acc_g.push((Self::addr_of(w, src, l), ss));
                            }
                        });
                        let acc = std::mem::take(&mut self.acc_g);
                        if let Some(c) = self.counters.as_deref_mut() {
                            c.global(pc as usize, &acc, false, false);
                        }
                        self.acc_g = acc;
                    }
                    for l in lanes(em) {
                        let w = &self.warps[wi];
                        let da = Self::addr_of(w, dst, l);
                        let sa = Self::addr_of(w, src, l);
                        let ss = src_size.map(|r| w.r32[r as usize][l]).unwrap_or(*bytes);
                        if ss > *bytes {
                            return Err(self.error(SimErrorKind::Other, wid, l, line, format!("cp.async src-size {ss} exceeds cp-size {bytes}")));
                        }
                        if da % *bytes as u64 != 0 {
                            return Err(self.misaligned(wid, l, line, "cp.async shared", da, *bytes));
                        }
                        if sa % *bytes as u64 != 0 {
                            return Err(self.misaligned(wid, l, line, "cp.async global", sa, *bytes));
                        }
                        let off = self.sh_check(wid, l, da, *bytes, line)?;
                        let mut data = [0u8; 16];
                        if ss > 0 {
                            let (a, goff) = self.gl_find(wid, l, sa, ss, line)?;
                            // word-wise reads where possible
                            let mut k = 0u32;
                            while k < ss {
                                if (goff + k as u64).is_multiple_of(4) && k + 4 <= ss {
                                    data[k as usize..k as usize + 4].copy_from_slice(&(a.load(goff + k as u64, 4) as u32).to_le_bytes());
                                    k += 4;
                                } else {
                                    data[k as usize] = a.load(goff + k as u64, 1) as u8;
                                    k += 1;
                                }
                            }
                        }
                        for kk in off..off + *bytes as usize {
                            if self.shadow[kk].w_tid & PENDING != 0 {
                                return Err(self.error(SimErrorKind::AsyncCopyHazard, wid, l, line, format!("cp.async into shared address {kk:#x}, which another in-flight cp.async also writes")));
                            }
                            self.shadow[kk].w_tid |= PENDING;
                        }
                        self.warps[wi].cp_pending.push(CpOp { lane: l as u8, bytes: *bytes as u8, dst: off as u32, line, data });
                    }
                }
                Inst::CpCommit => {
                    self.check_whole_warp_live(wi, em, line, "cp.async.commit_group")?;
                    let w = &mut self.warps[wi];
                    let g = std::mem::take(&mut w.cp_pending);
                    w.cp_groups.push_back(g);
                }
                Inst::CpWait { n } => {
                    self.check_whole_warp_live(wi, em, line, "cp.async.wait_group")?;
                    let w = &mut self.warps[wi];
                    if *n == u32::MAX {
                        let g = std::mem::take(&mut w.cp_pending);
                        w.cp_groups.push_back(g);
                    }
                    let keep = if *n == u32::MAX { 0 } else { *n as usize };
                    while self.warps[wi].cp_groups.len() > keep {
                        let g = self.warps[wi].cp_groups.pop_front().unwrap_or_default();
                        self.complete_group(wi, g)?;
                    }
                }
                Inst::Ldmatrix { num, trans, d, addr } => {
                    self.check_aligned_collective(wi, em, line, "ldmatrix")?;
                    if self.counters.is_some() {
                        let rows = FULL >> (32 - 8 * *num);
                        self.count_access(wi, pc, Space::Shared, addr, rows, 16, Acc::Read);
                    }
                    let mut mats = [[[0u16; 8]; 8]; 4];
                    for (i, mat) in mats.iter_mut().enumerate().take(*num as usize) {
                        for (r, row) in mat.iter_mut().enumerate() {
                            let p = i * 8 + r;
                            let off = self.matrix_row(wi, addr, p, line, "ldmatrix row")?;
                            self.shadow_read(wid, p, off, 16, line)?;
                            for (c, v) in row.iter_mut().enumerate() {
                                *v = u16::from_le_bytes([self.shared[off + 2 * c], self.shared[off + 2 * c + 1]]);
                            }
                        }
                    }
                    let w = &mut self.warps[wi];
                    for i in 0..*num as usize {
                        let dv = &mut w.r32[d[i] as usize];
                        for (l, slot) in dv.iter_mut().enumerate() {
                            let (r, c) = (l / 4, 2 * (l % 4));
                            let (x, y) = if *trans { (mats[i][c][r], mats[i][c + 1][r]) } else { (mats[i][r][c], mats[i][r][c + 1]) };
                            *slot = x as u32 | (y as u32) << 16;
                        }
                    }
                }
                Inst::Mma { bf, d, a, b, c } => {
                    self.check_aligned_collective(wi, em, line, "mma.sync")?;
                    let w = &mut self.warps[wi];
                    mma_m16n8k16(w, *bf, d, a, b, c);
                }
                Inst::MbarInit { addr, count } => {
                    for l in lanes(em) {
                        let w = &self.warps[wi];
                        let (a, n) = (Self::addr_of(w, addr, l), w.r32[*count as usize][l]);
                        let off = self.mbar_off(wid, l, a, line)?;
                        if n == 0 || n as i64 > MBAR_MAX {
                            return Err(self.mbar_err(wid, l, line, format!("mbarrier.init count {n} (1 to 2^20 - 1)")));
                        }
                        let h = self.hop.as_deref_mut().unwrap_or_else(|| unreachable!());
                        let busy = h.mbars.get(&off).is_some_and(|m| m.pending != m.expected || m.tx != 0) || h.tma.iter().any(|o| o.mbar == off);
                        if busy {
                            let il = h.mbars[&off].init_line;
                            return Err(self.mbar_err(wid, l, line, format!("mbarrier.init on the mbarrier at shared {off:#x} (initialised at line {il}) while its phase has arrivals or transactions outstanding")));
                        }
                        h.mbars.insert(off, MBar::new(n, line));
                        h.mbar_at[off as usize >> 3] = line.max(1);
                        // an mbarrier is an object, not data: it counts as written
                        for b in off as usize..off as usize + 8 {
                            self.shadow[b].w_epoch = 1;
                        }
                    }
                }
                Inst::MbarArrive { addr, tx, arrive, state } => {
                    for l in lanes(em) {
                        let w = &self.warps[wi];
                        let a = Self::addr_of(w, addr, l);
                        let txv = tx.map(|r| w.r32[r as usize][l]);
                        let off = self.mbar_off(wid, l, a, line)?;
                        let h = self.hop.as_deref_mut().unwrap_or_else(|| unreachable!());
                        let Some(m) = h.mbars.get_mut(&off) else {
                            return Err(self.mbar_err(wid, l, line, format!("arrive on shared address {off:#x}, which holds no initialised mbarrier (mbarrier.init first)")));
                        };
                        let token = m.phase as u64;
                        let mut r = Ok(false);
                        if let Some(b) = txv {
                            if let Err(e) = m.expect_tx(b) {
                                r = Err(e);
                            }
                        }
                        if r.is_ok() && *arrive {
                            r = m.arrive(1);
                        }
                        match r {
                            Ok(true) => self.phase_completed(),
                            Ok(false) => {}
                            Err(msg) => return Err(self.mbar_err(wid, l, line, msg)),
                        }
                        if let Some(s) = state {
                            self.warps[wi].r64[*s as usize][l] = token;
                        }
                    }
                }
                Inst::MbarWait { p, addr, parity } => {
                    let mut pv = 0u32;
                    let mut blocked = None;
                    for l in lanes(em) {
                        let w = &self.warps[wi];
                        let (a, par) = (Self::addr_of(w, addr, l), w.r32[*parity as usize][l]);
                        let off = self.mbar_off(wid, l, a, line)?;
                        let done = |s: &Self| s.hop.as_deref().and_then(|h| h.mbars.get(&off)).map(|m| m.parity_done(par));
                        let mut ok = match done(self) {
                            Some(d) => d,
                            None => return Err(self.mbar_err(wid, l, line, format!("wait on shared address {off:#x}, which holds no initialised mbarrier"))),
                        };
                        if !ok && self.land(Some(off))? {
                            ok = done(self).unwrap_or(false);
                        }
                        if ok {
                            pv |= 1 << l;
                        } else if blocked.is_none() {
                            let ph = self.hop.as_deref().and_then(|h| h.mbars.get(&off)).map_or(0, |m| m.phase);
                            blocked = Some((off, ph));
                        }
                    }
                    let w = &mut self.warps[wi];
                    let pd = &mut w.p[*p as usize];
                    *pd = (*pd & !em) | pv;
                    if let Some((off, phase)) = blocked {
                        // the wait times out (false) and the warp yields until the phase moves
                        w.stack.last_mut().unwrap_or_else(|| unreachable!()).pc = next;
                        w.susp = Some(Susp::Mbar { off, phase, line });
                        return Ok(());
                    }
                }
                Inst::TmaLoad { dst, map, coords, mbar } => {
                    for l in lanes(em) {
                        self.exec_tma_load(wi, l, dst, *map, coords, mbar, line, pc)?;
                    }
                }
                Inst::TmaStore { map, coords, src } => {
                    for l in lanes(em) {
                        self.exec_tma_store(wi, l, *map, coords, src, line, pc)?;
                    }
                }
                Inst::BulkReduceAdd { dst, src, bytes } => {
                    for l in lanes(em) {
                        self.exec_bulk_reduce(wi, l, dst, src, *bytes, line, pc)?;
                    }
                }
                Inst::BulkCommit => {
                    let w = &mut self.warps[wi];
                    let g = std::mem::take(&mut w.bulk_open);
                    w.bulk_groups.push_back(g);
                }
                Inst::BulkWait { n, .. } => {
                    // stores write global memory at issue, so .read and the plain form both end the reads
                    let mut done = Vec::new();
                    let w = &mut self.warps[wi];
                    while w.bulk_groups.len() > *n as usize {
                        done.extend(w.bulk_groups.pop_front().unwrap_or_default());
                    }
                    if let Some(h) = self.hop.as_deref_mut() {
                        for c in done {
                            h.aread[c as usize] -= 1;
                        }
                    }
                }
                Inst::FenceProxyAsync => {
                    if let Some(h) = self.hop.as_deref_mut() {
                        each!(em, |l| h.fences[wid as usize * 32 + l] += 1);
                    }
                }
                Inst::WgFence => {
                    self.check_aligned_collective(wi, em, line, "wgmma.fence.sync")?;
                    if let Some(g) = self.warps[wi].wg.as_deref_mut() {
                        g.touched.fill(false);
                    }
                }
                Inst::WgCommit => {
                    self.check_aligned_collective(wi, em, line, "wgmma.commit_group.sync")?;
                    if let Some(g) = self.warps[wi].wg.as_deref_mut() {
                        let ops = std::mem::take(&mut g.open);
                        g.groups.push_back(ops);
                    }
                }
                Inst::WgWait { n } => {
                    self.check_aligned_collective(wi, em, line, "wgmma.wait_group.sync")?;
                    self.wg_complete(wi, *n as usize);
                }
                Inst::Wgmma { .. } => {
                    self.check_aligned_collective(wi, em, line, "wgmma.mma_async.sync")?;
                    if !self.warps.len().is_multiple_of(4) {
                        return Err(self.error(SimErrorKind::WarpDivergence, wid, 0, line, format!("wgmma needs whole warpgroups: the block has {} warps, not a multiple of 4", self.warps.len())));
                    }
                    self.exec_wgmma(wi, &di.inst, line)?;
                }
                Inst::Elect { d, p, mask: mr } => {
                    let mv = w.r32[*mr as usize][em.trailing_zeros() as usize];
                    self.check_converged(wi, em, mv, line, "elect.sync")?;
                    let leader = (em & mv).trailing_zeros();
                    let w = &mut self.warps[wi];
                    if let Some(d) = d {
                        let dv = &mut w.r32[*d as usize];
                        each!(em, |l| dv[l] = leader);
                    }
                    let pd = &mut w.p[*p as usize];
                    *pd = (*pd & !em) | (em & (1u32 << leader));
                }
                Inst::Setmaxnreg { .. } => {
                    self.check_aligned_collective(wi, em, line, "setmaxnreg.sync")?;
                }
                Inst::Stmatrix { num, trans, s, addr } => {
                    self.check_aligned_collective(wi, em, line, "stmatrix")?;
                    if self.counters.is_some() {
                        let rows = FULL >> (32 - 8 * *num);
                        self.count_access(wi, pc, Space::Shared, addr, rows, 16, Acc::Write);
                    }
                    let w = &self.warps[wi];
                    let mut mats = [[[0u16; 8]; 8]; 4];
                    for i in 0..*num as usize {
                        let sv = &w.r32[s[i] as usize];
                        for (l, &word) in sv.iter().enumerate() {
                            let (r, c) = (l / 4, 2 * (l % 4));
                            let (x, y) = (word as u16, (word >> 16) as u16);
                            if *trans {
                                mats[i][c][r] = x;
                                mats[i][c + 1][r] = y;
                            } else {
                                mats[i][r][c] = x;
                                mats[i][r][c + 1] = y;
                            }
                        }
                    }
                    for (i, mat) in mats.iter().enumerate().take(*num as usize) {
                        for (r, row) in mat.iter().enumerate() {
                            let p = i * 8 + r;
                            let off = self.matrix_row(wi, addr, p, line, "stmatrix row")?;
                            self.shadow_write(wid, p, off, 16, line)?;
                            for (c, v) in row.iter().enumerate() {
                                self.shared[off + 2 * c..off + 2 * c + 2].copy_from_slice(&v.to_le_bytes());
                            }
                        }
                    }
                }
            }
            self.warps[wi].stack.last_mut().unwrap_or_else(|| unreachable!()).pc = next;
        }
    }

    /// The shared offset of the 16-byte matrix row lane `p` addresses (ldmatrix, stmatrix).
    fn matrix_row(&self, wi: usize, addr: &Addr, p: usize, line: u32, what: &str) -> R<usize> {
        let wid = self.warps[wi].id;
        let ad = Self::addr_of(&self.warps[wi], addr, p);
        if ad % 16 != 0 {
            return Err(self.misaligned(wid, p, line, what, ad, 16));
        }
        self.sh_check(wid, p, ad, 16, line)
    }

    /// [`Self::count_access`] when the counters are on.
    #[inline(always)]
    fn count(&mut self, wi: usize, pc: u32, space: Space, addr: &Addr, em: u32, lane_bytes: u32, acc: Acc) {
        if self.counters.is_some() {
            self.count_access(wi, pc, space, addr, em, lane_bytes, acc);
        }
    }

    /// Record one memory instruction's request in the counters: the lanes'
    /// addresses split by the space they resolve to.
    #[cold]
    #[inline(never)]
    fn count_access(&mut self, wi: usize, pc: u32, space: Space, addr: &Addr, em: u32, lane_bytes: u32, acc: Acc) {
        self.acc_g.clear();
        self.acc_s.clear();
        let w = &self.warps[wi];
        each!(em, |l| {
            let ad = Self::addr_of(w, addr, l);
            let (sp, sa) = Self::resolve(space, ad);
            match sp {
                Space::Global | Space::Generic => self.acc_g.push((sa, lane_bytes)),
                Space::Shared => self.acc_s.push((l as u8, sa)),
                _ => {}
            }
        });
        let (g, sh) = (std::mem::take(&mut self.acc_g), std::mem::take(&mut self.acc_s));
        if let Some(c) = self.counters.as_deref_mut() {
            c.global(pc as usize, &g, acc == Acc::Write || acc == Acc::Atomic, acc == Acc::Atomic);
            c.shared(pc as usize, &sh, lane_bytes, acc == Acc::Atomic);
        }
        (self.acc_g, self.acc_s) = (g, sh);
    }

    /// shfl/vote/bar.warp: executing lanes must be in the member mask, and
    /// every live lane named in it must be executing this instruction.
    fn check_converged(&self, wi: usize, em: u32, membermask: u32, line: u32, what: &str) -> R<()> {
        let w = &self.warps[wi];
        let wid = w.id;
        if em & !membermask != 0 {
            let l = (em & !membermask).trailing_zeros() as usize;
            return Err(self.error(SimErrorKind::WarpDivergence, wid, l, line, format!("{what}: executing lane {l} is not in the member mask {membermask:#010x}")));
        }
        let live = w.valid & !w.exited;
        let missing = membermask & live & !em;
        if missing != 0 {
            return self.diverged(wid, em, line, format!("{what}: member mask {membermask:#010x} names lanes {} that are not executing it (divergent or predicated off)", lanes_str(missing)));
        }
        Ok(())
    }

    /// A warp-divergence error of warp `wid`, reported at its first executing lane.
    fn diverged(&self, wid: u32, em: u32, line: u32, msg: String) -> R<()> {
        Err(self.error(SimErrorKind::WarpDivergence, wid, em.trailing_zeros() as usize, line, msg))
    }

    /// `.aligned` warp-wide instructions: all 32 lanes must execute them.
    fn check_aligned_collective(&self, wi: usize, em: u32, line: u32, what: &str) -> R<()> {
        let w = &self.warps[wi];
        if em != FULL {
            let missing = !em;
            return self.diverged(w.id, em, line, format!("{what}.aligned must be executed by all 32 lanes of the warp, but lanes {} do not (diverged, predicated off, exited or not launched)", lanes_str(missing)));
        }
        Ok(())
    }

    fn check_whole_warp_live(&self, wi: usize, em: u32, line: u32, what: &str) -> R<()> {
        let w = &self.warps[wi];
        let live = w.valid & !w.exited;
        if em != live {
            return self.diverged(w.id, em, line, format!("{what} executed by lanes {} but not by live lanes {}: the simulator tracks cp.async groups per warp and needs them converged", lanes_str(em), lanes_str(live & !em)));
        }
        Ok(())
    }
}

/// `exec_i32`/`exec_i64`: the integer ops on unsigned `$u` lanes, `$s` their
/// signed view, `$w`/`$ws` twice as wide (for `mul.hi`); `$shifts` the shift
/// arms, over the parameter names the caller gives.
macro_rules! exec_int {
    ($name:ident, $u:ty, $s:ty, $w:ty, $ws:ty, |$em:ident, $dv:ident, $av:ident, $bv:ident| { $($shifts:tt)* }) => {
        fn $name(op: IOp, $em: u32, $dv: &mut [$u; 32], $av: &[$u; 32], $bv: &[$u; 32]) {
            match op {
                IOp::Add => each!($em, |l| $dv[l] = $av[l].wrapping_add($bv[l])),
                IOp::Sub => each!($em, |l| $dv[l] = $av[l].wrapping_sub($bv[l])),
                IOp::MulLo => each!($em, |l| $dv[l] = $av[l].wrapping_mul($bv[l])),
                IOp::MulHiU => each!($em, |l| $dv[l] = (($av[l] as $w * $bv[l] as $w) >> <$u>::BITS) as $u),
                IOp::MulHiS => each!($em, |l| $dv[l] = ((($av[l] as $s as $ws) * ($bv[l] as $s as $ws)) >> <$u>::BITS) as $u),
                IOp::MinU => each!($em, |l| $dv[l] = $av[l].min($bv[l])),
                IOp::MinS => each!($em, |l| $dv[l] = ($av[l] as $s).min($bv[l] as $s) as $u),
                IOp::MaxU => each!($em, |l| $dv[l] = $av[l].max($bv[l])),
                IOp::MaxS => each!($em, |l| $dv[l] = ($av[l] as $s).max($bv[l] as $s) as $u),
                IOp::And => each!($em, |l| $dv[l] = $av[l] & $bv[l]),
                IOp::Or => each!($em, |l| $dv[l] = $av[l] | $bv[l]),
                IOp::Xor => each!($em, |l| $dv[l] = $av[l] ^ $bv[l]),
                $($shifts)*
                IOp::DivU => each!($em, |l| $dv[l] = $av[l].checked_div($bv[l]).unwrap_or(<$u>::MAX)),
                IOp::DivS => each!($em, |l| $dv[l] = if $bv[l] == 0 { <$u>::MAX } else { ($av[l] as $s).wrapping_div($bv[l] as $s) as $u }),
                IOp::RemU => each!($em, |l| $dv[l] = if $bv[l] == 0 { $av[l] } else { $av[l] % $bv[l] }),
                IOp::RemS => each!($em, |l| $dv[l] = if $bv[l] == 0 { $av[l] } else { ($av[l] as $s).wrapping_rem($bv[l] as $s) as $u }),
            }
        }
    };
}

exec_int!(exec_i32, u32, i32, u64, i64, |em, dv, av, bv| {
    IOp::Shl => each!(em, |l| dv[l] = if bv[l] >= 32 { 0 } else { av[l] << bv[l] }),
    IOp::ShrU => each!(em, |l| dv[l] = if bv[l] >= 32 { 0 } else { av[l] >> bv[l] }),
    IOp::ShrS => each!(em, |l| dv[l] = ((av[l] as i32) >> bv[l].min(31)) as u32),
});
exec_int!(exec_i64, u64, i64, u128, i128, |em, dv, av, bv| {
    IOp::Shl | IOp::ShrU | IOp::ShrS => {}
});

/// `exec_iu32`/`exec_iu64`: the unary integer ops on `$u` lanes (`$s` their
/// signed view); `$rest` the arms one width has alone.
macro_rules! exec_int_unary {
    ($name:ident, $u:ty, $s:ty, |$em:ident, $dv:ident, $av:ident| { $($rest:tt)* }) => {
        #[inline]
        fn $name(op: IUop, $em: u32, $dv: &mut [$u; 32], $av: &[$u; 32]) {
            match op {
                IUop::Not => each!($em, |l| $dv[l] = !$av[l]),
                IUop::Neg => each!($em, |l| $dv[l] = ($av[l] as $s).wrapping_neg() as $u),
                IUop::AbsS => each!($em, |l| $dv[l] = ($av[l] as $s).wrapping_abs() as $u),
                IUop::Brev => each!($em, |l| $dv[l] = $av[l].reverse_bits()),
                $($rest)*
            }
        }
    };
}

exec_int_unary!(exec_iu32, u32, i32, |em, dv, av| {
    IUop::Popc => each!(em, |l| dv[l] = av[l].count_ones()),
    IUop::Clz => each!(em, |l| dv[l] = av[l].leading_zeros()),
});
exec_int_unary!(exec_iu64, u64, i64, |em, dv, av| { _ => {} });

/// PTX min/max: a NaN operand yields the other; -0 < +0.
#[inline]
fn fmin_max(a: f32, b: f32, max: bool) -> f32 {
    if a == 0.0 && b == 0.0 {
        return if a.is_sign_negative() != max { a } else { b };
    }
    let r = if max { a.max(b) } else { a.min(b) };
    if r.is_nan() {
        f32::from_bits(num::NAN32)
    } else {
        r
    }
}
fn fmin(a: f32, b: f32) -> f32 {
    fmin_max(a, b, false)
}
fn fmax(a: f32, b: f32) -> f32 {
    fmin_max(a, b, true)
}

fn post_f32(dv: &mut [u32; 32], em: u32, fl: u8) {
    if fl & FTZ != 0 {
        each!(em, |l| dv[l] = num::ftz32(f(dv[l])).to_bits());
    }
    if fl & SAT != 0 {
        each!(em, |l| dv[l] = num::sat01(f(dv[l])).to_bits());
    }
}

/// The integer comparisons of `a` and `b` in `T`'s order (`lo ls hi hs` as `lt le gt ge`).
fn cmp_u<T: PartialOrd>(c: Cmp, a: T, b: T) -> bool {
    match c {
        Cmp::Eq => a == b,
        Cmp::Ne => a != b,
        Cmp::Lt | Cmp::Lo => a < b,
        Cmp::Le | Cmp::Ls => a <= b,
        Cmp::Gt | Cmp::Hi => a > b,
        Cmp::Ge | Cmp::Hs => a >= b,
        _ => false,
    }
}
fn cmp_i(c: Cmp, a: i64, b: i64) -> bool {
    match c {
        Cmp::Lo | Cmp::Ls | Cmp::Hi | Cmp::Hs => cmp_u(c, a as u64, b as u64),
        _ => cmp_u(c, a, b),
    }
}
fn cmp_f(c: Cmp, a: f64, b: f64) -> bool {
    let un = a.is_nan() || b.is_nan();
    match c {
        Cmp::Eq => a == b,
        Cmp::Ne => !un && a != b,
        Cmp::Lt => a < b,
        Cmp::Le => a <= b,
        Cmp::Gt => a > b,
        Cmp::Ge => a >= b,
        Cmp::Equ => un || a == b,
        Cmp::Neu => un || a != b,
        Cmp::Ltu => un || a < b,
        Cmp::Leu => un || a <= b,
        Cmp::Gtu => un || a > b,
        Cmp::Geu => un || a >= b,
        Cmp::Num => !un,
        Cmp::Nan => un,
        _ => false,
    }
}

fn h_to_f64(bf: bool, x: u16) -> f64 {
    if bf {
        num::bf16_to_f32(x) as f64
    } else {
        num::f16_to_f32(x) as f64
    }
}

fn half_op(op: HOp, bf: bool, x: u16, y: u16, z: u16) -> u16 {
    let round = |v: f64| if bf { num::f64_to_bf16(v, Rnd::N) } else { num::f64_to_f16(v, Rnd::N) };
    let (a, b, c) = (h_to_f64(bf, x), h_to_f64(bf, y), h_to_f64(bf, z));
    match op {
        HOp::Neg => x ^ 0x8000,
        HOp::Abs => x & 0x7fff,
        HOp::Add => round(a + b),
        HOp::Sub => round(a - b),
        HOp::Mul => round(a * b),
        // a*b is exact in f64 for 16-bit formats; the sum rounds once more in
        // f64 only when far below the 16-bit format's precision.
        HOp::Fma => round(a * b + c),
        HOp::Min => {
            if a.is_nan() && b.is_nan() {
                num::NAN16
            } else if a.is_nan() || (!b.is_nan() && b < a) || (a == 0.0 && b == 0.0 && y & 0x8000 != 0) {
                y
            } else {
                x
            }
        }
        HOp::Max => {
            if a.is_nan() && b.is_nan() {
                num::NAN16
            } else if a.is_nan() || (!b.is_nan() && b > a) || (a == 0.0 && b == 0.0 && x & 0x8000 != 0) {
                y
            } else {
                x
            }
        }
    }
}

fn int_range(t: Ty) -> (i128, i128) {
    let bits = t.bytes() * 8;
    if t.signed() {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    }
}

/// One lane of `cvt`: `v` holds the source bits (low `from.bytes()` bytes).
#[allow(clippy::too_many_arguments)]
fn cvt(v: u64, from: Ty, to: Ty, rnd: Rnd, int_rnd: bool, sat: bool, ftz: bool, relu: bool, satfinite: bool) -> u64 {
    let fb = from.bytes();
    let v = mask_bytes(v, fb);
    // source as exact integer or exact f64
    enum Src {
        I(i128),
        F(f64),
    }
    let src = if from.is_float() {
        let mut x = match from {
            Ty::F32 => f32::from_bits(v as u32) as f64,
            Ty::F64 => f64::from_bits(v),
            Ty::F16 => num::f16_to_f32(v as u16) as f64,
            _ => num::bf16_to_f32(v as u16) as f64,
        };
        if ftz && from == Ty::F32 {
            x = num::ftz32(x as f32) as f64;
        }
        Src::F(x)
    } else if from.signed() {
        Src::I(sext(v, fb) as i128)
    } else {
        Src::I(v as i128)
    };
    let out_bits: u64 = if to.is_int() {
        let (lo, hi) = int_range(to);
        let i = match src {
            Src::I(i) => {
                if sat {
                    i.clamp(lo, hi)
                } else {
                    i
                }
            }
            Src::F(x) => num::f64_to_int_sat(x, rnd, lo, hi),
        };
        let tb = to.bytes();
        if to.signed() {
            // sign-extend into the register
            sext(i as u64, tb) as u64
        } else {
            mask_bytes(i as u64, tb)
        }
    } else {
        // to float
        let mut x: f64;
        let bits = match src {
            Src::I(i) => {
                x = 0.0;
                match to {
                    Ty::F32 => {
                        let r = if from.signed() { num::i64_to_f32(i as i64, rnd) } else { num::u64_to_f32(i as u64, rnd) };
                        x = r as f64;
                        r.to_bits() as u64
                    }
                    Ty::F64 => {
                        let r = if from.signed() { num::i64_to_f64(i as i64, rnd) } else { num::u64_to_f64(i as u64, rnd) };
                        x = r;
                        r.to_bits()
                    }
                    Ty::F16 => num::f64_to_f16(i as f64, rnd) as u64,
                    _ => num::f64_to_bf16(i as f64, rnd) as u64,
                }
            }
            Src::F(s) => {
                x = if int_rnd { num::round_int(s, rnd) } else { s };
                if relu && !x.is_nan() && x < 0.0 {
                    x = 0.0;
                }
                if sat {
                    x = if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
                }
                let r = if int_rnd { Rnd::N } else { rnd };
                match to {
                    Ty::F32 => {
                        let mut y = num::f64_to_f32(x, r);
                        if ftz {
                            y = num::ftz32(y);
                        }
                        y.to_bits() as u64
                    }
                    Ty::F64 => x.to_bits(),
                    Ty::F16 => num::f64_to_f16(x, r) as u64,
                    _ => num::f64_to_bf16(x, r) as u64,
                }
            }
        };
        let _ = x;
        if satfinite {
            match to {
                Ty::F16 if bits & 0x7fff == 0x7c00 => (bits & 0x8000) | 0x7bff,
                Ty::BF16 if bits & 0x7fff == 0x7f80 => (bits & 0x8000) | 0x7f7f,
                _ => bits,
            }
        } else {
            bits
        }
    };
    out_bits
}

fn mma_m16n8k16(w: &mut Warp, bf: bool, d: &[u32; 4], a: &[u32; 4], b: &[u32; 2], c: &[u32; 4]) {
    let mut am = [[0f64; 16]; 16];
    let mut bm = [[0f64; 8]; 16];
    let mut acc = [[0f64; 8]; 16];
    let cv = |x: u32| -> (f64, f64) { (h_to_f64(bf, x as u16), h_to_f64(bf, (x >> 16) as u16)) };
    for l in 0..32 {
        let (g, t) = (l >> 2, l & 3);
        let (x0, x1) = cv(w.r32[a[0] as usize][l]);
        am[g][2 * t] = x0;
        am[g][2 * t + 1] = x1;
        let (x0, x1) = cv(w.r32[a[1] as usize][l]);
        am[g + 8][2 * t] = x0;
        am[g + 8][2 * t + 1] = x1;
        let (x0, x1) = cv(w.r32[a[2] as usize][l]);
        am[g][2 * t + 8] = x0;
        am[g][2 * t + 9] = x1;
        let (x0, x1) = cv(w.r32[a[3] as usize][l]);
        am[g + 8][2 * t + 8] = x0;
        am[g + 8][2 * t + 9] = x1;
        let (y0, y1) = cv(w.r32[b[0] as usize][l]);
        bm[2 * t][g] = y0;
        bm[2 * t + 1][g] = y1;
        let (y0, y1) = cv(w.r32[b[1] as usize][l]);
        bm[2 * t + 8][g] = y0;
        bm[2 * t + 9][g] = y1;
        acc[g][2 * t] = f32::from_bits(w.r32[c[0] as usize][l]) as f64;
        acc[g][2 * t + 1] = f32::from_bits(w.r32[c[1] as usize][l]) as f64;
        acc[g + 8][2 * t] = f32::from_bits(w.r32[c[2] as usize][l]) as f64;
        acc[g + 8][2 * t + 1] = f32::from_bits(w.r32[c[3] as usize][l]) as f64;
    }
    for m in 0..16 {
        let row = &am[m];
        let out = &mut acc[m];
        for k in 0..16 {
            let x = row[k];
            let brow = &bm[k];
            for n in 0..8 {
                out[n] += x * brow[n];
            }
        }
    }
    for l in 0..32 {
        let (g, t) = (l >> 2, l & 3);
        w.r32[d[0] as usize][l] = (acc[g][2 * t] as f32).to_bits();
        w.r32[d[1] as usize][l] = (acc[g][2 * t + 1] as f32).to_bits();
        w.r32[d[2] as usize][l] = (acc[g + 8][2 * t] as f32).to_bits();
        w.r32[d[3] as usize][l] = (acc[g + 8][2 * t + 1] as f32).to_bits();
    }
}
