//! `pgc profile`: kernel performance without a GPU.
//!
//! The model's PTX program (as `pgc run --backend sim` plans and compiles it,
//! bf16) runs on the PTX simulator with its counters on
//! (`pgc_runtime::sim::counters`), lazily allocated memory and, with
//! `--sample N`, only N blocks of every launch: block 0, the last block and
//! N - 2 seeded random ones (`pgc_runtime::sim::sample_blocks`). Per plan
//! kernel, counters are scaled from the blocks run to the grid; unique bytes
//! are scaled per buffer and capped at the buffer's size (a buffer that every
//! block reads counts once, see `counters::extrapolate`).
//!
//! The estimate is labelled as one: per kernel the largest of
//! - tensor time: the FLOPs of the mma.sync and wgmma instructions run (by
//!   their shapes) / the bf16 peak;
//! - memory time: unique bytes / DRAM bandwidth, or sectors x 32 / L2
//!   bandwidth when larger;
//! - issue time: (warp instructions / 4 + shared wavefronts beyond one per
//!   request) / (SMs x clock), four schedulers per SM, one shared wavefront
//!   per clock;
//! - launch time: 2 us per launch;
//!
//! each divided by the fill of the card (blocks / (waves x resident blocks),
//! from the occupancy that ptxas's registers and shared memory allow). When
//! a GPU run's per-kernel table (`pgc bench --json`, kept as
//! docs/bench_kernels.json or tests/data/bench_kernels.json) matches the
//! model, batch, seq and mode, one factor per bound is fitted (geometric mean
//! of measured / estimate) and applied; the factors and their fit error (RMS
//! of the log residuals, as a percentage) are printed.

use super::run::ModeArg;
use super::{CliResult, Failure};
use pgc::pipeline::inputs::{self, RunInputs, RunSpec};
use pgc::pipeline::ptx;
use pgc::pipeline::roofline::{PEAK_BF16_FLOPS, PEAK_BYTES_PER_S, PEAK_F32_FLOPS};
use pgc_ir::plan::Place;
use pgc_ir::Graph;
use pgc_runtime::exec::Executor;
use pgc_runtime::sim::counters::{InstClass, LaunchCounters, CLASSES};
use pgc_runtime::sim::{SimDevice, SimOptions};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct ProfileArgs {
    /// The model source (.pgdsl).
    pub model: PathBuf,
    /// Override a model constant, e.g. `--set layers=2`. Repeatable.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
    #[arg(long, value_name = "B")]
    pub batch: usize,
    #[arg(long, value_name = "T")]
    pub seq: usize,
    /// Blocks run per launch (block 0, the last, the rest seeded random); 0 runs every block.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub sample: u64,
    /// train: forward + backward (the training step); eval: forward only.
    #[arg(long, value_enum, default_value = "train")]
    pub mode: ModeArg,
    /// Write the table as JSON.
    #[arg(long, value_name = "F")]
    pub json: Option<PathBuf>,
    /// Draw a roofline (SVG): each kernel's arithmetic intensity against its estimated FLOP/s.
    #[arg(long, value_name = "roofline.svg")]
    pub plot: Option<PathBuf>,
    /// Seed of the weights, tokens (SEED + 1), block choice and never-written memory.
    #[arg(long, value_name = "S", default_value_t = 0)]
    pub seed: u64,
}

/// The card the estimate assumes (the peaks `pgc compile` and `pgc bench` use).
pub struct Card {
    pub name: &'static str,
    pub sms: u32,
    pub clock_hz: f64,
    pub bf16_flops: f64,
    pub f32_flops: f64,
    pub dram_bytes_per_s: f64,
    pub l2_bytes_per_s: f64,
    pub launch_s: f64,
}

pub const H100: Card = Card {
    name: "H100 SXM5 (datasheet peaks; L2 bandwidth and launch cost assumed)",
    sms: 132,
    clock_hz: 1.755e9,
    bf16_flops: PEAK_BF16_FLOPS,
    f32_flops: PEAK_F32_FLOPS,
    dram_bytes_per_s: PEAK_BYTES_PER_S,
    l2_bytes_per_s: 10e12,
    launch_s: 2e-6,
};

impl Card {
    fn json(&self) -> Value {
        json!({
            "name": self.name, "sms": self.sms, "clock_hz": self.clock_hz, "bf16_flops": self.bf16_flops,
            "f32_flops": self.f32_flops, "dram_bytes_per_s": self.dram_bytes_per_s, "l2_bytes_per_s": self.l2_bytes_per_s,
            "launch_s": self.launch_s,
        })
    }
}

/// Counters of one PTX line of a kernel, scaled to the grid.
#[derive(Default, Clone, Copy)]
pub struct LineTotals {
    pub warp_insts: f64,
    pub global_requests: f64,
    pub global_sectors: f64,
    pub distinct_bytes: f64,
    pub shared_wavefronts: f64,
    pub shared_ideal: f64,
}

/// `dst.field += src.from as f64 * s` for each `field <- from` (`field`
/// alone: the same name), counters scaled to the grid.
macro_rules! add_scaled {
    ($dst:expr, $src:expr, $s:expr; $($field:ident $(<- $from:ident)?),* $(,)?) => {
        $( $dst.$field += add_scaled!(@from $src, $field $(, $from)?) as f64 * $s; )*
    };
    (@from $src:expr, $field:ident) => { $src.$field };
    (@from $src:expr, $field:ident, $from:ident) => { $src.$from };
}

impl LineTotals {
    fn json(&self, line: u32, ptx: &[&str]) -> Value {
        json!({
            "ptx_line": line, "ptx": ptx.get(line as usize - 1).map(|t| t.trim()).unwrap_or(""), "warp_instructions": self.warp_insts, "global_requests": self.global_requests,
            "global_sectors": self.global_sectors, "sector_efficiency": ratio_or(self.distinct_bytes, 32.0 * self.global_sectors, 1.0),
            "shared_wavefronts": self.shared_wavefronts, "bank_conflict_ways": ratio_or(self.shared_wavefronts, self.shared_ideal, 1.0),
        })
    }
}

/// Counters of one plan kernel, summed over its launches and scaled to the grid.
#[derive(Default, Clone)]
pub struct KernelTotals {
    pub launches: usize,
    pub blocks_total: u64,
    pub blocks_run: u64,
    pub warp_insts: f64,
    pub lanes: f64,
    pub by_class: BTreeMap<&'static str, f64>,
    pub mma: f64,
    /// tensor-core FLOPs (mma.sync and wgmma, each by its shape)
    pub tensor_flops: f64,
    pub global_requests: f64,
    pub global_sectors: f64,
    pub requested_bytes: f64,
    pub distinct_bytes: f64,
    pub shared_requests: f64,
    pub shared_wavefronts: f64,
    pub shared_ideal: f64,
    pub atomic_lanes: f64,
    pub atomic_addresses: f64,
    pub read_bytes: f64,
    pub written_bytes: f64,
    /// PTX line -> counters of its instructions, scaled
    pub lines: BTreeMap<u32, LineTotals>,
    /// per pointer argument of the first launch: (what it names, bytes, unique read, unique written)
    pub buffers: Vec<(String, u64, f64, f64)>,
    /// unique bytes outside every argument's buffer (read, written)
    pub outside: (f64, f64),
}

impl KernelTotals {
    /// Add one launch; `labels` names its pointer arguments in order.
    pub fn add(&mut self, c: &LaunchCounters, labels: &[String]) {
        let s = c.scale();
        for (j, r) in c.regions.iter().enumerate() {
            let label = labels.get(j).cloned().unwrap_or_else(|| format!("argument {j}"));
            match self.buffers.iter_mut().find(|b| b.0 == label) {
                Some(b) => {
                    b.2 += c.region_read[j];
                    b.3 += c.region_written[j];
                }
                None => self.buffers.push((label, r.1, c.region_read[j], c.region_written[j])),
            }
        }
        self.outside.0 += c.outside_read;
        self.outside.1 += c.outside_written;
        let t = c.total();
        self.tensor_flops += c.tensor_flops() as f64 * s;
        self.launches += 1;
        self.blocks_total += c.blocks_total;
        self.blocks_run += c.blocks_run.len() as u64;
        self.warp_insts += t.warp_insts as f64 * s;
        self.lanes += t.lanes as f64 * s;
        for (cl, n) in c.by_class() {
            *self.by_class.entry(cl.name()).or_default() += n as f64 * s;
            if cl == InstClass::Mma {
                self.mma += n as f64 * s;
            }
        }
        add_scaled!(self, t, s; global_requests, global_sectors, requested_bytes <- global_bytes, distinct_bytes <- global_distinct_bytes,
            shared_requests, shared_wavefronts, shared_ideal, atomic_lanes, atomic_addresses);
        self.read_bytes += c.read_bytes_est;
        self.written_bytes += c.written_bytes_est;
        for (line, p) in c.by_line() {
            let e = self.lines.entry(line).or_default();
            add_scaled!(e, p, s; warp_insts, global_requests, global_sectors, distinct_bytes <- global_distinct_bytes, shared_wavefronts, shared_ideal);
        }
    }

    pub fn unique_bytes(&self) -> f64 {
        self.read_bytes + self.written_bytes
    }

    pub fn sectors_per_request(&self) -> f64 {
        ratio(self.global_sectors, self.global_requests)
    }

    /// Distinct bytes per request over the bytes of the sectors it touches
    /// (1 = every byte of every sector used; a broadcast counts once).
    pub fn sector_efficiency(&self) -> f64 {
        ratio_or(self.distinct_bytes, 32.0 * self.global_sectors, 1.0)
    }

    /// Wavefronts over the ideal (1 = no bank conflicts).
    pub fn bank_conflict_ways(&self) -> f64 {
        ratio_or(self.shared_wavefronts, self.shared_ideal, 1.0)
    }

    pub fn tensor_share(&self) -> f64 {
        ratio(self.mma, self.warp_insts)
    }
}

/// Resident blocks per SM and occupancy (warps resident / 64) of a launch
/// shape, from ptxas's registers per thread and the block's shared memory.
pub fn occupancy(threads: u32, registers: Option<u32>, shared_bytes: u32) -> (u32, f64) {
    let warps = threads.div_ceil(32).max(1);
    let mut blocks = (2048 / (warps * 32)).min(32);
    if let Some(r) = registers {
        // registers are allocated per warp in units of 256
        let per_warp = (r.max(1) * 32).div_ceil(256) * 256;
        blocks = blocks.min(65536 / (per_warp * warps));
    }
    if shared_bytes > 0 {
        // 228 KiB per SM, 1 KiB reserved per block
        blocks = blocks.min((228 * 1024) / (shared_bytes + 1024));
    }
    (blocks, (blocks * warps) as f64 / 64.0)
}

/// The estimate of one kernel: seconds per bound and the bound that sets it.
#[derive(Clone, Copy, Debug)]
pub struct Estimate {
    pub tensor_s: f64,
    pub memory_s: f64,
    pub issue_s: f64,
    pub launch_s: f64,
    pub fill: f64,
    pub seconds: f64,
    pub bound: &'static str,
}

pub fn estimate(card: &Card, t: &KernelTotals, blocks_per_sm: u32) -> Estimate {
    let tensor_s = t.tensor_flops / card.bf16_flops;
    let memory_s = (t.unique_bytes() / card.dram_bytes_per_s).max(t.global_sectors * 32.0 / card.l2_bytes_per_s);
    let extra_wavefronts = (t.shared_wavefronts - t.shared_requests).max(0.0);
    let issue_s = (t.warp_insts / 4.0 + extra_wavefronts) / (card.sms as f64 * card.clock_hz);
    let launch_s = t.launches as f64 * card.launch_s;
    let per_launch_blocks = t.blocks_total as f64 / t.launches.max(1) as f64;
    let resident = (card.sms * blocks_per_sm.max(1)) as f64;
    let waves = (per_launch_blocks / resident).ceil().max(1.0);
    let fill = (per_launch_blocks / (waves * resident)).clamp(1e-3, 1.0);
    let cands = [(tensor_s / fill, "tensor"), (memory_s / fill, "memory"), (issue_s / fill, "issue"), (launch_s, "launch")];
    let (seconds, bound) = cands.iter().copied().fold((0.0, "launch"), |a, b| if b.0 > a.0 { b } else { a });
    Estimate { tensor_s, memory_s, issue_s, launch_s, fill, seconds, bound }
}

/// One factor per bound fitted to measured per-kernel times: (bound, factor,
/// kernels, RMS of the log residuals).
pub fn calibrate(pairs: &[(&'static str, f64, f64)]) -> Vec<(&'static str, f64, usize, f64)> {
    let mut out = Vec::new();
    for bound in ["tensor", "memory", "issue", "launch"] {
        let logs: Vec<f64> = pairs.iter().filter(|p| p.0 == bound && p.1 > 0.0 && p.2 > 0.0).map(|p| (p.2 / p.1).ln()).collect();
        if logs.is_empty() {
            continue;
        }
        let mean = logs.iter().sum::<f64>() / logs.len() as f64;
        let rms = (logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / logs.len() as f64).sqrt();
        out.push((bound, mean.exp(), logs.len(), rms));
    }
    out
}

fn bad(msg: impl std::fmt::Display) -> Failure {
    Failure::BadInput(format!("error: {msg}"))
}

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure::Other(anyhow::anyhow!("{e}"))
}

/// A GPU run's per-kernel medians (`pgc bench --json`), when one for this
/// model, batch, seq and mode is kept in docs/ or tests/data/.
fn bench_table(model: &Path, batch: usize, seq: usize, mode: &str) -> Option<(PathBuf, BTreeMap<String, f64>)> {
    for dir in ["docs", "tests/data"] {
        let p = PathBuf::from(dir).join("bench_kernels.json");
        let Ok(text) = std::fs::read_to_string(&p) else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            eprintln!("warning: {} is not JSON: no calibration", p.display());
            continue;
        };
        let same_model = v["model"].as_str().map(|m| Path::new(m).file_name() == model.file_name()).unwrap_or(false);
        if !same_model || v["batch"].as_u64() != Some(batch as u64) || v["seq"].as_u64() != Some(seq as u64) || v["mode"].as_str() != Some(mode) {
            continue;
        }
        let mut m = BTreeMap::new();
        for k in v["kernels"].as_array().into_iter().flatten() {
            if let (Some(n), Some(ms)) = (k["name"].as_str(), k["median_ms"].as_f64()) {
                m.insert(n.to_string(), ms / 1e3);
            }
        }
        return Some((p, m));
    }
    None
}

pub fn run(args: ProfileArgs) -> CliResult {
    let t_start = Instant::now();
    if args.batch == 0 || args.seq == 0 {
        return Err(bad("--batch and --seq must be at least 1"));
    }
    let spec = RunSpec::random(args.model.clone(), super::parse_sets(&args.sets)?, args.seed, args.batch, Some(args.seq), args.mode.into(), false);
    let RunInputs { graph, values, tokens, with_grads, mode } = inputs::prepare(&spec)?;
    let names = inputs::output_names(&graph, with_grads);
    let plan = ptx::plan(&graph, pgc_ir::plan::Precision::Bf16, &names, &[])?;
    // one block per GEMM tile: the sampled blocks then cost a tile each, as
    // the extrapolation assumes (persistent blocks would walk dozens)
    let mut opts = ptx::ptx_options().map_err(|e| bad(e.to_string()))?;
    opts.persistent = false;
    let program = ptx::compile_with(&graph, &plan, &opts).map_err(|e| bad(format!("the PTX backend cannot compile this model: {e}")))?;
    let t_compiled = t_start.elapsed().as_secs_f64();

    // Registers and static shared memory per entry, for the occupancy.
    let t_ptxas = Instant::now();
    let resources: BTreeMap<String, (u32, u32)> = match pgc_backends::ptx::ptxas::find_ptxas() {
        Some(exe) => match super::compile::run_ptxas(&exe, [Some(&program), None]) {
            [Some(Ok(r)), _] => r.report.kernels.iter().map(|k| (k.name.clone(), (k.registers, k.shared_bytes))).collect(),
            [Some(Err(e)), _] => {
                eprintln!("warning: ptxas rejected the module ({e}): occupancy from shared memory and threads only");
                BTreeMap::new()
            }
            _ => BTreeMap::new(),
        },
        None => {
            eprintln!("warning: ptxas not found (set PGC_PTXAS or run scripts/install-ptxas): occupancy from shared memory and threads only");
            BTreeMap::new()
        }
    };
    let ptxas_s = t_ptxas.elapsed().as_secs_f64();

    let sample = (args.sample > 0).then_some(args.sample);
    let dev = SimDevice::with_options(SimOptions {
        counters: true,
        sample_blocks: sample,
        sample_seed: args.seed,
        lazy_memory: Some(args.seed ^ 0x6c61_7a79),
        memory_bytes: 1 << 46,
        // the sanitizers check correctness, not speed; data are seeded here
        racecheck: false,
        initcheck: false,
        ..SimOptions::default()
    });
    let mut ex = Executor::new(&dev, &program, &graph).map_err(internal)?;
    ptx::set_inputs(&mut ex, &values, &tokens)?;
    let t_sim = Instant::now();
    let nk = program.plan.kernels.len();
    let mut totals: Vec<KernelTotals> = vec![KernelTotals::default(); nk];
    let mut helpers = KernelTotals::default();
    let mut launches_json = Vec::with_capacity(ex.launch_count());
    let n_launches = ex.launch_count();
    for i in 0..n_launches {
        if i % 50 == 0 {
            eprintln!("profile: launch {i} of {n_launches} ({:.0} s)", t_sim.elapsed().as_secs_f64());
        }
        dev.set_regions(ex.launch_regions(i));
        ex.launch_step(i).map_err(internal)?;
        let l = &program.launches[i];
        let labels = arg_labels(&graph, &program, i);
        for rec in dev.take_launch_counters() {
            if rec.kernel == l.entry {
                launches_json.push(json!({ "launch": i, "entry": rec.kernel, "blocks_total": rec.blocks_total, "blocks_run": rec.blocks_run }));
                totals[l.plan_kernel].add(&rec, &labels);
            } else {
                helpers.add(&rec, &[]);
            }
        }
    }
    let sim_s = t_sim.elapsed().as_secs_f64();

    // Estimates.
    let card = &H100;
    let mut rows: Vec<Row> = Vec::new();
    for (k, t) in totals.iter().enumerate() {
        if t.launches == 0 {
            continue;
        }
        let kr = &program.plan.kernels[k];
        // the kernel's first launch sets the shape
        let l = program.launches.iter().find(|l| l.plan_kernel == k).expect("a launched kernel has a launch");
        let threads = l.block.iter().product::<u32>();
        let (regs, static_shared) = resources.get(&l.entry).map(|&(r, s)| (Some(r), s)).unwrap_or((None, 0));
        let (bps, occ) = occupancy(threads, regs, static_shared + l.shared_bytes);
        let est = estimate(card, t, bps);
        rows.push(Row { k, name: kr.name.clone(), kind: kr.kind.name(), flops: kr.flops, plan_bytes: kr.min_bytes, t: t.clone(), occupancy: occ, registers: regs, est, calibrated: est.seconds });
    }
    let mode_name = mode.name();
    let mut calib_note = String::new();
    let mut calib_json = Value::Null;
    if let Some((path, measured)) = bench_table(&args.model, tokens.batch, tokens.seq, mode_name) {
        let pairs: Vec<(&'static str, f64, f64)> = rows.iter().filter_map(|r| measured.get(&r.name).map(|&m| (r.est.bound, r.est.seconds, m))).collect();
        let fit = calibrate(&pairs);
        let _ = writeln!(calib_note, "calibration against {} ({} kernels matched):", path.display(), pairs.len());
        for &(b, f, n, rms) in &fit {
            let _ = writeln!(calib_note, "  {b:<7} x{f:.3} ({n} kernels, fit error {:.0}%)", 100.0 * (rms.exp() - 1.0));
        }
        for r in rows.iter_mut() {
            if let Some(&(_, f, _, _)) = fit.iter().find(|x| x.0 == r.est.bound) {
                r.calibrated = r.est.seconds * f;
            }
        }
        calib_json = json!({ "file": path.display().to_string(), "matched": pairs.len(),
            "factors": fit.iter().map(|&(b, f, n, rms)| json!({ "bound": b, "factor": f, "kernels": n, "rms_log_error": rms })).collect::<Vec<_>>() });
    } else {
        calib_note.push_str("calibration: none (no docs/bench_kernels.json or tests/data/bench_kernels.json from `pgc bench --json` for this model, batch, seq and mode)\n");
    }
    rows.sort_by(|a, b| b.calibrated.total_cmp(&a.calibrated));

    // Table.
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} ({} mode, batch {} seq {}): {} kernels, {} launches; {} per launch{}",
        args.model.display(),
        mode_name,
        tokens.batch,
        tokens.seq,
        rows.len(),
        program.launches.len(),
        match sample {
            Some(n) => format!("{n} blocks (block 0, the last, seeded random others)"),
            None => "every block".into(),
        },
        ""
    );
    let _ = writeln!(out, "ESTIMATE, not a measurement: max(tensor, memory, issue, launch) time on {}", card.name);
    let _ = writeln!(
        out,
        "{:<40} {:<17} {:>8} {:>9} {:>9} {:>6} {:>5} {:>5} {:>5} {:>6} {:>5} {:>10} {:>7}",
        "kernel", "kind", "GFLOP", "plan MB", "uniq MB", "ratio", "s/req", "eff%", "bank", "tensor", "occ", "est us", "bound"
    );
    let mut tot = (0f64, 0f64, 0f64, 0f64);
    for r in &rows {
        let ub = r.t.unique_bytes();
        tot.0 += r.flops as f64;
        tot.1 += r.plan_bytes as f64;
        tot.2 += ub;
        tot.3 += r.calibrated;
        let name: String = r.name.chars().take(40).collect();
        let _ = writeln!(
            out,
            "{:<40} {:<17} {:>8.2} {:>9.2} {:>9.2} {:>6.2} {:>5.1} {:>5.0} {:>5.1} {:>5.1}% {:>5.2} {:>10.2} {:>7}",
            name,
            r.kind,
            r.flops as f64 / 1e9,
            r.plan_bytes as f64 / 1e6,
            ub / 1e6,
            ratio(ub, r.plan_bytes as f64),
            r.t.sectors_per_request(),
            100.0 * r.t.sector_efficiency(),
            r.t.bank_conflict_ways(),
            100.0 * r.t.tensor_share(),
            r.occupancy,
            r.calibrated * 1e6,
            r.est.bound
        );
    }
    let _ = writeln!(
        out,
        "{:<40} {:<17} {:>8.1} {:>9.1} {:>9.1} {:>6.2} {:>35.3} ms",
        "total",
        "",
        tot.0 / 1e9,
        tot.1 / 1e6,
        tot.2 / 1e6,
        ratio(tot.2, tot.1),
        tot.3 * 1e3
    );
    let helper_ub = helpers.unique_bytes();
    if helpers.launches > 0 {
        let _ = writeln!(out, "zero-fill helper launches (not in the table): {}, {:.1} MB written", helpers.launches, helper_ub / 1e6);
    }
    let flagged: Vec<(&str, Vec<String>)> = rows.iter().filter_map(|r| findings(r).map(|f| (r.name.as_str(), f))).collect();
    if !flagged.is_empty() {
        let _ = writeln!(
            out,
            "findings ({} kernels: measured bytes over {:.2}x the plan's, bank conflicts, or sector efficiency under {:.0}%):",
            flagged.len(),
            FLAG_BYTES_RATIO,
            100.0 * FLAG_SECTOR_EFFICIENCY
        );
        for (name, f) in &flagged {
            let _ = writeln!(out, "  {name}: {}", f.join(", "));
        }
    }
    out.push_str(&calib_note);
    let _ = writeln!(
        out,
        "time: compile {:.1} s, ptxas {:.1} s, simulator {:.1} s ({} host threads), total {:.1} s; {:.1} MiB of simulated memory resident",
        t_compiled,
        ptxas_s,
        sim_s,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        t_start.elapsed().as_secs_f64(),
        dev.resident_bytes() as f64 / (1 << 20) as f64
    );
    print!("{out}");

    if let Some(path) = &args.json {
        let ptx_text = program.ptx();
        let ptx_lines: Vec<&str> = ptx_text.lines().collect();
        let kernels: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut hot: Vec<(&u32, &LineTotals)> = r.t.lines.iter().collect();
                hot.sort_by(|a, b| b.1.warp_insts.total_cmp(&a.1.warp_insts));
                // lines by sector bytes fetched but not used, and by extra shared wavefronts
                let mut wasteful: Vec<(&u32, &LineTotals)> = r.t.lines.iter().filter(|(_, l)| 32.0 * l.global_sectors > l.distinct_bytes).collect();
                wasteful.sort_by(|a, b| (32.0 * b.1.global_sectors - b.1.distinct_bytes).total_cmp(&(32.0 * a.1.global_sectors - a.1.distinct_bytes)));
                let mut conflicted: Vec<(&u32, &LineTotals)> = r.t.lines.iter().filter(|(_, l)| l.shared_wavefronts > l.shared_ideal).collect();
                conflicted.sort_by(|a, b| (b.1.shared_wavefronts - b.1.shared_ideal).total_cmp(&(a.1.shared_wavefronts - a.1.shared_ideal)));
                json!({
                    "name": r.name, "kind": r.kind, "flops": pgc_ir::report::count_json(r.flops), "plan_bytes": r.plan_bytes,
                    "unique_bytes": r.t.unique_bytes().round() as u64, "requested_bytes": r.t.requested_bytes.round() as u64,
                    "sectors_per_request": r.t.sectors_per_request(), "bank_conflict_ways": r.t.bank_conflict_ways(),
                    "tensor_share": r.t.tensor_share(), "occupancy": r.occupancy, "estimate_s": r.calibrated, "bound": r.est.bound,
                    "estimate_uncalibrated_s": r.est.seconds,
                    "times_s": { "tensor": r.est.tensor_s, "memory": r.est.memory_s, "issue": r.est.issue_s, "launch": r.est.launch_s, "fill": r.est.fill },
                    "unique_read_bytes": r.t.read_bytes.round() as u64, "unique_written_bytes": r.t.written_bytes.round() as u64,
                    "bytes_ratio": ratio(r.t.unique_bytes(), r.plan_bytes as f64),
                    "sector_efficiency": r.t.sector_efficiency(), "registers": r.registers,
                    "warp_instructions": r.t.warp_insts, "active_lanes_per_instruction": ratio(r.t.lanes, r.t.warp_insts),
                    "instructions_by_class": CLASSES.iter().map(|c| (c.name().to_string(), json!(r.t.by_class.get(c.name()).copied().unwrap_or(0.0)))).collect::<serde_json::Map<_, _>>(),
                    "global_requests": r.t.global_requests, "global_sectors": r.t.global_sectors,
                    "shared_requests": r.t.shared_requests, "shared_wavefronts": r.t.shared_wavefronts,
                    "atomic_lanes_per_address": ratio(r.t.atomic_lanes, r.t.atomic_addresses),
                    "launches": r.t.launches, "blocks_total": r.t.blocks_total, "blocks_run": r.t.blocks_run,
                    "buffers": r.t.buffers.iter().map(|b| json!({ "buffer": b.0, "bytes": b.1, "unique_read": b.2.round() as u64, "unique_written": b.3.round() as u64 })).collect::<Vec<_>>(),
                    "outside_buffers": { "unique_read": r.t.outside.0.round() as u64, "unique_written": r.t.outside.1.round() as u64 },
                    "hot_lines": hot.iter().take(8).map(|(l, v)| v.json(**l, &ptx_lines)).collect::<Vec<_>>(),
                    "uncoalesced_lines": wasteful.iter().take(8).map(|(l, v)| v.json(**l, &ptx_lines)).collect::<Vec<_>>(),
                    "bank_conflict_lines": conflicted.iter().take(8).map(|(l, v)| v.json(**l, &ptx_lines)).collect::<Vec<_>>(),
                    "findings": findings(r).unwrap_or_default(),
                })
            })
            .collect();
        let v = json!({
            "kernels": kernels,
            "totals": { "flops": tot.0 as u64, "plan_bytes": tot.1 as u64, "unique_bytes": tot.2.round() as u64, "estimate_s": tot.3 },
            "sampled_blocks": {
                "per_launch": sample, "seed": args.seed,
                "rule": "block 0, the last block and seeded random others per launch (all blocks when the grid is no larger); counters scale by grid / blocks run, unique bytes per buffer capped at its size",
                "launches": launches_json,
            },
            "card": card.json(),
            "model": args.model.display().to_string(), "mode": mode_name, "batch": tokens.batch, "seq": tokens.seq,
            "calibration": calib_json,
        });
        let text = serde_json::to_string_pretty(&v).map_err(internal)? + "\n";
        std::fs::write(path, text).map_err(|e| Failure::Other(anyhow::anyhow!("writing {}: {e}", path.display())))?;
    }
    if let Some(path) = &args.plot {
        let pts: Vec<(String, &'static str, f64, f64)> =
            rows.iter().filter(|r| r.flops > 0 && r.t.unique_bytes() > 0.0 && r.calibrated > 0.0).map(|r| (r.name.clone(), r.kind, r.flops as f64 / r.t.unique_bytes(), r.flops as f64 / r.calibrated)).collect();
        roofline_svg(path, card, &pts).map_err(|e| Failure::Other(anyhow::anyhow!("writing {}: {e}", path.display())))?;
    }
    Ok(())
}

/// What each pointer argument of launch `i` names, in order (the regions
/// the executor reports for it).
fn arg_labels(g: &Graph, program: &pgc_backends::ptx::program::Program, i: usize) -> Vec<String> {
    use pgc_backends::ptx::program::ArgRef;
    program.launches[i]
        .args
        .iter()
        .filter_map(|a| a.pointer())
        .filter_map(|a| match a {
            ArgRef::Value(v) => Some(match &program.plan.values[v.index()] {
                Place::Param { id, .. } => format!("%{} param {}", v.index(), g.params.get(id.index()).map_or("?", |p| p.name.as_str())),
                Place::Input { name } => format!("%{} input {name}", v.index()),
                _ => format!("%{} {}", v.index(), g.nodes[v.index()].op.name()),
            }),
            ArgRef::ParamMaster(id) => Some(format!("master {}", g.params.get(id.index()).map_or("?", |p| p.name.as_str()))),
            ArgRef::Aux(k) => Some(format!("aux {k}")),
            _ => None,
        })
        .collect()
}

struct Row {
    #[allow(dead_code)]
    k: usize,
    name: String,
    kind: &'static str,
    flops: u128,
    plan_bytes: u64,
    t: KernelTotals,
    occupancy: f64,
    registers: Option<u32>,
    est: Estimate,
    calibrated: f64,
}

/// What the report flags (the profile issue's thresholds): a kernel moving
/// more than 10% over the plan's bytes, with bank conflicts, or using under
/// 90% of the sector bytes it fetches.
const FLAG_BYTES_RATIO: f64 = 1.10;
const FLAG_SECTOR_EFFICIENCY: f64 = 0.90;
/// Wavefronts over ideal above this count as a conflict (1.0 is none; the
/// margin keeps rounding of sampled averages from flagging).
const FLAG_BANK_WAYS: f64 = 1.005;

fn findings(r: &Row) -> Option<Vec<String>> {
    let mut f = Vec::new();
    let bytes = ratio(r.t.unique_bytes(), r.plan_bytes as f64);
    if r.plan_bytes > 0 && bytes > FLAG_BYTES_RATIO {
        f.push(format!("bytes {bytes:.2}x the plan"));
    }
    let ways = r.t.bank_conflict_ways();
    if ways > FLAG_BANK_WAYS {
        f.push(format!("{ways:.2}-way bank conflicts"));
    }
    let eff = r.t.sector_efficiency();
    if r.t.global_sectors > 0.0 && eff < FLAG_SECTOR_EFFICIENCY {
        f.push(format!("sector efficiency {:.1}%", 100.0 * eff));
    }
    (!f.is_empty()).then_some(f)
}

fn ratio(a: f64, b: f64) -> f64 {
    ratio_or(a, b, 0.0)
}

/// `a / b`, or `empty` when there is nothing to divide by (`b` not positive).
fn ratio_or(a: f64, b: f64, empty: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        empty
    }
}

/// The roofline: log-log, arithmetic intensity (FLOP per unique byte) against
/// estimated FLOP/s, one point per kernel coloured by kind, with the card's
/// bf16 and fp32 roofs and its DRAM slope.
pub fn roofline_svg(path: &Path, card: &Card, pts: &[(String, &'static str, f64, f64)]) -> Result<(), String> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| format!("{e:?}"))?;
    let (xmin, xmax) = (1e-2f64, 1e4f64);
    let (ymin, ymax) = (1e8f64, 2e15f64);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("pgc profile roofline (estimate) on {}", "H100 SXM5 peaks"), ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((xmin..xmax).log_scale(), (ymin..ymax).log_scale())
        .map_err(|e| format!("{e:?}"))?;
    chart
        .configure_mesh()
        .x_desc("arithmetic intensity (FLOP per unique byte)")
        .y_desc("estimated FLOP/s")
        .x_label_formatter(&|x| format!("{x:.0e}"))
        .y_label_formatter(&|y| format!("{y:.0e}"))
        .draw()
        .map_err(|e| format!("{e:?}"))?;
    let roof = |peak: f64| -> Vec<(f64, f64)> {
        let mut v = Vec::new();
        let mut x = xmin;
        while x <= xmax {
            v.push((x, (x * card.dram_bytes_per_s).min(peak)));
            x *= 1.05;
        }
        v
    };
    chart.draw_series(LineSeries::new(roof(card.bf16_flops), BLACK.stroke_width(2))).map_err(|e| format!("{e:?}"))?.label("bf16 tensor roof / DRAM").legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart.draw_series(LineSeries::new(roof(card.f32_flops), BLACK.mix(0.5))).map_err(|e| format!("{e:?}"))?.label("fp32 roof").legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
    let kinds = ["gemm", "lm_head", "attention", "attention_backward", "row_wise", "reduce", "elementwise", "gather", "scatter", "cross_entropy", "weight_prep"];
    let colour = |kind: &str| Palette99::pick(kinds.iter().position(|k| *k == kind).unwrap_or(kinds.len()));
    for kind in kinds {
        let these: Vec<(f64, f64)> = pts.iter().filter(|p| p.1 == kind).map(|p| (p.2.clamp(xmin, xmax), p.3.clamp(ymin, ymax))).collect();
        if these.is_empty() {
            continue;
        }
        let c = colour(kind);
        chart
            .draw_series(these.iter().map(|&(x, y)| Circle::new((x, y), 4, c.filled())))
            .map_err(|e| format!("{e:?}"))?
            .label(format!("{kind} ({})", these.len()))
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, c.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).position(SeriesLabelPosition::LowerRight).draw().map_err(|e| format!("{e:?}"))?;
    root.present().map_err(|e| format!("{e:?}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupancy_limits() {
        // 128 threads, 64 registers: 8192 registers per block -> 8 blocks; 16 warps / 64... 32 warps
        assert_eq!(occupancy(128, Some(64), 0), (8, 0.5));
        // threads alone: 256 threads -> 8 blocks -> 64 warps
        assert_eq!(occupancy(256, None, 0), (8, 1.0));
        // shared memory: 100 KiB per block -> 2 blocks
        assert_eq!(occupancy(128, Some(32), 100 * 1024).0, 2);
    }

    #[test]
    fn calibration_fits_one_factor_per_bound() {
        let pairs = [("memory", 1.0, 2.0), ("memory", 2.0, 4.0), ("tensor", 1.0, 3.0), ("tensor", 1.0, 3.0)];
        let fit = calibrate(&pairs);
        assert_eq!(fit.len(), 2);
        let m = fit.iter().find(|f| f.0 == "memory").unwrap();
        assert!((m.1 - 2.0).abs() < 1e-12 && m.3 < 1e-12 && m.2 == 2);
        let t = fit.iter().find(|f| f.0 == "tensor").unwrap();
        assert!((t.1 - 3.0).abs() < 1e-12);
        // a spread gives a fit error
        let fit = calibrate(&[("issue", 1.0, 1.0), ("issue", 1.0, 4.0)]);
        assert!((fit[0].1 - 2.0).abs() < 1e-12 && (fit[0].3 - 2f64.ln()).abs() < 1e-12);
    }
}
