//! The CUDA backend on a real GPU: vector add, the GEMM emitters' whole test
//! matrix (bf16 tensor-core and f32 FFMA kernels, every layout, awkward
//! shapes, epilogues, tile presets, split-K) against an f64 host reference
//! (the check body of `tests/common/gemm.rs`, which `tests/ptx/gemm.rs` runs
//! on the simulator),
//! the error paths, events and graphs, and the timing of the model's large
//! GEMM (16384x1536x512, LINEAR, bf16) in TFLOP/s.
//!
//! Without a GPU every test prints a skip note and passes, unless
//! `PGC_REQUIRE_GPU=1` (then they fail). Inputs are drawn fresh each run:
//! the seed is printed, and `PGC_SEED=N` repeats a run. Lines starting with
//! `SUMMARY` are collected by `scripts/gpu-smoke`. `PGC_GPU_PERF_ALL=1` also
//! times every model-sized case of `common::gemm_matrix::perf_cases`.
//! Tests take a lock so that timings never overlap; their names number them
//! in the order `--test-threads=1` runs them (device, correctness, timing).

use crate::common;
use crate::GPU_LOCK;

use common::gemm::{check_cases, nan_bytes, render};
use pgc_backends::ptx::templates::epilogue::DType;
use pgc_backends::ptx::templates::gemm::{emit_gemm, GemmKernel, GemmLayout, GemmPath, Precision};
use pgc_backends::ptx::templates::gemm_wgmma::operand_maps;
use common::gemm_matrix::{cases, decode, encode, perf_cases, rel_err, round_to, wgmma_cases, EpiCase, GemmCase, Lcg};
use pgc_runtime::cuda::{CudaDevice, TimingOptions};
use pgc_runtime::device::{DevBuf, Device, DeviceError, DeviceExt, KernelArg, LaunchConfig, ModuleHandle, TensorMap, TmaDtype, TmaSwizzle};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

const VECTOR_ADD: &str = include_str!("../ptx/vector_add.ptx");

/// The device and the lock, or None (skip) when there is no GPU; panics
/// instead when `PGC_REQUIRE_GPU=1`.
fn gpu(test: &str) -> Option<(MutexGuard<'static, ()>, CudaDevice)> {
    let guard = GPU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    match CudaDevice::new(0) {
        Ok(d) => Some((guard, d)),
        Err(e) => {
            if std::env::var("PGC_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("{test}: PGC_REQUIRE_GPU=1 but no GPU could be opened: {e}");
            }
            println!("{test}: skipped, no GPU ({e})");
            None
        }
    }
}

fn seed(test: &str) -> u64 {
    let s = match std::env::var("PGC_SEED").ok().and_then(|v| v.parse().ok()) {
        Some(s) => s,
        None => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) % 1_000_000_007,
    };
    println!("{test}: seed {s} (PGC_SEED={s} repeats it)");
    s
}

fn bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn gpu_0_info() {
    let Some((_g, dev)) = gpu("gpu_info") else { return };
    let i = dev.info();
    let (free, total) = dev.mem_info().unwrap();
    println!(
        "SUMMARY device: {} (sm_{}{}, {} SMs, {} KiB shared/block opt-in, {:.1} GiB, {:.1} GiB free, driver {}.{})",
        i.name,
        i.compute_capability.0,
        i.compute_capability.1,
        i.sm_count,
        i.max_shared_per_block_optin / 1024,
        total as f64 / (1u64 << 30) as f64,
        free as f64 / (1u64 << 30) as f64,
        i.driver_version / 1000,
        i.driver_version % 1000 / 10
    );
    assert_eq!(dev.name(), i.name);
    assert!(i.sm_count > 0 && total > 0);
}

#[test]
fn gpu_1_vector_add_events_and_graph() {
    let Some((_g, dev)) = gpu("gpu_vector_add") else { return };
    let mut rng = Lcg(seed("gpu_vector_add"));
    let n: usize = (1 << 22) + 3; // a partial last block
    let a: Vec<f32> = (0..n).map(|_| rng.uniform() as f32).collect();
    let b: Vec<f32> = (0..n).map(|_| rng.uniform() as f32).collect();
    let (da, db) = (dev.upload_f32(&a).unwrap(), dev.upload_f32(&b).unwrap());
    let (dc, dd) = (dev.alloc(n * 4).unwrap(), dev.alloc(n * 4).unwrap());
    dev.fill(&dc, 0xff).unwrap(); // NaN
    dev.fill(&dd, 0xff).unwrap();
    let m = dev.load_module(VECTOR_ADD).unwrap();
    let ki = dev.kernel_info(&m, "vector_add").unwrap();
    println!("vector_add: {ki:?}");
    let cfg = LaunchConfig::linear((n as u32).div_ceil(256), 256);
    let add = |x: &DevBuf, y: &DevBuf, out: &DevBuf| dev.launch(&m, "vector_add", cfg, &[KernelArg::Buf(*x, 0), KernelArg::Buf(*y, 0), KernelArg::Buf(*out, 0), KernelArg::U32(n as u32)]);
    add(&da, &db, &dc).unwrap();
    dev.synchronize().unwrap();
    let c = dev.download_f32(&dc).unwrap();
    let wrong = (0..n).filter(|&i| c[i].to_bits() != (a[i] + b[i]).to_bits()).count();
    assert_eq!(wrong, 0, "{wrong} of {n} elements differ from a + b (NaN = never written)");

    // events: bandwidth of the add (3 x 4 bytes per element)
    let t = dev.time_launches_with(TimingOptions { warmup: 3, repeats: 30 }, || add(&da, &db, &dc)).unwrap();
    let gbs = 12.0 * n as f64 / (t.median_ms * 1e-3) / 1e9;
    println!("SUMMARY vector_add n={n}: median {:.4} ms (min {:.4}, max {:.4}), {gbs:.0} GB/s", t.median_ms, t.min_ms, t.max_ms);
    assert!(t.median_ms > 0.0 && t.median_ms.is_finite());

    // a graph of two dependent launches: d = (a + b) + b
    dev.fill(&dc, 0xff).unwrap();
    let graph = dev
        .capture_graph(|| {
            add(&da, &db, &dc)?;
            add(&dc, &db, &dd)
        })
        .unwrap();
    assert_eq!(graph.kernels(), ["vector_add", "vector_add"]);
    // nothing ran during capture
    assert!(dev.download_f32(&dc).unwrap()[..16].iter().all(|v| v.is_nan()));
    graph.launch().unwrap();
    dev.synchronize().unwrap();
    let d = dev.download_f32(&dd).unwrap();
    let wrong = (0..n).filter(|&i| d[i].to_bits() != ((a[i] + b[i]) + b[i]).to_bits()).count();
    assert_eq!(wrong, 0, "graph replay: {wrong} of {n} elements wrong");
    let tg = dev.time_launches(|| graph.launch()).unwrap();
    println!("SUMMARY graph of 2 vector_add launches: median {tg:.4} ms");
    // copies and synchronisation are refused during capture, and the stream recovers
    let e = dev.capture_graph(|| dev.synchronize()).err().expect("synchronize inside a capture must fail");
    assert!(e.to_string().contains("capturing"), "{e}");
    add(&da, &db, &dc).unwrap();
    dev.synchronize().unwrap();
    for buf in [da, db, dc, dd] {
        dev.free(buf).unwrap();
    }
}

#[test]
fn gpu_2_error_paths() {
    let Some((_g, dev)) = gpu("gpu_error_paths") else { return };
    let m = dev.load_module(VECTOR_ADD).unwrap();
    let buf = dev.alloc(1024).unwrap();
    let args = [KernelArg::Buf(buf, 0), KernelArg::Buf(buf, 0), KernelArg::Buf(buf, 0), KernelArg::U32(256)];
    let one = LaunchConfig::linear(1, 256);
    let show = |what: &str, e: DeviceError| {
        println!("{what}: {e}");
        e
    };
    assert!(matches!(show("unknown kernel", dev.launch(&m, "nope", one, &args).unwrap_err()), DeviceError::UnknownKernel(_)));
    assert!(matches!(show("3 args", dev.launch(&m, "vector_add", one, &args[..3]).unwrap_err()), DeviceError::BadArgs { .. }));
    let mut wrong = args;
    wrong[3] = KernelArg::U64(256);
    assert!(matches!(show("u64 for u32", dev.launch(&m, "vector_add", one, &wrong).unwrap_err()), DeviceError::BadArgs { .. }));
    let big = LaunchConfig::linear(1, 2048);
    assert!(matches!(show("2048 threads", dev.launch(&m, "vector_add", big, &args).unwrap_err()), DeviceError::BadLaunch { .. }));
    let smem = LaunchConfig { shared_bytes: 1 << 20, ..one };
    assert!(matches!(show("1 MiB shared", dev.launch(&m, "vector_add", smem, &args).unwrap_err()), DeviceError::BadLaunch { .. }));
    let bad_ptx = VECTOR_ADD.replace("add.rn.f32          %f3, %f1, %f2;", "add.rn.f32          %f3, %f1, %nonesuch;");
    assert_ne!(bad_ptx, VECTOR_ADD);
    match show("bad PTX", dev.load_module(&bad_ptx).unwrap_err()) {
        DeviceError::Ptx { line, .. } => assert!(line > 0),
        DeviceError::Driver { msg, .. } => assert!(msg.contains("nonesuch") || msg.contains("PTX"), "{msg}"),
        e => panic!("unexpected error {e:?}"),
    }
    assert!(matches!(dev.copy_to_device(&buf, &[0u8; 2048]).unwrap_err(), DeviceError::CopySize { .. }));
    dev.free(buf).unwrap();
    assert!(matches!(dev.launch(&m, "vector_add", one, &args).unwrap_err(), DeviceError::InvalidBuffer(_)));
    assert!(matches!(dev.free(buf).unwrap_err(), DeviceError::InvalidBuffer(_)));
    assert!(matches!(dev.launch(&ModuleHandle { id: 9999 }, "vector_add", one, &args).unwrap_err(), DeviceError::InvalidModule(_)));
    // the device still works
    dev.synchronize().unwrap();
}

// ---------------------------------------------------------------------------
// GEMM

/// Load many PTX modules at once (the driver JIT is the slow part).
fn load_all(dev: &CudaDevice, ptx: &[String]) -> Vec<Result<ModuleHandle, String>> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(4).clamp(1, 16);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out: Mutex<Vec<Option<Result<ModuleHandle, String>>>> = Mutex::new(vec![None; ptx.len()]);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= ptx.len() {
                    break;
                }
                let r = dev.load_module(&ptx[i]).map_err(|e| e.to_string());
                out.lock().unwrap()[i] = Some(r);
            });
        }
    });
    out.into_inner().unwrap().into_iter().map(|r| r.unwrap()).collect()
}

/// Every case of the GEMM emitters' test matrix, as on the simulator, with
/// fresh inputs each run.
#[test]
fn gpu_3_gemm_matrix() {
    let Some((_g, dev)) = gpu("gpu_gemm_matrix") else { return };
    let base = seed("gpu_gemm_matrix");
    // the mma.sync / FFMA matrix and the wgmma path's cases (TMA, mbarriers, warpgroups on silicon)
    let mut all = cases();
    all.extend(wgmma_cases());
    let t0 = std::time::Instant::now();
    let kernels: Vec<Result<GemmKernel, String>> = all.iter().map(|c| emit_gemm(&c.config).map_err(|e| e.to_string())).collect();
    let ptx: Vec<String> = kernels.iter().map(|k| k.as_ref().map(render).unwrap_or_default()).collect();
    let modules = load_all(&dev, &ptx);
    println!("gpu_gemm_matrix: {} kernels emitted and JIT-compiled in {:.1} s", all.len(), t0.elapsed().as_secs_f64());
    let mut worst: BTreeMap<&'static str, f64> = BTreeMap::new();
    let load = |i: usize, _: &GemmCase| match (&kernels[i], &modules[i]) {
        (Ok(k), Ok(m)) => Ok((k.clone(), *m)),
        (Err(e), _) | (_, Err(e)) => Err(e.clone()),
    };
    let failures = check_cases(&dev, &all, base, &load, &mut |c, o| {
        let key = match (c.config.precision, o.dtype) {
            (Precision::Bf16, DType::F32) => "bf16 in, f32 out",
            (Precision::Bf16, DType::Bf16) => "bf16 in, bf16 out",
            (Precision::F32, DType::F32) => "f32 in, f32 out",
            (Precision::F32, DType::Bf16) => "f32 in, bf16 out",
            (_, DType::I32) => "i32 out",
        };
        let w = worst.entry(key).or_insert(0.0);
        *w = w.max(o.err);
    });
    let worst: Vec<String> = worst.iter().map(|(k, v)| format!("{k} {v:.2e}")).collect();
    println!(
        "SUMMARY gemm matrix: {} cases, {} failures; worst rel err: {} ({:.1} s)",
        all.len(),
        failures.len(),
        worst.join(", "),
        t0.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

/// Time `case` (`rotate` input sets to keep the cache honest); check its
/// output on sampled elements against f64. Returns the summary line.
fn time_gemm(dev: &CudaDevice, case: &GemmCase, seed: u64, samples: usize) -> Result<String, String> {
    let (m, n, kk) = (case.m as usize, case.n as usize, case.k as usize);
    assert!(case.config.epilogue.steps.is_empty(), "plain GEMMs only");
    let k = emit_gemm(&case.config).map_err(|e| e.to_string())?;
    let mh = dev.load_module(&render(&k)).map_err(|e| e.to_string())?;
    let info = dev.kernel_info(&mh, k.name()).map_err(|e| e.to_string())?;
    let in_t = match case.config.precision {
        Precision::Bf16 => DType::Bf16,
        Precision::F32 => DType::F32,
    };
    let out_t = case.config.epilogue.out;
    let mut rng = Lcg(seed);
    let mut gen = |len: usize| -> Vec<f64> { (0..len).map(|_| round_to(rng.uniform(), in_t)).collect() };
    let (a, b) = (gen(m * kk), gen(kk * n));
    let da = e(dev.alloc(m * kk * in_t_bytes(in_t)))?;
    let db = e(dev.alloc(kk * n * in_t_bytes(in_t)))?;
    let dc = e(dev.alloc(m * n * in_t_bytes(out_t)))?;
    e(dev.copy_to_device(&da, &encode(&a, in_t)))?;
    e(dev.copy_to_device(&db, &encode(&b, in_t)))?;
    e(dev.copy_to_device(&dc, &nan_bytes(m * n, out_t)))?;
    let mut args = [KernelArg::Buf(da, 0), KernelArg::Buf(db, 0), KernelArg::Buf(dc, 0), KernelArg::U32(case.m), KernelArg::U32(case.n), KernelArg::U32(case.k)];
    if case.config.path == GemmPath::Wgmma {
        let (ma, mb) = operand_maps(&case.config.wgmma_spec(), case.m, case.n, case.k);
        for (arg, (buf, mp)) in args.iter_mut().zip([(da, ma), (db, mb)]) {
            *arg = KernelArg::TensorMap(TensorMap::matrix(&buf, 0, TmaDtype::Bf16, mp.rows as u64, mp.cols as u64, mp.cols as u64 * 2, mp.box_rows, mp.box_cols, TmaSwizzle::B128)?);
        }
    }
    let cfg = LaunchConfig { grid: k.grid(case.m, case.n), block: k.block(), shared_bytes: k.smem_bytes };
    // correctness first (split-K accumulates into C: start from zero)
    if case.config.split_k > 1 {
        e(dev.fill(&dc, 0))?;
    }
    e(dev.launch(&mh, k.name(), cfg, &args))?;
    e(dev.synchronize())?;
    let mut bytes = vec![0u8; dc.bytes];
    e(dev.copy_from_device(&dc, &mut bytes))?;
    let c = decode(&bytes, out_t);
    let unwritten = c.iter().filter(|v| v.is_nan()).count();
    let mut got = vec![];
    let mut want = vec![];
    let mut srng = Lcg(seed ^ 0x5eed);
    for _ in 0..samples {
        let (i, j) = (srng.next_u32() as usize % m, srng.next_u32() as usize % n);
        let mut acc = 0.0f64;
        for p in 0..kk {
            let av = match case.config.layout.a {
                pgc_backends::ptx::templates::gemm::AStore::MK => a[i * kk + p],
                pgc_backends::ptx::templates::gemm::AStore::KM => a[p * m + i],
            };
            let bv = match case.config.layout.b {
                pgc_backends::ptx::templates::gemm::BStore::NK => b[j * kk + p],
                pgc_backends::ptx::templates::gemm::BStore::KN => b[p * n + j],
            };
            acc += av * bv;
        }
        got.push(c[i * n + j]);
        want.push(round_to(acc, out_t));
    }
    let err = rel_err(&got, &want);
    let tol = GemmCase::tolerance(out_t);
    // timing: events around each launch; then a graph of 20 launches
    let launch = || dev.launch(&mh, k.name(), cfg, &args);
    let t = e(dev.time_launches_with(TimingOptions { warmup: 5, repeats: 30 }, launch))?;
    let graph = e(dev.capture_graph(|| (0..20).try_for_each(|_| launch())))?;
    let tg = e(dev.time_launches_with(TimingOptions { warmup: 2, repeats: 10 }, || graph.launch()))?.median_ms / 20.0;
    drop(graph);
    for buf in [da, db, dc] {
        e(dev.free(buf))?;
    }
    let flop = 2.0 * m as f64 * n as f64 * kk as f64;
    let line = format!(
        "{} {m}x{n}x{kk} {}: {:.4} ms median ({:.4}..{:.4}), {:.1} TFLOP/s; in a graph {:.4} ms/launch, {:.1} TFLOP/s; {} regs, {} B local, {} B shared; sampled rel err {err:.2e}",
        case.config.layout.tag(),
        case.config.name,
        t.median_ms,
        t.min_ms,
        t.max_ms,
        flop / (t.median_ms * 1e-3) / 1e12,
        tg,
        flop / (tg * 1e-3) / 1e12,
        info.registers,
        info.local_bytes,
        k.smem_bytes + info.static_shared_bytes,
    );
    if unwritten > 0 || err.is_nan() || err > tol {
        return Err(format!("{line}: WRONG ({unwritten} elements never written, tol {tol:.0e})"));
    }
    Ok(line)
}

fn e<T>(r: Result<T, DeviceError>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

fn in_t_bytes(t: DType) -> usize {
    t.bytes() as usize
}

/// The model's large forward GEMM, `x[16384, 512] @ W[1536, 512]^T` (bf16 in
/// and out, f32 accumulation): the default tile and the timed presets.
#[test]
fn gpu_4_gemm_large_timing() {
    let Some((_g, dev)) = gpu("gpu_gemm_large_timing") else { return };
    let base = seed("gpu_gemm_large_timing");
    let (m, n, k) = (16384u32, 1536u32, 512u32);
    let first = GemmCase::new(Precision::Bf16, GemmLayout::LINEAR, (m, n, k), EpiCase::Store, DType::Bf16);
    let default = first.config.clone();
    let mut list = vec![first];
    let all_perf = std::env::var("PGC_GPU_PERF_ALL").as_deref() == Ok("1");
    // the wgmma path on every model shape (what the plans use), beside the mma.sync tiles
    let mut perf = perf_cases();
    for c in perf_cases() {
        if c.config.split_k == 1 && c.config.wgmma_allowed(c.m, c.n, c.k) && !perf.iter().any(|p: &GemmCase| p.config.path == GemmPath::Wgmma && (p.m, p.n, p.k, p.config.layout) == (c.m, c.n, c.k, c.config.layout)) {
            let bn = if c.n >= 512 { 256 } else { 128 };
            let mut w = c.clone();
            w.config = c.config.clone().with_wgmma(bn, if bn == 256 { 3 } else { 4 });
            perf.push(w);
        }
    }
    for c in perf {
        let same = c.config.layout == GemmLayout::LINEAR && (c.m, c.n, c.k) == (m, n, k);
        if (all_perf || same) && !list.iter().any(|l| l.config == c.config && (l.m, l.n, l.k) == (c.m, c.n, c.k)) {
            list.push(c);
        }
    }
    let mut failures = vec![];
    for (i, c) in list.iter().enumerate() {
        let tag = if c.config == default { " [default tile]" } else { "" };
        match time_gemm(&dev, c, base.wrapping_add(i as u64), 2048) {
            Ok(line) => println!("SUMMARY gemm {line}{tag}"),
            Err(e) => {
                println!("SUMMARY gemm {e}{tag}");
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn bytes_helper_round_trips() {
    // runs everywhere: keeps the helpers honest without a GPU
    let v = [1.5f32, -2.0, 0.25];
    assert_eq!(decode(&bytes_f32(&v), DType::F32), vec![1.5, -2.0, 0.25]);
}
