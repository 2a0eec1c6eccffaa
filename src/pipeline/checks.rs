//! Checks every command's inputs go through before work starts: memory a
//! run would need (refused with the figure rather than aborting in the
//! allocator), non-finite weights, tensors of a weights file nobody reads.

use super::{input, Result};

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
pub fn check_finite(path: &std::path::Path, params: &[pgc_ir::graph::ParamInfo], values: &std::collections::HashMap<String, Vec<f64>>) -> Result<()> {
    for p in params {
        if let Some((i, x)) = values.get(&p.name).and_then(|v| v.iter().enumerate().find(|(_, x)| !x.is_finite())) {
            return Err(input(format!(
                "{}: parameter `{}` has {x} at flat index {i} (shape {:?}); pass --allow-nonfinite to run anyway",
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
pub fn check_memory(what: &str, bytes: u128) -> Result<()> {
    match memory_limit() {
        Some(limit) if bytes > limit => Err(input(format!(
            "{what} need {} of memory, more than the {} available (address-space limit or free memory): make the model or the batch smaller",
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

