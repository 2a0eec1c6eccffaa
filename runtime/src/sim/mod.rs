//! The PTX simulator: parse PTX text and execute kernels on the CPU with the
//! CUDA execution model, with sanitizer checks. See `SUBSET.md` beside this
//! file for the supported PTX, the divergence model and the checks.
//!
//! ```
//! use pgc_runtime::device::{Device, DeviceExt, KernelArg, LaunchConfig};
//! use pgc_runtime::sim::SimDevice;
//! let dev = SimDevice::new();
//! let m = dev.load_module(".version 8.0\n.target sm_90a\n.address_size 64\n\
//!     .visible .entry k(.param .u64 p) { .reg .b64 %rd<2>; .reg .b32 %r<2>;\n\
//!     ld.param.u64 %rd0, [p]; mov.u32 %r0, %tid.x; mul.wide.u32 %rd1, %r0, 4;\n\
//!     add.u64 %rd0, %rd0, %rd1; st.global.u32 [%rd0], %r0; ret; }").unwrap();
//! let buf = dev.alloc(4 * 32).unwrap();
//! dev.launch(&m, "k", LaunchConfig::linear(1, 32), &[KernelArg::Buf(buf, 0)]).unwrap();
//! assert_eq!(dev.download_u32(&buf).unwrap()[31], 31);
//! ```

pub mod counters;
pub mod decode;
pub mod exec;
pub mod hopper;
pub mod mem;
pub mod num;
pub mod options;
pub mod parse;

use crate::device::{DevBuf, Device, DeviceError, KernelArg, LaunchConfig, ModuleHandle, Result};
use decode::{Kernel, Ty};
use mem::{Allocation, GlobalMem, GLOBAL_BASE, GUARD};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// The sanitizer's error types live with the device abstraction (the
// device error carries them); the simulator re-exports them.
pub use crate::device::{SimError, SimErrorKind};
pub use options::SimOptions;

/// The blocks a sampled launch runs (linear ids, `x + gx * (y + gy * z)`):
/// all of them when `n >= total`, else block 0, the last block and `n - 2`
/// distinct others drawn with a generator seeded by `seed` and `launch`.
pub fn sample_blocks(total: u64, n: u64, seed: u64, launch: u64) -> Vec<u64> {
    if n >= total {
        return (0..total).collect();
    }
    let n = n.max(1);
    let mut out = vec![0u64];
    if n >= 2 {
        out.push(total - 1);
    }
    let mut x = seed ^ launch.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491_4f6c_dd1d;
    let mut seen: std::collections::HashSet<u64> = out.iter().copied().collect();
    while (out.len() as u64) < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x % total;
        if seen.insert(b) {
            out.push(b);
        }
    }
    out
}

/// Counters of the last launch.
#[derive(Debug, Clone, Copy, Default)]
pub struct LaunchStats {
    /// sum over executed warp instructions of the active lanes
    pub thread_instructions: u64,
    pub warp_instructions: u64,
    pub blocks: u64,
    pub wall: Duration,
    pub host_threads: usize,
}

struct Module {
    kernels: Vec<Kernel>,
    /// module-scope .global variables (freed with the device)
    _globals: Vec<DevBuf>,
}

struct State {
    allocs: BTreeMap<u64, Arc<Allocation>>, // by base address
    ids: HashMap<u64, u64>,                 // id -> base
    next_addr: u64,
    next_id: u64,
    used: u64,
    modules: HashMap<u64, Arc<Module>>,
}

/// The simulated device.
pub struct SimDevice {
    state: Mutex<State>,
    opts: SimOptions,
    stats: Mutex<LaunchStats>,
    total_thread_insts: AtomicU64,
    /// with counters: one record per launch since the last take
    records: Mutex<Vec<counters::LaunchCounters>>,
    /// buffers the next launches' arguments point at (address, bytes), for
    /// extrapolating unique bytes ([`counters::extrapolate`])
    regions: Mutex<Vec<(u64, u64)>>,
    launches: AtomicU64,
}

impl Default for SimDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl SimDevice {
    pub fn new() -> Self {
        Self::with_options(SimOptions::default())
    }

    pub fn with_options(opts: SimOptions) -> Self {
        SimDevice {
            state: Mutex::new(State { allocs: BTreeMap::new(), ids: HashMap::new(), next_addr: GLOBAL_BASE, next_id: 1, used: 0, modules: HashMap::new() }),
            opts,
            stats: Mutex::new(LaunchStats::default()),
            total_thread_insts: AtomicU64::new(0),
            records: Mutex::new(Vec::new()),
            regions: Mutex::new(Vec::new()),
            launches: AtomicU64::new(0),
        }
    }

    /// The counters of every launch since the last call (empty unless
    /// [`SimOptions::counters`]).
    pub fn take_launch_counters(&self) -> Vec<counters::LaunchCounters> {
        std::mem::take(&mut *self.records.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Name the buffers (device address, bytes) the next launches read and
    /// write, for the unique-byte extrapolation of sampled launches.
    pub fn set_regions(&self, regions: Vec<(u64, u64)>) {
        *self.regions.lock().unwrap_or_else(|e| e.into_inner()) = regions;
    }

    /// Host bytes the device memory occupies (lazy allocations: pages written so far).
    pub fn resident_bytes(&self) -> u64 {
        self.lock().allocs.values().map(|a| a.resident_bytes()).sum()
    }

    pub fn options(&self) -> &SimOptions {
        &self.opts
    }

    /// Counters of the last completed launch.
    pub fn last_launch_stats(&self) -> LaunchStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Thread-instructions executed by every launch so far.
    pub fn total_thread_instructions(&self) -> u64 {
        self.total_thread_insts.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, buf: &DevBuf) -> Result<Arc<Allocation>> {
        let st = self.lock();
        match st.ids.get(&buf.id).and_then(|b| st.allocs.get(b)) {
            Some(a) if a.base == buf.addr && a.len == buf.bytes as u64 => Ok(a.clone()),
            _ => Err(DeviceError::InvalidBuffer(*buf)),
        }
    }

    fn alloc_aligned(&self, bytes: usize, align: u64) -> Result<DevBuf> {
        let mut st = self.lock();
        let len = bytes as u64;
        if st.used.saturating_add(len) > self.opts.memory_bytes {
            return Err(DeviceError::OutOfMemory { requested: bytes });
        }
        let base = st.next_addr.div_ceil(align.max(256)) * align.max(256);
        let id = st.next_id;
        let a = match self.opts.lazy_memory {
            Some(seed) => Allocation::new_lazy(id, base, len, seed),
            None => Allocation::new(id, base, len),
        }
        .ok_or(DeviceError::OutOfMemory { requested: bytes })?;
        st.next_id += 1;
        st.next_addr = base + len.max(1) + GUARD;
        st.used += len;
        st.allocs.insert(base, Arc::new(a));
        st.ids.insert(id, base);
        Ok(DevBuf { id, addr: base, bytes })
    }
}

fn ptx_err(e: parse::ParseError) -> DeviceError {
    DeviceError::Ptx { line: e.span.line, col: e.span.col, msg: e.msg }
}

impl Device for SimDevice {
    fn name(&self) -> String {
        "pgc PTX simulator".to_string()
    }

    fn alloc(&self, bytes: usize) -> Result<DevBuf> {
        self.alloc_aligned(bytes, 256)
    }

    fn free(&self, buf: DevBuf) -> Result<()> {
        self.get(&buf)?;
        let mut st = self.lock();
        st.ids.remove(&buf.id);
        st.allocs.remove(&buf.addr);
        st.used -= buf.bytes as u64;
        Ok(())
    }

    fn copy_to_device(&self, dst: &DevBuf, src: &[u8]) -> Result<()> {
        let a = self.get(dst)?;
        if src.len() > dst.bytes {
            return Err(DeviceError::CopySize { len: src.len(), bytes: dst.bytes });
        }
        a.write_all(src);
        Ok(())
    }

    fn copy_from_device(&self, src: &DevBuf, dst: &mut [u8]) -> Result<()> {
        let a = self.get(src)?;
        if dst.len() > src.bytes {
            return Err(DeviceError::CopySize { len: dst.len(), bytes: src.bytes });
        }
        a.read_all(dst);
        Ok(())
    }

    fn load_module(&self, ptx: &str) -> Result<ModuleHandle> {
        let m = parse::parse_module(ptx).map_err(ptx_err)?;
        if let Some(t) = m.target.first() {
            if !t.starts_with("sm_") {
                return Err(DeviceError::Ptx { line: 1, col: 1, msg: format!("unsupported target {t}") });
            }
        }
        let gvars = decode::module_globals(&m).map_err(ptx_err)?;
        let mut gaddr = HashMap::new();
        let mut gbufs = Vec::new();
        for g in &gvars {
            let b = self.alloc_aligned(g.size as usize, g.align as u64)?;
            if let Some(a) = self.lock().allocs.get(&b.addr) {
                a.write_all(&g.init);
            }
            gaddr.insert(g.name.clone(), b.addr);
            gbufs.push(b);
        }
        let kernels = match decode::decode_module(&m, &gaddr) {
            Ok(k) => k,
            Err(e) => {
                for b in gbufs {
                    let _ = self.free(b);
                }
                return Err(ptx_err(e));
            }
        };
        let mut st = self.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.modules.insert(id, Arc::new(Module { kernels, _globals: gbufs }));
        Ok(ModuleHandle { id })
    }

    fn launch(&self, module: &ModuleHandle, kernel: &str, cfg: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        let (m, snapshot) = {
            let st = self.lock();
            let m = st.modules.get(&module.id).cloned().ok_or(DeviceError::InvalidModule(*module))?;
            let snapshot: Vec<Arc<Allocation>> = st.allocs.values().cloned().collect();
            (m, snapshot)
        };
        let k = m.kernels.iter().find(|k| k.name == kernel).ok_or_else(|| DeviceError::UnknownKernel(kernel.to_string()))?;
        let bad = |msg: String| DeviceError::BadLaunch { kernel: kernel.to_string(), msg };
        let [bx, by, bz] = cfg.block;
        let [gx, gy, gz] = cfg.grid;
        if bx == 0 || by == 0 || bz == 0 || gx == 0 || gy == 0 || gz == 0 {
            return Err(bad(format!("zero dimension in grid {:?} / block {:?}", cfg.grid, cfg.block)));
        }
        let nthreads = bx as u64 * by as u64 * bz as u64;
        if nthreads > 1024 || bz > 64 {
            return Err(bad(format!("block {:?} has {nthreads} threads (at most 1024, z at most 64)", cfg.block)));
        }
        if gy > 65535 || gz > 65535 {
            return Err(bad("grid y and z must be at most 65535".into()));
        }
        let shared_size = k.dyn_shared_offset as u64 + cfg.shared_bytes as u64;
        let shared_size = if cfg.shared_bytes == 0 { k.static_shared as u64 } else { shared_size };
        if shared_size > 227 * 1024 {
            return Err(bad(format!("{shared_size} bytes of shared memory per block (at most 227 KiB)")));
        }
        // params
        if args.len() != k.params.len() {
            return Err(DeviceError::BadArgs { kernel: kernel.into(), msg: format!("{} arguments given, the kernel has {} parameters", args.len(), k.params.len()) });
        }
        let mut params = vec![0u8; k.param_bytes as usize];
        for (i, (a, p)) in args.iter().zip(&k.params).enumerate() {
            if let KernelArg::TensorMap(t) = a {
                if p.size != hopper::TMAP_BYTES as u32 || p.offset % 64 != 0 {
                    return Err(DeviceError::BadArgs { kernel: kernel.into(), msg: format!("argument {i} is a tensor map, but parameter `{}` is not a 64-byte aligned 128-byte array", p.name) });
                }
                t.validate().map_err(|m| DeviceError::BadArgs { kernel: kernel.into(), msg: format!("argument {i}: bad tensor map: {m}") })?;
                params[p.offset as usize..p.offset as usize + hopper::TMAP_BYTES].copy_from_slice(&hopper::encode_tmap(t));
                continue;
            }
            let (bytes, size): (u64, u32) = match a {
                KernelArg::TensorMap(_) => unreachable!(),
                KernelArg::Buf(b, off) => (b.addr.wrapping_add(*off), 8),
                KernelArg::U64(v) => (*v, 8),
                KernelArg::U32(v) => (*v as u64, 4),
                KernelArg::I32(v) => (*v as u32 as u64, 4),
                KernelArg::F32(v) => (v.to_bits() as u64, 4),
            };
            let ok_ty = match a {
                KernelArg::F32(_) => matches!(p.ty, Ty::F32 | Ty::B32),
                KernelArg::Buf(..) | KernelArg::U64(_) => matches!(p.ty, Ty::U64 | Ty::S64 | Ty::B64),
                _ => matches!(p.ty, Ty::U32 | Ty::S32 | Ty::B32),
            };
            if p.size != size || !ok_ty {
                return Err(DeviceError::BadArgs { kernel: kernel.into(), msg: format!("argument {i} ({a:?}) does not match parameter `{}` (.{:?}, {} bytes)", p.name, p.ty, p.size) });
            }
            params[p.offset as usize..(p.offset + size) as usize].copy_from_slice(&bytes.to_le_bytes()[..size as usize]);
        }
        let mem = GlobalMem { allocs: snapshot };
        let launch = exec::Launch { k, grid: cfg.grid, block: cfg.block, params, mem: &mem, shared_size: shared_size as u32, opts: &self.opts };
        let nblocks = gx as u64 * gy as u64 * gz as u64;
        let launch_no = self.launches.fetch_add(1, Ordering::Relaxed);
        let order: Option<Vec<u64>> = self.opts.sample_blocks.filter(|&n| n < nblocks).map(|n| sample_blocks(nblocks, n, self.opts.sample_seed, launch_no));
        let nrun = order.as_ref().map_or(nblocks, |o| o.len() as u64);
        let avail = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let workers = (if self.opts.threads == 0 { avail } else { self.opts.threads }).clamp(1, 256).min(nrun as usize);
        let merged: Mutex<Option<Box<counters::BlockCounters>>> = Mutex::new(None);
        let next = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let first_err: Mutex<Option<(u64, Box<SimError>)>> = Mutex::new(None);
        let tinsts = AtomicU64::new(0);
        let winsts = AtomicU64::new(0);
        let t0 = Instant::now();
        let work = || {
            let mut r = exec::BlockRunner::new(&launch);
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= nrun {
                    break;
                }
                let b = order.as_ref().map_or(i, |o| o[i as usize]);
                let ctaid = [(b % gx as u64) as u32, ((b / gx as u64) % gy as u64) as u32, (b / (gx as u64 * gy as u64)) as u32];
                if let Err(e) = r.run_block(ctaid) {
                    let mut fe = first_err.lock().unwrap_or_else(|e| e.into_inner());
                    if fe.as_ref().is_none_or(|(fb, _)| i < *fb) {
                        *fe = Some((i, e));
                    }
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
            }
            tinsts.fetch_add(r.thread_insts, Ordering::Relaxed);
            winsts.fetch_add(r.warp_insts, Ordering::Relaxed);
            if let Some(c) = r.counters.take() {
                let mut m = merged.lock().unwrap_or_else(|e| e.into_inner());
                match m.as_mut() {
                    Some(acc) => acc.merge(*c),
                    None => *m = Some(c),
                }
            }
        };
        if workers <= 1 {
            work();
        } else {
            std::thread::scope(|s| {
                for _ in 0..workers {
                    s.spawn(work);
                }
            });
        }
        let ti = tinsts.load(Ordering::Relaxed);
        self.total_thread_insts.fetch_add(ti, Ordering::Relaxed);
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) =
            LaunchStats { thread_instructions: ti, warp_instructions: winsts.load(Ordering::Relaxed), blocks: nrun, wall: t0.elapsed(), host_threads: workers };
        if let Some((_, e)) = first_err.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(DeviceError::Sim(e));
        }
        if let Some(c) = merged.into_inner().unwrap_or_else(|e| e.into_inner()) {
            let blocks_run = order.unwrap_or_else(|| (0..nblocks).collect());
            let scale = nblocks as f64 / blocks_run.len().max(1) as f64;
            let regions = self.regions.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let r = counters::extrapolate(&c.read, &regions, scale);
            let w = counters::extrapolate(&c.written, &regions, scale);
            let rec = counters::LaunchCounters {
                kernel: kernel.to_string(),
                grid: cfg.grid,
                block: cfg.block,
                blocks_total: nblocks,
                blocks_run,
                pcs: c.pcs,
                lines: k.insts.iter().map(|i| i.line).collect(),
                classes: k.insts.iter().map(|i| counters::InstClass::of(&i.inst)).collect(),
                flops: k.insts.iter().map(|i| counters::tensor_flops(&i.inst)).collect(),
                read_bytes: r.raw,
                written_bytes: w.raw,
                read_bytes_est: r.est,
                written_bytes_est: w.est,
                regions,
                region_read: r.per_region,
                region_written: w.per_region,
                outside_read: r.outside,
                outside_written: w.outside,
            };
            self.records.lock().unwrap_or_else(|e| e.into_inner()).push(rec);
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
