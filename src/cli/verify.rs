//! `pgc verify`: the model's PTX program on a device (the simulator or a
//! CUDA GPU) against the CPU backend in f64, on random weights (the model's
//! seeded training initialisation, rounded to f32 so both sides see the same
//! numbers) and random tokens.
//!
//! Prints one row per output (loss, logits, and in train mode `grad.NAME` per
//! parameter): `max|a-b|`, `max|b|`, the relative error `max|a-b| / max|b|`
//! (b: the CPU reference) and its limit. bf16 is judged by the numerics
//! contract: per tensor `err <= 3 * yardstick + 4e-3`, the yardstick being
//! the error of PyTorch's bf16 autocast emulated on the CPU (`pgc run
//! --backend cpu --precision bf16`) against the same reference; the rows
//! show both errors and their ratio, and the median ratio follows. f32 uses
//! a fixed 1e-4; `--tol` sets a fixed tolerance for either. Exit 1 when any
//! tensor fails (a non-finite error fails), 0 when all pass, 2 on bad input
//! or when the device is missing.

use super::run::{self, ModeArg};
use pgc::pipeline::cpu::CpuExecutor;
use pgc::pipeline::inputs::{self, RunInputs, RunSpec};
use pgc::pipeline::{cpu, ptx};
use super::{CliResult, Failure};
use pgc_runtime::sim::SimDevice;
use pgc_runtime::weights::HostData;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// The PTX simulator on the CPU.
    Sim,
    /// The first CUDA GPU.
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PtxPrecision {
    /// bf16 tensor-core kernels with fp32 accumulation.
    Bf16,
    /// The all-fp32 debugging mode of the PTX backend.
    F32,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The model source (.pgdsl).
    pub model: PathBuf,
    /// Override a model constant, e.g. `--set layers=2`. Repeatable.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
    #[arg(long, value_enum)]
    pub backend: DeviceArg,
    /// Batch size of the random tokens.
    #[arg(long, value_name = "B", default_value_t = 1)]
    pub batch: usize,
    /// Sequence length [default: the model's `seq`].
    #[arg(long, value_name = "T")]
    pub seq: Option<usize>,
    #[arg(long, value_enum, default_value = "bf16")]
    pub precision: PtxPrecision,
    /// train: loss, logits and every gradient; eval: loss and logits.
    #[arg(long, value_enum, default_value = "train")]
    pub mode: ModeArg,
    /// Seed of the weights (the tokens use SEED + 1).
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// Keep the training initialisation's all-zero parameters (by default they get
    /// random values, as `pgc run --dense-weights`, so that every gradient is non-zero).
    #[arg(long)]
    pub training_init: bool,
    /// A fixed relative-error tolerance for every tensor [default: for bf16 the
    /// contract `3 x yardstick + 4e-3` per tensor, for f32 1e-4].
    #[arg(long, value_name = "TOL")]
    pub tol: Option<f64>,
}

fn bad(msg: impl std::fmt::Display) -> Failure {
    Failure::BadInput(format!("error: {msg}"))
}

/// `max|a-b|`, `max|b|`, and their ratio (`max|a-b|` alone when `max|b|` is 0).
pub(crate) fn rel_error(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    let mut diff = 0.0f64;
    let mut scale = 0.0f64;
    for (&x, &y) in a.iter().zip(b) {
        let d = (x - y).abs();
        // NaN anywhere makes the difference NaN (f64::max would drop it).
        diff = if d.is_nan() || diff.is_nan() { f64::NAN } else { diff.max(d) };
        scale = scale.max(y.abs());
    }
    if a.len() != b.len() {
        diff = f64::NAN;
    }
    let rel = if scale > 0.0 { diff / scale } else { diff };
    (diff, scale, rel)
}

pub fn run(args: VerifyArgs) -> CliResult {
    let t_start = Instant::now();
    if args.batch == 0 || args.seq == Some(0) {
        return Err(bad("--batch and --seq must be at least 1"));
    }
    // None: the bf16 contract against the yardstick.
    let fixed = match (args.tol, args.precision) {
        (Some(t), _) => Some(t),
        (None, PtxPrecision::Bf16) => None,
        (None, PtxPrecision::F32) => Some(1e-4),
    };
    let tol = fixed.unwrap_or(0.0);
    if !(tol.is_finite() && tol >= 0.0) {
        return Err(bad(format!("--tol must be a finite non-negative number, got {tol}")));
    }
    let cuda = if args.backend == DeviceArg::Cuda { Some(run::open_cuda("pgc verify")?) } else { None };
    let prec = match args.precision {
        PtxPrecision::Bf16 => run::RunPrecision::Bf16,
        PtxPrecision::F32 => run::RunPrecision::F32,
    };
    let spec = RunSpec::random(args.model.clone(), super::parse_sets(&args.sets)?, args.seed, args.batch, args.seq, args.mode.into(), !args.training_init);
    let RunInputs { graph, mut values, tokens, with_grads, mode } = inputs::prepare(&spec)?;
    // Both sides start from the same f32 numbers.
    for v in values.values_mut() {
        for x in v.iter_mut() {
            *x = *x as f32 as f64;
        }
    }
    let t_prep = t_start.elapsed().as_secs_f64();
    println!(
        "verify: {} ({} mode, {} precision, batch {} seq {}, {} parameters, seed {}); setup {:.2} s",
        args.model.display(),
        mode.name(),
        format!("{:?}", args.precision).to_lowercase(),
        tokens.batch,
        tokens.seq,
        graph.param_count(),
        args.seed,
        t_prep
    );

    let t_dev = Instant::now();
    let bar = super::progress::Progress::lazy("kernel launches");
    let dev_out = match &cuda {
        Some(dev) => ptx::execute(dev, None, &graph, &values, &tokens, with_grads, run::ptx_precision(prec), false, &mut |d, t| bar.set_total(d, t))?,
        None => {
            let dev = SimDevice::new();
            ptx::execute(&dev, Some(&dev), &graph, &values, &tokens, with_grads, run::ptx_precision(prec), false, &mut |d, t| bar.set_total(d, t))?
        }
    };
    drop(bar);
    let dev_s = t_dev.elapsed().as_secs_f64();
    if let Some(n) = &dev_out.device_note {
        println!("{n}");
    }
    println!("device run: {dev_s:.2} s (plan + PTX compile + load + run + read back)");

    let t_cpu = Instant::now();
    let cpu_out = cpu::execute::<f64>(&graph, &values, &tokens, with_grads, false, HostData::F64, CpuExecutor::Interpreter, 1)?;
    println!(
        "cpu reference (f64, {} threads): {:.2} s",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        t_cpu.elapsed().as_secs_f64()
    );

    let reference: HashMap<&str, Vec<f64>> = cpu_out.tensors.iter().map(|(n, t)| (n.as_str(), t.data.to_f64())).collect();
    let yardstick: Option<HashMap<String, f64>> = match fixed {
        Some(_) => None,
        None => {
            let t = Instant::now();
            let y = cpu::execute_yardstick(&graph, &values, &tokens, with_grads, false, 1)?;
            println!("yardstick (PyTorch bf16 autocast emulated on the CPU): {:.2} s", t.elapsed().as_secs_f64());
            let mut m = HashMap::new();
            for (name, t) in &y.tensors {
                if let Some(b) = reference.get(name.as_str()) {
                    m.insert(name.clone(), rel_error(&t.data.to_f64(), b).2);
                }
            }
            Some(m)
        }
    };
    let contract = pgc_backends::cpu::autocast::BF16_CONTRACT;
    match &yardstick {
        Some(_) => println!(
            "{:<44} {:>11} {:>11} {:>10} {:>10} {:>7} {:>10}  result",
            "tensor", "max|a-b|", "max|b|", "pgc err", "yardstick", "ratio", "limit"
        ),
        None => println!("{:<44} {:>12} {:>12} {:>11} {:>9}  result", "tensor", "max|a-b|", "max|b|", "rel err", "tol"),
    }
    let (mut failed, mut worst) = (Vec::new(), (String::new(), 0.0f64));
    let mut ratios = Vec::new();
    for (name, t) in &dev_out.tensors {
        let Some(b) = reference.get(name.as_str()) else {
            return Err(Failure::Other(anyhow::anyhow!("the CPU backend did not produce `{name}`")));
        };
        let (diff, scale, rel) = rel_error(&t.data.to_f64(), b);
        let ok = match &yardstick {
            Some(y) => {
                let Some(&yard) = y.get(name) else {
                    return Err(Failure::Other(anyhow::anyhow!("the yardstick run did not produce `{name}`")));
                };
                let ok = contract.holds(rel, yard);
                let ratio = pgc_backends::cpu::autocast::ratio(rel, yard);
                ratios.push(if rel.is_nan() { f64::INFINITY } else { ratio });
                println!(
                    "{name:<44} {diff:>11.4e} {scale:>11.4e} {rel:>10.3e} {yard:>10.3e} {ratio:>7.2} {:>10.3e}  {}",
                    contract.limit(yard),
                    if ok { "ok" } else { "FAIL" }
                );
                ok
            }
            None => {
                let ok = rel.is_finite() && rel <= tol;
                println!("{name:<44} {diff:>12.4e} {scale:>12.4e} {rel:>11.3e} {tol:>9.1e}  {}", if ok { "ok" } else { "FAIL" });
                ok
            }
        };
        if !ok {
            failed.push(name.clone());
        }
        // The worst row: the largest relative error, a NaN above everything.
        if worst.0.is_empty() || (!worst.1.is_nan() && (rel.is_nan() || rel > worst.1)) {
            worst = (name.clone(), rel);
        }
    }
    println!(
        "loss: device {:.8} cpu {:.8}; worst {} at {:.3e}; total {:.2} s",
        dev_out.loss,
        cpu_out.loss,
        worst.0,
        worst.1,
        t_start.elapsed().as_secs_f64()
    );
    let bound = match &yardstick {
        Some(_) => {
            let med = pgc_backends::cpu::autocast::median(&ratios);
            let max = ratios.iter().copied().fold(0.0, f64::max);
            println!("median ratio pgc err / yardstick: {med:.3} over {} tensors (worst {max:.2})", ratios.len());
            format!("the bf16 contract ({} x yardstick + {:.0e})", contract.k, contract.floor)
        }
        None => format!("the tolerance {tol:.1e}"),
    };
    if failed.is_empty() {
        println!("verify: PASS ({} tensors within {bound})", dev_out.tensors.len());
        Ok(())
    } else {
        Err(Failure::CheckFailed(format!(
            "verify: FAIL: {} of {} tensors exceed {bound}: {}",
            failed.len(),
            dev_out.tensors.len(),
            failed.join(", ")
        )))
    }
}
