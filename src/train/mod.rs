//! Training (`pgc train`, TRAINING.md): the record's optimizer and schedule
//! around the compiled forward and backward pass.
//!
//! | part | module |
//! |---|---|
//! | hyperparameters (`--hp`, the golden files' `train` metadata) | [`hyper`] |
//! | LR warmdown (iterations or clock), Muon momentum ramp | [`schedule`] |
//! | groups, clipping, AdamW, Muon with Newton-Schulz | [`optim`] |
//! | stochastic weight averaging | [`swa`] |
//! | pruning before export | [`prune`] |
//! | checkpoints (atomic) and `--resume` | [`checkpoint`] |
//! | the trajectory file (golden layout) | [`trajectory`] |
//!
//! [`prepare`] reads the model, weights and token stream; [`Trainer`] holds
//! the state and runs one optimizer step at a time: `world_size *
//! grad_accum` micro-batches, the gradient reduction point, clipping, the
//! three optimizers, SWA. On the CPU backend (the plan executor, f64 or f32)
//! the optimizer is CPU code; on a device ([`device`]: the simulator or
//! CUDA, f32 or bf16) it is generated kernels and the state stays in device
//! memory, copied to [`Trainer::state`] by [`Trainer::sync`].

pub mod checkpoint;
pub mod device;
pub mod hyper;
pub mod optim;
pub mod prune;
pub mod schedule;
pub mod state;
pub mod swa;
pub mod trajectory;

pub use hyper::Hyper;
pub use state::{Record, TrainState};

use crate::pipeline::inputs::WeightSource;
use crate::pipeline::source::{read_model, with_backward};
use crate::pipeline::{checks, input, internal, Result};
use optim::{Group, State};
use pgc_backends::cpu::{plan_exec, Real, Tensor};
use pgc_ir::{Graph, Mode};
use pgc_runtime::weights::{self, HostData};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;
use swa::Swa;

/// Where the training token stream comes from.
#[derive(Clone, Debug)]
pub enum TokenStream {
    /// A safetensors file with a 1-D int32 (or int64) `tokens` tensor.
    File(PathBuf),
    /// FineWeb shards (MODEL.md format), concatenated in name order.
    Shards(String),
}

/// What a training run is made of.
#[derive(Clone, Debug)]
pub struct TrainSpec {
    pub model: PathBuf,
    /// `--set` overrides; `batch` is added from [`TrainSpec::batch`].
    pub sets: Vec<(String, String)>,
    pub weights: WeightSource,
    pub tokens: TokenStream,
    /// Sequences per micro-batch.
    pub batch: usize,
    pub hp: Hyper,
}

/// The tokens, read front to back and wrapping to the start (TRAINING.md section 3).
#[derive(Clone, Debug)]
pub struct Stream {
    pub tokens: Vec<i32>,
}

impl Stream {
    /// `len` tokens from stream position `start` (wrapping).
    pub fn span(&self, start: u64, len: usize) -> Vec<i32> {
        let n = self.tokens.len() as u64;
        (0..len as u64).map(|i| self.tokens[((start + i) % n) as usize]).collect()
    }

    /// FNV-1a of the stream's bytes (a checkpoint names the stream it was made on).
    pub fn hash(&self) -> u64 {
        let bytes: Vec<u8> = self.tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        pgc_runtime::artifact::fnv1a64(&bytes)
    }
}

/// A run's model (with the backward pass), initial weights and tokens.
pub struct Setup {
    /// The model source (the trajectory's forward golden lowers it again in both modes).
    pub model: PathBuf,
    pub graph: Graph,
    /// Parameter names and shapes, in the graph's order (the clip norm's summation order).
    pub names: Vec<String>,
    pub shapes: Vec<Vec<usize>>,
    /// The initial weights, by name (f64).
    pub init: HashMap<String, Vec<f64>>,
    pub stream: Stream,
    pub batch: usize,
    pub seq: usize,
    /// The model constants as lowered (`--set` plus `batch`), for the output's metadata.
    pub sets: Vec<(String, String)>,
    pub hp: Hyper,
}

/// Read and check what `spec` names; lower the model in train mode (eval
/// mode when `qat` is off) with its backward pass.
pub fn prepare(spec: &TrainSpec) -> Result<Setup> {
    let hp = spec.hp.clone();
    hp.check().map_err(input)?;
    if spec.batch == 0 {
        return Err(input("--batch must be at least 1"));
    }
    let src = read_model(&spec.model)?;
    let mut sets = spec.sets.clone();
    for (_, v) in sets.iter().filter(|(k, _)| k == "batch") {
        if v.parse::<usize>().ok() != Some(spec.batch) {
            return Err(input(format!("--set batch={v} disagrees with --batch {}", spec.batch)));
        }
    }
    sets.retain(|(k, _)| k != "batch");
    sets.push(("batch".into(), spec.batch.to_string()));
    let mode = if hp.qat { Mode::Train } else { Mode::Eval };
    let fwd = src.lower(&sets, mode)?;
    let seq = fwd.constant("seq").ok_or_else(|| input(format!("{}: the model has no `seq` constant", src.path)))? as usize;
    if hp.train_seq_len != 0 && hp.train_seq_len as usize != seq {
        return Err(input(format!("--hp train_seq_len={} disagrees with the model's seq {seq} (set it with --set seq=...)", hp.train_seq_len)));
    }
    let step_tokens = hp.micro_batches() * (spec.batch * seq) as u64;
    if hp.train_batch_tokens != 0 && hp.train_batch_tokens != step_tokens {
        return Err(input(format!(
            "--hp train_batch_tokens={} disagrees with world_size {} x grad_accum {} x --batch {} x seq {seq} = {step_tokens}",
            hp.train_batch_tokens, hp.world_size, hp.grad_accum, spec.batch
        )));
    }
    let vocab = fwd.constant("vocab").ok_or_else(|| input(format!("{}: the model has no `vocab` constant", src.path)))? as usize;
    let stream = read_stream(&spec.tokens)?;
    let span = spec.batch * seq + 1;
    if stream.tokens.len() < span {
        return Err(input(format!("the token stream has {} tokens; one micro-batch needs batch {} x seq {seq} + 1 = {span}", stream.tokens.len(), spec.batch)));
    }
    if let Some(i) = stream.tokens.iter().position(|&t| t < 0 || t as usize >= vocab) {
        return Err(input(format!("token {} at stream position {i} is outside the vocabulary 0..{vocab}", stream.tokens[i])));
    }
    let init = match &spec.weights {
        WeightSource::File { path, prefix } => {
            let v = weights::load_params(path, prefix, &fwd.params).map_err(input)?;
            checks::warn_unused_tensors(path, prefix, &fwd.params);
            checks::check_finite(path, &fwd.params, &v)?;
            v
        }
        WeightSource::Random { seed, .. } => pgc_runtime::init::random_params(&fwd.params, *seed).map_err(input)?,
    };
    let names = fwd.params.iter().map(|p| p.name.clone()).collect();
    let shapes = fwd.params.iter().map(|p| p.shape.to_vec()).collect();
    let graph = with_backward(&fwd, "loss")?;
    Ok(Setup { model: spec.model.clone(), graph, names, shapes, init, stream, batch: spec.batch, seq, sets, hp })
}

fn read_stream(src: &TokenStream) -> Result<Stream> {
    let tokens = match src {
        TokenStream::File(path) => {
            let f = weights::SafeFile::open(path).map_err(input)?;
            let t = f.get("tokens", "a 1-D int32 token stream").map_err(input)?;
            if t.shape.len() != 1 {
                return Err(input(format!("{}: `tokens` has shape {:?}, expected a 1-D stream", path.display(), t.shape)));
            }
            match t.data {
                HostData::I32(v) => v,
                HostData::I64(v) => v
                    .into_iter()
                    .map(|x| i32::try_from(x).map_err(|_| input(format!("{}: token {x} does not fit int32", path.display()))))
                    .collect::<Result<_>>()?,
                _ => return Err(input(format!("{}: `tokens` must be int32 (or int64)", path.display()))),
            }
        }
        TokenStream::Shards(glob) => pgc_runtime::data::read_shards(glob).map_err(input)?.into_iter().map(i32::from).collect(),
    };
    Ok(Stream { tokens })
}

/// The forward and backward pass on the CPU plan executor, compiled once.
pub struct Executor<F: Real> {
    graph: Graph,
    plan: pgc_ir::plan::Plan,
    jit: plan_exec::jit::JitKernels,
    wanted: Vec<String>,
    _f: std::marker::PhantomData<F>,
}

impl<F: Real> Executor<F> {
    pub fn new(graph: Graph, names: &[String]) -> Result<Self> {
        let mut wanted = vec!["loss".to_string()];
        wanted.extend(names.iter().map(|n| format!("grad.{n}")));
        let refs: Vec<&str> = wanted.iter().map(String::as_str).collect();
        let rules = pgc_ir::plan::FusionRule::ALL.into_iter().collect();
        let plan = plan_exec::plan_for(&graph, &rules, Some(&refs)).map_err(input)?;
        let jit = plan_exec::jit::compile::<F>(&graph, &plan.kernels).map_err(|e| input(format!("compiling the plan's kernels: {e}")))?;
        Ok(Executor { graph, plan, jit, wanted, _f: std::marker::PhantomData })
    }

    /// Mean loss of one micro-batch and the gradients of the parameters (in `names` order).
    pub fn loss_and_grads(&self, params: &HashMap<String, Tensor<F>>, x: Vec<i32>, y: Vec<i32>, batch: usize, seq: usize) -> Result<(f64, Vec<Vec<F>>)> {
        let mut inputs = HashMap::new();
        inputs.insert("input_ids".to_string(), Tensor::<F>::int(vec![batch, seq], x));
        inputs.insert("target_ids".to_string(), Tensor::<F>::int(vec![batch, seq], y));
        let refs: Vec<&str> = self.wanted.iter().map(String::as_str).collect();
        let run = plan_exec::execute_plan_with(&self.graph, &self.plan, params, &inputs, Some(&refs), Some(&self.jit)).map_err(input)?;
        let mut out: HashMap<String, Tensor<F>> = run.outputs.into_iter().collect();
        let loss = out.get("loss").map(|t| t.to_f64_vec()[0]).ok_or_else(|| internal("the step produced no loss"))?;
        let grads = self.wanted[1..]
            .iter()
            .map(|n| out.remove(n).map(|t| t.into_float_vec()).ok_or_else(|| internal(format!("the step produced no `{n}`"))))
            .collect::<Result<_>>()?;
        Ok((loss, grads))
    }
}

/// What one step did.
#[derive(Clone, Debug)]
pub struct StepInfo {
    /// Completed steps after it.
    pub step: u64,
    pub loss: f64,
    pub lr_scale: f64,
    pub muon_momentum: f64,
    pub grad_norm: f64,
    pub seconds: f64,
    /// Of `seconds`: from the last micro-batch's loss to the updated weights
    /// (clip norm, optimizers, SWA; on a device, synchronised at its end).
    pub optimizer_seconds: f64,
    pub tokens: u64,
}

/// Where the step runs.
enum Engine<'d, F: Real> {
    Cpu(Box<Executor<F>>),
    Device(Box<device::DeviceEngine<'d>>),
}

/// A training run in host precision `F` (the CPU's working precision; on a
/// device, the precision of the host copy of the state).
pub struct Trainer<'d, F: Real> {
    pub model: PathBuf,
    pub hp: Hyper,
    pub names: Vec<String>,
    pub shapes: Vec<Vec<usize>>,
    pub groups: Vec<Group>,
    pub batch: usize,
    pub seq: usize,
    pub sets: Vec<(String, String)>,
    pub stream: Stream,
    /// The initial weights (f64), for the trajectory's `param0.*`.
    pub init: Vec<Vec<f64>>,
    pub state: TrainState<F>,
    /// The backend and precision (`f64`, `f32` on the CPU; `sim f32`, `cuda bf16`, ...): checkpoints name it.
    pub kind: String,
    engine: Engine<'d, F>,
    /// The device holds a newer state than [`Trainer::state`].
    stale: bool,
}

impl<'d, F: Real> Trainer<'d, F> {
    /// A fresh run from `setup`'s initial weights (empty optimizer state).
    pub fn new(setup: Setup) -> Result<Self> {
        let Setup { model, graph, names, shapes, init, stream, batch, seq, sets, hp } = setup;
        // Beside what one pass needs: the weights, two gradient sums, up to two
        // optimizer moments and the SWA sum, each a copy of the parameters.
        let elem = std::mem::size_of::<F>() as u128;
        let numel: u128 = shapes.iter().map(|s| s.iter().product::<usize>() as u128).sum();
        checks::check_memory("this training run (parameters, gradients, optimizer state, SWA and the largest activation)", checks::run_memory(&graph, elem) + 6 * numel * elem)?;
        let exec = Executor::new(graph, &names)?;
        Self::with_engine(model, hp, names, shapes, init, stream, batch, seq, sets, |_, _, _, _| Ok(Engine::Cpu(Box::new(exec))))
    }

    /// A fresh run on the device `program` was compiled for (`setup` is the
    /// one `program` was made from). The weights, gradients, optimizer state
    /// and SWA sums live on the device.
    pub fn on_device(setup: Setup, program: &'d device::DeviceProgram) -> Result<Self> {
        let Setup { model, graph, names, shapes, init, stream, batch, seq, sets, hp } = setup;
        if graph.params.len() != program.graph.params.len() || graph.params.iter().zip(&program.graph.params).any(|(a, b)| a.name != b.name || a.shape != b.shape) {
            return Err(internal("the device program was compiled from another model"));
        }
        let dev_hp = hp.clone();
        Self::with_engine(model, hp, names, shapes, init, stream, batch, seq, sets, move |names, shapes, groups, init| {
            Ok(Engine::Device(Box::new(device::DeviceEngine::new(program, &dev_hp, names, shapes, groups, init)?)))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn with_engine(
        model: PathBuf,
        hp: Hyper,
        names: Vec<String>,
        shapes: Vec<Vec<usize>>,
        init: HashMap<String, Vec<f64>>,
        stream: Stream,
        batch: usize,
        seq: usize,
        sets: Vec<(String, String)>,
        engine: impl FnOnce(&[String], &[Vec<usize>], &[Group], &[Vec<f64>]) -> Result<Engine<'d, F>>,
    ) -> Result<Self> {
        let groups: Vec<Group> = names.iter().zip(&shapes).map(|(n, s)| Group::of(n, s)).collect();
        let init: Vec<Vec<f64>> = names.iter().map(|n| init[n].clone()).collect();
        let engine = engine(&names, &shapes, &groups, &init)?;
        let params = init.iter().map(|v| v.iter().map(|&x| F::from_f64(x)).collect()).collect();
        let opt = groups.iter().zip(&init).map(|(&g, v)| State::new(g, v.len())).collect();
        let state = TrainState { step: 0, clock_ms: 0.0, loader_pos: 0, stop_after: None, params, opt, swa: Swa::default(), record: Record::default(), first: None };
        let kind = match &engine {
            Engine::Cpu(_) => F::NAME.to_string(),
            Engine::Device(d) => d.label().to_string(),
        };
        Ok(Trainer { model, hp, names, shapes, groups, batch, seq, sets, stream, init, state, kind, engine, stale: false })
    }

    /// The device engine's optimizer launches so far (0 on the CPU).
    pub fn optimizer_launches(&self) -> u64 {
        match &self.engine {
            Engine::Cpu(_) => 0,
            Engine::Device(d) => d.optimizer_launches(),
        }
    }

    /// Make [`Trainer::state`] current (a device run copies its state to the host).
    pub fn sync(&mut self) -> Result<()> {
        if let (Engine::Device(d), true) = (&self.engine, self.stale) {
            d.download(&mut self.state)?;
        }
        self.stale = false;
        Ok(())
    }

    /// [`Trainer::state`] was replaced (a resumed run): a device run uploads it.
    pub fn state_replaced(&mut self) -> Result<()> {
        if let Engine::Device(d) = &mut self.engine {
            d.upload(&self.state)?;
        }
        self.stale = false;
        Ok(())
    }

    /// Tokens of one optimizer step (inputs; each span also reads one more target).
    pub fn tokens_per_step(&self) -> u64 {
        self.hp.micro_batches() * (self.batch * self.seq) as u64
    }

    /// The run the hyperparameters describe is over: `iterations` steps, or the clock's cap reached.
    pub fn finished(&self) -> bool {
        self.state.step >= self.hp.iterations || self.state.stop_after.is_some_and(|s| self.state.step >= s)
    }

    /// Training time before the next step (ms): simulated or measured.
    pub fn elapsed_ms(&self) -> f64 {
        schedule::elapsed_ms(&self.hp, self.state.step, self.state.clock_ms)
    }

    /// One optimizer step (TRAINING.md section 7). A non-finite loss or
    /// gradient norm stops it before any update, leaving the state as it was.
    pub fn step(&mut self) -> Result<StepInfo> {
        let t0 = Instant::now();
        let hp = &self.hp;
        let st = &mut self.state;
        let exec = match &mut self.engine {
            Engine::Device(d) => return Self::device_step(hp, &self.groups, &self.stream, self.batch, self.seq, st, d, &mut self.stale, t0),
            Engine::Cpu(exec) => exec,
        };
        let t = st.step;
        let scale = schedule::lr_scale(hp, t, schedule::elapsed_ms(hp, t, st.clock_ms));
        let (ws, ga) = (hp.world_size, hp.grad_accum);
        let span = self.batch * self.seq + 1;
        let params: HashMap<String, Tensor<F>> =
            self.names.iter().zip(&self.shapes).zip(&st.params).map(|((n, s), v)| (n.clone(), Tensor::float(s.clone(), v.clone()))).collect();
        // Rank r's micro-step m reads span m * world_size + r (section 3); each
        // rank sums its micro-steps' gradients / grad_accum, as DDP's local
        // accumulation does.
        let mut losses = Vec::with_capacity((ws * ga) as usize);
        let mut total: Option<Vec<Vec<F>>> = None;
        for r in 0..ws {
            let mut local: Option<Vec<Vec<F>>> = None;
            for m in 0..ga {
                let u = self.stream.span(st.loader_pos + (m * ws + r) * span as u64, span);
                let (x, y) = (u[..span - 1].to_vec(), u[1..].to_vec());
                let (loss, g) = exec.loss_and_grads(&params, x, y, self.batch, self.seq)?;
                losses.push(loss);
                accumulate(&mut local, g, F::from_f64(1.0 / ga as f64));
            }
            // The gradient reduction point: data parallel all-reduces `local` here.
            accumulate(&mut total, local.expect("grad_accum >= 1"), F::ONE);
        }
        let t_opt = Instant::now();
        let mut grads = total.expect("world_size >= 1");
        let inv_ws = F::from_f64(1.0 / ws as f64);
        grads.iter_mut().flatten().for_each(|x| *x *= inv_ws);
        let loss = losses.iter().sum::<f64>() / losses.len() as f64;
        let mu = schedule::muon_momentum(hp, t);
        let gnorm = optim::clip(&mut grads, hp.grad_clip_norm);
        if !loss.is_finite() || !gnorm.is_finite() {
            return Err(input(format!("step {t}: the loss is {loss} and the gradient norm {gnorm}: training diverged (lower the learning rates?)")));
        }
        for (((p, g), s), (group, shape)) in st.params.iter_mut().zip(&grads).zip(st.opt.iter_mut()).zip(self.groups.iter().zip(&self.shapes)) {
            let lr = group.base_lr(hp) * scale;
            match group {
                Group::Muon => optim::muon(hp, p, g, shape[0], shape[1], s, lr, mu),
                _ => optim::adamw(hp, p, g, s, lr),
            }
        }
        st.step += 1;
        st.loader_pos = (st.loader_pos + ws * ga * span as u64) % self.stream.tokens.len() as u64;
        if st.step == 1 {
            st.first = Some(st.params.clone());
        }
        if Swa::<F>::due(hp, st.step, scale) {
            st.swa.collect(&st.params);
        }
        let tokens = hp.micro_batches() * (self.batch * self.seq) as u64;
        Ok(finish_step(hp, st, t0, t_opt, loss, scale, mu, gnorm, tokens))
    }

    /// [`Trainer::step`] on a device: the micro-batches' gradients summed on
    /// the device (weight `1 / (grad_accum * world_size)` each: the
    /// reduction point is this sum), the clip norm from their sums of
    /// squares, the updates as kernels.
    #[allow(clippy::too_many_arguments)]
    fn device_step(
        hp: &Hyper,
        groups: &[Group],
        stream: &Stream,
        batch: usize,
        seq: usize,
        st: &mut TrainState<F>,
        d: &mut device::DeviceEngine<'d>,
        stale: &mut bool,
        t0: Instant,
    ) -> Result<StepInfo> {
        let t = st.step;
        let scale = schedule::lr_scale(hp, t, schedule::elapsed_ms(hp, t, st.clock_ms));
        let (ws, ga) = (hp.world_size, hp.grad_accum);
        let span = batch * seq + 1;
        let w = (1.0 / (ga * ws) as f64) as f32;
        let mut losses = Vec::with_capacity((ws * ga) as usize);
        for r in 0..ws {
            for m in 0..ga {
                let u = stream.span(st.loader_pos + (m * ws + r) * span as u64, span);
                losses.push(d.micro_batch(&u[..span - 1], &u[1..], w, r == 0 && m == 0)?);
            }
        }
        let t_opt = Instant::now();
        let loss = losses.iter().sum::<f64>() / losses.len() as f64;
        let mu = schedule::muon_momentum(hp, t);
        // The CPU's clip (optim::clip) in f32: per-tensor norms, then their norm.
        let norms: Vec<f64> = d.grad_sumsq()?.into_iter().map(|s| (s.sqrt() as f32) as f64).collect();
        let total = (norms.iter().map(|n| n * n).sum::<f64>().sqrt()) as f32;
        let gscale = if hp.grad_clip_norm > 0.0 { (hp.grad_clip_norm as f32 / (total + 1e-6f32)).min(1.0) } else { 1.0 };
        let gnorm = total as f64;
        if !loss.is_finite() || !gnorm.is_finite() {
            return Err(input(format!("step {t}: the loss is {loss} and the gradient norm {gnorm}: training diverged (lower the learning rates?)")));
        }
        d.update(hp, groups, &mut st.opt, scale, mu, gscale)?;
        *stale = true;
        st.step += 1;
        st.loader_pos = (st.loader_pos + ws * ga * span as u64) % stream.tokens.len() as u64;
        if st.step == 1 {
            st.first = Some(d.weights()?);
        }
        if Swa::<F>::due(hp, st.step, scale) {
            d.swa_collect()?;
            st.swa.count += 1;
        }
        d.synchronize()?;
        let tokens = hp.micro_batches() * (batch * seq) as u64;
        Ok(finish_step(hp, st, t0, t_opt, loss, scale, mu, gnorm, tokens))
    }

    /// The weights training ends with (the SWA average when it took more than one snapshot).
    pub fn final_weights(&self) -> Vec<Vec<F>> {
        self.state.swa.final_weights(&self.state.params)
    }
}

/// The end of a step on any engine: the records, the clock and the cap.
#[allow(clippy::too_many_arguments)]
fn finish_step<F: Real>(hp: &Hyper, st: &mut TrainState<F>, t0: Instant, t_opt: Instant, loss: f64, scale: f64, mu: f64, gnorm: f64, tokens: u64) -> StepInfo {
    let optimizer_seconds = t_opt.elapsed().as_secs_f64();
    for (v, x) in [(&mut st.record.loss, loss), (&mut st.record.lr_scale, scale), (&mut st.record.muon_momentum, mu), (&mut st.record.grad_norm, gnorm)] {
        v.push(x);
    }
    let seconds = t0.elapsed().as_secs_f64();
    st.clock_ms += 1000.0 * seconds;
    if hp.by_clock() && st.stop_after.is_none() && schedule::elapsed_ms(hp, st.step, st.clock_ms) >= 1000.0 * hp.max_wallclock_seconds {
        st.stop_after = Some(st.step);
    }
    StepInfo { step: st.step, loss, lr_scale: scale, muon_momentum: mu, grad_norm: gnorm, seconds, optimizer_seconds, tokens }
}

/// `acc += w * g` per tensor (`acc` starts as `w * g`).
fn accumulate<F: Real>(acc: &mut Option<Vec<Vec<F>>>, mut g: Vec<Vec<F>>, w: F) {
    match acc {
        None => {
            if w != F::ONE {
                g.iter_mut().flatten().for_each(|x| *x *= w);
            }
            *acc = Some(g);
        }
        Some(a) => {
            for (av, gv) in a.iter_mut().zip(&g) {
                for (x, &y) in av.iter_mut().zip(gv) {
                    *x += w * y;
                }
            }
        }
    }
}
