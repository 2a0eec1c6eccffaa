//! The attention kernels (forward, dsum, backward; bf16 tensor-core and f32
//! FFMA) and the q/k prologue kernels run on the PTX simulator with its
//! sanitizer on (races, out-of-bounds, uninitialised shared reads, cp.async
//! hazards), against an f64 reference written here on the same (rounded)
//! inputs. Error measure: `max|got - want| / max|want|` per tensor; bf16
//! below 2e-2, f32 below 1e-5. Every output buffer starts as NaN, so an
//! element a kernel fails to write fails the test.

use pgc_backends::ptx::attention::{
    emit_attention, emit_qk_prep, emit_qk_prep_bwd, rope_table, AttnConfig, AttnKernel, AttnLayout, QkPrepConfig,
};
use pgc_backends::ptx::builder::Module;
use pgc_backends::ptx::epilogue::ElemType;
use pgc_backends::ptx::gemm::Precision;
use pgc_backends::ptx::testing::{decode, encode, rel_err, round_to, Lcg};
use pgc_runtime::device::{DevBuf, Device, KernelArg, LaunchConfig};
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

fn nan_bytes(elems: usize, dt: ElemType) -> Vec<u8> {
    match dt {
        ElemType::F32 => (0..elems).flat_map(|_| f32::NAN.to_le_bytes()).collect(),
        ElemType::Bf16 => (0..elems).flat_map(|_| 0x7fc0u16.to_le_bytes()).collect(),
    }
}

struct Sim {
    dev: SimDevice,
}

impl Sim {
    fn new() -> Sim {
        Sim { dev: SimDevice::new() }
    }
    fn upload(&self, v: &[f64], dt: ElemType) -> DevBuf {
        let bytes = encode(v, dt);
        let b = self.dev.alloc(bytes.len()).unwrap();
        self.dev.copy_to_device(&b, &bytes).unwrap();
        b
    }
    fn nan(&self, elems: usize, dt: ElemType) -> DevBuf {
        let bytes = nan_bytes(elems, dt);
        let b = self.dev.alloc(bytes.len()).unwrap();
        self.dev.copy_to_device(&b, &bytes).unwrap();
        b
    }
    fn download(&self, b: &DevBuf, dt: ElemType) -> Vec<f64> {
        let mut bytes = vec![0u8; b.bytes];
        self.dev.copy_from_device(b, &mut bytes).unwrap();
        decode(&bytes, dt)
    }
    fn launch(&self, k: &AttnKernel, grid: [u32; 3], args: &[KernelArg]) -> Result<(), String> {
        let mut m = Module::new();
        m.push(k.kernel.clone());
        let mh = self.dev.load_module(&m.render()).map_err(|e| format!("load {}: {e}", k.name()))?;
        let cfg = LaunchConfig { grid, block: k.block(), shared_bytes: k.smem_bytes };
        self.dev.launch(&mh, k.name(), cfg, args).map_err(|e| format!("{}: {e}", k.name()))?;
        let st = self.dev.last_launch_stats();
        println!("  {:<40} grid {:?} {:>12} thread-instr {:>8.1?}", k.name(), grid, st.thread_instructions, st.wall);
        Ok(())
    }
}

fn gen(rng: &mut Lcg, n: usize, mul: f64, dt: ElemType) -> Vec<f64> {
    (0..n).map(|_| round_to(rng.uniform() * mul, dt)).collect()
}

fn buf(b: DevBuf) -> KernelArg {
    KernelArg::Buf(b, 0)
}

/// Run forward, dsum and backward on one shape; returns (name, error, tolerance) per output.
fn run_attention(cfg: &AttnConfig, s: &Shape, seed: u64) -> Result<Vec<(String, f64, f64)>, String> {
    assert_eq!(cfg.head_dim as usize, s.d);
    let ks = emit_attention(cfg).map_err(|e| e.to_string())?;
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
    let blse = sim.nan(rows, ElemType::F32);
    let bds = sim.nan(rows, ElemType::F32);
    let bdq = sim.nan(nq, ElemType::F32);
    let bdk = sim.nan(nk, cfg.grad_out);
    let bdv = sim.nan(nk, cfg.grad_out);
    let (h, hk, t) = (s.h as u32, s.hk as u32, s.t as u32);
    let sz = [KernelArg::U32(h), KernelArg::U32(hk), KernelArg::U32(t), KernelArg::F32(scale as f32)];
    let grid = |k: &AttnKernel| k.grid(s.b as u32, h, hk, t);
    let mut args = vec![buf(bq), buf(bk), buf(bv), buf(bo), buf(blse)];
    args.extend(sz);
    sim.launch(&ks.fwd, grid(&ks.fwd), &args)?;
    let dot_args = [buf(bo), buf(bdo), buf(bds), buf(bdq), KernelArg::U32(h), KernelArg::U32(t), KernelArg::U32(rows as u32)];
    sim.launch(&ks.dot, grid(&ks.dot), &dot_args)?;
    let mut args = vec![buf(bq), buf(bk), buf(bv), buf(bdo), buf(blse), buf(bds), buf(bdq), buf(bdk), buf(bdv)];
    args.extend(sz);
    for k in &ks.bwd {
        sim.launch(k, grid(k), &args)?;
    }
    let tol = match cfg.precision {
        Precision::Bf16 => 2e-2,
        Precision::F32 => 1e-5,
    };
    let lse_got = sim.download(&blse, ElemType::F32);
    let lse_err = lse_got.iter().zip(&lse_ref).fold(0.0f64, |m, (a, b)| if a.is_nan() { f64::INFINITY } else { m.max((a - b).abs()) });
    Ok(vec![
        ("o".into(), rel_err(&sim.download(&bo, cfg.out), &o_ref), tol),
        ("lse (abs)".into(), lse_err, if cfg.precision == Precision::F32 { 1e-5 } else { 2e-2 }),
        ("dq".into(), rel_err(&sim.download(&bdq, ElemType::F32), &dq_ref), tol),
        ("dk".into(), rel_err(&sim.download(&bdk, cfg.grad_out), &dk_ref), tol),
        ("dv".into(), rel_err(&sim.download(&bdv, cfg.grad_out), &dv_ref), tol),
    ])
}

fn check(cases: &[(AttnConfig, Shape)]) {
    let mut failures = vec![];
    for (i, (cfg, s)) in cases.iter().enumerate() {
        println!("{} {s:?}", cfg.tag());
        match run_attention(cfg, s, 100 + i as u64) {
            Ok(errs) => {
                for (name, err, tol) in errs {
                    let line = format!("{} {s:?} {name}: err {err:.3e} (tol {tol:.0e})", cfg.tag());
                    println!("  {line}");
                    if !(err <= tol) {
                        failures.push(line);
                    }
                }
            }
            Err(e) => failures.push(format!("{} {s:?}: {e}", cfg.tag())),
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
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
        (Shape { b: 2, h: 4, hk: 2, t: 70, d: 32 }, ElemType::Bf16),
        (Shape { b: 1, h: 2, hk: 1, t: 33, d: 16 }, ElemType::F32),
    ] {
        let mut cfg = AttnConfig::new(Precision::Bf16, s.d as u32, AttnLayout::Bthd);
        cfg.out = out;
        cfg.grad_out = out;
        c.push((cfg, s));
        c.push((AttnConfig::new(Precision::F32, s.d as u32, AttnLayout::Bthd), s));
    }
    check(&c);
}
