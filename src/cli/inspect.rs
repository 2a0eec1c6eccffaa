//! `pgc inspect MODEL.pgz`: per tensor its storage class, packing, shape, raw
//! and compressed bytes; the total against the 16,000,000-byte budget (less
//! `--code-bytes`), and the size the seed's format would give the same weights
//! (int8 containers + f16 row scales, zstd-22). `--json` prints the same as an
//! object (`artifact_bytes`, `seed_format_bytes`, ...); `--dump` writes every
//! tensor as stored after dequantization (f32 safetensors, spec names).

use super::export::bad;
use super::{CliResult, Failure};
use pgc_runtime::artifact::{self, BUDGET_BYTES};
use pgc_runtime::weights::{self, HostData, HostTensor};
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct InspectArgs {
    /// The artifact.
    pub artifact: PathBuf,
    /// Print a JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write the dequantized tensors (f32) to this safetensors file.
    #[arg(long, value_name = "DEQUANTIZED.safetensors")]
    pub dump: Option<PathBuf>,
    /// Bytes of code counted against the budget with the artifact.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub code_bytes: u64,
}

pub fn run(args: InspectArgs) -> CliResult {
    let p = args.artifact.display().to_string();
    let bytes = std::fs::read(&args.artifact).map_err(|e| bad(format!("cannot read {p}: {e}")))?;
    let art = artifact::load_bytes(&bytes).map_err(|e| bad(format!("{p}: {e}")))?;
    let seed = artifact::seed_format_bytes(&art).map_err(|e| Failure::Other(e.into()))?;
    let total = art.total_bytes + args.code_bytes;
    let fits = total <= BUDGET_BYTES;
    if let Some(d) = &args.dump {
        let ts: Vec<(String, HostTensor)> = art
            .tensors
            .iter()
            .map(|t| (t.name.clone(), HostTensor::new(t.shape.clone(), HostData::F32(t.values.iter().map(|&v| v as f32).collect()))))
            .collect();
        weights::save(d, &ts, None).map_err(|e| Failure::Other(e.into()))?;
    }
    if args.json {
        let tensors: Vec<_> = art
            .tensors
            .iter()
            .map(|t| {
                json!({"name": t.name, "class": t.storage.label(), "storage": t.storage.to_string(), "packing": t.packing.label(),
                       "shape": t.shape, "prune": t.prune, "raw_bytes": t.raw_bytes, "compressed_bytes": t.compressed_bytes})
            })
            .collect();
        let v = json!({
            "artifact_bytes": art.total_bytes,
            "seed_format_bytes": seed,
            "code_bytes": args.code_bytes,
            "total_bytes": total,
            "budget_bytes": BUDGET_BYTES,
            "fits": fits,
            "version": art.version,
            "ir_hash": format!("{:016x}", art.ir_hash),
            "constants": art.constants.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "tensors": tensors,
        });
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| Failure::Other(e.into()))?);
        return Ok(());
    }
    println!("{p}: pgc artifact v{}, IR hash {:016x}, {} tensors", art.version, art.ir_hash, art.tensors.len());
    println!("{:<34} {:<18} {:<10} {:>16} {:>12} {:>12}", "tensor", "class", "packing", "shape", "raw B", "zstd B");
    for t in &art.tensors {
        println!(
            "{:<34} {:<18} {:<10} {:>16} {:>12} {:>12}",
            t.name,
            t.storage.to_string(),
            t.packing.label(),
            format!("{:?}", t.shape),
            t.raw_bytes,
            t.compressed_bytes
        );
    }
    let mut classes: Vec<(String, u64, u64, usize)> = Vec::new();
    for t in &art.tensors {
        let l = t.storage.label();
        match classes.iter_mut().find(|c| c.0 == l) {
            Some(c) => {
                c.1 += t.raw_bytes;
                c.2 += t.compressed_bytes;
                c.3 += 1
            }
            None => classes.push((l, t.raw_bytes, t.compressed_bytes, 1)),
        }
    }
    for (l, r, c, n) in &classes {
        println!("{:<34} {:<18} {:<10} {:>16} {:>12} {:>12}", format!("  total {l}"), format!("{n} tensors"), "", "", r, c);
    }
    println!("artifact: {} bytes (headers, table and checksum included)", art.total_bytes);
    if args.code_bytes > 0 {
        println!("code: {} bytes; artifact + code: {total} bytes", args.code_bytes);
    }
    println!(
        "budget: {total} / {BUDGET_BYTES} bytes ({}; {} bytes {})",
        if fits { "fits" } else { "OVER BUDGET" },
        BUDGET_BYTES.abs_diff(total),
        if fits { "to spare" } else { "over" }
    );
    println!("seed format (int8 containers + f16 row scales, zstd-22) for the same weights: {seed} bytes");
    if let Some(d) = &args.dump {
        println!("wrote {}", d.display());
    }
    Ok(())
}
