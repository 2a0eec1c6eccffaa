//! Subcommands and the error convention shared by all of them.

pub mod bench;
pub mod compile;
pub mod eval;
pub mod export;
pub mod inspect;
pub mod progress;
pub mod run;
pub mod verify;

use std::process::ExitCode;

/// How a subcommand failed; decides the exit status.
#[derive(Debug)]
pub enum Failure {
    /// Bad input (model text, weights, tokens, flags): exit 2. The message is
    /// already formatted for the terminal (diagnostics included).
    BadInput(String),
    /// A check ran and failed (e.g. `verify`): exit 1.
    CheckFailed(String),
    /// Anything else (I/O on outputs, internal errors): exit 2 with context.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

pub type CliResult = Result<(), Failure>;

pub fn finish(result: CliResult) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BadInput(msg)) => {
            eprintln!("{}", msg.trim_end());
            ExitCode::from(2)
        }
        Err(Failure::CheckFailed(msg)) => {
            eprintln!("{}", msg.trim_end());
            ExitCode::from(1)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Lower `source` (named `path`) in `mode`: diagnostics are bad input (exit
/// 2); the frontend's warnings go to stderr, once per process (commands lower
/// a model more than once); a model with no `output` is refused, since no
/// command has anything to compute for it.
pub fn lower_model(source: &str, path: &str, sets: &[(String, String)], mode: pgc_ir::Mode) -> Result<pgc_ir::Graph, Failure> {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let (g, warnings) = pgc_frontend::compile_model_warn(source, path, sets, mode).map_err(|d| Failure::BadInput(d.render(source)))?;
    if g.outputs.is_empty() {
        return Err(Failure::BadInput(format!(
            "error: {path}: the model declares no `output` (an empty file?): there is nothing to compile or run"
        )));
    }
    if !warnings.items.is_empty() && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        eprint!("{}", warnings.render_warnings(source));
    }
    Ok(g)
}

/// Warn (stderr) about tensors of a weights file that no parameter reads.
pub fn warn_unused_tensors(path: &std::path::Path, prefix: &str, params: &[pgc_ir::graph::ParamInfo]) {
    let extra = pgc_runtime::weights::unused_tensors(path, prefix, params);
    if extra.is_empty() {
        return;
    }
    let shown: Vec<String> = extra.iter().take(10).map(|n| format!("`{n}`")).collect();
    let more = if extra.len() > 10 { format!(" and {} more", extra.len() - 10) } else { String::new() };
    eprintln!(
        "warning: {}: {} tensor{} no parameter of the model reads (a typo'd name?): {}{more}",
        path.display(),
        extra.len(),
        if extra.len() == 1 { "" } else { "s" },
        shown.join(", ")
    );
}

/// Refuse NaN and infinite weights, naming the first tensor and index.
pub fn check_finite(path: &std::path::Path, params: &[pgc_ir::graph::ParamInfo], values: &std::collections::HashMap<String, Vec<f64>>) -> Result<(), Failure> {
    for p in params {
        if let Some((i, x)) = values.get(&p.name).and_then(|v| v.iter().enumerate().find(|(_, x)| !x.is_finite())) {
            return Err(Failure::BadInput(format!(
                "error: {}: parameter `{}` has {x} at flat index {i} (shape {:?}); pass --allow-nonfinite to run anyway",
                path.display(),
                p.name,
                p.shape
            )));
        }
    }
    Ok(())
}

/// The memory a command may use: the address-space limit (`ulimit -v`) or,
/// below it, the memory the system has available (Linux `MemAvailable`);
/// None when neither is known.
pub fn memory_limit() -> Option<u128> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("MemAvailable:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u128>().ok()).map(|kb| kb * 1024)
    });
    // /proc/self/limits: "Max address space  LIMIT  LIMIT  bytes" ("unlimited" when none).
    let rlimit = std::fs::read_to_string("/proc/self/limits").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("Max address space")).and_then(|l| l.split_whitespace().nth(3)?.parse::<u128>().ok())
    });
    match (meminfo, rlimit) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Refuse, before allocating, work whose memory (`bytes`, an estimate of
/// what `what` needs) exceeds [`memory_limit`].
pub fn check_memory(what: &str, bytes: u128) -> Result<(), Failure> {
    match memory_limit() {
        Some(limit) if bytes > limit => Err(Failure::BadInput(format!(
            "error: {what} need {} of memory, more than the {} available (address-space limit or free memory): make the model or the batch smaller",
            human_bytes(bytes),
            human_bytes(limit)
        ))),
        _ => Ok(()),
    }
}

/// A lower bound of what executing `g` needs: the parameters (f64 on the
/// host) and its largest tensor at `elem` bytes an element, twice (a value and
/// its gradient or an operand).
pub fn run_memory(g: &pgc_ir::Graph, elem: u128) -> u128 {
    let params: u128 = g.params.iter().map(|p| p.numel() as u128 * 8).sum();
    let largest = g.nodes.iter().map(|n| n.ty.numel() as u128).max().unwrap_or(0);
    params + 2 * largest * elem
}

pub fn human_bytes(b: u128) -> String {
    let f = b as f64;
    if f >= 1e9 {
        format!("{:.1} GB ({b} bytes)", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1} MB", f / 1e6)
    } else {
        format!("{b} bytes")
    }
}

/// Parse `--set NAME=VALUE` flags into pairs (the model decides what names exist).
pub fn parse_sets(sets: &[String]) -> Result<Vec<(String, String)>, Failure> {
    sets.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => Err(Failure::BadInput(format!("error: --set expects NAME=VALUE, got `{s}`"))),
        })
        .collect()
}
