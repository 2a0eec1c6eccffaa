//! The attention kernels (forward, dsum, backward; bf16 tensor-core and f32
//! FFMA) and the q/k prologue kernels run on the PTX simulator with its
//! sanitizer on (races, out-of-bounds, uninitialised shared reads, cp.async
//! hazards), against an f64 reference written here on the same (rounded)
//! inputs. Error measure: `max|got - want| / max|want|` per tensor; bf16
//! below 2e-2, f32 below 1e-5. Every output buffer starts as NaN, so an
//! element a kernel fails to write fails the test. `PGC_TEST_DUMP_PTX=DIR`
//! writes each launched kernel's PTX to `DIR/<kernel>.ptx` (simulator errors
//! give PTX line numbers).

use crate::common;

use pgc_backends::ptx::templates::attention::{
    emit_attention, emit_backward_wgmma, emit_forward_wgmma, emit_qk_prep, emit_qk_prep_bwd, prologue_configs, rope_table, wgmma_backward_boxes, wgmma_forward_boxes, AttnConfig, AttnKernel,
    AttnLayout, QkPrepConfig,
};
use pgc_backends::ptx::builder::Module;
use pgc_backends::ptx::templates::epilogue::DType;
use pgc_backends::ptx::templates::gemm::Precision;
use common::gemm_matrix::{decode, encode, rel_err, round_to, Lcg};
use pgc_runtime::device::{DevBuf, Device, KernelArg, LaunchConfig, TensorMap, TmaDtype, TmaSwizzle};
use pgc_runtime::sim::SimDevice;

#[derive(Clone, Copy, Debug)]
struct Shape {
    b: usize,
    h: usize,
    hk: usize,
    t: usize,
    d: usize,
}

const SHAPES: [Shape; 5] = [
    Shape { b: 1, h: 2, hk: 1, t: 33, d: 16 },
    Shape { b: 2, h: 4, hk: 2, t: 17, d: 8 },
    Shape { b: 1, h: 3, hk: 1, t: 65, d: 64 },
    Shape { b: 1, h: 1, hk: 1, t: 1, d: 16 },
    Shape { b: 1, h: 2, hk: 2, t: 128, d: 64 },
];

/// Element offset of `(b, h, t, j)` in a per-head tensor with `nh` heads.
fn at(layout: AttnLayout, s: &Shape, nh: usize, b: usize, h: usize, t: usize, j: usize) -> usize {
    match layout {
        AttnLayout::Bhtd => ((b * nh + h) * s.t + t) * s.d + j,
        AttnLayout::Bthd => ((b * s.t + t) * nh + h) * s.d + j,
    }
}

/// f64 reference of causal GQA attention: (o, lse, dq, dk, dv).
#[allow(clippy::type_complexity)]
fn reference(
    l: AttnLayout,
    s: &Shape,
    scale: f64,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dout: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let rep = s.h / s.hk;
    let mut o = vec![0.0; q.len()];
    let mut lse = vec![0.0; s.b * s.h * s.t];
    let mut dq = vec![0.0; q.len()];
    let mut dk = vec![0.0; k.len()];
    let mut dv = vec![0.0; v.len()];
    for b in 0..s.b {
        for h in 0..s.h {
            let kh = h / rep;
            for i in 0..s.t {
                let qi = |j| q[at(l, s, s.h, b, h, i, j)];
                let sc: Vec<f64> = (0..=i)
                    .map(|kj| (0..s.d).map(|j| qi(j) * k[at(l, s, s.hk, b, kh, kj, j)]).sum::<f64>() * scale)
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - mx).exp()).sum();
                lse[(b * s.h + h) * s.t + i] = mx + z.ln();
                let p: Vec<f64> = sc.iter().map(|x| (x - mx).exp() / z).collect();
                for j in 0..s.d {
                    o[at(l, s, s.h, b, h, i, j)] = (0..=i).map(|kj| p[kj] * v[at(l, s, s.hk, b, kh, kj, j)]).sum();
                }
                // backward of row i
                let doi = |j| dout[at(l, s, s.h, b, h, i, j)];
                let dp: Vec<f64> =
                    (0..=i).map(|kj| (0..s.d).map(|j| doi(j) * v[at(l, s, s.hk, b, kh, kj, j)]).sum()).collect();
                let dd: f64 = (0..=i).map(|kj| p[kj] * dp[kj]).sum();
                for kj in 0..=i {
                    let ds = p[kj] * (dp[kj] - dd) * scale;
                    for j in 0..s.d {
                        dq[at(l, s, s.h, b, h, i, j)] += ds * k[at(l, s, s.hk, b, kh, kj, j)];
                        dk[at(l, s, s.hk, b, kh, kj, j)] += ds * qi(j);
                        dv[at(l, s, s.hk, b, kh, kj, j)] += p[kj] * doi(j);
                    }
                }
            }
        }
    }
    (o, lse, dq, dk, dv)
}

/// `err <= tol`, false for NaN.
fn within(err: f64, tol: f64) -> bool {
    err.partial_cmp(&tol).is_some_and(|o| o.is_le())
}

fn nan_bytes(elems: usize, dt: DType) -> Vec<u8> {
    match dt {
        DType::F32 => (0..elems).flat_map(|_| f32::NAN.to_le_bytes()).collect(),
        DType::Bf16 => (0..elems).flat_map(|_| 0x7fc0u16.to_le_bytes()).collect(),
        DType::I32 => (0..elems).flat_map(|_| i32::MIN.to_le_bytes()).collect(),
    }
}

struct Sim {
    dev: SimDevice,
}

impl Sim {
    fn new() -> Sim {
        Sim { dev: SimDevice::new() }
    }
    fn upload(&self, v: &[f64], dt: DType) -> DevBuf {
        let bytes = encode(v, dt);
        let b = self.dev.alloc(bytes.len()).unwrap();
        self.dev.copy_to_device(&b, &bytes).unwrap();
        b
    }
    fn nan(&self, elems: usize, dt: DType) -> DevBuf {
        let bytes = nan_bytes(elems, dt);
        let b = self.dev.alloc(bytes.len()).unwrap();
        self.dev.copy_to_device(&b, &bytes).unwrap();
        b
    }
    fn download(&self, b: &DevBuf, dt: DType) -> Vec<f64> {
        let mut bytes = vec![0u8; b.bytes];
        self.dev.copy_from_device(b, &mut bytes).unwrap();
        decode(&bytes, dt)
    }
    fn launch(&self, k: &AttnKernel, grid: [u32; 3], args: &[KernelArg]) -> Result<(), String> {
        let mut m = Module::new();
        m.push(k.kernel.clone());
        if let Ok(d) = std::env::var("PGC_TEST_DUMP_PTX") {
            let _ = std::fs::write(format!("{d}/{}.ptx", k.name()), m.render());
        }
        let mh = self.dev.load_module(&m.render()).map_err(|e| format!("load {}: {e}", k.name()))?;
        let cfg = LaunchConfig { grid, block: k.block(), shared_bytes: k.smem_bytes };
        self.dev.launch(&mh, k.name(), cfg, args).map_err(|e| format!("{}: {e}", k.name()))?;
        let st = self.dev.last_launch_stats();
        println!("  {:<40} grid {:?} {:>12} thread-instr {:>8.1?}", k.name(), grid, st.thread_instructions, st.wall);
        Ok(())
    }
}

fn gen(rng: &mut Lcg, n: usize, mul: f64, dt: DType) -> Vec<f64> {
    (0..n).map(|_| round_to(rng.uniform() * mul, dt)).collect()
}

fn buf(b: DevBuf) -> KernelArg {
    KernelArg::Buf(b, 0)
}

/// Run forward, dsum and backward on one shape; returns (name, error, tolerance) per output.
/// `(wgmma_fwd, wgmma_bwd)`: the forward / the backward is the Hopper
/// kernel (q, k, v (and do) through tensor maps).
fn run_attention(cfg: &AttnConfig, s: &Shape, seed: u64, (wgmma_fwd, wgmma_bwd): (bool, bool)) -> Result<Vec<(String, f64, f64)>, String> {
    assert_eq!(cfg.head_dim as usize, s.d);
    let mut ks = emit_attention(cfg).map_err(|e| e.to_string())?;
    if wgmma_fwd {
        ks.fwd = emit_forward_wgmma(cfg).map_err(|e| e.to_string())?;
    }
    if wgmma_bwd {
        ks.bwd = vec![emit_backward_wgmma(cfg).map_err(|e| e.to_string())?];
    }
    let it = cfg.in_type();
    let mut rng = Lcg(seed);
    let nq = s.b * s.h * s.t * s.d;
    let nk = s.b * s.hk * s.t * s.d;
    let q = gen(&mut rng, nq, 3.0, it);
    let k = gen(&mut rng, nk, 1.0, it);
    let v = gen(&mut rng, nk, 1.0, it);
    let dout = gen(&mut rng, nq, 1.0, it);
    let scale = 1.0 / (s.d as f64).sqrt();
    let (o_ref, lse_ref, dq_ref, dk_ref, dv_ref) = reference(cfg.layout, s, scale as f32 as f64, &q, &k, &v, &dout);

    let sim = Sim::new();
    let (bq, bk, bv, bdo) = (sim.upload(&q, it), sim.upload(&k, it), sim.upload(&v, it), sim.upload(&dout, it));
    let rows = s.b * s.h * s.t;
    let bo = sim.nan(nq, cfg.out);
    let blse = sim.nan(rows, DType::F32);
    let bds = sim.nan(rows, DType::F32);
    let bdq = sim.nan(nq, DType::F32);
    let bdk = sim.nan(nk, cfg.grad_out);
    let bdv = sim.nan(nk, cfg.grad_out);
    let (h, hk, t) = (s.h as u32, s.hk as u32, s.t as u32);
    let sz = [KernelArg::U32(h), KernelArg::U32(hk), KernelArg::U32(t), KernelArg::F32(scale as f32)];
    let grid = |k: &AttnKernel| k.grid(s.b as u32, h, hk, t);
    let map = |b: &DevBuf, rows: usize, boxr: u32| TensorMap::matrix(b, 0, TmaDtype::Bf16, rows as u64, s.d as u64, s.d as u64 * 2, boxr, s.d as u32, TmaSwizzle::B128).map(KernelArg::TensorMap);
    let mut args = vec![buf(bq), buf(bk), buf(bv), buf(bo), buf(blse)];
    if wgmma_fwd {
        let (qb, kb) = wgmma_forward_boxes();
        args[0] = map(&bq, s.b * s.h * s.t, qb)?;
        args[1] = map(&bk, s.b * s.hk * s.t, kb)?;
        args[2] = map(&bv, s.b * s.hk * s.t, kb)?;
    }
    args.extend(sz);
    sim.launch(&ks.fwd, grid(&ks.fwd), &args)?;
    let dot_args = [buf(bo), buf(bdo), buf(bds), buf(bdq), KernelArg::U32(h), KernelArg::U32(t), KernelArg::U32(rows as u32)];
    sim.launch(&ks.dot, grid(&ks.dot), &dot_args)?;
    let mut args = vec![buf(bq), buf(bk), buf(bv), buf(bdo), buf(blse), buf(bds), buf(bdq), buf(bdk), buf(bdv)];
    if wgmma_bwd {
        let (qb, kb) = wgmma_backward_boxes();
        args[0] = map(&bq, s.b * s.h * s.t, qb)?;
        args[1] = map(&bk, s.b * s.hk * s.t, kb)?;
        args[2] = map(&bv, s.b * s.hk * s.t, kb)?;
        args[3] = map(&bdo, s.b * s.h * s.t, qb)?;
    }
    args.extend(sz);
    for k in &ks.bwd {
        sim.launch(k, grid(k), &args)?;
    }
    let tol = match cfg.precision {
        Precision::Bf16 => 2e-2,
        Precision::F32 => 1e-5,
    };
    let lse_got = sim.download(&blse, DType::F32);
    let lse_err = lse_got.iter().zip(&lse_ref).fold(0.0f64, |m, (a, b)| if a.is_nan() { f64::INFINITY } else { m.max((a - b).abs()) });
    Ok(vec![
        ("o".into(), rel_err(&sim.download(&bo, cfg.out), &o_ref), tol),
        ("lse (abs)".into(), lse_err, if cfg.precision == Precision::F32 { 1e-5 } else { 2e-2 }),
        ("dq".into(), rel_err(&sim.download(&bdq, DType::F32), &dq_ref), tol),
        ("dk".into(), rel_err(&sim.download(&bdk, cfg.grad_out), &dk_ref), tol),
        ("dv".into(), rel_err(&sim.download(&bdv, cfg.grad_out), &dv_ref), tol),
    ])
}

fn check(cases: &[(AttnConfig, Shape)]) {
    check_with(cases, (false, false))
}

fn check_with(cases: &[(AttnConfig, Shape)], wgmma: (bool, bool)) {
    let mut failures = vec![];
    for (i, (cfg, s)) in cases.iter().enumerate() {
        println!("{} {s:?}", cfg.tag());
        match run_attention(cfg, s, 100 + i as u64, wgmma) {
            Ok(errs) => {
                for (name, err, tol) in errs {
                    let line = format!("{} {s:?} {name}: err {err:.3e} (tol {tol:.0e})", cfg.tag());
                    println!("  {line}");
                    if !within(err, tol) {
                        failures.push(line);
                    }
                }
            }
            Err(e) => failures.push(format!("{} {s:?}: {e}", cfg.tag())),
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

/// The wgmma forward (then the mma.sync backward on its o and lse): T = 1,
/// 33, 65, 128, 257 (tiles over the edge, a block with one live warpgroup),
/// GQA 1 to 4.
#[test]
fn bf16_wgmma_forward_and_the_backward_on_its_outputs() {
    let shapes = [
        Shape { b: 1, h: 1, hk: 1, t: 1, d: 64 },
        Shape { b: 1, h: 2, hk: 1, t: 33, d: 64 },
        Shape { b: 1, h: 3, hk: 1, t: 65, d: 64 },
        Shape { b: 2, h: 2, hk: 2, t: 128, d: 64 },
        Shape { b: 1, h: 4, hk: 1, t: 257, d: 64 },
    ];
    let cases: Vec<(AttnConfig, Shape)> = shapes.iter().map(|s| (AttnConfig::new(Precision::Bf16, 64, AttnLayout::Bhtd), *s)).collect();
    check_with(&cases, (true, false));
}

/// The wgmma backward on the wgmma forward's outputs: T = 1, 33, 65, 128,
/// 200, 257 (query tiles over the edge, a block with one live consumer
/// warpgroup, several key blocks), GQA 1 to 4, bf16 and f32 dk/dv.
#[test]
fn bf16_wgmma_backward() {
    let shapes = [
        Shape { b: 1, h: 1, hk: 1, t: 1, d: 64 },
        Shape { b: 1, h: 2, hk: 1, t: 33, d: 64 },
        Shape { b: 1, h: 3, hk: 1, t: 65, d: 64 },
        Shape { b: 2, h: 2, hk: 2, t: 128, d: 64 },
        Shape { b: 1, h: 2, hk: 1, t: 200, d: 64 },
        Shape { b: 1, h: 4, hk: 1, t: 257, d: 64 },
    ];
    let mut cases: Vec<(AttnConfig, Shape)> = shapes.iter().map(|s| (AttnConfig::new(Precision::Bf16, 64, AttnLayout::Bhtd), *s)).collect();
    let mut c = AttnConfig::new(Precision::Bf16, 64, AttnLayout::Bhtd);
    c.grad_out = DType::Bf16;
    cases.push((c, Shape { b: 1, h: 2, hk: 2, t: 97, d: 64 }));
    check_with(&cases, (true, true));
}

fn cases(p: Precision, layout: AttnLayout) -> Vec<(AttnConfig, Shape)> {
    SHAPES.iter().map(|s| (AttnConfig::new(p, s.d as u32, layout), *s)).collect()
}

#[test]
fn bf16_attention_awkward_shapes() {
    check(&cases(Precision::Bf16, AttnLayout::Bhtd));
}

#[test]
fn f32_attention_awkward_shapes() {
    check(&cases(Precision::F32, AttnLayout::Bhtd));
}

/// The `[B, T, heads, d]` layout (projection outputs as they are), bf16
/// outputs for o, dk, dv, and d = 32.
#[test]
fn attention_bthd_layout_and_bf16_outputs() {
    let mut c = vec![];
    for (s, out) in [
        (Shape { b: 2, h: 4, hk: 2, t: 70, d: 32 }, DType::Bf16),
        (Shape { b: 1, h: 2, hk: 1, t: 33, d: 16 }, DType::F32),
    ] {
        let mut cfg = AttnConfig::new(Precision::Bf16, s.d as u32, AttnLayout::Bthd);
        cfg.out = out;
        cfg.grad_out = out;
        c.push((cfg, s));
        c.push((AttnConfig::new(Precision::F32, s.d as u32, AttnLayout::Bthd), s));
    }
    check(&c);
}

// ---------------------------------------------------------------------------
// The q/k prologue: y = rope(rms_norm(x)) * gain[h], and its backward.

/// f64 forward of one head-row `x` (d elements) at position `t`: (y, u) with
/// `u = rope(rms_norm(x))` and `y = g * u`.
fn prep_row_ref(x: &[f64], t: usize, g: f64, eps: f64, base: f64) -> (Vec<f64>, Vec<f64>) {
    let d = x.len();
    let half = d / 2;
    let r = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / d as f64 + eps).sqrt();
    let n: Vec<f64> = x.iter().map(|v| v * r).collect();
    let mut u = vec![0.0; d];
    for j in 0..half {
        let ang = t as f64 / base.powf((2 * j) as f64 / d as f64);
        let (c, s) = (ang.cos(), ang.sin());
        u[j] = n[j] * c + n[j + half] * s;
        u[j + half] = -n[j] * s + n[j + half] * c;
    }
    (u.iter().map(|v| v * g).collect(), u)
}

/// f64 backward of [`prep_row_ref`]: (dx, dgain contribution).
fn prep_row_bwd_ref(x: &[f64], t: usize, g: f64, eps: f64, base: f64, dy: &[f64]) -> (Vec<f64>, f64) {
    let d = x.len();
    let half = d / 2;
    let (_, u) = prep_row_ref(x, t, g, eps, base);
    let dg: f64 = dy.iter().zip(&u).map(|(a, b)| a * b).sum();
    let du: Vec<f64> = dy.iter().map(|v| v * g).collect();
    let mut dn = vec![0.0; d];
    for j in 0..half {
        let ang = t as f64 / base.powf((2 * j) as f64 / d as f64);
        let (c, s) = (ang.cos(), ang.sin());
        dn[j] = du[j] * c - du[j + half] * s;
        dn[j + half] = du[j] * s + du[j + half] * c;
    }
    let r = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / d as f64 + eps).sqrt();
    let n: Vec<f64> = x.iter().map(|v| v * r).collect();
    let m: f64 = dn.iter().zip(&n).map(|(a, b)| a * b).sum::<f64>() / d as f64;
    (dn.iter().zip(&n).map(|(a, b)| r * (a - b * m)).collect(), dg)
}

/// The reference backward agrees with central differences of the reference forward.
#[test]
fn prep_reference_matches_finite_differences() {
    let mut rng = Lcg(5);
    let d = 8;
    let x: Vec<f64> = (0..d).map(|_| rng.uniform() * 2.0).collect();
    let dy: Vec<f64> = (0..d).map(|_| rng.uniform()).collect();
    let (t, g, eps, base) = (5, 1.3, 1e-6, 100.0);
    let loss = |x: &[f64], g: f64| prep_row_ref(x, t, g, eps, base).0.iter().zip(&dy).map(|(a, b)| a * b).sum::<f64>();
    let (dx, dg) = prep_row_bwd_ref(&x, t, g, eps, base, &dy);
    let h = 1e-6;
    for i in 0..d {
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp[i] += h;
        xm[i] -= h;
        let fd = (loss(&xp, g) - loss(&xm, g)) / (2.0 * h);
        assert!((fd - dx[i]).abs() < 1e-7, "dx[{i}]: {fd} vs {}", dx[i]);
    }
    let fd = (loss(&x, g + h) - loss(&x, g - h)) / (2.0 * h);
    assert!((fd - dg).abs() < 1e-7, "dgain: {fd} vs {dg}");
}

const EPS: f64 = 1.1920928955078125e-07;
const BASE: f64 = 10000.0;

/// Prep forward over a per-head tensor: (y, u) per element.
fn prep_ref(l: AttnLayout, s: &Shape, nh: usize, x: &[f64], gain: Option<&[f64]>) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for b in 0..s.b {
        for h in 0..nh {
            for t in 0..s.t {
                let row: Vec<f64> = (0..s.d).map(|j| x[at(l, s, nh, b, h, t, j)]).collect();
                let (yr, _) = prep_row_ref(&row, t, gain.map_or(1.0, |g| g[h]), EPS, BASE);
                for j in 0..s.d {
                    y[at(l, s, nh, b, h, t, j)] = yr[j];
                }
            }
        }
    }
    y
}

fn prep_bwd_ref(l: AttnLayout, s: &Shape, nh: usize, x: &[f64], gain: Option<&[f64]>, dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut dx = vec![0.0; x.len()];
    let mut dg = vec![0.0; nh];
    for b in 0..s.b {
        for h in 0..nh {
            for t in 0..s.t {
                let row: Vec<f64> = (0..s.d).map(|j| x[at(l, s, nh, b, h, t, j)]).collect();
                let dyr: Vec<f64> = (0..s.d).map(|j| dy[at(l, s, nh, b, h, t, j)]).collect();
                let (dxr, g) = prep_row_bwd_ref(&row, t, gain.map_or(1.0, |g| g[h]), EPS, BASE, &dyr);
                dg[h] += g;
                for j in 0..s.d {
                    dx[at(l, s, nh, b, h, t, j)] = dxr[j];
                }
            }
        }
    }
    (dx, dg)
}

/// Handles of the prep kernels' common tensors on the device.
struct PrepBufs {
    cos: DevBuf,
    sin: DevBuf,
}

impl Sim {
    fn rope(&self, s: &Shape) -> PrepBufs {
        let (c, sn) = rope_table(s.t as u32, s.d as u32, BASE);
        let c: Vec<f64> = c.iter().map(|&v| v as f64).collect();
        let sn: Vec<f64> = sn.iter().map(|&v| v as f64).collect();
        PrepBufs { cos: self.upload(&c, DType::F32), sin: self.upload(&sn, DType::F32) }
    }

    #[allow(clippy::too_many_arguments)]
    fn prep(&self, cfg: &QkPrepConfig, s: &Shape, nh: usize, x: DevBuf, y: DevBuf, gain: Option<DevBuf>, rb: &PrepBufs) -> Result<(), String> {
        let k = emit_qk_prep(cfg).map_err(|e| e.to_string())?;
        let g = gain.map_or(KernelArg::U64(0), buf);
        let args = [buf(x), buf(y), g, buf(rb.cos), buf(rb.sin), KernelArg::U32(nh as u32), KernelArg::U32(s.t as u32), KernelArg::U32((s.b * s.t) as u32), KernelArg::F32(EPS as f32)];
        self.launch(&k, k.grid(s.b as u32, nh as u32, 0, s.t as u32), &args)
    }

    #[allow(clippy::too_many_arguments)]
    fn prep_bwd(
        &self,
        cfg: &QkPrepConfig,
        s: &Shape,
        nh: usize,
        x: DevBuf,
        dy: DevBuf,
        dx: DevBuf,
        gain: Option<(DevBuf, DevBuf)>,
        rb: &PrepBufs,
    ) -> Result<(), String> {
        let k = emit_qk_prep_bwd(cfg).map_err(|e| e.to_string())?;
        let (g, dg) = gain.map_or((KernelArg::U64(0), KernelArg::U64(0)), |(g, dg)| (buf(g), buf(dg)));
        let args = [
            buf(x),
            buf(dy),
            buf(dx),
            g,
            dg,
            buf(rb.cos),
            buf(rb.sin),
            KernelArg::U32(nh as u32),
            KernelArg::U32(s.t as u32),
            KernelArg::U32((s.b * s.t) as u32),
            KernelArg::F32(EPS as f32),
        ];
        self.launch(&k, k.grid(s.b as u32, nh as u32, 0, s.t as u32), &args)
    }
}

/// The prep kernels on their own: forward output, dx and dgain.
#[test]
fn qk_prep_kernels() {
    let mut failures = vec![];
    let shapes = [
        (Precision::F32, AttnLayout::Bthd, Shape { b: 2, h: 3, hk: 3, t: 37, d: 8 }),
        (Precision::F32, AttnLayout::Bhtd, Shape { b: 1, h: 2, hk: 2, t: 70, d: 64 }),
        (Precision::Bf16, AttnLayout::Bthd, Shape { b: 1, h: 2, hk: 2, t: 33, d: 64 }),
        (Precision::Bf16, AttnLayout::Bhtd, Shape { b: 3, h: 1, hk: 1, t: 5, d: 16 }),
    ];
    for (i, (p, l, s)) in shapes.into_iter().enumerate() {
        for gain in [true, false] {
            for (dy_t, dx_t) in [(DType::F32, DType::F32), (DType::F32, DType::Bf16), (DType::Bf16, DType::Bf16)] {
                let mut cfg = QkPrepConfig::new(p, s.d as u32, l, gain);
                cfg.dx = dx_t;
                cfg.dy = dy_t;
                let io = match p {
                    Precision::Bf16 => DType::Bf16,
                    Precision::F32 => DType::F32,
                };
                let n = s.b * s.h * s.t * s.d;
                let mut rng = Lcg(300 + i as u64);
                let x = gen(&mut rng, n, 2.0, io);
                let dy = gen(&mut rng, n, 1.0, dy_t);
                let g: Vec<f64> = (0..s.h).map(|_| round_to(1.5 + 0.5 * rng.uniform(), DType::F32)).collect();
                let gopt = gain.then_some(&g[..]);
                let y_ref = prep_ref(l, &s, s.h, &x, gopt);
                let (dx_ref, dg_ref) = prep_bwd_ref(l, &s, s.h, &x, gopt, &dy);
                let sim = Sim::new();
                let rb = sim.rope(&s);
                let (bx, by, bdy, bdx) = (sim.upload(&x, io), sim.nan(n, io), sim.upload(&dy, dy_t), sim.nan(n, dx_t));
                let (bg, bdg) = (sim.upload(&g, DType::F32), sim.upload(&vec![0.0; s.h], DType::F32));
                let run = || -> Result<(), String> {
                    sim.prep(&cfg, &s, s.h, bx, by, gain.then_some(bg), &rb)?;
                    sim.prep_bwd(&cfg, &s, s.h, bx, bdy, bdx, gain.then_some((bg, bdg)), &rb)
                };
                if let Err(e) = run() {
                    failures.push(format!("{}: {e}", cfg.tag()));
                    continue;
                }
                // y (and dx) stored as bf16 round once; dx and dgain are computed
                // in f32 from the exact inputs
                let tol = |t: DType| -> f64 { if t == DType::Bf16 { 8e-3 } else { 1e-5 } };
                let mut errs = vec![
                    ("y", rel_err(&sim.download(&by, io), &y_ref), tol(io)),
                    ("dx", rel_err(&sim.download(&bdx, dx_t), &dx_ref), tol(dx_t)),
                ];
                if gain {
                    errs.push(("dgain", rel_err(&sim.download(&bdg, DType::F32), &dg_ref), 1e-5));
                }
                for (name, e, t) in errs {
                    let line = format!("{} {s:?} {name}: err {e:.3e} (tol {t:.0e})", cfg.tag());
                    println!("  {line}");
                    if !within(e, t) {
                        failures.push(line);
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

/// The whole attention of a block: raw q, k (projection outputs) -> prep ->
/// attention forward -> dsum -> backward -> prep backward, against the f64
/// chain: o, the raw-q and raw-k gradients, dv and the q_gain gradient.
fn run_chain(p: Precision, l: AttnLayout, s: &Shape, seed: u64) -> Result<Vec<(String, f64, f64)>, String> {
    let cfg = AttnConfig::new(p, s.d as u32, l).with_prologue(DType::F32);
    let ks = emit_attention(&cfg).map_err(|e| e.to_string())?;
    let pk = ks.prologue.as_ref().expect("prologue kernels");
    let io = cfg.in_type();
    let (nq, nk) = (s.b * s.h * s.t * s.d, s.b * s.hk * s.t * s.d);
    let mut rng = Lcg(seed);
    let qraw = gen(&mut rng, nq, 2.0, io);
    let kraw = gen(&mut rng, nk, 2.0, io);
    let v = gen(&mut rng, nk, 1.0, io);
    let dout = gen(&mut rng, nq, 1.0, io);
    let g: Vec<f64> = (0..s.h).map(|_| round_to(1.5 + 0.5 * rng.uniform(), DType::F32)).collect();
    let scale = (1.0 / (s.d as f64).sqrt()) as f32;
    // reference chain
    let qn = prep_ref(l, s, s.h, &qraw, Some(&g));
    let kn = prep_ref(l, s, s.hk, &kraw, None);
    let (o_ref, _, dqn, dkn, dv_ref) = reference(l, s, scale as f64, &qn, &kn, &v, &dout);
    let (dq_ref, dg_ref) = prep_bwd_ref(l, s, s.h, &qraw, Some(&g), &dqn);
    let (dk_ref, _) = prep_bwd_ref(l, s, s.hk, &kraw, None, &dkn);

    let sim = Sim::new();
    let rb = sim.rope(s);
    let (qcfg, kcfg) = prologue_configs(&cfg, cfg.prologue.unwrap());
    assert_eq!((pk.q.name(), pk.k_bwd.name()), (emit_qk_prep(&qcfg).unwrap().name(), emit_qk_prep_bwd(&kcfg).unwrap().name()));
    let (bqr, bkr, bv, bdo) = (sim.upload(&qraw, io), sim.upload(&kraw, io), sim.upload(&v, io), sim.upload(&dout, io));
    let (bg, bdg) = (sim.upload(&g, DType::F32), sim.upload(&vec![0.0; s.h], DType::F32));
    let (bq, bk) = (sim.nan(nq, io), sim.nan(nk, io));
    sim.prep(&qcfg, s, s.h, bqr, bq, Some(bg), &rb)?;
    sim.prep(&kcfg, s, s.hk, bkr, bk, None, &rb)?;
    let rows = s.b * s.h * s.t;
    let (bo, blse, bds) = (sim.nan(nq, cfg.out), sim.nan(rows, DType::F32), sim.nan(rows, DType::F32));
    let (bdq, bdk, bdv) = (sim.nan(nq, DType::F32), sim.nan(nk, DType::F32), sim.nan(nk, DType::F32));
    let (h, hk, t) = (s.h as u32, s.hk as u32, s.t as u32);
    let sz = [KernelArg::U32(h), KernelArg::U32(hk), KernelArg::U32(t), KernelArg::F32(scale)];
    let grid = |k: &AttnKernel| k.grid(s.b as u32, h, hk, t);
    let mut args = vec![buf(bq), buf(bk), buf(bv), buf(bo), buf(blse)];
    args.extend(sz);
    sim.launch(&ks.fwd, grid(&ks.fwd), &args)?;
    sim.launch(&ks.dot, grid(&ks.dot), &[buf(bo), buf(bdo), buf(bds), buf(bdq), KernelArg::U32(h), KernelArg::U32(t), KernelArg::U32(rows as u32)])?;
    let mut args = vec![buf(bq), buf(bk), buf(bv), buf(bdo), buf(blse), buf(bds), buf(bdq), buf(bdk), buf(bdv)];
    args.extend(sz);
    for k in &ks.bwd {
        sim.launch(k, grid(k), &args)?;
    }
    let (bdqr, bdkr) = (sim.nan(nq, DType::F32), sim.nan(nk, DType::F32));
    sim.prep_bwd(&qcfg, s, s.h, bqr, bdq, bdqr, Some((bg, bdg)), &rb)?;
    sim.prep_bwd(&kcfg, s, s.hk, bkr, bdk, bdkr, None, &rb)?;
    let tol = if p == Precision::Bf16 { 2e-2 } else { 1e-5 };
    Ok(vec![
        ("o".into(), rel_err(&sim.download(&bo, cfg.out), &o_ref), tol),
        ("dq_raw".into(), rel_err(&sim.download(&bdqr, DType::F32), &dq_ref), tol),
        ("dk_raw".into(), rel_err(&sim.download(&bdkr, DType::F32), &dk_ref), tol),
        ("dv".into(), rel_err(&sim.download(&bdv, DType::F32), &dv_ref), tol),
        ("dq_gain".into(), rel_err(&sim.download(&bdg, DType::F32), &dg_ref), tol),
    ])
}

#[test]
fn prep_attention_chain() {
    let mut failures = vec![];
    let cases = [
        (AttnLayout::Bthd, Shape { b: 2, h: 4, hk: 2, t: 33, d: 16 }),
        (AttnLayout::Bhtd, Shape { b: 1, h: 2, hk: 1, t: 65, d: 64 }),
        (AttnLayout::Bthd, Shape { b: 1, h: 2, hk: 1, t: 20, d: 8 }),
    ];
    for (i, (l, s)) in cases.iter().enumerate() {
        for p in [Precision::Bf16, Precision::F32] {
            println!("chain {p:?} {l:?} {s:?}");
            match run_chain(p, *l, s, 700 + i as u64) {
                Ok(errs) => {
                    for (name, e, t) in errs {
                        let line = format!("chain {p:?} {l:?} {s:?} {name}: err {e:.3e} (tol {t:.0e})");
                        println!("  {line}");
                        if !within(e, t) {
                            failures.push(line);
                        }
                    }
                }
                Err(e) => failures.push(format!("chain {p:?} {l:?} {s:?}: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

/// Causal tile skipping in the forward: query block 0 of a sequence of 256
/// reads only key/value rows 0..64. The tensors hold just those 64 rows (and
/// `t = 256` is passed), so loading any tile above the diagonal would be an
/// out-of-bounds access; a one-block grid selects query block 0 (blocks run
/// the query blocks in reverse order of x).
#[test]
fn forward_never_loads_tiles_above_the_diagonal() {
    for p in [Precision::Bf16, Precision::F32] {
        let cfg = AttnConfig::new(p, 16, AttnLayout::Bhtd);
        let ks = emit_attention(&cfg).unwrap();
        let rows = ks.fwd.rows_per_block as usize;
        let it = cfg.in_type();
        let mut rng = Lcg(9);
        let n = rows * 16;
        let sim = Sim::new();
        let (q, k, v) = (gen(&mut rng, n, 1.0, it), gen(&mut rng, n, 1.0, it), gen(&mut rng, n, 1.0, it));
        let (bq, bk, bv) = (sim.upload(&q, it), sim.upload(&k, it), sim.upload(&v, it));
        let (bo, blse) = (sim.nan(n, cfg.out), sim.nan(256, DType::F32));
        let args = [buf(bq), buf(bk), buf(bv), buf(bo), buf(blse), KernelArg::U32(1), KernelArg::U32(1), KernelArg::U32(256), KernelArg::F32(0.25)];
        sim.launch(&ks.fwd, [1, 1, 1], &args).unwrap();
        // and the rows it computed are right (they see keys 0..=row < rows only)
        let s = Shape { b: 1, h: 1, hk: 1, t: rows, d: 16 };
        let (o_ref, ..) = reference(AttnLayout::Bhtd, &s, 0.25, &q, &k, &v, &vec![0.0; n]);
        let e = rel_err(&sim.download(&bo, cfg.out), &o_ref);
        assert!(e < if p == Precision::Bf16 { 2e-2 } else { 1e-5 }, "{p:?}: {e}");
    }
}

/// A long sequence (T = 2048: 32 query blocks, 528 tiles at or below the
/// diagonal per head) on both paths.
#[test]
fn long_sequence() {
    let s = Shape { b: 1, h: 1, hk: 1, t: 2048, d: 16 };
    check(&[(AttnConfig::new(Precision::Bf16, 16, AttnLayout::Bthd), s), (AttnConfig::new(Precision::F32, 16, AttnLayout::Bthd), s)]);
}
