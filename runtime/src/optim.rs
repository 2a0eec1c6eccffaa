//! The optimizer step on a [`Device`]: the kernels of
//! `pgc_backends::ptx::templates::optim` with their buffers. Gradients are
//! accumulated into one f32 buffer per parameter, the optimizer state (AdamW
//! moments, Muon momentum) and the SWA sums live on the device between
//! steps, and the parameters are updated in place (the program executor's
//! fp32 masters). The host supplies the per-step scalars and reads back only
//! the sums of squares of the clip norm (one float per parameter).
//!
//! Muon works on one `m x n` matrix (`m <= n`; a tall gradient is transposed
//! as it is written). The matrices of one working shape share scratch with a
//! slot each, `d` (f32), `x`, `x2` (`[P, m, n]`), `a`, `b` (`[P, m, m]`) in
//! the Newton-Schulz precision, so that their Newton-Schulz GEMMs run as one
//! batched launch per GEMM ([`DeviceOptimizer::newton_schulz`]): a step is
//! [`DeviceOptimizer::muon_prepare`] for every Muon parameter, then
//! `newton_schulz`, then [`DeviceOptimizer::muon_finish`] for each.

use crate::device::{DevBuf, Device, DeviceError, KernelArg, LaunchConfig, ModuleHandle};
use pgc_backends::ptx::builder::Module;
use pgc_backends::ptx::program::entries_of;
use pgc_backends::ptx::templates::gemm::GemmKernel;
use pgc_backends::ptx::templates::optim::{self as k, NsGemms};
use pgc_ir::types::DType;
use std::collections::BTreeMap;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum OptimError {
    #[error("{what}: {source}")]
    Device {
        what: String,
        #[source]
        source: DeviceError,
    },
    #[error("optimizer kernels: {0}")]
    Kernels(String),
    #[error("{0}")]
    Bad(String),
}

pub type Result<T, E = OptimError> = std::result::Result<T, E>;

fn dev_err(what: impl Into<String>) -> impl FnOnce(DeviceError) -> OptimError {
    let what = what.into();
    move |source| OptimError::Device { what, source }
}

/// Which update a parameter gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Adam,
    /// A `rows x cols` matrix.
    Muon { rows: usize, cols: usize },
}

/// One parameter the optimizer updates.
#[derive(Clone, Debug)]
pub struct OptParam {
    pub name: String,
    pub numel: usize,
    pub role: Role,
}

/// What is fixed for a run.
#[derive(Clone, Copy, Debug)]
pub struct OptConfig {
    /// Storage of the Newton-Schulz working matrices (f32, or bf16 as the record).
    pub ns: DType,
    pub ns_coeffs: [f64; 3],
    pub ns_eps: f64,
    pub ns_steps: usize,
    pub nesterov: bool,
}

/// Per-step scalars of an AdamW update of one group (computed on the host in f64).
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub gscale: f32,
    /// `1 - lr * weight_decay`; applied when `use_decay`.
    pub decay: f32,
    pub use_decay: bool,
    pub b1: f32,
    pub b1c: f32,
    pub b2: f32,
    pub b2c: f32,
    /// `sqrt(1 - b2^k)`
    pub bias2: f32,
    pub eps: f32,
    /// `-lr / (1 - b1^k)`
    pub step: f32,
}

/// Per-step scalars of the Muon updates (one learning rate for the group).
#[derive(Clone, Copy, Debug)]
pub struct MuonStep {
    pub gscale: f32,
    pub mu: f32,
    pub decay: f32,
    pub use_decay: bool,
    /// `-lr`
    pub alpha: f32,
}

/// Scratch of one Muon working shape: a slot per matrix of that shape.
struct Work {
    d: DevBuf,
    x: DevBuf,
    x2: DevBuf,
    a: DevBuf,
    b: DevBuf,
    /// Matrices of this shape (slots).
    count: usize,
    gemms: NsGemms,
    /// The Newton-Schulz result of the last [`DeviceOptimizer::newton_schulz`] is in `x2`, not `x`.
    in_x2: bool,
}

/// The device optimizer of one training run.
pub struct DeviceOptimizer<'a> {
    dev: &'a dyn Device,
    module: ModuleHandle,
    cfg: OptConfig,
    params: Vec<OptParam>,
    grads: Vec<DevBuf>,
    /// AdamW: `[exp_avg, exp_avg_sq]`; Muon: `[momentum_buffer]`.
    state: Vec<Vec<DevBuf>>,
    swa: Vec<Option<DevBuf>>,
    /// f32 sums of squares: one per parameter (the clip norm), then one per Muon parameter (its Frobenius norm).
    norms: DevBuf,
    work: BTreeMap<(usize, usize), Work>,
    /// Muon parameter index -> its slot in `norms` after the gradient slots.
    muon_slot: Vec<usize>,
    /// Muon parameter index -> its slot in its working shape's scratch.
    work_slot: Vec<usize>,
    /// Muon norm slots summed into since the last [`DeviceOptimizer::grad_sumsq`].
    slot_used: Vec<bool>,
    /// Each element-wise kernel's last table (entries, device copy): uploaded again only when it changes.
    tables: std::collections::HashMap<&'static str, (Vec<[u64; 8]>, DevBuf)>,
    launches: u64,
}

/// The working shape `(m, n)` (`m <= n`) of a `rows x cols` matrix.
fn working(rows: usize, cols: usize) -> (usize, usize) {
    (rows.min(cols), rows.max(cols))
}

fn to_u32(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n).ok().filter(|&v| v < (1 << 31)).ok_or_else(|| OptimError::Bad(format!("{what}: {n} elements is more than the optimizer kernels index (2^31)")))
}

fn zeros(dev: &dyn Device, bytes: usize, what: &str) -> Result<DevBuf> {
    let b = dev.alloc(bytes.max(4)).map_err(dev_err(format!("allocating {what}")))?;
    dev.copy_to_device(&b, &vec![0u8; bytes.max(4)]).map_err(dev_err(format!("clearing {what}")))?;
    Ok(b)
}

impl<'a> DeviceOptimizer<'a> {
    /// Build and load the kernels and allocate the state (zero moments,
    /// zero momentum, no SWA sum).
    pub fn new(dev: &'a dyn Device, params: Vec<OptParam>, cfg: OptConfig) -> Result<Self> {
        let mut module: Module = k::elementwise_module();
        let mut shapes: BTreeMap<(usize, usize), (NsGemms, usize)> = BTreeMap::new();
        let mut work_slot = vec![usize::MAX; params.len()];
        for (i, p) in params.iter().enumerate() {
            if let Role::Muon { rows, cols } = p.role {
                if rows * cols != p.numel {
                    return Err(OptimError::Bad(format!("`{}`: {rows} x {cols} is not its {} elements", p.name, p.numel)));
                }
                let (m, n) = working(rows, cols);
                if let std::collections::btree_map::Entry::Vacant(e) = shapes.entry((m, n)) {
                    let g = k::ns_gemms(to_u32(m, &p.name)?, to_u32(n, &p.name)?, cfg.ns, cfg.ns_coeffs).map_err(|e| OptimError::Kernels(e.to_string()))?;
                    for kk in [&g.gram, &g.poly, &g.update] {
                        module.push(kk.kernel.clone());
                    }
                    e.insert((g, 0));
                }
                let entry = shapes.get_mut(&(m, n)).expect("inserted above");
                work_slot[i] = entry.1;
                entry.1 += 1;
            }
        }
        let handle = dev.load_module_with(&module.render(), &entries_of(&module)).map_err(dev_err("loading the optimizer kernels"))?;
        let es = cfg.ns.bytes() as usize;
        let mut work = BTreeMap::new();
        for ((m, n), (gemms, count)) in shapes {
            if count > 65535 {
                return Err(OptimError::Bad(format!("{count} Muon matrices of {m} x {n}: a batch is at most 65535 (grid.z)")));
            }
            let what = "Newton-Schulz scratch";
            let w = Work {
                d: zeros(dev, count * m * n * 4, what)?,
                x: zeros(dev, count * m * n * es, what)?,
                x2: zeros(dev, count * m * n * es, what)?,
                a: zeros(dev, count * m * m * es, what)?,
                b: zeros(dev, count * m * m * es, what)?,
                count,
                gemms,
                in_x2: false,
            };
            work.insert((m, n), w);
        }
        let mut grads = Vec::with_capacity(params.len());
        let mut state = Vec::with_capacity(params.len());
        let mut muon_slot = vec![usize::MAX; params.len()];
        let mut muons = 0;
        for (i, p) in params.iter().enumerate() {
            to_u32(p.numel, &p.name)?;
            grads.push(zeros(dev, p.numel * 4, &format!("the gradient of `{}`", p.name))?);
            let n_state = match p.role {
                Role::Adam => 2,
                Role::Muon { .. } => {
                    muon_slot[i] = params.len() + muons;
                    muons += 1;
                    1
                }
            };
            state.push((0..n_state).map(|_| zeros(dev, p.numel * 4, &format!("the optimizer state of `{}`", p.name))).collect::<Result<_>>()?);
        }
        let norms = zeros(dev, (params.len() + muons) * 4, "the norm sums")?;
        let swa = vec![None; params.len()];
        Ok(DeviceOptimizer { dev, module: handle, cfg, params, grads, state, swa, norms, work, muon_slot, work_slot, slot_used: vec![false; muons], tables: Default::default(), launches: 0 })
    }

    pub fn params(&self) -> &[OptParam] {
        &self.params
    }

    /// Kernel launches so far.
    pub fn launches(&self) -> u64 {
        self.launches
    }

    fn launch(&mut self, entry: &str, grid: [u32; 3], block: [u32; 3], shared: u32, args: &[KernelArg]) -> Result<()> {
        self.launches += 1;
        let cfg = LaunchConfig { grid, block, shared_bytes: shared };
        self.dev.launch(&self.module, entry, cfg, args).map_err(dev_err(format!("optimizer kernel `{entry}`")))
    }

    fn gemm(&mut self, g: &GemmLaunch, args: &[KernelArg]) -> Result<()> {
        self.launch(&g.entry, g.grid, g.block, g.shared, args)
    }

    /// One launch of element-wise kernel `entry` over the tensors of `entries`
    /// (its table, uploaded when it differs from the one cached under
    /// `entry`), with the shared `args` after the table.
    fn batch(&mut self, entry: &'static str, entries: Vec<[u64; 8]>, numels: &[usize], args: &[KernelArg]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let rows = u32::try_from(entries.len()).ok().filter(|&r| r <= 65535).ok_or_else(|| OptimError::Bad(format!("{entry}: {} tensors in one launch (at most 65535)", entries.len())))?;
        let table = match self.tables.get(entry) {
            Some((cached, buf)) if *cached == entries => *buf,
            old => {
                let bytes: Vec<u8> = entries.iter().flatten().flat_map(|w| w.to_le_bytes()).collect();
                let buf = match old {
                    Some((_, b)) if b.bytes >= bytes.len() => *b,
                    _ => {
                        if let Some((_, b)) = self.tables.remove(entry) {
                            self.dev.free(b).map_err(dev_err("freeing an optimizer table"))?;
                        }
                        self.dev.alloc(bytes.len()).map_err(dev_err(format!("allocating the table of `{entry}`")))?
                    }
                };
                self.dev.copy_to_device(&buf, &bytes).map_err(dev_err(format!("uploading the table of `{entry}`")))?;
                self.tables.insert(entry, (entries, buf));
                buf
            }
        };
        let most = numels.iter().copied().max().unwrap_or(1);
        let mut all = vec![KernelArg::Buf(table, 0)];
        all.extend_from_slice(args);
        self.launch(entry, [k::blocks(most), rows, 1], [k::THREADS, 1, 1], 0, &all)
    }

    /// The device address of byte `off` of `b`, as a table word.
    fn addr(b: DevBuf, off: u64) -> u64 {
        b.addr + off
    }

    fn norm_addr(&self, s: usize) -> u64 {
        Self::addr(self.norms, 4 * s as u64)
    }

    /// `grad[i] = (add ? grad[i] : 0) + w * src[i]` for every parameter, its
    /// gradient stored at `srcs[i] = (buffer, byte offset, f32 or bf16)`.
    pub fn accumulate(&mut self, srcs: &[(DevBuf, u64, DType)], w: f32, add: bool) -> Result<()> {
        if srcs.len() != self.params.len() {
            return Err(OptimError::Bad(format!("{} gradients for {} parameters", srcs.len(), self.params.len())));
        }
        for dtype in [DType::F32, DType::Bf16] {
            let (mut entries, mut numels) = (Vec::new(), Vec::new());
            for (i, &(src, offset, dt)) in srcs.iter().enumerate() {
                let n = self.params[i].numel;
                if dt == DType::I32 || offset + (n * dt.bytes() as usize) as u64 > src.bytes as u64 {
                    return Err(OptimError::Bad(format!("the gradient of `{}` ({n} x {dt}) does not fit its source region", self.params[i].name)));
                }
                if dt == dtype {
                    entries.push([Self::addr(self.grads[i], 0), Self::addr(src, offset), n as u64, 0, 0, 0, 0, 0]);
                    numels.push(n);
                }
            }
            self.batch(k::accum_entry(dtype), entries, &numels, &[KernelArg::F32(w), KernelArg::U32(add as u32)])?;
        }
        Ok(())
    }

    /// The sum of squares of every accumulated gradient (f32 on the device),
    /// in parameter order. Call once per step, before the Muon updates (it
    /// clears their norm slots too).
    pub fn grad_sumsq(&mut self) -> Result<Vec<f64>> {
        let n = self.params.len();
        self.dev.copy_to_device(&self.norms, &vec![0u8; self.norms.bytes]).map_err(dev_err("clearing the norm sums"))?;
        self.slot_used.iter_mut().for_each(|u| *u = false);
        let entries = (0..n).map(|i| [Self::addr(self.grads[i], 0), self.params[i].numel as u64, self.norm_addr(i), 0, 0, 0, 0, 0]).collect();
        let numels: Vec<usize> = self.params.iter().map(|p| p.numel).collect();
        self.batch(k::SUMSQ, entries, &numels, &[])?;
        let mut bytes = vec![0u8; self.norms.bytes];
        self.dev.copy_from_device(&self.norms, &mut bytes).map_err(dev_err("reading the norm sums"))?;
        Ok(bytes.chunks_exact(4).take(n).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect())
    }

    /// One AdamW update of the parameters `members` (index, its fp32
    /// weights), which share the step's scalars (one group, one step count).
    pub fn adamw(&mut self, members: &[(usize, DevBuf)], s: &AdamStep) -> Result<()> {
        let (mut entries, mut numels) = (Vec::new(), Vec::new());
        for &(i, p) in members {
            let n = self.params[i].numel;
            let (m, v) = match (self.params[i].role, self.state[i].as_slice()) {
                (Role::Adam, [m, v]) => (*m, *v),
                _ => return Err(OptimError::Bad(format!("`{}` is not an AdamW parameter", self.params[i].name))),
            };
            entries.push([Self::addr(p, 0), Self::addr(self.grads[i], 0), Self::addr(m, 0), Self::addr(v, 0), n as u64, 0, 0, 0]);
            numels.push(n);
        }
        let f = KernelArg::F32;
        let args = [f(s.gscale), f(s.decay), KernelArg::U32(s.use_decay as u32), f(s.b1), f(s.b1c), f(s.b2), f(s.b2c), f(s.bias2), f(s.eps), f(s.step)];
        self.batch(k::ADAMW, entries, &numels, &args)
    }

    /// Muon parameter `i`'s shape: rows, cols, working shape, its scratch slot.
    fn muon_shape(&self, i: usize) -> Result<(usize, usize, (usize, usize), usize)> {
        match self.params[i].role {
            Role::Muon { rows, cols } => Ok((rows, cols, working(rows, cols), self.work_slot[i])),
            Role::Adam => Err(OptimError::Bad(format!("`{}` is not a Muon parameter", self.params[i].name))),
        }
    }

    /// Byte offsets of Muon parameter `i`'s slot in its `d` and `x` scratch, and the scratch.
    fn work_of(&self, i: usize) -> Result<(usize, usize, bool, &Work, u64, u64)> {
        let (rows, cols, shape, ws) = self.muon_shape(i)?;
        let w = self.work.get(&shape).ok_or_else(|| OptimError::Bad(format!("no Newton-Schulz scratch for {} x {}", shape.0, shape.1)))?;
        let mn = (shape.0 * shape.1) as u64;
        Ok((rows, cols, rows > cols, w, ws as u64 * mn * 4, ws as u64 * mn * self.cfg.ns.bytes() as u64))
    }

    /// The first half of the Muon parameters' update (`members`, every one
    /// once per step): momentum, Nesterov, each matrix normalised by its
    /// Frobenius norm into its Newton-Schulz slot.
    pub fn muon_prepare(&mut self, members: &[usize], s: &MuonStep) -> Result<()> {
        let (mut pre, mut scale, mut numels) = (Vec::new(), Vec::new(), Vec::new());
        for &i in members {
            let slot = self.muon_slot[i];
            // grad_sumsq cleared every slot; each Muon parameter's is summed into once per step.
            if slot == usize::MAX || std::mem::replace(&mut self.slot_used[slot - self.params.len()], true) {
                return Err(OptimError::Bad(format!("`{}`: not a Muon parameter, or a second Muon update without grad_sumsq between", self.params[i].name)));
            }
            let (rows, cols, tall, w, d_off, x_off) = self.work_of(i)?;
            let n = rows * cols;
            let (d, x, norm) = (Self::addr(w.d, d_off), Self::addr(w.x, x_off), self.norm_addr(slot));
            pre.push([Self::addr(self.grads[i], 0), Self::addr(self.state[i][0], 0), d, norm, n as u64, rows as u64, cols as u64, tall as u64]);
            scale.push([d, x, norm, n as u64, 0, 0, 0, 0]);
            numels.push(n);
        }
        let u = KernelArg::U32;
        self.batch(k::MUON_PRE, pre, &numels, &[KernelArg::F32(s.gscale), KernelArg::F32(s.mu), u(self.cfg.nesterov as u32)])?;
        self.batch(k::ns_scale_entry(self.cfg.ns), scale, &numels, &[KernelArg::F32(self.cfg.ns_eps as f32)])
    }
    /// The Newton-Schulz iterations of every prepared matrix: per working
    /// shape and iteration, three batched GEMM launches (`A = X X^T`,
    /// `B = b A + c (A A)`, `X' = a X + B X`).
    pub fn newton_schulz(&mut self) -> Result<()> {
        let es = self.cfg.ns.bytes() as u64;
        let u = KernelArg::U32;
        let steps = self.cfg.ns_steps;
        let shapes: Vec<(usize, usize)> = self.work.keys().copied().collect();
        for (m, nn) in shapes {
            let w = &self.work[&(m, nn)];
            let (mu, nu, z) = (m as u32, nn as u32, w.count as u32);
            let with_z = |mut g: GemmLaunch| {
                g.grid[2] = z;
                g
            };
            let (gram, poly, update) =
                (with_z(GemmLaunch::of(&w.gemms.gram, mu, mu)), with_z(GemmLaunch::of(&w.gemms.poly, mu, mu)), with_z(GemmLaunch::of(&w.gemms.update, mu, nu)));
            let (mut x, mut x2, a, bm) = (w.x, w.x2, w.a, w.b);
            // Byte strides of one matrix in each buffer.
            let (sx, sa) = (KernelArg::U64((m * nn) as u64 * es), KernelArg::U64((m * m) as u64 * es));
            let b = |b: DevBuf| KernelArg::Buf(b, 0);
            for _ in 0..steps {
                self.gemm(&gram, &[b(x), b(x), b(a), u(mu), u(mu), u(nu), sx, sx, sa])?;
                self.gemm(&poly, &[b(a), b(a), b(bm), u(mu), u(mu), u(mu), b(a), b(bm), sa, sa, sa, sa, sa])?;
                self.gemm(&update, &[b(bm), b(x), b(x2), u(mu), u(nu), u(mu), b(x), b(x2), sa, sx, sx, sx, sx])?;
                std::mem::swap(&mut x, &mut x2);
            }
            self.work.get_mut(&(m, nn)).expect("listed above").in_x2 = steps % 2 == 1;
        }
        Ok(())
    }

    /// The second half of the Muon parameters' update (`members`: index and
    /// fp32 weights): decoupled decay and the step from each Newton-Schulz
    /// result (transposed back when tall), times the shape scale
    /// `sqrt(max(1, rows / cols))`.
    pub fn muon_finish(&mut self, members: &[(usize, DevBuf)], s: &MuonStep) -> Result<()> {
        let (mut entries, mut numels) = (Vec::new(), Vec::new());
        for &(i, p) in members {
            let (rows, cols, tall, w, _, x_off) = self.work_of(i)?;
            let result = if w.in_x2 { w.x2 } else { w.x };
            let scale = ((rows as f64 / cols as f64).max(1.0).sqrt()) as f32;
            entries.push([Self::addr(p, 0), Self::addr(result, x_off), (rows * cols) as u64, rows as u64, cols as u64, tall as u64, scale.to_bits() as u64, 0]);
            numels.push(rows * cols);
        }
        let args = [KernelArg::F32(s.decay), KernelArg::U32(s.use_decay as u32), KernelArg::F32(s.alpha)];
        self.batch(k::muon_post_entry(self.cfg.ns), entries, &numels, &args)
    }

    /// Add the weights of `members` (index, fp32 weights) to their SWA sums
    /// (a parameter's first snapshot starts its sum).
    pub fn swa_add(&mut self, members: &[(usize, DevBuf)]) -> Result<()> {
        let mut by_add: [(Vec<[u64; 8]>, Vec<usize>); 2] = Default::default();
        for &(i, p) in members {
            let n = self.params[i].numel;
            let (s, add) = match self.swa[i] {
                Some(s) => (s, true),
                None => {
                    let s = zeros(self.dev, n * 4, &format!("the SWA sum of `{}`", self.params[i].name))?;
                    self.swa[i] = Some(s);
                    (s, false)
                }
            };
            by_add[add as usize].0.push([Self::addr(s, 0), Self::addr(p, 0), n as u64, 0, 0, 0, 0, 0]);
            by_add[add as usize].1.push(n);
        }
        for (add, (entries, numels)) in by_add.into_iter().enumerate() {
            self.batch(k::SWA, entries, &numels, &[KernelArg::U32(add as u32)])?;
        }
        Ok(())
    }

    fn read(&self, b: DevBuf, n: usize, what: &str) -> Result<Vec<f32>> {
        let mut bytes = vec![0u8; n * 4];
        self.dev.copy_from_device(&b, &mut bytes).map_err(dev_err(format!("reading {what}")))?;
        Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    fn write(&self, b: DevBuf, data: &[f32], what: &str) -> Result<()> {
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.dev.copy_to_device(&b, &bytes).map_err(dev_err(format!("writing {what}")))
    }

    /// Parameter `i`'s state tensors (AdamW: exp_avg, exp_avg_sq; Muon: momentum_buffer).
    pub fn read_state(&self, i: usize) -> Result<Vec<Vec<f32>>> {
        let n = self.params[i].numel;
        self.state[i].iter().map(|&b| self.read(b, n, &format!("the optimizer state of `{}`", self.params[i].name))).collect()
    }

    /// Replace parameter `i`'s state tensors (a resumed run).
    pub fn write_state(&mut self, i: usize, tensors: &[Vec<f32>]) -> Result<()> {
        let p = &self.params[i];
        if tensors.len() != self.state[i].len() || tensors.iter().any(|t| t.len() != p.numel) {
            return Err(OptimError::Bad(format!("`{}`: the state has {} tensors of {} elements", p.name, self.state[i].len(), p.numel)));
        }
        for (b, t) in self.state[i].iter().zip(tensors) {
            self.write(*b, t, &format!("the optimizer state of `{}`", p.name))?;
        }
        Ok(())
    }

    /// Parameter `i`'s SWA sum (None before the first snapshot).
    pub fn read_swa(&self, i: usize) -> Result<Option<Vec<f32>>> {
        self.swa[i].map(|b| self.read(b, self.params[i].numel, &format!("the SWA sum of `{}`", self.params[i].name))).transpose()
    }

    /// Set parameter `i`'s SWA sum (a resumed run); None clears it.
    pub fn write_swa(&mut self, i: usize, sum: Option<&[f32]>) -> Result<()> {
        let n = self.params[i].numel;
        match sum {
            None => {
                if let Some(b) = self.swa[i].take() {
                    self.dev.free(b).map_err(dev_err("freeing an SWA sum"))?;
                }
                Ok(())
            }
            Some(v) if v.len() == n => {
                let b = match self.swa[i] {
                    Some(b) => b,
                    None => zeros(self.dev, n * 4, "an SWA sum")?,
                };
                self.swa[i] = Some(b);
                self.write(b, v, &format!("the SWA sum of `{}`", self.params[i].name))
            }
            Some(v) => Err(OptimError::Bad(format!("`{}`: an SWA sum of {} elements, expected {n}", self.params[i].name, v.len()))),
        }
    }
}

/// One GEMM launch: entry, grid for its `(m, n)`, block, dynamic shared memory.
struct GemmLaunch {
    entry: String,
    grid: [u32; 3],
    block: [u32; 3],
    shared: u32,
}

impl GemmLaunch {
    fn of(g: &GemmKernel, m: u32, n: u32) -> GemmLaunch {
        GemmLaunch { entry: g.name().to_string(), grid: g.grid(m, n), block: g.block(), shared: g.smem_bytes }
    }
}

impl Drop for DeviceOptimizer<'_> {
    fn drop(&mut self) {
        let mut bufs: Vec<DevBuf> = self.grads.drain(..).collect();
        bufs.extend(self.state.drain(..).flatten());
        bufs.extend(self.swa.drain(..).flatten());
        bufs.push(self.norms);
        bufs.extend(self.tables.drain().map(|(_, (_, b))| b));
        for w in std::mem::take(&mut self.work).into_values() {
            bufs.extend([w.d, w.x, w.x2, w.a, w.b]);
        }
        for b in bufs {
            let _ = self.dev.free(b);
        }
    }
}
