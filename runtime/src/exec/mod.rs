//! The program executor: runs a compiled [`Program`] (the PTX module of a
//! kernel plan and its ordered launches) on any [`Device`], the simulator or
//! CUDA, with the same code.
//!
//! ```text
//! let mut ex = Executor::new(&device, &program, &graph)?;  // module, arena, aux, masters
//! ex.set_params(&params)?;                                 // fp32 masters, uploaded once
//! ex.set_input("input_ids", &ids)?;
//! ex.run()?;                                               // zero-fills + launches, in order
//! let loss = ex.read_output("loss")?;
//! ```
//!
//! ## Memory
//! * The activation **arena**: one allocation of `plan.arena_bytes`; every
//!   [`Place::Arena`] slot and every prepared parameter copy
//!   (`Place::Param { prepared: Some(slot) }`) is `arena + slot.offset`.
//! * One fp32 **master** buffer per graph parameter (`[numel]` f32), written
//!   by [`Executor::set_params`].
//! * One buffer per graph **input** (`Place::Input`), written by
//!   [`Executor::set_input`] (i32 token ids).
//! * The program's **aux** buffers: rotary tables computed on the host (in
//!   f64, as the CPU backend computes them, then rounded to f32) and scratch.
//!
//! ## Validation
//! [`Executor::new`] resolves every launch argument and zero-fill before
//! anything runs: an argument naming a value that is not stored (fused, dead,
//! a scalar), a slot outside the arena, an unknown parameter, aux index or
//! plan kernel, or an entry missing from the module is a [`ExecError::BadProgram`]
//! naming the launch, never a panic. Launch errors name the launch index,
//! the plan kernel and the entry.
//!
//! ## Helper kernels
//! The [`Device`] trait copies whole buffers from their start; zero-fills of
//! arena slots and reads of a slot at an offset go through a small helper
//! module the executor loads beside the program (`pgc_exec_copy*`: 16-byte
//! vector accesses where aligned, bytes otherwise). The zero-fills before
//! one launch are one helper launch
//! (`pgc_exec_zero_table`: a table of regions, uploaded once, one grid row
//! per region), however many regions the program hoisted there.

mod helpers;

use crate::device::{DevBuf, Device, DeviceError, KernelArg, LaunchConfig, ModuleHandle, TensorMap, TmaDtype, TmaSwizzle};
use pgc_backends::ptx::program::{entries_of, ArgRef, AuxBuffer, LaunchStep, Program, ZeroRef};
use pgc_ir::plan::{Place, Slot};
use pgc_ir::types::DType;
use pgc_ir::{Graph, Op, ParamId, ValueId};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ExecError {
    /// The program is inconsistent (with itself, its plan or the graph).
    #[error("bad program: {0}")]
    BadProgram(String),
    #[error("loading the program's PTX module: {0}")]
    Load(#[source] DeviceError),
    /// A device operation outside a launch (allocation, copy, helper kernel).
    #[error("{what}: {source}")]
    Device {
        what: String,
        #[source]
        source: DeviceError,
    },
    #[error("launch {index} (plan kernel `{kernel}`, entry `{entry}`): {source}")]
    Launch {
        index: usize,
        kernel: String,
        entry: String,
        #[source]
        source: DeviceError,
    },
    #[error("parameters: {0}")]
    Params(String),
    #[error("input `{name}`: {msg}")]
    Input { name: String, msg: String },
    #[error("value %{value} is not stored by the plan ({place})")]
    NotStored { value: usize, place: String },
    #[error("no graph output named `{0}`")]
    UnknownOutput(String),
    #[error("not ready to run: {0}")]
    NotReady(String),
}

pub type Result<T, E = ExecError> = std::result::Result<T, E>;

fn dev_err(what: impl Into<String>) -> impl FnOnce(DeviceError) -> ExecError {
    let what = what.into();
    move |source| ExecError::Device { what, source }
}

/// A byte range of device memory: a buffer and an offset into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    buf: DevBuf,
    offset: u64,
    bytes: u64,
}

/// What one launch does, resolved against the executor's buffers.
struct Resolved {
    cfg: LaunchConfig,
    args: Vec<KernelArg>,
    zero: Vec<Region>,
    /// The zero-fills as one helper launch: byte offset of their entries in
    /// the executor's zero table, and its geometry.
    zero_launch: Option<(u64, LaunchConfig)>,
    /// (device address, bytes) of the buffer each pointer argument names
    regions: Vec<(u64, u64)>,
}

/// Counters of one [`Executor::run`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RunStats {
    /// Program launches (helper zero-fill launches not counted).
    pub launches: usize,
    /// Regions zero-filled, and the helper launches that did it (one per program launch that has any).
    pub zero_fills: usize,
    pub zero_launches: usize,
    /// Wall time of the whole run, synchronize included.
    pub wall: Duration,
}

/// Runs one [`Program`] on one [`Device`]. Owns every device buffer it
/// allocates and frees them when dropped.
pub struct Executor<'a> {
    dev: &'a dyn Device,
    program: &'a Program,
    graph: &'a Graph,
    module: ModuleHandle,
    helpers: ModuleHandle,
    arena: DevBuf,
    aux: Vec<DevBuf>,
    /// Parameter name -> (fp32 master, element count).
    masters: BTreeMap<String, (DevBuf, usize)>,
    /// Input name -> (buffer, element count, node).
    inputs: BTreeMap<String, (DevBuf, usize, ValueId)>,
    params_set: bool,
    inputs_set: BTreeMap<String, bool>,
    steps: Vec<Resolved>,
    /// Every launch's zero-fill regions as [`helpers::ZERO_TABLE`] entries.
    zero_table: Option<DevBuf>,
}

impl<'a> Executor<'a> {
    /// Check the program against its plan and the graph, load the module and
    /// the helper module, allocate the arena, the aux buffers (tables computed
    /// on the host), the parameter masters and the input buffers, and resolve
    /// every launch.
    pub fn new(dev: &'a dyn Device, program: &'a Program, graph: &'a Graph) -> Result<Self> {
        let plan = &program.plan;
        if plan.values.len() != graph.nodes.len() {
            return Err(ExecError::BadProgram(format!(
                "the plan places {} values but the graph has {} nodes (plan of another graph?)",
                plan.values.len(),
                graph.nodes.len()
            )));
        }
        check_slots(program, graph)?;
        for (i, l) in program.launches.iter().enumerate() {
            if l.plan_kernel >= plan.kernels.len() {
                return Err(ExecError::BadProgram(format!(
                    "launch {i} (entry `{}`) belongs to plan kernel {}, but the plan has {} kernels",
                    l.entry,
                    l.plan_kernel,
                    plan.kernels.len()
                )));
            }
            if program.entry(&l.entry).is_none() {
                return Err(ExecError::BadProgram(format!(
                    "launch {i} (plan kernel `{}`): no entry `{}` in the module",
                    plan.kernels[l.plan_kernel].name, l.entry
                )));
            }
        }

        // Allocate step by step; on any error, what was allocated is freed.
        let mut owned = Owned { dev, bufs: Vec::new() };
        let module = dev.load_module_with(&program.ptx(), &program.entries).map_err(ExecError::Load)?;
        let hm = helpers::module();
        let helpers = dev.load_module_with(&hm.render(), &entries_of(&hm)).map_err(dev_err("loading the executor's helper kernels"))?;
        let arena = owned.alloc(plan.arena_bytes, "the activation arena")?;
        let mut aux = Vec::with_capacity(program.aux.len());
        for (i, a) in program.aux.iter().enumerate() {
            let buf = match a {
                AuxBuffer::RopeTable { positions, half, base } => {
                    let table = rope_table(*positions, *half, *base);
                    let buf = owned.alloc(table.len() as u64 * 4, &format!("aux buffer {i} (rope table)"))?;
                    let bytes: Vec<u8> = table.iter().flat_map(|v| v.to_le_bytes()).collect();
                    dev.copy_to_device(&buf, &bytes).map_err(dev_err(format!("uploading aux buffer {i} (rope table)")))?;
                    buf
                }
                AuxBuffer::Scratch { bytes } => owned.alloc(*bytes, &format!("aux buffer {i} (scratch)"))?,
            };
            aux.push(buf);
        }
        let mut masters = BTreeMap::new();
        for p in &graph.params {
            let n = p.numel();
            let buf = owned.alloc(n as u64 * 4, &format!("the master of parameter `{}`", p.name))?;
            masters.insert(p.name.clone(), (buf, n));
        }
        let mut inputs = BTreeMap::new();
        for (i, node) in graph.nodes.iter().enumerate() {
            if let Op::Input { name, ty } = &node.op {
                if inputs.contains_key(name) {
                    continue;
                }
                let n = ty.numel();
                let buf = owned.alloc(n as u64 * 4, &format!("input `{name}`"))?;
                inputs.insert(name.clone(), (buf, n, ValueId(i as u32)));
            }
        }
        let inputs_set = inputs.keys().map(|k| (k.clone(), false)).collect();
        let mut ex = Executor {
            dev,
            program,
            graph,
            module,
            helpers,
            arena,
            aux,
            masters,
            inputs,
            params_set: graph.params.is_empty(),
            inputs_set,
            steps: Vec::new(),
            zero_table: None,
        };
        // From here on `ex` owns the buffers (its Drop frees them).
        owned.bufs.clear();
        let mut steps = Vec::with_capacity(program.launches.len());
        for (i, l) in program.launches.iter().enumerate() {
            steps.push(ex.resolve(i, l)?);
        }
        // The zero table: per launch, its regions split into 16-byte items and a 2-byte tail.
        let mut table: Vec<u8> = Vec::new();
        for (i, st) in steps.iter_mut().enumerate() {
            if st.zero.is_empty() {
                continue;
            }
            let offset = table.len() as u64;
            let mut most = 1u64;
            for r in &st.zero {
                let addr = r.buf.addr + r.offset;
                let (n16, tail) = split16(r, addr, helpers::ZERO_TABLE).map_err(|e| ExecError::BadProgram(format!("launch {i}: zero-fill: {e}")))?;
                for v in [addr, n16, addr + n16 * 16, tail / 2] {
                    table.extend(v.to_le_bytes());
                }
                most = most.max(n16).max(tail / 2);
            }
            let rows = u32::try_from(st.zero.len()).ok().filter(|&n| n <= 65535).ok_or_else(|| ExecError::BadProgram(format!("launch {i}: {} zero-fill regions (at most 65535)", st.zero.len())))?;
            let blocks = most.div_ceil(256).clamp(1, 1024) as u32;
            st.zero_launch = Some((offset, LaunchConfig { grid: [blocks, rows, 1], block: [256, 1, 1], shared_bytes: 0 }));
        }
        if !table.is_empty() {
            let buf = dev.alloc(table.len()).map_err(dev_err("allocating the zero-fill table"))?;
            ex.zero_table = Some(buf);
            dev.copy_to_device(&buf, &table).map_err(dev_err("uploading the zero-fill table"))?;
        }
        ex.steps = steps;
        Ok(ex)
    }

    pub fn program(&self) -> &Program {
        self.program
    }

    pub fn device(&self) -> &dyn Device {
        self.dev
    }

    /// Upload the fp32 master of every parameter. The names must be exactly
    /// the graph's parameters, each with its element count.
    pub fn set_params(&mut self, params: &HashMap<String, Vec<f32>>) -> Result<()> {
        for name in params.keys() {
            if !self.masters.contains_key(name) {
                return Err(ExecError::Params(format!("`{name}` is not a parameter of the model")));
            }
        }
        for p in &self.graph.params {
            let data = params.get(&p.name).ok_or_else(|| ExecError::Params(format!("`{}` is missing", p.name)))?;
            if data.len() != p.numel() {
                return Err(ExecError::Params(format!(
                    "`{}` has {} elements, the model's shape {:?} has {}",
                    p.name,
                    data.len(),
                    p.shape,
                    p.numel()
                )));
            }
        }
        for p in &self.graph.params {
            let (buf, _) = self.masters[&p.name];
            let bytes: Vec<u8> = params[&p.name].iter().flat_map(|v| v.to_le_bytes()).collect();
            self.dev.copy_to_device(&buf, &bytes).map_err(dev_err(format!("uploading parameter `{}`", p.name)))?;
        }
        self.params_set = true;
        Ok(())
    }

    /// Upload a run-time input (token ids, i32).
    pub fn set_input(&mut self, name: &str, data: &[i32]) -> Result<()> {
        let bad = |msg: String| ExecError::Input { name: name.to_string(), msg };
        let &(buf, n, v) = self.inputs.get(name).ok_or_else(|| bad("the model has no such input".into()))?;
        let ty = self.graph.ty(v);
        if ty.dtype != DType::I32 {
            return Err(bad(format!("is {}, not i32", ty.dtype)));
        }
        if data.len() != n {
            return Err(bad(format!("{} values given, the model's shape {:?} has {n}", data.len(), ty.shape)));
        }
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.dev.copy_to_device(&buf, &bytes).map_err(dev_err(format!("uploading input `{name}`")))?;
        self.inputs_set.insert(name.to_string(), true);
        Ok(())
    }

    /// Names of the graph's run-time inputs.
    pub fn input_names(&self) -> Vec<String> {
        self.inputs.keys().cloned().collect()
    }

    /// Run the program once: every launch in order, each after its zero-fills,
    /// then synchronize.
    pub fn run(&mut self) -> Result<RunStats> {
        self.run_with(&mut |_, _| {})
    }

    /// [`Executor::run`], calling `on_launch(done, total)` after each launch
    /// is issued (for a progress display; on the simulator a launch runs when
    /// issued, on a GPU it is queued).
    pub fn run_with(&mut self, on_launch: &mut dyn FnMut(usize, usize)) -> Result<RunStats> {
        if !self.params_set {
            return Err(ExecError::NotReady("the parameters are not set (set_params)".into()));
        }
        if let Some((name, _)) = self.inputs_set.iter().find(|(_, set)| !**set) {
            return Err(ExecError::NotReady(format!("input `{name}` is not set (set_input)")));
        }
        let t0 = Instant::now();
        let mut stats = RunStats::default();
        for i in 0..self.steps.len() {
            stats.zero_fills += self.steps[i].zero.len();
            stats.zero_launches += usize::from(self.steps[i].zero_launch.is_some());
            self.launch_step(i)?;
            stats.launches += 1;
            on_launch(i + 1, self.steps.len());
        }
        self.dev.synchronize().map_err(|source| {
            let (kernel, entry) = match self.program.launches.last() {
                Some(l) => (self.program.plan.kernels[l.plan_kernel].name.clone(), l.entry.clone()),
                None => (String::new(), String::new()),
            };
            ExecError::Launch { index: self.steps.len().saturating_sub(1), kernel, entry, source }
        })?;
        stats.wall = t0.elapsed();
        Ok(stats)
    }

    /// Number of launches of the program.
    pub fn launch_count(&self) -> usize {
        self.steps.len()
    }

    /// Perform launch `i` alone (its zero-fills, then the kernel), without
    /// synchronizing: for per-kernel timing.
    pub fn launch_step(&self, i: usize) -> Result<()> {
        let step = self.steps.get(i).ok_or_else(|| ExecError::BadProgram(format!("no launch {i}")))?;
        let l = &self.program.launches[i];
        let wrap = |source: DeviceError| ExecError::Launch {
            index: i,
            kernel: self.program.plan.kernels[l.plan_kernel].name.clone(),
            entry: l.entry.clone(),
            source,
        };
        if let (Some((offset, cfg)), Some(table)) = (step.zero_launch, self.zero_table) {
            self.dev.launch(&self.helpers, helpers::ZERO_TABLE, cfg, &[KernelArg::Buf(table, offset)]).map_err(wrap)?;
        }
        self.dev.launch(&self.module, &l.entry, step.cfg, &step.args).map_err(wrap)
    }

    /// The buffers (device address, bytes) launch `i`'s pointer arguments
    /// name: each value's slot, a parameter master or an aux buffer whole.
    pub fn launch_regions(&self, i: usize) -> Vec<(u64, u64)> {
        self.steps.get(i).map(|s| s.regions.clone()).unwrap_or_default()
    }

    /// The value as the graph defines it, in f32: an arena value (bf16
    /// storage widened, i32 converted), a parameter's fp32 master, an input,
    /// or a scalar constant.
    pub fn read(&self, v: ValueId) -> Result<Vec<f32>> {
        match self.program.plan.values.get(v.index()) {
            Some(Place::Param { id, .. }) => self.read_master(self.param_name(*id).map_err(ExecError::BadProgram)?),
            _ => self.read_stored(v),
        }
    }

    /// Where the plan stores the value, in f32: for a prepared parameter the
    /// bf16 copy in the arena (not the master).
    pub fn read_stored(&self, v: ValueId) -> Result<Vec<f32>> {
        let place = self.program.plan.values.get(v.index()).ok_or(ExecError::NotStored { value: v.index(), place: "no such value".into() })?;
        let numel = self.graph.ty(v).numel();
        match place {
            Place::Arena(slot) | Place::Param { prepared: Some(slot), .. } => {
                let bytes = self.read_region(Region { buf: self.arena, offset: slot.offset, bytes: slot.bytes })?;
                Ok(decode(&bytes, slot.storage, numel))
            }
            Place::Param { id, prepared: None } => self.read_master(self.param_name(*id).map_err(ExecError::BadProgram)?),
            Place::Input { name } => {
                let (buf, n, _) = self.inputs[name];
                let mut bytes = vec![0u8; n * 4];
                self.dev.copy_from_device(&buf, &mut bytes).map_err(dev_err(format!("reading input `{name}`")))?;
                Ok(decode(&bytes, DType::I32, n))
            }
            Place::Scalar { value } => Ok(vec![*value as f32]),
            other => Err(ExecError::NotStored { value: v.index(), place: place_name(other) }),
        }
    }

    /// A graph output (`loss`, `logits`, `grad.NAME`), in f32.
    pub fn read_output(&self, name: &str) -> Result<Vec<f32>> {
        let v = self.graph.output(name).ok_or_else(|| ExecError::UnknownOutput(name.to_string()))?;
        self.read(v).map_err(|e| match e {
            ExecError::NotStored { value, place } => {
                ExecError::NotStored { value, place: format!("{place}; output `{name}` was not requested when planning") }
            }
            e => e,
        })
    }

    /// The device buffer of parameter `name`'s fp32 master (`[numel]` f32),
    /// for kernels outside the program that update it in place (the optimizer).
    pub fn master_buf(&self, name: &str) -> Result<DevBuf> {
        self.masters.get(name).map(|&(b, _)| b).ok_or_else(|| ExecError::Params(format!("`{name}` is not a parameter of the model")))
    }

    /// Where the graph output `name` is stored after a run: the buffer, the
    /// byte offset into it and the element type (an arena slot or a
    /// parameter master), for kernels that read it in place.
    pub fn output_location(&self, name: &str) -> Result<(DevBuf, u64, DType)> {
        let v = self.graph.output(name).ok_or_else(|| ExecError::UnknownOutput(name.to_string()))?;
        match self.program.plan.values.get(v.index()) {
            Some(Place::Arena(slot)) => Ok((self.arena, slot.offset, slot.storage)),
            Some(Place::Param { id, prepared: None }) => Ok((self.master_buf(self.param_name(*id).map_err(ExecError::BadProgram)?)?, 0, DType::F32)),
            Some(other) => Err(ExecError::NotStored { value: v.index(), place: format!("{}; output `{name}` is not in device memory", place_name(other)) }),
            None => Err(ExecError::NotStored { value: v.index(), place: "no such value".into() }),
        }
    }

    /// A parameter's fp32 master.
    /// The name of parameter `id` (the plan may come from a file: checked).
    fn param_name(&self, id: ParamId) -> std::result::Result<&'a str, String> {
        let graph: &'a Graph = self.graph;
        graph.params.get(id.index()).map(|p| p.name.as_str()).ok_or_else(|| format!("no parameter #{} in the graph", id.0))
    }

    pub fn read_master(&self, name: &str) -> Result<Vec<f32>> {
        let &(buf, n) = self.masters.get(name).ok_or_else(|| ExecError::Params(format!("`{name}` is not a parameter of the model")))?;
        let mut bytes = vec![0u8; n * 4];
        self.dev.copy_from_device(&buf, &mut bytes).map_err(dev_err(format!("reading parameter `{name}`")))?;
        Ok(decode(&bytes, DType::F32, n))
    }

    /// Aux buffer `i` read as f32 values (tables, scratch), for inspection.
    pub fn read_aux(&self, i: usize) -> Result<Vec<f32>> {
        let buf = *self.aux.get(i).ok_or_else(|| ExecError::BadProgram(format!("no aux buffer {i} (the program has {})", self.aux.len())))?;
        let n = match &self.program.aux[i] {
            AuxBuffer::RopeTable { positions, half, .. } => 2 * positions * half * 4,
            AuxBuffer::Scratch { bytes } => *bytes as usize,
        };
        let mut bytes = vec![0u8; n];
        self.dev.copy_from_device(&buf, &mut bytes).map_err(dev_err(format!("reading aux buffer {i}")))?;
        Ok(decode(&bytes, DType::F32, n / 4))
    }

    fn resolve(&self, i: usize, l: &LaunchStep) -> Result<Resolved> {
        let kernel = &self.program.plan.kernels[l.plan_kernel].name;
        let bad = |msg: String| ExecError::BadProgram(format!("launch {i} (plan kernel `{kernel}`, entry `{}`): {msg}", l.entry));
        let mut args = Vec::with_capacity(l.args.len());
        let mut regions = Vec::new();
        for (j, a) in l.args.iter().enumerate() {
            if let ArgRef::TensorMap { of, rows, cols, box_rows, box_cols } = a {
                let (buf, offset) = match self.resolve_pointer(of) {
                    Ok(x) => x,
                    Err(m) => return Err(bad(format!("argument {j}: {m}"))),
                };
                regions.push((buf.addr + offset, (*rows as u64 * *cols as u64 * 2).min(buf.bytes as u64 - offset.min(buf.bytes as u64))));
                let t = TensorMap::matrix(&buf, offset, TmaDtype::Bf16, *rows as u64, *cols as u64, *cols as u64 * 2, *box_rows, *box_cols, TmaSwizzle::B128)
                    .map_err(|m| bad(format!("argument {j}: tensor map: {m}")))?;
                args.push(KernelArg::TensorMap(t));
                continue;
            }
            args.push(match a {
                ArgRef::TensorMap { .. } => unreachable!(),
                ArgRef::Value(v) => {
                    let r = self.value_region(*v).map_err(|m| bad(format!("argument {j}: {m}")))?;
                    regions.push((r.buf.addr + r.offset, r.bytes));
                    KernelArg::Buf(r.buf, r.offset)
                }
                ArgRef::ParamMaster(id) => {
                    let name = self.param_name(*id).map_err(|e| bad(format!("argument {j}: {e}")))?;
                    let (buf, _) = self.masters.get(name).ok_or_else(|| bad(format!("argument {j}: no parameter `{name}`")))?;
                    regions.push((buf.addr, buf.bytes as u64));
                    KernelArg::Buf(*buf, 0)
                }
                ArgRef::Aux(k) => {
                    let buf = self.aux.get(*k).ok_or_else(|| bad(format!("argument {j}: aux buffer {k} of {}", self.aux.len())))?;
                    regions.push((buf.addr, buf.bytes as u64));
                    KernelArg::Buf(*buf, 0)
                }
                ArgRef::U32(x) => KernelArg::U32(*x),
                ArgRef::I32(x) => KernelArg::I32(*x),
                ArgRef::U64(x) => KernelArg::U64(*x),
                ArgRef::F32(x) => KernelArg::F32(*x),
            });
        }
        let mut zero = Vec::with_capacity(l.zero_first.len());
        for z in &l.zero_first {
            zero.push(match z {
                ZeroRef::Value(v) => self.value_region(*v).map_err(|m| bad(format!("zero-fill: {m}")))?,
                ZeroRef::Aux(k) => {
                    let buf = *self.aux.get(*k).ok_or_else(|| bad(format!("zero-fill: aux buffer {k} of {}", self.aux.len())))?;
                    Region { buf, offset: 0, bytes: buf.bytes as u64 }
                }
            });
        }
        if l.grid.contains(&0) || l.block.contains(&0) {
            return Err(bad(format!("empty launch: grid {:?}, block {:?}", l.grid, l.block)));
        }
        Ok(Resolved { cfg: LaunchConfig { grid: l.grid, block: l.block, shared_bytes: l.shared_bytes }, args, zero, zero_launch: None, regions })
    }

    /// The buffer and byte offset a pointer argument names.
    fn resolve_pointer(&self, a: &ArgRef) -> std::result::Result<(DevBuf, u64), String> {
        match a {
            ArgRef::Value(v) => self.value_region(*v).map(|r| (r.buf, r.offset)),
            ArgRef::ParamMaster(id) => {
                let name = self.param_name(*id).map_err(|e| e.to_string())?;
                self.masters.get(name).map(|(b, _)| (*b, 0)).ok_or_else(|| format!("no parameter `{name}`"))
            }
            ArgRef::Aux(k) => self.aux.get(*k).map(|b| (*b, 0)).ok_or_else(|| format!("aux buffer {k} of {}", self.aux.len())),
            other => Err(format!("{other:?} is not a pointer")),
        }
    }

    /// Where a value lives in device memory.
    fn value_region(&self, v: ValueId) -> std::result::Result<Region, String> {
        let place = self.program.plan.values.get(v.index()).ok_or_else(|| format!("%{} is not a value of the graph", v.index()))?;
        let what = || format!("%{} ({})", v.index(), self.graph.nodes[v.index()].op.name());
        match place {
            Place::Arena(s) | Place::Param { prepared: Some(s), .. } => Ok(Region { buf: self.arena, offset: s.offset, bytes: s.bytes }),
            Place::Param { id, prepared: None } => {
                let name = self.param_name(*id).map_err(|e| format!("{}: {e}", what()))?;
                let (buf, n) = self.masters.get(name).ok_or_else(|| format!("{}: no parameter `{name}` in the graph", what()))?;
                Ok(Region { buf: *buf, offset: 0, bytes: *n as u64 * 4 })
            }
            Place::Input { name } => {
                let (buf, n, _) = self.inputs.get(name).ok_or_else(|| format!("{}: no input `{name}` in the graph", what()))?;
                Ok(Region { buf: *buf, offset: 0, bytes: *n as u64 * 4 })
            }
            other => Err(format!("{} is not stored by the plan ({}): a kernel cannot point at it", what(), place_name(other))),
        }
    }

    /// Copy a region to the host (through a staging buffer unless it starts the buffer).
    fn read_region(&self, r: Region) -> Result<Vec<u8>> {
        let mut out = vec![0u8; r.bytes as usize];
        if r.bytes == 0 {
            return Ok(out);
        }
        if r.offset == 0 {
            self.dev.copy_from_device(&r.buf, &mut out).map_err(dev_err("reading the arena"))?;
            return Ok(out);
        }
        let staging = self.dev.alloc(r.bytes as usize).map_err(dev_err("allocating a staging buffer"))?;
        let copied = (|| -> std::result::Result<(), DeviceError> {
            let (n16, tail) = split16(&r, r.buf.addr + r.offset, helpers::COPY2)?;
            if n16 > 0 {
                let args = [KernelArg::Buf(staging, 0), KernelArg::Buf(r.buf, r.offset), KernelArg::U64(n16)];
                self.dev.launch(&self.helpers, helpers::COPY16, helper_cfg(n16), &args)?;
            }
            if tail > 0 {
                let args = [KernelArg::Buf(staging, n16 * 16), KernelArg::Buf(r.buf, r.offset + n16 * 16), KernelArg::U64(tail / 2)];
                self.dev.launch(&self.helpers, helpers::COPY2, helper_cfg(tail / 2), &args)?;
            }
            self.dev.synchronize()?;
            self.dev.copy_from_device(&staging, &mut out)
        })();
        let freed = self.dev.free(staging);
        copied.map_err(dev_err(format!("reading {} bytes at arena offset {}", r.bytes, r.offset)))?;
        freed.map_err(dev_err("freeing a staging buffer"))?;
        Ok(out)
    }
}

impl Drop for Executor<'_> {
    fn drop(&mut self) {
        let mut bufs = vec![self.arena];
        bufs.extend(self.zero_table);
        bufs.extend(self.aux.iter().copied());
        bufs.extend(self.masters.values().map(|(b, _)| *b));
        bufs.extend(self.inputs.values().map(|(b, _, _)| *b));
        for b in bufs {
            let _ = self.dev.free(b);
        }
    }
}

/// Buffers allocated while building an executor, freed if building fails.
struct Owned<'a> {
    dev: &'a dyn Device,
    bufs: Vec<DevBuf>,
}

impl Owned<'_> {
    fn alloc(&mut self, bytes: u64, what: &str) -> Result<DevBuf> {
        let n = usize::try_from(bytes).map_err(|_| ExecError::BadProgram(format!("{what}: {bytes} bytes")))?;
        // Zero-byte buffers still get a handle (and a valid address).
        let b = self.dev.alloc(n.max(1)).map_err(dev_err(format!("allocating {what} ({bytes} bytes)")))?;
        self.bufs.push(b);
        Ok(b)
    }
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        for b in self.bufs.drain(..) {
            let _ = self.dev.free(b);
        }
    }
}

/// Every stored slot lies inside the arena and has its value's size.
fn check_slots(program: &Program, graph: &Graph) -> Result<()> {
    let plan = &program.plan;
    for (i, place) in plan.values.iter().enumerate() {
        let slot: Slot = match place {
            Place::Arena(s) | Place::Param { prepared: Some(s), .. } => *s,
            _ => continue,
        };
        let numel = graph.nodes[i].ty.numel() as u64;
        if slot.offset.checked_add(slot.bytes).is_none_or(|end| end > plan.arena_bytes) {
            return Err(ExecError::BadProgram(format!(
                "%{i}: slot [{}, +{}) lies outside the arena of {} bytes",
                slot.offset, slot.bytes, plan.arena_bytes
            )));
        }
        if slot.bytes != numel * u64::from(slot.storage.bytes()) {
            return Err(ExecError::BadProgram(format!(
                "%{i}: slot of {} bytes for {numel} {:?} elements",
                slot.bytes, slot.storage
            )));
        }
    }
    Ok(())
}

fn place_name(p: &Place) -> String {
    match p {
        Place::Input { .. } => "an input".into(),
        Place::Param { .. } => "a parameter".into(),
        Place::Scalar { value } => format!("the scalar constant {value}"),
        Place::Arena(_) => "in the arena".into(),
        Place::Fused => "fused: computed inside its kernel, never stored".into(),
        Place::Dead => "dead: computed by no kernel".into(),
    }
}

/// Stored bytes -> f32 values.
fn decode(bytes: &[u8], storage: DType, numel: usize) -> Vec<f32> {
    match storage {
        DType::F32 => bytes.chunks_exact(4).take(numel).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        DType::I32 => bytes.chunks_exact(4).take(numel).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32).collect(),
        DType::Bf16 => {
            bytes.chunks_exact(2).take(numel).map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
        }
    }
}

/// The rotary table of [`AuxBuffer::RopeTable`]: `cos[t][j]` then `sin[t][j]`,
/// f32, angle `t * inv[j]` with `inv[j] = 1 / base^(2j / (2 half))` in f64
/// (as the CPU backend's `rope_tables` in f64).
pub fn rope_table(positions: usize, half: usize, base: f64) -> Vec<f32> {
    let hd = (2 * half) as f64;
    let inv: Vec<f64> = (0..half).map(|j| 1.0 / base.powf((2 * j) as f64 / hd)).collect();
    let mut out = vec![0f32; 2 * positions * half];
    let (cos, sin) = out.split_at_mut(positions * half);
    for t in 0..positions {
        for j in 0..half {
            let a = t as f64 * inv[j];
            cos[t * half + j] = a.cos() as f32;
            sin[t * half + j] = a.sin() as f32;
        }
    }
    out
}

/// A region at device address `addr` as 16-byte items and a tail of 2-byte
/// items (all 2-byte items when `addr` is not 16-byte aligned).
fn split16(r: &Region, addr: u64, kernel: &str) -> std::result::Result<(u64, u64), DeviceError> {
    if !r.bytes.is_multiple_of(2) || !addr.is_multiple_of(2) {
        let msg = format!("region of {} bytes at {addr:#x} is not made of 2-byte elements", r.bytes);
        return Err(DeviceError::BadArgs { kernel: kernel.into(), msg });
    }
    Ok(if addr.is_multiple_of(16) { (r.bytes / 16, r.bytes % 16) } else { (0, r.bytes) })
}

fn helper_cfg(items: u64) -> LaunchConfig {
    let blocks = items.div_ceil(256).clamp(1, 1024) as u32;
    LaunchConfig::linear(blocks, 256)
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_table_layout() {
        let t = rope_table(3, 2, 10000.0);
        assert_eq!(t.len(), 12);
        // t = 0: cos 1, sin 0
        assert_eq!(&t[0..2], &[1.0, 1.0]);
        assert_eq!(&t[6..8], &[0.0, 0.0]);
        // t = 1, j = 0: angle 1
        assert_eq!(t[2], 1f64.cos() as f32);
        assert_eq!(t[8], 1f64.sin() as f32);
        // t = 2, j = 1: angle 2 / 100
        assert_eq!(t[5], (2.0f64 / 100.0).cos() as f32);
        assert_eq!(t[11], (2.0f64 / 100.0).sin() as f32);
    }

    #[test]
    fn helper_entries_are_described() {
        let e: Vec<String> = entries_of(&helpers::module()).into_iter().map(|e| e.name).collect();
        assert_eq!(e, [helpers::COPY16, helpers::COPY2, helpers::ZERO_TABLE]);
    }
}
