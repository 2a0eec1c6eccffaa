//! The training step on a device (the PTX simulator or CUDA): the compiled
//! forward and backward program and the optimizer kernels
//! ([`pgc_runtime::optim`]), with weights, gradients, optimizer state and
//! SWA sums kept in device memory between steps. The host sends the tokens
//! and the per-step scalars and reads back the loss and one sum of squares
//! per parameter (the clip norm); the trainer's host copy of the state is
//! refreshed only when asked ([`DeviceEngine::download`]: checkpoints,
//! validation, the trajectory, export).
//!
//! Precision: `f32` runs the program and the Newton-Schulz GEMMs in f32
//! (FFMA); `bf16` runs the program in bf16 (tensor cores, f32 accumulation)
//! and the Newton-Schulz iterations in bf16 as the record does, with f32
//! master weights, gradients, moments and SWA sums.

use super::optim::{Group, State};
use super::hyper::Hyper;
use super::state::TrainState;
use crate::pipeline::{self, input, internal, Result};
use pgc_backends::cpu::Real;
use pgc_backends::ptx::program::Program;
use pgc_ir::types::{DType, Precision};
use pgc_ir::Graph;
use pgc_runtime::device::Device;
use pgc_runtime::exec::Executor;
use pgc_runtime::optim::{AdamStep, DeviceOptimizer, MuonStep, OptConfig, OptParam, Role};
use std::collections::HashMap;

/// What the engine borrows for the whole run: the device and the compiled program.
pub struct DeviceProgram {
    pub dev: Box<dyn Device>,
    pub graph: Graph,
    pub program: Program,
    pub precision: Precision,
    /// The outputs the program stores: `loss`, then `grad.NAME` per parameter.
    pub wanted: Vec<String>,
    /// `sim f32`, `cuda bf16`, ...: what checkpoints record as the run's precision.
    pub label: String,
}

impl DeviceProgram {
    /// Plan and compile `graph` (with its backward pass) for `dev` in `precision`.
    pub fn new(dev: Box<dyn Device>, backend: &str, graph: &Graph, precision: Precision) -> Result<Self> {
        let mut wanted = vec!["loss".to_string()];
        wanted.extend(graph.params.iter().map(|p| format!("grad.{}", p.name)));
        let plan = pipeline::ptx::plan(graph, precision, &wanted, &[])?;
        let program = pipeline::ptx::compile(graph, &plan).map_err(|e| input(format!("the PTX backend cannot compile this model for training: {e}")))?;
        let label = format!("{backend} {}", if precision == Precision::Bf16 { "bf16" } else { "f32" });
        Ok(DeviceProgram { dev, graph: graph.clone(), program, precision, wanted, label })
    }
}

fn exec_err(e: impl std::fmt::Display) -> crate::pipeline::PipelineError {
    internal(format!("device: {e}"))
}

/// The device side of a [`super::Trainer`].
pub struct DeviceEngine<'d> {
    label: &'d str,
    ex: Executor<'d>,
    opt: DeviceOptimizer<'d>,
    names: Vec<String>,
}

impl<'d> DeviceEngine<'d> {
    /// Load the program and the optimizer kernels; upload the initial weights.
    pub fn new(p: &'d DeviceProgram, hp: &Hyper, names: &[String], shapes: &[Vec<usize>], groups: &[Group], init: &[Vec<f64>]) -> Result<Self> {
        let mut ex = Executor::new(p.dev.as_ref(), &p.program, &p.graph).map_err(exec_err)?;
        let params: HashMap<String, Vec<f32>> = names.iter().zip(init).map(|(n, v)| (n.clone(), v.iter().map(|&x| x as f32).collect())).collect();
        ex.set_params(&params).map_err(exec_err)?;
        let ops: Vec<OptParam> = names
            .iter()
            .zip(shapes)
            .zip(groups)
            .map(|((n, s), g)| OptParam {
                name: n.clone(),
                numel: s.iter().product(),
                role: match g {
                    Group::Muon => Role::Muon { rows: s[0], cols: s[1] },
                    _ => Role::Adam,
                },
            })
            .collect();
        let ns = if p.precision == Precision::Bf16 { DType::Bf16 } else { DType::F32 };
        let cfg = OptConfig { ns, ns_coeffs: hp.ns_coeffs, ns_eps: hp.ns_eps, ns_steps: hp.muon_backend_steps as usize, nesterov: hp.muon_nesterov };
        let opt = DeviceOptimizer::new(p.dev.as_ref(), ops, cfg).map_err(exec_err)?;
        Ok(DeviceEngine { label: &p.label, ex, opt, names: names.to_vec() })
    }

    /// Run one micro-batch and add its gradients, times `w`, into the
    /// accumulators (`first`: overwrite them). Returns the mean loss.
    pub fn micro_batch(&mut self, x: &[i32], y: &[i32], w: f32, first: bool) -> Result<f64> {
        self.ex.set_input("input_ids", x).map_err(exec_err)?;
        self.ex.set_input("target_ids", y).map_err(exec_err)?;
        self.ex.run().map_err(exec_err)?;
        let loss = self.ex.read_output("loss").map_err(exec_err)?.first().copied().ok_or_else(|| internal("the step produced no loss"))?;
        let srcs = self.names.iter().map(|n| self.ex.output_location(&format!("grad.{n}")).map_err(exec_err)).collect::<Result<Vec<_>>>()?;
        self.opt.accumulate(&srcs, w, !first).map_err(exec_err)?;
        Ok(loss as f64)
    }

    /// The sums of squares of the accumulated gradients, per parameter.
    pub fn grad_sumsq(&mut self) -> Result<Vec<f64>> {
        self.opt.grad_sumsq().map_err(exec_err)
    }

    /// The updates of one step: AdamW (`state` counts its steps on the host) and Muon.
    #[allow(clippy::too_many_arguments)]
    pub fn update<F: Real>(&mut self, hp: &Hyper, groups: &[Group], opt_state: &mut [State<F>], scale: f64, mu: f64, gscale: f32) -> Result<()> {
        // One launch per kind and group: the AdamW parameters of one group
        // and step count together, Muon in three passes (every matrix
        // prepared, the Newton-Schulz GEMMs batched by shape, every step).
        let masters = self.names.iter().map(|n| self.ex.master_buf(n).map_err(exec_err)).collect::<Result<Vec<_>>>()?;
        let mut adam: std::collections::BTreeMap<(&'static str, u64), Vec<(usize, pgc_runtime::device::DevBuf)>> = Default::default();
        let mut muon = Vec::new();
        for i in 0..self.names.len() {
            match (groups[i], &mut opt_state[i]) {
                (Group::Muon, _) => muon.push((i, masters[i])),
                (g, State::Adam { step, .. }) => {
                    *step += 1;
                    adam.entry((g.name(), *step)).or_default().push((i, masters[i]));
                }
                (_, State::Muon { .. }) => return Err(internal(format!("`{}`: AdamW on a Muon state", self.names[i]))),
            }
        }
        for ((_, k), members) in adam {
            let lr = groups[members[0].0].base_lr(hp) * scale;
            let (b1, b2, k) = (hp.beta1, hp.beta2, k as f64);
            let s = AdamStep {
                gscale,
                decay: (1.0 - lr * hp.weight_decay) as f32,
                use_decay: hp.weight_decay != 0.0,
                b1: b1 as f32,
                b1c: (1.0 - b1) as f32,
                b2: b2 as f32,
                b2c: (1.0 - b2) as f32,
                bias2: (1.0 - b2.powf(k)).sqrt() as f32,
                eps: hp.adam_eps as f32,
                step: (-lr / (1.0 - b1.powf(k))) as f32,
            };
            self.opt.adamw(&members, &s).map_err(exec_err)?;
        }
        if !muon.is_empty() {
            let lr = Group::Muon.base_lr(hp) * scale;
            let s = MuonStep { gscale, mu: mu as f32, decay: (1.0 - lr * hp.muon_weight_decay) as f32, use_decay: hp.muon_weight_decay > 0.0, alpha: (-lr) as f32 };
            let ids: Vec<usize> = muon.iter().map(|&(i, _)| i).collect();
            self.opt.muon_prepare(&ids, &s).map_err(exec_err)?;
            self.opt.newton_schulz().map_err(exec_err)?;
            self.opt.muon_finish(&muon, &s).map_err(exec_err)?;
        }
        Ok(())
    }

    /// Add the current weights to the SWA sums.
    pub fn swa_collect(&mut self) -> Result<()> {
        let members = (0..self.names.len()).map(|i| Ok((i, self.ex.master_buf(&self.names[i]).map_err(exec_err)?))).collect::<Result<Vec<_>>>()?;
        self.opt.swa_add(&members).map_err(exec_err)
    }

    /// The weights, in parameter order.
    pub fn weights<F: Real>(&self) -> Result<Vec<Vec<F>>> {
        self.names.iter().map(|n| Ok(self.ex.read_master(n).map_err(exec_err)?.into_iter().map(|x| F::from_f64(x as f64)).collect())).collect()
    }

    /// Copy the device state into `st` (weights, optimizer state, SWA sums).
    pub fn download<F: Real>(&self, st: &mut TrainState<F>) -> Result<()> {
        let to_f = |v: Vec<f32>| -> Vec<F> { v.into_iter().map(|x| F::from_f64(x as f64)).collect() };
        st.params = self.weights()?;
        for (i, s) in st.opt.iter_mut().enumerate() {
            let dev = self.opt.read_state(i).map_err(exec_err)?;
            for ((_, host), d) in s.tensors_mut().into_iter().zip(dev) {
                *host = to_f(d);
            }
        }
        st.swa.sum = if st.swa.count > 0 {
            Some((0..self.names.len()).map(|i| Ok(to_f(self.opt.read_swa(i).map_err(exec_err)?.ok_or_else(|| internal("an SWA count without a device sum"))?))).collect::<Result<_>>()?)
        } else {
            None
        };
        Ok(())
    }

    /// Replace the device state with `st` (a resumed run).
    pub fn upload<F: Real>(&mut self, st: &TrainState<F>) -> Result<()> {
        let f32s = |v: &[F]| -> Vec<f32> { v.iter().map(|x| x.to_f64() as f32).collect() };
        let params: HashMap<String, Vec<f32>> = self.names.iter().zip(&st.params).map(|(n, v)| (n.clone(), f32s(v))).collect();
        self.ex.set_params(&params).map_err(exec_err)?;
        for (i, s) in st.opt.iter().enumerate() {
            let t: Vec<Vec<f32>> = s.tensors().into_iter().map(|(_, v)| f32s(v)).collect();
            self.opt.write_state(i, &t).map_err(exec_err)?;
        }
        for i in 0..self.names.len() {
            let sum = st.swa.sum.as_ref().map(|s| f32s(&s[i]));
            self.opt.write_swa(i, sum.as_deref()).map_err(exec_err)?;
        }
        Ok(())
    }

    /// The program's backend and precision.
    pub fn label(&self) -> &str {
        self.label
    }

    /// Wait for every launch so far (the step's time then includes its kernels).
    pub fn synchronize(&self) -> Result<()> {
        self.ex.device().synchronize().map_err(exec_err)
    }

    /// Kernel launches of the optimizer so far.
    pub fn optimizer_launches(&self) -> u64 {
        self.opt.launches()
    }
}
