//! `pgc bench`: time the model's PTX program on a CUDA GPU, kernel by kernel.
//!
//! Random weights and tokens at `--batch`/`--seq`; the program is planned
//! and compiled as `pgc run --backend cuda` does, loaded once, then:
//! 1. warm-up runs;
//! 2. `--repeats` runs with a CUDA event before every launch: per launch the
//!    median over the repeats, summed per plan kernel (a launch's time
//!    includes its zero-fills), beside the kernel's FLOPs and minimum bytes
//!    from the plan: achieved TFLOP/s and GB/s, the floor
//!    `max(flops / peak, min_bytes / bandwidth)` with the peaks `pgc compile`
//!    uses (H100 SXM5 datasheet, `compile::PEAK_*`), and time / floor;
//! 3. the whole step (every launch, no events between) between two events,
//!    median of the repeats; with `--graph` also replayed as a CUDA graph;
//!    tokens/s.
//!
//! Without a GPU or driver: exit 2 with the driver's message.

use super::run::{self, ModeArg};
use pgc::pipeline::inputs::{self, RunInputs, RunSpec};
use pgc::pipeline::ptx;
use pgc::pipeline::roofline::Floor;
use super::verify::PtxPrecision;
use super::{CliResult, Failure};
use pgc_ir::plan::Plan;
use pgc_runtime::cuda::{CudaDevice, TimingOptions};
use pgc_runtime::device::DeviceError;
use pgc_runtime::exec::{ExecError, Executor};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchBackend {
    /// The first CUDA GPU.
    Cuda,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The model source (.pgdsl).
    pub model: PathBuf,
    /// Override a model constant, e.g. `--set layers=9`. Repeatable.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
    #[arg(long, value_enum, default_value = "cuda")]
    pub backend: BenchBackend,
    /// Batch size of the timed step (random tokens).
    #[arg(long, value_name = "B")]
    pub batch: usize,
    /// Sequence length of the timed step (overrides the model's `seq`).
    #[arg(long, value_name = "T")]
    pub seq: usize,
    #[arg(long, value_enum, default_value = "bf16")]
    pub precision: PtxPrecision,
    /// train: forward + backward (the training step); eval: forward only.
    #[arg(long, value_enum, default_value = "train")]
    pub mode: ModeArg,
    /// Timed repeats (the median is reported).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub repeats: usize,
    /// Untimed warm-up runs.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub warmup: usize,
    /// Also time the step replayed as a captured CUDA graph.
    #[arg(long)]
    pub graph: bool,
    /// Rows of the per-kernel table (sorted by time).
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub top: usize,
    /// Seed of the weights (the tokens use SEED + 1).
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
    /// Also write the per-kernel medians as JSON (kept as docs/bench_kernels.json,
    /// `pgc profile` calibrates its estimate against it).
    #[arg(long, value_name = "F")]
    pub json: Option<PathBuf>,
}

fn bad(msg: impl std::fmt::Display) -> Failure {
    Failure::BadInput(format!("error: {msg}"))
}

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure::Other(anyhow::anyhow!("{e}"))
}

/// A kernel's floor in seconds and which bound sets it.
fn floor_s(plan: &Plan, k: usize) -> (f64, &'static str) {
    let f = Floor::of(plan, &plan.kernels[k]);
    (f.seconds(), f.bound())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn as_device_err(e: ExecError) -> DeviceError {
    match e {
        ExecError::Launch { source, .. } => source,
        other => DeviceError::Driver { context: "executor".into(), msg: other.to_string() },
    }
}

pub fn run(args: BenchArgs) -> CliResult {
    let t_start = Instant::now();
    if args.batch == 0 || args.seq == 0 {
        return Err(bad("--batch and --seq must be at least 1"));
    }
    if args.repeats == 0 {
        return Err(bad("--repeats must be at least 1"));
    }
    let dev: CudaDevice = run::open_cuda("pgc bench")?;
    let prec = match args.precision {
        PtxPrecision::Bf16 => run::RunPrecision::Bf16,
        PtxPrecision::F32 => run::RunPrecision::F32,
    };
    let spec = RunSpec::random(args.model.clone(), super::parse_sets(&args.sets)?, args.seed, args.batch, Some(args.seq), args.mode.into(), true);
    let RunInputs { graph, values, tokens, with_grads, mode } = inputs::prepare(&spec)?;
    let names = inputs::output_names(&graph, with_grads);
    let plan = ptx::plan(&graph, run::ptx_precision(prec), &names, &[])?;
    let t_c = Instant::now();
    let program = ptx::compile(&graph, &plan).map_err(|e| bad(format!("the PTX backend cannot compile this model: {e}")))?;
    let compile_s = t_c.elapsed().as_secs_f64();
    let t_l = Instant::now();
    let mut ex = Executor::new(&dev, &program, &graph).map_err(internal)?;
    ptx::set_inputs(&mut ex, &values, &tokens)?;
    let load_s = t_l.elapsed().as_secs_f64();
    let info = dev.info();
    let (free, total) = dev.mem_info().unwrap_or((0, 0));
    println!(
        "bench: {} on {} (sm_{}{}, {} SMs); {} mode, {} precision, batch {} seq {}, {} parameters",
        args.model.display(),
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.sm_count,
        mode.name(),
        format!("{:?}", args.precision).to_lowercase(),
        tokens.batch,
        tokens.seq,
        graph.param_count()
    );
    println!(
        "program: {} kernels, {} launches, arena {:.1} MiB, {} KiB of PTX; PTX compile {:.2} s, load (driver JIT) + upload {:.2} s; device memory {:.1} of {:.1} GiB free",
        program.plan.kernels.len(),
        program.launches.len(),
        program.plan.arena_bytes as f64 / (1 << 20) as f64,
        program.ptx().len() / 1024,
        compile_s,
        load_s,
        free as f64 / (1u64 << 30) as f64,
        total as f64 / (1u64 << 30) as f64
    );

    // Warm-up (the first run also checks that every launch works).
    let t_w = Instant::now();
    let bar = super::progress::Progress::new((args.warmup.max(1) * ex.launch_count()) as u64, "warm-up launches");
    for _ in 0..args.warmup.max(1) {
        ex.run_with(&mut |_, _| bar.inc(1)).map_err(internal)?;
    }
    drop(bar);
    println!("warm-up: {} runs, {:.2} s", args.warmup.max(1), t_w.elapsed().as_secs_f64());

    // Per launch: an event before each launch and one after the last.
    let n = ex.launch_count();
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(args.repeats); n];
    let bar = super::progress::Progress::new(args.repeats as u64, "timed runs");
    for _ in 0..args.repeats {
        bar.inc(1);
        let events = (0..=n).map(|_| dev.event()).collect::<Result<Vec<_>, _>>().map_err(internal)?;
        for i in 0..n {
            dev.record(&events[i]).map_err(internal)?;
            ex.launch_step(i).map_err(internal)?;
        }
        dev.record(&events[n]).map_err(internal)?;
        use pgc_runtime::device::Device;
        dev.synchronize().map_err(internal)?;
        for i in 0..n {
            samples[i].push(events[i].elapsed_ms(&events[i + 1]).map_err(internal)? as f64);
        }
    }
    drop(bar);
    let k_count = program.plan.kernels.len();
    let mut per_kernel = vec![(0.0f64, 0usize); k_count];
    for (i, s) in samples.iter_mut().enumerate() {
        let k = program.launches[i].plan_kernel;
        per_kernel[k].0 += median(s);
        per_kernel[k].1 += 1;
    }

    // The whole step, launches back to back.
    let opts = TimingOptions { warmup: 1, repeats: args.repeats };
    let step = dev
        .time_launches_with(opts, || {
            for i in 0..n {
                ex.launch_step(i).map_err(as_device_err)?;
            }
            Ok(())
        })
        .map_err(internal)?;
    let graph_ms = if args.graph {
        let t_g = Instant::now();
        let g = dev
            .capture_graph(|| {
                for i in 0..n {
                    ex.launch_step(i).map_err(as_device_err)?;
                }
                Ok(())
            })
            .map_err(internal)?;
        let capture_s = t_g.elapsed().as_secs_f64();
        let t = dev.time_launches_with(TimingOptions { warmup: 2, repeats: args.repeats }, || g.launch()).map_err(internal)?;
        Some((t, capture_s))
    } else {
        None
    };

    // Table.
    let total_ms: f64 = per_kernel.iter().map(|p| p.0).sum();
    let mut order: Vec<usize> = (0..k_count).filter(|&k| per_kernel[k].1 > 0).collect();
    order.sort_by(|&a, &b| per_kernel[b].0.total_cmp(&per_kernel[a].0));
    println!();
    println!(
        "{:<44} {:<18} {:>4} {:>9} {:>6} {:>8} {:>8} {:>9} {:>7} {:>7}",
        "kernel", "kind", "lch", "ms", "%", "TFLOP/s", "GB/s", "floor ms", "bound", "x floor"
    );
    let row = |name: &str, kind: &str, launches: usize, ms: f64, flops: f64, bytes: f64, floor: f64, bound: &str| {
        let s = ms / 1e3;
        println!(
            "{:<44} {:<18} {:>4} {:>9.4} {:>6.2} {:>8.2} {:>8.0} {:>9.4} {:>7} {:>7.2}",
            name,
            kind,
            launches,
            ms,
            if total_ms > 0.0 { 100.0 * ms / total_ms } else { 0.0 },
            flops / s / 1e12,
            bytes / s / 1e9,
            floor * 1e3,
            bound,
            if floor > 0.0 { s / floor } else { f64::NAN }
        );
    };
    let (mut t_flops, mut t_bytes, mut t_floor) = (0.0f64, 0.0f64, 0.0f64);
    for &k in &order {
        let kr = &program.plan.kernels[k];
        let (fl, _) = floor_s(&program.plan, k);
        t_flops += kr.flops as f64;
        t_bytes += kr.min_bytes as f64;
        t_floor += fl;
    }
    for &k in order.iter().take(args.top) {
        let kr = &program.plan.kernels[k];
        let (fl, bound) = floor_s(&program.plan, k);
        let name: String = kr.name.chars().take(44).collect();
        row(&name, kr.kind.name(), per_kernel[k].1, per_kernel[k].0, kr.flops as f64, kr.min_bytes as f64, fl, bound);
    }
    if order.len() > args.top {
        let rest: Vec<usize> = order[args.top..].to_vec();
        let ms: f64 = rest.iter().map(|&k| per_kernel[k].0).sum();
        let fl: f64 = rest.iter().map(|&k| program.plan.kernels[k].flops as f64).sum();
        let by: f64 = rest.iter().map(|&k| program.plan.kernels[k].min_bytes as f64).sum();
        let flo: f64 = rest.iter().map(|&k| floor_s(&program.plan, k).0).sum();
        let l: usize = rest.iter().map(|&k| per_kernel[k].1).sum();
        row(&format!("({} more kernels)", rest.len()), "", l, ms, fl, by, flo, "");
    }
    row("total (sum of per-launch medians)", "", n, total_ms, t_flops, t_bytes, t_floor, "");
    println!();
    let tokens_n = (tokens.batch * tokens.seq) as f64;
    let what = if with_grads { "train step (forward+backward)" } else { "forward" };
    println!(
        "{what}: {:.3} ms median (min {:.3}, max {:.3}; {} repeats, stream launches), {:.0} tokens/s, {:.1} TFLOP/s, {:.2}x the sum of floors ({:.3} ms)",
        step.median_ms,
        step.min_ms,
        step.max_ms,
        args.repeats,
        tokens_n / (step.median_ms / 1e3),
        t_flops / (step.median_ms / 1e3) / 1e12,
        step.median_ms / (t_floor * 1e3),
        t_floor * 1e3
    );
    if let Some((g, capture_s)) = &graph_ms {
        println!(
            "{what} as a CUDA graph: {:.3} ms median (min {:.3}, max {:.3}; capture + instantiate {:.2} s), {:.0} tokens/s",
            g.median_ms,
            g.min_ms,
            g.max_ms,
            capture_s,
            tokens_n / (g.median_ms / 1e3)
        );
    }
    if let Some(path) = &args.json {
        let kernels: Vec<serde_json::Value> = order
            .iter()
            .map(|&k| {
                let kr = &program.plan.kernels[k];
                serde_json::json!({ "name": kr.name, "kind": kr.kind.name(), "launches": per_kernel[k].1, "median_ms": per_kernel[k].0 })
            })
            .collect();
        let v = serde_json::json!({
            "model": args.model.display().to_string(), "mode": mode.name(), "batch": tokens.batch, "seq": tokens.seq,
            "card": info.name, "repeats": args.repeats, "step_median_ms": step.median_ms, "kernels": kernels,
        });
        let text = serde_json::to_string_pretty(&v).map_err(internal)? + "\n";
        std::fs::write(path, text).map_err(|e| Failure::Other(anyhow::anyhow!("writing {}: {e}", path.display())))?;
    }
    let best = graph_ms.as_ref().map(|(g, _)| g.median_ms.min(step.median_ms)).unwrap_or(step.median_ms);
    println!(
        "BENCH step_ms={:.3} graph_ms={} tokens_per_s={:.0} batch={} seq={} card=\"{}\" total_s={:.1}",
        best,
        graph_ms.as_ref().map(|(g, _)| format!("{:.3}", g.median_ms)).unwrap_or_else(|| "-".into()),
        tokens_n / (best / 1e3),
        tokens.batch,
        tokens.seq,
        info.name,
        t_start.elapsed().as_secs_f64()
    );
    Ok(())
}
