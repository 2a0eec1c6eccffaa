//! One GEMM test body for every device: run a case of the GEMM emitters'
//! test matrix (`gemm_matrix::cases`) on a [`Device`] and
//! compare it with the f64 reference. `tests/ptx/gemm.rs` runs it on the
//! simulator, `tests/cuda/gpu.rs` on a GPU.

use pgc_backends::ptx::builder::Module;
use pgc_backends::ptx::templates::epilogue::DType;
use pgc_backends::ptx::templates::gemm::{GemmKernel, GemmPath};
use pgc_backends::ptx::templates::gemm_wgmma::{operand_maps, OperandMap};
use super::gemm_matrix::{decode, encode, rel_err, GemmCase};
use pgc_runtime::device::{DevBuf, Device, KernelArg, LaunchConfig, ModuleHandle, TensorMap, TmaDtype, TmaSwizzle};
use std::collections::BTreeMap;

/// `elems` NaNs of `dt`: outputs start as NaN so an element the kernel
/// fails to write shows up.
pub fn nan_bytes(elems: usize, dt: DType) -> Vec<u8> {
    match dt {
        DType::F32 => (0..elems).flat_map(|_| f32::NAN.to_le_bytes()).collect(),
        DType::Bf16 => (0..elems).flat_map(|_| 0x7fc0u16.to_le_bytes()).collect(),
        DType::I32 => (0..elems).flat_map(|_| i32::MIN.to_le_bytes()).collect(),
    }
}

/// A module holding just `k`.
pub fn render(k: &GemmKernel) -> String {
    let mut module = Module::new();
    module.push(k.kernel.clone());
    module.render()
}

/// Run a case's kernel (loaded as `mh`) on `inputs`; returns its outputs.
pub fn run_gemm(
    dev: &dyn Device,
    mh: &ModuleHandle,
    k: &GemmKernel,
    case: &GemmCase,
    inputs: &BTreeMap<String, Vec<f64>>,
) -> Result<BTreeMap<String, Vec<f64>>, String> {
    run_gemm_on_grid(dev, mh, k, case, inputs, k.grid(case.m, case.n))
}

/// [`run_gemm`] on a grid of the caller's choosing (persistent kernels
/// cover the output with any number of blocks).
pub fn run_gemm_on_grid(
    dev: &dyn Device,
    mh: &ModuleHandle,
    k: &GemmKernel,
    case: &GemmCase,
    inputs: &BTreeMap<String, Vec<f64>>,
    grid: [u32; 3],
) -> Result<BTreeMap<String, Vec<f64>>, String> {
    let specs = case.tensors();
    let mut bufs = vec![];
    for t in &specs {
        let bytes = if t.output && !t.initial { nan_bytes(t.elems, t.dtype) } else { encode(&inputs[&t.name], t.dtype) };
        let b = dev.alloc(bytes.len()).map_err(|e| e.to_string())?;
        dev.copy_to_device(&b, &bytes).map_err(|e| e.to_string())?;
        bufs.push(b);
    }
    let mut args: Vec<KernelArg> = bufs[..3].iter().map(|b| KernelArg::Buf(*b, 0)).collect();
    if k.config.path == GemmPath::Wgmma {
        // the wgmma kernels take A and B as tensor maps
        let (ma, mb) = operand_maps(&k.config.wgmma_spec(), case.m, case.n, case.k);
        let map = |b: &DevBuf, m: OperandMap| -> Result<KernelArg, String> {
            TensorMap::matrix(b, 0, TmaDtype::Bf16, m.rows as u64, m.cols as u64, m.cols as u64 * 2, m.box_rows, m.box_cols, TmaSwizzle::B128).map(KernelArg::TensorMap)
        };
        if !k.config.a_f32 {
            args[0] = map(&bufs[0], ma)?;
        }
        if !k.config.b_f32 {
            args[1] = map(&bufs[1], mb)?;
        }
    }
    args.extend([KernelArg::U32(case.m), KernelArg::U32(case.n), KernelArg::U32(case.k)]);
    args.extend(bufs[3..].iter().map(|b| KernelArg::Buf(*b, 0)));
    let cfg = LaunchConfig { grid, block: k.block(), shared_bytes: k.smem_bytes };
    dev.launch(mh, k.name(), cfg, &args).map_err(|e| format!("{}: {e}", k.name()))?;
    dev.synchronize().map_err(|e| format!("{}: {e}", k.name()))?;
    let mut out = BTreeMap::new();
    for (t, b) in specs.iter().zip(&bufs) {
        if t.output {
            let mut bytes = vec![0u8; b.bytes];
            dev.copy_from_device(b, &mut bytes).map_err(|e| e.to_string())?;
            out.insert(t.name.clone(), decode(&bytes, t.dtype));
        }
        dev.free(*b).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// One output of a checked case: its relative error against the f64
/// reference and the tolerance for its element type.
pub struct OutputErr {
    pub name: String,
    pub dtype: DType,
    pub err: f64,
    pub tol: f64,
}

impl OutputErr {
    pub fn ok(&self) -> bool {
        self.err <= self.tol // false for NaN
    }
}

/// Run `case` on inputs drawn from `seed` and compare every output with
/// `GemmCase::reference`.
pub fn check_case(dev: &dyn Device, mh: &ModuleHandle, k: &GemmKernel, case: &GemmCase, seed: u64) -> Result<Vec<OutputErr>, String> {
    let inputs = case.inputs(seed);
    let want = case.reference(&inputs);
    let got = run_gemm(dev, mh, k, case, &inputs)?;
    Ok(case
        .tensors()
        .iter()
        .filter(|t| t.output)
        .map(|t| OutputErr {
            name: t.name.clone(),
            dtype: t.dtype,
            err: rel_err(&got[&t.name], &want[&t.name]),
            tol: GemmCase::tolerance(t.dtype),
        })
        .collect())
}

/// Check `cases` on `dev` (case `i` with inputs from `seed + i`, its kernel
/// and module from `load`), printing one line per output and calling `each`
/// with it; returns the failures. The body the simulator and the GPU share.
pub fn check_cases(
    dev: &dyn Device,
    cases: &[GemmCase],
    seed: u64,
    load: &dyn Fn(usize, &GemmCase) -> Result<(GemmKernel, ModuleHandle), String>,
    each: &mut dyn FnMut(&GemmCase, &OutputErr),
) -> Vec<String> {
    let mut failures = vec![];
    for (i, c) in cases.iter().enumerate() {
        let label = format!("{} {}x{}x{}", c.config.name, c.m, c.n, c.k);
        match load(i, c).and_then(|(k, mh)| check_case(dev, &mh, &k, c, seed.wrapping_add(i as u64))) {
            Ok(errs) => {
                for o in errs {
                    let line = format!("{label} {}: rel err {:.3e} (tol {:.0e})", o.name, o.err, o.tol);
                    println!("{line}");
                    each(c, &o);
                    if !o.ok() {
                        failures.push(line);
                    }
                }
            }
            Err(e) => failures.push(format!("{label}: {e}")),
        }
    }
    failures
}
